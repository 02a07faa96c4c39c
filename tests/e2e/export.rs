//! FHIR Bulk Data export end to end, on both databases: the asynchronous kick-off, status
//! polling, the manifest, NDJSON files compared with what was written (a round trip), the
//! snapshot at the transaction time, `_type` and `_since`, patient and group exports, policy
//! redactions applied to exported data, ownership, cancellation and refusals.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Db, Reply, Server, contains_bytes};
use crate::on_both_databases;
use crate::plugins::{id_from_location, load, policies, with_policies};

const SSN: &str = "http://hl7.org/fhir/sid/us-ssn";

on_both_databases!(bulk_export_round_trips_what_was_written);

/// Kicks off `path` (e.g. `$export?_type=Patient`) and returns the status URL.
async fn kick_off(server: &Server, client: &reqwest::Client, path: &str) -> String {
    let request =
        client.get(server.url(path)).header("prefer", "respond-async").header("accept", "application/fhir+json");
    let reply = server.send(request).await;
    assert_eq!(reply.status, 202, "{path}: {}", String::from_utf8_lossy(&reply.bytes));
    reply.header("content-location").expect("Content-Location").to_owned()
}

/// Polls a status URL until the manifest is ready.
async fn manifest(server: &Server, client: &reqwest::Client, status_url: &str) -> Value {
    for _ in 0..200 {
        let reply = server.send(client.get(status_url)).await;
        match reply.status {
            202 => {
                assert!(reply.header("x-progress").is_some() && reply.header("retry-after").is_some());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            200 => return reply.json(),
            other => panic!("status {other}: {}", String::from_utf8_lossy(&reply.bytes)),
        }
    }
    panic!("the export never completed");
}

/// Every file of a manifest, downloaded: type -> resources.
async fn files(server: &Server, client: &reqwest::Client, manifest: &Value) -> BTreeMap<String, Vec<Value>> {
    let mut out = BTreeMap::new();
    for output in manifest["output"].as_array().unwrap() {
        let reply =
            server.send(client.get(output["url"].as_str().unwrap()).header("accept", "application/fhir+ndjson")).await;
        assert_eq!(reply.status, 200, "{output}");
        assert_eq!(reply.header("content-type"), Some("application/fhir+ndjson"));
        let text = String::from_utf8(reply.bytes.to_vec()).unwrap();
        let resources: Vec<Value> =
            text.lines().map(|l| serde_json::from_str(l).expect("one resource per line")).collect();
        out.insert(output["type"].as_str().unwrap().to_owned(), resources);
    }
    out
}

fn ids(resources: &[Value]) -> Vec<String> {
    let mut ids: Vec<String> = resources.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<String>) -> Vec<String> {
    ids.sort();
    ids
}

async fn bulk_export_round_trips_what_was_written(db: Db) {
    let folder =
        policies("[[binding]]\nplugin = \"redact\"\nresource_types = [\"Patient\"]\ninteractions = [\"search\"]\n");
    let server = Server::launch(db, with_policies(folder.path())).await;
    load(&server, "redact", "redact", "policy", json!({})).await;
    let client = server.client.clone();

    // Three patients with observations, an organization outside any compartment, a group of
    // two of the patients.
    let mut patients = Vec::new();
    let mut observations = Vec::new();
    for n in 0..3 {
        let patient = json!({"resourceType": "Patient", "name": [{"family": format!("Export{n}")}],
            "identifier": [{"system": SSN, "value": format!("999-00-000{n}")}]});
        let id = id_from_location(&server.post("Patient", &patient).await);
        for code in ["8867-4", "8480-6"] {
            let observation = json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": format!("Patient/{id}")}, "valueQuantity": {"value": 60 + n, "unit": "/min"}});
            observations.push(id_from_location(&server.post("Observation", &observation).await));
        }
        patients.push(id);
    }
    let organization = id_from_location(
        &server.post("Organization", &json!({"resourceType": "Organization", "name": "Clinic"})).await,
    );
    let group = json!({"resourceType": "Group", "type": "person", "actual": true, "member": [
        {"entity": {"reference": format!("Patient/{}", patients[0])}},
        {"entity": {"reference": format!("Patient/{}", patients[1])}},
        {"entity": {"reference": format!("Patient/{}", patients[2])}, "inactive": true},
    ]});
    let group_id = id_from_location(&server.post("Group", &group).await);

    // Refusals: no Prefer header, an unsupported parameter, a patient-context token.
    let plain = server.send(client.get(server.url("$export"))).await;
    assert!(plain.expect_outcome(400, "value").contains("Prefer: respond-async"));
    let elements = client.get(server.url("$export?_elements=id")).header("prefer", "respond-async");
    server.send(elements).await.expect_outcome(400, "not-supported");
    for bad_filter in [
        "$export?_type=Patient&_typeFilter=Observation%3Fcode%3D1",
        "$export?_typeFilter=Observation%3Fno-such%3D1",
        "$export?_typeFilter=Observation%3Fcode%3D1%26_count%3D5",
    ] {
        let request = client.get(server.url(bad_filter)).header("prefer", "respond-async");
        server.send(request).await.expect_outcome(400, "value");
    }
    let patient_app = server.client_with(Some(&server.token("patient/*.rs", Some(&patients[0]))));
    let refused = server.send(patient_app.get(server.url("$export")).header("prefer", "respond-async")).await;
    refused.expect_outcome(403, "forbidden");

    // A system export, kicked off before later changes: it shows the data as it stood.
    let status_url = kick_off(&server, &client, "$export").await;
    let mut changed = server.get(&format!("Patient/{}", patients[0])).await.expect(200);
    changed["name"][0]["family"] = json!("Renamed");
    server.put(&format!("Patient/{}", patients[0]), &changed).await.expect(200);
    server.delete(&format!("Observation/{}", observations[0])).await;
    server.post("Patient", &json!({"resourceType": "Patient"})).await.expect(201);
    let manifest_body = manifest(&server, &client, &status_url).await;
    assert_eq!(manifest_body["requiresAccessToken"], true);
    assert!(manifest_body["request"].as_str().unwrap().ends_with("/$export"), "{manifest_body}");
    assert!(manifest_body["transactionTime"].as_str().is_some());
    let exported = files(&server, &client, &manifest_body).await;
    assert_eq!(
        exported.keys().cloned().collect::<Vec<_>>(),
        ["Group", "Observation", "Organization", "Patient"],
        "{manifest_body}"
    );
    assert_eq!(ids(&exported["Patient"]), sorted(patients.clone()), "the patient created later is not in it");
    assert_eq!(ids(&exported["Observation"]), sorted(observations.clone()), "the deletion came later");
    assert_eq!(ids(&exported["Organization"]), [organization.as_str()]);
    assert_eq!(ids(&exported["Group"]), [group_id.as_str()]);
    let first = exported["Patient"].iter().find(|p| p["id"] == patients[0].as_str()).unwrap();
    assert_eq!(
        (first["name"][0]["family"].as_str(), first["meta"]["versionId"].as_str()),
        (Some("Export0"), Some("1"))
    );
    // Round trip: every exported observation is what a read of that version returns.
    for observation in &exported["Observation"] {
        let id = observation["id"].as_str().unwrap();
        let read = server.get(&format!("Observation/{id}/_history/1")).await.expect(200);
        assert_eq!(observation, &read, "Observation/{id}");
    }
    // The redact policy bound to Patient search applies to exported patients.
    let text = serde_json::to_string(&exported["Patient"]).unwrap();
    assert!(!text.contains("999-00-000"), "SSNs are redacted in the export: {text}");

    // _type and _since narrow it.
    let late = json!({"resourceType": "Observation", "status": "final", "code": {"text": "late"},
        "subject": {"reference": format!("Patient/{}", patients[1])}});
    let late_id = id_from_location(&server.post("Observation", &late).await);
    let late_read = server.get(&format!("Observation/{late_id}")).await.expect(200);
    let since = late_read["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    let narrow = kick_off(&server, &client, &format!("$export?_type=Observation,Organization&_since={since}")).await;
    let narrow = files(&server, &client, &manifest(&server, &client, &narrow).await).await;
    assert_eq!(narrow.keys().cloned().collect::<Vec<_>>(), ["Observation"]);
    assert_eq!(ids(&narrow["Observation"]), [late_id.as_str()]);

    // _typeFilter: only the observations its search matches.
    let filter = "$export?_type=Observation&_typeFilter=Observation%3Fcode%3Dhttp%3A%2F%2Floinc.org%7C8480-6";
    let filtered = kick_off(&server, &client, filter).await;
    let filtered = files(&server, &client, &manifest(&server, &client, &filtered).await).await;
    let expected = vec![observations[1].clone(), observations[3].clone(), observations[5].clone()];
    assert_eq!(ids(&filtered["Observation"]), sorted(expected), "the blood pressure codes only");

    // A filter on a name: it works, and the name it searches for is not stored in plaintext.
    let by_name = kick_off(&server, &client, "$export?_type=Patient&_typeFilter=Patient%3Ffamily%3DExport1").await;
    let by_name = files(&server, &client, &manifest(&server, &client, &by_name).await).await;
    assert_eq!(ids(&by_name["Patient"]), [patients[1].as_str()]);
    let raw = server.raw_database_bytes().await;
    assert!(!contains_bytes(&raw, b"Export1"), "the filter's search value is sealed at rest");

    // Patient-level: every compartment, nothing outside them.
    let all_patients = kick_off(&server, &client, "Patient/$export").await;
    let all_patients = files(&server, &client, &manifest(&server, &client, &all_patients).await).await;
    assert_eq!(all_patients.keys().cloned().collect::<Vec<_>>(), ["Observation", "Patient"]);
    assert_eq!(all_patients["Patient"].len(), 4);

    // Group-level: the active members only.
    let members = kick_off(&server, &client, &format!("Group/{group_id}/$export?_type=Patient,Observation")).await;
    let members = files(&server, &client, &manifest(&server, &client, &members).await).await;
    assert_eq!(ids(&members["Patient"]), sorted(patients[..2].to_vec()));
    let member_observations: Vec<String> =
        members["Observation"].iter().map(|o| o["subject"]["reference"].as_str().unwrap().to_owned()).collect();
    assert_eq!(member_observations.len(), 4, "patient 0's one left and patient 1's three: {member_observations:?}");
    assert!(member_observations.iter().all(|r| r != &format!("Patient/{}", patients[2])));
    let missing = server.send(client.get(server.url("Group/nope/$export")).header("prefer", "respond-async")).await;
    missing.expect_outcome(404, "not-found");

    // Only the principal who kicked it off sees the job; cancelling ends it.
    let other = server.client_with(Some(&crate::harness::dev_token_for(
        &server.data_dir,
        "someone-else",
        "user/*.rs",
        None,
        &[],
    )));
    let foreign: Reply = server.send(other.get(&status_url)).await;
    foreign.expect_outcome(404, "not-found");
    let file_url = manifest_body["output"][0]["url"].as_str().unwrap().to_owned();
    server.send(other.get(&file_url)).await.expect_outcome(404, "not-found");
    server.send(client.delete(&status_url)).await.expect(202);
    server.send(client.get(&status_url)).await.expect_outcome(404, "not-found");
    server.send(client.get(&file_url)).await.expect_outcome(404, "not-found");

    // Each step is in the audit log.
    let auditor = server.client_with(Some(&server.token("admin/audit", None)));
    for action in ["operation-export", "export-status", "export-download", "export-cancel"] {
        let found = server.send(auditor.get(server.url(&format!("AuditEvent?subtype={action}")))).await.expect(200);
        assert!(!found["entry"].as_array().unwrap().is_empty(), "{action} is audited");
    }
    // The CapabilityStatement declares the operations.
    let metadata = server.get("metadata").await.expect(200);
    assert!(metadata["rest"][0]["operation"].as_array().unwrap().iter().any(|o| o["name"] == "export"));
    let group_type = metadata["rest"][0]["resource"].as_array().unwrap().iter().find(|r| r["type"] == "Group").unwrap();
    assert!(group_type["operation"].as_array().unwrap().iter().any(|o| o["name"] == "export"));
    // The patient that was renamed after the kick-off reads as renamed now.
    let now = server.get(&format!("Patient/{}", patients[0])).await.expect(200);
    assert_eq!(now["name"][0]["family"], "Renamed");
}
