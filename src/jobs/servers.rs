//! Server jobs, all in the lane `server:<id>`: provision (one resumable job per
//! server, DESIGN §6), start, stop, restart, delete. Every step looks at the world
//! first, acts, and records a checkpoint in a fenced transaction; every wait has a
//! deadline; a failure marks the server `failed` with the step and the reason.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::agent::client::{AgentClient, AgentClientError};
use crate::agent::{AgentState, ConfigPayload, Readiness, SeedArtifact, SeedFile};
use crate::domain::edge::VELOCITY;
use crate::domain::servers::{self, Server, ServerStatus};
use crate::domain::templates::{self, JavaRule, Template};
use crate::domain::{DomainError, nodes::Node};
use crate::jobs::services::Services;
use crate::queue::{Handler, JobContext, JobFailure, JobResult, Outcome, QueueError, handler_fn};
use crate::runtime::{ContainerSpec, Created, NodeRuntime, Runtime, RuntimeError};

/// How long the agent may take to answer after its container started.
const AGENT_DEADLINE: Duration = Duration::from_secs(120);
/// How long an install plus the game's first start may take.
const READY_DEADLINE: Duration = Duration::from_secs(15 * 60);
/// How long a start or restart may take to become ready.
pub(crate) const START_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// How long the container may take to get an address.
pub(crate) const ADDRESS_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, Deserialize)]
struct ServerJob {
    server_id: i64,
}

/// Why a step did not finish.
pub(crate) enum StepError {
    /// Retry the job later (the server keeps its status).
    Transient(String),
    /// The server fails at this step.
    Fatal(String),
}

impl StepError {
    fn classify(transient: bool, e: impl std::fmt::Display) -> StepError {
        if transient {
            StepError::Transient(e.to_string())
        } else {
            StepError::Fatal(e.to_string())
        }
    }
}

impl From<RuntimeError> for StepError {
    fn from(e: RuntimeError) -> Self {
        StepError::classify(e.is_transient(), e)
    }
}

impl From<AgentClientError> for StepError {
    fn from(e: AgentClientError) -> Self {
        StepError::classify(e.is_transient(), e)
    }
}

impl From<DomainError> for StepError {
    fn from(e: DomainError) -> Self {
        StepError::Transient(e.to_string())
    }
}

impl From<QueueError> for StepError {
    fn from(e: QueueError) -> Self {
        StepError::Transient(e.to_string())
    }
}

/// The job's view of one server while it works on it.
pub(crate) struct Work {
    pub(crate) svc: Arc<Services>,
    pub(crate) ctx: JobContext,
    pub(crate) server: Server,
    pub(crate) template: Template,
    pub(crate) node: Node,
}

impl Work {
    pub(crate) async fn load(
        svc: Arc<Services>,
        ctx: JobContext,
    ) -> Result<Option<Work>, JobFailure> {
        let job: ServerJob = ctx.payload()?;
        let id = job.server_id;
        let loaded = svc
            .db
            .call(move |c| {
                let Some(server) = servers::get(c, id)? else {
                    return Ok::<_, DomainError>(None);
                };
                let (template, node) = servers::context(c, &server)?;
                Ok(Some((server, template, node)))
            })
            .await
            .map_err(|e| JobFailure::retry(e.to_string()))?;
        Ok(loaded.map(|(server, template, node)| Work {
            svc,
            ctx,
            server,
            template,
            node,
        }))
    }

    pub(crate) fn spec(&self) -> ContainerSpec {
        ContainerSpec {
            server_id: self.server.id,
            name: self.server.name.clone(),
            vmid: self.server.vmid,
            cores: self.server.cores as u32,
            memory_mb: self.server.memory_mb as u32,
            agent_port: self.server.agent_port as u16,
            agent_token: self.server.agent_token.clone(),
        }
    }

    pub(crate) fn done(&self, step: &str) -> bool {
        self.server.checkpoints.get(step).is_some()
    }

    /// Runs `f` on the server's row in a transaction that commits only while this
    /// job still holds its lease.
    pub(crate) async fn fenced<R: Send + 'static>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>, i64, i64) -> Result<R, DomainError> + Send + 'static,
    ) -> Result<R, StepError> {
        let (sid, jid) = (self.server.id, self.ctx.id);
        self.ctx
            .fenced(move |tx| f(tx, sid, jid).map_err(QueueError::from))
            .await
            .map_err(StepError::from)
    }

    pub(crate) async fn checkpoint(
        &mut self,
        step: &'static str,
        detail: Value,
    ) -> Result<(), StepError> {
        let d = detail.clone();
        self.fenced(move |tx, sid, _| servers::checkpoint(tx, sid, step, d))
            .await?;
        if let Some(obj) = self.server.checkpoints.as_object_mut() {
            obj.insert(step.into(), detail);
        }
        Ok(())
    }

    pub(crate) async fn status(
        &mut self,
        to: ServerStatus,
        reason: Option<String>,
    ) -> Result<(), StepError> {
        if self.server.status == to && reason.is_none() {
            return Ok(());
        }
        let r = reason.clone();
        self.fenced(move |tx, sid, jid| {
            servers::transition(tx, sid, to, r.as_deref(), Some(jid), "system").map(|_| ())
        })
        .await?;
        self.server.status = to;
        Ok(())
    }

    /// A progress note on the status line, without an event per note.
    pub(crate) async fn note(&self, reason: String) {
        let sid = self.server.id;
        let written = self
            .ctx
            .fenced(move |tx| {
                servers::set_status_reason(tx, sid, &reason).map_err(QueueError::from)
            })
            .await;
        // A note is informational: the step that follows reports real trouble.
        if let Err(e) = written {
            tracing::warn!(server = sid, error = %e, "writing a progress note");
        }
    }

    pub(crate) async fn event(&self, message: String) {
        let (sid, jid) = (self.server.id, self.ctx.id);
        let written = self
            .fenced(move |tx, _, _| {
                servers::add_event(tx, sid, None, None, Some(jid), "system", &message)
            })
            .await;
        if let Err(StepError::Transient(e) | StepError::Fatal(e)) = written {
            tracing::warn!(server = sid, error = %e, "writing a server event");
        }
    }

    /// Ends the job: a transient error retries (the last attempt fails the server);
    /// a fatal one fails the server at `step`.
    pub(crate) async fn finish(&mut self, step: &str, err: StepError) -> JobResult {
        let (message, fatal) = match err {
            StepError::Transient(m) => (m, self.ctx.attempt >= self.ctx.max_attempts),
            StepError::Fatal(m) => (m, true),
        };
        if !fatal {
            self.note(format!("{step}: {message} (will retry)")).await;
            return Err(JobFailure::retry(format!("{step}: {message}")));
        }
        let (s, m) = (step.to_string(), message.clone());
        if let Err(e) = self
            .fenced(move |tx, sid, jid| servers::fail(tx, sid, &s, &m, Some(jid)))
            .await
        {
            let reason = match e {
                StepError::Transient(r) | StepError::Fatal(r) => r,
            };
            return Err(JobFailure::retry(format!(
                "recording the failure: {reason}"
            )));
        }
        Err(JobFailure::fatal(format!("{step}: {message}")))
    }

    pub(crate) fn agent(&self, url: &str, token: &str) -> AgentClient {
        AgentClient::new(
            url,
            token,
            format!("agent of server {} ({})", self.server.id, self.server.name),
        )
    }

    pub(crate) fn agent_url(&self) -> Option<String> {
        self.server
            .checkpoints
            .get("address")
            .and_then(|a| a["agent_url"].as_str())
            .map(String::from)
    }
}

/// Polls `f` with backoff until it returns `Some`, `deadline` passes, or the job is cancelled.
pub(crate) async fn poll<T, F, Fut>(
    ctx: &JobContext,
    what: &str,
    deadline: Duration,
    mut f: F,
) -> Result<T, StepError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, StepError>>,
{
    let end = tokio::time::Instant::now() + deadline;
    // Start fast (most waits end within moments), back off to 1 s.
    let mut pause = Duration::from_millis(10);
    loop {
        if let Some(v) = f().await? {
            return Ok(v);
        }
        if tokio::time::Instant::now() + pause > end {
            return Err(StepError::Fatal(format!(
                "{what}: deadline of {}s passed",
                deadline.as_secs()
            )));
        }
        tokio::select! {
            _ = ctx.cancel.cancelled() => return Err(StepError::Fatal("cancelled".into())),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

pub fn handlers(svc: Arc<Services>) -> Vec<Arc<dyn Handler>> {
    work_handlers(
        svc,
        &[
            servers::JOB_PROVISION,
            servers::JOB_START,
            servers::JOB_RESTART,
            servers::JOB_STOP,
            servers::JOB_DELETE,
        ],
        Duration::from_secs(40 * 60),
        |kind, _payload, mut w| async move {
            match kind {
                servers::JOB_PROVISION => provision(&mut w).await,
                servers::JOB_START => start(&mut w, false).await,
                servers::JOB_RESTART => start(&mut w, true).await,
                servers::JOB_STOP => stop(&mut w).await,
                servers::JOB_DELETE => delete(&mut w).await,
                _ => Err(JobFailure::fatal(format!("unknown server job {kind}"))),
            }
        },
    )
}

/// Handlers of `kinds` acting on one server: each loads the job's server into a
/// [`Work`] (a job whose server is gone completes) and hands it to `run` with its
/// kind and payload.
pub(crate) fn work_handlers<F, Fut>(
    svc: Arc<Services>,
    kinds: &[&'static str],
    timeout: Duration,
    run: F,
) -> Vec<Arc<dyn Handler>>
where
    F: Fn(&'static str, Value, Work) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = JobResult> + Send + 'static,
{
    kinds
        .iter()
        .map(|&kind| {
            let (svc, run) = (svc.clone(), run.clone());
            Arc::new(
                handler_fn(kind, move |ctx| {
                    let (svc, run) = (svc.clone(), run.clone());
                    async move {
                        let payload = ctx.payload.clone();
                        let Some(w) = Work::load(svc, ctx).await? else {
                            return Ok(Outcome::Complete); // the server is gone
                        };
                        run(kind, payload, w).await
                    }
                })
                .timeout(timeout),
            ) as Arc<dyn Handler>
        })
        .collect()
}

async fn provision(w: &mut Work) -> JobResult {
    if w.server.deleted_at.is_some() || w.server.desired_state == "deleted" {
        return Ok(Outcome::Complete);
    }
    let rt = match w.svc.runtime(&w.node) {
        Ok(rt) => rt,
        Err(e) => return w.finish("container", e.into()).await,
    };
    if let Err(e) = w
        .status(
            ServerStatus::Provisioning,
            Some(format!("provisioning on node {}", w.node.name)),
        )
        .await
    {
        return w.finish("container", e).await;
    }
    // 1–2. The container: created once, adopted on every later run.
    if !w.done("container")
        && let Err(e) = ensure_container(w, &rt).await
    {
        return w.finish("container", e).await;
    }
    // A clone: its world is seeded from the backup before the game ever starts.
    if !w.done("seeded")
        && let Err(e) = crate::jobs::worlds::seed_world(w).await
    {
        return w.finish("seed world", e).await;
    }
    // 3. Resources, network, tags.
    if !w.done("configured") {
        let spec = w.spec();
        if let Err(e) = rt.configure(&spec).await {
            return w.finish("configure", e.into()).await;
        }
        if let Err(e) = w.checkpoint("configured", json!(true)).await {
            return w.finish("configure", e).await;
        }
    }
    // 4. Start (idempotent: a container that is already running is left alone).
    let spec = w.spec();
    if let Err(e) = rt.start(&spec).await {
        return w.finish("start container", e.into()).await;
    }
    // 5. Address.
    let url = match rt.agent_url(&spec, ADDRESS_DEADLINE).await {
        Ok(u) => u,
        Err(e) => return w.finish("address", e.into()).await,
    };
    let ip = url
        .trim_start_matches("http://")
        .rsplit_once(':')
        .map(|(h, _)| h.to_string())
        .unwrap_or_default();
    let (ip2, url2) = (ip.clone(), url.clone());
    if let Err(e) = w
        .fenced(move |tx, sid, _| {
            servers::set_address(tx, sid, &ip2)?;
            servers::checkpoint(tx, sid, "address", json!({"agent_url": url2}))
        })
        .await
    {
        return w.finish("address", e).await;
    }
    w.server.ip = Some(ip);
    if let Some(obj) = w.server.checkpoints.as_object_mut() {
        obj.insert("address".into(), json!({"agent_url": url}));
    }
    // 6. The agent: configure it with this server's install.
    if let Err(e) = w
        .status(
            ServerStatus::Installing,
            Some("waiting for the agent".into()),
        )
        .await
    {
        return w.finish("agent", e).await;
    }
    let agent = match reach_agent(w, &url).await {
        Ok(a) => a,
        Err(e) => return w.finish("agent", e).await,
    };
    let done_for_this_install = w
        .server
        .checkpoints
        .get("agent_config")
        .and_then(|c| c["install_id"].as_str())
        == Some(w.server.install_id.as_str());
    if !done_for_this_install {
        let payload = match build_payload(w).await {
            Ok(p) => p,
            Err(e) => return w.finish("artifacts", e).await,
        };
        if let Err(e) = agent.configure(&payload).await {
            return w.finish("agent", e.into()).await;
        }
        // What was sent, minus its secrets (the agent has them; the row need not).
        let stored = serde_json::to_value(&payload)
            .map(|mut v| {
                crate::db::secret::redact_payload(&mut v);
                v.to_string()
            })
            .unwrap_or_default();
        let install_id = payload.install_id.clone();
        if let Err(e) = w
            .fenced(move |tx, sid, _| {
                servers::set_payload(tx, sid, &stored)?;
                servers::checkpoint(tx, sid, "agent_config", json!({"install_id": install_id}))
            })
            .await
        {
            return w.finish("agent", e).await;
        }
        w.event(format!("sent install {} to the agent", payload.install_id))
            .await;
    }
    // The config carried this server's own token: from now on the agent wants it.
    let agent = w.agent(&url, &w.server.agent_token);
    // 7. Ready: the agent's probe answered.
    if let Err(e) = w
        .status(
            ServerStatus::Starting,
            Some("installing and starting the game".into()),
        )
        .await
    {
        return w.finish("ready", e).await;
    }
    if let Err(e) = wait_ready(w, &agent, READY_DEADLINE).await {
        return w.finish("ready", e).await;
    }
    // 8. Publish — only now that the game answers (invariant 5) — then running. An
    // edge failure is recorded on its record; it does not fail the game.
    if let Err(e) = w.checkpoint("ready", json!(true)).await {
        return w.finish("ready", e).await;
    }
    if let Err(e) = publish(w).await {
        return w.finish("publish", e).await;
    }
    if let Err(e) = w
        .status(
            ServerStatus::Running,
            Some("running: the game answers its readiness probe".into()),
        )
        .await
    {
        return w.finish("ready", e).await;
    }
    Ok(Outcome::Complete)
}

/// A Proxmox clone: its container is restored from another server's backup volume
/// instead of being cloned from the base template.
struct FromBackup {
    backup_id: i64,
    volid: String,
    /// The server the backup was taken of.
    source_id: i64,
    /// Where the restored disks go: the storage of the source's `rootfs`.
    storage: Option<String>,
}

/// The backup this server's container is to be restored from, if it is a Proxmox clone
/// not restored yet.
async fn from_backup(w: &Work, rt: &NodeRuntime) -> Result<Option<FromBackup>, StepError> {
    let NodeRuntime::Proxmox(px) = rt else {
        return Ok(None);
    };
    let sid = w.server.id;
    let found = w
        .svc
        .db
        .call(move |c| {
            let Some(b) = crate::domain::backups::pending_seed(c, sid)? else {
                return Ok::<_, DomainError>(None);
            };
            let source = servers::get(c, b.server_id)?;
            Ok(Some((b, source)))
        })
        .await?;
    let Some((b, source)) = found else {
        return Ok(None);
    };
    let Some(volid) = b.location.clone().filter(|_| b.kind == "proxmox") else {
        return Err(StepError::Fatal(format!(
            "backup {} is not a Proxmox volume: it cannot be restored on node {}",
            b.id, w.node.name
        )));
    };
    let storage = match &source {
        Some(s) => px.rootfs_storage(s.vmid).await,
        None => None,
    };
    Ok(Some(FromBackup {
        backup_id: b.id,
        volid,
        source_id: b.server_id,
        storage,
    }))
}

fn to_runtime_error(e: StepError) -> RuntimeError {
    match e {
        StepError::Transient(m) => RuntimeError::Transient(m),
        StepError::Fatal(m) => RuntimeError::Fatal(m),
    }
}

/// Creates or adopts the container; a foreign container on the VMID moves the server
/// to a new VMID (recorded as an event), never a second container for one server.
/// A Proxmox clone's container is restored from its backup volume (checkpoint
/// `restore_issued` before the request, so a rerun waits for or adopts that restore).
async fn ensure_container(w: &mut Work, rt: &NodeRuntime) -> Result<(), StepError> {
    let restore = from_backup(w, rt).await?;
    let mut skip = Vec::new();
    for _ in 0..5 {
        let spec = w.spec();
        let made = match (&restore, rt) {
            (Some(r), NodeRuntime::Proxmox(px)) => {
                let issued = w
                    .server
                    .checkpoints
                    .get("restore_issued")
                    .and_then(|c| c["vmid"].as_i64())
                    == Some(spec.vmid);
                let detail = json!({"vmid": spec.vmid, "backup_id": r.backup_id, "volid": r.volid});
                let w_ref = &*w;
                px.create_from_backup(&spec, &r.volid, r.storage.clone(), issued, || {
                    let d = detail.clone();
                    async move {
                        w_ref
                            .fenced(move |tx, sid, _| {
                                servers::checkpoint(tx, sid, "restore_issued", d)
                            })
                            .await
                            .map_err(to_runtime_error)
                    }
                })
                .await
            }
            _ => rt.create(&spec).await,
        };
        match made {
            Ok(created) => {
                if created == Created::Adopted {
                    w.event(format!(
                        "adopted container {} made by an earlier run",
                        spec.vmid
                    ))
                    .await;
                }
                let Some(r) = &restore else {
                    return w
                        .checkpoint("container", json!({"vmid": spec.vmid, "how": created}))
                        .await;
                };
                // The restore is this clone's seed: both are recorded together.
                let container = json!({
                    "vmid": spec.vmid, "how": created, "restored_from": r.volid,
                    "backup_id": r.backup_id, "source_server": r.source_id,
                });
                let seeded = json!({"backup_id": r.backup_id});
                let (c2, s2) = (container.clone(), seeded.clone());
                w.fenced(move |tx, sid, _| {
                    crate::domain::backups::mark_seeded(tx, sid)?;
                    servers::checkpoint(tx, sid, "container", c2)?;
                    servers::checkpoint(tx, sid, "seeded", s2)
                })
                .await?;
                if let Some(obj) = w.server.checkpoints.as_object_mut() {
                    obj.insert("container".into(), container);
                    obj.insert("seeded".into(), seeded);
                }
                w.event(format!(
                    "container {} restored from backup {} ({}) of server {}",
                    spec.vmid, r.backup_id, r.volid, r.source_id
                ))
                .await;
                return Ok(());
            }
            Err(RuntimeError::Foreign { vmid, .. }) => {
                skip.push(vmid);
                let node = w.node.clone();
                let skip2 = skip.clone();
                let new_vmid = w
                    .fenced(move |tx, sid, jid| {
                        let v = servers::allocate_vmid_excluding(tx, &node, &skip2)?;
                        servers::set_vmid(tx, sid, v)?;
                        servers::add_event(
                            tx,
                            sid,
                            None,
                            None,
                            Some(jid),
                            "system",
                            &format!("VMID {vmid} is taken by a container that is not this server's: moved to VMID {v}"),
                        )?;
                        Ok(v)
                    })
                    .await?;
                w.server.vmid = new_vmid;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StepError::Fatal(
        "five VMIDs in a row were taken by foreign containers".into(),
    ))
}

/// Waits for the agent's /health, then finds the token it accepts: the server's
/// own, or (a fresh Proxmox container) the node's bootstrap token.
pub(crate) async fn reach_agent(w: &Work, url: &str) -> Result<AgentClient, StepError> {
    let own = w.agent(url, &w.server.agent_token);
    poll(
        &w.ctx,
        "waiting for the agent to answer",
        AGENT_DEADLINE,
        || {
            let own = own.clone();
            async move {
                match own.health().await {
                    Ok(()) => Ok(Some(())),
                    Err(e) if e.is_transient() => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        },
    )
    .await?;
    match own.status().await {
        Ok(_) => Ok(own),
        Err(AgentClientError::Unauthorized { .. }) => {
            // A container restored from another server's backup: until its first
            // /config the agent holds that server's token.
            if let Some(source) = w
                .server
                .checkpoints
                .get("container")
                .and_then(|c| c["source_server"].as_i64())
            {
                let token = w
                    .svc
                    .db
                    .call(move |c| servers::get(c, source))
                    .await?
                    .map(|s| s.agent_token)
                    .unwrap_or_default();
                if !token.is_empty() {
                    let theirs = w.agent(url, &token);
                    match theirs.status().await {
                        Ok(_) => {
                            w.event(format!(
                                "reached the restored agent with server {source}'s token; \
                                 its /config installs this server's own"
                            ))
                            .await;
                            return Ok(theirs);
                        }
                        Err(AgentClientError::Unauthorized { .. }) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            let bootstrap = w.node.settings["bootstrap_token"]
                .as_str()
                .unwrap_or_default();
            if bootstrap.is_empty() {
                return Err(StepError::Fatal(
                    "the agent refused this server's token and the node has no bootstrap token"
                        .into(),
                ));
            }
            let boot = w.agent(url, bootstrap);
            boot.status().await?;
            Ok(boot)
        }
        Err(e) => Err(e.into()),
    }
}

/// The exact payload for the agent, with every artifact's sha256 from the mirror.
pub(crate) async fn build_payload(w: &Work) -> Result<ConfigPayload, StepError> {
    let spec = &w.template.spec;
    let s = &w.server;
    let version = s.version.as_str();
    let game_port = s.game_port.to_string();
    let ip = s.ip.clone().unwrap_or_else(|| "127.0.0.1".into());
    let vars = [
        ("version", version),
        ("name", s.name.as_str()),
        ("game_port", game_port.as_str()),
        ("ip", ip.as_str()),
    ];
    let ensure = |path: String| async move {
        // A fill from upstream can take minutes: its progress goes to the status line.
        let (tx, mut rx) = tokio::sync::watch::channel((0u64, None::<u64>));
        let fill = w
            .svc
            .mirror
            .ensure_with_progress(&path, move |done, total| {
                // Progress only: with the reporter gone there is no one to tell.
                let _ = tx.send((done, total));
            });
        let report = async {
            w.note(format!("fetching {path} into the artifact mirror"))
                .await;
            let mut last_decile = None;
            while rx.changed().await.is_ok() {
                let (done, total) = *rx.borrow_and_update();
                let Some(pct) = total.filter(|t| *t > 0).map(|t| done * 100 / t) else {
                    continue;
                };
                if last_decile != Some(pct / 10) {
                    last_decile = Some(pct / 10);
                    w.note(format!("fetching {path} into the artifact mirror ({pct}%)"))
                        .await;
                }
            }
        };
        let (info, ()) = tokio::join!(fill, report);
        let info = info.map_err(|e| StepError::Fatal(e.to_string()))?;
        Ok::<_, StepError>((path, info.sha256))
    };
    let (artifact_path, artifact_sha256) = match &spec.artifact_path {
        Some(p) => {
            let (p, sha) = ensure(templates::fill(p, &vars)).await?;
            (Some(p), Some(sha))
        }
        None => (None, None),
    };
    let (java_path, java_sha256) = match spec.java {
        JavaRule::Minecraft => {
            let major = templates::java_major_for(version);
            let (p, sha) = ensure(format!("java/{major}/OpenJDK{major}.tar.gz")).await?;
            (Some(p), Some(sha))
        }
        JavaRule::None => (None, None),
    };
    let mut mods = Vec::new();
    for m in &spec.mods {
        let (path, sha256) = ensure(templates::fill(&m.path, &vars)).await?;
        mods.push(SeedArtifact {
            path,
            sha256,
            destination: m.destination.clone(),
        });
    }
    // Only a server players reach through Velocity needs the forwarding secret; any
    // other game would just hold a credential of the proxy it never talks to.
    let proxied = w.template.spec.edge == templates::EdgeKind::Velocity
        && w.svc.config.edge.velocity.is_some();
    let secret = if proxied {
        w.svc.config.forwarding_secret.clone().unwrap_or_default()
    } else {
        String::new()
    };
    let file_vars = [
        ("version", version),
        ("name", s.name.as_str()),
        ("game_port", game_port.as_str()),
        ("ip", ip.as_str()),
        ("forwarding_secret", secret.as_str()),
    ];
    let files = spec
        .files
        .iter()
        .map(|f| SeedFile {
            destination: f.destination.clone(),
            content: templates::fill(&f.content, &file_vars),
        })
        .collect();
    let properties = spec
        .properties
        .iter()
        .map(|(k, v)| (k.clone(), templates::fill(v, &vars)))
        .collect();
    // The same placeholders as properties, plus `{memory_mb}`; never the forwarding
    // secret: a child's environment is readable by more than the game (invariant 9).
    let memory_mb = s.memory_mb.to_string();
    let env_vars = [
        ("version", version),
        ("name", s.name.as_str()),
        ("game_port", game_port.as_str()),
        ("ip", ip.as_str()),
        ("memory_mb", memory_mb.as_str()),
    ];
    let env = spec
        .env
        .iter()
        .map(|(k, v)| (k.clone(), templates::fill(v, &env_vars)))
        .collect();
    let advertised = w.svc.config.advertised();
    // The IP-based service environment, from the same validated configuration.
    let mut services: std::collections::BTreeMap<String, String> = [
        (
            "ARTIFACT_SERVER".to_string(),
            format!("{advertised}/artifacts"),
        ),
        ("ZLH_API_URL".to_string(), advertised.clone()),
    ]
    .into_iter()
    .collect();
    if let Some(v) = &w.svc.config.edge.velocity {
        services.insert("ZLH_VELOCITY_URL".into(), v.url.clone());
    }
    Ok(ConfigPayload {
        vmid: Some(s.vmid),
        container_type: "game".into(),
        game: w.template.game.clone(),
        variant: w.template.variant.clone(),
        version: s.version.clone(),
        world: None,
        ports: vec![s.game_port as u16],
        artifact_path,
        artifact_sha256,
        java_path,
        java_sha256,
        memory_mb: Some(s.memory_mb as u32),
        install_id: s.install_id.clone(),
        eula: s.eula_accepted,
        eula_required: Some(w.template.needs_eula()),
        reset_world: false,
        mods,
        files,
        properties,
        forwarding_secret: (!secret.is_empty()).then_some(secret),
        start_command: spec.start_command.clone(),
        stop_command: spec.stop_command.clone(),
        readiness: Some(Readiness {
            kind: spec.readiness,
            port: s.game_port as u16,
            // A container's game listens on its own address; the local node's on loopback.
            host: s
                .ip
                .as_deref()
                .and_then(|ip| ip.parse().ok())
                .filter(|_| w.node.kind != "local"),
        }),
        services,
        env,
        agent_token: Some(s.agent_token.clone()),
    })
}

/// Polls the agent until the game is ready; an agent `error` fails at once.
pub(crate) async fn wait_ready(
    w: &Work,
    agent: &AgentClient,
    deadline: Duration,
) -> Result<(), StepError> {
    let last_step = std::sync::Mutex::new(String::new());
    let last = &last_step;
    // What was last written to the row: polls that change nothing write nothing.
    let last_seen = std::sync::Mutex::new(None::<(AgentState, bool, u64)>);
    let seen = &last_seen;
    poll(
        &w.ctx,
        "waiting for the game to answer its readiness probe",
        deadline,
        || {
            let agent = agent.clone();
            async move {
                let st = match agent.status().await {
                    Ok(st) => st,
                    Err(e) if e.is_transient() => return Ok(None),
                    Err(e) => return Err(e.into()),
                };
                let now_seen = Some((st.state, st.ready, st.crash_count));
                let changed = seen
                    .lock()
                    .map(|mut l| std::mem::replace(&mut *l, now_seen) != now_seen)
                    .unwrap_or(true);
                if changed {
                    record_agent(w, &st).await;
                }
                if st.state == AgentState::Error {
                    return Err(StepError::Fatal(format!(
                        "the agent reports an error: {}",
                        st.error.unwrap_or_else(|| "(no message)".into())
                    )));
                }
                if st.ready && st.state == AgentState::Running {
                    return Ok(Some(()));
                }
                let step = st
                    .install_step
                    .clone()
                    .unwrap_or_else(|| format!("agent {}", st.state));
                let changed = last.lock().map(|mut l| {
                    let changed = *l != step;
                    *l = step.clone();
                    changed
                });
                if changed.unwrap_or(false) {
                    w.note(format!("agent: {step}")).await;
                }
                Ok(None)
            }
        },
    )
    .await
}

/// Publishes the server to players (records every failure on its edge record).
pub(crate) async fn publish(w: &Work) -> Result<(), StepError> {
    let id = w.server.id;
    let server = w
        .svc
        .db
        .call(move |c| servers::get(c, id))
        .await?
        .ok_or_else(|| StepError::Fatal(format!("server {id} vanished")))?;
    crate::jobs::edge::publish_server(&w.svc, &server, &w.template).await?;
    Ok(())
}

/// Stores what the agent said on the server row (the UI and doctor read it there).
pub(crate) async fn record_agent(w: &Work, st: &crate::agent::AgentStatus) {
    let (sid, state, ready, crashes) = (
        w.server.id,
        st.state.to_string(),
        st.ready,
        st.crash_count as i64,
    );
    if let Err(e) = w
        .svc
        .db
        .write(move |tx| servers::record_agent_view(tx, sid, &state, ready, Some(crashes)))
        .await
    {
        // Only the UI's view lags; the job goes on.
        tracing::warn!(server = sid, error = %e, "recording the agent's state");
    }
}

/// Start (or restart) the game: the container first, then the agent, then ready.
pub(crate) async fn start(w: &mut Work, restart: bool) -> JobResult {
    let step = if restart { "restart" } else { "start" };
    if w.server.deleted_at.is_some() {
        return Ok(Outcome::Complete);
    }
    let rt = match w.svc.runtime(&w.node) {
        Ok(rt) => rt,
        Err(e) => return w.finish(step, e.into()).await,
    };
    if let Err(e) = w
        .status(ServerStatus::Starting, Some(format!("{step} requested")))
        .await
    {
        return w.finish(step, e).await;
    }
    let spec = w.spec();
    if let Err(e) = rt.start(&spec).await {
        return w.finish(step, e.into()).await;
    }
    let url = match rt.agent_url(&spec, ADDRESS_DEADLINE).await {
        Ok(u) => u,
        Err(e) => return w.finish(step, e.into()).await,
    };
    let agent = match reach_agent(w, &url).await {
        Ok(a) => a,
        Err(e) => return w.finish(step, e).await,
    };
    let sent = if restart {
        agent.restart().await
    } else {
        agent.start().await
    };
    if let Err(e) = sent {
        return w.finish(step, e.into()).await;
    }
    if let Err(e) = wait_ready(w, &agent, START_DEADLINE).await {
        return w.finish(step, e).await;
    }
    if let Err(e) = publish(w).await {
        return w.finish(step, e).await;
    }
    match w
        .status(
            ServerStatus::Running,
            Some("running: the game answers its readiness probe".into()),
        )
        .await
    {
        Ok(()) => Ok(Outcome::Complete),
        Err(e) => w.finish(step, e).await,
    }
}

/// Stop the game through its agent (the container keeps running).
async fn stop(w: &mut Work) -> JobResult {
    if w.server.deleted_at.is_some() {
        return Ok(Outcome::Complete);
    }
    if let Err(e) = w
        .status(ServerStatus::Stopping, Some("stop requested".into()))
        .await
    {
        return w.finish("stop", e).await;
    }
    // Players must not be sent to a server that is going away.
    if let Err(e) =
        crate::jobs::edge::unpublish_server(&w.svc, w.server.id, Some(&[VELOCITY])).await
    {
        return w
            .finish(
                "stop",
                StepError::Transient(format!("unregistering from Velocity: {e}")),
            )
            .await;
    }
    if let Some(url) = w.agent_url() {
        let agent = match reach_agent(w, &url).await {
            Ok(a) => a,
            Err(e) => return w.finish("stop", e).await,
        };
        if let Err(e) = agent.stop().await {
            return w.finish("stop", e.into()).await;
        }
        if let Ok(st) = agent.status().await {
            record_agent(w, &st).await;
        }
    }
    match w
        .status(ServerStatus::Stopped, Some("stopped".into()))
        .await
    {
        Ok(()) => Ok(Outcome::Complete),
        Err(e) => w.finish("stop", e).await,
    }
}

/// Delete: stop the game, destroy the container (gone = success), free everything.
async fn delete(w: &mut Work) -> JobResult {
    if w.server.deleted_at.is_some() {
        return Ok(Outcome::Complete);
    }
    let rt = match w.svc.runtime(&w.node) {
        Ok(rt) => rt,
        Err(e) => return w.finish("delete", e.into()).await,
    };
    if let Err(e) = w
        .status(ServerStatus::Deleting, Some("deleting".into()))
        .await
    {
        return w.finish("delete", e).await;
    }
    // Unpublish everything first, with the names and ids it was published under.
    if let Err(e) = crate::jobs::edge::unpublish_server(&w.svc, w.server.id, None).await {
        return w
            .finish("delete", StepError::Transient(format!("unpublishing: {e}")))
            .await;
    }
    // A clean game stop first, so the world is saved; an unreachable agent does not
    // block the delete.
    if let Some(url) = w.agent_url() {
        let agent = w.agent(&url, &w.server.agent_token);
        if let Err(e) = agent.stop().await {
            w.event(format!(
                "could not stop the game cleanly before deleting: {e}"
            ))
            .await;
        }
    }
    let spec = w.spec();
    if let Err(e) = rt.destroy(&spec).await {
        return w.finish("delete", e.into()).await;
    }
    match w
        .fenced(|tx, sid, jid| servers::archive(tx, sid, Some(jid)))
        .await
    {
        Ok(()) => Ok(Outcome::Complete),
        Err(e) => w.finish("delete", e).await,
    }
}
