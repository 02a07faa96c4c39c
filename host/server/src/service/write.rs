//! Writes: create, update, patch and delete, and their conditional forms.
//!
//! [`Records::guard_write`] is the one check every write passes, single or in a Bundle: the
//! scope; the written content within the caller's reach (a restricted token cannot write
//! outside its compartment or constraints); the current version within reach (a restricted
//! token updates or deletes only what it can see, and for anything else gets the 404 a
//! missing resource gets, so writing is no oracle either); then the write policies.

use serde_json::{Map, Value};

use super::{Records, Requester, not_found};
use crate::auth::{Interaction, forbidden};
use crate::fhir::compartment::data_key_id;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::fhir::resource::IncomingResource;
use crate::policy::PolicyInteraction;
use crate::store::{DeleteResult, EventTargets, Lookup, Precondition, VersionRecord, WriteResult};

/// The outcome of a create or update.
pub enum Written {
    /// Stored as `version` of `res_type/id`, sealed under `key_id`.
    Stored { res_type: String, id: String, key_id: String, result: WriteResult },
    /// A conditional create found its one match: the resource, as the caller may read it.
    Existing(VersionRecord),
}

/// What an update writes.
pub struct WriteRequest<'a> {
    pub res_type: &'a str,
    pub id: &'a str,
    pub resource: &'a IncomingResource,
    pub if_match: Option<i64>,
    /// The id was chosen by this server just now (conditional update without a match), not by
    /// the client: no stored resource can be behind it.
    pub fresh: bool,
}

/// A JSON Patch of `res_type/id`.
pub struct PatchRequest<'a> {
    pub res_type: &'a str,
    pub id: &'a str,
    pub operations: &'a Value,
    pub if_match: Option<i64>,
}

/// A write that passed [`Records::guard_write`]: the precondition to write it with, and the
/// current version it was judged against, if any.
pub struct Guarded {
    pub precondition: Precondition,
    pub current: Option<VersionRecord>,
}

impl Records {
    /// The checks of one write of `res_type/id` (see the module doc). `content` is what is
    /// written (`None` for a delete); `fresh` says the id is new from this server;
    /// `if_match` is the client's precondition. Returns the precondition to write with:
    /// pinned to the version that was judged, so nothing can change in between.
    pub async fn guard_write(
        &self,
        who: Requester<'_>,
        interaction: Interaction,
        res_type: &str,
        id: &str,
        content: Option<&Map<String, Value>>,
        fresh: bool,
        if_match: Option<i64>,
    ) -> Result<Guarded, FhirError> {
        let vis = self.predicate(who, interaction).await?;
        let reach = Self::reach_of(who, &vis, interaction, res_type)?;
        if let Some(content) = content {
            let key_id = data_key_id(res_type, id, content);
            if !self.admits_content(&reach, res_type, id, Some(&key_id), content).await? {
                return Err(forbidden(format!(
                    "this token may not write this {res_type}: it would be outside what the token reaches (patient \
                     compartment or scope constraints)"
                )));
            }
        }
        let policy = match interaction {
            Interaction::Create => PolicyInteraction::Create,
            Interaction::Delete => PolicyInteraction::Delete,
            _ => PolicyInteraction::Update,
        };
        let mut precondition = match (if_match, interaction) {
            (Some(version), _) => Precondition::IfMatch(version),
            (None, Interaction::Create) => Precondition::MustNotExist,
            (None, _) => Precondition::None,
        };
        let mut current = None;
        let judged_on_current = interaction == Interaction::Delete && self.policies.plan(res_type, policy).is_some();
        if interaction != Interaction::Create && (!reach.is_all() || judged_on_current) {
            match self.store.read_visible(res_type, id, &vis).await? {
                Lookup::Live(record) => {
                    if precondition == Precondition::None {
                        precondition = Precondition::IfMatch(record.version);
                    }
                    current = Some(record);
                }
                _ if fresh => precondition = Precondition::MustNotExist,
                // Nothing this token can see: whether something hidden is there or nothing
                // is, the answer is the same.
                _ if !reach.is_all() => return Err(not_found(res_type, id)),
                _ => {}
            }
        }
        let judged: Option<Map<String, Value>> = match (content, &current) {
            (Some(content), _) => Some(content.clone()),
            (None, Some(record)) => record.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()),
            (None, None) => None,
        };
        // A delete of nothing live has no content to judge (the store answers it).
        if judged.is_some() || interaction != Interaction::Delete {
            self.authorize_write(who, policy, res_type, Some(id), judged.as_ref()).await?;
        }
        Ok(Guarded { precondition, current })
    }

    /// `POST /{type}`, with `If-None-Exist` as `if_none_exist`.
    pub async fn create(
        &self,
        who: Requester<'_>,
        res_type: &str,
        resource: &IncomingResource,
        if_none_exist: Option<&str>,
    ) -> Result<Written, FhirError> {
        who.principal.check(Interaction::Create, res_type)?;
        if let Some(query) = if_none_exist {
            match self.matching_ids(who, res_type, query).await?.as_slice() {
                [] => {}
                // Already there: answer with it as a read would, and create nothing.
                [existing] => return Ok(Written::Existing(self.read(who, res_type, existing).await?)),
                _ => {
                    return Err(FhirError::precondition_failed(
                        "If-None-Exist matches more than one resource; make the condition more specific",
                    ));
                }
            }
        }
        // The spec says a server SHALL ignore an id sent with a create and assign its own.
        let id = uuid::Uuid::new_v4().to_string();
        let guarded =
            self.guard_write(who, Interaction::Create, res_type, &id, Some(resource.fields()), true, None).await?;
        let events = EventTargets {
            created: self.policies.integrations_for(res_type, PolicyInteraction::Create),
            updated: Vec::new(),
        };
        self.store_put(who, res_type, &id, resource, guarded.precondition, events).await
    }

    /// `PUT /{type}/{id}`: an update, or a create with the client's id.
    pub async fn update(&self, who: Requester<'_>, request: WriteRequest<'_>) -> Result<Written, FhirError> {
        let WriteRequest { res_type, id, resource, if_match, fresh } = request;
        resource.require_id(id)?;
        let guarded =
            self.guard_write(who, Interaction::Update, res_type, id, Some(resource.fields()), fresh, if_match).await?;
        let events = EventTargets {
            created: self.policies.integrations_for(res_type, PolicyInteraction::Create),
            updated: self.policies.integrations_for(res_type, PolicyInteraction::Update),
        };
        self.store_put(who, res_type, id, resource, guarded.precondition, events).await
    }

    /// `PATCH /{type}/{id}` with a JSON Patch: applied to the current version (which the caller
    /// must be able to read), then stored as an update pinned to that version (or to If-Match),
    /// so a concurrent change makes it fail (412) instead of being overwritten.
    pub async fn patch(&self, who: Requester<'_>, request: PatchRequest<'_>) -> Result<Written, FhirError> {
        let PatchRequest { res_type, id, operations, if_match } = request;
        who.principal.check(Interaction::Update, res_type)?;
        // Reading is part of patching: the caller must be allowed to see what it changes. The
        // patch applies to the stored version itself, not to what a read policy would show.
        let readable = self.predicate(who, Interaction::Read).await?;
        Self::reach_of(who, &readable, Interaction::Read, res_type)?;
        let Lookup::Live(current) = self.store.read_visible(res_type, id, &readable).await? else {
            return Err(not_found(res_type, id));
        };
        let expected = if_match.unwrap_or(current.version);
        if expected != current.version {
            return Err(FhirError::precondition_failed(format!(
                "If-Match does not name the current version ({}); read the resource again and retry",
                crate::fhir::etag(current.version)
            )));
        }
        let mut document: Value =
            current.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()).ok_or_else(FhirError::internal)?;
        crate::fhir::patch::apply(&mut document, operations).map_err(|message| {
            FhirError::new(axum::http::StatusCode::UNPROCESSABLE_ENTITY, IssueType::Invalid, message)
        })?;
        if document.get("resourceType").and_then(Value::as_str) != Some(res_type)
            || document.get("id").and_then(Value::as_str) != Some(id)
        {
            return Err(FhirError::new(
                axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                IssueType::Invalid,
                "a patch may not change the resource type or id",
            ));
        }
        let body = serde_json::to_vec(&document).map_err(|_| FhirError::internal())?;
        let resource = IncomingResource::parse(&body, res_type)?;
        let request = WriteRequest { res_type, id, resource: &resource, if_match: Some(expected), fresh: false };
        self.update(who, request).await
    }

    /// `PUT /{type}?search`: updates the one match, creates when there is none (with the
    /// body's id, or a new one), 412 when several match.
    pub async fn conditional_update(
        &self,
        who: Requester<'_>,
        res_type: &str,
        query: &str,
        resource: &IncomingResource,
        if_match: Option<i64>,
    ) -> Result<Written, FhirError> {
        let body_id = resource.fields().get("id").and_then(Value::as_str).map(str::to_owned);
        let (id, fresh) = match self.matching_ids(who, res_type, query).await?.as_slice() {
            [] => match body_id {
                Some(id) => (id, false),
                None => (uuid::Uuid::new_v4().to_string(), true),
            },
            [one] => {
                if body_id.as_ref().is_some_and(|b| b != one) {
                    return Err(FhirError::bad_request(
                        IssueType::Invalid,
                        "the resource id differs from the id of the resource the condition matches",
                    ));
                }
                (one.clone(), false)
            }
            _ => {
                return Err(FhirError::precondition_failed(
                    "the condition matches more than one resource; make it more specific",
                ));
            }
        };
        crate::fhir::resource::check_id(&id)?;
        let mut fields = resource.fields().clone();
        fields.insert("id".into(), Value::String(id.clone()));
        let body = serde_json::to_vec(&fields).map_err(|_| FhirError::internal())?;
        let resource = IncomingResource::parse(&body, res_type)?;
        self.update(who, WriteRequest { res_type, id: &id, resource: &resource, if_match, fresh }).await
    }

    /// `DELETE /{type}/{id}`: the version that records the deletion (`None`: it was deleted
    /// before).
    pub async fn delete(
        &self,
        who: Requester<'_>,
        res_type: &str,
        id: &str,
        if_match: Option<i64>,
    ) -> Result<Option<i64>, FhirError> {
        let guarded = self.guard_write(who, Interaction::Delete, res_type, id, None, false, if_match).await?;
        let expected = match guarded.precondition {
            Precondition::IfMatch(version) => Some(version),
            _ => None,
        };
        let events = self.policies.integrations_for(res_type, PolicyInteraction::Delete);
        let result = self.store.delete(res_type, id, expected, &events).await?;
        self.wake_delivery(!events.is_empty());
        match result {
            DeleteResult::Deleted { version } => {
                tracing::info!(res_type, id, version, "deleted");
                Ok(Some(version))
            }
            DeleteResult::AlreadyDeleted => Ok(None),
            DeleteResult::NotFound => Err(not_found(res_type, id)),
        }
    }

    /// `DELETE /{type}?search`: deletes the one match; 404 when none, 412 when several. The
    /// match's id, for the answer.
    pub async fn conditional_delete(
        &self,
        who: Requester<'_>,
        res_type: &str,
        query: &str,
        if_match: Option<i64>,
    ) -> Result<(String, Option<i64>), FhirError> {
        match self.matching_ids(who, res_type, query).await?.as_slice() {
            [] => Err(FhirError::not_found(format!("no {res_type} within this token's reach matches the condition"))),
            [one] => Ok((one.clone(), self.delete(who, res_type, one, if_match).await?)),
            _ => Err(FhirError::precondition_failed(
                "the condition matches more than one resource; make it more specific (this server deletes one at a time)",
            )),
        }
    }

    /// What follows any stored write of `res_type/id` by `who`, single or in a Bundle: a
    /// Subscription acts for whoever wrote it last (its matches and notifications stay within
    /// that principal's reach).
    pub async fn written(&self, who: Requester<'_>, res_type: &str, id: &str) -> Result<(), FhirError> {
        if res_type == "Subscription" {
            self.store.set_subscription_owner(id, &who.principal.as_owner()).await?;
        }
        Ok(())
    }

    async fn store_put(
        &self,
        who: Requester<'_>,
        res_type: &str,
        id: &str,
        resource: &IncomingResource,
        precondition: Precondition,
        events: EventTargets,
    ) -> Result<Written, FhirError> {
        let key_id = resource.data_key_id(id);
        let result = self
            .store
            .put(res_type, id, &key_id, precondition, &events, &|version, at| resource.stamped(id, version, at))
            .await?;
        self.written(who, res_type, id).await?;
        self.wake_delivery(!events.is_empty());
        tracing::info!(res_type, id, version = result.version, created = result.created, "written");
        Ok(Written::Stored { res_type: res_type.to_owned(), id: id.to_owned(), key_id, result })
    }
}
