//! The tamper-evident audit log: every interaction, allowed or denied, and every key and
//! erasure operation becomes an entry in a SHA-256 hash chain, with periodic checkpoints
//! signed (Ed25519) by a key kept outside the database. No clinical content: ids only.
//!
//! Requests append through [`AuditLog`], which batches concurrent entries into one
//! transaction (group commit) and answers each request only once its entry is durable, so a
//! request whose audit entry cannot be written fails.

use tokio::sync::{mpsc, oneshot};

use crate::store::Store;

mod signer;
mod verify;

// The entry itself (its fields, canonical bytes, FHIR form and query) is model: hearth-fhir.
pub use crate::fhir::audit::{AuditEvent, Outcome, Review, canonical_entry, lookup};
pub use signer::{AuditSigner, SignerError};
pub use verify::{Problem, VerifyReport, verify_chain};

/// Entries appended per transaction at most.
const BATCH: usize = 256;

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
