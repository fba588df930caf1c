//! Provisioning on a Proxmox node (the simulator, with a real `zlh agent` in each
//! container) through the JSON API of a real `zlh serve`: exactly one of everything,
//! locks, failed tasks, retry, and SIGKILL of `zlh serve` inside each step.

use crate::support;

use std::path::Path;
use std::time::Duration;

use crate::support::api::Api;
use crate::support::pve_sim::PveSim;
use crate::support::{Served, wait_for};
use serde_json::{Value, json};

const FIRST_VMID: i64 = 5000;

fn setup(tmp: &Path) -> (Api, PveSim) {
    let sim = PveSim::start();
    let api = Api::start(tmp);
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(json!({
            "name": "pve",
            "kind": "proxmox",
            "memory_mb": 1_000_000,
            "settings": serde_json::to_value(sim.proxmox_config()).unwrap(),
        })),
    );
    assert_eq!(code, 201, "{body}");
    assert_eq!(
        body["node"]["settings"]["token_secret"], "********",
        "secrets stay in"
    );
    (api, sim)
}

fn create(api: &Api, name: &str) -> i64 {
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": name, "template": "standin", "version": "1.0", "eula": true, "node": "pve"})),
    );
    assert_eq!(code, 202, "{body}");
    body["server"]["id"].as_i64().unwrap()
}

/// Containers of the simulator in the game VMID range.
fn containers(sim: &PveSim) -> Vec<i64> {
    (FIRST_VMID..FIRST_VMID + 50)
        .filter(|v| sim.exists(*v))
        .collect()
}

fn installs(sim: &PveSim, vmid: i64) -> i64 {
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(sim.ct_dir(vmid).join("agent-state.json")).unwrap_or_default(),
    )
    .unwrap_or(Value::Null);
    state["install_count"].as_i64().unwrap_or(0)
}

fn count(api: &Api, sql: &str) -> i64 {
    support::open_db(&api.served.data_dir)
        .query_row(sql, [], |r| r.get(0))
        .unwrap()
}

/// The "1 / 1 / 1 / 1" check: one server row, one provisioning job, one clone, one install.
fn assert_exactly_one(api: &Api, sim: &PveSim, id: i64) {
    let s = api.server(id);
    let vmid = s["vmid"].as_i64().unwrap();
    assert_eq!(
        count(api, "SELECT count(*) FROM servers"),
        1,
        "one server row"
    );
    assert_eq!(
        count(
            api,
            "SELECT count(*) FROM jobs WHERE kind = 'server.provision'"
        ),
        1,
        "one provisioning job"
    );
    assert_eq!(sim.clones(vmid), 1, "one clone");
    assert_eq!(containers(sim), vec![vmid], "one container");
    assert_eq!(installs(sim, vmid), 1, "one install at the agent");
    let tags = sim.config(vmid).unwrap()["tags"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(tags.contains(&format!("srv-{id}")), "{tags}");
}

#[test]
fn one_controlled_creation_is_one_row_one_job_one_clone_one_install() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, sim) = setup(tmp.path());
    let id = create(&api, "alpha");
    let s = api.wait_status(id, "running");
    assert_eq!(s["vmid"], FIRST_VMID);
    let ip = s["ip"].as_str().unwrap().to_string();
    assert_eq!(Some(ip.parse().unwrap()), sim.ct_ip(FIRST_VMID));
    assert_exactly_one(&api, &sim, id);
    // The game answers on the container's own address.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let status = rt
        .block_on(zlh::agent::slp::status(
            format!("{ip}:25565").parse().unwrap(),
            Duration::from_secs(3),
        ))
        .unwrap();
    assert_eq!(status["description"]["text"], "alpha");

    // Delete removes the container; "already gone" on a second delete is fine.
    let (code, _) = api.call("DELETE", &format!("/api/v1/servers/{id}"), None);
    assert_eq!(code, 202);
    api.wait_status(id, "deleted");
    assert!(containers(&sim).is_empty());
}

#[test]
fn a_locked_container_on_start_is_retried_until_running() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, sim) = setup(tmp.path());
    // The first start task ends the way PVE ends it while a backup holds the lock.
    sim.fail_next_task("vzstart", "CT is locked (backup)");
    let id = create(&api, "locked");
    api.wait_status(id, "running");
    assert!(sim.tasks("vzstart") >= 2, "the start was retried");
    assert_exactly_one(&api, &sim, id);
}

#[test]
fn a_failed_clone_fails_the_server_with_the_reason_and_retry_gets_it_running() {
    let tmp = tempfile::tempdir().unwrap();
    let (api, sim) = setup(tmp.path());
    sim.fail_next_task("vzclone", "clone failed: storage 'zlh-thin' is full");
    let id = create(&api, "unlucky");
    let failed = api.wait_status(id, "failed");
    assert_eq!(failed["failed_step"], "container");
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(reason.contains("storage 'zlh-thin' is full"), "{reason}");
    let (code, body) = api.call("POST", &format!("/api/v1/servers/{id}/retry"), None);
    assert_eq!(code, 202, "{body}");
    api.wait_leaves(id, "failed");
    api.wait_status(id, "running");
    assert_eq!(containers(&sim), vec![FIRST_VMID], "one container");
    assert_eq!(installs(&sim, FIRST_VMID), 1);
    let (_, events) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
    let text = events.to_string();
    assert!(text.contains("retry requested"), "{text}");
}

/// Where `zlh serve` is killed.
enum KillPoint {
    /// While the clone task runs (held open by the simulator).
    Clone,
    /// While the start task runs.
    Start,
    /// The moment the agent has received its install (`/config` answered), whether
    /// or not the job recorded that yet.
    AgentConfigured,
    /// As soon as the server is `starting` (waiting for ready).
    Starting,
}

fn sigkill_inside(point: KillPoint) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut api, sim) = setup(tmp.path());
    let held = match point {
        KillPoint::Clone => Some("vzclone"),
        KillPoint::Start => Some("vzstart"),
        _ => None,
    };
    if let Some(kind) = held {
        sim.hold_tasks(kind);
    }
    let id = create(&api, "phoenix");
    match (&point, held) {
        (_, Some(kind)) => wait_for("the task to be held open", Duration::from_secs(30), || {
            (sim.tasks(kind) >= 1).then_some(())
        }),
        (KillPoint::AgentConfigured, _) => wait_for(
            "the agent to get its install",
            Duration::from_secs(60),
            || {
                sim.ct_dir(FIRST_VMID)
                    .join("payload.json")
                    .exists()
                    .then_some(())
            },
        ),
        _ => {
            api.wait_status(id, "starting");
        }
    }
    let status = api.served.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    let data = api.served.data_dir.clone();
    api.served = Served::start_with_env(
        tmp.path(),
        &data,
        &[],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );
    if let Some(kind) = held {
        sim.release_tasks(kind);
    }
    let s = api.wait_status(id, "running");
    assert_eq!(s["status"], "running");
    assert_exactly_one(&api, &sim, id);
    let rescued = count(
        &api,
        "SELECT value FROM counters WHERE name = 'jobs_rescued'",
    );
    assert!(
        rescued >= 1,
        "the provisioning job was rescued at the restart"
    );
}

#[test]
fn sigkill_during_the_clone_resumes_to_one_container() {
    sigkill_inside(KillPoint::Clone);
}

#[test]
fn sigkill_during_the_container_start_resumes() {
    sigkill_inside(KillPoint::Start);
}

#[test]
fn sigkill_once_the_agent_has_its_install_resumes_without_a_second_install() {
    sigkill_inside(KillPoint::AgentConfigured);
}

#[test]
fn sigkill_while_starting_resumes_to_running() {
    sigkill_inside(KillPoint::Starting);
}
