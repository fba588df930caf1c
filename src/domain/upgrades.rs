//! Agent upgrades: the version each server's agent reports, which of them run another
//! build than this zlh, and the upgrade jobs (one per server, in its lane).

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;
use serde_json::json;

use super::DomainError;
use super::servers::{self, ServerStatus};
use super::users::User;
use crate::db::now_ms;

/// The job that has one server's agent replace itself with this zlh's binary.
pub const JOB_AGENT_UPGRADE: &str = "server.agent_upgrade";

/// One server's agent as last seen.
#[derive(Debug, Clone, Serialize)]
pub struct AgentVersionRow {
    pub server_id: i64,
    pub server: String,
    pub node_id: i64,
    pub node: String,
    /// `None` until the agent was asked.
    pub version: Option<String>,
    pub seen_at: Option<i64>,
}

/// Records what a server's agent reported at `GET /version`.
pub fn record_version(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    version: &str,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE servers SET agent_version = ?2, agent_version_at = ?3 WHERE id = ?1",
        params![server_id, version, now_ms()],
    )?;
    Ok(())
}

/// Live servers whose agent reported another version than `current`, on `node_id`
/// when given.
pub fn outdated(
    conn: &Connection,
    current: &str,
    node_id: Option<i64>,
) -> Result<Vec<AgentVersionRow>, DomainError> {
    let mut s = conn.prepare_cached(
        "SELECT s.id, s.name, s.node_id, n.name, s.agent_version, s.agent_version_at
           FROM servers s JOIN nodes n ON n.id = s.node_id
          WHERE s.deleted_at IS NULL AND s.agent_version IS NOT NULL
            AND s.agent_version <> ?1 AND (?2 IS NULL OR s.node_id = ?2)
          ORDER BY s.id",
    )?;
    let rows = s
        .query_map(params![current, node_id], |r| {
            Ok(AgentVersionRow {
                server_id: r.get(0)?,
                server: r.get(1)?,
                node_id: r.get(2)?,
                node: r.get(3)?,
                version: r.get(4)?,
                seen_at: r.get(5)?,
            })
        })?
        .collect::<Result<Vec<_>, _>>()?;
    Ok(rows)
}

/// The version a server's agent last reported.
pub fn version_of(conn: &Connection, server_id: i64) -> Result<Option<String>, DomainError> {
    conn.prepare_cached("SELECT agent_version FROM servers WHERE id = ?1")?
        .query_row(params![server_id], |r| r.get::<_, Option<String>>(0))
        .optional()?
        .ok_or_else(|| DomainError::NotFound(format!("server {server_id}")))
}

/// Whether a server in `status` has an agent that can be upgraded now.
fn upgradable(status: ServerStatus) -> bool {
    use ServerStatus as S;
    matches!(status, S::Running | S::Stopped | S::Crashed | S::Failed)
}

/// Enqueues the upgrade of one server's agent (an admin's action): the same upgrade
/// already waiting is reused (unique key `server:<id>:agent_upgrade`).
pub fn request_server(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    server_id: i64,
) -> Result<i64, DomainError> {
    let server = servers::get_visible(tx, user, server_id)?;
    if server.deleted_at.is_some() || !upgradable(server.status) {
        return Err(DomainError::Conflict(format!(
            "cannot upgrade the agent of server {server_id} while it is {}",
            server.status
        )));
    }
    enqueue(tx, server_id, &format!("user:{}", user.username))
}

fn enqueue(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    actor: &str,
) -> Result<i64, DomainError> {
    let job = servers::enqueue_action(
        tx,
        server_id,
        JOB_AGENT_UPGRADE,
        json!({"server_id": server_id}),
    )?;
    servers::add_event(
        tx,
        server_id,
        None,
        None,
        Some(job),
        actor,
        "agent upgrade requested",
    )?;
    Ok(job)
}

/// Enqueues the upgrade of every agent on a node (one job per server), for `actor`
/// (an admin, or `cli`); servers whose status has no agent to upgrade (being made or
/// deleted) are skipped. Answers (server, job) pairs.
pub fn request_node(
    tx: &rusqlite::Transaction<'_>,
    actor: &str,
    node_id: i64,
) -> Result<Vec<(i64, i64)>, DomainError> {
    if super::nodes::get(tx, node_id)?.is_none() {
        return Err(DomainError::NotFound(format!("node {node_id}")));
    }
    let ids: Vec<(i64, String)> = tx
        .prepare_cached(
            "SELECT id, status FROM servers WHERE node_id = ?1 AND deleted_at IS NULL ORDER BY id",
        )?
        .query_map(params![node_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut jobs = Vec::new();
    for (id, status) in ids {
        if ServerStatus::parse(&status).is_some_and(upgradable) {
            jobs.push((id, enqueue(tx, id, actor)?));
        }
    }
    Ok(jobs)
}
