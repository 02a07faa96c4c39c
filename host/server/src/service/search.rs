//! FHIR search: type, compartment and system level, with `_include`/`_revinclude`, totals and
//! paging.
//!
//! A search runs in this order: the scope check on every searched type *and* on every type a
//! chain or `_has` reaches into (403 naming it); parsing (400 for malformed values; unknown
//! parameters per `Prefer: handling`); the SQL search, with the access predicate compiled into
//! the main query, each chain hop, each `_has` and the count; then the policy plugins, which
//! judge matches *before* the page is cut (so a page, its total and its cursors only reflect
//! what the caller may see). Included resources come from visible matches, are read through
//! the same predicate (for reading), and are judged by the policies too.

use std::collections::{BTreeMap, HashSet};

use futures_util::future::BoxFuture;
use serde_json::{Map, Value, json};

use super::cursor::{CursorKey, bad_cursor, binding};
use super::paging::fill;
use super::{Disclosed, Records, Requester};
use crate::auth::{AccessPredicate, Interaction};
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::search::query::{
    Condition, Filter, Include, MAX_INCLUDE_DEPTH, Parser, SearchError, SearchQuery, Summary, TokenMatch, Total,
};
use crate::fhir::search::registry::{self, Kind};
use crate::policy::PolicyInteraction;
use crate::store::{Match, Position, SearchScope, Store, VersionRecord};

/// Included resources (`_include`, `_revinclude`) per page at most; beyond, the search is
/// refused with advice rather than left to time out.
pub const MAX_INCLUDED: usize = 1000;

/// A search request.
pub struct SearchRequest {
    pub types: Vec<String>,
    pub pairs: Vec<(String, String)>,
    /// `GET /Patient/{id}/{type}`: the patient whose compartment is searched.
    pub compartment: Option<String>,
    /// The path links are built on (`Observation`, `Patient/p/Observation`, `""` for system).
    pub path: String,
    /// `Prefer: handling=strict`.
    pub strict: bool,
}

/// A searchset Bundle and what it disclosed.
pub struct Searchset {
    pub bundle: Value,
    pub disclosed: Disclosed,
}

impl Records {
    pub async fn search(&self, who: Requester<'_>, request: SearchRequest) -> Result<Searchset, FhirError> {
        let vis = self.predicate(who, Interaction::Search).await?;
        for t in &request.types {
            Self::reach_of(who, &vis, Interaction::Search, t)?;
        }
        let key = self.store.blind_index_key().await?;
        let parser = Parser { key: &key, base_url: &self.base_url, strict: request.strict };
        let mut query = parser.parse(request.types.clone(), &request.pairs).map_err(search_error)?;
        // A chain or `_has` searches its types too: the token must be allowed to, and reaches
        // them only as far as it reaches them directly (the predicate is compiled into each hop).
        let mut hops = Vec::new();
        query.filters.iter().for_each(|f| f.searched_types(&mut hops));
        hops.sort();
        hops.dedup();
        for t in &hops {
            Self::reach_of(who, &vis, Interaction::Search, t).map_err(|mut error| {
                error.diagnostics = format!(
                    "this search reaches into {t} (a chain or _has), which the token may not search: {}",
                    error.diagnostics
                );
                error
            })?;
        }
        let mut scope = SearchScope::default();
        if let Some(patient) = &request.compartment {
            scope.filters.extend(request.types.iter().map(|t| patient_compartment(t, patient)));
        }
        let gated = self.gated(&query.types, PolicyInteraction::Search);
        if gated && query.total == Total::Accurate {
            query.ignored.push(
                "_total is not given: a policy plugin judges these results one by one, so no count of them exists \
                 that would not reveal the ones it hides"
                    .to_owned(),
            );
            query.total = Total::None;
        }
        let total = match query.total {
            Total::Accurate => Some(self.store.search_count(&query, &scope, &vis).await?),
            Total::None => None,
        };

        let cursors = CursorKey::derive(&key);
        let kind = format!("search|{}|{}", request.path, query.types.join(","));
        let bound = binding(who.principal, &kind, &query.link_params);
        let from: Option<Position> = match query.cursor.as_deref() {
            Some(text) => {
                let position: Position =
                    serde_json::from_slice(&cursors.open(&bound, text)?).map_err(|_| bad_cursor())?;
                if position.values.len() != Store::position_len(&query) {
                    return Err(bad_cursor());
                }
                Some(position)
            }
            None => None,
        };
        let page = if query.summary == Summary::Count {
            Page::default()
        } else {
            self.page(who, &query, &scope, &vis, from.as_ref(), gated).await?
        };

        let seal = |values: &[Value], backwards: bool| {
            let position = Position { backwards, values: values.to_vec() };
            cursors.seal(&bound, &serde_json::to_vec(&position).unwrap_or_default())
        };
        let link = |cursor: Option<&str>| self.link(&request, &query, cursor);
        let mut links = vec![json!({"relation": "self", "url": link(query.cursor.as_deref())})];
        if let Some(next) = &page.next {
            links.push(json!({"relation": "next", "url": link(Some(&seal(next, false)))}));
        }
        if let Some(prev) = &page.prev {
            links.push(json!({"relation": "previous", "url": link(Some(&seal(prev, true)))}));
        }
        let matches = page.records;
        let included = if query.includes.is_empty() && query.revincludes.is_empty() {
            Vec::new()
        } else {
            let readable = self.predicate(who, Interaction::Read).await?;
            let found = self.includes(&query, &matches, &readable).await?;
            self.admit(who, PolicyInteraction::Search, found).await?
        };

        let mut disclosed = Disclosed::default();
        let mut entries = Vec::with_capacity(matches.len() + included.len() + 1);
        for record in &matches {
            disclosed.add(record);
            entries.push(entry(&self.base_url, record, "match", &query)?);
        }
        for record in &included {
            disclosed.add(record);
            entries.push(entry(&self.base_url, record, "include", &query)?);
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
        if let Some(total) = total {
            bundle["total"] = json!(total);
        }
        if query.summary == Summary::Count && bundle["entry"].as_array().is_some_and(Vec::is_empty) {
            bundle.as_object_mut().map(|b| b.remove("entry"));
        }
        Ok(Searchset { bundle, disclosed })
    }

    /// One page of matches from `from` (the start if `None`), the policies' verdicts applied
    /// before it is cut.
    async fn page(
        &self,
        who: Requester<'_>,
        query: &SearchQuery,
        scope: &SearchScope,
        vis: &AccessPredicate,
        from: Option<&Position>,
        gated: bool,
    ) -> Result<Page, FhirError> {
        let count = query.count;
        let backwards = from.is_some_and(|p| p.backwards);
        let position = |m: &Match| Position { backwards, values: m.position.values.clone() };
        let read = |at: Option<Position>, limit: usize| -> BoxFuture<'_, Result<(Vec<Match>, bool), FhirError>> {
            Box::pin(async move {
                let rows = self.store.search_rows(query, scope, vis, at.as_ref(), limit).await?;
                Ok((rows.matches, rows.more))
            })
        };
        let keep = |matches: Vec<Match>| -> BoxFuture<'_, Result<Vec<Match>, FhirError>> {
            Box::pin(async move {
                if !gated {
                    return Ok(matches);
                }
                let keyed = matches.into_iter().map(|m| (m.position, m.record)).collect();
                let (admitted, _) = self.admit_keyed(who, PolicyInteraction::Search, keyed).await?;
                Ok(admitted.into_iter().map(|(position, record)| Match { record, position }).collect())
            })
        };
        let mut scan = fill(count, from.cloned(), if gated { 50 } else { 1 }, position, read, keep).await?;
        // The far end's position: the last kept match when there are more, or where the scan
        // stopped (a sealed cursor: the position is not disclosed).
        let beyond = scan.cut(count, position).map(|p| p.values);
        let mut kept = scan.kept;
        let near = from.and(kept.first().map(|m| m.position.values.clone()));
        if backwards {
            kept.reverse();
        }
        let (next, prev) = if backwards { (near, beyond) } else { (beyond, near) };
        Ok(Page { records: kept.into_iter().map(|m| m.record).collect(), next, prev })
    }

    /// The URL of this search with `cursor`.
    fn link(&self, request: &SearchRequest, query: &SearchQuery, cursor: Option<&str>) -> String {
        let mut serializer = form_urlencoded::Serializer::new(String::new());
        if query.types.len() > 1 || request.path.is_empty() {
            serializer.append_pair("_type", &query.types.join(","));
        }
        for (k, v) in &query.link_params {
            serializer.append_pair(k, v);
        }
        if let Some(cursor) = cursor {
            serializer.append_pair("_cursor", cursor);
        }
        let query_string = serializer.finish();
        let path = if request.path.is_empty() { String::new() } else { format!("/{}", request.path) };
        let base = &self.base_url;
        if query_string.is_empty() { format!("{base}{path}") } else { format!("{base}{path}?{query_string}") }
    }

    /// The resources `_include` and `_revinclude` add to a page of matches, iterating (for
    /// `:iterate`) up to [`MAX_INCLUDE_DEPTH`] levels, each read within `readable`'s reach.
    /// Refuses a page that would include more than [`MAX_INCLUDED`] (counted among what the
    /// caller may see, or among references the caller's matches hold).
    async fn includes(
        &self,
        query: &SearchQuery,
        matches: &[VersionRecord],
        readable: &AccessPredicate,
    ) -> Result<Vec<VersionRecord>, FhirError> {
        let mut seen: HashSet<(String, String)> = matches.iter().map(|r| (r.res_type.clone(), r.id.clone())).collect();
        let mut frontier: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for record in matches {
            frontier.entry(record.res_type.clone()).or_default().push(record.id.clone());
        }
        let too_many = || {
            FhirError::bad_request(
                IssueType::TooCostly,
                format!(
                    "this page would include more than {MAX_INCLUDED} related resources; ask for a smaller _count or \
                     fewer _include/_revinclude parameters"
                ),
            )
        };
        let mut included = Vec::new();
        for depth in 0..MAX_INCLUDE_DEPTH {
            let active = |inc: &&Include| depth == 0 || inc.iterate;
            let mut wanted: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for include in query.includes.iter().filter(active) {
                let Some(ids) = frontier.get(&include.source) else { continue };
                let params = reference_params(&include.source, include);
                let targets =
                    self.store.references_from(&include.source, ids, &params, include.target.as_deref()).await?;
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
                    let sources = self
                        .store
                        .referencing(&include.source, &params, target_type, ids, readable, MAX_INCLUDED + 1)
                        .await?;
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
                    return Err(too_many());
                }
                for record in self.store.read_current_many(&t, &ids, readable).await? {
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
}

/// A page of matches, in sort order, and the positions its `next` and `previous` links start
/// from.
#[derive(Default)]
struct Page {
    records: Vec<VersionRecord>,
    next: Option<Vec<Value>>,
    prev: Option<Vec<Value>>,
}

/// The 400 of a search the parser refuses.
pub(crate) fn search_error(error: SearchError) -> FhirError {
    let code = if error.too_costly {
        IssueType::TooCostly
    } else if error.unsupported {
        IssueType::NotSupported
    } else {
        IssueType::Value
    };
    FhirError::bad_request(code, error.message)
}

/// The filter that confines a search of `res_type` to patient `patient_id`'s compartment.
fn patient_compartment(res_type: &str, patient_id: &str) -> Filter {
    if res_type == "Patient"
        && let Some(param) = registry::find("Patient", "_id")
    {
        return Filter::Param {
            param,
            condition: Condition::Token(vec![TokenMatch::Code(patient_id.to_owned())]),
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

/// The reference parameter codes an include follows (all of the source type's for `*`).
fn reference_params(source: &str, include: &Include) -> Vec<&'static str> {
    match include.param {
        Some(param) => vec![param.code],
        None => registry::of_type(source).filter(|p| p.kind == Kind::Reference).map(|p| p.code).collect(),
    }
}

/// A searchset Bundle of `entries`, with paging `links`.
pub fn searchset(links: Vec<Value>, entries: Vec<Value>) -> Value {
    json!({
        "resourceType": "Bundle",
        "id": uuid::Uuid::new_v4().to_string(),
        "meta": {"lastUpdated": to_fhir_instant(now_us())},
        "type": "searchset",
        "link": links,
        "entry": entries,
    })
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
