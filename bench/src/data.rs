//! Synthetic, realistic FHIR R4 data: patients with names, identifiers, telecom and addresses;
//! observations with LOINC vital-sign codes. Deterministic per seed, no PHI of real people.

use serde_json::{Value, json};

const FAMILY: &[&str] = &[
    "Smith",
    "Okafor",
    "Nguyen",
    "García",
    "Müller",
    "Kowalski",
    "Haddad",
    "Johansson",
    "Tanaka",
    "O'Brien",
    "Rossi",
    "Dubois",
];
const GIVEN: &[&str] =
    &["Amara", "Liam", "Mei", "José", "Anna", "Tomasz", "Layla", "Erik", "Yuki", "Siobhan", "Giulia", "Chloé"];
const CITIES: &[&str] = &["Springfield", "Riverton", "Lakeside", "Fairview", "Greenville", "Madison"];

/// (LOINC code, display, unit, typical value, spread)
const VITALS: &[(&str, &str, &str, f64, f64)] = &[
    ("8867-4", "Heart rate", "/min", 72.0, 15.0),
    ("8480-6", "Systolic blood pressure", "mm[Hg]", 120.0, 20.0),
    ("8462-4", "Diastolic blood pressure", "mm[Hg]", 80.0, 10.0),
    ("8310-5", "Body temperature", "Cel", 36.8, 0.6),
    ("9279-1", "Respiratory rate", "/min", 16.0, 3.0),
    ("29463-7", "Body weight", "kg", 75.0, 15.0),
    ("2339-0", "Glucose [Mass/volume] in Blood", "mg/dL", 95.0, 20.0),
];

/// A small deterministic generator (xorshift), so runs are comparable.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    fn pick<'a>(&mut self, items: &[&'a str]) -> &'a str {
        items[self.below(items.len())]
    }

    fn unit(&mut self) -> f64 {
        (self.next_u64() % 10_000) as f64 / 10_000.0
    }
}

pub fn patient(rng: &mut Rng, n: u64) -> Value {
    let year = 1930 + rng.below(90);
    json!({
        "resourceType": "Patient",
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": format!("MRN-{:08}", n)}],
        "active": true,
        "name": [{"use": "official", "family": rng.pick(FAMILY), "given": [rng.pick(GIVEN)]}],
        "telecom": [{"system": "phone", "value": format!("+1 555-{:04}", rng.below(10_000)), "use": "home"}],
        "gender": if rng.below(2) == 0 { "female" } else { "male" },
        "birthDate": format!("{year}-{:02}-{:02}", 1 + rng.below(12), 1 + rng.below(28)),
        "address": [{"line": [format!("{} Main Street", 1 + rng.below(999))], "city": rng.pick(CITIES), "postalCode": format!("{:05}", rng.below(100_000)), "country": "US"}]
    })
}

pub fn observation(rng: &mut Rng, patient_id: &str) -> Value {
    let (code, display, unit, mean, spread) = VITALS[rng.below(VITALS.len())];
    let value = ((mean + (rng.unit() - 0.5) * 2.0 * spread) * 10.0).round() / 10.0;
    json!({
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}], "text": display},
        "subject": {"reference": format!("Patient/{patient_id}")},
        "effectiveDateTime": format!("2026-{:02}-{:02}T{:02}:{:02}:00Z", 1 + rng.below(12), 1 + rng.below(28), rng.below(24), rng.below(60)),
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit}
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_resources_are_deterministic_and_well_formed() {
        let a = patient(&mut Rng::new(1), 5);
        let b = patient(&mut Rng::new(1), 5);
        assert_eq!(a, b);
        assert_eq!(a["resourceType"], "Patient");
        assert_eq!(a["identifier"][0]["value"], "MRN-00000005");
        let birth = a["birthDate"].as_str().unwrap();
        assert_eq!(birth.len(), 10, "{birth}");
        let obs = observation(&mut Rng::new(2), "p1");
        assert_eq!(obs["subject"]["reference"], "Patient/p1");
        assert_eq!(obs["code"]["coding"][0]["system"], "http://loinc.org");
        assert!(obs["valueQuantity"]["value"].as_f64().unwrap() > 0.0);
    }
}
