//! The compliance console: web pages under `/console` on the same TLS listener, for the people
//! who run plugins, policies and audits.
//!
//! - Sign-in exchanges a bearer token with an `admin/...` scope for a session cookie
//!   (`__Host-` prefixed: HttpOnly, Secure, SameSite=Strict, path `/`). Sessions live in this
//!   host's memory, end after `console_idle` (15 minutes by default) without a request
//!   (automatic logoff) and when the token
//!   expires, and are dropped on sign-out.
//! - Every page reads, and every action changes, state only through the REST admin and FHIR
//!   API: the console sends the request, with the signed-in user's own token, through the same
//!   router a client reaches (authentication, scopes, audit included). There is no other path.
//! - Every state-changing form carries the session's CSRF token, checked before anything runs;
//!   changes are confirmed on a page that says what will change.
//! - Pages show resource ids, never clinical content.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use serde_json::Value;

use super::SharedState;
use crate::server::PeerAddr;

pub(crate) mod html;
mod pages;

/// The session cookie.
const COOKIE: &str = "__Host-hearth-console";
/// Sessions per host, at most; the oldest idle ones go first.
const MAX_SESSIONS: usize = 1000;
/// The largest form accepted (a plugin upload: component, signature and manifest).
const MAX_FORM_BYTES: usize = 72 << 20;

/// One signed-in user.
pub struct Session {
    token: String,
    subject: String,
    csrf: String,
    last_seen: Instant,
    flash: Option<html::Flash>,
    /// An upload waiting for its confirmation: (manifest JSON, component, signature base64).
    pending_upload: Option<PendingUpload>,
}

#[derive(Clone)]
pub struct PendingUpload {
    name: String,
    manifest: Value,
    component: Vec<u8>,
    signature: Option<String>,
}

/// The console's part of the shared state.
#[derive(Default)]
pub struct ConsoleState {
    sessions: Mutex<HashMap<String, Session>>,
    /// The whole application router, for sending the console's API requests through it.
    api: OnceLock<Router>,
    /// The latest audit-chain verification run from the console on this host.
    last_verification: Mutex<Option<Value>>,
}

impl ConsoleState {
    /// Called once the router exists.
    pub fn attach(&self, app: Router) {
        let _ = self.api.set(app);
    }
}

pub fn routes(state: SharedState) -> Router<SharedState> {
    let signed_in = Router::new()
        .route("/console/plugins", get(pages::plugins))
        .route(
            "/console/plugins/upload",
            post(pages::upload).layer(axum::extract::DefaultBodyLimit::max(MAX_FORM_BYTES)),
        )
        .route("/console/plugins/upload/confirm", post(pages::upload_confirm))
        .route("/console/plugins/upload/cancel", post(pages::upload_cancel))
        .route("/console/plugins/{name}/{action}", get(pages::plugin_confirm).post(pages::plugin_action))
        .route("/console/policies", get(pages::policies))
        .route("/console/policies/reload", post(pages::policies_reload))
        .route("/console/policies/{file}/{index}/{mode}", get(pages::mode_confirm).post(pages::mode_switch))
        .route("/console/shadow", get(pages::shadow))
        .route("/console/audit", get(pages::audit))
        .route("/console/audit/verify", post(pages::audit_verify))
        .route("/console/audit/export", get(pages::audit_export))
        .route("/console/break-glass", get(pages::break_glass))
        .route("/console/break-glass/{seq}/review", post(pages::review))
        .route("/console/keys", get(pages::keys))
        .route("/console/evidence", get(pages::evidence))
        .route("/console/evidence/pack", get(pages::evidence_pack))
        .route("/console/logout", post(logout))
        .route_layer(middleware::from_fn_with_state(state, require_session));
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/plugins") }))
        .route("/console/", get(|| async { Redirect::to("/console/plugins") }))
        .route("/console/login", get(login_page).post(login))
        .route("/console/assets/console.css", get(stylesheet))
        .merge(signed_in)
        .layer(middleware::from_fn(security_headers))
}

/// What a signed-in request knows about its session (a copy; the session itself stays in the
/// table).
#[derive(Clone)]
pub struct SessionView {
    id: String,
    token: String,
    subject: String,
    csrf: String,
    flash: Option<html::Flash>,
    peer: Option<PeerAddr>,
}

impl SessionView {
    fn frame(&self) -> html::Frame<'_> {
        html::Frame { subject: &self.subject, csrf: &self.csrf, flash: self.flash.clone() }
    }
}

async fn stylesheet() -> Response {
    let mut response = html::CSS.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/css; charset=utf-8"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=3600"));
    response
}

/// No caching of pages, no framing, no scripts, no referrers to other sites (same-origin keeps
/// the `Origin` header of the console's own form posts, which [`same_origin`] checks), no
/// outside resources.
async fn security_headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    headers.insert(header::STRICT_TRANSPORT_SECURITY, HeaderValue::from_static("max-age=31536000"));
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}

fn cookie_value(headers: &HeaderMap) -> Option<String> {
    headers.get_all(header::COOKIE).iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(';')).find_map(|pair| {
        let (name, value) = pair.trim().split_once('=')?;
        (name == COOKIE).then(|| value.to_owned())
    })
}

fn idle_text(idle: Duration) -> String {
    match idle.as_secs() {
        s if s % 60 == 0 && s >= 60 => format!("{} minutes", s / 60),
        s => format!("{s} seconds"),
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).expect("the system random generator works");
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn to_login(message: &str) -> Response {
    Redirect::to(&format!("/console/login?note={}", html::url_part(message))).into_response()
}

/// Finds the session, ends it if idle too long, checks the CSRF token of state-changing
/// requests, and hands the handler a [`SessionView`].
async fn require_session(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let Some(id) = cookie_value(request.headers()) else {
        return to_login("Sign in to continue.");
    };
    let view = {
        let mut sessions = state.console.sessions.lock().unwrap_or_else(|e| e.into_inner());
        let Some(session) = sessions.get_mut(&id) else {
            return to_login("Your session has ended. Sign in again.");
        };
        let idle = state.settings.console_idle;
        if session.last_seen.elapsed() >= idle {
            let subject = sessions.remove(&id).map(|s| s.subject).unwrap_or_default();
            tracing::info!(subject, "console session ended after inactivity");
            return to_login(&format!("You were signed out after {} of inactivity. Sign in again.", idle_text(idle)));
        }
        session.last_seen = Instant::now();
        SessionView {
            id: id.clone(),
            token: session.token.clone(),
            subject: session.subject.clone(),
            csrf: session.csrf.clone(),
            flash: if request.method() == Method::GET { session.flash.take() } else { None },
            peer: request.extensions().get::<PeerAddr>().cloned(),
        }
    };
    if request.method() != Method::GET && request.method() != Method::HEAD {
        if !same_origin(&request) {
            return cross_origin_refused();
        }
        // The form is read here for its CSRF field and handed on unchanged.
        let (parts, body) = request.into_parts();
        let is_multipart = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("multipart/form-data"));
        let Ok(bytes) = axum::body::to_bytes(body, MAX_FORM_BYTES).await else {
            return html::html_response(StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.".into());
        };
        let sent = if is_multipart {
            multipart_csrf(&bytes)
        } else {
            form_urlencoded::parse(&bytes).find(|(k, _)| k == "csrf").map(|(_, v)| v.into_owned())
        };
        if !sent.is_some_and(|sent| constant_time_eq(sent.as_bytes(), view.csrf.as_bytes())) {
            tracing::warn!(subject = view.subject, "console form refused: missing or wrong CSRF token");
            return html::html_response(
                StatusCode::FORBIDDEN,
                "This form is stale or did not come from the console (CSRF check failed). Reload the page and try again."
                    .into(),
            );
        }
        request = Request::from_parts(parts, Body::from(bytes));
    }
    request.extensions_mut().insert(view);
    next.run(request).await
}

/// Whether a form post came from a page of this server: its `Origin`, when the browser sends
/// one, names the host the request was sent to.
fn same_origin(request: &Request) -> bool {
    let Some(origin) = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return true;
    };
    let target = request
        .headers()
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or_else(|| request.uri().authority().map(|a| a.as_str().to_owned()));
    match (origin.split_once("://"), target) {
        (Some((scheme, host)), Some(target)) => scheme == "https" && host.eq_ignore_ascii_case(&target),
        (_, None) => true,
        (None, Some(_)) => false,
    }
}

fn cross_origin_refused() -> Response {
    html::html_response(StatusCode::FORBIDDEN, "Forms are accepted from the console's own pages only.".into())
}

/// The `csrf` field of a multipart form (the console's forms put it first).
fn multipart_csrf(body: &[u8]) -> Option<String> {
    let head = &body[..body.len().min(4096)];
    let text = String::from_utf8_lossy(head);
    let at = text.find("name=\"csrf\"")?;
    let rest = &text[at..];
    let value_start = rest.find("\r\n\r\n")? + 4;
    let value = &rest[value_start..];
    let end = value.find("\r\n")?;
    Some(value[..end].to_owned())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[derive(serde::Deserialize)]
struct LoginNote {
    note: Option<String>,
}

async fn login_page(axum::extract::Query(query): axum::extract::Query<LoginNote>) -> Response {
    login_form(query.note.as_deref(), false)
}

fn login_form(note: Option<&str>, error: bool) -> Response {
    let note = note
        .map(|n| {
            let (class, role) = if error { ("flash error", "alert") } else { ("flash", "status") };
            format!("<p class=\"{class}\" role=\"{role}\">{}</p>", html::esc(n))
        })
        .unwrap_or_default();
    let body = format!(
        "{note}<p>Sign in with a bearer token from your identity provider that carries an <code>admin/plugins</code>, \
         <code>admin/audit</code> or <code>admin/keys</code> scope (e.g. <code>hearth token issue --scope admin/audit</code> \
         on a development server). The console acts with exactly that token's permissions.</p>\
         <form method=\"post\" action=\"/console/login\"><label for=\"token\">Bearer token</label>\
         <input type=\"password\" id=\"token\" name=\"token\" autocomplete=\"off\" required>\
         <div class=\"actions\"><button type=\"submit\">Sign in</button></div></form>"
    );
    let mut response = html::page("Sign in", "", None, &body);
    if error {
        *response.status_mut() = StatusCode::UNAUTHORIZED;
    }
    response
}

#[derive(serde::Deserialize)]
struct LoginForm {
    token: String,
}

/// The admin areas a console user may hold; any one lets them sign in.
const CONSOLE_AREAS: [&str; 3] = ["plugins", "audit", "keys"];

async fn login(
    State(state): State<SharedState>,
    peer: Option<axum::Extension<PeerAddr>>,
    request: Request,
) -> Response {
    // A sign-in posted from another site (login CSRF) is refused.
    if !same_origin(&request) {
        return cross_origin_refused();
    }
    let form = match axum::Form::<LoginForm>::from_request(request, &state).await {
        Ok(axum::Form(form)) => form,
        Err(_) => return login_form(Some("Not signed in: paste the token into the form."), true),
    };
    let token = form.token.trim().trim_start_matches("Bearer ").trim().to_owned();
    let principal = match state.tokens.verify(&token) {
        Ok(principal) => principal,
        Err(reason) => {
            let _ = record_sign_in(&state, None, peer.as_deref(), 401).await;
            return login_form(Some(&format!("Not signed in: {reason}.")), true);
        }
    };
    if !CONSOLE_AREAS.iter().any(|area| principal.scopes.has_admin(area)) {
        let _ = record_sign_in(&state, Some(&principal.subject), peer.as_deref(), 403).await;
        return login_form(
            Some("Not signed in: the token has none of the admin/plugins, admin/audit or admin/keys scopes."),
            true,
        );
    }
    if record_sign_in(&state, Some(&principal.subject), peer.as_deref(), 200).await.is_err() {
        return login_form(Some("Not signed in: the audit log cannot be written right now. Try again shortly."), true);
    }
    let id = random_token();
    let session = Session {
        token,
        subject: principal.subject.clone(),
        csrf: random_token(),
        last_seen: Instant::now(),
        flash: None,
        pending_upload: None,
    };
    {
        let mut sessions = state.console.sessions.lock().unwrap_or_else(|e| e.into_inner());
        sessions.retain(|_, s| s.last_seen.elapsed() < state.settings.console_idle);
        if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = sessions.iter().min_by_key(|(_, s)| s.last_seen).map(|(k, _)| k.clone())
        {
            sessions.remove(&oldest);
        }
        sessions.insert(id.clone(), session);
    }
    tracing::info!(subject = principal.subject, "console sign-in");
    let mut response = Redirect::to("/console/plugins").into_response();
    let cookie = format!("{COOKIE}={id}; Path=/; Secure; HttpOnly; SameSite=Strict");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ASCII cookie"));
    // A 303, so the browser follows with GET.
    *response.status_mut() = StatusCode::SEE_OTHER;
    response
}

/// Sign-ins, refused ones included, go into the audit chain.
async fn record_sign_in(
    state: &SharedState,
    subject: Option<&str>,
    peer: Option<&PeerAddr>,
    status: u16,
) -> Result<(), crate::audit::AuditFailure> {
    let event = crate::audit::AuditEvent {
        at: crate::fhir::instant::to_fhir_instant(crate::fhir::instant::now_us()),
        action: "console-sign-in".into(),
        outcome: crate::audit::Outcome::of_status(status),
        status,
        subject: subject.map(str::to_owned),
        ip: peer.map(|p| p.0.ip().to_string()),
        decided_by: (status != 200).then(|| if status == 401 { "authentication" } else { "scope" }.to_owned()),
        ..crate::audit::AuditEvent::default()
    };
    state.audit.record(event).await
}

async fn logout(State(state): State<SharedState>, axum::Extension(view): axum::Extension<SessionView>) -> Response {
    state.console.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&view.id);
    tracing::info!(subject = view.subject, "console sign-out");
    let mut response = to_login("You are signed out.");
    let cookie = format!("{COOKIE}=; Path=/; Secure; HttpOnly; SameSite=Strict; Max-Age=0");
    response.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).expect("ASCII cookie"));
    response
}

/// An answer of the REST API to one of the console's requests.
pub struct ApiReply {
    pub status: StatusCode,
    pub body: Value,
}

impl ApiReply {
    pub fn ok(&self) -> bool {
        self.status.is_success()
    }

    /// What went wrong, from the OperationOutcome.
    pub fn problem(&self) -> String {
        let diagnostics: Vec<&str> =
            self.body["issue"].as_array().into_iter().flatten().filter_map(|i| i["diagnostics"].as_str()).collect();
        if diagnostics.is_empty() { format!("the server answered {}", self.status) } else { diagnostics.join("; ") }
    }
}

/// Sends one request through the application router with the session's token, as a client
/// would, and returns the answer.
pub async fn call(
    state: &SharedState,
    view: &SessionView,
    method: Method,
    uri: &str,
    body: Option<Vec<u8>>,
) -> ApiReply {
    use tower::ServiceExt as _;
    let Some(app) = state.console.api.get().cloned() else {
        return ApiReply { status: StatusCode::SERVICE_UNAVAILABLE, body: Value::Null };
    };
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::AUTHORIZATION, format!("Bearer {}", view.token))
        .header(header::ACCEPT, "application/fhir+json");
    if body.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/json");
    }
    let Ok(mut request) = builder.body(Body::from(body.unwrap_or_default())) else {
        return ApiReply { status: StatusCode::BAD_REQUEST, body: Value::Null };
    };
    if let Some(peer) = &view.peer {
        request.extensions_mut().insert(*peer);
    }
    let response = match app.oneshot(request).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    let status = response.status();
    let raw = axum::body::to_bytes(response.into_body(), 256 << 20).await.unwrap_or_default();
    let body = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    ApiReply { status, body }
}

/// Leaves a notice for the next page of this session.
pub fn flash(state: &SharedState, view: &SessionView, error: bool, text: impl Into<String>) {
    if let Some(session) = state.console.sessions.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&view.id) {
        session.flash = Some(html::Flash { error, text: text.into() });
    }
}

/// Ends the session when the API says its token is no longer accepted.
pub fn expired(state: &SharedState, view: &SessionView, reply: &ApiReply) -> Option<Response> {
    (reply.status == StatusCode::UNAUTHORIZED).then(|| {
        state.console.sessions.lock().unwrap_or_else(|e| e.into_inner()).remove(&view.id);
        to_login("Your token is no longer accepted (expired or revoked). Sign in with a fresh one.")
    })
}

fn set_pending_upload(state: &SharedState, view: &SessionView, upload: Option<PendingUpload>) {
    if let Some(session) = state.console.sessions.lock().unwrap_or_else(|e| e.into_inner()).get_mut(&view.id) {
        session.pending_upload = upload;
    }
}

fn pending_upload(state: &SharedState, view: &SessionView) -> Option<PendingUpload> {
    state.console.sessions.lock().unwrap_or_else(|e| e.into_inner()).get(&view.id)?.pending_upload.clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_csrf_fields_are_found() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; __Host-hearth-console=abc_-9; b=2"));
        assert_eq!(cookie_value(&headers).as_deref(), Some("abc_-9"));
        headers.insert(header::COOKIE, HeaderValue::from_static("hearth-console=abc"));
        assert_eq!(cookie_value(&headers), None);
        let body = b"--XY\r\nContent-Disposition: form-data; name=\"csrf\"\r\n\r\ntok123\r\n--XY\r\nContent-Disposition: form-data; name=\"x\"\r\n\r\n1\r\n--XY--\r\n";
        assert_eq!(multipart_csrf(body).as_deref(), Some("tok123"));
        assert_eq!(multipart_csrf(b"--XY\r\n\r\n"), None);
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert_ne!(random_token(), random_token());
        assert_eq!(random_token().len(), 43);
    }
}
