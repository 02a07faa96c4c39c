//! Hostile requests beyond malformed bodies (see `errors.rs`): SQL metacharacters and
//! wildcards in every search parameter the server declares, path traversal in ids, and request
//! smuggling. Each gets a clear answer, never a 5xx, and the data is intact afterwards.

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::harness::{Db, Server};
use crate::on_both_databases;

on_both_databases!(hostile_search_values_match_nothing_and_break_nothing);

/// Values that would widen a match or end a statement if they reached the SQL text.
const HOSTILE: &[&str] =
    &["' OR '1'='1", "%", "_", "\\", "*", "\"; DROP TABLE resource_head; --", "1) OR (1=1", "%' --", "a%b_c"];

/// Every search parameter `GET /metadata` declares, for every type, with each hostile value
/// (and `:contains`/`:exact` for strings): 200 with no match (nothing stored holds these
/// values) or 400 with an OperationOutcome. Then every stored resource is still there.
async fn hostile_search_values_match_nothing_and_break_nothing(db: Db) {
    let server = Server::start(db).await;
    let patient = server
        .post(
            "Patient",
            &json!({"resourceType": "Patient", "name": [{"family": "Abbott", "given": ["Ann"]}],
                    "identifier": [{"system": "urn:mrn", "value": "A-1"}], "birthDate": "1980-01-02"}),
        )
        .await;
    let patient_id = patient.expect(201)["id"].as_str().unwrap().to_owned();
    let observation = json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": "2024-01-01", "valueQuantity": {"value": 60, "unit": "/min"}});
    server.post("Observation", &observation).await.expect(201);

    let metadata = server.get("metadata").await.expect(200);
    let mut tried = 0;
    let mut refused = 0;
    for resource in metadata["rest"][0]["resource"].as_array().unwrap() {
        let res_type = resource["type"].as_str().unwrap();
        let Some(params) = resource["searchParam"].as_array() else { continue };
        if params.is_empty()
            || !["Patient", "Observation", "Condition", "Encounter", "MedicationRequest"].contains(&res_type)
        {
            continue;
        }
        for param in params {
            let name = param["name"].as_str().unwrap();
            let mut codes = vec![name.to_owned()];
            if param["type"] == "string" {
                codes.push(format!("{name}:contains"));
                codes.push(format!("{name}:exact"));
            }
            for code in &codes {
                for value in HOSTILE {
                    let url = format!("{}?{}", res_type, form(&[(code.as_str(), value)]));
                    // Strict handling: a parameter or modifier the server cannot apply is a 400,
                    // not silently dropped (which would rightly match everything).
                    let request = server.client.get(server.url(&url)).header("prefer", "handling=strict");
                    let reply = server.send(request).await;
                    tried += 1;
                    match reply.status {
                        200 => {
                            let bundle = reply.json();
                            let matches: Vec<&Value> = bundle["entry"]
                                .as_array()
                                .into_iter()
                                .flatten()
                                .filter(|e| e["search"]["mode"] != "outcome")
                                .collect();
                            assert!(matches.is_empty(), "{url} matched {} resources: {bundle}", matches.len());
                        }
                        400 => {
                            reply.expect_outcome(400, reply.json()["issue"][0]["code"].as_str().unwrap());
                            refused += 1;
                        }
                        other => panic!("{url}: {other} {}", String::from_utf8_lossy(&reply.bytes)),
                    }
                }
            }
        }
    }
    assert!(tried > 1_000, "only {tried} searches tried");
    // Nothing was dropped or altered.
    server.get(&format!("Patient/{patient_id}")).await.expect(200);
    let all = server.get(&format!("Observation?subject=Patient/{patient_id}")).await.expect(200);
    assert_eq!(all["entry"].as_array().map(Vec::len), Some(1), "{all}");
    let found = server.get("Patient?family=abbott").await.expect(200);
    assert_eq!(found["entry"].as_array().map(Vec::len), Some(1), "{found}");
    eprintln!("{tried} hostile searches: {} answered 200 with no match, {refused} refused with 400", tried - refused);
}

fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        serializer.append_pair(k, v);
    }
    serializer.finish()
}

/// Ids that try to leave their place: refused as invalid ids, or simply not found; never a
/// file, never another resource.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_traversal_in_ids_reaches_nothing() {
    let server = Server::start(Db::Sqlite).await;
    server.put("Patient/p1", &json!({"resourceType": "Patient", "id": "p1"})).await.expect(201);
    for (path, status, code) in [
        ("Patient/..%2F..%2F..%2Fetc%2Fpasswd", 400, "value"),
        ("Patient/%2e%2e%2fp1", 400, "value"),
        ("Patient/p1%00", 400, "value"),
        ("Patient/p1%2F_history", 400, "value"),
        // (`..` and `.` themselves never arrive: clients resolve dot segments first.)
        ("Patient/...", 404, "not-found"),
        ("Patient/..%2E", 404, "not-found"),
    ] {
        let reply = server.send(server.client.get(format!("{}/{path}", server.base))).await;
        assert_eq!(reply.status, status, "{path}: {}", String::from_utf8_lossy(&reply.bytes));
        reply.expect_outcome(status, code);
    }
    server.get("Patient/p1").await.expect(200);
}

/// Requests whose framing two parsers could read differently are refused, and a request
/// hidden behind one is never answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused() {
    let server = Server::start(Db::Sqlite).await;
    let token = server.token("user/*.cruds", None);
    let smuggled =
        format!("GET /Patient?_count=1 HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\r\n");
    let cases = [
        // Content-Length and Transfer-Encoding together.
        format!(
            "POST /Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/fhir+json\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
             0\r\n\r\n{smuggled}"
        ),
        // Two different Content-Lengths.
        format!(
            "POST /Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/fhir+json\r\nContent-Length: 2\r\nContent-Length: 40\r\n\r\n{{}}{smuggled}"
        ),
        // An obsolete line folding inside a header.
        format!("GET /Patient HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer\r\n {token}\r\n\r\n{smuggled}"),
    ];
    for (n, request) in cases.iter().enumerate() {
        let answer = raw_exchange(&server, request.as_bytes()).await;
        let responses = answer.matches("HTTP/1.1 ").count();
        assert!(answer.starts_with("HTTP/1.1 400"), "case {n}: {answer}");
        assert_eq!(responses, 1, "case {n}: the hidden request was answered: {answer}");
    }
    assert_eq!(server.get("healthz").await.status, 200);
}

/// Sends `request` on a fresh TLS connection (HTTP/1.1) and reads until the server closes it
/// (or 10 s pass).
async fn raw_exchange(server: &Server, request: &[u8]) -> String {
    let mut tls = crate::harness::raw_tls(server).await;
    tls.write_all(request).await.unwrap();
    tls.flush().await.unwrap();
    let mut answer = Vec::new();
    let mut buffer = [0u8; 8192];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => answer.extend_from_slice(&buffer[..n]),
        }
    }
    String::from_utf8_lossy(&answer).into_owned()
}
