//! The reconciler (cron, every minute, and once at every start): compares the
//! database with the world and repairs what it safely can — records each agent's
//! state on its server row, republishes edge records, fails servers stuck past their
//! deadline with no live job. Everything it did or could not do is an event and a
//! figure in `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::agent::AgentState;
use crate::agent::client::AgentClient;
use crate::db::now_ms;
use crate::domain::DomainError;
use crate::domain::servers::{self, ServerStatus};
use crate::queue::{Handler, JobFailure, Outcome, handler_fn};
use crate::services::Services;

pub const RECONCILE: &str = "reconcile";

/// What the reconciler did, since this process started.
#[derive(Default)]
pub struct ReconcileStats {
    pub runs: AtomicU64,
    pub agents_polled: AtomicU64,
    pub agents_unreachable: AtomicU64,
    pub crashed_detected: AtomicU64,
    pub stuck_failed: AtomicU64,
    pub edge_republished: AtomicU64,
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
        .replay_safe(true)
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

/// Records every running server's agent state on its row; a game the agent reports
/// crashed (or gone) marks the server so, once, with an event.
async fn poll_agents(svc: &Services) -> Result<(), DomainError> {
    let list: Vec<(i64, String, String, String)> = svc
        .db
        .call(|c| {
            let mut s = c.prepare(
                "SELECT id, name, agent_token, json_extract(checkpoints, '$.address.agent_url')
                 FROM servers WHERE deleted_at IS NULL AND status IN ('running', 'crashed')
                   AND json_extract(checkpoints, '$.address.agent_url') IS NOT NULL",
            )?;
            let rows = s.query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    crate::db::secret::open_column(r, 2)?,
                    r.get(3)?,
                ))
            })?;
            Ok::<_, DomainError>(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await?;
    for (id, name, token, url) in list {
        svc.reconcile.agents_polled.fetch_add(1, Ordering::Relaxed);
        let client = AgentClient::new(url, token, format!("agent of server {id} ({name})"));
        let seen = client.status().await;
        let (agent_state, ready, crashes, reachable) = match &seen {
            Ok(st) => (
                st.state.to_string(),
                st.ready,
                Some(st.crash_count as i64),
                true,
            ),
            Err(_) => ("unreachable".to_string(), false, None, false),
        };
        if !reachable {
            svc.reconcile
                .agents_unreachable
                .fetch_add(1, Ordering::Relaxed);
        }
        let error = seen.as_ref().err().map(|e| e.to_string());
        let game_down = matches!(
            seen.as_ref().map(|s| s.state),
            Ok(AgentState::Crashed | AgentState::Error | AgentState::Stopped)
        );
        let crashed = svc
            .db
            .write(move |tx| {
                let before: (Option<String>, ServerStatus) = tx.query_row(
                    "SELECT agent_state, status FROM servers WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                servers::record_agent_view(tx, id, &agent_state, ready, crashes)?;
                // Report changes once, not every minute.
                if before.0.as_deref() != Some(agent_state.as_str()) {
                    let message = match &error {
                        Some(e) => format!("agent stopped answering: {e}"),
                        None => format!("agent reports {agent_state}"),
                    };
                    servers::add_event(tx, id, None, None, None, "reconciler", &message)?;
                }
                if game_down && before.1 == ServerStatus::Running {
                    servers::transition(
                        tx,
                        id,
                        ServerStatus::Crashed,
                        Some(&format!("the agent reports the game {agent_state}")),
                        None,
                        "reconciler",
                    )?;
                    return Ok::<_, DomainError>(true);
                }
                Ok(false)
            })
            .await?;
        if crashed {
            svc.reconcile
                .crashed_detected
                .fetch_add(1, Ordering::Relaxed);
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
            let mut s = tx.prepare(
                "SELECT id, status FROM servers s
                 WHERE deleted_at IS NULL AND status_deadline IS NOT NULL AND status_deadline < ?1
                   AND status IN ('pending', 'provisioning', 'installing', 'starting', 'stopping', 'deleting')
                   AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.lane = 'server:' || s.id
                                   AND j.state IN ('scheduled', 'available', 'running', 'retryable', 'held'))",
            )?;
            let stuck: Vec<(i64, ServerStatus)> = s
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
            for (id, status) in &stuck {
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
