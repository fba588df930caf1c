//! The admin UI of a real `zlh serve` on its embedded defaults: over plain HTTP
//! (every session route redirects to login, CSRF, setup, login limits, tokens) and in
//! headless Chromium (setup → login → create → running live → console → stop →
//! delete), with screenshots under `target/ui-screenshots/`.

use crate::support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::browser::Browser;
use crate::support::{Served, wait_for, zlh};
use serde_json::json;

/// A cookie-keeping HTTP client that does not follow redirects (so they can be seen).
struct Client {
    http: reqwest::Client,
    rt: tokio::runtime::Runtime,
    base: String,
    cookies: HashMap<String, String>,
}

struct Resp {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Resp {
    fn location(&self) -> &str {
        self.headers
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    fn set_cookies(&self) -> Vec<String> {
        self.headers
            .get_all("set-cookie")
            .iter()
            .filter_map(|v| v.to_str().ok().map(String::from))
            .collect()
    }

    /// The value of `<input name=NAME value=...>` (the first one).
    fn input(&self, name: &str) -> String {
        let at = self
            .body
            .find(&format!("name=\"{name}\" value=\""))
            .unwrap_or_else(|| panic!("no input {name} in:\n{}", self.body));
        let rest = &self.body[at + name.len() + 15..];
        rest[..rest.find('"').unwrap()].to_string()
    }
}

impl Client {
    fn new(served: &Served) -> Client {
        Client {
            http: reqwest::Client::builder()
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            base: served.url(""),
            cookies: HashMap::new(),
        }
    }

    fn send(
        &mut self,
        method: &str,
        path: &str,
        form: Option<&[(&str, &str)]>,
        headers: &[(&str, &str)],
    ) -> Resp {
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.base));
        if !self.cookies.is_empty() {
            let c: Vec<String> = self
                .cookies
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            req = req.header("cookie", c.join("; "));
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(f) = form {
            req = req.form(f);
        }
        let resp = self.rt.block_on(async {
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            let headers = r.headers().clone();
            let body = r.text().await.unwrap();
            Resp {
                status,
                headers,
                body,
            }
        });
        for c in resp.set_cookies() {
            let kv = c.split(';').next().unwrap();
            let (k, v) = kv.split_once('=').unwrap();
            if v.is_empty() {
                self.cookies.remove(k);
            } else {
                self.cookies.insert(k.to_string(), v.to_string());
            }
        }
        resp
    }

    fn get(&mut self, path: &str) -> Resp {
        self.send("GET", path, None, &[])
    }

    fn post(&mut self, path: &str, form: &[(&str, &str)]) -> Resp {
        self.send("POST", path, Some(form), &[])
    }
}

/// `zlh serve` on its embedded defaults: only the data dir, the listen address and (so
/// tests can run side by side) the local node's port window are set.
fn start(tmp: &Path) -> Served {
    Served::start(tmp, &tmp.join("data"), &[])
}

/// The one-time setup token `zlh serve` printed.
fn setup_token(served: &Served) -> String {
    wait_for(
        "the setup token in the log",
        Duration::from_secs(10),
        || {
            let log = served.log_text();
            let at = log.find("one-time setup token ")?;
            Some(log[at + 21..at + 21 + 32].to_string())
        },
    )
}

const PASSWORD: &str = "correct horse battery";

/// Completes the first-run setup over HTTP; the client then holds a session.
fn setup_admin(served: &Served, c: &mut Client) {
    let token = setup_token(served);
    let form = c.get("/setup");
    assert_eq!(form.status, 200, "{}", form.body);
    let csrf = form.input("csrf");
    let r = c.post(
        "/setup",
        &[
            ("csrf", &csrf),
            ("token", &token),
            ("username", "admin"),
            ("password", PASSWORD),
            ("password2", PASSWORD),
        ],
    );
    assert_eq!(r.status, 303, "{}", r.body);
    assert_eq!(r.location(), "/");
}

/// Replaces path parameters with values that exist in no database.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
        .replace("{action}", "start")
        .replace("{token}", "1")
}

#[test]
fn every_session_route_redirects_to_login_without_a_session() {
    let tmp = tempfile::tempdir().unwrap();
    let served = start(tmp.path());
    let mut c = Client::new(&served);
    // Setup done, so /login is the page to go to (not /setup).
    setup_admin(&served, &mut c);
    let mut anonymous = Client::new(&served);
    assert!(zlh::http::ui::SESSION_ROUTES.len() >= 20);
    for route in zlh::http::ui::SESSION_ROUTES {
        let path = concrete(route);
        let mut redirected = 0;
        for method in ["GET", "POST"] {
            let r = anonymous.send(method, &path, Some(&[("x", "1")]), &[]);
            match r.status {
                303 => {
                    assert!(
                        r.location().starts_with("/login"),
                        "{method} {path} → {}",
                        r.location()
                    );
                    redirected += 1;
                }
                405 => {}
                other => panic!("{method} {path} without a session: {other}\n{}", r.body),
            }
        }
        assert!(redirected > 0, "{route} answered no method with a redirect");
        // A made-up session cookie is no session either.
        let mut forged = Client::new(&served);
        forged.cookies.insert("zlh_session".into(), "0".repeat(64));
        let r = forged.get(&path);
        assert!(
            matches!(r.status, 303 | 405),
            "{path} with a forged cookie: {}",
            r.status
        );
    }
    // A GET remembers where it was going.
    assert_eq!(
        anonymous.get("/jobs?state=held").location(),
        "/login?next=/jobs%3Fstate%3Dheld"
    );
    // The public routes stay public.
    assert_eq!(anonymous.get("/login").status, 200);
    assert_eq!(anonymous.get("/healthz").status, 200);
}

#[test]
fn setup_sessions_csrf_and_login_limits() {
    let tmp = tempfile::tempdir().unwrap();
    let served = start(tmp.path());
    let mut c = Client::new(&served);

    // Before setup every page leads to it; a wrong token creates nothing.
    assert_eq!(c.get("/login").location(), "/setup");
    let form = c.get("/setup");
    let login_cookie = form
        .set_cookies()
        .into_iter()
        .find(|s| s.starts_with("zlh_login_csrf="))
        .unwrap();
    assert!(login_cookie.contains("HttpOnly") && login_cookie.contains("SameSite=Strict"));
    let csrf = form.input("csrf");
    let r = c.post(
        "/setup",
        &[
            ("csrf", &csrf),
            ("token", "0123"),
            ("username", "admin"),
            ("password", PASSWORD),
            ("password2", PASSWORD),
        ],
    );
    assert_eq!(r.status, 400);
    assert!(r.body.contains("Wrong setup token"), "{}", r.body);
    let users: i64 = support::open_db(&served.data_dir)
        .query_row("SELECT count(*) FROM users", [], |r| r.get(0))
        .unwrap();
    assert_eq!(users, 0);
    // Without the CSRF token: refused before anything is looked at.
    let token = setup_token(&served);
    let r = c.post(
        "/setup",
        &[
            ("token", &token),
            ("username", "admin"),
            ("password", PASSWORD),
            ("password2", PASSWORD),
        ],
    );
    assert_eq!(r.status, 403);

    setup_admin(&served, &mut c);
    assert!(c.cookies.contains_key("zlh_session"));
    // The setup is closed now, and the token is spent.
    assert_eq!(c.get("/setup").location(), "/login");
    let db = support::open_db(&served.data_dir);
    let (stored, phc): (i64, String) = db
        .query_row(
            "SELECT (SELECT count(*) FROM meta WHERE key = 'setup_token_hash'), password_hash FROM users",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(stored, 0);
    assert!(phc.starts_with("$argon2id$"), "{phc}");
    let session: String = db
        .query_row("SELECT token_hash FROM sessions", [], |r| r.get(0))
        .unwrap();
    assert_ne!(
        &session,
        c.cookies.get("zlh_session").unwrap(),
        "only a hash is stored"
    );

    // A session page; its forms carry the session's CSRF token.
    let dash = c.get("/");
    assert_eq!(dash.status, 200);
    let csrf = dash.input("csrf");
    // Form POSTs without the token, or with another one, are refused and change nothing.
    let before = c.get("/users").body.matches("class=\"user\"").count();
    for form in [
        vec![("username", "mallory"), ("password", "0123456789ab")],
        vec![
            ("csrf", "f".repeat(64).leak() as &str),
            ("username", "mallory"),
            ("password", "0123456789ab"),
        ],
    ] {
        let r = c.post("/users", &form);
        assert_eq!(r.status, 403, "{}", r.body);
        assert!(r.body.contains("CSRF"), "{}", r.body);
    }
    assert_eq!(
        c.get("/users").body.matches("class=\"user\"").count(),
        before
    );
    let r = c.post(
        "/users",
        &[
            ("csrf", &csrf),
            ("username", "bob"),
            ("password", "bob-password-1"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("user bob added"));
    // An admin sets another user's password on the page.
    let r = c.post(
        "/users/2/password",
        &[("csrf", &csrf), ("password", "bob-password-2")],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("password of bob set"), "{}", r.body);
    let mut bob = Client::new(&served);
    let bcsrf = bob.get("/login").input("csrf");
    let r = bob.post(
        "/login",
        &[
            ("csrf", &bcsrf),
            ("username", "bob"),
            ("password", "bob-password-2"),
        ],
    );
    assert_eq!(r.location(), "/", "bob signs in with the new password");
    // Bob is no admin: admin pages are refused, his own pages are not.
    assert_eq!(bob.get("/users").status, 403);
    assert_eq!(bob.get("/jobs").status, 403);
    assert_eq!(bob.get("/servers").status, 200);
    // Bad input names what is wrong and adds nobody.
    let r = c.post(
        "/users",
        &[
            ("csrf", &csrf),
            ("username", "carol"),
            ("password", "short"),
        ],
    );
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("password: at least 10 characters"),
        "{}",
        r.body
    );

    // An API token issued on the page is shown once and works; revoked, it does not.
    let r = c.post("/users/1/tokens", &[("csrf", &csrf), ("name", "ci")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.headers.get("cache-control").unwrap(), "no-store");
    let at = r.body.find("id=\"new-token\">").unwrap() + 15;
    let token = r.body[at..at + 68].to_string();
    assert!(token.starts_with("zlh_"));
    let api = |t: &str| support::http_get_with_bearer(&served.url("/api/v1/servers"), t);
    assert_eq!(api(&token), 200);
    assert!(
        !c.get("/users").body.contains(&token),
        "the secret is shown once"
    );
    let token_id: i64 = db
        .query_row("SELECT max(id) FROM api_tokens", [], |r| r.get(0))
        .unwrap();
    let r = c.post(
        &format!("/users/1/tokens/{token_id}/revoke"),
        &[("csrf", &csrf)],
    );
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(api(&token), 401);

    // Logout ends the session for good (the old cookie does not come back to life).
    let old = c.cookies.get("zlh_session").cloned().unwrap();
    let r = c.post("/logout", &[("csrf", &csrf)]);
    assert_eq!(r.location(), "/login");
    let mut replay = Client::new(&served);
    replay.cookies.insert("zlh_session".into(), old);
    assert_eq!(replay.get("/").location(), "/login");

    // Login: five wrong passwords, then even the right one waits.
    let mut l = Client::new(&served);
    for i in 0..5 {
        let page = l.get("/login");
        let csrf = page.input("csrf");
        let r = l.post(
            "/login",
            &[
                ("csrf", &csrf),
                ("username", "admin"),
                ("password", "wrong-password"),
            ],
        );
        assert_eq!(r.status, 401, "attempt {i}");
        assert!(r.body.contains("Wrong user name or password"));
    }
    let csrf = l.get("/login").input("csrf");
    let r = l.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("username", "admin"),
            ("password", PASSWORD),
        ],
    );
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("Too many failed sign-ins"));
    assert!(!l.cookies.contains_key("zlh_session"));
    // Another user from another… well, the same address is limited too; bob's own
    // counter is fresh but the address is over its budget.
    let csrf = l.get("/login").input("csrf");
    let r = l.post(
        "/login",
        &[
            ("csrf", &csrf),
            ("username", "bob"),
            ("password", "bob-password-1"),
        ],
    );
    assert_eq!(r.status, 429);

    // Behind HTTPS (a proxy says so) the session cookie is Secure.
    let mut s = Client::new(&served);
    let page = s.send("GET", "/login", None, &[("x-forwarded-proto", "https")]);
    assert!(
        page.set_cookies().iter().any(|c| c.contains("; Secure")),
        "{:?}",
        page.set_cookies()
    );
}

#[test]
fn cli_sets_passwords_for_the_ui() {
    let tmp = tempfile::tempdir().unwrap();
    let served = start(tmp.path());
    let run = |args: &[&str], stdin: &str| {
        use std::io::Write;
        let mut child = zlh(tmp.path())
            .args(args)
            .arg("--data-dir")
            .arg(&served.data_dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let out = run(
        &["user", "add", "ops", "--admin", "--password-stdin"],
        "ops-password-1\n",
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c = Client::new(&served);
    let login = |c: &mut Client, pw: &str| {
        let csrf = c.get("/login").input("csrf");
        c.post(
            "/login",
            &[("csrf", &csrf), ("username", "ops"), ("password", pw)],
        )
    };
    assert_eq!(login(&mut c, "ops-password-1").location(), "/");
    let out = run(&["user", "passwd", "ops"], "ops-password-2\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("1 UI session(s) ended"));
    assert_eq!(
        c.get("/").location(),
        "/login",
        "sessions end with a new password"
    );
    let mut c = Client::new(&served);
    assert_eq!(login(&mut c, "ops-password-1").status, 401);
    assert_eq!(login(&mut c, "ops-password-2").location(), "/");
    let out = run(&["user", "passwd", "ops"], "short\n");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 10 characters"));
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Sets an input's value through the page (long JSON is slow to type).
fn set_value(b: &Browser, css: &str, value: &str) {
    b.execute(
        "const el = document.querySelector(arguments[0]); el.value = arguments[1]; \
         el.dispatchEvent(new Event('input', {bubbles: true})); \
         el.dispatchEvent(new Event('change', {bubbles: true}));",
        vec![json!(css), json!(value)],
    );
}

fn text(b: &Browser, css: &str) -> String {
    b.find(css).text()
}

/// True while the page that set `window.zlhMarker` is still the one shown (nothing
/// reloaded it).
fn not_reloaded(b: &Browser) -> bool {
    b.execute("return window.zlhMarker === 42;", vec![]) == json!(true)
}

/// Clicks what submits a form and waits until the next page has loaded.
fn click_to_new_page(b: &Browser, css: &str) {
    b.execute("window.zlhOldPage = true;", vec![]);
    b.find(css).click();
    b.wait_until(
        &format!("the page after clicking {css}"),
        Duration::from_secs(30),
        |b| {
            (b.execute(
                "return window.zlhOldPage !== true && document.readyState === 'complete';",
                vec![],
            ) == json!(true))
            .then_some(())
        },
    );
}

#[test]
fn browser_setup_create_watch_console_stop_delete() {
    let tmp = tempfile::tempdir().unwrap();
    let served = start(tmp.path());
    let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join(support::api::STANDIN);
    let out = zlh(tmp.path())
        .args(["artifacts", "add", "test/standin/1.0/server.jar"])
        .arg(&standin)
        .arg("--data-dir")
        .arg(&served.data_dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = setup_token(&served);
    let shots = shots_dir();
    let b = Browser::start(&shots);
    let long = Duration::from_secs(90);

    // First run: any page leads to the setup.
    b.goto(&served.url("/servers"));
    b.wait_until("the setup page", Duration::from_secs(10), |b| {
        b.current_url().ends_with("/setup").then_some(())
    });
    b.screenshot("setup");
    b.find("#token").send_keys(&token);
    b.find("#username").clear();
    b.find("#username").send_keys("admin");
    b.find("#password").send_keys(PASSWORD);
    b.find("#password2").send_keys(PASSWORD);
    b.find("form button[type=submit]").click();
    b.wait_text("h1", "Dashboard", long);
    b.screenshot("dashboard");

    // Sign out and in again through the login page.
    b.find(".logout button").click();
    b.wait_until("the login page", Duration::from_secs(10), |b| {
        b.current_url().contains("/login").then_some(())
    });
    b.find("#username").send_keys("admin");
    b.find("#password").send_keys("not the password");
    b.find("form.stack button").click();
    b.wait_text("#login-error", "Wrong user name or password", long);
    b.screenshot("login");
    b.find("#username").clear();
    b.find("#username").send_keys("admin");
    b.find("#password").send_keys(PASSWORD);
    b.find("form.stack button").click();
    b.wait_text("h1", "Dashboard", long);

    // The stand-in game as a template, added on the templates page.
    b.goto(&served.url("/templates"));
    let t = support::api::standin_template();
    b.find("#t-slug").send_keys(t["slug"].as_str().unwrap());
    b.find("#t-name").send_keys(t["name"].as_str().unwrap());
    b.find("#t-game").send_keys(t["game"].as_str().unwrap());
    b.find("#t-variant")
        .send_keys(t["variant"].as_str().unwrap());
    let mut spec = t["spec"].clone();
    spec["versions"] = json!(["1.0"]);
    set_value(&b, "#t-spec", &serde_json::to_string_pretty(&spec).unwrap());
    b.find("section form button[type=submit]").click();
    b.wait_text("table", "standin", long);
    b.screenshot("templates");

    // Create: the name is checked as it is typed; a taken or bad one says so.
    b.goto(&served.url("/servers/new"));
    b.find("#name").send_keys("Bad_Name");
    b.wait_text("#name-check", "a–z", long);
    b.find("#name").clear();
    b.find("#name").send_keys("alpha");
    b.wait_text("#name-check", "available", long);
    set_value(&b, "#template", "standin");
    b.find("#version").send_keys("1.0");
    b.find("#eula").click();
    b.screenshot("create");
    // A double click: two submits of the same form (same idempotency key).
    b.execute(
        "const btn = document.getElementById('create-button'); btn.click(); btn.click();",
        vec![],
    );
    let server_url = b.wait_until("the new server's page", long, |b| {
        let u = b.current_url();
        u.rsplit('/')
            .next()
            .and_then(|id| id.parse::<i64>().ok())
            .map(|_| u)
    });
    let id: i64 = server_url.rsplit('/').next().unwrap().parse().unwrap();
    let db = support::open_db(&served.data_dir);
    let count = |sql: &str| -> i64 { db.query_row(sql, [], |r| r.get(0)).unwrap() };
    assert_eq!(
        count("SELECT count(*) FROM servers WHERE name = 'alpha'"),
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE kind = 'server.provision'"),
        1
    );
    // The same form sent again (a resubmit): still one server.
    b.back();
    b.wait_until("the create form again", long, |b| {
        b.try_find("#create-form").map(|_| ())
    });
    // Going back shows the form as it was; sending it again lands on the same server
    // (same key) or says the name is taken (a fresh form) — never a second server.
    if b.find("#name").prop("value") == json!("alpha") {
        b.execute("document.getElementById('create-form').submit();", vec![]);
        b.wait_until("a page after the resubmit", long, |b| {
            (b.current_url() == server_url || b.try_find(".field-msg").is_some()).then_some(())
        });
    }
    assert_eq!(
        count("SELECT count(*) FROM servers WHERE name = 'alpha'"),
        1
    );
    assert_eq!(
        count("SELECT count(*) FROM jobs WHERE kind = 'server.provision'"),
        1
    );

    // Watch it become running without a reload.
    b.goto(&server_url);
    b.execute("window.zlhMarker = 42;", vec![]);
    b.wait_text("#status", "running", long);
    assert!(not_reloaded(&b), "the status changed in place");
    b.wait_text("#timeline", "running", long);
    assert!(text(&b, "#live").contains("ready"), "{}", text(&b, "#live"));
    b.screenshot("server-running");

    // Console tab: the game's output streams in; a command's reply shows up.
    click_to_new_page(&b, "nav.tabs a[href$='/console']");
    b.execute("window.zlhMarker = 42;", vec![]);
    b.wait_text("#console-log", "Done", long);
    b.find("#console-command")
        .send_keys("say hello-from-the-ui");
    b.find("#console-form button").click();
    b.wait_text("#console-log", "[Server] hello-from-the-ui", long);
    assert!(not_reloaded(&b));
    assert_eq!(b.find("#console-command").prop("value"), json!(""));
    b.screenshot("server-console");

    // Backups tab: back up now; the row follows the job without a reload.
    b.find("nav.tabs a[href$='/backups']").click();
    b.find("#backup-now");
    b.find("#b-note").send_keys("from the ui");
    click_to_new_page(&b, "#backup-now");
    b.execute("window.zlhMarker = 42;", vec![]);
    b.wait_text("#backups", "completed", long);
    assert!(not_reloaded(&b), "the backup row changed in place");
    assert!(text(&b, "#backups").contains("from the ui"));
    let saves = std::fs::read_to_string(
        served
            .data_dir
            .join("servers/5000/agent/server/world/standin-commands.log"),
    )
    .unwrap_or_default();
    assert!(
        saves.contains("save-off") && saves.contains("save-on"),
        "{saves}"
    );
    // A restore in place needs its box ticked; without it nothing happens.
    b.execute("document.querySelector('details').open = true;", vec![]);
    click_to_new_page(&b, "button[data-restore]");
    b.wait_text("#backups-error", "tick the box", long);
    click_to_new_page(&b, "#backups form[action$='/protect'] button");
    b.wait_text("#backups", "protected", long);
    b.find("#keep_last").clear();
    b.find("#keep_last").send_keys("3");
    click_to_new_page(&b, "form[action$='/retention'] button");
    assert_eq!(b.find("#keep_last").prop("value"), json!("3"));
    b.screenshot("server-backups");

    // Schedules tab: a console command every night, then removed.
    b.find("nav.tabs a[href$='/schedules']").click();
    b.find("#schedule-form");
    set_value(&b, "#s-kind", "command");
    b.find("#s-command").send_keys("say nightly");
    click_to_new_page(&b, "#schedule-form button");
    b.wait_text("table.schedules", "say nightly", long);
    assert!(text(&b, "table.schedules").contains("cron 0 4 * * *"));
    b.screenshot("server-schedules");
    set_value(&b, "#s-kind", "restart");
    b.find("#s-cron").clear();
    b.find("#s-cron").send_keys("61 * * * *");
    click_to_new_page(&b, "#schedule-form button");
    b.wait_text("#schedules-error", "cron", long);
    click_to_new_page(&b, "form[action$='/remove'] button");
    b.wait_text("main", "No schedules.", long);
    b.goto(&server_url);

    // A form POST without the CSRF token is refused (and nothing happens).
    let status = b.execute(
        "return fetch(arguments[0], {method: 'POST', credentials: 'same-origin', \
           headers: {'Content-Type': 'application/x-www-form-urlencoded'}, body: 'x=1'}) \
           .then(r => r.status);",
        vec![json!(format!("/servers/{id}/actions/stop"))],
    );
    assert_eq!(status, json!(403));
    assert_eq!(text(&b, "#status"), "running");

    // Stop, live.
    click_to_new_page(&b, "button[data-action=stop]");
    assert!(b.current_url().ends_with(&format!("/servers/{id}")));
    b.execute("window.zlhMarker = 42;", vec![]);
    b.wait_text("#status", "stopped", long);
    assert!(not_reloaded(&b));
    b.screenshot("server-stopped");

    // Pages of the rest of the UI, for review.
    for (path, name) in [
        ("/", "dashboard-with-server"),
        ("/servers", "servers"),
        ("/jobs", "jobs"),
        ("/nodes", "nodes"),
        ("/users", "users"),
        ("/doctor", "doctor"),
    ] {
        b.goto(&served.url(path));
        b.find("main h1");
        b.screenshot(name);
        // Every form control has a label a screen reader can read.
        let unlabelled = b.execute(
            "return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea')) \
               .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')) \
               .map(el => el.name || el.id);",
            vec![],
        );
        assert_eq!(unlabelled, json!([]), "{path}: controls without a label");
        assert_eq!(
            b.execute("return document.documentElement.lang;", vec![]),
            json!("en")
        );
    }
    assert!(
        text(&b, "#doctor-verdict").contains("No problems"),
        "{}",
        text(&b, "#doctor-verdict")
    );
    // Phone-sized.
    b.set_window_size(390, 844);
    b.goto(&served.url("/servers"));
    b.find("table.servers");
    b.screenshot("servers-phone");
    b.goto(&server_url);
    b.find("#status");
    b.screenshot("server-phone");
    b.set_window_size(1280, 900);

    // Delete with confirmation: a wrong name deletes nothing.
    b.goto(&server_url);
    b.find("a[data-action=delete]").click();
    b.find("#confirm_name").send_keys("alpah");
    assert_eq!(b.find("#confirm-delete").prop("disabled"), json!(true));
    b.execute(
        "document.querySelector('#confirm-delete').disabled = false;",
        vec![],
    );
    b.find("#confirm-delete").click();
    b.wait_text("#delete-error", "nothing was deleted", long);
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM servers WHERE id = {id} AND desired_state = 'deleted'"
        )),
        0
    );
    b.find("#confirm_name").clear();
    b.find("#confirm_name").send_keys("alpha");
    b.screenshot("delete-confirm");
    click_to_new_page(&b, "#confirm-delete");
    b.wait_until("back on the server page", long, |b| {
        b.current_url()
            .ends_with(&format!("/servers/{id}"))
            .then_some(())
    });
    b.execute("window.zlhMarker = 42;", vec![]);
    b.wait_text("#status", "deleted", long);
    assert!(not_reloaded(&b));
    b.screenshot("server-deleted");
    assert_eq!(
        count("SELECT count(*) FROM servers WHERE deleted_at IS NULL"),
        0
    );
}

#[test]
fn open_live_pages_do_not_hold_up_a_shutdown() {
    let tmp = tempfile::tempdir().unwrap();
    let mut served = start(tmp.path());
    let session = support::ui_session(&served);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = support::ui_client();
    // An open live stream, its first event read: the browser tab stays open.
    let mut resp = rt
        .block_on(
            client
                .get(served.url("/servers/live?ids="))
                .header("cookie", &session)
                .send(),
        )
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = rt.block_on(resp.chunk()).unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: statuses"));
    let started = std::time::Instant::now();
    assert!(served.signal_and_wait(libc::SIGTERM).success());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        started.elapsed()
    );
    // The stream ended with the server instead of holding it up.
    let rest = rt.block_on(async {
        let mut n = 0;
        while let Ok(Some(_)) = resp.chunk().await {
            n += 1;
        }
        n
    });
    assert!(rest < 100);
}

#[test]
fn nodes_page_tests_a_proxmox_connection_then_adds_the_node() {
    let tmp = tempfile::tempdir().unwrap();
    let sim = support::pve_sim::PveSim::start();
    let served = start(tmp.path());
    let mut c = Client::new(&served);
    setup_admin(&served, &mut c);
    let csrf = c.get("/nodes").input("csrf");
    let cfg = sim.proxmox_config();
    let template_vmid = cfg.template_vmid.to_string();
    let form = |secret: &str, url: &str| -> Vec<(String, String)> {
        [
            ("csrf", csrf.as_str()),
            ("name", "pve"),
            ("api_url", url),
            ("token_id", cfg.token_id.as_str()),
            ("token_secret", secret),
            ("node", cfg.node.as_str()),
            ("template_vmid", template_vmid.as_str()),
            ("bootstrap_token", cfg.bootstrap_token.as_str()),
            ("memory_mb", "65536"),
            // The simulator is plain HTTP on loopback: both need their opt-in.
            ("allow_loopback", "on"),
            ("allow_insecure_http", "on"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    };
    let post = |c: &mut Client, path: &str, f: &[(String, String)]| {
        let f: Vec<(&str, &str)> = f.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        c.post(path, &f)
    };
    let nodes = || -> i64 {
        support::open_db(&served.data_dir)
            .query_row("SELECT count(*) FROM nodes", [], |r| r.get(0))
            .unwrap()
    };

    let ok = post(&mut c, "/nodes/test", &form(&cfg.token_secret, &sim.url()));
    assert_eq!(ok.status, 200, "{}", ok.body);
    assert!(
        ok.body
            .contains(&format!("connected: node {} answers", cfg.node))
            && ok
                .body
                .contains(&format!("base template {} found", cfg.template_vmid)),
        "{}",
        ok.body
    );
    assert!(
        !ok.body.contains(&cfg.token_secret),
        "secrets are not sent back"
    );
    let bad = post(&mut c, "/nodes/test", &form("wrong-secret", &sim.url()));
    assert!(bad.body.contains("id=\"node-test\""), "{}", bad.body);
    assert!(!bad.body.contains("connected:"), "{}", bad.body);
    assert!(bad.body.contains("listing containers on"), "{}", bad.body);
    let host = post(
        &mut c,
        "/nodes",
        &form(&cfg.token_secret, "https://pve.example.com:8006"),
    );
    assert_eq!(host.status, 400);
    assert!(host.body.contains("api_url"), "{}", host.body);
    let unticked: Vec<(String, String)> = form(&cfg.token_secret, &sim.url())
        .into_iter()
        .filter(|(k, _)| k != "allow_insecure_http")
        .collect();
    let plain = post(&mut c, "/nodes", &unticked);
    assert_eq!(plain.status, 400);
    assert!(plain.body.contains("allow_insecure_http"), "{}", plain.body);
    assert_eq!(nodes(), 1, "testing and refused forms save nothing");

    let added = post(&mut c, "/nodes", &form(&cfg.token_secret, &sim.url()));
    assert_eq!(added.status, 303, "{}", added.body);
    assert_eq!(nodes(), 2);
    let page = c.get("/nodes");
    assert!(page.body.contains("proxmox"));
    assert!(!page.body.contains(&cfg.token_secret) && !page.body.contains(&cfg.bootstrap_token));
}

#[test]
fn assets_are_embedded_with_their_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let served = start(tmp.path());
    let mut c = Client::new(&served);
    let login = c.get("/setup");
    let at = login
        .body
        .find("/static/app.css?v=")
        .expect("a versioned asset URL");
    let url = &login.body[at..at + login.body[at..].find('"').unwrap()];
    let css = c.get(url);
    assert_eq!(css.status, 200);
    assert_eq!(
        css.headers.get("content-type").unwrap(),
        "text/css; charset=utf-8"
    );
    assert!(
        css.headers
            .get("cache-control")
            .unwrap()
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    let etag = css
        .headers
        .get("etag")
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    assert_eq!(etag.len(), 66, "the SHA-256 of the file: {etag}");
    assert!(
        etag.contains(&url[url.find("v=").unwrap() + 2..]),
        "{etag} {url}"
    );
    let again = c.send("GET", "/static/app.css", None, &[("if-none-match", &etag)]);
    assert_eq!(again.status, 304);
    assert_eq!(c.get("/static/nope.js").status, 404);
    assert_eq!(c.get("/static/app.js").status, 200);
}

#[test]
fn jobs_page_filters_and_releases_cancels_and_retries() {
    let tmp = tempfile::tempdir().unwrap();
    let served = start(tmp.path());
    let mut c = Client::new(&served);
    setup_admin(&served, &mut c);
    let db = support::open_db(&served.data_dir);
    let plant = |state: &str| -> i64 {
        db.execute(
            "INSERT INTO jobs (kind, state, attempt, max_attempts, run_at, created_at, held_reason)
             VALUES ('ui.test', ?1, 0, 5, 0, 0, 'planted by the test')",
            [state],
        )
        .unwrap();
        db.last_insert_rowid()
    };
    let state_of = |id: i64| -> String {
        db.query_row("SELECT state FROM jobs WHERE id = ?1", [id], |r| r.get(0))
            .unwrap()
    };
    let (held_a, held_b) = (plant("held"), plant("held"));

    // The banner is on every page while jobs are held; the filter shows just them.
    let page = c.get("/jobs?state=held");
    assert!(page.body.contains("Jobs are held"), "{}", page.body);
    assert_eq!(
        page.body.matches("data-job-id=").count(),
        2,
        "{}",
        page.body
    );
    assert!(page.body.contains("planted by the test"));
    assert_eq!(c.get("/jobs?state=bogus").status, 400);
    let csrf = page.input("csrf");

    let r = c.post(&format!("/jobs/{held_a}/cancel"), &[("csrf", &csrf)]);
    assert_eq!(r.location(), "/jobs");
    assert_eq!(state_of(held_a), "cancelled");
    let r = c.post("/jobs/release-all", &[("csrf", &csrf)]);
    assert_eq!(r.location(), "/jobs");
    // Released, it runs: this build has no handler for it, so it is discarded loudly.
    wait_for("the released job to run", Duration::from_secs(20), || {
        (state_of(held_b) == "discarded").then_some(())
    });
    assert!(
        !c.get("/").body.contains("Jobs are held"),
        "the banner is gone"
    );
    let page = c.get("/jobs?state=discarded&kind=ui.test");
    assert!(
        page.body.contains("no handler for job kind"),
        "{}",
        page.body
    );
    let r = c.post(&format!("/jobs/{held_b}/retry"), &[("csrf", &csrf)]);
    assert_eq!(r.location(), "/jobs");
    wait_for(
        "the retried job to run again",
        Duration::from_secs(20),
        || {
            let errors: i64 = db
                .query_row(
                    "SELECT json_array_length(errors) FROM jobs WHERE id = ?1",
                    [held_b],
                    |r| r.get(0),
                )
                .unwrap();
            (errors == 2).then_some(())
        },
    );
    let r = c.post(&format!("/jobs/{held_b}/frobnicate"), &[("csrf", &csrf)]);
    assert_eq!(r.status, 404);
}
