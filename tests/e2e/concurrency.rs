//! Optimistic locking: If-Match must never let two writers both win.

use serde_json::json;

use crate::harness::{Db, Server};
use crate::on_both_databases;

on_both_databases!(concurrent_if_match_updates_have_one_winner, if_match_rules, concurrent_blind_updates_all_land);

async fn concurrent_if_match_updates_have_one_winner(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/contended", &json!({"resourceType": "Patient", "id": "contended"})).await.expect(201);
    for round in 1..=3 {
        let current = format!("W/\"{round}\"");
        let writers = (0..24).map(|n| {
            let body =
                json!({"resourceType": "Patient", "id": "contended", "gender": "other", "multipleBirthInteger": n});
            server.put_with("Patient/contended", &body, &[("if-match", &current)])
        });
        let replies = futures::future::join_all(writers).await;
        let winners: Vec<_> = replies.iter().filter(|r| r.status == 200).collect();
        let losers = replies.iter().filter(|r| r.status == 412).count();
        assert_eq!(
            winners.len(),
            1,
            "exactly one If-Match writer wins (round {round}): {:?}",
            replies.iter().map(|r| r.status).collect::<Vec<_>>()
        );
        assert_eq!(losers, 23, "every other writer gets 412");
        for loser in replies.iter().filter(|r| r.status == 412) {
            loser.expect_outcome(412, "conflict");
        }
        // The winner's body is what is stored: nothing was lost or overwritten.
        let stored = server.get("Patient/contended").await.expect(200);
        assert_eq!(stored["meta"]["versionId"], (round + 1).to_string());
        assert_eq!(stored, winners[0].json());
    }
    let history = server.get("Patient/contended/_history").await.expect(200);
    assert_eq!(history["total"], 4, "one version per round plus the create");
}

async fn if_match_rules(db: Db) {
    let server = Server::start(db).await;
    let with_if_match =
        |path: &str, tag: &str, body: serde_json::Value| server.put_with(path, &body, &[("if-match", tag)]);
    let org = json!({"resourceType": "Organization", "id": "org", "name": "Clinic"});
    // If-Match on a resource that does not exist cannot match.
    with_if_match("Organization/org", "W/\"1\"", org.clone()).await.expect_outcome(412, "conflict");
    server.put("Organization/org", &org).await.expect(201);
    with_if_match("Organization/org", "W/\"7\"", org.clone()).await.expect_outcome(412, "conflict");
    with_if_match("Organization/org", "banana", org.clone()).await.expect_outcome(400, "value");
    with_if_match("Organization/org", "\"1\"", org.clone()).await.expect(200);
    // Deletes honour If-Match too.
    let stale_delete = server.client.delete(server.url("Organization/org")).header("if-match", "W/\"1\"");
    server.send(stale_delete).await.expect_outcome(412, "conflict");
    let delete = server.client.delete(server.url("Organization/org")).header("if-match", "W/\"2\"");
    server.send(delete).await.expect(200);
    // A deleted resource has no version to match.
    with_if_match("Organization/org", "W/\"3\"", org).await.expect_outcome(412, "conflict");
}

async fn concurrent_blind_updates_all_land(db: Db) {
    let server = Server::start(db).await;
    // Without If-Match, racing updates are serialised: each gets its own version.
    let writers = (0..16).map(|n| {
        server.put("Patient/blind", &json!({"resourceType": "Patient", "id": "blind", "multipleBirthInteger": n}))
    });
    let replies = futures::future::join_all(writers).await;
    let mut versions: Vec<i64> = replies
        .iter()
        .map(|r| {
            assert!(r.status == 200 || r.status == 201, "status {}", r.status);
            r.json()["meta"]["versionId"].as_str().unwrap().parse().unwrap()
        })
        .collect();
    versions.sort();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
    assert_eq!(replies.iter().filter(|r| r.status == 201).count(), 1);
}
