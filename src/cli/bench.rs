//! `zlh bench queue`: the queue's throughput with `synchronous=FULL`, on a fresh
//! database in a temporary directory.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::db::Db;
use crate::queue::{NewJob, Queue, QueueError, Registry, Worker, WorkerConfig};

#[derive(Debug, Clone)]
pub struct QueueBenchArgs {
    pub jobs: usize,
    pub concurrency: usize,
    /// Where to put the scratch database (default: the system temp dir).
    pub dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct QueueBenchReport {
    pub system: &'static str,
    pub label: &'static str,
    pub jobs: usize,
    pub concurrency: usize,
    pub enqueue_one_by_one_jobs_per_s: f64,
    pub enqueue_batched_jobs_per_s: f64,
    pub process_jobs_per_s: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("bench scratch dir {path}: {source}")]
    Dir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("workers stopped after {done} of {want} jobs")]
    Stalled { done: u64, want: u64 },
}

/// Removes the scratch dir however the bench ends.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub async fn queue(args: QueueBenchArgs) -> Result<QueueBenchReport, BenchError> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!(
        "zlh-bench-{}-{}",
        std::process::id(),
        crate::db::now_ms()
    ));
    std::fs::create_dir_all(&dir).map_err(|source| BenchError::Dir {
        path: dir.clone(),
        source,
    })?;
    let _scratch = Scratch(dir.clone());
    let db = Db::open_in(&dir)?;
    let n = args.jobs.max(1);
    let queue = Queue::new(db.clone(), None);

    // 1. One job per transaction (each one durable before the next starts).
    let t = Instant::now();
    for i in 0..n {
        queue
            .enqueue(NewJob::new(crate::jobs::NOOP, json!({ "i": i })))
            .await?;
    }
    let one_by_one = n as f64 / t.elapsed().as_secs_f64();

    // 2. Drain them with the real worker pool.
    let mut registry = Registry::new();
    registry.register_arc(crate::jobs::noop());
    let worker = Worker::new(
        db.clone(),
        registry,
        1,
        WorkerConfig {
            concurrency: args.concurrency.max(1),
            poll_interval: Duration::from_millis(50),
            ..WorkerConfig::default()
        },
    );
    let handle = worker.handle();
    let mut finished = handle.finished();
    let stop = CancellationToken::new();
    let t = Instant::now();
    let task = tokio::spawn(worker.run(stop.clone()));
    let want = n as u64;
    let drained = tokio::time::timeout(
        Duration::from_secs(600),
        finished.wait_for(|done| *done >= want),
    )
    .await
    .map(|r| r.is_ok());
    let elapsed = t.elapsed();
    let done = *finished.borrow();
    stop.cancel();
    let _ = task.await;
    if drained != Ok(true) {
        return Err(BenchError::Stalled { done, want });
    }
    let process = n as f64 / elapsed.as_secs_f64();

    // 3. Batches of 1,000 jobs per transaction.
    let t = Instant::now();
    let mut left = n;
    while left > 0 {
        let k = left.min(1000);
        let jobs = (0..k)
            .map(|i| NewJob::new(crate::jobs::NOOP, json!({ "i": i })))
            .collect();
        queue.enqueue_many(jobs).await?;
        left -= k;
    }
    let batched = n as f64 / t.elapsed().as_secs_f64();

    Ok(QueueBenchReport {
        system: "zlh",
        label: "durable (synchronous=FULL)",
        jobs: n,
        concurrency: args.concurrency,
        enqueue_one_by_one_jobs_per_s: one_by_one.round(),
        enqueue_batched_jobs_per_s: batched.round(),
        process_jobs_per_s: process.round(),
    })
}
