//! FHIR R4 Subscriptions (rest-hook) end to end, on both databases: a requested Subscription
//! is activated, a real local HTTP receiver gets exactly the changes its criteria match (with
//! the resource as payload, the channel's header, each change once), an endpoint outside the
//! operator's allowlist puts the Subscription in `error`, and an endpoint that keeps failing is
//! retried, then dead-lettered with the Subscription in `error`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Db, Launch, Server};
use crate::on_both_databases;
use crate::plugins::id_from_location;

on_both_databases!(
    subscriptions_notify_a_real_receiver_of_every_matching_change,
    a_subscription_tells_only_what_its_owner_may_read
);

/// One request the receiver got: method, path, the header `x-hook-key`, and the body.
type Seen = (String, String, Option<String>, Vec<u8>);

struct Hook {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
}

/// A plain-HTTP receiver recording every request; paths under `/failing` answer 500.
async fn hook() -> Hook {
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let recorded = seen.clone();
    let app = axum::Router::new().fallback(move |request: axum::extract::Request| {
        let recorded = recorded.clone();
        async move {
            let (parts, body) = request.into_parts();
            let body = axum::body::to_bytes(body, 1 << 20).await.unwrap_or_default().to_vec();
            let key = parts.headers.get("x-hook-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
            let path = parts.uri.path().to_owned();
            recorded.lock().unwrap().push((parts.method.to_string(), path.clone(), key, body));
            if path.starts_with("/failing") {
                axum::http::StatusCode::INTERNAL_SERVER_ERROR
            } else {
                axum::http::StatusCode::OK
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    Hook { addr, seen }
}

fn subscription(criteria: &str, endpoint: &str) -> Value {
    json!({"resourceType": "Subscription", "status": "requested", "reason": "test feed", "criteria": criteria,
           "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json",
                       "header": ["x-hook-key: s3cret"]}})
}

/// Polls `Subscription/{id}` until its status is `wanted`; returns it.
async fn until_status(server: &Server, id: &str, wanted: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..150 {
        last = server.get(&format!("Subscription/{id}")).await.expect(200);
        if last["status"] == wanted {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("Subscription/{id} never became {wanted}: {last}");
}

fn heart_rate(patient: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
           "subject": {"reference": format!("Patient/{patient}")}, "valueQuantity": {"value": 72, "unit": "/min"}})
}

async fn subscriptions_notify_a_real_receiver_of_every_matching_change(db: Db) {
    let hook = hook().await;
    let base = format!("http://{}", hook.addr);
    let launch = Launch { extra_args: vec!["--subscription-endpoint".into(), format!("{base}/")], ..Launch::default() };
    let server = Server::launch(db, launch).await;
    let patient = id_from_location(&server.post("Patient", &json!({"resourceType": "Patient"})).await);

    // Requested, then activated by the server.
    let created = server
        .post("Subscription", &subscription("Observation?code=http://loinc.org|8867-4", &format!("{base}/hook")))
        .await;
    let id = id_from_location(&created);
    until_status(&server, &id, "active").await;

    // Six matching creates, four that do not match, one update of a match, one deletion.
    let mut matching = Vec::new();
    for n in 0..10 {
        let code = if n % 5 < 3 { "8867-4" } else { "8480-6" };
        let created = id_from_location(&server.post("Observation", &heart_rate(&patient, code)).await);
        if code == "8867-4" {
            matching.push(created);
        }
    }
    let mut changed = server.get(&format!("Observation/{}", matching[0])).await.expect(200);
    changed["valueQuantity"]["value"] = json!(99);
    server.put(&format!("Observation/{}", matching[0]), &changed).await.expect(200);
    server.delete(&format!("Observation/{}", matching[1])).await;

    for _ in 0..150 {
        if hook.seen.lock().unwrap().len() >= 7 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Time for anything that should not come (a non-match, the deletion, a duplicate).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let seen = hook.seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 7, "six creates and one update, nothing else: {:?}", summary(&seen));
    let mut versions = Vec::new();
    for (method, path, key, body) in &seen {
        assert_eq!((method.as_str(), key.as_deref()), ("PUT", Some("s3cret")));
        let resource: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(path, &format!("/hook/Observation/{}", resource["id"].as_str().unwrap()));
        assert_eq!(resource["code"]["coding"][0]["code"], "8867-4");
        versions.push((
            resource["id"].as_str().unwrap().to_owned(),
            resource["meta"]["versionId"].as_str().unwrap().to_owned(),
        ));
    }
    versions.sort();
    let mut expected: Vec<(String, String)> = matching.iter().map(|id| (id.clone(), "1".to_owned())).collect();
    expected.push((matching[0].clone(), "2".to_owned()));
    expected.sort();
    assert_eq!(versions, expected);

    // An endpoint the operator did not allow: the Subscription goes to error, saying why.
    let outside = server.post("Subscription", &subscription("Patient?gender=female", "http://10.255.0.1/steal")).await;
    let outside = until_status(&server, &id_from_location(&outside), "error").await;
    assert!(outside["error"].as_str().unwrap().contains("not one this server may call"), "{outside}");

    // An endpoint that keeps failing: retried, dead-lettered, and the Subscription errors.
    let failing = server.post("Subscription", &subscription("Patient?gender=female", &format!("{base}/failing"))).await;
    let failing_id = id_from_location(&failing);
    until_status(&server, &failing_id, "active").await;
    server.post("Patient", &json!({"resourceType": "Patient", "gender": "female"})).await.expect(201);
    let errored = until_status(&server, &failing_id, "error").await;
    assert!(errored["error"].as_str().unwrap().contains("failed 4 times"), "{errored}");
    let attempts = hook.seen.lock().unwrap().iter().filter(|(_, path, _, _)| path.starts_with("/failing")).count();
    assert_eq!(attempts, 4);
    let admin = server.client_with(Some(&server.token("admin/plugins", None)));
    let dead = server.send(admin.get(server.url("admin/outbox?state=dead"))).await.expect(200);
    assert!(dead.to_string().contains(&format!("$subscription/{failing_id}")), "{dead}");
    // Status changes are audited.
    let auditor = server.client_with(Some(&server.token("admin/audit", None)));
    let audited = server.send(auditor.get(server.url("AuditEvent?subtype=subscription-error"))).await.expect(200);
    assert_eq!(audited["entry"].as_array().map(Vec::len), Some(2), "{audited}");
}

fn summary(seen: &[Seen]) -> Vec<(String, String)> {
    seen.iter().map(|(method, path, _, _)| (method.clone(), path.clone())).collect()
}

/// Issue 22, repro 8: Subscriptions notified with the full resource whatever the creator's
/// scopes. A Subscription matches and notifies as its owner (who last wrote it) may read.
async fn a_subscription_tells_only_what_its_owner_may_read(db: Db) {
    let hook = hook().await;
    let base = format!("http://{}", hook.addr);
    let launch = Launch { extra_args: vec!["--subscription-endpoint".into(), format!("{base}/")], ..Launch::default() };
    let server = Server::launch(db, launch).await;
    for p in ["alice", "bob"] {
        server.put(&format!("Patient/{p}"), &json!({"resourceType": "Patient", "id": p})).await.expect(201);
    }
    // Alice's app may read her observations only, and keep a Subscription.
    let alice = server.token("patient/Observation.rs user/Subscription.cru", Some("alice"));
    let request = server
        .client_with(Some(&alice))
        .post(server.url("Subscription"))
        .header("content-type", "application/fhir+json")
        .body(subscription("Observation?code=http://loinc.org|8867-4", &format!("{base}/alice")).to_string());
    let id = id_from_location(&server.send(request).await);
    until_status(&server, &id, "active").await;
    let mut expected = Vec::new();
    for p in ["alice", "bob", "bob", "alice", "bob"] {
        let created = id_from_location(&server.post("Observation", &heart_rate(p, "8867-4")).await);
        if p == "alice" {
            expected.push(format!("/alice/Observation/{created}"));
        }
    }
    for _ in 0..150 {
        if hook.seen.lock().unwrap().len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let mut paths: Vec<String> = hook.seen.lock().unwrap().iter().map(|(_, path, _, _)| path.clone()).collect();
    paths.sort();
    expected.sort();
    assert_eq!(paths, expected, "only Alice's observations reach Alice's endpoint");

    // Rewritten by a principal that may not read Observations: nothing more is sent.
    let current = server.get(&format!("Subscription/{id}")).await.expect(200);
    let other = server.token("user/Subscription.cru user/Patient.rs", None);
    let request = server
        .client_with(Some(&other))
        .put(server.url(&format!("Subscription/{id}")))
        .header("content-type", "application/fhir+json")
        .body(current.to_string());
    server.send(request).await.expect(200);
    server.post("Observation", &heart_rate("alice", "8867-4")).await.expect(201);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(hook.seen.lock().unwrap().len(), expected.len(), "the new owner reads no Observation");
}
