//! Per-server schedules: a cron expression (UTC) that fires a backup, a restart (with
//! an in-game warning first) or a console command. Each firing is a queue job in the
//! server's lane with the unique key `schedule:<id>:<slot>`, and the schedule's last
//! fired slot is written in the same transaction, so a slot fires once — also across
//! restarts of `zlh serve`. A chained schedule (`after`) has no cron of its own: it
//! fires for a slot only once its predecessor's firing for that slot succeeded.
//!
//! Missed slots are not replayed: a firing more than [`GRACE_SECS`] late (zlh was
//! down) is skipped.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::crontab::Cron;
use super::servers;
use super::users::User;
use super::{DomainError, invalid};
use crate::db::now_ms;
use crate::queue::{self, NewJob};

/// One firing of a schedule: payload `{schedule_id, server_id, slot}`.
pub const JOB_FIRE: &str = "schedule.fire";

/// A slot that came due more than this long ago is not fired any more.
pub const GRACE_SECS: i64 = 60;

/// Longest warning before a scheduled restart.
const WARNING_MAX_SECS: u32 = 3600;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScheduleKind {
    Backup,
    Restart,
    Command,
}

impl ScheduleKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScheduleKind::Backup => "backup",
            ScheduleKind::Restart => "restart",
            ScheduleKind::Command => "command",
        }
    }

    pub fn parse(s: &str) -> Option<ScheduleKind> {
        Some(match s {
            "backup" => ScheduleKind::Backup,
            "restart" => ScheduleKind::Restart,
            "command" => ScheduleKind::Command,
            _ => return None,
        })
    }
}

/// A schedule as the API, UI and CLI show it.
#[derive(Debug, Clone, Serialize)]
pub struct Schedule {
    pub id: i64,
    pub server_id: i64,
    pub kind: ScheduleKind,
    /// The cron expression; `None` for a chained schedule.
    pub cron: Option<String>,
    /// The schedule whose successful firing triggers this one.
    pub after: Option<i64>,
    pub command: Option<String>,
    pub warning_secs: u32,
    pub note: String,
    pub enabled: bool,
    /// The last slot fired (epoch seconds of the cron match).
    pub last_slot: Option<i64>,
    pub last_job_id: Option<i64>,
    /// The next firing (ms since the epoch), for a cron schedule.
    pub next_run_at: Option<i64>,
    pub created_by: String,
    pub created_at: i64,
}

const COLUMNS: &str = "id, server_id, kind, cron, after_id, command, warning_secs, note, enabled, \
     last_slot, last_job_id, created_by, created_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Schedule> {
    let kind: String = r.get(2)?;
    let cron: Option<String> = r.get(3)?;
    let next_run_at = cron
        .as_deref()
        .and_then(|c| Cron::parse(c).ok())
        .and_then(|c| c.next_after(now_ms().div_euclid(1000)))
        .map(|s| s * 1000);
    Ok(Schedule {
        id: r.get(0)?,
        server_id: r.get(1)?,
        kind: ScheduleKind::parse(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(
                2,
                rusqlite::types::Type::Text,
                format!("schedule kind '{kind}'").into(),
            )
        })?,
        cron,
        after: r.get(4)?,
        command: r.get(5)?,
        warning_secs: r.get(6)?,
        note: r.get(7)?,
        enabled: r.get(8)?,
        last_slot: r.get(9)?,
        last_job_id: r.get(10)?,
        next_run_at,
        created_by: r.get(11)?,
        created_at: r.get(12)?,
    })
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Schedule>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE id = ?1 AND deleted_at IS NULL"
    ))?;
    Ok(s.query_row([id], from_row).optional()?)
}

pub fn get_visible(conn: &Connection, user: &User, id: i64) -> Result<Schedule, DomainError> {
    let s = get(conn, id)?.ok_or_else(|| DomainError::NotFound(format!("schedule {id}")))?;
    servers::get_visible(conn, user, s.server_id)
        .map_err(|_| DomainError::NotFound(format!("schedule {id}")))?;
    Ok(s)
}

/// A server's schedules, oldest first.
pub fn list(conn: &Connection, user: &User, server_id: i64) -> Result<Vec<Schedule>, DomainError> {
    servers::get_visible(conn, user, server_id)?;
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM schedules WHERE server_id = ?1 AND deleted_at IS NULL ORDER BY id"
    ))?;
    let rows = s.query_map([server_id], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A new schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// `backup`, `restart` or `command`.
    pub kind: String,
    /// A cron expression (UTC); absent when `after` is given.
    #[serde(default)]
    pub cron: Option<String>,
    /// Fire after this schedule's firing succeeded (same server), instead of a cron.
    #[serde(default)]
    pub after: Option<i64>,
    /// `command`: the console command.
    #[serde(default)]
    pub command: Option<String>,
    /// `restart`: warn players this many seconds before (default 300).
    #[serde(default)]
    pub warning_secs: Option<u32>,
    #[serde(default)]
    pub note: Option<String>,
}

fn one_line(field: &str, s: &str, max: usize) -> Result<(), DomainError> {
    if s.len() > max || s.contains(['\n', '\r']) {
        return Err(invalid(field, format!("one line of at most {max} bytes")));
    }
    Ok(())
}

/// Adds a schedule to a server.
pub fn add(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    server_id: i64,
    req: &NewSchedule,
) -> Result<Schedule, DomainError> {
    let server = servers::get_visible(tx, user, server_id)?;
    if server.deleted_at.is_some() {
        return Err(DomainError::Conflict(format!(
            "server {server_id} is deleted"
        )));
    }
    let kind = ScheduleKind::parse(&req.kind)
        .ok_or_else(|| invalid("kind", "one of backup, restart, command"))?;
    let cron = req.cron.as_deref().map(str::trim).filter(|c| !c.is_empty());
    match (cron, req.after) {
        (Some(_), Some(_)) => {
            return Err(invalid(
                "after",
                "a chained schedule fires after its predecessor; give either cron or after",
            ));
        }
        (None, None) => return Err(invalid("cron", "required (or `after` for a chain)")),
        (Some(c), None) => {
            Cron::parse(c).map_err(|e| invalid("cron", e))?;
        }
        (None, Some(a)) => {
            let pred = get(tx, a)?
                .filter(|p| p.server_id == server_id)
                .ok_or_else(|| {
                    invalid("after", format!("no schedule {a} on server {server_id}"))
                })?;
            // `pred` exists before this one, so no cycle can form.
            let _ = pred;
        }
    }
    let command = match kind {
        ScheduleKind::Command => {
            let c = req.command.as_deref().map(str::trim).unwrap_or("");
            if c.is_empty() {
                return Err(invalid("command", "required for a command schedule"));
            }
            one_line("command", c, 1000)?;
            Some(c.to_string())
        }
        _ if req.command.is_some() => {
            return Err(invalid("command", "only for a command schedule"));
        }
        _ => None,
    };
    let warning_secs = match kind {
        ScheduleKind::Restart => req.warning_secs.unwrap_or(300),
        _ if req.warning_secs.is_some() => {
            return Err(invalid("warning_secs", "only for a restart schedule"));
        }
        _ => 0,
    };
    if warning_secs > WARNING_MAX_SECS {
        return Err(invalid(
            "warning_secs",
            format!("at most {WARNING_MAX_SECS}"),
        ));
    }
    let note = req.note.as_deref().unwrap_or("").trim();
    one_line("note", note, 500)?;
    tx.execute(
        "INSERT INTO schedules (server_id, kind, cron, after_id, command, warning_secs, note,
           created_by, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        params![
            server_id,
            kind.as_str(),
            cron,
            if cron.is_some() { None } else { req.after },
            command,
            warning_secs,
            note,
            format!("user:{}", user.username),
            now_ms()
        ],
    )?;
    let id = tx.last_insert_rowid();
    get(tx, id)?.ok_or_else(|| DomainError::NotFound(format!("schedule {id}")))
}

/// Removes a schedule; schedules chained after it are removed with it. Firings already
/// queued still run.
pub fn remove(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    id: i64,
) -> Result<Vec<i64>, DomainError> {
    get_visible(tx, user, id)?;
    let mut removed = Vec::new();
    let mut todo = vec![id];
    while let Some(s) = todo.pop() {
        tx.execute(
            "UPDATE schedules SET deleted_at = ?2, enabled = 0 WHERE id = ?1",
            params![s, now_ms()],
        )?;
        removed.push(s);
        let mut q = tx.prepare_cached(
            "SELECT id FROM schedules WHERE after_id = ?1 AND deleted_at IS NULL",
        )?;
        let next: Vec<i64> = q.query_map([s], |r| r.get(0))?.collect::<Result<_, _>>()?;
        todo.extend(next);
    }
    Ok(removed)
}

/// Enqueues the firing of `schedule` for `slot` (unique key `schedule:<id>:<slot>`) and
/// records the slot, in the caller's transaction. `None` when that slot already fired.
pub fn fire(
    tx: &rusqlite::Transaction<'_>,
    schedule_id: i64,
    server_id: i64,
    slot: i64,
) -> Result<Option<i64>, DomainError> {
    let last: Option<Option<i64>> = tx
        .query_row(
            "SELECT last_slot FROM schedules WHERE id = ?1",
            [schedule_id],
            |r| r.get(0),
        )
        .optional()?;
    let Some(last) = last else {
        return Ok(None);
    };
    if last.is_some_and(|l| l >= slot) {
        return Ok(None);
    }
    let job = NewJob::new(
        JOB_FIRE,
        json!({"schedule_id": schedule_id, "server_id": server_id, "slot": slot}),
    )
    .lane(format!("server:{server_id}"))
    .unique_key(format!("schedule:{schedule_id}:{slot}"))
    .max_attempts(3);
    let enq = queue::enqueue(tx, &job, now_ms())?;
    tx.execute(
        "UPDATE schedules SET last_slot = ?2, last_job_id = ?3 WHERE id = ?1",
        params![schedule_id, slot, enq.id],
    )?;
    Ok(enq.created.then_some(enq.id))
}

/// One scheduler tick at `now_secs`: fires every enabled cron schedule of a live server
/// whose latest slot in the grace window has not fired yet. Returns the new job ids.
pub fn tick(tx: &rusqlite::Transaction<'_>, now_secs: i64) -> Result<Vec<i64>, DomainError> {
    let mut q = tx.prepare_cached(
        "SELECT s.id, s.server_id, s.cron, s.last_slot, s.created_at FROM schedules s
         JOIN servers v ON v.id = s.server_id
         WHERE s.enabled = 1 AND s.deleted_at IS NULL AND s.cron IS NOT NULL
           AND v.deleted_at IS NULL",
    )?;
    let due: Vec<(i64, i64, String, Option<i64>, i64)> = q
        .query_map([], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
        })?
        .collect::<Result<_, _>>()?;
    let mut fired = Vec::new();
    for (id, server_id, cron, last, created_at) in due {
        let Ok(c) = Cron::parse(&cron) else {
            tracing::warn!(schedule = id, %cron, "a stored cron expression no longer parses");
            continue;
        };
        // Never a slot from before the schedule existed, never one already fired.
        let after = (now_secs - GRACE_SECS)
            .max(created_at.div_euclid(1000) - 1)
            .max(last.unwrap_or(i64::MIN));
        if let Some(slot) = c.latest_in(after, now_secs)
            && let Some(job) = fire(tx, id, server_id, slot)?
        {
            fired.push(job);
        }
    }
    Ok(fired)
}

/// After `schedule_id`'s firing for `slot` succeeded: fires the schedules chained
/// after it for the same slot.
pub fn fire_followers(
    tx: &rusqlite::Transaction<'_>,
    schedule_id: i64,
    slot: i64,
) -> Result<Vec<i64>, DomainError> {
    let mut q = tx.prepare_cached(
        "SELECT id, server_id FROM schedules WHERE after_id = ?1 AND enabled = 1
           AND deleted_at IS NULL",
    )?;
    let next: Vec<(i64, i64)> = q
        .query_map([schedule_id], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    let mut fired = Vec::new();
    for (id, server_id) in next {
        if let Some(job) = fire(tx, id, server_id, slot)? {
            fired.push(job);
        }
    }
    Ok(fired)
}
