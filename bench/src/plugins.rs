//! Plugin cases: the cost of one `authorize` evaluation in the WebAssembly sandbox (fresh
//! instance per call, as the server does it) next to the same logic as a native Rust
//! function, measured in the same process; and helpers to load plugins into a server.

use std::path::{Path, PathBuf};
use std::time::Instant;

use base64::Engine as _;
use serde::Serialize;
use serde_json::{Value, json};

use hearth_server::plugins::bindings::types::{
    Decision, Interaction, Obligations, Principal, Request, SubjectResource,
};
use hearth_server::plugins::host_data::Fixtures;
use hearth_server::plugins::{HostServices, Manifest, PluginRuntime};

/// Where `bench/run` put the reference plugin components.
pub fn component_path(name: &str) -> PathBuf {
    let dir = std::env::var_os("HEARTH_BENCH_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/plugins/wasm32-wasip2/release"));
    dir.join(format!("hearth_plugin_{name}.wasm"))
}

/// Latency of a call, next to its native baseline.
#[derive(Debug, Clone, Serialize)]
pub struct CallComparison {
    pub case: String,
    pub subject: String,
    pub baseline: String,
    pub subject_p50_us: f64,
    pub subject_p99_us: f64,
    pub baseline_p50_us: f64,
    pub baseline_p99_us: f64,
    /// subject p50 / baseline p50.
    pub p50_ratio: f64,
    pub target: String,
    pub met: Option<bool>,
    pub component_bytes: usize,
    pub compile_ms: f64,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

/// A realistic ~500-byte Patient with one SSN to redact.
pub fn sample_patient() -> String {
    json!({
        "resourceType": "Patient", "id": "bench-1",
        "meta": {"versionId": "3", "lastUpdated": "2026-11-27T10:00:00Z"},
        "identifier": [
            {"system": "urn:oid:1.2.36.146.595.217.0.1", "value": "MRN-000123"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": "999-12-3456"}
        ],
        "name": [{"use": "official", "family": "Lindqvist", "given": ["Astrid", "Maja"]}],
        "telecom": [{"system": "phone", "value": "+1 555 0100", "use": "home"}],
        "gender": "female", "birthDate": "1974-12-25",
        "address": [{"line": ["12 Harbour Road"], "city": "Portland", "state": "ME", "postalCode": "04101"}],
        "note": [{"text": "prefers morning appointments"}]
    })
    .to_string()
}

/// The redact plugin's decision, written natively: the baseline.
pub fn native_redact(json: &str) -> Decision {
    let Ok(body) = serde_json::from_str::<Value>(json) else { return Decision::Allow };
    let mut redact = Vec::new();
    if let Some(identifiers) = body.get("identifier").and_then(Value::as_array) {
        for (i, identifier) in identifiers.iter().enumerate() {
            if identifier.get("system").and_then(Value::as_str) == Some("http://hl7.org/fhir/sid/us-ssn") {
                redact.push(format!("identifier[{i}]"));
            }
        }
    }
    if redact.is_empty() { Decision::Allow } else { Decision::AllowWith(Obligations { redact, labels: Vec::new() }) }
}

/// Times sandboxed `authorize` calls of the redact plugin against the native function, once
/// with instance reuse (the default) and once with a fresh instance per call.
pub fn raw_calls(iterations: usize) -> Result<Vec<CallComparison>, String> {
    let http = reqwest::Client::new();
    let services =
        HostServices { data: std::sync::Arc::new(Fixtures::default()), tokio: tokio::runtime::Handle::current(), http };
    let runtime = PluginRuntime::new(services, None)?;
    Ok(vec![
        raw_call(&runtime, iterations, "", "redact authorize, wasm (reused instance)")?,
        raw_call(&runtime, iterations, "isolation = \"per-call\"\n", "redact authorize, wasm (fresh instance)")?,
    ])
}

/// Times `iterations` calls, interleaved in blocks with the native function so both see the
/// same machine state.
fn raw_call(
    runtime: &PluginRuntime,
    iterations: usize,
    isolation: &str,
    label: &str,
) -> Result<CallComparison, String> {
    let bytes = std::fs::read(component_path("redact")).map_err(|e| format!("redact component: {e}"))?;
    let manifest = Manifest::parse(&format!("name = \"redact\"\nversion = \"1\"\nworld = \"policy\"\n{isolation}"))
        .map_err(|e| e.to_string())?;
    let started = Instant::now();
    let plugin = runtime.load(manifest, &bytes).map_err(|e| e.to_string())?;
    let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
    let json = sample_patient();
    let request = Request {
        principal: Principal {
            subject: "bench".into(),
            scopes: vec!["user/*.rs".into()],
            roles: Vec::new(),
            purpose_of_use: None,
            break_glass_reason: None,
            patient: None,
        },
        interaction: Interaction::Read,
        config: "{}".into(),
    };
    let resources = [SubjectResource {
        resource_type: "Patient".into(),
        id: Some("bench-1".into()),
        compartment: Some("bench-1".into()),
        json: Some(json.clone()),
    }];
    // Same answer both ways, or the comparison means nothing.
    let sandboxed = runtime.authorize(&plugin, &request, &resources).map_err(|e| e.to_string())?;
    match (&sandboxed[0], native_redact(&json)) {
        (Decision::AllowWith(a), Decision::AllowWith(b)) if a.redact == b.redact => {}
        (other, native) => return Err(format!("plugin said {other:?}, native said {native:?}")),
    }
    let (mut wasm, mut native) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    for _ in 0..iterations.div_ceil(100) {
        for _ in 0..100 {
            let t = Instant::now();
            let decisions = runtime.authorize(&plugin, &request, &resources).map_err(|e| e.to_string())?;
            wasm.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(decisions);
        }
        for _ in 0..100 {
            let t = Instant::now();
            let decision = native_redact(std::hint::black_box(&json));
            native.push(t.elapsed().as_secs_f64() * 1e6);
            std::hint::black_box(decision);
        }
    }
    wasm.sort_by(f64::total_cmp);
    native.sort_by(f64::total_cmp);
    let subject_p50 = percentile(&wasm, 0.5);
    let baseline_p50 = percentile(&native, 0.5);
    Ok(CallComparison {
        case: "3 policy plugins".into(),
        subject: label.into(),
        baseline: "same logic, native Rust".into(),
        subject_p50_us: subject_p50,
        subject_p99_us: percentile(&wasm, 0.99),
        baseline_p50_us: baseline_p50,
        baseline_p99_us: percentile(&native, 0.99),
        p50_ratio: subject_p50 / baseline_p50.max(1e-9),
        target: "p50 < 50 us".into(),
        met: Some(subject_p50 < 50.0),
        component_bytes: bytes.len(),
        compile_ms,
    })
}

/// Where `bench/run` put the JavaScript and Python builds of the consent plugin.
fn language_component(lang: &str) -> PathBuf {
    let dir = std::env::var_os("HEARTH_BENCH_LANG_PLUGINS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/plugins/languages"));
    dir.join(format!("consent_{lang}.wasm"))
}

/// The consent plugin in JavaScript and Python against the same plugin in Rust, in one process:
/// component size, compile time, and `authorize` with a reused and with a fresh instance (the
/// fresh one is instantiation plus the call). The request reads a patient's Observation while a
/// denying Consent is on file, so every call does the lookup and returns a denial.
/// Languages whose component is missing are named in the error list, not measured.
pub fn language_calls(iterations: usize) -> (Vec<CallComparison>, Vec<String>) {
    let consent = json!({"resourceType": "Consent", "id": "c1", "status": "active",
        "patient": {"reference": "Patient/p1"}, "provision": {"type": "deny"}});
    let fixtures = Fixtures {
        consents: std::sync::Arc::new(std::sync::Mutex::new(
            [("p1".to_owned(), vec![consent.to_string()])].into_iter().collect(),
        )),
    };
    let services = HostServices {
        data: std::sync::Arc::new(fixtures),
        tokio: tokio::runtime::Handle::current(),
        http: reqwest::Client::new(),
    };
    let mut skipped = Vec::new();
    let runtime = match PluginRuntime::new(services, None) {
        Ok(runtime) => runtime,
        Err(error) => return (Vec::new(), vec![error]),
    };
    let mut found = Vec::new();
    for lang in ["javascript", "python"] {
        let path = language_component(lang);
        let Ok(bytes) = std::fs::read(&path) else {
            skipped.push(format!("{lang} consent plugin not built ({}); bench/run builds it", path.display()));
            continue;
        };
        for (isolation, label, count) in
            [("", "reused instance", iterations), ("isolation = \"per-call\"\n", "fresh instance", iterations / 10)]
        {
            match compare_to_rust(&runtime, lang, &bytes, isolation, label, count.max(20)) {
                Ok(comparison) => found.push(comparison),
                Err(error) => skipped.push(format!("{lang} {label}: {error}")),
            }
        }
    }
    (found, skipped)
}

fn compare_to_rust(
    runtime: &PluginRuntime,
    lang: &str,
    bytes: &[u8],
    isolation: &str,
    label: &str,
    iterations: usize,
) -> Result<CallComparison, String> {
    let manifest = |version: &str| {
        Manifest::parse(&format!(
            "name = \"consent\"\nversion = \"{version}\"\nworld = \"policy\"\n{isolation}\n[limits]\ntimeout_ms = 1000\nmemory_mib = 128\n"
        ))
        .map_err(|e| e.to_string())
    };
    let rust_bytes = std::fs::read(component_path("consent")).map_err(|e| format!("consent component: {e}"))?;
    let rust = runtime.load(manifest("rust")?, &rust_bytes).map_err(|e| e.to_string())?;
    let started = Instant::now();
    let plugin = runtime.load(manifest(lang)?, bytes).map_err(|e| e.to_string())?;
    let compile_ms = started.elapsed().as_secs_f64() * 1000.0;
    let request = Request {
        principal: Principal {
            subject: "dr-a".into(),
            scopes: vec!["user/*.rs".into()],
            roles: Vec::new(),
            purpose_of_use: Some("TREAT".into()),
            break_glass_reason: None,
            patient: None,
        },
        interaction: Interaction::Read,
        config: "{}".into(),
    };
    let resources = [SubjectResource {
        resource_type: "Observation".into(),
        id: Some("o1".into()),
        compartment: Some("p1".into()),
        json: Some(
            r#"{"resourceType":"Observation","id":"o1","status":"final","subject":{"reference":"Patient/p1"}}"#.into(),
        ),
    }];
    // Both must deny, or the comparison means nothing.
    for (name, p) in [("rust", &rust), (lang, &plugin)] {
        match runtime.authorize(p, &request, &resources).map_err(|e| e.to_string())?.first() {
            Some(Decision::Deny(_)) => {}
            other => return Err(format!("the {name} consent plugin answered {other:?}, not a denial")),
        }
    }
    let (mut subject, mut baseline) = (Vec::with_capacity(iterations), Vec::with_capacity(iterations));
    let block = 10;
    for _ in 0..iterations.div_ceil(block) {
        for (p, into) in [(&plugin, &mut subject), (&rust, &mut baseline)] {
            for _ in 0..block {
                let t = Instant::now();
                let decisions = runtime.authorize(p, &request, &resources).map_err(|e| e.to_string())?;
                into.push(t.elapsed().as_secs_f64() * 1e6);
                std::hint::black_box(decisions);
            }
        }
    }
    subject.sort_by(f64::total_cmp);
    baseline.sort_by(f64::total_cmp);
    let (subject_p50, baseline_p50) = (percentile(&subject, 0.5), percentile(&baseline, 0.5));
    Ok(CallComparison {
        case: "3 policy plugins, by language".into(),
        subject: format!("consent authorize, {lang} ({label}, peak memory {} KiB)", plugin.peak_memory() / 1024),
        baseline: format!("the same plugin in Rust ({} KiB)", rust.peak_memory() / 1024),
        subject_p50_us: subject_p50,
        subject_p99_us: percentile(&subject, 0.99),
        baseline_p50_us: baseline_p50,
        baseline_p99_us: percentile(&baseline, 0.99),
        p50_ratio: subject_p50 / baseline_p50.max(1e-9),
        target: format!("report (size {:.0}x Rust's)", bytes.len() as f64 / rust_bytes.len() as f64),
        met: None,
        component_bytes: bytes.len(),
        compile_ms,
    })
}

/// Uploads reference plugin `name` into the dev-mode server whose data directory is `data`.
pub async fn load_into(data: &Path, base_url: &str, name: &str) -> Result<(), String> {
    load_as(data, base_url, name, name, json!({})).await
}

/// Loads reference plugin `crate_name` under `name`, with `extra` manifest fields (limits...).
pub async fn load_as(data: &Path, base_url: &str, name: &str, crate_name: &str, extra: Value) -> Result<(), String> {
    let bytes = std::fs::read(component_path(crate_name)).map_err(|e| format!("{crate_name} component: {e}"))?;
    upload(data, base_url, name, "rust", &bytes, extra).await
}

/// Loads the consent plugin's twin in `lang` (`javascript`, `python`) under `name`; an error
/// names the missing component when its toolchain was not there to build it.
pub async fn load_language_consent(data: &Path, base_url: &str, name: &str, lang: &str) -> Result<(), String> {
    let path = language_component(lang);
    let bytes = std::fs::read(&path)
        .map_err(|e| format!("{lang} consent plugin not built ({}: {e}); bench/run builds it", path.display()))?;
    upload(data, base_url, name, lang, &bytes, json!({})).await
}

async fn upload(data: &Path, base_url: &str, name: &str, lang: &str, bytes: &[u8], extra: Value) -> Result<(), String> {
    let key =
        hearth_server::auth::token::DevSigningKey::load_or_create(&hearth_server::serve::dev_token_key_path(data))
            .map_err(|e| e.to_string())?;
    let token = key.issue("hearth-bench", "admin/plugins", std::time::Duration::from_secs(600), None, &[]);
    let client = crate::load::client(&data.join("tls/ca.pem"), 1, Some(&token));
    let mut manifest = json!({"name": name, "version": "1.0.0", "world": "policy", "language": lang});
    if let (Some(fields), Some(extra)) = (manifest.as_object_mut(), extra.as_object()) {
        fields.extend(extra.clone());
    }
    let body = json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    let response = client
        .put(format!("{base_url}/admin/plugins/{name}"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if response.status().is_success() { Ok(()) } else { Err(format!("loading {name}: HTTP {}", response.status())) }
}
