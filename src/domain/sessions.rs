//! Admin UI sessions: the cookie holds a random secret, the database its SHA-256 and
//! the session's CSRF token. Sessions expire after [`SESSION_TTL_MS`] without use.

use rusqlite::{Connection, OptionalExtension, params};

use super::users::User;
use super::{DomainError, random_secret, sha256_hex};
use crate::db::now_ms;

/// Idle lifetime of a session.
pub const SESSION_TTL_MS: i64 = 7 * 24 * 3600 * 1000;
/// `last_seen_at` is rewritten at most this often (reads stay reads).
const TOUCH_EVERY_MS: i64 = 60 * 1000;

/// A live session: its user and CSRF token.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: i64,
    pub user: User,
    pub csrf: String,
}

/// Opens a session for `user_id`; returns the cookie secret (never stored).
pub fn create(conn: &rusqlite::Transaction<'_>, user_id: i64) -> Result<String, DomainError> {
    let secret = random_secret()?;
    let csrf = random_secret()?;
    let now = now_ms();
    // Expired sessions are dropped whenever someone logs in.
    conn.execute("DELETE FROM sessions WHERE expires_at < ?1", [now])?;
    conn.execute(
        "INSERT INTO sessions (token_hash, user_id, csrf_token, created_at, last_seen_at, expires_at)
         VALUES (?1, ?2, ?3, ?4, ?4, ?5)",
        params![sha256_hex(&secret), user_id, csrf, now, now + SESSION_TTL_MS],
    )?;
    Ok(secret)
}

/// The session a cookie secret belongs to, if it is live, and whether its expiry is
/// due a refresh ([`touch`], at most once a minute: a lookup itself only reads).
pub fn lookup(conn: &Connection, secret: &str) -> Result<Option<(Session, bool)>, DomainError> {
    if secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Ok(None);
    }
    let now = now_ms();
    let found = conn
        .prepare_cached(
            "SELECT s.id, s.csrf_token, s.last_seen_at, u.id, u.username, u.is_admin, u.created_at
             FROM sessions s JOIN users u ON u.id = s.user_id
             WHERE s.token_hash = ?1 AND s.expires_at > ?2",
        )?
        .query_row(params![sha256_hex(secret), now], |r| {
            Ok((
                Session {
                    id: r.get(0)?,
                    csrf: r.get(1)?,
                    user: User {
                        id: r.get(3)?,
                        username: r.get(4)?,
                        is_admin: r.get(5)?,
                        created_at: r.get(6)?,
                    },
                },
                r.get::<_, i64>(2)?,
            ))
        })
        .optional()?;
    Ok(found.map(|(session, last_seen)| (session, now - last_seen > TOUCH_EVERY_MS)))
}

/// Refreshes a session's expiry: it was used just now.
pub fn touch(tx: &rusqlite::Transaction<'_>, session_id: i64) -> Result<(), DomainError> {
    let now = now_ms();
    tx.execute(
        "UPDATE sessions SET last_seen_at = ?2, expires_at = ?3 WHERE id = ?1",
        params![session_id, now, now + SESSION_TTL_MS],
    )?;
    Ok(())
}

/// Whether session `id` is still live (not ended, not expired). Long-lived streams
/// ask this now and then, so they end with their session.
pub fn is_live(conn: &Connection, id: i64) -> Result<bool, DomainError> {
    Ok(conn
        .prepare_cached("SELECT 1 FROM sessions WHERE id = ?1 AND expires_at > ?2")?
        .query_row(params![id, now_ms()], |_| Ok(()))
        .optional()?
        .is_some())
}

/// Ends one session (logout).
pub fn delete(conn: &rusqlite::Transaction<'_>, session_id: i64) -> Result<(), DomainError> {
    conn.execute("DELETE FROM sessions WHERE id = ?1", [session_id])?;
    Ok(())
}

/// Ends every session of a user (after a password reset).
pub fn delete_for_user(
    conn: &rusqlite::Transaction<'_>,
    user_id: i64,
) -> Result<usize, DomainError> {
    Ok(conn.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?)
}
