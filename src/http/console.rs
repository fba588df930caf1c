//! The console of a game, relayed from its agent to a browser or API client over a
//! WebSocket. `zlh serve` connects to the agent with the server's token, which never
//! reaches the client.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use crate::agent::client::AgentClient;
use crate::util::untrusted;

/// Sends the client a last line from zlh (and a Close frame when `close`). A client
/// that already left cannot be told; that is noted in the log, not an error.
async fn tell(socket: &mut WebSocket, label: &str, text: String, close: bool) {
    let mut sent = socket.send(Message::Text(text.into())).await;
    if close && sent.is_ok() {
        sent = socket.send(Message::Close(None)).await;
    }
    if let Err(e) = sent {
        tracing::debug!(server = ?untrusted(label), error = %e, "console client gone before zlh's last line");
    }
}

/// Tells the client there is nothing to stream yet, and closes.
pub async fn no_agent(mut socket: WebSocket, label: &str) {
    let text = format!("[zlh] {label} has no agent yet: nothing to show");
    tell(&mut socket, label, text, false).await;
}

/// Relays the agent's console (recent lines, then live ones, cleaned as `escapes`
/// says) until either side closes, `shutdown` is cancelled or `ended` resolves (the
/// session behind it ended).
pub async fn relay(
    mut browser: WebSocket,
    client: AgentClient,
    label: String,
    escapes: Escapes,
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
            let text = format!("[zlh] the console of {label} is unavailable: {e}");
            tell(&mut browser, &label, text, false).await;
            return;
        }
    };
    loop {
        tokio::select! {
            _ = &mut ended => {
                let text = "[zlh] the session or token of this stream ended: sign in again".to_string();
                tell(&mut browser, &label, text, true).await;
                break;
            }
            _ = shutdown.cancelled() => {
                let text = "[zlh] zlh serve is shutting down; reconnecting…".to_string();
                tell(&mut browser, &label, text, true).await;
                break;
            }
            from_agent = agent.next() => match from_agent {
                Some(Ok(tungstenite::Message::Text(line))) => {
                    let line = clean_line(line.as_str(), escapes);
                    if browser.send(Message::Text(line.into())).await.is_err() {
                        break;
                    }
                }
                Some(Ok(tungstenite::Message::Close(_))) | None => {
                    let text = format!("[zlh] the agent of {label} closed the console");
                    tell(&mut browser, &label, text, false).await;
                    break;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    let text = format!("[zlh] console of {label} lost: {e}");
                    tell(&mut browser, &label, text, false).await;
                    break;
                }
            },
            from_browser = browser.recv() => match from_browser {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                _ => {}
            },
        }
    }
    if let Err(e) = agent.close(None).await {
        tracing::debug!(server = ?untrusted(&label), error = %e, "closing the agent's console stream");
    }
}

/// What a console reader gets of the terminal control sequences games print
/// (flying-squid's `ESC[1G` before each line, colour codes, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Escapes {
    /// Plain text: every control sequence and control character removed.
    Strip,
    /// Plain text plus SGR (colour) sequences, which the UI renders as coloured spans.
    KeepColours,
    /// The bytes as the game wrote them.
    Raw,
}

/// One console line for a reader: control sequences removed (see [`Escapes`]). A
/// return to the first column (`\r`, `ESC[G`, `ESC[1G`) followed by more text
/// overwrites what came before, as on a terminal; a trailing one changes nothing.
pub fn clean_line(line: &str, keep: Escapes) -> String {
    if keep == Escapes::Raw {
        return line.to_string();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(c) = rest.chars().next() {
        rest = &rest[c.len_utf8()..];
        let mut to_column_one = false;
        match c {
            '\x1b' => {
                let (seq, after) = escape_sequence(rest);
                rest = after;
                match seq {
                    Escape::Csi { params, fin: 'm' } if keep == Escapes::KeepColours => {
                        out.push_str("\x1b[");
                        out.push_str(params);
                        out.push('m');
                    }
                    Escape::Csi {
                        params: "" | "1",
                        fin: 'G',
                    } => to_column_one = true,
                    _ => {}
                }
            }
            '\r' => to_column_one = true,
            '\t' => out.push(c),
            c if c.is_control() => {}
            c => out.push(c),
        }
        if to_column_one && !clean_line(rest, Escapes::Strip).is_empty() {
            out.clear();
        }
    }
    out
}

enum Escape<'a> {
    Csi { params: &'a str, fin: char },
    Other,
}

/// The escape sequence after an ESC, and the text after it.
fn escape_sequence(s: &str) -> (Escape<'_>, &str) {
    let mut chars = s.char_indices();
    match chars.next() {
        Some((_, '[')) => {
            // CSI: parameter and intermediate bytes (0x20-0x3F), then a final byte.
            for (i, c) in chars {
                if ('\x40'..='\x7e').contains(&c) {
                    return (
                        Escape::Csi {
                            params: &s[1..i],
                            fin: c,
                        },
                        &s[i + 1..],
                    );
                }
                if !('\x20'..='\x3f').contains(&c) {
                    return (Escape::Other, &s[i..]);
                }
            }
            (Escape::Other, "")
        }
        Some((_, ']')) => {
            // OSC (window titles, links): up to BEL or ESC \.
            for (i, c) in chars {
                if c == '\x07' {
                    return (Escape::Other, &s[i + 1..]);
                }
                if c == '\x1b' {
                    let end = s[i + 1..].strip_prefix('\\').unwrap_or(&s[i + 1..]);
                    return (Escape::Other, end);
                }
            }
            (Escape::Other, "")
        }
        // A two-character escape (ESC 7, ESC c, …).
        Some((_, c)) => (Escape::Other, &s[c.len_utf8()..]),
        None => (Escape::Other, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flying_squids_lines_read_as_text() {
        let line = "> \x1b[1GNovember 28th 2026, 13:14:06 [\x1b[32mINFO\x1b[39m]: Server listening";
        assert_eq!(
            clean_line(line, Escapes::Strip),
            "November 28th 2026, 13:14:06 [INFO]: Server listening"
        );
        assert_eq!(
            clean_line(line, Escapes::KeepColours),
            "November 28th 2026, 13:14:06 [\x1b[32mINFO\x1b[39m]: Server listening"
        );
        assert_eq!(clean_line(line, Escapes::Raw), line);
    }

    #[test]
    fn other_sequences_and_controls_go() {
        assert_eq!(clean_line("a\x1b]0;title\x07b", Escapes::Strip), "ab");
        assert_eq!(clean_line("a\x1b]8;;http://x\x1b\\b", Escapes::Strip), "ab");
        assert_eq!(
            clean_line("a\x1b[2Kb\x1b[?25lc", Escapes::KeepColours),
            "abc"
        );
        assert_eq!(clean_line("x\x07\x08y\tz\x7f", Escapes::Strip), "xy\tz");
        assert_eq!(clean_line("done\r", Escapes::Strip), "done");
        assert_eq!(clean_line("50%\r100%", Escapes::Strip), "100%");
        assert_eq!(clean_line("cut \x1b[", Escapes::Strip), "cut ");
        assert_eq!(clean_line("ünï\x1b[1;31mcödé", Escapes::Strip), "ünïcödé");
    }
}
