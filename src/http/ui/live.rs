//! Live updates without reloads: server-sent events for status and timeline (read
//! from the database, where every change lands), and the agent's console stream
//! relayed through `zlh serve` over a WebSocket.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;

use super::servers::{EdgeRow, EventRow, JobRow, ServerView, server_events, view};
use super::{Sess, UiError};
use crate::domain::servers;
use crate::domain::users::User;
use crate::domain::{DomainError, edge};
use crate::http::AppState;
use crate::queue;
use crate::util::untrusted;

/// How often a live page looks for changes. Changes are written by jobs in this
/// process and by CLI commands in others; the database is where they all meet.
const LIVE_EVERY: Duration = Duration::from_millis(500);

#[derive(Template)]
#[template(path = "partials/server_live.html")]
struct ServerLive<'a> {
    s: &'a ServerView,
    jobs: &'a [JobRow],
    edge: &'a [EdgeRow],
    actions: Vec<(&'static str, &'static str)>,
    csrf: &'a str,
}

#[derive(Template)]
#[template(path = "partials/events.html")]
struct EventsPartial<'a> {
    events: &'a [EventRow],
}

#[derive(Debug, Deserialize)]
pub struct AfterQuery {
    /// The last timeline event the page has.
    #[serde(default)]
    after: i64,
    /// The key of the live panel the page has (see [`Snapshot::key`]).
    #[serde(default)]
    key: String,
}

/// What one look at a server found: its view, the live panel and its key.
pub struct Snapshot {
    pub view: ServerView,
    pub html: String,
    /// Changes with anything the panel or the status line shows.
    pub key: String,
}

/// The server as its page shows it, now.
pub fn snapshot(
    c: &rusqlite::Connection,
    user: &User,
    id: i64,
    csrf: &str,
) -> Result<Snapshot, UiError> {
    let s = servers::get_visible(c, user, id)?;
    let v = view(c, &s)?;
    let jobs: Vec<JobRow> = queue::list(
        c,
        &queue::JobFilter {
            lane: Some(format!("server:{id}")),
            limit: 20,
            ..Default::default()
        },
    )?
    .iter()
    .map(JobRow::from_job)
    .collect();
    let edge: Vec<EdgeRow> = edge::for_server(c, id)?
        .into_iter()
        .filter(|e| e.state != "removed")
        .map(|e| EdgeRow {
            target: e.target,
            name: e.name,
            state: e.state,
            last_error: e.last_error.unwrap_or_default(),
        })
        .collect();
    let actions = if v.deleted {
        vec![]
    } else {
        super::servers::allowed_actions(s.status)
    };
    let html = ServerLive {
        s: &v,
        jobs: &jobs,
        edge: &edge,
        actions,
        csrf,
    }
    .render()?;
    let key = crate::domain::sha256_hex(&format!("{}|{}|{html}", v.row.status, v.row.reason));
    Ok(Snapshot { view: v, html, key })
}

/// Waits until the next look; false when the server is shutting down (the stream
/// ends, and the browser's EventSource reconnects to the next `zlh serve`).
async fn pause(st: &AppState) -> bool {
    tokio::select! {
        _ = st.shutdown.cancelled() => false,
        _ = tokio::time::sleep(LIVE_EVERY) => true,
    }
}

/// What one look at the database found.
enum Look {
    /// Changes to send.
    Send(Vec<Event>),
    /// Nothing new.
    Quiet,
    /// The stream ends (after a last event, if any).
    End(Option<Event>),
}

/// A live stream: `look` runs at once, then every [`LIVE_EVERY`], until it ends the
/// stream or `zlh serve` shuts down. `state` is what the looks carry from one to the
/// next (e.g. the last event sent).
fn live_stream<S, F, Fut>(
    st: AppState,
    state: S,
    look: F,
) -> impl Stream<Item = Result<Event, Infallible>>
where
    S: Send + 'static,
    F: FnMut(AppState, S) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = (Look, S)> + Send + 'static,
{
    let init = (st, state, look, true, false);
    futures_util::stream::unfold(init, |(st, mut s, mut look, first, ended)| async move {
        if ended || (!first && !pause(&st).await) {
            return None;
        }
        loop {
            let (found, next) = look(st.clone(), s).await;
            s = next;
            match found {
                Look::Send(events) => return Some((events, (st, s, look, false, false))),
                Look::End(last) => return last.map(|e| (vec![e], (st, s, look, false, true))),
                Look::Quiet => {
                    if !pause(&st).await {
                        return None;
                    }
                }
            }
        }
    })
    .flat_map(|events| futures_util::stream::iter(events.into_iter().map(Ok)))
}

/// `GET /servers/{id}/live?after=<event id>`: `status` events (the badge, reason and the
/// server-rendered facts, actions, jobs and edge panel) when anything changes, and
/// `events` with the timeline rows after `after`.
pub async fn server_live(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    Query(q): Query<AfterQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    let user = sess.user().clone();
    // Not visible → 404 now, not an empty stream.
    {
        let user = user.clone();
        st.db
            .call(move |c| servers::get_visible(c, &user, id))
            .await?;
    }
    let csrf = sess.0.csrf.clone();
    let slot = super::stream_slot(&st, &sess)?;
    let ended = super::session_ended(st.clone(), sess.0.id);
    // Carried from look to look: the last timeline event and panel key sent.
    let state = (q.after, q.key);
    let stream = live_stream(st, state, move |st, (after, last_key)| {
        // Held as long as the stream lives.
        let _slot = &slot;
        let (user, csrf) = (user.clone(), csrf.clone());
        async move {
            let found = st
                .db
                .call(move |c| {
                    let snap = snapshot(c, &user, id, &csrf)?;
                    Ok::<_, UiError>((snap, server_events(c, id, after, 200)?))
                })
                .await;
            let (snap, events) = match found {
                Ok(s) => s,
                Err(e) => {
                    // Said once, then the stream ends (the page reconnects).
                    tracing::warn!(server = id, error = ?untrusted(&e.to_string()), "live page of a server");
                    let ev = Event::default().event("error").data(e.public_message());
                    return (Look::End(Some(ev)), (after, last_key));
                }
            };
            let mut out = vec![];
            let mut after = after;
            if let Some(last) = events.last() {
                after = last.id;
                match (EventsPartial { events: &events }).render() {
                    Ok(html) => out.push(
                        Event::default()
                            .event("events")
                            .id(after.to_string())
                            .data(html),
                    ),
                    Err(e) => tracing::error!(error = %e, "rendering timeline rows"),
                }
            }
            if snap.key != last_key {
                let status = json!({
                    "status": snap.view.row.status,
                    "reason": snap.view.row.reason,
                    "html": snap.html,
                });
                out.push(Event::default().event("status").data(status.to_string()));
            }
            let look = if out.is_empty() {
                Look::Quiet
            } else {
                Look::Send(out)
            };
            (look, (after, snap.key))
        }
    });
    Ok(Sse::new(stream.take_until(ended)).keep_alive(KeepAlive::default()))
}

#[derive(Debug, Deserialize)]
pub struct IdsQuery {
    #[serde(default)]
    ids: String,
}

/// `GET /servers/live?ids=1,2,3`: `statuses` events with `{id: {status, reason}}` for
/// the listed servers, and `counts` (servers by status, for the dashboard), whenever
/// they change.
pub async fn servers_live(
    State(st): State<AppState>,
    sess: Sess,
    Query(q): Query<IdsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    let ids: Vec<i64> = q
        .ids
        .split(',')
        .filter(|s| !s.is_empty())
        .take(500)
        .map(|s| {
            s.trim()
                .parse()
                .map_err(|_| UiError::BadRequest(format!("ids: '{s}' is not a server id")))
        })
        .collect::<Result<_, _>>()?;
    let user = sess.user().clone();
    let slot = super::stream_slot(&st, &sess)?;
    let ended = super::session_ended(st.clone(), sess.0.id);
    // Carried from look to look: the last data sent.
    let stream = live_stream(st, String::new(), move |st, last| {
        // Held as long as the stream lives.
        let _slot = &slot;
        let (user, ids) = (user.clone(), ids.clone());
        async move {
            match st.db.call(move |c| statuses(c, &user, &ids)).await {
                Ok(d) => {
                    let data = d.to_string();
                    if data == last {
                        (Look::Quiet, last)
                    } else {
                        let ev = Event::default().event("statuses").data(data.clone());
                        (Look::Send(vec![ev]), data)
                    }
                }
                Err(e) => {
                    tracing::warn!(error = ?untrusted(&e.to_string()), "live server list");
                    (Look::End(None), last)
                }
            }
        }
    });
    Ok(Sse::new(stream.take_until(ended)).keep_alive(KeepAlive::default()))
}

fn statuses(
    c: &rusqlite::Connection,
    user: &User,
    ids: &[i64],
) -> Result<serde_json::Value, DomainError> {
    let mut servers = serde_json::Map::new();
    for (id, status, reason) in servers::statuses_visible(c, user, ids)? {
        servers.insert(id.to_string(), json!({"status": status, "reason": reason}));
    }
    let counts: serde_json::Map<String, serde_json::Value> = servers::count_by_status(c, user)?
        .into_iter()
        .map(|(s, n)| (s.as_str().to_string(), json!(n)))
        .collect();
    Ok(json!({"servers": servers, "counts": counts}))
}

/// `GET /servers/{id}/console/stream` (WebSocket): the agent's recent console lines,
/// then live ones. `zlh serve` connects to the agent with the server's token, which
/// never reaches the browser.
pub async fn console_stream(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    headers: axum::http::HeaderMap,
    ws: WebSocketUpgrade,
) -> Result<Response, UiError> {
    super::check_ws_origin(&st, &headers)?;
    let user = sess.user().clone();
    let server = st
        .db
        .call(move |c| servers::get_visible(c, &user, id))
        .await?;
    let client = server.agent_client();
    let label = server.name.clone();
    let slot = super::stream_slot(&st, &sess)?;
    Ok(ws
        .on_upgrade(move |socket| async move {
            let _slot = slot;
            match client {
                Some(client) => {
                    let ended = super::session_ended(st.clone(), sess.0.id);
                    // Colours stay: the page renders them as spans.
                    crate::http::console::relay(
                        socket,
                        client,
                        label,
                        crate::http::console::Escapes::KeepColours,
                        st.shutdown.clone(),
                        ended,
                    )
                    .await
                }
                None => crate::http::console::no_agent(socket, &label).await,
            }
        })
        .into_response())
}
