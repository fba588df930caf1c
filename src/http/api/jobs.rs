//! `/api/v1/jobs`: the queue, for admins.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{Caller, Path, Query, require_admin};
use crate::error::AppError;
use crate::http::AppState;
use crate::queue::{CancelEffect, Job, JobFilter, JobState};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/jobs", get(list))
        .route("/api/v1/jobs/{id}", get(show))
        .route("/api/v1/jobs/{id}/{action}", post(action))
        .route("/api/v1/doctor", get(doctor))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    before: Option<i64>,
    #[serde(default)]
    limit: Option<usize>,
}

/// `{jobs}`.
#[derive(Debug, Serialize)]
pub struct JobList {
    pub jobs: Vec<Job>,
}

/// `{job}`.
#[derive(Debug, Serialize)]
pub struct OneJob {
    pub job: Job,
}

/// What a job action did: `{"retried": id}`, `{"cancel": effect}` or `{"released": n}`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobActionResult {
    Retried(i64),
    Cancel(CancelEffect),
    Released(usize),
}

/// `{result, job}`: what the action did and the job after it.
#[derive(Debug, Serialize)]
pub struct JobActionDone {
    pub result: JobActionResult,
    pub job: Option<Job>,
}

/// `{ok, report}`: the doctor's report; `ok` is false when it found a problem.
#[derive(Debug, Serialize)]
pub struct DoctorAnswer {
    pub ok: bool,
    pub report: crate::doctor::Report,
}

async fn list(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<ListQuery>,
) -> Result<Json<JobList>, AppError> {
    require_admin(&caller)?;
    let state = match q.state.as_deref() {
        None | Some("") => None,
        Some(s) => Some(
            s.parse::<JobState>()
                .map_err(|e| AppError::bad_request("state", e))?,
        ),
    };
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(AppError::bad_request("limit", "between 1 and 1000"));
    }
    let jobs = st
        .queue
        .list(JobFilter {
            state,
            kind: q.kind.filter(|k| !k.is_empty()),
            lane: None,
            before_id: q.before,
            limit,
        })
        .await?;
    Ok(Json(JobList { jobs }))
}

async fn show(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<OneJob>, AppError> {
    require_admin(&caller)?;
    let job = st
        .queue
        .get(id)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("job {id} not found")))?;
    Ok(Json(OneJob { job }))
}

async fn action(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, action)): Path<(i64, String)>,
) -> Result<Json<JobActionDone>, AppError> {
    require_admin(&caller)?;
    let result = match action.as_str() {
        "retry" => {
            st.queue.retry(id).await?;
            JobActionResult::Retried(id)
        }
        "cancel" => JobActionResult::Cancel(st.queue.cancel(id).await?),
        "release" => JobActionResult::Released(st.queue.release(Some(id)).await?),
        other => {
            return Err(AppError::NotFound(format!(
                "no job action '{other}' (retry, cancel, release)"
            )));
        }
    };
    let job = st.queue.get(id).await?;
    Ok(Json(JobActionDone { result, job }))
}

/// `GET /api/v1/doctor[?server=ID]`: the doctor's report (checks only; repairs are
/// `zlh doctor --fix`).
async fn doctor(
    State(st): State<AppState>,
    caller: Caller,
    Query(q): Query<DoctorQuery>,
) -> Result<Json<DoctorAnswer>, AppError> {
    require_admin(&caller)?;
    let opts = crate::doctor::Options {
        server: q.server,
        ..Default::default()
    };
    let report = crate::doctor::run(&st.services, &opts).await?;
    Ok(Json(DoctorAnswer {
        ok: !report.has_problems(),
        report,
    }))
}

#[derive(Debug, Deserialize)]
struct DoctorQuery {
    #[serde(default)]
    server: Option<i64>,
}
