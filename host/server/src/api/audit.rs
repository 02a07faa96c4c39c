//! The audit layer: after each protected request, an audit entry names who did what to which
//! resource and how it ended; the response waits until the entry is durable, and becomes a
//! 500 if it cannot be written. Refusals (401, 403) are queued without waiting, and answer 429
//! once their address is over its refusal budget (see `crate::audit`).

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{RequestId, SharedState};
use crate::audit::{AuditEvent, Outcome};
use crate::auth::Principal;
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::fhir::outcome::{FhirError, IssueType};
use crate::server::PeerAddr;

pub async fn record(State(state): State<SharedState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
    let ip = request.extensions().get::<PeerAddr>().map(|p| p.0.ip().to_string());
    let break_glass = request
        .headers()
        .get(super::gate::BREAK_GLASS_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(|reason| reason.trim().chars().take(500).collect::<String>())
        .filter(|reason| !reason.is_empty());
    let response = next.run(request).await;

    let status = response.status().as_u16();
    let principal = response.extensions().get::<Principal>();
    let disclosed = response.extensions().get::<crate::service::Disclosed>();
    let (action, resource_type, mut resource_id, mut version) = describe(&method, &path);
    if action == "create" {
        // The id and version the server assigned are in the Location header.
        if let Some(location) = response.headers().get(header::LOCATION).and_then(|v| v.to_str().ok()) {
            let mut parts = location.rsplit('/');
            version = parts.next().and_then(|v| v.parse().ok());
            parts.next();
            resource_id = parts.next().map(str::to_owned);
        }
    } else if let Some(etag) = response.headers().get(header::ETAG).and_then(|v| v.to_str().ok()) {
        version = version.or_else(|| etag.trim_start_matches("W/").trim_matches('"').parse().ok());
    }
    let event = AuditEvent {
        at: to_fhir_instant(now_us()),
        action,
        outcome: Outcome::of_status(status),
        status,
        subject: principal.map(|p| p.subject.clone()),
        client_id: principal.and_then(|p| p.client_id.clone()),
        issuer: principal.map(|p| p.issuer.clone()),
        scopes: principal.map(|p| p.scopes.granted.join(" ")).filter(|s| !s.is_empty()),
        ip,
        request_id,
        resource_type,
        resource_id,
        version,
        decided_by: response.extensions().get::<crate::fhir::outcome::DecidedBy>().map(|d| d.0.clone()).or_else(|| {
            matches!(status, 401 | 403).then(|| if status == 401 { "authentication" } else { "scope" }.to_owned())
        }),
        break_glass,
        returned: disclosed.map(|d| d.ids.clone()).unwrap_or_default(),
        patients: disclosed.map(|d| d.patients.iter().cloned().collect()).unwrap_or_default(),
        review: response.extensions().get::<crate::audit::Review>().cloned(),
        count: None,
    };
    if matches!(status, 401 | 403) {
        // A refusal discloses and changes nothing: its entry is queued, not waited for, so
        // refused requests cannot make the server fsync at their pace (see crate::audit).
        return match state.audit.refused(event) {
            crate::audit::Refusal::Itemised => response,
            crate::audit::Refusal::Limited => too_many_refusals(),
        };
    }
    match state.audit.record(event).await {
        Ok(()) => response,
        Err(failure) => {
            tracing::error!(error = %failure.message, "request failed: its audit entry could not be written");
            match failure.kind {
                // 503 with Retry-After, like every other answer while the database is away.
                crate::audit::AuditFailureKind::Unavailable => FhirError::unavailable(
                    "the database is unavailable, so the audit log could not be written and the request is reported \
                     as failed; retry shortly",
                ),
                crate::audit::AuditFailureKind::Full => FhirError::out_of_space(),
                crate::audit::AuditFailureKind::Broken => FhirError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    IssueType::Exception,
                    "the audit log could not be written, so the request is reported as failed; retry later",
                ),
            }
            .into_response()
        }
    }
}

/// The answer to a refused request from an address over its refusal budget.
fn too_many_refusals() -> Response {
    let mut response = FhirError::new(
        axum::http::StatusCode::TOO_MANY_REQUESTS,
        IssueType::Throttled,
        "too many refused requests from this address; retry later with valid credentials",
    )
    .into_response();
    response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    response
}

/// The action, resource type, id and version a request path names. Segments are
/// percent-decoded first, as the router decodes them: `/%4Fbservation/%6Fb1` reads
/// Observation/ob1 and is audited as that.
fn describe(method: &Method, path: &str) -> (String, Option<String>, Option<String>, Option<i64>) {
    let decoded: Vec<String> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .map(|s| percent_encoding::percent_decode_str(s).decode_utf8_lossy().into_owned())
        .collect();
    let segments: Vec<&str> = decoded.iter().map(String::as_str).collect();
    let owned = |s: &&str| Some((*s).to_owned());
    match (method.as_str(), segments.as_slice()) {
        ("POST", ["admin", operation]) => (format!("admin-{operation}"), None, None, None),
        ("PUT", ["admin", "plugins", name]) => ("admin-plugin-load".into(), Some("plugin".into()), owned(name), None),
        ("DELETE", ["admin", "plugins", name]) => {
            ("admin-plugin-remove".into(), Some("plugin".into()), owned(name), None)
        }
        ("POST", ["admin", "plugins", name, op]) => {
            (format!("admin-plugin-{op}"), Some("plugin".into()), owned(name), None)
        }
        ("POST", ["admin", "policies", op]) => (format!("admin-policies-{op}"), None, None, None),
        ("POST", ["admin", "policies", "bindings", file, index, mode]) => {
            (format!("admin-policy-{mode}"), Some("binding".into()), Some(format!("{file}#{index}")), None)
        }
        ("POST", ["admin", "audit", "verify"]) => ("admin-audit-verify".into(), None, None, None),
        ("POST", ["admin", "break-glass", seq, "review"]) => {
            ("admin-break-glass-review".into(), Some("audit".into()), owned(seq), None)
        }
        ("POST", ["admin", "outbox", id, op]) => (format!("admin-outbox-{op}"), Some("outbox".into()), owned(id), None),
        ("GET", ["admin", area, ..]) => (format!("admin-read-{area}"), None, None, None),
        ("POST", ["$convert"]) => ("operation-convert".into(), None, None, None),
        ("GET", ["$export"]) => ("operation-export".into(), None, None, None),
        ("GET", [t, "$export"]) => ("operation-export".into(), owned(t), None, None),
        ("GET", ["Group", id, "$export"]) => ("operation-export".into(), Some("Group".into()), owned(id), None),
        ("GET", ["$export-status", id]) => ("export-status".into(), Some("export".into()), owned(id), None),
        ("DELETE", ["$export-status", id]) => ("export-cancel".into(), Some("export".into()), owned(id), None),
        ("GET", ["$export-file", id, file]) => {
            ("export-download".into(), Some("export".into()), Some(format!("{id}/{file}")), None)
        }
        ("GET", []) | ("POST", ["_search"]) => ("search-system".into(), None, None, None),
        ("POST", []) => ("bundle".into(), None, None, None),
        ("POST", [t]) => ("create".into(), owned(t), None, None),
        ("POST", [t, "$validate"]) => ("operation-validate".into(), owned(t), None, None),
        ("GET", [t]) | ("POST", [t, "_search"]) if t.starts_with(|c: char| c.is_ascii_uppercase()) => {
            ("search-type".into(), owned(t), None, None)
        }
        ("GET", ["_history"]) => ("history-system".into(), None, None, None),
        ("GET", [t, "_history"]) => ("history-type".into(), owned(t), None, None),
        ("GET", [t, id]) => ("read".into(), owned(t), owned(id), None),
        ("PUT", [t, id]) => ("update".into(), owned(t), owned(id), None),
        ("DELETE", [t, id]) => ("delete".into(), owned(t), owned(id), None),
        ("PATCH", [t, id]) => ("patch".into(), owned(t), owned(id), None),
        ("GET", [t, id, "_history"]) => ("history-instance".into(), owned(t), owned(id), None),
        ("GET", [t, id, "_history", v]) => ("vread".into(), owned(t), owned(id), v.parse().ok()),
        ("GET", ["Patient", id, "$everything"]) => {
            ("operation-everything".into(), Some("Patient".into()), owned(id), None)
        }
        ("GET", ["Patient", id, t]) => ("search-compartment".into(), owned(t), owned(id), None),
        (m, _) => {
            (format!("{} {}", m.to_ascii_lowercase(), segments.first().copied().unwrap_or("/")), None, None, None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_name_their_interaction() {
        assert_eq!(describe(&Method::GET, "/Patient/a").0, "read");
        assert_eq!(
            describe(&Method::GET, "/Patient/a/_history/3"),
            ("vread".into(), Some("Patient".into()), Some("a".into()), Some(3))
        );
        assert_eq!(describe(&Method::POST, "/Observation").0, "create");
        assert_eq!(describe(&Method::POST, "/admin/erasure").0, "admin-erasure");
        assert_eq!(
            describe(&Method::POST, "/admin/policies/bindings/consent.toml/2/enforce"),
            ("admin-policy-enforce".into(), Some("binding".into()), Some("consent.toml#2".into()), None)
        );
        assert_eq!(describe(&Method::POST, "/admin/audit/verify").0, "admin-audit-verify");
        assert_eq!(describe(&Method::GET, "/Patient/$export").0, "operation-export");
        assert_eq!(
            describe(&Method::GET, "/Group/g1/$export"),
            ("operation-export".into(), Some("Group".into()), Some("g1".into()), None)
        );
        assert_eq!(
            describe(&Method::GET, "/$export-file/j1/Patient.ndjson"),
            ("export-download".into(), Some("export".into()), Some("j1/Patient.ndjson".into()), None)
        );
        assert_eq!(describe(&Method::DELETE, "/Patient/a").0, "delete");
        assert_eq!(
            describe(&Method::PUT, "/admin/plugins/consent"),
            ("admin-plugin-load".into(), Some("plugin".into()), Some("consent".into()), None)
        );
        assert_eq!(describe(&Method::POST, "/admin/plugins/consent/rollback").0, "admin-plugin-rollback");
        assert_eq!(describe(&Method::DELETE, "/admin/plugins/consent").0, "admin-plugin-remove");
        assert_eq!(
            describe(&Method::PATCH, "/Patient/a"),
            ("patch".into(), Some("Patient".into()), Some("a".into()), None)
        );
        assert_eq!(
            describe(&Method::GET, "/%4Fbservation/%6Fb1"),
            ("read".into(), Some("Observation".into()), Some("ob1".into()), None)
        );
        assert_eq!(describe(&Method::GET, "/Observation").0, "search-type");
        assert_eq!(describe(&Method::POST, "/Observation/_search").0, "search-type");
        assert_eq!(describe(&Method::GET, "/").0, "search-system");
        assert_eq!(describe(&Method::GET, "/Patient/p1/Observation").0, "search-compartment");
        assert_eq!(describe(&Method::GET, "/metrics").0, "get metrics");
    }
}
