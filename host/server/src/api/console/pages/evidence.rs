//! The console's Evidence page: the compliance findings and figures of this server (what
//! `hearth compliance report` writes), for a chosen period, and the signed pack to download.

use axum::Extension;
use axum::extract::{Query, State};
use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use serde::Deserialize;

use super::answer;
use crate::api::SharedState;
use crate::api::console::html::esc;
use crate::api::console::{SessionView, call, expired, flash};
use crate::compliance::Evidence;

#[derive(Deserialize, Default)]
pub struct EvidencePeriod {
    #[serde(default)]
    since: String,
    #[serde(default)]
    until: String,
}

impl EvidencePeriod {
    /// The API query for this period (empty fields: the API's default, the last 90 days).
    fn query(&self) -> String {
        let mut query = form_urlencoded::Serializer::new(String::new());
        for (name, value) in [("since", self.since.trim()), ("until", self.until.trim())] {
            if !value.is_empty() {
                query.append_pair(name, value);
            }
        }
        query.finish()
    }
}

pub async fn evidence(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    Query(period): Query<EvidencePeriod>,
) -> Response {
    let query = period.query();
    let reply = call(&state, &view, Method::GET, &format!("/admin/compliance/evidence?{query}"), None).await;
    if let Some(response) = expired(&state, &view, &reply) {
        return response;
    }
    answer(&view, "Evidence", "/console/evidence", &reply, |body| {
        let form = format!(
            "<form method=\"get\" action=\"/console/evidence\" class=\"filters\" aria-label=\"Review period\">\
             <label>From <input name=\"since\" value=\"{}\" placeholder=\"2026-09-01\"></label> \
             <label>To <input name=\"until\" value=\"{}\" placeholder=\"now\"></label> \
             <button type=\"submit\">Show</button></form>\
             <p><a class=\"button\" href=\"/console/evidence/pack?{}\" download>Download the signed evidence pack (.tar)</a> \
             <span class=\"muted\">Extract it and check it with <code>hearth compliance verify DIR</code>.</span></p>",
            esc(&period.since),
            esc(&period.until),
            esc(&query)
        );
        match serde_json::from_value::<Evidence>(body.clone()) {
            Ok(evidence) => form + &crate::compliance::html::body(&evidence),
            Err(error) => format!(
                "{form}<p class=\"flash error\" role=\"alert\">The evidence could not be read: {}.</p>",
                esc(&error.to_string())
            ),
        }
    })
}

/// The signed pack of the same evidence, as a tar archive.
pub async fn evidence_pack(
    State(state): State<SharedState>,
    Extension(view): Extension<SessionView>,
    Query(period): Query<EvidencePeriod>,
) -> Response {
    let reply = call(&state, &view, Method::GET, &format!("/admin/compliance/evidence?{}", period.query()), None).await;
    if let Some(response) = expired(&state, &view, &reply) {
        return response;
    }
    let evidence = if reply.ok() {
        serde_json::from_value::<Evidence>(reply.body).map_err(|e| e.to_string())
    } else {
        Err(reply.problem())
    };
    let signer = crate::audit::AuditSigner::load(&state.settings.serve.storage.audit_key, false);
    match (evidence, signer) {
        (Ok(evidence), Ok(signer)) => crate::api::compliance::pack_download(&evidence, &signer),
        (Err(problem), _) => {
            flash(&state, &view, true, format!("No pack was made: {problem}."));
            Redirect::to("/console/evidence").into_response()
        }
        (_, Err(error)) => {
            flash(&state, &view, true, format!("No pack was made: the audit signing key: {error}."));
            Redirect::to("/console/evidence").into_response()
        }
    }
}
