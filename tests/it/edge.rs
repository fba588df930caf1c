//! The edge clients against their simulators: Velocity bridge, Technitium, Cloudflare;
//! error classification; edge settings validation.

use crate::support;

use std::net::Ipv4Addr;

use serde_json::json;
use zlh::edge::{
    CloudflareClient, DnsClient, DnsRecordId, EdgeConfig, EdgeError, Registration,
    TechnitiumClient, VelocityClient,
};

use crate::support::cloudflare_sim::CloudflareSim;
use crate::support::technitium_sim::TechnitiumSim;
use crate::support::velocity_sim::VelocitySim;

const SECRET: &str = "velocity-shared-secret-123";
const TOKEN: &str = "dns-api-token-abcdef0123456789";
const ZONE: &str = "games.example.com";
const ZONE_ID: &str = "023e105f4ecef8ad9ca31a8372d0c353";
const EDGE_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);

// ------------------------------------------------------------------ Velocity

#[tokio::test]
async fn velocity_register_list_unregister_round_trip() {
    let sim = VelocitySim::start(SECRET);
    let v = VelocityClient::new(sim.url(), SECRET);
    v.register("mc-alpha", "10.0.0.21", 25565).await.unwrap();
    v.register("mc-beta", "10.0.0.22", 25566).await.unwrap();
    let mut list = v.list().await.unwrap();
    list.sort_by(|a, b| a.server_name.cmp(&b.server_name));
    assert_eq!(
        list,
        vec![
            Registration {
                server_name: "mc-alpha".into(),
                address: "10.0.0.21".into(),
                port: 25565
            },
            Registration {
                server_name: "mc-beta".into(),
                address: "10.0.0.22".into(),
                port: 25566
            },
        ]
    );
    v.unregister("mc-alpha").await.unwrap();
    let names: Vec<_> = v
        .list()
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.server_name)
        .collect();
    assert_eq!(names, vec!["mc-beta".to_string()]);
    assert_eq!(sim.calls("mc-alpha").len(), 2);
}

#[tokio::test]
async fn velocity_register_is_idempotent_and_moves_a_changed_address() {
    let sim = VelocitySim::start(SECRET);
    let v = VelocityClient::new(sim.url(), SECRET);
    v.register("mc-alpha", "10.0.0.21", 25565).await.unwrap();
    v.register("mc-alpha", "10.0.0.21", 25565).await.unwrap();
    assert_eq!(sim.registrations().len(), 1);
    // Same name, new address: unregister then register.
    v.register("mc-alpha", "10.0.0.99", 25565).await.unwrap();
    let regs = sim.registrations();
    assert_eq!(regs.len(), 1);
    assert_eq!(regs[0].address, "10.0.0.99");
    let ops: Vec<_> = sim
        .calls("mc-alpha")
        .into_iter()
        .map(|(op, _)| op)
        .collect();
    assert_eq!(
        ops,
        vec!["register", "register", "register", "unregister", "register"]
    );
}

#[tokio::test]
async fn velocity_unregister_of_unknown_name_is_ok() {
    let sim = VelocitySim::start(SECRET);
    let v = VelocityClient::new(sim.url(), SECRET);
    v.unregister("never-registered").await.unwrap();
    assert_eq!(sim.count("unregister"), 1);
}

#[tokio::test]
async fn velocity_restart_forgets_and_list_shows_it() {
    let sim = VelocitySim::start(SECRET);
    let v = VelocityClient::new(sim.url(), SECRET);
    v.register("mc-alpha", "10.0.0.21", 25565).await.unwrap();
    sim.restart();
    assert!(v.list().await.unwrap().is_empty());
    v.register("mc-alpha", "10.0.0.21", 25565).await.unwrap();
    assert_eq!(v.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn velocity_wrong_secret_is_a_permanent_error_naming_the_bridge() {
    let sim = VelocitySim::start(SECRET);
    let v = VelocityClient::new(sim.url(), "not-the-secret");
    let e = v
        .register("mc-alpha", "10.0.0.21", 25565)
        .await
        .unwrap_err();
    assert!(matches!(e, EdgeError::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("Velocity bridge at {}", sim.url())),
        "{msg}"
    );
    assert!(msg.contains("mc-alpha"), "{msg}");
    assert!(!msg.contains("not-the-secret"), "{msg}");
    assert!(!format!("{v:?}").contains("not-the-secret"));
    assert!(sim.registrations().is_empty());
    assert_eq!(sim.unauthorized(), 1, "no retries of a refused secret");
}

#[tokio::test]
async fn velocity_transient_failures_are_retried_then_reported_as_transient() {
    let sim = VelocitySim::start(SECRET);
    let v = VelocityClient::new(sim.url(), SECRET);
    sim.fail_next(1);
    v.register("mc-alpha", "10.0.0.21", 25565).await.unwrap();
    assert_eq!(sim.registrations().len(), 1);

    sim.set_down(true);
    let e = v.list().await.unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    assert!(matches!(e, EdgeError::Status { status: 503, .. }), "{e:?}");
    sim.set_down(false);
    assert_eq!(v.list().await.unwrap().len(), 1);
}

#[tokio::test]
async fn velocity_unreachable_is_transient() {
    let port = support::free_port();
    let v = VelocityClient::new(format!("http://127.0.0.1:{port}"), SECRET);
    let e = v.list().await.unwrap_err();
    assert!(matches!(e, EdgeError::Unreachable { .. }), "{e:?}");
    assert!(e.is_transient());
    assert!(
        e.to_string()
            .contains(&format!("Velocity bridge at http://127.0.0.1:{port}"))
    );
}

// ------------------------------------------------------------------ Technitium

fn technitium(sim: &TechnitiumSim) -> DnsClient {
    DnsClient::Technitium(TechnitiumClient::new(sim.url(), TOKEN, ZONE))
}

#[tokio::test]
async fn technitium_add_then_delete_removes_exactly_those_records() {
    let sim = TechnitiumSim::start(TOKEN, ZONE);
    // Someone else's records at the same names must survive.
    sim.insert(
        ZONE,
        "mc-alpha.games.example.com",
        "A",
        json!({"ipAddress": "198.51.100.7"}),
    );
    let dns = technitium(&sim);
    let a = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap();
    let srv = dns
        .add_srv(
            "_minecraft._tcp.mc-alpha.games.example.com",
            "play.example.com",
            25565,
            0,
            5,
            60,
        )
        .await
        .unwrap();
    let records = sim.records(ZONE);
    assert_eq!(records.len(), 3);
    let s = records.iter().find(|r| r.kind == "SRV").unwrap();
    assert_eq!(s.name, "_minecraft._tcp.mc-alpha.games.example.com");
    assert_eq!(
        s.rdata,
        json!({"priority": 0, "weight": 5, "port": 25565, "target": "play.example.com"})
    );
    assert_eq!(s.ttl, 60);

    // The identity round-trips through JSON (it is stored in a database row).
    let stored = serde_json::to_string(&a).unwrap();
    let a2: DnsRecordId = serde_json::from_str(&stored).unwrap();
    assert_eq!(a, a2);
    assert!(dns.exists(&a2).await.unwrap());
    assert!(dns.exists(&srv).await.unwrap());

    dns.delete(&a2).await.unwrap();
    dns.delete(&srv).await.unwrap();
    let left = sim.records(ZONE);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].rdata, json!({"ipAddress": "198.51.100.7"}));
    assert!(!dns.exists(&a).await.unwrap());
    assert!(!dns.exists(&srv).await.unwrap());

    // A second delete: Technitium answers ok for a record that is not there.
    dns.delete(&a).await.unwrap();
    dns.delete(&srv).await.unwrap();
}

#[tokio::test]
async fn technitium_add_twice_keeps_one_record() {
    let sim = TechnitiumSim::start(TOKEN, ZONE);
    let dns = technitium(&sim);
    let a1 = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap();
    let a2 = dns
        .add_a("MC-Alpha.games.example.com.", EDGE_IP, 60)
        .await
        .unwrap();
    assert_eq!(a1, a2);
    assert_eq!(sim.records(ZONE).len(), 1);
}

#[tokio::test]
async fn technitium_http_200_errors_are_detected() {
    let sim = TechnitiumSim::start(TOKEN, ZONE);
    let dns = technitium(&sim);
    sim.error_next(1, "Access was denied.");
    let e = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap_err();
    assert!(matches!(e, EdgeError::Rejected { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(
        msg.contains(&format!("Technitium at {}", sim.url())),
        "{msg}"
    );
    assert!(msg.contains("Access was denied."), "{msg}");
    assert!(msg.contains("mc-alpha.games.example.com"), "{msg}");
    assert!(sim.records(ZONE).is_empty());

    // A zone that does not exist on the server is an error too (HTTP 200 again).
    let other = DnsClient::Technitium(TechnitiumClient::new(sim.url(), TOKEN, "nope.example.org"));
    let e = other
        .add_a("x.nope.example.org", EDGE_IP, 60)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("No such authoritative zone"), "{e}");
}

#[tokio::test]
async fn technitium_invalid_token_is_an_error() {
    let sim = TechnitiumSim::start(TOKEN, ZONE);
    let dns = DnsClient::Technitium(TechnitiumClient::new(sim.url(), "wrong-token-value", ZONE));
    let e = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap_err();
    assert!(matches!(e, EdgeError::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_transient());
    assert!(!e.to_string().contains("wrong-token-value"));
    assert!(!format!("{dns:?}").contains("wrong-token-value"));
    assert_eq!(sim.requests("add"), 1, "no retries of a refused token");
}

#[tokio::test]
async fn technitium_down_is_transient() {
    let sim = TechnitiumSim::start(TOKEN, ZONE);
    let dns = technitium(&sim);
    sim.set_down(true);
    let e = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    sim.set_down(false);
    dns.add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap();
}

#[tokio::test]
async fn a_record_identity_of_another_provider_is_refused() {
    let sim = TechnitiumSim::start(TOKEN, ZONE);
    let dns = technitium(&sim);
    let id = DnsRecordId::Cloudflare {
        zone_id: ZONE_ID.into(),
        id: "0".repeat(32),
        name: "x.games.example.com".into(),
        record_type: "A".into(),
        content: "203.0.113.10".into(),
    };
    let e = dns.delete(&id).await.unwrap_err();
    assert!(matches!(e, EdgeError::Invalid { .. }), "{e:?}");
}

// ------------------------------------------------------------------ Cloudflare

fn cloudflare(sim: &CloudflareSim, token: &str) -> DnsClient {
    DnsClient::Cloudflare(CloudflareClient::new(sim.url(), token, ZONE_ID))
}

#[tokio::test]
async fn cloudflare_add_a_and_srv_then_delete_by_id() {
    let sim = CloudflareSim::start(TOKEN, ZONE_ID);
    let dns = cloudflare(&sim, TOKEN);
    let a = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap();
    let srv = dns
        .add_srv(
            "_minecraft._tcp.mc-alpha.games.example.com",
            "play.example.com",
            25565,
            0,
            5,
            60,
        )
        .await
        .unwrap();
    let bodies = sim.create_bodies();
    assert_eq!(bodies.len(), 2);
    assert_eq!(bodies[0]["proxied"], json!(false));
    assert_eq!(bodies[0]["content"], json!("203.0.113.10"));
    assert_eq!(
        bodies[1]["name"],
        json!("_minecraft._tcp.mc-alpha.games.example.com")
    );
    assert_eq!(
        bodies[1]["data"],
        json!({"priority": 0, "weight": 5, "port": 25565, "target": "play.example.com"})
    );
    assert!(bodies[1]["data"].get("service").is_none());

    let DnsRecordId::Cloudflare { id, zone_id, .. } = &a else {
        panic!("not a Cloudflare identity: {a:?}")
    };
    assert_eq!(id.len(), 32);
    assert!(id.chars().all(|c| c.is_ascii_hexdigit()));
    assert_eq!(zone_id, ZONE_ID);
    let stored: DnsRecordId = serde_json::from_str(&serde_json::to_string(&srv).unwrap()).unwrap();
    assert_eq!(stored, srv);
    assert!(dns.exists(&stored).await.unwrap());

    dns.delete(&a).await.unwrap();
    assert_eq!(sim.count_named("mc-alpha.games.example.com"), 0);
    assert_eq!(
        sim.count_named("_minecraft._tcp.mc-alpha.games.example.com"),
        1
    );
    dns.delete(&stored).await.unwrap();
    assert!(sim.records().is_empty());
    assert!(!dns.exists(&a).await.unwrap());
    // Second delete: 404 "Record does not exist." counts as gone.
    dns.delete(&a).await.unwrap();
    dns.delete(&srv).await.unwrap();
}

#[tokio::test]
async fn cloudflare_duplicate_create_adopts_the_existing_record() {
    let sim = CloudflareSim::start(TOKEN, ZONE_ID);
    let dns = cloudflare(&sim, TOKEN);
    let a1 = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap();
    let a2 = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap();
    assert_eq!(a1, a2);
    let s1 = dns
        .add_srv(
            "_minecraft._tcp.mc-alpha.games.example.com",
            "play.example.com",
            25565,
            0,
            5,
            60,
        )
        .await
        .unwrap();
    let s2 = dns
        .add_srv(
            "_minecraft._tcp.mc-alpha.games.example.com",
            "play.example.com",
            25565,
            0,
            5,
            60,
        )
        .await
        .unwrap();
    assert_eq!(s1, s2);
    assert_eq!(sim.count_named("mc-alpha.games.example.com"), 1);
    assert_eq!(
        sim.count_named("_minecraft._tcp.mc-alpha.games.example.com"),
        1
    );
    assert_eq!(sim.requests("create"), 4);
    assert_eq!(sim.requests("find"), 2);
}

#[tokio::test]
async fn cloudflare_errors_are_classified() {
    let sim = CloudflareSim::start(TOKEN, ZONE_ID);
    let bad = cloudflare(&sim, "wrong-cloudflare-token");
    let e = bad
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap_err();
    assert!(matches!(e, EdgeError::Unauthorized { .. }), "{e:?}");
    assert!(!e.is_transient());
    let msg = e.to_string();
    assert!(msg.contains(&format!("Cloudflare zone {ZONE_ID}")), "{msg}");
    assert!(!msg.contains("wrong-cloudflare-token"));
    assert!(!format!("{bad:?}").contains("wrong-cloudflare-token"));

    let dns = cloudflare(&sim, TOKEN);
    sim.fail_next(1, 429);
    let e = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    sim.fail_next(1, 502);
    let e = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap_err();
    assert!(e.is_transient(), "{e:?}");
    // Creates are not retried (they may have happened); idempotent calls are.
    let a = dns
        .add_a("mc-alpha.games.example.com", EDGE_IP, 60)
        .await
        .unwrap();
    sim.fail_next(2, 500);
    dns.delete(&a).await.unwrap();
    assert!(sim.records().is_empty());

    // A refused request (an IP as SRV target is caught before sending).
    let e = dns
        .add_srv(
            "_minecraft._tcp.x.games.example.com",
            "203.0.113.10",
            25565,
            0,
            5,
            60,
        )
        .await
        .unwrap_err();
    assert!(!e.is_transient());
    sim.set_down(true);
    assert!(dns.exists(&a).await.unwrap_err().is_transient());
}

// ------------------------------------------------------------------ settings

fn edge(toml_text: &str) -> EdgeConfig {
    toml::from_str(toml_text).unwrap()
}

#[test]
fn edge_config_empty_publishes_nothing() {
    let c = edge("");
    assert!(c.velocity.is_none() && c.dns.is_none() && c.traefik.is_none());
    assert!(c.validate().unwrap().is_empty());
}

#[test]
fn edge_config_hostname_is_refused_naming_the_key() {
    let c = edge(
        r#"
        [velocity]
        url = "http://velocity.internal:8081"
        secret = "s3cret"
        edge_ip = "203.0.113.10"
        srv_target = "play.example.com"
        "#,
    );
    let e = c.validate().unwrap_err();
    assert_eq!(e.key, "edge.velocity.url");
    let c = edge(
        r#"
        [dns]
        provider = "technitium"
        url = "http://dns.internal:5380"
        token = "t"
        zone = "games.example.com"
        "#,
    );
    assert_eq!(c.validate().unwrap_err().key, "edge.dns.url");
}

#[test]
fn edge_config_allow_hostnames_accepts_with_warnings() {
    let c = edge(
        r#"
        allow_hostnames = true
        [velocity]
        url = "http://velocity.internal:8081"
        secret = "s3cret"
        edge_ip = "203.0.113.10"
        srv_target = "play.example.com"
        [dns]
        provider = "technitium"
        url = "http://dns.internal:5380"
        token = "t"
        zone = "games.example.com"
        "#,
    );
    let warnings = c.validate().unwrap();
    assert_eq!(warnings.len(), 2);
    assert!(warnings[0].contains("edge.velocity.url"));
    assert!(warnings[1].contains("edge.dns.url"));
    assert_eq!(c.velocity.as_ref().unwrap().srv_port, 25565);
    assert_eq!(c.dns.as_ref().unwrap().ttl, 60);
}

#[test]
fn edge_config_cloudflare_default_url_is_accepted() {
    let c = edge(
        r#"
        [dns]
        provider = "cloudflare"
        token = "cf-token-value"
        zone = "games.example.com"
        zone_id = "023e105f4ecef8ad9ca31a8372d0c353"
        "#,
    );
    assert!(c.validate().unwrap().is_empty());
    let d = c.dns.as_ref().unwrap();
    assert_eq!(d.api_url(), "https://api.cloudflare.com/client/v4");
    assert!(!format!("{c:?}").contains("cf-token-value"));
    assert!(!toml::to_string(&c).unwrap().contains("cf-token-value"));

    let missing = edge(
        r#"
        [dns]
        provider = "cloudflare"
        token = "t"
        zone = "games.example.com"
        "#,
    );
    assert_eq!(missing.validate().unwrap_err().key, "edge.dns.zone_id");
}

#[test]
fn edge_config_rejects_unknown_keys_and_bad_values() {
    assert!(toml::from_str::<EdgeConfig>("[velocity]\nurl = \"http://10.0.0.7:8081\"\nsecret = \"s\"\nedge_ip = \"203.0.113.10\"\nsrv_target = \"play.example.com\"\nbogus = 1\n").is_err());
    let c = edge(
        r#"
        [velocity]
        url = "http://10.0.0.7:8081"
        secret = "s3cret"
        edge_ip = "203.0.113.10"
        srv_target = "203.0.113.10"
        "#,
    );
    assert_eq!(c.validate().unwrap_err().key, "edge.velocity.srv_target");
}
