//! `/healthz`: the process is alive. `/readyz`: it can serve (database reachable, schema
//! current; the key provider's state reported as `keys`); load balancers and Kubernetes route
//! traffic by it.

use std::time::Duration;

use actix_web::{HttpResponse, web};
use serde_json::json;

use super::AppState;

const READINESS_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok", "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn readyz(state: web::Data<AppState>) -> HttpResponse {
    let backend = state.db.backend().as_str();
    let unavailable = |reason: String| {
        HttpResponse::ServiceUnavailable()
            .insert_header(("Retry-After", "5"))
            .json(json!({ "status": "unavailable", "database": backend, "reason": reason }))
    };
    let (migrations, keys) = tokio::join!(
        tokio::time::timeout(READINESS_TIMEOUT, state.db.pending_migrations()),
        tokio::time::timeout(READINESS_TIMEOUT, state.key_provider.current_kek_id()),
    );
    // The node serves sign-in, pages and rooms whose keys it holds in memory without the key
    // provider (Vault); taking every node out of rotation while Vault restarts would be a full
    // outage, so a silent provider makes the node "degraded", still ready.
    let keys = match keys {
        Ok(Ok(_)) => "ok",
        Ok(Err(e)) => {
            tracing::warn!(error = %e, provider = %state.key_provider.describe(),
                "readiness check: key provider unavailable");
            "unavailable"
        }
        Err(_) => {
            tracing::warn!(provider = %state.key_provider.describe(),
                "readiness check: key provider did not answer within {READINESS_TIMEOUT:?}");
            "unavailable"
        }
    };
    match migrations {
        Err(_) => unavailable(format!(
            "database did not answer within {READINESS_TIMEOUT:?}"
        )),
        Ok(Err(e)) => {
            // The cause (host, user, driver message) is for the log, not for anonymous callers.
            tracing::warn!(error = %format!("{e:#}"), "readiness check: database unreachable");
            unavailable("database unreachable".to_owned())
        }
        Ok(Ok(0)) => HttpResponse::Ok().json(json!({
            "status": if keys == "ok" { "ready" } else { "degraded" },
            "database": backend,
            "migrations": "current",
            "keys": keys,
        })),
        Ok(Ok(n)) => unavailable(format!(
            "{n} database migrations are not applied; run `conclave migrate`"
        )),
    }
}
