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
/// How long one run follows an agent that waits for its players before it snoozes,
/// and for how long.
const WAIT_IN_LANE: Duration = Duration::from_secs(5);
const SNOOZE: Duration = Duration::from_secs(10);

pub fn handlers(svc: Arc<Services>) -> Vec<Arc<dyn Handler>> {
    // A run follows the agent at most through its restart and the game's start; while
    // it waits for players the job snoozes.
    work_handlers(
        svc,
        &[JOB_AGENT_UPGRADE],
        Duration::from_secs(15 * 60),
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
    // An earlier run of this job started the upgrade: follow it.
    let mut cp = w.ctx.checkpoint.clone().unwrap_or_else(|| json!({}));
    let before = match cp["before"].as_str() {
        Some(b) => b.to_string(),
        None => {
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
            start(&w, &agent, &before, &want).await?;
            cp = json!({"before": before, "was_ready": was_ready});
            w.ctx
                .checkpoint(cp.clone())
                .await
                .map_err(|e| JobFailure::retry(e.to_string()))?;
            before
        }
    };
    let was_ready = cp["was_ready"].as_bool().unwrap_or(false);
    // Until the agent answers with the new version. While it waits for players the
    // job snoozes, so the server's lane stays free (a stop may be what it waits for).
    let started = tokio::time::Instant::now();
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
            // The agent restarted without the upgrade taking (say, it was restarted
            // by hand mid-way): start it again.
            Ok(u) if u.state == "idle" => {
                // …unless the new agent just came up between the two questions.
                if agent.version().await.is_ok_and(|v| v.label() == want) {
                    break;
                }
                start(&w, &agent, &before, &want).await?;
            }
            Ok(u) => {
                if u.state == "waiting" {
                    let m = u.message.clone().unwrap_or_default();
                    if cp["said"].as_str() != Some(m.as_str()) {
                        w.event(format!("agent upgrade {m}")).await;
                        w.note(format!("agent upgrade {m}")).await;
                        cp["said"] = json!(m);
                        w.ctx
                            .checkpoint(cp.clone())
                            .await
                            .map_err(|e| JobFailure::retry(e.to_string()))?;
                    }
                    if started.elapsed() > WAIT_IN_LANE {
                        return Ok(Outcome::Snooze(SNOOZE));
                    }
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
    // Ready again only if it was and still should be (a stop may have come between).
    let wait_ready = was_ready && w.server.desired_state == "running";
    if wait_ready {
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
        if wait_ready {
            "; the game is ready again"
        } else {
            ""
        }
    );
    w.note(done.clone()).await;
    w.event(done).await;
    Ok(Outcome::Complete)
}

/// `POST /upgrade` with this zlh's binary; an agent without it fails the job (and only
/// the job).
async fn start(
    w: &Work,
    agent: &crate::agent::client::AgentClient,
    before: &str,
    want: &str,
) -> Result<(), JobFailure> {
    let sha256 = tokio::task::spawn_blocking(crate::shipping::enroll::own_sha256)
        .await
        .map_err(|e| JobFailure::retry(format!("hashing this binary: {e}")))?
        .map_err(|e| JobFailure::retry(format!("hashing this binary: {e}")))?;
    let req = UpgradeRequest {
        url: format!("{}/install/zlh", w.svc.config.advertised()),
        sha256,
        version: want.to_string(),
    };
    match agent.upgrade(&req).await {
        Ok(_) => {
            w.event(format!("agent upgrade: {before} → {want} started"))
                .await;
            Ok(())
        }
        // One already under way: follow it.
        Err(AgentClientError::Status { status: 409, .. }) => Ok(()),
        Err(AgentClientError::Status {
            status: 404 | 405, ..
        }) => {
            let message = format!(
                "agent upgrade: the agent ({before}) has no POST /upgrade; nothing was changed. \
                 Replace its binary by hand (or re-create the node's base template) to upgrade it"
            );
            w.event(message.clone()).await;
            Err(JobFailure::fatal(message))
        }
        Err(e) => Err(failure(e.into())),
    }
}
