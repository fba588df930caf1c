//! Installing a game from a `/config` payload: download every artifact from the
//! artifact server and verify its sha256 (cached by hash), then — only when all of
//! them are good — seed the server directory: jar, mods, files, `eula.txt`,
//! `server.properties`. Nothing here starts the game.

use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::agent::ConfigPayload;

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the Minecraft EULA (https://aka.ms/MinecraftEULA) has not been accepted: create the server with `\"eula\": true` in the API request (or tick the EULA box of the create form) to accept it; zlh never assumes it"
    )]
    EulaNotAccepted,
    #[error("invalid payload: {0}")]
    Invalid(String),
    #[error("no ARTIFACT_SERVER in the payload's services, needed to download {0}")]
    NoArtifactServer(String),
    #[error("downloading {path} from {url}: {reason}")]
    Download {
        path: String,
        url: String,
        reason: String,
    },
    #[error(
        "sha256 mismatch for {path} from {url}: expected {expected}, got {actual}; nothing was installed"
    )]
    Checksum {
        path: String,
        url: String,
        expected: String,
        actual: String,
    },
    #[error("{action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unpacking the Java runtime {path}: {reason}")]
    Java { path: String, reason: String },
    #[error("install cancelled")]
    Cancelled,
}

fn io<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> InstallError + 'a {
    move |source| InstallError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// What an install produced.
#[derive(Debug, Clone)]
pub struct Installed {
    /// The game artifact inside the server directory (e.g. `server/server.jar`).
    pub jar: Option<PathBuf>,
    /// The Java executable to use (`java` from PATH when no runtime was shipped).
    pub java: String,
}

/// Reports where the install is (`installStep`).
pub type Progress<'a> = &'a (dyn Fn(String) + Send + Sync);

/// Checks a relative destination inside the server directory.
pub fn safe_relative(path: &str) -> Result<PathBuf, InstallError> {
    let p = Path::new(path);
    if path.is_empty()
        || p.is_absolute()
        || p.components().any(|c| !matches!(c, Component::Normal(_)))
    {
        return Err(InstallError::Invalid(format!(
            "'{path}' must be a relative path inside the server directory"
        )));
    }
    Ok(p.to_path_buf())
}

/// Validates what can be checked before anything is touched.
pub fn validate(payload: &ConfigPayload) -> Result<(), InstallError> {
    if payload.install_id.trim().is_empty() {
        return Err(InstallError::Invalid("install_id must not be empty".into()));
    }
    if payload.game.trim().is_empty() {
        return Err(InstallError::Invalid("game must not be empty".into()));
    }
    for m in &payload.mods {
        safe_relative(&m.destination)?;
        check_sha(&m.sha256, &m.path)?;
    }
    for f in &payload.files {
        safe_relative(&f.destination)?;
    }
    for (path, sha) in [
        (&payload.artifact_path, &payload.artifact_sha256),
        (&payload.java_path, &payload.java_sha256),
    ] {
        if let Some(p) = path {
            let sha = sha.as_deref().ok_or_else(|| {
                InstallError::Invalid(format!("{p}: a sha256 is required for every artifact"))
            })?;
            check_sha(sha, p)?;
        }
    }
    if let Some(w) = &payload.world {
        safe_relative(w)?;
    }
    Ok(())
}

fn check_sha(sha: &str, what: &str) -> Result<(), InstallError> {
    if sha.len() == 64 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(InstallError::Invalid(format!(
            "{what}: sha256 must be 64 hex digits"
        )))
    }
}

pub use crate::util::hex;

/// Downloads and installs; `dir` is the agent directory. Downloads present `token`
/// (the agent's own): the mirror fills from upstream only for a credential.
pub async fn install(
    http: &reqwest::Client,
    dir: &Path,
    payload: &ConfigPayload,
    token: Option<&str>,
    progress: Progress<'_>,
) -> Result<Installed, InstallError> {
    validate(payload)?;
    if payload.eula_required.unwrap_or(payload.game == "minecraft") && !payload.eula {
        return Err(InstallError::EulaNotAccepted);
    }
    let base = payload
        .services
        .get("ARTIFACT_SERVER")
        .map(|s| s.trim_end_matches('/').to_string());
    let fetch = |path: String, sha: String| {
        let base = base.clone();
        async move {
            let base = base.ok_or_else(|| InstallError::NoArtifactServer(path.clone()))?;
            fetch_cached(http, dir, &base, &path, &sha, token, progress).await
        }
    };

    // 1. Every download first: a bad artifact must leave the current install untouched.
    let jar_cached = match (&payload.artifact_path, &payload.artifact_sha256) {
        (Some(p), Some(s)) => Some((p.clone(), fetch(p.clone(), s.clone()).await?)),
        _ => None,
    };
    let java_cached = match (&payload.java_path, &payload.java_sha256) {
        (Some(p), Some(s)) => Some((p.clone(), s.clone(), fetch(p.clone(), s.clone()).await?)),
        _ => None,
    };
    let mut mods = Vec::new();
    for m in &payload.mods {
        let cached = fetch(m.path.clone(), m.sha256.clone()).await?;
        mods.push((safe_relative(&m.destination)?, cached));
    }

    // 2. The Java runtime, unpacked once per hash.
    let java = match java_cached {
        Some((path, sha, tarball)) => {
            progress(format!("unpacking {path}"));
            unpack_java(dir, &path, &sha, &tarball).await?
        }
        None => "java".to_string(),
    };

    // 3. Seed the server directory.
    progress("seeding".into());
    let server = dir.join("server");
    tokio::fs::create_dir_all(&server)
        .await
        .map_err(io("creating", &server))?;
    if payload.reset_world {
        let world = server.join(payload.world_name());
        if world.exists() {
            tokio::fs::remove_dir_all(&world)
                .await
                .map_err(io("removing the world", &world))?;
        }
    }
    let jar = match jar_cached {
        Some((path, cached)) => {
            let name = Path::new(&path)
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_else(|| "server.jar".into());
            let dest = server.join(name);
            copy_atomic(&cached, &dest).await?;
            Some(dest)
        }
        None => None,
    };
    for (dest, cached) in &mods {
        copy_atomic(cached, &server.join(dest)).await?;
    }
    for f in &payload.files {
        let dest = server.join(safe_relative(&f.destination)?);
        write_atomic(&dest, f.content.as_bytes()).await?;
    }
    if payload.eula {
        write_atomic(
            &server.join("eula.txt"),
            b"# Accepted by the operator through zlh\neula=true\n",
        )
        .await?;
    }
    if !payload.properties.is_empty() {
        progress("writing server.properties".into());
        let path = server.join("server.properties");
        let existing = match tokio::fs::read_to_string(&path).await {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let merged = merge_properties(&existing, &payload.properties);
        write_atomic(&path, merged.as_bytes()).await?;
    }
    Ok(Installed { jar, java })
}

/// Sets `keys` in a `server.properties` text, keeping every other byte (comments,
/// order, spacing, other keys).
pub fn merge_properties(
    existing: &str,
    keys: &std::collections::BTreeMap<String, String>,
) -> String {
    let mut props = crate::agent::properties::Properties::parse(existing);
    for (k, v) in keys {
        props.set(k, v);
    }
    props.text().to_string()
}

/// Returns the cached file for `sha`, downloading and verifying it when missing.
async fn fetch_cached(
    http: &reqwest::Client,
    dir: &Path,
    base: &str,
    path: &str,
    sha: &str,
    token: Option<&str>,
    progress: Progress<'_>,
) -> Result<PathBuf, InstallError> {
    let sha = sha.to_ascii_lowercase();
    let cache = dir.join("cache");
    let cached = cache.join(&sha);
    if tokio::fs::try_exists(&cached).await.unwrap_or(false) {
        return Ok(cached);
    }
    tokio::fs::create_dir_all(&cache)
        .await
        .map_err(io("creating", &cache))?;
    let url = format!("{base}/{}", path.trim_start_matches('/'));
    let fail = |reason: String| InstallError::Download {
        path: path.to_string(),
        url: url.clone(),
        reason,
    };
    let mut req = http.get(&url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let mut resp = req.send().await.map_err(|e| fail(e.to_string()))?;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        return Err(fail(format!("HTTP {status}: {}", body.trim())));
    }
    let total = resp.content_length();
    let tmp = cache.join(format!("{sha}.partial"));
    let mut file = tokio::fs::File::create(&tmp)
        .await
        .map_err(io("creating", &tmp))?;
    let mut hasher = Sha256::new();
    let mut done: u64 = 0;
    let mut last_pct = u64::MAX;
    let name = Path::new(path)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.to_string());
    progress(format!("downloading {name}"));
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        hasher.update(&chunk);
        file.write_all(&chunk).await.map_err(io("writing", &tmp))?;
        done += chunk.len() as u64;
        if let Some(t) = total.filter(|t| *t > 0) {
            let pct = done * 100 / t;
            if pct / 10 != last_pct / 10 {
                last_pct = pct;
                progress(format!("downloading {name} ({pct}%)"));
            }
        }
    }
    file.sync_all().await.map_err(io("syncing", &tmp))?;
    drop(file);
    let actual = hex(&hasher.finalize());
    if actual != sha {
        // Temp file cleanup: the checksum error is what matters.
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(InstallError::Checksum {
            path: path.to_string(),
            url,
            expected: sha,
            actual,
        });
    }
    tokio::fs::rename(&tmp, &cached)
        .await
        .map_err(io("renaming", &cached))?;
    Ok(cached)
}

async fn unpack_java(
    dir: &Path,
    path: &str,
    sha: &str,
    tarball: &Path,
) -> Result<String, InstallError> {
    let target = dir
        .join("runtime")
        .join(format!("java-{}", &sha[..16.min(sha.len())]));
    let find = |root: &Path| -> Option<PathBuf> {
        // Adoptium tarballs unpack to `jdk-21.0.x+y-jre/bin/java`.
        let direct = root.join("bin/java");
        if direct.exists() {
            return Some(direct);
        }
        std::fs::read_dir(root).ok()?.flatten().find_map(|e| {
            let p = e.path().join("bin/java");
            p.exists().then_some(p)
        })
    };
    if let Some(java) = find(&target) {
        return Ok(java.to_string_lossy().into_owned());
    }
    let tmp = target.with_extension("partial");
    // An earlier partial unpack must go, or it would mix with this one.
    match tokio::fs::remove_dir_all(&tmp).await {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("clearing", &tmp)(e)),
    }
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(io("creating", &tmp))?;
    let out = tokio::process::Command::new("tar")
        .arg("-xzf")
        .arg(tarball)
        .arg("-C")
        .arg(&tmp)
        .output()
        .await
        .map_err(|e| InstallError::Java {
            path: path.into(),
            reason: format!("running tar: {e}"),
        })?;
    if !out.status.success() {
        return Err(InstallError::Java {
            path: path.into(),
            reason: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    tokio::fs::rename(&tmp, &target)
        .await
        .map_err(io("renaming", &target))?;
    find(&target)
        .map(|p| p.to_string_lossy().into_owned())
        .ok_or_else(|| InstallError::Java {
            path: path.into(),
            reason: "no bin/java inside".into(),
        })
}

/// Writes `bytes` to `dest` through a temp file and a rename (readers never see half a file).
pub async fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), InstallError> {
    let parent = dest.parent().unwrap_or(Path::new(".")).to_path_buf();
    tokio::fs::create_dir_all(&parent)
        .await
        .map_err(io("creating", &parent))?;
    let name = dest
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    let bytes = bytes.to_vec();
    let at = dest.to_path_buf();
    let written = tokio::task::spawn_blocking(move || {
        let dir = std::fs::File::open(&parent)?;
        let (w, mut f) = AtomicWrite::create_in(dir.into(), &name)?;
        std::io::Write::write_all(&mut f, &bytes)?;
        w.commit(f)
    })
    .await
    .map_err(|e| std::io::Error::other(e.to_string()));
    written.and_then(|r| r).map_err(io("writing", &at))
}

/// A file written beside `name` in a directory (by its fd, so nothing on the way can be
/// swapped for a symlink) under a temp name, fsynced, then renamed over `name`. Dropped
/// before [`AtomicWrite::commit`], it removes its temp file: `name` is never half written.
pub struct AtomicWrite {
    dir: std::os::fd::OwnedFd,
    name: std::ffi::OsString,
    tmp: std::ffi::OsString,
    done: bool,
}

impl AtomicWrite {
    /// Creates the temp file (never following a link, never reusing an existing file).
    pub fn create_in(
        dir: std::os::fd::OwnedFd,
        name: &std::ffi::OsStr,
    ) -> std::io::Result<(AtomicWrite, std::fs::File)> {
        use rustix::fs::{Mode, OFlags};
        let mut tmp = std::ffi::OsString::from(".");
        tmp.push(name);
        tmp.push(format!(".zlh-tmp-{:08x}", fastrand::u32(..)));
        let fd = rustix::fs::openat(
            &dir,
            tmp.as_os_str(),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        Ok((
            AtomicWrite {
                dir,
                name: name.to_os_string(),
                tmp,
                done: false,
            },
            std::fs::File::from(fd),
        ))
    }

    /// Makes `file` durable and puts it in place (then the directory entry too).
    pub fn commit(mut self, file: std::fs::File) -> std::io::Result<()> {
        file.sync_all()?;
        drop(file);
        rustix::fs::renameat(
            &self.dir,
            self.tmp.as_os_str(),
            &self.dir,
            self.name.as_os_str(),
        )?;
        self.done = true;
        rustix::fs::fsync(&self.dir)?;
        Ok(())
    }
}

impl Drop for AtomicWrite {
    fn drop(&mut self) {
        if !self.done
            && let Err(e) = rustix::fs::unlinkat(
                &self.dir,
                self.tmp.as_os_str(),
                rustix::fs::AtFlags::empty(),
            )
        {
            tracing::warn!(file = ?self.tmp, error = %e, "removing an unfinished temp file");
        }
    }
}

async fn copy_atomic(src: &Path, dest: &Path) -> Result<(), InstallError> {
    if let Some(parent) = dest.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(io("creating", parent))?;
    }
    let tmp = tmp_name(dest);
    tokio::fs::copy(src, &tmp)
        .await
        .map_err(io("copying to", &tmp))?;
    tokio::fs::rename(&tmp, dest)
        .await
        .map_err(io("renaming", dest))
}

fn tmp_name(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!(".{name}.zlh-tmp"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn properties_merge_keeps_comments_order_and_other_keys() {
        let existing = "#Minecraft server properties\nmotd=old\nonline-mode=false\nserver-port=1\n";
        let mut keys = std::collections::BTreeMap::new();
        keys.insert("server-port".to_string(), "25565".to_string());
        keys.insert("max-players".to_string(), "20".to_string());
        assert_eq!(
            merge_properties(existing, &keys),
            "#Minecraft server properties\nmotd=old\nonline-mode=false\nserver-port=25565\nmax-players=20\n"
        );
    }

    #[test]
    fn destinations_must_stay_inside_the_server_dir() {
        assert!(safe_relative("mods/fabric-api.jar").is_ok());
        for bad in ["", "/etc/passwd", "../x", "mods/../../x", "./x"] {
            assert!(safe_relative(bad).is_err(), "{bad}");
        }
    }
}
