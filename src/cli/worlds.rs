//! `zlh backups …` and `zlh schedules …`: world backups, restores, retention and
//! schedules from the command line. They write to the database like the API does (the
//! same domain functions), acting as an admin account; a running `zlh serve` picks the
//! jobs up.

use std::process::ExitCode;

use clap::Subcommand;
use rusqlite::Connection;

use crate::db::Db;
use crate::domain::DomainError;
use crate::domain::backups::{self, Backup, RestoreRequest, Retention};
use crate::domain::schedules::{self, NewSchedule};
use crate::domain::users::{self, User};
use crate::util::format_ts;

#[derive(Debug, Subcommand)]
pub enum BackupsCommand {
    /// A server's world backups, newest first.
    List {
        /// Server id or name.
        server: String,
        /// Include deleted backups.
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Back up a server's world now (a job in the server's lane).
    Create {
        server: String,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Restore a backup into its server, or with --new-server into a new one (a clone).
    Restore {
        backup: i64,
        /// Name of a new server to restore into.
        #[arg(long, value_name = "NAME")]
        new_server: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Protect a backup from retention and deletion (--off lifts it).
    Protect {
        backup: i64,
        #[arg(long)]
        off: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Delete a backup (refused while protected).
    Delete {
        backup: i64,
        #[command(flatten)]
        who: Who,
    },
    /// Show, or set, a server's retention policy.
    Retention {
        server: String,
        /// Keep the newest N backups.
        #[arg(long, requires = "keep_daily")]
        keep_last: Option<u32>,
        /// Keep the newest backup of each of the last D days (UTC).
        #[arg(long, requires = "keep_last")]
        keep_daily: Option<u32>,
        #[command(flatten)]
        who: Who,
    },
}

#[derive(Debug, Subcommand)]
pub enum SchedulesCommand {
    /// A server's schedules.
    List {
        server: String,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        who: Who,
    },
    /// Add a schedule: `--kind backup|restart|command` with `--cron EXPR` (UTC; 5 fields,
    /// or 6 with seconds) or `--after ID` (run after that schedule succeeded).
    Add {
        server: String,
        #[arg(long)]
        kind: String,
        #[arg(long, required_unless_present = "after", conflicts_with = "after")]
        cron: Option<String>,
        #[arg(long, value_name = "SCHEDULE_ID")]
        after: Option<i64>,
        /// The console command (kind command).
        #[arg(long)]
        command: Option<String>,
        /// Warn players this many seconds before a restart (default 300).
        #[arg(long)]
        warning_secs: Option<u32>,
        #[arg(long)]
        note: Option<String>,
        #[command(flatten)]
        who: Who,
    },
    /// Remove a schedule (and the ones chained after it).
    Remove {
        id: i64,
        #[command(flatten)]
        who: Who,
    },
}

/// Which account the command acts as.
#[derive(Debug, Clone, clap::Args)]
pub struct Who {
    /// Act as this user (default: the first admin).
    #[arg(long = "as", value_name = "USER")]
    pub user: Option<String>,
}

fn acting(conn: &Connection, who: &Who) -> Result<User, DomainError> {
    match &who.user {
        Some(name) => users::get_by_name(conn, name)?
            .ok_or_else(|| DomainError::NotFound(format!("user '{name}'"))),
        None => users::list(conn)?
            .into_iter()
            .find(|u| u.is_admin)
            .ok_or_else(|| {
                DomainError::NotFound(
                    "an admin account (add one with `zlh user add NAME --admin`)".into(),
                )
            }),
    }
}

/// A server by id or by name.
fn server_id(conn: &Connection, s: &str) -> Result<i64, DomainError> {
    if let Ok(id) = s.parse::<i64>() {
        return Ok(id);
    }
    crate::domain::servers::id_by_name(conn, s)?
        .ok_or_else(|| DomainError::NotFound(format!("server '{s}'")))
}

fn print_json(v: &impl serde::Serialize) {
    println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
}

fn print_backups(list: &[Backup]) {
    if list.is_empty() {
        println!("no backups");
        return;
    }
    println!(
        "{:>6}  {:<10} {:<20} {:>12}  {:<3}  {:<40} NOTE",
        "ID", "STATE", "CREATED", "SIZE", "PRT", "WHERE"
    );
    for b in list {
        println!(
            "{:>6}  {:<10} {:<20} {:>12}  {:<3}  {:<40} {}{}",
            b.id,
            b.state.as_str(),
            format_ts(b.created_at),
            b.size_bytes.map(|s| s.to_string()).unwrap_or_default(),
            if b.protected { "yes" } else { "" },
            b.location.as_deref().unwrap_or("-"),
            b.note,
            b.error
                .as_deref()
                .map(|e| format!(" (error: {e})"))
                .unwrap_or_default()
        );
    }
}

pub fn backups(
    db: &Db,
    command: &BackupsCommand,
    quota: users::Quota,
) -> Result<ExitCode, DomainError> {
    let mut conn = db.conn()?;
    match command {
        BackupsCommand::List {
            server,
            all,
            json,
            who,
        } => {
            let user = acting(&conn, who)?;
            let id = server_id(&conn, server)?;
            let list = backups::list(&conn, &user, id, *all)?;
            if *json {
                print_json(&list);
            } else {
                print_backups(&list);
            }
        }
        BackupsCommand::Create { server, note, who } => {
            let (b, job) = crate::db::write_tx(&mut conn, |tx| {
                let user = acting(tx, who)?;
                let id = server_id(tx, server)?;
                backups::request_backup(tx, &user, id, note.as_deref())
            })?;
            println!(
                "backup {} of server {} queued (job {job})",
                b.id, b.server_id
            );
        }
        BackupsCommand::Restore {
            backup,
            new_server,
            who,
        } => {
            let r = crate::db::write_tx(&mut conn, |tx| {
                let user = acting(tx, who)?;
                let req = RestoreRequest {
                    new_server: new_server.clone(),
                };
                backups::request_restore(tx, &user, *backup, &req, quota)
            })?;
            if r.cloned {
                println!(
                    "server {} created from backup {backup}; provisioning seeds its world (job {})",
                    r.server_id, r.job_id
                );
            } else {
                println!(
                    "restore of backup {backup} into server {} queued (job {})",
                    r.server_id, r.job_id
                );
            }
        }
        BackupsCommand::Protect { backup, off, who } => {
            let b = crate::db::write_tx(&mut conn, |tx| {
                let user = acting(tx, who)?;
                backups::set_protected(tx, &user, *backup, !off)
            })?;
            println!(
                "backup {} is {}",
                b.id,
                if b.protected {
                    "protected"
                } else {
                    "not protected"
                }
            );
        }
        BackupsCommand::Delete { backup, who } => {
            let job = crate::db::write_tx(&mut conn, |tx| {
                let user = acting(tx, who)?;
                backups::request_delete(tx, &user, *backup)
            })?;
            println!("deletion of backup {backup} queued (job {job})");
        }
        BackupsCommand::Retention {
            server,
            keep_last,
            keep_daily,
            who,
        } => {
            let r = crate::db::write_tx(&mut conn, |tx| {
                let user = acting(tx, who)?;
                let id = server_id(tx, server)?;
                match (keep_last, keep_daily) {
                    (Some(l), Some(d)) => backups::set_retention(
                        tx,
                        &user,
                        id,
                        Retention {
                            keep_last: *l,
                            keep_daily: *d,
                        },
                    ),
                    _ => backups::retention(tx, &user, id),
                }
            })?;
            if r.keeps_everything() {
                println!("keep every backup (no retention policy)");
            } else {
                println!(
                    "keep the last {} backups, and the newest of each of the last {} days; \
                     protected backups are always kept",
                    r.keep_last, r.keep_daily
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn schedules(db: &Db, command: &SchedulesCommand) -> Result<ExitCode, DomainError> {
    let mut conn = db.conn()?;
    match command {
        SchedulesCommand::List { server, json, who } => {
            let user = acting(&conn, who)?;
            let id = server_id(&conn, server)?;
            let list = schedules::list(&conn, &user, id)?;
            if *json {
                print_json(&list);
            } else if list.is_empty() {
                println!("no schedules");
            } else {
                println!(
                    "{:>5}  {:<8} {:<20} {:<20} {:<20} WHAT",
                    "ID", "KIND", "WHEN", "NEXT", "LAST SLOT"
                );
                for s in list {
                    let when = match (&s.cron, s.after) {
                        (Some(c), _) => c.clone(),
                        (None, Some(a)) => format!("after {a}"),
                        _ => "-".into(),
                    };
                    let what = match s.kind {
                        schedules::ScheduleKind::Command => s.command.clone().unwrap_or_default(),
                        schedules::ScheduleKind::Restart => {
                            format!("warn {}s before", s.warning_secs)
                        }
                        schedules::ScheduleKind::Backup => String::new(),
                    };
                    println!(
                        "{:>5}  {:<8} {:<20} {:<20} {:<20} {what}",
                        s.id,
                        s.kind.as_str(),
                        when,
                        s.next_run_at.map(format_ts).unwrap_or_else(|| "-".into()),
                        s.last_slot
                            .map(|t| format_ts(t * 1000))
                            .unwrap_or_else(|| "-".into()),
                    );
                }
            }
        }
        SchedulesCommand::Add {
            server,
            kind,
            cron,
            after,
            command,
            warning_secs,
            note,
            who,
        } => {
            let s = crate::db::write_tx(&mut conn, |tx| {
                let user = acting(tx, who)?;
                let id = server_id(tx, server)?;
                let req = NewSchedule {
                    kind: kind.clone(),
                    cron: cron.clone(),
                    after: *after,
                    command: command.clone(),
                    warning_secs: *warning_secs,
                    note: note.clone(),
                };
                schedules::add(tx, &user, id, &req)
            })?;
            println!(
                "schedule {} added ({}{})",
                s.id,
                s.kind.as_str(),
                s.next_run_at
                    .map(|t| format!(", next run {}", format_ts(t)))
                    .unwrap_or_default()
            );
        }
        SchedulesCommand::Remove { id, who } => {
            let removed = crate::db::write_tx(&mut conn, |tx| {
                let user = acting(tx, who)?;
                schedules::remove(tx, &user, *id)
            })?;
            println!("removed schedule(s) {removed:?}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
