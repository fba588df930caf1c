//! Servers: the status machine with an event per transition, transactional and
//! constraint-backed VMID and port allocation, idempotent creation, archiving.

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::nodes::{self, Node};
use super::templates::{self, Template};
use super::users::User;
use super::{DomainError, invalid, is_dns_label, random_secret};
use crate::db::now_ms;
use crate::queue::{self, NewJob};

/// Job kinds acting on servers; all run in the lane `server:<id>`.
pub const JOB_PROVISION: &str = "server.provision";
pub const JOB_START: &str = "server.start";
pub const JOB_STOP: &str = "server.stop";
pub const JOB_RESTART: &str = "server.restart";
pub const JOB_DELETE: &str = "server.delete";

/// The queue lane of every job acting on a server: one at a time.
pub fn lane(server_id: i64) -> String {
    format!("server:{server_id}")
}

/// How long a server may stay in a transitional status before it counts as stuck.
pub const PROVISION_DEADLINE_MS: i64 = 30 * 60 * 1000;
pub const ACTION_DEADLINE_MS: i64 = 10 * 60 * 1000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    Pending,
    Provisioning,
    Installing,
    Starting,
    Running,
    Stopping,
    Stopped,
    Deleting,
    Deleted,
    Failed,
    Crashed,
}

impl ServerStatus {
    pub const ALL: [ServerStatus; 11] = [
        ServerStatus::Pending,
        ServerStatus::Provisioning,
        ServerStatus::Installing,
        ServerStatus::Starting,
        ServerStatus::Running,
        ServerStatus::Stopping,
        ServerStatus::Stopped,
        ServerStatus::Deleting,
        ServerStatus::Deleted,
        ServerStatus::Failed,
        ServerStatus::Crashed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Pending => "pending",
            ServerStatus::Provisioning => "provisioning",
            ServerStatus::Installing => "installing",
            ServerStatus::Starting => "starting",
            ServerStatus::Running => "running",
            ServerStatus::Stopping => "stopping",
            ServerStatus::Stopped => "stopped",
            ServerStatus::Deleting => "deleting",
            ServerStatus::Deleted => "deleted",
            ServerStatus::Failed => "failed",
            ServerStatus::Crashed => "crashed",
        }
    }

    /// The status named `s` (`running`, …).
    pub fn parse(s: &str) -> Option<ServerStatus> {
        ServerStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// A status that must end by its deadline.
    pub fn is_transitional(self) -> bool {
        matches!(
            self,
            ServerStatus::Pending
                | ServerStatus::Provisioning
                | ServerStatus::Installing
                | ServerStatus::Starting
                | ServerStatus::Stopping
                | ServerStatus::Deleting
        )
    }
}

impl std::fmt::Display for ServerStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl rusqlite::types::FromSql for ServerStatus {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        ServerStatus::parse(s)
            .ok_or_else(|| rusqlite::types::FromSqlError::Other(format!("status '{s}'").into()))
    }
}

/// A server row. `agent_token` and the raw payload never leave through the API: use
/// [`Server::public`].
#[derive(Debug, Clone)]
pub struct Server {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    pub template_id: i64,
    pub version: String,
    pub node_id: i64,
    pub vmid: i64,
    pub ip: Option<String>,
    pub game_port: i64,
    pub agent_port: i64,
    pub memory_mb: i64,
    pub cores: i64,
    pub eula_accepted: bool,
    pub agent_token: String,
    pub install_id: String,
    pub payload: Option<Value>,
    pub desired_state: String,
    pub status: ServerStatus,
    pub status_reason: Option<String>,
    pub failed_step: Option<String>,
    pub status_deadline: Option<i64>,
    pub checkpoints: Value,
    pub agent_state: Option<String>,
    pub agent_seen_at: Option<i64>,
    pub ready: bool,
    pub crash_count: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
}

pub const COLUMNS: &str = "id, name, owner_id, template_id, version, node_id, vmid, ip, game_port, agent_port, \
     memory_mb, cores, eula_accepted, agent_token, install_id, payload, desired_state, status, \
     status_reason, failed_step, status_deadline, checkpoints, agent_state, agent_seen_at, ready, \
     crash_count, created_at, updated_at, deleted_at";

pub fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Server> {
    let payload: Option<String> = r.get(15)?;
    let checkpoints: String = r.get(21)?;
    Ok(Server {
        id: r.get(0)?,
        name: r.get(1)?,
        owner_id: r.get(2)?,
        template_id: r.get(3)?,
        version: r.get(4)?,
        node_id: r.get(5)?,
        vmid: r.get(6)?,
        ip: r.get(7)?,
        game_port: r.get(8)?,
        agent_port: r.get(9)?,
        memory_mb: r.get(10)?,
        cores: r.get(11)?,
        eula_accepted: r.get(12)?,
        agent_token: crate::db::secret::open_column(r, 13)?,
        install_id: r.get(14)?,
        payload: payload.and_then(|p| serde_json::from_str(&p).ok()),
        desired_state: r.get(16)?,
        status: r.get(17)?,
        status_reason: r.get(18)?,
        failed_step: r.get(19)?,
        status_deadline: r.get(20)?,
        checkpoints: serde_json::from_str(&checkpoints).unwrap_or_else(|_| json!({})),
        agent_state: r.get(22)?,
        agent_seen_at: r.get(23)?,
        ready: r.get(24)?,
        crash_count: r.get(25)?,
        created_at: r.get(26)?,
        updated_at: r.get(27)?,
        deleted_at: r.get(28)?,
    })
}

/// A server as the API shows it: no agent token; payload secrets blanked. The list reads
/// it straight from its row ([`list_public`]): the payload and checkpoints stay the JSON
/// text they are stored as and are copied out, not parsed into trees and rebuilt.
#[derive(Debug, Serialize)]
pub struct PublicServer {
    pub id: i64,
    pub name: String,
    pub owner_id: i64,
    pub template_id: i64,
    /// The template's slug.
    pub template: Option<String>,
    pub version: String,
    pub node_id: i64,
    /// The node's name.
    pub node: Option<String>,
    pub vmid: i64,
    pub ip: Option<String>,
    pub game_port: i64,
    pub memory_mb: i64,
    pub cores: i64,
    pub eula_accepted: bool,
    pub install_id: String,
    pub desired_state: String,
    pub status: ServerStatus,
    pub status_reason: Option<String>,
    pub failed_step: Option<String>,
    pub status_deadline: Option<i64>,
    pub checkpoints: JsonText,
    pub agent_state: Option<String>,
    pub agent_seen_at: Option<i64>,
    pub ready: bool,
    pub crash_count: i64,
    /// `ip:game_port`, once the server has an address.
    pub connect: Option<String>,
    /// The agent payload last sent, secrets and seeded file contents blanked.
    pub payload: Option<RedactedPayload>,
    pub created_at: i64,
    pub updated_at: i64,
    pub deleted_at: Option<i64>,
}

/// A JSON document kept as its text and written out as is (checked, not rebuilt).
#[derive(Debug, Clone)]
pub struct JsonText(pub String);

impl Serialize for JsonText {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::Error;
        let raw: &RawValue = serde_json::from_str(&self.0).map_err(S::Error::custom)?;
        raw.serialize(ser)
    }
}

/// An agent payload (its stored JSON text) that serializes with its secrets blanked
/// and seeded files' contents replaced; every other value is copied out unparsed.
#[derive(Debug)]
pub struct RedactedPayload(pub String);

impl RedactedPayload {
    pub fn of(payload: &Value) -> RedactedPayload {
        RedactedPayload(payload.to_string())
    }
}

const BLANK: &str = "********";
const SEEDED: &str = "(seeded file; content not shown)";

/// A JSON object's members with their values left as text (keys in order).
type RawMembers<'a> = std::collections::BTreeMap<String, &'a RawValue>;

impl Serialize for RedactedPayload {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let Ok(map) = serde_json::from_str::<RawMembers<'_>>(&self.0) else {
            return JsonText(self.0.clone()).serialize(ser);
        };
        let mut m = ser.serialize_map(Some(map.len()))?;
        for (k, v) in &map {
            match k.as_str() {
                "forwarding_secret" | "agent_token" if v.get() != "null" => {
                    m.serialize_entry(k, BLANK)?
                }
                "files" => match serde_json::from_str::<Vec<&RawValue>>(v.get()) {
                    Ok(files) => m.serialize_entry(k, &SeededFiles(&files))?,
                    Err(_) => m.serialize_entry(k, v)?,
                },
                _ => m.serialize_entry(k, v)?,
            }
        }
        m.end()
    }
}

struct SeededFiles<'a>(&'a [&'a RawValue]);

impl Serialize for SeededFiles<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = ser.serialize_seq(Some(self.0.len()))?;
        for f in self.0 {
            match serde_json::from_str::<RawMembers<'_>>(f.get()) {
                Ok(entry) => seq.serialize_element(&SeededFile(&entry))?,
                // A null entry shows as a file whose content is hidden, as before.
                Err(_) if f.get() == "null" => {
                    seq.serialize_element(&serde_json::json!({ "content": SEEDED }))?
                }
                Err(_) => seq.serialize_element(f)?,
            }
        }
        seq.end()
    }
}

/// A seeded file's entry with its content hidden.
struct SeededFile<'a>(&'a RawMembers<'a>);

impl Serialize for SeededFile<'_> {
    fn serialize<S: serde::Serializer>(&self, ser: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let with_content = self.0.len() + usize::from(!self.0.contains_key("content"));
        let mut m = ser.serialize_map(Some(with_content))?;
        for (k, v) in self.0 {
            if k != "content" {
                m.serialize_entry(k, v)?;
            }
        }
        m.serialize_entry("content", SEEDED)?;
        m.end()
    }
}

impl Server {
    /// The server as the API shows it (see [`PublicServer`]).
    pub fn public(self, template_slug: Option<String>, node_name: Option<String>) -> PublicServer {
        let connect = self
            .ip
            .as_ref()
            .map(|ip| format!("{ip}:{}", self.game_port));
        PublicServer {
            id: self.id,
            name: self.name,
            owner_id: self.owner_id,
            template_id: self.template_id,
            template: template_slug,
            version: self.version,
            node_id: self.node_id,
            node: node_name,
            vmid: self.vmid,
            ip: self.ip,
            game_port: self.game_port,
            memory_mb: self.memory_mb,
            cores: self.cores,
            eula_accepted: self.eula_accepted,
            install_id: self.install_id,
            desired_state: self.desired_state,
            status: self.status,
            status_reason: self.status_reason,
            failed_step: self.failed_step,
            status_deadline: self.status_deadline,
            checkpoints: JsonText(self.checkpoints.to_string()),
            agent_state: self.agent_state,
            agent_seen_at: self.agent_seen_at,
            ready: self.ready,
            crash_count: self.crash_count,
            connect,
            payload: self.payload.as_ref().map(RedactedPayload::of),
            created_at: self.created_at,
            updated_at: self.updated_at,
            deleted_at: self.deleted_at,
        }
    }
}

impl Server {
    /// Where the control plane reaches this server's agent (recorded by provisioning).
    pub fn agent_url(&self) -> Option<String> {
        self.checkpoints
            .get("address")
            .and_then(|a| a["agent_url"].as_str())
            .map(String::from)
    }

    /// A client for this server's agent, once its address is known.
    pub fn agent_client(&self) -> Option<crate::agent::client::AgentClient> {
        self.agent_url().map(|url| {
            crate::agent::client::AgentClient::new(
                url,
                self.agent_token.clone(),
                format!("agent of server {} ({})", self.id, self.name),
            )
        })
    }
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<Server>, DomainError> {
    let mut s = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM servers WHERE id = ?1"))?;
    Ok(s.query_row([id], from_row).optional()?)
}

/// A server the user may see: their own, or any for an admin. Others are "not found".
pub fn get_visible(conn: &Connection, user: &User, id: i64) -> Result<Server, DomainError> {
    match get(conn, id)? {
        Some(s) if user.is_admin || s.owner_id == user.id => Ok(s),
        _ => Err(DomainError::NotFound(format!("server {id}"))),
    }
}

/// Live servers visible to `user`, by id, `limit` after `after_id`; optional status filter.
pub fn list_visible(
    conn: &Connection,
    user: &User,
    after_id: i64,
    limit: i64,
    status: Option<ServerStatus>,
    search: Option<&str>,
) -> Result<Vec<Server>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM servers
         WHERE deleted_at IS NULL AND id > ?1 AND {}
           AND (?4 IS NULL OR status = ?4) AND (?5 IS NULL OR instr(name, ?5) > 0)
         ORDER BY id LIMIT ?6",
        visible_to(2, 3)
    ))?;
    let rows = s.query_map(
        params![
            after_id,
            user.is_admin,
            user.id,
            status.map(ServerStatus::as_str),
            search,
            limit
        ],
        from_row,
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// [`list_visible`] as the API shows it, read straight from the rows: no agent token
/// opened, the payload and checkpoints left as their stored text, the template's slug
/// and node's name joined in.
pub fn list_public(
    conn: &Connection,
    user: &User,
    after_id: i64,
    limit: i64,
    status: Option<ServerStatus>,
    search: Option<&str>,
) -> Result<Vec<PublicServer>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT s.id, s.name, s.owner_id, s.template_id, t.slug, s.version, s.node_id, n.name,
           s.vmid, s.ip, s.game_port, s.memory_mb, s.cores, s.eula_accepted, s.install_id,
           s.desired_state, s.status, s.status_reason, s.failed_step, s.status_deadline,
           s.checkpoints, s.agent_state, s.agent_seen_at, s.ready, s.crash_count, s.payload,
           s.created_at, s.updated_at, s.deleted_at
         FROM servers s
         LEFT JOIN templates t ON t.id = s.template_id
         LEFT JOIN nodes n ON n.id = s.node_id
         WHERE s.deleted_at IS NULL AND s.id > ?1 AND {}
           AND (?4 IS NULL OR s.status = ?4) AND (?5 IS NULL OR instr(s.name, ?5) > 0)
         ORDER BY s.id LIMIT ?6",
        visible_to_in("s", 2, 3)
    ))?;
    let rows = s.query_map(
        params![
            after_id,
            user.is_admin,
            user.id,
            status.map(ServerStatus::as_str),
            search,
            limit
        ],
        |r| {
            let ip: Option<String> = r.get(9)?;
            let game_port: i64 = r.get(10)?;
            Ok(PublicServer {
                id: r.get(0)?,
                name: r.get(1)?,
                owner_id: r.get(2)?,
                template_id: r.get(3)?,
                template: r.get(4)?,
                version: r.get(5)?,
                node_id: r.get(6)?,
                node: r.get(7)?,
                vmid: r.get(8)?,
                connect: ip.as_ref().map(|ip| format!("{ip}:{game_port}")),
                ip,
                game_port,
                memory_mb: r.get(11)?,
                cores: r.get(12)?,
                eula_accepted: r.get(13)?,
                install_id: r.get(14)?,
                desired_state: r.get(15)?,
                status: r.get(16)?,
                status_reason: r.get(17)?,
                failed_step: r.get(18)?,
                status_deadline: r.get(19)?,
                checkpoints: JsonText(r.get(20)?),
                agent_state: r.get(21)?,
                agent_seen_at: r.get(22)?,
                ready: r.get(23)?,
                crash_count: r.get(24)?,
                payload: r.get::<_, Option<String>>(25)?.map(RedactedPayload),
                created_at: r.get(26)?,
                updated_at: r.get(27)?,
                deleted_at: r.get(28)?,
            })
        },
    )?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// How many live servers matching the filters of [`list_visible`] `user` may see.
pub fn count_visible(
    conn: &Connection,
    user: &User,
    status: Option<ServerStatus>,
    search: Option<&str>,
) -> Result<i64, DomainError> {
    Ok(conn
        .prepare_cached(&format!(
            "SELECT count(*) FROM servers WHERE deleted_at IS NULL AND {}
               AND (?3 IS NULL OR status = ?3) AND (?4 IS NULL OR instr(name, ?4) > 0)",
            visible_to(1, 2)
        ))?
        .query_row(
            params![
                user.is_admin,
                user.id,
                status.map(ServerStatus::as_str),
                search
            ],
            |r| r.get(0),
        )?)
}

/// Live servers `user` may see, counted by status (every status but `deleted`, zeros
/// included), in [`ServerStatus::ALL`] order.
pub fn count_by_status(
    conn: &Connection,
    user: &User,
) -> Result<Vec<(ServerStatus, i64)>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT status, count(*) FROM servers WHERE deleted_at IS NULL AND {}
         GROUP BY status",
        visible_to(1, 2)
    ))?;
    let counts: std::collections::HashMap<ServerStatus, i64> = s
        .query_map(params![user.is_admin, user.id], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<Result<_, _>>()?;
    Ok(ServerStatus::ALL
        .into_iter()
        .filter(|s| *s != ServerStatus::Deleted)
        .map(|s| (s, counts.get(&s).copied().unwrap_or(0)))
        .collect())
}

/// Whether a live server already has this name (names are freed on delete).
pub fn name_taken(conn: &Connection, name: &str) -> Result<bool, DomainError> {
    Ok(conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM servers WHERE name = ?1 AND deleted_at IS NULL)",
        [name],
        |r| r.get(0),
    )?)
}

/// A console command as the agent takes it: one line of 1 to 1000 characters.
pub fn console_line(command: &str) -> Result<&str, DomainError> {
    let command = command.trim();
    if command.is_empty() || !super::is_one_line(command) || command.len() > 1000 {
        return Err(invalid(
            "command",
            "one line of 1 to 1000 characters, without control characters",
        ));
    }
    Ok(command)
}

/// An event on a server's timeline.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    pub id: i64,
    pub server_id: i64,
    pub at: i64,
    pub from_status: Option<String>,
    pub to_status: Option<String>,
    pub job_id: Option<i64>,
    pub actor: String,
    pub message: String,
    /// `info`, or `alert` for what an operator should be told about.
    pub severity: String,
}

pub fn add_event(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    from: Option<ServerStatus>,
    to: Option<ServerStatus>,
    job_id: Option<i64>,
    actor: &str,
    message: &str,
) -> Result<(), DomainError> {
    conn.prepare_cached(
        "INSERT INTO server_events (server_id, at, from_status, to_status, job_id, actor, message)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![
        server_id,
        now_ms(),
        from.map(ServerStatus::as_str),
        to.map(ServerStatus::as_str),
        job_id,
        actor,
        message
    ])?;
    Ok(())
}

/// Marks the newest event of a server as an alert: something an operator should be
/// told about (notifications read the mark), not just a line on the timeline.
pub fn mark_last_event_alert(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
) -> Result<(), DomainError> {
    conn.execute(
        "UPDATE server_events SET severity = 'alert'
         WHERE id = (SELECT max(id) FROM server_events WHERE server_id = ?1)",
        [server_id],
    )?;
    Ok(())
}

pub fn events(conn: &Connection, server_id: i64, limit: i64) -> Result<Vec<Event>, DomainError> {
    let mut s = conn.prepare_cached(
        "SELECT id, server_id, at, from_status, to_status, job_id, actor, message, severity
         FROM server_events WHERE server_id = ?1 ORDER BY id DESC LIMIT ?2",
    )?;
    let rows = s.query_map(params![server_id, limit], |r| {
        Ok(Event {
            id: r.get(0)?,
            server_id: r.get(1)?,
            at: r.get(2)?,
            from_status: r.get(3)?,
            to_status: r.get(4)?,
            job_id: r.get(5)?,
            actor: r.get(6)?,
            message: r.get(7)?,
            severity: r.get(8)?,
        })
    })?;
    let mut out: Vec<Event> = rows.collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

/// Moves a server to `to` with an event (from, to, job, actor, message). A
/// transitional status gets a deadline; others clear it.
pub fn transition(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    to: ServerStatus,
    reason: Option<&str>,
    job_id: Option<i64>,
    actor: &str,
) -> Result<ServerStatus, DomainError> {
    let from: ServerStatus = conn
        .query_row(
            "SELECT status FROM servers WHERE id = ?1",
            [server_id],
            |r| r.get(0),
        )
        .optional()?
        .ok_or_else(|| DomainError::NotFound(format!("server {server_id}")))?;
    let deadline = to.is_transitional().then(|| {
        now_ms()
            + if to == ServerStatus::Pending || to == ServerStatus::Provisioning {
                PROVISION_DEADLINE_MS
            } else {
                ACTION_DEADLINE_MS
            }
    });
    conn.execute(
        "UPDATE servers SET status = ?2, status_reason = ?3, status_deadline = ?4, updated_at = ?5,
           failed_step = CASE WHEN ?2 = 'failed' THEN failed_step ELSE NULL END
         WHERE id = ?1",
        params![server_id, to.as_str(), reason, deadline, now_ms()],
    )?;
    if from != to || reason.is_some() {
        let message = reason.unwrap_or(to.as_str());
        add_event(
            conn,
            server_id,
            Some(from),
            Some(to),
            job_id,
            actor,
            message,
        )?;
    }
    Ok(from)
}

/// Stores what a server's agent last said on its row (`crash_count` and the time seen
/// only when the agent answered): the UI and doctor read it there, not from a cache.
pub fn record_agent_view(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    agent_state: &str,
    ready: bool,
    crash_count: Option<i64>,
) -> Result<(), DomainError> {
    conn.execute(
        "UPDATE servers SET agent_state = ?2, ready = ?3,
           crash_count = coalesce(?4, crash_count),
           agent_seen_at = CASE WHEN ?4 IS NOT NULL THEN ?5 ELSE agent_seen_at END
         WHERE id = ?1",
        params![server_id, agent_state, ready, crash_count, now_ms()],
    )?;
    Ok(())
}

/// Marks a server `failed` at `step` with `reason`.
pub fn fail(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    step: &str,
    reason: &str,
    job_id: Option<i64>,
) -> Result<(), DomainError> {
    transition(
        conn,
        server_id,
        ServerStatus::Failed,
        Some(&format!("{step}: {reason}")),
        job_id,
        "system",
    )?;
    conn.execute(
        "UPDATE servers SET failed_step = ?2 WHERE id = ?1",
        params![server_id, step],
    )?;
    Ok(())
}

/// Records a provisioning step as done (inside the job's fenced transaction).
pub fn checkpoint(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    step: &str,
    detail: Value,
) -> Result<(), DomainError> {
    conn.execute(
        "UPDATE servers SET checkpoints = json_set(checkpoints, '$.' || ?2, json(?3)), updated_at = ?4
         WHERE id = ?1",
        params![server_id, step, detail.to_string(), now_ms()],
    )?;
    Ok(())
}

/// A create request.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateServer {
    pub name: String,
    /// Template slug.
    pub template: String,
    pub version: String,
    #[serde(default)]
    pub memory_mb: Option<u32>,
    #[serde(default)]
    pub cores: Option<u32>,
    /// Node name; placed on the node with the most free memory when absent.
    #[serde(default)]
    pub node: Option<String>,
    /// The operator's explicit acceptance of the game's EULA.
    #[serde(default)]
    pub eula: bool,
}

impl CreateServer {
    /// What an `Idempotency-Key` is bound to: the request as parsed, re-serialized, so
    /// the same request hashes the same from the API and the UI.
    pub fn request_hash(&self) -> String {
        super::sha256_hex(&serde_json::to_string(self).unwrap_or_default())
    }
}

/// What a create did.
#[derive(Debug, Clone)]
pub struct Created {
    pub server: Server,
    pub job_id: i64,
    /// False when an earlier request with the same idempotency key made it.
    pub created: bool,
}

/// Creates a server and its provisioning job in the caller's transaction. With an
/// idempotency key, a repeat of the same request returns the same server and job;
/// the same key with another body is a conflict.
pub fn create(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    req: &CreateServer,
    idempotency: Option<(&str, &str)>,
    quota: super::users::Quota,
) -> Result<Created, DomainError> {
    let now = now_ms();
    if let Some((key, hash)) = idempotency {
        let found: Option<(String, i64, i64)> = tx
            .query_row(
                "SELECT request_hash, server_id, job_id FROM idempotency_keys WHERE user_id = ?1 AND key = ?2",
                params![user.id, key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        if let Some((h, server_id, job_id)) = found {
            if h != hash {
                return Err(DomainError::Conflict(format!(
                    "Idempotency-Key '{key}' was already used with a different request"
                )));
            }
            let server = get(tx, server_id)?
                .ok_or_else(|| DomainError::NotFound(format!("server {server_id}")))?;
            return Ok(Created {
                server,
                job_id,
                created: false,
            });
        }
    }

    if !is_dns_label(&req.name) {
        return Err(invalid(
            "name",
            "must be a DNS label: 1-63 of a-z, 0-9 and '-', not starting or ending with '-'",
        ));
    }
    let template: Template = templates::get_by_slug(tx, &req.template)?
        .ok_or_else(|| invalid("template", format!("no template '{}'", req.template)))?;
    if !super::is_version(&req.version) {
        return Err(invalid(
            "version",
            "1-40 of letters, digits, '.', '_', '-', '+', and no '..'",
        ));
    }
    if template.needs_eula() && !req.eula {
        return Err(invalid(
            "eula",
            format!(
                "template {} runs a game whose EULA must be accepted explicitly: send \"eula\": true (https://aka.ms/MinecraftEULA)",
                template.slug
            ),
        ));
    }
    let memory = req.memory_mb.unwrap_or(template.spec.default_memory_mb);
    if !(256..=262_144).contains(&memory) {
        return Err(invalid("memory_mb", "between 256 and 262144"));
    }
    let cores = req.cores.unwrap_or(template.spec.default_cores);
    if !(1..=64).contains(&cores) {
        return Err(invalid("cores", "between 1 and 64"));
    }
    if name_taken(tx, &req.name)? {
        return Err(DomainError::Taken {
            field: "name".into(),
            message: format!("a server named '{}' exists", req.name),
        });
    }
    super::users::check_quota(tx, user, quota, memory as i64)?;
    let node = nodes::place(tx, req.node.as_deref(), memory as i64)?;
    let vmid = allocate_vmid(tx, &node)?;
    let (game_port, agent_port) = if node.kind == "local" {
        let ports = free_ports(tx, &node, 2)?;
        (ports[0], ports[1])
    } else {
        (
            template.spec.game_port as i64,
            crate::agent::DEFAULT_PORT as i64,
        )
    };
    let token = random_secret()?;
    let install_id = random_secret()?[..16].to_string();
    tx.execute(
        "INSERT INTO servers (name, owner_id, template_id, version, node_id, vmid, game_port, agent_port,
           memory_mb, cores, eula_accepted, agent_token, install_id, status, status_deadline,
           created_at, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, 'pending', ?14, ?15, ?15)",
        params![
            req.name,
            user.id,
            template.id,
            req.version,
            node.id,
            vmid,
            game_port,
            agent_port,
            memory,
            cores,
            req.eula,
            // Sealed at rest: a copied database reveals no agent token.
            crate::db::secret::seal(tx, &token).map_err(crate::db::DbError::from)?,
            install_id,
            now + PROVISION_DEADLINE_MS,
            now
        ],
    )?;
    let server_id = tx.last_insert_rowid();
    if node.kind == "local" {
        for (port, purpose) in [(game_port, "game"), (agent_port, "agent")] {
            tx.execute(
                "INSERT INTO port_allocations (node_id, port, server_id, purpose) VALUES (?1, ?2, ?3, ?4)",
                params![node.id, port, server_id, purpose],
            )?;
        }
    }
    add_event(
        tx,
        server_id,
        None,
        Some(ServerStatus::Pending),
        None,
        &format!("user:{}", user.username),
        &format!(
            "created from template {} {} on node {} (VMID {vmid})",
            template.slug, req.version, node.name
        ),
    )?;
    let job = enqueue_action(
        tx,
        server_id,
        JOB_PROVISION,
        json!({"server_id": server_id}),
    )?;
    if let Some((key, hash)) = idempotency {
        tx.execute(
            "INSERT INTO idempotency_keys (user_id, key, request_hash, server_id, job_id, created_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![user.id, key, hash, server_id, job, now],
        )?;
    }
    let server = get(tx, server_id)?.ok_or_else(|| DomainError::NotFound("new server".into()))?;
    Ok(Created {
        server,
        job_id: job,
        created: true,
    })
}

/// The lowest VMID in the node's range not used by a live server.
pub fn allocate_vmid(conn: &Connection, node: &Node) -> Result<i64, DomainError> {
    allocate_vmid_excluding(conn, node, &[])
}

/// Like [`allocate_vmid`], skipping `skip` (VMIDs found taken on the node itself).
pub fn allocate_vmid_excluding(
    conn: &Connection,
    node: &Node,
    skip: &[i64],
) -> Result<i64, DomainError> {
    let mut s = conn.prepare_cached(
        "SELECT vmid FROM servers WHERE node_id = ?1 AND deleted_at IS NULL AND vmid BETWEEN ?2 AND ?3 ORDER BY vmid",
    )?;
    let used: std::collections::BTreeSet<i64> = s
        .query_map(params![node.id, node.vmid_min, node.vmid_max], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    (node.vmid_min..=node.vmid_max)
        .find(|v| !used.contains(v) && !skip.contains(v))
        .ok_or_else(|| {
            DomainError::Conflict(format!(
                "node '{}' has no free VMID in {}..{}",
                node.name, node.vmid_min, node.vmid_max
            ))
        })
}

/// `n` free ports from the node's pool (lowest first).
fn free_ports(conn: &Connection, node: &Node, n: usize) -> Result<Vec<i64>, DomainError> {
    let mut s = conn.prepare_cached(
        "SELECT port FROM port_allocations WHERE node_id = ?1 AND port BETWEEN ?2 AND ?3",
    )?;
    let used: std::collections::BTreeSet<i64> = s
        .query_map(params![node.id, node.port_min, node.port_max], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let ports: Vec<i64> = (node.port_min..=node.port_max)
        .filter(|p| !used.contains(p))
        .take(n)
        .collect();
    if ports.len() < n {
        return Err(DomainError::Conflict(format!(
            "node '{}' has no free ports left in {}..{}",
            node.name, node.port_min, node.port_max
        )));
    }
    Ok(ports)
}

/// Enqueues a server job in the server's lane; the same action already waiting is reused.
pub fn enqueue_action(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    kind: &str,
    payload: Value,
) -> Result<i64, DomainError> {
    let action = kind.trim_start_matches("server.");
    let job = NewJob::new(kind, payload)
        .lane(lane(server_id))
        .unique_key(format!("server:{server_id}:{action}"))
        .max_attempts(8);
    Ok(queue::enqueue(conn, &job, now_ms())?.id)
}

/// An operator's action on a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Start,
    Stop,
    Restart,
    Retry,
    Reinstall,
    Delete,
}

impl Action {
    /// Every action, in the order the UI offers them.
    pub const ALL: [Action; 6] = [
        Action::Start,
        Action::Stop,
        Action::Restart,
        Action::Retry,
        Action::Reinstall,
        Action::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Start => "start",
            Action::Stop => "stop",
            Action::Restart => "restart",
            Action::Retry => "retry",
            Action::Reinstall => "reinstall",
            Action::Delete => "delete",
        }
    }

    /// Whether a server in `status` (not deleted) may be given this action.
    pub fn allowed_in(self, status: ServerStatus) -> bool {
        use ServerStatus as S;
        match self {
            Action::Start => matches!(status, S::Stopped | S::Crashed | S::Running),
            Action::Stop => matches!(status, S::Running | S::Starting | S::Crashed),
            Action::Restart => matches!(status, S::Running | S::Crashed | S::Stopped),
            Action::Retry => matches!(status, S::Failed),
            Action::Reinstall => matches!(status, S::Running | S::Stopped | S::Failed | S::Crashed),
            Action::Delete => !matches!(status, S::Deleting | S::Deleted),
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        Some(match s {
            "start" => Action::Start,
            "stop" => Action::Stop,
            "restart" => Action::Restart,
            "retry" => Action::Retry,
            "reinstall" => Action::Reinstall,
            "delete" => Action::Delete,
            _ => return None,
        })
    }
}

/// Validates `action` against the server's status and enqueues its job (in the
/// server's lane, so it never races another job of the same server).
pub fn request_action(
    tx: &rusqlite::Transaction<'_>,
    user: &User,
    server_id: i64,
    action: Action,
) -> Result<i64, DomainError> {
    use ServerStatus as S;
    let server = get_visible(tx, user, server_id)?;
    if server.deleted_at.is_some() || server.status == S::Deleted {
        return Err(DomainError::Conflict(format!(
            "server {server_id} is deleted"
        )));
    }
    if !action.allowed_in(server.status) {
        return Err(DomainError::Conflict(format!(
            "cannot {} server {server_id} while it is {}",
            action.as_str(),
            server.status
        )));
    }
    let actor = format!("user:{}", user.username);
    let payload = json!({"server_id": server_id});
    let (kind, note) = match action {
        Action::Start => (JOB_START, "start requested"),
        Action::Stop => (JOB_STOP, "stop requested"),
        Action::Restart => (JOB_RESTART, "restart requested"),
        Action::Retry => (
            JOB_PROVISION,
            "retry requested: provisioning resumes from its last checkpoint",
        ),
        Action::Reinstall => (
            JOB_PROVISION,
            "reinstall requested: a new install id is sent to the agent",
        ),
        Action::Delete => (JOB_DELETE, "delete requested"),
    };
    match action {
        Action::Reinstall => {
            let install_id = random_secret()?[..16].to_string();
            tx.execute(
                "UPDATE servers SET install_id = ?2,
                   checkpoints = json_remove(checkpoints, '$.agent_config', '$.ready', '$.published'),
                   desired_state = 'running'
                 WHERE id = ?1",
                params![server_id, install_id],
            )?;
        }
        Action::Stop => {
            tx.execute(
                "UPDATE servers SET desired_state = 'stopped' WHERE id = ?1",
                [server_id],
            )?;
        }
        Action::Delete => {
            tx.execute(
                "UPDATE servers SET desired_state = 'deleted' WHERE id = ?1",
                [server_id],
            )?;
        }
        _ => {
            tx.execute(
                "UPDATE servers SET desired_state = 'running' WHERE id = ?1",
                [server_id],
            )?;
        }
    }
    let job = enqueue_action(tx, server_id, kind, payload)?;
    add_event(tx, server_id, None, None, Some(job), &actor, note)?;
    Ok(job)
}

/// Archives a deleted server: frees its name, VMID and ports.
pub fn archive(
    conn: &rusqlite::Transaction<'_>,
    server_id: i64,
    job_id: Option<i64>,
) -> Result<(), DomainError> {
    transition(
        conn,
        server_id,
        ServerStatus::Deleted,
        Some("deleted: container destroyed, name, VMID and ports freed"),
        job_id,
        "system",
    )?;
    conn.execute(
        "DELETE FROM port_allocations WHERE server_id = ?1",
        [server_id],
    )?;
    conn.execute(
        "UPDATE servers SET deleted_at = ?2, ready = 0 WHERE id = ?1",
        params![server_id, now_ms()],
    )?;
    Ok(())
}

/// The template and node of a server.
pub fn context(conn: &Connection, server: &Server) -> Result<(Template, Node), DomainError> {
    let t = templates::get(conn, server.template_id)?
        .ok_or_else(|| DomainError::NotFound(format!("template {}", server.template_id)))?;
    let n = nodes::get(conn, server.node_id)?
        .ok_or_else(|| DomainError::NotFound(format!("node {}", server.node_id)))?;
    Ok((t, n))
}

/// The ownership rule as SQL, for a query on `servers` (aliased or not, through
/// `owner_id`) whose parameters `?A` and `?B` are `user.is_admin` and `user.id`: one
/// spelling of "an admin sees every server, a user their own".
fn visible_to(admin: usize, owner: usize) -> String {
    format!("(?{admin} OR owner_id = ?{owner})")
}

/// [`visible_to`] for a query where the servers table is aliased `table`.
fn visible_to_in(table: &str, admin: usize, owner: usize) -> String {
    format!("(?{admin} OR {table}.owner_id = ?{owner})")
}

/// The status and status line of those `ids` that `user` may see (the live list's
/// refresh), by id.
pub fn statuses_visible(
    conn: &Connection,
    user: &User,
    ids: &[i64],
) -> Result<Vec<(i64, String, String)>, DomainError> {
    let list = serde_json::to_string(ids).map_err(|e| invalid("ids", e.to_string()))?;
    let mut s = conn.prepare_cached(&format!(
        "SELECT id, status, coalesce(status_reason, '') FROM servers
         WHERE id IN (SELECT value FROM json_each(?1)) AND {}",
        visible_to(2, 3)
    ))?;
    let rows = s.query_map(params![list, user.is_admin, user.id], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Live servers `user` may see that need a look (failed, crashed, or past their
/// deadline), the most recently changed first.
pub fn needing_attention(
    conn: &Connection,
    user: &User,
    now: i64,
    limit: i64,
) -> Result<Vec<Server>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {COLUMNS} FROM servers WHERE deleted_at IS NULL AND {}
           AND (status IN ('failed', 'crashed') OR status_deadline < ?3)
         ORDER BY updated_at DESC LIMIT ?4",
        visible_to(1, 2)
    ))?;
    let rows = s.query_map(params![user.is_admin, user.id, now, limit], from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// An event with the name of its server (timelines across servers).
#[derive(Debug, Clone)]
pub struct NamedEvent {
    pub server: String,
    pub event: Event,
}

fn named_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<NamedEvent> {
    Ok(NamedEvent {
        server: r.get(9)?,
        event: Event {
            id: r.get(0)?,
            server_id: r.get(1)?,
            at: r.get(2)?,
            from_status: r.get(3)?,
            to_status: r.get(4)?,
            job_id: r.get(5)?,
            actor: r.get(6)?,
            message: r.get(7)?,
            severity: r.get(8)?,
        },
    })
}

const NAMED_EVENT_COLUMNS: &str = "e.id, e.server_id, e.at, e.from_status, e.to_status, e.job_id, \
     e.actor, e.message, e.severity, s.name";

/// The newest `limit` events on servers `user` may see, newest first.
pub fn recent_events_visible(
    conn: &Connection,
    user: &User,
    limit: i64,
) -> Result<Vec<NamedEvent>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {NAMED_EVENT_COLUMNS}
         FROM server_events e JOIN servers s ON s.id = e.server_id
         WHERE {}
         ORDER BY e.id DESC LIMIT ?3",
        visible_to(1, 2)
    ))?;
    let rows = s.query_map(params![user.is_admin, user.id, limit], named_event)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Events of one server after `after_id`, oldest first (at most `limit`, the newest).
pub fn events_after(
    conn: &Connection,
    server_id: i64,
    after_id: i64,
    limit: i64,
) -> Result<Vec<NamedEvent>, DomainError> {
    let mut s = conn.prepare_cached(&format!(
        "SELECT {NAMED_EVENT_COLUMNS}
         FROM server_events e JOIN servers s ON s.id = e.server_id
         WHERE e.server_id = ?1 AND e.id > ?2 ORDER BY e.id DESC LIMIT ?3"
    ))?;
    let mut out: Vec<NamedEvent> = s
        .query_map(params![server_id, after_id, limit], named_event)?
        .collect::<Result<_, _>>()?;
    out.reverse();
    Ok(out)
}

/// When each of `ids` last became `running` (servers that never did are absent).
pub fn running_since(
    conn: &Connection,
    ids: &[i64],
) -> Result<std::collections::HashMap<i64, i64>, DomainError> {
    let list = serde_json::to_string(ids).map_err(|e| invalid("ids", e.to_string()))?;
    let mut s = conn.prepare_cached(
        "SELECT server_id, max(at) FROM server_events
         WHERE server_id IN (SELECT value FROM json_each(?1)) AND to_status = 'running'
         GROUP BY server_id",
    )?;
    let rows = s.query_map([&list], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// The id of the live server named `name`.
pub fn id_by_name(conn: &Connection, name: &str) -> Result<Option<i64>, DomainError> {
    Ok(conn
        .prepare_cached("SELECT id FROM servers WHERE name = ?1 AND deleted_at IS NULL")?
        .query_row([name], |r| r.get(0))
        .optional()?)
}

/// How many rows, archived ones included, carry `name` (more than one live is a
/// duplicate; doctor counts them).
pub fn rows_named(conn: &Connection, name: &str) -> Result<i64, DomainError> {
    Ok(conn
        .prepare_cached("SELECT count(*) FROM servers WHERE name = ?1")?
        .query_row([name], |r| r.get(0))?)
}

/// Servers in a transitional status past their deadline with no unfinished job in
/// their lane: nothing will move them on. `(id, name, status)`, by id.
pub fn stuck(conn: &Connection, now: i64) -> Result<Vec<(i64, String, ServerStatus)>, DomainError> {
    let mut s = conn.prepare_cached(
        "SELECT id, name, status FROM servers
         WHERE deleted_at IS NULL AND status_deadline IS NOT NULL AND status_deadline < ?1
         ORDER BY id",
    )?;
    let late: Vec<(i64, String, ServerStatus)> = s
        .query_map([now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (id, name, status) in late {
        // The queue owns what "a job still working on it" means.
        if status.is_transitional() && !queue::lane_busy(conn, &lane(id))? {
            out.push((id, name, status));
        }
    }
    Ok(out)
}

/// Live servers sharing what must be unique (name; VMID on a node; game port on a
/// local node, where all servers share one host): `(rule, what, how many)`. The
/// constraints should make these impossible; doctor checks anyway.
pub fn duplicates(conn: &Connection) -> Result<Vec<(&'static str, String, i64)>, DomainError> {
    let mut out = Vec::new();
    for (rule, sql) in [
        (
            "name twice",
            "SELECT name, count(*) FROM servers WHERE deleted_at IS NULL GROUP BY name HAVING count(*) > 1",
        ),
        (
            "VMID twice",
            "SELECT node_id || '/' || vmid, count(*) FROM servers WHERE deleted_at IS NULL
             GROUP BY node_id, vmid HAVING count(*) > 1",
        ),
        (
            "port twice",
            "SELECT node_id || '/' || game_port, count(*) FROM servers s JOIN nodes n ON n.id = s.node_id
             WHERE deleted_at IS NULL AND n.kind = 'local' GROUP BY node_id, game_port HAVING count(*) > 1",
        ),
    ] {
        let mut s = conn.prepare_cached(sql)?;
        let rows = s.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
        for row in rows {
            let (what, n) = row?;
            out.push((rule, what, n));
        }
    }
    Ok(out)
}

/// What doctor compares with the world for each live server.
#[derive(Debug, Clone)]
pub struct LiveSummary {
    pub id: i64,
    pub name: String,
    pub node_id: i64,
    pub vmid: i64,
    pub status: ServerStatus,
    /// Provisioning checkpointed a container for it.
    pub has_container: bool,
    pub agent_state: Option<String>,
    pub ready: bool,
}

/// Every live server, by id, as [`LiveSummary`].
pub fn live_summaries(conn: &Connection) -> Result<Vec<LiveSummary>, DomainError> {
    let mut s = conn.prepare_cached(
        "SELECT id, name, node_id, vmid, status, json_extract(checkpoints, '$.container') IS NOT NULL,
                agent_state, ready FROM servers WHERE deleted_at IS NULL ORDER BY id",
    )?;
    let rows = s.query_map([], |r| {
        Ok(LiveSummary {
            id: r.get(0)?,
            name: r.get(1)?,
            node_id: r.get(2)?,
            vmid: r.get(3)?,
            status: r.get(4)?,
            has_container: r.get(5)?,
            agent_state: r.get(6)?,
            ready: r.get(7)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Sets the status line without an event (a progress note).
pub fn set_status_reason(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    reason: &str,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE servers SET status_reason = ?2, updated_at = ?3 WHERE id = ?1",
        params![server_id, reason, now_ms()],
    )?;
    Ok(())
}

/// Records the address the server's agent answers on.
pub fn set_address(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    ip: &str,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE servers SET ip = ?2 WHERE id = ?1",
        params![server_id, ip],
    )?;
    Ok(())
}

/// Records the agent payload sent (secrets already redacted by the caller).
pub fn set_payload(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    redacted_payload: &str,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE servers SET payload = ?2 WHERE id = ?1",
        params![server_id, redacted_payload],
    )?;
    Ok(())
}

/// Moves a server to another VMID (its reserved one was taken by a foreign container).
pub fn set_vmid(
    tx: &rusqlite::Transaction<'_>,
    server_id: i64,
    vmid: i64,
) -> Result<(), DomainError> {
    tx.execute(
        "UPDATE servers SET vmid = ?2 WHERE id = ?1",
        params![server_id, vmid],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The payload shown by the API: secrets and seeded contents blanked, the rest as stored.
    #[test]
    fn a_public_payload_blanks_secrets_and_seeded_contents() {
        let shown = serde_json::to_value(RedactedPayload::of(&json!({
            "forwarding_secret": "s3cret", "agent_token": "tok", "version": "1.21.4",
            "files": [{"destination": "a.toml", "content": "secret = s3cret"}, {"destination": "b"}, null],
            "properties": {"motd": "hi"}
        })))
        .unwrap();
        assert_eq!(
            shown,
            json!({
                "forwarding_secret": BLANK, "agent_token": BLANK, "version": "1.21.4",
                "files": [{"destination": "a.toml", "content": SEEDED}, {"destination": "b", "content": SEEDED}, {"content": SEEDED}],
                "properties": {"motd": "hi"}
            })
        );
        // A null secret stays null (nothing to hide).
        let shown =
            serde_json::to_value(RedactedPayload::of(&json!({"forwarding_secret": null}))).unwrap();
        assert_eq!(shown, json!({"forwarding_secret": null}));
    }
}
