//! Create, read, vread, update (and update-as-create), delete and instance history.

use serde_json::json;

use crate::harness::{Db, Server};
use crate::on_both_databases;

on_both_databases!(
    create_read_update_delete_round_trip,
    update_as_create_with_client_id,
    history_pages_and_since,
    server_owns_id_and_meta,
    prefer_return_and_conditional_read,
    decimals_keep_their_precision
);

/// FHIR decimals keep their precision: `1.50` is stored and served as `1.50`, not `1.5`, and
/// still matches a numeric search.
async fn decimals_keep_their_precision(db: Db) {
    let server = Server::start(db).await;
    let body = br#"{"resourceType":"Observation","status":"final","code":{"text":"glucose"},"valueQuantity":{"value":1.50,"unit":"mg/dL"},"component":[{"code":{"text":"trace"},"valueQuantity":{"value":0.000100}},{"code":{"text":"big"},"valueQuantity":{"value":12345678901234567890.5}}]}"#;
    let request = server
        .client
        .post(server.url("Observation"))
        .header("content-type", "application/fhir+json")
        .body(body.to_vec());
    let created = server.send(request).await;
    let id = created.expect(201)["id"].as_str().unwrap().to_owned();
    let read = server.get(&format!("Observation/{id}")).await;
    read.expect(200);
    let text = String::from_utf8_lossy(&read.bytes);
    for written in [r#""value":1.50,"#, r#""value":0.000100}"#, r#""value":12345678901234567890.5}"#] {
        assert!(text.contains(written), "{written} not kept in {text}");
    }
    for query in ["value-quantity=1.5", "value-quantity=1.50", "value-quantity=gt1.4"] {
        let found = server.get(&format!("Observation?{query}")).await.expect(200);
        let ids: Vec<&str> =
            found["entry"].as_array().into_iter().flatten().filter_map(|e| e["resource"]["id"].as_str()).collect();
        assert_eq!(ids, [id.as_str()], "{query}: {found}");
    }
    // Out of any float's range: refused, not stored.
    let request =
        server.client.post(server.url("Observation")).header("content-type", "application/fhir+json").body(
            r#"{"resourceType":"Observation","status":"final","code":{"text":"x"},"valueQuantity":{"value":1e400}}"#,
        );
    server.send(request).await.expect_outcome(400, "structure");
}

async fn create_read_update_delete_round_trip(db: Db) {
    let server = Server::start(db).await;
    let patient = json!({
        "resourceType": "Patient",
        "name": [{"family": "Quillfeather", "given": ["Ottoline"]}],
        "birthDate": "1961-04-02"
    });
    let created = server.post("Patient", &patient).await;
    let body = created.expect(201);
    let id = body["id"].as_str().expect("server-assigned id").to_owned();
    assert_eq!(body["meta"]["versionId"], "1");
    assert!(body["meta"]["lastUpdated"].as_str().unwrap().ends_with('Z'));
    assert_eq!(body["name"][0]["family"], "Quillfeather");
    assert_eq!(created.header("etag"), Some("W/\"1\""));
    assert_eq!(created.header("location"), Some(server.url(&format!("Patient/{id}/_history/1")).as_str()));
    assert!(created.header("last-modified").is_some());
    assert!(created.header("content-type").unwrap().starts_with("application/fhir+json"));

    let read = server.get(&format!("Patient/{id}")).await;
    assert_eq!(read.expect(200), body, "a read returns exactly what the create returned");
    assert_eq!(read.header("etag"), Some("W/\"1\""));

    let mut changed = body.clone();
    changed["active"] = json!(true);
    let updated = server
        .put_with(&format!("Patient/{id}"), &changed, &[("content-type", "application/json"), ("if-match", "W/\"1\"")])
        .await;
    let v2 = updated.expect(200);
    assert_eq!(updated.header("etag"), Some("W/\"2\""));
    assert!(updated.header("location").is_none(), "only creates carry Location");
    assert_eq!(v2["meta"]["versionId"], "2");
    assert_eq!(v2["active"], true);
    assert!(v2["meta"]["lastUpdated"].as_str() > body["meta"]["lastUpdated"].as_str());

    // vread sees both versions as they were.
    assert_eq!(server.get(&format!("Patient/{id}/_history/1")).await.expect(200), body);
    assert_eq!(server.get(&format!("Patient/{id}/_history/2")).await.expect(200), v2);
    server.get(&format!("Patient/{id}/_history/3")).await.expect_outcome(404, "not-found");

    let deleted = server.delete(&format!("Patient/{id}")).await;
    let outcome = deleted.expect(200);
    assert_eq!(outcome["resourceType"], "OperationOutcome");
    assert_eq!(deleted.header("etag"), Some("W/\"3\""));
    server.get(&format!("Patient/{id}")).await.expect_outcome(410, "deleted");
    server.get(&format!("Patient/{id}/_history/3")).await.expect_outcome(410, "deleted");
    // Earlier versions stay readable by version.
    assert_eq!(server.get(&format!("Patient/{id}/_history/2")).await.expect(200), v2);
    // Deleting again is harmless and writes nothing.
    server.delete(&format!("Patient/{id}")).await.expect(200);

    let history = server.get(&format!("Patient/{id}/_history")).await.expect(200);
    assert_eq!(history["resourceType"], "Bundle");
    assert_eq!(history["type"], "history");
    assert_eq!(history["total"], 3);
    let entries = history["entry"].as_array().unwrap();
    let methods: Vec<&str> = entries.iter().map(|e| e["request"]["method"].as_str().unwrap()).collect();
    assert_eq!(methods, ["DELETE", "PUT", "POST"], "newest first");
    assert!(entries[0].get("resource").is_none(), "a deletion has no resource");
    assert_eq!(entries[1]["resource"], v2);
    assert_eq!(entries[2]["resource"], body);
    assert_eq!(entries[2]["response"]["etag"], "W/\"1\"");
    assert_eq!(entries[2]["fullUrl"], server.url(&format!("Patient/{id}")));

    // Updating a deleted resource brings it back as a new version.
    let mut revived = v2.clone();
    revived["active"] = json!(false);
    let back = server.put(&format!("Patient/{id}"), &revived).await;
    assert_eq!(back.expect(201)["meta"]["versionId"], "4");
    assert_eq!(server.get(&format!("Patient/{id}")).await.expect(200)["active"], false);

    // No resource content reaches the log.
    let log = server.log();
    for phi in ["Quillfeather", "Ottoline", "1961-04-02"] {
        assert!(!log.contains(phi), "the server log contains '{phi}'");
    }
}

async fn update_as_create_with_client_id(db: Db) {
    let server = Server::start(db).await;
    let obs = json!({"resourceType": "Observation", "id": "bp-1", "status": "final", "code": {"text": "BP"}});
    let created = server.put("Observation/bp-1", &obs).await;
    assert_eq!(created.expect(201)["id"], "bp-1");
    assert_eq!(created.header("location"), Some(server.url("Observation/bp-1/_history/1").as_str()));
    let again = server.put("Observation/bp-1", &obs).await;
    assert_eq!(again.expect(200)["meta"]["versionId"], "2");
    // The same id under another type is another resource.
    let other = json!({"resourceType": "Condition", "id": "bp-1", "subject": {"reference": "Patient/p1"}});
    assert_eq!(server.put("Condition/bp-1", &other).await.expect(201)["meta"]["versionId"], "1");
}

async fn history_pages_and_since(db: Db) {
    let server = Server::start(db).await;
    let mut stamps = Vec::new();
    for n in 0..5 {
        let body = server.put("Patient/paged", &json!({"resourceType": "Patient", "id": "paged", "gender": if n % 2 == 0 { "female" } else { "male" }})).await;
        stamps.push(body.expect(if n == 0 { 201 } else { 200 })["meta"]["lastUpdated"].as_str().unwrap().to_owned());
    }
    let mut versions = Vec::new();
    let mut next = Some(server.url("Patient/paged/_history?_count=2"));
    let mut pages = 0;
    while let Some(url) = next {
        let page = server.send(server.client.get(&url)).await.expect(200);
        assert_eq!(page["total"], 5);
        pages += 1;
        for entry in page["entry"].as_array().unwrap() {
            versions.push(entry["resource"]["meta"]["versionId"].as_str().unwrap().to_owned());
        }
        assert!(page["entry"].as_array().unwrap().len() <= 2);
        next = page["link"]
            .as_array()
            .unwrap()
            .iter()
            .find(|l| l["relation"] == "next")
            .map(|l| l["url"].as_str().unwrap().to_owned());
    }
    assert_eq!(pages, 3);
    assert_eq!(versions, ["5", "4", "3", "2", "1"]);

    // _since keeps versions at or after the instant.
    let since = &stamps[3];
    let url = format!("Patient/paged/_history?_since={}", since.replace('+', "%2B"));
    let page = server.get(&url).await.expect(200);
    assert_eq!(page["total"], 2);
    let ids: Vec<&str> = page["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["meta"]["versionId"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["5", "4"]);

    server.get("Patient/paged/_history?_count=0").await.expect_outcome(400, "value");
    server.get("Patient/paged/_history?_count=5000").await.expect_outcome(400, "value");
    server.get("Patient/paged/_history?_since=yesterday").await.expect_outcome(400, "value");
    server.get("Patient/nobody/_history").await.expect_outcome(404, "not-found");
}

async fn server_owns_id_and_meta(db: Db) {
    let server = Server::start(db).await;
    let sent = json!({
        "resourceType": "Patient",
        "id": "chosen-by-client",
        "meta": {"versionId": "42", "lastUpdated": "2001-01-01T00:00:00Z", "tag": [{"system": "urn:t", "code": "vip"}]},
        "active": true
    });
    let created = server.post("Patient", &sent).await.expect(201);
    assert_ne!(created["id"], "chosen-by-client", "a create ignores the client's id");
    assert_eq!(created["meta"]["versionId"], "1");
    assert_ne!(created["meta"]["lastUpdated"], "2001-01-01T00:00:00Z");
    assert_eq!(created["meta"]["tag"][0]["code"], "vip", "other meta elements are kept");
    let keys: Vec<&String> = created.as_object().unwrap().keys().collect();
    assert_eq!(&keys[..3], ["resourceType", "id", "meta"]);

    // Concurrent creates get distinct ids.
    let creates = (0..20).map(|_| server.post("Patient", &json!({"resourceType": "Patient"})));
    let replies = futures::future::join_all(creates).await;
    let mut ids: Vec<String> = replies.iter().map(|r| r.expect(201)["id"].as_str().unwrap().to_owned()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 20);
}

async fn prefer_return_and_conditional_read(db: Db) {
    let server = Server::start(db).await;
    let class = json!({"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"});
    let planned = json!({"resourceType": "Encounter", "status": "planned", "class": class});
    let minimal = server.post_with("Encounter", &planned, &[("prefer", "return=minimal")]).await;
    assert_eq!(minimal.status, 201);
    assert!(minimal.bytes.is_empty());
    let location = minimal.header("location").unwrap().to_owned();
    let id = location.split('/').rev().nth(2).unwrap().to_owned();

    let arrived = json!({"resourceType": "Encounter", "id": id, "status": "arrived", "class": class});
    let outcome = server.put_with(&format!("Encounter/{id}"), &arrived, &[("prefer", "return=OperationOutcome")]).await;
    assert_eq!(outcome.expect(200)["resourceType"], "OperationOutcome");

    let not_modified =
        server.send(server.client.get(server.url(&format!("Encounter/{id}"))).header("if-none-match", "W/\"2\"")).await;
    assert_eq!(not_modified.status, 304);
    assert_eq!(not_modified.header("etag"), Some("W/\"2\""));
    let stale =
        server.send(server.client.get(server.url(&format!("Encounter/{id}"))).header("if-none-match", "W/\"1\"")).await;
    assert_eq!(stale.expect(200)["status"], "arrived");
}
