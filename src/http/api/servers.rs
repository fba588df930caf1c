//! `/api/v1/servers`: create (idempotent), list, get, events, actions, delete.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiJson, Caller, Path, Query};
use crate::domain::edge::EdgeRecord;
use crate::domain::servers::{
    self, Action, CreateServer, Event, PublicServer, Server, ServerStatus,
};
use crate::domain::{DomainError, nodes, templates};
use crate::error::AppError;
use crate::http::AppState;
use crate::queue::{self, Job};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/servers", post(create).get(list))
        .route("/api/v1/servers/{id}", get(show).delete(delete))
        .route("/api/v1/servers/{id}/events", get(events))
        .route(
            "/api/v1/servers/{id}/console",
            get(console_tail).post(console_command),
        )
        .route("/api/v1/servers/{id}/console/stream", get(console_stream))
        .route("/api/v1/servers/{id}/agent", get(agent_version))
        .route("/api/v1/servers/{id}/agent/upgrade", post(agent_upgrade))
        .route("/api/v1/servers/{id}/{action}", post(action))
}

/// One server as the API shows it.
fn render_one(conn: &rusqlite::Connection, s: Server) -> Result<PublicServer, DomainError> {
    let template = templates::slugs(conn)?.remove(&s.template_id);
    let node = nodes::names(conn)?.remove(&s.node_id);
    Ok(s.public(template, node))
}

/// `{server, job}`: a created server and its provisioning job.
#[derive(Debug, Serialize)]
pub struct CreatedServer {
    pub server: PublicServer,
    pub job: Option<Job>,
}

/// `{servers, next_after}`: a page of servers; `next_after` is the `after` of the
/// next page (null on the last one).
#[derive(Debug, Serialize)]
pub struct ServerPage {
    pub servers: Vec<PublicServer>,
    pub next_after: Option<i64>,
}

/// One server with its edge records: what is published for players, with any edge
/// problem in plain sight.
#[derive(Debug, Serialize)]
pub struct ServerDetail {
    #[serde(flatten)]
    pub server: PublicServer,
    pub edge: Vec<EdgeRecord>,
}

/// `{events}`: a server's state timeline, newest first.
#[derive(Debug, Serialize)]
pub struct ServerEvents {
    pub events: Vec<Event>,
}

/// `{job}`: the job a request queued.
#[derive(Debug, Serialize)]
pub struct QueuedJob {
    pub job: Option<Job>,
}

/// `{lines}`: the last console lines.
#[derive(Debug, Serialize)]
pub struct ConsoleTail {
    pub lines: Vec<String>,
}

async fn create(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    ApiJson(req): ApiJson<CreateServer>,
) -> Result<impl IntoResponse, AppError> {
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v.to_str().unwrap_or_default().trim().to_string();
            if k.is_empty() || k.len() > 200 {
                return Err(AppError::bad_request(
                    "Idempotency-Key",
                    "1 to 200 visible ASCII characters",
                ));
            }
            Some(k)
        }
    };
    let hash = req.request_hash();
    let user = caller.0.clone();
    let quota = crate::domain::users::Quota::from(&st.config.quota);
    let (created, body) = st
        .db
        .write(move |tx| {
            let idem = key.as_deref().map(|k| (k, hash.as_str()));
            let created = servers::create(tx, &user, &req, idem, quota)?;
            let job = queue::get(tx, created.job_id)?;
            let server = render_one(tx, created.server)?;
            Ok::<_, DomainError>((created.created, CreatedServer { server, job }))
        })
        .await?;
    if created {
        st.queue.wake();
    }
    Ok((StatusCode::ACCEPTED, Json(body)))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    after: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    q: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<ServerPage>, AppError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::bad_request("limit", "between 1 and 1000"));
    }
    let status = match q.status.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            ServerStatus::parse(s)
                .ok_or_else(|| AppError::bad_request("status", format!("unknown status '{s}'")))?,
        ),
    };
    let user = caller.0.clone();
    let body = st
        .db
        .call(move |c| {
            let list = servers::list_public(
                c,
                &user,
                q.after.unwrap_or(0),
                limit,
                status,
                q.q.as_deref().filter(|s| !s.is_empty()),
            )?;
            let next = (list.len() as i64 == limit)
                .then(|| list.last().map(|s| s.id))
                .flatten();
            Ok::<_, DomainError>(ServerPage {
                servers: list,
                next_after: next,
            })
        })
        .await?;
    Ok(Json(body))
}

/// Runs `f` on a server the caller may see (others' servers are "not found").
async fn visible<F, T>(st: &AppState, caller: &Caller, id: i64, f: F) -> Result<Json<T>, AppError>
where
    F: FnOnce(&rusqlite::Connection, Server) -> Result<T, DomainError> + Send + 'static,
    T: Send + 'static,
{
    let user = caller.0.clone();
    let body = st
        .db
        .call(move |c| {
            let s = servers::get_visible(c, &user, id)?;
            f(c, s)
        })
        .await?;
    Ok(Json(body))
}

async fn show(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<ServerDetail>, AppError> {
    visible(&st, &caller, id, move |c, s| {
        Ok(ServerDetail {
            server: render_one(c, s)?,
            edge: crate::domain::edge::for_server(c, id)?,
        })
    })
    .await
}

async fn events(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<ServerEvents>, AppError> {
    visible(&st, &caller, id, move |c, _| {
        Ok(ServerEvents {
            events: servers::events(c, id, 1000)?,
        })
    })
    .await
}

async fn run_action(
    st: &AppState,
    caller: &Caller,
    id: i64,
    action: Action,
) -> Result<Json<QueuedJob>, AppError> {
    let user = caller.0.clone();
    let body = st
        .db
        .write(move |tx| {
            let job = servers::request_action(tx, &user, id, action)?;
            Ok::<_, DomainError>(QueuedJob {
                job: queue::get(tx, job)?,
            })
        })
        .await?;
    st.queue.wake();
    Ok(Json(body))
}

/// The version the server's agent last reported, and whether it is this zlh's.
async fn agent_version(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<serde_json::Value>, AppError> {
    let user = caller.0.clone();
    let version = st
        .db
        .call(move |c| {
            servers::get_visible(c, &user, id)?;
            crate::domain::upgrades::version_of(c, id)
        })
        .await?;
    let current = crate::agent::AgentVersion::this_build().label();
    Ok(Json(serde_json::json!({
        "version": version,
        "current": current,
        "outdated": version.as_deref().is_some_and(|v| v != current),
    })))
}

/// Enqueues the upgrade of the server's agent to this zlh's binary (admins only).
async fn agent_upgrade(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, AppError> {
    super::require_admin(&caller)?;
    let user = caller.0.clone();
    let body = st
        .db
        .write(move |tx| {
            let job = crate::domain::upgrades::request_server(tx, &user, id)?;
            Ok::<_, DomainError>(QueuedJob {
                job: queue::get(tx, job)?,
            })
        })
        .await?;
    st.queue.wake();
    Ok((StatusCode::ACCEPTED, Json(body)))
}

async fn action(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(i64, String)>,
) -> Result<impl IntoResponse, AppError> {
    let action = Action::parse(&action)
        .filter(|a| *a != Action::Delete)
        .ok_or_else(|| {
            AppError::NotFound(format!(
                "no action '{action}' (start, stop, restart, retry, reinstall; DELETE to delete)"
            ))
        })?;
    Ok((
        StatusCode::ACCEPTED,
        run_action(&st, &caller, id, action).await?,
    ))
}

async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, AppError> {
    Ok((
        StatusCode::ACCEPTED,
        run_action(&st, &caller, id, Action::Delete).await?,
    ))
}

/// A server the caller may see and a client for its agent (409 while it has none).
async fn agent_of(
    st: &AppState,
    caller: &Caller,
    id: i64,
) -> Result<(Server, crate::agent::client::AgentClient), AppError> {
    let user = caller.0.clone();
    let server = st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?;
    let client = server.agent_client().ok_or_else(|| {
        AppError::conflict(format!("server {id} ({}) has no agent yet", server.name))
    })?;
    Ok((server, client))
}

#[derive(Debug, Deserialize)]
struct TailQuery {
    #[serde(default)]
    lines: Option<usize>,
    /// `raw=1`: the lines as the game wrote them, terminal control sequences included.
    #[serde(default)]
    raw: Option<String>,
}

#[derive(Debug, Deserialize)]
struct StreamQuery {
    #[serde(default)]
    raw: Option<String>,
}

/// Console text is plain unless the caller asks for `raw=1` (or `true`).
fn escapes(raw: Option<&str>) -> Result<crate::http::console::Escapes, AppError> {
    use crate::http::console::Escapes;
    match raw {
        None | Some("0" | "false") => Ok(Escapes::Strip),
        Some("1" | "true") => Ok(Escapes::Raw),
        Some(_) => Err(AppError::bad_request("raw", "1 or 0")),
    }
}

/// `GET /api/v1/servers/{id}/console?lines=N[&raw=1]`: the last N console lines
/// (default 100) as text, or as the game wrote them with `raw=1`.
async fn console_tail(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<TailQuery>,
) -> Result<Json<ConsoleTail>, AppError> {
    let lines = q.lines.unwrap_or(100);
    if !(1..=1000).contains(&lines) {
        return Err(AppError::bad_request("lines", "between 1 and 1000"));
    }
    let keep = escapes(q.raw.as_deref())?;
    let (server, client) = agent_of(&st, &caller, id).await?;
    let lines: Vec<String> = client
        .console_tail(lines)
        .await
        .map_err(|e| AppError::BadGateway(format!("reading the console of {}: {e}", server.name)))?
        .iter()
        .map(|l| crate::http::console::clean_line(l, keep))
        .collect();
    Ok(Json(ConsoleTail { lines }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConsoleCommandBody {
    command: String,
}

/// `POST /api/v1/servers/{id}/console {command}`: one line to the game's stdin (204).
async fn console_command(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<ConsoleCommandBody>,
) -> Result<StatusCode, AppError> {
    let command = servers::console_line(&body.command)?;
    let (server, client) = agent_of(&st, &caller, id).await?;
    client
        .console_command(command)
        .await
        .map_err(|e| AppError::conflict(format!("sending '{command}' to {}: {e}", server.name)))?;
    tracing::info!(server = id, user = %caller.0.username, "console command sent");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/servers/{id}/console/stream` (WebSocket): recent console lines, then
/// live ones, relayed from the agent.
async fn console_stream(
    State(st): State<AppState>,
    caller: Caller,
    axum::Extension(bearer): axum::Extension<super::Bearer>,
    Path(id): Path<i64>,
    Query(q): Query<StreamQuery>,
    ws: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<axum::response::Response, AppError> {
    let keep = escapes(q.raw.as_deref())?;
    let (server, client) = agent_of(&st, &caller, id).await?;
    // A plain GET gets the API's error shape, not axum's text rejection.
    let ws = ws.map_err(|e| AppError::BadRequest {
        field: None,
        message: format!("this is a WebSocket endpoint: connect with `Upgrade: websocket` ({e})"),
    })?;
    let shutdown = st.shutdown.clone();
    let slot = st
        .ui
        .open_stream(&[(
            format!("user:{}", caller.0.id),
            st.config.http.max_streams_per_user,
        )])
        .map_err(|e| AppError::TooMany(e.to_string()))?;
    Ok(ws
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            // The stream ends when the token it was opened with stops working.
            let ended = super::token_revoked(st, bearer);
            crate::http::console::relay(socket, client, server.name, keep, shutdown, ended).await
        })
        .into_response())
}
