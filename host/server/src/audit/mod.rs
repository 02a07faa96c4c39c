//! The tamper-evident audit log: every interaction, allowed or denied, and every key and
//! erasure operation becomes an entry in a SHA-256 hash chain, with periodic checkpoints
//! signed (Ed25519) by a key kept outside the database. No clinical content: ids only.
//!
//! Requests append through [`AuditLog`], which batches concurrent entries into one
//! transaction (group commit) and answers each request only once its entry is durable, so a
//! request whose audit entry cannot be written fails.
//!
//! Refusals (401, 403) are the exception: they disclose and change nothing, so they do not
//! wait. [`AuditLog::refused`] queues them (bounded), and the appender writes them with the
//! next durable batch, or on their own at most every [`REFUSAL_LINGER`]: a flood of refused
//! requests costs a few transactions a second, not one fsync each. Each client address may
//! cause [`AuditLog::refused`] `per_address` times a second (bursts of ten times that) before
//! its refusals answer 429 and are counted instead; counted refusals, and any the full queue
//! could not take, are written as one entry per address and status with `count` set.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::store::Store;

mod signer;
mod verify;

// The entry itself (its fields, canonical bytes, FHIR form and query) is model: hearth-fhir.
pub use crate::fhir::audit::{AuditEvent, Outcome, Review, canonical_entry, lookup};
pub use signer::{AuditSigner, SignerError, key_id_of, signed_by};
pub use verify::{Problem, VerifyReport, verify_chain};

/// Entries appended per transaction at most (durable ones; refusals ride along up to
/// [`REFUSAL_BATCH`] more).
const BATCH: usize = 256;
/// Refusal entries written per transaction at most.
const REFUSAL_BATCH: usize = 1024;
/// Refusals queued at most; beyond that they are counted per address.
const REFUSAL_QUEUE: usize = 8192;
/// How long a refusal waits for a durable batch to ride along with.
pub const REFUSAL_LINGER: Duration = Duration::from_millis(100);
/// Addresses whose refusals are tracked at most (the oldest idle ones are forgotten first).
const TRACKED_ADDRESSES: usize = 10_000;

struct Pending {
    /// `None`: a barrier, answered once the refusals queued before it are written.
    event: Option<AuditEvent>,
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

/// What became of a refusal handed to [`AuditLog::refused`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Queued as an entry of its own.
    Itemised,
    /// Its address is over its budget: answer 429; it is counted in a summary entry.
    Limited,
}

/// The appending side of the audit log, shared by all requests of a process.
#[derive(Clone)]
pub struct AuditLog {
    sender: mpsc::Sender<Pending>,
    refusals: mpsc::Sender<AuditEvent>,
    budget: Arc<Budget>,
    /// The key checkpoints are signed with, for verification on demand.
    public_key: Arc<Vec<u8>>,
}

impl AuditLog {
    /// Starts the appender task over `store`; checkpoints are signed by `signer` every
    /// `checkpoint_every` entries; each client address may cause `per_address` refusals a
    /// second (0: no limit).
    pub fn start(store: Store, signer: AuditSigner, checkpoint_every: i64, per_address: u32) -> AuditLog {
        let (sender, receiver) = mpsc::channel(4096);
        let (refusals, refused) = mpsc::channel(REFUSAL_QUEUE);
        let public_key = Arc::new(signer.public_key());
        let budget = Arc::new(Budget::new(per_address));
        let appender = Appender { store, signer, checkpoint_every: checkpoint_every.max(1), budget: budget.clone() };
        tokio::spawn(appender.run(receiver, refused));
        AuditLog { sender, refusals, budget, public_key }
    }

    /// The public key this host signs checkpoints with.
    pub fn public_key(&self) -> &[u8] {
        &self.public_key
    }

    async fn append(&self, event: Option<AuditEvent>) -> Result<(), AuditFailure> {
        let stopped =
            || AuditFailure { message: "the audit appender has stopped".to_owned(), kind: AuditFailureKind::Broken };
        let (done, answer) = oneshot::channel();
        self.sender.send(Pending { event, done }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Appends `event`; returns once it is durable, or why it could not be written.
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditFailure> {
        self.append(Some(event)).await
    }

    /// Returns once the refusals queued so far are written (or could not be): an auditor's
    /// question is answered from the whole log.
    pub async fn settle(&self) -> Result<(), AuditFailure> {
        self.append(None).await
    }

    /// Queues the entry of a refused request (401, 403) without waiting for it to be durable.
    pub fn refused(&self, event: AuditEvent) -> Refusal {
        let address = event.ip.clone().unwrap_or_default();
        if !self.budget.take(&address) {
            self.budget.count_one(&address, 429);
            return Refusal::Limited;
        }
        if let Err(full) = self.refusals.try_send(event) {
            let event = full.into_inner();
            self.budget.count_one(&address, event.status);
        }
        Refusal::Itemised
    }
}

/// Per-address refusal budgets (token buckets) and the refusals counted instead of itemised.
struct Budget {
    per_second: f64,
    state: Mutex<BudgetState>,
}

#[derive(Default)]
struct BudgetState {
    buckets: HashMap<String, (f64, Instant)>,
    /// (address, status) -> refusals not itemised since the last summary, and since when.
    counted: HashMap<(String, u16), (u64, i64)>,
}

impl BudgetState {
    /// Counts `n` refusals of `status` from `address` for the next summary.
    fn count(&mut self, address: &str, status: u16, n: u64) {
        self.counted.entry((address.to_owned(), status)).or_insert((0, now_us())).0 += n;
    }
}

impl Budget {
    fn new(per_second: u32) -> Self {
        Budget { per_second: f64::from(per_second), state: Mutex::default() }
    }

    /// Takes one refusal from `address`'s bucket; false when it is empty.
    fn take(&self, address: &str) -> bool {
        if self.per_second <= 0.0 {
            return true;
        }
        let burst = self.per_second * 10.0;
        let now = Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if state.buckets.len() >= TRACKED_ADDRESSES && !state.buckets.contains_key(address) {
            // Forget the addresses whose buckets have refilled: they are as if new.
            let per_second = self.per_second;
            state
                .buckets
                .retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * per_second < burst);
            if state.buckets.len() >= TRACKED_ADDRESSES {
                state.buckets.clear();
            }
        }
        let (tokens, at) = state.buckets.entry(address.to_owned()).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * self.per_second).min(burst);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Counts refusals (or summaries) a failed batch did not write, to be written as summaries.
    fn add_back(&self, events: &[AuditEvent]) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        for event in events {
            state.count(event.ip.as_deref().unwrap_or_default(), event.status, event.count.unwrap_or(1));
        }
    }

    /// Counts one refusal of `status` from `address`.
    fn count_one(&self, address: &str, status: u16) {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        state.count(address, status, 1);
    }

    /// One entry per (address, status) with refusals counted since the last call.
    fn summaries(&self) -> Vec<AuditEvent> {
        let counted = std::mem::take(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()).counted);
        counted
            .into_iter()
            .map(|((address, status), (count, since))| AuditEvent {
                at: to_fhir_instant(since),
                action: "refused-requests".to_owned(),
                outcome: Outcome::of_status(status),
                status,
                ip: (!address.is_empty()).then_some(address),
                decided_by: Some(
                    match status {
                        401 => "authentication",
                        403 => "scope",
                        _ => "refusal-limit",
                    }
                    .to_owned(),
                ),
                count: Some(count),
                ..AuditEvent::default()
            })
            .collect()
    }
}

struct Appender {
    store: Store,
    signer: AuditSigner,
    checkpoint_every: i64,
    budget: Arc<Budget>,
}

impl Appender {
    async fn run(self, mut receiver: mpsc::Receiver<Pending>, mut refused: mpsc::Receiver<AuditEvent>) {
        // The head this appender last wrote: lets the store append without reading it first.
        let mut head: Option<(i64, [u8; 32])> = None;
        let mut summary_due = Instant::now();
        let mut closing = false;
        while !closing {
            let mut batch = Vec::new();
            let mut refusals = Vec::new();
            tokio::select! {
                biased;
                first = receiver.recv() => match first {
                    Some(pending) => batch.push(pending),
                    // The last refusals and summaries are written before the appender stops.
                    None => closing = true,
                },
                Some(event) = refused.recv() => {
                    refusals.push(event);
                    // Ride along with the next durable batch, or go alone after the linger.
                    if let Ok(Some(pending)) = tokio::time::timeout(REFUSAL_LINGER, receiver.recv()).await {
                        batch.push(pending);
                    }
                }
                () = tokio::time::sleep(REFUSAL_LINGER) => {}
            }
            while batch.len() < BATCH {
                match receiver.try_recv() {
                    Ok(pending) => batch.push(pending),
                    Err(_) => break,
                }
            }
            while refusals.len() < REFUSAL_BATCH {
                match refused.try_recv() {
                    Ok(event) => refusals.push(event),
                    Err(_) => break,
                }
            }
            let barrier = batch.iter().any(|p| p.event.is_none());
            if closing || barrier || summary_due.elapsed() >= REFUSAL_LINGER {
                refusals.extend(self.budget.summaries());
                summary_due = Instant::now();
            }
            if batch.is_empty() && refusals.is_empty() {
                continue;
            }
            if refusals.is_empty() && batch.iter().all(|p| p.event.is_none()) {
                for pending in batch {
                    let _ = pending.done.send(Ok(()));
                }
                continue;
            }
            // Refusals first: they were answered before the durable entries still waiting.
            let mut events: Vec<&AuditEvent> = refusals.iter().collect();
            events.extend(batch.iter().filter_map(|p| p.event.as_ref()));
            let count = i64::try_from(events.len()).unwrap_or(i64::MAX);
            let result = self.store.append_audit_after(head, &events).await;
            let answer = match result {
                Ok(written) => {
                    head = Some(written);
                    Ok(())
                }
                Err(error) => {
                    head = None;
                    tracing::error!(%error, entries = events.len(), "cannot append to the audit log");
                    // The refusals are counted again, to be written as summaries.
                    self.budget.add_back(&refusals);
                    let kind = match error {
                        crate::store::StoreError::Unavailable(_) => AuditFailureKind::Unavailable,
                        crate::store::StoreError::Full(_) => AuditFailureKind::Full,
                        _ => AuditFailureKind::Broken,
                    };
                    Err(AuditFailure { message: format!("cannot write the audit log: {error}"), kind })
                }
            };
            for pending in batch {
                let _ = pending.done.send(answer.clone());
            }
            // The batch took sequence numbers seq-count+1 ..= seq in one transaction; a
            // checkpoint is due when that range crossed a multiple of `checkpoint_every`.
            if let Some((seq, hash)) = head.filter(|_| answer.is_ok())
                && (seq - count) / self.checkpoint_every != seq / self.checkpoint_every
            {
                checkpoint(&self.store, &self.signer, seq, &hash).await;
            }
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
