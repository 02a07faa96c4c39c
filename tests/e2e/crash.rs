//! Durability under SIGKILL: writers record every acknowledged write; the server is killed at a
//! random moment, restarted, and every acknowledged version must read back unchanged, the audit
//! chain must verify, and the outbox must hold an integration event for every acknowledged
//! write. Repeated 20 times per database.

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
    let verify = server.hearth(&["audit", "verify"]);
    assert!(
        verify.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verify.stdout),
        String::from_utf8_lossy(&verify.stderr)
    );
}
