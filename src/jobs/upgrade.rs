//! `server.agent_upgrade`, in the server's lane: has the server's agent replace itself
//! with this zlh's binary (served at `/install/zlh`), then waits for its `/health`, the
//! new `/version` and — when the game was running — `ready` again. Every step is an
//! event on the server's timeline. An upgrade never fails the server: the game is
//! untouched when the agent cannot upgrade (an older agent without `/upgrade`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use crate::agent::client::AgentClientError;
use crate::agent::{AgentVersion, UpgradeRequest};
use crate::domain::upgrades::{self, JOB_AGENT_UPGRADE};
use crate::jobs::servers::{START_DEADLINE, StepError, Work, poll, reach_agent, work_handlers};
use crate::jobs::services::Services;
use crate::queue::{Handler, JobFailure, JobResult, Outcome};

/// How long an agent may take from "restarting" to answering with its new version.
const RESTART_DEADLINE: Duration = Duration::from_secs(180);

pub fn handlers(svc: Arc<Services>) -> Vec<Arc<dyn Handler>> {
    // Waiting for the last player to leave may take the evening.
    work_handlers(
        svc,
        &[JOB_AGENT_UPGRADE],
        Duration::from_secs(24 * 3600),
        |_, _, w| async move { upgrade(w).await },
    )
}

fn failure(e: StepError) -> JobFailure {
    match e {
        StepError::Transient(m) => JobFailure::retry(m),
        StepError::Fatal(m) => JobFailure::fatal(m),
    }
}

async fn record(w: &Work, version: String) {
    let sid = w.server.id;
    if let Err(e) = w
        .svc
        .db
        .write(move |tx| upgrades::record_version(tx, sid, &version))
        .await
    {
        tracing::warn!(server = sid, error = %e, "recording the agent's version");
    }
}

async fn upgrade(mut w: Work) -> JobResult {
    if w.server.deleted_at.is_some() {
        return Ok(Outcome::Complete);
    }
    let want = AgentVersion::this_build().label();
    let Some(url) = w.agent_url() else {
        return Err(JobFailure::fatal(format!(
            "server {} has no agent yet (it was never provisioned)",
            w.server.id
        )));
    };
    let agent = reach_agent(&w, &url).await.map_err(failure)?;
    let before = agent
        .version()
        .await
        .map_err(|e| failure(e.into()))?
        .label();
    record(&w, before.clone()).await;
    if before == want {
        w.event(format!("agent upgrade: the agent already runs {want}"))
            .await;
        return Ok(Outcome::Complete);
    }
    let was_ready = agent.status().await.is_ok_and(|s| s.ready);
    let sha256 = tokio::task::spawn_blocking(crate::shipping::enroll::own_sha256)
        .await
        .map_err(|e| JobFailure::retry(format!("hashing this binary: {e}")))?
        .map_err(|e| JobFailure::retry(format!("hashing this binary: {e}")))?;
    let req = UpgradeRequest {
        url: format!("{}/install/zlh", w.svc.config.advertised()),
        sha256,
        version: want.clone(),
    };
    match agent.upgrade(&req).await {
        Ok(_) => {
            w.event(format!("agent upgrade: {before} → {want} started"))
                .await
        }
        // One already under way (a retry of this job): follow it.
        Err(AgentClientError::Status { status: 409, .. }) => {}
        Err(AgentClientError::Status {
            status: 404 | 405, ..
        }) => {
            let message = format!(
                "agent upgrade: the agent ({before}) has no POST /upgrade; nothing was changed. \
                 Replace its binary by hand (or re-create the node's base template) to upgrade it"
            );
            w.event(message.clone()).await;
            return Err(JobFailure::fatal(message));
        }
        Err(e) => return Err(failure(e.into())),
    }
    // Until the agent answers with the new version: say what it waits for, once.
    let mut said: Option<String> = None;
    let mut restarting_since: Option<tokio::time::Instant> = None;
    loop {
        if w.ctx.is_cancelled() {
            return Err(JobFailure::fatal("cancelled"));
        }
        if let Ok(v) = agent.version().await
            && v.label() == want
        {
            break;
        }
        match agent.upgrade_status().await {
            Ok(u) if u.state == "failed" => {
                let message = format!(
                    "agent upgrade failed: {}",
                    u.message.unwrap_or_else(|| "no reason given".into())
                );
                w.event(message.clone()).await;
                return Err(JobFailure::fatal(message));
            }
            Ok(u) => {
                if u.state == "waiting" && said.as_deref() != u.message.as_deref() {
                    let m = u.message.clone().unwrap_or_default();
                    w.event(format!("agent upgrade {m}")).await;
                    w.note(format!("agent upgrade {m}")).await;
                    if let Err(e) = w.ctx.checkpoint(json!({"waiting": m})).await {
                        return Err(JobFailure::retry(e.to_string()));
                    }
                    said = u.message;
                }
                restarting_since = (u.state == "restarting")
                    .then(|| restarting_since.unwrap_or_else(tokio::time::Instant::now));
            }
            // Restarting: not answering for a moment is expected.
            Err(_) => {
                restarting_since.get_or_insert_with(tokio::time::Instant::now);
            }
        }
        if restarting_since.is_some_and(|t| t.elapsed() > RESTART_DEADLINE) {
            let message = format!(
                "agent upgrade: the agent did not come back as {want} within {} s",
                RESTART_DEADLINE.as_secs()
            );
            w.event(message.clone()).await;
            return Err(JobFailure::retry(message));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    record(&w, want.clone()).await;
    if was_ready {
        let a = agent.clone();
        let waited = poll(&w.ctx, "the game to be ready again", START_DEADLINE, || {
            let a = a.clone();
            async move {
                match a.status().await {
                    Ok(s) if s.ready => Ok(Some(())),
                    Ok(_) => Ok(None),
                    Err(e) if e.is_transient() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        })
        .await;
        if let Err(StepError::Transient(m) | StepError::Fatal(m)) = waited {
            let message = format!("agent upgraded to {want}, but the game is not ready: {m}");
            w.event(message.clone()).await;
            return Err(JobFailure::fatal(message));
        }
    }
    let done = format!(
        "agent upgraded: {before} → {want}{}",
        if was_ready {
            "; the game is ready again"
        } else {
            ""
        }
    );
    w.note(done.clone()).await;
    w.event(done).await;
    Ok(Outcome::Complete)
}
