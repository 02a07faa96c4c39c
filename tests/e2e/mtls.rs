//! Mutual TLS: client certificates chaining to the configured CA stand for configured
//! principals; others are refused in the handshake or at authentication.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair};
use serde_json::json;

use crate::harness::{Db, Launch, Server};
use crate::on_both_databases;

on_both_databases!(client_certificates_authenticate_system_integrations);

/// A CA that issues client certificates.
struct ClientCa {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl ClientCa {
    fn new(name: &str) -> ClientCa {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let key = KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        ClientCa { pem, issuer: Issuer::new(params, key) }
    }

    /// A client identity (certificate + key, PEM) with common name `name`.
    fn identity(&self, name: &str) -> reqwest::Identity {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        reqwest::Identity::from_pem(format!("{}{}", cert.pem(), key.serialize_pem()).as_bytes()).unwrap()
    }
}

async fn client_certificates_authenticate_system_integrations(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let trusted = ClientCa::new("Trusted client CA");
    let ca_file = dir.path().join("client-ca.pem");
    std::fs::write(&ca_file, &trusted.pem).unwrap();
    let launch = Launch {
        extra_args: vec![
            "--client-ca".into(),
            ca_file.display().to_string(),
            "--client-cert".into(),
            "lab-system=system/Observation.cr".into(),
        ],
        ..Default::default()
    };
    let server = Server::launch(db, launch).await;
    server.put("Patient/p", &json!({"resourceType": "Patient", "id": "p"})).await.expect(201);
    let server_ca = reqwest::Certificate::from_pem(&std::fs::read(&server.ca).unwrap()).unwrap();
    let client = |identity: Option<reqwest::Identity>| {
        let mut builder = reqwest::Client::builder().tls_certs_only([server_ca.clone()]);
        if let Some(identity) = identity {
            builder = builder.identity(identity);
        }
        builder.build().unwrap()
    };
    let observation = json!({"resourceType": "Observation", "status": "final", "code": {"text": "K+"}, "subject": {"reference": "Patient/p"}});
    let post = |c: &reqwest::Client| {
        c.post(server.url("Observation")).header("content-type", "application/fhir+json").body(observation.to_string())
    };

    // The mapped certificate acts with exactly its scopes.
    let lab = client(Some(trusted.identity("lab-system")));
    let created = server.send(post(&lab)).await.expect(201);
    let id = created["id"].as_str().unwrap();
    server.send(lab.get(server.url(&format!("Observation/{id}")))).await.expect(200);
    server.send(lab.get(server.url("Patient/p"))).await.expect_outcome(403, "forbidden");

    // A valid certificate that is not mapped grants nothing.
    let unmapped = client(Some(trusted.identity("someone-else")));
    server.send(post(&unmapped)).await.expect_outcome(401, "login");

    // A certificate from another CA fails the handshake.
    let rogue = client(Some(ClientCa::new("Rogue CA").identity("lab-system")));
    assert!(rogue.get(server.url("Patient/p")).send().await.is_err(), "an untrusted client certificate is refused");

    // No certificate: bearer tokens work as before, and nothing at all is 401.
    server.get("Patient/p").await.expect(200);
    server.send(client(None).get(server.url("Patient/p"))).await.expect_outcome(401, "login");

    // The audit log names the certificate principal.
    let export = server.hearth(&["audit", "export"]);
    assert!(String::from_utf8_lossy(&export.stdout).contains("\"subject\":\"cert:lab-system\""));
}
