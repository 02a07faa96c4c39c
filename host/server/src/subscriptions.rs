//! FHIR R4 Subscriptions over `rest-hook`, delivered through the durable outbox.
//!
//! - A Subscription is an ordinary stored resource. Every second each host re-reads them:
//!   a `requested` one that can be served becomes `active`, one that cannot (unsupported
//!   channel, malformed criteria, an endpoint outside the operator's allowlist) becomes
//!   `error` with the reason in `Subscription.error`. Both are written as new versions and
//!   audited.
//! - A committed create or update of a type some active Subscription watches gets an outbox
//!   row for the consumer [`FAN_OUT`], in the same transaction as the write (nothing is lost).
//!   The outbox worker matches that version against each watching Subscription's criteria with
//!   the search engine (criteria plus `_id`), and replaces the row by one row per matching
//!   Subscription ([`PREFIX`]`id`), in one transaction.
//! - Each of those is delivered on its own, with the outbox's lease and backoff: with a payload
//!   (`application/fhir+json`) as `PUT {endpoint}/{type}/{id}` carrying the resource, without
//!   one as an empty `POST {endpoint}`, with the channel's headers. After [`MAX_ATTEMPTS`]
//!   failures the row goes to the dead-letter list and the Subscription to `error`.

use std::collections::HashSet;
use std::sync::{Arc, RwLock};

use serde_json::{Value, json};

use crate::audit::{AuditEvent, AuditLog, Outcome};
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::fhir::resource::IncomingResource;
use crate::store::{EventTargets, Precondition, SnapshotScope, Store, StoreError};

/// The outbox consumer that matches a change against the Subscriptions watching its type.
pub use crate::policy::engine::SUBSCRIPTION_FAN_OUT as FAN_OUT;
/// The outbox consumer prefix of one Subscription's notifications.
pub const PREFIX: &str = "$subscription/";
/// Deliveries of one notification before it is dead-lettered and the Subscription errors.
pub const MAX_ATTEMPTS: i64 = 4;

/// One Subscription as the server serves it.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub id: String,
    pub version: i64,
    pub status: String,
    pub res_type: String,
    /// The criteria's search parameters.
    pub criteria: Vec<(String, String)>,
    pub endpoint: String,
    /// The payload media type; `None`: notifications carry no body.
    pub payload: Option<String>,
    pub headers: Vec<(String, String)>,
}

/// Reads a stored Subscription; `Err` says why it cannot be served.
pub fn read(id: &str, version: i64, body: &Value) -> Result<Subscription, String> {
    let criteria = body["criteria"].as_str().unwrap_or("").trim();
    let (res_type, query) = criteria.split_once('?').unwrap_or((criteria, ""));
    if !crate::fhir::resource_types::is_resource_type(res_type) {
        return Err(format!(
            "criteria must be TYPE?search, e.g. Observation?code=http://loinc.org|8867-4 (got {criteria:?})"
        ));
    }
    let channel = &body["channel"];
    if channel["type"] != "rest-hook" {
        return Err(format!("this server delivers rest-hook channels only (got {})", channel["type"]));
    }
    let endpoint = channel["endpoint"].as_str().unwrap_or("").trim_end_matches('/').to_owned();
    if !(endpoint.starts_with("https://") || endpoint.starts_with("http://")) {
        return Err("channel.endpoint must be an http(s) URL".to_owned());
    }
    let payload = match channel["payload"].as_str() {
        None | Some("") => None,
        Some(media @ ("application/fhir+json" | "application/json")) => Some(media.to_owned()),
        Some(other) => {
            return Err(format!("channel.payload {other:?} is not supported (application/fhir+json or none)"));
        }
    };
    let mut headers = Vec::new();
    for header in channel["header"].as_array().into_iter().flatten() {
        let text = header.as_str().unwrap_or("");
        let (name, value) =
            text.split_once(':').ok_or_else(|| format!("channel.header {text:?} is not NAME: value"))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(format!("channel.header name {name:?} is not a header name"));
        }
        headers.push((name.to_owned(), value.trim().to_owned()));
    }
    Ok(Subscription {
        id: id.to_owned(),
        version,
        status: body["status"].as_str().unwrap_or("").to_owned(),
        res_type: res_type.to_owned(),
        criteria: form_urlencoded::parse(query.as_bytes()).into_owned().collect(),
        endpoint,
        payload,
        headers,
    })
}

/// Whether `endpoint` is within one of the `allowed` URLs, compared as parsed URLs: the same
/// scheme, host and port, and a path at or below the allowed one (segment by segment). An
/// endpoint with user information (`http://allowed@elsewhere/`) is never allowed: it reads as
/// one host and connects to another.
pub fn endpoint_allowed(allowed: &[String], endpoint: &str) -> bool {
    let Ok(target) = url::Url::parse(endpoint) else { return false };
    if !target.username().is_empty() || target.password().is_some() || target.host_str().is_none() {
        return false;
    }
    allowed.iter().filter_map(|entry| url::Url::parse(entry).ok()).any(|entry| {
        let prefix = entry.path().trim_end_matches('/');
        let path = target.path();
        entry.scheme() == target.scheme()
            && entry.host_str() == target.host_str()
            && entry.port_or_known_default() == target.port_or_known_default()
            && (path.trim_end_matches('/') == prefix || path.starts_with(&format!("{prefix}/")))
    })
}

/// The Subscriptions this host delivers, re-read every second.
pub struct Subscriptions {
    active: RwLock<Arc<Vec<Subscription>>>,
    /// URL prefixes endpoints must start with.
    allowed: Vec<String>,
    base_url: String,
    /// Status changes are audited.
    audit: AuditLog,
}

impl Subscriptions {
    pub fn new(allowed: Vec<String>, base_url: String, audit: AuditLog) -> Self {
        Subscriptions { active: RwLock::default(), allowed, base_url, audit }
    }

    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    fn current(&self) -> Arc<Vec<Subscription>> {
        self.active.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn for_type(&self, res_type: &str) -> Vec<Subscription> {
        self.current().iter().filter(|s| s.res_type == res_type).cloned().collect()
    }

    pub fn get(&self, id: &str) -> Option<Subscription> {
        self.current().iter().find(|s| s.id == id).cloned()
    }

    pub fn types(&self) -> HashSet<String> {
        self.current().iter().map(|s| s.res_type.clone()).collect()
    }

    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    fn allows(&self, endpoint: &str) -> bool {
        endpoint_allowed(&self.allowed, endpoint)
    }

    /// Re-reads every Subscription: activates the requested ones that can be served, puts
    /// those that cannot in `error`, and keeps the active ones.
    ///
    /// A Subscription is served from before its `active` status commits: once a client can
    /// read `active`, every write it makes after that is matched (a write committed between the
    /// status and the in-memory list would otherwise go unnoticed).
    /// `watch` is told the watched types each time the served list changes.
    pub async fn refresh(&self, store: &Store, watch: &(dyn Fn(HashSet<String>) + Sync)) -> Result<(), StoreError> {
        let audit = &self.audit;
        let mut active = Vec::new();
        let mut requested = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let (records, more) =
                store.snapshot_page("Subscription", now_us(), None, SnapshotScope::All, after.as_deref(), 500).await?;
            after = records.last().map(|r| r.id.clone());
            for record in records {
                let Some(body) = record.body.as_deref().and_then(|b| serde_json::from_slice::<Value>(b).ok()) else {
                    continue;
                };
                let status = body["status"].as_str().unwrap_or("");
                if !matches!(status, "requested" | "active") {
                    continue;
                }
                let checked = read(&record.id, record.version, &body).and_then(|s| {
                    if self.allows(&s.endpoint) {
                        Ok(s)
                    } else {
                        Err(format!(
                            "the endpoint {} is not one this server may call (the operator allows: {})",
                            s.endpoint,
                            if self.allowed.is_empty() { "none".to_owned() } else { self.allowed.join(", ") }
                        ))
                    }
                });
                match checked {
                    Ok(subscription) if status == "active" => active.push(subscription),
                    Ok(subscription) => requested.push((subscription, body)),
                    Err(reason) => {
                        set_status(store, audit, &record.id, record.version, &body, "error", Some(&reason)).await?;
                    }
                }
            }
            if !more {
                break;
            }
        }
        if !requested.is_empty() {
            let mut serving = self.current().as_ref().clone();
            serving.extend(requested.iter().map(|(subscription, _)| subscription.clone()));
            self.publish(serving, watch);
        }
        for (mut subscription, body) in requested {
            let (id, version) = (subscription.id.clone(), subscription.version);
            match set_status(store, audit, &id, version, &body, "active", None).await {
                Ok(Some(version)) => {
                    subscription.version = version;
                    subscription.status = "active".to_owned();
                    active.push(subscription);
                }
                // Changed meanwhile: judged again at the next refresh.
                Ok(None) => {}
                Err(error) => {
                    // Served are only those whose `active` status committed.
                    self.publish(active, watch);
                    return Err(error);
                }
            }
        }
        self.publish(active, watch);
        Ok(())
    }

    fn publish(&self, active: Vec<Subscription>, watch: &(dyn Fn(HashSet<String>) + Sync)) {
        *self.active.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(active);
        watch(self.types());
    }
}

/// Writes `status` (and `error`) into Subscription `id` as a new version on top of `version`,
/// and audits it. `None` when the Subscription changed meanwhile (the next refresh sees it).
pub async fn set_status(
    store: &Store,
    audit: &AuditLog,
    id: &str,
    version: i64,
    body: &Value,
    status: &str,
    error: Option<&str>,
) -> Result<Option<i64>, StoreError> {
    let mut body = body.clone();
    body["status"] = json!(status);
    match error {
        Some(error) => body["error"] = json!(error.chars().take(500).collect::<String>()),
        None => {
            if let Some(object) = body.as_object_mut() {
                object.remove("error");
            }
        }
    }
    let bytes = serde_json::to_vec(&body).unwrap_or_default();
    let Ok(resource) = IncomingResource::parse(&bytes, "Subscription") else {
        tracing::error!(subscription = id, "a stored Subscription no longer validates; left as it is");
        return Ok(None);
    };
    let key_id = resource.data_key_id(id);
    let stamp = |v: i64, at: i64| resource.stamped(id, v, at);
    let written = match store
        .put("Subscription", id, &key_id, Precondition::IfMatch(version), &EventTargets::default(), &stamp)
        .await
    {
        Ok(written) => written,
        Err(StoreError::VersionConflict { .. }) => return Ok(None),
        Err(other) => return Err(other),
    };
    tracing::warn!(subscription = id, status, error = error.unwrap_or(""), "subscription status changed");
    let event = AuditEvent {
        at: to_fhir_instant(now_us()),
        action: format!("subscription-{status}"),
        outcome: Outcome::Success,
        status: 200,
        subject: Some("hearth".to_owned()),
        resource_type: Some("Subscription".to_owned()),
        resource_id: Some(id.to_owned()),
        version: Some(written.version),
        ..AuditEvent::default()
    };
    if let Err(failure) = audit.record(event).await {
        tracing::error!(error = %failure.message, "the subscription status change could not be audited");
    }
    Ok(Some(written.version))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(channel: Value) -> Value {
        json!({"resourceType": "Subscription", "status": "requested", "reason": "r",
               "criteria": "Observation?code=http://loinc.org|8867-4&status=final", "channel": channel})
    }

    #[test]
    fn endpoints_are_compared_as_urls() {
        let allowed = vec!["http://127.0.0.1:19000".to_owned(), "https://hooks.example/clinic/".to_owned()];
        for (endpoint, ok) in [
            ("http://127.0.0.1:19000/x", true),
            ("http://127.0.0.1:19000", true),
            ("http://127.0.0.1:19000@127.0.0.1:19001/x", false),
            ("http://user:pw@127.0.0.1:19000/x", false),
            ("http://127.0.0.1:190001/x", false),
            ("http://127.0.0.1:19001/x", false),
            ("https://127.0.0.1:19000/x", false),
            ("https://hooks.example/clinic/a", true),
            ("https://hooks.example/clinic", true),
            ("https://hooks.example/clinicx", false),
            ("https://hooks.example/other", false),
            ("https://hooks.example:443/clinic/a", true),
            ("https://hooks.example.evil/clinic/a", false),
            ("not a url", false),
        ] {
            assert_eq!(endpoint_allowed(&allowed, endpoint), ok, "{endpoint}");
        }
    }

    #[test]
    fn subscriptions_read_or_say_why_not() {
        let ok = read(
            "s1",
            1,
            &subscription(
                json!({"type": "rest-hook", "endpoint": "https://hooks.example/x/", "payload": "application/fhir+json",
                                 "header": ["Authorization: Bearer abc"]}),
            ),
        )
        .unwrap();
        assert_eq!((ok.res_type.as_str(), ok.endpoint.as_str()), ("Observation", "https://hooks.example/x"));
        assert_eq!(ok.criteria, [("code".into(), "http://loinc.org|8867-4".into()), ("status".into(), "final".into())]);
        assert_eq!(ok.headers, [("Authorization".to_owned(), "Bearer abc".to_owned())]);
        for (channel, expected) in [
            (json!({"type": "email", "endpoint": "mailto:a@b"}), "rest-hook"),
            (json!({"type": "rest-hook", "endpoint": "ftp://x"}), "http(s)"),
            (json!({"type": "rest-hook", "endpoint": "https://x", "payload": "text/csv"}), "payload"),
            (json!({"type": "rest-hook", "endpoint": "https://x", "header": ["no colon"]}), "NAME: value"),
        ] {
            let error = read("s", 1, &subscription(channel)).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
        let mut bad = subscription(json!({"type": "rest-hook", "endpoint": "https://x"}));
        bad["criteria"] = json!("Observatoin?code=1");
        assert!(read("s", 1, &bad).unwrap_err().contains("TYPE?search"));
    }
}
