//! `GET /admin/compliance/evidence` and `GET /admin/compliance/pack` (scope `admin/audit`):
//! the compliance evidence of this server (what `hearth compliance report` writes), as JSON or
//! as the signed pack in one tar archive.

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json, Router};
use serde::Deserialize;

use super::SharedState;
use crate::audit::AuditSigner;
use crate::auth::Principal;
use crate::compliance::{Evidence, Period, evidence_for, pack::PackFiles};
use crate::fhir::outcome::{FhirError, IssueType};

/// The JSON route (under the router's JSON format negotiation).
pub fn routes() -> Router<SharedState> {
    Router::new().route("/admin/compliance/evidence", axum::routing::get(evidence))
}

/// The tar download, which negotiates its own format: `application/x-tar` (or any).
pub fn pack_route() -> axum::routing::MethodRouter<SharedState> {
    axum::routing::get(pack)
}

fn accepts_tar(headers: &axum::http::HeaderMap) -> bool {
    let Some(accept) = headers.get(header::ACCEPT) else { return true };
    accept.to_str().is_ok_and(|accept| super::extract::accepts(accept, |essence| essence == "application/x-tar"))
}

/// The access review's period: `since` and `until` as dates or instants (default: the 90 days
/// before now).
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PeriodQuery {
    since: Option<String>,
    until: Option<String>,
}

impl PeriodQuery {
    fn period(&self) -> Result<Period, FhirError> {
        Period::parse(self.since.as_deref(), self.until.as_deref())
            .map_err(|message| FhirError::bad_request(IssueType::Value, message))
    }
}

async fn make(state: &SharedState, query: &PeriodQuery) -> Result<(Evidence, AuditSigner), FhirError> {
    let period = query.period()?;
    let settings = &state.settings.serve;
    let unavailable = |message: String| {
        tracing::error!(%message, "compliance evidence could not be made");
        FhirError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, IssueType::Exception, message)
    };
    let signer = AuditSigner::load(&settings.storage.audit_key, false)
        .map_err(|e| unavailable(format!("the audit signing key: {e}")))?;
    // The refusals still queued belong in the review.
    let _ = state.audit.settle().await;
    let evidence = evidence_for(&state.store, settings, period, &signer, &|_, _| {}).await.map_err(|e| match e {
        crate::compliance::ReportError::Store(store) => FhirError::from(store),
        other => unavailable(other.to_string()),
    })?;
    Ok((evidence, signer))
}

/// The evidence document (figures and findings) as JSON.
async fn evidence(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    super::extract::FhirQuery(query): super::extract::FhirQuery<PeriodQuery>,
) -> Result<Json<Evidence>, FhirError> {
    principal.require_admin("audit")?;
    Ok(Json(make(&state, &query).await?.0))
}

/// The signed pack (evidence.json, evidence.html, signature.json) as a tar archive.
async fn pack(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    headers: axum::http::HeaderMap,
    super::extract::FhirQuery(query): super::extract::FhirQuery<PeriodQuery>,
) -> Result<Response, FhirError> {
    principal.require_admin("audit")?;
    if !accepts_tar(&headers) {
        return Err(FhirError::new(
            axum::http::StatusCode::NOT_ACCEPTABLE,
            IssueType::NotSupported,
            "the evidence pack is served as application/x-tar",
        ));
    }
    let (evidence, signer) = make(&state, &query).await?;
    Ok(pack_download(&evidence, &signer))
}

/// `evidence` signed by `signer`, as a tar archive to save (the API's and the console's download).
pub fn pack_download(evidence: &Evidence, signer: &AuditSigner) -> Response {
    let tar = PackFiles::sign(evidence, signer).tar(u64::try_from(evidence.generated_us / 1_000_000).unwrap_or(0));
    let name = format!("hearth-evidence-{}.tar", evidence.generated_at.get(..10).unwrap_or("pack"));
    let mut response = tar.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}
