//! `zlh doctor` finds every planted problem class in a real database and simulator,
//! says nothing on a healthy system, and `--fix` repairs only what is safe.

use crate::support;

use std::time::Duration;

use crate::support::api::Api;
use crate::support::pve_sim::PveSim;
use crate::support::velocity_sim::VelocitySim;
use crate::support::{Served, open_db, wait_for, zlh};
use serde_json::{Value, json};

const SECRET: &str = "bridge-shared-secret";

fn doctor(
    tmp: &std::path::Path,
    data: &std::path::Path,
    env: &[(String, String)],
    args: &[&str],
) -> (bool, Value) {
    let out = zlh(tmp)
        .arg("doctor")
        .args(args)
        .arg("--json")
        .arg("--data-dir")
        .arg(data)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.success(), report)
}

fn problems(report: &Value) -> Vec<(String, String)> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["verdict"] == "problem")
        .map(|f| {
            (
                f["check"].as_str().unwrap().to_string(),
                f["subject"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn doctor_finds_each_planted_problem_and_fixes_only_the_safe_ones() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = PveSim::start();
    let velocity = VelocitySim::start(SECRET);
    let env: Vec<(String, String)> = vec![
        ("ZLH_ARTIFACTS_UPSTREAM".into(), "false".into()),
        ("ZLH_EDGE_VELOCITY_URL".into(), velocity.url()),
        ("ZLH_EDGE_VELOCITY_SECRET".into(), SECRET.into()),
        ("ZLH_EDGE_VELOCITY_EDGE_IP".into(), "203.0.113.7".into()),
        (
            "ZLH_EDGE_VELOCITY_SRV_TARGET".into(),
            "play.example.com".into(),
        ),
    ];
    let env_ref: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let data = tmp.path().join("data");
    let served = Served::start_with_env(tmp.path(), &data, &[], &env_ref);
    let mut api = Api::start_on(tmp.path(), served);
    let mut t = support::api::standin_template();
    t["slug"] = json!("standin-mc");
    t["spec"]["edge"] = json!("velocity");
    assert_eq!(api.call("POST", "/api/v1/templates", Some(t)).0, 201);
    let (code, _) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(
            json!({"name": "pve", "kind": "proxmox", "memory_mb": 100000,
                    "settings": serde_json::to_value(sim.proxmox_config()).unwrap()}),
        ),
    );
    assert_eq!(code, 201);
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "good", "template": "standin-mc", "version": "1.0", "eula": true, "node": "pve"})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    api.wait_status(id, "running");
    wait_for("registered", Duration::from_secs(20), || {
        (velocity.registrations().len() == 1).then_some(())
    });
    let (code, report) = api.call("GET", "/api/v1/doctor", None);
    assert_eq!(code, 200);
    assert_eq!(report["ok"], true, "{report}");
    // The doctor runs against the database and the world; stop the server first so
    // its reconciler cannot repair what we plant.
    assert!(api.served.signal_and_wait(libc::SIGTERM).success());
    api.served.keep_agents = true;

    let (ok, report) = doctor(tmp.path(), &data, &env, &["--server", &id.to_string()]);
    assert!(ok, "a healthy system: {report}");
    assert!(problems(&report).is_empty());
    assert_eq!(report["server"]["rows_with_name"], 1);
    assert_eq!(report["server"]["provision_jobs"], 1);
    assert_eq!(report["server"]["containers"], json!([5000]));
    assert_eq!(
        report["server"]["installs"], 1,
        "1 row / 1 job / 1 container / 1 install"
    );

    // Plant one of each.
    sim.add_foreign(
        5100,
        &format!("zlh server {id} (good)"),
        &format!("zlh;srv-{id}"),
    ); // duplicate
    sim.add_foreign(5101, "zlh server 99 (ghost)", "zlh;srv-99"); // orphan
    let conn = open_db(&data);
    let copy = |name: &str, vmid: i64, status: &str, checkpoints: &str, deadline: Option<i64>| {
        conn.execute(
            "INSERT INTO servers (name, owner_id, template_id, version, node_id, vmid, game_port, agent_port,
               memory_mb, cores, eula_accepted, agent_token, install_id, status, status_deadline, checkpoints,
               created_at, updated_at)
             SELECT ?1, owner_id, template_id, version, node_id, ?2, game_port, agent_port, memory_mb, cores,
               eula_accepted, 'x', 'y', ?3, ?5, ?4, created_at, updated_at FROM servers WHERE id = ?6",
            rusqlite::params![name, vmid, status, checkpoints, deadline, id],
        )
        .unwrap();
    };
    copy(
        "lost",
        5200,
        "stopped",
        r#"{"container":{"vmid":5200}}"#,
        None,
    ); // container gone
    copy("stuck", 5201, "provisioning", "{}", Some(1)); // stuck, no job
    conn.execute(
        "INSERT INTO jobs (kind, state, attempt, max_attempts, run_at, lock_by, lease_until, created_at)
         VALUES ('noop', 'running', 1, 5, 1, '999:w0', 1, 1)",
        [],
    )
    .unwrap(); // expired lease
    velocity.restart(); // registration missing
    velocity.plant("lost", "127.0.0.1", 25565); // registered while not running
    velocity.plant("someone-elses", "10.0.0.9", 25565); // not zlh's: left alone

    let (ok, report) = doctor(tmp.path(), &data, &env, &["--server", &id.to_string()]);
    assert!(!ok, "problems make the exit code non-zero");
    let found = problems(&report);
    let has =
        |check: &str, subject: &str| found.iter().any(|(c, s)| c == check && s.contains(subject));
    assert!(has("duplicates", &format!("server {id}")), "{found:?}");
    assert!(has("orphans", "CT 5101"), "{found:?}");
    assert!(has("orphans", "(lost)"), "{found:?}");
    assert!(has("stuck", "(stuck)"), "{found:?}");
    assert!(has("stuck", "(noop)"), "{found:?}");
    assert!(has("drift", "velocity good"), "{found:?}");
    assert!(has("drift", "velocity lost"), "{found:?}");
    assert!(!has("drift", "someone-elses"), "{found:?}");
    assert!(
        has("server", &format!("server {id}")),
        "two containers for one server: {found:?}"
    );

    // --fix: the safe repairs only.
    let (ok, report) = doctor(tmp.path(), &data, &env, &["--fix"]);
    assert!(!ok, "duplicates and orphans remain for an operator");
    let fixed = report["fixed"].to_string();
    assert!(fixed.contains("stuck server"), "{fixed}");
    assert!(fixed.contains("lease had expired"), "{fixed}");
    assert!(fixed.contains("Velocity again"), "{fixed}");
    assert!(fixed.contains("whose game is not ready"), "{fixed}");
    let names: Vec<String> = velocity
        .registrations()
        .into_iter()
        .map(|r| r.server_name)
        .collect();
    assert_eq!(names, vec!["good", "someone-elses"]);
    let stuck: String = conn
        .query_row("SELECT status FROM servers WHERE name = 'stuck'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(stuck, "failed");
    assert!(
        sim.exists(5101) && sim.exists(5100),
        "worlds are left alone without --delete-orphans"
    );
    let left = problems(&report);
    assert!(
        !left.iter().any(|(c, _)| c == "stuck" || c == "drift"),
        "{left:?}"
    );

    // The doctor's page in the admin UI shows what is left, with what to do.
    let mut served = Served::start_with_env(tmp.path(), &data, &[], &env_ref);
    let (code, page) = support::ui_get(&served, &format!("/doctor?server={id}"));
    assert_eq!(code, 200, "{page}");
    assert!(page.contains("Problems found"), "{page}");
    assert!(page.contains("CT 5101"), "the orphan is listed: {page}");
    assert!(page.contains("verdict-problem"), "{page}");
    assert!(
        page.contains("Containers with its tag"),
        "the 1/1/1 check: {page}"
    );
    assert!(served.signal_and_wait(libc::SIGTERM).success());
    served.keep_agents = true;

    // Only an explicit --delete-orphans destroys a container nobody owns.
    let (_, report) = doctor(tmp.path(), &data, &env, &["--fix", "--delete-orphans"]);
    assert!(
        report["fixed"]
            .to_string()
            .contains("destroyed orphan node pve CT 5101"),
        "{report}"
    );
    assert!(!sim.exists(5101));
    assert!(
        sim.exists(5100),
        "a duplicate of a live server is not an orphan"
    );
    assert!(sim.exists(5000));
}
