//! FHIR REST interactions on resources: create, read, vread, update, delete and instance
//! history, plus `GET /metadata`.

use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Router};
use serde_json::{Map, Value};

use super::SharedState;
use super::extract::{FhirBody, ReturnPreference, if_match, if_none_match_matches, return_preference};
use super::gate::{authorize_records, authorize_write, caller, denied};
use super::search::{ReturnedIds, matching_ids};
use crate::auth::{Access, Interaction, Principal, forbidden};
use crate::fhir::bundle::{Link, history_bundle};
use crate::fhir::instant::{parse_instant, to_http_date};
use crate::fhir::outcome::{FhirError, IssueType, operation_outcome};
use crate::fhir::resource::{IncomingResource, check_id, check_type_name};
use crate::fhir::{FHIR_JSON, etag};
use crate::policy::PolicyInteraction;
use crate::store::{DeleteResult, EventTargets, Precondition, StoreError, VersionRecord, WriteResult};

/// Type- and instance-level interactions served for every resource type. The
/// CapabilityStatement is generated from this list; keep it in step with [`routes`].
pub const TYPE_INTERACTIONS: &[&str] =
    &["read", "vread", "update", "patch", "delete", "history-instance", "history-type", "create", "search-type"];

/// System-level interactions served.
pub const SYSTEM_INTERACTIONS: &[&str] = &["transaction", "batch", "search-system", "history-system"];

/// Default and largest page size of a history Bundle.
const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 1000;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/", get(super::search::search_system).post(super::bundle::bundle))
        .route("/_search", axum::routing::post(super::search::search_system_post))
        .route(
            "/{type}",
            get(super::search::search_type).post(create).put(conditional_update).delete(conditional_delete),
        )
        .route("/{type}/_search", axum::routing::post(super::search::search_type_post))
        .route("/{type}/$validate", axum::routing::post(validate_operation))
        .route("/_history", get(super::feeds::system_history))
        .route("/{type}/_history", get(super::feeds::type_history))
        .route("/{type}/{id}", get(read).put(update).delete(delete).patch(patch))
        .route("/{type}/{id}/_history", get(history))
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
    let access = principal.access(Interaction::Create, &res_type)?;
    let resource = IncomingResource::parse(&body, &res_type)?;
    if let Some(condition) = headers.get("if-none-exist") {
        let query = condition.to_str().map_err(|_| {
            FhirError::bad_request(IssueType::Value, "If-None-Exist must be a search query, e.g. identifier=x|y")
        })?;
        let query = query.rsplit_once('?').map_or(query, |(_, q)| q);
        match matching_ids(&state, &principal, &headers, &res_type, query).await?.as_slice() {
            [] => {}
            [existing] => {
                // Already there: answer with it (as a read would), and create nothing.
                let caller = caller(&principal, &headers)?;
                return match read_live(&state, &principal, &caller, &res_type, existing).await? {
                    Ok(record) => Ok(record_response(record)),
                    Err(response) => Ok(response),
                };
            }
            _ => {
                return Err(FhirError::precondition_failed(
                    "If-None-Exist matches more than one resource; make the condition more specific",
                ));
            }
        }
    }
    // The spec says a server SHALL ignore an id sent with a create and assign its own.
    let id = uuid::Uuid::new_v4().to_string();
    require(&access, &res_type, &id, resource.fields())?;
    let caller = caller(&principal, &headers)?;
    if let Some(plan) = state.plugins.policies.plan(&res_type, PolicyInteraction::Create)
        && let Err(response) = authorize_write(
            &state,
            &caller,
            &plan,
            PolicyInteraction::Create,
            &res_type,
            Some(&id),
            Some(resource.fields()),
        )
        .await
    {
        return Ok(response);
    }
    let key_id = resource.data_key_id(&id);
    let events = EventTargets {
        created: state.plugins.policies.integrations_for(&res_type, PolicyInteraction::Create),
        updated: Vec::new(),
    };
    let written = state
        .store
        .put(&res_type, &id, &key_id, Precondition::MustNotExist, &events, &|version, at| {
            resource.stamped(&id, version, at)
        })
        .await
        .map_err(store_error)?;
    wake_delivery(&state, !events.is_empty());
    tracing::info!(res_type, id, version = written.version, "created");
    Ok(write_response(&state, &res_type, &id, &key_id, written, &headers))
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
    update_resource(&state, &principal, &res_type, &id, &headers, &body).await
}

/// `PATCH /{type}/{id}` with a JSON Patch (`application/json-patch+json`): applied to the
/// current version, then stored as an update pinned to that version (or to If-Match), so a
/// concurrent change makes it fail (412) instead of being overwritten.
async fn patch(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: axum::body::Bytes,
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
    if body.len() > state.settings.max_body_bytes {
        return Err(FhirError::new(StatusCode::PAYLOAD_TOO_LARGE, IssueType::TooLong, "the patch is too large"));
    }
    principal.access(Interaction::Update, &res_type)?;
    let operations: Value = crate::fhir::json::parse_strict(&body)
        .map_err(|e| FhirError::bad_request(IssueType::Structure, format!("the patch is not valid JSON: {e}")))?;
    let (version, current) = live_version(&state, &res_type, &id).await?.ok_or_else(|| not_found(&res_type, &id))?;
    // Reading is part of patching: the caller must be allowed to see what it changes.
    let read_access = principal.access(Interaction::Read, &res_type)?;
    require(&read_access, &res_type, &id, &current)?;
    let expected = if_match(&headers)?.unwrap_or(version);
    if expected != version {
        return Err(FhirError::precondition_failed(format!(
            "If-Match does not name the current version ({}); read the resource again and retry",
            etag(version)
        )));
    }
    let mut document = Value::Object(current);
    crate::fhir::patch::apply(&mut document, &operations)
        .map_err(|message| FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueType::Invalid, message))?;
    if document.get("resourceType").and_then(Value::as_str) != Some(res_type.as_str())
        || document.get("id").and_then(Value::as_str) != Some(id.as_str())
    {
        return Err(FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::Invalid,
            "a patch may not change the resource type or id",
        ));
    }
    let mut pinned = headers.clone();
    pinned.insert(header::IF_MATCH, HeaderValue::from_str(&etag(version)).map_err(|_| FhirError::internal())?);
    let body = serde_json::to_vec(&document).map_err(|_| FhirError::internal())?;
    update_resource(&state, &principal, &res_type, &id, &pinned, &body).await
}

/// `POST /{type}/$validate`: checks a resource (sent as is, or as the `resource` parameter of
/// a Parameters resource) without storing it; 200 with an OperationOutcome listing every issue
/// (an informational one when there are none). Needs a create or update scope on the type.
async fn validate_operation(
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    FhirBody(body): FhirBody,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    principal.access(Interaction::Create, &res_type).or_else(|_| principal.access(Interaction::Update, &res_type))?;
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

/// `PUT /{type}?search`: updates the one match, creates when there is none (with the body's
/// id, or a new one), 412 when several match.
async fn conditional_update(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    let resource = IncomingResource::parse(&body, &res_type)?;
    let body_id = resource.fields().get("id").and_then(Value::as_str).map(str::to_owned);
    let id =
        match matching_ids(&state, &principal, &headers, &res_type, query.as_deref().unwrap_or("")).await?.as_slice() {
            [] => {
                let id = body_id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
                check_id(&id)?;
                id
            }
            [one] => {
                if body_id.as_ref().is_some_and(|b| b != one) {
                    return Err(FhirError::bad_request(
                        IssueType::Invalid,
                        "the resource id differs from the id of the resource the condition matches",
                    ));
                }
                one.clone()
            }
            _ => {
                return Err(FhirError::precondition_failed(
                    "the condition matches more than one resource; make it more specific",
                ));
            }
        };
    let mut fields = resource.fields().clone();
    fields.insert("id".into(), Value::String(id.clone()));
    let body = serde_json::to_vec(&fields).map_err(|_| FhirError::internal())?;
    update_resource(&state, &principal, &res_type, &id, &headers, &body).await
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
    match matching_ids(&state, &principal, &headers, &res_type, query.as_deref().unwrap_or("")).await?.as_slice() {
        [] => Err(FhirError::not_found(format!("no {res_type} matches the condition"))),
        [one] => delete_resource(&state, &principal, &res_type, one, &headers).await,
        _ => Err(FhirError::precondition_failed(
            "the condition matches more than one resource; make it more specific (this server deletes one at a time)",
        )),
    }
}

/// An update of `res_type/id` (creating it if it does not exist), as `PUT` and conditional
/// update do it.
async fn update_resource(
    state: &SharedState,
    principal: &Principal,
    res_type: &str,
    id: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, FhirError> {
    let access = principal.access(Interaction::Update, res_type)?;
    let mut precondition = match if_match(headers)? {
        Some(version) => Precondition::IfMatch(version),
        None => Precondition::None,
    };
    let resource = IncomingResource::parse(body, res_type)?;
    resource.require_id(id)?;
    require(&access, res_type, id, resource.fields())?;
    if !access.is_unrestricted() {
        // A restricted principal may not overwrite what it cannot reach: check the current
        // version, and pin the write to it so nothing can change in between.
        let current = live_version(state, res_type, id).await?;
        if let Some((version, current)) = &current {
            require(&access, res_type, id, current)?;
            if precondition == Precondition::None {
                precondition = Precondition::IfMatch(*version);
            }
        } else if precondition == Precondition::None {
            precondition = Precondition::MustNotExist;
        }
    }
    let caller = caller(principal, headers)?;
    if let Some(plan) = state.plugins.policies.plan(res_type, PolicyInteraction::Update)
        && let Err(response) = authorize_write(
            state,
            &caller,
            &plan,
            PolicyInteraction::Update,
            res_type,
            Some(id),
            Some(resource.fields()),
        )
        .await
    {
        return Ok(response);
    }
    let key_id = resource.data_key_id(id);
    let events = EventTargets {
        created: state.plugins.policies.integrations_for(res_type, PolicyInteraction::Create),
        updated: state.plugins.policies.integrations_for(res_type, PolicyInteraction::Update),
    };
    let written = state
        .store
        .put(res_type, id, &key_id, precondition, &events, &|version, at| resource.stamped(id, version, at))
        .await
        .map_err(store_error)?;
    wake_delivery(state, !events.is_empty());
    tracing::info!(res_type, id, version = written.version, created = written.created, "updated");
    Ok(write_response(state, res_type, id, &key_id, written, headers))
}

async fn read(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    if res_type == "Patient" && id == "$export" {
        let kind = super::export::Kind::Patient;
        return super::export::kickoff(&state, &principal, &headers, kind, query.as_deref()).await;
    }
    check_type_name(&res_type)?;
    check_id(&id)?;
    let caller = caller(&principal, &headers)?;
    let record = match read_live(&state, &principal, &caller, &res_type, &id).await? {
        Ok(record) => record,
        Err(response) => return Ok(response),
    };
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
    let access = principal.access(Interaction::Vread, &res_type)?;
    let version =
        vid.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
            FhirError::bad_request(IssueType::Value, "version ids on this server are positive integers")
        })?;
    let record = state
        .store
        .read_version(&res_type, &id, version)
        .await
        .map_err(store_error)?
        .ok_or_else(|| FhirError::not_found(format!("{res_type}/{id} has no version {version}")))?;
    if record.deleted {
        return Err(gone(&record));
    }
    require_record(&access, &record)?;
    let caller = caller(&principal, &headers)?;
    match authorize_one(&state, &caller, PolicyInteraction::Vread, record).await? {
        Ok(record) => Ok(record_response(record)),
        Err(response) => Ok(response),
    }
}

async fn delete(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    delete_resource(&state, &principal, &res_type, &id, &headers).await
}

/// A delete of `res_type/id`, as `DELETE` and conditional delete do it.
async fn delete_resource(
    state: &SharedState,
    principal: &Principal,
    res_type: &str,
    id: &str,
    headers: &HeaderMap,
) -> Result<Response, FhirError> {
    let access = principal.access(Interaction::Delete, res_type)?;
    let mut expected = if_match(headers)?;
    let caller = caller(principal, headers)?;
    let plan = state.plugins.policies.plan(res_type, PolicyInteraction::Delete);
    if (!access.is_unrestricted() || plan.is_some())
        && let Some((version, current)) = live_version(state, res_type, id).await?
    {
        require(&access, res_type, id, &current)?;
        // The policy judged this version; pin the delete to it.
        expected = expected.or(Some(version));
        if let Some(plan) = &plan
            && let Err(response) =
                authorize_write(state, &caller, plan, PolicyInteraction::Delete, res_type, Some(id), Some(&current))
                    .await
        {
            return Ok(response);
        }
    }
    let events = state.plugins.policies.integrations_for(res_type, PolicyInteraction::Delete);
    let result = state.store.delete(res_type, id, expected, &events).await.map_err(store_error)?;
    wake_delivery(state, !events.is_empty());
    let (message, version) = match result {
        DeleteResult::Deleted { version } => {
            tracing::info!(res_type, id, version, "deleted");
            (format!("deleted {res_type}/{id}; version {version} records the deletion"), Some(version))
        }
        DeleteResult::AlreadyDeleted => (format!("{res_type}/{id} was already deleted"), None),
        DeleteResult::NotFound => return Err(not_found(res_type, id)),
    };
    let outcome = operation_outcome("information", IssueType::Informational, &message, None);
    let mut response = fhir_json(StatusCode::OK, serde_json::to_vec(&outcome).unwrap_or_default());
    if let Some(version) = version {
        insert_header(&mut response, header::ETAG, &etag(version));
    }
    Ok(response)
}

/// Parameters of a history interaction. Unknown parameters are ignored, as FHIR's default
/// lenient handling asks.
#[derive(Debug, Default)]
struct HistoryParams {
    count: Option<String>,
    since: Option<String>,
    /// Paging cursor: only versions older than this one (set by the server in `next` links).
    cursor: Option<String>,
}

impl HistoryParams {
    fn parse(query: Option<&str>) -> Result<Self, FhirError> {
        let mut params = HistoryParams::default();
        for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
            let slot = match key.as_ref() {
                "_count" => &mut params.count,
                "_since" => &mut params.since,
                "_cursor" => &mut params.cursor,
                _ => continue,
            };
            if slot.replace(value.into_owned()).is_some() {
                return Err(FhirError::bad_request(IssueType::Value, format!("{key} may be given only once")));
            }
        }
        Ok(params)
    }
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
    let access = principal.access(Interaction::HistoryInstance, &res_type)?;
    let params = HistoryParams::parse(query.as_deref())?;
    let count = match params.count.as_deref() {
        None => DEFAULT_PAGE_SIZE,
        Some(text) => text.parse::<i64>().ok().filter(|c| (1..=MAX_PAGE_SIZE).contains(c)).ok_or_else(|| {
            FhirError::bad_request(IssueType::Value, format!("_count must be an integer from 1 to {MAX_PAGE_SIZE}"))
        })?,
    };
    let since = params
        .since
        .as_deref()
        .map(|text| {
            parse_instant(text).ok_or_else(|| {
                FhirError::bad_request(
                    IssueType::Value,
                    "_since must be an instant with a time zone, e.g. 2026-01-31T12:00:00Z",
                )
            })
        })
        .transpose()?;
    let cursor = params
        .cursor
        .as_deref()
        .map(|text| {
            text.parse::<i64>()
                .map_err(|_| FhirError::bad_request(IssueType::Value, "_cursor is not one this server issued"))
        })
        .transpose()?;
    if state.store.read_current(&res_type, &id).await.map_err(store_error)?.is_none() {
        return Err(not_found(&res_type, &id));
    }
    let mut page = state.store.history(&res_type, &id, since, cursor, count).await.map_err(store_error)?;
    // Paging follows the stored versions, whatever filtering hides from this reader.
    let next_cursor =
        page.versions.last().filter(|v| page.versions.len() as i64 == count && v.version > 1).map(|v| v.version);
    if !access.is_unrestricted() {
        // Only versions within reach; deletion markers carry no content to judge, so a
        // restricted principal does not see them.
        page.versions
            .retain(|v| v.body.as_deref().and_then(parse_object).is_some_and(|r| access.permits(&res_type, &id, &r)));
        if page.versions.is_empty() {
            return Err(forbidden(format!("no version of {res_type}/{id} is within this token's reach")));
        }
    }
    let caller = caller(&principal, &headers)?;
    let plan = state.plugins.policies.plan(&res_type, PolicyInteraction::History);
    let gated = plan.is_some();
    if let Some(plan) = &plan {
        let before = page.versions.len();
        let judged = authorize_records(
            &state,
            &caller,
            plan,
            PolicyInteraction::History,
            &res_type,
            std::mem::take(&mut page.versions),
        )
        .await?;
        let mut first_denial = None;
        for outcome in judged {
            match outcome {
                Ok(version) => page.versions.push(version),
                Err(denial) => {
                    first_denial.get_or_insert(denial);
                }
            }
        }
        if page.versions.is_empty()
            && before > 0
            && let Some((plugin, reason)) = first_denial
        {
            return Ok(denied(&plugin, &reason));
        }
    }

    let base = &state.settings.base_url;
    let page_url = |cursor: Option<i64>| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.append_pair("_count", &count.to_string());
        if let Some(since) = &params.since {
            query.append_pair("_since", since);
        }
        if let Some(cursor) = cursor {
            query.append_pair("_cursor", &cursor.to_string());
        }
        format!("{base}/{res_type}/{id}/_history?{}", query.finish())
    };
    let mut links = vec![Link { relation: "self", url: page_url(cursor) }];
    if let Some(oldest) = next_cursor {
        links.push(Link { relation: "next", url: page_url(Some(oldest)) });
    }
    // A restricted reader sees only some versions; the count of all would tell it more.
    let total = (access.is_unrestricted() && !gated).then_some(page.total);
    let bundle = history_bundle(base, &page.versions, total, links).map_err(|error| {
        tracing::error!(%error, res_type, id, "a stored version is not valid JSON");
        FhirError::internal()
    })?;
    Ok(fhir_json(StatusCode::OK, bundle))
}

/// The current version of `res_type/id` as `principal` may read it: 404, 410 or 403 as
/// errors, a policy denial as the response to send (`Ok(Err(..))`), else the (possibly
/// redacted) record. Shared by reads, Bundle GET entries and conditional creates.
pub(super) async fn read_live(
    state: &SharedState,
    principal: &Principal,
    caller: &crate::policy::Caller,
    res_type: &str,
    id: &str,
) -> Result<Result<VersionRecord, Response>, FhirError> {
    let access = principal.access(Interaction::Read, res_type)?;
    let record =
        state.store.read_current(res_type, id).await.map_err(store_error)?.ok_or_else(|| not_found(res_type, id))?;
    if record.deleted {
        return Err(gone(&record));
    }
    require_record(&access, &record)?;
    authorize_one(state, caller, PolicyInteraction::Read, record).await
}

/// Runs the read policies on one record: the (possibly redacted) record, or the denial.
pub(super) async fn authorize_one(
    state: &SharedState,
    caller: &crate::policy::Caller,
    interaction: PolicyInteraction,
    record: VersionRecord,
) -> Result<Result<VersionRecord, Response>, FhirError> {
    let Some(plan) = state.plugins.policies.plan(&record.res_type, interaction) else { return Ok(Ok(record)) };
    let res_type = record.res_type.clone();
    let mut judged = authorize_records(state, caller, &plan, interaction, &res_type, vec![record]).await?;
    match judged.pop() {
        Some(Ok(record)) => Ok(Ok(record)),
        Some(Err((plugin, reason))) => Ok(Err(denied(&plugin, &reason))),
        None => Err(FhirError::internal()),
    }
}

/// Lets the outbox worker know there is work, when a write queued events.
pub(super) fn wake_delivery(state: &SharedState, queued: bool) {
    if queued {
        state.plugins.delivery_wake.notify_one();
    }
}

/// 403 unless `access` reaches this resource content.
pub(super) fn require(
    access: &Access,
    res_type: &str,
    id: &str,
    resource: &Map<String, Value>,
) -> Result<(), FhirError> {
    if access.permits(res_type, id, resource) {
        Ok(())
    } else {
        Err(forbidden(format!(
            "{res_type}/{id} is outside what this token may reach (patient compartment or scope constraints)"
        )))
    }
}

fn require_record(access: &Access, record: &VersionRecord) -> Result<(), FhirError> {
    if access.is_unrestricted() {
        return Ok(());
    }
    let content = record.body.as_deref().and_then(parse_object).ok_or_else(FhirError::internal)?;
    require(access, &record.res_type, &record.id, &content)
}

/// The current live version and its content, if the resource exists and is not deleted.
pub(super) async fn live_version(
    state: &SharedState,
    res_type: &str,
    id: &str,
) -> Result<Option<(i64, Map<String, Value>)>, FhirError> {
    let Some(record) = state.store.read_current(res_type, id).await.map_err(store_error)? else {
        return Ok(None);
    };
    match record.body.as_deref() {
        Some(body) if !record.deleted => {
            let content = parse_object(body).ok_or_else(FhirError::internal)?;
            Ok(Some((record.version, content)))
        }
        _ => Ok(None),
    }
}

/// A stored body as a JSON object (stored bodies always are one).
fn parse_object(body: &[u8]) -> Option<Map<String, Value>> {
    serde_json::from_slice(body).ok()
}

/// Maps a storage failure to the client's answer; unexpected failures are logged here, once.
pub(super) fn store_error(error: StoreError) -> FhirError {
    match error {
        StoreError::VersionConflict { current: Some(current) } => FhirError::precondition_failed(format!(
            "If-Match does not name the current version ({}); read the resource again and retry",
            etag(current)
        )),
        StoreError::VersionConflict { current: None } => {
            FhirError::precondition_failed("If-Match names a version, but the resource has no current version to match")
        }
        StoreError::AlreadyExists => {
            FhirError::new(StatusCode::CONFLICT, IssueType::Conflict, "a resource with this id already exists")
        }
        StoreError::TooMuchContention => FhirError::new(
            StatusCode::CONFLICT,
            IssueType::Conflict,
            "too many concurrent updates to this resource; retry",
        ),
        StoreError::Erased => FhirError::gone(
            "these records were erased (their encryption key was destroyed) and can never be read or written again",
        ),
        StoreError::Integrity => {
            // The alert with row details was logged where it was detected.
            FhirError::internal()
        }
        StoreError::Unavailable(ref cause) => {
            tracing::error!(error = %cause, "database unavailable");
            FhirError::unavailable("the database is unavailable; retry shortly")
        }
        StoreError::Full(ref cause) => {
            tracing::error!(error = %cause, "ALERT: the database is out of space; writes are refused until space is freed");
            FhirError::out_of_space()
        }
        other => {
            tracing::error!(error = %other, "storage failure");
            FhirError::internal()
        }
    }
}

pub(super) fn not_found(res_type: &str, id: &str) -> FhirError {
    FhirError::not_found(format!("{res_type}/{id} does not exist"))
}

pub(super) fn gone(record: &VersionRecord) -> FhirError {
    FhirError::gone(format!("{}/{} was deleted (version {})", record.res_type, record.id, record.version))
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

fn record_response(record: VersionRecord) -> Response {
    let disclosed = ReturnedIds::patient_of(&record);
    let mut response = fhir_json(StatusCode::OK, record.body.unwrap_or_default());
    set_version_headers(&mut response, record.version, record.last_updated_us);
    response.extensions_mut().insert(disclosed);
    response
}

/// The answer to a create or update: 201 (with Location) or 200, ETag and Last-Modified, and
/// the body the client asked for with `Prefer: return=`.
fn write_response(
    state: &SharedState,
    res_type: &str,
    id: &str,
    key_id: &str,
    written: WriteResult,
    headers: &HeaderMap,
) -> Response {
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
    if let Some(patient) = key_id.strip_prefix("patient/") {
        response.extensions_mut().insert(ReturnedIds { ids: Vec::new(), patients: [patient.to_owned()].into() });
    }
    response
}
