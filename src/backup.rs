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
