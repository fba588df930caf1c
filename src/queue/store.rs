//! The SQL side of the queue: every state transition as a synchronous function on a
//! connection or transaction, so callers can enqueue inside their own transaction.

use rusqlite::{Connection, OptionalExtension, Row, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{JobState, QueueError};

/// States in which a job still has work ahead of it (the unique-key scope).
pub const LIVE_STATES_SQL: &str = "('scheduled', 'available', 'running', 'retryable', 'held')";

/// One recorded failure of a job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptError {
    pub attempt: i64,
    pub at: i64,
    pub error: String,
}

/// A job row.
#[derive(Debug, Clone, Serialize)]
pub struct Job {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub state: JobState,
    pub attempt: i64,
    pub max_attempts: i64,
    pub priority: i64,
    pub run_at: i64,
    pub lane: Option<String>,
    pub unique_key: Option<String>,
    pub lock_by: Option<String>,
    pub lease_until: Option<i64>,
    pub cancel_requested_at: Option<i64>,
    pub held_reason: Option<String>,
    pub checkpoint: Option<Value>,
    pub errors: Vec<AttemptError>,
    pub created_at: i64,
    pub attempted_at: Option<i64>,
    pub finished_at: Option<i64>,
}

const JOB_COLUMNS: &str = "id, kind, payload, state, attempt, max_attempts, priority, run_at, lane, \
     unique_key, lock_by, lease_until, cancel_requested_at, held_reason, checkpoint, errors, \
     created_at, attempted_at, finished_at";

fn parse_json(text: Option<String>) -> Option<Value> {
    text.and_then(|t| serde_json::from_str(&t).ok())
}

impl Job {
    fn from_row(r: &Row<'_>) -> rusqlite::Result<Job> {
        let payload: String = r.get(2)?;
        let errors: String = r.get(15)?;
        Ok(Job {
            id: r.get(0)?,
            kind: r.get(1)?,
            payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
            state: r.get(3)?,
            attempt: r.get(4)?,
            max_attempts: r.get(5)?,
            priority: r.get(6)?,
            run_at: r.get(7)?,
            lane: r.get(8)?,
            unique_key: r.get(9)?,
            lock_by: r.get(10)?,
            lease_until: r.get(11)?,
            cancel_requested_at: r.get(12)?,
            held_reason: r.get(13)?,
            checkpoint: parse_json(r.get(14)?),
            errors: serde_json::from_str(&errors).unwrap_or_default(),
            created_at: r.get(16)?,
            attempted_at: r.get(17)?,
            finished_at: r.get(18)?,
        })
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    pub kind: String,
    pub payload: Value,
    pub max_attempts: i64,
    pub priority: i64,
    /// Run no earlier than this (ms since epoch); `None` = now.
    pub run_at: Option<i64>,
    pub lane: Option<String>,
    pub unique_key: Option<String>,
}

impl NewJob {
    pub fn new(kind: impl Into<String>, payload: Value) -> NewJob {
        NewJob {
            kind: kind.into(),
            payload,
            max_attempts: 5,
            priority: 0,
            run_at: None,
            lane: None,
            unique_key: None,
        }
    }
    pub fn lane(mut self, lane: impl Into<String>) -> Self {
        self.lane = Some(lane.into());
        self
    }
    pub fn unique_key(mut self, key: impl Into<String>) -> Self {
        self.unique_key = Some(key.into());
        self
    }
    pub fn max_attempts(mut self, n: i64) -> Self {
        self.max_attempts = n.max(1);
        self
    }
    /// Lower runs first.
    pub fn priority(mut self, p: i64) -> Self {
        self.priority = p;
        self
    }
    pub fn run_at(mut self, at_ms: i64) -> Self {
        self.run_at = Some(at_ms);
        self
    }
}

/// The result of an enqueue: the job id, and whether this call created it
/// (`false` = a live job with the same unique key already existed).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Enqueued {
    pub id: i64,
    pub created: bool,
}

/// Inserts a job, inside the caller's transaction. A live job with the same
/// `unique_key` is returned instead of inserting a second one.
pub fn enqueue(conn: &Connection, job: &NewJob, now: i64) -> Result<Enqueued, QueueError> {
    let run_at = job.run_at.unwrap_or(now);
    let state = if run_at > now {
        JobState::Scheduled
    } else {
        JobState::Available
    };
    let payload = serde_json::to_string(&job.payload)
        .map_err(|source| QueueError::Encode { id: 0, source })?;
    let mut insert = conn.prepare_cached(&format!(
        "INSERT INTO jobs (kind, payload, state, max_attempts, priority, run_at, lane, unique_key, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
         ON CONFLICT (unique_key) WHERE unique_key IS NOT NULL AND state IN {LIVE_STATES_SQL}
         DO NOTHING
         RETURNING id"
    ))?;
    let id: Option<i64> = insert
        .query_row(
            params![
                job.kind,
                payload,
                state.as_str(),
                job.max_attempts,
                job.priority,
                run_at,
                job.lane,
                job.unique_key,
                now
            ],
            |r| r.get(0),
        )
        .optional()?;
    if let Some(id) = id {
        return Ok(Enqueued { id, created: true });
    }
    let id: i64 = conn.query_row(
        &format!("SELECT id FROM jobs WHERE unique_key = ?1 AND state IN {LIVE_STATES_SQL}"),
        [&job.unique_key],
        |r| r.get(0),
    )?;
    Ok(Enqueued { id, created: false })
}

/// A job handed to a worker by [`claim`].
#[derive(Debug, Clone)]
pub struct Claimed {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub attempt: i64,
    pub max_attempts: i64,
    pub priority: i64,
    pub run_at: i64,
    pub lane: Option<String>,
    pub checkpoint: Option<Value>,
}

/// Moves due `scheduled` / `retryable` jobs to `available`.
pub fn promote_due(conn: &Connection, now: i64) -> Result<usize, QueueError> {
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET state = 'available'
         WHERE state IN ('scheduled', 'retryable') AND run_at <= ?1",
    )?;
    Ok(stmt.execute([now])?)
}

/// Claims up to `limit` available jobs for `lock_by` in one statement: at most one
/// per lane, none in a lane that already has a running job.
pub fn claim(
    conn: &Connection,
    lock_by: &str,
    limit: usize,
    now: i64,
    lease_ms: i64,
) -> Result<Vec<Claimed>, QueueError> {
    if limit == 0 {
        return Ok(Vec::new());
    }
    // Candidates are read in the index's order, then thinned to one per lane. Lanes
    // with a running job are excluded before the LIMIT so they cannot starve others.
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs
         SET state = 'running', lock_by = ?1, attempt = attempt + 1,
             attempted_at = ?2, lease_until = ?3
         WHERE id IN (
           SELECT id FROM (
             SELECT id, lane, priority, run_at,
                    row_number() OVER (PARTITION BY lane ORDER BY priority, run_at, id) AS rn
             FROM (
               SELECT id, lane, priority, run_at FROM jobs
               WHERE state = 'available' AND run_at <= ?2
                 AND (lane IS NULL OR lane NOT IN
                      (SELECT lane FROM jobs WHERE state = 'running' AND lane IS NOT NULL))
               ORDER BY priority, run_at, id
               LIMIT ?5
             )
           )
           WHERE lane IS NULL OR rn = 1
           ORDER BY priority, run_at, id
           LIMIT ?4
         )
         RETURNING id, kind, payload, attempt, max_attempts, priority, run_at, lane, checkpoint",
    )?;
    let scan = (limit * 4).max(64) as i64;
    let rows = stmt.query_map(
        params![lock_by, now, now + lease_ms, limit as i64, scan],
        |r| {
            let payload: String = r.get(2)?;
            Ok(Claimed {
                id: r.get(0)?,
                kind: r.get(1)?,
                payload: serde_json::from_str(&payload).unwrap_or(Value::Null),
                attempt: r.get(3)?,
                max_attempts: r.get(4)?,
                priority: r.get(5)?,
                run_at: r.get(6)?,
                lane: r.get(7)?,
                checkpoint: parse_json(r.get(8)?),
            })
        },
    )?;
    let mut out = rows.collect::<Result<Vec<_>, _>>()?;
    out.sort_by_key(|c| (c.priority, c.run_at, c.id));
    Ok(out)
}

/// The identity a worker holds a job under; every write about the job is fenced by it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub id: i64,
    pub lock_by: String,
    pub attempt: i64,
}

/// How a run ended, as recorded by [`finish`].
#[derive(Debug, Clone, PartialEq)]
pub enum Finish {
    Completed,
    /// Failed; retried at `retry_at` unless out of attempts.
    Failed {
        error: String,
        retry_at: i64,
    },
    /// Not an error: run again at `run_at` without spending an attempt.
    Snoozed {
        run_at: i64,
    },
    /// Failed for good.
    Discarded {
        error: String,
    },
    /// Interrupted by shutdown: handed back to run again without spending an attempt.
    HandedBack {
        reason: String,
    },
}

/// The state a finished run ended in; `None` when the fence did not hold (lease lost).
pub fn finish(
    conn: &Connection,
    fence: &Fence,
    result: &Finish,
    now: i64,
) -> Result<Option<JobState>, QueueError> {
    // The cancel request wins over any outcome: a cancelled job never turns completed.
    let sql = match result {
        Finish::Completed => {
            "UPDATE jobs SET
               state = CASE WHEN cancel_requested_at IS NULL THEN 'completed' ELSE 'cancelled' END,
               finished_at = ?4, lease_until = NULL
             WHERE id = ?1 AND lock_by = ?2 AND attempt = ?3 AND state = 'running'
             RETURNING state"
        }
        Finish::Failed { .. } => {
            "UPDATE jobs SET
               state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                            WHEN attempt >= max_attempts THEN 'discarded'
                            ELSE 'retryable' END,
               finished_at = CASE WHEN cancel_requested_at IS NOT NULL OR attempt >= max_attempts
                                  THEN ?4 END,
               run_at = CASE WHEN attempt >= max_attempts THEN run_at ELSE ?6 END,
               lease_until = NULL,
               errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?4, 'error', ?5))
             WHERE id = ?1 AND lock_by = ?2 AND attempt = ?3 AND state = 'running'
             RETURNING state"
        }
        Finish::Snoozed { .. } => {
            "UPDATE jobs SET
               state = CASE WHEN cancel_requested_at IS NULL THEN 'scheduled' ELSE 'cancelled' END,
               finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE ?4 END,
               run_at = ?6, max_attempts = max_attempts + 1, lease_until = NULL
             WHERE id = ?1 AND lock_by = ?2 AND attempt = ?3 AND state = 'running'
             RETURNING state"
        }
        Finish::Discarded { .. } => {
            "UPDATE jobs SET
               state = CASE WHEN cancel_requested_at IS NULL THEN 'discarded' ELSE 'cancelled' END,
               finished_at = ?4, lease_until = NULL,
               errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?4, 'error', ?5))
             WHERE id = ?1 AND lock_by = ?2 AND attempt = ?3 AND state = 'running'
             RETURNING state"
        }
        Finish::HandedBack { .. } => {
            "UPDATE jobs SET
               state = CASE WHEN cancel_requested_at IS NULL THEN 'available' ELSE 'cancelled' END,
               finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE ?4 END,
               run_at = ?4, max_attempts = max_attempts + 1, lease_until = NULL,
               errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?4, 'error', ?5))
             WHERE id = ?1 AND lock_by = ?2 AND attempt = ?3 AND state = 'running'
             RETURNING state"
        }
    };
    let (error, at): (Option<&str>, i64) = match result {
        Finish::Completed => (None, now),
        Finish::Failed { error, retry_at } => (Some(error), *retry_at),
        Finish::Snoozed { run_at } => (None, *run_at),
        Finish::Discarded { error } => (Some(error), now),
        Finish::HandedBack { reason } => (Some(reason), now),
    };
    let mut stmt = conn.prepare_cached(sql)?;
    // SQLite counts parameters up to the highest index each statement uses.
    let mut rows = match result {
        Finish::Completed => stmt.query(params![fence.id, fence.lock_by, fence.attempt, now])?,
        Finish::Discarded { .. } | Finish::HandedBack { .. } => {
            stmt.query(params![fence.id, fence.lock_by, fence.attempt, now, error])?
        }
        Finish::Failed { .. } | Finish::Snoozed { .. } => stmt.query(params![
            fence.id,
            fence.lock_by,
            fence.attempt,
            now,
            error,
            at
        ])?,
    };
    let state = match rows.next()? {
        Some(row) => Some(row.get(0)?),
        None => None,
    };
    Ok(state)
}

/// Checks that `fence` still holds the job and no cancel was requested.
pub fn fence_holds(conn: &Connection, fence: &Fence) -> Result<bool, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT 1 FROM jobs WHERE id = ?1 AND lock_by = ?2 AND attempt = ?3
           AND state = 'running' AND cancel_requested_at IS NULL",
    )?;
    Ok(stmt.exists(params![fence.id, fence.lock_by, fence.attempt])?)
}

/// Records a checkpoint for a running job (fenced).
pub fn checkpoint(conn: &Connection, fence: &Fence, value: &Value) -> Result<(), QueueError> {
    let text = serde_json::to_string(value).map_err(|source| QueueError::Encode {
        id: fence.id,
        source,
    })?;
    let n = conn.execute(
        "UPDATE jobs SET checkpoint = ?4
         WHERE id = ?1 AND lock_by = ?2 AND attempt = ?3
           AND state = 'running' AND cancel_requested_at IS NULL",
        params![fence.id, fence.lock_by, fence.attempt, text],
    )?;
    if n == 0 {
        return Err(QueueError::LeaseLost(fence.id));
    }
    Ok(())
}

/// Extends the lease of the listed running jobs held by `lock_by`.
pub fn heartbeat(
    conn: &Connection,
    lock_by: &str,
    ids: &[i64],
    lease_until: i64,
) -> Result<usize, QueueError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ids = serde_json::to_string(ids).unwrap_or_else(|_| "[]".into());
    let mut stmt = conn.prepare_cached(
        "UPDATE jobs SET lease_until = ?3
         WHERE state = 'running' AND lock_by = ?1 AND id IN (SELECT value FROM json_each(?2))",
    )?;
    Ok(stmt.execute(params![lock_by, ids, lease_until])?)
}

/// Running jobs of `lock_by` for which a cancel was requested.
pub fn cancel_requested(conn: &Connection, lock_by: &str) -> Result<Vec<i64>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id FROM jobs WHERE state = 'running' AND lock_by = ?1
           AND cancel_requested_at IS NOT NULL",
    )?;
    let ids = stmt.query_map([lock_by], |r| r.get(0))?;
    Ok(ids.collect::<Result<_, _>>()?)
}

/// Hands back running jobs whose worker is gone: every running row not held by
/// `current_boot_prefix` (a worker of an earlier boot), and every row whose lease
/// expired before `now`. Returns how many were rescued.
pub fn rescue(conn: &Connection, current_boot_prefix: &str, now: i64) -> Result<usize, QueueError> {
    rescue_where(
        conn,
        "(lock_by IS NULL OR substr(lock_by, 1, length(?1)) <> ?1 OR lease_until < ?2)",
        current_boot_prefix,
        now,
    )
}

/// Hands back the running jobs matching `condition` (SQL over `?1` = a boot prefix and
/// `?2` = now): retryable again, discarded when out of attempts, cancelled when a cancel
/// was requested; the rescue is recorded on the row and counted.
fn rescue_where(
    conn: &Connection,
    condition: &str,
    prefix: &str,
    now: i64,
) -> Result<usize, QueueError> {
    let n = conn.execute(
        &format!(
            "UPDATE jobs SET
               state = CASE WHEN cancel_requested_at IS NOT NULL THEN 'cancelled'
                            WHEN attempt >= max_attempts THEN 'discarded'
                            ELSE 'retryable' END,
               finished_at = CASE WHEN cancel_requested_at IS NOT NULL OR attempt >= max_attempts
                                  THEN ?2 END,
               run_at = ?2, lease_until = NULL,
               errors = json_insert(errors, '$[#]', json_object('attempt', attempt, 'at', ?2, 'error',
                 'rescued: worker ' || coalesce(lock_by, '?') ||
                 CASE WHEN lease_until < ?2 THEN ' lost its lease' ELSE ' belonged to an earlier boot' END))
             WHERE state = 'running' AND {condition}"
        ),
        params![prefix, now],
    )?;
    if n > 0 {
        crate::db::counter_add(conn, "jobs_rescued", n as i64)?;
    }
    Ok(n)
}

/// Hands back running jobs whose lease expired before `now` (their worker is hung or
/// gone), whoever held them. Returns how many.
pub fn rescue_expired(conn: &Connection, now: i64) -> Result<usize, QueueError> {
    rescue_where(conn, "lease_until < ?2", "", now)
}

/// Parks every unfinished job — running ones too, as after a restore nobody runs them —
/// whose kind is not in `except_kinds` as `held` with `reason`. Returns how many.
pub fn hold_unfinished(
    conn: &Connection,
    reason: &str,
    except_kinds: &[&str],
) -> Result<usize, QueueError> {
    let except = serde_json::to_string(except_kinds).unwrap_or_else(|_| "[]".into());
    Ok(conn.execute(
        "UPDATE jobs SET state = 'held', held_reason = ?1, lock_by = NULL, lease_until = NULL
         WHERE state IN ('scheduled', 'available', 'running', 'retryable')
           AND kind NOT IN (SELECT value FROM json_each(?2))",
        params![reason, except],
    )?)
}

/// Releases a held job (or all held jobs with `None`) to run now. Returns how many.
pub fn release(conn: &Connection, id: Option<i64>, now: i64) -> Result<usize, QueueError> {
    if let Some(id) = id {
        let job = get(conn, id)?.ok_or(QueueError::NotFound(id))?;
        if job.state != JobState::Held {
            return Err(QueueError::InvalidState {
                id,
                state: job.state,
                action: "release",
            });
        }
    }
    Ok(conn.execute(
        "UPDATE jobs SET state = 'available', run_at = min(run_at, ?2), held_reason = NULL
         WHERE state = 'held' AND (?1 IS NULL OR id = ?1)",
        params![id, now],
    )?)
}

/// What a cancel did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelEffect {
    /// The job was waiting and is now `cancelled`.
    Cancelled,
    /// The job is running: its worker is told to stop, and its final write turns it `cancelled`.
    Requested,
}

/// Cancels a job. A waiting job is cancelled at once; a running one gets a cancel
/// request that its worker sees, and its fenced final write makes it `cancelled`.
pub fn cancel(conn: &Connection, id: i64, now: i64) -> Result<CancelEffect, QueueError> {
    let job = get(conn, id)?.ok_or(QueueError::NotFound(id))?;
    match job.state {
        JobState::Running => {
            conn.execute(
                "UPDATE jobs SET cancel_requested_at = coalesce(cancel_requested_at, ?2)
                 WHERE id = ?1 AND state = 'running'",
                params![id, now],
            )?;
            Ok(CancelEffect::Requested)
        }
        st if st.is_terminal() => Err(QueueError::InvalidState {
            id,
            state: st,
            action: "cancel",
        }),
        _ => {
            conn.execute(
                "UPDATE jobs SET state = 'cancelled', finished_at = ?2, cancel_requested_at = ?2
                 WHERE id = ?1",
                params![id, now],
            )?;
            Ok(CancelEffect::Cancelled)
        }
    }
}

/// True while `lane` has a job that is not finished (it owns what the lane is for).
pub fn lane_busy(conn: &Connection, lane: &str) -> Result<bool, QueueError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT EXISTS (SELECT 1 FROM jobs WHERE lane = ?1 AND state IN {LIVE_STATES_SQL})"
        ))?
        .query_row([lane], |r| r.get(0))?)
}

/// How many jobs are held, and why (the reason of the newest held job).
pub fn held_summary(conn: &Connection) -> Result<Option<(i64, String)>, QueueError> {
    let (n, reason): (i64, Option<String>) = conn
        .prepare_cached(
            "SELECT count(*), (SELECT held_reason FROM jobs WHERE state = 'held' ORDER BY id DESC LIMIT 1)
             FROM jobs WHERE state = 'held'",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok((n > 0).then(|| (n, reason.unwrap_or_else(|| "held by an operator".into()))))
}

/// Cancels every held job. Returns how many.
pub fn cancel_held(conn: &Connection, now: i64) -> Result<usize, QueueError> {
    Ok(conn.execute(
        "UPDATE jobs SET state = 'cancelled', finished_at = ?1, cancel_requested_at = ?1
         WHERE state = 'held'",
        [now],
    )?)
}

/// Runs a failed, cancelled or waiting job again now, granting one more attempt when
/// it had none left.
pub fn retry(conn: &Connection, id: i64, now: i64) -> Result<(), QueueError> {
    let job = get(conn, id)?.ok_or(QueueError::NotFound(id))?;
    match job.state {
        JobState::Discarded
        | JobState::Cancelled
        | JobState::Retryable
        | JobState::Scheduled
        | JobState::Available => {}
        st => {
            return Err(QueueError::InvalidState {
                id,
                state: st,
                action: "retry",
            });
        }
    }
    let result = conn.execute(
        "UPDATE jobs SET state = 'available', run_at = ?2, finished_at = NULL,
           cancel_requested_at = NULL, max_attempts = max(max_attempts, attempt + 1)
         WHERE id = ?1",
        params![id, now],
    );
    match result {
        Ok(_) => Ok(()),
        // A live job with the same unique key exists: retrying would duplicate it.
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(QueueError::InvalidState {
                id,
                state: job.state,
                action: "retry while another live job has the same unique key; retry",
            })
        }
        Err(e) => Err(e.into()),
    }
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Job>, QueueError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1"))?;
    Ok(stmt.query_row([id], Job::from_row).optional()?)
}

/// Filter for [`list`].
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    pub state: Option<JobState>,
    pub kind: Option<String>,
    pub lane: Option<String>,
    /// Only jobs with an id below this (for paging, newest first).
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// Jobs matching `filter`, newest first.
pub fn list(conn: &Connection, filter: &JobFilter) -> Result<Vec<Job>, QueueError> {
    let limit = if filter.limit == 0 { 100 } else { filter.limit };
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {JOB_COLUMNS} FROM jobs
         WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR kind = ?2)
           AND (?3 IS NULL OR lane = ?3) AND (?4 IS NULL OR id < ?4)
         ORDER BY id DESC LIMIT ?5"
    ))?;
    let rows = stmt.query_map(
        params![
            filter.state.map(JobState::as_str),
            filter.kind,
            filter.lane,
            filter.before_id,
            limit as i64
        ],
        Job::from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Deletes finished jobs: completed and cancelled ones that finished before
/// `finished_before`, discarded ones before `discarded_before`. Returns how many.
pub fn prune(
    conn: &Connection,
    finished_before: i64,
    discarded_before: i64,
) -> Result<usize, QueueError> {
    let mut total = 0;
    // Bounded batches keep each write transaction short.
    loop {
        let n = conn.execute(
            "DELETE FROM jobs WHERE id IN (
               SELECT id FROM jobs
               WHERE (state IN ('completed', 'cancelled') AND finished_at < ?1)
                  OR (state = 'discarded' AND finished_at < ?2)
               LIMIT 5000)",
            params![finished_before, discarded_before],
        )?;
        total += n;
        if n < 5000 {
            return Ok(total);
        }
    }
}

/// Queue figures for metrics and the CLI.
#[derive(Debug, Clone, Default, Serialize)]
pub struct QueueStats {
    /// (state, kind, count)
    pub counts: Vec<(JobState, String, i64)>,
    /// Age in ms of the oldest job that could run now but has not started.
    pub oldest_available_ms: Option<i64>,
    pub rescued_total: i64,
}

pub fn stats(conn: &Connection, now: i64) -> Result<QueueStats, QueueError> {
    let mut stmt =
        conn.prepare_cached("SELECT state, kind, count(*) FROM jobs GROUP BY state, kind")?;
    let counts = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<Vec<_>, _>>()?;
    let oldest = oldest_available(conn)?;
    Ok(QueueStats {
        counts,
        oldest_available_ms: oldest.map(|t| (now - t).max(0)),
        rescued_total: crate::db::counter_get(conn, "jobs_rescued")?,
    })
}

/// When the oldest job that could run now was due (ms since the epoch).
pub fn oldest_available(conn: &Connection) -> Result<Option<i64>, QueueError> {
    Ok(conn
        .prepare_cached("SELECT min(run_at) FROM jobs WHERE state = 'available'")?
        .query_row([], |r| r.get(0))?)
}

/// Every job kind the table holds, sorted (the jobs page's filter).
pub fn kinds(conn: &Connection) -> Result<Vec<String>, QueueError> {
    let mut stmt = conn.prepare_cached("SELECT DISTINCT kind FROM jobs ORDER BY kind")?;
    let rows = stmt.query_map([], |r| r.get(0))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Running jobs whose lease has expired: `(id, kind, lock_by)`, by id.
pub fn expired_leases(
    conn: &Connection,
    now: i64,
) -> Result<Vec<(i64, String, String)>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, coalesce(lock_by, '') FROM jobs
         WHERE state = 'running' AND lease_until < ?1 ORDER BY id",
    )?;
    let rows = stmt.query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Held jobs: `(id, kind, reason)`, by id.
pub fn held(conn: &Connection) -> Result<Vec<(i64, String, String)>, QueueError> {
    let mut stmt = conn.prepare_cached(
        "SELECT id, kind, coalesce(held_reason, '') FROM jobs WHERE state = 'held' ORDER BY id",
    )?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Jobs of one lane: how many of `kind`, and how many per state.
pub fn lane_counts(
    conn: &Connection,
    lane: &str,
    kind: &str,
) -> Result<(i64, std::collections::BTreeMap<String, i64>), QueueError> {
    let of_kind: i64 = conn
        .prepare_cached("SELECT count(*) FROM jobs WHERE lane = ?1 AND kind = ?2")?
        .query_row(params![lane, kind], |r| r.get(0))?;
    let mut stmt =
        conn.prepare_cached("SELECT state, count(*) FROM jobs WHERE lane = ?1 GROUP BY state")?;
    let by_state = stmt
        .query_map([lane], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    Ok((of_kind, by_state))
}

/// Number of jobs per state.
pub fn count_by_state(conn: &Connection) -> Result<Vec<(JobState, i64)>, QueueError> {
    let mut stmt = conn.prepare_cached("SELECT state, count(*) FROM jobs GROUP BY state")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}
