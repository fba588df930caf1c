//! The control plane's client for an agent: typed calls with timeouts, retries only
//! for idempotent calls, and errors that say which agent and what failed.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use super::{
    AgentStatus, AgentVersion, ConfigAccepted, ConfigPayload, ConsoleCommand, UpgradeRequest,
    UpgradeStatus,
};

#[derive(Debug, thiserror::Error)]
pub enum AgentClientError {
    #[error("{agent}: {what}: cannot reach the agent: {reason}")]
    Unreachable {
        agent: String,
        what: &'static str,
        reason: String,
    },
    #[error("{agent}: {what}: the agent refused our token (401)")]
    Unauthorized { agent: String, what: &'static str },
    #[error("{agent}: {what}: HTTP {status}: {message}")]
    Status {
        agent: String,
        what: &'static str,
        status: u16,
        message: String,
    },
    #[error("{agent}: {what}: unexpected answer: {reason}")]
    Decode {
        agent: String,
        what: &'static str,
        reason: String,
    },
}

impl AgentClientError {
    /// Whether trying again later may help (the agent is down, busy or restarting).
    pub fn is_transient(&self) -> bool {
        match self {
            AgentClientError::Unreachable { .. } => true,
            AgentClientError::Status { status, .. } => *status >= 500,
            _ => false,
        }
    }
}

/// A client for one agent.
#[derive(Clone)]
pub struct AgentClient {
    http: reqwest::Client,
    base: String,
    token: String,
    label: String,
}

impl std::fmt::Debug for AgentClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AgentClient")
            .field("base", &self.base)
            .field("label", &self.label)
            .finish()
    }
}

const ATTEMPTS: u32 = 3;

impl AgentClient {
    /// `base` is `http://<ip>:<port>`; `label` names the agent in errors
    /// (e.g. "agent of server 42").
    pub fn new(
        base: impl Into<String>,
        token: impl Into<String>,
        label: impl Into<String>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            // Below zlh's listeners' idle timeout (5 s): a pooled connection is never
            // one the other side is closing, which would fail the next request.
            .pool_idle_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .unwrap_or_default();
        AgentClient {
            http,
            base: base.into().trim_end_matches('/').to_string(),
            token: token.into(),
            label: label.into(),
        }
    }

    fn agent(&self) -> String {
        format!("{} at {}", self.label, self.base)
    }

    /// The WebSocket URL of the console stream.
    pub fn console_stream_url(&self) -> String {
        format!("{}/console/stream", self.base.replacen("http", "ws", 1))
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        what: &'static str,
        timeout: Duration,
        idempotent: bool,
    ) -> Result<(StatusCode, bytes::Bytes), AgentClientError> {
        let tries = if idempotent { ATTEMPTS } else { 1 };
        let mut pause = Duration::from_millis(200);
        let mut last = None;
        for attempt in 1..=tries {
            let mut req = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .bearer_auth(&self.token)
                .timeout(timeout);
            if let Some(b) = body {
                req = req.json(b);
            }
            let result = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(bytes) => self.check(status, bytes, what),
                        Err(e) => Err(AgentClientError::Unreachable {
                            agent: self.agent(),
                            what,
                            reason: e.to_string(),
                        }),
                    }
                }
                Err(e) => Err(AgentClientError::Unreachable {
                    agent: self.agent(),
                    what,
                    reason: if e.is_timeout() {
                        format!("no answer within {timeout:?}")
                    } else {
                        e.to_string()
                    },
                }),
            };
            match result {
                Err(e) if e.is_transient() && attempt < tries => {
                    last = Some(e);
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
        Err(last.unwrap_or(AgentClientError::Unreachable {
            agent: self.agent(),
            what,
            reason: "no attempt made".into(),
        }))
    }

    /// One request of the agent's files API (`/files{endpoint}`), answered as it comes:
    /// bodies stream both ways (no overall timeout: a 2 GiB download takes what it
    /// takes) and the agent's own answers, 4xx included, reach the caller unchanged.
    /// Only an unreachable agent or a refused token is an error here.
    pub async fn files(
        &self,
        method: Method,
        endpoint: &str,
        path: Option<&str>,
        headers: reqwest::header::HeaderMap,
        body: Option<reqwest::Body>,
    ) -> Result<reqwest::Response, AgentClientError> {
        const WHAT: &str = "files";
        let mut req = self
            .http
            .request(method, format!("{}/files{endpoint}", self.base))
            .bearer_auth(&self.token)
            .headers(headers);
        if let Some(p) = path {
            req = req.query(&[("path", p)]);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| AgentClientError::Unreachable {
                agent: self.agent(),
                what: WHAT,
                reason: e.to_string(),
            })?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(AgentClientError::Unauthorized {
                agent: self.agent(),
                what: WHAT,
            });
        }
        Ok(resp)
    }

    fn check(
        &self,
        status: StatusCode,
        bytes: bytes::Bytes,
        what: &'static str,
    ) -> Result<(StatusCode, bytes::Bytes), AgentClientError> {
        if status == StatusCode::UNAUTHORIZED {
            return Err(AgentClientError::Unauthorized {
                agent: self.agent(),
                what,
            });
        }
        if status.is_success() || status == StatusCode::SERVICE_UNAVAILABLE && what == "readiness" {
            return Ok((status, bytes));
        }
        let message = serde_json::from_slice::<serde_json::Value>(&bytes)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(String::from))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes).trim().to_string());
        Err(AgentClientError::Status {
            agent: self.agent(),
            what,
            status: status.as_u16(),
            message,
        })
    }

    fn decode<T: DeserializeOwned>(
        &self,
        bytes: &[u8],
        what: &'static str,
    ) -> Result<T, AgentClientError> {
        serde_json::from_slice(bytes).map_err(|e| AgentClientError::Decode {
            agent: self.agent(),
            what,
            reason: e.to_string(),
        })
    }

    /// `GET /health` (no token needed, but sent anyway).
    pub async fn health(&self) -> Result<(), AgentClientError> {
        self.send(
            Method::GET,
            "/health",
            None,
            "health check",
            Duration::from_secs(5),
            true,
        )
        .await
        .map(|_| ())
    }

    pub async fn status(&self) -> Result<AgentStatus, AgentClientError> {
        let (_, b) = self
            .send(
                Method::GET,
                "/status",
                None,
                "reading status",
                Duration::from_secs(10),
                true,
            )
            .await?;
        self.decode(&b, "reading status")
    }

    pub async fn ready(&self) -> Result<bool, AgentClientError> {
        let (status, _) = self
            .send(
                Method::GET,
                "/ready",
                None,
                "readiness",
                Duration::from_secs(10),
                true,
            )
            .await?;
        Ok(status.is_success())
    }

    pub async fn version(&self) -> Result<AgentVersion, AgentClientError> {
        let (_, b) = self
            .send(
                Method::GET,
                "/version",
                None,
                "reading version",
                Duration::from_secs(10),
                true,
            )
            .await?;
        self.decode(&b, "reading version")
    }

    /// `POST /upgrade` (additive): the agent downloads, verifies and restarts into the
    /// binary. An agent without it answers 404 (`Status { status: 404, .. }`).
    pub async fn upgrade(&self, req: &UpgradeRequest) -> Result<UpgradeStatus, AgentClientError> {
        let body = serde_json::to_value(req).map_err(|e| AgentClientError::Decode {
            agent: self.agent(),
            what: "starting an upgrade",
            reason: e.to_string(),
        })?;
        let (_, b) = self
            .send(
                Method::POST,
                "/upgrade",
                Some(&body),
                "starting an upgrade",
                Duration::from_secs(30),
                false,
            )
            .await?;
        self.decode(&b, "starting an upgrade")
    }

    /// `GET /upgrade`: how the agent's self-upgrade is going.
    pub async fn upgrade_status(&self) -> Result<UpgradeStatus, AgentClientError> {
        let (_, b) = self
            .send(
                Method::GET,
                "/upgrade",
                None,
                "reading the upgrade status",
                Duration::from_secs(10),
                true,
            )
            .await?;
        self.decode(&b, "reading the upgrade status")
    }

    /// `POST /config`: idempotent by `install_id`, so it is retried.
    pub async fn configure(
        &self,
        payload: &ConfigPayload,
    ) -> Result<ConfigAccepted, AgentClientError> {
        let body = serde_json::to_value(payload).map_err(|e| AgentClientError::Decode {
            agent: self.agent(),
            what: "sending config",
            reason: e.to_string(),
        })?;
        let (_, b) = self
            .send(
                Method::POST,
                "/config",
                Some(&body),
                "sending config",
                Duration::from_secs(30),
                true,
            )
            .await?;
        self.decode(&b, "sending config")
    }

    pub async fn start(&self) -> Result<ConfigAccepted, AgentClientError> {
        let (_, b) = self
            .send(
                Method::POST,
                "/start",
                None,
                "starting the game",
                Duration::from_secs(30),
                false,
            )
            .await?;
        self.decode(&b, "starting the game")
    }

    /// `POST /stop`: returns once the game has stopped (it may take the agent's grace periods).
    pub async fn stop(&self) -> Result<(), AgentClientError> {
        self.send(
            Method::POST,
            "/stop",
            None,
            "stopping the game",
            Duration::from_secs(180),
            false,
        )
        .await
        .map(|_| ())
    }

    pub async fn restart(&self) -> Result<ConfigAccepted, AgentClientError> {
        let (_, b) = self
            .send(
                Method::POST,
                "/restart",
                None,
                "restarting the game",
                Duration::from_secs(180),
                false,
            )
            .await?;
        self.decode(&b, "restarting the game")
    }

    /// `GET /console/tail?lines=N`: the game's most recent console lines.
    pub async fn console_tail(&self, lines: usize) -> Result<Vec<String>, AgentClientError> {
        let path = format!("/console/tail?lines={lines}");
        let (_, b) = self
            .send(
                Method::GET,
                &path,
                None,
                "reading the console",
                Duration::from_secs(10),
                true,
            )
            .await?;
        let tail: crate::agent::ConsoleTail = self.decode(&b, "reading the console")?;
        Ok(tail.lines)
    }

    /// Writes one line to the game's console (not retried: a command must not run twice).
    pub async fn console_command(&self, command: &str) -> Result<(), AgentClientError> {
        let body = serde_json::to_value(ConsoleCommand {
            command: command.to_string(),
        })
        .unwrap_or_default();
        self.send(
            Method::POST,
            "/console/command",
            Some(&body),
            "sending a console command",
            Duration::from_secs(10),
            false,
        )
        .await
        .map(|_| ())
    }

    /// `GET /properties` (additive): the game's `server.properties` and whether the
    /// running game needs a restart to see it.
    pub async fn properties(&self) -> Result<super::PropertiesFile, AgentClientError> {
        let (_, b) = self
            .send(
                Method::GET,
                "/properties",
                None,
                "reading server.properties",
                Duration::from_secs(10),
                true,
            )
            .await?;
        self.decode(&b, "reading server.properties")
    }

    /// `PUT /properties` (additive): sets keys, keeping every other byte. Setting the
    /// same keys twice is harmless, so it is retried.
    pub async fn set_properties(
        &self,
        update: &super::PropertiesUpdate,
    ) -> Result<super::PropertiesFile, AgentClientError> {
        let body = serde_json::to_value(update).unwrap_or_default();
        let (_, b) = self
            .send(
                Method::PUT,
                "/properties",
                Some(&body),
                "writing server.properties",
                Duration::from_secs(10),
                true,
            )
            .await?;
        self.decode(&b, "writing server.properties")
    }

    /// `GET /players[?list=1]` (additive): online players and the game's lists.
    pub async fn players(&self, ask_list: bool) -> Result<super::PlayersView, AgentClientError> {
        let path = if ask_list {
            "/players?list=1"
        } else {
            "/players"
        };
        let (_, b) = self
            .send(
                Method::GET,
                path,
                None,
                "reading players",
                Duration::from_secs(15),
                !ask_list,
            )
            .await?;
        self.decode(&b, "reading players")
    }
}
