//! The plugins in force on this host: the active, compiled version of each, swapped
//! atomically (a call holds an `Arc` to the version it started on, so in-flight calls finish
//! on the old version while new calls take the new one). Kept in step with the database,
//! which every host shares, by polling a generation counter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::manifest::Manifest;
use super::runtime::{CompiledPlugin, PluginRuntime};
use crate::store::{Store, StoreError};

/// Call statistics of one plugin on this host since it was loaded.
#[derive(Debug, Default)]
pub struct CallStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub denials: AtomicU64,
    pub total_micros: AtomicU64,
}

impl CallStats {
    pub fn record(&self, micros: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
    }
}

/// One plugin as loaded on this host.
pub struct ActivePlugin {
    pub name: String,
    pub seq: i64,
    /// Disabled plugins stay loaded (for a quick re-enable) but every call fails closed.
    pub enabled: AtomicBool,
    pub signed_by: Option<String>,
    /// Learned at run time: this plugin's calls cannot run inline on a runtime worker.
    pub needs_handoff: AtomicBool,
    pub compiled: CompiledPlugin,
    pub stats: CallStats,
}

pub struct PluginRegistry {
    pub runtime: Arc<PluginRuntime>,
    store: Store,
    active: RwLock<HashMap<String, Arc<ActivePlugin>>>,
    generation: AtomicI64,
    /// Serialises refreshes and installs, so a refresh that read the database just before an
    /// upload committed cannot put the older version back after the upload installed its own.
    changing: tokio::sync::Mutex<()>,
}

impl PluginRegistry {
    pub fn new(runtime: Arc<PluginRuntime>, store: Store) -> Self {
        PluginRegistry {
            runtime,
            store,
            active: RwLock::default(),
            generation: AtomicI64::new(-1),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// The active version of `name`, if loaded.
    pub fn get(&self, name: &str) -> Option<Arc<ActivePlugin>> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    pub fn all(&self) -> Vec<Arc<ActivePlugin>> {
        let mut all: Vec<_> = self.active.read().unwrap_or_else(|e| e.into_inner()).values().cloned().collect();
        all.sort_by(|a, b| a.name.cmp(&b.name));
        all
    }

    /// Puts a freshly compiled version in force (after it was stored).
    pub async fn install(&self, plugin: ActivePlugin) {
        let _changing = self.changing.lock().await;
        self.put(plugin);
    }

    fn put(&self, plugin: ActivePlugin) {
        let name = plugin.name.clone();
        self.active.write().unwrap_or_else(|e| e.into_inner()).insert(name, Arc::new(plugin));
    }

    /// Brings this host in step with the database: loads what changed, drops what was
    /// removed. Cheap when nothing changed (one query).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        let _changing = self.changing.lock().await;
        let generation = self.store.plugin_generation().await?;
        if generation == self.generation.load(Ordering::Acquire) {
            return Ok(());
        }
        let rows = self.store.plugins().await?;
        for row in &rows {
            match self.get(&row.name) {
                Some(p) if p.seq == row.active_seq => p.enabled.store(row.enabled, Ordering::Release),
                _ => {
                    if let Some(loaded) = self.reload(&row.name, row.active_seq).await? {
                        loaded.enabled.store(row.enabled, Ordering::Release);
                        self.put(loaded);
                    }
                }
            }
        }
        {
            let mut active = self.active.write().unwrap_or_else(|e| e.into_inner());
            active.retain(|name, _| rows.iter().any(|r| &r.name == name));
        }
        self.generation.store(generation, Ordering::Release);
        Ok(())
    }

    /// Loads stored version `seq` of `name`; a version that no longer loads (e.g. after an
    /// engine upgrade refused it) is logged and skipped, which makes its bindings fail closed.
    async fn reload(&self, name: &str, seq: i64) -> Result<Option<ActivePlugin>, StoreError> {
        let Some((manifest_json, component, signed_by)) = self.store.plugin_component(name, seq).await? else {
            return Ok(None);
        };
        let runtime = self.runtime.clone();
        let name_owned = name.to_owned();
        let loaded = tokio::task::spawn_blocking(move || {
            let manifest: Manifest = serde_json::from_str(&manifest_json).map_err(|e| e.to_string())?;
            runtime.load(manifest, &component).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match loaded {
            Ok(compiled) => {
                tracing::info!(plugin = name_owned, seq, "plugin loaded");
                Ok(Some(ActivePlugin {
                    name: name_owned,
                    seq,
                    enabled: AtomicBool::new(true),
                    signed_by,
                    needs_handoff: AtomicBool::new(false),
                    compiled,
                    stats: CallStats::default(),
                }))
            }
            Err(error) => {
                tracing::error!(plugin = name_owned, seq, %error, "a stored plugin does not load; its bindings deny");
                Ok(None)
            }
        }
    }

    /// Polls the database every `every` so changes made through another host take effect here.
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let registry = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let Some(registry) = registry.upgrade() else { return };
                if let Err(error) = registry.refresh().await {
                    tracing::warn!(%error, "cannot check the database for plugin changes; will retry");
                }
            }
        });
    }
}
