//! Schema upgrades: a database written by an older schema (a fixture kept in
//! tests/fixtures/schema-v1, made by Hearth at migration 1 with its keyring) is refused until
//! migrated, then `hearth migrate` brings it forward and every version reads back.

use std::path::Path;

use serde_json::Value;

use crate::harness::{Db, Launch, PgDatabase, Server, hearth_command};
use crate::on_both_databases;

on_both_databases!(an_older_schema_is_migrated_on_request_and_reads_back);

fn fixture(name: &str) -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/schema-v1").join(name)
}

async fn an_older_schema_is_migrated_on_request_and_reads_back(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let keyring = dir.path().join("keys");
    std::fs::create_dir_all(&data_dir).unwrap();
    std::fs::create_dir_all(&keyring).unwrap();
    std::fs::copy(fixture("kek-v1.key"), keyring.join("kek-v1.key")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(keyring.join("kek-v1.key"), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    let (pg, database_url) = match db {
        Db::Sqlite => {
            std::fs::copy(fixture("sqlite.db"), data_dir.join("hearth.db")).unwrap();
            (None, format!("sqlite://{}", data_dir.join("hearth.db").display()))
        }
        Db::Postgres => {
            let pg = PgDatabase::create();
            let load = std::process::Command::new("psql")
                .args(["-q", "-v", "ON_ERROR_STOP=1", &pg.url, "-f"])
                .arg(fixture("postgres.sql"))
                .output()
                .expect("psql runs");
            assert!(load.status.success(), "loading the fixture: {}", String::from_utf8_lossy(&load.stderr));
            let url = pg.url.clone();
            (Some(pg), url)
        }
    };
    let data = data_dir.to_str().unwrap();
    let keys = keyring.to_str().unwrap();
    let storage = ["--data-dir", data, "--database-url", &database_url, "--keyring", keys];

    // Not migrated without being asked, even in dev mode with --migrate false.
    let mut serve = vec!["serve", "--dev", "--migrate", "false", "--listen", "127.0.0.1:0"];
    serve.extend(storage);
    let refused = hearth_command(&serve);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("needs schema migrations [2, 3, 4, 5, 6, 7, 8, 9, 10]")
            && stderr.contains("hearth migrate"),
        "{stderr}"
    );

    let mut migrate = vec!["migrate"];
    migrate.extend(storage);
    let migrated = hearth_command(&migrate);
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    assert!(String::from_utf8_lossy(&migrated.stdout).contains("migrations [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] applied"));

    let launch = Launch {
        data_dir: Some(data_dir.clone()),
        pg,
        extra_args: vec!["--keyring".into(), keys.into(), "--migrate".into(), "false".into()],
        no_database_flag: db == Db::Sqlite,
        ..Default::default()
    };
    let server = Server::launch(db, launch).await;
    let expected: Vec<Value> = serde_json::from_slice(
        &std::fs::read(fixture(&format!(
            "{}-expected.json",
            match db {
                Db::Sqlite => "sqlite",
                Db::Postgres => "postgres",
            }
        )))
        .unwrap(),
    )
    .unwrap();
    assert_eq!(expected.len(), 5);
    for entry in &expected {
        let path = entry["fullUrl_path"].as_str().unwrap();
        let version = entry["version"].as_str().unwrap().trim_start_matches("W/").trim_matches('"');
        let reply = server.get(&format!("{path}/_history/{version}")).await;
        match entry.get("resource").filter(|r| !r.is_null()) {
            Some(resource) => assert_eq!(&reply.expect(200), resource, "{path} version {version}"),
            None => {
                reply.expect_outcome(410, "deleted");
            }
        }
    }
    assert_eq!(server.get("Patient/fx-pat-1").await.expect(200)["active"], true);
    server.get("Organization/fx-org-1").await.expect_outcome(410, "deleted");
    // Data written before search existed was indexed at start-up; deleted resources were not.
    let found = server.get("Patient?family=fixturesson&birthdate=1970-05-06").await.expect(200);
    assert_eq!(found["entry"][0]["resource"]["id"], "fx-pat-1", "{found}");
    let found = server.get("Observation?patient=fx-pat-1&code=http://loinc.org|8867-4").await.expect(200);
    assert_eq!(found["entry"][0]["resource"]["id"], "fx-obs-1", "{found}");
    let found = server.get("Organization?name=fixture").await.expect(200);
    assert!(found.get("entry").is_none_or(|e| e.as_array().unwrap().is_empty()), "{found}");
    // The new schema works: writes, and an audit chain that verifies.
    server.put("Patient/fx-pat-1", &serde_json::json!({"resourceType": "Patient", "id": "fx-pat-1"})).await.expect(200);
    let mut verify = vec!["audit", "verify"];
    verify.extend(storage);
    let verify = hearth_command(&verify);
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
}
