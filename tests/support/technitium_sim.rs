//! A Technitium DNS Server API simulator (`reference/protocols.md` §6.1): HTTP 200
//! with a `status` for everything the API itself answers; `Authorization: Bearer` or
//! the legacy `token` parameter; GET (query) or POST (form). Zones and records live
//! in memory. Like the real server, deleting a record that does not exist answers
//! `status:ok` (its delete ignores "nothing removed"); a missing zone is an error.
//!
//! Faults: `set_down(true)` answers HTTP 503 to everything (what a DNS API host
//! behind a proxy, or one that is restarting, looks like to a client: transient);
//! `error_next(n, message)` answers `status:error` with `message` n times.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::{Form, Json, Router};
use serde_json::{Value, json};

use super::sim_http::{SimServer, lock};

#[derive(Debug, Clone, PartialEq)]
pub struct SimRecord {
    pub name: String,
    pub kind: String,
    pub ttl: u64,
    pub rdata: Value,
    pub comments: String,
}

#[derive(Default)]
struct St {
    zones: BTreeMap<String, Vec<SimRecord>>,
    down: bool,
    errors: VecDeque<String>,
    requests: HashMap<String, usize>,
}

struct Shared {
    token: String,
    st: Mutex<St>,
}

pub struct TechnitiumSim {
    shared: Arc<Shared>,
    server: SimServer,
}

type Params = HashMap<String, String>;

fn error(message: &str) -> Response {
    Json(json!({"status": "error", "errorMessage": message, "innerErrorMessage": null}))
        .into_response()
}

fn ok(response: Value) -> Response {
    Json(json!({"response": response, "server": "dns-sim", "status": "ok"})).into_response()
}

fn norm(s: &str) -> String {
    s.trim().trim_end_matches('.').to_ascii_lowercase()
}

/// The rData of `type` from the parameters, as Technitium shows it.
fn rdata(kind: &str, p: &Params) -> Result<Value, String> {
    let num = |k: &str| -> Result<u64, String> {
        p.get(k)
            .ok_or_else(|| format!("Parameter '{k}' missing."))?
            .parse::<u16>()
            .map(u64::from)
            .map_err(|e| format!("{k}: {e}"))
    };
    match kind {
        "A" => {
            let ip = p
                .get("ipAddress")
                .or_else(|| p.get("value"))
                .ok_or("Parameter 'ipAddress' missing.")?;
            let ip: std::net::Ipv4Addr = ip
                .parse()
                .map_err(|_| "An invalid IP address was specified.".to_string())?;
            Ok(json!({"ipAddress": ip.to_string()}))
        }
        "SRV" => Ok(json!({
            "priority": num("priority")?,
            "weight": num("weight")?,
            "port": num("port")?,
            "target": norm(p.get("target").ok_or("Parameter 'target' missing.")?),
        })),
        other => Err(format!(
            "Record type not supported by the simulator: {other}"
        )),
    }
}

/// The zone: the `zone` parameter, or the closest enclosing zone of `domain`.
fn find_zone(st: &St, p: &Params, domain: &str) -> Option<String> {
    if let Some(z) = p.get("zone") {
        let z = norm(z);
        return st.zones.contains_key(&z).then_some(z);
    }
    let mut d = domain;
    loop {
        if st.zones.contains_key(d) {
            return Some(d.to_string());
        }
        d = d.split_once('.')?.1;
    }
}

fn record_json(r: &SimRecord) -> Value {
    json!({"name": r.name, "type": r.kind, "ttl": r.ttl, "disabled": false,
        "rData": r.rdata, "comments": r.comments})
}

/// Token, down, injected errors; then the parameters `domain` and its zone.
#[allow(clippy::result_large_err)] // test code; the error is the answer itself
fn gate(
    sh: &Shared,
    headers: &HeaderMap,
    p: &Params,
    op: &str,
) -> Result<(String, String), Response> {
    let mut st = lock(&sh.st);
    *st.requests.entry(op.to_string()).or_default() += 1;
    if st.down {
        return Err((StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable").into_response());
    }
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = bearer.or(p.get("token").map(String::as_str));
    if token != Some(sh.token.as_str()) {
        return Err(Json(json!({"status": "invalid-token",
            "errorMessage": "Invalid token or session expired."}))
        .into_response());
    }
    if let Some(m) = st.errors.pop_front() {
        return Err(error(&m));
    }
    let Some(domain) = p.get("domain").map(|d| norm(d)) else {
        return Err(error("Parameter 'domain' missing."));
    };
    let Some(zone) = find_zone(&st, p, &domain) else {
        return Err(error(&format!(
            "No such authoritative zone was found: {domain}"
        )));
    };
    if domain != zone && !domain.ends_with(&format!(".{zone}")) {
        return Err(error(&format!(
            "The domain name {domain} does not belong to the zone {zone}"
        )));
    }
    Ok((domain, zone))
}

async fn add(State(sh): State<Arc<Shared>>, headers: HeaderMap, Form(p): Form<Params>) -> Response {
    let (domain, zone) = match gate(&sh, &headers, &p, "add") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let kind = p.get("type").cloned().unwrap_or_default().to_uppercase();
    let rdata = match rdata(&kind, &p) {
        Ok(r) => r,
        Err(m) => return error(&m),
    };
    let ttl = p.get("ttl").and_then(|t| t.parse().ok()).unwrap_or(3600);
    let overwrite = p.get("overwrite").map(String::as_str) == Some("true");
    let mut st = lock(&sh.st);
    let Some(records) = st.zones.get_mut(&zone) else {
        return error(&format!("No such authoritative zone was found: {domain}"));
    };
    if overwrite {
        records.retain(|r| !(r.name == domain && r.kind == kind));
    }
    let record = SimRecord {
        name: domain.clone(),
        kind: kind.clone(),
        ttl,
        rdata,
        comments: p.get("comments").cloned().unwrap_or_default(),
    };
    // An RRset is a set: the same value twice is one record.
    if !records
        .iter()
        .any(|r| r.name == domain && r.kind == kind && r.rdata == record.rdata)
    {
        records.push(record.clone());
    }
    ok(json!({"zone": {"name": zone, "type": "Primary"}, "addedRecord": record_json(&record)}))
}

async fn delete(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let (domain, zone) = match gate(&sh, &headers, &p, "delete") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let kind = p.get("type").cloned().unwrap_or_default().to_uppercase();
    let rdata = match rdata(&kind, &p) {
        Ok(r) => r,
        Err(m) => return error(&m),
    };
    let mut st = lock(&sh.st);
    if let Some(records) = st.zones.get_mut(&zone) {
        // Nothing removed is still `ok`, as in the real server.
        records.retain(|r| !(r.name == domain && r.kind == kind && r.rdata == rdata));
    }
    ok(json!({}))
}

async fn get_records(
    State(sh): State<Arc<Shared>>,
    headers: HeaderMap,
    Form(p): Form<Params>,
) -> Response {
    let (domain, zone) = match gate(&sh, &headers, &p, "get") {
        Ok(v) => v,
        Err(r) => return r,
    };
    let st = lock(&sh.st);
    let list_zone = p.get("listZone").map(String::as_str) == Some("true");
    let records: Vec<Value> = st
        .zones
        .get(&zone)
        .map(|rs| {
            rs.iter()
                .filter(|r| list_zone || r.name == domain)
                .map(record_json)
                .collect()
        })
        .unwrap_or_default();
    ok(json!({"zone": {"name": zone, "type": "Primary"}, "records": records}))
}

impl TechnitiumSim {
    /// A server with API token `token` and one primary zone, `zone`.
    pub fn start(token: &str, zone: &str) -> TechnitiumSim {
        let mut st = St::default();
        st.zones.insert(norm(zone), Vec::new());
        let shared = Arc::new(Shared {
            token: token.to_string(),
            st: Mutex::new(st),
        });
        let app = Router::new()
            .route("/api/zones/records/add", any(add))
            .route("/api/zones/records/delete", any(delete))
            .route("/api/zones/records/get", any(get_records))
            .with_state(shared.clone());
        TechnitiumSim {
            shared,
            server: SimServer::start(app),
        }
    }

    pub fn url(&self) -> String {
        self.server.url()
    }

    pub fn add_zone(&self, zone: &str) {
        lock(&self.shared.st).zones.entry(norm(zone)).or_default();
    }

    /// The records of `zone`.
    pub fn records(&self, zone: &str) -> Vec<SimRecord> {
        lock(&self.shared.st)
            .zones
            .get(&norm(zone))
            .cloned()
            .unwrap_or_default()
    }

    /// Puts a record in place directly (someone else's record, for exactness tests).
    pub fn insert(&self, zone: &str, name: &str, kind: &str, rdata: Value) {
        let mut st = lock(&self.shared.st);
        st.zones.entry(norm(zone)).or_default().push(SimRecord {
            name: norm(name),
            kind: kind.to_string(),
            ttl: 3600,
            rdata,
            comments: String::new(),
        });
    }

    /// Removes records by name and type behind the control plane's back (an operator
    /// cleaning up by hand): the next delete must count "already gone" as success.
    pub fn remove(&self, zone: &str, name: &str, kind: &str) -> usize {
        let mut st = lock(&self.shared.st);
        let Some(records) = st.zones.get_mut(&norm(zone)) else {
            return 0;
        };
        let before = records.len();
        records.retain(|r| !(r.name == norm(name) && r.kind == kind));
        before - records.len()
    }

    pub fn set_down(&self, down: bool) {
        lock(&self.shared.st).down = down;
    }

    /// The next `n` calls (with a valid token) answer `status:error` with `message`.
    pub fn error_next(&self, n: usize, message: &str) {
        let mut st = lock(&self.shared.st);
        st.errors = std::iter::repeat_n(message.to_string(), n).collect();
    }

    /// Calls of `op` (`add`, `delete`, `get`), whatever their outcome.
    pub fn requests(&self, op: &str) -> usize {
        lock(&self.shared.st).requests.get(op).copied().unwrap_or(0)
    }
}
