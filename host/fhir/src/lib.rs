//! FHIR R4 model pieces the server needs regardless of storage or transport: the resource
//! envelope, OperationOutcome, Bundles, validation, PATCH, compartments, timestamps, and the
//! search parameter registry with query parsing. No HTTP framework, no database: the layers
//! above (`hearth-store`, the server) depend on this one, never the other way. (The
//! CapabilityStatement describes the server's REST surface and lives with it.)

pub mod audit;
pub mod bundle;
pub mod compartment;
pub mod instant;
pub mod json;
pub mod outcome;
pub mod patch;
pub mod record;
pub mod resource;
pub mod resource_types;
pub mod search;
pub mod validate;

/// The FHIR JSON media type, as sent on every response.
pub const FHIR_JSON: &str = "application/fhir+json; charset=utf-8";

/// The FHIR version this server implements.
pub const FHIR_VERSION: &str = "4.0.1";

/// A weak ETag for a version, as FHIR prescribes: `W/"3"`.
pub fn etag(version: i64) -> String {
    format!("W/\"{version}\"")
}
