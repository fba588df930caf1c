//! `zlh agent`: the agent inside each game container (DESIGN §7). An HTTP API on
//! :18888 in front of one manager task that owns the game's life cycle.

mod console;
pub mod files;
mod game_files;
pub mod install;
mod manager;
mod sandbox;
mod upgrade;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};

use crate::agent::{
    AgentState, AgentStatus, AgentVersion, ConfigAccepted, ConfigPayload, ConsoleCommand,
    LastCrash, UpgradeRequest, UpgradeStatus, constant_time_eq,
};
use console::Console;
use manager::{Manager, Op};

/// How `zlh agent` runs.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Agent directory: payload, state, cache, the server directory, logs.
    pub dir: PathBuf,
    /// Token accepted until a `/config` installs this server's own token.
    pub bootstrap_token: Option<String>,
    /// Delays before restarting after consecutive crashes; past the last one → `error`.
    pub crash_backoff: Vec<Duration>,
    /// A run this long resets the consecutive-crash count.
    pub stable_uptime: Duration,
    /// How long the stop command gets before SIGTERM.
    pub stop_timeout: Duration,
    /// How long SIGTERM gets before SIGKILL.
    pub term_timeout: Duration,
    /// Readiness probe interval.
    pub probe_interval: Duration,
    /// Deadlines and caps of the HTTP listener.
    pub http: crate::util::listener::Limits,
    /// Console streams open at once.
    pub max_streams: usize,
    /// The unprivileged user the game runs as when the agent is root (created if
    /// missing); `None` runs it as the agent's own user.
    pub game_user: Option<String>,
    /// Where `POST /upgrade` puts the new binary before restarting from it (default:
    /// the running executable). A local node's agents run the control plane's own
    /// binary, so they get a copy in their directory instead.
    pub upgrade_path: Option<PathBuf>,
    /// Largest file an upload or write may send, and the most an extraction may unpack.
    pub max_upload_bytes: u64,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            dir: PathBuf::from("/opt/zlh-agent"),
            bootstrap_token: None,
            crash_backoff: vec![
                Duration::from_secs(30),
                Duration::from_secs(60),
                Duration::from_secs(120),
            ],
            stable_uptime: Duration::from_secs(30),
            stop_timeout: Duration::from_secs(30),
            term_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(1),
            http: crate::util::listener::Limits {
                header_timeout: Duration::from_secs(10),
                idle_timeout: Duration::from_secs(5),
                request_timeout: Duration::from_secs(60),
                max_connections: 64,
            },
            max_streams: 16,
            game_user: Some(sandbox::GAME_USER.to_string()),
            upgrade_path: None,
            max_upload_bytes: DEFAULT_MAX_UPLOAD,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(
        "no agent token: set ZLH_AGENT_TOKEN or --token-file (or keep the token file a previous /config installed in {0})"
    )]
    NoToken(PathBuf),
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("agent HTTP server: {0}")]
    Http(#[source] std::io::Error),
}

/// Default of [`AgentOptions::max_upload_bytes`]: 8 GiB (a large world).
pub const DEFAULT_MAX_UPLOAD: u64 = 8 << 30;

/// The status the HTTP side reads and the manager writes.
#[derive(Debug, Clone)]
pub(crate) struct Status {
    pub state: AgentState,
    pub process_running: bool,
    pub ready: bool,
    pub ready_source: Option<String>,
    pub ready_error: Option<String>,
    pub last_ready_at: Option<String>,
    pub install_step: Option<String>,
    pub install_id: Option<String>,
    pub install_count: u64,
    pub crash_count: u64,
    pub last_crash: Option<LastCrash>,
    pub error: Option<String>,
    /// Which game run the readiness prober may update.
    pub run_id: u64,
    /// sha256 of `server.properties` when this run became ready (after the game's
    /// own rewrite of it): a different file on disk means a restart is needed.
    pub properties_sha256: Option<String>,
}

pub(crate) struct Shared {
    pub opts: AgentOptions,
    /// Console streams open now (at most `opts.max_streams`).
    streams: std::sync::atomic::AtomicUsize,
    token: RwLock<Option<String>>,
    pub status: Mutex<Status>,
    pub console: Console,
    pub ops: mpsc::UnboundedSender<Op>,
    /// The self-upgrade in progress, if any (`GET /upgrade`).
    pub upgrade: Mutex<UpgradeStatus>,
    /// Serialises `PUT /properties` (read, edit, write).
    properties_lock: tokio::sync::Mutex<()>,
}

impl Shared {
    pub fn update(&self, f: impl FnOnce(&mut Status)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    pub fn snapshot(&self) -> Option<Status> {
        self.status.lock().ok().map(|s| s.clone())
    }

    /// The token the agent accepts now (it also presents it to the artifact mirror).
    pub fn current_token(&self) -> Option<String> {
        self.token.read().ok().and_then(|t| t.clone())
    }

    fn token_matches(&self, presented: &str) -> bool {
        match self.token.read() {
            Ok(t) => t
                .as_deref()
                .is_some_and(|t| constant_time_eq(t.as_bytes(), presented.as_bytes())),
            Err(_) => false,
        }
    }
}

pub(crate) const PAYLOAD_FILE: &str = "payload.json";
pub(crate) const TOKEN_FILE: &str = "token";

/// Runs the agent on `listener` until `shutdown` resolves, then stops the game
/// gracefully (its desired state is kept, so the next start restores it).
pub async fn run(
    mut opts: AgentOptions,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), AgentError> {
    // The game runs in a subdirectory: every path handed to it must be absolute.
    opts.dir = std::path::absolute(&opts.dir).map_err(|source| AgentError::Io {
        action: "resolving agent dir",
        path: opts.dir.clone(),
        source,
    })?;
    std::fs::create_dir_all(&opts.dir).map_err(|source| AgentError::Io {
        action: "creating agent dir",
        path: opts.dir.clone(),
        source,
    })?;
    // A token installed by an earlier /config wins over the bootstrap token.
    let token_path = opts.dir.join(TOKEN_FILE);
    let token = match std::fs::read_to_string(&token_path) {
        Ok(t) if !t.trim().is_empty() => Some(t.trim().to_string()),
        _ => opts.bootstrap_token.clone(),
    };
    if token.is_none() {
        return Err(AgentError::NoToken(opts.dir.clone()));
    }
    let (ops_tx, ops_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        console: Console::new(opts.dir.join("logs").join("console.log")),
        opts: opts.clone(),
        streams: std::sync::atomic::AtomicUsize::new(0),
        token: RwLock::new(token),
        status: Mutex::new(Status {
            state: AgentState::Idle,
            process_running: false,
            ready: false,
            ready_source: None,
            ready_error: None,
            last_ready_at: None,
            install_step: None,
            install_id: None,
            install_count: 0,
            crash_count: 0,
            last_crash: None,
            error: None,
            run_id: 0,
            properties_sha256: None,
        }),
        ops: ops_tx,
        upgrade: Mutex::new(UpgradeStatus {
            state: "idle".into(),
            ..Default::default()
        }),
        properties_lock: tokio::sync::Mutex::new(()),
    });
    let manager = Manager::restore(shared.clone());
    let manager_task = tokio::spawn(manager.run(ops_rx));

    let app = router(shared.clone());
    let addr = listener.local_addr().map_err(AgentError::Http)?;
    tracing::info!(%addr, dir = %opts.dir.display(), "zlh agent listening");
    let limits = opts.http;
    let app = app.layer(middleware::from_fn(move |req, next| {
        crate::util::listener::request_timeout(limits.request_timeout, req, next)
    }));
    let result = crate::util::listener::serve(listener, app, limits, None, shutdown)
        .await
        .map_err(AgentError::Http);
    let (tx, rx) = oneshot::channel();
    // The manager answers once its game is stopped; a closed channel means it is
    // already gone, which its join below reports.
    if shared.ops.send(Op::Shutdown(tx)).is_ok() && rx.await.is_err() {
        tracing::warn!("the agent's manager ended before answering the shutdown");
    }
    if let Err(e) = manager_task.await {
        tracing::error!(error = %e, "the agent's manager task failed");
    }
    result
}

fn router(shared: Arc<Shared>) -> Router {
    let protected = Router::new()
        .route("/ready", get(ready))
        .route("/status", get(status))
        .route("/config", post(config))
        .route("/start", post(start))
        .route("/stop", post(stop))
        .route("/restart", post(restart))
        .route("/console/command", post(console_command))
        .route("/console/stream", get(console_stream))
        .route("/console/tail", get(console_tail))
        .route("/version", get(version))
        .route("/upgrade", get(upgrade_status).post(upgrade_start))
        .merge(files::routes())
        .route(
            "/properties",
            get(game_files::get_properties).put(game_files::put_properties),
        )
        .route("/players", get(game_files::get_players))
        .route_layer(middleware::from_fn_with_state(
            shared.clone(),
            require_token,
        ));
    Router::new()
        .route("/health", get(health))
        .merge(protected)
        .with_state(shared)
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    (
        status,
        Json(json!({"error": {"code": code, "message": message.into()}})),
    )
        .into_response()
}

async fn require_token(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if presented.is_empty() || !shared.token_matches(presented) {
        return error(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        );
    }
    next.run(req).await
}

async fn health() -> &'static str {
    "ok\n"
}

async fn version() -> Json<AgentVersion> {
    Json(AgentVersion::this_build())
}

async fn upgrade_status(State(shared): State<Arc<Shared>>) -> Response {
    match shared.upgrade.lock() {
        Ok(u) => Json(u.clone()).into_response(),
        Err(_) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "upgrade status unavailable",
        ),
    }
}

/// Starts a self-upgrade (202 with its status); one at a time (409 while one runs).
async fn upgrade_start(
    State(shared): State<Arc<Shared>>,
    body: Result<Json<UpgradeRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid", e.body_text()),
    };
    if let Err((field, message)) = upgrade::validate(&req) {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error": {"code": "invalid", "message": format!("{field}: {message}"), "field": field}})),
        )
            .into_response();
    }
    let status = {
        let Ok(mut u) = shared.upgrade.lock() else {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "upgrade status unavailable",
            );
        };
        if matches!(u.state.as_str(), "downloading" | "waiting" | "restarting") {
            return (
                StatusCode::CONFLICT,
                Json(json!({"error": {"code": "conflict", "message": "an upgrade is already under way", "upgrade": u.clone()}})),
            )
                .into_response();
        }
        *u = UpgradeStatus {
            state: "downloading".into(),
            message: Some(req.url.clone()),
            target: Some(req.version.clone()),
        };
        u.clone()
    };
    tokio::spawn(upgrade::run(shared.clone(), req));
    (StatusCode::ACCEPTED, Json(status)).into_response()
}

fn to_wire(s: Status) -> AgentStatus {
    AgentStatus {
        state: s.state,
        process_running: s.process_running,
        ready: s.ready,
        ready_source: s.ready_source,
        ready_error: s.ready_error,
        last_ready_at: s.last_ready_at,
        install_step: s.install_step,
        install_id: s.install_id,
        install_count: s.install_count,
        crash_count: s.crash_count,
        last_crash: s.last_crash,
        error: s.error,
        timestamp: crate::util::format_ts(crate::util::now_ms()),
    }
}

async fn status(State(shared): State<Arc<Shared>>) -> Response {
    match shared.snapshot() {
        Some(s) => Json(to_wire(s)).into_response(),
        None => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "status unavailable",
        ),
    }
}

async fn ready(State(shared): State<Arc<Shared>>) -> Response {
    let s = shared.snapshot();
    let ready = s.as_ref().is_some_and(|s| s.ready);
    let body = Json(json!({
        "ready": ready,
        "readyError": s.and_then(|s| s.ready_error),
    }));
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn config(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let payload: ConfigPayload = match serde_json::from_slice(&body) {
        Ok(p) => p,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("invalid /config payload: {e}"),
            );
        }
    };
    if let Err(e) = install::validate(&payload) {
        return error(StatusCode::BAD_REQUEST, "bad_request", e.to_string());
    }
    // Applied on a task of its own: a client that hangs up half-way (a control plane
    // killed mid-request) must not leave a payload persisted but never acted on.
    match tokio::spawn(apply_config(shared, payload)).await {
        Ok(resp) => resp,
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    }
}

async fn apply_config(shared: Arc<Shared>, payload: ConfigPayload) -> Response {
    let dir = shared.opts.dir.clone();
    // The server's own token first: once it is in place, every retry of the control
    // plane uses it, whatever else happened to this request.
    if let Some(new_token) = payload.agent_token.clone().filter(|t| !t.is_empty())
        && !shared.token_matches(&new_token)
    {
        if let Err(e) = write_private(&dir.join(TOKEN_FILE), new_token.as_bytes()).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
        }
        if let Ok(mut t) = shared.token.write() {
            *t = Some(new_token);
        }
    }
    // The same install again is not a reinstall: answer with where it is.
    if let Some(s) = shared.snapshot()
        && s.install_id.as_deref() == Some(payload.install_id.as_str())
        && s.state != AgentState::Error
    {
        return (
            StatusCode::ACCEPTED,
            Json(ConfigAccepted {
                ok: true,
                state: s.state,
            }),
        )
            .into_response();
    }
    // Persist before answering: a 202 means the agent will carry it out, even
    // across its own restart.
    let text = match serde_json::to_vec_pretty(&payload) {
        Ok(t) => t,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    if let Err(e) = write_private(&dir.join(PAYLOAD_FILE), &text).await {
        return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
    }
    shared.update(|s| {
        s.state = AgentState::Installing;
        s.install_id = Some(payload.install_id.clone());
        s.install_step = Some("queued".into());
        s.error = None;
    });
    if shared.ops.send(Op::Configure(Box::new(payload))).is_err() {
        return shutting_down();
    }
    (
        StatusCode::ACCEPTED,
        Json(ConfigAccepted {
            ok: true,
            state: AgentState::Installing,
        }),
    )
        .into_response()
}

/// Writes a file only the agent's user can read (it may hold secrets), atomically.
async fn write_private(path: &Path, bytes: &[u8]) -> Result<(), install::InstallError> {
    install::write_atomic(path, bytes).await?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .await
            .map_err(|source| install::InstallError::Io {
                action: "restricting",
                path: path.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

fn shutting_down() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "agent is shutting down",
    )
}

async fn ask<T>(shared: &Shared, op: impl FnOnce(oneshot::Sender<T>) -> Op) -> Option<T> {
    let (tx, rx) = oneshot::channel();
    shared.ops.send(op(tx)).ok()?;
    rx.await.ok()
}

fn accepted(shared: &Shared) -> Response {
    let state = shared
        .snapshot()
        .map(|s| s.state)
        .unwrap_or(AgentState::Idle);
    (
        StatusCode::ACCEPTED,
        Json(ConfigAccepted { ok: true, state }),
    )
        .into_response()
}

async fn start(State(shared): State<Arc<Shared>>) -> Response {
    match ask(&shared, Op::Start).await {
        Some(Ok(())) => accepted(&shared),
        Some(Err(e)) => error(StatusCode::CONFLICT, "conflict", e),
        None => shutting_down(),
    }
}

async fn stop(State(shared): State<Arc<Shared>>) -> Response {
    match ask(&shared, Op::Stop).await {
        Some(()) => StatusCode::NO_CONTENT.into_response(),
        None => shutting_down(),
    }
}

async fn restart(State(shared): State<Arc<Shared>>) -> Response {
    match ask(&shared, Op::Restart).await {
        Some(Ok(())) => accepted(&shared),
        Some(Err(e)) => error(StatusCode::CONFLICT, "conflict", e),
        None => shutting_down(),
    }
}

async fn console_command(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> Response {
    let cmd: ConsoleCommand = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"command\": \"...\"}}: {e}"),
            );
        }
    };
    if cmd.command.contains('\n') || cmd.command.trim().is_empty() {
        return error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "command must be one non-empty line",
        );
    }
    match ask(&shared, |tx| Op::Command(cmd.command, tx)).await {
        Some(Ok(())) => StatusCode::NO_CONTENT.into_response(),
        Some(Err(e)) => error(StatusCode::CONFLICT, "conflict", e),
        None => shutting_down(),
    }
}

/// The most recent console lines (`lines`, default 100, at most the ring's 1000).
async fn console_tail(
    State(shared): State<Arc<Shared>>,
    axum::extract::Query(q): axum::extract::Query<std::collections::HashMap<String, String>>,
) -> Json<crate::agent::ConsoleTail> {
    let n = q
        .get("lines")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .min(1000);
    Json(crate::agent::ConsoleTail {
        lines: shared.console.tail(n),
    })
}

async fn console_stream(State(shared): State<Arc<Shared>>, ws: WebSocketUpgrade) -> Response {
    use std::sync::atomic::Ordering;
    /// Gives the stream's place back when the stream ends.
    struct Slot(Arc<Shared>);
    impl Drop for Slot {
        fn drop(&mut self) {
            self.0.streams.fetch_sub(1, Ordering::SeqCst);
        }
    }
    let slot = Slot(shared.clone());
    if shared.streams.fetch_add(1, Ordering::SeqCst) >= shared.opts.max_streams {
        return error(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            format!(
                "{} console streams are open already: close one",
                shared.opts.max_streams
            ),
        );
    }
    ws.on_upgrade(move |socket| async move {
        let _slot = slot;
        stream_console(shared, socket).await
    })
}

async fn stream_console(shared: Arc<Shared>, mut socket: WebSocket) {
    let (recent, mut live) = shared.console.subscribe(200);
    for line in recent {
        if socket.send(Message::Text(line.into())).await.is_err() {
            return;
        }
    }
    loop {
        tokio::select! {
            line = live.recv() => match line {
                Ok(line) => {
                    if socket.send(Message::Text(line.into())).await.is_err() {
                        return;
                    }
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let note = format!("[zlh-agent] {n} console lines skipped (slow reader)");
                    if socket.send(Message::Text(note.into())).await.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            },
            msg = socket.recv() => match msg {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                _ => {}
            },
        }
    }
}
