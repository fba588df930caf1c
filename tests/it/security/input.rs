//! Findings about what zlh accepts from its users: node URLs (#11), validation gaps
//! (#12), a panic on input (#14), non-admins and quotas (#15).

use serde_json::{Value, json};

use crate::support::api::{Api, standin_template};
use crate::support::{self, zlh};

/// One replayed request: the finding, what it sends, and the field the 400 must name.
struct Row {
    finding: &'static str,
    what: &'static str,
    path: &'static str,
    body: Value,
    field: &'static str,
}

fn node(settings_change: impl FnOnce(&mut Value)) -> Value {
    let mut settings = json!({
        "api_url": "https://10.0.0.2:8006", "token_id": "zlh@pve!ctl",
        "token_secret": "s3cret", "node": "pve1", "template_vmid": 900,
        "bootstrap_token": "b00tstrap"
    });
    settings_change(&mut settings);
    json!({"name": "pve", "kind": "proxmox", "memory_mb": 4096, "settings": settings})
}

fn template(change: impl FnOnce(&mut Value)) -> Value {
    let mut t = standin_template();
    t["slug"] = json!("probe");
    change(&mut t);
    t
}

fn rows() -> Vec<Row> {
    let url = |u: &'static str| node(move |s| s["api_url"] = json!(u));
    let mut rows = vec![];
    for (what, u) in [
        ("loopback", "https://127.0.0.1:8006"),
        ("loopback, short spelling", "https://127.1:8006"),
        ("loopback, as one number", "https://2130706433:8006"),
        ("unspecified", "https://0.0.0.0:8006"),
        ("link-local (cloud metadata)", "https://169.254.169.254"),
        ("IPv6 link-local", "https://[fe80::1]:8006"),
        ("IPv6 loopback", "https://[::1]:8006"),
        ("multicast", "https://224.0.0.1:8006"),
        (
            "user-info hiding the host",
            "https://10.0.0.1:x@evil.example/",
        ),
        ("plain http without the opt-in", "http://10.0.0.2:8006"),
    ] {
        rows.push(Row {
            finding: "#11 SSRF through node URLs",
            what,
            path: "/api/v1/nodes",
            body: url(u),
            field: "settings.api_url",
        });
    }
    rows.push(Row {
        finding: "#14 panic on input",
        what: "a non-ASCII character in tls_fingerprint",
        path: "/api/v1/nodes",
        body: node(|s| {
            s["tls_fingerprint"] = json!(format!("{}é{}", "a".repeat(31), "b".repeat(31)))
        }),
        field: "settings.tls_fingerprint",
    });
    let gaps: Vec<(&'static str, Value, &'static str)> = vec![
        (
            "game_port 0",
            template(|t| t["spec"]["game_port"] = json!(0)),
            "spec.game_port",
        ),
        (
            "artifact_path with ..",
            template(|t| t["spec"]["artifact_path"] = json!("../../secret.key")),
            "spec.artifact_path",
        ),
        (
            "mods.path with ..",
            template(|t| {
                t["spec"]["mods"] =
                    json!([{"path": "mods/../../x.jar", "destination": "mods/x.jar"}])
            }),
            "spec.mods.path",
        ),
        (
            "a property key with a newline",
            template(|t| t["spec"]["properties"]["motd\nop"] = json!("x")),
            "spec.properties",
        ),
        (
            "a property value with a newline",
            template(|t| t["spec"]["properties"]["motd"] = json!("hi\nenable-rcon=true")),
            "spec.properties",
        ),
        (
            "an env key A=B",
            template(|t| t["spec"]["env"]["A=B"] = json!("x")),
            "spec.env",
        ),
        (
            "an empty env key",
            template(|t| t["spec"]["env"][""] = json!("x")),
            "spec.env",
        ),
        (
            "an env key with NUL",
            template(|t| t["spec"]["env"]["A\u{0}B"] = json!("x")),
            "spec.env",
        ),
        (
            "a multi-line stop_command",
            template(|t| t["spec"]["stop_command"] = json!("save-all\nstop")),
            "spec.stop_command",
        ),
    ];
    for (what, body, field) in gaps {
        rows.push(Row {
            finding: "#12 validation gaps",
            what,
            path: "/api/v1/templates",
            body,
            field,
        });
    }
    rows.push(Row {
        finding: "#12 validation gaps",
        what: "a server version with ..",
        path: "/api/v1/servers",
        body: json!({"name": "dotdot", "template": "standin", "version": "1..2", "eula": true}),
        field: "version",
    });
    rows.push(Row {
        finding: "#12 validation gaps",
        what: "a server version starting with .",
        path: "/api/v1/servers",
        body: json!({"name": "dotdot", "template": "standin", "version": ".hidden", "eula": true}),
        field: "version",
    });
    rows
}

fn counts(api: &Api) -> (usize, usize, usize) {
    let n = |path: &str, key: &str| {
        let (code, body) = api.call("GET", path, None);
        assert_eq!(code, 200, "{path}: {body}");
        body[key].as_array().map_or(0, Vec::len)
    };
    (
        n("/api/v1/nodes", "nodes"),
        n("/api/v1/templates", "templates"),
        n("/api/v1/servers", "servers"),
    )
}

#[test]
fn bad_input_is_refused_naming_the_field_and_nothing_is_written() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let before = counts(&api);
    for row in rows() {
        let (code, body) = api.call("POST", row.path, Some(row.body.clone()));
        assert_eq!(
            (code, body["error"]["field"].as_str()),
            (400, Some(row.field)),
            "{} — {}: {body}",
            row.finding,
            row.what
        );
    }
    assert_eq!(counts(&api), before, "nothing was written");
    assert!(
        !api.served.log_text().contains("panicked"),
        "no panic in the log"
    );

    // #12: console commands with NUL or control characters (a tab is fine).
    let (code, body) = api.call(
        "POST",
        "/api/v1/servers",
        Some(json!({"name": "console", "template": "standin", "version": "1.0", "eula": true})),
    );
    assert_eq!(code, 202, "{body}");
    let id = body["server"]["id"].as_i64().unwrap();
    api.wait_status(id, "running");
    for bad in [
        "say a\u{0}b",
        "say \u{1b}[2Jclear",
        "say a\rb",
        "say a\u{7f}",
    ] {
        let (code, body) = api.call(
            "POST",
            &format!("/api/v1/servers/{id}/console"),
            Some(json!({"command": bad})),
        );
        assert_eq!(
            (code, body["error"]["field"].as_str()),
            (400, Some("command")),
            "{bad:?}: {body}"
        );
    }
    let (code, body) = api.call(
        "POST",
        &format!("/api/v1/servers/{id}/console"),
        Some(json!({"command": "say tab\there"})),
    );
    assert_eq!(code, 204, "a tab is fine: {body}");
}

#[test]
fn node_urls_need_explicit_opt_ins_for_plain_http_and_loopback() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    // #11: what a homelab on the PVE host itself, or a simulator, needs: both opt-ins.
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(node(|s| {
            s["api_url"] = json!("http://127.0.0.1:8006");
            s["allow_loopback"] = json!(true);
        })),
    );
    assert_eq!(
        (code, body["error"]["field"].as_str()),
        (400, Some("settings.api_url"))
    );
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("allow_insecure_http"),
        "{body}"
    );
    let (code, body) = api.call(
        "POST",
        "/api/v1/nodes",
        Some(node(|s| {
            s["api_url"] = json!("http://127.0.0.1:8006");
            s["allow_loopback"] = json!(true);
            s["allow_insecure_http"] = json!(true);
        })),
    );
    assert_eq!(code, 201, "{body}");
}

#[test]
fn user_info_in_an_internal_url_setting_is_refused() {
    // #11: `http://10.0.0.1:x@evil.com/` passed the IP-only check of URL settings.
    let tmp = tempfile::tempdir().unwrap();
    for (var, extra) in [
        ("ZLH_ADVERTISE_URL", vec![]),
        (
            "ZLH_EDGE_VELOCITY_URL",
            vec![
                ("ZLH_EDGE_VELOCITY_SECRET", "s"),
                ("ZLH_EDGE_VELOCITY_EDGE_IP", "203.0.113.7"),
                ("ZLH_EDGE_VELOCITY_SRV_TARGET", "play.example.com"),
            ],
        ),
    ] {
        let out = zlh(tmp.path())
            .args(["config", "check", "--data-dir"])
            .arg(tmp.path().join("data"))
            .env(var, "http://10.0.0.1:x@evil.example/")
            .envs(extra)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{var}: accepted");
        assert!(err.contains("user-info"), "{var}: {err}");
    }
}

#[test]
fn templates_are_read_only_for_users_and_quotas_hold() {
    let tmp = tempfile::tempdir().unwrap();
    let api = Api::start(tmp.path());
    let data = api.served.data_dir.clone();
    let run = |args: &[&str]| {
        let out = zlh(tmp.path())
            .args(args)
            .arg("--data-dir")
            .arg(&data)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    assert!(run(&["user", "add", "bob"]).0);
    let (ok, bob_token) = run(&["token", "create", "--user", "bob"]);
    assert!(ok, "{bob_token}");
    let bob_token = bob_token.lines().next().unwrap().trim().to_string();
    let as_bob = |method: &str, path: &str, body: Option<Value>| -> (u16, Value) {
        api.http.rt.block_on(async {
            let mut req = api
                .http
                .inner
                .request(method.parse().unwrap(), api.served.url(path))
                .bearer_auth(&bob_token);
            if let Some(b) = body {
                req = req.json(&b);
            }
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                code,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    };
    // #15: templates are readable (a user picks one to create a server), not writable.
    assert_eq!(as_bob("GET", "/api/v1/templates", None).0, 200);
    let (code, _) = as_bob("POST", "/api/v1/templates", Some(template(|_| {})));
    assert_eq!(code, 403);

    // #15: per-user quotas, set by an admin, checked in the create transaction.
    let (ok, out) = run(&[
        "user",
        "quota",
        "bob",
        "--max-servers",
        "1",
        "--max-memory-mb",
        "1024",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("servers 0 of 1, memory 0 of 1024 MiB"),
        "{out}"
    );
    let create = |name: &str, mem: u32| {
        as_bob(
            "POST",
            "/api/v1/servers",
            Some(
                json!({"name": name, "template": "standin", "version": "1.0", "eula": true, "memory_mb": mem}),
            ),
        )
    };
    let (code, body) = create("too-big", 2048);
    assert_eq!(
        (code, body["error"]["field"].as_str()),
        (400, Some("memory_mb")),
        "{body}"
    );
    let (code, body) = create("first", 512);
    assert_eq!(code, 202, "{body}");
    let (code, body) = create("second", 512);
    assert_eq!(code, 409, "{body}");
    assert!(
        body["error"]["message"].as_str().unwrap().contains("quota"),
        "{body}"
    );
    let (_, list) = api.call("GET", "/api/v1/servers", None);
    let names: Vec<&str> = list["servers"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| s["name"].as_str())
        .collect();
    assert_eq!(names, vec!["first"], "nothing else was written");
    // Back to the configured defaults (10 servers, 32 GiB): room again.
    let (ok, out) = run(&[
        "user",
        "quota",
        "bob",
        "--max-servers",
        "default",
        "--max-memory-mb",
        "default",
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("servers 1 of 10, memory 512 of 32768 MiB"),
        "{out}"
    );
    assert_eq!(create("second", 512).0, 202);
    // Admins are not limited.
    let (_, out) = run(&["user", "quota", "admin"]);
    assert!(out.contains("not limited"), "{out}");

    // The users page shows each quota and sets one (empty: the default).
    let session = support::ui_session(&api.served);
    let client = support::ui_client();
    let page = |client: &reqwest::Client| {
        api.http.rt.block_on(async {
            let r = client
                .get(api.served.url("/users"))
                .header("cookie", &session)
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        })
    };
    let body = page(&client);
    assert!(
        body.contains("Quota: servers 2 of 10, memory 1024 of 32768 MiB"),
        "{body}"
    );
    let csrf = body
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .unwrap()
        .to_string();
    let status = api.http.rt.block_on(async {
        client
            .post(api.served.url("/users/2/quota"))
            .header("cookie", &session)
            .form(&[
                ("csrf", csrf.as_str()),
                ("max_servers", "2"),
                ("max_memory_mb", ""),
            ])
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    });
    assert_eq!(status, 200);
    assert!(page(&client).contains("Quota: servers 2 of 2, memory 1024 of 32768 MiB"));
    assert_eq!(create("third", 512).0, 409, "the new limit holds");
}
