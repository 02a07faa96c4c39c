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
const SEARCH_DOCUMENTATION: &str = "Search: every search parameter FHIR R4 defines (from the official definitions) \
    except Location near and MolecularSequence's three-part coordinates. Strings match from the start (case, \
    accents and punctuation ignored) with :exact, and :contains where the value is not identifying; tokens take \
    system|code, code, |code and system| with :not; uri :above and :below; dates every prefix (eq ne gt lt ge le sa \
    eb ap) at the precision given; references Type/id, id or a URL on this server, chains (subject:Patient.name) \
    and _has two levels deep; numbers, quantities and two-part composites; :missing on every parameter. \
    Identifying data (people's names, addresses and contacts, identifiers, birth dates, free text of patients' \
    records) is indexed only as keyed hashes of normalised prefixes, whole values and calendar buckets: prefix, \
    :exact and every date prefix work, :contains and sorting on them do not. Results: _count (at most 1000), \
    cursor paging, _sort (up to 4 keys), _total=accurate, _summary, _elements, _include and _revinclude (with \
    :iterate); :of-type on identifiers, :identifier on references, :above/:below on URIs. Not supported: \
    _contained, _containedType, _text, _content, _list, _query, _filter, and the :text, :in, :not-in and token \
    :above/:below modifiers. An unknown or unsupported parameter, \
    modifier or prefix is a 400 OperationOutcome naming it, unless the request says Prefer: handling=lenient \
    (then it is ignored, left out of the self link and reported in the Bundle).";

fn search_param(param: &Param) -> Value {
    let mut entry = json!({
        "name": param.code,
        "definition": param.url,
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
