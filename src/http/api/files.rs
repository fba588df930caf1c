//! The files of a server, relayed to its agent (DESIGN §7): `zlh serve` speaks to the
//! agent with the server's token, which never reaches the client, and streams bodies
//! both ways (nothing is held whole in memory). The agent confines every path and
//! answers bad ones itself; its 4xx answers reach the client unchanged.

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::Response;
use axum::routing::{get, post};
use futures_util::StreamExt;
use reqwest::Method;
use serde::Deserialize;

use super::{Caller, Path, Query};
use crate::agent::client::AgentClient;
use crate::domain::users::User;
use crate::error::AppError;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/servers/{id}/files", get(list))
        .route(
            "/api/v1/servers/{id}/files/content",
            get(read).put(write).layer(DefaultBodyLimit::disable()),
        )
        .route(
            "/api/v1/servers/{id}/files/upload",
            post(upload).layer(DefaultBodyLimit::disable()),
        )
        .route("/api/v1/servers/{id}/files/download", get(download))
        .route("/api/v1/servers/{id}/files/mkdir", post(mkdir))
        .route("/api/v1/servers/{id}/files/rename", post(rename))
        .route("/api/v1/servers/{id}/files/delete", post(delete))
        .route("/api/v1/servers/{id}/files/extract", post(extract))
}

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    #[serde(default)]
    pub path: String,
}

/// The agent of a server `user` may see (another user's server is "not found").
pub async fn agent_for(st: &AppState, user: &User, id: i64) -> Result<AgentClient, AppError> {
    let user = user.clone();
    let server = st
        .db
        .call(move |c| crate::domain::servers::get_visible(c, &user, id))
        .await?;
    server.agent_client().ok_or_else(|| {
        AppError::conflict(format!("server {id} ({}) has no agent yet", server.name))
    })
}

fn unreachable(e: crate::agent::client::AgentClientError) -> AppError {
    AppError::BadGateway(e.to_string())
}

/// The agent's answer as the client's: status, the headers that describe the body,
/// and the body streamed through.
pub fn relay(resp: reqwest::Response) -> Response {
    let status = resp.status();
    let mut out = Response::builder().status(status.as_u16());
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_LENGTH,
        header::CONTENT_RANGE,
        header::ACCEPT_RANGES,
        header::CONTENT_DISPOSITION,
    ] {
        if let Some(v) = resp.headers().get(name.as_str())
            && let Ok(v) = HeaderValue::from_bytes(v.as_bytes())
        {
            out = out.header(name, v);
        }
    }
    out.body(Body::from_stream(resp.bytes_stream()))
        .unwrap_or_else(|e| {
            axum::response::IntoResponse::into_response(AppError::Internal(format!(
                "relaying the agent's answer: {e}"
            )))
        })
}

async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
) -> Result<Response, AppError> {
    let client = agent_for(&st, &caller.0, id).await?;
    let resp = client
        .files(Method::GET, "", Some(&q.path), HeaderMap::new(), None)
        .await
        .map_err(unreachable)?;
    Ok(relay(resp))
}

async fn read(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
) -> Result<Response, AppError> {
    let client = agent_for(&st, &caller.0, id).await?;
    let mut fwd = HeaderMap::new();
    if let Some(r) = headers.get(header::RANGE) {
        fwd.insert(header::RANGE, r.clone());
    }
    let resp = client
        .files(Method::GET, "/content", Some(&q.path), fwd, None)
        .await
        .map_err(unreachable)?;
    Ok(relay(resp))
}

async fn download(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
) -> Result<Response, AppError> {
    let client = agent_for(&st, &caller.0, id).await?;
    let resp = client
        .files(
            Method::GET,
            "/download",
            Some(&q.path),
            HeaderMap::new(),
            None,
        )
        .await
        .map_err(unreachable)?;
    Ok(relay(resp))
}

/// Streams `body` to the agent's `/files/upload` as the file `path`, cut at `cap`
/// bytes (413, and the agent drops its temp file when the stream breaks).
pub async fn send_file(
    client: &AgentClient,
    path: &str,
    declared: Option<u64>,
    body: impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send + 'static,
    cap: u64,
) -> Result<reqwest::Response, AppError> {
    if declared.is_some_and(|n| n > cap) {
        return Err(too_large(cap));
    }
    let over = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = over.clone();
    let mut total = 0u64;
    let counted = body.map(move |chunk| {
        let chunk = chunk.map_err(std::io::Error::other)?;
        total += chunk.len() as u64;
        if total > cap {
            flag.store(true, std::sync::atomic::Ordering::SeqCst);
            return Err(std::io::Error::other("upload over the size cap"));
        }
        Ok(chunk)
    });
    let mut headers = HeaderMap::new();
    if let Some(n) = declared {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    }
    let sent = client
        .files(
            Method::POST,
            "/upload",
            Some(path),
            headers,
            Some(reqwest::Body::wrap_stream(counted)),
        )
        .await;
    if over.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(too_large(cap));
    }
    sent.map_err(unreachable)
}

fn too_large(cap: u64) -> AppError {
    AppError::TooLarge(usize::try_from(cap).unwrap_or(usize::MAX))
}

fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// `PUT …/files/content?path=`: the body becomes the file, atomically.
async fn write(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, AppError> {
    let client = agent_for(&st, &caller.0, id).await?;
    let stream = body
        .into_data_stream()
        .map(|c| c.map_err(|e| e.to_string()));
    let resp = send_file(
        &client,
        &q.path,
        declared_length(&headers),
        stream,
        st.config.http.max_upload_bytes,
    )
    .await?;
    Ok(relay(resp))
}

/// `POST …/files/upload?path=`: a raw body is the file `path`; a multipart form's
/// file field (`file`) goes into the folder `path` under its own file name.
async fn upload(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
    req: Request,
) -> Result<Response, AppError> {
    let client = agent_for(&st, &caller.0, id).await?;
    let cap = st.config.http.max_upload_bytes;
    let resp = upload_request(&client, &q.path, req, cap).await?;
    Ok(relay(resp))
}

/// An upload request, raw or multipart, streamed to the agent.
pub async fn upload_request(
    client: &AgentClient,
    path: &str,
    req: Request,
    cap: u64,
) -> Result<reqwest::Response, AppError> {
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if !multipart {
        let declared = declared_length(req.headers());
        let stream = req
            .into_body()
            .into_data_stream()
            .map(|c| c.map_err(|e| e.to_string()));
        return send_file(client, path, declared, stream, cap).await;
    }
    let (file_name, stream) = multipart_file(req).await?;
    let target = if path.trim_matches('/').is_empty() {
        file_name
    } else {
        format!("{}/{file_name}", path.trim_end_matches('/'))
    };
    send_file(client, &target, None, stream, cap).await
}

/// The first file field of a multipart form: its file name and its bytes as a stream
/// (read on a task of its own: the multipart reader cannot leave this request's scope
/// otherwise).
pub async fn multipart_file(
    req: Request,
) -> Result<
    (
        String,
        impl futures_util::Stream<Item = Result<bytes::Bytes, String>> + Send + 'static,
    ),
    AppError,
> {
    let mut form = axum::extract::Multipart::from_request(req, &())
        .await
        .map_err(|e| AppError::bad_request("body", e.body_text()))?;
    let (name_tx, name_rx) = tokio::sync::oneshot::channel::<Result<String, AppError>>();
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, String>>(4);
    tokio::spawn(async move {
        let mut name_tx = Some(name_tx);
        loop {
            match form.next_field().await {
                Ok(Some(mut field)) => {
                    let Some(name) = field
                        .file_name()
                        .map(String::from)
                        .filter(|n| !n.is_empty())
                    else {
                        continue;
                    };
                    if let Some(t) = name_tx.take()
                        && t.send(Ok(name)).is_err()
                    {
                        return;
                    }
                    loop {
                        match field.chunk().await {
                            Ok(Some(c)) => {
                                if tx.send(Ok(c)).await.is_err() {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(e) => {
                                if tx.send(Err(e.to_string())).await.is_err() {
                                    tracing::debug!("upload relay gone before a multipart error");
                                }
                                return;
                            }
                        }
                    }
                }
                Ok(None) => {
                    if let Some(t) = name_tx.take()
                        && t.send(Err(AppError::bad_request("file", "the form has no file")))
                            .is_err()
                    {
                        tracing::debug!("upload relay gone");
                    }
                    return;
                }
                Err(e) => {
                    if let Some(t) = name_tx.take()
                        && t.send(Err(AppError::bad_request("body", e.body_text())))
                            .is_err()
                    {
                        tracing::debug!("upload relay gone");
                    }
                    return;
                }
            }
        }
    });
    let name = name_rx
        .await
        .map_err(|_| AppError::bad_request("file", "the form has no file"))??;
    Ok((
        name,
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
    ))
}

/// `POST …/files/{mkdir|rename|delete|extract}`: one route each (the document and the
/// router name the same four), one relay of the agent's JSON body.
async fn operation(
    st: AppState,
    caller: Caller,
    id: i64,
    op: &'static str,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    let client = agent_for(&st, &caller.0, id).await?;
    tracing::info!(server = id, user = %caller.0.username, op = %op, "file operation");
    let resp = file_op(&client, op, body).await?;
    Ok(relay(resp))
}

async fn mkdir(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    operation(st, caller, id, "mkdir", body).await
}

async fn rename(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    operation(st, caller, id, "rename", body).await
}

async fn delete(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    operation(st, caller, id, "delete", body).await
}

async fn extract(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    body: axum::body::Bytes,
) -> Result<Response, AppError> {
    operation(st, caller, id, "extract", body).await
}

pub async fn file_op(
    client: &AgentClient,
    op: &str,
    body: bytes::Bytes,
) -> Result<reqwest::Response, AppError> {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    client
        .files(
            Method::POST,
            &format!("/{op}"),
            None,
            headers,
            Some(reqwest::Body::from(body)),
        )
        .await
        .map_err(unreachable)
}
