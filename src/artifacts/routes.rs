//! `GET /artifacts/{*path}`: the mirror over HTTP, for agents (`ARTIFACT_SERVER`).
//!
//! No authentication: agents fetch by IP from inside the private network, and
//! the content is mostly public software. (DESIGN §7: control plane by IP.)
//
// TODO(auth): anyone who reaches this route can make the server download every
// fillable version from upstream (disk use), and imported artifacts may be private
// (mods, configs). Once agents hold per-server tokens, require one here — at least
// for requests that would start an upstream fill.

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::io::ReaderStream;

use crate::app::AppState;
use crate::error::AppError;

/// Header carrying the artifact's sha256 (lowercase hex), for agents to verify.
pub const CHECKSUM_HEADER: &str = "x-checksum-sha256";

pub fn router() -> Router<AppState> {
    Router::new().route("/artifacts/{*path}", get(serve_artifact))
}

/// Streams the artifact (filling it from upstream first when that is possible).
async fn serve_artifact(
    State(st): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let Path(path) = path.map_err(|e| AppError::BadRequest {
        field: Some("path".into()),
        message: format!("invalid artifact path: {e}"),
    })?;
    let info = st.mirror.ensure(&path).await?;
    let etag = format!("\"{}\"", info.sha256);

    if crate::http::etag_matches(&headers, &etag) {
        return Ok((
            StatusCode::NOT_MODIFIED,
            [(header::ETAG, header_value(&etag)?)],
        )
            .into_response());
    }

    let file_path = st.mirror.file_path(&info.path);
    let file = tokio::fs::File::open(&file_path).await.map_err(|e| {
        AppError::Internal(format!("opening artifact {}: {e}", file_path.display()))
    })?;
    // Content-Length must describe the bytes we stream, so it comes from the open
    // file; a difference from the index means the file was changed behind our back.
    let len = file
        .metadata()
        .await
        .map_err(|e| AppError::Internal(format!("reading artifact {}: {e}", file_path.display())))?
        .len();
    if len != info.size {
        return Err(AppError::Internal(format!(
            "artifact {} on disk is {len} bytes but the index says {}; import it again with `zlh artifacts add {} <file>`",
            info.path, info.size, info.path
        )));
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, len)
        .header(header::ETAG, header_value(&etag)?)
        .header(CHECKSUM_HEADER, header_value(&info.sha256)?)
        .body(Body::from_stream(ReaderStream::new(file)))
        .map_err(|e| AppError::Internal(format!("building the response: {e}")))
}

fn header_value(s: &str) -> Result<HeaderValue, AppError> {
    HeaderValue::from_str(s).map_err(|e| AppError::Internal(format!("header value {s:?}: {e}")))
}
