//! FHIR search over HTTP: `GET /{type}?...`, `POST /{type}/_search`, compartment search
//! (`GET /Patient/{id}/{type}?...`) and system search (`GET /?_type=...`).
//!
//! A search runs in this order: scopes (403 without a search scope on the type), parsing
//! (400 for malformed values; unknown parameters per `Prefer: handling`), the SQL search with
//! the token's patient compartment and scope constraints added to the query, a re-check of
//! each result against the token, then the policy plugins in one batch call per type for the
//! page (matches and included resources alike: denied ones are left out, redactions applied).

use std::collections::{BTreeMap, HashSet};

use axum::Extension;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::SharedState;
use super::fhir::{fhir_json, store_error};
use super::gate::{admit_records, caller};
use crate::auth::{Access, Interaction, Principal};
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::resource::{check_id, check_type_name};
use crate::fhir::search::query::{
    Condition, Filter, Include, MAX_INCLUDE_DEPTH, Parser, SearchError, SearchQuery, Summary, Total,
};
use crate::fhir::search::registry::{self, Kind};
use crate::policy::PolicyInteraction;
use crate::store::{SearchScope, VersionRecord};

/// Included resources (`_include`, `_revinclude`) per page at most; beyond, the search is
/// refused with advice rather than left to time out.
pub const MAX_INCLUDED: usize = 1000;
/// Types in one system-level search at most.
const MAX_SYSTEM_TYPES: usize = 20;

/// What a response disclosed, for the audit entry (a response extension): the `Type/id` of
/// every resource it returned, and the patients whose compartments those resources are in.
#[derive(Debug, Clone, Default)]
pub struct ReturnedIds {
    pub ids: Vec<String>,
    pub patients: std::collections::BTreeSet<String>,
}

impl ReturnedIds {
    /// Notes a returned record.
    pub fn add(&mut self, record: &VersionRecord) {
        self.ids.push(format!("{}/{}", record.res_type, record.id));
        if let Some(patient) = record.patient() {
            self.patients.insert(patient.to_owned());
        }
    }

    /// Notes a resource written or returned without its stored record at hand: its compartment
    /// is read from `content` when there is some.
    pub fn add_written(&mut self, res_type: &str, id: &str, content: Option<&Map<String, Value>>) {
        self.ids.push(format!("{res_type}/{id}"));
        if let Some(content) = content
            && let Some(patient) = crate::fhir::compartment::data_key_id(res_type, id, content).strip_prefix("patient/")
        {
            self.patients.insert(patient.to_owned());
        }
    }

    /// Everything `other` noted, after this.
    pub fn extend(&mut self, other: ReturnedIds) {
        self.ids.extend(other.ids);
        self.patients.extend(other.patients);
    }

    /// Only the patient of `record` (a single-resource answer, whose id the audit entry names
    /// already).
    pub fn patient_of(record: &VersionRecord) -> ReturnedIds {
        ReturnedIds { ids: Vec::new(), patients: record.patient().map(str::to_owned).into_iter().collect() }
    }

    /// A 200 answer with `bundle`, carrying these ids for the audit entry.
    pub fn respond(self, bundle: &Value) -> Result<Response, FhirError> {
        let mut response = fhir_json(StatusCode::OK, serde_json::to_vec(bundle).map_err(|_| FhirError::internal())?);
        response.extensions_mut().insert(self);
        Ok(response)
    }
}

pub async fn search_type(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(res_type): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&res_type)?;
    let pairs = pairs_of(query.as_deref().unwrap_or(""));
    run(&state, &principal, &headers, vec![res_type.clone()], pairs, None, &res_type).await
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
    run(&state, &principal, &headers, vec![res_type.clone()], pairs, None, &res_type).await
}

/// `GET /Patient/{id}/{type}?...`: the search confined to one patient's compartment.
pub async fn search_compartment(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path((compartment, id, res_type)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_type_name(&compartment)?;
    check_id(&id)?;
    if res_type == "$export" && compartment == "Group" {
        let kind = super::export::Kind::Group(id);
        return super::export::kickoff(&state, &principal, &headers, kind, query.as_deref()).await;
    }
    if res_type == "$everything" && compartment == "Patient" {
        return super::feeds::everything(&state, &principal, &headers, &id, query.as_deref()).await;
    }
    check_type_name(&res_type)?;
    if compartment != "Patient" {
        return Err(FhirError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotSupported,
            "only the Patient compartment can be searched (GET /Patient/{id}/{type})",
        ));
    }
    let pairs = pairs_of(query.as_deref().unwrap_or(""));
    let scope = patient_compartment(&res_type, &id);
    let path = format!("Patient/{id}/{res_type}");
    run(&state, &principal, &headers, vec![res_type], pairs, Some(scope), &path).await
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
    let types: Vec<String> = pairs
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
    let mut types = types;
    types.sort();
    types.dedup();
    run(state, principal, headers, types, pairs, None, "").await
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

/// `Prefer: handling=strict` (unknown parameters are errors) vs the default lenient handling.
pub(super) fn strict_handling(headers: &HeaderMap) -> bool {
    headers
        .get_all("prefer")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split([',', ';']))
        .any(|d| d.trim().replace(' ', "") == "handling=strict")
}

/// The filter that confines a search of `res_type` to patient `patient_id`'s compartment.
fn patient_compartment(res_type: &str, patient_id: &str) -> Filter {
    if res_type == "Patient"
        && let Some(param) = registry::find("Patient", "_id")
    {
        return Filter::Param {
            param,
            condition: Condition::Token(vec![crate::fhir::search::query::TokenMatch::Code(patient_id.to_owned())]),
            negated: false,
        };
    }
    match registry::patient_param(res_type) {
        Some(param) => Filter::Param {
            param,
            condition: Condition::Reference(vec![(Some("Patient".to_owned()), patient_id.to_owned())]),
            negated: false,
        },
        None => Filter::Nothing,
    }
}

fn search_error(error: SearchError) -> FhirError {
    let code = if error.too_costly {
        IssueType::TooCostly
    } else if error.unsupported {
        IssueType::NotSupported
    } else {
        IssueType::Value
    };
    FhirError::bad_request(code, error.message)
}

/// What one searched type allows this caller.
struct TypeAccess {
    access: Access,
    /// Whether the SQL query carries the whole restriction (so counts are exact).
    scoped_in_sql: bool,
}

async fn run(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    types: Vec<String>,
    pairs: Vec<(String, String)>,
    compartment: Option<Filter>,
    path: &str,
) -> Result<Response, FhirError> {
    let (bundle, returned) = search_bundle(state, principal, headers, types, pairs, compartment, path).await?;
    returned.respond(&bundle)
}

/// Runs a search: the searchset Bundle and the `Type/id` of every resource in it.
pub(super) async fn search_bundle(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    types: Vec<String>,
    pairs: Vec<(String, String)>,
    compartment: Option<Filter>,
    path: &str,
) -> Result<(Value, ReturnedIds), FhirError> {
    let mut accesses = BTreeMap::new();
    for t in &types {
        accesses.insert(t.clone(), principal.access(Interaction::Search, t)?);
    }
    let key = state.store.blind_index_key().await.map_err(store_error)?;
    let parser = Parser { key: &key, base_url: &state.settings.base_url, strict: strict_handling(headers) };
    let mut query = parser.parse(types.clone(), &pairs).map_err(search_error)?;
    let caller = caller(principal, headers)?;

    // The token's restriction goes into the query when it can be expressed there.
    let mut scope = SearchScope::default();
    scope.filters.extend(compartment);
    let mut type_access: BTreeMap<String, TypeAccess> = BTreeMap::new();
    for (t, access) in accesses {
        let scoped_in_sql =
            access.is_unrestricted() || (types.len() == 1 && restrict_in_sql(&parser, &t, &access, &mut scope.filters));
        type_access.insert(t, TypeAccess { access, scoped_in_sql });
    }
    let gated = types.iter().any(|t| state.plugins.policies.plan(t, PolicyInteraction::Search).is_some());
    let exact_counts = type_access.values().all(|a| a.scoped_in_sql) && !gated;
    if !exact_counts && query.total == Total::Accurate {
        query.ignored.push(
            "_total is not given: some results may be hidden from this token or by policy, and the count would \
             reveal them"
                .to_owned(),
        );
        query.total = Total::None;
    }

    let page = state.store.search(&query, &scope).await.map_err(|error| match error {
        crate::store::StoreError::BadCursor => FhirError::bad_request(
            IssueType::Value,
            "_cursor is not one this server issued for this search; start again from the first page",
        ),
        other => store_error(other),
    })?;

    // Matches: re-check against the token, then the policies.
    let reach = |t: &str| type_access.get(t).map(|a| a.access.clone());
    let matches = admit_records(state, &caller, PolicyInteraction::Search, page.records, &reach).await?;
    let included = if query.includes.is_empty() && query.revincludes.is_empty() {
        Vec::new()
    } else {
        let found = includes(state, &query, &matches).await?;
        let mut reachable = BTreeMap::new();
        for t in found.iter().map(|r| r.res_type.clone()).collect::<HashSet<_>>() {
            if let Ok(access) = principal.access(Interaction::Read, &t) {
                let scoped_in_sql = access.is_unrestricted();
                reachable.insert(t, TypeAccess { access, scoped_in_sql });
            }
        }
        let reach = |t: &str| reachable.get(t).map(|a| a.access.clone());
        admit_records(state, &caller, PolicyInteraction::Search, found, &reach).await?
    };

    let base = &state.settings.base_url;
    let link = |cursor: Option<&str>| {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        if types.len() > 1 || path.is_empty() {
            serializer.append_pair("_type", &types.join(","));
        }
        for (k, v) in &query.link_params {
            serializer.append_pair(k, v);
        }
        if let Some(cursor) = cursor {
            serializer.append_pair("_cursor", cursor);
        }
        let query_string = serializer.finish();
        let path = if path.is_empty() { String::new() } else { format!("/{path}") };
        if query_string.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{query_string}") }
    };
    let mut links = vec![json!({"relation": "self", "url": link(query.cursor.as_deref())})];
    if let Some(next) = &page.next {
        links.push(json!({"relation": "next", "url": link(Some(next))}));
    }
    if let Some(prev) = &page.prev {
        links.push(json!({"relation": "previous", "url": link(Some(prev))}));
    }

    let mut returned = ReturnedIds::default();
    let mut entries = Vec::with_capacity(matches.len() + included.len() + 1);
    for record in &matches {
        returned.add(record);
        entries.push(entry(base, record, "match", &query)?);
    }
    for record in &included {
        returned.add(record);
        entries.push(entry(base, record, "include", &query)?);
    }
    if !query.ignored.is_empty() {
        let issues: Vec<Value> = query
            .ignored
            .iter()
            .map(|message| json!({"severity": "warning", "code": "not-supported", "diagnostics": message}))
            .collect();
        entries.push(json!({
            "resource": {"resourceType": "OperationOutcome", "issue": issues},
            "search": {"mode": "outcome"},
        }));
    }
    let mut bundle = searchset(links, entries);
    if let Some(total) = page.total {
        bundle["total"] = json!(total);
    }
    if query.summary == Summary::Count && bundle["entry"].as_array().is_some_and(Vec::is_empty) {
        bundle.as_object_mut().map(|b| b.remove("entry"));
    }
    Ok((bundle, returned))
}

/// A searchset Bundle of `entries`, with paging `links`.
pub(super) fn searchset(links: Vec<Value>, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": to_fhir_instant(now_us())},
        "type": "searchset",
        "link": links,
        "entry": entries,
    })
}

/// The ids of `res_type` resources matching a conditional URL's query (at most two: callers
/// only need to tell none, one and several apart). Unknown parameters are an error here, since
/// ignoring one would pick the wrong resource.
pub(super) async fn matching_ids(
    state: &SharedState,
    principal: &Principal,
    headers: &HeaderMap,
    res_type: &str,
    query: &str,
) -> Result<Vec<String>, FhirError> {
    let mut pairs = pairs_of(query);
    pairs.retain(|(k, _)| {
        !k.starts_with('_') || k == "_id" || k == "_tag" || k == "_lastUpdated" || k.starts_with("_has")
    });
    if pairs.is_empty() {
        return Err(FhirError::bad_request(
            IssueType::Required,
            "a conditional interaction needs search parameters that identify the resource",
        ));
    }
    pairs.push(("_count".to_owned(), "2".to_owned()));
    let (bundle, _) =
        search_bundle(state, principal, headers, vec![res_type.to_owned()], pairs, None, res_type).await?;
    let entries = bundle["entry"].as_array().cloned().unwrap_or_default();
    if let Some(outcome) = entries.iter().find(|e| e["search"]["mode"] == "outcome") {
        let message = outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap_or("unsupported parameter");
        return Err(FhirError::bad_request(IssueType::NotSupported, format!("conditional search: {message}")));
    }
    Ok(entries
        .iter()
        .filter(|e| e["search"]["mode"] == "match")
        .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
        .collect())
}

/// Adds the grant's compartment and constraints to the query; false if a constraint cannot be
/// expressed as a search parameter (results are then checked one by one only).
fn restrict_in_sql(parser: &Parser<'_>, res_type: &str, access: &Access, filters: &mut Vec<Filter>) -> bool {
    let Some(restriction) = access.single_restriction() else { return false };
    if let Some(patient) = restriction.patient {
        filters.push(patient_compartment(res_type, patient));
    }
    let mut complete = true;
    for (name, value) in restriction.constraints {
        match registry::find(res_type, name) {
            Some(param) if param.kind == Kind::Token => {
                let pairs = [(name.clone(), value.clone())];
                match parser.parse(vec![res_type.to_owned()], &pairs) {
                    Ok(parsed) if parsed.ignored.is_empty() => filters.extend(parsed.filters),
                    Ok(_) => complete = false,
                    Err(_) => complete = false,
                }
            }
            _ => complete = false,
        }
    }
    complete
}

/// The resources `_include` and `_revinclude` add to a page of matches, iterating (for
/// `:iterate`) up to [`MAX_INCLUDE_DEPTH`] levels. Refuses a page that would include more
/// than [`MAX_INCLUDED`].
async fn includes(
    state: &SharedState,
    query: &SearchQuery,
    matches: &[VersionRecord],
) -> Result<Vec<VersionRecord>, FhirError> {
    let mut seen: HashSet<(String, String)> = matches.iter().map(|r| (r.res_type.clone(), r.id.clone())).collect();
    let mut frontier: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for record in matches {
        frontier.entry(record.res_type.clone()).or_default().push(record.id.clone());
    }
    let mut included = Vec::new();
    for depth in 0..MAX_INCLUDE_DEPTH {
        let active = |inc: &&Include| depth == 0 || inc.iterate;
        let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for include in query.includes.iter().filter(active) {
            let Some(ids) = frontier.get(&include.source) else { continue };
            let params = reference_params(&include.source, include);
            let targets = state
                .store
                .references_from(&include.source, ids, &params, include.target.as_deref())
                .await
                .map_err(store_error)?;
            for (t, id) in targets {
                wanted.entry(t).or_default().push(id);
            }
        }
        for include in query.revincludes.iter().filter(active) {
            let params = reference_params(&include.source, include);
            for (target_type, ids) in &frontier {
                if include.target.as_ref().is_some_and(|t| t != target_type) {
                    continue;
                }
                let sources =
                    state.store.referencing(&include.source, &params, target_type, ids).await.map_err(store_error)?;
                wanted.entry(include.source.clone()).or_default().extend(sources);
            }
        }
        let mut next: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (t, mut ids) in wanted {
            ids.retain(|id| !seen.contains(&(t.clone(), id.clone())));
            ids.sort();
            ids.dedup();
            if ids.is_empty() {
                continue;
            }
            if included.len() + ids.len() > MAX_INCLUDED {
                return Err(FhirError::bad_request(
                    IssueType::TooCostly,
                    format!(
                        "this page would include more than {MAX_INCLUDED} related resources; ask for a smaller _count \
                         or fewer _include/_revinclude parameters"
                    ),
                ));
            }
            for record in state.store.read_current_many(&t, &ids).await.map_err(store_error)? {
                seen.insert((record.res_type.clone(), record.id.clone()));
                next.entry(t.clone()).or_default().push(record.id.clone());
                included.push(record);
            }
        }
        if next.is_empty() || !query.includes.iter().chain(&query.revincludes).any(|i| i.iterate) {
            break;
        }
        frontier = next;
    }
    Ok(included)
}

/// The reference parameter codes an include follows (all of the source type's for `*`).
fn reference_params(source: &str, include: &Include) -> Vec<&'static str> {
    match include.param {
        Some(param) => vec![param.code],
        None => registry::of_type(source).filter(|p| p.kind == Kind::Reference).map(|p| p.code).collect(),
    }
}

/// One Bundle entry, with `_summary`/`_elements` applied to matches.
fn entry(base: &str, record: &VersionRecord, mode: &str, query: &SearchQuery) -> Result<Value, FhirError> {
    let body = record.body.as_deref().ok_or_else(FhirError::internal)?;
    let mut resource: Value = serde_json::from_slice(body).map_err(|_| FhirError::internal())?;
    if mode == "match"
        && let Value::Object(fields) = &mut resource
    {
        subset(&record.res_type, fields, query.summary, query.elements.as_deref());
    }
    Ok(json!({
        "fullUrl": format!("{base}/{}/{}", record.res_type, record.id),
        "resource": resource,
        "search": {"mode": mode},
    }))
}

/// Applies `_summary` and `_elements`, marking a trimmed resource SUBSETTED.
fn subset(res_type: &str, fields: &mut Map<String, Value>, summary: Summary, elements: Option<&[String]>) {
    const ALWAYS: &[&str] = &["resourceType", "id", "meta"];
    let before = fields.len();
    match summary {
        Summary::Text => fields.retain(|k, _| ALWAYS.contains(&k.as_str()) || k == "text" || k == "status"),
        Summary::Data => {
            fields.remove("text");
        }
        Summary::True => {
            let keep = summary_elements(res_type);
            fields.remove("text");
            fields.retain(|k, _| {
                keep.is_empty()
                    || ALWAYS.contains(&k.as_str())
                    || k.starts_with("implicitRules")
                    || keep.iter().any(|e| k == e || e.strip_suffix("[x]").is_some_and(|p| k.starts_with(p)))
            });
        }
        Summary::False | Summary::Count => {}
    }
    if let Some(elements) = elements {
        let top: Vec<&str> = elements.iter().map(|e| e.split('.').next().unwrap_or(e)).collect();
        fields.retain(|k, _| ALWAYS.contains(&k.as_str()) || top.contains(&k.as_str()));
    }
    if fields.len() != before {
        let meta = fields.entry("meta").or_insert_with(|| json!({}));
        if let Value::Object(meta) = meta {
            let tags = meta.entry("tag").or_insert_with(|| json!([]));
            if let Value::Array(tags) = tags {
                tags.push(json!({
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
                    "code": "SUBSETTED",
                    "display": "subsetted"
                }));
            }
        }
    }
}

/// Top-level elements marked as summary elements in R4, for the types clinic systems page
/// through most; other types keep everything but the narrative under `_summary=true`.
fn summary_elements(res_type: &str) -> &'static [&'static str] {
    match res_type {
        "Patient" => &[
            "identifier",
            "active",
            "name",
            "telecom",
            "gender",
            "birthDate",
            "deceased[x]",
            "address",
            "managingOrganization",
            "link",
        ],
        "Practitioner" => &["identifier", "active", "name", "telecom", "address", "gender", "birthDate"],
        "Organization" => &["identifier", "active", "type", "name", "alias", "partOf", "endpoint"],
        "Encounter" => &[
            "identifier",
            "status",
            "class",
            "type",
            "serviceType",
            "priority",
            "subject",
            "episodeOfCare",
            "basedOn",
            "participant",
            "appointment",
            "period",
            "length",
            "reasonCode",
            "reasonReference",
            "diagnosis",
            "account",
            "location",
            "serviceProvider",
            "partOf",
        ],
        "Observation" => &[
            "identifier",
            "basedOn",
            "partOf",
            "status",
            "category",
            "code",
            "subject",
            "focus",
            "encounter",
            "effective[x]",
            "issued",
            "performer",
            "value[x]",
            "dataAbsentReason",
            "interpretation",
            "hasMember",
            "derivedFrom",
            "component",
        ],
        "Condition" => &[
            "identifier",
            "clinicalStatus",
            "verificationStatus",
            "category",
            "severity",
            "code",
            "bodySite",
            "subject",
            "encounter",
            "onset[x]",
            "abatement[x]",
            "recordedDate",
        ],
        "Procedure" => &[
            "identifier",
            "basedOn",
            "partOf",
            "status",
            "category",
            "code",
            "subject",
            "encounter",
            "performed[x]",
            "recorder",
            "asserter",
            "performer",
            "location",
            "reasonCode",
            "reasonReference",
            "bodySite",
            "outcome",
        ],
        "MedicationRequest" => &[
            "identifier",
            "status",
            "statusReason",
            "intent",
            "category",
            "priority",
            "doNotPerform",
            "medication[x]",
            "subject",
            "encounter",
            "authoredOn",
            "requester",
            "performer",
            "reasonCode",
            "reasonReference",
        ],
        "AllergyIntolerance" => &[
            "identifier",
            "clinicalStatus",
            "verificationStatus",
            "type",
            "category",
            "criticality",
            "code",
            "patient",
            "encounter",
            "onset[x]",
            "recordedDate",
            "recorder",
            "asserter",
            "lastOccurrence",
        ],
        "Immunization" => &[
            "identifier",
            "status",
            "vaccineCode",
            "patient",
            "occurrence[x]",
            "primarySource",
            "lotNumber",
            "performer",
        ],
        _ => &[],
    }
}
