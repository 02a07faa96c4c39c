//! Storage errors, classified so the HTTP edge can answer each with the right status.

/// Why a storage operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("the database URL must start with sqlite:// or postgres://")]
    UnsupportedUrl,
    #[error("cannot connect to the database: {0}")]
    Connect(#[source] sqlx::Error),
    /// The SQLite database (or its directory, where the journal goes) cannot be written.
    #[error(
        "the SQLite database at {path} cannot be written ({reason}): make sure its file system is \
         mounted read-write and that the directory and the file are writable by this user, then start again"
    )]
    NotWritable { path: std::path::PathBuf, reason: String },
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
    Keys(hearth_crypto::KeyError),
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
    /// The database's disk (or quota) is full: nothing more can be written until space is
    /// freed; reads still work.
    #[error("the database is out of space: {0}")]
    Full(#[source] sqlx::Error),
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(error: sqlx::Error) -> Self {
        match error {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                StoreError::Unavailable(error)
            }
            sqlx::Error::Database(ref db) if db.code().is_some_and(|code| out_of_space(&code)) => {
                StoreError::Full(error)
            }
            sqlx::Error::Database(ref db) if db.code().is_some_and(|code| transient_sqlstate(&code)) => {
                StoreError::Unavailable(error)
            }
            other => StoreError::Database(other),
        }
    }
}

/// SQLite's SQLITE_FULL (13) and PostgreSQL's disk_full (53100).
fn out_of_space(code: &str) -> bool {
    code == "13" || code == "53100"
}

/// PostgreSQL SQLSTATEs that mean "the server went away or is refusing work for now", not "this
/// statement is wrong": class 08 (connection exception), 57P01-57P03 (administrator shutdown,
/// crash shutdown, cannot connect now: a terminated backend or a restart) and 53 (insufficient
/// resources, e.g. too many connections).
fn transient_sqlstate(code: &str) -> bool {
    // 25006: read_only_sql_transaction, a connection left on a server that no longer takes
    // writes (a primary demoted, or one promoted a moment ago).
    code.starts_with("08") || code.starts_with("57P") || code.starts_with("53") || code == "25006"
}

/// How a storage failure reaches the client; unexpected failures are logged here, once.
impl From<StoreError> for hearth_fhir::outcome::FhirError {
    fn from(error: StoreError) -> Self {
        use hearth_fhir::outcome::{FhirError, IssueType};
        match error {
            StoreError::VersionConflict { current: Some(current) } => FhirError::precondition_failed(format!(
                "If-Match does not name the current version ({}); read the resource again and retry",
                hearth_fhir::etag(current)
            )),
            StoreError::VersionConflict { current: None } => FhirError::precondition_failed(
                "If-Match names a version, but the resource has no current version to match",
            ),
            StoreError::AlreadyExists => FhirError::new(
                http::StatusCode::CONFLICT,
                IssueType::Conflict,
                "a resource with this id already exists",
            ),
            StoreError::TooMuchContention => FhirError::new(
                http::StatusCode::CONFLICT,
                IssueType::Conflict,
                "too many concurrent updates to this resource; retry",
            ),
            StoreError::Erased => FhirError::gone(
                "these records were erased (their encryption key was destroyed) and can never be read or written again",
            ),
            StoreError::BadCursor => FhirError::bad_request(
                IssueType::Value,
                "_cursor is not one this server issued for this request; start again from the first page",
            ),
            // The alert with row details was logged where it was detected.
            StoreError::Integrity => FhirError::internal(),
            StoreError::Unavailable(ref cause) => {
                tracing::error!(error = %cause, "database unavailable");
                FhirError::unavailable("the database is unavailable; retry shortly")
            }
            StoreError::Full(ref cause) => {
                tracing::error!(
                    error = %cause,
                    "ALERT: the database is out of space; writes are refused until space is freed"
                );
                FhirError::out_of_space()
            }
            other => {
                tracing::error!(error = %other, "storage failure");
                FhirError::internal()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{out_of_space, transient_sqlstate};

    #[test]
    fn connection_loss_is_transient_and_mistakes_are_not() {
        for code in ["08006", "08003", "57P01", "57P02", "57P03", "53300", "25006"] {
            assert!(transient_sqlstate(code), "{code}");
        }
        for code in ["23505", "42P01", "40001", "22P02"] {
            assert!(!transient_sqlstate(code), "{code}");
        }
        assert!(out_of_space("13") && out_of_space("53100") && !out_of_space("5"));
    }
}
