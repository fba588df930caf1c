//! The HTTP edge (findings 3, 5, 6, 7, 8, 9, 13): redirects, headers and error
//! bodies, body limits, log injection, sign-in lockouts, streams that outlive their
//! session, and timeouts and caps of `zlh serve` and `zlh agent`.

use std::io::Write;
use std::path::Path;
use std::process::Stdio;

use crate::support::{self, Served, cookie_of, ui_client, zlh};

const USER: &str = "web-user";
const PASSWORD: &str = "web-user-password";

/// A runtime for one test's async client.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// Adds the account `name` (an admin) through the CLI.
fn add_user(served: &Served, name: &str, password: &str) {
    let out = support::add_admin(served, name, password);
    assert!(
        out.status.success(),
        "zlh user add: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The login CSRF cookie and its token, from `GET /login`.
async fn login_csrf(client: &reqwest::Client, served: &Served) -> (String, String) {
    let page = client
        .get(served.url("/login"))
        .send()
        .await
        .expect("GET /login");
    let cookie = cookie_of(&page, "zlh_login_csrf").expect("a login CSRF cookie");
    let token = cookie
        .split_once('=')
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    (cookie, token)
}

/// `POST /login` with a fresh CSRF token; extra form fields (e.g. `next`) appended.
async fn post_login(
    client: &reqwest::Client,
    served: &Served,
    user: &str,
    password: &str,
    extra: &[(&str, &str)],
) -> reqwest::Response {
    let (cookie, csrf) = login_csrf(client, served).await;
    let mut form = vec![
        ("csrf", csrf.as_str()),
        ("username", user),
        ("password", password),
    ];
    form.extend_from_slice(extra);
    client
        .post(served.url("/login"))
        .header("cookie", cookie)
        .form(&form)
        .send()
        .await
        .expect("POST /login")
}

/// A served data dir with the account [`USER`].
fn serve(tmp: &Path, extra: &[&str], env: &[(&str, &str)]) -> Served {
    let served = Served::start_with_env(
        tmp,
        &tmp.join("data"),
        extra,
        &[&[("ZLH_ARTIFACTS_UPSTREAM", "false")], env].concat(),
    );
    add_user(&served, USER, PASSWORD);
    served
}

fn location(r: &reqwest::Response) -> String {
    r.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Finding 3: `next` after login is a local path or `/`; never another site, never a 500.
#[test]
fn f03_open_redirect_after_login() {
    // (variant, `next` as sent percent-encoded in a query, where it must lead)
    const CASES: &[(&str, &str, &str)] = &[
        ("tab then //host", "/%09/evil.com", "/"),
        ("NUL", "/%00", "/"),
        ("CRLF header split", "/%0d%0aX-Evil:%201", "/"),
        ("protocol-relative", "//evil.com", "/"),
        ("backslash", "/%5Cevil.com", "/"),
        ("backslash first", "%5C/evil.com", "/"),
        ("absolute URL", "http://evil.com/", "/"),
        ("space then //host", "/%20/evil.com", "/"),
        ("newline then //host", "/%0a/evil.com", "/"),
        ("a local path", "/servers?x=1", "/servers?x=1"),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(tmp.path(), &[], &[]);
    let client = ui_client();
    rt().block_on(async {
        let resp = post_login(&client, &served, USER, PASSWORD, &[]).await;
        let session = cookie_of(&resp, "zlh_session").expect("signed in");
        for (variant, next, want) in CASES {
            // Already signed in: GET /login?next=… redirects at once.
            let r = client
                .get(served.url(&format!("/login?next={next}")))
                .header("cookie", &session)
                .send()
                .await
                .expect("GET /login");
            assert_eq!(r.status().as_u16(), 303, "finding 3, {variant}: GET status");
            assert_eq!(location(&r), *want, "finding 3, {variant}: GET Location");
            // Signing in with the same `next` in the form.
            let decoded: String = url_decode(next);
            let r = post_login(&client, &served, USER, PASSWORD, &[("next", &decoded)]).await;
            assert_eq!(
                r.status().as_u16(),
                303,
                "finding 3, {variant}: POST status"
            );
            assert_eq!(location(&r), *want, "finding 3, {variant}: POST Location");
        }
    });
}

/// Percent-decoding of a test's query value (the tests' own strings only).
fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// An API token of `user`, made through the CLI.
fn api_token(served: &Served, user: &str) -> String {
    let out = zlh(&served.data_dir)
        .args(["token", "create", "--user", user, "--data-dir"])
        .arg(&served.data_dir)
        .output()
        .expect("zlh token create");
    assert!(
        out.status.success(),
        "zlh token create: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A signed-in session cookie of [`USER`].
async fn sign_in(client: &reqwest::Client, served: &Served) -> String {
    let resp = post_login(client, served, USER, PASSWORD, &[]).await;
    cookie_of(&resp, "zlh_session").expect("signed in")
}

/// Finding 13: security headers on UI responses; a 500 says only "internal error" and
/// an id (the SQLite text goes to the log under that id); bad path and query
/// parameters on `/api` answer the API's JSON error shape.
#[test]
fn f13_headers_and_error_bodies() {
    const HEADERS: &[(&str, &str)] = &[
        (
            "content-security-policy",
            "default-src 'self'; frame-ancestors 'none'; object-src 'none'; base-uri 'none'; form-action 'self'",
        ),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "same-origin"),
    ];
    // (variant, UI path, needs a session)
    const PAGES: &[(&str, &str, bool)] = &[
        ("login page", "/login", false),
        ("dashboard", "/", true),
        ("stylesheet", "/static/app.css", false),
        ("error page", "/servers/999999", true),
        ("redirect to login", "/servers", false),
    ];
    // (variant, API path, the field named)
    const BAD_PARAMS: &[(&str, &str, &str)] = &[
        ("path id not a number", "/api/v1/servers/abc", "id"),
        ("path id of a job not a number", "/api/v1/jobs/x1", "id"),
        (
            "query parameter not a number",
            "/api/v1/jobs?limit=many",
            "query",
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(tmp.path(), &[], &[]);
    let token = api_token(&served, USER);
    let client = ui_client();
    rt().block_on(async {
        let session = sign_in(&client, &served).await;
        for (variant, path, with_session) in PAGES {
            let mut req = client.get(served.url(path));
            if *with_session {
                req = req.header("cookie", &session);
            }
            let r = req.send().await.expect("GET a UI path");
            for (name, want) in HEADERS {
                let got = r.headers().get(*name).and_then(|v| v.to_str().ok());
                assert_eq!(got, Some(*want), "finding 13, {variant} ({path}): {name}");
            }
        }
        for (variant, path, field) in BAD_PARAMS {
            let r = client
                .get(served.url(path))
                .bearer_auth(&token)
                .send()
                .await
                .expect("GET an API path");
            let status = r.status().as_u16();
            let body: serde_json::Value = r
                .json()
                .await
                .unwrap_or_else(|e| panic!("finding 13, {variant}: not JSON: {e}"));
            assert_eq!(status, 400, "finding 13, {variant}: {body}");
            assert_eq!(
                body["error"]["code"], "bad_request",
                "finding 13, {variant}: {body}"
            );
            assert_eq!(
                body["error"]["field"], *field,
                "finding 13, {variant}: {body}"
            );
        }

        // (variant, method, API path, status, code)
        const UNROUTED: &[(&str, &str, &str, u16, &str)] = &[
            ("unknown API path", "GET", "/api/v1/nope", 404, "not_found"),
            (
                "method the route does not take",
                "PUT",
                "/api/v1/servers",
                405,
                "method_not_allowed",
            ),
        ];
        for (variant, method, path, want, code) in UNROUTED {
            let r = client
                .request(method.parse().expect("a method"), served.url(path))
                .bearer_auth(&token)
                .send()
                .await
                .expect("an API request");
            let status = r.status().as_u16();
            let body: serde_json::Value = r
                .json()
                .await
                .unwrap_or_else(|e| panic!("finding 13, {variant}: not JSON: {e}"));
            assert_eq!(status, *want, "finding 13, {variant}: {body}");
            assert_eq!(
                body["error"]["code"], *code,
                "finding 13, {variant}: {body}"
            );
        }

        // A table gone under the server's feet: SQLite's "no such table" is for the log.
        let db = crate::support::open_db(&served.data_dir);
        db.execute_batch("ALTER TABLE templates RENAME TO templates_gone")
            .expect("renaming a table");
        // (variant, request)
        let failing = [
            (
                "API",
                client
                    .get(served.url("/api/v1/templates"))
                    .bearer_auth(&token),
            ),
            (
                "UI page",
                client
                    .get(served.url("/templates"))
                    .header("cookie", &session),
            ),
        ];
        for (variant, req) in failing {
            let r = req.send().await.expect("a request that fails inside");
            assert_eq!(r.status().as_u16(), 500, "finding 13, 500 {variant}");
            let body = r.text().await.unwrap_or_default();
            assert!(
                !body.contains("no such table") && !body.contains("templates"),
                "finding 13, 500 {variant}: internal text in the body: {body}"
            );
            let id = body
                .split("(id ")
                .nth(1)
                .and_then(|rest| rest.split(')').next())
                .unwrap_or_else(|| panic!("finding 13, 500 {variant}: no error id in {body}"))
                .to_string();
            let logged = crate::support::wait_for(
                "the error id in the log",
                std::time::Duration::from_secs(10),
                || {
                    served
                        .log_text()
                        .lines()
                        .find(|l| l.contains(&id))
                        .map(str::to_string)
                },
            );
            assert!(
                logged.contains("no such table"),
                "finding 13, 500 {variant}: the log line of {id} lacks the cause: {logged}"
            );
        }
    });
}

/// Finding 8: UI forms are limited to 64 KiB, and the refusal says so (413).
#[test]
fn f08_ui_forms_are_limited_to_64_kib() {
    // (variant, path, session and the CSRF header (the body is not read for CSRF), size)
    const CASES: &[(&str, &str, bool, usize)] = &[
        ("login, 100 KiB", "/login", false, 100 * 1024),
        ("login, 2 MB", "/login", false, 2 * 1024 * 1024),
        ("login, 3 MB", "/login", false, 3 * 1024 * 1024),
        (
            "session form with the CSRF header, 2 MB",
            "/servers",
            true,
            2 * 1024 * 1024,
        ),
        (
            "session form with the CSRF field, 3 MB",
            "/servers",
            true,
            3 * 1024 * 1024,
        ),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(tmp.path(), &[], &[]);
    let client = ui_client();
    rt().block_on(async {
        let session = sign_in(&client, &served).await;
        let page = client
            .get(served.url("/servers/new"))
            .header("cookie", &session)
            .send()
            .await
            .expect("GET /servers/new")
            .text()
            .await
            .unwrap_or_default();
        let csrf = page
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .expect("a CSRF token on the page")
            .to_string();
        for (variant, path, with_session, size) in CASES {
            let filler = "a".repeat(*size);
            let (cookie, token) = if *with_session {
                (session.clone(), csrf.clone())
            } else {
                login_csrf(&client, &served).await
            };
            let mut req = client
                .post(served.url(path))
                .header("cookie", cookie)
                .header("content-type", "application/x-www-form-urlencoded");
            if *with_session && variant.contains("header") {
                req = req.header("x-csrf-token", &token);
            }
            let body = format!("csrf={token}&username={USER}&password=x&name={filler}");
            let r = req
                .body(body)
                .send()
                .await
                .unwrap_or_else(|e| panic!("finding 8, {variant}: no answer: {e}"));
            let status = r.status().as_u16();
            let text = r.text().await.unwrap_or_default();
            assert_eq!(status, 413, "finding 8, {variant}: {text}");
            assert!(
                text.contains("64 KiB") && !text.contains("2097152"),
                "finding 8, {variant}: the message names the limit: {text}"
            );
        }
    });
}

/// Finding 5: user-supplied strings are logged escaped and cut: a `\n` in a login name
/// forges no log line, and big names grow the log by a bounded amount.
#[test]
fn f05_log_injection_and_growth() {
    // (variant, user name, tries, the most the log may grow by)
    let cases: Vec<(&str, String, usize, usize)> = vec![
        (
            "newline forging a line",
            "nobody\n2026-01-01T00:00:00Z  INFO zlh: FORGED signed in user=admin".into(),
            3,
            8 * 1024,
        ),
        (
            "60 KB name (under the form limit)",
            "n".repeat(60_000),
            9,
            16 * 1024,
        ),
        ("1 MB name", "m".repeat(1 << 20), 9, 16 * 1024),
    ];
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(tmp.path(), &[], &[]);
    let client = ui_client();
    rt().block_on(async {
        for (variant, name, tries, most) in &cases {
            let before = served.log_text().len();
            for _ in 0..*tries {
                let r = post_login(&client, &served, name, "wrong-password", &[]).await;
                let status = r.status().as_u16();
                assert!(
                    [401, 413, 429].contains(&status),
                    "finding 5, {variant}: sign-in answered {status}"
                );
            }
            // The attempts are logged: wait until the last one is there.
            crate::support::wait_for(
                "the sign-in attempts in the log",
                std::time::Duration::from_secs(10),
                || (served.log_text().len() > before || name.len() > 64 * 1024).then_some(()),
            );
            let log = served.log_text();
            let grown = log.len() - before;
            assert!(
                grown <= *most,
                "finding 5, {variant}: the log grew by {grown} bytes for {tries} sign-ins"
            );
            let forged: Vec<&str> = log
                .lines()
                .filter(|l| {
                    l.contains("FORGED") && !l.contains("sign-in") && !l.contains("login refused")
                })
                .collect();
            assert!(
                forged.is_empty(),
                "finding 5, {variant}: forged log lines: {forged:?}"
            );
        }
    });
}

/// A UI client whose connections come from `ip` (any 127.0.0.0/8 address is this host).
fn client_from(ip: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .local_address(Some(ip.parse().expect("an IP address")))
        .build()
        .expect("building an HTTP client")
}

/// `POST /setup` with `token` (CSRF from a fresh `GET /setup`): the status.
async fn post_setup(client: &reqwest::Client, served: &Served, token: &str) -> u16 {
    let page = client
        .get(served.url("/setup"))
        .send()
        .await
        .expect("GET /setup");
    let cookie = cookie_of(&page, "zlh_login_csrf").expect("a setup CSRF cookie");
    let csrf = cookie
        .split_once('=')
        .map(|(_, v)| v.to_string())
        .unwrap_or_default();
    let password = "setup-admin-password";
    client
        .post(served.url("/setup"))
        .header("cookie", cookie)
        .form(&[
            ("csrf", csrf.as_str()),
            ("token", token),
            ("username", "admin"),
            ("password", password),
            ("password2", password),
        ])
        .send()
        .await
        .expect("POST /setup")
        .status()
        .as_u16()
}

/// Finding 7a: wrong setup tokens lock out their own address, not everyone.
#[test]
fn f07a_setup_lockout_is_per_address() {
    let tmp = tempfile::tempdir().unwrap();
    let served = Served::start_with_env(
        tmp.path(),
        &tmp.path().join("data"),
        &[],
        &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
    );
    let token = crate::support::wait_for(
        "the setup token in the log",
        std::time::Duration::from_secs(10),
        || {
            let log = served.log_text();
            let at = log.find("setup token ")?;
            log[at + "setup token ".len()..]
                .split_whitespace()
                .next()
                .map(str::to_string)
        },
    );
    rt().block_on(async {
        let attacker = client_from("127.0.0.2");
        for n in 1..=5 {
            let status = post_setup(&attacker, &served, "not-the-token").await;
            assert_eq!(status, 400, "finding 7a: wrong token {n}");
        }
        assert_eq!(
            post_setup(&attacker, &served, "not-the-token").await,
            429,
            "finding 7a: the guessing address is locked out"
        );
        assert_eq!(
            post_setup(&client_from("127.0.0.1"), &served, &token).await,
            303,
            "finding 7a: the right token from another address still sets up"
        );
    });
}

/// Finding 7b: the failure budget is checked and spent in one step: 20 concurrent
/// wrong sign-ins get at most 5 evaluations, the rest 429.
#[test]
fn f07b_concurrent_wrong_logins_get_the_budget_only() {
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(tmp.path(), &[], &[]);
    let client = ui_client();
    rt().block_on(async {
        let mut forms = vec![];
        for _ in 0..20 {
            forms.push(login_csrf(&client, &served).await);
        }
        let mut set = tokio::task::JoinSet::new();
        for (cookie, csrf) in forms {
            let (client, url) = (client.clone(), served.url("/login"));
            set.spawn(async move {
                client
                    .post(url)
                    .header("cookie", cookie)
                    .form(&[
                        ("csrf", csrf.as_str()),
                        ("username", USER),
                        ("password", "wrong"),
                    ])
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
        }
        let mut statuses = vec![];
        while let Some(r) = set.join_next().await {
            statuses.push(r.expect("a login task").expect("a login answer"));
        }
        let evaluated = statuses.iter().filter(|s| **s == 401).count();
        let refused = statuses.iter().filter(|s| **s == 429).count();
        assert!(
            evaluated <= 5,
            "finding 7b: {evaluated} evaluated: {statuses:?}"
        );
        assert_eq!(evaluated + refused, 20, "finding 7b: {statuses:?}");
        // The right password is refused too while the name is locked.
        let r = post_login(&client, &served, USER, PASSWORD, &[]).await;
        assert_eq!(
            r.status().as_u16(),
            429,
            "finding 7b: locked after the budget"
        );
    });
}

fn p50(samples: &mut [std::time::Duration]) -> std::time::Duration {
    samples.sort();
    samples[samples.len() / 2]
}

/// Finding 7c: password hashing runs outside the database pool behind a small gate:
/// during a flood of 200 sign-ins (from 40 addresses, so the lockouts do not cut it
/// short) the API's p50 stays within 2× of its idle p50 measured in the same run.
#[test]
fn f07c_login_flood_keeps_the_api_responsive() {
    use std::time::Instant;
    const FLOOD: usize = 200;
    const ADDRESSES: usize = 40;
    const IDLE_SAMPLES: usize = 150;
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(tmp.path(), &[], &[]);
    let token = api_token(&served, USER);
    rt().block_on(async {
        let api = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("a client");
        let url = served.url("/api/v1/servers");
        let time_one = || {
            let (api, url, token) = (api.clone(), url.clone(), token.clone());
            async move {
                let started = Instant::now();
                let r = api
                    .get(url)
                    .bearer_auth(token)
                    .send()
                    .await
                    .expect("GET servers");
                assert_eq!(r.status().as_u16(), 200);
                r.bytes().await.expect("the list");
                started.elapsed()
            }
        };
        let mut idle = vec![];
        for _ in 0..IDLE_SAMPLES {
            idle.push(time_one().await);
        }
        // The flood's forms first (GET /login is cheap), then every POST at once.
        let mut forms = vec![];
        for i in 0..FLOOD {
            let client = client_from(&format!("127.0.1.{}", 1 + i % ADDRESSES));
            let (cookie, csrf) = login_csrf(&client, &served).await;
            forms.push((client, cookie, csrf, format!("flood-{i}")));
        }
        let mut set = tokio::task::JoinSet::new();
        for (client, cookie, csrf, name) in forms {
            let url = served.url("/login");
            set.spawn(async move {
                client
                    .post(url)
                    .header("cookie", cookie)
                    .form(&[
                        ("csrf", csrf.as_str()),
                        ("username", &name),
                        ("password", "wrong-password"),
                    ])
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
            });
        }
        // The flood's answers are collected aside; every API request started while it
        // runs is timed to its end (none is cut short, which would hide the slow ones).
        let flood = tokio::spawn(async move {
            let mut statuses = vec![];
            while let Some(done) = set.join_next().await {
                statuses.push(done.expect("a login task").expect("a login answer"));
            }
            statuses
        });
        let mut flooded = vec![];
        while !flood.is_finished() {
            flooded.push(time_one().await);
        }
        let statuses = flood.await.expect("the flood");
        assert!(
            statuses.iter().all(|s| *s == 401),
            "finding 7c: every flood sign-in is evaluated: {statuses:?}"
        );
        for _ in 0..IDLE_SAMPLES {
            idle.push(time_one().await);
        }
        // Enough samples for a median (a slow API also yields few: judged by p50 below).
        assert!(
            flooded.len() >= 9,
            "finding 7c: only {} samples during the flood",
            flooded.len()
        );
        let (idle_p50, flood_p50) = (p50(&mut idle), p50(&mut flooded));
        eprintln!(
            "finding 7c: idle p50 {idle_p50:?}, flood p50 {flood_p50:?} ({} samples)",
            flooded.len()
        );
        assert!(
            flood_p50 <= idle_p50 * 2,
            "finding 7c: API p50 {flood_p50:?} during the flood, {idle_p50:?} idle"
        );
    });
}

/// The CSRF token of a session (from a page's forms).
async fn session_csrf(client: &reqwest::Client, served: &Served, session: &str) -> String {
    let page = client
        .get(served.url("/servers/new"))
        .header("cookie", session)
        .send()
        .await
        .expect("GET /servers/new")
        .text()
        .await
        .unwrap_or_default();
    page.split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .expect("a CSRF token on the page")
        .to_string()
}

/// How a session ends in [`f09_streams_end_with_their_session`].
#[derive(Clone, Copy, Debug)]
enum Ending {
    Logout,
    Passwd,
    Expiry,
}

/// Ends the session `session` (of `crate::support::ui_session`'s user) the `how` way.
async fn end_session(how: Ending, client: &reqwest::Client, served: &Served, session: &str) {
    match how {
        Ending::Logout => {
            let csrf = session_csrf(client, served, session).await;
            let r = client
                .post(served.url("/logout"))
                .header("cookie", session)
                .form(&[("csrf", csrf.as_str())])
                .send()
                .await
                .expect("POST /logout");
            assert_eq!(r.status().as_u16(), 303, "logout");
        }
        Ending::Passwd => {
            // The same password again: a new password ends the user's sessions anyway.
            let mut child = zlh(&served.data_dir)
                .args(["user", "passwd", "ui-viewer", "--data-dir"])
                .arg(&served.data_dir)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("spawning zlh user passwd");
            child
                .stdin
                .take()
                .expect("stdin of zlh user passwd")
                .write_all(b"ui-viewer-password\n")
                .expect("writing the password");
            let out = child.wait_with_output().expect("zlh user passwd");
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ending::Expiry => {
            let db = crate::support::open_db(&served.data_dir);
            db.execute("UPDATE sessions SET expires_at = 1", [])
                .expect("expiring the sessions");
        }
    }
}

/// Finding 9: the live page (SSE) and the console (WebSocket) end within a few seconds
/// of their session (logout, `zlh user passwd`, expiry); a WebSocket upgrade from
/// another site's page is refused.
#[test]
fn f09_streams_end_with_their_session() {
    use futures_util::StreamExt;
    use std::time::{Duration, Instant};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    const ENDINGS: &[Ending] = &[Ending::Logout, Ending::Passwd, Ending::Expiry];
    /// How soon a stream must end after its session (the check runs every 2 s).
    const WITHIN: Duration = Duration::from_secs(6);
    let tmp = tempfile::tempdir().unwrap();
    let api = crate::support::api::Api::start(tmp.path());
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(serde_json::json!({"name": "streamer", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().expect("a server id");
    api.wait_status(id, "running");
    let served = &api.served;
    // Adds the admin `ui-viewer` (signed in again below for every row).
    crate::support::ui_session(served);
    let stream_token = {
        let out = zlh(&served.data_dir)
            .args([
                "token",
                "create",
                "--user",
                "admin",
                "--name",
                "stream-test",
                "--data-dir",
            ])
            .arg(&served.data_dir)
            .output()
            .expect("zlh token create");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let new_session = || async {
        let r = post_login(&ui_client(), served, "ui-viewer", "ui-viewer-password", &[]).await;
        cookie_of(&r, "zlh_session").expect("signed in as ui-viewer")
    };
    let client = ui_client();
    let ws_url = served
        .url(&format!("/servers/{id}/console/stream"))
        .replacen("http", "ws", 1);
    let ws_request = |session: &str, origin: Option<&str>| {
        let mut req = ws_url.as_str().into_client_request().expect("a WS request");
        req.headers_mut()
            .insert("cookie", session.parse().expect("a cookie header"));
        if let Some(o) = origin {
            req.headers_mut()
                .insert("origin", o.parse().expect("an origin header"));
        }
        req
    };
    let own_origin = format!("http://{}", served.addr);
    rt().block_on(async {
        for how in ENDINGS {
            // The live page.
            let session = new_session().await;
            let mut live = client
                .get(served.url(&format!("/servers/{id}/live")))
                .header("cookie", &session)
                .send()
                .await
                .expect("GET the live page");
            assert_eq!(live.status().as_u16(), 200, "finding 9, {how:?}: live page");
            let first = tokio::time::timeout(WITHIN, live.chunk())
                .await
                .expect("a first live event");
            assert!(
                matches!(first, Ok(Some(_))),
                "finding 9, {how:?}: {first:?}"
            );
            // The console.
            let (mut ws, _) =
                tokio_tungstenite::connect_async(ws_request(&session, Some(&own_origin)))
                    .await
                    .unwrap_or_else(|e| panic!("finding 9, {how:?}: console upgrade: {e}"));
            let first = tokio::time::timeout(WITHIN, ws.next()).await;
            assert!(
                matches!(first, Ok(Some(Ok(_)))),
                "finding 9, {how:?}: console: {first:?}"
            );

            end_session(*how, &client, served, &session).await;
            let ended_at = Instant::now();
            let live_end = async {
                loop {
                    match live.chunk().await {
                        Ok(Some(_)) => continue,
                        _ => return,
                    }
                }
            };
            tokio::time::timeout(WITHIN, live_end)
                .await
                .unwrap_or_else(|_| {
                    panic!("finding 9, {how:?}: the live page outlived its session")
                });
            let ws_end = async {
                loop {
                    match ws.next().await {
                        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                        | None
                        | Some(Err(_)) => return,
                        Some(Ok(_)) => continue,
                    }
                }
            };
            tokio::time::timeout(
                WITHIN.saturating_sub(ended_at.elapsed()) + Duration::from_secs(1),
                ws_end,
            )
            .await
            .unwrap_or_else(|_| panic!("finding 9, {how:?}: the console outlived its session"));
        }

        // The API's console stream ends when its token is revoked.
        {
            let url = served
                .url(&format!("/api/v1/servers/{id}/console/stream"))
                .replacen("http", "ws", 1);
            let mut req = url.into_client_request().expect("a WS request");
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {stream_token}").parse().expect("a header"),
            );
            let (mut ws, _) = tokio_tungstenite::connect_async(req)
                .await
                .expect("finding 9: the API console stream");
            let first = tokio::time::timeout(WITHIN, ws.next()).await;
            assert!(
                matches!(first, Ok(Some(Ok(_)))),
                "finding 9, API token: {first:?}"
            );
            let db = crate::support::open_db(&served.data_dir);
            db.execute(
                "UPDATE api_tokens SET revoked_at = 1 WHERE name = 'stream-test'",
                [],
            )
            .expect("revoking the token");
            let ws_end = async {
                loop {
                    match ws.next().await {
                        Some(Ok(tokio_tungstenite::tungstenite::Message::Close(_)))
                        | None
                        | Some(Err(_)) => return,
                        Some(Ok(_)) => continue,
                    }
                }
            };
            tokio::time::timeout(WITHIN, ws_end)
                .await
                .unwrap_or_else(|_| {
                    panic!("finding 9: the API console outlived its revoked token")
                });
        }

        // (variant, Origin sent, upgraded)
        let own = own_origin.as_str();
        let origins: &[(&str, Option<&str>, bool)] = &[
            ("this site", Some(own), true),
            ("no Origin (not a browser)", None, true),
            ("another site", Some("http://evil.example"), false),
            (
                "another port of this host",
                Some("http://127.0.0.1:1"),
                false,
            ),
            ("not a URL", Some("null"), false),
        ];
        let session = new_session().await;
        for (variant, origin, upgraded) in origins {
            let result = tokio_tungstenite::connect_async(ws_request(&session, *origin)).await;
            match (result, upgraded) {
                (Ok(_), true) => {}
                (Err(tokio_tungstenite::tungstenite::Error::Http(resp)), false) => {
                    assert_eq!(resp.status().as_u16(), 403, "finding 9, origin {variant}");
                }
                (r, _) => panic!("finding 9, origin {variant}: {:?}", r.map(|_| "upgraded")),
            }
        }
    });
}

/// What a raw connection does in [`f06_header_idle_and_request_timeouts`].
#[derive(Clone, Copy, Debug)]
enum Stall {
    /// This many connections that send part of a request's headers, then nothing.
    PartialHeaders(usize),
    /// One complete request on a kept-alive connection, then nothing.
    IdleKeepAlive,
    /// Complete headers announcing a body that never fully comes.
    SlowBody,
}

/// Reads until the peer closes; the bytes read, or None when still open at `deadline`.
fn read_until_closed(
    stream: &mut std::net::TcpStream,
    deadline: std::time::Instant,
) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.checked_duration_since(std::time::Instant::now())?;
        stream
            .set_read_timeout(Some(left.max(std::time::Duration::from_millis(1))))
            .expect("a read timeout");
        match stream.read(&mut buf) {
            Ok(0) => return Some(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None;
            }
            // Reset by the peer: closed too.
            Err(_) => return Some(got),
        }
    }
}

/// Opens the connections of `slow` to `addr` and checks that every one is closed (or,
/// for a slow body, answered 503) within `limit` plus a margin, and not long before.
fn check_slow(
    target: &str,
    addr: std::net::SocketAddr,
    slow: Stall,
    limit: std::time::Duration,
    auth: &str,
) {
    use std::time::{Duration, Instant};
    let connect = || {
        let s = std::net::TcpStream::connect(addr).expect("connecting");
        s.set_nodelay(true).expect("nodelay");
        s
    };
    let mut conns = vec![];
    match slow {
        Stall::PartialHeaders(n) => {
            for _ in 0..n {
                let mut s = connect();
                s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Stall: 1")
                    .expect("a partial header");
                conns.push(s);
            }
        }
        Stall::IdleKeepAlive => {
            let mut s = connect();
            s.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .expect("a request");
            let mut buf = [0u8; 1024];
            let n = std::io::Read::read(&mut s, &mut buf).expect("an answer");
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 "),
                "{target}: {:?}",
                String::from_utf8_lossy(&buf[..n])
            );
            conns.push(s);
        }
        Stall::SlowBody => {
            let mut s = connect();
            let head = format!(
                "POST {} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/x-www-form-urlencoded\r\nContent-Length: 1000\r\n\r\ncsrf=",
                if target.contains("agent") {
                    "/config"
                } else {
                    "/login"
                }
            );
            s.write_all(head.as_bytes())
                .expect("a request without all its body");
            conns.push(s);
        }
    }
    let started = Instant::now();
    let margin = Duration::from_secs(4);
    for (i, s) in conns.iter_mut().enumerate() {
        let got = read_until_closed(s, started + limit + margin).unwrap_or_else(|| {
            panic!(
                "finding 6, {target} {slow:?}: connection {i} still open after {:?}",
                limit + margin
            )
        });
        let text = String::from_utf8_lossy(&got);
        if matches!(slow, Stall::SlowBody) {
            assert!(
                text.starts_with("HTTP/1.1 503"),
                "finding 6, {target} {slow:?}: {text}"
            );
        }
    }
    let took = started.elapsed();
    // Not closed for some other reason straight away (the limit itself was at work).
    assert!(
        took + Duration::from_millis(300) >= limit,
        "finding 6, {target} {slow:?}: closed after {took:?}, before the {limit:?} limit"
    );
}

/// Finding 6: `zlh serve` and `zlh agent` close connections that send partial headers
/// or sit idle, and answer 503 to a request whose handler does not answer in time (a
/// body that never comes), each by its configured deadline.
#[test]
fn f06_header_idle_and_request_timeouts() {
    use std::time::Duration;
    const LIMIT: Duration = Duration::from_secs(2);
    const ROWS: &[Stall] = &[
        Stall::PartialHeaders(50),
        Stall::IdleKeepAlive,
        Stall::SlowBody,
    ];
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(
        tmp.path(),
        &[],
        &[
            ("ZLH_HTTP_HEADER_TIMEOUT_SECS", "2"),
            ("ZLH_HTTP_IDLE_TIMEOUT_SECS", "2"),
            ("ZLH_HTTP_REQUEST_TIMEOUT_SECS", "2"),
        ],
    );
    // An agent with the same deadlines.
    let (_agent, agent_addr) = spawn_agent(
        tmp.path(),
        &[
            "--header-timeout",
            "2s",
            "--idle-timeout",
            "2s",
            "--request-timeout",
            "2s",
        ],
    );
    let token = AGENT_TOKEN;
    let auth = format!("Authorization: Bearer {token}\r\n");
    // The rows run side by side: each waits out the same deadline.
    std::thread::scope(|s| {
        for slow in ROWS {
            s.spawn(|| check_slow("zlh serve", served.addr, *slow, LIMIT, ""));
            s.spawn(|| check_slow("zlh agent", agent_addr, *slow, LIMIT, &auth));
        }
    });
    // Both still serve.
    assert!(
        crate::support::http_get(&served.url("/healthz")).is_some(),
        "zlh serve still answers"
    );
    assert!(
        crate::support::http_get(&format!("http://{agent_addr}/health")).is_some(),
        "zlh agent still answers"
    );
}

const AGENT_TOKEN: &str = "web-agent-token-0123456789";

/// A `zlh agent` on port 0 with [`AGENT_TOKEN`] and `extra` flags, answering.
fn spawn_agent(tmp: &Path, extra: &[&str]) -> (KillOnDrop, std::net::SocketAddr) {
    let log = tmp.join("agent.log");
    let agent = zlh(tmp)
        .args(["agent", "--listen", "127.0.0.1:0", "--dir"])
        .arg(tmp.join("agent"))
        .args(extra)
        .env("ZLH_AGENT_TOKEN", AGENT_TOKEN)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).expect("the agent's log"))
        .spawn()
        .expect("spawning zlh agent");
    let mut agent = KillOnDrop(agent);
    let addr = crate::support::bound_addr(&mut agent.0, &log, "zlh agent listening");
    crate::support::wait_for(
        "the agent to answer",
        std::time::Duration::from_secs(20),
        || crate::support::http_get(&format!("http://{addr}/health")).map(|_| ()),
    );
    (agent, addr)
}

/// A child process killed when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Err(e) = self.0.kill().and_then(|()| self.0.wait().map(drop)) {
            eprintln!("stopping a child process: {e}");
        }
    }
}

/// Finding 6: at most `http.max_connections` connections are served at once: with the
/// cap taken by connections that send partial headers, another client is answered
/// only once the header deadline has closed them.
#[test]
fn f06_connection_cap() {
    use std::time::{Duration, Instant};
    const CAP: usize = 4;
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(
        tmp.path(),
        &[],
        &[
            ("ZLH_HTTP_HEADER_TIMEOUT_SECS", "2"),
            ("ZLH_HTTP_MAX_CONNECTIONS", "4"),
        ],
    );
    // The readiness polls' connections are closed first (idle), so all 4 are free.
    crate::support::wait_for(
        "the readiness connections to close",
        Duration::from_secs(10),
        || {
            let mut probe = std::net::TcpStream::connect(served.addr).ok()?;
            probe
                .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .ok()?;
            read_until_closed(&mut probe, Instant::now() + Duration::from_secs(2)).map(drop)
        },
    );
    let mut hogs: Vec<std::net::TcpStream> = (0..CAP)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(served.addr).expect("connecting");
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                .expect("a partial header");
            s
        })
        .collect();
    let started = Instant::now();
    let mut late = std::net::TcpStream::connect(served.addr).expect("connecting (backlog)");
    late.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .expect("a request");
    let answer = read_until_closed(&mut late, started + Duration::from_secs(8))
        .expect("finding 6: the capped client is answered once slots free up");
    let answered_after = started.elapsed();
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "finding 6: {}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        answered_after >= Duration::from_millis(1500),
        "finding 6: answered after {answered_after:?}, while {CAP} connections held the cap"
    );
    for (i, h) in hogs.iter_mut().enumerate() {
        assert!(
            read_until_closed(h, Instant::now() + Duration::from_secs(1)).is_some(),
            "finding 6: hog {i} still open"
        );
    }
}

/// Finding 6: live pages and consoles are capped per session and per user (429).
#[test]
fn f06_streams_capped_per_session_and_user() {
    let tmp = tempfile::tempdir().unwrap();
    let served = serve(
        tmp.path(),
        &[],
        &[
            ("ZLH_HTTP_MAX_STREAMS_PER_SESSION", "2"),
            ("ZLH_HTTP_MAX_STREAMS_PER_USER", "3"),
        ],
    );
    let (_agent, agent_addr) = spawn_agent(tmp.path(), &["--max-streams", "1"]);
    let client = ui_client();
    rt().block_on(async {
        let (a, b) = (
            sign_in(&client, &served).await,
            sign_in(&client, &served).await,
        );
        let open = |session: String| {
            let client = client.clone();
            let url = served.url("/servers/live?ids=");
            async move {
                let r = client
                    .get(url)
                    .header("cookie", session)
                    .send()
                    .await
                    .expect("GET /servers/live");
                (r.status().as_u16(), r)
            }
        };
        // (variant, session, status)
        let steps = [
            ("session A, 1st", &a, 200),
            ("session A, 2nd", &a, 200),
            ("session A, 3rd: over the session cap", &a, 429),
            ("session B, 1st", &b, 200),
            ("session B, 2nd: over the user cap", &b, 429),
        ];
        let mut held = vec![];
        for (variant, session, want) in steps {
            let (status, resp) = open(session.clone()).await;
            assert_eq!(status, want, "finding 6, {variant}");
            if status == 200 {
                held.push(resp);
            }
        }
        // The agent's console streams are capped too.
        let console = || {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = format!("ws://{agent_addr}/console/stream")
                .into_client_request()
                .expect("a WS request");
            req.headers_mut().insert(
                "authorization",
                format!("Bearer {AGENT_TOKEN}").parse().expect("a header"),
            );
            tokio_tungstenite::connect_async(req)
        };
        let first = console()
            .await
            .expect("finding 6: the agent's first console stream");
        match console().await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(
                    resp.status().as_u16(),
                    429,
                    "finding 6: the agent's second console stream"
                );
            }
            other => panic!(
                "finding 6: the agent's second console stream: {:?}",
                other.map(|_| "upgraded")
            ),
        }
        drop(first);

        // A stream that ends gives its place back.
        drop(held.remove(0));
        crate::support::wait_for_async(
            "a freed stream slot",
            std::time::Duration::from_secs(10),
            || {
                let open = open(b.clone());
                async move {
                    let (status, resp) = open.await;
                    (status == 200).then_some(resp)
                }
            },
        )
        .await;
    });
}
