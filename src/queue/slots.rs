//! Periodic jobs. Each firing is an ordinary job with unique key
//! `cron:<name>:<slot>`; the last slot fired is stored in the same transaction, so a
//! slot never fires twice, even across restarts. Missed slots are not replayed: after
//! downtime only the current slot fires.

use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::store::{self, NewJob};
use super::{QueueError, WorkerHandle};
use crate::db::{Db, now_ms};

/// A periodic job: fires once per `every`-long slot (slots aligned to the epoch).
#[derive(Debug, Clone)]
pub struct CronSpec {
    pub name: String,
    pub every: Duration,
    pub kind: String,
    pub payload: Value,
    pub max_attempts: i64,
}

impl CronSpec {
    pub fn new(name: impl Into<String>, every: Duration, kind: impl Into<String>) -> CronSpec {
        CronSpec {
            name: name.into(),
            every,
            kind: kind.into(),
            payload: Value::Object(Default::default()),
            max_attempts: 3,
        }
    }

    pub fn slot(&self, now_ms: i64) -> i64 {
        now_ms / (self.every.as_millis().max(1) as i64)
    }
}

/// Enqueues the job for `spec`'s current slot unless that slot already fired.
/// Returns the new job id when it fired.
pub fn fire_due(conn: &Connection, spec: &CronSpec, now: i64) -> Result<Option<i64>, QueueError> {
    let slot = spec.slot(now);
    let last: Option<i64> = conn
        .query_row(
            "SELECT last_slot FROM cron_slots WHERE name = ?1",
            [&spec.name],
            |r| r.get(0),
        )
        .optional()?;
    if last.is_some_and(|l| l >= slot) {
        return Ok(None);
    }
    let job = NewJob::new(spec.kind.clone(), spec.payload.clone())
        .unique_key(format!("cron:{}:{slot}", spec.name))
        .max_attempts(spec.max_attempts);
    let enq = store::enqueue(conn, &job, now)?;
    conn.execute(
        "INSERT INTO cron_slots (name, last_slot, job_id) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET last_slot = excluded.last_slot, job_id = excluded.job_id",
        params![spec.name, slot, enq.id],
    )?;
    Ok(enq.created.then_some(enq.id))
}

/// Fires cron specs as their slots come due.
pub struct Scheduler {
    db: Db,
    specs: Vec<CronSpec>,
    worker: Option<WorkerHandle>,
}

impl Scheduler {
    pub fn new(db: Db, specs: Vec<CronSpec>, worker: Option<WorkerHandle>) -> Scheduler {
        Scheduler { db, specs, worker }
    }

    /// Fires whatever is due now. Returns the ids of jobs enqueued.
    pub async fn tick(&self) -> Result<Vec<i64>, QueueError> {
        let specs = self.specs.clone();
        let fired = self
            .db
            .write(move |tx| {
                let now = now_ms();
                let mut fired = Vec::new();
                for spec in &specs {
                    if let Some(id) = fire_due(tx, spec, now)? {
                        fired.push(id);
                    }
                }
                Ok::<_, QueueError>(fired)
            })
            .await?;
        if !fired.is_empty()
            && let Some(w) = &self.worker
        {
            w.wake();
        }
        Ok(fired)
    }

    /// Ticks at every slot boundary until `shutdown`.
    pub async fn run(self, shutdown: CancellationToken) {
        if self.specs.is_empty() {
            return;
        }
        loop {
            if let Err(e) = self.tick().await {
                tracing::error!(error = %e, "firing periodic jobs failed");
            }
            let now = now_ms();
            // Sleep until the nearest next slot boundary of any spec.
            let next = self
                .specs
                .iter()
                .map(|s| {
                    let every = s.every.as_millis().max(1) as i64;
                    (s.slot(now) + 1) * every
                })
                .min()
                .unwrap_or(now + 1000);
            let wait = Duration::from_millis((next - now).clamp(1, 60_000) as u64);
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }
}
