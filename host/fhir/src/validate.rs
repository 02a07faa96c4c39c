//! Structural validation of incoming resources: what R4 requires of the clinical types clinic
//! systems write most (required elements, cardinality, required value-set bindings of status
//! codes and the like), plus checks on every resource (no empty or null values, well-formed
//! references, dates and booleans). Every issue is reported at once, with its FHIRPath
//! location, so a client can fix a resource in one round trip.
//!
//! This is not a full profile validator: types outside the table get the generic checks only,
//! and terminology bindings other than the listed required ones are not checked.

use serde_json::{Map, Value};

use super::outcome::IssueType;
use super::search::dates::parse_date_range;

/// One problem found.
#[derive(Debug, Clone, PartialEq)]
pub struct Issue {
    pub code: IssueType,
    pub diagnostics: String,
    /// FHIRPath of the element, e.g. `Observation.code` or `Patient.name[0].given[1]`.
    pub expression: String,
}

/// What R4 requires of one type's top-level elements.
struct Rules {
    /// Elements with minimum cardinality 1 (`name[x]` for a choice).
    required: &'static [&'static str],
    /// Elements with maximum cardinality `*` (must be arrays).
    repeating: &'static [&'static str],
    /// Elements with maximum cardinality 1 that clients often send as arrays by mistake.
    single: &'static [&'static str],
    /// Elements bound to a required value set: (element, allowed codes).
    codes: &'static [(&'static str, &'static [&'static str])],
}

const NONE: Rules = Rules { required: &[], repeating: &[], single: &[], codes: &[] };

fn rules(res_type: &str) -> &'static Rules {
    const GENDER: (&str, &[&str]) = ("gender", &["male", "female", "other", "unknown"]);
    static PATIENT: Rules = Rules {
        required: &[],
        repeating: &[
            "identifier",
            "name",
            "telecom",
            "address",
            "contact",
            "communication",
            "generalPractitioner",
            "link",
            "photo",
        ],
        single: &["gender", "birthDate", "active", "managingOrganization", "maritalStatus"],
        codes: &[GENDER],
    };
    static PRACTITIONER: Rules = Rules {
        required: &[],
        repeating: &["identifier", "name", "telecom", "address", "qualification", "communication"],
        single: &["gender", "birthDate", "active"],
        codes: &[GENDER],
    };
    static ORGANIZATION: Rules = Rules {
        required: &[],
        repeating: &["identifier", "type", "alias", "telecom", "address", "contact", "endpoint"],
        single: &["name", "active", "partOf"],
        codes: &[],
    };
    static OBSERVATION: Rules = Rules {
        required: &["status", "code"],
        repeating: &[
            "identifier",
            "basedOn",
            "partOf",
            "category",
            "focus",
            "performer",
            "interpretation",
            "note",
            "referenceRange",
            "hasMember",
            "derivedFrom",
            "component",
        ],
        single: &["status", "code", "subject", "encounter", "issued", "method", "specimen", "device"],
        codes: &[(
            "status",
            &["registered", "preliminary", "final", "amended", "corrected", "cancelled", "entered-in-error", "unknown"],
        )],
    };
    static CONDITION: Rules = Rules {
        required: &["subject"],
        repeating: &["identifier", "category", "bodySite", "stage", "evidence", "note"],
        single: &["clinicalStatus", "verificationStatus", "severity", "code", "subject", "encounter", "recordedDate"],
        codes: &[],
    };
    static ENCOUNTER: Rules = Rules {
        required: &["status", "class"],
        repeating: &[
            "identifier",
            "statusHistory",
            "classHistory",
            "type",
            "episodeOfCare",
            "basedOn",
            "participant",
            "appointment",
            "reasonCode",
            "reasonReference",
            "diagnosis",
            "account",
            "location",
        ],
        single: &["status", "class", "subject", "period", "length", "serviceProvider", "partOf"],
        codes: &[(
            "status",
            &[
                "planned",
                "arrived",
                "triaged",
                "in-progress",
                "onleave",
                "finished",
                "cancelled",
                "entered-in-error",
                "unknown",
            ],
        )],
    };
    static PROCEDURE: Rules = Rules {
        required: &["status", "subject"],
        repeating: &[
            "identifier",
            "basedOn",
            "partOf",
            "performer",
            "reasonCode",
            "reasonReference",
            "bodySite",
            "note",
        ],
        single: &["status", "code", "subject", "encounter", "location", "outcome"],
        codes: &[(
            "status",
            &[
                "preparation",
                "in-progress",
                "not-done",
                "on-hold",
                "stopped",
                "completed",
                "entered-in-error",
                "unknown",
            ],
        )],
    };
    static MEDICATION_REQUEST: Rules = Rules {
        required: &["status", "intent", "medication[x]", "subject"],
        repeating: &[
            "identifier",
            "category",
            "supportingInformation",
            "reasonCode",
            "reasonReference",
            "basedOn",
            "note",
            "dosageInstruction",
            "detectedIssue",
        ],
        single: &["status", "intent", "priority", "subject", "encounter", "authoredOn", "requester", "performer"],
        codes: &[
            (
                "status",
                &["active", "on-hold", "cancelled", "completed", "entered-in-error", "stopped", "draft", "unknown"],
            ),
            (
                "intent",
                &[
                    "proposal",
                    "plan",
                    "order",
                    "original-order",
                    "reflex-order",
                    "filler-order",
                    "instance-order",
                    "option",
                ],
            ),
            ("priority", &["routine", "urgent", "asap", "stat"]),
        ],
    };
    static ALLERGY: Rules = Rules {
        required: &["patient"],
        repeating: &["identifier", "category", "note", "reaction"],
        single: &[
            "clinicalStatus",
            "verificationStatus",
            "type",
            "criticality",
            "code",
            "patient",
            "encounter",
            "recordedDate",
        ],
        codes: &[
            ("type", &["allergy", "intolerance"]),
            ("criticality", &["low", "high", "unable-to-assess"]),
            ("category", &["food", "medication", "environment", "biologic"]),
        ],
    };
    static IMMUNIZATION: Rules = Rules {
        required: &["status", "vaccineCode", "patient", "occurrence[x]"],
        repeating: &["identifier", "performer", "note", "reasonCode", "reasonReference", "reaction", "protocolApplied"],
        single: &["status", "vaccineCode", "patient", "encounter", "lotNumber"],
        codes: &[("status", &["completed", "entered-in-error", "not-done"])],
    };
    static DIAGNOSTIC_REPORT: Rules = Rules {
        required: &["status", "code"],
        repeating: &[
            "identifier",
            "basedOn",
            "category",
            "performer",
            "resultsInterpreter",
            "specimen",
            "result",
            "media",
            "conclusionCode",
            "presentedForm",
        ],
        single: &["status", "code", "subject", "encounter", "issued"],
        codes: &[(
            "status",
            &[
                "registered",
                "partial",
                "preliminary",
                "final",
                "amended",
                "corrected",
                "appended",
                "cancelled",
                "entered-in-error",
                "unknown",
            ],
        )],
    };
    static DOCUMENT_REFERENCE: Rules = Rules {
        required: &["status", "content"],
        repeating: &["identifier", "category", "author", "relatesTo", "securityLabel", "content"],
        single: &["status", "docStatus", "type", "subject", "date", "custodian", "description"],
        codes: &[
            ("status", &["current", "superseded", "entered-in-error"]),
            ("docStatus", &["preliminary", "final", "amended", "entered-in-error"]),
        ],
    };
    static CONSENT: Rules = Rules {
        required: &["status", "scope", "category"],
        repeating: &["identifier", "category", "performer", "organization", "policy", "verification"],
        single: &["status", "scope", "patient", "dateTime", "provision"],
        codes: &[("status", &["draft", "proposed", "active", "rejected", "inactive", "entered-in-error"])],
    };
    static AUDIT_EVENT: Rules = Rules {
        required: &["type", "recorded", "agent", "source"],
        repeating: &["subtype", "purposeOfEvent", "agent", "entity"],
        single: &["type", "action", "recorded", "outcome", "source"],
        codes: &[("action", &["C", "R", "U", "D", "E"]), ("outcome", &["0", "4", "8", "12"])],
    };
    match res_type {
        "Patient" => &PATIENT,
        "Practitioner" => &PRACTITIONER,
        "Organization" => &ORGANIZATION,
        "Observation" => &OBSERVATION,
        "Condition" => &CONDITION,
        "Encounter" => &ENCOUNTER,
        "Procedure" => &PROCEDURE,
        "MedicationRequest" => &MEDICATION_REQUEST,
        "AllergyIntolerance" => &ALLERGY,
        "Immunization" => &IMMUNIZATION,
        "DiagnosticReport" => &DIAGNOSTIC_REPORT,
        "DocumentReference" => &DOCUMENT_REFERENCE,
        "Consent" => &CONSENT,
        "AuditEvent" => &AUDIT_EVENT,
        _ => &NONE,
    }
}

/// The 400 answer for a resource with `issues` (not empty): every issue, each with its location.
pub fn invalid(issues: Vec<Issue>) -> super::outcome::FhirError {
    let mut issues = issues.into_iter();
    let Some(first) = issues.next() else {
        return super::outcome::FhirError::internal();
    };
    let mut error = super::outcome::FhirError::bad_request(first.code, first.diagnostics).at(first.expression);
    error.more = issues.map(|i| (i.code, i.diagnostics, Some(i.expression))).collect();
    error
}

/// Whether the type has R4 rules beyond the generic checks.
pub fn has_rules(res_type: &str) -> bool {
    !std::ptr::eq(rules(res_type), &NONE)
}

/// Every issue of `resource` (of type `res_type`); empty when it is valid.
pub fn validate(res_type: &str, resource: &Map<String, Value>) -> Vec<Issue> {
    let mut issues = Vec::new();
    let rules = rules(res_type);
    let present = |element: &str| match element.strip_suffix("[x]") {
        Some(prefix) => {
            resource.keys().any(|k| k.strip_prefix(prefix).is_some_and(|s| s.starts_with(char::is_uppercase)))
        }
        None => resource.contains_key(element),
    };
    for element in rules.required {
        if !present(element) {
            issues.push(Issue {
                code: IssueType::Required,
                diagnostics: format!("{res_type}.{element} is required (minimum cardinality 1)"),
                expression: format!("{res_type}.{}", element.trim_end_matches("[x]")),
            });
        }
    }
    for element in rules.repeating {
        if let Some(value) = resource.get(*element)
            && !value.is_array()
        {
            issues.push(Issue {
                code: IssueType::Structure,
                diagnostics: format!("{res_type}.{element} repeats, so it must be a JSON array"),
                expression: format!("{res_type}.{element}"),
            });
        }
    }
    for element in rules.single {
        if resource.get(*element).is_some_and(Value::is_array) {
            issues.push(Issue {
                code: IssueType::Structure,
                diagnostics: format!("{res_type}.{element} occurs at most once, so it must not be an array"),
                expression: format!("{res_type}.{element}"),
            });
        }
    }
    for (element, allowed) in rules.codes {
        let values: Vec<(String, &Value)> = match resource.get(*element) {
            Some(Value::Array(items)) => {
                items.iter().enumerate().map(|(i, v)| (format!("{res_type}.{element}[{i}]"), v)).collect()
            }
            Some(value) => vec![(format!("{res_type}.{element}"), value)],
            None => vec![],
        };
        for (path, value) in values {
            match value.as_str() {
                Some(code) if allowed.contains(&code) => {}
                _ => issues.push(Issue {
                    code: IssueType::CodeInvalid,
                    diagnostics: format!("{path} must be one of: {}", allowed.join(", ")),
                    expression: path,
                }),
            }
        }
    }
    for (key, value) in resource {
        if key != "resourceType" {
            walk(&format!("{res_type}.{key}"), key, value, &mut issues);
        }
    }
    issues
}

/// Generic checks on every element: no nulls or empty values; references, dates and
/// booleans well formed.
fn walk(path: &str, key: &str, value: &Value, issues: &mut Vec<Issue>) {
    let mut issue = |code: IssueType, diagnostics: String| {
        issues.push(Issue { code, diagnostics, expression: path.to_owned() });
    };
    match value {
        Value::Null => issue(IssueType::Structure, format!("{path} is null; leave the element out instead")),
        // FHIR's whitespace is XML's (space, tab, CR, LF): a non-breaking space is content.
        Value::String(text) if text.trim_matches([' ', '\t', '\r', '\n']).is_empty() => {
            issue(IssueType::Value, format!("{path} is empty; leave the element out instead"));
        }
        Value::Array(items) if items.is_empty() => {
            issue(IssueType::Structure, format!("{path} is an empty array; leave the element out instead"));
        }
        Value::Object(object) if object.is_empty() => {
            issue(IssueType::Structure, format!("{path} is an empty object; leave the element out instead"));
        }
        _ => {}
    }
    match (key, value) {
        ("reference", Value::String(reference)) if !reference_is_well_formed(reference) => {
            issues.push(Issue {
                code: IssueType::Value,
                diagnostics: format!(
                    "{path} is not a valid reference: use Type/id, an absolute URL, urn:uuid:..., or #contained-id"
                ),
                expression: path.to_owned(),
            });
        }
        (_, Value::String(text)) if is_date_element(path, key) && parse_date_range(text).is_none() => {
            issues.push(Issue {
                code: IssueType::Value,
                diagnostics: format!(
                    "{path} is not a valid FHIR date/dateTime (e.g. 2024, 2024-03-05, 2024-03-05T10:00:00Z)"
                ),
                expression: path.to_owned(),
            });
        }
        (_, other) if is_boolean_element(key) && !other.is_boolean() => {
            issues.push(Issue {
                code: IssueType::Value,
                diagnostics: format!("{path} must be true or false"),
                expression: path.to_owned(),
            });
        }
        (_, Value::Object(object)) => {
            for (child_key, child) in object {
                walk(&format!("{path}.{child_key}"), child_key, child, issues);
            }
        }
        (_, Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                walk(&format!("{path}[{i}]"), key, item, issues);
            }
        }
        _ => {}
    }
}

/// Elements of type date, dateTime or instant in the common types (and Period bounds), by
/// name and place (`path` is `Type.element...`): `start` and `end` are dates in a Period and
/// at the top of Appointment and Slot (not `GraphDefinition.start`, a code); `issued` and
/// `recorded` at the top of a resource.
fn is_date_element(path: &str, key: &str) -> bool {
    let top_level = path.matches('.').count() == 1;
    let root = path.split('.').next().unwrap_or_default();
    match key {
        "start" | "end" if top_level => return matches!(root, "Appointment" | "Slot"),
        "start" | "end" => return true,
        "issued" | "recorded" => return top_level,
        _ => {}
    }
    matches!(key, "birthDate" | "recordedDate" | "authoredOn" | "lastOccurrence" | "dateTime" | "lastUpdated")
        || key.ends_with("DateTime")
        || (key.ends_with("Date") && key.len() > 4 && !key.starts_with("valid"))
        || key.ends_with("Instant")
}

fn is_boolean_element(key: &str) -> bool {
    matches!(key, "active" | "primarySource" | "doNotPerform" | "reported" | "preferred") || key.ends_with("Boolean")
}

/// `Type/id`, `Type/id/_history/v`, absolute URLs, `urn:uuid:`, `urn:oid:` and local `#id`.
fn reference_is_well_formed(reference: &str) -> bool {
    if reference.starts_with('#') {
        return reference.len() > 1;
    }
    if let Some(uuid) = reference.strip_prefix("urn:uuid:") {
        return uuid::Uuid::parse_str(uuid).is_ok();
    }
    if reference.starts_with("urn:oid:") || reference.starts_with("http://") || reference.starts_with("https://") {
        return !reference.contains(char::is_whitespace);
    }
    // An id's characters; not its length: a reference may name a resource this server cannot
    // hold (an id over 64 characters) without being malformed.
    let id_like = |id: &str| !id.is_empty() && id.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let segments: Vec<&str> = reference.split('/').collect();
    match segments.as_slice() {
        [t, id] | [t, id, "_history", _] => super::resource_types::is_resource_type(t) && id_like(id),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn issues(res_type: &str, resource: Value) -> Vec<Issue> {
        validate(res_type, resource.as_object().unwrap())
    }

    #[test]
    fn every_issue_is_reported_with_its_location() {
        let found = issues(
            "Observation",
            json!({"resourceType": "Observation", "status": "done", "category": {"text": "x"},
                   "subject": {"reference": "Patient with spaces"}, "effectiveDateTime": "last week",
                   "note": [], "valueString": ""}),
        );
        let at: Vec<&str> = found.iter().map(|i| i.expression.as_str()).collect();
        for expected in [
            "Observation.code",
            "Observation.status",
            "Observation.category",
            "Observation.subject.reference",
            "Observation.effectiveDateTime",
            "Observation.note",
            "Observation.valueString",
        ] {
            assert!(at.contains(&expected), "{expected} missing from {at:?}");
        }
        assert!(found.iter().any(|i| i.code == IssueType::CodeInvalid && i.diagnostics.contains("final")));
    }

    #[test]
    fn valid_resources_pass() {
        assert!(
            issues(
                "Observation",
                json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "subject": {"reference": "Patient/p1"}, "effectivePeriod": {"start": "2024-01-01T10:00:00Z"}})
            )
            .is_empty()
        );
        assert!(
            issues(
                "Patient",
                json!({"resourceType": "Patient", "gender": "female", "birthDate": "1970-04-02",
            "managingOrganization": {"reference": "urn:uuid:0b5e3a46-4f2b-4c31-9d1b-8f0f6f0a0003"}, "active": true})
            )
            .is_empty()
        );
        assert!(issues("VisionPrescription", json!({"resourceType": "VisionPrescription"})).is_empty());
        assert!(
            issues(
                "MedicationRequest",
                json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
            "medicationCodeableConcept": {"text": "x"}, "subject": {"reference": "Patient/p"}})
            )
            .is_empty()
        );
    }

    #[test]
    fn generic_checks_apply_to_every_type() {
        let found = issues("Basic", json!({"resourceType": "Basic", "active": "yes", "created": null}));
        assert_eq!(found.len(), 2, "{found:?}");
        assert!(!has_rules("Basic") && has_rules("Patient"));
        assert!(!issues("Patient", json!({"resourceType": "Patient", "gender": "F"})).is_empty());
    }
}
