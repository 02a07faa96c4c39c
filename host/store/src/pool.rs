//! Connecting: the pools of each backend, the SQLite file's checks and creation mode, schema
//! status and migrations, closing.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Executor, Row};

use crate::migrations;
use crate::{Backend, KeyVault, SchemaStatus, Store, StoreError, StoreOptions};

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
        // Several PostgreSQL hosts (a primary and its standbys): the pools connect to the one
        // that accepts writes, and follow it when it moves (see failover.rs).
        let hosts = match backend {
            Backend::Postgres => crate::failover::split_hosts(database_url)
                .map_err(|message| StoreError::Connect(sqlx::Error::Configuration(message.into())))?,
            Backend::Sqlite => None,
        };
        let hosts = match hosts {
            Some(urls) => Some(Arc::new(crate::failover::Hosts::discover(urls).await)),
            None => None,
        };
        let url = hosts.as_ref().map_or(database_url, |h| h.current_url());
        let several_hosts = hosts.is_some();
        let connect_options =
            AnyConnectOptions::from_str(&with_create_mode(url, backend)).map_err(StoreError::Connect)?;
        let pool = |max: u32, writer: bool| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(options.acquire_timeout)
                // sqlx pings every connection it takes from the pool; on SQLite that is a round
                // trip to the connection's worker thread (a file in this process cannot hang up),
                // as costly as the statement itself. PostgreSQL keeps the check: a server that
                // restarted leaves dead connections behind.
                .test_before_acquire(backend != Backend::Sqlite)
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
                            if several_hosts {
                                // A standby, or a primary promoted a moment ago that does not
                                // take writes yet: not a connection to keep (503 until the
                                // watcher points the pool at the primary).
                                let writable: i32 = sqlx::query(
                                    "SELECT CASE WHEN pg_is_in_recovery() \
                                       OR current_setting('transaction_read_only') = 'on' THEN 0 ELSE 1 END",
                                )
                                .fetch_one(&mut *conn)
                                .await?
                                .try_get(0)?;
                                if writable == 0 {
                                    return Err(crate::failover::read_only_server());
                                }
                            }
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
        // PostgreSQL: one connection listens for other hosts' notifications; it reconnects
        // through this pool, which the watcher re-points with the others.
        let listen = match backend {
            Backend::Postgres => {
                let options = sqlx::postgres::PgConnectOptions::from_str(url).map_err(StoreError::Connect)?;
                Some(sqlx::postgres::PgPoolOptions::new().max_connections(2).connect_lazy_with(options))
            }
            Backend::Sqlite => None,
        };
        if let (Some(hosts), Some(listen)) = (hosts, &listen) {
            hosts.watch(writer.clone(), listen.clone());
        }
        Ok(Store { backend, reader, writer, vault, plaintext: false, blind_index: Arc::default(), listen })
    }

    /// Starts a write transaction. SQLite takes the write lock up front (`BEGIN IMMEDIATE`)
    /// so another process writing the same file (e.g. `hearth keys rotate`) makes us wait
    /// rather than fail when our read-then-write transaction upgrades.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
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
        let exists: i64 =
            sqlx::query(self.backend.migrations_table_exists()).fetch_one(&self.reader).await?.try_get(0)?;
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
        // Not the listening pool: closing waits for its connection, which the listener holds
        // until the process ends.
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
