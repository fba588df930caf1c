//! The Properties and Players tabs of a server (plain forms, no JavaScript needed).

use std::collections::BTreeMap;

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::worlds::ServerHead;
use super::{Page, Sess, UiError, UiForm, render, render_status};
use crate::domain::players::PlayerAction;
use crate::domain::servers;
use crate::error::AppError;
use crate::http::AppState;
use crate::http::game::{self, ActionOutcome, Field};

impl Field {
    /// The value shown in an input (empty when the file does not set it).
    pub fn shown(&self) -> &str {
        self.value.as_deref().unwrap_or("")
    }

    /// A select's options: `true`/`false` or the enum's values.
    pub fn choices(&self) -> Vec<String> {
        if self.kind == "bool" {
            vec!["true".into(), "false".into()]
        } else {
            self.options.clone()
        }
    }
}

#[derive(Template)]
#[template(path = "server_properties.html")]
struct PropertiesPage {
    page: Page,
    head: ServerHead,
    restart_needed: bool,
    fields: Vec<Field>,
    managed: Vec<(String, String)>,
    others: Vec<(String, String)>,
    head_version: String,
    error: String,
    notice: String,
}

async fn server(st: &AppState, sess: &Sess, id: i64) -> Result<servers::Server, UiError> {
    let user = sess.user().clone();
    Ok(st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?)
}

async fn head(st: &AppState, sess: &Sess, id: i64) -> Result<ServerHead, UiError> {
    Ok(ServerHead::from(&server(st, sess, id).await?))
}

async fn properties_page(
    st: &AppState,
    sess: &Sess,
    id: i64,
    error: String,
    notice: String,
) -> Result<PropertiesPage, UiError> {
    let server = server(st, sess, id).await?;
    let head = ServerHead::from(&server);
    let view = game::properties_view(st, sess.user(), id).await?;
    let page = sess
        .page(st, "servers", &format!("{} · properties", head.name))
        .await?;
    let typed: Vec<&str> = view.fields.iter().map(|f| f.key.as_str()).collect();
    let (managed, others): (Vec<_>, Vec<_>) = view
        .properties
        .iter()
        .filter(|(k, _)| !typed.contains(&k.as_str()))
        .cloned()
        .partition(|(k, _)| view.managed.contains(k));
    Ok(PropertiesPage {
        page,
        head,
        restart_needed: view.restart_needed,
        fields: view.fields,
        managed,
        others,
        head_version: server.version,
        error,
        notice,
    })
}

pub async fn properties_tab(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    render(&properties_page(&st, &sess, id, String::new(), String::new()).await?)
}

/// Saves the keys whose value changed; a refused key is named on the form again.
pub async fn save_properties(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(form): UiForm<BTreeMap<String, String>>,
) -> Result<Response, UiError> {
    let current = game::properties_view(&st, sess.user(), id).await?;
    let changed: BTreeMap<String, String> = current
        .fields
        .iter()
        .filter_map(|f| {
            let sent = form.get(&f.key)?;
            // An untouched "not set" stays not set.
            if (f.value.is_none() && sent.is_empty()) || f.value.as_deref() == Some(sent.as_str()) {
                return None;
            }
            Some((f.key.clone(), sent.trim().to_string()))
        })
        .collect();
    if changed.is_empty() {
        return render(
            &properties_page(&st, &sess, id, String::new(), "Nothing changed.".into()).await?,
        );
    }
    match game::set_properties(&st, sess.user(), id, changed.clone()).await {
        Ok(_) => {
            let keys: Vec<&str> = changed.keys().map(String::as_str).collect();
            let notice = format!("Saved {}.", keys.join(", "));
            render(&properties_page(&st, &sess, id, String::new(), notice).await?)
        }
        Err(AppError::BadRequest { message, .. }) => render_status(
            StatusCode::BAD_REQUEST,
            &properties_page(&st, &sess, id, message, String::new()).await?,
        ),
        Err(e) => Err(e.into()),
    }
}

/// One row of a list.
pub struct Row {
    pub who: String,
    pub uuid: String,
    pub details: String,
}

#[derive(Template)]
#[template(path = "server_players.html")]
struct PlayersPage {
    page: Page,
    head: ServerHead,
    running: bool,
    online: String,
    max: String,
    names: Vec<String>,
    actions: Vec<&'static str>,
    pending: Vec<String>,
    /// Title, element id, the action that takes someone off the list, rows.
    lists: Vec<(&'static str, &'static str, &'static str, Vec<Row>)>,
    error: String,
    notice: String,
}

async fn players_page(
    st: &AppState,
    sess: &Sess,
    id: i64,
    error: String,
    notice: String,
) -> Result<PlayersPage, UiError> {
    let head = head(st, sess, id).await?;
    let view = game::players_page(st, sess.user(), id).await?;
    let page = sess
        .page(st, "servers", &format!("{} · players", head.name))
        .await?;
    let p = &view.players;
    let people = |l: &[crate::agent::ListedPlayer],
                  details: &dyn Fn(&crate::agent::ListedPlayer) -> String| {
        l.iter()
            .map(|e| Row {
                who: e.name.clone().unwrap_or_default(),
                uuid: e.uuid.clone().unwrap_or_default(),
                details: details(e),
            })
            .collect::<Vec<Row>>()
    };
    let ban = |e: &crate::agent::ListedPlayer| {
        format!(
            "{} (by {}, until {})",
            e.reason.clone().unwrap_or_default(),
            e.source.clone().unwrap_or_default(),
            e.expires.clone().unwrap_or_default()
        )
    };
    let lists = vec![
        (
            "Whitelist",
            "whitelist",
            "unwhitelist",
            people(&p.whitelist, &|_| String::new()),
        ),
        (
            "Operators",
            "ops",
            "deop",
            people(&p.ops, &|e| {
                e.level.map(|l| format!("level {l}")).unwrap_or_default()
            }),
        ),
        (
            "Banned players",
            "banned-players",
            "pardon",
            people(&p.banned_players, &ban),
        ),
        (
            "Banned IPs",
            "banned-ips",
            "pardon",
            p.banned_ips
                .iter()
                .map(|b| Row {
                    who: b.ip.clone(),
                    uuid: String::new(),
                    details: b.reason.clone().unwrap_or_default(),
                })
                .collect(),
        ),
    ];
    let pending = view
        .pending
        .iter()
        .map(|j| {
            let r = &j.payload["request"];
            format!(
                "job #{}: {} {} ({})",
                j.id,
                r["action"].as_str().unwrap_or("?"),
                r["target"].as_str().unwrap_or("?"),
                j.state.as_str()
            )
        })
        .collect();
    let error = if error.is_empty() && !p.errors.is_empty() {
        p.errors.join("; ")
    } else {
        error
    };
    Ok(PlayersPage {
        page,
        head,
        running: p.running,
        online: p
            .online
            .map(|n| n.to_string())
            .unwrap_or_else(|| "?".into()),
        max: p.max.map(|n| n.to_string()).unwrap_or_else(|| "?".into()),
        names: p.names.clone(),
        actions: PlayerAction::ALL.iter().map(|a| a.as_str()).collect(),
        pending,
        lists,
        error,
        notice,
    })
}

pub async fn players_tab(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    render(&players_page(&st, &sess, id, String::new(), String::new()).await?)
}

#[derive(Debug, Deserialize)]
pub struct PlayerForm {
    #[serde(default)]
    name: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    reason: String,
}

pub async fn player_action(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<PlayerForm>,
) -> Result<Response, UiError> {
    let reason = Some(f.reason.trim()).filter(|r| !r.is_empty());
    match game::player_action(&st, sess.user(), id, &f.action, f.name.trim(), reason).await {
        Ok(ActionOutcome::Applied {
            command, confirmed, ..
        }) => {
            let notice = if confirmed {
                format!("Done: `{command}`.")
            } else {
                format!("Sent `{command}`; the game's lists do not show it yet.")
            };
            render(&players_page(&st, &sess, id, String::new(), notice).await?)
        }
        Ok(ActionOutcome::Queued { job, .. }) => {
            let notice = format!(
                "Queued as job #{}: applied once the server is next ready.",
                job.id
            );
            render(&players_page(&st, &sess, id, String::new(), notice).await?)
        }
        Err(AppError::BadRequest { message, .. } | AppError::Conflict { message, .. }) => {
            render_status(
                StatusCode::BAD_REQUEST,
                &players_page(&st, &sess, id, message, String::new()).await?,
            )
        }
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Deserialize)]
pub struct VersionForm {
    #[serde(default)]
    version: String,
    #[serde(default)]
    confirm_downgrade: Option<String>,
}

/// Queues a version change and shows the server's timeline; a refusal is named on
/// the Properties tab.
pub async fn change_version(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<VersionForm>,
) -> Result<Response, UiError> {
    let req = crate::domain::versions::VersionChange {
        version: f.version.trim().to_string(),
        loader_version: None,
        confirm_downgrade: f.confirm_downgrade.is_some(),
        ready_deadline_secs: None,
    };
    match game::change_version(&st, sess.user(), id, req).await {
        Ok(_) => Ok(super::see_other(&format!("/servers/{id}"))),
        Err(AppError::BadRequest { message, .. } | AppError::Conflict { message, .. }) => {
            render_status(
                StatusCode::BAD_REQUEST,
                &properties_page(&st, &sess, id, message, String::new()).await?,
            )
        }
        Err(e) => Err(e.into()),
    }
}
