//! zlh: the control plane of a game-server hosting platform in one binary with one
//! SQLite file. See DESIGN.md (shared) and README.md.

/// This build's version.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The git commit this binary was built from ("unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("BUILD_GIT_COMMIT");

pub mod agent;
pub mod agentd;
pub mod app;
pub mod artifacts;
pub mod cli;
pub mod config;
pub mod db;
pub mod doctor;
pub mod domain;
pub mod edge;
pub mod error;
pub mod http;
pub mod jobs;
pub mod queue;
pub mod runtime;
pub mod shipping;
pub mod store;
pub mod util;
