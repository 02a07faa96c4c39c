//! The administrative API: operations that need an `admin/...` scope and never a clinical one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::SharedState;
use crate::auth::Principal;
use crate::fhir::compartment::patient_key_id;
use crate::fhir::outcome::{FhirError, IssueType, operation_outcome};
use crate::fhir::resource::check_id;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/admin/erasure", post(erase_patient))
        .route("/admin/break-glass", axum::routing::get(break_glass_accesses))
}

#[derive(Deserialize)]
struct BreakGlassQuery {
    /// Continue after this audit entry (from the previous page's `next`).
    after: Option<i64>,
}

/// Entries per page of the break-glass report.
const BREAK_GLASS_PAGE: usize = 100;

/// `GET /admin/break-glass[?after=SEQ]` (scope `admin/audit`): emergency accesses for review,
/// oldest first, read from the audit chain: who, when, what, the outcome and the stated reason.
/// A scan of the chain from `after`; a reviewer keeps the last `seq` seen and continues there.
async fn break_glass_accesses(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    axum::extract::Query(query): axum::extract::Query<BreakGlassQuery>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("audit")?;
    let mut after = query.after.unwrap_or(0);
    let mut found = Vec::new();
    'scan: loop {
        let page = state.store.audit_entries(after, 2000).await.map_err(super::fhir::store_error)?;
        if page.is_empty() {
            break;
        }
        for stored in &page {
            after = stored.seq;
            let Ok(entry) = serde_json::from_str::<Value>(&stored.entry) else { continue };
            let Some(reason) = entry.get("break_glass").and_then(Value::as_str) else { continue };
            found.push(serde_json::json!({
                "seq": stored.seq,
                "at": entry["at"],
                "subject": entry["subject"],
                "action": entry["action"],
                "resourceType": entry["resource_type"],
                "resourceId": entry["resource_id"],
                "status": entry["status"],
                "reason": reason,
            }));
            if found.len() == BREAK_GLASS_PAGE {
                break 'scan;
            }
        }
    }
    let next = (found.len() == BREAK_GLASS_PAGE).then(|| format!("/admin/break-glass?after={after}"));
    Ok(Json(serde_json::json!({ "entries": found, "next": next })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ErasureRequest {
    patient: String,
    reason: String,
}

/// `POST /admin/erasure` `{"patient": ID, "reason": TEXT}`: crypto-shreds one patient.
async fn erase_patient(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    body: axum::body::Bytes,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("erasure")?;
    let request: ErasureRequest = serde_json::from_slice(&body).map_err(|_| {
        FhirError::bad_request(
            IssueType::Structure,
            r#"send {"patient": "<Patient id>", "reason": "<why, no patient details>"}"#,
        )
    })?;
    check_id(&request.patient)?;
    if request.reason.trim().is_empty() {
        return Err(FhirError::bad_request(IssueType::Required, "state the reason for the erasure"));
    }
    let destroyed = state
        .store
        .destroy_data_key(&patient_key_id(&request.patient), request.reason.trim())
        .await
        .map_err(super::fhir::store_error)?;
    if !destroyed {
        return Err(FhirError::new(
            StatusCode::NOT_FOUND,
            IssueType::NotFound,
            format!("Patient/{} has no records with a live key (unknown, or erased before)", request.patient),
        ));
    }
    tracing::warn!(patient = %request.patient, by = %principal.subject, "patient erased (data key destroyed)");
    let message = format!("erased Patient/{}: every version of its records is unreadable", request.patient);
    Ok(Json(operation_outcome("information", IssueType::Informational, &message, None)))
}
