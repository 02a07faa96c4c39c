//! Entry points of the fuzz targets in `host/fuzz` (cargo-fuzz, libFuzzer), one per surface
//! where untrusted bytes enter: FHIR JSON bodies, search URLs, transaction Bundles, values a
//! plugin returns, and bearer tokens. Each takes arbitrary bytes, runs the same code the server
//! runs on them, and panics only when an invariant breaks (a crash is a bug; an error answer is
//! not). `cargo test` replays every input kept under `host/fuzz/corpus` and
//! `host/fuzz/regressions` through them, so found bugs stay fixed without a fuzzer installed.

use std::sync::OnceLock;

use serde_json::{Map, Value};

use crate::auth::token::{DevSigningKey, Issuer, TokenVerifier};
use crate::crypto::SecretKey;
use crate::crypto::blind_index::BlindIndexKey;
use crate::fhir::json::parse_strict;
use crate::fhir::search::query::{MAX_COUNT, Parser};
use crate::plugins::bindings::types::{Coding, Decision, Issue, Obligations, Severity};
use crate::policy::Verdict;
use crate::store::Backend;

/// The targets, by the name of their file in `host/fuzz/fuzz_targets` and corpus folder.
pub const TARGETS: &[(&str, fn(&[u8]))] = &[
    ("fhir_json", fhir_json),
    ("search_params", search_params),
    ("bundle", bundle),
    ("plugin_values", plugin_values),
    ("token", token),
];

fn blind_key() -> &'static BlindIndexKey {
    static KEY: OnceLock<BlindIndexKey> = OnceLock::new();
    KEY.get_or_init(|| BlindIndexKey::new(SecretKey::from_bytes(&[7u8; 32]).expect("a 32-byte key")))
}

/// Re-parsing what the server serialises gives the same value back.
fn assert_round_trips(value: &Value) {
    let text = serde_json::to_vec(value).expect("serialising a JSON value cannot fail");
    let again = parse_strict(&text).expect("the server's own JSON parses");
    assert_eq!(&again, value, "JSON changed in a serialise/parse round trip");
}

/// A request body: strict parsing, then (for a resource) the checks and indexing a create
/// runs, and (for `[document, patch]`) JSON Patch.
pub fn fhir_json(data: &[u8]) {
    let Ok(value) = parse_strict(data) else { return };
    assert_round_trips(&value);
    if let Value::Array(pair) = &value
        && let [document, patch] = pair.as_slice()
    {
        let mut patched = document.clone();
        if crate::fhir::patch::apply(&mut patched, patch).is_ok() {
            assert_round_trips(&patched);
        }
    }
    let Some(res_type) = value.get("resourceType").and_then(Value::as_str) else { return };
    if crate::fhir::resource::check_type_name(res_type).is_err() {
        return;
    }
    let fields = value.as_object().expect("has a resourceType");
    let _ = crate::fhir::validate::validate(res_type, fields);
    let _ = crate::fhir::search::extract::index_entries(res_type, fields, blind_key());
    match crate::fhir::resource::IncomingResource::parse(data, res_type) {
        Ok(resource) => {
            let stamped = resource.stamped("fuzz-1", 1, 1_700_000_000_000_000);
            let stored = parse_strict(&stamped).expect("a stamped resource is JSON");
            assert_eq!(stored["resourceType"], res_type);
            assert_eq!(stored["id"], "fuzz-1");
            assert_eq!(stored["meta"]["versionId"], "1");
            let _ = resource.data_key_id("fuzz-1");
        }
        Err(error) => {
            assert!(error.status.is_client_error(), "a bad body is the client's error, got {}", error.status);
            assert_round_trips(&error.outcome());
        }
    }
}

/// A search URL: `Type[,Type...]?query` (no type: system search). The query is parsed as the
/// API parses it and turned into the SQL both databases would run, which must carry every
/// value as a bound parameter: no quote, statement separator or comment from the input.
pub fn search_params(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (types, query) = text.split_once('?').unwrap_or(("", &text));
    let types: Vec<String> = if types.is_empty() {
        vec!["Patient".to_owned(), "Observation".to_owned()]
    } else {
        types.split(',').map(str::to_owned).collect()
    };
    if types.iter().any(|t| crate::fhir::resource::check_type_name(t).is_err()) {
        return;
    }
    let pairs: Vec<(String, String)> =
        form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    for strict in [false, true] {
        let parser = Parser { key: blind_key(), base_url: "https://fuzz.example/fhir", strict };
        let Ok(parsed) = parser.parse(types.clone(), &pairs) else { continue };
        assert!(parsed.count <= MAX_COUNT, "page size {} above the limit", parsed.count);
        // Unrestricted, and confined as a patient/ token with a constraint is (the access
        // predicate compiled into the main query, chains, _has and counts).
        let confined = crate::auth::Principal {
            subject: "fuzz".into(),
            issuer: "fuzz".into(),
            client_id: None,
            patient: Some("p1".into()),
            scopes: crate::auth::scopes::ScopeSet::parse("patient/*.rs user/Observation.rs?category=laboratory"),
            roles: Vec::new(),
        }
        .predicate(crate::auth::Interaction::Search, blind_key(), "https://fuzz.example/fhir");
        let visibilities: [&dyn crate::fhir::search::access::Visibility; 2] =
            [&crate::fhir::search::access::Unrestricted, &confined];
        for (backend, vis) in
            [Backend::Sqlite, Backend::Postgres].into_iter().flat_map(|b| visibilities.map(|v| (b, v)))
        {
            let Ok(statements) = crate::store::search_sql_text(backend, vis, &parsed) else { continue };
            for (sql, binds) in statements {
                let fixed = sql.replace("ESCAPE '\\'", "");
                assert!(
                    !fixed.contains(['\'', '"', ';']) && !fixed.contains("--") && !fixed.contains("/*"),
                    "input reached the SQL text: {sql}"
                );
                // Every placeholder has a value and every value a placeholder.
                let used: std::collections::BTreeSet<usize> = sql
                    .split('$')
                    .skip(1)
                    .map(|rest| rest.chars().take_while(char::is_ascii_digit).collect::<String>())
                    .map(|digits| digits.parse().expect("a numbered placeholder"))
                    .collect();
                assert_eq!(used, (1..=binds).collect(), "placeholders vs bound values in {sql}");
            }
        }
    }
    for (_, value) in &pairs {
        let _ = crate::fhir::search::dates::parse_date_range(value.trim_start_matches(char::is_alphabetic));
    }
}

/// A transaction or batch Bundle body, up to the database: every entry planned, server ids
/// assigned, `urn:uuid:` references linked.
pub fn bundle(data: &[u8]) {
    let Ok(Value::Object(body)) = parse_strict(data) else { return };
    let Some(Value::Array(entries)) = body.get("entry") else { return };
    if entries.len() > 1000 {
        return;
    }
    match crate::api::bundle::plan_offline(entries.clone()) {
        Ok(planned) => {
            let order: Vec<&str> = planned.iter().map(|(method, _, _)| method.as_str()).collect();
            let rank = |m: &str| ["DELETE", "POST", "PUT", "GET"].iter().position(|x| *x == m);
            assert!(order.windows(2).all(|w| rank(w[0]) <= rank(w[1])), "processing order broken: {order:?}");
            for (method, target, resource) in &planned {
                if method == "POST" {
                    assert!(target.is_some(), "a create without an id");
                }
                if let Some(resource) = resource {
                    assert!(!mentions_urn(&Value::Object(resource.clone())), "an unlinked urn:uuid reference");
                }
            }
        }
        Err(status) => assert!((400..500).contains(&status), "a bad entry is the client's error, got {status}"),
    }
}

fn mentions_urn(value: &Value) -> bool {
    match value {
        Value::Object(map) => map.iter().any(|(k, v)| {
            (k == "reference" && v.as_str().is_some_and(|r| r.starts_with("urn:uuid:"))) || mentions_urn(v)
        }),
        Value::Array(items) => items.iter().any(mentions_urn),
        _ => false,
    }
}

/// What a policy plugin returns, applied as the host applies it. The input is sections split
/// by `0xFF`: a resource (JSON), then decisions (`0`: allow, `1`: deny with a reason, `2`:
/// allow-with, one redaction path or `label:system|code|display` per line) or, with `3`,
/// validation issues (`severity|code|diagnostics|expression` per line).
pub fn plugin_values(data: &[u8]) {
    let mut sections = data.split(|b| *b == 0xFF);
    let Ok(Value::Object(mut resource)) = parse_strict(sections.next().unwrap_or_default()) else { return };
    let original = resource.clone();
    let mut verdict = Verdict::Allow;
    let mut issues = Vec::new();
    for section in sections {
        let Some((kind, rest)) = section.split_first() else { continue };
        let text = String::from_utf8_lossy(rest).into_owned();
        match kind % 4 {
            0 => verdict.combine("fuzz", Decision::Allow),
            1 => verdict.combine("fuzz", Decision::Deny(text)),
            2 => {
                let mut obligations = Obligations { redact: Vec::new(), labels: Vec::new() };
                for line in text.lines() {
                    match line.strip_prefix("label:") {
                        Some(label) => {
                            let mut parts = label.splitn(3, '|');
                            obligations.labels.push(Coding {
                                system: parts.next().unwrap_or_default().to_owned(),
                                code: parts.next().unwrap_or_default().to_owned(),
                                display: parts.next().map(str::to_owned),
                            });
                        }
                        None => obligations.redact.push(line.to_owned()),
                    }
                }
                verdict.combine("fuzz", Decision::AllowWith(obligations));
            }
            _ => {
                for line in text.lines() {
                    let mut parts = line.splitn(4, '|');
                    let severity = match parts.next() {
                        Some("fatal") => Severity::Fatal,
                        Some("error") => Severity::Error,
                        Some("warning") => Severity::Warning,
                        _ => Severity::Information,
                    };
                    issues.push((
                        "fuzz".to_owned(),
                        Issue {
                            severity,
                            code: parts.next().unwrap_or_default().to_owned(),
                            diagnostics: parts.next().unwrap_or_default().to_owned(),
                            expression: parts.next().map(str::to_owned),
                        },
                    ));
                }
            }
        }
    }
    if let Verdict::AllowWith { redact, labels } = &verdict {
        let removed = crate::policy::redact::apply(&mut resource, redact, labels);
        for kept in ["resourceType", "id"] {
            assert_eq!(resource.get(kept), original.get(kept), "redaction removed {kept}");
        }
        if removed && original.get("meta").is_none_or(Value::is_object) {
            assert!(has_label(&resource, "REDACTED"), "a redacted resource without the REDACTED label");
        }
        assert_round_trips(&Value::Object(resource));
    }
    if let Some((outcome, plugins)) = crate::service::validation_outcome(&issues) {
        assert!(!plugins.is_empty());
        assert_round_trips(&outcome);
        for issue in outcome["issue"].as_array().expect("issues") {
            let code = issue["code"].as_str().expect("a code");
            assert!(
                code.chars().all(|c| c.is_ascii_lowercase() || c == '-'),
                "issue code {code:?} outside the value set"
            );
        }
    }
}

fn has_label(resource: &Map<String, Value>, code: &str) -> bool {
    resource
        .get("meta")
        .and_then(|m| m.get("security"))
        .and_then(Value::as_array)
        .is_some_and(|labels| labels.iter().any(|l| l["code"] == code))
}

/// A key the verifier trusts, one it does not, and the verifier; and a verifier whose trusted
/// key signs nothing at all (its private half is gone), which no input can satisfy.
struct Keys {
    trusted: DevSigningKey,
    untrusted: DevSigningKey,
    verifier: TokenVerifier,
    unsatisfiable: TokenVerifier,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| {
        let hour = std::time::Duration::from_secs(3600);
        let trusted = DevSigningKey::ephemeral().expect("a new key");
        let untrusted = DevSigningKey::ephemeral().expect("a new key");
        let verifier = TokenVerifier::new(vec![Issuer::trusting(&trusted)], hour);
        let unsatisfiable =
            TokenVerifier::new(vec![Issuer::trusting(&DevSigningKey::ephemeral().expect("a new key"))], hour);
        Keys { trusted, untrusted, verifier, unsatisfiable }
    })
}

/// A bearer token. The first byte picks the form: `0`: the rest as the token text; `1`/`2`:
/// header and payload (split at the first `0x00`) signed by a key the server trusts / does not
/// trust, so the claim checks behind the signature are reached; `3`: a scope string.
pub fn token(data: &[u8]) {
    let Some((mode, rest)) = data.split_first() else { return };
    match mode % 4 {
        0 => {
            let text = String::from_utf8_lossy(rest);
            // Only a token its key signed could pass, and that key signs nothing.
            assert!(keys().unsatisfiable.verify(&text).is_err(), "a token no key signed was accepted");
        }
        1 | 2 => {
            let (header, payload) = match rest.iter().position(|b| *b == 0) {
                Some(at) => (&rest[..at], &rest[at + 1..]),
                None => (&br#"{"alg":"EdDSA","typ":"JWT"}"#[..], rest),
            };
            if mode % 4 == 1 {
                let token = keys().trusted.sign_raw(header, payload);
                if let Ok(principal) = keys().verifier.verify(&token) {
                    let claims: Value = serde_json::from_slice(payload).expect("accepted claims are JSON");
                    assert_eq!(claims["sub"].as_str(), Some(principal.subject.as_str()));
                    assert_eq!(claims["iss"], crate::auth::token::DEV_ISSUER);
                    let exp = claims["exp"].as_f64().expect("accepted claims have exp");
                    let now = (crate::fhir::instant::now_us() / 1_000_000) as f64;
                    assert!(exp + 30.0 >= now && exp - now <= 3600.0 + 30.0, "exp {exp} outside the window");
                }
            } else {
                let token = keys().untrusted.sign_raw(header, payload);
                assert!(keys().verifier.verify(&token).is_err(), "a token signed by an untrusted key was accepted");
            }
        }
        _ => {
            let text = String::from_utf8_lossy(rest);
            let scopes = crate::auth::scopes::ScopeSet::parse(&text);
            assert_eq!(scopes.granted.len(), text.split_whitespace().count());
            for area in ["erasure", "keys", "audit", "plugins"] {
                let granted = scopes.has_admin(area);
                let named = text.split_whitespace().any(|s| s == format!("admin/{area}") || s == "admin/*");
                assert_eq!(granted, named, "admin/{area} granted by {text:?}");
            }
            for res_type in ["Patient", "Observation", "AuditEvent"] {
                for clinical in &scopes.clinical {
                    let _ = clinical.grants(crate::auth::scopes::Permission::Read, res_type);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// Every kept input (the seed corpus, what fuzzing runs added, and each input that once
    /// crashed a target) runs through its target: found bugs stay fixed.
    #[test]
    fn corpus_and_regressions_replay_cleanly() {
        let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
        let mut replayed = 0;
        for (name, target) in super::TARGETS {
            let mut seen = 0;
            for folder in ["corpus", "regressions"] {
                let Ok(entries) = std::fs::read_dir(fuzz.join(folder).join(name)) else { continue };
                for entry in entries {
                    let path = entry.unwrap().path();
                    let data = std::fs::read(&path).unwrap();
                    let outcome = std::panic::catch_unwind(|| target(&data));
                    assert!(outcome.is_ok(), "{name} fails on {}", path.display());
                    seen += 1;
                }
            }
            assert!(seen > 0, "no inputs kept for the {name} target");
            replayed += seen;
        }
        eprintln!("replayed {replayed} inputs");
    }
}
