//! The compliance evidence pack: from a seeded server, `hearth compliance report` states the
//! right figures and findings; `verify` passes on the pack as written and fails once it is
//! edited; tampering with the audit chain or a sealed version shows as a failed finding; the
//! admin API's download is the same pack.

use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;

use crate::harness::{Db, Server, dev_token_for};
use crate::on_both_databases;

on_both_databases!(the_evidence_pack_states_verifies_and_catches_tampering);

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn finding<'e>(evidence: &'e Value, id: &str) -> &'e Value {
    evidence["findings"].as_array().unwrap().iter().find(|f| f["id"] == id).unwrap_or_else(|| panic!("no {id} finding"))
}

fn output(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

async fn the_evidence_pack_states_verifies_and_catches_tampering(db: Db) {
    let server = Server::start(db).await;
    // Records: one patient with two versions and an observation, one patient to erase.
    for id in ["keep", "gone"] {
        server.put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id})).await.expect(201);
    }
    server.put("Patient/keep", &json!({"resourceType": "Patient", "id": "keep", "active": true})).await.expect(200);
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
        "subject": {"reference": "Patient/keep"}});
    server.post("Observation", &observation).await.expect(201);

    // A clinician reads; a stranger's token is refused three times; two emergency accesses,
    // one reviewed; an erasure through the API.
    let clinician = server.client_with(Some(&dev_token_for(&server.data_dir, "dr-a", "user/Patient.rs", None, &[])));
    server.send(clinician.get(server.url("Patient/keep"))).await.expect(200);
    let stranger = server.client_with(Some("not-a-token"));
    for _ in 0..3 {
        server.send(stranger.get(server.url("Patient/keep"))).await.expect(401);
    }
    let emergency =
        server.client_with(Some(&dev_token_for(&server.data_dir, "dr-b", "user/*.rs", None, &["break-glass"])));
    for _ in 0..2 {
        let request = emergency.get(server.url("Patient/keep")).header("x-break-glass-reason", "trauma bay");
        server.send(request).await.expect(200);
    }
    let officer =
        server.client_with(Some(&dev_token_for(&server.data_dir, "officer", "admin/audit admin/erasure", None, &[])));
    let pending = server.send(officer.get(server.url("admin/break-glass?pending=true"))).await.expect(200);
    let first = pending["entries"][0]["seq"].as_i64().expect("an emergency access to review");
    let review = officer
        .post(server.url(&format!("admin/break-glass/{first}/review")))
        .json(&json!({"decision": "acknowledged", "comment": "justified"}));
    server.send(review).await.expect(200);
    let erase = officer.post(server.url("admin/erasure")).json(&json!({"patient": "gone", "reason": "request 42"}));
    server.send(erase).await.expect(200);
    // Refusals are queued, not waited for: give them time to be written.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let mut conn = server.raw_connection().await;
    let stored: i64 = sqlx::query("SELECT COUNT(*) FROM resource_version WHERE deleted = 0")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);

    // The report, from the database with the keyring (no server involved).
    let dir = tempfile::tempdir().unwrap();
    let pack = dir.path().join("pack");
    let pack_arg = pack.to_str().unwrap();
    let report = server.hearth(&["compliance", "report", "--dev", "--out", pack_arg, "--since", "2020-01-01"]);
    assert!(report.status.success(), "{}", output(&report));
    let text = output(&report);
    assert!(text.contains("emergency-access-review") && text.contains("check it with"), "{text}");
    let evidence = read_json(&pack.join("evidence.json"));

    assert_eq!(evidence["audit"]["problem"], Value::Null);
    assert!(evidence["audit"]["last_checkpoint"].is_object() || evidence["audit"]["checkpoints"] == 0);
    assert_eq!(
        finding(&evidence, "audit-chain")["status"],
        if evidence["audit"]["checkpoints"] == 0 { "warn" } else { "pass" }
    );
    let x = &evidence["encryption"];
    assert_eq!(x["stored_versions"], stored);
    assert_eq!(x["erased"], 1, "Patient/gone's one version is under a destroyed key");
    assert_eq!(x["failed"], 0);
    assert_eq!(x["opened"].as_i64().unwrap(), stored - 1);
    assert_eq!(x["destroyed_data_keys"], 1);
    assert_eq!(x["erasures"][0]["reason"], "request 42");
    assert_eq!(finding(&evidence, "encryption-coverage")["status"], "pass");

    let access = &evidence["access"];
    let glass = &access["break_glass"];
    assert_eq!(
        (glass["accesses"].as_i64(), glass["reviewed"].as_i64(), glass["pending"].as_i64()),
        (Some(2), Some(1), Some(1))
    );
    assert_eq!(glass["entries"][0]["reviews"][0]["reviewer"], "officer");
    assert_eq!(glass["entries"][0]["reason"], "trauma bay");
    assert_eq!(finding(&evidence, "emergency-access-review")["status"], "warn");
    let refused: Vec<&Value> = access["refused"].as_array().unwrap().iter().filter(|r| r["status"] == 401).collect();
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert_eq!(refused[0]["count"], 3);
    assert_eq!(refused[0]["address"], "127.0.0.1");
    let principal = |sub: &str| access["principals"].as_array().unwrap().iter().find(|p| p["subject"] == sub).cloned();
    let dr_a = principal("dr-a").expect("the clinician is in the review");
    assert_eq!(dr_a["scopes"], json!(["user/Patient.rs"]));
    assert_eq!((dr_a["requests"].as_i64(), dr_a["patients"].as_i64()), (Some(1), Some(1)));
    let actions: Vec<&str> =
        access["admin_actions"].as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"admin-erasure") && actions.contains(&"admin-break-glass-review"), "{actions:?}");
    assert_eq!(finding(&evidence, "production-mode")["status"], "warn", "the test server runs in dev mode");
    let html = std::fs::read_to_string(pack.join("evidence.html")).unwrap();
    assert!(html.contains("trauma bay") && html.contains("emergency-access-review"));

    // The pack verifies, with the database and offline with the public key.
    let verify = server.hearth(&["compliance", "verify", pack_arg]);
    assert!(verify.status.success(), "{}", output(&verify));
    assert!(output(&verify).contains("access review re-derived"), "{}", output(&verify));
    let public_key = read_json(&pack.join("signature.json"))["public_key"].as_str().unwrap().to_owned();
    let offline = server.hearth(&["compliance", "verify", pack_arg, "--offline", "--public-key", &public_key]);
    assert!(offline.status.success(), "{}", output(&offline));

    // Edited, it does not: a figure in the JSON, a finding with its page redrawn and re-hashed
    // by someone without the key, or the page alone.
    let edited = dir.path().join("edited");
    std::fs::create_dir(&edited).unwrap();
    for name in ["evidence.json", "evidence.html", "signature.json"] {
        std::fs::copy(pack.join(name), edited.join(name)).unwrap();
    }
    let json_text = std::fs::read_to_string(pack.join("evidence.json")).unwrap();
    std::fs::write(edited.join("evidence.json"), json_text.replacen("\"pending\": 1", "\"pending\": 0", 1)).unwrap();
    let refused_verify = server.hearth(&["compliance", "verify", edited.to_str().unwrap()]);
    assert!(!refused_verify.status.success());
    assert!(
        output(&refused_verify).contains("evidence.json was changed after the pack was signed"),
        "{}",
        output(&refused_verify)
    );
    std::fs::copy(pack.join("evidence.json"), edited.join("evidence.json")).unwrap();
    std::fs::write(edited.join("evidence.html"), html.replacen("trauma bay", "routine visit", 1)).unwrap();
    let refused_verify = server.hearth(&["compliance", "verify", edited.to_str().unwrap()]);
    assert!(!refused_verify.status.success());
    assert!(output(&refused_verify).contains("evidence.html was changed"), "{}", output(&refused_verify));

    // The admin API's download is a signed pack of the same kind: extract it and verify it.
    let wrong_format = officer.get(server.url("admin/compliance/pack")).header("accept", "text/csv");
    server.send(wrong_format).await.expect_outcome(406, "not-supported");
    let download = officer
        .get(server.url("admin/compliance/pack?since=2020-01-01"))
        .header("accept", "application/x-tar")
        .send()
        .await
        .unwrap();
    assert_eq!(download.status(), 200);
    assert_eq!(download.headers()["content-type"], "application/x-tar");
    let tar_path = dir.path().join("download.tar");
    std::fs::write(&tar_path, download.bytes().await.unwrap()).unwrap();
    let extracted = dir.path().join("downloaded");
    std::fs::create_dir(&extracted).unwrap();
    let untar = std::process::Command::new("tar")
        .args(["-xf", tar_path.to_str().unwrap(), "-C", extracted.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(untar.status.success(), "{}", output(&untar));
    let verify = server.hearth(&["compliance", "verify", extracted.to_str().unwrap()]);
    assert!(verify.status.success(), "{}", output(&verify));
    let clinician_refused = server.send(clinician.get(server.url("admin/compliance/evidence"))).await;
    clinician_refused.expect_outcome(403, "forbidden");

    // Tampering: an audit entry's text and a sealed version's bytes.
    sqlx::query("UPDATE audit_entry SET entry = entry || ' ' WHERE seq = 2").execute(&mut conn).await.unwrap();
    let body: Vec<u8> =
        sqlx::query("SELECT body FROM resource_version WHERE res_type = 'Patient' AND res_id = 'keep' AND version = 1")
            .fetch_one(&mut conn)
            .await
            .unwrap()
            .get(0);
    let mut flipped = body.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x01;
    sqlx::query("UPDATE resource_version SET body = $1 WHERE res_type = 'Patient' AND res_id = 'keep' AND version = 1")
        .bind(flipped)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let tampered = dir.path().join("tampered");
    let report =
        server.hearth(&["compliance", "report", "--dev", "--out", tampered.to_str().unwrap(), "--since", "2020-01-01"]);
    assert!(!report.status.success(), "failed findings make the report exit non-zero: {}", output(&report));
    assert!(output(&report).contains("evidence pack written"), "{}", output(&report));
    let evidence = read_json(&tampered.join("evidence.json"));
    let chain = finding(&evidence, "audit-chain");
    assert_eq!(chain["status"], "fail");
    assert!(chain["summary"].as_str().unwrap().contains("entry 2 was altered"), "{chain}");
    let coverage = finding(&evidence, "encryption-coverage");
    assert_eq!(coverage["status"], "fail");
    assert!(coverage["summary"].as_str().unwrap().contains("Patient/keep/_history/1"), "{coverage}");
    // The tampered database's pack still verifies as a pack (it says what it found) ...
    let verify =
        server.hearth(&["compliance", "verify", tampered.to_str().unwrap(), "--offline", "--public-key", &public_key]);
    assert!(verify.status.success(), "{}", output(&verify));
    // ... and the first pack no longer matches the database it was made from.
    let verify = server.hearth(&["compliance", "verify", pack_arg]);
    assert!(!verify.status.success());
    assert!(output(&verify).contains("entry 2 was altered"), "{}", output(&verify));
}
