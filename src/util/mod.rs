//! Small shared helpers, and the HTTP listener of `zlh serve` and `zlh agent`.

pub mod listener;
pub mod tls;
pub mod url;

/// Milliseconds since the Unix epoch: the one clock of the control plane and the agent.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Lowercase hex of `bytes` (digests, random secrets).
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        // Writing to a String cannot fail.
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Formats ms since the epoch as RFC 3339 UTC (`2026-11-28T12:47:49Z`).
pub fn format_ts(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// (year, month, day) to days since 1970-01-01 (the inverse of [`civil_from_days`]).
pub fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Percent-encodes everything but RFC 3986 unreserved characters and the bytes in
/// `keep` (a URL path segment keeps nothing; a local path in a query keeps `/`).
pub fn percent_encode(s: &str, keep: &[u8]) -> String {
    use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
    const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    const UNRESERVED_AND_SLASH: &AsciiSet = &UNRESERVED.remove(b'/');
    let set = if keep.contains(&b'/') {
        UNRESERVED_AND_SLASH
    } else {
        UNRESERVED
    };
    debug_assert!(keep.iter().all(|b| *b == b'/'), "only '/' can be kept");
    utf8_percent_encode(s, set).to_string()
}

/// Parses a duration the way `humantime` spells them (`250ms`, `30s`, `2m`, `1h 30m`,
/// `1d`), or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<std::time::Duration, String> {
    let t = text.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        return t
            .parse()
            .map(std::time::Duration::from_secs)
            .map_err(|_| format!("'{text}' is too large a number of seconds"));
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("'{text}' is not a duration (e.g. 500ms, 30s, 2m, 1h 30m): {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        use std::time::Duration;
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("5"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_ts(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_ts(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(format_ts(1_795_873_669_000), "2026-11-28T13:47:49Z");
    }
}

/// The most of a user-supplied string one log field carries (characters).
pub const LOG_FIELD_MAX: usize = 512;

/// A user-supplied string (a user name, a path, an error that quotes input) as a log
/// field: always quoted and escaped, so a `\n` cannot forge a line nor an escape code
/// paint a terminal, and cut to [`LOG_FIELD_MAX`] characters, saying how much was cut,
/// so a 1 MB name costs the log a few hundred bytes. `%` and `?` print the same.
pub struct Untrusted<'a>(&'a str);

/// See [`Untrusted`]: `tracing::info!(user = ?untrusted(&name), …)`.
pub fn untrusted(s: &str) -> Untrusted<'_> {
    Untrusted(s)
}

impl std::fmt::Debug for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let end = self
            .0
            .char_indices()
            .nth(LOG_FIELD_MAX)
            .map_or(self.0.len(), |(i, _)| i);
        write!(f, "{:?}", &self.0[..end])?;
        if end < self.0.len() {
            write!(f, "…(+{} bytes)", self.0.len() - end)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

#[cfg(test)]
mod untrusted_tests {
    use super::*;

    #[test]
    fn untrusted_strings_are_escaped_and_cut() {
        assert_eq!(
            format!("{:?}", untrusted("a\nINFO forged")),
            "\"a\\nINFO forged\""
        );
        assert_eq!(format!("{}", untrusted("\u{1b}[31m")), "\"\\u{1b}[31m\"");
        let long = "é".repeat(LOG_FIELD_MAX + 10);
        let shown = format!("{:?}", untrusted(&long));
        assert!(shown.ends_with("…(+20 bytes)"), "{shown}");
        assert!(shown.len() < 2 * LOG_FIELD_MAX + 40, "{}", shown.len());
    }
}
