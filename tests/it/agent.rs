//! `zlh agent` through its real HTTP contract: a real agent process, a stand-in
//! Minecraft server (tests/support/standin_game.py) served as the "server jar" by a
//! stand-in artifact server, real status pings.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::fileserver::{self, Files, sha256_hex};
use crate::support::{free_port, wait_for_async, zlh};
use futures_util::StreamExt;
use serde_json::{Value, json};
use zlh::agent::client::{AgentClient, AgentClientError};
use zlh::agent::{AgentState, AgentStatus};

const TOKEN: &str = "test-bootstrap-token-0123456789";
const STANDIN: &str = include_str!("../support/standin_game.py");
const JAR: &str = "minecraft/vanilla/1.21.4/server.jar";

struct Agent {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    files: Files,
    artifacts: String,
    game_port: u16,
    client: AgentClient,
    _tmp: tempfile::TempDir,
}

impl Agent {
    /// A fresh agent dir, artifact server (holding the stand-in as the server jar) and agent.
    fn start() -> Agent {
        let tmp = tempfile::tempdir().unwrap();
        let (artifacts, files) = fileserver::start();
        files.put(JAR, STANDIN);
        let port = free_port();
        let mut agent = Agent {
            child: None,
            port,
            dir: tmp.path().join("agent"),
            files,
            artifacts,
            game_port: free_port(),
            client: AgentClient::new(format!("http://127.0.0.1:{port}"), TOKEN, "test agent"),
            _tmp: tmp,
        };
        agent.spawn();
        agent
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self._tmp.path().join("agent.log"))
            .unwrap();
        let child = zlh(self._tmp.path())
            .args([
                "agent",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--crash-backoff",
                "100ms,200ms,300ms",
                "--stable-uptime",
                "20s",
                "--stop-timeout",
                "3s",
                "--term-timeout",
                "2s",
                "--probe-interval",
                "100ms",
                "--dir",
            ])
            .arg(&self.dir)
            .env("ZLH_AGENT_TOKEN", TOKEN)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
    }

    async fn wait_up(&self) {
        let c = self.client.clone();
        wait_for_async(
            "the agent to answer /health",
            Duration::from_secs(20),
            || {
                let c = c.clone();
                async move { c.health().await.ok() }
            },
        )
        .await;
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            unsafe {
                libc::kill(c.id() as i32, libc::SIGKILL);
            }
            let _ = c.wait();
        }
    }

    /// A payload for the stand-in on this agent's game port.
    fn payload(&self, install_id: &str) -> Value {
        json!({
            "vmid": 5001,
            "container_type": "game",
            "game": "minecraft",
            "variant": "vanilla",
            "version": "1.21.4",
            "ports": [self.game_port],
            "artifact_path": JAR,
            "artifact_sha256": sha256_hex(STANDIN.as_bytes()),
            "memory_mb": 1024,
            "install_id": install_id,
            "eula": true,
            "properties": {"server-port": self.game_port.to_string(), "motd": "zlh test"},
            "start_command": "python3 {jar}",
            "readiness": {"type": "minecraft_ping", "port": self.game_port},
            "services": {"ARTIFACT_SERVER": self.artifacts},
            "env": {"STANDIN_LOAD_MS": "700"},
        })
    }

    async fn configure(&self, payload: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(format!("http://127.0.0.1:{}/config", self.port))
            .bearer_auth(TOKEN)
            .json(payload)
            .send()
            .await
            .unwrap()
    }

    async fn wait_status(&self, what: &str, pred: impl Fn(&AgentStatus) -> bool) -> AgentStatus {
        let c = self.client.clone();
        wait_for_async(what, Duration::from_secs(30), || {
            let c = c.clone();
            let pred = &pred;
            async move { c.status().await.ok().filter(|s| pred(s)) }
        })
        .await
    }

    fn server_dir(&self) -> PathBuf {
        self.dir.join("server")
    }

    fn starts(&self) -> usize {
        std::fs::read_to_string(self.server_dir().join("world/standin-starts.log"))
            .map(|s| s.lines().count())
            .unwrap_or(0)
    }

    fn console_log(&self) -> String {
        std::fs::read_to_string(self.dir.join("logs/console.log")).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.kill9();
        // The game dies with its agent (parent-death signal); make sure anyway.
        if let Some(pid) = std::fs::read_to_string(self.dir.join("game.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
        {
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

fn is_running_ready(s: &AgentStatus) -> bool {
    s.state == AgentState::Running && s.ready
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_start_ready_then_stop_through_stdin() {
    let agent = Agent::start();
    agent.wait_up().await;
    let resp = agent.configure(&agent.payload("install-1")).await;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body, json!({"ok": true, "state": "installing"}));

    let s = agent
        .wait_status("running and ready", is_running_ready)
        .await;
    assert!(s.process_running);
    assert_eq!(s.ready_source.as_deref(), Some("minecraft_ping"));
    assert!(s.last_ready_at.is_some());
    assert_eq!(s.install_id.as_deref(), Some("install-1"));
    assert_eq!(s.install_count, 1);
    // Ready came from a real status answer, which the stand-in gives only once loaded.
    assert!(
        agent.console_log().contains("Done ("),
        "{}",
        agent.console_log()
    );
    let status = zlh::agent::slp::status(
        format!("127.0.0.1:{}", agent.game_port).parse().unwrap(),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(status["description"]["text"], "zlh test");
    // Seeded before the first start.
    let props = std::fs::read_to_string(agent.server_dir().join("server.properties")).unwrap();
    assert!(props.contains(&format!("server-port={}", agent.game_port)));
    assert!(
        std::fs::read_to_string(agent.server_dir().join("eula.txt"))
            .unwrap()
            .contains("eula=true")
    );

    agent.client.stop().await.unwrap();
    let s = agent.client.status().await.unwrap();
    assert_eq!(s.state, AgentState::Stopped);
    assert!(!s.process_running && !s.ready);
    let log = agent.console_log();
    assert!(
        log.contains("> stop") || log.contains("Stopping the server"),
        "{log}"
    );
    assert!(
        log.contains("the game stopped (exit code 0)"),
        "stopped by its stop command: {log}"
    );
    assert!(!log.contains("SIGTERM"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_install_id_twice_installs_once_and_a_new_one_keeps_the_world() {
    let agent = Agent::start();
    agent.wait_up().await;
    let p = agent.payload("install-1");
    assert_eq!(agent.configure(&p).await.status(), 202);
    agent.wait_status("running", is_running_ready).await;
    let again = agent.configure(&p).await;
    assert_eq!(again.status(), 202);
    let body: Value = again.json().await.unwrap();
    assert_eq!(
        body["state"], "running",
        "the current state, not a reinstall"
    );
    let s = agent.client.status().await.unwrap();
    assert_eq!(s.install_count, 1);
    assert_eq!(agent.starts(), 1);
    assert_eq!(agent.files.downloads(JAR), 1);

    // Mark the world, then reinstall with a new id: new install, same world.
    let marker = agent.server_dir().join("world/level.dat");
    std::fs::write(&marker, b"precious world").unwrap();
    assert_eq!(
        agent.configure(&agent.payload("install-2")).await.status(),
        202
    );
    agent
        .wait_status("reinstalled and running", |s| {
            is_running_ready(s) && s.install_count == 2
        })
        .await;
    assert_eq!(std::fs::read(&marker).unwrap(), b"precious world");
    assert_eq!(agent.starts(), 2);
    assert_eq!(agent.files.downloads(JAR), 1, "cached by hash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_game_is_restarted_with_backoff_then_the_agent_gives_up() {
    let agent = Agent::start();
    agent.wait_up().await;
    let mut p = agent.payload("install-1");
    p["env"]["STANDIN_CRASH_AFTER_MS"] = json!("50");
    p["env"]["STANDIN_LOAD_MS"] = json!("100");
    agent.configure(&p).await;
    let s = agent
        .wait_status("the agent to give up", |s| s.state == AgentState::Error)
        .await;
    // 3 restarts allowed by the backoff list: 4 runs, 4 crashes.
    assert_eq!(s.crash_count, 4);
    assert_eq!(agent.starts(), 4);
    let crash = s.last_crash.unwrap();
    assert_eq!(crash.exit_code, Some(1));
    assert!(
        crash.log_tail.iter().any(|l| l.contains("Exception")),
        "{:?}",
        crash.log_tail
    );
    assert!(s.error.unwrap().contains("crashed 4 times in a row"));
    assert!(!s.process_running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tampered_artifact_fails_with_a_sha256_error_and_nothing_starts() {
    let agent = Agent::start();
    agent.wait_up().await;
    agent
        .files
        .put(JAR, "print('not the server you are looking for')");
    agent.configure(&agent.payload("install-1")).await;
    let s = agent
        .wait_status("install to fail", |s| s.state == AgentState::Error)
        .await;
    let err = s.error.unwrap();
    assert!(
        err.contains("sha256 mismatch for minecraft/vanilla/1.21.4/server.jar"),
        "{err}"
    );
    assert!(!s.process_running);
    assert!(
        !agent.server_dir().join("server.jar").exists(),
        "nothing installed"
    );
    assert_eq!(agent.starts(), 0);
    assert!(
        !agent
            .dir
            .join("cache")
            .join(sha256_hex(STANDIN.as_bytes()))
            .exists()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_eula_acceptance_the_install_stops_with_a_clear_error() {
    let agent = Agent::start();
    agent.wait_up().await;
    let mut p = agent.payload("install-1");
    p["eula"] = json!(false);
    agent.configure(&p).await;
    let s = agent
        .wait_status("install to fail", |s| s.state == AgentState::Error)
        .await;
    let error = s.error.unwrap();
    // In the words of the API a user calls, not of the agent's payload.
    assert!(
        error.contains("EULA") && error.contains("\"eula\": true") && !error.contains("payload"),
        "{error}"
    );
    assert!(!agent.server_dir().join("eula.txt").exists());
    assert_eq!(agent.starts(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_agent_brings_the_game_back_without_reinstalling() {
    let mut agent = Agent::start();
    agent.wait_up().await;
    agent.configure(&agent.payload("install-1")).await;
    agent.wait_status("running", is_running_ready).await;
    agent.kill9();
    // The game does not outlive its agent.
    let game_port = agent.game_port;
    wait_for_async(
        "the orphaned game to die",
        Duration::from_secs(10),
        || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", game_port))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    agent.spawn();
    agent.wait_up().await;
    let s = agent.wait_status("running again", is_running_ready).await;
    assert_eq!(s.install_count, 1, "no reinstall");
    assert_eq!(agent.starts(), 2);
    assert_eq!(agent.files.downloads(JAR), 1);

    // A stopped game stays stopped across an agent restart.
    agent.client.stop().await.unwrap();
    agent.kill9();
    agent.spawn();
    agent.wait_up().await;
    let s = agent
        .wait_status("stopped after restart", |s| s.state == AgentState::Stopped)
        .await;
    assert!(!s.process_running);
    assert_eq!(agent.starts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_but_health_needs_the_token_and_does_nothing_without_it() {
    let agent = Agent::start();
    agent.wait_up().await;
    let base = format!("http://127.0.0.1:{}", agent.port);
    let http = reqwest::Client::new();
    let routes = [
        ("GET", "/ready"),
        ("GET", "/status"),
        ("POST", "/config"),
        ("POST", "/start"),
        ("POST", "/stop"),
        ("POST", "/restart"),
        ("POST", "/console/command"),
        ("GET", "/console/stream"),
        ("GET", "/version"),
        ("GET", "/upgrade"),
        ("POST", "/upgrade"),
    ];
    for (method, path) in routes {
        for token in [None, Some("wrong-token"), Some("")] {
            let mut req = http.request(method.parse().unwrap(), format!("{base}{path}"));
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            if path == "/config" {
                req = req.json(&agent.payload("sneaky"));
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 401, "{method} {path} with token {token:?}");
        }
    }
    assert_eq!(
        http.get(format!("{base}/health"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert!(
        !agent.dir.join("payload.json").exists(),
        "nothing was configured"
    );
    let s = agent.client.status().await.unwrap();
    assert_eq!(s.state, AgentState::Idle);
    // The client names the agent when its token is refused.
    let bad = AgentClient::new(
        format!("http://127.0.0.1:{}", agent.port),
        "nope",
        "agent of server 9",
    );
    let err = bad.status().await.unwrap_err();
    assert!(matches!(err, AgentClientError::Unauthorized { .. }));
    assert!(err.to_string().contains("agent of server 9"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_mods_and_proxy_config_are_seeded_before_the_first_start() {
    let agent = Agent::start();
    agent.wait_up().await;
    let api = agent
        .files
        .put("mods/fabric/fabric-api-0.119.2.jar", "fabric api bytes");
    let proxy = agent
        .files
        .put("mods/fabric/FabricProxy-Lite-2.9.0.jar", "proxy lite bytes");
    let toml = "hackOnlineMode = true\nhackEarlySend = false\nhackMessageChain = true\ndisconnectMessage = \"This server requires you to connect through the proxy.\"\nsecret = \"s3cr3t-forwarding\"";
    let mut p = agent.payload("install-1");
    p["variant"] = json!("fabric");
    p["forwarding_secret"] = json!("s3cr3t-forwarding");
    p["mods"] = json!([
        {"path": "mods/fabric/fabric-api-0.119.2.jar", "sha256": api, "destination": "mods/fabric-api.jar"},
        {"path": "mods/fabric/FabricProxy-Lite-2.9.0.jar", "sha256": proxy, "destination": "mods/FabricProxy-Lite.jar"},
    ]);
    p["files"] = json!([{"destination": "config/FabricProxy-Lite.toml", "content": toml}]);
    // The stand-in refuses to start unless these exist with exactly this content.
    p["env"]["STANDIN_REQUIRE_CONTENT"] = json!(format!(
        "mods/fabric-api.jar={api},mods/FabricProxy-Lite.jar={proxy},config/FabricProxy-Lite.toml={}",
        sha256_hex(toml.as_bytes())
    ));
    agent.configure(&p).await;
    let s = agent.wait_status("running", is_running_ready).await;
    assert_eq!(
        s.crash_count, 0,
        "the stand-in found every seeded file on its first start"
    );
    let written = std::fs::read(agent.server_dir().join("config/FabricProxy-Lite.toml")).unwrap();
    assert_eq!(written, toml.as_bytes(), "no trailing newline surprises");
    // The secret is not echoed back by the agent.
    let status = serde_json::to_string(&s).unwrap();
    assert!(!status.contains("s3cr3t"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_commands_reach_stdin_and_the_stream_replays_then_follows() {
    let agent = Agent::start();
    agent.wait_up().await;
    agent.configure(&agent.payload("install-1")).await;
    agent.wait_status("running", is_running_ready).await;

    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        agent.client.console_stream_url(),
    )
    .unwrap();
    req.headers_mut()
        .insert("Authorization", format!("Bearer {TOKEN}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let mut seen = Vec::new();
    // Recent lines first: the start-up log is replayed.
    while !seen.iter().any(|l: &String| l.contains("Done (")) {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        seen.push(msg.into_text().unwrap().to_string());
    }
    agent
        .client
        .console_command("say hello from zlh")
        .await
        .unwrap();
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("the reply to stream in")
            .unwrap()
            .unwrap();
        if msg.into_text().unwrap().contains("[Server] hello from zlh") {
            break;
        }
    }
    // Bad input is refused without touching the game.
    let err = agent
        .client
        .console_command("say a\nstop")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("one non-empty line"), "{err}");
    assert!(agent.client.status().await.unwrap().process_running);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_game_that_ignores_stop_is_terminated_by_signal() {
    let agent = Agent::start();
    agent.wait_up().await;
    let mut p = agent.payload("install-1");
    p["env"]["STANDIN_IGNORE_STOP"] = json!("1");
    agent.configure(&p).await;
    agent.wait_status("running", is_running_ready).await;
    agent.client.stop().await.unwrap();
    let log = agent.console_log();
    assert!(log.contains("sending SIGTERM"), "{log}");
    assert!(log.contains("Stopping server (SIGTERM)"), "{log}");
    let s = agent.client.status().await.unwrap();
    assert_eq!(s.state, AgentState::Stopped);
    assert_eq!(s.crash_count, 0, "a stop is not a crash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_payloads_are_refused_with_400_and_change_nothing() {
    let agent = Agent::start();
    agent.wait_up().await;
    let mut traversal = agent.payload("install-1");
    traversal["files"] = json!([{"destination": "../../etc/evil", "content": "x"}]);
    let mut no_sha = agent.payload("install-1");
    no_sha.as_object_mut().unwrap().remove("artifact_sha256");
    for (body, needle) in [
        (json!({"game": "minecraft"}), "install_id"),
        (traversal, "relative path"),
        (no_sha, "sha256 is required"),
    ] {
        let resp = agent.configure(&body).await;
        assert_eq!(resp.status(), 400);
        let err: Value = resp.json().await.unwrap();
        let msg = err["error"]["message"].as_str().unwrap().to_string();
        assert!(msg.contains(needle), "{msg}");
    }
    assert!(!agent.dir.join("payload.json").exists());
    assert!(!Path::new(&agent.dir).join("server").exists());
}

/// Where `scripts/test-deps.sh` put flying-squid and mcstatus.
fn test_deps() -> PathBuf {
    let dir = std::env::var("ZLH_TEST_DEPS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-deps"));
    assert!(
        dir.join("node_modules/flying-squid/package.json").exists()
            && dir.join("venv/bin/python").exists(),
        "flying-squid and mcstatus are missing in {}: run scripts/test-deps.sh (./scripts/test does)",
        dir.display()
    );
    dir
}

/// The end-to-end check with a Minecraft server this project did not write:
/// flying-squid 1.12 (Minecraft 1.21.4 in Node.js), seeded and run by the agent,
/// confirmed by an independent client (mcstatus).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_minecraft_server_flying_squid_is_seeded_run_and_probed() {
    let deps = test_deps();
    let agent = Agent::start();
    agent.wait_up().await;
    let port = agent.game_port;
    let settings = json!({
        "host": "127.0.0.1", "port": port, "version": "1.21.4", "online-mode": false,
        "max-players": 7, "motd": "zlh e2e flying-squid", "logging": false,
        "worldFolder": "world", "generation": {"name": "superflat", "options": {}},
        "plugins": {}, "everybody-op": false, "view-distance": 2
    })
    .to_string();
    let start = r#"exec node -e 'const fs=require("fs");const s={...require("flying-squid/config/default-settings.json"),...JSON.parse(fs.readFileSync("config/settings.json","utf8"))};const v=require("flying-squid").createMCServer(s);v._server.on("error",e=>{console.error("FATAL "+e.message);process.exit(1)})'"#;
    let payload = json!({
        "game": "minecraft", "variant": "flying-squid", "version": "1.21.4",
        "ports": [port], "install_id": "fs-1", "eula": true,
        "files": [{"destination": "config/settings.json", "content": settings}],
        "start_command": start,
        "readiness": {"type": "minecraft_ping", "port": port},
        "env": {
            "NODE_PATH": deps.join("node_modules").to_string_lossy(),
            "FORCE_COLOR": "0"
        },
    });
    assert_eq!(agent.configure(&payload).await.status(), 202);
    let early = agent.client.status().await.unwrap();
    assert!(
        !early.ready,
        "not ready before the game answers a status ping"
    );
    let s = agent
        .wait_status("flying-squid to be ready", is_running_ready)
        .await;
    assert_eq!(s.ready_source.as_deref(), Some("minecraft_ping"));

    // Our probe and an independent client see the same server.
    let ours = zlh::agent::slp::status(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(3),
    )
    .await
    .unwrap();
    assert_eq!(ours["version"]["name"], "1.21.4");
    let out = std::process::Command::new(deps.join("venv/bin/python"))
        .args([
            "-c",
            "import json,sys; from mcstatus import JavaServer; \
             s = JavaServer.lookup(sys.argv[1]).status(); \
             print(json.dumps({'version': s.version.name, 'protocol': s.version.protocol, \
             'motd': s.motd.to_plain(), 'max': s.players.max}))",
            &format!("127.0.0.1:{port}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "mcstatus: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(theirs["version"], "1.21.4");
    assert_eq!(theirs["protocol"], ours["version"]["protocol"]);
    assert_eq!(theirs["motd"], "zlh e2e flying-squid");
    assert_eq!(theirs["max"], 7);

    agent.client.stop().await.unwrap();
    assert_eq!(
        agent.client.status().await.unwrap().state,
        AgentState::Stopped
    );
    assert!(
        agent
            .console_log()
            .contains("the game stopped (exit code 0)")
    );
}

/// A gzipped tarball holding `jdk-21.0.5+11-jre/bin/java`: a script standing in for
/// Java that runs the "server jar" (the stand-in) the way `java -jar` would.
fn fake_jre_tarball(dir: &Path) -> Vec<u8> {
    let root = dir.join("jre-src");
    let bin = root.join("jdk-21.0.5+11-jre/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let java = bin.join("java");
    // The default start command is `{java} -Xms…M -Xmx…M -jar {jar} nogui`.
    std::fs::write(
        &java,
        "#!/bin/sh\n[ \"$3\" = -jar ] || exit 64\nexec python3 \"$4\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&java, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = dir.join("jre.tar.gz");
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(&out)
        .arg("-C")
        .arg(&root)
        .arg("jdk-21.0.5+11-jre")
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::read(out).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shipped_java_runtime_is_verified_unpacked_and_used_by_the_default_start_command() {
    let agent = Agent::start();
    agent.wait_up().await;
    let tarball = fake_jre_tarball(agent._tmp.path());
    let sha = agent.files.put("java/21/OpenJDK21.tar.gz", tarball);
    let mut p = agent.payload("install-1");
    p.as_object_mut().unwrap().remove("start_command");
    p["java_path"] = json!("java/21/OpenJDK21.tar.gz");
    p["java_sha256"] = json!(sha);
    agent.configure(&p).await;
    agent
        .wait_status("running with the shipped Java", is_running_ready)
        .await;
    let log = agent.console_log();
    assert!(
        log.contains("/runtime/java-") && log.contains("/bin/java -Xms1024M -Xmx1024M -jar"),
        "started through the unpacked runtime: {log}"
    );
    assert_eq!(agent.files.downloads("java/21/OpenJDK21.tar.gz"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn games_without_a_status_protocol_are_ready_on_a_tcp_accept() {
    let agent = Agent::start();
    agent.wait_up().await;
    let mut p = agent.payload("install-1");
    p["readiness"] = json!({"type": "tcp", "port": agent.game_port});
    // The stand-in accepts TCP at once but answers status pings only after 20 s.
    p["env"]["STANDIN_LOAD_MS"] = json!("20000");
    agent.configure(&p).await;
    let s = agent.wait_status("ready by TCP", is_running_ready).await;
    assert_eq!(s.ready_source.as_deref(), Some("tcp"));
    let ping = zlh::agent::slp::status(
        format!("127.0.0.1:{}", agent.game_port).parse().unwrap(),
        Duration::from_millis(300),
    )
    .await;
    assert!(
        ping.is_err(),
        "a Minecraft probe would not have been ready yet"
    );
}
