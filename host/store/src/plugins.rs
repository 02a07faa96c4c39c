//! Plugin storage: every uploaded version (so any host can load it and an operator can roll
//! back), the per-plugin key-value stores, and the outbox of integration events.

use sqlx::Row;

use super::{Store, StoreError};
use hearth_crypto::{open_with, seal_with};
use hearth_fhir::instant::now_us;

/// One stored plugin version, without its component bytes.
#[derive(Debug, Clone, serde::Serialize)]
pub struct PluginVersionRow {
    pub seq: i64,
    pub version: String,
    pub world: String,
    pub sha256: String,
    pub size: i64,
    pub signed_by: Option<String>,
    pub uploaded_us: i64,
    pub uploaded_by: String,
}

/// A plugin and the version in force.
#[derive(Debug, Clone)]
pub struct PluginRow {
    pub name: String,
    pub active_seq: i64,
    pub enabled: bool,
    pub changed_us: i64,
}

/// What a new upload stores.
pub struct NewPluginVersion<'a> {
    pub name: &'a str,
    pub version: &'a str,
    pub world: &'a str,
    pub manifest_json: &'a str,
    pub component: &'a [u8],
    pub sha256: &'a str,
    pub signed_by: Option<&'a str>,
    /// The Ed25519 signature it was uploaded with, re-verified at every load.
    pub signature: Option<&'a [u8]>,
    pub uploaded_by: &'a str,
}

/// A stored plugin version as it is loaded.
pub struct StoredComponent {
    pub manifest_json: String,
    pub component: Vec<u8>,
    /// The signature it was uploaded with, if any.
    pub signature: Option<Vec<u8>>,
}

/// A committed change waiting for an integration plugin.
#[derive(Debug, Clone)]
pub struct OutboxEvent {
    pub id: i64,
    pub plugin: String,
    pub res_type: String,
    pub res_id: String,
    pub version: i64,
    pub kind: String,
    pub created_us: i64,
    pub attempts: i64,
    pub state: String,
    pub last_error: Option<String>,
}

/// The columns `outbox_event` decodes, as a literal so queries can be built with `concat!`.
macro_rules! outbox_select {
    () => {
        "SELECT id, plugin, res_type, res_id, version, kind, created_us, attempts, state, last_error FROM outbox"
    };
}

/// How long a claimed event stays with one worker before another may take it.
const CLAIM_LEASE_US: i64 = 60_000_000;

fn kv_key_id(plugin: &str) -> String {
    format!("plugin-kv/{plugin}")
}

fn kv_aad(plugin: &str, key: &str) -> Vec<u8> {
    format!("plugin-kv|{plugin}|{key}").into_bytes()
}

impl Store {
    /// Stores a new version of a plugin and makes it the active, enabled one.
    pub async fn add_plugin_version(&self, new: &NewPluginVersion<'_>) -> Result<i64, StoreError> {
        let mut tx = self.begin_write().await?;
        let seq: i64 = sqlx::query("SELECT COALESCE(MAX(seq), 0) + 1 FROM plugin_version WHERE name = $1")
            .bind(new.name)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        let now = now_us();
        sqlx::query(
            "INSERT INTO plugin_version (name, seq, version, world, manifest, component, sha256, signed_by, \
             uploaded_us, uploaded_by, signature) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
        )
        .bind(new.name)
        .bind(seq)
        .bind(new.version)
        .bind(new.world)
        .bind(new.manifest_json)
        .bind(new.component)
        .bind(new.sha256)
        .bind(new.signed_by)
        .bind(now)
        .bind(new.uploaded_by)
        .bind(new.signature)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO plugin (name, active_seq, enabled, changed_us) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (name) DO UPDATE SET active_seq = excluded.active_seq, enabled = excluded.enabled, \
             changed_us = excluded.changed_us",
        )
        .bind(new.name)
        .bind(seq)
        .bind(1_i16)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(seq)
    }

    pub async fn plugins(&self) -> Result<Vec<PluginRow>, StoreError> {
        let rows = sqlx::query("SELECT name, active_seq, enabled, changed_us FROM plugin ORDER BY name")
            .fetch_all(&self.reader)
            .await?;
        rows.iter()
            .map(|r| {
                Ok(PluginRow {
                    name: r.try_get(0)?,
                    active_seq: r.try_get(1)?,
                    enabled: r.try_get::<i64, _>(2)? != 0,
                    changed_us: r.try_get(3)?,
                })
            })
            .collect()
    }

    pub async fn plugin_versions(&self, name: &str) -> Result<Vec<PluginVersionRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT seq, version, world, sha256, LENGTH(component), signed_by, uploaded_us, uploaded_by \
             FROM plugin_version WHERE name = $1 ORDER BY seq",
        )
        .bind(name)
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(PluginVersionRow {
                    seq: r.try_get(0)?,
                    version: r.try_get(1)?,
                    world: r.try_get(2)?,
                    sha256: r.try_get(3)?,
                    size: r.try_get(4)?,
                    signed_by: r.try_get(5)?,
                    uploaded_us: r.try_get(6)?,
                    uploaded_by: r.try_get(7)?,
                })
            })
            .collect()
    }

    /// The manifest (JSON), component and signature of one stored version.
    pub async fn plugin_component(&self, name: &str, seq: i64) -> Result<Option<StoredComponent>, StoreError> {
        let row = sqlx::query("SELECT manifest, component, signature FROM plugin_version WHERE name = $1 AND seq = $2")
            .bind(name)
            .bind(seq)
            .fetch_optional(&self.reader)
            .await?;
        row.map(|r| {
            Ok(StoredComponent { manifest_json: r.try_get(0)?, component: r.try_get(1)?, signature: r.try_get(2)? })
        })
        .transpose()
    }

    /// Makes stored version `seq` the active one. False if there is no such version.
    pub async fn activate_plugin_version(&self, name: &str, seq: i64) -> Result<bool, StoreError> {
        self.change_plugin(
            "UPDATE plugin SET active_seq = $2, changed_us = $3 WHERE name = $1 \
             AND EXISTS (SELECT 1 FROM plugin_version WHERE name = $1 AND seq = $2)",
            name,
            seq,
        )
        .await
    }

    pub async fn set_plugin_enabled(&self, name: &str, enabled: bool) -> Result<bool, StoreError> {
        self.change_plugin(
            "UPDATE plugin SET enabled = CAST($2 AS SMALLINT), changed_us = $3 WHERE name = $1",
            name,
            i64::from(enabled),
        )
        .await
    }

    async fn change_plugin(&self, sql: &'static str, name: &str, value: i64) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let changed = sqlx::query(sql).bind(name).bind(value).bind(now_us()).execute(&mut *tx).await?.rows_affected();
        if changed == 1 {
            bump_generation(&mut tx).await?;
        }
        tx.commit().await?;
        Ok(changed == 1)
    }

    /// Removes a plugin, all its stored versions and its key-value store.
    pub async fn remove_plugin(&self, name: &str) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let removed = sqlx::query("DELETE FROM plugin WHERE name = $1").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM plugin_version WHERE name = $1").bind(name).execute(&mut *tx).await?;
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1").bind(name).execute(&mut *tx).await?;
        bump_generation(&mut tx).await?;
        tx.commit().await?;
        Ok(removed.rows_affected() == 1)
    }

    /// A counter bumped by every plugin change (other hosts poll it to reload).
    /// PostgreSQL: a connection listening for plugin changes committed through any host
    /// (`None` on SQLite, which one host alone uses). It reconnects by itself; notifications
    /// sent while it was away are lost, so callers keep polling [`Self::plugin_generation`] too.
    pub async fn plugin_change_listener(&self) -> Result<Option<sqlx::postgres::PgListener>, StoreError> {
        let Some(pool) = &self.listen else { return Ok(None) };
        let mut listener = sqlx::postgres::PgListener::connect_with(pool).await.map_err(StoreError::Connect)?;
        listener.listen(PLUGIN_CHANNEL).await.map_err(StoreError::Connect)?;
        Ok(Some(listener))
    }

    pub async fn plugin_generation(&self) -> Result<i64, StoreError> {
        Ok(sqlx::query("SELECT generation FROM plugin_generation WHERE id = 1")
            .fetch_one(&self.reader)
            .await?
            .try_get(0)?)
    }

    /// The current versions of live Consent resources in `patient`'s compartment whose status
    /// is `active`, as JSON, at most `limit`.
    pub async fn active_consents(&self, patient: &str, limit: i64) -> Result<Vec<String>, StoreError> {
        let rows = sqlx::query(
            "SELECT h.res_id, v.version, v.last_updated_us, v.deleted, v.body, v.key_id, k.kek_version, k.wrapped \
             FROM resource_head h JOIN resource_version v \
               ON v.res_type = h.res_type AND v.res_id = h.res_id AND v.version = h.version \
             LEFT JOIN data_key k ON k.key_id = v.key_id \
             WHERE h.res_type = 'Consent' AND h.deleted = 0 AND v.key_id = $1 LIMIT $2",
        )
        .bind(hearth_fhir::compartment::patient_key_id(patient))
        .bind(limit)
        .fetch_all(&self.reader)
        .await?;
        let mut consents = Vec::new();
        for row in &rows {
            let id: String = row.try_get(0)?;
            let record = self.version_record_at("Consent", &id, row, 1)?;
            let Some(body) = record.body else { continue };
            let active = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .is_some_and(|c| c.get("status").and_then(|s| s.as_str()) == Some("active"));
            if active {
                consents.push(String::from_utf8(body).unwrap_or_default());
            }
        }
        Ok(consents)
    }

    pub async fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let row = sqlx::query(
            "SELECT kv.value, k.kek_version, k.wrapped FROM plugin_kv kv \
             LEFT JOIN data_key k ON k.key_id = $3 WHERE kv.plugin = $1 AND kv.key = $2",
        )
        .bind(plugin)
        .bind(key)
        .bind(kv_key_id(plugin))
        .fetch_optional(&self.reader)
        .await?;
        let Some(row) = row else { return Ok(None) };
        let sealed: Vec<u8> = row.try_get(0)?;
        let (Some(kek_version), Some(wrapped)) =
            (row.try_get::<Option<i64>, _>(1)?, row.try_get::<Option<Vec<u8>>, _>(2)?)
        else {
            return Err(StoreError::Erased);
        };
        let cipher = self.vault.cipher(&kv_key_id(plugin), kek_version, &wrapped)?;
        open_with(&cipher, &kv_aad(plugin, key), &sealed).map(Some).map_err(|_| StoreError::Integrity)
    }

    /// Sets a key; `Ok(Err(..))` when the plugin already holds `max_keys` other keys.
    pub async fn kv_set(
        &self,
        plugin: &str,
        key: &str,
        value: &[u8],
        max_keys: i64,
    ) -> Result<Result<(), String>, StoreError> {
        let mut tx = self.begin_write().await?;
        let others: i64 = sqlx::query("SELECT COUNT(*) FROM plugin_kv WHERE plugin = $1 AND key <> $2")
            .bind(plugin)
            .bind(key)
            .fetch_one(&mut *tx)
            .await?
            .try_get(0)?;
        if others >= max_keys {
            return Ok(Err(format!("the key-value store is full ({max_keys} keys)")));
        }
        let cipher = self.data_key_for_write(&mut tx, &kv_key_id(plugin)).await?;
        let sealed = seal_with(&cipher, &kv_aad(plugin, key), value);
        sqlx::query(
            "INSERT INTO plugin_kv (plugin, key, value) VALUES ($1, $2, $3) \
             ON CONFLICT (plugin, key) DO UPDATE SET value = excluded.value",
        )
        .bind(plugin)
        .bind(key)
        .bind(sealed)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(()))
    }

    pub async fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM plugin_kv WHERE plugin = $1 AND key = $2")
            .bind(plugin)
            .bind(key)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Claims up to `limit` due events for this worker (a lease, so a crashed worker's
    /// events are taken over after it expires). PostgreSQL skips rows other hosts hold.
    pub async fn claim_outbox(&self, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        let now = now_us();
        // Most passes find nothing: look first without taking the write lock.
        let due = sqlx::query(
            "SELECT 1 FROM outbox WHERE state = 'pending' AND next_attempt_us <= $1 AND claimed_until_us <= $1 LIMIT 1",
        )
        .bind(now)
        .fetch_optional(&self.reader)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.begin_write().await?;
        let sql = format!(
            concat!(
                outbox_select!(),
                " WHERE state = 'pending' AND next_attempt_us <= $1 \
                 AND claimed_until_us <= $1 ORDER BY id LIMIT $2{}"
            ),
            self.backend.claim_rows()
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now).bind(limit).fetch_all(&mut *tx).await?;
        let events = rows.iter().map(outbox_event).collect::<Result<Vec<_>, _>>()?;
        for event in &events {
            sqlx::query("UPDATE outbox SET claimed_until_us = $2 WHERE id = $1")
                .bind(event.id)
                .bind(now + CLAIM_LEASE_US)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(events)
    }

    // The single-statement writes below (and kv_delete) run in autocommit on the writer pool:
    // there is no read-then-write to protect, so no explicit transaction.

    /// A delivered event leaves the outbox.
    pub async fn outbox_delivered(&self, id: i64) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM outbox WHERE id = $1").bind(id).execute(&self.writer).await?;
        Ok(())
    }

    /// Records a failed delivery: retried at `retry_at_us`, or dead-lettered when `None`.
    pub async fn outbox_failed(&self, id: i64, error: &str, retry_at_us: Option<i64>) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET attempts = attempts + 1, last_error = $2, claimed_until_us = 0, \
             state = $3, next_attempt_us = $4 WHERE id = $1",
        )
        .bind(id)
        .bind(error)
        .bind(if retry_at_us.is_some() { "pending" } else { "dead" })
        .bind(retry_at_us.unwrap_or(0))
        .execute(&self.writer)
        .await?;
        Ok(())
    }

    /// Returns a claimed event unattempted, to be tried again at `at_us`.
    /// Replaces event `event` by one event per consumer (same change), in one transaction.
    pub async fn outbox_fan_out(&self, event: &OutboxEvent, consumers: &[String]) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        enqueue_events(&mut tx, consumers, &event.res_type, &event.res_id, event.version, &event.kind, now_us())
            .await?;
        sqlx::query("DELETE FROM outbox WHERE id = $1").bind(event.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    pub async fn outbox_postpone(&self, id: i64, at_us: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET claimed_until_us = 0, next_attempt_us = $2 WHERE id = $1")
            .bind(id)
            .bind(at_us)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// Events in one state (`pending` or `dead`), oldest first.
    /// Outbox events by state (`pending`, `dead`), for the metrics.
    pub async fn outbox_depth(&self) -> Result<Vec<(String, i64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) FROM outbox GROUP BY state").fetch_all(&self.reader).await?;
        rows.iter().map(|r| Ok((r.try_get(0)?, r.try_get(1)?))).collect()
    }

    pub async fn outbox_events(&self, state: &str, limit: i64) -> Result<Vec<OutboxEvent>, StoreError> {
        let sql = concat!(outbox_select!(), " WHERE state = $1 ORDER BY id LIMIT $2");
        let rows = sqlx::query(sql).bind(state).bind(limit).fetch_all(&self.reader).await?;
        rows.iter().map(outbox_event).collect()
    }

    /// Puts a dead-lettered event back in line. False if there is no such dead event.
    pub async fn outbox_retry(&self, id: i64) -> Result<bool, StoreError> {
        let changed = sqlx::query(
            "UPDATE outbox SET state = 'pending', attempts = 0, next_attempt_us = 0, claimed_until_us = 0 \
             WHERE id = $1 AND state = 'dead'",
        )
        .bind(id)
        .execute(&self.writer)
        .await?;
        Ok(changed.rows_affected() == 1)
    }
}

fn outbox_event(row: &sqlx::any::AnyRow) -> Result<OutboxEvent, StoreError> {
    Ok(OutboxEvent {
        id: row.try_get(0)?,
        plugin: row.try_get(1)?,
        res_type: row.try_get(2)?,
        res_id: row.try_get(3)?,
        version: row.try_get(4)?,
        kind: row.try_get(5)?,
        created_us: row.try_get(6)?,
        attempts: row.try_get(7)?,
        state: row.try_get(8)?,
        last_error: row.try_get(9)?,
    })
}

/// The PostgreSQL channel a plugin change is announced on when it commits.
const PLUGIN_CHANNEL: &str = "hearth_plugins";

async fn bump_generation(conn: &mut sqlx::AnyConnection) -> Result<(), StoreError> {
    sqlx::query("UPDATE plugin_generation SET generation = generation + 1 WHERE id = 1").execute(&mut *conn).await?;
    if conn.backend_name() == "PostgreSQL" {
        // Delivered to listeners when (and only if) the transaction commits.
        sqlx::query("SELECT pg_notify($1, '')").bind(PLUGIN_CHANNEL).execute(&mut *conn).await?;
    }
    Ok(())
}

/// Adds one outbox row per plugin for a change, inside the writer's transaction.
pub(super) async fn enqueue_events(
    conn: &mut sqlx::AnyConnection,
    plugins: &[String],
    res_type: &str,
    id: &str,
    version: i64,
    kind: &str,
    at_us: i64,
) -> Result<(), StoreError> {
    for plugin in plugins {
        sqlx::query(
            "INSERT INTO outbox (plugin, res_type, res_id, version, kind, created_us, state, attempts, \
             next_attempt_us, claimed_until_us) VALUES ($1, $2, $3, $4, $5, $6, 'pending', 0, $6, 0)",
        )
        .bind(plugin)
        .bind(res_type)
        .bind(id)
        .bind(version)
        .bind(kind)
        .bind(at_us)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}
