//! Consent policy: denies access to a patient's data while an active Consent of that patient
//! says `deny`, unless the principal's purpose of use is one the Consent permits by exception,
//! the principal is the patient, or the principal broke the glass with a stated reason
//! (allowed, labelled as an emergency access, and audited by the server).
//!
//! Binding config (all optional):
//! `{"exempt_types": ["Consent"], "allow_break_glass": true}`

use std::collections::HashMap;

use serde_json::Value;

wit_bindgen::generate!({ path: "../../wit", world: "policy" });

use hearth::plugin::lookup::active_consents;
use hearth::plugin::types::{Coding, Obligations, Principal};

struct Consent;

impl Guest for Consent {
    fn authorize(request: Request, resources: Vec<SubjectResource>) -> Vec<Decision> {
        let config: Value = serde_json::from_str(&request.config).unwrap_or(Value::Null);
        let exempt: Vec<String> = match config.get("exempt_types").and_then(Value::as_array) {
            Some(types) => types.iter().filter_map(Value::as_str).map(str::to_owned).collect(),
            None => vec!["Consent".to_owned()],
        };
        let allow_break_glass = config.get("allow_break_glass").and_then(Value::as_bool).unwrap_or(true);
        let mut consents_of: HashMap<String, Vec<Value>> = HashMap::new();
        resources
            .iter()
            .map(|resource| {
                let Some(patient) = resource.compartment.as_deref() else { return Decision::Allow };
                if exempt.iter().any(|t| *t == resource.resource_type) {
                    return Decision::Allow;
                }
                if request.principal.patient.as_deref() == Some(patient) {
                    return Decision::Allow;
                }
                let consents = consents_of.entry(patient.to_owned()).or_insert_with(|| {
                    active_consents(patient).iter().filter_map(|json| serde_json::from_str(json).ok()).collect()
                });
                let Some(denying) = consents.iter().find(|c| denies(c, &request.principal)) else {
                    return Decision::Allow;
                };
                match &request.principal.break_glass_reason {
                    Some(_) if allow_break_glass => Decision::AllowWith(Obligations {
                        redact: Vec::new(),
                        labels: vec![Coding {
                            system: "http://terminology.hl7.org/CodeSystem/v3-ActReason".into(),
                            code: "ETREAT".into(),
                            display: Some("emergency treatment (break-glass)".into()),
                        }],
                    }),
                    _ => Decision::Deny(format!(
                        "the patient's consent{} denies this access",
                        denying
                            .get("id")
                            .and_then(Value::as_str)
                            .map(|id| format!(" Consent/{id}"))
                            .unwrap_or_default()
                    )),
                }
            })
            .collect()
    }

    fn validate(_request: Request, _resource: SubjectResource) -> Vec<Issue> {
        Vec::new()
    }
}

/// Whether an active Consent denies this principal: its top-level provision is `deny`, it
/// names the principal among its actors (or names no actors), and no nested `permit`
/// provision covers the principal's purpose of use.
fn denies(consent: &Value, principal: &Principal) -> bool {
    let Some(provision) = consent.get("provision") else { return false };
    if provision.get("type").and_then(Value::as_str) != Some("deny") {
        return false;
    }
    if let Some(actors) = provision.get("actor").and_then(Value::as_array).filter(|a| !a.is_empty()) {
        let named = actors.iter().any(|actor| {
            actor
                .pointer("/reference/reference")
                .and_then(Value::as_str)
                .is_some_and(|r| r == principal.subject || r.rsplit('/').next() == Some(principal.subject.as_str()))
        });
        if !named {
            return false;
        }
    }
    let purpose = principal.purpose_of_use.as_deref();
    let permitted_by_exception = provision.get("provision").and_then(Value::as_array).is_some_and(|nested| {
        nested.iter().any(|p| {
            p.get("type").and_then(Value::as_str) == Some("permit")
                && p.get("purpose").and_then(Value::as_array).is_some_and(|purposes| {
                    purposes.iter().any(|c| c.get("code").and_then(Value::as_str).is_some_and(|c| Some(c) == purpose))
                })
        })
    });
    !permitted_by_exception
}

export!(Consent);
