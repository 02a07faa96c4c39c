//! Bundles the server builds: history Bundles (for now).

use serde::Serialize;
use serde_json::value::RawValue;

use super::etag;
use super::instant::{now_us, to_fhir_instant};
use crate::record::VersionRecord;

#[derive(Serialize)]
struct Bundle<'a> {
    #[serde(rename = "resourceType")]
    resource_type: &'static str,
    id: String,
    meta: Meta,
    #[serde(rename = "type")]
    bundle_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total: Option<i64>,
    link: Vec<Link>,
    entry: Vec<Entry<'a>>,
}

#[derive(Serialize)]
struct Meta {
    #[serde(rename = "lastUpdated")]
    last_updated: String,
}

/// A Bundle link (`self`, `next`, ...).
#[derive(Serialize)]
pub struct Link {
    pub relation: &'static str,
    pub url: String,
}

#[derive(Serialize)]
struct Entry<'a> {
    #[serde(rename = "fullUrl")]
    full_url: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource: Option<&'a RawValue>,
    request: EntryRequest,
    response: EntryResponse,
}

#[derive(Serialize)]
struct EntryRequest {
    method: &'static str,
    url: String,
}

#[derive(Serialize)]
struct EntryResponse {
    status: &'static str,
    etag: String,
    #[serde(rename = "lastModified")]
    last_modified: String,
}

/// Builds a `history` Bundle from versions (newest first), embedding each stored body as is.
///
/// Fails only if a stored body is not JSON, which means the database was altered outside
/// the server. `total` is left out when the reader may not know it (some versions hidden).
pub fn history_bundle(
    base_url: &str,
    versions: &[VersionRecord],
    total: Option<i64>,
    link: Vec<Link>,
) -> Result<Vec<u8>, serde_json::Error> {
    let bodies: Vec<Option<&RawValue>> = versions
        .iter()
        .map(|v| v.body.as_deref().map(serde_json::from_slice::<&RawValue>).transpose())
        .collect::<Result<_, _>>()?;
    let entry = versions
        .iter()
        .zip(bodies)
        .map(|(v, resource)| {
            let (method, status, url) = if v.deleted {
                ("DELETE", "204", format!("{}/{}", v.res_type, v.id))
            } else if v.version == 1 {
                ("POST", "201", v.res_type.clone())
            } else {
                ("PUT", "200", format!("{}/{}", v.res_type, v.id))
            };
            Entry {
                full_url: format!("{base_url}/{}/{}", v.res_type, v.id),
                resource,
                request: EntryRequest { method, url },
                response: EntryResponse {
                    status,
                    etag: etag(v.version),
                    last_modified: to_fhir_instant(v.last_updated_us),
                },
            }
        })
        .collect();
    let bundle = Bundle {
        resource_type: "Bundle",
        id: uuid::Uuid::new_v4().to_string(),
        meta: Meta { last_updated: to_fhir_instant(now_us()) },
        bundle_type: "history",
        total,
        link,
        entry,
    };
    serde_json::to_vec(&bundle)
}
