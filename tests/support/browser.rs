//! A headless Chromium driven over W3C WebDriver (chromedriver), synchronously:
//! an async `reqwest` client on a current-thread runtime of its own, like `api::Http`.
//! Both binaries come from Debian (`./scripts/test-deps.sh` installs them).
//! Every failure panics with the WebDriver command, the selector and the error text.
#![allow(dead_code)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::free_port;

/// The W3C name of an element reference in JSON.
const ELEMENT_KEY: &str = "element-6066-11e4-a52e-4f735466cecf";

/// How long `find`, `wait_text` and the alert calls wait by default.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(10);

pub fn chromium_path() -> PathBuf {
    std::env::var_os("CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromium".into())
}

pub fn chromedriver_path() -> PathBuf {
    std::env::var_os("CHROMEDRIVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/usr/bin/chromedriver".into())
}

/// A WebDriver error: (HTTP status, W3C error code, message).
#[derive(Debug)]
pub struct WdError {
    pub status: u16,
    pub error: String,
    pub message: String,
}

impl std::fmt::Display for WdError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (HTTP {}): {}", self.error, self.status, self.message)
    }
}

/// One Chromium session; chromedriver and the browser are killed on drop.
pub struct Browser {
    driver: Child,
    driver_url: String,
    session: String,
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    shots_dir: PathBuf,
    /// Chromium's profile and chromedriver's log; removed on drop.
    tmp: tempfile::TempDir,
    /// How long `find`, `wait_text` and the alert calls wait.
    pub wait: Duration,
}

/// An element found by `css` (kept for messages).
pub struct Element<'a> {
    b: &'a Browser,
    id: String,
    pub css: String,
}

impl Browser {
    /// Both binaries are installed.
    pub fn available() -> bool {
        chromium_path().exists() && chromedriver_path().exists()
    }

    /// Starts chromedriver on a free loopback port and a headless Chromium session.
    /// Screenshots go to `shots_dir` (created).
    pub fn start(shots_dir: &Path) -> Browser {
        assert!(
            Browser::available(),
            "{} or {} is missing: run ./scripts/test-deps.sh",
            chromium_path().display(),
            chromedriver_path().display()
        );
        std::fs::create_dir_all(shots_dir).expect("creating the screenshot dir");
        let tmp = tempfile::tempdir().expect("a temp dir for the browser");
        let profile = tmp.path().join("profile");
        let log_path = tmp.path().join("chromedriver.log");
        let port = free_port();
        let driver = Command::new(chromedriver_path())
            .arg(format!("--port={port}"))
            .arg(format!("--log-path={}", log_path.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            // Its own process group: chromium and its helpers die with it on drop.
            .process_group(0)
            .spawn()
            .expect("spawning chromedriver");
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(60))
            .build()
            .expect("building the WebDriver client");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime for the WebDriver client");
        let mut b = Browser {
            driver,
            driver_url: format!("http://127.0.0.1:{port}"),
            session: String::new(),
            http,
            rt,
            shots_dir: shots_dir.to_path_buf(),
            tmp,
            wait: DEFAULT_WAIT,
        };
        b.wait_driver_ready(&log_path);

        let args = [
            "--headless=new".to_string(),
            "--no-sandbox".into(),
            "--disable-gpu".into(),
            "--disable-dev-shm-usage".into(),
            "--disable-quic".into(),
            "--no-first-run".into(),
            "--disable-background-networking".into(),
            "--disable-component-update".into(),
            "--disable-sync".into(),
            format!("--user-data-dir={}", profile.display()),
            "--window-size=1280,900".into(),
            // Chromium 156 still calls home despite the flags above (autofill predictions,
            // extension updates, the clock check, sign-in, the search engine's preconnect):
            "--disable-extensions".into(),
            "--disable-default-apps".into(),
            "--no-pings".into(),
            "--disable-features=AutofillServerCommunication,OptimizationHints,Translate,MediaRouter,NetworkTimeServiceQuerying".into(),
            // Belt and braces for a closed network: anything not on loopback goes to a
            // dead local proxy (connection refused) instead of out of the machine.
            "--proxy-server=http://127.0.0.1:9".into(),
            "--proxy-bypass-list=127.0.0.0/8;localhost;[::1]".into(),
        ];
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            // A dialog left open fails the next command instead of being dismissed
            // behind the test's back: tests accept or dismiss it explicitly.
            "unhandledPromptBehavior": "ignore",
            "goog:chromeOptions": {
                "binary": chromium_path().to_string_lossy(),
                "args": args,
                // No preconnects (to the default search engine, among others).
                "prefs": {"net.network_prediction_options": 2},
            },
        }}});
        let url = format!("{}/session", b.driver_url);
        let v = b
            .request(reqwest::Method::POST, &url, Some(caps))
            .unwrap_or_else(|e| {
                panic!(
                    "WebDriver new session: {e}\nchromedriver log:\n{}",
                    log_tail(&log_path)
                )
            });
        b.session = v["sessionId"]
            .as_str()
            .expect("new session returned no sessionId")
            .to_string();
        b
    }

    fn wait_driver_ready(&mut self, log_path: &Path) {
        let url = format!("{}/status", self.driver_url);
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if let Ok(Some(status)) = self.driver.try_wait() {
                panic!(
                    "chromedriver exited early ({status}):\n{}",
                    log_tail(log_path)
                );
            }
            if let Ok(v) = self.request(reqwest::Method::GET, &url, None)
                && v["ready"] == json!(true)
            {
                return;
            }
            if start.elapsed() > Duration::from_secs(20) {
                panic!(
                    "chromedriver not ready on {url} after 20s:\n{}",
                    log_tail(log_path)
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// One HTTP round trip; the `value` of the answer, or the WebDriver error.
    fn request(
        &self,
        method: reqwest::Method,
        url: &str,
        body: Option<Value>,
    ) -> Result<Value, WdError> {
        self.rt.block_on(async {
            let mut req = self.http.request(method.clone(), url);
            // POSTs always carry a JSON body (`{}` when there are no parameters).
            if method == reqwest::Method::POST || body.is_some() {
                req = req.json(&body.unwrap_or_else(|| json!({})));
            }
            let resp = req.send().await.map_err(|e| WdError {
                status: 0,
                error: "transport".into(),
                message: e.to_string(),
            })?;
            let status = resp.status().as_u16();
            let text = resp.text().await.unwrap_or_default();
            let mut v: Value = serde_json::from_str(&text).map_err(|_| WdError {
                status,
                error: "bad response".into(),
                message: text.chars().take(500).collect(),
            })?;
            let value = v["value"].take();
            if (200..300).contains(&status) {
                Ok(value)
            } else {
                Err(WdError {
                    status,
                    error: value["error"].as_str().unwrap_or("unknown error").into(),
                    message: value["message"].as_str().unwrap_or_default().into(),
                })
            }
        })
    }

    /// A session command (`path` relative to `/session/{id}`), errors returned.
    pub fn try_cmd(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, WdError> {
        let url = format!("{}/session/{}{}", self.driver_url, self.session, path);
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        self.request(method, &url, body)
    }

    /// A session command that panics on error, naming `what` (the selector etc.).
    pub fn cmd(&self, method: &str, path: &str, body: Option<Value>, what: &str) -> Value {
        self.try_cmd(method, path, body).unwrap_or_else(|e| {
            panic!(
                "WebDriver {method} {path}{}: {e}",
                if what.is_empty() {
                    String::new()
                } else {
                    format!(" [{what}]")
                }
            )
        })
    }

    pub fn goto(&self, url: &str) {
        self.cmd("POST", "/url", Some(json!({"url": url})), url);
    }

    pub fn current_url(&self) -> String {
        str_of(self.cmd("GET", "/url", None, ""))
    }

    pub fn title(&self) -> String {
        str_of(self.cmd("GET", "/title", None, ""))
    }

    pub fn back(&self) {
        self.cmd("POST", "/back", None, "");
    }

    pub fn refresh(&self) {
        self.cmd("POST", "/refresh", None, "");
    }

    pub fn page_source(&self) -> String {
        str_of(self.cmd("GET", "/source", None, ""))
    }

    fn try_find_raw(&self, css: &str) -> Result<Option<Element<'_>>, WdError> {
        let body = json!({"using": "css selector", "value": css});
        match self.try_cmd("POST", "/element", Some(body)) {
            Ok(v) => Ok(Some(self.element(&v, css))),
            Err(e) if e.error == "no such element" => Ok(None),
            Err(e) => Err(e),
        }
    }

    fn element(&self, v: &Value, css: &str) -> Element<'_> {
        Element {
            b: self,
            id: v[ELEMENT_KEY]
                .as_str()
                .unwrap_or_else(|| panic!("not an element reference for {css}: {v}"))
                .to_string(),
            css: css.to_string(),
        }
    }

    /// The first element matching `css`, waiting up to `self.wait` for it to exist.
    pub fn find(&self, css: &str) -> Element<'_> {
        // `self`, not the closure's argument: the element borrows the browser.
        self.wait_until(&format!("an element {css}"), self.wait, |_| {
            self.try_find_raw(css)
                .unwrap_or_else(|e| panic!("WebDriver find element [{css}]: {e}"))
        })
    }

    /// The first element matching `css` right now, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        self.try_find_raw(css)
            .unwrap_or_else(|e| panic!("WebDriver find element [{css}]: {e}"))
    }

    /// All elements matching `css` right now (no waiting).
    pub fn find_all(&self, css: &str) -> Vec<Element<'_>> {
        let body = json!({"using": "css selector", "value": css});
        let v = self.cmd("POST", "/elements", Some(body), css);
        v.as_array()
            .map(|a| a.iter().map(|e| self.element(e, css)).collect())
            .unwrap_or_default()
    }

    /// Runs `script` as a function body (`arguments[0]`…) and returns its result.
    pub fn execute(&self, script: &str, args: Vec<Value>) -> Value {
        let body = json!({"script": script, "args": args});
        self.cmd("POST", "/execute/sync", Some(body), script)
    }

    /// Polls `f` with backoff until it returns `Some`, or panics after `deadline`
    /// (saving a screenshot `timeout-<test name>.png` first).
    pub fn wait_until<T>(
        &self,
        what: &str,
        deadline: Duration,
        mut f: impl FnMut(&Browser) -> Option<T>,
    ) -> T {
        let start = Instant::now();
        let mut pause = Duration::from_millis(10);
        loop {
            if let Some(v) = f(self) {
                return v;
            }
            if start.elapsed() > deadline {
                let url = self
                    .try_cmd("GET", "/url", None)
                    .map(str_of)
                    .unwrap_or_else(|e| format!("? ({e})"));
                // Named after the test (libtest names each test's thread).
                let test = std::thread::current()
                    .name()
                    .unwrap_or("test")
                    .replace("::", "-");
                let shot = self.try_screenshot(&format!("timeout-{test}"));
                panic!(
                    "timed out after {deadline:?} waiting for {what} (page {url}; screenshot {})",
                    shot.map(|p| p.display().to_string())
                        .unwrap_or_else(|e| format!("failed: {e}"))
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(200));
        }
    }

    /// Waits until the first element matching `css` has text containing `substring`;
    /// returns the whole text.
    pub fn wait_text(&self, css: &str, substring: &str, deadline: Duration) -> String {
        let mut last = String::new();
        self.wait_until(&format!("{css} to contain {substring:?}"), deadline, |b| {
            let el = b.try_find(css)?;
            match b.try_cmd("GET", &format!("/element/{}/text", el.id), None) {
                Ok(v) => last = str_of(v),
                Err(e) if e.error == "stale element reference" => return None,
                Err(e) => panic!("WebDriver element text [{css}]: {e}"),
            }
            last.contains(substring).then(|| last.clone())
        })
    }

    /// Waits for an open dialog and returns its text.
    pub fn alert_text(&self) -> String {
        self.alert("GET", "/alert/text")
    }

    /// Waits for an open dialog and presses OK.
    pub fn accept_alert(&self) {
        self.alert("POST", "/alert/accept");
    }

    /// Waits for an open dialog and presses Cancel.
    pub fn dismiss_alert(&self) {
        self.alert("POST", "/alert/dismiss");
    }

    fn alert(&self, method: &str, path: &str) -> String {
        self.wait_until(&format!("a dialog ({path})"), self.wait, |b| {
            match b.try_cmd(method, path, None) {
                Ok(v) => Some(v.as_str().unwrap_or_default().to_string()),
                Err(e) if e.error == "no such alert" => None,
                Err(e) => panic!("WebDriver {method} {path}: {e}"),
            }
        })
    }

    fn try_screenshot(&self, name: &str) -> Result<PathBuf, String> {
        let v = self
            .try_cmd("GET", "/screenshot", None)
            .map_err(|e| e.to_string())?;
        let png = base64_decode(v.as_str().unwrap_or_default())?;
        let path = self.shots_dir.join(format!("{name}.png"));
        std::fs::write(&path, png).map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// Saves the viewport as `<shots_dir>/<name>.png` and returns the path.
    pub fn screenshot(&self, name: &str) -> PathBuf {
        self.try_screenshot(name)
            .unwrap_or_else(|e| panic!("WebDriver screenshot [{name}]: {e}"))
    }

    /// Resizes the window (outer size), e.g. to a phone's 390x844.
    pub fn set_window_size(&self, width: u32, height: u32) {
        let body = json!({"width": width, "height": height});
        self.cmd(
            "POST",
            "/window/rect",
            Some(body),
            &format!("{width}x{height}"),
        );
    }

    /// The cookies visible to the current page.
    pub fn cookies(&self) -> Vec<Value> {
        match self.cmd("GET", "/cookie", None, "") {
            Value::Array(a) => a,
            _ => vec![],
        }
    }

    /// Deletes all cookies of the current page's domain.
    pub fn delete_cookies(&self) {
        self.cmd("DELETE", "/cookie", None, "");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            // Ends chromium cleanly; a short timeout so a hung browser doesn't hang the test.
            let url = format!("{}/session/{}", self.driver_url, self.session);
            let _ = self.rt.block_on(async {
                self.http
                    .delete(&url)
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await
            });
        }
        // The whole group: chromedriver, chromium and its helper processes.
        unsafe {
            libc::kill(-(self.driver.id() as i32), libc::SIGKILL);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

impl Element<'_> {
    fn cmd(&self, method: &str, what: &str, body: Option<Value>) -> Value {
        self.b.cmd(
            method,
            &format!("/element/{}/{what}", self.id),
            body,
            &self.css,
        )
    }

    pub fn click(&self) {
        self.cmd("POST", "click", None);
    }

    /// Types `text` into the element (after what it already holds).
    pub fn send_keys(&self, text: &str) {
        self.cmd("POST", "value", Some(json!({"text": text})));
    }

    pub fn clear(&self) {
        self.cmd("POST", "clear", None);
    }

    /// The rendered text (what a person sees).
    pub fn text(&self) -> String {
        str_of(self.cmd("GET", "text", None))
    }

    /// An HTML attribute, as written in the markup.
    pub fn attr(&self, name: &str) -> Option<String> {
        self.cmd("GET", &format!("attribute/{name}"), None)
            .as_str()
            .map(str::to_string)
    }

    /// A DOM property (e.g. `value`, `checked`), as JSON.
    pub fn prop(&self, name: &str) -> Value {
        self.cmd("GET", &format!("property/{name}"), None)
    }

    pub fn is_displayed(&self) -> bool {
        self.cmd("GET", "displayed", None)
            .as_bool()
            .unwrap_or(false)
    }

    /// The first descendant matching `css` right now, if any.
    pub fn try_find(&self, css: &str) -> Option<Element<'_>> {
        let body = json!({"using": "css selector", "value": css});
        let path = format!("/element/{}/element", self.id);
        match self.b.try_cmd("POST", &path, Some(body)) {
            Ok(v) => Some(self.b.element(&v, css)),
            Err(e) if e.error == "no such element" => None,
            Err(e) => panic!("WebDriver find element [{} {css}]: {e}", self.css),
        }
    }
}

fn str_of(v: Value) -> String {
    match v {
        Value::String(s) => s,
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Standard base64 (with or without padding; whitespace ignored).
pub fn base64_decode(s: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            b'=' | b'\n' | b'\r' | b' ' => continue,
            _ => return Err(format!("not base64: byte {c:#x}")),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}
