//! The guarded service layer: every read, vread, history, search, create, update, patch and
//! delete of a FHIR resource, and their conditional forms, whatever the entry point (REST
//! handlers, Bundle entries, operations). One place does, for each of them:
//!
//! 1. the scope check (403 naming the missing scope: it depends on the token alone);
//! 2. the access predicate ([`crate::auth::AccessPredicate`]), which the store compiles into the
//!    SQL of every query the request causes (search, each chain hop and `_has`, includes,
//!    counts, history, conditional matches), so what a token cannot read is never a result,
//!    never counted, never a cursor position and never told apart from what does not exist;
//! 3. the policy plugins, judging results *before* paging, so pages, links and cursors only
//!    ever reflect what the caller may see;
//! 4. what was disclosed (for the audit entry) and which integration events to wake.
//!
//! Handlers translate HTTP only. See docs/security.md for the rules and what proves them.

mod conditional;
pub mod cursor;
mod disclosed;
mod gate;
mod history;
mod paging;
mod read;
mod search;
mod write;

use std::sync::Arc;

pub use disclosed::Disclosed;
pub use gate::{denied, validation_outcome};
pub use history::{EverythingRequest, HistoryFeed, HistoryRequest};
pub use search::{MAX_INCLUDED, SearchRequest, Searchset, searchset};
pub use write::{Guarded, PatchRequest, WriteRequest, Written};

use crate::auth::{AccessPredicate, Interaction, Principal};
use crate::fhir::outcome::FhirError;
use crate::fhir::search::access::{Reach, Visibility};
use crate::policy::{Caller, PolicyEngine};
use crate::store::{Store, VersionRecord};

/// The records service of one server: the store, the policy engine and what a write wakes.
pub struct Records {
    store: Store,
    policies: Arc<PolicyEngine>,
    delivery_wake: Arc<tokio::sync::Notify>,
    base_url: String,
}

/// Who is asking: the verified principal, and what policy plugins see of it and its request.
#[derive(Clone, Copy)]
pub struct Requester<'a> {
    pub principal: &'a Principal,
    pub caller: &'a Caller,
}

impl Records {
    pub fn new(
        store: Store,
        policies: Arc<PolicyEngine>,
        delivery_wake: Arc<tokio::sync::Notify>,
        base_url: String,
    ) -> Self {
        Records { store, policies, delivery_wake, base_url }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The access predicate of `who` for `interaction`.
    async fn predicate(&self, who: Requester<'_>, interaction: Interaction) -> Result<AccessPredicate, FhirError> {
        let key = self.store.blind_index_key().await?;
        Ok(who.principal.predicate(interaction, &key, &self.base_url))
    }

    /// The scope check for `interaction` on `res_type`, and the reach `vis` gives there: a 403
    /// when the token's scopes grant the interaction but their constraints cannot be applied
    /// to the type (they then grant nothing, and saying so discloses nothing stored).
    fn reach_of(
        who: Requester<'_>,
        vis: &AccessPredicate,
        interaction: Interaction,
        res_type: &str,
    ) -> Result<Reach, FhirError> {
        who.principal.check(interaction, res_type)?;
        let reach = vis.reach(res_type);
        if reach.is_nothing() {
            return Err(crate::auth::forbidden(format!(
                "the token's scopes for {interaction:?} on {res_type} carry constraints that are not token or \
                 reference search parameters of {res_type}, so they grant nothing"
            )));
        }
        Ok(reach)
    }

    /// Lets the outbox worker know there is work, when a write queued events.
    pub(crate) fn wake_delivery(&self, queued: bool) {
        if queued {
            self.delivery_wake.notify_one();
        }
    }

    /// Whether `record` (a live version, read without SQL's view of its constraints: a past
    /// version) is within `reach`: its compartment, and its own content against the constraints.
    async fn admits_version(&self, reach: &Reach, record: &VersionRecord) -> Result<bool, FhirError> {
        if reach.is_all() {
            return Ok(true);
        }
        Ok(reach.admits_record(record, &self.store.blind_index_key().await?))
    }

    /// Whether content about to be written as `res_type/id` (sealed under `key_id`) is within
    /// `reach`.
    async fn admits_content(
        &self,
        reach: &Reach,
        res_type: &str,
        id: &str,
        key_id: Option<&str>,
        content: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<bool, FhirError> {
        if reach.is_all() {
            return Ok(true);
        }
        Ok(reach.admits_content(res_type, id, key_id, content, &self.store.blind_index_key().await?))
    }
}

/// The one answer for a resource the caller cannot see, whether or not it exists, deleted or
/// not: nothing in it depends on what is stored.
pub fn not_found(res_type: &str, id: &str) -> FhirError {
    FhirError::not_found(format!("{res_type}/{id} is not known to this server, or not within this token's reach"))
}

fn gone(res_type: &str, id: &str, version: i64) -> FhirError {
    FhirError::gone(format!("{res_type}/{id} was deleted (version {version})"))
}

fn erased() -> FhirError {
    FhirError::gone("these records were erased (their encryption key was destroyed) and can never be read again")
}
