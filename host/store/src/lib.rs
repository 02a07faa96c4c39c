//! Resource storage on SQLite (embedded default) or PostgreSQL, behind one [`Store`].
//!
//! Both databases run the same SQL through sqlx's `Any` driver, so every behaviour (versioning,
//! optimistic locking, history) is written once and tested on both. Each resource version is an
//! immutable row in `resource_version`; `resource_head` holds the current version and is moved
//! with a compare-and-set, so two writers racing on one resource can never both win.
//!
//! Bodies are sealed before they reach the database (see `hearth_crypto`): each version under
//! the data key of its compartment, bound to its row by associated data. Reads open them and
//! fail closed: a body that does not authenticate is an integrity error, never returned.
//!
//! SQLite gets a single-connection writer pool (SQLite allows one writer at a time; queueing in
//! the pool is cheaper and fairer than retrying `SQLITE_BUSY`) and a reader pool; WAL mode lets
//! readers proceed while the writer commits. PostgreSQL uses one pool for both.

use std::time::Duration;

use std::sync::Arc;

use sqlx::AnyPool;

use hearth_crypto::SecretKey;
use hearth_crypto::blind_index::BlindIndexKey;

mod audit;
mod backup;
mod batch;
mod dialect;
mod error;
mod export;
pub mod failover;
mod index;
mod keys;
mod migrations;
mod plugins;
mod pool;
mod read;
mod search;
mod subscriptions;
mod vault;
mod write;

pub use audit::{StoredAuditEntry, StoredCheckpoint, chain_hash};
pub use backup::Counts;
pub use dialect::Backend;
pub use error::StoreError;
pub use export::{ExportJob, SnapshotScope};
pub use keys::{EncryptionInventory, KekVersionInventory, KeyStatus, RotationReport};
pub use plugins::{NewPluginVersion, OutboxEvent, PluginRow, PluginVersionRow, StoredComponent};
pub use pool::{sqlite_path, sqlite_url_for};
pub use search::{HistoryOf, Match, Position, SearchRows, SearchScope, search_sql_text};
pub use subscriptions::SubscriptionOwner;
pub use vault::KeyVault;

/// How many times a write is retried after losing a race it did not ask to detect
/// (no If-Match given) before giving up with a conflict. Races are rare: they need two
/// creators of one new id (PostgreSQL), since existing heads are locked while written.
const MAX_WRITE_ATTEMPTS: u32 = 8;

pub use hearth_fhir::record::VersionRecord;

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
    /// PostgreSQL: where the connection that listens for other hosts' notifications comes from.
    listen: Option<sqlx::PgPool>,
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
