//! The console's audit pages.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{code, text};
use crate::api::SharedState;
use crate::api::console::html::{self, esc, url_part};
use crate::api::console::{SessionView, call, expired, flash};

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
