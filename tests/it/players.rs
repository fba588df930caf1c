//! Players through the JSON API and the UI of a real `zlh serve` (local runtime, the
//! stand-in game answering vanilla's commands and writing its JSON lists): actions on
//! a running server reach the console and show in the lists; on a stopped server they
//! are queued and applied once, at the next ready.

use crate::support;

use std::path::PathBuf;
use std::time::Duration;

use crate::support::api::{Api, standin_template};
use crate::support::browser::Browser;
use crate::support::wait_for;
use serde_json::{Value, json};

/// The stand-in template with two players online (Dave and Eve).
fn with_players(api: &Api) {
    let mut t = standin_template();
    t["slug"] = json!("standin-players");
    t["spec"]["env"]["STANDIN_PLAYERS"] = json!("Dave,Eve");
    let (code, body) = api.call("POST", "/api/v1/templates", Some(t));
    assert_eq!(code, 201, "{body}");
}

fn create(api: &Api, name: &str) -> i64 {
    with_players(api);
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": name, "template": "standin-players", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    body["server"]["id"].as_i64().unwrap()
}

fn server_dir(api: &Api, id: i64) -> PathBuf {
    let vmid = api.server(id)["vmid"].as_i64().unwrap();
    api.served
        .data_dir
        .join(format!("servers/{vmid}/agent/server"))
}

fn players(api: &Api, id: i64) -> Value {
    let (code, body) = api.call("GET", &format!("/api/v1/servers/{id}/players"), None);
    assert_eq!(code, 200, "{body}");
    body
}

fn act(api: &Api, id: i64, name: &str, action: &str, body: Option<Value>) -> (u16, Value) {
    api.call(
        "POST",
        &format!("/api/v1/servers/{id}/players/{name}/{action}"),
        body,
    )
}

fn names(list: &Value) -> Vec<String> {
    list.as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["name"]
                .as_str()
                .or(e["ip"].as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn console(api: &Api, id: i64) -> String {
    let (code, body) = api.call(
        "GET",
        &format!("/api/v1/servers/{id}/console?lines=1000"),
        None,
    );
    assert_eq!(code, 200, "{body}");
    body["lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l.as_str().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn actions_on_a_running_server_reach_the_console_and_the_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let id = create(&api, "players");
    api.wait_status(id, "running");

    let view = players(&api, id);
    assert_eq!(view["running"], true, "{view}");
    assert_eq!(view["online"], 2, "{view}");
    assert_eq!(view["names"], json!(["Dave", "Eve"]));
    assert_eq!(view["names_source"], "list", "{view}");

    for (name, action, body, line) in [
        ("Alice", "whitelist", None, "Added Alice to the whitelist"),
        ("Bob", "op", None, "Made Bob a server operator"),
        (
            "Carl",
            "ban",
            Some(json!({"reason": "griefing"})),
            "Banned Carl: griefing",
        ),
        ("10.0.0.9", "ban", None, "Banned IP 10.0.0.9"),
        (
            "Dave",
            "kick",
            Some(json!({"reason": "afk"})),
            "Kicked Dave: afk",
        ),
    ] {
        let (code, out) = act(&api, id, name, action, body);
        assert_eq!(code, 200, "{action} {name}: {out}");
        assert_eq!(out["outcome"], "applied", "{out}");
        assert_eq!(out["confirmed"], true, "{action} {name}: {out}");
        assert!(console(&api, id).contains(line), "{line}");
    }
    let view = players(&api, id);
    assert_eq!(names(&view["whitelist"]), ["Alice"]);
    assert_eq!(names(&view["ops"]), ["Bob"]);
    assert_eq!(names(&view["banned_players"]), ["Carl"]);
    assert_eq!(view["banned_players"][0]["reason"], "griefing");
    assert_eq!(names(&view["banned_ips"]), ["10.0.0.9"]);
    assert_eq!(view["names"], json!(["Eve"]), "Dave was kicked");
    // The UUIDs are the game's own (offline-mode ones here), never made up by zlh.
    let wl: Value = serde_json::from_str(
        &std::fs::read_to_string(server_dir(&api, id).join("whitelist.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(view["whitelist"][0]["uuid"], wl[0]["uuid"]);

    for (name, action) in [
        ("Alice", "unwhitelist"),
        ("Bob", "deop"),
        ("Carl", "pardon"),
        ("10.0.0.9", "pardon"),
    ] {
        let (code, out) = act(&api, id, name, action, None);
        assert_eq!(code, 200, "{out}");
        assert_eq!(out["confirmed"], true, "{action} {name}: {out}");
    }
    let view = players(&api, id);
    for list in ["whitelist", "ops", "banned_players", "banned_ips"] {
        assert_eq!(view[list], json!([]), "{list}: {view}");
    }
    let (_, events) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
    assert!(events.to_string().contains("whitelist Alice"), "{events}");

    // Bad input names the field; nothing reaches the console.
    let before = console(&api, id);
    for (name, action, body, code, field) in [
        ("no spaces", "op", None, 400, Some("name")),
        ("10.0.0.9", "op", None, 400, Some("name")),
        (
            "Steve",
            "op",
            Some(json!({"reason": "why"})),
            400,
            Some("reason"),
        ),
        (
            "Steve",
            "ban",
            Some(json!({"reason": "a\nb"})),
            400,
            Some("reason"),
        ),
        ("Steve", "explode", None, 404, None),
    ] {
        let (c, out) = act(&api, id, name, action, body);
        assert_eq!(c, code, "{action} {name}: {out}");
        if let Some(f) = field {
            assert_eq!(out["error"]["field"], f, "{out}");
        }
    }
    assert_eq!(console(&api, id).matches("Made Steve").count(), 0);
    assert!(console(&api, id).len() >= before.len());

    // Another user's server: 404, nothing sent.
    let bob = api.user_token("bob");
    for (method, path) in [
        ("GET", format!("/api/v1/servers/{id}/players")),
        ("POST", format!("/api/v1/servers/{id}/players/Mallory/op")),
    ] {
        assert_eq!(as_user(&api, &bob, method, &path), 404, "{method} {path}");
    }
    assert!(!console(&api, id).contains("Mallory"));
}

#[test]
fn actions_on_a_stopped_server_apply_once_at_the_next_start() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let id = create(&api, "later");
    api.wait_status(id, "running");
    let (code, _) = api.call("POST", &format!("/api/v1/servers/{id}/stop"), None);
    assert_eq!(code, 202);
    api.wait_status(id, "stopped");

    let (code, first) = act(&api, id, "Zed", "whitelist", None);
    assert_eq!(code, 202, "{first}");
    assert_eq!(first["outcome"], "queued");
    assert_eq!(first["job"]["lane"], format!("server:{id}"));
    let (code, again) = act(&api, id, "Zed", "whitelist", None);
    assert_eq!(code, 202);
    assert_eq!(
        again["job"]["id"], first["job"]["id"],
        "the same request is one job"
    );
    let (code, op) = act(&api, id, "Zed", "op", None);
    assert_eq!(code, 202, "{op}");
    let (code, kick) = act(&api, id, "Zed", "kick", None);
    assert_eq!(code, 409, "a kick needs the game running: {kick}");
    let view = players(&api, id);
    assert_eq!(view["running"], false);
    assert_eq!(view["pending"].as_array().unwrap().len(), 2, "{view}");
    assert_eq!(
        view["whitelist"],
        json!([]),
        "nothing applied while stopped"
    );
    let (_, events) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
    assert!(
        events.to_string().contains("queued: whitelist Zed"),
        "{events}"
    );

    let (code, _) = api.call("POST", &format!("/api/v1/servers/{id}/start"), None);
    assert_eq!(code, 202);
    api.wait_status(id, "running");
    for job in [&first["job"]["id"], &op["job"]["id"]] {
        wait_for("the queued action", Duration::from_secs(60), || {
            let (_, j) = api.call("GET", &format!("/api/v1/jobs/{job}"), None);
            (j["job"]["state"] == "completed").then_some(())
        });
    }
    let view = players(&api, id);
    assert_eq!(names(&view["whitelist"]), ["Zed"]);
    assert_eq!(names(&view["ops"]), ["Zed"]);
    assert_eq!(view["pending"], json!([]));
    let (_, events) = api.call("GET", &format!("/api/v1/servers/{id}/events"), None);
    assert!(
        events
            .to_string()
            .contains("applied at ready: whitelist Zed"),
        "{events}"
    );

    // Once: another restart does not send them again.
    let (code, _) = api.call("POST", &format!("/api/v1/servers/{id}/restart"), None);
    assert_eq!(code, 202);
    wait_for("a second run", Duration::from_secs(60), || {
        let starts = std::fs::read_to_string(server_dir(&api, id).join("world/standin-starts.log"))
            .unwrap_or_default();
        (starts.lines().count() >= 3 && api.server(id)["status"] == "running").then_some(())
    });
    let text = console(&api, id);
    assert_eq!(text.matches("> whitelist add Zed").count(), 1, "{text}");
    assert_eq!(text.matches("> op Zed").count(), 1, "{text}");
}

fn as_user(api: &Api, token: &str, method: &str, path: &str) -> u16 {
    api.http.rt.block_on(async {
        api.http
            .inner
            .request(method.parse().unwrap(), api.served.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    })
}

#[test]
fn browser_players_tab() {
    if !Browser::available() {
        eprintln!("no browser here: skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let id = create(&api, "players-ui");
    api.wait_status(id, "running");
    let shots = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let b = Browser::start(&shots);
    support::ui_session(&api.served);
    b.goto(&api.served.url("/login"));
    b.find("#username").send_keys("ui-viewer");
    b.find("#password").send_keys("ui-viewer-password");
    b.find("form.stack button").click();
    b.wait_text("h1", "Dashboard", Duration::from_secs(30));
    b.goto(&api.served.url(&format!("/servers/{id}/players")));
    b.wait_text("#online", "Dave", Duration::from_secs(30));
    b.find("#pl-name").send_keys("Alice");
    b.find("#player-form button[type=submit]").click();
    b.wait_text(
        "#players-notice",
        "whitelist add Alice",
        Duration::from_secs(30),
    );
    b.wait_text("#whitelist", "Alice", Duration::from_secs(10));
    b.screenshot("server-players");
    // Each row takes its player off the list with one button.
    b.find("#whitelist button[data-undo=unwhitelist]").click();
    b.wait_text(
        "#players-notice",
        "whitelist remove Alice",
        Duration::from_secs(30),
    );
    assert!(
        b.try_find("#whitelist").is_none(),
        "the whitelist is empty again"
    );
}
