//! `/api/v1/templates` and `/api/v1/nodes`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;

use super::{ApiJson, Caller, require_admin};
use crate::domain::DomainError;
use crate::domain::nodes::{self, NewNode, Node};
use crate::domain::templates::{self, NewTemplate, Template};
use crate::error::AppError;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/templates",
            get(list_templates).post(create_template),
        )
        .route("/api/v1/nodes", get(list_nodes).post(create_node))
        .route("/api/v1/nodes/{id}/agents/upgrade", post(upgrade_agents))
}

/// Enqueues one agent upgrade per server on the node (admins only): `{jobs}`, and the
/// node's agents that reported another version than this zlh before.
async fn upgrade_agents(
    State(st): State<AppState>,
    caller: Caller,
    super::Path(id): super::Path<i64>,
) -> Result<impl IntoResponse, AppError> {
    require_admin(&caller)?;
    let actor = format!("user:{}", caller.username);
    let current = crate::agent::AgentVersion::this_build().label();
    let body = st
        .db
        .write(move |tx| {
            let outdated = crate::domain::upgrades::outdated(tx, &current, Some(id))?;
            let jobs = crate::domain::upgrades::request_node(tx, &actor, id)?
                .into_iter()
                .map(|(server, job)| {
                    Ok::<_, DomainError>(serde_json::json!({
                        "server_id": server,
                        "job": crate::queue::get(tx, job)?,
                    }))
                })
                .collect::<Result<Vec<_>, _>>()?;
            Ok::<_, DomainError>(serde_json::json!({"jobs": jobs, "outdated": outdated}))
        })
        .await?;
    st.queue.wake();
    Ok((StatusCode::ACCEPTED, Json(body)))
}

/// `{templates}`.
#[derive(Debug, Serialize)]
pub struct TemplateList {
    pub templates: Vec<Template>,
}

/// `{template}`: the template just added.
#[derive(Debug, Serialize)]
pub struct CreatedTemplate {
    pub template: Template,
}

/// A node as the API shows it: settings with secrets blanked; in a list, with the
/// memory not yet promised to servers.
#[derive(Debug, Serialize)]
pub struct NodeView {
    #[serde(flatten)]
    pub node: Node,
    pub settings: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_memory_mb: Option<i64>,
}

impl NodeView {
    fn new(node: Node, free_memory_mb: Option<i64>) -> NodeView {
        NodeView {
            settings: node.public_settings(),
            node,
            free_memory_mb,
        }
    }
}

/// `{nodes}`.
#[derive(Debug, Serialize)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

/// `{node}`: the node just added.
#[derive(Debug, Serialize)]
pub struct CreatedNode {
    pub node: NodeView,
}

async fn list_templates(
    State(st): State<AppState>,
    _caller: Caller,
) -> Result<Json<TemplateList>, AppError> {
    let templates = st.db.call(|c| templates::list(c)).await?;
    Ok(Json(TemplateList { templates }))
}

async fn create_template(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(t): ApiJson<NewTemplate>,
) -> Result<impl IntoResponse, AppError> {
    require_admin(&caller)?;
    let created = st
        .db
        .write(move |tx| templates::create(tx, &t, false))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTemplate { template: created }),
    ))
}

async fn list_nodes(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<NodeList>, AppError> {
    require_admin(&caller)?;
    let list = st
        .db
        .call(|c| {
            Ok::<_, DomainError>(
                nodes::free_memory(c)?
                    .into_iter()
                    .map(|(n, free)| NodeView::new(n, Some(free)))
                    .collect::<Vec<_>>(),
            )
        })
        .await?;
    Ok(Json(NodeList { nodes: list }))
}

async fn create_node(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(n): ApiJson<NewNode>,
) -> Result<impl IntoResponse, AppError> {
    require_admin(&caller)?;
    let created = st.db.write(move |tx| nodes::create(tx, &n)).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedNode {
            node: NodeView::new(created, None),
        }),
    ))
}
