//! What the API and the UI share for a server's `server.properties` and players:
//! views built from the agent's answers, the checks of an edit, and player actions
//! (console + read-back while running, a queued job otherwise).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::agent::client::{AgentClient, AgentClientError};
use crate::agent::properties::{self, Kind, Properties};
use crate::agent::{PlayersView, PropertiesFile, PropertiesUpdate};
use crate::domain::DomainError;
use crate::domain::players::{self, PlayerAction, PlayerRequest};
use crate::domain::servers::{self, Server, ServerStatus};
use crate::domain::users::User;
use crate::error::AppError;
use crate::http::AppState;
use crate::queue::{self, Job};

/// A typed key of the editor, with its current value.
#[derive(Debug, Clone, Serialize)]
pub struct Field {
    pub key: String,
    pub label: String,
    /// `bool`, `int`, `enum` or `text`.
    pub kind: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max: Option<i64>,
    /// Absent: the file does not set it (the game's default applies).
    pub value: Option<String>,
}

/// `GET /api/v1/servers/{id}/properties`.
#[derive(Debug, Clone, Serialize)]
pub struct PropertiesView {
    pub server_id: i64,
    /// The running game started with another file than the one on disk.
    pub restart_needed: bool,
    pub exists: bool,
    /// Every key of the file and its value, in file order.
    pub properties: Vec<(String, String)>,
    /// Read-only keys (zlh sets them).
    pub managed: Vec<String>,
    /// The keys the typed form offers.
    pub fields: Vec<Field>,
}

impl PropertiesView {
    fn new(server_id: i64, file: PropertiesFile) -> PropertiesView {
        let parsed = Properties::parse(&file.text);
        let values = parsed.values();
        let fields = properties::TYPED
            .iter()
            .map(|t| {
                let (kind, options, min, max) = match t.kind {
                    Kind::Bool => ("bool", vec![], None, None),
                    Kind::Int { min, max } => ("int", vec![], Some(min), Some(max)),
                    Kind::Enum(o) => (
                        "enum",
                        o.iter().map(|s| s.to_string()).collect(),
                        None,
                        None,
                    ),
                    Kind::Text { .. } => ("text", vec![], None, None),
                };
                Field {
                    key: t.key.into(),
                    label: t.label.into(),
                    kind,
                    options,
                    min,
                    max,
                    value: values.get(t.key).cloned(),
                }
            })
            .collect();
        PropertiesView {
            server_id,
            restart_needed: file.restart_needed,
            exists: file.exists,
            properties: parsed
                .keys()
                .into_iter()
                .map(|k| {
                    let v = values.get(&k).cloned().unwrap_or_default();
                    (k, v)
                })
                .collect(),
            managed: file.managed,
            fields,
        }
    }
}

/// An agent failure as the API reports it: an agent without the endpoint says so.
fn agent_error(server: &Server, what: &str, e: AgentClientError) -> AppError {
    match &e {
        AgentClientError::Status { status: 404, .. } => AppError::conflict(format!(
            "the agent of {} does not offer {what} (an older agent: upgrade it)",
            server.name
        )),
        AgentClientError::Status {
            status: 400,
            message,
            ..
        } => {
            // The agent's own check (a managed key): name the key it names.
            let field = message.split(':').next().unwrap_or("body").to_string();
            AppError::bad_request(&field, message.clone())
        }
        _ => AppError::BadGateway(format!("{what} of {}: {e}", server.name)),
    }
}

/// A server the caller may see and a client for its agent (409 while it has none).
pub async fn agent_of(
    st: &AppState,
    user: &User,
    id: i64,
) -> Result<(Server, AgentClient), AppError> {
    let user = user.clone();
    let server = st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?;
    let client = server.agent_client().ok_or_else(|| {
        AppError::conflict(format!("server {id} ({}) has no agent yet", server.name))
    })?;
    Ok((server, client))
}

pub async fn properties_view(
    st: &AppState,
    user: &User,
    id: i64,
) -> Result<PropertiesView, AppError> {
    let (server, client) = agent_of(st, user, id).await?;
    let file = client
        .properties()
        .await
        .map_err(|e| agent_error(&server, "server.properties", e))?;
    Ok(PropertiesView::new(id, file))
}

/// A key as `server.properties` can hold it (and the form can name it).
fn check_key(key: &str) -> Result<(), AppError> {
    let ok = !key.is_empty()
        && key.len() <= 100
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if ok {
        Ok(())
    } else {
        Err(AppError::bad_request(
            if key.is_empty() { "body" } else { key },
            "a key is letters, digits, '-', '.' and '_' (at most 100)",
        ))
    }
}

/// Checks every key (typed ones by type; managed ones refused, named) and sets them
/// all at once through the agent; nothing is written when one is refused.
pub async fn set_properties(
    st: &AppState,
    user: &User,
    id: i64,
    set: BTreeMap<String, String>,
) -> Result<PropertiesView, AppError> {
    if set.is_empty() {
        return Err(AppError::bad_request("body", "no keys to set"));
    }
    let (server, client) = agent_of(st, user, id).await?;
    let current = client
        .properties()
        .await
        .map_err(|e| agent_error(&server, "server.properties", e))?;
    for (k, v) in &set {
        check_key(k)?;
        if current.managed.contains(k) {
            return Err(AppError::bad_request(
                k,
                format!("{k} is managed by zlh (ports, addresses, forwarding): read-only"),
            ));
        }
        properties::validate(k, v)
            .map_err(|why| AppError::bad_request(k, format!("{k}: {why}")))?;
    }
    let file = client
        .set_properties(&PropertiesUpdate { set: set.clone() })
        .await
        .map_err(|e| agent_error(&server, "server.properties", e))?;
    tracing::info!(server = id, user = %user.username, keys = ?set.keys().collect::<Vec<_>>(), "server.properties edited");
    Ok(PropertiesView::new(id, file))
}

/// `GET /api/v1/servers/{id}/players`, plus the actions still waiting for a start.
#[derive(Debug, Clone, Serialize)]
pub struct PlayersPage {
    pub server_id: i64,
    #[serde(flatten)]
    pub players: PlayersView,
    /// Queued actions (jobs) waiting for the server's next ready.
    pub pending: Vec<Job>,
}

pub async fn players_page(st: &AppState, user: &User, id: i64) -> Result<PlayersPage, AppError> {
    let (server, client) = agent_of(st, user, id).await?;
    let running = server.status == ServerStatus::Running;
    let players = client
        .players(running)
        .await
        .map_err(|e| agent_error(&server, "players", e))?;
    let pending = st
        .db
        .call(move |c| {
            let filter = queue::JobFilter {
                kind: Some(players::JOB_PLAYERS.into()),
                lane: Some(servers::lane(id)),
                limit: 100,
                ..Default::default()
            };
            queue::list(c, &filter).map_err(DomainError::from)
        })
        .await?
        .into_iter()
        .filter(|j| !j.state.is_terminal())
        .collect();
    Ok(PlayersPage {
        server_id: id,
        players,
        pending,
    })
}

/// What a player action did: applied now, or queued for the next start.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum ActionOutcome {
    Applied {
        action: PlayerAction,
        name: String,
        command: String,
        /// The game's lists show the change.
        confirmed: bool,
        players: PlayersView,
    },
    Queued {
        action: PlayerAction,
        name: String,
        job: Job,
    },
}

pub async fn player_action(
    st: &AppState,
    user: &User,
    id: i64,
    action: &str,
    name: &str,
    reason: Option<&str>,
) -> Result<ActionOutcome, AppError> {
    let action = PlayerAction::parse(action).ok_or_else(|| {
        AppError::NotFound(format!(
            "no player action '{action}' (whitelist, unwhitelist, op, deop, ban, pardon, kick)"
        ))
    })?;
    let req = PlayerRequest::new(action, name, reason)?;
    let (server, client) = agent_of(st, user, id).await?;
    let ready =
        server.status == ServerStatus::Running && client.status().await.is_ok_and(|s| s.ready);
    if ready {
        let applied = crate::jobs::players::apply_running(&client, &req)
            .await
            .map_err(|e| agent_error(&server, &req.describe(), e))?;
        let (sid, actor, msg) = (
            id,
            format!("user:{}", user.username),
            format!(
                "{} (`{}`{})",
                req.describe(),
                applied.command,
                if applied.confirmed {
                    ""
                } else {
                    "; not shown in the game's lists yet"
                }
            ),
        );
        st.db
            .write(move |tx| servers::add_event(tx, sid, None, None, None, &actor, &msg))
            .await?;
        return Ok(ActionOutcome::Applied {
            action,
            name: req.target.clone(),
            command: applied.command,
            confirmed: applied.confirmed,
            players: applied.players,
        });
    }
    let user = user.clone();
    let r = req.clone();
    let job = st
        .db
        .write(move |tx| {
            let job = players::queue_action(tx, &user, id, &r)?;
            queue::get(tx, job)?.ok_or_else(|| DomainError::NotFound(format!("job {job}")))
        })
        .await?;
    st.queue.wake();
    Ok(ActionOutcome::Queued {
        action,
        name: req.target,
        job,
    })
}

/// Queues a version change; returns the job and the downgrade warning, if any.
pub async fn change_version(
    st: &AppState,
    user: &User,
    id: i64,
    req: crate::domain::versions::VersionChange,
) -> Result<(Job, Option<String>), AppError> {
    let user = user.clone();
    let out = st
        .db
        .write(move |tx| {
            let (job, warning) = crate::domain::versions::request(tx, &user, id, &req)?;
            let job =
                queue::get(tx, job)?.ok_or_else(|| DomainError::NotFound(format!("job {job}")))?;
            Ok::<_, DomainError>((job, warning))
        })
        .await?;
    st.queue.wake();
    Ok(out)
}
