//! The search behind conditional create, update, delete and patch (`If-None-Exist`,
//! `PUT /Type?...`, `DELETE /Type?...`): it runs as the caller's own search, so a condition
//! matches only resources the caller may see, and no answer tells a hidden match from none.

use super::search::SearchRequest;
use super::{Records, Requester};
use crate::fhir::outcome::{FhirError, IssueType};

impl Records {
    /// The ids of `res_type` resources within `who`'s reach matching a conditional URL's query
    /// (at most two: callers only need to tell none, one and several apart). Unknown
    /// parameters are an error here, since ignoring one would pick the wrong resource.
    pub async fn matching_ids(
        &self,
        who: Requester<'_>,
        res_type: &str,
        query: &str,
    ) -> Result<Vec<String>, FhirError> {
        let mut pairs: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes()).into_owned().collect();
        pairs.retain(|(k, _)| {
            !k.starts_with('_') || k == "_id" || k == "_tag" || k == "_lastUpdated" || k.starts_with("_has")
        });
        if pairs.is_empty() {
            return Err(FhirError::bad_request(
                IssueType::Required,
                "a conditional interaction needs search parameters that identify the resource",
            ));
        }
        pairs.push(("_count".to_owned(), "2".to_owned()));
        let request = SearchRequest {
            types: vec![res_type.to_owned()],
            pairs,
            compartment: None,
            path: res_type.to_owned(),
            // An ignored parameter would widen the match: never lenient.
            strict: true,
        };
        let found = self.search(who, request).await?;
        let entries = found.bundle["entry"].as_array().cloned().unwrap_or_default();
        Ok(entries
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .filter_map(|e| e["resource"]["id"].as_str().map(str::to_owned))
            .collect())
    }
}
