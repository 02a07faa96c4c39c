//! Validation policy: a compliance rule set checked on every create and update.
//! - Observation: `status`, `code`, `subject` and an effective time (`effectiveDateTime`,
//!   `effectivePeriod`, `effectiveInstant` or `effectiveTiming`) are required.
//! - Patient: at least one identifier, and one from `patient_identifier_system` when the
//!   binding config names it.
//!
//! Binding config (optional): `{"patient_identifier_system": "urn:oid:..."}`

use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use hearth::plugin::types::Severity;

struct Validate;

fn required(path: &str, what: &str) -> Issue {
    Issue {
        severity: Severity::Error,
        code: "required".into(),
        diagnostics: format!("{path} is required: {what}"),
        expression: Some(path.into()),
    }
}

impl Guest for Validate {
    fn authorize(_request: Request, resources: Vec<SubjectResource>) -> Vec<Decision> {
        resources.iter().map(|_| Decision::Allow).collect()
    }

    fn validate(request: Request, resource: SubjectResource) -> Vec<Issue> {
        let config: Value = serde_json::from_str(&request.config).unwrap_or(Value::Null);
        let Some(body) = resource.json.as_deref().and_then(|j| serde_json::from_str::<Value>(j).ok()) else {
            return Vec::new();
        };
        let present = |key: &str| body.get(key).is_some_and(|v| !v.is_null());
        let mut issues = Vec::new();
        match resource.resource_type.as_str() {
            "Observation" => {
                if !present("status") {
                    issues.push(required("Observation.status", "the result's status"));
                }
                if !present("code") {
                    issues.push(required("Observation.code", "what was observed"));
                }
                if !present("subject") {
                    issues.push(required("Observation.subject", "whom the observation is about"));
                }
                let effective = ["effectiveDateTime", "effectivePeriod", "effectiveInstant", "effectiveTiming"];
                if !effective.iter().any(|k| present(k)) {
                    issues.push(required("Observation.effective[x]", "when the observation was made"));
                }
            }
            "Patient" => {
                let identifiers = body.get("identifier").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
                match config.get("patient_identifier_system").and_then(Value::as_str) {
                    Some(system) => {
                        let has = identifiers.iter().any(|i| i.get("system").and_then(Value::as_str) == Some(system));
                        if !has {
                            issues.push(required("Patient.identifier", &format!("an identifier with system {system}")));
                        }
                    }
                    None if identifiers.is_empty() => issues.push(required("Patient.identifier", "an identifier")),
                    None => {}
                }
            }
            _ => {}
        }
        issues
    }
}

export!(Validate);
