//! Writes: put (create or update with preconditions), delete, transactions and bulk creates,
//! each version sealed under its compartment's data key, heads moved with a compare-and-set.

use sqlx::{AssertSqlSafe, Row};

use hearth_crypto::blind_index::BlindIndexKey;
use hearth_crypto::{resource_aad, seal_with};

use crate::{
    Backend, DeleteResult, EventTargets, Head, MAX_WRITE_ATTEMPTS, NewResource, Precondition, PutRequest, Store,
    StoreError, TransactionError, TxOutcome, TxWrite, WriteResult,
};
use crate::{index, plugins};

impl Store {
    /// Writes a new version of `res_type/id`, sealed under the data key `key_id` (created on
    /// first use), and queues the change for the integration plugins in `events` in the same
    /// transaction.
    ///
    /// `stamp(version, last_updated_us)` renders the body to store for the version the store
    /// assigns; it may be called more than once if the write is retried.
    pub async fn put(
        &self,
        res_type: &str,
        id: &str,
        key_id: &str,
        precondition: Precondition,
        events: &EventTargets,
        stamp: &(dyn Fn(i64, i64) -> Vec<u8> + Sync),
    ) -> Result<WriteResult, StoreError> {
        // Before the transaction: creating the key on first use takes the writer itself.
        let index_key = self.blind_index_key().await?;
        let write = PutRequest { res_type, id, key_id, precondition, events, stamp };
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let mut tx = self.begin_write().await?;
            match self.put_in(&mut tx, &index_key, &write).await? {
                Some(written) => {
                    tx.commit().await?;
                    return Ok(written);
                }
                // Another writer moved the head between our read and our write.
                None => {
                    tx.rollback().await?;
                    if precondition != Precondition::None {
                        return Err(StoreError::VersionConflict { current: None });
                    }
                }
            }
        }
        Err(StoreError::TooMuchContention)
    }

    /// One put inside `tx`; `None` when another writer moved the head first (the caller rolls
    /// back, and may retry).
    async fn put_in(
        &self,
        tx: &mut sqlx::AnyConnection,
        index_key: &BlindIndexKey,
        write: &PutRequest<'_>,
    ) -> Result<Option<WriteResult>, StoreError> {
        let PutRequest { res_type, id, key_id, precondition, events, stamp } = *write;
        let head = read_head(tx, self.backend, res_type, id).await?;
        let live = head.as_ref().filter(|h| !h.deleted);
        if let Some(error) = precondition_error(precondition, live) {
            return Err(error);
        }
        let version = head.as_ref().map_or(1, |h| h.version + 1);
        let last_updated_us = next_timestamp(head.as_ref());
        let (body, sealed) = if self.plaintext {
            let body = stamp(version, last_updated_us);
            (body.clone(), body)
        } else {
            let cipher = self.data_key_for_write(tx, key_id).await?;
            let body = stamp(version, last_updated_us);
            let sealed = seal_with(&cipher, &resource_aad(res_type, id, version, key_id), &body);
            (body, sealed)
        };
        if !move_head(tx, res_type, id, head.as_ref(), version, last_updated_us, Some(key_id)).await? {
            return Ok(None);
        }
        insert_version(tx, res_type, id, version, last_updated_us, Some((key_id, &sealed))).await?;
        let entries = index::index_entries_of(res_type, &body, index_key);
        // A resource that never existed has no rows to replace.
        index::write_index(tx, self.backend, res_type, id, &entries, head.is_some()).await?;
        let (kind, targets) = if live.is_none() { ("created", &events.created) } else { ("updated", &events.updated) };
        plugins::enqueue_events(tx, targets, res_type, id, version, kind, last_updated_us).await?;
        Ok(Some(WriteResult { version, last_updated_us, body, created: live.is_none() }))
    }

    /// Runs several puts and deletes in one database transaction (a FHIR transaction Bundle):
    /// all take effect, or none. On failure, says which write failed.
    ///
    /// When no resource is written twice (FHIR forbids it in a transaction, but a batch of
    /// updates may do it), each run of consecutive puts is written with a few multi-row
    /// statements (see `batch.rs`); otherwise write by write, each seeing the one before.
    /// Both go through the same code.
    pub async fn transaction(&self, writes: &[TxWrite<'_>]) -> Result<Vec<TxOutcome>, TransactionError> {
        let at = |entry: usize| move |error: StoreError| TransactionError { entry, error };
        let index_key = self.blind_index_key().await.map_err(at(0))?;
        let mut tx = self.begin_write().await.map_err(at(0))?;
        // With a resource written twice, each write must see the one before: runs of one.
        let longest_run = if writes_distinct_resources(writes) { writes.len() } else { 1 };
        let outcomes = self.write_runs(&mut tx, &index_key, writes, longest_run).await?;
        tx.commit()
            .await
            .map_err(|error| TransactionError { entry: writes.len().saturating_sub(1), error: error.into() })?;
        Ok(outcomes)
    }

    /// `writes` inside `tx`: deletes one by one, each run of up to `longest_run` consecutive
    /// puts in one batch.
    async fn write_runs(
        &self,
        tx: &mut sqlx::AnyConnection,
        index_key: &BlindIndexKey,
        writes: &[TxWrite<'_>],
        longest_run: usize,
    ) -> Result<Vec<TxOutcome>, TransactionError> {
        let mut outcomes = Vec::with_capacity(writes.len());
        let mut start = 0;
        while start < writes.len() {
            if let TxWrite::Delete { res_type, id, if_match, events } = &writes[start] {
                let deleted = delete_in(tx, self.backend, res_type, id, *if_match, events)
                    .await
                    .map_err(|error| TransactionError { entry: start, error })?
                    .ok_or(TransactionError { entry: start, error: StoreError::TooMuchContention })?;
                outcomes.push(TxOutcome::Deleted(deleted));
                start += 1;
                continue;
            }
            let puts: Vec<&PutRequest<'_>> = writes[start..]
                .iter()
                .map_while(|w| match w {
                    TxWrite::Put(put) => Some(put),
                    TxWrite::Delete { .. } => None,
                })
                .take(longest_run)
                .collect();
            let written = self
                .put_many(tx, index_key, &puts)
                .await
                .map_err(|(i, error)| TransactionError { entry: start + i, error })?;
            outcomes.extend(written.into_iter().map(TxOutcome::Written));
            start += puts.len();
        }
        Ok(outcomes)
    }

    /// Creates several new resources in one transaction: all are stored, or none. Each item is
    /// (type, server-assigned id, data key id, body renderer, plugins to notify).
    pub async fn create_all(&self, items: &[NewResource<'_>]) -> Result<Vec<WriteResult>, StoreError> {
        let index_key = self.blind_index_key().await?;
        let mut tx = self.begin_write().await?;
        let mut written = Vec::with_capacity(items.len());
        for item in items {
            let last_updated_us = next_timestamp(None);
            let body = (item.stamp)(1, last_updated_us);
            let sealed = if self.plaintext {
                body.clone()
            } else {
                let cipher = self.data_key_for_write(&mut tx, item.key_id).await?;
                seal_with(&cipher, &resource_aad(item.res_type, item.id, 1, item.key_id), &body)
            };
            if !move_head(&mut tx, item.res_type, item.id, None, 1, last_updated_us, Some(item.key_id)).await? {
                return Err(StoreError::AlreadyExists);
            }
            insert_version(&mut tx, item.res_type, item.id, 1, last_updated_us, Some((item.key_id, &sealed))).await?;
            let entries = index::index_entries_of(item.res_type, &body, &index_key);
            index::write_index(&mut tx, self.backend, item.res_type, item.id, &entries, false).await?;
            plugins::enqueue_events(&mut tx, item.events, item.res_type, item.id, 1, "created", last_updated_us)
                .await?;
            written.push(WriteResult { version: 1, last_updated_us, body, created: true });
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Logically deletes `res_type/id` by writing a deletion version.
    pub async fn delete(
        &self,
        res_type: &str,
        id: &str,
        if_match: Option<i64>,
        events: &[String],
    ) -> Result<DeleteResult, StoreError> {
        for _ in 0..MAX_WRITE_ATTEMPTS {
            let mut tx = self.begin_write().await?;
            match delete_in(&mut tx, self.backend, res_type, id, if_match, events).await? {
                Some(result @ DeleteResult::Deleted { .. }) => {
                    tx.commit().await?;
                    return Ok(result);
                }
                Some(nothing_written) => return Ok(nothing_written),
                None => {
                    tx.rollback().await?;
                    if if_match.is_some() {
                        return Err(StoreError::VersionConflict { current: None });
                    }
                }
            }
        }
        Err(StoreError::TooMuchContention)
    }
}

/// (type, id) pairs grouped by type, for statements of the form `res_type = $1 AND res_id IN (...)`.
pub(crate) fn ids_by_type<'a>(
    pairs: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> std::collections::BTreeMap<&'a str, Vec<&'a str>> {
    let mut by_type: std::collections::BTreeMap<&'a str, Vec<&'a str>> = std::collections::BTreeMap::new();
    for (res_type, id) in pairs {
        by_type.entry(res_type).or_default().push(id);
    }
    by_type
}

/// Whether every write of a transaction is to a different resource.
fn writes_distinct_resources(writes: &[TxWrite<'_>]) -> bool {
    let mut seen = std::collections::HashSet::with_capacity(writes.len());
    writes.iter().all(|w| match w {
        TxWrite::Put(p) => seen.insert((p.res_type, p.id)),
        TxWrite::Delete { res_type, id, .. } => seen.insert((*res_type, *id)),
    })
}

/// Why `precondition` fails against the live version `live` (`None`: none, or deleted), if it does.
pub(crate) fn precondition_error(precondition: Precondition, live: Option<&Head>) -> Option<StoreError> {
    match (precondition, live) {
        (Precondition::MustNotExist, Some(_)) => Some(StoreError::AlreadyExists),
        (Precondition::IfMatch(expected), Some(h)) if h.version != expected => {
            Some(StoreError::VersionConflict { current: Some(h.version) })
        }
        (Precondition::IfMatch(_), None) => Some(StoreError::VersionConflict { current: None }),
        _ => None,
    }
}

/// Now, but strictly after the previous version's timestamp, so a resource's history is ordered
/// the same way by version and by `lastUpdated` even if the clock steps back.
pub(crate) fn next_timestamp(previous: Option<&Head>) -> i64 {
    let now = hearth_fhir::instant::now_us();
    previous.map_or(now, |h| now.max(h.last_updated_us + 1))
}

/// One delete inside `tx`; `None` when another writer moved the head first.
async fn delete_in(
    tx: &mut sqlx::AnyConnection,
    backend: Backend,
    res_type: &str,
    id: &str,
    if_match: Option<i64>,
    events: &[String],
) -> Result<Option<DeleteResult>, StoreError> {
    let Some(head) = read_head(tx, backend, res_type, id).await? else {
        return match if_match {
            Some(_) => Err(StoreError::VersionConflict { current: None }),
            None => Ok(Some(DeleteResult::NotFound)),
        };
    };
    if let Some(expected) = if_match
        && (head.deleted || head.version != expected)
    {
        return Err(StoreError::VersionConflict { current: (!head.deleted).then_some(head.version) });
    }
    if head.deleted {
        return Ok(Some(DeleteResult::AlreadyDeleted));
    }
    let version = head.version + 1;
    let last_updated_us = next_timestamp(Some(&head));
    if !move_head(tx, res_type, id, Some(&head), version, last_updated_us, None).await? {
        return Ok(None);
    }
    insert_version(tx, res_type, id, version, last_updated_us, None).await?;
    index::write_index(tx, backend, res_type, id, &[], true).await?;
    plugins::enqueue_events(tx, events, res_type, id, version, "deleted", last_updated_us).await?;
    Ok(Some(DeleteResult::Deleted { version }))
}

/// Reads the head inside a write transaction. On PostgreSQL the row is locked (`FOR UPDATE`) so
/// concurrent writers of one resource queue behind each other instead of failing their
/// compare-and-set and retrying; SQLite needs no lock as it has a single writer connection.
async fn read_head(
    conn: &mut sqlx::AnyConnection,
    backend: Backend,
    res_type: &str,
    id: &str,
) -> Result<Option<Head>, StoreError> {
    let sql = format!(
        "SELECT version, deleted, last_updated_us FROM resource_head WHERE res_type = $1 AND res_id = $2{}",
        backend.lock_rows()
    );
    let row = sqlx::query(AssertSqlSafe(sql)).bind(res_type).bind(id).fetch_optional(&mut *conn).await?;
    row.map(|r| -> Result<Head, StoreError> {
        Ok(Head { version: r.try_get(0)?, deleted: r.try_get::<i64, _>(1)? != 0, last_updated_us: r.try_get(2)? })
    })
    .transpose()
}

/// Compare-and-set of the head: succeeds only if the head is still what `expected` says.
/// `key_id` is the data key (compartment) of the new current version, `None` for a deletion.
/// Returns false when another writer got there first.
pub(crate) async fn move_head(
    conn: &mut sqlx::AnyConnection,
    res_type: &str,
    id: &str,
    expected: Option<&Head>,
    version: i64,
    last_updated_us: i64,
    key_id: Option<&str>,
) -> Result<bool, StoreError> {
    let deleted = i16::from(key_id.is_none());
    let result = match expected {
        Some(head) => {
            sqlx::query(
                "UPDATE resource_head SET version = $1, last_updated_us = $2, deleted = $3, key_id = $4 \
                 WHERE res_type = $5 AND res_id = $6 AND version = $7",
            )
            .bind(version)
            .bind(last_updated_us)
            .bind(deleted)
            .bind(key_id)
            .bind(res_type)
            .bind(id)
            .bind(head.version)
            .execute(&mut *conn)
            .await?
        }
        None => {
            sqlx::query(
                "INSERT INTO resource_head (res_type, res_id, version, last_updated_us, deleted, key_id) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
            )
            .bind(res_type)
            .bind(id)
            .bind(version)
            .bind(last_updated_us)
            .bind(deleted)
            .bind(key_id)
            .execute(&mut *conn)
            .await?
        }
    };
    Ok(result.rows_affected() == 1)
}

/// Appends a version row; `sealed` is (data key id, sealed body), `None` for a deletion.
async fn insert_version(
    conn: &mut sqlx::AnyConnection,
    res_type: &str,
    id: &str,
    version: i64,
    last_updated_us: i64,
    sealed: Option<(&str, &[u8])>,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO resource_version (res_type, res_id, version, last_updated_us, deleted, key_id, body) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(res_type)
    .bind(id)
    .bind(version)
    .bind(last_updated_us)
    .bind(i16::from(sealed.is_none()))
    .bind(sealed.map(|(key_id, _)| key_id))
    .bind(sealed.map(|(_, body)| body))
    .execute(&mut *conn)
    .await?;
    Ok(())
}
