//! The artifact mirror (DESIGN §7): server jars and JREs that agents download,
//! served by `zlh serve` at `/artifacts/<path>` from `<data_dir>/artifacts/<path>`,
//! with a sha256 index in the `artifacts` table.
//!
//! An artifact gets into the mirror in one of two ways:
//! - `zlh artifacts add <path> <file>` imports a file ([`Mirror::add_file`]);
//! - on first request, when `artifacts.upstream` is on and the path is one of the
//!   well-known conventions ([`upstream::Known`]), it is fetched from its public
//!   upstream and checked against the hash upstream publishes ([`Mirror::ensure`]).
//!
//! Files are written to a temp file, fsynced and renamed into place, and only then
//! recorded in the index: a listed artifact is always complete. Files on disk that
//! the index does not list are never served.

pub mod upstream;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rusqlite::Connection;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::ArtifactsConfig;
use crate::db::{Db, DbError, now_ms};

use upstream::{Expect, Known, Upstream};
pub use upstream::{USER_AGENT, UpstreamError};

/// The mirror's directory inside the data dir.
pub const DIR: &str = "artifacts";
/// Temp files live here, inside the mirror so the final rename never crosses a
/// filesystem. `~` is not allowed in artifact paths, so no path can name them.
const PARTIAL_DIR: &str = "~partial";
/// Temp files older than this are leftovers of a crash and are removed at start.
const STALE_PARTIAL: Duration = Duration::from_secs(24 * 3600);
/// Longest artifact path accepted.
pub const MAX_PATH_LEN: usize = 512;

/// Where an artifact's bytes came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ArtifactSource {
    /// `zlh artifacts add`.
    Import,
    Mojang,
    Fabric,
    Paper,
    Adoptium,
}

impl ArtifactSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ArtifactSource::Import => "import",
            ArtifactSource::Mojang => "mojang",
            ArtifactSource::Fabric => "fabric",
            ArtifactSource::Paper => "paper",
            ArtifactSource::Adoptium => "adoptium",
        }
    }
}

impl std::fmt::Display for ArtifactSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for ArtifactSource {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            ArtifactSource::Import,
            ArtifactSource::Mojang,
            ArtifactSource::Fabric,
            ArtifactSource::Paper,
            ArtifactSource::Adoptium,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
        .ok_or_else(|| format!("unknown artifact source '{s}'"))
    }
}

/// One artifact of the mirror, as recorded in the index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactInfo {
    /// Path inside the mirror, e.g. `minecraft/vanilla/1.21.4/server.jar`.
    pub path: String,
    /// Lowercase hex sha256 of the file.
    pub sha256: String,
    /// Bytes.
    pub size: u64,
    pub source: ArtifactSource,
    /// When it was stored, ms since the Unix epoch.
    pub created_at: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("invalid artifact path '{path}': {reason}")]
    InvalidPath { path: String, reason: String },
    #[error(
        "artifact {path} is not in the mirror{why}; import it with `zlh artifacts add {path} <file>`"
    )]
    NotInMirror { path: String, why: String },
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0} is not a regular file")]
    NotAFile(PathBuf),
    #[error("setting up the upstream HTTP client: {0}")]
    Client(String),
    #[error(transparent)]
    Db(#[from] DbError),
    /// The fill task stopped without a result (it panicked or the runtime shut down).
    #[error("fetching {0} from upstream stopped before it finished")]
    Interrupted(String),
    /// The outcome of an upstream fill that this call waited for (single-flight).
    #[error(transparent)]
    Shared(Arc<ArtifactError>),
}

/// How an [`ArtifactError`] should be answered over HTTP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The path itself is unacceptable (400).
    BadPath,
    /// Not in the mirror and not fillable (404).
    NotFound,
    /// An upstream failed or sent something wrong (502).
    Upstream,
    /// Our own disk or database (500).
    Internal,
}

impl ArtifactError {
    /// The error itself, looking through [`ArtifactError::Shared`].
    pub fn inner(&self) -> &ArtifactError {
        match self {
            ArtifactError::Shared(e) => e.inner(),
            e => e,
        }
    }

    pub fn class(&self) -> ErrorClass {
        match self.inner() {
            ArtifactError::InvalidPath { .. } => ErrorClass::BadPath,
            ArtifactError::NotInMirror { .. }
            | ArtifactError::Upstream(UpstreamError::Unknown { .. }) => ErrorClass::NotFound,
            ArtifactError::Upstream(_) => ErrorClass::Upstream,
            ArtifactError::Io { .. }
            | ArtifactError::NotAFile(_)
            | ArtifactError::Client(_)
            | ArtifactError::Db(_)
            | ArtifactError::Interrupted(_)
            | ArtifactError::Shared(_) => ErrorClass::Internal,
        }
    }
}

/// Checks an artifact path: relative, at most [`MAX_PATH_LEN`] bytes, `/`-separated
/// segments of `[A-Za-z0-9._+-]` that are neither empty nor `.` / `..`. A path that
/// passes can be joined to the mirror root without escaping it, and is safe to paste
/// into a shell or a URL.
pub fn validate_path(path: &str) -> Result<(), ArtifactError> {
    let bad = |reason: &str| ArtifactError::InvalidPath {
        path: path.chars().take(MAX_PATH_LEN + 8).collect(),
        reason: reason.to_string(),
    };
    if path.is_empty() {
        return Err(bad("it is empty"));
    }
    if path.len() > MAX_PATH_LEN {
        return Err(bad(&format!("longer than {MAX_PATH_LEN} bytes")));
    }
    if path.starts_with('/') {
        return Err(bad("it must be relative (no leading '/')"));
    }
    for segment in path.split('/') {
        match segment {
            "" => return Err(bad("empty segment ('//' or a trailing '/')")),
            "." | ".." => return Err(bad("'.' and '..' segments are not allowed")),
            s => {
                if let Some(c) = s
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '+' | '-')))
                {
                    return Err(bad(&format!(
                        "character {c:?} is not allowed (only A-Z a-z 0-9 . _ + - and '/' between segments)"
                    )));
                }
            }
        }
    }
    Ok(())
}

/// Counters for `/metrics`.
#[derive(Debug, Default)]
pub struct MirrorStats {
    /// Upstream fills that stored an artifact.
    pub fills_stored: AtomicU64,
    /// Upstream fills that failed (nothing stored).
    pub fills_failed: AtomicU64,
    /// Calls currently waiting for an upstream fill.
    pub waiters: AtomicU64,
    /// Calls answered from the negative cache (an upstream said "no such version"
    /// a moment ago), without asking it again.
    pub negative_hits: AtomicU64,
    /// Requests for a missing artifact refused for want of a credential.
    pub fills_refused: AtomicU64,
}

/// How long an upstream's "no such version" is believed without asking again.
const NEGATIVE_TTL: Duration = Duration::from_secs(600);
/// At most this many remembered misses (expired ones go first; then all).
const NEGATIVE_MAX: usize = 4096;

/// Download progress of one fill: bytes done, and the total when known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    pub done: u64,
    pub total: Option<u64>,
}

type Outcome = Option<Result<ArtifactInfo, Arc<ArtifactError>>>;

/// One upstream fill in progress; every `ensure` of the same path waits on it.
struct Flight {
    progress: watch::Sender<Progress>,
    outcome: watch::Sender<Outcome>,
}

struct Inner {
    root: PathBuf,
    db: Db,
    upstream: Option<Upstream>,
    flights: Mutex<HashMap<String, Arc<Flight>>>,
    /// Failed look-ups: path → (until, the error).
    negative: Mutex<HashMap<String, (std::time::Instant, Arc<ArtifactError>)>>,
    stats: MirrorStats,
}

/// The artifact mirror; cheap to clone.
#[derive(Clone)]
pub struct Mirror {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("root", &self.inner.root)
            .field("upstream", &self.inner.upstream.is_some())
            .finish()
    }
}

/// What the index and the disk say about a path.
enum Presence {
    Present(ArtifactInfo),
    Absent,
    /// Listed in the index, but the file is missing or has another size.
    Damaged(ArtifactInfo, String),
}

impl Mirror {
    /// The mirror in `<data_dir>/artifacts` (created if needed), filling from
    /// upstream as `config` says.
    pub fn new(data_dir: &Path, db: Db, config: &ArtifactsConfig) -> Result<Mirror, ArtifactError> {
        let upstream = if config.upstream {
            Some(Upstream::new(config).map_err(|e| ArtifactError::Client(e.to_string()))?)
        } else {
            None
        };
        Mirror::build(data_dir, db, upstream)
    }

    /// The mirror without upstream fill (for the CLI, which only imports and lists).
    pub fn offline(data_dir: &Path, db: Db) -> Result<Mirror, ArtifactError> {
        Mirror::build(data_dir, db, None)
    }

    fn build(data_dir: &Path, db: Db, upstream: Option<Upstream>) -> Result<Mirror, ArtifactError> {
        let root = data_dir.join(DIR);
        let partial = root.join(PARTIAL_DIR);
        std::fs::create_dir_all(&partial).map_err(|source| ArtifactError::Io {
            what: "creating directory",
            path: partial.clone(),
            source,
        })?;
        remove_stale_partials(&partial);
        Ok(Mirror {
            inner: Arc::new(Inner {
                root,
                db,
                upstream,
                flights: Mutex::new(HashMap::new()),
                negative: Mutex::new(HashMap::new()),
                stats: MirrorStats::default(),
            }),
        })
    }

    /// The mirror's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    pub fn upstream_enabled(&self) -> bool {
        self.inner.upstream.is_some()
    }

    /// Whether a miss of `path` would go to an upstream (fill on, a source known).
    pub fn fillable(&self, path: &str) -> bool {
        self.inner.upstream.is_some() && validate_path(path).is_ok() && Known::parse(path).is_some()
    }

    /// A recent "no such version" of `path`, if one is remembered.
    fn negative_hit(&self, path: &str) -> Option<Arc<ArtifactError>> {
        let mut neg = self
            .inner
            .negative
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match neg.get(path) {
            Some((until, e)) if *until > std::time::Instant::now() => Some(e.clone()),
            Some(_) => {
                neg.remove(path);
                None
            }
            None => None,
        }
    }

    /// Remembers a failed look-up (only "unknown": a transport error or a bad
    /// download may be gone on the next try).
    fn remember_miss(&self, path: &str, e: &Arc<ArtifactError>) {
        if e.class() != ErrorClass::NotFound {
            return;
        }
        let now = std::time::Instant::now();
        let mut neg = self
            .inner
            .negative
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if neg.len() >= NEGATIVE_MAX {
            neg.retain(|_, (until, _)| *until > now);
            if neg.len() >= NEGATIVE_MAX {
                neg.clear();
            }
        }
        neg.insert(path.to_string(), (now + NEGATIVE_TTL, e.clone()));
    }

    pub fn stats(&self) -> &MirrorStats {
        &self.inner.stats
    }

    /// Where the file of a (validated) artifact path lives.
    pub fn file_path(&self, path: &str) -> PathBuf {
        self.inner.root.join(path)
    }

    /// The artifact at `path` if the mirror has it (listed in the index, and its file
    /// on disk has the recorded size).
    pub async fn lookup(&self, path: &str) -> Result<Option<ArtifactInfo>, ArtifactError> {
        validate_path(path)?;
        match self.presence(path).await? {
            Presence::Present(info) => Ok(Some(info)),
            Presence::Absent | Presence::Damaged(..) => Ok(None),
        }
    }

    /// The artifact at `path`, fetched from upstream first when it is missing and
    /// upstream fill knows the path. See [`Mirror::ensure_with_progress`].
    pub async fn ensure(&self, path: &str) -> Result<ArtifactInfo, ArtifactError> {
        self.ensure_with_progress(path, |_, _| {}).await
    }

    /// Like [`Mirror::ensure`], calling `progress(bytes_done, total)` while an upstream
    /// download runs (at once when the call joins it, then after every chunk).
    ///
    /// Concurrent calls for the same path share one upstream fetch: the first starts
    /// it as a task of its own (so it finishes even if that caller goes away) and
    /// every caller waits for its outcome, success or error.
    pub async fn ensure_with_progress<F>(
        &self,
        path: &str,
        progress: F,
    ) -> Result<ArtifactInfo, ArtifactError>
    where
        F: Fn(u64, Option<u64>) + Send + Sync,
    {
        validate_path(path)?;
        let damaged = match self.presence(path).await? {
            Presence::Present(info) => return Ok(info),
            Presence::Absent => None,
            Presence::Damaged(_, why) => Some(why),
        };
        let not_in_mirror = |why: &str| ArtifactError::NotInMirror {
            path: path.to_string(),
            why: match &damaged {
                Some(d) => format!(" ({d}){why}"),
                None => why.to_string(),
            },
        };
        if self.inner.upstream.is_none() {
            return Err(not_in_mirror(
                " and upstream fill is off (artifacts.upstream = false)",
            ));
        }
        let Some(known) = Known::parse(path) else {
            return Err(not_in_mirror(
                " and upstream fill has no source for this path",
            ));
        };

        if let Some(e) = self.negative_hit(path) {
            self.inner
                .stats
                .negative_hits
                .fetch_add(1, Ordering::Relaxed);
            return Err(ArtifactError::Shared(e));
        }
        let flight = self.join_flight(path, known);
        let mut progress_rx = flight.progress.subscribe();
        let mut outcome_rx = flight.outcome.subscribe();
        drop(flight);
        let _waiting = Waiting::new(&self.inner.stats.waiters);
        let mut reported = None;
        loop {
            // Progress first: the fill reports its last chunk before its outcome, so
            // a successful wait always ends having reported (size, Some(size)).
            let p = *progress_rx.borrow_and_update();
            if reported != Some(p) {
                progress(p.done, p.total);
                reported = Some(p);
            }
            if let Some(outcome) = outcome_rx.borrow_and_update().clone() {
                return outcome.map_err(ArtifactError::Shared);
            }
            tokio::select! {
                changed = outcome_rx.changed() => {
                    if changed.is_err() {
                        // The fill task's guard always sends an outcome before it drops
                        // the sender; this is only reachable if that guard never ran.
                        return Err(ArtifactError::Interrupted(path.to_string()));
                    }
                }
                Ok(()) = progress_rx.changed() => {}
            }
        }
    }

    /// The flight for `path`: the running one, or a new one started as a task.
    fn join_flight(&self, path: &str, known: Known) -> Arc<Flight> {
        let mut flights = self
            .inner
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = flights.get(path) {
            return f.clone();
        }
        let flight = Arc::new(Flight {
            progress: watch::Sender::new(Progress::default()),
            outcome: watch::Sender::new(None),
        });
        flights.insert(path.to_string(), flight.clone());
        drop(flights);

        let guard = FlightGuard {
            mirror: self.clone(),
            path: path.to_string(),
            flight: flight.clone(),
            result: None,
        };
        tokio::spawn(async move {
            let result = guard.mirror.fill(&guard.path, &known, &guard.flight).await;
            guard.finish(result);
        });
        flight
    }

    /// Fetches `path` from upstream, verifies, stores and records it.
    async fn fill(
        &self,
        path: &str,
        known: &Known,
        flight: &Flight,
    ) -> Result<ArtifactInfo, ArtifactError> {
        // Another flight may have stored it between our caller's check and this one.
        let previous = match self.presence(path).await? {
            Presence::Present(info) => return Ok(info),
            Presence::Absent => None,
            Presence::Damaged(info, _) => Some(info),
        };
        let Some(upstream) = &self.inner.upstream else {
            return Err(ArtifactError::NotInMirror {
                path: path.to_string(),
                why: " and upstream fill is off".into(),
            });
        };
        // Trust on first use: a refetch of an upstream that publishes no hash must
        // match what the first fetch recorded.
        let pinned = previous
            .filter(|p| p.source == known.source())
            .map(|p| p.sha256);
        let resolved = upstream.resolve(path, known, pinned).await?;
        tracing::info!(%path, url = %resolved.url, size = ?resolved.size, "fetching artifact from upstream");

        let temp = TempFile::new(&self.inner.root)?;
        let report = |done, total| {
            flight.progress.send_replace(Progress { done, total });
        };
        let got = upstream
            .download(path, &resolved, &temp.path, &report)
            .await?;
        upstream::verify(path, &resolved, &got)?;
        if matches!(resolved.expect, Expect::TrustOnFirstUse(None)) {
            tracing::warn!(
                %path,
                sha256 = %got.sha256,
                "upstream publishes no hash for this artifact: recording the first fetch's sha256 (trust on first use)"
            );
        }
        let info = ArtifactInfo {
            path: path.to_string(),
            sha256: got.sha256,
            size: got.size,
            source: resolved.source,
            created_at: now_ms(),
        };
        let dest = self.file_path(path);
        tokio::task::spawn_blocking(move || temp.persist(&dest))
            .await
            .map_err(|e| ArtifactError::Interrupted(format!("{path}: {e}")))??;
        let record = info.clone();
        self.inner
            .db
            .write(move |tx| put(tx, &record).map_err(ArtifactError::from))
            .await?;
        tracing::info!(%path, sha256 = %info.sha256, size = info.size, source = %info.source, "artifact stored");
        Ok(info)
    }

    async fn presence(&self, path: &str) -> Result<Presence, ArtifactError> {
        let owned = path.to_string();
        let row = self
            .inner
            .db
            .call(move |c| get(c, &owned).map_err(ArtifactError::from))
            .await?;
        let Some(info) = row else {
            return Ok(Presence::Absent);
        };
        let file = self.file_path(path);
        let why = match tokio::fs::metadata(&file).await {
            Ok(m) if m.is_file() && m.len() == info.size => return Ok(Presence::Present(info)),
            Ok(m) if m.is_file() => format!(
                "{} is {} bytes but the index says {}",
                file.display(),
                m.len(),
                info.size
            ),
            Ok(_) => format!("{} is not a regular file", file.display()),
            Err(e) => format!("{}: {e}", file.display()),
        };
        tracing::warn!(%path, problem = %why, "indexed artifact is damaged on disk");
        Ok(Presence::Damaged(info, why))
    }

    /// Imports `file` as the artifact at `path` (replacing any artifact there):
    /// copies it into the mirror atomically and records its sha256. Synchronous, for
    /// the CLI; works beside a running `zlh serve`.
    pub fn add_file(&self, path: &str, file: &Path) -> Result<ArtifactInfo, ArtifactError> {
        validate_path(path)?;
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| ArtifactError::Io {
                what,
                path: p,
                source,
            }
        };
        let mut src = std::fs::File::open(file).map_err(io("opening", file))?;
        if !src.metadata().map_err(io("reading", file))?.is_file() {
            return Err(ArtifactError::NotAFile(file.to_path_buf()));
        }
        let temp = TempFile::new(&self.inner.root)?;
        let mut out = std::fs::File::create(&temp.path).map_err(io("creating", &temp.path))?;
        let mut hasher = Sha256::new();
        let mut size: u64 = 0;
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = match src.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io("reading", file)(e)),
            };
            hasher.update(&buf[..n]);
            out.write_all(&buf[..n])
                .map_err(io("writing", &temp.path))?;
            size += n as u64;
        }
        out.sync_all().map_err(io("syncing", &temp.path))?;
        drop(out);
        let info = ArtifactInfo {
            path: path.to_string(),
            sha256: hex(&hasher.finalize()),
            size,
            source: ArtifactSource::Import,
            created_at: now_ms(),
        };
        temp.persist(&self.file_path(path))?;
        let mut conn = self.inner.db.conn()?;
        crate::db::write_tx(&mut conn, |tx| put(tx, &info).map_err(ArtifactError::from))?;
        Ok(info)
    }
}

/// Retires the flight and publishes its outcome when the fill task ends, also when
/// it panics: no waiter is left hanging and the next call can try again.
struct FlightGuard {
    mirror: Mirror,
    path: String,
    flight: Arc<Flight>,
    result: Option<Result<ArtifactInfo, ArtifactError>>,
}

impl FlightGuard {
    fn finish(mut self, result: Result<ArtifactInfo, ArtifactError>) {
        self.result = Some(result);
        // Drop publishes it.
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        let result = self
            .result
            .take()
            .unwrap_or_else(|| Err(ArtifactError::Interrupted(self.path.clone())));
        // Retire before publishing: a call arriving from now on finds the stored
        // artifact (its index row is already written) or starts a fresh attempt;
        // none joins a flight that is over.
        self.mirror
            .inner
            .flights
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.path);
        let stats = &self.mirror.inner.stats;
        match &result {
            Ok(_) => stats.fills_stored.fetch_add(1, Ordering::Relaxed),
            Err(e) => {
                tracing::warn!(path = %self.path, error = %e, "upstream fill failed");
                stats.fills_failed.fetch_add(1, Ordering::Relaxed)
            }
        };
        let result = result.map_err(Arc::new);
        if let Err(e) = &result {
            self.mirror.remember_miss(&self.path, e);
        }
        self.flight.outcome.send_replace(Some(result));
    }
}

/// Counts a caller in [`MirrorStats::waiters`] for as long as it waits.
struct Waiting<'a>(&'a AtomicU64);

impl<'a> Waiting<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Waiting(counter)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A temp file in the mirror's partial dir, removed unless persisted.
struct TempFile {
    path: PathBuf,
    persisted: bool,
}

impl TempFile {
    fn new(root: &Path) -> Result<TempFile, ArtifactError> {
        let dir = root.join(PARTIAL_DIR);
        std::fs::create_dir_all(&dir).map_err(|source| ArtifactError::Io {
            what: "creating directory",
            path: dir.clone(),
            source,
        })?;
        Ok(TempFile {
            path: dir.join(format!(
                "{}-{:016x}.partial",
                std::process::id(),
                fastrand::u64(..)
            )),
            persisted: false,
        })
    }

    /// Renames the (already fsynced) file to `dest` and fsyncs the directory, so
    /// the artifact survives a crash once this returns.
    fn persist(mut self, dest: &Path) -> Result<(), ArtifactError> {
        let io = |what: &'static str, p: &Path| {
            let p = p.to_path_buf();
            move |source| ArtifactError::Io {
                what,
                path: p,
                source,
            }
        };
        let parent = dest.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(parent).map_err(io("creating directory", parent))?;
        std::fs::rename(&self.path, dest).map_err(io("moving the new file into place at", dest))?;
        self.persisted = true;
        std::fs::File::open(parent)
            .and_then(|d| d.sync_all())
            .map_err(io("syncing directory", parent))?;
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.persisted {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Best effort: temp files left by a crash. Young ones may belong to a running
/// `zlh artifacts add` in another process, so only old ones go.
fn remove_stale_partials(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > STALE_PARTIAL);
        if old && let Err(e) = std::fs::remove_file(entry.path()) {
            tracing::warn!(file = %entry.path().display(), error = %e, "removing a stale partial download");
        }
    }
}

pub(crate) use crate::util::hex;

/// A stored row with its types (a row the mirror did not write is a database error).
fn from_row(r: crate::db::artifacts::Row) -> Result<ArtifactInfo, DbError> {
    let conversion = |i: usize, e: String| {
        DbError::from(rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            e.into(),
        ))
    };
    Ok(ArtifactInfo {
        size: u64::try_from(r.size).map_err(|e| conversion(2, e.to_string()))?,
        source: r.source.parse().map_err(|e| conversion(3, e))?,
        path: r.path,
        sha256: r.sha256,
        created_at: r.created_at,
    })
}

/// The index row of `path`.
pub fn get(conn: &Connection, path: &str) -> Result<Option<ArtifactInfo>, DbError> {
    crate::db::artifacts::get(conn, path)?
        .map(from_row)
        .transpose()
}

/// Every index row, by path.
pub fn list(conn: &Connection) -> Result<Vec<ArtifactInfo>, DbError> {
    crate::db::artifacts::list(conn)?
        .into_iter()
        .map(from_row)
        .collect()
}

/// Records (or replaces) an index row.
fn put(conn: &Connection, info: &ArtifactInfo) -> Result<(), DbError> {
    crate::db::artifacts::put(
        conn,
        &crate::db::artifacts::Row {
            path: info.path.clone(),
            sha256: info.sha256.clone(),
            size: i64::try_from(info.size).unwrap_or(i64::MAX),
            source: info.source.as_str().to_string(),
            created_at: info.created_at,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_mirror_paths() {
        for ok in [
            "minecraft/vanilla/1.21.4/server.jar",
            "java/21/OpenJDK21.tar.gz",
            "a",
            "mods/fabric-api-0.100.0+1.21.jar",
            "x/.../y",
            "a_b-c/d",
        ] {
            assert!(validate_path(ok).is_ok(), "{ok}");
        }
    }

    #[test]
    fn refuses_traversal_and_odd_paths() {
        let long = "a/".repeat(300) + "b";
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../etc/passwd",
            "a/./b",
            ".",
            "..",
            "a//b",
            "a/",
            "a\\b",
            "a b",
            "%2e%2e/x",
            "a/\0",
            "ünï/x",
            "~partial/x",
            long.as_str(),
        ] {
            assert!(validate_path(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0, 1, 0xab, 0xff]), "0001abff");
    }
}
