//! Server-side render time of the admin UI's main pages with 10,000 servers and
//! 100,000 events, read from each response's `Server-Timing: app;dur=…` header (the
//! time from the request entering the UI router to the response leaving it: session
//! lookup, queries, template), plus the round trip seen by the client.
//!
//! Run: `cargo bench --bench ui` (prints a table; writes target/bench-ui.json).
//! `cargo test --all-targets` runs it too, small, as a smoke test.

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use serde_json::json;
use support::Served;

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --all-targets` runs a small smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let (servers, events_per_server, runs) = if full {
        (10_000, 10, 400)
    } else {
        (300, 3, 10)
    };

    let tmp = tempfile::tempdir().unwrap();
    let served = Served::start_with_env(
        tmp.path(),
        &tmp.path().join("data"),
        &[],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );
    let session = support::ui_session(&served);

    // Rows written directly (the pages read them; nothing needs to run).
    let conn = support::open_db(&served.data_dir);
    let t = Instant::now();
    conn.execute_batch("BEGIN").unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO servers (name, owner_id, template_id, version, node_id, vmid, ip, game_port, agent_port,
           memory_mb, cores, eula_accepted, agent_token, install_id, status, status_reason, created_at, updated_at)
         SELECT 'srv-' || i, 1, (SELECT id FROM templates WHERE slug = 'minecraft-paper'), '1.21.4',
           (SELECT id FROM nodes WHERE kind = 'local'), 100000 + i, '127.0.0.1', 40000 + i, 50000 + i,
           2048, 2, 1, 'x', 'y',
           CASE i % 20 WHEN 0 THEN 'failed' WHEN 1 THEN 'stopped' WHEN 2 THEN 'crashed' ELSE 'running' END,
           CASE i % 20 WHEN 0 THEN 'agent: deadline passed' ELSE NULL END,
           1764547200000 + i, 1764547200000 + i FROM n",
        [servers],
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 0 UNION ALL SELECT i + 1 FROM n WHERE i < ?1 * ?2 - 1)
         INSERT INTO server_events (server_id, at, from_status, to_status, job_id, actor, message)
         SELECT (SELECT min(id) FROM servers) + i / ?2, 1764547200000 + i,
           CASE i % ?2 WHEN 0 THEN NULL ELSE 'starting' END,
           CASE i % ?2 WHEN 0 THEN 'pending' ELSE 'running' END,
           NULL, 'system', 'event ' || i FROM n",
        [servers, events_per_server],
    )
    .unwrap();
    conn.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO jobs (kind, payload, state, attempt, run_at, lane, created_at, finished_at)
         SELECT 'server.provision', '{}', 'completed', 1, 0, 'server:' || i, 0, 0 FROM n",
        [servers],
    )
    .unwrap();
    conn.execute_batch("COMMIT; ANALYZE;").unwrap();
    let (n_servers, n_events): (i64, i64) = conn
        .query_row(
            "SELECT (SELECT count(*) FROM servers), (SELECT count(*) FROM server_events)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let seeded_ms = t.elapsed().as_millis();
    let mid: i64 = conn
        .query_row(
            "SELECT id FROM servers ORDER BY id LIMIT 1 OFFSET ?1",
            [n_servers / 2],
            |r| r.get(0),
        )
        .unwrap();

    let pages = [
        ("dashboard", "/".to_string()),
        ("servers, first page", "/servers".to_string()),
        ("servers, a middle page", format!("/servers?after={mid}")),
        ("servers, search", "/servers?q=srv-77".to_string()),
        (
            "servers, status filter",
            "/servers?status=failed".to_string(),
        ),
        ("server detail", format!("/servers/{mid}")),
    ];
    let client = support::ui_client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut report = Vec::new();
    println!(
        "admin UI render time: {n_servers} servers, {n_events} events (seeded in {seeded_ms} ms), {runs} sequential requests per page"
    );
    println!(
        "  {:<30} {:>12} {:>12} {:>14}",
        "page", "server p50", "server p99", "round trip p50"
    );
    for (name, path) in &pages {
        let (mut server, mut round) = (Vec::new(), Vec::new());
        for i in 0..runs + 20 {
            let t = Instant::now();
            let resp = rt
                .block_on(
                    client
                        .get(served.url(path))
                        .header("cookie", &session)
                        .send(),
                )
                .unwrap();
            assert_eq!(resp.status(), 200, "{path}");
            let timing = resp
                .headers()
                .get("server-timing")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("app;dur="))
                .and_then(|v| v.parse::<f64>().ok())
                .expect("a Server-Timing header");
            let body = rt.block_on(resp.text()).unwrap();
            assert!(body.contains("</html>"), "{path}: a whole page");
            // The first requests warm caches and prepared statements.
            if i >= 20 {
                server.push(timing);
                round.push(t.elapsed().as_secs_f64() * 1000.0);
            }
        }
        server.sort_by(f64::total_cmp);
        round.sort_by(f64::total_cmp);
        let (p50, p99, r50) = (pct(&server, 0.5), pct(&server, 0.99), pct(&round, 0.5));
        println!("  {name:<30} {p50:>9.2} ms {p99:>9.2} ms {r50:>11.2} ms");
        report.push(json!({"page": name, "path": path, "server_p50_ms": p50, "server_p99_ms": p99, "round_trip_p50_ms": r50}));
    }
    let out = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-ui.json");
    let _ = std::fs::write(
        &out,
        serde_json::to_string_pretty(&json!({
            "servers": n_servers, "events": n_events, "runs": runs, "pages": report
        }))
        .unwrap(),
    );
}
