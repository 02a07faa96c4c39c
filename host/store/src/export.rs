//! Bulk Data export: jobs (what an export covers, fixed at kick-off) and snapshot reads (the
//! resources as they stood at a job's transaction time, page by page, decrypted in memory).

use sqlx::Row;

use super::search::Sql;
use super::{Store, StoreError, VersionRecord};

/// One export job.
#[derive(Debug, Clone)]
pub struct ExportJob {
    pub id: String,
    pub owner: String,
    pub request: String,
    pub kind: String,
    pub types: Vec<String>,
    pub since_us: Option<i64>,
    pub members: Vec<String>,
    pub transaction_us: i64,
    pub status: String,
    pub outputs: Vec<String>,
    pub error: Option<String>,
    pub created_us: i64,
}

/// Which records an export reads.
#[derive(Debug, Clone, Copy)]
pub enum SnapshotScope<'a> {
    /// Every record.
    All,
    /// Records in any patient's compartment.
    AnyPatient,
    /// Records in one compartment (a data key id, `patient/<id>`).
    Key(&'a str),
}

fn json_list(text: Option<String>) -> Vec<String> {
    text.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default()
}

/// Changes below which statistics are never called stale (small tables are planned well
/// whatever the statistics say).
const STALE_MIN_CHANGES: i64 = 1_000;

/// The data key sealing export requests (`export_job.request` holds them base64-encoded): a `_typeFilter` may hold search values (names,
/// identifiers), which are never stored in plaintext.
const REQUEST_KEY_ID: &str = "export/requests";

fn request_aad(id: &str) -> Vec<u8> {
    format!("export-request|{id}").into_bytes()
}

impl Store {
    pub async fn create_export_job(&self, job: &ExportJob) -> Result<(), StoreError> {
        use base64::Engine as _;
        let mut tx = self.begin_write().await?;
        let cipher = self.data_key_for_write(&mut tx, REQUEST_KEY_ID).await?;
        let request = hearth_crypto::seal_with(&cipher, &request_aad(&job.id), job.request.as_bytes());
        sqlx::query(
            "INSERT INTO export_job (id, owner, request, kind, types, since_us, members, transaction_us, status, \
             outputs, error, created_us) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, NULL, NULL, $10)",
        )
        .bind(&job.id)
        .bind(&job.owner)
        .bind(base64::engine::general_purpose::STANDARD.encode(request))
        .bind(&job.kind)
        .bind(serde_json::to_string(&job.types).unwrap_or_default())
        .bind(job.since_us)
        .bind((!job.members.is_empty()).then(|| serde_json::to_string(&job.members).unwrap_or_default()))
        .bind(job.transaction_us)
        .bind(&job.status)
        .bind(job.created_us)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn export_job(&self, id: &str) -> Result<Option<ExportJob>, StoreError> {
        use base64::Engine as _;
        let row = sqlx::query(
            "SELECT j.id, j.owner, j.request, j.kind, j.types, j.since_us, j.members, j.transaction_us, j.status, \
             j.outputs, j.error, j.created_us, k.kek_version, k.wrapped FROM export_job j \
             LEFT JOIN data_key k ON k.key_id = $2 WHERE j.id = $1",
        )
        .bind(id)
        .bind(REQUEST_KEY_ID)
        .fetch_optional(&self.writer)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let (Some(kek_version), Some(wrapped)) =
            (row.try_get::<Option<i64>, _>(12)?, row.try_get::<Option<Vec<u8>>, _>(13)?)
        else {
            return Err(StoreError::Integrity);
        };
        let cipher = self.vault.cipher(REQUEST_KEY_ID, kek_version, &wrapped)?;
        let sealed = base64::engine::general_purpose::STANDARD
            .decode(row.try_get::<String, _>(2)?)
            .map_err(|_| StoreError::Integrity)?;
        let request =
            hearth_crypto::open_with(&cipher, &request_aad(id), &sealed).map_err(|_| StoreError::Integrity)?;
        Ok(Some(ExportJob {
            id: row.try_get(0)?,
            owner: row.try_get(1)?,
            request: String::from_utf8(request).map_err(|_| StoreError::Integrity)?,
            kind: row.try_get(3)?,
            types: json_list(row.try_get(4)?),
            since_us: row.try_get(5)?,
            members: json_list(row.try_get(6)?),
            transaction_us: row.try_get(7)?,
            status: row.try_get(8)?,
            outputs: json_list(row.try_get(9)?),
            error: row.try_get(10)?,
            created_us: row.try_get(11)?,
        }))
    }

    /// Ends an in-progress job as `complete` (with its output types) or `failed` (with why);
    /// a job cancelled meanwhile stays cancelled.
    pub async fn finish_export_job(&self, id: &str, outputs: Result<&[String], &str>) -> Result<(), StoreError> {
        let (status, outputs, error) = match outputs {
            Ok(types) => ("complete", Some(serde_json::to_string(types).unwrap_or_default()), None),
            Err(why) => ("failed", None, Some(why.to_owned())),
        };
        sqlx::query(
            "UPDATE export_job SET status = $1, outputs = $2, error = $3 WHERE id = $4 AND status = 'in-progress'",
        )
        .bind(status)
        .bind(outputs)
        .bind(error)
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Cancels (or, once complete, deletes) a job; `false` if there was none to cancel.
    pub async fn cancel_export_job(&self, id: &str) -> Result<bool, StoreError> {
        let done = sqlx::query("UPDATE export_job SET status = 'cancelled' WHERE id = $1 AND status <> 'cancelled'")
            .bind(id)
            .execute(&self.writer)
            .await?;
        Ok(done.rows_affected() > 0)
    }

    /// Brings PostgreSQL's planner statistics on the resource tables up to date when they
    /// changed much since the last `ANALYZE` (more than a tenth of their rows, as autovacuum
    /// judges it), and says whether it ran one. Right after a bulk load, before autovacuum has
    /// got to the tables, the planner takes them for nearly empty and plans each snapshot page
    /// as a scan and sort of every remaining version of the type (seconds a page at a million
    /// resources, instead of milliseconds along the primary key). SQLite's plans do not
    /// depend on statistics: nothing to do there.
    pub async fn analyze_if_stale(&self) -> Result<bool, StoreError> {
        if self.backend() != super::Backend::Postgres {
            return Ok(false);
        }
        let rows = sqlx::query(
            "SELECT n_live_tup, n_mod_since_analyze FROM pg_stat_user_tables \
             WHERE schemaname = current_schema() AND relname IN ('resource_head', 'resource_version')",
        )
        .fetch_all(&self.writer)
        .await?;
        let mut stale = false;
        for row in &rows {
            let (live, changed): (i64, i64) = (row.try_get(0)?, row.try_get(1)?);
            stale |= changed > STALE_MIN_CHANGES + live / 10;
        }
        if stale {
            let started = std::time::Instant::now();
            sqlx::query("ANALYZE resource_head, resource_version, data_key").execute(&self.writer).await?;
            tracing::info!(took_ms = started.elapsed().as_millis() as u64, "analysed the resource tables");
        }
        Ok(stale)
    }

    /// The conditions that make `v` the version of its resource current at `at_us`, not a
    /// deletion, written at or after `since_us`, within `scope`.
    fn snapshot_conditions(sql: &mut Sql, at_us: i64, since_us: Option<i64>, scope: SnapshotScope<'_>) -> Vec<String> {
        let at = sql.int(at_us);
        // The unary `+` keeps the planner off the change-time indexes: pages are read in id
        // order along the primary key (SQLite otherwise scanned by time and sorted every page).
        let mut conditions = vec![
            format!("+v.last_updated_us <= {at}"),
            "v.deleted = 0".to_owned(),
            format!(
                "v.version = (SELECT MAX(x.version) FROM resource_version x WHERE x.res_type = v.res_type \
                 AND x.res_id = v.res_id AND +x.last_updated_us <= {at})"
            ),
        ];
        if let Some(since) = since_us {
            conditions.push(format!("+v.last_updated_us >= {}", sql.int(since)));
        }
        match scope {
            SnapshotScope::All => {}
            SnapshotScope::AnyPatient => conditions.push("v.key_id LIKE 'patient/%'".to_owned()),
            SnapshotScope::Key(key) => conditions.push(format!("v.key_id = {}", sql.text(key))),
        }
        conditions
    }

    /// The resource types with at least one record in the snapshot.
    pub async fn snapshot_types(
        &self,
        at_us: i64,
        since_us: Option<i64>,
        scope: SnapshotScope<'_>,
    ) -> Result<Vec<String>, StoreError> {
        let mut sql = Sql::default();
        let conditions = Self::snapshot_conditions(&mut sql, at_us, since_us, scope);
        let text = format!(
            "SELECT DISTINCT v.res_type FROM resource_version v WHERE {} ORDER BY v.res_type",
            conditions.join(" AND ")
        );
        let rows = sql.query(text).fetch_all(&self.reader).await?;
        Ok(rows.iter().map(|r| r.try_get(0)).collect::<Result<_, _>>()?)
    }

    /// A page of the `res_type` records of the snapshot, in id order after `after`, at most
    /// `limit`; erased records are left out. Returns them and whether more follow.
    pub async fn snapshot_page(
        &self,
        res_type: &str,
        at_us: i64,
        since_us: Option<i64>,
        scope: SnapshotScope<'_>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<(Vec<VersionRecord>, bool), StoreError> {
        let mut sql = Sql::default();
        let mut conditions = vec![format!("v.res_type = {}", sql.text(res_type))];
        conditions.extend(Self::snapshot_conditions(&mut sql, at_us, since_us, scope));
        if let Some(after) = after {
            conditions.push(format!("v.res_id > {}", sql.text(after)));
        }
        let limit_bind = sql.int(i64::try_from(limit).unwrap_or(i64::MAX) + 1);
        let text = format!(
            "SELECT v.res_type, v.res_id, v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, \
             k.wrapped FROM resource_version v LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE {} ORDER BY v.res_id LIMIT {limit_bind}",
            conditions.join(" AND ")
        );
        let rows = sql.query(text).fetch_all(&self.reader).await?;
        self.version_page(&rows, limit, true)
    }
}
