//! Encryption at rest: no PHI in the database files or logs, tampering detected, KEK rotation
//! online, and crypto-shredding of one patient.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use sqlx::Row;

use crate::harness::{Db, Server, contains_bytes, postgres_admin_url};
use crate::on_both_databases;

on_both_databases!(
    no_phi_in_database_or_log,
    tampering_is_detected_and_refused,
    rotation_under_load_loses_nothing,
    erasing_a_patient_shreds_only_that_patient
);

/// Distinctive values that must never appear outside an encrypted body.
const PHI: &[&str] =
    &["Zyxwvutson", "Quenbyrtha", "MRN-83659021", "1957-03-14", "555-0199-737", "42 Wobbleton Crescent"];

fn patient(id: &str) -> Value {
    json!({
        "resourceType": "Patient",
        "id": id,
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-83659021"}],
        "name": [{"family": "Zyxwvutson", "given": ["Quenbyrtha"]}],
        "telecom": [{"system": "phone", "value": "+1 555-0199-737"}],
        "birthDate": "1957-03-14",
        "address": [{"line": ["42 Wobbleton Crescent"], "city": "Springfield"}]
    })
}

fn observation(patient_id: &str, value: i64) -> Value {
    json!({
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},
        "subject": {"reference": format!("Patient/{patient_id}"), "display": "Quenbyrtha Zyxwvutson"},
        "valueQuantity": {"value": value, "unit": "/min"}
    })
}

async fn no_phi_in_database_or_log(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/phi-scan-1", &patient("phi-scan-1")).await.expect(201);
    let mut updated = patient("phi-scan-1");
    updated["active"] = json!(true);
    server.put("Patient/phi-scan-1", &updated).await.expect(200);
    server.post("Observation", &observation("phi-scan-1", 72)).await.expect(201);
    assert_eq!(server.get("Patient/phi-scan-1").await.expect(200)["name"][0]["family"], "Zyxwvutson");

    let raw = server.raw_database_bytes().await;
    // The scan reads the right bytes: the (non-PHI) resource id is stored in the clear.
    assert!(contains_bytes(&raw, b"phi-scan-1"), "the scan must see the database contents");
    for phi in PHI {
        assert!(!contains_bytes(&raw, phi.as_bytes()), "'{phi}' appears in the raw {db:?} database");
    }
    let log = server.log();
    for phi in PHI {
        assert!(!log.contains(phi), "'{phi}' appears in the server log");
    }
}

async fn tampering_is_detected_and_refused(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/t1", &patient("t1")).await.expect(201);
    let mut v2 = patient("t1");
    v2["active"] = json!(true);
    server.put("Patient/t1", &v2).await.expect(200);
    server.put("Patient/t2", &patient("t2")).await.expect(201);
    server.put("Patient/t3", &patient("t3")).await.expect(201);

    let mut conn = server.raw_connection().await;
    let body_of = |id: &'static str, version: i64| {
        sqlx::query("SELECT body FROM resource_version WHERE res_type = 'Patient' AND res_id = $1 AND version = $2")
            .bind(id)
            .bind(version)
    };
    let set_body = |id: &'static str, version: i64, body: Vec<u8>| {
        sqlx::query("UPDATE resource_version SET body = $1 WHERE res_type = 'Patient' AND res_id = $2 AND version = $3")
            .bind(body)
            .bind(id)
            .bind(version)
    };

    // One flipped bit in the ciphertext.
    let mut body: Vec<u8> = body_of("t2", 1).fetch_one(&mut conn).await.unwrap().get(0);
    let middle = body.len() / 2;
    body[middle] ^= 0x01;
    set_body("t2", 1, body).execute(&mut conn).await.unwrap();
    server.get("Patient/t2").await.expect_outcome(500, "exception");

    // Two versions of one resource (same data key) swapped: the row binding catches it.
    let v1: Vec<u8> = body_of("t1", 1).fetch_one(&mut conn).await.unwrap().get(0);
    let v2_sealed: Vec<u8> = body_of("t1", 2).fetch_one(&mut conn).await.unwrap().get(0);
    set_body("t1", 1, v2_sealed).execute(&mut conn).await.unwrap();
    set_body("t1", 2, v1).execute(&mut conn).await.unwrap();
    server.get("Patient/t1").await.expect_outcome(500, "exception");
    server.get("Patient/t1/_history/1").await.expect_outcome(500, "exception");
    server.get("Patient/t1/_history").await.expect_outcome(500, "exception");

    // A wrapped data key altered: nothing sealed under it opens (after a restart empties the
    // in-memory key cache).
    let wrapped: Vec<u8> = sqlx::query("SELECT wrapped FROM data_key WHERE key_id = 'patient/t3'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    let mut altered = wrapped.clone();
    altered[20] ^= 0x80;
    sqlx::query("UPDATE data_key SET wrapped = $1 WHERE key_id = 'patient/t3'")
        .bind(altered)
        .execute(&mut conn)
        .await
        .unwrap();
    drop(conn);
    let server = server.restart(Default::default()).await;
    server.get("Patient/t3").await.expect_outcome(500, "exception");

    let log = server.log();
    assert!(log.contains("INTEGRITY ALERT"), "tampering raises an integrity alert in the log");
    for phi in PHI {
        assert!(!log.contains(phi), "'{phi}' appears in the server log");
    }
}

async fn rotation_under_load_loses_nothing(db: Db) {
    let server = Arc::new(Server::start(db).await);
    // Forty patients, each with an observation: forty patient data keys plus type keys.
    for n in 0..40 {
        let id = format!("rot-{n}");
        server.put(&format!("Patient/{id}"), &patient(&id)).await.expect(201);
        server.post("Observation", &observation(&id, n)).await.expect(201);
    }

    // A bounded mixed load of reads and writes (new patients too, so new data keys are
    // created while the rotation runs), recording every failure.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let requests = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for worker in 0..4 {
        let (server, stop, failures, requests) = (server.clone(), stop.clone(), failures.clone(), requests.clone());
        workers.push(tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 5_000 {
                let reply = match n % 3 {
                    0 => server.get(&format!("Patient/rot-{}", n % 40)).await,
                    1 => server.post("Observation", &observation(&format!("rot-{}", n % 40), n)).await,
                    _ => {
                        let id = format!("new-{worker}-{n}");
                        server.put(&format!("Patient/{id}"), &patient(&id)).await
                    }
                };
                requests.fetch_add(1, Ordering::Relaxed);
                if !(200..300).contains(&reply.status) {
                    failures.fetch_add(1, Ordering::Relaxed);
                    eprintln!("failed during rotation: {} {}", reply.status, String::from_utf8_lossy(&reply.bytes));
                }
                n += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let rotate = {
        let server = server.clone();
        tokio::task::spawn_blocking(move || server.hearth(&["keys", "rotate"])).await.unwrap()
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let stdout = String::from_utf8_lossy(&rotate.stdout);
    assert!(rotate.status.success(), "rotate failed: {stdout}\n{}", String::from_utf8_lossy(&rotate.stderr));
    assert!(stdout.contains("rotated to KEK version 2"), "{stdout}");
    assert!(stdout.contains("retired KEK v1"), "{stdout}");
    assert!(requests.load(Ordering::Relaxed) > 0);
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request may fail during a rotation");

    let status = server.hearth(&["keys", "status"]);
    let status_text = String::from_utf8_lossy(&status.stdout);
    assert!(status.status.success(), "{status_text}");
    let v1_line = status_text.lines().find(|l| l.starts_with("v1 ")).expect("v1 listed");
    assert!(v1_line.contains(" 0 ") && v1_line.ends_with("retired"), "{status_text}");

    // The old KEK is no longer needed: remove it, restart, and everything still reads.
    let server = Arc::into_inner(server).expect("workers are done");
    std::fs::remove_file(server.keyring().join("kek-v1.key")).unwrap();
    let server = server.restart(Default::default()).await;
    for n in 0..40 {
        assert_eq!(server.get(&format!("Patient/rot-{n}")).await.expect(200)["birthDate"], "1957-03-14");
    }
    assert_eq!(server.get("Patient/new-0-2").await.expect(200)["id"], "new-0-2");

    // Running rotate again starts a new rotation (v3), and nothing is left on v2 afterwards.
    let again = server.hearth(&["keys", "rotate"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("rotated to KEK version 3"));
    assert_eq!(server.get("Patient/rot-7").await.expect(200)["id"], "rot-7");
}

/// Opens a transaction on the PostgreSQL maintenance database, has it take a transaction id, and
/// commits it after `hold`, from a thread of its own; returns once the id is taken.
fn hold_transaction_elsewhere(hold: Duration) -> std::thread::JoinHandle<()> {
    let (taken, wait) = std::sync::mpsc::channel();
    let holder = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async {
            use sqlx::Connection;
            let mut conn = sqlx::PgConnection::connect(&postgres_admin_url()).await.expect("maintenance database");
            let mut tx = conn.begin().await.unwrap();
            sqlx::query("SELECT txid_current()").execute(&mut *tx).await.unwrap();
            taken.send(()).unwrap();
            tokio::time::sleep(hold).await;
            tx.commit().await.unwrap();
        });
    });
    wait.recv().expect("the other transaction took its id");
    holder
}

async fn erasing_a_patient_shreds_only_that_patient(db: Db) {
    let server = Server::start(db).await;
    for id in ["erase-me", "keep-me"] {
        server.put(&format!("Patient/{id}"), &patient(id)).await.expect(201);
        let mut v2 = patient(id);
        v2["active"] = json!(true);
        server.put(&format!("Patient/{id}"), &v2).await.expect(200);
    }
    let erased_obs =
        server.post("Observation", &observation("erase-me", 80)).await.expect(201)["id"].as_str().unwrap().to_owned();
    let kept_obs =
        server.post("Observation", &observation("keep-me", 60)).await.expect(201)["id"].as_str().unwrap().to_owned();

    let mut conn = server.raw_connection().await;
    let wrapped: Vec<u8> = sqlx::query("SELECT wrapped FROM data_key WHERE key_id = 'patient/erase-me'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    drop(conn);
    let hex: String = wrapped.iter().map(|b| format!("{b:02x}")).collect();
    let before = server.raw_database_bytes().await;
    assert!(
        contains_bytes(&before, &wrapped) || contains_bytes(&before, hex.as_bytes()),
        "the scan must see the wrapped key before the erasure"
    );

    let refused = server.hearth(&["erase", "--patient", "erase-me", "--reason", ""]);
    assert!(!refused.status.success(), "an erasure needs a reason");
    // On PostgreSQL, a transaction of another database that was given its id before the erasure
    // and is still open when the scrub starts (in the full suite: another test's) makes every new
    // snapshot, VACUUM FULL's own included, keep the old key row: the scrub must wait it out.
    let other_database = (db == Db::Postgres).then(|| hold_transaction_elsewhere(Duration::from_secs(2)));
    let erase = server.hearth(&["erase", "--patient", "erase-me", "--reason", "GDPR art. 17 request #1234"]);
    assert!(erase.status.success(), "{}", String::from_utf8_lossy(&erase.stderr));
    if let Some(holder) = other_database {
        holder.join().expect("the other database's transaction ran");
    }
    let again = server.hearth(&["erase", "--patient", "erase-me", "--reason", "again"]);
    assert!(!again.status.success(), "a second erasure says nothing was left to erase");

    // Every version of everything in that compartment is gone, through the API ...
    for path in [
        "Patient/erase-me".to_owned(),
        "Patient/erase-me/_history/1".to_owned(),
        "Patient/erase-me/_history".to_owned(),
        format!("Observation/{erased_obs}"),
    ] {
        server.get(&path).await.expect_outcome(410, "deleted");
    }
    server.put("Patient/erase-me", &patient("erase-me")).await.expect_outcome(410, "deleted");
    server.post("Observation", &observation("erase-me", 1)).await.expect_outcome(410, "deleted");

    // ... and in the database: the wrapped key is gone, with no stale copy left in the files.
    let mut conn = server.raw_connection().await;
    let row = sqlx::query("SELECT wrapped, destroyed_us FROM data_key WHERE key_id = 'patient/erase-me'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(row.get::<Option<Vec<u8>>, _>(0).is_none());
    assert!(row.get::<Option<i64>, _>(1).is_some());
    let erasures: i64 = sqlx::query("SELECT COUNT(*) FROM erasure WHERE key_id = 'patient/erase-me'")
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(erasures, 1);
    drop(conn);
    let raw = server.raw_database_bytes().await;
    assert!(
        !contains_bytes(&raw, &wrapped),
        "the destroyed wrapped key survives in the raw database; the erasure said: {} {}",
        String::from_utf8_lossy(&erase.stdout),
        String::from_utf8_lossy(&erase.stderr)
    );
    assert!(!contains_bytes(&raw, hex.as_bytes()), "the destroyed wrapped key survives in the dump");

    // The other patient is untouched.
    assert_eq!(server.get("Patient/keep-me").await.expect(200)["active"], true);
    assert_eq!(server.get("Patient/keep-me/_history/1").await.expect(200)["meta"]["versionId"], "1");
    assert_eq!(server.get(&format!("Observation/{kept_obs}")).await.expect(200)["valueQuantity"]["value"], 60);
}
