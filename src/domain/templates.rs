//! Templates: a game + variant and how to install, start, probe and publish it.
//! Built-ins are seeded on first start and editable afterwards.

use std::collections::BTreeMap;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{DomainError, invalid, is_dns_label};
use crate::agent::ReadinessKind;
use crate::db::now_ms;

/// How players reach a server of this template.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EdgeKind {
    Velocity,
    TraefikTcp,
    TraefikUdp,
    None,
}

/// Which Java runtime to ship with the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JavaRule {
    /// The Java major the Minecraft version needs (21 from 1.20.5, 17 from 1.18, …).
    Minecraft,
    /// No Java (the start command brings its own runtime).
    None,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModSpec {
    /// Path in the artifact mirror; `{version}` is the server's version.
    pub path: String,
    /// Where it goes in the server directory.
    pub destination: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSpec {
    pub destination: String,
    /// Literal content; `{forwarding_secret}`, `{name}`, `{game_port}` are filled in.
    pub content: String,
}

/// The recipe of a template.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    /// Game artifact in the mirror; `{version}` is filled in. None: nothing to download.
    #[serde(default)]
    pub artifact_path: Option<String>,
    pub java: JavaRule,
    #[serde(default)]
    pub mods: Vec<ModSpec>,
    #[serde(default)]
    pub files: Vec<FileSpec>,
    /// Agent start command (`{java}`, `{jar}`, `{memory_mb}`); None: the Minecraft default.
    #[serde(default)]
    pub start_command: Option<String>,
    #[serde(default)]
    pub stop_command: Option<String>,
    pub readiness: ReadinessKind,
    /// The game's port inside its container (on a local node one comes from the pool).
    #[serde(default = "default_port")]
    pub game_port: u16,
    pub default_memory_mb: u32,
    pub default_cores: u32,
    pub edge: EdgeKind,
    /// `server.properties` keys (`{name}`, `{game_port}` filled in).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    /// Extra environment for the game process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    pub eula_required: bool,
    /// True when a `game: "minecraft"` template runs a third-party implementation of the
    /// protocol (flying-squid, …), not Mojang's server software: then Mojang's EULA does
    /// not apply and `eula_required` alone decides. See [`Template::needs_eula`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub third_party_server: bool,
    /// Versions offered in pickers (others are accepted too).
    #[serde(default)]
    pub versions: Vec<String>,
}

fn default_port() -> u16 {
    25565
}

#[derive(Debug, Clone, Serialize)]
pub struct Template {
    pub id: i64,
    pub slug: String,
    pub name: String,
    pub game: String,
    pub variant: String,
    pub builtin: bool,
    pub spec: TemplateSpec,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Template {
    /// Whether a server of this template needs the operator's explicit `eula: true`:
    /// when the template says so, and always for Minecraft unless the template declares
    /// a third-party server (the agent refuses to install Mojang's server without it,
    /// so asking only then would fail the server late instead of the request early).
    pub fn needs_eula(&self) -> bool {
        needs_eula(&self.game, &self.spec)
    }
}

/// [`Template::needs_eula`] for a game and spec.
pub fn needs_eula(game: &str, spec: &TemplateSpec) -> bool {
    spec.eula_required || (game == "minecraft" && !spec.third_party_server)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTemplate {
    pub slug: String,
    pub name: String,
    pub game: String,
    pub variant: String,
    pub spec: TemplateSpec,
}

fn minecraft_properties() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("server-port".into(), "{game_port}".into()),
        ("motd".into(), "{name}".into()),
        ("online-mode".into(), "false".into()),
        ("enable-status".into(), "true".into()),
    ])
}

/// The built-in templates.
pub fn builtins() -> Vec<NewTemplate> {
    let mc_versions = vec!["1.21.4".into(), "1.21.1".into(), "1.20.4".into()];
    let mc = |variant: &str, artifact: &str| TemplateSpec {
        artifact_path: Some(artifact.into()),
        java: JavaRule::Minecraft,
        mods: vec![],
        files: vec![],
        start_command: None,
        stop_command: Some("stop".into()),
        readiness: ReadinessKind::MinecraftPing,
        game_port: 25565,
        default_memory_mb: 2048,
        default_cores: 2,
        edge: EdgeKind::Velocity,
        properties: minecraft_properties(),
        env: BTreeMap::new(),
        eula_required: true,
        third_party_server: false,
        versions: if variant == "vanilla" || variant == "paper" || variant == "fabric" {
            mc_versions.clone()
        } else {
            vec![]
        },
    };
    let mut fabric = mc("fabric", "minecraft/fabric/{version}/fabric-server.jar");
    // Velocity modern forwarding needs FabricProxy-Lite and Fabric API, seeded before
    // the first start (invariant 6). Import them with `zlh artifacts add`.
    fabric.mods = vec![
        ModSpec {
            path: "mods/fabric-api/{version}/fabric-api.jar".into(),
            destination: "mods/fabric-api.jar".into(),
        },
        ModSpec {
            path: "mods/fabricproxy-lite/{version}/FabricProxy-Lite.jar".into(),
            destination: "mods/FabricProxy-Lite.jar".into(),
        },
    ];
    fabric.files = vec![FileSpec {
        destination: "config/FabricProxy-Lite.toml".into(),
        content: "hackOnlineMode = true\nhackEarlySend = false\nhackMessageChain = true\ndisconnectMessage = \"This server requires you to connect through the proxy.\"\nsecret = \"{forwarding_secret}\"\n".into(),
    }];
    let mut velocity = mc("velocity", "velocity/{version}/velocity.jar");
    velocity.java = JavaRule::Minecraft;
    velocity.readiness = ReadinessKind::MinecraftPing;
    velocity.edge = EdgeKind::TraefikTcp;
    velocity.eula_required = false;
    velocity.properties = BTreeMap::new();
    velocity.stop_command = Some("end".into());
    velocity.default_memory_mb = 1024;
    velocity.versions = vec!["3.4.0".into()];
    vec![
        NewTemplate {
            slug: "minecraft-vanilla".into(),
            name: "Minecraft (vanilla)".into(),
            game: "minecraft".into(),
            variant: "vanilla".into(),
            spec: mc("vanilla", "minecraft/vanilla/{version}/server.jar"),
        },
        NewTemplate {
            slug: "minecraft-fabric".into(),
            name: "Minecraft (Fabric, behind Velocity)".into(),
            game: "minecraft".into(),
            variant: "fabric".into(),
            spec: fabric,
        },
        NewTemplate {
            slug: "minecraft-paper".into(),
            name: "Minecraft (Paper)".into(),
            game: "minecraft".into(),
            variant: "paper".into(),
            spec: mc("paper", "minecraft/paper/{version}/server.jar"),
        },
        NewTemplate {
            slug: "velocity".into(),
            name: "Velocity proxy".into(),
            game: "velocity".into(),
            variant: "velocity".into(),
            spec: velocity,
        },
    ]
}

fn validate(t: &NewTemplate) -> Result<(), DomainError> {
    if !is_dns_label(&t.slug) {
        return Err(invalid("slug", "a DNS label: a-z, 0-9 and '-'"));
    }
    if t.name.trim().is_empty() || t.name.len() > 100 {
        return Err(invalid("name", "1 to 100 characters"));
    }
    for (field, v) in [("game", &t.game), ("variant", &t.variant)] {
        if v.is_empty()
            || v.len() > 40
            || !v
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(invalid(field, "1 to 40 letters, digits, '-' or '_'"));
        }
    }
    let s = &t.spec;
    if !(256..=262_144).contains(&s.default_memory_mb) {
        return Err(invalid("spec.default_memory_mb", "between 256 and 262144"));
    }
    if !(1..=64).contains(&s.default_cores) {
        return Err(invalid("spec.default_cores", "between 1 and 64"));
    }
    if s.game_port == 0 {
        return Err(invalid("spec.game_port", "a port between 1 and 65535"));
    }
    if let Some(p) = &s.artifact_path {
        mirror_path(p).map_err(|m| invalid("spec.artifact_path", m))?;
    }
    for m in &s.mods {
        mirror_path(&m.path).map_err(|e| invalid("spec.mods.path", e))?;
        crate::agentd::install::safe_relative(&m.destination)
            .map_err(|e| invalid("spec.mods.destination", e.to_string()))?;
    }
    for (k, v) in &s.properties {
        if k.is_empty() || k.contains(['=', ':']) || !super::is_one_line(k) {
            return Err(invalid(
                "spec.properties",
                format!("key {k:?}: one line without '=' or ':' (server.properties keys)"),
            ));
        }
        if !super::is_one_line(v) {
            return Err(invalid(
                "spec.properties",
                format!("the value of {k:?} must be one line without control characters"),
            ));
        }
    }
    for (k, v) in &s.env {
        let portable = k
            .bytes()
            .enumerate()
            .all(|(i, b)| b == b'_' || b.is_ascii_alphabetic() || (i > 0 && b.is_ascii_digit()));
        if k.is_empty() || !portable {
            return Err(invalid(
                "spec.env",
                format!("variable name {k:?}: letters, digits and '_', not starting with a digit"),
            ));
        }
        if v.contains('\0') {
            return Err(invalid(
                "spec.env",
                format!("the value of {k} contains a NUL byte"),
            ));
        }
    }
    if let Some(c) = &s.stop_command
        && (c.trim().is_empty() || !super::is_one_line(c))
    {
        return Err(invalid(
            "spec.stop_command",
            "one line, written to the game's console",
        ));
    }
    if let Some(c) = &s.start_command
        && (c.trim().is_empty() || c.contains('\0'))
    {
        return Err(invalid(
            "spec.start_command",
            "a shell command without NUL bytes",
        ));
    }
    for v in &s.versions {
        if !super::is_version(v) {
            return Err(invalid(
                "spec.versions",
                format!("{v:?}: 1-40 of letters, digits, '.', '_', '-', '+', and no '..'"),
            ));
        }
    }
    for f in &s.files {
        crate::agentd::install::safe_relative(&f.destination)
            .map_err(|e| invalid("spec.files.destination", e.to_string()))?;
    }
    Ok(())
}

/// A path in the artifact mirror: relative, `/`-separated, no `..`, no control
/// characters or backslashes (placeholders like `{version}` are fine).
fn mirror_path(p: &str) -> Result<(), String> {
    let bad = p.is_empty()
        || p.starts_with('/')
        || p.contains('\\')
        || !super::is_one_line(p)
        || p.contains('\t')
        || p.split('/')
            .any(|seg| seg.is_empty() || seg == "." || seg == "..");
    if bad {
        return Err(format!(
            "{p:?} must be a relative path in the artifact mirror (a/b/c, no '..', '.', empty segments or backslashes)"
        ));
    }
    Ok(())
}

pub fn create(
    conn: &rusqlite::Transaction<'_>,
    t: &NewTemplate,
    builtin: bool,
) -> Result<Template, DomainError> {
    validate(t)?;
    let now = now_ms();
    let spec = serde_json::to_string(&t.spec).map_err(|e| invalid("spec", e.to_string()))?;
    let res = conn.execute(
        "INSERT INTO templates (slug, name, game, variant, builtin, spec, created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![t.slug, t.name, t.game, t.variant, builtin, spec, now],
    );
    match res {
        Ok(_) => get(conn, conn.last_insert_rowid())?
            .ok_or_else(|| DomainError::NotFound("new template".into())),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(DomainError::Conflict(format!(
                "a template '{}' exists",
                t.slug
            )))
        }
        Err(e) => Err(e.into()),
    }
}

/// Seeds the built-ins that are missing (an edited built-in is left as edited).
pub fn ensure_builtins(conn: &rusqlite::Transaction<'_>) -> Result<(), DomainError> {
    for t in builtins() {
        if get_by_slug(conn, &t.slug)?.is_none() {
            create(conn, &t, true)?;
        }
    }
    Ok(())
}

const COLUMNS: &str = "id, slug, name, game, variant, builtin, spec, created_at, updated_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Template> {
    let spec: String = r.get(6)?;
    let spec = serde_json::from_str(&spec).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(6, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Template {
        id: r.get(0)?,
        slug: r.get(1)?,
        name: r.get(2)?,
        game: r.get(3)?,
        variant: r.get(4)?,
        builtin: r.get(5)?,
        spec,
        created_at: r.get(7)?,
        updated_at: r.get(8)?,
    })
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Template>, DomainError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM templates WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

pub fn get_by_slug(conn: &Connection, slug: &str) -> Result<Option<Template>, DomainError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM templates WHERE slug = ?1"),
            [slug],
            from_row,
        )
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<Template>, DomainError> {
    let mut s = conn.prepare(&format!("SELECT {COLUMNS} FROM templates ORDER BY id"))?;
    let rows = s.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every template's slug by id (what a server list shows beside each server).
pub fn slugs(conn: &Connection) -> Result<std::collections::HashMap<i64, String>, DomainError> {
    let mut s = conn.prepare_cached("SELECT id, slug FROM templates")?;
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The Java major a Minecraft version needs.
pub fn java_major_for(version: &str) -> u32 {
    let parts: Vec<u32> = version
        .split(['.', '-'])
        .take(3)
        .map(|p| p.parse().unwrap_or(0))
        .collect();
    let (minor, patch) = (
        parts.get(1).copied().unwrap_or(0),
        parts.get(2).copied().unwrap_or(0),
    );
    match (minor, patch) {
        (m, _) if m >= 21 => 21,
        (20, p) if p >= 5 => 21,
        (m, _) if m >= 18 => 17,
        (17, _) => 16,
        _ => 8,
    }
}

/// Template text with placeholders filled in.
pub fn fill(text: &str, vars: &[(&str, &str)]) -> String {
    let mut out = text.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{k}}}"), v);
    }
    out
}

/// For tests and docs: a template spec as JSON.
pub fn example_spec() -> serde_json::Value {
    json!(builtins()[0].spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn java_majors_follow_mojang() {
        assert_eq!(java_major_for("1.21.4"), 21);
        assert_eq!(java_major_for("1.20.5"), 21);
        assert_eq!(java_major_for("1.20.4"), 17);
        assert_eq!(java_major_for("1.18"), 17);
        assert_eq!(java_major_for("1.17.1"), 16);
        assert_eq!(java_major_for("1.16.5"), 8);
    }

    #[test]
    fn builtins_are_valid() {
        for t in builtins() {
            validate(&t).unwrap();
        }
    }
}
