//! The Files tab of a server: breadcrumbs, a listing, upload (a plain multipart form;
//! drag and drop in `static/app.js`), download, a textarea editor for small text files,
//! rename, new folder and delete with a confirmation step. Everything goes through the
//! agent's file API with the server's token (it never reaches the browser), and works
//! without JavaScript.

use askama::Template;
use axum::extract::{Path, Query, Request, State};
use axum::response::Response;
use reqwest::Method;
use serde::Deserialize;

use super::{Page, Sess, UiError, UiForm, render, see_other};
use crate::agent::client::AgentClient;
use crate::agent::{FileKind, FileList};
use crate::domain::servers;
use crate::http::AppState;
use crate::http::api::files as relay;

/// Largest file the editor opens (bigger ones are download-only).
pub const EDIT_LIMIT: u64 = 256 * 1024;
/// The editor's form: the text percent-encoded (up to 3 bytes per byte) plus the rest.
pub const EDIT_FORM_LIMIT: usize = 3 * EDIT_LIMIT as usize + 16 * 1024;

#[derive(Debug, Deserialize)]
pub struct PathQuery {
    #[serde(default)]
    path: String,
    /// `delete=NAME`: show the confirmation step for that entry of the folder.
    #[serde(default)]
    delete: Option<String>,
}

struct Crumb {
    name: String,
    path: String,
}

struct Row {
    name: String,
    path: String,
    is_dir: bool,
    kind: &'static str,
    size: String,
    mtime: String,
    editable: bool,
    archive: bool,
}

#[derive(Template)]
#[template(path = "server_files.html")]
struct FilesPage {
    page: Page,
    head: super::worlds::ServerHead,
    path: String,
    crumbs: Vec<Crumb>,
    rows: Vec<Row>,
    confirm_delete: Option<Row>,
    upload_action: String,
}

#[derive(Template)]
#[template(path = "server_file_edit.html")]
struct EditPage {
    page: Page,
    head: super::worlds::ServerHead,
    path: String,
    parent: String,
    text: String,
}

async fn server_and_agent(
    st: &AppState,
    sess: &Sess,
    id: i64,
) -> Result<(servers::Server, AgentClient), UiError> {
    let user = sess.user().clone();
    let server = st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?;
    let client = server
        .agent_client()
        .ok_or_else(|| UiError::Conflict(format!("server {} has no agent yet", server.name)))?;
    Ok((server, client))
}

/// The agent's refusal as the UI's error (its message names what was wrong).
async fn refused(resp: reqwest::Response) -> UiError {
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(String::from))
        .unwrap_or(text);
    match status {
        400 | 413 | 422 => UiError::BadRequest(message),
        403 => UiError::Forbidden(message),
        404 => UiError::NotFound(message),
        409 => UiError::Conflict(message),
        _ => UiError::Internal(message),
    }
}

async fn ok_or_refused(resp: reqwest::Response) -> Result<reqwest::Response, UiError> {
    if resp.status().is_success() {
        Ok(resp)
    } else {
        Err(refused(resp).await)
    }
}

fn gateway(e: crate::agent::client::AgentClientError) -> UiError {
    UiError::Internal(e.to_string())
}

fn parent_of(path: &str) -> String {
    path.trim_end_matches('/')
        .rsplit_once('/')
        .map(|(p, _)| p.to_string())
        .unwrap_or_default()
}

fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// `world.zip` → `world`, `pack.tar.gz` → `pack`.
fn archive_stem(name: &str) -> &str {
    let lower = name.to_ascii_lowercase();
    for ext in [".tar.gz", ".tgz", ".zip"] {
        if lower.ends_with(ext) && name.len() > ext.len() {
            return &name[..name.len() - ext.len()];
        }
    }
    name
}

fn is_archive(name: &str) -> bool {
    archive_stem(name) != name
}

fn human(n: u64) -> String {
    match n {
        0..1024 => format!("{n} B"),
        1024..1_048_576 => format!("{:.1} KiB", n as f64 / 1024.0),
        1_048_576..1_073_741_824 => format!("{:.1} MiB", n as f64 / 1_048_576.0),
        _ => format!("{:.2} GiB", n as f64 / 1_073_741_824.0),
    }
}

fn files_url(id: i64, path: &str) -> String {
    format!(
        "/servers/{id}/files?path={}",
        crate::util::percent_encode(path, b"")
    )
}

/// `GET /servers/{id}/files?path=`: the listing of one folder.
pub async fn tab(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
) -> Result<Response, UiError> {
    let (server, client) = server_and_agent(&st, &sess, id).await?;
    let resp = client
        .files(Method::GET, "", Some(&q.path), Default::default(), None)
        .await
        .map_err(gateway)?;
    let list: FileList = ok_or_refused(resp)
        .await?
        .json()
        .await
        .map_err(|e| UiError::Internal(format!("reading the agent's listing: {e}")))?;
    let mut crumbs = vec![Crumb {
        name: "server".into(),
        path: String::new(),
    }];
    let mut acc = String::new();
    for part in list.path.split('/').filter(|p| !p.is_empty()) {
        acc = join(&acc, part);
        crumbs.push(Crumb {
            name: part.to_string(),
            path: acc.clone(),
        });
    }
    let rows: Vec<Row> = list
        .entries
        .iter()
        .map(|e| Row {
            name: e.name.clone(),
            path: join(&list.path, &e.name),
            is_dir: e.kind == FileKind::Dir,
            kind: match e.kind {
                FileKind::File => "file",
                FileKind::Dir => "folder",
                FileKind::Symlink => "link",
                FileKind::Special => "special",
            },
            size: if e.kind == FileKind::File {
                human(e.size)
            } else {
                String::new()
            },
            mtime: e.mtime.clone(),
            editable: e.kind == FileKind::File && e.size <= EDIT_LIMIT,
            archive: e.kind == FileKind::File && is_archive(&e.name),
        })
        .collect();
    let confirm_delete = q.delete.as_ref().and_then(|name| {
        rows.iter().find(|r| &r.name == name).map(|r| Row {
            name: r.name.clone(),
            path: r.path.clone(),
            is_dir: r.is_dir,
            kind: r.kind,
            size: r.size.clone(),
            mtime: r.mtime.clone(),
            editable: false,
            archive: false,
        })
    });
    let page = sess
        .page(&st, "servers", &format!("{} · files", server.name))
        .await?;
    let upload_action = format!(
        "/servers/{id}/files/upload?path={}&csrf={}",
        crate::util::percent_encode(&list.path, b""),
        crate::util::percent_encode(&page.csrf, b"")
    );
    render(&FilesPage {
        page,
        head: super::worlds::ServerHead::from(&server),
        path: list.path,
        crumbs,
        rows,
        confirm_delete,
        upload_action,
    })
}

/// `GET /servers/{id}/files/edit?path=`: a text file in a textarea (binary or large
/// files are download-only).
pub async fn edit_form(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
) -> Result<Response, UiError> {
    let (server, client) = server_and_agent(&st, &sess, id).await?;
    let mut headers = reqwest::header::HeaderMap::new();
    // One byte past the limit tells a too-large file from one exactly at it.
    if let Ok(v) = format!("bytes=0-{EDIT_LIMIT}").parse() {
        headers.insert(reqwest::header::RANGE, v);
    }
    let resp = client
        .files(Method::GET, "/content", Some(&q.path), headers, None)
        .await
        .map_err(gateway)?;
    let resp = ok_or_refused(resp).await?;
    let bytes = resp
        .bytes()
        .await
        .map_err(|e| UiError::Internal(format!("reading {}: {e}", q.path)))?;
    if bytes.len() as u64 > EDIT_LIMIT {
        return Err(UiError::BadRequest(format!(
            "{} is larger than {} KiB: download it instead",
            q.path,
            EDIT_LIMIT / 1024
        )));
    }
    let text = match String::from_utf8(bytes.to_vec()) {
        Ok(t) if !t.contains('\0') => t,
        _ => {
            return Err(UiError::BadRequest(format!(
                "{} is not a text file: download it instead",
                q.path
            )));
        }
    };
    let page = sess
        .page(&st, "servers", &format!("{} · {}", server.name, q.path))
        .await?;
    render(&EditPage {
        page,
        head: super::worlds::ServerHead::from(&server),
        parent: parent_of(&q.path),
        path: q.path,
        text,
    })
}

#[derive(Debug, Deserialize)]
pub struct SaveForm {
    path: String,
    content: String,
}

/// `POST /servers/{id}/files/edit`: the textarea's text replaces the file, atomically.
pub async fn save(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<SaveForm>,
) -> Result<Response, UiError> {
    let (_, client) = server_and_agent(&st, &sess, id).await?;
    // Browsers send a textarea's line breaks as CRLF; files keep the Unix ones.
    let text = f.content.replace("\r\n", "\n");
    let stream = futures_util::stream::once(async move { Ok(bytes::Bytes::from(text)) });
    let resp = relay::send_file(&client, &f.path, None, stream, EDIT_LIMIT)
        .await
        .map_err(UiError::from)?;
    ok_or_refused(resp).await?;
    tracing::info!(server = id, user = %sess.user().username, "file edited in the UI");
    Ok(see_other(&files_url(id, &parent_of(&f.path))))
}

/// `GET /servers/{id}/files/download?path=`: a file, or a folder as tar.gz, streamed.
pub async fn download(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
) -> Result<Response, UiError> {
    let (_, client) = server_and_agent(&st, &sess, id).await?;
    let resp = client
        .files(
            Method::GET,
            "/download",
            Some(&q.path),
            Default::default(),
            None,
        )
        .await
        .map_err(gateway)?;
    Ok(relay::relay(ok_or_refused(resp).await?))
}

/// `POST /servers/{id}/files/upload?path=&csrf=` (multipart): the file goes into the
/// folder `path` (the CSRF token rides in the query: the body is streamed, not read
/// into memory to find it).
pub async fn upload(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    Query(q): Query<PathQuery>,
    req: Request,
) -> Result<Response, UiError> {
    let (_, client) = server_and_agent(&st, &sess, id).await?;
    let cap = st.config.http.max_upload_bytes;
    let resp = relay::upload_request(&client, &q.path, req, cap)
        .await
        .map_err(UiError::from)?;
    ok_or_refused(resp).await?;
    tracing::info!(server = id, user = %sess.user().username, "file uploaded in the UI");
    Ok(see_other(&files_url(id, &q.path)))
}

#[derive(Debug, Deserialize)]
pub struct OpForm {
    /// The folder the form was shown in (where to go back to).
    #[serde(default)]
    dir: String,
    /// mkdir: the new folder's name; rename: the new name; delete: the entry's name.
    #[serde(default)]
    name: String,
    /// rename: the entry's current name.
    #[serde(default)]
    from: String,
}

/// `POST /servers/{id}/files/{mkdir|rename|delete}` from the tab's forms.
pub async fn operation(
    State(st): State<AppState>,
    sess: Sess,
    Path((id, op)): Path<(i64, String)>,
    UiForm(f): UiForm<OpForm>,
) -> Result<Response, UiError> {
    if f.name.contains('/') {
        return Err(UiError::BadRequest(
            "name: one name, without '/' (open the folder first)".into(),
        ));
    }
    let body = match op.as_str() {
        "mkdir" => serde_json::json!({"path": join(&f.dir, &f.name)}),
        "rename" => serde_json::json!({"from": join(&f.dir, &f.from), "to": join(&f.dir, &f.name)}),
        "delete" => serde_json::json!({"path": join(&f.dir, &f.name), "recursive": true}),
        // Into a folder named after the archive, beside it.
        "extract" => {
            serde_json::json!({"path": join(&f.dir, &f.name), "to": join(&f.dir, archive_stem(&f.name))})
        }
        _ => return Err(UiError::NotFound(format!("no file operation '{op}'"))),
    };
    let (_, client) = server_and_agent(&st, &sess, id).await?;
    let resp = relay::file_op(&client, &op, bytes::Bytes::from(body.to_string()))
        .await
        .map_err(UiError::from)?;
    ok_or_refused(resp).await?;
    tracing::info!(server = id, user = %sess.user().username, op = %op, "file operation in the UI");
    Ok(see_other(&files_url(id, &f.dir)))
}
