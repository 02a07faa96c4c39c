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
