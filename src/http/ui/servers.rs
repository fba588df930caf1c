//! Dashboard, server list, create form, server detail with its actions and console.

use std::collections::HashMap;

use askama::Template;
use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use rusqlite::Connection;
use serde::Deserialize;
use serde_json::json;

use super::{Page, Sess, UiError, UiForm, correctable, render, render_status, see_other};
use crate::db::now_ms;
use crate::domain::servers::{self, Action, CreateServer, Server, ServerStatus};
use crate::domain::users::User;
use crate::domain::{DomainError, edge, is_dns_label, nodes, random_secret, templates};
use crate::http::AppState;
use crate::queue::{self, Job, JobState};
use crate::util::format_ts;

/// Servers on one page of the list.
pub const PAGE_SIZE: i64 = 50;

/// Percent-encodes a query-string value (a local path keeps its `/`).
pub fn url_encode(s: &str) -> String {
    crate::util::percent_encode(s, b"/")
}

/// "3d 4h", "2h 5m", "40s": how long ago `ms` was.
pub fn ago(ms: i64) -> String {
    let s = ((now_ms() - ms) / 1000).max(0);
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m {}s", s / 60, s % 60),
        3600..86_400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// One server as the list and the dashboard show it.
pub struct ServerRow {
    pub id: i64,
    pub name: String,
    pub status: &'static str,
    pub reason: String,
    pub template: String,
    pub version: String,
    pub node: String,
    /// How players connect: the published DNS name, else address and port.
    pub connect: String,
    /// How long it has been running (running servers only).
    pub uptime: String,
    /// Since when it has been running (RFC 3339; running servers only).
    pub since: String,
}

/// The template slugs and node names by id, and for `ids` the published DNS names
/// and the time each last became `running`: what a list row needs besides the row.
struct RowContext {
    templates: HashMap<i64, String>,
    nodes: HashMap<i64, String>,
    dns: HashMap<i64, String>,
    running_since: HashMap<i64, i64>,
}

fn row_context(c: &Connection, ids: &[i64]) -> Result<RowContext, DomainError> {
    let templates = templates::list(c)?
        .into_iter()
        .map(|t| (t.id, t.slug))
        .collect();
    let nodes = nodes::list(c)?
        .into_iter()
        .map(|n| (n.id, n.name))
        .collect();
    let (dns, running_since) = if ids.is_empty() {
        (HashMap::new(), HashMap::new())
    } else {
        (
            edge::published_names(c, ids, edge::DNS_A)?,
            servers::running_since(c, ids)?,
        )
    };
    Ok(RowContext {
        templates,
        nodes,
        dns,
        running_since,
    })
}

impl RowContext {
    fn row(&self, s: &Server) -> ServerRow {
        let connect = match (self.dns.get(&s.id), &s.ip) {
            (Some(name), _) => name.clone(),
            (None, Some(ip)) => format!("{ip}:{}", s.game_port),
            (None, None) => "—".into(),
        };
        let since = match (s.status, self.running_since.get(&s.id)) {
            (ServerStatus::Running, Some(at)) => Some(*at),
            _ => None,
        };
        ServerRow {
            id: s.id,
            name: s.name.clone(),
            status: s.status.as_str(),
            reason: s.status_reason.clone().unwrap_or_default(),
            template: self
                .templates
                .get(&s.template_id)
                .cloned()
                .unwrap_or_default(),
            version: s.version.clone(),
            node: self.nodes.get(&s.node_id).cloned().unwrap_or_default(),
            connect,
            uptime: since.map(ago).unwrap_or_default(),
            since: since.map(format_ts).unwrap_or_default(),
        }
    }
}

/// Rows for `list` (one query for the context of all of them).
pub fn rows(c: &Connection, list: &[Server]) -> Result<Vec<ServerRow>, DomainError> {
    let ids: Vec<i64> = list.iter().map(|s| s.id).collect();
    let ctx = row_context(c, &ids)?;
    Ok(list.iter().map(|s| ctx.row(s)).collect())
}

/// An event as the timelines show it.
pub struct EventRow {
    pub id: i64,
    pub server_id: i64,
    pub server: String,
    pub at: String,
    pub from: String,
    pub to: String,
    pub actor: String,
    pub message: String,
    pub job_id: Option<i64>,
}

/// The newest `limit` events on servers `user` may see, newest first.
fn recent_events(c: &Connection, user: &User, limit: i64) -> Result<Vec<EventRow>, DomainError> {
    Ok(servers::recent_events_visible(c, user, limit)?
        .into_iter()
        .map(event_row)
        .collect())
}

fn event_row(e: servers::NamedEvent) -> EventRow {
    let servers::NamedEvent { server, event: e } = e;
    EventRow {
        id: e.id,
        server_id: e.server_id,
        server,
        at: format_ts(e.at),
        from: e.from_status.unwrap_or_default(),
        to: e.to_status.unwrap_or_default(),
        actor: e.actor,
        message: e.message,
        job_id: e.job_id,
    }
}

/// Events of one server after `after_id`, oldest first (at most `limit`, the newest).
pub fn server_events(
    c: &Connection,
    server_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<EventRow>, DomainError> {
    Ok(servers::events_after(c, server_id, after_id, limit)?
        .into_iter()
        .map(event_row)
        .collect())
}

#[derive(Template)]
#[template(path = "dashboard.html")]
struct DashboardPage {
    page: Page,
    total: i64,
    by_status: Vec<(&'static str, i64)>,
    queue: Vec<(&'static str, i64)>,
    oldest_available: String,
    attention: Vec<ServerRow>,
    events: Vec<EventRow>,
}

pub async fn dashboard(State(st): State<AppState>, sess: Sess) -> Result<Response, UiError> {
    let page = sess.page(&st, "dashboard", "Dashboard").await?;
    let user = sess.user().clone();
    let (by_status, queue_counts, oldest, attention, events) = st
        .db
        .call(move |c| {
            let by_status: Vec<(&'static str, i64)> = servers::count_by_status(c, &user)?
                .into_iter()
                .map(|(s, n)| (s.as_str(), n))
                .collect();
            let q = queue::count_by_state(c)?;
            let n = |state: JobState| {
                q.iter()
                    .find(|(s, _)| *s == state)
                    .map(|(_, n)| *n)
                    .unwrap_or(0)
            };
            let queue_counts = vec![
                ("available", n(JobState::Available) + n(JobState::Scheduled)),
                ("running", n(JobState::Running)),
                ("retrying", n(JobState::Retryable)),
                ("failed", n(JobState::Discarded)),
                ("held", n(JobState::Held)),
            ];
            let oldest = queue::oldest_available(c)?;
            let list = servers::needing_attention(c, &user, now_ms(), 10)?;
            let attention = rows(c, &list)?;
            let events = recent_events(c, &user, 15)?;
            Ok::<_, DomainError>((by_status, queue_counts, oldest, attention, events))
        })
        .await?;
    render(&DashboardPage {
        page,
        total: by_status.iter().map(|(_, n)| n).sum(),
        by_status,
        queue: queue_counts,
        oldest_available: oldest.map(ago).unwrap_or_default(),
        attention,
        events,
    })
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    after: Option<i64>,
}

#[derive(Template)]
#[template(path = "servers.html")]
struct ServersPage {
    page: Page,
    rows: Vec<ServerRow>,
    q: String,
    status: String,
    statuses: Vec<&'static str>,
    matching: i64,
    first: bool,
    next_url: Option<String>,
}

fn parse_status(s: Option<&str>) -> Result<Option<ServerStatus>, UiError> {
    match s {
        None | Some("") => Ok(None),
        Some(s) => ServerStatus::parse(s)
            .map(Some)
            .ok_or_else(|| UiError::BadRequest(format!("status: unknown status '{s}'"))),
    }
}

pub async fn list(
    State(st): State<AppState>,
    sess: Sess,
    Query(lq): Query<ListQuery>,
) -> Result<Response, UiError> {
    let page = sess.page(&st, "servers", "Servers").await?;
    let status = parse_status(lq.status.as_deref())?;
    let q = lq.q.clone().unwrap_or_default().trim().to_string();
    let user = sess.user().clone();
    let after = lq.after.unwrap_or(0);
    let search = q.clone();
    let (rows, matching) = st
        .db
        .call(move |c| {
            let search = (!search.is_empty()).then_some(search.as_str());
            let list = servers::list_visible(c, &user, after, PAGE_SIZE, status, search)?;
            let matching = servers::count_visible(c, &user, status, search)?;
            Ok::<_, DomainError>((rows(c, &list)?, matching))
        })
        .await?;
    let next_url = (rows.len() as i64 == PAGE_SIZE)
        .then(|| rows.last().map(|r| r.id))
        .flatten()
        .map(|last| {
            format!(
                "/servers?q={}&status={}&after={last}",
                url_encode(&q),
                status.map(ServerStatus::as_str).unwrap_or("")
            )
        });
    render(&ServersPage {
        page,
        rows,
        q,
        status: status.map(|s| s.as_str().to_string()).unwrap_or_default(),
        statuses: ServerStatus::ALL
            .iter()
            .filter(|s| **s != ServerStatus::Deleted)
            .map(|s| s.as_str())
            .collect(),
        matching,
        first: after == 0,
        next_url,
    })
}

/// A template as the create form offers it.
pub struct TemplateOption {
    pub slug: String,
    pub name: String,
    pub versions: Vec<String>,
    pub memory_mb: u32,
    pub cores: u32,
    pub eula_required: bool,
}

pub struct NodeOption {
    pub name: String,
    pub kind: String,
    pub free_mb: i64,
}

/// What the create form was filled with (kept when it is shown again with errors).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct CreateForm {
    #[serde(default)]
    pub idempotency_key: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub memory_mb: String,
    #[serde(default)]
    pub cores: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub eula: Option<String>,
}

#[derive(Template)]
#[template(path = "server_new.html")]
struct NewServerPage {
    page: Page,
    templates: Vec<TemplateOption>,
    nodes: Vec<NodeOption>,
    form: CreateForm,
    error_field: String,
    error: String,
}

impl NewServerPage {
    fn err(&self, field: &str) -> &str {
        if self.error_field == field {
            &self.error
        } else {
            ""
        }
    }
}

async fn new_page(
    st: &AppState,
    sess: &Sess,
    form: CreateForm,
    error: Option<(String, String)>,
) -> Result<NewServerPage, UiError> {
    let page = sess.page(st, "new", "New server").await?;
    let (templates, nodes) = st
        .db
        .call(|c| {
            let t: Vec<TemplateOption> = templates::list(c)?
                .into_iter()
                .map(|t| TemplateOption {
                    eula_required: t.needs_eula(),
                    slug: t.slug,
                    name: t.name,
                    versions: t.spec.versions.clone(),
                    memory_mb: t.spec.default_memory_mb,
                    cores: t.spec.default_cores,
                })
                .collect();
            let n: Vec<NodeOption> = nodes::free_memory(c)?
                .into_iter()
                .filter(|(n, _)| n.enabled)
                .map(|(n, free)| NodeOption {
                    name: n.name,
                    kind: n.kind,
                    free_mb: free,
                })
                .collect();
            Ok::<_, DomainError>((t, n))
        })
        .await?;
    let (error_field, error) = error.unwrap_or_default();
    Ok(NewServerPage {
        page,
        templates,
        nodes,
        form,
        error_field,
        error,
    })
}

#[derive(Debug, Deserialize)]
pub struct NewQuery {
    #[serde(default)]
    template: Option<String>,
}

pub async fn new_form(
    State(st): State<AppState>,
    sess: Sess,
    Query(q): Query<NewQuery>,
) -> Result<Response, UiError> {
    // The key is made when the page is rendered: a double click or a resubmit of this
    // page sends it again and gets the same server.
    let form = CreateForm {
        idempotency_key: format!("ui-{}", &random_secret()?[..24]),
        template: q.template.unwrap_or_default(),
        ..Default::default()
    };
    render(&new_page(&st, &sess, form, None).await?)
}

fn parse_opt_u32(field: &str, v: &str) -> Result<Option<u32>, (String, String)> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(None);
    }
    v.parse()
        .map(Some)
        .map_err(|_| (field.to_string(), "a whole number".to_string()))
}

pub async fn create(
    State(st): State<AppState>,
    sess: Sess,
    UiForm(form): UiForm<CreateForm>,
) -> Result<Response, UiError> {
    let parsed = (|| {
        let key = form.idempotency_key.trim();
        if key.is_empty() || key.len() > 200 {
            return Err((
                "idempotency_key".to_string(),
                "missing: reload the form".to_string(),
            ));
        }
        Ok((
            key.to_string(),
            CreateServer {
                name: form.name.trim().to_string(),
                template: form.template.trim().to_string(),
                version: form.version.trim().to_string(),
                memory_mb: parse_opt_u32("memory_mb", &form.memory_mb)?,
                cores: parse_opt_u32("cores", &form.cores)?,
                node: Some(form.node.trim().to_string()).filter(|n| !n.is_empty()),
                eula: form.eula.is_some(),
            },
        ))
    })();
    let (key, req) = match parsed {
        Ok(v) => v,
        Err(e) => {
            let page = new_page(&st, &sess, form, Some(e)).await?;
            return render_status(StatusCode::BAD_REQUEST, &page);
        }
    };
    let hash = req.request_hash();
    let user = sess.user().clone();
    let quota = crate::domain::users::Quota::from(&st.config.quota);
    let result = st
        .db
        .write(move |tx| servers::create(tx, &user, &req, Some((&key, &hash)), quota))
        .await;
    match result {
        Ok(created) => {
            if created.created {
                st.queue.wake();
            }
            Ok(see_other(&format!("/servers/{}", created.server.id)))
        }
        Err(e) => {
            let c = correctable(e)?;
            let page = new_page(&st, &sess, form, Some((c.field, c.message))).await?;
            render_status(c.status, &page)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NameQuery {
    #[serde(default)]
    name: String,
}

/// `{ok, message}` for the create form's as-you-type check of a name.
pub async fn name_check(
    State(st): State<AppState>,
    _sess: Sess,
    Query(q): Query<NameQuery>,
) -> Result<Response, UiError> {
    let name = q.name.trim().to_string();
    if !is_dns_label(&name) {
        return Ok(Json(json!({
            "ok": false,
            "message": "1–63 of a–z, 0–9 and '-', not starting or ending with '-'"
        }))
        .into_response());
    }
    let taken = st.db.call(move |c| servers::name_taken(c, &name)).await?;
    Ok(Json(if taken {
        json!({"ok": false, "message": "a server with this name exists"})
    } else {
        json!({"ok": true, "message": "available"})
    })
    .into_response())
}

/// A server's detail page data.
pub struct ServerView {
    pub row: ServerRow,
    pub desired: String,
    pub vmid: i64,
    pub memory_mb: i64,
    pub cores: i64,
    pub agent_state: String,
    pub agent_seen: String,
    pub ready: bool,
    pub crash_count: i64,
    pub failed_step: String,
    pub deadline: String,
    pub created: String,
    pub deleted: bool,
    pub checkpoints: Vec<String>,
}

pub struct JobRow {
    pub id: i64,
    pub kind: String,
    pub state: String,
    pub attempt: i64,
    pub max_attempts: i64,
    pub created: String,
    pub last_error: String,
    pub held_reason: String,
}

impl JobRow {
    pub fn from_job(j: &Job) -> JobRow {
        JobRow {
            id: j.id,
            kind: j.kind.clone(),
            state: j.state.to_string(),
            attempt: j.attempt,
            max_attempts: j.max_attempts,
            created: format_ts(j.created_at),
            last_error: j.errors.last().map(|e| e.error.clone()).unwrap_or_default(),
            held_reason: j.held_reason.clone().unwrap_or_default(),
        }
    }
}

pub struct EdgeRow {
    pub target: String,
    pub name: String,
    pub state: String,
    pub last_error: String,
}

#[derive(Template)]
#[template(path = "server.html")]
struct ServerPage {
    page: Page,
    s: ServerView,
    events: Vec<EventRow>,
    last_event_id: i64,
    /// The live panel (facts, actions, jobs, edge) and its key: the live stream sends
    /// it again only when it changed.
    live_html: String,
    live_key: String,
    /// What the server's agent last reported at `/version`, and this zlh's build.
    agent_version: Option<String>,
    current: String,
}

/// The actions a server's status allows, as (action, label); the same rules as the API.
pub fn allowed_actions(status: ServerStatus) -> Vec<(&'static str, &'static str)> {
    Action::ALL
        .into_iter()
        // Delete has its own confirmation page; starting a running server is allowed
        // (it makes sure it runs) but needs no button.
        .filter(|a| *a != Action::Delete && a.allowed_in(status))
        .filter(|a| !(*a == Action::Start && status == ServerStatus::Running))
        .map(|a| {
            let label = match a {
                Action::Start => "Start",
                Action::Stop => "Stop",
                Action::Restart => "Restart",
                Action::Retry => "Retry",
                Action::Reinstall => "Reinstall",
                Action::Delete => "Delete",
            };
            (a.as_str(), label)
        })
        .collect()
}

pub fn view(c: &Connection, s: &Server) -> Result<ServerView, DomainError> {
    let row = rows(c, std::slice::from_ref(s))?.remove(0);
    let mut checkpoints: Vec<String> = s
        .checkpoints
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default();
    checkpoints.sort();
    Ok(ServerView {
        row,
        desired: s.desired_state.clone(),
        vmid: s.vmid,
        memory_mb: s.memory_mb,
        cores: s.cores,
        agent_state: s.agent_state.clone().unwrap_or_default(),
        agent_seen: s.agent_seen_at.map(format_ts).unwrap_or_default(),
        ready: s.ready,
        crash_count: s.crash_count,
        failed_step: s.failed_step.clone().unwrap_or_default(),
        deadline: s.status_deadline.map(format_ts).unwrap_or_default(),
        created: format_ts(s.created_at),
        deleted: s.deleted_at.is_some(),
        checkpoints,
    })
}

pub async fn detail(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    let user = sess.user().clone();
    let csrf = sess.0.csrf.clone();
    let (snap, events) = st
        .db
        .call(move |c| {
            let snap = super::live::snapshot(c, &user, id, &csrf)?;
            let events = server_events(c, id, 0, 200)?;
            let agent_version = crate::domain::upgrades::version_of(c, id)?;
            Ok::<_, UiError>((snap, (events, agent_version)))
        })
        .await?;
    let (events, agent_version) = events;
    let page = sess.page(&st, "servers", &snap.view.row.name).await?;
    render(&ServerPage {
        page,
        agent_version,
        current: crate::agent::AgentVersion::this_build().label(),
        last_event_id: events.last().map(|e| e.id).unwrap_or(0),
        live_html: snap.html,
        live_key: snap.key,
        s: snap.view,
        events,
    })
}

/// "Upgrade agent" (admins): a job in the server's lane (see `jobs::upgrade`).
pub async fn upgrade_agent(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let user = sess.user().clone();
    st.db
        .write(move |tx| crate::domain::upgrades::request_server(tx, &user, id))
        .await?;
    st.queue.wake();
    Ok(see_other(&format!("/servers/{id}")))
}

pub async fn action(
    State(st): State<AppState>,
    sess: Sess,
    Path((id, action)): Path<(i64, String)>,
) -> Result<Response, UiError> {
    let action = Action::parse(&action)
        .filter(|a| *a != Action::Delete)
        .ok_or_else(|| UiError::NotFound(format!("no action '{action}'")))?;
    let user = sess.user().clone();
    st.db
        .write(move |tx| servers::request_action(tx, &user, id, action))
        .await?;
    st.queue.wake();
    Ok(see_other(&format!("/servers/{id}")))
}

#[derive(Template)]
#[template(path = "server_delete.html")]
struct DeletePage {
    page: Page,
    id: i64,
    name: String,
    error: String,
}

async fn delete_page(
    st: &AppState,
    sess: &Sess,
    id: i64,
    error: String,
) -> Result<DeletePage, UiError> {
    let user = sess.user().clone();
    let s = st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?;
    Ok(DeletePage {
        page: sess
            .page(st, "servers", &format!("Delete {}", s.name))
            .await?,
        id,
        name: s.name,
        error,
    })
}

pub async fn delete_form(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    render(&delete_page(&st, &sess, id, String::new()).await?)
}

#[derive(Debug, Deserialize)]
pub struct DeleteForm {
    #[serde(default)]
    confirm_name: String,
}

/// Deletes only when the server's name was typed: a world is not lost to a stray click.
pub async fn delete(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<DeleteForm>,
) -> Result<Response, UiError> {
    let user = sess.user().clone();
    let typed = f.confirm_name.trim().to_string();
    let outcome = st
        .db
        .write(move |tx| {
            let s = servers::get_visible(tx, &user, id)?;
            if s.name != typed {
                return Ok(None);
            }
            servers::request_action(tx, &user, id, Action::Delete).map(Some)
        })
        .await?;
    match outcome {
        Some(_) => {
            st.queue.wake();
            Ok(see_other(&format!("/servers/{id}")))
        }
        None => {
            let page = delete_page(
                &st,
                &sess,
                id,
                "The name typed does not match: nothing was deleted.".into(),
            )
            .await?;
            render_status(StatusCode::BAD_REQUEST, &page)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ConsoleForm {
    #[serde(default)]
    command: String,
}

#[derive(Template)]
#[template(path = "server_console.html")]
struct ConsolePage {
    page: Page,
    head: super::worlds::ServerHead,
}

/// The Console tab: the game's live output with the command box below it.
pub async fn console_tab(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    let user = sess.user().clone();
    let server = st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?;
    let page = sess
        .page(&st, "servers", &format!("{} · console", server.name))
        .await?;
    render(&ConsolePage {
        page,
        head: super::worlds::ServerHead::from(&server),
    })
}

/// Sends one line to the game's console. Scripts get 204 (or the error as text);
/// a plain form goes back to the console.
pub async fn console_command(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    headers: HeaderMap,
    UiForm(f): UiForm<ConsoleForm>,
) -> Result<Response, UiError> {
    let command = servers::console_line(&f.command)?.to_string();
    let user = sess.user().clone();
    let server = st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?;
    let client = server
        .agent_client()
        .ok_or_else(|| UiError::Conflict(format!("server {} has no agent yet", server.name)))?;
    client
        .console_command(&command)
        .await
        .map_err(|e| UiError::Conflict(format!("sending '{command}' to {}: {e}", server.name)))?;
    let actor = format!("user:{}", sess.user().username);
    tracing::info!(server = id, %actor, "console command sent");
    if headers.get("x-requested-with").is_some() {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Ok(see_other(&format!("/servers/{id}/console")))
    }
}
