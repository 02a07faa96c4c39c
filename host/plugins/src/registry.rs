//! The plugins in force on this host: the active, compiled version of each, swapped
//! atomically (a call holds an `Arc` to the version it started on, so in-flight calls finish
//! on the old version while new calls take the new one). Kept in step with the database,
//! which every host shares: notified at once on PostgreSQL (LISTEN/NOTIFY), and polling a
//! generation counter as a fallback.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use super::manifest::Manifest;
use super::runtime::{CompiledPlugin, PluginRuntime};
use super::signing::{TrustKey, signed_message, signer};
use hearth_store::{Store, StoreError, StoredComponent};

/// Latency histogram buckets: four per power of two of microseconds, up to about 70 s.
const LATENCY_BUCKETS: usize = 26 * 4;
/// Minutes of per-minute history kept.
const HISTORY_MINUTES: usize = 60;

/// Call statistics of one plugin on this host since it was loaded.
#[derive(Debug)]
pub struct CallStats {
    pub calls: AtomicU64,
    pub failures: AtomicU64,
    pub timeouts: AtomicU64,
    pub denials: AtomicU64,
    pub total_micros: AtomicU64,
    /// Call latencies, in quarter-octave buckets (see [`bucket_of`]).
    latency: [AtomicU64; LATENCY_BUCKETS],
    /// The last hour, one entry per minute that saw calls, oldest first.
    minutes: std::sync::Mutex<std::collections::VecDeque<MinuteStats>>,
}

/// What one plugin did during one minute on this host.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct MinuteStats {
    /// Minutes since the Unix epoch.
    pub minute: i64,
    pub calls: u64,
    pub failures: u64,
    pub timeouts: u64,
}

impl Default for CallStats {
    fn default() -> Self {
        CallStats {
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            timeouts: AtomicU64::new(0),
            denials: AtomicU64::new(0),
            total_micros: AtomicU64::new(0),
            latency: std::array::from_fn(|_| AtomicU64::new(0)),
            minutes: Default::default(),
        }
    }
}

/// The histogram bucket of a latency: `4 * log2(micros)`, rounded down.
fn bucket_of(micros: u64) -> usize {
    let micros = micros.max(1);
    let octave = 63 - micros.leading_zeros() as usize;
    // The two bits after the leading one say where in the octave it falls.
    let quarter =
        if octave >= 2 { ((micros >> (octave - 2)) & 3) as usize } else { (micros as usize) << (2 - octave) & 3 };
    (octave * 4 + quarter).min(LATENCY_BUCKETS - 1)
}

/// The upper bound of a bucket, in microseconds.
fn bucket_limit(bucket: usize) -> u64 {
    let (octave, quarter) = (bucket / 4, bucket % 4);
    ((1u64 << octave) * (5 + quarter as u64)) / 4
}

impl CallStats {
    pub fn record(&self, micros: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_micros.fetch_add(micros, Ordering::Relaxed);
        self.latency[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.in_minute(|m| m.calls += 1);
    }

    /// A call that trapped, timed out or answered malformed output.
    pub fn record_failure(&self, timed_out: bool) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        if timed_out {
            self.timeouts.fetch_add(1, Ordering::Relaxed);
        }
        self.in_minute(|m| {
            m.failures += 1;
            m.timeouts += u64::from(timed_out);
        });
    }

    fn in_minute(&self, change: impl FnOnce(&mut MinuteStats)) {
        let minute = hearth_fhir::instant::now_us() / 60_000_000;
        let mut minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        if minutes.back().is_none_or(|m| m.minute != minute) {
            minutes.push_back(MinuteStats { minute, ..MinuteStats::default() });
        }
        while minutes.front().is_some_and(|m| m.minute + HISTORY_MINUTES as i64 <= minute) {
            minutes.pop_front();
        }
        if let Some(current) = minutes.back_mut() {
            change(current);
        }
    }

    /// The minutes of the last hour that saw calls, oldest first.
    pub fn last_hour(&self) -> Vec<MinuteStats> {
        let now = hearth_fhir::instant::now_us() / 60_000_000;
        let minutes = self.minutes.lock().unwrap_or_else(|e| e.into_inner());
        minutes.iter().filter(|m| m.minute + HISTORY_MINUTES as i64 > now).copied().collect()
    }

    /// The latency below which `fraction` of the calls since loading finished, in
    /// microseconds (the upper bound of its histogram bucket, so at most 19% high).
    pub fn latency_quantile(&self, fraction: f64) -> Option<u64> {
        let counts: Vec<u64> = self.latency.iter().map(|c| c.load(Ordering::Relaxed)).collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let wanted = ((total as f64) * fraction).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (bucket, count) in counts.iter().enumerate() {
            seen += count;
            if seen >= wanted {
                return Some(bucket_limit(bucket));
            }
        }
        None
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
    /// Calls of this plugin that may run at once (see [`execution_slots`]).
    slots: tokio::sync::Semaphore,
}

/// Calls of one plugin that may run at once on this host: half the cores (at least one). A
/// plugin that burns its whole deadline on every call, or is flooded with requests, then
/// keeps the other half of the machine free for everything else; calls beyond that wait.
pub fn execution_slots() -> usize {
    std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
}

impl ActivePlugin {
    /// Version `seq` of plugin `name`, enabled, with fresh statistics.
    pub fn new(name: String, seq: i64, signed_by: Option<String>, compiled: CompiledPlugin) -> ActivePlugin {
        ActivePlugin {
            name,
            seq,
            enabled: AtomicBool::new(true),
            signed_by,
            needs_handoff: AtomicBool::new(false),
            compiled,
            stats: CallStats::default(),
            slots: tokio::sync::Semaphore::new(execution_slots()),
        }
    }

    /// A slot to run one call in, waited for at most the plugin's deadline: `None` when the
    /// plugin stayed busy that long (the caller fails closed).
    pub async fn slot(&self) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let wait = Duration::from_millis(self.compiled.manifest.limits().timeout_ms);
        tokio::time::timeout(wait, self.slots.acquire()).await.ok()?.ok()
    }
}

pub struct PluginRegistry {
    pub runtime: Arc<PluginRuntime>,
    store: Store,
    /// The keys plugin signatures must come from; empty: unsigned plugins load.
    trust_keys: Arc<Vec<TrustKey>>,
    active: RwLock<HashMap<String, Arc<ActivePlugin>>>,
    generation: AtomicI64,
    /// Serialises refreshes and installs, so a refresh that read the database just before an
    /// upload committed cannot put the older version back after the upload installed its own.
    changing: tokio::sync::Mutex<()>,
}

impl PluginRegistry {
    pub fn new(runtime: Arc<PluginRuntime>, store: Store, trust_keys: Arc<Vec<TrustKey>>) -> Self {
        PluginRegistry {
            runtime,
            store,
            trust_keys,
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

    pub fn trust_keys(&self) -> &Arc<Vec<TrustKey>> {
        &self.trust_keys
    }

    /// Which trust key signed stored version `seq` of `name`, checked now against the keys
    /// this server runs with: `Ok(Some(key))`, `Ok(None)` when no trust keys are configured
    /// (unsigned plugins load), `Err(reason)` when keys are configured and none verifies it
    /// (stored unsigned, or signed by a key no longer trusted).
    pub fn verify_stored(&self, stored: &StoredComponent) -> Result<Option<String>, String> {
        let manifest: Manifest = serde_json::from_str(&stored.manifest_json).map_err(|e| e.to_string())?;
        let message = signed_message(&stored.component, &manifest);
        match (&stored.signature, self.trust_keys.is_empty()) {
            (Some(signature), _) => match signer(&self.trust_keys, &message, signature) {
                Some(key) => Ok(Some(key.name.clone())),
                None if self.trust_keys.is_empty() => Ok(None),
                None => Err("its signature does not verify with any trusted plugin key".to_owned()),
            },
            (None, true) => Ok(None),
            (None, false) => Err("it was stored unsigned, and this server only loads signed plugins".to_owned()),
        }
    }

    /// Loads stored version `seq` of `name`; a version that no longer loads (e.g. after an
    /// engine upgrade refused it, or because no trusted key signed it) is logged and skipped,
    /// which makes its bindings fail closed.
    async fn reload(&self, name: &str, seq: i64) -> Result<Option<ActivePlugin>, StoreError> {
        let Some(stored) = self.store.plugin_component(name, seq).await? else {
            return Ok(None);
        };
        let signed_by = match self.verify_stored(&stored) {
            Ok(signed_by) => signed_by,
            Err(reason) => {
                tracing::error!(plugin = name, seq, %reason, "a stored plugin is not trusted; it does not load and its bindings deny");
                return Ok(None);
            }
        };
        let runtime = self.runtime.clone();
        let name_owned = name.to_owned();
        let loaded = tokio::task::spawn_blocking(move || {
            let manifest: Manifest = serde_json::from_str(&stored.manifest_json).map_err(|e| e.to_string())?;
            runtime.load(manifest, &stored.component).map_err(|e| e.to_string())
        })
        .await
        .unwrap_or_else(|e| Err(e.to_string()));
        match loaded {
            Ok(compiled) => {
                tracing::info!(plugin = name_owned, seq, "plugin loaded");
                Ok(Some(ActivePlugin::new(name_owned, seq, signed_by, compiled)))
            }
            Err(error) => {
                tracing::error!(plugin = name_owned, seq, %error, "a stored plugin does not load; its bindings deny");
                Ok(None)
            }
        }
    }

    /// Keeps this host in step with changes made through another: on PostgreSQL at once, by
    /// LISTEN/NOTIFY, and on every database by polling every `every` (which also covers
    /// notifications missed while the listening connection was down).
    pub fn spawn_refresher(self: &Arc<Self>, every: Duration) {
        let listening = Arc::downgrade(self);
        tokio::spawn(async move {
            let Some(registry) = listening.upgrade() else { return };
            let listener = registry.store.plugin_change_listener().await;
            drop(registry);
            let mut listener = match listener {
                Ok(Some(listener)) => listener,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, "cannot listen for plugin changes; polling only");
                    return;
                }
            };
            loop {
                // `recv` reconnects by itself after a lost connection.
                let received = listener.recv().await;
                let Some(registry) = listening.upgrade() else { return };
                match received {
                    Ok(_) => {
                        if let Err(error) = registry.refresh().await {
                            tracing::warn!(%error, "cannot load a notified plugin change; the poll will retry");
                        }
                    }
                    Err(error) => {
                        tracing::warn!(%error, "lost the plugin-change listener; retrying");
                        tokio::time::sleep(every).await;
                    }
                }
            }
        });
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

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn buckets_bound_their_latencies() {
        for micros in [1, 2, 3, 5, 7, 8, 9, 15, 100, 1000, 12_345, 999_999, 60_000_000] {
            let bucket = bucket_of(micros);
            assert!(bucket_limit(bucket) >= micros, "{micros} in bucket {bucket} (limit {})", bucket_limit(bucket));
            assert!(bucket_limit(bucket) as f64 <= micros as f64 * 1.25 + 1.0, "{micros}: {}", bucket_limit(bucket));
        }
    }

    #[test]
    fn quantiles_and_minutes_follow_the_calls() {
        let stats = CallStats::default();
        assert_eq!(stats.latency_quantile(0.5), None);
        for _ in 0..98 {
            stats.record(10);
        }
        stats.record(5_000);
        stats.record(5_000);
        stats.record_failure(true);
        let p50 = stats.latency_quantile(0.5).unwrap();
        assert!((10..=13).contains(&p50), "{p50}");
        let p99 = stats.latency_quantile(0.99).unwrap();
        assert!((5_000..=6_250).contains(&p99), "{p99}");
        let hour = stats.last_hour();
        assert_eq!(hour.len(), 1);
        assert_eq!((hour[0].calls, hour[0].failures, hour[0].timeouts), (100, 1, 1));
    }
}
