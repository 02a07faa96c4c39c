//! Key management on the database side: the data key a write seals under (found or created,
//! wrapped by the current KEK) and the blind-index key, checking at start-up that every
//! wrapped data key can be unwrapped, online KEK rotation (re-wrapping data keys in batches,
//! resumable), erasure of a compartment's data key (crypto-shredding), and a status summary.

use sqlx::Row;

use super::{BLIND_INDEX_KEY_ID, Backend, Store, StoreError, StoredKey};
use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use hearth_crypto::SecretKey;
use hearth_crypto::blind_index::BlindIndexKey;
use hearth_crypto::{kek_check_value, kek_matches, unwrap_data_key, wrap_data_key};
use hearth_fhir::instant::now_us;

/// Data keys re-wrapped per transaction during rotation.
const ROTATION_BATCH: i64 = 256;

/// What `keys rotate` did.
#[derive(Debug, Clone)]
pub struct RotationReport {
    pub target_version: i64,
    /// True if this run finished a rotation an earlier run started.
    pub resumed: bool,
    pub rewrapped: u64,
    pub retired: Vec<i64>,
}

/// Key counts for `keys status`.
#[derive(Debug, Clone)]
pub struct KeyStatus {
    /// (KEK version, live data keys wrapped by it, retired?)
    pub kek_versions: Vec<(i64, i64, bool)>,
    pub destroyed_data_keys: i64,
    pub erasures: i64,
}

/// What is sealed under which keys, for the compliance evidence pack.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct EncryptionInventory {
    /// Per KEK version: when it was created and retired, the live data keys it wraps, and the
    /// stored versions sealed under those keys.
    pub kek_versions: Vec<KekVersionInventory>,
    /// Data keys destroyed (crypto-shredded), and the stored versions sealed under them.
    pub destroyed_data_keys: i64,
    pub versions_under_destroyed_keys: i64,
    /// The creation time of the oldest live data key (microseconds), if any.
    pub oldest_live_data_key_us: Option<i64>,
    /// Every erasure, oldest first: (when, stated reason).
    pub erasures: Vec<(i64, String)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct KekVersionInventory {
    pub version: i64,
    pub created_us: i64,
    pub retired_us: Option<i64>,
    pub live_data_keys: i64,
    pub sealed_versions: i64,
}

impl Store {
    /// Run at start-up: records the keyring's newest KEK version, and refuses to start if a
    /// KEK in the keyring is not the one this database knows under that version, or if any
    /// data key is wrapped by a version the keyring lacks (the records would be unreadable).
    pub async fn prepare_keys(&self) -> Result<(), StoreError> {
        let keyring = self.vault.keyring();
        self.register_kek(keyring.current().0).await?;
        for row in sqlx::query("SELECT version, check_value FROM kek_version").fetch_all(&self.reader).await? {
            let version: i64 = row.try_get(0)?;
            let check_value: Vec<u8> = row.try_get(1)?;
            if let Some(kek) = keyring.get(version)
                && !kek_matches(kek, version, &check_value)
            {
                return Err(StoreError::KekMismatch { version, provider: self.vault.provider().describe() });
            }
        }
        let rows = sqlx::query("SELECT DISTINCT kek_version FROM data_key WHERE wrapped IS NOT NULL")
            .fetch_all(&self.reader)
            .await?;
        for row in rows {
            let version: i64 = row.try_get(0)?;
            if keyring.get(version).is_none() {
                return Err(StoreError::KekMissing { version, provider: self.vault.provider().describe() });
            }
        }
        Ok(())
    }

    /// Rotates the KEK: creates a new version through the key provider (unless an earlier
    /// rotation was interrupted, which is then finished instead), re-wraps every data key
    /// under it in batches while the server keeps serving, and retires older versions once
    /// no data key uses them. `progress(done, total)` is called after each batch.
    pub async fn rotate_kek(&self, progress: &(dyn Fn(u64, u64) + Sync)) -> Result<RotationReport, StoreError> {
        self.prepare_keys().await?;
        let newest: i64 =
            sqlx::query("SELECT MAX(version) FROM kek_version").fetch_one(&self.reader).await?.try_get(0)?;
        let unfinished: i64 = sqlx::query("SELECT COUNT(*) FROM kek_version WHERE version < $1 AND retired_us IS NULL")
            .bind(newest)
            .fetch_one(&self.reader)
            .await?
            .try_get(0)?;
        let resumed = unfinished > 0;
        let target = if resumed {
            newest
        } else {
            let target = newest + 1;
            self.vault.provider().create_version(target).map_err(StoreError::Keys)?;
            self.vault.reload()?;
            self.register_kek(target).await?;
            target
        };
        let new_kek = self.vault.kek(target)?;

        let total: i64 = sqlx::query("SELECT COUNT(*) FROM data_key WHERE wrapped IS NOT NULL AND kek_version < $1")
            .bind(target)
            .fetch_one(&self.reader)
            .await?
            .try_get(0)?;
        let mut total = u64::try_from(total).unwrap_or(0);
        let mut done = 0u64;
        progress(done, total);
        // Passes over the keys in key order, a batch per transaction; a pass that re-wrapped
        // anything is followed by another, which catches keys a server created behind the
        // cursor under the old KEK while this one ran. Each pass is one walk of the table.
        loop {
            let mut cursor = String::new();
            let mut rewrapped_this_pass = 0u64;
            loop {
                let mut tx = self.begin_write().await?;
                let rows = sqlx::query(
                    "SELECT key_id, kek_version, wrapped FROM data_key \
                     WHERE key_id > $1 AND wrapped IS NOT NULL AND kek_version < $2 ORDER BY key_id LIMIT $3",
                )
                .bind(&cursor)
                .bind(target)
                .bind(ROTATION_BATCH)
                .fetch_all(&mut *tx)
                .await?;
                let Some(last) = rows.last() else {
                    tx.commit().await?;
                    break;
                };
                cursor = last.try_get(0)?;
                for row in &rows {
                    let key_id: String = row.try_get(0)?;
                    let old_version: i64 = row.try_get(1)?;
                    let wrapped: Vec<u8> = row.try_get(2)?;
                    let old_kek = self.vault.kek(old_version)?;
                    let data_key = unwrap_data_key(&old_kek, old_version, &key_id, &wrapped).map_err(|_| {
                        tracing::error!(
                            key_id,
                            old_version,
                            "INTEGRITY ALERT: a wrapped data key failed authentication"
                        );
                        StoreError::Integrity
                    })?;
                    let rewrapped = wrap_data_key(&new_kek, target, &key_id, &data_key);
                    // Compare-and-set: a concurrent erasure or rotation wins, and we skip the key.
                    sqlx::query(
                        "UPDATE data_key SET kek_version = $1, wrapped = $2 \
                         WHERE key_id = $3 AND kek_version = $4 AND wrapped IS NOT NULL",
                    )
                    .bind(target)
                    .bind(&rewrapped)
                    .bind(&key_id)
                    .bind(old_version)
                    .execute(&mut *tx)
                    .await?;
                }
                tx.commit().await?;
                rewrapped_this_pass += rows.len() as u64;
                done += rows.len() as u64;
                // Keys created by a server under the old KEK while we run join the count.
                total = total.max(done);
                progress(done, total);
            }
            if rewrapped_this_pass == 0 {
                break;
            }
        }
        let retired: Vec<i64> =
            sqlx::query("SELECT version FROM kek_version WHERE version < $1 AND retired_us IS NULL")
                .bind(target)
                .fetch_all(&self.reader)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?;
        sqlx::query("UPDATE kek_version SET retired_us = $1 WHERE version < $2 AND retired_us IS NULL")
            .bind(now_us())
            .bind(target)
            .execute(&self.writer)
            .await?;
        self.scrub_freed_space().await?;
        Ok(RotationReport { target_version: target, resumed, rewrapped: done, retired })
    }

    /// Records a KEK version (with its check value) if the database does not know it yet.
    async fn register_kek(&self, version: i64) -> Result<(), StoreError> {
        let kek = self.vault.kek(version)?;
        sqlx::query(
            "INSERT INTO kek_version (version, created_us, check_value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
        )
        .bind(version)
        .bind(now_us())
        .bind(kek_check_value(&kek, version))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Destroys the data key of `key_id` (e.g. `patient/123`): every version sealed under it
    /// becomes unreadable for good, and the erasure is recorded with its reason. Returns
    /// false if there was no live key (unknown, or erased before).
    pub async fn destroy_data_key(&self, key_id: &str, reason: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let now = now_us();
        let destroyed = sqlx::query(
            "UPDATE data_key SET wrapped = NULL, destroyed_us = $1 WHERE key_id = $2 AND wrapped IS NOT NULL",
        )
        .bind(now)
        .bind(key_id)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if destroyed {
            // The erased records' search rows go too: blind tokens of their names and
            // identifiers would otherwise still tell that someone with those values existed.
            sqlx::query(
                "DELETE FROM search_index WHERE EXISTS (SELECT 1 FROM resource_head h JOIN resource_version v \
                   ON v.res_type = h.res_type AND v.res_id = h.res_id AND v.version = h.version \
                 WHERE h.res_type = search_index.res_type AND h.res_id = search_index.res_id AND v.key_id = $1)",
            )
            .bind(key_id)
            .execute(&mut *tx)
            .await?;
            // Their heads move to the erased state (2), which every search, count, chain and
            // include leaves out.
            sqlx::query("UPDATE resource_head SET deleted = 2 WHERE key_id = $1 AND deleted = 0")
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
            sqlx::query("INSERT INTO erasure (key_id, erased_us, reason) VALUES ($1, $2, $3)")
                .bind(key_id)
                .bind(now)
                .bind(reason)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        self.vault.forget(key_id);
        if destroyed && !self.scrub_freed_space().await? {
            tracing::warn!(
                key_id,
                "erased, but an older open transaction still sees the old key row; the next rotation or erasure scrubs it"
            );
        }
        Ok(destroyed)
    }

    /// Makes sure no stale copy of a replaced or destroyed wrapped key lingers in the files, once
    /// the transactions that changed the key rows have committed. SQLite (secure_delete zeroes
    /// freed pages) checkpoints and truncates its WAL. PostgreSQL rewrites the small data_key
    /// table with VACUUM FULL, which keeps an old row version for as long as any snapshot of this
    /// database could still see it. So it first waits (up to 30 s) until every transaction id
    /// issued before the scrub started (the key changes' included) has ended, in every database
    /// of the cluster: a snapshot's horizon is the oldest transaction still running anywhere, so
    /// one open transaction of another database makes every new snapshot here, VACUUM FULL's own
    /// included, keep the old row. It also waits until no session of this database, and no
    /// replication slot, holds a snapshot from before. Returns false if something (e.g. a long
    /// backup) still held one: the old row then stays until a later scrub.
    async fn scrub_freed_space(&self) -> Result<bool, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await?;
                Ok(true)
            }
            Backend::Postgres => {
                // Every change to the key rows has a transaction id below this one.
                let horizon: String = sqlx::query("SELECT pg_snapshot_xmax(pg_current_snapshot())::text")
                    .fetch_one(&self.writer)
                    .await?
                    .try_get(0)?;
                let mut clear = false;
                for _ in 0..300 {
                    // The oldest transaction running anywhere (what a new snapshot's horizon is),
                    // then snapshots this database's sessions and the replication slots hold.
                    let settled: bool = sqlx::query(
                        "SELECT pg_snapshot_xmin(pg_current_snapshot()) >= $1::xid8 \
                           AND NOT EXISTS (SELECT 1 FROM pg_stat_activity \
                             WHERE datname = current_database() AND pid <> pg_backend_pid() \
                               AND backend_xmin IS NOT NULL AND age(backend_xmin) > age(($1::bigint % 4294967296)::text::xid)) \
                           AND NOT EXISTS (SELECT 1 FROM pg_replication_slots \
                             WHERE xmin IS NOT NULL AND age(xmin) > age(($1::bigint % 4294967296)::text::xid))",
                    )
                    .bind(&horizon)
                    .fetch_one(&self.writer)
                    .await?
                    .try_get(0)?;
                    if settled {
                        clear = true;
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                if !clear {
                    tracing::warn!(
                        "a transaction or snapshot older than the key change is still held; it keeps the old key row until a later scrub"
                    );
                }
                sqlx::query("VACUUM FULL data_key").execute(&self.writer).await?;
                Ok(clear)
            }
        }
    }

    pub async fn key_status(&self) -> Result<KeyStatus, StoreError> {
        let rows = sqlx::query(
            "SELECT kv.version, \
                    (SELECT COUNT(*) FROM data_key d WHERE d.kek_version = kv.version AND d.wrapped IS NOT NULL), \
                    CASE WHEN kv.retired_us IS NULL THEN 0 ELSE 1 END \
             FROM kek_version kv ORDER BY kv.version",
        )
        .fetch_all(&self.reader)
        .await?;
        let kek_versions = rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get::<i64, _>(2)? != 0)))
            .collect::<Result<_, sqlx::Error>>()?;
        let destroyed_data_keys: i64 = sqlx::query("SELECT COUNT(*) FROM data_key WHERE wrapped IS NULL")
            .fetch_one(&self.reader)
            .await?
            .try_get(0)?;
        let erasures: i64 = sqlx::query("SELECT COUNT(*) FROM erasure").fetch_one(&self.reader).await?.try_get(0)?;
        Ok(KeyStatus { kek_versions, destroyed_data_keys, erasures })
    }

    /// Counts of keys and sealed versions by KEK version, key ages and the erasures.
    pub async fn encryption_inventory(&self) -> Result<EncryptionInventory, StoreError> {
        let keks = sqlx::query(
            "SELECT kv.version, kv.created_us, kv.retired_us, \
                    (SELECT COUNT(*) FROM data_key d WHERE d.kek_version = kv.version AND d.wrapped IS NOT NULL), \
                    (SELECT COUNT(*) FROM resource_version v JOIN data_key d ON d.key_id = v.key_id \
                      WHERE d.kek_version = kv.version AND d.wrapped IS NOT NULL AND v.deleted = 0) \
             FROM kek_version kv ORDER BY kv.version",
        )
        .fetch_all(&self.reader)
        .await?;
        let kek_versions = keks
            .iter()
            .map(|r| {
                Ok(KekVersionInventory {
                    version: r.try_get(0)?,
                    created_us: r.try_get(1)?,
                    retired_us: r.try_get(2)?,
                    live_data_keys: r.try_get(3)?,
                    sealed_versions: r.try_get(4)?,
                })
            })
            .collect::<Result<_, sqlx::Error>>()?;
        let destroyed = sqlx::query(
            "SELECT (SELECT COUNT(*) FROM data_key WHERE wrapped IS NULL), \
                    (SELECT COUNT(*) FROM resource_version v JOIN data_key d ON d.key_id = v.key_id \
                      WHERE d.wrapped IS NULL AND v.deleted = 0), \
                    (SELECT MIN(created_us) FROM data_key WHERE wrapped IS NOT NULL)",
        )
        .fetch_one(&self.reader)
        .await?;
        let erasures = sqlx::query("SELECT erased_us, reason FROM erasure ORDER BY erased_us")
            .fetch_all(&self.reader)
            .await?
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
            .collect::<Result<_, sqlx::Error>>()?;
        Ok(EncryptionInventory {
            kek_versions,
            destroyed_data_keys: destroyed.try_get(0)?,
            versions_under_destroyed_keys: destroyed.try_get(1)?,
            oldest_live_data_key_us: destroyed.try_get(2)?,
            erasures,
        })
    }

    /// The latest `limit` erasures, newest first: (data key id, when, stated reason).
    pub async fn erasure_history(&self, limit: i64) -> Result<Vec<(String, i64, String)>, StoreError> {
        let rows = sqlx::query("SELECT key_id, erased_us, reason FROM erasure ORDER BY erased_us DESC LIMIT $1")
            .bind(limit)
            .fetch_all(&self.reader)
            .await?;
        Ok(rows
            .iter()
            .map(|r| Ok((r.try_get(0)?, r.try_get(1)?, r.try_get(2)?)))
            .collect::<Result<_, sqlx::Error>>()?)
    }
}

/// Data keys for writes and the blind-index key: found or created, wrapped by the current KEK.
impl Store {
    /// The cipher of data key `key_id` for a write inside `conn`'s transaction, creating and
    /// wrapping a new data key on first use. Refuses keys that were destroyed.
    pub(crate) async fn data_key_for_write(
        &self,
        conn: &mut sqlx::AnyConnection,
        key_id: &str,
    ) -> Result<Arc<Aes256Gcm>, StoreError> {
        match self.find_or_create_key(conn, key_id).await? {
            StoredKey::Wrapped { kek_version, wrapped } => self.vault.cipher(key_id, kek_version, &wrapped),
            StoredKey::Created(key) => Ok(self.vault.remember(key_id, &key)),
        }
    }

    /// The blind-index key (see `hearth_crypto::blind_index`), created on first use. It is a
    /// row of `data_key` like any other, so KEK rotation re-wraps it; no erasure touches it.
    pub async fn blind_index_key(&self) -> Result<BlindIndexKey, StoreError> {
        let key = self
            .blind_index
            .get_or_try_init(|| async {
                let mut tx = self.begin_write().await?;
                let key = match self.find_or_create_key(&mut tx, BLIND_INDEX_KEY_ID).await? {
                    StoredKey::Created(key) => key,
                    StoredKey::Wrapped { kek_version, wrapped } => {
                        unwrap_data_key(&self.vault.kek(kek_version)?, kek_version, BLIND_INDEX_KEY_ID, &wrapped)
                            .map_err(|_| {
                                tracing::error!("INTEGRITY ALERT: the wrapped blind-index key failed authentication");
                                StoreError::Integrity
                            })?
                    }
                };
                tx.commit().await?;
                Ok::<_, StoreError>(BlindIndexKey::new(key))
            })
            .await?;
        Ok(key.clone())
    }

    /// Finds the wrapped key `key_id` inside `conn`'s transaction, or creates, wraps and
    /// inserts it. Refuses keys that were destroyed.
    pub(crate) async fn find_or_create_key(
        &self,
        conn: &mut sqlx::AnyConnection,
        key_id: &str,
    ) -> Result<StoredKey, StoreError> {
        for _ in 0..2 {
            let row = sqlx::query("SELECT kek_version, wrapped FROM data_key WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&mut *conn)
                .await?;
            if let Some(row) = row {
                let kek_version: i64 = row.try_get(0)?;
                let Some(wrapped) = row.try_get::<Option<Vec<u8>>, _>(1)? else {
                    return Err(StoreError::Erased);
                };
                return Ok(StoredKey::Wrapped { kek_version, wrapped });
            }
            let (kek_version, kek) = self.wrapping_kek(&mut *conn).await?;
            let key = SecretKey::generate();
            let wrapped = wrap_data_key(&kek, kek_version, key_id, &key);
            let inserted = sqlx::query(
                "INSERT INTO data_key (key_id, kek_version, wrapped, created_us) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT DO NOTHING",
            )
            .bind(key_id)
            .bind(kek_version)
            .bind(&wrapped)
            .bind(hearth_fhir::instant::now_us())
            .execute(&mut *conn)
            .await?;
            if inserted.rows_affected() == 1 {
                return Ok(StoredKey::Created(key));
            }
            // Another writer created this key first: use theirs.
        }
        Err(StoreError::TooMuchContention)
    }

    /// The KEK new data keys are wrapped with: the newest version this database knows of
    /// (a rotation in another process may have just added one), which must be in the keyring.
    pub(crate) async fn wrapping_kek(&self, conn: &mut sqlx::AnyConnection) -> Result<(i64, SecretKey), StoreError> {
        let newest_in_db: Option<i64> =
            sqlx::query("SELECT MAX(version) FROM kek_version").fetch_one(&mut *conn).await?.try_get(0)?;
        let (local_version, _) = self.vault.keyring().current();
        let version = newest_in_db.map_or(local_version, |v| v.max(local_version));
        Ok((version, self.vault.kek(version)?))
    }
}
