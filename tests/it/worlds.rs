//! World backups, restores, retention and schedules through the JSON API of a real
//! `zlh serve`: the local runtime with the stand-in game, a Proxmox node (the
//! simulator, a real `zlh agent` per container), and schedules across a restart.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::api::{Api, slp};
use crate::support::pve_sim::PveSim;
use crate::support::{Served, wait_for};
use serde_json::{Value, json};

fn create(api: &Api, name: &str, node: Option<&str>) -> i64 {
    let mut body = json!({"name": name, "template": "standin", "version": "1.0", "eula": true});
    if let Some(n) = node {
        body["node"] = json!(n);
    }
    let (code, body) = api.call("POST", "/api/v1/servers", Some(body));
    assert_eq!(code, 202, "{body}");
    body["server"]["id"].as_i64().unwrap()
}

fn backup(api: &Api, id: i64) -> Value {
    let (code, body) = api.call("GET", &format!("/api/v1/backups/{id}"), None);
    assert_eq!(code, 200, "{body}");
    body["backup"].clone()
}

/// Requests a backup of server `sid` and returns its id.
fn request_backup(api: &Api, sid: i64, note: &str) -> i64 {
    let (code, body) = api.call(
        "POST",
        &format!("/api/v1/servers/{sid}/backups"),
        Some(json!({"note": note})),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["backup"]["state"], "pending");
    assert_eq!(body["job"]["lane"], format!("server:{sid}"));
    body["backup"]["id"].as_i64().unwrap()
}

fn wait_backup(api: &Api, id: i64, want: &str) -> Value {
    wait_for(
        &format!("backup {id} to be {want}"),
        Duration::from_secs(60),
        || {
            let b = backup(api, id);
            if b["state"] == "failed" && want != "failed" {
                panic!("backup failed: {b}");
            }
            (b["state"] == want).then_some(b)
        },
    )
}

fn job(api: &Api, id: i64) -> Value {
    let (code, body) = api.call("GET", &format!("/api/v1/jobs/{id}"), None);
    assert_eq!(code, 200, "{body}");
    body["job"].clone()
}

/// Waits until job `id` is finished; returns its state.
fn wait_job(api: &Api, id: i64) -> Value {
    wait_for(
        &format!("job {id} to finish"),
        Duration::from_secs(90),
        || {
            let j = job(api, id);
            matches!(
                j["state"].as_str(),
                Some("completed" | "discarded" | "cancelled")
            )
            .then_some(j)
        },
    )
}

fn restore(api: &Api, backup: i64, body: Value) -> Value {
    let (code, out) = api.call(
        "POST",
        &format!("/api/v1/backups/{backup}/restore"),
        Some(body),
    );
    assert_eq!(code, 202, "{out}");
    out
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// One file out of a gzipped tar archive.
fn from_archive(archive: &str, member: &str) -> Vec<u8> {
    let out = std::process::Command::new("tar")
        .args(["-xzOf", archive, member])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{member}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The commands the stand-in logged (`save-off`, `save-all flush`, `save-on`), in order.
fn commands(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|l| l.split_once(' ').map(|(_, c)| c.to_string()))
        .collect()
}

fn events(api: &Api, sid: i64) -> Vec<String> {
    let (_, body) = api.call("GET", &format!("/api/v1/servers/{sid}/events"), None);
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[test]
fn local_backup_pauses_saving_restore_brings_the_world_back_and_a_clone_is_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let sid = create(&api, "alpha", None);
    let s = api.wait_status(sid, "running");
    let port = s["game_port"].as_i64().unwrap();
    let vmid = s["vmid"].as_i64().unwrap();
    let data = api.served.data_dir.clone();
    let world = data.join(format!("servers/{vmid}/agent/server/world"));
    std::fs::write(world.join("marker.txt"), "v1").unwrap();

    // Back up the running game.
    let b1 = request_backup(&api, sid, "before the change");
    let b = wait_backup(&api, b1, "completed");
    let archive = b["location"].as_str().unwrap().to_string();
    assert_eq!(
        PathBuf::from(&archive),
        std::path::absolute(&data)
            .unwrap()
            .join(format!("world-backups/{sid}/{b1}.tar.gz"))
    );
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(b["sha256"], sha256_hex(&bytes), "the recorded checksum");
    assert_eq!(b["size_bytes"], bytes.len() as i64);
    assert_eq!(b["note"], "before the change");
    assert_eq!(b["kind"], "local");
    assert!(
        !std::fs::read_dir(data.join(format!("world-backups/{sid}")))
            .unwrap()
            .any(|e| e.unwrap().file_name().to_string_lossy().ends_with(".tmp")),
        "no temp file left"
    );
    // The game got save-off and save-all flush before the copy (the copy has them) …
    let copied = commands(
        &String::from_utf8(from_archive(&archive, "./world/standin-commands.log")).unwrap(),
    );
    assert_eq!(copied, vec!["save-off", "save-all flush"], "in the copy");
    assert_eq!(from_archive(&archive, "./world/marker.txt"), b"v1");
    // … and save-on after it.
    let live = commands(&read(&world.join("standin-commands.log")));
    assert_eq!(live, vec!["save-off", "save-all flush", "save-on"]);
    let (code, listed) = api.call("GET", &format!("/api/v1/servers/{sid}/backups"), None);
    assert_eq!(code, 200);
    assert_eq!(listed["backups"][0]["id"], b1);

    // Change the world.
    std::fs::write(world.join("marker.txt"), "v2").unwrap();

    // A damaged archive: the restore is refused, the world untouched, the game running.
    let good = bytes.clone();
    let mut bad = bytes.clone();
    let n = bad.len();
    bad[n / 2] ^= 0xff;
    std::fs::write(&archive, &bad).unwrap();
    let out = restore(&api, b1, json!({}));
    let failed = wait_job(&api, out["job"]["id"].as_i64().unwrap());
    assert_eq!(failed["state"], "discarded", "{failed}");
    assert!(
        failed["errors"]
            .to_string()
            .contains("does not match its checksum"),
        "{failed}"
    );
    assert_eq!(read(&world.join("marker.txt")), "v2", "world untouched");
    assert_eq!(api.server(sid)["status"], "running");
    assert!(slp(port).is_some(), "the game kept running");
    std::fs::write(&archive, &good).unwrap();

    // Restore into the same server: stopped, restored, started, ready.
    let out = restore(&api, b1, json!({}));
    assert_eq!(out["cloned"], false);
    let done = wait_job(&api, out["job"]["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    assert_eq!(read(&world.join("marker.txt")), "v1", "the world is back");
    let s = api.server(sid);
    assert_eq!(s["status"], "running");
    assert_eq!(s["ready"], true);
    assert!(slp(port).is_some());
    // The copy's one start, then one more on the restored world.
    assert_eq!(read(&world.join("standin-starts.log")).lines().count(), 2);
    let ev = events(&api, sid);
    assert!(
        ev.iter()
            .any(|e| e == &format!("world restored from backup {b1}")),
        "{ev:?}"
    );
    let game_dir = world.parent().unwrap();
    assert!(
        !game_dir
            .with_file_name(format!("server.before-restore-{b1}"))
            .exists()
    );
    assert!(
        !game_dir
            .with_file_name(format!("server.restore-{b1}"))
            .exists()
    );

    // Restore into a new server: a clone with the same world.
    let out = restore(&api, b1, json!({"new_server": "beta"}));
    assert_eq!(out["cloned"], true);
    let cid = out["server_id"].as_i64().unwrap();
    assert_eq!(out["job"]["kind"], "server.provision");
    let c = api.wait_status(cid, "running");
    assert_eq!(c["name"], "beta");
    assert_eq!(c["template"], "standin");
    assert!(c["checkpoints"]["seeded"].is_object(), "{c}");
    let cworld = data.join(format!("servers/{}/agent/server/world", c["vmid"]));
    assert_eq!(read(&cworld.join("marker.txt")), "v1");
    assert_eq!(
        std::fs::read(cworld.join("level.dat")).unwrap(),
        from_archive(&archive, "./world/level.dat"),
        "identical world"
    );
    assert_eq!(
        std::fs::read(cworld.join("level.dat")).unwrap(),
        std::fs::read(world.join("level.dat")).unwrap()
    );
    // The clone's game was first started on the seeded world: one start only.
    assert_eq!(read(&cworld.join("standin-starts.log")).lines().count(), 2);
    let conn = support::open_db(&data);
    let provisions: i64 = conn
        .query_row(
            "SELECT count(*) FROM jobs WHERE kind = 'server.provision' AND payload LIKE ?1",
            [format!("%\"server_id\":{cid}%")],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(provisions, 1, "one provisioning job for the clone");
    let slp_c = slp(c["game_port"].as_i64().unwrap()).unwrap();
    assert_eq!(slp_c["description"]["text"], "beta", "its own properties");

    // Bad input names the field.
    let (code, body) = api.call(
        "POST",
        &format!("/api/v1/backups/{b1}/restore"),
        Some(json!({"new_server": "Not A Label"})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "new_server");
    let (code, body) = api.call(
        "PUT",
        &format!("/api/v1/servers/{sid}/backups/retention"),
        Some(json!({"keep_last": -1, "keep_daily": 0})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "keep_last");

    // Retention: keep the last 1; protected backups are never pruned.
    let (code, _) = api.call("POST", &format!("/api/v1/backups/{b1}/protect"), None);
    assert_eq!(code, 200);
    let (code, body) = api.call(
        "PUT",
        &format!("/api/v1/servers/{sid}/backups/retention"),
        Some(json!({"keep_last": 1, "keep_daily": 0})),
    );
    assert_eq!(code, 200, "{body}");
    let b2 = request_backup(&api, sid, "second");
    wait_backup(&api, b2, "completed");
    let b3 = request_backup(&api, sid, "third");
    wait_backup(&api, b3, "completed");
    let b2_row = wait_backup(&api, b2, "deleted");
    assert!(!Path::new(b2_row["location"].as_str().unwrap()).exists());
    let (_, listed) = api.call("GET", &format!("/api/v1/servers/{sid}/backups"), None);
    let kept: Vec<i64> = listed["backups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["id"].as_i64().unwrap())
        .collect();
    assert_eq!(kept, vec![b3, b1], "the newest and the protected one");
    assert!(Path::new(&archive).exists());
    // A protected backup cannot be deleted; unprotected, it can.
    let (code, body) = api.call("DELETE", &format!("/api/v1/backups/{b1}"), None);
    assert_eq!(code, 409, "{body}");
    let (code, _) = api.call("POST", &format!("/api/v1/backups/{b1}/unprotect"), None);
    assert_eq!(code, 200);
    let (code, body) = api.call("DELETE", &format!("/api/v1/backups/{b1}"), None);
    assert_eq!(code, 202, "{body}");
    wait_backup(&api, b1, "deleted");
    assert!(!Path::new(&archive).exists());

    // The CLI lists the same rows.
    let out = support::zlh(tmp.path())
        .args(["backups", "list", "alpha", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("third") && !text.contains("second"), "{text}");
}

/// Adds the simulator as node `pve` and a running server `name` on it, its world holding
/// `marker.txt` = "v1": (id, server, world dir).
fn running_on_proxmox(api: &Api, sim: &PveSim, name: &str) -> (i64, Value, PathBuf) {
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(json!({
            "name": "pve", "kind": "proxmox", "memory_mb": 1_000_000,
            "settings": serde_json::to_value(sim.proxmox_config()).unwrap(),
        })),
    );
    assert_eq!(code, 201, "{body}");
    let sid = create(api, name, Some("pve"));
    let s = api.wait_status(sid, "running");
    let world = sim.ct_dir(s["vmid"].as_i64().unwrap()).join("server/world");
    std::fs::write(world.join("marker.txt"), "v1").unwrap();
    (sid, s, world)
}

#[test]
fn proxmox_vzdump_and_restore_tasks_and_a_failed_task() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = PveSim::start();
    let api = Api::start(tmp.path());
    let (sid, s, world) = running_on_proxmox(&api, &sim, "gamma");
    let vmid = s["vmid"].as_i64().unwrap();

    // vzdump with the right parameters; the volume id is recorded. While the task
    // runs, the container holds the `backup` lock.
    sim.hold_tasks("vzdump");
    let b1 = request_backup(&api, sid, "");
    wait_for("the backup lock", Duration::from_secs(30), || {
        (sim.config(vmid)?.get("lock")? == "backup").then_some(())
    });
    sim.release_tasks("vzdump");
    let b = wait_backup(&api, b1, "completed");
    let calls = sim.vzdump_calls();
    assert_eq!(calls.len(), 1);
    let c = &calls[0];
    assert_eq!(c["vmid"], vmid.to_string());
    assert_eq!(c["storage"], "pbs");
    assert_eq!(c["mode"], "snapshot");
    assert_eq!(c["remove"], "0");
    assert!(
        c["notes-template"].contains(&format!("zlh backup {b1}")),
        "{c:?}"
    );
    assert_eq!(b["kind"], "proxmox");
    assert_eq!(b["storage"], "pbs");
    let volid = b["location"].as_str().unwrap().to_string();
    assert!(
        volid.starts_with(&format!("pbs:backup/ct/{vmid}/")),
        "{volid}"
    );
    assert_eq!(sim.backup_volumes("pbs"), vec![volid.clone()]);
    assert!(sim.config(vmid).unwrap().get("lock").is_none());
    let cmds = commands(&read(&world.join("standin-commands.log")));
    assert_eq!(cmds, vec!["save-off", "save-all flush", "save-on"]);

    // A failed vzdump task: a failed row with the task's exit status; still running.
    sim.fail_next_task("vzdump", "backup failed: storage 'pbs' is not online");
    let b2 = request_backup(&api, sid, "");
    let failed = wait_backup(&api, b2, "failed");
    assert!(
        failed["error"]
            .as_str()
            .unwrap()
            .contains("backup failed: storage 'pbs' is not online"),
        "{failed}"
    );
    let s = api.server(sid);
    assert_eq!(s["status"], "running");
    assert!(
        commands(&read(&world.join("standin-commands.log"))).ends_with(&[
            "save-off".to_string(),
            "save-all flush".to_string(),
            "save-on".to_string()
        ]),
        "saving resumed after the failed copy"
    );

    // Restore in place: stop, restore task with the right parameters, start, ready.
    std::fs::write(world.join("marker.txt"), "v2").unwrap();
    let out = restore(&api, b1, json!({}));
    let done = wait_job(&api, out["job"]["id"].as_i64().unwrap());
    assert_eq!(done["state"], "completed", "{done}");
    let calls = sim.restore_calls();
    assert_eq!(calls.len(), 1);
    let r = &calls[0];
    assert_eq!(r["vmid"], vmid.to_string());
    assert_eq!(r["ostemplate"], volid);
    assert_eq!(r["restore"], "1");
    assert_eq!(r["force"], "1");
    assert_eq!(r["unique"], "0");
    assert_eq!(r["storage"], "local-lvm", "the disks stay on their storage");
    assert_eq!(read(&world.join("marker.txt")), "v1", "the world is back");
    let s = api.wait_status(sid, "running");
    assert_eq!(s["ready"], true);

    // A failed restore task leaves the container as it was and the server running.
    std::fs::write(world.join("marker.txt"), "v3").unwrap();
    sim.fail_next_task("vzrestore", "unable to restore CT: no space left on device");
    let out = restore(&api, b1, json!({}));
    let failed = wait_job(&api, out["job"]["id"].as_i64().unwrap());
    assert_eq!(failed["state"], "discarded", "{failed}");
    assert!(
        failed["errors"].to_string().contains("no space left"),
        "{failed}"
    );
    assert_eq!(read(&world.join("marker.txt")), "v3");
    let s = api.wait_status(sid, "running");
    assert_eq!(s["ready"], true);

    // A restore task that fails after PVE removed the old volumes: the world is put
    // back from the safety copy taken before every in-place restore.
    std::fs::write(world.join("marker.txt"), "v4").unwrap();
    let dumps_before = sim.vzdump_calls().len();
    sim.fail_next_restore_after_wipe("unable to restore CT: broken pipe");
    let out = restore(&api, b1, json!({}));
    let failed = wait_job(&api, out["job"]["id"].as_i64().unwrap());
    assert_eq!(failed["state"], "discarded", "{failed}");
    let errors = failed["errors"].to_string();
    assert!(
        errors.contains("broken pipe") && errors.contains("safety copy"),
        "{failed}"
    );
    assert_eq!(
        sim.vzdump_calls().len(),
        dumps_before + 1,
        "one safety copy"
    );
    assert_eq!(
        read(&world.join("marker.txt")),
        "v4",
        "the world as it was is back"
    );
    let s = api.wait_status(sid, "running");
    assert_eq!(s["ready"], true);
    let (_, list) = api.call("GET", &format!("/api/v1/servers/{sid}/backups"), None);
    let safety: Vec<&Value> = list["backups"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| {
            b["note"]
                .as_str()
                .unwrap_or("")
                .starts_with("automatic copy")
        })
        .collect();
    assert!(!safety.is_empty(), "{list}");
    assert!(
        safety
            .iter()
            .all(|b| b["protected"] == true && b["state"] == "completed"),
        "{list}"
    );

    // Deleting the backup removes the volume.
    let (code, _) = api.call("DELETE", &format!("/api/v1/backups/{b1}"), None);
    assert_eq!(code, 202);
    wait_backup(&api, b1, "deleted");
    assert!(
        !sim.backup_volumes("pbs").contains(&volid),
        "its volume is gone"
    );
}

/// Containers in the game VMID range whose tags name server `sid`.
fn containers_of(sim: &PveSim, sid: i64) -> Vec<i64> {
    (5000..5100)
        .filter(|v| {
            sim.config(*v).is_some_and(|c| {
                c.get("tags")
                    .and_then(Value::as_str)
                    .is_some_and(|t| t.split(';').any(|t| t == format!("srv-{sid}")))
            })
        })
        .collect()
}

fn agent_status_code(sim: &PveSim, vmid: i64, token: &str) -> u16 {
    let ip = sim.ct_ip(vmid).unwrap();
    support::http_get_with_bearer(&format!("http://{ip}:18888/status"), token)
}

fn token_of(data: &Path, sid: i64) -> String {
    let sealed: String = support::open_db(data)
        .query_row(
            "SELECT agent_token FROM servers WHERE id = ?1",
            [sid],
            |r| r.get(0),
        )
        .unwrap();
    // Sealed at rest under the data dir's key.
    zlh::db::secret::load(data).unwrap();
    zlh::db::secret::open(&sealed).unwrap()
}

fn count_sql(data: &Path, sql: &str, sid: i64) -> i64 {
    support::open_db(data)
        .query_row(sql, [sid], |r| r.get(0))
        .unwrap()
}

/// One server row, one provisioning job, one container (restored, never cloned) for
/// the clone `cid`, and exactly one restore request into its VMID.
fn assert_one_restored(sim: &PveSim, data: &Path, cid: i64, vmid: i64, volid: &str) {
    assert_eq!(
        count_sql(data, "SELECT count(*) FROM servers WHERE id = ?1", cid),
        1
    );
    assert_eq!(
        count_sql(
            data,
            "SELECT count(*) FROM jobs WHERE kind = 'server.provision' \
             AND json_extract(payload, '$.server_id') = ?1",
            cid
        ),
        1,
        "one provisioning job"
    );
    assert_eq!(containers_of(sim, cid), vec![vmid], "one container");
    assert_eq!(sim.clones(vmid), 0, "no clone of the base template");
    let restores: Vec<_> = sim
        .restore_calls()
        .into_iter()
        .filter(|r| r["vmid"] == vmid.to_string())
        .collect();
    assert_eq!(restores.len(), 1, "one restore: {restores:?}");
    let r = &restores[0];
    assert_eq!(r["ostemplate"], volid);
    assert_eq!(r["restore"], "1");
    assert_eq!(r["unique"], "1");
    assert_eq!(r["force"], "0");
    assert_eq!(r["storage"], "local-lvm", "the source's rootfs storage");
    assert!(
        r["description"].starts_with(&format!("zlh server {cid} ")),
        "{r:?}"
    );
}

#[test]
fn proxmox_backup_restored_into_a_new_server_is_a_clone_with_the_same_world() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = PveSim::start();
    let mut api = Api::start(tmp.path());
    let data = api.served.data_dir.clone();
    let (sid, s, world) = running_on_proxmox(&api, &sim, "origin");
    let vmid = s["vmid"].as_i64().unwrap();
    let b1 = request_backup(&api, sid, "");
    let volid = wait_backup(&api, b1, "completed")["location"]
        .as_str()
        .unwrap()
        .to_string();
    let level = std::fs::read(world.join("level.dat")).unwrap();
    let source_mac = sim.config(vmid).unwrap()["net0"]
        .as_str()
        .unwrap()
        .to_string();

    // One request: one new server and its provisioning job.
    let out = restore(&api, b1, json!({"new_server": "copy"}));
    assert_eq!(out["cloned"], true);
    assert_eq!(out["job"]["kind"], "server.provision");
    let cid = out["server_id"].as_i64().unwrap();
    let c = api.wait_status(cid, "running");
    assert_eq!(c["name"], "copy");
    assert_eq!(c["template"], "standin");
    assert_eq!(c["version"], s["version"]);
    assert_eq!(c["memory_mb"], s["memory_mb"]);
    assert_eq!(c["cores"], s["cores"]);
    assert_eq!(c["node"], s["node"]);
    assert_eq!(c["checkpoints"]["container"]["source_server"], sid, "{c}");
    assert!(c["checkpoints"]["seeded"].is_object(), "{c}");
    let cvmid = c["vmid"].as_i64().unwrap();
    assert_ne!(cvmid, vmid);
    assert_one_restored(&sim, &data, cid, cvmid, &volid);

    // The backup's world, configured as the new server.
    let cworld = sim.ct_dir(cvmid).join("server/world");
    assert_eq!(read(&cworld.join("marker.txt")), "v1");
    assert_eq!(std::fs::read(cworld.join("level.dat")).unwrap(), level);
    let starts = read(&cworld.join("standin-starts.log"));
    assert!(
        starts.starts_with(&read(&world.join("standin-starts.log"))),
        "the restored world's history is kept: {starts}"
    );
    let cfg = sim.config(cvmid).unwrap();
    assert_eq!(cfg["hostname"], "copy");
    assert_eq!(cfg["tags"], format!("zlh;srv-{cid}"));
    assert!(
        cfg["description"]
            .as_str()
            .unwrap()
            .starts_with(&format!("zlh server {cid} ")),
        "{cfg:?}"
    );
    let mac = |net: &str| {
        net.split(',')
            .find_map(|kv| kv.strip_prefix("hwaddr="))
            .unwrap()
            .to_string()
    };
    assert_ne!(
        mac(cfg["net0"].as_str().unwrap()),
        mac(&source_mac),
        "a fresh MAC"
    );
    // Tokens: the copy's agent now wants its own; the source's agent still its own.
    let (own, theirs) = (token_of(&data, cid), token_of(&data, sid));
    assert_eq!(agent_status_code(&sim, cvmid, &own), 200);
    assert_eq!(agent_status_code(&sim, cvmid, &theirs), 401);
    assert_eq!(agent_status_code(&sim, vmid, &theirs), 200);
    assert!(
        events(&api, cid)
            .iter()
            .any(|e| e.contains(&format!("with server {sid}'s token"))),
        "{:?}",
        events(&api, cid)
    );
    assert!(
        !api.served.log_text().contains(&theirs),
        "no token in the log"
    );
    assert!(!api.served.log_text().contains(&own), "no token in the log");
    // The source was not touched.
    let s2 = api.server(sid);
    assert_eq!(s2["status"], "running");
    assert_eq!(s2["vmid"], vmid);
    assert_eq!(read(&world.join("marker.txt")), "v1");
    assert_eq!(sim.restore_calls().len(), 1);

    // A failed restore task fails the new server at `container`; retry gets it running.
    sim.fail_next_task("vzrestore", "unable to restore CT: no space left on device");
    let out = restore(&api, b1, json!({"new_server": "unlucky"}));
    let uid = out["server_id"].as_i64().unwrap();
    let failed = api.wait_status(uid, "failed");
    assert_eq!(failed["failed_step"], "container");
    let reason = failed["status_reason"].as_str().unwrap();
    assert!(reason.contains("no space left on device"), "{reason}");
    assert!(containers_of(&sim, uid).is_empty());
    let (code, body) = api.call("POST", &format!("/api/v1/servers/{uid}/retry"), None);
    assert_eq!(code, 202, "{body}");
    api.wait_leaves(uid, "failed");
    let u = api.wait_status(uid, "running");
    let uvmid = u["vmid"].as_i64().unwrap();
    assert_eq!(containers_of(&sim, uid), vec![uvmid]);
    assert_eq!(
        read(&sim.ct_dir(uvmid).join("server/world/marker.txt")),
        "v1"
    );
    assert_eq!(api.server(sid)["status"], "running");

    // SIGKILL of `zlh serve` while the restore task runs: one container, one restore.
    sim.hold_tasks("vzrestore");
    let before = sim.tasks("vzrestore");
    let out = restore(&api, b1, json!({"new_server": "phoenix"}));
    let pid = out["server_id"].as_i64().unwrap();
    wait_for(
        "the restore task to be held open",
        Duration::from_secs(30),
        || (sim.tasks("vzrestore") > before).then_some(()),
    );
    let status = api.served.signal_and_wait(libc::SIGKILL);
    assert!(!status.success());
    api.served = Served::start_with_env(
        tmp.path(),
        &data,
        &[],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );
    sim.release_tasks("vzrestore");
    let p = api.wait_status(pid, "running");
    let pvmid = p["vmid"].as_i64().unwrap();
    let all = sim.restore_calls();
    let vol_of_phoenix: Vec<_> = all
        .iter()
        .filter(|r| {
            r.get("description")
                .is_some_and(|d| d.starts_with(&format!("zlh server {pid} ")))
        })
        .collect();
    assert_eq!(
        vol_of_phoenix.len(),
        1,
        "one restore for the server: {all:?}"
    );
    assert_one_restored(&sim, &data, pid, pvmid, &volid);
    assert!(
        events(&api, pid)
            .iter()
            .any(|e| e == &format!("adopted container {pvmid} made by an earlier run")),
        "the rerun adopted the restore it found: {:?}",
        events(&api, pid)
    );
    assert_eq!(
        read(&sim.ct_dir(pvmid).join("server/world/marker.txt")),
        "v1"
    );
    assert_eq!(api.server(sid)["status"], "running");
    assert_eq!(agent_status_code(&sim, vmid, &theirs), 200);
}

/// `S M H * * *` for the UTC second `t` (epoch seconds): fires once a day, at `t`.
fn cron_at(t: i64) -> String {
    let d = t.rem_euclid(86_400);
    format!("{} {} {} * * *", d % 60, (d / 60) % 60, d / 3600)
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn add_schedule(api: &Api, sid: i64, body: Value) -> i64 {
    let (code, out) = api.call(
        "POST",
        &format!("/api/v1/servers/{sid}/schedules"),
        Some(body),
    );
    assert_eq!(code, 201, "{out}");
    out["schedule"]["id"].as_i64().unwrap()
}

fn firings(data: &Path, schedule: i64) -> Vec<(String, String)> {
    let conn = support::open_db(data);
    let mut q = conn
        .prepare("SELECT unique_key, state FROM jobs WHERE unique_key LIKE ?1 ORDER BY id")
        .unwrap();
    q.query_map([format!("schedule:{schedule}:%")], |r| {
        Ok((r.get(0)?, r.get(1)?))
    })
    .unwrap()
    .collect::<Result<_, _>>()
    .unwrap()
}

fn ticks(served: &Served) -> u64 {
    let (_, text) = support::http_get(&served.url("/metrics")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("zlh_schedule_ticks_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn schedules_fire_once_per_slot_across_a_restart_chain_after_success_and_warn_before_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let env = [
        ("ZLH_ARTIFACTS_UPSTREAM", "false"),
        ("ZLH_SCHEDULE_TICK_MS", "200"),
    ];
    let served = Served::start_with_env(tmp.path(), &tmp.path().join("data"), &[], &env);
    let mut api = Api::start_on(tmp.path(), served);
    let sid = create(&api, "epsilon", None);
    let s = api.wait_status(sid, "running");
    let vmid = s["vmid"].as_i64().unwrap();
    let data = api.served.data_dir.clone();
    let agent_dir = data.join(format!("servers/{vmid}/agent"));

    // Bad input names the field.
    let (code, body) = api.call(
        "POST",
        &format!("/api/v1/servers/{sid}/schedules"),
        Some(json!({"kind": "backup", "cron": "61 * * * *"})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "cron");
    let (code, body) = api.call(
        "POST",
        &format!("/api/v1/servers/{sid}/schedules"),
        Some(json!({"kind": "command", "cron": "* * * * *"})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "command");

    // Every 2 seconds a console command; one backup at a given second, with a command
    // chained after it.
    let every = add_schedule(
        &api,
        sid,
        json!({"kind": "command", "cron": "*/2 * * * * *", "command": "say tick"}),
    );
    let at = now_secs() + 3;
    let once = add_schedule(&api, sid, json!({"kind": "backup", "cron": cron_at(at)}));
    let chained = add_schedule(
        &api,
        sid,
        json!({"kind": "command", "after": once, "command": "say after the backup"}),
    );
    wait_for("the chained command", Duration::from_secs(60), || {
        firings(&data, chained)
            .iter()
            .any(|(_, st)| st == "completed")
            .then_some(())
    });
    assert_eq!(
        firings(&data, once),
        vec![(format!("schedule:{once}:{at}"), "completed".to_string())]
    );
    let (_, listed) = api.call("GET", &format!("/api/v1/servers/{sid}/backups"), None);
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1);
    assert_eq!(listed["backups"][0]["actor"], format!("schedule:{once}"));
    assert_eq!(listed["backups"][0]["state"], "completed");
    let console = read(&agent_dir.join("logs/console.log"));
    assert!(console.contains("[Server] after the backup"), "{console}");

    // Restart zlh serve within a minute of the backup's slot: the new process sees
    // that slot as due again, and must not fire it a second time.
    let before_restart = firings(&data, every).len();
    assert!(before_restart >= 1);
    assert!(api.served.signal_and_wait(libc::SIGTERM).success());
    api.served.keep_agents = true;
    api.served = Served::start_with_env(tmp.path(), &data, &[], &env);
    wait_for("scheduler ticks", Duration::from_secs(30), || {
        (ticks(&api.served) >= 10).then_some(())
    });
    wait_for(
        "more firings after the restart",
        Duration::from_secs(30),
        || (firings(&data, every).len() >= before_restart + 2).then_some(()),
    );
    assert!(now_secs() - at < 60, "the test ran within the grace window");
    assert_eq!(firings(&data, once).len(), 1, "one firing for the slot");
    assert_eq!(firings(&data, chained).len(), 1);
    let keys: Vec<String> = firings(&data, every).into_iter().map(|(k, _)| k).collect();
    let distinct: std::collections::BTreeSet<&String> = keys.iter().collect();
    assert_eq!(distinct.len(), keys.len(), "no slot fired twice: {keys:?}");
    let (_, listed) = api.call("GET", &format!("/api/v1/servers/{sid}/backups"), None);
    assert_eq!(listed["backups"].as_array().unwrap().len(), 1, "one backup");

    // A restart schedule warns players through the console before the restart.
    let (code, _) = api.call("DELETE", &format!("/api/v1/schedules/{every}"), None);
    assert_eq!(code, 200);
    let starts = read(&agent_dir.join("server/world/standin-starts.log"))
        .lines()
        .count();
    let at = now_secs() + 2;
    let restart = add_schedule(
        &api,
        sid,
        json!({"kind": "restart", "cron": cron_at(at), "warning_secs": 2}),
    );
    wait_for("the restart firing", Duration::from_secs(90), || {
        firings(&data, restart)
            .iter()
            .any(|(_, st)| st == "completed")
            .then_some(())
    });
    let console = read(&agent_dir.join("logs/console.log"));
    let warned = console
        .find("[Server] Server restarts in 2 seconds")
        .unwrap_or_else(|| panic!("no warning in the console:\n{console}"));
    let stopped = console.rfind("Stopping the server").unwrap();
    assert!(warned < stopped, "the warning came before the restart");
    assert_eq!(
        read(&agent_dir.join("server/world/standin-starts.log"))
            .lines()
            .count(),
        starts + 1,
        "restarted once"
    );
    api.wait_status(sid, "running");
    let (_, listed) = api.call("GET", &format!("/api/v1/servers/{sid}/schedules"), None);
    let ids: Vec<i64> = listed["schedules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, vec![once, chained, restart]);
}
