//! The console's plugins pages.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Multipart, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine as _;
use serde_json::{Value, json};

use super::{answer, api_page, code, done, now_minute, text};
use crate::api::SharedState;
use crate::api::console::html::{self, esc, url_part};
use crate::api::console::{PendingUpload, SessionView, call, expired, flash};
use crate::api::extract::FhirPath;

pub async fn plugins(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    api_page(&state, &view, "/admin/plugins", ("Plugins", "/console/plugins"), |body| {
        let mut rows = Vec::new();
        for plugin in body["plugins"].as_array().into_iter().flatten() {
            let name = text(plugin, "name");
            let enabled = plugin["enabled"].as_bool().unwrap_or(false);
            let stats = &plugin["stats"];
            let signature = match plugin["signedBy"].as_str() {
                Some(key) => format!("signed by {}", code(key)),
                None => "<span class=\"state-bad\">unsigned</span>".to_owned(),
            };
            let hosts: Vec<String> =
                plugin["allowedHosts"].as_array().into_iter().flatten().filter_map(Value::as_str).map(code).collect();
            let capabilities = format!(
                "HTTP to: {}<br>key-value store: {}",
                if hosts.is_empty() { "none".to_owned() } else { hosts.join(", ") },
                if plugin["keyValue"].as_bool() == Some(true) { "yes" } else { "no" }
            );
            let limits = &plugin["limits"];
            let limits = format!(
                "{} ms deadline<br>{} MiB memory",
                limits["timeout_ms"].as_u64().unwrap_or(0),
                limits["memory_mib"].as_u64().unwrap_or(0)
            );
            let hour = stats["lastHour"].as_array().cloned().unwrap_or_default();
            let minutes: Vec<i64> = hour.iter().map(|m| m["minute"].as_i64().unwrap_or(0)).collect();
            let series = |key: &str| hour.iter().map(|m| m[key].as_u64().unwrap_or(0)).collect::<Vec<u64>>();
            let chart = html::minute_chart(
                &format!("{name} calls"),
                now_minute(),
                &minutes,
                &[
                    ("calls", "calls", series("calls")),
                    ("failures", "failures", series("failures")),
                    ("timeouts", "timeouts", series("timeouts")),
                ],
            );
            let health = format!(
                "{} calls, {} denials<br>p50 {} · p99 {}<br>{} traps or bad output, {} timeouts<br>peak memory {}{chart}",
                stats["calls"].as_u64().unwrap_or(0),
                stats["denials"].as_u64().unwrap_or(0),
                html::micros(stats["p50Micros"].as_u64()),
                html::micros(stats["p99Micros"].as_u64()),
                stats["failures"].as_u64().unwrap_or(0).saturating_sub(stats["timeouts"].as_u64().unwrap_or(0)),
                stats["timeouts"].as_u64().unwrap_or(0),
                html::bytes(plugin["peakMemoryBytes"].as_u64().unwrap_or(0)),
            );
            let base = format!("/console/plugins/{}", url_part(name));
            let switch = if enabled { "disable" } else { "enable" };
            let actions = format!(
                "<a class=\"button secondary\" href=\"{base}/{switch}\">{}</a> \
                 <a class=\"button secondary\" href=\"{base}/rollback\">Roll back</a> \
                 <a class=\"button secondary\" href=\"{base}/remove\">Remove</a>",
                if enabled { "Disable" } else { "Enable" }
            );
            rows.push(vec![
                format!(
                    "<strong>{}</strong><br><span class=\"muted\">{}</span>",
                    esc(name),
                    esc(text(plugin, "description"))
                ),
                format!("{} <span class=\"muted\">(#{})</span>", esc(text(plugin, "version")), plugin["seq"]),
                esc(text(plugin, "world")),
                esc(plugin["language"].as_str().unwrap_or("not stated")),
                if enabled {
                    "<span class=\"state-ok\">enabled</span>".into()
                } else {
                    "<span class=\"state-bad\">disabled</span>".into()
                },
                signature,
                capabilities,
                limits,
                health,
                actions,
            ]);
        }
        let mut page = html::table(
            "Plugins loaded on this host",
            &[
                "Plugin",
                "Version",
                "World",
                "Language",
                "State",
                "Signature",
                "Capabilities",
                "Limits",
                "Health (since loaded; chart: last hour)",
                "Actions",
            ],
            &rows,
        );
        let _ = write!(
            page,
            "<h2 id=\"upload-h\">Upload a plugin or a new version</h2>\
             <form method=\"post\" action=\"/console/plugins/upload\" enctype=\"multipart/form-data\" aria-labelledby=\"upload-h\">{}\
             <label for=\"manifest\">Manifest (JSON or TOML)</label>\
             <textarea id=\"manifest\" name=\"manifest\" required>{}</textarea>\
             <label for=\"component\">Component (.wasm)</label><input type=\"file\" id=\"component\" name=\"component\" accept=\".wasm\" required>\
             <label for=\"signature\">Signature (optional; from <code>hearth plugin sign</code>)</label>\
             <input type=\"file\" id=\"signature\" name=\"signature\">\
             <div class=\"actions\"><button type=\"submit\">Check and review</button></div></form>",
            html::csrf_field(&view.csrf),
            esc("{\"name\": \"\", \"version\": \"1.0.0\", \"world\": \"policy\"}")
        );
        page
    })
    .await
}

const PLUGIN_ACTIONS: [&str; 4] = ["enable", "disable", "rollback", "remove"];

/// The bindings naming `plugin`, as `source (mode)` strings.
async fn bindings_of(state: &SharedState, view: &SessionView, plugin: &str) -> Vec<String> {
    let reply = call(state, view, Method::GET, "/admin/policies", None).await;
    reply.body["bindings"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|b| b["plugin"] == plugin)
        .map(|b| format!("{} ({})", text(b, "source"), text(b, "mode")))
        .collect()
}

pub async fn plugin_confirm(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    FhirPath((name, action)): FhirPath<(String, String)>,
) -> Response {
    if !PLUGIN_ACTIONS.contains(&action.as_str()) {
        return html::page("Not found", "", Some(view.frame()), "<p>There is no such plugin action.</p>");
    }
    let reply = call(&state, &view, Method::GET, &format!("/admin/plugins/{}", url_part(&name)), None).await;
    if let Some(response) = expired(&state, &view, &reply) {
        return response;
    }
    let bindings = bindings_of(&state, &view, &name).await;
    let bound = if bindings.is_empty() {
        "no binding names it".to_owned()
    } else {
        format!("bindings naming it: {}", bindings.join(", "))
    };
    let title = format!("{} plugin {name}", capitalised(&action));
    let frame_view = view.clone();
    answer(&frame_view, &title, "/console/plugins", &reply, |plugin| {
        let current = format!("{} (#{})", text(plugin, "version"), plugin["seq"]);
        let lines = match action.as_str() {
            "disable" => vec![
                format!("{name} {current} stays loaded but stops answering on every host."),
                format!("Policies: every request it gates is denied until it is enabled again ({bound})."),
                "Integrations: its outbox events wait, and are delivered once it is enabled.".to_owned(),
            ],
            "enable" => vec![format!("{name} {current} answers again on every host ({bound}).")],
            "remove" => vec![
                format!("{name} and all its stored versions are removed from every host."),
                format!("What its bindings gate is denied until the bindings are changed ({bound})."),
            ],
            _ => {
                let active = plugin["seq"].as_i64().unwrap_or(0);
                let earlier = plugin["versions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|v| v["seq"].as_i64().is_some_and(|s| s < active))
                    .max_by_key(|v| v["seq"].as_i64());
                match earlier {
                    Some(v) => vec![
                        format!(
                            "Version {} (#{}, uploaded {} by {}) replaces the active version {current} on every host.",
                            text(v, "version"),
                            v["seq"],
                            text(v, "uploaded"),
                            text(v, "uploadedBy")
                        ),
                        "Calls already running finish on the current version.".to_owned(),
                    ],
                    None => {
                        return format!(
                            "<p class=\"flash error\" role=\"alert\">{name} has no earlier version to roll back to.</p>\
                             <p><a href=\"/console/plugins\">Back to plugins</a></p>"
                        );
                    }
                }
            }
        };
        let target = format!("/console/plugins/{}/{action}", url_part(&name));
        html::confirmation(&lines, &target, &view.csrf, &capitalised(&action), "/console/plugins")
    })
}

fn capitalised(word: &str) -> String {
    let word = if word == "rollback" { "roll back" } else { word };
    let mut chars = word.chars();
    chars.next().map(|c| c.to_uppercase().chain(chars).collect()).unwrap_or_default()
}

pub async fn plugin_action(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    FhirPath((name, action)): FhirPath<(String, String)>,
) -> Response {
    if !PLUGIN_ACTIONS.contains(&action.as_str()) {
        return html::page("Not found", "", Some(view.frame()), "<p>There is no such plugin action.</p>");
    }
    let path = format!("/admin/plugins/{}", url_part(&name));
    let reply = match action.as_str() {
        "remove" => call(&state, &view, Method::DELETE, &path, None).await,
        _ => call(&state, &view, Method::POST, &format!("{path}/{action}"), None).await,
    };
    let message = match action.as_str() {
        "remove" => format!("Removed {name}."),
        "rollback" => {
            format!("Rolled {name} back to version {} (#{}).", text(&reply.body, "version"), reply.body["seq"])
        }
        other => format!("{} {name}.", capitalised(&format!("{other}d"))),
    };
    done(&state, &view, &reply, message, "/console/plugins")
}

pub async fn upload(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    mut form: Multipart,
) -> Response {
    let mut manifest_text = String::new();
    let mut component = Vec::new();
    let mut signature = None;
    loop {
        let field = match form.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return upload_refused(&state, &view, &format!("the form could not be read ({e})")),
        };
        let name = field.name().unwrap_or("").to_owned();
        let Ok(bytes) = field.bytes().await else {
            return upload_refused(&state, &view, "the form could not be read");
        };
        match name.as_str() {
            "manifest" => manifest_text = String::from_utf8_lossy(&bytes).into_owned(),
            "component" => component = bytes.to_vec(),
            "signature" if !bytes.is_empty() => signature = Some(signature_text(&bytes)),
            _ => {}
        }
    }
    let manifest = match crate::plugins::Manifest::parse(&manifest_text) {
        Ok(manifest) => manifest,
        Err(e) => return upload_refused(&state, &view, &format!("the manifest does not read: {e}")),
    };
    if let Err(e) = manifest.check() {
        return upload_refused(&state, &view, &format!("the manifest is not valid: {e}"));
    }
    if component.is_empty() {
        return upload_refused(&state, &view, "choose the component (.wasm) file");
    }
    let Ok(manifest_json) = serde_json::to_value(&manifest) else {
        return upload_refused(&state, &view, "the manifest could not be encoded");
    };
    let name = manifest.name.clone();
    let current = call(&state, &view, Method::GET, &format!("/admin/plugins/{}", url_part(&name)), None).await;
    if let Some(response) = expired(&state, &view, &current) {
        return response;
    }
    let digest = crate::crypto::hex(&<sha2::Sha256 as sha2::Digest>::digest(&component));
    let mut lines = vec![format!(
        "Load {name} version {} ({} world, {}), SHA-256 {digest}.",
        manifest.version,
        manifest.world.as_str(),
        html::bytes(component.len() as u64)
    )];
    if current.ok() {
        lines.push(format!(
            "It replaces the active version {} (#{}) on every host; calls already running finish on the old one; \
             the old version stays stored for a roll back.",
            text(&current.body, "version"),
            current.body["seq"]
        ));
    } else {
        lines.push(format!("{name} is a new plugin; it acts only where a binding names it."));
    }
    let bindings = bindings_of(&state, &view, &name).await;
    if !bindings.is_empty() {
        lines.push(format!("Bindings naming it: {}.", bindings.join(", ")));
    }
    if !manifest.allowed_hosts.is_empty() {
        lines.push(format!("It may send HTTP requests to: {}.", manifest.allowed_hosts.join(", ")));
    }
    lines.push(if signature.is_some() {
        "A signature is attached; the server checks it against its trusted plugin keys.".to_owned()
    } else {
        "No signature is attached (a server configured with trusted keys refuses it).".to_owned()
    });
    crate::api::console::set_pending_upload(
        &state,
        &view,
        Some(PendingUpload { name: name.clone(), manifest: manifest_json, component, signature }),
    );
    let confirm =
        html::confirmation(&lines, "/console/plugins/upload/confirm", &view.csrf, "Load it", "/console/plugins");
    let cancel = html::button_form("/console/plugins/upload/cancel", &view.csrf, "Discard this upload", "secondary");
    html::page(&format!("Load plugin {name}"), "/console/plugins", Some(view.frame()), &format!("{confirm}{cancel}"))
}

/// A signature file: base64 text as `hearth plugin sign` writes it, or the raw 64 bytes.
fn signature_text(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes).trim().to_owned();
    if base64::engine::general_purpose::STANDARD.decode(&text).is_ok() {
        text
    } else {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }
}

fn upload_refused(state: &SharedState, view: &SessionView, why: &str) -> Response {
    flash(state, view, true, format!("Nothing was loaded: {why}."));
    Redirect::to("/console/plugins").into_response()
}

pub async fn upload_confirm(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    let Some(upload) = crate::api::console::pending_upload(&state, &view) else {
        return upload_refused(&state, &view, "there is no upload waiting (it was loaded or discarded already)");
    };
    crate::api::console::set_pending_upload(&state, &view, None);
    let mut body = json!({
        "manifest": upload.manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(&upload.component),
    });
    if let Some(signature) = &upload.signature {
        body["signature"] = json!(signature);
    }
    let path = format!("/admin/plugins/{}", url_part(&upload.name));
    let reply = call(&state, &view, Method::PUT, &path, Some(body.to_string().into_bytes())).await;
    let message = format!("Loaded {} version {} (#{}).", upload.name, text(&reply.body, "version"), reply.body["seq"]);
    done(&state, &view, &reply, message, "/console/plugins")
}

pub async fn upload_cancel(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    crate::api::console::set_pending_upload(&state, &view, None);
    flash(&state, &view, false, "The upload was discarded; nothing was loaded.");
    Redirect::to("/console/plugins").into_response()
}
