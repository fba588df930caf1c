//! Shipping zlh to a homelab (issue 19): the first run of a fresh install, the release
//! build (`scripts/release`, `zlh --version`), and `zlh install` / `zlh uninstall` into a
//! throwaway root directory.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{Served, free_port, ui_client, wait_for, zlh};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `Location` of a GET without a session.
fn location(served: &Served, path: &str) -> (u16, String) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        let r = ui_client()
            .get(served.url(path))
            .send()
            .await
            .expect("GET a UI page");
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        (r.status().as_u16(), loc)
    })
}

mod first_run {
    use super::*;

    #[test]
    fn the_root_page_goes_straight_to_setup_until_someone_can_sign_in() {
        let tmp = tempfile::tempdir().unwrap();
        let served = Served::start(tmp.path(), &tmp.path().join("data"), &[]);
        assert_eq!(location(&served, "/"), (303, "/setup".to_string()));
        assert_eq!(location(&served, "/servers"), (303, "/setup".to_string()));
        // Once an account with a password exists, the login page is the way in again.
        let added = support::add_admin(&served, "admin", "a-long-enough-password");
        assert!(added.status.success(), "{added:?}");
        assert_eq!(location(&served, "/"), (303, "/login".to_string()));
    }

    /// `script` gives `zlh serve` a pseudo-terminal as stdout, as an operator's shell does.
    #[test]
    fn the_setup_token_is_framed_on_a_terminal_and_only_there() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let port = free_port();
        let log = tmp.path().join("serve.log");
        let out = tmp.path().join("tty.out");
        let inner = format!(
            "exec '{}' serve --listen 127.0.0.1:{port} --data-dir '{}' 2>'{}'",
            support::BIN.as_str(),
            data.display(),
            log.display()
        );
        let mut script = Command::new("script");
        // zlh refuses unknown ZLH_* variables (such as the test run's ZLH_RELEASE_BINARY).
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ZLH_")) {
            script.env_remove(k);
        }
        let mut child = script
            .args(["-qfec", &inner])
            .arg(&out)
            .current_dir(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawning script(1)");
        let tty = wait_for("the framed setup block", Duration::from_secs(30), || {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "script(1) ended ({status}): {}\n{}",
                    std::fs::read_to_string(&out).unwrap_or_default(),
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            std::fs::read_to_string(&out)
                .ok()
                .filter(|s| s.contains("setup token"))
        });
        let token = std::fs::read_to_string(&log)
            .unwrap_or_default()
            .split("setup token ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .map(str::to_string)
            .expect("the setup token in the log");
        assert!(tty.contains("+----"), "{tty}");
        assert!(
            tty.contains(&format!("http://127.0.0.1:{port}/setup")),
            "{tty}"
        );
        assert!(tty.contains(&token), "the log's token in the frame:\n{tty}");
        child.kill().expect("stopping script(1)");
        child.wait().expect("reaping script(1)");
        // script's end hangs up the terminal; wait until the port is free again.
        wait_for("zlh serve to go away", Duration::from_secs(30), || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .is_err()
                .then_some(())
        });

        // Not a terminal (a pipe, systemd's journal): the log line only.
        let mut piped = zlh(tmp.path());
        let port2 = free_port();
        let c = piped
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port2}"),
                "--data-dir",
            ])
            .arg(tmp.path().join("data3"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawning zlh serve");
        wait_for("zlh serve on a pipe", Duration::from_secs(30), || {
            support::http_get(&format!("http://127.0.0.1:{port2}/readyz"))
                .filter(|(code, _)| *code == 200)
        });
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
        }
        let done = c.wait_with_output().expect("zlh serve's output");
        let stdout = String::from_utf8_lossy(&done.stdout);
        assert!(!stdout.contains("setup token"), "{stdout}");
        assert!(String::from_utf8_lossy(&done.stderr).contains("setup token"));
    }
}

mod release {
    use super::*;

    fn head() -> String {
        let out = Command::new("git")
            .args(["rev-parse", "--short=12", "HEAD"])
            .current_dir(repo())
            .output()
            .expect("git rev-parse");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn script() -> PathBuf {
        repo().join("scripts/release")
    }

    #[test]
    fn the_release_script_passes_bash_n_and_shellcheck() {
        let syntax = Command::new("bash")
            .arg("-n")
            .arg(script())
            .output()
            .unwrap();
        assert!(syntax.status.success(), "{syntax:?}");
        let lint = Command::new("shellcheck")
            .arg(script())
            .output()
            .expect("shellcheck (scripts/test-deps.sh installs it)");
        assert!(
            lint.status.success(),
            "{}",
            String::from_utf8_lossy(&lint.stdout)
        );
    }

    /// The checks themselves: a development build is far too large (and linked against
    /// the build host's glibc), so `--check` must refuse it, saying why.
    #[test]
    fn the_release_checks_refuse_a_development_build() {
        if std::env::var_os("ZLH_RELEASE_BINARY").is_some() {
            return; // BIN is then the release binary, which passes.
        }
        let out = Command::new(script())
            .args(["--check", env!("CARGO_BIN_EXE_zlh")])
            .output()
            .unwrap();
        let all = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!out.status.success(), "{all}");
        assert!(
            all.contains("newest glibc symbol version: GLIBC_2."),
            "{all}"
        );
        assert!(
            all.contains("newer than the baseline 2.31") || all.contains("larger than 20 MB"),
            "{all}"
        );
    }

    /// With `ZLH_RELEASE_BINARY` pointing at a `scripts/release` build, that binary passes
    /// the release checks (and the whole suite runs against it).
    #[test]
    fn the_release_binary_passes_the_release_checks() {
        let Ok(bin) = std::env::var("ZLH_RELEASE_BINARY") else {
            eprintln!("ZLH_RELEASE_BINARY is not set: no release binary to check");
            return;
        };
        let out = Command::new(script())
            .args(["--check", &bin])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("newest glibc symbol version"), "{stdout}");
    }

    #[test]
    fn version_names_the_commit() {
        let out = zlh(&repo())
            .arg("--version")
            .output()
            .expect("zlh --version");
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(
            v.starts_with(&format!("zlh {}", env!("CARGO_PKG_VERSION"))),
            "{v}"
        );
        // The test binary and zlh were built from the same checkout.
        assert!(v.contains(&format!("(commit {})", head())), "{v}");
    }
}

mod install {
    use std::collections::BTreeMap;
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A throwaway root with the passwd/group files of a fresh system.
    fn fresh_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("etc")).unwrap();
        std::fs::write(
            root.path().join("etc/passwd"),
            "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("etc/group"),
            "root:x:0:\nzlh-like:x:999:\n",
        )
        .unwrap();
        root
    }

    fn zlh_in(root: &Path, args: &[&str]) -> (bool, String) {
        let out = zlh(root)
            .args(args)
            .arg("--root")
            .arg(root)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    /// Every file beneath `root`: (mode, uid, gid, size, mtime).
    fn snapshot(root: &Path) -> BTreeMap<PathBuf, (u32, u32, u32, u64, i64)> {
        let mut out = BTreeMap::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).unwrap().flatten() {
                let m = std::fs::symlink_metadata(e.path()).unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                }
                out.insert(
                    e.path(),
                    (
                        m.mode(),
                        m.uid(),
                        m.gid(),
                        m.len(),
                        m.mtime_nsec() + m.mtime() * 1_000_000_000,
                    ),
                );
            }
        }
        out
    }

    fn mode_uid_gid(p: &Path) -> (u32, u32, u32) {
        let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        (m.mode() & 0o7777, m.uid(), m.gid())
    }

    fn passwd_entry(root: &Path) -> Option<String> {
        std::fs::read_to_string(root.join("etc/passwd"))
            .unwrap()
            .lines()
            .find(|l| l.starts_with("zlh:"))
            .map(str::to_string)
    }

    #[test]
    fn a_dry_run_prints_the_plan_and_changes_nothing() {
        let root = fresh_root();
        let before = snapshot(root.path());
        let (ok, out) = zlh_in(root.path(), &["install", "--dry-run"]);
        assert!(ok, "{out}");
        let beneath = format!(" (beneath {})", root.path().display());
        let expected: Vec<String> = [
            "would create the system user and group `zlh` (home /var/lib/zlh, no login shell)"
                .to_string(),
            format!(
                "would copy {} to /usr/local/bin/zlh (0755)",
                support::BIN.as_str()
            ),
            "would make /var/lib/zlh (0700, zlh:zlh)".into(),
            "would make /etc/zlh (0750, root:zlh)".into(),
            "would write /etc/zlh/zlh.toml (0640, root:zlh; commented defaults)".into(),
            "would write /etc/systemd/system/zlh.service (hardened systemd unit)".into(),
        ]
        .into_iter()
        .map(|l| format!("{l}{beneath}"))
        .collect();
        assert_eq!(out.lines().collect::<Vec<_>>(), expected, "{out}");
        assert_eq!(snapshot(root.path()), before);
    }

    #[test]
    fn install_into_a_root_is_complete_verified_and_idempotent_and_uninstall_keeps_the_data() {
        let root = fresh_root();
        let r = root.path();
        let (ok, out) = zlh_in(r, &["install"]);
        assert!(ok, "{out}");
        assert!(out.contains("zlh is installed. Open http://"), "{out}");

        // The user: a system id that is free in both passwd and group (999 is a group's).
        let entry = passwd_entry(r).expect("a zlh passwd entry");
        assert_eq!(
            entry,
            "zlh:x:998:998:zlh control plane:/var/lib/zlh:/usr/sbin/nologin"
        );
        let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
        assert!(group.lines().any(|l| l == "zlh:x:998:"), "{group}");
        let shadow = std::fs::read_to_string(r.join("etc/shadow")).unwrap();
        assert!(shadow.lines().any(|l| l.starts_with("zlh:!:")), "{shadow}");
        assert_eq!(mode_uid_gid(&r.join("etc/shadow")).0, 0o640);

        // Directories, config and binary with their modes and owners.
        assert_eq!(mode_uid_gid(&r.join("var/lib/zlh")), (0o700, 998, 998));
        assert_eq!(mode_uid_gid(&r.join("etc/zlh")), (0o750, 0, 998));
        assert_eq!(mode_uid_gid(&r.join("etc/zlh/zlh.toml")), (0o640, 0, 998));
        assert_eq!(mode_uid_gid(&r.join("usr/local/bin/zlh")).0, 0o755);
        let installed = r.join("usr/local/bin/zlh");
        let v = Command::new(&installed).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&v.stdout).starts_with("zlh "));

        // The config is commented, and valid as it stands.
        let toml = std::fs::read_to_string(r.join("etc/zlh/zlh.toml")).unwrap();
        assert!(toml.starts_with("# zlh configuration"), "{toml}");
        assert!(toml.contains("data_dir = \"/var/lib/zlh\""), "{toml}");
        assert!(toml.contains("listen = \"0.0.0.0:8080\""), "{toml}");
        let check = zlh(r)
            .args(["config", "check", "--config"])
            .arg(r.join("etc/zlh/zlh.toml"))
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{}",
            String::from_utf8_lossy(&check.stderr)
        );

        // The unit: hardened, and accepted by systemd-analyze without a warning. verify
        // needs systemd's own units (sysinit.target, …) beneath the root.
        let unit = std::fs::read_to_string(r.join("etc/systemd/system/zlh.service")).unwrap();
        for line in [
            "User=zlh",
            "ExecStart=/usr/local/bin/zlh serve --config /etc/zlh/zlh.toml",
            "NoNewPrivileges=yes",
            "ProtectSystem=strict",
            "ReadWritePaths=/var/lib/zlh",
            "ProtectHome=yes",
            "PrivateTmp=yes",
            "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
            "LockPersonality=yes",
            "KillMode=process",
            "WantedBy=multi-user.target",
        ] {
            assert!(unit.lines().any(|l| l == line), "{line} in\n{unit}");
        }
        assert!(
            !unit.contains("MemoryDenyWriteExecute=yes"),
            "the JVM's JIT needs W+X pages"
        );
        std::fs::create_dir_all(r.join("usr/lib/systemd")).unwrap();
        let copied = Command::new("cp")
            .args(["-r", "/usr/lib/systemd/system"])
            .arg(r.join("usr/lib/systemd/"))
            .status()
            .unwrap();
        assert!(copied.success());
        let before_verify = snapshot(r);
        let verify = Command::new("systemd-analyze")
            .arg("verify")
            .arg(format!("--root={}", r.display()))
            .arg("/etc/systemd/system/zlh.service")
            .output()
            .expect("systemd-analyze (scripts/test-deps.sh installs systemd)");
        let said = String::from_utf8_lossy(&verify.stderr);
        assert!(verify.status.success() && said.trim().is_empty(), "{said}");

        // A second run changes nothing and says so.
        let (ok, again) = zlh_in(r, &["install"]);
        assert!(ok, "{again}");
        assert_eq!(
            again,
            "zlh is already installed and up to date: nothing to do, nothing changed\n"
        );
        assert_eq!(snapshot(r), before_verify);

        // A hand-edited config survives a reinstall.
        std::fs::write(r.join("etc/zlh/zlh.toml"), "listen = \"0.0.0.0:9000\"\n").unwrap();
        let (ok, again) = zlh_in(r, &["install"]);
        assert!(
            ok && again.starts_with("zlh is already installed"),
            "{again}"
        );

        // Uninstall: unit, binary and user go; the data and the settings stay.
        std::fs::write(r.join("var/lib/zlh/zlh.db"), "a database").unwrap();
        let (ok, out) = zlh_in(r, &["uninstall"]);
        assert!(ok, "{out}");
        assert!(out.contains("kept the data in /var/lib/zlh"), "{out}");
        assert!(!r.join("etc/systemd/system/zlh.service").exists());
        assert!(!r.join("usr/local/bin/zlh").exists());
        assert_eq!(passwd_entry(r), None);
        let group = std::fs::read_to_string(r.join("etc/group")).unwrap();
        assert!(!group.contains("zlh:"), "{group}");
        assert!(group.contains("zlh-like:x:999:"), "{group}");
        assert!(r.join("var/lib/zlh/zlh.db").exists());
        assert!(r.join("etc/zlh/zlh.toml").exists());
        let (ok, out) = zlh_in(r, &["uninstall"]);
        assert!(ok && out.contains("nothing to do"), "{out}");

        // Installing again adopts the kept data; --purge deletes it.
        let (ok, out) = zlh_in(r, &["install"]);
        assert!(ok, "{out}");
        assert!(!out.contains("write /etc/zlh/zlh.toml"), "{out}");
        assert_eq!(mode_uid_gid(&r.join("var/lib/zlh")), (0o700, 998, 998));
        let (ok, out) = zlh_in(r, &["uninstall", "--purge"]);
        assert!(ok, "{out}");
        assert!(!r.join("var/lib/zlh").exists() && !r.join("etc/zlh").exists());
    }
}

mod readme {
    use super::*;

    /// The first `sh` block of a README section.
    fn sh_block(section: &str) -> String {
        let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
        let start = readme
            .find(&format!("\n## {section}\n"))
            .unwrap_or_else(|| panic!("README has no section {section}"));
        let rest = &readme[start..];
        let open = rest.find("```sh\n").expect("an sh block") + "```sh\n".len();
        let len = rest[open..].find("```").expect("the block's end");
        rest[open..open + len].to_string()
    }

    /// The homelab install block, run as written in a directory holding a "downloaded"
    /// release (this build under the release's name), with `sudo` dropped and the installs
    /// sent into a throwaway root.
    #[test]
    fn the_install_on_a_homelab_block_runs_as_written() {
        let block = sh_block("Install on a homelab");
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root");
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
        let name = format!("zlh-{}-x86_64-linux", env!("CARGO_PKG_VERSION"));
        std::fs::copy(support::BIN.as_str(), tmp.path().join(&name)).unwrap();
        let sum = Command::new("sha256sum")
            .arg(&name)
            .current_dir(tmp.path())
            .output()
            .unwrap();
        std::fs::write(tmp.path().join(format!("{name}.sha256")), &sum.stdout).unwrap();
        let script: String = block
            .lines()
            .map(|l| l.split(" #").next().unwrap_or_default().trim_end())
            .map(|l| l.strip_prefix("sudo ").unwrap_or(l).to_string())
            .map(|l| {
                if l.contains(" install") {
                    format!("{l} --root \"$ROOT\"")
                } else {
                    l
                }
            })
            .map(|l| format!("{l}\n"))
            .collect();
        assert!(
            script.contains(&name),
            "the README names this version:\n{block}"
        );
        let out = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(tmp.path())
            .env("ROOT", &root)
            .env_remove("ZLH_RELEASE_BINARY")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script}\n{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains(&format!("{name}: OK")), "{stdout}");
        assert!(stdout.contains("(commit "), "{stdout}");
        assert!(
            stdout.contains("would write /etc/systemd/system/zlh.service"),
            "{stdout}"
        );
        assert!(root.join("etc/systemd/system/zlh.service").exists());
        assert!(root.join("var/lib/zlh").is_dir());
    }
}

mod enroll {
    use serde_json::json;
    use support::api::Api;
    use support::pve_sim::PveSim;

    use super::*;

    fn fakes() -> PathBuf {
        repo().join("tests/support/fake-pve")
    }

    /// `zlh node enroll --name NAME`: the printed command line.
    fn enroll(api: &Api, tmp: &Path, name: &str) -> String {
        let out = zlh(tmp)
            .args(["node", "enroll", "--name", name, "--data-dir"])
            .arg(&api.served.data_dir)
            // As `zlh install` writes it into zlh.toml: how hosts reach this zlh.
            .env("ZLH_ADVERTISE_URL", format!("http://{}", api.served.addr))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with("curl -fsSL '"))
            .unwrap_or_else(|| panic!("no command in {text}"))
            .to_string()
    }

    fn script_url(command: &str) -> String {
        command
            .split('\'')
            .nth(1)
            .expect("a quoted URL")
            .to_string()
    }

    /// Runs `command` (as an admin pastes it) on the "Proxmox host": the fakes first on
    /// PATH, the simulator as its API.
    fn run_on_host(command: &str, sim: &PveSim, host: &Path) -> (bool, String) {
        let path = format!(
            "{}:{}",
            fakes().display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let o = sim.options();
        let out = Command::new("bash")
            .args(["-c", command])
            .env("PATH", path)
            .env("FAKE_PVE_LOG", host.join("calls.log"))
            .env("FAKE_PVE_STATE", host.join("state"))
            .env("FAKE_TOKEN_SECRET", &o.token_secret)
            .env("FAKE_BOOTSTRAP", &o.bootstrap_token)
            .env("ZLH_STATE_DIR", host.join("root-zlh"))
            .env("ZLH_TEMPLATE_VMID", o.template_vmid.to_string())
            .env("ZLH_PVE_NODE", &o.node)
            .env("ZLH_PVE_API_URL", sim.url())
            .env("ZLH_ALLOW_LOOPBACK", "1")
            .env("ZLH_ALLOW_INSECURE_HTTP", "1")
            .env("ZLH_NODE_MEMORY_MB", "1000000")
            .env("TMPDIR", "/tmp")
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    }

    fn calls(host: &Path) -> Vec<String> {
        std::fs::read_to_string(host.join("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    const PRIVS: &str = "VM.Allocate,VM.Clone,VM.Audit,VM.Config.CPU,VM.Config.Memory,VM.Config.Network,VM.Config.Options,VM.PowerMgmt,Datastore.AllocateSpace,Datastore.Audit,SDN.Use,Sys.Audit";

    #[test]
    fn one_command_on_a_proxmox_host_makes_a_ready_node() {
        let tmp = tempfile::tempdir().unwrap();
        let host = tmp.path().join("pve-host");
        std::fs::create_dir_all(&host).unwrap();
        let sim = PveSim::start();
        let api = Api::start(tmp.path());
        let command = enroll(&api, tmp.path(), "pve1");
        assert!(command.ends_with("' | bash"), "{command}");
        let url = script_url(&command);
        assert!(url.starts_with(&format!(
            "http://{}/install/pve-node.sh?token=",
            api.served.addr
        )));

        // The served script: shellcheck and bash -n clean.
        let (code, script) = support::http_get(&url).expect("the script");
        assert_eq!(code, 200, "{script}");
        let file = tmp.path().join("pve-node.sh");
        std::fs::write(&file, &script).unwrap();
        let syntax = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(syntax.status.success(), "{syntax:?}");
        let lint = Command::new("shellcheck")
            .arg(&file)
            .output()
            .expect("shellcheck");
        assert!(
            lint.status.success(),
            "{}",
            String::from_utf8_lossy(&lint.stdout)
        );

        // The command as zlh printed it.
        let (ok, out) = run_on_host(&command, &sim, &host);
        assert!(ok, "{out}");
        let o = sim.options();
        let vmid = o.template_vmid;
        let expected: Vec<String> = [
            "pveum role list --output-format json".to_string(),
            format!("pveum role add ZLH --privs {PRIVS}"),
            "pveum user list --output-format json".into(),
            "pveum user add zlh@pve --comment zlh control plane".into(),
            "pveum user token list zlh@pve --output-format json".into(),
            "pveum user token add zlh@pve ctl --privsep 1 --output-format json".into(),
            "pveum acl modify / --tokens zlh@pve!ctl --roles ZLH".into(),
            format!("pct config {vmid}"),
            "pveam update".into(),
            "pveam available --section system".into(),
            "pveam list local".into(),
            "pveam download local debian-12-standard_12.7-1_amd64.tar.zst".into(),
            "openssl rand -hex 32".into(),
            format!("pct create {vmid} local:vztmpl/debian-12-standard_12.7-1_amd64.tar.zst --hostname zlh-base --description zlh base template --memory 1024 --cores 1 --unprivileged 1 --net0 name=eth0,bridge=vmbr0,ip=dhcp --storage local-lvm"),
            format!("pct start {vmid}"),
            format!("pct exec {vmid} -- mkdir -p /etc/zlh /opt/zlh-agent"),
            format!("pct push {vmid} $TMP/zlh /usr/local/bin/zlh --perms 0755"),
            format!("pct push {vmid} $TMP/bootstrap-token /etc/zlh/bootstrap-token --perms 0600"),
            format!("pct push {vmid} $TMP/zlh-agent.service /etc/systemd/system/zlh-agent.service --perms 0644"),
            format!("pct exec {vmid} -- systemctl enable zlh-agent.service"),
            format!("pct shutdown {vmid}"),
            format!("pct template {vmid}"),
            "openssl x509 -in /etc/pve/local/pve-ssl.pem -noout -fingerprint -sha256".into(),
        ]
        .into();
        assert_eq!(calls(&host), expected, "{out}");
        // The pushed binary is this zlh, verified; the bootstrap token is kept 0600.
        let pushed = std::fs::read_to_string(host.join("state/pushed-zlh")).unwrap();
        let ours = Command::new("sha256sum")
            .arg(support::BIN.as_str())
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&ours.stdout).starts_with(pushed.trim()));
        use std::os::unix::fs::PermissionsExt;
        let kept = std::fs::metadata(host.join("root-zlh/bootstrap-token")).unwrap();
        assert_eq!(kept.permissions().mode() & 0o777, 0o600);

        // The node is registered with what the host made, secrets kept in.
        let (code, body) = api.call("GET", "/api/v1/nodes", None);
        assert_eq!(code, 200);
        let node = body["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == "pve1")
            .cloned()
            .unwrap_or_else(|| panic!("pve1 in {body}"));
        assert_eq!(node["kind"], "proxmox");
        assert_eq!(node["settings"]["template_vmid"], vmid);
        assert_eq!(node["settings"]["token_id"], "zlh@pve!ctl");
        assert_eq!(node["settings"]["token_secret"], "********");
        assert_eq!(node["settings"]["api_url"], sim.url());
        // The simulator speaks http: no certificate to pin (https nodes get the one read).
        assert!(node["settings"]["tls_fingerprint"].is_null(), "{node}");

        // A server on it reaches running against the simulator.
        let (code, body) = api.call(
            "POST",
            "/api/v1/servers",
            Some(json!({"name": "enrolled", "template": "standin", "version": "1.0", "eula": true, "node": "pve1"})),
        );
        assert_eq!(code, 202, "{body}");
        let id = body["server"]["id"].as_i64().unwrap();
        api.wait_status(id, "running");

        // The same command again: the token is spent, nothing is touched or registered.
        let before = calls(&host).len();
        // (curl -f fails on the 403 and bash gets an empty script.)
        let (_, again) = run_on_host(&command, &sim, &host);
        assert!(again.contains("error: 403"), "{again}");
        assert_eq!(calls(&host).len(), before, "{again}");
        // The saved script run again stops at the check, before any change.
        let (ok, again) = run_on_host(&format!("bash {}", file.display()), &sim, &host);
        assert!(!ok, "{again}");
        assert!(again.contains("already used"), "{again}");
        assert_eq!(calls(&host).len(), before, "{again}");
        let (code, body) = api.call("GET", "/api/v1/nodes", None);
        assert_eq!(code, 200);
        assert_eq!(
            body["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["kind"] == "proxmox")
                .count(),
            1
        );

        // A new token for the same host: role refreshed, user and template reused, the
        // API token made anew, nothing duplicated.
        let second = enroll(&api, tmp.path(), "pve1-again");
        let (ok, out) = run_on_host(&second, &sim, &host);
        assert!(ok, "{out}");
        let rerun: Vec<String> = calls(&host)[before..].to_vec();
        assert_eq!(
            rerun,
            vec![
                "pveum role list --output-format json".to_string(),
                format!("pveum role modify ZLH --privs {PRIVS}"),
                "pveum user list --output-format json".into(),
                "pveum user token list zlh@pve --output-format json".into(),
                "pveum user token remove zlh@pve ctl".into(),
                "pveum user token add zlh@pve ctl --privsep 1 --output-format json".into(),
                "pveum acl modify / --tokens zlh@pve!ctl --roles ZLH".into(),
                format!("pct config {vmid}"),
                "openssl x509 -in /etc/pve/local/pve-ssl.pem -noout -fingerprint -sha256".into(),
            ],
            "{out}"
        );
    }

    /// Nodes → "Add Proxmox node": the page shows the one-time command, which works.
    #[test]
    fn the_nodes_page_makes_the_command() {
        let tmp = tempfile::tempdir().unwrap();
        let api = Api::start(tmp.path());
        let session = support::ui_session(&api.served);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = ui_client();
        let nodes = rt.block_on(async {
            let r = client
                .get(api.served.url("/nodes"))
                .header("cookie", &session)
                .send()
                .await
                .unwrap();
            r.text().await.unwrap()
        });
        assert!(nodes.contains("action=\"/nodes/enroll\""), "{nodes}");
        let csrf = nodes
            .split("name=\"csrf\" value=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .expect("the CSRF field")
            .to_string();
        let (code, page) = rt.block_on(async {
            let r = client
                .post(api.served.url("/nodes/enroll"))
                .header("cookie", &session)
                .form(&[("csrf", csrf.as_str()), ("name", "pve7")])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        assert_eq!(code, 200, "{page}");
        let command = page
            .split("<code class=\"wrap\">")
            .nth(1)
            .and_then(|s| s.split("</code>").next())
            .expect("the command on the page")
            .replace("&#39;", "'")
            .replace("&#x27;", "'")
            .replace("&amp;", "&");
        assert!(
            command.starts_with("curl -fsSL '") && command.ends_with("' | bash"),
            "{command}"
        );
        let url = script_url(&command).replace("127.0.0.1:8080", &api.served.addr.to_string());
        let (code, script) = support::http_get(&url).unwrap();
        assert_eq!(code, 200, "{script}");
        assert!(script.contains("NODE_NAME='pve7'"), "{script}");
        // A name that is taken is refused on the page.
        let (code, page) = rt.block_on(async {
            let r = client
                .post(api.served.url("/nodes/enroll"))
                .header("cookie", &session)
                .form(&[("csrf", csrf.as_str()), ("name", "local")])
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        assert_eq!(code, 400, "{page}");
        assert!(page.contains("exists"), "{page}");
    }

    #[test]
    fn a_spent_expired_or_unknown_enrollment_token_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let api = Api::start(tmp.path());
        let command = enroll(&api, tmp.path(), "pve9");
        let url = script_url(&command);
        let token = url.split("token=").nth(1).unwrap().to_string();
        // Expired: the clock moved past it.
        support::open_db(&api.served.data_dir)
            .execute("UPDATE node_enrollments SET expires_at = 1", [])
            .unwrap();
        let (code, body) = support::http_get(&url).unwrap();
        assert_eq!(code, 403, "{body}");
        assert!(body.contains("expired"), "{body}");
        let register = |token: &str| {
            api.http.rt.block_on(async {
                let r = api
                    .http
                    .inner
                    .post(api.served.url("/install/pve-node/register"))
                    .json(&json!({"token": token, "memory_mb": 4096, "settings": {}}))
                    .send()
                    .await
                    .unwrap();
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            })
        };
        assert_eq!(register(&token).0, 403);
        assert_eq!(register("0123abcd").0, 403);
        let (code, _) =
            support::http_get(&api.served.url("/install/pve-node.sh?token=nope")).unwrap();
        assert_eq!(code, 403);
        // Stored hashed: the token itself is nowhere in the database.
        let hash: String = support::open_db(&api.served.data_dir)
            .query_row("SELECT token_hash FROM node_enrollments", [], |r| r.get(0))
            .unwrap();
        assert_ne!(hash, token);
        assert_eq!(hash.len(), 64);
    }
}

mod debian {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn the_packaged_unit_is_the_one_zlh_install_writes() {
        let packaged = std::fs::read_to_string(repo().join("scripts/debian/zlh.service")).unwrap();
        assert_eq!(
            packaged,
            zlh::shipping::install::unit_text_for("/usr/bin/zlh")
        );
    }

    #[test]
    fn the_maintainer_scripts_pass_sh_n_and_shellcheck() {
        for s in ["postinst", "prerm", "postrm"] {
            let path = repo().join("scripts/debian").join(s);
            let syntax = Command::new("sh").arg("-n").arg(&path).output().unwrap();
            assert!(syntax.status.success(), "{s}: {syntax:?}");
            let lint = Command::new("shellcheck")
                .arg(&path)
                .output()
                .expect("shellcheck");
            assert!(
                lint.status.success(),
                "{s}: {}",
                String::from_utf8_lossy(&lint.stdout)
            );
        }
    }

    fn run(cmd: &mut Command) -> String {
        // zlh refuses unknown ZLH_* variables, such as this test's own.
        for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("ZLH_")) {
            cmd.env_remove(k);
        }
        let out = cmd.output().unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{cmd:?}: {text}");
        text
    }

    /// With `ZLH_RELEASE_DEB` naming the package `scripts/release` made: lintian finds no
    /// error, and it installs with `dpkg -i` into a Debian 11 (glibc 2.31) chroot made by
    /// debootstrap (kept in target/deb-chroot; needs root and a Debian mirror), where
    /// the binary runs; a purge removes it and its data.
    #[test]
    fn the_release_package_is_lintian_clean_and_installs_on_debian_11() {
        let Ok(deb) = std::env::var("ZLH_RELEASE_DEB") else {
            eprintln!("ZLH_RELEASE_DEB is not set: no package to check");
            return;
        };
        let lint = run(Command::new("lintian")
            .args(["--fail-on", "error"])
            .arg(&deb));
        assert!(!lint.lines().any(|l| l.starts_with("E:")), "{lint}");

        let chroot = std::env::var("ZLH_DEB_CHROOT")
            .map(PathBuf::from)
            .unwrap_or_else(|_| repo().join("target/deb-chroot"));
        if !chroot.join("usr/bin/dpkg").exists() {
            run(Command::new("debootstrap")
                .args(["--variant=minbase", "bullseye"])
                .arg(&chroot)
                .arg("http://deb.debian.org/debian"));
        }
        std::fs::copy(&deb, chroot.join("tmp/zlh.deb")).unwrap();
        let ch = |args: &[&str]| run(Command::new("chroot").arg(&chroot).args(args));
        // Start from nothing (a previous run's package is purged).
        ch(&["dpkg", "--purge", "zlh"]);
        let installed = ch(&["dpkg", "-i", "/tmp/zlh.deb"]);
        assert!(installed.contains("Setting up zlh"), "{installed}");
        let passwd = std::fs::read_to_string(chroot.join("etc/passwd")).unwrap();
        assert!(
            passwd
                .lines()
                .any(|l| l.starts_with("zlh:") && l.ends_with(":/var/lib/zlh:/usr/sbin/nologin")),
            "{passwd}"
        );
        let mode = |p: &str| std::fs::metadata(chroot.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("var/lib/zlh"), 0o700);
        assert_eq!(mode("etc/zlh"), 0o750);
        assert_eq!(mode("etc/zlh/zlh.toml"), 0o640);
        assert!(chroot.join("lib/systemd/system/zlh.service").exists());
        let version = ch(&["/usr/bin/zlh", "--version"]);
        assert!(version.contains("(commit "), "{version}");
        let check = ch(&[
            "/usr/bin/zlh",
            "config",
            "check",
            "--config",
            "/etc/zlh/zlh.toml",
        ]);
        assert!(check.contains("configuration is valid"), "{check}");
        ch(&["dpkg", "--purge", "zlh"]);
        assert!(!chroot.join("usr/bin/zlh").exists());
        assert!(!chroot.join("var/lib/zlh").exists());
    }
}
