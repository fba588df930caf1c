//! Operations: scheduled backups, restore (refused while serving), and a host move
//! with a provisioning job in flight — nothing replays until an operator releases it.

use crate::support;

use std::time::Duration;

use crate::support::api::Api;
use crate::support::pve_sim::PveSim;
use crate::support::{Served, open_db, wait_for, zlh};
use serde_json::json;

fn run(cwd: &std::path::Path, args: &[&str], data: &std::path::Path) -> std::process::Output {
    zlh(cwd)
        .args(args)
        .arg("--data-dir")
        .arg(data)
        .output()
        .unwrap()
}

#[test]
fn host_move_holds_the_in_flight_job_until_released_and_clones_once() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = PveSim::start();
    let dir_a = tmp.path().join("a");
    std::fs::create_dir_all(&dir_a).unwrap();
    let served = Served::start_with_env(
        &dir_a,
        &dir_a.join("data"),
        &["--host-id", "old-host"],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );
    let mut api = Api::start_on(&dir_a, served);
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(
            json!({"name": "pve", "kind": "proxmox", "memory_mb": 100000,
                    "settings": serde_json::to_value(sim.proxmox_config()).unwrap()}),
        ),
    );
    assert_eq!(code, 201, "{body}");
    // The clone is in flight on the old host when it goes away.
    sim.hold_tasks("vzclone");
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "mover", "template": "standin", "version": "1.0", "eula": true, "node": "pve"})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    wait_for("the clone to be in flight", Duration::from_secs(30), || {
        (sim.tasks("vzclone") >= 1).then_some(())
    });

    // 1. Back up on the old host (while it serves), 2. stop it.
    let backup = tmp.path().join("move.db");
    let out = run(
        &dir_a,
        &["backup", backup.to_str().unwrap()],
        &api.served.data_dir,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!api.served.signal_and_wait(libc::SIGKILL).success());

    // 3. Restore on the new host (data dir B).
    let dir_b = tmp.path().join("b");
    std::fs::create_dir_all(&dir_b).unwrap();
    let data_b = dir_b.join("data");
    // The runbook carries the secret key along (the backup's secrets open only with it).
    std::fs::create_dir_all(&data_b).unwrap();
    std::fs::copy(dir_a.join("data/secret.key"), data_b.join("secret.key")).unwrap();
    let out = run(&dir_b, &["restore", backup.to_str().unwrap()], &data_b);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("job(s) are held"));
    // The runbook copies the artifact mirror along with the database.
    let status = std::process::Command::new("cp")
        .arg("-a")
        .arg(dir_a.join("data/artifacts"))
        .arg(data_b.join("artifacts"))
        .status()
        .unwrap();
    assert!(status.success());
    let requests_before: usize = sim.request_counts().values().sum();

    // 4. Start there as another host identity: the job stays held.
    api.served.keep_agents = true;
    api.served = Served::start_with_env(
        &dir_b,
        &data_b,
        &["--host-id", "new-host"],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );
    let conn = open_db(&data_b);
    let job_state = |conn: &rusqlite::Connection| -> String {
        conn.query_row(
            "SELECT state FROM jobs WHERE kind = 'server.provision'",
            [],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(job_state(&conn), "held");
    // The new executor is up and working (its start-up reconcile ran) ...
    wait_for("the start-up reconcile", Duration::from_secs(20), || {
        let n: i64 = conn
            .query_row(
                "SELECT count(*) FROM jobs WHERE kind = 'reconcile' AND state = 'completed'",
                [],
                |r| r.get(0),
            )
            .ok()?;
        (n >= 1).then_some(())
    });
    // ... and nothing reached the simulator.
    let requests_after: usize = sim.request_counts().values().sum();
    assert_eq!(
        requests_before, requests_after,
        "nothing replayed before the release"
    );
    assert_eq!(job_state(&conn), "held");
    let (_, home) = support::ui_get(&api.served, "/");
    assert!(home.contains("Jobs are held"), "{home}");

    // Restoring again while B serves is refused.
    let out = run(&dir_b, &["restore", backup.to_str().unwrap()], &data_b);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("another zlh serve owns"));

    // 5. The old clone finishes; 6. the operator releases: one container, one clone.
    sim.release_tasks("vzclone");
    let out = run(&dir_b, &["jobs", "release", "--all"], &data_b);
    assert!(out.status.success());
    let s = api.wait_status(id, "running");
    let vmid = s["vmid"].as_i64().unwrap();
    assert_eq!(sim.clones(vmid), 1, "exactly one clone across both hosts");
    assert_eq!(sim.total_clones(), 1);
    let servers: i64 = conn
        .query_row("SELECT count(*) FROM servers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(servers, 1);
}

#[test]
fn scheduled_backups_land_in_the_data_dir_with_retention() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A backup every hour slot; the first slot fires at start.
    let served = Served::start_with_env(
        tmp.path(),
        &data,
        &[],
        &[("ZLH_BACKUP_INTERVAL_HOURS", "1"), ("ZLH_BACKUP_KEEP", "2")],
    );
    wait_for(
        "the first scheduled backup",
        Duration::from_secs(30),
        || {
            // A finished one (a `.partial-*` file is a backup still being written).
            let n = std::fs::read_dir(data.join("backups"))
                .ok()?
                .flatten()
                .filter(|e| e.file_name().to_string_lossy().ends_with(".db"))
                .count();
            (n >= 1).then_some(())
        },
    );
    drop(served);
    // Retention: older backups beyond `keep` are removed by the next run.
    for name in [
        "zlh-2020-01-01T000000Z-000.db",
        "zlh-2020-01-02T000000Z-000.db",
    ] {
        let first = std::fs::read_dir(data.join("backups"))
            .unwrap()
            .flatten()
            .find(|e| e.file_name().to_string_lossy().ends_with(".db"))
            .unwrap()
            .path();
        std::fs::copy(first, data.join("backups").join(name)).unwrap();
    }
    // A backup cut short by a crash leaves a partial file: the next run clears it.
    std::fs::write(
        data.join("backups/zlh-2026-01-01T000000Z-000.partial-4242"),
        b"half",
    )
    .unwrap();
    zlh::store::backup::scheduled(&data, 2).unwrap();
    let mut names: Vec<String> = std::fs::read_dir(data.join("backups"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names.iter().all(|n| !n.starts_with("zlh-2020")),
        "the oldest went first: {names:?}"
    );
    for n in names {
        let conn = rusqlite::Connection::open(data.join("backups").join(n)).unwrap();
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(check, "ok");
    }
}
