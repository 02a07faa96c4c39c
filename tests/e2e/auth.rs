//! Authentication and SMART scopes end to end: tokens, scope forms, patient compartments,
//! scope constraints and admin separation.

use serde_json::{Value, json};

use crate::harness::{Db, Launch, Reply, Server, TestIssuer};
use crate::on_both_databases;

on_both_databases!(
    tokens_are_required_and_checked,
    scope_forms_grant_what_they_say,
    patient_scopes_confine_to_the_compartment,
    admin_scopes_are_separate_from_clinical_ones
);

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

async fn get_with(server: &Server, token: Option<&str>, path: &str) -> Reply {
    server.send(server.client_with(token).get(server.url(path))).await
}

async fn post_with_token(server: &Server, token: &str, path: &str, body: &Value) -> Reply {
    let request =
        server.client_with(Some(token)).post(server.url(path)).header("content-type", "application/fhir+json");
    server.send(request.body(body.to_string())).await
}

async fn tokens_are_required_and_checked(db: Db) {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::create(dir.path(), "https://idp.example.test", "https://fhir.example.test");
    let server = Server::launch(db, Launch { extra_args: issuer.args(), ..Default::default() }).await;
    server.put("Patient/p", &json!({"resourceType": "Patient", "id": "p"})).await.expect(201);

    // Discovery and health need no token.
    assert_eq!(
        get_with(&server, None, "metadata").await.expect(200)["rest"][0]["security"]["service"][0]["coding"][0]["code"],
        "SMART-on-FHIR"
    );
    let smart = get_with(&server, None, ".well-known/smart-configuration").await.expect(200);
    assert!(smart["capabilities"].as_array().unwrap().iter().any(|c| c == "permission-v2"));
    assert_eq!(get_with(&server, None, "healthz").await.status, 200);

    let missing = get_with(&server, None, "Patient/p").await;
    missing.expect_outcome(401, "login");
    assert_eq!(missing.header("www-authenticate"), Some("Bearer realm=\"hearth\""));

    let base = json!({"iss": issuer.iss, "aud": issuer.audience, "sub": "u", "scope": "user/*.cruds"});
    let with = |changes: Value| {
        let mut claims = base.clone();
        for (k, v) in changes.as_object().unwrap() {
            claims[k] = v.clone();
        }
        claims
    };
    let n = now();
    let cases: Vec<(&str, String)> = vec![
        ("garbage", "not.a.jwt".to_owned()),
        ("expired", issuer.sign(&with(json!({"iat": n - 900, "exp": n - 300})))),
        ("not yet valid", issuer.sign(&with(json!({"iat": n, "nbf": n + 600, "exp": n + 900})))),
        ("wrong audience", issuer.sign(&with(json!({"aud": "https://elsewhere.test", "iat": n, "exp": n + 300})))),
        ("unknown issuer", issuer.sign(&with(json!({"iss": "https://evil.test", "iat": n, "exp": n + 300})))),
        ("too long-lived", issuer.sign(&with(json!({"iat": n, "exp": n + 86_400})))),
        ("no exp", issuer.sign(&with(json!({"iat": n})))),
        ("alg none", {
            use base64::Engine;
            let b64 = |v: &Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
            format!("{}.{}.", b64(&json!({"alg": "none", "typ": "JWT"})), b64(&with(json!({"iat": n, "exp": n + 300}))))
        }),
        ("forged signature", {
            let other = TestIssuer::create(dir.path(), &issuer.iss, &issuer.audience);
            other.sign(&with(json!({"iat": n, "exp": n + 300})))
        }),
    ];
    for (name, token) in cases {
        let reply = get_with(&server, Some(&token), "Patient/p").await;
        assert_eq!(reply.status, 401, "{name}: {}", String::from_utf8_lossy(&reply.bytes));
        reply.expect_outcome(401, "login");
        assert!(reply.header("www-authenticate").unwrap().contains("invalid_token"), "{name}");
    }
    // The real thing works, from the external issuer and from the dev issuer alike.
    let good = issuer.sign(&with(json!({"iat": n, "exp": n + 300})));
    assert_eq!(get_with(&server, Some(&good), "Patient/p").await.expect(200)["id"], "p");
    assert!(server.log().contains("principal=\"u\""), "the log names the principal");
}

/// HIPAA 164.312(d) with the identity provider: an issuer configured to require multi-factor
/// sign-in (`--jwt-require-amr`) has its tokens refused unless their `amr` names one of the
/// methods (an array, or one string as some providers send it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_issuer_may_require_multi_factor_sign_in() {
    let dir = tempfile::tempdir().unwrap();
    let issuer = TestIssuer::create(dir.path(), "https://idp.example.test", "https://fhir.example.test");
    let mut extra_args = issuer.args();
    extra_args.extend(["--jwt-require-amr".into(), "mfa,hwk".into()]);
    let server = Server::launch(Db::Sqlite, Launch { extra_args, ..Default::default() }).await;
    server.put("Patient/p", &json!({"resourceType": "Patient", "id": "p"})).await.expect(201);
    let n = now();
    let token = |amr: Value| {
        issuer.sign(&json!({"iss": issuer.iss, "aud": issuer.audience, "sub": "u", "scope": "user/*.rs",
                            "iat": n, "exp": n + 300, "amr": amr}))
    };
    for amr in [Value::Null, json!(["pwd"]), json!("otp-less")] {
        let reply = get_with(&server, Some(&token(amr.clone())), "Patient/p").await;
        reply.expect_outcome(401, "login");
        assert!(reply.header("www-authenticate").unwrap().contains("multi-factor"), "amr {amr}");
    }
    assert_eq!(get_with(&server, Some(&token(json!(["pwd", "mfa"]))), "Patient/p").await.expect(200)["id"], "p");
    assert_eq!(get_with(&server, Some(&token(json!(["hwk"]))), "Patient/p").await.expect(200)["id"], "p");
}

async fn scope_forms_grant_what_they_say(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/p", &json!({"resourceType": "Patient", "id": "p"})).await.expect(201);
    let lab = json!({"resourceType": "Observation", "id": "lab", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "laboratory"}]}],
        "code": {"text": "Hb"}, "subject": {"reference": "Patient/p"}});
    let vitals = json!({"resourceType": "Observation", "id": "vitals", "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"text": "HR"}, "subject": {"reference": "Patient/p"}});
    server.put("Observation/lab", &lab).await.expect(201);
    server.put("Observation/vitals", &vitals).await.expect(201);

    // (scope, path, answer) for reads: 403 when no scope allows reading the type at all (the
    // token alone decides that), 404 when a scope does but the resource is beyond its reach,
    // exactly as if it did not exist.
    let reads = [
        ("user/Patient.r", "Patient/p", 200),
        ("user/Patient.r", "Observation/lab", 403),
        ("user/*.read", "Observation/lab", 200),
        ("user/Observation.rs?category=laboratory", "Observation/lab", 200),
        ("user/Observation.rs?category=laboratory", "Observation/vitals", 404),
        (
            "user/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs",
            "Observation/vitals",
            200,
        ),
        ("user/Observation.rs?category=http://other.example|vital-signs", "Observation/vitals", 404),
        ("system/*.cruds", "Observation/vitals", 200),
        ("user/Observation.cud", "Observation/lab", 403),
        ("openid fhirUser", "Patient/p", 403),
        // A constraint that is no token or reference parameter of the type grants nothing.
        ("user/Observation.rs?nonsense=1", "Observation/lab", 403),
    ];
    for (scope, path, status) in reads {
        let token = server.token(scope, None);
        let reply = get_with(&server, Some(&token), path).await;
        match status {
            200 => drop(reply.expect(200)),
            403 => assert!(!reply.expect_outcome(403, "forbidden").is_empty(), "{scope} on {path}"),
            _ => drop(reply.expect_outcome(404, "not-found")),
        }
    }
    // Writes: v1 .read cannot write; .write and v2 c can.
    let new_patient = json!({"resourceType": "Patient"});
    post_with_token(&server, &server.token("user/*.read", None), "Patient", &new_patient)
        .await
        .expect_outcome(403, "forbidden");
    post_with_token(&server, &server.token("user/Patient.write", None), "Patient", &new_patient).await.expect(201);
    post_with_token(&server, &server.token("user/Patient.c", None), "Patient", &new_patient).await.expect(201);
    let constrained = server.token("user/Observation.cu?category=laboratory", None);
    let mut new_lab = lab.clone();
    new_lab.as_object_mut().unwrap().remove("id");
    post_with_token(&server, &constrained, "Observation", &new_lab).await.expect(201);
    let mut new_vitals = vitals.clone();
    new_vitals.as_object_mut().unwrap().remove("id");
    post_with_token(&server, &constrained, "Observation", &new_vitals).await.expect_outcome(403, "forbidden");
    // Turning a lab result into a vital sign is an update the constraint forbids, and turning
    // a vital sign into a lab result needs access to the vital sign first.
    let client = server.client_with(Some(&constrained));
    let put = |body: &Value, path: &str| {
        client.put(server.url(path)).header("content-type", "application/fhir+json").body(body.to_string())
    };
    let mut relabelled = vitals.clone();
    relabelled["category"] = lab["category"].clone();
    server.send(put(&relabelled, "Observation/vitals")).await.expect_outcome(404, "not-found");
    let mut vital_lab = lab.clone();
    vital_lab["category"] = vitals["category"].clone();
    server.send(put(&vital_lab, "Observation/lab")).await.expect_outcome(403, "forbidden");
    server.send(put(&lab, "Observation/lab")).await.expect(200);
}

async fn patient_scopes_confine_to_the_compartment(db: Db) {
    let server = Server::start(db).await;
    for id in ["alice", "bob"] {
        server.put(&format!("Patient/{id}"), &json!({"resourceType": "Patient", "id": id})).await.expect(201);
        let obs = json!({"resourceType": "Observation", "id": format!("obs-{id}"), "status": "final", "code": {"text": "x"}, "subject": {"reference": format!("Patient/{id}")}});
        server.put(&format!("Observation/obs-{id}"), &obs).await.expect(201);
    }
    server.put("Organization/clinic", &json!({"resourceType": "Organization", "id": "clinic"})).await.expect(201);

    let alice = server.token("patient/*.cruds", Some("alice"));
    for (path, status) in [
        ("Patient/alice", 200),
        ("Observation/obs-alice", 200),
        ("Observation/obs-alice/_history/1", 200),
        ("Observation/obs-alice/_history", 200),
        // What Alice cannot read answers exactly as what does not exist.
        ("Patient/bob", 404),
        ("Observation/obs-bob", 404),
        ("Observation/obs-bob/_history/1", 404),
        ("Observation/obs-bob/_history", 404),
        ("Organization/clinic", 404),
    ] {
        let reply = get_with(&server, Some(&alice), path).await;
        assert_eq!(reply.status, status, "{path}: {}", String::from_utf8_lossy(&reply.bytes));
        if status == 404 {
            let id = path.split('/').nth(1).unwrap();
            let missing = get_with(&server, Some(&alice), &path.replace(id, "nobody")).await;
            assert_eq!(missing.status, 404, "{path}");
            assert_eq!(
                String::from_utf8_lossy(&reply.bytes).replace(id, "X"),
                String::from_utf8_lossy(&missing.bytes).replace("nobody", "X"),
                "{path}: a hidden resource and a missing one answer alike"
            );
        }
    }
    // A restricted reader's history Bundle does not reveal how many versions exist in all.
    let history = get_with(&server, Some(&alice), "Observation/obs-alice/_history").await.expect(200);
    assert!(history.get("total").is_none(), "{history}");
    assert_eq!(server.get("Observation/obs-alice/_history").await.expect(200)["total"], 1);

    // Writes stay inside the compartment too.
    let for_bob = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/bob"}});
    post_with_token(&server, &alice, "Observation", &for_bob).await.expect_outcome(403, "forbidden");
    let for_alice = json!({"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/alice"}});
    post_with_token(&server, &alice, "Observation", &for_alice).await.expect(201);
    // Moving Bob's observation to Alice is refused: Alice cannot reach it as it is.
    let client = server.client_with(Some(&alice));
    let steal = json!({"resourceType": "Observation", "id": "obs-bob", "status": "final", "code": {"text": "x"}, "subject": {"reference": "Patient/alice"}});
    let put = client
        .put(server.url("Observation/obs-bob"))
        .header("content-type", "application/fhir+json")
        .body(steal.to_string());
    server.send(put).await.expect_outcome(404, "not-found");
    server.send(client.delete(server.url("Observation/obs-bob"))).await.expect_outcome(404, "not-found");
    assert_eq!(server.get("Observation/obs-bob").await.expect(200)["subject"]["reference"], "Patient/bob", "untouched");
    // A patient scope without a patient in context reaches nothing.
    let no_context = server.token("patient/*.cruds", None);
    get_with(&server, Some(&no_context), "Patient/alice").await.expect_outcome(403, "forbidden");
}

async fn admin_scopes_are_separate_from_clinical_ones(db: Db) {
    let server = Server::start(db).await;
    server.put("Patient/gone", &json!({"resourceType": "Patient", "id": "gone"})).await.expect(201);
    server.put("Patient/stays", &json!({"resourceType": "Patient", "id": "stays"})).await.expect(201);
    let erase = |token: String, body: Value| {
        let client = server.client_with(Some(&token));
        let request =
            client.post(server.url("admin/erasure")).header("content-type", "application/json").body(body.to_string());
        server.send(request)
    };
    let request = json!({"patient": "gone", "reason": "erasure request 77"});
    // A clinical token, however broad, reaches no admin route.
    erase(server.token("user/*.cruds system/*.cruds", None), request.clone()).await.expect_outcome(403, "forbidden");
    // An admin token reaches no clinical data.
    let admin = server.token("admin/erasure", None);
    get_with(&server, Some(&admin), "Patient/stays").await.expect_outcome(403, "forbidden");
    erase(admin.clone(), json!({"patient": "gone"})).await.expect_outcome(400, "structure");
    erase(admin.clone(), json!({"patient": "gone", "reason": " "})).await.expect_outcome(400, "required");
    erase(admin.clone(), json!({"patient": "nobody", "reason": "x"})).await.expect_outcome(404, "not-found");
    let done = erase(admin.clone(), request.clone()).await.expect(200);
    assert_eq!(done["issue"][0]["severity"], "information");
    server.get("Patient/gone").await.expect_outcome(410, "deleted");
    server.get("Patient/stays").await.expect(200);
    erase(server.token("admin/*", None), request).await.expect_outcome(404, "not-found");

    // Metrics are an admin area too, and carry route templates, never ids.
    get_with(&server, Some(&server.token("user/*.cruds", None)), "metrics").await.expect_outcome(403, "forbidden");
    let metrics = get_with(&server, Some(&server.token("admin/metrics", None)), "metrics").await;
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8(metrics.bytes).unwrap();
    assert!(
        text.contains(r#"hearth_http_request_duration_seconds_count{route="/{type}/{id}",method="GET",status="2xx"}"#),
        "{text}"
    );
    assert!(text.contains("hearth_audit_chain_length "), "{text}");
    assert!(text.contains("hearth_outbox_events{state=\"pending\"} 0"), "{text}");
    assert!(!text.contains("stays") && !text.contains("gone"), "no resource ids in metrics");
}
