//! Publishing servers to players (DESIGN §8): Velocity registrations, DNS records and
//! Traefik routes, each an edge record with the identity needed to remove it. Only a
//! ready server is published (invariant 5); an edge failure never fails a running
//! game — the record stays `failed` with its error and the reconciler keeps trying.

use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::db::now_ms;
use crate::domain::DomainError;
use crate::domain::edge::{self as records, EdgeRecord};
use crate::domain::servers::{self, Server};
use crate::domain::templates::{EdgeKind, Template};
use crate::edge::EdgeError;
use crate::edge::dns::DnsRecordId;
use crate::jobs::services::Services;

/// What a running server of `template` should have published, from the edge settings.
pub fn desired(
    svc: &Services,
    server: &Server,
    template: &Template,
) -> Vec<(&'static str, String, Value)> {
    let edge = &svc.config.edge;
    let mut out = Vec::new();
    let Some(ip) = server.ip.clone() else {
        return out;
    };
    let fqdn = edge
        .dns
        .as_ref()
        .map(|d| format!("{}.{}", server.name, d.zone.trim_end_matches('.')));
    match template.spec.edge {
        EdgeKind::Velocity => {
            if let Some(v) = &edge.velocity {
                // One canonical name for register and unregister: the server's name.
                out.push((
                    records::VELOCITY,
                    server.name.clone(),
                    json!({"address": ip, "port": server.game_port}),
                ));
                if let Some(fqdn) = &fqdn {
                    out.push((
                        records::DNS_A,
                        fqdn.clone(),
                        json!({"ip": v.edge_ip.to_string()}),
                    ));
                    out.push((
                        records::DNS_SRV,
                        format!("_minecraft._tcp.{fqdn}"),
                        json!({"target": v.srv_target, "port": v.srv_port, "priority": 0, "weight": 5}),
                    ));
                }
            }
        }
        EdgeKind::TraefikTcp | EdgeKind::TraefikUdp => {
            if let Some(t) = &edge.traefik {
                let target = if template.spec.edge == EdgeKind::TraefikTcp {
                    records::TRAEFIK_TCP
                } else {
                    records::TRAEFIK_UDP
                };
                out.push((
                    target,
                    format!("zlh-{}", server.name),
                    json!({"address": format!("{ip}:{}", server.game_port), "entrypoint": format!("zlh-{}", server.name)}),
                ));
                if let Some(fqdn) = &fqdn {
                    out.push((
                        records::DNS_A,
                        fqdn.clone(),
                        json!({"ip": t.edge_ip.to_string()}),
                    ));
                }
            }
        }
        EdgeKind::None => {}
    }
    out
}

/// Delay before the next publish attempt after `attempts` failures (capped).
fn backoff_ms(attempts: i64) -> i64 {
    (2_000i64 << attempts.clamp(0, 8)).min(300_000)
}

/// Makes one record true at its target; returns the identity to store.
async fn apply(svc: &Services, r: &EdgeRecord) -> Result<Option<Value>, EdgeError> {
    let ttl = svc.config.edge.dns.as_ref().map(|d| d.ttl).unwrap_or(60);
    match r.target.as_str() {
        records::VELOCITY => {
            let Some(v) = &svc.velocity else {
                return Ok(None);
            };
            let address = r.desired["address"].as_str().unwrap_or_default();
            let port = r.desired["port"].as_u64().unwrap_or(25565) as u16;
            v.register(&r.name, address, port).await?;
            Ok(Some(json!({"server_name": r.name})))
        }
        records::DNS_A => {
            let Some(dns) = &svc.dns else { return Ok(None) };
            let ip = r.desired["ip"]
                .as_str()
                .unwrap_or_default()
                .parse()
                .map_err(|_| EdgeError::Invalid {
                    target: dns.target(),
                    what: format!("publishing {}", r.name),
                    reason: "the edge IP is not an IPv4 address".into(),
                })?;
            let id = dns.add_a(&r.name, ip, ttl).await?;
            Ok(serde_json::to_value(id).ok())
        }
        records::DNS_SRV => {
            let Some(dns) = &svc.dns else { return Ok(None) };
            let d = &r.desired;
            let id = dns
                .add_srv(
                    &r.name,
                    d["target"].as_str().unwrap_or_default(),
                    d["port"].as_u64().unwrap_or(25565) as u16,
                    d["priority"].as_u64().unwrap_or(0) as u16,
                    d["weight"].as_u64().unwrap_or(5) as u16,
                    ttl,
                )
                .await?;
            Ok(serde_json::to_value(id).ok())
        }
        // Traefik polls `/traefik/config`, rendered from these rows: nothing to call.
        _ => Ok(None),
    }
}

/// Removes one record from its target; "already gone" is success.
async fn remove(svc: &Services, r: &EdgeRecord) -> Result<(), EdgeError> {
    match r.target.as_str() {
        records::VELOCITY => match &svc.velocity {
            Some(v) => v.unregister(&r.name).await,
            None => Ok(()),
        },
        records::DNS_A | records::DNS_SRV => {
            let (Some(dns), Some(identity)) = (&svc.dns, &r.identity) else {
                return Ok(()); // never published: nothing to remove
            };
            match serde_json::from_value::<DnsRecordId>(identity.clone()) {
                Ok(id) => dns.delete(&id).await,
                Err(_) => Ok(()),
            }
        }
        _ => Ok(()),
    }
}

/// Tries one record now and records the outcome (and an event when it changes).
async fn attempt(svc: &Services, r: &EdgeRecord) -> Result<bool, DomainError> {
    let result = apply(svc, r).await;
    let (id, sid, was, target, name, attempts) = (
        r.id,
        r.server_id,
        r.state.clone(),
        r.target.clone(),
        r.name.clone(),
        r.attempts,
    );
    let ok = result.is_ok();
    if !ok {
        svc.reconcile.edge_failures.fetch_add(1, Ordering::Relaxed);
    }
    let still_wanted = svc
        .db
        .write(move |tx| {
            match result {
                Ok(identity) => {
                    if !records::mark_published(tx, id, identity.as_ref())? {
                        return Ok(false);
                    }
                    let msg = if was == "failed" {
                        format!(
                            "edge: {target} {name} published after {attempts} failed attempt(s)"
                        )
                    } else {
                        format!("edge: {target} {name} published")
                    };
                    servers::add_event(tx, sid, None, None, None, "edge", &msg)?;
                }
                Err(e) => {
                    records::mark_failed(tx, id, &e.to_string(), now_ms() + backoff_ms(attempts))?;
                    if was != "failed" {
                        let msg = format!("edge: {target} {name} failed (will retry): {e}");
                        servers::add_event(tx, sid, None, None, None, "edge", &msg)?;
                    }
                }
            }
            Ok::<_, DomainError>(true)
        })
        .await?;
    if ok && !still_wanted {
        take_back(svc, r).await;
        return Ok(false);
    }
    Ok(ok)
}

/// Removes what an attempt published for a record that was removed while the attempt
/// was in flight (the server is being deleted): nothing is left behind at the edge.
async fn take_back(svc: &Services, r: &EdgeRecord) {
    match remove(svc, r).await {
        Ok(()) => tracing::info!(
            server = r.server_id,
            target = %r.target,
            name = %r.name,
            "edge: took back a publish that finished after the record was removed"
        ),
        Err(e) => {
            tracing::warn!(server = r.server_id, target = %r.target, name = %r.name, error = %e,
                "edge: could not take back a publish that finished after the record was removed");
            let (sid, msg) = (
                r.server_id,
                format!(
                    "edge: {} {} was published again after its removal and could not be taken back: {e}",
                    r.target, r.name
                ),
            );
            if let Err(e) = svc
                .db
                .write(move |tx| servers::add_event(tx, sid, None, None, None, "edge", &msg))
                .await
            {
                tracing::warn!(error = %e, "recording a failed take-back");
            }
        }
    }
}

/// Records what `server` should have published and tries every record not yet out.
/// Edge failures are recorded on the records, not returned.
pub async fn publish_server(
    svc: &Services,
    server: &Server,
    template: &Template,
) -> Result<(), DomainError> {
    let wanted = desired(svc, server, template);
    let sid = server.id;
    let list = svc
        .db
        .write(move |tx| {
            let mut out = Vec::new();
            for (target, name, value) in &wanted {
                out.push(records::want(tx, sid, target, name, value)?);
            }
            Ok::<_, DomainError>(out)
        })
        .await?;
    for r in list.iter().filter(|r| r.state != "published") {
        attempt(svc, r).await?;
    }
    Ok(())
}

/// Removes a server's records of the given targets (all when `None`) with the names
/// and identities they were published with. Fails (for the job to retry) when a
/// target could not be reached; what was removed stays removed.
pub async fn unpublish_server(
    svc: &Services,
    server_id: i64,
    targets: Option<&[&str]>,
) -> Result<(), String> {
    let list = svc
        .db
        .call(move |c| records::for_server(c, server_id))
        .await
        .map_err(|e| e.to_string())?;
    let mut failures = Vec::new();
    for r in list
        .iter()
        .filter(|r| targets.is_none_or(|t| t.contains(&r.target.as_str())))
    {
        let outcome = remove(svc, r).await;
        let (id, sid, target, name) = (r.id, r.server_id, r.target.clone(), r.name.clone());
        let err = outcome.as_ref().err().map(|e| e.to_string());
        svc.db
            .write(move |tx| {
                match &err {
                    None => {
                        records::mark_removed(tx, id)?;
                        servers::add_event(
                            tx,
                            sid,
                            None,
                            None,
                            None,
                            "edge",
                            &format!("edge: {target} {name} removed"),
                        )?;
                    }
                    Some(e) => records::note_error(tx, id, e)?,
                }
                Ok::<_, DomainError>(())
            })
            .await
            .map_err(|e| e.to_string())?;
        if let Err(e) = outcome {
            failures.push(e.to_string());
        }
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// The edge part of a reconcile: withdraw what is registered while its game is not
/// ready, re-register what Velocity forgot, retry records that are due, and notice
/// DNS records that vanished.
pub async fn reconcile_edge(svc: &Services) -> Result<(), DomainError> {
    if let Some(v) = &svc.velocity {
        // One look at the proxy serves both directions: what to withdraw, what to add.
        let listed = v.list().await;
        withdraw_unready(svc, listed.as_deref().ok()).await?;
        let want = svc
            .db
            .call(|c| records::published(c, records::VELOCITY))
            .await?;
        match listed {
            Ok(registered) => {
                for r in want {
                    let address = r.desired["address"].as_str().unwrap_or_default();
                    let port = r.desired["port"].as_u64().unwrap_or(0) as u16;
                    let known = registered.iter().any(|g| {
                        g.server_name.eq_ignore_ascii_case(&r.name)
                            && g.address == address
                            && g.port == port
                    });
                    if known {
                        continue;
                    }
                    match v.register(&r.name, address, port).await {
                        Ok(()) if !svc.db.call(move |c| records::is_live(c, r.id)).await? => {
                            // Unpublished while this registration was in flight.
                            take_back(svc, &r).await;
                        }
                        Ok(()) => {
                            svc.reconcile
                                .edge_republished
                                .fetch_add(1, Ordering::Relaxed);
                            let (sid, name) = (r.server_id, r.name.clone());
                            svc.db
                                .write(move |tx| {
                                    servers::add_event(
                                        tx,
                                        sid,
                                        None,
                                        None,
                                        None,
                                        "reconciler",
                                        &format!("edge: velocity {name} registered again (the proxy did not know it)"),
                                    )
                                })
                                .await?;
                        }
                        Err(e) => {
                            svc.reconcile.edge_failures.fetch_add(1, Ordering::Relaxed);
                            let (id, msg) = (r.id, e.to_string());
                            svc.db
                                .write(move |tx| records::mark_failed(tx, id, &msg, now_ms()))
                                .await?;
                        }
                    }
                }
            }
            Err(e) => {
                svc.reconcile.edge_failures.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "reconcile: cannot list Velocity registrations");
            }
        }
    }
    if let Some(dns) = &svc.dns {
        for target in [records::DNS_A, records::DNS_SRV] {
            let list = svc.db.call(move |c| records::published(c, target)).await?;
            for r in list {
                let Some(id) = r
                    .identity
                    .clone()
                    .and_then(|i| serde_json::from_value::<DnsRecordId>(i).ok())
                else {
                    continue;
                };
                if let Ok(false) = dns.exists(&id).await {
                    let rid = r.id;
                    svc.db
                        .write(move |tx| {
                            records::mark_failed(tx, rid, "the record vanished from DNS", now_ms())
                        })
                        .await?;
                }
            }
        }
    }
    let due = svc.db.call(|c| records::due(c, now_ms())).await?;
    for r in due {
        if attempt(svc, &r).await? {
            svc.reconcile
                .edge_republished
                .fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

/// A server is registered with the proxy exactly while its game is ready (`running`).
/// Records left live for a server that is not (an unregister that failed when its game
/// went down) are removed, and so is any registration in `registered` (the proxy's list,
/// when it could be read) under the name of such a server. Registrations under other
/// names are not zlh's and are left alone.
pub async fn withdraw_unready(
    svc: &Services,
    registered: Option<&[crate::edge::velocity::Registration]>,
) -> Result<(), DomainError> {
    let Some(v) = &svc.velocity else {
        return Ok(());
    };
    let stale = svc
        .db
        .call(|c| records::live_for_unready(c, records::VELOCITY))
        .await?;
    let mut servers_done = Vec::new();
    for r in stale {
        if servers_done.contains(&r.server_id) {
            continue;
        }
        servers_done.push(r.server_id);
        if let Err(e) = unpublish_server(svc, r.server_id, Some(&[records::VELOCITY])).await {
            svc.reconcile.edge_failures.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(server = r.server_id, error = %e, "withdrawing a proxy registration");
        } else {
            svc.reconcile.edge_withdrawn.fetch_add(1, Ordering::Relaxed);
        }
    }
    let Some(registered) = registered else {
        return Ok(());
    };
    let unready = svc.db.call(|c| records::unready_server_names(c)).await?;
    for g in registered {
        let Some((sid, _)) = unready
            .iter()
            .find(|(_, name)| g.server_name.eq_ignore_ascii_case(name))
        else {
            continue;
        };
        let (sid, name) = (*sid, g.server_name.clone());
        let message = match v.unregister(&g.server_name).await {
            Ok(()) => {
                svc.reconcile.edge_withdrawn.fetch_add(1, Ordering::Relaxed);
                format!(
                    "edge: velocity {name} unregistered (registered while the game is not ready)"
                )
            }
            Err(e) => {
                svc.reconcile.edge_failures.fetch_add(1, Ordering::Relaxed);
                format!(
                    "edge: velocity {name} is registered while the game is not ready, and unregistering failed: {e}"
                )
            }
        };
        svc.db
            .write(move |tx| servers::add_event(tx, sid, None, None, None, "reconciler", &message))
            .await?;
    }
    Ok(())
}
