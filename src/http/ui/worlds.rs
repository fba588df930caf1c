//! A server's Backups and Schedules tabs: world backups (back up now, restore in
//! place or into a new server, protect, delete, retention) and schedules (backup,
//! restart with a warning, console command; cron or chained).

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde::Deserialize;

use super::{Page, Sess, UiError, UiForm, correctable, render, render_status, see_other};
use crate::domain::backups::{self, Backup, BackupState, RestoreRequest, Retention};
use crate::domain::schedules::{self, NewSchedule, Schedule};
use crate::domain::servers::{self, Server};
use crate::domain::{DomainError, users::User};
use crate::http::AppState;
use crate::util::format_ts;

/// "1.4 GiB", "512 KiB", "17 B".
pub fn human_bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// A backup as its tab shows it.
pub struct BackupRow {
    pub id: i64,
    pub state: &'static str,
    pub created: String,
    pub kind: String,
    pub size: String,
    pub sha256: String,
    pub location: String,
    pub note: String,
    pub protected: bool,
    pub detail: String,
    pub error: String,
    pub actor: String,
    pub restorable: bool,
    pub deletable: bool,
}

impl BackupRow {
    fn from(b: &Backup) -> BackupRow {
        BackupRow {
            id: b.id,
            state: b.state.as_str(),
            created: format_ts(b.created_at),
            kind: b.kind.clone(),
            size: b.size_bytes.map(human_bytes).unwrap_or_default(),
            sha256: b.sha256.clone().unwrap_or_default(),
            location: b.location.clone().unwrap_or_default(),
            note: b.note.clone(),
            protected: b.protected,
            detail: b.detail.clone().unwrap_or_default(),
            error: b.error.clone().unwrap_or_default(),
            actor: b.actor.clone(),
            restorable: b.state == BackupState::Completed,
            deletable: !b.protected
                && matches!(b.state, BackupState::Completed | BackupState::Failed),
        }
    }
}

/// What the two tabs share: the server's name, id, status and the tab bar.
pub struct ServerHead {
    pub id: i64,
    pub name: String,
    pub status: &'static str,
    pub deleted: bool,
}

impl ServerHead {
    pub(super) fn from(s: &Server) -> ServerHead {
        ServerHead {
            id: s.id,
            name: s.name.clone(),
            status: s.status.as_str(),
            deleted: s.deleted_at.is_some(),
        }
    }
}

#[derive(Template)]
#[template(path = "server_backups.html")]
struct BackupsPage {
    page: Page,
    head: ServerHead,
    backups: Vec<BackupRow>,
    retention: Retention,
    in_flight: bool,
    error: String,
}

async fn backups_page(
    st: &AppState,
    sess: &Sess,
    id: i64,
    error: String,
) -> Result<BackupsPage, UiError> {
    let user = sess.user().clone();
    let (server, list, retention) = st
        .db
        .call(move |c| {
            let server = servers::get_visible(c, &user, id)?;
            let list = backups::list(c, &user, id, false)?;
            let retention = backups::retention(c, &user, id)?;
            Ok::<_, DomainError>((server, list, retention))
        })
        .await?;
    let page = sess
        .page(st, "servers", &format!("{} · backups", server.name))
        .await?;
    Ok(BackupsPage {
        page,
        in_flight: list
            .iter()
            .any(|b| matches!(b.state, BackupState::Pending | BackupState::Running)),
        backups: list.iter().map(BackupRow::from).collect(),
        head: ServerHead::from(&server),
        retention,
        error,
    })
}

pub async fn backups(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    render(&backups_page(&st, &sess, id, String::new()).await?)
}

/// A request the user can correct is shown on the tab again with its message; other
/// errors are error pages.
async fn on_backups_tab<T>(
    st: &AppState,
    sess: &Sess,
    id: i64,
    r: Result<T, DomainError>,
) -> Result<Response, UiError> {
    match r {
        Ok(_) => {
            st.queue.wake();
            Ok(see_other(&format!("/servers/{id}/backups")))
        }
        Err(e) => {
            let c = correctable(e)?;
            let page = backups_page(st, sess, id, c.text()).await?;
            render_status(c.status, &page)
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct NoteForm {
    #[serde(default)]
    note: String,
}

pub async fn create_backup(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<NoteForm>,
) -> Result<Response, UiError> {
    let user = sess.user().clone();
    let r = st
        .db
        .write(move |tx| {
            let note = Some(f.note.trim()).filter(|n| !n.is_empty());
            backups::request_backup(tx, &user, id, note)
        })
        .await;
    on_backups_tab(&st, &sess, id, r).await
}

#[derive(Debug, Deserialize)]
pub struct RetentionForm {
    #[serde(default)]
    keep_last: String,
    #[serde(default)]
    keep_daily: String,
}

fn count(field: &str, v: &str) -> Result<u32, DomainError> {
    let v = v.trim();
    if v.is_empty() {
        return Ok(0);
    }
    v.parse()
        .map_err(|_| crate::domain::invalid(field, "a whole number (0: no limit from this rule)"))
}

pub async fn set_retention(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<RetentionForm>,
) -> Result<Response, UiError> {
    let user = sess.user().clone();
    let r = st
        .db
        .write(move |tx| {
            let policy = Retention {
                keep_last: count("keep_last", &f.keep_last)?,
                keep_daily: count("keep_daily", &f.keep_daily)?,
            };
            backups::set_retention(tx, &user, id, policy)
        })
        .await;
    on_backups_tab(&st, &sess, id, r).await
}

/// The server a backup belongs to (for the redirect back to its tab).
async fn backup_server(st: &AppState, user: &User, backup_id: i64) -> Result<i64, UiError> {
    let user = user.clone();
    Ok(st
        .db
        .call(move |c| backups::get_visible(c, &user, backup_id))
        .await?
        .server_id)
}

#[derive(Debug, Deserialize)]
pub struct RestoreForm {
    /// "here" (into the backup's server) or "new" (a clone named `new_server`).
    #[serde(default)]
    target: String,
    #[serde(default)]
    new_server: String,
    /// The restore-in-place checkbox: it replaces the current world.
    #[serde(default)]
    confirm: Option<String>,
}

pub async fn restore(
    State(st): State<AppState>,
    sess: Sess,
    Path(backup_id): Path<i64>,
    UiForm(f): UiForm<RestoreForm>,
) -> Result<Response, UiError> {
    let server_id = backup_server(&st, sess.user(), backup_id).await?;
    let user = sess.user().clone();
    let into_new = f.target == "new";
    if !into_new && f.confirm.is_none() {
        let r: Result<(), _> = Err(DomainError::Invalid {
            field: "confirm".into(),
            message: "tick the box to confirm that the current world is replaced".into(),
        });
        return on_backups_tab(&st, &sess, server_id, r).await;
    }
    let req = RestoreRequest {
        new_server: into_new.then(|| f.new_server.trim().to_string()),
    };
    let quota = crate::domain::users::Quota::from(&st.config.quota);
    let r = st
        .db
        .write(move |tx| backups::request_restore(tx, &user, backup_id, &req, quota))
        .await;
    match r {
        Ok(done) if done.cloned => {
            st.queue.wake();
            Ok(see_other(&format!("/servers/{}", done.server_id)))
        }
        Ok(_) => {
            st.queue.wake();
            Ok(see_other(&format!("/servers/{server_id}")))
        }
        Err(e) => on_backups_tab(&st, &sess, server_id, Err::<(), _>(e)).await,
    }
}

pub async fn protect(
    State(st): State<AppState>,
    sess: Sess,
    Path((backup_id, action)): Path<(i64, String)>,
) -> Result<Response, UiError> {
    let server_id = backup_server(&st, sess.user(), backup_id).await?;
    let user = sess.user().clone();
    let r = match action.as_str() {
        "protect" | "unprotect" => {
            let on = action == "protect";
            st.db
                .write(move |tx| backups::set_protected(tx, &user, backup_id, on).map(|_| ()))
                .await
        }
        "delete" => {
            st.db
                .write(move |tx| backups::request_delete(tx, &user, backup_id).map(|_| ()))
                .await
        }
        other => {
            return Err(UiError::NotFound(format!(
                "no backup action '{other}' (protect, unprotect, delete)"
            )));
        }
    };
    on_backups_tab(&st, &sess, server_id, r).await
}

/// A schedule as its tab shows it.
pub struct ScheduleRow {
    pub id: i64,
    pub kind: &'static str,
    pub when: String,
    pub what: String,
    pub next: String,
    pub last: String,
    pub note: String,
}

impl ScheduleRow {
    fn from(s: &Schedule) -> ScheduleRow {
        let what = match (s.kind, &s.command) {
            (schedules::ScheduleKind::Command, Some(c)) => format!("run `{c}`"),
            (schedules::ScheduleKind::Restart, _) => {
                format!("restart, warning players {} s before", s.warning_secs)
            }
            (schedules::ScheduleKind::Backup, _) => "back up the world".into(),
            (_, None) => String::new(),
        };
        ScheduleRow {
            id: s.id,
            kind: s.kind.as_str(),
            when: match (&s.cron, s.after) {
                (Some(c), _) => format!("cron {c} (UTC)"),
                (None, Some(a)) => format!("after schedule #{a} succeeds"),
                (None, None) => String::new(),
            },
            what,
            next: s.next_run_at.map(format_ts).unwrap_or_default(),
            last: s.last_slot.map(|t| format_ts(t * 1000)).unwrap_or_default(),
            note: s.note.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "server_schedules.html")]
struct SchedulesPage {
    page: Page,
    head: ServerHead,
    schedules: Vec<ScheduleRow>,
    form: ScheduleForm,
    error: String,
}

#[derive(Debug, Default, Deserialize)]
pub struct ScheduleForm {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    cron: String,
    #[serde(default)]
    after: String,
    #[serde(default)]
    command: String,
    #[serde(default)]
    warning_secs: String,
    #[serde(default)]
    note: String,
}

async fn schedules_page(
    st: &AppState,
    sess: &Sess,
    id: i64,
    form: ScheduleForm,
    error: String,
) -> Result<SchedulesPage, UiError> {
    let user = sess.user().clone();
    let (server, list) = st
        .db
        .call(move |c| {
            let server = servers::get_visible(c, &user, id)?;
            let list = schedules::list(c, &user, id)?;
            Ok::<_, DomainError>((server, list))
        })
        .await?;
    let page = sess
        .page(st, "servers", &format!("{} · schedules", server.name))
        .await?;
    Ok(SchedulesPage {
        page,
        head: ServerHead::from(&server),
        schedules: list.iter().map(ScheduleRow::from).collect(),
        form,
        error,
    })
}

pub async fn schedules_tab(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
) -> Result<Response, UiError> {
    let form = ScheduleForm {
        kind: "backup".into(),
        cron: "0 4 * * *".into(),
        warning_secs: "300".into(),
        ..Default::default()
    };
    render(&schedules_page(&st, &sess, id, form, String::new()).await?)
}

pub async fn add_schedule(
    State(st): State<AppState>,
    sess: Sess,
    Path(id): Path<i64>,
    UiForm(f): UiForm<ScheduleForm>,
) -> Result<Response, UiError> {
    // One form serves every kind: only the fields of the chosen kind are sent on.
    let kind = f.kind.trim().to_string();
    let parsed = (|| {
        let after = match f.after.trim() {
            "" => None,
            a => Some(
                a.parse::<i64>()
                    .map_err(|_| crate::domain::invalid("after", "a schedule of this server"))?,
            ),
        };
        let warning_secs =
            match f.warning_secs.trim() {
                _ if kind != "restart" => None,
                "" => None,
                w => Some(w.parse::<u32>().map_err(|_| {
                    crate::domain::invalid("warning_secs", "seconds, a whole number")
                })?),
            };
        let opt = |s: &str| Some(s.trim().to_string()).filter(|s| !s.is_empty());
        Ok::<_, DomainError>(NewSchedule {
            cron: if after.is_some() { None } else { opt(&f.cron) },
            after,
            command: if kind == "command" {
                opt(&f.command)
            } else {
                None
            },
            kind: kind.clone(),
            warning_secs,
            note: opt(&f.note),
        })
    })();
    let user = sess.user().clone();
    let r = match parsed {
        Ok(new) => {
            st.db
                .write(move |tx| schedules::add(tx, &user, id, &new))
                .await
        }
        Err(e) => Err(e),
    };
    match r {
        Ok(_) => Ok(see_other(&format!("/servers/{id}/schedules"))),
        Err(e) => {
            let c = correctable(e)?;
            let page = schedules_page(&st, &sess, id, f, c.text()).await?;
            render_status(StatusCode::BAD_REQUEST, &page)
        }
    }
}

pub async fn remove_schedule(
    State(st): State<AppState>,
    sess: Sess,
    Path(schedule_id): Path<i64>,
) -> Result<Response, UiError> {
    let user = sess.user().clone();
    let server_id = st
        .db
        .write(move |tx| {
            let s = schedules::get_visible(tx, &user, schedule_id)?;
            schedules::remove(tx, &user, schedule_id)?;
            Ok::<_, DomainError>(s.server_id)
        })
        .await?;
    Ok(see_other(&format!("/servers/{server_id}/schedules")))
}

#[cfg(test)]
mod tests {
    use super::human_bytes;

    #[test]
    fn sizes_read_like_a_person_would_say_them() {
        assert_eq!(human_bytes(17), "17 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024), "3.0 GiB");
    }
}
