//! The WebAssembly runtime: one wasmtime `Engine` per process, linkers built once per world,
//! components compiled once (and kept on disk, so a restart does not compile again), and a
//! fresh sandboxed instance for every call, with a deadline, a memory cap and only the
//! capabilities the world and the manifest grant.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hearth_crypto::hex;
use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, StoreLimits, StoreLimitsBuilder};
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::bindings::integration::{Integration, IntegrationPre};
use super::bindings::policy::{Policy, PolicyPre};
use super::bindings::types::{ChangeEvent, Decision, Issue, Request, SubjectResource};
use super::manifest::{Isolation, MAX_MEMORY_MIB, Manifest, World};
use crate::host_data::HostData;

/// How often the epoch advances; deadlines are counted in these ticks.
const EPOCH_TICK: Duration = Duration::from_millis(2);
/// How many instances may be alive at once, in calls and idle (virtual address space is
/// reserved for each; physical memory only for what instances touch).
const MAX_CONCURRENT_INSTANCES: u32 = 512;
/// Largest wasm stack; deeper recursion traps. Host threads have 2 MiB.
const MAX_WASM_STACK: usize = 512 * 1024;

/// Why a call produced no usable answer. The details go to the log, never to a client.
#[derive(Debug, thiserror::Error)]
pub enum CallFailure {
    #[error("exceeded its {0} ms deadline")]
    Timeout(u64),
    #[error("trapped: {0}")]
    Trap(String),
    #[error("could not be instantiated: {0}")]
    Instantiate(String),
    #[error("returned malformed output: {0}")]
    Malformed(String),
}

impl CallFailure {
    /// A short label for metrics and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            CallFailure::Timeout(_) => "timeout",
            CallFailure::Trap(_) => "trap",
            CallFailure::Instantiate(_) => "instantiate",
            CallFailure::Malformed(_) => "malformed",
        }
    }
}

/// What a component failed to be at load time.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the bytes are not a valid WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component does not fit the {world} world of hearth:plugin@0.1.0: {reason}")]
    WrongWorld { world: &'static str, reason: String },
}

/// Services host functions reach: the data (lookups, key-value) and outbound HTTP.
pub struct HostServices {
    /// A server's database ([`StoreData`](crate::host_data::StoreData)), or recorded answers
    /// ([`Fixtures`](crate::host_data::Fixtures): plugin tests, benchmarks).
    pub data: Arc<dyn HostData>,
    pub tokio: tokio::runtime::Handle,
    pub http: reqwest::Client,
}

/// The store limits of one instance, recording the most linear memory it ever held.
struct MeteredLimits {
    limits: StoreLimits,
    peak_memory: usize,
}

impl wasmtime::ResourceLimiter for MeteredLimits {
    fn memory_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = self.limits.memory_growing(current, desired, maximum)?;
        if allowed {
            self.peak_memory = self.peak_memory.max(desired);
        }
        Ok(allowed)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.memory_grow_failed(error)
    }

    fn table_growing(&mut self, current: usize, desired: usize, maximum: Option<usize>) -> wasmtime::Result<bool> {
        self.limits.table_growing(current, desired, maximum)
    }

    fn table_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        self.limits.table_grow_failed(error)
    }

    fn instances(&self) -> usize {
        self.limits.instances()
    }

    fn tables(&self) -> usize {
        self.limits.tables()
    }

    fn memories(&self) -> usize {
        self.limits.memories()
    }
}

/// The state of one call's store.
pub struct CallState {
    wasi: WasiCtx,
    table: ResourceTable,
    limits: MeteredLimits,
    pub(super) plugin: Arc<Manifest>,
    pub(super) services: Arc<HostServices>,
    pub(super) deadline: Instant,
}

impl WasiView for CallState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

/// A clock stopped at the Unix epoch: WASI's clocks are not part of the contract (the policy
/// world's `clock` interface is), and a precise clock would help timing side channels.
struct StoppedClock;

impl wasmtime_wasi::HostWallClock for StoppedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }
    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl wasmtime_wasi::HostMonotonicClock for StoppedClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }
    fn now(&self) -> u64 {
        0
    }
}

/// A component ready to instantiate, with the manifest it was loaded under.
pub struct CompiledPlugin {
    pub manifest: Arc<Manifest>,
    /// Hex SHA-256 of the component bytes.
    pub sha256: String,
    /// The component's size in bytes.
    pub size: usize,
    ready: Ready,
    /// Instances that finished a call cleanly, ready for the next (`isolation = "reuse"`).
    idle: Mutex<Vec<Idle>>,
    /// The most linear memory (bytes) any instance of this plugin has held.
    peak_memory: std::sync::atomic::AtomicUsize,
}

impl CompiledPlugin {
    /// The most linear memory (bytes) any instance of this plugin has held so far.
    pub fn peak_memory(&self) -> usize {
        self.peak_memory.load(Ordering::Relaxed)
    }
}

enum Ready {
    Policy(PolicyPre<CallState>),
    Integration(IntegrationPre<CallState>),
}

/// A live instance between calls.
struct Idle {
    store: wasmtime::Store<CallState>,
    instance: Instance,
    calls: u32,
}

enum Instance {
    Policy(Policy),
    Integration(Integration),
}

/// Calls one instance serves before it is retired (bounds what a plugin can accumulate).
const MAX_CALLS_PER_INSTANCE: u32 = 1_000;
/// Idle instances kept per plugin (more concurrent calls instantiate fresh ones).
const MAX_IDLE_PER_PLUGIN: usize = 8;

pub struct PluginRuntime {
    engine: Engine,
    policy_linker: Linker<CallState>,
    integration_linker: Linker<CallState>,
    services: Arc<HostServices>,
    /// Compiled artifacts by component hash (`None`: compile every time, e.g. in tests).
    cache_dir: Option<PathBuf>,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for PluginRuntime {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

impl PluginRuntime {
    pub fn new(services: HostServices, cache_dir: Option<PathBuf>) -> Result<Self, String> {
        let mut pool = PoolingAllocationConfig::default();
        pool.total_component_instances(MAX_CONCURRENT_INSTANCES)
            .total_core_instances(MAX_CONCURRENT_INSTANCES * 8)
            .total_memories(MAX_CONCURRENT_INSTANCES * 2)
            .total_tables(MAX_CONCURRENT_INSTANCES * 8)
            .max_tables_per_module(4)
            .max_memories_per_module(2)
            .max_memory_size((MAX_MEMORY_MIB as usize) << 20)
            .max_unused_warm_slots(MAX_CONCURRENT_INSTANCES / 4);
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .max_wasm_stack(MAX_WASM_STACK)
            .memory_init_cow(true)
            .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&config).map_err(|e| format!("cannot start the WebAssembly engine: {e}"))?;

        let mut policy_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut policy_linker).map_err(|e| e.to_string())?;
        timers_within_deadline(&mut policy_linker).map_err(|e| e.to_string())?;
        Policy::add_to_linker::<_, HasSelf<_>>(&mut policy_linker, |state| state).map_err(|e| e.to_string())?;
        let mut integration_linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut integration_linker).map_err(|e| e.to_string())?;
        timers_within_deadline(&mut integration_linker).map_err(|e| e.to_string())?;
        Integration::add_to_linker::<_, HasSelf<_>>(&mut integration_linker, |state| state)
            .map_err(|e| e.to_string())?;

        let stop_ticker = Arc::new(AtomicBool::new(false));
        let (ticking_engine, stop) = (engine.clone(), stop_ticker.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking_engine.increment_epoch();
                }
            })
            .map_err(|e| format!("cannot start the plugin deadline ticker: {e}"))?;
        if let Some(dir) = &cache_dir {
            std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        }
        Ok(PluginRuntime {
            engine,
            policy_linker,
            integration_linker,
            services: Arc::new(services),
            cache_dir,
            stop_ticker,
        })
    }

    /// Compiles (or finds compiled) `bytes` and checks it implements the manifest's world with
    /// no import beyond what that world grants.
    pub fn load(&self, manifest: Manifest, bytes: &[u8]) -> Result<CompiledPlugin, LoadError> {
        let sha256 = hex(&Sha256::digest(bytes));
        let component = self.component(bytes, &sha256)?;
        let world = manifest.world.as_str();
        let wrong = |reason: String| LoadError::WrongWorld { world, reason };
        let ready = match manifest.world {
            World::Policy => {
                let pre = self.policy_linker.instantiate_pre(&component).map_err(|e| wrong(e.to_string()))?;
                Ready::Policy(PolicyPre::new(pre).map_err(|e| wrong(e.to_string()))?)
            }
            World::Integration => {
                let pre = self.integration_linker.instantiate_pre(&component).map_err(|e| wrong(e.to_string()))?;
                Ready::Integration(IntegrationPre::new(pre).map_err(|e| wrong(e.to_string()))?)
            }
        };
        Ok(CompiledPlugin {
            manifest: Arc::new(manifest),
            sha256,
            size: bytes.len(),
            ready,
            idle: Mutex::default(),
            peak_memory: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    fn component(&self, bytes: &[u8], sha256: &str) -> Result<Component, LoadError> {
        let invalid = |e: wasmtime::Error| LoadError::Invalid(e.to_string());
        let Some(dir) = &self.cache_dir else {
            return Component::new(&self.engine, bytes).map_err(invalid);
        };
        // The artifact name binds the component hash and this engine's configuration and
        // version, so an upgrade or a config change never loads an incompatible artifact.
        let engine_hash = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            self.engine.precompile_compatibility_hash().hash(&mut hasher);
            hasher.finish()
        };
        let path = dir.join(format!("{sha256}-{engine_hash:016x}.cwasm"));
        if path.exists() {
            // SAFETY: the artifact was written by this process's `precompile_component` into
            // the server's private data directory; whoever can replace it can also replace
            // the server's keys and binary.
            match unsafe { Component::deserialize_file(&self.engine, &path) } {
                Ok(component) => return Ok(component),
                Err(error) => tracing::warn!(%error, path = %path.display(), "discarding an unusable compiled plugin"),
            }
        }
        let compiled = self.engine.precompile_component(bytes).map_err(invalid)?;
        let temporary = path.with_extension("tmp");
        if let Err(error) = std::fs::write(&temporary, &compiled).and_then(|()| std::fs::rename(&temporary, &path)) {
            tracing::warn!(%error, "cannot keep a compiled plugin on disk; it will be compiled again on restart");
        }
        // SAFETY: these bytes came from `precompile_component` on this engine just now.
        unsafe { Component::deserialize(&self.engine, &compiled) }.map_err(invalid)
    }

    fn new_store(&self, plugin: &CompiledPlugin) -> wasmtime::Store<CallState> {
        let limits = plugin.manifest.limits();
        let wasi = WasiCtxBuilder::new().wall_clock(StoppedClock).monotonic_clock(StoppedClock).build();
        let state = CallState {
            wasi,
            table: ResourceTable::new(),
            limits: MeteredLimits {
                limits: StoreLimitsBuilder::new()
                    .memory_size((limits.memory_mib as usize) << 20)
                    .instances(64)
                    .memories(8)
                    .tables(64)
                    .table_elements(200_000)
                    .trap_on_grow_failure(true)
                    .build(),
                peak_memory: 0,
            },
            plugin: plugin.manifest.clone(),
            services: self.services.clone(),
            deadline: Instant::now(),
        };
        let mut store = wasmtime::Store::new(&self.engine, state);
        store.limiter(|state| &mut state.limits);
        store.epoch_deadline_trap();
        store
    }

    /// Runs `call` on an instance of `plugin`: an idle one when the plugin allows reuse, else
    /// a fresh one. The deadline is armed for this call alone. An instance that failed in any
    /// way (trap, deadline, memory) is dropped, never reused.
    fn with_instance<R>(
        &self,
        plugin: &CompiledPlugin,
        call: impl FnOnce(&mut wasmtime::Store<CallState>, &Instance) -> wasmtime::Result<R>,
    ) -> Result<R, CallFailure> {
        let reuse = plugin.manifest.isolation == Isolation::Reuse;
        let idle = if reuse { plugin.idle.lock().unwrap_or_else(|e| e.into_inner()).pop() } else { None };
        let mut idle = match idle {
            Some(idle) => idle,
            None => {
                let mut store = self.new_store(plugin);
                // Instantiation runs guest start-up code: it gets the same deadline as a call.
                arm(&mut store, &plugin.manifest);
                let instance = match &plugin.ready {
                    Ready::Policy(pre) => pre.instantiate(&mut store).map(Instance::Policy),
                    Ready::Integration(pre) => pre.instantiate(&mut store).map(Instance::Integration),
                }
                .map_err(|e| failure(&plugin.manifest, e))?;
                Idle { store, instance, calls: 0 }
            }
        };
        arm(&mut idle.store, &plugin.manifest);
        let result = call(&mut idle.store, &idle.instance).map_err(|e| failure(&plugin.manifest, e));
        plugin.peak_memory.fetch_max(idle.store.data().limits.peak_memory, Ordering::Relaxed);
        let result = result?;
        idle.calls += 1;
        if reuse && idle.calls < MAX_CALLS_PER_INSTANCE {
            let mut pool = plugin.idle.lock().unwrap_or_else(|e| e.into_inner());
            if pool.len() < MAX_IDLE_PER_PLUGIN {
                pool.push(idle);
            }
        }
        Ok(result)
    }

    /// `authorize`; the answer has one decision per resource.
    pub fn authorize(
        &self,
        plugin: &CompiledPlugin,
        request: &Request,
        resources: &[SubjectResource],
    ) -> Result<Vec<Decision>, CallFailure> {
        let decisions = self.with_instance(plugin, |store, instance| match instance {
            Instance::Policy(policy) => policy.call_authorize(store, request, resources),
            Instance::Integration(_) => Err(wasmtime::format_err!("not a policy plugin")),
        })?;
        if decisions.len() != resources.len() {
            return Err(CallFailure::Malformed(format!(
                "{} decisions for {} resources",
                decisions.len(),
                resources.len()
            )));
        }
        for decision in &decisions {
            if let Decision::AllowWith(obligations) = decision
                && (obligations.redact.len() > 1_000 || obligations.labels.len() > 100)
            {
                return Err(CallFailure::Malformed("more than 1,000 redactions or 100 labels".into()));
            }
        }
        Ok(decisions)
    }

    /// `validate`.
    pub fn validate(
        &self,
        plugin: &CompiledPlugin,
        request: &Request,
        resource: &SubjectResource,
    ) -> Result<Vec<Issue>, CallFailure> {
        let issues = self.with_instance(plugin, |store, instance| match instance {
            Instance::Policy(policy) => policy.call_validate(store, request, resource),
            Instance::Integration(_) => Err(wasmtime::format_err!("not a policy plugin")),
        })?;
        if issues.len() > 1_000 {
            return Err(CallFailure::Malformed(format!("{} issues", issues.len())));
        }
        Ok(issues)
    }

    /// `on-change`. `Ok(Err(reason))` is the plugin asking for a retry.
    pub fn on_change(
        &self,
        plugin: &CompiledPlugin,
        event: &ChangeEvent,
        config: &str,
    ) -> Result<Result<(), String>, CallFailure> {
        self.with_instance(plugin, |store, instance| match instance {
            Instance::Integration(integration) => integration.call_on_change(store, event, config),
            Instance::Policy(_) => Err(wasmtime::format_err!("not an integration plugin")),
        })
    }

    /// `convert`.
    pub fn convert(
        &self,
        plugin: &CompiledPlugin,
        body: &[u8],
        media_type: &str,
        config: &str,
    ) -> Result<Result<Vec<String>, String>, CallFailure> {
        self.with_instance(plugin, |store, instance| match instance {
            Instance::Integration(integration) => integration.call_convert(store, body, media_type, config),
            Instance::Policy(_) => Err(wasmtime::format_err!("not an integration plugin")),
        })
    }
}

/// The WASI version whose monotonic-clock functions [`timers_within_deadline`] replaces: the
/// one wasmtime-wasi registers (a test puts a sleeping plugin behind a deadline, so a mismatch
/// after an upgrade shows).
const WASI_CLOCKS: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// A WASI timer that fires at an instant within the call's deadline.
struct Timer(tokio::time::Instant);

impl wasmtime_wasi::p2::Pollable for Timer {
    fn ready<'a, 'b>(&'a mut self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'b>>
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(tokio::time::sleep_until(self.0))
    }
}

/// Replaces WASI's timers (`subscribe-duration`, `subscribe-instant`: what `sleep` becomes).
/// Waiting on a timer blocks inside a host call, where the epoch deadline cannot interrupt
/// the guest, so wasmtime-wasi's own would let a plugin hold a thread as long as it liked.
/// Here a timer that would fire after the call's deadline ends the call at once, as a
/// timeout; one within it waits. (The plugin's clocks are stopped at zero, so an instant is
/// also a duration from now.)
fn timers_within_deadline(linker: &mut Linker<CallState>) -> wasmtime::Result<()> {
    use wasmtime::component::Resource;
    use wasmtime_wasi::p2::DynPollable;
    fn timer(state: &mut CallState, nanos: u64) -> wasmtime::Result<(Resource<DynPollable>,)> {
        let fires = Instant::now().checked_add(Duration::from_nanos(nanos));
        match fires {
            Some(at) if at <= state.deadline => {
                let timer = state.table.push(Timer(tokio::time::Instant::from_std(at)))?;
                Ok((wasmtime_wasi::p2::subscribe(&mut state.table, timer)?,))
            }
            _ => Err(wasmtime::Error::new(wasmtime::Trap::Interrupt)),
        }
    }
    linker.allow_shadowing(true);
    let mut clocks = linker.instance(WASI_CLOCKS)?;
    clocks.func_wrap("subscribe-duration", |mut store, (nanos,): (u64,)| timer(store.data_mut(), nanos))?;
    clocks.func_wrap("subscribe-instant", |mut store, (when,): (u64,)| timer(store.data_mut(), when))?;
    linker.allow_shadowing(false);
    Ok(())
}

/// Sets the deadline of the next call on `store`: epoch ticks for the guest, and the instant
/// host functions (HTTP) measure their remaining time against.
fn arm(store: &mut wasmtime::Store<CallState>, manifest: &Manifest) {
    let timeout_ms = manifest.limits().timeout_ms;
    store.data_mut().deadline = Instant::now() + Duration::from_millis(timeout_ms);
    store.set_epoch_deadline(timeout_ms.div_ceil(EPOCH_TICK.as_millis() as u64).max(1));
}

/// Classifies a wasmtime error from instantiation or a call.
fn failure(manifest: &Manifest, error: wasmtime::Error) -> CallFailure {
    match error.downcast_ref::<wasmtime::Trap>() {
        Some(wasmtime::Trap::Interrupt) => CallFailure::Timeout(manifest.limits().timeout_ms),
        Some(trap) => CallFailure::Trap(format!("{trap}: {error:#}")),
        None if format!("{error:#}").contains("resource limit exceeded")
            || format!("{error:#}").contains("forcing trap when growing memory") =>
        {
            CallFailure::Trap(format!("memory limit: {error:#}"))
        }
        None => CallFailure::Instantiate(format!("{error:#}")),
    }
}
