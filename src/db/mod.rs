//! The SQLite store: one file, a small r2d2 pool, per-connection pragmas,
//! embedded migrations, and helpers that keep blocking work off the async threads.

use std::path::{Path, PathBuf};
use std::time::Duration;

use r2d2::{Pool, PooledConnection};
use r2d2_sqlite::SqliteConnectionManager;
use rusqlite::{Connection, Transaction, TransactionBehavior};
use rusqlite_migration::{M, Migrations};

pub mod artifacts;
pub mod files;
pub mod secret;

/// The database file name inside the data dir.
pub const DB_FILE: &str = "zlh.db";

/// How long a connection waits for another writer before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("opening database {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: r2d2::Error,
    },
    #[error("getting a database connection: {0}")]
    Pool(#[from] r2d2::Error),
    #[error("database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("migrating database {path}: {source}")]
    Migrate {
        path: PathBuf,
        #[source]
        source: rusqlite_migration::Error,
    },
    #[error("database task did not finish: {0}")]
    Join(String),
    #[error(transparent)]
    Secret(#[from] secret::SecretError),
}

/// The schema, one SQL file a version, oldest first.
const MIGRATIONS: &[&str] = &[
    include_str!("../../migrations/0001_init.sql"),
    include_str!("../../migrations/0002_artifacts.sql"),
    include_str!("../../migrations/0003_servers.sql"),
    include_str!("../../migrations/0004_edge.sql"),
    include_str!("../../migrations/0005_ui.sql"),
    include_str!("../../migrations/0006_worlds.sql"),
    include_str!("../../migrations/0007_alerts_quotas.sql"),
    include_str!("../../migrations/0008_enrollments.sql"),
    include_str!("../../migrations/0009_agent_versions.sql"),
];

fn migrations() -> Migrations<'static> {
    Migrations::new(MIGRATIONS.iter().map(|sql| M::up(sql)).collect())
}

/// Number of schema migrations embedded in this binary.
pub fn latest_schema_version() -> usize {
    MIGRATIONS.len()
}

/// Applies the per-connection settings: WAL so readers never block the writer,
/// `synchronous=FULL` so an acknowledged write survives power loss.
fn configure(conn: &mut Connection) -> Result<(), rusqlite::Error> {
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(
        "PRAGMA synchronous = FULL;
         PRAGMA foreign_keys = ON;",
    )
}

/// A handle to the database; cheap to clone.
#[derive(Clone)]
pub struct Db {
    pool: Pool<SqliteConnectionManager>,
    path: PathBuf,
}

impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Db").field("path", &self.path).finish()
    }
}

impl Db {
    /// Opens (creating if needed) the database at `path` and applies pending migrations.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        // WAL is a property of the file: set it once, before the pool opens several
        // connections at once (switching modes needs the file to itself).
        {
            let conn = Connection::open(path)?;
            conn.busy_timeout(BUSY_TIMEOUT)?;
            conn.query_row("PRAGMA journal_mode = WAL", [], |_| Ok(()))?;
        }
        let manager = SqliteConnectionManager::file(path).with_init(configure);
        let pool = Pool::builder()
            .max_size(8)
            .connection_timeout(Duration::from_secs(30))
            .build(manager)
            .map_err(|source| DbError::Open {
                path: path.to_path_buf(),
                source,
            })?;
        let db = Db {
            pool,
            path: path.to_path_buf(),
        };
        let mut conn = db.conn()?;
        migrations()
            .to_latest(&mut conn)
            .map_err(|source| DbError::Migrate {
                path: path.to_path_buf(),
                source,
            })?;
        // Secrets at rest are sealed under the key beside the database.
        let data_dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        secret::check_and_migrate(&mut conn, path, data_dir)?;
        Ok(db)
    }

    /// Opens the database in `data_dir`.
    pub fn open_in(data_dir: &Path) -> Result<Db, DbError> {
        Db::open(&data_dir.join(DB_FILE))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A pooled connection for synchronous callers (CLI commands, blocking tasks).
    pub fn conn(&self) -> Result<PooledConnection<SqliteConnectionManager>, DbError> {
        Ok(self.pool.get()?)
    }

    /// Runs `f` on a pooled connection on the blocking thread pool.
    pub async fn call<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&mut Connection) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        let pool = self.pool.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = pool.get().map_err(DbError::from)?;
            f(&mut conn)
        })
        .await
        .map_err(|e| E::from(DbError::Join(e.to_string())))?
    }

    /// Runs `f` inside a `BEGIN IMMEDIATE` transaction, committed when `f` returns `Ok`.
    pub async fn write<F, R, E>(&self, f: F) -> Result<R, E>
    where
        F: FnOnce(&Transaction<'_>) -> Result<R, E> + Send + 'static,
        R: Send + 'static,
        E: From<DbError> + Send + 'static,
    {
        self.call(move |conn| write_tx(conn, f)).await
    }
}

/// Runs `f` in a `BEGIN IMMEDIATE` transaction on `conn` (synchronous form of [`Db::write`]).
pub fn write_tx<F, R, E>(conn: &mut Connection, f: F) -> Result<R, E>
where
    F: FnOnce(&Transaction<'_>) -> Result<R, E>,
    E: From<DbError>,
{
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(|e| E::from(DbError::from(e)))?;
    let out = f(&tx)?;
    tx.commit().map_err(|e| E::from(DbError::from(e)))?;
    Ok(out)
}

/// Whether the database answers a trivial query (readiness).
pub fn ping(conn: &Connection) -> Result<(), DbError> {
    conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0))?;
    Ok(())
}

/// The clock lives in `util` (the agent uses it too, and never the database).
pub use crate::util::now_ms;

/// Reads a `meta` value.
pub fn meta_get(conn: &Connection, key: &str) -> Result<Option<String>, rusqlite::Error> {
    use rusqlite::OptionalExtension;
    conn.query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
        .optional()
}

/// Writes a `meta` value.
pub fn meta_set(conn: &Connection, key: &str, value: &str) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?1, ?2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )?;
    Ok(())
}

/// Removes a `meta` value.
pub fn meta_delete(conn: &Connection, key: &str) -> Result<(), rusqlite::Error> {
    conn.execute("DELETE FROM meta WHERE key = ?1", [key])?;
    Ok(())
}

/// Adds `by` to a persistent counter.
pub fn counter_add(conn: &Connection, name: &str, by: i64) -> Result<(), rusqlite::Error> {
    conn.execute(
        "INSERT INTO counters (name, value) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET value = value + excluded.value",
        rusqlite::params![name, by],
    )?;
    Ok(())
}

/// Reads a persistent counter (0 when never written).
pub fn counter_get(conn: &Connection, name: &str) -> Result<i64, rusqlite::Error> {
    use rusqlite::OptionalExtension;
    Ok(conn
        .query_row("SELECT value FROM counters WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?
        .unwrap_or(0))
}
