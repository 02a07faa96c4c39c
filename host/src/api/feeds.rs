//! Reads that span many resources outside search: `Patient/{id}/$everything` and type- and
//! system-level `_history`. Both page with opaque cursors and pass every record through the
//! token's reach and the policy plugins, like search.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use base64::Engine as _;
use serde_json::{Value, json};

use super::SharedState;
use super::fhir::{fhir_json, store_error};
use super::gate::{admit_records, caller};
use super::search::{ReturnedIds, pairs_of};
use crate::auth::{Interaction, Principal, forbidden};
use crate::fhir::bundle::{Link, history_bundle};
use crate::fhir::compartment::patient_key_id;
use crate::fhir::instant::parse_instant;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::resource::{check_id, check_type_name};
use crate::fhir::resource_types::is_resource_type;
use crate::policy::PolicyInteraction;
use crate::store::StoreError;

const DEFAULT_COUNT: usize = 100;
const MAX_COUNT: usize = 1000;

/// Paging parameters shared by both feeds.
struct Paging {
    count: usize,
    since: Option<(String, i64)>,
    cursor: Option<String>,
    types: Vec<String>,
}

fn paging(query: Option<&str>, allow_types: bool) -> Result<Paging, FhirError> {
    let mut paging = Paging { count: DEFAULT_COUNT, since: None, cursor: None, types: Vec::new() };
    for (key, value) in pairs_of(query.unwrap_or("")) {
        match key.as_str() {
            "_count" => {
                paging.count = value.parse().ok().filter(|c| (1..=MAX_COUNT).contains(c)).ok_or_else(|| {
                    FhirError::bad_request(
                        IssueType::Value,
                        format!("_count must be a whole number from 1 to {MAX_COUNT}"),
                    )
                })?;
            }
            "_since" => {
                let at = parse_instant(&value).ok_or_else(|| {
                    FhirError::bad_request(IssueType::Value, "_since must be an instant, e.g. 2026-01-31T12:00:00Z")
                })?;
                paging.since = Some((value, at));
            }
            "_cursor" => paging.cursor = Some(value),
            "_type" if allow_types => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    check_type_name(t)?;
                    paging.types.push(t.to_owned());
                }
            }
            _ => {}
        }
    }
    Ok(paging)
}

fn encode_cursor(parts: &[String]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join("\n"))
}

fn decode_cursor(text: &str, fields: usize) -> Result<Vec<String>, FhirError> {
    let bad =
        || FhirError::bad_request(IssueType::Value, "_cursor is not one this server issued; start from the first page");
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(text).map_err(|_| bad())?;
    let parts: Vec<String> = String::from_utf8(bytes).map_err(|_| bad())?.split('\n').map(str::to_owned).collect();
    if parts.len() != fields { Err(bad()) } else { Ok(parts) }
}

fn page_url(base: &str, path: &str, paging: &Paging, cursor: Option<&str>) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    query.append_pair("_count", &paging.count.to_string());
    if let Some((since, _)) = &paging.since {
        query.append_pair("_since", since);
    }
    if !paging.types.is_empty() {
        query.append_pair("_type", &paging.types.join(","));
    }
    if let Some(cursor) = cursor {
        query.append_pair("_cursor", cursor);
    }
    format!("{base}/{path}?{}", query.finish())
}

/// `GET /Patient/{id}/$everything`: the patient and every current record in their
/// compartment (everything sealed under their data key), by type and id, paged.
pub async fn everything(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
    query: Option<&str>,
) -> Result<Response, FhirError> {
    check_id(id)?;
    let access = principal.access(Interaction::Read, "Patient")?;
    let paging = paging(query, true)?;
    let patient = state.store.read_current("Patient", id).await.map_err(store_error)?;
    let patient =
        patient.filter(|p| !p.deleted).ok_or_else(|| FhirError::not_found(format!("Patient/{id} does not exist")))?;
    if !access.is_unrestricted() {
        let content = patient.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
        if !access.permits("Patient", id, &content) {
            return Err(forbidden(format!("Patient/{id} is outside what this token may reach")));
        }
    }
    let after = paging.cursor.as_deref().map(|c| decode_cursor(c, 2)).transpose()?;
    let (records, more) = state
        .store
        .compartment_page(
            &patient_key_id(id),
            &paging.types,
            paging.since.as_ref().map(|(_, at)| *at),
            after.as_ref().map(|a| (a[0].as_str(), a[1].as_str())),
            paging.count,
        )
        .await
        .map_err(|error| match error {
            StoreError::Erased => FhirError::gone(format!("Patient/{id}'s records were erased")),
            other => store_error(other),
        })?;
    let next = more.then(|| records.last().map(|r| encode_cursor(&[r.res_type.clone(), r.id.clone()]))).flatten();
    let caller = caller(principal, headers)?;
    let reach = |t: &str| principal.access(Interaction::Read, t).ok();
    let records = admit_records(state, &caller, PolicyInteraction::Read, records, &reach).await?;
    let base = &state.settings.base_url;
    let path = format!("Patient/{id}/$everything");
    let mut links = vec![json!({"relation": "self", "url": page_url(base, &path, &paging, paging.cursor.as_deref())})];
    if let Some(next) = &next {
        links.push(json!({"relation": "next", "url": page_url(base, &path, &paging, Some(next))}));
    }
    let mut returned = ReturnedIds::default();
    let mut entries = Vec::with_capacity(records.len());
    for record in &records {
        let resource: Value =
            record.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()).ok_or_else(FhirError::internal)?;
        returned.add(record);
        entries.push(json!({
            "fullUrl": format!("{base}/{}/{}", record.res_type, record.id),
            "resource": resource,
            "search": {"mode": "match"},
        }));
    }
    returned.respond(&super::search::searchset(links, entries))
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
    principal.access(Interaction::HistoryInstance, &res_type)?;
    history(&state, &principal, &headers, Some(&res_type), query.as_deref()).await
}

/// `GET /_history`
pub async fn system_history(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    history(&state, &principal, &headers, None, query.as_deref()).await
}

async fn history(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    res_type: Option<&str>,
    query: Option<&str>,
) -> Result<Response, FhirError> {
    let paging = paging(query, false)?;
    let before = match paging.cursor.as_deref().map(|c| decode_cursor(c, 4)).transpose()? {
        Some(parts) => {
            let bad = || FhirError::bad_request(IssueType::Value, "_cursor is not one this server issued");
            let at: i64 = parts[0].parse().map_err(|_| bad())?;
            let version: i64 = parts[3].parse().map_err(|_| bad())?;
            if !is_resource_type(&parts[1]) {
                return Err(bad());
            }
            Some((at, parts[1].clone(), parts[2].clone(), version))
        }
        None => None,
    };
    let (versions, more) = state
        .store
        .history_all(
            res_type,
            paging.since.as_ref().map(|(_, at)| *at),
            before.as_ref().map(|(at, t, id, v)| (*at, t.as_str(), id.as_str(), *v)),
            paging.count,
        )
        .await
        .map_err(store_error)?;
    let next = more
        .then(|| {
            versions.last().map(|v| {
                encode_cursor(&[v.last_updated_us.to_string(), v.res_type.clone(), v.id.clone(), v.version.to_string()])
            })
        })
        .flatten();
    let caller = caller(principal, headers)?;
    let reach = |t: &str| principal.access(Interaction::Read, t).ok();
    let versions = admit_records(state, &caller, PolicyInteraction::History, versions, &reach).await?;
    let base = &state.settings.base_url;
    let path = res_type.map_or_else(|| "_history".to_owned(), |t| format!("{t}/_history"));
    let mut links = vec![Link { relation: "self", url: page_url(base, &path, &paging, paging.cursor.as_deref()) }];
    if let Some(next) = &next {
        links.push(Link { relation: "next", url: page_url(base, &path, &paging, Some(next)) });
    }
    let mut returned = ReturnedIds::default();
    versions.iter().for_each(|v| returned.add(v));
    let bundle = history_bundle(base, &versions, None, links).map_err(|_| FhirError::internal())?;
    let mut response = fhir_json(StatusCode::OK, bundle);
    response.extensions_mut().insert(returned);
    Ok(response)
}
