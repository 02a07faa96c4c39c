//! FHIR search: the parameter registry, index extraction, date ranges and query parsing. The
//! SQL side lives in `crate::store::search`, the HTTP side in `crate::api::search`.

pub mod access;
pub mod dates;
pub mod extract;
pub mod query;
pub mod registry;
