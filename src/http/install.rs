//! The routes a Proxmox host uses to enroll itself (`zlh node enroll`): the install
//! script, this zlh's own binary for the base template, and the registration. They need
//! no API token: the one-time enrollment token is the credential, and only allows the
//! one registration it was made for.

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use crate::domain::{DomainError, enrollments};
use crate::error::AppError;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/install/pve-node.sh", get(script))
        .route("/install/zlh", get(binary))
        .route("/install/zlh.json", get(binary_info))
        .route("/install/pve-node/check", post(check))
        .route("/install/pve-node/register", post(register))
}

/// A refused enrollment token is a 403 with the reason; other domain errors as usual.
fn enrollment_error(e: DomainError) -> AppError {
    match e {
        DomainError::Invalid { field, message } if field == "token" => AppError::Forbidden(message),
        other => other.into(),
    }
}

#[derive(Debug, Deserialize)]
struct TokenQuery {
    #[serde(default)]
    token: String,
}

/// This very binary: what the base template runs as its agent, and what agents
/// upgrade to.
fn own_binary() -> Result<std::path::PathBuf, AppError> {
    crate::shipping::enroll::own_binary()
        .map_err(|e| AppError::Internal(format!("finding this binary: {e}")))
}

/// What `/install/zlh` serves: its version (as agents report it at `/version`) and
/// sha256, for an agent's `POST /upgrade`.
async fn binary_info(State(st): State<AppState>) -> Result<Json<Value>, AppError> {
    let sha256 = tokio::task::spawn_blocking(crate::shipping::enroll::own_sha256)
        .await
        .map_err(|e| AppError::Internal(format!("hashing this binary: {e}")))?
        .map_err(|e| AppError::Internal(format!("hashing this binary: {e}")))?;
    let v = crate::agent::AgentVersion::this_build();
    Ok(Json(json!({
        "url": format!("{}/install/zlh", st.config.advertised()),
        "version": v.label(),
        "sha256": sha256,
    })))
}

async fn script(
    State(st): State<AppState>,
    Query(q): Query<TokenQuery>,
) -> Result<Response, AppError> {
    let token = q.token;
    let node = {
        let token = token.clone();
        st.db
            .call(move |c| enrollments::check(c, &token))
            .await
            .map_err(enrollment_error)?
    };
    let sha256 = tokio::task::spawn_blocking(crate::shipping::enroll::own_sha256)
        .await
        .map_err(|e| AppError::Internal(format!("hashing this binary: {e}")))?
        .map_err(|e| AppError::Internal(format!("hashing this binary: {e}")))?;
    let text =
        crate::shipping::enroll::render_script(&st.config.advertised(), &token, &node, &sha256);
    Ok((
        [(header::CONTENT_TYPE, "text/x-shellscript; charset=utf-8")],
        text,
    )
        .into_response())
}

async fn binary() -> Result<Response, AppError> {
    let path = own_binary()?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|e| AppError::Internal(format!("opening {}: {e}", path.display())))?;
    let len = file
        .metadata()
        .await
        .map_err(|e| AppError::Internal(format!("reading {}: {e}", path.display())))?
        .len();
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .body(Body::from_stream(ReaderStream::new(file)))
        .map_err(|e| AppError::Internal(format!("building the response: {e}")))
}

#[derive(Debug, Deserialize)]
struct CheckBody {
    token: String,
}

async fn check(
    State(st): State<AppState>,
    Json(b): Json<CheckBody>,
) -> Result<Json<Value>, AppError> {
    let name = st
        .db
        .call(move |c| enrollments::check(c, &b.token))
        .await
        .map_err(enrollment_error)?;
    Ok(Json(json!({ "node": name })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterBody {
    token: String,
    memory_mb: i64,
    settings: Value,
}

async fn register(
    State(st): State<AppState>,
    Json(b): Json<RegisterBody>,
) -> Result<impl IntoResponse, AppError> {
    let node = st
        .db
        .write(move |tx| enrollments::redeem(tx, &b.token, b.settings, b.memory_mb))
        .await
        .map_err(enrollment_error)?;
    tracing::info!(node = %node.name, "a Proxmox node enrolled itself");
    Ok((StatusCode::CREATED, Json(json!({ "node": node.public() }))))
}
