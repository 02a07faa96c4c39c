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
    pub server: Server<'a>,
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
    request.server.call(reqwest::Method::PUT, &format!("admin/plugins/{}", manifest.name), Some(body)).await
}

/// A running server's admin API, as the CLI reaches it.
pub struct Server<'a> {
    /// The base URL, e.g. `https://127.0.0.1:8443`.
    pub url: &'a str,
    /// A bearer token with the admin/plugins scope.
    pub token: &'a str,
    /// A PEM CA to trust instead of the system's roots.
    pub ca: Option<&'a Path>,
}

impl Server<'_> {
    /// Sends one admin request; the response body on success, the server's reason otherwise.
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<String, PluginCommandError> {
        let mut client = reqwest::Client::builder();
        if let Some(ca) = self.ca {
            let pem = read(ca)?;
            let certificate = reqwest::Certificate::from_pem(&pem)
                .map_err(|e| PluginCommandError::Invalid(format!("{}: {e}", ca.display())))?;
            client = client.tls_certs_only([certificate]);
        }
        let client = client.build().map_err(|e| PluginCommandError::Invalid(e.to_string()))?;
        let url = format!("{}/{path}", self.url.trim_end_matches('/'));
        let mut request = client.request(method, &url).bearer_auth(self.token);
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request
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
}

/// `hearth plugin verify`: whether `signature` (base64, from `hearth plugin sign`) signs
/// `component` with `manifest` under one of `keys` (Ed25519 public keys, PEM or base64).
/// Returns the name of the key that signed.
pub fn plugin_verify(
    keys: &[PathBuf],
    manifest_path: &Path,
    component: &Path,
    signature: &Path,
) -> Result<String, PluginCommandError> {
    let manifest = manifest(manifest_path)?;
    let signature = String::from_utf8(read(signature)?)
        .ok()
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text.trim()).ok())
        .ok_or_else(|| PluginCommandError::Invalid("the signature file is not base64 text".into()))?;
    let trusted = keys
        .iter()
        .map(|path| crate::plugins::signing::TrustKey::load(path))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PluginCommandError::Invalid(e.to_string()))?;
    let message = crate::plugins::signing::signed_message(&read(component)?, &manifest);
    match crate::plugins::signing::signer(&trusted, &message, &signature) {
        Some(key) => Ok(key.name.clone()),
        None => Err(PluginCommandError::Invalid(
            "the signature does not match this component and manifest under any of the given keys \
             (re-sign after any change to either)"
                .into(),
        )),
    }
}
