//! Online backup of the control-plane database with SQLite's backup API: consistent
//! while `zlh serve` is writing (WAL readers do not block the writer).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("no database at {0} (is the data dir right?)")]
    NoDatabase(PathBuf),
    #[error("{0} already exists; choose another file or pass --force")]
    Exists(PathBuf),
    #[error("backing up {src} to {dest}: {source}")]
    Sqlite {
        src: PathBuf,
        dest: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("backing up to {dest}: {source}")]
    Io {
        dest: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("backup {dest} failed its integrity check: {report}")]
    Corrupt { dest: PathBuf, report: String },
}

/// What a backup wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BackupInfo {
    pub path: PathBuf,
    pub bytes: u64,
}

/// Copies the database at `src` to `dest` atomically (a temp file renamed into place),
/// then checks the copy with `PRAGMA integrity_check`.
pub fn backup_to(src: &Path, dest: &Path, overwrite: bool) -> Result<BackupInfo, BackupError> {
    if !src.exists() {
        return Err(BackupError::NoDatabase(src.to_path_buf()));
    }
    if dest.exists() && !overwrite {
        return Err(BackupError::Exists(dest.to_path_buf()));
    }
    let sqlite = |source| BackupError::Sqlite {
        src: src.to_path_buf(),
        dest: dest.to_path_buf(),
        source,
    };
    let io = |source| BackupError::Io {
        dest: dest.to_path_buf(),
        source,
    };
    if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = dest.with_extension(format!("partial-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    let result = (|| {
        let from = Connection::open_with_flags(
            src,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sqlite)?;
        from.busy_timeout(Duration::from_secs(5)).map_err(sqlite)?;
        let mut to = Connection::open(&tmp).map_err(sqlite)?;
        {
            let backup = rusqlite::backup::Backup::new(&from, &mut to).map_err(sqlite)?;
            // All pages in one step (-1): one read transaction, so the copy is a single
            // consistent snapshot even while the server keeps writing.
            let deadline = std::time::Instant::now() + Duration::from_secs(60);
            let mut pause = Duration::from_millis(5);
            loop {
                match backup.step(-1).map_err(sqlite)? {
                    rusqlite::backup::StepResult::Done => break,
                    rusqlite::backup::StepResult::More => continue,
                    // Busy/locked: a writer holds the database for a moment; back off.
                    _ if std::time::Instant::now() < deadline => {
                        std::thread::sleep(pause);
                        pause = (pause * 2).min(Duration::from_millis(500));
                    }
                    _ => {
                        return Err(sqlite(rusqlite::Error::SqliteFailure(
                            rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_BUSY),
                            Some("database stayed busy for 60 s".into()),
                        )));
                    }
                }
            }
        }
        // A standalone file: no -wal beside it is needed to read it.
        to.execute_batch("PRAGMA journal_mode = DELETE;")
            .map_err(sqlite)?;
        let report: String = to
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(sqlite)?;
        if report != "ok" {
            return Err(BackupError::Corrupt {
                dest: dest.to_path_buf(),
                report,
            });
        }
        drop(to);
        // Private even where the umask is not ours (a library caller) or FILE existed.
        crate::db::files::private_file(&tmp).map_err(io)?;
        let f = std::fs::File::open(&tmp).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, dest).map_err(io)?;
        if let Some(parent) = dest.parent().filter(|p| !p.as_os_str().is_empty())
            && let Ok(d) = std::fs::File::open(parent)
        {
            let _ = d.sync_all();
        }
        let bytes = std::fs::metadata(dest).map_err(io)?.len();
        Ok(BackupInfo {
            path: dest.to_path_buf(),
            bytes,
        })
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A scheduled backup: `<data_dir>/backups/zlh-<UTC time>.db`, keeping the newest `keep`.
pub fn scheduled(data_dir: &Path, keep: usize) -> Result<BackupInfo, BackupError> {
    let dir = data_dir.join("backups");
    // Only one executor makes scheduled backups: a partial file here is what a crash
    // left of an earlier one.
    if let Ok(entries) = std::fs::read_dir(&dir) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().contains(".partial-") {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    let now = crate::db::now_ms();
    let stamp = crate::util::format_ts(now).replace(':', "");
    let dest = dir.join(format!("zlh-{stamp}-{:03}.db", now % 1000));
    let info = backup_to(&data_dir.join(crate::db::DB_FILE), &dest, true)?;
    let mut old: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|source| BackupError::Io {
            dest: dir.clone(),
            source,
        })?
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("zlh-") && n.ends_with(".db"))
        })
        .collect();
    // Names sort by time.
    old.sort();
    let excess = old.len().saturating_sub(keep.max(1));
    for p in old.into_iter().take(excess) {
        if let Err(e) = std::fs::remove_file(&p) {
            tracing::warn!(error = %e, path = %p.display(), "removing an old backup");
        }
    }
    Ok(info)
}

#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("refusing to restore: another zlh serve owns {data_dir} ({holder}); stop it first")]
    Serving { data_dir: PathBuf, holder: String },
    #[error(transparent)]
    Instance(#[from] crate::store::instance::InstanceError),
    #[error("{path} is not a usable zlh database: {reason}")]
    BadSource { path: PathBuf, reason: String },
    #[error(transparent)]
    Backup(#[from] BackupError),
    #[error("restoring into {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    #[error("refusing to restore: {0}")]
    Secret(#[from] crate::db::secret::SecretError),
}

/// What a restore did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Restored {
    pub held: usize,
    pub reason: String,
}

/// Restores `src` as the database of `data_dir` (refused while a `zlh serve` owns it)
/// and parks every unfinished side-effecting job as `held`: nothing replays until an
/// operator has looked at the world and released or cancelled them.
/// `replay_safe`: job kinds that only touch the database and may run unattended after
/// the restore (the queue's caller knows them; the store does not).
pub fn restore(
    src: &Path,
    data_dir: &Path,
    replay_safe: &'static [&'static str],
) -> Result<Restored, RestoreError> {
    crate::db::files::private_dir(data_dir).map_err(|source| RestoreError::Io {
        path: data_dir.to_path_buf(),
        source,
    })?;
    // Holding the lock for the whole restore also keeps a `zlh serve` from starting
    // half-way through.
    let _lock = match crate::store::instance::acquire(data_dir, &crate::config::hostname(), None) {
        Ok(l) => l,
        Err(crate::store::instance::InstanceError::Held { holder, .. }) => {
            return Err(RestoreError::Serving {
                data_dir: data_dir.to_path_buf(),
                holder,
            });
        }
        Err(e) => return Err(e.into()),
    };
    let bad = |reason: String| RestoreError::BadSource {
        path: src.to_path_buf(),
        reason,
    };
    {
        let conn = Connection::open_with_flags(src, OpenFlags::SQLITE_OPEN_READ_ONLY)
            .map_err(|e| bad(e.to_string()))?;
        let check: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .map_err(|e| bad(e.to_string()))?;
        if check != "ok" {
            return Err(bad(format!("integrity check: {check}")));
        }
        conn.query_row("SELECT count(*) FROM jobs", [], |r| r.get::<_, i64>(0))
            .map_err(|e| bad(format!("no job table: {e}")))?;
        // Its secrets open only with the key that sealed them: refuse now, not at
        // the first agent call after the swap.
        let sealed_with = crate::db::meta_get(&conn, crate::db::secret::KEY_ID_META)
            .map_err(|e| bad(format!("no meta table: {e}")))?;
        if let Some(stored) = sealed_with {
            let path = crate::db::secret::key_path(data_dir);
            let current = crate::db::secret::key_id_of_file(&path)?;
            if current.as_deref() != Some(stored.as_str()) {
                return Err(crate::db::secret::SecretError::WrongKey {
                    db: src.to_path_buf(),
                    path,
                    stored,
                    current: current
                        .map_or_else(|| "the file is missing".into(), |id| format!("key id {id}")),
                }
                .into());
            }
        }
    }
    // The copy goes through the backup API into a temp file, then replaces the live
    // database and its WAL in one rename.
    let db = data_dir.join(crate::db::DB_FILE);
    let staged = data_dir.join("zlh.db.restoring");
    let _ = std::fs::remove_file(&staged);
    backup_to(src, &staged, true)?;
    for side in ["zlh.db-wal", "zlh.db-shm"] {
        let p = data_dir.join(side);
        if let Err(source) = std::fs::remove_file(&p)
            && source.kind() != std::io::ErrorKind::NotFound
        {
            return Err(RestoreError::Io { path: p, source });
        }
    }
    std::fs::rename(&staged, &db).map_err(|source| RestoreError::Io {
        path: db.clone(),
        source,
    })?;
    let reason = format!(
        "restored from {} at {}: check the world with `zlh doctor`, then release or cancel",
        src.display(),
        crate::util::format_ts(crate::db::now_ms())
    );
    let handle = crate::db::Db::open(&db)?;
    let mut conn = handle.conn()?;
    let r = reason.clone();
    let held = crate::db::write_tx(&mut conn, move |tx| {
        crate::queue::store::hold_unfinished(tx, &r, replay_safe)
    })?;
    Ok(Restored { held, reason })
}
