//! `server.properties`: a parser and editor that keeps every byte it does not change
//! (order, comments, blank lines, odd spacing, line endings, unknown keys, escapes),
//! and the typed rules of the keys people edit. Pure: both the agent (which writes the
//! file) and the control plane (which validates and shows it) use it.
//!
//! The format is Java's `Properties`: `#`/`!` comments, a key ends at an unescaped
//! `=`, `:` or whitespace, a trailing odd backslash continues the line, `\uXXXX` and
//! `\t \n \r \f` escapes.

use std::collections::BTreeMap;
use std::ops::Range;

/// One key of the file, where its value sits in the text.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    key: String,
    value: String,
    /// Bytes of the raw value (escapes included, continuations included), which an
    /// edit replaces; everything before (key, separator, spacing) stays.
    value_span: Range<usize>,
}

/// A parsed `server.properties` text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Properties {
    text: String,
    entries: Vec<Entry>,
}

impl Properties {
    pub fn parse(text: &str) -> Properties {
        let mut entries = Vec::new();
        let bytes = text.as_bytes();
        let mut pos = 0;
        while pos < bytes.len() {
            // One logical line: physical lines joined by odd trailing backslashes.
            let start = pos;
            let mut end;
            loop {
                end = line_end(bytes, pos);
                let content_end = trim_eol(bytes, pos, end);
                let continued = trailing_backslashes(&bytes[pos..content_end]) % 2 == 1;
                pos = end;
                if !continued || pos >= bytes.len() {
                    break;
                }
            }
            let logical_end = trim_eol(bytes, start, end);
            if let Some(e) = parse_entry(text, start, logical_end) {
                entries.push(e);
            }
        }
        Properties {
            text: text.to_string(),
            entries,
        }
    }

    /// The text as it is now.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The value of `key` (the last one when it appears twice, as Java reads it).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries
            .iter()
            .rev()
            .find(|e| e.key == key)
            .map(|e| e.value.as_str())
    }

    /// Every key with its value, in file order (a repeated key: its last value).
    pub fn values(&self) -> BTreeMap<String, String> {
        self.entries
            .iter()
            .map(|e| (e.key.clone(), e.value.clone()))
            .collect()
    }

    /// Keys in the order of the file, each once.
    pub fn keys(&self) -> Vec<String> {
        let mut seen = std::collections::BTreeSet::new();
        self.entries
            .iter()
            .filter(|e| seen.insert(e.key.clone()))
            .map(|e| e.key.clone())
            .collect()
    }

    /// Sets `key` to `value`: only the value's bytes change (of its last occurrence);
    /// a new key is appended on a line of its own, in the file's line ending.
    pub fn set(&mut self, key: &str, value: &str) {
        if self.get(key) == Some(value) {
            return;
        }
        let escaped = escape_value(value);
        match self.entries.iter().rposition(|e| e.key == key) {
            Some(i) => {
                let span = self.entries[i].value_span.clone();
                self.text.replace_range(span, &escaped);
            }
            None => {
                let eol = if self.text.contains("\r\n") {
                    "\r\n"
                } else {
                    "\n"
                };
                if !self.text.is_empty() && !self.text.ends_with('\n') {
                    self.text.push_str(eol);
                }
                self.text.push_str(&escape_key(key));
                self.text.push('=');
                self.text.push_str(&escaped);
                self.text.push_str(eol);
            }
        }
        *self = Properties::parse(&self.text);
    }
}

fn line_end(bytes: &[u8], from: usize) -> usize {
    match bytes[from..].iter().position(|&b| b == b'\n' || b == b'\r') {
        Some(i) => {
            let at = from + i;
            if bytes[at] == b'\r' && bytes.get(at + 1) == Some(&b'\n') {
                at + 2
            } else {
                at + 1
            }
        }
        None => bytes.len(),
    }
}

/// `end` without its line terminator.
fn trim_eol(bytes: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && matches!(bytes[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
}

fn trailing_backslashes(line: &[u8]) -> usize {
    line.iter().rev().take_while(|&&b| b == b'\\').count()
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\x0c')
}

fn parse_entry(text: &str, start: usize, end: usize) -> Option<Entry> {
    let b = text.as_bytes();
    let mut i = start;
    while i < end && is_ws(b[i]) {
        i += 1;
    }
    if i >= end || b[i] == b'#' || b[i] == b'!' {
        return None;
    }
    let key_start = i;
    while i < end {
        match b[i] {
            b'\\' => i += 2,
            c if c == b'=' || c == b':' || is_ws(c) => break,
            _ => i += 1,
        }
    }
    let key_end = i.min(end);
    let key = unescape(&text[key_start..key_end]);
    // Separator: spaces, at most one `=` or `:`, spaces.
    while i < end && is_ws(b[i]) {
        i += 1;
    }
    if i < end && (b[i] == b'=' || b[i] == b':') {
        i += 1;
        while i < end && is_ws(b[i]) {
            i += 1;
        }
    }
    let value_start = i.min(end);
    Some(Entry {
        key,
        value: unescape(&text[value_start..end]),
        value_span: value_start..end,
    })
}

/// Java's `Properties` escapes; a continuation drops the line break and the next
/// line's leading spaces.
fn unescape(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    // `\uXXXX` escapes are UTF-16 units: a surrogate pair is two escapes in a row.
    let mut units: Vec<u16> = Vec::new();
    let flush = |units: &mut Vec<u16>, out: &mut String| {
        if !units.is_empty() {
            out.push_str(&String::from_utf16_lossy(units));
            units.clear();
        }
    };
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\\' {
            flush(&mut units, &mut out);
            out.push(c);
            continue;
        }
        let next = chars.next();
        if next != Some('u') {
            flush(&mut units, &mut out);
        }
        match next {
            None => {}
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some('f') => out.push('\x0c'),
            Some('u') => {
                let hex: String = (0..4).filter_map(|_| chars.next()).collect();
                match u16::from_str_radix(&hex, 16) {
                    Ok(unit) if hex.len() == 4 => units.push(unit),
                    _ => {
                        flush(&mut units, &mut out);
                        out.push_str(&hex);
                    }
                }
            }
            Some('\r') | Some('\n') => {
                // A continuation: skip the rest of the break and the next indent.
                while let Some(&n) = chars.peek() {
                    if n == '\n' || n == '\r' || n == ' ' || n == '\t' || n == '\x0c' {
                        chars.next();
                    } else {
                        break;
                    }
                }
            }
            Some(other) => out.push(other),
        }
    }
    flush(&mut units, &mut out);
    out
}

/// A value as Java's `Properties.store` writes it: special characters escaped,
/// anything outside ASCII as `\uXXXX` (readable whatever charset the game assumes).
pub fn escape_value(v: &str) -> String {
    escape(v, false)
}

fn escape_key(k: &str) -> String {
    escape(k, true)
}

fn escape(v: &str, key: bool) -> String {
    let mut out = String::with_capacity(v.len());
    for (i, c) in v.chars().enumerate() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\x0c' => out.push_str("\\f"),
            '=' | ':' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            ' ' if key || i == 0 => out.push_str("\\ "),
            c if (c as u32) < 0x20 || (c as u32) > 0x7e => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    out.push_str(&format!("\\u{unit:04X}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// What a typed key accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int { min: i64, max: i64 },
    Enum(&'static [&'static str]),
    Text { max_len: usize },
}

/// A key the editor knows: its type and a short label.
#[derive(Debug, Clone, Copy)]
pub struct Typed {
    pub key: &'static str,
    pub kind: Kind,
    pub label: &'static str,
}

/// The keys people change, with their types (vanilla's ranges).
pub const TYPED: &[Typed] = &[
    Typed {
        key: "motd",
        kind: Kind::Text { max_len: 256 },
        label: "Message of the day",
    },
    Typed {
        key: "max-players",
        kind: Kind::Int {
            min: 0,
            max: 1_000_000,
        },
        label: "Max players",
    },
    Typed {
        key: "difficulty",
        kind: Kind::Enum(&["peaceful", "easy", "normal", "hard"]),
        label: "Difficulty",
    },
    Typed {
        key: "gamemode",
        kind: Kind::Enum(&["survival", "creative", "adventure", "spectator"]),
        label: "Game mode",
    },
    Typed {
        key: "hardcore",
        kind: Kind::Bool,
        label: "Hardcore",
    },
    Typed {
        key: "pvp",
        kind: Kind::Bool,
        label: "PvP",
    },
    Typed {
        key: "white-list",
        kind: Kind::Bool,
        label: "Whitelist",
    },
    Typed {
        key: "enforce-whitelist",
        kind: Kind::Bool,
        label: "Enforce whitelist",
    },
    Typed {
        key: "online-mode",
        kind: Kind::Bool,
        label: "Online mode",
    },
    Typed {
        key: "view-distance",
        kind: Kind::Int { min: 3, max: 32 },
        label: "View distance",
    },
    Typed {
        key: "simulation-distance",
        kind: Kind::Int { min: 3, max: 32 },
        label: "Simulation distance",
    },
    Typed {
        key: "spawn-protection",
        kind: Kind::Int {
            min: 0,
            max: 29_999_984,
        },
        label: "Spawn protection",
    },
    Typed {
        key: "level-seed",
        kind: Kind::Text { max_len: 256 },
        label: "Level seed",
    },
    Typed {
        key: "level-type",
        kind: Kind::Enum(&[
            "minecraft:normal",
            "minecraft:flat",
            "minecraft:large_biomes",
            "minecraft:amplified",
            "minecraft:single_biome_surface",
            "normal",
            "flat",
            "large_biomes",
            "amplified",
            "default",
        ]),
        label: "Level type",
    },
    Typed {
        key: "allow-flight",
        kind: Kind::Bool,
        label: "Allow flight",
    },
    Typed {
        key: "allow-nether",
        kind: Kind::Bool,
        label: "Allow the Nether",
    },
    Typed {
        key: "spawn-monsters",
        kind: Kind::Bool,
        label: "Spawn monsters",
    },
    Typed {
        key: "force-gamemode",
        kind: Kind::Bool,
        label: "Force game mode",
    },
    Typed {
        key: "player-idle-timeout",
        kind: Kind::Int {
            min: 0,
            max: 1_000_000,
        },
        label: "Idle kick (minutes, 0 = never)",
    },
    Typed {
        key: "max-world-size",
        kind: Kind::Int {
            min: 1,
            max: 29_999_984,
        },
        label: "Max world radius",
    },
];

/// Keys zlh manages itself: ports, addresses, query/rcon and status (the readiness
/// probe needs it). Shown, never edited.
pub const MANAGED: &[&str] = &[
    "server-port",
    "server-ip",
    "query.port",
    "enable-query",
    "rcon.port",
    "enable-rcon",
    "rcon.password",
    "enable-status",
    "prevent-proxy-connections",
];

pub fn typed(key: &str) -> Option<&'static Typed> {
    TYPED.iter().find(|t| t.key == key)
}

/// Checks one value; the error says what the key accepts.
pub fn validate(key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.contains(['\n', '\r']) {
        return Err("a key is one non-empty line".into());
    }
    let Some(t) = typed(key) else {
        // Unknown keys are the game's business; only keep them one line.
        return if value.contains(['\n', '\r']) {
            Err("one line".into())
        } else {
            Ok(())
        };
    };
    match t.kind {
        Kind::Bool => match value {
            "true" | "false" => Ok(()),
            _ => Err("true or false".into()),
        },
        Kind::Int { min, max } => match value.trim().parse::<i64>() {
            Ok(n) if (min..=max).contains(&n) => Ok(()),
            _ => Err(format!("a whole number from {min} to {max}")),
        },
        Kind::Enum(options) => {
            if options.contains(&value) {
                Ok(())
            } else {
                Err(format!("one of {}", options.join(", ")))
            }
        }
        Kind::Text { max_len } => {
            if value.contains(['\n', '\r']) {
                Err("one line".into())
            } else if value.chars().count() > max_len {
                Err(format!("at most {max_len} characters"))
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const REAL: &str = "#Minecraft server properties\r\n#Thu Nov 27 10:00:00 UTC 2026\r\nenable-jmx-monitoring=false\r\nrcon.port=25575\r\nlevel-seed=\r\ngamemode=survival\r\nenable-command-block=false\r\n  motd = A\\:B \\u00e9t\\u00e9   \r\nmax-players=20\r\n! bang comment\r\n\r\nview-distance:10\r\nsome-plugin.key   value with spaces\r\nlong=first \\\r\n    second\r\nmax-players=21\r\nunknown-key=keep me\r\nlast-without-newline=1";

    #[test]
    fn parses_java_properties() {
        let p = Properties::parse(REAL);
        assert_eq!(p.get("motd"), Some("A:B été   "));
        assert_eq!(p.get("view-distance"), Some("10"));
        assert_eq!(p.get("some-plugin.key"), Some("value with spaces"));
        assert_eq!(p.get("long"), Some("first second"));
        assert_eq!(p.get("level-seed"), Some(""));
        assert_eq!(p.get("max-players"), Some("21"), "the last one wins");
        assert_eq!(p.get("last-without-newline"), Some("1"));
        assert_eq!(p.get("bang"), None);
        assert_eq!(p.text(), REAL);
    }

    #[test]
    fn editing_two_keys_changes_only_their_values() {
        let mut p = Properties::parse(REAL);
        p.set("gamemode", "creative");
        p.set("max-players", "50");
        let expected = REAL
            .replace("gamemode=survival", "gamemode=creative")
            .replace("max-players=21", "max-players=50");
        assert_eq!(p.text(), expected);
        assert!(
            p.text().contains("max-players=20\r\n"),
            "the shadowed one stays"
        );
    }

    #[test]
    fn a_continued_value_is_replaced_whole_and_new_keys_use_the_files_line_ending() {
        let mut p = Properties::parse(REAL);
        p.set("long", "one");
        p.set("new-key", "x=y");
        assert!(p.text().contains("long=one\r\nmax-players=21"));
        assert!(
            p.text()
                .ends_with("last-without-newline=1\r\nnew-key=x\\=y\r\n")
        );
        assert_eq!(Properties::parse(p.text()).get("new-key"), Some("x=y"));
    }

    #[test]
    fn setting_the_same_value_changes_nothing() {
        let mut p = Properties::parse(REAL);
        p.set("motd", "A:B été   ");
        assert_eq!(p.text(), REAL);
    }

    #[test]
    fn escapes_round_trip() {
        for v in [
            " lead",
            "a:b=c#d!e",
            "tab\there",
            "ünï ☃ 😀",
            "back\\slash",
            "",
        ] {
            let mut p = Properties::parse("motd=x\n");
            p.set("motd", v);
            assert_eq!(Properties::parse(p.text()).get("motd"), Some(v), "{v:?}");
        }
    }

    #[test]
    fn typed_keys_are_checked() {
        assert!(validate("max-players", "20").is_ok());
        assert!(validate("max-players", "-1").unwrap_err().contains("0 to"));
        assert!(
            validate("difficulty", "insane")
                .unwrap_err()
                .contains("peaceful")
        );
        assert!(validate("pvp", "yes").is_err());
        assert!(validate("view-distance", "2").is_err());
        assert!(validate("motd", "two\nlines").is_err());
        assert!(validate("some-mod-key", "anything").is_ok());
    }
}
