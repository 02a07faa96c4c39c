//! An audit entry as a record: its fields, the canonical bytes its hash chain is computed
//! over, its FHIR AuditEvent form and the AuditEvent search ([`lookup`]). Appending, signing
//! and verifying the chain are the server's (`hearth::audit`); storing it is `hearth-store`'s.

use serde::{Deserialize, Serialize};

pub mod lookup;

/// What happened, by whom, to which resource, with which outcome.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEvent {
    /// FHIR instant.
    pub at: String,
    pub action: String,
    pub outcome: Outcome,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// The scopes the token granted, space-separated as in the token: what an access review
    /// compares with what the principal should have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// Which rule decided (e.g. `scope`; later, policy plugin names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_by: Option<String>,
    /// The stated reason of an emergency (break-glass) access.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_glass: Option<String>,
    /// What a search (or other multi-resource read) returned: `Type/id` of every resource in
    /// the response, and nothing of their content.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub returned: Vec<String>,
    /// The patients whose compartments the resources read or written are in (ids only), so
    /// "who saw this patient's records" has an answer.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub patients: Vec<String>,
    /// A reviewer's verdict on an emergency access (the entry named by `resource_id`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub review: Option<Review>,
    /// How many refusals of the same kind from one address this entry stands for, when they
    /// came faster than they may be itemised (see docs/reliability.md); absent: one request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// A reviewer's verdict on a break-glass access.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Review {
    /// `acknowledged` (the access was justified) or `escalated` (it needs follow-up).
    pub decision: String,
    pub comment: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    #[default]
    Success,
    /// Refused by authentication or authorisation.
    Denied,
    /// Failed for another reason (bad request, not found, server error).
    Failed,
}

impl Outcome {
    pub fn of_status(status: u16) -> Outcome {
        match status {
            200..=399 => Outcome::Success,
            401 | 403 => Outcome::Denied,
            _ => Outcome::Failed,
        }
    }
}

/// The canonical bytes of the entry with sequence number `seq`: what is hashed and stored.
pub fn canonical_entry(seq: i64, event: &AuditEvent) -> Vec<u8> {
    #[derive(Serialize)]
    struct Chained<'a> {
        seq: i64,
        #[serde(flatten)]
        event: &'a AuditEvent,
    }
    serde_json::to_vec(&Chained { seq, event }).expect("audit entries serialise")
}
