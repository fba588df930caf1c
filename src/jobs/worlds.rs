//! World jobs, all in the lane `server:<id>` (so they never race a start, stop or
//! provisioning run of the same server): backups, restores, backup deletion and
//! retention, schedule firings, plus the scheduler loop that enqueues the firings.
//!
//! A backup pauses the game's saving through its console first (`save-off`, then
//! `save-all flush`, waiting for the game to report the save) and always resumes it
//! (`save-on`) afterwards, also when the copy failed. Local nodes get a gzipped tar of
//! the server directory (without logs and caches) written atomically under
//! `<data_dir>/world-backups/<server>/`, with its SHA-256; Proxmox nodes a `vzdump` of
//! the container to the node's `backup_storage`.
//!
//! A restore into the same server checks and unpacks the archive beside the world
//! while the game still runs, then stops the game, swaps the directories, starts it and
//! waits for ready; if the restored world does not come up, the previous one is put
//! back and started again. Nothing is touched before the archive proved good.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::servers::{
    ADDRESS_DEADLINE, START_DEADLINE, StepError, Work, publish, reach_agent, start, wait_ready,
    work_handlers,
};
use crate::agent::AgentState;
use crate::agent::client::AgentClient;
use crate::db::{Db, now_ms};
use crate::domain::DomainError;
use crate::domain::backups::{self, Backup, BackupState};
use crate::domain::edge::VELOCITY;
use crate::domain::schedules::{self, ScheduleKind};
use crate::domain::servers::{self, ServerStatus};
use crate::jobs::services::Services;
use crate::queue::{Handler, JobFailure, JobResult, Outcome, QueueError, WorkerHandle};
use crate::runtime::{NodeRuntime, Runtime, RuntimeError};

/// Where local world backups live, under the data dir.
pub const BACKUP_DIR: &str = "world-backups";

/// Parts of a server directory a backup leaves out: logs, caches and what the game
/// unpacks again by itself (the Java runtime and agent state live outside it).
const EXCLUDED: &[&str] = &[
    "logs",
    "crash-reports",
    "cache",
    ".cache",
    "libraries",
    "versions",
];

/// How long the game may take to confirm `save-all flush`.
const FLUSH_DEADLINE: Duration = Duration::from_secs(120);
/// What a Minecraft server prints once `save-all` is done.
const SAVED: &str = "Saved the game";

static TICKS: AtomicU64 = AtomicU64::new(0);

/// Scheduler ticks since this process started (`zlh_schedule_ticks_total`).
pub fn scheduler_ticks() -> u64 {
    TICKS.load(Ordering::Relaxed)
}

#[derive(Debug, Deserialize)]
struct BackupJob {
    backup_id: i64,
}

#[derive(Debug, Deserialize)]
struct DeleteJob {
    backup_ids: Vec<i64>,
}

#[derive(Debug, Deserialize)]
struct FireJob {
    schedule_id: i64,
    slot: i64,
}

fn text(e: StepError) -> String {
    match e {
        StepError::Transient(m) | StepError::Fatal(m) => m,
    }
}

fn rt_text(e: RuntimeError) -> String {
    e.to_string()
}

pub fn handlers(svc: Arc<Services>) -> Vec<Arc<dyn Handler>> {
    work_handlers(
        svc,
        &[
            backups::JOB_BACKUP,
            backups::JOB_RESTORE,
            backups::JOB_DELETE,
            schedules::JOB_FIRE,
        ],
        Duration::from_secs(4 * 3600),
        |kind, payload, mut w| async move {
            let decode = |e: serde_json::Error| {
                JobFailure::fatal(format!("job {}: bad payload: {e}", w.ctx.id))
            };
            match kind {
                backups::JOB_BACKUP => {
                    let j: BackupJob = serde_json::from_value(payload).map_err(decode)?;
                    backup_job(&mut w, j.backup_id).await
                }
                backups::JOB_RESTORE => {
                    let j: BackupJob = serde_json::from_value(payload).map_err(decode)?;
                    restore_job(&mut w, j.backup_id).await
                }
                backups::JOB_DELETE => {
                    let j: DeleteJob = serde_json::from_value(payload).map_err(decode)?;
                    delete_backups(&w, &j.backup_ids, "deleted on request")
                        .await
                        .map_err(JobFailure::retry)?;
                    Ok(Outcome::Complete)
                }
                schedules::JOB_FIRE => {
                    let j: FireJob = serde_json::from_value(payload).map_err(decode)?;
                    fire_job(&mut w, j.schedule_id, j.slot).await
                }
                _ => Err(JobFailure::fatal(format!("unknown world job {kind}"))),
            }
        },
    )
}

/// Fires due schedules every `every` until `stop` (one transaction per tick).
pub async fn run_scheduler(
    db: Db,
    worker: Option<WorkerHandle>,
    every: Duration,
    stop: CancellationToken,
) {
    loop {
        let now = now_ms().div_euclid(1000);
        match db
            .write(move |tx| schedules::tick(tx, now).map_err(QueueError::from))
            .await
        {
            Ok(fired) if !fired.is_empty() => {
                tracing::info!(jobs = ?fired, "schedules fired");
                if let Some(w) = &worker {
                    w.wake();
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(error = %e, "firing schedules failed"),
        }
        TICKS.fetch_add(1, Ordering::Relaxed);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

// ----- backups ----------------------------------------------------------------------

async fn load_backup(w: &Work, id: i64) -> Result<Option<Backup>, JobFailure> {
    w.svc
        .db
        .call(move |c| backups::get(c, id))
        .await
        .map_err(|e| JobFailure::retry(e.to_string()))
}

/// What a finished copy is.
#[derive(Clone)]
struct Copied {
    location: String,
    storage: Option<String>,
    size: i64,
    sha256: Option<String>,
    notes: Vec<String>,
}

async fn backup_job(w: &mut Work, backup_id: i64) -> JobResult {
    let Some(b) = load_backup(w, backup_id).await? else {
        return Ok(Outcome::Complete);
    };
    if b.state != BackupState::Pending && b.state != BackupState::Running {
        return Ok(Outcome::Complete); // done by an earlier run
    }
    let jid = w.ctx.id;
    w.fenced(move |tx, _, _| backups::mark_running(tx, backup_id, jid))
        .await
        .map_err(|e| JobFailure::retry(text(e)))?;
    match take_backup(w, &b).await {
        Ok(c) => {
            let detail = (!c.notes.is_empty()).then(|| c.notes.join("; "));
            let message = format!(
                "world backup {backup_id} completed: {} bytes at {}",
                c.size, c.location
            );
            w.fenced(move |tx, sid, jid| {
                backups::mark_completed(
                    tx,
                    backup_id,
                    &c.location,
                    c.storage.as_deref(),
                    c.size,
                    c.sha256.as_deref(),
                    detail.as_deref(),
                )?;
                servers::add_event(tx, sid, None, None, Some(jid), "system", &message)
            })
            .await
            .map_err(|e| JobFailure::retry(text(e)))?;
            // Retention runs after every successful backup.
            let sid = w.server.id;
            let prunable = w
                .svc
                .db
                .call(move |c| backups::prunable(c, sid, now_ms()))
                .await
                .map_err(|e| JobFailure::retry(e.to_string()))?;
            if !prunable.is_empty()
                && let Err(e) = delete_backups(w, &prunable, "pruned by the retention policy").await
            {
                // The backup itself is good; the next one prunes again.
                w.event(format!("retention could not prune every old backup: {e}"))
                    .await;
            }
            Ok(Outcome::Complete)
        }
        Err(e) => {
            let message = format!("world backup {backup_id} failed: {e}");
            let (err, m) = (e.clone(), message.clone());
            w.fenced(move |tx, sid, jid| {
                backups::mark_failed(tx, backup_id, &err)?;
                servers::add_event(tx, sid, None, None, Some(jid), "system", &m)
            })
            .await
            .map_err(|e| JobFailure::retry(text(e)))?;
            Err(JobFailure::fatal(message))
        }
    }
}

/// The agent of the server, if the game is running right now.
async fn live_agent(w: &Work) -> Option<AgentClient> {
    let url = w.agent_url()?;
    let agent = w.agent(&url, &w.server.agent_token);
    match agent.status().await {
        Ok(st) if st.state == AgentState::Running && st.process_running => Some(agent),
        _ => None,
    }
}

fn count_saved(lines: &[String]) -> usize {
    lines.iter().filter(|l| l.contains(SAVED)).count()
}

/// `save-all flush`, then waits until the game reports one more save than before.
async fn flush(w: &Work, agent: &AgentClient) -> Result<(), String> {
    let before = count_saved(&agent.console_tail(1000).await.map_err(|e| e.to_string())?);
    agent
        .console_command("save-all flush")
        .await
        .map_err(|e| e.to_string())?;
    super::servers::poll(
        &w.ctx,
        "waiting for the game to confirm `save-all flush`",
        FLUSH_DEADLINE,
        || {
            let agent = agent.clone();
            async move {
                match agent.console_tail(1000).await {
                    Ok(lines) if count_saved(&lines) > before => Ok(Some(())),
                    Ok(_) => Ok(None),
                    Err(e) if e.is_transient() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await
    .map_err(text)
}

/// Pauses saving, copies, and always resumes saving.
async fn take_backup(w: &Work, b: &Backup) -> Result<Copied, String> {
    let agent = live_agent(w).await;
    let mut notes = Vec::new();
    let copied = match &agent {
        Some(agent) => {
            agent
                .console_command("save-off")
                .await
                .map_err(|e| format!("pausing the game's saving (save-off): {e}"))?;
            let copied = match flush(w, agent).await {
                Ok(()) => copy_world(w, b).await,
                Err(e) => Err(format!("flushing the world (save-all flush): {e}")),
            };
            // Always, also when the copy failed.
            let mut resumed = agent.console_command("save-on").await;
            if resumed.is_err() {
                tokio::time::sleep(Duration::from_secs(1)).await;
                resumed = agent.console_command("save-on").await;
            }
            if let Err(e) = resumed {
                let msg = format!(
                    "could not resume the game's saving after backup {} (save-on): {e}; \
                     send `save-on` on the console",
                    b.id
                );
                w.event(msg.clone()).await;
                notes.push(msg);
            }
            copied
        }
        None => {
            let msg = "the game was not running: copied without save-off / save-all flush";
            w.event(format!("world backup {}: {msg}", b.id)).await;
            notes.push(msg.to_string());
            copy_world(w, b).await
        }
    };
    copied.map(|mut c| {
        notes.append(&mut c.notes);
        c.notes = notes;
        c
    })
}

async fn copy_world(w: &Work, b: &Backup) -> Result<Copied, String> {
    match w.svc.runtime(&w.node).map_err(rt_text)? {
        NodeRuntime::Local(local) => {
            let src = local.game_dir(w.server.vmid);
            let dir = data_dir(w).join(BACKUP_DIR).join(w.server.id.to_string());
            archive(&src, &dir, b.id).await
        }
        NodeRuntime::Proxmox(rt) => {
            let storage = rt.config().backup_storage.clone().ok_or_else(|| {
                format!(
                    "node '{}' has no backup_storage setting: set it to a backup storage \
                     (e.g. a Proxmox Backup Server storage)",
                    w.node.name
                )
            })?;
            let marker = format!("zlh backup {}", b.id);
            let entry = rt
                .backup(&w.spec(), &storage, &marker)
                .await
                .map_err(rt_text)?;
            Ok(Copied {
                location: entry.volid,
                storage: Some(storage),
                size: entry.size.unwrap_or(0),
                sha256: None,
                notes: vec![],
            })
        }
    }
}

fn data_dir(w: &Work) -> PathBuf {
    std::path::absolute(&w.svc.config.data_dir).unwrap_or_else(|_| w.svc.config.data_dir.clone())
}

async fn run_tar(args: Vec<std::ffi::OsString>, what: &str) -> Result<Vec<String>, String> {
    let out = tokio::process::Command::new("tar")
        .args(&args)
        .output()
        .await
        .map_err(|e| format!("{what}: running tar: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    match out.status.code() {
        Some(0) => Ok(vec![]),
        // GNU tar: 1 = some files changed while being read (the archive is complete).
        Some(1) => Ok(vec![format!("tar: {stderr}")]),
        _ => Err(format!("{what}: tar failed ({}): {stderr}", out.status)),
    }
}

/// A gzipped tar of `src` (without [`EXCLUDED`]) written to `<dir>/<id>.tar.gz` through
/// a temp file, fsynced and renamed; its size and SHA-256.
async fn archive(src: &Path, dir: &Path, id: i64) -> Result<Copied, String> {
    if !src.is_dir() {
        return Err(format!(
            "{} does not exist: nothing to back up",
            src.display()
        ));
    }
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let dest = dir.join(format!("{id}.tar.gz"));
    let tmp = dir.join(format!(".{id}.tar.gz.tmp"));
    let mut args: Vec<std::ffi::OsString> = vec!["-czf".into(), tmp.clone().into()];
    for e in EXCLUDED {
        args.push(format!("--exclude=./{e}").into());
    }
    args.extend(["-C".into(), src.into(), ".".into()]);
    let notes = match run_tar(args, "archiving the server directory").await {
        Ok(n) => n,
        Err(e) => {
            // Temp file cleanup: the error that matters is tar's.
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    let (tmp2, dest2, dir2) = (tmp.clone(), dest.clone(), dir.to_path_buf());
    let (size, sha) = tokio::task::spawn_blocking(move || -> Result<(i64, String), String> {
        let f =
            std::fs::File::open(&tmp2).map_err(|e| format!("opening {}: {e}", tmp2.display()))?;
        f.sync_all()
            .map_err(|e| format!("syncing {}: {e}", tmp2.display()))?;
        drop(f);
        std::fs::rename(&tmp2, &dest2)
            .map_err(|e| format!("renaming into {}: {e}", dest2.display()))?;
        // The rename is durable once the directory is synced.
        std::fs::File::open(&dir2)
            .and_then(|d| d.sync_all())
            .map_err(|e| format!("syncing {}: {e}", dir2.display()))?;
        sha256_file(&dest2)
    })
    .await
    .map_err(|e| format!("hashing the archive: {e}"))??;
    Ok(Copied {
        location: dest.to_string_lossy().into_owned(),
        storage: None,
        size,
        sha256: Some(sha),
        notes,
    })
}

/// Size and SHA-256 (hex) of a file.
fn sha256_file(path: &Path) -> Result<(i64, String), String> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("opening {}: {e}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut size = 0i64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        size += n as i64;
        h.update(&buf[..n]);
    }
    Ok((size, crate::util::hex(&h.finalize())))
}

/// Checks a local archive against its recorded checksum and unpacks it into a fresh
/// `into` (removed again when anything fails).
pub(crate) async fn unpack_checked(b: &Backup, into: &Path) -> Result<(), String> {
    let archive = PathBuf::from(
        b.location
            .clone()
            .ok_or_else(|| format!("backup {} has no archive", b.id))?,
    );
    let want = b
        .sha256
        .clone()
        .ok_or_else(|| format!("backup {} has no checksum", b.id))?;
    let a2 = archive.clone();
    let (_, got) = tokio::task::spawn_blocking(move || sha256_file(&a2))
        .await
        .map_err(|e| format!("hashing the archive: {e}"))??;
    if got != want {
        return Err(format!(
            "{} does not match its checksum (expected sha256 {want}, got {got}): the archive \
             is damaged",
            archive.display()
        ));
    }
    // What an earlier run left must go, or it would mix with the unpacked world.
    match tokio::fs::remove_dir_all(into).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("clearing {}: {e}", into.display())),
    }
    tokio::fs::create_dir_all(into)
        .await
        .map_err(|e| format!("creating {}: {e}", into.display()))?;
    let args = vec![
        "-xzf".into(),
        archive.into_os_string(),
        "-C".into(),
        into.as_os_str().to_os_string(),
    ];
    if let Err(e) = run_tar(args, "unpacking the archive").await {
        remove_leftover(into).await;
        return Err(e);
    }
    Ok(())
}

/// Deletes backups' copies and marks their rows `deleted` (protected ones are skipped).
async fn delete_backups(w: &Work, ids: &[i64], why: &str) -> Result<(), String> {
    for &id in ids {
        let Some(b) = load_backup(w, id).await.map_err(|e| e.message)? else {
            continue;
        };
        if b.protected || b.state == BackupState::Deleted {
            continue;
        }
        if let Some(loc) = &b.location {
            match b.kind.as_str() {
                "proxmox" => {
                    let storage = b.storage.clone().unwrap_or_default();
                    match w.svc.runtime(&w.node).map_err(rt_text)? {
                        NodeRuntime::Proxmox(rt) => {
                            rt.delete_backup(&storage, loc).await.map_err(rt_text)?
                        }
                        NodeRuntime::Local(_) => {
                            return Err(format!(
                                "backup {id} is on Proxmox but its server's node is local"
                            ));
                        }
                    }
                }
                _ => match tokio::fs::remove_file(loc).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(format!("removing {loc}: {e}")),
                },
            }
        }
        let message = format!("world backup {id} {why}");
        w.fenced(move |tx, sid, jid| {
            backups::mark_deleted(tx, id)?;
            servers::add_event(tx, sid, None, None, Some(jid), "system", &message)
        })
        .await
        .map_err(text)?;
    }
    Ok(())
}

// ----- restores ---------------------------------------------------------------------

/// Seeds a clone's world from its backup before the game's first start (provisioning
/// calls this right after the container exists).
pub(crate) async fn seed_world(w: &mut Work) -> Result<(), StepError> {
    let sid = w.server.id;
    let Some(b) = w
        .svc
        .db
        .call(move |c| backups::pending_seed(c, sid))
        .await?
    else {
        return Ok(());
    };
    if w.node.kind != "local" {
        return Err(StepError::Fatal(format!(
            "seeding from backup {} needs a local node",
            b.id
        )));
    }
    let game_dir = w.svc.local().game_dir(w.server.vmid);
    let staging = sibling(&game_dir, &format!("seed-{}", b.id));
    unpack_checked(&b, &staging)
        .await
        .map_err(StepError::Fatal)?;
    // The game has never run here: whatever a crashed earlier run left goes.
    remove_leftover(&game_dir).await;
    tokio::fs::rename(&staging, &game_dir)
        .await
        .map_err(|e| StepError::Transient(format!("moving the seeded world in: {e}")))?;
    let bid = b.id;
    w.fenced(move |tx, sid, _| {
        backups::mark_seeded(tx, sid)?;
        servers::checkpoint(tx, sid, "seeded", json!({"backup_id": bid}))
    })
    .await?;
    if let Some(obj) = w.server.checkpoints.as_object_mut() {
        obj.insert("seeded".into(), json!({"backup_id": bid}));
    }
    w.event(format!(
        "world seeded from backup {bid} before the first start"
    ))
    .await;
    Ok(())
}

/// `<dir>/server` → `<dir>/server.<suffix>`.
pub(crate) fn sibling(game_dir: &Path, suffix: &str) -> PathBuf {
    let name = game_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "server".into());
    game_dir.with_file_name(format!("{name}.{suffix}"))
}

/// Fails the restore job with `message` as an event (the world was left as it was).
async fn refuse(w: &Work, message: String) -> JobResult {
    w.event(message.clone()).await;
    Err(JobFailure::fatal(message))
}

async fn restore_job(w: &mut Work, backup_id: i64) -> JobResult {
    let Some(b) = load_backup(w, backup_id).await? else {
        return refuse(w, format!("restore: backup {backup_id} is gone")).await;
    };
    if b.state != BackupState::Completed {
        return refuse(
            w,
            format!(
                "restore refused: backup {backup_id} is {}",
                b.state.as_str()
            ),
        )
        .await;
    }
    if b.server_id != w.server.id {
        return refuse(
            w,
            format!("restore refused: backup {backup_id} is another server's"),
        )
        .await;
    }
    let was_running = w.server.desired_state == "running"
        && matches!(
            w.server.status,
            ServerStatus::Running | ServerStatus::Starting | ServerStatus::Crashed
        );
    match b.kind.as_str() {
        "local" => restore_local(w, &b, was_running).await,
        _ => restore_proxmox(w, &b, was_running).await,
    }
}

async fn stop_for_restore(w: &mut Work, backup_id: i64) -> Result<Option<AgentClient>, String> {
    w.status(
        ServerStatus::Stopping,
        Some(format!(
            "restoring world backup {backup_id}: stopping the game"
        )),
    )
    .await
    .map_err(text)?;
    crate::jobs::edge::unpublish_server(&w.svc, w.server.id, Some(&[VELOCITY]))
        .await
        .map_err(|e| format!("unregistering from Velocity: {e}"))?;
    let Some(url) = w.agent_url() else {
        return Ok(None);
    };
    let agent = reach_agent(w, &url).await.map_err(text)?;
    agent.stop().await.map_err(|e| e.to_string())?;
    Ok(Some(agent))
}

/// Starts the game through its agent and waits for ready, then publishes and marks the
/// server running.
async fn bring_up(w: &mut Work, agent: &AgentClient) -> Result<(), String> {
    w.status(
        ServerStatus::Starting,
        Some("starting the restored world".into()),
    )
    .await
    .map_err(text)?;
    agent.start().await.map_err(|e| e.to_string())?;
    wait_ready(w, agent, START_DEADLINE).await.map_err(text)?;
    publish(w).await.map_err(text)?;
    w.status(
        ServerStatus::Running,
        Some("running: the game answers its readiness probe".into()),
    )
    .await
    .map_err(text)
}

async fn restore_local(w: &mut Work, b: &Backup, was_running: bool) -> JobResult {
    let game_dir = w.svc.local().game_dir(w.server.vmid);
    let staging = sibling(&game_dir, &format!("restore-{}", b.id));
    let aside = sibling(&game_dir, &format!("before-restore-{}", b.id));
    // 1. While the game still runs: the archive must be whole and unpack.
    if let Err(e) = unpack_checked(b, &staging).await {
        return refuse(
            w,
            format!(
                "restore of backup {} refused, the world was not touched: {e}",
                b.id
            ),
        )
        .await;
    }
    // 2. Stop the game.
    let agent = match stop_for_restore(w, b.id).await {
        Ok(a) => a,
        Err(e) => {
            remove_leftover(&staging).await;
            return failed_before_swap(w, was_running, e).await;
        }
    };
    // 3. Swap: the current world goes aside (kept until the restored one is up).
    remove_leftover(&aside).await;
    if let Err(e) = tokio::fs::rename(&game_dir, &aside).await {
        remove_leftover(&staging).await;
        return failed_before_swap(w, was_running, format!("moving the world aside: {e}")).await;
    }
    if let Err(e) = tokio::fs::rename(&staging, &game_dir).await {
        let reason = format!("moving the restored world in: {e}");
        if let Err(back) = put_back(&aside, &game_dir, None).await {
            return previous_world_lost(w, b.id, &reason, back).await;
        }
        remove_leftover(&staging).await;
        return failed_before_swap(w, was_running, reason).await;
    }
    // 4. Start and wait for ready (a stopped server stays stopped).
    let up = match (&agent, was_running) {
        (Some(agent), true) => bring_up(w, agent).await,
        _ => w
            .status(
                ServerStatus::Stopped,
                Some(format!("world restored from backup {}", b.id)),
            )
            .await
            .map_err(text),
    };
    if let Err(e) = up {
        // The restored world did not come up: the previous one goes back.
        if let Some(agent) = &agent
            && let Err(stop) = agent.stop().await
        {
            // The swap below still runs; the game's own files are not moved under it
            // only if it stopped, which the event tells the operator to check.
            let m = format!("stopping the restored world's game failed: {stop}");
            tracing::warn!(server = w.server.id, error = %stop, "stopping the restored world's game");
            w.event(m).await;
        }
        let failed = sibling(&game_dir, &format!("failed-restore-{}", b.id));
        let reason = format!("the restored world did not start ({e})");
        if let Err(back) = put_back(&aside, &game_dir, Some(&failed)).await {
            return previous_world_lost(w, b.id, &reason, back).await;
        }
        remove_leftover(&failed).await;
        return failed_before_swap(
            w,
            was_running,
            format!("{reason}; the previous world is back"),
        )
        .await;
    }
    remove_leftover(&aside).await;
    let bid = b.id;
    w.event(format!("world restored from backup {bid}")).await;
    Ok(Outcome::Complete)
}

/// Moves the world set aside before a restore back to `game_dir`; what is at
/// `game_dir` now goes to `failed` first (or is expected to be absent when `None`).
/// The error says where the previous world is, for the operator.
async fn put_back(aside: &Path, game_dir: &Path, failed: Option<&Path>) -> Result<(), String> {
    if let Some(failed) = failed {
        remove_leftover(failed).await;
        tokio::fs::rename(game_dir, failed).await.map_err(|e| {
            format!(
                "moving the restored world out of the way to {}: {e}; the previous world is \
                 at {}",
                failed.display(),
                aside.display()
            )
        })?;
    }
    tokio::fs::rename(aside, game_dir).await.map_err(|e| {
        format!(
            "the previous world could not be moved back from {}: {e}",
            aside.display()
        )
    })
}

/// The restore failed and the previous world could not be put back: the server fails
/// with where the world is (never "the previous world is kept").
async fn previous_world_lost(
    w: &mut Work,
    backup_id: i64,
    reason: &str,
    back: String,
) -> JobResult {
    let m = format!("restore of backup {backup_id} failed ({reason}) and {back}");
    tracing::error!(server = w.server.id, backup = backup_id, error = %m, "restore left no world in place");
    let unmarked = fail_server(w, m.clone()).await;
    Err(JobFailure::fatal(format!("{m}{unmarked}")))
}

/// Fails the server at step `restore` with `message`. When the row cannot be
/// marked, says so (logged, and returned as a note to append to the job's error, so
/// it is not lost); otherwise returns "".
async fn fail_server(w: &Work, message: String) -> String {
    let s = "restore".to_string();
    match w
        .fenced(move |tx, sid, jid| servers::fail(tx, sid, &s, &message, Some(jid)))
        .await
    {
        Ok(()) => String::new(),
        Err(e) => {
            let e = text(e);
            tracing::error!(server = w.server.id, error = %e, "marking the server failed after a restore");
            format!(" (marking the server failed did not work: {e})")
        }
    }
}

/// Removes a leftover directory of a restore or seed (staging, set-aside, failed world).
/// Cleanup only: a failure is logged and leaves a directory an operator may delete.
pub(crate) async fn remove_leftover(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "removing a leftover world directory")
        }
    }
}

/// A restore that failed with the previous world in place: bring the game back up as
/// it was, then fail the job with the reason.
async fn failed_before_swap(w: &mut Work, was_running: bool, reason: String) -> JobResult {
    let message = format!("restore failed, the previous world is kept: {reason}");
    w.event(message.clone()).await;
    if was_running && let Err(e) = restart_previous(w).await {
        let m = format!("{reason}; starting the previous world again: {e}");
        let unmarked = fail_server(w, m).await;
        return Err(JobFailure::fatal(format!("{message}{unmarked}")));
    } else if !was_running
        && let Err(e) = w
            .status(ServerStatus::Stopped, Some("stopped".into()))
            .await
    {
        let e = text(e);
        tracing::error!(server = w.server.id, error = %e, "marking the server stopped after a failed restore");
        return Err(JobFailure::fatal(format!(
            "{message}; marking the server stopped: {e}"
        )));
    }
    Err(JobFailure::fatal(message))
}

async fn restart_previous(w: &mut Work) -> Result<(), String> {
    let rt = w.svc.runtime(&w.node).map_err(rt_text)?;
    let spec = w.spec();
    rt.start(&spec).await.map_err(rt_text)?;
    let url = rt
        .agent_url(&spec, ADDRESS_DEADLINE)
        .await
        .map_err(rt_text)?;
    let agent = reach_agent(w, &url).await.map_err(text)?;
    bring_up(w, &agent).await
}

async fn restore_proxmox(w: &mut Work, b: &Backup, was_running: bool) -> JobResult {
    let rt = match w.svc.runtime(&w.node) {
        Ok(NodeRuntime::Proxmox(rt)) => rt,
        Ok(NodeRuntime::Local(_)) => {
            return refuse(
                w,
                format!("restore refused: backup {} is a Proxmox backup", b.id),
            )
            .await;
        }
        Err(e) => return refuse(w, format!("restore refused: {e}")).await,
    };
    let Some(volid) = b.location.clone() else {
        return refuse(w, format!("restore refused: backup {} has no volume", b.id)).await;
    };
    if let Err(e) = stop_for_restore(w, b.id).await {
        return failed_before_swap(w, was_running, e).await;
    }
    let spec = w.spec();
    if let Err(e) = rt.stop(&spec).await {
        return failed_before_swap(w, was_running, format!("stopping the container: {e}")).await;
    }
    // With force=1 PVE replaces the container's volumes; a restore task that fails
    // after that would leave no world. So the current world is copied first, and put
    // back from that copy when the restore fails.
    let safety = match safety_copy(w, b.id).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("copying the current world first, for safety: {e}");
            return failed_before_swap(w, was_running, reason).await;
        }
    };
    if let Err(e) = rt.restore(&spec, &volid, None).await {
        return match rt.restore(&spec, &safety.1, None).await {
            Ok(()) => {
                let reason = format!(
                    "{e}; the world as it was before is back (from safety copy {})",
                    safety.0
                );
                failed_before_swap(w, was_running, reason).await
            }
            Err(back) => {
                let reason = format!(
                    "{e}; putting the previous world back from safety copy {} failed too: \
                     {back}; restore backup {} to get it back",
                    safety.0, safety.0
                );
                w.finish("restore", StepError::Fatal(reason)).await
            }
        };
    }
    w.event(format!("container restored from {volid}")).await;
    if let Err(e) = rt.start(&spec).await {
        return w.finish("restore", e.into()).await;
    }
    let url = match rt.agent_url(&spec, ADDRESS_DEADLINE).await {
        Ok(u) => u,
        Err(e) => return w.finish("restore", e.into()).await,
    };
    let u2 = url.clone();
    if let Err(e) = w
        .fenced(move |tx, sid, _| servers::checkpoint(tx, sid, "address", json!({"agent_url": u2})))
        .await
    {
        return w.finish("restore", e).await;
    }
    if let Some(obj) = w.server.checkpoints.as_object_mut() {
        obj.insert("address".into(), json!({"agent_url": url}));
    }
    let agent = match reach_agent(w, &url).await {
        Ok(a) => a,
        Err(e) => return w.finish("restore", e).await,
    };
    if was_running {
        if let Err(e) = bring_up(w, &agent).await {
            return w.finish("restore", StepError::Fatal(e)).await;
        }
    } else {
        // The restored container's agent may start the game from its saved payload;
        // if it cannot be stopped the reconciler sees the agent's state, and so does
        // the operator, from this event.
        if let Err(e) = agent.stop().await {
            tracing::warn!(server = w.server.id, error = %e, "stopping the game of a restored container");
            w.event(format!(
                "stopping the game of the restored container failed: {e}"
            ))
            .await;
        }
        if let Err(e) = w
            .status(
                ServerStatus::Stopped,
                Some(format!("world restored from backup {}", b.id)),
            )
            .await
        {
            return w.finish("restore", e).await;
        }
    }
    w.event(format!("world restored from backup {}", b.id))
        .await;
    Ok(Outcome::Complete)
}

/// Copies the (stopped) container before an in-place restore, the way every backup
/// is copied, into a protected backup row (retention never prunes it before an
/// operator has looked). Returns its id and volume.
async fn safety_copy(w: &mut Work, restoring: i64) -> Result<(i64, String), String> {
    let note = format!("automatic copy of the world before restoring backup {restoring}");
    let kind = w.node.kind.clone();
    let b = w
        .fenced(move |tx, sid, jid| {
            let id = backups::insert_row(tx, sid, &kind, &note, "system", Some(jid))?;
            backups::mark_running_protected(tx, id)?;
            backups::get(tx, id)?.ok_or_else(|| DomainError::NotFound(format!("backup {id}")))
        })
        .await
        .map_err(text)?;
    let copied = copy_world(w, &b).await;
    let (id, outcome) = (b.id, copied.clone());
    w.fenced(move |tx, sid, jid| match &outcome {
        Ok(c) => {
            backups::mark_completed(
                tx,
                id,
                &c.location,
                c.storage.as_deref(),
                c.size,
                None,
                None,
            )?;
            servers::add_event(
                tx,
                sid,
                None,
                None,
                Some(jid),
                "system",
                &format!("world backup {id}: {} ({})", b.note, c.location),
            )
        }
        Err(e) => backups::mark_failed(tx, id, e),
    })
    .await
    .map_err(text)?;
    copied.map(|c| (id, c.location))
}

/// Takes a protected backup of the server's world now (the game paused for a
/// consistent copy when it runs), noted `note`; returns the completed row. A version
/// change rolls back from it, so retention never prunes it.
pub(crate) async fn protected_backup(w: &Work, note: String) -> Result<Backup, String> {
    let kind = w.node.kind.clone();
    let b = w
        .fenced(move |tx, sid, jid| {
            let id = backups::insert_row(tx, sid, &kind, &note, "system", Some(jid))?;
            backups::mark_running_protected(tx, id)?;
            backups::get(tx, id)?.ok_or_else(|| DomainError::NotFound(format!("backup {id}")))
        })
        .await
        .map_err(text)?;
    let copied = take_backup(w, &b).await;
    let (id, outcome) = (b.id, copied.clone());
    let note = b.note.clone();
    w.fenced(move |tx, sid, jid| match &outcome {
        Ok(c) => {
            let detail = (!c.notes.is_empty()).then(|| c.notes.join("; "));
            backups::mark_completed(
                tx,
                id,
                &c.location,
                c.storage.as_deref(),
                c.size,
                c.sha256.as_deref(),
                detail.as_deref(),
            )?;
            servers::add_event(
                tx,
                sid,
                None,
                None,
                Some(jid),
                "system",
                &format!(
                    "world backup {id} ({note}) completed: {} bytes at {}",
                    c.size, c.location
                ),
            )
        }
        Err(e) => backups::mark_failed(tx, id, e),
    })
    .await
    .map_err(text)?;
    copied?;
    let db = w.svc.db.clone();
    db.call(move |c| backups::get(c, id))
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("backup {id} is gone"))
}

// ----- schedule firings -------------------------------------------------------------

fn in_words(secs: u32) -> String {
    match secs {
        s if s >= 60 && s % 60 == 0 => {
            let m = s / 60;
            format!("{m} minute{}", if m == 1 { "" } else { "s" })
        }
        s => format!("{s} second{}", if s == 1 { "" } else { "s" }),
    }
}

async fn fire_job(w: &mut Work, schedule_id: i64, slot: i64) -> JobResult {
    let Some(s) = w
        .svc
        .db
        .call(move |c| schedules::get(c, schedule_id))
        .await
        .map_err(|e: DomainError| JobFailure::retry(e.to_string()))?
    else {
        return Ok(Outcome::Complete); // removed since it fired
    };
    if w.server.deleted_at.is_some() {
        return Ok(Outcome::Complete);
    }
    let actor = format!("schedule:{schedule_id}");
    let outcome = match s.kind {
        ScheduleKind::Command => {
            let cmd = s.command.clone().unwrap_or_default();
            let Some(agent) = live_agent(w).await else {
                return Err(JobFailure::fatal(format!(
                    "schedule {schedule_id}: the game is not running; `{cmd}` not sent"
                )));
            };
            agent
                .console_command(&cmd)
                .await
                .map_err(|e| JobFailure::fatal(format!("schedule {schedule_id}: {e}")))?;
            w.event(format!(
                "schedule {schedule_id} sent `{cmd}` to the console"
            ))
            .await;
            Outcome::Complete
        }
        ScheduleKind::Backup => {
            // One row per firing, also when the job runs again after a crash.
            let existing = w
                .ctx
                .checkpoint
                .as_ref()
                .and_then(|c| c["backup_id"].as_i64());
            let backup_id = match existing {
                Some(id) => id,
                None => {
                    let (kind, note, a) = (
                        w.node.kind.clone(),
                        format!("scheduled (schedule {schedule_id})"),
                        actor.clone(),
                    );
                    let (jid, fence) = (w.ctx.id, w.ctx.fence().clone());
                    // The row and the job's checkpoint naming it commit together.
                    let id = w
                        .fenced(move |tx, sid, _| {
                            let id = backups::insert_row(tx, sid, &kind, &note, &a, Some(jid))?;
                            crate::queue::store::checkpoint(tx, &fence, &json!({"backup_id": id}))?;
                            Ok(id)
                        })
                        .await
                        .map_err(|e| JobFailure::retry(text(e)))?;
                    w.ctx.checkpoint = Some(json!({"backup_id": id}));
                    id
                }
            };
            backup_job(w, backup_id).await?
        }
        ScheduleKind::Restart => {
            let warned_at = w
                .ctx
                .checkpoint
                .as_ref()
                .and_then(|c| c["warned_at"].as_i64());
            let warning = Duration::from_secs(s.warning_secs as u64);
            match warned_at {
                None if s.warning_secs > 0 => {
                    if let Some(agent) = live_agent(w).await {
                        let say = format!("say Server restarts in {}", in_words(s.warning_secs));
                        if let Err(e) = agent.console_command(&say).await {
                            w.event(format!(
                                "schedule {schedule_id}: the restart warning was not sent: {e}"
                            ))
                            .await;
                        }
                    }
                    w.ctx.checkpoint(json!({"warned_at": now_ms()})).await?;
                    w.event(format!(
                        "schedule {schedule_id}: players warned, restart in {}",
                        in_words(s.warning_secs)
                    ))
                    .await;
                    return Ok(Outcome::Snooze(warning));
                }
                Some(at) if now_ms() < at + warning.as_millis() as i64 => {
                    let left = (at + warning.as_millis() as i64 - now_ms()).max(1) as u64;
                    return Ok(Outcome::Snooze(Duration::from_millis(left)));
                }
                _ => {
                    w.event(format!("schedule {schedule_id}: restarting")).await;
                    start(w, true).await?
                }
            }
        }
    };
    // Succeeded: the schedules chained after this one fire for the same slot.
    let fired = w
        .fenced(move |tx, _, _| schedules::fire_followers(tx, schedule_id, slot))
        .await
        .map_err(|e| JobFailure::retry(text(e)))?;
    if !fired.is_empty() {
        tracing::info!(schedule = schedule_id, jobs = ?fired, "chained schedules fired");
    }
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rename that puts the previous world back after a failed restore: its
    /// failure is an error naming where the world is, never dropped.
    #[tokio::test]
    async fn put_back_reports_a_world_it_could_not_move_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let game = dir.path().join("server");
        let aside = dir.path().join("server.before-restore-1");
        let failed = dir.path().join("server.failed-restore-1");
        std::fs::create_dir(&game).expect("game dir");
        std::fs::write(game.join("level.dat"), "restored").expect("restored world");

        // Nothing set aside: the move back fails and says from where.
        let e = put_back(&aside, &game, Some(&failed))
            .await
            .expect_err("no previous world to move back");
        assert!(e.contains("could not be moved back"), "{e}");
        assert!(e.contains(&aside.display().to_string()), "{e}");

        // The restored world cannot be moved out of the way (a file is where it would
        // go and cannot be replaced by a directory): the error says where the
        // previous world is, and it stays there.
        std::fs::create_dir(&aside).expect("aside dir");
        std::fs::write(aside.join("level.dat"), "previous").expect("previous world");
        std::fs::remove_dir_all(&failed).expect("failed dir from the first call");
        std::fs::create_dir(&game).expect("game dir again");
        std::fs::write(&failed, "in the way").expect("a file in the way");
        let e = put_back(&aside, &game, Some(&failed))
            .await
            .expect_err("the restored world cannot move");
        assert!(
            e.contains("moving the restored world out of the way"),
            "{e}"
        );
        assert!(e.contains(&aside.display().to_string()), "{e}");
        assert!(aside.join("level.dat").exists());

        // The way clear: the previous world is back in place.
        std::fs::remove_file(&failed).expect("clear the way");
        put_back(&aside, &game, Some(&failed))
            .await
            .expect("previous world back");
        assert_eq!(
            std::fs::read_to_string(game.join("level.dat")).expect("world"),
            "previous"
        );
    }

    #[test]
    fn warnings_read_naturally() {
        assert_eq!(in_words(300), "5 minutes");
        assert_eq!(in_words(60), "1 minute");
        assert_eq!(in_words(90), "90 seconds");
        assert_eq!(in_words(1), "1 second");
    }
}
