//! A durable, in-process job queue persisted in SQLite (DESIGN §3).
//!
//! The queue knows nothing about servers. Jobs are rows in `jobs`; every state
//! change is one SQL statement under `BEGIN IMMEDIATE`, and every write a worker
//! makes about a job it runs is fenced by `(id, lock_by, attempt)` so a worker
//! that lost its lease can never commit.

mod slots;
pub mod store;
mod worker;

pub use slots::{CronSpec, Scheduler, fire_due as cron_fire_due};
pub use store::*;
pub use worker::{
    Handler, HandlerFn, JobContext, JobFailure, JobResult, Outcome, Registry, Worker, WorkerConfig,
    WorkerHandle, handler_fn,
};

use serde::{Deserialize, Serialize};

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    /// Waits for `run_at` (delayed or snoozed).
    Scheduled,
    /// May be claimed now.
    Available,
    /// Claimed by a worker that holds its lease.
    Running,
    /// Failed; waits for its backoff to pass.
    Retryable,
    Completed,
    Cancelled,
    /// Failed for good (out of attempts, or a fatal error).
    Discarded,
    /// Parked by a restore, a host change or an operator; runs only once released.
    Held,
}

impl JobState {
    pub const ALL: [JobState; 8] = [
        JobState::Scheduled,
        JobState::Available,
        JobState::Running,
        JobState::Retryable,
        JobState::Completed,
        JobState::Cancelled,
        JobState::Discarded,
        JobState::Held,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Scheduled => "scheduled",
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Retryable => "retryable",
            JobState::Completed => "completed",
            JobState::Cancelled => "cancelled",
            JobState::Discarded => "discarded",
            JobState::Held => "held",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Discarded
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                format!(
                    "unknown job state '{s}' (expected one of: {})",
                    JobState::ALL.map(JobState::as_str).join(", ")
                )
            })
    }
}

impl rusqlite::types::FromSql for JobState {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = value.as_str()?;
        s.parse()
            .map_err(|e: String| rusqlite::types::FromSqlError::Other(e.into()))
    }
}

/// Errors of queue operations.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("job {0} not found")]
    NotFound(i64),
    /// Work the caller did inside a queue transaction (a job's fenced write, a boot
    /// step) broke one of its own rules — invalid, conflicting, or naming something
    /// gone. The queue knows none of them: it carries the caller's message.
    #[error("{0}")]
    Refused(String),
    #[error("job {id} is {state}: {action} is not possible")]
    InvalidState {
        id: i64,
        state: JobState,
        action: &'static str,
    },
    /// The worker no longer holds the job (lease expired, rescued, cancelled or re-claimed):
    /// nothing it wanted to write was committed.
    #[error("job {0}: lease lost, nothing committed")]
    LeaseLost(i64),
    #[error("job {id}: encoding payload: {source}")]
    Encode {
        id: i64,
        #[source]
        source: serde_json::Error,
    },
}

impl From<rusqlite::Error> for QueueError {
    fn from(e: rusqlite::Error) -> Self {
        QueueError::Db(crate::db::DbError::from(e))
    }
}

/// The queue as the rest of the application uses it: durable operations that also
/// wake or signal this process's worker pool.
#[derive(Clone)]
pub struct Queue {
    db: crate::db::Db,
    worker: Option<WorkerHandle>,
}

impl Queue {
    pub fn new(db: crate::db::Db, worker: Option<WorkerHandle>) -> Queue {
        Queue { db, worker }
    }

    pub fn db(&self) -> &crate::db::Db {
        &self.db
    }

    pub fn worker(&self) -> Option<&WorkerHandle> {
        self.worker.as_ref()
    }

    /// Wakes the worker after jobs were enqueued in a caller's own transaction.
    pub fn wake(&self) {
        if let Some(w) = &self.worker {
            w.wake();
        }
    }

    pub async fn enqueue(&self, job: NewJob) -> Result<Enqueued, QueueError> {
        let out = self
            .db
            .write(move |tx| enqueue(tx, &job, crate::db::now_ms()))
            .await?;
        self.wake();
        Ok(out)
    }

    pub async fn enqueue_many(&self, jobs: Vec<NewJob>) -> Result<Vec<Enqueued>, QueueError> {
        let out = self
            .db
            .write(move |tx| {
                let now = crate::db::now_ms();
                jobs.iter().map(|j| enqueue(tx, j, now)).collect()
            })
            .await?;
        self.wake();
        Ok(out)
    }

    pub async fn get(&self, id: i64) -> Result<Option<Job>, QueueError> {
        self.db.call(move |c| get(c, id)).await
    }

    pub async fn list(&self, filter: JobFilter) -> Result<Vec<Job>, QueueError> {
        self.db.call(move |c| list(c, &filter)).await
    }

    pub async fn cancel(&self, id: i64) -> Result<CancelEffect, QueueError> {
        let effect = self
            .db
            .write(move |tx| cancel(tx, id, crate::db::now_ms()))
            .await?;
        if effect == CancelEffect::Requested
            && let Some(w) = &self.worker
        {
            w.signal_cancel(id);
        }
        Ok(effect)
    }

    pub async fn retry(&self, id: i64) -> Result<(), QueueError> {
        self.db
            .write(move |tx| retry(tx, id, crate::db::now_ms()))
            .await?;
        self.wake();
        Ok(())
    }

    /// Releases one held job, or all with `None`.
    pub async fn release(&self, id: Option<i64>) -> Result<usize, QueueError> {
        let n = self
            .db
            .write(move |tx| release(tx, id, crate::db::now_ms()))
            .await?;
        self.wake();
        Ok(n)
    }

    pub async fn stats(&self) -> Result<QueueStats, QueueError> {
        self.db.call(|c| stats(c, crate::db::now_ms())).await
    }
}
