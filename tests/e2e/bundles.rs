//! Transaction and batch Bundles (`POST /`) and the conditional interactions they share
//! (If-None-Exist, `PUT /{type}?search`, `DELETE /{type}?search`), on both databases.

use serde_json::{Value, json};

use crate::harness::{Db, Launch, Server};
use crate::on_both_databases;

const MRN: &str = "urn:oid:1.2.36.146.595.217.0.1";

fn transaction(entries: Vec<Value>) -> Value {
    json!({"resourceType": "Bundle", "type": "transaction", "entry": entries})
}

fn ids(server_reply: &Value) -> Vec<String> {
    server_reply["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == "match")
        .map(|e| e["resource"]["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn a_transaction_links_its_entries_and_answers_in_order(db: Db) {
    let server = Server::start(db).await;
    let org = json!({"resourceType": "Organization", "identifier": [{"system": "urn:org", "value": "riverside"}], "name": "Riverside"});
    let bundle = transaction(vec![
        json!({"fullUrl": "urn:uuid:0b5e3a46-4f2b-4c31-9d1b-8f0f6f0a0001",
               "resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "TX-1"}],
                            "managingOrganization": {"reference": "urn:uuid:0b5e3a46-4f2b-4c31-9d1b-8f0f6f0a0003"}},
               "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
                            "subject": {"reference": "urn:uuid:0b5e3a46-4f2b-4c31-9d1b-8f0f6f0a0001"}},
               "request": {"method": "POST", "url": "Observation"}}),
        json!({"fullUrl": "urn:uuid:0b5e3a46-4f2b-4c31-9d1b-8f0f6f0a0003", "resource": org,
               "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|riverside"}}),
        json!({"request": {"method": "GET", "url": "Patient?identifier=TX-1"}}),
    ]);
    let reply = server.post("", &bundle).await.expect(200);
    assert_eq!(reply["type"], "transaction-response");
    let entries = reply["entry"].as_array().unwrap();
    assert_eq!(entries.len(), 4);
    for entry in &entries[..3] {
        assert_eq!(entry["response"]["status"], "201 Created", "{entry}");
        assert!(entry["response"]["location"].as_str().unwrap().ends_with("/_history/1"));
    }
    let patient_id = entries[0]["resource"]["id"].as_str().unwrap();
    let org_id = entries[2]["resource"]["id"].as_str().unwrap();
    assert_eq!(entries[1]["resource"]["subject"]["reference"], format!("Patient/{patient_id}"));
    assert_eq!(entries[0]["resource"]["managingOrganization"]["reference"], format!("Organization/{org_id}"));
    // The GET ran after the writes and saw them.
    assert_eq!(ids(&entries[3]["resource"]), [patient_id]);
    // The stored observation carries the rewritten reference and is searchable by it.
    let found = server.get(&format!("Observation?subject=Patient/{patient_id}")).await.expect(200);
    assert_eq!(ids(&found).len(), 1);

    // Sent again: the conditional create finds the organisation instead of creating another.
    let again = transaction(vec![
        json!({"resource": org, "request": {"method": "POST", "url": "Organization", "ifNoneExist": "identifier=urn:org|riverside"}}),
    ]);
    let reply = server.post("", &again).await.expect(200);
    assert_eq!(reply["entry"][0]["response"]["status"], "200 OK");
    assert_eq!(reply["entry"][0]["resource"]["id"], org_id);
    assert_eq!(ids(&server.get("Organization?identifier=urn:org|riverside").await.expect(200)).len(), 1);

    // Conditional update and delete resolve through search.
    let update = transaction(vec![json!({
        "resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "TX-1"}], "gender": "female"},
        "request": {"method": "PUT", "url": format!("Patient?identifier={MRN}|TX-1")}})]);
    let reply = server.post("", &update).await.expect(200);
    assert_eq!(reply["entry"][0]["response"]["status"], "200 OK", "{reply}");
    assert_eq!(server.get(&format!("Patient/{patient_id}")).await.expect(200)["gender"], "female");
    let delete =
        transaction(vec![json!({"request": {"method": "DELETE", "url": "Organization?identifier=urn:org|riverside"}})]);
    server.post("", &delete).await.expect(200);
    server.get(&format!("Organization/{org_id}")).await.expect_outcome(410, "deleted");
}

async fn a_failed_entry_leaves_nothing_behind(db: Db) {
    let server = Server::start(db).await;
    let existing = server.put("Patient/keeper", &json!({"resourceType": "Patient", "id": "keeper"})).await;
    existing.expect(201);
    let bundle = transaction(vec![
        json!({"resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "ATOM-1"}]},
               "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                            "identifier": [{"value": "ATOM-2"}]},
               "request": {"method": "POST", "url": "Observation"}}),
        json!({"request": {"method": "DELETE", "url": "Patient/keeper"}}),
        // The last entry fails inside the database transaction: a stale If-Match.
        json!({"resource": {"resourceType": "Patient", "id": "keeper", "gender": "male"},
               "request": {"method": "PUT", "url": "Patient/keeper", "ifMatch": "W/\"7\""}}),
    ]);
    let message = server.post("", &bundle).await.expect_outcome(412, "conflict");
    assert!(message.contains("Bundle.entry[3]"), "{message}");
    assert!(ids(&server.get("Patient?identifier=ATOM-1").await.expect(200)).is_empty());
    assert!(ids(&server.get("Observation?identifier=ATOM-2").await.expect(200)).is_empty());
    server.get("Patient/keeper").await.expect(200);
    let history = server.get("Patient/keeper/_history").await.expect(200);
    assert_eq!(history["total"], 1, "the delete was rolled back too");

    // A bad entry is refused before anything runs, naming the entry.
    let bundle = transaction(vec![
        json!({"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}),
        json!({"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patiënt"}}),
    ]);
    let reply = server.post("", &bundle).await;
    assert_eq!(reply.status, 404, "{}", String::from_utf8_lossy(&reply.bytes));
    assert!(reply.json()["issue"][0]["diagnostics"].as_str().unwrap().contains("Bundle.entry[1]"));
    let bundle = transaction(vec![
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
        "subject": {"reference": "urn:uuid:00000000-0000-0000-0000-00000000dead"}}, "request": {"method": "POST", "url": "Observation"}}),
    ]);
    server.post("", &bundle).await.expect_outcome(400, "not-found");
}

/// Transactions whose entries are all different resources are written with a few multi-row
/// statements (store/batch.rs): new and existing resources, their data keys, versions and
/// search index rows, and a precondition failing in the middle of them.
async fn a_transaction_of_many_resources_is_written_together_and_atomically(db: Db) {
    let server = Server::start(db).await;
    let put = |n: usize, family: &str| {
        json!({"resource": {"resourceType": "Patient", "id": format!("many-{n}"),
                            "identifier": [{"system": MRN, "value": format!("MANY-{n}")}],
                            "name": [{"family": family}]},
               "request": {"method": "PUT", "url": format!("Patient/many-{n}")}})
    };
    // 30 new patients, each in its own compartment (a new data key each).
    let created = server.post("", &transaction((0..30).map(|n| put(n, &format!("First{n}"))).collect())).await;
    let created = created.expect(200);
    for entry in created["entry"].as_array().unwrap() {
        assert_eq!(entry["response"]["status"], "201 Created", "{entry}");
    }
    // All 30 updated, plus 5 new observations of the first: existing heads move, old index
    // rows go.
    let mut entries: Vec<Value> = (0..30).map(|n| put(n, &format!("Second{n}"))).collect();
    entries.extend((0..5).map(|k| {
        json!({"resource": {"resourceType": "Observation", "status": "final", "code": {"text": format!("obs {k}")},
                            "subject": {"reference": "Patient/many-0"}},
               "request": {"method": "POST", "url": "Observation"}})
    }));
    let updated = server.post("", &transaction(entries)).await.expect(200);
    let statuses: Vec<&str> =
        updated["entry"].as_array().unwrap().iter().map(|e| e["response"]["status"].as_str().unwrap()).collect();
    assert_eq!(statuses[..30], ["200 OK"; 30]);
    assert_eq!(statuses[30..], ["201 Created"; 5]);
    for n in [0, 7, 29] {
        let patient = server.get(&format!("Patient/many-{n}")).await.expect(200);
        assert_eq!(patient["meta"]["versionId"], "2");
        assert_eq!(patient["name"][0]["family"], format!("Second{n}"));
        assert_eq!(ids(&server.get(&format!("Patient?family=Second{n}")).await.expect(200)), [format!("many-{n}")]);
        assert!(ids(&server.get(&format!("Patient?family=First{n}")).await.expect(200)).is_empty());
    }
    assert_eq!(ids(&server.get("Observation?subject=Patient/many-0").await.expect(200)).len(), 5);

    // A stale If-Match on the 14th of 20 updates: nothing of the 20 is written.
    let entries: Vec<Value> = (0..20)
        .map(|n| {
            let mut entry = put(n, &format!("Third{n}"));
            entry["request"]["ifMatch"] = json!(if n == 13 { "W/\"1\"" } else { "W/\"2\"" });
            entry
        })
        .collect();
    let message = server.post("", &transaction(entries)).await.expect_outcome(412, "conflict");
    assert!(message.contains("Bundle.entry[13]"), "{message}");
    for n in [0, 13, 19] {
        let patient = server.get(&format!("Patient/many-{n}")).await.expect(200);
        assert_eq!(patient["meta"]["versionId"], "2", "rolled back");
        assert_eq!(ids(&server.get(&format!("Patient?family=Second{n}")).await.expect(200)), [format!("many-{n}")]);
        assert!(ids(&server.get(&format!("Patient?family=Third{n}")).await.expect(200)).is_empty());
    }
}

async fn a_batch_answers_each_entry(db: Db) {
    let server = Server::launch(
        db,
        Launch { extra_args: vec!["--max-bundle-entries".into(), "3".into()], ..Default::default() },
    )
    .await;
    let batch = json!({"resourceType": "Bundle", "type": "batch", "entry": [
        {"resource": {"resourceType": "Patient", "gender": "other"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
        {"resource": {"resourceType": "Observation", "id": "o2"}, "request": {"method": "PUT", "url": "Observation/o1"}},
    ]});
    let reply = server.post("", &batch).await.expect(200);
    assert_eq!(reply["type"], "batch-response");
    let entries = reply["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created");
    assert_eq!(entries[1]["response"]["status"], "404 Not Found");
    assert!(entries[1]["response"]["outcome"]["issue"][0]["diagnostics"].as_str().unwrap().contains("Bundle.entry[1]"));
    assert!(entries[2]["response"]["status"].as_str().unwrap().starts_with("400"), "{}", entries[2]);
    // Over the configured limit: refused whole, with what to do.
    let mut big = batch.clone();
    big["entry"].as_array_mut().unwrap().push(json!({"request": {"method": "GET", "url": "Patient"}}));
    let message = server.post("", &big).await.expect_outcome(400, "too-costly");
    assert!(message.contains("at most 3"), "{message}");
    server.post("", &json!({"resourceType": "Bundle", "type": "collection"})).await.expect_outcome(400, "invalid");
}

async fn conditional_interactions(db: Db) {
    let server = Server::start(db).await;
    let patient = json!({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "C-1"}]});
    let condition = [("if-none-exist", "identifier=urn:oid:1.2.36.146.595.217.0.1|C-1")];
    let created = server.post_with("Patient", &patient, &condition).await.expect(201);
    let id = created["id"].as_str().unwrap().to_owned();
    // The same create again finds it: 200 with the existing resource, nothing new.
    let found = server.post_with("Patient", &patient, &condition).await.expect(200);
    assert_eq!(found["id"], id.as_str());
    assert_eq!(ids(&server.get("Patient?identifier=C-1").await.expect(200)), std::slice::from_ref(&id));

    // Conditional update: one match is updated in place; none creates.
    let mut update = patient.clone();
    update["gender"] = json!("male");
    let updated = server.put(&format!("Patient?identifier={MRN}|C-1"), &update).await.expect(200);
    assert_eq!((updated["id"].as_str(), updated["meta"]["versionId"].as_str()), (Some(id.as_str()), Some("2")));
    let fresh = json!({"resourceType": "Patient", "identifier": [{"system": MRN, "value": "C-2"}]});
    let made = server.put(&format!("Patient?identifier={MRN}|C-2"), &fresh).await.expect(201);
    assert_ne!(made["id"], id.as_str());

    // Several matches: 412, nothing changed.
    server.post("Patient", &json!({"resourceType": "Patient", "gender": "male"})).await.expect(201);
    server.put("Patient?gender=male", &json!({"resourceType": "Patient"})).await.expect_outcome(412, "conflict");
    server.delete("Patient?gender=male").await.expect_outcome(412, "conflict");
    server.post_with("Patient", &patient, &[("if-none-exist", "gender=male")]).await.expect_outcome(412, "conflict");

    // Conditional delete of the one match; then nothing matches.
    server.delete(&format!("Patient?identifier={MRN}|C-1")).await.expect(200);
    server.get(&format!("Patient/{id}")).await.expect_outcome(410, "deleted");
    server.delete(&format!("Patient?identifier={MRN}|C-1")).await.expect_outcome(404, "not-found");
    // A condition must say something.
    server.delete("Patient").await.expect_outcome(400, "required");
}

async fn patch_applies_a_json_patch(db: Db) {
    let server = Server::start(db).await;
    server
        .put("Patient/pt", &json!({"resourceType": "Patient", "id": "pt", "active": true, "name": [{"family": "Orr"}]}))
        .await
        .expect(201);
    let patch = |ops: Value, headers: Vec<(&'static str, String)>| {
        let mut request =
            server.client.patch(server.url("Patient/pt")).header("content-type", "application/json-patch+json");
        for (name, value) in headers {
            request = request.header(name, value);
        }
        server.send(request.body(ops.to_string()))
    };
    let ops = json!([{"op": "test", "path": "/active", "value": true},
                     {"op": "replace", "path": "/active", "value": false},
                     {"op": "add", "path": "/name/0/given", "value": ["Ida"]}]);
    let patched = patch(ops, vec![]).await.expect(200);
    assert_eq!((patched["active"].as_bool(), patched["meta"]["versionId"].as_str()), (Some(false), Some("2")));
    assert_eq!(server.get("Patient?given=ida").await.expect(200)["entry"][0]["resource"]["id"], "pt");
    // A failing test op, a stale If-Match, or a changed id: nothing is written.
    patch(json!([{"op": "test", "path": "/active", "value": true}]), vec![]).await.expect_outcome(422, "invalid");
    patch(json!([{"op": "replace", "path": "/active", "value": true}]), vec![("if-match", "W/\"1\"".into())])
        .await
        .expect_outcome(412, "conflict");
    patch(json!([{"op": "replace", "path": "/id", "value": "other"}]), vec![]).await.expect_outcome(422, "invalid");
    assert_eq!(server.get("Patient/pt").await.expect(200)["meta"]["versionId"], "2");
    let missing = server
        .send(
            server
                .client
                .patch(server.url("Patient/none"))
                .header("content-type", "application/json-patch+json")
                .body("[]"),
        )
        .await;
    missing.expect_outcome(404, "not-found");
}

/// What the official R4 examples showed the server got wrong: a nested Bundle's own
/// references, `ifNoneExist` with its type, absolute URLs on this server, operation entries, a
/// search entry matching nothing, `start` that is a code, a code that is a non-breaking space.
async fn what_the_r4_examples_taught(db: Db) {
    let server = Server::start(db).await;
    let document = json!({"resourceType": "Bundle", "type": "document", "entry": [
        {"fullUrl": "urn:uuid:9a2b1c3d-0000-4000-8000-000000000001",
         "resource": {"resourceType": "Composition", "status": "final", "type": {"text": "note"}, "date": "2024", "title": "t",
                      "author": [{"reference": "urn:uuid:9a2b1c3d-0000-4000-8000-000000000002"}]}},
        {"fullUrl": "urn:uuid:9a2b1c3d-0000-4000-8000-000000000002", "resource": {"resourceType": "Practitioner"}}]});
    let base = server.base.trim_end_matches('/').to_owned();
    let reply = server
        .post("", &transaction(vec![
            json!({"resource": document, "request": {"method": "POST", "url": "Bundle"}}),
            json!({"resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "EX-1"}]},
                   "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("Patient?identifier={MRN}|EX-1")}}),
            json!({"resource": {"resourceType": "GraphDefinition", "name": "g", "status": "draft", "start": "Patient"},
                   "request": {"method": "PUT", "url": format!("{base}/GraphDefinition/g1")}}),
            json!({"resource": {"resourceType": "Patient", "gender": "other", "language": "\u{a0}"},
                   "request": {"method": "POST", "url": "Patient"}}),
            json!({"request": {"method": "GET", "url": "Patient?identifier=urn:none|nothing"}}),
        ]))
        .await
        .expect(200);
    let entries = reply["entry"].as_array().unwrap();
    assert_eq!(entries[0]["response"]["status"], "201 Created", "{reply}");
    assert_eq!(
        entries[0]["resource"]["entry"][0]["resource"]["author"][0]["reference"],
        "urn:uuid:9a2b1c3d-0000-4000-8000-000000000002",
        "a nested Bundle's references are its own"
    );
    assert_eq!(entries[2]["response"]["status"], "201 Created");
    assert_eq!(entries[4]["response"]["status"], "200 OK");
    assert_eq!(ids(&entries[4]["resource"]).len(), 0, "a search matching nothing is a success");
    // The conditional create with its type finds the patient the second time.
    let again = transaction(vec![
        json!({"resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": "EX-1"}]},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": format!("Patient?identifier={MRN}|EX-1")}}),
    ]);
    assert_eq!(server.post("", &again).await.expect(200)["entry"][0]["response"]["status"], "200 OK");
    // An operation entry: a clear refusal.
    let operation = transaction(vec![json!({"resource": {"resourceType": "Parameters"},
        "request": {"method": "POST", "url": "ValueSet/$lookup"}})]);
    let message = server.post("", &operation).await.expect_outcome(400, "not-supported");
    assert!(message.contains("$lookup"), "{message}");
    let elsewhere = transaction(vec![json!({"resource": {"resourceType": "Patient"},
        "request": {"method": "PUT", "url": "https://elsewhere.example/fhir/Patient/x"}})]);
    server.post("", &elsewhere).await.expect_outcome(400, "not-supported");
}

on_both_databases!(
    what_the_r4_examples_taught,
    patch_applies_a_json_patch,
    conditional_interactions,
    a_transaction_links_its_entries_and_answers_in_order,
    a_failed_entry_leaves_nothing_behind,
    a_transaction_of_many_resources_is_written_together_and_atomically,
    a_batch_answers_each_entry
);
