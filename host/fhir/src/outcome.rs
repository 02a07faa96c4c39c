//! OperationOutcome and the one error type every FHIR handler returns.
//!
//! Errors are values of [`FhirError`]; they are turned into an HTTP response exactly once, here,
//! so every failure a client sees is an `OperationOutcome` with a status that matches it.

use http::{HeaderValue, StatusCode, header};

use serde_json::{Value, json};

use super::FHIR_JSON;

/// The FHIR `IssueType` codes we use (http://hl7.org/fhir/R4/valueset-issue-type.html).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IssueType {
    Invalid,
    Structure,
    Login,
    Forbidden,
    Security,
    Required,
    Value,
    NotFound,
    Deleted,
    NotSupported,
    Conflict,
    TooLong,
    TooCostly,
    CodeInvalid,
    Exception,
    Transient,
    Throttled,
    Informational,
}

impl IssueType {
    pub fn code(self) -> &'static str {
        match self {
            IssueType::Invalid => "invalid",
            IssueType::Security => "security",
            IssueType::Structure => "structure",
            IssueType::Login => "login",
            IssueType::Forbidden => "forbidden",
            IssueType::Required => "required",
            IssueType::Value => "value",
            IssueType::NotFound => "not-found",
            IssueType::Deleted => "deleted",
            IssueType::NotSupported => "not-supported",
            IssueType::Conflict => "conflict",
            IssueType::TooLong => "too-long",
            IssueType::TooCostly => "too-costly",
            IssueType::CodeInvalid => "code-invalid",
            IssueType::Exception => "exception",
            IssueType::Transient => "transient",
            IssueType::Throttled => "throttled",
            IssueType::Informational => "informational",
        }
    }
}

/// Builds an OperationOutcome with a single issue.
pub fn operation_outcome(severity: &str, code: IssueType, diagnostics: &str, expression: Option<&str>) -> Value {
    let mut issue = json!({
        "severity": severity,
        "code": code.code(),
        "diagnostics": diagnostics,
    });
    if let Some(expr) = expression {
        issue["expression"] = json!([expr]);
    }
    json!({ "resourceType": "OperationOutcome", "issue": [issue] })
}

/// A failed FHIR interaction: the HTTP status, the issue code and a message meant for the client.
///
/// Messages must never contain resource content (PHI); they name types, ids, versions and
/// limits only. Internal causes are logged by the caller with the request id, not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status}: {diagnostics}")]
pub struct FhirError {
    pub status: StatusCode,
    pub code: IssueType,
    pub diagnostics: String,
    pub expression: Option<String>,
    /// Further issues of the same failure (e.g. every validation problem of a resource).
    pub more: Vec<(IssueType, String, Option<String>)>,
    /// The rule that decided a refusal (`policy:consent`, `validation:rules`), for the audit
    /// entry; it travels as a [`DecidedBy`] response extension.
    pub decided_by: Option<String>,
    /// A complete OperationOutcome to answer with instead of the one built from the fields
    /// (a validation plugin's issues, each with its own severity).
    pub body: Option<Value>,
}

/// Which rule decided a refusal, for the audit entry (a response extension).
#[derive(Debug, Clone)]
pub struct DecidedBy(pub String);

impl FhirError {
    pub fn new(status: StatusCode, code: IssueType, diagnostics: impl Into<String>) -> Self {
        FhirError {
            status,
            code,
            diagnostics: diagnostics.into(),
            expression: None,
            more: Vec::new(),
            decided_by: None,
            body: None,
        }
    }

    /// The same error, naming the rule that decided it.
    pub fn decided_by(mut self, rule: impl Into<String>) -> Self {
        self.decided_by = Some(rule.into());
        self
    }

    pub fn at(mut self, expression: impl Into<String>) -> Self {
        self.expression = Some(expression.into());
        self
    }

    pub fn bad_request(code: IssueType, diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, diagnostics)
    }

    pub fn not_found(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, IssueType::NotFound, diagnostics)
    }

    pub fn gone(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::GONE, IssueType::Deleted, diagnostics)
    }

    pub fn precondition_failed(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::PRECONDITION_FAILED, IssueType::Conflict, diagnostics)
    }

    /// A server-side failure; the client learns only the request id to quote.
    pub fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            IssueType::Exception,
            "internal server error; quote the X-Request-Id response header when reporting it",
        )
    }

    /// The database is unreachable or overloaded: the client may retry.
    /// 507: the database has no room to write (the resource, or the audit entry that every
    /// request, reads included, must leave).
    pub fn out_of_space() -> Self {
        Self::new(
            StatusCode::INSUFFICIENT_STORAGE,
            IssueType::Exception,
            "the server's database is out of space, so the request could not be recorded and nothing was changed \
             by it; an operator must free space (or grow the volume), then retry",
        )
    }

    pub fn unavailable(diagnostics: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, IssueType::Transient, diagnostics)
    }

    pub fn outcome(&self) -> Value {
        if let Some(body) = &self.body {
            return body.clone();
        }
        let mut outcome = operation_outcome("error", self.code, &self.diagnostics, self.expression.as_deref());
        if let Some(Value::Array(issues)) = outcome.get_mut("issue") {
            for (code, diagnostics, expression) in &self.more {
                let mut issue = json!({"severity": "error", "code": code.code(), "diagnostics": diagnostics});
                if let Some(expression) = expression {
                    issue["expression"] = json!([expression]);
                }
                issues.push(issue);
            }
        }
        outcome
    }
}

/// With the `axum` feature (the server enables it): a FhirError is an HTTP answer, its
/// OperationOutcome with the status, and `Retry-After` when the store is unavailable.
#[cfg(feature = "axum")]
impl axum::response::IntoResponse for FhirError {
    fn into_response(self) -> axum::response::Response {
        let body = serde_json::to_vec(&self.outcome()).unwrap_or_default();
        let mut response = (self.status, body).into_response();
        response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(FHIR_JSON));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Some(rule) = self.decided_by {
            response.extensions_mut().insert(DecidedBy(rule));
        }
        response
    }
}
