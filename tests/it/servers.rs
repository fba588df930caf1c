//! Servers through the JSON API of a real `zlh serve`: the local runtime end to end
//! (a real detached agent and a stand-in game), idempotent creation under
//! concurrency, auth on every route, bad input.

use crate::support;

use crate::support::Served;
use crate::support::api::{Api, slp};
use serde_json::{Value, json};

#[test]
fn local_runtime_end_to_end_create_stop_start_survive_a_restart_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let mut api = Api::start(tmp.path());

    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "alpha", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    assert_eq!(body["job"]["kind"], "server.provision");
    assert!(
        body["server"].get("agent_token").is_none(),
        "no secrets in API output"
    );

    let s = api.wait_status(id, "running");
    let port = s["game_port"].as_i64().unwrap();
    assert_eq!(
        slp(port).unwrap()["description"]["text"],
        "alpha",
        "the game answers"
    );
    assert_eq!(s["ready"], true);
    let vmid = s["vmid"].as_i64().unwrap();

    // The console through the API: a command, its reply in the tail and in the stream.
    let console = format!("/api/v1/servers/{id}/console");
    let (code, body) = api.call("POST", &console, Some(json!({"command": "say api-hello"})));
    assert_eq!(code, 204, "{body}");
    support::wait_for(
        "the reply in the tail",
        std::time::Duration::from_secs(20),
        || {
            let (code, tail) = api.call("GET", &format!("{console}?lines=50"), None);
            assert_eq!(code, 200, "{tail}");
            tail["lines"]
                .as_array()?
                .iter()
                .any(|l| l.as_str().is_some_and(|l| l.contains("[Server] api-hello")))
                .then_some(())
        },
    );
    for (bad, field) in [
        (json!({"command": ""}), "command"),
        (json!({"command": "a\nb"}), "command"),
        (json!({}), "command"),
    ] {
        let (code, body) = api.call("POST", &console, Some(bad));
        assert_eq!(code, 400, "{body}");
        assert_eq!(body["error"]["field"], field, "{body}");
    }
    assert_eq!(api.call("GET", &format!("{console}?lines=0"), None).0, 400);
    let lines = api.http.rt.block_on(async {
        use futures_util::StreamExt;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let url = api
            .served
            .url(&format!("{console}/stream"))
            .replacen("http", "ws", 1);
        let mut req = url.into_client_request().unwrap();
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {}", api.token).parse().unwrap(),
        );
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
        let mut lines = Vec::new();
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(std::time::Duration::from_secs(5), ws.next()).await
        {
            if let tokio_tungstenite::tungstenite::Message::Text(t) = m {
                lines.push(t.to_string());
                if t.contains("[Server] api-hello") {
                    break;
                }
            }
        }
        lines
    });
    assert!(
        lines.iter().any(|l| l.contains("[Server] api-hello")),
        "{lines:?}"
    );

    // Exactly one of everything: one row, one provisioning job, one install at the agent.
    let conn = support::open_db(&api.served.data_dir);
    let jobs: i64 = conn
        .query_row(
            "SELECT count(*) FROM jobs WHERE kind = 'server.provision'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(jobs, 1);
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM servers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 1);
    let agent_state: Value = serde_json::from_str(
        &std::fs::read_to_string(
            api.served
                .data_dir
                .join(format!("servers/{vmid}/agent/agent-state.json")),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(agent_state["install_count"], 1);

    let (_, events) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
    let path: Vec<&str> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["to_status"].as_str())
        .collect();
    assert_eq!(path.first(), Some(&"pending"));
    for want in ["provisioning", "installing", "starting", "running"] {
        assert!(path.contains(&want), "{path:?}");
    }

    // Stop, start.
    let (code, _) = api.call("POST", &format!("/api/v1/servers/{id}/stop"), None);
    assert_eq!(code, 202);
    api.wait_status(id, "stopped");
    assert!(slp(port).is_none(), "the game is down");
    let (code, _) = api.call("POST", &format!("/api/v1/servers/{id}/start"), None);
    assert_eq!(code, 202);
    api.wait_status(id, "running");

    // Restart the control plane: the game keeps running throughout.
    let starts_before = std::fs::read_to_string(api.served.data_dir.join(format!(
        "servers/{vmid}/agent/server/world/standin-starts.log"
    )))
    .unwrap()
    .lines()
    .count();
    assert!(api.served.signal_and_wait(libc::SIGTERM).success());
    assert!(slp(port).is_some(), "the game outlives zlh serve");
    let data = api.served.data_dir.clone();
    api.served.keep_agents = true;
    api.served = Served::start_with_env(
        tmp.path(),
        &data,
        &[],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );
    assert_eq!(api.server(id)["status"], "running");
    assert!(slp(port).is_some());
    let starts_after = std::fs::read_to_string(data.join(format!(
        "servers/{vmid}/agent/server/world/standin-starts.log"
    )))
    .unwrap()
    .lines()
    .count();
    assert_eq!(starts_before, starts_after, "the game was not restarted");

    // Delete: directory and processes gone, name reusable.
    let agent_pid: i32 = std::fs::read_to_string(data.join(format!("servers/{vmid}/agent.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let (code, _) = api.call("DELETE", &format!("/api/v1/servers/{id}"), None);
    assert_eq!(code, 202);
    let gone = api.wait_status(id, "deleted");
    assert!(gone["deleted_at"].is_i64());
    assert!(
        !data.join(format!("servers/{vmid}")).exists(),
        "directory removed"
    );
    assert!(
        unsafe { libc::kill(agent_pid, 0) } != 0,
        "agent process gone"
    );
    assert!(slp(port).is_none(), "game gone");
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "alpha", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "the name is free again: {body}");
    let id2 = body["server"]["id"].as_i64().unwrap();
    assert_ne!(id2, id);
    assert_eq!(body["server"]["vmid"], vmid, "the VMID was freed");
    assert_eq!(body["server"]["game_port"], port, "and the ports");
    api.wait_status(id2, "running");
    let (code, _) = api.call("DELETE", &format!("/api/v1/servers/{id2}"), None);
    assert_eq!(code, 202);
    api.wait_status(id2, "deleted");
}

#[test]
fn every_api_route_needs_a_token() {
    // No separate process needed: the app runs in this one (`zlh::app::serve` on port 0).
    let tmp = tempfile::tempdir().unwrap();
    let app = support::InProcess::start(&tmp.path().join("data"));
    let cli = |args: &[&str]| {
        let out = support::zlh(tmp.path())
            .args(args)
            .arg("--data-dir")
            .arg(&app.data_dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    cli(&["user", "add", "admin", "--admin"]);
    let admin = cli(&["token", "create", "--user", "admin"]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let http = reqwest::Client::builder().no_proxy().build().unwrap();
    let doc: Value = rt.block_on(async {
        let resp = http
            .get(app.url("/api/v1/openapi.json"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        resp.json().await.unwrap()
    });
    let paths = doc["paths"].as_object().unwrap();
    assert!(paths.len() >= 9);
    let mut checked = 0;
    for (path, ops) in paths {
        for method in ops.as_object().unwrap().keys() {
            let concrete = path.replace("{id}", "1").replace("{action}", "start");
            for token in [None, Some("zlh_wrong"), Some("not-even-a-token")] {
                let mut req =
                    http.request(method.to_uppercase().parse().unwrap(), app.url(&concrete));
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                let resp = rt.block_on(req.json(&json!({})).send()).unwrap();
                assert_eq!(
                    resp.status().as_u16(),
                    401,
                    "{method} {concrete} with {token:?}"
                );
                let body: Value = rt.block_on(resp.json()).unwrap();
                assert_eq!(body["error"]["code"], "unauthorized");
                checked += 1;
            }
        }
    }
    assert!(checked >= 36);
    let conn = support::open_db(&app.data_dir);
    let servers: i64 = conn
        .query_row("SELECT count(*) FROM servers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(servers, 0, "nothing was done without a token");
}

#[test]
fn bad_input_is_refused_naming_the_field_and_nothing_is_created() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let ok = json!({"name": "beta", "template": "standin", "version": "1.0", "eula": true});
    let with = |k: &str, v: Value| {
        let mut b = ok.clone();
        b[k] = v;
        b
    };
    let cases = [
        (with("name", json!("Not_A_Label")), 400, "name"),
        (with("name", json!("-x")), 400, "name"),
        (with("template", json!("nope")), 400, "template"),
        (with("version", json!("1.0; rm -rf /")), 400, "version"),
        (with("memory_mb", json!("lots")), 400, "memory_mb"),
        (with("memory_mb", json!(16)), 400, "memory_mb"),
        (with("surprise", json!(1)), 400, "surprise"),
        (
            json!({"template": "standin", "version": "1.0", "eula": true}),
            400,
            "name",
        ),
        (with("eula", json!(false)), 400, "eula"),
        (with("node", json!("nowhere")), 400, "node"),
    ];
    for (body, code, field) in cases {
        let (got, err) = api.call("POST", "/api/v1/servers", Some(body.clone()));
        assert_eq!(got, code, "{body}: {err}");
        assert_eq!(err["error"]["field"], field, "{body}: {err}");
    }
    // Malformed JSON and an oversized body.
    let http = &api.http;
    let raw = |bytes: Vec<u8>| {
        http.rt.block_on(async {
            // A client of its own: the server may close the connection after refusing
            // an oversized body, which must not break the next request on a pooled one.
            let resp = reqwest::Client::new()
                .post(api.served.url("/api/v1/servers"))
                .bearer_auth(&api.token)
                .header("content-type", "application/json")
                .body(bytes)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap())
        })
    };
    let (code, err) = raw(b"this is not json".to_vec());
    assert_eq!(code, 400);
    assert_eq!(err["error"]["field"], "body");
    let (code, err) = raw(b"{\"name\": ".to_vec());
    assert_eq!(code, 400, "{err}");
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("invalid JSON")
    );
    let (code, err) = raw(vec![b' '; 200 * 1024]);
    assert_eq!(code, 413, "{err}");
    // A bad Idempotency-Key.
    let long = "k".repeat(300);
    let (code, err) = api.call_with(
        "POST",
        "/api/v1/servers",
        Some(ok.clone()),
        &[("Idempotency-Key", long.as_str())],
    );
    assert_eq!(code, 400);
    assert_eq!(err["error"]["field"], "Idempotency-Key");

    let conn = support::open_db(&api.served.data_dir);
    let n: i64 = conn
        .query_row("SELECT count(*) FROM servers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 0, "nothing created");
    let j: i64 = conn
        .query_row(
            "SELECT count(*) FROM jobs WHERE kind LIKE 'server.%'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(j, 0, "no job queued");
    // A name that is taken is a conflict on that field.
    let (code, _) = api.call("POST", "/api/v1/servers", Some(ok.clone()));
    assert_eq!(code, 202);
    let (code, err) = api.call("POST", "/api/v1/servers", Some(ok));
    assert_eq!(code, 409);
    assert_eq!(err["error"]["field"], "name");
}

#[test]
fn concurrent_creates_with_one_key_make_one_server_and_distinct_keys_get_distinct_resources() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // No agent can start here: provisioning fails fast and spawns nothing; what is
    // measured is creation (rows, jobs, VMIDs, ports), not provisioning.
    let served = Served::start_with_env(
        tmp.path(),
        &data,
        &[],
        &[
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_AGENT_BINARY", "/nonexistent/zlh"),
        ],
    );
    let mut api = Api::start_on(tmp.path(), served);
    // Room for 101 servers on the local node (placement refuses what does not fit).
    support::open_db(&data)
        .execute(
            "UPDATE nodes SET memory_mb = 1000000 WHERE name = 'local'",
            [],
        )
        .unwrap();
    let url = api.served.url("/api/v1/servers");
    let token = api.token.clone();
    let client = api.http.inner.clone();
    let post = move |body: Value, key: String| {
        let (client, url, token) = (client.clone(), url.clone(), token.clone());
        async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .header("Idempotency-Key", key)
                .json(&body)
                .send()
                .await
                .unwrap();
            let code = resp.status().as_u16();
            (code, resp.json::<Value>().await.unwrap())
        }
    };
    let same = json!({"name": "same", "template": "standin", "version": "1.0", "eula": true});
    let results: Vec<(u16, Value)> = api.http.rt.block_on(async {
        let tasks: Vec<_> = (0..100)
            .map(|_| tokio::spawn(post(same.clone(), "key-same".into())))
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let ids: std::collections::BTreeSet<i64> = results
        .iter()
        .map(|(code, b)| {
            assert_eq!(*code, 202, "{b}");
            b["server"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 1, "100 identical requests, one server");
    let jobs: std::collections::BTreeSet<i64> = results
        .iter()
        .map(|(_, b)| b["job"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(jobs.len(), 1, "and one job");
    let (code, err) = api.http.rt.block_on(post(
        json!({"name": "other", "template": "standin", "version": "1.0", "eula": true}),
        "key-same".into(),
    ));
    assert_eq!(code, 409, "{err}");

    let results: Vec<(u16, Value)> = api.http.rt.block_on(async {
        let tasks: Vec<_> = (0..100)
            .map(|i| {
                tokio::spawn(post(
                    json!({"name": format!("srv-{i}"), "template": "standin", "version": "1.0", "eula": true}),
                    format!("key-{i}"),
                ))
            })
            .collect();
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.unwrap());
        }
        out
    });
    let mut vmids = std::collections::BTreeSet::new();
    let mut ports = std::collections::BTreeSet::new();
    for (code, b) in &results {
        assert_eq!(*code, 202, "{b}");
        assert!(
            vmids.insert(b["server"]["vmid"].as_i64().unwrap()),
            "VMID reused"
        );
        assert!(
            ports.insert(b["server"]["game_port"].as_i64().unwrap()),
            "port reused"
        );
    }
    assert_eq!(vmids.len(), 100);
    let conn = support::open_db(&data);
    let (servers, agent_ports, allocations): (i64, i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM servers), (SELECT count(DISTINCT agent_port) FROM servers),
                    (SELECT count(*) FROM port_allocations)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(servers, 101);
    assert_eq!(agent_ports, 101);
    assert_eq!(
        allocations, 202,
        "a game and an agent port each, none shared"
    );
    let provision_jobs: i64 = conn
        .query_row(
            "SELECT count(*) FROM jobs WHERE kind = 'server.provision'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(provision_jobs, 101);
    api.served.keep_agents = false;
}

#[test]
fn other_users_servers_are_not_found_and_placement_prefers_free_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let served = Served::start_with_env(
        tmp.path(),
        &data,
        &[],
        &[
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_AGENT_BINARY", "/nonexistent/zlh"),
        ],
    );
    let api = Api::start_on(tmp.path(), served);
    // A second node with more free memory than the local one: new servers go there.
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(json!({
            "name": "roomy", "kind": "proxmox", "memory_mb": 10_000_000,
            "settings": {
                "api_url": "http://127.0.0.1:9", "token_id": "zlh@pve!ctl",
                "token_secret": "s", "node": "pve1", "template_vmid": 900,
                "bootstrap_token": "b", "allow_loopback": true, "allow_insecure_http": true
            }
        })),
    );
    assert_eq!(code, 201, "{body}");
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "placed", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(
        body["server"]["node"], "roomy",
        "the node with the most free memory"
    );
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "pinned", "template": "standin", "version": "1.0", "eula": true, "node": "local"})),
    );
    assert_eq!(code, 202, "{body}");
    assert_eq!(body["server"]["node"], "local", "a named node wins");
    let id = body["server"]["id"].as_i64().unwrap();
    // A hostname as a node's API URL is refused, naming the setting.
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(json!({
            "name": "byname", "kind": "proxmox", "memory_mb": 1000,
            "settings": {
                "api_url": "https://pve.example.com:8006", "token_id": "zlh@pve!ctl",
                "token_secret": "s", "node": "pve1", "template_vmid": 900, "bootstrap_token": "b"
            }
        })),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "settings.api_url");

    // Another (non-admin) user sees none of it.
    let out = support::zlh(tmp.path())
        .args(["user", "add", "bob", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(out.status.success());
    let out = support::zlh(tmp.path())
        .args(["token", "create", "--user", "bob", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let bob = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let as_bob = |method: &str, path: &str| -> (u16, Value) {
        api.http.rt.block_on(async {
            let r = api
                .http
                .inner
                .request(method.parse().unwrap(), api.served.url(path))
                .bearer_auth(&bob)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.json().await.unwrap())
        })
    };
    assert_eq!(as_bob("GET", &format!("/api/v1/servers/{id}")).0, 404);
    assert_eq!(
        as_bob("GET", &format!("/api/v1/servers/{id}/events")).0,
        404
    );
    assert_eq!(as_bob("POST", &format!("/api/v1/servers/{id}/stop")).0, 404);
    assert_eq!(as_bob("DELETE", &format!("/api/v1/servers/{id}")).0, 404);
    assert_eq!(as_bob("GET", &format!("/api/v1/servers/{id}/agent")).0, 404);
    assert_eq!(
        as_bob("POST", &format!("/api/v1/servers/{id}/agent/upgrade")).0,
        403,
        "agent upgrades are for admins"
    );
    assert_eq!(as_bob("POST", "/api/v1/nodes/1/agents/upgrade").0, 403);
    let (code, list) = as_bob("GET", "/api/v1/servers");
    assert_eq!(code, 200);
    assert_eq!(list["servers"], json!([]));
    assert_eq!(
        as_bob("GET", "/api/v1/jobs").0,
        403,
        "the queue is for admins"
    );
    assert_eq!(
        api.server(id)["desired_state"],
        "running",
        "bob changed nothing"
    );
}

#[test]
fn a_local_agent_port_held_by_another_process_is_named_then_retried() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    // The pool's first two ports go to the first server: game, then agent.
    let window: u16 = std::fs::read_to_string(api.served.data_dir.with_extension("ports"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let squatter = std::net::TcpListener::bind(("127.0.0.1", window + 1)).unwrap();
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "squat", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    assert_eq!(body["server"]["game_port"], window);
    let job = body["job"]["id"].as_i64().unwrap();
    support::wait_for(
        "the error naming the port",
        std::time::Duration::from_secs(30),
        || {
            let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
            j["job"]["errors"]
                .to_string()
                .contains(&format!(
                    "127.0.0.1:{} of server {id} is in use by another process",
                    window + 1
                ))
                .then_some(())
        },
    );
    drop(squatter);
    let s = api.wait_status(id, "running");
    assert_eq!(s["ready"], true);
}

/// The list reads its rows straight from the database (payload and checkpoints as
/// stored text) while one server is read through the domain: both show a server the
/// same way, secrets blanked.
#[test]
fn the_list_shows_each_server_as_its_detail_does() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "listed", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    api.wait_status(id, "running");
    let (_, mut detail) = api.call("GET", &format!("/api/v1/servers/{id}"), None);
    let (_, page) = api.call("GET", "/api/v1/servers?limit=10", None);
    detail.as_object_mut().unwrap().remove("edge");
    assert_eq!(page["servers"][0], detail);
    let payload = &page["servers"][0]["payload"];
    assert_eq!(payload["agent_token"], "********", "{payload}");
    assert!(page["servers"][0]["checkpoints"].is_object());
}
