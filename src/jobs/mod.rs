//! Built-in job kinds and periodic jobs of the control plane itself.

pub mod edge;
pub mod players;
pub mod reconcile;
pub mod servers;
pub mod services;
pub mod upgrade;
pub mod version;
pub mod worlds;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::queue::{CronSpec, Handler, JobFailure, Outcome, handler_fn, store};

/// A job that does nothing: used by `zlh bench queue` and to smoke-test the queue.
pub const NOOP: &str = "noop";
/// Deletes finished jobs past their retention (hourly).
pub const QUEUE_PRUNE: &str = "queue.prune";

/// Takes a consistent copy of the database into `<data_dir>/backups` (cron).
pub const DB_BACKUP: &str = "db.backup";

/// Job kinds that touch nothing outside this database: they may run again after a
/// restore or a host move without an operator looking first.
/// The one definition: the handlers' `replay_safe` flag is derived from it.
pub const REPLAY_SAFE: &[&str] = &[NOOP, QUEUE_PRUNE, DB_BACKUP, reconcile::RECONCILE];

/// Whether `kind` is in [`REPLAY_SAFE`].
pub fn is_replay_safe(kind: &str) -> bool {
    REPLAY_SAFE.contains(&kind)
}

pub fn noop() -> Arc<dyn Handler> {
    Arc::new(
        handler_fn(NOOP, |_| async { Ok(Outcome::Complete) }).replay_safe(is_replay_safe(NOOP)),
    )
}

pub fn queue_prune(config: &Config) -> Arc<dyn Handler> {
    let keep_completed = Duration::from_secs(config.queue.keep_completed_hours * 3600);
    let keep_discarded = Duration::from_secs(config.queue.keep_discarded_days * 86_400);
    Arc::new(
        handler_fn(QUEUE_PRUNE, move |ctx| async move {
            let pruned = ctx
                .db()
                .write(move |tx| {
                    let now = crate::db::now_ms();
                    store::prune(
                        tx,
                        now - keep_completed.as_millis() as i64,
                        now - keep_discarded.as_millis() as i64,
                    )
                })
                .await
                .map_err(JobFailure::from)?;
            if pruned > 0 {
                tracing::info!(pruned, "pruned finished jobs past retention");
            }
            Ok(Outcome::Complete)
        })
        .replay_safe(is_replay_safe(QUEUE_PRUNE))
        .timeout(Duration::from_secs(600)),
    )
}

/// Scheduled backups of the control plane into `<data_dir>/backups`, keeping the
/// newest `backup_keep`.
pub fn db_backup(config: &Config) -> Arc<dyn Handler> {
    let data_dir = config.data_dir.clone();
    let keep = config.backup_keep as usize;
    Arc::new(
        handler_fn(DB_BACKUP, move |_ctx| {
            let data_dir = data_dir.clone();
            async move {
                let written = tokio::task::spawn_blocking(move || {
                    crate::store::backup::scheduled(&data_dir, keep)
                })
                .await
                .map_err(|e| JobFailure::retry(format!("backup task: {e}")))??;
                tracing::info!(path = %written.path.display(), bytes = written.bytes, "database backed up");
                Ok(Outcome::Complete)
            }
        })
        .replay_safe(is_replay_safe(DB_BACKUP))
        .timeout(Duration::from_secs(1800)),
    )
}

/// Every built-in handler.
pub fn builtin_handlers(config: &Config) -> Vec<Arc<dyn Handler>> {
    vec![noop(), queue_prune(config), db_backup(config)]
}

/// Every built-in periodic job.
pub fn builtin_crons(config: &Config) -> Vec<CronSpec> {
    let mut crons = vec![CronSpec::new(
        QUEUE_PRUNE,
        Duration::from_secs(3600),
        QUEUE_PRUNE,
    )];
    if config.backup_interval_hours > 0 {
        crons.push(CronSpec::new(
            DB_BACKUP,
            Duration::from_secs(config.backup_interval_hours * 3600),
            DB_BACKUP,
        ));
    }
    crons
}
