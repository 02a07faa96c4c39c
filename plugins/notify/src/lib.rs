//! Change notifications: posts a small JSON notice of every committed change (ids and
//! versions, never clinical content) to the binding's `url`, which must be on the manifest's
//! allowlist. A non-2xx answer or a connection failure returns an error, so the server
//! retries the event with backoff. The last delivered event id is kept in the plugin's
//! key-value store, and sent along so a receiver can spot gaps.
//!
//! Binding config: `{"url": "http://127.0.0.1:9000/hook", "authorization": "Bearer ..."}`

use serde_json::{Value, json};

wit_bindgen::generate!({ path: "../../wit", world: "integration" });

use hearth::plugin::http::{Header, OutgoingRequest, send};
use hearth::plugin::key_value;
use hearth::plugin::types::ChangeKind;

struct Notify;

impl Guest for Notify {
    fn on_change(event: ChangeEvent, config: String) -> Result<(), String> {
        let config: Value = serde_json::from_str(&config).map_err(|e| format!("binding config is not JSON: {e}"))?;
        let url = config.get("url").and_then(Value::as_str).ok_or("binding config lacks \"url\"")?;
        let previous = key_value::get("last-event-id")
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .and_then(|s| s.parse::<u64>().ok());
        let kind = match event.kind {
            ChangeKind::Created => "created",
            ChangeKind::Updated => "updated",
            ChangeKind::Deleted => "deleted",
        };
        let notice = json!({
            "eventId": event.event_id,
            "previousEventId": previous,
            "kind": kind,
            "resourceType": event.resource_type,
            "id": event.id,
            "versionId": event.version_id.to_string(),
            "lastUpdated": event.last_updated,
        });
        let mut headers = vec![Header { name: "content-type".into(), value: "application/json".into() }];
        if let Some(auth) = config.get("authorization").and_then(Value::as_str) {
            headers.push(Header { name: "authorization".into(), value: auth.into() });
        }
        let response = send(&OutgoingRequest {
            method: "POST".into(),
            url: url.into(),
            headers,
            body: notice.to_string().into_bytes(),
        })?;
        if !(200..300).contains(&response.status) {
            return Err(format!("the receiver answered HTTP {}", response.status));
        }
        let _ = key_value::set("last-event-id", event.event_id.to_string().as_bytes());
        Ok(())
    }

    fn convert(_body: Vec<u8>, _media_type: String, _config: String) -> Result<Vec<String>, String> {
        Err("the notify plugin converts nothing".into())
    }
}

export!(Notify);
