//! Player actions (whitelist, op, ban, kick …): the rules of a request and, for a
//! server that is not running, the job that applies it at the next ready.

use rusqlite::Transaction;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::DomainError;
use super::servers::{self, ServerStatus};
use super::users::User;
use crate::db::now_ms;
use crate::queue::{self, NewJob};

/// Applies queued player actions once the server is ready (lane `server:<id>`).
pub const JOB_PLAYERS: &str = "server.players";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlayerAction {
    Whitelist,
    Unwhitelist,
    Op,
    Deop,
    Ban,
    Pardon,
    Kick,
}

impl PlayerAction {
    pub const ALL: [PlayerAction; 7] = [
        PlayerAction::Whitelist,
        PlayerAction::Unwhitelist,
        PlayerAction::Op,
        PlayerAction::Deop,
        PlayerAction::Ban,
        PlayerAction::Pardon,
        PlayerAction::Kick,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PlayerAction::Whitelist => "whitelist",
            PlayerAction::Unwhitelist => "unwhitelist",
            PlayerAction::Op => "op",
            PlayerAction::Deop => "deop",
            PlayerAction::Ban => "ban",
            PlayerAction::Pardon => "pardon",
            PlayerAction::Kick => "kick",
        }
    }

    pub fn parse(s: &str) -> Option<PlayerAction> {
        PlayerAction::ALL.into_iter().find(|a| a.as_str() == s)
    }

    /// Whether the game takes a reason with it.
    pub fn takes_reason(self) -> bool {
        matches!(self, PlayerAction::Ban | PlayerAction::Kick)
    }

    /// Only meaningful while the game runs: a kick is never queued.
    pub fn needs_running(self) -> bool {
        self == PlayerAction::Kick
    }
}

/// A checked request: the target and the console command that carries it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlayerRequest {
    pub action: PlayerAction,
    /// A player name, or an IP address for ban / pardon.
    pub target: String,
    #[serde(default)]
    pub reason: Option<String>,
}

fn is_player_name(s: &str) -> bool {
    (1..=16).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl PlayerRequest {
    /// Checks the target (a Minecraft name; an IP for ban/pardon) and the reason.
    pub fn new(
        action: PlayerAction,
        target: &str,
        reason: Option<&str>,
    ) -> Result<PlayerRequest, DomainError> {
        let is_ip = target.parse::<std::net::IpAddr>().is_ok();
        let ip_ok = matches!(action, PlayerAction::Ban | PlayerAction::Pardon);
        if !(is_player_name(target) || (is_ip && ip_ok)) {
            return Err(DomainError::Invalid {
                field: "name".into(),
                message: if ip_ok {
                    "a player name (1-16 letters, digits, _) or an IP address".into()
                } else {
                    "a player name (1-16 letters, digits, _)".into()
                },
            });
        }
        let reason = reason.map(str::trim).filter(|r| !r.is_empty());
        if let Some(r) = reason {
            if !action.takes_reason() {
                return Err(DomainError::Invalid {
                    field: "reason".into(),
                    message: format!("{} takes no reason (ban and kick do)", action.as_str()),
                });
            }
            if r.chars().count() > 200 || r.chars().any(char::is_control) {
                return Err(DomainError::Invalid {
                    field: "reason".into(),
                    message: "one line of at most 200 characters".into(),
                });
            }
        }
        Ok(PlayerRequest {
            action,
            target: target.to_string(),
            reason: reason.map(String::from),
        })
    }

    fn is_ip(&self) -> bool {
        self.target.parse::<std::net::IpAddr>().is_ok()
    }

    /// The vanilla console command.
    pub fn command(&self) -> String {
        let t = &self.target;
        let base = match (self.action, self.is_ip()) {
            (PlayerAction::Whitelist, _) => format!("whitelist add {t}"),
            (PlayerAction::Unwhitelist, _) => format!("whitelist remove {t}"),
            (PlayerAction::Op, _) => format!("op {t}"),
            (PlayerAction::Deop, _) => format!("deop {t}"),
            (PlayerAction::Ban, false) => format!("ban {t}"),
            (PlayerAction::Ban, true) => format!("ban-ip {t}"),
            (PlayerAction::Pardon, false) => format!("pardon {t}"),
            (PlayerAction::Pardon, true) => format!("pardon-ip {t}"),
            (PlayerAction::Kick, _) => format!("kick {t}"),
        };
        match &self.reason {
            Some(r) => format!("{base} {r}"),
            None => base,
        }
    }

    /// For people: `whitelist Alice`, `ban 10.0.0.1 (griefing)`.
    pub fn describe(&self) -> String {
        match &self.reason {
            Some(r) => format!("{} {} ({r})", self.action.as_str(), self.target),
            None => format!("{} {}", self.action.as_str(), self.target),
        }
    }
}

/// Queues `req` for a server that is not running: a job in its lane that waits for
/// the next ready and applies it once, with an event on the timeline. The same
/// request already waiting is reused.
pub fn queue_action(
    tx: &Transaction<'_>,
    user: &User,
    server_id: i64,
    req: &PlayerRequest,
) -> Result<i64, DomainError> {
    let server = servers::get_visible(tx, user, server_id)?;
    if server.deleted_at.is_some() || server.status == ServerStatus::Deleted {
        return Err(DomainError::Conflict(format!(
            "server {server_id} is deleted"
        )));
    }
    if req.action.needs_running() {
        return Err(DomainError::Conflict(format!(
            "{} is {}: a kick needs the game running",
            server.name, server.status
        )));
    }
    let job = NewJob::new(JOB_PLAYERS, json!({"server_id": server_id, "request": req}))
        .lane(servers::lane(server_id))
        .unique_key(format!(
            "server:{server_id}:players:{}:{}",
            req.action.as_str(),
            req.target.to_ascii_lowercase()
        ))
        // Waiting for a start is a snooze, not an attempt; attempts are for failures.
        .max_attempts(5)
        .priority(5);
    let id = queue::enqueue(tx, &job, now_ms())?.id;
    servers::add_event(
        tx,
        server_id,
        None,
        None,
        Some(id),
        &format!("user:{}", user.username),
        &format!(
            "queued: {} (applied once the server is next ready)",
            req.describe()
        ),
    )?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_become_vanilla_commands() {
        let r = PlayerRequest::new(PlayerAction::Ban, "Steve", Some("griefing")).unwrap();
        assert_eq!(r.command(), "ban Steve griefing");
        let r = PlayerRequest::new(PlayerAction::Pardon, "10.0.0.7", None).unwrap();
        assert_eq!(r.command(), "pardon-ip 10.0.0.7");
        let r = PlayerRequest::new(PlayerAction::Whitelist, "Alex_2", None).unwrap();
        assert_eq!(r.command(), "whitelist add Alex_2");
    }

    #[test]
    fn bad_targets_and_reasons_name_the_field() {
        for (a, t, r, field) in [
            (PlayerAction::Op, "10.0.0.7", None, "name"),
            (PlayerAction::Op, "a b", None, "name"),
            (PlayerAction::Op, "seventeen_chars_x", None, "name"),
            (PlayerAction::Op, "Steve", Some("why"), "reason"),
            (PlayerAction::Kick, "Steve", Some("a\nb"), "reason"),
        ] {
            match PlayerRequest::new(a, t, r) {
                Err(DomainError::Invalid { field: f, .. }) => assert_eq!(f, field, "{t:?}"),
                other => panic!("{t:?}: {other:?}"),
            }
        }
    }
}
