//! Reads by id: `read` and `vread`. A resource the caller cannot see answers exactly as one
//! that does not exist (404), deleted or not; a deletion is told (410) only to a caller who
//! reaches every resource of the type and whose read is not judged by a policy plugin, since
//! a deletion marker has no content to judge.

use super::{Records, Requester, erased, gone, not_found};
use crate::auth::Interaction;
use crate::fhir::outcome::FhirError;
use crate::policy::PolicyInteraction;
use crate::store::{Lookup, VersionRecord};

impl Records {
    /// The current version of `res_type/id`, as `who` may read it (redacted as the policies
    /// oblige).
    pub async fn read(&self, who: Requester<'_>, res_type: &str, id: &str) -> Result<VersionRecord, FhirError> {
        let vis = self.predicate(who, Interaction::Read).await?;
        Self::reach_of(who, &vis, Interaction::Read, res_type)?;
        let policy = PolicyInteraction::Read;
        match self.store.read_visible(res_type, id, &vis).await? {
            Lookup::Live(record) => self.admit_one(who, policy, record).await,
            Lookup::NotFound => Err(not_found(res_type, id)),
            _ if self.policies.plan(res_type, policy).is_some() => Err(not_found(res_type, id)),
            Lookup::Deleted { version } => Err(gone(res_type, id, version)),
            Lookup::Erased => Err(erased()),
        }
    }

    /// Version `version` of `res_type/id`, as `who` may read it. Each version is judged on its
    /// own compartment and content.
    pub async fn vread(
        &self,
        who: Requester<'_>,
        res_type: &str,
        id: &str,
        version: i64,
    ) -> Result<VersionRecord, FhirError> {
        let vis = self.predicate(who, Interaction::Vread).await?;
        let reach = Self::reach_of(who, &vis, Interaction::Vread, res_type)?;
        let policy = PolicyInteraction::Vread;
        let missing = || {
            FhirError::not_found(format!(
                "{res_type}/{id}/_history/{version} is not known to this server, or not within this token's reach"
            ))
        };
        match self.store.read_version_visible(res_type, id, version, &vis).await? {
            Lookup::Live(record) if self.admits_version(&reach, &record).await? => {
                self.admit_one(who, policy, record).await
            }
            Lookup::Live(_) | Lookup::NotFound => Err(missing()),
            _ if self.policies.plan(res_type, policy).is_some() => Err(missing()),
            Lookup::Deleted { version } => Err(gone(res_type, id, version)),
            Lookup::Erased => Err(erased()),
        }
    }
}
