//! The reconciler (cron, every minute, and once at every start): compares the
//! database with the world and repairs what it safely can — records each agent's
//! state on its server row, republishes edge records, fails servers stuck past their
//! deadline with no live job. Everything it did or could not do is an event and a
//! figure in `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::agent::client::AgentClient;
use crate::db::now_ms;
use crate::domain::DomainError;
use crate::domain::edge as records;
use crate::domain::follow;
use crate::domain::servers::{self, ServerStatus};
use crate::jobs::services::Services;
use crate::queue::{Handler, JobFailure, Outcome, handler_fn};

pub const RECONCILE: &str = "reconcile";

/// What the reconciler did, since this process started.
#[derive(Default)]
pub struct ReconcileStats {
    pub runs: AtomicU64,
    pub agents_polled: AtomicU64,
    pub agents_unreachable: AtomicU64,
    pub crashed_detected: AtomicU64,
    /// Crashed (or stopped) servers whose game came back by itself.
    pub recovered: AtomicU64,
    pub stuck_failed: AtomicU64,
    pub edge_republished: AtomicU64,
    /// Proxy registrations removed because their server's game is not ready.
    pub edge_withdrawn: AtomicU64,
    pub edge_failures: AtomicU64,
}

pub fn handler(svc: Arc<Services>) -> Arc<dyn Handler> {
    Arc::new(
        handler_fn(RECONCILE, move |_ctx| {
            let svc = svc.clone();
            async move {
                reconcile(&svc)
                    .await
                    .map_err(|e| JobFailure::retry(e.to_string()))?;
                Ok(Outcome::Complete)
            }
        })
        // It only compares and repairs: safe to run after a restore without an operator.
        .replay_safe(super::is_replay_safe(RECONCILE))
        .timeout(Duration::from_secs(300)),
    )
}

pub async fn reconcile(svc: &Services) -> Result<(), DomainError> {
    svc.reconcile.runs.fetch_add(1, Ordering::Relaxed);
    poll_agents(svc).await?;
    fail_stuck(svc).await?;
    crate::jobs::edge::reconcile_edge(svc).await?;
    Ok(())
}

/// Asks the agent of every server whose status follows its game (running, crashed,
/// stopped; no job in its lane) what the game does, records that on the row, and
/// moves the server where the world already is (`domain::follow`): crashed, back to
/// running, stopped. Velocity follows readiness: a server leaves the proxy when it
/// stops being `running` and is registered again when it comes back.
async fn poll_agents(svc: &Services) -> Result<(), DomainError> {
    let list = svc.db.call(|c| follow::watched(c)).await?;
    for w in list {
        svc.reconcile.agents_polled.fetch_add(1, Ordering::Relaxed);
        let client = AgentClient::new(
            w.agent_url.clone(),
            w.agent_token.clone(),
            format!("agent of server {} ({})", w.id, w.name),
        );
        let seen = client.status().await;
        // Which build it runs, so the UI and doctor can name agents older than zlh.
        let version = match &seen {
            Ok(_) => client.version().await.ok().map(|v| v.label()),
            Err(_) => None,
        };
        if seen.is_err() {
            svc.reconcile
                .agents_unreachable
                .fetch_add(1, Ordering::Relaxed);
            if w.status == ServerStatus::Stopped {
                // A stopped server's container may be off: not news.
                continue;
            }
        }
        let id = w.id;
        let moved = svc
            .db
            .write(move |tx| {
                let (state_before, crashes_before, status) = follow::recorded(tx, id)?;
                let (agent_state, ready, crashes) = match &seen {
                    Ok(st) => (st.state.to_string(), st.ready, Some(st.crash_count as i64)),
                    Err(_) => ("unreachable".to_string(), false, None),
                };
                // Decided on the row as it is now, not as it was listed: a job that
                // started since owns the status.
                let busy = crate::queue::lane_busy(tx, &servers::lane(id))?;
                let decision = match &seen {
                    Ok(st) if !busy => {
                        follow::decide(status, state_before.as_deref(), crashes_before, st)
                    }
                    _ => None,
                };
                servers::record_agent_view(tx, id, &agent_state, ready, crashes)?;
                if let Some(v) = &version {
                    crate::domain::upgrades::record_version(tx, id, v)?;
                }
                // Report changes once, not every minute.
                if decision.is_none() && state_before.as_deref() != Some(agent_state.as_str()) {
                    let message = match &seen {
                        Err(e) => format!("agent stopped answering: {e}"),
                        Ok(_) => format!("agent reports {agent_state}"),
                    };
                    servers::add_event(tx, id, None, None, None, "reconciler", &message)?;
                }
                match decision {
                    Some(m) => {
                        follow::apply(tx, id, &m)?;
                        Ok::<_, DomainError>(Some(m.to))
                    }
                    None => Ok(None),
                }
            })
            .await?;
        match moved {
            Some(ServerStatus::Crashed) | Some(ServerStatus::Stopped) => {
                if moved == Some(ServerStatus::Crashed) {
                    svc.reconcile
                        .crashed_detected
                        .fetch_add(1, Ordering::Relaxed);
                }
                // Players get the proxy's "server unavailable", not a dead port. A
                // failure stays on the record; the edge reconcile below retries it.
                if let Err(e) =
                    crate::jobs::edge::unpublish_server(svc, id, Some(&[records::VELOCITY])).await
                {
                    tracing::warn!(server = id, error = %e, "unregistering a server whose game went down");
                }
            }
            Some(ServerStatus::Running) => {
                svc.reconcile.recovered.fetch_add(1, Ordering::Relaxed);
                let ctx = svc
                    .db
                    .call(move |c| {
                        let server = servers::get(c, id)?
                            .ok_or_else(|| DomainError::NotFound(format!("server {id}")))?;
                        let (template, _) = servers::context(c, &server)?;
                        Ok::<_, DomainError>((server, template))
                    })
                    .await?;
                crate::jobs::edge::publish_server(svc, &ctx.0, &ctx.1).await?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Servers in a transitional status past its deadline with no job that could move
/// them on are failed with a reason (retry, reinstall and delete stay possible).
pub async fn fail_stuck(svc: &Services) -> Result<usize, DomainError> {
    let n = svc
        .db
        .write(|tx| {
            let now = now_ms();
            let stuck = servers::stuck(tx, now)?;
            for (id, _, status) in &stuck {
                servers::fail(
                    tx,
                    *id,
                    status.as_str(),
                    "stuck past its deadline with no job working on it (failed by the reconciler)",
                    None,
                )?;
            }
            Ok::<_, DomainError>(stuck.len())
        })
        .await?;
    svc.reconcile
        .stuck_failed
        .fetch_add(n as u64, Ordering::Relaxed);
    Ok(n)
}
