//! The server.properties editor through the JSON API and the UI of a real `zlh serve`
//! (local runtime, stand-in game): a byte-exact round trip of a real-looking file,
//! typed checks naming the key, managed keys read-only, and the "restart needed"
//! badge that appears with an edit and clears with a restart.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::support::api::Api;
use crate::support::browser::Browser;
use crate::support::wait_for;
use serde_json::{Value, json};

fn create(api: &Api, name: &str) -> i64 {
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": name, "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    body["server"]["id"].as_i64().unwrap()
}

fn properties_path(api: &Api, id: i64) -> PathBuf {
    let vmid = api.server(id)["vmid"].as_i64().unwrap();
    api.served
        .data_dir
        .join(format!("servers/{vmid}/agent/server/server.properties"))
}

fn action(api: &Api, id: i64, what: &str) {
    let (code, body) = api.call("POST", &format!("/api/v1/servers/{id}/{what}"), None);
    assert_eq!(code, 202, "{body}");
}

fn props(api: &Api, id: i64) -> Value {
    let (code, body) = api.call("GET", &format!("/api/v1/servers/{id}/properties"), None);
    assert_eq!(code, 200, "{body}");
    body
}

/// A server.properties as a 1.21 server writes it, plus what people and mods add:
/// comments, CRLF, odd spacing, escapes, a continuation, unknown keys.
fn real_file(port_line: &str, ip_line: &str) -> String {
    [
        "#Minecraft server properties",
        "#Sat Dec 05 10:00:00 UTC 2026",
        "accepts-transfers=false",
        "allow-flight=false",
        "allow-nether=true",
        "broadcast-console-to-ops=true",
        "difficulty=easy",
        "enable-command-block=false",
        "enable-status=true",
        "enforce-whitelist=false",
        "gamemode=survival",
        "generator-settings={}",
        "level-name=world",
        "level-seed=",
        "level-type=minecraft\\:normal",
        "max-players=20",
        "  motd = A Minecraft Server \\u00e9t\\u00e9  ",
        "! a comment of another style",
        "",
        "online-mode=false",
        "pvp=true",
        port_line,
        ip_line,
        "view-distance:10",
        "my-mod.setting   value with spaces",
        "long-value=first \\",
        "    second",
        "white-list=false",
    ]
    .join("\r\n")
        + "\r\n"
}

fn line_of(text: &str, key: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_string()
}

#[test]
fn editing_two_keys_keeps_every_other_byte_names_bad_keys_and_asks_for_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let id = create(&api, "props");
    api.wait_status(id, "running");
    let path = properties_path(&api, id);
    let seeded = std::fs::read_to_string(&path).unwrap();
    let original = real_file(
        &line_of(&seeded, "server-port"),
        &line_of(&seeded, "server-ip"),
    );

    // The operator's file is in place before the game starts.
    action(&api, id, "stop");
    api.wait_status(id, "stopped");
    std::fs::write(&path, &original).unwrap();
    let stopped = props(&api, id);
    assert_eq!(
        stopped["restart_needed"], false,
        "a stopped game needs no restart"
    );
    action(&api, id, "start");
    api.wait_status(id, "running");

    let view = props(&api, id);
    assert_eq!(view["restart_needed"], false, "{view}");
    let field = |v: &Value, key: &str| -> Value {
        v["fields"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f["key"] == key)
            .cloned()
            .unwrap_or_else(|| panic!("no field {key}: {v}"))
    };
    assert_eq!(field(&view, "motd")["value"], "A Minecraft Server été  ");
    assert_eq!(field(&view, "difficulty")["kind"], "enum");
    assert_eq!(field(&view, "level-type")["value"], "minecraft:normal");
    let managed: Vec<&str> = view["managed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k.as_str().unwrap())
        .collect();
    for k in ["server-port", "server-ip", "rcon.port", "query.port"] {
        assert!(managed.contains(&k), "{k} is read-only: {managed:?}");
    }
    assert!(
        view["properties"].to_string().contains("my-mod.setting"),
        "unknown keys are listed: {view}"
    );

    // Bad values and managed keys are refused, naming the key; nothing is written.
    for (body, field_name) in [
        (json!({"max-players": "lots"}), "max-players"),
        (json!({"max-players": -1}), "max-players"),
        (json!({"difficulty": "insane"}), "difficulty"),
        (json!({"pvp": "yes"}), "pvp"),
        (json!({"view-distance": 99}), "view-distance"),
        (json!({"motd": "two\nlines"}), "motd"),
        (json!({"server-port": 1}), "server-port"),
        (
            json!({"difficulty": "hard", "server-ip": "0.0.0.0"}),
            "server-ip",
        ),
        (json!({"bad key": "x"}), "bad key"),
        (json!({"pvp": null}), "pvp"),
        (json!({}), "body"),
    ] {
        let (code, out) = api.call(
            "PUT",
            &format!("/api/v1/servers/{id}/properties"),
            Some(body.clone()),
        );
        assert_eq!(code, 400, "{body}: {out}");
        assert_eq!(out["error"]["field"], field_name, "{body}: {out}");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            original,
            "{body} changed nothing"
        );
    }

    // Two keys change; every other byte stays.
    let (code, out) = api.call(
        "PUT",
        &format!("/api/v1/servers/{id}/properties"),
        Some(json!({"max-players": 50, "difficulty": "hard"})),
    );
    assert_eq!(code, 200, "{out}");
    let expected = original
        .replace("\r\nmax-players=20\r\n", "\r\nmax-players=50\r\n")
        .replace("\r\ndifficulty=easy\r\n", "\r\ndifficulty=hard\r\n");
    assert_ne!(expected, original);
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
    assert_eq!(out["restart_needed"], true, "{out}");
    assert_eq!(field(&out, "max-players")["value"], "50");

    // The badge shows on the Properties tab until the game restarts.
    let (code, page) = support::ui_get(&api.served, &format!("/servers/{id}/properties"));
    assert_eq!(code, 200);
    assert!(page.contains("id=\"restart-needed\""), "{page}");
    action(&api, id, "restart");
    wait_for("the badge to clear", Duration::from_secs(60), || {
        (api.server(id)["status"] == "running" && props(&api, id)["restart_needed"] == false)
            .then_some(())
    });
    let (_, page) = support::ui_get(&api.served, &format!("/servers/{id}/properties"));
    assert!(!page.contains("id=\"restart-needed\""));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);

    // The UI form: an unchanged form writes nothing; a bad value is named.
    let session = support::ui_session(&api.served);
    let csrf = ui_csrf(&api, &session, &format!("/servers/{id}/properties"));
    let post = |form: &[(&str, &str)]| -> (u16, String) {
        api.http.rt.block_on(async {
            let mut f: Vec<(&str, &str)> = vec![("csrf", csrf.as_str())];
            f.extend_from_slice(form);
            let r = support::ui_client()
                .post(api.served.url(&format!("/servers/{id}/properties")))
                .header("cookie", &session)
                .form(&f)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        })
    };
    let (code, page) = post(&[("max-players", "50"), ("difficulty", "hard")]);
    assert_eq!(code, 200);
    assert!(page.contains("Nothing changed"), "{page}");
    let (code, page) = post(&[("max-players", "many")]);
    assert_eq!(code, 400);
    assert!(page.contains("max-players"), "{page}");
    let (code, page) = post(&[("pvp", "false")]);
    assert_eq!(code, 200);
    assert!(page.contains("Saved pvp"), "{page}");
    assert!(
        std::fs::read_to_string(&path)
            .unwrap()
            .contains("\r\npvp=false\r\n")
    );

    // Another user's server: 404, nothing changed.
    let bob = api.user_token("bob");
    let before = std::fs::read_to_string(&path).unwrap();
    for (method, body) in [("GET", None), ("PUT", Some(json!({"motd": "mine"})))] {
        let code = as_user(
            &api,
            &bob,
            method,
            &format!("/api/v1/servers/{id}/properties"),
            body,
        );
        assert_eq!(code, 404, "{method}");
    }
    assert_eq!(std::fs::read_to_string(&path).unwrap(), before);
}

/// The CSRF token of a session, read from a page's form.
pub fn ui_csrf(api: &Api, session: &str, path: &str) -> String {
    let page = api.http.rt.block_on(async {
        support::ui_client()
            .get(api.served.url(path))
            .header("cookie", session)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    let at = page.find("name=\"csrf\" value=\"").expect("a csrf field") + 19;
    page[at..].split('"').next().unwrap().to_string()
}

pub fn as_user(api: &Api, token: &str, method: &str, path: &str, body: Option<Value>) -> u16 {
    api.http.rt.block_on(async {
        let mut r = api
            .http
            .inner
            .request(method.parse().unwrap(), api.served.url(path))
            .bearer_auth(token);
        if let Some(b) = body {
            r = r.json(&b);
        }
        r.send().await.unwrap().status().as_u16()
    })
}

#[test]
fn browser_properties_tab() {
    if !Browser::available() {
        eprintln!("no browser here: skipped");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let id = create(&api, "props-ui");
    api.wait_status(id, "running");
    let b = Browser::start(&shots_dir());
    login(&b, &api);
    b.goto(&api.served.url(&format!("/servers/{id}/properties")));
    b.find("#properties-form");
    b.find("#p-max-players").clear();
    b.find("#p-max-players").send_keys("42");
    b.find("#properties-form button[type=submit]").click();
    b.wait_text(
        "#properties-notice",
        "Saved max-players",
        Duration::from_secs(30),
    );
    b.find("#restart-needed");
    b.screenshot("server-properties");
    // The version form on the same tab: a downgrade without the box is named.
    b.find("#v-version").send_keys("0.1");
    b.find("#version-form button[type=submit]").click();
    b.wait_text(
        "#properties-error",
        "confirm_downgrade",
        Duration::from_secs(30),
    );
    assert_eq!(api.server(id)["version"], "1.0", "nothing was queued");
    assert!(
        std::fs::read_to_string(properties_path(&api, id))
            .unwrap()
            .contains("max-players=42")
    );
}

pub fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/ui-screenshots");
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Signs the browser in as the UI test admin.
pub fn login(b: &Browser, api: &Api) {
    // Creates the user (once) and proves the password works.
    support::ui_session(&api.served);
    b.goto(&api.served.url("/login"));
    b.find("#username").send_keys("ui-viewer");
    b.find("#password").send_keys("ui-viewer-password");
    b.find("form.stack button").click();
    b.wait_text("h1", "Dashboard", Duration::from_secs(30));
}
