//! `/api/v1/templates` and `/api/v1/nodes`.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::{ApiJson, Caller, require_admin};
use crate::domain::DomainError;
use crate::domain::nodes::{self, NewNode};
use crate::domain::templates::{self, NewTemplate};
use crate::error::AppError;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/templates",
            get(list_templates).post(create_template),
        )
        .route("/api/v1/nodes", get(list_nodes).post(create_node))
}

async fn list_templates(
    State(st): State<AppState>,
    _caller: Caller,
) -> Result<Json<Value>, AppError> {
    let list = st.db.call(|c| templates::list(c)).await?;
    Ok(Json(json!({"templates": list})))
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
    Ok((StatusCode::CREATED, Json(json!({"template": created}))))
}

async fn list_nodes(State(st): State<AppState>, caller: Caller) -> Result<Json<Value>, AppError> {
    require_admin(&caller)?;
    let list = st
        .db
        .call(|c| {
            Ok::<_, DomainError>(
                nodes::free_memory(c)?
                    .into_iter()
                    .map(|(n, free)| {
                        let mut v = n.public();
                        v["free_memory_mb"] = json!(free);
                        v
                    })
                    .collect::<Vec<_>>(),
            )
        })
        .await?;
    Ok(Json(json!({"nodes": list})))
}

async fn create_node(
    State(st): State<AppState>,
    caller: Caller,
    ApiJson(n): ApiJson<NewNode>,
) -> Result<impl IntoResponse, AppError> {
    require_admin(&caller)?;
    let created = st.db.write(move |tx| nodes::create(tx, &n)).await?;
    Ok((StatusCode::CREATED, Json(json!({"node": created.public()}))))
}
