//! The plugin and policy admin API (scope `admin/plugins`): upload (load or replace), list,
//! inspect, enable, disable, roll back and remove plugins; show and reload policy bindings;
//! inspect and retry outbox events. Every change is audited by the audit layer.

use std::sync::atomic::Ordering;

use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::SharedState;
use crate::auth::Principal;
use crate::fhir::instant::to_fhir_instant;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::plugins::manifest::is_plugin_name;
use crate::plugins::registry::{ActivePlugin, CallStats};
use crate::plugins::signing::{signed_message, signer};
use crate::plugins::{LoadError, Manifest};
use crate::store::NewPluginVersion;

/// Largest component accepted (interpreted-language components are 10-20 MB).
const MAX_COMPONENT_BYTES: usize = 48 << 20;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/admin/plugins", get(list))
        .route(
            "/admin/plugins/{name}",
            get(inspect).put(load).delete(remove).layer(DefaultBodyLimit::max(MAX_COMPONENT_BYTES * 4 / 3 + 65536)),
        )
        .route("/admin/plugins/{name}/enable", post(enable))
        .route("/admin/plugins/{name}/disable", post(disable))
        .route("/admin/plugins/{name}/rollback", post(rollback))
        .route("/admin/policies", get(policies))
        .route("/admin/policies/reload", post(reload_policies))
        .route("/admin/policies/bindings/{file}/{index}/{mode}", post(set_mode))
        .route("/admin/outbox", get(outbox))
        .route("/admin/outbox/{id}/retry", post(retry_event))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Upload {
    manifest: Manifest,
    /// The component, base64.
    component: String,
    /// Ed25519 signature (see `plugins::signing`), base64.
    #[serde(default)]
    signature: Option<String>,
}

fn stats_json(stats: &CallStats) -> Value {
    let calls = stats.calls.load(Ordering::Relaxed);
    let total = stats.total_micros.load(Ordering::Relaxed);
    json!({
        "calls": calls,
        "failures": stats.failures.load(Ordering::Relaxed),
        "timeouts": stats.timeouts.load(Ordering::Relaxed),
        "denials": stats.denials.load(Ordering::Relaxed),
        "meanMicros": total.checked_div(calls).unwrap_or(0),
        "p50Micros": stats.latency_quantile(0.50),
        "p99Micros": stats.latency_quantile(0.99),
        "lastHour": stats.last_hour(),
    })
}

fn plugin_json(plugin: &ActivePlugin) -> Value {
    let manifest = &plugin.compiled.manifest;
    json!({
        "name": plugin.name,
        "seq": plugin.seq,
        "version": manifest.version,
        "world": manifest.world.as_str(),
        "language": manifest.language,
        "description": manifest.description,
        "enabled": plugin.enabled.load(Ordering::Acquire),
        "sha256": plugin.compiled.sha256,
        "size": plugin.compiled.size,
        "signedBy": plugin.signed_by,
        "allowedHosts": manifest.allowed_hosts,
        "keyValue": manifest.key_value,
        "limits": manifest.limits(),
        "stats": stats_json(&plugin.stats),
        "peakMemoryBytes": plugin.compiled.peak_memory(),
    })
}

fn check_name(name: &str) -> Result<(), FhirError> {
    if is_plugin_name(name) {
        Ok(())
    } else {
        Err(FhirError::bad_request(
            IssueType::Value,
            "plugin names are 1-64 of a-z, 0-9 and '-', starting with a letter",
        ))
    }
}

fn not_loaded(name: &str) -> FhirError {
    FhirError::not_found(format!("no plugin named {name}; GET /admin/plugins lists them"))
}

async fn list(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    let plugins: Vec<Value> = state.plugins.registry.all().iter().map(|p| plugin_json(p)).collect();
    Ok(Json(json!({ "plugins": plugins })))
}

async fn inspect(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    check_name(&name)?;
    let plugin = state.plugins.registry.get(&name).ok_or_else(|| not_loaded(&name))?;
    let versions = state.store.plugin_versions(&name).await?;
    let mut body = plugin_json(&plugin);
    body["versions"] = versions
        .iter()
        .map(|v| {
            json!({
                "seq": v.seq, "version": v.version, "world": v.world, "sha256": v.sha256, "size": v.size,
                "signedBy": v.signed_by, "uploaded": to_fhir_instant(v.uploaded_us), "uploadedBy": v.uploaded_by,
                "active": v.seq == plugin.seq,
            })
        })
        .collect();
    Ok(Json(body))
}

/// `PUT /admin/plugins/{name}` `{"manifest": {...}, "component": BASE64, "signature": BASE64?}`:
/// validates, compiles and stores a new version, then swaps it in (calls in flight finish on
/// the version they started with).
async fn load(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Response, FhirError> {
    principal.require_admin("plugins")?;
    check_name(&name)?;
    let upload: Upload = serde_json::from_slice(&body).map_err(|e| {
        FhirError::bad_request(
            IssueType::Structure,
            format!(r#"send {{"manifest": {{...}}, "component": "<base64>", "signature": "<base64, optional>"}}: {e}"#),
        )
    })?;
    let manifest = upload.manifest;
    manifest.check().map_err(|e| FhirError::bad_request(IssueType::Value, e.to_string()))?;
    if manifest.name != name {
        return Err(FhirError::bad_request(
            IssueType::Value,
            format!("the manifest names plugin {:?} but the URL names {name:?}", manifest.name),
        ));
    }
    let component = base64::engine::general_purpose::STANDARD
        .decode(upload.component.trim())
        .map_err(|_| FhirError::bad_request(IssueType::Value, "component must be base64"))?;
    if component.len() > MAX_COMPONENT_BYTES {
        return Err(FhirError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            IssueType::TooLong,
            format!("components may be at most {} MiB", MAX_COMPONENT_BYTES >> 20),
        ));
    }
    let trust_keys = &state.plugins.trust_keys;
    let mut signature_bytes = None;
    let signed_by = match &upload.signature {
        Some(signature) => {
            let signature = base64::engine::general_purpose::STANDARD
                .decode(signature.trim())
                .map_err(|_| FhirError::bad_request(IssueType::Value, "signature must be base64"))?;
            let message = signed_message(&component, &manifest);
            let verified = signer(trust_keys, &message, &signature).map(|key| key.name.clone());
            signature_bytes = Some(signature);
            match verified {
                Some(key) => Some(key),
                None if trust_keys.is_empty() => None,
                None => {
                    return Err(FhirError::new(
                        StatusCode::FORBIDDEN,
                        IssueType::Security,
                        "the signature does not verify with any trusted plugin key (sign the exact component and manifest)",
                    ));
                }
            }
        }
        None if !trust_keys.is_empty() => {
            return Err(FhirError::new(
                StatusCode::FORBIDDEN,
                IssueType::Security,
                "this server only loads signed plugins: sign with `hearth plugin sign` and send the signature",
            ));
        }
        None => None,
    };
    let runtime = state.plugins.registry.runtime.clone();
    let (to_compile, compile_manifest) = (component.clone(), manifest.clone());
    let compiled = tokio::task::spawn_blocking(move || runtime.load(compile_manifest, &to_compile))
        .await
        .map_err(|_| FhirError::internal())?
        .map_err(|error| {
            let message = match &error {
                LoadError::Invalid(_) => "the component is not a valid WebAssembly component".to_owned(),
                LoadError::WrongWorld { .. } => error.to_string(),
            };
            FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueType::Invalid, message)
        })?;
    let manifest_json = serde_json::to_string(&manifest).map_err(|_| FhirError::internal())?;
    let existed = state.plugins.registry.get(&name).is_some();
    let seq = state
        .store
        .add_plugin_version(&NewPluginVersion {
            name: &name,
            version: &manifest.version,
            world: manifest.world.as_str(),
            manifest_json: &manifest_json,
            component: &component,
            sha256: &compiled.sha256,
            signed_by: signed_by.as_deref(),
            signature: signature_bytes.as_deref(),
            uploaded_by: &principal.subject,
        })
        .await?;
    let plugin = ActivePlugin::new(name.clone(), seq, signed_by, compiled);
    let body = plugin_json(&plugin);
    state.plugins.registry.install(plugin).await;
    tracing::warn!(plugin = name, seq, by = %principal.subject, "plugin loaded");
    let status = if existed { StatusCode::OK } else { StatusCode::CREATED };
    Ok((status, Json(body)).into_response())
}

async fn set_enabled(
    state: &SharedState,
    principal: &Principal,
    name: &str,
    enabled: bool,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    check_name(name)?;
    if !state.store.set_plugin_enabled(name, enabled).await? {
        return Err(not_loaded(name));
    }
    state.plugins.registry.refresh().await?;
    let plugin = state.plugins.registry.get(name).ok_or_else(|| not_loaded(name))?;
    tracing::warn!(plugin = name, enabled, by = %principal.subject, "plugin switched");
    Ok(Json(plugin_json(&plugin)))
}

async fn enable(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, FhirError> {
    set_enabled(&state, &principal, &name, true).await
}

/// Disabling keeps the plugin loaded; its policy bindings deny and its events wait.
async fn disable(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, FhirError> {
    set_enabled(&state, &principal, &name, false).await
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackRequest {
    /// The stored version to activate; the one before the active version if absent.
    seq: Option<i64>,
}

async fn rollback(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    check_name(&name)?;
    let request: RollbackRequest = if body.is_empty() {
        RollbackRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|_| FhirError::bad_request(IssueType::Structure, r#"send {"seq": N} or nothing"#))?
    };
    let current = state.plugins.registry.get(&name).ok_or_else(|| not_loaded(&name))?;
    let target = match request.seq {
        Some(seq) => seq,
        None => {
            let versions = state.store.plugin_versions(&name).await?;
            versions.iter().rev().map(|v| v.seq).find(|seq| *seq < current.seq).ok_or_else(|| {
                FhirError::new(StatusCode::CONFLICT, IssueType::Conflict, "there is no earlier version to roll back to")
            })?
        }
    };
    // The version must be trusted now, whatever it was when it was stored.
    let stored = state
        .store
        .plugin_component(&name, target)
        .await?
        .ok_or_else(|| FhirError::not_found(format!("plugin {name} has no stored version {target}")))?;
    if let Err(reason) = state.plugins.registry.verify_stored(&stored) {
        return Err(FhirError::new(
            StatusCode::FORBIDDEN,
            IssueType::Security,
            format!("version {target} of {name} cannot be activated: {reason}"),
        ));
    }
    if !state.store.activate_plugin_version(&name, target).await? {
        return Err(FhirError::not_found(format!("plugin {name} has no stored version {target}")));
    }
    state.plugins.registry.refresh().await?;
    let plugin = state.plugins.registry.get(&name).filter(|p| p.seq == target).ok_or_else(|| {
        FhirError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            IssueType::Invalid,
            format!("version {target} of {name} is stored but does not load on this server; see the log"),
        )
    })?;
    tracing::warn!(plugin = name, seq = target, by = %principal.subject, "plugin rolled back");
    Ok(Json(plugin_json(&plugin)))
}

async fn remove(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    check_name(&name)?;
    if !state.store.remove_plugin(&name).await? {
        return Err(not_loaded(&name));
    }
    state.plugins.registry.refresh().await?;
    tracing::warn!(plugin = name, by = %principal.subject, "plugin removed");
    let still_bound = state.plugins.policies.bindings().bindings.iter().any(|b| b.plugin == name);
    let message = if still_bound {
        format!("removed plugin {name}; bindings still name it, so what they gate is denied until they are changed")
    } else {
        format!("removed plugin {name}")
    };
    Ok(Json(crate::fhir::outcome::operation_outcome("information", IssueType::Informational, &message, None)))
}

fn policies_json(state: &SharedState) -> Value {
    let bindings = state.plugins.policies.bindings();
    let shadow: Vec<Value> = state
        .plugins
        .policies
        .shadow_report()
        .into_iter()
        .map(|(plugin, counts)| {
            let by_kind: Vec<Value> = counts
                .by_kind
                .iter()
                .map(|((res_type, interaction), (evaluated, differed))| {
                    json!({"resourceType": res_type, "interaction": interaction, "evaluated": evaluated, "differed": differed})
                })
                .collect();
            let minutes: Vec<Value> = counts
                .minutes
                .iter()
                .map(|(minute, evaluated, differed)| json!({"minute": minute, "evaluated": evaluated, "differed": differed}))
                .collect();
            let samples: Vec<Value> = counts
                .samples
                .iter()
                .rev()
                .map(|s| {
                    json!({
                        "at": to_fhir_instant(s.at_us), "binding": s.binding, "resourceType": s.resource_type,
                        "id": s.id, "interaction": s.interaction, "would": s.would, "enforced": s.enforced,
                    })
                })
                .collect();
            json!({
                "plugin": plugin, "evaluated": counts.evaluated, "differed": counts.differed, "failed": counts.failed,
                "byKind": by_kind, "lastHour": minutes, "samples": samples,
            })
        })
        .collect();
    json!({
        "source": bindings.source,
        "bindings": serde_json::to_value(&bindings.bindings).unwrap_or_default(),
        "shadow": shadow,
    })
}

async fn policies(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    Ok(Json(policies_json(&state)))
}

async fn reload_policies(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    state
        .plugins
        .policies
        .reload()
        .map_err(|e| FhirError::bad_request(IssueType::Invalid, format!("the bindings in force are unchanged: {e}")))?;
    tracing::warn!(by = %principal.subject, "policy bindings reloaded");
    Ok(Json(policies_json(&state)))
}

/// `POST /admin/policies/bindings/{file}/{index}/{enforce|shadow}`: switches binding
/// `file#index` (as `GET /admin/policies` names it) to enforce or shadow mode by rewriting its
/// `mode` line in the policies folder, then reloads the bindings on this host.
async fn set_mode(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    super::extract::FhirPath((file, index, mode)): super::extract::FhirPath<(String, String, String)>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    let mode = match mode.as_str() {
        "enforce" => crate::policy::Mode::Enforce,
        "shadow" => crate::policy::Mode::Shadow,
        _ => return Err(FhirError::not_found("switch a binding to 'enforce' or 'shadow'")),
    };
    let source = format!("{file}#{index}");
    let bindings = state.plugins.policies.bindings();
    if !bindings.bindings.iter().any(|b| b.source == source) {
        return Err(FhirError::not_found(format!("no binding {source} is in force; GET /admin/policies lists them")));
    }
    state.plugins.policies.set_mode(&source, mode).map_err(|e| {
        FhirError::new(StatusCode::CONFLICT, IssueType::Conflict, format!("the bindings in force are unchanged: {e}"))
    })?;
    tracing::warn!(binding = source, ?mode, by = %principal.subject, "policy binding mode switched");
    Ok(Json(policies_json(&state)))
}

#[derive(Deserialize)]
struct OutboxQuery {
    state: Option<String>,
}

async fn outbox(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    super::extract::FhirQuery(query): super::extract::FhirQuery<OutboxQuery>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    let wanted = query.state.as_deref().unwrap_or("dead");
    if !matches!(wanted, "dead" | "pending") {
        return Err(FhirError::bad_request(IssueType::Value, "state must be dead or pending"));
    }
    let events = state.store.outbox_events(wanted, 1000).await?;
    let events: Vec<Value> = events
        .iter()
        .map(|e| {
            json!({
                "id": e.id, "plugin": e.plugin, "resourceType": e.res_type, "resourceId": e.res_id,
                "versionId": e.version.to_string(), "kind": e.kind, "created": to_fhir_instant(e.created_us),
                "attempts": e.attempts, "state": e.state, "lastError": e.last_error,
            })
        })
        .collect();
    Ok(Json(json!({ "state": wanted, "events": events })))
}

async fn retry_event(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    super::extract::FhirPath(id): super::extract::FhirPath<i64>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("plugins")?;
    if !state.store.outbox_retry(id).await? {
        return Err(FhirError::not_found(format!("no dead-lettered event {id}")));
    }
    state.plugins.delivery_wake.notify_one();
    let message = format!("event {id} is queued for delivery again");
    Ok(Json(crate::fhir::outcome::operation_outcome("information", IssueType::Informational, &message, None)))
}
