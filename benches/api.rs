//! Throughput of the JSON API's server list: `GET /api/v1/servers?limit=100` (and
//! `limit=1000`) with 10,000 servers, 8 concurrent clients, req/s and latency p50/p99
//! as the clients see them (loopback HTTP included).
//!
//! Every row carries what a provisioned server carries: a sealed agent token, the agent
//! payload it was sent (mods, seeded files, properties, services) and its checkpoints.
//!
//! Run: `cargo bench --bench api` (prints a table; writes target/bench-api.json).
//! `cargo test --all-targets` runs it too, small, as a smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::json;
use support::api::Api;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// What `provision` stores as a server's agent payload (secrets blanked at rest).
fn payload() -> serde_json::Value {
    json!({
        "vmid": 5001, "container_type": "game", "game": "minecraft", "variant": "paper",
        "version": "1.21.4", "world": "world", "ports": [25565],
        "artifact_path": "minecraft/paper/1.21.4/server.jar", "java_path": "java/21/bin/java",
        "memory_mb": 2048, "install_id": "0f3c1e9a7b2d4c58", "eula": true,
        "mods": [
            {"path": "mods/fabric-api/0.110.0/fabric-api.jar", "sha256": "a".repeat(64), "destination": "mods/fabric-api.jar"},
            {"path": "mods/fabricproxy-lite/2.9.0/FabricProxy-Lite.jar", "sha256": "b".repeat(64), "destination": "mods/FabricProxy-Lite.jar"}
        ],
        "files": [
            {"destination": "config/FabricProxy-Lite.toml", "content": "hackOnlineMode = true\nsecret = \"********\"\n"},
            {"destination": "ops.json", "content": "[]"}
        ],
        "properties": {"server-port": "25565", "online-mode": "false", "motd": "A zlh server", "max-players": "20", "enable-status": "true"},
        "forwarding_secret": "********", "agent_token": "********",
        "start_command": "{java} -Xms2048M -Xmx2048M -jar {jar} nogui", "stop_command": "stop",
        "readiness": {"kind": "minecraft_ping", "port": 25565},
        "services": {"ARTIFACT_SERVER": "http://10.0.0.1:8080/artifacts", "ZLH_API_URL": "http://10.0.0.1:8080"}
    })
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs a small smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (servers, secs) = if full { (10_000, 5.0) } else { (300, 0.5) };

    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());

    // Rows written directly (the list reads them; nothing needs to run).
    let conn = support::open_db(&api.served.data_dir);
    let token = zlh::db::secret::seal(&conn, "agent-token-of-a-provisioned-server").unwrap();
    let checkpoints = json!({"reserve": {"vmid": 5001}, "clone": {}, "configure": {}, "start": {},
        "address": {"ip": "10.0.0.51"}, "agent": {"install_id": "0f3c1e9a7b2d4c58"}, "ready": {}});
    let t = Instant::now();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO servers (name, owner_id, template_id, version, node_id, vmid, ip, game_port, agent_port,
           memory_mb, cores, eula_accepted, agent_token, install_id, payload, checkpoints, status,
           agent_state, ready, created_at, updated_at)
         SELECT 'srv-' || i, 1, (SELECT id FROM templates WHERE slug = 'minecraft-paper'), '1.21.4',
           (SELECT id FROM nodes WHERE kind = 'local'), 100000 + i, '127.0.0.1', 40000 + i, 50000 + i,
           2048, 2, 1, ?2, '0f3c1e9a7b2d4c58', ?3, ?4, 'running', 'running', 1,
           1764547200000 + i, 1764547200000 + i FROM n",
        rusqlite::params![
            servers,
            token,
            payload().to_string(),
            checkpoints.to_string()
        ],
    )
    .unwrap();
    conn.execute_batch("ANALYZE").unwrap();
    let seeded_ms = t.elapsed().as_millis();
    let count: i64 = conn
        .query_row("SELECT count(*) FROM servers", [], |r| r.get(0))
        .unwrap();

    // The 1,000-row page starts in the middle of the list.
    let mid: i64 = conn
        .query_row(
            "SELECT id FROM servers ORDER BY id LIMIT 1 OFFSET ?1",
            [(count / 2).min(count - 1).max(0)],
            |r| r.get(0),
        )
        .unwrap();
    let rate = |path: &str| -> (f64, f64, f64, usize) {
        let client = api.http.inner.clone();
        let url = api.served.url(path);
        let token = api.token.clone();
        api.http.rt.block_on(async move {
            // Warm the connection pool, caches and prepared statements first.
            for _ in 0..20 {
                let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                assert_eq!(r.status(), 200, "{url}");
                r.bytes().await.unwrap();
            }
            let start = Instant::now();
            let deadline = start + Duration::from_secs_f64(secs);
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (client, url, token) = (client.clone(), url.clone(), token.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    let mut bytes = 0;
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        bytes = r.bytes().await.unwrap().len();
                        lat.push(t.elapsed().as_secs_f64() * 1000.0);
                    }
                    (lat, bytes)
                }));
            }
            let (mut all, mut size) = (Vec::new(), 0);
            for t in tasks {
                let (lat, bytes) = t.await.unwrap();
                all.extend(lat);
                size = bytes;
            }
            let elapsed = start.elapsed().as_secs_f64();
            all.sort_by(f64::total_cmp);
            (
                all.len() as f64 / elapsed,
                pct(&all, 0.5),
                pct(&all, 0.99),
                size,
            )
        })
    };

    println!(
        "GET /api/v1/servers: {count} servers (seeded in {seeded_ms} ms), 8 concurrent clients, {secs} s per row"
    );
    println!(
        "  {:<30} {:>10} {:>10} {:>10} {:>10}",
        "request", "req/s", "p50", "p99", "body"
    );
    let mut report = Vec::new();
    for path in [
        "/api/v1/servers?limit=100".to_string(),
        format!("/api/v1/servers?limit=1000&after={mid}"),
    ] {
        let (rps, p50, p99, size) = rate(&path);
        println!(
            "  {:<30} {rps:>10.0} {p50:>7.2} ms {p99:>7.2} ms {:>7} kB",
            path.trim_start_matches("/api/v1/servers"),
            size / 1024
        );
        report.push(json!({"path": path, "req_per_s": rps, "p50_ms": p50, "p99_ms": p99, "body_bytes": size}));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-api.json");
    if let Err(e) = std::fs::write(
        &out,
        serde_json::to_string_pretty(
            &json!({"servers": count, "seconds": secs, "requests": report}),
        )
        .unwrap(),
    ) {
        eprintln!("writing {}: {e}", out.display());
    }
}
