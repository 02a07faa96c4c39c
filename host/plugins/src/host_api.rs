//! The host side of the imports in `wit/hearth-plugin.wit`: what a plugin can ask of the
//! server. Each is reached only by the worlds (and manifests) that grant it; the linker for
//! the policy world has no http or key-value, so a policy cannot even name them.

use std::time::{Duration, Instant};

use super::bindings::integration::hearth::plugin::{http, key_value};
use super::bindings::policy::hearth::plugin::{clock, log, lookup, types};
use super::host_data::DataError;
use super::runtime::CallState;

/// Waits for `future` from a host function. Calls run on a runtime worker thread or on the
/// blocking pool; on a worker, the worker is handed over first so other requests keep moving.
pub(crate) fn wait<F: std::future::Future>(tokio: &tokio::runtime::Handle, future: F) -> F::Output {
    tokio::task::block_in_place(|| tokio.block_on(future))
}

/// Plugin log messages longer than this are cut.
const MAX_LOG_MESSAGE: usize = 1024;
/// Largest response body handed back to a plugin.
const MAX_HTTP_RESPONSE: usize = 1 << 20;
pub const MAX_KV_KEY: usize = 256;
pub const MAX_KV_VALUE: usize = 64 * 1024;
pub const MAX_KV_KEYS: i64 = 1_000;

impl types::Host for CallState {}

impl log::Host for CallState {
    fn write(&mut self, level: log::Level, message: String) {
        let mut message = message;
        if message.len() > MAX_LOG_MESSAGE {
            let mut end = MAX_LOG_MESSAGE;
            while !message.is_char_boundary(end) {
                end -= 1;
            }
            message.truncate(end);
        }
        let plugin = self.plugin.name.as_str();
        match level {
            log::Level::Debug => tracing::debug!(target: "hearth::plugin", plugin, "{message}"),
            log::Level::Info => tracing::info!(target: "hearth::plugin", plugin, "{message}"),
            log::Level::Warn => tracing::warn!(target: "hearth::plugin", plugin, "{message}"),
            log::Level::Error => tracing::error!(target: "hearth::plugin", plugin, "{message}"),
        }
    }
}

impl clock::Host for CallState {
    fn now_millis(&mut self) -> u64 {
        u64::try_from(hearth_fhir::instant::now_us() / 1000).unwrap_or(0)
    }
}

impl lookup::Host for CallState {
    fn active_consents(&mut self, patient: String) -> Vec<String> {
        if !hearth_fhir::resource::is_valid_id(&patient) {
            return Vec::new();
        }
        match self.services.data.active_consents(&patient) {
            Ok(consents) => consents,
            Err(error) => {
                // The plugin sees "no consents"; a consent policy must then decide on its own
                // terms, and the failure is in the log.
                if let DataError::Failed(error) = error {
                    tracing::error!(%error, plugin = %self.plugin.name, "consent lookup failed");
                }
                Vec::new()
            }
        }
    }
}

impl http::Host for CallState {
    fn send(&mut self, request: http::OutgoingRequest) -> Result<http::IncomingResponse, String> {
        let url = reqwest::Url::parse(&request.url).map_err(|e| format!("invalid url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err("only http and https URLs are allowed".into());
        }
        let host = url.host_str().ok_or("the url has no host")?;
        let port = url.port_or_known_default().ok_or("the url has no port")?;
        if !self.plugin.allows_host(host, port) {
            return Err(format!("not allowed: {host}:{port} is not in this plugin's allowed_hosts"));
        }
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).map_err(|_| "invalid method")?;
        let remaining = self.deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err("the call's deadline has passed".into());
        }
        let mut builder = self.services.http.request(method, url).timeout(remaining.min(Duration::from_secs(30)));
        for header in &request.headers {
            builder = builder.header(&header.name, &header.value);
        }
        let builder = builder.body(request.body);
        wait(&self.services.tokio, async move {
            let response = builder.send().await.map_err(|e| format!("request failed: {e}"))?;
            let status = response.status().as_u16();
            let headers = response
                .headers()
                .iter()
                .filter_map(|(n, v)| Some(http::Header { name: n.to_string(), value: v.to_str().ok()?.to_owned() }))
                .collect();
            let mut body = Vec::new();
            let mut response = response;
            while let Some(chunk) = response.chunk().await.map_err(|e| format!("reading the response failed: {e}"))? {
                let room = MAX_HTTP_RESPONSE.saturating_sub(body.len());
                body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                if room <= chunk.len() {
                    break;
                }
            }
            Ok(http::IncomingResponse { status, headers, body })
        })
    }
}

impl key_value::Host for CallState {
    fn get(&mut self, key: String) -> Option<Vec<u8>> {
        if !self.plugin.key_value {
            return None;
        }
        match self.services.data.kv_get(&self.plugin.name, &key) {
            Ok(value) => value,
            Err(DataError::NotHere) => None,
            Err(DataError::Failed(error)) => {
                tracing::error!(%error, plugin = %self.plugin.name, "plugin key-value read failed");
                None
            }
        }
    }

    fn set(&mut self, key: String, value: Vec<u8>) -> Result<(), String> {
        if !self.plugin.key_value {
            return Err("this plugin's manifest does not grant key_value".into());
        }
        if key.is_empty() || key.len() > MAX_KV_KEY || value.len() > MAX_KV_VALUE {
            return Err(format!("keys are 1-{MAX_KV_KEY} bytes and values at most {MAX_KV_VALUE} bytes"));
        }
        match self.services.data.kv_set(&self.plugin.name, &key, &value, MAX_KV_KEYS) {
            Ok(outcome) => outcome,
            Err(DataError::NotHere) => Err("the key-value store is not available here".into()),
            Err(DataError::Failed(error)) => {
                tracing::error!(%error, plugin = %self.plugin.name, "plugin key-value write failed");
                Err("the key-value store is unavailable; retry later".into())
            }
        }
    }

    fn delete(&mut self, key: String) {
        if !self.plugin.key_value {
            return;
        }
        if let Err(DataError::Failed(error)) = self.services.data.kv_delete(&self.plugin.name, &key) {
            tracing::error!(%error, plugin = %self.plugin.name, "plugin key-value delete failed");
        }
    }
}
