//! Edge records: what is published for a server, with the exact identity needed to
//! remove it (DESIGN §5). Publish and unpublish use the same canonical names.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::Value;

use super::DomainError;
use crate::db::now_ms;

/// Where a record lives.
pub const VELOCITY: &str = "velocity";
pub const DNS_A: &str = "dns_a";
pub const DNS_SRV: &str = "dns_srv";
pub const TRAEFIK_TCP: &str = "traefik_tcp";
pub const TRAEFIK_UDP: &str = "traefik_udp";

#[derive(Debug, Clone, Serialize)]
pub struct EdgeRecord {
    pub id: i64,
    pub server_id: i64,
    pub target: String,
    pub name: String,
    pub desired: Value,
    pub identity: Option<Value>,
    pub state: String,
    pub last_error: Option<String>,
    pub attempts: i64,
    pub next_attempt_at: Option<i64>,
    pub published_at: Option<i64>,
    pub removed_at: Option<i64>,
    pub updated_at: i64,
}

const COLUMNS: &str = "id, server_id, target, name, desired, identity, state, last_error, attempts, \
     next_attempt_at, published_at, removed_at, updated_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<EdgeRecord> {
    let desired: String = r.get(4)?;
    let identity: Option<String> = r.get(5)?;
    Ok(EdgeRecord {
        id: r.get(0)?,
        server_id: r.get(1)?,
        target: r.get(2)?,
        name: r.get(3)?,
        desired: serde_json::from_str(&desired).unwrap_or(Value::Null),
        identity: identity.and_then(|i| serde_json::from_str(&i).ok()),
        state: r.get(6)?,
        last_error: r.get(7)?,
        attempts: r.get(8)?,
        next_attempt_at: r.get(9)?,
        published_at: r.get(10)?,
        removed_at: r.get(11)?,
        updated_at: r.get(12)?,
    })
}

/// Records that a server should have this thing published. An existing live row with
/// the same desired state is kept as it is; a changed one goes back to `pending`.
pub fn want(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    target: &str,
    name: &str,
    desired: &Value,
) -> Result<EdgeRecord, DomainError> {
    let existing = conn
        .query_row(
            &format!(
                "SELECT {COLUMNS} FROM edge_records
                 WHERE server_id = ?1 AND target = ?2 AND name = ?3 AND state <> 'removed'"
            ),
            params![server_id, target, name],
            from_row,
        )
        .optional()?;
    let now = now_ms();
    match existing {
        Some(r) if r.desired == *desired => Ok(r),
        Some(r) => {
            conn.execute(
                "UPDATE edge_records SET desired = ?2, state = 'pending', next_attempt_at = ?3, updated_at = ?3
                 WHERE id = ?1",
                params![r.id, desired.to_string(), now],
            )?;
            get(conn, r.id)
        }
        None => {
            conn.execute(
                "INSERT INTO edge_records (server_id, target, name, desired, state, next_attempt_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, 'pending', ?5, ?5)",
                params![server_id, target, name, desired.to_string(), now],
            )?;
            get(conn, conn.last_insert_rowid())
        }
    }
}

pub fn get(conn: &Connection, id: i64) -> Result<EdgeRecord, DomainError> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM edge_records WHERE id = ?1"),
        [id],
        from_row,
    )
    .optional()?
    .ok_or_else(|| DomainError::NotFound(format!("edge record {id}")))
}

/// A server's live records (not removed).
pub fn for_server(conn: &Connection, server_id: i64) -> Result<Vec<EdgeRecord>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM edge_records WHERE server_id = ?1 AND state <> 'removed' ORDER BY id"
    ))?;
    let rows = s.query_map([server_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Every record in state `failed`, by id.
pub fn failed(conn: &Connection) -> Result<Vec<EdgeRecord>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM edge_records WHERE state = 'failed' ORDER BY id"
    ))?;
    let rows = s.query_map([], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The published name of `target` for each of `ids` that has one, by server id.
pub fn published_names(
    conn: &Connection,
    ids: &[i64],
    target: &str,
) -> Result<std::collections::HashMap<i64, String>, DomainError> {
    let list = serde_json::to_string(ids).map_err(|e| super::invalid("ids", e.to_string()))?;
    let mut s = conn.prepare_cached(
        "SELECT server_id, name FROM edge_records
         WHERE state = 'published' AND target = ?2
           AND server_id IN (SELECT value FROM json_each(?1))",
    )?;
    let rows = s.query_map(rusqlite::params![list, target], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A record published. `false` when the record was removed meanwhile (a delete's
/// unpublish ran while this attempt was in flight): it stays removed, and the caller
/// takes back what it just published.
pub fn mark_published(
    conn: &rusqlite::Transaction<'_>,
    id: i64,
    identity: Option<&Value>,
) -> Result<bool, DomainError> {
    let now = now_ms();
    let touched = conn.execute(
        "UPDATE edge_records SET state = 'published', identity = coalesce(?2, identity),
           last_error = NULL, attempts = attempts + 1, next_attempt_at = NULL,
           published_at = ?3, updated_at = ?3
         WHERE id = ?1 AND state <> 'removed'",
        params![id, identity.map(Value::to_string), now],
    )?;
    Ok(touched == 1)
}

/// Whether a record is still wanted (not removed).
pub fn is_live(conn: &Connection, id: i64) -> Result<bool, DomainError> {
    Ok(conn
        .query_row(
            "SELECT state <> 'removed' FROM edge_records WHERE id = ?1",
            [id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false))
}

/// A failed publish: kept with its error, tried again at `retry_at`.
pub fn mark_failed(
    conn: &rusqlite::Transaction<'_>,
    id: i64,
    error: &str,
    retry_at: i64,
) -> Result<(), DomainError> {
    conn.execute(
        "UPDATE edge_records SET state = 'failed', last_error = ?2, attempts = attempts + 1,
           next_attempt_at = ?3, updated_at = ?4
         WHERE id = ?1 AND state <> 'removed'",
        params![id, error, retry_at, now_ms()],
    )?;
    Ok(())
}

/// Remembers a failed removal on a record that is still published.
pub fn note_error(
    conn: &rusqlite::Transaction<'_>,
    id: i64,
    error: &str,
) -> Result<(), DomainError> {
    conn.execute(
        "UPDATE edge_records SET last_error = ?2, updated_at = ?3 WHERE id = ?1 AND state <> 'removed'",
        params![id, error, now_ms()],
    )?;
    Ok(())
}

pub fn mark_removed(conn: &rusqlite::Transaction<'_>, id: i64) -> Result<(), DomainError> {
    let now = now_ms();
    conn.execute(
        "UPDATE edge_records SET state = 'removed', removed_at = ?2, updated_at = ?2,
           next_attempt_at = NULL WHERE id = ?1",
        params![id, now],
    )?;
    Ok(())
}

/// Records of running servers waiting for a (re)publish attempt now.
pub fn due(conn: &Connection, now: i64) -> Result<Vec<EdgeRecord>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM edge_records e
         WHERE e.state IN ('pending', 'failed') AND coalesce(e.next_attempt_at, 0) <= ?1
           AND EXISTS (SELECT 1 FROM servers s WHERE s.id = e.server_id
                       AND s.status = 'running' AND s.deleted_at IS NULL)
         ORDER BY e.id"
    ))?;
    let rows = s.query_map([now], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Published records of one target for running servers (e.g. what Velocity should know).
pub fn published(conn: &Connection, target: &str) -> Result<Vec<EdgeRecord>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM edge_records e
         WHERE e.target = ?1 AND e.state = 'published'
           AND EXISTS (SELECT 1 FROM servers s WHERE s.id = e.server_id
                       AND s.status = 'running' AND s.deleted_at IS NULL)
         ORDER BY e.id"
    ))?;
    let rows = s.query_map([target], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Live records of one target whose server is not `running` and has no job in its
/// lane: what readiness says must not be out (a crashed server's proxy registration).
pub fn live_for_unready(conn: &Connection, target: &str) -> Result<Vec<EdgeRecord>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM edge_records e
         WHERE e.target = ?1 AND e.state <> 'removed'
           AND EXISTS (SELECT 1 FROM servers s WHERE s.id = e.server_id
                       AND s.status <> 'running' AND s.deleted_at IS NULL
                       AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.lane = 'server:' || s.id
                                       AND j.state IN {}))
         ORDER BY e.id",
        crate::queue::LIVE_STATES_SQL
    ))?;
    let rows = s.query_map([target], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Names (lower case) of servers that must not be registered with the proxy: not
/// deleted, not `running`, no job in their lane (a job publishes or withdraws itself).
pub fn unready_server_names(conn: &Connection) -> Result<Vec<(i64, String)>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT id, lower(name) FROM servers s
         WHERE deleted_at IS NULL AND status <> 'running'
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.lane = 'server:' || s.id
                           AND j.state IN {})",
        crate::queue::LIVE_STATES_SQL
    ))?;
    let rows = s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
