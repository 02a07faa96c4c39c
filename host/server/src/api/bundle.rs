//! `POST /` with a `transaction` or `batch` Bundle.
//!
//! A transaction is all-or-nothing: every entry is checked (scopes, policies, resolution of
//! conditional URLs), `urn:uuid:` references are rewritten to the ids the server assigns, and
//! the writes run in one database transaction in the order FHIR prescribes (DELETE, POST, PUT),
//! then the reads (GET). If any entry fails, nothing is written and the answer is that entry's
//! error. A batch runs each entry on its own; each gets its own status.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::SharedState;
use super::extract::{FhirBody, ReturnPreference, return_preference};
use super::gate::caller;
use super::gate::requester;
use super::reply::fhir_json;
use super::search::{pairs_of, respond, search_bundle};
use crate::auth::{Interaction, Principal};
use crate::fhir::etag;
use crate::fhir::instant::to_fhir_instant;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::resource::{IncomingResource, check_id, check_type_name};
use crate::policy::{Caller, PolicyInteraction};
use crate::service::{Disclosed, Requester};
use crate::store::{DeleteResult, EventTargets, Precondition, PutRequest, TxOutcome, TxWrite};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    // Declared in FHIR's processing order.
    Delete,
    Post,
    Put,
    Get,
}

/// One entry, checked and resolved, ready to run.
struct Planned {
    index: usize,
    method: Method,
    res_type: String,
    /// The resource id (assigned for POST; resolved for conditional PUT/DELETE).
    id: Option<String>,
    /// GET: the query of a search (`Type?...`); POST: If-None-Exist.
    query: Option<String>,
    if_match: Option<i64>,
    full_url: Option<String>,
    resource: Option<Map<String, Value>>,
    /// Conditional create that found its match, or conditional delete that found none: no
    /// write, this answer.
    settled: Option<Value>,
    /// The id was assigned by this server (a create, or a conditional update without a match
    /// or an id of its own): nothing stored can be behind it.
    fresh: bool,
}

/// A failed entry: its status and OperationOutcome.
struct Failure {
    status: StatusCode,
    outcome: Value,
}

impl Failure {
    fn of(error: FhirError, index: usize) -> Failure {
        let mut outcome = error.outcome();
        if let Some(issue) = outcome["issue"].get_mut(0) {
            let diagnostics = issue["diagnostics"].as_str().unwrap_or_default().to_owned();
            issue["diagnostics"] = json!(format!("Bundle.entry[{index}]: {diagnostics}"));
        }
        Failure { status: error.status, outcome }
    }

    fn into_response(self) -> Response {
        fhir_json(self.status, serde_json::to_vec(&self.outcome).unwrap_or_default())
    }
}

pub async fn bundle(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    FhirBody(body): FhirBody,
) -> Result<Response, FhirError> {
    let value: Value = crate::fhir::json::parse_strict(&body)
        .map_err(|e| FhirError::bad_request(IssueType::Structure, format!("the body is not valid JSON: {e}")))?;
    if value.get("resourceType").and_then(Value::as_str) != Some("Bundle") {
        return Err(FhirError::bad_request(IssueType::Invalid, "POST / takes a Bundle of type transaction or batch"));
    }
    let kind = value.get("type").and_then(Value::as_str).unwrap_or_default().to_owned();
    if kind != "transaction" && kind != "batch" {
        return Err(FhirError::bad_request(IssueType::Invalid, "the Bundle type must be transaction or batch")
            .at("Bundle.type"));
    }
    let entries = match value.get("entry") {
        None => Vec::new(),
        Some(Value::Array(entries)) => entries.clone(),
        Some(_) => return Err(FhirError::bad_request(IssueType::Structure, "Bundle.entry must be an array")),
    };
    let limit = state.settings.max_bundle_entries;
    if entries.len() > limit {
        return Err(FhirError::bad_request(
            IssueType::TooCostly,
            format!(
                "the Bundle has {} entries; this server takes at most {limit} per Bundle: split it into several",
                entries.len()
            ),
        ));
    }
    let caller = caller(&principal, &headers)?;
    let minimal = return_preference(&headers) == ReturnPreference::Minimal;
    let mut returned = Disclosed::default();
    let responses = if kind == "transaction" {
        match transaction(&state, &principal, &caller, &headers, entries, &mut returned).await {
            Ok(responses) => responses,
            Err(failure) => return Ok(failure.into_response()),
        }
    } else {
        let mut responses = Vec::with_capacity(entries.len());
        for (index, entry) in entries.into_iter().enumerate() {
            let single = transaction(&state, &principal, &caller, &headers, vec![entry], &mut returned).await;
            responses.push(match single {
                Ok(mut done) => done.pop().unwrap_or(Value::Null),
                Err(failure) => json!({
                    "response": {
                        "status": status_line(failure.status),
                        "outcome": renumber(failure.outcome, index),
                    }
                }),
            });
        }
        responses
    };
    let entry: Vec<Value> = responses
        .into_iter()
        .map(|mut e| {
            if minimal && let Value::Object(fields) = &mut e {
                fields.remove("resource");
            }
            e
        })
        .collect();
    let bundle = json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "type": format!("{kind}-response"),
        "entry": entry,
    });
    respond(returned, &bundle)
}

/// Batch entries run one by one; their errors name entry 0 of a one-entry run: fix the index.
fn renumber(mut outcome: Value, index: usize) -> Value {
    if let Some(text) = outcome["issue"][0]["diagnostics"].as_str() {
        let fixed = text.replacen("Bundle.entry[0]", &format!("Bundle.entry[{index}]"), 1);
        outcome["issue"][0]["diagnostics"] = json!(fixed);
    }
    outcome
}

fn status_line(status: StatusCode) -> String {
    format!("{} {}", status.as_u16(), status.canonical_reason().unwrap_or_default())
}

/// Plans, checks and runs `entries` as one transaction; the response entries in order.
async fn transaction(
    state: &SharedState,
    principal: &Principal,
    caller: &Caller,
    headers: &HeaderMap,
    entries: Vec<Value>,
    returned: &mut Disclosed,
) -> Result<Vec<Value>, Failure> {
    let who = requester(principal, caller);
    let mut planned = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        planned.push(plan(index, entry, &state.settings.base_url).map_err(|e| Failure::of(e, index))?);
    }
    // Conditional URLs resolve to ids (or settle the entry) before anything is written.
    for p in &mut planned {
        resolve_conditional(state, who, p).await.map_err(|e| Failure::of(e, p.index))?;
    }
    link(&mut planned)?;

    // Checks: scopes, reach, then policies, entry by entry.
    let mut incoming: Vec<Option<IncomingResource>> = Vec::with_capacity(planned.len());
    let mut preconditions: Vec<Precondition> = Vec::with_capacity(planned.len());
    for p in &planned {
        let (resource, precondition) = check(state, who, p).await?;
        incoming.push(resource);
        preconditions.push(precondition);
    }

    // The writes, in processing order.
    let mut order: Vec<usize> = (0..planned.len()).collect();
    order.sort_by_key(|&i| (planned[i].method, planned[i].index));
    let events: Vec<EventTargets> = planned
        .iter()
        .map(|p| {
            let policies = &state.plugins.policies;
            match p.method {
                Method::Post => EventTargets {
                    created: policies.integrations_for(&p.res_type, PolicyInteraction::Create),
                    updated: Vec::new(),
                },
                Method::Put => EventTargets {
                    created: policies.integrations_for(&p.res_type, PolicyInteraction::Create),
                    updated: policies.integrations_for(&p.res_type, PolicyInteraction::Update),
                },
                // Deletes notify the plugins listed here (see the Delete write below).
                Method::Delete => EventTargets {
                    created: policies.integrations_for(&p.res_type, PolicyInteraction::Delete),
                    updated: Vec::new(),
                },
                Method::Get => EventTargets::default(),
            }
        })
        .collect();
    let key_ids: Vec<String> = planned
        .iter()
        .zip(&incoming)
        .map(|(p, r)| match (r, &p.id) {
            (Some(resource), Some(id)) => resource.data_key_id(id),
            _ => String::new(),
        })
        .collect();
    type Stamp<'a> = Box<dyn Fn(i64, i64) -> Vec<u8> + Send + Sync + 'a>;
    let stamps: Vec<Option<Stamp<'_>>> = planned
        .iter()
        .zip(&incoming)
        .map(|(p, r)| match (r, &p.id) {
            (Some(resource), Some(id)) => {
                Some(Box::new(move |version, at| resource.stamped(id, version, at)) as Stamp<'_>)
            }
            _ => None,
        })
        .collect();
    let mut writes = Vec::new();
    let mut write_entries = Vec::new();
    for &i in &order {
        let p = &planned[i];
        if p.settled.is_some() {
            continue;
        }
        let Some(id) = p.id.as_deref() else { continue };
        match (p.method, &stamps[i]) {
            (Method::Post | Method::Put, Some(stamp)) => {
                writes.push(TxWrite::Put(PutRequest {
                    res_type: &p.res_type,
                    id,
                    key_id: &key_ids[i],
                    precondition: preconditions[i],
                    events: &events[i],
                    stamp: stamp.as_ref(),
                }));
            }
            (Method::Delete, _) => {
                let if_match = match preconditions[i] {
                    Precondition::IfMatch(version) => Some(version),
                    _ => None,
                };
                writes.push(TxWrite::Delete { res_type: &p.res_type, id, if_match, events: &events[i].created });
            }
            _ => continue,
        }
        write_entries.push(i);
    }
    let outcomes = if writes.is_empty() {
        Vec::new()
    } else {
        state.store.transaction(&writes).await.map_err(|failed| {
            let index = write_entries.get(failed.entry).map_or(0, |&i| planned[i].index);
            Failure::of(FhirError::from(failed.error), index)
        })?
    };
    state.records.wake_delivery(events.iter().any(|e| !e.is_empty()));

    let mut responses: Vec<Value> = vec![Value::Null; planned.len()];
    for (outcome, &i) in outcomes.into_iter().zip(&write_entries) {
        let p = &planned[i];
        let id = p.id.clone().unwrap_or_default();
        if matches!(outcome, TxOutcome::Written(_)) {
            state.records.written(who, &p.res_type, &id).await.map_err(|e| Failure::of(e, p.index))?;
        }
        returned.add_written(&p.res_type, &id, p.resource.as_ref());
        responses[i] = match outcome {
            TxOutcome::Written(written) => {
                let resource: Value = serde_json::from_slice(&written.body).unwrap_or(Value::Null);
                json!({
                    "fullUrl": format!("{}/{}/{id}", state.settings.base_url, p.res_type),
                    "resource": resource,
                    "response": {
                        "status": if written.created { "201 Created" } else { "200 OK" },
                        "location": format!("{}/{id}/_history/{}", p.res_type, written.version),
                        "etag": etag(written.version),
                        "lastModified": to_fhir_instant(written.last_updated_us),
                    }
                })
            }
            TxOutcome::Deleted(DeleteResult::Deleted { version }) => {
                json!({"response": {"status": "204 No Content", "etag": etag(version)}})
            }
            TxOutcome::Deleted(_) => json!({"response": {"status": "204 No Content"}}),
        };
    }
    for (i, p) in planned.iter().enumerate() {
        if let Some(settled) = &p.settled {
            // A conditional create's match was returned: the audit entry names it.
            if let (Method::Post, Some(id)) = (p.method, &p.id) {
                returned.add_written(&p.res_type, id, settled["resource"].as_object());
            }
            responses[i] = settled.clone();
        }
    }
    // Reads last, seeing the writes.
    for (i, p) in planned.iter().enumerate() {
        if p.method == Method::Get {
            responses[i] = read_entry(state, principal, headers, who, p, returned).await?;
        }
    }
    Ok(responses)
}

/// Parses one entry's request into a plan. `request.url` is relative or an absolute URL on
/// this server (`base_url`).
fn plan(index: usize, entry: Value, base_url: &str) -> Result<Planned, FhirError> {
    let Value::Object(mut entry) = entry else {
        return Err(FhirError::bad_request(IssueType::Structure, "an entry must be a JSON object"));
    };
    let request = entry.remove("request").unwrap_or(Value::Null);
    let method = match request.get("method").and_then(Value::as_str) {
        Some("POST") => Method::Post,
        Some("PUT") => Method::Put,
        Some("DELETE") => Method::Delete,
        Some("GET") | Some("HEAD") => Method::Get,
        Some("PATCH") => {
            return Err(FhirError::bad_request(
                IssueType::NotSupported,
                "PATCH entries are not supported in Bundles yet",
            ));
        }
        _ => {
            return Err(FhirError::bad_request(
                IssueType::Required,
                "entry.request.method must be GET, POST, PUT or DELETE",
            ));
        }
    };
    let url = request.get("url").and_then(Value::as_str).unwrap_or_default();
    let url = match url.strip_prefix(base_url) {
        Some(rest) if !base_url.is_empty() && (rest.is_empty() || rest.starts_with(['/', '?'])) => rest,
        _ => url,
    }
    .trim_start_matches('/');
    let (path, query) = match url.split_once('?') {
        Some((path, query)) => (path, Some(query.to_owned())),
        None => (url, None),
    };
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    if let Some(operation) = segments.iter().find(|s| s.starts_with('$')) {
        return Err(FhirError::bad_request(
            IssueType::NotSupported,
            format!("operation entries ({operation}) are not supported in Bundles; call the operation directly"),
        ));
    }
    if url.starts_with("http://") || url.starts_with("https://") {
        return Err(FhirError::bad_request(
            IssueType::NotSupported,
            format!("entry.request.url {url} is not on this server ({base_url}); use a relative URL"),
        ));
    }
    let (res_type, id) = match segments.as_slice() {
        [t] => ((*t).to_owned(), None),
        [t, id] => ((*t).to_owned(), Some((*id).to_owned())),
        _ => {
            return Err(FhirError::bad_request(
                IssueType::NotSupported,
                "entry.request.url must be Type, Type/id or Type?search",
            ));
        }
    };
    check_type_name(&res_type)?;
    if let Some(id) = &id {
        check_id(id)?;
    }
    let if_match = match request.get("ifMatch").and_then(Value::as_str) {
        Some(tag) => Some(tag.trim_start_matches("W/").trim_matches('"').parse::<i64>().map_err(|_| {
            FhirError::bad_request(IssueType::Value, "entry.request.ifMatch must be an ETag such as W/\"3\"")
        })?),
        None => None,
    };
    let resource = match entry.remove("resource") {
        Some(Value::Object(resource)) => Some(resource),
        Some(_) => return Err(FhirError::bad_request(IssueType::Structure, "entry.resource must be a resource")),
        None => None,
    };
    let full_url = entry.get("fullUrl").and_then(Value::as_str).map(str::to_owned);
    let (id, query) = match method {
        Method::Post => {
            if id.is_some() {
                return Err(FhirError::bad_request(IssueType::Invalid, "a POST entry's url is the type alone"));
            }
            // `identifier=...`, `?identifier=...` or `Patient?identifier=...`
            let if_none_exist = request.get("ifNoneExist").and_then(Value::as_str);
            (None, if_none_exist.map(|q| q.split_once('?').map_or(q, |(_, query)| query).to_owned()))
        }
        Method::Put | Method::Delete if id.is_none() && query.is_none() => {
            return Err(FhirError::bad_request(
                IssueType::Required,
                "a PUT or DELETE entry names Type/id or Type?search",
            ));
        }
        _ => (id, query),
    };
    if matches!(method, Method::Post | Method::Put) && resource.is_none() {
        return Err(FhirError::bad_request(IssueType::Required, "a POST or PUT entry carries a resource"));
    }
    Ok(Planned { index, method, res_type, id, query, if_match, full_url, resource, settled: None, fresh: false })
}

/// Gives creates their server ids and rewrites `urn:uuid:` references between entries to
/// them; a reference to no entry of the Bundle is an error.
fn link(planned: &mut [Planned]) -> Result<(), Failure> {
    let mut references: HashMap<String, String> = HashMap::new();
    for p in planned.iter_mut() {
        if p.method == Method::Post && p.id.is_none() {
            p.id = Some(uuid::Uuid::new_v4().to_string());
            p.fresh = true;
        }
        if let (Some(full_url), Some(id)) = (&p.full_url, &p.id)
            && matches!(p.method, Method::Post | Method::Put)
        {
            references.insert(full_url.clone(), format!("{}/{id}", p.res_type));
        }
    }
    for p in planned.iter_mut() {
        if let Some(resource) = &mut p.resource {
            rewrite_references(resource, &references);
        }
    }
    for p in planned.iter() {
        if let Some(resource) = &p.resource
            && references_unresolved(resource)
        {
            return Err(Failure::of(
                FhirError::bad_request(IssueType::NotFound, "a urn:uuid reference names no entry of this Bundle"),
                p.index,
            ));
        }
    }
    Ok(())
}

/// For the fuzz targets (`host/fuzz`): the database-free part of a transaction (each entry
/// planned, ids assigned, references linked). Returns each entry's method, `Type/id` (if
/// known) and resource after linking, in processing order; or the failing entry's status.
pub fn plan_offline(entries: Vec<Value>) -> Result<Vec<(String, Option<String>, Option<Map<String, Value>>)>, u16> {
    let mut planned = Vec::with_capacity(entries.len());
    for (index, entry) in entries.into_iter().enumerate() {
        planned.push(plan(index, entry, "").map_err(|e| e.status.as_u16())?);
    }
    link(&mut planned).map_err(|f| f.status.as_u16())?;
    planned.sort_by_key(|p| (p.method, p.index));
    Ok(planned
        .into_iter()
        .map(|p| {
            let target = p.id.as_ref().map(|id| format!("{}/{id}", p.res_type));
            (format!("{:?}", p.method).to_uppercase(), target, p.resource)
        })
        .collect())
}

/// Resolves conditional create (If-None-Exist), update and delete URLs, as `who`'s own
/// search: only what `who` may see matches.
async fn resolve_conditional(state: &SharedState, who: Requester<'_>, p: &mut Planned) -> Result<(), FhirError> {
    let Some(query) = p.query.clone() else { return Ok(()) };
    match p.method {
        Method::Get => Ok(()),
        Method::Post => {
            let ids = state.records.matching_ids(who, &p.res_type, &query).await?;
            match ids.as_slice() {
                [] => Ok(()),
                [existing] => {
                    // Answered as a read of it would be: the scopes, reach and read policies
                    // apply, and the audit entry names it.
                    let record = state.records.read(who, &p.res_type, existing).await?;
                    p.id = Some(existing.clone());
                    let resource = record.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok());
                    p.settled = Some(json!({
                        "fullUrl": format!("{}/{}/{existing}", state.settings.base_url, p.res_type),
                        "resource": resource,
                        "response": {
                            "status": "200 OK",
                            "location": format!("{}/{existing}/_history/{}", p.res_type, record.version),
                        }
                    }));
                    Ok(())
                }
                _ => Err(multiple_matches()),
            }
        }
        Method::Put | Method::Delete if p.id.is_none() => {
            let ids = state.records.matching_ids(who, &p.res_type, &query).await?;
            match (ids.as_slice(), p.method) {
                ([], Method::Put) => {
                    // No match: a create, with the client's id if it sent one.
                    let id = p.resource.as_ref().and_then(|r| r.get("id")).and_then(Value::as_str).map(str::to_owned);
                    p.fresh = id.is_none();
                    p.id = Some(id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string()));
                    Ok(())
                }
                ([], _) => {
                    p.settled = Some(json!({"response": {"status": "204 No Content"}}));
                    Ok(())
                }
                ([one], _) => {
                    p.id = Some(one.clone());
                    Ok(())
                }
                _ => Err(multiple_matches()),
            }
        }
        _ => Ok(()),
    }
}

fn multiple_matches() -> FhirError {
    FhirError::precondition_failed("the conditional search matches more than one resource; make it more specific")
}

/// Whether `key` of `object` holds another Bundle's entries: references inside a Bundle
/// resource resolve against its own entries (`Bundle.entry.fullUrl`), not the transaction's.
fn is_nested_entries(object: &Map<String, Value>, key: &str) -> bool {
    key == "entry" && object.get("resourceType").and_then(Value::as_str) == Some("Bundle")
}

/// Replaces references to entries' fullUrls (`urn:uuid:...`) with the assigned `Type/id`.
fn rewrite_references(value: &mut Map<String, Value>, references: &HashMap<String, String>) {
    let skip_entries = is_nested_entries(value, "entry");
    for (key, child) in value.iter_mut() {
        if skip_entries && key == "entry" {
            continue;
        }
        match child {
            Value::String(text) if key == "reference" => {
                if let Some(target) = references.get(text.as_str()) {
                    *text = target.clone();
                }
            }
            Value::Object(object) => rewrite_references(object, references),
            Value::Array(items) => {
                for item in items {
                    if let Value::Object(object) = item {
                        rewrite_references(object, references);
                    }
                }
            }
            _ => {}
        }
    }
}

fn references_unresolved(value: &Map<String, Value>) -> bool {
    value.iter().filter(|(key, _)| !is_nested_entries(value, key)).any(|(key, child)| match child {
        Value::String(text) => key == "reference" && text.starts_with("urn:uuid:"),
        Value::Object(object) => references_unresolved(object),
        Value::Array(items) => items.iter().any(|i| i.as_object().is_some_and(references_unresolved)),
        _ => false,
    })
}

/// An entry's resource as it is checked: without its `id` (`id: None`, a create), or with
/// `id` added at the end when it has none (an update).
struct EntryResource<'a> {
    fields: &'a Map<String, Value>,
    id: Option<&'a str>,
}

impl serde::Serialize for EntryResource<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.fields {
            if key != "id" || self.id.is_some() {
                map.serialize_entry(key, value)?;
            }
        }
        if let Some(id) = self.id
            && !self.fields.contains_key("id")
        {
            map.serialize_entry("id", id)?;
        }
        map.end()
    }
}

/// The checks of one write entry ([`crate::service::Records::guard_write`], as for a single
/// write): the parsed resource to store, if any, and the precondition to write it with.
async fn check(
    state: &SharedState,
    who: Requester<'_>,
    p: &Planned,
) -> Result<(Option<IncomingResource>, Precondition), Failure> {
    let fail = |e: FhirError| Failure::of(e, p.index);
    let none = (None, Precondition::None);
    if p.settled.is_some() || p.method == Method::Get {
        return Ok(none);
    }
    let Some(id) = p.id.as_deref() else { return Ok(none) };
    let interaction = match p.method {
        Method::Post => Interaction::Create,
        Method::Put => Interaction::Update,
        Method::Delete => Interaction::Delete,
        Method::Get => return Ok(none),
    };
    who.principal.check(interaction, &p.res_type).map_err(fail)?;
    let resource = match &p.resource {
        Some(fields) if p.method != Method::Delete => {
            // A create's id is the server's; an update's defaults to the one in its URL.
            let entry = EntryResource { fields, id: (p.method == Method::Put).then_some(id) };
            let bytes = serde_json::to_vec(&entry).map_err(|_| fail(FhirError::internal()))?;
            let resource = IncomingResource::parse(&bytes, &p.res_type).map_err(fail)?;
            if p.method == Method::Put {
                resource.require_id(id).map_err(fail)?;
            }
            Some(resource)
        }
        _ => None,
    };
    let content = resource.as_ref().map(IncomingResource::fields);
    let guarded = state
        .records
        .guard_write(who, interaction, &p.res_type, id, content, p.fresh, p.if_match)
        .await
        .map_err(fail)?;
    Ok((resource, guarded.precondition))
}

/// A GET entry: a read (`Type/id`) or a search (`Type?...`).
async fn read_entry(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    who: Requester<'_>,
    p: &Planned,
    returned: &mut Disclosed,
) -> Result<Value, Failure> {
    let fail = |e: FhirError| Failure::of(e, p.index);
    match &p.id {
        Some(id) => {
            let record = state.records.read(who, &p.res_type, id).await.map_err(fail)?;
            returned.add(&record);
            let resource: Value =
                record.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or(Value::Null);
            Ok(json!({
                "fullUrl": format!("{}/{}/{id}", state.settings.base_url, p.res_type),
                "resource": resource,
                "response": {"status": "200 OK", "etag": etag(record.version), "lastModified": to_fhir_instant(record.last_updated_us)}
            }))
        }
        None => {
            let pairs = pairs_of(p.query.as_deref().unwrap_or(""));
            let (bundle, ids) =
                search_bundle(state, principal, headers, vec![p.res_type.clone()], pairs, None, p.res_type.clone())
                    .await
                    .map_err(fail)?;
            returned.extend(ids);
            Ok(json!({"resource": bundle, "response": {"status": "200 OK"}}))
        }
    }
}
