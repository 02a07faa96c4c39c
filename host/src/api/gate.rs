//! Policy gating of FHIR interactions: builds what plugins see of a request, runs the policy
//! engine, applies its verdicts (drop, deny, redact, label) and answers denials.

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};

use super::SharedState;
use std::collections::BTreeMap;

use crate::auth::{Access, BREAK_GLASS_ROLE, Principal, forbidden};
use crate::fhir::compartment::data_key_id;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::plugins::bindings::types::{Issue, Severity, SubjectResource};
use crate::policy::{Caller, Plan, PolicyInteraction, Verdict};
use crate::store::VersionRecord;

/// Stated reason for an emergency access; needs the break-glass role.
pub const BREAK_GLASS_HEADER: &str = "x-break-glass-reason";
/// Purpose of use (a v3 ActReason code, e.g. `TREAT`, `ETREAT`, `HPAYMT`).
pub const PURPOSE_OF_USE_HEADER: &str = "x-purpose-of-use";

/// Which rule decided a denial, for the audit entry (a response extension).
#[derive(Debug, Clone)]
pub struct DecidedBy(pub String);

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

/// The 403 for a policy denial, naming the policy and its reason.
pub fn denied(plugin: &str, reason: &str) -> Response {
    let mut response =
        FhirError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, format!("denied by policy '{plugin}': {reason}"))
            .into_response();
    response.extensions_mut().insert(DecidedBy(format!("policy:{plugin}")));
    response
}

fn compartment(res_type: &str, id: &str, content: &Map<String, Value>) -> Option<String> {
    data_key_id(res_type, id, content).strip_prefix("patient/").map(str::to_owned)
}

fn subject(
    res_type: &str,
    id: Option<&str>,
    content: Option<&Map<String, Value>>,
    json: Option<String>,
) -> SubjectResource {
    SubjectResource {
        resource_type: res_type.to_owned(),
        id: id.map(str::to_owned),
        compartment: content.and_then(|c| compartment(res_type, id.unwrap_or(""), c)),
        json,
    }
}

/// Runs the read policies on `records` (all of `res_type`): each comes back allowed (its
/// body redacted and labelled as obliged) or as the denial `(plugin, reason)`.
pub async fn authorize_records(
    state: &SharedState,
    caller: &Caller,
    plan: &Plan,
    interaction: PolicyInteraction,
    res_type: &str,
    records: Vec<VersionRecord>,
) -> Result<Vec<Result<VersionRecord, (String, String)>>, FhirError> {
    let mut contents = Vec::with_capacity(records.len());
    let mut subjects = Vec::with_capacity(records.len());
    for record in &records {
        let content: Option<Map<String, Value>> = match record.body.as_deref() {
            Some(body) => Some(serde_json::from_slice(body).map_err(|_| FhirError::internal())?),
            None => None,
        };
        let json = record.body.as_deref().map(|b| String::from_utf8_lossy(b).into_owned());
        subjects.push(subject(res_type, Some(&record.id), content.as_ref(), json));
        contents.push(content);
    }
    let verdicts = state.plugins.policies.authorize(caller, plan, res_type, interaction, subjects).await;
    Ok(records
        .into_iter()
        .zip(contents)
        .zip(verdicts)
        .map(|((mut record, content), verdict)| match verdict {
            Verdict::Allow => Ok(record),
            Verdict::Deny { plugin, reason } => Err((plugin, reason)),
            Verdict::AllowWith { redact, labels } => {
                if let Some(mut content) = content {
                    crate::policy::redact::apply(&mut content, &redact, &labels);
                    record.body = serde_json::to_vec(&content).ok();
                }
                Ok(record)
            }
        })
        .collect())
}

/// Keeps, in order, the records within `reach` (the access a type gives this caller; `None`:
/// the type is out of reach) and allowed by the policies bound to `interaction`, redacted as
/// obliged. Restricted access is checked record by record (deletion markers, having no content
/// to judge, pass only unrestricted access); the policies judge each type's records in one
/// batch call. Denied records are left out.
pub async fn admit_records(
    state: &SharedState,
    caller: &Caller,
    interaction: PolicyInteraction,
    records: Vec<VersionRecord>,
    reach: &(dyn Fn(&str) -> Option<Access> + Sync),
) -> Result<Vec<VersionRecord>, FhirError> {
    let mut accesses: BTreeMap<String, Option<Access>> = BTreeMap::new();
    let mut by_type: BTreeMap<String, Vec<(usize, VersionRecord)>> = BTreeMap::new();
    for (position, record) in records.into_iter().enumerate() {
        let access = accesses.entry(record.res_type.clone()).or_insert_with(|| reach(&record.res_type));
        let Some(access) = access else { continue };
        if !access.is_unrestricted() {
            let content: Option<Map<String, Value>> =
                record.body.as_deref().and_then(|b| serde_json::from_slice(b).ok());
            if !content.is_some_and(|c| access.permits(&record.res_type, &record.id, &c)) {
                continue;
            }
        }
        by_type.entry(record.res_type.clone()).or_default().push((position, record));
    }
    let mut kept: Vec<(usize, VersionRecord)> = Vec::new();
    for (res_type, group) in by_type {
        match state.plugins.policies.plan(&res_type, interaction) {
            None => kept.extend(group),
            Some(plan) => {
                let (positions, records): (Vec<usize>, Vec<VersionRecord>) = group.into_iter().unzip();
                let judged = authorize_records(state, caller, &plan, interaction, &res_type, records).await?;
                kept.extend(positions.into_iter().zip(judged).filter_map(|(p, r)| r.ok().map(|r| (p, r))));
            }
        }
    }
    kept.sort_by_key(|(position, _)| *position);
    Ok(kept.into_iter().map(|(_, r)| r).collect())
}

/// Runs the write policies (authorize, then validate) on an incoming resource. `Err` is the
/// response to send: a 403 denial or a 422 with the validation issues.
pub async fn authorize_write(
    state: &SharedState,
    caller: &Caller,
    plan: &Plan,
    interaction: PolicyInteraction,
    res_type: &str,
    id: Option<&str>,
    content: Option<&Map<String, Value>>,
) -> Result<(), Response> {
    let policies = &state.plugins.policies;
    let json = content.map(|c| Value::Object(c.clone()).to_string());
    let resource = subject(res_type, id, content, json);
    let verdicts = policies.authorize(caller, plan, res_type, interaction, vec![resource.clone()]).await;
    if let Some(Verdict::Deny { plugin, reason }) = verdicts.first() {
        return Err(denied(plugin, reason));
    }
    if content.is_none() {
        return Ok(());
    }
    let issues = match policies.validate(caller, plan, interaction, resource).await {
        Ok(issues) => issues,
        Err(Verdict::Deny { plugin, reason }) => return Err(denied(&plugin, &reason)),
        Err(_) => return Err(FhirError::internal().into_response()),
    };
    let Some((outcome, plugins)) = validation_outcome(&issues) else { return Ok(()) };
    let mut response =
        super::fhir::fhir_json(StatusCode::UNPROCESSABLE_ENTITY, serde_json::to_vec(&outcome).unwrap_or_default());
    response.extensions_mut().insert(DecidedBy(format!("validation:{}", plugins.join(","))));
    Err(response)
}

/// The codes of FHIR R4's IssueType value set (required binding of `OperationOutcome.issue.code`).
const ISSUE_TYPES: &[&str] = &[
    "invalid",
    "structure",
    "required",
    "value",
    "invariant",
    "security",
    "login",
    "unknown",
    "expired",
    "forbidden",
    "suppressed",
    "processing",
    "not-supported",
    "duplicate",
    "multiple-matches",
    "not-found",
    "deleted",
    "too-long",
    "code-invalid",
    "extension",
    "too-costly",
    "business-rule",
    "conflict",
    "transient",
    "lock-error",
    "no-store",
    "exception",
    "timeout",
    "incomplete",
    "throttled",
    "informational",
];

/// The OperationOutcome of validation plugins' error and fatal issues, and the plugins that
/// raised them; `None` if there are none. A plugin's issue code outside the IssueType value set
/// becomes `invalid`, so the answer stays a valid OperationOutcome whatever a plugin returns.
pub(crate) fn validation_outcome(issues: &[(String, Issue)]) -> Option<(Value, Vec<&str>)> {
    let errors: Vec<_> =
        issues.iter().filter(|(_, i)| matches!(i.severity, Severity::Error | Severity::Fatal)).collect();
    if errors.is_empty() {
        return None;
    }
    let outcome = serde_json::json!({
        "resourceType": "OperationOutcome",
        "issue": errors.iter().map(|(plugin, issue)| {
            let code = if ISSUE_TYPES.contains(&issue.code.as_str()) { issue.code.as_str() } else { "invalid" };
            let mut entry = serde_json::json!({
                "severity": if matches!(issue.severity, Severity::Fatal) { "fatal" } else { "error" },
                "code": code,
                "diagnostics": format!("{} (rule set '{plugin}')", issue.diagnostics),
            });
            if let Some(expression) = &issue.expression {
                entry["expression"] = serde_json::json!([expression]);
            }
            entry
        }).collect::<Vec<_>>(),
    });
    Some((outcome, errors.iter().map(|(p, _)| p.as_str()).collect()))
}
