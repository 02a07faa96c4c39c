//! Schema-driven fuzzing of the REST surface: schemathesis (PyPI) generates requests from
//! `docs/openapi.yaml` (valid and invalid: bodies, parameters, missing or bad auth, stateful
//! sequences) against a running server, bounded for CI, and checks that nothing answers 5xx and
//! that every status code, content type, header and body is one the description documents.
//! Toolchain: `pip install -r tests/requirements.txt` (`tests/run` does it, into the project venv `.venv`).

use std::path::Path;

use crate::harness::{Db, Server};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rest_surface_survives_schema_driven_fuzzing() {
    let server = Server::start(Db::Sqlite).await;
    let token = server.token("user/*.cruds admin/plugins admin/audit admin/keys", None);
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("docs").join("openapi.yaml");
    let reports = tempfile::tempdir().unwrap();
    let output = crate::harness::python3()
        .current_dir(reports.path())
        .args(["-c", "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; sys.exit(schemathesis())"])
        .args(["run", spec.to_str().unwrap(), "--url", &server.base])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--tls-verify", server.ca.to_str().unwrap()])
        .args(["--max-examples", "15", "--seed", "20261128", "--max-time", "150", "--no-color"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance,\
             response_headers_conformance",
        ])
        .output()
        .expect("run python3");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !stderr.contains("No module named 'schemathesis'"),
        "schemathesis is missing: `bash tests/run` installs it into .venv (or pip install -r tests/requirements.txt)"
    );
    assert!(output.status.success(), "schemathesis found problems:\n{stdout}\n{stderr}");
    // A run that generated nothing proves nothing.
    let generated = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(generated >= 500, "schemathesis generated only {generated} cases:\n{stdout}");
    eprintln!("schemathesis: {generated} cases, no server error, all conforming");
    // The server is still healthy afterwards.
    server.get("metadata").await.expect(200);
}
