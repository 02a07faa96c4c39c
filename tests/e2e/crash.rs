//! Durability under SIGKILL: writers record every acknowledged write; the server is killed at a
//! random moment, restarted, and every acknowledged version must read back unchanged, the audit
//! chain must verify, and the outbox must hold an integration event for every acknowledged
//! write. One writer sends transaction Bundles: each acknowledged one must be there whole, and
//! the one cut short by the kill must be there whole or not at all. Repeated 20 times per
//! database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use sqlx::Row;

use crate::harness::{Db, Launch, Server, signal};
use crate::on_both_databases;
use crate::plugins::{load, policies};

on_both_databases!(twenty_kills_lose_no_acknowledged_write);

const KILLS: usize = 20;

async fn twenty_kills_lose_no_acknowledged_write(db: Db) {
    // An integration plugin bound to Patient creates, disabled so its events stay in the outbox.
    let folder =
        policies("[[binding]]\nplugin = \"notify\"\nresource_types = [\"Patient\"]\ninteractions = [\"create\"]\n");
    let launch = || Launch {
        extra_args: vec!["--policies".into(), folder.path().to_str().unwrap().into()],
        ..Launch::default()
    };
    let mut server = Server::launch(db, launch()).await;
    load(&server, "notify", "notify", "integration", json!({})).await;
    let admin = server.client_with(Some(&server.token("admin/plugins", None)));
    server.send(admin.post(server.url("admin/plugins/notify/disable"))).await.expect(200);
    let acknowledged: Arc<Mutex<Vec<Value>>> = Arc::default();
    let transactions: Arc<Mutex<Vec<Value>>> = Arc::default();
    let attempted: Arc<Mutex<Vec<String>>> = Arc::default();
    // A small deterministic sequence of delays before each kill (10-250 ms).
    let delays: Vec<u64> = (0..KILLS as u64).map(|k| 10 + (k * 7919 + 13) % 240).collect();
    for (round, delay) in delays.into_iter().enumerate() {
        let server_arc = Arc::new(server);
        let writers: Vec<_> = (0..4)
            .map(|worker| {
                let (server, acknowledged) = (server_arc.clone(), acknowledged.clone());
                tokio::spawn(async move {
                    for n in 0..10_000 {
                        let id = format!("c{round}-{worker}-{n}");
                        let body = json!({"resourceType": "Patient", "id": id, "birthDate": "1990-01-01", "multipleBirthInteger": n});
                        let request = server.client.put(server.url(&format!("Patient/{id}"))).header("content-type", "application/fhir+json").body(body.to_string());
                        match request.send().await {
                            Ok(response) if response.status().as_u16() == 201 => {
                                // Acknowledged once the full response is in hand.
                                if let Ok(stored) = response.json::<Value>().await {
                                    acknowledged.lock().unwrap().push(stored);
                                }
                            }
                            _ => break, // the server is gone
                        }
                    }
                })
            })
            .chain(std::iter::once({
                let (server, transactions, attempted) = (server_arc.clone(), transactions.clone(), attempted.clone());
                tokio::spawn(async move {
                    for n in 0..10_000 {
                        let id = format!("t{round}-{n}");
                        attempted.lock().unwrap().push(id.clone());
                        let observation = |part: &str| json!({
                            "resource": {"resourceType": "Observation", "status": "final", "code": {"text": part},
                                         "subject": {"reference": format!("Patient/{id}")}},
                            "request": {"method": "POST", "url": "Observation"}});
                        let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [
                            {"resource": {"resourceType": "Patient", "id": id}, "request": {"method": "PUT", "url": format!("Patient/{id}")}},
                            observation("a"), observation("b")]});
                        let request = server.client.post(server.url("")).header("content-type", "application/fhir+json").body(bundle.to_string());
                        match request.send().await {
                            Ok(response) if response.status().as_u16() == 200 => {
                                if let Ok(reply) = response.json::<Value>().await {
                                    transactions.lock().unwrap().push(reply);
                                }
                            }
                            _ => break,
                        }
                    }
                })
            }))
            .collect();
        // Each round kills a server that has acknowledged work (a slow, shared machine must not
        // turn a round into a kill of an idle server), at a varying moment after that.
        let before = acknowledged.lock().unwrap().len();
        for _ in 0..500 {
            if acknowledged.lock().unwrap().len() > before {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(delay)).await;
        signal(server_arc.pid(), "KILL");
        for writer in writers {
            writer.await.unwrap();
        }
        server = Arc::into_inner(server_arc).expect("writers are done").restart_after_kill_with(launch()).await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!("{db:?}: {KILLS} kills, {} acknowledged writes checked", acknowledged.len());
    assert!(acknowledged.len() >= KILLS, "the load must have written something each round: {}", acknowledged.len());
    for stored in &acknowledged {
        let path = format!("Patient/{}", stored["id"].as_str().unwrap());
        assert_eq!(&server.get(&path).await.expect(200), stored, "{path} was acknowledged and then lost or changed");
    }
    let mut connection = server.raw_connection().await;
    let queued: std::collections::HashSet<String> =
        sqlx::query("SELECT res_id FROM outbox WHERE plugin = 'notify' AND kind = 'created'")
            .fetch_all(&mut connection)
            .await
            .unwrap()
            .iter()
            .map(|row| row.get::<String, _>(0))
            .collect();
    for stored in &acknowledged {
        let id = stored["id"].as_str().unwrap();
        assert!(queued.contains(id), "Patient/{id} was acknowledged but its integration event is missing");
    }
    // Transactions: every acknowledged one whole; none half there.
    let transactions = transactions.lock().unwrap().clone();
    assert!(!transactions.is_empty(), "the transaction writer must have committed something");
    for reply in &transactions {
        for entry in reply["entry"].as_array().unwrap() {
            let location = entry["response"]["location"].as_str().unwrap();
            let path = location.split("/_history/").next().unwrap();
            assert_eq!(&server.get(path).await.expect(200), &entry["resource"], "{path} was acknowledged and lost");
        }
    }
    let attempted = attempted.lock().unwrap().clone();
    for id in &attempted {
        let patient = server.get(&format!("Patient/{id}")).await.status;
        let found = server.get(&format!("Observation?subject=Patient/{id}&_summary=count")).await.expect(200);
        let observations = found["total"].as_u64().unwrap();
        assert!(
            (patient == 200 && observations == 2) || (patient == 404 && observations == 0),
            "transaction {id} is partly visible: patient {patient}, {observations} observations"
        );
    }
    eprintln!("{db:?}: {} transactions acknowledged, {} attempted, none partial", transactions.len(), attempted.len());
    let verify = server.hearth(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
