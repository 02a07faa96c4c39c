//! The policy plugins' part of a request: builds what plugins see of the resources, runs the
//! policy engine, and applies its verdicts (drop, deny, redact, label).

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Map, Value};

use super::{Records, Requester};
use crate::fhir::compartment::data_key_id;
use crate::fhir::outcome::{FhirError, IssueType};
use crate::plugins::bindings::types::{Issue, Severity, SubjectResource};
use crate::policy::{Plan, PolicyInteraction, Verdict};
use crate::store::VersionRecord;

/// The 403 of a policy denial, naming the policy and its reason. A policy decides what its
/// denial discloses (a consent policy tells a clinician that break-glass is possible): this
/// is the one refusal of a stored resource that is not a 404, and only plugins cause it.
pub fn denied(plugin: &str, reason: &str) -> FhirError {
    FhirError::new(StatusCode::FORBIDDEN, IssueType::Forbidden, format!("denied by policy '{plugin}': {reason}"))
        .decided_by(format!("policy:{plugin}"))
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
        compartment: content
            .and_then(|c| data_key_id(res_type, id.unwrap_or(""), c).strip_prefix("patient/").map(str::to_owned)),
        json,
    }
}

impl Records {
    /// Runs the read policies of `plan` on `records` (all of `res_type`): each comes back
    /// allowed (its body redacted and labelled as obliged) or as the denial `(plugin, reason)`.
    async fn judge(
        &self,
        who: Requester<'_>,
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
        let verdicts = self.policies.authorize(who.caller, plan, res_type, interaction, subjects).await;
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

    /// Whether any policy is bound to `interaction` on one of `types`.
    pub(super) fn gated(&self, types: &[String], interaction: PolicyInteraction) -> bool {
        types.iter().any(|t| self.policies.plan(t, interaction).is_some())
    }

    /// Keeps, in order, the records the policies bound to `interaction` allow, redacted as
    /// obliged; denied ones are left out. The policies judge each type's records in one batch
    /// call. (Whether the caller's scopes reach them is the access predicate's business,
    /// settled before.)
    pub(crate) async fn admit(
        &self,
        who: Requester<'_>,
        interaction: PolicyInteraction,
        records: Vec<VersionRecord>,
    ) -> Result<Vec<VersionRecord>, FhirError> {
        let keyed = records.into_iter().map(|r| ((), r)).collect();
        let (kept, _) = self.admit_keyed(who, interaction, keyed).await?;
        Ok(kept.into_iter().map(|(_, r)| r).collect())
    }

    /// [`Records::admit`] of records that each carry a `K` (e.g. their position in a search),
    /// and the first denial, if any (as the 403 a read would answer).
    pub(super) async fn admit_keyed<K>(
        &self,
        who: Requester<'_>,
        interaction: PolicyInteraction,
        records: Vec<(K, VersionRecord)>,
    ) -> Result<(Vec<(K, VersionRecord)>, Option<FhirError>), FhirError> {
        let mut by_type: BTreeMap<String, Vec<(usize, K, VersionRecord)>> = BTreeMap::new();
        for (position, (key, record)) in records.into_iter().enumerate() {
            by_type.entry(record.res_type.clone()).or_default().push((position, key, record));
        }
        let mut kept: Vec<(usize, K, VersionRecord)> = Vec::new();
        let mut first_denial = None;
        for (res_type, group) in by_type {
            match self.policies.plan(&res_type, interaction) {
                None => kept.extend(group),
                Some(plan) => {
                    let mut slots = Vec::with_capacity(group.len());
                    let mut records = Vec::with_capacity(group.len());
                    for (position, key, record) in group {
                        slots.push((position, key));
                        records.push(record);
                    }
                    let judged = self.judge(who, &plan, interaction, &res_type, records).await?;
                    for ((position, key), verdict) in slots.into_iter().zip(judged) {
                        match verdict {
                            Ok(record) => kept.push((position, key, record)),
                            Err((plugin, reason)) => {
                                first_denial.get_or_insert_with(|| denied(&plugin, &reason));
                            }
                        }
                    }
                }
            }
        }
        kept.sort_by_key(|(position, _, _)| *position);
        Ok((kept.into_iter().map(|(_, k, r)| (k, r)).collect(), first_denial))
    }

    /// Runs the read policies on one record: the (possibly redacted) record, or the denial.
    pub(super) async fn admit_one(
        &self,
        who: Requester<'_>,
        interaction: PolicyInteraction,
        record: VersionRecord,
    ) -> Result<VersionRecord, FhirError> {
        let Some(plan) = self.policies.plan(&record.res_type, interaction) else { return Ok(record) };
        let res_type = record.res_type.clone();
        match self.judge(who, &plan, interaction, &res_type, vec![record]).await?.pop() {
            Some(Ok(record)) => Ok(record),
            Some(Err((plugin, reason))) => Err(denied(&plugin, &reason)),
            None => Err(FhirError::internal()),
        }
    }

    /// Runs the write policies (authorize, then validate) on a write of `res_type/id` with
    /// `content` (`None` for a delete without content to judge): a 403 denial or a 422 with
    /// the validation issues.
    pub(crate) async fn authorize_write(
        &self,
        who: Requester<'_>,
        interaction: PolicyInteraction,
        res_type: &str,
        id: Option<&str>,
        content: Option<&Map<String, Value>>,
    ) -> Result<(), FhirError> {
        let Some(plan) = self.policies.plan(res_type, interaction) else { return Ok(()) };
        let json = content.map(|c| Value::Object(c.clone()).to_string());
        let resource = subject(res_type, id, content, json);
        let verdicts = self.policies.authorize(who.caller, &plan, res_type, interaction, vec![resource.clone()]).await;
        if let Some(Verdict::Deny { plugin, reason }) = verdicts.first() {
            return Err(denied(plugin, reason));
        }
        if content.is_none() {
            return Ok(());
        }
        let issues = match self.policies.validate(who.caller, &plan, interaction, resource).await {
            Ok(issues) => issues,
            Err(Verdict::Deny { plugin, reason }) => return Err(denied(&plugin, &reason)),
            Err(_) => return Err(FhirError::internal()),
        };
        let Some((outcome, plugins)) = validation_outcome(&issues) else { return Ok(()) };
        let mut error = FhirError::new(StatusCode::UNPROCESSABLE_ENTITY, IssueType::Invalid, "validation failed")
            .decided_by(format!("validation:{}", plugins.join(",")));
        error.body = Some(outcome);
        Err(error)
    }
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
pub fn validation_outcome(issues: &[(String, Issue)]) -> Option<(Value, Vec<&str>)> {
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
