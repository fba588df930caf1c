//! The JSON API under `/api/v1` (DESIGN §9). Every route needs a bearer API token.

mod backups;
pub mod files;
mod game;
mod jobs;
pub mod openapi;
mod servers;
mod templates_nodes;

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Request, State};
use axum::http::header;
use axum::http::request::Parts;
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::{Extension, Router};
use serde::de::DeserializeOwned;

use crate::domain::users::{self, User};
use crate::error::AppError;
use crate::http::AppState;

/// Largest request body the API reads.
pub const BODY_LIMIT: usize = 64 * 1024;

pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(servers::router())
        .merge(backups::router())
        .merge(files::router())
        .merge(game::router())
        .merge(jobs::router())
        .merge(templates_nodes::router())
        .merge(openapi::router())
        .route_layer(middleware::from_fn_with_state(state, require_token))
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
}

/// Resolves the bearer token to a user, or answers 401.
async fn require_token(
    State(st): State<AppState>,
    mut req: Request,
    next: Next,
) -> Result<Response, AppError> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    if token.is_empty() {
        return Err(AppError::Unauthorized);
    }
    let presented = token.clone();
    let user = st
        .db
        .call(move |c| users::verify_token(c, &token))
        .await?
        .ok_or(AppError::Unauthorized)?;
    req.extensions_mut().insert(user);
    req.extensions_mut().insert(Bearer(presented));
    Ok(next.run(req).await)
}

pub type Caller = Extension<User>;

/// The bearer token a request was let in with (a stream checks it again later).
#[derive(Clone)]
pub struct Bearer(String);

/// How often a stream checks that its token still works.
const TOKEN_RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves once `token` no longer lets anyone in (revoked, or its user gone): a
/// stream opened with it ends then. A failed check counts as revoked.
pub async fn token_revoked(st: AppState, Bearer(token): Bearer) {
    loop {
        tokio::time::sleep(TOKEN_RECHECK).await;
        let token = token.clone();
        match st.db.call(move |c| users::verify_token(c, &token)).await {
            Ok(Some(_)) => {}
            Ok(None) => return,
            Err(e) => {
                tracing::warn!(error = %e, "checking the token of a stream");
                return;
            }
        }
    }
}

pub fn require_admin(user: &User) -> Result<(), AppError> {
    if user.is_admin {
        Ok(())
    } else {
        Err(AppError::Forbidden("this needs an admin account".into()))
    }
}

/// JSON body that answers bad input with the API's error shape, naming the field.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| AppError::TooLarge(BODY_LIMIT))?;
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(ApiJson)
            .map_err(|e| json_error(&e))
    }
}

/// A serde error as a 400 naming the field: the path where it failed, or the field
/// serde names (missing or unknown ones are reported at their parent).
fn json_error(e: &serde_path_to_error::Error<serde_json::Error>) -> AppError {
    let msg = e.inner().to_string();
    // A missing field is reported at its parent's path; everything else at its own.
    let missing = msg
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next());
    let path = e.path().to_string();
    let field = match (missing, path.as_str()) {
        (Some(f), "." | "") => f.to_string(),
        (Some(f), p) => format!("{p}.{f}"),
        (None, "." | "") => "body".to_string(),
        (None, p) => p.to_string(),
    };
    AppError::BadRequest {
        field: Some(field),
        message: format!("invalid JSON body: {msg}"),
    }
}

/// Path parameters that answer a bad one (`/servers/abc`) with the API's error shape.
pub struct Path<T>(pub T);

impl<S, T> FromRequestParts<S> for Path<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Send,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        use axum::extract::path::ErrorKind;
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(v)) => Ok(Path(v)),
            Err(PathRejection::FailedToDeserializePathParams(e)) => {
                let field = match e.kind() {
                    ErrorKind::ParseErrorAtKey { key, .. }
                    | ErrorKind::InvalidUtf8InPathParam { key } => key.clone(),
                    // A lone parameter (`Path<i64>`) is reported without its name.
                    _ => axum::extract::RawPathParams::from_request_parts(parts, state)
                        .await
                        .ok()
                        .and_then(|p| match p.iter().collect::<Vec<_>>()[..] {
                            [(key, _)] => Some(key.to_string()),
                            _ => None,
                        })
                        .unwrap_or_else(|| "path".into()),
                };
                Err(AppError::bad_request(&field, e.body_text()))
            }
            Err(e) => Err(AppError::bad_request("path", e.body_text())),
        }
    }
}

/// A query string that answers bad parameters (`?limit=x`) with the API's error shape.
pub struct Query<T>(pub T);

impl<S, T> FromRequestParts<S> for Query<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = AppError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        // The message names the parameter (`limit: invalid digit found in string`).
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| Query(v))
            .map_err(|e: QueryRejection| AppError::bad_request("query", e.body_text()))
    }
}
