//! Additive endpoints over the game's own files: `GET|PUT /properties` (the
//! `server.properties` editor's back end) and `GET /players` (who is online and the
//! game's JSON lists). The lists are only ever written by the game itself.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{PAYLOAD_FILE, Shared, error, install};
use crate::agent::properties::{MANAGED, Properties};
use crate::agent::{
    AgentState, BannedIp, ConfigPayload, ListedPlayer, PlayersView, PropertiesFile,
    PropertiesUpdate, slp,
};

pub(crate) const PROPERTIES: &str = "server.properties";

fn server_dir(shared: &Shared) -> PathBuf {
    shared.opts.dir.join("server")
}

fn payload(shared: &Shared) -> Option<ConfigPayload> {
    std::fs::read(shared.opts.dir.join(PAYLOAD_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
}

/// The sha256 of `server.properties` (of an empty text when there is none).
pub(crate) async fn properties_hash(server_dir: &Path) -> Result<String, std::io::Error> {
    let bytes = match tokio::fs::read(server_dir.join(PROPERTIES)).await {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e),
    };
    Ok(crate::util::hex(&Sha256::digest(&bytes)))
}

/// Keys zlh sets itself: the fixed list, and whatever the payload seeds except the
/// motd (seeded as a default that is the operator's to change).
fn managed_keys(p: Option<&ConfigPayload>) -> Vec<String> {
    let mut keys: Vec<String> = MANAGED.iter().map(|k| k.to_string()).collect();
    if let Some(p) = p {
        for k in p.properties.keys() {
            if k != "motd" && !keys.contains(k) {
                keys.push(k.clone());
            }
        }
    }
    keys
}

async fn read_properties(shared: &Shared) -> Result<PropertiesFile, String> {
    let dir = server_dir(shared);
    let path = dir.join(PROPERTIES);
    let (text, exists) = match tokio::fs::read(&path).await {
        Ok(b) => (
            String::from_utf8(b).map_err(|_| format!("{} is not UTF-8 text", path.display()))?,
            true,
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => (String::new(), false),
        Err(e) => return Err(format!("reading {}: {e}", path.display())),
    };
    // The game read the file it started with; the hash taken when it became ready
    // (after the game's own rewrite of the file) says whether disk differs now.
    let started = shared
        .snapshot()
        .filter(|s| s.process_running)
        .and_then(|s| s.properties_sha256);
    let restart_needed = match started {
        Some(h) => h != crate::util::hex(&Sha256::digest(text.as_bytes())),
        None => false,
    };
    Ok(PropertiesFile {
        text,
        exists,
        managed: managed_keys(payload(shared).as_ref()),
        restart_needed,
    })
}

pub(crate) async fn get_properties(State(shared): State<Arc<Shared>>) -> Response {
    match read_properties(&shared).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

/// Sets keys through the editor (every other byte kept) and an atomic write. The
/// control plane validates types; the agent still refuses keys zlh manages.
pub(crate) async fn put_properties(
    State(shared): State<Arc<Shared>>,
    body: axum::body::Bytes,
) -> Response {
    let update: PropertiesUpdate = match serde_json::from_slice(&body) {
        Ok(u) => u,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("expected {{\"set\": {{key: value}}}}: {e}"),
            );
        }
    };
    let managed = managed_keys(payload(&shared).as_ref());
    for (k, v) in &update.set {
        if managed.contains(k) {
            return error(
                StatusCode::BAD_REQUEST,
                "read_only",
                format!("{k}: zlh manages this key"),
            );
        }
        if let Err(why) = crate::agent::properties::validate(k, v) {
            return error(
                StatusCode::BAD_REQUEST,
                "bad_request",
                format!("{k}: {why}"),
            );
        }
    }
    // One writer at a time: two edits must not lose one another's keys.
    let _guard = shared.properties_lock.lock().await;
    let current = match read_properties(&shared).await {
        Ok(p) => p,
        Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    };
    let mut props = Properties::parse(&current.text);
    for (k, v) in &update.set {
        props.set(k, v);
    }
    if props.text() != current.text {
        let path = server_dir(&shared).join(PROPERTIES);
        if let Err(e) = install::write_atomic(&path, props.text().as_bytes()).await {
            return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
        }
    }
    match read_properties(&shared).await {
        Ok(p) => Json(p).into_response(),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e),
    }
}

#[derive(Debug, Deserialize)]
pub(crate) struct PlayersQuery {
    /// `list=1`: ask the running game with its `list` command for the names online.
    #[serde(default)]
    list: Option<String>,
}

fn read_list<T: serde::de::DeserializeOwned>(
    dir: &Path,
    file: &str,
    errors: &mut Vec<String>,
) -> Vec<T> {
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(b) if b.iter().all(|c| c.is_ascii_whitespace()) => Vec::new(),
        Ok(b) => serde_json::from_slice(&b).unwrap_or_else(|e| {
            errors.push(format!("{file}: {e}"));
            Vec::new()
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(format!("{file}: {e}"));
            Vec::new()
        }
    }
}

/// `There are 1 of a max of 20 players online: Alice` → (1, 20, [Alice]).
pub(crate) fn parse_list_line(line: &str) -> Option<(u32, u32, Vec<String>)> {
    let rest = &line[line.find("There are ")? + "There are ".len()..];
    let (online, rest) = rest.split_once(" of a max of ")?;
    let (max, rest) = rest.split_once(" players online")?;
    let names = rest
        .strip_prefix(':')
        .map(|n| {
            n.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    Some((online.trim().parse().ok()?, max.trim().parse().ok()?, names))
}

/// Sends `list` and waits briefly for the game's answer on the console.
async fn ask_list(shared: &Shared) -> Option<(u32, u32, Vec<String>)> {
    let (_, mut live) = shared.console.subscribe(0);
    let sent = super::ask(shared, |tx| super::manager::Op::Command("list".into(), tx)).await;
    if !matches!(sent, Some(Ok(()))) {
        return None;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        match tokio::time::timeout_at(deadline, live.recv()).await {
            Ok(Ok(line)) => {
                if let Some(found) = parse_list_line(&line) {
                    return Some(found);
                }
            }
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            _ => return None,
        }
    }
}

pub(crate) async fn get_players(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<PlayersQuery>,
) -> Response {
    let dir = server_dir(&shared);
    let mut errors = Vec::new();
    let whitelist = read_list(&dir, "whitelist.json", &mut errors);
    let ops = read_list(&dir, "ops.json", &mut errors);
    let banned_players = read_list::<ListedPlayer>(&dir, "banned-players.json", &mut errors);
    let banned_ips = read_list::<BannedIp>(&dir, "banned-ips.json", &mut errors);
    let running = shared
        .snapshot()
        .is_some_and(|s| s.ready && s.state == AgentState::Running);
    let mut view = PlayersView {
        running,
        online: None,
        max: None,
        names: Vec::new(),
        names_source: None,
        whitelist,
        ops,
        banned_players,
        banned_ips,
        errors,
    };
    if running {
        if let Some(p) = payload(&shared) {
            let r = p.readiness();
            let addr = std::net::SocketAddr::new(
                r.host.unwrap_or(std::net::Ipv4Addr::LOCALHOST.into()),
                r.port,
            );
            if let Ok(status) = slp::status(addr, Duration::from_secs(3)).await {
                let players = &status["players"];
                view.online = players["online"].as_u64().map(|n| n as u32);
                view.max = players["max"].as_u64().map(|n| n as u32);
                if let Some(sample) = players["sample"].as_array() {
                    view.names = sample
                        .iter()
                        .filter_map(|s| s["name"].as_str().map(String::from))
                        .collect();
                    view.names_source = Some("ping_sample".into());
                }
            }
        }
        if matches!(q.list.as_deref(), Some("1" | "true"))
            && let Some((online, max, names)) = ask_list(&shared).await
        {
            view.online = Some(online);
            view.max = Some(max);
            view.names = names;
            view.names_source = Some("list".into());
        }
    }
    Json(view).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_lines_read_like_vanilla() {
        assert_eq!(
            parse_list_line(
                "[10:00:00] [Server thread/INFO]: There are 2 of a max of 20 players online: Alice, Bob"
            ),
            Some((2, 20, vec!["Alice".into(), "Bob".into()]))
        );
        assert_eq!(
            parse_list_line("There are 0 of a max of 5 players online: "),
            Some((0, 5, vec![]))
        );
        assert_eq!(
            parse_list_line("There are 0 of a max of 5 players online"),
            Some((0, 5, vec![]))
        );
        assert_eq!(parse_list_line("> list"), None);
    }
}
