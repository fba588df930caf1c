//! Configuration: embedded defaults < `zlh.toml` < `ZLH_*` environment < flags.
//!
//! Every setting has a dotted key (`queue.workers`) that is also its TOML path; its
//! environment name is `ZLH_` + the key upper-cased with dots as underscores
//! (`ZLH_QUEUE_WORKERS`). Unknown keys and bad values are errors that name the key
//! and where it came from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use crate::util::url::{check_endpoint_ip, check_ip_url, url_host_literal};

/// Default config file, read from the working directory when present.
pub const DEFAULT_CONFIG_FILE: &str = "zlh.toml";

/// `ZLH_*` variables that are not settings of `zlh serve` but are read elsewhere.
const OTHER_ENV: &[&str] = &[
    "ZLH_CONFIG",
    "ZLH_LOG",
    "ZLH_AGENT_TOKEN",
    "ZLH_AGENT_TOKEN_FILE",
];

/// Settings that may be absent (and so do not show up in the serialized defaults),
/// with the type a value from the environment must have.
const OPTIONAL_KEYS: &[(&str, Kind)] = &[
    ("host_id", Kind::Str),
    ("advertise_url", Kind::Str),
    ("agent_binary", Kind::Str),
    ("forwarding_secret", Kind::Str),
    ("secret_key_file", Kind::Str),
    ("edge.allow_hostnames", Kind::Bool),
    ("edge.velocity.url", Kind::Str),
    ("edge.velocity.secret", Kind::Str),
    ("edge.velocity.edge_ip", Kind::Str),
    ("edge.velocity.srv_target", Kind::Str),
    ("edge.velocity.srv_port", Kind::Int),
    ("edge.dns.provider", Kind::Str),
    ("edge.dns.url", Kind::Str),
    ("edge.dns.token", Kind::Str),
    ("edge.dns.zone", Kind::Str),
    ("edge.dns.zone_id", Kind::Str),
    ("edge.dns.ttl", Kind::Int),
    ("edge.traefik.token", Kind::Str),
    ("edge.traefik.edge_ip", Kind::Str),
    ("tls.cert", Kind::Str),
    ("tls.key", Kind::Str),
];

#[derive(Debug, Clone, Copy)]
enum Kind {
    Str,
    Int,
    Bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the database, lock file, backups and artifacts live.
    pub data_dir: PathBuf,
    /// Address of the HTTP API, admin UI and metrics.
    pub listen: SocketAddr,
    /// Identity of this host; a database last served by another identity holds its
    /// side-effecting jobs until an operator releases them. Default: the machine id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host_id: Option<String>,
    /// `text` or `json`.
    pub log_format: LogFormat,
    /// Colours in text logs: `auto` (only when stderr is a terminal and NO_COLOR is
    /// unset), `always` or `never`.
    pub log_color: LogColor,
    /// URL by which agents reach this server (artifact mirror, API), as an IP URL.
    /// Default: `http://<listen>` (a wildcard listen address needs it set).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub advertise_url: Option<String>,
    /// Velocity modern-forwarding secret seeded into proxied servers (FabricProxy-Lite).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub forwarding_secret: Option<String>,
    /// The key that seals secrets at rest (default: `<data_dir>/secret.key`, made at
    /// first start). Keep it with the database's backups, not inside them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret_key_file: Option<PathBuf>,
    /// The `zlh` binary local nodes run as `zlh agent` (default: this binary).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent_binary: Option<PathBuf>,
    pub queue: QueueConfig,
    pub artifacts: ArtifactsConfig,
    /// Publishing to players: Velocity bridge, DNS, Traefik (nothing when unset).
    pub edge: crate::edge::config::EdgeConfig,
    /// How often the reconciler compares the database with the world, in seconds.
    pub reconcile_secs: u64,
    /// How often server schedules (backups, restarts, commands) are checked, in ms.
    pub schedule_tick_ms: u64,
    /// Hours between scheduled database backups into `<data_dir>/backups` (0: none).
    pub backup_interval_hours: u64,
    /// Scheduled backups kept (the oldest are deleted).
    pub backup_keep: u32,
    /// Port pool of the local node (game and agent ports), set when it is first created.
    pub local_port_min: u16,
    pub local_port_max: u16,
    /// Default limits of users who are not admins (an admin may set others per user).
    pub quota: QuotaConfig,
    /// Delays before a local server's agent restarts a crashed game, one per crash in a
    /// row (`30s,60s,120s`); after the last it gives up and reports `error`.
    pub local_crash_backoff: String,
    /// Deadlines and caps of the HTTP listener.
    pub http: HttpConfig,
    /// HTTPS on the listener itself (a reverse proxy in front stays the recommended setup).
    pub tls: TlsConfig,
}

/// A certificate and key (PEM files) make the listener serve HTTPS; both or neither.
/// SIGHUP reads them again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// The certificate chain, leaf first (PEM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// The private key of the certificate (PEM: PKCS#8, PKCS#1 or SEC1).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl TlsConfig {
    /// The certificate and key paths when HTTPS is on.
    pub fn paths(&self) -> Option<(&Path, &Path)> {
        Some((self.cert.as_deref()?, self.key.as_deref()?))
    }
}

/// Default per-user limits (0: no limit). Admins are not limited.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QuotaConfig {
    /// Servers one user may have (not counting deleted ones).
    pub max_servers: u32,
    /// Memory all of one user's servers may reserve together, in MiB.
    pub max_memory_mb: u64,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            max_servers: 10,
            max_memory_mb: 32_768,
        }
    }
}

/// Deadlines and caps of the HTTP listener (see `crate::util::listener`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Seconds a client has to send a request's headers.
    pub header_timeout_secs: u64,
    /// Seconds a connection may sit with no request in flight before it is closed
    /// (hyper also applies the header timeout to the wait for the next request, so
    /// the shorter of the two wins).
    pub idle_timeout_secs: u64,
    /// Seconds a handler has to start its answer (streams are not cut by it).
    pub request_timeout_secs: u64,
    /// Connections served at once (more wait in the kernel's backlog).
    pub max_connections: u32,
    /// Live pages and consoles one UI session may have open at once.
    pub max_streams_per_session: u32,
    /// Live pages and consoles one user may have open at once (all sessions and tokens).
    pub max_streams_per_user: u32,
    /// Largest body a file upload or file write may send (the API's other bodies are
    /// capped at 64 KiB); uploads stream to the agent, so this bounds disk, not memory.
    pub max_upload_bytes: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            header_timeout_secs: 10,
            idle_timeout_secs: 5,
            request_timeout_secs: 60,
            max_connections: 1024,
            max_streams_per_session: 16,
            max_streams_per_user: 64,
            max_upload_bytes: 8 << 30,
        }
    }
}

impl HttpConfig {
    pub fn limits(&self) -> crate::util::listener::Limits {
        crate::util::listener::Limits {
            header_timeout: Duration::from_secs(self.header_timeout_secs),
            idle_timeout: Duration::from_secs(self.idle_timeout_secs),
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            max_connections: self.max_connections as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogColor {
    Auto,
    Always,
    Never,
}

impl LogColor {
    /// Whether log lines written to stderr get ANSI colours: a file or a pipe (systemd's
    /// journal, `2> log`) must not collect escape codes.
    pub fn enabled(self) -> bool {
        use std::io::IsTerminal;
        match self {
            LogColor::Always => true,
            LogColor::Never => false,
            LogColor::Auto => {
                std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                    && std::io::stderr().is_terminal()
            }
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Jobs run at once.
    pub workers: u32,
    /// Seconds a claimed job is leased for (renewed while it runs).
    pub lease_secs: u64,
    /// How often to look for due jobs when nothing else wakes the worker, in ms.
    pub poll_ms: u64,
    /// First retry delay in ms; doubles per attempt up to `retry_cap_ms`.
    pub retry_base_ms: u64,
    pub retry_cap_ms: u64,
    /// On shutdown, seconds running jobs get to finish before they are handed back.
    pub shutdown_grace_secs: u64,
    /// Completed and cancelled jobs are deleted after this many hours.
    pub keep_completed_hours: u64,
    /// Discarded jobs are deleted after this many days.
    pub keep_discarded_days: u64,
}

/// The artifact mirror served at `/artifacts/…` (see `crate::artifacts`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArtifactsConfig {
    /// Fill missing artifacts from their public upstreams on first request. `false`
    /// for an air-gapped box: everything is imported with `zlh artifacts add`.
    pub upstream: bool,
    /// Mojang's launcher metadata (version manifest and per-version JSON).
    pub mojang_url: String,
    /// Fabric meta (loader and installer versions, the server launcher jar).
    pub fabric_url: String,
    /// PaperMC's Fill download service (v3 API).
    pub paper_url: String,
    /// Eclipse Adoptium's API (Temurin JREs).
    pub adoptium_url: String,
}

impl Default for ArtifactsConfig {
    fn default() -> Self {
        ArtifactsConfig {
            upstream: true,
            mojang_url: "https://piston-meta.mojang.com".into(),
            fabric_url: "https://meta.fabricmc.net".into(),
            paper_url: "https://fill.papermc.io".into(),
            adoptium_url: "https://api.adoptium.net".into(),
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("./zlh-data"),
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            host_id: None,
            log_format: LogFormat::Text,
            log_color: LogColor::Auto,
            advertise_url: None,
            forwarding_secret: None,
            secret_key_file: None,
            agent_binary: None,
            queue: QueueConfig::default(),
            artifacts: ArtifactsConfig::default(),
            edge: Default::default(),
            reconcile_secs: 60,
            schedule_tick_ms: 1000,
            backup_interval_hours: 24,
            backup_keep: 7,
            local_port_min: 30000,
            local_port_max: 30999,
            local_crash_backoff: "30s,60s,120s".into(),
            quota: QuotaConfig::default(),
            http: HttpConfig::default(),
            tls: TlsConfig::default(),
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            workers: 16,
            lease_secs: 60,
            poll_ms: 500,
            retry_base_ms: 2_000,
            retry_cap_ms: 600_000,
            shutdown_grace_secs: 10,
            keep_completed_hours: 24 * 7,
            keep_discarded_days: 30,
        }
    }
}

/// A configuration problem, naming the key and where its value came from.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("unknown setting {var} in the environment (known: {known})")]
    UnknownEnv { var: String, known: String },
    #[error("missing setting `{key}`: {message}")]
    Missing { key: String, message: String },
    #[error("invalid setting `{key}` (from {origin}): {message}")]
    Invalid {
        key: String,
        origin: String,
        message: String,
    },
}

/// Where the settings come from, besides the defaults.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// A config file named explicitly (`--config` / `ZLH_CONFIG`): must exist.
    pub file: Option<PathBuf>,
    /// Look for `zlh.toml` in this directory when no file is named.
    pub default_file_dir: Option<PathBuf>,
    /// `ZLH_*` environment variables.
    pub env: Vec<(String, String)>,
    /// Flags: (key, value, flag name).
    pub flags: Vec<(String, String, String)>,
}

impl Sources {
    /// File from `--config`/`ZLH_CONFIG` or `./zlh.toml`, and the process environment.
    pub fn from_process(file: Option<PathBuf>) -> Sources {
        Sources {
            file,
            default_file_dir: Some(PathBuf::from(".")),
            env: std::env::vars()
                .filter(|(k, _)| k.starts_with("ZLH_"))
                .collect(),
            flags: Vec::new(),
        }
    }

    pub fn flag(mut self, key: &str, value: impl ToString, flag: &str) -> Self {
        self.flags
            .push((key.to_string(), value.to_string(), flag.to_string()));
        self
    }
}

/// All setting keys with their environment variable names.
pub fn settings() -> Vec<(String, String)> {
    let mut keys = Vec::new();
    if let Ok(toml::Value::Table(t)) = toml::Value::try_from(Config::default()) {
        collect_keys("", &t, &mut keys);
    }
    keys.extend(OPTIONAL_KEYS.iter().map(|(k, _)| k.to_string()));
    keys.sort();
    keys.dedup();
    keys.sort();
    keys.into_iter()
        .map(|k| {
            let env = env_name(&k);
            (k, env)
        })
        .collect()
}

fn collect_keys(prefix: &str, table: &toml::Table, out: &mut Vec<String>) {
    for (k, v) in table {
        let key = if prefix.is_empty() {
            k.clone()
        } else {
            format!("{prefix}.{k}")
        };
        match v {
            toml::Value::Table(t) => collect_keys(&key, t, out),
            _ => out.push(key),
        }
    }
}

fn env_name(key: &str) -> String {
    format!("ZLH_{}", key.replace('.', "_").to_uppercase())
}

/// The default value at `key`, to learn the type a string from env/flags must have.
fn default_at(key: &str) -> Option<toml::Value> {
    let mut v = toml::Value::try_from(Config::default()).ok()?;
    for part in key.split('.') {
        v = v.as_table()?.get(part)?.clone();
    }
    Some(v)
}

/// Turns a string from the environment or a flag into a TOML value of the key's type.
fn typed_value(key: &str, raw: &str, origin: &str) -> Result<toml::Value, ConfigError> {
    let invalid = |message: String| ConfigError::Invalid {
        key: key.to_string(),
        origin: origin.to_string(),
        message,
    };
    let optional = OPTIONAL_KEYS
        .iter()
        .find(|(k, _)| *k == key)
        .map(|(_, kind)| *kind);
    let kind = match (default_at(key), optional) {
        (Some(toml::Value::Integer(_)), _) | (None, Some(Kind::Int)) => Kind::Int,
        (Some(toml::Value::Boolean(_)), _) | (None, Some(Kind::Bool)) => Kind::Bool,
        _ => Kind::Str,
    };
    match kind {
        Kind::Int => raw
            .trim()
            .parse::<i64>()
            .map(toml::Value::Integer)
            .map_err(|_| invalid(format!("'{raw}' is not a whole number"))),
        Kind::Bool => match raw.trim() {
            "true" | "1" | "yes" => Ok(toml::Value::Boolean(true)),
            "false" | "0" | "no" => Ok(toml::Value::Boolean(false)),
            _ => Err(invalid(format!("'{raw}' is not true or false"))),
        },
        Kind::Str => Ok(toml::Value::String(raw.to_string())),
    }
}

fn set_path(root: &mut toml::Table, key: &str, value: toml::Value) {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut table = root;
    for p in parts {
        let entry = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if !entry.is_table() {
            *entry = toml::Value::Table(toml::Table::new());
        }
        match entry {
            toml::Value::Table(t) => table = t,
            _ => return,
        }
    }
    table.insert(last.to_string(), value);
}

impl Config {
    /// Resolves the configuration from its sources and validates it.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let known = settings();
        let mut origins: Vec<(String, String)> = Vec::new();

        // 1. The file.
        let file = match (&sources.file, &sources.default_file_dir) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(dir)) => {
                let p = dir.join(DEFAULT_CONFIG_FILE);
                p.exists().then_some(p)
            }
            (None, None) => None,
        };
        let mut root = toml::Table::new();
        if let Some(path) = &file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.clone(),
                source,
            })?;
            root = text.parse::<toml::Table>().map_err(|e| ConfigError::File {
                path: path.clone(),
                message: e.to_string(),
            })?;
            // Reject unknown keys here, where we can say which file has them.
            let mut file_keys = Vec::new();
            collect_keys("", &root, &mut file_keys);
            for k in file_keys {
                if !known.iter().any(|(key, _)| *key == k) {
                    return Err(ConfigError::File {
                        path: path.clone(),
                        message: format!(
                            "unknown setting `{k}` (known: {})",
                            known
                                .iter()
                                .map(|(k, _)| k.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    });
                }
                origins.push((k, format!("config file {}", path.display())));
            }
        }

        // 2. The environment.
        let mut env = sources.env.clone();
        env.sort();
        for (var, raw) in &env {
            if OTHER_ENV.contains(&var.as_str()) {
                continue;
            }
            let Some((key, _)) = known.iter().find(|(_, e)| e == var) else {
                return Err(ConfigError::UnknownEnv {
                    var: var.clone(),
                    known: known
                        .iter()
                        .map(|(_, e)| e.as_str())
                        .chain(OTHER_ENV.iter().copied())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            let origin = format!("environment variable {var}");
            set_path(&mut root, key, typed_value(key, raw, &origin)?);
            origins.push((key.clone(), origin));
        }

        // 3. Flags.
        for (key, raw, flag) in &sources.flags {
            let origin = format!("flag {flag}");
            set_path(&mut root, key, typed_value(key, raw, &origin)?);
            origins.push((key.clone(), origin));
        }

        let origin_of = |key: &str| {
            origins
                .iter()
                .rev()
                .find(|(k, _)| k == key)
                .map(|(_, o)| o.clone())
                .unwrap_or_else(|| "defaults".to_string())
        };

        let config: Config = match toml::Value::Table(root.clone()).try_into() {
            Ok(c) => c,
            Err(e) => {
                // serde's message does not always name the key: find the one value that
                // does not deserialize on its own, to say which key and where it came from.
                let e: toml::de::Error = e;
                let mut leaves = Vec::new();
                collect_keys("", &root, &mut leaves);
                let culprit = leaves.into_iter().find_map(|key| {
                    let mut v = toml::Value::Table(root.clone());
                    for part in key.split('.') {
                        v = v.as_table()?.get(part)?.clone();
                    }
                    let mut one = toml::Table::new();
                    set_path(&mut one, &key, v);
                    let err = toml::Value::Table(one).try_into::<Config>().err()?;
                    Some((key, err.message().to_string()))
                });
                let (key, message) =
                    culprit.unwrap_or_else(|| ("?".into(), e.message().to_string()));
                return Err(ConfigError::Invalid {
                    origin: origin_of(&key),
                    key,
                    message,
                });
            }
        };
        config.validate(&origin_of)?;
        Ok(config)
    }

    /// `local_crash_backoff` as durations.
    pub fn local_crash_backoff(&self) -> Result<Vec<Duration>, String> {
        self.local_crash_backoff
            .split(',')
            .map(crate::util::parse_duration)
            .collect()
    }

    fn validate(&self, origin_of: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let check = |ok: bool, key: &str, message: &str| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Invalid {
                    key: key.to_string(),
                    origin: origin_of(key),
                    message: message.to_string(),
                })
            }
        };
        check(
            !self.data_dir.as_os_str().is_empty(),
            "data_dir",
            "must not be empty",
        )?;
        if let Some(h) = &self.host_id {
            check(
                !h.trim().is_empty() && h.len() <= 200,
                "host_id",
                "must be 1 to 200 characters",
            )?;
        }
        self.edge.validate().map_err(|e| ConfigError::Invalid {
            origin: origin_of(&e.key),
            key: e.key,
            message: e.message,
        })?;
        // Both or neither: the error names the missing one and where its partner was set.
        let missing = match (&self.tls.cert, &self.tls.key) {
            (Some(_), None) => Some(("tls.key", "tls.cert")),
            (None, Some(_)) => Some(("tls.cert", "tls.key")),
            _ => None,
        };
        if let Some((absent, set)) = missing {
            return Err(ConfigError::Missing {
                key: absent.to_string(),
                message: format!(
                    "{set} is set (by {}) and HTTPS needs both the certificate and its key: \
                     set {absent} too, or unset {set}",
                    origin_of(set)
                ),
            });
        }
        for (key, path) in [("tls.cert", &self.tls.cert), ("tls.key", &self.tls.key)] {
            if let Some(p) = path {
                check(!p.as_os_str().is_empty(), key, "must not be empty")?;
            }
        }
        check(self.backup_keep >= 1, "backup_keep", "must be at least 1")?;
        let h = &self.http;
        for (value, key) in [
            (h.header_timeout_secs, "http.header_timeout_secs"),
            (h.idle_timeout_secs, "http.idle_timeout_secs"),
            (h.request_timeout_secs, "http.request_timeout_secs"),
            (u64::from(h.max_connections), "http.max_connections"),
            (
                u64::from(h.max_streams_per_session),
                "http.max_streams_per_session",
            ),
            (
                u64::from(h.max_streams_per_user),
                "http.max_streams_per_user",
            ),
            (h.max_upload_bytes, "http.max_upload_bytes"),
        ] {
            check(value >= 1, key, "must be at least 1")?;
        }
        check(
            self.backup_interval_hours <= 24 * 365,
            "backup_interval_hours",
            "must be at most 8760 (0 turns scheduled backups off)",
        )?;
        check(
            self.local_port_min >= 1024 && self.local_port_min <= self.local_port_max,
            "local_port_min",
            "must be at least 1024 and not above local_port_max",
        )?;
        let backoff = self.local_crash_backoff();
        check(
            backoff
                .as_ref()
                .is_ok_and(|b| !b.is_empty() && b.len() <= 20),
            "local_crash_backoff",
            &match &backoff {
                Err(e) => format!("{e}; a comma-separated list of durations such as 30s,60s,120s"),
                Ok(_) => "must list 1 to 20 durations, such as 30s,60s,120s".into(),
            },
        )?;
        check(
            (100..=60_000).contains(&self.schedule_tick_ms),
            "schedule_tick_ms",
            "must be between 100 and 60000",
        )?;
        check(
            (1..=86_400).contains(&self.reconcile_secs),
            "reconcile_secs",
            "must be between 1 and 86400",
        )?;
        if let Some(u) = &self.advertise_url {
            check_ip_url(u, self.edge.allow_hostnames).map_err(|message| ConfigError::Invalid {
                key: "advertise_url".into(),
                origin: origin_of("advertise_url"),
                message,
            })?;
        }
        let q = &self.queue;
        check(
            (1..=1000).contains(&q.workers),
            "queue.workers",
            "must be between 1 and 1000",
        )?;
        check(
            (5..=86_400).contains(&q.lease_secs),
            "queue.lease_secs",
            "must be between 5 and 86400",
        )?;
        check(
            (10..=60_000).contains(&q.poll_ms),
            "queue.poll_ms",
            "must be between 10 and 60000",
        )?;
        check(
            q.retry_base_ms >= 1,
            "queue.retry_base_ms",
            "must be at least 1",
        )?;
        check(
            q.retry_cap_ms >= q.retry_base_ms,
            "queue.retry_cap_ms",
            "must be at least queue.retry_base_ms",
        )?;
        check(
            q.shutdown_grace_secs <= 3600,
            "queue.shutdown_grace_secs",
            "must be at most 3600",
        )?;
        check(
            q.keep_completed_hours >= 1,
            "queue.keep_completed_hours",
            "must be at least 1",
        )?;
        check(
            q.keep_discarded_days >= 1,
            "queue.keep_discarded_days",
            "must be at least 1",
        )?;
        let a = &self.artifacts;
        for (key, value) in [
            ("artifacts.mojang_url", &a.mojang_url),
            ("artifacts.fabric_url", &a.fabric_url),
            ("artifacts.paper_url", &a.paper_url),
            ("artifacts.adoptium_url", &a.adoptium_url),
        ] {
            if let Err(message) = check_http_url(value) {
                return Err(ConfigError::Invalid {
                    key: key.to_string(),
                    origin: origin_of(key),
                    message,
                });
            }
        }
        Ok(())
    }

    /// The URL agents use to reach this server.
    pub fn advertised(&self) -> String {
        match &self.advertise_url {
            Some(u) => u.trim_end_matches('/').to_string(),
            None if self.listen.ip().is_unspecified() => {
                format!("{}://127.0.0.1:{}", self.scheme(), self.listen.port())
            }
            None => format!("{}://{}", self.scheme(), self.listen),
        }
    }

    /// `https` when the listener serves TLS itself, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.tls.paths().is_some() {
            "https"
        } else {
            "http"
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(crate::db::DB_FILE)
    }

    /// The key file sealing secrets at rest.
    pub fn secret_key_path(&self) -> PathBuf {
        self.secret_key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join(crate::db::secret::KEY_FILE))
    }

    /// The worker pool settings derived from `[queue]`.
    pub fn worker_config(&self) -> crate::queue::WorkerConfig {
        let q = &self.queue;
        crate::queue::WorkerConfig {
            name: "w0".into(),
            concurrency: q.workers as usize,
            lease: Duration::from_secs(q.lease_secs),
            poll_interval: Duration::from_millis(q.poll_ms),
            retry_base: Duration::from_millis(q.retry_base_ms),
            retry_cap: Duration::from_millis(q.retry_cap_ms),
            shutdown_grace: Duration::from_secs(q.shutdown_grace_secs),
        }
    }

    /// The effective configuration as TOML (for `zlh config check`), secrets blanked.
    pub fn to_toml(&self) -> String {
        let mut shown = self.clone();
        if shown.forwarding_secret.is_some() {
            shown.forwarding_secret = Some("<redacted>".into());
        }
        toml::to_string_pretty(&shown).unwrap_or_default()
    }

    /// Warnings to log at every start (e.g. hostnames allowed for internal endpoints).
    pub fn warnings(&self) -> Vec<String> {
        self.edge.validate().unwrap_or_default()
    }
}

/// Accepts an absolute `http://` or `https://` URL with a host and no query or
/// fragment (paths are appended to it, so those would end up in the wrong place).
fn check_http_url(value: &str) -> Result<(), String> {
    let url = reqwest::Url::parse(value)
        .map_err(|e| format!("'{value}' is not a URL ({e}); expected e.g. https://host"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!(
            "'{value}' must use http or https, not {}",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(format!("'{value}' has no host"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("'{value}' must not have a query or fragment"));
    }
    Ok(())
}

/// This machine's identity: `/etc/machine-id`, else the hostname.
pub fn machine_host_id() -> String {
    for p in ["/etc/machine-id", "/var/lib/dbus/machine-id"] {
        if let Ok(s) = std::fs::read_to_string(p) {
            let s = s.trim();
            if !s.is_empty() {
                return s.to_string();
            }
        }
    }
    hostname()
}

/// The kernel's hostname.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// Resolves `path` against the current directory for messages.
pub fn display_path(path: &Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}
