//! The Proxmox runtime and its API client against the PVE simulator
//! (tests/support/pve_sim.rs): real HTTP, real UPIDs and task polling, the reason-phrase
//! error channel, and a real `zlh agent` in every started container.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::fileserver::{self, sha256_hex};
use crate::support::pve_sim::{AGENT_PORT, PveSim, SimOptions};
use crate::support::{free_port, wait_for_async};
use serde_json::Value;
use zlh::agent::client::{AgentClient, AgentClientError};
use zlh::agent::{AgentState, ConfigPayload};
use zlh::runtime::proxmox::tls::Fingerprint;
use zlh::runtime::proxmox::{
    Cause, CloneParams, ProxmoxConfig, ProxmoxRuntime, PveClient, PveError, Upid,
};
use zlh::runtime::{ContainerSpec, Created, Runtime, RuntimeError};

fn spec(server_id: i64, vmid: i64) -> ContainerSpec {
    ContainerSpec {
        server_id,
        name: format!("mc-test-{server_id}"),
        vmid,
        cores: 2,
        memory_mb: 2048,
        agent_port: AGENT_PORT,
        agent_token: format!("own-token-of-server-{server_id}"),
    }
}

fn runtime(sim: &PveSim) -> ProxmoxRuntime {
    ProxmoxRuntime::new(sim.proxmox_config()).expect("a valid simulator config")
}

fn runtime_with(sim: &PveSim, f: impl FnOnce(&mut ProxmoxConfig)) -> ProxmoxRuntime {
    let mut cfg = sim.proxmox_config();
    f(&mut cfg);
    ProxmoxRuntime::new(cfg).expect("a valid simulator config")
}

fn client(sim: &PveSim) -> PveClient {
    PveClient::new(&sim.proxmox_config()).expect("a valid simulator config")
}

fn linked(newid: i64) -> CloneParams {
    CloneParams {
        newid,
        hostname: format!("ct-{newid}"),
        description: format!("test clone {newid}"),
        full: false,
        storage: None,
    }
}

async fn wait_health(url: &str, token: &str) -> AgentClient {
    let agent = AgentClient::new(url, token, "simulated container's agent");
    let probe = agent.clone();
    wait_for_async(
        "the container's agent to answer /health",
        Duration::from_secs(20),
        || {
            let c = probe.clone();
            async move { c.health().await.ok() }
        },
    )
    .await;
    agent
}

fn is_transient_with(r: Result<impl std::fmt::Debug, RuntimeError>, text: &str) -> String {
    match r {
        Err(RuntimeError::Transient(m)) => {
            assert!(m.contains(text), "expected '{text}' in: {m}");
            m
        }
        other => panic!("expected Transient containing '{text}', got {other:?}"),
    }
}

fn is_fatal_with(r: Result<impl std::fmt::Debug, RuntimeError>, text: &str) -> String {
    match r {
        Err(RuntimeError::Fatal(m)) => {
            assert!(m.contains(text), "expected '{text}' in: {m}");
            m
        }
        other => panic!("expected Fatal containing '{text}', got {other:?}"),
    }
}

// ----- the client ----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_reads_errors_from_the_reason_phrase() {
    let sim = PveSim::start();
    let c = client(&sim);

    let e = c.config(4242).await.unwrap_err();
    assert_eq!(e.cause(), Cause::DoesNotExist, "{e:?}");
    assert_eq!(
        e.to_string(),
        "reading the config of CT 4242 on node pve1: \
         Configuration file 'nodes/pve1/lxc/4242.conf' does not exist"
    );

    sim.lock_ct(900, "backup");
    let e = c
        .update_config(900, &[("cores", "2".into())])
        .await
        .unwrap_err();
    match &e {
        PveError::Locked { lock, message, .. } => {
            assert_eq!(lock, "backup");
            assert_eq!(message, "CT is locked (backup)");
        }
        other => panic!("{other:?}"),
    }
    assert!(e.is_transient());
    sim.unlock_ct(900);

    let e = c
        .update_config(900, &[("cores", "lots".into())])
        .await
        .unwrap_err();
    match &e {
        PveError::Parameter {
            message, errors, ..
        } => {
            assert_eq!(message, "Parameter verification failed.");
            assert_eq!(
                errors["cores"],
                "type check ('integer') failed - got 'lots'"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!e.is_transient());

    let e = c.start(900).await.unwrap_err();
    assert_eq!(e.message(), "you can't start a CT if it's a template");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_falls_back_to_the_pve9_message_field() {
    let sim = PveSim::with(SimOptions {
        reason_phrase: false,
        pve9_message: true,
        ..SimOptions::default()
    });
    let c = client(&sim);
    let e = c.config(4242).await.unwrap_err();
    assert_eq!(e.cause(), Cause::DoesNotExist, "{e:?}");
    assert_eq!(
        e.message(),
        "Configuration file 'nodes/pve1/lxc/4242.conf' does not exist"
    );

    // With neither channel (a proxy rewrote the reason and an old PVE sent no message)
    // all that is left is the status: a 500 is then a plain, retryable server error.
    let sim = PveSim::with(SimOptions {
        reason_phrase: false,
        pve9_message: false,
        ..SimOptions::default()
    });
    let e = client(&sim).config(4242).await.unwrap_err();
    assert_eq!(e.cause(), Cause::Server, "{e:?}");
    assert_eq!(e.message(), "Internal Server Error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nextid_is_a_json_string_and_a_taken_id_is_a_parameter_error() {
    let sim = PveSim::start();
    let cfg = sim.proxmox_config();
    let raw: Value = reqwest::Client::new()
        .get(format!("{}/api2/json/cluster/nextid", sim.url()))
        .header(
            "Authorization",
            format!("PVEAPIToken={}={}", cfg.token_id, cfg.token_secret),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(raw["data"], Value::String("100".into()), "{raw}");

    let c = client(&sim);
    assert_eq!(c.next_id().await.unwrap(), 100);
    assert_eq!(c.check_id_free(5001).await.unwrap(), 5001);
    match c.check_id_free(900).await.unwrap_err() {
        PveError::Parameter { errors, .. } => assert_eq!(errors["vmid"], "VM 900 already exists"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_task_reports_its_exitstatus_and_log() {
    let sim = PveSim::start();
    let c = client(&sim);
    sim.fail_next_task("vzclone", "clone failed: storage 'local-lvm' is full");
    let upid = c.clone_ct(900, &linked(5001)).await.unwrap();
    // A real UPID: node, type, id and the token as the user, trailing colon.
    assert_eq!(upid.node(), "pve1");
    assert_eq!(upid.kind(), "vzclone");
    assert_eq!(upid.id(), "900");
    assert!(upid.as_str().ends_with(":zlh@pve!ctl:"), "{upid}");
    assert_eq!(Upid::parse(upid.as_str()).unwrap(), upid);

    let e = c
        .wait_task(&upid, Duration::from_secs(10), "cloning for the test")
        .await
        .unwrap_err();
    match &e {
        PveError::TaskFailed {
            exitstatus,
            log_tail,
            ..
        } => {
            assert_eq!(exitstatus, "clone failed: storage 'local-lvm' is full");
            assert_eq!(
                log_tail.last().map(String::as_str),
                Some("TASK ERROR: clone failed: storage 'local-lvm' is full")
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(e.cause(), Cause::TaskFailed);
    assert!(!e.is_transient());
    assert!(e.to_string().contains("task log"), "{e}");
    assert!(!sim.exists(5001), "a failed clone leaves nothing behind");

    // A task id PVE never issued.
    let bogus = Upid::parse("UPID:pve1:00000001:00000002:00000003:vzstart:1:root@pam:").unwrap();
    match c.task_status(&bogus).await.unwrap_err() {
        PveError::Parameter { errors, .. } => assert_eq!(errors["upid"], "no such task"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_token_is_refused_with_401_after_the_delay_and_the_secret_stays_out() {
    let sim = PveSim::with(SimOptions {
        auth_delay: Duration::from_millis(300),
        ..SimOptions::default()
    });
    let mut cfg = sim.proxmox_config();
    cfg.token_secret = "wrong-secret-7d1e".into();
    let c = PveClient::new(&cfg).unwrap();
    let t = Instant::now();
    let e = c.next_id().await.unwrap_err();
    assert!(
        t.elapsed() >= Duration::from_millis(300),
        "401s are delayed"
    );
    assert_eq!(e.cause(), Cause::Auth, "{e:?}");
    assert_eq!(e.message(), "Authentication failed!");
    let text = format!("{e} {e:?} {c:?}");
    assert!(!text.contains("wrong-secret"), "{text}");

    // The runtime calls that fatal: retrying with the same token cannot help.
    let rt = ProxmoxRuntime::new(cfg).unwrap();
    let r = rt.create(&spec(1, 5001)).await;
    let m = is_fatal_with(r, "401 Authentication failed!");
    assert!(!m.contains("wrong-secret"), "{m}");
    assert_eq!(sim.total_clones(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clone_locks_source_and_target_like_pve() {
    let sim = PveSim::start();
    let c = client(&sim);
    sim.hold_tasks("vzclone");
    let first = c.clone_ct(900, &linked(5001)).await.unwrap();

    // The source is locked `disk` for the whole clone: a second clone fails at once.
    match c.clone_ct(900, &linked(5002)).await.unwrap_err() {
        PveError::Locked { lock, .. } => assert_eq!(lock, "disk"),
        other => panic!("{other:?}"),
    }
    // The target exists, locked `create`: config writes fail synchronously …
    let cfg = c.config(5001).await.unwrap();
    assert_eq!(cfg.lock().as_deref(), Some("create"));
    assert_eq!(cfg.description().as_deref(), Some("test clone 5001"));
    match c
        .update_config(5001, &[("cores", "2".into())])
        .await
        .unwrap_err()
    {
        PveError::Locked { lock, .. } => assert_eq!(lock, "create"),
        other => panic!("{other:?}"),
    }
    // … and a start fails inside its task.
    let start = c.start(5001).await.expect("start is accepted with a UPID");
    let e = c
        .wait_task(&start, Duration::from_secs(10), "starting")
        .await
        .unwrap_err();
    assert_eq!(e.cause(), Cause::Locked, "{e}");
    assert!(e.to_string().contains("CT is locked (create)"), "{e}");

    // Digest changes with every write.
    let before = c.config(900).await.unwrap().digest();
    sim.release_tasks("vzclone");
    c.wait_task(&first, Duration::from_secs(10), "cloning")
        .await
        .unwrap();
    assert_ne!(c.config(900).await.unwrap().digest(), before);
    assert_eq!(c.config(5001).await.unwrap().lock(), None);
    assert_eq!(c.config(900).await.unwrap().lock(), None);
}

// ----- the runtime ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn provision_clone_configure_start_and_the_real_agent_answers() {
    let sim = PveSim::start();
    let rt = runtime(&sim);
    let s = spec(1, 5001);
    assert_eq!(rt.kind(), "proxmox");
    assert_eq!(rt.inspect(5001).await.unwrap(), None);

    let t = Instant::now();
    assert_eq!(rt.create(&s).await.unwrap(), Created::Created);
    let create_took = t.elapsed();
    let info = rt.inspect(5001).await.unwrap().unwrap();
    assert!(!info.running);
    assert!(info.belongs_to(1));
    assert_eq!(
        info.description.as_deref(),
        Some("zlh server 1 (mc-test-1)")
    );
    assert_eq!(sim.config(5001).unwrap()["hostname"], "mc-test-1");

    rt.configure(&s).await.unwrap();
    let cfg = sim.config(5001).unwrap();
    assert_eq!(cfg["cores"], 2);
    assert_eq!(cfg["memory"], 2048);
    assert_eq!(cfg["tags"], "zlh;srv-1");
    let net0 = cfg["net0"].as_str().unwrap().to_string();
    for part in [
        "name=eth0",
        "bridge=vmbr0",
        "ip=dhcp",
        "type=veth",
        "hwaddr=",
    ] {
        assert!(net0.contains(part), "{net0}");
    }
    // Configuring again keeps the MAC (and with it the DHCP address).
    rt.configure(&s).await.unwrap();
    assert_eq!(sim.config(5001).unwrap()["net0"], net0.as_str());
    let info = rt.inspect(5001).await.unwrap().unwrap();
    assert_eq!(info.tags, vec!["zlh", "srv-1"]);

    rt.start(&s).await.unwrap();
    assert!(sim.is_running(5001));
    let url = rt.agent_url(&s, Duration::from_secs(10)).await.unwrap();
    let ip = sim.ct_ip(5001).unwrap();
    assert_eq!(url, format!("http://{ip}:{AGENT_PORT}"));
    assert!(ip.is_loopback() && ip.octets()[1] != 0, "{ip}");

    // The base template's agent answers with the bootstrap token.
    let agent = wait_health(&url, &sim.options().bootstrap_token).await;
    let status = agent.status().await.unwrap();
    assert_eq!(status.state, AgentState::Idle);

    // Starting again is a no-op; the list shows zlh's container, not the template.
    rt.start(&s).await.unwrap();
    assert_eq!(sim.starts(5001), 1);
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].vmid, 5001);
    assert!(listed[0].running && listed[0].belongs_to(1));

    // A clean stop ends the agent; stopping again is fine; starting brings it back.
    let pid = sim.agent_pid(5001).unwrap();
    rt.stop(&s).await.unwrap();
    assert!(!sim.is_running(5001));
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    assert!(agent.health().await.is_err());
    rt.stop(&s).await.unwrap();
    assert_eq!(sim.stops(5001), 1);
    let r = rt.agent_url(&s, Duration::from_millis(300)).await;
    is_transient_with(r, "not running");
    rt.start(&s).await.unwrap();
    let again = rt.agent_url(&s, Duration::from_secs(10)).await.unwrap();
    assert_eq!(again, url, "same address after a restart");
    wait_health(&again, &sim.options().bootstrap_token).await;

    rt.destroy(&s).await.unwrap();
    assert!(!sim.exists(5001));
    assert!(agent.health().await.is_err());
    rt.destroy(&s).await.unwrap();
    rt.stop(&s).await.unwrap();
    assert_eq!(rt.inspect(5001).await.unwrap(), None);
    assert_eq!(sim.clones(5001), 1);
    assert_eq!(sim.destroys(5001), 1);
    eprintln!(
        "clone took {create_took:?}; requests: {:?}",
        sim.request_counts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_again_adopts_and_never_clones_twice() {
    let sim = PveSim::start();
    let s = spec(7, 5007);
    // A slow API changes nothing about the outcome.
    sim.set_latency(Duration::from_millis(20));
    assert_eq!(runtime(&sim).create(&s).await.unwrap(), Created::Created);
    assert_eq!(runtime(&sim).create(&s).await.unwrap(), Created::Adopted);
    // Also after configure (tags) and while running: still this server's container.
    let rt = runtime(&sim);
    rt.configure(&s).await.unwrap();
    rt.start(&s).await.unwrap();
    assert_eq!(rt.create(&s).await.unwrap(), Created::Adopted);
    assert_eq!(sim.clones(5007), 1);
    assert_eq!(sim.requests("POST /nodes/{node}/lxc/{vmid}/clone"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clone_interrupted_mid_task_is_adopted_not_repeated() {
    let sim = PveSim::start();
    let s = spec(3, 5003);
    sim.hold_tasks("vzclone");
    // The first run gives up waiting for its clone task (as if the job died there).
    let impatient = runtime_with(&sim, |c| c.task_timeout_secs = 1);
    let r = impatient.create(&s).await;
    is_transient_with(r, "still running after");
    assert!(sim.exists(5003));
    assert_eq!(
        sim.config(5003).unwrap()["lock"],
        "create",
        "the clone is still copying"
    );

    // The next run finds the locked container, waits for the clone to finish and
    // adopts it.
    let rt = runtime(&sim);
    let create = tokio::spawn(async move { rt.create(&s).await });
    tokio::time::sleep(Duration::from_millis(500)).await; // the clone keeps copying a while
    assert!(
        !create.is_finished(),
        "waits while the clone holds its lock"
    );
    sim.release_tasks("vzclone");
    assert_eq!(create.await.unwrap().unwrap(), Created::Adopted);
    assert_eq!(sim.clones(5003), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_container_on_the_vmid_is_never_touched() {
    let sim = PveSim::start();
    let rt = runtime(&sim);
    sim.add_foreign(5001, "Bob's test box", "");
    sim.add_foreign(5002, "zlh server 2 (other)", "zlh;srv-2");

    for vmid in [5001, 5002] {
        let s = spec(1, vmid);
        match rt.create(&s).await {
            Err(RuntimeError::Foreign {
                vmid: v,
                server_id: 1,
            }) => assert_eq!(v, vmid),
            other => panic!("{other:?}"),
        }
        for r in [
            rt.configure(&s).await,
            rt.start(&s).await,
            rt.stop(&s).await,
            rt.destroy(&s).await,
        ] {
            assert!(matches!(r, Err(RuntimeError::Foreign { .. })), "{r:?}");
        }
        assert!(matches!(
            rt.agent_url(&s, Duration::from_secs(1)).await,
            Err(RuntimeError::Foreign { .. })
        ));
        assert!(sim.exists(vmid));
    }
    assert_eq!(sim.total_clones(), 0);
    assert_eq!(sim.tasks("vzdestroy"), 0);
    assert!(!sim.is_running(5001));
    // Another zlh server's container is a zlh container, just not server 1's.
    let listed = rt.list().await.unwrap();
    assert_eq!(listed.len(), 1);
    assert!(listed[0].belongs_to(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn start_retries_while_the_container_is_locked() {
    let sim = PveSim::start();
    let rt = runtime(&sim);
    let s = spec(1, 5001);
    rt.create(&s).await.unwrap();
    rt.configure(&s).await.unwrap();

    sim.lock_ct(5001, "backup");
    sim.unlock_after(5001, Duration::from_millis(700));
    let t = Instant::now();
    rt.start(&s).await.unwrap();
    assert!(t.elapsed() >= Duration::from_millis(700));
    assert!(sim.is_running(5001));
    assert!(
        sim.tasks("vzstart") >= 2,
        "the start task failed on the lock, then was retried: {} tasks",
        sim.tasks("vzstart")
    );
    assert_eq!(sim.starts(5001), 1);
    eprintln!(
        "start behind a 700 ms lock took {:?} over {} start tasks",
        t.elapsed(),
        sim.tasks("vzstart")
    );

    // Configure meets the lock synchronously (HTTP 500) and retries the same way.
    sim.lock_ct(5001, "snapshot");
    sim.unlock_after(5001, Duration::from_millis(400));
    rt.configure(&s).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_past_the_retry_budget_is_transient() {
    let sim = PveSim::start();
    let rt = runtime_with(&sim, |c| c.retry_budget_secs = 1);
    let s = spec(1, 5001);
    rt.create(&s).await.unwrap();
    sim.lock_ct(5001, "backup");
    let t = Instant::now();
    let m = is_transient_with(rt.start(&s).await, "CT is locked (backup)");
    assert!(m.contains("gave up after"), "{m}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    is_transient_with(rt.configure(&s).await, "CT is locked (backup)");
    is_transient_with(rt.destroy(&s).await, "CT is locked (backup)");
    assert!(sim.exists(5001));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_clone_task_is_fatal_with_its_exit_text() {
    let sim = PveSim::start();
    let rt = runtime(&sim);
    let s = spec(1, 5001);
    sim.fail_next_task("vzclone", "clone failed: storage 'local-lvm' is full");
    let m = is_fatal_with(
        rt.create(&s).await,
        "clone failed: storage 'local-lvm' is full",
    );
    assert!(m.contains("task log"), "{m}");
    assert!(!sim.exists(5001));
    // Nothing was left behind, so the next attempt (after the operator's fix) clones.
    assert_eq!(rt.create(&s).await.unwrap(), Created::Created);
    assert_eq!(sim.clones(5001), 2);

    // A start task that fails for a non-lock reason is fatal too.
    sim.fail_next_task("vzstart", "startup for container '5001' failed");
    is_fatal_with(rt.start(&s).await, "startup for container '5001' failed");

    // A missing template is fatal and says which setting to check.
    let rt = runtime_with(&sim, |c| c.template_vmid = 999);
    is_fatal_with(rt.create(&spec(2, 5002)).await, "template_vmid 999");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_error_bursts_are_retried_then_transient() {
    let sim = PveSim::start();
    let rt = runtime(&sim);
    let s = spec(1, 5001);
    // A short burst is ridden out: every step, including task polling.
    sim.fail_requests(3, None, 500, "proxy: upstream went away");
    assert_eq!(rt.create(&s).await.unwrap(), Created::Created);
    sim.fail_requests(2, Some("/nodes/pve1/tasks/"), 503, "Service Unavailable");
    rt.configure(&s).await.unwrap();
    rt.start(&s).await.unwrap();
    assert_eq!(sim.clones(5001), 1);

    // The config flock timing out is retried like a lock.
    sim.fail_requests(
        2,
        Some("/nodes/pve1/lxc/5001/config"),
        500,
        "can't lock file '/run/lock/lxc/pve-config-5001.lock' - got timeout",
    );
    rt.configure(&s).await.unwrap();

    // A lasting outage comes back as transient within the budget.
    let rt = runtime_with(&sim, |c| c.retry_budget_secs = 1);
    sim.fail_requests(
        100_000,
        Some("/nodes/pve1/lxc/5002"),
        500,
        "pveproxy overloaded",
    );
    let t = Instant::now();
    let m = is_transient_with(rt.create(&spec(2, 5002)).await, "pveproxy overloaded");
    assert!(m.contains("gave up after"), "{m}");
    assert!(t.elapsed() < Duration::from_secs(3));
    assert_eq!(sim.clones(5002), 0);

    // And so does a node nobody answers for.
    let mut cfg = sim.proxmox_config();
    cfg.api_url = format!("http://127.0.0.1:{}", free_port());
    cfg.retry_budget_secs = 1;
    let dead = ProxmoxRuntime::new(cfg).unwrap();
    is_transient_with(
        dead.create(&spec(3, 5003)).await,
        "cannot reach the Proxmox API",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_address_within_the_deadline_is_transient() {
    let sim = PveSim::start();
    let rt = runtime(&sim);
    let s = spec(1, 5001);
    rt.create(&s).await.unwrap();
    rt.configure(&s).await.unwrap();
    sim.set_ip_delay(Duration::from_secs(3600));
    rt.start(&s).await.unwrap();
    let t = Instant::now();
    let m = is_transient_with(
        rt.agent_url(&s, Duration::from_millis(600)).await,
        "no IPv4 address on eth0",
    );
    assert!(m.contains("eth0 has no IPv4 address yet"), "{m}");
    assert!(t.elapsed() < Duration::from_secs(2));
    // The address shows up: the next call finds it.
    sim.set_ip_delay(Duration::ZERO);
    rt.agent_url(&s, Duration::from_secs(5)).await.unwrap();
    // A container that is not there is fatal, not something to wait for.
    is_fatal_with(
        rt.agent_url(&spec(9, 5009), Duration::from_secs(5)).await,
        "does not exist",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn destroy_is_idempotent_and_takes_the_agent_with_it() {
    let sim = PveSim::start();
    let rt = runtime(&sim);
    let s = spec(1, 5001);
    // Never made at all: already gone.
    rt.destroy(&s).await.unwrap();
    rt.create(&s).await.unwrap();
    rt.configure(&s).await.unwrap();
    rt.start(&s).await.unwrap();
    let url = rt.agent_url(&s, Duration::from_secs(10)).await.unwrap();
    wait_health(&url, &sim.options().bootstrap_token).await;
    let dir = sim.ct_dir(5001);
    assert!(dir.exists());

    // A failed destroy task is reported, and the container is still there to retry.
    sim.fail_next_task("vzdestroy", "unable to remove volume: device busy");
    is_fatal_with(rt.destroy(&s).await, "device busy");
    assert!(sim.exists(5001));

    rt.destroy(&s).await.unwrap();
    assert!(!sim.exists(5001));
    assert!(!dir.exists(), "purged with its disk");
    rt.destroy(&s).await.unwrap();
    assert_eq!(sim.destroys(5001), 1);
    assert_eq!(rt.inspect(5001).await.unwrap(), None);
}

/// Whether `pid` is a live process (a killed one may linger as a zombie until reaped).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()))
        .is_some_and(|r| !r.starts_with('Z') && !r.starts_with('X'))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_containers_agent_installs_its_game_and_destroy_takes_both_down() {
    const JAR: &str = "minecraft/vanilla/1.21.4/server.jar";
    const STANDIN: &str = include_str!("../support/standin_game.py");
    let (artifacts, files) = fileserver::start();
    files.put(JAR, STANDIN);
    let sim = PveSim::start();
    let rt = runtime(&sim);
    let s = spec(4, 5004);
    rt.create(&s).await.unwrap();
    rt.configure(&s).await.unwrap();
    rt.start(&s).await.unwrap();
    let url = rt.agent_url(&s, Duration::from_secs(10)).await.unwrap();
    let bootstrap = wait_health(&url, &sim.options().bootstrap_token).await;

    // DESIGN §6 step 6: the first /config installs the server's own token.
    let game_port = free_port();
    let payload: ConfigPayload = serde_json::from_value(serde_json::json!({
        "vmid": 5004,
        "container_type": "game",
        "game": "minecraft",
        "variant": "vanilla",
        "version": "1.21.4",
        "ports": [game_port],
        "artifact_path": JAR,
        "artifact_sha256": sha256_hex(STANDIN.as_bytes()),
        "memory_mb": 1024,
        "install_id": "install-1",
        "eula": true,
        "properties": {"server-port": game_port.to_string()},
        "start_command": "python3 {jar}",
        "readiness": {"type": "minecraft_ping", "port": game_port},
        "services": {"ARTIFACT_SERVER": artifacts},
        "env": {"STANDIN_LOAD_MS": "300"},
        "agent_token": s.agent_token,
    }))
    .unwrap();
    bootstrap.configure(&payload).await.unwrap();
    let own = AgentClient::new(&url, &s.agent_token, "server 4's agent");
    let probe = own.clone();
    wait_for_async("the game to be ready", Duration::from_secs(30), || {
        let c = probe.clone();
        async move {
            c.status()
                .await
                .ok()
                .filter(|st| st.state == AgentState::Running && st.ready)
        }
    })
    .await;
    assert!(matches!(
        bootstrap.status().await,
        Err(AgentClientError::Unauthorized { .. })
    ));
    let game_pid: u32 = std::fs::read_to_string(sim.ct_dir(5004).join("game.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let agent_pid = sim.agent_pid(5004).unwrap();
    assert!(alive(game_pid) && alive(agent_pid));

    rt.destroy(&s).await.unwrap();
    assert!(!alive(agent_pid), "the agent died with its container");
    wait_for_async(
        "the game to die with its container",
        Duration::from_secs(5),
        || async { (!alive(game_pid)).then_some(()) },
    )
    .await;
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", game_port)).is_err(),
        "nothing listens on the game port any more"
    );
}

#[test]
fn the_simulator_works_from_plain_threads() {
    let sim = Arc::new(PveSim::start());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let sim = sim.clone();
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                rt.block_on(async {
                    let r = runtime(&sim);
                    r.create(&spec(i, 5100 + i)).await
                })
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    // Clones of one template are serialised by its `disk` lock: every one got through.
    for r in results {
        assert_eq!(r.unwrap(), Created::Created);
    }
    assert_eq!(sim.total_clones(), 4);
}

// ----- TLS pinning ---------------------------------------------------------------------

mod tls_server {
    use std::net::SocketAddr;
    use std::sync::Arc;

    use axum::Router;
    use axum::routing::get;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use tokio::net::{TcpListener, TcpStream};
    use tokio_rustls::TlsAcceptor;
    use tokio_rustls::server::TlsStream;

    struct TlsListener {
        tcp: TcpListener,
        acceptor: TlsAcceptor,
    }

    impl axum::serve::Listener for TlsListener {
        type Io = TlsStream<TcpStream>;
        type Addr = SocketAddr;

        async fn accept(&mut self) -> (Self::Io, Self::Addr) {
            loop {
                let Ok((tcp, addr)) = self.tcp.accept().await else {
                    continue;
                };
                // A client that refuses our certificate ends its handshake: next.
                if let Ok(tls) = self.acceptor.accept(tcp).await {
                    return (tls, addr);
                }
            }
        }

        fn local_addr(&self) -> std::io::Result<Self::Addr> {
            self.tcp.local_addr()
        }
    }

    /// An HTTPS "PVE" on 127.0.0.1 with a fresh self-signed certificate that answers
    /// `nextid`; returns its URL and the certificate (DER).
    pub async fn start() -> (String, Vec<u8>) {
        let key = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        let cert_der: CertificateDer<'static> = key.cert.der().clone();
        let key_der =
            PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert_der.clone()], key_der)
        .unwrap();
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = tcp.local_addr().unwrap();
        let listener = TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(Arc::new(config)),
        };
        let app = Router::new().route(
            "/api2/json/cluster/nextid",
            get(|| async { axum::Json(serde_json::json!({"data": "100"})) }),
        );
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (format!("https://{addr}"), cert_der.to_vec())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_fingerprint_connects_and_a_wrong_one_is_refused() {
    let sim = PveSim::start();
    let (url, cert) = tls_server::start().await;
    let mut cfg = sim.proxmox_config();
    cfg.api_url = url;

    let right = Fingerprint::of(&cert);
    cfg.tls_fingerprint = Some(right.to_string());
    assert_eq!(PveClient::new(&cfg).unwrap().next_id().await.unwrap(), 100);
    // Lower case without colons is the same pin.
    let plain: String = right.to_string().replace(':', "").to_lowercase();
    cfg.tls_fingerprint = Some(plain);
    assert_eq!(PveClient::new(&cfg).unwrap().next_id().await.unwrap(), 100);

    let mut wrong = right.0;
    wrong[0] ^= 0xff;
    cfg.tls_fingerprint = Some(Fingerprint(wrong).to_string());
    let e = PveClient::new(&cfg).unwrap().next_id().await.unwrap_err();
    assert_eq!(e.cause(), Cause::Network, "{e:?}");
    assert!(
        e.to_string()
            .contains("does not match the pinned tls_fingerprint"),
        "{e}"
    );
    assert!(
        e.to_string().contains(&right.to_string()),
        "names what it saw: {e}"
    );
    eprintln!("wrong pin: {e}");

    // Without a pin, a self-signed certificate is not trusted by the system roots.
    cfg.tls_fingerprint = None;
    let e = PveClient::new(&cfg).unwrap().next_id().await.unwrap_err();
    assert_eq!(e.cause(), Cause::Network, "{e:?}");
    assert!(e.to_string().to_lowercase().contains("certificate"), "{e}");
    eprintln!("no pin: {e}");
}
