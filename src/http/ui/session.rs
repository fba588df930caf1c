//! Sessions of the admin UI: the cookies, the signed-in user of a request, the
//! middleware that requires a session and checks CSRF tokens, login rate limits and
//! the password-hashing gate, and what long-lived streams need (a slot under the
//! per-session and per-user caps, the end of their session, the WebSocket `Origin`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::{FORM_LIMIT, Page, UiError, asset_url};
use crate::agent::constant_time_eq;
use crate::domain::sessions::{self, Session};
use crate::domain::users::{self, User};
use crate::http::AppState;

/// Session cookie name.
pub const SESSION_COOKIE: &str = "zlh_session";
/// Cookie of the login and setup forms' CSRF token (there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "zlh_login_csrf";

/// UI state kept in memory: login attempt counters (rate limiting) and the gate of
/// password hashing.
pub struct UiState {
    attempts: Mutex<HashMap<String, Attempts>>,
    /// argon2 is slow on purpose: a few at a time, on blocking threads and outside the
    /// database pool, so a flood of sign-ins cannot starve the API.
    hashing: tokio::sync::Semaphore,
    /// Sign-ins waiting for `hashing`: past [`MAX_HASH_WAITING`] more are refused.
    waiting: AtomicUsize,
    streams: StreamSlots,
}

impl Default for UiState {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        UiState {
            attempts: Mutex::default(),
            hashing: tokio::sync::Semaphore::new((cores / 2).max(1)),
            waiting: AtomicUsize::new(0),
            streams: StreamSlots::default(),
        }
    }
}

/// Long-lived streams (live pages, consoles) open per key (`session:<id>`,
/// `user:<id>`), so one client cannot hold any number of them.
#[derive(Default)]
pub struct StreamSlots {
    open: Mutex<HashMap<String, u32>>,
}

/// One open stream; its slots are given back when it is dropped (the stream ended).
pub struct StreamSlot {
    slots: Arc<UiState>,
    keys: Vec<String>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        if let Ok(mut open) = self.slots.streams.open.lock() {
            for k in &self.keys {
                if let Some(n) = open.get_mut(k) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        open.remove(k);
                    }
                }
            }
        }
    }
}

impl UiState {
    /// Takes a stream slot under every (key, limit), or refuses (429) when one is full.
    pub fn open_stream(self: &Arc<Self>, keys: &[(String, u32)]) -> Result<StreamSlot, UiError> {
        let mut open = self
            .streams
            .open
            .lock()
            .map_err(|_| UiError::Internal("the stream counters are poisoned".into()))?;
        if let Some((key, limit)) = keys
            .iter()
            .find(|(k, limit)| open.get(k).is_some_and(|n| n >= limit))
        {
            let whose = key.split(':').next().unwrap_or("client");
            return Err(UiError::Busy(format!(
                "too many live pages and consoles open for this {whose} (at most {limit}): close some"
            )));
        }
        for (k, _) in keys {
            *open.entry(k.clone()).or_insert(0) += 1;
        }
        Ok(StreamSlot {
            slots: self.clone(),
            keys: keys.iter().map(|(k, _)| k.clone()).collect(),
        })
    }
}

/// A stream slot for a UI session: counted for the session and for its user.
pub fn stream_slot(st: &AppState, sess: &Sess) -> Result<StreamSlot, UiError> {
    let h = &st.config.http;
    st.ui.open_stream(&[
        (format!("session:{}", sess.0.id), h.max_streams_per_session),
        (format!("user:{}", sess.0.user.id), h.max_streams_per_user),
    ])
}

/// Sign-ins that may wait for a password check at once.
const MAX_HASH_WAITING: usize = 256;

struct Attempts {
    failures: u32,
    since: Instant,
}

/// Failed logins allowed per client address and per user name in one window.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

impl UiState {
    /// Starts an attempt: `Err(seconds to wait)` when any of `keys` is over its
    /// failure budget; otherwise the attempt is counted as a failure at once, in the
    /// same critical section, so concurrent attempts cannot all pass the check before
    /// any is recorded. A success [`clear`](Self::clear)s it; an attempt that turned
    /// out not to be a guess is [`refund`](Self::refund)ed.
    pub(super) fn begin_attempt(&self, keys: &[String]) -> Result<(), u64> {
        // A poisoned lock refuses: failing closed is the safe side of a lockout.
        let Ok(mut map) = self.attempts.lock() else {
            return Err(FAILURE_WINDOW.as_secs());
        };
        // Old windows are forgotten, so the map cannot grow without bound.
        map.retain(|_, a| a.since.elapsed() < FAILURE_WINDOW);
        let wait = keys
            .iter()
            .filter_map(|k| map.get(k))
            .filter(|a| a.failures >= MAX_FAILURES)
            .map(|a| (FAILURE_WINDOW.saturating_sub(a.since.elapsed())).as_secs() + 1)
            .max();
        if let Some(wait) = wait {
            return Err(wait);
        }
        for k in keys {
            map.entry(k.clone())
                .or_insert(Attempts {
                    failures: 0,
                    since: Instant::now(),
                })
                .failures += 1;
        }
        Ok(())
    }

    /// Takes back an attempt counted by [`begin_attempt`](Self::begin_attempt).
    pub(super) fn refund(&self, keys: &[String]) {
        if let Ok(mut map) = self.attempts.lock() {
            for k in keys {
                if let Some(a) = map.get_mut(k) {
                    a.failures = a.failures.saturating_sub(1);
                }
            }
        }
    }

    /// Runs argon2 (`work`) on a blocking thread, at most a few at a time.
    pub(super) async fn hash<R: Send + 'static>(
        &self,
        work: impl FnOnce() -> R + Send + 'static,
    ) -> Result<R, UiError> {
        struct Waiting<'a>(&'a AtomicUsize);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let waiting = Waiting(&self.waiting);
        if self.waiting.fetch_add(1, Ordering::SeqCst) >= MAX_HASH_WAITING {
            return Err(UiError::Busy(
                "too many sign-ins at once: try again in a moment".into(),
            ));
        }
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| UiError::Internal(format!("the password-check gate: {e}")))?;
        drop(waiting);
        tokio::task::spawn_blocking(work)
            .await
            .map_err(|e| UiError::Internal(format!("checking a password: {e}")))
    }

    pub(super) fn clear(&self, keys: &[String]) {
        if let Ok(mut map) = self.attempts.lock() {
            for k in keys {
                map.remove(k);
            }
        }
    }
}

/// The signed-in user of a request (put there by [`require_session`]).
#[derive(Clone)]
pub struct Sess(pub Session);

impl<S: Send + Sync> FromRequestParts<S> for Sess {
    type Rejection = UiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .map(Sess)
            .ok_or_else(|| UiError::Forbidden("no session".into()))
    }
}

impl Sess {
    pub fn user(&self) -> &User {
        &self.0.user
    }

    pub fn require_admin(&self) -> Result<(), UiError> {
        if self.0.user.is_admin {
            Ok(())
        } else {
            Err(UiError::Forbidden(
                "this page needs an admin account".into(),
            ))
        }
    }

    /// The layout of a page in this session, with the held-jobs banner.
    pub async fn page(
        &self,
        st: &AppState,
        nav: &'static str,
        title: &str,
    ) -> Result<Page, UiError> {
        let held = st.db.call(|c| crate::queue::held_summary(c)).await?;
        Ok(Page {
            title: title.into(),
            nav,
            user: Some(self.0.user.clone()),
            csrf: self.0.csrf.clone(),
            held,
            css: asset_url("app.css"),
            js: asset_url("app.js"),
        })
    }
}

/// How often a long-lived stream (live page, console) checks that its session lives.
const SESSION_RECHECK: Duration = Duration::from_secs(2);

/// Resolves once session `id` has ended (logout, a new password, expiry): a stream
/// selects on it and ends too. A failed check counts as ended (the page reconnects
/// and signs in again), never as a pass.
pub async fn session_ended(st: AppState, id: i64) {
    loop {
        tokio::time::sleep(SESSION_RECHECK).await;
        match st.db.call(move |c| sessions::is_live(c, id)).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => {
                tracing::warn!(error = %e, "checking the session of a stream");
                return;
            }
        }
    }
}

/// Refuses a WebSocket upgrade from another site's page (403): a browser sends the
/// page's `Origin`, which must be this site as the request names it (`Host`) or the
/// configured `advertise_url`. Clients that are not browsers send no `Origin`.
pub fn check_ws_origin(st: &AppState, headers: &HeaderMap) -> Result<(), UiError> {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin
        .to_str()
        .ok()
        .and_then(|o| reqwest::Url::parse(o).ok());
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let allowed = origin.is_some_and(|o| {
        let same_host = o.host_str().is_some_and(|h| {
            let authority = match o.port() {
                Some(p) => format!("{h}:{p}"),
                None => h.to_string(),
            };
            host.is_some_and(|host| host.eq_ignore_ascii_case(&authority))
        });
        let advertised =
            reqwest::Url::parse(&st.config.advertised()).is_ok_and(|a| a.origin() == o.origin());
        same_host || advertised
    });
    if allowed {
        Ok(())
    } else {
        Err(UiError::Forbidden(
            "WebSocket from another site's page: the Origin is not this site".into(),
        ))
    }
}

/// A cookie's value from the request headers.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// True when the request reached us over HTTPS (directly or through a proxy that says
/// so): cookies then get `Secure`.
fn is_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

/// A `Set-Cookie` value: `HttpOnly`, `SameSite=Strict`, `Secure` behind HTTPS.
pub fn set_cookie(headers: &HeaderMap, name: &str, value: &str, max_age_secs: i64) -> HeaderValue {
    let secure = if is_https(headers) { "; Secure" } else { "" };
    let v = format!(
        "{name}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age_secs}{secure}"
    );
    HeaderValue::from_str(&v).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// Redirects to the login page, remembering where the user wanted to go (GET only).
fn to_login(method: &Method, path_and_query: &str) -> Response {
    if method == Method::GET && path_and_query != "/" {
        let next = super::servers::url_encode(path_and_query);
        Redirect::to(&format!("/login?next={next}")).into_response()
    } else {
        Redirect::to("/login").into_response()
    }
}

/// The live session the request's cookie names, if any.
pub async fn session_of(st: &AppState, headers: &HeaderMap) -> Result<Option<Session>, UiError> {
    let Some(secret) = cookie(headers, SESSION_COOKIE).map(str::to_string) else {
        return Ok(None);
    };
    let Some((session, touch)) = st.db.call(move |c| sessions::lookup(c, &secret)).await? else {
        return Ok(None);
    };
    if touch {
        let id = session.id;
        st.db.write(move |tx| sessions::touch(tx, id)).await?;
    }
    Ok(Some(session))
}

/// Every route behind it needs a live session; every request other than GET/HEAD must
/// carry the session's CSRF token (form field `csrf` or header `X-CSRF-Token`).
pub(super) async fn require_session(
    State(st): State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, UiError> {
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into());
    let Some(session) = session_of(&st, req.headers()).await? else {
        // First run: nobody can sign in yet, so the login page would be a dead end.
        if *req.method() == Method::GET && st.db.call(|c| users::setup_needed(c)).await? {
            return Ok(Redirect::to("/setup").into_response());
        }
        return Ok(to_login(req.method(), &path));
    };
    let mut req = if matches!(*req.method(), Method::GET | Method::HEAD) {
        req
    } else {
        check_csrf(req, &session.csrf).await?
    };
    req.extensions_mut().insert(session);
    Ok(next.run(req).await)
}

/// Verifies the CSRF token of a state-changing request; hands the request on with its
/// body intact.
async fn check_csrf(req: Request, expected: &str) -> Result<Request, UiError> {
    let refused =
        || UiError::Forbidden("missing or wrong CSRF token: reload the page and try again".into());
    if let Some(h) = req
        .headers()
        .get("x-csrf-token")
        .and_then(|v| v.to_str().ok())
    {
        return if constant_time_eq(h.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err(refused())
        };
    }
    // A file upload streams its body: its token rides in the query string instead.
    let multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("multipart/form-data"));
    if multipart {
        let sent = req
            .uri()
            .query()
            .and_then(|q| form_field(q.as_bytes(), "csrf"))
            .unwrap_or_default();
        return if constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
            Ok(req)
        } else {
            Err(refused())
        };
    }
    // The file editor's form carries a whole text file.
    let limit = if req.uri().path().ends_with("/files/edit") {
        super::files::EDIT_FORM_LIMIT
    } else {
        FORM_LIMIT
    };
    // Refused before reading a byte when the sender says how large it is.
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > limit) {
        return Err(UiError::TooLarge);
    }
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| UiError::TooLarge)?;
    let sent = form_field(&bytes, "csrf").unwrap_or_default();
    if !constant_time_eq(sent.as_bytes(), expected.as_bytes()) {
        return Err(refused());
    }
    Ok(Request::from_parts(parts, axum::body::Body::from(bytes)))
}

/// One field of an `application/x-www-form-urlencoded` body.
pub fn form_field(body: &[u8], name: &str) -> Option<String> {
    serde_urlencoded::from_bytes::<Vec<(String, String)>>(body)
        .ok()?
        .into_iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_fields_are_decoded() {
        let body = b"csrf=ab%2Fc&name=my+server&empty=";
        assert_eq!(form_field(body, "csrf").as_deref(), Some("ab/c"));
        assert_eq!(form_field(body, "name").as_deref(), Some("my server"));
        assert_eq!(form_field(body, "empty").as_deref(), Some(""));
        assert_eq!(form_field(body, "missing"), None);
    }

    #[test]
    fn cookies_are_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; zlh_session=abc; b=2"),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, "c"), None);
    }

    #[test]
    fn login_failures_lock_after_the_budget() {
        let ui = UiState::default();
        let keys = vec!["ip:1".to_string(), "user:x".to_string()];
        for _ in 0..MAX_FAILURES {
            assert_eq!(ui.begin_attempt(&keys), Ok(()));
        }
        assert!(ui.begin_attempt(&["user:x".to_string()]).is_err());
        ui.refund(&keys);
        assert_eq!(ui.begin_attempt(&keys), Ok(()));
        assert!(ui.begin_attempt(&keys).is_err());
        ui.clear(&keys);
        assert_eq!(ui.begin_attempt(&keys), Ok(()));
    }
}
