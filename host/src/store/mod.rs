//! Resource storage on SQLite (embedded default) or PostgreSQL, behind one [`Store`].
//!
//! Both databases run the same SQL through sqlx's `Any` driver, so every behaviour (versioning,
//! optimistic locking, history) is written once and tested on both. Each resource version is an
//! immutable row in `resource_version`; `resource_head` holds the current version and is moved
//! with a compare-and-set, so two writers racing on one resource can never both win.
//!
//! Bodies are sealed before they reach the database (see `crate::crypto`): each version under
//! the data key of its compartment, bound to its row by associated data. Reads open them and
//! fail closed: a body that does not authenticate is an integrity error, never returned.
//!
//! SQLite gets a single-connection writer pool (SQLite allows one writer at a time; queueing in
//! the pool is cheaper and fairer than retrying `SQLITE_BUSY`) and a reader pool; WAL mode lets
//! readers proceed while the writer commits. PostgreSQL uses one pool for both.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use std::sync::Arc;

use aes_gcm::Aes256Gcm;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor, Row};

use crate::crypto::blind_index::BlindIndexKey;
use crate::crypto::{SecretKey, resource_aad, unwrap_data_key, wrap_data_key};
use crate::crypto::{open_with, seal_with};
use crate::fhir::search::access::Visibility;

mod audit;
mod backup;
mod batch;
mod error;
mod export;
mod keys;
mod migrations;
mod plugins;
mod search;
mod subscriptions;
mod vault;

pub use audit::{StoredAuditEntry, StoredCheckpoint, chain_hash};
pub use backup::Counts;
pub use error::StoreError;
pub use export::{ExportJob, SnapshotScope};
pub use keys::{KeyStatus, RotationReport};
pub use plugins::{NewPluginVersion, OutboxEvent, PluginRow, PluginVersionRow, StoredComponent};
pub use search::{HistoryOf, Match, Position, SearchRows, SearchScope, search_sql_text};
pub use subscriptions::SubscriptionOwner;
pub use vault::KeyVault;

/// How many times a write is retried after losing a race it did not ask to detect
/// (no If-Match given) before giving up with a conflict. Races are rare: they need two
/// creators of one new id (PostgreSQL), since existing heads are locked while written.
const MAX_WRITE_ATTEMPTS: u32 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// One stored version of a resource, as read back from the database.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub res_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated_us: i64,
    pub deleted: bool,
    /// The resource JSON exactly as it is served; `None` for a deletion.
    pub body: Option<Vec<u8>>,
    /// The data key the version is sealed under (`patient/<id>` for a patient's compartment,
    /// see `fhir::compartment`); `None` for a deletion.
    pub key_id: Option<String>,
}

impl VersionRecord {
    /// The id of the patient whose compartment holds this version, if any.
    pub fn patient(&self) -> Option<&str> {
        self.key_id.as_deref().and_then(|k| k.strip_prefix("patient/"))
    }
}

/// What a write requires of the resource's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Create or update, whatever is there.
    None,
    /// The current (not deleted) version must be exactly this one.
    IfMatch(i64),
    /// The resource must not exist yet (create with a server-assigned id).
    MustNotExist,
}

/// The result of a successful write.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub version: i64,
    pub last_updated_us: i64,
    pub body: Vec<u8>,
    /// True when no live version existed before (a create, or an update after a delete).
    pub created: bool,
}

/// A read by id, as the reader may know it.
#[derive(Debug)]
pub enum Lookup {
    /// No such resource, or one outside the reader's reach: the same answer.
    NotFound,
    /// The current version is this live one.
    Live(VersionRecord),
    /// Deleted at `version`. Told only to readers who reach every resource of the type (a
    /// deletion marker has no compartment or content to judge).
    Deleted { version: i64 },
    /// Erased (its data key was destroyed). Told to readers who reach every resource of the
    /// type or the erased patient's compartment.
    Erased,
}

/// The result of a delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteResult {
    /// A deletion version was written.
    Deleted { version: i64 },
    /// The resource was already deleted; nothing was written.
    AlreadyDeleted,
    /// No such resource; nothing was written.
    NotFound,
}

/// The database's schema migrations against this build's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaStatus {
    pub applied: Vec<i64>,
    pub known: Vec<i64>,
}

impl SchemaStatus {
    /// Known migrations the database does not have yet.
    pub fn pending(&self) -> Vec<i64> {
        self.known.iter().copied().filter(|v| !self.applied.contains(v)).collect()
    }

    /// A migration the database has that this build does not know (it was upgraded by a
    /// newer Hearth), if any.
    pub fn newer(&self) -> Option<i64> {
        self.applied.iter().copied().find(|v| !self.known.contains(v))
    }
}

/// Connection settings a caller may tune.
#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub max_connections: u32,
    pub acquire_timeout: Duration,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions { max_connections: 16, acquire_timeout: Duration::from_secs(5) }
    }
}

#[derive(Clone)]
pub struct Store {
    backend: Backend,
    reader: AnyPool,
    writer: AnyPool,
    vault: Arc<KeyVault>,
    /// Benchmark builds only (feature `bench-plaintext`): bodies stored unsealed.
    plaintext: bool,
    blind_index: Arc<tokio::sync::OnceCell<BlindIndexKey>>,
    /// PostgreSQL: the URL, for the connection that listens for other hosts' notifications.
    listen_url: Option<Arc<str>>,
}

/// The `data_key` row holding the blind-index key.
const BLIND_INDEX_KEY_ID: &str = "index/blind-v1";

/// A key found in `data_key`, or one just created there.
enum StoredKey {
    Wrapped { kek_version: i64, wrapped: Vec<u8> },
    Created(SecretKey),
}

/// One resource for [`Store::create_all`].
pub struct NewResource<'a> {
    pub res_type: &'a str,
    pub id: &'a str,
    pub key_id: &'a str,
    pub events: &'a [String],
    pub stamp: &'a (dyn Fn(i64, i64) -> Vec<u8> + Sync),
}

/// One put: what [`Store::put`] takes, for use inside a [`Store::transaction`].
#[derive(Clone, Copy)]
pub struct PutRequest<'a> {
    pub res_type: &'a str,
    pub id: &'a str,
    pub key_id: &'a str,
    pub precondition: Precondition,
    pub events: &'a EventTargets,
    pub stamp: &'a (dyn Fn(i64, i64) -> Vec<u8> + Sync),
}

/// One write of a [`Store::transaction`].
pub enum TxWrite<'a> {
    Put(PutRequest<'a>),
    Delete { res_type: &'a str, id: &'a str, if_match: Option<i64>, events: &'a [String] },
}

/// What one write of a transaction did.
#[derive(Debug, Clone)]
pub enum TxOutcome {
    Written(WriteResult),
    Deleted(DeleteResult),
}

/// A failed transaction: nothing was written; `entry` is the write that failed.
#[derive(Debug)]
pub struct TransactionError {
    pub entry: usize,
    pub error: StoreError,
}

/// The integration plugins to notify of a write, by what the write turns out to be (an
/// update of a resource that does not exist, or was deleted, creates it).
#[derive(Debug, Clone, Default)]
pub struct EventTargets {
    pub created: Vec<String>,
    pub updated: Vec<String>,
}

impl EventTargets {
    pub fn is_empty(&self) -> bool {
        self.created.is_empty() && self.updated.is_empty()
    }
}

/// The current state of a resource as seen by a writer inside its transaction.
struct Head {
    version: i64,
    deleted: bool,
    last_updated_us: i64,
}

impl Store {
    /// Connects to `database_url` (`sqlite://PATH` or `postgres://...`), creating the SQLite file
    /// if needed. Does not run migrations: see [`Store::migrate`].
    pub async fn connect(
        database_url: &str,
        options: &StoreOptions,
        vault: Arc<KeyVault>,
    ) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = backend_of(database_url)?;
        if backend == Backend::Sqlite {
            check_writable(&sqlite_path(database_url))?;
        }
        let connect_options =
            AnyConnectOptions::from_str(&with_create_mode(database_url, backend)).map_err(StoreError::Connect)?;
        let pool = |max: u32, writer: bool| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(options.acquire_timeout)
                .after_connect(move |conn, _meta| {
                    Box::pin(async move {
                        if backend == Backend::Sqlite {
                            // WAL: readers never block the writer. synchronous=FULL: a commit is
                            // on disk before it is acknowledged, so a crash or power loss never
                            // loses an acknowledged write.
                            conn.execute("PRAGMA journal_mode = WAL").await?;
                            conn.execute("PRAGMA synchronous = FULL").await?;
                            conn.execute("PRAGMA busy_timeout = 5000").await?;
                            conn.execute("PRAGMA foreign_keys = ON").await?;
                            // Freed pages are zeroed, so a destroyed data key leaves no copy.
                            conn.execute("PRAGMA secure_delete = ON").await?;
                            if writer {
                                // 64 MiB of page cache for the one writer (default 2 MiB): index
                                // inserts land on random pages of large B-trees. Readers keep
                                // the default and rely on the OS cache.
                                conn.execute("PRAGMA cache_size = -65536").await?;
                            }
                        } else {
                            // No JIT compilation: Hearth's statements are short index walks whose
                            // estimated cost can still cross the JIT threshold (a 1,000,000-row
                            // table's ordered scan with LIMIT), and compiling took 174 ms of a
                            // 201 ms export page that ran in 3 ms.
                            conn.execute("SET jit = off").await?;
                        }
                        Ok(())
                    })
                })
                .before_acquire(|conn, _meta| {
                    Box::pin(async move {
                        // A connection whose transaction the database ended on its own (SQLite
                        // rolls back on SQLITE_FULL; a failed COMMIT) keeps a stale transaction
                        // depth in sqlx and would refuse every later BEGIN: drop it and let the
                        // pool open a fresh one. A dropped transaction's own rollback is queued
                        // ahead of the ping, so a healthy connection is back at depth 0 by then.
                        if sqlx::Connection::is_in_transaction(conn) {
                            sqlx::Connection::ping(conn).await?;
                            if sqlx::Connection::is_in_transaction(conn) {
                                tracing::warn!("discarding a database connection left inside a failed transaction");
                                return Ok(false);
                            }
                        }
                        Ok(true)
                    })
                })
                .connect_with(connect_options.clone())
        };
        let (reader, writer) = match backend {
            Backend::Sqlite => {
                let writer = pool(1, true).await.map_err(StoreError::Connect)?;
                let reader = pool(options.max_connections, false).await.map_err(StoreError::Connect)?;
                (reader, writer)
            }
            Backend::Postgres => {
                let shared = pool(options.max_connections, false).await.map_err(StoreError::Connect)?;
                (shared.clone(), shared)
            }
        };
        let listen_url = (backend == Backend::Postgres).then(|| Arc::from(database_url));
        Ok(Store { backend, reader, writer, vault, plaintext: false, blind_index: Arc::default(), listen_url })
    }

    /// Starts a write transaction. SQLite takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so another process writing the same file (e.g. `hearth keys rotate`) makes us wait
    /// rather than fail when our read-then-write transaction upgrades.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.writer.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.writer.begin().await?,
        })
    }

    /// Stores bodies unsealed, to measure the cost of encryption against the same code path.
    /// Exists only in benchmark builds.
    #[cfg(feature = "bench-plaintext")]
    pub fn store_plaintext_for_benchmarks(&mut self) {
        self.plaintext = true;
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Which schema migrations the database has and which this build knows.
    pub async fn schema_status(&self) -> Result<SchemaStatus, StoreError> {
        let exists_sql = match self.backend {
            Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            Backend::Postgres => {
                "SELECT COUNT(*) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()"
            }
        };
        let exists: i64 = sqlx::query(exists_sql).fetch_one(&self.reader).await?.try_get(0)?;
        let applied = if exists == 0 {
            Vec::new()
        } else {
            sqlx::query("SELECT version FROM _sqlx_migrations WHERE success ORDER BY version")
                .fetch_all(&self.reader)
                .await?
                .iter()
                .map(|r| r.try_get(0))
                .collect::<Result<_, _>>()?
        };
        let known = migrations::migrator(self.backend).iter().map(|m| m.version).collect();
        Ok(SchemaStatus { applied, known })
    }

    /// Applies pending schema migrations from `migrations/<backend>/`.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        migrations::migrator(self.backend).run(&self.writer).await.map_err(StoreError::Migrate)
    }

    /// Waits for in-flight queries and closes every connection (SQLite checkpoints its WAL).
    pub async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }

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
        let entries = search::index_entries_of(res_type, &body, index_key);
        // A resource that never existed has no rows to replace.
        search::write_index(tx, self.backend, res_type, id, &entries, head.is_some()).await?;
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
            let entries = search::index_entries_of(item.res_type, &body, &index_key);
            search::write_index(&mut tx, self.backend, item.res_type, item.id, &entries, false).await?;
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

    /// The current version of a resource (which may be a deletion), if it ever existed.
    pub async fn read_current(&self, res_type: &str, id: &str) -> Result<Option<VersionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, k.wrapped \
             FROM resource_head h JOIN resource_version v \
               ON v.res_type = h.res_type AND v.res_id = h.res_id AND v.version = h.version \
             LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE h.res_type = $1 AND h.res_id = $2",
        )
        .bind(res_type)
        .bind(id)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| self.version_record(res_type, id, &r)).transpose()
    }

    /// The current version of `res_type/id` as a reader with `vis`'s reach may know it: a
    /// resource outside its reach is [`Lookup::NotFound`], exactly like one that never existed,
    /// and nothing of it is decrypted. A deletion (or erasure) is told only to a reader whose
    /// reach would include it (see [`Lookup`]).
    pub async fn read_visible(&self, res_type: &str, id: &str, vis: &dyn Visibility) -> Result<Lookup, StoreError> {
        let reach = vis.reach(res_type);
        if reach.is_nothing() {
            return Ok(Lookup::NotFound);
        }
        let mut sql = search::Sql::on(self.backend);
        let (t, i) = (sql.text(res_type), sql.text(id));
        let within =
            search::reach_condition(&mut sql, vis, &reach, res_type, "h").unwrap_or_else(|| "1 = 1".to_owned());
        let text = format!(
            "SELECT v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, k.wrapped, h.deleted, \
             CASE WHEN {within} THEN 1 ELSE 0 END \
             FROM resource_head h JOIN resource_version v \
               ON v.res_type = h.res_type AND v.res_id = h.res_id AND v.version = h.version \
             LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE h.res_type = {t} AND h.res_id = {i}"
        );
        let Some(row) = sql.query(text).fetch_optional(&self.reader).await? else { return Ok(Lookup::NotFound) };
        if row.try_get::<i64, _>(8)? == 0 {
            return Ok(Lookup::NotFound);
        }
        Ok(match row.try_get::<i64, _>(7)? {
            0 => match self.version_record(res_type, id, &row) {
                Ok(record) => Lookup::Live(record),
                Err(StoreError::Erased) => Lookup::Erased,
                Err(other) => return Err(other),
            },
            1 => Lookup::Deleted { version: row.try_get(0)? },
            _ => Lookup::Erased,
        })
    }

    /// Version `version` of `res_type/id` as a reader with `vis`'s reach may know it, as far as
    /// its compartment goes (see [`Lookup`]): the caller checks a live version's content against
    /// the reach's constraints.
    pub async fn read_version_visible(
        &self,
        res_type: &str,
        id: &str,
        version: i64,
        vis: &dyn Visibility,
    ) -> Result<Lookup, StoreError> {
        let reach = vis.reach(res_type);
        if reach.is_nothing() {
            return Ok(Lookup::NotFound);
        }
        let mut sql = search::Sql::on(self.backend);
        let (t, i, n) = (sql.text(res_type), sql.text(id), sql.int(version));
        let within = search::version_reach_sql(&mut sql, &reach, "v").map_or_else(String::new, |c| format!(" AND {c}"));
        let text = format!(
            "SELECT v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, k.wrapped \
             FROM resource_version v LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE v.res_type = {t} AND v.res_id = {i} AND v.version = {n}{within}"
        );
        let Some(row) = sql.query(text).fetch_optional(&self.reader).await? else { return Ok(Lookup::NotFound) };
        if row.try_get::<i64, _>(2)? != 0 {
            return Ok(Lookup::Deleted { version });
        }
        Ok(match self.version_record(res_type, id, &row) {
            Ok(record) => Lookup::Live(record),
            Err(StoreError::Erased) => {
                let key_id: Option<String> = row.try_get(4)?;
                if reach.admits(id, key_id.as_deref(), &[]) { Lookup::Erased } else { Lookup::NotFound }
            }
            Err(other) => return Err(other),
        })
    }

    /// One specific version of a resource.
    pub async fn read_version(
        &self,
        res_type: &str,
        id: &str,
        version: i64,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, k.wrapped \
             FROM resource_version v LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE v.res_type = $1 AND v.res_id = $2 AND v.version = $3",
        )
        .bind(res_type)
        .bind(id)
        .bind(version)
        .fetch_optional(&self.reader)
        .await?;
        row.map(|r| self.version_record(res_type, id, &r)).transpose()
    }

    /// How many versions of one resource changed at or after `since_us`.
    pub async fn history_total(&self, res_type: &str, id: &str, since_us: Option<i64>) -> Result<i64, StoreError> {
        Ok(sqlx::query(
            "SELECT COUNT(*) FROM resource_version WHERE res_type = $1 AND res_id = $2 AND last_updated_us >= $3",
        )
        .bind(res_type)
        .bind(id)
        .bind(since_us.unwrap_or(i64::MIN))
        .fetch_one(&self.reader)
        .await?
        .try_get(0)?)
    }

    /// Decodes a version row (columns: version, last_updated_us, deleted, body, key_id,
    /// kek_version, wrapped) and opens its body.
    fn version_record(&self, res_type: &str, id: &str, row: &sqlx::any::AnyRow) -> Result<VersionRecord, StoreError> {
        self.version_record_at(res_type, id, row, 0)
    }

    /// [`Store::version_record`] for rows whose version columns start at column `at`.
    fn version_record_at(
        &self,
        res_type: &str,
        id: &str,
        row: &sqlx::any::AnyRow,
        at: usize,
    ) -> Result<VersionRecord, StoreError> {
        let version: i64 = row.try_get(at)?;
        let deleted = row.try_get::<i64, _>(at + 2)? != 0;
        let body = if deleted {
            None
        } else if self.plaintext {
            Some(row.try_get(at + 3)?)
        } else {
            let sealed: Vec<u8> = row.try_get(at + 3)?;
            let key_id: String = row.try_get(at + 4)?;
            let kek_version: Option<i64> = row.try_get(at + 5)?;
            let wrapped: Option<Vec<u8>> = row.try_get(at + 6)?;
            let (Some(kek_version), Some(wrapped)) = (kek_version, wrapped) else {
                self.vault.forget(&key_id);
                return Err(StoreError::Erased);
            };
            let cipher = self.vault.cipher(&key_id, kek_version, &wrapped)?;
            let plain = open_with(&cipher, &resource_aad(res_type, id, version, &key_id), &sealed).map_err(|_| {
                tracing::error!(
                    res_type,
                    id,
                    version,
                    key_id,
                    "INTEGRITY ALERT: a stored resource version failed authentication"
                );
                StoreError::Integrity
            })?;
            Some(plain)
        };
        Ok(VersionRecord {
            res_type: res_type.to_owned(),
            id: id.to_owned(),
            version,
            last_updated_us: row.try_get(at + 1)?,
            deleted,
            body,
            key_id: if deleted { None } else { row.try_get(at + 4)? },
        })
    }

    /// The cipher of data key `key_id` for a write inside `conn`'s transaction, creating and
    /// wrapping a new data key on first use. Refuses keys that were destroyed.
    async fn data_key_for_write(
        &self,
        conn: &mut sqlx::AnyConnection,
        key_id: &str,
    ) -> Result<Arc<Aes256Gcm>, StoreError> {
        match self.find_or_create_key(conn, key_id).await? {
            StoredKey::Wrapped { kek_version, wrapped } => self.vault.cipher(key_id, kek_version, &wrapped),
            StoredKey::Created(key) => Ok(self.vault.remember(key_id, &key)),
        }
    }

    /// The blind-index key (see `crate::crypto::blind_index`), created on first use. It is a
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
    async fn find_or_create_key(&self, conn: &mut sqlx::AnyConnection, key_id: &str) -> Result<StoredKey, StoreError> {
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
            .bind(crate::fhir::instant::now_us())
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
    async fn wrapping_kek(&self, conn: &mut sqlx::AnyConnection) -> Result<(i64, SecretKey), StoreError> {
        let newest_in_db: Option<i64> =
            sqlx::query("SELECT MAX(version) FROM kek_version").fetch_one(&mut *conn).await?.try_get(0)?;
        let (local_version, _) = self.vault.keyring().current();
        let version = newest_in_db.map_or(local_version, |v| v.max(local_version));
        Ok((version, self.vault.kek(version)?))
    }
}

fn backend_of(database_url: &str) -> Result<Backend, StoreError> {
    if database_url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else if database_url.starts_with("postgres://") || database_url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else {
        Err(StoreError::UnsupportedUrl)
    }
}

/// SQLite URLs open read-write-create unless the caller chose a mode.
/// The file of a `sqlite://PATH?options` URL.
pub fn sqlite_path(url: &str) -> PathBuf {
    let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    PathBuf::from(path.split('?').next().unwrap_or(path))
}

/// A SQLite database needs its file and its directory (the write-ahead log and shared-memory
/// files go beside it) writable; SQLite itself would only say "unable to open database file"
/// and the pool would keep retrying. In-memory databases are left alone.
fn check_writable(path: &Path) -> Result<(), StoreError> {
    if path.as_os_str().is_empty() || path.to_string_lossy().starts_with(":memory:") {
        return Ok(());
    }
    let not_writable = |e: std::io::Error| StoreError::NotWritable { path: path.to_owned(), reason: e.to_string() };
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    if !dir.exists() {
        // Created on first start (with the data directory); nothing to check yet.
        return Ok(());
    }
    let probe = dir.join(".hearth-write-check");
    std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&probe).map_err(not_writable)?;
    let _ = std::fs::remove_file(&probe);
    if path.exists() {
        std::fs::OpenOptions::new().write(true).open(path).map_err(not_writable)?;
    }
    Ok(())
}

fn with_create_mode(database_url: &str, backend: Backend) -> String {
    if backend == Backend::Sqlite && !database_url.contains("mode=") {
        let sep = if database_url.contains('?') { '&' } else { '?' };
        format!("{database_url}{sep}mode=rwc")
    } else {
        database_url.to_owned()
    }
}

/// The SQLite URL for a database file inside `data_dir`.
pub fn sqlite_url_for(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// (type, id) pairs grouped by type, for statements of the form `res_type = $1 AND res_id IN (...)`.
fn ids_by_type<'a>(
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
fn precondition_error(precondition: Precondition, live: Option<&Head>) -> Option<StoreError> {
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
fn next_timestamp(previous: Option<&Head>) -> i64 {
    let now = crate::fhir::instant::now_us();
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
    search::write_index(tx, backend, res_type, id, &[], true).await?;
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
    let sql = match backend {
        Backend::Sqlite => {
            "SELECT version, deleted, last_updated_us FROM resource_head WHERE res_type = $1 AND res_id = $2"
        }
        Backend::Postgres => {
            "SELECT version, deleted, last_updated_us FROM resource_head WHERE res_type = $1 AND res_id = $2 FOR UPDATE"
        }
    };
    let row = sqlx::query(sql).bind(res_type).bind(id).fetch_optional(&mut *conn).await?;
    row.map(|r| -> Result<Head, StoreError> {
        Ok(Head { version: r.try_get(0)?, deleted: r.try_get::<i64, _>(1)? != 0, last_updated_us: r.try_get(2)? })
    })
    .transpose()
}

/// Compare-and-set of the head: succeeds only if the head is still what `expected` says.
/// `key_id` is the data key (compartment) of the new current version, `None` for a deletion.
/// Returns false when another writer got there first.
async fn move_head(
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
