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
pub const TYPE_INTERACTIONS: &[&str] = &["read", "vread", "update", "delete", "history-instance", "create"];

/// System-level interactions served.
pub const SYSTEM_INTERACTIONS: &[&str] = &[];

/// Default and largest page size of a history Bundle.
const DEFAULT_PAGE_SIZE: i64 = 50;
const MAX_PAGE_SIZE: i64 = 1000;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/{type}", axum::routing::post(create))
        .route("/{type}/{id}", get(read).put(update).delete(delete))
        .route("/{type}/{id}/_history", get(history))
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
    if headers.contains_key("if-none-exist") {
        return Err(FhirError::bad_request(
            IssueType::NotSupported,
            "conditional create (If-None-Exist) is not supported by this server yet",
        ));
    }
    let resource = IncomingResource::parse(&body, &res_type)?;
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
    Ok(write_response(&state, &res_type, &id, written, &headers))
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
    let access = principal.access(Interaction::Update, &res_type)?;
    let mut precondition = match if_match(&headers)? {
        Some(version) => Precondition::IfMatch(version),
        None => Precondition::None,
    };
    let resource = IncomingResource::parse(&body, &res_type)?;
    resource.require_id(&id)?;
    require(&access, &res_type, &id, resource.fields())?;
    if !access.is_unrestricted() {
        // A restricted principal may not overwrite what it cannot reach: check the current
        // version, and pin the write to it so nothing can change in between.
        let current = live_version(&state, &res_type, &id).await?;
        if let Some((version, current)) = &current {
            require(&access, &res_type, &id, current)?;
            if precondition == Precondition::None {
                precondition = Precondition::IfMatch(*version);
            }
        } else if precondition == Precondition::None {
            precondition = Precondition::MustNotExist;
        }
    }
    let caller = caller(&principal, &headers)?;
    if let Some(plan) = state.plugins.policies.plan(&res_type, PolicyInteraction::Update)
        && let Err(response) = authorize_write(
            &state,
            &caller,
            &plan,
            PolicyInteraction::Update,
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
        updated: state.plugins.policies.integrations_for(&res_type, PolicyInteraction::Update),
    };
    let written = state
        .store
        .put(&res_type, &id, &key_id, precondition, &events, &|version, at| resource.stamped(&id, version, at))
        .await
        .map_err(store_error)?;
    wake_delivery(&state, !events.is_empty());
    tracing::info!(res_type, id, version = written.version, created = written.created, "updated");
    Ok(write_response(&state, &res_type, &id, written, &headers))
}

async fn read(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((res_type, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    check_id(&id)?;
    let access = principal.access(Interaction::Read, &res_type)?;
    let record = state
        .store
        .read_current(&res_type, &id)
        .await
        .map_err(store_error)?
        .ok_or_else(|| not_found(&res_type, &id))?;
    if record.deleted {
        return Err(gone(&record));
    }
    require_record(&access, &record)?;
    let caller = caller(&principal, &headers)?;
    let record = match authorize_one(&state, &caller, PolicyInteraction::Read, record).await? {
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
    let access = principal.access(Interaction::Delete, &res_type)?;
    let mut expected = if_match(&headers)?;
    let caller = caller(&principal, &headers)?;
    let plan = state.plugins.policies.plan(&res_type, PolicyInteraction::Delete);
    if (!access.is_unrestricted() || plan.is_some())
        && let Some((version, current)) = live_version(&state, &res_type, &id).await?
    {
        require(&access, &res_type, &id, &current)?;
        // The policy judged this version; pin the delete to it.
        expected = expected.or(Some(version));
        if let Some(plan) = &plan
            && let Err(response) =
                authorize_write(&state, &caller, plan, PolicyInteraction::Delete, &res_type, Some(&id), Some(&current))
                    .await
        {
            return Ok(response);
        }
    }
    let events = state.plugins.policies.integrations_for(&res_type, PolicyInteraction::Delete);
    let result = state.store.delete(&res_type, &id, expected, &events).await.map_err(store_error)?;
    wake_delivery(&state, !events.is_empty());
    let (message, version) = match result {
        DeleteResult::Deleted { version } => {
            tracing::info!(res_type, id, version, "deleted");
            (format!("deleted {res_type}/{id}; version {version} records the deletion"), Some(version))
        }
        DeleteResult::AlreadyDeleted => (format!("{res_type}/{id} was already deleted"), None),
        DeleteResult::NotFound => return Err(not_found(&res_type, &id)),
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

/// Runs the read policies on one record: the (possibly redacted) record, or the denial.
async fn authorize_one(
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
fn wake_delivery(state: &SharedState, queued: bool) {
    if queued {
        state.plugins.delivery_wake.notify_one();
    }
}

/// 403 unless `access` reaches this resource content.
fn require(access: &Access, res_type: &str, id: &str, resource: &Map<String, Value>) -> Result<(), FhirError> {
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
async fn live_version(
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
        other => {
            tracing::error!(error = %other, "storage failure");
            FhirError::internal()
        }
    }
}

fn not_found(res_type: &str, id: &str) -> FhirError {
    FhirError::not_found(format!("{res_type}/{id} does not exist"))
}

fn gone(record: &VersionRecord) -> FhirError {
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
    let mut response = fhir_json(StatusCode::OK, record.body.unwrap_or_default());
    set_version_headers(&mut response, record.version, record.last_updated_us);
    response
}

/// The answer to a create or update: 201 (with Location) or 200, ETag and Last-Modified, and
/// the body the client asked for with `Prefer: return=`.
fn write_response(
    state: &SharedState,
    res_type: &str,
    id: &str,
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
    response
}
