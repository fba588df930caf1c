//! The agent wire contract (DESIGN §7), shared by both sides: `zlh agent` (the server
//! inside each game container, `server/`) and the control plane's client (`client`).
//!
//! `/config` payloads are snake_case, `/status` is camelCase — as the existing
//! ZeroLagHub agent speaks them, so either side can be swapped in.

pub mod client;
pub mod properties;
pub mod slp;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Default listen port of the agent.
pub const DEFAULT_PORT: u16 = 18888;

/// What `POST /config` carries: everything the agent needs to install and run one game.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPayload {
    #[serde(default)]
    pub vmid: Option<i64>,
    /// `game` or `dev`.
    #[serde(default = "default_container_type")]
    pub container_type: String,
    pub game: String,
    #[serde(default)]
    pub variant: String,
    #[serde(default)]
    pub version: String,
    /// World (level) name; `world` when absent.
    #[serde(default)]
    pub world: Option<String>,
    #[serde(default)]
    pub ports: Vec<u16>,
    /// Server jar (or other game artifact) in the artifact mirror.
    #[serde(default)]
    pub artifact_path: Option<String>,
    #[serde(default)]
    pub artifact_sha256: Option<String>,
    /// Java runtime tarball in the mirror; used when the host has no Java of that major.
    #[serde(default)]
    pub java_path: Option<String>,
    #[serde(default)]
    pub java_sha256: Option<String>,
    #[serde(default)]
    pub memory_mb: Option<u32>,
    /// Same id again → no reinstall; a new id → reinstall (world kept unless `reset_world`).
    pub install_id: String,
    /// The operator's explicit acceptance of the game's EULA (never assumed).
    #[serde(default)]
    pub eula: bool,
    /// Whether the game refuses to install without `eula` (additive: when absent, a
    /// `minecraft` game needs it). The control plane sends its template's answer, so a
    /// third-party Minecraft-protocol server is not held to Mojang's EULA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eula_required: Option<bool>,
    #[serde(default)]
    pub reset_world: bool,
    /// Artifacts to seed into the server directory before the first start.
    #[serde(default)]
    pub mods: Vec<SeedArtifact>,
    /// Files with literal content to seed before the first start.
    #[serde(default)]
    pub files: Vec<SeedFile>,
    /// `server.properties` keys to set (the rest of an existing file is kept).
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forwarding_secret: Option<String>,
    /// Shell command line that starts the game (run with `sh -c`, as `exec …`).
    /// Placeholders: `{java}`, `{jar}`, `{memory_mb}`. Default: the Minecraft server.
    #[serde(default)]
    pub start_command: Option<String>,
    /// Written to the game's stdin to stop it (default `stop`).
    #[serde(default)]
    pub stop_command: Option<String>,
    #[serde(default)]
    pub readiness: Option<Readiness>,
    /// The IP-based service environment (`ARTIFACT_SERVER`, `ZLH_API_URL`, …).
    #[serde(default)]
    pub services: BTreeMap<String, String>,
    /// Extra environment for the game process.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// A new bearer token for this agent: once accepted, it replaces the bootstrap token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_token: Option<String>,
}

fn default_container_type() -> String {
    "game".into()
}

/// An artifact from the mirror to place in the server directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedArtifact {
    /// Path in the artifact mirror.
    pub path: String,
    pub sha256: String,
    /// Relative path inside the server directory (e.g. `mods/fabric-api.jar`).
    pub destination: String,
}

/// A file with literal content to place in the server directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeedFile {
    pub destination: String,
    pub content: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadinessKind {
    /// Server List Ping: ready only when a status JSON comes back.
    MinecraftPing,
    /// A TCP accept (for games without a status protocol).
    Tcp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Readiness {
    #[serde(rename = "type", alias = "kind")]
    pub kind: ReadinessKind,
    pub port: u16,
    /// Address to probe (default 127.0.0.1: the game listens inside the container).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<std::net::IpAddr>,
}

impl ConfigPayload {
    /// The readiness probe: as given, else a Minecraft ping on the first port (25565).
    pub fn readiness(&self) -> Readiness {
        self.readiness.unwrap_or(Readiness {
            kind: if self.game == "minecraft" {
                ReadinessKind::MinecraftPing
            } else {
                ReadinessKind::Tcp
            },
            port: self.ports.first().copied().unwrap_or(25565),
            host: None,
        })
    }

    pub fn world_name(&self) -> &str {
        self.world.as_deref().unwrap_or("world")
    }

    /// The payload with secrets blanked, for anything that may be shown or logged.
    pub fn redacted(&self) -> ConfigPayload {
        let mut p = self.clone();
        if let Some(secret) = p.forwarding_secret.take() {
            // Seeded files (FabricProxy-Lite's config) carry it too.
            if !secret.is_empty() {
                for f in &mut p.files {
                    f.content = f.content.replace(&secret, "********");
                }
            }
            p.forwarding_secret = Some("********".into());
        }
        if p.agent_token.is_some() {
            p.agent_token = Some("********".into());
        }
        p
    }
}

/// The agent's life cycle states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Idle,
    Installing,
    Starting,
    Running,
    Stopping,
    Stopped,
    Crashed,
    Error,
}

impl AgentState {
    pub fn as_str(self) -> &'static str {
        match self {
            AgentState::Idle => "idle",
            AgentState::Installing => "installing",
            AgentState::Starting => "starting",
            AgentState::Running => "running",
            AgentState::Stopping => "stopping",
            AgentState::Stopped => "stopped",
            AgentState::Crashed => "crashed",
            AgentState::Error => "error",
        }
    }
}

impl std::fmt::Display for AgentState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The last crash of the game process.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LastCrash {
    /// RFC 3339 time of the crash.
    pub time: String,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub uptime_seconds: u64,
    pub log_tail: Vec<String>,
}

/// `GET /status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatus {
    pub state: AgentState,
    pub process_running: bool,
    pub ready: bool,
    /// `minecraft_ping` or `tcp`.
    pub ready_source: Option<String>,
    pub ready_error: Option<String>,
    pub last_ready_at: Option<String>,
    pub install_step: Option<String>,
    pub install_id: Option<String>,
    /// Completed installs since this agent's directory was created.
    #[serde(default)]
    pub install_count: u64,
    pub crash_count: u64,
    pub last_crash: Option<LastCrash>,
    pub error: Option<String>,
    pub timestamp: String,
}

/// `POST /config` answer (202).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigAccepted {
    pub ok: bool,
    pub state: AgentState,
}

/// `POST /console/command` body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleCommand {
    pub command: String,
}

/// `GET /console/tail?lines=N`: the game's most recent console lines, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleTail {
    pub lines: Vec<String>,
}

/// What a directory entry is (links are listed, never followed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileKind {
    File,
    Dir,
    Symlink,
    /// A FIFO, socket or device: listed, never read or written.
    Special,
}

/// One entry of `GET /files?path=`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileEntry {
    pub name: String,
    pub kind: FileKind,
    /// Bytes (files only; 0 otherwise).
    pub size: u64,
    /// Last modification, RFC 3339 UTC.
    pub mtime: String,
}

/// `GET /files?path=`: a directory of the server, relative to the server directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FileList {
    pub path: String,
    pub entries: Vec<FileEntry>,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentVersion {
    pub version: String,
    /// The build's git commit (additive: the original agent has none). Two builds of one
    /// version differ here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit: Option<String>,
}

impl AgentVersion {
    /// This build, as `version (commit …)`: what an agent must report to count as
    /// up to date.
    pub fn this_build() -> AgentVersion {
        AgentVersion {
            version: crate::VERSION.to_string(),
            commit: Some(crate::GIT_COMMIT.to_string()),
        }
    }

    /// `0.1.0 (commit abc)`, or the bare version of an agent that names no commit.
    pub fn label(&self) -> String {
        match &self.commit {
            Some(c) => format!("{} (commit {c})", self.version),
            None => self.version.clone(),
        }
    }
}

/// `POST /upgrade` body (additive endpoint): where the new binary is, its digest and
/// the version it reports once running.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpgradeRequest {
    pub url: String,
    pub sha256: String,
    pub version: String,
}

/// `GET /upgrade` (and the 202 answer of `POST /upgrade`): the agent's self-upgrade.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct UpgradeStatus {
    /// `idle`, `downloading`, `waiting`, `restarting` or `failed`.
    pub state: String,
    /// What it is doing or why it failed (e.g. "waiting: 1 player online").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The version the upgrade installs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

/// Compares two secrets in time independent of where they differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    // Length is not secret here (tokens have a fixed format); content is.
    subtle::ConstantTimeEq::ct_eq(a, b).into()
}

/// `GET /properties` (additive): the game's `server.properties` as it is on disk.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PropertiesFile {
    /// The file's text, byte for byte (empty when there is no file yet).
    pub text: String,
    pub exists: bool,
    /// Keys zlh sets itself (ports, addresses, what the payload seeds): read-only.
    pub managed: Vec<String>,
    /// The game is running with another version of the file than the one on disk.
    pub restart_needed: bool,
}

/// `PUT /properties` (additive): keys to set; every other byte of the file is kept.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertiesUpdate {
    pub set: BTreeMap<String, String>,
}

/// One entry of the game's `whitelist.json`, `ops.json` or `banned-players.json`,
/// as the game wrote it (zlh never makes up a UUID).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListedPlayer {
    #[serde(default)]
    pub uuid: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    /// `ops.json`: the permission level.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<i64>,
    /// Bans: why, by whom, since when, until when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// One entry of `banned-ips.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BannedIp {
    pub ip: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
}

/// `GET /players` (additive): who is online and the game's JSON lists (snake_case,
/// like the control plane's API that passes it on).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlayersView {
    /// Whether the game answered (online/max/names are empty when it did not).
    pub running: bool,
    pub online: Option<u32>,
    pub max: Option<u32>,
    /// Names online: the `list` command's answer, else the status ping's sample.
    pub names: Vec<String>,
    /// Where `names` came from: `list`, `ping_sample` or absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub names_source: Option<String>,
    pub whitelist: Vec<ListedPlayer>,
    pub ops: Vec<ListedPlayer>,
    pub banned_players: Vec<ListedPlayer>,
    pub banned_ips: Vec<BannedIp>,
    /// Lists that could not be read (a broken file), with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}
