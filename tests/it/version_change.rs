//! Version changes through the JSON API of a real `zlh serve` (local runtime, the
//! stand-in game): an upgrade that comes up keeps the world; one that never becomes
//! ready rolls back by itself to the old version with the world intact, and the
//! timeline says why. Downgrades need confirming.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::api::{Api, STANDIN, slp};
use crate::support::{wait_for, zlh};
use serde_json::{Value, json};

/// Imports `content` as the stand-in's `version` into the mirror.
fn add_version(api: &Api, tmp: &Path, version: &str, content: &str) {
    let file = tmp.join(format!("standin-{version}.py"));
    std::fs::write(&file, content).unwrap();
    let out = zlh(tmp)
        .args([
            "artifacts",
            "add",
            &format!("test/standin/{version}/server.jar"),
        ])
        .arg(&file)
        .arg("--data-dir")
        .arg(&api.served.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn game_dir(api: &Api, id: i64) -> PathBuf {
    let vmid = api.server(id)["vmid"].as_i64().unwrap();
    api.served
        .data_dir
        .join(format!("servers/{vmid}/agent/server"))
}

fn change(api: &Api, id: i64, body: Value) -> (u16, Value) {
    api.call("POST", &format!("/api/v1/servers/{id}/version"), Some(body))
}

fn wait_job(api: &Api, job: &Value) -> Value {
    wait_for(&format!("job {job}"), Duration::from_secs(180), || {
        let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
        matches!(
            j["job"]["state"].as_str(),
            Some("completed" | "discarded" | "cancelled")
        )
        .then(|| j["job"].clone())
    })
}

fn events(api: &Api, id: i64) -> String {
    let (code, body) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
    assert_eq!(code, 200);
    body.to_string()
}

#[test]
fn an_upgrade_keeps_the_world_and_a_version_that_never_gets_ready_rolls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let standin =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(STANDIN)).unwrap();
    // "2.0": the stand-in, announcing another version in its status.
    add_version(
        &api,
        tmp.path(),
        "2.0",
        &standin.replace("MC_VERSION = \"1.21.4\"", "MC_VERSION = \"2.0-standin\""),
    );
    // "9.9": starts, never answers a status ping, stops on `stop`.
    add_version(
        &api,
        tmp.path(),
        "9.9",
        "import sys, time\nprint('broken build: loading forever', flush=True)\n\
         for line in sys.stdin:\n    if line.strip() == 'stop':\n        sys.exit(0)\n\
         time.sleep(1e9)\n",
    );
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "upgrade", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    let server = api.wait_status(id, "running");
    let port = server["game_port"].as_i64().unwrap();
    assert_eq!(slp(port).unwrap()["version"]["name"], "1.21.4");
    let world = game_dir(&api, id).join("world");
    std::fs::write(world.join("marker.txt"), "built by players").unwrap();
    let level = std::fs::read(world.join("level.dat")).unwrap();

    // Bad requests name the field and queue nothing.
    for (body, field) in [
        (json!({"version": "1.0; rm -rf /"}), "version"),
        (
            json!({"version": "2.0", "loader_version": "0.16"}),
            "loader_version",
        ),
        (
            json!({"version": "2.0", "ready_deadline_secs": 1}),
            "ready_deadline_secs",
        ),
        (json!({"version": "0.9"}), "confirm_downgrade"),
        (json!({}), "version"),
    ] {
        let (code, out) = change(&api, id, body.clone());
        assert_eq!(code, 400, "{body}: {out}");
        assert_eq!(out["error"]["field"], field, "{body}: {out}");
    }
    let (code, out) = change(&api, id, json!({"version": "1.0"}));
    assert_eq!(code, 409, "already on 1.0: {out}");

    // The operator's motd survives the reinstall of an upgrade.
    let (code, out) = api.call(
        "PUT",
        &format!("/api/v1/servers/{id}/properties"),
        Some(json!({"motd": "Our world"})),
    );
    assert_eq!(code, 200, "{out}");

    // The upgrade: one job in the server's lane; the same request is the same job.
    let (code, out) = change(&api, id, json!({"version": "2.0"}));
    assert_eq!(code, 202, "{out}");
    assert_eq!(out["job"]["lane"], format!("server:{id}"));
    assert_eq!(out["warning"], Value::Null);
    let job = out["job"]["id"].clone();
    let (code, again) = change(&api, id, json!({"version": "2.0"}));
    if code == 202 {
        assert_eq!(again["job"]["id"], job, "the same change is one job");
    } else {
        assert_eq!(code, 409, "{again}");
    }
    let done = wait_job(&api, &job);
    assert_eq!(done["state"], "completed", "{done}");
    let server = api.wait_status(id, "running");
    assert_eq!(server["version"], "2.0");
    let status = slp(port).unwrap();
    assert_eq!(status["version"]["name"], "2.0-standin");
    assert_eq!(
        status["description"]["text"], "Our world",
        "the motd was kept"
    );
    assert_eq!(
        std::fs::read_to_string(world.join("marker.txt")).unwrap(),
        "built by players"
    );
    assert_eq!(std::fs::read(world.join("level.dat")).unwrap(), level);
    let ev = events(&api, id);
    assert!(ev.contains("version changed: 1.0 → 2.0"), "{ev}");
    let (_, backups) = api.call("GET", &format!("/api/v1/servers/{id}/backups"), None);
    let before = backups["backups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["note"] == "before upgrade to 2.0")
        .unwrap_or_else(|| panic!("no backup before the upgrade: {backups}"))
        .clone();
    assert_eq!(before["protected"], true, "{before}");
    assert_eq!(before["state"], "completed", "{before}");
    // The list shows the version the server runs.
    let (_, list) = api.call("GET", "/api/v1/servers", None);
    assert_eq!(list["servers"][0]["version"], "2.0");
    let (_, page) = support::ui_get(&api.served, "/servers");
    assert!(
        page.contains("standin 2.0"),
        "the list page shows the version"
    );

    // A version that never becomes ready: rolled back to 2.0, world intact.
    std::fs::write(world.join("marker.txt"), "built on 2.0").unwrap();
    let (code, out) = change(
        &api,
        id,
        json!({"version": "9.9", "ready_deadline_secs": 10}),
    );
    assert_eq!(code, 202, "{out}");
    let done = wait_job(&api, &out["job"]["id"]);
    assert_eq!(done["state"], "discarded", "the job says it failed: {done}");
    assert!(
        done["errors"].to_string().contains("rolled back to 2.0"),
        "{done}"
    );
    let server = api.wait_status(id, "running");
    assert_eq!(server["version"], "2.0", "{server}");
    assert!(
        server["status_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("rolled back"),
        "{server}"
    );
    assert_eq!(slp(port).unwrap()["version"]["name"], "2.0-standin");
    assert_eq!(
        std::fs::read_to_string(world.join("marker.txt")).unwrap(),
        "built on 2.0"
    );
    assert_eq!(std::fs::read(world.join("level.dat")).unwrap(), level);
    let ev = events(&api, id);
    assert!(ev.contains("version 9.9 did not become ready"), "{ev}");
    assert!(ev.contains("rolled back to 2.0"), "{ev}");

    // A confirmed downgrade is queued with its warning.
    let (code, out) = change(
        &api,
        id,
        json!({"version": "1.0", "confirm_downgrade": true}),
    );
    assert_eq!(code, 202, "{out}");
    assert!(
        out["warning"]
            .as_str()
            .unwrap_or_default()
            .contains("does not convert back"),
        "{out}"
    );
    let done = wait_job(&api, &out["job"]["id"]);
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(api.wait_status(id, "running")["version"], "1.0");

    // Another user's server: 404, nothing queued.
    let data = &api.served.data_dir;
    let run = |args: &[&str]| {
        let out = zlh(tmp.path())
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["user", "add", "bob"]);
    let bob = run(&["token", "create", "--user", "bob"]);
    let code = api.http.rt.block_on(async {
        api.http
            .inner
            .post(api.served.url(&format!("/api/v1/servers/{id}/version")))
            .bearer_auth(&bob)
            .json(&json!({"version": "2.0"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(code, 404);
    assert_eq!(api.server(id)["version"], "1.0");
}

#[test]
fn a_stopped_server_is_upgraded_and_left_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let standin =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(STANDIN)).unwrap();
    add_version(
        &api,
        tmp.path(),
        "1.1",
        &standin.replace("MC_VERSION = \"1.21.4\"", "MC_VERSION = \"1.1-standin\""),
    );
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "quiet", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    api.wait_status(id, "running");
    let (code, _) = api.call("POST", &format!("/api/v1/servers/{id}/stop"), None);
    assert_eq!(code, 202);
    api.wait_status(id, "stopped");
    let (code, out) = change(&api, id, json!({"version": "1.1"}));
    assert_eq!(code, 202, "{out}");
    let done = wait_job(&api, &out["job"]["id"]);
    assert_eq!(done["state"], "completed", "{done}");
    let server = api.wait_status(id, "stopped");
    assert_eq!(server["version"], "1.1");
    // It did come up once on 1.1 (ready is the proof), then went back to stopped.
    let starts =
        std::fs::read_to_string(game_dir(&api, id).join("world/standin-starts.log")).unwrap();
    assert_eq!(starts.lines().count(), 2, "{starts}");
    assert!(events(&api, id).contains("version changed: 1.0 → 1.1"));
}

/// `zlh serve` SIGKILLed while a version change waits for the new version: the next
/// start resumes the job with the backup the first run took (no second backup of the
/// half-changed server) and finishes it — here by rolling back, as the new version never
/// becomes ready — so nothing is left half-done.
#[test]
fn a_version_change_cut_short_by_sigkill_resumes_with_its_backup() {
    let tmp = tempfile::tempdir().unwrap();
    let mut api = Api::start(tmp.path());
    add_version(
        &api,
        tmp.path(),
        "9.9",
        "import sys, time\nprint('broken build: loading forever', flush=True)\n\
         for line in sys.stdin:\n    if line.strip() == 'stop':\n        sys.exit(0)\n\
         time.sleep(1e9)\n",
    );
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "cutshort", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    api.wait_status(id, "running");
    let world = game_dir(&api, id).join("world");
    std::fs::write(world.join("marker.txt"), "built on 1.0").unwrap();

    let (code, out) = change(
        &api,
        id,
        json!({"version": "9.9", "ready_deadline_secs": 15}),
    );
    assert_eq!(code, 202, "{out}");
    let job = out["job"]["id"].clone();
    // Killed while the new version is installed and waited for.
    wait_for(
        "the new version to be starting",
        Duration::from_secs(60),
        || {
            let s = api.server(id);
            (s["version"] == "9.9" && s["status"] == "starting").then_some(())
        },
    );
    api.served.keep_agents = true;
    api.served.signal_and_wait(libc::SIGKILL);
    let data = api.served.data_dir.clone();
    api.served = support::Served::start_with_env(
        tmp.path(),
        &data,
        &[],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );

    let done = wait_job(&api, &job);
    assert_eq!(done["state"], "discarded", "{done}");
    assert!(
        done["errors"].to_string().contains("rolled back to 1.0"),
        "{done}"
    );
    let server = api.wait_status(id, "running");
    assert_eq!(server["version"], "1.0", "{server}");
    assert_eq!(
        std::fs::read_to_string(world.join("marker.txt")).unwrap(),
        "built on 1.0"
    );
    let ev = events(&api, id);
    assert!(ev.contains("resuming with world backup"), "{ev}");
    let (_, backups) = api.call("GET", &format!("/api/v1/servers/{id}/backups"), None);
    let taken = backups["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["note"] == "before upgrade to 9.9")
        .count();
    assert_eq!(taken, 1, "one backup, reused by the resumed run: {backups}");
}
