//! FHIR search: the parameter registry, index extraction, date ranges and query parsing. The
//! SQL side lives in `hearth::store::search`, the HTTP side in `hearth::api::search`.

pub mod access;
pub mod buckets;
pub mod dates;
pub mod extract;
pub mod fhirpath;
pub mod query;
pub mod registry;
