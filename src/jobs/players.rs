//! Player actions: carried out through the game's console and read back from its
//! lists; on a server that is not running, a job that waits for the next ready.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::servers::{Work, work_handlers};
use crate::agent::PlayersView;
use crate::agent::client::{AgentClient, AgentClientError};
use crate::domain::players::{JOB_PLAYERS, PlayerAction, PlayerRequest};
use crate::domain::servers::ServerStatus;
use crate::jobs::services::Services;
use crate::queue::{Handler, JobFailure, JobResult, Outcome};

/// How long the game gets to show an action in its lists.
const READ_BACK: Duration = Duration::from_secs(5);
/// How often a queued action looks whether its server is ready.
const WAIT_READY: Duration = Duration::from_secs(2);

/// What happened to an action on a running server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Applied {
    pub command: String,
    /// The game's lists (or online names) show the change.
    pub confirmed: bool,
    pub players: PlayersView,
}

fn has(list: &[crate::agent::ListedPlayer], name: &str) -> bool {
    list.iter().any(|p| {
        p.name
            .as_deref()
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    })
}

/// Whether `view` shows `req` done.
fn shows(view: &PlayersView, req: &PlayerRequest) -> bool {
    let t = req.target.as_str();
    let ip = t.parse::<std::net::IpAddr>().is_ok();
    let banned_ip = view.banned_ips.iter().any(|b| b.ip == t);
    match req.action {
        PlayerAction::Whitelist => has(&view.whitelist, t),
        PlayerAction::Unwhitelist => !has(&view.whitelist, t),
        PlayerAction::Op => has(&view.ops, t),
        PlayerAction::Deop => !has(&view.ops, t),
        PlayerAction::Ban if ip => banned_ip,
        PlayerAction::Ban => has(&view.banned_players, t),
        PlayerAction::Pardon if ip => !banned_ip,
        PlayerAction::Pardon => !has(&view.banned_players, t),
        PlayerAction::Kick => !view.names.iter().any(|n| n.eq_ignore_ascii_case(t)),
    }
}

/// Sends `req`'s console command once, then reads the game's lists back until they
/// show it (or [`READ_BACK`] passes: `confirmed: false`).
pub async fn apply_running(
    agent: &AgentClient,
    req: &PlayerRequest,
) -> Result<Applied, AgentClientError> {
    let command = req.command();
    agent.console_command(&command).await?;
    let kick = req.action == PlayerAction::Kick;
    let end = tokio::time::Instant::now() + READ_BACK;
    let mut pause = Duration::from_millis(50);
    loop {
        let view = agent.players(kick).await?;
        let confirmed = shows(&view, req);
        if confirmed || tokio::time::Instant::now() + pause > end {
            return Ok(Applied {
                command,
                confirmed,
                players: view,
            });
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

pub fn handlers(svc: Arc<Services>) -> Vec<Arc<dyn Handler>> {
    work_handlers(
        svc,
        &[JOB_PLAYERS],
        Duration::from_secs(120),
        |_kind, payload, w| async move { run(payload, w).await },
    )
}

async fn run(payload: Value, w: Work) -> JobResult {
    let req: PlayerRequest = serde_json::from_value(payload["request"].clone())
        .map_err(|e| JobFailure::fatal(format!("bad player request: {e}")))?;
    if w.server.deleted_at.is_some() || w.server.status == ServerStatus::Deleted {
        return Ok(Outcome::Complete);
    }
    // Not an error: the action waits for the server's next ready.
    if w.server.status != ServerStatus::Running {
        return Ok(Outcome::Snooze(WAIT_READY));
    }
    let Some(agent) = w.server.agent_client() else {
        return Ok(Outcome::Snooze(WAIT_READY));
    };
    match agent.status().await {
        Ok(st) if st.ready => {}
        Ok(_) => return Ok(Outcome::Snooze(WAIT_READY)),
        Err(e) if e.is_transient() => return Ok(Outcome::Snooze(WAIT_READY)),
        Err(e) => return Err(JobFailure::retry(e.to_string())),
    }
    match apply_running(&agent, &req).await {
        Ok(a) => {
            let how = if a.confirmed {
                "the game's lists show it"
            } else {
                "sent; the game's lists do not show it yet"
            };
            w.event(format!(
                "applied at ready: {} (`{}`: {how})",
                req.describe(),
                a.command
            ))
            .await;
            Ok(Outcome::Complete)
        }
        // Sent but not read back: the command ran; running it again is not "once".
        Err(e) if a_command_was_sent(&e) => {
            w.event(format!(
                "applied at ready: {} (sent; reading the lists back failed: {e})",
                req.describe()
            ))
            .await;
            Ok(Outcome::Complete)
        }
        Err(e) => Err(JobFailure::retry(format!("{}: {e}", req.describe()))),
    }
}

/// `apply_running` fails before sending only in `console_command`, whose error says so.
fn a_command_was_sent(e: &AgentClientError) -> bool {
    let what = match e {
        AgentClientError::Unreachable { what, .. }
        | AgentClientError::Unauthorized { what, .. }
        | AgentClientError::Status { what, .. }
        | AgentClientError::Decode { what, .. } => *what,
    };
    what != "sending a console command"
}
