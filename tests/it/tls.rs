//! HTTPS without a proxy (issue 19, item 7): `tls.cert` / `tls.key` make `zlh serve`
//! serve HTTPS on its listener, SIGHUP reloads the pair (a broken one is refused and
//! the old one keeps serving), and the session cookies get `Secure`.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::support::{free_port, wait_for, zlh};

/// A fresh self-signed certificate for 127.0.0.1: (certificate PEM, key PEM, DER).
fn new_pair() -> (String, String, Vec<u8>) {
    let k = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()])
        .expect("an rcgen certificate");
    (
        pem("CERTIFICATE", k.cert.der()),
        pem("PRIVATE KEY", &k.signing_key.serialize_der()),
        k.cert.der().to_vec(),
    )
}

/// PEM armour (rcgen's own needs a feature not built here).
fn pem(label: &str, der: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut b64 = String::new();
    for chunk in der.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                b64.push(ABC[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                b64.push('=');
            }
        }
    }
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A client that trusts only `cert_pem` (no system roots) and reports the peer's
/// certificate.
fn pinned_client(cert_pem: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(
            reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("a PEM certificate"),
        )
        .https_only(true)
        .tls_info(true)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("an HTTPS client")
}

/// The certificate (DER) the server presented, when `client` accepts it.
async fn served_cert(client: &reqwest::Client, url: &str) -> Option<Vec<u8>> {
    let resp = client.get(url).send().await.ok()?;
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()?
        .peer_certificate()
        .map(<[u8]>::to_vec)
}

/// `zlh serve` with HTTPS, killed when dropped.
struct TlsServed {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl TlsServed {
    fn start(dir: &Path, cert: &Path, key: &Path) -> TlsServed {
        let port = free_port();
        let log = dir.join("serve.log");
        let child = zlh(dir)
            .args([
                "serve",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--data-dir",
            ])
            .arg(dir.join("data"))
            .env("ZLH_TLS_CERT", cert)
            .env("ZLH_TLS_KEY", key)
            .env("ZLH_HTTP_HEADER_TIMEOUT_SECS", "2")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("the log file"))
            .spawn()
            .expect("spawning zlh serve");
        TlsServed { child, port, log }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn hup(&self) {
        // SAFETY: kill(2) on our own child's pid.
        let rc = unsafe { libc::kill(self.child.id() as i32, libc::SIGHUP) };
        assert_eq!(rc, 0, "kill -HUP");
    }
}

impl Drop for TlsServed {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cookie_attrs<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|c| c.starts_with(&format!("{name}=")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_secure_cookies_and_sighup_reload() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("cert.pem"), tmp.path().join("key.pem"));
    let (cert1, key1, der1) = new_pair();
    std::fs::write(&cert, &cert1).unwrap();
    std::fs::write(&key, &key1).unwrap();
    let mut served = TlsServed::start(tmp.path(), &cert, &key);

    // The login page over HTTPS, from a client that trusts only this certificate.
    let client = pinned_client(&cert1);
    let login_url = served.url("/healthz");
    let got = support::wait_for_async("zlh serve over HTTPS", Duration::from_secs(30), || {
        let (client, url) = (client.clone(), login_url.clone());
        async move { served_cert(&client, &url).await }
    })
    .await;
    if let Ok(Some(status)) = served.child.try_wait() {
        panic!("zlh serve exited ({status}):\n{}", served.log());
    }
    assert_eq!(got, der1, "the configured certificate is served");
    // An account (until there is one, /login leads to /setup).
    let added = zlh(tmp.path())
        .args([
            "user",
            "add",
            "tls-admin",
            "--admin",
            "--password-stdin",
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin
                .take()
                .expect("stdin")
                .write_all(b"tls-admin-password\n")?;
            c.wait_with_output()
        })
        .expect("zlh user add");
    assert!(added.status.success(), "{added:?}");
    let login = client.get(served.url("/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let csrf = cookie_attrs(&login, "zlh_login_csrf")
        .expect("a login CSRF cookie")
        .to_string();
    assert!(csrf.contains("; Secure"), "{csrf}");
    assert!(
        login.text().await.unwrap().contains("password"),
        "the login form"
    );
    // A client that opens a connection and never starts its handshake is cut off after
    // the header timeout (2 s here), like one that never sends its headers.
    let started = std::time::Instant::now();
    let mut idle = std::net::TcpStream::connect(("127.0.0.1", served.port)).unwrap();
    idle.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut idle, &mut buf);
    assert!(
        matches!(read, Ok(0))
            || read
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "closed, not timed out on our side: {read:?}"
    );
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1500) && waited < Duration::from_secs(10),
        "{waited:?}"
    );
    // Plain HTTP on the same port is not served.
    assert!(
        reqwest::Client::new()
            .get(format!("http://127.0.0.1:{}/login", served.port))
            .send()
            .await
            .map(|r| r.status() != 200)
            .unwrap_or(true),
        "plain HTTP must not get the page"
    );

    // Signing in: the session cookie is `Secure` too.
    let csrf_pair = csrf.split(';').next().unwrap_or_default().to_string();
    let csrf_value = csrf_pair
        .split_once('=')
        .map(|(_, v)| v)
        .unwrap_or_default();
    let signed_in = client
        .post(served.url("/login"))
        .header("cookie", &csrf_pair)
        .form(&[
            ("csrf", csrf_value),
            ("username", "tls-admin"),
            ("password", "tls-admin-password"),
        ])
        .send()
        .await
        .unwrap();
    let session = cookie_attrs(&signed_in, "zlh_session")
        .expect("signed in: a session cookie")
        .to_string();
    assert!(session.contains("; Secure"), "{session}");
    assert!(session.contains("HttpOnly"), "{session}");

    // A renewed pair + SIGHUP: new connections get the new certificate, same listener.
    let (cert2, key2, der2) = new_pair();
    std::fs::write(&cert, &cert2).unwrap();
    std::fs::write(&key, &key2).unwrap();
    served.hup();
    let client2 = pinned_client(&cert2);
    let url = served.url("/healthz");
    let got = support::wait_for_async("the renewed certificate", Duration::from_secs(20), || {
        let (client, url) = (client2.clone(), url.clone());
        async move { served_cert(&client, &url).await }
    })
    .await;
    assert_eq!(got, der2);
    assert!(
        served_cert(&client, &url).await.is_none(),
        "the old certificate is no longer served"
    );
    assert!(served.child.try_wait().unwrap().is_none(), "still running");

    // A broken pair (the certificate of one key, the key of another): refused loudly,
    // the previous pair keeps serving.
    let (cert3, _key3, _) = new_pair();
    std::fs::write(&cert, &cert3).unwrap();
    std::fs::write(&key, &key1).unwrap();
    served.hup();
    let log = wait_for("the refusal in the log", Duration::from_secs(20), || {
        let log = served.log();
        log.contains("were refused").then_some(log)
    });
    assert!(
        log.contains("do not make a usable pair"),
        "the log says why:\n{log}"
    );
    assert_eq!(served_cert(&client2, &url).await, Some(der2.clone()));
    // Not PEM at all: refused the same way.
    std::fs::write(&cert, "not a certificate").unwrap();
    served.hup();
    wait_for("the second refusal", Duration::from_secs(20), || {
        (served.log().matches("were refused").count() >= 2).then_some(())
    });
    assert!(
        served.log().contains("no PEM certificate"),
        "{}",
        served.log()
    );
    assert_eq!(served_cert(&client2, &url).await, Some(der2));
    assert!(served.child.try_wait().unwrap().is_none(), "still running");
}

#[test]
fn a_certificate_without_its_key_is_refused_naming_the_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let (cert_pem, _, _) = new_pair();
    let cert = tmp.path().join("cert.pem");
    std::fs::write(&cert, cert_pem).unwrap();
    let out = zlh(tmp.path())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .env("ZLH_TLS_CERT", &cert)
        .output()
        .expect("zlh serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tls.key"), "{err}");
    assert!(
        err.contains("ZLH_TLS_CERT") || err.contains("tls.cert"),
        "{err}"
    );

    // A key file that does not exist: the start fails naming it.
    let out = zlh(tmp.path())
        .args([
            "serve",
            "--listen",
            &format!("127.0.0.1:{}", free_port()),
            "--data-dir",
        ])
        .arg(tmp.path().join("data"))
        .env("ZLH_TLS_CERT", &cert)
        .env("ZLH_TLS_KEY", tmp.path().join("missing.pem"))
        .output()
        .expect("zlh serve");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.key") && err.contains("missing.pem"),
        "{err}"
    );
}
