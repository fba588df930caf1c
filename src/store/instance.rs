//! Single executor (DESIGN §4): an exclusive `flock` on `<data_dir>/zlh.lock`, and the
//! `instance` row that says who serves the database and which host served it last.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

use crate::db::now_ms;

pub const LOCK_FILE: &str = "zlh.lock";

/// What the lock holder wrote into the lock file.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub host: String,
    pub pid: u32,
    pub started_at: i64,
    /// The HTTP address of a `zlh serve` (absent in older lock files and for restores).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "host {} pid {} since {}",
            self.host,
            self.pid,
            crate::util::format_ts(self.started_at)
        )?;
        if let Some(l) = &self.listen {
            write!(f, ", listening on {l}")?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error(
        "another zlh serve owns {path}: {holder}{heartbeat}. Only one executor may serve a database; stop it first"
    )]
    Held {
        path: PathBuf,
        holder: String,
        heartbeat: String,
    },
    #[error("locking {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; released when dropped (or when the process dies).
#[derive(Debug)]
pub struct InstanceLock {
    file: File,
    path: PathBuf,
    holder: Holder,
}

impl InstanceLock {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Records the address actually listened on: with `--listen …:0` the port is only
    /// known once bound, and "who holds this data dir" should name the real one.
    pub fn set_listen(&mut self, listen: &str) -> Result<(), InstanceError> {
        self.holder.listen = Some(listen.to_string());
        write_holder(&mut self.file, &self.holder).map_err(|source| InstanceError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

fn write_holder(file: &mut File, holder: &Holder) -> std::io::Result<()> {
    let text = serde_json::to_string(holder).map_err(std::io::Error::other)?;
    file.set_len(0)?;
    file.rewind()?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

/// Takes the exclusive lock on `data_dir` without blocking, or says who holds it.
pub fn acquire(
    data_dir: &Path,
    host: &str,
    listen: Option<&str>,
) -> Result<InstanceLock, InstanceError> {
    let path = data_dir.join(LOCK_FILE);
    let io = |source| InstanceError::Io {
        path: path.clone(),
        source,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(TryLockError::WouldBlock) => {
            let mut text = String::new();
            let _ = file.read_to_string(&mut text);
            let holder = serde_json::from_str::<Holder>(&text)
                .map(|h| h.to_string())
                .unwrap_or_else(|_| "an unknown process".to_string());
            let heartbeat = read_instance(&data_dir.join(crate::db::DB_FILE))
                .map(|i| {
                    format!(
                        ", last heartbeat {}",
                        crate::util::format_ts(i.heartbeat_at)
                    )
                })
                .unwrap_or_default();
            return Err(InstanceError::Held {
                path,
                holder,
                heartbeat,
            });
        }
        Err(TryLockError::Error(e)) => return Err(io(e)),
    }
    let holder = Holder {
        host: host.to_string(),
        pid: std::process::id(),
        started_at: now_ms(),
        listen: listen.map(str::to_string),
    };
    write_holder(&mut file, &holder).map_err(io)?;
    Ok(InstanceLock { file, path, holder })
}

/// Whether some process holds the lock on `data_dir` right now (for commands that
/// must not run while serving, e.g. restore).
pub fn is_held(data_dir: &Path) -> Result<Option<String>, InstanceError> {
    let path = data_dir.join(LOCK_FILE);
    let file = match OpenOptions::new().read(true).write(true).open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(InstanceError::Io { path, source }),
    };
    match file.try_lock() {
        Ok(()) => Ok(None),
        Err(TryLockError::WouldBlock) => {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            Ok(Some(
                serde_json::from_str::<Holder>(&text)
                    .map(|h| h.to_string())
                    .unwrap_or_else(|_| "an unknown process".into()),
            ))
        }
        Err(TryLockError::Error(source)) => Err(InstanceError::Io { path, source }),
    }
}

/// The holder of a data dir's lock right now, as written in the lock file (None when
/// nobody holds it or the file says nothing readable).
pub fn holder(data_dir: &Path) -> Option<Holder> {
    let path = data_dir.join(LOCK_FILE);
    let file = File::open(&path).ok()?;
    match file.try_lock() {
        Err(TryLockError::WouldBlock) => {
            serde_json::from_str(&std::fs::read_to_string(&path).ok()?).ok()
        }
        _ => None,
    }
}

/// The data dirs that running `zlh serve` processes of this user hold, found from their
/// open lock files in `/proc/<pid>/fd` (how the dir was configured — flag, env,
/// zlh.toml, working directory — does not matter). Linux only; elsewhere empty.
pub fn running_data_dirs() -> Vec<(PathBuf, Holder)> {
    let mut found: Vec<(PathBuf, Holder)> = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return found;
    };
    for p in procs.flatten() {
        let pid = p.file_name();
        if !pid.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        // Other users' processes are unreadable: skipped, not an error.
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            if target.file_name().is_none_or(|n| n != LOCK_FILE) {
                continue;
            }
            let Some(dir) = target.parent() else {
                continue;
            };
            if found.iter().any(|(d, _)| d == dir) {
                continue;
            }
            if let Some(h) = holder(dir) {
                found.push((dir.to_path_buf(), h));
            }
        }
    }
    found
}

/// The `instance` row.
#[derive(Debug, Clone, Serialize)]
pub struct Instance {
    pub host: String,
    pub host_id: String,
    pub pid: i64,
    pub boot_epoch: i64,
    pub started_at: i64,
    pub heartbeat_at: i64,
    pub stopped_at: Option<i64>,
}

pub fn get(conn: &Connection) -> rusqlite::Result<Option<Instance>> {
    conn.query_row(
        "SELECT host, host_id, pid, boot_epoch, started_at, heartbeat_at, stopped_at
         FROM instance WHERE id = 1",
        [],
        |r| {
            Ok(Instance {
                host: r.get(0)?,
                host_id: r.get(1)?,
                pid: r.get(2)?,
                boot_epoch: r.get(3)?,
                started_at: r.get(4)?,
                heartbeat_at: r.get(5)?,
                stopped_at: r.get(6)?,
            })
        },
    )
    .optional()
}

/// Reads the instance row of the database at `path` read-only, if it exists.
fn read_instance(path: &Path) -> Option<Instance> {
    let conn =
        Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY).ok()?;
    get(&conn).ok().flatten()
}

/// What starting this boot found.
#[derive(Debug, Clone, Serialize)]
pub struct Boot {
    pub boot_epoch: i64,
    /// The host identity that served the database before, when it differs from ours.
    pub previous_host_id: Option<String>,
}

impl Boot {
    pub fn host_changed(&self) -> bool {
        self.previous_host_id.is_some()
    }
}

/// Records this process as the executor (call while holding the lock), bumping the
/// boot epoch. Reports a change of host identity.
pub fn register(conn: &Connection, host: &str, host_id: &str) -> rusqlite::Result<Boot> {
    let prev = get(conn)?;
    let now = now_ms();
    let boot_epoch = prev.as_ref().map(|p| p.boot_epoch + 1).unwrap_or(1);
    conn.execute(
        "INSERT INTO instance (id, host, host_id, pid, boot_epoch, started_at, heartbeat_at, stopped_at)
         VALUES (1, ?1, ?2, ?3, ?4, ?5, ?5, NULL)
         ON CONFLICT (id) DO UPDATE SET host = excluded.host, host_id = excluded.host_id,
           pid = excluded.pid, boot_epoch = excluded.boot_epoch, started_at = excluded.started_at,
           heartbeat_at = excluded.heartbeat_at, stopped_at = NULL",
        params![host, host_id, std::process::id(), boot_epoch, now],
    )?;
    Ok(Boot {
        boot_epoch,
        previous_host_id: prev.map(|p| p.host_id).filter(|h| h != host_id),
    })
}

pub fn heartbeat(conn: &Connection, boot_epoch: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE instance SET heartbeat_at = ?1 WHERE id = 1 AND boot_epoch = ?2",
        params![now_ms(), boot_epoch],
    )?;
    Ok(())
}

pub fn mark_stopped(conn: &Connection, boot_epoch: i64) -> rusqlite::Result<()> {
    conn.execute(
        "UPDATE instance SET stopped_at = ?1, heartbeat_at = ?1 WHERE id = 1 AND boot_epoch = ?2",
        params![now_ms(), boot_epoch],
    )?;
    Ok(())
}
