//! Reads that span many resources outside search: `Patient/{id}/$everything` and type- and
//! system-level `_history`. The service layer pages them with sealed cursors, through the
//! token's reach and the policy plugins, like search.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use super::SharedState;
use super::fhir::{HistoryParams, history_feed, requester};
use super::gate::caller;
use crate::auth::Principal;
use crate::fhir::outcome::FhirError;
use crate::fhir::resource::{check_id, check_type_name};
use crate::service::{Disclosed, EverythingRequest};
use crate::store::HistoryOf;

const DEFAULT_COUNT: usize = 100;

/// `GET /Patient/{id}/$everything`: the patient and every current record in their
/// compartment (everything sealed under their data key) that the token may read, by type and
/// id, paged.
pub async fn everything(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
    query: Option<&str>,
) -> Result<Response, FhirError> {
    check_id(id)?;
    let params = HistoryParams::parse(query, DEFAULT_COUNT)?;
    let caller = caller(principal, headers)?;
    let request = EverythingRequest {
        patient: id,
        types: &params.types,
        since: params.since.as_ref().map(|(_, at)| *at),
        count: params.count,
        cursor: params.cursor.as_deref(),
        params: params.shaping(),
    };
    let (records, next) = state.records.everything(requester(principal, &caller), request).await?;
    let base = &state.settings.base_url;
    let path = format!("Patient/{id}/$everything");
    let mut links = vec![json!({"relation": "self", "url": params.page_url(base, &path, params.cursor.as_deref())})];
    if let Some(next) = &next {
        links.push(json!({"relation": "next", "url": params.page_url(base, &path, Some(next))}));
    }
    let mut disclosed = Disclosed::default();
    let mut entries = Vec::with_capacity(records.len());
    for record in &records {
        let resource: Value =
            record.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()).ok_or_else(FhirError::internal)?;
        disclosed.add(record);
        entries.push(json!({
            "fullUrl": format!("{base}/{}/{}", record.res_type, record.id),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    super::search::respond(disclosed, &crate::service::searchset(links, entries))
}

/// `GET /{type}/_history`
pub async fn type_history(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    history_feed(&state, &principal, &headers, HistoryOf::Type(&res_type), query.as_deref()).await
}

/// `GET /_history`
pub async fn system_history(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    history_feed(&state, &principal, &headers, HistoryOf::System, query.as_deref()).await
}
