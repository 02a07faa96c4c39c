//! Reads by id and version, opened and authenticated, confined to a reader's reach where asked.

use sqlx::Row;

use hearth_crypto::{open_with, resource_aad};
use hearth_fhir::search::access::Visibility;

use crate::search;
use crate::{Lookup, Store, StoreError, VersionRecord};

impl Store {
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
    pub(crate) fn version_record(
        &self,
        res_type: &str,
        id: &str,
        row: &sqlx::any::AnyRow,
    ) -> Result<VersionRecord, StoreError> {
        self.version_record_at(res_type, id, row, 0)
    }

    /// [`Store::version_record`] for rows whose version columns start at column `at`.
    pub(crate) fn version_record_at(
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
}
