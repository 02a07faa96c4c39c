//! The console's pages and actions, one module per page. Each reads or changes state only
//! through [`call`](super::call), i.e. the REST API with the signed-in user's token. Here: what
//! they share.

mod audit;
mod break_glass;
mod evidence;
mod keys;
mod plugins;
mod policies;

pub use audit::{audit, audit_export, audit_verify};
pub use break_glass::{break_glass, review};
pub use evidence::{evidence, evidence_pack};
pub use keys::keys;
pub use plugins::{plugin_action, plugin_confirm, plugins, upload, upload_cancel, upload_confirm};
pub use policies::{mode_confirm, mode_switch, policies, policies_reload, shadow};

use axum::http::Method;
use axum::response::{IntoResponse, Redirect, Response};
use serde_json::Value;

use super::html::{self, esc};
use super::{ApiReply, SessionView, call, expired, flash};
use crate::api::SharedState;

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
