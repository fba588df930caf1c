//! `/api/v1/servers/{id}/properties` and `/api/v1/servers/{id}/players…`.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::{ApiJson, Caller, Path};
use crate::error::AppError;
use crate::http::AppState;
use crate::http::game::{self, ActionOutcome};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/api/v1/servers/{id}/properties",
            get(get_properties).put(put_properties),
        )
        .route("/api/v1/servers/{id}/players", get(players))
        .route(
            "/api/v1/servers/{id}/players/{name}/{action}",
            post(player_action),
        )
        .route("/api/v1/servers/{id}/version", post(change_version))
}

/// 202 `{job, warning}`: one job in the server's lane (backup, install, ready, or
/// rollback). A downgrade needs `confirm_downgrade` (400 naming it otherwise).
async fn change_version(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<crate::domain::versions::VersionChange>,
) -> Result<impl IntoResponse, AppError> {
    let (job, warning) = game::change_version(&st, &caller.0, id, body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(serde_json::json!({"job": job, "warning": warning})),
    ))
}

async fn get_properties(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<game::PropertiesView>, AppError> {
    Ok(Json(game::properties_view(&st, &caller.0, id).await?))
}

/// Body: `{"max-players": 50, "motd": "hi", "pvp": false}` (strings, numbers, booleans).
async fn put_properties(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
    ApiJson(body): ApiJson<BTreeMap<String, Value>>,
) -> Result<Json<game::PropertiesView>, AppError> {
    let mut set = BTreeMap::new();
    for (k, v) in body {
        let text = match v {
            Value::String(s) => s,
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(AppError::bad_request(
                    &k,
                    format!("{k}: a string, number or boolean"),
                ));
            }
        };
        set.insert(k, text);
    }
    Ok(Json(game::set_properties(&st, &caller.0, id, set).await?))
}

async fn players(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<i64>,
) -> Result<Json<game::PlayersPage>, AppError> {
    Ok(Json(game::players_page(&st, &caller.0, id).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    #[serde(default)]
    reason: Option<String>,
}

/// 200 `{outcome: "applied", …}` on a running server; 202 `{outcome: "queued", job}`
/// otherwise. The body (`{reason}`) is optional.
async fn player_action(
    State(st): State<AppState>,
    caller: Caller,
    Path((id, name, action)): Path<(i64, String, String)>,
    body: axum::body::Bytes,
) -> Result<impl IntoResponse, AppError> {
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AppError::bad_request("reason", format!("invalid JSON body: {e}")))?
    };
    let outcome =
        game::player_action(&st, &caller.0, id, &action, &name, body.reason.as_deref()).await?;
    let status = match outcome {
        ActionOutcome::Applied { .. } => StatusCode::OK,
        ActionOutcome::Queued { .. } => StatusCode::ACCEPTED,
    };
    Ok((status, Json(outcome)))
}
