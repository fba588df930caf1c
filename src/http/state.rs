//! What every handler shares: the configuration, the database, the queue, the mirror,
//! the job services and the process's own facts.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use tokio_util::sync::CancellationToken;

use crate::artifacts::Mirror;
use crate::config::Config;
use crate::db::Db;
use crate::jobs::services::Services;
use crate::queue::Queue;
use crate::store::instance::Boot;

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub db: Db,
    pub queue: Queue,
    /// The artifact mirror served at `/artifacts/…`.
    pub mirror: Mirror,
    pub services: Arc<Services>,
    pub boot: Arc<Boot>,
    pub host: Arc<str>,
    /// True while the app is ready for traffic (false while starting or draining).
    pub ready: Arc<AtomicBool>,
    pub started_at: i64,
    /// Admin UI state kept in memory (login rate limits).
    pub ui: Arc<crate::http::ui::UiState>,
    /// Cancelled when shutdown begins: long-lived responses (live pages, console
    /// relays) end, so draining HTTP does not wait for browsers to close them.
    pub shutdown: CancellationToken,
}
