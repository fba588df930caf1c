//! `zlh node enroll`: a one-time token and the one command that makes a Proxmox host a
//! ready node (`curl …/install/pve-node.sh?token=… | bash`, src/shipping/pve-node.sh).

use std::io::Read;

use sha2::{Digest, Sha256};

/// The install script, with this control plane's URL, the token, the node's name and
/// the sha256 of the binary it will fetch filled in. Every value is checked to be made
/// of characters that need no shell quoting: none can break out of its quotes.
pub fn render_script(zlh_url: &str, token: &str, node: &str, sha256: &str) -> String {
    let safe = |s: &str, extra: &[u8]| {
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || extra.contains(&b))
    };
    let pick = |s: &str, extra: &[u8]| {
        if safe(s, extra) {
            s.to_string()
        } else {
            String::from("invalid")
        }
    };
    include_str!("pve-node.sh")
        .replace("@@ZLH_URL@@", &pick(zlh_url, b":/.[]-_"))
        .replace("@@TOKEN@@", &pick(token, b""))
        .replace("@@NODE@@", &pick(node, b"-"))
        .replace("@@SHA256@@", &pick(sha256, b""))
}

/// The lowercase hex SHA-256 of a file.
pub fn file_sha256(path: &std::path::Path) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(crate::util::hex(&h.finalize()))
}

/// What `zlh node enroll` prints: the command to run on the Proxmox host.
pub fn command_line(zlh_url: &str, token: &str) -> String {
    format!("curl -fsSL '{zlh_url}/install/pve-node.sh?token={token}' | bash")
}

/// `zlh node …`
#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// A one-time enrollment token for a Proxmox VE host, and the command to run there
    /// as root: it makes the host a ready node called NAME and registers it.
    Enroll {
        #[arg(long)]
        name: String,
        /// How long the token stays valid.
        #[arg(long, default_value = "1h", value_parser = crate::util::parse_duration)]
        ttl: std::time::Duration,
    },
    /// Upgrade every agent on the node NAME to this zlh's binary: one job per server
    /// (the running `zlh serve` carries them out; see `/api/v1/nodes/{id}/agents/upgrade`).
    UpgradeAgents { name: String },
}

/// Runs a `zlh node` command; returns what to print.
pub fn run(
    db: &crate::db::Db,
    config: &crate::config::Config,
    cmd: &NodeCommand,
) -> Result<String, crate::domain::DomainError> {
    match cmd {
        NodeCommand::Enroll { name, ttl } => {
            let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
            let mut conn = db.conn()?;
            let issued = crate::db::write_tx(&mut conn, |tx| {
                crate::domain::enrollments::issue(tx, name, ttl_ms)
            })?;
            let url = config.advertised();
            let mut out = format!(
                "Run this as root on the Proxmox VE host (valid once, until {}, node '{}'):\n\n  {}\n",
                crate::util::format_ts(issued.expires_at),
                issued.name,
                command_line(&url, &issued.token)
            );
            if url.contains("://127.") || url.contains("://[::1]") {
                out.push_str(&format!(
                    "\nwarning: {url} is a loopback address the Proxmox host cannot reach: set advertise_url to this host's LAN address (an IP URL)\n"
                ));
            }
            Ok(out)
        }
        NodeCommand::UpgradeAgents { name } => {
            let mut conn = db.conn()?;
            let jobs = crate::db::write_tx(&mut conn, |tx| {
                let node = crate::domain::nodes::get_by_name(tx, name)?
                    .ok_or_else(|| crate::domain::DomainError::NotFound(format!("node {name}")))?;
                crate::domain::upgrades::request_node(tx, "cli", node.id)
            })?;
            let mut out = format!(
                "{} agent upgrade job(s) queued on node '{name}'{}\n",
                jobs.len(),
                if jobs.is_empty() { "" } else { ":" }
            );
            for (server, job) in jobs {
                out.push_str(&format!("  server {server}: job {job}\n"));
            }
            Ok(out)
        }
    }
}

/// The binary this process runs. On Linux `/proc/self/exe`, which stays readable after
/// the file on disk was replaced by an upgrade: what is served is what runs.
pub fn own_binary() -> std::io::Result<std::path::PathBuf> {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        Ok(proc_exe)
    } else {
        std::env::current_exe()
    }
}

/// The sha256 of [`own_binary`], read once (the running binary does not change).
pub fn own_sha256() -> std::io::Result<String> {
    static DIGEST: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    if let Some(d) = DIGEST.get() {
        return Ok(d.clone());
    }
    let d = file_sha256(&own_binary()?)?;
    Ok(DIGEST.get_or_init(|| d).clone())
}
