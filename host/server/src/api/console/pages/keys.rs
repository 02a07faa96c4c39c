//! The console's keys pages.

use std::fmt::Write as _;

use axum::Extension;
use axum::extract::State;
use axum::response::Response;

use super::{api_page, code, text};
use crate::api::SharedState;
use crate::api::console::SessionView;
use crate::api::console::html::{self, esc};

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
