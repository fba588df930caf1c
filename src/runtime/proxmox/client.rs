//! A hand-written async client for the dozen Proxmox VE LXC endpoints zlh uses
//! (`reference/protocols.md` §1.2).
//!
//! Wire facts it relies on:
//! - `Authorization: PVEAPIToken=<user>@<realm>!<tokenid>=<secret>`; no CSRF token is
//!   needed with API tokens.
//! - Bodies are form-encoded (with `Content-Type`), booleans as `0`/`1`; GET and DELETE
//!   parameters go in the query string.
//! - Success is `200 {"data": …}`. An error's message is in the HTTP **reason phrase**
//!   (PVE 8: `HTTP/1.1 500 CT is locked (disk)`); PVE 9 also puts it in the body's
//!   `message`; 400s carry per-field `errors`.
//! - Mutating calls return a UPID at once; errors found inside the forked worker only
//!   show as the task's `exitstatus`. [`PveClient::wait_task`] polls for it.
//!
//! The client makes single attempts; retrying is the caller's decision (the runtime
//! looks at the world again before retrying anything that changes it). Only task
//! polling rides out transient errors, because a blip while polling must not abandon
//! a task that keeps running on the node.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::Deserialize;
use serde_json::Value;

use super::tls::{self, Fingerprint};
use super::{ProxmoxConfig, ProxmoxConfigError};

/// Lines of the task log kept in a task failure.
const LOG_TAIL_LINES: u64 = 12;
/// First pause between task-status polls; doubles up to the client's `poll_max`.
const FIRST_POLL: Duration = Duration::from_millis(10);

/// What went wrong talking to the Proxmox API. Every variant names what was being done
/// (`what`) and carries PVE's own message.
#[derive(Debug, thiserror::Error)]
pub enum PveError {
    /// `CT is locked (<lock>)`: another operation holds the guest's config lock.
    #[error("{what}: {message}")]
    Locked {
        what: String,
        lock: String,
        message: String,
    },
    /// `can't lock file '…' - got timeout`: contention on the config flock.
    #[error("{what}: {message}")]
    LockTimeout { what: String, message: String },
    /// `CT 105 already exists on node 'pve1'`.
    #[error("{what}: {message}")]
    AlreadyExists { what: String, message: String },
    /// `Configuration file 'nodes/pve1/lxc/105.conf' does not exist`.
    #[error("{what}: {message}")]
    DoesNotExist { what: String, message: String },
    /// `CT 105 already running`.
    #[error("{what}: {message}")]
    AlreadyRunning { what: String, message: String },
    /// `CT 105 not running`.
    #[error("{what}: {message}")]
    NotRunning { what: String, message: String },
    /// 401: the token is wrong or unknown.
    #[error(
        "{what}: the Proxmox API refused the token (401 {message}); check token_id and token_secret"
    )]
    Auth { what: String, message: String },
    /// 403: the token lacks a privilege.
    #[error(
        "{what}: permission denied (403 {message}); the API token needs the privileges listed in docs/proxmox.md"
    )]
    Permission { what: String, message: String },
    /// 400: a parameter was refused; `errors` maps each parameter to its problem.
    #[error("{what}: {message}{}", fmt_fields(.errors))]
    Parameter {
        what: String,
        message: String,
        errors: BTreeMap<String, String>,
    },
    /// An error that will be the same on every try (e.g. `Linked clone feature … is
    /// not available`, or an endpoint this PVE version does not have).
    #[error("{what}: HTTP {status}: {message}")]
    Refused {
        what: String,
        status: u16,
        message: String,
    },
    /// Any other server error: worth another try later.
    #[error("{what}: HTTP {status}: {message}")]
    Server {
        what: String,
        status: u16,
        message: String,
    },
    /// No answer (connection refused, TLS refused, timeout, reset).
    #[error("{what}: cannot reach the Proxmox API: {reason}")]
    Network { what: String, reason: String },
    /// The task did not end within the deadline (it may still be running on the node).
    #[error("{what}: task {upid} still running after {after:?}{}", fmt_last(.last_error))]
    TaskTimeout {
        what: String,
        upid: String,
        after: Duration,
        last_error: Option<String>,
    },
    /// The task ended with an error `exitstatus` (the last lines of its log attached).
    #[error("{what}: task {upid} failed: {exitstatus}{}", fmt_log(.log_tail))]
    TaskFailed {
        what: String,
        upid: String,
        exitstatus: String,
        log_tail: Vec<String>,
    },
    /// An answer that does not have the documented shape.
    #[error("{what}: unexpected answer from the Proxmox API: {reason}")]
    Decode { what: String, reason: String },
}

fn fmt_fields(errors: &BTreeMap<String, String>) -> String {
    if errors.is_empty() {
        return String::new();
    }
    let parts: Vec<String> = errors
        .iter()
        .map(|(k, v)| format!("{k}: {}", v.trim()))
        .collect();
    format!(" ({})", parts.join("; "))
}

fn fmt_log(lines: &[String]) -> String {
    if lines.is_empty() {
        String::new()
    } else {
        format!("\n  task log (last lines):\n    {}", lines.join("\n    "))
    }
}

fn fmt_last(last: &Option<String>) -> String {
    match last {
        Some(e) => format!(" (last poll error: {e})"),
        None => String::new(),
    }
}

/// The kind of a failure, whether PVE reported it synchronously or as a task's
/// `exitstatus` (start and stop check locks inside the worker, so a lock shows up
/// either way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    Locked,
    LockTimeout,
    AlreadyExists,
    DoesNotExist,
    AlreadyRunning,
    NotRunning,
    Auth,
    Permission,
    Parameter,
    Refused,
    Server,
    Network,
    Timeout,
    /// A task failed for a reason none of the above describes.
    TaskFailed,
    Decode,
}

/// Recognises PVE's fixed error texts (`reference/protocols.md` §1.3).
fn classify(message: &str) -> Option<(Cause, Option<String>)> {
    let m = message.trim();
    for prefix in ["CT is locked (", "VM is locked ("] {
        if let Some(rest) = m.find(prefix).map(|i| &m[i + prefix.len()..]) {
            let lock = rest.split(')').next().unwrap_or_default().to_string();
            return Some((Cause::Locked, Some(lock)));
        }
    }
    if m.contains("can't lock file") && m.contains("got timeout") {
        return Some((Cause::LockTimeout, None));
    }
    if m.contains("Configuration file") && m.contains("does not exist") {
        return Some((Cause::DoesNotExist, None));
    }
    if m.contains("already exists") {
        return Some((Cause::AlreadyExists, None));
    }
    if m.contains("already running") {
        return Some((Cause::AlreadyRunning, None));
    }
    if m.ends_with(" not running") || m.contains(" not running ") {
        return Some((Cause::NotRunning, None));
    }
    // Deterministic refusals: trying again changes nothing.
    const REFUSALS: &[&str] = &[
        "Linked clone feature",
        "not allowed for linked clones",
        "only possible from a snapshot",
        "unable to clone mountpoint",
        "can't clone to non-shared storage",
        "protection mode enabled",
        "used in HA resources",
        "container is running",
        "not implemented",
    ];
    if REFUSALS.iter().any(|r| m.contains(r)) {
        return Some((Cause::Refused, None));
    }
    None
}

impl PveError {
    pub fn cause(&self) -> Cause {
        match self {
            PveError::Locked { .. } => Cause::Locked,
            PveError::LockTimeout { .. } => Cause::LockTimeout,
            PveError::AlreadyExists { .. } => Cause::AlreadyExists,
            PveError::DoesNotExist { .. } => Cause::DoesNotExist,
            PveError::AlreadyRunning { .. } => Cause::AlreadyRunning,
            PveError::NotRunning { .. } => Cause::NotRunning,
            PveError::Auth { .. } => Cause::Auth,
            PveError::Permission { .. } => Cause::Permission,
            PveError::Parameter { .. } => Cause::Parameter,
            PveError::Refused { .. } => Cause::Refused,
            PveError::Server { .. } => Cause::Server,
            PveError::Network { .. } => Cause::Network,
            PveError::TaskTimeout { .. } => Cause::Timeout,
            PveError::TaskFailed { exitstatus, .. } => match classify(exitstatus) {
                Some((Cause::Refused, _)) | None => Cause::TaskFailed,
                Some((cause, _)) => cause,
            },
            PveError::Decode { .. } => Cause::Decode,
        }
    }

    /// Whether the same call may succeed later without anyone changing anything:
    /// locks, flock contention, network trouble, non-deterministic 5xx, deadlines.
    pub fn is_transient(&self) -> bool {
        matches!(
            self.cause(),
            Cause::Locked | Cause::LockTimeout | Cause::Server | Cause::Network | Cause::Timeout
        )
    }

    /// PVE's message (or the reason), without the context.
    pub fn message(&self) -> &str {
        match self {
            PveError::Locked { message, .. }
            | PveError::LockTimeout { message, .. }
            | PveError::AlreadyExists { message, .. }
            | PveError::DoesNotExist { message, .. }
            | PveError::AlreadyRunning { message, .. }
            | PveError::NotRunning { message, .. }
            | PveError::Auth { message, .. }
            | PveError::Permission { message, .. }
            | PveError::Parameter { message, .. }
            | PveError::Refused { message, .. }
            | PveError::Server { message, .. } => message,
            PveError::Network { reason, .. } | PveError::Decode { reason, .. } => reason,
            PveError::TaskFailed { exitstatus, .. } => exitstatus,
            PveError::TaskTimeout { upid, .. } => upid,
        }
    }

    /// Builds the error for a non-2xx answer: the message comes from the reason phrase
    /// (PVE 8), else the body's `message` (PVE 9), else the status' canonical reason.
    fn from_response(what: &str, status: StatusCode, reason: Option<&str>, body: &[u8]) -> Self {
        let json: Option<Value> = serde_json::from_slice(body).ok();
        let body_message = json
            .as_ref()
            .and_then(|v| v.get("message"))
            .and_then(Value::as_str)
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        let message = reason
            .map(|r| r.trim().to_string())
            .filter(|r| !r.is_empty())
            .or(body_message)
            .unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_string());
        let what = what.to_string();
        match status {
            StatusCode::UNAUTHORIZED => return PveError::Auth { what, message },
            StatusCode::FORBIDDEN => return PveError::Permission { what, message },
            StatusCode::BAD_REQUEST => {
                let errors = json
                    .as_ref()
                    .and_then(|v| v.get("errors"))
                    .and_then(Value::as_object)
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| {
                                let text = v
                                    .as_str()
                                    .map(str::to_string)
                                    .unwrap_or_else(|| v.to_string());
                                (k.clone(), text.trim().to_string())
                            })
                            .collect()
                    })
                    .unwrap_or_default();
                return PveError::Parameter {
                    what,
                    message,
                    errors,
                };
            }
            _ => {}
        }
        let code = status.as_u16();
        match classify(&message) {
            Some((Cause::Locked, lock)) => PveError::Locked {
                what,
                lock: lock.unwrap_or_default(),
                message,
            },
            Some((Cause::LockTimeout, _)) => PveError::LockTimeout { what, message },
            Some((Cause::AlreadyExists, _)) => PveError::AlreadyExists { what, message },
            Some((Cause::DoesNotExist, _)) => PveError::DoesNotExist { what, message },
            Some((Cause::AlreadyRunning, _)) => PveError::AlreadyRunning { what, message },
            Some((Cause::NotRunning, _)) => PveError::NotRunning { what, message },
            Some(_) => PveError::Refused {
                what,
                status: code,
                message,
            },
            // 501 is "method not implemented" (e.g. /interfaces before PVE 8.0), and
            // other 4xx are requests this client got wrong: neither heals by retrying.
            None if status == StatusCode::NOT_IMPLEMENTED || status.is_client_error() => {
                PveError::Refused {
                    what,
                    status: code,
                    message,
                }
            }
            None => PveError::Server {
                what,
                status: code,
                message,
            },
        }
    }
}

/// A task id: `UPID:node:pid:pstart:starttime:type:id:user:` (note the trailing colon).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Upid {
    raw: String,
    node: String,
    kind: String,
    id: String,
}

impl Upid {
    /// Parses a UPID as `PVE::UPID::decode` does.
    pub fn parse(text: &str) -> Result<Upid, String> {
        let bad = || format!("'{text}' is not a UPID");
        let rest = text.strip_prefix("UPID:").ok_or_else(bad)?;
        let rest = rest.strip_suffix(':').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let [node, pid, pstart, starttime, kind, id, user] = parts.as_slice() else {
            return Err(bad());
        };
        let hex = |s: &str, lens: &[usize]| {
            lens.contains(&s.len()) && s.chars().all(|c| c.is_ascii_hexdigit())
        };
        let node_ok = !node.is_empty()
            && node.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !node.starts_with('-')
            && !node.ends_with('-');
        let field_ok = |s: &str| !s.contains(['/', ' ', '\t', '\n']);
        if !node_ok
            || !hex(pid, &[8])
            || !hex(pstart, &[8, 9])
            || !hex(starttime, &[8])
            || kind.is_empty()
            || !field_ok(kind)
            || !field_ok(id)
            || user.is_empty()
            || !field_ok(user)
        {
            return Err(bad());
        }
        Ok(Upid {
            raw: text.to_string(),
            node: node.to_string(),
            kind: kind.to_string(),
            id: id.to_string(),
        })
    }

    pub fn as_str(&self) -> &str {
        &self.raw
    }
    /// The node the task runs on (its status lives there).
    pub fn node(&self) -> &str {
        &self.node
    }
    /// The task type (`vzclone`, `vzstart`, …).
    pub fn kind(&self) -> &str {
        &self.kind
    }
    pub fn id(&self) -> &str {
        &self.id
    }
}

impl std::fmt::Display for Upid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Percent-encodes one path segment: everything but RFC 3986 unreserved characters, so
/// a UPID's `:`, `!` and `@` travel encoded as PVE expects.
pub fn encode_segment(s: &str) -> String {
    crate::util::percent_encode(s, b"")
}

/// Splits PVE's tag list (stored `;`-separated; `,` and spaces are accepted on input).
pub fn split_tags(tags: &str) -> Vec<String> {
    tags.split([';', ',', ' '])
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string)
        .collect()
}

/// A container's configuration (`GET …/config`): the raw key/value map, with accessors
/// for what zlh reads.
#[derive(Debug, Clone, PartialEq)]
pub struct CtConfig {
    pub values: serde_json::Map<String, Value>,
}

impl CtConfig {
    fn str(&self, key: &str) -> Option<String> {
        match self.values.get(key)? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    }
    pub fn description(&self) -> Option<String> {
        // PVE stores the description as comment lines and may hand it back with a
        // trailing newline.
        self.str("description").map(|d| d.trim_end().to_string())
    }
    pub fn tags(&self) -> Vec<String> {
        self.str("tags").map(|t| split_tags(&t)).unwrap_or_default()
    }
    pub fn lock(&self) -> Option<String> {
        self.str("lock").filter(|l| !l.is_empty())
    }
    pub fn digest(&self) -> Option<String> {
        self.str("digest")
    }
    pub fn hostname(&self) -> Option<String> {
        self.str("hostname")
    }
    pub fn get(&self, key: &str) -> Option<String> {
        self.str(key)
    }
    /// The `hwaddr=` of a `netN` value, so reconfiguring keeps the container's MAC
    /// (PVE makes up a new one when `hwaddr` is missing, and DHCP a new address).
    pub fn net_hwaddr(&self, net: &str) -> Option<String> {
        self.str(net)?.split(',').find_map(|kv| {
            kv.strip_prefix("hwaddr=")
                .filter(|m| !m.is_empty())
                .map(str::to_string)
        })
    }
}

/// `GET …/status/current`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CtStatus {
    /// `running` or `stopped`.
    pub status: String,
    #[serde(default)]
    pub lock: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub uptime: Option<u64>,
}

impl CtStatus {
    pub fn running(&self) -> bool {
        self.status == "running"
    }
}

/// One row of `GET /nodes/{node}/lxc`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct CtListEntry {
    #[serde(deserialize_with = "int_or_string")]
    pub vmid: i64,
    pub status: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub tags: Option<String>,
    #[serde(default)]
    pub lock: Option<String>,
}

impl CtListEntry {
    pub fn tags(&self) -> Vec<String> {
        self.tags.as_deref().map(split_tags).unwrap_or_default()
    }
}

/// PVE serialises some integers as strings depending on version and endpoint.
fn int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    match Value::deserialize(d)? {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| serde::de::Error::custom(format!("{n} is not an integer"))),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| serde::de::Error::custom(format!("'{s}' is not an integer"))),
        other => Err(serde::de::Error::custom(format!(
            "expected an integer, got {other}"
        ))),
    }
}

/// One interface of `GET …/interfaces`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Interface {
    pub name: String,
    /// `10.0.0.5/24`.
    #[serde(default)]
    pub inet: Option<String>,
    #[serde(default, rename = "ip-addresses")]
    pub ip_addresses: Vec<IpAddress>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct IpAddress {
    #[serde(rename = "ip-address-type")]
    pub kind: String,
    #[serde(rename = "ip-address")]
    pub address: String,
}

impl Interface {
    /// The interface's IPv4 address, from `ip-addresses` or else `inet`.
    pub fn ipv4(&self) -> Option<Ipv4Addr> {
        self.ip_addresses
            .iter()
            .filter(|a| a.kind == "inet")
            .find_map(|a| a.address.parse().ok())
            .or_else(|| {
                self.inet
                    .as_deref()
                    .and_then(|i| i.split('/').next())
                    .and_then(|a| a.parse().ok())
            })
    }
}

/// `GET /nodes/{node}/tasks/{upid}/status`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct TaskStatus {
    /// `running` or `stopped`.
    pub status: String,
    #[serde(default)]
    pub exitstatus: Option<String>,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
}

impl TaskStatus {
    pub fn finished(&self) -> bool {
        self.status == "stopped"
    }
}

/// Whether an `exitstatus` means success (`PVE::UPID::status_is_error`).
pub fn exitstatus_ok(exitstatus: &str) -> bool {
    exitstatus == "OK" || exitstatus.starts_with("WARNINGS")
}

/// `POST /nodes/{node}/lxc/{template}/clone` parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CloneParams {
    pub newid: i64,
    pub hostname: String,
    pub description: String,
    /// Full copy instead of a linked clone of a template.
    pub full: bool,
    /// Target storage (full clones only; PVE refuses it for linked clones).
    pub storage: Option<String>,
}

/// `POST /nodes/{node}/vzdump` parameters (one container).
#[derive(Debug, Clone, PartialEq)]
pub struct VzdumpParams {
    pub vmid: i64,
    /// The backup storage (e.g. a PBS storage).
    pub storage: String,
    /// `snapshot`, `suspend` or `stop`.
    pub mode: String,
    /// `notes-template`: the note on the backup (`{{guestname}}`, `{{vmid}}` expand).
    pub notes: String,
}

/// `POST /nodes/{node}/lxc` parameters of a restore.
#[derive(Debug, Clone, PartialEq)]
pub struct RestoreParams {
    pub vmid: i64,
    /// The backup's volume id (`pbs:backup/ct/105/2026-01-02T03:04:05Z`).
    pub volid: String,
    /// Target storage of the restored disks (default: where they were).
    pub storage: Option<String>,
    pub force: bool,
    pub unique: bool,
    /// Config keys set on the restored container over the backup's own (PVE applies
    /// them in the same task): `hostname`, `description`, `tags`.
    pub overrides: Vec<(&'static str, String)>,
}

/// One entry of a storage's content listing.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StorageEntry {
    pub volid: String,
    #[serde(default)]
    pub ctime: Option<i64>,
    #[serde(default)]
    pub size: Option<i64>,
    #[serde(default)]
    pub notes: Option<String>,
    #[serde(default, deserialize_with = "opt_int_or_string")]
    pub vmid: Option<i64>,
}

fn opt_int_or_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(None),
        Some(v) => int_or_string(v).map(Some).map_err(serde::de::Error::custom),
    }
}

/// An async client for one PVE node's API.
#[derive(Clone)]
pub struct PveClient {
    http: reqwest::Client,
    /// `https://IP:8006/api2/json`
    base: String,
    auth: HeaderValue,
    node: String,
    poll_max: Duration,
}

impl std::fmt::Debug for PveClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The authorization header holds the token secret: never print it.
        f.debug_struct("PveClient")
            .field("base", &self.base)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl PveClient {
    /// A client for the node in `cfg` (validated first).
    pub fn new(cfg: &ProxmoxConfig) -> Result<PveClient, ProxmoxConfigError> {
        let url = cfg.validate()?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // PVE holds config flocks for up to 10 s before answering.
            .timeout(Duration::from_secs(30))
            // Control plane by IP: never detour through an environment proxy.
            .no_proxy();
        if url.scheme() == "http" {
            tracing::warn!(
                api_url = %cfg.api_url,
                node = %cfg.node,
                "Proxmox API over plain HTTP: the token travels unencrypted (fine for a \
                 simulator on loopback, not for a real node)"
            );
        }
        if let Some(fp) = cfg.tls_fingerprint.as_deref() {
            let pin = Fingerprint::parse(fp).map_err(|message| ProxmoxConfigError {
                field: "tls_fingerprint",
                message,
            })?;
            let tls = tls::pinned_client_config(pin).map_err(|e| ProxmoxConfigError {
                field: "tls_fingerprint",
                message: format!("building the pinned TLS configuration: {e}"),
            })?;
            builder = builder.use_preconfigured_tls(tls);
        }
        let http = builder.build().map_err(|e| ProxmoxConfigError {
            field: "api_url",
            message: format!("building the HTTP client: {e}"),
        })?;
        let mut auth = HeaderValue::from_str(&format!(
            "PVEAPIToken={}={}",
            cfg.token_id, cfg.token_secret
        ))
        .map_err(|_| ProxmoxConfigError {
            field: "token_secret",
            message: "the token id or secret contains characters not allowed in an \
                              HTTP header"
                .into(),
        })?;
        auth.set_sensitive(true);
        let base = format!("{}/api2/json", url.as_str().trim_end_matches('/'));
        Ok(PveClient {
            http,
            base,
            auth,
            node: cfg.node.clone(),
            poll_max: Duration::from_millis(cfg.task_poll_max_ms.max(1)),
        })
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn ct_path(&self, vmid: i64) -> String {
        format!("/nodes/{}/lxc/{vmid}", encode_segment(&self.node))
    }

    /// One request; returns the whole JSON body of a 2xx answer.
    async fn call(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        what: &str,
    ) -> Result<Value, PveError> {
        let url = format!("{}{path}", self.base);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(AUTHORIZATION, self.auth.clone());
        if !params.is_empty() {
            req = if method == Method::GET || method == Method::DELETE {
                req.query(params)
            } else {
                req.form(params)
            };
        } else if method == Method::POST || method == Method::PUT {
            // An empty form still says what it is; PVE's parser wants a content type.
            req = req.form(&[] as &[(&str, &str)]);
        }
        let resp = req.send().await.map_err(|e| PveError::Network {
            what: what.to_string(),
            reason: describe_reqwest_error(&e),
        })?;
        let status = resp.status();
        let reason = resp
            .extensions()
            .get::<hyper::ext::ReasonPhrase>()
            .map(|r| String::from_utf8_lossy(r.as_bytes()).into_owned());
        let body = resp.bytes().await.map_err(|e| PveError::Network {
            what: what.to_string(),
            reason: format!("reading the answer: {}", describe_reqwest_error(&e)),
        })?;
        if !status.is_success() {
            return Err(PveError::from_response(
                what,
                status,
                reason.as_deref(),
                &body,
            ));
        }
        serde_json::from_slice(&body).map_err(|e| PveError::Decode {
            what: what.to_string(),
            reason: format!("HTTP {status} with a body that is not JSON: {e}"),
        })
    }

    /// `call` and take `data` out of the envelope as a `T`.
    async fn data<T: serde::de::DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        what: &str,
    ) -> Result<T, PveError> {
        let mut body = self.call(method, path, params, what).await?;
        let data = body.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        serde_json::from_value(data).map_err(|e| PveError::Decode {
            what: what.to_string(),
            reason: format!("`data` does not have the expected shape: {e}"),
        })
    }

    async fn upid(
        &self,
        method: Method,
        path: &str,
        params: &[(&str, String)],
        what: &str,
    ) -> Result<Upid, PveError> {
        let raw: String = self.data(method, path, params, what).await?;
        Upid::parse(&raw).map_err(|reason| PveError::Decode {
            what: what.to_string(),
            reason,
        })
    }

    /// `GET /cluster/nextid`: the lowest free VMID. PVE answers with a JSON *string*.
    /// It does not reserve the id: zlh allocates VMIDs itself and only uses this to ask.
    pub async fn next_id(&self) -> Result<i64, PveError> {
        self.next_id_inner(None).await
    }

    /// `GET /cluster/nextid?vmid=N`: `Ok(N)` if N is free, else a `Parameter` error
    /// (`errors.vmid = "VM N already exists"`).
    pub async fn check_id_free(&self, vmid: i64) -> Result<i64, PveError> {
        self.next_id_inner(Some(vmid)).await
    }

    async fn next_id_inner(&self, vmid: Option<i64>) -> Result<i64, PveError> {
        let what = "asking for the next free VMID";
        let params: Vec<(&str, String)> =
            vmid.map(|v| ("vmid", v.to_string())).into_iter().collect();
        let v: Value = self
            .data(Method::GET, "/cluster/nextid", &params, what)
            .await?;
        match &v {
            Value::String(s) => s.trim().parse().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        }
        .ok_or_else(|| PveError::Decode {
            what: what.to_string(),
            reason: format!("expected a VMID, got {v}"),
        })
    }

    /// `POST /nodes/{node}/lxc/{template}/clone` → the `vzclone` task.
    pub async fn clone_ct(&self, template: i64, p: &CloneParams) -> Result<Upid, PveError> {
        let what = format!("cloning CT {template} to {} on node {}", p.newid, self.node);
        let mut params = vec![
            ("newid", p.newid.to_string()),
            ("hostname", p.hostname.clone()),
            ("description", p.description.clone()),
            ("full", bool01(p.full)),
        ];
        if p.full
            && let Some(s) = &p.storage
        {
            params.push(("storage", s.clone()));
        }
        self.upid(
            Method::POST,
            &format!("{}/clone", self.ct_path(template)),
            &params,
            &what,
        )
        .await
    }

    /// `GET …/config`.
    pub async fn config(&self, vmid: i64) -> Result<CtConfig, PveError> {
        let what = format!("reading the config of CT {vmid} on node {}", self.node);
        let values: serde_json::Map<String, Value> = self
            .data(
                Method::GET,
                &format!("{}/config", self.ct_path(vmid)),
                &[],
                &what,
            )
            .await?;
        Ok(CtConfig { values })
    }

    /// `PUT …/config` (synchronous in PVE).
    pub async fn update_config(
        &self,
        vmid: i64,
        params: &[(&str, String)],
    ) -> Result<(), PveError> {
        let what = format!("updating the config of CT {vmid} on node {}", self.node);
        self.call(
            Method::PUT,
            &format!("{}/config", self.ct_path(vmid)),
            params,
            &what,
        )
        .await
        .map(|_| ())
    }

    /// `GET …/status/current`.
    pub async fn status(&self, vmid: i64) -> Result<CtStatus, PveError> {
        let what = format!("reading the status of CT {vmid} on node {}", self.node);
        self.data(
            Method::GET,
            &format!("{}/status/current", self.ct_path(vmid)),
            &[],
            &what,
        )
        .await
    }

    /// `POST …/status/start` → the `vzstart` task.
    pub async fn start(&self, vmid: i64) -> Result<Upid, PveError> {
        let what = format!("starting CT {vmid} on node {}", self.node);
        self.upid(
            Method::POST,
            &format!("{}/status/start", self.ct_path(vmid)),
            &[],
            &what,
        )
        .await
    }

    /// `POST …/status/stop` (hard stop) → the `vzstop` task.
    pub async fn stop(&self, vmid: i64) -> Result<Upid, PveError> {
        let what = format!("stopping CT {vmid} on node {}", self.node);
        self.upid(
            Method::POST,
            &format!("{}/status/stop", self.ct_path(vmid)),
            &[],
            &what,
        )
        .await
    }

    /// `POST …/status/shutdown` (clean, `forceStop` after `timeout`) → `vzshutdown`.
    pub async fn shutdown(
        &self,
        vmid: i64,
        timeout: Duration,
        force_stop: bool,
    ) -> Result<Upid, PveError> {
        let what = format!("shutting down CT {vmid} on node {}", self.node);
        let params = [
            ("timeout", timeout.as_secs().max(1).to_string()),
            ("forceStop", bool01(force_stop)),
        ];
        self.upid(
            Method::POST,
            &format!("{}/status/shutdown", self.ct_path(vmid)),
            &params,
            &what,
        )
        .await
    }

    /// `DELETE /nodes/{node}/lxc/{vmid}` → the `vzdestroy` task.
    pub async fn delete(&self, vmid: i64, purge: bool, force: bool) -> Result<Upid, PveError> {
        let what = format!("destroying CT {vmid} on node {}", self.node);
        let params = [("purge", bool01(purge)), ("force", bool01(force))];
        self.upid(Method::DELETE, &self.ct_path(vmid), &params, &what)
            .await
    }

    /// `GET …/interfaces`: `None` while the container is stopped.
    pub async fn interfaces(&self, vmid: i64) -> Result<Option<Vec<Interface>>, PveError> {
        let what = format!("reading the interfaces of CT {vmid} on node {}", self.node);
        self.data(
            Method::GET,
            &format!("{}/interfaces", self.ct_path(vmid)),
            &[],
            &what,
        )
        .await
    }

    /// `GET /nodes/{node}/lxc`.
    pub async fn list(&self) -> Result<Vec<CtListEntry>, PveError> {
        let what = format!("listing containers on node {}", self.node);
        self.data(
            Method::GET,
            &format!("/nodes/{}/lxc", encode_segment(&self.node)),
            &[],
            &what,
        )
        .await
    }

    /// `POST /nodes/{node}/vzdump` for one container → the `vzdump` task. `remove=0`:
    /// zlh's retention decides what is pruned, not the storage's prune settings.
    pub async fn vzdump(&self, p: &VzdumpParams) -> Result<Upid, PveError> {
        let what = format!(
            "backing up CT {} to storage {} on node {}",
            p.vmid, p.storage, self.node
        );
        let params = [
            ("vmid", p.vmid.to_string()),
            ("storage", p.storage.clone()),
            ("mode", p.mode.clone()),
            ("notes-template", p.notes.clone()),
            ("remove", bool01(false)),
        ];
        self.upid(
            Method::POST,
            &format!("/nodes/{}/vzdump", encode_segment(&self.node)),
            &params,
            &what,
        )
        .await
    }

    /// `GET /nodes/{node}/storage/{storage}/content?content=backup&vmid=N`.
    pub async fn backup_content(
        &self,
        storage: &str,
        vmid: i64,
    ) -> Result<Vec<StorageEntry>, PveError> {
        let what = format!(
            "listing the backups of CT {vmid} on storage {storage} of node {}",
            self.node
        );
        let params = [
            ("content", "backup".to_string()),
            ("vmid", vmid.to_string()),
        ];
        self.data(
            Method::GET,
            &format!(
                "/nodes/{}/storage/{}/content",
                encode_segment(&self.node),
                encode_segment(storage)
            ),
            &params,
            &what,
        )
        .await
    }

    /// `POST /nodes/{node}/lxc` with `ostemplate=<backup volid>`, `restore=1` → the
    /// `vzrestore` task. `force` overwrites an existing (stopped) container.
    pub async fn restore_ct(&self, p: &RestoreParams) -> Result<Upid, PveError> {
        let what = format!(
            "restoring CT {} from {} on node {}",
            p.vmid, p.volid, self.node
        );
        let mut params = vec![
            ("vmid", p.vmid.to_string()),
            ("ostemplate", p.volid.clone()),
            ("restore", bool01(true)),
            ("force", bool01(p.force)),
            ("unique", bool01(p.unique)),
        ];
        if let Some(s) = &p.storage {
            params.push(("storage", s.clone()));
        }
        params.extend(p.overrides.iter().cloned());
        self.upid(
            Method::POST,
            &format!("/nodes/{}/lxc", encode_segment(&self.node)),
            &params,
            &what,
        )
        .await
    }

    /// `DELETE /nodes/{node}/storage/{storage}/content/{volid}`: a task on current PVE
    /// (`imgdel`), nothing on older ones.
    pub async fn delete_volume(
        &self,
        storage: &str,
        volid: &str,
    ) -> Result<Option<Upid>, PveError> {
        let what = format!("deleting {volid} on node {}", self.node);
        let v: Value = self
            .data(
                Method::DELETE,
                &format!(
                    "/nodes/{}/storage/{}/content/{}",
                    encode_segment(&self.node),
                    encode_segment(storage),
                    encode_segment(volid)
                ),
                &[],
                &what,
            )
            .await?;
        match v {
            Value::String(s) => Upid::parse(&s)
                .map(Some)
                .map_err(|reason| PveError::Decode { what, reason }),
            _ => Ok(None),
        }
    }

    fn task_path(upid: &Upid, leaf: &str) -> String {
        format!(
            "/nodes/{}/tasks/{}/{leaf}",
            encode_segment(upid.node()),
            encode_segment(upid.as_str())
        )
    }

    /// `GET /nodes/{node}/tasks/{upid}/status`.
    pub async fn task_status(&self, upid: &Upid) -> Result<TaskStatus, PveError> {
        let what = format!("reading the status of task {upid}");
        self.data(Method::GET, &Self::task_path(upid, "status"), &[], &what)
            .await
    }

    /// `GET /nodes/{node}/tasks/{upid}/log?start=&limit=`: lines and the total count.
    pub async fn task_log(
        &self,
        upid: &Upid,
        start: u64,
        limit: u64,
    ) -> Result<(Vec<String>, Option<u64>), PveError> {
        #[derive(Deserialize)]
        struct Line {
            #[serde(default)]
            t: String,
        }
        let what = format!("reading the log of task {upid}");
        let params = [("start", start.to_string()), ("limit", limit.to_string())];
        let mut body = self
            .call(Method::GET, &Self::task_path(upid, "log"), &params, &what)
            .await?;
        let total = body.get("total").and_then(Value::as_u64);
        let data = body.get_mut("data").map(Value::take).unwrap_or(Value::Null);
        let lines: Vec<Line> = serde_json::from_value(data).map_err(|e| PveError::Decode {
            what: what.clone(),
            reason: format!("task log lines: {e}"),
        })?;
        Ok((lines.into_iter().map(|l| l.t).collect(), total))
    }

    /// The last lines of a task's log (best effort: empty when it cannot be read).
    async fn log_tail(&self, upid: &Upid) -> Vec<String> {
        let Ok((first, total)) = self.task_log(upid, 0, 50).await else {
            return Vec::new();
        };
        let lines = match total {
            Some(total) if total > first.len() as u64 => {
                let start = total.saturating_sub(LOG_TAIL_LINES);
                match self.task_log(upid, start, LOG_TAIL_LINES).await {
                    Ok((lines, _)) => lines,
                    Err(_) => first,
                }
            }
            _ => first,
        };
        let skip = lines.len().saturating_sub(LOG_TAIL_LINES as usize);
        lines.into_iter().skip(skip).collect()
    }

    /// Polls a task until it has stopped, with backoff, for at most `timeout`.
    /// `OK` and `WARNINGS: n` are success (the exit status is returned); any other exit
    /// status is [`PveError::TaskFailed`] with the last lines of the task log.
    /// Transient errors while polling are ridden out until the deadline.
    pub async fn wait_task(
        &self,
        upid: &Upid,
        timeout: Duration,
        what: &str,
    ) -> Result<String, PveError> {
        let deadline = Instant::now() + timeout;
        let mut pause = FIRST_POLL.min(self.poll_max);
        let mut last_error: Option<String>;
        loop {
            match self.task_status(upid).await {
                Ok(s) if s.finished() => {
                    let exitstatus = s.exitstatus.unwrap_or_default();
                    if exitstatus_ok(&exitstatus) {
                        return Ok(exitstatus);
                    }
                    let log_tail = self.log_tail(upid).await;
                    return Err(PveError::TaskFailed {
                        what: what.to_string(),
                        upid: upid.to_string(),
                        exitstatus: if exitstatus.is_empty() {
                            "unknown exit status".into()
                        } else {
                            exitstatus
                        },
                        log_tail,
                    });
                }
                Ok(_) => last_error = None,
                Err(e) if e.is_transient() => last_error = Some(e.to_string()),
                Err(e) => return Err(e),
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(PveError::TaskTimeout {
                    what: what.to_string(),
                    upid: upid.to_string(),
                    after: timeout,
                    last_error,
                });
            }
            tokio::time::sleep(pause.min(deadline - now)).await;
            pause = (pause * 2).min(self.poll_max);
        }
    }
}

fn bool01(b: bool) -> String {
    if b { "1" } else { "0" }.to_string()
}

/// The rustls error inside `e`, looking through the io::Errors that wrap it (their
/// `source` skips the wrapped error, so the ordinary chain never shows it).
fn find_tls_error<'a>(mut e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    for _ in 0..8 {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        e = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
    None
}

/// A reqwest error with its causes (TLS refusals hide in the source chain), without
/// anything from the request's headers.
fn describe_reqwest_error(e: &reqwest::Error) -> String {
    let mut text = if e.is_timeout() {
        "timed out".to_string()
    } else if e.is_connect() {
        "connection failed".to_string()
    } else {
        "request failed".to_string()
    };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        // rustls shows a custom certificate error with Debug formatting; say it plainly.
        let tls = find_tls_error(s);
        let s_text = match tls {
            Some(rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other))) => {
                format!("invalid peer certificate: {other}")
            }
            _ => s.to_string(),
        };
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_upids() {
        let raw = "UPID:pve1:0002A1B3:01C4D5E6:66A1B2C3:vzclone:100:root@pam!ctl:";
        let u = Upid::parse(raw).unwrap();
        assert_eq!(
            (u.node(), u.kind(), u.id(), u.as_str()),
            ("pve1", "vzclone", "100", raw)
        );
        // pstart may have 9 digits; id may be empty.
        assert!(Upid::parse("UPID:n-1:0002A1B3:101C4D5E6:66A1B2C3:vzdump::root@pam:").is_ok());
        for bad in [
            "UPID:pve1:0002A1B3:01C4D5E6:66A1B2C3:vzclone:100:root@pam!ctl",
            "pve1:0002A1B3:01C4D5E6:66A1B2C3:vzclone:100:root@pam!ctl:",
            "UPID:pve1:2A1B3:01C4D5E6:66A1B2C3:vzclone:100:root@pam:",
            "UPID:-pve:0002A1B3:01C4D5E6:66A1B2C3:vzclone:100:root@pam:",
            "UPID:pve1:0002A1B3:01C4D5E6:66A1B2C3:vz/clone:100:root@pam:",
        ] {
            assert!(Upid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn encodes_upids_for_paths() {
        assert_eq!(
            encode_segment("UPID:pve1:00:vzstart:5001:root@pam!zlh:"),
            "UPID%3Apve1%3A00%3Avzstart%3A5001%3Aroot%40pam%21zlh%3A"
        );
    }

    #[test]
    fn classifies_pve_messages() {
        let cases = [
            ("CT is locked (disk)", Cause::Locked),
            ("VM is locked (backup)", Cause::Locked),
            (
                "can't lock file '/run/lock/lxc/pve-config-105.lock' - got timeout",
                Cause::LockTimeout,
            ),
            ("CT 105 already exists on node 'pve1'", Cause::AlreadyExists),
            (
                "Configuration file 'nodes/pve1/lxc/105.conf' does not exist",
                Cause::DoesNotExist,
            ),
            ("CT 105 already running", Cause::AlreadyRunning),
            ("CT 105 not running", Cause::NotRunning),
            (
                "parameter 'storage' not allowed for linked clones",
                Cause::Refused,
            ),
        ];
        for (msg, cause) in cases {
            let e = PveError::from_response("x", StatusCode::INTERNAL_SERVER_ERROR, Some(msg), b"");
            assert_eq!(e.cause(), cause, "{msg}");
        }
        let e = PveError::from_response(
            "x",
            StatusCode::INTERNAL_SERVER_ERROR,
            Some("CT is locked (disk)"),
            b"",
        );
        assert!(matches!(&e, PveError::Locked { lock, .. } if lock == "disk"));
        assert!(e.is_transient());
        let e = PveError::from_response("x", StatusCode::INTERNAL_SERVER_ERROR, Some("boom"), b"");
        assert_eq!(e.cause(), Cause::Server);
        assert!(e.is_transient());
        let e = PveError::from_response("x", StatusCode::NOT_IMPLEMENTED, None, b"");
        assert_eq!(e.cause(), Cause::Refused);
        assert!(!e.is_transient());
    }

    #[test]
    fn falls_back_to_the_body_message_and_reads_field_errors() {
        let e = PveError::from_response(
            "starting CT 5",
            StatusCode::INTERNAL_SERVER_ERROR,
            None,
            br#"{"data":null,"message":"CT 5 already running\n"}"#,
        );
        assert_eq!(e.cause(), Cause::AlreadyRunning);
        assert_eq!(e.to_string(), "starting CT 5: CT 5 already running");
        let e = PveError::from_response(
            "x",
            StatusCode::BAD_REQUEST,
            Some("Parameter verification failed."),
            br#"{"data":null,"errors":{"cores":"type check ('integer') failed - got 'lots'\n"}}"#,
        );
        match &e {
            PveError::Parameter { errors, .. } => {
                assert_eq!(
                    errors["cores"],
                    "type check ('integer') failed - got 'lots'"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(e.to_string().contains("cores: type check"), "{e}");
    }

    #[test]
    fn task_failures_are_classified_by_exitstatus() {
        let failed = |exit: &str| PveError::TaskFailed {
            what: "x".into(),
            upid: "u".into(),
            exitstatus: exit.into(),
            log_tail: vec![],
        };
        assert_eq!(failed("CT is locked (create)").cause(), Cause::Locked);
        assert!(failed("CT is locked (create)").is_transient());
        assert_eq!(
            failed("startup for container '105' failed").cause(),
            Cause::TaskFailed
        );
        assert!(!failed("clone failed: out of space").is_transient());
        assert!(exitstatus_ok("OK"));
        assert!(exitstatus_ok("WARNINGS: 2"));
        assert!(!exitstatus_ok("unexpected status"));
    }

    #[test]
    fn reads_config_and_interfaces() {
        let cfg = CtConfig {
            values: serde_json::from_str(
                r#"{"description":"zlh server 7 (alpha)\n","tags":"srv-7;zlh",
                    "net0":"name=eth0,bridge=vmbr0,hwaddr=BC:24:11:00:00:01,ip=dhcp,type=veth",
                    "lock":"create","digest":"abc","cores":2}"#,
            )
            .unwrap(),
        };
        assert_eq!(cfg.description().as_deref(), Some("zlh server 7 (alpha)"));
        assert_eq!(cfg.tags(), vec!["srv-7", "zlh"]);
        assert_eq!(cfg.lock().as_deref(), Some("create"));
        assert_eq!(cfg.get("cores").as_deref(), Some("2"));
        assert_eq!(cfg.net_hwaddr("net0").as_deref(), Some("BC:24:11:00:00:01"));
        let ifaces: Vec<Interface> = serde_json::from_str(
            r#"[{"name":"lo","inet":"127.0.0.1/8"},
                {"name":"eth0","hwaddr":"BC:24:11:00:00:01","inet":"10.0.0.5/24",
                 "ip-addresses":[{"ip-address-type":"inet6","ip-address":"fe80::1","prefix":64},
                                 {"ip-address-type":"inet","ip-address":"10.0.0.5","prefix":24}]},
                {"name":"eth1","inet":"10.1.0.9/16"}]"#,
        )
        .unwrap();
        assert_eq!(ifaces[1].ipv4(), Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(ifaces[2].ipv4(), Some(Ipv4Addr::new(10, 1, 0, 9)));
        let entry: CtListEntry =
            serde_json::from_str(r#"{"vmid":"5001","status":"stopped","tags":"zlh;srv-1"}"#)
                .unwrap();
        assert_eq!(entry.vmid, 5001);
        assert_eq!(entry.tags(), vec!["zlh", "srv-1"]);
        assert_eq!(split_tags("zlh, srv-1 ;x"), vec!["zlh", "srv-1", "x"]);
    }
}
