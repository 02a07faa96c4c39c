//! The audit chain end to end: one entry per request (allowed or denied, reads included), no
//! clinical content, and `hearth audit verify` catching each kind of tampering.

use serde_json::{Value, json};
use sqlx::Row;

use crate::harness::{Db, Launch, Server};
use crate::on_both_databases;

on_both_databases!(
    every_request_is_audited_without_clinical_content,
    verify_catches_each_kind_of_tampering,
    the_audit_log_is_searchable_as_fhir_audit_events,
    refusals_are_limited_per_address_and_all_accounted_for
);

fn verify(server: &Server) -> (bool, String) {
    let output = server.hearth(&["audit", "verify"]);
    let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    (output.status.success(), text)
}

async fn original(conn: &mut sqlx::AnyConnection, seq: i64) -> String {
    sqlx::query("SELECT entry FROM audit_entry WHERE seq = $1").bind(seq).fetch_one(conn).await.unwrap().get(0)
}

fn export(server: &Server) -> Vec<Value> {
    let output = server.hearth(&["audit", "export"]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

async fn every_request_is_audited_without_clinical_content(db: Db) {
    let server = Server::start(db).await;
    let patient = json!({"resourceType": "Patient", "id": "aud-1", "name": [{"family": "Vantablackwood"}], "birthDate": "1948-02-29"});
    let mut statuses = Vec::new();
    statuses.push(server.put("Patient/aud-1", &patient).await.status);
    statuses.push(server.get("Patient/aud-1").await.status);
    statuses.push(server.post("Observation", &json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/aud-1"}})).await.status);
    statuses.push(server.get("Patient/aud-1/_history").await.status);
    statuses.push(server.get("Patient/aud-1/_history/1").await.status);
    statuses.push(server.get("Patient/nobody").await.status);
    statuses.push(server.send(server.client_with(None).get(server.url("Patient/aud-1"))).await.status);
    let reader = server.token("user/Observation.r", None);
    statuses.push(server.send(server.client_with(Some(&reader)).get(server.url("Patient/aud-1"))).await.status);
    statuses.push(server.delete("Patient/aud-1").await.status);
    statuses.push(server.get("Patient/aud-1").await.status);
    assert_eq!(statuses, [201, 200, 201, 200, 200, 404, 401, 403, 200, 410]);
    // Public endpoints are not clinical interactions and are not audited.
    server.get("metadata").await.expect(200);

    let entries = export(&server);
    assert_eq!(entries.len(), statuses.len(), "one entry per request: {entries:#?}");
    let seqs: Vec<i64> = entries.iter().map(|e| e["seq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, (1..=10).collect::<Vec<_>>());
    let summary: Vec<(&str, &str, u64)> = entries
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["outcome"].as_str().unwrap(), e["status"].as_u64().unwrap()))
        .collect();
    assert_eq!(
        summary,
        [
            ("update", "success", 201),
            ("read", "success", 200),
            ("create", "success", 201),
            ("history-instance", "success", 200),
            ("vread", "success", 200),
            ("read", "failed", 404),
            ("read", "denied", 401),
            ("read", "denied", 403),
            ("delete", "success", 200),
            ("read", "failed", 410),
        ]
    );
    assert_eq!(entries[0]["subject"], "e2e-tester");
    assert_eq!(entries[0]["resource_type"], "Patient");
    assert_eq!(entries[0]["resource_id"], "aud-1");
    assert_eq!(entries[0]["version"], 1);
    assert_eq!(entries[2]["resource_type"], "Observation");
    assert!(entries[2]["resource_id"].as_str().is_some_and(|id| !id.is_empty()), "creates record the assigned id");
    assert_eq!(entries[0]["ip"], "127.0.0.1");
    assert!(entries[0]["request_id"].as_str().is_some());
    assert!(entries[6].get("subject").is_none(), "no principal behind a 401");
    assert_eq!(entries[7]["decided_by"], "scope");
    let all = serde_json::to_string(&entries).unwrap();
    for phi in ["Vantablackwood", "1948-02-29"] {
        assert!(!all.contains(phi), "audit entries hold no clinical content");
    }
    let (ok, text) = verify(&server);
    assert!(ok && text.contains("intact: 10 entries"), "{text}");

    // Under concurrency the chain stays one chain.
    let reads = (0..40).map(|_| server.get("Patient/nobody"));
    futures::future::join_all(reads).await;
    let (ok, text) = verify(&server);
    assert!(ok && text.contains("intact: 50 entries"), "{text}");
}

async fn verify_catches_each_kind_of_tampering(db: Db) {
    let launch = Launch { extra_args: vec!["--audit-checkpoint-every".into(), "5".into()], ..Default::default() };
    let server = Server::launch(db, launch).await;
    for n in 0..23 {
        server.get(&format!("Patient/p{n}")).await;
    }
    let (ok, text) = verify(&server);
    assert!(ok && text.contains("intact: 23 entries") && text.contains("4 signed checkpoints"), "{text}");

    let mut conn = server.raw_connection().await;
    let set_entry =
        |seq: i64, entry: String| sqlx::query("UPDATE audit_entry SET entry = $1 WHERE seq = $2").bind(entry).bind(seq);
    // Altered: an entry's subject changed.
    let e3 = original(&mut conn, 3).await;
    set_entry(3, e3.replace("e2e-tester", "someone-else")).execute(&mut conn).await.unwrap();
    let (ok, text) = verify(&server);
    assert!(!ok && text.contains("entry 3 was altered"), "{text}");
    set_entry(3, e3).execute(&mut conn).await.unwrap();
    assert!(verify(&server).0, "restored");

    // Removed: an entry deleted.
    let row =
        sqlx::query("SELECT entry, prev_hash, hash FROM audit_entry WHERE seq = 7").fetch_one(&mut conn).await.unwrap();
    let (e7, p7, h7): (String, Vec<u8>, Vec<u8>) = (row.get(0), row.get(1), row.get(2));
    sqlx::query("DELETE FROM audit_entry WHERE seq = 7").execute(&mut conn).await.unwrap();
    let (ok, text) = verify(&server);
    assert!(!ok && text.contains("entry 7 is missing"), "{text}");
    sqlx::query("INSERT INTO audit_entry (seq, entry, prev_hash, hash) VALUES (7, $1, $2, $3)")
        .bind(e7)
        .bind(p7)
        .bind(h7)
        .execute(&mut conn)
        .await
        .unwrap();
    assert!(verify(&server).0, "restored");

    // Reordered: two entries' contents swapped.
    let (e8, e9) = (original(&mut conn, 8).await, original(&mut conn, 9).await);
    set_entry(8, e9.clone()).execute(&mut conn).await.unwrap();
    set_entry(9, e8.clone()).execute(&mut conn).await.unwrap();
    let (ok, text) = verify(&server);
    assert!(!ok && text.contains("entry 8"), "{text}");
    set_entry(8, e8).execute(&mut conn).await.unwrap();
    set_entry(9, e9).execute(&mut conn).await.unwrap();
    assert!(verify(&server).0, "restored");

    // Rewritten: entry 2 altered and every later hash recomputed, so the chain is
    // self-consistent; the signed checkpoint at 5 still catches it.
    let rows = sqlx::query("SELECT seq, entry, prev_hash, hash FROM audit_entry ORDER BY seq")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let saved: Vec<(i64, String, Vec<u8>, Vec<u8>)> =
        rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3))).collect();
    let mut prev = saved[0].3.clone();
    for (seq, entry, _, _) in saved.iter().skip(1) {
        let entry = if *seq == 2 { entry.replace("e2e-tester", "someone-else") } else { entry.clone() };
        let hash = hearth_server::store::chain_hash(&prev, entry.as_bytes()).to_vec();
        sqlx::query("UPDATE audit_entry SET entry = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(entry)
            .bind(&prev)
            .bind(&hash)
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
        prev = hash;
    }
    sqlx::query("UPDATE audit_head SET hash = $1").bind(&prev).execute(&mut conn).await.unwrap();
    let (ok, text) = verify(&server);
    assert!(!ok && text.contains("checkpoint at entry 5 does not match"), "{text}");
    for (seq, entry, prev_hash, hash) in &saved {
        sqlx::query("UPDATE audit_entry SET entry = $1, prev_hash = $2, hash = $3 WHERE seq = $4")
            .bind(entry)
            .bind(prev_hash)
            .bind(hash)
            .bind(seq)
            .execute(&mut conn)
            .await
            .unwrap();
    }
    sqlx::query("UPDATE audit_head SET hash = $1").bind(&saved.last().unwrap().3).execute(&mut conn).await.unwrap();
    assert!(verify(&server).0, "restored");

    // Truncated: the last entries removed.
    sqlx::query("DELETE FROM audit_entry WHERE seq > 21").execute(&mut conn).await.unwrap();
    let (ok, text) = verify(&server);
    assert!(!ok && text.contains("ends at entry 21 but 23"), "{text}");
}

/// The `AuditEvent` resources of a search Bundle (its matches), newest first unless sorted.
fn matches(bundle: &Value) -> Vec<Value> {
    bundle["entry"]
        .as_array()
        .map(|entries| {
            entries.iter().filter(|e| e["search"]["mode"] == "match").map(|e| e["resource"].clone()).collect()
        })
        .unwrap_or_default()
}

fn subtypes(events: &[Value]) -> Vec<String> {
    events.iter().map(|e| e["subtype"][0]["code"].as_str().unwrap().to_owned()).collect()
}

async fn the_audit_log_is_searchable_as_fhir_audit_events(db: Db) {
    let server = Server::start(db).await;
    // A clinic's morning: e2e-tester registers two patients and an observation; dr-b reads.
    let secret_name = "Quillingsworth";
    server
        .put("Patient/ae-p1", &json!({"resourceType": "Patient", "id": "ae-p1", "name": [{"family": secret_name}]}))
        .await
        .expect(201);
    server.put("Patient/ae-p2", &json!({"resourceType": "Patient", "id": "ae-p2"})).await.expect(201);
    let created = server
        .post(
            "Observation",
            &json!({"resourceType": "Observation", "status": "final", "code": {"text": "bp"},
            "subject": {"reference": "Patient/ae-p1"}}),
        )
        .await;
    created.expect(201);
    let observation = created.header("location").unwrap().split('/').nth_back(2).unwrap().to_owned();
    let dr_b = server.client_as("dr-b", "user/*.rs");
    server.send(dr_b.get(server.url(&format!("Observation/{observation}")))).await.expect(200);
    server.send(dr_b.get(server.url("Observation?subject=Patient/ae-p1"))).await.expect(200);
    server.send(dr_b.get(server.url("Patient/ae-p2"))).await.expect(200);
    server
        .send(dr_b.post(server.url("Patient")).header("content-type", "application/fhir+json").body("{}"))
        .await
        .expect_outcome(403, "forbidden");
    let before_queries = crate::harness::fhir_now();
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;

    // Only an auditor reads the log, and nobody writes it.
    server.get("AuditEvent").await.expect_outcome(403, "forbidden");
    let auditor = server.client_as("auditor-1", "admin/audit");
    let post = auditor.post(server.url("AuditEvent")).header("content-type", "application/fhir+json");
    server.send(post.body(r#"{"resourceType":"AuditEvent"}"#)).await.expect_outcome(405, "not-supported");
    server.send(auditor.delete(server.url("AuditEvent/1"))).await.expect_outcome(405, "not-supported");
    server.get("Patient/ae-p1/AuditEvent").await.expect_outcome(405, "not-supported");
    let search = |query: &str| server.send(auditor.get(server.url(&format!("AuditEvent?{query}"))));

    // Who saw patient ae-p1's records: dr-b's read of the observation (found through the
    // record's compartment) and the search that returned it.
    let seen = matches(&search("patient=Patient/ae-p1&agent=dr-b").await.expect(200));
    assert_eq!(subtypes(&seen), ["search-type", "read"], "{seen:#?}");
    let read = &seen[1];
    assert_eq!(read["action"], "R");
    assert_eq!(read["outcome"], "0");
    assert_eq!(read["agent"][0]["who"]["identifier"]["value"], "dr-b");
    assert_eq!(read["agent"][0]["network"]["address"], "127.0.0.1");
    let references: Vec<&str> =
        read["entity"].as_array().unwrap().iter().filter_map(|e| e["what"]["reference"].as_str()).collect();
    assert!(references.contains(&format!("Observation/{observation}/_history/1").as_str()), "{references:?}");
    assert!(references.contains(&"Patient/ae-p1"), "{references:?}");
    // Everything that touched the patient, by anyone, oldest first (the refused compartment
    // search for AuditEvents too).
    let all = matches(&search("patient=ae-p1&_sort=date").await.expect(200));
    assert_eq!(subtypes(&all), ["update", "create", "read", "search-type", "search-compartment"], "{all:#?}");
    // What happened to one resource.
    let observed = matches(&search(&format!("entity=Observation/{observation}&_sort=date")).await.expect(200));
    assert_eq!(subtypes(&observed), ["create", "read", "search-type"]);
    // Denials, and combinations (AND across parameters, OR within one).
    let denied = matches(&search("outcome=8&agent=dr-b").await.expect(200));
    assert_eq!(subtypes(&denied), ["create"]);
    assert_eq!(denied[0]["agent"][0]["policy"][0], "scope");
    let both = matches(&search("agent=dr-b&subtype=read,create").await.expect(200));
    assert_eq!(subtypes(&both), ["create", "read", "read"]);
    assert!(matches(&search("agent=dr-b&entity-type=Practitioner").await.expect(200)).is_empty());

    // Paging through everything before the queries, two at a time, matches the chain.
    let exported = export(&server);
    let expected: Vec<i64> = exported
        .iter()
        .filter(|e| e["at"].as_str().unwrap() <= before_queries.as_str())
        .map(|e| e["seq"].as_i64().unwrap())
        .collect();
    assert_eq!(expected.len(), 7);
    let mut url = server.url(&format!("AuditEvent?date=le{before_queries}&_sort=date&_count=2"));
    let mut paged = Vec::new();
    for _ in 0..10 {
        let page = server.send(auditor.get(&url)).await.expect(200);
        paged.extend(matches(&page).iter().map(|e| e["id"].as_str().unwrap().parse::<i64>().unwrap()));
        let next = page["link"].as_array().unwrap().iter().find(|l| l["relation"] == "next").cloned();
        match next {
            Some(link) => url = link["url"].as_str().unwrap().to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, expected);
    let newest_first = matches(&search(&format!("date=le{before_queries}")).await.expect(200));
    assert_eq!(newest_first.first().unwrap()["id"].as_str().unwrap(), expected.last().unwrap().to_string());
    assert!(matches(&search("date=lt2000-01-01").await.expect(200)).is_empty());

    // One entry by id; the chain hash ties it to the verified chain.
    let one = server.send(auditor.get(server.url(&format!("AuditEvent/{}", expected[0])))).await.expect(200);
    assert_eq!(
        (one["resourceType"].as_str(), one["subtype"][0]["code"].as_str()),
        (Some("AuditEvent"), Some("update"))
    );
    assert_eq!(one["extension"][0]["valueString"].as_str().map(str::len), Some(64));
    server.send(auditor.get(server.url("AuditEvent/999999"))).await.expect_outcome(404, "not-found");

    // Unknown parameters: refused (strict, the default) or reported (lenient); bad values refused.
    let lenient = auditor.get(server.url("AuditEvent?family=x")).header("prefer", "handling=lenient");
    let lenient = server.send(lenient).await.expect(200);
    assert!(lenient.to_string().contains("ignored parameters"), "{lenient}");
    search("family=x").await.expect_outcome(400, "value");
    search("date=yesterday").await.expect_outcome(400, "value");
    search("_count=100000").await.expect_outcome(400, "value");

    // Reading the log is audited too, and nothing clinical is in any of it.
    let reads = matches(&search("agent=auditor-1&subtype=search-type&_count=1000").await.expect(200));
    assert!(reads.len() >= 10, "{}", reads.len());
    let everything = search("_count=1000").await.expect(200).to_string();
    assert!(!everything.contains(secret_name));
    let (ok, text) = verify(&server);
    assert!(ok, "{text}");
}

/// Issue 25: refused requests do not wait for the audit log; an address over its refusal
/// budget is answered 429 (requests with a valid token still pass), and every refusal is in
/// the log, as an entry of its own or counted in a summary entry.
async fn refusals_are_limited_per_address_and_all_accounted_for(db: Db) {
    let launch = Launch { env: vec![("HEARTH_REFUSALS_PER_ADDRESS".into(), "2".into())], ..Default::default() };
    let server = Server::launch(db, launch).await;
    server.put("Patient/ref-1", &json!({"resourceType": "Patient", "id": "ref-1"})).await.expect(201);
    let anonymous = server.client_with(None);
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..60 {
        let response = server.send(anonymous.get(server.url("Patient/ref-1"))).await;
        let status = response.status;
        if status == 429 {
            assert_eq!(response.headers.get("retry-after").and_then(|v| v.to_str().ok()), Some("1"));
            response.expect_outcome(429, "throttled");
        }
        statuses.push(status);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let itemised = statuses.iter().filter(|s| **s == 401).count();
    let limited = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!(itemised + limited, 60, "{statuses:?}");
    // A burst of 20 (ten times the rate), then 2 a second.
    assert!(itemised >= 20 && (itemised as f64) <= 21.0 + 2.0 * elapsed, "{itemised} in {elapsed:.1} s: {statuses:?}");
    assert!(limited > 0, "{statuses:?}");
    // A valid token from the same address is served as before.
    server.get("Patient/ref-1").await.expect(200);

    let auditor = server.client_with(Some(&server.token("admin/audit", None)));
    let search = |query: &str| server.send(auditor.get(server.url(&format!("AuditEvent?{query}&_count=100"))));
    let entries = |bundle: Value| bundle["entry"].as_array().cloned().unwrap_or_default();
    let refused_reads = entries(search("subtype=read&outcome=4,8").await.expect(200));
    let logged_401 = refused_reads.iter().filter(|e| e["resource"]["outcomeDesc"] == "HTTP 401").count();
    let summaries = entries(search("subtype=refused-requests").await.expect(200));
    let counted: u64 = summaries
        .iter()
        .map(|e| {
            let text = e["resource"]["outcomeDesc"].as_str().unwrap();
            assert!(text.starts_with("HTTP 429; "), "{text}");
            assert_eq!(e["resource"]["agent"][0]["network"]["address"], "127.0.0.1");
            text.split_whitespace().nth(2).unwrap().parse::<u64>().unwrap()
        })
        .sum();
    assert_eq!((logged_401, counted), (itemised, limited as u64), "{summaries:#?}");
    let (ok, text) = verify(&server);
    assert!(ok, "{text}");
}
