//! The manager: one task that owns the game's life cycle (install, start, stop,
//! restart, crash restarts), so mutations never interleave. The HTTP side sends it
//! operations; readiness probing and output capture run beside it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{ChildStdin, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::install::{self, Installed};
use super::sandbox;
use super::{PAYLOAD_FILE, Shared};
use crate::agent::{AgentState, ConfigPayload, LastCrash, ReadinessKind, slp};
use crate::util::format_ts;

const STATE_FILE: &str = "agent-state.json";
const PID_FILE: &str = "game.pid";

pub(crate) enum Op {
    Configure(Box<ConfigPayload>),
    Start(oneshot::Sender<Result<(), String>>),
    Stop(oneshot::Sender<()>),
    Restart(oneshot::Sender<Result<(), String>>),
    Command(String, oneshot::Sender<Result<(), String>>),
    InstallDone {
        install_id: String,
        result: Result<Installed, String>,
    },
    Exited {
        run_id: u64,
    },
    Shutdown(oneshot::Sender<()>),
    /// Stops the game for a self-upgrade, keeping its desired state (the upgraded agent
    /// restores it); answers the game's process id it stopped, if any.
    Suspend(oneshot::Sender<Option<i32>>),
    /// Undoes a [`Op::Suspend`] whose upgrade failed: the game runs again if wanted.
    Resume,
}

/// What survives an agent restart besides the payload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Persisted {
    /// The install id whose install completed.
    installed_id: Option<String>,
    /// Whether the operator wants the game running.
    desired_running: bool,
    install_count: u64,
    crash_count: u64,
    jar: Option<PathBuf>,
    java: Option<String>,
}

struct Game {
    run_id: u64,
    pid: i32,
    stdin: Option<ChildStdin>,
    started: Instant,
    exited: watch::Receiver<Option<ExitStatus>>,
    probe: CancellationToken,
}

pub(crate) struct Manager {
    shared: Arc<Shared>,
    http: reqwest::Client,
    persisted: Persisted,
    payload: Option<ConfigPayload>,
    game: Option<Game>,
    install: Option<(String, CancellationToken)>,
    next_run: u64,
    crash_streak: usize,
    restart_at: Option<tokio::time::Instant>,
}

impl Manager {
    /// Loads the persisted payload and state from the agent directory.
    pub fn restore(shared: Arc<Shared>) -> Manager {
        let dir = shared.opts.dir.clone();
        let payload: Option<ConfigPayload> = std::fs::read(dir.join(PAYLOAD_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let persisted: Persisted = std::fs::read(dir.join(STATE_FILE))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        shared.update(|s| {
            s.install_id = payload.as_ref().map(|p| p.install_id.clone());
            s.install_count = persisted.install_count;
            s.crash_count = persisted.crash_count;
        });
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // Below zlh's listeners' idle timeout (5 s): a pooled connection is never
            // one the other side is closing, which would fail the next request.
            .pool_idle_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_default();
        Manager {
            shared,
            http,
            persisted,
            payload,
            game: None,
            install: None,
            next_run: 1,
            crash_streak: 0,
            restart_at: None,
        }
    }

    fn dir(&self) -> PathBuf {
        self.shared.opts.dir.clone()
    }

    fn save(&self) {
        let path = self.dir().join(STATE_FILE);
        let tmp = path.with_extension("json.tmp");
        let result = serde_json::to_vec_pretty(&self.persisted)
            .map_err(std::io::Error::other)
            .and_then(|b| std::fs::write(&tmp, b))
            .and_then(|_| std::fs::rename(&tmp, &path));
        if let Err(e) = result {
            tracing::error!(error = %e, path = %path.display(), "saving agent state");
        }
    }

    fn note(&self, line: impl Into<String>) {
        let line = line.into();
        tracing::info!("{line}");
        self.shared.console.push(format!("[zlh-agent] {line}"));
    }

    pub async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Op>) {
        self.kill_stale_game().await;
        // Bring the game back to its desired state.
        if let Some(p) = self.payload.clone() {
            let installed = self.persisted.installed_id.as_deref() == Some(p.install_id.as_str());
            if !installed {
                self.note("resuming an unfinished install");
                self.begin_install(p);
            } else if self.persisted.desired_running {
                if let Err(e) = self.start_game().await {
                    self.fail(e);
                }
            } else {
                self.shared.update(|s| s.state = AgentState::Stopped);
            }
        }
        loop {
            let restart_at = self.restart_at;
            let op = tokio::select! {
                op = ops.recv() => op,
                _ = async {
                    match restart_at {
                        Some(t) => tokio::time::sleep_until(t).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.restart_at = None;
                    if self.install.is_some() {
                        continue; // the install starts the game when it is done
                    }
                    self.note("restarting the game after a crash");
                    if let Err(e) = self.start_game().await {
                        self.fail(e);
                    }
                    continue;
                }
            };
            let Some(op) = op else { break };
            match op {
                Op::Configure(p) => self.configure(*p).await,
                Op::InstallDone { install_id, result } => {
                    self.install_done(install_id, result).await
                }
                // A reply's receiver is gone only when the request was dropped:
                // nobody is left to answer.
                Op::Start(reply) => {
                    let _ = reply.send(self.start().await);
                }
                Op::Stop(reply) => {
                    self.set_desired(false);
                    self.cancel_install();
                    self.stop_game().await;
                    let configured = self.payload.is_some();
                    self.shared.update(|s| {
                        s.state = if configured {
                            AgentState::Stopped
                        } else {
                            AgentState::Idle
                        };
                        s.install_step = None;
                    });
                    let _ = reply.send(());
                }
                Op::Restart(reply) => {
                    self.stop_game().await;
                    let _ = reply.send(self.start().await);
                }
                Op::Command(cmd, reply) => {
                    let _ = reply.send(self.command(&cmd).await);
                }
                Op::Exited { run_id } => self.exited(run_id).await,
                Op::Shutdown(reply) => {
                    self.cancel_install();
                    self.stop_game().await;
                    let _ = reply.send(());
                    break;
                }
                Op::Suspend(reply) => {
                    let pid = self.game.as_ref().map(|g| g.pid);
                    self.restart_at = None;
                    self.cancel_install();
                    self.stop_game().await;
                    // The upgrade task waits for this answer; gone means it gave up.
                    let _ = reply.send(pid);
                }
                Op::Resume => {
                    if self.persisted.desired_running
                        && self.game.is_none()
                        && let Err(e) = self.start().await
                    {
                        self.fail(e);
                    }
                }
            }
        }
    }

    fn set_desired(&mut self, running: bool) {
        if self.persisted.desired_running != running {
            self.persisted.desired_running = running;
            self.save();
        }
        if !running {
            self.restart_at = None;
        }
    }

    fn fail(&mut self, message: String) {
        tracing::error!(error = %message, "agent error");
        self.shared
            .console
            .push(format!("[zlh-agent] error: {message}"));
        self.shared.update(|s| {
            s.state = AgentState::Error;
            s.error = Some(message);
        });
    }

    fn cancel_install(&mut self) {
        if let Some((_, token)) = self.install.take() {
            token.cancel();
        }
    }

    async fn configure(&mut self, p: ConfigPayload) {
        if self
            .install
            .as_ref()
            .is_some_and(|(id, _)| *id == p.install_id)
        {
            return;
        }
        self.cancel_install();
        // A reinstall replaces files the game has open: stop it first, and drop a
        // pending crash restart (the install starts the game when it is done; a
        // restart firing mid-install would start a second one).
        self.stop_game().await;
        self.restart_at = None;
        self.set_desired(true);
        self.crash_streak = 0;
        self.payload = Some(p.clone());
        self.begin_install(p);
    }

    fn begin_install(&mut self, p: ConfigPayload) {
        let token = CancellationToken::new();
        self.install = Some((p.install_id.clone(), token.clone()));
        self.shared.update(|s| {
            s.state = AgentState::Installing;
            s.install_id = Some(p.install_id.clone());
            s.install_step = Some("starting install".into());
            s.error = None;
        });
        self.note(format!(
            "installing {} {} {} (install {})",
            p.game, p.variant, p.version, p.install_id
        ));
        let shared = self.shared.clone();
        let http = self.http.clone();
        let dir = self.dir();
        // The server's own token once /config brought one, else the one it runs with.
        let bearer = p
            .agent_token
            .clone()
            .filter(|t| !t.is_empty())
            .or_else(|| self.shared.current_token());
        tokio::spawn(async move {
            let progress_shared = shared.clone();
            let progress = move |step: String| {
                progress_shared.update(|s| s.install_step = Some(step));
            };
            let result = tokio::select! {
                r = install::install(&http, &dir, &p, bearer.as_deref(), &progress) => r.map_err(|e| e.to_string()),
                _ = token.cancelled() => Err(install::InstallError::Cancelled.to_string()),
            };
            // The manager is gone only at shutdown, when the install no longer matters.
            let _ = shared.ops.send(Op::InstallDone {
                install_id: p.install_id.clone(),
                result,
            });
        });
    }

    async fn install_done(&mut self, install_id: String, result: Result<Installed, String>) {
        let current = self.payload.as_ref().map(|p| p.install_id.clone());
        if current.as_deref() != Some(install_id.as_str())
            || self.install.as_ref().map(|(id, _)| id.as_str()) != Some(install_id.as_str())
        {
            return; // superseded or cancelled
        }
        self.install = None;
        match result {
            Ok(installed) => {
                self.persisted.installed_id = Some(install_id);
                self.persisted.install_count += 1;
                self.persisted.jar = installed.jar;
                self.persisted.java = Some(installed.java);
                self.save();
                let count = self.persisted.install_count;
                self.shared.update(|s| {
                    s.install_step = Some("installed".into());
                    s.install_count = count;
                });
                self.note("install complete");
                if self.persisted.desired_running {
                    if let Err(e) = self.start_game().await {
                        self.fail(e);
                    }
                } else {
                    self.shared.update(|s| s.state = AgentState::Stopped);
                }
            }
            Err(e) => {
                let step = self
                    .shared
                    .snapshot()
                    .and_then(|s| s.install_step)
                    .unwrap_or_default();
                self.fail(format!("install failed ({step}): {e}"));
            }
        }
    }

    async fn start(&mut self) -> Result<(), String> {
        self.set_desired(true);
        if self.game.is_some() {
            return Ok(());
        }
        let Some(p) = self.payload.clone() else {
            return Err("nothing to start: no configuration yet (POST /config first)".into());
        };
        if self.persisted.installed_id.as_deref() != Some(p.install_id.as_str()) {
            if self.install.is_none() {
                self.begin_install(p);
            }
            return Ok(());
        }
        self.crash_streak = 0;
        self.start_game().await
    }

    /// Spawns the game: `sh -c 'exec <start command>'` in the server directory, in
    /// its own process group, with a stdin pipe; dies with the agent.
    async fn start_game(&mut self) -> Result<(), String> {
        let Some(p) = self.payload.clone() else {
            return Err("no configuration".into());
        };
        self.restart_at = None;
        let server_dir = self.dir().join("server");
        let java = self.persisted.java.clone().unwrap_or_else(|| "java".into());
        let jar = self
            .persisted
            .jar
            .as_ref()
            .map(|j| j.to_string_lossy().into_owned())
            .unwrap_or_else(|| "server.jar".into());
        let memory = p.memory_mb.unwrap_or(2048).to_string();
        let template = p
            .start_command
            .clone()
            .unwrap_or_else(|| "{java} -Xms{memory_mb}M -Xmx{memory_mb}M -jar {jar} nogui".into());
        let cmdline = template
            .replace("{java}", &shell_quote(&java))
            .replace("{jar}", &shell_quote(&jar))
            .replace("{memory_mb}", &memory);
        // `exec` makes the game the direct child, so signals and the parent-death
        // signal reach it rather than an intermediate shell.
        let cmdline = if cmdline.starts_with("exec ") || cmdline.contains([';', '&', '|']) {
            cmdline
        } else {
            format!("exec {cmdline}")
        };
        // A cleared environment: the agent's token, the services it talks to and
        // whatever its own parent had stay with the agent.
        let env = sandbox::game_env(std::env::vars(), &p.env, &java, &server_dir);
        // As root (a Proxmox container) the game runs as an unprivileged user.
        let user = match &self.shared.opts.game_user {
            Some(name) => sandbox::prepare_game_user(&self.dir(), name)?,
            None => None,
        };
        let mut cmd = Command::new("/bin/sh");
        cmd.arg("-c")
            .arg(&cmdline)
            .current_dir(&server_dir)
            .env_clear()
            .envs(&env)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(false);
        #[cfg(target_os = "linux")]
        unsafe {
            cmd.pre_exec(move || {
                if let Some(user) = user {
                    sandbox::drop_privileges(user)?;
                }
                // The game must not outlive its supervisor: a restarted agent starts it
                // again. After the drop: a change of credentials clears this signal.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|e| {
            format!(
                "starting the game ({cmdline}) in {}: {e}",
                server_dir.display()
            )
        })?;
        let pid = child.id().map(|p| p as i32).unwrap_or(0);
        // Without it a restarted agent cannot stop a game left running: say so.
        if let Err(e) = std::fs::write(self.dir().join(PID_FILE), pid.to_string()) {
            self.note(format!("writing the game's pid file failed: {e}"));
        }
        let run_id = self.next_run;
        self.next_run += 1;
        self.note(format!("started the game (pid {pid}): {cmdline}"));

        for out in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        ]
        .into_iter()
        .flatten()
        {
            let shared = self.shared.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(out).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    shared.console.push(line);
                }
            });
        }
        let stdin = child.stdin.take();
        let (exit_tx, exit_rx) = watch::channel(None);
        let ops = self.shared.ops.clone();
        tokio::spawn(async move {
            let status = match child.wait().await {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(error = %e, "waiting for the game process");
                    None
                }
            };
            // Receivers gone means the manager stopped: nobody waits for this exit.
            let _ = exit_tx.send(status);
            let _ = ops.send(Op::Exited { run_id });
        });

        let probe = CancellationToken::new();
        let readiness = p.readiness();
        self.shared.update(|s| {
            s.state = AgentState::Starting;
            s.process_running = true;
            s.ready = false;
            s.ready_error = Some("not probed yet".into());
            s.ready_source = Some(
                match readiness.kind {
                    ReadinessKind::MinecraftPing => "minecraft_ping",
                    ReadinessKind::Tcp => "tcp",
                }
                .into(),
            );
            s.install_step = None;
            s.error = None;
            s.run_id = run_id;
            s.properties_sha256 = None;
        });
        tokio::spawn(probe_readiness(
            self.shared.clone(),
            run_id,
            SocketAddr::new(
                readiness
                    .host
                    .unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                readiness.port,
            ),
            readiness.kind,
            probe.clone(),
        ));
        self.game = Some(Game {
            run_id,
            pid,
            stdin,
            started: Instant::now(),
            exited: exit_rx,
            probe,
        });
        Ok(())
    }

    async fn command(&mut self, cmd: &str) -> Result<(), String> {
        let Some(game) = self.game.as_mut() else {
            return Err("the game is not running".into());
        };
        let Some(stdin) = game.stdin.as_mut() else {
            return Err("the game's console input is closed".into());
        };
        stdin
            .write_all(format!("{cmd}\n").as_bytes())
            .await
            .map_err(|e| format!("writing to the game's console: {e}"))?;
        stdin
            .flush()
            .await
            .map_err(|e| format!("writing to the game's console: {e}"))?;
        self.shared.console.push(format!("> {cmd}"));
        Ok(())
    }

    /// Stop command on stdin, then SIGTERM, then SIGKILL, each after its grace period.
    async fn stop_game(&mut self) {
        let Some(mut game) = self.game.take() else {
            return;
        };
        game.probe.cancel();
        self.shared.update(|s| {
            s.state = AgentState::Stopping;
            s.ready = false;
            s.ready_error = Some("stopping".into());
        });
        let stop_cmd = self
            .payload
            .as_ref()
            .and_then(|p| p.stop_command.clone())
            .unwrap_or_else(|| "stop".into());
        if let Some(stdin) = game.stdin.as_mut() {
            let written = match stdin.write_all(format!("{stop_cmd}\n").as_bytes()).await {
                Ok(()) => stdin.flush().await,
                Err(e) => Err(e),
            };
            // SIGTERM follows after the timeout either way.
            if let Err(e) = written {
                self.note(format!("sending the stop command failed: {e}"));
            }
        }
        let opts = &self.shared.opts;
        let mut exited = game.exited.clone();
        let wait = |d: Duration, rx: &mut watch::Receiver<Option<ExitStatus>>| {
            let mut rx = rx.clone();
            async move {
                tokio::time::timeout(d, rx.wait_for(|s| s.is_some()))
                    .await
                    .is_ok()
            }
        };
        if !wait(opts.stop_timeout, &mut exited).await {
            self.note(format!(
                "the game did not stop within {:?} of '{stop_cmd}': sending SIGTERM",
                opts.stop_timeout
            ));
            signal_group(game.pid, libc::SIGTERM);
            if !wait(opts.term_timeout, &mut exited).await {
                self.note("the game ignored SIGTERM: sending SIGKILL");
                signal_group(game.pid, libc::SIGKILL);
                wait(Duration::from_secs(30), &mut exited).await;
            }
        }
        self.remove_pid_file();
        let code = exited.borrow().and_then(|s| s.code());
        let signal = exited
            .borrow()
            .and_then(|s| std::os::unix::process::ExitStatusExt::signal(&s));
        self.note(format!("the game stopped ({})", exit_text(code, signal)));
        self.shared.update(|s| {
            s.process_running = false;
            s.ready = false;
            s.ready_error = Some("not running".into());
        });
    }

    async fn exited(&mut self, run_id: u64) {
        let Some(game) = self.game.as_ref().filter(|g| g.run_id == run_id) else {
            return; // a stop already handled this run
        };
        let game_started = game.started;
        let status = *game.exited.borrow();
        if let Some(g) = self.game.take() {
            g.probe.cancel();
        }
        self.remove_pid_file();
        let uptime = game_started.elapsed();
        let (code, signal) = match status {
            Some(s) => (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)),
            None => (None, None),
        };
        if uptime >= self.shared.opts.stable_uptime {
            self.crash_streak = 0;
        }
        self.crash_streak += 1;
        self.persisted.crash_count += 1;
        self.save();
        let crash = LastCrash {
            time: format_ts(crate::util::now_ms()),
            exit_code: code,
            signal,
            uptime_seconds: uptime.as_secs(),
            log_tail: self.shared.console.tail(30),
        };
        let total = self.persisted.crash_count;
        self.shared.update(|s| {
            s.process_running = false;
            s.ready = false;
            s.ready_error = Some("not running".into());
            s.crash_count = total;
            s.last_crash = Some(crash);
        });
        let backoff = &self.shared.opts.crash_backoff;
        match backoff.get(self.crash_streak - 1) {
            Some(delay) if self.persisted.desired_running => {
                self.note(format!(
                    "the game crashed ({}, up {} s); restart {} of {} in {} s",
                    exit_text(code, signal),
                    uptime.as_secs(),
                    self.crash_streak,
                    backoff.len(),
                    delay.as_secs()
                ));
                self.shared.update(|s| s.state = AgentState::Crashed);
                self.restart_at = Some(tokio::time::Instant::now() + *delay);
            }
            Some(_) => {
                self.shared.update(|s| s.state = AgentState::Stopped);
            }
            None => {
                let streak = self.crash_streak;
                self.fail(format!(
                    "the game crashed {streak} times in a row (last: {}); not restarting it again — fix the cause, then start or reinstall",
                    exit_text(code, signal)
                ));
            }
        }
    }

    /// A game left behind by an earlier agent (should the parent-death signal not
    /// have reached it) is stopped before a new one starts on the same port.
    async fn kill_stale_game(&self) {
        let path = self.dir().join(PID_FILE);
        let Some(pid) = std::fs::read_to_string(&path)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|p| *p > 1)
        else {
            return;
        };
        let server_dir = self.dir().join("server");
        let cwd = std::fs::read_link(format!("/proc/{pid}/cwd")).ok();
        if cwd.is_some_and(|c| {
            c == server_dir || std::fs::canonicalize(&server_dir).is_ok_and(|s| s == c)
        }) {
            self.note(format!(
                "stopping a game left running by an earlier agent (pid {pid})"
            ));
            signal_group(pid, libc::SIGKILL);
        }
        self.remove_pid_file();
    }

    /// The pid file goes with the game: a stale one would name another process later.
    fn remove_pid_file(&self) {
        let path = self.dir().join(PID_FILE);
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            self.note(format!("removing {}: {e}", path.display()));
        }
    }
}

/// Signals the whole process group of the game.
fn signal_group(pid: i32, sig: i32) {
    if pid > 1 {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory involved.
        unsafe {
            libc::kill(-pid, sig);
        }
    }
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"/._-+=:,".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
}

/// Probes readiness while this run lasts; the first success turns `starting` into `running`.
async fn probe_readiness(
    shared: Arc<Shared>,
    run_id: u64,
    addr: SocketAddr,
    kind: ReadinessKind,
    cancel: CancellationToken,
) {
    let interval = shared.opts.probe_interval;
    let timeout = Duration::from_secs(3).max(interval);
    // Probe often while the game starts (readiness is what provisioning waits for),
    // then settle at the configured interval.
    let mut pause = Duration::from_millis(20).min(interval);
    loop {
        let result = match kind {
            ReadinessKind::MinecraftPing => slp::status(addr, timeout).await.map(|_| ()),
            ReadinessKind::Tcp => slp::tcp_accepts(addr, timeout).await,
        };
        if cancel.is_cancelled() {
            return;
        }
        // The file this run is playing with: taken at its first ready.
        let properties = if result.is_ok()
            && shared
                .snapshot()
                .is_some_and(|s| s.run_id == run_id && s.properties_sha256.is_none())
        {
            match super::game_files::properties_hash(&shared.opts.dir.join("server")).await {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "hashing server.properties");
                    None
                }
            }
        } else {
            None
        };
        shared.update(|s| {
            if s.run_id != run_id || !matches!(s.state, AgentState::Starting | AgentState::Running)
            {
                return;
            }
            match &result {
                Ok(()) => {
                    if properties.is_some() && s.properties_sha256.is_none() {
                        s.properties_sha256 = properties.clone();
                    }
                    s.ready = true;
                    s.ready_error = None;
                    s.last_ready_at = Some(format_ts(crate::util::now_ms()));
                    s.state = AgentState::Running;
                }
                Err(e) => {
                    s.ready = false;
                    s.ready_error = Some(e.to_string());
                }
            }
        });
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(interval);
    }
}

/// How a game process ended, for people: `exit code 0`, `killed by SIGKILL (signal 9)`.
pub(crate) fn exit_text(code: Option<i32>, signal: Option<i32>) -> String {
    match (code, signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(s)) => {
            let name = match s {
                libc::SIGHUP => "SIGHUP",
                libc::SIGINT => "SIGINT",
                libc::SIGQUIT => "SIGQUIT",
                libc::SIGABRT => "SIGABRT",
                libc::SIGKILL => "SIGKILL",
                libc::SIGSEGV => "SIGSEGV",
                libc::SIGPIPE => "SIGPIPE",
                libc::SIGTERM => "SIGTERM",
                _ => return format!("killed by signal {s}"),
            };
            format!("killed by {name} (signal {s})")
        }
        (None, None) => "exit status unknown".to_string(),
    }
}

#[cfg(test)]
mod exit_text_tests {
    use super::exit_text;

    #[test]
    fn exits_read_as_sentences() {
        assert_eq!(exit_text(Some(0), None), "exit code 0");
        assert_eq!(exit_text(None, Some(9)), "killed by SIGKILL (signal 9)");
        assert_eq!(exit_text(None, Some(64)), "killed by signal 64");
        assert_eq!(exit_text(None, None), "exit status unknown");
    }
}
