//! Bad requests: each answered with an OperationOutcome and the right status, and the server
//! keeps serving.

use serde_json::json;

use crate::harness::{Db, Launch, Server};
use crate::on_both_databases;

on_both_databases!(bad_requests_get_operation_outcomes);

async fn bad_requests_get_operation_outcomes(db: Db) {
    let server = Server::launch(
        db,
        Launch { extra_args: vec!["--max-body-bytes".into(), "65536".into()], ..Default::default() },
    )
    .await;
    let c = &server.client;
    let fhir = |b: reqwest::RequestBuilder| b.header("content-type", "application/fhir+json");
    server.put("Patient/p1", &json!({"resourceType": "Patient", "id": "p1"})).await.expect(201);

    let cases: Vec<(&str, reqwest::RequestBuilder, u16, &str)> = vec![
        (
            "malformed JSON",
            fhir(c.post(server.url("Patient"))).body("{\"resourceType\": \"Patient\",,}"),
            400,
            "structure",
        ),
        ("not an object", fhir(c.post(server.url("Patient"))).body("[1,2]"), 400, "structure"),
        (
            "duplicate keys",
            fhir(c.put(server.url("Patient/p1"))).body(r#"{"resourceType":"Patient","id":"p1","id":"p2"}"#),
            400,
            "structure",
        ),
        (
            "deep nesting",
            fhir(c.post(server.url("Patient"))).body(format!(
                "{{\"resourceType\":\"Patient\",\"x\":{}{}}}",
                "[".repeat(500),
                "]".repeat(500)
            )),
            400,
            "structure",
        ),
        (
            "number out of range",
            fhir(c.post(server.url("Patient"))).body(r#"{"resourceType":"Patient","multipleBirthInteger":1e400}"#),
            400,
            "structure",
        ),
        ("invalid UTF-8", fhir(c.post(server.url("Patient"))).body(vec![b'{', 0xff, 0xfe, b'}']), 400, "structure"),
        ("no resourceType", fhir(c.post(server.url("Patient"))).body("{\"active\":true}"), 400, "required"),
        (
            "wrong resourceType",
            fhir(c.post(server.url("Patient"))).body(json!({"resourceType": "Observation"}).to_string()),
            400,
            "invalid",
        ),
        (
            "id mismatch",
            fhir(c.put(server.url("Patient/p1"))).body(json!({"resourceType": "Patient", "id": "p2"}).to_string()),
            400,
            "invalid",
        ),
        (
            "update without id",
            fhir(c.put(server.url("Patient/p1"))).body(json!({"resourceType": "Patient"}).to_string()),
            400,
            "required",
        ),
        (
            "unknown type (create)",
            fhir(c.post(server.url("Spaceship"))).body(json!({"resourceType": "Spaceship"}).to_string()),
            404,
            "not-supported",
        ),
        ("unknown type (read)", c.get(server.url("patient/p1")), 404, "not-supported"),
        ("invalid id", c.get(server.url("Patient/bad_id!")), 400, "value"),
        ("id too long", c.get(server.url(&format!("Patient/{}", "a".repeat(65)))), 400, "value"),
        (
            "body too large",
            fhir(c.post(server.url("Patient")))
                .body(json!({"resourceType": "Patient", "text": {"div": "x".repeat(70_000)}}).to_string()),
            413,
            "too-long",
        ),
        (
            "unsupported media type",
            c.post(server.url("Patient")).header("content-type", "application/fhir+xml").body("<Patient/>"),
            415,
            "not-supported",
        ),
        ("missing content type", c.post(server.url("Patient")).body("{}"), 415, "not-supported"),
        ("XML wanted", c.get(server.url("Patient/p1")).header("accept", "application/fhir+xml"), 406, "not-supported"),
        ("_format=xml", c.get(server.url("Patient/p1?_format=xml")), 406, "not-supported"),
        ("missing resource", c.get(server.url("Patient/nobody")), 404, "not-found"),
        ("delete missing", c.delete(server.url("Patient/nobody")), 404, "not-found"),
        ("bad version id", c.get(server.url("Patient/p1/_history/first")), 400, "value"),
        ("unsupported method", c.post(server.url("Patient/p1")), 405, "not-supported"),
        ("patch without a JSON Patch", fhir(c.patch(server.url("Patient/p1"))).body("{}"), 415, "not-supported"),
        ("unknown path", c.get(server.url("Patient/p1/_history/1/extra")), 404, "not-supported"),
        (
            "conditional create on an unknown parameter",
            fhir(c.post(server.url("Patient")))
                .header("if-none-exist", "colour=blue")
                .body(json!({"resourceType": "Patient"}).to_string()),
            400,
            "not-supported",
        ),
    ];
    for (name, request, status, code) in cases {
        let reply = server.send(request).await;
        assert_eq!(reply.status, status, "{name}: {}", String::from_utf8_lossy(&reply.bytes));
        let diagnostics = reply.expect_outcome(status, code);
        assert!(!diagnostics.is_empty(), "{name}: diagnostics say what went wrong");
    }

    // application/json is accepted as well as application/fhir+json, and the server still serves.
    let plain = c
        .post(server.url("Patient"))
        .header("content-type", "application/json; charset=utf-8")
        .body(json!({"resourceType": "Patient"}).to_string());
    server.send(plain).await.expect(201);
    assert_eq!(server.get("Patient/p1").await.expect(200)["id"], "p1");
    assert_eq!(server.get("healthz").await.status, 200);
    assert_eq!(server.get("readyz").await.status, 200);
}

/// Issue 22, repro 11: a body over the limit was logged as 413 while most clients (curl over
/// HTTP/2, Python requests over HTTP/1.1, both still sending) saw the connection drop; they
/// get the OperationOutcome now.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_body_gets_its_413_over_http_1_and_2() {
    let server = Server::launch(
        Db::Sqlite,
        Launch { extra_args: vec!["--max-body-bytes".into(), "65536".into()], ..Default::default() },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("big.json");
    std::fs::write(&body, format!(r#"{{"resourceType": "Patient", "text": {{"div": "{}"}}}}"#, "x".repeat(3 << 20)))
        .unwrap();
    let token = server.token("user/*.cruds", None);
    let url = server.url("Patient");
    for version in ["--http2", "--http1.1"] {
        let output = std::process::Command::new("curl")
            .args([
                "-sS",
                version,
                "--cacert",
                server.ca.to_str().unwrap(),
                "-H",
                &format!("Authorization: Bearer {token}"),
            ])
            .args(["-H", "Content-Type: application/fhir+json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .args(["-w", "\n%{http_code}", &url])
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(
            text.ends_with("\n413") && text.contains("too-long"),
            "curl {version}: {text} {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    assert_eq!(python_post(&server, &body, &format!("Bearer {token}")), "413 too-long");
}

/// POSTs the file `body` to `Patient` with Python requests (HTTP/1.1, still sending when an
/// early answer comes), with `authorization` unless empty; "STATUS ISSUE-CODE", or why not.
fn python_post(server: &Server, body: &std::path::Path, authorization: &str) -> String {
    let script = format!(
        "import requests, sys\nh = {{'Content-Type': 'application/fhir+json'}}\nif {authorization:?}: h['Authorization'] = {authorization:?}\n\
         r = requests.post({url:?}, data=open({body:?}, 'rb'), verify={ca:?}, headers=h)\n\
         print(r.status_code, r.json()['issue'][0]['code'])",
        url = server.url("Patient"),
        body = body.display().to_string(),
        ca = server.ca.display().to_string(),
    );
    let output = crate::harness::python3().args(["-c", &script]).output().expect("python3 runs");
    let text = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    if text.is_empty() { format!("no answer: {}", String::from_utf8_lossy(&output.stderr)) } else { text }
}

/// A write refused before its body was read (no token, an invalid one) gets its 401, not a
/// connection reset: the refusal no longer waits for a durable audit entry, so it would answer
/// while the client is still sending, and an HTTP/1.1 server closes a connection whose request
/// body was left unread. A client whose token expired must see the 401 to renew it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upload_gets_its_401_not_a_reset() {
    let server = Server::start(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let body = dir.path().join("upload.json");
    std::fs::write(&body, format!(r#"{{"resourceType": "Patient", "text": {{"div": "{}"}}}}"#, "x".repeat(2 << 20)))
        .unwrap();
    for authorization in ["", "Bearer not-a-token"] {
        for _ in 0..3 {
            assert_eq!(python_post(&server, &body, authorization), "401 login", "authorization {authorization:?}");
        }
    }
    // curl asks `Expect: 100-continue` before a large upload: the 401 comes without the body.
    for expect in ["Expect: 100-continue", "Expect:"] {
        let output = std::process::Command::new("curl")
            .args(["-sS", "--http1.1", "--cacert", server.ca.to_str().unwrap(), "-H", expect])
            .args(["-H", "Content-Type: application/fhir+json", "--data-binary"])
            .arg(format!("@{}", body.display()))
            .args(["-w", "\n%{http_code}", &server.url("Patient")])
            .output()
            .expect("curl runs");
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.ends_with("\n401"), "{expect}: {text} {}", String::from_utf8_lossy(&output.stderr));
    }
}
