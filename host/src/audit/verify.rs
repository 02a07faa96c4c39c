//! Walking the audit chain: recomputes every hash, checks the links and the sequence, and
//! checks each signed checkpoint against the chain, reporting the first break found.

use super::signer::signature_valid;
use crate::store::{Store, StoreError, chain_hash};

/// Entries read per query while walking.
const PAGE: i64 = 2000;

/// The first thing found wrong with the chain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The entry's content no longer matches its hash: it was altered.
    Altered { seq: i64 },
    /// The entry does not link to its predecessor: entries were removed, inserted or reordered.
    Broken { seq: i64 },
    /// A sequence number is missing: an entry was removed.
    Missing { seq: i64 },
    /// The entry's content names another sequence number: it was moved.
    Reordered { seq: i64 },
    /// A checkpoint's signature is invalid, or it was made by an unknown key.
    BadCheckpointSignature { seq: i64 },
    /// A valid checkpoint disagrees with the chain: history before it was rewritten.
    CheckpointMismatch { seq: i64 },
    /// The chain ends before the recorded head, or a checkpoint points past its end: entries
    /// were removed from the end.
    Truncated { expected: i64, found: i64 },
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Altered { seq } => write!(f, "entry {seq} was altered (its hash does not match its content)"),
            Problem::Broken { seq } => {
                write!(f, "entry {seq} does not link to entry {} (removed, inserted or reordered entries)", seq - 1)
            }
            Problem::Missing { seq } => write!(f, "entry {seq} is missing (removed)"),
            Problem::Reordered { seq } => write!(f, "entry {seq} holds another entry's content (reordered)"),
            Problem::BadCheckpointSignature { seq } => {
                write!(f, "the checkpoint at entry {seq} has an invalid signature")
            }
            Problem::CheckpointMismatch { seq } => {
                write!(f, "the signed checkpoint at entry {seq} does not match the chain (history rewritten)")
            }
            Problem::Truncated { expected, found } => write!(
                f,
                "the chain ends at entry {found} but {expected} entries were recorded (entries removed from the end)"
            ),
        }
    }
}

/// What a verification found.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub entries: i64,
    pub checkpoints: usize,
    /// The last checkpoint that verified, if any.
    pub last_good_checkpoint: Option<i64>,
    pub problem: Option<Problem>,
}

/// Verifies the whole chain. `trusted_keys` are the public keys checkpoints may be signed by.
/// `progress(done)` is called after each page.
pub async fn verify_chain(
    store: &Store,
    trusted_keys: &[Vec<u8>],
    progress: &(dyn Fn(i64) + Sync),
) -> Result<VerifyReport, StoreError> {
    let checkpoints = store.audit_checkpoints().await?;
    let (head_seq, _) = store.audit_head().await?;
    let mut report =
        VerifyReport { entries: 0, checkpoints: checkpoints.len(), last_good_checkpoint: None, problem: None };
    let mut pending_checkpoints = checkpoints.iter().peekable();
    for checkpoint in &checkpoints {
        if !trusted_keys.iter().any(|key| signature_valid(key, checkpoint)) {
            report.problem = Some(Problem::BadCheckpointSignature { seq: checkpoint.seq });
            return Ok(report);
        }
    }
    let mut prev_hash = vec![0u8; 32];
    let mut last_seq = 0i64;
    loop {
        let page = store.audit_entries(last_seq, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for entry in &page {
            let expected_seq = last_seq + 1;
            if entry.seq != expected_seq {
                report.problem = Some(Problem::Missing { seq: expected_seq });
                return Ok(report);
            }
            if entry.prev_hash != prev_hash {
                report.problem = Some(Problem::Broken { seq: entry.seq });
                return Ok(report);
            }
            if chain_hash(&entry.prev_hash, entry.entry.as_bytes())[..] != entry.hash[..] {
                report.problem = Some(Problem::Altered { seq: entry.seq });
                return Ok(report);
            }
            let claimed_seq =
                serde_json::from_str::<serde_json::Value>(&entry.entry).ok().and_then(|v| v["seq"].as_i64());
            if claimed_seq != Some(entry.seq) {
                report.problem = Some(Problem::Reordered { seq: entry.seq });
                return Ok(report);
            }
            while let Some(checkpoint) = pending_checkpoints.next_if(|c| c.seq == entry.seq) {
                if checkpoint.hash != entry.hash {
                    report.problem = Some(Problem::CheckpointMismatch { seq: checkpoint.seq });
                    return Ok(report);
                }
                report.last_good_checkpoint = Some(checkpoint.seq);
            }
            prev_hash.clone_from(&entry.hash);
            last_seq = entry.seq;
            report.entries += 1;
        }
        progress(report.entries);
    }
    if let Some(checkpoint) = pending_checkpoints.next() {
        report.problem = Some(Problem::Truncated { expected: checkpoint.seq, found: last_seq });
    } else if last_seq < head_seq {
        report.problem = Some(Problem::Truncated { expected: head_seq, found: last_seq });
    }
    Ok(report)
}
