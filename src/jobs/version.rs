//! A version change (local nodes): protected world backup → stop → the agent
//! reinstalls the new version keeping the world → start → ready. When the new
//! version does not become ready by its deadline (or the install fails), it rolls
//! back: the server directory (old jar, world, config) comes back from that backup,
//! the agent reinstalls the old version, the server runs again, and the timeline
//! says why.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};

use super::servers::{
    StepError, Work, build_payload, publish, reach_agent, wait_ready, work_handlers,
};
use super::worlds::{protected_backup, remove_leftover, sibling, unpack_checked};
use crate::agent::client::AgentClient;
use crate::domain::backups::{self, Backup, BackupState};
use crate::domain::servers::{self, ServerStatus};
use crate::domain::versions::{self, JOB_VERSION, VersionJob};
use crate::jobs::services::Services;
use crate::queue::{Handler, JobFailure, JobResult, Outcome};

fn text(e: StepError) -> String {
    match e {
        StepError::Transient(m) | StepError::Fatal(m) => m,
    }
}

pub fn handlers(svc: Arc<Services>) -> Vec<Arc<dyn Handler>> {
    work_handlers(
        svc,
        &[JOB_VERSION],
        Duration::from_secs(3 * 3600),
        |_kind, payload, mut w| async move { run(payload, &mut w).await },
    )
}

async fn run(payload: Value, w: &mut Work) -> JobResult {
    let job: VersionJob = serde_json::from_value(payload)
        .map_err(|e| JobFailure::fatal(format!("bad version job: {e}")))?;
    if w.server.deleted_at.is_some() {
        return Ok(Outcome::Complete);
    }
    // A run cut short (zlh killed mid-change) left the backup it took and whether the
    // server was running in the job's checkpoint: this run goes on from there.
    let prior = w.ctx.checkpoint.clone().unwrap_or(Value::Null);
    let prior_backup = prior["backup_id"].as_i64();
    let resumable = prior_backup.is_some() && w.server.version == job.to;
    if w.server.version != job.from && !resumable {
        let m = format!(
            "version change to {} skipped: the server runs {} now, not {}",
            job.to, w.server.version, job.from
        );
        w.event(m.clone()).await;
        return Err(JobFailure::fatal(m));
    }
    let Some(url) = w.agent_url() else {
        return Err(JobFailure::fatal("the server has no agent yet".to_string()));
    };
    let was_running = prior["was_running"]
        .as_bool()
        .unwrap_or(w.server.status == ServerStatus::Running);
    let backup = match prior_backup {
        Some(id) => {
            let found = w
                .svc
                .db
                .call(move |c| backups::get(c, id))
                .await
                .map_err(|e| JobFailure::retry(format!("reading world backup {id}: {e}")))?;
            let Some(b) = found.filter(|b| b.state == BackupState::Completed) else {
                let m = format!(
                    "version change to {} cannot resume: its world backup {id} is gone or incomplete",
                    job.to
                );
                w.event(m.clone()).await;
                return Err(JobFailure::fatal(m));
            };
            w.event(format!(
                "zlh restarted during the version change to {}: resuming with world backup {id}",
                job.to
            ))
            .await;
            b
        }
        None => {
            // 1. The world, protected, before anything changes.
            w.note(format!(
                "backing up the world before the upgrade to {}",
                job.to
            ))
            .await;
            let b = match protected_backup(w, format!("before upgrade to {}", job.to)).await {
                Ok(b) => b,
                Err(e) => {
                    let m = format!(
                        "version change to {} not started: the world backup failed ({e}); nothing changed",
                        job.to
                    );
                    w.event(m.clone()).await;
                    return Err(JobFailure::fatal(m));
                }
            };
            w.ctx
                .checkpoint(json!({"backup_id": b.id, "was_running": was_running}))
                .await
                .map_err(|e| {
                    JobFailure::retry(format!("recording the version change's backup: {e}"))
                })?;
            b
        }
    };
    // 2–4. Install the new version (the agent stops the game first and keeps the
    // world), start, wait for ready.
    match switch_to(
        w,
        &url,
        &job.to,
        Duration::from_secs(job.ready_deadline_secs),
    )
    .await
    {
        Ok(()) => {
            w.event(format!(
                "version changed: {} → {} (world backup {} kept, protected)",
                job.from, job.to, backup.id
            ))
            .await;
            if !was_running {
                // A stopped server is left as it was found, on its new version.
                stop_after(w, &url).await;
            }
            Ok(Outcome::Complete)
        }
        Err(why) => rollback(w, &url, &job, &backup, &why, was_running).await,
    }
}

/// Records `version` (a new install id) and has the agent install and start it.
async fn switch_to(
    w: &mut Work,
    url: &str,
    version: &str,
    deadline: Duration,
) -> Result<(), String> {
    w.status(
        ServerStatus::Installing,
        Some(format!("installing version {version}")),
    )
    .await
    .map_err(text)?;
    let v = version.to_string();
    let install_id = w
        .fenced(move |tx, sid, _| versions::set_version(tx, sid, &v))
        .await
        .map_err(text)?;
    w.server.version = version.to_string();
    w.server.install_id = install_id;
    let mut payload = build_payload(w).await.map_err(text)?;
    let agent = reach_agent(w, url).await.map_err(text)?;
    // The template's motd is a default the operator may have edited since: the
    // reinstall keeps what the file says.
    if payload.properties.contains_key("motd") {
        match agent.properties().await {
            Ok(file) => {
                if let Some(motd) =
                    crate::agent::properties::Properties::parse(&file.text).get("motd")
                {
                    payload.properties.insert("motd".into(), motd.to_string());
                }
            }
            Err(e) => {
                tracing::warn!(server = w.server.id, error = %e, "reading the motd before a reinstall")
            }
        }
    }
    agent.configure(&payload).await.map_err(|e| e.to_string())?;
    let stored = serde_json::to_value(&payload)
        .map(|mut v| {
            crate::db::secret::redact_payload(&mut v);
            v.to_string()
        })
        .unwrap_or_default();
    let iid = payload.install_id.clone();
    w.fenced(move |tx, sid, _| {
        servers::set_payload(tx, sid, &stored)?;
        servers::checkpoint(tx, sid, "agent_config", json!({"install_id": iid}))
    })
    .await
    .map_err(text)?;
    w.status(
        ServerStatus::Starting,
        Some(format!("starting version {version}")),
    )
    .await
    .map_err(text)?;
    let agent = w.agent(url, &w.server.agent_token);
    wait_ready(w, &agent, deadline).await.map_err(text)?;
    publish(w).await.map_err(text)?;
    w.status(
        ServerStatus::Running,
        Some(format!("running version {version}")),
    )
    .await
    .map_err(text)
}

async fn stop_after(w: &mut Work, url: &str) {
    let agent = w.agent(url, &w.server.agent_token);
    let stopped = match agent.stop().await {
        Ok(()) => w
            .status(ServerStatus::Stopped, Some("stopped".into()))
            .await
            .map_err(text),
        Err(e) => Err(e.to_string()),
    };
    if let Err(e) = stopped {
        w.event(format!(
            "stopping the server again after the version change: {e}"
        ))
        .await;
    }
}

/// The new version did not come up: the directory from the backup, the old version
/// reinstalled, the server up again. The job fails with why, the server runs.
async fn rollback(
    w: &mut Work,
    url: &str,
    job: &VersionJob,
    backup: &Backup,
    why: &str,
    was_running: bool,
) -> JobResult {
    w.event(format!(
        "version {} did not become ready ({why}): rolling back to {} from world backup {}",
        job.to, job.from, backup.id
    ))
    .await;
    let agent = w.agent(url, &w.server.agent_token);
    match restore_dir(w, &agent, backup).await {
        Ok(()) => {}
        Err(e) => {
            let m = format!(
                "rollback of the version change to {} failed: {e}; world backup {} (protected) holds the world from before",
                job.to, backup.id
            );
            let (step, msg) = ("version".to_string(), m.clone());
            if let Err(f) = w
                .fenced(move |tx, sid, jid| servers::fail(tx, sid, &step, &msg, Some(jid)))
                .await
            {
                tracing::error!(server = w.server.id, error = %text(f), "marking the server failed");
            }
            return Err(JobFailure::fatal(m));
        }
    }
    let up = switch_to(w, url, &job.from, Duration::from_secs(300)).await;
    match up {
        Ok(()) => {
            let reason = format!(
                "rolled back to {}: version {} did not become ready ({why})",
                job.from, job.to
            );
            if let Err(e) = w.status(ServerStatus::Running, Some(reason.clone())).await {
                tracing::warn!(server = w.server.id, error = %text(e), "writing the rollback reason");
            }
            w.event(format!(
                "{reason}; the world is back from backup {}",
                backup.id
            ))
            .await;
            if !was_running {
                stop_after(w, url).await;
            }
            Err(JobFailure::fatal(reason))
        }
        Err(e) => {
            let m = format!(
                "version {} did not become ready ({why}) and the rollback to {} did not start either: {e}",
                job.to, job.from
            );
            let (step, msg) = ("version".to_string(), m.clone());
            if let Err(f) = w
                .fenced(move |tx, sid, jid| servers::fail(tx, sid, &step, &msg, Some(jid)))
                .await
            {
                tracing::error!(server = w.server.id, error = %text(f), "marking the server failed");
            }
            Err(JobFailure::fatal(m))
        }
    }
}

/// Stops the game and puts the server directory of `backup` in place (the failed
/// one is removed once the swap is done).
async fn restore_dir(w: &mut Work, agent: &AgentClient, backup: &Backup) -> Result<(), String> {
    w.status(
        ServerStatus::Stopping,
        Some(format!(
            "rolling back: restoring world backup {}",
            backup.id
        )),
    )
    .await
    .map_err(text)?;
    let game_dir = w.svc.local().game_dir(w.server.vmid);
    let staging = sibling(&game_dir, &format!("rollback-{}", backup.id));
    unpack_checked(backup, &staging).await?;
    agent
        .stop()
        .await
        .map_err(|e| format!("stopping the game: {e}"))?;
    let failed = sibling(&game_dir, &format!("failed-upgrade-{}", backup.id));
    remove_leftover(&failed).await;
    tokio::fs::rename(&game_dir, &failed)
        .await
        .map_err(|e| format!("moving the upgraded directory aside: {e}"))?;
    if let Err(e) = tokio::fs::rename(&staging, &game_dir).await {
        // Put the upgraded directory back rather than leave none.
        let back = tokio::fs::rename(&failed, &game_dir).await;
        return Err(format!(
            "moving the backup's directory in: {e}{}",
            match back {
                Ok(()) => String::new(),
                Err(b) => format!("; and moving the upgraded one back: {b}"),
            }
        ));
    }
    remove_leftover(&failed).await;
    Ok(())
}
