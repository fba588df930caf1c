//! Where game containers live (DESIGN §5, §6). One trait, two implementations:
//! `local` (this host: a directory and a detached `zlh agent` per server) and
//! `proxmox` (an LXC container cloned from a base template on a PVE node).
//!
//! Every method looks at the world before it acts, so the provisioning job can call
//! them again after a crash: creating a container that already exists for this
//! server adopts it, destroying one that is already gone succeeds.

pub mod local;
pub mod proxmox;

use std::future::Future;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What the runtime needs to know about one server's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub server_id: i64,
    /// DNS-label name of the server (the container's hostname).
    pub name: String,
    /// The container's identity on its node (Proxmox VMID; on a local node, a number
    /// from the same allocator, used in paths and descriptions).
    pub vmid: i64,
    pub cores: u32,
    pub memory_mb: u32,
    /// Port the agent listens on (18888 on Proxmox; from the port pool on a local node).
    pub agent_port: u16,
    /// The server's own agent token (local nodes hand it to the agent they spawn).
    pub agent_token: String,
}

impl ContainerSpec {
    /// Tags that identify a zlh container and the server it belongs to.
    pub fn tags(&self) -> Vec<String> {
        vec!["zlh".into(), server_tag(self.server_id)]
    }

    /// The description written on the container: names the server, so a later run
    /// can tell its own container from a foreign one on the same VMID.
    pub fn description(&self) -> String {
        format!("zlh server {} ({})", self.server_id, self.name)
    }
}

pub fn server_tag(server_id: i64) -> String {
    format!("srv-{server_id}")
}

/// A container as the runtime sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerInfo {
    pub vmid: i64,
    pub running: bool,
    pub description: Option<String>,
    pub tags: Vec<String>,
}

impl ContainerInfo {
    /// Whether this container was made for `server_id`.
    pub fn belongs_to(&self, server_id: i64) -> bool {
        self.tags.iter().any(|t| *t == server_tag(server_id))
            || self
                .description
                .as_deref()
                .is_some_and(|d| d.starts_with(&format!("zlh server {server_id} ")))
    }
}

/// How `create` ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Created {
    /// A new container was made.
    Created,
    /// A container made for this server by an earlier run was found and kept.
    Adopted,
}

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The VMID is taken by a container that is not this server's.
    #[error("VMID {vmid} is taken by a container that is not server {server_id}'s")]
    Foreign { vmid: i64, server_id: i64 },
    /// Worth retrying later (network, 5xx, a lock held too long, a timeout).
    #[error("{0}")]
    Transient(String),
    /// Retrying will not help (a failed task, a refused parameter, a missing template).
    #[error("{0}")]
    Fatal(String),
}

impl RuntimeError {
    pub fn is_transient(&self) -> bool {
        matches!(self, RuntimeError::Transient(_))
    }
}

/// One place containers live.
pub trait Runtime: Send + Sync + 'static {
    /// `local` or `proxmox`.
    fn kind(&self) -> &'static str;

    /// The container on this VMID, if any.
    fn inspect(
        &self,
        vmid: i64,
    ) -> impl Future<Output = Result<Option<ContainerInfo>, RuntimeError>> + Send;

    /// Makes the container for `spec`, or adopts the one an earlier run made.
    /// A foreign container on the VMID is `RuntimeError::Foreign`.
    fn create(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<Created, RuntimeError>> + Send;

    /// Applies cores, memory, network and tags.
    fn configure(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Starts the container (already running = success).
    fn start(&self, spec: &ContainerSpec) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// The agent's base URL (`http://IP:PORT`), waiting up to `deadline` for an address.
    fn agent_url(
        &self,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> impl Future<Output = Result<String, RuntimeError>> + Send;

    /// Stops the container (already stopped or gone = success).
    fn stop(&self, spec: &ContainerSpec) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Stops and destroys the container with everything in it (already gone = success).
    fn destroy(
        &self,
        spec: &ContainerSpec,
    ) -> impl Future<Output = Result<(), RuntimeError>> + Send;

    /// Every container tagged `zlh` on this node (for `zlh doctor`).
    fn list(&self) -> impl Future<Output = Result<Vec<ContainerInfo>, RuntimeError>> + Send;
}

/// Checks the settings of a Proxmox node; returns (field, message) for the first problem.
pub fn proxmox_settings_check(settings: &serde_json::Value) -> Result<(), (String, String)> {
    let cfg: proxmox::ProxmoxConfig = serde_json::from_value(settings.clone()).map_err(|e| {
        let msg = e.to_string();
        let field = msg.split('`').nth(1).unwrap_or("settings").to_string();
        (field, msg)
    })?;
    cfg.validate()
        .map(|_| ())
        .map_err(|e| (e.field.to_string(), e.message.clone()))
}

/// The runtime of one node, whichever kind it is.
#[derive(Debug, Clone)]
pub enum NodeRuntime {
    Local(local::LocalRuntime),
    Proxmox(Box<proxmox::ProxmoxRuntime>),
}

macro_rules! delegate {
    ($self:ident, $rt:ident => $call:expr) => {
        match $self {
            NodeRuntime::Local($rt) => $call,
            NodeRuntime::Proxmox($rt) => $call,
        }
    };
}

impl Runtime for NodeRuntime {
    fn kind(&self) -> &'static str {
        delegate!(self, rt => rt.kind())
    }
    async fn inspect(&self, vmid: i64) -> Result<Option<ContainerInfo>, RuntimeError> {
        delegate!(self, rt => rt.inspect(vmid).await)
    }
    async fn create(&self, spec: &ContainerSpec) -> Result<Created, RuntimeError> {
        delegate!(self, rt => rt.create(spec).await)
    }
    async fn configure(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.configure(spec).await)
    }
    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.start(spec).await)
    }
    async fn agent_url(
        &self,
        spec: &ContainerSpec,
        deadline: Duration,
    ) -> Result<String, RuntimeError> {
        delegate!(self, rt => rt.agent_url(spec, deadline).await)
    }
    async fn stop(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.stop(spec).await)
    }
    async fn destroy(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        delegate!(self, rt => rt.destroy(spec).await)
    }
    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        delegate!(self, rt => rt.list().await)
    }
}
