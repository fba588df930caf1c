//! The admin UI: server-rendered askama pages, plain forms (POST-redirect-GET) that
//! work without JavaScript, a little JS for live updates. This module holds the route
//! table, the error page, the page layout and the rendering helpers; sessions, cookies
//! and CSRF are in [`session`].

mod admin;
mod assets;
mod auth;
mod enroll;
mod files;
mod game;
mod live;
mod servers;
mod session;
mod worlds;

use std::time::Instant;

use askama::Template;
use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequest, Request};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::domain::DomainError;
use crate::domain::users::User;
use crate::error::AppError;
use crate::http::AppState;
use crate::util::untrusted;

pub use assets::asset_url;
pub use auth::prepare_setup;
pub use session::{
    LOGIN_CSRF_COOKIE, SESSION_COOKIE, Sess, StreamSlot, UiState, check_ws_origin, cookie,
    session_ended, session_of, set_cookie, stream_slot,
};

/// Largest form body the UI reads.
pub(crate) const FORM_LIMIT: usize = 64 * 1024;

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
    "/servers/{id}/console" => get(servers::console_tab).post(servers::console_command);
    "/servers/{id}/console/stream" => get(live::console_stream);
    "/servers/{id}/files" => get(files::tab);
    "/servers/{id}/files/edit" => get(files::edit_form)
        .post(files::save)
        .layer(DefaultBodyLimit::max(files::EDIT_FORM_LIMIT));
    "/servers/{id}/files/download" => get(files::download);
    "/servers/{id}/files/upload" => post(files::upload).layer(DefaultBodyLimit::disable());
    "/servers/{id}/files/{op}" => post(files::operation);
    "/servers/{id}/actions/{action}" => post(servers::action);
    "/servers/{id}/backups" => get(worlds::backups).post(worlds::create_backup);
    "/servers/{id}/backups/retention" => post(worlds::set_retention);
    "/servers/{id}/schedules" => get(worlds::schedules_tab).post(worlds::add_schedule);
    "/servers/{id}/properties" => get(game::properties_tab).post(game::save_properties);
    "/servers/{id}/players" => get(game::players_tab).post(game::player_action);
    "/servers/{id}/version" => post(game::change_version);
    "/backups/{id}/restore" => post(worlds::restore);
    "/backups/{id}/{action}" => post(worlds::protect);
    "/schedules/{id}/remove" => post(worlds::remove_schedule);
    "/jobs" => get(admin::jobs);
    "/jobs/release-all" => post(admin::release_all);
    "/jobs/{id}/{action}" => post(admin::job_action);
    "/templates" => get(admin::templates).post(admin::create_template);
    "/nodes" => get(admin::nodes).post(admin::create_node);
    "/nodes/test" => post(admin::test_node);
    "/nodes/enroll" => post(enroll::enroll);
    "/nodes/{id}/agents/upgrade" => post(admin::upgrade_node_agents);
    "/servers/{id}/agent/upgrade" => post(servers::upgrade_agent);
    "/users" => get(admin::users).post(admin::create_user);
    "/users/{id}/password" => post(admin::reset_password);
    "/users/{id}/quota" => post(admin::set_quota);
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
        .route("/static/{*path}", get(assets::serve))
        .route("/favicon.ico", get(assets::favicon));
    public
        .merge(session_router().route_layer(middleware::from_fn_with_state(
            state,
            session::require_session,
        )))
        .layer(middleware::from_fn(server_timing))
        .layer(middleware::from_fn(security_headers))
        // Forms are small: nothing the UI reads is larger (axum's default is 2 MB).
        .layer(DefaultBodyLimit::max(FORM_LIMIT))
}

/// The pages load only their own scripts and styles (no inline code anywhere), are
/// never framed, and do not leak their URLs (server ids, `next`) to other sites.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; object-src 'none'; \
                   base-uri 'none'; form-action 'self'";

async fn security_headers(req: Request, next: Next) -> Response {
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    resp
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
    /// Too many requests (429), e.g. sign-ins waiting for a password check.
    #[error("{0}")]
    Busy(String),
    #[error("form larger than {} KiB ({FORM_LIMIT} bytes)", FORM_LIMIT / 1024)]
    TooLarge,
    #[error("{0}")]
    Internal(String),
}

impl From<AppError> for UiError {
    fn from(e: AppError) -> Self {
        let msg = e.to_string();
        match e {
            AppError::NotFound(_) => UiError::NotFound(msg),
            AppError::Forbidden(_) | AppError::Unauthorized => UiError::Forbidden(msg),
            AppError::BadRequest { .. } => UiError::BadRequest(msg),
            AppError::TooLarge(_) => UiError::TooLarge,
            AppError::TooMany(_) => UiError::Busy(msg),
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

impl UiError {
    /// What the user may read: an internal error's text goes to the log under an id,
    /// and only that id is shown.
    pub fn public_message(&self) -> String {
        if let UiError::Internal(_) = self {
            let id = crate::error::error_id();
            tracing::error!(error_id = %id, error = ?untrusted(&self.to_string()), "UI request failed");
            crate::error::internal_message(&id)
        } else {
            self.to_string()
        }
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = match &self {
            UiError::NotFound(_) => StatusCode::NOT_FOUND,
            UiError::Forbidden(_) => StatusCode::FORBIDDEN,
            UiError::BadRequest(_) => StatusCode::BAD_REQUEST,
            UiError::Conflict(_) => StatusCode::CONFLICT,
            UiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UiError::Busy(_) => StatusCode::TOO_MANY_REQUESTS,
            UiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        let message = self.public_message();
        let page = ErrorPage {
            page: Page::bare("Error"),
            status: status.as_u16(),
            reason: status.canonical_reason().unwrap_or("Error"),
            message: &message,
        };
        let mut resp = match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(e) => {
                tracing::error!(error = ?untrusted(&e.to_string()), "rendering the error page");
                (status, message).into_response()
            }
        };
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            crate::error::too_large_closes(&mut resp);
        }
        resp
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
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    UiError::TooLarge
                } else {
                    UiError::BadRequest(format!("reading the form: {}", e.body_text()))
                }
            })?;
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
