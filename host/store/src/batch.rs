//! The puts of one transaction written with a few multi-row statements instead of five or
//! six statements per resource.
//!
//! A transaction Bundle of 500 resources (an import batch) used to run ~3,000 statements one
//! after another, each a round trip to SQLite's worker thread or to PostgreSQL; the server
//! spent more time switching threads than writing. Here the heads of all resources are read
//! (and, on PostgreSQL, locked) per type in one statement, the data keys in one, and the new
//! heads, versions and index rows go in as multi-row INSERTs. What each write checks and
//! stores is exactly what [`Store::put`] does one resource at a time.

use std::collections::HashMap;
use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use sqlx::{AnyConnection, Row};

use super::index;
use super::search::Sql;
use super::{Backend, Head, PutRequest, Store, StoreError, StoredKey, WriteResult, plugins};
use crate::write::{move_head, next_timestamp, precondition_error};
use hearth_crypto::blind_index::BlindIndexKey;
use hearth_crypto::{SecretKey, resource_aad, seal_with, wrap_data_key};

/// Ids per `IN (...)` list when reading heads and keys.
const IN_CHUNK: usize = 500;
/// Rows per multi-row INSERT of heads (5 columns) and versions (7 columns).
const ROW_CHUNK: usize = 200;

/// One put on its way to the database.
struct Prepared<'a> {
    put: &'a PutRequest<'a>,
    head: Option<Head>,
    version: i64,
    last_updated_us: i64,
    body: Vec<u8>,
    sealed: Vec<u8>,
}

impl Store {
    /// Writes `puts` inside `tx` (none of them the same resource twice: the caller checks).
    /// On failure, the index in `puts` of the write that failed; the caller rolls back.
    pub(super) async fn put_many(
        &self,
        tx: &mut AnyConnection,
        index_key: &BlindIndexKey,
        puts: &[&PutRequest<'_>],
    ) -> Result<Vec<WriteResult>, (usize, StoreError)> {
        let mut heads = read_heads(tx, self.backend, puts).await.map_err(|e| (0, e))?;
        let ciphers = if self.plaintext { HashMap::new() } else { self.ciphers_for(tx, puts).await? };

        let mut prepared = Vec::with_capacity(puts.len());
        for (i, put) in puts.iter().copied().enumerate() {
            let head = heads.remove(&(put.res_type, put.id));
            let live = head.as_ref().filter(|h| !h.deleted);
            if let Some(error) = precondition_error(put.precondition, live) {
                return Err((i, error));
            }
            let version = head.as_ref().map_or(1, |h| h.version + 1);
            let last_updated_us = next_timestamp(head.as_ref());
            let body = (put.stamp)(version, last_updated_us);
            let sealed = if self.plaintext {
                body.clone()
            } else {
                let cipher = match ciphers.get(put.key_id) {
                    Some(cipher) => cipher.clone(),
                    // (`ciphers_for` covers every key; this is the one-at-a-time path.)
                    None => self.data_key_for_write(tx, put.key_id).await.map_err(|e| (i, e))?,
                };
                seal_with(&cipher, &resource_aad(put.res_type, put.id, version, put.key_id), &body)
            };
            prepared.push(Prepared { put, head, version, last_updated_us, body, sealed });
        }

        // Heads: new resources in multi-row INSERTs, existing ones by compare-and-set.
        let new: Vec<usize> = (0..prepared.len()).filter(|&i| prepared[i].head.is_none()).collect();
        for chunk in new.chunks(ROW_CHUNK) {
            let mut sql = Sql::one_off(self.backend);
            let rows: Vec<String> = chunk
                .iter()
                .map(|&i| {
                    let p = &prepared[i];
                    format!(
                        "({}, {}, {}, {}, 0, {})",
                        sql.text(p.put.res_type),
                        sql.text(p.put.id),
                        sql.int(p.version),
                        sql.int(p.last_updated_us),
                        sql.text(p.put.key_id)
                    )
                })
                .collect();
            let text = format!(
                "INSERT INTO resource_head (res_type, res_id, version, last_updated_us, deleted, key_id) VALUES {} \
                 ON CONFLICT DO NOTHING",
                rows.join(", ")
            );
            let inserted = sql.into_one_off(text).execute(&mut *tx).await.map_err(|e| (chunk[0], e.into()))?;
            if inserted.rows_affected() != chunk.len() as u64 {
                // Another writer created one of these ids since we looked: the client retries.
                return Err((chunk[0], StoreError::TooMuchContention));
            }
        }
        for (i, p) in prepared.iter().enumerate() {
            if let Some(head) = &p.head {
                let moved = move_head(
                    tx,
                    p.put.res_type,
                    p.put.id,
                    Some(head),
                    p.version,
                    p.last_updated_us,
                    Some(p.put.key_id),
                )
                .await
                .map_err(|e| (i, e))?;
                if !moved {
                    return Err((i, StoreError::TooMuchContention));
                }
            }
        }

        // Versions.
        for (n, chunk) in prepared.chunks(ROW_CHUNK).enumerate() {
            let mut sql = Sql::one_off(self.backend);
            let rows: Vec<String> = chunk
                .iter()
                .map(|p| {
                    format!(
                        "({}, {}, {}, {}, 0, {}, {})",
                        sql.text(p.put.res_type),
                        sql.text(p.put.id),
                        sql.int(p.version),
                        sql.int(p.last_updated_us),
                        sql.text(p.put.key_id),
                        sql.bytes(p.sealed.clone())
                    )
                })
                .collect();
            let text = format!(
                "INSERT INTO resource_version (res_type, res_id, version, last_updated_us, deleted, key_id, body) \
                 VALUES {}",
                rows.join(", ")
            );
            sql.into_one_off(text).execute(&mut *tx).await.map_err(|e| (n * ROW_CHUNK, e.into()))?;
        }

        // Search index: the old rows of resources that existed, then every new row.
        let replaced: Vec<(&str, &str)> =
            prepared.iter().filter(|p| p.head.is_some()).map(|p| (p.put.res_type, p.put.id)).collect();
        index::delete_index_many(tx, self.backend, &replaced).await.map_err(|e| (0, e))?;
        let entries: Vec<_> =
            prepared.iter().map(|p| index::index_entries_of(p.put.res_type, &p.body, index_key)).collect();
        let rows: Vec<(&str, &str, &[_])> =
            prepared.iter().zip(&entries).map(|(p, e)| (p.put.res_type, p.put.id, e.as_slice())).collect();
        index::insert_index_many(tx, self.backend, &rows).await.map_err(|e| (0, e))?;

        let mut written = Vec::with_capacity(prepared.len());
        for (i, p) in prepared.into_iter().enumerate() {
            let created = p.head.as_ref().is_none_or(|h| h.deleted);
            let (kind, targets) =
                if created { ("created", &p.put.events.created) } else { ("updated", &p.put.events.updated) };
            plugins::enqueue_events(tx, targets, p.put.res_type, p.put.id, p.version, kind, p.last_updated_us)
                .await
                .map_err(|e| (i, e))?;
            written.push(WriteResult { version: p.version, last_updated_us: p.last_updated_us, body: p.body, created });
        }
        Ok(written)
    }

    /// The ciphers of every data key `puts` use, reading them in one statement and creating
    /// the missing ones (new patient compartments) in another.
    async fn ciphers_for(
        &self,
        tx: &mut AnyConnection,
        puts: &[&PutRequest<'_>],
    ) -> Result<HashMap<String, Arc<Aes256Gcm>>, (usize, StoreError)> {
        let first_use = |key_id: &str| puts.iter().position(|p| p.key_id == key_id).unwrap_or(0);
        let mut wanted: Vec<&str> = puts.iter().map(|p| p.key_id).collect();
        wanted.sort_unstable();
        wanted.dedup();
        let mut ciphers = HashMap::with_capacity(wanted.len());
        let mut missing = Vec::new();
        for chunk in wanted.chunks(IN_CHUNK) {
            let mut sql = Sql::one_off(self.backend);
            let list: Vec<String> = chunk.iter().map(|k| sql.text(*k)).collect();
            let text =
                format!("SELECT key_id, kek_version, wrapped FROM data_key WHERE key_id IN ({})", list.join(", "));
            let rows = sql.into_one_off(text).fetch_all(&mut *tx).await.map_err(|e| (0, e.into()))?;
            let mut found = std::collections::HashSet::with_capacity(rows.len());
            for row in rows {
                let key_id: String = row.try_get(0).map_err(|e| (0, e.into()))?;
                let kek_version: i64 = row.try_get(1).map_err(|e| (0, e.into()))?;
                let Some(wrapped) = row.try_get::<Option<Vec<u8>>, _>(2).map_err(|e| (0, e.into()))? else {
                    return Err((first_use(&key_id), StoreError::Erased));
                };
                let cipher = self.vault.cipher(&key_id, kek_version, &wrapped).map_err(|e| (first_use(&key_id), e))?;
                found.insert(key_id.clone());
                ciphers.insert(key_id, cipher);
            }
            missing.extend(chunk.iter().copied().filter(|k| !found.contains(*k)));
        }
        if missing.is_empty() {
            return Ok(ciphers);
        }
        let (kek_version, kek) = self.wrapping_kek(tx).await.map_err(|e| (first_use(missing[0]), e))?;
        for chunk in missing.chunks(ROW_CHUNK) {
            let keys: Vec<SecretKey> = chunk.iter().map(|_| SecretKey::generate()).collect();
            let now = hearth_fhir::instant::now_us();
            let mut sql = Sql::one_off(self.backend);
            let rows: Vec<String> = chunk
                .iter()
                .zip(&keys)
                .map(|(key_id, key)| {
                    format!(
                        "({}, {}, {}, {})",
                        sql.text(*key_id),
                        sql.int(kek_version),
                        sql.bytes(wrap_data_key(&kek, kek_version, key_id, key)),
                        sql.int(now)
                    )
                })
                .collect();
            let text = format!(
                "INSERT INTO data_key (key_id, kek_version, wrapped, created_us) VALUES {} ON CONFLICT DO NOTHING",
                rows.join(", ")
            );
            let inserted =
                sql.into_one_off(text).execute(&mut *tx).await.map_err(|e| (first_use(chunk[0]), e.into()))?;
            if inserted.rows_affected() == chunk.len() as u64 {
                for (key_id, key) in chunk.iter().zip(&keys) {
                    ciphers.insert((*key_id).to_owned(), self.vault.remember(key_id, key));
                }
                continue;
            }
            // Another writer created some of these keys first: take each as it now stands
            // (ours or theirs, both wrapped under a KEK we hold).
            for key_id in chunk {
                let cipher = match self.find_or_create_key(tx, key_id).await.map_err(|e| (first_use(key_id), e))? {
                    StoredKey::Wrapped { kek_version, wrapped } => self.vault.cipher(key_id, kek_version, &wrapped),
                    StoredKey::Created(key) => Ok(self.vault.remember(key_id, &key)),
                }
                .map_err(|e| (first_use(key_id), e))?;
                ciphers.insert((*key_id).to_owned(), cipher);
            }
        }
        Ok(ciphers)
    }
}

/// The heads of `puts`' resources that exist, by (type, id), read per type in `IN` lists.
/// On PostgreSQL the rows are locked, in id order, as `write::read_head` locks one.
async fn read_heads<'a>(
    conn: &mut AnyConnection,
    backend: Backend,
    puts: &[&PutRequest<'a>],
) -> Result<HashMap<(&'a str, &'a str), Head>, StoreError> {
    let mut heads = HashMap::with_capacity(puts.len());
    for (res_type, mut ids) in crate::write::ids_by_type(puts.iter().map(|p| (p.res_type, p.id))) {
        ids.sort_unstable();
        for chunk in ids.chunks(IN_CHUNK) {
            let mut sql = Sql::one_off(backend);
            let t = sql.text(res_type);
            let list: Vec<String> = chunk.iter().map(|id| sql.text(*id)).collect();
            // Locked in id order on PostgreSQL, so two transactions cannot deadlock on them.
            let lock = backend.lock_rows_in_order("res_id");
            let text = format!(
                "SELECT res_id, version, deleted, last_updated_us FROM resource_head \
                 WHERE res_type = {t} AND res_id IN ({}){lock}",
                list.join(", ")
            );
            for row in sql.into_one_off(text).fetch_all(&mut *conn).await? {
                let id: String = row.try_get(0)?;
                let Ok(at) = chunk.binary_search(&id.as_str()) else { continue };
                let id = chunk[at];
                let head = Head {
                    version: row.try_get(1)?,
                    deleted: row.try_get::<i64, _>(2)? != 0,
                    last_updated_us: row.try_get(3)?,
                };
                heads.insert((res_type, id), head);
            }
        }
    }
    Ok(heads)
}
