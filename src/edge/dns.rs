//! DNS record clients: Technitium and Cloudflare behind one [`DnsClient`], with record
//! identities ([`DnsRecordId`]) that hold everything needed to delete exactly the
//! record that was created, later, from a database row (`reference/protocols.md` §6).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::config::{DnsConfig, DnsProvider};
use super::{EdgeError, excerpt, exchange, http_client, retry};

/// What zlh writes into a record's comment, so an operator sees who owns it.
const COMMENT: &str = "managed-by:zlh";

/// The value of a record, as the provider needs it to identify the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum DnsValue {
    A {
        ip_address: Ipv4Addr,
    },
    #[serde(rename = "SRV")]
    Srv {
        priority: u16,
        weight: u16,
        port: u16,
        target: String,
    },
}

impl DnsValue {
    pub fn record_type(&self) -> &'static str {
        match self {
            DnsValue::A { .. } => "A",
            DnsValue::Srv { .. } => "SRV",
        }
    }
}

/// The exact identity of one published record, stored as JSON in the edge records
/// table and handed back to [`DnsClient::delete`] / [`DnsClient::exists`].
///
/// - Technitium deletes by (zone, domain, type, value), so the value is kept.
/// - Cloudflare deletes by record id; name, type and content are kept to show and
///   to check the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "provider", rename_all = "snake_case")]
pub enum DnsRecordId {
    Technitium {
        zone: String,
        /// The record's FQDN (`mc-alpha.games.example.com`).
        domain: String,
        value: DnsValue,
    },
    Cloudflare {
        zone_id: String,
        /// Cloudflare's 32-hex record id.
        id: String,
        name: String,
        record_type: String,
        content: String,
    },
}

impl DnsRecordId {
    /// The record's FQDN.
    pub fn name(&self) -> &str {
        match self {
            DnsRecordId::Technitium { domain, .. } => domain,
            DnsRecordId::Cloudflare { name, .. } => name,
        }
    }

    /// `A` or `SRV`.
    pub fn record_type(&self) -> &str {
        match self {
            DnsRecordId::Technitium { value, .. } => value.record_type(),
            DnsRecordId::Cloudflare { record_type, .. } => record_type,
        }
    }
}

/// Lower case, no trailing dot: how names are compared and stored.
fn normalize(name: &str) -> String {
    name.trim().trim_end_matches('.').to_ascii_lowercase()
}

fn check_srv_target(target: &str, who: &str, what: &str) -> Result<(), EdgeError> {
    // An SRV target must be a host name (RFC 2782; Cloudflare refuses an IP).
    if target.is_empty() || target.parse::<IpAddr>().is_ok() {
        return Err(EdgeError::Invalid {
            target: who.to_string(),
            what: what.to_string(),
            reason: format!("SRV target '{target}' must be a host name, not an IP"),
        });
    }
    Ok(())
}

/// One DNS provider, chosen by configuration.
#[derive(Clone, Debug)]
pub enum DnsClient {
    Technitium(TechnitiumClient),
    Cloudflare(CloudflareClient),
}

impl DnsClient {
    /// The client for a (validated) DNS configuration.
    pub fn from_config(cfg: &DnsConfig) -> DnsClient {
        match cfg.provider {
            DnsProvider::Technitium => {
                DnsClient::Technitium(TechnitiumClient::new(cfg.api_url(), &cfg.token, &cfg.zone))
            }
            DnsProvider::Cloudflare => DnsClient::Cloudflare(CloudflareClient::new(
                cfg.api_url(),
                &cfg.token,
                cfg.zone_id.clone().unwrap_or_default(),
            )),
        }
    }

    /// Names the provider and endpoint, for errors and logs.
    pub fn target(&self) -> String {
        match self {
            DnsClient::Technitium(c) => c.target(),
            DnsClient::Cloudflare(c) => c.target(),
        }
    }

    /// Creates `A fqdn → ipv4` (or adopts the identical existing record).
    pub async fn add_a(
        &self,
        fqdn: &str,
        ipv4: Ipv4Addr,
        ttl: u32,
    ) -> Result<DnsRecordId, EdgeError> {
        match self {
            DnsClient::Technitium(c) => c.add_a(fqdn, ipv4, ttl).await,
            DnsClient::Cloudflare(c) => c.add_a(fqdn, ipv4, ttl).await,
        }
    }

    /// Creates `SRV srv_name → priority weight port target_host` (or adopts the
    /// identical existing record). `srv_name` is the full owner name,
    /// e.g. `_minecraft._tcp.mc-alpha.games.example.com`.
    pub async fn add_srv(
        &self,
        srv_name: &str,
        target_host: &str,
        port: u16,
        priority: u16,
        weight: u16,
        ttl: u32,
    ) -> Result<DnsRecordId, EdgeError> {
        match self {
            DnsClient::Technitium(c) => {
                c.add_srv(srv_name, target_host, port, priority, weight, ttl)
                    .await
            }
            DnsClient::Cloudflare(c) => {
                c.add_srv(srv_name, target_host, port, priority, weight, ttl)
                    .await
            }
        }
    }

    /// Deletes exactly the record `id` names. A record that is already gone is success.
    pub async fn delete(&self, id: &DnsRecordId) -> Result<(), EdgeError> {
        match self {
            DnsClient::Technitium(c) => c.delete(id).await,
            DnsClient::Cloudflare(c) => c.delete(id).await,
        }
    }

    /// Whether the record `id` names is still there (for the reconciler).
    pub async fn exists(&self, id: &DnsRecordId) -> Result<bool, EdgeError> {
        match self {
            DnsClient::Technitium(c) => c.exists(id).await,
            DnsClient::Cloudflare(c) => c.exists(id).await,
        }
    }
}

// ------------------------------------------------------------------ Technitium

/// Technitium DNS Server's HTTP API (v15+: `Authorization: Bearer`). It answers
/// HTTP 200 to nearly everything; the outcome is the body's `status`: `ok`,
/// `error` (+ `errorMessage`), `invalid-token`.
#[derive(Clone)]
pub struct TechnitiumClient {
    http: reqwest::Client,
    base: String,
    token: String,
    zone: String,
}

impl fmt::Debug for TechnitiumClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TechnitiumClient")
            .field("base", &self.base)
            .field("zone", &self.zone)
            .field("token", &"<redacted>")
            .finish()
    }
}

impl TechnitiumClient {
    /// `base_url` is the web service root (`http://10.0.0.53:5380`; a trailing `/api`
    /// is tolerated), `zone` the zone records are created in (`games.example.com`).
    pub fn new(base_url: impl Into<String>, token: &str, zone: &str) -> Self {
        let base = base_url.into();
        let base = base.trim_end_matches('/');
        let base = base.strip_suffix("/api").unwrap_or(base).to_string();
        TechnitiumClient {
            http: http_client(true),
            base,
            token: token.to_string(),
            zone: normalize(zone),
        }
    }

    /// "Technitium at http://10.0.0.53:5380".
    pub fn target(&self) -> String {
        format!("Technitium at {}", self.base)
    }

    /// One API call; the `response` object on `status:ok`.
    async fn api(
        &self,
        path: &str,
        params: &[(&str, String)],
        what: &str,
    ) -> Result<Value, EdgeError> {
        let req = self
            .http
            .request(Method::POST, format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .form(params);
        let (status, bytes) = exchange(req, &self.target(), what).await?;
        if !status.is_success() {
            // Not the API answering (a reverse proxy, or the server failing hard).
            return Err(EdgeError::Status {
                target: self.target(),
                what: what.to_string(),
                status: status.as_u16(),
                message: excerpt(&bytes),
            });
        }
        let v: Value = serde_json::from_slice(&bytes).map_err(|e| EdgeError::Decode {
            target: self.target(),
            what: what.to_string(),
            reason: format!("{e}; body: {}", excerpt(&bytes)),
        })?;
        let message = || {
            let mut m = v["errorMessage"]
                .as_str()
                .unwrap_or("no errorMessage")
                .to_string();
            if let Some(inner) = v["innerErrorMessage"].as_str().filter(|s| !s.is_empty()) {
                m.push_str(": ");
                m.push_str(inner);
            }
            m
        };
        match v["status"].as_str() {
            Some("ok") => Ok(v["response"].clone()),
            Some("invalid-token") | Some("2fa-required") => Err(EdgeError::Unauthorized {
                target: self.target(),
                what: what.to_string(),
                message: message(),
            }),
            Some("error") => Err(EdgeError::Rejected {
                target: self.target(),
                what: what.to_string(),
                message: message(),
            }),
            other => Err(EdgeError::Decode {
                target: self.target(),
                what: what.to_string(),
                reason: format!("status {other:?}; body: {}", excerpt(&bytes)),
            }),
        }
    }

    fn value_params(value: &DnsValue) -> Vec<(&'static str, String)> {
        match value {
            DnsValue::A { ip_address } => {
                vec![("type", "A".into()), ("ipAddress", ip_address.to_string())]
            }
            DnsValue::Srv {
                priority,
                weight,
                port,
                target,
            } => vec![
                ("type", "SRV".into()),
                ("priority", priority.to_string()),
                ("weight", weight.to_string()),
                ("port", port.to_string()),
                ("target", target.clone()),
            ],
        }
    }

    async fn add(
        &self,
        domain: &str,
        value: DnsValue,
        ttl: u32,
        what: &str,
    ) -> Result<DnsRecordId, EdgeError> {
        let domain = normalize(domain);
        let mut params = vec![
            ("domain", domain.clone()),
            ("zone", self.zone.clone()),
            ("ttl", ttl.to_string()),
            // Never replace the RRset: other records at the same name are not ours.
            ("overwrite", "false".into()),
            ("comments", COMMENT.into()),
        ];
        params.extend(Self::value_params(&value));
        let id = DnsRecordId::Technitium {
            zone: self.zone.clone(),
            domain,
            value,
        };
        // Adding the same value twice leaves one record (an RRset is a set), and an
        // "already exists" answer is adopted below, so retrying is safe.
        let params = &params;
        let result = retry(true, || async move {
            self.api("/api/zones/records/add", params, what).await
        })
        .await;
        match result {
            Ok(_) => Ok(id),
            Err(EdgeError::Rejected { message, .. })
                if message.to_ascii_lowercase().contains("already exists") =>
            {
                Ok(id)
            }
            Err(e) => Err(e),
        }
    }

    pub async fn add_a(
        &self,
        fqdn: &str,
        ipv4: Ipv4Addr,
        ttl: u32,
    ) -> Result<DnsRecordId, EdgeError> {
        let what = format!("adding A {fqdn} → {ipv4}");
        self.add(fqdn, DnsValue::A { ip_address: ipv4 }, ttl, &what)
            .await
    }

    pub async fn add_srv(
        &self,
        srv_name: &str,
        target_host: &str,
        port: u16,
        priority: u16,
        weight: u16,
        ttl: u32,
    ) -> Result<DnsRecordId, EdgeError> {
        let what = format!("adding SRV {srv_name} → {target_host}:{port}");
        check_srv_target(target_host, &self.target(), &what)?;
        let value = DnsValue::Srv {
            priority,
            weight,
            port,
            target: normalize(target_host),
        };
        self.add(srv_name, value, ttl, &what).await
    }

    fn unpack<'a>(
        &self,
        id: &'a DnsRecordId,
        what: &str,
    ) -> Result<(&'a str, &'a str, &'a DnsValue), EdgeError> {
        match id {
            DnsRecordId::Technitium {
                zone,
                domain,
                value,
            } => Ok((zone, domain, value)),
            other => Err(EdgeError::Invalid {
                target: self.target(),
                what: what.to_string(),
                reason: format!(
                    "{} record {} is not a Technitium record",
                    other.record_type(),
                    other.name()
                ),
            }),
        }
    }

    /// Deletes exactly (zone, domain, type, value). Technitium answers `status:ok`
    /// when no such record exists (its delete ignores "nothing removed"), so a
    /// second delete is success as well.
    pub async fn delete(&self, id: &DnsRecordId) -> Result<(), EdgeError> {
        let what = format!("deleting {} {}", id.record_type(), id.name());
        let (zone, domain, value) = self.unpack(id, &what)?;
        let mut params = vec![("domain", domain.to_string()), ("zone", zone.to_string())];
        params.extend(Self::value_params(value));
        let (params, what) = (&params, what.as_str());
        retry(true, || async move {
            self.api("/api/zones/records/delete", params, what).await
        })
        .await
        .map(|_| ())
    }

    /// Whether (domain, type, value) is in the zone.
    pub async fn exists(&self, id: &DnsRecordId) -> Result<bool, EdgeError> {
        let what = format!("looking up {} {}", id.record_type(), id.name());
        let (zone, domain, value) = self.unpack(id, &what)?;
        let params = vec![("domain", domain.to_string()), ("zone", zone.to_string())];
        let (params_ref, what_ref) = (&params, what.as_str());
        let response = retry(true, || async move {
            self.api("/api/zones/records/get", params_ref, what_ref)
                .await
        })
        .await?;
        let records = response["records"]
            .as_array()
            .ok_or_else(|| EdgeError::Decode {
                target: self.target(),
                what: what.clone(),
                reason: "no records array in the response".into(),
            })?;
        Ok(records.iter().any(|r| {
            normalize(r["name"].as_str().unwrap_or_default()) == domain
                && r["type"].as_str() == Some(value.record_type())
                && technitium_rdata_matches(&r["rData"], value)
        }))
    }
}

fn technitium_rdata_matches(rdata: &Value, value: &DnsValue) -> bool {
    match value {
        DnsValue::A { ip_address } => rdata["ipAddress"].as_str() == Some(&ip_address.to_string()),
        DnsValue::Srv {
            priority,
            weight,
            port,
            target,
        } => {
            rdata["priority"].as_u64() == Some(u64::from(*priority))
                && rdata["weight"].as_u64() == Some(u64::from(*weight))
                && rdata["port"].as_u64() == Some(u64::from(*port))
                && normalize(rdata["target"].as_str().unwrap_or_default()) == *target
        }
    }
}

// ------------------------------------------------------------------ Cloudflare

/// Cloudflare's v4 API for one zone: `Authorization: Bearer`, answers in the
/// envelope `{success, errors, messages, result}`.
#[derive(Clone)]
pub struct CloudflareClient {
    http: reqwest::Client,
    base: String,
    token: String,
    zone_id: String,
}

impl fmt::Debug for CloudflareClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloudflareClient")
            .field("base", &self.base)
            .field("zone_id", &self.zone_id)
            .field("token", &"<redacted>")
            .finish()
    }
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    success: bool,
    #[serde(default)]
    errors: Vec<CfMessage>,
    #[serde(default)]
    result: Value,
}

#[derive(Deserialize)]
struct CfMessage {
    #[serde(default)]
    code: i64,
    #[serde(default)]
    message: String,
}

#[derive(Deserialize)]
struct CfRecord {
    id: String,
    name: String,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    content: String,
    #[serde(default)]
    data: Value,
    #[serde(default)]
    priority: Option<u64>,
}

fn joined(errors: &[CfMessage]) -> String {
    if errors.is_empty() {
        return "no error details".into();
    }
    errors
        .iter()
        .map(|e| format!("{} ({})", e.message, e.code))
        .collect::<Vec<_>>()
        .join("; ")
}

/// A create refused because the record exists. The codes are the 8105x family
/// ("Record already exists", "An identical record already exists", …), matched
/// loosely together with the message: Cloudflare does not document them as stable.
fn is_duplicate(errors: &[CfMessage]) -> bool {
    errors.iter().any(|e| {
        (81050..=81059).contains(&e.code)
            || e.message.to_ascii_lowercase().contains("already exists")
    })
}

/// "Record does not exist" (81044) and its relatives: the record is gone.
fn is_missing(errors: &[CfMessage]) -> bool {
    errors.iter().any(|e| {
        let m = e.message.to_ascii_lowercase();
        e.code == 81044 || m.contains("does not exist") || m.contains("not found")
    })
}

impl CloudflareClient {
    /// `base_url` is `https://api.cloudflare.com/client/v4` in production.
    pub fn new(base_url: impl Into<String>, token: &str, zone_id: impl Into<String>) -> Self {
        CloudflareClient {
            // An external SaaS API: the system proxy settings apply.
            http: http_client(false),
            base: base_url.into().trim_end_matches('/').to_string(),
            token: token.to_string(),
            zone_id: zone_id.into(),
        }
    }

    /// "Cloudflare zone 023e105f4ecef8ad9ca31a8372d0c353 at https://api.cloudflare.com/client/v4".
    pub fn target(&self) -> String {
        format!("Cloudflare zone {} at {}", self.zone_id, self.base)
    }

    /// One call: HTTP status and envelope. Credentials refused, rate limits, 5xx and
    /// bodies that are not an envelope are errors here; the rest is the caller's.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        what: &str,
    ) -> Result<(StatusCode, Envelope), EdgeError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        let (status, bytes) = exchange(req, &self.target(), what).await?;
        let env = serde_json::from_slice::<Envelope>(&bytes);
        let message = match &env {
            Ok(e) => joined(&e.errors),
            Err(_) => excerpt(&bytes),
        };
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(EdgeError::Unauthorized {
                target: self.target(),
                what: what.to_string(),
                message,
            });
        }
        if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
            return Err(EdgeError::Status {
                target: self.target(),
                what: what.to_string(),
                status: status.as_u16(),
                message,
            });
        }
        match env {
            Ok(e) => Ok((status, e)),
            Err(e) if status.is_success() => Err(EdgeError::Decode {
                target: self.target(),
                what: what.to_string(),
                reason: format!("{e}; body: {}", excerpt(&bytes)),
            }),
            Err(_) => Err(EdgeError::Status {
                target: self.target(),
                what: what.to_string(),
                status: status.as_u16(),
                message,
            }),
        }
    }

    fn refused(&self, what: &str, status: StatusCode, env: &Envelope) -> EdgeError {
        if status.is_success() {
            EdgeError::Rejected {
                target: self.target(),
                what: what.to_string(),
                message: joined(&env.errors),
            }
        } else {
            EdgeError::Status {
                target: self.target(),
                what: what.to_string(),
                status: status.as_u16(),
                message: joined(&env.errors),
            }
        }
    }

    fn record_of(&self, v: Value, what: &str) -> Result<CfRecord, EdgeError> {
        serde_json::from_value(v).map_err(|e| EdgeError::Decode {
            target: self.target(),
            what: what.to_string(),
            reason: format!("record: {e}"),
        })
    }

    fn id_of(&self, r: CfRecord) -> DnsRecordId {
        DnsRecordId::Cloudflare {
            zone_id: self.zone_id.clone(),
            id: r.id,
            name: normalize(&r.name),
            record_type: r.kind,
            content: r.content,
        }
    }

    /// Records of `record_type` named `name`.
    async fn find(
        &self,
        record_type: &str,
        name: &str,
        what: &str,
    ) -> Result<Vec<CfRecord>, EdgeError> {
        let path = format!(
            "/zones/{}/dns_records?type={record_type}&name={}&per_page=100",
            self.zone_id,
            normalize(name)
        );
        let path = &path;
        let (status, env) = retry(true, || async move {
            self.call(Method::GET, path, None, what).await
        })
        .await?;
        if !(status.is_success() && env.success) {
            return Err(self.refused(what, status, &env));
        }
        let Value::Array(items) = env.result else {
            return Err(EdgeError::Decode {
                target: self.target(),
                what: what.to_string(),
                reason: "result is not a list".into(),
            });
        };
        items.into_iter().map(|v| self.record_of(v, what)).collect()
    }

    /// POST a record; on a duplicate, adopt the identical existing record.
    async fn create(
        &self,
        body: Value,
        record_type: &str,
        name: &str,
        same: impl Fn(&CfRecord) -> bool,
        what: &str,
    ) -> Result<DnsRecordId, EdgeError> {
        let path = format!("/zones/{}/dns_records", self.zone_id);
        // Not retried: a create that timed out may have happened. The reconciler
        // (or the next publish attempt) adopts it through the duplicate path.
        let (status, env) = self.call(Method::POST, &path, Some(&body), what).await?;
        if status.is_success() && env.success {
            let r = self.record_of(env.result, what)?;
            return Ok(self.id_of(r));
        }
        if is_duplicate(&env.errors) {
            let found = self.find(record_type, name, what).await?;
            if let Some(r) = found.into_iter().find(|r| same(r)) {
                tracing::info!(
                    record = name,
                    record_type,
                    "Cloudflare record already existed; adopting it"
                );
                return Ok(self.id_of(r));
            }
        }
        Err(self.refused(what, status, &env))
    }

    pub async fn add_a(
        &self,
        fqdn: &str,
        ipv4: Ipv4Addr,
        ttl: u32,
    ) -> Result<DnsRecordId, EdgeError> {
        let what = format!("adding A {fqdn} → {ipv4}");
        let name = normalize(fqdn);
        let ip = ipv4.to_string();
        let body = json!({
            "type": "A",
            "name": name,
            "content": ip,
            "ttl": ttl,
            // Game traffic is not HTTP: Cloudflare's proxy would break it.
            "proxied": false,
            "comment": COMMENT,
        });
        self.create(body, "A", &name, |r| r.content == ip, &what)
            .await
    }

    pub async fn add_srv(
        &self,
        srv_name: &str,
        target_host: &str,
        port: u16,
        priority: u16,
        weight: u16,
        ttl: u32,
    ) -> Result<DnsRecordId, EdgeError> {
        let what = format!("adding SRV {srv_name} → {target_host}:{port}");
        check_srv_target(target_host, &self.target(), &what)?;
        let name = normalize(srv_name);
        let target = normalize(target_host);
        // The full `_minecraft._tcp.<host>` goes in `name`; `data.service/proto/name`
        // are deprecated (end of life 2024-05-31).
        let body = json!({
            "type": "SRV",
            "name": name,
            "ttl": ttl,
            "data": {"priority": priority, "weight": weight, "port": port, "target": target},
            "comment": COMMENT,
        });
        let same = |r: &CfRecord| {
            let d = &r.data;
            if d.is_object() {
                d["port"].as_u64() == Some(u64::from(port))
                    && d["weight"].as_u64() == Some(u64::from(weight))
                    && normalize(d["target"].as_str().unwrap_or_default()) == target
                    && d["priority"].as_u64().or(r.priority) == Some(u64::from(priority))
            } else {
                // Cloudflare's SRV `content` is "weight port target" (priority apart).
                r.content == format!("{weight} {port} {target}")
            }
        };
        self.create(body, "SRV", &name, same, &what).await
    }

    fn unpack<'a>(&self, id: &'a DnsRecordId, what: &str) -> Result<(&'a str, &'a str), EdgeError> {
        match id {
            DnsRecordId::Cloudflare { zone_id, id, .. } => Ok((zone_id, id)),
            other => Err(EdgeError::Invalid {
                target: self.target(),
                what: what.to_string(),
                reason: format!(
                    "{} record {} is not a Cloudflare record",
                    other.record_type(),
                    other.name()
                ),
            }),
        }
    }

    /// Deletes by record id (in the zone the id was created in). 404 / "record does
    /// not exist" is success.
    pub async fn delete(&self, id: &DnsRecordId) -> Result<(), EdgeError> {
        let what = format!("deleting {} {}", id.record_type(), id.name());
        let (zone_id, record_id) = self.unpack(id, &what)?;
        let path = format!("/zones/{zone_id}/dns_records/{record_id}");
        let (path, what) = (&path, what.as_str());
        retry(true, || async move {
            let (status, env) = self.call(Method::DELETE, path, None, what).await?;
            if (status.is_success() && env.success)
                || status == StatusCode::NOT_FOUND
                || is_missing(&env.errors)
            {
                return Ok(());
            }
            Err(self.refused(what, status, &env))
        })
        .await
    }

    /// Whether the record id still exists.
    pub async fn exists(&self, id: &DnsRecordId) -> Result<bool, EdgeError> {
        let what = format!("looking up {} {}", id.record_type(), id.name());
        let (zone_id, record_id) = self.unpack(id, &what)?;
        let path = format!("/zones/{zone_id}/dns_records/{record_id}");
        let (path, what) = (&path, what.as_str());
        retry(true, || async move {
            let (status, env) = self.call(Method::GET, path, None, what).await?;
            if status.is_success() && env.success {
                return Ok(true);
            }
            if status == StatusCode::NOT_FOUND || is_missing(&env.errors) {
                return Ok(false);
            }
            Err(self.refused(what, status, &env))
        })
        .await
    }
}
