//! The console's policies and the shadow report pages.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::State;
use axum::http::Method;
use axum::response::Response;
use serde_json::Value;

use super::{api_page, code, done, now_minute, text};
use crate::api::SharedState;
use crate::api::console::html::{self, esc, url_part};
use crate::api::console::{SessionView, call};
use crate::api::extract::FhirPath;

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
