//! Plugins in other languages: the JavaScript (componentize-js) and Python (componentize-py)
//! twins of the Rust reference plugins in `plugins/` are built from source, loaded into a
//! running server, and must behave exactly like their Rust twin: the same decisions, reasons
//! and labels from the consent policy, the same notices from the notify integration.
//!
//! Toolchains: `npm ci --prefix plugins/js` and `pip install -r plugins/python/requirements.txt`
//! (`tests/run` does both, into the project venv `.venv`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Db, Server, dev_token_with_roles};
use crate::plugins::{component, id_from_location, policies, receiver, upload, with_policies};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

impl Lang {
    pub fn name(self) -> &'static str {
        match self {
            Lang::Rust => "rust",
            Lang::Js => "javascript",
            Lang::Python => "python",
        }
    }
}

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root").to_owned()
}

/// Builds `plugins/js/{name}.js` or `plugins/python/{name}/app.py` into a component, once per
/// test process, and returns its bytes.
pub fn built(lang: Lang, name: &str, world: &str) -> Vec<u8> {
    if lang == Lang::Rust {
        return component(name);
    }
    static OUT: OnceLock<PathBuf> = OnceLock::new();
    let out = OUT.get_or_init(|| {
        let dir = root().join("target").join("plugins").join("languages");
        std::fs::create_dir_all(&dir).expect("output folder");
        dir
    });
    let file = out.join(format!("{name}_{}.wasm", lang.name()));
    // One build per component per process: a lock per file keeps parallel tests from racing.
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    static BUILT: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());
    if !BUILT.lock().unwrap().contains(&file) {
        let output = match lang {
            Lang::Js => {
                let js = root().join("plugins").join("js");
                assert!(
                    js.join("node_modules").join("@bytecodealliance").join("componentize-js").exists(),
                    "the JavaScript plugin toolchain is missing: run `npm ci --prefix plugins/js`"
                );
                Command::new("node")
                    .current_dir(&js)
                    .args(["build.mjs", &format!("{name}.js"), world])
                    .arg(&file)
                    .output()
                    .expect("run node (Node.js 20+ is needed for the JavaScript plugins)")
            }
            Lang::Python => crate::harness::python3()
                .current_dir(root().join("plugins").join("python").join(name))
                .args([
                    "-c",
                    "import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())",
                    "-d",
                    "../../../wit",
                    "-w",
                    world,
                    "componentize",
                    "app",
                    "-o",
                ])
                .arg(&file)
                .output()
                .expect("run python3"),
            Lang::Rust => unreachable!(),
        };
        assert!(
            output.status.success(),
            "building the {} plugin {name} failed (toolchain: `npm ci --prefix plugins/js`, \
             `bash tests/run` sets up `.venv` with plugins/python/requirements.txt):\n{}{}",
            lang.name(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        BUILT.lock().unwrap().push(file.clone());
    }
    std::fs::read(&file).expect("built component")
}

/// What the Rust twins do, spelled out, so a broken baseline cannot make the twins agree.
fn expected() -> Vec<String> {
    let label = r#"[{"system":"http://terminology.hl7.org/CodeSystem/v3-ActReason","code":"ETREAT","display":"emergency treatment (break-glass)"}]"#;
    vec![
        "before consent: 200".to_owned(),
        "denied: 403 \"denied by policy 'consent': the patient's consent Consent/c-twin denies this access\""
            .to_owned(),
        "search matches: 0".to_owned(),
        "purpose PUBHLTH: 200".to_owned(),
        format!("break-glass: 200 {label}"),
        "the patient: 200".to_owned(),
        "notice: \"created\" \"Patient\" \"1\" about the patient: true event id is a number: true".to_owned(),
        "notice: \"updated\" \"Patient\" \"2\" about the patient: true event id is a number: true".to_owned(),
        "the key-value store kept the last event id: true".to_owned(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn javascript_plugins_behave_like_their_rust_twins() {
    let rust = observe(Lang::Rust).await;
    assert_eq!(rust, expected());
    let js = observe(Lang::Js).await;
    assert_eq!(js, rust, "the JavaScript twins decide and notify exactly as the Rust ones");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_plugins_behave_like_their_rust_twins() {
    let rust = observe(Lang::Rust).await;
    assert_eq!(rust, expected());
    let python = observe(Lang::Python).await;
    assert_eq!(python, rust, "the Python twins decide and notify exactly as the Rust ones");
}

/// What a clinic sees with the consent and notify plugins of `lang` in force: each request's
/// status, the denial reason and labels, and the notices the receiver got.
async fn observe(lang: Lang) -> Vec<String> {
    let receiver = receiver(1).await;
    let bindings = format!(
        r#"
[[binding]]
plugin = "consent"
interactions = ["read", "vread", "history", "search"]

[[binding]]
plugin = "notify"
resource_types = ["Patient"]
interactions = ["create", "update"]
config = {{ url = "http://{addr}/hook" }}
"#,
        addr = receiver.addr
    );
    let folder = policies(&bindings);
    let server = Server::launch(Db::Sqlite, with_policies(folder.path())).await;
    let manifest = |name: &str, world: &str, extra: Value| {
        let mut m = json!({"name": name, "version": "1.0.0", "world": world, "language": lang.name(),
                           "limits": {"memory_mib": 128, "timeout_ms": 1000}});
        m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        m
    };
    let consent = built(lang, "consent", "policy");
    let reply = upload(&server, "consent", &consent, manifest("consent", "policy", json!({}))).await;
    assert!(matches!(reply.status, 200 | 201), "{}: {}", lang.name(), String::from_utf8_lossy(&reply.bytes));
    let notify = built(lang, "notify", "integration");
    let grants = json!({"allowed_hosts": [receiver.addr.to_string()], "key_value": true});
    let reply = upload(&server, "notify", &notify, manifest("notify", "integration", grants)).await;
    assert!(matches!(reply.status, 200 | 201), "{}: {}", lang.name(), String::from_utf8_lossy(&reply.bytes));

    let mut seen = Vec::new();
    let created = server.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Twinning"}]})).await;
    created.expect(201);
    let patient = id_from_location(&created);
    server
        .put(&format!("Patient/{patient}"), &json!({"resourceType": "Patient", "id": patient, "active": true}))
        .await
        .expect(200);
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
                             "subject": {"reference": format!("Patient/{patient}")}});
    let created = server.post("Observation", &observation).await;
    created.expect(201);
    let observation = id_from_location(&created);
    let path = format!("Observation/{observation}");
    seen.push(format!("before consent: {}", server.get(&path).await.status));
    let consent = json!({
        "resourceType": "Consent", "id": "c-twin", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": format!("Patient/{patient}")},
        "provision": {"type": "deny", "provision": [{"type": "permit", "purpose": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "PUBHLTH"}]}]},
    });
    server.put("Consent/c-twin", &consent).await.expect(201);
    let denied = server.get(&path).await;
    seen.push(format!("denied: {} {}", denied.status, denied.json()["issue"][0]["diagnostics"]));
    let found = server.get(&format!("Observation?subject=Patient/{patient}")).await.expect(200);
    let matches = found["entry"].as_array().map_or(0, |e| e.iter().filter(|e| e["search"]["mode"] == "match").count());
    seen.push(format!("search matches: {matches}"));
    let public_health = server.client.get(server.url(&path)).header("x-purpose-of-use", "PUBHLTH");
    seen.push(format!("purpose PUBHLTH: {}", server.send(public_health).await.status));
    let emergency =
        server.client_with(Some(&dev_token_with_roles(&server.data_dir, "user/*.rs", None, &["break-glass"])));
    let reply = server.send(emergency.get(server.url(&path)).header("x-break-glass-reason", "unconscious in ED")).await;
    seen.push(format!("break-glass: {} {}", reply.status, reply.json()["meta"]["security"]));
    let own = server.client_with(Some(&server.token("patient/*.rs", Some(&patient))));
    seen.push(format!("the patient: {}", server.send(own.get(server.url(&path))).await.status));

    // Notices: the first delivery was refused (503), so the create came by retry.
    let mut notices = Vec::new();
    for _ in 0..300 {
        notices = receiver.notices.lock().unwrap().clone();
        if notices.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut lines: Vec<String> = notices
        .iter()
        .map(|notice| {
            let fields: Vec<String> =
                ["kind", "resourceType", "versionId"].iter().map(|k| notice[k].to_string()).collect();
            format!(
                "notice: {} about the patient: {} event id is a number: {}",
                fields.join(" "),
                notice["id"] == patient.as_str(),
                notice["eventId"].is_u64()
            )
        })
        .collect();
    lines.sort();
    seen.extend(lines);
    seen.push(format!(
        "the key-value store kept the last event id: {}",
        notices.iter().any(|n| n["previousEventId"].is_u64())
    ));
    seen
}

/// `hearth plugin test`: the same recorded cases pass against the consent plugin in every
/// language, with no server; a case whose expectation is wrong fails the command.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_test_runs_recorded_cases_in_every_language() {
    let fixtures = root().join("plugins").join("fixtures").join("consent");
    let manifest = fixtures.join("manifest.toml");
    let dir = tempfile::tempdir().unwrap();
    for lang in [Lang::Rust, Lang::Js, Lang::Python] {
        let file = dir.path().join(format!("consent-{}.wasm", lang.name()));
        std::fs::write(&file, built(lang, "consent", "policy")).unwrap();
        let output = crate::harness::hearth_command(&[
            "plugin",
            "test",
            "--manifest",
            manifest.to_str().unwrap(),
            "--fixtures",
            fixtures.to_str().unwrap(),
            file.to_str().unwrap(),
        ]);
        let report = String::from_utf8_lossy(&output.stdout);
        assert!(output.status.success(), "{}: {report}{}", lang.name(), String::from_utf8_lossy(&output.stderr));
        assert!(report.contains("6 cases passed"), "{report}");
        assert!(report.contains("warm p50") && report.contains("peak memory"), "{report}");
    }
    // A wrong expectation is a failure that says what differed.
    let wrong = tempfile::tempdir().unwrap();
    let mut case: Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures.join("02-deny-consent-denies.json")).unwrap()).unwrap();
    case["expect"] = json!(["allow"]);
    std::fs::write(wrong.path().join("case.json"), case.to_string()).unwrap();
    let output = crate::harness::hearth_command(&[
        "plugin",
        "test",
        "--manifest",
        manifest.to_str().unwrap(),
        "--fixtures",
        wrong.path().to_str().unwrap(),
        dir.path().join("consent-rust.wasm").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("1 of 1 cases failed") && stderr.contains(r#""deny", expected "allow""#), "{stderr}");
}

/// `hearth plugin new`: each skeleton builds with its own script and passes its own test case
/// (`test.sh` runs `hearth plugin test` over its fixtures).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_plugin_skeletons_build_and_pass_their_own_test() {
    let dir = tempfile::tempdir().unwrap();
    for (lang, world) in [("rust", "policy"), ("rust", "integration"), ("js", "policy"), ("python", "integration")] {
        let name = format!("demo-{lang}-{world}");
        let created = crate::harness::hearth_command(&[
            "plugin",
            "new",
            "--lang",
            lang,
            "--world",
            world,
            "--dir",
            dir.path().to_str().unwrap(),
            &name,
        ]);
        assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
        let folder = dir.path().join(&name);
        if lang == "js" {
            // The toolchain the repository's own JavaScript plugins use, instead of a download.
            std::os::unix::fs::symlink(
                root().join("plugins").join("js").join("node_modules"),
                folder.join("node_modules"),
            )
            .unwrap();
        }
        let output = Command::new(folder.join("test.sh"))
            .env("HEARTH", env!("CARGO_BIN_EXE_hearth"))
            .env("PATH", crate::harness::path_with_python())
            .env("CARGO_TARGET_DIR", root().join("target").join("plugins").join("skeletons"))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success() && stdout.contains("1 cases passed"),
            "{name}: {stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    // Names are checked, and nothing is overwritten.
    let bad = crate::harness::hearth_command(&[
        "plugin",
        "new",
        "--lang",
        "rust",
        "--dir",
        dir.path().to_str().unwrap(),
        "Bad_Name",
    ]);
    assert!(!bad.status.success());
    let again = crate::harness::hearth_command(&[
        "plugin",
        "new",
        "--lang",
        "rust",
        "--world",
        "policy",
        "--dir",
        dir.path().to_str().unwrap(),
        "demo-rust-policy",
    ]);
    assert!(!again.status.success() && String::from_utf8_lossy(&again.stderr).contains("exists already"));
}
