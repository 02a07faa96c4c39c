//! The administrative API: operations that need an `admin/...` scope and never a clinical one.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::SharedState;
use crate::audit::{AuditEvent, Review};
use crate::auth::Principal;
use crate::fhir::compartment::patient_key_id;
use crate::fhir::instant::to_fhir_instant;
use crate::fhir::outcome::{FhirError, IssueType, operation_outcome};
use crate::fhir::resource::check_id;

pub fn routes() -> Router<SharedState> {
    Router::new()
        .route("/admin/erasure", post(erase_patient))
        .route("/admin/break-glass", axum::routing::get(break_glass_accesses))
        .route("/admin/break-glass/{seq}/review", post(review_break_glass))
        .route("/admin/keys", axum::routing::get(keys))
        .route("/admin/audit/verify", post(verify_audit))
}

/// `GET /admin/keys` (scope `admin/keys`): the key-encryption key versions with how many live
/// data keys each wraps (a rotation is complete when only the newest wraps any), and the
/// latest erasures (crypto-shredded data keys) with their stated reasons. No key material.
async fn keys(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("keys")?;
    let status = state.store.key_status().await?;
    let newest = status.kek_versions.iter().map(|(version, _, _)| *version).max();
    let kek_versions: Vec<Value> = status
        .kek_versions
        .iter()
        .map(|(version, data_keys, retired)| {
            json!({"version": version, "dataKeys": data_keys, "retired": retired, "current": Some(*version) == newest})
        })
        .collect();
    let live: i64 = status.kek_versions.iter().map(|(_, n, _)| n).sum();
    let on_newest: i64 = status.kek_versions.iter().filter(|(v, _, _)| Some(*v) == newest).map(|(_, n, _)| n).sum();
    let erasures: Vec<Value> = state
        .store
        .erasure_history(100)
        .await
        ?
        .into_iter()
        .map(|(key_id, at_us, reason)| {
            json!({"dataKey": key_id, "patient": key_id.strip_prefix("patient/"), "at": to_fhir_instant(at_us), "reason": reason})
        })
        .collect();
    Ok(Json(json!({
        "kekVersions": kek_versions,
        "liveDataKeys": live,
        "rotation": {"onCurrentKek": on_newest, "remaining": live - on_newest},
        "destroyedDataKeys": status.destroyed_data_keys,
        "erasureCount": status.erasures,
        "erasures": erasures,
    })))
}

/// `POST /admin/audit/verify` (scope `admin/audit`): walks the whole audit chain and its signed
/// checkpoints now, as `hearth audit verify` does, and says whether it is intact and, if not,
/// the first break found.
async fn verify_audit(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("audit")?;
    let started = std::time::Instant::now();
    // The refusals answered so far are part of the chain verified.
    if let Err(failure) = state.audit.settle().await {
        tracing::warn!(error = %failure.message, "queued refusals could not be written before verification");
    }
    let report = crate::audit::verify_chain(&state.store, &[state.audit.public_key().to_vec()], &|_| {}).await?;
    let problem = report.problem.as_ref().map(ToString::to_string);
    if let Some(problem) = &problem {
        tracing::error!(%problem, by = %principal.subject, "audit chain verification found a break");
    }
    Ok(Json(json!({
        "intact": problem.is_none(),
        "entries": report.entries,
        "checkpoints": report.checkpoints,
        "lastGoodCheckpoint": report.last_good_checkpoint,
        "problem": problem,
        "verifiedAt": to_fhir_instant(crate::fhir::instant::now_us()),
        "millis": started.elapsed().as_millis() as u64,
    })))
}

#[derive(Deserialize)]
struct BreakGlassQuery {
    /// Continue after this audit entry (from the previous page's `next`).
    after: Option<i64>,
    /// Only accesses no reviewer has acknowledged or escalated yet.
    #[serde(default)]
    pending: bool,
}

/// Entries per page of the break-glass report.
const BREAK_GLASS_PAGE: usize = 100;

/// `GET /admin/break-glass[?after=SEQ][&pending=true]` (scope `admin/audit`): emergency
/// accesses (and refused attempts) for review, oldest first, read from the audit chain through
/// its lookups: who, when, what, the outcome, the stated reason, and the reviews so far.
async fn break_glass_accesses(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    super::extract::FhirQuery(query): super::extract::FhirQuery<BreakGlassQuery>,
) -> Result<Json<Value>, FhirError> {
    principal.require_admin("audit")?;
    let mut after = query.after.unwrap_or(0);
    let mut found = Vec::new();
    let mut exhausted = false;
    while found.len() < BREAK_GLASS_PAGE && !exhausted {
        let seqs = state.store.audit_seqs_with("purpose", "BTG", after, 500).await?;
        exhausted = seqs.len() < 500;
        for stored in state.store.audit_entries_at(&seqs).await? {
            after = stored.seq;
            let Ok(entry) = serde_json::from_str::<AuditEvent>(&stored.entry) else { continue };
            let reviews = reviews_of(&state, stored.seq).await?;
            if query.pending && !reviews.is_empty() {
                continue;
            }
            found.push(json!({
                "seq": stored.seq,
                "at": entry.at,
                "subject": entry.subject,
                "action": entry.action,
                "resourceType": entry.resource_type,
                "resourceId": entry.resource_id,
                "patients": entry.patients,
                "status": entry.status,
                "reason": entry.break_glass,
                "reviews": reviews,
            }));
            if found.len() == BREAK_GLASS_PAGE {
                break;
            }
        }
    }
    let pending = if query.pending { "&pending=true" } else { "" };
    let next = (found.len() == BREAK_GLASS_PAGE).then(|| format!("/admin/break-glass?after={after}{pending}"));
    Ok(Json(json!({ "entries": found, "next": next })))
}

/// The reviews recorded for break-glass entry `seq`, oldest first.
async fn reviews_of(state: &SharedState, seq: i64) -> Result<Vec<Value>, FhirError> {
    let seqs = state.store.audit_seqs_with("reviews", &seq.to_string(), 0, 100).await?;
    let mut reviews = Vec::with_capacity(seqs.len());
    for stored in state.store.audit_entries_at(&seqs).await? {
        let Ok(entry) = serde_json::from_str::<AuditEvent>(&stored.entry) else { continue };
        let Some(review) = entry.review.filter(|_| entry.outcome == crate::audit::Outcome::Success) else { continue };
        reviews.push(json!({
            "seq": stored.seq,
            "at": entry.at,
            "reviewer": entry.subject,
            "decision": review.decision,
            "comment": review.comment,
        }));
    }
    Ok(reviews)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ReviewRequest {
    decision: String,
    comment: String,
}

/// `POST /admin/break-glass/{seq}/review` `{"decision": "acknowledged"|"escalated",
/// "comment": TEXT}` (scope `admin/audit`): a reviewer's verdict on emergency access `seq`.
/// The verdict is itself an audit entry (so it is in the chain, signed and verifiable); a
/// principal cannot review their own emergency access.
async fn review_break_glass(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    super::extract::FhirPath(seq): super::extract::FhirPath<i64>,
    body: axum::body::Bytes,
) -> Result<Response, FhirError> {
    principal.require_admin("audit")?;
    let request: ReviewRequest = serde_json::from_slice(&body).map_err(|_| {
        FhirError::bad_request(
            IssueType::Structure,
            r#"send {"decision": "acknowledged" or "escalated", "comment": "<why, no patient details>"}"#,
        )
    })?;
    if !matches!(request.decision.as_str(), "acknowledged" | "escalated") {
        return Err(FhirError::bad_request(IssueType::Value, "decision is 'acknowledged' or 'escalated'"));
    }
    let comment: String = request.comment.trim().chars().take(500).collect();
    if comment.is_empty() {
        return Err(FhirError::bad_request(IssueType::Required, "state a comment for the review"));
    }
    let stored = state.store.audit_entries_at(&[seq]).await?.pop();
    let entry = stored.and_then(|s| serde_json::from_str::<AuditEvent>(&s.entry).ok());
    let Some(entry) = entry.filter(|e| e.break_glass.is_some()) else {
        return Err(FhirError::not_found(format!("audit entry {seq} is not an emergency (break-glass) access")));
    };
    if entry.subject.as_deref() == Some(principal.subject.as_str()) {
        return Err(FhirError::new(
            StatusCode::CONFLICT,
            IssueType::Conflict,
            "an emergency access is reviewed by someone other than the person who made it",
        ));
    }
    tracing::info!(seq, decision = %request.decision, by = %principal.subject, "break-glass access reviewed");
    let message = format!("audit entry {seq}: {}", request.decision);
    let mut response = Json(operation_outcome("information", IssueType::Informational, &message, None)).into_response();
    // The audit layer writes the verdict into this request's own entry.
    response.extensions_mut().insert(Review { decision: request.decision, comment });
    Ok(response)
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
    let destroyed = state.store.destroy_data_key(&patient_key_id(&request.patient), request.reason.trim()).await?;
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
