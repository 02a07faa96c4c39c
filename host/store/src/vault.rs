//! The store's view of keys: the KEK keyring (reloaded from its provider when a version it
//! lacks shows up, e.g. during an online rotation) and a bounded cache of unwrapped data keys
//! as ready AES-GCM ciphers, so a hot path pays neither an unwrap nor a key schedule.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use aes_gcm::Aes256Gcm;

use super::StoreError;
use hearth_crypto::{KeyProvider, Keyring, SecretKey, unwrap_data_key};

/// How many unwrapped data keys are kept in memory (one per recently used patient).
const CACHE_CAPACITY: usize = 4096;

pub struct KeyVault {
    provider: Box<dyn KeyProvider>,
    keyring: RwLock<Arc<Keyring>>,
    ciphers: Mutex<HashMap<String, Arc<Aes256Gcm>>>,
}

impl KeyVault {
    /// Loads the keyring; fails with the provider's message when key material is missing or
    /// malformed.
    pub fn new(provider: Box<dyn KeyProvider>) -> Result<Self, hearth_crypto::KeyError> {
        let keyring = provider.load()?;
        Ok(KeyVault { provider, keyring: RwLock::new(Arc::new(keyring)), ciphers: Mutex::new(HashMap::new()) })
    }

    pub fn keyring(&self) -> Arc<Keyring> {
        self.keyring.read().expect("keyring lock").clone()
    }

    pub fn provider(&self) -> &dyn KeyProvider {
        self.provider.as_ref()
    }

    /// Re-reads the keyring from its provider (new versions appear during rotation).
    pub fn reload(&self) -> Result<Arc<Keyring>, StoreError> {
        let keyring = Arc::new(self.provider.load().map_err(StoreError::Keys)?);
        *self.keyring.write().expect("keyring lock") = keyring.clone();
        Ok(keyring)
    }

    /// The KEK of `version`, reloading the keyring once if this process does not have it yet.
    pub fn kek(&self, version: i64) -> Result<SecretKey, StoreError> {
        if let Some(kek) = self.keyring().get(version) {
            return Ok(kek.clone());
        }
        self.reload()?
            .get(version)
            .cloned()
            .ok_or_else(|| StoreError::KekMissing { version, provider: self.provider.describe() })
    }

    /// The cipher of data key `key_id`, from the cache or by unwrapping `wrapped`.
    pub fn cipher(&self, key_id: &str, kek_version: i64, wrapped: &[u8]) -> Result<Arc<Aes256Gcm>, StoreError> {
        if let Some(cipher) = self.ciphers.lock().expect("cipher cache lock").get(key_id) {
            return Ok(cipher.clone());
        }
        let kek = self.kek(kek_version)?;
        let data_key = unwrap_data_key(&kek, kek_version, key_id, wrapped).map_err(|_| {
            tracing::error!(key_id, kek_version, "INTEGRITY ALERT: a wrapped data key failed authentication");
            StoreError::Integrity
        })?;
        Ok(self.remember(key_id, &data_key))
    }

    /// Caches the cipher of a data key this process just created or unwrapped.
    pub fn remember(&self, key_id: &str, data_key: &SecretKey) -> Arc<Aes256Gcm> {
        let cipher = Arc::new(data_key.cipher());
        let mut cache = self.ciphers.lock().expect("cipher cache lock");
        if cache.len() >= CACHE_CAPACITY {
            // Cheap bounded eviction: drop an arbitrary half. Misses cost one unwrap (~µs).
            let victims: Vec<String> = cache.keys().take(CACHE_CAPACITY / 2).cloned().collect();
            for victim in victims {
                cache.remove(&victim);
            }
        }
        cache.insert(key_id.to_owned(), cipher.clone());
        cipher
    }

    /// Drops a data key from memory (it was destroyed).
    pub fn forget(&self, key_id: &str) {
        self.ciphers.lock().expect("cipher cache lock").remove(key_id);
    }
}
