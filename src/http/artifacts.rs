//! `GET /artifacts/{*path}`: the mirror over HTTP, for agents (`ARTIFACT_SERVER`).
//!
//! Anyone who reaches the route may read what the mirror holds (agents fetch by IP
//! from inside the private network; DESIGN §7). A miss that would start an upstream
//! fill — traffic, and disk for good — needs a credential zlh issued (an agent
//! token, a node's bootstrap token, an API token or a UI session); anonymous callers
//! get 401 without any upstream being asked.

use axum::Router;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio_util::io::ReaderStream;

use crate::error::AppError;
use crate::http::AppState;

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
    let info = match st.mirror.lookup(&path).await? {
        Some(info) => info,
        None => {
            if st.mirror.fillable(&path) && !may_fill(&st, &headers).await? {
                st.mirror
                    .stats()
                    .fills_refused
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Ok(fill_needs_credential(&path));
            }
            st.mirror.ensure(&path).await?
        }
    };
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

/// Whether the request carries a credential that may start an upstream fill.
async fn may_fill(st: &AppState, headers: &HeaderMap) -> Result<bool, AppError> {
    let presented = crate::domain::credentials::Presented {
        bearer: headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string()),
        session: headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|c| c.trim().strip_prefix("zlh_session="))
            .map(str::to_string),
    };
    st.db
        .call(move |c| {
            crate::domain::credentials::may_fill(c, &presented)
                .map_err(|e| AppError::Internal(e.to_string()))
        })
        .await
}

/// 401 for an anonymous miss: says what would work, names no upstream.
fn fill_needs_credential(path: &str) -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        axum::Json(serde_json::json!({"error": {
            "code": "unauthorized",
            "message": format!(
                "artifact {path} is not in the mirror; fetching it from upstream needs a credential \
                 (Authorization: Bearer <agent token, node bootstrap token or API token>, or a UI session)"
            ),
        }})),
    )
        .into_response()
}
