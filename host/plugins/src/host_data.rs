//! What the host functions read and write outside the sandbox (besides outbound HTTP), behind
//! one trait with two implementations: a server's database ([`StoreData`]), and the fixtures
//! of `hearth plugin test` and the benchmarks ([`Fixtures`]). The host functions
//! (`host_api.rs`) check grants and limits and never know which one they talk to.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use hearth_store::Store;

/// Why a host data call has no answer.
#[derive(Debug)]
pub enum DataError {
    /// This implementation has no such data (no key-value store in plugin tests).
    NotHere,
    /// The data is there but could not be reached (logged by the caller).
    Failed(String),
}

/// The data plugins may ask the host for. Calls block their (plugin) thread: host functions
/// are synchronous.
pub trait HostData: Send + Sync {
    /// The active Consents of `patient`, as FHIR JSON (at most 100).
    fn active_consents(&self, patient: &str) -> Result<Vec<String>, DataError>;
    /// The value `plugin` stored under `key`, if any.
    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, DataError>;
    /// Stores `value` under `key` for `plugin`; `Ok(Err(why))` when the plugin's store is
    /// full (more than `max_keys` keys).
    fn kv_set(&self, plugin: &str, key: &str, value: &[u8], max_keys: i64) -> Result<Result<(), String>, DataError>;
    /// Removes `key` of `plugin`.
    fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), DataError>;
}

/// A server's database.
pub struct StoreData {
    pub store: Store,
    pub tokio: tokio::runtime::Handle,
}

impl StoreData {
    fn wait<T>(&self, future: impl Future<Output = Result<T, hearth_store::StoreError>>) -> Result<T, DataError> {
        crate::host_api::wait(&self.tokio, future).map_err(|error| DataError::Failed(error.to_string()))
    }
}

impl HostData for StoreData {
    fn active_consents(&self, patient: &str) -> Result<Vec<String>, DataError> {
        self.wait(self.store.active_consents(patient, 100))
    }

    fn kv_get(&self, plugin: &str, key: &str) -> Result<Option<Vec<u8>>, DataError> {
        self.wait(self.store.kv_get(plugin, key))
    }

    fn kv_set(&self, plugin: &str, key: &str, value: &[u8], max_keys: i64) -> Result<Result<(), String>, DataError> {
        self.wait(self.store.kv_set(plugin, key, value, max_keys))
    }

    fn kv_delete(&self, plugin: &str, key: &str) -> Result<(), DataError> {
        self.wait(self.store.kv_delete(plugin, key))
    }
}

/// Recorded answers instead of a database: the active Consents by patient id (FHIR JSON),
/// which a test may change between calls; no key-value store.
#[derive(Default, Clone)]
pub struct Fixtures {
    pub consents: Arc<Mutex<HashMap<String, Vec<String>>>>,
}

impl HostData for Fixtures {
    fn active_consents(&self, patient: &str) -> Result<Vec<String>, DataError> {
        let consents = self.consents.lock().unwrap_or_else(|e| e.into_inner());
        Ok(consents.get(patient).cloned().unwrap_or_default())
    }

    fn kv_get(&self, _plugin: &str, _key: &str) -> Result<Option<Vec<u8>>, DataError> {
        Err(DataError::NotHere)
    }

    fn kv_set(&self, _: &str, _: &str, _: &[u8], _: i64) -> Result<Result<(), String>, DataError> {
        Err(DataError::NotHere)
    }

    fn kv_delete(&self, _plugin: &str, _key: &str) -> Result<(), DataError> {
        Err(DataError::NotHere)
    }
}
