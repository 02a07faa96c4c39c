//! FHIR R4 model pieces the server needs regardless of storage or transport: the resource
//! envelope, OperationOutcome, Bundles, the CapabilityStatement and timestamps.

pub mod bundle;
pub mod capability;
pub mod compartment;
pub mod instant;
pub mod json;
pub mod outcome;
pub mod patch;
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
