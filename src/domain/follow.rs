//! How a server's status follows its game when nobody asked for a change: the
//! automatic transitions of `docs/status.md`. The reconciler asks each agent what its
//! game is doing; [`decide`] says where that moves the server, [`apply`] writes it.
//! A server with a job in its lane is left to that job (it owns the status then).

use rusqlite::{Connection, params};

use super::DomainError;
use super::servers::{self, ServerStatus};
use crate::agent::{AgentState, AgentStatus};

/// Statuses the world may change without a user action.
pub const FOLLOWED: [ServerStatus; 3] = [
    ServerStatus::Running,
    ServerStatus::Crashed,
    ServerStatus::Stopped,
];

/// Console lines of the last crash shown with a status reason.
const TAIL_IN_REASON: usize = 10;

/// A server the reconciler asks about its game.
#[derive(Debug, Clone)]
pub struct Watched {
    pub id: i64,
    pub name: String,
    pub agent_token: String,
    pub agent_url: String,
    pub status: ServerStatus,
}

/// Servers in a followed status, with an agent address, and no job in their lane.
pub fn watched(conn: &Connection) -> Result<Vec<Watched>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT id, name, agent_token, json_extract(checkpoints, '$.address.agent_url'), status
         FROM servers s
         WHERE deleted_at IS NULL AND status IN ('running', 'crashed', 'stopped')
           AND json_extract(checkpoints, '$.address.agent_url') IS NOT NULL
           AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.lane = 'server:' || s.id
                           AND j.state IN {})
         ORDER BY id",
        crate::queue::LIVE_STATES_SQL
    ))?;
    let rows = s.query_map([], |r| {
        Ok(Watched {
            id: r.get(0)?,
            name: r.get(1)?,
            agent_token: crate::db::secret::open_column(r, 2)?,
            agent_url: r.get(3)?,
            status: r.get(4)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// What the world says about a server's status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    pub to: ServerStatus,
    pub reason: String,
    /// An operator should be told (the agent gave up on the game).
    pub alert: bool,
}

/// Where a server in `status` moves, given what its agent said now and what the row
/// recorded at the last look (`recorded_state`, `recorded_crashes`). `None`: it stays.
///
/// The rules (docs/status.md): a running server whose game crashed, or that the agent
/// is restarting after a crash, is `crashed`; a crashed (or stopped) server whose game
/// is running and ready again is `running`; a running server whose game the agent
/// reports stopped is `stopped`; an agent that gave up (`error`) is shown once, with
/// the last crash's console lines, as an alert.
pub fn decide(
    status: ServerStatus,
    recorded_state: Option<&str>,
    recorded_crashes: i64,
    seen: &AgentStatus,
) -> Option<Move> {
    use AgentState as A;
    use ServerStatus as S;
    let crashes = seen.crash_count as i64;
    let gave_up = || Move {
        to: S::Crashed,
        reason: gave_up_reason(seen),
        alert: true,
    };
    match (status, seen.state) {
        (S::Running, A::Error) => Some(gave_up()),
        (S::Running, A::Crashed) => Some(Move {
            to: S::Crashed,
            reason: format!(
                "the game crashed (crash {crashes}{}); the agent restarts it",
                exit_of(seen)
            ),
            alert: false,
        }),
        // Restarted between two looks: the crash still happened.
        (S::Running, A::Starting | A::Running) if !seen.ready && crashes > recorded_crashes => {
            Some(Move {
                to: S::Crashed,
                reason: format!(
                    "the game crashed (crash {crashes}{}); the agent is restarting it",
                    exit_of(seen)
                ),
                alert: false,
            })
        }
        (S::Running, A::Stopped) => Some(Move {
            to: S::Stopped,
            reason: "the agent reports the game stopped, and zlh did not stop it".into(),
            alert: false,
        }),
        (S::Crashed, A::Running) if seen.ready => Some(Move {
            to: S::Running,
            reason: format!(
                "recovered after crash {crashes}: the game answers its readiness probe"
            ),
            alert: false,
        }),
        (S::Crashed, A::Error) if recorded_state != Some(A::Error.as_str()) => Some(gave_up()),
        (S::Stopped, A::Running) if seen.ready => Some(Move {
            to: S::Running,
            reason:
                "the game is running again, started outside zlh: it answers its readiness probe"
                    .into(),
            alert: false,
        }),
        _ => None,
    }
}

fn exit_of(seen: &AgentStatus) -> String {
    match &seen.last_crash {
        Some(c) => match (c.exit_code, c.signal) {
            (Some(code), _) => format!(", exit code {code}"),
            (None, Some(sig)) => format!(", killed by signal {sig}"),
            (None, None) => String::new(),
        },
        None => String::new(),
    }
}

fn gave_up_reason(seen: &AgentStatus) -> String {
    let mut reason = format!(
        "the agent gave up restarting the game: {}",
        seen.error.as_deref().unwrap_or("no reason given")
    );
    if let Some(c) = &seen.last_crash {
        let tail = &c.log_tail[c.log_tail.len().saturating_sub(TAIL_IN_REASON)..];
        if !tail.is_empty() {
            reason.push_str("\nlast console lines:\n");
            reason.push_str(&tail.join("\n"));
        }
    }
    reason
}

/// What the row said before this look: (agent state, crash count, status).
pub fn recorded(
    conn: &Connection,
    server_id: i64,
) -> Result<(Option<String>, i64, ServerStatus), DomainError> {
    Ok(conn.query_row(
        "SELECT agent_state, crash_count, status FROM servers WHERE id = ?1",
        params![server_id],
        |r| {
            Ok((
                r.get(0)?,
                r.get::<_, Option<i64>>(1)?.unwrap_or(0),
                r.get(2)?,
            ))
        },
    )?)
}

/// Applies a move decided on the row's current values, with its event (an alert when
/// the move says so). Returns the status the server left.
pub fn apply(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    m: &Move,
) -> Result<ServerStatus, DomainError> {
    let from = servers::transition(conn, server_id, m.to, Some(&m.reason), None, "reconciler")?;
    if m.alert {
        servers::mark_last_event_alert(conn, server_id)?;
    }
    if m.to == ServerStatus::Stopped {
        // The world says stopped: a later reconcile must not start it behind the user.
        conn.execute(
            "UPDATE servers SET desired_state = 'stopped' WHERE id = ?1",
            [server_id],
        )?;
    } else if m.to == ServerStatus::Running {
        conn.execute(
            "UPDATE servers SET desired_state = 'running' WHERE id = ?1",
            [server_id],
        )?;
    }
    Ok(from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::LastCrash;

    fn seen(state: AgentState, ready: bool, crashes: u64) -> AgentStatus {
        AgentStatus {
            state,
            process_running: matches!(state, AgentState::Running | AgentState::Starting),
            ready,
            ready_source: None,
            ready_error: None,
            last_ready_at: None,
            install_step: None,
            install_id: None,
            install_count: 1,
            crash_count: crashes,
            last_crash: (crashes > 0).then(|| LastCrash {
                time: "2026-12-06T00:00:00Z".into(),
                exit_code: None,
                signal: Some(9),
                uptime_seconds: 3,
                log_tail: vec!["Exception in server tick loop".into()],
            }),
            error: (state == AgentState::Error).then(|| "crashed 3 times in a row".into()),
            timestamp: String::new(),
        }
    }

    /// A row: status, recorded agent state, recorded crashes, agent state now, ready,
    /// crashes now → where it moves and whether that is an alert.
    type Row = (
        ServerStatus,
        Option<&'static str>,
        i64,
        AgentState,
        bool,
        u64,
        Option<(ServerStatus, bool)>,
    );

    /// Every automatic transition, and the looks that must not move a server.
    #[test]
    fn each_followed_status_moves_only_on_its_world_condition() {
        use AgentState as A;
        use ServerStatus as S;
        let table: &[Row] = &[
            // running
            (S::Running, Some("running"), 0, A::Running, true, 0, None),
            (S::Running, Some("running"), 0, A::Running, false, 0, None), // a slow ping is not a crash
            (
                S::Running,
                Some("running"),
                0,
                A::Crashed,
                false,
                1,
                Some((S::Crashed, false)),
            ),
            (
                S::Running,
                Some("running"),
                0,
                A::Starting,
                false,
                1,
                Some((S::Crashed, false)),
            ),
            (
                S::Running,
                Some("running"),
                0,
                A::Running,
                false,
                1,
                Some((S::Crashed, false)),
            ),
            (S::Running, Some("running"), 1, A::Starting, false, 1, None), // already counted
            (
                S::Running,
                Some("running"),
                2,
                A::Error,
                false,
                3,
                Some((S::Crashed, true)),
            ),
            (
                S::Running,
                Some("running"),
                0,
                A::Stopped,
                false,
                0,
                Some((S::Stopped, false)),
            ),
            (
                S::Running,
                Some("running"),
                0,
                A::Installing,
                false,
                0,
                None,
            ),
            // crashed
            (S::Crashed, Some("crashed"), 1, A::Crashed, false, 1, None),
            (S::Crashed, Some("crashed"), 1, A::Starting, false, 1, None),
            (S::Crashed, Some("crashed"), 1, A::Running, false, 1, None), // not ready yet
            (
                S::Crashed,
                Some("starting"),
                1,
                A::Running,
                true,
                1,
                Some((S::Running, false)),
            ),
            (
                S::Crashed,
                Some("crashed"),
                2,
                A::Error,
                false,
                3,
                Some((S::Crashed, true)),
            ),
            (S::Crashed, Some("error"), 3, A::Error, false, 3, None), // told once
            // stopped
            (S::Stopped, Some("stopped"), 0, A::Stopped, false, 0, None),
            (S::Stopped, Some("stopped"), 0, A::Running, false, 0, None),
            (
                S::Stopped,
                Some("stopped"),
                0,
                A::Running,
                true,
                0,
                Some((S::Running, false)),
            ),
        ];
        for (i, (status, rec_state, rec_crashes, now, ready, crashes, want)) in
            table.iter().enumerate()
        {
            let got = decide(
                *status,
                *rec_state,
                *rec_crashes,
                &seen(*now, *ready, *crashes),
            )
            .map(|m| (m.to, m.alert));
            assert_eq!(
                got, *want,
                "row {i}: {status} with the agent {now:?} (ready {ready}, crashes {crashes})"
            );
        }
    }

    #[test]
    fn statuses_outside_the_followed_ones_never_move_by_themselves() {
        for status in ServerStatus::ALL {
            if FOLLOWED.contains(&status) {
                continue;
            }
            for state in [
                AgentState::Running,
                AgentState::Crashed,
                AgentState::Error,
                AgentState::Stopped,
            ] {
                assert_eq!(
                    decide(status, None, 0, &seen(state, true, 1)),
                    None,
                    "{status}"
                );
            }
        }
    }

    #[test]
    fn giving_up_shows_the_agents_error_and_the_last_console_lines() {
        let m = decide(
            ServerStatus::Crashed,
            Some("crashed"),
            2,
            &seen(AgentState::Error, false, 3),
        )
        .unwrap();
        assert!(
            m.reason.contains("crashed 3 times in a row"),
            "{}",
            m.reason
        );
        assert!(
            m.reason.contains("Exception in server tick loop"),
            "{}",
            m.reason
        );
    }
}
