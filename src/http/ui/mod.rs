//! The admin UI: server-rendered askama pages, plain forms (POST-redirect-GET) that
//! work without JavaScript, a little JS for live updates. Sessions are cookies whose
//! SHA-256 lives in the database; every POST carries the session's CSRF token.

mod admin;
mod assets;
mod auth;
mod live;
mod servers;
mod worlds;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use askama::Template;
use axum::Router;
use axum::extract::{FromRequest, FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::agent::constant_time_eq;
use crate::app::AppState;
use crate::domain::DomainError;
use crate::domain::sessions::{self, Session};
use crate::domain::users::User;
use crate::error::AppError;

pub use assets::asset_url;
pub use auth::prepare_setup;

/// Session cookie name.
pub const SESSION_COOKIE: &str = "zlh_session";
/// Cookie of the login and setup forms' CSRF token (there is no session yet).
pub const LOGIN_CSRF_COOKIE: &str = "zlh_login_csrf";
/// Largest form body the UI reads.
const FORM_LIMIT: usize = 64 * 1024;

/// Declares the routes that need a session, once: the router is built from this
/// table and the tests walk it (every one must redirect to the login page).
macro_rules! session_routes {
    ($($path:literal => $route:expr;)*) => {
        /// Every UI route that needs a session.
        pub const SESSION_ROUTES: &[&str] = &[$($path),*];

        fn session_router() -> Router<AppState> {
            Router::new()$(.route($path, $route))*
        }
    };
}

session_routes! {
    "/" => get(servers::dashboard);
    "/servers" => get(servers::list).post(servers::create);
    "/servers/new" => get(servers::new_form);
    "/servers/name-check" => get(servers::name_check);
    "/servers/live" => get(live::servers_live);
    "/servers/{id}" => get(servers::detail);
    "/servers/{id}/live" => get(live::server_live);
    "/servers/{id}/delete" => get(servers::delete_form).post(servers::delete);
    "/servers/{id}/console" => post(servers::console_command);
    "/servers/{id}/console/stream" => get(live::console_stream);
    "/servers/{id}/actions/{action}" => post(servers::action);
    "/servers/{id}/backups" => get(worlds::backups).post(worlds::create_backup);
    "/servers/{id}/backups/retention" => post(worlds::set_retention);
    "/servers/{id}/schedules" => get(worlds::schedules_tab).post(worlds::add_schedule);
    "/backups/{id}/restore" => post(worlds::restore);
    "/backups/{id}/{action}" => post(worlds::protect);
    "/schedules/{id}/remove" => post(worlds::remove_schedule);
    "/jobs" => get(admin::jobs);
    "/jobs/release-all" => post(admin::release_all);
    "/jobs/{id}/{action}" => post(admin::job_action);
    "/templates" => get(admin::templates).post(admin::create_template);
    "/nodes" => get(admin::nodes).post(admin::create_node);
    "/nodes/test" => post(admin::test_node);
    "/users" => get(admin::users).post(admin::create_user);
    "/users/{id}/password" => post(admin::reset_password);
    "/users/{id}/tokens" => post(admin::create_token);
    "/users/{id}/tokens/{token}/revoke" => post(admin::revoke_token);
    "/doctor" => get(admin::doctor);
    "/logout" => post(auth::logout);
}

/// The UI's routes: the public ones (login, setup, assets) and those behind a session.
pub fn router(state: AppState) -> Router<AppState> {
    let public = Router::new()
        .route("/login", get(auth::login_form).post(auth::login))
        .route("/setup", get(auth::setup_form).post(auth::setup))
        .route("/static/{*path}", get(assets::serve));
    public
        .merge(session_router().route_layer(middleware::from_fn_with_state(state, require_session)))
        .layer(middleware::from_fn(server_timing))
}

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
    fn locked_for(&self, keys: &[String]) -> Option<u64> {
        let map = self.attempts.lock().ok()?;
        keys.iter()
            .filter_map(|k| map.get(k))
            .filter(|a| a.failures >= MAX_FAILURES && a.since.elapsed() < FAILURE_WINDOW)
            .map(|a| (FAILURE_WINDOW - a.since.elapsed()).as_secs() + 1)
            .max()
    }

    fn record_failure(&self, keys: &[String]) {
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

    fn clear(&self, keys: &[String]) {
        if let Ok(mut map) = self.attempts.lock() {
            for k in keys {
                map.remove(k);
            }
        }
    }
}

/// Errors of UI handlers: rendered as a page with the status code.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    TooManyRequests(String),
    #[error("{0}")]
    Internal(String),
}

impl From<AppError> for UiError {
    fn from(e: AppError) -> Self {
        let msg = e.to_string();
        match e {
            AppError::NotFound(_) => UiError::NotFound(msg),
            AppError::Forbidden(_) | AppError::Unauthorized => UiError::Forbidden(msg),
            AppError::BadRequest { .. } | AppError::TooLarge(_) => UiError::BadRequest(msg),
            AppError::Conflict { .. } => UiError::Conflict(msg),
            AppError::BadGateway(_)
            | AppError::Unavailable(_)
            | AppError::Db(_)
            | AppError::Internal(_) => UiError::Internal(msg),
        }
    }
}

impl From<DomainError> for UiError {
    fn from(e: DomainError) -> Self {
        AppError::from(e).into()
    }
}

impl From<crate::db::DbError> for UiError {
    fn from(e: crate::db::DbError) -> Self {
        AppError::from(e).into()
    }
}

impl From<crate::queue::QueueError> for UiError {
    fn from(e: crate::queue::QueueError) -> Self {
        AppError::from(e).into()
    }
}

impl From<askama::Error> for UiError {
    fn from(e: askama::Error) -> Self {
        UiError::Internal(format!("rendering a page: {e}"))
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    page: Page,
    status: u16,
    reason: &'a str,
    message: &'a str,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Conflict(_) => StatusCode::CONFLICT,
            UiError::TooManyRequests(_) => StatusCode::TOO_MANY_REQUESTS,
            UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "UI request failed");
        }
        let message = self.to_string();
        let page = ErrorPage {
            page: Page::bare("Error"),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message: &message,
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(error = %e, "rendering the error page");
                (status, message).into_response()
            }
        }
    }
}

/// What every page's layout needs.
pub struct Page {
    pub title: String,
    /// The navigation entry to mark as current.
    pub nav: &'static str,
    pub user: Option<User>,
    pub csrf: String,
    /// Banner while jobs are held (DESIGN §4): how many and why.
    pub held: Option<(i64, String)>,
    pub css: String,
    pub js: String,
}

impl Page {
    /// A page outside a session (login, setup, errors).
    pub fn bare(title: &str) -> Page {
        Page {
            title: title.into(),
            nav: "",
            user: None,
            csrf: String::new(),
            held: None,
            css: asset_url("app.css"),
            js: asset_url("app.js"),
        }
    }

    pub fn is_admin(&self) -> bool {
        self.user.as_ref().is_some_and(|u| u.is_admin)
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
        let next = crate::http::ui::servers::url_encode(path_and_query);
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
async fn require_session(
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

/// A form body as `T`; bad input is a 400 page naming what was wrong.
pub struct UiForm<T>(pub T);

impl<S, T> FromRequest<S> for UiForm<T>
where
    S: Send + Sync,
    T: serde::de::DeserializeOwned,
{
    type Rejection = UiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| UiError::BadRequest(format!("form larger than {FORM_LIMIT} bytes")))?;
        serde_urlencoded::from_bytes(&bytes)
            .map(UiForm)
            .map_err(|e| UiError::BadRequest(format!("invalid form: {e}")))
    }
}

/// Adds `Server-Timing: app;dur=<ms>` (the time spent producing the response) to UI
/// responses: the render benchmark reads it, and so can a browser's dev tools.
async fn server_timing(req: Request, next: Next) -> Response {
    let started = Instant::now();
    let mut resp = next.run(req).await;
    let ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.3}")) {
        resp.headers_mut().insert("server-timing", v);
    }
    resp
}

/// A domain error the user can correct on the form they sent — bad input, a name or
/// a state that conflicts — shown on that form again, with the status it answers.
pub struct Correctable {
    pub status: StatusCode,
    /// The field at fault (empty for a conflict of the whole request).
    pub field: String,
    /// What is wrong, without the field's name.
    pub message: String,
}

impl Correctable {
    /// The message with the field it is about, as one line.
    pub fn text(&self) -> String {
        if self.field.is_empty() {
            self.message.clone()
        } else {
            format!("{}: {}", self.field, self.message)
        }
    }
}

/// Sorts a domain error into one to show on the form, or an error page.
pub fn correctable(e: DomainError) -> Result<Correctable, UiError> {
    let (status, field, message) = match e {
        DomainError::Invalid { field, message } => (StatusCode::BAD_REQUEST, field, message),
        DomainError::Taken { field, message } => (StatusCode::CONFLICT, field, message),
        DomainError::Conflict(message) => (StatusCode::CONFLICT, String::new(), message),
        other => return Err(other.into()),
    };
    Ok(Correctable {
        status,
        field,
        message,
    })
}

/// Renders a template as an HTML response.
pub fn render<T: Template>(t: &T) -> Result<Response, UiError> {
    Ok(Html(t.render()?).into_response())
}

/// Renders a template with a status other than 200 (a form shown again with errors).
pub fn render_status<T: Template>(status: StatusCode, t: &T) -> Result<Response, UiError> {
    Ok((status, Html(t.render()?)).into_response())
}

/// The redirect after a successful POST (POST-redirect-GET).
pub fn see_other(path: &str) -> Response {
    Redirect::to(path).into_response()
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
