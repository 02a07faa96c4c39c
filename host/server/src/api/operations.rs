//! FHIR operations (`$name`): one table says which exist, at which level, on which types and
//! with which definition. The router serves each on its own route from it, and the
//! CapabilityStatement lists them from it, so the two cannot disagree.

use axum::Extension;
use axum::extract::{RawQuery, State};
use axum::http::HeaderMap;
use axum::middleware;
use axum::response::Response;
use axum::routing::{MethodRouter, get, post};

use super::SharedState;
use super::extract::FhirPath;
use crate::auth::Principal;
use crate::fhir::outcome::FhirError;
use crate::fhir::resource::check_id;

/// Where an operation is invoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// `/$name`
    System,
    /// `/{type}/$name`
    Type,
    /// `/{type}/{id}/$name`
    Instance,
}

/// One operation this server implements.
pub struct Operation {
    /// The name without `$`, as the CapabilityStatement gives it.
    pub name: &'static str,
    pub level: Level,
    /// The resource type it is defined on; `None` for system operations and for operations
    /// every type has (`$validate`).
    pub resource: Option<&'static str>,
    /// The canonical URL of its OperationDefinition.
    pub definition: &'static str,
    /// The route it is served on (axum's path syntax).
    pub path: &'static str,
    /// Its handler, with the response-format negotiation it needs.
    handler: fn() -> MethodRouter<SharedState>,
}

/// Every operation, in the order the CapabilityStatement lists them.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        name: "validate",
        level: Level::Type,
        resource: None,
        definition: "http://hl7.org/fhir/OperationDefinition/Resource-validate",
        path: "/{type}/$validate",
        handler: || fhir_format(post(super::fhir::validate_operation)),
    },
    Operation {
        name: "everything",
        level: Level::Instance,
        resource: Some("Patient"),
        definition: "http://hl7.org/fhir/OperationDefinition/Patient-everything",
        path: "/Patient/{id}/$everything",
        handler: || fhir_format(get(patient_everything)),
    },
    Operation {
        name: "export",
        level: Level::Type,
        resource: Some("Patient"),
        definition: "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export",
        path: "/Patient/$export",
        handler: || fhir_format(get(patient_export)),
    },
    Operation {
        name: "export",
        level: Level::Instance,
        resource: Some("Group"),
        definition: "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export",
        path: "/Group/{id}/$export",
        handler: || fhir_format(get(group_export)),
    },
    Operation {
        name: "convert",
        level: Level::System,
        resource: None,
        definition: "http://hearth.dev/fhir/OperationDefinition/convert",
        path: "/$convert",
        // Answers HL7 v2 acknowledgements as well as FHIR: its own negotiation.
        handler: || post(super::convert::convert).route_layer(middleware::from_fn(super::convert::negotiate_format)),
    },
    Operation {
        name: "export",
        level: Level::System,
        resource: None,
        definition: "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export",
        path: "/$export",
        handler: || fhir_format(get(super::export::system_kickoff)),
    },
];

/// The operations defined on `res_type` (type and instance level), in table order.
pub fn of_type(res_type: &str) -> impl Iterator<Item = &'static Operation> {
    OPERATIONS.iter().filter(move |op| op.level != Level::System && op.resource.is_none_or(|r| r == res_type))
}

/// The system-level operations, in table order.
pub fn system() -> impl Iterator<Item = &'static Operation> {
    OPERATIONS.iter().filter(|op| op.level == Level::System)
}

/// The routes of every operation in the table. Each brings its own format negotiation, so they
/// are merged after the FHIR routes' negotiation layer.
pub fn routes() -> axum::Router<SharedState> {
    OPERATIONS.iter().fold(axum::Router::new(), |router, op| router.route(op.path, (op.handler)()))
}

/// A FHIR JSON operation: `_format` and `Accept` negotiated like every other FHIR route.
fn fhir_format(route: MethodRouter<SharedState>) -> MethodRouter<SharedState> {
    route.route_layer(middleware::from_fn(super::extract::negotiate_format))
}

/// `GET /Patient/{id}/$everything`
async fn patient_everything(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    FhirPath(id): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    super::feeds::everything(&state, &principal, &headers, &id, query.as_deref()).await
}

/// `GET /Patient/$export`
async fn patient_export(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    super::export::kickoff(&state, &principal, &headers, super::export::Kind::Patient, query.as_deref()).await
}

/// `GET /Group/{id}/$export`
async fn group_export(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    FhirPath(id): FhirPath<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, FhirError> {
    check_id(&id)?;
    super::export::kickoff(&state, &principal, &headers, super::export::Kind::Group(id), query.as_deref()).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_is_routed_where_its_level_says() {
        for op in OPERATIONS {
            let segments: Vec<&str> = op.path.trim_start_matches('/').split('/').collect();
            assert_eq!(segments.last(), Some(&format!("${}", op.name).as_str()), "{}", op.path);
            let expected = match op.level {
                Level::System => 1,
                Level::Type => 2,
                Level::Instance => 3,
            };
            assert_eq!(segments.len(), expected, "{}", op.path);
            if let Some(res_type) = op.resource {
                assert_eq!(segments[0], res_type, "{}", op.path);
            }
        }
        let patient: Vec<&str> = of_type("Patient").map(|op| op.name).collect();
        assert_eq!(patient, ["validate", "everything", "export"]);
        assert_eq!(of_type("Group").map(|op| op.name).collect::<Vec<_>>(), ["validate", "export"]);
        assert_eq!(system().map(|op| op.name).collect::<Vec<_>>(), ["convert", "export"]);
    }
}
