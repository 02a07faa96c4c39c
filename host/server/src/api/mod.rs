//! The HTTP surface: the router, shared state, and the layers every request passes through.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::auth::token::TokenVerifier;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::store::Store;
use capability::{Implemented, capability_statement};

mod admin;
mod audit;
mod audit_events;
mod auth;
pub(crate) mod bundle;
mod capability;
pub(crate) mod compliance;
pub(crate) mod console;
mod convert;
mod export;
mod extract;
mod feeds;
mod fhir;
pub(crate) mod gate;
mod health;
mod metrics;
mod operations;
mod plugins;
mod reply;
mod search;

/// Settings of the HTTP layer.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// The public base URL of the FHIR endpoint, without a trailing slash; used in Location
    /// headers, Bundle links and fullUrls.
    pub base_url: String,
    /// The largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// The most entries a transaction or batch Bundle may hold.
    pub max_bundle_entries: usize,
    /// A compliance-console session ends after this long without a request.
    pub console_idle: std::time::Duration,
    /// What the server runs with, for the compliance evidence (configuration findings, the
    /// policies folder, the audit signing key).
    pub serve: Arc<crate::config::ServeSettings>,
}

/// The plugin side of the server: loaded plugins, policy bindings, the outbox worker's
/// wake-up signal and the keys plugin signatures must come from.
#[derive(Clone)]
pub struct PluginServices {
    pub registry: Arc<crate::plugins::PluginRegistry>,
    pub policies: Arc<crate::policy::PolicyEngine>,
    pub delivery_wake: Arc<tokio::sync::Notify>,
    pub trust_keys: Arc<Vec<crate::plugins::signing::TrustKey>>,
}

/// State shared by every handler.
pub struct AppState {
    pub store: Store,
    /// Every read, search, history and write of resources goes through here.
    pub records: crate::service::Records,
    pub tokens: Arc<TokenVerifier>,
    pub audit: crate::audit::AuditLog,
    pub metrics: metrics::Metrics,
    pub settings: ApiSettings,
    pub plugins: PluginServices,
    /// Sessions of the compliance console.
    pub console: console::ConsoleState,
    /// The CapabilityStatement, rendered once at start-up.
    capability: Vec<u8>,
}

pub type SharedState = Arc<AppState>;

/// Builds the application router over `store`.
pub fn router(
    store: Store,
    tokens: Arc<TokenVerifier>,
    audit: crate::audit::AuditLog,
    settings: ApiSettings,
    plugins: PluginServices,
) -> Router {
    let capability = capability_statement(&Implemented {
        base_url: &settings.base_url,
        software_version: env!("CARGO_PKG_VERSION"),
        type_interactions: fhir::TYPE_INTERACTIONS,
        system_interactions: fhir::SYSTEM_INTERACTIONS,
    });
    let records = crate::service::Records::new(
        store.clone(),
        plugins.policies.clone(),
        plugins.delivery_wake.clone(),
        settings.base_url.clone(),
    );
    let state = Arc::new(AppState {
        store,
        records,
        tokens,
        audit,
        metrics: metrics::Metrics::default(),
        settings,
        plugins,
        console: console::ConsoleState::default(),
        capability: serde_json::to_vec(&capability).expect("serialising a JSON value cannot fail"),
    });
    // Everything but discovery and health needs a bearer token.
    let protected = fhir::routes()
        .merge(audit_events::routes())
        .merge(admin::routes())
        .merge(compliance::routes())
        .merge(plugins::routes())
        .route("/$export-status/{id}", axum::routing::get(export::status_route).delete(export::cancel_route))
        .route("/metrics", axum::routing::get(metrics::metrics))
        .route_layer(middleware::from_fn(extract::negotiate_format))
        // Routes that answer other formats: NDJSON files, and HL7 v2 acknowledgements.
        .route("/$export-file/{id}/{file}", axum::routing::get(export::file_route))
        .route("/admin/compliance/pack", compliance::pack_route())
        // The operations, each with its own format negotiation (see operations.rs).
        .merge(operations::routes())
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::authenticate))
        .route_layer(middleware::from_fn_with_state(state.clone(), audit::record));
    let public = Router::new()
        .route("/metadata", axum::routing::get(metadata).route_layer(middleware::from_fn(extract::negotiate_format)))
        .route("/.well-known/smart-configuration", axum::routing::get(auth::smart_configuration));
    let app = Router::new()
        .merge(health::routes())
        .merge(public)
        .merge(protected)
        .merge(console::routes(state.clone()))
        .fallback(unknown_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), request_log))
        .with_state(state.clone());
    // The console sends its API requests through this same router.
    state.console.attach(app.clone());
    app
}

async fn unknown_route() -> FhirError {
    FhirError::new(StatusCode::NOT_FOUND, IssueType::NotSupported, "no FHIR interaction is served at this path")
}

async fn method_not_allowed() -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        "this HTTP method is not supported at this path; GET /metadata lists what is",
    )
}

async fn metadata(State(state): State<SharedState>) -> Response {
    let mut response = state.capability.clone().into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(crate::fhir::FHIR_JSON));
    response
}

/// The id of one request, echoed in `X-Request-Id` and attached to every log line it causes.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

/// Gives each request an id and logs one line when it completes: method, route template (never
/// the concrete URL, whose query may hold search values that are PHI), status and latency.
async fn request_log(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let request_id = uuid::Uuid::new_v4().simple().to_string();
    let method = request.method().clone();
    let route =
        request.extensions().get::<MatchedPath>().map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    request.extensions_mut().insert(RequestId(request_id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %method,
        route = %route,
        principal = tracing::field::Empty
    );
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed().as_secs_f64();
    let latency_ms = elapsed * 1000.0;
    let status = response.status().as_u16();
    state.metrics.observe(&route, method.as_str(), status, elapsed);
    span.in_scope(|| {
        if response.status().is_server_error() {
            tracing::warn!(status, latency_ms, "request failed");
        } else {
            tracing::info!(status, latency_ms, "request completed");
        }
    });
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
