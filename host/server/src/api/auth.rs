//! The authentication layer (bearer token to [`Principal`]) and the SMART discovery document.

use axum::Json;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::SharedState;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::server::ClientCertificate;

/// Requires a valid bearer token; puts the [`crate::auth::Principal`] in the request
/// extensions and its subject in the request's log span. 401 with `WWW-Authenticate` otherwise,
/// once the request's body has arrived (see [`super::extract::discard_body`]).
pub async fn authenticate(State(state): State<SharedState>, mut request: Request, next: Next) -> Response {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let verified = match (token, request.extensions().get::<ClientCertificate>()) {
        (Some(token), _) => state.tokens.verify(token),
        // Mutual TLS: the certificate was verified in the handshake; it stands for a
        // configured principal when no token is sent.
        (None, Some(certificate)) => state.tokens.certificate_principal(&certificate.0),
        (None, None) => {
            super::extract::discard_body(request, state.settings.max_body_bytes).await;
            return unauthorized("this endpoint needs a bearer token (Authorization: Bearer ...)", None);
        }
    };
    match verified {
        Ok(principal) => {
            tracing::Span::current().record("principal", principal.subject.as_str());
            request.extensions_mut().insert(principal.clone());
            let mut response = next.run(request).await;
            // For the audit layer, which wraps this one.
            response.extensions_mut().insert(principal);
            response
        }
        Err(reason) => {
            tracing::info!(reason, "bearer token refused");
            super::extract::discard_body(request, state.settings.max_body_bytes).await;
            unauthorized(reason, Some(reason))
        }
    }
}

fn unauthorized(message: &str, invalid_token: Option<&str>) -> Response {
    let mut response = FhirError::new(StatusCode::UNAUTHORIZED, IssueType::Login, message).into_response();
    let challenge = match invalid_token {
        Some(reason) => format!("Bearer realm=\"hearth\", error=\"invalid_token\", error_description=\"{reason}\""),
        None => "Bearer realm=\"hearth\"".to_owned(),
    };
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    response
}

/// The scopes this server understands, for discovery documents.
pub const SCOPES_SUPPORTED: &[&str] = &[
    "patient/*.cruds",
    "user/*.cruds",
    "system/*.cruds",
    "patient/*.read",
    "user/*.read",
    "system/*.read",
    "patient/*.write",
    "user/*.write",
    "system/*.write",
    "admin/erasure",
    "admin/*",
];

/// `GET /.well-known/smart-configuration`: what a SMART client needs to know. Hearth is a
/// resource server; tokens come from the configured issuers.
pub async fn smart_configuration(State(state): State<SharedState>) -> Json<Value> {
    let issuers: Vec<&str> = state.tokens.issuers().map(|i| i.iss.as_str()).collect();
    Json(json!({
        "issuer": issuers.first().copied(),
        "token_issuers": issuers,
        "capabilities": [
            "permission-v1",
            "permission-v2",
            "permission-patient",
            "permission-user",
            "client-confidential-asymmetric"
        ],
        "scopes_supported": SCOPES_SUPPORTED,
        "response_types_supported": [],
        "grant_types_supported": [],
        "code_challenge_methods_supported": [],
        "description": "Bearer JWTs (RS256, ES256, EdDSA) from the listed issuers; patient/ scopes are confined to the token's patient claim; ?param=value scope constraints are honoured on the named top-level element"
    }))
}
