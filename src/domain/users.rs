//! Users and API tokens. Tokens are shown once and stored as SHA-256 hashes.

use rusqlite::{Connection, OptionalExtension, params};
use serde::Serialize;

use super::{DomainError, invalid, random_secret, sha256_hex};
use crate::db::now_ms;

#[derive(Debug, Clone, Serialize)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub is_admin: bool,
    pub created_at: i64,
}

/// How much one user may hold (`None`: no limit). Admins are never limited.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Quota {
    pub max_servers: Option<i64>,
    pub max_memory_mb: Option<i64>,
}

impl From<&crate::config::QuotaConfig> for Quota {
    /// The configured defaults (0: no limit).
    fn from(c: &crate::config::QuotaConfig) -> Quota {
        Quota {
            max_servers: (c.max_servers > 0).then_some(c.max_servers as i64),
            max_memory_mb: (c.max_memory_mb > 0).then_some(c.max_memory_mb as i64),
        }
    }
}

/// What a user holds now: servers that are not deleted, and their memory.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub servers: i64,
    pub memory_mb: i64,
}

/// The quota `user` is held to: the limits an admin set for them, else `defaults`.
pub fn quota_of(conn: &Connection, user: &User, defaults: Quota) -> Result<Quota, DomainError> {
    if user.is_admin {
        return Ok(Quota::default());
    }
    let own = own_quota(conn, user.id)?;
    Ok(Quota {
        max_servers: own.max_servers.or(defaults.max_servers),
        max_memory_mb: own.max_memory_mb.or(defaults.max_memory_mb),
    })
}

/// The limits an admin set for this user (`None`: the configured default applies).
pub fn own_quota(conn: &Connection, user_id: i64) -> Result<Quota, DomainError> {
    Ok(conn.query_row(
        "SELECT max_servers, max_memory_mb FROM users WHERE id = ?1",
        [user_id],
        |r| {
            Ok(Quota {
                max_servers: r.get(0)?,
                max_memory_mb: r.get(1)?,
            })
        },
    )?)
}

/// Sets a user's own limits (`None` in a field: back to the configured default).
pub fn set_quota(
    conn: &rusqlite::Transaction<'_>,
    user_id: i64,
    q: Quota,
) -> Result<(), DomainError> {
    for (field, v) in [
        ("max_servers", q.max_servers),
        ("max_memory_mb", q.max_memory_mb),
    ] {
        if v.is_some_and(|v| !(0..=1_000_000_000).contains(&v)) {
            return Err(invalid(field, "between 0 and 1000000000"));
        }
    }
    conn.execute(
        "UPDATE users SET max_servers = ?2, max_memory_mb = ?3 WHERE id = ?1",
        params![user_id, q.max_servers, q.max_memory_mb],
    )?;
    Ok(())
}

pub fn usage(conn: &Connection, user_id: i64) -> Result<Usage, DomainError> {
    Ok(conn.query_row(
        "SELECT count(*), coalesce(sum(memory_mb), 0) FROM servers
         WHERE owner_id = ?1 AND deleted_at IS NULL",
        [user_id],
        |r| {
            Ok(Usage {
                servers: r.get(0)?,
                memory_mb: r.get(1)?,
            })
        },
    )?)
}

/// Refuses a new server of `memory_mb` that would take `user` past their quota
/// (checked inside the create transaction, so two requests cannot both squeeze in).
pub fn check_quota(
    conn: &Connection,
    user: &User,
    defaults: Quota,
    memory_mb: i64,
) -> Result<(), DomainError> {
    let q = quota_of(conn, user, defaults)?;
    if q == Quota::default() {
        return Ok(());
    }
    let used = usage(conn, user.id)?;
    if let Some(max) = q.max_servers
        && used.servers + 1 > max
    {
        return Err(DomainError::Conflict(format!(
            "quota: {} may have at most {max} server(s) and has {}; delete one or ask an admin",
            user.username, used.servers
        )));
    }
    if let Some(max) = q.max_memory_mb
        && used.memory_mb + memory_mb > max
    {
        return Err(invalid(
            "memory_mb",
            format!(
                "quota: {memory_mb} MiB more would make {} MiB of {}'s {max} MiB",
                used.memory_mb + memory_mb,
                user.username
            ),
        ));
    }
    Ok(())
}

/// Token prefix: lets secret scanners and operators recognise a zlh token.
pub const TOKEN_PREFIX: &str = "zlh_";

fn valid_username(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-@".contains(&b))
}

pub fn create_user(
    conn: &rusqlite::Transaction<'_>,
    username: &str,
    is_admin: bool,
    password_hash: Option<&str>,
) -> Result<User, DomainError> {
    if !valid_username(username) {
        return Err(invalid(
            "username",
            "1 to 64 characters of letters, digits, '.', '_', '-', '@'",
        ));
    }
    let now = now_ms();
    let res = conn.execute(
        "INSERT INTO users (username, password_hash, is_admin, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![username, password_hash, is_admin, now],
    );
    match res {
        Ok(_) => Ok(User {
            id: conn.last_insert_rowid(),
            username: username.into(),
            is_admin,
            created_at: now,
        }),
        Err(rusqlite::Error::SqliteFailure(e, _))
            if e.code == rusqlite::ErrorCode::ConstraintViolation =>
        {
            Err(DomainError::Conflict(format!(
                "user '{username}' already exists"
            )))
        }
        Err(e) => Err(e.into()),
    }
}

fn user_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        is_admin: r.get(2)?,
        created_at: r.get(3)?,
    })
}

pub fn get_by_name(conn: &Connection, username: &str) -> Result<Option<User>, DomainError> {
    Ok(conn
        .query_row(
            "SELECT id, username, is_admin, created_at FROM users WHERE username = ?1",
            [username],
            user_from_row,
        )
        .optional()?)
}

pub fn list(conn: &Connection) -> Result<Vec<User>, DomainError> {
    let mut s = conn.prepare("SELECT id, username, is_admin, created_at FROM users ORDER BY id")?;
    let rows = s.query_map([], user_from_row)?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// A token as listed (never the secret).
#[derive(Debug, Clone, Serialize)]
pub struct TokenInfo {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
    pub revoked_at: Option<i64>,
}

/// Creates a token for `user_id`; returns the secret (shown once) and its row.
pub fn create_token(
    conn: &rusqlite::Transaction<'_>,
    user_id: i64,
    name: &str,
) -> Result<(String, TokenInfo), DomainError> {
    if name.trim().is_empty() || name.len() > 100 {
        return Err(invalid("name", "1 to 100 characters"));
    }
    let secret = format!("{TOKEN_PREFIX}{}", random_secret()?);
    let prefix: String = secret.chars().take(TOKEN_PREFIX.len() + 6).collect();
    let now = now_ms();
    conn.execute(
        "INSERT INTO api_tokens (user_id, name, token_hash, prefix, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
        params![user_id, name, sha256_hex(&secret), prefix, now],
    )?;
    Ok((
        secret,
        TokenInfo {
            id: conn.last_insert_rowid(),
            name: name.into(),
            prefix,
            created_at: now,
            last_used_at: None,
            revoked_at: None,
        },
    ))
}

/// The user a bearer token belongs to, if the token is valid and not revoked.
pub fn verify_token(conn: &Connection, secret: &str) -> Result<Option<User>, DomainError> {
    if !secret.starts_with(TOKEN_PREFIX) {
        return Ok(None);
    }
    // Looked up by hash: an index lookup, and equal hashes are the only match.
    let mut stmt = conn.prepare_cached(
        "SELECT u.id, u.username, u.is_admin, u.created_at FROM api_tokens t
         JOIN users u ON u.id = t.user_id
         WHERE t.token_hash = ?1 AND t.revoked_at IS NULL",
    )?;
    Ok(stmt
        .query_row([sha256_hex(secret)], user_from_row)
        .optional()?)
}

pub fn revoke_token(
    conn: &rusqlite::Transaction<'_>,
    user_id: i64,
    token_id: i64,
) -> Result<(), DomainError> {
    let n = conn.execute(
        "UPDATE api_tokens SET revoked_at = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
        params![token_id, user_id, now_ms()],
    )?;
    if n == 0 {
        return Err(DomainError::NotFound(format!("token {token_id}")));
    }
    Ok(())
}

/// Shortest password accepted for a UI account.
pub const MIN_PASSWORD_LEN: usize = 10;

/// An argon2id PHC string for `password` (random salt, the crate's default cost).
pub fn hash_password(password: &str) -> Result<String, DomainError> {
    use argon2::password_hash::{PasswordHasher, SaltString};
    if password.chars().count() < MIN_PASSWORD_LEN {
        return Err(invalid(
            "password",
            format!("at least {MIN_PASSWORD_LEN} characters"),
        ));
    }
    if password.len() > 1024 {
        return Err(invalid("password", "at most 1024 bytes"));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt)
        .map_err(|e| DomainError::Random(format!("the OS random source failed: {e}")))?;
    let salt = SaltString::encode_b64(&salt)
        .map_err(|e| DomainError::Random(format!("encoding a password salt: {e}")))?;
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| DomainError::Random(format!("hashing a password: {e}")))
}

/// True when `password` matches the stored PHC string (constant-time inside argon2).
pub fn password_matches(phc: &str, password: &str) -> bool {
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(phc)
        .map(|h| {
            argon2::Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        })
        .unwrap_or(false)
}

/// Sets (or replaces) a user's password and ends the user's UI sessions (a new
/// password is often set because the old one leaked). Returns how many ended.
pub fn set_password(
    conn: &rusqlite::Transaction<'_>,
    user_id: i64,
    password: &str,
) -> Result<usize, DomainError> {
    let phc = hash_password(password)?;
    let n = conn.execute(
        "UPDATE users SET password_hash = ?2 WHERE id = ?1",
        params![user_id, phc],
    )?;
    if n == 0 {
        return Err(DomainError::NotFound(format!("user {user_id}")));
    }
    super::sessions::delete_for_user(conn, user_id)
}

/// The stored password hash of `username`, with the user (None: no such user, or no
/// password set).
pub fn password_hash_of(
    conn: &Connection,
    username: &str,
) -> Result<Option<(User, String)>, DomainError> {
    Ok(conn
        .query_row(
            "SELECT id, username, is_admin, created_at, password_hash FROM users
             WHERE username = ?1 AND password_hash IS NOT NULL",
            [username],
            |r| Ok((user_from_row(r)?, r.get::<_, String>(4)?)),
        )
        .optional()?)
}

/// True while no account can log in to the UI (first-run setup is open).
pub fn setup_needed(conn: &Connection) -> Result<bool, DomainError> {
    Ok(!conn.query_row(
        "SELECT EXISTS (SELECT 1 FROM users WHERE password_hash IS NOT NULL)",
        [],
        |r| r.get::<_, bool>(0),
    )?)
}

pub fn get(conn: &Connection, id: i64) -> Result<Option<User>, DomainError> {
    Ok(conn
        .query_row(
            "SELECT id, username, is_admin, created_at FROM users WHERE id = ?1",
            [id],
            user_from_row,
        )
        .optional()?)
}

/// A user's tokens, newest first (never the secrets).
pub fn tokens(conn: &Connection, user_id: i64) -> Result<Vec<TokenInfo>, DomainError> {
    let mut s = conn.prepare(
        "SELECT id, name, prefix, created_at, last_used_at, revoked_at FROM api_tokens
         WHERE user_id = ?1 ORDER BY id DESC",
    )?;
    let rows = s.query_map([user_id], |r| {
        Ok(TokenInfo {
            id: r.get(0)?,
            name: r.get(1)?,
            prefix: r.get(2)?,
            created_at: r.get(3)?,
            last_used_at: r.get(4)?,
            revoked_at: r.get(5)?,
        })
    })?;
    Ok(rows.collect::<Result<_, _>>()?)
}

/// Whether a user has a password (can log in to the UI).
pub fn has_password(conn: &Connection, user_id: i64) -> Result<bool, DomainError> {
    Ok(conn
        .query_row(
            "SELECT password_hash IS NOT NULL FROM users WHERE id = ?1",
            [user_id],
            |r| r.get(0),
        )
        .optional()?
        .unwrap_or(false))
}
