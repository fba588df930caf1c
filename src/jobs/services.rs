//! What job handlers need from the application: the database, the configuration,
//! the artifact mirror and the runtimes of the nodes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::artifacts::Mirror;
use crate::config::Config;
use crate::db::Db;
use crate::domain::nodes::Node;
use crate::edge::dns::DnsClient;
use crate::edge::velocity::VelocityClient;
use crate::jobs::reconcile::ReconcileStats;
use crate::runtime::local::LocalRuntime;
use crate::runtime::proxmox::{ProxmoxConfig, ProxmoxRuntime};
use crate::runtime::{NodeRuntime, RuntimeError};

/// One client per Proxmox node, keyed by node id and its settings (edited settings
/// get a new client).
type ProxmoxClients = HashMap<(i64, String), Box<ProxmoxRuntime>>;

#[derive(Clone)]
pub struct Services {
    pub db: Db,
    pub config: Arc<Config>,
    pub mirror: Mirror,
    /// The Velocity bridge, when configured.
    pub velocity: Option<VelocityClient>,
    /// The DNS API, when configured.
    pub dns: Option<DnsClient>,
    pub reconcile: Arc<ReconcileStats>,
    local: LocalRuntime,
    proxmox: Arc<Mutex<ProxmoxClients>>,
}

impl Services {
    pub fn new(db: Db, config: Arc<Config>, mirror: Mirror) -> Services {
        let agent_binary = config
            .agent_binary
            .clone()
            .or_else(|| std::env::current_exe().ok())
            .unwrap_or_else(|| "zlh".into());
        let data_dir =
            std::path::absolute(&config.data_dir).unwrap_or_else(|_| config.data_dir.clone());
        // Validated when the configuration was loaded; the agent parses the same list.
        let agent_args = vec![
            "--crash-backoff".to_string(),
            config.local_crash_backoff.replace(' ', ""),
        ];
        let local = LocalRuntime::new(data_dir.join("servers"), agent_binary, agent_args);
        let velocity = config
            .edge
            .velocity
            .as_ref()
            .map(|v| VelocityClient::new(v.url.clone(), &v.secret));
        let dns = config.edge.dns.as_ref().map(DnsClient::from_config);
        Services {
            db,
            config,
            mirror,
            velocity,
            dns,
            reconcile: Arc::default(),
            local,
            proxmox: Arc::default(),
        }
    }

    /// The local node's runtime (world backups read its server directories).
    pub fn local(&self) -> &LocalRuntime {
        &self.local
    }

    /// The runtime for `node`.
    pub fn runtime(&self, node: &Node) -> Result<NodeRuntime, RuntimeError> {
        match node.kind.as_str() {
            "local" => Ok(NodeRuntime::Local(self.local.clone())),
            "proxmox" => {
                let key = (node.id, node.settings.to_string());
                if let Some(rt) = self.proxmox.lock().ok().and_then(|m| m.get(&key).cloned()) {
                    return Ok(NodeRuntime::Proxmox(rt));
                }
                let cfg: ProxmoxConfig =
                    serde_json::from_value(node.settings.clone()).map_err(|e| {
                        RuntimeError::Fatal(format!("node '{}' settings: {e}", node.name))
                    })?;
                let rt = Box::new(
                    ProxmoxRuntime::new(cfg)
                        .map_err(|e| RuntimeError::Fatal(format!("node '{}': {e}", node.name)))?,
                );
                if let Ok(mut m) = self.proxmox.lock() {
                    m.insert(key, rt.clone());
                }
                Ok(NodeRuntime::Proxmox(rt))
            }
            other => Err(RuntimeError::Fatal(format!(
                "node '{}' is of kind '{other}', which this build cannot drive yet",
                node.name
            ))),
        }
    }
}
