//! Agent upgrades (issue 19, item 5), on the local runtime: agents that run an older
//! build (a copy of this `zlh` with its commit string patched) are reported by the API,
//! `zlh doctor` and the UI; "upgrade" has each agent download this zlh's binary from
//! `/install/zlh`, verify it and restart into it. The game cannot survive the agent's
//! re-exec (see `src/agentd/upgrade.rs`), so the documented fallback is shown: the
//! upgrade waits while a player is online, says so on the server's timeline, and happens
//! once the server is empty (or, on the simulated Proxmox node, once the operator stops
//! it: the waiting job leaves the server's lane free); the game then runs again under
//! the upgraded agent.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::api::Api;
use crate::support::{BIN, Served, wait_for, zlh};
use serde_json::{Value, json};

/// `zlh --version`'s commit, e.g. "ship0000dev1" from "zlh 0.1.0 (commit ship0000dev1)".
fn commit_of(bin: &Path) -> String {
    let out = std::process::Command::new(bin)
        .arg("--version")
        .output()
        .expect("zlh --version");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split("(commit ")
        .nth(1)
        .and_then(|r| r.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {text:?}"))
        .to_string()
}

/// A copy of this zlh that reports another build: every occurrence of the commit
/// string replaced by one of the same length.
fn older_copy(dir: &Path) -> (PathBuf, String) {
    let commit = commit_of(Path::new(BIN.as_str()));
    let older: String = commit
        .chars()
        .map(|c| if c == '0' { '1' } else { '0' })
        .collect();
    let mut bytes = std::fs::read(BIN.as_str()).expect("reading zlh");
    let (from, to) = (commit.as_bytes(), older.as_bytes());
    let mut patched = 0;
    let mut i = 0;
    while i + from.len() <= bytes.len() {
        if &bytes[i..i + from.len()] == from {
            bytes[i..i + from.len()].copy_from_slice(to);
            patched += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(patched > 0, "the commit string is in the binary");
    let path = dir.join("zlh-older");
    std::fs::write(&path, bytes).unwrap();
    std::fs::set_permissions(
        &path,
        <std::fs::Permissions as std::os::unix::fs::PermissionsExt>::from_mode(0o755),
    )
    .unwrap();
    assert_eq!(commit_of(&path), older, "the copy reports the older build");
    (path, older)
}

fn shots_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots")
}

fn events(api: &Api, id: i64) -> Vec<String> {
    let (code, body) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
    assert_eq!(code, 200, "{body}");
    body["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect()
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

#[test]
fn older_agents_are_reported_then_upgraded_waiting_for_an_empty_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (older_bin, older) = older_copy(tmp.path());
    let served = Served::start_with_env(
        tmp.path(),
        &tmp.path().join("data"),
        &[],
        &[
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_AGENT_BINARY", older_bin.to_str().unwrap()),
            ("ZLH_RECONCILE_SECS", "1"),
        ],
    );
    let api = Api::start_on(tmp.path(), served);
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "olden", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    let vmid = body["server"]["vmid"].as_i64().unwrap();
    api.wait_status(id, "running");
    let dir = api.served.data_dir.join("servers").join(vmid.to_string());
    let game_pid = read_pid(&dir.join("agent/game.pid")).expect("the game's pid");
    let agent_pid = read_pid(&dir.join("agent.pid")).expect("the agent's pid");

    // The reconciler learns the agent's version: the API, doctor and UI say it is older.
    let current = commit_of(Path::new(BIN.as_str()));
    let agent = wait_for("the agent's version", Duration::from_secs(30), || {
        let (_, a) = api.call("GET", &format!("/api/v1/servers/{id}/agent"), None);
        (a["outdated"] == true).then_some(a)
    });
    assert!(
        agent["version"].as_str().unwrap().contains(&older),
        "{agent}"
    );
    assert!(
        agent["current"].as_str().unwrap().contains(&current),
        "{agent}"
    );
    let (code, doctor) = api.call("GET", "/api/v1/doctor", None);
    assert_eq!(code, 200, "{doctor}");
    let finding = doctor["report"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["check"] == "agent_version")
        .unwrap_or_else(|| panic!("an agent_version finding: {doctor}"))
        .clone();
    assert!(
        finding["subject"].as_str().unwrap().contains("olden"),
        "{finding}"
    );
    assert!(
        finding["detail"].as_str().unwrap().contains(&older),
        "{finding}"
    );
    let cli = zlh(tmp.path())
        .args(["doctor", "--data-dir"])
        .arg(&api.served.data_dir)
        .output()
        .unwrap();
    let cli_text = String::from_utf8_lossy(&cli.stdout);
    assert!(
        cli_text.contains("agent_version") && cli_text.contains(&older),
        "{cli_text}"
    );
    let (code, nodes_page) = support::ui_get(&api.served, "/nodes");
    assert_eq!(code, 200);
    assert!(nodes_page.contains("1 older than this zlh"), "{nodes_page}");
    assert!(nodes_page.contains("Upgrade agents"));
    let (code, server_page) = support::ui_get(&api.served, &format!("/servers/{id}"));
    assert_eq!(code, 200);
    assert!(
        server_page.contains("another version than this zlh"),
        "{server_page}"
    );

    // A player is online: the upgrade downloads, then waits, and says so.
    let players = dir.join("agent/server/standin-players");
    std::fs::write(&players, "1").unwrap();
    // From the server page's button (screenshots of both pages on the way), then the
    // API asks again and gets the same job.
    let session = support::ui_session(&api.served);
    let b = support::browser::Browser::start(&shots_dir());
    b.goto(&api.served.url("/login"));
    b.cmd(
        "POST",
        "/cookie",
        Some(json!({"cookie": {"name": "zlh_session", "value": session.split_once('=').unwrap().1, "path": "/"}})),
        "setting the session cookie",
    );
    b.goto(&api.served.url("/nodes"));
    assert!(b.page_source().contains("1 older than this zlh"));
    b.screenshot("agent-upgrade-nodes");
    b.goto(&api.served.url(&format!("/servers/{id}")));
    b.execute(
        "document.getElementById('h-agent').scrollIntoView();",
        vec![],
    );
    b.screenshot("agent-upgrade-server");
    b.find("#upgrade-agent").click();
    let job = wait_for("the job of the button", Duration::from_secs(30), || {
        let (_, jobs) = api.call("GET", "/api/v1/jobs?kind=server.agent_upgrade", None);
        jobs["jobs"].as_array()?.first()?["id"].as_i64()
    });
    let (code, again) = api.call("POST", &format!("/api/v1/servers/{id}/agent/upgrade"), None);
    assert_eq!(code, 202, "{again}");
    assert_eq!(
        again["job"]["id"], job,
        "one upgrade job per server (unique key)"
    );
    wait_for(
        "the upgrade to say it waits",
        Duration::from_secs(60),
        || {
            events(&api, id)
                .iter()
                .any(|m| m.contains("waiting: 1 player online"))
                .then_some(())
        },
    );
    let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
    assert!(
        matches!(
            j["job"]["state"].as_str(),
            Some("running" | "scheduled" | "available")
        ),
        "the job is not done while it waits: {j}"
    );
    assert_eq!(j["job"]["lane"], format!("server:{id}"), "{j}");
    // It waits with its lane free (snoozing), so a stop is not stuck behind it.
    wait_for("the upgrade job to snooze", Duration::from_secs(30), || {
        let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
        (j["job"]["state"] == "scheduled").then_some(())
    });
    assert_eq!(
        read_pid(&dir.join("agent/game.pid")),
        Some(game_pid),
        "the game keeps running while a player is online"
    );

    // The server empties: the upgrade happens, the game comes back under the new agent.
    std::fs::write(&players, "0").unwrap();
    let done = wait_for(
        "the upgrade job to finish",
        Duration::from_secs(120),
        || {
            let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
            matches!(
                j["job"]["state"].as_str(),
                Some("completed" | "discarded" | "cancelled")
            )
            .then_some(j)
        },
    );
    assert_eq!(done["job"]["state"], "completed", "{done}");
    let (_, a) = api.call("GET", &format!("/api/v1/servers/{id}/agent"), None);
    assert_eq!(a["outdated"], false, "{a}");
    assert!(a["version"].as_str().unwrap().contains(&current), "{a}");
    let log = events(&api, id);
    assert!(
        log.iter().any(|m| m.starts_with("agent upgraded:")
            && m.contains(&older)
            && m.contains("ready again")),
        "{log:?}"
    );
    assert_eq!(api.server(id)["status"], "running");
    // The agent restarted in place (same process, the new binary in its own directory);
    // the game is a new process (the fallback), answering its ping.
    assert_eq!(read_pid(&dir.join("agent.pid")), Some(agent_pid));
    assert_eq!(
        std::fs::read_link(format!("/proc/{agent_pid}/exe")).unwrap(),
        dir.join("zlh")
    );
    let new_game = read_pid(&dir.join("agent/game.pid")).expect("the game runs again");
    assert_ne!(new_game, game_pid);
    let port = api.server(id)["game_port"].as_i64().unwrap();
    assert!(
        support::api::slp(port).is_some(),
        "the game answers its ping"
    );
    // zlh's own binary on disk was not touched.
    assert_eq!(commit_of(&older_bin), older);

    // Per node: everything is current now, so each job only says so.
    let (code, body) = api.call("POST", "/api/v1/nodes/1/agents/upgrade", None);
    assert_eq!(code, 202, "{body}");
    let jobs: Vec<Value> = body["jobs"].as_array().unwrap().clone();
    assert_eq!(jobs.len(), 1, "{body}");
    let node_job = jobs[0]["job"]["id"].as_i64().unwrap();
    wait_for("the node's upgrade job", Duration::from_secs(60), || {
        let (_, j) = api.call("GET", &format!("/api/v1/jobs/{node_job}"), None);
        (j["job"]["state"] == "completed").then_some(())
    });
    assert!(
        events(&api, id)
            .iter()
            .any(|m| m.contains("the agent already runs")),
        "{:?}",
        events(&api, id)
    );
    // The same from the command line.
    let out = zlh(tmp.path())
        .args(["node", "upgrade-agents", "local", "--data-dir"])
        .arg(&api.served.data_dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("1 agent upgrade job(s) queued on node 'local'"),
        "{text}"
    );
    let cli_job: i64 = text
        .rsplit("job ")
        .next()
        .and_then(|j| j.trim().parse().ok())
        .unwrap_or_else(|| panic!("a job id in {text}"));
    wait_for("the CLI's upgrade job", Duration::from_secs(60), || {
        let (_, j) = api.call("GET", &format!("/api/v1/jobs/{cli_job}"), None);
        (j["job"]["state"] == "completed").then_some(())
    });
    let (_, doctor) = api.call("GET", "/api/v1/doctor", None);
    assert!(
        !doctor["report"]["findings"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f["check"] == "agent_version"),
        "{doctor}"
    );
}

/// The agent's listen address from its command line (`--listen 127.0.0.1:PORT`).
fn agent_listen(pid: i32) -> String {
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    let args: Vec<String> = cmdline
        .split(|b| *b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let at = args.iter().position(|a| a == "--listen").unwrap();
    args[at + 1].clone()
}

#[test]
fn an_agent_without_upgrade_fails_the_job_and_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "plain", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    let vmid = body["server"]["vmid"].as_i64().unwrap();
    api.wait_status(id, "running");
    let dir = api.served.data_dir.join("servers").join(vmid.to_string());
    let agent_pid = read_pid(&dir.join("agent.pid")).unwrap();
    let listen = agent_listen(agent_pid);
    let token = std::fs::read_to_string(dir.join("agent/token"))
        .unwrap()
        .trim()
        .to_string();

    // The original agent's contract only: its status as it is, an old version, and no
    // /upgrade (axum's 404). It takes over the real agent's port.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status: Value = rt.block_on(async {
        reqwest::Client::new()
            .get(format!("http://{listen}/status"))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    });
    // SAFETY: kill(2) on the agent this test's zlh started.
    unsafe {
        libc::kill(agent_pid, libc::SIGKILL);
    }
    let listener = wait_for(
        "the agent's port to be free",
        Duration::from_secs(30),
        || std::net::TcpListener::bind(&listen).ok(),
    );
    listener.set_nonblocking(true).unwrap();
    let app = axum::Router::new()
        .route("/health", axum::routing::get(|| async { "ok\n" }))
        .route(
            "/status",
            axum::routing::get(move || {
                let s = status.clone();
                async move { axum::Json(s) }
            }),
        )
        .route(
            "/version",
            axum::routing::get(|| async { axum::Json(json!({"version": "0.0.9"})) }),
        );
    rt.spawn(async move {
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        axum::serve(listener, app).await.unwrap();
    });

    let (code, body) = api.call("POST", &format!("/api/v1/servers/{id}/agent/upgrade"), None);
    assert_eq!(code, 202, "{body}");
    let job = body["job"]["id"].as_i64().unwrap();
    let done = wait_for("the upgrade job to end", Duration::from_secs(60), || {
        let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
        matches!(j["job"]["state"].as_str(), Some("discarded" | "completed")).then_some(j)
    });
    assert_eq!(done["job"]["state"], "discarded", "{done}");
    assert!(
        done["job"]["errors"]
            .to_string()
            .contains("has no POST /upgrade"),
        "{done}"
    );
    assert!(
        events(&api, id)
            .iter()
            .any(|m| m.contains("(0.0.9) has no POST /upgrade; nothing was changed")),
        "{:?}",
        events(&api, id)
    );
    let s = api.server(id);
    assert_eq!(s["status"], "running", "the server is not failed: {s}");
}

#[test]
fn a_proxmox_nodes_agents_are_upgraded_one_job_each() {
    use support::pve_sim::{PveSim, SimOptions};
    let tmp = tempfile::tempdir().unwrap();
    let (older_bin, older) = older_copy(tmp.path());
    // The node's base template carries the older build.
    let sim = PveSim::with(SimOptions {
        agent_binary: Some(older_bin.clone()),
        ..Default::default()
    });
    let served = Served::start_with_env(
        tmp.path(),
        &tmp.path().join("data"),
        &[],
        &[
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_RECONCILE_SECS", "1"),
        ],
    );
    let api = Api::start_on(tmp.path(), served);
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
    let node = body["node"]["id"].as_i64().unwrap();
    let mut servers = Vec::new();
    for name in ["busy", "empty"] {
        let (code, body) = api.call(
            "POST",
            "/api/v1/servers",
            Some(json!({"name": name, "template": "standin", "version": "1.0", "eula": true, "node": "pve"})),
        );
        assert_eq!(code, 202, "{body}");
        servers.push((
            body["server"]["id"].as_i64().unwrap(),
            body["server"]["vmid"].as_i64().unwrap(),
        ));
    }
    for (id, _) in &servers {
        api.wait_status(*id, "running");
    }
    for (id, _) in &servers {
        wait_for(
            "the older agent to be reported",
            Duration::from_secs(30),
            || {
                let (_, a) = api.call("GET", &format!("/api/v1/servers/{id}/agent"), None);
                (a["outdated"] == true && a["version"].as_str()?.contains(&older)).then_some(())
            },
        );
    }
    let agent_pids: Vec<Option<u32>> = servers.iter().map(|(_, v)| sim.agent_pid(*v)).collect();
    let (busy, busy_vmid) = servers[0];
    let (empty, _) = servers[1];
    let busy_players = sim.ct_dir(busy_vmid).join("server/standin-players");
    std::fs::write(&busy_players, "2").unwrap();
    let busy_game = read_pid(&sim.ct_dir(busy_vmid).join("game.pid")).expect("busy's game");

    let (code, body) = api.call(
        "POST",
        &format!("/api/v1/nodes/{node}/agents/upgrade"),
        None,
    );
    assert_eq!(code, 202, "{body}");
    let jobs: Vec<(i64, i64)> = body["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| {
            (
                j["server_id"].as_i64().unwrap(),
                j["job"]["id"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(jobs.len(), 2, "one job per server: {body}");
    assert_eq!(body["outdated"].as_array().unwrap().len(), 2, "{body}");
    let job_of = |sid: i64| jobs.iter().find(|(s, _)| *s == sid).unwrap().1;
    let state = |job: i64| {
        let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
        assert_eq!(
            j["job"]["lane"],
            format!("server:{}", j["job"]["payload"]["server_id"])
        );
        j["job"]["state"].as_str().unwrap_or_default().to_string()
    };
    // The empty server is upgraded; the busy one waits and says so.
    wait_for(
        "the empty server's upgrade",
        Duration::from_secs(120),
        || (state(job_of(empty)) == "completed").then_some(()),
    );
    wait_for(
        "the busy server's upgrade to wait",
        Duration::from_secs(60),
        || {
            events(&api, busy)
                .iter()
                .any(|m| m.contains("waiting: 2 players online"))
                .then_some(())
        },
    );
    assert!(matches!(
        state(job_of(busy)).as_str(),
        "running" | "scheduled" | "available"
    ));
    assert_eq!(
        read_pid(&sim.ct_dir(busy_vmid).join("game.pid")),
        Some(busy_game),
        "the busy game is left alone"
    );
    assert!(
        events(&api, busy)
            .iter()
            .all(|m| !m.starts_with("agent upgraded")),
        "not yet"
    );
    // The operator stops the busy server: the stop is not stuck behind the waiting
    // upgrade (it snoozes with the lane free), and the upgrade then happens.
    let (code, body) = api.call("POST", &format!("/api/v1/servers/{busy}/stop"), None);
    assert_eq!(code, 202, "{body}");
    api.wait_status(busy, "stopped");
    wait_for(
        "the busy server's upgrade",
        Duration::from_secs(120),
        || (state(job_of(busy)) == "completed").then_some(()),
    );

    // Every agent reports this zlh's build, in the same process, and every game runs.
    let current = commit_of(Path::new(BIN.as_str()));
    for (i, (id, vmid)) in servers.iter().enumerate() {
        let (_, a) = api.call("GET", &format!("/api/v1/servers/{id}/agent"), None);
        assert_eq!(a["outdated"], false, "{a}");
        assert!(a["version"].as_str().unwrap().contains(&current), "{a}");
        assert_eq!(
            sim.agent_pid(*vmid),
            agent_pids[i],
            "the agent restarted in place"
        );
        // The stopped server stays stopped; the other one is ready again.
        let (status, upgraded) = if *id == busy {
            ("stopped", "agent upgraded: ")
        } else {
            ("running", "; the game is ready again")
        };
        assert_eq!(api.server(*id)["status"], status);
        assert!(
            events(&api, *id)
                .iter()
                .any(|m| m.starts_with("agent upgraded:") && m.contains(upgraded)),
            "{:?}",
            events(&api, *id)
        );
    }
    // The agents replaced their own executable (the base template's binary).
    assert_eq!(commit_of(&older_bin), current);
}
