//! The outbox worker: delivers committed changes to integration plugins, at least once.
//! Events are claimed with a lease (PostgreSQL skips rows other hosts hold), retried with
//! exponential backoff when a plugin fails or asks for a retry, and moved to the dead-letter
//! list after the manifest's `max_attempts`. Delivery order is the commit order per worker
//! pass; a retried event can arrive after later ones, so receivers should use `versionId`.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use crate::auth::{Interaction, Principal};
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::fhir::search::access::Visibility;
use crate::fhir::search::query::Parser;
use crate::plugins::bindings::types::{ChangeEvent, ChangeKind};
use crate::plugins::registry::PluginRegistry;
use crate::policy::{PolicyEngine, PolicyInteraction};
use crate::store::{Lookup, OutboxEvent, SearchScope, Store, StoreError, VersionRecord};
use crate::subscriptions::{self, Subscriptions};

/// Events claimed per pass.
const BATCH: i64 = 32;
/// Longest wait between passes when nobody signals new work.
const IDLE_POLL: Duration = Duration::from_millis(500);
/// Backoff cap.
const MAX_BACKOFF_US: i64 = 300_000_000;
/// How long an event waits while its plugin is disabled or not loaded (no attempt counted).
const PARKED_US: i64 = 5_000_000;

pub struct Delivery {
    store: Store,
    registry: Arc<PluginRegistry>,
    policies: Arc<PolicyEngine>,
    subscriptions: Arc<Subscriptions>,
    /// For Subscription notifications: no redirects, a deadline per call.
    http: reqwest::Client,
    /// Signalled after a write that queued events, so delivery does not wait for the poll.
    pub wake: Arc<Notify>,
}

impl Delivery {
    pub fn new(
        store: Store,
        registry: Arc<PluginRegistry>,
        policies: Arc<PolicyEngine>,
        subscriptions: Arc<Subscriptions>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()?;
        Ok(Delivery { store, registry, policies, subscriptions, http, wake: Arc::new(Notify::new()) })
    }

    pub fn spawn(self: Arc<Self>) {
        tokio::spawn(async move {
            loop {
                match self.pass().await {
                    Ok(0) => {
                        let _ = tokio::time::timeout(IDLE_POLL, self.wake.notified()).await;
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::warn!(%error, "outbox delivery pass failed; retrying");
                        tokio::time::sleep(IDLE_POLL).await;
                    }
                }
            }
        });
    }

    /// One pass: claims due events and delivers them. Returns how many were claimed.
    pub async fn pass(&self) -> Result<usize, StoreError> {
        let events = self.store.claim_outbox(BATCH).await?;
        for event in &events {
            self.deliver(event).await?;
        }
        Ok(events.len())
    }

    async fn deliver(&self, event: &OutboxEvent) -> Result<(), StoreError> {
        if event.plugin == subscriptions::FAN_OUT {
            return self.fan_out(event).await;
        }
        if let Some(id) = event.plugin.strip_prefix(subscriptions::PREFIX) {
            return self.notify(event, id).await;
        }
        let plugin = self.registry.get(&event.plugin).filter(|p| p.enabled.load(Ordering::Acquire));
        let Some(plugin) = plugin else {
            return self.store.outbox_postpone(event.id, now_us() + PARKED_US).await;
        };
        let (kind, interaction) = match event.kind.as_str() {
            "created" => (ChangeKind::Created, PolicyInteraction::Create),
            "updated" => (ChangeKind::Updated, PolicyInteraction::Update),
            _ => (ChangeKind::Deleted, PolicyInteraction::Delete),
        };
        let config = self
            .policies
            .bindings()
            .matching(&event.res_type, interaction)
            .find(|b| b.plugin == event.plugin)
            .map_or_else(|| "{}".to_owned(), |b| b.config.clone());
        let json = match self.store.read_version(&event.res_type, &event.res_id, event.version).await {
            Ok(Some(record)) => record.body.map(|b| String::from_utf8_lossy(&b).into_owned()),
            Ok(None) | Err(StoreError::Erased) => None,
            Err(error) => return Err(error),
        };
        let change = ChangeEvent {
            event_id: event.id as u64,
            kind,
            resource_type: event.res_type.clone(),
            id: event.res_id.clone(),
            version_id: event.version as u64,
            last_updated: to_fhir_instant(event.created_us),
            json,
        };
        let runtime = self.registry.runtime.clone();
        let (call_plugin, started) = (plugin.clone(), std::time::Instant::now());
        let outcome = tokio::task::spawn_blocking(move || runtime.on_change(&call_plugin.compiled, &change, &config))
            .await
            .unwrap_or_else(|e| Err(crate::plugins::CallFailure::Trap(e.to_string())));
        plugin.stats.record(started.elapsed().as_micros() as u64);
        let error = match outcome {
            Ok(Ok(())) => return self.store.outbox_delivered(event.id).await,
            Ok(Err(reason)) => reason,
            Err(failure) => {
                plugin.stats.record_failure(matches!(failure, crate::plugins::CallFailure::Timeout(_)));
                format!("the plugin {failure}")
            }
        };
        let attempts = event.attempts + 1;
        let max = i64::from(plugin.compiled.manifest.max_attempts());
        let retry_at = (attempts < max).then(|| {
            let backoff = 1_000_000_i64.saturating_mul(1 << attempts.min(20)).min(MAX_BACKOFF_US);
            now_us() + backoff
        });
        tracing::warn!(
            plugin = event.plugin,
            event = event.id,
            attempts,
            dead_lettered = retry_at.is_none(),
            error = %truncate(&error),
            "integration delivery failed"
        );
        self.store.outbox_failed(event.id, &truncate(&error), retry_at).await
    }
}

impl Delivery {
    /// Replaces a change by one notification per Subscription whose criteria it matches (the
    /// criteria run as a search by the Subscription's owner, narrowed to the changed resource
    /// by `_id`: a Subscription matches only what its owner could find).
    async fn fan_out(&self, event: &OutboxEvent) -> Result<(), StoreError> {
        let watching = self.subscriptions.for_type(&event.res_type);
        let mut consumers = Vec::new();
        if !watching.is_empty() && event.kind != "deleted" {
            let key = self.store.blind_index_key().await?;
            let base_url = self.subscriptions.base_url();
            let parser = Parser { key: &key, base_url, strict: true };
            for subscription in &watching {
                let Some(owner) = self.store.subscription_owner(&subscription.id).await? else {
                    tracing::warn!(
                        subscription = subscription.id,
                        "no owner recorded; it notifies nothing until updated"
                    );
                    continue;
                };
                let owner = Principal::of_owner(&owner);
                if owner.check(Interaction::Search, &event.res_type).is_err() {
                    continue;
                }
                let vis = owner.predicate(Interaction::Search, &key, base_url);
                let mut pairs = subscription.criteria.clone();
                pairs.push(("_id".to_owned(), event.res_id.clone()));
                let matched = match parser.parse(vec![event.res_type.clone()], &pairs) {
                    Ok(query) => {
                        let scope = SearchScope::default();
                        !self.store.search_rows(&query, &scope, &vis, None, 1).await?.matches.is_empty()
                    }
                    Err(error) => {
                        tracing::warn!(subscription = subscription.id, error = error.message, "criteria do not parse");
                        false
                    }
                };
                if matched {
                    consumers.push(format!("{}{}", subscriptions::PREFIX, subscription.id));
                }
            }
        }
        self.store.outbox_fan_out(event, &consumers).await?;
        if !consumers.is_empty() {
            self.wake.notify_one();
        }
        Ok(())
    }

    /// Sends one Subscription notification.
    async fn notify(&self, event: &OutboxEvent, subscription_id: &str) -> Result<(), StoreError> {
        let Some(subscription) = self.subscriptions.get(subscription_id) else {
            // Deleted, switched off or in error since: nothing to deliver.
            return self.store.outbox_delivered(event.id).await;
        };
        // Re-checked at delivery: the version must still be within the owner's reach (the
        // owner's scopes, or the resource, may have changed since the match).
        let Some(record) = self.owner_may_read(subscription_id, event).await? else {
            tracing::debug!(subscription = subscription_id, event = event.id, "outside the owner's reach; not sent");
            return self.store.outbox_delivered(event.id).await;
        };
        let request = match &subscription.payload {
            Some(media_type) => {
                let Some(body) = record.body else { return self.store.outbox_delivered(event.id).await };
                let url = format!("{}/{}/{}", subscription.endpoint, event.res_type, event.res_id);
                self.http.put(url).header("content-type", media_type.as_str()).body(body)
            }
            None => self.http.post(&subscription.endpoint),
        };
        let request =
            subscription.headers.iter().fold(request, |r, (name, value)| r.header(name.as_str(), value.as_str()));
        let error = match request.send().await {
            Ok(response) if response.status().is_success() => return self.store.outbox_delivered(event.id).await,
            Ok(response) => format!("the endpoint answered {}", response.status()),
            Err(error) => format!("the endpoint could not be reached: {error}"),
        };
        let attempts = event.attempts + 1;
        let retry_at = (attempts < subscriptions::MAX_ATTEMPTS).then(|| now_us() + (500_000_i64 << (attempts - 1)));
        tracing::warn!(subscription = subscription_id, event = event.id, attempts, %error, "subscription notification failed");
        self.store.outbox_failed(event.id, &truncate(&error), retry_at).await?;
        if retry_at.is_none() {
            let reason = format!("notifications failed {attempts} times; the last: {error}");
            let current = self.store.read_current("Subscription", subscription_id).await?;
            if let Some(record) = current.filter(|r| !r.deleted) {
                let body: serde_json::Value =
                    record.body.as_deref().and_then(|b| serde_json::from_slice(b).ok()).unwrap_or_default();
                subscriptions::set_status(
                    &self.store,
                    self.subscriptions.audit(),
                    subscription_id,
                    record.version,
                    &body,
                    "error",
                    Some(&reason),
                )
                .await?;
            }
        }
        Ok(())
    }
}

impl Delivery {
    /// The changed version, if the Subscription's owner may read it now.
    async fn owner_may_read(
        &self,
        subscription_id: &str,
        event: &OutboxEvent,
    ) -> Result<Option<VersionRecord>, StoreError> {
        let Some(owner) = self.store.subscription_owner(subscription_id).await? else { return Ok(None) };
        let owner = Principal::of_owner(&owner);
        if owner.check(Interaction::Read, &event.res_type).is_err() {
            return Ok(None);
        }
        let key = self.store.blind_index_key().await?;
        let vis = owner.predicate(Interaction::Read, &key, self.subscriptions.base_url());
        match self.store.read_version_visible(&event.res_type, &event.res_id, event.version, &vis).await? {
            Lookup::Live(record) if vis.reach(&event.res_type).admits_record(&record, &key) => Ok(Some(record)),
            _ => Ok(None),
        }
    }
}

/// Errors are kept short in the database and log (a plugin chooses their text).
fn truncate(text: &str) -> String {
    text.chars().take(500).collect()
}
