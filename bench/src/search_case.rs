//! Case 5 (search) and the transaction-Bundle part of case 4: a data set is ingested as
//! transaction Bundles (one patient and its observations per Bundle, the observations
//! referencing the patient by `urn:uuid:`), then the searches the search issue names are
//! measured against a read by id on the same server, in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use hearth_bench::data::{self, Rng};
use hearth_bench::load::{LoadSpec, Measurement, alternating};
use hearth_bench::report::Comparison;
use hearth_bench::servers::ServerProcess;
use serde_json::{Value, json};

use super::{ROUNDS, get_loop};

const MRN_SYSTEM: &str = "urn:oid:2.16.840.1.113883.19.5";

/// What was loaded: per patient, its id, family name and birth date.
pub struct Loaded {
    patients: Vec<(String, String, String, u64)>,
    pub ingest: Measurement,
    pub resources: u64,
}

/// Posts `patients` transaction Bundles of one patient and `per_patient` observations each,
/// `concurrency` at a time. The measurement counts Bundles.
pub async fn ingest(
    client: &reqwest::Client,
    server: &ServerProcess,
    patients: usize,
    per_patient: usize,
    concurrency: usize,
) -> Loaded {
    let url = server.url("");
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (client.clone(), url.clone(), next.clone());
        workers.push(tokio::spawn(async move {
            let mut loaded = Vec::new();
            let mut latencies = Vec::new();
            let mut errors = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= patients as u64 {
                    break;
                }
                let mut rng = Rng::new(n);
                let patient = data::patient(&mut rng, n);
                let mut entries = vec![json!({
                    "fullUrl": "urn:uuid:7f1c7a2e-0000-4000-8000-000000000001",
                    "resource": patient,
                    "request": {"method": "POST", "url": "Patient"}
                })];
                for _ in 0..per_patient {
                    let mut observation = data::observation(&mut rng, "x");
                    observation["subject"] = json!({"reference": "urn:uuid:7f1c7a2e-0000-4000-8000-000000000001"});
                    entries.push(json!({"resource": observation, "request": {"method": "POST", "url": "Observation"}}));
                }
                let bundle = json!({"resourceType": "Bundle", "type": "transaction", "entry": entries});
                let sent = Instant::now();
                let response = client
                    .post(&url)
                    .header("content-type", "application/fhir+json")
                    .header("prefer", "return=minimal")
                    .body(bundle.to_string())
                    .send()
                    .await;
                let reply: Option<Value> = match response {
                    Ok(r) if r.status().is_success() => {
                        r.bytes().await.ok().and_then(|b| serde_json::from_slice(&b).ok())
                    }
                    _ => None,
                };
                latencies.push(u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX));
                let id = reply
                    .as_ref()
                    .and_then(|r| r["entry"][0]["response"]["location"].as_str())
                    .and_then(|l| l.split('/').nth(1));
                match id {
                    Some(id) => loaded.push((
                        id.to_owned(),
                        patient["name"][0]["family"].as_str().unwrap_or_default().to_owned(),
                        patient["birthDate"].as_str().unwrap_or_default().to_owned(),
                        n,
                    )),
                    None => errors += 1,
                }
            }
            (loaded, latencies, errors)
        }));
    }
    let mut patients_loaded = Vec::new();
    let mut latencies_us = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (loaded, latencies, failed) = worker.await.expect("ingest worker");
        patients_loaded.extend(loaded);
        latencies_us.extend(latencies);
        errors += failed;
    }
    latencies_us.sort_unstable();
    let ingest = Measurement { requests: latencies_us.len() as u64, errors, elapsed: started.elapsed(), latencies_us };
    let resources = patients_loaded.len() as u64 * (1 + per_patient as u64);
    Loaded { patients: patients_loaded, ingest, resources }
}

/// The search paths of each measured search, over the loaded data, with a label.
fn searches(loaded: &Loaded) -> Vec<(&'static str, Arc<Vec<String>>)> {
    let mut rng = Rng::new(99);
    let sample: Vec<&(String, String, String, u64)> =
        (0..500.min(loaded.patients.len())).map(|_| &loaded.patients[rng.below(loaded.patients.len())]).collect();
    let codes = ["8867-4", "8480-6", "29463-7", "2339-0"];
    let mut by_identifier = Vec::new();
    let mut by_name_birth = Vec::new();
    let mut by_patient_code_date = Vec::new();
    let mut with_include = Vec::new();
    let mut everything = Vec::new();
    for (i, (id, family, birth, n)) in sample.iter().enumerate() {
        by_identifier.push(format!("Patient?identifier={MRN_SYSTEM}|MRN-{n:08}"));
        by_name_birth.push(format!("Patient?family={}&birthdate={birth}", urlencode(family)));
        by_patient_code_date.push(format!(
            "Observation?patient={id}&code=http://loinc.org|{}&date=ge2026-06-01",
            codes[i % codes.len()]
        ));
        with_include.push(format!("Observation?patient={id}&_include=Observation:patient"));
        everything.push(format!("Patient/{id}/$everything"));
    }
    vec![
        ("Patient?identifier=", Arc::new(by_identifier)),
        ("Patient?family=&birthdate=", Arc::new(by_name_birth)),
        ("Observation?patient=&code=&date=ge", Arc::new(by_patient_code_date)),
        ("Observation?patient=&_include", Arc::new(with_include)),
        ("Patient/{id}/$everything", Arc::new(everything)),
    ]
}

fn urlencode(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// Clients whose tokens are confined, for measuring what the compiled access predicate costs:
/// one `patient/*.rs` token for `patient` (a loaded patient's id), one
/// `user/Observation.rs?category=vital-signs` token.
pub struct Confined {
    pub patient: String,
    pub patient_client: reqwest::Client,
    pub constrained_client: reqwest::Client,
}

/// The patient a [`Confined`] patient token should be for.
pub fn confined_patient(loaded: &Loaded) -> Option<&str> {
    loaded.patients.first().map(|p| p.0.as_str())
}

/// Each search against a read by id on the same server, alternating; then the same searches
/// by confined tokens against the unconfined token (the access predicate's cost).
pub async fn measure(
    spec: LoadSpec,
    client: &reqwest::Client,
    server: &ServerProcess,
    loaded: &Loaded,
    database: &str,
    confined: Option<&Confined>,
) -> Vec<Comparison> {
    let reads: Arc<Vec<String>> =
        Arc::new(loaded.patients.iter().take(500).map(|p| format!("Patient/{}", p.0)).collect());
    let mut out = Vec::new();
    for (label, paths) in searches(loaded) {
        let (search, read) = alternating(
            spec,
            ROUNDS,
            |s| get_loop(s, client, server, paths.clone()),
            |s| get_loop(s, client, server, reads.clone()),
        )
        .await;
        out.push(Comparison::new(
            &format!("5 search ({database}, {} patients)", loaded.patients.len()),
            (label, &search),
            ("read Patient by id", &read),
            "p95 < 50 ms",
            None,
        ));
    }
    let Some(confined) = confined else { return out };
    let codes = ["8867-4", "8480-6", "29463-7", "2339-0"];
    let by_param: Arc<Vec<String>> = Arc::new(
        codes
            .iter()
            .map(|c| format!("Observation?patient={}&code=http://loinc.org|{c}&date=ge2026-06-01", confined.patient))
            .collect(),
    );
    let by_compartment: Arc<Vec<String>> =
        Arc::new(codes.iter().map(|c| format!("Observation?code=http://loinc.org|{c}&date=ge2026-06-01")).collect());
    let (patient, user) = alternating(
        spec,
        ROUNDS,
        |s| get_loop(s, &confined.patient_client, server, by_compartment.clone()),
        |s| get_loop(s, client, server, by_param.clone()),
    )
    .await;
    out.push(Comparison::new(
        &format!("5 access predicate ({database})"),
        ("patient/*.rs token: Observation?code=&date=ge (compartment compiled)", &patient),
        ("user/*.cruds token: Observation?patient=&code=&date=ge", &user),
        "p95 <= 1.10 x",
        None,
    ));
    let (constrained, user) = alternating(
        spec,
        ROUNDS,
        |s| get_loop(s, &confined.constrained_client, server, by_param.clone()),
        |s| get_loop(s, client, server, by_param.clone()),
    )
    .await;
    out.push(Comparison::new(
        &format!("5 access predicate ({database})"),
        ("user/Observation.rs?category=vital-signs token: Observation?patient=&code=&date=ge", &constrained),
        ("user/*.cruds token: the same search", &user),
        "p95 <= 1.10 x",
        None,
    ));
    out
}
