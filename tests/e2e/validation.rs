//! Resource validation on write and the `$validate` operation, on both databases.

use serde_json::{Value, json};

use crate::harness::{Db, Server};
use crate::on_both_databases;

fn expressions(outcome: &Value) -> Vec<String> {
    outcome["issue"].as_array().unwrap().iter().map(|i| i["expression"][0].as_str().unwrap_or("").to_owned()).collect()
}

async fn invalid_resources_are_refused_with_every_issue(db: Db) {
    let server = Server::start(db).await;
    let observation = json!({"resourceType": "Observation", "status": "done",
        "subject": {"reference": "Patient with spaces"}, "effectiveDateTime": "last tuesday", "note": []});
    let reply = server.post("Observation", &observation).await;
    let outcome = reply.expect(400);
    let at = expressions(&outcome);
    for expected in [
        "Observation.code",
        "Observation.status",
        "Observation.subject.reference",
        "Observation.effectiveDateTime",
        "Observation.note",
    ] {
        assert!(at.contains(&expected.to_owned()), "{expected} not in {at:?}");
    }
    assert!(outcome.to_string().contains("code-invalid"), "{outcome}");
    assert!(!outcome.to_string().contains("last tuesday"), "diagnostics never echo content");
    // Nothing was stored.
    let found = server.get("Observation?_summary=count").await.expect(200);
    assert_eq!(found["total"], 0);
    // Updates, patches and Bundle entries are validated the same way.
    server
        .put("Patient/v1", &json!({"resourceType": "Patient", "id": "v1", "gender": "F"}))
        .await
        .expect_outcome(400, "code-invalid");
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Encounter", "status": "finished"}, "request": {"method": "POST", "url": "Encounter"}}]});
    let message = server.post("", &bundle).await.expect_outcome(400, "required");
    assert!(message.contains("Bundle.entry[1]") && message.contains("Encounter.class"), "{message}");
    server.put("Patient/v2", &json!({"resourceType": "Patient", "id": "v2"})).await.expect(201);
    let request = server
        .client
        .patch(server.url("Patient/v2"))
        .header("content-type", "application/json-patch+json")
        .body(json!([{"op": "add", "path": "/birthDate", "value": "1970-13-45"}]).to_string());
    server.send(request).await.expect_outcome(400, "value");
}

async fn validate_operation_checks_without_storing(db: Db) {
    let server = Server::start(db).await;
    let ok = server
        .post(
            "Observation/$validate",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        )
        .await
        .expect(200);
    assert_eq!(ok["issue"][0]["severity"], "information", "{ok}");
    let bad = json!({"resourceType": "Parameters", "parameter": [{"name": "resource", "resource": {"resourceType": "MedicationRequest", "status": "active"}}]});
    let outcome = server.post("MedicationRequest/$validate", &bad).await.expect(200);
    let at = expressions(&outcome);
    for expected in ["MedicationRequest.intent", "MedicationRequest.medication", "MedicationRequest.subject"] {
        assert!(at.contains(&expected.to_owned()), "{expected} not in {at:?}");
    }
    assert_eq!(server.get("MedicationRequest?_summary=count").await.expect(200)["total"], 0);
    let reader = server.client_with(Some(&server.token("user/*.rs", None)));
    let reply = server
        .send(
            reader.post(server.url("Observation/$validate")).header("content-type", "application/fhir+json").body("{}"),
        )
        .await;
    reply.expect_outcome(403, "forbidden");
}

on_both_databases!(invalid_resources_are_refused_with_every_issue, validate_operation_checks_without_storing);
