//! Built-in job kinds and periodic jobs of the control plane itself.

pub mod edge;
pub mod reconcile;
pub mod servers;

use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;
use crate::queue::{CronSpec, Handler, JobFailure, Outcome, handler_fn, store};

/// A job that does nothing: used by `zlh bench queue` and to smoke-test the queue.
pub const NOOP: &str = "noop";
/// Deletes finished jobs past their retention (hourly).
pub const QUEUE_PRUNE: &str = "queue.prune";

pub fn noop() -> Arc<dyn Handler> {
    Arc::new(handler_fn(NOOP, |_| async { Ok(Outcome::Complete) }).replay_safe(true))
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
        .replay_safe(true)
        .timeout(Duration::from_secs(600)),
    )
}

/// Every built-in handler.
pub fn builtin_handlers(config: &Config) -> Vec<Arc<dyn Handler>> {
    vec![noop(), queue_prune(config)]
}

/// Every built-in periodic job.
pub fn builtin_crons() -> Vec<CronSpec> {
    vec![CronSpec::new(
        QUEUE_PRUNE,
        Duration::from_secs(3600),
        QUEUE_PRUNE,
    )]
}
