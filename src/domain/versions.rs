//! Changing the version a server runs: the request's rules (a downgrade must be
//! confirmed) and the one job in the server's lane that backs up, installs, waits
//! for ready and rolls back when the new version does not come up.

use std::cmp::Ordering;

use rusqlite::{Transaction, params};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::servers::{self, ServerStatus};
use super::users::User;
use super::{DomainError, invalid};
use crate::db::now_ms;
use crate::queue::{self, NewJob};

/// Backup → stop → install → start → ready, else roll back (lane `server:<id>`).
pub const JOB_VERSION: &str = "server.version";

/// How long the new version gets to answer its readiness probe, by default.
pub const DEFAULT_READY_DEADLINE_SECS: u64 = 600;

/// `POST /api/v1/servers/{id}/version`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VersionChange {
    pub version: String,
    /// A mod loader's version (Fabric …): no built-in template takes one yet.
    #[serde(default)]
    pub loader_version: Option<String>,
    /// Needed to move to an older version: worlds do not convert back.
    #[serde(default)]
    pub confirm_downgrade: bool,
    /// How long the new version gets to become ready before the rollback (10–3600 s).
    #[serde(default)]
    pub ready_deadline_secs: Option<u64>,
}

/// What the job carries.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VersionJob {
    pub server_id: i64,
    pub from: String,
    pub to: String,
    pub ready_deadline_secs: u64,
}

/// Orders dotted versions by their numeric parts (`1.21.4` > `1.9`); `None` when
/// either is not made of numbers (a snapshot name), where no order is claimed.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let parse = |v: &str| -> Option<Vec<u64>> { v.split('.').map(|p| p.parse().ok()).collect() };
    Some(parse(a)?.cmp(&parse(b)?))
}

/// Queues the change. Returns the job and, for a confirmed downgrade, its warning.
pub fn request(
    tx: &Transaction<'_>,
    user: &User,
    server_id: i64,
    req: &VersionChange,
) -> Result<(i64, Option<String>), DomainError> {
    let server = servers::get_visible(tx, user, server_id)?;
    if !super::is_version(&req.version) {
        return Err(invalid(
            "version",
            "1-40 of letters, digits, '.', '_', '-', '+', and no '..'",
        ));
    }
    if req.loader_version.is_some() {
        return Err(invalid(
            "loader_version",
            "no template takes a loader version yet: leave it out",
        ));
    }
    let deadline = req
        .ready_deadline_secs
        .unwrap_or(DEFAULT_READY_DEADLINE_SECS);
    if !(10..=3600).contains(&deadline) {
        return Err(invalid("ready_deadline_secs", "from 10 to 3600 seconds"));
    }
    if server.deleted_at.is_some() || server.status == ServerStatus::Deleted {
        return Err(DomainError::Conflict(format!(
            "server {server_id} is deleted"
        )));
    }
    if !matches!(server.status, ServerStatus::Running | ServerStatus::Stopped) {
        return Err(DomainError::Conflict(format!(
            "{} is {}: a version change needs it running or stopped",
            server.name, server.status
        )));
    }
    if server.version == req.version {
        return Err(DomainError::Conflict(format!(
            "{} already runs version {}",
            server.name, req.version
        )));
    }
    let (_, node) = servers::context(tx, &server)?;
    if node.kind != "local" {
        return Err(DomainError::Conflict(format!(
            "version changes with automatic rollback work on local nodes only for now; {} is on {} node {}",
            server.name, node.kind, node.name
        )));
    }
    let warning = match compare(&req.version, &server.version) {
        Some(Ordering::Less) => {
            let w = format!(
                "{} is older than {}: a world saved by a newer version does not convert back \
                 and may not load (the rollback backup is kept)",
                req.version, server.version
            );
            if !req.confirm_downgrade {
                return Err(invalid(
                    "confirm_downgrade",
                    format!("{w}; send \"confirm_downgrade\": true to go ahead"),
                ));
            }
            Some(w)
        }
        _ => None,
    };
    let payload = VersionJob {
        server_id,
        from: server.version.clone(),
        to: req.version.clone(),
        ready_deadline_secs: deadline,
    };
    let job = NewJob::new(JOB_VERSION, json!(payload))
        .lane(servers::lane(server_id))
        .unique_key(format!("server:{server_id}:version:{}", req.version))
        // A run cut short (zlh killed mid-change) resumes from the job's checkpoint:
        // the first run's backup is reused, never a second one of the new world.
        .max_attempts(3);
    let id = queue::enqueue(tx, &job, now_ms())?.id;
    let mut note = format!(
        "version change requested: {} → {}",
        server.version, req.version
    );
    if let Some(w) = &warning {
        note.push_str(&format!(" (downgrade confirmed: {w})"));
    }
    servers::add_event(
        tx,
        server_id,
        None,
        None,
        Some(id),
        &format!("user:{}", user.username),
        &note,
    )?;
    Ok((id, warning))
}

/// Records the version the server is to run and a new install id (the agent
/// reinstalls on it, keeping the world); the last agent config no longer counts.
pub fn set_version(
    tx: &Transaction<'_>,
    server_id: i64,
    version: &str,
) -> Result<String, DomainError> {
    let install_id = super::random_secret()?[..16].to_string();
    tx.execute(
        "UPDATE servers SET version = ?2, install_id = ?3,
           checkpoints = json_remove(checkpoints, '$.agent_config'), updated_at = ?4
         WHERE id = ?1",
        params![server_id, version, install_id, now_ms()],
    )?;
    Ok(install_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_by_their_numbers() {
        assert_eq!(compare("1.21.4", "1.9"), Some(Ordering::Greater));
        assert_eq!(compare("1.20", "1.20.1"), Some(Ordering::Less));
        assert_eq!(compare("1.0", "1.0"), Some(Ordering::Equal));
        assert_eq!(compare("24w10a", "1.20"), None);
    }
}
