//! Confidentiality by construction: every repro of issue 22 as a regression test, on both
//! databases. Each one was an oracle an ordinary token had on what it could not read; each
//! test shows the answer no longer depends on it. (The differential property test over random
//! data and queries is `access_differential.rs`.)

use base64::Engine as _;
use serde_json::{Value, json};

use crate::harness::{Db, Reply, Server};
use crate::on_both_databases;

on_both_databases!(
    has_and_chains_reach_only_what_the_token_may_search,
    cursors_are_sealed_and_carry_nothing_hidden,
    system_history_needs_a_read_scope_and_stays_in_reach,
    counts_leave_out_what_the_token_cannot_see_and_erased_patients,
    conditional_create_in_a_transaction_answers_as_a_read,
    hidden_resources_answer_exactly_as_missing_ones,
    free_text_results_are_not_stored_readable,
    convert_and_audit_side_paths,
    oversized_searches_are_refused,
);

async fn get_as(server: &Server, token: &str, path: &str) -> Reply {
    server.send(server.client_with(Some(token)).get(server.url(path))).await
}

async fn post_as(server: &Server, token: &str, path: &str, body: &Value) -> Reply {
    let request =
        server.client_with(Some(token)).post(server.url(path)).header("content-type", "application/fhir+json");
    server.send(request.body(body.to_string())).await
}

async fn put_as(server: &Server, token: &str, path: &str, body: &Value) -> Reply {
    let request = server.client_with(Some(token)).put(server.url(path)).header("content-type", "application/fhir+json");
    server.send(request.body(body.to_string())).await
}

fn observation(id: &str, patient: &str, category: &str, code: &str) -> Value {
    json!({"resourceType": "Observation", "id": id, "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
        "subject": {"reference": format!("Patient/{patient}")},
        "effectiveDateTime": format!("2026-0{}-01", 1 + id.len() % 9)})
}

fn ids(bundle: &Value, mode: &str) -> Vec<String> {
    let mut ids: Vec<String> = bundle["entry"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["search"]["mode"] == mode)
        .map(|e| {
            format!("{}/{}", e["resource"]["resourceType"].as_str().unwrap(), e["resource"]["id"].as_str().unwrap())
        })
        .collect();
    ids.sort();
    ids
}

fn link<'b>(bundle: &'b Value, relation: &str) -> Option<&'b str> {
    bundle["link"].as_array()?.iter().find(|l| l["relation"] == relation)?["url"].as_str()
}

/// Issue 22, repro 1: `_has` and chains answered questions about types the token could not
/// read, and reached beyond its compartment.
async fn has_and_chains_reach_only_what_the_token_may_search(db: Db) {
    let server = Server::start(db).await;
    for p in ["alice", "bob"] {
        server
            .put(&format!("Patient/{p}"), &json!({"resourceType": "Patient", "id": p, "birthDate": "1971-02-03"}))
            .await
            .expect(201);
    }
    // Bob had the HIV test; Alice did not.
    server.put("Observation/hiv-bob", &observation("hiv-bob", "bob", "laboratory", "75622-1")).await.expect(201);
    server.put("Observation/vs-bob", &observation("vs-bob", "bob", "vital-signs", "8867-4")).await.expect(201);
    server.put("Observation/vs-alice", &observation("vs-alice", "alice", "vital-signs", "8867-4")).await.expect(201);
    server
        .put("Condition/c-bob", &json!({"resourceType": "Condition", "id": "c-bob", "code": {"coding": [{"code": "X"}]}, "subject": {"reference": "Patient/bob"}}))
        .await
        .expect(201);

    // With only user/Patient.rs, a _has into Observation is refused, naming the type.
    let patients_only = server.token("user/Patient.rs", None);
    let refused = get_as(&server, &patients_only, "Patient?_has:Observation:subject:code=75622-1").await;
    let message = refused.expect_outcome(403, "forbidden");
    assert!(message.contains("Observation"), "{message}");

    // With only vital signs, chains into Patient and _has into lab results are refused.
    let vitals = server.token("user/Observation.rs?category=vital-signs", None);
    get_as(&server, &vitals, "Observation?subject:Patient.birthdate=1971-02-03").await.expect_outcome(403, "forbidden");
    // Vital signs and patients, but no lab results: the _has inside the chain searches lab
    // results only as far as the token reaches them, which is not at all.
    let vitals_and_patients = server.token("user/Observation.rs?category=vital-signs user/Patient.rs", None);
    let found =
        get_as(&server, &vitals_and_patients, "Observation?subject:Patient._has:Observation:subject:code=75622-1")
            .await
            .expect(200);
    assert_eq!(ids(&found, "match"), Vec::<String>::new(), "the lab result is out of reach: {found}");
    let found =
        get_as(&server, &vitals_and_patients, "Observation?subject:Patient.birthdate=1971-02-03").await.expect(200);
    assert_eq!(ids(&found, "match"), ["Observation/vs-alice", "Observation/vs-bob"]);

    // A patient app writes its own Observation pointing (focus) at Bob, then asks about Bob's
    // conditions through it: the chain reaches Patients within Alice's compartment only.
    let alice = server.token("patient/*.cruds", Some("alice"));
    // (A restricted token creates with POST: it may not choose ids, see docs/security.md.)
    let mut probe = observation("probe", "alice", "survey", "1");
    probe["focus"] = json!([{"reference": "Patient/bob"}]);
    post_as(&server, &alice, "Observation", &probe).await.expect(201);
    let count = |code: &'static str| {
        let path = format!("Observation?focus:Patient._has:Condition:subject:code={code}&_summary=count");
        let server = &server;
        let alice = &alice;
        async move { get_as(server, alice, &path).await.expect(200)["total"].clone() }
    };
    assert_eq!(count("X").await, 0);
    assert_eq!(count("Y").await, 0, "the answer does not change with Bob's conditions");
    // Within Alice's own reach the same query works.
    server
        .put("Condition/c-alice", &json!({"resourceType": "Condition", "id": "c-alice", "code": {"coding": [{"code": "Z"}]}, "subject": {"reference": "Patient/alice"}}))
        .await
        .expect(201);
    let mut own = observation("own", "alice", "survey", "1");
    own["focus"] = json!([{"reference": "Patient/alice"}]);
    post_as(&server, &alice, "Observation", &own).await.expect(201);
    assert_eq!(count("Z").await, 1);
}

/// Issue 22, repro 2: `next`/`previous` links decoded to other patients' ids and dates, and a
/// crafted cursor made the server describe hidden rows.
async fn cursors_are_sealed_and_carry_nothing_hidden(db: Db) {
    let server = Server::start(db).await;
    for (p, n) in [("alice", 4), ("bob", 5)] {
        server.put(&format!("Patient/{p}"), &json!({"resourceType": "Patient", "id": p})).await.expect(201);
        for i in 0..n {
            let category = if i % 2 == 0 { "laboratory" } else { "vital-signs" };
            let id = format!("{p}-{i}");
            server.put(&format!("Observation/{id}"), &observation(&id, p, category, "1")).await.expect(201);
        }
    }
    let alice = server.token(
        "patient/Observation.rs?category=laboratory patient/Observation.rs?category=vital-signs patient/Patient.rs",
        Some("alice"),
    );
    for query in ["Observation?_count=1", "Observation?_count=1&_sort=date", "?_type=Observation,Patient&_count=1"] {
        let mut seen = Vec::new();
        let mut page = get_as(&server, &alice, query).await.expect(200);
        let mut pages = 0;
        loop {
            seen.extend(ids(&page, "match"));
            for relation in ["next", "previous"] {
                let Some(url) = link(&page, relation) else { continue };
                let cursor = url.split("_cursor=").nth(1).unwrap();
                let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).expect("base64url");
                let text = String::from_utf8_lossy(&bytes);
                assert!(
                    !text.contains("bob") && !text.contains("alice") && !text.contains("2026"),
                    "cursor is sealed: {text}"
                );
            }
            pages += 1;
            let Some(next) = link(&page, "next") else { break };
            page = server.send(server.client_with(Some(&alice)).get(next)).await.expect(200);
            assert!(pages < 10);
        }
        seen.sort();
        let mut expected =
            vec!["Observation/alice-0", "Observation/alice-1", "Observation/alice-2", "Observation/alice-3"];
        if query.contains("Patient") {
            expected.push("Patient/alice");
        }
        assert_eq!(seen, expected, "{query}");
    }
    // A cursor is bound to its token and its query: another token's, another query's, an
    // altered or a made-up one is refused.
    let first = get_as(&server, &alice, "Observation?_count=1").await.expect(200);
    let next = link(&first, "next").unwrap().to_owned();
    let cursor = next.split("_cursor=").nth(1).unwrap().to_owned();
    let other = server.token("user/Observation.rs", None);
    server.send(server.client_with(Some(&other)).get(&next)).await.expect_outcome(400, "value");
    get_as(&server, &alice, &format!("Observation?_count=2&_cursor={cursor}")).await.expect_outcome(400, "value");
    let mut bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(&cursor).unwrap();
    bytes[14] ^= 0x20;
    let altered = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
    get_as(&server, &alice, &format!("Observation?_count=1&_cursor={altered}")).await.expect_outcome(400, "value");
    let forged = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"d":"a","v":["bob-0"]}"#);
    get_as(&server, &alice, &format!("Observation?_count=1&_cursor={forged}")).await.expect_outcome(400, "value");
}

/// Issue 22, repro 3: `/_history` checked no scope, and its cursors walked every resource id.
async fn system_history_needs_a_read_scope_and_stays_in_reach(db: Db) {
    let server = Server::start(db).await;
    for p in ["alice", "bob"] {
        server.put(&format!("Patient/{p}"), &json!({"resourceType": "Patient", "id": p})).await.expect(201);
        server
            .put(&format!("Observation/o-{p}"), &observation(&format!("o-{p}"), p, "laboratory", "1"))
            .await
            .expect(201);
    }
    server.put("Organization/clinic", &json!({"resourceType": "Organization", "id": "clinic"})).await.expect(201);
    get_as(&server, &server.token("openid fhirUser", None), "_history").await.expect_outcome(403, "forbidden");

    let alice = server.token("patient/*.rs", Some("alice"));
    let mut seen = Vec::new();
    let mut page = get_as(&server, &alice, "_history?_count=1").await.expect(200);
    loop {
        for entry in page["entry"].as_array().unwrap() {
            seen.push(entry["fullUrl"].as_str().unwrap().rsplit('/').take(2).collect::<Vec<_>>().join("<"));
        }
        let Some(next) = link(&page, "next") else { break };
        let cursor = next.split("_cursor=").nth(1).unwrap();
        let text = String::from_utf8_lossy(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(cursor).unwrap())
            .into_owned();
        assert!(!text.contains("bob") && !text.contains("clinic"), "{text}");
        page = server.send(server.client_with(Some(&alice)).get(next)).await.expect(200);
    }
    seen.sort();
    assert_eq!(seen, ["alice<Patient", "o-alice<Observation"]);
    // A type-restricted token sees that type's history only.
    let orgs = server.token("user/Organization.rs", None);
    let bundle = get_as(&server, &orgs, "_history").await.expect(200);
    let types: Vec<&str> =
        bundle["entry"].as_array().unwrap().iter().map(|e| e["resource"]["resourceType"].as_str().unwrap()).collect();
    assert_eq!(types, ["Organization"]);
}

/// Issue 22, repro 4: counts included what the token could not see, and erased patients.
async fn counts_leave_out_what_the_token_cannot_see_and_erased_patients(db: Db) {
    let server = Server::start(db).await;
    for p in ["alice", "bob", "carol"] {
        server.put(&format!("Patient/{p}"), &json!({"resourceType": "Patient", "id": p})).await.expect(201);
        server
            .put(&format!("Observation/o-{p}"), &observation(&format!("o-{p}"), p, "laboratory", "1"))
            .await
            .expect(201);
    }
    let alice = server.token("patient/*.rs", Some("alice"));
    assert_eq!(get_as(&server, &alice, "Observation?_summary=count").await.expect(200)["total"], 1);
    assert_eq!(get_as(&server, &alice, "Observation?code=1&_total=accurate").await.expect(200)["total"], 1);
    assert_eq!(server.get("Observation?_summary=count").await.expect(200)["total"], 3);

    let admin = server.token("admin/erasure", None);
    let erase =
        server.client_with(Some(&admin)).post(server.url("admin/erasure")).header("content-type", "application/json");
    server.send(erase.body(json!({"patient": "bob", "reason": "request 22"}).to_string())).await.expect(200);
    assert_eq!(server.get("Patient?_id=bob&_summary=count").await.expect(200)["total"], 0);
    assert_eq!(server.get("Observation?_summary=count").await.expect(200)["total"], 2);
    assert_eq!(server.get("Observation?subject:Patient._id=bob&_summary=count").await.expect(200)["total"], 0);
    assert_eq!(server.get("Patient?_has:Observation:subject:code=1&_summary=count").await.expect(200)["total"], 2);
    server.get("Patient/bob").await.expect_outcome(410, "deleted");
    // Bob's own (former) app is told the records were erased; Alice's app cannot tell.
    let bob = server.token("patient/*.rs", Some("bob"));
    get_as(&server, &bob, "Patient/bob").await.expect_outcome(410, "deleted");
    get_as(&server, &alice, "Patient/bob").await.expect_outcome(404, "not-found");
}

/// Issue 22, repro 5: a transaction's conditional create handed back the matched resource that
/// a plain read refused, with no policy call and no audited entity.
async fn conditional_create_in_a_transaction_answers_as_a_read(db: Db) {
    let server = Server::start(db).await;
    server
        .put("Patient/target", &json!({"resourceType": "Patient", "id": "target", "gender": "female"}))
        .await
        .expect(201);
    let create_search = server.token("user/Patient.cs", None);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Patient", "gender": "male"},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "_id=target"}}]});
    let refused = post_as(&server, &create_search, "", &bundle).await;
    let message = refused.expect_outcome(403, "forbidden");
    assert!(message.contains("Read"), "{message}");
    assert!(!String::from_utf8_lossy(&refused.bytes).contains("female"));

    // A patient app's condition matches only within its compartment: another patient's id
    // matches nothing, so the create goes ahead (a new resource, nothing disclosed).
    server.put("Patient/alice", &json!({"resourceType": "Patient", "id": "alice"})).await.expect(201);
    let alice = server.token("patient/*.crs", Some("alice"));
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": observation("x", "alice", "survey", "1"),
        "request": {"method": "POST", "url": "Observation", "ifNoneExist": "subject=Patient/target"}}]});
    let done = post_as(&server, &alice, "", &bundle).await.expect(200);
    assert_eq!(done["entry"][0]["response"]["status"], "201 Created", "{done}");
    // With read access, the match comes back and the audit entry names it.
    let reader = server.token("user/Patient.crs", None);
    let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": [{
        "resource": {"resourceType": "Patient"},
        "request": {"method": "POST", "url": "Patient", "ifNoneExist": "_id=target"}}]});
    let found = post_as(&server, &reader, "", &bundle).await.expect(200);
    assert_eq!(found["entry"][0]["resource"]["id"], "target", "{found}");
    let audit =
        get_as(&server, &server.token("admin/audit", None), "AuditEvent?entity=Patient/target").await.expect(200);
    let bundles = audit["entry"].as_array().unwrap().iter().filter(|e| e["resource"]["action"] == "E").count();
    assert!(bundles >= 1, "the Bundle's audit entry names what it returned: {audit}");
}

/// Issue 22, repro 6: another patient's resource answered 403 where a missing one answered
/// 404; a deleted one 410 before the access check; conditional update revealed ids.
async fn hidden_resources_answer_exactly_as_missing_ones(db: Db) {
    let server = Server::start(db).await;
    for p in ["alice", "bob"] {
        server.put(&format!("Patient/{p}"), &json!({"resourceType": "Patient", "id": p})).await.expect(201);
    }
    server.put("Observation/bob-live", &observation("bob-live", "bob", "laboratory", "1")).await.expect(201);
    server.put("Observation/bob-gone", &observation("bob-gone", "bob", "laboratory", "1")).await.expect(201);
    server.delete("Observation/bob-gone").await.expect(200);
    let alice = server.token("patient/*.cruds", Some("alice"));
    let same = |a: &Reply, b: &Reply, what: &str| {
        assert_eq!((a.status, b.status), (404, 404), "{what}");
        let text = |r: &Reply, id: &str| String::from_utf8_lossy(&r.bytes).replace(id, "ID");
        assert_eq!(text(a, "bob-live").replace("bob-gone", "ID"), text(b, "nothing-here"), "{what}");
    };
    let missing = get_as(&server, &alice, "Observation/nothing-here").await;
    same(&get_as(&server, &alice, "Observation/bob-live").await, &missing, "read of a hidden resource");
    same(&get_as(&server, &alice, "Observation/bob-gone").await, &missing, "read of a hidden deleted resource");
    let missing_history = get_as(&server, &alice, "Observation/nothing-here/_history").await;
    same(&get_as(&server, &alice, "Observation/bob-gone/_history").await, &missing_history, "history");
    let missing_vread = get_as(&server, &alice, "Observation/nothing-here/_history/1").await;
    same(&get_as(&server, &alice, "Observation/bob-live/_history/1").await, &missing_vread, "vread");
    // Writes: an update, a delete and a conditional update with a body id all answer 404 for
    // a hidden id as for a missing one, and change nothing.
    let mine = observation("bob-live", "alice", "laboratory", "1");
    let mut missing_mine = mine.clone();
    missing_mine["id"] = json!("nothing-here");
    same(
        &put_as(&server, &alice, "Observation/bob-live", &mine).await,
        &put_as(&server, &alice, "Observation/nothing-here", &missing_mine).await,
        "update",
    );
    let delete =
        |id: &str| server.send(server.client_with(Some(&alice)).delete(server.url(&format!("Observation/{id}"))));
    same(&delete("bob-live").await, &delete("nothing-here").await, "delete");
    same(
        &put_as(&server, &alice, "Observation?code=nomatch", &mine).await,
        &put_as(&server, &alice, "Observation?code=nomatch", &missing_mine).await,
        "conditional update with a body id",
    );
    assert_eq!(server.get("Observation/bob-live").await.expect(200)["subject"]["reference"], "Patient/bob");
    // A deletion is told to whoever reaches the whole type.
    server.get("Observation/bob-gone").await.expect_outcome(410, "deleted");
}

/// Issue 22, repro 7: a coded result's free text (`valueString`) sat readable in the search
/// index of the SQLite file and the PostgreSQL dump.
async fn free_text_results_are_not_stored_readable(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/p", &json!({"resourceType": "Patient", "id": "p"})).await.expect(201);
    let mut result = observation("free-text", "p", "laboratory", "75622-1");
    result["valueString"] = json!("Quorvandel reactive pattern");
    result["component"] = json!([{"code": {"coding": [{"code": "c"}]}, "valueString": "Quorvandel again"}]);
    server.put("Observation/free-text", &result).await.expect(201);
    let raw = server.raw_database_bytes().await;
    assert!(raw.windows(9).any(|w| w == b"free-text"), "the scan sees the database");
    for needle in ["Quorvandel", "quorvandel"] {
        assert!(!raw.windows(needle.len()).any(|w| w == needle.as_bytes()), "{needle} is readable at rest");
    }
    // Still findable as the value string it is (a blind token).
    let found = server.get("Observation?value-string=quorvandel%20reactive%20pattern").await.expect(200);
    assert_eq!(ids(&found, "match"), ["Observation/free-text"]);
}

/// Issue 22, repros 9 and 10: `$convert` ran an integration plugin for any token; the audit
/// described the undecoded path and missed PATCH's resource.
async fn convert_and_audit_side_paths(db: Db) {
    let server = Server::start(db).await;
    let openid = server.token("openid fhirUser", None);
    let request = server
        .client_with(Some(&openid))
        .post(server.url("$convert?plugin=hl7v2"))
        .header("content-type", "application/hl7-v2")
        .body("MSH|^~\\&|A|B|C|D|202611270930||ADT^A01|1|P|2.5.1\r");
    server.send(request).await.expect_outcome(403, "forbidden");

    server.put("Observation/ob1", &observation("ob1", "p", "laboratory", "1")).await.expect(201);
    server.get("%4Fbservation/%6Fb1").await.expect(200);
    let patch = server
        .client
        .patch(server.url("Observation/ob1"))
        .header("content-type", "application/json-patch+json")
        .body(r#"[{"op": "replace", "path": "/status", "value": "amended"}]"#);
    server.send(patch).await.expect(200);
    let audit =
        get_as(&server, &server.token("admin/audit", None), "AuditEvent?entity=Observation/ob1").await.expect(200);
    let actions: Vec<&str> = audit["entry"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["resource"]["subtype"][0]["code"].as_str())
        .collect();
    for action in ["update", "read", "patch"] {
        assert!(actions.contains(&action), "{action} of Observation/ob1 is found by its entity: {actions:?}");
    }
}

/// Issue 22, repro 11 (amplification): 150,000 unknown parameters made a 22.5 MB answer;
/// 50,000 `_include`s took seconds.
async fn oversized_searches_are_refused(db: Db) {
    let server = Server::start(db).await;
    let many: String = (0..150).map(|i| format!("unknown{i}=1")).collect::<Vec<_>>().join("&");
    let refused = server.get(&format!("Patient?{many}")).await;
    refused.expect_outcome(400, "too-costly");
    assert!(refused.bytes.len() < 1000);
    let includes: String = (0..11).map(|_| "_include=Observation:subject").collect::<Vec<_>>().join("&");
    server.get(&format!("Observation?{includes}")).await.expect_outcome(400, "too-costly");
}
