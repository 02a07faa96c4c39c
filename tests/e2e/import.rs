//! `hearth import` end to end, on both databases: NDJSON and a transaction Bundle loaded into
//! a running server over TLS, bad lines reported with their numbers while the rest loads, a
//! run stopped part-way (`--limit`, then SIGKILL) and resumed without duplicates, and the
//! loaded data exported again and compared (a round trip).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Db, Server, hearth_command, signal};
use crate::on_both_databases;

on_both_databases!(import_loads_reports_resumes_and_round_trips);

fn patient(n: usize) -> Value {
    json!({"resourceType": "Patient", "id": format!("imp-{n:04}"), "active": true,
        "name": [{"family": format!("Importer{n}"), "given": ["Ada"]}], "birthDate": "1970-01-01"})
}

fn observation(n: usize) -> Value {
    json!({"resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/imp-{:04}", n % 120)},
        "effectiveDateTime": "2026-11-01T09:30:00Z", "valueQuantity": {"value": 60 + (n % 40), "unit": "/min"}})
}

fn write_lines(path: &Path, lines: &[String]) {
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

async fn count(server: &Server, query: &str) -> u64 {
    let found = server.get(&format!("{query}&_summary=count")).await.expect(200);
    found["total"].as_u64().unwrap_or_else(|| panic!("{found}"))
}

fn import(server: &Server, input: &Path, extra: &[&str]) -> std::process::Output {
    let token = server.token("user/*.cruds", None);
    let mut args = vec!["import", input.to_str().unwrap(), "--server", &server.base, "--token", &token];
    args.extend(["--cacert", server.ca.to_str().unwrap()]);
    args.extend(extra);
    hearth_command(&args)
}

fn text(output: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

async fn import_loads_reports_resumes_and_round_trips(db: Db) {
    let server = Server::start(db).await;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("load");
    std::fs::create_dir(&input).unwrap();

    // 120 patient lines, two of them bad: line 7 is not JSON, line 12 has an invalid id.
    let mut lines: Vec<String> = (0..120).map(|n| patient(n).to_string()).collect();
    lines[6] = "{\"resourceType\": \"Patient\", \"name\": [".to_owned();
    lines[11] = json!({"resourceType": "Patient", "id": "not a valid id!"}).to_string();
    write_lines(&input.join("01-patients.ndjson"), &lines);
    // 240 observations without ids; line 30 lacks its required status.
    let mut lines: Vec<String> = (0..240).map(|n| observation(n).to_string()).collect();
    let mut no_status = observation(29);
    no_status.as_object_mut().unwrap().remove("status");
    lines[29] = no_status.to_string();
    write_lines(&input.join("02-observations.ndjson"), &lines);
    // A Synthea-style transaction Bundle with urn:uuid references.
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": "urn:uuid:6f1c4a1e-3a53-4d0e-9d51-4a3c2b1d0e01",
         "resource": {"resourceType": "Patient", "name": [{"family": "Synthea"}]},
         "request": {"method": "POST", "url": "Patient"}},
        {"fullUrl": "urn:uuid:6f1c4a1e-3a53-4d0e-9d51-4a3c2b1d0e02",
         "resource": {"resourceType": "Observation", "status": "final", "code": {"text": "bundle"},
                      "subject": {"reference": "urn:uuid:6f1c4a1e-3a53-4d0e-9d51-4a3c2b1d0e01"}},
         "request": {"method": "POST", "url": "Observation"}},
    ]});
    std::fs::write(input.join("03-synthea.json"), bundle.to_string()).unwrap();

    // First run: stops at --limit, after reporting the two bad patient lines.
    let first = import(&server, &input, &["--batch", "50", "--limit", "100"]);
    let said = text(&first);
    assert!(!first.status.success(), "lines were refused, so the run says so: {said}");
    assert!(said.contains("stopped at --limit") && said.contains("2 failed"), "{said}");
    assert_eq!(count(&server, "Patient?active=true").await, 98, "100 lines tried, 2 refused");

    // Second run: continues where the first stopped, and finishes.
    let second = import(&server, &input, &["--batch", "50"]);
    let said = text(&second);
    assert!(said.contains("1 failed") && said.contains("100 already loaded by an earlier run"), "{said}");
    assert_eq!(count(&server, "Patient?active=true").await, 118);
    assert_eq!(count(&server, "Observation?code=8867-4").await, 239);
    // Nothing was written twice.
    let first_patient = server.get("Patient/imp-0000").await.expect(200);
    assert_eq!(first_patient["meta"]["versionId"], "1");
    // The transaction's reference was rewritten to the patient it created.
    let synthea = server.get("Patient?family=Synthea").await.expect(200);
    assert_eq!(synthea["entry"].as_array().map(Vec::len), Some(1), "{synthea}");
    let synthea_id = synthea["entry"][0]["resource"]["id"].as_str().unwrap().to_owned();
    assert_eq!(count(&server, &format!("Observation?subject=Patient/{synthea_id}")).await, 1);

    // The error report names each refused line with the server's (or the parser's) reason.
    let report = std::fs::read_to_string(dir.path().join("load.hearth-import-errors.ndjson")).unwrap();
    let report: Vec<Value> = report.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let where_: Vec<(String, u64)> = report
        .iter()
        .map(|r| {
            (
                Path::new(r["file"].as_str().unwrap()).file_name().unwrap().to_string_lossy().into_owned(),
                r["line"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        where_,
        [
            ("01-patients.ndjson".to_owned(), 7),
            ("01-patients.ndjson".to_owned(), 12),
            ("02-observations.ndjson".to_owned(), 30)
        ]
    );
    assert!(report[0]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap().contains("not valid JSON"));
    assert_eq!(report[1]["status"], 400, "{}", report[1]);
    assert!(report[2]["outcome"]["issue"].to_string().contains("status"), "{}", report[2]);

    // A third run has nothing left to do.
    let third = import(&server, &input, &[]);
    assert!(third.status.success(), "{}", text(&third));
    assert!(text(&third).contains("imported 0 resources"), "{}", text(&third));

    // Killed mid-run, then resumed: every resource exactly once.
    let big = dir.path().join("big.ndjson");
    let lines: Vec<String> = (0..2000)
        .map(|n| json!({"resourceType": "Patient", "id": format!("big-{n:05}"), "gender": "unknown"}).to_string())
        .collect();
    write_lines(&big, &lines);
    let token = server.token("user/*.cruds", None);
    let mut child = Command::new(env!("CARGO_BIN_EXE_hearth"))
        .args(["import", big.to_str().unwrap(), "--server", &server.base, "--token", &token, "--batch", "100"])
        .args(["--cacert", server.ca.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let state = dir.path().join("big.ndjson.hearth-import.json");
    for _ in 0..300 {
        if state.exists() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    signal(child.id(), "KILL");
    let _ = child.wait();
    let resumed = import(&server, &big, &["--batch", "100"]);
    assert!(resumed.status.success(), "{}", text(&resumed));
    assert_eq!(count(&server, "Patient?gender=unknown").await, 2000);

    // Round trip: export what was imported and compare it with the input.
    let client = &server.client;
    let kick = client.get(server.url("Patient/$export?_type=Patient")).header("prefer", "respond-async");
    let kicked = server.send(kick).await;
    assert_eq!(kicked.status, 202);
    let status_url = kicked.header("content-location").unwrap().to_owned();
    let mut manifest = Value::Null;
    for _ in 0..200 {
        let reply = server.send(client.get(&status_url)).await;
        if reply.status == 200 {
            manifest = reply.json();
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = manifest["output"][0]["url"].as_str().unwrap_or_else(|| panic!("{manifest}")).to_owned();
    let file = server.send(client.get(&url)).await;
    let exported: Vec<Value> =
        String::from_utf8_lossy(&file.bytes).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(exported.len(), 118 + 1 + 2000);
    for n in [0usize, 5, 13, 119] {
        let mut original = patient(n);
        let mut found = exported.iter().find(|p| p["id"] == original["id"]).unwrap().clone();
        found.as_object_mut().unwrap().remove("meta");
        original.as_object_mut().unwrap().remove("meta");
        assert_eq!(found, original, "what was imported comes back out");
    }
}
