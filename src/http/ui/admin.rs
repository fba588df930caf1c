//! Admin pages: jobs, templates, nodes, users and tokens, doctor.

use askama::Template;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;
use serde_json::{Value, json};

use super::servers::JobRow;
use super::{Page, Sess, UiError, UiForm, correctable, render, render_status, see_other};
use crate::doctor;
use crate::domain::DomainError;
use crate::domain::nodes::{self, NewNode};
use crate::domain::templates::{self, NewTemplate};
use crate::domain::users::{self, TokenInfo, User};
use crate::http::AppState;
use crate::queue::{JobFilter, JobState};
use crate::runtime::proxmox::{ProxmoxConfig, ProxmoxRuntime};
use crate::util::format_ts;

// ---- jobs ----

#[derive(Debug, Deserialize)]
pub struct JobsQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    before: Option<i64>,
}

/// A job with every error it had, as the jobs page shows it.
pub struct JobDetail {
    pub row: JobRow,
    pub lane: String,
    pub errors: Vec<(i64, String, String)>,
    pub can_retry: bool,
    pub can_cancel: bool,
    pub can_release: bool,
}

#[derive(Template)]
#[template(path = "jobs.html")]
struct JobsPage {
    page: Page,
    jobs: Vec<JobDetail>,
    states: Vec<&'static str>,
    state: String,
    kind: String,
    kinds: Vec<String>,
    next_url: Option<String>,
}

const JOBS_PAGE: usize = 50;

pub async fn jobs(
    State(st): State<AppState>,
    sess: Sess,
    Query(q): Query<JobsQuery>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let page = sess.page(&st, "jobs", "Jobs").await?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| UiError::BadRequest(format!("state: {e}")))?,
        ),
    };
    let kind = q.kind.clone().filter(|k| !k.is_empty());
    let filter = JobFilter {
        state,
        kind: kind.clone(),
        lane: None,
        before_id: q.before,
        limit: JOBS_PAGE,
    };
    let (list, kinds) = st
        .db
        .call(move |c| {
            let list = crate::queue::list(c, &filter)?;
            let kinds = crate::queue::kinds(c)?;
            Ok::<_, crate::queue::QueueError>((list, kinds))
        })
        .await?;
    let next_url = (list.len() == JOBS_PAGE)
        .then(|| list.last().map(|j| j.id))
        .flatten()
        .map(|id| {
            format!(
                "/jobs?state={}&kind={}&before={id}",
                state.map(|s| s.as_str()).unwrap_or(""),
                super::servers::url_encode(kind.as_deref().unwrap_or(""))
            )
        });
    let jobs = list
        .iter()
        .map(|j| JobDetail {
            row: JobRow::from_job(j),
            lane: j.lane.clone().unwrap_or_default(),
            errors: j
                .errors
                .iter()
                .map(|e| (e.attempt, format_ts(e.at), e.error.clone()))
                .collect(),
            can_retry: matches!(
                j.state,
                JobState::Discarded
                    | JobState::Cancelled
                    | JobState::Retryable
                    | JobState::Scheduled
            ),
            can_cancel: !j.state.is_terminal(),
            can_release: j.state == JobState::Held,
        })
        .collect();
    render(&JobsPage {
        page,
        jobs,
        states: JobState::ALL.iter().map(|s| s.as_str()).collect(),
        state: state.map(|s| s.as_str().to_string()).unwrap_or_default(),
        kind: kind.unwrap_or_default(),
        kinds,
        next_url,
    })
}

pub async fn job_action(
    State(st): State<AppState>,
    sess: Sess,
    Path((id, action)): Path<(i64, String)>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    match action.as_str() {
        "retry" => st.queue.retry(id).await?,
        "cancel" => {
            st.queue.cancel(id).await?;
        }
        "release" => {
            st.queue.release(Some(id)).await?;
        }
        other => {
            return Err(UiError::NotFound(format!(
                "no job action '{other}' (retry, cancel, release)"
            )));
        }
    }
    tracing::info!(job = id, %action, user = %sess.user().username, "job action from the UI");
    Ok(see_other("/jobs"))
}

pub async fn release_all(State(st): State<AppState>, sess: Sess) -> Result<Response, UiError> {
    sess.require_admin()?;
    let n = st.queue.release(None).await?;
    tracing::info!(released = n, user = %sess.user().username, "held jobs released from the UI");
    Ok(see_other("/jobs"))
}

// ---- templates ----

pub struct TemplateRow {
    pub slug: String,
    pub name: String,
    pub game: String,
    pub variant: String,
    pub builtin: bool,
    pub edge: String,
    pub memory_mb: u32,
    pub versions: String,
    pub spec: String,
}

#[derive(Template)]
#[template(path = "templates.html")]
struct TemplatesPage {
    page: Page,
    templates: Vec<TemplateRow>,
    form: TemplateForm,
    error: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct TemplateForm {
    #[serde(default)]
    slug: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    game: String,
    #[serde(default)]
    variant: String,
    #[serde(default)]
    spec: String,
}

async fn templates_page(
    st: &AppState,
    sess: &Sess,
    form: TemplateForm,
    error: String,
) -> Result<TemplatesPage, UiError> {
    let page = sess.page(st, "templates", "Templates").await?;
    let list = st.db.call(|c| templates::list(c)).await?;
    let templates = list
        .into_iter()
        .map(|t| TemplateRow {
            edge: serde_json::to_value(t.spec.edge)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            memory_mb: t.spec.default_memory_mb,
            versions: t.spec.versions.join(", "),
            spec: serde_json::to_string_pretty(&t.spec).unwrap_or_default(),
            slug: t.slug,
            name: t.name,
            game: t.game,
            variant: t.variant,
            builtin: t.builtin,
        })
        .collect();
    let form = if form.spec.is_empty() {
        TemplateForm {
            spec: serde_json::to_string_pretty(&templates::example_spec()).unwrap_or_default(),
            ..form
        }
    } else {
        form
    };
    Ok(TemplatesPage {
        page,
        templates,
        form,
        error,
    })
}

pub async fn templates(State(st): State<AppState>, sess: Sess) -> Result<Response, UiError> {
    render(&templates_page(&st, &sess, TemplateForm::default(), String::new()).await?)
}

pub async fn create_template(
    State(st): State<AppState>,
    sess: Sess,
    UiForm(f): UiForm<TemplateForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let spec: Result<Value, _> = serde_json::from_str(&f.spec);
    let new = spec
        .map_err(|e| format!("spec: not JSON: {e}"))
        .and_then(|spec| {
            serde_json::from_value::<NewTemplate>(json!({
                "slug": f.slug.trim(), "name": f.name.trim(), "game": f.game.trim(),
                "variant": f.variant.trim(), "spec": spec,
            }))
            .map_err(|e| format!("spec: {e}"))
        });
    // A message for the form, or the template added.
    let outcome = match new {
        Ok(t) => match st
            .db
            .write(move |tx| templates::create(tx, &t, false))
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => Err(correctable(e)?.text()),
        },
        Err(m) => Err(m),
    };
    match outcome {
        Ok(()) => Ok(see_other("/templates")),
        Err(message) => {
            let page = templates_page(&st, &sess, f, message).await?;
            render_status(StatusCode::BAD_REQUEST, &page)
        }
    }
}

// ---- nodes ----

pub struct NodeRow {
    pub id: i64,
    /// "server 3 (alpha): 0.1.0 (commit …)" for each agent older than this zlh.
    pub outdated: Vec<String>,
    pub name: String,
    pub kind: String,
    pub memory_mb: i64,
    pub free_mb: i64,
    pub vmids: String,
    pub ports: String,
    pub settings: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct NodeForm {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub api_url: String,
    #[serde(default)]
    pub token_id: String,
    #[serde(default)]
    pub token_secret: String,
    #[serde(default)]
    pub node: String,
    #[serde(default)]
    pub template_vmid: String,
    #[serde(default)]
    pub storage: String,
    #[serde(default)]
    pub bridge: String,
    #[serde(default)]
    pub bootstrap_token: String,
    #[serde(default)]
    pub tls_fingerprint: String,
    /// Checkboxes: present ("on") when ticked.
    #[serde(default)]
    pub allow_loopback: Option<String>,
    #[serde(default)]
    pub allow_insecure_http: Option<String>,
    #[serde(default)]
    pub memory_mb: String,
    #[serde(default)]
    pub vmid_min: String,
    #[serde(default)]
    pub vmid_max: String,
}

impl NodeForm {
    /// The form as it may be shown again: the secrets typed are not sent back.
    fn without_secrets(self) -> NodeForm {
        NodeForm {
            token_secret: String::new(),
            bootstrap_token: String::new(),
            ..self
        }
    }

    /// The Proxmox settings as JSON (what `POST /api/v1/nodes` takes).
    fn settings(&self) -> Value {
        let mut s = json!({
            "api_url": self.api_url.trim(),
            "token_id": self.token_id.trim(),
            "token_secret": self.token_secret.trim(),
            "node": self.node.trim(),
            "template_vmid": self.template_vmid.trim().parse::<i64>().unwrap_or(0),
            "bootstrap_token": self.bootstrap_token.trim(),
            "allow_loopback": self.allow_loopback.is_some(),
            "allow_insecure_http": self.allow_insecure_http.is_some(),
        });
        for (k, v) in [
            ("storage", &self.storage),
            ("bridge", &self.bridge),
            ("tls_fingerprint", &self.tls_fingerprint),
        ] {
            if !v.trim().is_empty() {
                s[k] = json!(v.trim());
            }
        }
        s
    }

    fn config(&self) -> Result<ProxmoxConfig, String> {
        if self.template_vmid.trim().parse::<i64>().is_err() {
            return Err("template_vmid: the VMID of the base template, a number".into());
        }
        serde_json::from_value(self.settings()).map_err(|e| format!("settings: {e}"))
    }

    fn num(field: &str, v: &str) -> Result<Option<i64>, String> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse()
            .map(Some)
            .map_err(|_| format!("{field}: a whole number"))
    }

    fn new_node(&self) -> Result<NewNode, String> {
        let cfg = self.config()?;
        cfg.validate()
            .map_err(|e| format!("{}: {}", e.field, e.message))?;
        Ok(NewNode {
            name: self.name.trim().to_string(),
            kind: "proxmox".into(),
            settings: self.settings(),
            memory_mb: NodeForm::num("memory_mb", &self.memory_mb)?
                .ok_or("memory_mb: the memory offered to game servers, in MiB")?,
            vmid_min: NodeForm::num("vmid_min", &self.vmid_min)?,
            vmid_max: NodeForm::num("vmid_max", &self.vmid_max)?,
            port_min: None,
            port_max: None,
        })
    }
}

#[derive(Template)]
#[template(path = "nodes.html")]
struct NodesPage {
    page: Page,
    nodes: Vec<NodeRow>,
    /// This zlh's build, as agents report theirs.
    current: String,
    form: NodeForm,
    error: String,
    test_result: Option<(bool, String)>,
}

async fn nodes_page(
    st: &AppState,
    sess: &Sess,
    form: NodeForm,
    error: String,
    test_result: Option<(bool, String)>,
) -> Result<NodesPage, UiError> {
    let page = sess.page(st, "nodes", "Nodes").await?;
    let list = st.db.call(|c| nodes::free_memory(c)).await?;
    let current = crate::agent::AgentVersion::this_build().label();
    let outdated = st
        .db
        .call(move |c| crate::domain::upgrades::outdated(c, &current, None))
        .await?;
    let nodes = list
        .into_iter()
        .map(|(n, free)| NodeRow {
            id: n.id,
            outdated: outdated
                .iter()
                .filter(|r| r.node_id == n.id)
                .map(|r| {
                    format!(
                        "server {} ({}): {}",
                        r.server_id,
                        r.server,
                        r.version.as_deref().unwrap_or("?")
                    )
                })
                .collect(),
            settings: n.public()["settings"].to_string(),
            name: n.name,
            kind: n.kind,
            memory_mb: n.memory_mb,
            free_mb: free,
            vmids: format!("{}–{}", n.vmid_min, n.vmid_max),
            ports: format!("{}–{}", n.port_min, n.port_max),
        })
        .collect();
    Ok(NodesPage {
        page,
        nodes,
        current: crate::agent::AgentVersion::this_build().label(),
        form,
        error,
        test_result,
    })
}

/// "Upgrade agents": one upgrade job per server on the node (see `jobs::upgrade`).
pub async fn upgrade_node_agents(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let actor = format!("user:{}", sess.user().username);
    let jobs = st
        .db
        .write(move |tx| crate::domain::upgrades::request_node(tx, &actor, id))
        .await?;
    st.queue.wake();
    tracing::info!(node = id, jobs = jobs.len(), user = %sess.user().username, "agent upgrades from the UI");
    Ok(see_other("/jobs"))
}

pub async fn nodes(State(st): State<AppState>, sess: Sess) -> Result<Response, UiError> {
    sess.require_admin()?;
    render(&nodes_page(&st, &sess, NodeForm::default(), String::new(), None).await?)
}

pub async fn create_node(
    State(st): State<AppState>,
    sess: Sess,
    UiForm(f): UiForm<NodeForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    // A message for the form, or the node added.
    let outcome = match f.new_node() {
        Ok(n) => match st.db.write(move |tx| nodes::create(tx, &n)).await {
            Ok(n) => Ok(n),
            Err(e) => Err(correctable(e)?.text()),
        },
        Err(m) => Err(m),
    };
    match outcome {
        Ok(n) => {
            tracing::info!(node = %n.name, user = %sess.user().username, "node added from the UI");
            Ok(see_other("/nodes"))
        }
        Err(message) => {
            let page = nodes_page(&st, &sess, f.without_secrets(), message, None).await?;
            render_status(StatusCode::BAD_REQUEST, &page)
        }
    }
}

/// Lists the node's containers and reads the base template's config.
async fn test_connection(f: &NodeForm) -> Result<String, String> {
    let cfg = f.config()?;
    let rt = ProxmoxRuntime::new(cfg.clone()).map_err(|e| format!("{}: {}", e.field, e.message))?;
    let pve = rt.client();
    let list = pve
        .list()
        .await
        .map_err(|e| format!("listing containers on {}: {e}", cfg.node))?;
    pve.config(cfg.template_vmid)
        .await
        .map_err(|e| format!("reading base template {}: {e}", cfg.template_vmid))?;
    Ok(format!(
        "connected: node {} answers, {} containers, base template {} found",
        cfg.node,
        list.len(),
        cfg.template_vmid
    ))
}

/// "Test connection": the API answers with this token, the PVE node exists and the
/// base template is there. Nothing is saved.
pub async fn test_node(
    State(st): State<AppState>,
    sess: Sess,
    UiForm(f): UiForm<NodeForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let result = match test_connection(&f).await {
        Ok(message) => (true, message),
        Err(message) => (false, message),
    };
    let f = f.without_secrets();
    let page = nodes_page(&st, &sess, f, String::new(), Some(result)).await?;
    render(&page)
}

// ---- users and tokens ----

pub struct UserRow {
    pub user: User,
    pub has_password: bool,
    pub created: String,
    pub tokens: Vec<TokenRow>,
    /// "servers 1 of 10, memory 512 of 32768 MiB", or "not limited" for admins.
    pub quota: String,
    /// The limits set for this user alone ("" where the default applies).
    pub own_max_servers: String,
    pub own_max_memory_mb: String,
}

pub struct TokenRow {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub created: String,
    pub revoked: bool,
}

impl TokenRow {
    fn from_info(t: &TokenInfo) -> TokenRow {
        TokenRow {
            id: t.id,
            name: t.name.clone(),
            prefix: t.prefix.clone(),
            created: format_ts(t.created_at),
            revoked: t.revoked_at.is_some(),
        }
    }
}

#[derive(Template)]
#[template(path = "users.html")]
struct UsersPage {
    page: Page,
    users: Vec<UserRow>,
    error: String,
    notice: String,
    /// A token just issued: (user, secret), shown this once.
    new_token: Option<(String, String)>,
}

async fn users_page(
    st: &AppState,
    sess: &Sess,
    error: String,
    notice: String,
    new_token: Option<(String, String)>,
) -> Result<UsersPage, UiError> {
    let page = sess.page(st, "users", "Users").await?;
    let defaults = crate::domain::users::Quota::from(&st.config.quota);
    let users = st
        .db
        .call(move |c| {
            users::list(c)?
                .into_iter()
                .map(|u| {
                    let q = users::quota_of(c, &u, defaults)?;
                    let used = users::usage(c, u.id)?;
                    let own = users::own_quota(c, u.id)?;
                    let limit =
                        |v: Option<i64>| v.map_or("no limit".to_string(), |n| n.to_string());
                    let quota = if u.is_admin {
                        "not limited (admin)".to_string()
                    } else {
                        format!(
                            "servers {} of {}, memory {} of {} MiB",
                            used.servers,
                            limit(q.max_servers),
                            used.memory_mb,
                            limit(q.max_memory_mb)
                        )
                    };
                    let own_text = |v: Option<i64>| v.map(|n| n.to_string()).unwrap_or_default();
                    Ok(UserRow {
                        quota,
                        own_max_servers: own_text(own.max_servers),
                        own_max_memory_mb: own_text(own.max_memory_mb),
                        has_password: users::has_password(c, u.id)?,
                        created: format_ts(u.created_at),
                        tokens: users::tokens(c, u.id)?
                            .iter()
                            .map(TokenRow::from_info)
                            .collect(),
                        user: u,
                    })
                })
                .collect::<Result<Vec<_>, DomainError>>()
        })
        .await?;
    Ok(UsersPage {
        page,
        users,
        error,
        notice,
        new_token,
    })
}

pub async fn users(State(st): State<AppState>, sess: Sess) -> Result<Response, UiError> {
    sess.require_admin()?;
    render(&users_page(&st, &sess, String::new(), String::new(), None).await?)
}

/// A domain error the user can fix shown on the users page; others are errors.
async fn users_result(
    st: &AppState,
    sess: &Sess,
    r: Result<String, DomainError>,
) -> Result<Response, UiError> {
    match r {
        Ok(notice) => render(&users_page(st, sess, String::new(), notice, None).await?),
        Err(e) => {
            // A user or token gone meanwhile is said on the page, like bad input.
            let message = match e {
                DomainError::NotFound(_) => e.to_string(),
                e => correctable(e)?.text(),
            };
            let page = users_page(st, sess, message, String::new(), None).await?;
            render_status(StatusCode::BAD_REQUEST, &page)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NewUserForm {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    admin: Option<String>,
}

pub async fn create_user(
    State(st): State<AppState>,
    sess: Sess,
    UiForm(f): UiForm<NewUserForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let name = f.username.trim().to_string();
    let r = st
        .db
        .write(move |tx| {
            let phc = users::hash_password(&f.password)?;
            let u = users::create_user(tx, &name, f.admin.is_some(), Some(&phc))?;
            Ok(format!("user {} added", u.username))
        })
        .await;
    users_result(&st, &sess, r).await
}

fn existing_user(conn: &rusqlite::Connection, id: i64) -> Result<User, DomainError> {
    users::get(conn, id)?.ok_or_else(|| DomainError::NotFound(format!("user {id}")))
}

#[derive(Debug, Deserialize)]
pub struct PasswordForm {
    #[serde(default)]
    password: String,
}

/// Sets a new password and ends the user's sessions.
pub async fn reset_password(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<PasswordForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let r = st
        .db
        .write(move |tx| {
            let u = existing_user(tx, id)?;
            let ended = users::set_password(tx, id, &f.password)?;
            Ok((u, ended))
        })
        .await
        .map(|(u, ended)| format!("password of {} set; {ended} session(s) ended", u.username));
    if id == sess.user().id && r.is_ok() {
        // One's own password: the current session ended with the others.
        return Ok(see_other("/login"));
    }
    users_result(&st, &sess, r).await
}

#[derive(Debug, Deserialize)]
pub struct QuotaForm {
    #[serde(default)]
    max_servers: String,
    #[serde(default)]
    max_memory_mb: String,
}

/// Sets a user's own limits; an empty field goes back to the configured default.
pub async fn set_quota(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<QuotaForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let parse = |field: &str, v: &str| -> Result<Option<i64>, DomainError> {
        let v = v.trim();
        if v.is_empty() {
            return Ok(None);
        }
        v.parse::<i64>()
            .map(Some)
            .map_err(|_| crate::domain::invalid(field, "a whole number, or empty for the default"))
    };
    let r = match (
        parse("max_servers", &f.max_servers),
        parse("max_memory_mb", &f.max_memory_mb),
    ) {
        (Ok(max_servers), Ok(max_memory_mb)) => {
            st.db
                .write(move |tx| {
                    let u = existing_user(tx, id)?;
                    users::set_quota(
                        tx,
                        id,
                        users::Quota {
                            max_servers,
                            max_memory_mb,
                        },
                    )?;
                    Ok(format!("quota of {} set", u.username))
                })
                .await
        }
        (Err(e), _) | (_, Err(e)) => Err(e),
    };
    users_result(&st, &sess, r).await
}

#[derive(Debug, Deserialize)]
pub struct TokenForm {
    #[serde(default)]
    name: String,
}

pub async fn create_token(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<TokenForm>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let r = st
        .db
        .write(move |tx| {
            let u = existing_user(tx, id)?;
            let (secret, _) = users::create_token(tx, id, f.name.trim())?;
            Ok::<_, DomainError>((u.username, secret))
        })
        .await;
    match r {
        Ok((user, secret)) => {
            tracing::info!(%user, by = %sess.user().username, "API token issued from the UI");
            let page = users_page(
                &st,
                &sess,
                String::new(),
                String::new(),
                Some((user, secret)),
            )
            .await?;
            let mut resp = render(&page)?;
            // The page shows a secret: never keep it in a cache.
            resp.headers_mut().insert(
                axum::http::header::CACHE_CONTROL,
                axum::http::HeaderValue::from_static("no-store"),
            );
            Ok(resp)
        }
        Err(e) => users_result(&st, &sess, Err(e)).await,
    }
}

pub async fn revoke_token(
    State(st): State<AppState>,
    sess: Sess,
    Path((id, token)): Path<(i64, i64)>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let r = st
        .db
        .write(move |tx| {
            users::revoke_token(tx, id, token)?;
            Ok(format!("token {token} revoked"))
        })
        .await;
    users_result(&st, &sess, r).await
}

// ---- doctor ----

#[derive(Debug, Deserialize)]
pub struct DoctorQuery {
    #[serde(default)]
    server: Option<i64>,
}

#[derive(Template)]
#[template(path = "doctor.html")]
struct DoctorPage {
    page: Page,
    ok: bool,
    executor: String,
    findings: Vec<doctor::Finding>,
    server: Option<doctor::ServerCheck>,
    server_id: String,
}

impl DoctorPage {
    fn verdict(f: &doctor::Finding) -> &'static str {
        match f.verdict {
            doctor::Verdict::Ok => "ok",
            doctor::Verdict::Warn => "warn",
            doctor::Verdict::Problem => "problem",
        }
    }
}

/// The doctor's checks, read-only (`zlh doctor --fix` repairs).
pub async fn doctor(
    State(st): State<AppState>,
    sess: Sess,
    Query(q): Query<DoctorQuery>,
) -> Result<Response, UiError> {
    sess.require_admin()?;
    let page = sess.page(&st, "doctor", "Doctor").await?;
    let opts = doctor::Options {
        server: q.server,
        ..Default::default()
    };
    let report = doctor::run(&st.services, &opts).await?;
    let executor = report
        .executor
        .as_ref()
        .map(|i| {
            format!(
                "host {} (pid {}), boot {}, since {}, last heartbeat {}",
                i.host,
                i.pid,
                i.boot_epoch,
                format_ts(i.started_at),
                format_ts(i.heartbeat_at)
            )
        })
        .unwrap_or_else(|| "nobody has served this database yet".into());
    let mut findings = report.findings.clone();
    // Problems first, then warnings.
    findings.sort_by_key(|f| match f.verdict {
        doctor::Verdict::Problem => 0,
        doctor::Verdict::Warn => 1,
        doctor::Verdict::Ok => 2,
    });
    render(&DoctorPage {
        page,
        ok: !report.has_problems(),
        executor,
        findings,
        server: report.server.clone(),
        server_id: q.server.map(|s| s.to_string()).unwrap_or_default(),
    })
}
