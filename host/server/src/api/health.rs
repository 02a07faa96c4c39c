//! Liveness and readiness probes for orchestrators and load balancers.
//!
//! `/healthz`: the process is up and serving HTTP. `/readyz`: it can also reach its database.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use super::SharedState;

pub fn routes() -> Router<SharedState> {
    Router::new().route("/healthz", get(healthz)).route("/readyz", get(readyz))
}

async fn healthz() -> &'static str {
    "ok"
}

/// Ready when the database answers and its schema is the one this build knows (another host
/// may have migrated it further).
async fn readyz(State(state): State<SharedState>) -> (StatusCode, &'static str) {
    match state.store.schema_status().await {
        Ok(schema) if schema.newer().is_some() => {
            (StatusCode::SERVICE_UNAVAILABLE, "database schema is newer than this server")
        }
        Ok(schema) if !schema.pending().is_empty() => {
            (StatusCode::SERVICE_UNAVAILABLE, "database schema migrations pending")
        }
        Ok(_) => (StatusCode::OK, "ready"),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unreachable")
        }
    }
}
