//! PostgreSQL going away under load: every backend of Hearth's database is terminated
//! (`pg_terminate_backend`, as a failover, a restart or an administrator would) several times
//! while writers run. Requests caught by it fail cleanly (503 OperationOutcome, code
//! `transient`, with Retry-After), never 500; Hearth recovers without a restart; every
//! acknowledged write reads back and the audit chain verifies.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::harness::{Db, Server, admin_sql};

/// One write's answer: status, Location, and the body and Retry-After of a failure.
type Answer = (u16, Option<String>, String);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connection_loss_fails_cleanly_and_recovers() {
    let server = Arc::new(Server::start(Db::Postgres).await);
    let name = server.pg_name().unwrap().to_owned();
    let answers: Arc<Mutex<Vec<Answer>>> = Arc::default();
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (server, answers) = (server.clone(), answers.clone());
            tokio::spawn(async move {
                for n in 0..60 {
                    let patient = json!({"resourceType": "Patient", "name": [{"family": format!("Outage-{w}-{n}")}]});
                    let reply = server.post("Patient", &patient).await;
                    let location = reply.header("location").map(str::to_owned);
                    let detail = if reply.status == 201 {
                        String::new()
                    } else {
                        format!(
                            "{} retry-after={:?}",
                            String::from_utf8_lossy(&reply.bytes),
                            reply.header("retry-after")
                        )
                    };
                    answers.lock().unwrap().push((reply.status, location, detail));
                }
            })
        })
        .collect();
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        admin_sql(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ));
    }
    for writer in writers {
        writer.await.unwrap();
    }

    let answers = answers.lock().unwrap().clone();
    let failed: Vec<&Answer> = answers.iter().filter(|(status, _, _)| *status != 201).collect();
    for (status, _, detail) in &failed {
        assert_eq!(*status, 503, "only 503s while the database is away: {detail}");
        assert!(detail.contains(r#""code":"transient""#) && detail.contains("retry-after=Some"), "{detail}");
    }
    eprintln!("{} of {} writes answered 503 during the terminations", failed.len(), answers.len());
    // Recovered without a restart: new writes and reads work.
    server.post("Patient", &json!({"resourceType": "Patient"})).await.expect(201);
    // Every acknowledged write is there.
    for (_, location, _) in answers.iter().filter(|(status, _, _)| *status == 201) {
        let path = location.as_deref().unwrap().split_once("/Patient/").unwrap().1;
        let id = path.split('/').next().unwrap();
        server.get(&format!("Patient/{id}")).await.expect(200);
    }
    let verify = server.hearth(&["audit", "verify"]);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}
