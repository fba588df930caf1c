//! HTTP: every feature router is merged here.

pub mod api;
pub mod artifacts;
pub mod console;
pub mod game;
pub mod install;
mod ops;
mod state;
mod traefik;
pub mod ui;

pub use state::AppState;

use axum::Router;
use axum::extract::Request;
use axum::middleware::{self, Next};
use axum::response::Response;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(ops::router())
        .merge(artifacts::router())
        .merge(api::router(state.clone()))
        .merge(ui::router(state.clone()))
        .merge(traefik::router())
        .merge(install::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .layer(middleware::from_fn(log_request))
}

/// Unknown paths: under `/api` in the API's JSON error shape, elsewhere a plain 404.
async fn not_found(uri: axum::http::Uri) -> Response {
    use axum::response::IntoResponse;
    if uri.path().starts_with("/api/") {
        crate::error::AppError::NotFound(format!("no API route {}", uri.path())).into_response()
    } else {
        (axum::http::StatusCode::NOT_FOUND, "not found").into_response()
    }
}

/// A known path with another method: under `/api` in the API's JSON error shape.
async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    use axum::response::IntoResponse;
    let message = format!("{} does not take {method}", uri.path());
    if uri.path().starts_with("/api/") {
        let body = serde_json::json!({
            "error": {"code": "method_not_allowed", "message": message, "field": null}
        });
        (axum::http::StatusCode::METHOD_NOT_ALLOWED, axum::Json(body)).into_response()
    } else {
        (axum::http::StatusCode::METHOD_NOT_ALLOWED, message).into_response()
    }
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
        path = ?crate::util::untrusted(&path),
        status = resp.status().as_u16(),
        ms = started.elapsed().as_millis() as u64,
        "request"
    );
    resp
}
