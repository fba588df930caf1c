//! `POST /upgrade`: the agent replaces its own executable and restarts itself.
//!
//! The game cannot be kept across the agent's re-exec: it is the agent's child with
//! stdin/stdout pipes and a parent-death signal (so a crashed agent never leaves an
//! unsupervised game behind), and execve ends the thread that spawned it. So the
//! documented fallback: the new binary is downloaded and verified at once, then the
//! upgrade waits until the game is stopped or has no players online (Minecraft's
//! status ping), stops it cleanly keeping its desired state, and re-execs; the upgraded
//! agent restores the desired state from its persisted payload (DESIGN §7), as after
//! any agent restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::oneshot;

use super::Shared;
use super::manager::Op;
use crate::agent::{ConfigPayload, ReadinessKind, UpgradeRequest, UpgradeStatus, slp};

/// How often a waiting upgrade looks at the game's players again.
const WAIT_PAUSE: Duration = Duration::from_secs(2);

/// Checks the request; `Err` names the field.
pub(crate) fn validate(req: &UpgradeRequest) -> Result<(), (&'static str, String)> {
    let url = reqwest::Url::parse(&req.url).map_err(|e| ("url", format!("not a URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(("url", "must be an http or https URL".into()));
    }
    if req.sha256.len() != 64 || !req.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(("sha256", "must be 64 hex digits".into()));
    }
    if req.version.trim().is_empty() || req.version.len() > 200 {
        return Err(("version", "must be 1 to 200 characters".into()));
    }
    Ok(())
}

/// Where the new binary goes: `--upgrade-path`, else the running executable.
fn target(shared: &Shared) -> Result<PathBuf, String> {
    match &shared.opts.upgrade_path {
        Some(p) => Ok(p.clone()),
        None => std::env::current_exe().map_err(|e| format!("finding this executable: {e}")),
    }
}

fn set(shared: &Shared, state: &str, message: Option<String>, target: &str) {
    let line = match &message {
        Some(m) => format!("upgrade {state}: {m}"),
        None => format!("upgrade {state}"),
    };
    tracing::info!("{line}");
    shared.console.push(format!("[zlh-agent] {line}"));
    if let Ok(mut u) = shared.upgrade.lock() {
        *u = UpgradeStatus {
            state: state.to_string(),
            message,
            target: Some(target.to_string()),
        };
    }
}

/// Runs one upgrade to its end: the process is replaced, or the status says why not.
pub(crate) async fn run(shared: Arc<Shared>, req: UpgradeRequest) {
    let version = req.version.clone();
    if let Err(e) = upgrade(&shared, &req).await {
        set(&shared, "failed", Some(e), &version);
    }
}

async fn upgrade(shared: &Arc<Shared>, req: &UpgradeRequest) -> Result<(), String> {
    let v = req.version.as_str();
    let target = target(shared)?;
    set(shared, "downloading", Some(req.url.clone()), v);
    let staged = download(req, &target).await?;
    // Waits here until the game is stopped or empty.
    loop {
        let message = match occupancy(shared).await {
            Occupancy::Free => break,
            Occupancy::Players(n) => format!(
                "waiting: {n} player{} online; the upgrade restarts the game once it is empty or stopped",
                if n == 1 { "" } else { "s" }
            ),
            Occupancy::Unknown => "waiting: the game runs but does not answer its status ping \
                 (starting, or busy); the upgrade restarts it once it answers with no players \
                 online, or is stopped"
                .to_string(),
        };
        let changed = shared
            .upgrade
            .lock()
            .map(|u| u.message.as_deref() != Some(message.as_str()))
            .unwrap_or(true);
        if changed {
            set(shared, "waiting", Some(message), v);
        }
        tokio::time::sleep(WAIT_PAUSE).await;
    }
    set(
        shared,
        "restarting",
        Some("stopping the game and restarting the agent".into()),
        v,
    );
    let (tx, rx) = oneshot::channel();
    shared
        .ops
        .send(Op::Suspend(tx))
        .map_err(|_| "the agent's manager is gone".to_string())?;
    let stopped = rx
        .await
        .map_err(|_| "the agent's manager did not answer".to_string())?;
    if let Some(pid) = stopped {
        shared.console.push(format!(
            "[zlh-agent] stopped the game (pid {pid}) for the upgrade; the upgraded agent starts it again"
        ));
    }
    if let Err(e) = std::fs::rename(&staged, &target) {
        resume(shared);
        return Err(format!(
            "replacing {} with {}: {e}",
            target.display(),
            staged.display()
        ));
    }
    // The same arguments: the same directory, port and token file.
    let err = std::os::unix::process::CommandExt::exec(
        std::process::Command::new(&target).args(std::env::args_os().skip(1)),
    );
    resume(shared);
    Err(format!("restarting as {}: {err}", target.display()))
}

fn resume(shared: &Shared) {
    if shared.ops.send(Op::Resume).is_err() {
        tracing::error!("the agent's manager is gone: the game stays stopped");
    }
}

/// Downloads the binary beside `target` (same file system, so the final rename is
/// atomic), verifying its digest; answers the staged path.
async fn download(req: &UpgradeRequest, target: &Path) -> Result<PathBuf, String> {
    let dir = target
        .parent()
        .ok_or_else(|| format!("{} has no directory", target.display()))?;
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Named by this process: agents sharing a directory never write the same file.
    let staged = dir.join(format!(".zlh-upgrade-{}.tmp", std::process::id()));
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .no_proxy()
        .build()
        .map_err(|e| format!("building an HTTP client: {e}"))?;
    // No credential: the URL is the mirror's public copy of zlh.
    let mut resp = client
        .get(&req.url)
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| format!("downloading {}: {e}", req.url))?;
    let mut file = tokio::fs::File::create(&staged)
        .await
        .map_err(|e| format!("creating {}: {e}", staged.display()))?;
    let mut hash = Sha256::new();
    let result: Result<(), String> = async {
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|e| format!("downloading {}: {e}", req.url))?
        {
            hash.update(&chunk);
            file.write_all(&chunk)
                .await
                .map_err(|e| format!("writing {}: {e}", staged.display()))?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("writing {}: {e}", staged.display()))?;
        let got = crate::util::hex(&hash.finalize());
        if !got.eq_ignore_ascii_case(&req.sha256) {
            return Err(format!(
                "the download's sha256 is {got}, expected {}: not installed",
                req.sha256
            ));
        }
        tokio::fs::set_permissions(&staged, std::fs::Permissions::from_mode(0o755))
            .await
            .map_err(|e| format!("making {} executable: {e}", staged.display()))
    }
    .await;
    if let Err(e) = result {
        if let Err(rm) = tokio::fs::remove_file(&staged).await {
            tracing::warn!(error = %rm, path = %staged.display(), "removing a failed download");
        }
        return Err(e);
    }
    Ok(staged)
}

/// Whether the game may be restarted now.
enum Occupancy {
    /// No game runs, or nobody is on it (or it is not a Minecraft server, whose status
    /// ping would say who is).
    Free,
    Players(u64),
    /// It runs but does not answer its ping: never cut a game short on a guess.
    Unknown,
}

async fn occupancy(shared: &Shared) -> Occupancy {
    let running = shared.snapshot().is_some_and(|s| s.process_running);
    if !running {
        return Occupancy::Free;
    }
    let Some(payload) = std::fs::read(shared.opts.dir.join(super::PAYLOAD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<ConfigPayload>(&b).ok())
    else {
        return Occupancy::Unknown;
    };
    let readiness = payload.readiness();
    if readiness.kind != ReadinessKind::MinecraftPing {
        return Occupancy::Free;
    }
    let addr = std::net::SocketAddr::new(
        readiness
            .host
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
        readiness.port,
    );
    match slp::status(addr, Duration::from_secs(5)).await {
        Ok(v) => match v["players"]["online"].as_u64().unwrap_or(0) {
            0 => Occupancy::Free,
            n => Occupancy::Players(n),
        },
        Err(_) => Occupancy::Unknown,
    }
}
