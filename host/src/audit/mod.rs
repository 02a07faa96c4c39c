//! The tamper-evident audit log: every interaction, allowed or denied, and every key and
//! erasure operation becomes an entry in a SHA-256 hash chain, with periodic checkpoints
//! signed (Ed25519) by a key kept outside the database. No clinical content: ids only.
//!
//! Requests append through [`AuditLog`], which batches concurrent entries into one
//! transaction (group commit) and answers each request only once its entry is durable, so a
//! request whose audit entry cannot be written fails.

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::store::Store;

pub mod lookup;
mod signer;
mod verify;

pub use signer::{AuditSigner, SignerError};
pub use verify::{Problem, VerifyReport, verify_chain};

/// Entries appended per transaction at most.
const BATCH: usize = 256;

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

struct Pending {
    event: AuditEvent,
    done: oneshot::Sender<Result<(), AuditFailure>>,
}

/// Why an audit entry was not written.
#[derive(Debug, Clone)]
pub struct AuditFailure {
    pub message: String,
    pub kind: AuditFailureKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditFailureKind {
    /// The database was unavailable: worth retrying.
    Unavailable,
    /// The database is out of space.
    Full,
    /// Anything else.
    Broken,
}

/// The appending side of the audit log, shared by all requests of a process.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Pending>,
    /// The key checkpoints are signed with, for verification on demand.
    public_key: std::sync::Arc<Vec<u8>>,
}

impl AuditLog {
    /// Starts the appender task over `store`; checkpoints are signed by `signer` every
    /// `checkpoint_every` entries.
    pub fn start(store: Store, signer: AuditSigner, checkpoint_every: i64) -> AuditLog {
        let (sender, receiver) = mpsc::channel(4096);
        let public_key = std::sync::Arc::new(signer.public_key());
        tokio::spawn(appender(store, signer, checkpoint_every.max(1), receiver));
        AuditLog { sender, public_key }
    }

    /// The public key this host signs checkpoints with.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    /// Appends `event`; returns once it is durable, or why it could not be written.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditFailure> {
        let stopped =
            || AuditFailure { message: "the audit appender has stopped".to_owned(), kind: AuditFailureKind::Broken };
        let (done, answer) = oneshot::channel();
        self.sender.send(Pending { event, done }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

async fn appender(store: Store, signer: AuditSigner, checkpoint_every: i64, mut receiver: mpsc::Receiver<Pending>) {
    while let Some(first) = receiver.recv().await {
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match receiver.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let events: Vec<&AuditEvent> = batch.iter().map(|p| &p.event).collect();
        let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
        let result = store.append_audit(&events).await;
        let (answer, head) = match result {
            Ok(head) => (Ok(()), Some(head)),
            Err(error) => {
                tracing::error!(%error, entries = batch.len(), "cannot append to the audit log");
                let kind = match error {
                    crate::store::StoreError::Unavailable(_) => AuditFailureKind::Unavailable,
                    crate::store::StoreError::Full(_) => AuditFailureKind::Full,
                    _ => AuditFailureKind::Broken,
                };
                (Err(AuditFailure { message: format!("cannot write the audit log: {error}"), kind }), None)
            }
        };
        for pending in batch {
            let _ = pending.done.send(answer.clone());
        }
        // The batch took sequence numbers seq-count+1 ..= seq in one transaction; a
        // checkpoint is due when that range crossed a multiple of `checkpoint_every`.
        if let Some((seq, hash)) = head
            && (seq - count) / checkpoint_every != seq / checkpoint_every
        {
            checkpoint(&store, &signer, seq, &hash).await;
        }
    }
}

/// Signs and stores a checkpoint at `seq`.
pub async fn checkpoint(store: &Store, signer: &AuditSigner, seq: i64, hash: &[u8; 32]) {
    let checkpoint = signer.checkpoint(seq, hash);
    if let Err(error) = store.insert_audit_checkpoint(&checkpoint).await {
        tracing::error!(%error, seq, "cannot store an audit checkpoint");
    }
}
