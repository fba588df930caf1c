//! Secrets and files (findings 1, 2, 4, 10): what a game, a file mode, a copied
//! database or an anonymous mirror client can see.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::api::Api;
use crate::support::{Served, wait_for, zlh};

const FORWARDING_SECRET: &str = "fwd-secret-5e1f0a7d93c2";
const TRAEFIK_TOKEN: &str = "traefik-token-a4b1c9e07f3d";
const DNS_TOKEN: &str = "dns-token-0b7e6c2d91aa";

/// A served data dir with secrets configured and one running local server.
struct World {
    tmp: tempfile::TempDir,
    api: Api,
    id: i64,
    vmid: i64,
}

impl World {
    fn start() -> World {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let env = [
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_FORWARDING_SECRET", FORWARDING_SECRET),
            ("ZLH_EDGE_TRAEFIK_TOKEN", TRAEFIK_TOKEN),
            ("ZLH_EDGE_TRAEFIK_EDGE_IP", "203.0.113.8"),
            ("ZLH_EDGE_DNS_PROVIDER", "technitium"),
            // Nothing answers there; the stand-in template is not published anyway.
            ("ZLH_EDGE_DNS_URL", "http://127.0.0.1:9"),
            ("ZLH_EDGE_DNS_TOKEN", DNS_TOKEN),
            ("ZLH_EDGE_DNS_ZONE", "games.example.com"),
        ];
        let served = Served::start_with_env(tmp.path(), &tmp.path().join("data"), &[], &env);
        let api = Api::start_on(tmp.path(), served);
        let (code, body) = api.call(
            "POST",
            "/api/v1/servers",
            Some(json!({"name": "sec", "template": "standin", "version": "1.0", "eula": true})),
        );
        assert_eq!(code, 202, "{body}");
        let id = body["server"]["id"].as_i64().expect("a server id");
        let s = api.wait_status(id, "running");
        let vmid = s["vmid"].as_i64().expect("a vmid");
        World { tmp, api, id, vmid }
    }

    fn data(&self) -> &Path {
        &self.api.served.data_dir
    }

    /// The local agent's directory of the server.
    fn agent_dir(&self) -> PathBuf {
        self.data()
            .join("servers")
            .join(self.vmid.to_string())
            .join("agent")
    }
}

type Check = fn(&World) -> Result<(), String>;

/// One row per finding (and variant): number, name, check.
const CASES: &[(u8, &str, Check)] = &[(
    10,
    "forwarding secret only to Velocity-published servers",
    payload_of_unproxied_server_has_no_forwarding_secret,
)];

#[test]
fn secrets_and_files() {
    let world = World::start();
    let failures: Vec<String> = CASES
        .iter()
        .filter_map(|(n, name, check)| check(&world).err().map(|e| format!("#{n} {name}: {e}")))
        .collect();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// #10: the payload the agent persisted for a template without Velocity.
fn payload_of_unproxied_server_has_no_forwarding_secret(w: &World) -> Result<(), String> {
    let path = w.agent_dir().join("payload.json");
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let payload: Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    if !payload["forwarding_secret"].is_null() || text.contains(FORWARDING_SECRET) {
        return Err(format!("the agent got the forwarding secret: {text}"));
    }
    Ok(())
}
