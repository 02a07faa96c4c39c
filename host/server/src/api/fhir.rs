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
use crate::auth::{Interaction, Principal};
use crate::fhir::bundle::{Link, history_bundle};
use crate::fhir::instant::{parse_instant, to_http_date};
use crate::fhir::outcome::{FhirError, IssueType, operation_outcome};
use crate::fhir::resource::{IncomingResource, check_id, check_type_name};
use crate::fhir::{FHIR_JSON, etag};
use crate::policy::Caller;
use crate::service::{Disclosed, HistoryRequest, PatchRequest, Requester, WriteRequest, Written};
use crate::store::{HistoryOf, VersionRecord};

/// Type- and instance-level interactions served for every resource type. The
/// CapabilityStatement is generated from this list; keep it in step with [`routes`].
pub const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// System-level interactions served.
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "search-system", "history-system"];

/// Default and largest page size of a history Bundle.
const DEFAULT_PAGE_SIZE: usize = 50;
const MAX_PAGE_SIZE: usize = 1000;

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
        .route("/{type}/{id}/_history", get(history))
        .route("/{type}/{id}/{compartment}", get(super::search::search_compartment))
        .route("/{type}/{id}/_history/{vid}", get(vread))
}

/// Who is asking, for the service layer.
pub(super) fn requester<'a>(principal: &'a Principal, caller: &'a Caller) -> Requester<'a> {
    Requester { principal, caller }
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

/// Parameters of a history interaction: `_count`, `_since` and the paging `_cursor`. Unknown
/// parameters are ignored, as FHIR's default lenient handling asks.
pub(super) struct HistoryParams {
    pub count: usize,
    pub since: Option<(String, i64)>,
    pub cursor: Option<String>,
    /// `_type` (system history only).
    pub types: Vec<String>,
}

impl HistoryParams {
    pub fn parse(query: Option<&str>, default_count: usize) -> Result<Self, FhirError> {
        let mut params = HistoryParams { count: default_count, since: None, cursor: None, types: Vec::new() };
        let mut seen = std::collections::BTreeSet::new();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            if matches!(key.as_ref(), "_count" | "_since" | "_cursor") && !seen.insert(key.to_string()) {
                return Err(FhirError::bad_request(IssueType::Value, format!("{key} may be given only once")));
            }
            match key.as_ref() {
                "_count" => {
                    params.count = value.parse().ok().filter(|c| (1..=MAX_PAGE_SIZE).contains(c)).ok_or_else(|| {
                        FhirError::bad_request(
                            IssueType::Value,
                            format!("_count must be a whole number from 1 to {MAX_PAGE_SIZE}"),
                        )
                    })?;
                }
                "_since" => {
                    let at = parse_instant(&value).ok_or_else(|| {
                        FhirError::bad_request(
                            IssueType::Value,
                            "_since must be an instant with a time zone, e.g. 2026-01-31T12:00:00Z",
                        )
                    })?;
                    params.since = Some((value.into_owned(), at));
                }
                "_cursor" => params.cursor = Some(value.into_owned()),
                "_type" => {
                    for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                        check_type_name(t)?;
                        params.types.push(t.to_owned());
                    }
                }
                _ => {}
            }
        }
        Ok(params)
    }

    /// The parameters that shape the result, as links repeat them (and cursors are bound to).
    pub fn shaping(&self) -> Vec<(String, String)> {
        let mut out = vec![("_count".to_owned(), self.count.to_string())];
        if let Some((since, _)) = &self.since {
            out.push(("_since".to_owned(), since.clone()));
        }
        if !self.types.is_empty() {
            out.push(("_type".to_owned(), self.types.join(",")));
        }
        out
    }

    /// The URL of page `cursor` of the feed at `path`.
    pub fn page_url(&self, base: &str, path: &str, cursor: Option<&str>) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.shaping() {
            query.append_pair(&k, &v);
        }
        if let Some(cursor) = cursor {
            query.append_pair("_cursor", cursor);
        }
        format!("{base}/{path}?{}", query.finish())
    }
}

/// `GET /{type}/{id}/_history`, `/{type}/_history` and `/_history`: a history Bundle.
pub(super) async fn history_feed(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    of: HistoryOf<'_>,
    query: Option<&str>,
) -> Result<Response, FhirError> {
    // A resource's own history is short; feeds over many resources page by 100.
    let default_count = if matches!(of, HistoryOf::Instance(..)) { DEFAULT_PAGE_SIZE } else { 100 };
    let params = HistoryParams::parse(query, default_count)?;
    let caller = caller(principal, headers)?;
    let request = HistoryRequest {
        of,
        count: params.count,
        since: params.since.as_ref().map(|(_, at)| *at),
        cursor: params.cursor.as_deref(),
        params: params.shaping(),
    };
    let feed = state.records.history(requester(principal, &caller), request).await?;
    let base = &state.settings.base_url;
    let path = match of {
        HistoryOf::System => "_history".to_owned(),
        HistoryOf::Type(t) => format!("{t}/_history"),
        HistoryOf::Instance(t, id) => format!("{t}/{id}/_history"),
    };
    let mut links = vec![Link { relation: "self", url: params.page_url(base, &path, params.cursor.as_deref()) }];
    if let Some(next) = &feed.next {
        links.push(Link { relation: "next", url: params.page_url(base, &path, Some(next)) });
    }
    let bundle = history_bundle(base, &feed.versions, feed.total, links).map_err(|error| {
        tracing::error!(%error, "a stored version is not valid JSON");
        FhirError::internal()
    })?;
    let mut disclosed = Disclosed::default();
    feed.versions.iter().for_each(|v| disclosed.add(v));
    let mut response = fhir_json(StatusCode::OK, bundle);
    response.extensions_mut().insert(disclosed);
    Ok(response)
}

async fn history(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    history_feed(&state, &principal, &headers, HistoryOf::Instance(&res_type, &id), query.as_deref()).await
}

pub(super) fn fhir_json(status: StatusCode, body: Vec<u8>) -> Response {
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
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
