//! Nodes: where containers live, with their VMID range, port pool and capacity.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{DomainError, invalid, is_dns_label};
use crate::db::now_ms;
// Keys of node settings that are secrets: never shown, sealed at rest.
use crate::db::secret::NODE_SECRET_KEYS as SECRET_KEYS;

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    pub id: i64,
    pub name: String,
    pub kind: String,
    /// Kind-specific settings (secrets inside: use [`Node::public`] for output).
    #[serde(skip)]
    pub settings: Value,
    pub memory_mb: i64,
    pub vmid_min: i64,
    pub vmid_max: i64,
    pub port_min: i64,
    pub port_max: i64,
    pub enabled: bool,
    pub created_at: i64,
}

impl Node {
    /// The node as the API shows it: settings with secrets blanked.
    pub fn public(&self) -> Value {
        let mut v = serde_json::to_value(self).unwrap_or(Value::Null);
        v["settings"] = self.public_settings();
        v
    }

    /// The settings with secret values blanked.
    pub fn public_settings(&self) -> Value {
        let mut settings = self.settings.clone();
        if let Some(obj) = settings.as_object_mut() {
            for k in SECRET_KEYS {
                if obj.contains_key(*k) {
                    obj.insert((*k).into(), Value::String("********".into()));
                }
            }
        }
        settings
    }
}

/// A node to add.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewNode {
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub settings: Value,
    pub memory_mb: i64,
    #[serde(default)]
    pub vmid_min: Option<i64>,
    #[serde(default)]
    pub vmid_max: Option<i64>,
    #[serde(default)]
    pub port_min: Option<i64>,
    #[serde(default)]
    pub port_max: Option<i64>,
}

const COLUMNS: &str = "id, name, kind, settings, memory_mb, vmid_min, vmid_max, port_min, port_max, enabled, created_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Node> {
    let settings: String = r.get(3)?;
    let settings = serde_json::from_str(&settings).unwrap_or(Value::Null);
    let settings = crate::db::secret::open_settings(&settings).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(3, rusqlite::types::Type::Text, Box::new(e))
    })?;
    Ok(Node {
        id: r.get(0)?,
        name: r.get(1)?,
        kind: r.get(2)?,
        settings,
        memory_mb: r.get(4)?,
        vmid_min: r.get(5)?,
        vmid_max: r.get(6)?,
        port_min: r.get(7)?,
        port_max: r.get(8)?,
        enabled: r.get(9)?,
        created_at: r.get(10)?,
    })
}

pub fn create(conn: &rusqlite::Transaction<'_>, n: &NewNode) -> Result<Node, DomainError> {
    if !is_dns_label(&n.name) {
        return Err(invalid("name", "a DNS label: a-z, 0-9 and '-', at most 63"));
    }
    if n.kind != "local" && n.kind != "proxmox" {
        return Err(invalid("kind", "must be 'local' or 'proxmox'"));
    }
    if !(256..=16_777_216).contains(&n.memory_mb) {
        return Err(invalid("memory_mb", "between 256 and 16777216"));
    }
    let (vmid_min, vmid_max) = (n.vmid_min.unwrap_or(5000), n.vmid_max.unwrap_or(5999));
    if !(100..=999_999_999).contains(&vmid_min) || vmid_max < vmid_min || vmid_max > 999_999_999 {
        return Err(invalid("vmid_min", "a range within 100..999999999"));
    }
    let (port_min, port_max) = (n.port_min.unwrap_or(30000), n.port_max.unwrap_or(30999));
    if !(1024..=65535).contains(&port_min) || port_max < port_min || port_max > 65535 {
        return Err(invalid("port_min", "a range within 1024..65535"));
    }
    if n.kind == "local" {
        let existing: Option<String> = conn
            .query_row("SELECT name FROM nodes WHERE kind = 'local'", [], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(name) = existing {
            return Err(DomainError::Conflict(format!(
                "this host already has its local node '{name}'"
            )));
        }
    }
    if n.kind == "proxmox" {
        crate::runtime::proxmox_settings_check(&n.settings)
            .map_err(|(field, msg)| invalid(&format!("settings.{field}"), msg))?;
    }
    let res = conn.execute(
        "INSERT INTO nodes (name, kind, settings, memory_mb, vmid_min, vmid_max, port_min, port_max, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            n.name,
            n.kind,
            crate::db::secret::seal_settings(conn, &n.settings)
                .map_err(crate::db::DbError::from)?
                .to_string(),
            n.memory_mb,
            vmid_min,
            vmid_max,
            port_min,
            port_max,
            now_ms()
        ],
    );
    match res {
        Ok(_) => get(conn, conn.last_insert_rowid())?
            .ok_or_else(|| DomainError::NotFound("new node".into())),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(DomainError::Conflict(format!(
                "a node named '{}' exists",
                n.name
            )))
        }
        Err(e) => Err(e.into()),
    }
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Node>, DomainError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM nodes WHERE id = ?1"),
            [id],
            from_row,
        )
        .optional()?)
}

pub fn get_by_name(conn: &Connection, name: &str) -> Result<Option<Node>, DomainError> {
    Ok(conn
        .query_row(
            &format!("SELECT {COLUMNS} FROM nodes WHERE name = ?1"),
            [name],
            from_row,
        )
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<Node>, DomainError> {
    let mut s = conn.prepare(&format!("SELECT {COLUMNS} FROM nodes ORDER BY id"))?;
    let rows = s.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Makes sure the embedded default exists: one `local` node offering this host's memory.
pub fn ensure_local(
    conn: &rusqlite::Transaction<'_>,
    ports: (u16, u16),
) -> Result<(), DomainError> {
    let any: Option<i64> = conn
        .query_row("SELECT id FROM nodes LIMIT 1", [], |r| r.get(0))
        .optional()?;
    if any.is_some() {
        return Ok(());
    }
    let memory_mb = host_memory_mb().unwrap_or(8192);
    create(
        conn,
        &NewNode {
            name: "local".into(),
            kind: "local".into(),
            settings: Value::Object(Default::default()),
            memory_mb,
            vmid_min: None,
            vmid_max: None,
            port_min: Some(ports.0 as i64),
            port_max: Some(ports.1 as i64),
        },
    )?;
    Ok(())
}

fn host_memory_mb() -> Option<i64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: i64 = text
        .lines()
        .find(|l| l.starts_with("MemTotal:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// Memory still free on each enabled node: capacity minus live servers' memory.
pub fn free_memory(conn: &Connection) -> Result<Vec<(Node, i64)>, DomainError> {
    let nodes = list(conn)?;
    let mut out = Vec::new();
    for n in nodes.into_iter().filter(|n| n.enabled) {
        let used: i64 = conn.query_row(
            "SELECT coalesce(sum(memory_mb), 0) FROM servers WHERE node_id = ?1 AND deleted_at IS NULL",
            [n.id],
            |r| r.get(0),
        )?;
        let free = n.memory_mb - used;
        out.push((n, free));
    }
    Ok(out)
}

/// Picks the node for a new server: the named one, or the one with the most free memory.
pub fn place(conn: &Connection, named: Option<&str>, memory_mb: i64) -> Result<Node, DomainError> {
    let free = free_memory(conn)?;
    if let Some(name) = named {
        let (node, left) = free
            .into_iter()
            .find(|(n, _)| n.name == name)
            .ok_or_else(|| invalid("node", format!("no enabled node named '{name}'")))?;
        if left < memory_mb {
            return Err(DomainError::Conflict(format!(
                "node '{name}' has {left} MB free, {memory_mb} MB asked"
            )));
        }
        return Ok(node);
    }
    free.into_iter()
        .filter(|(_, left)| *left >= memory_mb)
        .max_by_key(|(n, left)| (*left, -n.id))
        .map(|(n, _)| n)
        .ok_or_else(|| DomainError::Conflict(format!("no node has {memory_mb} MB of memory free")))
}

/// Every node's name by id (what a server list shows beside each server).
pub fn names(conn: &Connection) -> Result<std::collections::HashMap<i64, String>, DomainError> {
    let mut s = conn.prepare_cached("SELECT id, name FROM nodes")?;
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
