//! The audit log over FHIR: `GET /AuditEvent?...`, `POST /AuditEvent/_search` and
//! `GET /AuditEvent/{seq}`, with the `admin/audit` scope only (a clinical token never reads
//! the audit log). Each entry of the hash chain is served as an `AuditEvent` whose id is its
//! sequence number; AuditEvents cannot be written, changed or deleted through the API.
//! Reading the log is itself audited (as `search-type` / `read` of AuditEvent).

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{Value, json};

use super::SharedState;
use super::reply::fhir_json;
use super::search::{form_pairs, pairs_of, respond, strict_handling};
use crate::audit::AuditEvent;
use crate::audit::lookup::{AuditQuery, parse_query, to_resource};
use crate::auth::Principal;
use crate::fhir::outcome::{FhirError, IssueType, operation_outcome};
use crate::service::Disclosed;
use crate::store::StoredAuditEntry;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/AuditEvent", get(search).post(read_only).put(read_only).delete(read_only))
        .route("/AuditEvent/_search", axum::routing::post(search_post))
        .route("/AuditEvent/{id}", get(read).put(read_only).delete(read_only).patch(read_only))
}

/// Every write to an AuditEvent: 405.
async fn read_only() -> FhirError {
    FhirError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        IssueType::NotSupported,
        "AuditEvent resources are this server's audit log: they are written by the server only and never \
         changed; read them with GET /AuditEvent (scope admin/audit)",
    )
}

async fn search(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    principal.require_admin("audit")?;
    run(&state, &headers, pairs_of(query.as_deref().unwrap_or(""))).await
}

async fn search_post(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    principal.require_admin("audit")?;
    run(&state, &headers, form_pairs(query.as_deref(), &headers, &body)?).await
}

async fn read(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Response, FhirError> {
    principal.require_admin("audit")?;
    let missing = || FhirError::not_found(format!("the audit log has no entry '{id}'"));
    let seq: i64 = id.parse().ok().filter(|s| *s > 0).ok_or_else(missing)?;
    let stored = state.store.audit_entries_at(&[seq]).await?.pop().ok_or_else(missing)?;
    let resource = render(&stored)?;
    Ok(fhir_json(StatusCode::OK, serde_json::to_vec(&resource).map_err(|_| FhirError::internal())?))
}

/// An entry as a FHIR AuditEvent; an entry that does not parse is a broken chain, which the
/// verifier reports, and is answered as a server error rather than shown half.
fn render(stored: &StoredAuditEntry) -> Result<Value, FhirError> {
    let event: AuditEvent = serde_json::from_str(&stored.entry).map_err(|_| {
        tracing::error!(seq = stored.seq, "INTEGRITY ALERT: an audit entry does not parse; run hearth audit verify");
        FhirError::internal()
    })?;
    Ok(to_resource(stored.seq, &event, &stored.hash))
}

async fn run(state: &SharedState, headers: &HeaderMap, pairs: Vec<(String, String)>) -> Result<Response, FhirError> {
    let query = parse_query(&pairs, strict_handling(headers))
        .map_err(|message| FhirError::bad_request(IssueType::Value, message))?;
    // Refusals are queued, not waited for: the ones answered so far are in the answer.
    if let Err(failure) = state.audit.settle().await {
        tracing::warn!(error = %failure.message, "queued refusals could not be written before an audit search");
    }
    let (entries, more) = state.store.search_audit(&query).await?;
    let base = &state.settings.base_url;
    let mut returned = Disclosed::default();
    let mut bundle_entries = Vec::with_capacity(entries.len() + 1);
    for stored in &entries {
        let resource = render(stored)?;
        returned.ids.push(format!("AuditEvent/{}", stored.seq));
        bundle_entries.push(json!({
            "fullUrl": format!("{base}/AuditEvent/{}", stored.seq),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    if !query.ignored.is_empty() {
        let message = format!(
            "ignored parameters not supported for AuditEvent: {} (Prefer: handling=strict refuses them)",
            query.ignored.join(", ")
        );
        bundle_entries.push(json!({
            "resource": operation_outcome("warning", IssueType::NotSupported, &message, None),
            "search": {"mode": "outcome"},
        }));
    }
    let mut links = vec![json!({"relation": "self", "url": link(base, &pairs, &query, query.cursor)})];
    if more && let Some(last) = entries.last() {
        links.push(json!({"relation": "next", "url": link(base, &pairs, &query, Some(last.seq))}));
    }
    respond(returned, &crate::service::searchset(links, bundle_entries))
}

/// The URL of a page: the search's own parameters (as understood) and the cursor.
fn link(base: &str, pairs: &[(String, String)], query: &AuditQuery, cursor: Option<i64>) -> String {
    let mut url = form_urlencoded::Serializer::new(String::new());
    for (key, value) in pairs {
        if key != "_cursor" && !query.ignored.contains(key) {
            url.append_pair(key, value);
        }
    }
    if let Some(cursor) = cursor {
        url.append_pair("_cursor", &cursor.to_string());
    }
    format!("{base}/AuditEvent?{}", url.finish())
}
