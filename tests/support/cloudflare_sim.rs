//! A Cloudflare v4 DNS records API simulator for one zone (`reference/protocols.md`
//! §6.2): the `{success, errors, messages, result}` envelope, 32-hex record ids,
//! `Authorization: Bearer` (403 code 10000 otherwise), a duplicate error (400, code
//! 81058) on the same name+type+content, 404 code 81044 for a missing record id, and
//! SRV records that take structured `data` with the full `_minecraft._tcp.<host>` in
//! `name` (the deprecated `data.service/proto/name` are refused).
//!
//! Faults: `set_down(true)` (503), `fail_next(n, status)` (e.g. 500 or 429).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::sim_http::{SimServer, lock};

#[derive(Default)]
struct St {
    records: BTreeMap<String, Value>,
    /// Every create body as received.
    creates: Vec<Value>,
    down: bool,
    fail_next: Vec<u16>,
    requests: HashMap<&'static str, usize>,
}

struct Shared {
    token: String,
    zone_id: String,
    st: Mutex<St>,
}

pub struct CloudflareSim {
    shared: Arc<Shared>,
    server: SimServer,
}

fn failure(status: StatusCode, code: i64, message: &str) -> Response {
    (
        status,
        Json(
            json!({"success": false, "errors": [{"code": code, "message": message}],
            "messages": [], "result": null}),
        ),
    )
        .into_response()
}

fn success(result: Value) -> Response {
    Json(json!({"success": true, "errors": [], "messages": [], "result": result})).into_response()
}

fn norm(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn gate(sh: &Shared, headers: &HeaderMap, zone_id: &str, op: &'static str) -> Option<Response> {
    let mut st = lock(&sh.st);
    *st.requests.entry(op).or_default() += 1;
    if st.down {
        return Some(failure(
            StatusCode::SERVICE_UNAVAILABLE,
            0,
            "Service Unavailable",
        ));
    }
    if !st.fail_next.is_empty() {
        let status = st.fail_next.remove(0);
        return Some(failure(
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            if status == 429 { 971 } else { 10002 },
            "injected failure",
        ));
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if bearer != Some(sh.token.as_str()) {
        return Some(failure(
            StatusCode::FORBIDDEN,
            10000,
            "Authentication error",
        ));
    }
    if zone_id != sh.zone_id {
        return Some(failure(
            StatusCode::BAD_REQUEST,
            7003,
            "Could not route to /zones/…, perhaps your object identifier is invalid?",
        ));
    }
    None
}

fn new_id() -> String {
    (0..32)
        .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
        .collect()
}

async fn create(
    State(sh): State<Arc<Shared>>,
    Path(zone_id): Path<String>,
    headers: HeaderMap,
    body: String,
) -> Response {
    if let Some(r) = gate(&sh, &headers, &zone_id, "create") {
        return r;
    }
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return failure(StatusCode::BAD_REQUEST, 9207, "Request body is invalid.");
    };
    lock(&sh.st).creates.push(v.clone());
    let kind = v["type"].as_str().unwrap_or_default().to_string();
    let name = norm(v["name"].as_str().unwrap_or_default());
    let ttl = v["ttl"].as_u64().unwrap_or(1);
    let (content, data, priority) = match kind.as_str() {
        "A" => {
            let Some(ip) = v["content"]
                .as_str()
                .and_then(|c| c.parse::<std::net::Ipv4Addr>().ok())
            else {
                return failure(
                    StatusCode::BAD_REQUEST,
                    9005,
                    "Content for A record must be a valid IPv4 address.",
                );
            };
            (ip.to_string(), Value::Null, None)
        }
        "SRV" => {
            let d = &v["data"];
            if !d["service"].is_null() || !d["proto"].is_null() || !d["name"].is_null() {
                return failure(
                    StatusCode::BAD_REQUEST,
                    9101,
                    "data.service, data.proto and data.name are no longer supported; put the full name in name",
                );
            }
            let (Some(p), Some(w), Some(port), Some(target)) = (
                d["priority"].as_u64(),
                d["weight"].as_u64(),
                d["port"].as_u64(),
                d["target"].as_str(),
            ) else {
                return failure(
                    StatusCode::BAD_REQUEST,
                    9101,
                    "SRV data requires priority, weight, port and target",
                );
            };
            if !name.starts_with("_minecraft._tcp.") && !name.starts_with('_') {
                return failure(
                    StatusCode::BAD_REQUEST,
                    9101,
                    "SRV name must start with _service._proto",
                );
            }
            let target = norm(target);
            (
                format!("{w} {port} {target}"),
                json!({"priority": p, "weight": w, "port": port, "target": target}),
                Some(p),
            )
        }
        other => {
            return failure(
                StatusCode::BAD_REQUEST,
                9000,
                &format!("unsupported type {other}"),
            );
        }
    };
    let mut st = lock(&sh.st);
    if st.records.values().any(|r| {
        r["name"] == json!(name) && r["type"] == json!(kind) && r["content"] == json!(content)
    }) {
        return failure(
            StatusCode::BAD_REQUEST,
            81058,
            "An identical record already exists.",
        );
    }
    let id = new_id();
    let mut record = json!({
        "id": id, "zone_id": sh.zone_id, "zone_name": "sim.example", "name": name,
        "type": kind, "content": content, "ttl": ttl,
        "proxiable": kind == "A", "proxied": v["proxied"].as_bool().unwrap_or(false),
        "comment": v["comment"], "created_on": "2024-06-01T00:00:00Z",
    });
    if !data.is_null() {
        record["data"] = data;
        record["priority"] = json!(priority);
    }
    st.records.insert(id, record.clone());
    success(record)
}

async fn find(
    State(sh): State<Arc<Shared>>,
    Path(zone_id): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&sh, &headers, &zone_id, "find") {
        return r;
    }
    let st = lock(&sh.st);
    let found: Vec<Value> = st
        .records
        .values()
        .filter(|r| q.get("type").is_none_or(|t| r["type"] == json!(t)))
        .filter(|r| q.get("name").is_none_or(|n| r["name"] == json!(norm(n))))
        .cloned()
        .collect();
    let count = found.len();
    Json(
        json!({"success": true, "errors": [], "messages": [], "result": found,
        "result_info": {"page": 1, "per_page": 100, "count": count, "total_count": count}}),
    )
    .into_response()
}

async fn get_one(
    State(sh): State<Arc<Shared>>,
    Path((zone_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&sh, &headers, &zone_id, "get") {
        return r;
    }
    match lock(&sh.st).records.get(&id) {
        Some(r) => success(r.clone()),
        None => failure(StatusCode::NOT_FOUND, 81044, "Record does not exist."),
    }
}

async fn delete_one(
    State(sh): State<Arc<Shared>>,
    Path((zone_id, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Response {
    if let Some(r) = gate(&sh, &headers, &zone_id, "delete") {
        return r;
    }
    match lock(&sh.st).records.remove(&id) {
        Some(_) => success(json!({ "id": id })),
        None => failure(StatusCode::NOT_FOUND, 81044, "Record does not exist."),
    }
}

impl CloudflareSim {
    /// One zone `zone_id`, API token `token`.
    pub fn start(token: &str, zone_id: &str) -> CloudflareSim {
        let shared = Arc::new(Shared {
            token: token.to_string(),
            zone_id: zone_id.to_string(),
            st: Mutex::new(St::default()),
        });
        let app = Router::new()
            .route(
                "/client/v4/zones/{zone_id}/dns_records",
                get(find).post(create),
            )
            .route(
                "/client/v4/zones/{zone_id}/dns_records/{id}",
                get(get_one).delete(delete_one),
            )
            .with_state(shared.clone());
        CloudflareSim {
            shared,
            server: SimServer::start(app),
        }
    }

    /// The API base, like `https://api.cloudflare.com/client/v4`.
    pub fn url(&self) -> String {
        format!("{}/client/v4", self.server.url())
    }

    /// Every record (as the API shows it).
    pub fn records(&self) -> Vec<Value> {
        lock(&self.shared.st).records.values().cloned().collect()
    }

    /// How many records are named `name`.
    pub fn count_named(&self, name: &str) -> usize {
        let name = json!(norm(name));
        lock(&self.shared.st)
            .records
            .values()
            .filter(|r| r["name"] == name)
            .count()
    }

    /// Every create body received, in order.
    pub fn create_bodies(&self) -> Vec<Value> {
        lock(&self.shared.st).creates.clone()
    }

    pub fn set_down(&self, down: bool) {
        lock(&self.shared.st).down = down;
    }

    /// The next `n` calls answer HTTP `status`.
    pub fn fail_next(&self, n: usize, status: u16) {
        lock(&self.shared.st).fail_next = vec![status; n];
    }

    /// Calls of `op` (`create`, `find`, `get`, `delete`), whatever their outcome.
    pub fn requests(&self, op: &str) -> usize {
        lock(&self.shared.st).requests.get(op).copied().unwrap_or(0)
    }
}
