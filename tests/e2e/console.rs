//! The compliance console in a real headless Chromium (driven over WebDriver): sign in with an
//! admin token, upload a plugin, watch a shadow binding's report change under real traffic,
//! switch it to enforce and see requests denied, review a break-glass access, verify the audit
//! chain and see a tampered chain flagged, read the keys page; at desktop and phone widths,
//! with the keyboard, and without a patient's name on any page. Screenshots of each page are
//! written to `$HEARTH_CONSOLE_SCREENSHOTS` (e.g. `docs/console`) when set.
//!
//! The session rules (cookie attributes, CSRF, automatic logoff, audited sign-ins, scopes)
//! are checked with a plain HTTP client as well.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Db, Launch, Server, dev_token_for, dev_token_with_roles};
use crate::plugins::{id_from_location, observation_behind_refused_consent, plugin_dir, policies, with_policies};
use crate::webdriver::Browser;

/// Where screenshots go: `$HEARTH_CONSOLE_SCREENSHOTS` (relative to the repository root), or
/// a temporary folder.
struct Screenshots {
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

impl Screenshots {
    fn new() -> Screenshots {
        match std::env::var("HEARTH_CONSOLE_SCREENSHOTS") {
            Ok(dir) if !dir.is_empty() => {
                let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("repository root");
                let dir = root.join(dir);
                std::fs::create_dir_all(&dir).expect("screenshot folder");
                Screenshots { dir, _temp: None }
            }
            _ => {
                let temp = tempfile::tempdir().expect("temp dir");
                Screenshots { dir: temp.path().to_owned(), _temp: Some(temp) }
            }
        }
    }

    async fn take(&self, browser: &Browser, name: &str) {
        let png = browser.screenshot().await;
        assert!(png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000, "{name}: not a PNG");
        std::fs::write(self.dir.join(format!("{name}.png")), png).expect("write screenshot");
    }
}

/// The family name of the test patient: it must appear on no console page.
const FAMILY: &str = "Quistgaard";

/// Loads `path` until its text contains `wanted` (the shadow report fills in off the
/// request path), and returns that text.
async fn until_text(browser: &Browser, url: &str, wanted: &str) -> String {
    let mut text = String::new();
    for _ in 0..100 {
        browser.go(url).await;
        text = browser.text().await;
        if text.contains(wanted) {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} never showed {wanted:?}; last text:\n{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compliance_officer_runs_plugins_policies_and_audits_in_a_browser() {
    let folder = policies(
        "# Consent on observations.\n[[binding]]\nplugin = \"consent\"\nresource_types = [\"Observation\"]\ninteractions = [\"read\", \"search\"]\nmode = \"enforce\"\n",
    );
    let server = Server::launch(Db::Sqlite, with_policies(folder.path())).await;
    let officer = dev_token_for(
        &server.data_dir,
        "compliance-officer",
        "admin/plugins admin/audit admin/keys admin/erasure",
        None,
        &[],
    );
    let shots = Screenshots::new();
    let mut browser = Browser::start(1280, 1100).await;
    let at = |path: &str| server.url(path);
    let mut sources = Vec::new();

    // Signed out, every page leads to the sign-in form; bad tokens are refused with the reason.
    browser.go(&at("console/plugins")).await;
    assert!(browser.url().await.contains("/console/login"), "{}", browser.url().await);
    assert!(browser.text().await.contains("Sign in to continue."));
    shots.take(&browser, "sign-in").await;
    browser.fill("#token", "not-a-token").await;
    browser.click_text("Sign in").await;
    assert!(
        browser.text().await.contains("Not signed in: the token is not a well-formed JWT"),
        "{}",
        browser.text().await
    );
    let clinician = dev_token_for(&server.data_dir, "dr-example", "user/*.cruds", None, &[]);
    browser.fill("#token", &clinician).await;
    browser.click_text("Sign in").await;
    assert!(browser.text().await.contains("none of the admin/plugins, admin/audit or admin/keys scopes"));
    browser.fill("#token", &officer).await;
    browser.click_text("Sign in").await;
    assert!(browser.url().await.ends_with("/console/plugins"), "{}", browser.url().await);
    let text = browser.text().await;
    assert!(text.contains("Signed in as compliance-officer") && text.contains("None."), "{text}");
    let cookies = browser.cookies().await;
    let session = cookies.iter().find(|c| c["name"] == "__Host-hearth-console").expect("the session cookie");
    assert_eq!(
        (&session["httpOnly"], &session["secure"], &session["sameSite"]),
        (&json!(true), &json!(true), &json!("Strict"))
    );

    // Upload the consent plugin: checked, then confirmed on a page that says what will change.
    browser
        .fill("#manifest", r#"{"name": "consent", "version": "1.0.0", "world": "policy", "language": "rust"}"#)
        .await;
    browser.choose_file("#component", &plugin_dir().join("hearth_plugin_consent.wasm")).await;
    browser.click_text("Check and review").await;
    let text = browser.text().await;
    assert!(text.contains("Load consent version 1.0.0 (policy world"), "{text}");
    assert!(
        text.contains("consent is a new plugin") && text.contains("Bindings naming it: bindings.toml#1 (enforce)"),
        "{text}"
    );
    shots.take(&browser, "plugin-upload-confirm").await;
    browser.click_text("Load it").await;
    let text = browser.text().await;
    assert!(text.contains("Loaded consent version 1.0.0"), "{text}");
    assert!(text.contains("enabled") && text.contains("unsigned") && text.contains("rust"), "{text}");

    // Try the rule in shadow mode before it enforces anything.
    browser.go(&at("console/policies")).await;
    browser.click_text("Switch to shadow").await;
    let text = browser.text().await;
    assert!(text.contains("Its decisions will only be logged"), "{text}");
    browser.click_text("Switch to shadow").await;
    assert!(browser.text().await.contains("Binding bindings.toml#1 is now in shadow mode."));

    // Clinical traffic: a patient who refused sharing, and reads of their observation. The
    // shadow binding would deny them; enforcement (none yet) allows them.
    let named = json!({"resourceType": "Patient", "name": [{"family": FAMILY, "given": ["Ingeborg"]}]});
    let (patient_id, observation_id) = observation_behind_refused_consent(&server, named).await;
    for _ in 0..3 {
        server.get(&format!("Observation/{observation_id}")).await.expect(200);
    }
    until_text(&browser, &at("console/plugins"), "3 calls").await;
    shots.take(&browser, "plugins").await;
    sources.push(browser.source().await);

    let text = until_text(&browser, &at("console/shadow"), "3 of 3 decisions differed").await;
    assert!(text.contains(&format!("Observation/{observation_id}")), "a sample names the resource: {text}");
    let source = browser.source().await;
    let row = r#"<td data-label="Resource type">Observation</td><td data-label="Interaction">read</td><td data-label="Decided">3</td><td data-label="Differed">3</td>"#;
    assert!(source.contains(row), "counts by type and interaction");
    shots.take(&browser, "shadow-report").await;
    sources.push(browser.source().await);

    // Switch the binding to enforce, after a confirmation that says what shadow mode saw.
    browser.go(&at("console/policies")).await;
    shots.take(&browser, "policies").await;
    sources.push(browser.source().await);
    browser.click_text("Switch to enforce").await;
    let text = browser.text().await;
    assert!(text.contains("differed from what was enforced 3 times"), "{text}");
    shots.take(&browser, "policy-switch-confirm").await;
    browser.click_text("Switch to enforce").await;
    let text = browser.text().await;
    assert!(text.contains("Binding bindings.toml#1 is now in enforce mode."), "{text}");
    let written = std::fs::read_to_string(folder.path().join("bindings.toml")).unwrap();
    assert!(written.starts_with("# Consent on observations.") && written.contains("mode = \"enforce\""), "{written}");
    server.get(&format!("Observation/{observation_id}")).await.expect_outcome(403, "forbidden");

    // An emergency access, then its review by the compliance officer.
    let emergency =
        server.client_with(Some(&dev_token_with_roles(&server.data_dir, "user/*.rs", None, &["break-glass"])));
    let request = emergency
        .get(server.url(&format!("Observation/{observation_id}")))
        .header("x-break-glass-reason", "unconscious patient in the emergency department");
    server.send(request).await.expect(200);
    browser.go(&at("console/break-glass")).await;
    let text = browser.text().await;
    assert!(
        text.contains("unconscious patient in the emergency department") && text.contains("awaiting review"),
        "{text}"
    );
    shots.take(&browser, "break-glass").await;
    sources.push(browser.source().await);
    browser.click("select[name=decision] option[value=escalated]").await;
    browser.fill("input[name=comment]", "asked the ED lead to confirm").await;
    browser.click_text("Record review").await;
    let text = browser.text().await;
    assert!(text.contains("Recorded your review of access") && text.contains("escalated"), "{text}");
    assert!(text.contains("None."), "nothing awaits review now: {text}");
    browser.go(&at("console/break-glass?all=true")).await;
    assert!(browser.text().await.contains("escalated by compliance-officer"), "{}", browser.text().await);

    // Erase the patient (through the API), then the keys page shows it.
    let eraser = server.client_with(Some(&officer));
    let erasure = eraser.post(server.url("admin/erasure")).json(&json!({"patient": patient_id, "reason": "request 7"}));
    server.send(erasure).await.expect(200);
    browser.go(&at("console/keys")).await;
    let text = browser.text().await;
    assert!(text.contains("v1") && text.contains("live data keys are wrapped by the current KEK"), "{text}");
    assert!(text.contains(&format!("Patient/{patient_id}")) && text.contains("request 7"), "{text}");
    shots.take(&browser, "keys").await;
    sources.push(browser.source().await);

    // The evidence page: the findings and figures, with the emergency access reviewed above.
    browser.go(&at("console/evidence")).await;
    let text = browser.text().await;
    assert!(text.contains("audit-chain") && text.contains("Download the signed evidence pack"), "{text}");
    assert!(text.contains("every one reviewed") && text.contains("request 7"), "{text}");
    shots.take(&browser, "evidence").await;
    sources.push(browser.source().await);

    // The audit page: filtered entries, the chain verified, then tampered with and flagged.
    browser.go(&at("console/audit?subtype=read")).await;
    let text = browser.text().await;
    assert!(text.contains("policy:consent"), "the denied reads name the policy that decided: {text}");
    assert!(!text.contains("console-sign-in"), "the filter applies: {text}");
    browser.click_text("Verify the whole chain now").await;
    let text = browser.text().await;
    assert!(text.contains("The audit chain is intact") && text.contains("Intact."), "{text}");
    shots.take(&browser, "audit").await;
    sources.push(browser.source().await);

    // The export downloads with the session (read here with a plain client and its cookie).
    let cookie = format!("__Host-hearth-console={}", session["value"].as_str().unwrap());
    let plain = session_client(&server);
    let export =
        plain.get(server.url("console/audit/export?subtype=console-sign-in&format=ndjson")).header("cookie", &cookie);
    let export = export.send().await.unwrap();
    assert_eq!(export.status(), 200);
    assert!(export.headers()["content-disposition"].to_str().unwrap().contains(".ndjson"));
    let lines: Vec<Value> = export.text().await.unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3, "two refused sign-ins and one accepted: {lines:?}");
    assert!(lines.iter().all(|l| l["resourceType"] == "AuditEvent" && l["subtype"][0]["code"] == "console-sign-in"));
    // A form without the session's CSRF token changes nothing.
    let forged = form(plain.post(server.url("console/audit/verify")).header("cookie", &cookie), &[("csrf", "guess")]);
    assert_eq!(forged.send().await.unwrap().status(), 403);

    let mut conn = server.raw_connection().await;
    sqlx::query("UPDATE audit_entry SET entry = entry || ' ' WHERE seq = 3").execute(&mut conn).await.unwrap();
    browser.go(&at("console/audit")).await;
    browser.click_text("Verify the whole chain now").await;
    let text = browser.text().await;
    assert!(text.contains("BROKEN") && text.contains("entry 3 was altered"), "{text}");
    shots.take(&browser, "audit-tampered").await;

    // Keyboard: the first Tab reaches the skip link. Phone width: nothing overflows the page.
    browser.go(&at("console/plugins")).await;
    browser.press("\u{E004}").await;
    assert_eq!(browser.focused_text().await, "Skip to content");
    browser.resize(390, 844).await;
    for page in ["plugins", "policies", "shadow", "audit", "break-glass", "keys", "evidence"] {
        browser.go(&at(&format!("console/{page}"))).await;
        let fits = browser.eval("return document.documentElement.scrollWidth <= window.innerWidth + 1").await;
        assert_eq!(fits, json!(true), "{page} overflows a 390 px screen");
        sources.push(browser.source().await);
    }
    browser.go(&at("console/audit")).await;
    shots.take(&browser, "audit-phone").await;
    browser.go(&at("console/plugins")).await;
    shots.take(&browser, "plugins-phone").await;

    // No patient name on any page.
    for source in &sources {
        assert!(!source.contains(FAMILY) && !source.contains("Ingeborg"), "a console page shows a patient's name");
    }

    // Signing out ends the session.
    browser.resize(1280, 1100).await;
    browser.click_text("Sign out").await;
    assert!(browser.text().await.contains("You are signed out."));
    let after = plain.get(server.url("console/plugins")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(after.status(), 303, "the old cookie no longer works");
    browser.delete_cookies().await;
}

/// A client that trusts the server's CA, sends no token and does not follow redirects.
fn session_client(server: &Server) -> reqwest::Client {
    let ca = reqwest::Certificate::from_pem(&std::fs::read(&server.ca).unwrap()).unwrap();
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// A form-encoded POST body, as a browser sends it.
fn form(request: reqwest::RequestBuilder, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(fields).finish();
    request.header("content-type", "application/x-www-form-urlencoded").body(body)
}

async fn sign_in(server: &Server, client: &reqwest::Client, token: &str) -> reqwest::Response {
    form(client.post(server.url("console/login")), &[("token", token)]).send().await.unwrap()
}

fn session_cookie(response: &reqwest::Response) -> String {
    let set = response.headers()["set-cookie"].to_str().unwrap().to_owned();
    for attribute in ["Path=/", "Secure", "HttpOnly", "SameSite=Strict"] {
        assert!(set.split("; ").any(|a| a == attribute), "{attribute} missing from {set}");
    }
    set.split(';').next().unwrap().to_owned()
}

/// Sessions end after the configured inactivity; forms need the CSRF token; pages show what the
/// token's scopes allow and say what is missing; sign-ins are audited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_sessions_log_off_when_idle_and_refuse_forged_forms() {
    let launch = Launch { extra_args: vec!["--console-idle-seconds".into(), "2".into()], ..Launch::default() };
    let server = Server::launch(Db::Sqlite, launch).await;
    let client = session_client(&server);
    let auditor = dev_token_for(&server.data_dir, "auditor", "admin/audit", None, &[]);

    // Pages need a session; the sign-in form is served to anyone.
    let page = client.get(server.url("console/audit")).send().await.unwrap();
    assert_eq!(page.status(), 303);
    assert!(page.headers()["location"].to_str().unwrap().starts_with("/console/login"));
    let login = client.get(server.url("console/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let headers = login.headers().clone();
    assert!(headers["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    assert_eq!(headers["cache-control"], "no-store");

    let signed_in = sign_in(&server, &client, &auditor).await;
    assert_eq!(signed_in.status(), 303);
    let cookie = session_cookie(&signed_in);
    let audit = client.get(server.url("console/audit")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(audit.status(), 200);
    let html = audit.text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap().to_owned();
    // Without admin/keys the keys page says so instead of showing anything.
    let keys = client.get(server.url("console/keys")).header("cookie", &cookie).send().await.unwrap();
    let keys = keys.text().await.unwrap();
    assert!(keys.contains("This page cannot be shown: this operation needs the admin/keys scope"), "{keys}");

    // A state-changing form without, or with a wrong, CSRF token is refused; with it, it runs.
    let wrong = "x".repeat(43);
    for fields in [vec![], vec![("csrf", wrong.as_str())]] {
        let forged = form(client.post(server.url("console/audit/verify")).header("cookie", &cookie), &fields);
        assert_eq!(forged.send().await.unwrap().status(), 403);
    }
    // A form posted from another site is refused even with the right token (and so is a
    // sign-in from another site).
    let cross = form(client.post(server.url("console/audit/verify")).header("cookie", &cookie), &[("csrf", &csrf)]);
    assert_eq!(cross.header("origin", "https://evil.example").send().await.unwrap().status(), 403);
    let cross = form(client.post(server.url("console/login")), &[("token", &auditor)]);
    assert_eq!(cross.header("origin", "https://evil.example").send().await.unwrap().status(), 403);
    let real = form(client.post(server.url("console/audit/verify")).header("cookie", &cookie), &[("csrf", &csrf)]);
    assert_eq!(real.send().await.unwrap().status(), 303);
    let audit = client.get(server.url("console/audit")).header("cookie", &cookie).send().await.unwrap();
    assert!(audit.text().await.unwrap().contains("Intact."));

    // Idle longer than allowed: the session is over.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let late = client.get(server.url("console/audit")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(late.status(), 303);
    let location = late.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.contains("inactivity"), "{location}");
    let again = client.get(server.url("console/audit")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(again.status(), 303, "an ended session stays ended");

    // A refused sign-in and the accepted one are in the audit log; the verification too.
    sign_in(&server, &client, "forged.token.value").await;
    let reader = server.client_with(Some(&auditor));
    let found = server.send(reader.get(server.url("AuditEvent?subtype=console-sign-in&_sort=date"))).await.expect(200);
    let outcomes: Vec<&str> =
        found["entry"].as_array().unwrap().iter().map(|e| e["resource"]["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes, ["0", "8"], "{found}");
    let verified = server.send(reader.get(server.url("AuditEvent?subtype=admin-audit-verify"))).await.expect(200);
    assert_eq!(verified["entry"][0]["resource"]["agent"][0]["who"]["identifier"]["value"], "auditor", "{verified}");
}

/// The admin API under the console, on both databases: the keys report, chain verification,
/// and switching a binding's mode (which rewrites only its line and is audited).
async fn console_admin_api(db: Db) {
    let folder = policies("[[binding]]\nplugin = \"consent\"\ninteractions = [\"read\"]\nmode = \"shadow\" # trial\n");
    let server = Server::launch(db, with_policies(folder.path())).await;
    let admin = server.client_with(Some(&server.token("admin/plugins admin/audit admin/keys admin/erasure", None)));
    let live = |keys: &Value| keys["liveDataKeys"].as_i64().unwrap();
    server.post("Patient", &json!({"resourceType": "Patient"})).await.expect(201);
    let before = server.send(admin.get(server.url("admin/keys"))).await.expect(200);
    let patient = id_from_location(&server.post("Patient", &json!({"resourceType": "Patient"})).await);
    let keys = server.send(admin.get(server.url("admin/keys"))).await.expect(200);
    assert_eq!(keys["kekVersions"][0]["version"], 1, "{keys}");
    assert_eq!(live(&keys), live(&before) + 1, "one data key per patient compartment: {keys}");
    assert_eq!(keys["kekVersions"][0]["dataKeys"], keys["liveDataKeys"], "{keys}");
    assert_eq!(keys["rotation"]["remaining"], 0, "{keys}");
    server
        .send(admin.post(server.url("admin/erasure")).json(&json!({"patient": patient, "reason": "ticket 12"})))
        .await
        .expect(200);
    let erased = server.send(admin.get(server.url("admin/keys"))).await.expect(200);
    assert_eq!((live(&erased), erased["destroyedDataKeys"].as_i64()), (live(&keys) - 1, Some(1)), "{erased}");
    let keys = erased;
    assert_eq!(keys["erasures"][0]["patient"], patient.as_str());
    assert_eq!(keys["erasures"][0]["reason"], "ticket 12");
    server.get("admin/keys").await.expect_outcome(403, "forbidden");

    let verified = server.send(admin.post(server.url("admin/audit/verify"))).await.expect(200);
    assert_eq!(verified["intact"], true, "{verified}");
    assert!(verified["entries"].as_i64().unwrap() >= 5, "{verified}");
    let mut conn = server.raw_connection().await;
    sqlx::query("UPDATE audit_entry SET entry = entry || ' ' WHERE seq = 2").execute(&mut conn).await.unwrap();
    let verified = server.send(admin.post(server.url("admin/audit/verify"))).await.expect(200);
    assert_eq!(verified["intact"], false, "{verified}");
    assert!(verified["problem"].as_str().unwrap().contains("entry 2 was altered"), "{verified}");

    let switched =
        server.send(admin.post(server.url("admin/policies/bindings/bindings.toml/1/enforce"))).await.expect(200);
    assert_eq!(switched["bindings"][0]["mode"], "enforce", "{switched}");
    let written = std::fs::read_to_string(folder.path().join("bindings.toml")).unwrap();
    assert!(written.contains("mode = \"enforce\"\n") && !written.contains("shadow"), "{written}");
    let missing = server.send(admin.post(server.url("admin/policies/bindings/bindings.toml/2/enforce"))).await;
    missing.expect_outcome(404, "not-found");
    let wrong = server.send(admin.post(server.url("admin/policies/bindings/bindings.toml/1/sideways"))).await;
    wrong.expect_outcome(404, "not-found");
    let audited =
        server.send(admin.get(server.url("AuditEvent?subtype=admin-policy-enforce&outcome=0"))).await.expect(200);
    let entity = &audited["entry"][0]["resource"]["entity"][0]["what"]["reference"];
    assert_eq!(entity, "binding/bindings.toml#1", "{audited}");
}

crate::on_both_databases!(console_admin_api);
