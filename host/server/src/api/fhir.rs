//! FHIR REST interactions on resources: create, read, vread, update, patch, delete and
//! instance history, and their conditional forms. Handlers translate HTTP only: every check
//! (scopes, access predicate, policies) is the service layer's (`crate::service`).

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::Value;

use super::SharedState;
use super::extract::{FhirBody, LimitedBody, ReturnPreference, if_match, if_none_match_matches, return_preference};
use super::gate::caller;
use super::gate::requester;
use super::reply::fhir_json;
use crate::auth::{Interaction, Principal};
use crate::fhir::etag;
use crate::fhir::instant::to_http_date;
use crate::fhir::outcome::{FhirError, IssueType, operation_outcome};
use crate::fhir::resource::{IncomingResource, check_id, check_type_name};
use crate::service::{Disclosed, PatchRequest, WriteRequest, Written};
use crate::store::VersionRecord;

/// Type- and instance-level interactions served for every resource type. The
/// CapabilityStatement is generated from this list; keep it in step with [`routes`].
pub const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// System-level interactions served.
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "search-system", "history-system"];

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(super::search::search_system).post(super::bundle::bundle))
        .route("/_search", axum::routing::post(super::search::search_system_post))
        .route(
            "/{type}",
            get(super::search::search_type).post(create).put(conditional_update).delete(conditional_delete),
        )
        .route("/{type}/_search", axum::routing::post(super::search::search_type_post))
        .route("/_history", get(super::feeds::system_history))
        .route("/{type}/_history", get(super::feeds::type_history))
        .route("/{type}/{id}", get(read).put(update).delete(delete).patch(patch))
        .route("/{type}/{id}/_history", get(super::feeds::instance_history))
        .route("/{type}/{id}/{compartment}", get(super::search::search_compartment))
        .route("/{type}/{id}/_history/{vid}", get(vread))
}

async fn create(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    principal.check(Interaction::Create, &res_type)?;
    let resource = IncomingResource::parse(&body, &res_type)?;
    let condition = match headers.get("if-none-exist") {
        Some(value) => {
            let query = value.to_str().map_err(|_| {
                FhirError::bad_request(IssueType::Value, "If-None-Exist must be a search query, e.g. identifier=x|y")
            })?;
            Some(query.rsplit_once('?').map_or(query, |(_, q)| q).to_owned())
        }
        None => None,
    };
    let caller = caller(&principal, &headers)?;
    let written =
        state.records.create(requester(&principal, &caller), &res_type, &resource, condition.as_deref()).await?;
    Ok(written_response(&state, written, &headers))
}

async fn update(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    principal.check(Interaction::Update, &res_type)?;
    let resource = IncomingResource::parse(&body, &res_type)?;
    let caller = caller(&principal, &headers)?;
    let request =
        WriteRequest { res_type: &res_type, id: &id, resource: &resource, if_match: if_match(&headers)?, fresh: false };
    let written = state.records.update(requester(&principal, &caller), request).await?;
    Ok(written_response(&state, written, &headers))
}

/// `PATCH /{type}/{id}` with a JSON Patch (`application/json-patch+json`).
async fn patch(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    LimitedBody(body): LimitedBody,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    let media = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !media.trim_start().starts_with("application/json-patch+json") {
        return Err(FhirError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IssueType::NotSupported,
            "PATCH takes a JSON Patch document (Content-Type: application/json-patch+json)",
        ));
    }
    principal.check(Interaction::Update, &res_type)?;
    let operations: Value = crate::fhir::json::parse_strict(&body)
        .map_err(|e| FhirError::bad_request(IssueType::Structure, format!("the patch is not valid JSON: {e}")))?;
    let caller = caller(&principal, &headers)?;
    let request = PatchRequest { res_type: &res_type, id: &id, operations: &operations, if_match: if_match(&headers)? };
    let written = state.records.patch(requester(&principal, &caller), request).await?;
    Ok(written_response(&state, written, &headers))
}

/// `POST /{type}/$validate`: checks a resource (sent as is, or as the `resource` parameter of
/// a Parameters resource) without storing it; 200 with an OperationOutcome listing every issue
/// (an informational one when there are none). Needs a create or update scope on the type.
pub(super) async fn validate_operation(
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    FhirBody(body): FhirBody,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    principal.check(Interaction::Create, &res_type).or_else(|_| principal.check(Interaction::Update, &res_type))?;
    let value: Value = crate::fhir::json::parse_strict(&body)
        .map_err(|e| FhirError::bad_request(IssueType::Structure, format!("the body is not valid JSON: {e}")))?;
    let resource = if value.get("resourceType").and_then(Value::as_str) == Some("Parameters") {
        value["parameter"]
            .as_array()
            .and_then(|p| p.iter().find(|p| p["name"] == "resource"))
            .map(|p| p["resource"].clone())
            .ok_or_else(|| {
                FhirError::bad_request(IssueType::Required, "Parameters must carry a 'resource' parameter")
            })?
    } else {
        value
    };
    let bytes = serde_json::to_vec(&resource).map_err(|_| FhirError::internal())?;
    let outcome = match IncomingResource::parse(&bytes, &res_type) {
        Ok(_) => operation_outcome("information", IssueType::Informational, "no issues found", None),
        Err(error) if error.status == StatusCode::BAD_REQUEST => error.outcome(),
        Err(error) => return Err(error),
    };
    Ok(fhir_json(StatusCode::OK, serde_json::to_vec(&outcome).map_err(|_| FhirError::internal())?))
}

/// `PUT /{type}?search`: updates the one match, creates when there is none, 412 when several.
async fn conditional_update(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    principal.check(Interaction::Update, &res_type)?;
    let resource = IncomingResource::parse(&body, &res_type)?;
    let caller = caller(&principal, &headers)?;
    let written = state
        .records
        .conditional_update(
            requester(&principal, &caller),
            &res_type,
            query.as_deref().unwrap_or(""),
            &resource,
            if_match(&headers)?,
        )
        .await?;
    Ok(written_response(&state, written, &headers))
}

/// `DELETE /{type}?search`: deletes the one match; 404 when none, 412 when several.
async fn conditional_delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    principal.check(Interaction::Delete, &res_type)?;
    let caller = caller(&principal, &headers)?;
    let who = requester(&principal, &caller);
    let (id, version) =
        state.records.conditional_delete(who, &res_type, query.as_deref().unwrap_or(""), if_match(&headers)?).await?;
    Ok(deleted_response(&res_type, &id, version))
}

async fn read(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    axum::extract::RawQuery(_query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    let caller = caller(&principal, &headers)?;
    let record = state.records.read(requester(&principal, &caller), &res_type, &id).await?;
    if if_none_match_matches(&headers, record.version) {
        let mut response = StatusCode::NOT_MODIFIED.into_response();
        set_version_headers(&mut response, record.version, record.last_updated_us);
        return Ok(response);
    }
    Ok(record_response(record))
}

async fn vread(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id, vid)): Path<(String, String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    let version =
        vid.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
            FhirError::bad_request(IssueType::Value, "version ids on this server are positive integers")
        })?;
    let caller = caller(&principal, &headers)?;
    let record = state.records.vread(requester(&principal, &caller), &res_type, &id, version).await?;
    Ok(record_response(record))
}

async fn delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    principal.check(Interaction::Delete, &res_type)?;
    let caller = caller(&principal, &headers)?;
    let version = state.records.delete(requester(&principal, &caller), &res_type, &id, if_match(&headers)?).await?;
    Ok(deleted_response(&res_type, &id, version))
}

/// The answer to a delete: which version records it (`None`: it was deleted before).
fn deleted_response(res_type: &str, id: &str, version: Option<i64>) -> Response {
    let message = match version {
        Some(version) => format!("deleted {res_type}/{id}; version {version} records the deletion"),
        None => format!("{res_type}/{id} was already deleted"),
    };
    let outcome = operation_outcome("information", IssueType::Informational, &message, None);
    let mut response = fhir_json(StatusCode::OK, serde_json::to_vec(&outcome).unwrap_or_default());
    if let Some(version) = version {
        insert_header(&mut response, header::ETAG, &etag(version));
    }
    response
}

fn insert_header(response: &mut Response, name: header::HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn set_version_headers(response: &mut Response, version: i64, last_updated_us: i64) {
    insert_header(response, header::ETAG, &etag(version));
    insert_header(response, header::LAST_MODIFIED, &to_http_date(last_updated_us));
}

pub(super) fn record_response(record: VersionRecord) -> Response {
    let disclosed = Disclosed::patient_of(&record);
    let mut response = fhir_json(StatusCode::OK, record.body.unwrap_or_default());
    set_version_headers(&mut response, record.version, record.last_updated_us);
    response.extensions_mut().insert(disclosed);
    response
}

/// The answer to a create or update: 201 (with Location) or 200, ETag and Last-Modified, and
/// the body the client asked for with `Prefer: return=`; or, for a conditional create that
/// found its match, that resource.
fn written_response(state: &SharedState, written: Written, headers: &HeaderMap) -> Response {
    let (res_type, id, key_id, written) = match written {
        Written::Existing(record) => return record_response(record),
        Written::Stored { res_type, id, key_id, result } => (res_type, id, key_id, result),
    };
    let status = if written.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = match return_preference(headers) {
        ReturnPreference::Representation => fhir_json(status, written.body),
        ReturnPreference::Minimal => status.into_response(),
        ReturnPreference::OperationOutcome => {
            let verb = if written.created { "created" } else { "updated" };
            let message = format!("{verb} {res_type}/{id} at version {}", written.version);
            let outcome = operation_outcome("information", IssueType::Informational, &message, None);
            fhir_json(status, serde_json::to_vec(&outcome).unwrap_or_default())
        }
    };
    set_version_headers(&mut response, written.version, written.last_updated_us);
    if written.created {
        let location = format!("{}/{res_type}/{id}/_history/{}", state.settings.base_url, written.version);
        insert_header(&mut response, header::LOCATION, &location);
    }
    response.extensions_mut().insert(Disclosed::compartment(&key_id));
    response
}
