//! Starting, configuring, restarting and stopping the server.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Db, Launch, PgDatabase, Server, TestIssuer, client_trusting, hearth_command};
use crate::on_both_databases;

on_both_databases!(
    restart_keeps_data_and_certificate,
    sigterm_lets_in_flight_requests_finish,
    sigkill_loses_no_acknowledged_write
);

async fn restart_keeps_data_and_certificate(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/kept", &json!({"resourceType": "Patient", "id": "kept", "active": true})).await.expect(201);
    let ca = std::fs::read(server.data_dir.join("tls/ca.pem")).unwrap();
    let server = server.restart(Launch::default()).await;
    assert_eq!(std::fs::read(server.data_dir.join("tls/ca.pem")).unwrap(), ca, "the dev CA is reused");
    let read = server.get("Patient/kept").await.expect(200);
    assert_eq!(read["active"], true);
    assert!(server.log().contains("DEVELOPMENT MODE"), "dev mode is announced loudly");
}

async fn sigterm_lets_in_flight_requests_finish(db: Db) {
    let mut server = Server::start(db).await;
    // HTTP/1.1 and a body sent in two halves: the request is in flight when SIGTERM arrives.
    let token = server.token(crate::harness::DEFAULT_SCOPE, None);
    let client = client_trusting(&server.data_dir.join("tls/ca.pem"), true, Some(&token));
    let body = json!({"resourceType": "Patient", "id": "in-flight", "active": true}).to_string();
    let (first, second) = body.split_at(body.len() / 2);
    let (tx, rx) = futures::channel::mpsc::unbounded::<Result<Vec<u8>, std::io::Error>>();
    tx.unbounded_send(Ok(first.as_bytes().to_vec())).unwrap();
    let request = client
        .put(server.url("Patient/in-flight"))
        .header("content-type", "application/fhir+json")
        .header("content-length", body.len().to_string())
        .body(reqwest::Body::wrap_stream(rx))
        .send();
    let pending = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(500)).await;
    crate::harness::signal(server.pid(), "TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    tx.unbounded_send(Ok(second.as_bytes().to_vec())).unwrap();
    drop(tx);
    let response = pending.await.unwrap().expect("the in-flight request completes");
    assert_eq!(response.status().as_u16(), 201);
    server.terminate().expect("exits cleanly after draining");
    assert!(server.log().contains("stopped"));
}

async fn sigkill_loses_no_acknowledged_write(db: Db) {
    let server = Server::start(db).await;
    let mut acknowledged = Vec::new();
    for n in 0..30 {
        let reply = server
            .post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "count"}, "valueInteger": n}))
            .await;
        acknowledged.push(reply.expect(201));
    }
    crate::harness::signal(server.pid(), "KILL");
    let server = server.restart_after_kill().await;
    for ack in acknowledged {
        let stored = server.get(&format!("Observation/{}", ack["id"].as_str().unwrap())).await.expect(200);
        assert_eq!(stored, ack, "an acknowledged write survives SIGKILL unchanged");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_mode_needs_keys_certificate_and_issuer_and_uses_the_given_ones() {
    // Without --dev, the server refuses to start until it has a KEK, a certificate and a token
    // issuer, and says what to pass.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data_arg = data.to_str().unwrap();
    let refused = hearth_command(&["serve", "--listen", "127.0.0.1:0", "--data-dir", data_arg]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--keyring") && stderr.contains("hearth keys init"), "{stderr}");

    let keyring = dir.path().join("keyring");
    let keyring_arg = keyring.to_str().unwrap();
    let init = hearth_command(&["keys", "init", "--keyring", keyring_arg]);
    assert!(init.status.success(), "{}", String::from_utf8_lossy(&init.stderr));
    assert!(!hearth_command(&["keys", "init", "--keyring", keyring_arg]).status.success(), "init never overwrites");

    let serve = ["serve", "--listen", "127.0.0.1:0", "--data-dir", data_arg, "--keyring", keyring_arg];
    let refused = hearth_command(&serve);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--tls-cert") && stderr.contains("--dev"), "{stderr}");

    // Operator-provided TLS files (here: ones a dev server generated) but no token issuer:
    // still refused, production never runs without authentication.
    let dev = Server::start(Db::Sqlite).await;
    let tls = dev.data_dir.join("tls");
    let cert = tls.join("server.pem").display().to_string();
    let key = tls.join("server-key.pem").display().to_string();
    let mut args: Vec<String> = serve.iter().map(|s| s.to_string()).collect();
    args.extend(["--tls-cert".into(), cert.clone(), "--tls-key".into(), key.clone()]);
    let refused = hearth_command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("--jwt-issuer"), "{stderr}");

    // With an issuer (a JWKS file) it starts without --dev and accepts that issuer's tokens.
    let issuer = TestIssuer::create(dir.path(), "https://idp.example.test", "https://fhir.example.test");
    let mut extra_args = vec![
        "--migrate".to_owned(),
        "--keyring".into(),
        keyring_arg.into(),
        "--tls-cert".into(),
        cert,
        "--tls-key".into(),
        key,
    ];
    extra_args.extend(issuer.args());
    // A certificate from a development CA is refused outside dev mode unless allowed.
    let mut args: Vec<String> =
        vec!["serve".into(), "--listen".into(), "127.0.0.1:0".into(), "--data-dir".into(), data_arg.into()];
    args.extend(extra_args.iter().cloned());
    let refused = hearth_command(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success() && stderr.contains("development CA"), "{stderr}");
    extra_args.push("--allow-dev-certificate".into());
    let launch = Launch {
        no_dev_flag: true,
        ca: Some(tls.join("ca.pem")),
        token: Some(issuer.token("integration-engine", "system/*.cruds")),
        extra_args,
        ..Default::default()
    };
    let mut production = Server::launch(Db::Sqlite, launch).await;
    production.post("Patient", &json!({"resourceType": "Patient"})).await.expect(201);
    assert!(!production.log().contains("DEVELOPMENT MODE"));
    // A dev token is worthless here: the dev issuer is trusted only in dev mode.
    let dev_token = crate::harness::dev_token(&production.data_dir, "system/*.cruds", None);
    let with_dev_token = production.client_with(Some(&dev_token));
    let reply = production
        .send(
            with_dev_token
                .post(production.url("Patient"))
                .header("content-type", "application/fhir+json")
                .body("{\"resourceType\":\"Patient\"}"),
        )
        .await;
    reply.expect_outcome(401, "login");
    production.terminate().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_from_config_file_and_environment_and_wrong_keys_refused() {
    let pg = PgDatabase::create();
    let dir = tempfile::tempdir().unwrap();
    let keyring = dir.path().join("keyring");
    assert!(hearth_command(&["keys", "init", "--keyring", keyring.to_str().unwrap()]).status.success());

    // The database URL and keyring via a TOML config file ...
    let config = dir.path().join("hearth.toml");
    std::fs::write(
        &config,
        format!("database_url = \"{}\"\nkeyring = \"{}\"\nmax_body_bytes = 100000\n", pg.url, keyring.display()),
    )
    .unwrap();
    let server = Server::launch(
        Db::Sqlite,
        Launch {
            extra_args: vec!["--config".into(), config.display().to_string()],
            no_database_flag: true,
            ..Default::default()
        },
    )
    .await;
    server.put("Patient/via-file", &json!({"resourceType": "Patient", "id": "via-file"})).await.expect(201);
    assert!(server.log().contains("backend=\"postgres\""), "{}", server.log());
    drop(server);

    // ... and via the environment: a second server sees the first one's data.
    let server = Server::launch(
        Db::Sqlite,
        Launch {
            env: vec![
                ("HEARTH_DATABASE_URL".into(), pg.url.clone()),
                ("HEARTH_KEYRING".into(), keyring.display().to_string()),
            ],
            ..Default::default()
        },
    )
    .await;
    server.get("Patient/via-file").await.expect(200);
    drop(server);

    // A keyring with another key under the same version is refused before anything is read.
    let other = dir.path().join("other-keyring");
    assert!(hearth_command(&["keys", "init", "--keyring", other.to_str().unwrap()]).status.success());
    let data = dir.path().join("data3");
    let refused = hearth_command(&[
        "serve",
        "--dev",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        data.to_str().unwrap(),
        "--database-url",
        &pg.url,
        "--keyring",
        other.to_str().unwrap(),
    ]);
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("not the key this database was encrypted with"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_structured_and_free_of_phi() {
    let launch = Launch { extra_args: vec!["--log-format".into(), "json".into()], ..Default::default() };
    let server = Server::launch(Db::Sqlite, launch).await;
    let patient = json!({"resourceType": "Patient", "id": "log-1", "name": [{"family": "Quasimodova"}],
        "identifier": [{"value": "SSN-078-05-1120"}], "birthDate": "1933-07-04"});
    server.put("Patient/log-1", &patient).await.expect(201);
    server.get("Patient/log-1").await.expect(200);
    server.get("Patient/log-1/_history?_since=1933-07-04T00:00:00Z").await.expect(200);
    server.put("Patient/log-2", &json!({"resourceType": "Observation"})).await.expect_outcome(400, "invalid");
    let log = server.log();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let completed: Vec<&serde_json::Value> =
        lines.iter().filter(|l| l["fields"]["message"] == "request completed").collect();
    assert_eq!(completed.len(), 4, "one line per request");
    for line in &completed {
        assert!(line["span"]["request_id"].is_string() && line["span"]["route"].is_string(), "{line}");
        assert_eq!(line["span"]["principal"], "e2e-tester");
        assert!(line["fields"]["status"].is_u64() && line["fields"]["latency_ms"].is_f64());
    }
    for phi in ["Quasimodova", "078-05-1120", "1933-07-04"] {
        assert!(!log.contains(phi), "'{phi}' reached the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_says_exactly_what_is_wrong() {
    // Two dev servers give two certificate/key pairs to mix up.
    let a = Server::start(Db::Sqlite).await;
    let b = Server::start(Db::Sqlite).await;
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::create(dir.path(), "https://idp.example.test", "https://fhir.example.test");
    let config = dir.path().join("hearth.toml");
    let write = |cert: &std::path::Path, key: &std::path::Path, extra: &str| {
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nkeyring = \"{}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{extra}\n[[issuers]]\niss = \"{}\"\naudience = \"{}\"\njwks_file = \"{}\"\n",
                a.data_dir.display(),
                a.keyring().display(),
                cert.display(),
                key.display(),
                issuer.iss,
                issuer.audience,
                issuer.jwks_file.display()
            ),
        )
        .unwrap();
    };
    let check = || hearth_command(&["config", "check", "--config", config.to_str().unwrap()]);

    write(&a.data_dir.join("tls/server.pem"), &a.data_dir.join("tls/server-key.pem"), "");
    let dev_cert = check();
    let out = String::from_utf8_lossy(&dev_cert.stdout);
    assert!(!dev_cert.status.success() && out.contains("FAIL TLS certificate issuer"), "{out}");

    write(&a.data_dir.join("tls/server.pem"), &a.data_dir.join("tls/server-key.pem"), "allow_dev_certificate = true");
    let good = check();
    let out = String::from_utf8_lossy(&good.stdout);
    assert!(good.status.success(), "{out}{}", String::from_utf8_lossy(&good.stderr));
    assert!(
        out.contains("configuration is usable") && out.contains("versions [1]") && out.contains("valid until"),
        "{out}"
    );

    write(&a.data_dir.join("tls/server.pem"), &b.data_dir.join("tls/server-key.pem"), "");
    let mismatch = check();
    let out = String::from_utf8_lossy(&mismatch.stdout);
    assert!(!mismatch.status.success() && out.contains("FAIL TLS certificate and key"), "{out}");

    write(&a.data_dir.join("tls/server.pem"), &a.data_dir.join("tls/server-key.pem"), "listen_adress = \"x\"");
    let unknown = check();
    let out = String::from_utf8_lossy(&unknown.stdout);
    assert!(!unknown.status.success() && out.contains("listen_adress"), "{out}");

    std::fs::remove_file(a.keyring().join("kek-v1.key")).unwrap();
    write(&a.data_dir.join("tls/server.pem"), &a.data_dir.join("tls/server-key.pem"), "allow_dev_certificate = true");
    let no_keys = check();
    let out = String::from_utf8_lossy(&no_keys.stdout);
    assert!(!no_keys.status.success() && out.contains("FAIL key-encryption keys"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_systemd_unit_is_hardened_and_verifies() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/hearth.service")).unwrap();
    for directive in [
        "User=hearth",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=/var/lib/hearth",
        "PrivateTmp=yes",
        "CapabilityBoundingSet=",
    ] {
        assert!(unit.lines().any(|l| l.trim() == directive), "the unit lacks {directive}");
    }
    // systemd-analyze checks the unit offline; it needs the binary it starts to exist, so it
    // gets a copy pointing at the one this build made.
    let Ok(status) = std::process::Command::new("systemd-analyze").arg("--version").output() else {
        panic!("systemd-analyze is needed to verify the unit (Debian package: systemd)");
    };
    assert!(status.status.success());
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("hearth.service");
    std::fs::write(&copy, unit.replace("/usr/bin/hearth", env!("CARGO_BIN_EXE_hearth"))).unwrap();
    let verify = std::process::Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let stderr = String::from_utf8_lossy(&verify.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("hearth.service"))
        // The account exists only once the package's postinst has run.
        .filter(|l| !l.contains("User=") && !l.contains("Group=") && !l.contains("user hearth"))
        .collect();
    assert!(verify.status.success() || problems.is_empty(), "systemd-analyze verify: {stderr}");
    assert!(problems.is_empty(), "systemd-analyze verify: {stderr}");
}
