//! Secrets and files (findings 1, 2, 4, 10): what a game, a file mode, a copied
//! database or an anonymous mirror client can see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::api::Api;
use crate::support::pve_sim::PveSim;
use crate::support::upstream::{self, Upstream, sha256_hex};
use crate::support::{Served, wait_for, zlh};

const FORWARDING_SECRET: &str = "fwd-secret-5e1f0a7d93c2";
const TRAEFIK_TOKEN: &str = "traefik-token-a4b1c9e07f3d";
const DNS_TOKEN: &str = "dns-token-0b7e6c2d91aa";
/// Secrets of a Proxmox node an older version stored in clear.
const OLD_TOKEN_SECRET: &str = "old-token-secret-2c9d4e1f";
const OLD_BOOTSTRAP: &str = "old-bootstrap-token-7a3b5c";

/// A served data dir with secrets configured and one running local server.
struct World {
    // Dropped in this order: the served instance (and its local agents, found
    // through their pid files) before the directory that holds them.
    api: Api,
    pve: PveSim,
    up: Upstream,
    id: i64,
    vmid: i64,
    tmp: tempfile::TempDir,
}

impl World {
    fn start() -> World {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let data = tmp.path().join("data");
        // The mirror fills from simulated upstreams (the stand-in is imported).
        let up = Upstream::start();
        let base = up.config().mojang_url;
        let env = [
            ("ZLH_ARTIFACTS_UPSTREAM", "true"),
            ("ZLH_ARTIFACTS_MOJANG_URL", base.as_str()),
            ("ZLH_ARTIFACTS_FABRIC_URL", base.as_str()),
            ("ZLH_ARTIFACTS_PAPER_URL", base.as_str()),
            ("ZLH_ARTIFACTS_ADOPTIUM_URL", base.as_str()),
            ("ZLH_FORWARDING_SECRET", FORWARDING_SECRET),
            ("ZLH_EDGE_TRAEFIK_TOKEN", TRAEFIK_TOKEN),
            ("ZLH_EDGE_TRAEFIK_EDGE_IP", "203.0.113.8"),
            ("ZLH_EDGE_DNS_PROVIDER", "technitium"),
            // Nothing answers there; the stand-in template is not published anyway.
            ("ZLH_EDGE_DNS_URL", "http://127.0.0.1:9"),
            ("ZLH_EDGE_DNS_TOKEN", DNS_TOKEN),
            ("ZLH_EDGE_DNS_ZONE", "games.example.com"),
        ];
        // A first start makes the database (and its local node); stopped, it gets a
        // node whose secrets an older version stored in clear.
        let mut first = Served::start_with_env(tmp.path(), &data, &[], &env);
        assert!(first.signal_and_wait(libc::SIGTERM).success());
        drop(first);
        let pve = PveSim::start();
        let mut old = serde_json::to_value(pve.proxmox_config()).expect("node settings");
        old["token_secret"] = json!(OLD_TOKEN_SECRET);
        old["bootstrap_token"] = json!(OLD_BOOTSTRAP);
        crate::support::open_db(&data)
            .execute(
                "INSERT INTO nodes (name, kind, settings, memory_mb, vmid_min, vmid_max, port_min, port_max, enabled, created_at)
                 VALUES ('old-pve', 'proxmox', ?1, 1024, 7000, 7099, 40000, 40999, 0, 0)",
                [old.to_string()],
            )
            .expect("a clear node row");
        let served = Served::start_with_env(tmp.path(), &data, &[], &env);
        let api = Api::start_on(tmp.path(), served);
        // A node added today, through the API.
        let (code, body) = api.call(
            "POST",
            "/api/v1/nodes",
            Some(
                json!({"name": "pve", "kind": "proxmox", "memory_mb": 100000,
                        "settings": serde_json::to_value(pve.proxmox_config()).expect("settings")}),
            ),
        );
        assert_eq!(code, 201, "{body}");
        let (code, body) = api.call(
            "POST",
            "/api/v1/servers",
            Some(
                json!({"name": "sec", "template": "standin", "version": "1.0", "eula": true,
                        "node": "local"}),
            ),
        );
        assert_eq!(code, 202, "{body}");
        let id = body["server"]["id"].as_i64().expect("a server id");
        let s = api.wait_status(id, "running");
        let vmid = s["vmid"].as_i64().expect("a vmid");
        World {
            tmp,
            api,
            pve,
            up,
            id,
            vmid,
        }
    }

    fn data(&self) -> &Path {
        &self.api.served.data_dir
    }

    /// The local agent's directory of the server.
    fn agent_dir(&self) -> PathBuf {
        self.data()
            .join("servers")
            .join(self.vmid.to_string())
            .join("agent")
    }
}

type Check = fn(&World) -> Result<(), String>;

/// One row per finding (and variant): number, name, check.
const CASES: &[(u8, &str, Check)] = &[
    (
        10,
        "forwarding secret only to Velocity-published servers",
        payload_of_unproxied_server_has_no_forwarding_secret,
    ),
    (
        1,
        "the game's environment holds no secret",
        game_environment_is_clean,
    ),
    (
        1,
        "the local agent's environment holds no serve secret",
        agent_environment_is_clean,
    ),
    (
        1,
        "the agent's token and payload files are 0600",
        agent_files_are_private,
    ),
    (
        2,
        "nothing zlh writes is readable by group or others",
        files_are_private_after_every_writer,
    ),
    (
        2,
        "no secret in clear in zlh.db, its WAL or a zlh backup",
        no_secret_in_the_database_files,
    ),
    (
        2,
        "a restore whose secrets do not open with the key refuses",
        restore_without_the_key_refuses,
    ),
    (
        4,
        "anonymous misses are refused without asking upstream or naming it",
        anonymous_misses_never_reach_upstream,
    ),
    (
        4,
        "anonymous GETs of what the mirror holds are served",
        anonymous_hits_are_served,
    ),
    (
        4,
        "an API token, a UI session, an agent token or a bootstrap token may fill",
        credentials_may_fill,
    ),
    (4, "a failed look-up is cached", failed_lookups_are_cached),
    (
        4,
        "zlh agent presents its token when it downloads",
        agent_downloads_with_its_token,
    ),
];

#[test]
fn secrets_and_files() {
    let world = World::start();
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|(n, name, check)| check(&world).err().map(|e| format!("#{n} {name}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// #10: the payload the agent persisted for a template without Velocity.
fn payload_of_unproxied_server_has_no_forwarding_secret(w: &World) -> Result<(), String> {
    let path = w.agent_dir().join("payload.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let payload: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if !payload["forwarding_secret"].is_null() || text.contains(FORWARDING_SECRET) {
        return Err(format!("the agent got the forwarding secret: {text}"));
    }
    Ok(())
}

/// The secrets `zlh serve` was given and the server's own agent token.
fn secrets(w: &World) -> Result<Vec<String>, String> {
    // The agent's own copy (0600, in its directory) is in clear; the row's is sealed.
    let path = w.agent_dir().join("token");
    let agent_token = match std::fs::read_to_string(&path) {
        Ok(t) => t.trim().to_string(),
        // An agent that got its token some other way: the row then is the clear copy.
        Err(_) => crate::support::open_db(w.data())
            .query_row(
                "SELECT agent_token FROM servers WHERE id = ?1",
                [w.id],
                |r| r.get(0),
            )
            .map_err(|e| format!("reading the agent token: {e}"))?,
    };
    let sim = w.pve.options();
    Ok(vec![
        FORWARDING_SECRET.into(),
        TRAEFIK_TOKEN.into(),
        DNS_TOKEN.into(),
        agent_token,
        sim.token_secret.clone(),
        sim.bootstrap_token.clone(),
        OLD_TOKEN_SECRET.into(),
        OLD_BOOTSTRAP.into(),
    ])
}

/// `KEY=value` entries of a process's environment.
fn environ(pid: i32) -> Result<Vec<String>, String> {
    let raw = std::fs::read(format!("/proc/{pid}/environ"))
        .map_err(|e| format!("reading /proc/{pid}/environ: {e}"))?;
    Ok(raw
        .split(|b| *b == 0)
        .filter(|e| !e.is_empty())
        .map(|e| String::from_utf8_lossy(e).into_owned())
        .collect())
}

fn pid_in(path: &Path) -> Result<i32, String> {
    std::fs::read_to_string(path)
        .map_err(|e| format!("{}: {e}", path.display()))?
        .trim()
        .parse()
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// Neither a `ZLH_` variable nor any configured secret among `env`.
fn no_secret_in(
    what: &str,
    env: &[String],
    secrets: &[String],
    zlh_ok: &[&str],
) -> Result<(), String> {
    let bad: Vec<&String> = env
        .iter()
        .filter(|e| {
            let key = e.split('=').next().unwrap_or_default();
            (key.starts_with("ZLH_") && !zlh_ok.contains(&key))
                || secrets.iter().any(|s| e.contains(s.as_str()))
        })
        .collect();
    if bad.is_empty() {
        Ok(())
    } else {
        Err(format!("{what} holds {bad:?}"))
    }
}

/// #1: `/proc/<game>/environ` of the stand-in game.
fn game_environment_is_clean(w: &World) -> Result<(), String> {
    let pid = pid_in(&w.agent_dir().join("game.pid"))?;
    let env = environ(pid)?;
    if !env.iter().any(|e| e == "STANDIN_LOAD_MS=300") {
        return Err(format!("the template's env is missing: {env:?}"));
    }
    no_secret_in("the game's environment", &env, &secrets(w)?, &[])
}

/// #1: the local agent got only the allow-list (its token comes from a file).
fn agent_environment_is_clean(w: &World) -> Result<(), String> {
    let pid = pid_in(&w.agent_dir().with_file_name("agent.pid"))?;
    no_secret_in(
        "the agent's environment",
        &environ(pid)?,
        &secrets(w)?,
        &["ZLH_LOG"],
    )
}

/// #1: what the agent keeps for itself is readable by its user only.
fn agent_files_are_private(w: &World) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    for name in ["token", "payload.json"] {
        let path = w.agent_dir().join(name);
        let meta = std::fs::metadata(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: geteuid has no preconditions.
        let me = unsafe { libc::geteuid() };
        if meta.mode() & 0o777 != 0o600 || meta.uid() != me {
            return Err(format!(
                "{} has mode {:o}, owner {}",
                path.display(),
                meta.mode() & 0o777,
                meta.uid()
            ));
        }
    }
    Ok(())
}

/// Runs `zlh ARGS --data-dir <data>` and returns its standard output.
fn run_zlh(w: &World, args: &[&str]) -> Result<String, String> {
    let out = zlh(w.tmp.path())
        .args(args)
        .arg("--data-dir")
        .arg(w.data())
        .output()
        .map_err(|e| format!("spawning zlh {args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "zlh {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Paths under `dir` (and `dir` itself) whose mode lets group or others in.
fn loose_paths(dir: &Path, out: &mut Vec<String>) {
    use std::os::unix::fs::PermissionsExt;
    let Ok(meta) = std::fs::symlink_metadata(dir) else {
        return;
    };
    let mode = meta.permissions().mode() & 0o777;
    if !meta.file_type().is_symlink() && mode & 0o066 != 0 {
        out.push(format!("{} ({mode:o})", dir.display()));
    }
    if meta.is_dir() {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            loose_paths(&e.path(), out);
        }
    }
}

/// #2: after `zlh serve` started (and installed a local agent and its game), `zlh
/// artifacts add`, `zlh backup` and a world backup, nothing under the data dir (nor
/// the backup copy) lets group or others read or write it; the data dir is 0700.
fn files_are_private_after_every_writer(w: &World) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::support::api::STANDIN);
    run_zlh(
        w,
        &[
            "artifacts",
            "add",
            "test/modes/1.0/server.jar",
            &standin.to_string_lossy(),
        ],
    )?;
    let copy = w.tmp.path().join("modes-backup.db");
    run_zlh(w, &["backup", &copy.to_string_lossy()])?;
    run_zlh(w, &["backups", "create", "sec", "--note", "modes"])?;
    let backup = wait_for("the world backup", Duration::from_secs(60), || {
        let (_, body) = w
            .api
            .call("GET", &format!("/api/v1/servers/{}/backups", w.id), None);
        body["backups"]
            .as_array()?
            .iter()
            .find(|b| b["note"] == "modes" && b["state"] == "completed")
            .cloned()
    });
    let mut loose = Vec::new();
    loose_paths(w.data(), &mut loose);
    loose_paths(&copy, &mut loose);
    if let Some(location) = backup["location"].as_str() {
        loose_paths(Path::new(location), &mut loose);
    }
    let dir_mode = std::fs::metadata(w.data())
        .map_err(|e| e.to_string())?
        .permissions()
        .mode()
        & 0o777;
    if dir_mode != 0o700 {
        loose.push(format!("the data dir is {dir_mode:o}"));
    }
    if loose.is_empty() {
        Ok(())
    } else {
        Err(format!("open to group or others: {loose:?}"))
    }
}

/// #2: the raw bytes of `zlh.db`, its WAL and a `zlh backup` copy hold none of the
/// secrets (nodes' token secrets and bootstrap tokens, old and new; the agent token;
/// the configured forwarding secret and edge tokens).
fn no_secret_in_the_database_files(w: &World) -> Result<(), String> {
    let copy = w.tmp.path().join("secrets-backup.db");
    run_zlh(w, &["backup", &copy.to_string_lossy()])?;
    let secrets = secrets(w)?;
    let mut found = Vec::new();
    for file in [w.data().join("zlh.db"), w.data().join("zlh.db-wal"), copy] {
        let Ok(bytes) = std::fs::read(&file) else {
            continue; // no WAL right after a checkpoint
        };
        for s in &secrets {
            if bytes.windows(s.len()).any(|win| win == s.as_bytes()) {
                found.push(format!("{s} in {}", file.display()));
            }
        }
    }
    if found.is_empty() {
        Ok(())
    } else {
        Err(format!("secrets in clear: {found:?}"))
    }
}

/// #2: a backup restored where another key (or none) is refuses with a message
/// naming the key file; with the key copied beside it, the same restore works.
fn restore_without_the_key_refuses(w: &World) -> Result<(), String> {
    let copy = w.tmp.path().join("restore-backup.db");
    run_zlh(w, &["backup", &copy.to_string_lossy()])?;
    let restore = |dir: &Path| {
        zlh(w.tmp.path())
            .args(["restore"])
            .arg(&copy)
            .arg("--data-dir")
            .arg(dir)
            .output()
            .map_err(|e| format!("spawning zlh restore: {e}"))
    };
    // A data dir with a key of its own, and one with no key at all.
    let other = w.tmp.path().join("other-host");
    let out = zlh(w.tmp.path())
        .args(["migrate", "--data-dir"])
        .arg(&other)
        .output()
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "zlh migrate: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    for dir in [other, w.tmp.path().join("bare-host")] {
        let out = restore(&dir)?;
        let err = String::from_utf8_lossy(&out.stderr);
        if out.status.success()
            || !err.contains("sealed with another key")
            || !err.contains("secret.key")
        {
            return Err(format!(
                "restore into {} without the key: {} {err}",
                dir.display(),
                out.status
            ));
        }
    }
    let moved = w.tmp.path().join("new-host");
    std::fs::create_dir_all(&moved).map_err(|e| e.to_string())?;
    std::fs::copy(w.data().join("secret.key"), moved.join("secret.key"))
        .map_err(|e| format!("copying the key: {e}"))?;
    let out = restore(&moved)?;
    if !out.status.success() {
        return Err(format!(
            "restore with the key copied: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// GET `/artifacts/<path>` with optional headers: (status, body).
fn get_artifact(w: &World, path: &str, headers: &[(&str, &str)]) -> Result<(u16, String), String> {
    let mut req = w
        .api
        .http
        .inner
        .get(w.api.served.url(&format!("/artifacts/{path}")));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    w.api.http.rt.block_on(async {
        let resp = req.send().await.map_err(|e| format!("GET {path}: {e}"))?;
        let status = resp.status().as_u16();
        let body = resp.bytes().await.map_err(|e| format!("GET {path}: {e}"))?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    })
}

/// #4: 20 unknown versions and one real one, anonymously: 401 each, not one
/// upstream request, nothing stored, no upstream URL in the answers.
fn anonymous_misses_never_reach_upstream(w: &World) -> Result<(), String> {
    let before = w.up.requests().len();
    let mut paths: Vec<String> = (0..20)
        .map(|i| format!("minecraft/vanilla/9.9.{i}/server.jar"))
        .collect();
    paths.push(format!(
        "minecraft/vanilla/{}/server.jar",
        upstream::VANILLA
    ));
    for path in &paths {
        let (status, body) = get_artifact(w, path, &[])?;
        if status != 401 || body.contains(&w.up.config().mojang_url) || body.contains("http") {
            return Err(format!("anonymous GET {path}: {status} {body}"));
        }
    }
    let after = w.up.requests().len();
    if after != before {
        return Err(format!("{} upstream requests", after - before));
    }
    let stored = w
        .data()
        .join("artifacts")
        .join(paths.last().map(String::as_str).unwrap_or_default());
    if stored.exists() {
        return Err(format!("{} was stored", stored.display()));
    }
    Ok(())
}

/// #4: reading the mirror needs nothing.
fn anonymous_hits_are_served(w: &World) -> Result<(), String> {
    let (status, body) = get_artifact(w, "test/standin/1.0/server.jar", &[])?;
    let want = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join(crate::support::api::STANDIN),
    )
    .map_err(|e| e.to_string())?;
    if status != 200 || body != want {
        return Err(format!("anonymous GET of an imported artifact: {status}"));
    }
    Ok(())
}

/// #4: each credential zlh issues starts a fill (a different path each); a wrong
/// token does not.
fn credentials_may_fill(w: &World) -> Result<(), String> {
    let agent_token = std::fs::read_to_string(w.agent_dir().join("token"))
        .map_err(|e| e.to_string())?
        .trim()
        .to_string();
    let bearer = |t: &str| format!("Bearer {t}");
    let session = crate::support::ui_session(&w.api.served);
    let cases = [
        (
            "an API token",
            format!("minecraft/vanilla/{}/server.jar", upstream::VANILLA),
            ("authorization", bearer(&w.api.token)),
        ),
        (
            "a UI session",
            format!("minecraft/vanilla/{}/server.jar", upstream::VANILLA_OLD),
            ("cookie", session),
        ),
        (
            "an agent token",
            format!("minecraft/fabric/{}/fabric-server.jar", upstream::FABRIC),
            ("authorization", bearer(&agent_token)),
        ),
        (
            "a bootstrap token",
            format!("java/{0}/OpenJDK{0}.tar.gz", upstream::JAVA),
            ("authorization", bearer(&w.pve.options().bootstrap_token)),
        ),
    ];
    let (status, _) = get_artifact(
        w,
        &cases[0].1,
        &[("authorization", "Bearer not-a-token-of-ours")],
    )?;
    if status != 401 {
        return Err(format!("a wrong token: {status}"));
    }
    for (what, path, (k, v)) in &cases {
        let (status, body) = get_artifact(w, path, &[(k, v.as_str())])?;
        if status != 200 {
            return Err(format!("{what} for {path}: {status} {body}"));
        }
    }
    Ok(())
}

/// #4: an unknown version asked for twice (with a credential) asks upstream once.
fn failed_lookups_are_cached(w: &World) -> Result<(), String> {
    let path = "minecraft/vanilla/0.0.404/server.jar";
    let auth = format!("Bearer {}", w.api.token);
    let before = w.up.requests().len();
    for _ in 0..3 {
        let (status, body) = get_artifact(w, path, &[("authorization", &auth)])?;
        if status != 404 {
            return Err(format!("GET {path}: {status} {body}"));
        }
    }
    let asked = w.up.requests().len() - before;
    if asked != 1 {
        return Err(format!(
            "{asked} upstream requests for one unknown version asked 3 times"
        ));
    }
    Ok(())
}

/// A `zlh agent` child, killed when dropped.
struct AgentChild(std::process::Child);

impl Drop for AgentChild {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; its game dies with it (parent-death signal).
        unsafe {
            libc::kill(self.0.id() as i32, libc::SIGKILL);
        }
        if let Err(e) = self.0.wait() {
            eprintln!("reaping the test agent: {e}");
        }
    }
}

/// #4: an agent (on a Proxmox node's bootstrap token) installs a game whose jar the
/// mirror does not hold yet: its download carries the token, so the mirror fills.
fn agent_downloads_with_its_token(w: &World) -> Result<(), String> {
    let path = format!("minecraft/paper/{}/server.jar", upstream::PAPER);
    let bytes =
        w.up.bytes(&upstream::paper_key(upstream::PAPER_STABLE_BUILD));
    let token = w.pve.options().bootstrap_token.clone();
    let port = crate::support::free_port();
    let dir = w.tmp.path().join("standalone-agent");
    let child = zlh(w.tmp.path())
        .args(["agent", "--listen", &format!("127.0.0.1:{port}"), "--dir"])
        .arg(&dir)
        .env("ZLH_AGENT_TOKEN", &token)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| format!("spawning zlh agent: {e}"))?;
    let _agent = AgentChild(child);
    let payload = json!({
        "vmid": 5999, "container_type": "game", "game": "minecraft", "variant": "paper",
        "version": upstream::PAPER, "ports": [crate::support::free_port()],
        "artifact_path": path, "artifact_sha256": sha256_hex(&bytes),
        "install_id": "agent-token-download", "eula": true,
        "start_command": "sleep 30",
        "services": {"ARTIFACT_SERVER": w.api.served.url("/artifacts")},
    });
    let url = format!("http://127.0.0.1:{port}");
    let http = &w.api.http;
    wait_for(
        "the agent to answer /health",
        Duration::from_secs(20),
        || {
            http.rt
                .block_on(http.inner.get(format!("{url}/health")).send())
                .ok()
                .filter(|r| r.status().is_success())
        },
    );
    let status = http
        .rt
        .block_on(
            http.inner
                .post(format!("{url}/config"))
                .bearer_auth(&token)
                .json(&payload)
                .send(),
        )
        .map_err(|e| format!("POST /config: {e}"))?
        .status();
    if status.as_u16() != 202 {
        return Err(format!("POST /config: {status}"));
    }
    // Installed (the jar is in the server dir) or failed saying why.
    let outcome = wait_for("the agent's install", Duration::from_secs(30), || {
        let st: Value = http.rt.block_on(async {
            http.inner
                .get(format!("{url}/status"))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?
                .json()
                .await
                .ok()
        })?;
        if st["state"] == "error" {
            return Some(Err(format!("the agent's install failed: {st}")));
        }
        dir.join("server/server.jar").exists().then_some(Ok(()))
    });
    outcome?;
    if std::fs::read(dir.join("server/server.jar")).map_err(|e| e.to_string())? != bytes {
        return Err("the installed jar is not the upstream's".into());
    }
    Ok(())
}
