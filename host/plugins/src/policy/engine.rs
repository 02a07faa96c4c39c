//! Runs the bound policy plugins for a request: each `enforce` binding in order, deny
//! overriding allow, obligations merged; `shadow` bindings are evaluated off the request path
//! and only logged and counted. Any failure of an enforcing plugin (trap, deadline, memory,
//! malformed answer, plugin missing or disabled) denies: the engine fails closed.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use super::redact::Label;
use super::{Binding, BindingError, BindingSet, Mode, PolicyInteraction};
use crate::bindings::types::{self, Decision, Issue, Request, SubjectResource};
use crate::{ActivePlugin, PluginRegistry, World};

/// Who is asking, as plugins see it.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub subject: String,
    pub scopes: Vec<String>,
    pub roles: Vec<String>,
    pub purpose_of_use: Option<String>,
    pub break_glass_reason: Option<String>,
    pub patient: Option<String>,
}

/// The combined decision for one resource.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow,
    Deny { plugin: String, reason: String },
    AllowWith { redact: Vec<String>, labels: Vec<Label> },
}

impl Verdict {
    fn kind(&self) -> &'static str {
        match self {
            Verdict::Allow => "allow",
            Verdict::Deny { .. } => "deny",
            Verdict::AllowWith { .. } => "allow-with-obligations",
        }
    }

    /// Deny overrides; obligations accumulate.
    pub fn combine(&mut self, plugin: &str, decision: Decision) {
        match (&mut *self, decision) {
            (Verdict::Deny { .. }, _) | (_, Decision::Allow) => {}
            (_, Decision::Deny(reason)) => *self = Verdict::Deny { plugin: plugin.to_owned(), reason },
            (Verdict::Allow, Decision::AllowWith(o)) => {
                *self = Verdict::AllowWith { redact: o.redact, labels: labels(o.labels) };
            }
            (Verdict::AllowWith { redact, labels: l }, Decision::AllowWith(o)) => {
                redact.extend(o.redact);
                l.extend(labels(o.labels));
            }
        }
    }
}

fn labels(codings: Vec<types::Coding>) -> Vec<Label> {
    codings.into_iter().map(|c| (c.system, c.code, c.display)).collect()
}

/// Shadow-mode results per plugin on this host: how often it was asked and how often it
/// disagreed with what was enforced, by resource type and interaction and by minute, with the
/// latest disagreements (resource ids only, never content).
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ShadowCounts {
    pub evaluated: u64,
    pub differed: u64,
    pub failed: u64,
    /// `(resource type, interaction)` -> (evaluated, differed).
    #[serde(skip)]
    pub by_kind: std::collections::BTreeMap<(String, &'static str), (u64, u64)>,
    /// The last hour, oldest first: (minute since the epoch, evaluated, differed).
    #[serde(skip)]
    pub minutes: VecDeque<(i64, u64, u64)>,
    /// The latest disagreements, newest last.
    #[serde(skip)]
    pub samples: VecDeque<ShadowSample>,
}

/// One request a shadow binding would have answered differently.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ShadowSample {
    pub at_us: i64,
    pub binding: String,
    pub resource_type: String,
    pub id: Option<String>,
    pub interaction: &'static str,
    pub would: &'static str,
    pub enforced: &'static str,
}

/// Disagreements kept per plugin.
/// The outbox consumer that matches a change against the Subscriptions watching its type: a
/// create or update of a watched type gets an outbox row for it (the server's `subscriptions`
/// module consumes them).
pub const SUBSCRIPTION_FAN_OUT: &str = "$subscriptions";

const SHADOW_SAMPLES: usize = 50;

impl ShadowCounts {
    fn note(&mut self, res_type: &str, interaction: PolicyInteraction, differed: bool) {
        let kind = self.by_kind.entry((res_type.to_owned(), interaction.as_str())).or_default();
        kind.0 += 1;
        kind.1 += u64::from(differed);
        let minute = hearth_fhir::instant::now_us() / 60_000_000;
        if self.minutes.back().is_none_or(|m| m.0 != minute) {
            self.minutes.push_back((minute, 0, 0));
        }
        while self.minutes.front().is_some_and(|m| m.0 + 60 <= minute) {
            self.minutes.pop_front();
        }
        if let Some(current) = self.minutes.back_mut() {
            current.1 += 1;
            current.2 += u64::from(differed);
        }
    }
}

/// What one request runs: the enforcing bindings with their plugins, and the shadow ones.
pub struct Plan {
    enforce: Vec<(Binding, Option<Arc<ActivePlugin>>)>,
    shadow: Vec<Binding>,
}

pub struct PolicyEngine {
    pub registry: Arc<PluginRegistry>,
    bindings: RwLock<Arc<BindingSet>>,
    dir: Option<PathBuf>,
    shadow: Arc<Mutex<HashMap<String, ShadowCounts>>>,
    pub denials: AtomicU64,
    subscribed: RwLock<HashSet<String>>,
}

/// The message a client sees when an enforcing plugin could not decide.
const FAILED_CLOSED: &str =
    "could not reach a decision, so access is denied; the failure is logged for the administrator";

impl PolicyEngine {
    /// Reads the bindings in `dir` (none when `dir` is `None`).
    pub fn new(registry: Arc<PluginRegistry>, dir: Option<PathBuf>) -> Result<Self, BindingError> {
        let bindings = match &dir {
            Some(dir) => BindingSet::load_dir(dir)?,
            None => BindingSet::default(),
        };
        Ok(PolicyEngine {
            registry,
            bindings: RwLock::new(Arc::new(bindings)),
            dir,
            shadow: Arc::default(),
            denials: AtomicU64::new(0),
            subscribed: RwLock::default(),
        })
    }

    pub fn bindings(&self) -> Arc<BindingSet> {
        self.bindings.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-reads the policies folder; on any error the bindings in force stay as they were.
    pub fn reload(&self) -> Result<Arc<BindingSet>, BindingError> {
        let Some(dir) = &self.dir else { return Ok(self.bindings()) };
        let fresh = Arc::new(BindingSet::load_dir(dir)?);
        *self.bindings.write().unwrap_or_else(|e| e.into_inner()) = fresh.clone();
        tracing::info!(bindings = fresh.bindings.len(), "policy bindings reloaded");
        Ok(fresh)
    }

    /// Switches one binding between enforce and shadow in its policies file, then reloads.
    pub fn set_mode(&self, source: &str, mode: Mode) -> Result<Arc<BindingSet>, BindingError> {
        let Some(dir) = &self.dir else {
            return Err(BindingError {
                file: source.to_owned(),
                message: "this server was started without a policies folder (--policies)".into(),
            });
        };
        super::set_mode_in_folder(dir, source, mode)?;
        self.reload()
    }

    /// Everything shadow bindings recorded on this host, by plugin.
    pub fn shadow_report(&self) -> Vec<(String, ShadowCounts)> {
        let counts = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = counts.iter().map(|(k, c)| (k.clone(), c.clone())).collect();
        rows.sort_by(|a, b| a.0.cmp(&b.0));
        rows
    }

    pub fn shadow_counts(&self) -> Vec<(String, u64, u64, u64)> {
        let counts = self.shadow.lock().unwrap_or_else(|e| e.into_inner());
        let mut rows: Vec<_> = counts.iter().map(|(k, c)| (k.clone(), c.evaluated, c.differed, c.failed)).collect();
        rows.sort();
        rows
    }

    /// Whether a binding is an integration (its plugin is a loaded integration plugin);
    /// anything else, including a plugin that is not loaded, is treated as a policy.
    fn is_integration(&self, binding: &Binding) -> bool {
        self.registry.get(&binding.plugin).is_some_and(|p| p.compiled.manifest.world == World::Integration)
    }

    /// The policy bindings that apply to one type and interaction, with their plugins as
    /// loaded now; `None` when nothing gates it. Computed once per request.
    pub fn plan(&self, res_type: &str, interaction: PolicyInteraction) -> Option<Plan> {
        let bindings = self.bindings();
        let mut plan = Plan { enforce: Vec::new(), shadow: Vec::new() };
        for binding in bindings.matching(res_type, interaction) {
            let plugin = self.registry.get(&binding.plugin);
            if plugin.as_ref().is_some_and(|p| p.compiled.manifest.world == World::Integration) {
                continue;
            }
            match binding.mode {
                Mode::Enforce => plan.enforce.push((binding.clone(), plugin)),
                Mode::Shadow => plan.shadow.push(binding.clone()),
            }
        }
        (!plan.enforce.is_empty() || !plan.shadow.is_empty()).then_some(plan)
    }

    /// Integration plugins to notify of a committed change.
    /// (And the Subscriptions' matcher, when an active Subscription watches the type.)
    pub fn integrations_for(&self, res_type: &str, interaction: PolicyInteraction) -> Vec<String> {
        let mut names: Vec<String> = self
            .bindings()
            .matching(res_type, interaction)
            .filter(|b| self.is_integration(b))
            .map(|b| b.plugin.clone())
            .collect();
        names.dedup();
        let watched = self.subscribed.read().unwrap_or_else(|e| e.into_inner()).contains(res_type);
        if watched && matches!(interaction, PolicyInteraction::Create | PolicyInteraction::Update) {
            names.push(SUBSCRIPTION_FAN_OUT.to_owned());
        }
        names
    }

    /// The resource types active Subscriptions watch (kept current by the subscription refresher).
    pub fn set_subscribed(&self, types: HashSet<String>) {
        *self.subscribed.write().unwrap_or_else(|e| e.into_inner()) = types;
    }

    /// One verdict per resource (all of `res_type`), by the bindings of `plan`.
    pub async fn authorize(
        &self,
        caller: &Caller,
        plan: &Plan,
        res_type: &str,
        interaction: PolicyInteraction,
        resources: Vec<SubjectResource>,
    ) -> Vec<Verdict> {
        let plugins = &plan.enforce;
        let principal = principal(caller);
        let resources = Arc::new(resources);
        let slots = take_slots(plugins).await;
        let verdicts = if plugins.is_empty() {
            vec![Verdict::Allow; resources.len()]
        } else if let Err(busy) = &slots {
            let reason = format!("policy '{busy}' {FAILED_CLOSED}");
            vec![Verdict::Deny { plugin: busy.clone(), reason }; resources.len()]
        } else {
            let registry = &self.registry;
            sandboxed(plugins, || {
                let mut verdicts = vec![Verdict::Allow; resources.len()];
                for (binding, plugin) in plugins {
                    match evaluate(registry, plugin.as_deref(), binding, &principal, interaction, &resources) {
                        Ok(decisions) => {
                            for (verdict, decision) in verdicts.iter_mut().zip(decisions) {
                                verdict.combine(&binding.plugin, decision);
                            }
                        }
                        Err(()) => {
                            let reason = format!("policy '{}' {FAILED_CLOSED}", binding.plugin);
                            verdicts.fill(Verdict::Deny { plugin: binding.plugin.clone(), reason });
                            break;
                        }
                    }
                    if verdicts.iter().all(|v| matches!(v, Verdict::Deny { .. })) {
                        break;
                    }
                }
                verdicts
            })
            .unwrap_or_else(|| {
                vec![Verdict::Deny { plugin: "engine".into(), reason: FAILED_CLOSED.into() }; resources.len()]
            })
        };
        drop(slots);
        let denied = verdicts.iter().filter(|v| matches!(v, Verdict::Deny { .. })).count();
        self.denials.fetch_add(denied as u64, Ordering::Relaxed);
        if !plan.shadow.is_empty() {
            self.run_shadow(
                plan.shadow.clone(),
                principal,
                res_type.to_owned(),
                interaction,
                resources,
                verdicts.clone(),
            );
        }
        verdicts
    }

    /// Shadow bindings run after the answer is decided, off the request's path.
    fn run_shadow(
        &self,
        shadow: Vec<Binding>,
        principal: types::Principal,
        res_type: String,
        interaction: PolicyInteraction,
        resources: Arc<Vec<SubjectResource>>,
        enforced: Vec<Verdict>,
    ) {
        let registry = self.registry.clone();
        let counts = self.shadow.clone();
        let runtime = tokio::runtime::Handle::current();
        tokio::task::spawn_blocking(move || {
            for binding in &shadow {
                let plugin = registry.get(&binding.plugin);
                // Shadow calls share the plugin's slots with enforced ones; a plugin busy past
                // its deadline counts as a failed evaluation.
                let slot = plugin.as_deref().map(|p| runtime.block_on(p.slot()));
                let outcome = match slot {
                    Some(None) => Err(()),
                    _ => evaluate(&registry, plugin.as_deref(), binding, &principal, interaction, &resources),
                };
                drop(slot);
                let mut counts = counts.lock().unwrap_or_else(|e| e.into_inner());
                let entry = counts.entry(binding.plugin.clone()).or_default();
                entry.evaluated += 1;
                let Ok(decisions) = outcome else {
                    entry.failed += 1;
                    continue;
                };
                for ((decision, enforced), resource) in decisions.into_iter().zip(&enforced).zip(resources.iter()) {
                    let mut would = Verdict::Allow;
                    would.combine(&binding.plugin, decision);
                    let differs = std::mem::discriminant(&would) != std::mem::discriminant(enforced);
                    entry.note(&res_type, interaction, differs);
                    if differs {
                        entry.differed += 1;
                        if entry.samples.len() == SHADOW_SAMPLES {
                            entry.samples.pop_front();
                        }
                        entry.samples.push_back(ShadowSample {
                            at_us: hearth_fhir::instant::now_us(),
                            binding: binding.source.clone(),
                            resource_type: res_type.clone(),
                            id: resource.id.clone(),
                            interaction: interaction.as_str(),
                            would: would.kind(),
                            enforced: enforced.kind(),
                        });
                    }
                    tracing::info!(
                        target: "hearth::shadow",
                        plugin = binding.plugin,
                        binding = binding.source,
                        res_type,
                        id = resource.id.as_deref().unwrap_or(""),
                        interaction = interaction.as_str(),
                        would = would.kind(),
                        enforced = enforced.kind(),
                        differs,
                        "shadow policy decision"
                    );
                }
            }
        });
    }

    /// Runs `validate` of every enforcing policy bound to this write. `Err` when a plugin
    /// failed (the write is refused, fail closed).
    pub async fn validate(
        &self,
        caller: &Caller,
        plan: &Plan,
        interaction: PolicyInteraction,
        resource: SubjectResource,
    ) -> Result<Vec<(String, Issue)>, Verdict> {
        let plugins = &plan.enforce;
        if plugins.is_empty() {
            return Ok(Vec::new());
        }
        let principal = principal(caller);
        let registry = &self.registry;
        let _slots = take_slots(plugins)
            .await
            .map_err(|busy| Verdict::Deny { reason: format!("policy '{busy}' {FAILED_CLOSED}"), plugin: busy })?;
        sandboxed(plugins, || {
            let mut issues = Vec::new();
            for (binding, plugin) in plugins {
                let fail = || Verdict::Deny {
                    plugin: binding.plugin.clone(),
                    reason: format!("policy '{}' {FAILED_CLOSED}", binding.plugin),
                };
                let Some(plugin) = usable(plugin.as_deref(), binding) else { return Err(fail()) };
                let request = Request {
                    principal: principal.clone(),
                    interaction: wit_interaction(interaction),
                    config: binding.config.clone(),
                };
                let started = Instant::now();
                let outcome = registry.runtime.validate(&plugin.compiled, &request, &resource);
                plugin.stats.record(started.elapsed().as_micros() as u64);
                match outcome {
                    Ok(found) => issues.extend(found.into_iter().map(|i| (binding.plugin.clone(), i))),
                    Err(failure) => {
                        note_failure(plugin, &failure);
                        return Err(fail());
                    }
                }
            }
            Ok(issues)
        })
        .unwrap_or_else(|| Err(Verdict::Deny { plugin: "engine".into(), reason: FAILED_CLOSED.into() }))
    }
}

/// The longest total deadline of the plugins one request runs that is run inline on the
/// request's worker thread. Most policies answer in microseconds, and handing the worker over
/// to another thread costs more than that (measured: 0.79 vs 0.88 of ungated read throughput
/// with one plugin); a plugin stuck until its deadline holds the worker at most this long.
const INLINE_BUDGET_MS: u64 = 100;

thread_local! {
    /// Set while plugin calls run inline on a runtime worker (see [`sandboxed`]).
    static INLINE_CALL: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Whether this thread is running plugin calls inline; the server's panic hook stays quiet
/// then, because [`sandboxed`] catches and logs what happens.
pub fn in_inline_call() -> bool {
    INLINE_CALL.with(std::cell::Cell::get)
}

/// Runs the plugin calls of one request. Inline on the worker thread when their deadlines fit
/// [`INLINE_BUDGET_MS`] and none of them is known to need the blocking pool; otherwise (and as a
/// retry, once an inline run panicked) after handing the worker's other tasks elsewhere
/// (`block_in_place`). WASI's blocking I/O (e.g. a plugin printing to stdout) cannot run
/// inline on a runtime worker: the first plugin that tries it panics there, is marked, and runs
/// handed-over from then on. Policy calls have no side effects, so the retry is safe. A panic
/// in the handed-over run becomes `None` (the caller denies).
fn sandboxed<R>(plugins: &[(Binding, Option<Arc<ActivePlugin>>)], run: impl Fn() -> R) -> Option<R> {
    let loaded = || plugins.iter().filter_map(|(_, p)| p.as_ref());
    let budget: u64 = loaded().map(|p| p.compiled.manifest.limits().timeout_ms).sum();
    let guarded = || std::panic::catch_unwind(std::panic::AssertUnwindSafe(&run));
    if budget <= INLINE_BUDGET_MS && !loaded().any(|p| p.needs_handoff.load(Ordering::Relaxed)) {
        INLINE_CALL.with(|flag| flag.set(true));
        let outcome = guarded();
        INLINE_CALL.with(|flag| flag.set(false));
        match outcome {
            Ok(result) => return Some(result),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                for plugin in loaded() {
                    plugin.needs_handoff.store(true, Ordering::Relaxed);
                }
                tracing::warn!(
                    plugins = ?loaded().map(|p| p.name.as_str()).collect::<Vec<_>>(),
                    %message,
                    "a plugin call could not run inline (e.g. WASI I/O); these plugins now run off the worker"
                );
            }
        }
    }
    tokio::task::block_in_place(|| guarded().ok())
}

/// One execution slot of each loaded plugin in `plugins` (see [`ActivePlugin::slot`]), taken
/// in name order so two requests never wait on each other's; the name of the first plugin that
/// stayed busy past its deadline.
async fn take_slots(
    plugins: &[(Binding, Option<Arc<ActivePlugin>>)],
) -> Result<Vec<tokio::sync::SemaphorePermit<'_>>, String> {
    let mut loaded: Vec<&ActivePlugin> = plugins.iter().filter_map(|(_, p)| p.as_deref()).collect();
    loaded.sort_by(|a, b| a.name.cmp(&b.name));
    loaded.dedup_by(|a, b| a.name == b.name);
    let mut slots = Vec::with_capacity(loaded.len());
    for plugin in loaded {
        match plugin.slot().await {
            Some(slot) => slots.push(slot),
            None => {
                plugin.stats.record_failure(false);
                tracing::error!(
                    plugin = plugin.name,
                    seq = plugin.seq,
                    kind = "busy",
                    "policy plugin had no free slot within its deadline; denying"
                );
                return Err(plugin.name.clone());
            }
        }
    }
    Ok(slots)
}

/// A plugin that may be called for this binding: loaded, enabled and a policy.
fn usable<'p>(plugin: Option<&'p ActivePlugin>, binding: &Binding) -> Option<&'p ActivePlugin> {
    match plugin {
        Some(p) if p.enabled.load(Ordering::Acquire) && p.compiled.manifest.world == World::Policy => Some(p),
        Some(_) => {
            tracing::error!(plugin = binding.plugin, binding = binding.source, "bound policy plugin is disabled");
            None
        }
        None => {
            tracing::error!(plugin = binding.plugin, binding = binding.source, "bound policy plugin is not loaded");
            None
        }
    }
}

fn note_failure(plugin: &ActivePlugin, failure: &crate::CallFailure) {
    plugin.stats.record_failure(matches!(failure, crate::CallFailure::Timeout(_)));
    tracing::error!(plugin = plugin.name, seq = plugin.seq, kind = failure.kind(), %failure, "policy plugin failed; denying");
}

fn evaluate(
    registry: &PluginRegistry,
    plugin: Option<&ActivePlugin>,
    binding: &Binding,
    principal: &types::Principal,
    interaction: PolicyInteraction,
    resources: &[SubjectResource],
) -> Result<Vec<Decision>, ()> {
    let plugin = usable(plugin, binding).ok_or(())?;
    let request = Request {
        principal: principal.clone(),
        interaction: wit_interaction(interaction),
        config: binding.config.clone(),
    };
    let started = Instant::now();
    let outcome = registry.runtime.authorize(&plugin.compiled, &request, resources);
    plugin.stats.record(started.elapsed().as_micros() as u64);
    match outcome {
        Ok(decisions) => {
            let denied = decisions.iter().filter(|d| matches!(d, Decision::Deny(_))).count();
            plugin.stats.denials.fetch_add(denied as u64, Ordering::Relaxed);
            Ok(decisions)
        }
        Err(failure) => {
            note_failure(plugin, &failure);
            Err(())
        }
    }
}

fn principal(caller: &Caller) -> types::Principal {
    types::Principal {
        subject: caller.subject.clone(),
        scopes: caller.scopes.clone(),
        roles: caller.roles.clone(),
        purpose_of_use: caller.purpose_of_use.clone(),
        break_glass_reason: caller.break_glass_reason.clone(),
        patient: caller.patient.clone(),
    }
}

fn wit_interaction(interaction: PolicyInteraction) -> types::Interaction {
    match interaction {
        PolicyInteraction::Read => types::Interaction::Read,
        PolicyInteraction::Vread => types::Interaction::Vread,
        PolicyInteraction::History => types::Interaction::History,
        PolicyInteraction::Search => types::Interaction::Search,
        PolicyInteraction::Create => types::Interaction::Create,
        PolicyInteraction::Update => types::Interaction::Update,
        PolicyInteraction::Delete => types::Interaction::Delete,
    }
}
