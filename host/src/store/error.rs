//! Storage errors, classified so the HTTP edge can answer each with the right status.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL must start with sqlite:// or postgres://")]
    UnsupportedUrl,
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("cannot apply schema migrations: {0}")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    /// The If-Match version (or the expectation that nothing exists) did not hold.
    /// `current` is the live version, if there is one.
    #[error("version conflict")]
    VersionConflict { current: Option<i64> },
    #[error("a resource with this id already exists")]
    AlreadyExists,
    #[error("too many concurrent writers on one resource; retry")]
    TooMuchContention,
    /// Key material is missing or malformed.
    #[error(transparent)]
    Keys(crate::crypto::KeyError),
    #[error(
        "data keys are wrapped with KEK version {version}, which {provider} does not hold; \
         restore that key (e.g. kek-v{version}.key) before starting"
    )]
    KekMissing { version: i64, provider: String },
    #[error(
        "KEK version {version} in {provider} is not the key this database was encrypted with; \
         point --keyring (or HEARTH_KEKS) at this database's keys"
    )]
    KekMismatch { version: i64, provider: String },
    /// A ciphertext failed authentication: the database was altered outside Hearth.
    #[error("stored data failed its integrity check")]
    Integrity,
    /// The data key was destroyed (crypto-shredded): the records are gone for good.
    #[error("these records were erased")]
    Erased,
    /// A search paging cursor that this server did not issue (or issued for another search).
    #[error("the paging cursor is not valid for this search")]
    BadCursor,
    #[error("backup failed: {0}")]
    BackupFailed(String),
    /// The database is unreachable, overloaded or shutting down: worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(error)
            }
            other => StoreError::Database(other),
        }
    }
}
