//! The CapabilityStatement describes exactly what is implemented.

use crate::harness::{Db, Server};
use crate::on_both_databases;

on_both_databases!(capability_statement_lists_what_is_implemented);

async fn capability_statement_lists_what_is_implemented(db: Db) {
    let server = Server::start(db).await;
    let reply = server.get("metadata").await;
    let cs = reply.expect(200);
    assert!(reply.header("content-type").unwrap().starts_with("application/fhir+json"));
    assert_eq!(cs["resourceType"], "CapabilityStatement");
    assert_eq!(cs["fhirVersion"], "4.0.1");
    assert_eq!(cs["kind"], "instance");
    assert_eq!(cs["implementation"]["url"], server.base);
    let rest = &cs["rest"][0];
    assert_eq!(rest["mode"], "server");
    assert!(rest.get("interaction").is_none(), "no system-level interaction is implemented yet");
    assert_eq!(rest["operation"][0]["name"], "convert", "the plugin converter operation is declared");
    let resources = rest["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146, "every R4 resource type");
    for resource in resources {
        let mut codes: Vec<&str> =
            resource["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        codes.sort();
        assert_eq!(codes, ["create", "delete", "history-instance", "read", "update", "vread"], "{}", resource["type"]);
        assert!(resource.get("searchParam").is_none(), "search is not implemented yet");
        assert_eq!(resource["conditionalCreate"], false);
        assert_eq!(resource["updateCreate"], true);
    }
    // Each advertised type really works.
    for res_type in ["Patient", "Observation", "VisionPrescription"] {
        server.post(res_type, &serde_json::json!({"resourceType": res_type})).await.expect(201);
    }
}
