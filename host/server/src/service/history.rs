//! Instance, type and system history (`_history`), newest first.
//!
//! SQL keeps each version the caller's compartments cannot hold out of the rows read; scope
//! constraints are checked on each version's own content (the search index describes current
//! versions only) and the policy plugins judge what is left. Both happen *before* a page is
//! cut, so a page holds only versions the caller may see and its `next` cursor is the position
//! of the last of them.

use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::cursor::{CursorKey, bad_cursor, binding};
use super::paging::fill;
use super::{Records, Requester, erased, not_found};
use crate::auth::Interaction;
use crate::fhir::outcome::FhirError;
use crate::fhir::resource_types::R4_RESOURCE_TYPES;
use crate::fhir::search::access::{Reach, Visibility};
use crate::policy::PolicyInteraction;
use crate::store::{HistoryOf, Lookup, VersionRecord};

/// A history read.
pub struct HistoryRequest<'a> {
    pub of: HistoryOf<'a>,
    pub count: usize,
    pub since: Option<i64>,
    pub cursor: Option<&'a str>,
    /// The parameters that shape the result (`_count`, `_since`, ...), for binding cursors.
    pub params: Vec<(String, String)>,
}

/// One page of history.
pub struct HistoryFeed {
    pub versions: Vec<VersionRecord>,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
    /// How many versions match in all, when the caller sees every one of them.
    pub total: Option<i64>,
}

/// Where a page of history ends: (last updated, type, id, version) of its last version.
#[derive(Clone, Serialize, Deserialize)]
struct Position(i64, String, String, i64);

impl Position {
    fn of(record: &VersionRecord) -> Position {
        Position(record.last_updated_us, record.res_type.clone(), record.id.clone(), record.version)
    }
}

impl Records {
    pub async fn history(&self, who: Requester<'_>, request: HistoryRequest<'_>) -> Result<HistoryFeed, FhirError> {
        let vis = self.predicate(who, Interaction::HistoryInstance).await?;
        let (kind, types) = match request.of {
            HistoryOf::Instance(res_type, id) => {
                Self::reach_of(who, &vis, Interaction::HistoryInstance, res_type)?;
                // Listed only when a read would not answer 404 (a deletion has a history; an
                // erasure has none left).
                let gated = self.policies.plan(res_type, PolicyInteraction::History).is_some();
                match self.store.read_visible(res_type, id, &vis).await? {
                    Lookup::Live(_) => {}
                    Lookup::Deleted { .. } if !gated => {}
                    Lookup::Erased if !gated => return Err(erased()),
                    _ => return Err(not_found(res_type, id)),
                }
                (format!("history/{res_type}/{id}"), vec![res_type.to_owned()])
            }
            HistoryOf::Type(res_type) => {
                Self::reach_of(who, &vis, Interaction::HistoryInstance, res_type)?;
                (format!("history/{res_type}"), vec![res_type.to_owned()])
            }
            HistoryOf::System => {
                let types: Vec<String> = R4_RESOURCE_TYPES
                    .iter()
                    .filter(|t| who.principal.check(Interaction::HistoryInstance, t).is_ok())
                    .map(|t| (*t).to_owned())
                    .collect();
                if types.is_empty() {
                    return Err(crate::auth::forbidden(
                        "system history needs a scope that reads some resource type (e.g. user/*.rs)",
                    ));
                }
                ("history".to_owned(), types)
            }
        };
        let cursors = CursorKey::derive(&self.store.blind_index_key().await?);
        let bound = binding(who.principal, &kind, &request.params);
        let before = match request.cursor {
            Some(text) => {
                let position: Position =
                    serde_json::from_slice(&cursors.open(&bound, text)?).map_err(|_| bad_cursor())?;
                Some(position)
            }
            None => None,
        };
        let gated = self.gated(&types, PolicyInteraction::History);
        let everything = types.iter().all(|t| vis.reach(t).is_all());
        let count = request.count;
        let first_denial = std::sync::Mutex::new(None);
        let read =
            |before: Option<Position>, limit: usize| -> BoxFuture<'_, Result<(Vec<VersionRecord>, bool), FhirError>> {
                let vis = &vis;
                Box::pin(async move {
                    let before = before.as_ref().map(|p| (p.0, p.1.as_str(), p.2.as_str(), p.3));
                    Ok(self.store.history_all(request.of, vis, request.since, before, limit).await?)
                })
            };
        let keep = |rows: Vec<VersionRecord>| -> BoxFuture<'_, Result<Vec<VersionRecord>, FhirError>> {
            Box::pin(async {
                let mut visible = Vec::with_capacity(rows.len());
                for record in rows {
                    let reach = if everything { Reach::All } else { vis.reach(&record.res_type) };
                    if self.admits_version(&reach, &record).await? {
                        visible.push(((), record));
                    }
                }
                let (admitted, denial) = self.admit_keyed(who, PolicyInteraction::History, visible).await?;
                if let Some(denial) = denial {
                    first_denial.lock().unwrap_or_else(|e| e.into_inner()).get_or_insert(denial);
                }
                Ok(admitted.into_iter().map(|(_, r)| r).collect())
            })
        };
        let read_ahead = if everything && !gated { 1 } else { 50 };
        let mut scan = fill(count, before, read_ahead, Position::of, read, keep).await?;
        // A resource whose every version a policy denies answers that denial, as its read does.
        let first_denial = first_denial.into_inner().unwrap_or_else(|e| e.into_inner());
        if let (HistoryOf::Instance(..), None, true, Some(denial)) =
            (request.of, request.cursor, scan.kept.is_empty(), first_denial)
        {
            return Err(denial);
        }
        // Past the last kept version, or where the scan stopped early (the cursor is sealed, so
        // the position of a hidden version is not disclosed).
        let next = scan.cut(count, Position::of);
        let kept = scan.kept;
        let next = next.map(|p| cursors.seal(&bound, &serde_json::to_vec(&p).unwrap_or_default()));
        let total = match request.of {
            HistoryOf::Instance(res_type, id) if everything && !gated => {
                Some(self.store.history_total(res_type, id, request.since).await?)
            }
            _ => None,
        };
        Ok(HistoryFeed { versions: kept, next, total })
    }
}

/// A page of `Patient/{id}/$everything`.
pub struct EverythingRequest<'a> {
    pub patient: &'a str,
    /// Only these types (`_type`); every type if empty.
    pub types: &'a [String],
    pub since: Option<i64>,
    pub count: usize,
    pub cursor: Option<&'a str>,
    pub params: Vec<(String, String)>,
}

impl Records {
    /// The patient and every current record in their compartment that `who` may read (each
    /// type within its own reach, in SQL), by type and id; the read policies judge them before
    /// the page is cut.
    pub async fn everything(
        &self,
        who: Requester<'_>,
        request: EverythingRequest<'_>,
    ) -> Result<(Vec<VersionRecord>, Option<String>), FhirError> {
        // The patient must be readable first; a 404 otherwise, like any read.
        self.read(who, "Patient", request.patient).await?;
        let vis = self.predicate(who, Interaction::Read).await?;
        let cursors = CursorKey::derive(&self.store.blind_index_key().await?);
        let bound = binding(who.principal, &format!("everything/{}", request.patient), &request.params);
        let after: Option<(String, String)> = match request.cursor {
            Some(text) => Some(serde_json::from_slice(&cursors.open(&bound, text)?).map_err(|_| bad_cursor())?),
            None => None,
        };
        let key_id = crate::fhir::compartment::patient_key_id(request.patient);
        let count = request.count;
        let position = |r: &VersionRecord| (r.res_type.clone(), r.id.clone());
        let read = |after: Option<(String, String)>,
                    limit: usize|
         -> BoxFuture<'_, Result<(Vec<VersionRecord>, bool), FhirError>> {
            let key_id = &key_id;
            let vis = &vis;
            Box::pin(async move {
                let after = after.as_ref().map(|(t, i)| (t.as_str(), i.as_str()));
                Ok(self.store.compartment_page(key_id, request.types, vis, request.since, after, limit).await?)
            })
        };
        let keep = |rows: Vec<VersionRecord>| -> BoxFuture<'_, Result<Vec<VersionRecord>, FhirError>> {
            Box::pin(self.admit(who, PolicyInteraction::Read, rows))
        };
        let mut scan = fill(count, after, 50, position, read, keep).await?;
        let next = scan.cut(count, position);
        let kept = scan.kept;
        let next = next.map(|p| cursors.seal(&bound, &serde_json::to_vec(&p).unwrap_or_default()));
        Ok((kept, next))
    }
}
