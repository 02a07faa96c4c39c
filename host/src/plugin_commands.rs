//! `hearth plugin sign` and `hearth plugin load`: sign a component with its manifest, and
//! upload it to a running server through the admin API.

use std::path::{Path, PathBuf};

use base64::Engine as _;

use crate::plugins::Manifest;
use crate::plugins::signing::sign;

#[derive(Debug, thiserror::Error)]
pub enum PluginCommandError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
    #[error("the server refused the plugin (HTTP {status}): {message}")]
    Refused { status: u16, message: String },
    #[error("cannot reach {url}: {reason}. Check --server and that the server is running")]
    Unreachable { url: String, reason: String },
}

fn read(path: &Path) -> Result<Vec<u8>, PluginCommandError> {
    std::fs::read(path).map_err(|source| PluginCommandError::Read { path: path.to_owned(), source })
}

fn manifest(path: &Path) -> Result<Manifest, PluginCommandError> {
    let text =
        String::from_utf8(read(path)?).map_err(|_| PluginCommandError::Invalid("the manifest is not UTF-8".into()))?;
    Manifest::parse(&text).map_err(|e| PluginCommandError::Invalid(format!("{}: {e}", path.display())))
}

/// The base64 signature of `component` with `manifest`, made with an Ed25519 PKCS#8 PEM key.
pub fn plugin_sign(key: &Path, manifest_path: &Path, component: &Path) -> Result<String, PluginCommandError> {
    let manifest = manifest(manifest_path)?;
    let signature = sign(key, &read(component)?, &manifest).map_err(|e| PluginCommandError::Invalid(e.to_string()))?;
    Ok(base64::engine::general_purpose::STANDARD.encode(signature))
}

/// What `hearth plugin load` sends where.
pub struct LoadRequest<'a> {
    pub server: &'a str,
    pub token: &'a str,
    pub ca: Option<&'a Path>,
    pub manifest: &'a Path,
    pub component: &'a Path,
    pub signature: Option<&'a Path>,
}

/// Uploads a component; returns the server's description of the loaded plugin.
pub async fn plugin_load(request: &LoadRequest<'_>) -> Result<String, PluginCommandError> {
    let manifest = manifest(request.manifest)?;
    let component = read(request.component)?;
    let signature = match request.signature {
        Some(path) => Some(
            String::from_utf8(read(path)?)
                .map_err(|_| PluginCommandError::Invalid("the signature file is not base64 text".into()))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let body = serde_json::json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(&component),
        "signature": signature,
    });
    let mut client = reqwest::Client::builder();
    if let Some(ca) = request.ca {
        let pem = read(ca)?;
        let certificate = reqwest::Certificate::from_pem(&pem)
            .map_err(|e| PluginCommandError::Invalid(format!("{}: {e}", ca.display())))?;
        client = client.tls_certs_only([certificate]);
    }
    let client = client.build().map_err(|e| PluginCommandError::Invalid(e.to_string()))?;
    let url = format!("{}/admin/plugins/{}", request.server.trim_end_matches('/'), manifest.name);
    let response = client
        .put(&url)
        .bearer_auth(request.token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| PluginCommandError::Unreachable { url: url.clone(), reason: e.to_string() })?;
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    if (200..300).contains(&status) {
        return Ok(text);
    }
    let message = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|outcome| outcome.pointer("/issue/0/diagnostics").and_then(|d| d.as_str()).map(str::to_owned))
        .unwrap_or(text);
    Err(PluginCommandError::Refused { status, message })
}
