//! Client of the ZpackVelocityBridge plugin, which registers backends in a running
//! Velocity proxy (Velocity itself has no HTTP API; `reference/protocols.md` §3.1).
//!
//! # The plugin contract (ours; `docs/edge.md` has the same text)
//!
//! Every request carries `X-Zpack-Secret: hex(sha256(shared secret))` (lower-case
//! hex). Without it, or with another value, the plugin answers
//! `401 {"ok":false,"error":"unauthorized","message":"…"}`. Bodies are JSON.
//!
//! - `POST /zpack/register {"server_name":"mc-alpha","address":"10.0.0.21","port":25565}`
//!   - `200 {"ok":true,"server_name":…,"address":…,"port":…}`: registered, or the
//!     same name was already registered with the same address and port (Velocity
//!     returns the existing server for an identical `ServerInfo`).
//!   - `409 {"ok":false,"error":"already_registered","message":"…","address":…,"port":…}`:
//!     the name is registered with another address. Velocity refuses to re-register a
//!     name with another address, so the client unregisters and registers again.
//!   - `400 {"ok":false,"error":"bad_request","message":"…"}`: malformed body.
//! - `POST /zpack/unregister {"server_name":"mc-alpha"}`
//!   - `200 {"ok":true}`: unregistered.
//!   - `404 {"ok":false,"error":"not_registered","message":"…"}`: nothing by that name
//!     (the client counts this as success: "already gone").
//! - `GET /zpack/list` → `200 {"servers":[{"server_name","address","port"}, …]}`.
//!
//! Server names are case-insensitive in Velocity (lower-cased); zlh uses one
//! canonical lower-case name per server for register and unregister. Registrations
//! live in the proxy's memory only: after a proxy restart `list` is empty and the
//! reconciler registers everything again.

use std::fmt;

use reqwest::{Method, StatusCode};
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::{EdgeError, excerpt, exchange, http_client, retry};

/// The header that carries the hashed shared secret.
pub const SECRET_HEADER: &str = "X-Zpack-Secret";

/// One backend registered in the proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub server_name: String,
    /// The backend's IP (the plugin passes it to `InetSocketAddress`; an IP avoids
    /// JVM DNS caching).
    pub address: String,
    pub port: u16,
}

#[derive(Deserialize)]
struct ListAnswer {
    servers: Vec<Registration>,
}

/// The plugin's error body.
#[derive(Deserialize, Default)]
struct Refusal {
    #[serde(default)]
    error: String,
    #[serde(default)]
    message: String,
}

/// A client of one Velocity bridge.
#[derive(Clone)]
pub struct VelocityClient {
    http: reqwest::Client,
    base: String,
    /// hex(sha256(secret)): what goes on the wire; still a credential, never shown.
    secret_hash: String,
}

impl fmt::Debug for VelocityClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VelocityClient")
            .field("base", &self.base)
            .field("secret", &"<redacted>")
            .finish()
    }
}

impl VelocityClient {
    /// `base_url` is the bridge's root, e.g. `http://10.0.0.7:8081`; `secret` the
    /// shared secret (`ZPACK_SHARED_SECRET` of the proxy), hashed here once.
    pub fn new(base_url: impl Into<String>, secret: &str) -> Self {
        VelocityClient {
            http: http_client(true),
            base: base_url.into().trim_end_matches('/').to_string(),
            secret_hash: secret_header_value(secret),
        }
    }

    /// "Velocity bridge at http://10.0.0.7:8081", for errors and logs.
    pub fn target(&self) -> String {
        format!("Velocity bridge at {}", self.base)
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<serde_json::Value>,
        what: &str,
    ) -> Result<(StatusCode, bytes::Bytes), EdgeError> {
        let mut req = self
            .http
            .request(method, format!("{}{path}", self.base))
            .header(SECRET_HEADER, &self.secret_hash);
        if let Some(b) = &body {
            req = req.json(b);
        }
        let (status, bytes) = exchange(req, &self.target(), what).await?;
        if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
            return Err(EdgeError::Unauthorized {
                target: self.target(),
                what: what.to_string(),
                message: format!(
                    "HTTP {} (is the shared secret the proxy's?)",
                    status.as_u16()
                ),
            });
        }
        Ok((status, bytes))
    }

    fn status_error(&self, what: &str, status: StatusCode, bytes: &[u8]) -> EdgeError {
        let refusal: Refusal = serde_json::from_slice(bytes).unwrap_or_default();
        let message = if refusal.message.is_empty() {
            excerpt(bytes)
        } else {
            refusal.message
        };
        EdgeError::Status {
            target: self.target(),
            what: what.to_string(),
            status: status.as_u16(),
            message,
        }
    }

    /// Registers `server_name` → `address:port`. Idempotent: the same registration
    /// again is success; the same name with another address is moved (unregister,
    /// then register), because Velocity refuses to re-register a name elsewhere.
    pub async fn register(
        &self,
        server_name: &str,
        address: &str,
        port: u16,
    ) -> Result<(), EdgeError> {
        let what = format!("registering {server_name} → {address}:{port}");
        let body = json!({"server_name": server_name, "address": address, "port": port});
        // Registering is idempotent by contract, so transient failures are retried.
        let (body_ref, what_ref) = (&body, &what);
        let (status, bytes) = retry(true, || async move {
            let (body, what) = (body_ref, what_ref.as_str());
            let (status, bytes) = self
                .call(Method::POST, "/zpack/register", Some(body.clone()), what)
                .await?;
            if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                return Err(self.status_error(what, status, &bytes));
            }
            Ok((status, bytes))
        })
        .await?;
        if status.is_success() {
            return Ok(());
        }
        let refusal: Refusal = serde_json::from_slice(&bytes).unwrap_or_default();
        if status == StatusCode::CONFLICT && refusal.error == "already_registered" {
            tracing::info!(
                server_name,
                address,
                port,
                "Velocity has this name at another address; moving it"
            );
            self.unregister(server_name).await?;
            let (status, bytes) = self
                .call(Method::POST, "/zpack/register", Some(body), &what)
                .await?;
            if status.is_success() {
                return Ok(());
            }
            return Err(self.status_error(&what, status, &bytes));
        }
        Err(self.status_error(&what, status, &bytes))
    }

    /// Unregisters `server_name`. Not registered counts as success (teardown:
    /// "already gone").
    pub async fn unregister(&self, server_name: &str) -> Result<(), EdgeError> {
        let what = format!("unregistering {server_name}");
        let body = json!({"server_name": server_name});
        let (body, what) = (&body, what.as_str());
        retry(true, || async move {
            let (status, bytes) = self
                .call(Method::POST, "/zpack/unregister", Some(body.clone()), what)
                .await?;
            if status.is_success() {
                return Ok(());
            }
            let refusal: Refusal = serde_json::from_slice(&bytes).unwrap_or_default();
            if status == StatusCode::NOT_FOUND || refusal.error == "not_registered" {
                return Ok(());
            }
            Err(self.status_error(what, status, &bytes))
        })
        .await
    }

    /// Everything the proxy has registered through the plugin.
    pub async fn list(&self) -> Result<Vec<Registration>, EdgeError> {
        let what = "listing registrations";
        retry(true, || async move {
            let (status, bytes) = self.call(Method::GET, "/zpack/list", None, what).await?;
            if !status.is_success() {
                return Err(self.status_error(what, status, &bytes));
            }
            serde_json::from_slice::<ListAnswer>(&bytes)
                .map(|a| a.servers)
                .map_err(|e| EdgeError::Decode {
                    target: self.target(),
                    what: what.to_string(),
                    reason: format!("{e}; body: {}", excerpt(&bytes)),
                })
        })
        .await
    }
}

/// `hex(sha256(secret))`, lower-case: the value of [`SECRET_HEADER`].
pub fn secret_header_value(secret: &str) -> String {
    Sha256::digest(secret.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
