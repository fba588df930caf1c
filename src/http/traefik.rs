//! `GET /traefik/config`: Traefik's HTTP-provider document, rendered from the edge
//! records on every request (stateless; Traefik polls it). Protected by the bearer
//! token in `edge.traefik.token`. Nothing is written to other hosts.

use axum::extract::State;
use axum::http::{HeaderMap, header};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Map, Value, json};

use crate::domain::DomainError;
use crate::domain::edge::{self as records, EdgeRecord};
use crate::error::AppError;
use crate::http::AppState;

pub fn router() -> Router<AppState> {
    Router::new().route("/traefik/config", get(config))
}

async fn config(State(st): State<AppState>, headers: HeaderMap) -> Result<Json<Value>, AppError> {
    let Some(t) = &st.config.edge.traefik else {
        return Err(AppError::NotFound(
            "Traefik is not configured (edge.traefik)".into(),
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if !crate::agent::constant_time_eq(presented.as_bytes(), t.token.as_bytes()) {
        return Err(AppError::Unauthorized);
    }
    let (tcp, udp) = st
        .db
        .call(|c| {
            Ok::<_, DomainError>((
                records::published(c, records::TRAEFIK_TCP)?,
                records::published(c, records::TRAEFIK_UDP)?,
            ))
        })
        .await?;
    Ok(Json(render(&tcp, &udp)))
}

/// The dynamic configuration: one router and service per route; plain TCP routes
/// match `HostSNI(*)` on an entry point of their own (TCP has no hostnames to route by).
pub fn render(tcp: &[EdgeRecord], udp: &[EdgeRecord]) -> Value {
    let mut doc = Map::new();
    for (proto, list) in [("tcp", tcp), ("udp", udp)] {
        if list.is_empty() {
            continue;
        }
        let mut routers = Map::new();
        let mut services = Map::new();
        for r in list {
            let mut router = json!({
                "entryPoints": [r.desired["entrypoint"]],
                "service": r.name,
            });
            if proto == "tcp" {
                router["rule"] = json!("HostSNI(`*`)");
            }
            routers.insert(r.name.clone(), router);
            services.insert(
                r.name.clone(),
                json!({"loadBalancer": {"servers": [{"address": r.desired["address"]}]}}),
            );
        }
        doc.insert(
            proto.into(),
            json!({"routers": routers, "services": services}),
        );
    }
    Value::Object(doc)
}
