//! The audit chain's storage: appending entries under the chain-head lock (so several hosts
//! extend one chain), reading entries and checkpoints back for verification and export.

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::{Backend, Store, StoreError};

/// One stored entry, as the verifier reads it.
#[derive(Debug, Clone)]
pub struct StoredAuditEntry {
    pub seq: i64,
    pub entry: String,
    pub prev_hash: Vec<u8>,
    pub hash: Vec<u8>,
}

/// One stored checkpoint.
#[derive(Debug, Clone)]
pub struct StoredCheckpoint {
    pub seq: i64,
    pub hash: Vec<u8>,
    pub at_us: i64,
    pub key_id: String,
    pub signature: Vec<u8>,
}

/// The chain hash of an entry: SHA-256(prev_hash || entry).
pub fn chain_hash(prev_hash: &[u8], entry: &[u8]) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(prev_hash);
    hasher.update(entry);
    hasher.finalize().into()
}

impl Store {
    /// Appends entries to the chain in one transaction. `render(seq)` gives the canonical
    /// JSON of the entry that gets sequence number `seq`. Returns the new head.
    pub async fn append_audit(
        &self,
        count: usize,
        render: &(dyn Fn(usize, i64) -> Vec<u8> + Sync),
    ) -> Result<(i64, [u8; 32]), StoreError> {
        let mut tx = self.begin_write().await?;
        let head_sql = match self.backend {
            Backend::Sqlite => "SELECT seq, hash FROM audit_head WHERE id = 1",
            Backend::Postgres => "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
        };
        let head = sqlx::query(head_sql).fetch_one(&mut *tx).await?;
        let mut seq: i64 = head.try_get(0)?;
        let mut hash: Vec<u8> = head.try_get(1)?;
        for index in 0..count {
            seq += 1;
            let entry = render(index, seq);
            let next = chain_hash(&hash, &entry);
            sqlx::query("INSERT INTO audit_entry (seq, entry, prev_hash, hash) VALUES ($1, $2, $3, $4)")
                .bind(seq)
                .bind(String::from_utf8(entry).expect("audit entries are JSON text"))
                .bind(&hash)
                .bind(&next[..])
                .execute(&mut *tx)
                .await?;
            hash = next.to_vec();
        }
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Integrity)?;
        Ok((seq, hash))
    }

    /// Entries with `seq > after`, in order, at most `limit`.
    pub async fn audit_entries(&self, after: i64, limit: i64) -> Result<Vec<StoredAuditEntry>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, entry, prev_hash, hash FROM audit_entry WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredAuditEntry {
                    seq: r.try_get(0)?,
                    entry: r.try_get(1)?,
                    prev_hash: r.try_get(2)?,
                    hash: r.try_get(3)?,
                })
            })
            .collect()
    }

    /// The chain head as recorded: (last seq, its hash).
    pub async fn audit_head(&self) -> Result<(i64, Vec<u8>), StoreError> {
        let row = sqlx::query("SELECT seq, hash FROM audit_head WHERE id = 1").fetch_one(&self.reader).await?;
        Ok((row.try_get(0)?, row.try_get(1)?))
    }

    pub async fn insert_audit_checkpoint(&self, checkpoint: &StoredCheckpoint) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO audit_checkpoint (seq, hash, at_us, key_id, signature) VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT DO NOTHING",
        )
        .bind(checkpoint.seq)
        .bind(&checkpoint.hash)
        .bind(checkpoint.at_us)
        .bind(&checkpoint.key_id)
        .bind(&checkpoint.signature)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    pub async fn audit_checkpoints(&self) -> Result<Vec<StoredCheckpoint>, StoreError> {
        let rows = sqlx::query("SELECT seq, hash, at_us, key_id, signature FROM audit_checkpoint ORDER BY seq")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(StoredCheckpoint {
                    seq: r.try_get(0)?,
                    hash: r.try_get(1)?,
                    at_us: r.try_get(2)?,
                    key_id: r.try_get(3)?,
                    signature: r.try_get(4)?,
                })
            })
            .collect()
    }
}
