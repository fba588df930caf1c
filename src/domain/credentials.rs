//! Who may make the artifact mirror fetch from upstream (DESIGN §7): anyone may
//! read what the mirror holds, but a fill costs upstream traffic and disk for good,
//! so it needs a credential zlh issued — an API token, a UI session, a live
//! server's agent token or a node's bootstrap token.

use rusqlite::Connection;

use super::DomainError;
use crate::agent::constant_time_eq;

/// What a request presented.
#[derive(Debug, Default, Clone)]
pub struct Presented {
    /// `Authorization: Bearer …`.
    pub bearer: Option<String>,
    /// The `zlh_session` cookie.
    pub session: Option<String>,
}

/// Whether `p` carries a credential that may start an upstream fill.
pub fn may_fill(conn: &Connection, p: &Presented) -> Result<bool, DomainError> {
    if let Some(s) = p.session.as_deref().filter(|s| !s.is_empty())
        && super::sessions::lookup(conn, s)?.is_some()
    {
        return Ok(true);
    }
    let Some(bearer) = p.bearer.as_deref().filter(|b| !b.is_empty()) else {
        return Ok(false);
    };
    if super::users::verify_token(conn, bearer)?.is_some() {
        return Ok(true);
    }
    // Agent tokens are sealed with a random nonce each: no lookup by value, so every
    // live one is opened and compared (a few hundred at most, and only on a miss).
    let mut stmt =
        conn.prepare_cached("SELECT agent_token FROM servers WHERE deleted_at IS NULL")?;
    let tokens = stmt.query_map([], |r| crate::db::secret::open_column(r, 0))?;
    let mut matched = false;
    for t in tokens {
        matched |= constant_time_eq(t?.as_bytes(), bearer.as_bytes());
    }
    if matched {
        return Ok(true);
    }
    for node in super::nodes::list(conn)? {
        if let Some(b) = node.settings["bootstrap_token"].as_str()
            && !b.is_empty()
            && constant_time_eq(b.as_bytes(), bearer.as_bytes())
        {
            return Ok(true);
        }
    }
    Ok(false)
}
