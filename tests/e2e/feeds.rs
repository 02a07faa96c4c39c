//! `Patient/{id}/$everything` and type- and system-level history, on both databases.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{Db, Server};
use crate::on_both_databases;

fn entry_refs(bundle: &Value) -> Vec<String> {
    bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| {
            let r = &e["resource"];
            Some(format!("{}/{}", r["resourceType"].as_str()?, r["id"].as_str()?))
        })
        .collect()
}

/// Follows `next` links; returns every entry's `Type/id` in order.
async fn all_pages(server: &Server, path: &str) -> Vec<String> {
    let mut url = server.url(path);
    let mut out = Vec::new();
    for _ in 0..100 {
        let bundle = server.send(server.client.get(&url)).await.expect(200);
        out.extend(entry_refs(&bundle));
        match bundle["link"].as_array().and_then(|l| l.iter().find(|l| l["relation"] == "next")) {
            Some(next) => url = next["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    out
}

async fn everything_returns_the_whole_compartment(db: Db) {
    let server = Server::start(db).await;
    let mut expected = BTreeSet::new();
    let mut others = BTreeSet::new();
    for (n, patient) in ["ev-a", "ev-b"].iter().enumerate() {
        server.put(&format!("Patient/{patient}"), &json!({"resourceType": "Patient", "id": patient})).await.expect(201);
        let mut mine = BTreeSet::from([format!("Patient/{patient}")]);
        for i in 0..(4 + n) {
            let obs = server
                .post(
                    "Observation",
                    &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": format!("Patient/{patient}")}}),
                )
                .await
                .expect(201);
            mine.insert(format!("Observation/{}", obs["id"].as_str().unwrap()));
            if i == 0 {
                let c = server
                    .post(
                        "Condition",
                        &json!({"resourceType": "Condition", "subject": {"reference": format!("Patient/{patient}")}}),
                    )
                    .await
                    .expect(201);
                mine.insert(format!("Condition/{}", c["id"].as_str().unwrap()));
            }
        }
        if n == 0 { expected = mine } else { others = mine }
    }
    server
        .post("Organization", &json!({"resourceType": "Organization", "name": "not in any compartment"}))
        .await
        .expect(201);
    let got = all_pages(&server, "Patient/ev-a/$everything?_count=2").await;
    assert_eq!(got.len(), expected.len(), "every record once: {got:?}");
    assert_eq!(got.into_iter().collect::<BTreeSet<_>>(), expected);
    let only = all_pages(&server, "Patient/ev-b/$everything?_type=Condition").await;
    assert_eq!(only.len(), 1);
    assert!(others.contains(&only[0]));
    // A patient-scoped token reaches its own patient only.
    let token = server.token("patient/*.rs", Some("ev-b"));
    let client = server.client_with(Some(&token));
    server.send(client.get(server.url("Patient/ev-b/$everything"))).await.expect(200);
    server.send(client.get(server.url("Patient/ev-a/$everything"))).await.expect_outcome(404, "not-found");
    server.get("Patient/nobody/$everything").await.expect_outcome(404, "not-found");
}

async fn type_and_system_history(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/h1", &json!({"resourceType": "Patient", "id": "h1"})).await.expect(201);
    server.put("Patient/h1", &json!({"resourceType": "Patient", "id": "h1", "active": true})).await.expect(200);
    let since = server.get("Patient/h1").await.expect(200)["meta"]["lastUpdated"].as_str().unwrap().to_owned();
    server.put("Patient/h2", &json!({"resourceType": "Patient", "id": "h2"})).await.expect(201);
    server
        .post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}))
        .await
        .expect(201);
    server.delete("Patient/h2").await.expect(200);

    let patients = all_pages(&server, "Patient/_history?_count=2").await;
    assert_eq!(patients, ["Patient/h2", "Patient/h1", "Patient/h1"], "newest first, deletion included");
    let bundle = server.get("Patient/_history").await.expect(200);
    assert_eq!(bundle["type"], "history");
    assert_eq!(bundle["entry"][0]["request"]["method"], "DELETE");
    let all = all_pages(&server, "_history?_count=3").await;
    assert_eq!(all.len(), 4, "{all:?}");
    let recent = all_pages(&server, &format!("_history?_since={since}")).await;
    assert_eq!(recent.len(), 3, "{recent:?}");
    server.get("_history?_since=yesterday").await.expect_outcome(400, "value");
    server.get("Patient/_history?_cursor=bm9wZQ").await.expect_outcome(400, "value");
}

on_both_databases!(everything_returns_the_whole_compartment, type_and_system_history);
