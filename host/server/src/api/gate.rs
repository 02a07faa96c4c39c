//! What policy plugins see of who is asking: the principal and the request headers that
//! concern them (break-glass reason, purpose of use). Running the plugins is the service
//! layer's (`crate::service`).

use axum::http::HeaderMap;

use crate::auth::{BREAK_GLASS_ROLE, Principal, forbidden};
use crate::fhir::outcome::{FhirError, IssueType};
use crate::policy::Caller;
use crate::service::Requester;

/// Stated reason for an emergency access; needs the break-glass role.
pub const BREAK_GLASS_HEADER: &str = "x-break-glass-reason";
/// Purpose of use (a v3 ActReason code, e.g. `TREAT`, `ETREAT`, `HPAYMT`).
pub const PURPOSE_OF_USE_HEADER: &str = "x-purpose-of-use";

/// What plugins see of the principal and request headers. A break-glass reason from a
/// principal without the break-glass role is refused outright.
pub fn caller(principal: &Principal, headers: &HeaderMap) -> Result<Caller, FhirError> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty());
    let break_glass_reason = match header(BREAK_GLASS_HEADER) {
        Some(_) if !principal.roles.iter().any(|r| r == BREAK_GLASS_ROLE) => {
            return Err(forbidden(format!("{BREAK_GLASS_HEADER} needs a token with the {BREAK_GLASS_ROLE} role")));
        }
        Some(reason) if reason.len() > 500 => {
            return Err(FhirError::bad_request(
                IssueType::Value,
                "state the break-glass reason in at most 500 characters",
            ));
        }
        other => other.map(str::to_owned),
    };
    let purpose_of_use = header(PURPOSE_OF_USE_HEADER).map(str::to_owned);
    if purpose_of_use
        .as_deref()
        .is_some_and(|p| p.len() > 64 || !p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'))
    {
        return Err(FhirError::bad_request(
            IssueType::Value,
            format!("{PURPOSE_OF_USE_HEADER} must be a code, e.g. TREAT"),
        ));
    }
    Ok(Caller {
        subject: principal.subject.clone(),
        scopes: principal.scopes.granted.clone(),
        roles: principal.roles.clone(),
        purpose_of_use,
        break_glass_reason,
        patient: principal.patient.clone(),
    })
}

/// Who is asking, for the service layer.
pub(super) fn requester<'a>(principal: &'a Principal, caller: &'a Caller) -> Requester<'a> {
    Requester { principal, caller }
}
