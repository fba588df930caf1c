//! Secrets at rest: agent tokens and nodes' API secrets are stored sealed with
//! XChaCha20-Poly1305 (a random 192-bit nonce per value) as `enc:v1:<base64 of
//! nonce + ciphertext>`, under a 256-bit key kept in a file beside the database
//! (`<data_dir>/secret.key`, 0600, made at first start; or `secret_key_file`). A
//! copied `zlh.db` or database backup alone reveals no secret.
//!
//! The database remembers which key sealed it (`meta.secret_key_id`, a SHA-256 of
//! the key): opening or restoring it with another key is refused up front, naming
//! both files, instead of failing at the first agent call.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use base64::Engine;
use chacha20poly1305::aead::Aead;
use chacha20poly1305::{KeyInit, XChaCha20Poly1305, XNonce};
use rusqlite::Connection;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The key file's name in the data dir (unless `secret_key_file` says otherwise).
pub const KEY_FILE: &str = "secret.key";
/// `meta` key of the id of the key the database's secrets are sealed with.
pub const KEY_ID_META: &str = "secret_key_id";
/// Keys of node settings that are secrets.
pub const NODE_SECRET_KEYS: &[&str] = &["token_secret", "bootstrap_token", "password"];

const PREFIX: &str = "enc:v1:";
const NONCE_LEN: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("secret key file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("secret key file {path} must hold one line of 64 hex digits (a 256-bit key)")]
    BadKey { path: PathBuf },
    #[error(
        "secret key file {path} may be read by group or others (mode {mode:o}): `chmod 600` it"
    )]
    LooseKey { path: PathBuf, mode: u32 },
    #[error(
        "the secrets in {db} are sealed with another key (key id {stored}) than {path} ({current}): \
         put the secret.key that belongs to this database in place (see README, \"Moving to a new host\"), \
         or point ZLH_SECRET_KEY_FILE at it"
    )]
    WrongKey {
        db: PathBuf,
        path: PathBuf,
        stored: String,
        current: String,
    },
    #[error("a stored secret does not open with the key {0} (damaged, or sealed with another key)")]
    Open(PathBuf),
    #[error("no random numbers for a nonce: {0}")]
    Random(String),
    #[error("the secret key is not loaded")]
    NoKey,
}

/// A data dir's key.
pub struct Key {
    cipher: XChaCha20Poly1305,
    id: String,
    path: PathBuf,
}

impl Key {
    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Keys loaded by this process, by key file (one in `zlh serve`; tests and tools
/// may open several data dirs).
static KEYS: Mutex<Vec<Arc<Key>>> = Mutex::new(Vec::new());
static KEY_FILE_SETTING: OnceLock<PathBuf> = OnceLock::new();

fn keys() -> std::sync::MutexGuard<'static, Vec<Arc<Key>>> {
    KEYS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Uses `path` as the key file instead of `<data_dir>/secret.key` (the
/// `secret_key_file` setting); call before the database is opened.
pub fn set_key_file(path: PathBuf) {
    // A second call in one process (tests) keeps the first: one key per process.
    if KEY_FILE_SETTING.set(path).is_err() {
        tracing::debug!("secret_key_file already set for this process");
    }
}

/// Where the key of `data_dir` lives.
pub fn key_path(data_dir: &Path) -> PathBuf {
    KEY_FILE_SETTING
        .get()
        .cloned()
        .unwrap_or_else(|| data_dir.join(KEY_FILE))
}

/// The key of `data_dir`: loaded from its key file, which is made (0600) when
/// missing. Loaded once per process and key file.
pub fn load(data_dir: &Path) -> Result<Arc<Key>, SecretError> {
    let path = key_path(data_dir);
    let mut keys = keys();
    if let Some(k) = keys.iter().find(|k| k.path == path) {
        return Ok(k.clone());
    }
    let key = Arc::new(read_or_create(&path)?);
    keys.push(key.clone());
    Ok(key)
}

/// The key of the database `conn` is open on.
fn key_of(conn: &Connection) -> Result<Arc<Key>, SecretError> {
    match conn.path().filter(|p| !p.is_empty()) {
        Some(db) => {
            let dir = Path::new(db)
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or(Path::new("."));
            load(dir)
        }
        // An in-memory database: the process's key, if it has exactly one.
        None => match keys().as_slice() {
            [k] => Ok(k.clone()),
            _ => Err(SecretError::NoKey),
        },
    }
}

/// The key of a key file, without making one or keeping it (a restore's check).
pub fn key_id_of_file(path: &Path) -> Result<Option<String>, SecretError> {
    if !path.exists() {
        return Ok(None);
    }
    let bytes = read_key(path)?;
    Ok(Some(key_id(&bytes)))
}

fn key_id(bytes: &[u8; 32]) -> String {
    let mut h = Sha256::new();
    h.update(b"zlh secret key id v1\0");
    h.update(bytes);
    h.finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
}

fn read_key(path: &Path) -> Result<[u8; 32], SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mode = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(SecretError::LooseKey {
            path: path.to_path_buf(),
            mode,
        });
    }
    let text = std::fs::read_to_string(path).map_err(io)?;
    let hex = text.trim();
    let bad = || SecretError::BadKey {
        path: path.to_path_buf(),
    };
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut out = [0u8; 32];
    for (i, chunk) in hex.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(chunk).map_err(|_| bad())?;
        out[i] = u8::from_str_radix(s, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

fn read_or_create(path: &Path) -> Result<Key, SecretError> {
    let io = |source| SecretError::Io {
        path: path.to_path_buf(),
        source,
    };
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).map_err(|e| SecretError::Random(e.to_string()))?;
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(io)?;
        }
        // create_new: two first starts at once must not write two different keys.
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(mut f) => {
                f.write_all(format!("{hex}\n").as_bytes()).map_err(io)?;
                f.sync_all().map_err(io)?;
                tracing::info!(path = %path.display(), "made a new secret key: keep it with the database's backups");
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io(e)),
        }
    }
    let bytes = read_key(path)?;
    Ok(Key {
        cipher: XChaCha20Poly1305::new(&bytes.into()),
        id: key_id(&bytes),
        path: path.to_path_buf(),
    })
}

/// Whether a stored value is sealed (not a clear value from before this scheme).
pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// Seals `plain` under the key of the database `conn` is open on.
pub fn seal(conn: &Connection, plain: &str) -> Result<String, SecretError> {
    seal_with(key_of(conn)?.as_ref(), plain)
}

fn seal_with(key: &Key, plain: &str) -> Result<String, SecretError> {
    let mut nonce = [0u8; NONCE_LEN];
    getrandom::fill(&mut nonce).map_err(|e| SecretError::Random(e.to_string()))?;
    let ct = key
        .cipher
        .encrypt(XNonce::from_slice(&nonce), plain.as_bytes())
        .map_err(|_| SecretError::Open(key.path.clone()))?;
    let mut raw = nonce.to_vec();
    raw.extend_from_slice(&ct);
    Ok(format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(raw)
    ))
}

/// Opens a stored value; a clear one (written before this scheme, and sealed at
/// the next start) is returned as it is.
pub fn open(stored: &str) -> Result<String, SecretError> {
    let Some(b64) = stored.strip_prefix(PREFIX) else {
        return Ok(stored.to_string());
    };
    let keys: Vec<Arc<Key>> = keys().clone();
    let fail = || {
        SecretError::Open(
            keys.first()
                .map(|k| k.path.clone())
                .unwrap_or_else(|| PathBuf::from(KEY_FILE)),
        )
    };
    let raw = base64::engine::general_purpose::STANDARD_NO_PAD
        .decode(b64)
        .map_err(|_| fail())?;
    if raw.len() < NONCE_LEN {
        return Err(fail());
    }
    let (nonce, ct) = raw.split_at(NONCE_LEN);
    // The AEAD tag tells which loaded key sealed it (with one data dir: the one).
    let plain = keys
        .iter()
        .find_map(|k| k.cipher.decrypt(XNonce::from_slice(nonce), ct).ok())
        .ok_or_else(fail)?;
    String::from_utf8(plain).map_err(|_| fail())
}

/// A sealed text column, opened (for row mappers).
pub fn open_column(row: &rusqlite::Row<'_>, idx: usize) -> rusqlite::Result<String> {
    let stored: String = row.get(idx)?;
    open(&stored).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(idx, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// Node settings with their secret values sealed (`open_settings` undoes it).
pub fn seal_settings(conn: &Connection, settings: &Value) -> Result<Value, SecretError> {
    seal_settings_with(key_of(conn)?.as_ref(), settings)
}

fn seal_settings_with(key: &Key, settings: &Value) -> Result<Value, SecretError> {
    let mut out = settings.clone();
    if let Some(obj) = out.as_object_mut() {
        for k in NODE_SECRET_KEYS {
            if let Some(Value::String(s)) = obj.get(*k)
                && !is_sealed(s)
            {
                let sealed = seal_with(key, s)?;
                obj.insert((*k).to_string(), Value::String(sealed));
            }
        }
    }
    Ok(out)
}

/// Node settings with their secret values opened.
pub fn open_settings(settings: &Value) -> Result<Value, SecretError> {
    let mut out = settings.clone();
    if let Some(obj) = out.as_object_mut() {
        for k in NODE_SECRET_KEYS {
            if let Some(Value::String(s)) = obj.get(*k)
                && is_sealed(s)
            {
                let opened = open(s)?;
                obj.insert((*k).to_string(), Value::String(opened));
            }
        }
    }
    Ok(out)
}

/// Blanks the secrets of a stored agent payload (the agent token, the forwarding
/// secret and where it was filled into seeded files); true when something changed.
pub fn redact_payload(payload: &mut Value) -> bool {
    const BLANK: &str = "********";
    let mut changed = false;
    let secret = payload["forwarding_secret"]
        .as_str()
        .filter(|s| !s.is_empty() && *s != BLANK)
        .map(str::to_string);
    if let Some(secret) = &secret
        && let Some(files) = payload.get_mut("files").and_then(|f| f.as_array_mut())
    {
        for f in files {
            if let Some(c) = f["content"].as_str()
                && c.contains(secret.as_str())
            {
                f["content"] = Value::String(c.replace(secret.as_str(), BLANK));
                changed = true;
            }
        }
    }
    for k in ["forwarding_secret", "agent_token"] {
        if payload
            .get(k)
            .and_then(|v| v.as_str())
            .is_some_and(|v| v != BLANK)
        {
            payload[k] = Value::String(BLANK.into());
            changed = true;
        }
    }
    changed
}

/// At every open: refuses a database sealed with another key; records this key
/// on a new one; seals what an older version stored in clear (agent tokens, node
/// secrets; stored payloads are blanked), leaving no clear copy in the file or WAL.
pub fn check_and_migrate(
    conn: &mut Connection,
    db: &Path,
    data_dir: &Path,
) -> Result<(), crate::db::DbError> {
    let sealed_with = crate::db::meta_get(conn, KEY_ID_META)?;
    let path = key_path(data_dir);
    // A sealed database and no key: say so, rather than make a new key that
    // cannot open it.
    if let Some(stored) = &sealed_with
        && !path.exists()
    {
        return Err(SecretError::WrongKey {
            db: db.to_path_buf(),
            path,
            stored: stored.clone(),
            current: "the file is missing".into(),
        }
        .into());
    }
    let key = load(data_dir)?;
    if let Some(stored) = sealed_with
        && stored != key.id
    {
        return Err(SecretError::WrongKey {
            db: db.to_path_buf(),
            path: key.path.clone(),
            stored,
            current: format!("key id {}", key.id),
        }
        .into());
    }
    let clear_tokens: i64 = conn.query_row(
        "SELECT count(*) FROM servers WHERE agent_token NOT LIKE 'enc:v1:%'",
        [],
        |r| r.get(0),
    )?;
    let clear_nodes: i64 = conn.query_row(
        "SELECT count(*) FROM nodes WHERE json_extract(settings, '$.token_secret') NOT LIKE 'enc:v1:%'
            OR json_extract(settings, '$.bootstrap_token') NOT LIKE 'enc:v1:%'
            OR json_extract(settings, '$.password') NOT LIKE 'enc:v1:%'",
        [],
        |r| r.get(0),
    )?;
    let open_payloads: i64 = conn.query_row(
        "SELECT count(*) FROM servers WHERE payload IS NOT NULL
            AND (json_extract(payload, '$.agent_token') != '********'
              OR json_extract(payload, '$.forwarding_secret') != '********')",
        [],
        |r| r.get(0),
    )?;
    let fresh = crate::db::meta_get(conn, KEY_ID_META)?.is_none();
    let key_id = key.id.clone();
    if !fresh && clear_tokens == 0 && clear_nodes == 0 && open_payloads == 0 {
        return Ok(());
    }
    // The clear values' old cells are zeroed, not just unlinked.
    conn.execute_batch("PRAGMA secure_delete = ON;")?;
    let sealed = crate::db::write_tx(conn, |tx| -> Result<usize, crate::db::DbError> {
        crate::db::meta_set(tx, KEY_ID_META, &key_id)?;
        let mut n = 0;
        let tokens: Vec<(i64, String)> = tx
            .prepare("SELECT id, agent_token FROM servers WHERE agent_token NOT LIKE 'enc:v1:%'")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, token) in tokens {
            tx.execute(
                "UPDATE servers SET agent_token = ?2 WHERE id = ?1",
                rusqlite::params![id, seal_with(&key, &token)?],
            )?;
            n += 1;
        }
        let nodes: Vec<(i64, String)> = tx
            .prepare("SELECT id, settings FROM nodes")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, text) in nodes {
            let Ok(settings) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            let sealed = seal_settings_with(&key, &settings)?;
            if sealed != settings {
                tx.execute(
                    "UPDATE nodes SET settings = ?2 WHERE id = ?1",
                    rusqlite::params![id, sealed.to_string()],
                )?;
                n += 1;
            }
        }
        let payloads: Vec<(i64, String)> = tx
            .prepare("SELECT id, payload FROM servers WHERE payload IS NOT NULL")?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<_, _>>()?;
        for (id, text) in payloads {
            let Ok(mut payload) = serde_json::from_str::<Value>(&text) else {
                continue;
            };
            if redact_payload(&mut payload) {
                tx.execute(
                    "UPDATE servers SET payload = ?2 WHERE id = ?1",
                    rusqlite::params![id, payload.to_string()],
                )?;
                n += 1;
            }
        }
        Ok(n)
    })?;
    conn.execute_batch("PRAGMA secure_delete = OFF;")?;
    if sealed > 0 {
        // The WAL still holds the pages as they were: fold it in and empty it.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        tracing::info!(
            count = sealed,
            "sealed secrets an older version had stored in clear"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_and_differ_each_time() {
        let tmp = tempfile::tempdir().expect("a temp dir");
        let key = load(tmp.path()).expect("a key");
        let a = seal_with(&key, "token-123").expect("seal");
        let b = seal_with(&key, "token-123").expect("seal");
        assert!(is_sealed(&a) && a != b, "a random nonce per value");
        assert!(!a.contains("token-123"));
        assert_eq!(open(&a).expect("open"), "token-123");
        assert_eq!(open("clear-old").expect("clear"), "clear-old");
        let mut bad = a.clone();
        bad.pop();
        bad.push(if a.ends_with('A') { 'B' } else { 'A' });
        assert!(open(&bad).is_err(), "tampering is detected");
    }

    #[test]
    fn payload_secrets_are_blanked_even_inside_files() {
        let mut p = serde_json::json!({
            "agent_token": "t0k", "forwarding_secret": "fw",
            "files": [{"destination": "a", "content": "secret = \"fw\"\n"}]
        });
        assert!(redact_payload(&mut p));
        assert_eq!(p["agent_token"], "********");
        assert_eq!(p["files"][0]["content"], "secret = \"********\"\n");
        assert!(!redact_payload(&mut p), "once");
    }
}
