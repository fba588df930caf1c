//! Operations endpoints: `/healthz`, `/readyz`, `/metrics`, and the home page.

use std::fmt::Write;
use std::sync::atomic::Ordering;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;

use crate::error::AppError;
use crate::http::AppState;
use crate::queue::JobState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
}

/// 200 while the process lives.
async fn healthz() -> &'static str {
    "ok\n"
}

/// 200 when the app serves and its database answers; 503 while starting or draining.
async fn readyz(State(st): State<AppState>) -> impl IntoResponse {
    if !st.ready.load(Ordering::SeqCst) {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining\n");
    }
    let db_ok = st.db.call(|c| crate::db::ping(c)).await.is_ok();
    if db_ok {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
    }
}

/// Prometheus text exposition.
async fn metrics(State(st): State<AppState>) -> Result<impl IntoResponse, AppError> {
    let stats = st.queue.stats().await?;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP zlh_up 1 while zlh serve runs.\n# TYPE zlh_up gauge\nzlh_up 1"
    );
    let _ = writeln!(
        out,
        "# HELP zlh_boot_epoch Boot number of this executor.\n# TYPE zlh_boot_epoch gauge\nzlh_boot_epoch {}",
        st.boot.boot_epoch
    );
    let _ = writeln!(
        out,
        "# HELP zlh_schedule_ticks_total Scheduler ticks (server schedules) since start.\n# TYPE zlh_schedule_ticks_total counter\nzlh_schedule_ticks_total {}",
        crate::jobs::worlds::scheduler_ticks()
    );
    let _ = writeln!(
        out,
        "# HELP zlh_jobs Jobs by state and kind.\n# TYPE zlh_jobs gauge"
    );
    // Every state appears, even at zero, so alerts on e.g. `held` have a series.
    let mut seen_states = std::collections::HashSet::new();
    for (state, kind, n) in &stats.counts {
        seen_states.insert(*state);
        let _ = writeln!(
            out,
            "zlh_jobs{{state=\"{state}\",kind=\"{}\"}} {n}",
            escape_label(kind)
        );
    }
    let _ = writeln!(
        out,
        "# HELP zlh_jobs_by_state Jobs by state.\n# TYPE zlh_jobs_by_state gauge"
    );
    for state in JobState::ALL {
        let n: i64 = stats
            .counts
            .iter()
            .filter(|(s, _, _)| *s == state)
            .map(|(_, _, n)| n)
            .sum();
        let _ = writeln!(out, "zlh_jobs_by_state{{state=\"{state}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP zlh_jobs_oldest_available_seconds Age of the oldest job waiting to run.\n# TYPE zlh_jobs_oldest_available_seconds gauge\nzlh_jobs_oldest_available_seconds {}",
        stats.oldest_available_ms.unwrap_or(0) as f64 / 1000.0
    );
    let _ = writeln!(
        out,
        "# HELP zlh_jobs_rescued_total Running jobs handed back after their worker died or lost its lease.\n# TYPE zlh_jobs_rescued_total counter\nzlh_jobs_rescued_total {}",
        stats.rescued_total
    );
    let r = &st.services.reconcile;
    let _ = writeln!(
        out,
        "# HELP zlh_reconcile_total What the reconciler did since start, by action.\n# TYPE zlh_reconcile_total counter"
    );
    for (what, n) in [
        ("runs", &r.runs),
        ("agents_polled", &r.agents_polled),
        ("agents_unreachable", &r.agents_unreachable),
        ("crashed_detected", &r.crashed_detected),
        ("recovered", &r.recovered),
        ("edge_withdrawn", &r.edge_withdrawn),
        ("stuck_failed", &r.stuck_failed),
        ("edge_republished", &r.edge_republished),
        ("edge_failures", &r.edge_failures),
    ] {
        let _ = writeln!(
            out,
            "zlh_reconcile_total{{action=\"{what}\"}} {}",
            n.load(Ordering::Relaxed)
        );
    }
    if let Some(w) = st.queue.worker() {
        let s = w.stats();
        let _ = writeln!(
            out,
            "# HELP zlh_worker_jobs_total Job runs finished by this process, by outcome.\n# TYPE zlh_worker_jobs_total counter"
        );
        for (outcome, n) in [
            ("completed", s.completed.load(Ordering::Relaxed)),
            ("failed", s.failed.load(Ordering::Relaxed)),
            ("lease_lost", s.lease_lost.load(Ordering::Relaxed)),
        ] {
            let _ = writeln!(out, "zlh_worker_jobs_total{{outcome=\"{outcome}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP zlh_worker_running Jobs running in this process.\n# TYPE zlh_worker_running gauge\nzlh_worker_running {}",
            w.running_count()
        );
        let _ = writeln!(
            out,
            "# HELP zlh_job_duration_seconds Time spent running jobs, by kind.\n# TYPE zlh_job_duration_seconds summary"
        );
        if let Ok(durs) = s.durations.lock() {
            let mut kinds: Vec<_> = durs.iter().collect();
            kinds.sort_by(|a, b| a.0.cmp(b.0));
            for (kind, (count, sum)) in kinds {
                let k = escape_label(kind);
                let _ = writeln!(out, "zlh_job_duration_seconds_sum{{kind=\"{k}\"}} {sum}");
                let _ = writeln!(
                    out,
                    "zlh_job_duration_seconds_count{{kind=\"{k}\"}} {count}"
                );
            }
        }
    }
    let a = st.mirror.stats();
    let _ = writeln!(
        out,
        "# HELP zlh_artifact_fills_total Upstream fills of the artifact mirror, by outcome.\n# TYPE zlh_artifact_fills_total counter"
    );
    for (outcome, n) in [
        ("stored", a.fills_stored.load(Ordering::Relaxed)),
        ("failed", a.fills_failed.load(Ordering::Relaxed)),
        // Answered from the negative cache, and refused to anonymous callers:
        // neither reached an upstream.
        ("cached_miss", a.negative_hits.load(Ordering::Relaxed)),
        ("refused", a.fills_refused.load(Ordering::Relaxed)),
    ] {
        let _ = writeln!(out, "zlh_artifact_fills_total{{outcome=\"{outcome}\"}} {n}");
    }
    let _ = writeln!(
        out,
        "# HELP zlh_artifact_fill_waiters Requests waiting for an upstream fill of the artifact mirror.\n# TYPE zlh_artifact_fill_waiters gauge\nzlh_artifact_fill_waiters {}",
        a.waiters.load(Ordering::Relaxed)
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        out,
    ))
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
