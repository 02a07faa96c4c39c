//! FHIR Bulk Data Access export (v2): `GET /$export`, `/Patient/$export`,
//! `/Group/{id}/$export` with `_type`, `_since`, `_typeFilter` and `_outputFormat`, the asynchronous pattern
//! (202 + Content-Location, status polling with `X-Progress` and `Retry-After`, DELETE to
//! cancel) and NDJSON files.
//!
//! A kick-off fixes the job: its kind, types, `_since`, the group's members and the
//! transaction time. Its files are made when they are downloaded: the resources as they stood
//! at the transaction time are read page by page, decrypted in memory, passed through the
//! downloader's scopes and the policy plugins bound to `search` (so redactions apply), and
//! streamed. Nothing decrypted is written to disk and memory stays bounded by one page.
//! Only the principal who kicked a job off may poll it or download its files.

use std::collections::BTreeSet;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::SharedState;
use super::gate::caller;
use super::search::pairs_of;
use crate::auth::{Interaction, Principal, forbidden};
use crate::fhir::instant::{now_us, parse_instant, to_fhir_instant};
use crate::fhir::outcome::{FhirError, IssueType, operation_outcome};
use crate::fhir::resource::{check_id, check_type_name};
use crate::fhir::resource_types::R4_RESOURCE_TYPES;
use crate::fhir::search::query::Parser;
use crate::policy::{Caller, PolicyInteraction};
use crate::store::{ExportJob, SnapshotScope};

/// Records read, judged and written per step of a download.
const PAGE: usize = 500;

/// What a kick-off exports.
pub enum Kind {
    System,
    Patient,
    Group(String),
}

impl Kind {
    fn name(&self) -> &'static str {
        match self {
            Kind::System => "system",
            Kind::Patient => "patient",
            Kind::Group(_) => "group",
        }
    }
}

fn bad(message: impl Into<String>) -> FhirError {
    FhirError::bad_request(IssueType::Value, message)
}

fn not_found(id: &str) -> FhirError {
    FhirError::not_found(format!("there is no export job {id} of yours (finished jobs stay until cancelled)"))
}

/// Whether the principal may export `res_type`: it needs search access without a patient
/// restriction (system/ or user/ scopes, as SMART Bulk Data expects).
fn may_export(principal: &Principal, res_type: &str) -> bool {
    principal.reaches_all(Interaction::Search, res_type)
}

/// The kick-off: `GET /$export`, `/Patient/$export` or `/Group/{id}/$export`.
pub async fn kickoff(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    kind: Kind,
    query: Option<&str>,
) -> Result<Response, FhirError> {
    let prefer = headers.get("prefer").and_then(|v| v.to_str().ok()).unwrap_or("");
    if !prefer.split([',', ';']).any(|p| p.trim().eq_ignore_ascii_case("respond-async")) {
        return Err(bad("a bulk export runs asynchronously: send the header 'Prefer: respond-async'"));
    }
    let mut types = Vec::new();
    let mut since_us = None;
    let mut filters: Vec<String> = Vec::new();
    for (key, value) in pairs_of(query.unwrap_or("")) {
        match key.as_str() {
            "_type" => {
                for t in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
                    check_type_name(t)?;
                    if !types.iter().any(|have| have == t) {
                        types.push(t.to_owned());
                    }
                }
            }
            "_since" => {
                since_us = Some(
                    parse_instant(&value).ok_or_else(|| bad("_since must be an instant, e.g. 2026-01-31T12:00:00Z"))?,
                );
            }
            "_outputFormat" => {
                if !matches!(value.as_str(), "application/fhir+ndjson" | "application/ndjson" | "ndjson") {
                    return Err(bad("_outputFormat: this server writes application/fhir+ndjson only"));
                }
            }
            "_typeFilter" => {
                // Checked here; applied at download (read back from the job's request URL).
                let (res_type, filter) = split_filter(&value).ok_or_else(|| {
                    bad(format!("_typeFilter {value:?} must be TYPE?search, e.g. Observation?code=8867-4"))
                })?;
                check_type_name(res_type)?;
                if let Some((name, _)) = filter.iter().find(|(name, _)| RESULT_PARAMETERS.contains(&name.as_str())) {
                    return Err(bad(format!(
                        "_typeFilter selects resources; {name} shapes results and is not allowed in it"
                    )));
                }
                let key = state.store.blind_index_key().await?;
                let parser = Parser { key: &key, base_url: &state.settings.base_url, strict: true };
                parser
                    .parse(vec![res_type.to_owned()], &filter)
                    .map_err(|e| bad(format!("_typeFilter {value:?}: {}", e.message)))?;
                filters.push(res_type.to_owned());
            }
            "_elements" | "patient" | "includeAssociatedData" => {
                return Err(FhirError::new(
                    StatusCode::BAD_REQUEST,
                    IssueType::NotSupported,
                    format!(
                        "{key} is not supported by this server's export; use _type, _since and _typeFilter, or search"
                    ),
                ));
            }
            other => {
                return Err(bad(format!(
                    "unknown export parameter {other:?} (supported: _type, _since, _typeFilter, _outputFormat)"
                )));
            }
        }
    }
    if let Some(outside) = filters.iter().find(|t| !types.is_empty() && !types.contains(t)) {
        return Err(bad(format!("_typeFilter names {outside}, which _type leaves out")));
    }
    if let Some(denied) = types.iter().find(|t| !may_export(principal, t)) {
        return Err(forbidden(format!(
            "exporting {denied} needs a system/ or user/ scope that lets this token search it"
        )));
    }
    if types.is_empty() && !R4_RESOURCE_TYPES.iter().any(|t| may_export(principal, t)) {
        return Err(forbidden("bulk export needs system/ or user/ scopes that let this token search"));
    }
    let mut members = Vec::new();
    if let Kind::Group(group_id) = &kind {
        check_id(group_id)?;
        principal
            .check(Interaction::Read, "Group")
            .map_err(|_| forbidden("a group export needs read access to Group (its member list)"))?;
        let caller = caller(principal, headers)?;
        let group = state.records.read(super::gate::requester(principal, &caller), "Group", group_id).await?;
        let group = group.body.ok_or_else(FhirError::internal)?;
        let group: Value = serde_json::from_slice(&group).map_err(|_| FhirError::internal())?;
        let mut ids = BTreeSet::new();
        for member in group["member"].as_array().into_iter().flatten() {
            if member["inactive"] == true {
                continue;
            }
            if let Some(id) = member["entity"]["reference"].as_str().and_then(|r| r.strip_prefix("Patient/")) {
                ids.insert(id.to_owned());
            }
        }
        members = ids.into_iter().collect();
    }
    let id = uuid::Uuid::new_v4().simple().to_string();
    let base = &state.settings.base_url;
    let path = match &kind {
        Kind::System => "$export".to_owned(),
        Kind::Patient => "Patient/$export".to_owned(),
        Kind::Group(group) => format!("Group/{group}/$export"),
    };
    let request = match query.filter(|q| !q.is_empty()) {
        Some(query) => format!("{base}/{path}?{query}"),
        None => format!("{base}/{path}"),
    };
    let job = ExportJob {
        id: id.clone(),
        owner: principal.subject.clone(),
        request,
        kind: kind.name().to_owned(),
        types,
        since_us,
        members,
        transaction_us: now_us(),
        status: "in-progress".to_owned(),
        outputs: Vec::new(),
        error: None,
        created_us: now_us(),
    };
    state.store.create_export_job(&job).await?;
    let (state, principal) = (state.clone(), principal.clone());
    tokio::spawn(async move {
        // The snapshot's pages are planned from the tables' statistics: bring them up to date
        // after a bulk load rather than read a million resources along a plan for ten.
        if let Err(error) = state.store.analyze_if_stale().await {
            tracing::warn!(job = job.id, %error, "could not refresh the planner's statistics; the export goes on");
        }
        let outputs = output_types(&state, &principal, &job).await;
        let finished = match &outputs {
            Ok(types) => state.store.finish_export_job(&job.id, Ok(types)).await,
            Err(error) => {
                tracing::error!(job = job.id, %error, "export job failed");
                state
                    .store
                    .finish_export_job(&job.id, Err("the export could not be prepared; see the server log"))
                    .await
            }
        };
        if let Err(error) = finished {
            tracing::error!(job = job.id, %error, "export job state could not be saved");
        }
    });
    let message = format!("export {id} started; poll the Content-Location for its files");
    let mut response = outcome_response(StatusCode::ACCEPTED, &message);
    let location = format!("{base}/$export-status/{id}");
    response
        .headers_mut()
        .insert(header::CONTENT_LOCATION, HeaderValue::from_str(&location).map_err(|_| FhirError::internal())?);
    Ok(response)
}

/// An informational OperationOutcome, as FHIR JSON.
fn outcome_response(status: StatusCode, message: &str) -> Response {
    let outcome = operation_outcome("information", IssueType::Informational, message, None);
    super::reply::fhir_json(status, serde_json::to_vec(&outcome).unwrap_or_default())
}

/// Search parameters that shape a result page rather than select resources.
const RESULT_PARAMETERS: &[&str] =
    &["_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor", "_contained"];

/// `Type?query` split into the type and its search parameters.
fn split_filter(value: &str) -> Option<(&str, Vec<(String, String)>)> {
    let (res_type, query) = value.split_once('?')?;
    Some((res_type, form_urlencoded::parse(query.as_bytes()).into_owned().collect()))
}

/// The `_typeFilter` searches of a job for `res_type` (any one may match), from its request.
fn type_filters(job: &ExportJob, res_type: &str) -> Vec<Vec<(String, String)>> {
    let query = job.request.split_once('?').map_or("", |(_, q)| q);
    pairs_of(query)
        .into_iter()
        .filter(|(key, _)| key == "_typeFilter")
        .filter_map(|(_, value)| split_filter(&value).filter(|(t, _)| *t == res_type).map(|(_, pairs)| pairs))
        .collect()
}

/// The ids among `records` that at least one of `filters` matches (each runs as a search
/// narrowed to these ids).
async fn matching_ids(
    state: &SharedState,
    principal: &Principal,
    res_type: &str,
    filters: &[Vec<(String, String)>],
    records: &[crate::store::VersionRecord],
) -> Result<BTreeSet<String>, FhirError> {
    let key = state.store.blind_index_key().await?;
    let parser = Parser { key: &key, base_url: &state.settings.base_url, strict: true };
    // A filter's chains and _has reach only as far as the exporter's own searches would.
    let vis = principal.predicate(Interaction::Search, &key, &state.settings.base_url);
    let ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    let mut matched = BTreeSet::new();
    for filter in filters {
        let mut pairs = filter.clone();
        pairs.push(("_id".to_owned(), ids.join(",")));
        pairs.push(("_count".to_owned(), PAGE.to_string()));
        let query = parser.parse(vec![res_type.to_owned()], &pairs).map_err(|e| bad(e.message))?;
        let scope = crate::store::SearchScope::default();
        let rows = state.store.search_rows(&query, &scope, &vis, None, PAGE).await?;
        matched.extend(rows.matches.into_iter().map(|m| m.record.id));
    }
    Ok(matched)
}

/// The scopes a job reads, in order: one for system and patient exports, one per member for
/// a group.
fn scopes(job: &ExportJob) -> Vec<String> {
    match job.kind.as_str() {
        "group" => job.members.iter().map(|m| crate::fhir::compartment::patient_key_id(m)).collect(),
        _ => vec![String::new()],
    }
}

fn scope_of<'a>(job: &ExportJob, key: &'a str) -> SnapshotScope<'a> {
    match job.kind.as_str() {
        "patient" => SnapshotScope::AnyPatient,
        "group" => SnapshotScope::Key(key),
        _ => SnapshotScope::All,
    }
}

/// The types that get a file: those with records in the snapshot, narrowed to `_type` and to
/// what the principal may export.
async fn output_types(
    state: &SharedState,
    principal: &Principal,
    job: &ExportJob,
) -> Result<Vec<String>, crate::store::StoreError> {
    let mut found = BTreeSet::new();
    for key in scopes(job) {
        found.extend(state.store.snapshot_types(job.transaction_us, job.since_us, scope_of(job, &key)).await?);
    }
    Ok(found
        .into_iter()
        .filter(|t| job.types.is_empty() || job.types.contains(t))
        .filter(|t| may_export(principal, t))
        .collect())
}

async fn owned_job(state: &SharedState, principal: &Principal, id: &str) -> Result<ExportJob, FhirError> {
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_alphanumeric()) {
        return Err(not_found(id));
    }
    let job = state.store.export_job(id).await?;
    job.filter(|j| j.owner == principal.subject && j.status != "cancelled").ok_or_else(|| not_found(id))
}

/// `GET /$export-status/{id}`: 202 with progress while it runs, then the manifest.
pub async fn status(state: &SharedState, principal: &Principal, id: &str) -> Result<Response, FhirError> {
    let job = owned_job(state, principal, id).await?;
    match job.status.as_str() {
        "in-progress" => {
            let mut response = StatusCode::ACCEPTED.into_response();
            let headers = response.headers_mut();
            headers.insert("x-progress", HeaderValue::from_static("finding the resource types to export"));
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            Ok(response)
        }
        "failed" => Err(FhirError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            job.error.unwrap_or_else(|| "the export failed".to_owned()),
        )),
        _ => {
            let base = &state.settings.base_url;
            let output: Vec<Value> = job
                .outputs
                .iter()
                .map(|t| json!({"type": t, "url": format!("{base}/$export-file/{}/{t}.ndjson", job.id)}))
                .collect();
            let manifest = json!({
                "transactionTime": to_fhir_instant(job.transaction_us),
                "request": job.request,
                "requiresAccessToken": true,
                "output": output,
                "error": [],
            });
            let mut response = axum::Json(manifest).into_response();
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(response)
        }
    }
}

/// `DELETE /$export-status/{id}`: cancels the job (or discards a finished one).
pub async fn cancel(state: &SharedState, principal: &Principal, id: &str) -> Result<Response, FhirError> {
    let job = owned_job(state, principal, id).await?;
    state.store.cancel_export_job(&job.id).await?;
    let message = format!("export {} cancelled; its files are no longer served", job.id);
    Ok(outcome_response(StatusCode::ACCEPTED, &message))
}

/// Where a download is: the scope (member) index and the last id written.
struct Cursor {
    state: SharedState,
    principal: Principal,
    caller: Caller,
    job: ExportJob,
    res_type: String,
    /// `_typeFilter` searches for this type; any one must match.
    filters: Vec<Vec<(String, String)>>,
    scopes: Vec<String>,
    scope: usize,
    after: Option<String>,
}

/// The next piece of a file: the NDJSON lines of one page (possibly none, when policies
/// left nothing of it), or `None` at the end.
async fn next_chunk(cursor: &mut Cursor) -> Result<Option<Bytes>, FhirError> {
    loop {
        let Some(key) = cursor.scopes.get(cursor.scope) else { return Ok(None) };
        let (records, more) = cursor
            .state
            .store
            .snapshot_page(
                &cursor.res_type,
                cursor.job.transaction_us,
                cursor.job.since_us,
                scope_of(&cursor.job, key),
                cursor.after.as_deref(),
                PAGE,
            )
            .await?;
        cursor.after = records.last().map(|r| r.id.clone());
        if !more {
            cursor.scope += 1;
            cursor.after = None;
        }
        let mut records = records;
        if !cursor.filters.is_empty() && !records.is_empty() {
            let matched =
                matching_ids(&cursor.state, &cursor.principal, &cursor.res_type, &cursor.filters, &records).await?;
            records.retain(|r| matched.contains(&r.id));
        }
        if records.is_empty() {
            continue;
        }
        // The exporter reaches every resource of the type (`may_export`); the search policies
        // judge each one, as they would in a search.
        let who = super::gate::requester(&cursor.principal, &cursor.caller);
        let admitted = cursor.state.records.admit(who, PolicyInteraction::Search, records).await?;
        let mut lines = Vec::with_capacity(admitted.len() * 512);
        for record in admitted {
            if let Some(body) = record.body {
                lines.extend_from_slice(&body);
                lines.push(b'\n');
            }
        }
        return Ok(Some(Bytes::from(lines)));
    }
}

/// `GET /$export-file/{id}/{Type}.ndjson`: one type's file, streamed.
pub async fn file(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    id: &str,
    file: &str,
) -> Result<Response, FhirError> {
    let job = owned_job(state, principal, id).await?;
    let res_type = file.strip_suffix(".ndjson").unwrap_or("");
    if job.status != "complete" || !job.outputs.iter().any(|t| t == res_type) {
        return Err(FhirError::not_found(format!("export {id} has no file {file}; its manifest lists them")));
    }
    if !may_export(principal, res_type) {
        return Err(forbidden(format!("this token may no longer export {res_type}")));
    }
    let caller = caller(principal, headers)?;
    let cursor = Cursor {
        state: state.clone(),
        principal: principal.clone(),
        caller,
        scopes: scopes(&job),
        filters: type_filters(&job, res_type),
        job,
        res_type: res_type.to_owned(),
        scope: 0,
        after: None,
    };
    let stream = futures_util::stream::unfold(Some(cursor), |cursor| async move {
        let mut cursor = cursor?;
        match next_chunk(&mut cursor).await {
            Ok(Some(chunk)) => Some((Ok::<Bytes, std::io::Error>(chunk), Some(cursor))),
            Ok(None) => None,
            Err(error) => {
                // The status line is gone already: end the body early, so the client sees a
                // truncated transfer rather than a complete-looking file.
                tracing::error!(job = cursor.job.id, res_type = cursor.res_type, error = %error.diagnostics, "export download failed");
                Some((Err(std::io::Error::other("the export could not be read")), None))
            }
        }
    });
    let mut response = Body::from_stream(stream).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/fhir+ndjson"));
    Ok(response)
}

/// `GET /$export`
pub async fn system_kickoff(
    axum::extract::State(state): axum::extract::State<SharedState>,
    axum::Extension(principal): axum::Extension<Principal>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    kickoff(&state, &principal, &headers, Kind::System, query.as_deref()).await
}

/// `GET /$export-status/{id}`
pub async fn status_route(
    axum::extract::State(state): axum::extract::State<SharedState>,
    axum::Extension(principal): axum::Extension<Principal>,
    super::extract::FhirPath(id): super::extract::FhirPath<String>,
) -> Result<Response, FhirError> {
    status(&state, &principal, &id).await
}

/// `DELETE /$export-status/{id}`
pub async fn cancel_route(
    axum::extract::State(state): axum::extract::State<SharedState>,
    axum::Extension(principal): axum::Extension<Principal>,
    super::extract::FhirPath(id): super::extract::FhirPath<String>,
) -> Result<Response, FhirError> {
    cancel(&state, &principal, &id).await
}

/// `GET /$export-file/{id}/{file}`
pub async fn file_route(
    axum::extract::State(state): axum::extract::State<SharedState>,
    axum::Extension(principal): axum::Extension<Principal>,
    super::extract::FhirPath((id, name)): super::extract::FhirPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    file(&state, &principal, &headers, &id, &name).await
}
