//! WebAssembly plugins end to end: the reference plugins in `plugins/` are built from source
//! (once per test run), uploaded through the admin API into a running server, bound with a
//! `policies/*.toml` folder, and shown changing real responses; misbehaving plugins are
//! contained; a plugin is swapped under load without a failed request; integration events
//! reach a real HTTP receiver through the outbox.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::{Db, Launch, Reply, Server, dev_token_with_roles, hearth_command};
use crate::on_both_databases;

/// Builds the reference plugins (release, wasm32-wasip2) once per test process and returns
/// the folder holding the `.wasm` components.
pub fn plugin_dir() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_owned();
        let target = root.join("target").join("plugins");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let output = Command::new(cargo)
            .args(["build", "--release", "--target", "wasm32-wasip2", "--manifest-path"])
            .arg(root.join("plugins").join("Cargo.toml"))
            .env("CARGO_TARGET_DIR", &target)
            .output()
            .expect("run cargo to build the plugins");
        assert!(
            output.status.success(),
            "building plugins/ failed (is the wasm32-wasip2 target installed? `rustup target add wasm32-wasip2`):\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        target.join("wasm32-wasip2").join("release")
    })
}

/// The bytes of reference plugin `crate_name` (e.g. `consent`).
pub fn component(crate_name: &str) -> Vec<u8> {
    std::fs::read(plugin_dir().join(format!("hearth_plugin_{crate_name}.wasm"))).expect("plugin component")
}

pub fn admin(server: &Server) -> reqwest::Client {
    server.client_with(Some(&server.token("admin/plugins", None)))
}

/// `PUT /admin/plugins/{name}` with a component and manifest.
pub async fn upload(server: &Server, name: &str, bytes: &[u8], manifest: Value) -> Reply {
    let body = json!({
        "manifest": manifest,
        "component": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    server.send(admin(server).put(server.url(&format!("admin/plugins/{name}"))).json(&body)).await
}

/// Uploads reference plugin `crate_name` as `name` and expects it to load.
pub async fn load(server: &Server, name: &str, crate_name: &str, world: &str, extra: Value) -> Value {
    let mut manifest = json!({"name": name, "version": "1.0.0", "world": world, "language": "rust"});
    if let (Some(manifest), Some(extra)) = (manifest.as_object_mut(), extra.as_object()) {
        manifest.extend(extra.clone());
    }
    let reply = upload(server, name, &component(crate_name), manifest).await;
    assert!(
        matches!(reply.status, 200 | 201),
        "loading {name}: {} {}",
        reply.status,
        String::from_utf8_lossy(&reply.bytes)
    );
    reply.json()
}

/// Creates `patient`, a Consent by which they refuse sharing, and an Observation about them;
/// returns the patient's and the observation's ids.
pub async fn observation_behind_refused_consent(server: &Server, patient: Value) -> (String, String) {
    let patient_id = id_from_location(&server.post("Patient", &patient).await);
    let consent = json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"code": "patient-privacy"}]}, "category": [{"coding": [{"code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient_id}")}, "provision": {"type": "deny"},
    });
    server.post("Consent", &consent).await.expect(201);
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "heart rate"},
        "subject": {"reference": format!("Patient/{patient_id}")}});
    let observation_id = id_from_location(&server.post("Observation", &observation).await);
    (patient_id, observation_id)
}

/// A policies folder holding `text` as its one bindings file.
pub fn policies(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("policies dir");
    std::fs::write(dir.path().join("bindings.toml"), text).expect("write bindings");
    dir
}

pub fn with_policies(dir: &Path) -> Launch {
    Launch { extra_args: vec!["--policies".into(), dir.to_str().unwrap().into()], ..Launch::default() }
}

/// Starts a second host on `first`'s PostgreSQL database and data directory (same keys, TLS
/// and token issuer), with the policies in `folder` and any `extra` arguments.
pub async fn second_host(first: &Server, folder: &Path, extra: &[&str]) -> Server {
    let mut launch = with_policies(folder);
    launch.data_dir = Some(first.data_dir.clone());
    launch.no_database_flag = true;
    launch.extra_args.extend(["--database-url".to_owned(), first.database_url()]);
    launch.extra_args.extend(extra.iter().map(|a| (*a).to_owned()));
    Server::launch(Db::Postgres, launch).await
}

async fn reload(server: &Server) -> Reply {
    server.send(admin(server).post(server.url("admin/policies/reload"))).await
}

pub fn id_from_location(reply: &Reply) -> String {
    let location = reply.header("location").expect("Location header");
    location.split('/').rev().nth(2).expect("id in Location").to_owned()
}

const MRN: &str = "urn:oid:1.2.36.146.595.217.0.1";
pub const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";

const CLINICAL_BINDINGS: &str = r#"
[[binding]]
plugin = "consent"
interactions = ["read", "vread", "history", "search"]
order = 10

[[binding]]
plugin = "redact"
interactions = ["read", "vread", "history", "search"]
order = 20

[[binding]]
plugin = "validate"
resource_types = ["Patient", "Observation"]
interactions = ["create", "update"]
order = 30
config = { patient_identifier_system = "urn:oid:1.2.36.146.595.217.0.1" }
"#;

on_both_databases!(
    policy_plugins_change_real_responses,
    policy_judged_searches_page_only_over_what_they_allow,
    integration_events_reach_a_real_receiver,
    hl7_messages_become_stored_resources
);

/// A search policy judges matches before a page is cut (issue 22): with most records closed
/// by consent, every page is full, links and cursors come only from allowed records, paging
/// ends where the allowed ones end, and no count is given.
async fn policy_judged_searches_page_only_over_what_they_allow(db: Db) {
    let folder = policies("[[binding]]\nplugin = \"consent\"\ninteractions = [\"read\", \"search\"]\n");
    let server = Server::launch(db, with_policies(folder.path())).await;
    load(&server, "consent", "consent", "policy", json!({})).await;
    let mut allowed = Vec::new();
    for n in 0..8 {
        let id = format!("cp{n}");
        server.put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id})).await.expect(201);
        for k in 0..2 {
            let observation = json!({"resourceType": "Observation", "id": format!("{id}-{k}"), "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
                "subject": {"reference": format!("Patient/{id}")}, "effectiveDateTime": "2026-11-01"});
            server.put(&format!("Observation/{id}-{k}"), &observation).await.expect(201);
            if n % 4 == 1 {
                allowed.push(format!("{id}-{k}"));
            }
        }
        if n % 4 != 1 {
            let consent = json!({
                "resourceType": "Consent", "status": "active",
                "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
                "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
                "patient": {"reference": format!("Patient/{id}")},
                "provision": {"type": "deny"},
            });
            server.post("Consent", &consent).await.expect(201);
        }
    }
    let mut seen = Vec::new();
    let mut page = server.get("Observation?code=29463-7&_count=1&_total=accurate").await.expect(200);
    assert!(page.get("total").is_none(), "no count under a search policy: {page}");
    loop {
        let matches: Vec<String> = page["entry"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["search"]["mode"] == "match")
            .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(matches.len(), 1, "every page is full: {page}");
        seen.extend(matches);
        let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next");
        let Some(next) = next.and_then(|l| l["url"].as_str()) else { break };
        page = server.send(server.client.get(next)).await.expect(200);
    }
    assert_eq!(seen, allowed, "exactly the allowed records, in order, each once");
    let count = server.get("Observation?code=29463-7&_summary=count").await.expect(200);
    assert!(count.get("total").is_none(), "{count}");
}

async fn policy_plugins_change_real_responses(db: Db) {
    let folder = policies(CLINICAL_BINDINGS);
    let server = Server::launch(db, with_policies(folder.path())).await;
    let patient = json!({
        "resourceType": "Patient",
        "identifier": [{"system": MRN, "value": "MRN-77"}, {"system": SSN, "value": "999-12-3456"}],
        "name": [{"family": "Quokka", "given": ["Wilhelmina"]}],
    });

    // Bound but not loaded: fail closed.
    let refused = server.post("Patient", &patient).await;
    let message = refused.expect_outcome(403, "forbidden");
    assert!(message.contains("policy 'validate' could not reach a decision"), "{message}");

    load(&server, "consent", "consent", "policy", json!({})).await;
    load(&server, "redact", "redact", "policy", json!({})).await;
    load(&server, "validate", "validate", "policy", json!({})).await;

    // validate: a Patient without an identifier of the configured system is refused.
    let no_mrn = json!({"resourceType": "Patient", "identifier": [{"system": "urn:x", "value": "1"}]});
    let outcome = server.post("Patient", &no_mrn).await.expect(422);
    assert_eq!(outcome["issue"][0]["expression"][0], "Patient.identifier", "{outcome}");
    let created = server.post("Patient", &patient).await;
    created.expect(201);
    let patient_id = id_from_location(&created);

    // redact: the SSN is gone and the record is labelled, for an ordinary clinician.
    let read = server.get(&format!("Patient/{patient_id}")).await.expect(200);
    assert_eq!(read["identifier"], json!([{"system": MRN, "value": "MRN-77"}]), "{read}");
    assert!(read["meta"]["security"].as_array().unwrap().iter().any(|c| c["code"] == "REDACTED"), "{read}");
    assert!(!read.to_string().contains("999-12-3456"));
    // ... but not for a privacy officer.
    let officer =
        server.client_with(Some(&dev_token_with_roles(&server.data_dir, "user/*.rs", None, &["privacy-officer"])));
    let full = server.send(officer.get(server.url(&format!("Patient/{patient_id}")))).await.expect(200);
    assert!(full.to_string().contains("999-12-3456"), "{full}");
    // Search results pass the same policies: redacted, and no count that could reveal more.
    let found = server.get("Patient?identifier=MRN-77&_total=accurate").await.expect(200);
    assert_eq!(found["entry"][0]["resource"]["id"], patient_id.as_str(), "{found}");
    assert!(!found.to_string().contains("999-12-3456"), "{found}");
    assert!(found.get("total").is_none(), "{found}");

    // validate: an Observation without an effective time is refused, with the rule named.
    let mut observation = json!({
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
    });
    let outcome = server.post("Observation", &observation).await.expect(422);
    assert!(outcome.to_string().contains("effective[x]"), "{outcome}");
    observation["effectiveDateTime"] = json!("2026-11-01T09:30:00Z");
    let created = server.post("Observation", &observation).await;
    created.expect(201);
    let observation_id = id_from_location(&created);
    server.get(&format!("Observation/{observation_id}")).await.expect(200);

    // consent: an active Consent denying access closes the patient's records ...
    let consent = json!({
        "resourceType": "Consent", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient_id}")},
        "provision": {"type": "deny", "provision": [{"type": "permit", "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "PUBHLTH"}]}]},
    });
    server.post("Consent", &consent).await.expect(201);
    let denied = server.get(&format!("Observation/{observation_id}")).await;
    let message = denied.expect_outcome(403, "forbidden");
    assert!(message.contains("denied by policy 'consent'"), "{message}");
    server.get(&format!("Observation/{observation_id}/_history")).await.expect_outcome(403, "forbidden");
    server.get(&format!("Observation/{observation_id}/_history/1")).await.expect_outcome(403, "forbidden");
    // Searches leave the denied records out (the search itself succeeds).
    let found = server.get("Observation?code=8867-4").await.expect(200);
    let matches = found["entry"].as_array().map_or(0, |e| e.iter().filter(|e| e["search"]["mode"] == "match").count());
    assert_eq!(matches, 0, "{found}");
    let request = server.client.get(server.url("Observation?code=8867-4")).header("x-purpose-of-use", "PUBHLTH");
    let found = server.send(request).await.expect(200);
    assert_eq!(found["entry"][0]["resource"]["id"], observation_id.as_str(), "{found}");
    // ... except for the purpose of use it permits ...
    let public_health = server.client.get(server.url(&format!("Observation/{observation_id}")));
    server.send(public_health.header("x-purpose-of-use", "PUBHLTH")).await.expect(200);
    // ... and for a break-glass access with a stated reason, which is labelled and audited.
    let emergency =
        server.client_with(Some(&dev_token_with_roles(&server.data_dir, "user/*.rs", None, &["break-glass"])));
    let request = emergency
        .get(server.url(&format!("Observation/{observation_id}")))
        .header("x-break-glass-reason", "unconscious patient in the emergency department");
    let body = server.send(request).await.expect(200);
    assert!(body["meta"]["security"].as_array().unwrap().iter().any(|c| c["code"] == "ETREAT"), "{body}");
    // Without the role, stating a reason is refused.
    let request =
        server.client.get(server.url(&format!("Observation/{observation_id}"))).header("x-break-glass-reason", "x");
    let message = server.send(request).await.expect_outcome(403, "forbidden");
    assert!(message.contains("break-glass role"), "{message}");

    let export = server.hearth(&["audit", "export"]);
    assert!(export.status.success(), "{}", String::from_utf8_lossy(&export.stderr));
    let entries: Vec<Value> =
        String::from_utf8_lossy(&export.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        entries.iter().any(|e| e["decided_by"] == "policy:consent" && e["status"] == 403),
        "a consent denial is audited with the policy that decided it"
    );
    assert!(
        entries
            .iter()
            .any(|e| e["break_glass"] == "unconscious patient in the emergency department" && e["status"] == 200),
        "the emergency access is audited with its reason"
    );
    assert!(entries.iter().any(|e| e["decided_by"] == "validation:validate" && e["status"] == 422));
    // The emergency access is reported for review (and only to an auditor).
    server.get("admin/break-glass").await.expect_outcome(403, "forbidden");
    let auditor = server.client_with(Some(&server.token("admin/audit", None)));
    let report = server.send(auditor.get(server.url("admin/break-glass"))).await.expect(200);
    let reported = report["entries"].as_array().unwrap();
    assert_eq!(reported.len(), 2, "the access, and the refused attempt without the role: {report}");
    assert_eq!(reported[0]["reason"], "unconscious patient in the emergency department");
    assert_eq!(reported[0]["resourceType"], "Observation");
    assert_eq!(reported[0]["resourceId"], observation_id.as_str());
    assert_eq!(reported[0]["status"], 200);
    assert_eq!((reported[1]["status"].as_u64(), reported[1]["reason"].as_str()), (Some(403), Some("x")));
    let after = reported[1]["seq"].as_i64().unwrap();
    let later = server.send(auditor.get(server.url(&format!("admin/break-glass?after={after}")))).await.expect(200);
    assert_eq!(later["entries"], json!([]));
    // A second person reviews the access; the verdict goes into the chain.
    let access = reported[0]["seq"].as_i64().unwrap();
    let review = |client: &reqwest::Client, seq: i64, body: Value| {
        client
            .post(server.url(&format!("admin/break-glass/{seq}/review")))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let verdict = json!({"decision": "acknowledged", "comment": "ED admission confirmed with the attending"});
    let own = review(&auditor, access, verdict.clone());
    let message = server.send(own).await.expect_outcome(409, "conflict");
    assert!(message.contains("someone other"), "{message}");
    let officer = server.client_as("privacy-officer", "admin/audit");
    let bad = review(&officer, access, json!({"decision": "fine", "comment": "x"}));
    server.send(bad).await.expect_outcome(400, "value");
    server.send(review(&officer, 1, verdict.clone())).await.expect_outcome(404, "not-found");
    server.send(review(&officer, access, verdict)).await.expect(200);
    let report = server.send(auditor.get(server.url("admin/break-glass"))).await.expect(200);
    let reviews = &report["entries"][0]["reviews"];
    assert_eq!(
        (reviews[0]["reviewer"].as_str(), reviews[0]["decision"].as_str()),
        (Some("privacy-officer"), Some("acknowledged"))
    );
    let pending = server.send(auditor.get(server.url("admin/break-glass?pending=true"))).await.expect(200);
    let pending: Vec<i64> = pending["entries"].as_array().unwrap().iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(pending, [after], "only the refused attempt awaits review");
    // The same accesses as FHIR AuditEvents.
    let btg = server.send(auditor.get(server.url("AuditEvent?purpose=BTG&_sort=date"))).await.expect(200);
    let btg: Vec<&Value> = btg["entry"].as_array().unwrap().iter().filter(|e| e["search"]["mode"] == "match").collect();
    assert_eq!(btg.len(), 2);
    assert_eq!(btg[0]["resource"]["purposeOfEvent"][0]["text"], "unconscious patient in the emergency department");
    assert!(entries.iter().any(|e| e["action"] == "admin-plugin-load" && e["resource_id"] == "consent"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn misbehaving_plugins_are_contained() {
    let folder = policies("");
    let server = Server::launch(Db::Sqlite, with_policies(folder.path())).await;
    let patient = server.post("Patient", &json!({"resourceType": "Patient"})).await;
    patient.expect(201);
    let id = id_from_location(&patient);
    load(&server, "hostile", "hostile", "policy", json!({"limits": {"timeout_ms": 100, "memory_mib": 16}})).await;

    let cases = [
        ("loop", "could not reach a decision"),
        ("memory", "could not reach a decision"),
        ("recursion", "could not reach a decision"),
        ("trap", "could not reach a decision"),
        ("huge-output", "could not reach a decision"),
        ("wrong-count", "could not reach a decision"),
        // Sleeps 600 s in a WASI timer (a host call, out of the epoch deadline's reach): a
        // timer beyond the deadline ends the call as a timeout at once.
        ("sleep", "could not reach a decision"),
        ("clock", "sandbox held"),
        ("file", "sandbox held"),
        ("socket", "sandbox held"),
        ("environment", "sandbox held"),
    ];
    for (mode, expected) in cases {
        let bindings = format!(
            "[[binding]]\nplugin = \"hostile\"\nresource_types = [\"Patient\"]\ninteractions = [\"read\"]\nconfig = {{ mode = \"{mode}\" }}\n"
        );
        std::fs::write(folder.path().join("bindings.toml"), bindings).unwrap();
        reload(&server).await.expect(200);
        let message = server.get(&format!("Patient/{id}")).await.expect_outcome(403, "forbidden");
        assert!(message.contains(expected), "{mode}: {message}");
        assert!(!message.contains("wasm") && !message.contains("trap"), "{mode}: internals leak: {message}");
        // The server keeps serving: health, and an ungated type.
        server.get("Observation/none").await.expect(404);
        let health = server.send(server.client.get(server.url("healthz"))).await;
        assert_eq!(health.status, 200, "{mode}");
    }
    let log = server.log();
    assert!(log.contains("kind=\"timeout\"") || log.contains("\"kind\":\"timeout\""), "a timeout is logged");
    assert!(log.contains("could not run inline"), "WASI I/O moved the plugin off the worker thread");
    let listed = server.send(admin(&server).get(server.url("admin/plugins/hostile"))).await.expect(200);
    assert!(listed["stats"]["failures"].as_u64().unwrap() >= 6, "{listed}");
    assert!(listed["stats"]["timeouts"].as_u64().unwrap() >= 1, "{listed}");

    // A harmless mode afterwards works: nothing was left broken.
    std::fs::write(
        folder.path().join("bindings.toml"),
        "[[binding]]\nplugin = \"hostile\"\ninteractions = [\"read\"]\nconfig = { mode = \"none\" }\n",
    )
    .unwrap();
    reload(&server).await.expect(200);
    server.get(&format!("Patient/{id}")).await.expect(200);
}

/// By default a clean instance serves later calls (its globals persist); `per-call` isolation
/// gives every call a fresh one; an instance that failed is never reused.
/// A flood of requests into a plugin that spins until its deadline runs at most the plugin's
/// execution slots at once (half the cores): the rest wait at most the deadline for a slot and
/// are denied, and requests that need no plugin are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooded_plugin_runs_within_its_slots() {
    let folder = policies(
        "[[binding]]\nplugin = \"hostile\"\nresource_types = [\"Patient\"]\ninteractions = [\"read\"]\nconfig = { mode = \"loop\" }\n",
    );
    let server = Arc::new(Server::launch(Db::Sqlite, with_policies(folder.path())).await);
    let patient = server.post("Patient", &json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{}", id_from_location(&patient));
    let observation = server
        .post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}))
        .await;
    let ungated = format!("Observation/{}", id_from_location(&observation));
    load(&server, "hostile", "hostile", "policy", json!({"limits": {"timeout_ms": 100, "memory_mib": 16}})).await;

    const FLOOD: u64 = 40;
    let flood: Vec<_> = (0..FLOOD)
        .map(|_| {
            let (server, path) = (server.clone(), path.clone());
            tokio::spawn(async move { server.get(&path).await.status })
        })
        .collect();
    // Served while the flood is on.
    server.get(&ungated).await.expect(200);
    for request in flood {
        assert_eq!(request.await.unwrap(), 403, "every flooded request is denied");
    }
    let stats = server.send(admin(&server).get(server.url("admin/plugins/hostile"))).await.expect(200)["stats"].clone();
    let (calls, failures, timeouts) =
        (stats["calls"].as_u64().unwrap(), stats["failures"].as_u64().unwrap(), stats["timeouts"].as_u64().unwrap());
    // Each request either ran (and hit its deadline) or found no slot within it.
    assert_eq!(calls, timeouts, "{stats}");
    assert_eq!(failures, FLOOD, "{stats}");
    assert!(failures > timeouts, "some requests found every slot busy and were denied without running: {stats}");
    let log = server.log();
    assert!(log.contains("had no free slot within its deadline"), "busy denials are logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_reuse_follows_the_manifest() {
    let folder =
        policies("[[binding]]\nplugin = \"hostile\"\ninteractions = [\"read\"]\nconfig = { mode = \"counter\" }\n");
    let server = Server::launch(Db::Sqlite, with_policies(folder.path())).await;
    let created = server.post("Patient", &json!({"resourceType": "Patient"})).await;
    let path = format!("Patient/{}", id_from_location(&created));
    load(&server, "hostile", "hostile", "policy", json!({})).await;
    assert_eq!(counted_calls(&server, &path).await, [1, 2, 3], "one instance served the three reads in turn");
    load(&server, "hostile", "hostile", "policy", json!({"version": "2", "isolation": "per-call"})).await;
    assert_eq!(counted_calls(&server, &path).await, [1, 1, 1], "a fresh instance for each read");
}

/// Three reads through the `counter` plugin: the call number each instance reported.
async fn counted_calls(server: &Server, path: &str) -> Vec<u64> {
    let mut seen = Vec::new();
    for _ in 0..3 {
        let message = server.get(path).await.expect_outcome(403, "forbidden");
        seen.push(message.rsplit(' ').next().unwrap().parse::<u64>().unwrap());
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_is_replaced_under_load_without_failed_requests() {
    let folder = policies("[[binding]]\nplugin = \"redact\"\ninteractions = [\"read\"]\n");
    let server = Arc::new(Server::launch(Db::Sqlite, with_policies(folder.path())).await);
    load(&server, "redact", "redact", "policy", json!({})).await;
    let patient = json!({"resourceType": "Patient", "identifier": [{"system": SSN, "value": "123-45-6789"}]});
    let created = server.post("Patient", &patient).await;
    created.expect(201);
    let id = id_from_location(&created);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut readers = Vec::new();
    for _ in 0..4 {
        let (server, stop, ok, failed, id) = (server.clone(), stop.clone(), ok.clone(), failed.clone(), id.clone());
        readers.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let reply = server.get(&format!("Patient/{id}")).await;
                let redacted = reply.status == 200 && !String::from_utf8_lossy(&reply.bytes).contains("123-45-6789");
                if redacted {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    failed.fetch_add(1, Ordering::Relaxed)
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for version in ["2.0.0", "3.0.0"] {
        let manifest = json!({"name": "redact", "version": version, "world": "policy"});
        upload(&server, "redact", &component("redact"), manifest).await.expect(200);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    server.send(admin(&server).post(server.url("admin/plugins/redact/rollback"))).await.expect(200);
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop.store(true, Ordering::Relaxed);
    for reader in readers {
        reader.await.unwrap();
    }
    assert_eq!(failed.load(Ordering::Relaxed), 0, "no request failed or escaped redaction during the swaps");
    assert!(ok.load(Ordering::Relaxed) > 20, "the load generator ran ({} requests)", ok.load(Ordering::Relaxed));
    let inspected = server.send(admin(&server).get(server.url("admin/plugins/redact"))).await.expect(200);
    assert_eq!(inspected["seq"], 2, "rolled back from 3 to 2: {inspected}");
    assert_eq!(inspected["versions"].as_array().unwrap().len(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_administration_is_validated_audited_and_survives_restarts() {
    let folder = policies("[[binding]]\nplugin = \"redact\"\ninteractions = [\"read\"]\n");
    let server = Server::launch(Db::Sqlite, with_policies(folder.path())).await;
    // Clinical tokens never reach the admin API.
    server.get("admin/plugins").await.expect_outcome(403, "forbidden");
    let manifest = json!({"name": "redact", "version": "1", "world": "policy"});
    // Not a component; the wrong world; a name that does not match; capabilities a policy cannot have.
    upload(&server, "redact", b"\0asm\x01\0\0\0garbage", manifest.clone()).await.expect_outcome(422, "invalid");
    let wrong_world = json!({"name": "redact", "version": "1", "world": "integration"});
    let message = upload(&server, "redact", &component("redact"), wrong_world).await.expect_outcome(422, "invalid");
    assert!(message.contains("integration world"), "{message}");
    upload(&server, "other", &component("redact"), manifest.clone()).await.expect_outcome(400, "value");
    let greedy = json!({"name": "redact", "version": "1", "world": "policy", "allowed_hosts": ["example.org:443"]});
    upload(&server, "redact", &component("redact"), greedy).await.expect_outcome(400, "value");

    upload(&server, "redact", &component("redact"), manifest).await.expect(201);
    let created = server
        .post("Patient", &json!({"resourceType": "Patient", "identifier": [{"system": SSN, "value": "111-22-3333"}]}))
        .await;
    let id = id_from_location(&created);
    let read = server.get(&format!("Patient/{id}")).await.expect(200);
    assert!(read.get("identifier").is_none(), "{read}");

    // Disabled: what it gates is denied (fail closed); enabled again: back.
    server.send(admin(&server).post(server.url("admin/plugins/redact/disable"))).await.expect(200);
    server.get(&format!("Patient/{id}")).await.expect_outcome(403, "forbidden");
    server.send(admin(&server).post(server.url("admin/plugins/redact/enable"))).await.expect(200);
    server.get(&format!("Patient/{id}")).await.expect(200);

    // Compiled once, kept on disk for restarts.
    let cached: Vec<_> = std::fs::read_dir(server.data_dir.join("plugin-cache")).unwrap().flatten().collect();
    assert!(cached.iter().any(|e| e.file_name().to_string_lossy().ends_with(".cwasm")), "{cached:?}");
    // Stored in the database: a restart loads it before serving the first request.
    let server = server.restart(with_policies(folder.path())).await;
    let read = server.get(&format!("Patient/{id}")).await.expect(200);
    assert!(read.get("identifier").is_none(), "still redacted after a restart: {read}");
    let listed = server.send(admin(&server).get(server.url("admin/plugins"))).await.expect(200);
    assert_eq!(listed["plugins"][0]["name"], "redact");
    assert_eq!(listed["plugins"][0]["world"], "policy");

    // Removed while still bound: denied until the binding goes too.
    server.send(admin(&server).delete(server.url("admin/plugins/redact"))).await.expect(200);
    server.get(&format!("Patient/{id}")).await.expect_outcome(403, "forbidden");
    std::fs::write(folder.path().join("bindings.toml"), "").unwrap();
    let reloaded = reload(&server).await.expect(200);
    assert_eq!(reloaded["bindings"], json!([]));
    server.get(&format!("Patient/{id}")).await.expect(200);
    // A broken bindings file is refused and the bindings in force stay.
    std::fs::write(folder.path().join("bindings.toml"), "[[binding]]\nplugin = \"x\"\ninteractions = [\"peek\"]\n")
        .unwrap();
    reload(&server).await.expect_outcome(400, "invalid");

    let export = server.hearth(&["audit", "export"]);
    let text = String::from_utf8_lossy(&export.stdout);
    for action in [
        "admin-plugin-load",
        "admin-plugin-disable",
        "admin-plugin-enable",
        "admin-plugin-remove",
        "admin-policies-reload",
    ] {
        assert!(text.contains(&format!("\"action\":\"{action}\"")), "{action} is audited");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_signed_plugins_load_when_trust_keys_are_configured() {
    let keys = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(keys.path().join("release.pem"), pair.serialize_pem()).unwrap();
    std::fs::write(keys.path().join("release.pub"), pair.public_key_pem()).unwrap();
    let launch = Launch {
        extra_args: vec!["--plugin-trust-key".into(), keys.path().join("release.pub").to_str().unwrap().into()],
        ..Launch::default()
    };
    let server = Server::launch(Db::Sqlite, launch).await;
    let bytes = component("validate");
    let manifest_json = json!({"name": "validate", "version": "1", "world": "policy"});
    let message = upload(&server, "validate", &bytes, manifest_json.clone()).await.expect_outcome(403, "security");
    assert!(message.contains("signed"), "{message}");

    // `hearth plugin sign` signs the component with the manifest it will be loaded under.
    let manifest_file = keys.path().join("validate.toml");
    std::fs::write(&manifest_file, "name = \"validate\"\nversion = \"1\"\nworld = \"policy\"\n").unwrap();
    let component_file = plugin_dir().join("hearth_plugin_validate.wasm");
    let key = keys.path().join("release.pem");
    let signed = hearth_command(&[
        "plugin",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--manifest",
        manifest_file.to_str().unwrap(),
        component_file.to_str().unwrap(),
    ]);
    assert!(signed.status.success(), "{}", String::from_utf8_lossy(&signed.stderr));
    let signature = String::from_utf8(signed.stdout).unwrap().trim().to_owned();

    // The signature covers the manifest: a changed limit does not verify.
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let tampered = json!({"name": "validate", "version": "1", "world": "policy",
        "limits": {"timeout_ms": 1000, "memory_mib": 256}});
    let body = json!({"manifest": tampered, "component": b64(&bytes), "signature": signature});
    let reply = server.send(admin(&server).put(server.url("admin/plugins/validate")).json(&body)).await;
    reply.expect_outcome(403, "security");

    // `hearth plugin load` uploads it with the signature.
    let signature_file = keys.path().join("validate.sig");
    std::fs::write(&signature_file, &signature).unwrap();
    let token = server.token("admin/plugins", None);
    let cli_load = |signature: Option<&Path>| {
        let mut args = vec![
            "plugin",
            "load",
            "--server",
            &server.base,
            "--token",
            &token,
            "--cacert",
            server.ca.to_str().unwrap(),
            "--manifest",
            manifest_file.to_str().unwrap(),
        ];
        if let Some(signature) = signature {
            args.extend(["--signature", signature.to_str().unwrap()]);
        }
        args.push(component_file.to_str().unwrap());
        hearth_command(&args)
    };
    let loaded = cli_load(Some(&signature_file));
    assert!(loaded.status.success(), "{}", String::from_utf8_lossy(&loaded.stderr));
    let loaded: Value = serde_json::from_slice(&loaded.stdout).unwrap();
    assert_eq!(loaded["signedBy"], "release");
    assert_eq!(loaded["seq"], 1);
    // Without the signature, the CLI reports the server's reason.
    let unsigned = cli_load(None);
    assert!(!unsigned.status.success());
    assert!(String::from_utf8_lossy(&unsigned.stderr).contains("only loads signed plugins"));

    // `hearth plugin verify` checks a signature offline, against the trusted public keys.
    let verify = |manifest: &Path| {
        hearth_command(&[
            "plugin",
            "verify",
            "--key",
            keys.path().join("release.pub").to_str().unwrap(),
            "--manifest",
            manifest.to_str().unwrap(),
            "--signature",
            signature_file.to_str().unwrap(),
            component_file.to_str().unwrap(),
        ])
    };
    let verified = verify(&manifest_file);
    assert!(verified.status.success(), "{}", String::from_utf8_lossy(&verified.stderr));
    assert_eq!(String::from_utf8_lossy(&verified.stdout).trim(), "signed by release");
    let changed = keys.path().join("changed.toml");
    std::fs::write(&changed, "name = \"validate\"\nversion = \"2\"\nworld = \"policy\"\n").unwrap();
    let refused = verify(&changed);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("does not match"));

    // `hearth plugin list` and `rollback` against the running server: a second signed version,
    // then back to the first.
    let server_args =
        ["--server", server.base.as_str(), "--token", token.as_str(), "--cacert", server.ca.to_str().unwrap()];
    let signed2 = hearth_command(&[
        "plugin",
        "sign",
        "--key",
        key.to_str().unwrap(),
        "--manifest",
        changed.to_str().unwrap(),
        component_file.to_str().unwrap(),
    ]);
    let signature2 = keys.path().join("validate2.sig");
    std::fs::write(&signature2, String::from_utf8(signed2.stdout).unwrap().trim()).unwrap();
    let mut args = vec!["plugin", "load"];
    args.extend(server_args);
    args.extend([
        "--manifest",
        changed.to_str().unwrap(),
        "--signature",
        signature2.to_str().unwrap(),
        component_file.to_str().unwrap(),
    ]);
    assert!(hearth_command(&args).status.success());
    let mut args = vec!["plugin", "rollback"];
    args.extend(server_args);
    args.push("validate");
    let rolled = hearth_command(&args);
    assert!(rolled.status.success(), "{}", String::from_utf8_lossy(&rolled.stderr));
    let mut args = vec!["plugin", "list"];
    args.extend(server_args);
    let listed = hearth_command(&args);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    let listed = String::from_utf8_lossy(&listed.stdout);
    assert!(listed.contains("validate"), "{listed}");
    let listed: Value = serde_json::from_str(&listed).unwrap();
    let active = &listed["plugins"][0];
    assert_eq!((active["version"].as_str(), active["seq"].as_i64()), (Some("1"), Some(1)), "rolled back: {listed}");
}

/// A version stored while the server loaded unsigned plugins is re-verified whenever it would
/// load: once trust keys are configured it neither loads at start nor can be rolled back to.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_unsigned_versions_do_not_load_once_trust_keys_are_configured() {
    let server = Server::launch(Db::Sqlite, Launch::default()).await;
    let bytes = component("validate");
    upload(&server, "validate", &bytes, json!({"name": "validate", "version": "1", "world": "policy"}))
        .await
        .expect(201);

    let keys = tempfile::tempdir().unwrap();
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    std::fs::write(keys.path().join("release.pem"), pair.serialize_pem()).unwrap();
    std::fs::write(keys.path().join("release.pub"), pair.public_key_pem()).unwrap();
    let trusting = || Launch {
        extra_args: vec!["--plugin-trust-key".into(), keys.path().join("release.pub").to_str().unwrap().into()],
        ..Launch::default()
    };
    let server = server.restart(trusting()).await;
    let listed = server.send(admin(&server).get(server.url("admin/plugins"))).await.expect(200);
    assert_eq!(listed["plugins"], json!([]), "the unsigned version is not in force: {listed}");
    assert!(server.log().contains("not trusted"), "the refusal is logged");

    // A signed version loads; rolling back to the unsigned one is refused and changes nothing.
    let manifest_file = keys.path().join("validate.toml");
    std::fs::write(&manifest_file, "name = \"validate\"\nversion = \"2\"\nworld = \"policy\"\n").unwrap();
    let component_file = plugin_dir().join("hearth_plugin_validate.wasm");
    let signed = hearth_command(&[
        "plugin",
        "sign",
        "--key",
        keys.path().join("release.pem").to_str().unwrap(),
        "--manifest",
        manifest_file.to_str().unwrap(),
        component_file.to_str().unwrap(),
    ]);
    let signature = String::from_utf8(signed.stdout).unwrap().trim().to_owned();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&bytes);
    let body = json!({"manifest": {"name": "validate", "version": "2", "world": "policy"}, "component": b64,
        "signature": signature});
    // (201: no version of it was in force.)
    let loaded = server.send(admin(&server).put(server.url("admin/plugins/validate")).json(&body)).await.expect(201);
    assert_eq!((loaded["seq"].as_i64(), loaded["signedBy"].as_str()), (Some(2), Some("release")));
    let rollback = admin(&server).post(server.url("admin/plugins/validate/rollback")).body(r#"{"seq": 1}"#);
    let refused = server.send(rollback).await.expect_outcome(403, "security");
    assert!(refused.contains("unsigned"), "{refused}");
    let listed = server.send(admin(&server).get(server.url("admin/plugins"))).await.expect(200);
    assert_eq!(listed["plugins"][0]["seq"], 2, "{listed}");
    // After a restart the signed version is the one in force, verified again.
    let server = server.restart(trusting()).await;
    let listed = server.send(admin(&server).get(server.url("admin/plugins"))).await.expect(200);
    assert_eq!(
        (listed["plugins"][0]["seq"].as_i64(), listed["plugins"][0]["signedBy"].as_str()),
        (Some(2), Some("release"))
    );
}

/// A local HTTP receiver recording every notice; answers 503 to the first `fail_first`.
pub struct Receiver {
    pub addr: SocketAddr,
    pub notices: Arc<Mutex<Vec<Value>>>,
}

pub async fn receiver(fail_first: u64) -> Receiver {
    let notices = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::new(AtomicU64::new(0));
    let recorded = notices.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::body::Bytes| {
            let (recorded, seen) = (recorded.clone(), seen.clone());
            async move {
                if seen.fetch_add(1, Ordering::SeqCst) < fail_first {
                    return axum::http::StatusCode::SERVICE_UNAVAILABLE;
                }
                recorded.lock().unwrap().push(serde_json::from_slice(&body).unwrap_or(Value::Null));
                axum::http::StatusCode::NO_CONTENT
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Receiver { addr, notices }
}

async fn integration_events_reach_a_real_receiver(db: Db) {
    let receiver = receiver(2).await;
    let closed_port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let bindings = format!(
        r#"
[[binding]]
plugin = "notify"
resource_types = ["Patient"]
interactions = ["create", "update", "delete"]
config = {{ url = "http://{addr}/hook" }}

[[binding]]
plugin = "notify-nowhere"
resource_types = ["Patient"]
interactions = ["create"]
config = {{ url = "http://127.0.0.1:{closed_port}/hook" }}

[[binding]]
plugin = "notify-forbidden"
resource_types = ["Patient"]
interactions = ["create"]
config = {{ url = "http://{addr}/hook" }}
"#,
        addr = receiver.addr
    );
    let folder = policies(&bindings);
    let server = Server::launch(db, with_policies(folder.path())).await;
    let allowed = json!([receiver.addr.to_string()]);
    load(&server, "notify", "notify", "integration", json!({"allowed_hosts": allowed, "key_value": true})).await;
    let nowhere = json!({"allowed_hosts": [format!("127.0.0.1:{closed_port}")], "max_attempts": 1});
    load(&server, "notify-nowhere", "notify", "integration", nowhere).await;
    // Allowed nowhere: its posts to the receiver are refused by the host.
    load(&server, "notify-forbidden", "notify", "integration", json!({"max_attempts": 1})).await;

    let mut ids = Vec::new();
    for n in 0..3 {
        let created =
            server.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": format!("N{n}")}]})).await;
        created.expect(201);
        ids.push(id_from_location(&created));
    }
    server
        .put(&format!("Patient/{}", ids[0]), &json!({"resourceType": "Patient", "id": ids[0], "active": true}))
        .await
        .expect(200);
    server.delete(&format!("Patient/{}", ids[1])).await.expect(200);

    // 5 changes; the receiver refused the first 2 deliveries, so these came by retry.
    let mut notices = Vec::new();
    for _ in 0..600 {
        notices = receiver.notices.lock().unwrap().clone();
        if notices.len() >= 5 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut kinds: Vec<(String, String)> = notices
        .iter()
        .map(|n| (n["id"].as_str().unwrap().to_owned(), n["kind"].as_str().unwrap().to_owned()))
        .collect();
    kinds.sort();
    kinds.dedup();
    let mut expected = vec![
        (ids[0].clone(), "created".to_owned()),
        (ids[0].clone(), "updated".to_owned()),
        (ids[1].clone(), "created".to_owned()),
        (ids[1].clone(), "deleted".to_owned()),
        (ids[2].clone(), "created".to_owned()),
    ];
    expected.sort();
    assert_eq!(kinds, expected, "every committed change was delivered: {notices:?}");
    assert!(notices.iter().all(|n| n.get("name").is_none()), "notices carry ids, not clinical content");
    assert!(notices.iter().any(|n| n["previousEventId"].is_u64()), "the plugin's key-value store kept state");

    // The failing plugins' events are dead-lettered with their reasons, and can be retried.
    let mut dead = Vec::new();
    for _ in 0..100 {
        let listed = server.send(admin(&server).get(server.url("admin/outbox?state=dead"))).await.expect(200);
        dead = listed["events"].as_array().unwrap().clone();
        if dead.len() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead.len(), 6, "{dead:?}");
    assert!(
        dead.iter()
            .any(|e| e["plugin"] == "notify-forbidden" && e["lastError"].as_str().unwrap().contains("not allowed")),
        "{dead:?}"
    );
    assert!(
        dead.iter()
            .any(|e| e["plugin"] == "notify-nowhere" && e["lastError"].as_str().unwrap().contains("request failed")),
        "{dead:?}"
    );
    let first = dead[0]["id"].as_i64().unwrap();
    server.send(admin(&server).post(server.url(&format!("admin/outbox/{first}/retry")))).await.expect(200);
    server.send(admin(&server).post(server.url("admin/outbox/999999999/retry"))).await.expect(404);
}

const ORU: &str = "MSH|^~\\&|LAB|HOSP|HEARTH|HOSP|202611270930||ORU^R01|MSG0001|P|2.5.1\r\
PID|1||MRN-4711^^^HOSP^MR||Fairweather^Imogen^J||19820314|F|||7 Quay Street^^Bristol^^BS1 4DJ^GB\r\
OBR|1||LAB-99|24331-1^Lipid panel^LN\r\
OBX|1|NM|2093-3^Cholesterol [Mass/volume] in Serum or Plasma^LN||187|mg/dL|||||F|||202611270915\r\
OBX|2|NM|2571-8^Triglyceride [Mass/volume] in Serum or Plasma^LN||142|mg/dL|||||P|||202611270915\r";

async fn hl7_messages_become_stored_resources(db: Db) {
    let folder = policies(
        "[[binding]]\nplugin = \"hl7v2\"\ninteractions = [\"create\"]\nresource_types = [\"Patient\"]\n\
         config = { identifier_systems = { HOSP = \"http://hospital.example/mrn\" } }\n",
    );
    let server = Server::launch(db, with_policies(folder.path())).await;
    load(&server, "hl7v2", "hl7v2", "integration", json!({})).await;
    let post = |body: &str, media_type: &str| {
        let request = server
            .client
            .post(server.url("$convert?plugin=hl7v2"))
            .header("content-type", media_type)
            .body(body.to_owned());
        server.send(request)
    };
    let bundle = post(ORU, "application/hl7-v2").await.expect(200);
    assert_eq!(bundle["type"], "transaction-response");
    let entries = bundle["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 3, "{bundle}");
    let locations: Vec<&str> = entries.iter().map(|e| e["response"]["location"].as_str().unwrap()).collect();
    let patient_path = locations[0].trim_end_matches("/_history/1");
    let patient = server.get(patient_path).await.expect(200);
    assert_eq!(patient["name"][0]["family"], "Fairweather");
    assert_eq!(patient["birthDate"], "1982-03-14");
    assert_eq!(patient["identifier"][0]["system"], "http://hospital.example/mrn", "binding config reached the plugin");
    let observation = server.get(locations[1].trim_end_matches("/_history/1")).await.expect(200);
    assert_eq!(observation["subject"]["reference"], patient_path, "linked to the patient of the same message");
    assert_eq!(observation["valueQuantity"]["value"], 187.0);
    assert_eq!(observation["code"]["coding"][0]["system"], "http://loinc.org");
    let second = server.get(locations[2].trim_end_matches("/_history/1")).await.expect(200);
    assert_eq!(second["status"], "preliminary");

    let message = post(&ORU.replace("ORU^R01", "SIU^S12"), "application/hl7-v2").await.expect_outcome(422, "invalid");
    assert!(message.contains("unsupported message type SIU^S12"), "{message}");
    post("hello", "application/hl7-v2").await.expect_outcome(422, "invalid");
    // A token that may not create one of the resources is refused before anything is stored.
    let reader = server.client_with(Some(&server.token("user/Patient.c user/*.r", None)));
    let request =
        reader.post(server.url("$convert?plugin=hl7v2")).header("content-type", "application/hl7-v2").body(ORU);
    server.send(request).await.expect_outcome(403, "forbidden");
    let request =
        server.client.post(server.url("$convert?plugin=nothing")).header("content-type", "application/hl7-v2");
    server.send(request.body(ORU)).await.expect_outcome(404, "not-found");

    // An HL7 sender asks for an acknowledgement: AA with what was stored, AE when the message
    // could not be processed, AR when it is refused.
    let ack = |client: &reqwest::Client, message: &str| {
        let request = client
            .post(server.url("$convert?plugin=hl7v2"))
            .header("content-type", "application/hl7-v2")
            .header("accept", "application/hl7-v2")
            .body(message.to_owned());
        server.send(request)
    };
    let accepted = ack(&server.client, ORU).await;
    assert_eq!((accepted.status, accepted.header("content-type")), (200, Some("application/hl7-v2")));
    let text = String::from_utf8_lossy(&accepted.bytes).into_owned();
    assert!(text.starts_with("MSH|^~\\&|HEARTH|HOSP|LAB|HOSP|") && text.contains("|ACK^R01^ACK|"), "{text}");
    assert!(text.contains("\rMSA|AA|MSG0001|stored Patient/") && text.contains(" Observation/"), "{text}");
    let stored = text.split("stored ").nth(1).unwrap().split('\r').next().unwrap().to_owned();
    for location in stored.split(' ') {
        server.get(location).await.expect(200);
    }
    let failed = ack(&server.client, &ORU.replace("ORU^R01", "SIU^S12")).await;
    let text = String::from_utf8_lossy(&failed.bytes).into_owned();
    assert_eq!(failed.status, 422);
    assert!(text.contains("\rMSA|AE|MSG0001|") && text.contains("unsupported message type SIU\\S\\S12"), "{text}");
    let refused = ack(&reader, ORU).await;
    let text = String::from_utf8_lossy(&refused.bytes).into_owned();
    assert_eq!(refused.status, 403);
    assert!(text.contains("\rMSA|AR|MSG0001|") && text.contains("\rERR|"), "{text}");
}

/// Two hosts on one PostgreSQL database: a plugin loaded or disabled through one takes effect
/// on the other without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_changes_reach_every_host_on_one_database() {
    let folder = policies("[[binding]]\nplugin = \"redact\"\ninteractions = [\"read\"]\n");
    let first = Server::launch(Db::Postgres, with_policies(folder.path())).await;
    let second = second_host(&first, folder.path(), &[]).await;

    let patient = json!({"resourceType": "Patient", "identifier": [{"system": SSN, "value": "222-33-4444"}]});
    // Bound but loaded nowhere yet: both hosts deny.
    let created = first.post("Patient", &patient).await;
    let id = id_from_location(&created);
    second.get(&format!("Patient/{id}")).await.expect_outcome(403, "forbidden");

    load(&first, "redact", "redact", "policy", json!({})).await;
    let redacted_on_second = async {
        for _ in 0..100 {
            let reply = second.get(&format!("Patient/{id}")).await;
            if reply.status == 200 {
                return reply.json();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the second host never loaded the plugin");
    }
    .await;
    assert!(redacted_on_second.get("identifier").is_none(), "{redacted_on_second}");

    first.send(admin(&first).post(first.url("admin/plugins/redact/disable"))).await.expect(200);
    let mut denied = false;
    for _ in 0..100 {
        if second.get(&format!("Patient/{id}")).await.status == 403 {
            denied = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(denied, "disabling through one host reaches the other");
}

/// A shadow binding decides and reports, but never changes an answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_bindings_report_without_enforcing() {
    let folder = policies(
        "[[binding]]\nplugin = \"consent\"\ninteractions = [\"read\"]\nresource_types = [\"Observation\"]\nmode = \"shadow\"\n",
    );
    let server = Server::launch(Db::Sqlite, with_policies(folder.path())).await;
    load(&server, "consent", "consent", "policy", json!({})).await;
    let (_, observation_id) = observation_behind_refused_consent(&server, json!({"resourceType": "Patient"})).await;
    for _ in 0..3 {
        server.get(&format!("Observation/{observation_id}")).await.expect(200);
    }
    let mut shadow = Value::Null;
    for _ in 0..50 {
        let report = server.send(admin(&server).get(server.url("admin/policies"))).await.expect(200);
        shadow = report["shadow"][0].clone();
        if shadow["evaluated"].as_u64() == Some(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(shadow["plugin"], "consent");
    assert_eq!(shadow["evaluated"], 3, "{shadow}");
    assert_eq!(shadow["differed"], 3, "the shadow policy would have denied each read: {shadow}");
    assert!(server.log().contains("shadow policy decision"));
    let metrics_client = server.client_with(Some(&server.token("admin/metrics", None)));
    let metrics = server.send(metrics_client.get(server.url("metrics"))).await;
    let text = String::from_utf8_lossy(&metrics.bytes);
    assert!(text.contains("hearth_policy_shadow_decisions_total{plugin=\"consent\",result=\"differed\"} 3"), "{text}");
    assert!(text.contains("hearth_plugin_calls_total{plugin=\"consent\"} 3"), "{text}");
}
