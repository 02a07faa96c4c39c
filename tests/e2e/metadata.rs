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
    assert_eq!(
        rest["interaction"],
        serde_json::json!([{"code": "transaction"}, {"code": "batch"}, {"code": "search-system"}, {"code": "history-system"}])
    );
    let common: Vec<&str> =
        rest["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    assert_eq!(common, ["_id", "_lastUpdated", "_profile", "_security", "_source", "_tag"]);
    assert!(rest["documentation"].as_str().unwrap().contains("_contained"), "unsupported search features are declared");
    assert_eq!(rest["operation"][0]["name"], "convert", "the plugin converter operation is declared");
    let resources = rest["resource"].as_array().unwrap();
    assert_eq!(resources.len(), 146, "every R4 resource type");
    for resource in resources {
        if resource["type"] == "AuditEvent" {
            // The audit log: read and search only, with its own parameters.
            assert_eq!(resource["interaction"], serde_json::json!([{"code": "read"}, {"code": "search-type"}]));
            let params: Vec<&str> =
                resource["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
            assert!(params.contains(&"patient") && params.contains(&"agent") && params.contains(&"date"), "{params:?}");
            continue;
        }
        let mut codes: Vec<&str> =
            resource["interaction"].as_array().unwrap().iter().map(|i| i["code"].as_str().unwrap()).collect();
        codes.sort();
        assert_eq!(
            codes,
            ["create", "delete", "history-instance", "history-type", "patch", "read", "search-type", "update", "vread"],
            "{}",
            resource["type"]
        );
        let params: Vec<&str> =
            resource["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
        assert!(params.contains(&"_id") && params.contains(&"_lastUpdated"), "{}", resource["type"]);
        assert_eq!(resource["operation"][0]["name"], "validate", "{}", resource["type"]);
        assert_eq!(resource["conditionalCreate"], true);
        assert_eq!(resource["conditionalDelete"], "single");
        assert_eq!(resource["updateCreate"], true);
    }
    // The registry's parameters, with the blind-index limits stated where they apply.
    let patient = resources.iter().find(|r| r["type"] == "Patient").unwrap();
    let family = patient["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == "family").unwrap();
    assert_eq!(family["type"], "string");
    assert!(family["documentation"].as_str().unwrap().contains("exact"), "{family}");
    let observation = resources.iter().find(|r| r["type"] == "Observation").unwrap();
    let names: Vec<&str> =
        observation["searchParam"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()).collect();
    for expected in [
        "code",
        "date",
        "patient",
        "subject",
        "value-quantity",
        "code-value-quantity",
        "category",
        "code-value-concept",
    ] {
        assert!(names.contains(&expected), "Observation lacks {expected}");
    }
    // Every R4 parameter of the types the registry once lacked, each naming its definition.
    for (res_type, code) in
        [("CarePlan", "patient"), ("Location", "address-city"), ("ServiceRequest", "patient"), ("Patient", "phonetic")]
    {
        let resource = resources.iter().find(|r| r["type"] == res_type).unwrap();
        let param = resource["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == code);
        let param = param.unwrap_or_else(|| panic!("{res_type} lacks {code}"));
        assert!(param["definition"].as_str().unwrap().starts_with("http://hl7.org/fhir/SearchParameter/"), "{param}");
    }
    let total: usize = resources.iter().map(|r| r["searchParam"].as_array().unwrap().len()).sum();
    assert!(total > 1600 + 6 * 140, "{total} parameters");
    let audit = resources.iter().find(|r| r["type"] == "AuditEvent").unwrap();
    let agent = audit["searchParam"].as_array().unwrap().iter().find(|p| p["name"] == "agent").unwrap();
    assert_eq!(agent["type"], "reference", "R4 declares AuditEvent.agent a reference");
    assert!(observation["searchInclude"].as_array().unwrap().iter().any(|i| i == "Observation:subject"));
    assert!(patient["searchRevInclude"].as_array().unwrap().iter().any(|i| i == "Observation:subject"));
    // Each advertised type really works.
    for body in [
        serde_json::json!({"resourceType": "Patient"}),
        serde_json::json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}}),
        serde_json::json!({"resourceType": "VisionPrescription"}),
    ] {
        server.post(body["resourceType"].as_str().unwrap(), &body).await.expect(201);
    }
}
