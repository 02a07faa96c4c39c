//! The console's pages and actions. Each reads or changes state only through [`call`], i.e.
//! the REST API with the signed-in user's token.

use std::fmt::Write as _;

use axum::extract::{Multipart, Query, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::{Extension, Form};
use base64::Engine as _;
use serde::Deserialize;
use serde_json::{Value, json};

use super::html::{self, esc, url_part};
use super::{ApiReply, PendingUpload, SessionView, call, expired, flash};
use crate::api::SharedState;
use crate::api::extract::FhirPath;

/// Renders `title` with `body`, or the API's refusal (e.g. a missing scope) in its place.
fn answer(
    view: &SessionView,
    title: &str,
    active: &str,
    reply: &ApiReply,
    body: impl FnOnce(&Value) -> String,
) -> Response {
    let content = if reply.ok() {
        body(&reply.body)
    } else {
        format!("<p class=\"flash error\" role=\"alert\">This page cannot be shown: {}.</p>", esc(&reply.problem()))
    };
    html::page(title, active, Some(view.frame()), &content)
}

/// A page showing what `GET api_path` answers, rendered by `body`.
async fn api_page(
    state: &SharedState,
    view: &SessionView,
    api_path: &str,
    (title, active): (&str, &str),
    body: impl FnOnce(&Value) -> String,
) -> Response {
    let reply = call(state, view, Method::GET, api_path, None).await;
    if let Some(response) = expired(state, view, &reply) {
        return response;
    }
    answer(view, title, active, &reply, body)
}

fn done(state: &SharedState, view: &SessionView, reply: &ApiReply, success: String, back: &str) -> Response {
    if let Some(response) = expired(state, view, reply) {
        return response;
    }
    if reply.ok() {
        flash(state, view, false, success);
    } else {
        flash(state, view, true, format!("Nothing was changed: {}.", reply.problem()));
    }
    Redirect::to(back).into_response()
}

fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("")
}

fn code(text: &str) -> String {
    format!("<code>{}</code>", esc(text))
}

fn now_minute() -> i64 {
    crate::fhir::instant::now_us() / 60_000_000
}

// ---------------------------------------------------------------------------------------------
// Plugins

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
    let digest = crate::plugins::runtime::hex(&<sha2::Sha256 as sha2::Digest>::digest(&component));
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
    super::set_pending_upload(
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
    let Some(upload) = super::pending_upload(&state, &view) else {
        return upload_refused(&state, &view, "there is no upload waiting (it was loaded or discarded already)");
    };
    super::set_pending_upload(&state, &view, None);
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
    super::set_pending_upload(&state, &view, None);
    flash(&state, &view, false, "The upload was discarded; nothing was loaded.");
    Redirect::to("/console/plugins").into_response()
}

// ---------------------------------------------------------------------------------------------
// Policies and the shadow report

fn describe_binding(binding: &Value) -> (String, String) {
    let types = match binding["resource_types"].as_array() {
        None => "every type".to_owned(),
        Some(types) => {
            let mut names: Vec<&str> = types.iter().filter_map(Value::as_str).collect();
            names.sort_unstable();
            names.join(", ")
        }
    };
    let interactions: Vec<&str> =
        binding["interactions"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
    (types, interactions.join(", "))
}

pub async fn policies(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    api_page(&state, &view, "/admin/policies", ("Policies", "/console/policies"), |body| {
        let mut rows = Vec::new();
        for binding in body["bindings"].as_array().into_iter().flatten() {
            let source = text(binding, "source");
            let mode = text(binding, "mode");
            let (types, interactions) = describe_binding(binding);
            let other = if mode == "shadow" { "enforce" } else { "shadow" };
            let action = match source.rsplit_once('#') {
                Some((file, index)) => format!(
                    "<a class=\"button secondary\" href=\"/console/policies/{}/{}/{other}\">Switch to {other}</a>",
                    url_part(file),
                    url_part(index)
                ),
                None => String::new(),
            };
            let mode_cell = if mode == "shadow" {
                "<span class=\"state-bad\">shadow</span> (decides and logs, never enforces)".to_owned()
            } else {
                "<span class=\"state-ok\">enforce</span>".to_owned()
            };
            rows.push(vec![
                binding["order"].to_string(),
                code(text(binding, "plugin")),
                esc(&types),
                esc(&interactions),
                mode_cell,
                code(source),
                action,
            ]);
        }
        let folder = body["source"].as_str().map_or_else(|| "none (started without --policies)".to_owned(), code);
        let mut page = format!(
            "<p>Bindings are read from the policies folder {folder}, in evaluation order; deny overrides allow.</p>"
        );
        page.push_str(&html::table(
            "Policy bindings in force on this host",
            &["Order", "Plugin", "Resource types", "Interactions", "Mode", "Written at", "Change"],
            &rows,
        ));
        page.push_str("<div class=\"actions\">");
        page.push_str(&html::button_form(
            "/console/policies/reload",
            &view.csrf,
            "Re-read the policies folder",
            "secondary",
        ));
        page.push_str("<a href=\"/console/shadow\">Shadow report</a></div>");
        page
    })
    .await
}

pub async fn policies_reload(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    let reply = call(&state, &view, Method::POST, "/admin/policies/reload", None).await;
    let count = reply.body["bindings"].as_array().map_or(0, Vec::len);
    done(&state, &view, &reply, format!("Re-read the policies folder: {count} bindings in force."), "/console/policies")
}

fn shadow_of<'a>(policies: &'a Value, plugin: &str) -> Option<&'a Value> {
    policies["shadow"].as_array()?.iter().find(|s| s["plugin"] == plugin)
}

pub async fn mode_confirm(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    FhirPath((file, index, mode)): FhirPath<(String, String, String)>,
) -> Response {
    let source = format!("{file}#{index}");
    let title = format!("Switch binding {source} to {mode}");
    api_page(&state, &view, "/admin/policies", (&title, "/console/policies"), |body| {
        let Some(binding) = body["bindings"].as_array().into_iter().flatten().find(|b| b["source"] == source.as_str())
        else {
            return format!("<p class=\"flash error\" role=\"alert\">No binding {} is in force.</p>", esc(&source));
        };
        if !matches!(mode.as_str(), "enforce" | "shadow") || text(binding, "mode") == mode {
            return format!("<p>Binding {} is already in {} mode.</p>", esc(&source), esc(text(binding, "mode")));
        }
        let plugin = text(binding, "plugin");
        let (types, interactions) = describe_binding(binding);
        let mut lines = vec![format!("Binding {source}: plugin {plugin} on {types} for {interactions}.")];
        if mode == "enforce" {
            lines.push(format!("Its decisions will be enforced: requests {plugin} denies are refused from now on."));
            if let Some(shadow) = shadow_of(body, plugin) {
                lines.push(format!(
                    "In shadow mode on this host it decided {} times and differed from what was enforced {} times ({} failures, which would deny).",
                    shadow["evaluated"], shadow["differed"], shadow["failed"]
                ));
            } else {
                lines.push("It has not decided anything in shadow mode on this host yet.".to_owned());
            }
        } else {
            lines.push(format!("Its decisions will only be logged: requests {plugin} would deny are allowed."));
        }
        lines.push(format!(
            "The mode line of binding {index} in {file} is rewritten and this host reloads its bindings; other hosts read their own policies folder."
        ));
        let target = format!("/console/policies/{}/{}/{}", url_part(&file), url_part(&index), url_part(&mode));
        html::confirmation(&lines, &target, &view.csrf, &format!("Switch to {mode}"), "/console/policies")
    })
    .await
}

pub async fn mode_switch(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    FhirPath((file, index, mode)): FhirPath<(String, String, String)>,
) -> Response {
    let path = format!("/admin/policies/bindings/{}/{}/{}", url_part(&file), url_part(&index), url_part(&mode));
    let reply = call(&state, &view, Method::POST, &path, None).await;
    done(&state, &view, &reply, format!("Binding {file}#{index} is now in {mode} mode."), "/console/policies")
}

pub async fn shadow(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    api_page(&state, &view, "/admin/policies", ("Shadow report", "/console/shadow"), |body| {
        let shadow_bindings: Vec<String> = body["bindings"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|b| b["mode"] == "shadow")
            .map(|b| format!("{} ({})", code(text(b, "source")), esc(text(b, "plugin"))))
            .collect();
        let mut page = format!(
            "<p>What shadow-mode bindings would have decided, compared with what was enforced, on this host since it \
             started. Samples name resource ids only. Bindings in shadow mode now: {}.</p>",
            if shadow_bindings.is_empty() { "none".to_owned() } else { shadow_bindings.join(", ") }
        );
        let reports = body["shadow"].as_array().cloned().unwrap_or_default();
        if reports.is_empty() {
            page.push_str("<p>No shadow decisions yet.</p>");
        }
        for report in &reports {
            let plugin = text(report, "plugin");
            let hour = report["lastHour"].as_array().cloned().unwrap_or_default();
            let minutes: Vec<i64> = hour.iter().map(|m| m["minute"].as_i64().unwrap_or(0)).collect();
            let series = |key: &str| hour.iter().map(|m| m[key].as_u64().unwrap_or(0)).collect::<Vec<u64>>();
            let _ = write!(
                page,
                "<section aria-labelledby=\"shadow-{0}\"><h2 id=\"shadow-{0}\">{0}</h2>\
                 <p><strong class=\"differed-count\">{1}</strong> of {2} decisions differed from what was enforced; {3} evaluations failed.</p>{4}",
                esc(plugin),
                report["differed"],
                report["evaluated"],
                report["failed"],
                html::minute_chart(
                    &format!("{plugin} shadow decisions"),
                    now_minute(),
                    &minutes,
                    &[("evaluated", "evaluated", series("evaluated")), ("differed", "differed", series("differed"))]
                )
            );
            let kinds: Vec<Vec<String>> = report["byKind"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|k| {
                    vec![
                        esc(text(k, "resourceType")),
                        esc(text(k, "interaction")),
                        k["evaluated"].to_string(),
                        k["differed"].to_string(),
                    ]
                })
                .collect();
            page.push_str(&html::table(
                &format!("{plugin}: by resource type and interaction"),
                &["Resource type", "Interaction", "Decided", "Differed"],
                &kinds,
            ));
            let samples: Vec<Vec<String>> = report["samples"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|s| {
                    let id = s["id"]
                        .as_str()
                        .map_or_else(|| "–".to_owned(), |id| code(&format!("{}/{id}", text(s, "resourceType"))));
                    vec![
                        esc(text(s, "at")),
                        code(text(s, "binding")),
                        id,
                        esc(text(s, "interaction")),
                        esc(text(s, "would")),
                        esc(text(s, "enforced")),
                    ]
                })
                .collect();
            page.push_str(&html::table(
                &format!("{plugin}: latest requests it would have answered differently"),
                &["When", "Binding", "Resource", "Interaction", "Would have", "Enforced"],
                &samples,
            ));
            page.push_str("</section>");
        }
        page
    })
    .await
}

// ---------------------------------------------------------------------------------------------
// Audit

#[derive(Deserialize, Default)]
pub struct AuditFilters {
    #[serde(default)]
    agent: String,
    #[serde(default)]
    patient: String,
    #[serde(default)]
    subtype: String,
    #[serde(default)]
    outcome: String,
    #[serde(default)]
    policy: String,
    #[serde(default)]
    from: String,
    #[serde(default)]
    to: String,
    /// Continue at this page (the query of the previous page's `next` link).
    #[serde(default)]
    page: String,
    #[serde(default)]
    format: String,
}

/// A `datetime-local` value (taken as UTC) as a FHIR dateTime.
fn utc(value: &str) -> Option<String> {
    let value = value.trim();
    match value.len() {
        0 => None,
        16 => Some(format!("{value}:00Z")),
        _ if value.ends_with('Z') || value.contains('+') => Some(value.to_owned()),
        _ => Some(format!("{value}Z")),
    }
}

impl AuditFilters {
    /// The AuditEvent search these filters mean.
    fn api_query(&self, count: usize) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (param, value) in [
            ("agent", &self.agent),
            ("patient", &self.patient),
            ("subtype", &self.subtype),
            ("outcome", &self.outcome),
            ("policy", &self.policy),
        ] {
            if !value.trim().is_empty() {
                query.append_pair(param, value.trim());
            }
        }
        if let Some(from) = utc(&self.from) {
            query.append_pair("date", &format!("ge{from}"));
        }
        if let Some(to) = utc(&self.to) {
            query.append_pair("date", &format!("le{to}"));
        }
        query.append_pair("_count", &count.to_string());
        query.finish()
    }

    /// The console URL of these filters (for links that keep them).
    fn console_query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (param, value) in [
            ("agent", &self.agent),
            ("patient", &self.patient),
            ("subtype", &self.subtype),
            ("outcome", &self.outcome),
            ("policy", &self.policy),
            ("from", &self.from),
            ("to", &self.to),
        ] {
            if !value.is_empty() {
                query.append_pair(param, value);
            }
        }
        query.finish()
    }
}

/// The query part of a Bundle link, if the link points at AuditEvent search.
fn link_query(bundle: &Value, relation: &str) -> Option<String> {
    let url = bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str()?;
    let (path, query) = url.split_once('?')?;
    path.ends_with("/AuditEvent").then(|| query.to_owned())
}

const OUTCOMES: [(&str, &str); 4] =
    [("0", "success"), ("4", "refused or bad request"), ("8", "denied"), ("12", "server error")];

fn audit_row(entry: &Value) -> Vec<String> {
    let resource = &entry["resource"];
    let agent = &resource["agent"][0];
    let who = agent["who"]["identifier"]["value"].as_str().unwrap_or("");
    let mut what = Vec::new();
    let mut patients = Vec::new();
    for entity in resource["entity"].as_array().into_iter().flatten() {
        if let Some(reference) = entity["what"]["reference"].as_str() {
            if entity["role"]["code"] == "1" {
                patients.push(code(reference));
            } else {
                what.push(code(reference));
            }
        }
    }
    let outcome = resource["outcome"].as_str().unwrap_or("");
    let outcome = OUTCOMES.iter().find(|(c, _)| *c == outcome).map_or(outcome, |(_, label)| label);
    let outcome_class = if resource["outcome"] == "0" { "state-ok" } else { "state-bad" };
    let purpose = resource["purposeOfEvent"][0]["coding"][0]["code"].as_str().unwrap_or("");
    // A search names every resource it returned; show the first few.
    const SHOWN: usize = 5;
    let more = what.len().saturating_sub(SHOWN);
    what.truncate(SHOWN);
    if more > 0 {
        what.push(format!("<span class=\"muted\">and {more} more</span>"));
    }
    vec![
        esc(text(resource, "id")),
        esc(text(resource, "recorded")),
        esc(who),
        code(resource["subtype"][0]["code"].as_str().unwrap_or("")),
        what.join("<br>"),
        patients.join("<br>"),
        format!(
            "<span class=\"{outcome_class}\">{}</span> <span class=\"muted\">{}</span>",
            esc(outcome),
            esc(text(resource, "outcomeDesc"))
        ),
        esc(agent["policy"][0].as_str().unwrap_or("")),
        esc(purpose),
    ]
}

fn field(id: &str, label: &str, value: &str, kind: &str, hint: &str) -> String {
    format!(
        "<div><label for=\"{id}\">{label}</label><input type=\"{kind}\" id=\"{id}\" name=\"{id}\" value=\"{}\" placeholder=\"{}\"></div>",
        esc(value),
        esc(hint)
    )
}

pub async fn audit(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let query = if filters.page.is_empty() { filters.api_query(50) } else { filters.page.clone() };
    let reply = call(&state, &view, Method::GET, &format!("/AuditEvent?{query}"), None).await;
    if let Some(response) = expired(&state, &view, &reply) {
        return response;
    }
    let verification = state.console.last_verification.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut page = String::from("<section aria-labelledby=\"chain-h\"><h2 id=\"chain-h\">Chain verification</h2>");
    match &verification {
        None => page.push_str("<p>The chain has not been verified from the console since this host started.</p>"),
        Some(result) if result["intact"] == true => {
            let _ = write!(
                page,
                "<p id=\"chain-state\"><span class=\"state-ok\">Intact.</span> {} entries verified at {} by {}; {} signed checkpoints, the last good one at entry {}.</p>",
                result["entries"],
                esc(text(result, "verifiedAt")),
                esc(text(result, "by")),
                result["checkpoints"],
                result["lastGoodCheckpoint"].as_i64().map_or("none".to_owned(), |s| s.to_string()),
            );
        }
        Some(result) => {
            let _ = write!(
                page,
                "<p id=\"chain-state\" role=\"alert\"><span class=\"state-bad\">BROKEN:</span> {}. Checked at {} by {}; {} entries verified before the break; last good checkpoint: {}. Preserve the database as evidence.</p>",
                esc(text(result, "problem")),
                esc(text(result, "verifiedAt")),
                esc(text(result, "by")),
                result["entries"],
                result["lastGoodCheckpoint"].as_i64().map_or("none".to_owned(), |s| s.to_string()),
            );
        }
    }
    page.push_str(&html::button_form("/console/audit/verify", &view.csrf, "Verify the whole chain now", "primary"));
    page.push_str("</section><section aria-labelledby=\"entries-h\"><h2 id=\"entries-h\">Entries</h2>");
    let outcome_options: String = std::iter::once(("", "any"))
        .chain(OUTCOMES)
        .map(|(value, label)| {
            let selected = if filters.outcome == value { " selected" } else { "" };
            format!("<option value=\"{value}\"{selected}>{label}</option>")
        })
        .collect();
    let _ = write!(
        page,
        "<form method=\"get\" action=\"/console/audit\" class=\"filters\" aria-label=\"Filter audit entries\">{}{}{}\
         <div><label for=\"outcome\">Outcome</label><select id=\"outcome\" name=\"outcome\">{outcome_options}</select></div>{}{}{}\
         <div class=\"actions\"><button type=\"submit\">Filter</button> <a href=\"/console/audit\">Clear</a></div></form>",
        field("agent", "User (subject)", &filters.agent, "text", "dr-example"),
        field("patient", "Patient id", &filters.patient, "text", "Patient/123"),
        field("subtype", "Interaction", &filters.subtype, "text", "read, search-type, admin-plugin-load…"),
        field("policy", "Decided by", &filters.policy, "text", "policy:consent, scope…"),
        field("from", "From (UTC)", &filters.from, "datetime-local", ""),
        field("to", "To (UTC)", &filters.to, "datetime-local", ""),
    );
    if reply.ok() {
        let rows: Vec<Vec<String>> = reply.body["entry"].as_array().into_iter().flatten().map(audit_row).collect();
        page.push_str(&html::table(
            "Audit entries, newest first",
            &["#", "Recorded", "User", "Interaction", "Resources", "Patients", "Outcome", "Decided by", "Purpose"],
            &rows,
        ));
        let filters_query = filters.console_query();
        page.push_str("<div class=\"actions\">");
        if let Some(next) = link_query(&reply.body, "next") {
            let _ = write!(
                page,
                "<a class=\"button secondary\" href=\"/console/audit?{}&amp;page={}\">Older entries</a>",
                esc(&filters_query),
                url_part(&next)
            );
        }
        let _ = write!(
            page,
            "<a class=\"button secondary\" href=\"/console/audit/export?{0}&amp;format=ndjson\" download>Export NDJSON</a>\
             <a class=\"button secondary\" href=\"/console/audit/export?{0}&amp;format=bundle\" download>Export AuditEvent Bundle</a></div>",
            esc(&filters_query)
        );
    } else {
        let _ = write!(
            page,
            "<p class=\"flash error\" role=\"alert\">The entries cannot be shown: {}.</p>",
            esc(&reply.problem())
        );
    }
    page.push_str("</section>");
    html::page("Audit", "/console/audit", Some(view.frame()), &page)
}

pub async fn audit_verify(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    let reply = call(&state, &view, Method::POST, "/admin/audit/verify", None).await;
    if let Some(response) = expired(&state, &view, &reply) {
        return response;
    }
    if reply.ok() {
        let mut result = reply.body.clone();
        result["by"] = json!(view.subject);
        let message = if result["intact"] == true {
            format!("The audit chain is intact: {} entries verified.", result["entries"])
        } else {
            format!("The audit chain is BROKEN: {}.", text(&result, "problem"))
        };
        *state.console.last_verification.lock().unwrap_or_else(|e| e.into_inner()) = Some(result.clone());
        flash(&state, &view, result["intact"] != true, message);
    } else {
        flash(&state, &view, true, format!("The chain could not be verified: {}.", reply.problem()));
    }
    Redirect::to("/console/audit").into_response()
}

/// Entries one export may hold; narrow the filters for more.
const EXPORT_LIMIT: usize = 100_000;

pub async fn audit_export(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    Query(filters): Query<AuditFilters>,
) -> Response {
    let bundle = filters.format == "bundle";
    let mut query = filters.api_query(crate::audit::lookup::MAX_COUNT);
    let mut entries: Vec<Value> = Vec::new();
    loop {
        let reply = call(&state, &view, Method::GET, &format!("/AuditEvent?{query}"), None).await;
        if let Some(response) = expired(&state, &view, &reply) {
            return response;
        }
        if !reply.ok() {
            flash(&state, &view, true, format!("The export failed: {}.", reply.problem()));
            return Redirect::to("/console/audit").into_response();
        }
        entries.extend(reply.body["entry"].as_array().into_iter().flatten().map(|e| e["resource"].clone()));
        match link_query(&reply.body, "next") {
            Some(next) if entries.len() < EXPORT_LIMIT => query = next,
            _ => break,
        }
    }
    entries.truncate(EXPORT_LIMIT);
    let stamp = crate::fhir::instant::to_fhir_instant(crate::fhir::instant::now_us()).replace([':', '.'], "-");
    let (content_type, file, body) = if bundle {
        let bundle = json!({
            "resourceType": "Bundle",
            "type": "collection",
            "timestamp": crate::fhir::instant::to_fhir_instant(crate::fhir::instant::now_us()),
            "total": entries.len(),
            "entry": entries.into_iter().map(|r| json!({"resource": r})).collect::<Vec<_>>(),
        });
        (crate::fhir::FHIR_JSON, format!("audit-{stamp}.json"), bundle.to_string())
    } else {
        let mut text = String::new();
        for entry in &entries {
            text.push_str(&entry.to_string());
            text.push('\n');
        }
        ("application/fhir+ndjson", format!("audit-{stamp}.ndjson"), text)
    };
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{file}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

// ---------------------------------------------------------------------------------------------
// Break-glass review

#[derive(Deserialize, Default)]
pub struct BreakGlassFilter {
    #[serde(default)]
    all: bool,
}

pub async fn break_glass(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    Query(filter): Query<BreakGlassFilter>,
) -> Response {
    let path = if filter.all { "/admin/break-glass" } else { "/admin/break-glass?pending=true" };
    api_page(&state, &view, path, ("Break-glass review", "/console/break-glass"), |body| {
        let mut page = if filter.all {
            "<p>Every emergency access (and refused attempt), oldest first. <a href=\"/console/break-glass\">Only those awaiting review</a></p>".to_owned()
        } else {
            "<p>Emergency accesses awaiting review, oldest first. <a href=\"/console/break-glass?all=true\">All, with their reviews</a></p>".to_owned()
        };
        let mut rows = Vec::new();
        for entry in body["entries"].as_array().into_iter().flatten() {
            let seq = entry["seq"].as_i64().unwrap_or(0);
            let resource = match (entry["resourceType"].as_str(), entry["resourceId"].as_str()) {
                (Some(t), Some(id)) => code(&format!("{t}/{id}")),
                (Some(t), None) => code(t),
                _ => String::new(),
            };
            let patients: Vec<String> = entry["patients"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .map(|p| code(&format!("Patient/{p}")))
                .collect();
            let reviews: Vec<String> = entry["reviews"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|r| {
                    format!(
                        "{} by {} at {}: {}",
                        esc(text(r, "decision")),
                        esc(text(r, "reviewer")),
                        esc(text(r, "at")),
                        esc(text(r, "comment"))
                    )
                })
                .collect();
            let form = format!(
                "<form class=\"review\" method=\"post\" action=\"/console/break-glass/{seq}/review\" aria-label=\"Review access {seq}\">{}\
                 <label for=\"decision-{seq}\">Decision</label><select id=\"decision-{seq}\" name=\"decision\">\
                 <option value=\"acknowledged\">Acknowledge (justified)</option><option value=\"escalated\">Escalate (needs investigation)</option></select>\
                 <label for=\"comment-{seq}\">Comment (no patient details)</label><input type=\"text\" id=\"comment-{seq}\" name=\"comment\" required maxlength=\"500\">\
                 <div class=\"actions\"><button type=\"submit\">Record review</button></div></form>",
                html::csrf_field(&view.csrf)
            );
            rows.push(vec![
                seq.to_string(),
                esc(text(entry, "at")),
                esc(text(entry, "subject")),
                code(text(entry, "action")),
                resource,
                patients.join("<br>"),
                entry["status"].to_string(),
                esc(text(entry, "reason")),
                if reviews.is_empty() {
                    "<span class=\"state-bad\">awaiting review</span>".to_owned()
                } else {
                    reviews.join("<br>")
                },
                form,
            ]);
        }
        page.push_str(&html::table(
            "Emergency accesses",
            &[
                "#",
                "When",
                "User",
                "Interaction",
                "Resource",
                "Patients",
                "Status",
                "Stated reason",
                "Reviews",
                "Review",
            ],
            &rows,
        ));
        page
    })
    .await
}

#[derive(Deserialize)]
pub struct ReviewForm {
    decision: String,
    comment: String,
}

pub async fn review(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    FhirPath(seq): FhirPath<i64>,
    Form(form): Form<ReviewForm>,
) -> Response {
    let body = json!({"decision": form.decision, "comment": form.comment}).to_string().into_bytes();
    let reply = call(&state, &view, Method::POST, &format!("/admin/break-glass/{seq}/review"), Some(body)).await;
    done(
        &state,
        &view,
        &reply,
        format!("Recorded your review of access {seq}: {}.", form.decision),
        "/console/break-glass",
    )
}

// ---------------------------------------------------------------------------------------------
// Keys

pub async fn keys(State(state): State<SharedState>, Extension(view): Extension<SessionView>) -> Response {
    api_page(&state, &view, "/admin/keys", ("Keys", "/console/keys"), |body| {
        let rows: Vec<Vec<String>> = body["kekVersions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|k| {
                let state = if k["current"] == true {
                    "current (new data keys are wrapped by it)"
                } else if k["retired"] == true {
                    "retired"
                } else {
                    "older (rotation moves its data keys to the current one)"
                };
                vec![format!("v{}", k["version"]), k["dataKeys"].to_string(), esc(state)]
            })
            .collect();
        let live = body["liveDataKeys"].as_i64().unwrap_or(0);
        let on_current = body["rotation"]["onCurrentKek"].as_i64().unwrap_or(0);
        let mut page = html::table("Key-encryption keys (KEK)", &["Version", "Data keys wrapped", "State"], &rows);
        let _ = write!(
            page,
            "<h2 id=\"rotation-h\">Rotation</h2><p><label for=\"rotation\">{on_current} of {live} live data keys are wrapped by the current KEK</label>\
             <progress id=\"rotation\" max=\"{}\" value=\"{on_current}\">{on_current} of {live}</progress></p>\
             <p class=\"muted\">Rotate with <code>hearth keys rotate</code> after adding a KEK version to the keyring; it re-wraps data keys online and resumes if interrupted.</p>",
            live.max(1)
        );
        let erasures: Vec<Vec<String>> = body["erasures"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| {
                let who =
                    e["patient"].as_str().map_or_else(|| code(text(e, "dataKey")), |p| code(&format!("Patient/{p}")));
                vec![esc(text(e, "at")), who, esc(text(e, "reason"))]
            })
            .collect();
        let _ = write!(
            page,
            "<h2>Erasures (crypto-shredding)</h2><p>{} data keys destroyed; {} erasures recorded. Destroyed keys make every version of those records unreadable, backups included.</p>",
            body["destroyedDataKeys"], body["erasureCount"]
        );
        page.push_str(&html::table(
            "Latest erasures, newest first",
            &["When", "Records of", "Stated reason"],
            &erasures,
        ));
        page
    })
    .await
}
