//! Shared test helpers: temp data dirs, the real `zlh` binary as a child process,
//! and polling with deadlines (never fixed sleeps as synchronisation).
#![allow(dead_code)]

pub mod upstream;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `zlh` under test: this checkout's build, or the binary `ZLH_RELEASE_BINARY` names
/// (the suite run against a `scripts/release` build).
pub static BIN: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    std::env::var("ZLH_RELEASE_BINARY").unwrap_or_else(|_| env!("CARGO_BIN_EXE_zlh").to_string())
});

/// Polls `f` every few ms until it returns `Some`, or panics after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f() {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// Async form of [`wait_for`].
pub async fn wait_for_async<T, F, Fut>(what: &str, deadline: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let start = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if start.elapsed() > deadline {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

pub mod api;
pub mod browser;
pub mod cloudflare_sim;
pub mod fileserver;
pub mod pve_sim;
pub mod sim_http;
pub mod technitium_sim;
pub mod velocity_sim;

/// A loopback port that was free a moment ago. Only for what cannot listen on port 0
/// itself (a game port handed to an agent, an address nobody answers on): a child
/// server listens on port 0 and its address is read back with [`bound_addr`].
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding a probe port on 127.0.0.1")
}

/// Ports per local-node pool window; windows lie in 20000..32600, below the kernel's
/// ephemeral range (32768+) where port-0 listeners and outgoing connections land.
const PORT_WINDOW: u32 = 300;
const PORT_WINDOWS: u32 = 42;

/// A local-node port window held by this test process: an exclusive `flock` on a file
/// per window, so no other test (here, or in another process such as a second
/// checkout's suite) uses it at the same time. Released when dropped.
pub struct PortWindow {
    pub start: u32,
    _lock: std::fs::File,
}

impl PortWindow {
    /// The first free window; or, with `want`, that window if it is free (a restart
    /// of a data dir whose window was given up in between).
    pub fn claim(want: Option<u32>) -> Option<PortWindow> {
        use std::os::fd::AsRawFd;
        let dir = std::env::temp_dir().join("zlh-test-port-windows");
        std::fs::create_dir_all(&dir).expect("creating the port-window lock dir");
        let first = std::process::id() % PORT_WINDOWS;
        let candidates: Vec<u32> = match want {
            Some(start) => vec![(start - 20_000) / PORT_WINDOW],
            None => (0..PORT_WINDOWS)
                .map(|i| (first + i) % PORT_WINDOWS)
                .collect(),
        };
        for k in candidates {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(dir.join(format!("{k}.lock")))
                .expect("opening a port-window lock");
            // Locks belong to the open file: this process's own claims fail here too.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Some(PortWindow {
                    start: 20_000 + k * PORT_WINDOW,
                    _lock: file,
                });
            }
        }
        None
    }

    /// Keeps the window held until this process ends (agents left running use it).
    pub fn keep(self) {
        static KEPT: std::sync::Mutex<Vec<PortWindow>> = std::sync::Mutex::new(Vec::new());
        KEPT.lock().unwrap_or_else(|e| e.into_inner()).push(self);
    }
}

/// A free window, waiting for one while every window is taken by running tests.
pub fn claim_port_window() -> PortWindow {
    wait_for("a free local port window", Duration::from_secs(120), || {
        PortWindow::claim(None)
    })
}

/// The address a child (`zlh serve` or `zlh agent` on port 0) logged with `message`
/// (`… message addr=127.0.0.1:PORT …`); panics with the log if it exits first.
pub fn bound_addr(child: &mut Child, log: &Path, message: &str) -> SocketAddr {
    wait_for(
        &format!("'{message}' with its address in {}", log.display()),
        Duration::from_secs(30),
        || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "{} exited early ({status}):\n{}",
                    log.display(),
                    std::fs::read_to_string(log).unwrap_or_default()
                );
            }
            let text = strip_ansi(&std::fs::read_to_string(log).ok()?);
            let line = text.lines().find(|l| l.contains(message))?;
            line.split_whitespace()
                .find_map(|w| w.strip_prefix("addr="))
                .and_then(|a| a.parse().ok())
        },
    )
}

/// `text` without terminal escape sequences (`ESC [ … letter`): a log written with
/// `log_color = always` wraps field names in them.
pub fn strip_ansi(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A `zlh` command with a clean environment (no stray ZLH_* from the caller).
pub fn zlh(cwd: &Path) -> Command {
    let mut cmd = Command::new(BIN.as_str());
    cmd.current_dir(cwd);
    for (k, _) in std::env::vars() {
        if k.starts_with("ZLH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ZLH_LOG", "info,zlh=debug");
    cmd
}

/// A `zlh serve` child process, killed when dropped.
pub struct Served {
    pub child: Child,
    /// The local node's port window, given up when dropped (kept if agents stay).
    pub port_window: Option<PortWindow>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Leave local agents running when dropped (a restart of the same data dir).
    pub keep_agents: bool,
}

impl Served {
    /// Starts `zlh serve` on a free port with `data_dir` and waits for `/readyz`.
    pub fn start(cwd: &Path, data_dir: &Path, extra: &[&str]) -> Served {
        Served::start_with_env(cwd, data_dir, extra, &[])
    }

    /// Like [`Served::start`], with extra environment variables.
    pub fn start_with_env(
        cwd: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Served {
        static STARTS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = cwd.join(format!("serve-{}-{n}.log", std::process::id()));
        let log_file = std::fs::File::create(&log).unwrap();
        // Local nodes' port pools: a window of their own per data dir (kept across
        // restarts of the same dir), claimed across test processes.
        let window_file = data_dir.with_extension("ports");
        let (window, port_window) = match std::fs::read_to_string(&window_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
        {
            // Still held by an earlier start of this dir (its agents kept running), or
            // free again: either way the dir's agents live in it.
            Some(start) => (start, PortWindow::claim(Some(start))),
            None => {
                let w = claim_port_window();
                (w.start, Some(w))
            }
        };
        std::fs::write(&window_file, window.to_string()).expect("recording the port window");
        // Port 0: the kernel picks a free port, read back from the log (a port probed
        // free and then handed over can be taken by another test in between).
        let mut child = zlh(cwd)
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .args(extra)
            .env("ZLH_LOCAL_PORT_MIN", window.to_string())
            .env("ZLH_LOCAL_PORT_MAX", (window + PORT_WINDOW - 1).to_string())
            .envs(env.iter().map(|&(k, v)| {
                // The bound address is read from the app's "zlh serving" line: keep it
                // whatever level the test asks for.
                if k == "ZLH_LOG" {
                    (k.to_string(), format!("{v},zlh::app=info"))
                } else {
                    (k.to_string(), v.to_string())
                }
            }))
            .stdout(Stdio::null())
            .stderr(log_file)
            .spawn()
            .expect("spawning zlh serve");
        let addr = bound_addr(&mut child, &log, "zlh serving");
        let mut served = Served {
            child,
            port_window,
            addr,
            data_dir: data_dir.to_path_buf(),
            log,
            keep_agents: false,
        };
        served.wait_ready();
        served
    }

    fn wait_ready(&mut self) {
        let url = format!("http://{}/readyz", self.addr);
        let log = self.log.clone();
        let child = &mut self.child;
        wait_for("zlh serve to become ready", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "zlh serve exited early ({status}):\n{}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            http_get(&url).filter(|(code, _)| *code == 200).map(|_| ())
        });
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends `sig` and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: i32) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
        let child = &mut self.child;
        wait_for("zlh serve to exit", Duration::from_secs(30), || {
            child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if !self.keep_agents {
            kill_local_agents(&self.data_dir);
        } else if let Some(w) = self.port_window.take() {
            w.keep();
        }
    }
}

/// Local-node agents run detached (they outlive `zlh serve` on purpose): a test
/// kills the ones under its data dir, and their games with them.
pub fn kill_local_agents(data_dir: &Path) {
    let Ok(entries) = std::fs::read_dir(data_dir.join("servers")) else {
        return;
    };
    for e in entries.flatten() {
        for (file, group) in [("agent/game.pid", true), ("agent.pid", false)] {
            if let Some(pid) = std::fs::read_to_string(e.path().join(file))
                .ok()
                .and_then(|p| p.trim().parse::<i32>().ok())
                .filter(|p| *p > 1)
            {
                unsafe {
                    libc::kill(if group { -pid } else { pid }, libc::SIGKILL);
                }
            }
        }
    }
}

/// A blocking GET on loopback: (status, body), or None when nothing answers.
pub fn http_get(url: &str) -> Option<(u16, String)> {
    let client = reqwest_blocking_client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    rt.block_on(async {
        let resp = client.get(url).send().await.ok()?;
        let status = resp.status().as_u16();
        let body = resp.text().await.ok()?;
        Some((status, body))
    })
}

/// The status of a GET with a bearer token (0 when nothing answers).
pub fn http_get_with_bearer(url: &str, token: &str) -> u16 {
    let client = reqwest_blocking_client();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()
        .and_then(|rt| rt.block_on(async { client.get(url).bearer_auth(token).send().await.ok() }))
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// Adds the admin `name` with a UI password through the CLI; the command's output
/// (a second call for the same name fails with "already exists").
pub fn add_admin(served: &Served, name: &str, password: &str) -> std::process::Output {
    use std::io::Write;
    let mut child = zlh(&served.data_dir)
        .args([
            "user",
            "add",
            name,
            "--admin",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(&served.data_dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning zlh user add");
    child
        .stdin
        .take()
        .expect("stdin of zlh user add")
        .write_all(format!("{password}\n").as_bytes())
        .expect("writing the password");
    child.wait_with_output().expect("zlh user add")
}

/// A session cookie (`zlh_session=…`) of an admin of the UI: adds the user
/// `ui-viewer` (once, through the CLI) and signs in over HTTP.
pub fn ui_session(served: &Served) -> String {
    const USER: &str = "ui-viewer";
    const PASSWORD: &str = "ui-viewer-password";
    let added = add_admin(served, USER, PASSWORD);
    assert!(
        added.status.success() || String::from_utf8_lossy(&added.stderr).contains("already exists"),
        "zlh user add: {}",
        String::from_utf8_lossy(&added.stderr)
    );
    let client = ui_client();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let login = client
            .get(served.url("/login"))
            .send()
            .await
            .expect("GET /login");
        let csrf_cookie = cookie_of(&login, "zlh_login_csrf").expect("a login CSRF cookie");
        let csrf = csrf_cookie
            .split_once('=')
            .map(|(_, v)| v.to_string())
            .unwrap_or_default();
        let resp = client
            .post(served.url("/login"))
            .header("cookie", &csrf_cookie)
            .form(&[
                ("csrf", csrf.as_str()),
                ("username", USER),
                ("password", PASSWORD),
            ])
            .send()
            .await
            .expect("POST /login");
        cookie_of(&resp, "zlh_session").expect("signed in")
    })
}

/// An HTTP client for UI pages: redirects are answers, not followed.
pub fn ui_client() -> reqwest::Client {
    reqwest::Client::builder()
        // Below zlh serve's idle timeout (5 s): never reuse a closing connection.
        .pool_idle_timeout(Duration::from_secs(2))
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("building an HTTP client")
}

/// `name=value` of a cookie the response sets.
pub fn cookie_of(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
        .map(|c| c.split(';').next().unwrap_or_default().to_string())
}

/// A page of the admin UI as a signed-in admin sees it: (status, body).
pub fn ui_get(served: &Served, path: &str) -> (u16, String) {
    let session = ui_session(served);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let page = ui_client()
            .get(served.url(path))
            .header("cookie", session)
            .send()
            .await
            .expect("GET a UI page");
        let status = page.status().as_u16();
        (status, page.text().await.unwrap_or_default())
    })
}

fn reqwest_blocking_client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .no_proxy()
        .build()
        .expect("building an HTTP client")
}

/// Opens a read-write connection to the test database (WAL: fine beside a server).
pub fn open_db(data_dir: &Path) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(data_dir.join("zlh.db")).expect("opening zlh.db");
    conn.busy_timeout(Duration::from_secs(10)).unwrap();
    conn
}

/// The app run in this test process through [`zlh::app::serve`] on a listener bound to
/// port 0: for tests that need HTTP and the database but no separate process (local
/// agents it spawns are still the real binary, `agent_binary`). Stopped when dropped.
pub struct InProcess {
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _port_window: PortWindow,
}

impl InProcess {
    pub fn start(data_dir: &Path) -> InProcess {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the bound address");
        let port_window = claim_port_window();
        let window = port_window.start;
        let config = zlh::config::Config {
            data_dir: data_dir.to_path_buf(),
            listen: addr,
            agent_binary: Some(PathBuf::from(BIN.as_str())),
            artifacts: zlh::config::ArtifactsConfig {
                upstream: false,
                ..Default::default()
            },
            local_port_min: window as u16,
            local_port_max: (window + PORT_WINDOW - 1) as u16,
            ..Default::default()
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("a runtime for the in-process app");
            rt.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                let shutdown = async move {
                    // A dropped sender stops the app too.
                    let _ = stopped.await;
                };
                zlh::app::serve(config, listener, shutdown)
                    .await
                    .expect("the in-process app");
            });
        });
        let url = format!("http://{addr}/readyz");
        wait_for(
            "the in-process app to become ready",
            Duration::from_secs(30),
            || http_get(&url).filter(|(code, _)| *code == 200).map(|_| ()),
        );
        InProcess {
            addr,
            data_dir: data_dir.to_path_buf(),
            stop: Some(stop),
            thread: Some(thread),
            _port_window: port_window,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        kill_local_agents(&self.data_dir);
    }
}
