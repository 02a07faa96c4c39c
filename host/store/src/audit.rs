//! The audit chain's storage: appending entries under the chain-head lock (so several hosts
//! extend one chain), reading entries and checkpoints back for verification and export.

use sha2::{Digest, Sha256};
use sqlx::Row;

use super::search::Sql;
use super::{Backend, Store, StoreError};
use hearth_fhir::audit::lookup::{AuditQuery, Lookup, date_matches, lookup_of};
use hearth_fhir::audit::{AuditEvent, canonical_entry};
use sqlx::AssertSqlSafe;

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
    /// Appends `events` to the chain in one transaction, with their lookup rows. Returns the
    /// new head.
    pub async fn append_audit(&self, events: &[&AuditEvent]) -> Result<(i64, [u8; 32]), StoreError> {
        let mut tx = self.begin_write().await?;
        let head_sql = format!("SELECT seq, hash FROM audit_head WHERE id = 1{}", self.backend.lock_rows());
        let head = sqlx::query(AssertSqlSafe(head_sql)).fetch_one(&mut *tx).await?;
        let mut seq: i64 = head.try_get(0)?;
        let mut hash: Vec<u8> = head.try_get(1)?;
        // The chain is computed here and written with a few multi-row statements: on SQLite
        // every statement is a round trip to the connection's thread, and one-by-one inserts
        // (three per entry) made the batch's thread switches most of a read's cost.
        let mut rows = Vec::with_capacity(events.len());
        let mut lookups = Vec::with_capacity(events.len());
        for event in events {
            seq += 1;
            let entry = canonical_entry(seq, event);
            let next = chain_hash(&hash, &entry).to_vec();
            rows.push((seq, String::from_utf8(entry).expect("audit entries are JSON text"), hash, next.clone()));
            lookups.push((seq, lookup_of(event)));
            hash = next;
        }
        for chunk in rows.chunks(ENTRY_CHUNK) {
            let mut sql = Sql::one_off(self.backend);
            let values: Vec<String> = chunk
                .iter()
                .map(|(seq, entry, prev, next)| {
                    format!(
                        "({}, {}, {}, {})",
                        sql.int(*seq),
                        sql.text(entry.as_str()),
                        sql.bytes(prev.clone()),
                        sql.bytes(next.clone())
                    )
                })
                .collect();
            let text = format!("INSERT INTO audit_entry (seq, entry, prev_hash, hash) VALUES {}", values.join(", "));
            sql.into_one_off(text).execute(&mut *tx).await?;
        }
        write_lookups(&mut tx, self.backend, &lookups).await?;
        sqlx::query("UPDATE audit_head SET seq = $1, hash = $2 WHERE id = 1")
            .bind(seq)
            .bind(&hash)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        let hash: [u8; 32] = hash.try_into().map_err(|_| StoreError::Integrity)?;
        Ok((seq, hash))
    }

    /// [`Store::append_audit`] for a single appender that knows the chain head it last wrote
    /// (`known`, kept in memory). On SQLite the whole batch is then one call to the
    /// connection's thread: `BEGIN IMMEDIATE`, the entry, time and term rows, the head, and
    /// `COMMIT` as one multi-statement text (values inline as hex literals, so nothing is
    /// escaped), instead of seven round trips. Another process that appended meanwhile (a CLI
    /// command on the same file) took the same sequence numbers, so the entry insert fails on
    /// its primary key, nothing is written, and the batch is appended again the usual way under
    /// the head lock. PostgreSQL (several hosts on one chain) always takes the usual way.
    pub async fn append_audit_after(
        &self,
        known: Option<(i64, [u8; 32])>,
        events: &[&AuditEvent],
    ) -> Result<(i64, [u8; 32]), StoreError> {
        let Some((head_seq, head_hash)) = known.filter(|_| self.backend == Backend::Sqlite) else {
            return self.append_audit(events).await;
        };
        let mut seq = head_seq;
        let mut hash = head_hash;
        let mut entries = Vec::with_capacity(events.len());
        let mut times = Vec::with_capacity(events.len());
        let mut terms = Vec::new();
        for event in events {
            seq += 1;
            let entry = canonical_entry(seq, event);
            let next = chain_hash(&hash, &entry);
            entries.push(format!(
                "({seq}, CAST({} AS TEXT), {}, {})",
                hex_literal(&entry),
                hex_literal(&hash),
                hex_literal(&next)
            ));
            let lookup = lookup_of(event);
            times.push(format!("({seq}, {})", lookup.at_us));
            for (param, value) in &lookup.terms {
                terms.push(format!(
                    "(CAST({} AS TEXT), CAST({} AS TEXT), {seq})",
                    hex_literal(param.as_bytes()),
                    hex_literal(value.as_bytes())
                ));
            }
            hash = next;
        }
        let mut text = String::from("BEGIN IMMEDIATE;\n");
        for chunk in entries.chunks(ENTRY_CHUNK) {
            text.push_str(&format!(
                "INSERT INTO audit_entry (seq, entry, prev_hash, hash) VALUES {};\n",
                chunk.join(", ")
            ));
        }
        for chunk in times.chunks(LOOKUP_CHUNK) {
            text.push_str(&format!(
                "INSERT INTO audit_time (seq, at_us) VALUES {} ON CONFLICT DO NOTHING;\n",
                chunk.join(", ")
            ));
        }
        for chunk in terms.chunks(LOOKUP_CHUNK) {
            text.push_str(&format!(
                "INSERT INTO audit_term (param, value, seq) VALUES {} ON CONFLICT DO NOTHING;\n",
                chunk.join(", ")
            ));
        }
        text.push_str(&format!(
            "UPDATE audit_head SET seq = {seq}, hash = {} WHERE id = 1 AND seq = {head_seq};\nCOMMIT;",
            hex_literal(&hash)
        ));
        let mut conn = self.writer.acquire().await?;
        match sqlx::raw_sql(AssertSqlSafe(text)).execute(&mut *conn).await {
            Ok(_) => Ok((seq, hash)),
            Err(error) => {
                // Whatever failed, the connection leaves no transaction open: rolled back, then
                // closed (the pool opens a fresh one), since sqlx did not see this BEGIN.
                let _ = sqlx::raw_sql("ROLLBACK").execute(&mut *conn).await;
                let _ = conn.close().await;
                tracing::info!(%error, "the audit chain moved under this appender; appending under the head lock");
                self.append_audit(events).await
            }
        }
    }

    /// Entries with `seq > after`, in order, at most `limit`.
    pub async fn audit_entries(&self, after: i64, limit: i64) -> Result<Vec<StoredAuditEntry>, StoreError> {
        let rows =
            sqlx::query("SELECT seq, entry, prev_hash, hash FROM audit_entry WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(after)
                .bind(limit)
                .fetch_all(&self.reader)
                .await?;
        rows.iter().map(stored_entry).collect()
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

/// An entry row (columns: seq, entry, prev_hash, hash).
fn stored_entry(row: &sqlx::any::AnyRow) -> Result<StoredAuditEntry, StoreError> {
    Ok(StoredAuditEntry {
        seq: row.try_get(0)?,
        entry: row.try_get(1)?,
        prev_hash: row.try_get(2)?,
        hash: row.try_get(3)?,
    })
}

/// `bytes` as a SQLite blob literal (`X'0A1B...'`).
fn hex_literal(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 2 + 3);
    out.push_str("X'");
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 15)]));
    }
    out.push('\'');
    out
}

/// Audit entries per multi-row INSERT (4 values each).
const ENTRY_CHUNK: usize = 200;
/// Lookup rows per multi-row INSERT (at most 3 values each).
const LOOKUP_CHUNK: usize = 300;

/// Writes the lookup rows of entries `(seq, lookup)`.
async fn write_lookups(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    lookups: &[(i64, Lookup)],
) -> Result<(), StoreError> {
    // ON CONFLICT: two hosts starting together may both index an old entry.
    for chunk in lookups.chunks(LOOKUP_CHUNK) {
        let mut sql = Sql::one_off(backend);
        let values: Vec<String> =
            chunk.iter().map(|(seq, lookup)| format!("({}, {})", sql.int(*seq), sql.int(lookup.at_us))).collect();
        let text = format!("INSERT INTO audit_time (seq, at_us) VALUES {} ON CONFLICT DO NOTHING", values.join(", "));
        sql.into_one_off(text).execute(&mut *conn).await?;
    }
    // A search's entry names every resource it returned: terms can be many per entry.
    let terms: Vec<(i64, &str, &str)> = lookups
        .iter()
        .flat_map(|(seq, lookup)| lookup.terms.iter().map(move |(param, value)| (*seq, *param, value.as_str())))
        .collect();
    for chunk in terms.chunks(LOOKUP_CHUNK) {
        let mut sql = Sql::one_off(backend);
        let values: Vec<String> = chunk
            .iter()
            .map(|(seq, param, value)| format!("({}, {}, {})", sql.text(*param), sql.text(*value), sql.int(*seq)))
            .collect();
        let text =
            format!("INSERT INTO audit_term (param, value, seq) VALUES {} ON CONFLICT DO NOTHING", values.join(", "));
        sql.into_one_off(text).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Candidate entries per lookup round of a search that checks dates in Rust.
const SEARCH_BATCH: i64 = 500;

impl Store {
    /// Writes lookup rows for entries that have none: those appended before the lookups
    /// existed (migration 5). It works newest first, so the entries with lookups are always the
    /// newest ones and an interrupted run resumes where it stopped. Returns how many entries
    /// it indexed; `progress(done, total)` follows it.
    pub async fn index_audit_backlog(&self, progress: &(dyn Fn(i64, i64) + Sync)) -> Result<i64, StoreError> {
        let first_indexed: Option<i64> =
            sqlx::query("SELECT MIN(seq) FROM audit_time").fetch_one(&self.reader).await?.try_get(0)?;
        let first_entry: Option<i64> =
            sqlx::query("SELECT MIN(seq) FROM audit_entry").fetch_one(&self.reader).await?.try_get(0)?;
        let Some(first_entry) = first_entry else { return Ok(0) };
        let mut below = match first_indexed {
            Some(seq) => seq,
            None => self.audit_head().await?.0 + 1,
        };
        let total = (below - first_entry).max(0);
        let mut done = 0;
        while below > first_entry {
            let rows = sqlx::query("SELECT seq, entry FROM audit_entry WHERE seq < $1 ORDER BY seq DESC LIMIT 1000")
                .bind(below)
                .fetch_all(&self.reader)
                .await?;
            let Some(last) = rows.last() else { break };
            below = last.try_get(0)?;
            let mut lookups = Vec::with_capacity(rows.len());
            for row in &rows {
                let entry: String = row.try_get(1)?;
                // An entry that is not valid JSON is the verifier's finding; it gets no lookups.
                if let Ok(event) = serde_json::from_str::<AuditEvent>(&entry) {
                    lookups.push((row.try_get(0)?, lookup_of(&event)));
                }
            }
            let mut tx = self.begin_write().await?;
            write_lookups(&mut tx, self.backend, &lookups).await?;
            tx.commit().await?;
            done += i64::try_from(rows.len()).unwrap_or(0);
            progress(done, total);
        }
        Ok(done)
    }

    /// One page of `GET /AuditEvent?...`: the matching entries in the search's order, and
    /// whether more follow (found by looking for one match beyond the page).
    pub async fn search_audit(&self, query: &AuditQuery) -> Result<(Vec<StoredAuditEntry>, bool), StoreError> {
        let wanted = query.count.saturating_add(1);
        let mut found: Vec<i64> = Vec::new();
        let mut cursor = query.cursor;
        while found.len() < wanted {
            let batch = self.audit_candidates(query, cursor, SEARCH_BATCH).await?;
            let exhausted = batch.len() < usize::try_from(SEARCH_BATCH).unwrap_or(usize::MAX);
            cursor = batch.last().map(|(seq, _)| *seq).or(cursor);
            found.extend(
                batch
                    .into_iter()
                    .filter(|&(_, at_us)| query.dates.iter().all(|&(prefix, range)| date_matches(at_us, prefix, range)))
                    .map(|(seq, _)| seq)
                    .take(wanted - found.len()),
            );
            if exhausted {
                break;
            }
        }
        let more = found.len() > query.count;
        found.truncate(query.count);
        let entries = self.audit_entries_at(&found).await?;
        Ok((entries, more))
    }

    /// Entries matching the query's term and id filters, after `cursor` in the search's order,
    /// with their recorded time (dates are checked by the caller). The first term filter
    /// drives the lookup through its index; the others are checked per candidate, as is a
    /// date range that bounds the time index.
    async fn audit_candidates(
        &self,
        query: &AuditQuery,
        cursor: Option<i64>,
        limit: i64,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        let mut sql = Sql::default();
        let (order, after) = if query.ascending { ("ASC", ">") } else { ("DESC", "<") };
        let mut conditions: Vec<String> = Vec::new();
        let (from, seq_col) = match query.terms.first() {
            Some((code, values)) => {
                let p = sql.text(*code);
                let list: Vec<String> = values.iter().map(|v| sql.text(v.as_str())).collect();
                conditions.push(format!("d.param = {p} AND d.value IN ({})", list.join(", ")));
                ("audit_term d JOIN audit_time m ON m.seq = d.seq", "d.seq")
            }
            None => ("audit_time m", "m.seq"),
        };
        for (code, values) in query.terms.iter().skip(1) {
            let p = sql.text(*code);
            let list: Vec<String> = values.iter().map(|v| sql.text(v.as_str())).collect();
            conditions.push(format!(
                "EXISTS (SELECT 1 FROM audit_term t WHERE t.param = {p} AND t.value IN ({}) AND t.seq = {seq_col})",
                list.join(", ")
            ));
        }
        if !query.seqs.is_empty() {
            let list: Vec<String> = query.seqs.iter().map(|s| sql.int(*s)).collect();
            conditions.push(format!("{seq_col} IN ({})", list.join(", ")));
        }
        if let Some(cursor) = cursor {
            let p = sql.int(cursor);
            conditions.push(format!("{seq_col} {after} {p}"));
        }
        // Bound the time index by the widest range every date condition allows.
        let (lo, hi) = query.dates.iter().fold((i64::MIN, i64::MAX), |(lo, hi), &(prefix, range)| {
            use hearth_fhir::search::query::Prefix;
            match prefix {
                Prefix::Eq | Prefix::Ap => (lo.max(range.lo), hi.min(range.hi)),
                Prefix::Gt | Prefix::Sa => (lo.max(range.hi.saturating_add(1)), hi),
                Prefix::Ge => (lo.max(range.lo), hi),
                Prefix::Lt | Prefix::Eb => (lo, hi.min(range.lo.saturating_sub(1))),
                Prefix::Le => (lo, hi.min(range.hi)),
                Prefix::Ne => (lo, hi),
            }
        });
        if lo != i64::MIN {
            let p = sql.int(lo);
            conditions.push(format!("m.at_us >= {p}"));
        }
        if hi != i64::MAX {
            let p = sql.int(hi);
            conditions.push(format!("m.at_us <= {p}"));
        }
        let limit_param = sql.int(limit);
        let text = format!(
            "SELECT DISTINCT {seq_col}, m.at_us FROM {from} WHERE {} ORDER BY {seq_col} {order} LIMIT {limit_param}",
            if conditions.is_empty() { "1 = 1".to_owned() } else { conditions.join(" AND ") }
        );
        let rows = sql.query(text).fetch_all(&self.reader).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    /// The entries with these sequence numbers, in the order given.
    pub async fn audit_entries_at(&self, seqs: &[i64]) -> Result<Vec<StoredAuditEntry>, StoreError> {
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let list: Vec<String> = (1..=seqs.len()).map(|i| format!("${i}")).collect();
        let sql = format!("SELECT seq, entry, prev_hash, hash FROM audit_entry WHERE seq IN ({})", list.join(", "));
        let mut statement = sqlx::query(sqlx::AssertSqlSafe(sql));
        for seq in seqs {
            statement = statement.bind(*seq);
        }
        let rows = statement.fetch_all(&self.reader).await?;
        let mut entries: Vec<StoredAuditEntry> = rows.iter().map(stored_entry).collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| seqs.iter().position(|s| *s == e.seq));
        Ok(entries)
    }

    /// Sequence numbers of entries with lookup term `param` = `value`, after `after`, oldest
    /// first, at most `limit`.
    pub async fn audit_seqs_with(
        &self,
        param: &str,
        value: &str,
        after: i64,
        limit: i64,
    ) -> Result<Vec<i64>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq FROM audit_term WHERE param = $1 AND value = $2 AND seq > $3 ORDER BY seq LIMIT $4",
        )
        .bind(param)
        .bind(value)
        .bind(after)
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(|r| Ok(r.try_get(0)?)).collect()
    }
}
