//! Proxmox VE: each server is an LXC container linked-cloned from one base template
//! whose `zlh agent` starts with the node's bootstrap token (DESIGN §5, §6 steps 2–5).
//!
//! Every method looks at the world first and is safe to call again after a crash:
//! - `create` adopts a container on the reserved VMID when its description or tags
//!   name this server, refuses a foreign one, and clones only when the VMID is free —
//!   so one server never gets two clones;
//! - `configure` re-applies the same settings (keeping the container's MAC);
//! - `start`/`stop`/`destroy` treat "already running" / "not running" / "already gone"
//!   as success and never touch a container that is not this server's.
//!
//! Locks (`CT is locked (…)`, `can't lock file … got timeout`), 5xx answers and network
//! errors are retried with jittered backoff within `retry_budget_secs`, whether PVE
//! reports them synchronously or as a task's exit status; past the budget they are
//! `RuntimeError::Transient` and the job queue tries again later. Refusals that no
//! retry can fix (a failed clone task, a bad parameter, a missing privilege or
//! template) are `RuntimeError::Fatal`.

mod client;
pub mod tls;

use std::net::IpAddr;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

pub use client::{
    Cause, CloneParams, CtConfig, CtListEntry, CtStatus, Interface, PveClient, PveError,
    RestoreParams, StorageEntry, TaskStatus, Upid, VzdumpParams, encode_segment, exitstatus_ok,
    split_tags,
};

use super::{ContainerInfo, ContainerSpec, Created, Runtime, RuntimeError};

/// A Proxmox node's settings.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProxmoxConfig {
    /// `https://10.0.0.2:8006`. An IP URL (control plane by IP, DESIGN invariant 7)
    /// unless `allow_hostnames`. Never link-local, unspecified, multicast or an odd
    /// spelling of an address (`127.1`, `2130706433`): the API token is sent there.
    pub api_url: String,
    /// Accept a hostname in `api_url` (opting out of invariant 7).
    #[serde(default)]
    pub allow_hostnames: bool,
    /// Accept plain `http://` (no TLS: the token crosses the network in clear). For
    /// simulators and test setups only.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Accept a loopback address in `api_url` (zlh runs on the Proxmox host itself).
    #[serde(default)]
    pub allow_loopback: bool,
    /// `user@realm!tokenid`.
    pub token_id: String,
    /// The token's secret (a UUID). Never logged or shown.
    pub token_secret: String,
    /// PVE node name (`pve1`).
    pub node: String,
    /// VMID of the base template every server is cloned from.
    pub template_vmid: i64,
    /// Target storage of full clones (linked clones stay on the template's storage).
    #[serde(default)]
    pub storage: Option<String>,
    /// Bridge of `net0`.
    #[serde(default = "default_bridge")]
    pub bridge: String,
    /// Full copies instead of linked clones of the template.
    #[serde(default)]
    pub full_clone: bool,
    /// SHA-256 of the node's TLS certificate (hex, colons allowed). When set, exactly
    /// that certificate is accepted; otherwise the system roots verify the node.
    #[serde(default)]
    pub tls_fingerprint: Option<String>,
    /// The agent token the base template's agent starts with. Never logged or shown.
    pub bootstrap_token: String,
    /// How long a PVE task (clone, start, stop, destroy) may take.
    #[serde(default = "default_task_timeout")]
    pub task_timeout_secs: u64,
    /// How long to wait for eth0's address after start.
    #[serde(default = "default_address_timeout")]
    pub address_timeout_secs: u64,
    /// How long one step retries locks, 5xx answers and network errors before handing
    /// the problem back to the job queue as transient.
    #[serde(default = "default_retry_budget")]
    pub retry_budget_secs: u64,
    /// Longest pause between polls of a running task.
    #[serde(default = "default_task_poll_max")]
    pub task_poll_max_ms: u64,
    /// Storage world backups (`vzdump`) go to, e.g. a Proxmox Backup Server storage.
    /// Without it, servers on this node cannot be backed up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup_storage: Option<String>,
}

fn default_bridge() -> String {
    "vmbr0".into()
}
fn default_task_timeout() -> u64 {
    300
}
fn default_address_timeout() -> u64 {
    120
}
fn default_retry_budget() -> u64 {
    60
}
fn default_task_poll_max() -> u64 {
    1000
}

impl std::fmt::Debug for ProxmoxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Secrets are shown only as present/absent.
        let redacted = |s: &str| {
            if s.is_empty() {
                "<empty>"
            } else {
                "<redacted>"
            }
        };
        f.debug_struct("ProxmoxConfig")
            .field("api_url", &self.api_url)
            .field("allow_hostnames", &self.allow_hostnames)
            .field("token_id", &self.token_id)
            .field("token_secret", &redacted(&self.token_secret))
            .field("node", &self.node)
            .field("template_vmid", &self.template_vmid)
            .field("storage", &self.storage)
            .field("bridge", &self.bridge)
            .field("full_clone", &self.full_clone)
            .field("tls_fingerprint", &self.tls_fingerprint)
            .field("bootstrap_token", &redacted(&self.bootstrap_token))
            .field("task_timeout_secs", &self.task_timeout_secs)
            .field("address_timeout_secs", &self.address_timeout_secs)
            .field("retry_budget_secs", &self.retry_budget_secs)
            .field("task_poll_max_ms", &self.task_poll_max_ms)
            .field("backup_storage", &self.backup_storage)
            .finish()
    }
}

/// A problem with a Proxmox node's settings, naming the setting.
#[derive(Debug, thiserror::Error)]
#[error("proxmox node setting `{field}`: {message}")]
pub struct ProxmoxConfigError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: impl Into<String>) -> ProxmoxConfigError {
    ProxmoxConfigError {
        field,
        message: message.into(),
    }
}

/// Names PVE accepts for nodes, bridges and storages (they end up inside `net0=…` and
/// URL paths, so `,` `=` `/` must not sneak in).
fn is_pve_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl ProxmoxConfig {
    /// Checks every setting; returns the API base URL.
    pub fn validate(&self) -> Result<reqwest::Url, ProxmoxConfigError> {
        let url = reqwest::Url::parse(self.api_url.trim())
            .map_err(|e| invalid("api_url", format!("'{}' is not a URL: {e}", self.api_url)))?;
        match url.scheme() {
            "https" => {}
            "http" if self.allow_insecure_http => {}
            "http" => {
                return Err(invalid(
                    "api_url",
                    format!(
                        "'{}' is plain http:// (the API token would cross the network in clear); \
                         use https://, or set allow_insecure_http = true for a test setup",
                        self.api_url
                    ),
                ));
            }
            _ => {
                return Err(invalid(
                    "api_url",
                    format!("'{}' must be https://", self.api_url),
                ));
            }
        }
        let literal = crate::util::url::url_host_literal(self.api_url.trim())
            .map_err(|m| invalid("api_url", m))?;
        match literal.parse::<IpAddr>() {
            Ok(ip) => crate::util::url::check_endpoint_ip(ip, self.allow_loopback)
                .map_err(|m| invalid("api_url", format!("'{literal}' {m}")))?,
            // The URL parser reads `127.1`, `2130706433` or `0x7f.1` as an address:
            // only the plain dotted (or bracketed IPv6) spelling is accepted.
            Err(_)
                if url.host_str().is_some_and(|h| {
                    h.trim_start_matches('[')
                        .trim_end_matches(']')
                        .parse::<IpAddr>()
                        .is_ok()
                }) =>
            {
                return Err(invalid(
                    "api_url",
                    format!(
                        "'{literal}' is not written as a plain IP address (e.g. 10.0.0.2 or [fd00::2])"
                    ),
                ));
            }
            Err(_) if !self.allow_hostnames => {
                return Err(invalid(
                    "api_url",
                    format!(
                        "'{literal}' is a hostname; the control plane addresses the Proxmox API by IP \
                         (e.g. https://10.0.0.2:8006), set allow_hostnames = true to opt out"
                    ),
                ));
            }
            Err(_) => {}
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                "api_url",
                "credentials do not belong in the URL; use token_id and token_secret",
            ));
        }
        let path = url.path().trim_end_matches('/');
        if !(path.is_empty() || path == "/api2/json") || url.query().is_some() {
            return Err(invalid(
                "api_url",
                format!(
                    "'{}' should be just scheme, IP and port (e.g. https://10.0.0.2:8006)",
                    self.api_url
                ),
            ));
        }
        let mut base = url.clone();
        base.set_path("");
        let (user, token) = self
            .token_id
            .split_once('!')
            .ok_or_else(|| invalid("token_id", "expected user@realm!tokenid (e.g. zlh@pve!ctl)"))?;
        if !user.contains('@') || token.is_empty() || self.token_id.contains(['=', ' ']) {
            return Err(invalid(
                "token_id",
                "expected user@realm!tokenid (e.g. zlh@pve!ctl)",
            ));
        }
        if self.token_secret.trim().is_empty() {
            return Err(invalid("token_secret", "is empty"));
        }
        if !is_pve_name(&self.node) {
            return Err(invalid(
                "node",
                format!("'{}' is not a PVE node name", self.node),
            ));
        }
        if !(100..=999_999_999).contains(&self.template_vmid) {
            return Err(invalid(
                "template_vmid",
                format!("{} is not a VMID (100–999999999)", self.template_vmid),
            ));
        }
        if let Some(s) = &self.storage
            && !is_pve_name(s)
        {
            return Err(invalid("storage", format!("'{s}' is not a storage id")));
        }
        if let Some(s) = &self.backup_storage
            && !is_pve_name(s)
        {
            return Err(invalid(
                "backup_storage",
                format!("'{s}' is not a storage id"),
            ));
        }
        if !is_pve_name(&self.bridge) {
            return Err(invalid(
                "bridge",
                format!("'{}' is not a bridge name", self.bridge),
            ));
        }
        if let Some(fp) = &self.tls_fingerprint {
            tls::Fingerprint::parse(fp).map_err(|m| invalid("tls_fingerprint", m))?;
            if url.scheme() == "http" {
                return Err(invalid(
                    "tls_fingerprint",
                    "set, but api_url is plain http:// (no certificate to pin)",
                ));
            }
        }
        if self.bootstrap_token.trim().is_empty() {
            return Err(invalid("bootstrap_token", "is empty"));
        }
        for (field, v) in [
            ("task_timeout_secs", self.task_timeout_secs),
            ("address_timeout_secs", self.address_timeout_secs),
            ("retry_budget_secs", self.retry_budget_secs),
            ("task_poll_max_ms", self.task_poll_max_ms),
        ] {
            if v == 0 {
                return Err(invalid(field, "must be greater than 0"));
            }
        }
        Ok(base)
    }

    pub fn task_timeout(&self) -> Duration {
        Duration::from_secs(self.task_timeout_secs)
    }
    /// The deadline provisioning should pass to `agent_url`.
    pub fn address_timeout(&self) -> Duration {
        Duration::from_secs(self.address_timeout_secs)
    }
    pub fn retry_budget(&self) -> Duration {
        Duration::from_secs(self.retry_budget_secs)
    }
}

/// The runtime on one PVE node.
#[derive(Debug, Clone)]
pub struct ProxmoxRuntime {
    cfg: ProxmoxConfig,
    client: PveClient,
}

/// First and longest pause between retries of a step.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Shutdown grace before PVE force-stops a container (`stop`).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(60);

/// Bounded, jittered retries of one step, giving up as `Transient` with the last reason.
struct Retry {
    what: String,
    started: Instant,
    budget: Duration,
    pause: Duration,
    attempts: u32,
}

impl Retry {
    fn new(what: String, budget: Duration) -> Retry {
        Retry {
            what,
            started: Instant::now(),
            budget,
            pause: RETRY_FIRST,
            attempts: 1,
        }
    }

    /// Waits before the next attempt, or gives up when that would exceed the budget.
    async fn again(&mut self, why: String) -> Result<(), RuntimeError> {
        let jittered = self.pause.mul_f64(0.8 + 0.4 * fastrand::f64());
        if self.started.elapsed() + jittered > self.budget {
            return Err(RuntimeError::Transient(format!(
                "{}: gave up after {} attempts in {:.1?}: {why}",
                self.what,
                self.attempts,
                self.started.elapsed()
            )));
        }
        tracing::debug!(what = %self.what, attempt = self.attempts, %why, "retrying");
        tokio::time::sleep(jittered).await;
        self.pause = (self.pause * 2).min(RETRY_MAX);
        self.attempts += 1;
        Ok(())
    }
}

/// What one attempt of a step came to.
enum Attempt<T> {
    Done(T),
    /// Worth another attempt after a pause (the reason is kept for the give-up message).
    Retry(String),
}

/// A transient PVE error means "try again"; anything else ends the step.
fn retry_or_fail<T>(e: PveError) -> Result<Attempt<T>, RuntimeError> {
    if e.is_transient() {
        Ok(Attempt::Retry(e.to_string()))
    } else {
        Err(to_runtime(e))
    }
}

fn to_runtime(e: PveError) -> RuntimeError {
    if e.is_transient() {
        RuntimeError::Transient(e.to_string())
    } else {
        RuntimeError::Fatal(e.to_string())
    }
}

/// A container as seen, with its lock.
struct Seen {
    info: ContainerInfo,
    lock: Option<String>,
}

impl ProxmoxRuntime {
    pub fn new(cfg: ProxmoxConfig) -> Result<ProxmoxRuntime, ProxmoxConfigError> {
        let client = PveClient::new(&cfg)?;
        Ok(ProxmoxRuntime { cfg, client })
    }

    pub fn client(&self) -> &PveClient {
        &self.client
    }

    pub fn config(&self) -> &ProxmoxConfig {
        &self.cfg
    }

    fn node(&self) -> &str {
        &self.cfg.node
    }

    /// `net0` for this node: DHCP on the configured bridge, keeping an existing MAC.
    fn net0(&self, hwaddr: Option<&str>) -> String {
        match hwaddr {
            Some(mac) => format!(
                "name=eth0,bridge={},hwaddr={mac},ip=dhcp,type=veth",
                self.cfg.bridge
            ),
            None => format!("name=eth0,bridge={},ip=dhcp,type=veth", self.cfg.bridge),
        }
    }

    /// The container on `vmid` with its lock, or `None` when there is none.
    async fn look(&self, vmid: i64) -> Result<Option<(Seen, CtConfig)>, PveError> {
        let cfg = match self.client.config(vmid).await {
            Ok(c) => c,
            Err(e) if e.cause() == Cause::DoesNotExist => return Ok(None),
            Err(e) => return Err(e),
        };
        let status = match self.client.status(vmid).await {
            Ok(s) => s,
            // Destroyed between the two reads.
            Err(e) if e.cause() == Cause::DoesNotExist => return Ok(None),
            Err(e) => return Err(e),
        };
        let lock = cfg.lock().or(status.lock.clone().filter(|l| !l.is_empty()));
        let info = ContainerInfo {
            vmid,
            running: status.running(),
            description: cfg.description(),
            tags: cfg.tags(),
        };
        Ok(Some((Seen { info, lock }, cfg)))
    }

    /// `look`, refusing a container that is not `spec`'s server's.
    async fn look_own(
        &self,
        spec: &ContainerSpec,
    ) -> Result<Result<Option<(Seen, CtConfig)>, PveError>, RuntimeError> {
        match self.look(spec.vmid).await {
            Ok(Some((seen, _))) if !seen.info.belongs_to(spec.server_id) => {
                Err(RuntimeError::Foreign {
                    vmid: spec.vmid,
                    server_id: spec.server_id,
                })
            }
            other => Ok(other),
        }
    }

    async fn create_once(&self, spec: &ContainerSpec) -> Result<Attempt<Created>, RuntimeError> {
        let vmid = spec.vmid;
        match self.look_own(spec).await? {
            Err(e) => return retry_or_fail(e),
            Ok(Some((seen, _))) => {
                if let Some(lock @ ("create" | "destroyed")) = seen.lock.as_deref() {
                    // An earlier run's clone is still copying (its task will unlock the
                    // container or, if it fails, remove it), or a destroy is under way.
                    // Either way the outcome is not known yet: look again.
                    return Ok(Attempt::Retry(format!(
                        "CT {vmid} is locked '{lock}' (a clone or destroy is still running)"
                    )));
                }
                tracing::info!(vmid, server_id = spec.server_id, node = %self.node(),
                    "adopting the container an earlier run made");
                return Ok(Attempt::Done(Created::Adopted));
            }
            Ok(None) => {}
        }
        let params = CloneParams {
            newid: vmid,
            hostname: spec.name.clone(),
            description: spec.description(),
            full: self.cfg.full_clone,
            storage: self.cfg.storage.clone(),
        };
        tracing::info!(vmid, template = self.cfg.template_vmid, node = %self.node(),
            full = self.cfg.full_clone, "cloning the base template");
        let upid = match self.client.clone_ct(self.cfg.template_vmid, &params).await {
            Ok(u) => u,
            Err(e) => {
                return match e.cause() {
                    // It appeared since we looked (maybe our own clone from a crashed
                    // run): look again rather than clone twice.
                    Cause::AlreadyExists => Ok(Attempt::Retry(e.to_string())),
                    Cause::DoesNotExist => Err(RuntimeError::Fatal(format!(
                        "{e} (is template_vmid {} right for node {}?)",
                        self.cfg.template_vmid,
                        self.node()
                    ))),
                    _ => retry_or_fail(e),
                };
            }
        };
        let what = format!(
            "cloning CT {} to {vmid} on node {}",
            self.cfg.template_vmid,
            self.node()
        );
        match self
            .client
            .wait_task(&upid, self.cfg.task_timeout(), &what)
            .await
        {
            Ok(_) => Ok(Attempt::Done(Created::Created)),
            Err(e) => match e.cause() {
                Cause::AlreadyExists | Cause::Locked | Cause::LockTimeout => {
                    Ok(Attempt::Retry(e.to_string()))
                }
                // The clone may still finish on the node; the next run will find it
                // (locked 'create' until then) and adopt it.
                Cause::Timeout => Err(to_runtime(e)),
                Cause::TaskFailed | Cause::DoesNotExist => Err(RuntimeError::Fatal(e.to_string())),
                _ => retry_or_fail(e),
            },
        }
    }

    async fn configure_once(&self, spec: &ContainerSpec) -> Result<Attempt<()>, RuntimeError> {
        let vmid = spec.vmid;
        let cfg = match self.look_own(spec).await? {
            Err(e) => return retry_or_fail(e),
            Ok(None) => {
                return Err(RuntimeError::Fatal(format!(
                    "configuring CT {vmid} on node {}: the container does not exist \
                     (deleted outside zlh?)",
                    self.node()
                )));
            }
            Ok(Some((_, cfg))) => cfg,
        };
        let params = [
            ("cores", spec.cores.to_string()),
            ("memory", spec.memory_mb.to_string()),
            ("net0", self.net0(cfg.net_hwaddr("net0").as_deref())),
            // PVE keeps tags `;`-separated.
            ("tags", spec.tags().join(";")),
            ("description", spec.description()),
        ];
        match self.client.update_config(vmid, &params).await {
            Ok(()) => Ok(Attempt::Done(())),
            Err(e) if e.cause() == Cause::DoesNotExist => Err(RuntimeError::Fatal(e.to_string())),
            Err(e) => retry_or_fail(e),
        }
    }

    async fn start_once(&self, spec: &ContainerSpec) -> Result<Attempt<()>, RuntimeError> {
        let vmid = spec.vmid;
        match self.look_own(spec).await? {
            Err(e) => return retry_or_fail(e),
            Ok(None) => {
                return Err(RuntimeError::Fatal(format!(
                    "starting CT {vmid} on node {}: the container does not exist",
                    self.node()
                )));
            }
            Ok(Some((seen, _))) if seen.info.running => return Ok(Attempt::Done(())),
            Ok(Some(_)) => {}
        }
        let upid = match self.client.start(vmid).await {
            Ok(u) => u,
            Err(e) => {
                return match e.cause() {
                    Cause::AlreadyRunning => Ok(Attempt::Done(())),
                    Cause::DoesNotExist => Err(RuntimeError::Fatal(e.to_string())),
                    _ => retry_or_fail(e),
                };
            }
        };
        let what = format!("starting CT {vmid} on node {}", self.node());
        match self
            .client
            .wait_task(&upid, self.cfg.task_timeout(), &what)
            .await
        {
            Ok(_) => Ok(Attempt::Done(())),
            Err(e) => match e.cause() {
                Cause::AlreadyRunning => Ok(Attempt::Done(())),
                // PVE checks the lock inside the start worker: the task ends with
                // "CT is locked (…)", so that is retried like a synchronous lock.
                Cause::Locked | Cause::LockTimeout => Ok(Attempt::Retry(e.to_string())),
                Cause::Timeout => Err(to_runtime(e)),
                Cause::TaskFailed | Cause::DoesNotExist => Err(RuntimeError::Fatal(e.to_string())),
                _ => retry_or_fail(e),
            },
        }
    }

    /// One attempt to bring the container to "stopped": a clean shutdown (the agent
    /// gets SIGTERM and stops its game gracefully), forced after a grace period; a hard
    /// stop when `hard`.
    async fn stop_once(
        &self,
        spec: &ContainerSpec,
        hard: bool,
    ) -> Result<Attempt<()>, RuntimeError> {
        let vmid = spec.vmid;
        match self.look_own(spec).await? {
            Err(e) => return retry_or_fail(e),
            Ok(None) => return Ok(Attempt::Done(())),
            Ok(Some((seen, _))) if !seen.info.running => return Ok(Attempt::Done(())),
            Ok(Some(_)) => {}
        }
        let grace = SHUTDOWN_GRACE.min(self.cfg.task_timeout() / 2);
        let sent = if hard {
            self.client.stop(vmid).await
        } else {
            self.client.shutdown(vmid, grace, true).await
        };
        let upid = match sent {
            Ok(u) => u,
            Err(e) => {
                return match e.cause() {
                    Cause::NotRunning | Cause::DoesNotExist => Ok(Attempt::Done(())),
                    _ => retry_or_fail(e),
                };
            }
        };
        let what = format!("stopping CT {vmid} on node {}", self.node());
        match self
            .client
            .wait_task(&upid, self.cfg.task_timeout(), &what)
            .await
        {
            Ok(_) => Ok(Attempt::Done(())),
            Err(e) => match e.cause() {
                Cause::NotRunning | Cause::DoesNotExist => Ok(Attempt::Done(())),
                Cause::Locked | Cause::LockTimeout => Ok(Attempt::Retry(e.to_string())),
                Cause::Timeout => Err(to_runtime(e)),
                Cause::TaskFailed => Err(RuntimeError::Fatal(e.to_string())),
                _ => retry_or_fail(e),
            },
        }
    }

    async fn destroy_once(&self, spec: &ContainerSpec) -> Result<Attempt<()>, RuntimeError> {
        let vmid = spec.vmid;
        let running = match self.look_own(spec).await? {
            Err(e) => return retry_or_fail(e),
            Ok(None) => return Ok(Attempt::Done(())),
            Ok(Some((seen, _))) => seen.info.running,
        };
        if running {
            // Everything in it is about to be thrown away: no grace period.
            match self.stop_once(spec, true).await? {
                Attempt::Done(()) => {}
                retry @ Attempt::Retry(_) => return Ok(retry),
            }
        }
        tracing::info!(vmid, node = %self.node(), "destroying the container");
        let upid = match self.client.delete(vmid, true, true).await {
            Ok(u) => u,
            Err(e) => {
                return match e.cause() {
                    Cause::DoesNotExist => Ok(Attempt::Done(())),
                    _ => retry_or_fail(e),
                };
            }
        };
        let what = format!("destroying CT {vmid} on node {}", self.node());
        match self
            .client
            .wait_task(&upid, self.cfg.task_timeout(), &what)
            .await
        {
            Ok(_) => Ok(Attempt::Done(())),
            Err(e) => match e.cause() {
                Cause::DoesNotExist => Ok(Attempt::Done(())),
                Cause::Locked | Cause::LockTimeout | Cause::NotRunning => {
                    Ok(Attempt::Retry(e.to_string()))
                }
                Cause::Timeout => Err(to_runtime(e)),
                Cause::TaskFailed => Err(RuntimeError::Fatal(e.to_string())),
                _ => retry_or_fail(e),
            },
        }
    }

    /// Submits a task for `spec`'s container and waits for it, retrying locks
    /// (`CT is locked (…)`, flock timeouts), 5xx answers and network errors within the
    /// retry budget. A container that is not this server's is refused; a missing one
    /// too unless `may_be_missing`. A failed task is `Fatal` with its exit status.
    async fn task_for<F, Fut>(
        &self,
        spec: &ContainerSpec,
        what: &str,
        may_be_missing: bool,
        submit: F,
    ) -> Result<(), RuntimeError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Upid, PveError>>,
    {
        let mut retry = self.retry(what.to_string());
        loop {
            match self.look_own(spec).await? {
                Err(e) if e.is_transient() => {
                    retry.again(e.to_string()).await?;
                    continue;
                }
                Err(e) => return Err(to_runtime(e)),
                Ok(None) if !may_be_missing => {
                    return Err(RuntimeError::Fatal(format!(
                        "{what}: the container does not exist"
                    )));
                }
                Ok(_) => {}
            }
            let upid = match submit().await {
                Ok(u) => u,
                Err(e) if e.is_transient() => {
                    retry.again(e.to_string()).await?;
                    continue;
                }
                Err(e) => return Err(to_runtime(e)),
            };
            match self
                .client
                .wait_task(&upid, self.cfg.task_timeout(), what)
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if matches!(e.cause(), Cause::Locked | Cause::LockTimeout) => {
                    retry.again(e.to_string()).await?;
                }
                Err(e) if e.cause() == Cause::Timeout => return Err(to_runtime(e)),
                Err(e) => return Err(RuntimeError::Fatal(e.to_string())),
            }
        }
    }

    /// A `vzdump` of `spec`'s container to `storage` (snapshot mode), waited for; the
    /// new backup's volume is found in the storage's content listing by the marker in
    /// its notes.
    pub async fn backup(
        &self,
        spec: &ContainerSpec,
        storage: &str,
        marker: &str,
    ) -> Result<StorageEntry, RuntimeError> {
        let vmid = spec.vmid;
        let params = VzdumpParams {
            vmid,
            storage: storage.to_string(),
            mode: "snapshot".into(),
            notes: format!("{{{{guestname}}}} ({marker})"),
        };
        let what = format!("backing up CT {vmid} on node {}", self.node());
        self.task_for(spec, &what, false, || self.client.vzdump(&params))
            .await?;
        let entries = self
            .client
            .backup_content(storage, vmid)
            .await
            .map_err(to_runtime)?;
        entries
            .into_iter()
            .filter(|e| e.notes.as_deref().is_some_and(|n| n.contains(marker)))
            .max_by_key(|e| e.ctime.unwrap_or(0))
            .ok_or_else(|| {
                RuntimeError::Fatal(format!(
                    "{what}: the task ended OK but storage {storage} lists no backup of CT \
                     {vmid} noted '{marker}'"
                ))
            })
    }

    /// Restores `volid` over `spec`'s (stopped) container: `POST /nodes/{n}/lxc` with
    /// `restore=1`, `force=1`, waited for.
    pub async fn restore(
        &self,
        spec: &ContainerSpec,
        volid: &str,
        storage: Option<&str>,
    ) -> Result<(), RuntimeError> {
        let vmid = spec.vmid;
        // PVE restores to `local` unless told otherwise: keep the disks where they are.
        let rootfs_storage = self.rootfs_storage(vmid).await;
        let params = RestoreParams {
            vmid,
            volid: volid.to_string(),
            storage: storage
                .map(str::to_string)
                .or(rootfs_storage)
                .or_else(|| self.cfg.storage.clone()),
            force: true,
            unique: false,
            overrides: Vec::new(),
        };
        let what = format!("restoring CT {vmid} from {volid} on node {}", self.node());
        self.task_for(spec, &what, true, || self.client.restore_ct(&params))
            .await
    }

    /// The storage `vmid`'s `rootfs` is on, if the container exists and says so.
    pub async fn rootfs_storage(&self, vmid: i64) -> Option<String> {
        match self.client.config(vmid).await {
            Ok(c) => c
                .get("rootfs")
                .and_then(|r| r.split_once(':').map(|(s, _)| s.to_string())),
            Err(_) => None,
        }
    }

    /// Creates `spec`'s container from the backup `volid` on its reserved VMID (a
    /// clone of another server's world): `POST /nodes/{n}/lxc` with `restore=1`,
    /// `unique=1` (a fresh MAC), `force=0` (PVE refuses to overwrite anything), and
    /// this server's hostname, description and tags, which PVE writes over the
    /// backup's own in the same task — so the restored container names this server
    /// from the moment its lock is lifted.
    ///
    /// Like `create`, it looks first: a container on the VMID that names this server
    /// is adopted; one still locked `create` or `destroyed` (a restore under way) is
    /// waited for; any other is `Foreign`. `issued` says an earlier run may already
    /// have submitted the restore (the job's checkpoint); `mark_issued` records that
    /// before the request goes out.
    pub async fn create_from_backup<F, Fut>(
        &self,
        spec: &ContainerSpec,
        volid: &str,
        storage: Option<String>,
        mut issued: bool,
        mut mark_issued: F,
    ) -> Result<Created, RuntimeError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), RuntimeError>>,
    {
        let vmid = spec.vmid;
        let what = format!(
            "restoring {volid} into CT {vmid} for server {} on node {}",
            spec.server_id,
            self.node()
        );
        let mut retry = self.retry(what.clone());
        loop {
            match self.look(vmid).await {
                Err(e) if e.is_transient() => {
                    retry.again(e.to_string()).await?;
                    continue;
                }
                Err(e) => return Err(to_runtime(e)),
                Ok(Some((seen, _))) => {
                    if let Some(lock @ ("create" | "destroyed")) = seen.lock.as_deref() {
                        // A restore (maybe an earlier run's) or a destroy is under way:
                        // its outcome decides whose container this is.
                        retry.again(format!("CT {vmid} is locked '{lock}'")).await?;
                        continue;
                    }
                    if seen.info.belongs_to(spec.server_id) {
                        tracing::info!(vmid, server_id = spec.server_id, node = %self.node(),
                            "adopting the container an earlier run restored");
                        return Ok(Created::Adopted);
                    }
                    return Err(RuntimeError::Foreign {
                        vmid,
                        server_id: spec.server_id,
                    });
                }
                Ok(None) => {}
            }
            if !issued {
                mark_issued().await?;
                issued = true;
            }
            let params = RestoreParams {
                vmid,
                volid: volid.to_string(),
                storage: storage.clone().or_else(|| self.cfg.storage.clone()),
                force: false,
                unique: true,
                overrides: vec![
                    ("hostname", spec.name.clone()),
                    ("description", spec.description()),
                    ("tags", spec.tags().join(";")),
                ],
            };
            tracing::info!(vmid, %volid, node = %self.node(), "restoring a backup into a new container");
            let upid = match self.client.restore_ct(&params).await {
                Ok(u) => u,
                // It appeared since we looked: look again rather than restore twice.
                Err(e) if e.cause() == Cause::AlreadyExists || e.is_transient() => {
                    retry.again(e.to_string()).await?;
                    continue;
                }
                Err(e) => return Err(to_runtime(e)),
            };
            match self
                .client
                .wait_task(&upid, self.cfg.task_timeout(), &what)
                .await
            {
                Ok(_) => return Ok(Created::Created),
                Err(e) => match e.cause() {
                    Cause::AlreadyExists | Cause::Locked | Cause::LockTimeout => {
                        retry.again(e.to_string()).await?;
                    }
                    // The restore may still finish; the next run finds the container
                    // (locked 'create' until then) and adopts it.
                    Cause::Timeout => return Err(to_runtime(e)),
                    _ => return Err(RuntimeError::Fatal(e.to_string())),
                },
            }
        }
    }

    /// Deletes a backup volume (already gone = success).
    pub async fn delete_backup(&self, storage: &str, volid: &str) -> Result<(), RuntimeError> {
        let what = format!("deleting {volid} on node {}", self.node());
        match self.client.delete_volume(storage, volid).await {
            Ok(Some(upid)) => match self
                .client
                .wait_task(&upid, self.cfg.task_timeout(), &what)
                .await
            {
                Ok(_) => Ok(()),
                Err(e) if e.cause() == Cause::DoesNotExist => Ok(()),
                Err(e) => Err(to_runtime(e)),
            },
            Ok(None) => Ok(()),
            Err(e)
                if e.cause() == Cause::DoesNotExist || e.message().contains("does not exist") =>
            {
                Ok(())
            }
            Err(e) => Err(to_runtime(e)),
        }
    }

    fn retry(&self, what: String) -> Retry {
        Retry::new(what, self.cfg.retry_budget())
    }
}

impl Runtime for ProxmoxRuntime {
    fn kind(&self) -> &'static str {
        "proxmox"
    }

    async fn inspect(&self, vmid: i64) -> Result<Option<ContainerInfo>, RuntimeError> {
        self.look(vmid)
            .await
            .map(|seen| seen.map(|(s, _)| s.info))
            .map_err(to_runtime)
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Created, RuntimeError> {
        let mut retry = self.retry(format!(
            "creating CT {} for server {} on node {}",
            spec.vmid,
            spec.server_id,
            self.node()
        ));
        loop {
            match self.create_once(spec).await? {
                Attempt::Done(c) => return Ok(c),
                Attempt::Retry(why) => retry.again(why).await?,
            }
        }
    }

    async fn configure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut retry = self.retry(format!(
            "configuring CT {} on node {}",
            spec.vmid,
            self.node()
        ));
        loop {
            match self.configure_once(spec).await? {
                Attempt::Done(()) => return Ok(()),
                Attempt::Retry(why) => retry.again(why).await?,
            }
        }
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut retry = self.retry(format!("starting CT {} on node {}", spec.vmid, self.node()));
        loop {
            match self.start_once(spec).await? {
                Attempt::Done(()) => return Ok(()),
                Attempt::Retry(why) => retry.again(why).await?,
            }
        }
    }

    async fn agent_url(
        &self,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<String, RuntimeError> {
        let vmid = spec.vmid;
        let started = Instant::now();
        // Short first pauses: with DHCP the address usually appears within moments.
        let mut pause = Duration::from_millis(10);
        // The agent at that address is about to be handed a token: first make sure the
        // container is this server's (once), then wait for eth0's address.
        let mut owned = false;
        let last_seen = loop {
            let seen = if !owned {
                match self.look_own(spec).await? {
                    Ok(Some(_)) => {
                        owned = true;
                        continue;
                    }
                    Ok(None) => {
                        return Err(RuntimeError::Fatal(format!(
                            "finding the address of CT {vmid} on node {}: the container \
                             does not exist",
                            self.node()
                        )));
                    }
                    Err(e) if e.is_transient() => e.to_string(),
                    Err(e) => return Err(to_runtime(e)),
                }
            } else {
                match self.client.interfaces(vmid).await {
                    Ok(Some(ifaces)) => {
                        if let Some(ip) = ifaces
                            .iter()
                            .find(|i| i.name == "eth0")
                            .and_then(Interface::ipv4)
                        {
                            return Ok(format!("http://{}:{}", IpAddr::V4(ip), spec.agent_port));
                        }
                        "eth0 has no IPv4 address yet".to_string()
                    }
                    // PVE answers null while the container is not running.
                    Ok(None) => "the container is not running".to_string(),
                    Err(e) if e.cause() == Cause::DoesNotExist => {
                        return Err(RuntimeError::Fatal(e.to_string()));
                    }
                    Err(e) if e.is_transient() => e.to_string(),
                    Err(e) => return Err(to_runtime(e)),
                }
            };
            let elapsed = started.elapsed();
            if elapsed >= deadline {
                break seen;
            }
            tokio::time::sleep(pause.min(deadline - elapsed)).await;
            pause = (pause * 2).min(Duration::from_secs(2));
        };
        Err(RuntimeError::Transient(format!(
            "finding the address of CT {vmid} on node {}: no IPv4 address on eth0 after \
             {deadline:?} ({last_seen})",
            self.node()
        )))
    }

    async fn stop(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut retry = self.retry(format!("stopping CT {} on node {}", spec.vmid, self.node()));
        loop {
            match self.stop_once(spec, false).await? {
                Attempt::Done(()) => return Ok(()),
                Attempt::Retry(why) => retry.again(why).await?,
            }
        }
    }

    async fn destroy(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let mut retry = self.retry(format!(
            "destroying CT {} on node {}",
            spec.vmid,
            self.node()
        ));
        loop {
            match self.destroy_once(spec).await? {
                Attempt::Done(()) => return Ok(()),
                Attempt::Retry(why) => retry.again(why).await?,
            }
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let entries = self.client.list().await.map_err(to_runtime)?;
        let mut out = Vec::new();
        for entry in entries {
            if !entry.tags().iter().any(|t| t == "zlh") {
                continue;
            }
            // The list has no descriptions; read them for zlh's own containers only.
            match self.look(entry.vmid).await {
                Ok(Some((seen, _))) => out.push(seen.info),
                Ok(None) => {} // destroyed since the list was read
                Err(e) => return Err(to_runtime(e)),
            }
        }
        out.sort_by_key(|c| c.vmid);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> ProxmoxConfig {
        ProxmoxConfig {
            api_url: "https://10.0.0.2:8006".into(),
            allow_hostnames: false,
            allow_insecure_http: false,
            allow_loopback: false,
            token_id: "zlh@pve!ctl".into(),
            token_secret: "0b6c1c2e-secret-uuid".into(),
            node: "pve1".into(),
            template_vmid: 900,
            storage: None,
            bridge: "vmbr0".into(),
            full_clone: false,
            tls_fingerprint: None,
            bootstrap_token: "bootstrap-secret-token".into(),
            task_timeout_secs: 300,
            address_timeout_secs: 120,
            retry_budget_secs: 60,
            task_poll_max_ms: 1000,
            backup_storage: None,
        }
    }

    #[test]
    fn accepts_a_normal_node() {
        let url = cfg().validate().unwrap();
        assert_eq!(url.as_str(), "https://10.0.0.2:8006/");
        let mut c = cfg();
        c.api_url = "https://[fd00::2]:8006/api2/json/".into();
        c.validate().unwrap();
    }

    #[test]
    fn refuses_addresses_the_token_must_never_be_sent_to() {
        for url in [
            "https://127.0.0.1:8006",
            "https://127.1:8006",
            "https://2130706433:8006",
            "https://0x7f.0.0.1:8006",
            "https://0.0.0.0:8006",
            "https://169.254.169.254",
            "https://[fe80::1]:8006",
            "https://[::1]:8006",
            "https://[::]:8006",
            "https://[::ffff:127.0.0.1]:8006",
            "https://224.0.0.1:8006",
            "https://10.0.0.1:x@evil.example/",
            "http://10.0.0.2:8006",
        ] {
            let mut c = cfg();
            c.api_url = url.into();
            let err = c.validate().expect_err(url);
            assert_eq!(err.field, "api_url", "{url}: {err}");
        }
        // Loopback and plain HTTP each take their own explicit opt-in.
        let mut c = cfg();
        c.api_url = "https://127.0.0.1:8006".into();
        c.allow_loopback = true;
        c.validate().unwrap();
        c.api_url = "http://127.0.0.1:8006".into();
        assert!(
            c.validate()
                .unwrap_err()
                .message
                .contains("allow_insecure_http")
        );
        c.allow_insecure_http = true;
        c.validate().unwrap();
        // No opt-in makes a link-local or odd spelling acceptable.
        c.api_url = "http://169.254.169.254".into();
        assert!(c.validate().is_err());
        c.api_url = "http://127.1:8006".into();
        assert!(c.validate().is_err());
    }

    #[test]
    fn a_non_ascii_fingerprint_is_refused_not_a_panic() {
        let mut c = cfg();
        c.tls_fingerprint = Some(format!("{}é{}", "a".repeat(31), "b".repeat(31)));
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "tls_fingerprint");
        assert!(err.message.contains("not a hex digit"), "{}", err.message);
    }

    #[test]
    fn refuses_a_hostname_unless_allowed_naming_the_field() {
        let mut c = cfg();
        c.api_url = "https://pve1.internal:8006".into();
        let err = c.validate().unwrap_err();
        assert_eq!(err.field, "api_url");
        let text = err.to_string();
        assert!(text.contains("`api_url`"), "{text}");
        assert!(text.contains("allow_hostnames"), "{text}");
        c.allow_hostnames = true;
        c.validate().unwrap();
    }

    #[test]
    fn names_the_field_of_each_bad_setting() {
        type Change = Box<dyn Fn(&mut ProxmoxConfig)>;
        let cases: Vec<(&str, Change)> = vec![
            ("api_url", Box::new(|c| c.api_url = "ftp://10.0.0.2".into())),
            (
                "api_url",
                Box::new(|c| c.api_url = "https://10.0.0.2:8006/somewhere".into()),
            ),
            ("token_id", Box::new(|c| c.token_id = "root@pam".into())),
            ("token_secret", Box::new(|c| c.token_secret = " ".into())),
            ("node", Box::new(|c| c.node = "pve/1".into())),
            ("template_vmid", Box::new(|c| c.template_vmid = 5)),
            ("bridge", Box::new(|c| c.bridge = "vmbr0,tag=5".into())),
            ("storage", Box::new(|c| c.storage = Some("a b".into()))),
            (
                "backup_storage",
                Box::new(|c| c.backup_storage = Some("pbs/x".into())),
            ),
            (
                "tls_fingerprint",
                Box::new(|c| c.tls_fingerprint = Some("abc".into())),
            ),
            (
                "bootstrap_token",
                Box::new(|c| c.bootstrap_token = "".into()),
            ),
            ("retry_budget_secs", Box::new(|c| c.retry_budget_secs = 0)),
        ];
        for (field, change) in cases {
            let mut c = cfg();
            change(&mut c);
            assert_eq!(c.validate().unwrap_err().field, field);
        }
    }

    #[test]
    fn debug_never_prints_secrets() {
        let c = cfg();
        let text = format!("{c:?}");
        assert!(!text.contains("0b6c1c2e"), "{text}");
        assert!(!text.contains("bootstrap-secret"), "{text}");
        assert!(text.contains("zlh@pve!ctl"));
        let rt = ProxmoxRuntime::new(c).unwrap();
        let text = format!("{rt:?}");
        assert!(!text.contains("0b6c1c2e"), "{text}");
        assert!(!text.contains("bootstrap-secret"), "{text}");
    }

    #[test]
    fn parses_from_toml_with_defaults() {
        let c: ProxmoxConfig = toml::from_str(
            r#"
            api_url = "https://10.0.0.2:8006"
            token_id = "zlh@pve!ctl"
            token_secret = "s"
            node = "pve1"
            template_vmid = 900
            bootstrap_token = "b"
            tls_fingerprint = "AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89:AB:CD:EF:01:23:45:67:89"
            "#,
        )
        .unwrap();
        assert_eq!(c.bridge, "vmbr0");
        assert!(!c.full_clone);
        assert_eq!(c.task_timeout(), Duration::from_secs(300));
        assert_eq!(c.address_timeout(), Duration::from_secs(120));
        c.validate().unwrap();
        let unknown = toml::from_str::<ProxmoxConfig>("api_url = 'x'\nwhat = 1");
        assert!(unknown.is_err());
    }
}
