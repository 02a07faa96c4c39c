//! The CapabilityStatement, generated from what the server really implements.
//!
//! The interaction lists come from the API layer (the same place the routes are declared), so
//! a route cannot be added or removed without the statement following.

use serde_json::{Value, json};

use crate::fhir::FHIR_VERSION;
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::fhir::resource_types::R4_RESOURCE_TYPES;
use crate::fhir::search::registry::{self, Kind, Param};

/// What the statement says of search as a whole (the per-parameter notes are on each one).
const SEARCH_DOCUMENTATION: &str = "Search: string parameters match by prefix (case, accents and punctuation \
    ignored) with :exact and :contains; token parameters take system|code, code, |code and system| with :not; \
    dates take eq, ne, gt, lt, ge, le, sa, eb and ap with partial dates; references take Type/id, id or a URL on \
    this server, with chaining (e.g. subject:Patient.identifier) and _has two levels deep; number, quantity and \
    Observation code-value-quantity composites are supported. Identifying data (names, identifiers, telecom, \
    addresses, birth dates) is indexed only as keyed hashes (blind indexes): those parameters match exactly and \
    cannot be sorted on. Results: _count (at most 1000), cursor paging (next/previous links), _sort (up to 4 \
    keys), _total=accurate, _summary, _elements, _include and _revinclude (with :iterate, at most 1000 included \
    resources per page). Not supported: _contained, _containedType, _text, _content, _list, _query, _filter, and the \
    :text, :above, :below, :in, :not-in, :of-type and :identifier modifiers. Unknown parameters are ignored and \
    reported unless the request says Prefer: handling=strict.";

fn search_param(param: &Param) -> Value {
    let mut entry = json!({
        "name": param.code,
        "definition": format!("http://hl7.org/fhir/SearchParameter/{}-{}",
            if param.resource == "*" { "Resource" } else { param.resource }, param.code.trim_start_matches('_')),
        "type": param.kind.code(),
    });
    if let Some(documentation) = param.documentation() {
        entry["documentation"] = json!(documentation);
    }
    entry
}

/// AuditEvent: the server's own audit log, read-only, with its own search parameters.
fn audit_event_resource() -> Value {
    let params: Vec<Value> = crate::audit::lookup::PARAMS
        .iter()
        .map(|(code, kind, documentation)| {
            json!({
                "name": code,
                "definition": format!("http://hl7.org/fhir/SearchParameter/AuditEvent-{}", code.trim_start_matches('_')),
                "type": kind,
                "documentation": documentation,
            })
        })
        .collect();
    json!({
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": "The server's tamper-evident audit log (one AuditEvent per hash-chain entry, id = sequence \
            number, IHE BALP shape). Needs the admin/audit scope; read-only. Newest first unless _sort=date; \
            _count at most 1000; cursor paging.",
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "readHistory": false,
        "updateCreate": false,
        "searchParam": params,
    })
}

/// What the server supports, as the API layer declares it.
pub struct Implemented<'a> {
    pub base_url: &'a str,
    pub software_version: &'a str,
    /// Type- and instance-level interactions (`read`, `vread`, ...), the same for every type.
    pub type_interactions: &'a [&'a str],
    /// System-level interactions (`transaction`, `history-system`, ...).
    pub system_interactions: &'a [&'a str],
}

pub fn capability_statement(implemented: &Implemented<'_>) -> Value {
    let interactions =
        |codes: &[&str]| -> Value { Value::Array(codes.iter().map(|code| json!({ "code": code })).collect()) };
    let resources: Vec<Value> = R4_RESOURCE_TYPES
        .iter()
        .map(|res_type| {
            if *res_type == "AuditEvent" {
                return audit_event_resource();
            }
            let params: Vec<Value> = registry::of_type(res_type).map(search_param).collect();
            let includes: Vec<String> = registry::of_type(res_type)
                .filter(|p| p.kind == Kind::Reference)
                .map(|p| format!("{res_type}:{}", p.code))
                .collect();
            let revincludes: Vec<String> = if registry::has_own_params(res_type) {
                registry::all()
                    .filter(|p| p.kind == Kind::Reference && (p.targets.is_empty() || p.targets.contains(res_type)))
                    .map(|p| format!("{}:{}", p.resource, p.code))
                    .collect()
            } else {
                Vec::new()
            };
            let mut resource = json!({
                "searchParam": params,
                "searchInclude": includes,
                "searchRevInclude": revincludes,
                "type": res_type,
                "profile": format!("http://hl7.org/fhir/StructureDefinition/{res_type}"),
                "interaction": interactions(implemented.type_interactions),
                "versioning": "versioned-update",
                "readHistory": true,
                "updateCreate": true,
                "conditionalCreate": true,
                "conditionalRead": "not-supported",
                "conditionalUpdate": true,
                "conditionalDelete": "single",
                "referencePolicy": ["literal", "local"],
            });
            let operations: Vec<Value> = super::operations::of_type(res_type)
                .map(|op| json!({"name": op.name, "definition": op.definition}))
                .collect();
            resource["operation"] = Value::Array(operations);
            resource
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
        "searchParam": registry::of_type("Resource").map(search_param).collect::<Vec<_>>(),
        "documentation": SEARCH_DOCUMENTATION,
    });
    let system_operations: Vec<Value> =
        super::operations::system().map(|op| json!({ "name": op.name, "definition": op.definition })).collect();
    if !system_operations.is_empty() {
        rest["operation"] = Value::Array(system_operations);
    }
    if !implemented.system_interactions.is_empty() {
        rest["interaction"] = interactions(implemented.system_interactions);
    }
    json!({
        "resourceType": "CapabilityStatement",
        "instantiates": ["http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"],
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
