//! The real `zlh` binary: single instance, backup while serving, configuration
//! errors, graceful shutdown, host change, and the jobs commands.

use crate::support;

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::support::{Served, http_get, open_db, wait_for, zlh};

#[test]
fn second_serve_on_the_same_data_dir_is_refused_naming_the_holder() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let first = Served::start(tmp.path(), &data, &[]);

    let started = Instant::now();
    let out = zlh(tmp.path())
        .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let took = started.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second serve must fail");
    assert!(stderr.contains("another zlh serve owns"), "{stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid())),
        "names the holder's pid: {stderr}"
    );
    assert!(
        stderr.contains("host "),
        "names the holder's host: {stderr}"
    );
    assert!(
        took < Duration::from_secs(10),
        "refused promptly, took {took:?}"
    );

    // The first one keeps serving, and its instance row is still its own.
    let (code, _) = http_get(&first.url("/healthz")).unwrap();
    assert_eq!(code, 200);
    let pid: i64 = open_db(&data)
        .query_row("SELECT pid FROM instance", [], |r| r.get(0))
        .unwrap();
    assert_eq!(pid, first.pid() as i64);
}

#[test]
fn backup_while_serving_a_busy_database_passes_integrity_check() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let _served = Served::start(tmp.path(), &data, &[]);

    // Keep the database busy: another process enqueues no-op jobs that the server runs.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let data = data.clone();
        std::thread::spawn(move || {
            let mut conn = open_db(&data);
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                zlh::db::write_tx(&mut conn, |tx| {
                    for _ in 0..50 {
                        zlh::queue::enqueue(
                            tx,
                            &zlh::queue::NewJob::new(
                                "noop",
                                serde_json::json!({"pad": "x".repeat(200)}),
                            ),
                            zlh::db::now_ms(),
                        )?;
                    }
                    Ok::<_, zlh::queue::QueueError>(())
                })
                .unwrap();
                n += 50;
            }
            n
        })
    };
    for i in 0..3 {
        let file = tmp.path().join(format!("backup-{i}.db"));
        let out = zlh(tmp.path())
            .args(["backup", "--data-dir"])
            .arg(&data)
            .arg(&file)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "backup failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conn = rusqlite::Connection::open(&file).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
        let jobs: i64 = conn
            .query_row("SELECT count(*) FROM jobs", [], |r| r.get(0))
            .unwrap();
        assert!(jobs >= 1);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written > 0);

    // An existing file is not overwritten without --force.
    let out = zlh(tmp.path())
        .args(["backup", "--data-dir"])
        .arg(&data)
        .arg(tmp.path().join("backup-0.db"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
}

/// Runs `zlh` with `args` (and `env`) in a fresh dir; asserts it fails, names
/// `needle`, and wrote nothing.
fn assert_refused(args: &[&str], env: &[(&str, &str)], file: Option<&str>, needle: &str) {
    let tmp = tempfile::tempdir().unwrap();
    if let Some(text) = file {
        std::fs::write(tmp.path().join("zlh.toml"), text).unwrap();
    }
    let mut cmd = zlh(tmp.path());
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{args:?} {env:?} should fail");
    assert!(
        stderr.contains(needle),
        "{args:?} {env:?}: expected '{needle}' in: {stderr}"
    );
    let mut left: Vec<String> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.retain(|n| n != "zlh.toml");
    assert!(left.is_empty(), "nothing may be written, found {left:?}");
}

#[test]
fn invalid_config_and_flags_are_refused_with_the_key_named_and_nothing_written() {
    assert_refused(
        &["serve", "--listen", "not-an-address"],
        &[],
        None,
        "--listen",
    );
    assert_refused(&["serve", "--workers", "many"], &[], None, "--workers");
    assert_refused(&["serve", "--bogus"], &[], None, "--bogus");
    assert_refused(
        &["serve"],
        &[("ZLH_QUEUE_WORKERS", "0")],
        None,
        "`queue.workers` (from environment variable ZLH_QUEUE_WORKERS): must be between 1 and 1000",
    );
    assert_refused(
        &["serve"],
        &[("ZLH_LISTEN", "localhost-ish")],
        None,
        "ZLH_LISTEN",
    );
    assert_refused(
        &["serve"],
        &[("ZLH_WORKERZ", "4")],
        None,
        "unknown setting ZLH_WORKERZ",
    );
    assert_refused(
        &["serve"],
        &[],
        Some("[queue]\nconcurrency = 4\n"),
        "unknown setting `queue.concurrency`",
    );
    assert_refused(
        &["serve"],
        &[],
        Some("[queue]\nlease_secs = \"long\"\n"),
        "queue.lease_secs",
    );
    assert_refused(&["serve"], &[], Some("listen = [1, 2\n"), "zlh.toml");
    assert_refused(
        &["config", "check"],
        &[("ZLH_QUEUE_POLL_MS", "1")],
        None,
        "queue.poll_ms",
    );
    assert_refused(
        &["serve", "--config", "missing.toml"],
        &[],
        None,
        "missing.toml",
    );
    assert_refused(&["jobs", "list"], &[], None, "no zlh database");
}

#[test]
fn config_check_prints_the_effective_settings_with_their_layers() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("zlh.toml"),
        "listen = \"127.0.0.1:9000\"\n[queue]\nworkers = 4\nlease_secs = 30\n",
    )
    .unwrap();
    let out = zlh(tmp.path())
        .args(["config", "check", "--workers", "8"])
        .env("ZLH_QUEUE_LEASE_SECS", "45")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("listen = \"127.0.0.1:9000\""),
        "file: {stdout}"
    );
    assert!(
        stdout.contains("lease_secs = 45"),
        "env beats file: {stdout}"
    );
    assert!(stdout.contains("workers = 8"), "flag beats file: {stdout}");
    assert!(
        !tmp.path().join("zlh-data").exists(),
        "check writes nothing"
    );
}

#[test]
fn sigterm_shuts_down_cleanly_and_the_periodic_slot_does_not_fire_twice() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut served = Served::start(tmp.path(), &data, &[]);
    wait_for("the hourly prune to fire", Duration::from_secs(20), || {
        let n: i64 = open_db(&data)
            .query_row(
                "SELECT count(*) FROM jobs WHERE kind = 'queue.prune' AND state = 'completed'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (n >= 1).then_some(())
    });
    let status = served.signal_and_wait(libc::SIGTERM);
    assert!(
        status.success(),
        "clean exit on SIGTERM: {}",
        served.log_text()
    );
    let stopped: Option<i64> = open_db(&data)
        .query_row("SELECT stopped_at FROM instance", [], |r| r.get(0))
        .unwrap();
    assert!(stopped.is_some(), "the instance row records the stop");

    // Restart: boot epoch moves on, and the slot that already fired does not fire again.
    let mut again = Served::start(tmp.path(), &data, &[]);
    let (code, metrics) = http_get(&again.url("/metrics")).unwrap();
    assert_eq!(code, 200);
    assert!(metrics.contains("zlh_boot_epoch 2"), "{metrics}");
    assert!(metrics.contains("zlh_jobs_by_state{state=\"held\"} 0"));
    let conn = open_db(&data);
    let dupes: i64 = conn
        .query_row(
            "SELECT count(*) FROM (SELECT unique_key FROM jobs WHERE unique_key IS NOT NULL
             GROUP BY unique_key HAVING count(*) > 1)",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(dupes, 0, "no periodic slot fired twice");
    assert!(again.signal_and_wait(libc::SIGINT).success());
}

#[test]
fn a_database_from_another_host_holds_side_effecting_jobs_until_released() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut served = Served::start(tmp.path(), &data, &["--host-id", "old-host"]);
    assert!(served.signal_and_wait(libc::SIGTERM).success());

    // Work left behind: a side-effecting job (no handler here yet) and a harmless no-op.
    let conn = open_db(&data);
    let now = zlh::db::now_ms();
    let effect = zlh::queue::enqueue(
        &conn,
        &zlh::queue::NewJob::new("provision", serde_json::json!({"server": 1})),
        now,
    )
    .unwrap()
    .id;
    let noop = zlh::queue::enqueue(
        &conn,
        &zlh::queue::NewJob::new("noop", serde_json::json!({})),
        now,
    )
    .unwrap()
    .id;

    let served = Served::start(tmp.path(), &data, &["--host-id", "new-host"]);
    wait_for("the no-op to run", Duration::from_secs(20), || {
        let st: String = conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", [noop], |r| r.get(0))
            .ok()?;
        (st == "completed").then_some(())
    });
    let (state, reason): (String, String) = conn
        .query_row(
            "SELECT state, held_reason FROM jobs WHERE id = ?1",
            [effect],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(state, "held");
    assert!(
        reason.contains("old-host") && reason.contains("new-host"),
        "{reason}"
    );
    let (_, home) = support::ui_get(&served, "/");
    assert!(
        home.contains("Jobs are held"),
        "the dashboard shows a banner: {home}"
    );
    let (_, metrics) = http_get(&served.url("/metrics")).unwrap();
    assert!(
        metrics.contains("zlh_jobs_by_state{state=\"held\"} 1"),
        "{metrics}"
    );

    let list = zlh(tmp.path())
        .args(["jobs", "list", "--state", "held", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&list.stdout);
    assert!(
        text.contains("provision") && text.contains("held"),
        "{text}"
    );

    let release = zlh(tmp.path())
        .args(["jobs", "release", "--all", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(release.status.success());
    assert!(String::from_utf8_lossy(&release.stdout).contains("released 1"));
    // Released, it runs (and, with no provision handler in this build, is discarded loudly).
    wait_for("the released job to run", Duration::from_secs(20), || {
        let st: String = conn
            .query_row("SELECT state FROM jobs WHERE id = ?1", [effect], |r| {
                r.get(0)
            })
            .ok()?;
        (st == "discarded").then_some(())
    });
    let show = zlh(tmp.path())
        .args(["jobs", "show", &effect.to_string(), "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(
        text.contains("no handler for job kind 'provision'"),
        "{text}"
    );
}

#[test]
fn jobs_commands_retry_and_cancel() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let out = zlh(tmp.path())
        .args(["migrate", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let schema = format!("schema version {}", zlh::db::latest_schema_version());
    assert!(String::from_utf8_lossy(&out.stdout).contains(&schema));
    let conn = open_db(&data);
    let now = zlh::db::now_ms();
    let a = zlh::queue::enqueue(
        &conn,
        &zlh::queue::NewJob::new("x", serde_json::json!({})),
        now,
    )
    .unwrap()
    .id;
    let run = |args: &[&str]| {
        zlh(tmp.path())
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    let out = run(&["jobs", "cancel", &a.to_string()]);
    assert!(out.status.success());
    let state = |id: i64| -> String {
        conn.query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(state(a), "cancelled");
    let out = run(&["jobs", "cancel", &a.to_string()]);
    assert!(!out.status.success(), "a finished job cannot be cancelled");
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"));
    assert!(run(&["jobs", "retry", &a.to_string()]).status.success());
    assert_eq!(state(a), "available");
    let out = run(&["jobs", "show", "424242"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("job 424242 not found"));
    let out = run(&["jobs", "list", "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["id"], a);
    assert_eq!(list[0]["state"], "available");
    let out = run(&["jobs", "list", "--state", "bogus"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown job state 'bogus'"));
}
