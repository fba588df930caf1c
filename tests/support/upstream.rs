//! A simulator of the artifact upstreams on 127.0.0.1:0, with the shapes of
//! reference/protocols.md §7: Mojang's version manifest + per-version JSON + jar,
//! PaperMC Fill v3 builds + jar, Fabric meta loader/installer lists + launcher jar,
//! Adoptium's latest-assets list + tarball.
//!
//! It counts downloads of every file, records each request's User-Agent, can serve
//! wrong bytes (one byte flipped, same size) to provoke a hash mismatch, and can hold
//! file downloads at a gate until the test opens it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::{Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use sha1::Sha1;
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

pub const VANILLA: &str = "1.21.4";
pub const VANILLA_OLD: &str = "1.20.1";
pub const PAPER: &str = "1.21.4";
/// Newest build, but BETA: must not be chosen while a STABLE one exists.
pub const PAPER_BETA_BUILD: i64 = 233;
pub const PAPER_STABLE_BUILD: i64 = 232;
/// A Paper version whose build list answers HTTP 500.
pub const PAPER_BROKEN: &str = "0.0-broken";
pub const FABRIC: &str = "1.21.1";
pub const FABRIC_LOADER_STABLE: &str = "0.16.9";
pub const FABRIC_INSTALLER_STABLE: &str = "1.0.1";
pub const JAVA: &str = "21";

/// Keys of the files the simulator serves (for [`Upstream::bytes`] and download counts).
pub fn vanilla_key(v: &str) -> String {
    format!("mojang:{v}")
}
pub fn paper_key(build: i64) -> String {
    format!("paper:{build}")
}
pub const FABRIC_KEY: &str = "fabric:1.21.1:0.16.9:1.0.1";
pub const JAVA_KEY: &str = "adoptium:21";

pub struct Sim {
    base: String,
    files: HashMap<String, Vec<u8>>,
    downloads: Mutex<HashMap<String, usize>>,
    requests: Mutex<Vec<(String, String)>>,
    corrupt: AtomicBool,
    gate: watch::Sender<bool>,
}

/// The running simulator; stops when dropped.
pub struct Upstream {
    pub addr: SocketAddr,
    pub base: String,
    sim: Arc<Sim>,
    stop: Option<oneshot::Sender<()>>,
}

/// Deterministic filler bytes, different per seed.
fn payload(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for b in seed.bytes() {
        x = (x ^ b as u64).wrapping_mul(0x100_0000_01B3);
    }
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

pub fn sha1_hex(bytes: &[u8]) -> String {
    hex(&Sha1::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl Upstream {
    pub fn start() -> Upstream {
        Upstream::start_with(Vec::new())
    }

    /// Like [`Upstream::start`], serving `replace`'s bytes for those keys (e.g. a
    /// runnable stand-in as the vanilla jar and a JRE that runs it).
    pub fn start_with(replace: Vec<(String, Vec<u8>)>) -> Upstream {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("binding the upstream sim");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let base = format!("http://{addr}");
        let mut files = HashMap::new();
        // Big enough to arrive in many chunks (progress), small enough to be quick.
        files.insert(vanilla_key(VANILLA), payload("vanilla", 700 * 1024 + 17));
        files.insert(vanilla_key(VANILLA_OLD), payload("vanilla-old", 64 * 1024));
        files.insert(
            paper_key(PAPER_STABLE_BUILD),
            payload("paper-stable", 200 * 1024),
        );
        files.insert(
            paper_key(PAPER_BETA_BUILD),
            payload("paper-beta", 200 * 1024),
        );
        files.insert(FABRIC_KEY.to_string(), payload("fabric", 180 * 1024));
        files.insert(JAVA_KEY.to_string(), payload("jre21", 900 * 1024));
        files.extend(replace);
        let sim = Arc::new(Sim {
            base: base.clone(),
            files,
            downloads: Mutex::new(HashMap::new()),
            requests: Mutex::new(Vec::new()),
            corrupt: AtomicBool::new(false),
            gate: watch::Sender::new(true),
        });
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let app = router(sim.clone());
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("sim runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        Upstream {
            addr,
            base,
            sim,
            stop: Some(stop_tx),
        }
    }

    /// `[artifacts]` settings pointing every upstream at this simulator.
    pub fn config(&self) -> zlh::config::ArtifactsConfig {
        zlh::config::ArtifactsConfig {
            upstream: true,
            mojang_url: self.base.clone(),
            fabric_url: self.base.clone(),
            // With a trailing slash, to show it does not matter.
            paper_url: format!("{}/", self.base),
            adoptium_url: self.base.clone(),
        }
    }

    /// The same as a `zlh.toml` section.
    pub fn config_toml(&self) -> String {
        format!(
            "[artifacts]\nmojang_url = \"{b}\"\nfabric_url = \"{b}\"\npaper_url = \"{b}\"\nadoptium_url = \"{b}\"\n",
            b = self.base
        )
    }

    /// The correct bytes of a file.
    pub fn bytes(&self, key: &str) -> Vec<u8> {
        self.sim.files[key].clone()
    }

    /// How many times a file's download was requested.
    pub fn downloads(&self, key: &str) -> usize {
        self.sim
            .downloads
            .lock()
            .unwrap()
            .get(key)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_downloads(&self) -> usize {
        self.sim.downloads.lock().unwrap().values().sum()
    }

    /// Every request so far: (path and query, User-Agent).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.sim.requests.lock().unwrap().clone()
    }

    /// Serve wrong bytes (same length, one byte flipped) from now on, or stop doing so.
    pub fn set_corrupt(&self, on: bool) {
        self.sim.corrupt.store(on, Ordering::SeqCst);
    }

    /// Hold file downloads (after counting them) until [`Upstream::open_gate`].
    pub fn close_gate(&self) {
        self.sim.gate.send_replace(false);
    }

    pub fn open_gate(&self) {
        self.sim.gate.send_replace(true);
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.open_gate();
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

type St = State<Arc<Sim>>;

fn router(sim: Arc<Sim>) -> Router {
    Router::new()
        .route("/mc/game/version_manifest_v2.json", get(mojang_manifest))
        .route("/v1/packages/{hash}/{file}", get(mojang_version))
        .route("/v1/objects/{sha1}/server.jar", get(mojang_jar))
        .route(
            "/v3/projects/paper/versions/{ver}/builds",
            get(paper_builds),
        )
        .route("/paper-data/{build}/{name}", get(paper_jar))
        .route("/v2/versions/loader/{ver}", get(fabric_loaders))
        .route("/v2/versions/installer", get(fabric_installers))
        .route(
            "/v2/versions/loader/{ver}/{loader}/{installer}/server/jar",
            get(fabric_jar),
        )
        .route("/v3/assets/latest/{major}/hotspot", get(adoptium_assets))
        .route("/adoptium-dl/{major}/{name}", get(adoptium_tarball))
        .layer(middleware::from_fn_with_state(sim.clone(), record))
        .with_state(sim)
}

async fn record(State(sim): St, req: Request, next: Next) -> Response {
    let ua = req
        .headers()
        .get(header::USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    sim.requests.lock().unwrap().push((path, ua));
    next.run(req).await
}

/// Serves a file: counted, held at the gate, optionally corrupted.
async fn file(sim: &Sim, key: &str) -> Response {
    let Some(bytes) = sim.files.get(key) else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    *sim.downloads
        .lock()
        .unwrap()
        .entry(key.to_string())
        .or_default() += 1;
    let mut gate = sim.gate.subscribe();
    let _ = gate.wait_for(|open| *open).await;
    let mut body = bytes.clone();
    if sim.corrupt.load(Ordering::SeqCst) {
        let mid = body.len() / 2;
        body[mid] ^= 0xff;
    }
    ([(header::CONTENT_TYPE, "application/java-archive")], body).into_response()
}

fn vanilla_versions() -> [&'static str; 2] {
    [VANILLA, VANILLA_OLD]
}

async fn mojang_manifest(State(sim): St) -> Response {
    let versions: Vec<_> = vanilla_versions()
        .iter()
        .map(|v| {
            json!({
                "id": v, "type": "release",
                "url": format!("{}/v1/packages/{}/{v}.json", sim.base, "0".repeat(40)),
                "time": "2024-12-03T10:12:57+00:00", "releaseTime": "2024-12-03T10:12:57+00:00",
                "sha1": "0".repeat(40), "complianceLevel": 1
            })
        })
        .collect();
    axum::Json(json!({"latest": {"release": VANILLA, "snapshot": VANILLA}, "versions": versions}))
        .into_response()
}

async fn mojang_version(State(sim): St, Path((_hash, file)): Path<(String, String)>) -> Response {
    let Some(v) = file
        .strip_suffix(".json")
        .filter(|v| vanilla_versions().contains(v))
    else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let bytes = &sim.files[&vanilla_key(v)];
    let sha1 = sha1_hex(bytes);
    axum::Json(json!({
        "id": v,
        "javaVersion": {"component": "java-runtime-delta", "majorVersion": 21},
        "downloads": {
            "client": {"sha1": "1".repeat(40), "size": 1, "url": format!("{}/nowhere", sim.base)},
            "server": {"sha1": sha1, "size": bytes.len(),
                       "url": format!("{}/v1/objects/{sha1}/server.jar", sim.base)}
        }
    }))
    .into_response()
}

async fn mojang_jar(State(sim): St, Path(sha1): Path<String>) -> Response {
    let key = vanilla_versions()
        .iter()
        .map(|v| vanilla_key(v))
        .find(|k| sha1_hex(&sim.files[k]) == sha1);
    match key {
        Some(k) => file(&sim, &k).await,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

async fn paper_builds(State(sim): St, Path(ver): Path<String>) -> Response {
    if ver == PAPER_BROKEN {
        return (StatusCode::INTERNAL_SERVER_ERROR, "boom").into_response();
    }
    if ver != PAPER {
        return (
            StatusCode::NOT_FOUND,
            axum::Json(json!({"error": "not_found", "message": "Version not found."})),
        )
            .into_response();
    }
    let build = |id: i64, channel: &str| {
        let bytes = &sim.files[&paper_key(id)];
        let name = format!("paper-{ver}-{id}.jar");
        json!({
            "id": id, "time": "2025-01-01T00:00:00Z", "channel": channel, "commits": [],
            "downloads": {
                "server:default": {
                    "name": name,
                    "checksums": {"sha256": sha256_hex(bytes)},
                    "size": bytes.len(),
                    "url": format!("{}/paper-data/{id}/{name}", sim.base)
                }
            }
        })
    };
    axum::Json(json!([
        build(PAPER_BETA_BUILD, "BETA"),
        build(PAPER_STABLE_BUILD, "STABLE")
    ]))
    .into_response()
}

async fn paper_jar(State(sim): St, Path((build, _name)): Path<(i64, String)>) -> Response {
    file(&sim, &paper_key(build)).await
}

async fn fabric_loaders(Path(ver): Path<String>) -> Response {
    if ver != FABRIC {
        // Fabric meta answers an unknown game version with an empty list.
        return axum::Json(json!([])).into_response();
    }
    let entry = |v: &str, stable: bool| {
        json!({
            "loader": {"separator": ".", "build": 10, "maven": format!("net.fabricmc:fabric-loader:{v}"),
                       "version": v, "stable": stable},
            "intermediary": {"maven": format!("net.fabricmc:intermediary:{ver}"), "version": ver, "stable": true},
            "launcherMeta": {}
        })
    };
    axum::Json(json!([
        entry("0.16.10", false),
        entry(FABRIC_LOADER_STABLE, true)
    ]))
    .into_response()
}

async fn fabric_installers() -> Response {
    axum::Json(json!([
        {"url": "x", "maven": "net.fabricmc:fabric-installer:1.0.2", "version": "1.0.2", "stable": false},
        {"url": "x", "maven": "net.fabricmc:fabric-installer:1.0.1", "version": FABRIC_INSTALLER_STABLE, "stable": true}
    ]))
    .into_response()
}

async fn fabric_jar(
    State(sim): St,
    Path((ver, loader, installer)): Path<(String, String, String)>,
) -> Response {
    file(&sim, &format!("fabric:{ver}:{loader}:{installer}")).await
}

async fn adoptium_assets(
    State(sim): St,
    Path(major): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    for (k, v) in [
        ("architecture", "x64"),
        ("image_type", "jre"),
        ("os", "linux"),
        ("vendor", "eclipse"),
    ] {
        if q.get(k).map(String::as_str) != Some(v) {
            return (StatusCode::BAD_REQUEST, format!("{k} must be {v}")).into_response();
        }
    }
    let key = format!("adoptium:{major}");
    let Some(bytes) = sim.files.get(&key) else {
        return axum::Json(json!([])).into_response();
    };
    let name = format!("OpenJDK{major}U-jre_x64_linux_hotspot_21.0.5_11.tar.gz");
    axum::Json(json!([{
        "binary": {
            "architecture": "x64", "image_type": "jre", "os": "linux",
            "package": {
                "checksum": sha256_hex(bytes),
                "link": format!("{}/adoptium-dl/{major}/{name}", sim.base),
                "name": name,
                "size": bytes.len()
            }
        },
        "release_name": "jdk-21.0.5+11", "vendor": "eclipse"
    }]))
    .into_response()
}

async fn adoptium_tarball(
    State(sim): St,
    Path((major, _name)): Path<(String, String)>,
) -> Response {
    file(&sim, &format!("adoptium:{major}")).await
}
