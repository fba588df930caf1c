//! A Proxmox VE API simulator that behaves like the real thing where zlh can tell
//! (`reference/protocols.md` §1.4), on 127.0.0.1:0 over plain HTTP under `/api2/json`:
//!
//! - a per-VMID config map with `lock` and a `digest` that changes on every write;
//! - worker tasks with real UPIDs (`UPID:node:pid:pstart:starttime:type:id:user:`) that
//!   complete after a delay with an `exitstatus`, and a task log;
//! - the sync/async error split: errors found before the fork are HTTP errors with the
//!   message in the **reason phrase** (and PVE 9's `message` behind a flag); lock checks
//!   of start/stop happen inside the worker and end the task with `CT is locked (…)`;
//! - clone locks the source `disk` and the target `create` for the task's duration;
//! - `nextid` answers a JSON string; `/interfaces` is `null` while stopped and shows
//!   eth0's address a configurable time after start; a bad token gets 401 after a delay.
//!
//! A started container runs a real `zlh agent` (the test build of the binary) on its own
//! loopback address `127.a.b.n:18888`, with `a.b` random per simulator so parallel tests
//! do not collide; stop/destroy kill it and its game.
//!
//! The simulator runs on a runtime thread of its own, so it serves `#[tokio::test]`s and
//! plain threads alike; every control method is synchronous.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{MatchedPath, Path as UrlPath, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Form, Json, Router};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::{oneshot, watch};

use zlh::runtime::proxmox::ProxmoxConfig;

/// The port every simulated container's agent listens on (as in the base template).
pub const AGENT_PORT: u16 = zlh::agent::DEFAULT_PORT;

/// How the simulator behaves; `Default` is a quick, PVE 8-like node `pve1` with a base
/// template 900.
#[derive(Debug, Clone)]
pub struct SimOptions {
    pub node: String,
    pub token_id: String,
    pub token_secret: String,
    pub template_vmid: i64,
    /// What the base template's agent starts with.
    pub bootstrap_token: String,
    /// How long a worker task runs.
    pub task_delay: Duration,
    /// How long after start eth0 gets its (DHCP) address.
    pub ip_delay: Duration,
    /// PVE delays every 401 (by 3 s); here it is short unless a test wants it long.
    pub auth_delay: Duration,
    /// Put sync error messages in the reason phrase (PVE 8 and 9).
    pub reason_phrase: bool,
    /// Also put them in the body's `message` (PVE 9).
    pub pve9_message: bool,
    /// Run a real `zlh agent` in each started container.
    pub run_agents: bool,
    /// The agents' readiness probe interval (`--probe-interval`).
    pub agent_probe_interval: String,
    /// The agents' `ZLH_LOG`.
    pub agent_log: String,
    /// The `zlh` the base template carries (default: the one under test).
    pub agent_binary: Option<std::path::PathBuf>,
}

impl Default for SimOptions {
    fn default() -> Self {
        SimOptions {
            node: "pve1".into(),
            token_id: "zlh@pve!ctl".into(),
            token_secret: "5f0c8a62-3c1e-4d7b-9e0a-8a1b2c3d4e5f".into(),
            template_vmid: 900,
            bootstrap_token: "sim-bootstrap-token-0123456789".into(),
            task_delay: Duration::from_millis(50),
            ip_delay: Duration::from_millis(200),
            auth_delay: Duration::from_millis(50),
            reason_phrase: true,
            pve9_message: false,
            run_agents: true,
            agent_probe_interval: "100ms".into(),
            agent_log: "info,zlh=debug".into(),
            agent_binary: None,
        }
    }
}

struct Ct {
    config: Map<String, Value>,
    digest: String,
    running: bool,
    started_at: Option<Instant>,
    /// Last octet of the container's address.
    host: u8,
    agent: Option<Child>,
}

impl Ct {
    fn lock(&self) -> Option<String> {
        self.config
            .get("lock")
            .and_then(Value::as_str)
            .map(str::to_string)
    }
    fn set_lock(&mut self, lock: Option<&str>) {
        match lock {
            Some(l) => self.config.insert("lock".into(), json!(l)),
            None => self.config.remove("lock"),
        };
        self.touch();
    }
    fn is_template(&self) -> bool {
        self.config.get("template").and_then(Value::as_i64) == Some(1)
    }
    /// Every write changes the digest.
    fn touch(&mut self) {
        let mut h = Sha256::new();
        h.update(self.digest.as_bytes());
        h.update(Value::Object(self.config.clone()).to_string().as_bytes());
        self.digest = hex(&h.finalize())[..40].to_string();
    }
}

struct Task {
    upid: String,
    kind: String,
    id: String,
    pid: u32,
    pstart: u32,
    starttime: u64,
    exitstatus: Option<String>,
    log: Vec<String>,
}

struct Burst {
    remaining: usize,
    prefix: Option<String>,
    status: u16,
    message: String,
}

#[derive(Default)]
struct Counters {
    clones: HashMap<i64, usize>,
    starts: HashMap<i64, usize>,
    stops: HashMap<i64, usize>,
    destroys: HashMap<i64, usize>,
    tasks: HashMap<String, usize>,
    requests: HashMap<String, usize>,
}

struct StateInner {
    cts: BTreeMap<i64, Ct>,
    tasks: HashMap<String, Task>,
    next_pid: u32,
    next_host: u8,
    fail_next: HashMap<String, VecDeque<String>>,
    held: HashSet<String>,
    bursts: Vec<Burst>,
    latency: Duration,
    task_delay: Duration,
    ip_delay: Duration,
    counters: Counters,
    /// Set when the simulator is dropped: no new agents from then on.
    closed: bool,
    /// Backup volumes (`vzdump` results) on the simulated storages.
    dumps: Vec<Dump>,
    /// Parameters of every `vzdump` and restore request, in order.
    vzdump_calls: Vec<BTreeMap<String, String>>,
    restore_calls: Vec<BTreeMap<String, String>>,
}

/// One backup volume: a tar of the container's "disk" and its config at dump time.
#[derive(Clone)]
struct Dump {
    volid: String,
    storage: String,
    vmid: i64,
    ctime: u64,
    size: u64,
    notes: String,
    archive: PathBuf,
    config: Map<String, Value>,
}

struct Shared {
    opts: SimOptions,
    state: Mutex<StateInner>,
    /// Bumped whenever held tasks are released.
    released: watch::Sender<u64>,
    /// `127.a.b.0/24`: this simulator's container addresses.
    net: [u8; 2],
    dir: PathBuf,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, StateInner> {
        // A panicking handler must not wedge every later test assertion.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
    fn ip(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(127, self.net[0], self.net[1], host)
    }
    fn conf_missing(&self, vmid: i64) -> String {
        format!(
            "Configuration file 'nodes/{}/lxc/{vmid}.conf' does not exist",
            self.opts.node
        )
    }
    fn ct_dir(&self, vmid: i64) -> PathBuf {
        self.dir.join(format!("ct-{vmid}"))
    }
}

/// A running simulator; dropping it kills every agent it started and stops the server.
pub struct PveSim {
    addr: SocketAddr,
    shared: Arc<Shared>,
    handle: tokio::runtime::Handle,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn random_mac() -> String {
    format!(
        "BC:24:11:{:02X}:{:02X}:{:02X}",
        fastrand::u8(..),
        fastrand::u8(..),
        fastrand::u8(..)
    )
}

fn now_epoch() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl PveSim {
    pub fn start() -> PveSim {
        PveSim::with(SimOptions::default())
    }

    pub fn with(opts: SimOptions) -> PveSim {
        let dir = tempfile::tempdir().expect("creating the simulator's directory");
        // 127.0.x.x stays clear of 127.0.0.1, where everything else in the tests lives.
        let net = [fastrand::u8(1..=254), fastrand::u8(..)];
        let (released, _) = watch::channel(0u64);
        let mut state = StateInner {
            cts: BTreeMap::new(),
            tasks: HashMap::new(),
            next_pid: 0x0002_0000 + fastrand::u32(..0x1000),
            next_host: 2,
            fail_next: HashMap::new(),
            held: HashSet::new(),
            bursts: Vec::new(),
            latency: Duration::ZERO,
            task_delay: opts.task_delay,
            ip_delay: opts.ip_delay,
            counters: Counters::default(),
            closed: false,
            dumps: Vec::new(),
            vzdump_calls: Vec::new(),
            restore_calls: Vec::new(),
        };
        let mut template = Ct {
            config: json!({
                "arch": "amd64",
                "cores": 1,
                "memory": 512,
                "swap": 512,
                "hostname": "zlh-base",
                "description": "zlh base template (agent with the bootstrap token)",
                "net0": format!("name=eth0,bridge=vmbr0,hwaddr={},ip=dhcp,type=veth", random_mac()),
                "ostype": "debian",
                "rootfs": format!("local-lvm:base-{}-disk-0,size=8G", opts.template_vmid),
                "template": 1,
            })
            .as_object()
            .cloned()
            .unwrap_or_default(),
            digest: String::new(),
            running: false,
            started_at: None,
            host: 1,
            agent: None,
        };
        template.touch();
        state.cts.insert(opts.template_vmid, template);
        let shared = Arc::new(Shared {
            opts,
            state: Mutex::new(state),
            released,
            net,
            dir: dir.path().to_path_buf(),
        });

        let app = router(shared.clone());
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("building the simulator's runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("binding the simulator");
                let addr = listener.local_addr().expect("simulator address");
                let _ = tx.send((addr, tokio::runtime::Handle::current()));
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let (addr, handle) = rx.recv().expect("the simulator to start");
        PveSim {
            addr,
            shared,
            handle,
            shutdown: Some(stop_tx),
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// `http://127.0.0.1:PORT` (what `api_url` takes).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn options(&self) -> &SimOptions {
        &self.shared.opts
    }

    /// A node configuration pointing at this simulator, with test-sized timeouts.
    pub fn proxmox_config(&self) -> ProxmoxConfig {
        let o = &self.shared.opts;
        ProxmoxConfig {
            api_url: self.url(),
            allow_hostnames: false,
            // The simulator speaks plain HTTP on loopback.
            allow_insecure_http: true,
            allow_loopback: true,
            token_id: o.token_id.clone(),
            token_secret: o.token_secret.clone(),
            node: o.node.clone(),
            template_vmid: o.template_vmid,
            storage: None,
            bridge: "vmbr0".into(),
            full_clone: false,
            tls_fingerprint: None,
            bootstrap_token: o.bootstrap_token.clone(),
            task_timeout_secs: 20,
            address_timeout_secs: 20,
            retry_budget_secs: 10,
            task_poll_max_ms: 200,
            backup_storage: Some("pbs".into()),
        }
    }

    // ----- the world ---------------------------------------------------------------

    pub fn exists(&self, vmid: i64) -> bool {
        self.shared.lock().cts.contains_key(&vmid)
    }

    pub fn is_running(&self, vmid: i64) -> bool {
        self.shared.lock().cts.get(&vmid).is_some_and(|c| c.running)
    }

    /// The container's config as `GET …/config` would show it.
    pub fn config(&self, vmid: i64) -> Option<Map<String, Value>> {
        self.shared.lock().cts.get(&vmid).map(|c| c.config.clone())
    }

    /// The container's address (kept across stop/start, like a DHCP lease by MAC).
    pub fn ct_ip(&self, vmid: i64) -> Option<Ipv4Addr> {
        let st = self.shared.lock();
        st.cts.get(&vmid).map(|c| self.shared.ip(c.host))
    }

    /// The pid of the agent running in the container.
    pub fn agent_pid(&self, vmid: i64) -> Option<u32> {
        self.shared
            .lock()
            .cts
            .get(&vmid)
            .and_then(|c| c.agent.as_ref().map(Child::id))
    }

    /// The agent directory of a container (its "disk").
    pub fn ct_dir(&self, vmid: i64) -> PathBuf {
        self.shared.ct_dir(vmid)
    }

    /// What the container's agent wrote to stderr.
    pub fn agent_log(&self, vmid: i64) -> String {
        std::fs::read_to_string(self.shared.dir.join(format!("ct-{vmid}.log"))).unwrap_or_default()
    }

    /// Parameters of every `POST /nodes/{node}/vzdump`, in order.
    pub fn vzdump_calls(&self) -> Vec<BTreeMap<String, String>> {
        self.shared.lock().vzdump_calls.clone()
    }

    /// Parameters of every restore (`POST /nodes/{node}/lxc` with `restore=1`).
    pub fn restore_calls(&self) -> Vec<BTreeMap<String, String>> {
        self.shared.lock().restore_calls.clone()
    }

    /// Volume ids of the backups on `storage`.
    pub fn backup_volumes(&self, storage: &str) -> Vec<String> {
        self.shared
            .lock()
            .dumps
            .iter()
            .filter(|d| d.storage == storage)
            .map(|d| d.volid.clone())
            .collect()
    }

    // ----- fault injection ---------------------------------------------------------

    /// The next task of `kind` (`vzclone`, `vzstart`, `vzstop`, `vzshutdown`,
    /// `vzdestroy`) ends with `exitstatus` instead of doing its work.
    /// The next restore task removes the container's volumes and then fails with
    /// `exitstatus` (what a real PVE restore with `force=1` can do: the old disks are
    /// gone before the new ones are complete).
    pub fn fail_next_restore_after_wipe(&self, exitstatus: &str) {
        self.fail_next_task("vzrestore-after-wipe", exitstatus);
    }

    pub fn fail_next_task(&self, kind: &str, exitstatus: &str) {
        self.shared
            .lock()
            .fail_next
            .entry(kind.to_string())
            .or_default()
            .push_back(exitstatus.to_string());
    }

    /// Tasks of `kind` stay `running` (holding their locks) until released.
    pub fn hold_tasks(&self, kind: &str) {
        self.shared.lock().held.insert(kind.to_string());
    }

    pub fn release_tasks(&self, kind: &str) {
        self.shared.lock().held.remove(kind);
        self.shared.released.send_modify(|v| *v += 1);
    }

    /// Puts `lock` on the container's config (as a backup or snapshot would).
    pub fn lock_ct(&self, vmid: i64, lock: &str) {
        if let Some(ct) = self.shared.lock().cts.get_mut(&vmid) {
            ct.set_lock(Some(lock));
        }
    }

    pub fn unlock_ct(&self, vmid: i64) {
        if let Some(ct) = self.shared.lock().cts.get_mut(&vmid) {
            ct.set_lock(None);
        }
    }

    /// Removes the container's lock after `after` (on the simulator's runtime).
    pub fn unlock_after(&self, vmid: i64, after: Duration) {
        let shared = self.shared.clone();
        self.handle.spawn(async move {
            tokio::time::sleep(after).await;
            if let Some(ct) = shared.lock().cts.get_mut(&vmid) {
                ct.set_lock(None);
            }
        });
    }

    /// The next `n` authenticated requests (whose path after `/api2/json` starts with
    /// `prefix`, if given) fail synchronously with `status` and `message`.
    pub fn fail_requests(&self, n: usize, prefix: Option<&str>, status: u16, message: &str) {
        self.shared.lock().bursts.push(Burst {
            remaining: n,
            prefix: prefix.map(str::to_string),
            status,
            message: message.to_string(),
        });
    }

    /// Extra latency on every request.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    pub fn set_task_delay(&self, delay: Duration) {
        self.shared.lock().task_delay = delay;
    }

    pub fn set_ip_delay(&self, delay: Duration) {
        self.shared.lock().ip_delay = delay;
    }

    /// A container zlh did not make, on `vmid`.
    pub fn add_foreign(&self, vmid: i64, description: &str, tags: &str) {
        let mut st = self.shared.lock();
        let host = next_host(&mut st);
        let mut config = Map::new();
        config.insert("hostname".into(), json!(format!("someone-else-{vmid}")));
        config.insert("description".into(), json!(description));
        if !tags.is_empty() {
            config.insert("tags".into(), json!(tags));
        }
        config.insert("cores".into(), json!(2));
        config.insert("memory".into(), json!(2048));
        config.insert(
            "net0".into(),
            json!(format!(
                "name=eth0,bridge=vmbr0,hwaddr={},ip=dhcp,type=veth",
                random_mac()
            )),
        );
        let mut ct = Ct {
            config,
            digest: String::new(),
            running: false,
            started_at: None,
            host,
            agent: None,
        };
        ct.touch();
        st.cts.insert(vmid, ct);
    }

    // ----- counters ----------------------------------------------------------------

    /// Clone tasks started with `newid` = `vmid`.
    pub fn clones(&self, vmid: i64) -> usize {
        self.shared
            .lock()
            .counters
            .clones
            .get(&vmid)
            .copied()
            .unwrap_or(0)
    }

    pub fn total_clones(&self) -> usize {
        self.shared.lock().counters.clones.values().sum()
    }

    /// Successful starts of `vmid`.
    pub fn starts(&self, vmid: i64) -> usize {
        self.shared
            .lock()
            .counters
            .starts
            .get(&vmid)
            .copied()
            .unwrap_or(0)
    }

    /// Successful stops (hard or clean) of `vmid`.
    pub fn stops(&self, vmid: i64) -> usize {
        self.shared
            .lock()
            .counters
            .stops
            .get(&vmid)
            .copied()
            .unwrap_or(0)
    }

    /// Successful destroys of `vmid`.
    pub fn destroys(&self, vmid: i64) -> usize {
        self.shared
            .lock()
            .counters
            .destroys
            .get(&vmid)
            .copied()
            .unwrap_or(0)
    }

    /// Tasks of `kind` started (whatever their outcome).
    pub fn tasks(&self, kind: &str) -> usize {
        self.shared
            .lock()
            .counters
            .tasks
            .get(kind)
            .copied()
            .unwrap_or(0)
    }

    /// Requests to one endpoint, named by method and route
    /// (`"POST /nodes/{node}/lxc/{vmid}/clone"`).
    pub fn requests(&self, endpoint: &str) -> usize {
        self.shared
            .lock()
            .counters
            .requests
            .get(endpoint)
            .copied()
            .unwrap_or(0)
    }

    pub fn request_counts(&self) -> BTreeMap<String, usize> {
        self.shared
            .lock()
            .counters
            .requests
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }
}

impl Drop for PveSim {
    fn drop(&mut self) {
        let agents: Vec<(i64, Child)> = {
            let mut st = self.shared.lock();
            st.closed = true;
            st.cts
                .iter_mut()
                .filter_map(|(vmid, ct)| ct.agent.take().map(|a| (*vmid, a)))
                .collect()
        };
        for (vmid, child) in agents {
            kill_agent(child, &self.shared.ct_dir(vmid));
        }
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn next_host(st: &mut StateInner) -> u8 {
    let host = st.next_host;
    // 254 containers per simulator is plenty for a test; wrap rather than fail.
    st.next_host = if host >= 254 { 2 } else { host + 1 };
    host
}

// ----- HTTP ------------------------------------------------------------------------

fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/cluster/nextid", get(nextid))
        .route("/nodes/{node}/lxc", get(list).post(create_ct))
        .route("/nodes/{node}/vzdump", post(vzdump))
        .route(
            "/nodes/{node}/storage/{storage}/content",
            get(storage_content),
        )
        .route(
            "/nodes/{node}/storage/{storage}/content/{volume}",
            delete(delete_volume),
        )
        .route("/nodes/{node}/lxc/{vmid}", delete(destroy))
        .route("/nodes/{node}/lxc/{vmid}/clone", post(clone))
        .route(
            "/nodes/{node}/lxc/{vmid}/config",
            get(get_config).put(put_config),
        )
        .route(
            "/nodes/{node}/lxc/{vmid}/status/current",
            get(status_current),
        )
        .route(
            "/nodes/{node}/lxc/{vmid}/status/{action}",
            post(status_action),
        )
        .route("/nodes/{node}/lxc/{vmid}/interfaces", get(interfaces))
        .route("/nodes/{node}/tasks/{upid}/status", get(task_status))
        .route("/nodes/{node}/tasks/{upid}/log", get(task_log))
        .route_layer(middleware::from_fn_with_state(shared.clone(), gate))
        .fallback(not_implemented)
        .with_state(shared.clone());
    Router::new().nest("/api2/json", api).with_state(shared)
}

/// A synchronous PVE error: the message in the reason phrase (and PVE 9's body field).
fn pve_error(shared: &Shared, status: StatusCode, message: &str) -> Response {
    let mut body = json!({"data": null});
    if shared.opts.pve9_message {
        body["message"] = json!(format!("{message}\n"));
    }
    let mut resp = (status, Json(body)).into_response();
    if shared.opts.reason_phrase
        && let Ok(reason) = hyper::ext::ReasonPhrase::try_from(message.as_bytes().to_vec())
    {
        resp.extensions_mut().insert(reason);
    }
    resp
}

/// `400 Parameter verification failed.` with per-parameter messages.
fn param_error(shared: &Shared, errors: &[(&str, String)]) -> Response {
    let mut map = Map::new();
    for (k, v) in errors {
        map.insert(k.to_string(), json!(format!("{v}\n")));
    }
    let mut body = json!({"data": null, "errors": map});
    if shared.opts.pve9_message {
        body["message"] = json!("Parameter verification failed.\n");
    }
    let mut resp = (StatusCode::BAD_REQUEST, Json(body)).into_response();
    if shared.opts.reason_phrase
        && let Ok(reason) =
            hyper::ext::ReasonPhrase::try_from(b"Parameter verification failed.".to_vec())
    {
        resp.extensions_mut().insert(reason);
    }
    resp
}

fn ok(data: Value) -> Response {
    Json(json!({"data": data})).into_response()
}

async fn not_implemented(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let msg = format!(
        "Method '{} {}' not implemented",
        req.method(),
        req.uri().path()
    );
    pve_error(&shared, StatusCode::NOT_IMPLEMENTED, &msg)
}

/// Counting, latency, token check and injected failures, in front of every endpoint.
async fn gate(
    State(shared): State<Arc<Shared>>,
    matched: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let route = matched
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string());
    let route = route
        .strip_prefix("/api2/json")
        .unwrap_or(&route)
        .to_string();
    let path = req.uri().path();
    let path = path.strip_prefix("/api2/json").unwrap_or(path).to_string();
    let latency = {
        let mut st = shared.lock();
        *st.counters
            .requests
            .entry(format!("{} {route}", req.method()))
            .or_default() += 1;
        st.latency
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    if let Some(reason) = refuse_token(&shared, req.headers()) {
        // PVE delays every 401 to slow down guessing.
        tokio::time::sleep(shared.opts.auth_delay).await;
        return pve_error(&shared, StatusCode::UNAUTHORIZED, reason);
    }
    let burst = {
        let mut st = shared.lock();
        let hit = st
            .bursts
            .iter_mut()
            .find(|b| b.remaining > 0 && b.prefix.as_deref().is_none_or(|p| path.starts_with(p)));
        let out = hit.map(|b| {
            b.remaining -= 1;
            (b.status, b.message.clone())
        });
        st.bursts.retain(|b| b.remaining > 0);
        out
    };
    if let Some((status, message)) = burst {
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        return pve_error(&shared, status, &message);
    }
    next.run(req).await
}

/// `None` when the request carries this simulator's API token.
fn refuse_token(shared: &Shared, headers: &HeaderMap) -> Option<&'static str> {
    let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return Some("No ticket");
    };
    // PVE's parser: `(?:^|\s)PVEAPIToken(?:=| )([^;]*)`.
    let presented = value
        .trim()
        .strip_prefix("PVEAPIToken")
        .and_then(|r| r.strip_prefix('=').or_else(|| r.strip_prefix(' ')));
    let expected = format!("{}={}", shared.opts.token_id, shared.opts.token_secret);
    match presented {
        Some(p) if p.trim() == expected => None,
        _ => Some("Authentication failed!"),
    }
}

/// A node other than this one is not in the cluster.
#[allow(clippy::result_large_err)]
fn check_node(shared: &Shared, node: &str) -> Result<(), Response> {
    if node == shared.opts.node {
        return Ok(());
    }
    let msg = format!(
        "hostname lookup '{node}' failed - failed to get address info for: {node}: Name or service not known"
    );
    Err(pve_error(shared, StatusCode::INTERNAL_SERVER_ERROR, &msg))
}

/// Checks the node and parses the VMID, as PVE's schema does.
#[allow(clippy::result_large_err)]
fn target(shared: &Shared, node: &str, vmid: &str) -> Result<i64, Response> {
    check_node(shared, node)?;
    vmid.parse::<i64>()
        .ok()
        .filter(|v| (100..=999_999_999).contains(v))
        .ok_or_else(|| {
            param_error(
                shared,
                &[(
                    "vmid",
                    format!("type check ('integer') failed - got '{vmid}'"),
                )],
            )
        })
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "true" | "on" => Some(true),
        "0" | "no" | "false" | "off" => Some(false),
        _ => None,
    }
}

/// Rejects parameters the endpoint's schema does not have.
fn unknown_params(
    shared: &Shared,
    params: &HashMap<String, String>,
    allowed: &[&str],
) -> Option<Response> {
    let unknown: Vec<(&str, String)> = params
        .keys()
        .filter(|k| !allowed.contains(&k.as_str()))
        .map(|k| {
            (
                k.as_str(),
                "property is not defined in schema and the schema does not allow additional properties"
                    .to_string(),
            )
        })
        .collect();
    (!unknown.is_empty()).then(|| param_error(shared, &unknown))
}

async fn nextid(
    State(shared): State<Arc<Shared>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let st = shared.lock();
    if let Some(v) = q.get("vmid") {
        let Ok(vmid) = v.parse::<i64>() else {
            return param_error(
                &shared,
                &[("vmid", format!("type check ('integer') failed - got '{v}'"))],
            );
        };
        if st.cts.contains_key(&vmid) {
            return param_error(&shared, &[("vmid", format!("VM {vmid} already exists"))]);
        }
        return ok(json!(vmid.to_string()));
    }
    let free = (100i64..)
        .find(|id| !st.cts.contains_key(id))
        .unwrap_or(100);
    // A JSON string, as PVE sends it.
    ok(json!(free.to_string()))
}

async fn list(State(shared): State<Arc<Shared>>, UrlPath(node): UrlPath<String>) -> Response {
    if let Err(r) = check_node(&shared, &node) {
        return r;
    }
    let st = shared.lock();
    let rows: Vec<Value> = st
        .cts
        .iter()
        .map(|(vmid, ct)| {
            let mut row = json!({
                "vmid": vmid,
                "type": "lxc",
                "status": if ct.running { "running" } else { "stopped" },
                "name": ct.config.get("hostname").cloned().unwrap_or(Value::Null),
                "cpus": ct.config.get("cores").cloned().unwrap_or(json!(1)),
                "maxmem": ct.config.get("memory").and_then(Value::as_i64).unwrap_or(512) * 1024 * 1024,
                "uptime": ct.started_at.map(|t| t.elapsed().as_secs()).unwrap_or(0),
            });
            if let Some(tags) = ct.config.get("tags") {
                row["tags"] = tags.clone();
            }
            if let Some(lock) = ct.lock() {
                row["lock"] = json!(lock);
            }
            if ct.is_template() {
                row["template"] = json!(1);
            }
            row
        })
        .collect();
    ok(Value::Array(rows))
}

async fn get_config(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, vmid)): UrlPath<(String, String)>,
) -> Response {
    let vmid = match target(&shared, &node, &vmid) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let st = shared.lock();
    match st.cts.get(&vmid) {
        None => pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(vmid),
        ),
        Some(ct) => {
            let mut cfg = ct.config.clone();
            cfg.insert("digest".into(), json!(ct.digest));
            ok(Value::Object(cfg))
        }
    }
}

const CONFIG_KEYS: &[&str] = &[
    "cores",
    "memory",
    "swap",
    "hostname",
    "description",
    "tags",
    "onboot",
    "net0",
    "net1",
    "nameserver",
    "searchdomain",
    "cpulimit",
    "delete",
    "digest",
];
const INT_KEYS: &[&str] = &["cores", "memory", "swap", "onboot", "cpulimit"];

/// `name=eth0,bridge=vmbr0,ip=dhcp,type=veth` with a MAC made up when none is given
/// (as PVE does), keys in a stable order.
fn normalise_net(value: &str) -> Result<String, String> {
    let mut kv: BTreeMap<String, String> = BTreeMap::new();
    for part in value.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("unable to parse network options: '{part}'"))?;
        kv.insert(k.to_string(), v.to_string());
    }
    let name = kv
        .remove("name")
        .ok_or_else(|| "missing property - 'name'".to_string())?;
    kv.entry("hwaddr".into()).or_insert_with(random_mac);
    let mut out = vec![format!("name={name}")];
    out.extend(kv.into_iter().map(|(k, v)| format!("{k}={v}")));
    Ok(out.join(","))
}

async fn put_config(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, vmid)): UrlPath<(String, String)>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    let vmid = match target(&shared, &node, &vmid) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(r) = unknown_params(&shared, &params, CONFIG_KEYS) {
        return r;
    }
    let mut errors = Vec::new();
    let mut updates: Vec<(String, Value)> = Vec::new();
    for (k, v) in &params {
        if k == "delete" || k == "digest" {
            continue;
        }
        if INT_KEYS.contains(&k.as_str()) {
            match v.parse::<i64>() {
                Ok(n) => updates.push((k.clone(), json!(n))),
                Err(_) => errors.push((
                    k.as_str(),
                    format!("type check ('integer') failed - got '{v}'"),
                )),
            }
        } else if k.starts_with("net") {
            match normalise_net(v) {
                Ok(n) => updates.push((k.clone(), json!(n))),
                Err(e) => errors.push((k.as_str(), e)),
            }
        } else if k == "tags" {
            let tags: Vec<&str> = v.split([';', ',', ' ']).filter(|t| !t.is_empty()).collect();
            updates.push((k.clone(), json!(tags.join(";"))));
        } else {
            updates.push((k.clone(), json!(v)));
        }
    }
    if !errors.is_empty() {
        return param_error(&shared, &errors);
    }
    let mut st = shared.lock();
    let Some(ct) = st.cts.get_mut(&vmid) else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(vmid),
        );
    };
    // Config writes check the lock synchronously, under the config flock.
    if let Some(lock) = ct.lock() {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("CT is locked ({lock})"),
        );
    }
    if let Some(d) = params.get("digest")
        && *d != ct.digest
    {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            "detected modified configuration - file changed by other user? Try again.",
        );
    }
    for (k, v) in updates {
        ct.config.insert(k, v);
    }
    if let Some(del) = params.get("delete") {
        for k in del.split([',', ';', ' ']).filter(|k| !k.is_empty()) {
            ct.config.remove(k);
        }
    }
    ct.touch();
    ok(Value::Null)
}

async fn status_current(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, vmid)): UrlPath<(String, String)>,
) -> Response {
    let vmid = match target(&shared, &node, &vmid) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let st = shared.lock();
    let Some(ct) = st.cts.get(&vmid) else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(vmid),
        );
    };
    let mem = ct
        .config
        .get("memory")
        .and_then(Value::as_i64)
        .unwrap_or(512);
    let mut s = json!({
        "vmid": vmid,
        "status": if ct.running { "running" } else { "stopped" },
        "name": ct.config.get("hostname").cloned().unwrap_or(Value::Null),
        "uptime": ct.started_at.filter(|_| ct.running).map(|t| t.elapsed().as_secs()).unwrap_or(0),
        "cpus": ct.config.get("cores").cloned().unwrap_or(json!(1)),
        "maxmem": mem * 1024 * 1024,
        "maxswap": ct.config.get("swap").and_then(Value::as_i64).unwrap_or(512) * 1024 * 1024,
        "maxdisk": 8u64 * 1024 * 1024 * 1024,
        "ha": {"managed": 0},
    });
    if let Some(tags) = ct.config.get("tags") {
        s["tags"] = tags.clone();
    }
    if let Some(lock) = ct.lock() {
        s["lock"] = json!(lock);
    }
    if ct.is_template() {
        s["template"] = json!(1);
    }
    ok(s)
}

async fn interfaces(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, vmid)): UrlPath<(String, String)>,
) -> Response {
    let vmid = match target(&shared, &node, &vmid) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let st = shared.lock();
    let Some(ct) = st.cts.get(&vmid) else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(vmid),
        );
    };
    if !ct.running {
        // PVE::LXC::get_interfaces returns undef for a stopped container.
        return ok(Value::Null);
    }
    let mac = ct
        .config
        .get("net0")
        .and_then(Value::as_str)
        .and_then(|n| n.split(',').find_map(|kv| kv.strip_prefix("hwaddr=")))
        .unwrap_or("BC:24:11:00:00:00")
        .to_string();
    let lo = json!({
        "name": "lo", "hwaddr": "00:00:00:00:00:00", "hardware-address": "00:00:00:00:00:00",
        "inet": "127.0.0.1/8", "inet6": "::1/128",
        "ip-addresses": [
            {"ip-address-type": "inet", "ip-address": "127.0.0.1", "prefix": 8},
            {"ip-address-type": "inet6", "ip-address": "::1", "prefix": 128},
        ],
    });
    let link_local = "fe80::be24:11ff:fe00:1";
    let mut eth0 = json!({
        "name": "eth0", "hwaddr": mac, "hardware-address": mac,
        "inet6": format!("{link_local}/64"),
        "ip-addresses": [{"ip-address-type": "inet6", "ip-address": link_local, "prefix": 64}],
    });
    let leased = ct.started_at.is_some_and(|t| t.elapsed() >= st.ip_delay);
    if leased {
        let ip = shared.ip(ct.host);
        eth0["inet"] = json!(format!("{ip}/24"));
        eth0["ip-addresses"] = json!([
            {"ip-address-type": "inet", "ip-address": ip.to_string(), "prefix": 24},
            {"ip-address-type": "inet6", "ip-address": link_local, "prefix": 64},
        ]);
    }
    ok(json!([lo, eth0]))
}

// ----- tasks -----------------------------------------------------------------------

/// Registers a worker task and runs `body` after the task delay (and any hold). The
/// task's exit status is `OK` or the error `body` returns.
fn spawn_task<F>(shared: &Arc<Shared>, st: &mut StateInner, kind: &str, id: &str, body: F) -> String
where
    F: std::future::Future<Output = Result<Vec<String>, String>> + Send + 'static,
{
    st.next_pid += 1 + fastrand::u32(..16);
    let pid = st.next_pid;
    let pstart = 0x01C4_0000 + fastrand::u32(..0xFFFF);
    let starttime = now_epoch();
    let upid = format!(
        "UPID:{}:{pid:08X}:{pstart:08X}:{starttime:08X}:{kind}:{id}:{}:",
        shared.opts.node, shared.opts.token_id
    );
    st.tasks.insert(
        upid.clone(),
        Task {
            upid: upid.clone(),
            kind: kind.to_string(),
            id: id.to_string(),
            pid,
            pstart,
            starttime,
            exitstatus: None,
            log: Vec::new(),
        },
    );
    *st.counters.tasks.entry(kind.to_string()).or_default() += 1;
    let delay = st.task_delay;
    let shared = shared.clone();
    let kind = kind.to_string();
    let key = upid.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let mut released = shared.released.subscribe();
        while shared.lock().held.contains(&kind) {
            if released.changed().await.is_err() {
                break;
            }
        }
        let result = body.await;
        let mut st = shared.lock();
        if let Some(task) = st.tasks.get_mut(&key) {
            match result {
                Ok(lines) => {
                    task.log.extend(lines);
                    task.log.push("TASK OK".into());
                    task.exitstatus = Some("OK".into());
                }
                Err(e) => {
                    task.log.push(format!("TASK ERROR: {e}"));
                    task.exitstatus = Some(e);
                }
            }
        }
    });
    upid
}

fn take_injected(st: &mut StateInner, kind: &str) -> Option<String> {
    st.fail_next.get_mut(kind).and_then(VecDeque::pop_front)
}

async fn clone(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, vmid)): UrlPath<(String, String)>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    let source = match target(&shared, &node, &vmid) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let allowed = [
        "newid",
        "hostname",
        "description",
        "pool",
        "snapname",
        "storage",
        "full",
        "target",
        "bwlimit",
    ];
    if let Some(r) = unknown_params(&shared, &params, &allowed) {
        return r;
    }
    let Some(newid_raw) = params.get("newid") else {
        return param_error(
            &shared,
            &[("newid", "property is missing and it is not optional".into())],
        );
    };
    let Some(newid) = newid_raw
        .parse::<i64>()
        .ok()
        .filter(|v| (100..=999_999_999).contains(v))
    else {
        return param_error(
            &shared,
            &[(
                "newid",
                format!("type check ('integer') failed - got '{newid_raw}'"),
            )],
        );
    };
    let full = match params.get("full").map(|v| parse_bool(v)) {
        None => None,
        Some(Some(b)) => Some(b),
        Some(None) => {
            return param_error(&shared, &[("full", "type check ('boolean') failed".into())]);
        }
    };
    let mut st = shared.lock();
    let Some(src) = st.cts.get(&source) else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(source),
        );
    };
    if st.cts.contains_key(&newid) {
        let msg = format!("CT {newid} already exists on node '{}'", shared.opts.node);
        return pve_error(&shared, StatusCode::INTERNAL_SERVER_ERROR, &msg);
    }
    if let Some(lock) = src.lock() {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("CT is locked ({lock})"),
        );
    }
    // `full` defaults to true for containers and false for templates.
    let full = full.unwrap_or(!src.is_template());
    if !full && params.contains_key("storage") {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            "parameter 'storage' not allowed for linked clones",
        );
    }
    if !full && !src.is_template() {
        let msg =
            format!("Linked clone feature for 'local-lvm:vm-{source}-disk-0' is not available");
        return pve_error(&shared, StatusCode::INTERNAL_SERVER_ERROR, &msg);
    }
    // The new config appears at once, locked `create`; the source is locked `disk`.
    let mut config = src.config.clone();
    config.remove("template");
    config.remove("lock");
    config.insert("lock".into(), json!("create"));
    config.insert(
        "rootfs".into(),
        json!(format!("local-lvm:vm-{newid}-disk-0,size=8G")),
    );
    if let Some(h) = params.get("hostname") {
        config.insert("hostname".into(), json!(h));
    }
    if let Some(d) = params.get("description") {
        config.insert("description".into(), json!(d));
    }
    if let Some(net) = config.get("net0").and_then(Value::as_str) {
        // Clone always gives each netN a new MAC.
        let without_mac: Vec<&str> = net
            .split(',')
            .filter(|kv| !kv.starts_with("hwaddr="))
            .collect();
        if let Ok(n) = normalise_net(&without_mac.join(",")) {
            config.insert("net0".into(), json!(n));
        }
    }
    let host = next_host(&mut st);
    let mut ct = Ct {
        config,
        digest: String::new(),
        running: false,
        started_at: None,
        host,
        agent: None,
    };
    ct.touch();
    st.cts.insert(newid, ct);
    if let Some(src) = st.cts.get_mut(&source) {
        src.set_lock(Some("disk"));
    }
    *st.counters.clones.entry(newid).or_default() += 1;
    let injected = take_injected(&mut st, "vzclone");
    let task_shared = shared.clone();
    let upid = spawn_task(
        &shared,
        &mut st,
        "vzclone",
        &source.to_string(),
        async move {
            let mut st = task_shared.lock();
            if let Some(src) = st.cts.get_mut(&source)
                && src.lock().as_deref() == Some("disk")
            {
                src.set_lock(None);
            }
            if let Some(exit) = injected {
                // A failed clone removes what it created.
                st.cts.remove(&newid);
                return Err(exit);
            }
            match st.cts.get_mut(&newid) {
                Some(ct) => {
                    ct.set_lock(None);
                    Ok(vec![
                        format!(
                            "create full clone of mountpoint rootfs (local-lvm:base-{source}-disk-0)"
                        ),
                        format!("  Logical volume \"vm-{newid}-disk-0\" created."),
                    ])
                }
                None => Err(format!(
                    "clone failed: CT {newid} vanished during the clone"
                )),
            }
        },
    );
    ok(json!(upid))
}

async fn status_action(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, vmid, action)): UrlPath<(String, String, String)>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    let vmid = match target(&shared, &node, &vmid) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let mut st = shared.lock();
    let Some(ct) = st.cts.get(&vmid) else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(vmid),
        );
    };
    let running = ct.running;
    let is_template = ct.is_template();
    let (kind, allowed): (&str, &[&str]) = match action.as_str() {
        "start" => ("vzstart", &["skiplock", "debug"]),
        "stop" => ("vzstop", &["skiplock", "overrule-shutdown"]),
        "shutdown" => ("vzshutdown", &["timeout", "forceStop"]),
        other => {
            let msg =
                format!("Method 'POST /nodes/{node}/lxc/{vmid}/status/{other}' not implemented");
            return pve_error(&shared, StatusCode::NOT_IMPLEMENTED, &msg);
        }
    };
    if let Some(r) = unknown_params(&shared, &params, allowed) {
        return r;
    }
    // The checks PVE makes before forking the worker.
    if kind == "vzstart" {
        if is_template {
            return pve_error(
                &shared,
                StatusCode::INTERNAL_SERVER_ERROR,
                "you can't start a CT if it's a template",
            );
        }
        if running {
            return pve_error(
                &shared,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("CT {vmid} already running"),
            );
        }
    } else if !running {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("CT {vmid} not running"),
        );
    }
    let injected = take_injected(&mut st, kind);
    let timeout = params
        .get("timeout")
        .and_then(|t| t.parse::<u64>().ok())
        .unwrap_or(60);
    let force = params
        .get("forceStop")
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    let task_shared = shared.clone();
    let upid = match kind {
        "vzstart" => spawn_task(&shared, &mut st, kind, &vmid.to_string(), async move {
            run_start(&task_shared, vmid, injected)
        }),
        "vzstop" => spawn_task(&shared, &mut st, kind, &vmid.to_string(), async move {
            run_stop(&task_shared, vmid, injected, None).await
        }),
        _ => spawn_task(&shared, &mut st, kind, &vmid.to_string(), async move {
            run_stop(
                &task_shared,
                vmid,
                injected,
                Some((Duration::from_secs(timeout), force)),
            )
            .await
        }),
    };
    ok(json!(upid))
}

/// Inside the `vzstart` worker: the lock check, then the container comes up and runs
/// its agent.
fn run_start(
    shared: &Arc<Shared>,
    vmid: i64,
    injected: Option<String>,
) -> Result<Vec<String>, String> {
    let mut st = shared.lock();
    let closed = st.closed;
    let Some(ct) = st.cts.get_mut(&vmid) else {
        return Err(shared.conf_missing(vmid));
    };
    if let Some(lock) = ct.lock().filter(|l| l != "mounted") {
        return Err(format!("CT is locked ({lock})"));
    }
    if let Some(exit) = injected {
        return Err(exit);
    }
    if ct.running {
        return Err(format!("CT {vmid} already running"));
    }
    if shared.opts.run_agents && !closed {
        let ip = shared.ip(ct.host);
        match spawn_agent(shared, vmid, ip) {
            Ok(child) => ct.agent = Some(child),
            Err(e) => return Err(format!("startup for container '{vmid}' failed: {e}")),
        }
    }
    ct.running = true;
    ct.started_at = Some(Instant::now());
    *st.counters.starts.entry(vmid).or_default() += 1;
    Ok(vec![format!("starting CT {vmid}")])
}

/// Inside the `vzstop` / `vzshutdown` worker. A shutdown gives the agent SIGTERM and
/// `timeout` to exit (it stops its game gracefully), then kills it if `force`.
async fn run_stop(
    shared: &Arc<Shared>,
    vmid: i64,
    injected: Option<String>,
    shutdown: Option<(Duration, bool)>,
) -> Result<Vec<String>, String> {
    let agent = {
        let mut st = shared.lock();
        let Some(ct) = st.cts.get_mut(&vmid) else {
            return Err(shared.conf_missing(vmid));
        };
        if let Some(lock) = ct.lock().filter(|l| l != "mounted") {
            return Err(format!("CT is locked ({lock})"));
        }
        if let Some(exit) = injected {
            return Err(exit);
        }
        if !ct.running {
            return Err(format!("CT {vmid} not running"));
        }
        ct.agent.take()
    };
    let dir = shared.ct_dir(vmid);
    let mut lines = Vec::new();
    if let Some(mut child) = agent {
        match shutdown {
            Some((timeout, force)) => {
                // SAFETY: kill(2) on a pid we spawned and have not reaped.
                unsafe {
                    libc::kill(child.id() as i32, libc::SIGTERM);
                }
                let deadline = Instant::now() + timeout;
                let mut exited = false;
                while Instant::now() < deadline {
                    if let Ok(Some(_)) = child.try_wait() {
                        exited = true;
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !exited {
                    if !force {
                        // Put it back: the container is still running.
                        if let Some(ct) = shared.lock().cts.get_mut(&vmid) {
                            ct.agent = Some(child);
                        }
                        return Err("shutdown timeout exceeded".into());
                    }
                    lines.push("shutdown timeout exceeded, forcing stop".into());
                }
                let _ = tokio::task::spawn_blocking(move || kill_agent(child, &dir)).await;
            }
            None => {
                let _ = tokio::task::spawn_blocking(move || kill_agent(child, &dir)).await;
            }
        }
    }
    let mut st = shared.lock();
    if let Some(ct) = st.cts.get_mut(&vmid) {
        ct.running = false;
        ct.started_at = None;
    }
    *st.counters.stops.entry(vmid).or_default() += 1;
    lines.push(format!("CT {vmid} stopped"));
    Ok(lines)
}

async fn destroy(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, vmid)): UrlPath<(String, String)>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let vmid = match target(&shared, &node, &vmid) {
        Ok(v) => v,
        Err(r) => return r,
    };
    if let Some(r) = unknown_params(
        &shared,
        &params,
        &["purge", "force", "destroy-unreferenced-disks"],
    ) {
        return r;
    }
    let force = params
        .get("force")
        .and_then(|v| parse_bool(v))
        .unwrap_or(false);
    let mut st = shared.lock();
    let Some(ct) = st.cts.get_mut(&vmid) else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(vmid),
        );
    };
    // Delete checks the lock synchronously.
    if let Some(lock) = ct.lock() {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("CT is locked ({lock})"),
        );
    }
    if ct.running && !force {
        let msg = format!("unable to destroy CT {vmid} - container is running");
        return pve_error(&shared, StatusCode::INTERNAL_SERVER_ERROR, &msg);
    }
    ct.set_lock(Some("destroyed"));
    let injected = take_injected(&mut st, "vzdestroy");
    let task_shared = shared.clone();
    let upid = spawn_task(
        &shared,
        &mut st,
        "vzdestroy",
        &vmid.to_string(),
        async move {
            let agent = {
                let mut st = task_shared.lock();
                let Some(ct) = st.cts.get_mut(&vmid) else {
                    return Err(task_shared.conf_missing(vmid));
                };
                if let Some(exit) = injected {
                    ct.set_lock(None);
                    return Err(exit);
                }
                ct.agent.take()
            };
            let dir = task_shared.ct_dir(vmid);
            if let Some(child) = agent {
                let d = dir.clone();
                let _ = tokio::task::spawn_blocking(move || kill_agent(child, &d)).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            let mut st = task_shared.lock();
            st.cts.remove(&vmid);
            *st.counters.destroys.entry(vmid).or_default() += 1;
            Ok(vec![format!(
                "  Logical volume \"vm-{vmid}-disk-0\" successfully removed"
            )])
        },
    );
    ok(json!(upid))
}

// ----- backups ---------------------------------------------------------------------

fn sorted(params: &HashMap<String, String>) -> BTreeMap<String, String> {
    params.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
}

fn run_tar(args: &[&std::ffi::OsStr]) -> Result<(), String> {
    let out = Command::new("tar")
        .args(args)
        .output()
        .map_err(|e| format!("tar: {e}"))?;
    // GNU tar exits 1 when a file changed while it was read (the agent keeps logging).
    if out.status.success() || out.status.code() == Some(1) {
        Ok(())
    } else {
        Err(format!(
            "tar failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `POST /nodes/{node}/vzdump`: the container holds lock `backup` while the task runs;
/// the task tars its "disk" into a volume `<storage>:backup/ct/<vmid>/<time>`.
async fn vzdump(
    State(shared): State<Arc<Shared>>,
    UrlPath(node): UrlPath<String>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_node(&shared, &node) {
        return r;
    }
    let allowed = [
        "vmid",
        "storage",
        "mode",
        "notes-template",
        "remove",
        "protected",
        "compress",
    ];
    if let Some(r) = unknown_params(&shared, &params, &allowed) {
        return r;
    }
    let Some(vmid) = params.get("vmid").and_then(|v| v.parse::<i64>().ok()) else {
        return param_error(&shared, &[("vmid", "property is missing".into())]);
    };
    let Some(storage) = params.get("storage").cloned() else {
        return param_error(&shared, &[("storage", "property is missing".into())]);
    };
    if let Some(m) = params.get("mode")
        && !["snapshot", "suspend", "stop"].contains(&m.as_str())
    {
        return param_error(
            &shared,
            &[(
                "mode",
                format!(
                    "value '{m}' does not have a value in the enumeration 'snapshot, suspend, stop'"
                ),
            )],
        );
    }
    let mut st = shared.lock();
    st.vzdump_calls.push(sorted(&params));
    let Some(ct) = st.cts.get_mut(&vmid) else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &shared.conf_missing(vmid),
        );
    };
    let locked = ct.lock();
    if locked.is_none() {
        ct.set_lock(Some("backup"));
    }
    let hostname = ct
        .config
        .get("hostname")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let notes = params
        .get("notes-template")
        .cloned()
        .unwrap_or_default()
        .replace("{{guestname}}", &hostname)
        .replace("{{vmid}}", &vmid.to_string());
    let injected = take_injected(&mut st, "vzdump");
    let task_shared = shared.clone();
    let upid = spawn_task(&shared, &mut st, "vzdump", &vmid.to_string(), async move {
        if let Some(lock) = locked {
            return Err(format!("CT is locked ({lock})"));
        }
        let unlock = |shared: &Shared| {
            if let Some(ct) = shared.lock().cts.get_mut(&vmid)
                && ct.lock().as_deref() == Some("backup")
            {
                ct.set_lock(None);
            }
        };
        if let Some(exit) = injected {
            unlock(&task_shared);
            return Err(exit);
        }
        let dumps = task_shared.dir.join("dumps");
        let n = fastrand::u64(..);
        let archive = dumps.join(format!("{vmid}-{n:016x}.tar"));
        let src = task_shared.ct_dir(vmid);
        let a2 = archive.clone();
        let made = tokio::task::spawn_blocking(move || {
            std::fs::create_dir_all(a2.parent().unwrap()).map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&src).map_err(|e| e.to_string())?;
            run_tar(&[
                "-cf".as_ref(),
                a2.as_os_str(),
                "-C".as_ref(),
                src.as_os_str(),
                ".".as_ref(),
            ])
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        if let Err(e) = made {
            unlock(&task_shared);
            return Err(format!("command 'tar' failed: {e}"));
        }
        let size = std::fs::metadata(&archive).map(|m| m.len()).unwrap_or(0);
        let mut st = task_shared.lock();
        let config = st
            .cts
            .get(&vmid)
            .map(|c| {
                let mut c = c.config.clone();
                c.remove("lock");
                c
            })
            .unwrap_or_default();
        let mut ctime = now_epoch();
        let volid = loop {
            let v = format!(
                "{storage}:backup/ct/{vmid}/{}",
                zlh::util::format_ts(ctime as i64 * 1000)
            );
            if !st.dumps.iter().any(|d| d.volid == v) {
                break v;
            }
            ctime += 1;
        };
        st.dumps.push(Dump {
            volid: volid.clone(),
            storage,
            vmid,
            ctime,
            size,
            notes,
            archive,
            config,
        });
        drop(st);
        unlock(&task_shared);
        Ok(vec![
            format!("INFO: Starting Backup of VM {vmid} (lxc)"),
            format!(
                "INFO: creating Proxmox Backup Server archive '{}'",
                volid.split_once(":backup/").map(|(_, r)| r).unwrap_or("")
            ),
            format!("INFO: Finished Backup of VM {vmid}"),
        ])
    });
    ok(json!(upid))
}

async fn storage_content(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, storage)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_node(&shared, &node) {
        return r;
    }
    let vmid = q.get("vmid").and_then(|v| v.parse::<i64>().ok());
    let st = shared.lock();
    let list: Vec<Value> = st
        .dumps
        .iter()
        .filter(|d| d.storage == storage && vmid.is_none_or(|v| v == d.vmid))
        .map(|d| {
            json!({
                "volid": d.volid, "ctime": d.ctime, "size": d.size, "notes": d.notes,
                "vmid": d.vmid, "format": "pbs-ct", "subtype": "lxc", "content": "backup",
                "protected": 0
            })
        })
        .collect();
    ok(json!(list))
}

async fn delete_volume(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, storage, volume)): UrlPath<(String, String, String)>,
) -> Response {
    if let Err(r) = check_node(&shared, &node) {
        return r;
    }
    let mut st = shared.lock();
    let Some(i) = st
        .dumps
        .iter()
        .position(|d| d.storage == storage && d.volid == volume)
    else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("volume '{volume}' does not exist"),
        );
    };
    let d = st.dumps.remove(i);
    let _ = std::fs::remove_file(&d.archive);
    let upid = spawn_task(&shared, &mut st, "imgdel", "", async move {
        Ok(vec![format!("removed volume '{}'", d.volid)])
    });
    ok(json!(upid))
}

/// `POST /nodes/{node}/lxc` with `restore=1`: the container's "disk" and config are
/// replaced by the backup's, with the config keys given in the request (`hostname`,
/// `description`, `tags`) written over the backup's, and the root disk allocated on
/// `storage` (PVE's default: `local`). A new VMID is reserved at once with an empty
/// config locked `create` (as PVE does); `unique=1` gives `net0` a new MAC. A failed
/// task (fault injection) leaves an existing container as it was and removes a new
/// one.
async fn create_ct(
    State(shared): State<Arc<Shared>>,
    UrlPath(node): UrlPath<String>,
    Form(params): Form<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_node(&shared, &node) {
        return r;
    }
    let allowed = [
        "vmid",
        "ostemplate",
        "restore",
        "force",
        "unique",
        "storage",
        "start",
        "pool",
        "hostname",
        "description",
        "tags",
    ];
    if let Some(r) = unknown_params(&shared, &params, &allowed) {
        return r;
    }
    let mut st = shared.lock();
    st.restore_calls.push(sorted(&params));
    if params.get("restore").and_then(|v| parse_bool(v)) != Some(true) {
        return pve_error(
            &shared,
            StatusCode::NOT_IMPLEMENTED,
            "creating containers from templates is not simulated",
        );
    }
    let Some(vmid) = params.get("vmid").and_then(|v| v.parse::<i64>().ok()) else {
        return param_error(&shared, &[("vmid", "property is missing".into())]);
    };
    let volid = params.get("ostemplate").cloned().unwrap_or_default();
    let Some(dump) = st.dumps.iter().find(|d| d.volid == volid).cloned() else {
        return pve_error(
            &shared,
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("volume '{volid}' does not exist"),
        );
    };
    let force = params.get("force").and_then(|v| parse_bool(v)) == Some(true);
    let unique = params.get("unique").and_then(|v| parse_bool(v)) == Some(true);
    if let Some(ct) = st.cts.get_mut(&vmid) {
        if !force {
            let msg = format!("CT {vmid} already exists on node '{}'", shared.opts.node);
            return pve_error(&shared, StatusCode::INTERNAL_SERVER_ERROR, &msg);
        }
        if let Some(lock) = ct.lock() {
            return pve_error(
                &shared,
                StatusCode::INTERNAL_SERVER_ERROR,
                &format!("CT is locked ({lock})"),
            );
        }
        if ct.running {
            let msg = format!("unable to restore CT {vmid} - container is running");
            return pve_error(&shared, StatusCode::INTERNAL_SERVER_ERROR, &msg);
        }
        ct.set_lock(Some("create"));
    }
    let existed = st.cts.contains_key(&vmid);
    if !existed {
        let host = next_host(&mut st);
        let mut ct = Ct {
            config: Map::new(),
            digest: String::new(),
            running: false,
            started_at: None,
            host,
            agent: None,
        };
        ct.set_lock(Some("create"));
        st.cts.insert(vmid, ct);
    }
    let overrides: Vec<(String, String)> = ["hostname", "description", "tags"]
        .iter()
        .filter_map(|k| params.get(*k).map(|v| (k.to_string(), v.clone())))
        .collect();
    let storage = params
        .get("storage")
        .cloned()
        .unwrap_or_else(|| "local".into());
    let injected = take_injected(&mut st, "vzrestore");
    let after_wipe = take_injected(&mut st, "vzrestore-after-wipe");
    let task_shared = shared.clone();
    let upid = spawn_task(
        &shared,
        &mut st,
        "vzrestore",
        &vmid.to_string(),
        async move {
            let unlock = |shared: &Shared| {
                let mut st = shared.lock();
                if !existed {
                    // A failed restore into a new VMID removes what it reserved.
                    st.cts.remove(&vmid);
                } else if let Some(ct) = st.cts.get_mut(&vmid) {
                    ct.set_lock(None);
                }
            };
            if let Some(exit) = injected {
                unlock(&task_shared);
                return Err(exit);
            }
            let dir = task_shared.ct_dir(vmid);
            let archive = dump.archive.clone();
            let d2 = dir.clone();
            let wipe_only = after_wipe.is_some();
            let done = tokio::task::spawn_blocking(move || {
                let _ = std::fs::remove_dir_all(&d2);
                std::fs::create_dir_all(&d2).map_err(|e| e.to_string())?;
                if wipe_only {
                    return Ok(());
                }
                run_tar(&[
                    "-xf".as_ref(),
                    archive.as_os_str(),
                    "-C".as_ref(),
                    d2.as_os_str(),
                ])
            })
            .await
            .unwrap_or_else(|e| Err(e.to_string()));
            if let Err(e) = done {
                unlock(&task_shared);
                return Err(format!("unable to restore CT {vmid}: {e}"));
            }
            if let Some(exit) = after_wipe {
                unlock(&task_shared);
                return Err(exit);
            }
            let mut st = task_shared.lock();
            let mut config = dump.config.clone();
            if unique && let Some(net) = config.get("net0").and_then(Value::as_str) {
                let without: Vec<&str> = net
                    .split(',')
                    .filter(|kv| !kv.starts_with("hwaddr="))
                    .collect();
                let n = format!("{},hwaddr={}", without.join(","), random_mac());
                config.insert("net0".into(), json!(n));
            }
            for (k, v) in overrides {
                config.insert(k, json!(v));
            }
            config.insert(
                "rootfs".into(),
                json!(format!("{storage}:vm-{vmid}-disk-0,size=8G")),
            );
            let host = match st.cts.get(&vmid) {
                Some(ct) => ct.host,
                None => next_host(&mut st),
            };
            let mut ct = Ct {
                config,
                digest: String::new(),
                running: false,
                started_at: None,
                host,
                agent: None,
            };
            ct.touch();
            st.cts.insert(vmid, ct);
            Ok(vec![format!("restoring '{}' to CT {vmid}", dump.volid)])
        },
    );
    ok(json!(upid))
}

/// Looks a task up by its exact UPID, telling a malformed one from an unknown one.
#[allow(clippy::result_large_err)]
fn find_task<'a>(shared: &Shared, st: &'a StateInner, upid: &str) -> Result<&'a Task, Response> {
    if let Some(t) = st.tasks.get(upid) {
        return Ok(t);
    }
    let well_formed =
        upid.starts_with("UPID:") && upid.ends_with(':') && upid.split(':').count() == 9;
    let msg = if well_formed {
        "no such task"
    } else {
        "unable to parse worker upid"
    };
    Err(param_error(shared, &[("upid", msg.to_string())]))
}

async fn task_status(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, upid)): UrlPath<(String, String)>,
) -> Response {
    if let Err(r) = check_node(&shared, &node) {
        return r;
    }
    let st = shared.lock();
    let task = match find_task(&shared, &st, &upid) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let mut s = json!({
        "upid": task.upid,
        "node": shared.opts.node,
        "pid": task.pid,
        "pstart": task.pstart,
        "starttime": task.starttime,
        "type": task.kind,
        "id": task.id,
        "user": shared.opts.token_id,
        "status": if task.exitstatus.is_some() { "stopped" } else { "running" },
    });
    if let Some(exit) = &task.exitstatus {
        s["exitstatus"] = json!(exit);
    }
    ok(s)
}

async fn task_log(
    State(shared): State<Arc<Shared>>,
    UrlPath((node, upid)): UrlPath<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = check_node(&shared, &node) {
        return r;
    }
    let st = shared.lock();
    let task = match find_task(&shared, &st, &upid) {
        Ok(t) => t,
        Err(r) => return r,
    };
    let start = q
        .get("start")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(0);
    let limit = q
        .get("limit")
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(50);
    let lines: Vec<Value> = task
        .log
        .iter()
        .enumerate()
        .skip(start)
        .take(limit)
        .map(|(i, t)| json!({"n": i + 1, "t": t}))
        .collect();
    Json(json!({"data": lines, "total": task.log.len()})).into_response()
}

// ----- agents ----------------------------------------------------------------------

/// Runs the container's `zlh agent` on `ip:18888`, in its own process group, with the
/// base template's bootstrap token; its directory is the container's "disk".
fn spawn_agent(shared: &Shared, vmid: i64, ip: Ipv4Addr) -> std::io::Result<Child> {
    let dir = shared.ct_dir(vmid);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(shared.dir.join(format!("ct-{vmid}.log")))?;
    let mut cmd = match &shared.opts.agent_binary {
        Some(b) => Command::new(b),
        None => Command::new(super::BIN.as_str()),
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("ZLH_") {
            cmd.env_remove(k);
        }
    }
    cmd.env("ZLH_LOG", &shared.opts.agent_log)
        .env("ZLH_AGENT_TOKEN", &shared.opts.bootstrap_token)
        .args([
            "agent",
            "--listen",
            &format!("{ip}:{AGENT_PORT}"),
            "--crash-backoff",
            "100ms,200ms,300ms",
            "--stable-uptime",
            "20s",
            "--stop-timeout",
            "3s",
            "--term-timeout",
            "2s",
            "--probe-interval",
            &shared.opts.agent_probe_interval,
            "--dir",
        ])
        .arg(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .process_group(0);
    // SAFETY: prctl in the child before exec; async-signal-safe. If the simulator's
    // thread dies without cleaning up, its agents die with it.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    cmd.spawn()
}

/// Kills an agent and its game (the game has a process group of its own) and reaps it.
fn kill_agent(mut child: Child, dir: &Path) {
    // SAFETY: kill(2) on the process group of a child we spawned and have not reaped.
    unsafe {
        libc::kill(-(child.id() as i32), libc::SIGKILL);
    }
    let _ = child.kill();
    let _ = child.wait();
    if let Some(pid) = std::fs::read_to_string(dir.join("game.pid"))
        .ok()
        .and_then(|p| p.trim().parse::<i32>().ok())
        .filter(|p| *p > 1)
    {
        // SAFETY: as above; the game dies with its agent anyway (parent-death signal).
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
}
