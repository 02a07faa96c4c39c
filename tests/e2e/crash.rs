//! Durability under SIGKILL: writers record every acknowledged write; the server is killed at a
//! random moment, restarted, and every acknowledged version must read back unchanged, the audit
//! chain must verify. Repeated 20 times per database.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Db, Server, signal};
use crate::on_both_databases;

on_both_databases!(twenty_kills_lose_no_acknowledged_write);

const KILLS: usize = 20;

async fn twenty_kills_lose_no_acknowledged_write(db: Db) {
    let mut server = Server::start(db).await;
    let acknowledged: Arc<Mutex<Vec<Value>>> = Arc::default();
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
            .collect();
        tokio::time::sleep(Duration::from_millis(delay)).await;
        signal(server_arc.pid(), "KILL");
        for writer in writers {
            writer.await.unwrap();
        }
        server = Arc::into_inner(server_arc).expect("writers are done").restart_after_kill().await;
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    eprintln!("{db:?}: {KILLS} kills, {} acknowledged writes checked", acknowledged.len());
    assert!(acknowledged.len() >= KILLS, "the load must have written something each round: {}", acknowledged.len());
    for stored in &acknowledged {
        let path = format!("Patient/{}", stored["id"].as_str().unwrap());
        assert_eq!(&server.get(&path).await.expect(200), stored, "{path} was acknowledged and then lost or changed");
    }
    let verify = server.hearth(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
