//! The CapabilityStatement, generated from what the server really implements.
//!
//! The interaction lists come from the API layer (the same place the routes are declared), so
//! a route cannot be added or removed without the statement following.

use serde_json::{Value, json};

use super::FHIR_VERSION;
use super::instant::{now_us, to_fhir_instant};
use super::resource_types::R4_RESOURCE_TYPES;

/// What the server supports, as the API layer declares it.
pub struct Implemented<'a> {
    pub base_url: &'a str,
    pub software_version: &'a str,
    /// Type- and instance-level interactions (`read`, `vread`, ...), the same for every type.
    pub type_interactions: &'a [&'a str],
    /// System-level interactions (`transaction`, `history-system`, ...).
    pub system_interactions: &'a [&'a str],
    /// System-level operations: (name, canonical URL of its definition).
    pub system_operations: &'a [(&'a str, &'a str)],
}

pub fn capability_statement(implemented: &Implemented<'_>) -> Value {
    let interactions =
        |codes: &[&str]| -> Value { Value::Array(codes.iter().map(|code| json!({ "code": code })).collect()) };
    let resources: Vec<Value> = R4_RESOURCE_TYPES
        .iter()
        .map(|res_type| {
            json!({
                "type": res_type,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{res_type}"),
                "interaction": interactions(implemented.type_interactions),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": false,
                "conditionalRead": "not-supported",
                "conditionalUpdate": false,
                "conditionalDelete": "not-supported",
                "referencePolicy": ["literal", "local"],
            })
        })
        .collect();
    let mut rest = json!({
        "mode": "server",
        "security": {
            "cors": false,
            "service": [{
                "coding": [{
                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                    "code": "SMART-on-FHIR"
                }]
            }],
            "description": "Every interaction needs a bearer JWT from a trusted issuer carrying SMART v1 or v2 scopes \
                (patient/user/system, cruds, ?param=value constraints); patient/ scopes are confined to the token's \
                patient compartment. See /.well-known/smart-configuration. Policy plugins (WebAssembly) may deny \
                access, redact elements and label responses; X-Purpose-Of-Use states a purpose of use, and a \
                principal with the break-glass role may state X-Break-Glass-Reason (audited as an emergency access)."
        },
        "resource": resources,
    });
    if !implemented.system_operations.is_empty() {
        rest["operation"] = Value::Array(
            implemented
                .system_operations
                .iter()
                .map(|(name, definition)| json!({ "name": name, "definition": definition }))
                .collect(),
        );
    }
    if !implemented.system_interactions.is_empty() {
        rest["interaction"] = interactions(implemented.system_interactions);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": to_fhir_instant(now_us()),
        "publisher": "Hearth",
        "kind": "instance",
        "software": { "name": "Hearth", "version": implemented.software_version },
        "implementation": {
            "description": "Hearth FHIR R4 server",
            "url": implemented.base_url,
        },
        "fhirVersion": FHIR_VERSION,
        "format": ["application/fhir+json", "json"],
        "rest": [rest],
    })
}
