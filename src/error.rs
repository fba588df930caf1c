//! The API error type: one enum, mapped to a status code and the JSON shape
//! `{"error": {"code", "message", "field"}}`. Server errors are logged once here.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::artifacts::{ArtifactError, ErrorClass};
use crate::db::DbError;
use crate::queue::QueueError;
use crate::util::untrusted;

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{message}")]
    BadRequest {
        field: Option<String>,
        message: String,
    },
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        field: Option<String>,
        message: String,
    },
    #[error(
        "missing or invalid API token: send `Authorization: Bearer zlh_…` (create one with `zlh token create`)"
    )]
    Unauthorized,
    #[error("{0}")]
    Forbidden(String),
    #[error("request body larger than {0} bytes")]
    TooLarge(usize),
    /// Over a cap (e.g. open console streams): 429.
    #[error("{0}")]
    TooMany(String),
    /// An upstream the request depended on failed (e.g. an artifact fill).
    #[error("{0}")]
    BadGateway(String),
    #[error("service unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Internal(String),
}

impl From<QueueError> for AppError {
    fn from(e: QueueError) -> Self {
        match e {
            QueueError::NotFound(id) => AppError::NotFound(format!("job {id} not found")),
            e @ QueueError::InvalidState { .. } => AppError::conflict(e.to_string()),
            QueueError::Db(e) => AppError::Db(e),
            e => AppError::Internal(e.to_string()),
        }
    }
}

impl From<ArtifactError> for AppError {
    fn from(e: ArtifactError) -> Self {
        match e.class() {
            ErrorClass::BadPath => AppError::BadRequest {
                field: Some("path".into()),
                message: e.to_string(),
            },
            ErrorClass::NotFound => AppError::NotFound(e.to_string()),
            ErrorClass::Upstream => AppError::BadGateway(e.to_string()),
            ErrorClass::Internal => AppError::Internal(e.to_string()),
        }
    }
}

impl From<crate::domain::DomainError> for AppError {
    fn from(e: crate::domain::DomainError) -> Self {
        use crate::domain::DomainError as D;
        match e {
            D::Invalid { field, message } => AppError::BadRequest {
                field: Some(field),
                message,
            },
            D::Taken { field, message } => AppError::Conflict {
                field: Some(field),
                message,
            },
            D::Conflict(m) => AppError::conflict(m),
            D::NotFound(what) => AppError::NotFound(format!("{what} not found")),
            D::Db(d) => AppError::Db(d),
            D::Queue(q) => q.into(),
            D::Random(m) => AppError::Internal(m),
        }
    }
}

impl AppError {
    pub fn conflict(message: impl Into<String>) -> AppError {
        AppError::Conflict {
            field: None,
            message: message.into(),
        }
    }

    pub fn bad_request(field: &str, message: impl Into<String>) -> AppError {
        AppError::BadRequest {
            field: Some(field.into()),
            message: message.into(),
        }
    }

    fn status_code(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            AppError::Conflict { .. } => (StatusCode::CONFLICT, "conflict"),
            AppError::Unauthorized => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            AppError::TooMany(_) => (StatusCode::TOO_MANY_REQUESTS, "too_many_requests"),
            AppError::BadGateway(_) => (StatusCode::BAD_GATEWAY, "upstream"),
            AppError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            AppError::Db(_) | AppError::Internal(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        }
    }
}

/// The rest of a refused body is never read, so the connection cannot carry another
/// request: saying so keeps the client from reusing it while it closes.
pub fn too_large_closes(resp: &mut Response) {
    resp.headers_mut().insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
}

/// A short id that ties a 500 answer to the log line holding its details.
pub fn error_id() -> String {
    format!("{:08x}", fastrand::u32(..))
}

/// The message a 500 answers with: what failed inside (SQLite's text, a path) is for
/// the log, under `id`, not for whoever sent the request.
pub fn internal_message(id: &str) -> String {
    format!("internal error (id {id}): the details are in the server log under this id")
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_code();
        let message = if status == StatusCode::INTERNAL_SERVER_ERROR {
            let id = error_id();
            tracing::error!(error_id = %id, error = ?untrusted(&self.to_string()), "request failed");
            internal_message(&id)
        } else {
            if status.is_server_error() {
                tracing::error!(error = ?untrusted(&self.to_string()), "request failed");
            }
            self.to_string()
        };
        let field = match &self {
            AppError::BadRequest { field, .. } | AppError::Conflict { field, .. } => field.clone(),
            _ => None,
        };
        let body = json!({"error": {"code": code, "message": message, "field": field}});
        let mut resp = (status, Json(body)).into_response();
        if status == StatusCode::PAYLOAD_TOO_LARGE {
            too_large_closes(&mut resp);
        }
        resp
    }
}
