//! Backup under write load, restore elsewhere, verify, and compare every write acknowledged
//! before the backup started.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use serde_json::{Value, json};

use crate::harness::{Db, Launch, PgDatabase, Server, hearth_command};
use crate::on_both_databases;

on_both_databases!(backup_under_load_restores_and_verifies);

async fn backup_under_load_restores_and_verifies(db: Db) {
    let server = Arc::new(Server::start(db).await);
    let mut acknowledged: Vec<Value> = Vec::new();
    for n in 0..25 {
        let id = format!("bk-{n}");
        acknowledged.push(
            server
                .put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id, "birthDate": "1980-01-01"}))
                .await
                .expect(201),
        );
        let obs = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{id}")}, "valueInteger": n});
        acknowledged.push(server.post("Observation", &obs).await.expect(201));
    }
    acknowledged.push(
        server.put("Patient/bk-0", &json!({"resourceType": "Patient", "id": "bk-0", "active": true})).await.expect(200),
    );

    // Writers keep going while the backup runs.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (server, stop) = (server.clone(), stop.clone());
        tokio::spawn(async move {
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 2_000 {
                server.post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "y"}, "subject": {"reference": "Patient/bk-1"}})).await.expect(201);
                n += 1;
            }
            n
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("backup");
    let backup = {
        let (server, dest) = (server.clone(), dest.clone());
        tokio::task::spawn_blocking(move || server.hearth(&["backup", dest.to_str().unwrap()])).await.unwrap()
    };
    stop.store(true, Ordering::Relaxed);
    let written_during = writer.await.unwrap();
    assert!(backup.status.success(), "{}", String::from_utf8_lossy(&backup.stderr));
    assert!(written_during > 0);
    let manifest: Value = serde_json::from_slice(&std::fs::read(dest.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["kek_versions"], json!([1]));
    assert!(manifest["counts"]["versions"].as_i64().unwrap() >= 51);

    // Restore onto a fresh database, with the same keyring (backed up separately).
    let keyring = server.keyring();
    let target_dir = dir.path().join("restored");
    let target_pg = (db == Db::Postgres).then(PgDatabase::create);
    let target_url = match &target_pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}", target_dir.join("hearth.db").display()),
    };
    std::fs::create_dir_all(&target_dir).unwrap();
    let storage = [
        "--data-dir",
        target_dir.to_str().unwrap(),
        "--database-url",
        &target_url,
        "--keyring",
        keyring.to_str().unwrap(),
    ];
    let run = |command: &[&str]| {
        let mut args = command.to_vec();
        args.extend(storage);
        hearth_command(&args)
    };
    // A damaged backup is refused before anything is written.
    let damaged = dir.path().join("damaged");
    std::fs::create_dir_all(&damaged).unwrap();
    let file = manifest["file"].as_str().unwrap();
    std::fs::copy(dest.join("manifest.json"), damaged.join("manifest.json")).unwrap();
    let mut bytes = std::fs::read(dest.join(file)).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(damaged.join(file), bytes).unwrap();
    let refused = run(&["restore", damaged.to_str().unwrap()]);
    assert!(!refused.status.success() && String::from_utf8_lossy(&refused.stderr).contains("checksum"));

    let restored = run(&["restore", dest.to_str().unwrap()]);
    assert!(restored.status.success(), "{}", String::from_utf8_lossy(&restored.stderr));
    let again = run(&["restore", dest.to_str().unwrap()]);
    assert!(!again.status.success(), "a restore never overwrites data");
    let manifest_path = dest.join("manifest.json");
    let verify = run(&["verify", "--manifest", manifest_path.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&verify.stdout);
    assert!(verify.status.success(), "{out}{}", String::from_utf8_lossy(&verify.stderr));
    assert!(
        out.contains("counts match the manifest") && out.contains("0 failed") && out.contains("audit chain: intact"),
        "{out}"
    );

    // Every write acknowledged before the backup reads back from the restored copy.
    let launch = Launch {
        data_dir: Some(target_dir.clone()),
        pg: target_pg,
        no_database_flag: db == Db::Sqlite,
        extra_args: vec!["--keyring".into(), keyring.display().to_string()],
        ..Default::default()
    };
    let restored_server = Server::launch(db, launch).await;
    for resource in &acknowledged {
        let path = format!("{}/{}", resource["resourceType"].as_str().unwrap(), resource["id"].as_str().unwrap());
        let version = resource["meta"]["versionId"].as_str().unwrap();
        assert_eq!(&restored_server.get(&format!("{path}/_history/{version}")).await.expect(200), resource, "{path}");
    }
    assert_eq!(restored_server.get("Patient/bk-0").await.expect(200)["active"], true);
}
