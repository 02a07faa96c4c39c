//! Consistent online backups and their verification: a snapshot of the database taken while
//! servers keep writing (SQLite `VACUUM INTO`; PostgreSQL `pg_dump` on an exported snapshot),
//! the counts that snapshot holds, and a walk that opens every stored version.

use std::path::Path;

use serde::{Deserialize, Serialize};
use sqlx::Row;

use super::{Backend, Store, StoreError};

/// What a backup holds, as counted inside the same snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub resources: i64,
    pub versions: i64,
    pub data_keys: i64,
    pub destroyed_data_keys: i64,
    pub audit_entries: i64,
}

const COUNT_SQL: &str = "SELECT \
    (SELECT COUNT(*) FROM resource_head), \
    (SELECT COUNT(*) FROM resource_version), \
    (SELECT COUNT(*) FROM data_key WHERE wrapped IS NOT NULL), \
    (SELECT COUNT(*) FROM data_key WHERE wrapped IS NULL), \
    (SELECT COUNT(*) FROM audit_entry)";

fn counts_of(row: &sqlx::any::AnyRow) -> Result<Counts, StoreError> {
    Ok(Counts {
        resources: row.try_get(0)?,
        versions: row.try_get(1)?,
        data_keys: row.try_get(2)?,
        destroyed_data_keys: row.try_get(3)?,
        audit_entries: row.try_get(4)?,
    })
}

impl Store {
    pub async fn counts(&self) -> Result<Counts, StoreError> {
        counts_of(&sqlx::query(COUNT_SQL).fetch_one(&self.reader).await?)
    }

    /// Writes a consistent snapshot to `dest` (a file path) and returns the counts it holds.
    /// SQLite: `VACUUM INTO`, then counted from the copy. PostgreSQL: a repeatable-read
    /// transaction exports its snapshot, counts inside it, and `pg_dump --snapshot` dumps
    /// exactly that state (custom format) while it stays open.
    pub async fn backup_to(&self, dest: &Path, database_url: &str) -> Result<Counts, StoreError> {
        match self.backend {
            Backend::Sqlite => {
                let target = dest.to_str().ok_or(StoreError::BackupFailed("the backup path is not UTF-8".into()))?;
                sqlx::query("VACUUM INTO $1").bind(target).execute(&self.reader).await?;
                let copy = super::sqlite_url_for(dest) + "?mode=ro";
                let mut conn = <sqlx::AnyConnection as sqlx::Connection>::connect(&copy).await?;
                let counts = counts_of(&sqlx::query(COUNT_SQL).fetch_one(&mut conn).await?)?;
                <sqlx::AnyConnection as sqlx::Connection>::close(conn).await?;
                Ok(counts)
            }
            Backend::Postgres => {
                let mut tx = self.reader.begin().await?;
                sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *tx).await?;
                let snapshot: String =
                    sqlx::query("SELECT pg_export_snapshot()").fetch_one(&mut *tx).await?.try_get(0)?;
                let counts = counts_of(&sqlx::query(COUNT_SQL).fetch_one(&mut *tx).await?)?;
                let output = tokio::process::Command::new("pg_dump")
                    .args(["--format=custom", "--no-owner", "--no-privileges", "--snapshot", &snapshot, "--file"])
                    .arg(dest)
                    .arg(database_url)
                    .output()
                    .await
                    .map_err(|e| {
                        StoreError::BackupFailed(format!(
                            "cannot run pg_dump (install the PostgreSQL client tools): {e}"
                        ))
                    })?;
                tx.commit().await?;
                if !output.status.success() {
                    return Err(StoreError::BackupFailed(format!(
                        "pg_dump failed: {}",
                        String::from_utf8_lossy(&output.stderr).trim()
                    )));
                }
                Ok(counts)
            }
        }
    }

    /// Whether the database holds no Hearth tables yet (a restore target must be empty).
    pub async fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.schema_status().await?.applied.is_empty())
    }

    /// Opens every stored version, a page of rows per query, calling `progress(done)`; returns
    /// how many opened, how many are under destroyed keys, and the (type, id, version) of those
    /// that did not open.
    pub async fn open_every_version(
        &self,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<(u64, u64, Vec<(String, String, i64)>), StoreError> {
        const PAGE: i64 = 1000;
        let mut cursor: (String, String, i64) = (String::new(), String::new(), 0);
        let (mut opened, mut erased, mut failed) = (0u64, 0u64, Vec::new());
        loop {
            // The first seven columns are what `version_record` reads.
            let rows = sqlx::query(
                "SELECT v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, k.wrapped, \
                        v.res_type, v.res_id \
                 FROM resource_version v LEFT JOIN data_key k ON k.key_id = v.key_id \
                 WHERE (v.res_type, v.res_id, v.version) > ($1, $2, $3) AND v.deleted = 0 \
                 ORDER BY v.res_type, v.res_id, v.version LIMIT $4",
            )
            .bind(&cursor.0)
            .bind(&cursor.1)
            .bind(cursor.2)
            .bind(PAGE)
            .fetch_all(&self.reader)
            .await?;
            let Some(last) = rows.last() else { break };
            cursor = (last.try_get(7)?, last.try_get(8)?, last.try_get(0)?);
            for row in &rows {
                let (res_type, id): (String, String) = (row.try_get(7)?, row.try_get(8)?);
                match self.version_record(&res_type, &id, row) {
                    Ok(_) => opened += 1,
                    Err(StoreError::Erased) => erased += 1,
                    Err(StoreError::Integrity) => failed.push((res_type, id, row.try_get(0)?)),
                    Err(other) => return Err(other),
                }
            }
            progress(opened + erased + failed.len() as u64);
        }
        Ok((opened, erased, failed))
    }
}
