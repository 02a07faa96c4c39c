//! Two Hearth processes on one PostgreSQL database under a mixed load: plugin changes made
//! through one host reach the other (LISTEN/NOTIFY), optimistic locking holds across hosts,
//! each outbox event is delivered once, and the shared audit chain verifies.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Db, Server};
use crate::plugins::{SSN, admin, id_from_location, load, policies, receiver, second_host, with_policies};

/// Workers per host.
const WORKERS: usize = 2;
/// Successful increments each worker makes to the shared counter.
const INCREMENTS: i64 = 15;
/// Observations each worker creates.
const CREATES: usize = 20;

/// Adds one to the counter Observation's value through `reader` and `writer` (read on one
/// host, conditional update on the other); retries when another writer got there first.
/// Returns how many 412s it met.
async fn increment(reader: &Server, writer: &Server, path: &str) -> u32 {
    let mut conflicts = 0;
    loop {
        let current = reader.get(path).await.expect(200);
        let version = current["meta"]["versionId"].as_str().unwrap().to_owned();
        let mut next = current.clone();
        next["valueInteger"] = json!(current["valueInteger"].as_i64().unwrap() + 1);
        let reply = writer.put_with(path, &next, &[("If-Match", &format!("W/\"{version}\""))]).await;
        match reply.status {
            200 => return conflicts,
            412 => conflicts += 1,
            other => panic!("conditional update answered {other}: {}", String::from_utf8_lossy(&reply.bytes)),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hosts_on_one_postgres_stay_consistent_under_mixed_load() {
    let receiver = receiver(0).await;
    let folder = policies(&format!(
        "[[binding]]\nplugin = \"notify\"\nresource_types = [\"Observation\"]\ninteractions = [\"create\"]\n\
         config = {{ url = \"http://{addr}/hook\" }}\n\n\
         [[binding]]\nplugin = \"redact\"\nresource_types = [\"Patient\"]\ninteractions = [\"read\"]\n",
        addr = receiver.addr
    ));
    let a = Arc::new(Server::launch(Db::Postgres, with_policies(folder.path())).await);
    let b = Arc::new(second_host(&a, folder.path(), &[]).await);
    let allowed = json!([receiver.addr.to_string()]);
    load(&a, "notify", "notify", "integration", json!({"allowed_hosts": allowed})).await;

    let counter = a
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "counter"}, "valueInteger": 0}),
        )
        .await;
    counter.expect(201);
    let counter_path = format!("Observation/{}", id_from_location(&counter));
    let patient =
        a.post("Patient", &json!({"resourceType": "Patient", "identifier": [{"system": SSN, "value": "TH-1"}]})).await;
    let patient_path = format!("Patient/{}", id_from_location(&patient));
    // The redaction plugin is bound but loaded nowhere: both hosts deny reads of patients.
    b.get(&patient_path).await.expect_outcome(403, "forbidden");

    // The mixed load: on each host, workers that increment the shared counter (reading on one
    // host, writing on the other) and create observations; meanwhile the plugin is loaded
    // through host A and host B is watched for it.
    let mut tasks = Vec::new();
    for worker in 0..WORKERS * 2 {
        let (mine, other) = if worker % 2 == 0 { (a.clone(), b.clone()) } else { (b.clone(), a.clone()) };
        let counter_path = counter_path.clone();
        tasks.push(tokio::spawn(async move {
            let mut created = Vec::new();
            let mut conflicts = 0;
            for n in 0..CREATES.max(INCREMENTS as usize) {
                if n < INCREMENTS as usize {
                    conflicts += increment(&other, &mine, &counter_path).await;
                }
                if n < CREATES {
                    let reply = mine
                        .post(
                            "Observation",
                            &json!({"resourceType": "Observation", "status": "final",
                                    "code": {"text": format!("w{worker}-{n}")}}),
                        )
                        .await;
                    reply.expect(201);
                    let id = id_from_location(&reply);
                    // Readable through the other host at once: one database.
                    other.get(&format!("Observation/{id}")).await.expect(200);
                    created.push(id);
                }
            }
            (created, conflicts)
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    load(&a, "redact", "redact", "policy", json!({})).await;
    let loaded_at = Instant::now();
    let mut enforced_after = None;
    for _ in 0..200 {
        let reply = b.get(&patient_path).await;
        if reply.status == 200 {
            assert!(reply.json().get("identifier").is_none(), "host B serves unredacted: {}", reply.json());
            enforced_after = Some(loaded_at.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let enforced_after = enforced_after.expect("host B never put the plugin loaded through host A in force");

    let mut acknowledged = BTreeSet::new();
    let mut conflicts = 0;
    for task in tasks {
        let (created, met) = task.await.unwrap();
        acknowledged.extend(created);
        conflicts += met;
    }

    // No lost update: every acknowledged increment is in the value, one version each.
    let total = INCREMENTS * (WORKERS as i64) * 2;
    for host in [&a, &b] {
        let counter = host.get(&counter_path).await.expect(200);
        assert_eq!(counter["valueInteger"], total, "{counter}");
        assert_eq!(counter["meta"]["versionId"], (total + 1).to_string(), "{counter}");
    }

    // Every acknowledged create is delivered once: both hosts' delivery workers drain the
    // one outbox, and no event goes out twice (the receiver accepts every post, so there are
    // no retries to excuse a repeat).
    let mut expected = acknowledged.clone();
    expected.insert(counter_path.trim_start_matches("Observation/").to_owned());
    let mut delivered: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..600 {
        delivered.clear();
        for notice in receiver.notices.lock().unwrap().iter() {
            *delivered.entry(notice["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
        }
        if delivered.len() >= expected.len() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ids: BTreeSet<String> = delivered.keys().cloned().collect();
    assert_eq!(ids, expected, "events delivered vs creates acknowledged");
    let repeated: Vec<_> = delivered.iter().filter(|(_, n)| **n > 1).collect();
    assert!(repeated.is_empty(), "delivered more than once: {repeated:?}");
    let events: BTreeSet<i64> = receiver.notices.lock().unwrap().iter().filter_map(|n| n["eventId"].as_i64()).collect();
    assert_eq!(events.len(), expected.len(), "one event id per change");

    // Both hosts appended to one audit chain; it verifies, from either host.
    for host in [&a, &b] {
        let auditor = host.client_with(Some(&host.token("admin/audit", None)));
        let verified = host.send(auditor.post(host.url("admin/audit/verify"))).await.expect(200);
        assert_eq!(verified["intact"], true, "{verified}");
        assert!(verified["entries"].as_i64().unwrap() > (total + acknowledged.len() as i64) * 2, "{verified}");
    }
    let listed = a.send(admin(&a).get(a.url("admin/plugins/notify"))).await.expect(200);
    eprintln!(
        "two hosts: {} creates and {total} increments ({conflicts} conflicts retried) acknowledged; \
         {} events delivered once each; plugin in force on host B {} ms after loading through host A; \
         notify stats on A: {}",
        acknowledged.len(),
        delivered.len(),
        enforced_after.as_millis(),
        listed["stats"]
    );
}

/// The plugin-change notification is what brings host B in step, not the poll: host B polls
/// only once an hour, and a load and a disable through host A are in force on B anyway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugin_changes_are_notified_to_other_hosts() {
    let folder =
        policies("[[binding]]\nplugin = \"redact\"\nresource_types = [\"Patient\"]\ninteractions = [\"read\"]\n");
    let a = Server::launch(Db::Postgres, with_policies(folder.path())).await;
    let b = second_host(&a, folder.path(), &["--plugin-poll-seconds", "3600"]).await;
    let patient =
        a.post("Patient", &json!({"resourceType": "Patient", "identifier": [{"system": SSN, "value": "TH-2"}]})).await;
    let path = format!("Patient/{}", id_from_location(&patient));
    b.get(&path).await.expect_outcome(403, "forbidden");

    load(&a, "redact", "redact", "policy", json!({})).await;
    assert_eq!(status_within(&b, &path, 200).await, 200, "host B never put the load through host A in force");
    let _: Value = a.send(admin(&a).post(a.url("admin/plugins/redact/disable"))).await.expect(200);
    assert_eq!(status_within(&b, &path, 403).await, 403, "host B never took in the disable through host A");
}

/// Reads `path` until it answers `wanted` (or 60 s pass: far beyond a notification, far below
/// the one-hour poll); the last status.
async fn status_within(server: &Server, path: &str, wanted: u16) -> u16 {
    let started = Instant::now();
    loop {
        let status = server.get(path).await.status;
        if status == wanted || started.elapsed() > Duration::from_secs(60) {
            return status;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
