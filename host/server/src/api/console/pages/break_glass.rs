//! The console's break-glass review pages.

use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::Response;
use axum::{Extension, Form};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{api_page, code, done, text};
use crate::api::SharedState;
use crate::api::console::html::{self, esc};
use crate::api::console::{SessionView, call};
use crate::api::extract::FhirPath;

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
