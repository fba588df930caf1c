//! `zlh install` / `zlh uninstall`: a `zlh` system user, `/var/lib/zlh` (0700),
//! `/etc/zlh/zlh.toml` (written once, then the operator's), the binary in
//! `/usr/local/bin` and a hardened systemd unit, enabled and started.
//!
//! Every step first looks at the machine and is planned only when something differs, so
//! a second run changes nothing and says so, and `--dry-run` prints the same plan.
//! `--root DIR` puts everything beneath DIR and edits DIR's `passwd`/`group`/`shadow`
//! directly instead of calling `useradd` and `systemctl` (tests, image builds).

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use clap::Args;

pub const USER: &str = "zlh";
pub const BIN_PATH: &str = "/usr/local/bin/zlh";
/// Where the Debian package puts the binary (scripts/debian).
pub const DEB_BIN_PATH: &str = "/usr/bin/zlh";
pub const DATA_DIR: &str = "/var/lib/zlh";
pub const CONF_DIR: &str = "/etc/zlh";
pub const CONF_FILE: &str = "/etc/zlh/zlh.toml";
pub const UNIT_PATH: &str = "/etc/systemd/system/zlh.service";
const UNIT: &str = "zlh.service";

#[derive(Debug, Args)]
pub struct InstallArgs {
    /// Install beneath DIR instead of `/` (no useradd, no systemctl).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Print what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// The address written to a new zlh.toml.
    #[arg(long, default_value = "0.0.0.0:8080", value_name = "ADDR")]
    pub listen: SocketAddr,
}

#[derive(Debug, Args)]
pub struct UninstallArgs {
    /// Uninstall from beneath DIR instead of `/`.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// Also delete the data (`/var/lib/zlh`: database, backups, worlds) and `/etc/zlh`.
    #[arg(long)]
    pub purge: bool,
    /// Print what would be done, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error("zlh {0} must run as root (try `sudo zlh {0}`), or with --dry-run")]
    NotRoot(&'static str),
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed: {detail}")]
    Command { command: String, detail: String },
    #[error("{0}")]
    Invalid(String),
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> InstallError {
    let path = path.to_path_buf();
    move |source| InstallError::Io { what, path, source }
}

/// Where the files go: `/` or a `--root` directory.
struct Target {
    root: Option<PathBuf>,
}

impl Target {
    fn path(&self, abs: &str) -> PathBuf {
        match &self.root {
            Some(r) => r.join(abs.trim_start_matches('/')),
            None => PathBuf::from(abs),
        }
    }

    fn real(&self) -> bool {
        self.root.is_none()
    }
}

/// One change to the machine.
#[derive(Debug)]
enum Step {
    AddUser,
    CopyBinary {
        from: PathBuf,
    },
    Dir {
        path: &'static str,
        mode: u32,
        group_only: bool,
    },
    WriteConfig {
        content: String,
    },
    WriteUnit,
    Systemctl(Vec<&'static str>),
    RemoveFile(&'static str),
    RemoveUser,
    RemoveTree(&'static str),
}

impl Step {
    fn describe(&self) -> String {
        match self {
            Step::AddUser => format!(
                "create the system user and group `{USER}` (home {DATA_DIR}, no login shell)"
            ),
            Step::CopyBinary { from } => format!("copy {} to {BIN_PATH} (0755)", from.display()),
            Step::Dir {
                path,
                mode,
                group_only,
            } => {
                let owner = if *group_only {
                    format!("root:{USER}")
                } else {
                    format!("{USER}:{USER}")
                };
                format!("make {path} ({mode:04o}, {owner})")
            }
            Step::WriteConfig { .. } => {
                format!("write {CONF_FILE} (0640, root:{USER}; commented defaults)")
            }
            Step::WriteUnit => format!("write {UNIT_PATH} (hardened systemd unit)"),
            Step::Systemctl(args) => format!("systemctl {}", args.join(" ")),
            Step::RemoveFile(p) => format!("remove {p}"),
            Step::RemoveUser => format!("remove the user and group `{USER}`"),
            Step::RemoveTree(p) => format!("delete {p} and everything in it"),
        }
    }
}

/// The systemd unit. Each hardening line was checked against what `zlh serve` and the
/// local runtime's agents (and their Java games) do: they only write below the data dir
/// and /tmp, open TCP and Unix sockets, and never need privileges.
pub fn unit_text() -> String {
    unit_text_for(BIN_PATH)
}

/// The unit with the binary at `bin` (`/usr/bin/zlh` in the Debian package).
pub fn unit_text_for(bin: &str) -> String {
    format!(
        "\
# zlh's systemd unit, as `zlh install` and the Debian package install it.
[Unit]
Description=zlh game-server control plane
After=network-online.target
Wants=network-online.target

[Service]
Type=simple
User={USER}
Group={USER}
ExecStart={bin} serve --config {CONF_FILE}
Restart=on-failure
RestartSec=5s
# Local game servers are detached agents that keep running while zlh restarts or
# upgrades: stopping the service ends only zlh serve itself.
KillMode=process
TimeoutStopSec=30s
LimitNOFILE=65536
UMask=0077

NoNewPrivileges=yes
CapabilityBoundingSet=
AmbientCapabilities=
ProtectSystem=strict
ReadWritePaths={DATA_DIR}
ProtectHome=yes
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
# AF_NETLINK: the JVM enumerates network interfaces through it.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
SystemCallArchitectures=native
# Not MemoryDenyWriteExecute: the games' JIT compilers need writable code pages.

[Install]
WantedBy=multi-user.target
"
    )
}

/// A new zlh.toml: the settings a homelab changes, each explained.
fn config_text(listen: SocketAddr, lan_ip: Option<std::net::IpAddr>) -> String {
    let port = listen.port();
    let advertise = match lan_ip {
        Some(ip) => format!("advertise_url = \"http://{ip}:{port}\""),
        None => format!("# advertise_url = \"http://192.168.1.10:{port}\""),
    };
    format!(
        "\
# zlh configuration, written once by `zlh install` and never overwritten: edit freely,
# then `systemctl restart zlh`. Every key and its ZLH_* variable: README, Configuration.

data_dir = \"{DATA_DIR}\"

# Reachable from the LAN. For anything wider put a reverse proxy with HTTPS in front.
listen = \"{listen}\"

# How agents and Proxmox nodes reach this control plane: an IP URL (this host's address
# on the LAN, as found at install time).
{advertise}
"
    )
}

/// This host's LAN address: the source address of a route to a TEST-NET address
/// (a UDP connect sends nothing).
fn lan_ip() -> Option<std::net::IpAddr> {
    let s = std::net::UdpSocket::bind("0.0.0.0:0").ok()?;
    s.connect("192.0.2.1:9").ok()?;
    let ip = s.local_addr().ok()?.ip();
    (!ip.is_loopback() && !ip.is_unspecified()).then_some(ip)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The `zlh` entry of the target's passwd: (uid, gid).
fn user_ids(t: &Target) -> Result<Option<(u32, u32)>, InstallError> {
    let path = t.path("/etc/passwd");
    let text = match std::fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io("reading", &path)(e)),
    };
    Ok(text.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 4 && f[0] == USER)
            .then(|| Some((f[2].parse().ok()?, f[3].parse().ok()?)))
            .flatten()
    }))
}

fn run(cmd: &str, args: &[&str]) -> Result<(), InstallError> {
    let command = format!("{cmd} {}", args.join(" "));
    let out = Command::new(cmd)
        .args(args)
        .output()
        .map_err(|e| InstallError::Command {
            command: command.clone(),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(InstallError::Command {
            command,
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// True when `systemctl <query> zlh.service` says yes (is-enabled, is-active).
fn systemctl_says(query: &str) -> bool {
    Command::new("systemctl")
        .args([query, "--quiet", UNIT])
        .status()
        .is_ok_and(|s| s.success())
}

fn same_file_content(a: &Path, b: &Path) -> Result<bool, InstallError> {
    let (ma, mb) = match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(ma), Ok(mb)) => (ma, mb),
        _ => return Ok(false),
    };
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let x = std::fs::read(a).map_err(io("reading", a))?;
    let y = std::fs::read(b).map_err(io("reading", b))?;
    Ok(x == y)
}

/// What `zlh install` would change on `t`.
fn plan_install(t: &Target, listen: SocketAddr) -> Result<Vec<Step>, InstallError> {
    let mut steps = Vec::new();
    let user = user_ids(t)?;
    if user.is_none() {
        steps.push(Step::AddUser);
    }
    let exe = std::env::current_exe().map_err(io("finding", Path::new("this binary")))?;
    let bin = t.path(BIN_PATH);
    if !same_file_content(&exe, &bin)? {
        steps.push(Step::CopyBinary { from: exe });
    }
    for (path, mode, group_only) in [(DATA_DIR, 0o700, false), (CONF_DIR, 0o750, true)] {
        let p = t.path(path);
        let ok = match (std::fs::metadata(&p), user) {
            (Ok(m), Some((uid, gid))) => {
                let owner_ok = if group_only {
                    m.uid() == 0 && m.gid() == gid
                } else {
                    m.uid() == uid && m.gid() == gid
                };
                m.is_dir() && m.mode() & 0o7777 == mode && owner_ok
            }
            _ => false,
        };
        if !ok {
            steps.push(Step::Dir {
                path,
                mode,
                group_only,
            });
        }
    }
    if !t.path(CONF_FILE).exists() {
        steps.push(Step::WriteConfig {
            content: config_text(listen, lan_ip()),
        });
    }
    let unit_changed = std::fs::read_to_string(t.path(UNIT_PATH)).ok() != Some(unit_text());
    if unit_changed {
        steps.push(Step::WriteUnit);
    }
    if t.real() {
        let binary_changed = steps.iter().any(|s| matches!(s, Step::CopyBinary { .. }));
        if unit_changed {
            steps.push(Step::Systemctl(vec!["daemon-reload"]));
        }
        if !systemctl_says("is-enabled") || !systemctl_says("is-active") {
            steps.push(Step::Systemctl(vec!["enable", "--now", UNIT]));
        } else if unit_changed || binary_changed {
            steps.push(Step::Systemctl(vec!["restart", UNIT]));
        }
    }
    Ok(steps)
}

/// What `zlh uninstall` would change on `t`.
fn plan_uninstall(t: &Target, purge: bool) -> Result<Vec<Step>, InstallError> {
    let mut steps = Vec::new();
    let unit_exists = t.path(UNIT_PATH).exists();
    if t.real() && unit_exists {
        if systemctl_says("is-active") {
            // The agents of local game servers live in the unit's cgroup but survive a
            // plain stop (KillMode=process): end them too, their user is going away.
            steps.push(Step::Systemctl(vec!["kill", "--kill-whom=all", UNIT]));
        }
        steps.push(Step::Systemctl(vec!["disable", "--now", UNIT]));
    }
    if unit_exists {
        steps.push(Step::RemoveFile(UNIT_PATH));
        if t.real() {
            steps.push(Step::Systemctl(vec!["daemon-reload"]));
        }
    }
    if t.path(BIN_PATH).exists() {
        steps.push(Step::RemoveFile(BIN_PATH));
    }
    if user_ids(t)?.is_some() {
        steps.push(Step::RemoveUser);
    }
    if purge {
        for p in [DATA_DIR, CONF_DIR] {
            if t.path(p).exists() {
                steps.push(Step::RemoveTree(p));
            }
        }
    }
    Ok(steps)
}

/// Appends the user to `--root`'s passwd, group and shadow, with the highest free
/// system id below 1000 (as `useradd --system` picks).
fn add_user_in_root(t: &Target) -> Result<(), InstallError> {
    let read = |p: &str| -> Result<String, InstallError> {
        let path = t.path(p);
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
            Err(e) => Err(io("reading", &path)(e)),
        }
    };
    let passwd = read("/etc/passwd")?;
    let group = read("/etc/group")?;
    let taken = |text: &str, id: u32| {
        text.lines()
            .any(|l| l.split(':').nth(2).and_then(|f| f.parse::<u32>().ok()) == Some(id))
    };
    let id = (100..1000)
        .rev()
        .find(|id| !taken(&passwd, *id) && !taken(&group, *id))
        .ok_or_else(|| InstallError::Invalid("no free system id below 1000".into()))?;
    let append = |p: &str, line: String, mode: u32| -> Result<(), InstallError> {
        let path = t.path(p);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io("opening", &path))?;
        f.write_all(line.as_bytes()).map_err(io("writing", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(io("setting the mode of", &path))
    };
    append(
        "/etc/passwd",
        format!("{USER}:x:{id}:{id}:zlh control plane:{DATA_DIR}:/usr/sbin/nologin\n"),
        0o644,
    )?;
    append("/etc/group", format!("{USER}:x:{id}:\n"), 0o644)?;
    append("/etc/shadow", format!("{USER}:!:::::::\n"), 0o640)
}

/// Drops the user's lines from `--root`'s passwd, group and shadow.
fn remove_user_in_root(t: &Target) -> Result<(), InstallError> {
    for p in ["/etc/passwd", "/etc/group", "/etc/shadow"] {
        let path = t.path(p);
        let text = match std::fs::read_to_string(&path) {
            Ok(s) => s,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("reading", &path)(e)),
        };
        let prefix = format!("{USER}:");
        let kept: String = text
            .lines()
            .filter(|l| !l.starts_with(&prefix))
            .map(|l| format!("{l}\n"))
            .collect();
        write_atomic(&path, kept.as_bytes(), None)?;
    }
    Ok(())
}

/// Writes through a temporary file and a rename, keeping `mode` (or the old file's).
fn write_atomic(path: &Path, bytes: &[u8], mode: Option<u32>) -> Result<(), InstallError> {
    let mode = mode
        .or_else(|| std::fs::metadata(path).ok().map(|m| m.mode() & 0o7777))
        .unwrap_or(0o644);
    let tmp = path.with_extension("zlh-new");
    std::fs::write(&tmp, bytes).map_err(io("writing", &tmp))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .map_err(io("setting the mode of", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io("replacing", path))
}

fn apply(t: &Target, step: &Step) -> Result<(), InstallError> {
    match step {
        Step::AddUser if t.real() => run(
            "useradd",
            &[
                "--system",
                "--user-group",
                "--home-dir",
                DATA_DIR,
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "--comment",
                "zlh control plane",
                USER,
            ],
        ),
        Step::AddUser => add_user_in_root(t),
        Step::CopyBinary { from } => {
            let to = t.path(BIN_PATH);
            if let Some(dir) = to.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            }
            let tmp = to.with_extension("zlh-new");
            std::fs::copy(from, &tmp).map_err(io("copying the binary to", &tmp))?;
            std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
                .map_err(io("setting the mode of", &tmp))?;
            // A rename, so a running zlh keeps its old binary.
            std::fs::rename(&tmp, &to).map_err(io("replacing", &to))
        }
        Step::Dir {
            path,
            mode,
            group_only,
        } => {
            let p = t.path(path);
            std::fs::create_dir_all(&p).map_err(io("creating", &p))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(*mode))
                .map_err(io("setting the mode of", &p))?;
            let (uid, gid) = user_ids(t)?.ok_or_else(|| {
                InstallError::Invalid(format!("the user `{USER}` is missing after creating it"))
            })?;
            let owner = if *group_only { 0 } else { uid };
            std::os::unix::fs::chown(&p, Some(owner), Some(gid)).map_err(io("chown", &p))
        }
        Step::WriteConfig { content } => {
            let p = t.path(CONF_FILE);
            write_atomic(&p, content.as_bytes(), Some(0o640))?;
            let gid = user_ids(t)?.map(|(_, g)| g);
            std::os::unix::fs::chown(&p, Some(0), gid).map_err(io("chown", &p))
        }
        Step::WriteUnit => {
            let p = t.path(UNIT_PATH);
            if let Some(dir) = p.parent() {
                std::fs::create_dir_all(dir).map_err(io("creating", dir))?;
            }
            write_atomic(&p, unit_text().as_bytes(), Some(0o644))
        }
        Step::Systemctl(args) => run("systemctl", args),
        Step::RemoveFile(path) => {
            let p = t.path(path);
            std::fs::remove_file(&p).map_err(io("removing", &p))
        }
        Step::RemoveUser if t.real() => run("userdel", &[USER]),
        Step::RemoveUser => remove_user_in_root(t),
        Step::RemoveTree(path) => {
            let p = t.path(path);
            std::fs::remove_dir_all(&p).map_err(io("deleting", &p))
        }
    }
}

/// Prints the plan (dry run) or carries it out, one line per step.
fn execute(t: &Target, steps: &[Step], dry_run: bool) -> Result<String, InstallError> {
    let mut out = String::new();
    let root = t
        .root
        .as_ref()
        .map(|r| format!(" (beneath {})", r.display()))
        .unwrap_or_default();
    for step in steps {
        if dry_run {
            out.push_str(&format!("would {}{root}\n", step.describe()));
        } else {
            apply(t, step)?;
            out.push_str(&format!("done: {}{root}\n", step.describe()));
        }
    }
    Ok(out)
}

pub fn install(args: &InstallArgs) -> Result<String, InstallError> {
    if !args.dry_run && !is_root() {
        return Err(InstallError::NotRoot("install"));
    }
    let t = Target {
        root: args.root.clone(),
    };
    let exe = std::env::current_exe().map_err(io("finding", Path::new("this binary")))?;
    if t.real() && exe == Path::new(DEB_BIN_PATH) {
        return Err(InstallError::Invalid(format!(
            "{DEB_BIN_PATH} belongs to the Debian package, which already installed the service: \
             manage it with apt/dpkg (`zlh install` is for the release binary)"
        )));
    }
    let steps = plan_install(&t, args.listen)?;
    if steps.is_empty() {
        return Ok(
            "zlh is already installed and up to date: nothing to do, nothing changed\n".into(),
        );
    }
    let mut out = execute(&t, &steps, args.dry_run)?;
    if args.dry_run {
        return Ok(out);
    }
    if !t.real() {
        out.push_str("not started: --root installs only the files (no systemctl)\n");
    }
    let port = args.listen.port();
    let host = lan_ip().map_or_else(|| "<this host's IP>".to_string(), |ip| ip.to_string());
    out.push_str(&format!(
        "\nzlh is installed. Open http://{host}:{port}/ to create the admin account;\n\
         the one-time setup token is in the service's log: journalctl -u zlh | grep 'setup token'\n\
         Settings: {CONF_FILE}; data: {DATA_DIR}.\n"
    ));
    Ok(out)
}

pub fn uninstall(args: &UninstallArgs) -> Result<String, InstallError> {
    if !args.dry_run && !is_root() {
        return Err(InstallError::NotRoot("uninstall"));
    }
    let t = Target {
        root: args.root.clone(),
    };
    let steps = plan_uninstall(&t, args.purge)?;
    if steps.is_empty() {
        return Ok("zlh is not installed: nothing to do, nothing changed\n".into());
    }
    let mut out = execute(&t, &steps, args.dry_run)?;
    if !args.purge && !args.dry_run {
        out.push_str(&format!(
            "kept the data in {DATA_DIR} and the settings in {CONF_DIR} (`zlh uninstall --purge` deletes them)\n"
        ));
    }
    Ok(out)
}
