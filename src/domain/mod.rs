//! The domain: users and tokens, nodes, templates, servers (DESIGN §5).

pub mod backups;
pub mod credentials;
pub mod crontab;
pub mod edge;
pub mod enrollments;
pub mod follow;
pub mod nodes;
pub mod players;
pub mod schedules;
pub mod servers;
pub mod sessions;
pub mod templates;
pub mod upgrades;
pub mod users;
pub mod versions;

/// A domain rule broken by a request: names the field.
#[derive(Debug, thiserror::Error)]
pub enum DomainError {
    #[error("{field}: {message}")]
    Invalid { field: String, message: String },
    #[error("{0}")]
    Conflict(String),
    /// A unique value (a name) is already used.
    #[error("{field}: {message}")]
    Taken { field: String, message: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error(transparent)]
    Queue(#[from] crate::queue::QueueError),
    /// No secret could be made (the OS random source failed).
    #[error("{0}")]
    Random(String),
}

/// Domain work done inside a queue transaction (a job's fenced write, a boot step).
impl From<DomainError> for crate::queue::QueueError {
    fn from(e: DomainError) -> Self {
        match e {
            DomainError::Db(d) => crate::queue::QueueError::Db(d),
            DomainError::Queue(q) => q,
            // A broken rule is not a database failure: say which rule.
            other => crate::queue::QueueError::Refused(other.to_string()),
        }
    }
}

impl From<rusqlite::Error> for DomainError {
    fn from(e: rusqlite::Error) -> Self {
        DomainError::Db(e.into())
    }
}

pub fn invalid(field: &str, message: impl Into<String>) -> DomainError {
    DomainError::Invalid {
        field: field.into(),
        message: message.into(),
    }
}

/// One line of text: no line breaks, NUL or other control characters (a tab is fine).
pub fn is_one_line(s: &str) -> bool {
    !s.chars().any(|c| c.is_control() && c != '\t')
}

/// A game version as servers and templates name it: 1–40 of letters, digits, `.`,
/// `_`, `-`, `+`; never `..` or a leading `.` (it becomes part of mirror paths).
pub fn is_version(v: &str) -> bool {
    (1..=40).contains(&v.len())
        && !v.starts_with('.')
        && !v.contains("..")
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-+".contains(&b))
}

/// True for an RFC 1123 DNS label in lower case: 1–63 of `a-z0-9-`, no leading or
/// trailing hyphen.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A random secret as 64 hex digits (256 bits from the OS).
pub fn random_secret() -> Result<String, DomainError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)
        .map_err(|e| DomainError::Random(format!("the OS random source failed: {e}")))?;
    Ok(crate::util::hex(&bytes))
}

pub fn sha256_hex(s: &str) -> String {
    use sha2::{Digest, Sha256};
    crate::util::hex(&Sha256::digest(s.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "mc-1", "survival", "0day"] {
            assert!(is_dns_label(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "Mc", "a_b", "a.b", &"x".repeat(64)] {
            assert!(!is_dns_label(bad), "{bad}");
        }
    }
}
