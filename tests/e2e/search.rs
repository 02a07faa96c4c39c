//! FHIR search end to end, on both databases: a synthetic clinic (patients with encounters,
//! LOINC observations, SNOMED conditions and RxNorm prescriptions) is loaded over TLS, then a
//! table of searches runs whose expected results the test computes itself from what it loaded.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{Db, Launch, Server};
use crate::on_both_databases;

const MRN: &str = "urn:oid:1.2.36.146.595.217.0.1";
const LOINC: &str = "http://loinc.org";
const SNOMED: &str = "http://snomed.info/sct";
const RXNORM: &str = "http://www.nlm.nih.gov/research/umls/rxnorm";
const UCUM: &str = "http://unitsofmeasure.org";

const FAMILIES: &[&str] = &["Okafor", "Lindqvist", "Marlowe", "Nakagawa", "Brennan", "Quispe", "Haddad", "Ferreira"];
const GIVEN: &[&str] = &["Amara", "Tobias", "Ingrid", "Kenji", "Saoirse", "Mateo", "Leila", "Joao", "Wren"];
/// (LOINC code, unit, low, high)
const VITALS: &[(&str, &str, f64, f64)] =
    &[("8867-4", "/min", 50.0, 120.0), ("29463-7", "kg", 40.0, 130.0), ("2339-0", "mg/dL", 60.0, 220.0)];
const CONDITIONS: &[&str] = &["44054006", "38341003", "195967001"];
const DRUGS: &[&str] = &["860975", "197361", "745679"];

/// A small deterministic generator (xorshift), so every run loads the same clinic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Debug, Clone)]
struct Patient {
    id: String,
    mrn: String,
    family: String,
    birth: String,
    gender: &'static str,
    org: String,
    tagged: bool,
}

#[derive(Debug, Clone)]
struct Observation {
    id: String,
    patient: usize,
    code: &'static str,
    /// YYYY-MM-DD
    date: String,
    value: f64,
    unit: &'static str,
    /// Blood pressure panel: (systolic, diastolic) as components.
    bp: Option<(f64, f64)>,
}

struct Clinic {
    orgs: Vec<String>,
    patients: Vec<Patient>,
    observations: Vec<Observation>,
    /// (id, patient, SNOMED code)
    conditions: Vec<(String, usize, &'static str)>,
    /// (id, patient, RxNorm code)
    prescriptions: Vec<(String, usize, &'static str)>,
}

fn created_id(reply: &crate::harness::Reply) -> String {
    reply.expect(201)["id"].as_str().expect("id").to_owned()
}

async fn load(server: &Server, patients: usize) -> Clinic {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut orgs = Vec::new();
    for name in ["Riverside Family Practice", "Northgate Clinic", "St. Brigid Hospital"] {
        let reply =
            server.post("Organization", &json!({"resourceType": "Organization", "name": name, "active": true})).await;
        orgs.push(created_id(&reply));
    }
    let mut clinic = Clinic {
        orgs,
        patients: Vec::new(),
        observations: Vec::new(),
        conditions: Vec::new(),
        prescriptions: Vec::new(),
    };
    for n in 0..patients {
        let family = FAMILIES[rng.below(FAMILIES.len())].to_owned();
        let given = GIVEN[rng.below(GIVEN.len())];
        let birth = format!("{}-{:02}-{:02}", 1940 + rng.below(60), 1 + rng.below(12), 1 + rng.below(28));
        let gender = if rng.below(2) == 0 { "female" } else { "male" };
        let org = clinic.orgs[rng.below(3)].clone();
        let tagged = n % 10 == 0;
        let mrn = format!("MRN-{n:05}");
        let mut body = json!({
            "resourceType": "Patient",
            "identifier": [{"system": MRN, "value": mrn}],
            "name": [{"family": family, "given": [given]}],
            "gender": gender,
            "birthDate": birth,
            "managingOrganization": {"reference": format!("Organization/{org}")},
            "telecom": [{"system": "phone", "value": format!("+1 555 01{n:02}")}],
        });
        if tagged {
            body["meta"] = json!({"tag": [{"system": "http://example.org/tags", "code": "study-a"}]});
        }
        let id = created_id(&server.post("Patient", &body).await);
        clinic.patients.push(Patient { id, mrn, family, birth, gender, org, tagged });
    }
    // Clinical records, several requests in flight at once.
    let mut pending = Vec::new();
    for (index, patient) in clinic.patients.iter().enumerate() {
        let subject = json!({"reference": format!("Patient/{}", patient.id)});
        let encounter = json!({"resourceType": "Encounter", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": subject, "period": {"start": "2023-05-01T09:00:00Z", "end": "2023-05-01T09:30:00Z"}});
        pending.push(("Encounter", encounter, None));
        for _ in 0..3 {
            let (code, unit, low, high) = VITALS[rng.below(VITALS.len())];
            let date = format!("{}-{:02}-{:02}", 2021 + rng.below(4), 1 + rng.below(12), 1 + rng.below(28));
            let value = (low + (rng.below(1000) as f64 / 1000.0) * (high - low)).round();
            let body = json!({"resourceType": "Observation", "status": "final",
                "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": if code == "2339-0" { "laboratory" } else { "vital-signs" }}]}],
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "subject": subject, "effectiveDateTime": date,
                "valueQuantity": {"value": value, "unit": unit, "system": UCUM, "code": unit}});
            let model = Observation { id: String::new(), patient: index, code, date, value, unit, bp: None };
            pending.push(("Observation", body, Some(model)));
        }
        let (systolic, diastolic) = (100.0 + rng.below(70) as f64, 60.0 + rng.below(40) as f64);
        let date = format!("2024-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28));
        let bp = json!({"resourceType": "Observation", "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
            "subject": subject, "effectiveDateTime": date,
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": "8480-6"}]}, "valueQuantity": {"value": systolic, "system": UCUM, "code": "mm[Hg]"}},
                {"code": {"coding": [{"system": LOINC, "code": "8462-4"}]}, "valueQuantity": {"value": diastolic, "system": UCUM, "code": "mm[Hg]"}}]});
        let model = Observation {
            id: String::new(),
            patient: index,
            code: "85354-9",
            date,
            value: f64::NAN,
            unit: "",
            bp: Some((systolic, diastolic)),
        };
        pending.push(("Observation", bp, Some(model)));
        let condition = CONDITIONS[rng.below(CONDITIONS.len())];
        pending.push((
            "Condition",
            json!({"resourceType": "Condition", "subject": subject,
            "code": {"coding": [{"system": SNOMED, "code": condition}]}}),
            None,
        ));
        clinic.conditions.push((String::new(), index, condition));
        if rng.below(3) != 0 {
            let drug = DRUGS[rng.below(DRUGS.len())];
            pending.push((
                "MedicationRequest",
                json!({"resourceType": "MedicationRequest", "status": "active", "intent": "order",
                "medicationCodeableConcept": {"coding": [{"system": RXNORM, "code": drug}]}, "subject": subject}),
                None,
            ));
            clinic.prescriptions.push((String::new(), index, drug));
        }
    }
    let mut ids = Vec::new();
    for chunk in pending.chunks(8) {
        let replies = futures::future::join_all(chunk.iter().map(|(t, body, _)| server.post(t, body))).await;
        ids.extend(replies.iter().map(created_id));
    }
    let (mut conditions, mut prescriptions) = (clinic.conditions.iter_mut(), clinic.prescriptions.iter_mut());
    for ((res_type, _, model), id) in pending.into_iter().zip(ids) {
        match (res_type, model) {
            ("Observation", Some(mut model)) => {
                model.id = id;
                clinic.observations.push(model);
            }
            ("Condition", _) => conditions.next().expect("condition").0 = id,
            ("MedicationRequest", _) => prescriptions.next().expect("prescription").0 = id,
            _ => {}
        }
    }
    clinic
}

/// Every match of a search, following `next` links; asserts no resource appears twice.
async fn all_matches(server: &Server, path: &str) -> Vec<Value> {
    let mut url = server.url(path);
    let mut out = Vec::new();
    for _ in 0..200 {
        let bundle = server.send(server_client(server).get(&url)).await.expect(200);
        assert_eq!(bundle["type"], "searchset", "{bundle}");
        for entry in bundle["entry"].as_array().into_iter().flatten() {
            if entry["search"]["mode"] == "match" {
                out.push(entry["resource"].clone());
            }
        }
        match bundle["link"].as_array().and_then(|links| links.iter().find(|l| l["relation"] == "next")) {
            Some(next) => url = next["url"].as_str().expect("next url").to_owned(),
            None => break,
        }
    }
    let ids: Vec<String> =
        out.iter().map(|r| format!("{}/{}", r["resourceType"].as_str().unwrap(), r["id"].as_str().unwrap())).collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a resource appeared twice across pages of {path}");
    out
}

fn server_client(server: &Server) -> reqwest::Client {
    server.client.clone()
}

async fn ids_of(server: &Server, path: &str) -> BTreeSet<String> {
    all_matches(server, path).await.iter().map(|r| r["id"].as_str().unwrap().to_owned()).collect()
}

fn set<'a>(ids: impl IntoIterator<Item = &'a String>) -> BTreeSet<String> {
    ids.into_iter().cloned().collect()
}

async fn search_table(db: Db) {
    let server = Server::start(db).await;
    let clinic = load(&server, 200).await;
    let patients = &clinic.patients;
    let obs = &clinic.observations;

    // Identifying strings: from the start, ignoring case and accents, through blind prefix tokens.
    let family = &patients[7].family;
    let expected = set(patients.iter().filter(|p| &p.family == family).map(|p| &p.id));
    assert!(expected.len() > 1, "the data set has namesakes");
    assert_eq!(ids_of(&server, &format!("Patient?family={}", family.to_uppercase())).await, expected);
    assert_eq!(ids_of(&server, &format!("Patient?name={family}")).await, expected, "name matches any part");
    let prefix = family[..3].to_lowercase();
    let expected = set(patients.iter().filter(|p| p.family.to_lowercase().starts_with(&prefix)).map(|p| &p.id));
    assert!(expected.len() > 1);
    assert_eq!(ids_of(&server, &format!("Patient?family={prefix}")).await, expected, "a prefix of the family name");
    assert_eq!(
        ids_of(&server, &format!("Patient?family:exact={family}")).await,
        set(patients.iter().filter(|p| &p.family == family).map(|p| &p.id))
    );
    assert!(
        ids_of(&server, &format!("Patient?family:exact={}", family.to_uppercase())).await.is_empty(),
        ":exact keeps case"
    );

    // Identifiers with and without system; birth dates at day and year precision.
    let p = &patients[11];
    assert_eq!(ids_of(&server, &format!("Patient?identifier={MRN}|{}", p.mrn)).await, set([&p.id]));
    assert_eq!(ids_of(&server, &format!("Patient?identifier={}", p.mrn)).await, set([&p.id]));
    assert!(ids_of(&server, &format!("Patient?identifier=urn:other|{}", p.mrn)).await.is_empty());
    let expected = set(patients.iter().filter(|q| q.family == p.family && q.birth == p.birth).map(|q| &q.id));
    assert_eq!(ids_of(&server, &format!("Patient?family={}&birthdate={}", p.family, p.birth)).await, expected);
    let year = &p.birth[..4];
    let expected = set(patients.iter().filter(|q| q.birth.starts_with(year)).map(|q| &q.id));
    assert_eq!(ids_of(&server, &format!("Patient?birthdate={year}")).await, expected);
    // Ranges on the blind birth date, by calendar buckets: every prefix.
    for (prefix, test) in [
        ("ge", (|b: &str, v: &str| b >= v) as fn(&str, &str) -> bool),
        ("gt", |b, v| b > v),
        ("lt", |b, v| b < v),
        ("le", |b, v| b <= v),
        ("ne", |b, v| b != v),
    ] {
        let expected = set(patients.iter().filter(|q| test(&q.birth, &p.birth)).map(|q| &q.id));
        assert_eq!(ids_of(&server, &format!("Patient?birthdate={prefix}{}", p.birth)).await, expected, "{prefix}");
    }
    let expected =
        set(patients.iter().filter(|q| q.birth.as_str() >= "1960" && q.birth.as_str() < "1975-07").map(|q| &q.id));
    assert!(expected.len() > 2);
    assert_eq!(ids_of(&server, "Patient?birthdate=ge1960&birthdate=lt1975-07").await, expected);

    // Tokens, paging (small pages, every match once), references and the total.
    let expected = set(patients.iter().filter(|q| q.gender == "female").map(|q| &q.id));
    assert_eq!(ids_of(&server, "Patient?gender=female&_count=7").await, expected);
    let org = &clinic.orgs[1];
    let expected = set(patients.iter().filter(|q| &q.org == org).map(|q| &q.id));
    assert_eq!(ids_of(&server, &format!("Patient?organization=Organization/{org}")).await, expected);
    let bundle = server.get("Patient?gender=male&_total=accurate&_count=1").await.expect(200);
    assert_eq!(bundle["total"], patients.iter().filter(|q| q.gender == "male").count());
    let bundle = server.get("Observation?code=85354-9&_summary=count").await.expect(200);
    assert_eq!(bundle["total"], obs.iter().filter(|o| o.code == "85354-9").count());
    assert!(bundle.get("entry").is_none(), "{bundle}");

    // Observation: code, patient + code + date range, quantities, composites.
    let heart: Vec<&Observation> = obs.iter().filter(|o| o.code == "8867-4").collect();
    assert_eq!(ids_of(&server, &format!("Observation?code={LOINC}|8867-4")).await, set(heart.iter().map(|o| &o.id)));
    let target = obs.iter().find(|o| o.date.as_str() >= "2022-06-01" && o.bp.is_none()).expect("a recent vital");
    let pid = &patients[target.patient].id;
    let expected = set(obs
        .iter()
        .filter(|o| o.patient == target.patient && o.code == target.code && o.date.as_str() >= "2022-06-01")
        .map(|o| &o.id));
    assert!(expected.contains(&target.id));
    assert_eq!(
        ids_of(&server, &format!("Observation?patient={pid}&code={}&date=ge2022-06-01", target.code)).await,
        expected
    );
    let expected = set(obs.iter().filter(|o| o.code != "85354-9" && o.date.as_str() < "2022").map(|o| &o.id));
    assert!(expected.len() > 10);
    assert_eq!(ids_of(&server, "Observation?date=lt2022-01-01&code:not=85354-9").await, expected);
    let expected = set(obs.iter().filter(|o| o.code != "85354-9" && o.date.starts_with("2023-03")).map(|o| &o.id));
    assert_eq!(ids_of(&server, "Observation?date=2023-03").await, expected);
    let expected = set(obs.iter().filter(|o| o.unit == "mg/dL" && o.value > 150.0).map(|o| &o.id));
    assert!(!expected.is_empty());
    assert_eq!(ids_of(&server, &format!("Observation?value-quantity=gt150|{UCUM}|mg/dL")).await, expected);
    let expected = set(obs.iter().filter(|o| o.bp.is_some_and(|(s, _)| s >= 140.0)).map(|o| &o.id));
    assert!(!expected.is_empty() && expected.len() < patients.len());
    assert_eq!(
        ids_of(&server, &format!("Observation?component-code-value-quantity={LOINC}|8480-6$ge140")).await,
        expected
    );
    let expected = set(obs.iter().filter(|o| o.unit == "/min" && o.value == 72.0).map(|o| &o.id));
    assert_eq!(ids_of(&server, "Observation?value-quantity=72||/min").await, expected);

    // Chains and reverse chains.
    let p = &patients[3];
    let expected = set(obs.iter().filter(|o| o.patient == 3).map(|o| &o.id));
    assert_eq!(ids_of(&server, &format!("Observation?subject:Patient.identifier={MRN}|{}", p.mrn)).await, expected);
    assert_eq!(ids_of(&server, &format!("Observation?patient.identifier={}", p.mrn)).await, expected);
    let diabetic: BTreeSet<String> =
        clinic.conditions.iter().filter(|c| c.2 == "44054006").map(|c| patients[c.1].id.clone()).collect();
    assert!(!diabetic.is_empty() && diabetic.len() < patients.len());
    assert_eq!(ids_of(&server, &format!("Patient?_has:Condition:patient:code={SNOMED}|44054006")).await, diabetic);

    // Sorting: newest first, ties by id, stable across pages.
    let mut expected: Vec<(&str, &str)> =
        obs.iter().filter(|o| o.code == "29463-7").map(|o| (o.date.as_str(), o.id.as_str())).collect();
    expected.sort_by(|a, b| b.0.cmp(a.0).then(a.1.cmp(b.1)));
    let got: Vec<String> = all_matches(&server, "Observation?code=29463-7&_sort=-date,_id&_count=4")
        .await
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(got, expected.iter().map(|e| e.1.to_owned()).collect::<Vec<_>>());

    // _include and _revinclude.
    let drug = "860975";
    let bundle = server
        .get(&format!("MedicationRequest?code={RXNORM}|{drug}&_include=MedicationRequest:subject&_count=1000"))
        .await
        .expect(200);
    let (matches, included) = split_modes(&bundle);
    let expected_matches = set(clinic.prescriptions.iter().filter(|m| m.2 == drug).map(|m| &m.0));
    let expected_included = set(clinic.prescriptions.iter().filter(|m| m.2 == drug).map(|m| &patients[m.1].id));
    assert!(!expected_matches.is_empty());
    assert_eq!(matches, expected_matches);
    assert_eq!(included, expected_included);
    let p = &patients[20];
    let bundle = server
        .get(&format!("Patient?_id={}&_revinclude=Observation:subject&_revinclude=Condition:patient", p.id))
        .await
        .expect(200);
    let (matches, included) = split_modes(&bundle);
    assert_eq!(matches, set([&p.id]));
    let mut expected = set(obs.iter().filter(|o| o.patient == 20).map(|o| &o.id));
    expected.extend(clinic.conditions.iter().filter(|c| c.1 == 20).map(|c| c.0.clone()));
    assert_eq!(included, expected);
    // :iterate: observations, their patients, and those patients' organisations.
    let bundle = server
        .get(&format!(
            "Observation?patient={}&_include=Observation:patient&_include:iterate=Patient:organization",
            p.id
        ))
        .await
        .expect(200);
    let (_, included) = split_modes(&bundle);
    assert_eq!(included, set([&p.id, &p.org]));

    // Form-encoded POST search, compartment search, system search.
    let reply = server
        .send(
            server_client(&server)
                .post(server.url("Patient/_search"))
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("identifier={}", patients[9].mrn)),
        )
        .await;
    let bundle = reply.expect(200);
    assert_eq!(split_modes(&bundle).0, set([&patients[9].id]));
    let expected = set(obs.iter().filter(|o| o.patient == 9 && o.code == "85354-9").map(|o| &o.id));
    assert_eq!(ids_of(&server, &format!("Patient/{}/Observation?code=85354-9", patients[9].id)).await, expected);
    let expected = set(patients.iter().filter(|q| q.tagged).map(|q| &q.id));
    assert_eq!(ids_of(&server, "?_type=Patient,Observation&_tag=http://example.org/tags|study-a").await, expected);

    // _elements and _summary trim matches and say so.
    let bundle = server.get(&format!("Patient?_id={}&_elements=gender", patients[0].id)).await.expect(200);
    let resource = &bundle["entry"][0]["resource"];
    assert!(resource.get("name").is_none() && resource["gender"].is_string(), "{resource}");
    assert!(resource["meta"]["tag"].as_array().unwrap().iter().any(|t| t["code"] == "SUBSETTED"));

    // Updates move the index; deletes remove resources from results.
    let p = &patients[30];
    let mut body = server.get(&format!("Patient/{}", p.id)).await.expect(200);
    body["name"][0]["family"] = json!("Vanterpool");
    server.put(&format!("Patient/{}", p.id), &body).await.expect(200);
    assert_eq!(ids_of(&server, "Patient?family=vanterpool").await, set([&p.id]));
    assert!(!ids_of(&server, &format!("Patient?family={}", p.family)).await.contains(&p.id));
    server.delete(&format!("Patient/{}", p.id)).await.expect(200);
    assert!(ids_of(&server, "Patient?family=vanterpool").await.is_empty());

    // Identifying values never reach the database in the clear, index included.
    let raw = server.raw_database_bytes().await;
    for secret in ["Lindqvist", "lindqvist", "Nakagawa", "nakagawa", "MRN-00011"] {
        assert!(!crate::harness::contains_bytes(&raw, secret.as_bytes()), "{secret} found in the raw database");
    }
}

fn split_modes(bundle: &Value) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut matches = BTreeSet::new();
    let mut included = BTreeSet::new();
    for entry in bundle["entry"].as_array().into_iter().flatten() {
        let id = entry["resource"]["id"].as_str().unwrap_or_default().to_owned();
        match entry["search"]["mode"].as_str() {
            Some("match") => matches.insert(id),
            Some("include") => included.insert(id),
            _ => false,
        };
    }
    (matches, included)
}

/// Errors: strict vs lenient handling, malformed values, limits, forged cursors.
async fn search_errors(db: Db) {
    let server = Server::start(db).await;
    server.post("Patient", &json!({"resourceType": "Patient", "gender": "female"})).await.expect(201);
    // Strict by default: an unknown parameter is a 400 naming it, never ignored.
    server.get("CarePlan?patient=f001&colour=blue").await.expect_outcome(400, "not-supported");
    let lenient = [("prefer", "handling=lenient")];
    let bundle = server
        .send(
            server_client(&server)
                .get(server.url("Patient?gender=female&colour=blue"))
                .header(lenient[0].0, lenient[0].1),
        )
        .await
        .expect(200);
    let outcome =
        bundle["entry"].as_array().unwrap().iter().find(|e| e["search"]["mode"] == "outcome").expect("outcome");
    assert!(outcome["resource"]["issue"][0]["diagnostics"].as_str().unwrap().contains("colour"), "{outcome}");
    assert!(!bundle["link"][0]["url"].as_str().unwrap().contains("colour"), "self link lists what was applied");
    let strict = [("prefer", "handling=strict")];
    let reply = server
        .send(server_client(&server).get(server.url("Patient?colour=blue")).header(strict[0].0, strict[0].1))
        .await;
    assert!(reply.expect_outcome(400, "not-supported").contains("colour"));
    server.get("Observation?date=last-tuesday").await.expect_outcome(400, "value");
    server.get("Observation?value-quantity=gt1;drop table x").await.expect_outcome(400, "value");
    server.get("Patient?birthdate=gt1970").await.expect(200);
    server.get("Patient?family:contains=ab").await.expect_outcome(400, "not-supported");
    server.get("Patient?_sort=family").await.expect_outcome(400, "value");
    let reply = server
        .send(server_client(&server).get(server.url("Patient?_count=5000")).header(strict[0].0, strict[0].1))
        .await;
    reply.expect_outcome(400, "too-costly");
    server.get("Patient?_cursor=eyJkIjoiYSIsInYiOlsxXX0").await.expect_outcome(400, "value");
    server.get("?gender=female").await.expect_outcome(400, "required");
    // SQL metacharacters and wildcards are values like any other.
    for hostile in ["'%20OR%201=1--", "%25", "_", "x'||'y", "\\"] {
        let bundle = server.get(&format!("Organization?name:contains={hostile}")).await.expect(200);
        assert!(bundle.get("entry").is_none_or(|e| e.as_array().unwrap().is_empty()), "{bundle}");
    }
    server.get("Patient?gender=female").await.expect(200);
}

/// A patient-scoped token sees its own compartment only, totals included, and the audit log
/// names what each search returned.
async fn search_respects_patient_scopes(db: Db) {
    let server = Server::start(db).await;
    let mut patients = Vec::new();
    for n in 0..3 {
        let id = created_id(
            &server
                .post(
                    "Patient",
                    &json!({"resourceType": "Patient", "gender": "other", "identifier": [{"value": format!("P{n}")}]}),
                )
                .await,
        );
        for code in ["8867-4", "2339-0"] {
            server
                .post(
                    "Observation",
                    &json!({"resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": LOINC, "code": code}]},
                "subject": {"reference": format!("Patient/{id}")}}),
                )
                .await
                .expect(201);
        }
        patients.push(id);
    }
    let token = server.token("patient/Observation.rs patient/Patient.rs", Some(&patients[1]));
    let client = server.client_with(Some(&token));
    let bundle = server.send(client.get(server.url("Observation?_total=accurate"))).await.expect(200);
    assert_eq!(bundle["total"], 2, "{bundle}");
    let subjects: BTreeSet<&str> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["resource"]["subject"]["reference"].as_str().unwrap())
        .collect();
    assert_eq!(subjects, BTreeSet::from([format!("Patient/{}", patients[1]).as_str()]));
    let bundle =
        server.send(client.get(server.url("Patient?gender=other&_revinclude=Observation:subject"))).await.expect(200);
    let ids: BTreeSet<String> = bundle["entry"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            e["resource"]["subject"]["reference"]
                .as_str()
                .map_or_else(|| format!("Patient/{}", e["resource"]["id"].as_str().unwrap()), str::to_owned)
        })
        .collect();
    assert_eq!(ids, BTreeSet::from([format!("Patient/{}", patients[1])]));
    // No search scope on the type: 403.
    let token = server.token("patient/Observation.r", Some(&patients[1]));
    let reply = server.send(server.client_with(Some(&token)).get(server.url("Observation"))).await;
    reply.expect_outcome(403, "forbidden");
    // The audit entry of a search lists the ids returned.
    let entries = server.hearth(&["audit", "export"]);
    let text = String::from_utf8_lossy(&entries.stdout);
    let searched: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|e| e.to_string().contains("search-type"))
        .collect();
    assert!(searched.iter().any(|e| e.to_string().contains(&format!("Patient/{}", patients[1]))), "{text}");
}

/// Resources stored before the search index existed are indexed at start-up.
async fn index_is_rebuilt_at_start(db: Db) {
    let server = Server::start(db).await;
    let id = created_id(
        &server.post("Patient", &json!({"resourceType": "Patient", "name": [{"family": "Ashworth"}]})).await,
    );
    let mut conn = server.raw_connection().await;
    sqlx::query("DELETE FROM search_index").execute(&mut conn).await.unwrap();
    sqlx::query("DELETE FROM search_index_state").execute(&mut conn).await.unwrap();
    drop(conn);
    assert!(ids_of(&server, "Patient?family=ashworth").await.is_empty());
    let server = server.restart(Launch::default()).await;
    assert_eq!(ids_of(&server, "Patient?family=ashworth").await, BTreeSet::from([id]));
    assert!(server.log().contains("search index ready"), "{}", server.log());
}

/// The R4 semantics the issue named: parameters of every type, strings from the start on
/// encrypted fields, missing elements, CodeableConcept text, modifiers.
async fn r4_semantics(db: Db) {
    let server = Server::start(db).await;
    let patient = |id: &str, family: &str, given: &str, city: &str, extra: Value| {
        let mut p = json!({"resourceType": "Patient", "id": id, "name": [{"family": family, "given": [given]}],
                           "address": [{"city": city}]});
        p.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        p
    };
    for p in [
        patient("rea", "Réa", "Henrietta", "Amsterdam", json!({"deceasedBoolean": false, "birthDate": "1970-04-02"})),
        patient("smyth", "Smyth", "Hendrik", "Amstelveen", json!({"deceasedDateTime": "2020-01-05"})),
        patient(
            "other",
            "Doe",
            "John",
            "Utrecht",
            json!({"identifier": [{"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]}, "system": "urn:mrn", "value": "M-1"}]}),
        ),
    ] {
        server.put(&format!("Patient/{}", p["id"].as_str().unwrap()), &p).await.expect(201);
    }
    let ids = |path: &'static str| {
        let server = &server;
        async move { ids_of(server, path).await.into_iter().collect::<Vec<_>>() }
    };
    assert_eq!(ids("Patient?family=REA").await, ["rea"], "accent- and case-insensitive prefix");
    assert_eq!(ids("Patient?given=hen").await, ["rea", "smyth"]);
    assert_eq!(ids("Patient?address-city=Ams").await, ["rea", "smyth"]);
    assert_eq!(ids("Patient?name=smy").await, ["smyth"]);
    assert_eq!(ids("Patient?phonetic=Smith").await, ["smyth"], "sounds like");
    assert_eq!(ids("Patient?deceased=false").await, ["other", "rea"], "absent deceased[x] is not deceased");
    assert_eq!(ids("Patient?deceased=true").await, ["smyth"]);
    assert_eq!(ids("Patient?death-date=ge2020").await, ["smyth"]);
    assert_eq!(ids("Patient?death-date=lt2020-01-05").await, Vec::<String>::new());
    assert_eq!(ids("Patient?birthdate=sa1969&birthdate=eb1971").await, ["rea"]);
    assert_eq!(ids("Patient?birthdate:missing=true").await, ["other", "smyth"]);
    assert_eq!(ids("Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|M-1").await, ["other"]);

    // Parameters of types the registry had none for, and the strictness that keeps a patient's
    // search to that patient.
    for (id, subject) in [("cp1", "rea"), ("cp2", "smyth"), ("cp3", "rea")] {
        let plan = json!({"resourceType": "CarePlan", "id": id, "status": "active", "intent": "plan",
                          "subject": {"reference": format!("Patient/{subject}")},
                          "category": [{"coding": [{"system": "http://snomed.info/sct", "code": "734163000"}]}]});
        server.put(&format!("CarePlan/{id}"), &plan).await.expect(201);
    }
    assert_eq!(ids("CarePlan?patient=rea").await, ["cp1", "cp3"]);
    assert_eq!(ids("CarePlan?subject:Patient.family=smy").await, ["cp2"], "a chain into blind prefixes");
    assert_eq!(ids("Patient?_has:CarePlan:patient:status=active&family=re").await, ["rea"]);
    server.get("CarePlan?patient=rea&colour=blue").await.expect_outcome(400, "not-supported");
    server.get("CarePlan?patient:below=rea").await.expect_outcome(400, "not-supported");

    // Observation: value-string over CodeableConcept text; composites of two codes.
    let obs = |id: &str, value: Value| {
        let mut o = json!({"resourceType": "Observation", "id": id, "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "5778-6"}]},
            "subject": {"reference": "Patient/rea"}, "performer": [{"identifier": {"system": "urn:npi", "value": "N-7"}}]});
        o.as_object_mut().unwrap().extend(value.as_object().unwrap().clone());
        o
    };
    server.put("Observation/o1", &obs("o1", json!({"valueString": "Amber"}))).await.expect(201);
    let concept = json!({"valueCodeableConcept": {"text": "Amber colour",
        "coding": [{"system": "http://snomed.info/sct", "code": "371244009"}]}});
    server.put("Observation/o2", &obs("o2", concept)).await.expect(201);
    assert_eq!(ids("Observation?value-string=amb").await, ["o1", "o2"]);
    assert_eq!(
        ids("Observation?code-value-concept=http://loinc.org|5778-6$http://snomed.info/sct|371244009").await,
        ["o2"]
    );
    assert_eq!(ids("Observation?code-value-concept=5778-6$371244009").await, ["o2"]);
    assert_eq!(ids("Observation?code-value-string=5778-6$AMBER").await, ["o1"]);
    assert_eq!(ids("Observation?performer:identifier=urn:npi|N-7").await, ["o1", "o2"]);

    // uri :below and :above.
    let vs = json!({"resourceType": "ValueSet", "id": "vs1", "status": "active", "url": "http://acme.org/fhir/ValueSet/vs1"});
    server.put("ValueSet/vs1", &vs).await.expect(201);
    assert_eq!(ids("ValueSet?url:below=http://acme.org/fhir/").await, ["vs1"]);
    assert_eq!(ids("ValueSet?url:above=http://acme.org/fhir/ValueSet/vs1/_history/2").await, ["vs1"]);
    assert!(ids("ValueSet?url:below=http://acme.org/other").await.is_empty());
}

on_both_databases!(
    search_table,
    search_errors,
    search_respects_patient_scopes,
    index_is_rebuilt_at_start,
    r4_semantics
);

/// The operator's storage overrides: a parameter made blind loses `:contains` and sorting, and
/// a patient's parameter cannot be made plain (the server does not start and says why).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_may_index_more_blind_but_not_patients_in_the_clear() {
    let launch = Launch { extra_args: vec!["--search-blind".into(), "Organization.name".into()], ..Launch::default() };
    let server = Server::launch(Db::Sqlite, launch).await;
    let org = json!({"resourceType": "Organization", "name": "Riverside Clinic"});
    server.post("Organization", &org).await.expect(201);
    assert_eq!(ids_of(&server, "Organization?name=river").await.len(), 1, "prefix still works");
    server.get("Organization?name:contains=side").await.expect_outcome(400, "not-supported");
    let bytes = server.raw_database_bytes().await;
    assert!(!crate::harness::contains_bytes(&bytes, b"riverside"), "the name is not in the index in the clear");

    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let output = crate::harness::hearth_command(&[
        "serve",
        "--dev",
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--listen",
        "127.0.0.1:0",
        "--search-plain",
        "Patient.family",
    ]);
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("Patient.family") && stderr.contains("in the clear"), "{stderr}");
}
