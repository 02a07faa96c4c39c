//! `hearth plugin test COMPONENT --manifest M --fixtures DIR`: runs a component against recorded
//! cases with the server's runtime and the manifest's limits, without a server or database;
//! prints each decision with its timing and the plugin's peak memory, and fails when a
//! decision differs from what the case expects.
//!
//! A case is one JSON file in DIR (read in name order):
//!
//! ```json
//! {
//!   "name": "a clinician is denied while the patient's Consent says deny",
//!   "call": "authorize",
//!   "interaction": "read",
//!   "principal": {"subject": "dr-a", "scopes": ["user/*.rs"], "purposeOfUse": "TREAT"},
//!   "config": {},
//!   "consents": {"p1": [{"resourceType": "Consent", "status": "active", "...": "..."}]},
//!   "resources": [{"resourceType": "Observation", "id": "o1", "compartment": "p1", "json": {"...": "..."}}],
//!   "expect": [{"decision": "deny", "reason_contains": "consent"}]
//! }
//! ```
//!
//! `call` is `authorize` (expect one of `allow`, `deny`, `allow-with` per resource, optionally
//! with `reason_contains`, `labels` and `redact`), `validate` (expect `{"issues": ["error:required", ...]}`
//! as severity:code pairs), `convert` (`body`, `media_type`; expect `{"resourceTypes": [...]}` or
//! `{"error_contains": "..."}`) or `on-change` (`event`; expect `"ok"` or `{"error_contains": "..."}`).
//! `consents` is what the `lookup` interface answers.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::Deserialize;
use serde_json::{Value, json};

use crate::commands::plugin::PluginCommandError;
use crate::plugins::Manifest;
use crate::plugins::bindings::types::{
    ChangeEvent, ChangeKind, Decision, Interaction, Issue, Principal, Request, Severity, SubjectResource,
};
use crate::plugins::host_data::Fixtures;
use crate::plugins::runtime::{CompiledPlugin, HostServices, PluginRuntime};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    call: String,
    #[serde(default)]
    interaction: Option<String>,
    #[serde(default)]
    principal: CasePrincipal,
    #[serde(default)]
    config: Value,
    #[serde(default)]
    consents: HashMap<String, Vec<Value>>,
    #[serde(default)]
    resources: Vec<CaseResource>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    event: Option<CaseEvent>,
    expect: Value,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CasePrincipal {
    #[serde(default)]
    subject: String,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    roles: Vec<String>,
    #[serde(default)]
    purpose_of_use: Option<String>,
    #[serde(default)]
    break_glass_reason: Option<String>,
    #[serde(default)]
    patient: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseResource {
    resource_type: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    compartment: Option<String>,
    #[serde(default)]
    json: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CaseEvent {
    #[serde(default = "one")]
    event_id: u64,
    kind: String,
    resource_type: String,
    id: String,
    #[serde(default = "one")]
    version_id: u64,
    #[serde(default)]
    last_updated: String,
    #[serde(default)]
    json: Option<Value>,
}

fn one() -> u64 {
    1
}

/// Warm calls timed per case after the first (cold) one.
const WARM_CALLS: usize = 20;

/// What one case did.
struct Outcome {
    answer: Value,
    cold_us: u128,
    warm_p50_us: u128,
    problems: Vec<String>,
}

/// Runs every case in `fixtures`; returns the report, or an error naming the cases that failed.
pub async fn plugin_test(component: &Path, manifest: &Path, fixtures: &Path) -> Result<String, PluginCommandError> {
    let text = std::fs::read_to_string(manifest)
        .map_err(|source| PluginCommandError::Read { path: manifest.to_owned(), source })?;
    let manifest =
        Manifest::parse(&text).map_err(|e| PluginCommandError::Invalid(format!("{}: {e}", manifest.display())))?;
    let bytes =
        std::fs::read(component).map_err(|source| PluginCommandError::Read { path: component.to_owned(), source })?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(fixtures)
        .map_err(|source| PluginCommandError::Read { path: fixtures.to_owned(), source })?
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(PluginCommandError::Invalid(format!(
            "{} holds no *.json cases; see `hearth plugin test --help` for their shape",
            fixtures.display()
        )));
    }
    let mut report = format!(
        "{} {} ({} world, {} bytes), limits: {} ms, {} MiB\n",
        manifest.name,
        manifest.version,
        manifest.world.as_str(),
        bytes.len(),
        manifest.limits().timeout_ms,
        manifest.limits().memory_mib
    );
    let fixtures = Fixtures::default();
    let consents = fixtures.consents.clone();
    let services = HostServices {
        data: std::sync::Arc::new(fixtures),
        tokio: tokio::runtime::Handle::current(),
        http: reqwest::Client::new(),
    };
    let runtime = PluginRuntime::new(services, None).map_err(PluginCommandError::Invalid)?;
    let started = Instant::now();
    let compiled = runtime.load(manifest.clone(), &bytes).map_err(|e| PluginCommandError::Invalid(e.to_string()))?;
    report.push_str(&format!("compiled in {} ms\n", started.elapsed().as_millis()));
    let mut failed = Vec::new();
    for file in &files {
        let case: Case = std::fs::read_to_string(file)
            .map_err(|source| PluginCommandError::Read { path: file.clone(), source })
            .and_then(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| PluginCommandError::Invalid(format!("{}: not a test case: {e}", file.display())))
            })?;
        // The lookup answers this case's consents.
        *consents.lock().unwrap_or_else(|e| e.into_inner()) = case
            .consents
            .iter()
            .map(|(patient, list)| (patient.clone(), list.iter().map(Value::to_string).collect()))
            .collect();
        let outcome = run_case(&runtime, &compiled, &case)
            .map_err(|e| PluginCommandError::Invalid(format!("{}: {e}", file.display())))?;
        let verdict = if outcome.problems.is_empty() { "ok" } else { "FAILED" };
        report.push_str(&format!(
            "{verdict:6} {}: {} (first call {} µs, warm p50 {} µs, peak memory so far {} KiB)\n",
            case.name,
            outcome.answer,
            outcome.cold_us,
            outcome.warm_p50_us,
            compiled.peak_memory() / 1024
        ));
        for problem in &outcome.problems {
            report.push_str(&format!("       {problem}\n"));
        }
        if !outcome.problems.is_empty() {
            failed.push(case.name);
        }
    }
    if failed.is_empty() {
        report.push_str(&format!("{} cases passed\n", files.len()));
        Ok(report)
    } else {
        Err(PluginCommandError::Invalid(format!(
            "{report}{} of {} cases failed: {}",
            failed.len(),
            files.len(),
            failed.join("; ")
        )))
    }
}

fn interaction(name: Option<&str>) -> Result<Interaction, String> {
    Ok(match name.unwrap_or("read") {
        "read" => Interaction::Read,
        "vread" => Interaction::Vread,
        "history" => Interaction::History,
        "search" => Interaction::Search,
        "create" => Interaction::Create,
        "update" => Interaction::Update,
        "delete" => Interaction::Delete,
        other => return Err(format!("unknown interaction '{other}'")),
    })
}

/// Calls the plugin once (cold), then [`WARM_CALLS`] more times, and checks the answer.
fn run_case(runtime: &PluginRuntime, plugin: &CompiledPlugin, case: &Case) -> Result<Outcome, String> {
    let p = &case.principal;
    let request = Request {
        principal: Principal {
            subject: p.subject.clone(),
            scopes: p.scopes.clone(),
            roles: p.roles.clone(),
            purpose_of_use: p.purpose_of_use.clone(),
            break_glass_reason: p.break_glass_reason.clone(),
            patient: p.patient.clone(),
        },
        interaction: interaction(case.interaction.as_deref())?,
        config: if case.config.is_null() { "{}".to_owned() } else { case.config.to_string() },
    };
    let resources: Vec<SubjectResource> = case
        .resources
        .iter()
        .map(|r| SubjectResource {
            resource_type: r.resource_type.clone(),
            id: r.id.clone(),
            compartment: r.compartment.clone(),
            json: r.json.as_ref().map(Value::to_string),
        })
        .collect();
    let config = request.config.clone();
    let call = || -> Result<Value, String> {
        match case.call.as_str() {
            "authorize" => runtime
                .authorize(plugin, &request, &resources)
                .map(|decisions| Value::Array(decisions.iter().map(decision_json).collect()))
                .map_err(|f| format!("the call failed closed: {f}")),
            "validate" => {
                let resource = resources.first().ok_or("a validate case needs one resource")?;
                runtime
                    .validate(plugin, &request, resource)
                    .map(|issues| json!({"issues": issues.iter().map(issue_code).collect::<Vec<_>>()}))
                    .map_err(|f| format!("the call failed closed: {f}"))
            }
            "convert" => {
                let body = case.body.as_deref().ok_or("a convert case needs a body")?;
                let media_type = case.media_type.as_deref().unwrap_or("application/hl7-v2");
                match runtime.convert(plugin, body.as_bytes(), media_type, &config) {
                    Ok(Ok(resources)) => {
                        let types: Vec<Value> = resources
                            .iter()
                            .map(|r| {
                                serde_json::from_str::<Value>(r)
                                    .map(|v| v["resourceType"].clone())
                                    .unwrap_or(Value::Null)
                            })
                            .collect();
                        Ok(json!({"resourceTypes": types}))
                    }
                    Ok(Err(reason)) => Ok(json!({"error": reason})),
                    Err(f) => Err(format!("the call failed: {f}")),
                }
            }
            "on-change" => {
                let e = case.event.as_ref().ok_or("an on-change case needs an event")?;
                let event = ChangeEvent {
                    event_id: e.event_id,
                    kind: match e.kind.as_str() {
                        "created" => ChangeKind::Created,
                        "updated" => ChangeKind::Updated,
                        "deleted" => ChangeKind::Deleted,
                        other => return Err(format!("unknown change kind '{other}'")),
                    },
                    resource_type: e.resource_type.clone(),
                    id: e.id.clone(),
                    version_id: e.version_id,
                    last_updated: e.last_updated.clone(),
                    json: e.json.as_ref().map(Value::to_string),
                };
                match runtime.on_change(plugin, &event, &config) {
                    Ok(Ok(())) => Ok(json!("ok")),
                    Ok(Err(reason)) => Ok(json!({"error": reason})),
                    Err(f) => Err(format!("the call failed: {f}")),
                }
            }
            other => Err(format!("unknown call '{other}' (authorize, validate, convert, on-change)")),
        }
    };
    let started = Instant::now();
    let first = call();
    let cold_us = started.elapsed().as_micros();
    let mut warm = Vec::with_capacity(WARM_CALLS);
    // Integrations' calls have effects (HTTP): time only the policies' calls again.
    if first.is_ok() && matches!(case.call.as_str(), "authorize" | "validate") {
        for _ in 0..WARM_CALLS {
            let started = Instant::now();
            let _ = call();
            warm.push(started.elapsed().as_micros());
        }
    }
    warm.sort_unstable();
    let warm_p50_us = warm.get(warm.len() / 2).copied().unwrap_or(cold_us);
    let (answer, problems) = match first {
        Ok(answer) => {
            let problems = compare(&case.call, &answer, &case.expect);
            (answer, problems)
        }
        Err(failure) => {
            let expected = case.expect.get("failure").is_some() || case.expect == json!("failure");
            let problems = if expected { Vec::new() } else { vec![failure.clone()] };
            (json!({"failure": failure}), problems)
        }
    };
    Ok(Outcome { answer, cold_us, warm_p50_us, problems })
}

fn decision_json(decision: &Decision) -> Value {
    match decision {
        Decision::Allow => json!({"decision": "allow"}),
        Decision::Deny(reason) => json!({"decision": "deny", "reason": reason}),
        Decision::AllowWith(o) => json!({
            "decision": "allow-with",
            "redact": o.redact,
            "labels": o.labels.iter().map(|l| l.code.clone()).collect::<Vec<_>>(),
        }),
    }
}

fn issue_code(issue: &Issue) -> String {
    let severity = match issue.severity {
        Severity::Fatal => "fatal",
        Severity::Error => "error",
        Severity::Warning => "warning",
        Severity::Information => "information",
    };
    format!("{severity}:{}", issue.code)
}

/// The differences between what the plugin answered and what the case expects.
fn compare(call: &str, answer: &Value, expect: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    match call {
        "authorize" => {
            let (Some(got), Some(want)) = (answer.as_array(), expect.as_array()) else {
                return vec!["expect must list one decision per resource".to_owned()];
            };
            if got.len() != want.len() {
                problems.push(format!("{} decisions, expected {}", got.len(), want.len()));
            }
            for (i, (got, want)) in got.iter().zip(want).enumerate() {
                let want = if want.is_string() { json!({"decision": want}) } else { want.clone() };
                if got["decision"] != want["decision"] {
                    problems.push(format!("resource {i}: {}, expected {}", got["decision"], want["decision"]));
                }
                if let Some(part) = want["reason_contains"].as_str()
                    && !got["reason"].as_str().is_some_and(|r| r.contains(part))
                {
                    problems.push(format!("resource {i}: reason {} does not contain '{part}'", got["reason"]));
                }
                for key in ["labels", "redact"] {
                    if !want[key].is_null() && got[key] != want[key] {
                        problems.push(format!("resource {i}: {key} {}, expected {}", got[key], want[key]));
                    }
                }
            }
        }
        _ => {
            if let Some(part) = expect["error_contains"].as_str() {
                if !answer["error"].as_str().is_some_and(|e| e.contains(part)) {
                    problems.push(format!("expected an error containing '{part}', got {answer}"));
                }
            } else if answer != expect {
                problems.push(format!("got {answer}, expected {expect}"));
            }
        }
    }
    problems
}
