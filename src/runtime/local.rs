//! The `local` runtime: each server is a directory under `<data_dir>/servers/<vmid>`
//! and a detached `zlh agent` on a loopback port. The agent runs in its own session,
//! so game servers keep running while `zlh serve` restarts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use super::{ContainerInfo, ContainerSpec, Created, Runtime, RuntimeError};

const META_FILE: &str = "container.json";
const AGENT_PID: &str = "agent.pid";
/// The agent reads its token from this file in its directory (`agent/token`).
const AGENT_TOKEN_FILE: &str = "token";

/// The part of `zlh serve`'s environment a local agent inherits: PATH, HOME,
/// locale, time zone, temp dir and the log filter.
fn agent_env(
    env: impl IntoIterator<Item = (String, String)>,
) -> impl Iterator<Item = (String, String)> {
    env.into_iter().filter(|(k, _)| {
        matches!(
            k.as_str(),
            "PATH" | "HOME" | "LANG" | "TZ" | "TMPDIR" | "ZLH_LOG"
        ) || k.starts_with("LC_")
    })
}

/// Writes `text` to `path` atomically, readable by its owner only.
fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[derive(Debug, Clone)]
pub struct LocalRuntime {
    root: PathBuf,
    agent_binary: PathBuf,
    /// Extra `zlh agent` flags (probe interval, crash backoff …).
    agent_args: Vec<String>,
}

impl LocalRuntime {
    pub fn new(root: PathBuf, agent_binary: PathBuf, agent_args: Vec<String>) -> LocalRuntime {
        LocalRuntime {
            root,
            agent_binary,
            agent_args,
        }
    }

    fn dir(&self, vmid: i64) -> PathBuf {
        self.root.join(vmid.to_string())
    }

    /// The game's server directory of a container (what a world backup copies).
    pub fn game_dir(&self, vmid: i64) -> PathBuf {
        self.dir(vmid).join("agent").join("server")
    }

    fn read_meta(&self, vmid: i64) -> Option<ContainerInfo> {
        let text = std::fs::read_to_string(self.dir(vmid).join(META_FILE)).ok()?;
        let mut info: ContainerInfo = serde_json::from_str(&text).ok()?;
        info.running = self.agent_pid(vmid).is_some();
        Some(info)
    }

    /// The pid of this container's agent, if it runs.
    fn agent_pid(&self, vmid: i64) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir(vmid).join(AGENT_PID))
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // The pid must still be a `zlh agent` for this directory (pids get reused).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let dir = self.dir(vmid).join("agent");
        let dir = dir.to_string_lossy();
        (args.iter().any(|a| a == "agent") && args.iter().any(|a| *a == *dir)).then_some(pid)
    }

    fn io(what: &str, path: &Path, e: std::io::Error) -> RuntimeError {
        RuntimeError::Transient(format!("{what} {}: {e}", path.display()))
    }

    /// Waits until no process has `pid`, up to `deadline`.
    async fn wait_gone(pid: i32, deadline: Duration) -> bool {
        let end = tokio::time::Instant::now() + deadline;
        let mut pause = Duration::from_millis(10);
        loop {
            // SAFETY: signal 0 only checks for existence.
            let alive = unsafe { libc::kill(pid, 0) } == 0;
            if !alive {
                return true;
            }
            if tokio::time::Instant::now() >= end {
                return false;
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }
}

impl Runtime for LocalRuntime {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn inspect(&self, vmid: i64) -> Result<Option<ContainerInfo>, RuntimeError> {
        Ok(self.read_meta(vmid))
    }

    async fn create(&self, spec: &ContainerSpec) -> Result<Created, RuntimeError> {
        if let Some(existing) = self.read_meta(spec.vmid) {
            return if existing.belongs_to(spec.server_id) {
                Ok(Created::Adopted)
            } else {
                Err(RuntimeError::Foreign {
                    vmid: spec.vmid,
                    server_id: spec.server_id,
                })
            };
        }
        let dir = self.dir(spec.vmid);
        if dir.exists() && std::fs::read_dir(&dir).is_ok_and(|mut d| d.next().is_some()) {
            // Something we did not make sits there: never reuse it.
            return Err(RuntimeError::Foreign {
                vmid: spec.vmid,
                server_id: spec.server_id,
            });
        }
        std::fs::create_dir_all(dir.join("agent")).map_err(|e| Self::io("creating", &dir, e))?;
        let info = ContainerInfo {
            vmid: spec.vmid,
            running: false,
            description: Some(spec.description()),
            tags: spec.tags(),
        };
        let text = serde_json::to_vec_pretty(&info).unwrap_or_default();
        let tmp = dir.join(".container.json.tmp");
        std::fs::write(&tmp, text)
            .and_then(|_| std::fs::rename(&tmp, dir.join(META_FILE)))
            .map_err(|e| Self::io("writing", &dir, e))?;
        Ok(Created::Created)
    }

    async fn configure(&self, _spec: &ContainerSpec) -> Result<(), RuntimeError> {
        // Nothing to limit on this host: memory and cores are advisory for local servers.
        Ok(())
    }

    async fn start(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        if self.agent_pid(spec.vmid).is_some() {
            return Ok(());
        }
        // A pool port held by another process (say, an agent left behind by something
        // else) would have us talk to a stranger: say so instead.
        if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", spec.agent_port)) {
            return Err(RuntimeError::Transient(format!(
                "the agent port 127.0.0.1:{} of server {} is in use by another process: {e}",
                spec.agent_port, spec.server_id
            )));
        }
        let dir = self.dir(spec.vmid);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("agent.log"))
            .map_err(|e| Self::io("opening the agent log in", &dir, e))?;
        let log2 = log
            .try_clone()
            .map_err(|e| Self::io("opening the agent log in", &dir, e))?;
        // The token goes in the agent's own token file (0600), never in its
        // environment, where every process it starts could read it.
        write_private(&dir.join("agent").join(AGENT_TOKEN_FILE), &spec.agent_token)
            .map_err(|e| Self::io("writing the agent token in", &dir, e))?;
        let mut cmd = std::process::Command::new(&self.agent_binary);
        cmd.arg("agent")
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", spec.agent_port))
            .arg("--dir")
            .arg(dir.join("agent"))
            .args(&self.agent_args)
            // The data dir is private to our user: a game of another user could not
            // even reach its own directory.
            .arg("--game-as-agent-user")
            // An upgrade must not replace `zlh serve`'s own binary, which this agent
            // runs: it gets a copy of its own (the next start runs zlh's binary again,
            // which is at least as new).
            .arg("--upgrade-path")
            .arg(dir.join("zlh"))
            // Nothing of `zlh serve`'s environment (edge tokens, the forwarding
            // secret …) but what any process needs.
            .env_clear()
            .envs(agent_env(std::env::vars()))
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        #[cfg(unix)]
        unsafe {
            use std::os::unix::process::CommandExt;
            // A session of its own: the agent (and its game) outlive `zlh serve`.
            cmd.pre_exec(|| {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            RuntimeError::Fatal(format!(
                "starting the agent {} for server {}: {e}",
                self.agent_binary.display(),
                spec.server_id
            ))
        })?;
        let pid = child.id();
        std::fs::write(dir.join(AGENT_PID), pid.to_string())
            .map_err(|e| Self::io("writing the agent pid in", &dir, e))?;
        // Reap it if it exits while we run; if we exit first, init adopts it.
        std::thread::spawn(move || {
            if let Err(e) = child.wait() {
                tracing::warn!(pid, error = %e, "reaping a local agent");
            }
        });
        Ok(())
    }

    async fn agent_url(
        &self,
        spec: &ContainerSpec,
        _deadline: Duration,
    ) -> Result<String, RuntimeError> {
        Ok(format!("http://127.0.0.1:{}", spec.agent_port))
    }

    async fn stop(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        let Some(pid) = self.agent_pid(spec.vmid) else {
            return Ok(());
        };
        // SIGTERM: the agent stops its game gracefully, then exits.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        if !Self::wait_gone(pid, Duration::from_secs(90)).await {
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            Self::wait_gone(pid, Duration::from_secs(10)).await;
        }
        // The pid file must go with the agent: a stale one names another process later.
        // The agent is stopped either way; only the next `stop` may guess wrong.
        let pid_file = self.dir(spec.vmid).join(AGENT_PID);
        if let Err(e) = std::fs::remove_file(&pid_file)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(file = %pid_file.display(), error = %e, "removing a stopped agent's pid file");
        }
        Ok(())
    }

    async fn destroy(&self, spec: &ContainerSpec) -> Result<(), RuntimeError> {
        self.stop(spec).await?;
        let dir = self.dir(spec.vmid);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Self::io("removing", &dir, e)),
        }
    }

    async fn list(&self) -> Result<Vec<ContainerInfo>, RuntimeError> {
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(Self::io("listing", &self.root, e)),
        };
        let mut out: Vec<ContainerInfo> = entries
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
            .filter_map(|vmid| self.read_meta(vmid))
            .collect();
        out.sort_by_key(|c| c.vmid);
        Ok(out)
    }
}
