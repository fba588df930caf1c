//! Sessions of the admin UI: the cookies, the signed-in user of a request, the
//! middleware that requires a session and checks CSRF tokens, and login rate limits.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};

use super::{FORM_LIMIT, Page, UiError, asset_url};
use crate::agent::constant_time_eq;
use crate::app::AppState;
use crate::domain::sessions::{self, Session};
use crate::domain::users::{self, User};

/// Session cookie name.
pub const SESSION_COOKIE: &str = "zlh_session";
/// Cookie of the login and setup forms' CSRF token (there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "zlh_login_csrf";

/// UI state kept in memory: login attempt counters (rate limiting).
#[derive(Default)]
pub struct UiState {
    attempts: Mutex<HashMap<String, Attempts>>,
}

struct Attempts {
    failures: u32,
    since: Instant,
}

/// Failed logins allowed per client address and per user name in one window.
const MAX_FAILURES: u32 = 5;
const FAILURE_WINDOW: Duration = Duration::from_secs(300);

impl UiState {
    /// Seconds to wait when any of `keys` is over its failure budget.
    pub(super) fn locked_for(&self, keys: &[String]) -> Option<u64> {
        let map = self.attempts.lock().ok()?;
        keys.iter()
            .filter_map(|k| map.get(k))
            .filter(|a| a.failures >= MAX_FAILURES && a.since.elapsed() < FAILURE_WINDOW)
            .map(|a| (FAILURE_WINDOW - a.since.elapsed()).as_secs() + 1)
            .max()
    }

    pub(super) fn record_failure(&self, keys: &[String]) {
        if let Ok(mut map) = self.attempts.lock() {
            // Old windows are forgotten, so the map cannot grow without bound.
            map.retain(|_, a| a.since.elapsed() < FAILURE_WINDOW);
            for k in keys {
                let a = map.entry(k.clone()).or_insert(Attempts {
                    failures: 0,
                    since: Instant::now(),
                });
                a.failures += 1;
            }
        }
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
    Ok(st.db.call(move |c| sessions::lookup(c, &secret)).await?)
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
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, FORM_LIMIT)
        .await
        .map_err(|_| UiError::BadRequest(format!("form larger than {FORM_LIMIT} bytes")))?;
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
        for _ in 0..MAX_FAILURES - 1 {
            ui.record_failure(&keys);
        }
        assert_eq!(ui.locked_for(&keys), None);
        ui.record_failure(&keys);
        assert!(ui.locked_for(&["user:x".to_string()]).is_some());
        ui.clear(&keys);
        assert_eq!(ui.locked_for(&keys), None);
    }
}
