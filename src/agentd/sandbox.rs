//! What the game gets from its agent: a cleared environment (the template's `env`,
//! the Java the agent installed, locale and time zone) and, when the agent runs as
//! root (a Proxmox container), an unprivileged user of its own. Nothing of the
//! agent's own environment or files (its token, its payload) reaches the game.

use std::collections::BTreeMap;
use std::path::Path;

/// The unprivileged account games run as when the agent is root.
pub(crate) const GAME_USER: &str = "zlh-game";

/// Used when the agent itself has no PATH (a bare `env -i` start).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The game's whole environment. Only PATH, locale and time zone come from the
/// agent's own environment; HOME is the server directory; an installed Java
/// runtime comes first on PATH and is JAVA_HOME; the template's `env` goes last.
pub(crate) fn game_env(
    agent_env: impl IntoIterator<Item = (String, String)>,
    template_env: &BTreeMap<String, String>,
    java: &str,
    home: &Path,
) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = agent_env
        .into_iter()
        .filter(|(k, _)| k == "PATH" || k == "LANG" || k == "TZ" || k.starts_with("LC_"))
        .collect();
    let path = env
        .remove("PATH")
        .unwrap_or_else(|| DEFAULT_PATH.to_string());
    // `java` as a bare name means "from PATH": no runtime of ours to add.
    let java_bin = Path::new(java).parent().filter(|p| p.is_absolute());
    let path = match java_bin {
        Some(bin) => {
            if let Some(home) = bin.parent() {
                env.insert("JAVA_HOME".into(), home.to_string_lossy().into_owned());
            }
            format!("{}:{path}", bin.display())
        }
        None => path,
    };
    env.insert("PATH".into(), path);
    env.insert("HOME".into(), home.to_string_lossy().into_owned());
    for (k, v) in template_env {
        env.insert(k.clone(), v.clone());
    }
    env
}

/// The numeric identity the game runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct GameUser {
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
}

/// `None` unless the agent runs as root. As root: makes sure the system user
/// `name` exists, hands it the server directory and the Java runtime, and
/// lets it traverse (not list or read) the agent directory, whose token and
/// payload stay the agent's own (0600).
pub(crate) fn prepare_game_user(agent_dir: &Path, name: &str) -> Result<Option<GameUser>, String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let user = match lookup(name)? {
        Some(u) => u,
        None => {
            let out = std::process::Command::new("useradd")
                .args([
                    "--system",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    name,
                ])
                .output()
                .map_err(|e| format!("creating the user {name} (useradd): {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "creating the user {name}: useradd {}: {}",
                    out.status,
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
            }
            lookup(name)?.ok_or_else(|| format!("the user {name} is missing after useradd"))?
        }
    };
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(agent_dir, std::fs::Permissions::from_mode(0o711))
        .map_err(|e| format!("letting {name} through {}: {e}", agent_dir.display()))?;
    for sub in ["server", "runtime"] {
        let dir = agent_dir.join(sub);
        if dir.exists() {
            chown_tree(&dir, user)
                .map_err(|e| format!("handing {} to the user {name}: {e}", dir.display()))?;
        }
    }
    Ok(Some(user))
}

/// The uid and gid of `name`, if it exists.
fn lookup(name: &str) -> Result<Option<GameUser>, String> {
    let c = std::ffi::CString::new(name).map_err(|e| format!("user name {name:?}: {e}"))?;
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r is the reentrant form.
    let rc =
        unsafe { libc::getpwnam_r(c.as_ptr(), &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 {
        return Err(format!(
            "looking up the user {name}: {}",
            std::io::Error::from_raw_os_error(rc)
        ));
    }
    Ok((!out.is_null()).then_some(GameUser {
        uid: pw.pw_uid,
        gid: pw.pw_gid,
    }))
}

/// `chown -R` without following symlinks (a link the game planted cannot make the
/// agent hand out a file elsewhere).
fn chown_tree(path: &Path, user: GameUser) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid))?;
    let meta = std::fs::symlink_metadata(path)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path(), user)?;
        }
    }
    Ok(())
}

/// In the forked child, before exec: drops to `user` (groups, gid, then uid).
/// Only async-signal-safe calls.
pub(crate) fn drop_privileges(user: GameUser) -> std::io::Result<()> {
    // SAFETY: plain syscalls on values; called between fork and exec.
    unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setgid(user.gid) != 0
            || libc::setuid(user.uid) != 0
        {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_game_env_is_the_allow_list_java_and_the_template() {
        let agent = [
            ("PATH", "/usr/bin:/bin"),
            ("LANG", "C.UTF-8"),
            ("LC_ALL", "C.UTF-8"),
            ("TZ", "UTC"),
            ("ZLH_AGENT_TOKEN", "secret"),
            ("ZLH_FORWARDING_SECRET", "secret"),
            ("AWS_SECRET_ACCESS_KEY", "secret"),
            ("HOME", "/root"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let template: BTreeMap<String, String> =
            [("STANDIN_LOAD_MS".to_string(), "300".to_string())].into();
        let env = game_env(
            agent,
            &template,
            "/opt/zlh-agent/runtime/java-abc/jdk-21/bin/java",
            Path::new("/opt/zlh-agent/server"),
        );
        let keys: Vec<&str> = env.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "HOME",
                "JAVA_HOME",
                "LANG",
                "LC_ALL",
                "PATH",
                "STANDIN_LOAD_MS",
                "TZ"
            ]
        );
        assert_eq!(
            env["PATH"],
            "/opt/zlh-agent/runtime/java-abc/jdk-21/bin:/usr/bin:/bin"
        );
        assert_eq!(env["JAVA_HOME"], "/opt/zlh-agent/runtime/java-abc/jdk-21");
        assert_eq!(env["HOME"], "/opt/zlh-agent/server");
        assert!(!env.values().any(|v| v == "secret"));
        // Java from PATH: nothing added, a PATH even when the agent had none.
        let env = game_env(Vec::new(), &BTreeMap::new(), "java", Path::new("/srv"));
        assert_eq!(env["PATH"], DEFAULT_PATH);
        assert!(!env.contains_key("JAVA_HOME"));
    }

    #[test]
    fn no_game_user_unless_root() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return; // the tests do not create system users
        }
        let dir = tempfile::tempdir().expect("a temp dir");
        assert_eq!(prepare_game_user(dir.path(), GAME_USER), Ok(None));
    }
}
