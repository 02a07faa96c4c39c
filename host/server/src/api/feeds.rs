//! Reads that span many resources outside search: `Patient/{id}/$everything` and instance-,
//! type- and system-level `_history`. The service layer pages them with sealed cursors, through the
//! token's reach and the policy plugins, like search.

use axum::Extension;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::SharedState;
use super::gate::{caller, requester};
use super::reply::fhir_json;
use crate::auth::Principal;
use crate::fhir::bundle::{Link, history_bundle};
use crate::fhir::instant::parse_instant;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::resource::{check_id, check_type_name};
use crate::service::{Disclosed, EverythingRequest, HistoryRequest};
use crate::store::HistoryOf;

/// Default page size of a feed over many resources (`$everything`, type and system history).
const DEFAULT_COUNT: usize = 100;
/// Default page size of one resource's history.
const DEFAULT_INSTANCE_COUNT: usize = 50;
/// Largest page size of a history Bundle.
const MAX_PAGE_SIZE: usize = 1000;

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
    // A resource's own history is short; feeds over many resources page by more.
    let default_count = if matches!(of, HistoryOf::Instance(..)) { DEFAULT_INSTANCE_COUNT } else { DEFAULT_COUNT };
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

/// `GET /{type}/{id}/_history`
pub(super) async fn instance_history(
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
