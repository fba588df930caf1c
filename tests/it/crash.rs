//! Crash safety with real processes: the app runs in a child process (this test
//! binary re-executed, serving through `zlh::app` with one extra job kind whose side
//! effect is observable), is SIGKILLed while its job runs, and restarted. The job is
//! rescued and completes, and its fenced effect commits exactly once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use zlh::queue::{JobFailure, NewJob, Outcome, Queue, handler_fn, store};

use crate::support::{open_db, wait_for};

const CHILD_ENV: &str = "ZLH_TEST_CRASH_CHILD_DIR";
/// The test's name as the harness knows it (`crash::…`: the module path without the crate).
fn test_name() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::sigkill_mid_job_is_rescued_and_the_effect_commits_once")
}

/// The job kind the child serves: it records its progress, waits for the test's go
/// (a file), commits its effect together with a checkpoint in one fenced
/// transaction, waits again, then completes. A rerun that finds the checkpoint
/// skips the effect.
fn effect_handler(dir: PathBuf) -> Arc<dyn zlh::queue::Handler> {
    Arc::new(handler_fn("test.effect", move |ctx| {
        let dir = dir.clone();
        async move {
            let attempt = ctx.attempt;
            let data = dir.join("data");
            let note = move |stage: &str| {
                let conn = open_db(&data);
                conn.execute(
                    "INSERT INTO test_progress (attempt, stage) VALUES (?1, ?2)",
                    rusqlite::params![attempt, stage],
                )
                .map(|_| ())
            };
            let wait_file = |name: &str| {
                let p = dir.join(name);
                async move {
                    while !p.exists() {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            };
            note("started")?;
            let done = ctx
                .checkpoint
                .as_ref()
                .is_some_and(|c| c["effect"] == "done");
            if !done {
                wait_file("go-effect").await;
                let fence = ctx.fence().clone();
                ctx.fenced(move |tx| {
                    tx.execute("UPDATE test_effects SET count = count + 1", [])?;
                    store::checkpoint(tx, &fence, &json!({"effect": "done"}))
                })
                .await
                .map_err(|e| JobFailure::retry(e.to_string()))?;
                note("effect committed")?;
            }
            wait_file("go-finish").await;
            Ok(Outcome::Complete)
        }
    }))
}

fn child_main(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let config = zlh::config::Config {
            data_dir: dir.join("data"),
            ..Default::default()
        };
        let mut config = config;
        config.queue.lease_secs = 5;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let prepared = zlh::app::prepare(config).unwrap();
        let options = zlh::app::ServeOptions {
            handlers: vec![effect_handler(dir.to_path_buf())],
            crons: vec![],
        };
        prepared
            .run(listener, std::future::pending(), options)
            .await
            .unwrap();
    });
}

fn spawn_child(dir: &Path) -> Child {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("child.log"))
        .unwrap();
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &test_name(), "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawning the child server")
}

fn sigkill(child: &mut Child) {
    unsafe {
        libc::kill(child.id() as i32, libc::SIGKILL);
    }
    let status = child.wait().unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
}

fn progress(dir: &Path) -> Vec<(i64, String)> {
    let conn = open_db(&dir.join("data"));
    let mut s = conn
        .prepare("SELECT attempt, stage FROM test_progress ORDER BY rowid")
        .unwrap();
    s.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn job_state(dir: &Path, id: i64) -> (String, i64) {
    let conn = open_db(&dir.join("data"));
    conn.query_row("SELECT state, attempt FROM jobs WHERE id = ?1", [id], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
}

#[test]
fn sigkill_mid_job_is_rescued_and_the_effect_commits_once() {
    if let Ok(dir) = std::env::var(CHILD_ENV) {
        child_main(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();

    // The database, the observable effect and one job exist before the first boot.
    let db = zlh::db::Db::open_in(&data).unwrap();
    {
        let conn = db.conn().unwrap();
        conn.execute_batch(
            "CREATE TABLE test_effects (count INTEGER NOT NULL);
             INSERT INTO test_effects VALUES (0);
             CREATE TABLE test_progress (attempt INTEGER, stage TEXT);",
        )
        .unwrap();
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let id = rt
        .block_on(Queue::new(db.clone(), None).enqueue(NewJob::new("test.effect", json!({}))))
        .unwrap()
        .id;
    drop(db);

    // Boot 1: killed while the job runs, before its effect.
    let mut child = spawn_child(dir);
    wait_for("attempt 1 to start", Duration::from_secs(30), || {
        progress(dir).contains(&(1, "started".into())).then_some(())
    });
    assert_eq!(job_state(dir, id), ("running".into(), 1));
    sigkill(&mut child);

    // Boot 2: rescued at boot, runs again, commits the effect; killed before completing.
    let mut child = spawn_child(dir);
    wait_for("attempt 2 to start", Duration::from_secs(30), || {
        progress(dir).contains(&(2, "started".into())).then_some(())
    });
    std::fs::write(dir.join("go-effect"), b"").unwrap();
    wait_for(
        "attempt 2 to commit its effect",
        Duration::from_secs(30),
        || {
            progress(dir)
                .contains(&(2, "effect committed".into()))
                .then_some(())
        },
    );
    sigkill(&mut child);

    // Boot 3: rescued again; the checkpoint says the effect is done, so it is skipped.
    let mut child = spawn_child(dir);
    std::fs::write(dir.join("go-finish"), b"").unwrap();
    wait_for("the job to complete", Duration::from_secs(30), || {
        (job_state(dir, id).0 == "completed").then_some(())
    });
    sigkill(&mut child);

    let conn = open_db(&data);
    let count: i64 = conn
        .query_row("SELECT count FROM test_effects", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 1, "the fenced effect committed exactly once");
    let (state, attempt) = job_state(dir, id);
    assert_eq!((state.as_str(), attempt), ("completed", 3));
    let jobs: i64 = conn
        .query_row(
            "SELECT count(*) FROM jobs WHERE kind = 'test.effect'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(jobs, 1, "one job, never duplicated");
    let errors: String = conn
        .query_row("SELECT errors FROM jobs WHERE id = ?1", [id], |r| r.get(0))
        .unwrap();
    assert_eq!(
        errors.matches("rescued").count(),
        2,
        "both crashes are on the row: {errors}"
    );
    let rescued: i64 = conn
        .query_row(
            "SELECT value FROM counters WHERE name = 'jobs_rescued'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Other jobs (the built-in hourly prune) may have been caught by a kill too:
    // the counter matches every rescue recorded on any row.
    let all_errors: Vec<String> = conn
        .prepare("SELECT errors FROM jobs")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let recorded: usize = all_errors
        .iter()
        .map(|e| e.matches("rescued").count())
        .sum();
    assert!(rescued >= 2);
    assert_eq!(rescued as usize, recorded);
    assert_eq!(
        progress(dir),
        vec![
            (1, "started".to_string()),
            (2, "started".to_string()),
            (2, "effect committed".to_string()),
            (3, "started".to_string()),
        ]
    );
}
