//! The artifact mirror: upstream fill against a simulator of Mojang, Paper, Fabric
//! and Adoptium (single-flight, verification, caching, refusal on mismatch), the
//! `/artifacts/…` route of the real `zlh serve`, `zlh artifacts add|list`, path
//! traversal, and the `[artifacts]` settings.

use crate::support;

use std::collections::HashSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::support::upstream::{self, Upstream, sha256_hex};
use crate::support::{Served, http_get, wait_for, wait_for_async, zlh};
use zlh::artifacts::{ArtifactError, ArtifactSource, ErrorClass, Mirror, UpstreamError};
use zlh::config::ArtifactsConfig;
use zlh::db::Db;

const VANILLA_PATH: &str = "minecraft/vanilla/1.21.4/server.jar";

fn mirror(data_dir: &Path, config: &ArtifactsConfig) -> Mirror {
    let db = Db::open_in(data_dir).unwrap();
    Mirror::new(data_dir, db, config).unwrap()
}

fn index_rows(data_dir: &Path) -> Vec<zlh::artifacts::ArtifactInfo> {
    let db = Db::open_in(data_dir).unwrap();
    zlh::artifacts::list(&db.conn().unwrap()).unwrap()
}

/// Files under `dir`, recursively, as paths relative to it.
fn files_under(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                walk(base, &p, out);
            } else {
                out.push(p.strip_prefix(base).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_concurrent_ensures_fetch_a_missing_jar_once_verify_and_cache_it() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    let m = mirror(tmp.path(), &up.config());
    let key = upstream::vanilla_key(upstream::VANILLA);
    let expected = up.bytes(&key);

    // Hold the jar at the gate until all 20 callers are waiting on the one download.
    up.close_gate();
    let joined = Arc::new(Mutex::new(HashSet::new()));
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let (m, joined, seen) = (m.clone(), joined.clone(), seen.clone());
        tasks.push(tokio::spawn(async move {
            m.ensure_with_progress(VANILLA_PATH, move |done, total| {
                joined.lock().unwrap().insert(i);
                if i == 0 {
                    seen.lock().unwrap().push((done, total));
                }
            })
            .await
        }));
    }
    wait_for_async(
        "20 callers waiting on one download",
        Duration::from_secs(20),
        || async { (joined.lock().unwrap().len() == 20 && up.downloads(&key) == 1).then_some(()) },
    )
    .await;
    assert_eq!(
        m.stats().waiters.load(std::sync::atomic::Ordering::SeqCst),
        20
    );
    up.open_gate();
    for t in tasks {
        let info = t.await.unwrap().expect("ensure succeeds");
        assert_eq!(info.path, VANILLA_PATH);
        assert_eq!(info.sha256, sha256_hex(&expected));
        assert_eq!(info.size, expected.len() as u64);
        assert_eq!(info.source, ArtifactSource::Mojang);
    }
    assert_eq!(up.downloads(&key), 1, "fetched from upstream exactly once");

    // Progress went up monotonically and ended at (size, Some(size)).
    let seen = seen.lock().unwrap().clone();
    assert!(seen.len() >= 2, "{seen:?}");
    assert!(seen.windows(2).all(|w| w[0].0 <= w[1].0), "{seen:?}");
    let size = expected.len() as u64;
    assert_eq!(seen.last(), Some(&(size, Some(size))));

    // Stored where it belongs, byte for byte, and recorded in the index.
    assert_eq!(std::fs::read(m.file_path(VANILLA_PATH)).unwrap(), expected);
    let rows = index_rows(tmp.path());
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].sha256, sha256_hex(&expected));
    assert_eq!(rows[0].source, ArtifactSource::Mojang);
    assert_eq!(
        m.stats().waiters.load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // Cached: asking again does not touch upstream at all.
    let before = up.requests().len();
    let again = m.ensure(VANILLA_PATH).await.unwrap();
    assert_eq!(again, rows[0]);
    assert_eq!(m.lookup(VANILLA_PATH).await.unwrap(), Some(rows[0].clone()));
    assert_eq!(up.requests().len(), before);

    // A restart (new Mirror on the same data dir) serves it from the mirror too.
    let m2 = mirror(tmp.path(), &up.config());
    assert_eq!(m2.ensure(VANILLA_PATH).await.unwrap(), rows[0]);
    assert_eq!(up.downloads(&key), 1);

    // Every upstream request named us.
    for (path, ua) in up.requests() {
        assert!(
            ua.starts_with("zlh/") && ua.contains("(+https://"),
            "{path}: User-Agent {ua:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paper_fabric_and_java_are_filled_from_their_upstreams() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    let m = mirror(tmp.path(), &up.config());

    // Paper: the newest STABLE build, not the newer BETA one; sha256 verified.
    let paper = m.ensure("minecraft/paper/1.21.4/server.jar").await.unwrap();
    let stable = up.bytes(&upstream::paper_key(upstream::PAPER_STABLE_BUILD));
    assert_eq!(paper.sha256, sha256_hex(&stable));
    assert_eq!(paper.source, ArtifactSource::Paper);
    assert_eq!(
        up.downloads(&upstream::paper_key(upstream::PAPER_STABLE_BUILD)),
        1
    );
    assert_eq!(
        up.downloads(&upstream::paper_key(upstream::PAPER_BETA_BUILD)),
        0
    );

    // Fabric: the stable loader and installer.
    let fabric = m
        .ensure("minecraft/fabric/1.21.1/fabric-server.jar")
        .await
        .unwrap();
    assert_eq!(fabric.sha256, sha256_hex(&up.bytes(upstream::FABRIC_KEY)));
    assert_eq!(fabric.source, ArtifactSource::Fabric);
    assert_eq!(up.downloads(upstream::FABRIC_KEY), 1);

    // Java: the Adoptium JRE for Linux x64 (the simulator insists on those filters).
    let java = m.ensure("java/21/OpenJDK21.tar.gz").await.unwrap();
    assert_eq!(java.sha256, sha256_hex(&up.bytes(upstream::JAVA_KEY)));
    assert_eq!(java.source, ArtifactSource::Adoptium);

    assert_eq!(
        std::fs::read(m.file_path("java/21/OpenJDK21.tar.gz")).unwrap(),
        up.bytes(upstream::JAVA_KEY)
    );
    let paths: Vec<String> = index_rows(tmp.path()).into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        [
            "java/21/OpenJDK21.tar.gz",
            "minecraft/fabric/1.21.1/fabric-server.jar",
            "minecraft/paper/1.21.4/server.jar"
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hash_mismatch_upstream_is_refused_and_nothing_is_stored() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    let m = mirror(tmp.path(), &up.config());
    up.set_corrupt(true);
    let key = upstream::vanilla_key(upstream::VANILLA);

    // Mojang publishes sha1: 20 concurrent callers share the one failed attempt.
    up.close_gate();
    let mut tasks = Vec::new();
    for _ in 0..20 {
        let m = m.clone();
        tasks.push(tokio::spawn(async move { m.ensure(VANILLA_PATH).await }));
    }
    wait_for_async(
        "20 callers waiting on one download",
        Duration::from_secs(20),
        || async {
            (m.stats().waiters.load(std::sync::atomic::Ordering::SeqCst) == 20
                && up.downloads(&key) == 1)
                .then_some(())
        },
    )
    .await;
    up.open_gate();
    let mut messages = HashSet::new();
    for t in tasks {
        let err = t.await.unwrap().expect_err("a corrupt jar must be refused");
        assert_eq!(err.class(), ErrorClass::Upstream);
        assert!(
            matches!(
                err.inner(),
                ArtifactError::Upstream(UpstreamError::Mismatch { algo: "sha1", .. })
            ),
            "{err:?}"
        );
        messages.insert(err.to_string());
    }
    let good = up.bytes(&key);
    let msg = messages.into_iter().next().unwrap();
    assert!(
        msg.starts_with(&format!(
            "sha1 mismatch for {VANILLA_PATH} from {}/v1/objects/",
            up.base
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!("expected {}", upstream::sha1_hex(&good))),
        "{msg}"
    );
    assert_eq!(up.downloads(&key), 1, "one attempt for all 20 callers");

    // Paper publishes sha256.
    let err = m
        .ensure("minecraft/paper/1.21.4/server.jar")
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with(
            "sha256 mismatch for minecraft/paper/1.21.4/server.jar from http://127.0.0.1:"
        ),
        "{err}"
    );

    // Nothing stored: no index row, no file, no temp file left behind.
    assert!(index_rows(tmp.path()).is_empty());
    assert_eq!(m.lookup(VANILLA_PATH).await.unwrap(), None);
    assert!(
        files_under(m.root()).is_empty(),
        "{:?}",
        files_under(m.root())
    );
    assert_eq!(
        m.stats()
            .fills_stored
            .load(std::sync::atomic::Ordering::SeqCst),
        0
    );

    // Once upstream is right again, the next request fills it.
    up.set_corrupt(false);
    let info = m.ensure(VANILLA_PATH).await.unwrap();
    assert_eq!(info.sha256, sha256_hex(&good));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fabric_is_trusted_on_first_use_and_a_refetch_must_match() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    let m = mirror(tmp.path(), &up.config());
    let path = "minecraft/fabric/1.21.1/fabric-server.jar";
    let first = m.ensure(path).await.unwrap();

    // The file disappears from disk; upstream now sends other bytes for the same
    // launcher. The recorded sha256 is the reference: refused, and the index keeps it.
    std::fs::remove_file(m.file_path(path)).unwrap();
    up.set_corrupt(true);
    let err = m.ensure(path).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("sha256 (recorded on first fetch) mismatch") && msg.contains(&first.sha256),
        "{msg}"
    );
    assert!(!m.file_path(path).exists());
    assert_eq!(index_rows(tmp.path()), vec![first.clone()]);

    up.set_corrupt(false);
    let again = m.ensure(path).await.unwrap();
    assert_eq!(again.sha256, first.sha256);
    assert_eq!(up.downloads(upstream::FABRIC_KEY), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_upstream_off_a_missing_artifact_says_how_to_import_it() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    let config = ArtifactsConfig {
        upstream: false,
        ..up.config()
    };
    let m = mirror(tmp.path(), &config);
    let err = m.ensure(VANILLA_PATH).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    assert_eq!(
        err.to_string(),
        format!(
            "artifact {VANILLA_PATH} is not in the mirror and upstream fill is off \
             (artifacts.upstream = false); import it with `zlh artifacts add {VANILLA_PATH} <file>`"
        )
    );
    assert!(up.requests().is_empty(), "upstream was not asked");

    // Imported, it is there.
    let file = tmp.path().join("server.jar");
    std::fs::write(&file, b"imported bytes").unwrap();
    let info = m.add_file(VANILLA_PATH, &file).unwrap();
    assert_eq!(info.source, ArtifactSource::Import);
    assert_eq!(info.sha256, sha256_hex(b"imported bytes"));
    assert_eq!(m.ensure(VANILLA_PATH).await.unwrap(), info);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_versions_paths_and_upstream_errors_are_reported_with_their_source() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    let m = mirror(tmp.path(), &up.config());

    let err = m
        .ensure("minecraft/vanilla/9.9.9/server.jar")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    let msg = err.to_string();
    assert!(
        msg.contains("Mojang's version manifest has no version '9.9.9'")
            && msg.contains(&format!("{}/mc/game/version_manifest_v2.json", up.base))
            && msg.contains("zlh artifacts add minecraft/vanilla/9.9.9/server.jar <file>"),
        "{msg}"
    );

    let err = m
        .ensure("minecraft/fabric/0.1/fabric-server.jar")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    assert!(
        err.to_string()
            .contains("Fabric has no loader for Minecraft '0.1'"),
        "{err}"
    );

    let err = m.ensure("java/99/OpenJDK99.tar.gz").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");

    let err = m
        .ensure("minecraft/paper/7.7/server.jar")
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound, "{err}");

    let err = m.ensure("mods/fabric-api.jar").await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::NotFound);
    assert_eq!(
        err.to_string(),
        "artifact mods/fabric-api.jar is not in the mirror and upstream fill has no source \
         for this path; import it with `zlh artifacts add mods/fabric-api.jar <file>`"
    );

    let broken = format!("minecraft/paper/{}/server.jar", upstream::PAPER_BROKEN);
    let err = m.ensure(&broken).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Upstream);
    assert_eq!(
        err.to_string(),
        format!(
            "fetching the Paper build list for {broken} from {}/v3/projects/paper/versions/{}/builds: HTTP 500",
            up.base,
            upstream::PAPER_BROKEN
        )
    );

    // An upstream that does not answer at all.
    let dead = ArtifactsConfig {
        mojang_url: format!("http://127.0.0.1:{}", support::free_port()),
        ..up.config()
    };
    let other = tmp.path().join("other");
    std::fs::create_dir_all(&other).unwrap();
    let m2 = mirror(&other, &dead);
    let err = m2.ensure(VANILLA_PATH).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Upstream);
    assert!(
        err.to_string().starts_with(&format!(
            "fetching the Mojang version manifest for {VANILLA_PATH} from {}/mc/game/version_manifest_v2.json: ",
            dead.mojang_url
        )),
        "{err}"
    );
    assert!(index_rows(tmp.path()).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_paths_are_refused_by_ensure_and_add() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let m = mirror(&data, &ArtifactsConfig::default());
    let file = tmp.path().join("payload");
    std::fs::write(&file, b"x").unwrap();
    for bad in [
        "../x",
        "a/../../etc/passwd",
        "%2e%2e/x",
        "/etc/passwd",
        "a//b",
        "./a",
        "a\\..\\b",
    ] {
        let err = m.ensure(bad).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::BadPath, "{bad}: {err}");
        let err = m.add_file(bad, &file).unwrap_err();
        assert!(
            matches!(err, ArtifactError::InvalidPath { .. }),
            "{bad}: {err}"
        );
    }
    assert!(!tmp.path().join("x").exists());
    assert!(files_under(m.root()).is_empty());
    assert!(index_rows(&data).is_empty());
}

// ---------------------------------------------------------------------------
// The real binary: `zlh serve` at /artifacts/…, `zlh artifacts add|list`.

/// GET with status, headers and body (longer timeout than `support::http_get`:
/// a request may wait for an upstream fill).
async fn fetch(client: &reqwest::Client, url: &str) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let resp = client.get(url).send().await.expect("GET");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    (status, headers, body)
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .build()
        .unwrap()
}

/// A client presenting an API token of a new admin of `data`: an upstream fill
/// needs a credential (anonymous callers only read what the mirror holds).
fn authed_client(cwd: &Path, data: &Path) -> reqwest::Client {
    let run = |args: &[&str]| {
        let out = zlh(cwd)
            .args(args)
            .arg("--data-dir")
            .arg(data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    run(&["user", "add", "fetcher", "--admin"]);
    let token = run(&["token", "create", "--user", "fetcher"]);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .no_proxy()
        .default_headers(headers)
        .build()
        .unwrap()
}

/// A request sent byte for byte (HTTP clients normalise `..` and `%2e%2e` away,
/// which would hide what the server does with them): (status, body).
fn raw_get(addr: SocketAddr, target: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

fn metric(served: &Served, name: &str) -> Option<i64> {
    let (_, text) = http_get(&served.url("/metrics"))?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
}

#[test]
fn twenty_concurrent_gets_fill_once_and_serve_the_bytes_with_their_checksum() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("zlh.toml"), up.config_toml()).unwrap();
    let data = tmp.path().join("data");
    let served = Served::start(tmp.path(), &data, &[]);
    let key = upstream::vanilla_key(upstream::VANILLA);
    let expected = up.bytes(&key);
    let url = served.url(&format!("/artifacts/{VANILLA_PATH}"));

    up.close_gate();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let client = authed_client(tmp.path(), &data);
    let gets: Vec<_> = (0..20)
        .map(|_| {
            let (client, url) = (client.clone(), url.clone());
            rt.spawn(async move { fetch(&client, &url).await })
        })
        .collect();
    wait_for(
        "20 requests waiting on one fill",
        Duration::from_secs(30),
        || {
            (metric(&served, "zlh_artifact_fill_waiters") == Some(20) && up.downloads(&key) == 1)
                .then_some(())
        },
    );
    up.open_gate();
    let sha = sha256_hex(&expected);
    for g in gets {
        let (status, headers, body) = rt.block_on(g).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, expected);
        assert_eq!(headers["x-checksum-sha256"], sha.as_str());
        assert_eq!(headers["etag"], format!("\"{sha}\"").as_str());
        assert_eq!(headers["content-type"], "application/octet-stream");
        assert_eq!(
            headers["content-length"],
            expected.len().to_string().as_str()
        );
    }
    assert_eq!(up.downloads(&key), 1, "fetched from upstream exactly once");
    assert_eq!(
        metric(&served, "zlh_artifact_fills_total{outcome=\"stored\"}"),
        Some(1)
    );

    // Cached: more GETs, no more upstream traffic; a matching ETag gets 304.
    let requests = up.requests().len();
    let (status, _, body) = rt.block_on(fetch(&client, &url));
    assert_eq!((status, body.len()), (200, expected.len()));
    let resp = rt
        .block_on(async {
            client
                .get(&url)
                .header("if-none-match", format!("\"{sha}\""))
                .send()
                .await
        })
        .unwrap();
    assert_eq!(resp.status().as_u16(), 304);
    assert_eq!(up.requests().len(), requests);

    // The CLI lists it, with its source, while the server runs.
    let out = zlh(tmp.path())
        .args(["artifacts", "list", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = text
        .lines()
        .find(|l| l.starts_with(VANILLA_PATH))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(
        line.contains(&sha)
            && line.contains(&expected.len().to_string())
            && line.ends_with("mojang"),
        "{line}"
    );
}

#[test]
fn http_errors_have_the_json_shape_and_fitting_status() {
    let up = Upstream::start();
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("zlh.toml"), up.config_toml()).unwrap();
    let served = Served::start(tmp.path(), &tmp.path().join("data"), &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = authed_client(tmp.path(), &tmp.path().join("data"));
    let get_json = |path: &str| {
        let (status, _, body) = rt.block_on(fetch(&client, &served.url(path)));
        let v: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{path}: {e}: {}", String::from_utf8_lossy(&body)));
        (status, v)
    };

    // Upstream sends wrong bytes: 502 with the reason; nothing stored.
    up.set_corrupt(true);
    let (status, v) = get_json(&format!("/artifacts/{VANILLA_PATH}"));
    assert_eq!(status, 502);
    assert_eq!(v["error"]["code"], "upstream");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.starts_with(&format!("sha1 mismatch for {VANILLA_PATH} from ")),
        "{msg}"
    );
    up.set_corrupt(false);

    // Not in the mirror, not fillable: 404 naming the import command.
    let (status, v) = get_json("/artifacts/mods/fabric-api.jar");
    assert_eq!(status, 404);
    assert_eq!(v["error"]["code"], "not_found");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("zlh artifacts add mods/fabric-api.jar <file>"),
        "{v}"
    );

    // A bad path: 400, field "path".
    let (status, v) = get_json("/artifacts/a%20b/c");
    assert_eq!(status, 400);
    assert_eq!(v["error"]["code"], "bad_request");
    assert_eq!(v["error"]["field"], "path");

    // And afterwards a good request works and is the only stored artifact.
    let (status, _, body) = rt.block_on(fetch(
        &client,
        &served.url(&format!("/artifacts/{VANILLA_PATH}")),
    ));
    assert_eq!(status, 200);
    assert_eq!(body, up.bytes(&upstream::vanilla_key(upstream::VANILLA)));
    assert_eq!(index_rows(&tmp.path().join("data")).len(), 1);
}

#[test]
fn an_artifact_imported_with_the_cli_is_served_with_upstream_off() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("zlh.toml"),
        "[artifacts]\nupstream = false\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let path = "minecraft/fabric/1.21.1/fabric-server.jar";

    // `add` works before any server ran: it creates the data dir and the database.
    let file = tmp.path().join("launcher.jar");
    let bytes: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&file, &bytes).unwrap();
    let out = zlh(tmp.path())
        .args(["artifacts", "add", path])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sha = sha256_hex(&bytes);
    assert!(stdout.contains(path), "{stdout}");
    assert!(stdout.contains(&sha), "{stdout}");
    assert!(stdout.contains(&bytes.len().to_string()), "{stdout}");

    let served = Served::start(tmp.path(), &data, &[]);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let client = client();
    let (status, headers, body) =
        rt.block_on(fetch(&client, &served.url(&format!("/artifacts/{path}"))));
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
    assert_eq!(headers["x-checksum-sha256"], sha.as_str());

    // Missing with upstream off: 404 with the import command.
    let (status, _, body) = rt.block_on(fetch(
        &client,
        &served.url(&format!("/artifacts/{VANILLA_PATH}")),
    ));
    assert_eq!(status, 404);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["error"]["message"],
        format!(
            "artifact {VANILLA_PATH} is not in the mirror and upstream fill is off \
             (artifacts.upstream = false); import it with `zlh artifacts add {VANILLA_PATH} <file>`"
        )
    );

    // Imported while the server runs: served at once.
    let out = zlh(tmp.path())
        .args(["artifacts", "add", VANILLA_PATH])
        .arg(&file)
        .arg("--data-dir")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (status, headers, body) = rt.block_on(fetch(
        &client,
        &served.url(&format!("/artifacts/{VANILLA_PATH}")),
    ));
    assert_eq!(status, 200);
    assert_eq!(body, bytes);
    assert_eq!(headers["x-checksum-sha256"], sha.as_str());

    let out = zlh(tmp.path())
        .args(["artifacts", "list", "--json", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list.as_array().unwrap().len(), 2);
    assert_eq!(list[0]["path"], path);
    assert_eq!(list[0]["source"], "import");
    assert_eq!(list[0]["size"], bytes.len());
    assert_eq!(list[0]["sha256"], sha.as_str());
}

#[test]
fn path_traversal_is_refused_for_serving_and_for_add() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(
        tmp.path().join("zlh.toml"),
        "[artifacts]\nupstream = false\n",
    )
    .unwrap();
    let data = tmp.path().join("data");
    let served = Served::start(tmp.path(), &data, &[]);
    // Things a traversal could reach: a file in the data dir, the database, /etc/passwd.
    std::fs::write(data.join("secret"), "top secret").unwrap();
    for target in [
        "/artifacts/../secret",
        "/artifacts/../zlh.db",
        "/artifacts/a/../../etc/passwd",
        "/artifacts/%2e%2e/secret",
        "/artifacts/%2E%2E/%2e%2e/etc/passwd",
        "/artifacts/..%2fsecret",
        "/artifacts/%2fetc%2fpasswd",
        "/artifacts//etc/passwd",
        "/artifacts/./secret",
    ] {
        let (status, body) = raw_get(served.addr, target);
        assert_eq!(status, 400, "{target}: {body}");
        assert!(body.contains("\"field\":\"path\""), "{target}: {body}");
        assert!(
            !body.contains("top secret") && !body.contains("root:"),
            "{target}: {body}"
        );
    }
    // The same file under a valid name is simply not in the mirror.
    let (status, body) = raw_get(served.addr, "/artifacts/secret");
    assert_eq!(status, 404, "{body}");

    let file = tmp.path().join("payload");
    std::fs::write(&file, b"payload").unwrap();
    for bad in [
        "../x",
        "a/../../etc/passwd",
        "%2e%2e/x",
        "/etc/passwd",
        "/tmp/zlh-escape",
    ] {
        let out = zlh(tmp.path())
            .args(["artifacts", "add", bad])
            .arg(&file)
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad} must be refused");
        assert!(stderr.contains("invalid artifact path"), "{bad}: {stderr}");
    }
    assert!(!tmp.path().join("x").exists());
    assert!(!data.join("x").exists());
    assert!(!Path::new("/tmp/zlh-escape").exists());
    assert!(files_under(&data.join("artifacts")).is_empty());
    assert!(index_rows(&data).is_empty());
}

/// Runs `zlh config check` in a fresh dir with `file` as zlh.toml and `env`;
/// returns (success, stdout, stderr).
fn config_check(file: Option<&str>, env: &[(&str, &str)]) -> (bool, String, String) {
    let tmp = tempfile::tempdir().unwrap();
    if let Some(text) = file {
        std::fs::write(tmp.path().join("zlh.toml"), text).unwrap();
    }
    let mut cmd = zlh(tmp.path());
    cmd.args(["config", "check"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn artifacts_settings_are_layered_and_bad_ones_name_the_key() {
    // Defaults.
    let (ok, out, err) = config_check(None, &[]);
    assert!(ok, "{err}");
    assert!(out.contains("[artifacts]\nupstream = true"), "{out}");
    assert!(
        out.contains("mojang_url = \"https://piston-meta.mojang.com\""),
        "{out}"
    );
    assert!(
        out.contains("fabric_url = \"https://meta.fabricmc.net\""),
        "{out}"
    );
    assert!(
        out.contains("paper_url = \"https://fill.papermc.io\""),
        "{out}"
    );
    assert!(
        out.contains("adoptium_url = \"https://api.adoptium.net\""),
        "{out}"
    );

    // Env beats file, including a bool.
    let (ok, out, err) = config_check(
        Some("[artifacts]\nupstream = true\npaper_url = \"http://10.0.0.5:8080\"\n"),
        &[
            ("ZLH_ARTIFACTS_UPSTREAM", "false"),
            ("ZLH_ARTIFACTS_MOJANG_URL", "http://10.0.0.6"),
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("upstream = false"), "{out}");
    assert!(
        out.contains("paper_url = \"http://10.0.0.5:8080\""),
        "{out}"
    );
    assert!(out.contains("mojang_url = \"http://10.0.0.6\""), "{out}");

    for (file, env, needle) in [
        (
            Some("[artifacts]\nmirror_url = \"http://x\"\n"),
            vec![],
            "unknown setting `artifacts.mirror_url`",
        ),
        (
            Some("[artifacts]\nmojang_url = \"piston-meta.mojang.com\"\n"),
            vec![],
            "invalid setting `artifacts.mojang_url`",
        ),
        (
            Some("[artifacts]\nfabric_url = \"ftp://meta.fabricmc.net\"\n"),
            vec![],
            "invalid setting `artifacts.fabric_url`",
        ),
        (
            Some("[artifacts]\nupstream = \"sometimes\"\n"),
            vec![],
            "artifacts.upstream",
        ),
        (
            None,
            vec![("ZLH_ARTIFACTS_ADOPTIUM_URL", "https://api.adoptium.net?x=1")],
            "`artifacts.adoptium_url` (from environment variable ZLH_ARTIFACTS_ADOPTIUM_URL)",
        ),
        (
            None,
            vec![("ZLH_ARTIFACTS_UPSTREAM", "maybe")],
            "`artifacts.upstream` (from environment variable ZLH_ARTIFACTS_UPSTREAM)",
        ),
        (
            None,
            vec![("ZLH_ARTIFACTS_PAPER", "x")],
            "unknown setting ZLH_ARTIFACTS_PAPER",
        ),
    ] {
        let (ok, _, err) = config_check(file, &env);
        assert!(!ok, "{file:?} {env:?} must be refused");
        assert!(
            err.contains(needle),
            "{file:?} {env:?}: expected '{needle}' in: {err}"
        );
    }
}
