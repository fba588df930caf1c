//! Enrollment tokens: an admin's one-time permission for a Proxmox host to register
//! itself as the node `name` (the install script of `zlh node enroll`). Hashed at rest,
//! expiring, and spent by the registration in the same transaction as the node's row.

use rusqlite::{Connection, OptionalExtension, Transaction, params};

use super::nodes::{self, NewNode, Node};
use super::{DomainError, invalid, is_dns_label, random_secret, sha256_hex};
use crate::db::now_ms;

/// How long a token stays valid unless the admin says otherwise.
pub const DEFAULT_TTL_MS: i64 = 3_600_000;

/// A token just made: the secret is shown once.
#[derive(Debug)]
pub struct Issued {
    pub id: i64,
    pub name: String,
    pub token: String,
    pub expires_at: i64,
}

/// Makes a token for a node to be called `name` (free now, and still free when it
/// registers: checked again then).
pub fn issue(conn: &Transaction<'_>, name: &str, ttl_ms: i64) -> Result<Issued, DomainError> {
    if !is_dns_label(name) {
        return Err(invalid("name", "a DNS label: a-z, 0-9 and '-', at most 63"));
    }
    if !(60_000..=7 * 86_400_000).contains(&ttl_ms) {
        return Err(invalid("ttl", "between 1 minute and 7 days"));
    }
    if nodes::get_by_name(conn, name)?.is_some() {
        return Err(DomainError::Taken {
            field: "name".into(),
            message: format!("a node named '{name}' exists"),
        });
    }
    let token = random_secret()?;
    let now = now_ms();
    conn.execute(
        "INSERT INTO node_enrollments (name, token_hash, created_at, expires_at)
         VALUES (?1, ?2, ?3, ?4)",
        params![name, sha256_hex(&token), now, now + ttl_ms],
    )?;
    Ok(Issued {
        id: conn.last_insert_rowid(),
        name: name.to_string(),
        token,
        expires_at: now + ttl_ms,
    })
}

/// Why a token does not allow a registration (one message for unknown and wrong, so a
/// guess learns nothing).
fn refused(why: &str) -> DomainError {
    DomainError::Invalid {
        field: "token".into(),
        message: why.into(),
    }
}

/// The node name a token is valid for right now, or why not.
pub fn check(conn: &Connection, token: &str) -> Result<String, DomainError> {
    let row: Option<(String, i64, Option<i64>)> = conn
        .query_row(
            "SELECT name, expires_at, used_at FROM node_enrollments WHERE token_hash = ?1",
            params![sha256_hex(token)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    match row {
        None => Err(refused("not a valid enrollment token")),
        Some((_, _, Some(_))) => Err(refused(
            "this enrollment token was already used: make a new one (`zlh node enroll`)",
        )),
        Some((_, exp, None)) if exp <= now_ms() => Err(refused(
            "this enrollment token has expired: make a new one (`zlh node enroll`)",
        )),
        Some((name, _, None)) => Ok(name),
    }
}

/// Registers the Proxmox node the token was made for and spends the token, in the
/// caller's transaction: both happen, or neither.
pub fn redeem(
    conn: &Transaction<'_>,
    token: &str,
    settings: serde_json::Value,
    memory_mb: i64,
) -> Result<Node, DomainError> {
    let name = check(conn, token)?;
    let node = nodes::create(
        conn,
        &NewNode {
            name,
            kind: "proxmox".into(),
            settings,
            memory_mb,
            vmid_min: None,
            vmid_max: None,
            port_min: None,
            port_max: None,
        },
    )?;
    let spent = conn.execute(
        "UPDATE node_enrollments SET used_at = ?1, node_id = ?2
         WHERE token_hash = ?3 AND used_at IS NULL",
        params![now_ms(), node.id, sha256_hex(token)],
    )?;
    if spent != 1 {
        return Err(refused("this enrollment token was already used"));
    }
    Ok(node)
}
