//! Walking the audit chain: recomputes every hash, checks the links and the sequence, and
//! checks each signed checkpoint against the chain, reporting the first break found.

use super::signer::signature_valid;
use crate::store::{Store, StoreError, StoredAuditEntry, StoredCheckpoint, chain_hash};

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
    let mut walk = Walk::new(&checkpoints);
    for checkpoint in &checkpoints {
        if !trusted_keys.iter().any(|key| signature_valid(key, checkpoint)) {
            walk.report.problem = Some(Problem::BadCheckpointSignature { seq: checkpoint.seq });
            return Ok(walk.report);
        }
    }
    loop {
        let page = store.audit_entries(walk.last_seq, PAGE).await?;
        if page.is_empty() {
            break;
        }
        for entry in &page {
            if let Err(problem) = walk.step(entry) {
                walk.report.problem = Some(problem);
                return Ok(walk.report);
            }
        }
        progress(walk.report.entries);
    }
    Ok(walk.finish(head_seq))
}

/// The checks of the chain, entry by entry in sequence order (signatures aside): what
/// [`verify_chain`] runs on each page it reads.
struct Walk<'c> {
    prev_hash: Vec<u8>,
    last_seq: i64,
    checkpoints: std::iter::Peekable<std::slice::Iter<'c, StoredCheckpoint>>,
    report: VerifyReport,
}

impl<'c> Walk<'c> {
    fn new(checkpoints: &'c [StoredCheckpoint]) -> Self {
        Walk {
            prev_hash: vec![0u8; 32],
            last_seq: 0,
            checkpoints: checkpoints.iter().peekable(),
            report: VerifyReport {
                entries: 0,
                checkpoints: checkpoints.len(),
                last_good_checkpoint: None,
                problem: None,
            },
        }
    }

    /// Checks the next entry read.
    fn step(&mut self, entry: &StoredAuditEntry) -> Result<(), Problem> {
        let expected_seq = self.last_seq + 1;
        if entry.seq != expected_seq {
            return Err(Problem::Missing { seq: expected_seq });
        }
        if entry.prev_hash != self.prev_hash {
            return Err(Problem::Broken { seq: entry.seq });
        }
        if chain_hash(&entry.prev_hash, entry.entry.as_bytes())[..] != entry.hash[..] {
            return Err(Problem::Altered { seq: entry.seq });
        }
        let claimed_seq = serde_json::from_str::<serde_json::Value>(&entry.entry).ok().and_then(|v| v["seq"].as_i64());
        if claimed_seq != Some(entry.seq) {
            return Err(Problem::Reordered { seq: entry.seq });
        }
        while let Some(checkpoint) = self.checkpoints.next_if(|c| c.seq == entry.seq) {
            if checkpoint.hash != entry.hash {
                return Err(Problem::CheckpointMismatch { seq: checkpoint.seq });
            }
            self.report.last_good_checkpoint = Some(checkpoint.seq);
        }
        self.prev_hash.clone_from(&entry.hash);
        self.last_seq = entry.seq;
        self.report.entries += 1;
        Ok(())
    }

    /// After the last entry: a checkpoint past it, or a recorded head beyond it, means entries
    /// were removed from the end.
    fn finish(mut self, head_seq: i64) -> VerifyReport {
        if let Some(checkpoint) = self.checkpoints.next() {
            self.report.problem = Some(Problem::Truncated { expected: checkpoint.seq, found: self.last_seq });
        } else if self.last_seq < head_seq {
            self.report.problem = Some(Problem::Truncated { expected: head_seq, found: self.last_seq });
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A valid chain of `texts.len()` entries, and a checkpoint at each of `at` (in range).
    fn chain(texts: &[String], at: &[usize]) -> (Vec<StoredAuditEntry>, Vec<StoredCheckpoint>) {
        let mut prev = vec![0u8; 32];
        let mut entries = Vec::new();
        for (i, text) in texts.iter().enumerate() {
            let seq = i as i64 + 1;
            let entry = serde_json::json!({"seq": seq, "what": text}).to_string();
            let hash = chain_hash(&prev, entry.as_bytes()).to_vec();
            entries.push(StoredAuditEntry { seq, entry, prev_hash: prev.clone(), hash: hash.clone() });
            prev = hash;
        }
        let mut seqs: Vec<usize> = at.iter().map(|a| a % texts.len()).collect();
        seqs.sort_unstable();
        seqs.dedup();
        let checkpoints = seqs
            .into_iter()
            .map(|i| StoredCheckpoint {
                seq: entries[i].seq,
                hash: entries[i].hash.clone(),
                at_us: 0,
                key_id: String::new(),
                signature: Vec::new(),
            })
            .collect();
        (entries, checkpoints)
    }

    fn verify(entries: &[StoredAuditEntry], checkpoints: &[StoredCheckpoint], head: i64) -> VerifyReport {
        let mut walk = Walk::new(checkpoints);
        for entry in entries {
            if let Err(problem) = walk.step(entry) {
                walk.report.problem = Some(problem);
                return walk.report;
            }
        }
        walk.finish(head)
    }

    proptest! {
        /// A chain as written verifies; each kind of tampering at a random entry is reported,
        /// at that entry.
        #[test]
        fn tampering_anywhere_is_found_where_it_happened(
            texts in proptest::collection::vec("[ -~]{0,40}", 2..60),
            at in proptest::collection::vec(any::<usize>(), 0..4),
            victim in any::<usize>(),
            kind in 0u8..5,
            replacement in "[ -~]{1,40}",
        ) {
            let (mut entries, checkpoints) = chain(&texts, &at);
            let head = entries.len() as i64;
            let clean = verify(&entries, &checkpoints, head);
            prop_assert_eq!(clean.problem, None);
            prop_assert_eq!(clean.entries, head);
            let v = victim % entries.len();
            let seq = entries[v].seq;
            let expected = match kind {
                // The text changes, the stored hash does not.
                0 => {
                    entries[v].entry = serde_json::json!({"seq": seq, "what": format!("{replacement}!")}).to_string();
                    Problem::Altered { seq }
                }
                // An entry disappears from the middle or the end.
                1 => {
                    entries.remove(v);
                    if v + 1 == head as usize {
                        let expected = checkpoints.last().filter(|c| c.seq == seq).map_or(head, |c| c.seq);
                        Problem::Truncated { expected, found: seq - 1 }
                    } else {
                        Problem::Missing { seq }
                    }
                }
                // Two neighbours swap places (their sequence numbers follow their positions).
                2 if v + 1 < entries.len() => {
                    entries.swap(v, v + 1);
                    entries[v].seq = seq;
                    entries[v + 1].seq = seq + 1;
                    Problem::Broken { seq }
                }
                // History rewritten from the victim on, every hash recomputed: only a
                // checkpoint at or after it can tell.
                3 => {
                    let mut prev = entries[v].prev_hash.clone();
                    for e in &mut entries[v..] {
                        if e.seq == seq {
                            e.entry = serde_json::json!({"seq": seq, "what": format!("{replacement}!")}).to_string();
                        }
                        e.prev_hash = prev.clone();
                        e.hash = chain_hash(&prev, e.entry.as_bytes()).to_vec();
                        prev = e.hash.clone();
                    }
                    match checkpoints.iter().find(|c| c.seq >= seq) {
                        Some(c) => Problem::CheckpointMismatch { seq: c.seq },
                        None => return Ok(()),
                    }
                }
                // An entry claims another position, hashes recomputed to match.
                _ => {
                    let mut prev = entries[v].prev_hash.clone();
                    for e in &mut entries[v..] {
                        if e.seq == seq {
                            e.entry = serde_json::json!({"seq": seq + 1000, "what": "moved"}).to_string();
                        }
                        e.prev_hash = prev.clone();
                        e.hash = chain_hash(&prev, e.entry.as_bytes()).to_vec();
                        prev = e.hash.clone();
                    }
                    Problem::Reordered { seq }
                }
            };
            let report = verify(&entries, &checkpoints, head);
            prop_assert_eq!(report.problem, Some(expected));
        }
    }
}
