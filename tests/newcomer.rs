//! Newcomer friction (issue 21): what a new user ran into when following the README
//! with a real game — each test replays it against the real binary.

mod support;

use std::path::Path;

use serde_json::{Value, json};
use support::api::{Api, standin_template};
use support::{Served, open_db, zlh};

/// The stand-in game as a `minecraft` template that does not ask for the EULA itself.
fn minecraft_without_eula_flag(slug: &str) -> Value {
    let mut t = standin_template();
    t["slug"] = json!(slug);
    t["game"] = json!("minecraft");
    t["spec"]["eula_required"] = json!(false);
    t
}

fn count(data: &Path, sql: &str) -> i64 {
    open_db(data).query_row(sql, [], |r| r.get(0)).unwrap()
}

#[test]
fn a_minecraft_template_needs_eula_at_create_time_unless_it_declares_a_third_party_server() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let data = api.served.data_dir.clone();
    let (code, body) = api.call(
        "POST",
        "/api/v1/templates",
        Some(minecraft_without_eula_flag("mc-custom")),
    );
    assert_eq!(code, 201, "{body}");

    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "late", "template": "mc-custom", "version": "1.0"})),
    );
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "eula", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("\"eula\": true"),
        "the message speaks the API's words: {body}"
    );
    // Nothing was written: no server, no job, no directory.
    assert_eq!(count(&data, "SELECT count(*) FROM servers"), 0);
    assert_eq!(
        count(&data, "SELECT count(*) FROM jobs WHERE kind LIKE 'server.%'"),
        0
    );
    assert!(!data.join("servers").exists() || dir_is_empty(&data.join("servers")));

    // A template that declares a third-party server (not Mojang's) is not held to
    // Mojang's EULA, neither by the create nor by the agent: it reaches `running`.
    let mut t = minecraft_without_eula_flag("mc-third-party");
    t["spec"]["third_party_server"] = json!(true);
    // The stand-in itself insists on an eula.txt, as Mojang's server does.
    t["spec"]["files"] = json!([{"destination": "eula.txt", "content": "eula=true\n"}]);
    let (code, body) = api.call("POST", "/api/v1/templates", Some(t));
    assert_eq!(code, 201, "{body}");
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "squid", "template": "mc-third-party", "version": "1.0"})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    api.wait_status(id, "running");
}

fn dir_is_empty(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|mut d| d.next().is_none())
        .unwrap_or(true)
}

#[test]
fn cli_commands_refuse_a_data_dir_without_a_database_and_name_the_running_one() {
    let tmp = tempfile::tempdir().unwrap();
    let elsewhere = tmp.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();

    // Nothing served anywhere yet: refused, and nothing is created.
    for args in [
        &["user", "list"][..],
        &["user", "add", "admin", "--admin"],
        &["token", "create", "--user", "admin"],
        &["jobs", "list"],
    ] {
        let out = zlh(&elsewhere)
            .args(args)
            .arg("--data-dir")
            .arg(&empty)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            err.contains(&format!("no zlh database at {}", empty.display()))
                && err.contains("pass --data-dir or set ZLH_DATA_DIR"),
            "{args:?}: {err}"
        );
        assert!(dir_is_empty(&empty), "{args:?} created something in {empty:?}");
    }
    // The repro: no --data-dir at all, run from another directory.
    let out = zlh(&elsewhere).args(["user", "list"]).output().unwrap();
    assert!(!out.status.success());
    assert!(
        dir_is_empty(&elsewhere),
        "no ./zlh-data was created beside the caller"
    );

    // With a `zlh serve` running on another data dir, the refusal names it.
    let data = tmp.path().join("data");
    let served = Served::start(tmp.path(), &data, &[]);
    let out = zlh(&elsewhere).args(["user", "list"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        // Other tests' servers may be listed too (they run side by side).
        err.contains("`zlh serve` is using ")
            && err.contains(&format!(
                "{} (host {}",
                data.display(),
                zlh::config::hostname()
            ))
            && err.contains(&format!("listening on {}", served.addr)),
        "{err}"
    );
    assert!(dir_is_empty(&elsewhere));

    // `zlh token create` says where it issued the token, on stderr; stdout is the token.
    let run = |args: &[&str]| {
        zlh(&elsewhere)
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap()
    };
    assert!(run(&["user", "add", "admin", "--admin"]).status.success());
    let out = run(&["token", "create", "--user", "admin"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stdout.lines().count(), 1, "only the token on stdout: {stdout}");
    assert!(
        err.contains(&data.display().to_string())
            && err.contains(&format!("http://{}", served.addr)),
        "{err}"
    );
    let code = support::http_get_with_bearer(&served.url("/api/v1/templates"), stdout.trim());
    assert_eq!(code, 200, "the token works on the server it names");
}
