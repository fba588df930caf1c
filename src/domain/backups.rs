//! World backups of game servers: the rows (server, when, where, size, checksum, state,
//! note, protected), requests that enqueue backup / restore / delete jobs in the
//! server's lane, and retention (a pure policy function and the per-server setting).
//!
//! Every function takes a connection and the calling [`User`] (the API, the UI and the
//! CLI call the same ones); another user's server or backup is "not found".

use std::collections::BTreeSet;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::servers::{self, ServerStatus};
use super::users::User;
use super::{DomainError, invalid};
use crate::db::now_ms;
use crate::queue::{self, NewJob};

/// Takes one backup (payload `{server_id, backup_id}`), lane `server:<id>`.
pub const JOB_BACKUP: &str = "world.backup";
/// Restores a backup into its server (payload `{server_id, backup_id}`).
pub const JOB_RESTORE: &str = "world.restore";
/// Deletes a backup's copy, then marks the row `deleted`.
pub const JOB_DELETE: &str = "world.backup_delete";

/// Longest note on a backup.
const NOTE_MAX: usize = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BackupState {
    Pending,
    Running,
    Completed,
    Failed,
    Deleted,
}

impl BackupState {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupState::Pending => "pending",
            BackupState::Running => "running",
            BackupState::Completed => "completed",
            BackupState::Failed => "failed",
            BackupState::Deleted => "deleted",
        }
    }
}

impl rusqlite::types::FromSql for BackupState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        Ok(match v.as_str()? {
            "pending" => BackupState::Pending,
            "running" => BackupState::Running,
            "completed" => BackupState::Completed,
            "failed" => BackupState::Failed,
            "deleted" => BackupState::Deleted,
            s => {
                return Err(rusqlite::types::FromSqlError::Other(
                    format!("backup state '{s}'").into(),
                ));
            }
        })
    }
}

/// One backup, as the API, UI and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct Backup {
    pub id: i64,
    pub server_id: i64,
    /// `local` (an archive under the data dir) or `proxmox` (a vzdump volume).
    pub kind: String,
    pub state: BackupState,
    /// The archive's path, or the Proxmox volume id.
    pub location: Option<String>,
    /// Proxmox: the storage holding the volume.
    pub storage: Option<String>,
    pub size_bytes: Option<i64>,
    /// Local archives: the SHA-256 of the file (checked before every restore).
    pub sha256: Option<String>,
    pub note: String,
    pub protected: bool,
    /// What happened along the way (e.g. console steps skipped because the game was
    /// not running).
    pub detail: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// `user:<name>` or `schedule:<id>`.
    pub actor: String,
    pub job_id: Option<i64>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub deleted_at: Option<i64>,
}

const COLUMNS: &str = "id, server_id, kind, state, location, storage, size_bytes, sha256, note, \
     protected, detail, error, actor, job_id, created_at, finished_at, deleted_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Backup> {
    Ok(Backup {
        id: r.get(0)?,
        server_id: r.get(1)?,
        kind: r.get(2)?,
        state: r.get(3)?,
        location: r.get(4)?,
        storage: r.get(5)?,
        size_bytes: r.get(6)?,
        sha256: r.get(7)?,
        note: r.get(8)?,
        protected: r.get(9)?,
        detail: r.get(10)?,
        error: r.get(11)?,
        actor: r.get(12)?,
        job_id: r.get(13)?,
        created_at: r.get(14)?,
        finished_at: r.get(15)?,
        deleted_at: r.get(16)?,
    })
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Backup>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM world_backups WHERE id = ?1"
    ))?;
    Ok(s.query_row([id], from_row).optional()?)
}

/// A backup of a server the user may see.
pub fn get_visible(conn: &Connection, user: &User, id: i64) -> Result<Backup, DomainError> {
    let b = get(conn, id)?.ok_or_else(|| DomainError::NotFound(format!("backup {id}")))?;
    servers::get_visible(conn, user, b.server_id)
        .map_err(|_| DomainError::NotFound(format!("backup {id}")))?;
    Ok(b)
}

/// A server's backups, newest first (`deleted` ones only with `include_deleted`).
pub fn list(
    conn: &Connection,
    user: &User,
    server_id: i64,
    include_deleted: bool,
) -> Result<Vec<Backup>, DomainError> {
    servers::get_visible(conn, user, server_id)?;
    list_for_server(conn, server_id, include_deleted)
}

pub fn list_for_server(
    conn: &Connection,
    server_id: i64,
    include_deleted: bool,
) -> Result<Vec<Backup>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM world_backups WHERE server_id = ?1 AND (?2 OR state <> 'deleted')
         ORDER BY id DESC"
    ))?;
    let rows = s.query_map(params![server_id, include_deleted], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

fn check_note(note: Option<&str>) -> Result<String, DomainError> {
    let note = note.unwrap_or("").trim().to_string();
    if note.len() > NOTE_MAX || note.contains(['\n', '\r']) {
        return Err(invalid(
            "note",
            format!("one line of at most {NOTE_MAX} bytes"),
        ));
    }
    Ok(note)
}

/// Statuses in which a server has a world to copy or to replace.
fn has_world(status: ServerStatus) -> bool {
    matches!(
        status,
        ServerStatus::Running | ServerStatus::Stopped | ServerStatus::Crashed
    )
}

/// Inserts a `pending` backup row taken by the job `job_id` (a schedule firing).
pub fn insert_row(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    node_kind: &str,
    note: &str,
    actor: &str,
    job_id: Option<i64>,
) -> Result<i64, DomainError> {
    tx.execute(
        "INSERT INTO world_backups (server_id, kind, state, note, actor, job_id, created_at)
         VALUES (?1, ?2, 'pending', ?3, ?4, ?5, ?6)",
        params![server_id, node_kind, note, actor, job_id, now_ms()],
    )?;
    Ok(tx.last_insert_rowid())
}

/// Marks a backup's copy as under way by job `job_id`.
pub fn mark_running(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    job_id: i64,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE world_backups SET state = 'running', job_id = ?2 WHERE id = ?1",
        params![id, job_id],
    )?;
    Ok(())
}

/// Marks a safety copy (taken before a restore) as under way and protected, so
/// retention never prunes it before an operator has looked.
pub fn mark_running_protected(tx: &rusqlite::Transaction<'_>, id: i64) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE world_backups SET state = 'running', protected = 1 WHERE id = ?1",
        [id],
    )?;
    Ok(())
}

/// Marks a backup deleted once its copy is gone; a protected one stays.
pub fn mark_deleted(tx: &rusqlite::Transaction<'_>, id: i64) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE world_backups SET state = 'deleted', deleted_at = ?2 WHERE id = ?1
           AND protected = 0",
        params![id, now_ms()],
    )?;
    Ok(())
}

/// Records a finished copy on a backup row: where it is, its size and checksum.
pub fn mark_completed(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    location: &str,
    storage: Option<&str>,
    size: i64,
    sha256: Option<&str>,
    detail: Option<&str>,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE world_backups SET state = 'completed', location = ?2, storage = ?3,
           size_bytes = ?4, sha256 = ?5, detail = ?6, error = NULL, finished_at = ?7
         WHERE id = ?1",
        params![id, location, storage, size, sha256, detail, now_ms()],
    )?;
    Ok(())
}

/// Records why a backup's copy failed.
pub fn mark_failed(
    tx: &rusqlite::Transaction<'_>,
    id: i64,
    error: &str,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE world_backups SET state = 'failed', error = ?2, finished_at = ?3 WHERE id = ?1",
        params![id, error, now_ms()],
    )?;
    Ok(())
}

/// Inserts a `pending` backup row and its job (in the caller's transaction).
pub fn insert_pending(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    node_kind: &str,
    note: &str,
    actor: &str,
) -> Result<(Backup, i64), DomainError> {
    let id = insert_row(tx, server_id, node_kind, note, actor, None)?;
    let job = NewJob::new(JOB_BACKUP, json!({"server_id": server_id, "backup_id": id}))
        .lane(format!("server:{server_id}"))
        .unique_key(format!("world:backup:{id}"))
        .max_attempts(3);
    let job_id = queue::enqueue(tx, &job, now_ms())?.id;
    tx.execute(
        "UPDATE world_backups SET job_id = ?2 WHERE id = ?1",
        params![id, job_id],
    )?;
    servers::add_event(
        tx,
        server_id,
        None,
        None,
        Some(job_id),
        actor,
        &format!("world backup {id} requested"),
    )?;
    let b = get(tx, id)?.ok_or_else(|| DomainError::NotFound(format!("backup {id}")))?;
    Ok((b, job_id))
}

/// Requests a backup of a server's world: a `pending` row and a job in the server's
/// lane, committed together.
pub fn request_backup(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    server_id: i64,
    note: Option<&str>,
) -> Result<(Backup, i64), DomainError> {
    let server = servers::get_visible(tx, user, server_id)?;
    let note = check_note(note)?;
    if server.deleted_at.is_some() || !has_world(server.status) {
        return Err(DomainError::Conflict(format!(
            "cannot back up server {server_id} while it is {}",
            server.status
        )));
    }
    let (_, node) = servers::context(tx, &server)?;
    insert_pending(
        tx,
        server_id,
        &node.kind,
        &note,
        &format!("user:{}", user.username),
    )
}

/// Where a restore goes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    /// A new server (a clone) with this name; absent = back into the backup's server.
    #[serde(default)]
    pub new_server: Option<String>,
}

/// What a restore request did.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreRequested {
    pub job_id: i64,
    /// The server that receives the world (the new one for a clone).
    pub server_id: i64,
    /// True when a new server was created.
    pub cloned: bool,
}

/// Requests a restore: into the backup's own server (a job in its lane: stop the game,
/// restore, start, wait for ready), or into a new server created from the same
/// template and version whose provisioning seeds the world before its first start
/// (local: the archive is unpacked into its directory; Proxmox: its container is
/// restored from the volume instead of cloned from the base template).
pub fn request_restore(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    backup_id: i64,
    req: &RestoreRequest,
    quota: super::users::Quota,
) -> Result<RestoreRequested, DomainError> {
    let b = get_visible(tx, user, backup_id)?;
    if b.state != BackupState::Completed {
        return Err(DomainError::Conflict(format!(
            "backup {backup_id} is {}: only a completed backup can be restored",
            b.state.as_str()
        )));
    }
    let source = servers::get_visible(tx, user, b.server_id)?;
    let actor = format!("user:{}", user.username);
    match &req.new_server {
        None => {
            if source.deleted_at.is_some() || !has_world(source.status) {
                return Err(DomainError::Conflict(format!(
                    "cannot restore into server {} while it is {}",
                    source.id, source.status
                )));
            }
            let job = NewJob::new(
                JOB_RESTORE,
                json!({"server_id": source.id, "backup_id": backup_id}),
            )
            .lane(format!("server:{}", source.id))
            .unique_key(format!("server:{}:restore", source.id))
            .max_attempts(3);
            let enq = queue::enqueue(tx, &job, now_ms())?;
            if !enq.created {
                return Err(DomainError::Conflict(format!(
                    "a restore of server {} is already queued (job {})",
                    source.id, enq.id
                )));
            }
            servers::add_event(
                tx,
                source.id,
                None,
                None,
                Some(enq.id),
                &actor,
                &format!("restore of world backup {backup_id} requested"),
            )?;
            Ok(RestoreRequested {
                job_id: enq.id,
                server_id: source.id,
                cloned: false,
            })
        }
        Some(name) => {
            let (template, node) = servers::context(tx, &source)?;
            // A local archive seeds a directory; a Proxmox volume is restored into the
            // new server's container on the same node.
            if b.kind != node.kind {
                return Err(DomainError::Conflict(format!(
                    "backup {backup_id} is a {} backup but server {} is now on a {} node",
                    b.kind, source.id, node.kind
                )));
            }
            let create = servers::CreateServer {
                name: name.clone(),
                template: template.slug.clone(),
                version: source.version.clone(),
                memory_mb: Some(source.memory_mb as u32),
                cores: Some(source.cores as u32),
                node: Some(node.name.clone()),
                eula: source.eula_accepted,
            };
            let created = servers::create(tx, user, &create, None, quota).map_err(|e| match e {
                // The only field the caller chose is the name.
                DomainError::Invalid { field, message } if field == "name" => {
                    invalid("new_server", message)
                }
                DomainError::Taken { field, message } if field == "name" => DomainError::Taken {
                    field: "new_server".into(),
                    message,
                },
                other => other,
            })?;
            let new_id = created.server.id;
            tx.execute(
                "INSERT INTO world_seeds (server_id, backup_id) VALUES (?1, ?2)",
                params![new_id, backup_id],
            )?;
            servers::add_event(
                tx,
                new_id,
                None,
                None,
                Some(created.job_id),
                &actor,
                &format!(
                    "a clone of server {} ({}): the world comes from backup {backup_id}",
                    source.id, source.name
                ),
            )?;
            Ok(RestoreRequested {
                job_id: created.job_id,
                server_id: new_id,
                cloned: true,
            })
        }
    }
}

/// The backup a new server's world is seeded from, if it is a clone and not seeded yet.
pub fn pending_seed(conn: &Connection, server_id: i64) -> Result<Option<Backup>, DomainError> {
    let id: Option<i64> = conn
        .query_row(
            "SELECT backup_id FROM world_seeds WHERE server_id = ?1 AND seeded_at IS NULL",
            [server_id],
            |r| r.get(0),
        )
        .optional()?;
    match id {
        Some(id) => get(conn, id),
        None => Ok(None),
    }
}

pub fn mark_seeded(conn: &rusqlite::Transaction<'_>, server_id: i64) -> Result<(), DomainError> {
    conn.execute(
        "UPDATE world_seeds SET seeded_at = ?2 WHERE server_id = ?1",
        params![server_id, now_ms()],
    )?;
    Ok(())
}

/// Protects a backup from retention and deletion, or lifts that.
pub fn set_protected(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    backup_id: i64,
    protected: bool,
) -> Result<Backup, DomainError> {
    let b = get_visible(tx, user, backup_id)?;
    if b.state == BackupState::Deleted {
        return Err(DomainError::Conflict(format!(
            "backup {backup_id} is deleted"
        )));
    }
    tx.execute(
        "UPDATE world_backups SET protected = ?2 WHERE id = ?1",
        params![backup_id, protected],
    )?;
    get(tx, backup_id)?.ok_or_else(|| DomainError::NotFound(format!("backup {backup_id}")))
}

/// Requests deletion of a backup (its copy first, then the row is marked `deleted`).
/// A protected backup is refused.
pub fn request_delete(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    backup_id: i64,
) -> Result<i64, DomainError> {
    let b = get_visible(tx, user, backup_id)?;
    if b.protected {
        return Err(DomainError::Conflict(format!(
            "backup {backup_id} is protected: unprotect it first"
        )));
    }
    if matches!(b.state, BackupState::Pending | BackupState::Running) {
        return Err(DomainError::Conflict(format!(
            "backup {backup_id} is still {}",
            b.state.as_str()
        )));
    }
    if b.state == BackupState::Deleted {
        return Err(DomainError::Conflict(format!(
            "backup {backup_id} is already deleted"
        )));
    }
    let job = NewJob::new(
        JOB_DELETE,
        json!({"server_id": b.server_id, "backup_ids": [backup_id]}),
    )
    .lane(format!("server:{}", b.server_id))
    .unique_key(format!("world:delete:{backup_id}"))
    .max_attempts(5);
    Ok(queue::enqueue(tx, &job, now_ms())?.id)
}

/// A server's retention policy. Both zero (or no policy set) keeps everything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retention {
    /// Keep the newest N completed backups.
    pub keep_last: u32,
    /// Keep the newest completed backup of each of the last D days (UTC, today included).
    pub keep_daily: u32,
}

impl Retention {
    /// No pruning at all.
    pub fn keeps_everything(&self) -> bool {
        self.keep_last == 0 && self.keep_daily == 0
    }
}

pub fn retention_of(conn: &Connection, server_id: i64) -> Result<Retention, DomainError> {
    Ok(conn
        .query_row(
            "SELECT keep_last, keep_daily FROM world_retention WHERE server_id = ?1",
            [server_id],
            |r| {
                Ok(Retention {
                    keep_last: r.get(0)?,
                    keep_daily: r.get(1)?,
                })
            },
        )
        .optional()?
        .unwrap_or(Retention {
            keep_last: 0,
            keep_daily: 0,
        }))
}

pub fn retention(conn: &Connection, user: &User, server_id: i64) -> Result<Retention, DomainError> {
    servers::get_visible(conn, user, server_id)?;
    retention_of(conn, server_id)
}

pub fn set_retention(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    server_id: i64,
    policy: Retention,
) -> Result<Retention, DomainError> {
    servers::get_visible(tx, user, server_id)?;
    if policy.keep_last > 10_000 {
        return Err(invalid("keep_last", "at most 10000"));
    }
    if policy.keep_daily > 3650 {
        return Err(invalid("keep_daily", "at most 3650 (ten years)"));
    }
    tx.execute(
        "INSERT INTO world_retention (server_id, keep_last, keep_daily, updated_at)
         VALUES (?1, ?2, ?3, ?4)
         ON CONFLICT (server_id) DO UPDATE SET keep_last = excluded.keep_last,
           keep_daily = excluded.keep_daily, updated_at = excluded.updated_at",
        params![server_id, policy.keep_last, policy.keep_daily, now_ms()],
    )?;
    servers::add_event(
        tx,
        server_id,
        None,
        None,
        None,
        &format!("user:{}", user.username),
        &format!(
            "backup retention set: keep the last {}, and one a day for {} days",
            policy.keep_last, policy.keep_daily
        ),
    )?;
    Ok(policy)
}

/// What retention looks at: one completed backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Candidate {
    pub id: i64,
    pub created_at: i64,
    pub protected: bool,
}

/// The backups `policy` keeps at `now` (ms): protected ones, the newest `keep_last`,
/// and the newest of each of the last `keep_daily` UTC days (today included). Pure.
/// A policy that keeps everything returns every id.
pub fn retention_keep(candidates: &[Candidate], policy: Retention, now: i64) -> BTreeSet<i64> {
    if policy.keeps_everything() {
        return candidates.iter().map(|c| c.id).collect();
    }
    let mut newest_first: Vec<&Candidate> = candidates.iter().collect();
    newest_first.sort_by_key(|c| std::cmp::Reverse((c.created_at, c.id)));
    let mut keep: BTreeSet<i64> = candidates
        .iter()
        .filter(|c| c.protected)
        .map(|c| c.id)
        .collect();
    keep.extend(
        newest_first
            .iter()
            .take(policy.keep_last as usize)
            .map(|c| c.id),
    );
    let today = now.div_euclid(86_400_000);
    let first_day = today - policy.keep_daily as i64 + 1;
    let mut days_seen = BTreeSet::new();
    for c in &newest_first {
        let day = c.created_at.div_euclid(86_400_000);
        if policy.keep_daily > 0 && day >= first_day && day <= today && days_seen.insert(day) {
            keep.insert(c.id);
        }
    }
    keep
}

/// The completed backups of a server that its policy no longer keeps.
pub fn prunable(conn: &Connection, server_id: i64, now: i64) -> Result<Vec<i64>, DomainError> {
    let policy = retention_of(conn, server_id)?;
    if policy.keeps_everything() {
        return Ok(Vec::new());
    }
    let candidates: Vec<Candidate> = list_for_server(conn, server_id, false)?
        .into_iter()
        .filter(|b| b.state == BackupState::Completed)
        .map(|b| Candidate {
            id: b.id,
            created_at: b.created_at,
            protected: b.protected,
        })
        .collect();
    let keep = retention_keep(&candidates, policy, now);
    Ok(candidates
        .iter()
        .filter(|c| !keep.contains(&c.id) && !c.protected)
        .map(|c| c.id)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;
    const HOUR: i64 = 3_600_000;

    fn c(id: i64, created_at: i64, protected: bool) -> Candidate {
        Candidate {
            id,
            created_at,
            protected,
        }
    }

    fn keep(cs: &[Candidate], keep_last: u32, keep_daily: u32, now: i64) -> Vec<i64> {
        retention_keep(
            cs,
            Retention {
                keep_last,
                keep_daily,
            },
            now,
        )
        .into_iter()
        .collect()
    }

    #[test]
    fn keep_last_keeps_the_newest_n() {
        let now = 100 * DAY;
        let cs: Vec<_> = (1..=6).map(|i| c(i, now - (7 - i) * HOUR, false)).collect();
        assert_eq!(keep(&cs, 3, 0, now), vec![4, 5, 6]);
        assert_eq!(keep(&cs, 10, 0, now), vec![1, 2, 3, 4, 5, 6]);
    }

    #[test]
    fn keep_daily_keeps_the_newest_of_each_of_the_last_days() {
        let now = 100 * DAY + 12 * HOUR;
        // Two a day for five days: ids 1,2 on day 96 … 9,10 on day 100 (today).
        let cs: Vec<_> = (0..10)
            .map(|i| c(i + 1, (96 + i / 2) * DAY + (1 + i % 2) * HOUR, false))
            .collect();
        // Today, yesterday and the day before: the later one of each day.
        assert_eq!(keep(&cs, 0, 3, now), vec![6, 8, 10]);
        // Combined with keep_last 3: 8, 9, 10 plus the daily 6.
        assert_eq!(keep(&cs, 3, 3, now), vec![6, 8, 9, 10]);
        // A day without a backup keeps nothing for it (no reaching further back).
        let gap = vec![c(1, 97 * DAY, false), c(2, 100 * DAY, false)];
        assert_eq!(keep(&gap, 0, 2, now), vec![2]);
    }

    #[test]
    fn protected_backups_are_always_kept() {
        let now = 100 * DAY;
        let cs = vec![
            c(1, 10 * DAY, true),
            c(2, 50 * DAY, false),
            c(3, 99 * DAY, false),
        ];
        assert_eq!(keep(&cs, 1, 0, now), vec![1, 3]);
        assert_eq!(keep(&cs, 0, 1, now), vec![1]);
    }

    #[test]
    fn no_policy_keeps_everything() {
        let cs = vec![c(1, 0, false), c(2, 1, false)];
        assert_eq!(keep(&cs, 0, 0, 5 * DAY), vec![1, 2]);
    }
}
