//! The durable job queue as a library: real SQLite files, real worker pools.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use zlh::db::{Db, now_ms};
use zlh::queue::{
    self, CronSpec, JobFailure, JobState, NewJob, Outcome, Queue, Registry, Worker, WorkerConfig,
    WorkerHandle, handler_fn, store,
};

use crate::support::wait_for_async;

fn temp_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open_in(dir.path()).unwrap();
    (dir, db)
}

fn fast_config() -> WorkerConfig {
    WorkerConfig {
        concurrency: 8,
        lease: Duration::from_secs(2),
        poll_interval: Duration::from_millis(20),
        retry_base: Duration::from_millis(40),
        retry_cap: Duration::from_millis(400),
        shutdown_grace: Duration::from_secs(5),
        ..WorkerConfig::default()
    }
}

struct Pool {
    handle: WorkerHandle,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), queue::QueueError>>,
}

impl Pool {
    fn start(db: &Db, registry: Registry, cfg: WorkerConfig) -> Pool {
        let worker = Worker::new(db.clone(), registry, 1, cfg);
        let handle = worker.handle();
        let stop = CancellationToken::new();
        let task = tokio::spawn(worker.run(stop.clone()));
        Pool { handle, stop, task }
    }
    async fn shutdown(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

async fn job(db: &Db, id: i64) -> queue::Job {
    let db = db.clone();
    db.call(move |c| queue::get(c, id)).await.unwrap().unwrap()
}

async fn wait_state(db: &Db, id: i64, want: JobState) -> queue::Job {
    wait_for_async(
        &format!("job {id} to become {want}"),
        Duration::from_secs(20),
        || async {
            let j = job(db, id).await;
            (j.state == want).then_some(j)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn thousand_concurrent_enqueues_with_one_unique_key_make_one_job() {
    let (_dir, db) = temp_db();
    let q = Queue::new(db.clone(), None);
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let q = q.clone();
        tasks.push(tokio::spawn(async move {
            q.enqueue(
                NewJob::new("provision", json!({ "caller": i })).unique_key("server:7:provision"),
            )
            .await
            .unwrap()
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.unwrap());
    }
    let first = results[0].id;
    assert!(
        results.iter().all(|r| r.id == first),
        "every caller got the same job"
    );
    assert_eq!(results.iter().filter(|r| r.created).count(), 1);
    let rows: i64 = db
        .call(|c| {
            c.query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
                .map_err(zlh::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(rows, 1);

    // Once that job is finished, the key is free again.
    db.call(move |c| {
        c.execute(
            "UPDATE jobs SET state = 'completed', finished_at = 1 WHERE id = ?1",
            [first],
        )
        .map_err(zlh::db::DbError::from)
    })
    .await
    .unwrap();
    let again = q
        .enqueue(NewJob::new("provision", json!({})).unique_key("server:7:provision"))
        .await
        .unwrap();
    assert!(again.created);
    assert_ne!(again.id, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_in_one_lane_never_overlap() {
    let (_dir, db) = temp_db();
    let spans: Arc<Mutex<Vec<(String, Instant, Instant)>>> = Arc::default();
    let mut registry = Registry::new();
    let s = spans.clone();
    registry.register(handler_fn("lane.work", move |ctx| {
        let s = s.clone();
        async move {
            let start = Instant::now();
            tokio::time::sleep(Duration::from_millis(15)).await;
            let lane = ctx.lane.clone().unwrap_or_default();
            s.lock().unwrap().push((lane, start, Instant::now()));
            Ok(Outcome::Complete)
        }
    }));
    let q = Queue::new(db.clone(), None);
    let mut jobs = Vec::new();
    for i in 0..15 {
        for lane in ["server:1", "server:2", "server:3"] {
            jobs.push(NewJob::new("lane.work", json!({ "i": i })).lane(lane));
        }
    }
    q.enqueue_many(jobs).await.unwrap();
    let pool = Pool::start(
        &db,
        registry,
        WorkerConfig {
            concurrency: 16,
            ..fast_config()
        },
    );
    let mut finished = pool.handle.finished();
    tokio::time::timeout(Duration::from_secs(30), finished.wait_for(|n| *n >= 45))
        .await
        .unwrap()
        .unwrap();
    pool.shutdown().await;

    let spans = spans.lock().unwrap();
    assert_eq!(spans.len(), 45);
    for lane in ["server:1", "server:2", "server:3"] {
        let mut mine: Vec<_> = spans.iter().filter(|(l, _, _)| l == lane).collect();
        mine.sort_by_key(|(_, s, _)| *s);
        for pair in mine.windows(2) {
            assert!(
                pair[1].1 >= pair[0].2,
                "two jobs of {lane} ran at the same time"
            );
        }
    }
    // Different lanes did run side by side (the pool is concurrent, lanes are not).
    let overlapping = spans.iter().any(|(la, s1, e1)| {
        spans
            .iter()
            .any(|(lb, s2, e2)| la != lb && s1 < e2 && s2 < e1)
    });
    assert!(overlapping, "different lanes should run concurrently");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failures_retry_with_growing_backoff_then_discard() {
    let (_dir, db) = temp_db();
    let attempts: Arc<Mutex<Vec<Instant>>> = Arc::default();
    let a = attempts.clone();
    let mut registry = Registry::new();
    registry.register(handler_fn("always.fails", move |ctx| {
        let a = a.clone();
        async move {
            a.lock().unwrap().push(Instant::now());
            Err(JobFailure::retry(format!(
                "boom on attempt {}",
                ctx.attempt
            )))
        }
    }));
    let q = Queue::new(db.clone(), None);
    let id = q
        .enqueue(NewJob::new("always.fails", json!({})).max_attempts(4))
        .await
        .unwrap()
        .id;
    let cfg = WorkerConfig {
        retry_base: Duration::from_millis(100),
        retry_cap: Duration::from_secs(5),
        ..fast_config()
    };
    let pool = Pool::start(&db, registry, cfg);
    let j = wait_state(&db, id, JobState::Discarded).await;
    pool.shutdown().await;

    assert_eq!(j.attempt, 4);
    assert_eq!(j.errors.len(), 4, "every error is kept on the row");
    for (i, e) in j.errors.iter().enumerate() {
        assert_eq!(e.attempt, i as i64 + 1);
        assert_eq!(e.error, format!("boom on attempt {}", i + 1));
    }
    assert!(j.finished_at.is_some());
    let times = attempts.lock().unwrap();
    assert_eq!(times.len(), 4, "no attempt after max_attempts");
    // Backoff doubles from 100 ms with ±20% jitter: ≥80, ≥160, ≥320 ms.
    let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    for (i, gap) in gaps.iter().enumerate() {
        let min = Duration::from_millis((100u64 << i) * 8 / 10);
        assert!(
            *gap >= min,
            "retry {} came after {gap:?}, expected ≥ {min:?}",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn transient_failure_then_success_completes_with_errors_kept() {
    let (_dir, db) = temp_db();
    let mut registry = Registry::new();
    registry.register(handler_fn("flaky", |ctx| async move {
        if ctx.attempt < 3 {
            Err(JobFailure::retry("not yet").after(Duration::from_millis(10)))
        } else {
            Ok(Outcome::Complete)
        }
    }));
    let id = Queue::new(db.clone(), None)
        .enqueue(NewJob::new("flaky", json!({})))
        .await
        .unwrap()
        .id;
    let pool = Pool::start(&db, registry, fast_config());
    let j = wait_state(&db, id, JobState::Completed).await;
    pool.shutdown().await;
    assert_eq!(j.attempt, 3);
    assert_eq!(j.errors.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fatal_failure_and_unknown_kind_are_discarded_at_once() {
    let (_dir, db) = temp_db();
    let mut registry = Registry::new();
    registry.register(handler_fn("bad.input", |_| async {
        Err(JobFailure::fatal("template 'nope' does not exist"))
    }));
    let q = Queue::new(db.clone(), None);
    let fatal = q
        .enqueue(NewJob::new("bad.input", json!({})))
        .await
        .unwrap()
        .id;
    let unknown = q
        .enqueue(NewJob::new("from.the.future", json!({})))
        .await
        .unwrap()
        .id;
    let pool = Pool::start(&db, registry, fast_config());
    let f = wait_state(&db, fatal, JobState::Discarded).await;
    let u = wait_state(&db, unknown, JobState::Discarded).await;
    pool.shutdown().await;
    assert_eq!(f.attempt, 1);
    assert_eq!(f.errors[0].error, "template 'nope' does not exist");
    assert!(
        u.errors[0]
            .error
            .contains("no handler for job kind 'from.the.future'")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn snooze_runs_again_later_without_spending_attempts() {
    let (_dir, db) = temp_db();
    let mut registry = Registry::new();
    registry.register(handler_fn("poller", |ctx| async move {
        match ctx
            .checkpoint
            .as_ref()
            .and_then(|c| c["polls"].as_i64())
            .unwrap_or(0)
        {
            n if n < 3 => {
                let mut ctx = ctx;
                ctx.checkpoint(json!({ "polls": n + 1 })).await?;
                Ok(Outcome::Snooze(Duration::from_millis(20)))
            }
            _ => Ok(Outcome::Complete),
        }
    }));
    let id = Queue::new(db.clone(), None)
        .enqueue(NewJob::new("poller", json!({})).max_attempts(1))
        .await
        .unwrap()
        .id;
    let pool = Pool::start(&db, registry, fast_config());
    let j = wait_state(&db, id, JobState::Completed).await;
    pool.shutdown().await;
    assert_eq!(j.checkpoint, Some(json!({ "polls": 3 })));
    assert!(j.errors.is_empty(), "a snooze is not an error");
    assert_eq!(j.attempt, 4);
    assert_eq!(j.max_attempts, 4, "each snooze gave its attempt back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancelled_running_job_never_becomes_completed() {
    let (_dir, db) = temp_db();
    let started = Arc::new(Notify::new());
    let proceed = Arc::new(Notify::new());
    let mut registry = Registry::new();
    let (s, p) = (started.clone(), proceed.clone());
    // This handler ignores its cancellation token and reports success anyway.
    registry.register(handler_fn("stubborn", move |_ctx| {
        let (s, p) = (s.clone(), p.clone());
        async move {
            s.notify_one();
            p.notified().await;
            Ok(Outcome::Complete)
        }
    }));
    let (s2, seen) = (Arc::new(Notify::new()), Arc::new(Mutex::new(false)));
    let (s2c, seenc) = (s2.clone(), seen.clone());
    // This one honours the token.
    registry.register(handler_fn("polite", move |ctx| {
        let (s2c, seenc) = (s2c.clone(), seenc.clone());
        async move {
            s2c.notify_one();
            ctx.cancel.cancelled().await;
            *seenc.lock().unwrap() = true;
            Err(JobFailure::retry("stopped: cancelled"))
        }
    }));
    let q_plain = Queue::new(db.clone(), None);
    let stubborn = q_plain
        .enqueue(NewJob::new("stubborn", json!({})))
        .await
        .unwrap()
        .id;
    let polite = q_plain
        .enqueue(NewJob::new("polite", json!({})))
        .await
        .unwrap()
        .id;
    let pool = Pool::start(&db, registry, fast_config());
    let q = Queue::new(db.clone(), Some(pool.handle.clone()));
    started.notified().await;
    s2.notified().await;

    assert_eq!(
        q.cancel(stubborn).await.unwrap(),
        queue::CancelEffect::Requested
    );
    // A cancel written by another process (the CLI) reaches the worker through its heartbeat.
    let dbc = db.clone();
    dbc.write(move |tx| queue::cancel(tx, polite, now_ms()))
        .await
        .unwrap();

    proceed.notify_one();
    let a = wait_state(&db, stubborn, JobState::Cancelled).await;
    let b = wait_state(&db, polite, JobState::Cancelled).await;
    pool.shutdown().await;
    assert!(
        *seen.lock().unwrap(),
        "the running handler saw its cancellation token"
    );
    assert!(a.finished_at.is_some() && b.finished_at.is_some());
    // Terminal: cancelling again is refused.
    assert!(matches!(
        q_plain.cancel(stubborn).await,
        Err(queue::QueueError::InvalidState { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn worker_that_lost_its_lease_cannot_commit() {
    let (_dir, db) = temp_db();
    db.call(|c| {
        c.execute_batch("CREATE TABLE effects (job INTEGER, note TEXT)")
            .map_err(zlh::db::DbError::from)
    })
    .await
    .unwrap();
    let reached = Arc::new(Notify::new());
    let go = Arc::new(Notify::new());
    let outcome: Arc<Mutex<Option<String>>> = Arc::default();
    let (r, g, o) = (reached.clone(), go.clone(), outcome.clone());
    let mut registry = Registry::new();
    registry.register(handler_fn("effect", move |ctx| {
        let (r, g, o) = (r.clone(), g.clone(), o.clone());
        async move {
            r.notify_one();
            g.notified().await;
            let id = ctx.id;
            let res = ctx
                .fenced(move |tx| {
                    tx.execute("INSERT INTO effects VALUES (?1, 'written')", [id])?;
                    Ok(())
                })
                .await;
            *o.lock().unwrap() = Some(format!("{res:?}"));
            res?;
            Ok(Outcome::Complete)
        }
    }));
    let id = Queue::new(db.clone(), None)
        .enqueue(NewJob::new("effect", json!({})))
        .await
        .unwrap()
        .id;
    let pool = Pool::start(
        &db,
        registry,
        WorkerConfig {
            lease: Duration::from_secs(600),
            ..fast_config()
        },
    );
    reached.notified().await;
    let running = job(&db, id).await;
    assert_eq!(running.state, JobState::Running);

    // The lease runs out (as if the worker had hung): a rescuer hands the job back
    // and another pool of this boot claims it (a pool of an earlier boot would itself
    // be rescued by the heartbeat: only one executor may serve a database).
    let future = now_ms() + 3_600_000;
    db.write(move |tx| {
        store::rescue(tx, "1:", future)?;
        store::promote_due(tx, future)?;
        store::claim(tx, "1:other", 1, future, 60_000)
    })
    .await
    .unwrap();
    go.notify_one();

    wait_for_async(
        "the old worker to try its write",
        Duration::from_secs(10),
        || async { outcome.lock().unwrap().clone() },
    )
    .await;
    let res = outcome.lock().unwrap().clone().unwrap();
    assert!(
        res.contains("LeaseLost"),
        "fenced write must fail, got {res}"
    );
    let effects: i64 = db
        .call(|c| {
            c.query_row("SELECT count(*) FROM effects", [], |r| r.get(0))
                .map_err(zlh::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(
        effects, 0,
        "nothing committed by the worker that lost its lease"
    );
    // Its failure report is fenced too: the job still belongs to the new worker.
    wait_for_async(
        "the old worker's outcome to be dropped",
        Duration::from_secs(10),
        || async {
            (pool
                .handle
                .stats()
                .lease_lost
                .load(std::sync::atomic::Ordering::Relaxed)
                == 1)
                .then_some(())
        },
    )
    .await;
    let after = job(&db, id).await;
    assert_eq!(after.state, JobState::Running);
    assert_eq!(after.lock_by.as_deref(), Some("1:other"));
    assert_eq!(after.attempt, 2);

    // And at the store level: completion, checkpoint and fence check all refuse the old fence.
    let old = store::Fence {
        id,
        lock_by: "1:w0".into(),
        attempt: 1,
    };
    let (c1, c2, c3) = db
        .write(move |tx| {
            Ok::<_, queue::QueueError>((
                store::finish(tx, &old, &store::Finish::Completed, now_ms())?,
                store::checkpoint(tx, &old, &json!({"x": 1})).is_err(),
                store::fence_holds(tx, &old)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(c1, None);
    assert!(c2);
    assert!(!c3);
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rescue_hands_back_jobs_of_an_earlier_boot() {
    let (_dir, db) = temp_db();
    let q = Queue::new(db.clone(), None);
    let a = q
        .enqueue(NewJob::new("x", json!({})).max_attempts(3))
        .await
        .unwrap()
        .id;
    let b = q
        .enqueue(NewJob::new("x", json!({})).max_attempts(1))
        .await
        .unwrap()
        .id;
    let (rescued, total) = db
        .write(move |tx| {
            let now = now_ms();
            store::claim(tx, "1:w0", 10, now, 60_000)?;
            let n = store::rescue(tx, "2:", now)?;
            Ok::<_, queue::QueueError>((n, zlh::db::counter_get(tx, "jobs_rescued")?))
        })
        .await
        .unwrap();
    assert_eq!(rescued, 2);
    assert_eq!(total, 2, "rescues are counted");
    let ja = job(&db, a).await;
    assert_eq!(ja.state, JobState::Retryable);
    assert!(ja.errors[0].error.contains("earlier boot"));
    assert_eq!(
        job(&db, b).await.state,
        JobState::Discarded,
        "out of attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shutdown_lets_short_jobs_finish_and_hands_back_long_ones() {
    let (_dir, db) = temp_db();
    let mut registry = Registry::new();
    registry.register(handler_fn("short", |_| async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok(Outcome::Complete)
    }));
    registry.register(handler_fn("forever", |_| async {
        std::future::pending::<()>().await;
        Ok(Outcome::Complete)
    }));
    let q = Queue::new(db.clone(), None);
    let short = q.enqueue(NewJob::new("short", json!({}))).await.unwrap().id;
    let long = q
        .enqueue(NewJob::new("forever", json!({})).max_attempts(1))
        .await
        .unwrap()
        .id;
    let pool = Pool::start(
        &db,
        registry,
        WorkerConfig {
            shutdown_grace: Duration::from_millis(600),
            ..fast_config()
        },
    );
    wait_state(&db, long, JobState::Running).await;
    pool.shutdown().await;
    assert_eq!(job(&db, short).await.state, JobState::Completed);
    let l = job(&db, long).await;
    assert_eq!(
        l.state,
        JobState::Available,
        "handed back to run after the restart"
    );
    assert_eq!(l.max_attempts, 2, "the interrupted attempt is given back");
    assert!(l.errors[0].error.contains("interrupted by shutdown"));
    assert!(l.lease_until.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_jobs_run_only_after_release() {
    let (_dir, db) = temp_db();
    let mut registry = Registry::new();
    registry.register(handler_fn("side.effect", |_| async {
        Ok(Outcome::Complete)
    }));
    registry.register(handler_fn("safe", |_| async { Ok(Outcome::Complete) }).replay_safe(true));
    let q = Queue::new(db.clone(), None);
    let effect = q
        .enqueue(NewJob::new("side.effect", json!({})))
        .await
        .unwrap()
        .id;
    let safe = q.enqueue(NewJob::new("safe", json!({}))).await.unwrap().id;
    let kinds: Vec<String> = registry
        .replay_safe_kinds()
        .into_iter()
        .map(String::from)
        .collect();
    let held = db
        .write(move |tx| {
            let k: Vec<&str> = kinds.iter().map(String::as_str).collect();
            store::hold_unfinished(tx, "restored from backup", &k)
        })
        .await
        .unwrap();
    assert_eq!(held, 1);
    let pool = Pool::start(&db, registry, fast_config());
    let q = Queue::new(db.clone(), Some(pool.handle.clone()));
    wait_state(&db, safe, JobState::Completed).await;
    let j = job(&db, effect).await;
    assert_eq!(j.state, JobState::Held);
    assert_eq!(j.held_reason.as_deref(), Some("restored from backup"));
    assert!(matches!(
        q.release(Some(safe)).await,
        Err(queue::QueueError::InvalidState { .. })
    ));
    assert_eq!(q.release(None).await.unwrap(), 1);
    wait_state(&db, effect, JobState::Completed).await;
    pool.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cron_slot_fires_once_even_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = CronSpec::new("reconcile", Duration::from_secs(60), "reconcile");
    let slot_start = (now_ms() / 60_000) * 60_000;
    {
        let db = Db::open_in(dir.path()).unwrap();
        let s = spec.clone();
        let fired = db
            .write(move |tx| {
                Ok::<_, queue::QueueError>((
                    queue::cron_fire_due(tx, &s, slot_start + 1)?,
                    queue::cron_fire_due(tx, &s, slot_start + 30_000)?,
                ))
            })
            .await
            .unwrap();
        assert!(fired.0.is_some());
        assert_eq!(fired.1, None, "same slot, same process");
    }
    // "Restart": a new handle on the same file; the slot's job even finished meanwhile.
    let db = Db::open_in(dir.path()).unwrap();
    db.call(|c| {
        c.execute("UPDATE jobs SET state = 'completed', finished_at = 1", [])
            .map_err(zlh::db::DbError::from)
    })
    .await
    .unwrap();
    let s = spec.clone();
    let (again, next) = db
        .write(move |tx| {
            Ok::<_, queue::QueueError>((
                queue::cron_fire_due(tx, &s, slot_start + 59_000)?,
                queue::cron_fire_due(tx, &s, slot_start + 60_000)?,
            ))
        })
        .await
        .unwrap();
    assert_eq!(again, None, "a slot never fires twice");
    assert!(next.is_some(), "the next slot fires");
    let keys: Vec<String> = db
        .call(|c| {
            let mut s = c.prepare("SELECT unique_key FROM jobs ORDER BY id")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<String>, _>>()
                .map_err(zlh::db::DbError::from)
        })
        .await
        .unwrap();
    let slot = slot_start / 60_000;
    assert_eq!(
        keys,
        vec![
            format!("cron:reconcile:{slot}"),
            format!("cron:reconcile:{}", slot + 1)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_prunes_only_old_finished_jobs() {
    let (_dir, db) = temp_db();
    let q = Queue::new(db.clone(), None);
    let mut ids = Vec::new();
    for _ in 0..7 {
        ids.push(q.enqueue(NewJob::new("x", json!({}))).await.unwrap().id);
    }
    let day = 86_400_000i64;
    let now = now_ms();
    let rows = [
        ("completed", now - 10 * day),  // old: pruned
        ("completed", now - day / 2),   // recent: kept
        ("cancelled", now - 10 * day),  // old: pruned
        ("discarded", now - 10 * day),  // discarded kept longer: kept
        ("discarded", now - 40 * day),  // older than that: pruned
        ("available", now - 100 * day), // live: never pruned
        ("held", now - 100 * day),      // live: never pruned
    ];
    let idc = ids.clone();
    db.write(move |tx| {
        for (id, (state, fin)) in idc.iter().zip(rows) {
            tx.execute(
                "UPDATE jobs SET state = ?2, finished_at = ?3 WHERE id = ?1",
                rusqlite::params![id, state, fin],
            )?;
        }
        Ok::<_, zlh::db::DbError>(())
    })
    .await
    .unwrap();
    let pruned = db
        .write(move |tx| store::prune(tx, now - day, now - 30 * day))
        .await
        .unwrap();
    assert_eq!(pruned, 3);
    let left: Vec<i64> = db
        .call(|c| {
            let mut s = c.prepare("SELECT id FROM jobs ORDER BY id")?;
            let rows = s.query_map([], |r| r.get(0))?;
            rows.collect::<Result<Vec<i64>, _>>()
                .map_err(zlh::db::DbError::from)
        })
        .await
        .unwrap();
    assert_eq!(left, vec![ids[1], ids[3], ids[5], ids[6]]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retry_reruns_a_discarded_job_and_respects_unique_keys() {
    let (_dir, db) = temp_db();
    let q = Queue::new(db.clone(), None);
    let id = q
        .enqueue(NewJob::new("x", json!({})).unique_key("k").max_attempts(1))
        .await
        .unwrap()
        .id;
    db.write(move |tx| {
        tx.execute(
            "UPDATE jobs SET state = 'discarded', attempt = 1, finished_at = 1 WHERE id = ?1",
            [id],
        )?;
        Ok::<_, zlh::db::DbError>(())
    })
    .await
    .unwrap();
    // While another live job holds the key, retrying would duplicate it.
    let other = q
        .enqueue(NewJob::new("x", json!({})).unique_key("k"))
        .await
        .unwrap();
    assert!(other.created);
    assert!(matches!(
        q.retry(id).await,
        Err(queue::QueueError::InvalidState { .. })
    ));
    q.cancel(other.id).await.unwrap();
    q.retry(id).await.unwrap();
    let j = job(&db, id).await;
    assert_eq!(j.state, JobState::Available);
    assert_eq!(j.max_attempts, 2, "one more attempt granted");
    assert!(matches!(
        q.retry(999).await,
        Err(queue::QueueError::NotFound(999))
    ));
}
