//! The audit chain as FHIR: each entry rendered as an `AuditEvent` resource (the IHE Basic
//! Audit Log Patterns shape where it fits), the lookup terms written beside each entry so
//! auditors' searches are index scans, and the parsing of `GET /AuditEvent?...`.
//!
//! The chain entry stays the record. Terms only find entries; what is shown is always the
//! entry itself, so a term that was altered can hide an entry from a search but never change
//! what an entry says (`hearth audit verify` checks the entries).

use serde_json::{Value, json};

use super::{AuditEvent, Outcome};
use crate::instant::parse_instant;
use crate::search::dates::DateRange;
use crate::search::query::{Prefix, date_value};

/// The search parameters of `AuditEvent` on this server: (code, FHIR type, what it matches).
pub const PARAMS: &[(&str, &str, &str)] = &[
    ("_id", "token", "the entry's sequence number in the audit chain"),
    ("date", "date", "when the entry was recorded (prefixes eq, ne, gt, lt, ge, le, sa, eb, ap)"),
    ("agent", "reference", "the acting user (token subject, or cert:NAME for mutual TLS) or client id"),
    ("address", "string", "the client's IP address"),
    ("patient", "reference", "a patient whose compartment the interaction read or wrote (Patient/ID or ID)"),
    ("entity", "reference", "a resource the interaction named or returned (Type/ID)"),
    ("entity-type", "token", "the type of a resource the interaction named or returned"),
    ("subtype", "token", "the interaction (read, vread, search-type, create, update, delete, admin-..., ...)"),
    ("action", "token", "C, R, U, D or E"),
    ("outcome", "token", "0 (success), 4 (refused or bad request), 8 (denied), 12 (server error)"),
    ("policy", "uri", "the rule that decided (scope, authentication, policy:NAME, validation:NAME)"),
    ("purpose", "token", "BTG for emergency (break-glass) accesses"),
];

/// Terms per entry are a bounded set; a search returning many resources names each one.
pub struct Lookup {
    pub at_us: i64,
    pub terms: Vec<(&'static str, String)>,
}

/// The lookup rows of one entry.
pub fn lookup_of(event: &AuditEvent) -> Lookup {
    let mut terms: Vec<(&'static str, String)> = Vec::new();
    let mut add = |param: &'static str, value: &str| {
        if !value.is_empty() && !terms.iter().any(|(p, v)| *p == param && v == value) {
            terms.push((param, value.to_owned()));
        }
    };
    for agent in [&event.subject, &event.client_id].into_iter().flatten() {
        add("agent", agent);
    }
    if let Some(ip) = &event.ip {
        add("address", ip);
    }
    add("subtype", &event.action);
    add("action", action_code(&event.action));
    add("outcome", outcome_code(event));
    if let Some(rule) = &event.decided_by {
        add("policy", rule);
    }
    if event.break_glass.is_some() {
        add("purpose", "BTG");
    }
    for patient in &event.patients {
        add("patient", patient);
    }
    for (res_type, id) in named_entity(event).into_iter().chain(event.returned.iter().filter_map(|r| r.split_once('/')))
    {
        add("entity", &format!("{res_type}/{id}"));
        add("entity-type", res_type);
        if res_type == "Patient" {
            add("patient", id);
        }
    }
    if event.action == "search-compartment" {
        if let Some(id) = &event.resource_id {
            add("patient", id);
        }
        if let Some(res_type) = &event.resource_type {
            add("entity-type", res_type);
        }
    }
    if event.review.is_some()
        && let Some(seq) = &event.resource_id
    {
        add("reviews", seq);
    }
    Lookup { at_us: parse_instant(&event.at).unwrap_or(0), terms }
}

/// The resource an entry names by type and id, if it names one (a compartment search names
/// the patient and the searched type, not a resource).
fn named_entity(event: &AuditEvent) -> Option<(&str, &str)> {
    if event.action == "search-compartment" {
        return None;
    }
    Some((event.resource_type.as_deref()?, event.resource_id.as_deref()?))
}

/// The AuditEvent.action code of an interaction.
pub fn action_code(action: &str) -> &'static str {
    match action {
        "create" => "C",
        "read" | "vread" => "R",
        "update" => "U",
        "delete" => "D",
        a if a.starts_with("patch") => "U",
        _ => "E",
    }
}

/// The AuditEvent.outcome code of an entry.
pub fn outcome_code(event: &AuditEvent) -> &'static str {
    match event.outcome {
        Outcome::Success => "0",
        Outcome::Denied => "8",
        Outcome::Failed if event.status >= 500 => "12",
        Outcome::Failed => "4",
    }
}

const RESTFUL: &[&str] = &[
    "read",
    "vread",
    "update",
    "patch",
    "delete",
    "history-instance",
    "history-type",
    "history-system",
    "create",
    "search-type",
    "search-system",
    "batch",
    "transaction",
];

/// Entry `seq` as a FHIR `AuditEvent`. `hash` is the entry's chain hash, so an auditor can tie
/// the resource to the verified chain.
pub fn to_resource(seq: i64, event: &AuditEvent, hash: &[u8]) -> Value {
    let rest = !event.action.starts_with("admin") && !event.action.starts_with("cli");
    let event_type = if rest {
        json!({"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest",
               "display": "RESTful Operation"})
    } else {
        json!({"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110100",
               "display": "Application Activity"})
    };
    let subtype_system = if RESTFUL.contains(&event.action.as_str()) {
        "http://hl7.org/fhir/restful-interaction"
    } else {
        "urn:hearth:audit-action"
    };
    let mut agents = Vec::new();
    let mut user = json!({
        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/extra-security-role-type",
                             "code": "humanuser", "display": "human user"}]},
        "who": {"identifier": {"value": event.subject.clone().unwrap_or_else(|| "anonymous".to_owned())}},
        "requestor": true,
    });
    if let Some(issuer) = &event.issuer {
        user["who"]["identifier"]["system"] = json!(issuer);
    }
    if let Some(ip) = &event.ip {
        user["network"] = json!({"address": ip, "type": "2"});
    }
    if let Some(rule) = &event.decided_by {
        user["policy"] = json!([rule]);
    }
    agents.push(user);
    if let Some(client) = &event.client_id {
        agents.push(json!({
            "type": {"coding": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110150",
                                 "display": "Application"}]},
            "who": {"identifier": {"value": client}},
            "requestor": false,
        }));
    }
    let mut entities = Vec::new();
    let domain = |reference: String| {
        json!({
            "what": {"reference": reference},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2",
                     "display": "System Object"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "4",
                     "display": "Domain Resource"},
        })
    };
    if let Some((res_type, id)) = named_entity(event) {
        let reference = match event.version {
            Some(v) => format!("{res_type}/{id}/_history/{v}"),
            None => format!("{res_type}/{id}"),
        };
        entities.push(domain(reference));
    }
    for returned in &event.returned {
        entities.push(domain(returned.clone()));
    }
    let mut patients: Vec<&str> = event.patients.iter().map(String::as_str).collect();
    if event.action == "search-compartment"
        && let Some(id) = &event.resource_id
    {
        patients.push(id);
    }
    patients.sort_unstable();
    patients.dedup();
    for patient in patients {
        entities.push(json!({
            "what": {"reference": format!("Patient/{patient}")},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1",
                     "display": "Person"},
            "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1",
                     "display": "Patient"},
        }));
    }
    if let Some(request_id) = &event.request_id {
        entities.push(json!({
            "what": {"identifier": {"system": "urn:hearth:request-id", "value": request_id}},
            "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"},
            "description": "the request's id (X-Request-Id)",
        }));
    }
    let mut resource = json!({
        "resourceType": "AuditEvent",
        "id": seq.to_string(),
        "meta": {"versionId": "1", "lastUpdated": event.at},
        "extension": [{
            "url": "urn:hearth:audit-chain-hash",
            "valueString": hearth_crypto::hex(hash),
        }],
        "type": event_type,
        "subtype": [{"system": subtype_system, "code": event.action}],
        "action": action_code(&event.action),
        "recorded": event.at,
        "outcome": outcome_code(event),
        "outcomeDesc": format!("HTTP {}", event.status),
        "agent": agents,
        "source": {
            "observer": {"display": "Hearth"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4",
                      "display": "Application Server"}],
        },
    });
    if let Some(reason) = &event.break_glass {
        resource["purposeOfEvent"] = json!([{
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "BTG",
                        "display": "break the glass"}],
            "text": reason,
        }]);
    }
    if let Some(review) = &event.review {
        resource["outcomeDesc"] =
            json!(format!("HTTP {}; review {}: {}", event.status, review.decision, review.comment));
    }
    if let Some(count) = event.count {
        resource["outcomeDesc"] =
            json!(format!("HTTP {}; {count} such refusals from this address, summarised in this entry", event.status));
    }
    if !entities.is_empty() {
        resource["entity"] = Value::Array(entities);
    }
    resource
}

/// `GET /AuditEvent?...` parsed.
#[derive(Debug, Default)]
pub struct AuditQuery {
    /// Term filters: every one must match (AND); within one, any value (OR).
    pub terms: Vec<(&'static str, Vec<String>)>,
    /// `_id`: these sequence numbers only.
    pub seqs: Vec<i64>,
    pub dates: Vec<(Prefix, DateRange)>,
    pub count: usize,
    /// Oldest first (`_sort=date`); newest first by default.
    pub ascending: bool,
    /// Continue after this sequence number (in the order of the search).
    pub cursor: Option<i64>,
    /// Parameters that were not understood (lenient handling reports them).
    pub ignored: Vec<String>,
}

/// Entries per page unless `_count` says otherwise, and at most.
pub const DEFAULT_COUNT: usize = 50;
pub const MAX_COUNT: usize = 1000;

/// Parses the query pairs. `Err` is the message of a 400: malformed values always, unknown
/// parameters only when `strict`.
pub fn parse_query(pairs: &[(String, String)], strict: bool) -> Result<AuditQuery, String> {
    let mut query = AuditQuery { count: DEFAULT_COUNT, ..AuditQuery::default() };
    for (key, value) in pairs {
        let values: Vec<String> =
            value.split(',').map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned).collect();
        if values.is_empty() && !key.starts_with('_') {
            return Err(format!("'{key}' has no value"));
        }
        match key.as_str() {
            "_id" => {
                for v in &values {
                    query.seqs.push(v.parse().map_err(|_| format!("'_id' takes audit entry numbers, not '{v}'"))?);
                }
            }
            "date" => {
                for v in &values {
                    query.dates.push(date_value("date", v).map_err(|e| e.message)?);
                }
            }
            "_count" => {
                let n: usize = value.parse().map_err(|_| "'_count' takes a whole number".to_owned())?;
                if n > MAX_COUNT {
                    return Err(format!("'_count' is at most {MAX_COUNT} for AuditEvent"));
                }
                query.count = n;
            }
            "_sort" => match value.as_str() {
                "date" | "_lastUpdated" => query.ascending = true,
                "-date" | "-_lastUpdated" => query.ascending = false,
                other => return Err(format!("AuditEvent sorts by 'date' or '-date' only, not '{other}'")),
            },
            "_cursor" => {
                query.cursor = Some(value.parse().map_err(|_| "'_cursor' is not one this server gave".to_owned())?);
            }
            "_format" => {}
            other => match PARAMS.iter().find(|(code, _, _)| *code == other) {
                Some((code, _, _)) => {
                    let values = match *code {
                        "patient" => {
                            values.iter().map(|v| v.strip_prefix("Patient/").unwrap_or(v).to_owned()).collect()
                        }
                        _ => values,
                    };
                    query.terms.push((code, values));
                }
                None if strict => {
                    return Err(format!("'{other}' is not a search parameter of AuditEvent on this server"));
                }
                None => query.ignored.push(other.to_owned()),
            },
        }
    }
    // The most telling filter drives the lookup; the others check each candidate.
    let rank = |code: &str| PARAMS.iter().position(|(c, _, _)| *c == code).unwrap_or(usize::MAX);
    let drive_order = ["patient", "entity", "agent", "address", "purpose", "policy", "entity-type", "subtype"];
    query
        .terms
        .sort_by_key(|(code, _)| drive_order.iter().position(|c| c == code).unwrap_or(drive_order.len() + rank(code)));
    Ok(query)
}

/// Whether an entry recorded at `at_us` satisfies a date condition.
pub fn date_matches(at_us: i64, prefix: Prefix, range: DateRange) -> bool {
    match prefix {
        Prefix::Eq | Prefix::Ap => range.lo <= at_us && at_us <= range.hi,
        Prefix::Ne => at_us < range.lo || at_us > range.hi,
        Prefix::Gt | Prefix::Sa => at_us > range.hi,
        Prefix::Lt | Prefix::Eb => at_us < range.lo,
        Prefix::Ge => at_us >= range.lo,
        Prefix::Le => at_us <= range.hi,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> AuditEvent {
        AuditEvent {
            at: "2026-11-28T10:00:00.000000Z".into(),
            action: "read".into(),
            status: 200,
            subject: Some("dr-a".into()),
            client_id: Some("ehr".into()),
            resource_type: Some("Observation".into()),
            resource_id: Some("o1".into()),
            version: Some(2),
            patients: vec!["p1".into()],
            ..AuditEvent::default()
        }
    }

    #[test]
    fn terms_name_who_what_and_whose() {
        let lookup = lookup_of(&event());
        let has = |p: &str, v: &str| lookup.terms.iter().any(|(tp, tv)| *tp == p && tv == v);
        assert!(has("agent", "dr-a") && has("agent", "ehr"));
        assert!(has("entity", "Observation/o1") && has("entity-type", "Observation"));
        assert!(has("patient", "p1") && has("subtype", "read") && has("action", "R") && has("outcome", "0"));
        assert!(lookup.at_us > 0);
        let compartment = AuditEvent {
            action: "search-compartment".into(),
            resource_type: Some("Observation".into()),
            resource_id: Some("p9".into()),
            ..event()
        };
        let lookup = lookup_of(&compartment);
        assert!(!lookup.terms.iter().any(|(p, v)| *p == "entity" && v == "Observation/p9"));
        assert!(lookup.terms.iter().any(|(p, v)| *p == "patient" && v == "p9"));
    }

    #[test]
    fn rendered_events_carry_the_balp_elements() {
        let resource = to_resource(7, &AuditEvent { break_glass: Some("ER".into()), ..event() }, &[0xab; 32]);
        assert_eq!(resource["id"], "7");
        assert_eq!(resource["action"], "R");
        assert_eq!(resource["subtype"][0]["system"], "http://hl7.org/fhir/restful-interaction");
        assert_eq!(resource["entity"][0]["what"]["reference"], "Observation/o1/_history/2");
        assert_eq!(resource["entity"][1]["what"]["reference"], "Patient/p1");
        assert_eq!(resource["purposeOfEvent"][0]["coding"][0]["code"], "BTG");
        assert_eq!(resource["extension"][0]["valueString"], "ab".repeat(32));
    }

    #[test]
    fn queries_parse_and_refuse() {
        let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
            list.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
        };
        let q = parse_query(&pairs(&[("outcome", "8"), ("patient", "Patient/p1"), ("date", "ge2026")]), true).unwrap();
        assert_eq!(q.terms[0], ("patient", vec!["p1".to_owned()]));
        assert_eq!(q.dates.len(), 1);
        assert!(parse_query(&pairs(&[("name", "x")]), true).is_err());
        assert_eq!(parse_query(&pairs(&[("name", "x")]), false).unwrap().ignored, vec!["name"]);
        assert!(parse_query(&pairs(&[("_count", "5000")]), false).is_err());
        assert!(parse_query(&pairs(&[("date", "yesterday")]), false).is_err());
    }

    #[test]
    fn date_prefixes_compare_the_recorded_instant() {
        let day = crate::search::dates::parse_date_range("2026-11-28").unwrap();
        let noon = day.lo + 12 * 3_600_000_000;
        assert!(date_matches(noon, Prefix::Eq, day));
        assert!(!date_matches(noon, Prefix::Ne, day));
        assert!(date_matches(noon, Prefix::Ge, day) && date_matches(noon, Prefix::Le, day));
        assert!(!date_matches(noon, Prefix::Gt, day) && !date_matches(noon, Prefix::Lt, day));
        assert!(date_matches(day.hi + 1, Prefix::Gt, day));
    }
}
