//! World backups, retention and schedules of servers:
//! `/api/v1/servers/{id}/backups`, `/api/v1/backups/{id}` (+ restore, protect,
//! unprotect, delete), `/api/v1/servers/{id}/backups/retention`,
//! `/api/v1/servers/{id}/schedules`, `/api/v1/schedules/{id}`.

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::servers::QueuedJob;
use super::{BODY_LIMIT, Caller, Path, Query, json_error};
use crate::domain::DomainError;
use crate::domain::backups::{self, Backup, RestoreRequest, Retention};
use crate::domain::schedules::{self, NewSchedule, Schedule};
use crate::error::AppError;
use crate::http::AppState;
use crate::queue::{self, Job};

/// `{backups, retention}`: a server's backups, newest first, and its policy.
#[derive(Debug, Serialize)]
pub struct BackupList {
    pub backups: Vec<Backup>,
    pub retention: Retention,
}

/// `{backup, job}`: a backup being made and its job.
#[derive(Debug, Serialize)]
pub struct BackupQueued {
    pub backup: Backup,
    pub job: Option<Job>,
}

/// `{backup}`.
#[derive(Debug, Serialize)]
pub struct OneBackup {
    pub backup: Backup,
}

/// `{job, server_id, cloned}`: a restore's job and the server receiving the world.
#[derive(Debug, Serialize)]
pub struct RestoreQueued {
    pub job: Option<Job>,
    pub server_id: i64,
    pub cloned: bool,
}

/// `{retention}`.
#[derive(Debug, Serialize)]
pub struct RetentionBody {
    pub retention: Retention,
}

/// `{schedules}`.
#[derive(Debug, Serialize)]
pub struct ScheduleList {
    pub schedules: Vec<Schedule>,
}

/// `{schedule}`: the schedule just added.
#[derive(Debug, Serialize)]
pub struct OneSchedule {
    pub schedule: Schedule,
}

/// `{removed}`: the ids of the schedules removed (the one named and those chained
/// after it).
#[derive(Debug, Serialize)]
pub struct RemovedSchedules {
    pub removed: Vec<i64>,
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/servers/{id}/backups", get(list).post(create))
        .route(
            "/api/v1/servers/{id}/backups/retention",
            get(get_retention).put(put_retention),
        )
        .route("/api/v1/backups/{id}", get(show).delete(remove))
        .route("/api/v1/backups/{id}/restore", post(restore))
        .route("/api/v1/backups/{id}/protect", post(protect))
        .route("/api/v1/backups/{id}/unprotect", post(unprotect))
        .route(
            "/api/v1/servers/{id}/schedules",
            get(list_schedules).post(add_schedule),
        )
        .route("/api/v1/schedules/{id}", delete(remove_schedule))
}

/// A JSON body that may be empty (then `T::default()`), with the API's error shape.
pub struct OptionalJson<T>(pub T);

impl<S, T> FromRequest<S> for OptionalJson<T>
where
    S: Send + Sync,
    T: DeserializeOwned + Default,
{
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|_| AppError::TooLarge(BODY_LIMIT))?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        let mut de = serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(&mut de)
            .map(OptionalJson)
            .map_err(|e| json_error(&e))
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    /// `1` / `true`: include deleted backups.
    #[serde(default)]
    all: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    Query(q): Query<ListQuery>,
) -> Result<Json<BackupList>, AppError> {
    let all = match q.all.as_deref() {
        None | Some("" | "0" | "false") => false,
        Some("1" | "true") => true,
        Some(other) => {
            return Err(AppError::bad_request(
                "all",
                format!("'{other}': expected true or false"),
            ));
        }
    };
    let user = caller.0.clone();
    let body = st
        .db
        .call(move |c| {
            let backups = backups::list(c, &user, id, all)?;
            let retention = backups::retention_of(c, id)?;
            Ok::<_, DomainError>(BackupList { backups, retention })
        })
        .await?;
    Ok(Json(body))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    note: Option<String>,
}

async fn create(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    OptionalJson(body): OptionalJson<CreateBody>,
) -> Result<impl IntoResponse, AppError> {
    let user = caller.0.clone();
    let out = st
        .db
        .write(move |tx| {
            let (backup, job) = backups::request_backup(tx, &user, id, body.note.as_deref())?;
            Ok::<_, DomainError>(BackupQueued {
                backup,
                job: queue::get(tx, job)?,
            })
        })
        .await?;
    st.queue.wake();
    Ok((StatusCode::ACCEPTED, Json(out)))
}

async fn show(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<OneBackup>, AppError> {
    let user = caller.0.clone();
    let backup = st
        .db
        .call(move |c| backups::get_visible(c, &user, id))
        .await?;
    Ok(Json(OneBackup { backup }))
}

async fn restore(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    OptionalJson(req): OptionalJson<RestoreRequest>,
) -> Result<impl IntoResponse, AppError> {
    let user = caller.0.clone();
    let quota = crate::domain::users::Quota::from(&st.config.quota);
    let out = st
        .db
        .write(move |tx| {
            let r = backups::request_restore(tx, &user, id, &req, quota)?;
            Ok::<_, DomainError>(RestoreQueued {
                job: queue::get(tx, r.job_id)?,
                server_id: r.server_id,
                cloned: r.cloned,
            })
        })
        .await?;
    st.queue.wake();
    Ok((StatusCode::ACCEPTED, Json(out)))
}

async fn set_protected(
    st: &AppState,
    caller: &Caller,
    id: i64,
    on: bool,
) -> Result<Json<OneBackup>, AppError> {
    let user = caller.0.clone();
    let backup = st
        .db
        .write(move |tx| backups::set_protected(tx, &user, id, on))
        .await?;
    Ok(Json(OneBackup { backup }))
}

async fn protect(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<OneBackup>, AppError> {
    set_protected(&st, &caller, id, true).await
}

async fn unprotect(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<OneBackup>, AppError> {
    set_protected(&st, &caller, id, false).await
}

async fn remove(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<impl IntoResponse, AppError> {
    let user = caller.0.clone();
    let out = st
        .db
        .write(move |tx| {
            let job = backups::request_delete(tx, &user, id)?;
            Ok::<_, DomainError>(QueuedJob {
                job: queue::get(tx, job)?,
            })
        })
        .await?;
    st.queue.wake();
    Ok((StatusCode::ACCEPTED, Json(out)))
}

async fn get_retention(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RetentionBody>, AppError> {
    let user = caller.0.clone();
    let r = st
        .db
        .call(move |c| backups::retention(c, &user, id))
        .await?;
    Ok(Json(RetentionBody { retention: r }))
}

async fn put_retention(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    super::ApiJson(policy): super::ApiJson<Retention>,
) -> Result<Json<RetentionBody>, AppError> {
    let user = caller.0.clone();
    let r = st
        .db
        .write(move |tx| backups::set_retention(tx, &user, id, policy))
        .await?;
    Ok(Json(RetentionBody { retention: r }))
}

async fn list_schedules(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<ScheduleList>, AppError> {
    let user = caller.0.clone();
    let schedules = st.db.call(move |c| schedules::list(c, &user, id)).await?;
    Ok(Json(ScheduleList { schedules }))
}

async fn add_schedule(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    super::ApiJson(req): super::ApiJson<NewSchedule>,
) -> Result<impl IntoResponse, AppError> {
    let user = caller.0.clone();
    let s = st
        .db
        .write(move |tx| schedules::add(tx, &user, id, &req))
        .await?;
    Ok((StatusCode::CREATED, Json(OneSchedule { schedule: s })))
}

async fn remove_schedule(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<RemovedSchedules>, AppError> {
    let user = caller.0.clone();
    let removed = st
        .db
        .write(move |tx| schedules::remove(tx, &user, id))
        .await?;
    Ok(Json(RemovedSchedules { removed }))
}
