//! The official FHIR R4 examples (npm `hl7.fhir.r4.examples` 4.0.1, 5,306 resources of 140
//! types; `tests/run` fetches them pinned by checksum) loaded into Hearth on SQLite and on
//! PostgreSQL: every example accepted except the documented refusals (server-written
//! AuditEvents, ids over 64 characters), each read back identical, and search checked against
//! an oracle that computes every expected result set from the loaded JSON with an independent
//! FHIRPath engine (`tests/r4_examples/check.py`): every declared parameter with values in the
//! data (token, :not, string prefix in other case, :exact, every date prefix, references,
//! numbers, quantities, composites, :missing), a chain, `_has`, and small-page paging.

use std::path::PathBuf;

use crate::harness::{Db, Launch, Server};

fn examples() -> PathBuf {
    let dir = std::env::var_os("HEARTH_R4_EXAMPLES").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target/r4-examples/4.0.1/package")
    });
    assert!(
        dir.join("package.json").exists(),
        "the FHIR R4 examples are not at {}: `bash tests/run` fetches them (npm hl7.fhir.r4.examples 4.0.1)",
        dir.display()
    );
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_r4_examples_load_read_back_and_search_as_the_specification_says() {
    let package = examples();
    // The package holds Bundles of definitions of up to 35 MB: a server taking them needs a
    // larger body limit than the default 8 MiB (a configuration, not a refusal).
    let launch = || Launch { extra_args: vec!["--max-body-bytes".into(), "67108864".into()], ..Launch::default() };
    let sqlite = Server::launch(Db::Sqlite, launch()).await;
    let postgres = Server::launch(Db::Postgres, launch()).await;
    let mut command = crate::harness::python3();
    command.arg(PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("tests/r4_examples/check.py"));
    command.arg("--package").arg(&package);
    for server in [&sqlite, &postgres] {
        let token = server.token("user/*.cruds", None);
        command.arg("--server").arg(&server.base).arg(token).arg(&server.ca);
    }
    let output = command.output().expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named"),
        "the oracle's Python packages are missing: `bash tests/run` installs them into .venv\n{stderr}"
    );
    let summary: serde_json::Value =
        stdout.lines().last().and_then(|l| serde_json::from_str(l).ok()).unwrap_or_else(|| {
            panic!("the oracle printed no summary:\n{stdout}\n{stderr}");
        });
    eprintln!("{summary}");
    assert!(output.status.success(), "search or loading differs from the specification:\n{stdout}\n{stderr}");
    // A run that checked little proves little.
    assert!(summary["examples"].as_u64().unwrap_or(0) > 5000, "{summary}");
    assert!(summary["queries_per_server"].as_u64().unwrap_or(0) > 1000, "{summary}");
    assert_eq!(summary["oracle_expression_errors"], 0, "{summary}");
    for server in [&sqlite, &postgres] {
        let log = server.log();
        for name in ["Chalmers", "Donald Duck"] {
            assert!(!log.contains(name), "a patient's name in the server log");
        }
    }
}
