//! Publishing through the real binary: Velocity registration only after readiness,
//! re-registration after a proxy restart, DNS that recovers by itself, exact deletes,
//! Traefik's document, and control-plane endpoints by IP.

use crate::support;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::support::api::Api;
use crate::support::technitium_sim::TechnitiumSim;
use crate::support::velocity_sim::VelocitySim;
use crate::support::{Served, wait_for, zlh};
use serde_json::{Value, json};

const SECRET: &str = "bridge-shared-secret";
const DNS_TOKEN: &str = "technitium-token-0123456789";
const ZONE: &str = "games.example.com";

struct Edge {
    api: Api,
    velocity: VelocitySim,
    dns: TechnitiumSim,
}

fn start(tmp: &std::path::Path, load_ms: u64) -> Edge {
    start_with(tmp, load_ms, &[])
}

fn start_with(tmp: &std::path::Path, load_ms: u64, extra_env: &[(&str, &str)]) -> Edge {
    let velocity = VelocitySim::start(SECRET);
    let dns = TechnitiumSim::start(DNS_TOKEN, ZONE);
    let vurl = velocity.url();
    let durl = dns.url();
    let env: Vec<(&str, &str)> = vec![
        ("ZLH_ARTIFACTS_UPSTREAM", "false"),
        ("ZLH_RECONCILE_SECS", "1"),
        ("ZLH_EDGE_VELOCITY_URL", &vurl),
        ("ZLH_EDGE_VELOCITY_SECRET", SECRET),
        ("ZLH_EDGE_VELOCITY_EDGE_IP", "203.0.113.7"),
        ("ZLH_EDGE_VELOCITY_SRV_TARGET", "play.example.com"),
        ("ZLH_EDGE_DNS_PROVIDER", "technitium"),
        ("ZLH_EDGE_DNS_URL", &durl),
        ("ZLH_EDGE_DNS_TOKEN", DNS_TOKEN),
        ("ZLH_EDGE_DNS_ZONE", ZONE),
        ("ZLH_EDGE_TRAEFIK_TOKEN", "traefik-poll-token-0123456789"),
        ("ZLH_EDGE_TRAEFIK_EDGE_IP", "203.0.113.8"),
    ];
    let env: Vec<(&str, &str)> = env.into_iter().chain(extra_env.iter().copied()).collect();
    let served = Served::start_with_env(tmp, &tmp.join("data"), &[], &env);
    let api = Api::start_on(tmp, served);
    let mut t = support::api::standin_template();
    t["slug"] = json!("standin-mc");
    t["spec"]["edge"] = json!("velocity");
    t["spec"]["env"]["STANDIN_LOAD_MS"] = json!(load_ms.to_string());
    assert_eq!(api.call("POST", "/api/v1/templates", Some(t)).0, 201);
    let mut t = support::api::standin_template();
    t["slug"] = json!("standin-tcp");
    t["spec"]["edge"] = json!("traefik_tcp");
    assert_eq!(api.call("POST", "/api/v1/templates", Some(t)).0, 201);
    Edge { api, velocity, dns }
}

fn create(api: &Api, name: &str, template: &str) -> (i64, Instant) {
    let t = Instant::now();
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": name, "template": template, "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    (body["server"]["id"].as_i64().unwrap(), t)
}

fn edge_of(api: &Api, id: i64) -> Vec<Value> {
    api.server(id)["edge"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn states(api: &Api, id: i64) -> Vec<(String, String)> {
    edge_of(api, id)
        .iter()
        .map(|r| {
            (
                r["target"].as_str().unwrap().to_string(),
                r["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn velocity_registration_comes_only_after_the_game_answers_its_ping() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), 1500);
    let (id, created) = create(&e.api, "slowpoke", "standin-mc");
    // Watch the game from outside: when did it first answer a status ping?
    let port = e.api.server(id)["game_port"].as_i64().unwrap();
    let first_answer: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (first_answer, stop) = (first_answer.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if support::api::slp(port).is_some() {
                    first_answer.lock().unwrap().get_or_insert(Instant::now());
                    return;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        })
    };
    e.api.wait_status(id, "running");
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    watcher.join().unwrap();
    let answered = first_answer.lock().unwrap().expect("the game answered");
    let calls = e.velocity.calls("slowpoke");
    let registered = calls
        .iter()
        .find(|(op, _)| *op == "register")
        .map(|(_, t)| *t)
        .expect("registered with Velocity");
    assert!(
        registered >= created + Duration::from_millis(1500),
        "registered {:?} after the create, before the world could have loaded",
        registered - created
    );
    // Our watcher polls every 5 ms; the agent saw the answer no earlier than the game gave it.
    assert!(
        registered + Duration::from_millis(100) >= answered,
        "registered {:?} before the game first answered",
        answered - registered
    );
    let regs = e.velocity.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].address, "127.0.0.1");
    assert_eq!(regs[0].port as i64, port);
    // DNS: the A record to the edge IP and the Minecraft SRV record.
    let records = e.dns.records(ZONE);
    assert!(
        records
            .iter()
            .any(|r| r.kind == "A" && r.name == format!("slowpoke.{ZONE}")),
        "{records:?}"
    );
    assert!(
        records
            .iter()
            .any(|r| r.kind == "SRV" && r.name == format!("_minecraft._tcp.slowpoke.{ZONE}"))
    );
    assert!(states(&e.api, id).iter().all(|(_, s)| s == "published"));
}

#[test]
fn after_a_proxy_restart_the_reconciler_registers_every_running_server_again() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), 100);
    let (a, _) = create(&e.api, "one", "standin-mc");
    let (b, _) = create(&e.api, "two", "standin-mc");
    e.api.wait_status(a, "running");
    e.api.wait_status(b, "running");
    wait_for("both registered", Duration::from_secs(20), || {
        (e.velocity.registrations().len() == 2).then_some(())
    });
    e.velocity.restart();
    assert!(e.velocity.registrations().is_empty());
    let forgot = Instant::now();
    wait_for("re-registration", Duration::from_secs(20), || {
        (e.velocity.registrations().len() == 2).then_some(())
    });
    assert!(
        forgot.elapsed() < Duration::from_secs(10),
        "within a reconcile cycle or two"
    );
    let (_, events) = e
        .api
        .call("GET", &format!("/api/v1/servers/{a}/events"), None);
    assert!(events.to_string().contains("registered again"), "{events}");
    // The reconciler keeps each agent's view on the server row, not in a cache.
    let conn = support::open_db(&e.api.served.data_dir);
    let seen_before: i64 = conn
        .query_row(
            "SELECT coalesce(agent_seen_at, 0) FROM servers WHERE id = ?1",
            [a],
            |r| r.get(0),
        )
        .unwrap();
    wait_for(
        "the reconciler to poll the agent again",
        Duration::from_secs(20),
        || {
            let (state, ready, seen): (Option<String>, bool, i64) = conn
            .query_row(
                "SELECT agent_state, ready, coalesce(agent_seen_at, 0) FROM servers WHERE id = ?1",
                [a],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .ok()?;
            (state.as_deref() == Some("running") && ready && seen > seen_before).then_some(())
        },
    );
    let (_, metrics) = support::http_get(&e.api.served.url("/metrics")).unwrap();
    assert!(
        metrics.contains("zlh_reconcile_total{action=\"edge_republished\"}"),
        "{metrics}"
    );
}

#[test]
fn dns_down_during_provisioning_leaves_the_game_running_and_recovers_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), 100);
    e.dns.set_down(true);
    let (id, _) = create(&e.api, "dnsless", "standin-mc");
    e.api.wait_status(id, "running");
    let failed = wait_for(
        "the DNS records to be failed",
        Duration::from_secs(20),
        || {
            let recs = edge_of(&e.api, id);
            let dns: Vec<Value> = recs
                .into_iter()
                .filter(|r| r["target"].as_str().unwrap().starts_with("dns"))
                .collect();
            (dns.len() == 2 && dns.iter().all(|r| r["state"] == "failed")).then_some(dns)
        },
    );
    assert!(
        failed[0]["last_error"]
            .as_str()
            .unwrap()
            .contains("Technitium"),
        "{failed:?}"
    );
    assert_eq!(
        e.api.server(id)["status"],
        "running",
        "an edge failure never fails the game"
    );
    assert_eq!(
        e.velocity.registrations().len(),
        1,
        "Velocity is independent of DNS"
    );
    e.dns.set_down(false);
    wait_for(
        "the DNS records to be published",
        Duration::from_secs(30),
        || {
            states(&e.api, id)
                .iter()
                .all(|(_, s)| s == "published")
                .then_some(())
        },
    );
    assert_eq!(e.dns.records(ZONE).len(), 2);
}

#[test]
fn delete_removes_exactly_what_was_published_and_gone_counts_as_success() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), 100);
    // Someone else's record in the same zone must survive.
    e.dns.insert(
        ZONE,
        &format!("other.{ZONE}"),
        "A",
        json!({"ipAddress": "198.51.100.1"}),
    );
    let (id, _) = create(&e.api, "doomed", "standin-mc");
    e.api.wait_status(id, "running");
    wait_for("published", Duration::from_secs(20), || {
        (states(&e.api, id).len() == 3 && states(&e.api, id).iter().all(|(_, s)| s == "published"))
            .then_some(())
    });
    // The SRV record is removed by hand before the delete: already gone.
    assert_eq!(
        e.dns
            .remove(ZONE, &format!("_minecraft._tcp.doomed.{ZONE}"), "SRV"),
        1
    );
    let (code, _) = e.api.call("DELETE", &format!("/api/v1/servers/{id}"), None);
    assert_eq!(code, 202);
    e.api.wait_status(id, "deleted");
    let left = e.dns.records(ZONE);
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].name, format!("other.{ZONE}"));
    assert!(e.velocity.registrations().is_empty());
    let unregisters: Vec<_> = e
        .velocity
        .calls("doomed")
        .into_iter()
        .filter(|(op, _)| *op == "unregister")
        .collect();
    assert_eq!(
        unregisters.len(),
        1,
        "unregistered under the name it was registered with"
    );
    assert!(edge_of(&e.api, id).is_empty(), "no live records left");
}

#[test]
fn traefik_reads_its_routes_from_zlh_with_a_token() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), 100);
    let (id, _) = create(&e.api, "tcpgame", "standin-tcp");
    e.api.wait_status(id, "running");
    let port = e.api.server(id)["game_port"].as_i64().unwrap();
    let client = e.api.http.inner.clone();
    let url = e.api.served.url("/traefik/config");
    let get = |token: Option<&str>| {
        e.api.http.rt.block_on(async {
            let mut req = client.get(&url);
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let r = req.send().await.unwrap();
            (
                r.status().as_u16(),
                r.json::<Value>().await.unwrap_or(Value::Null),
            )
        })
    };
    assert_eq!(get(None).0, 401);
    assert_eq!(get(Some("wrong")).0, 401);
    let (code, doc) = get(Some("traefik-poll-token-0123456789"));
    assert_eq!(code, 200);
    assert_eq!(doc["tcp"]["routers"]["zlh-tcpgame"]["rule"], "HostSNI(`*`)");
    assert_eq!(
        doc["tcp"]["routers"]["zlh-tcpgame"]["entryPoints"],
        json!(["zlh-tcpgame"])
    );
    assert_eq!(
        doc["tcp"]["services"]["zlh-tcpgame"]["loadBalancer"]["servers"][0]["address"],
        format!("127.0.0.1:{port}")
    );
    assert!(e.velocity.registrations().is_empty(), "not a Velocity game");
}

#[test]
fn a_hostname_for_an_internal_endpoint_is_refused_unless_explicitly_allowed() {
    let tmp = tempfile::tempdir().unwrap();
    let base = [
        ("ZLH_EDGE_VELOCITY_URL", "http://velocity.lan:8081"),
        ("ZLH_EDGE_VELOCITY_SECRET", SECRET),
        ("ZLH_EDGE_VELOCITY_EDGE_IP", "203.0.113.7"),
        ("ZLH_EDGE_VELOCITY_SRV_TARGET", "play.example.com"),
    ];
    let out = zlh(tmp.path())
        .args(["config", "check"])
        .envs(base)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("edge.velocity.url"), "{err}");
    let out = zlh(tmp.path())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .envs(base)
        .output()
        .unwrap();
    assert!(!out.status.success(), "serve refuses it too");
    assert!(String::from_utf8_lossy(&out.stderr).contains("edge.velocity.url"));
    assert!(!tmp.path().join("zlh-data").exists(), "nothing written");
    let out = zlh(tmp.path())
        .args(["config", "check"])
        .envs(base)
        .env("ZLH_EDGE_ALLOW_HOSTNAMES", "true")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let warn = String::from_utf8_lossy(&out.stderr);
    assert!(
        warn.contains("warning") && warn.contains("edge.velocity.url"),
        "{warn}"
    );
    // The advertised URL agents get is held to the same rule.
    let out = zlh(tmp.path())
        .args(["config", "check"])
        .env("ZLH_ADVERTISE_URL", "http://zlh.lan:8080")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("advertise_url"));
}

/// The pid of a local server's game, once it is a live process other than `not`.
fn game_pid(e: &Edge, id: i64, not: Option<i32>) -> i32 {
    let vmid = e.api.server(id)["vmid"].as_i64().unwrap();
    let file = e
        .api
        .served
        .data_dir
        .join(format!("servers/{vmid}/agent/game.pid"));
    wait_for("the game's pid", Duration::from_secs(30), || {
        let pid: i32 = std::fs::read_to_string(&file).ok()?.trim().parse().ok()?;
        (Some(pid) != not && std::path::Path::new(&format!("/proc/{pid}")).exists()).then_some(pid)
    })
}

fn sigkill(pid: i32) {
    // SAFETY: kill(2) on a pid this test read from the agent's pid file.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill {pid}");
}

fn reconcile_runs(e: &Edge) -> u64 {
    let (_, metrics) = support::http_get(&e.api.served.url("/metrics")).unwrap();
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("zlh_reconcile_total{action=\"runs\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

fn events(e: &Edge, id: i64) -> Vec<Value> {
    let (code, body) = e
        .api
        .call("GET", &format!("/api/v1/servers/{id}/events"), None);
    assert_eq!(code, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

fn transitions(e: &Edge, id: i64) -> Vec<(String, String)> {
    events(e, id)
        .iter()
        .filter(|ev| ev["from_status"].is_string() && ev["from_status"] != ev["to_status"])
        .map(|ev| {
            (
                ev["from_status"].as_str().unwrap().to_string(),
                ev["to_status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_crashed_game_comes_back_running_by_itself_and_the_proxy_follows_readiness() {
    let tmp = tempfile::tempdir().unwrap();
    // Long enough for the proxy restart below to happen while the game is down.
    let e = start_with(tmp.path(), 100, &[("ZLH_LOCAL_CRASH_BACKOFF", "8s")]);
    let (id, _) = create(&e.api, "phoenix", "standin-mc");
    e.api.wait_status(id, "running");
    wait_for("registered", Duration::from_secs(20), || {
        (e.velocity.registrations().len() == 1).then_some(())
    });

    sigkill(game_pid(&e, id, None));
    let crashed = e.api.wait_status(id, "crashed");
    assert!(
        crashed["status_reason"]
            .as_str()
            .unwrap()
            .contains("the game crashed (crash 1, killed by signal 9)"),
        "{crashed}"
    );
    // Players get the proxy's "unavailable", not a connection to a dead port.
    wait_for("unregistered at the crash", Duration::from_secs(10), || {
        e.velocity.registrations().is_empty().then_some(())
    });
    assert_eq!(e.velocity.count("unregister"), 1);
    // A proxy restart while the game is down registers nothing for it.
    e.velocity.restart();
    let runs = reconcile_runs(&e);
    wait_for(
        "two reconciles after the proxy restart",
        Duration::from_secs(10),
        || (reconcile_runs(&e) >= runs + 2).then_some(()),
    );
    assert_eq!(
        e.api.server(id)["status"],
        "crashed",
        "the agent's 8 s backoff outlasted two reconciles (a slow machine would break this test's premise)"
    );
    assert!(
        e.velocity.registrations().is_empty(),
        "{:?}",
        e.velocity.registrations()
    );

    // The agent restarts the game after its backoff; nobody acts.
    e.api.wait_status(id, "running");
    wait_for(
        "registered again after the recovery",
        Duration::from_secs(10),
        || (e.velocity.registrations().len() == 1).then_some(()),
    );
    let server = e.api.server(id);
    assert_eq!(server["crash_count"], 1, "{server}");
    let evs = events(&e, id);
    assert!(
        evs.iter().any(|ev| ev["to_status"] == "running"
            && ev["actor"] == "reconciler"
            && ev["message"]
                .as_str()
                .unwrap()
                .starts_with("recovered after crash 1")),
        "{evs:?}"
    );
    let moves = transitions(&e, id);
    let tail: Vec<_> = moves.iter().rev().take(2).rev().cloned().collect();
    assert_eq!(
        tail,
        vec![
            ("running".to_string(), "crashed".to_string()),
            ("crashed".to_string(), "running".to_string())
        ],
        "{moves:?}"
    );
    // DNS stayed published the whole time: it names the server, not its liveness.
    assert!(
        states(&e.api, id)
            .iter()
            .filter(|(t, _)| t.starts_with("dns"))
            .all(|(_, s)| s == "published"),
        "{:?}",
        states(&e.api, id)
    );
}

#[test]
fn a_crash_loop_the_agent_gives_up_on_shows_its_error_and_start_brings_it_back() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start_with(
        tmp.path(),
        100,
        &[("ZLH_LOCAL_CRASH_BACKOFF", "300ms,300ms")],
    );
    let (id, _) = create(&e.api, "crashloop", "standin-mc");
    e.api.wait_status(id, "running");
    // Three crashes in a row: two restarts, then the agent gives up.
    let mut pid = game_pid(&e, id, None);
    for _ in 0..2 {
        sigkill(pid);
        pid = game_pid(&e, id, Some(pid));
    }
    sigkill(pid);
    let shown = wait_for(
        "the agent's error on the server",
        Duration::from_secs(30),
        || {
            let s = e.api.server(id);
            (s["status"] == "crashed"
                && s["status_reason"]
                    .as_str()?
                    .contains("the agent gave up restarting the game"))
            .then_some(s)
        },
    );
    let reason = shown["status_reason"].as_str().unwrap();
    assert!(reason.contains("crashed 3 times in a row"), "{reason}");
    assert!(reason.contains("last console lines:"), "{reason}");
    assert!(e.velocity.registrations().is_empty());
    let alerts: Vec<Value> = events(&e, id)
        .into_iter()
        .filter(|ev| ev["severity"] == "alert")
        .collect();
    assert_eq!(alerts.len(), 1, "told once: {alerts:?}");
    assert!(alerts[0]["message"].as_str().unwrap().contains("gave up"));
    // Stays so (no second alert on later reconciles) until someone acts.
    let runs = reconcile_runs(&e);
    wait_for("two more reconciles", Duration::from_secs(10), || {
        (reconcile_runs(&e) >= runs + 2).then_some(())
    });
    assert_eq!(e.api.server(id)["status"], "crashed");
    assert_eq!(
        events(&e, id)
            .iter()
            .filter(|ev| ev["severity"] == "alert")
            .count(),
        1
    );

    let (code, body) = e
        .api
        .call("POST", &format!("/api/v1/servers/{id}/start"), None);
    assert_eq!(code, 202, "{body}");
    e.api.wait_status(id, "running");
    wait_for(
        "registered after the start",
        Duration::from_secs(10),
        || (e.velocity.registrations().len() == 1).then_some(()),
    );
}

/// The agent of a local server, as the operator could reach it on the host.
fn agent_call(e: &Edge, id: i64, path: &str) -> u16 {
    let data = &e.api.served.data_dir;
    let (vmid, port): (i64, i64) = support::open_db(data)
        .query_row(
            "SELECT vmid, agent_port FROM servers WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    // The local agent keeps its token in a 0600 file of its own directory.
    let token = std::fs::read_to_string(data.join(format!("servers/{vmid}/agent/token")))
        .unwrap()
        .trim()
        .to_string();
    e.api.http.rt.block_on(async {
        e.api
            .http
            .inner
            .post(format!("http://127.0.0.1:{port}{path}"))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

#[test]
fn a_game_stopped_or_started_behind_zlhs_back_moves_the_server_and_the_proxy_follows() {
    let tmp = tempfile::tempdir().unwrap();
    let e = start(tmp.path(), 100);
    let (id, _) = create(&e.api, "sidestep", "standin-mc");
    e.api.wait_status(id, "running");
    wait_for("registered", Duration::from_secs(20), || {
        (e.velocity.registrations().len() == 1).then_some(())
    });
    // Someone stops the game at its agent: the row follows, players are not sent there.
    assert_eq!(agent_call(&e, id, "/stop"), 204);
    let stopped = e.api.wait_status(id, "stopped");
    assert!(
        stopped["status_reason"]
            .as_str()
            .unwrap()
            .contains("zlh did not stop it"),
        "{stopped}"
    );
    wait_for("unregistered", Duration::from_secs(10), || {
        e.velocity.registrations().is_empty().then_some(())
    });
    // And starts it again there: running (once it answers its probe) and registered.
    assert!(matches!(agent_call(&e, id, "/start"), 200 | 202 | 204));
    e.api.wait_status(id, "running");
    wait_for("registered again", Duration::from_secs(10), || {
        (e.velocity.registrations().len() == 1).then_some(())
    });
    let moves = transitions(&e, id);
    assert!(
        moves.ends_with(&[
            ("running".to_string(), "stopped".to_string()),
            ("stopped".to_string(), "running".to_string())
        ]),
        "{moves:?}"
    );
}
