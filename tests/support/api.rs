//! The JSON API of a real `zlh serve`, driven synchronously: an admin token, the
//! stand-in game imported into the mirror and registered as a template.
#![allow(dead_code)]

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use super::{Served, wait_for, zlh};

pub const STANDIN: &str = "tests/support/standin_game.py";

/// A served data dir with an admin token and the stand-in game as a template.
pub struct Api {
    pub served: Served,
    pub token: String,
    pub http: Http,
}

/// Tests drive the API synchronously: an async client on a small runtime of its own.
pub struct Http {
    pub inner: reqwest::Client,
    pub rt: tokio::runtime::Runtime,
}

impl Api {
    /// An API token of a new non-admin user `name` (for the owner/admin rule).
    pub fn user_token(&self, name: &str) -> String {
        let data = &self.served.data_dir;
        let run = |args: &[&str]| {
            let out = zlh(data.parent().unwrap_or(data))
                .args(args)
                .arg("--data-dir")
                .arg(data)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        run(&["user", "add", name]);
        run(&["token", "create", "--user", name])
    }

    pub fn start(tmp: &Path) -> Api {
        let served = Served::start_with_env(
            tmp,
            &tmp.join("data"),
            &[],
            &[("ZLH_ARTIFACTS_UPSTREAM", "false")],
        );
        Api::start_on(tmp, served)
    }

    /// An admin token and the stand-in template on an already started server.
    pub fn start_on(tmp: &Path, served: Served) -> Api {
        let data = served.data_dir.clone();
        let run = |args: &[&str]| {
            let out = zlh(tmp)
                .args(args)
                .arg("--data-dir")
                .arg(&data)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        run(&["user", "add", "admin", "--admin"]);
        let token = run(&["token", "create", "--user", "admin"]);
        let standin = Path::new(env!("CARGO_MANIFEST_DIR")).join(STANDIN);
        run(&[
            "artifacts",
            "add",
            "test/standin/1.0/server.jar",
            standin.to_str().unwrap(),
        ]);
        let api = Api {
            served,
            token,
            http: Http {
                // Below zlh serve's idle timeout (5 s): never reuse a closing connection.
                inner: reqwest::Client::builder()
                    .pool_idle_timeout(Duration::from_secs(2))
                    .no_proxy()
                    .build()
                    .unwrap(),
                rt: tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap(),
            },
        };
        let (code, body) = api.call("POST", "/api/v1/templates", Some(standin_template()));
        assert_eq!(code, 201, "{body}");
        api
    }

    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.call_with(method, path, body, &[])
    }

    pub fn call_with(
        &self,
        method: &str,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> (u16, Value) {
        let mut req = self
            .http
            .inner
            .request(method.parse().unwrap(), self.served.url(path))
            .bearer_auth(&self.token);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        self.http.rt.block_on(async {
            let resp = req.send().await.unwrap();
            let code = resp.status().as_u16();
            let text = resp.text().await.unwrap();
            (
                code,
                serde_json::from_str(&text).unwrap_or(Value::String(text)),
            )
        })
    }

    pub fn server(&self, id: i64) -> Value {
        let (code, body) = self.call("GET", &format!("/api/v1/servers/{id}"), None);
        assert_eq!(code, 200, "{body}");
        body
    }

    /// Waits until the server's status is no longer `from` (an action was picked up).
    pub fn wait_leaves(&self, id: i64, from: &str) {
        wait_for(
            &format!("server {id} to leave {from}"),
            Duration::from_secs(60),
            || (self.server(id)["status"] != from).then_some(()),
        );
    }

    pub fn wait_status(&self, id: i64, want: &str) -> Value {
        wait_for(
            &format!("server {id} to be {want}"),
            Duration::from_secs(90),
            || {
                let s = self.server(id);
                if s["status"] == "failed" && want != "failed" {
                    panic!("server failed: {s}");
                }
                (s["status"] == want).then_some(s)
            },
        )
    }
}

pub fn standin_template() -> Value {
    json!({
        "slug": "standin",
        "name": "Stand-in game (tests)",
        "game": "standin",
        "variant": "python",
        "spec": {
            "artifact_path": "test/standin/{version}/server.jar",
            "java": "none",
            "start_command": "python3 {jar}",
            "stop_command": "stop",
            "readiness": "minecraft_ping",
            "default_memory_mb": 512,
            "default_cores": 1,
            "edge": "none",
            "properties": {"server-port": "{game_port}", "server-ip": "{ip}", "motd": "{name}"},
            "env": {"STANDIN_LOAD_MS": "300"},
            "eula_required": true
        }
    })
}

pub fn slp(port: i64) -> Option<Value> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(zlh::agent::slp::status(
        format!("127.0.0.1:{port}").parse().unwrap(),
        Duration::from_secs(2),
    ))
    .ok()
}
