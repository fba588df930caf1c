//! Clients of the data-plane edge (DESIGN §8): the ZpackVelocityBridge plugin and the
//! DNS providers (Technitium, Cloudflare). They only talk to their targets; what to
//! publish, the edge records table and the reconciler live elsewhere.
//!
//! Every error names its target ("Velocity bridge at http://10.0.0.7:8081",
//! "Technitium at http://10.0.0.53:5380", "Cloudflare zone abc…") and what was being
//! done. Tokens and secrets never appear in errors or `Debug` output.

pub mod config;
pub mod dns;
pub mod velocity;

use std::time::Duration;

use reqwest::{RequestBuilder, StatusCode};

pub use config::{
    DnsConfig, DnsProvider, EdgeConfig, EdgeConfigError, TraefikConfig, VelocityConfig,
};
pub use dns::{CloudflareClient, DnsClient, DnsRecordId, DnsValue, TechnitiumClient};
pub use velocity::{Registration, VelocityClient};

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("{target}: {what}: cannot reach it: {reason}")]
    Unreachable {
        target: String,
        what: String,
        reason: String,
    },
    #[error("{target}: {what}: our credentials were refused: {message}")]
    Unauthorized {
        target: String,
        what: String,
        message: String,
    },
    #[error("{target}: {what}: HTTP {status}: {message}")]
    Status {
        target: String,
        what: String,
        status: u16,
        message: String,
    },
    /// The API answered and said no (Technitium `status:error`, Cloudflare
    /// `success:false` on a 2xx, or a bridge refusal that is not an HTTP error).
    #[error("{target}: {what}: refused: {message}")]
    Rejected {
        target: String,
        what: String,
        message: String,
    },
    #[error("{target}: {what}: unexpected answer: {reason}")]
    Decode {
        target: String,
        what: String,
        reason: String,
    },
    /// The caller asked for something this client cannot do (e.g. a Cloudflare
    /// record identity handed to the Technitium client).
    #[error("{target}: {what}: {reason}")]
    Invalid {
        target: String,
        what: String,
        reason: String,
    },
}

impl EdgeError {
    /// Whether trying again later may help: the target is down or overloaded
    /// (network errors, timeouts, HTTP 5xx and 429). Credentials, bad requests and
    /// API refusals are permanent until someone changes something.
    pub fn is_transient(&self) -> bool {
        match self {
            EdgeError::Unreachable { .. } => true,
            EdgeError::Status { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }
}

/// How long one request may take. Edge APIs answer in milliseconds when healthy; a
/// publish step must not hang a job for minutes when one is not.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts of an idempotent call (transient failures only).
const ATTEMPTS: u32 = 3;

/// `no_proxy` for control-plane endpoints (reached by IP on the internal network);
/// an external SaaS API keeps the system proxy settings.
pub(crate) fn http_client(internal: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(REQUEST_TIMEOUT);
    if internal {
        b = b.no_proxy();
    }
    // Building only fails on a broken TLS backend; the default client has the same
    // settings minus the timeouts, which is the better degraded mode than a panic.
    b.build().unwrap_or_default()
}

/// One HTTP exchange: the status and body, or `Unreachable`.
pub(crate) async fn exchange(
    req: RequestBuilder,
    target: &str,
    what: &str,
) -> Result<(StatusCode, bytes::Bytes), EdgeError> {
    let unreachable = |e: reqwest::Error| EdgeError::Unreachable {
        target: target.to_string(),
        what: what.to_string(),
        reason: if e.is_timeout() {
            format!("no answer within {REQUEST_TIMEOUT:?}")
        } else {
            // Without the URL: it is ours (in `target`), and a query could carry data.
            e.without_url().to_string()
        },
    };
    let resp = req.send().await.map_err(unreachable)?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(unreachable)?;
    Ok((status, body))
}

/// Runs `op` up to [`ATTEMPTS`] times while it fails transiently, backing off.
/// Only for idempotent calls.
pub(crate) async fn retry<T, F, Fut>(idempotent: bool, mut op: F) -> Result<T, EdgeError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EdgeError>>,
{
    let tries = if idempotent { ATTEMPTS } else { 1 };
    let mut pause = Duration::from_millis(200);
    let mut attempt = 1;
    loop {
        match op().await {
            Err(e) if e.is_transient() && attempt < tries => {
                tracing::debug!(error = %e, attempt, "edge call failed transiently; retrying");
                tokio::time::sleep(pause).await;
                pause *= 2;
                attempt += 1;
            }
            other => return other,
        }
    }
}

/// A short, single-line excerpt of a body for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    let mut out: String = text.chars().take(300).collect();
    if text.chars().count() > 300 {
        out.push('…');
    }
    out.replace(['\n', '\r'], " ")
}
