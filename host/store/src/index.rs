//! The search index: each version's index rows written with it (and removed with the version
//! they described), and the whole index rebuilt when the registry's fingerprint changes.

use super::search::{IN_CHUNK, Sql};
use serde_json::Value;
use sqlx::{AnyConnection, Row};

use super::{Store, StoreError};
use hearth_fhir::search::extract::IndexEntry;

/// Rows per multi-row INSERT of index entries (9 columns each).
const INSERT_CHUNK: usize = 300;

impl Store {
    /// Whether the index was built with the registry whose fingerprint is `fingerprint`.
    pub async fn search_index_fingerprint(&self) -> Result<Option<String>, StoreError> {
        Ok(sqlx::query("SELECT fingerprint FROM search_index_state WHERE id = 1")
            .fetch_optional(&self.reader)
            .await?
            .map(|r| r.try_get(0))
            .transpose()?)
    }

    /// Rebuilds the search index of every current resource (after an upgrade that changed the
    /// registry, or for data written before search existed), reporting progress as
    /// (done, total). Runs in batches, each in its own transaction, so writes keep flowing.
    pub async fn rebuild_search_index(
        &self,
        fingerprint: &str,
        progress: &(dyn Fn(u64, u64) + Sync),
    ) -> Result<u64, StoreError> {
        let total: i64 = sqlx::query("SELECT COUNT(*) FROM resource_head WHERE deleted = 0")
            .fetch_one(&self.reader)
            .await?
            .try_get(0)?;
        let total = u64::try_from(total).unwrap_or(0);
        let mut done = 0u64;
        let mut after: (String, String) = (String::new(), String::new());
        loop {
            let rows = sqlx::query(
                "SELECT res_type, res_id FROM resource_head WHERE deleted = 0 AND \
                 (res_type > $1 OR (res_type = $1 AND res_id > $2)) ORDER BY res_type, res_id LIMIT 200",
            )
            .bind(&after.0)
            .bind(&after.1)
            .fetch_all(&self.reader)
            .await?;
            if rows.is_empty() {
                break;
            }
            let batch: Vec<(String, String)> =
                rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect::<Result<_, StoreError>>()?;
            let key = self.blind_index_key().await?;
            let mut tx = self.begin_write().await?;
            for (res_type, id) in &batch {
                let entries = match self.read_current(res_type, id).await {
                    Ok(Some(record)) => match record.body.as_deref() {
                        Some(body) => index_entries_of(res_type, body, &key),
                        None => Vec::new(),
                    },
                    Ok(None) | Err(StoreError::Erased) => Vec::new(),
                    Err(other) => return Err(other),
                };
                write_index(&mut tx, self.backend, res_type, id, &entries, true).await?;
            }
            tx.commit().await?;
            done += batch.len() as u64;
            progress(done, total);
            after = batch.last().cloned().unwrap_or_default();
        }
        // Fresh planner statistics for the rebuilt index.
        sqlx::raw_sql(self.backend.analyze_search_index()).execute(&self.writer).await?;
        sqlx::query(
            "INSERT INTO search_index_state (id, fingerprint) VALUES (1, $1) \
             ON CONFLICT (id) DO UPDATE SET fingerprint = excluded.fingerprint",
        )
        .bind(fingerprint)
        .execute(&self.writer)
        .await?;
        Ok(done)
    }
}

/// Index rows for a stored body (bodies are JSON objects; anything else indexes nothing).
pub(super) fn index_entries_of(
    res_type: &str,
    body: &[u8],
    key: &hearth_crypto::blind_index::BlindIndexKey,
) -> Vec<IndexEntry> {
    match serde_json::from_slice::<serde_json::Map<String, Value>>(body) {
        Ok(resource) => hearth_fhir::search::extract::index_entries(res_type, &resource, key),
        Err(_) => Vec::new(),
    }
}

/// Writes the index rows of one resource inside a write transaction, first removing its old
/// rows when it `existed` before (a new resource has none).
pub(super) async fn write_index(
    conn: &mut AnyConnection,
    backend: super::Backend,
    res_type: &str,
    id: &str,
    entries: &[IndexEntry],
    existed: bool,
) -> Result<(), StoreError> {
    if existed {
        delete_index_many(conn, backend, &[(res_type, id)]).await?;
    }
    insert_index_many(conn, backend, &[(res_type, id, entries)]).await
}

/// Removes the index rows of `resources` (type, id), per type in `IN` lists.
pub(super) async fn delete_index_many(
    conn: &mut AnyConnection,
    backend: super::Backend,
    resources: &[(&str, &str)],
) -> Result<(), StoreError> {
    for (res_type, ids) in crate::write::ids_by_type(resources.iter().copied()) {
        for chunk in ids.chunks(IN_CHUNK) {
            let mut sql = Sql::one_off(backend);
            let t = sql.text(res_type);
            let list: Vec<String> = chunk.iter().map(|id| sql.text(*id)).collect();
            let text = format!("DELETE FROM search_index WHERE res_type = {t} AND res_id IN ({})", list.join(", "));
            sql.into_one_off(text).execute(&mut *conn).await?;
        }
    }
    Ok(())
}

/// Inserts the index rows of several resources (type, id, rows) in multi-row INSERTs.
pub(super) async fn insert_index_many(
    conn: &mut AnyConnection,
    backend: super::Backend,
    resources: &[(&str, &str, &[IndexEntry])],
) -> Result<(), StoreError> {
    let all: Vec<(&str, &str, &IndexEntry)> =
        resources.iter().flat_map(|(t, i, entries)| entries.iter().map(move |e| (*t, *i, e))).collect();
    for chunk in all.chunks(INSERT_CHUNK) {
        let mut sql = Sql::one_off(backend);
        let mut rows = Vec::with_capacity(chunk.len());
        for (res_type, id, entry) in chunk {
            let t = sql.text(*res_type);
            let i = sql.text(*id);
            let p = sql.text(entry.param);
            let sys = optional_text(&mut sql, entry.sys.as_deref());
            let val = optional_text(&mut sql, entry.val.as_deref());
            let unit = optional_text(&mut sql, entry.unit.as_deref());
            let num = entry.num.map_or_else(|| "NULL".to_owned(), |n| sql.float(n));
            let (lo, hi) = match entry.date {
                Some((lo, hi)) => (sql.int(lo), sql.int(hi)),
                None => ("NULL".to_owned(), "NULL".to_owned()),
            };
            rows.push(format!("({t}, {i}, {p}, {sys}, {val}, {unit}, {num}, {lo}, {hi})"));
        }
        let text = format!(
            "INSERT INTO search_index (res_type, res_id, param, sys, val, unit, num, date_lo, date_hi) VALUES {}",
            rows.join(", ")
        );
        sql.into_one_off(text).execute(&mut *conn).await?;
    }
    Ok(())
}

fn optional_text(sql: &mut Sql, value: Option<&str>) -> String {
    value.map_or_else(|| "NULL".to_owned(), |v| sql.text(v))
}
