//! The console of a game, relayed from its agent to a browser or API client over a
//! WebSocket. `zlh serve` connects to the agent with the server's token, which never
//! reaches the client.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::agent::client::AgentClient;
use crate::util::untrusted;

/// Tells the client there is nothing to stream yet, and closes.
pub async fn no_agent(mut socket: WebSocket, label: &str) {
    let _ = socket
        .send(Message::Text(
            format!("[zlh] {label} has no agent yet: nothing to show").into(),
        ))
        .await;
}

/// Relays the agent's console (recent lines, then live ones) until either side closes,
/// `shutdown` is cancelled or `ended` resolves (the session behind it ended).
pub async fn relay(
    mut browser: WebSocket,
    client: AgentClient,
    label: String,
    shutdown: CancellationToken,
    ended: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(ended);
    use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest};
    let url = client.console_stream_url();
    let request = url.as_str().into_client_request().map(|mut r| {
        if let Ok(v) = format!("Bearer {}", client.token()).parse() {
            r.headers_mut().insert("authorization", v);
        }
        r
    });
    let connected = match request {
        Ok(r) => tokio::time::timeout(Duration::from_secs(10), tokio_tungstenite::connect_async(r))
            .await
            .map_err(|_| "timed out".to_string())
            .and_then(|r| r.map_err(|e| e.to_string())),
        Err(e) => Err(e.to_string()),
    };
    let mut agent = match connected {
        Ok((stream, _)) => stream,
        Err(e) => {
            tracing::warn!(server = ?untrusted(&label), error = ?untrusted(&e), "console relay: agent unreachable");
            let _ = browser
                .send(Message::Text(
                    format!("[zlh] the console of {label} is unavailable: {e}").into(),
                ))
                .await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut ended => {
                let _ = browser
                    .send(Message::Text("[zlh] the session or token of this stream ended: sign in again".into()))
                    .await;
                let _ = browser.send(Message::Close(None)).await;
                break;
            }
            _ = shutdown.cancelled() => {
                let _ = browser
                    .send(Message::Text("[zlh] zlh serve is shutting down; reconnecting…".into()))
                    .await;
                let _ = browser.send(Message::Close(None)).await;
                break;
            }
            from_agent = agent.next() => match from_agent {
                Some(Ok(tungstenite::Message::Text(line))) => {
                    if browser.send(Message::Text(line.as_str().into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(tungstenite::Message::Close(_))) | None => {
                    let _ = browser
                        .send(Message::Text(format!("[zlh] the agent of {label} closed the console").into()))
                        .await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let _ = browser
                        .send(Message::Text(format!("[zlh] console of {label} lost: {e}").into()))
                        .await;
                    break;
                }
            },
            from_browser = browser.recv() => match from_browser {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            },
        }
    }
    let _ = agent.close(None).await;
}
