//! Shipping zlh to a homelab (issue 19): the first run of a fresh install, the release
//! build (`scripts/release`, `zlh --version`), and `zlh install` / `zlh uninstall` into a
//! throwaway root directory.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::{Served, free_port, ui_client, wait_for, zlh};

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
        let mut add = zlh(tmp.path())
            .args(["user", "add", "admin", "--admin", "--password-stdin", "--data-dir"])
            .arg(&served.data_dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawning zlh user add");
        {
            use std::io::Write;
            let mut stdin = add.stdin.take().expect("stdin of zlh user add");
            stdin
                .write_all(b"a-long-enough-password\n")
                .expect("writing the password");
        }
        assert!(add.wait().expect("zlh user add").success());
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
            support::BIN,
            data.display(),
            log.display()
        );
        let mut child = Command::new("script")
            .args(["-qfec", &inner])
            .arg(&out)
            .current_dir(tmp.path())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .env_remove("ZLH_DATA_DIR")
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
            .args(["serve", "--listen", &format!("127.0.0.1:{port2}"), "--data-dir"])
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

    #[test]
    fn version_names_the_commit() {
        let out = zlh(&repo()).arg("--version").output().expect("zlh --version");
        let v = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success());
        assert!(v.starts_with(&format!("zlh {}", env!("CARGO_PKG_VERSION"))), "{v}");
        // The test binary and zlh were built from the same checkout.
        assert!(v.contains(&format!("(commit {})", head())), "{v}");
    }
}
