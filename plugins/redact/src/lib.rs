//! Redaction policy: removes social security numbers (identifiers of the configured systems)
//! and notes marked sensitive (an Annotation carrying the configured extension with
//! `valueBoolean: true`) unless the principal holds one of the configured roles or scopes.
//!
//! Binding config (all optional):
//! `{"identifier_systems": ["http://hl7.org/fhir/sid/us-ssn"],
//!   "sensitive_extension": "http://hearth.dev/fhir/StructureDefinition/sensitive",
//!   "unredacted_roles": ["privacy-officer"], "unredacted_scopes": []}`

use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use hearth::plugin::types::Obligations;

const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";
const SENSITIVE: &str = "http://hearth.dev/fhir/StructureDefinition/sensitive";

struct Redact;

fn strings(config: &Value, key: &str, default: &[&str]) -> Vec<String> {
    match config.get(key).and_then(Value::as_array) {
        Some(items) => items.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
        None => default.iter().map(|s| (*s).to_owned()).collect(),
    }
}

impl Guest for Redact {
    fn authorize(request: Request, resources: Vec<SubjectResource>) -> Vec<Decision> {
        let config: Value = serde_json::from_str(&request.config).unwrap_or(Value::Null);
        let roles = strings(&config, "unredacted_roles", &["privacy-officer"]);
        let scopes = strings(&config, "unredacted_scopes", &[]);
        let exempt = request.principal.roles.iter().any(|r| roles.contains(r))
            || request.principal.scopes.iter().any(|s| scopes.contains(s));
        if exempt {
            return resources.iter().map(|_| Decision::Allow).collect();
        }
        let systems = strings(&config, "identifier_systems", &[SSN]);
        let sensitive = config.get("sensitive_extension").and_then(Value::as_str).unwrap_or(SENSITIVE);
        resources
            .iter()
            .map(|resource| {
                let Some(json) = resource.json.as_deref() else { return Decision::Allow };
                let Ok(body) = serde_json::from_str::<Value>(json) else { return Decision::Allow };
                let mut redact = Vec::new();
                for (i, identifier) in array(&body, "identifier").iter().enumerate() {
                    if identifier.get("system").and_then(Value::as_str).is_some_and(|s| systems.iter().any(|x| x == s))
                    {
                        redact.push(format!("identifier[{i}]"));
                    }
                }
                for (i, note) in array(&body, "note").iter().enumerate() {
                    let marked = array(note, "extension").iter().any(|e| {
                        e.get("url").and_then(Value::as_str) == Some(sensitive)
                            && e.get("valueBoolean").and_then(Value::as_bool) == Some(true)
                    });
                    if marked {
                        redact.push(format!("note[{i}]"));
                    }
                }
                if redact.is_empty() {
                    Decision::Allow
                } else {
                    Decision::AllowWith(Obligations { redact, labels: Vec::new() })
                }
            })
            .collect()
    }

    fn validate(_request: Request, _resource: SubjectResource) -> Vec<Issue> {
        Vec::new()
    }
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value.get(key).and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[])
}

export!(Redact);
