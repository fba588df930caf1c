//! The worker pool: one dispatcher task claims jobs in batches, runs each handler on
//! its own task, and records outcomes in batches (one transaction for a round of
//! completions plus the next claim), which is where the throughput comes from.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::sync::{Notify, mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::store::{self, Claimed, Fence, Finish};
use super::{JobState, QueueError};
use crate::db::{Db, now_ms};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What a handler asks for when it returns normally.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Done: the job becomes `completed`.
    Complete,
    /// Not an error: run again after this delay without spending an attempt.
    Snooze(Duration),
}

/// A failed run.
#[derive(Debug, Clone, PartialEq)]
pub struct JobFailure {
    pub message: String,
    /// Fatal: discard without further attempts.
    pub fatal: bool,
    /// Retry after exactly this delay instead of the handler's backoff.
    pub retry_after: Option<Duration>,
}

impl JobFailure {
    pub fn retry(message: impl Into<String>) -> Self {
        JobFailure {
            message: message.into(),
            fatal: false,
            retry_after: None,
        }
    }
    pub fn fatal(message: impl Into<String>) -> Self {
        JobFailure {
            message: message.into(),
            fatal: true,
            retry_after: None,
        }
    }
    pub fn after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }
}

/// Any error converts into a retryable failure, so handlers can use `?`.
impl<E: std::error::Error> From<E> for JobFailure {
    fn from(e: E) -> Self {
        // Keep the whole cause chain: the operator sees the row, not our logs.
        let mut message = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        JobFailure::retry(message)
    }
}

pub type JobResult = Result<Outcome, JobFailure>;

/// A job kind. Later modules plug their work into the queue through this trait.
pub trait Handler: Send + Sync + 'static {
    /// The `kind` this handler runs.
    fn kind(&self) -> &str;
    /// Runs one attempt.
    fn run(&self, ctx: JobContext) -> BoxFuture<JobResult>;
    /// Longest one attempt may take; past it the attempt is abandoned and retried.
    fn timeout(&self) -> Duration {
        Duration::from_secs(30 * 60)
    }
    /// Whether the job may run again without an operator after a restore or a host
    /// change (it has no side effects outside this database).
    fn replay_safe(&self) -> bool {
        false
    }
}

/// A handler from a closure.
pub struct HandlerFn<F> {
    kind: String,
    timeout: Duration,
    replay_safe: bool,
    f: F,
}

impl<F> HandlerFn<F> {
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    pub fn replay_safe(mut self, yes: bool) -> Self {
        self.replay_safe = yes;
        self
    }
}

/// Makes a handler of kind `kind` from `f`.
pub fn handler_fn<F, Fut>(kind: impl Into<String>, f: F) -> HandlerFn<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    HandlerFn {
        kind: kind.into(),
        timeout: Duration::from_secs(30 * 60),
        replay_safe: false,
        f,
    }
}

impl<F, Fut> Handler for HandlerFn<F>
where
    F: Fn(JobContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = JobResult> + Send + 'static,
{
    fn kind(&self) -> &str {
        &self.kind
    }
    fn run(&self, ctx: JobContext) -> BoxFuture<JobResult> {
        Box::pin((self.f)(ctx))
    }
    fn timeout(&self) -> Duration {
        self.timeout
    }
    fn replay_safe(&self) -> bool {
        self.replay_safe
    }
}

/// Job kinds this process can run.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn Handler>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn register(&mut self, handler: impl Handler) -> &mut Self {
        self.register_arc(Arc::new(handler))
    }
    pub fn register_arc(&mut self, handler: Arc<dyn Handler>) -> &mut Self {
        self.handlers.insert(handler.kind().to_string(), handler);
        self
    }
    pub fn get(&self, kind: &str) -> Option<&Arc<dyn Handler>> {
        self.handlers.get(kind)
    }
    /// Kinds that may replay without an operator.
    pub fn replay_safe_kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self
            .handlers
            .values()
            .filter(|h| h.replay_safe())
            .map(|h| h.kind())
            .collect();
        kinds.sort_unstable();
        kinds
    }
    pub fn kinds(&self) -> Vec<&str> {
        let mut kinds: Vec<&str> = self.handlers.keys().map(String::as_str).collect();
        kinds.sort_unstable();
        kinds
    }
}

/// What a handler gets: the job, a cancellation token, and fenced writes.
#[derive(Clone)]
pub struct JobContext {
    pub id: i64,
    pub kind: String,
    pub payload: Value,
    pub attempt: i64,
    pub max_attempts: i64,
    pub lane: Option<String>,
    /// The last checkpoint recorded by an earlier attempt (or this one).
    pub checkpoint: Option<Value>,
    pub cancel: CancellationToken,
    db: Db,
    fence: Fence,
}

impl JobContext {
    /// The payload decoded as `T`; a payload that does not decode is a fatal failure.
    pub fn payload<T: DeserializeOwned>(&self) -> Result<T, JobFailure> {
        serde_json::from_value(self.payload.clone()).map_err(|e| {
            JobFailure::fatal(format!("job {} ({}): bad payload: {e}", self.id, self.kind))
        })
    }

    pub fn db(&self) -> &Db {
        &self.db
    }

    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Records a checkpoint; fails with `LeaseLost` if this worker no longer holds the job.
    pub async fn checkpoint(&mut self, value: Value) -> Result<(), QueueError> {
        let fence = self.fence.clone();
        let v = value.clone();
        self.db
            .write(move |tx| store::checkpoint(tx, &fence, &v))
            .await?;
        self.checkpoint = Some(value);
        Ok(())
    }

    /// Runs `f` in a write transaction that commits only while this worker still
    /// holds the job (and no cancel was requested): a lost lease commits nothing.
    pub async fn fenced<F, R>(&self, f: F) -> Result<R, QueueError>
    where
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<R, QueueError> + Send + 'static,
        R: Send + 'static,
    {
        let fence = self.fence.clone();
        self.db
            .write(move |tx| {
                if !store::fence_holds(tx, &fence)? {
                    return Err(QueueError::LeaseLost(fence.id));
                }
                f(tx)
            })
            .await
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }
}

/// Worker pool settings.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Name of this pool inside the process (part of `lock_by`).
    pub name: String,
    /// Jobs run at once.
    pub concurrency: usize,
    pub lease: Duration,
    /// How often to look for due jobs when nothing wakes the dispatcher.
    pub poll_interval: Duration,
    /// First retry delay; doubles per attempt (with ±20% jitter) up to `retry_cap`.
    pub retry_base: Duration,
    pub retry_cap: Duration,
    /// On shutdown, how long running jobs may take to finish before they are handed back.
    pub shutdown_grace: Duration,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            name: "w0".into(),
            concurrency: 16,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            retry_base: Duration::from_secs(2),
            retry_cap: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl WorkerConfig {
    /// Capped exponential backoff with ±20% jitter for the given (1-based) attempt.
    pub fn backoff(&self, attempt: i64) -> Duration {
        let exp = attempt.clamp(1, 30) as u32 - 1;
        let base = self.retry_base.as_millis() as f64 * 2f64.powi(exp as i32);
        let capped = base.min(self.retry_cap.as_millis() as f64);
        let jitter = 0.8 + fastrand::f64() * 0.4;
        Duration::from_millis((capped * jitter) as u64)
    }
}

/// In-process figures of one pool (since it started).
#[derive(Default)]
pub struct WorkerStats {
    pub finished: AtomicU64,
    pub completed: AtomicU64,
    pub failed: AtomicU64,
    pub lease_lost: AtomicU64,
    /// kind → (runs, total seconds)
    pub durations: Mutex<HashMap<String, (u64, f64)>>,
}

struct Running {
    cancel: CancellationToken,
}

struct Done {
    fence: Fence,
    kind: String,
    result: Finish,
    elapsed: Duration,
}

/// A handle to a running pool.
#[derive(Clone)]
pub struct WorkerHandle {
    notify: Arc<Notify>,
    running: Arc<Mutex<HashMap<i64, Running>>>,
    stats: Arc<WorkerStats>,
    finished_rx: watch::Receiver<u64>,
    lock_by: String,
}

impl WorkerHandle {
    /// Wakes the dispatcher (after an enqueue in this process).
    pub fn wake(&self) {
        self.notify.notify_one();
    }
    /// Fires the cancellation token of a job this pool is running.
    pub fn signal_cancel(&self, id: i64) {
        if let Ok(map) = self.running.lock()
            && let Some(r) = map.get(&id)
        {
            r.cancel.cancel();
        }
    }
    pub fn stats(&self) -> &WorkerStats {
        &self.stats
    }
    pub fn running_count(&self) -> usize {
        self.running.lock().map(|m| m.len()).unwrap_or(0)
    }
    /// Jobs finished (any outcome) since the pool started; changes are observable.
    pub fn finished(&self) -> watch::Receiver<u64> {
        self.finished_rx.clone()
    }
    pub fn lock_by(&self) -> &str {
        &self.lock_by
    }
}

/// A pool of workers bound to one database.
pub struct Worker {
    db: Db,
    registry: Arc<Registry>,
    cfg: WorkerConfig,
    lock_by: String,
    handle: WorkerHandle,
    finished_tx: watch::Sender<u64>,
}

impl Worker {
    /// `boot_epoch` is this process's boot number (from the instance row); the
    /// pool's `lock_by` is `<boot_epoch>:<name>`.
    pub fn new(db: Db, registry: Registry, boot_epoch: i64, cfg: WorkerConfig) -> Worker {
        let lock_by = format!("{boot_epoch}:{}", cfg.name);
        let (finished_tx, finished_rx) = watch::channel(0);
        let handle = WorkerHandle {
            notify: Arc::new(Notify::new()),
            running: Arc::new(Mutex::new(HashMap::new())),
            stats: Arc::new(WorkerStats::default()),
            finished_rx,
            lock_by: lock_by.clone(),
        };
        Worker {
            db,
            registry: Arc::new(registry),
            cfg,
            lock_by,
            handle,
            finished_tx,
        }
    }

    pub fn handle(&self) -> WorkerHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` fires, then lets running jobs finish for up to
    /// `shutdown_grace` and hands the rest back.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), QueueError> {
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
        let mut tasks = tokio::task::JoinSet::new();
        let mut pending: Vec<Done> = Vec::new();
        let mut heartbeat = tokio::time::interval(self.cfg.lease / 4);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut finished_total: u64 = 0;
        // Claim right away on start; afterwards only when something may have changed.
        let mut want_claim = true;

        loop {
            while let Ok(d) = done_rx.try_recv() {
                pending.push(d);
            }
            while tasks.try_join_next().is_some() {}
            // Finished-but-unrecorded jobs still sit in the running map; their slots are free.
            let busy = self.handle.running_count().saturating_sub(pending.len());
            let free = self.cfg.concurrency.saturating_sub(busy);
            if !pending.is_empty() || (want_claim && free > 0) {
                let batch = std::mem::take(&mut pending);
                let n_done = batch.len();
                let claimed = self.round(batch, if want_claim { free } else { 0 }).await;
                match claimed {
                    Ok(claimed) => {
                        finished_total += n_done as u64;
                        if n_done > 0 {
                            // A count for whoever watches; none watching is fine.
                            let _ = self.finished_tx.send(finished_total);
                        }
                        // A full batch suggests more is waiting; a finished job may unblock a lane.
                        want_claim = (free > 0 && claimed.len() == free) || n_done > 0;
                        for job in claimed {
                            self.spawn(job, &mut tasks, done_tx.clone());
                        }
                    }
                    Err(e) => {
                        // Completions of this round were not written: their rows stay
                        // `running` with a live lease and will be rescued if we never recover.
                        tracing::error!(error = %e, "job queue round failed; retrying");
                        want_claim = true;
                        tokio::select! {
                            _ = shutdown.cancelled() => break,
                            _ = tokio::time::sleep(self.cfg.poll_interval) => {}
                        }
                    }
                }
                continue;
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(d) = done_rx.recv() => { pending.push(d); }
                _ = self.handle.notify.notified() => { want_claim = true; }
                _ = tokio::time::sleep(self.cfg.poll_interval) => { want_claim = true; }
                _ = heartbeat.tick() => {
                    if let Err(e) = self.heartbeat().await {
                        tracing::error!(error = %e, "job lease heartbeat failed");
                    }
                }
            }
        }

        self.drain(tasks, done_rx, pending).await
    }

    /// One transaction: record finished runs, then claim up to `free` jobs.
    async fn round(&self, batch: Vec<Done>, free: usize) -> Result<Vec<Claimed>, QueueError> {
        let lock_by = self.lock_by.clone();
        let lease_ms = self.cfg.lease.as_millis() as i64;
        let stats = self.handle.stats.clone();
        let running = self.handle.running.clone();
        self.db
            .write(move |tx| {
                let now = now_ms();
                for d in &batch {
                    let state = store::finish(tx, &d.fence, &d.result, now)?;
                    record(&stats, d, state);
                }
                let claimed = if free > 0 {
                    store::promote_due(tx, now)?;
                    store::claim(tx, &lock_by, free, now, lease_ms)?
                } else {
                    Vec::new()
                };
                // Only forget finished jobs once their outcome is durable.
                if let Ok(mut map) = running.lock() {
                    for d in &batch {
                        map.remove(&d.fence.id);
                    }
                    for c in &claimed {
                        map.insert(
                            c.id,
                            Running {
                                cancel: CancellationToken::new(),
                            },
                        );
                    }
                }
                Ok::<_, QueueError>(claimed)
            })
            .await
    }

    fn spawn(
        &self,
        job: Claimed,
        tasks: &mut tokio::task::JoinSet<()>,
        done_tx: mpsc::UnboundedSender<Done>,
    ) {
        let fence = Fence {
            id: job.id,
            lock_by: self.lock_by.clone(),
            attempt: job.attempt,
        };
        let cancel = self
            .handle
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&job.id)
            .map(|r| r.cancel.clone())
            .unwrap_or_default();
        let handler = self.registry.get(&job.kind).cloned();
        let cfg = self.cfg.clone();
        let ctx = JobContext {
            id: job.id,
            kind: job.kind.clone(),
            payload: job.payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            lane: job.lane,
            checkpoint: job.checkpoint,
            cancel,
            db: self.db.clone(),
            fence: fence.clone(),
        };
        let kind = job.kind;
        let attempt = job.attempt;
        tasks.spawn(async move {
            let started = Instant::now();
            let result = match handler {
                None => Finish::Discarded {
                    error: format!("no handler for job kind '{kind}' in this zlh version"),
                },
                Some(h) => {
                    let timeout = h.timeout();
                    match tokio::time::timeout(timeout, h.run(ctx)).await {
                        Ok(Ok(Outcome::Complete)) => Finish::Completed,
                        Ok(Ok(Outcome::Snooze(d))) => Finish::Snoozed {
                            run_at: now_ms() + d.as_millis() as i64,
                        },
                        Ok(Err(f)) if f.fatal => Finish::Discarded { error: f.message },
                        Ok(Err(f)) => {
                            let delay = f.retry_after.unwrap_or_else(|| cfg.backoff(attempt));
                            Finish::Failed {
                                error: f.message,
                                retry_at: now_ms() + delay.as_millis() as i64,
                            }
                        }
                        Err(_) => Finish::Failed {
                            error: format!("timed out after {}s", timeout.as_secs()),
                            retry_at: now_ms() + cfg.backoff(attempt).as_millis() as i64,
                        },
                    }
                }
            };
            // The loop gone means shutdown: the job's lease expires and it is rescued.
            let _ = done_tx.send(Done {
                fence,
                kind,
                result,
                elapsed: started.elapsed(),
            });
        });
    }

    /// Extends the leases of running jobs, forwards cancel requests made by other
    /// processes (the CLI), and rescues jobs whose lease expired.
    async fn heartbeat(&self) -> Result<(), QueueError> {
        let ids: Vec<i64> = self
            .handle
            .running
            .lock()
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        let lock_by = self.lock_by.clone();
        let lease_ms = self.cfg.lease.as_millis() as i64;
        let boot_prefix = match lock_by.split_once(':') {
            Some((epoch, _)) => format!("{epoch}:"),
            None => lock_by.clone(),
        };
        let cancels = self
            .db
            .write(move |tx| {
                let now = now_ms();
                store::heartbeat(tx, &lock_by, &ids, now + lease_ms)?;
                let rescued = store::rescue(tx, &boot_prefix, now)?;
                if rescued > 0 {
                    tracing::warn!(rescued, "rescued running jobs whose lease expired");
                }
                store::cancel_requested(tx, &lock_by)
            })
            .await?;
        for id in cancels {
            self.handle.signal_cancel(id);
        }
        Ok(())
    }

    /// Shutdown: wait up to the grace period for running jobs, record their outcomes,
    /// and hand back whatever is still running so it runs again after the restart.
    async fn drain(
        self,
        mut tasks: tokio::task::JoinSet<()>,
        mut done_rx: mpsc::UnboundedReceiver<Done>,
        mut pending: Vec<Done>,
    ) -> Result<(), QueueError> {
        let deadline = tokio::time::Instant::now() + self.cfg.shutdown_grace;
        while !tasks.is_empty() {
            tokio::select! {
                _ = tokio::time::sleep_until(deadline) => break,
                _ = tasks.join_next() => {}
            }
        }
        tasks.abort_all();
        while let Ok(d) = done_rx.try_recv() {
            pending.push(d);
        }
        let finished: Vec<i64> = pending.iter().map(|d| d.fence.id).collect();
        let still_running: Vec<i64> = self
            .handle
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .copied()
            .filter(|id| !finished.contains(id))
            .collect();
        let lock_by = self.lock_by.clone();
        let handed_back = self
            .db
            .write(move |tx| {
                let now = now_ms();
                for d in &pending {
                    store::finish(tx, &d.fence, &d.result, now)?;
                }
                let mut handed_back = 0;
                for id in &still_running {
                    use rusqlite::OptionalExtension;
                    let attempt: Option<i64> = tx
                        .query_row(
                            "SELECT attempt FROM jobs WHERE id = ?1 AND lock_by = ?2 AND state = 'running'",
                            rusqlite::params![id, lock_by],
                            |r| r.get(0),
                        )
                        .optional()
                        .map_err(crate::db::DbError::from)?;
                    if let Some(attempt) = attempt {
                        let fence = Fence {
                            id: *id,
                            lock_by: lock_by.clone(),
                            attempt,
                        };
                        let reason = Finish::HandedBack {
                            reason: "interrupted by shutdown before it finished; handed back".into(),
                        };
                        if store::finish(tx, &fence, &reason, now)?.is_some() {
                            handed_back += 1;
                        }
                    }
                }
                Ok::<_, QueueError>(handed_back)
            })
            .await?;
        if handed_back > 0 {
            tracing::warn!(handed_back, "running jobs handed back at shutdown");
        }
        Ok(())
    }
}

fn record(stats: &WorkerStats, d: &Done, state: Option<JobState>) {
    stats.finished.fetch_add(1, Ordering::Relaxed);
    match state {
        None => {
            stats.lease_lost.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(job = d.fence.id, kind = %d.kind, "lease lost: outcome not recorded");
        }
        Some(JobState::Completed) => {
            stats.completed.fetch_add(1, Ordering::Relaxed);
        }
        Some(st) => {
            if let Finish::Failed { error, .. } | Finish::Discarded { error } = &d.result {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(job = d.fence.id, kind = %d.kind, attempt = d.fence.attempt, state = %st, error = ?crate::util::untrusted(error), "job failed");
            }
        }
    }
    if let Ok(mut durs) = stats.durations.lock() {
        let e = durs.entry(d.kind.clone()).or_insert((0, 0.0));
        e.0 += 1;
        e.1 += d.elapsed.as_secs_f64();
    }
}
