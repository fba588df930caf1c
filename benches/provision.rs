//! Provisioning overhead against the Proxmox simulator with zero artificial latency,
//! and the rate of `GET /api/v1/servers` with 10,000 servers.
//!
//! Run: `cargo bench --bench provision` (prints a table; writes target/bench-provision.json).
//! Every container runs a real `zlh agent` and a stand-in game (Python) that answers
//! its status ping at once; the game's own start-to-ready time is measured separately
//! so the control plane's overhead can be read off.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::api::Api;
use support::pve_sim::{PveSim, SimOptions};
use support::{Served, free_port};

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The stand-in game alone: process start until its status ping answers.
fn game_start_ms(runs: usize) -> Vec<f64> {
    let standin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/standin_game.py");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..runs {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        std::fs::write(dir.path().join("eula.txt"), "eula=true\n").unwrap();
        std::fs::write(
            dir.path().join("server.properties"),
            format!("server-port={port}\n"),
        )
        .unwrap();
        let t = Instant::now();
        let mut child = std::process::Command::new("python3")
            .arg(&standin)
            .current_dir(dir.path())
            .env("STANDIN_LOAD_MS", "0")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        loop {
            if rt
                .block_on(zlh::agent::slp::status(addr, Duration::from_millis(500)))
                .is_ok()
            {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        out.push(ms(t.elapsed()));
        let _ = child.kill();
        let _ = child.wait();
    }
    out.sort_by(f64::total_cmp);
    out
}

fn create(api: &Api, name: &str) -> (i64, Instant) {
    let t = Instant::now();
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": name, "template": "standin-zero", "version": "1.0", "eula": true, "node": "pve"})),
    );
    assert_eq!(code, 202, "{body}");
    (body["server"]["id"].as_i64().unwrap(), t)
}

/// Polls until every id in `ids` is running; returns when each was first seen so.
/// Reads the status straight from the database file (WAL: a reader beside the
/// server), so the poller does not eat the CPU it measures.
fn wait_all_running(api: &Api, ids: &[i64]) -> std::collections::HashMap<i64, Instant> {
    let conn = support::open_db(&api.served.data_dir);
    let mut stmt = conn
        .prepare("SELECT status, status_reason FROM servers WHERE id = ?1")
        .unwrap();
    let mut done = std::collections::HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    while done.len() < ids.len() {
        assert!(
            Instant::now() < deadline,
            "servers did not all become running"
        );
        for id in ids {
            if done.contains_key(id) {
                continue;
            }
            let (status, reason): (String, Option<String>) = stmt
                .query_row([id], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap();
            match status.as_str() {
                "running" => {
                    done.insert(*id, Instant::now());
                }
                "failed" => panic!("server {id} failed: {reason:?}"),
                _ => {}
            }
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done
}

/// (utime + stime) in seconds and the parent pid of a process, from /proc.
fn proc_cpu(pid: u32) -> Option<(f64, u32)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ppid: u32 = f.get(1)?.parse().ok()?;
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some((ticks / 100.0, ppid))
}

/// CPU seconds used so far by `zlh serve`, the agents, and the agents' games.
fn cpu_split(serve: u32, agents: &[u32]) -> (f64, f64, f64) {
    let serve_cpu = proc_cpu(serve).map(|c| c.0).unwrap_or(0.0);
    let agents_cpu: f64 = agents
        .iter()
        .filter_map(|p| proc_cpu(*p))
        .map(|c| c.0)
        .sum();
    let games_cpu: f64 = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(proc_cpu)
        .filter(|(_, ppid)| agents.contains(ppid))
        .map(|c| c.0)
        .sum();
    (serve_cpu, agents_cpu, games_cpu)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs this too, as a
    // quick smoke run of the same code with small numbers.
    let full = std::env::args().any(|a| a == "--bench");
    let (singles, concurrent, list_rows) = if full { (10, 100, 10_000) } else { (2, 5, 500) };
    let tmp = tempfile::tempdir().unwrap();
    let sim = PveSim::with(SimOptions {
        task_delay: Duration::ZERO,
        ip_delay: Duration::ZERO,
        // The agent's default interval (the tests use 100 ms); start-up probes are
        // faster either way.
        agent_probe_interval: "1s".into(),
        agent_log: "warn".into(),
        ..SimOptions::default()
    });
    let served = Served::start_with_env(
        tmp.path(),
        &tmp.path().join("data"),
        &[],
        &[
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_QUEUE_WORKERS", "128"),
            ("ZLH_LOG", "warn"),
        ],
    );
    let api = Api::start_on(tmp.path(), served);
    let mut template = support::api::standin_template();
    template["slug"] = json!("standin-zero");
    template["spec"]["env"]["STANDIN_LOAD_MS"] = json!("0");
    assert_eq!(api.call("POST", "/api/v1/templates", Some(template)).0, 201);
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(json!({
            "name": "pve", "kind": "proxmox", "memory_mb": 10_000_000,
            "settings": serde_json::to_value(sim.proxmox_config()).unwrap(),
        })),
    );
    assert_eq!(code, 201, "{body}");

    let game = game_start_ms(if full { 30 } else { 3 });
    let game_p50 = pct(&game, 0.5);

    // One server at a time.
    let mut single = Vec::new();
    for i in 0..singles {
        let (id, t) = create(&api, &format!("one-{i}"));
        let done = wait_all_running(&api, &[id]);
        single.push(ms(done[&id] - t));
    }
    single.sort_by(f64::total_cmp);
    // Where one server's time went: its timeline (ms since the first event).
    let (_, last) = api.call("GET", "/api/v1/servers?limit=1000", None);
    let last_id = last["servers"].as_array().unwrap().last().unwrap()["id"]
        .as_i64()
        .unwrap();
    let (_, events) = api.call("GET", &format!("/api/v1/servers/{last_id}/events"), None);
    let evs = events["events"].as_array().unwrap();
    let t0 = evs[0]["at"].as_i64().unwrap();
    let timeline: Vec<String> = evs
        .iter()
        .map(|e| {
            format!(
                "+{}ms {}",
                e["at"].as_i64().unwrap() - t0,
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect();

    // 100 at once.
    let t0 = Instant::now();
    let starts: Vec<(i64, Instant)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..concurrent)
            .map(|i| {
                let api = &api;
                s.spawn(move || create(api, &format!("many-{i}")))
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let ids: Vec<i64> = starts.iter().map(|(id, _)| *id).collect();
    let done = wait_all_running(&api, &ids);
    let total = t0.elapsed();
    let mut many: Vec<f64> = starts.iter().map(|(id, t)| ms(done[id] - *t)).collect();
    let agent_pids: Vec<u32> = (5000..5200).filter_map(|v| sim.agent_pid(v)).collect();
    let (serve_cpu, agents_cpu, games_cpu) = cpu_split(api.served.pid(), &agent_pids);
    many.sort_by(f64::total_cmp);

    // GET /api/v1/servers with 10,000 servers (rows written directly: no jobs).
    let conn = support::open_db(&api.served.data_dir);
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 - (SELECT count(*) FROM servers))
         INSERT INTO servers (name, owner_id, template_id, version, node_id, vmid, game_port, agent_port,
           memory_mb, cores, eula_accepted, agent_token, install_id, status, created_at, updated_at)
         SELECT 'bulk-' || i, 1, (SELECT id FROM templates WHERE slug = 'standin-zero'), '1.0',
           (SELECT id FROM nodes WHERE name = 'pve'), 100000 + i, 25565, 18888, 512, 1, 1,
           'x', 'y', 'running', 0, 0 FROM n",
        [list_rows],
    )
    .unwrap();
    let count: i64 = conn
        .query_row(
            "SELECT count(*) FROM servers WHERE deleted_at IS NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let rate = |path: &str| -> (f64, f64) {
        let client = api.http.inner.clone();
        let url = api.served.url(path);
        let token = api.token.clone();
        api.http.rt.block_on(async move {
            let deadline = Instant::now() + Duration::from_secs(if full { 5 } else { 1 });
            let mut tasks = Vec::new();
            for _ in 0..8 {
                let (client, url, token) = (client.clone(), url.clone(), token.clone());
                tasks.push(tokio::spawn(async move {
                    let mut lat = Vec::new();
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        let r = client.get(&url).bearer_auth(&token).send().await.unwrap();
                        assert_eq!(r.status(), 200);
                        r.bytes().await.unwrap();
                        lat.push(ms(t.elapsed()));
                    }
                    lat
                }));
            }
            let mut all = Vec::new();
            for t in tasks {
                all.extend(t.await.unwrap());
            }
            all.sort_by(f64::total_cmp);
            (
                all.len() as f64 / if full { 5.0 } else { 1.0 },
                pct(&all, 0.5),
            )
        })
    };
    let (rps100, lat100) = rate("/api/v1/servers?limit=100");
    let (rps1000, lat1000) = rate("/api/v1/servers?limit=1000&after=5000");

    println!("provisioning against the Proxmox simulator (zero artificial latency)");
    println!(
        "  game alone (stand-in start → status ping): p50 {:.0} ms",
        game_p50
    );
    println!(
        "  1 server, POST → running (10 runs):   p50 {:.0} ms  p99 {:.0} ms   overhead p50 ≈ {:.0} ms",
        pct(&single, 0.5),
        pct(&single, 0.99),
        pct(&single, 0.5) - game_p50
    );
    println!(
        "  {concurrent} concurrent, POST → running:       p50 {:.0} ms  p99 {:.0} ms   all running in {:.2} s",
        pct(&many, 0.5),
        pct(&many, 0.99),
        total.as_secs_f64()
    );
    println!(
        "  CPU used by then: zlh serve {serve_cpu:.1} s, {} agents {agents_cpu:.1} s, their games {games_cpu:.1} s (2 cores)",
        agent_pids.len()
    );
    println!("  one server's timeline:");
    for line in &timeline {
        println!("    {line}");
    }
    println!(
        "GET /api/v1/servers with {count} servers, 8 concurrent clients, {} s each",
        if full { 5 } else { 1 }
    );
    println!("  limit=100:  {rps100:.0} req/s (p50 {lat100:.1} ms)");
    println!("  limit=1000: {rps1000:.0} req/s (p50 {lat1000:.1} ms)");
    let report: Value = json!({
        "game_start_p50_ms": game_p50,
        "single_p50_ms": pct(&single, 0.5), "single_p99_ms": pct(&single, 0.99),
        "overhead_p50_ms": pct(&single, 0.5) - game_p50,
        "concurrent100_p50_ms": pct(&many, 0.5), "concurrent100_p99_ms": pct(&many, 0.99),
        "concurrent100_total_s": total.as_secs_f64(),
        "list_servers": count,
        "list_limit100_rps": rps100, "list_limit1000_rps": rps1000,
    });
    if full {
        let _ = std::fs::create_dir_all("target");
        let _ = std::fs::write("target/bench-provision.json", report.to_string());
    }
}
