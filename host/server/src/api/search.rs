//! FHIR search over HTTP: `GET /{type}?...`, `POST /{type}/_search`, compartment search
//! (`GET /Patient/{id}/{type}?...`) and system search (`GET /?_type=...`). The search itself,
//! with the access predicate and the policies, is the service layer's (`crate::service`).

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::Value;

use super::SharedState;
use super::gate::caller;
use super::gate::requester;
use super::reply::fhir_json;
use crate::auth::Principal;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::resource::{check_id, check_type_name};
use crate::service::{Disclosed, SearchRequest};

/// Types in one system-level search at most.
const MAX_SYSTEM_TYPES: usize = 20;

pub async fn search_type(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    let pairs = pairs_of(query.as_deref().unwrap_or(""));
    run(&state, &principal, &headers, vec![res_type.clone()], pairs, None, res_type).await
}

/// `POST /{type}/_search`: parameters in a form-encoded body (and possibly the URL too).
pub async fn search_type_post(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    let pairs = form_pairs(query.as_deref(), &headers, &body)?;
    run(&state, &principal, &headers, vec![res_type.clone()], pairs, None, res_type).await
}

/// `GET /Patient/{id}/{type}`: the search confined to one patient's compartment.
pub async fn search_compartment(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((compartment, id, res_type)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&compartment)?;
    check_id(&id)?;
    check_type_name(&res_type)?;
    if compartment != "Patient" {
        return Err(FhirError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotSupported,
            "only the Patient compartment can be searched (GET /Patient/{id}/{type})",
        ));
    }
    let pairs = pairs_of(query.as_deref().unwrap_or(""));
    let path = format!("Patient/{id}/{res_type}");
    run(&state, &principal, &headers, vec![res_type], pairs, Some(id), path).await
}

/// `GET /?_type=A,B&...` and `POST /_search`.
pub async fn search_system(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    let pairs = pairs_of(query.as_deref().unwrap_or(""));
    system(&state, &principal, &headers, pairs).await
}

pub async fn search_system_post(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, FhirError> {
    let pairs = form_pairs(query.as_deref(), &headers, &body)?;
    system(&state, &principal, &headers, pairs).await
}

async fn system(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    pairs: Vec<(String, String)>,
) -> Result<Response, FhirError> {
    let mut types: Vec<String> = pairs
        .iter()
        .filter(|(k, _)| k == "_type")
        .flat_map(|(_, v)| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    if types.is_empty() {
        return Err(FhirError::bad_request(
            IssueType::Required,
            "a system-level search must name its types with _type (e.g. /?_type=Patient,Practitioner)",
        ));
    }
    if types.len() > MAX_SYSTEM_TYPES {
        return Err(FhirError::bad_request(
            IssueType::TooCostly,
            format!("_type may name at most {MAX_SYSTEM_TYPES} types"),
        ));
    }
    for t in &types {
        check_type_name(t)?;
    }
    types.sort();
    types.dedup();
    run(state, principal, headers, types, pairs, None, String::new()).await
}

pub(super) fn pairs_of(query: &str) -> Vec<(String, String)> {
    form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect()
}

pub(super) fn form_pairs(
    query: Option<&str>,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Vec<(String, String)>, FhirError> {
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !body.is_empty() && !media.trim_start().starts_with("application/x-www-form-urlencoded") {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            "POST _search takes its parameters as application/x-www-form-urlencoded",
        ));
    }
    let body = std::str::from_utf8(body)
        .map_err(|_| FhirError::bad_request(IssueType::Structure, "the form body is not valid UTF-8"))?;
    let mut pairs = pairs_of(query.unwrap_or(""));
    pairs.extend(pairs_of(body));
    Ok(pairs)
}

/// Strict handling (unknown or unsupported parameters, modifiers and comparators are a 400
/// naming them) unless the client asks for `Prefer: handling=lenient`, which ignores them,
/// leaves them out of the `self` link and says so in the Bundle.
pub(super) fn strict_handling(headers: &HeaderMap) -> bool {
    !headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|d| d.trim().replace(' ', "") == "handling=lenient")
}

/// Runs a search for the HTTP layer: the searchset Bundle and what it disclosed.
pub(super) async fn search_bundle(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    types: Vec<String>,
    pairs: Vec<(String, String)>,
    compartment: Option<String>,
    path: String,
) -> Result<(Value, Disclosed), FhirError> {
    let caller = caller(principal, headers)?;
    let request = SearchRequest { types, pairs, compartment, path, strict: strict_handling(headers) };
    let found = state.records.search(requester(principal, &caller), request).await?;
    Ok((found.bundle, found.disclosed))
}

async fn run(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    types: Vec<String>,
    pairs: Vec<(String, String)>,
    compartment: Option<String>,
    path: String,
) -> Result<Response, FhirError> {
    let (bundle, disclosed) = search_bundle(state, principal, headers, types, pairs, compartment, path).await?;
    respond(disclosed, &bundle)
}

/// A 200 answer with `bundle`, carrying what it disclosed for the audit entry.
pub(super) fn respond(disclosed: Disclosed, bundle: &Value) -> Result<Response, FhirError> {
    let mut response = fhir_json(StatusCode::OK, serde_json::to_vec(bundle).map_err(|_| FhirError::internal())?);
    response.extensions_mut().insert(disclosed);
    Ok(response)
}
