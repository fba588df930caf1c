//! Edge settings (`[edge]` in zlh.toml). Everything is optional: with no edge
//! configured nothing is published. Secrets are never shown by `Debug`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use crate::util::url::check_ip_url;

/// Cloudflare's public API.
pub const CLOUDFLARE_API_URL: &str = "https://api.cloudflare.com/client/v4";

#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EdgeConfig {
    #[serde(default)]
    pub velocity: Option<VelocityConfig>,
    #[serde(default)]
    pub dns: Option<DnsConfig>,
    #[serde(default)]
    pub traefik: Option<TraefikConfig>,
    /// Accept host names in internal endpoint URLs (opting out of DESIGN invariant 7).
    #[serde(default)]
    pub allow_hostnames: bool,
}

/// The ZpackVelocityBridge plugin and what players' DNS points at for Minecraft.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VelocityConfig {
    /// The bridge's root, by IP: `http://10.0.0.7:8081`.
    pub url: String,
    /// The shared secret (`ZPACK_SHARED_SECRET` of the proxy). Never logged or shown.
    #[serde(serialize_with = "serialize_redacted")]
    pub secret: String,
    /// The address Minecraft servers' A records point at (the proxy's public IP).
    pub edge_ip: Ipv4Addr,
    /// The host name players' `_minecraft._tcp` SRV records point at.
    pub srv_target: String,
    /// The port in those SRV records (the proxy's listening port).
    #[serde(default = "default_srv_port")]
    pub srv_port: u16,
}

fn default_srv_port() -> u16 {
    25565
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DnsProvider {
    Technitium,
    Cloudflare,
}

#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DnsConfig {
    pub provider: DnsProvider,
    /// Technitium: the web service root by IP (`http://10.0.0.53:5380`), required.
    /// Cloudflare: defaults to [`CLOUDFLARE_API_URL`].
    #[serde(default)]
    pub url: Option<String>,
    /// API token (Technitium: a non-expiring API token; Cloudflare: Zone.DNS:Edit).
    /// Never logged or shown.
    #[serde(serialize_with = "serialize_redacted")]
    pub token: String,
    /// The zone players' names live in (`games.example.com`); records are
    /// `<server>.<zone>`. For Technitium also the zone records are written to.
    pub zone: String,
    /// Cloudflare's zone id (required for Cloudflare).
    #[serde(default)]
    pub zone_id: Option<String>,
    #[serde(default = "default_ttl")]
    pub ttl: u32,
}

fn default_ttl() -> u32 {
    60
}

impl DnsConfig {
    /// The effective API URL.
    pub fn api_url(&self) -> String {
        match (&self.url, self.provider) {
            (Some(u), _) => u.clone(),
            (None, DnsProvider::Cloudflare) => CLOUDFLARE_API_URL.to_string(),
            // Refused by `validate`; an empty URL makes every call fail loudly.
            (None, DnsProvider::Technitium) => String::new(),
        }
    }
}

/// The Traefik HTTP-provider document zlh serves (`GET /traefik/config`).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraefikConfig {
    /// The token Traefik presents when polling. Never logged or shown.
    #[serde(serialize_with = "serialize_redacted")]
    pub token: String,
    /// The address non-Minecraft games' A records point at (Traefik's public IP).
    pub edge_ip: Ipv4Addr,
}

/// A setting that cannot work, naming its key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct EdgeConfigError {
    pub key: String,
    pub message: String,
}

fn invalid(key: &str, message: impl Into<String>) -> EdgeConfigError {
    EdgeConfigError {
        key: key.to_string(),
        message: message.into(),
    }
}

fn is_hostname(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.parse::<IpAddr>().is_err()
        && s.trim_end_matches('.').split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

impl EdgeConfig {
    /// Checks the settings. `Ok` carries warnings to log at every start (host names
    /// accepted because of `allow_hostnames`); `Err` names the first bad key.
    pub fn validate(&self) -> Result<Vec<String>, EdgeConfigError> {
        let mut warnings = Vec::new();
        // Internal endpoints by IP (invariant 7): a DNS outage must not take the
        // control plane's own edge calls down with it.
        let mut internal_url = |key: &str, url: &str| -> Result<(), EdgeConfigError> {
            check_ip_url(url, false).or_else(|message| {
                if self.allow_hostnames {
                    check_ip_url(url, true).map_err(|m| invalid(key, m))?;
                    warnings.push(format!(
                        "{key} = '{url}' names a host, not an IP: accepted because edge.allow_hostnames is set; the control plane now depends on DNS"
                    ));
                    Ok(())
                } else {
                    Err(invalid(key, message))
                }
            })
        };
        if let Some(v) = &self.velocity {
            internal_url("edge.velocity.url", &v.url)?;
            if v.secret.trim().is_empty() {
                return Err(invalid("edge.velocity.secret", "is empty"));
            }
            if !is_hostname(&v.srv_target) {
                return Err(invalid(
                    "edge.velocity.srv_target",
                    format!(
                        "'{}' must be a host name (an SRV target cannot be an IP)",
                        v.srv_target
                    ),
                ));
            }
            if v.srv_port == 0 {
                return Err(invalid(
                    "edge.velocity.srv_port",
                    "must be between 1 and 65535",
                ));
            }
        }
        if let Some(d) = &self.dns {
            match d.provider {
                DnsProvider::Technitium => {
                    let Some(url) = &d.url else {
                        return Err(invalid("edge.dns.url", "is required for technitium"));
                    };
                    internal_url("edge.dns.url", url)?;
                    if d.zone_id.is_some() {
                        return Err(invalid("edge.dns.zone_id", "is for cloudflare only"));
                    }
                }
                DnsProvider::Cloudflare => {
                    // Cloudflare's API is an external SaaS endpoint reached by name,
                    // not a control-plane endpoint: invariant 7 does not apply, so a
                    // host name (the default) is fine. Only the scheme is checked.
                    if let Some(url) = &d.url
                        && check_ip_url(url, true).is_err()
                    {
                        return Err(invalid(
                            "edge.dns.url",
                            format!("'{url}' must start with http:// or https://"),
                        ));
                    }
                    match &d.zone_id {
                        Some(z)
                            if !z.is_empty() && z.chars().all(|c| c.is_ascii_alphanumeric()) => {}
                        Some(z) => {
                            return Err(invalid(
                                "edge.dns.zone_id",
                                format!("'{z}' is not a Cloudflare zone id"),
                            ));
                        }
                        None => {
                            return Err(invalid("edge.dns.zone_id", "is required for cloudflare"));
                        }
                    }
                    // 1 = automatic; otherwise Cloudflare's minimum is 60 (30 on Enterprise).
                    if d.ttl != 1 && !(30..=86_400).contains(&d.ttl) {
                        return Err(invalid(
                            "edge.dns.ttl",
                            "must be 1 (automatic) or between 30 and 86400",
                        ));
                    }
                }
            }
            if d.token.trim().is_empty() {
                return Err(invalid("edge.dns.token", "is empty"));
            }
            if !is_hostname(&d.zone) {
                return Err(invalid(
                    "edge.dns.zone",
                    format!("'{}' is not a DNS zone name", d.zone),
                ));
            }
            if !(1..=86_400).contains(&d.ttl) {
                return Err(invalid("edge.dns.ttl", "must be between 1 and 86400"));
            }
        }
        if let Some(t) = &self.traefik
            && t.token.trim().len() < 16
        {
            return Err(invalid(
                "edge.traefik.token",
                "must be at least 16 characters",
            ));
        }
        Ok(warnings)
    }
}

/// Secrets serialize as `<redacted>`: the serialized config is what
/// `zlh config check` prints.
fn serialize_redacted<S: serde::Serializer>(s: &str, ser: S) -> Result<S::Ok, S::Error> {
    ser.serialize_str(redacted(s))
}

fn redacted(s: &str) -> &'static str {
    if s.is_empty() {
        "<empty>"
    } else {
        "<redacted>"
    }
}

impl fmt::Debug for EdgeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EdgeConfig")
            .field("velocity", &self.velocity)
            .field("dns", &self.dns)
            .field("traefik", &self.traefik)
            .field("allow_hostnames", &self.allow_hostnames)
            .finish()
    }
}

impl fmt::Debug for VelocityConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VelocityConfig")
            .field("url", &self.url)
            .field("secret", &redacted(&self.secret))
            .field("edge_ip", &self.edge_ip)
            .field("srv_target", &self.srv_target)
            .field("srv_port", &self.srv_port)
            .finish()
    }
}

impl fmt::Debug for DnsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DnsConfig")
            .field("provider", &self.provider)
            .field("url", &self.url)
            .field("token", &redacted(&self.token))
            .field("zone", &self.zone)
            .field("zone_id", &self.zone_id)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl fmt::Debug for TraefikConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TraefikConfig")
            .field("token", &redacted(&self.token))
            .field("edge_ip", &self.edge_ip)
            .finish()
    }
}
