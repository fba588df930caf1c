//! HTTP: every feature router is merged here.

pub mod api;
pub mod console;
pub mod install;
mod ops;
mod traefik;
pub mod ui;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;

use crate::app::AppState;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(ops::router())
        .merge(crate::artifacts::router())
        .merge(api::router(state.clone()))
        .merge(ui::router(state.clone()))
        .merge(traefik::router())
        .merge(install::router())
        .with_state(state)
        .layer(middleware::from_fn(log_request))
}

/// Whether the request's `If-None-Match` names `etag` (or `*`): a 304 will do.
pub fn etag_matches(headers: &axum::http::HeaderMap, etag: &str) -> bool {
    headers
        .get(axum::http::header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"))
}

async fn log_request(req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let started = std::time::Instant::now();
    let resp = next.run(req).await;
    tracing::debug!(
        %method,
        %path,
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}
