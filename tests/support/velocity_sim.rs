//! A ZpackVelocityBridge simulator (the contract in `src/edge/velocity.rs` and
//! `docs/edge.md`): checks `X-Zpack-Secret`, keeps registrations in memory like the
//! plugin (so `restart()` forgets them all), records when each server name was
//! called, and injects faults (down, 5xx for the next N calls).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use super::sim_http::{SimServer, lock};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimRegistration {
    pub server_name: String,
    pub address: String,
    pub port: u16,
}

#[derive(Default)]
struct St {
    regs: BTreeMap<String, SimRegistration>,
    /// Every call that named a server: (operation, when).
    calls: HashMap<String, Vec<(&'static str, Instant)>>,
    counters: HashMap<&'static str, usize>,
    unauthorized: usize,
    down: bool,
    fail_next: usize,
    restarts: usize,
}

struct Shared {
    secret_hash: String,
    st: Mutex<St>,
}

pub struct VelocitySim {
    shared: Arc<Shared>,
    server: SimServer,
}

fn refuse(status: StatusCode, error: &str, message: &str) -> Response {
    (
        status,
        Json(json!({"ok": false, "error": error, "message": message})),
    )
        .into_response()
}

/// Down, injected failures and the secret, in that order (a down proxy answers
/// nothing, whatever the secret).
fn gate(sh: &Shared, headers: &HeaderMap, op: &'static str) -> Option<Response> {
    let mut st = lock(&sh.st);
    *st.counters.entry(op).or_default() += 1;
    if st.down {
        return Some(refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "down",
            "proxy is down",
        ));
    }
    if st.fail_next > 0 {
        st.fail_next -= 1;
        return Some(refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "injected failure",
        ));
    }
    let given = headers
        .get("x-zpack-secret")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if given != sh.secret_hash {
        st.unauthorized += 1;
        return Some(refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong X-Zpack-Secret",
        ));
    }
    None
}

async fn register(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = gate(&sh, &headers, "register") {
        return r;
    }
    let v: Value = match serde_json::from_str(&body) {
        Ok(v) => v,
        Err(e) => return refuse(StatusCode::BAD_REQUEST, "bad_request", &e.to_string()),
    };
    let (Some(name), Some(address), Some(port)) = (
        v["server_name"].as_str(),
        v["address"].as_str(),
        v["port"].as_u64().and_then(|p| u16::try_from(p).ok()),
    ) else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "server_name, address and port are required",
        );
    };
    // Velocity lower-cases names (Locale.US).
    let key = name.to_lowercase();
    let mut st = lock(&sh.st);
    st.calls
        .entry(key.clone())
        .or_default()
        .push(("register", Instant::now()));
    match st.regs.get(&key) {
        Some(r) if r.address == address && r.port == port => {}
        Some(r) => {
            let message = format!("Server with name {key} already registered");
            return (
                StatusCode::CONFLICT,
                Json(
                    json!({"ok": false, "error": "already_registered", "message": message,
                    "address": r.address, "port": r.port}),
                ),
            )
                .into_response();
        }
        None => {
            st.regs.insert(
                key.clone(),
                SimRegistration {
                    server_name: key.clone(),
                    address: address.to_string(),
                    port,
                },
            );
        }
    }
    Json(json!({"ok": true, "server_name": key, "address": address, "port": port})).into_response()
}

async fn unregister(State(sh): State<Arc<Shared>>, headers: HeaderMap, body: String) -> Response {
    if let Some(r) = gate(&sh, &headers, "unregister") {
        return r;
    }
    let v: Value = serde_json::from_str(&body).unwrap_or_default();
    let Some(name) = v["server_name"].as_str() else {
        return refuse(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "server_name is required",
        );
    };
    let key = name.to_lowercase();
    let mut st = lock(&sh.st);
    st.calls
        .entry(key.clone())
        .or_default()
        .push(("unregister", Instant::now()));
    if st.regs.remove(&key).is_none() {
        return refuse(
            StatusCode::NOT_FOUND,
            "not_registered",
            &format!("{key} is not registered!"),
        );
    }
    Json(json!({"ok": true})).into_response()
}

async fn list(State(sh): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    if let Some(r) = gate(&sh, &headers, "list") {
        return r;
    }
    let st = lock(&sh.st);
    let servers: Vec<Value> = st
        .regs
        .values()
        .map(|r| json!({"server_name": r.server_name, "address": r.address, "port": r.port}))
        .collect();
    Json(json!({ "servers": servers })).into_response()
}

impl VelocitySim {
    /// A bridge whose shared secret is `secret`.
    pub fn start(secret: &str) -> VelocitySim {
        let shared = Arc::new(Shared {
            secret_hash: zlh::edge::velocity::secret_header_value(secret),
            st: Mutex::new(St::default()),
        });
        let app = Router::new()
            .route("/zpack/register", post(register))
            .route("/zpack/unregister", post(unregister))
            .route("/zpack/list", get(list))
            .with_state(shared.clone());
        VelocitySim {
            shared,
            server: SimServer::start(app),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Current registrations, by name.
    pub fn registrations(&self) -> Vec<SimRegistration> {
        lock(&self.shared.st).regs.values().cloned().collect()
    }

    /// A proxy restart: the plugin forgets every registration.
    pub fn restart(&self) {
        let mut st = lock(&self.shared.st);
        st.regs.clear();
        st.restarts += 1;
    }

    /// A registration made behind zlh's back (another controller, a stale plugin state).
    pub fn plant(&self, server_name: &str, address: &str, port: u16) {
        let key = server_name.to_lowercase();
        lock(&self.shared.st).regs.insert(
            key.clone(),
            SimRegistration {
                server_name: key,
                address: address.into(),
                port,
            },
        );
    }

    /// Down: every call answers 503 until `set_down(false)`.
    pub fn set_down(&self, down: bool) {
        lock(&self.shared.st).down = down;
    }

    /// The next `n` calls answer 500.
    pub fn fail_next(&self, n: usize) {
        lock(&self.shared.st).fail_next = n;
    }

    /// When each register/unregister naming `server_name` arrived.
    pub fn calls(&self, server_name: &str) -> Vec<(&'static str, Instant)> {
        lock(&self.shared.st)
            .calls
            .get(&server_name.to_lowercase())
            .cloned()
            .unwrap_or_default()
    }

    /// Calls of `op` (`register`, `unregister`, `list`), whatever their outcome.
    pub fn count(&self, op: &str) -> usize {
        lock(&self.shared.st).counters.get(op).copied().unwrap_or(0)
    }

    /// Calls refused for a missing or wrong secret.
    pub fn unauthorized(&self) -> usize {
        lock(&self.shared.st).unauthorized
    }
}
