//! HL7 v2 to FHIR R4: converts ADT (A01, A04, A08, A28, A31) to a Patient and ORU^R01 to a
//! Patient plus one Observation per OBX segment. Observations point at the patient by
//! identifier (a logical reference), so the result needs no server-assigned ids.
//!
//! Binding config (optional): `{"identifier_systems": {"HOSP": "http://hospital.example/mrn"}}`
//! maps PID-3 assigning authorities to identifier systems (default `urn:hl7v2:AUTHORITY`).

use serde_json::{Map, Value, json};

wit_bindgen::generate!({ path: "../../wit", world: "integration" });

struct Hl7v2;

/// One segment split into fields; field 0 is the segment name. For MSH, field 1 is the field
/// separator itself, so MSH-n is `fields[n]` like every other segment.
struct Segment<'a> {
    fields: Vec<&'a str>,
    component: char,
    repetition: char,
}

impl<'a> Segment<'a> {
    fn name(&self) -> &str {
        self.fields.first().copied().unwrap_or("")
    }
    fn field(&self, n: usize) -> &'a str {
        self.fields.get(n).copied().unwrap_or("")
    }
    fn repetitions(&self, n: usize) -> impl Iterator<Item = &'a str> {
        self.field(n).split(self.repetition).filter(|r| !r.is_empty())
    }
    fn component(&self, value: &'a str, n: usize) -> &'a str {
        value.split(self.component).nth(n - 1).unwrap_or("")
    }
}

fn parse(message: &str) -> Result<Vec<Segment<'_>>, String> {
    let message = message.trim_start_matches('\u{0b}').trim_end_matches(['\u{1c}', '\r', '\n']);
    if !message.starts_with("MSH") || message.len() < 8 {
        return Err("not an HL7 v2 message: it must start with an MSH segment".into());
    }
    let separator = message[3..].chars().next().ok_or("MSH lacks a field separator")?;
    let mut encoding = message[4..].chars();
    let component = encoding.next().unwrap_or('^');
    let repetition = encoding.next().unwrap_or('~');
    Ok(message
        .split(['\r', '\n'])
        .filter(|s| !s.trim().is_empty())
        .map(|line| {
            let mut fields: Vec<&str> = line.split(separator).collect();
            if line.starts_with("MSH") {
                fields.insert(1, "|");
            }
            Segment { fields, component, repetition }
        })
        .collect())
}

/// HL7 v2 TS (YYYY[MM[DD[HHMM[SS]]]]) to a FHIR date or dateTime.
fn timestamp(ts: &str, date_only: bool) -> Option<String> {
    let digits: String = ts.chars().take_while(char::is_ascii_digit).collect();
    let part = |a: usize, b: usize| digits.get(a..b);
    let date = match digits.len() {
        4 => digits.clone(),
        6 => format!("{}-{}", part(0, 4)?, part(4, 6)?),
        n if n >= 8 => format!("{}-{}-{}", part(0, 4)?, part(4, 6)?, part(6, 8)?),
        _ => return None,
    };
    if date_only || digits.len() < 12 {
        return Some(date);
    }
    let seconds = part(12, 14).unwrap_or("00");
    Some(format!("{date}T{}:{}:{seconds}Z", part(8, 10)?, part(10, 12)?))
}

/// Leaves out what an HL7 v2 message left empty: FHIR JSON allows no empty strings, arrays or
/// objects (the server refuses them).
fn pruned(value: Value) -> Value {
    match value {
        Value::Object(object) => {
            Value::Object(object.into_iter().map(|(k, v)| (k, pruned(v))).filter(|(_, v)| !is_empty(v)).collect())
        }
        Value::Array(items) => Value::Array(items.into_iter().map(pruned).filter(|v| !is_empty(v)).collect()),
        other => other,
    }
}

fn is_empty(value: &Value) -> bool {
    match value {
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
        Value::Null => true,
        _ => false,
    }
}

fn patient(pid: &Segment, config: &Value) -> (Value, Option<Value>) {
    let mut patient = Map::new();
    patient.insert("resourceType".into(), json!("Patient"));
    let mut identifiers = Vec::new();
    for rep in pid.repetitions(3) {
        let value = pid.component(rep, 1);
        if value.is_empty() {
            continue;
        }
        let authority = pid.component(rep, 4);
        let system = config
            .pointer(&format!("/identifier_systems/{authority}"))
            .and_then(Value::as_str)
            .map(str::to_owned)
            .unwrap_or_else(|| format!("urn:hl7v2:{}", if authority.is_empty() { "local" } else { authority }));
        identifiers.push(json!({"system": system, "value": value}));
    }
    let first = identifiers.first().cloned();
    if !identifiers.is_empty() {
        patient.insert("identifier".into(), Value::Array(identifiers));
    }
    let names: Vec<Value> = pid
        .repetitions(5)
        .map(|rep| {
            let given: Vec<&str> =
                [pid.component(rep, 2), pid.component(rep, 3)].into_iter().filter(|g| !g.is_empty()).collect();
            json!({"family": pid.component(rep, 1), "given": given})
        })
        .collect();
    if !names.is_empty() {
        patient.insert("name".into(), Value::Array(names));
    }
    if let Some(birth) = timestamp(pid.field(7), true) {
        patient.insert("birthDate".into(), json!(birth));
    }
    let gender = match pid.field(8) {
        "M" => Some("male"),
        "F" => Some("female"),
        "O" | "A" => Some("other"),
        "U" => Some("unknown"),
        _ => None,
    };
    if let Some(gender) = gender {
        patient.insert("gender".into(), json!(gender));
    }
    let addresses: Vec<Value> = pid
        .repetitions(11)
        .map(|rep| {
            let lines: Vec<&str> =
                [pid.component(rep, 1), pid.component(rep, 2)].into_iter().filter(|l| !l.is_empty()).collect();
            json!({"line": lines, "city": pid.component(rep, 3), "state": pid.component(rep, 4),
                   "postalCode": pid.component(rep, 5), "country": pid.component(rep, 6)})
        })
        .collect();
    if !addresses.is_empty() {
        patient.insert("address".into(), Value::Array(addresses));
    }
    let phones: Vec<Value> =
        pid.repetitions(13).map(|rep| json!({"system": "phone", "value": pid.component(rep, 1)})).collect();
    if !phones.is_empty() {
        patient.insert("telecom".into(), Value::Array(phones));
    }
    (Value::Object(patient), first)
}

fn observation(obx: &Segment, subject: Option<&Value>) -> Result<Value, String> {
    let code = obx.field(3);
    let coding_system = match obx.component(code, 3) {
        "LN" => "http://loinc.org".to_owned(),
        "" => "urn:hl7v2:local".to_owned(),
        other => format!("urn:hl7v2:{other}"),
    };
    let status = match obx.field(11) {
        "P" => "preliminary",
        "C" => "corrected",
        "X" | "D" => "cancelled",
        _ => "final",
    };
    let mut observation = json!({
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": coding_system, "code": obx.component(code, 1), "display": obx.component(code, 2)}]},
    });
    if let Some(subject) = subject {
        observation["subject"] = json!({"identifier": subject});
    }
    if let Some(when) = timestamp(obx.field(14), false) {
        observation["effectiveDateTime"] = json!(when);
    }
    let raw = obx.field(5);
    match obx.field(2) {
        "NM" => {
            let number: f64 = raw.trim().parse().map_err(|_| format!("OBX-5 {raw:?} is not a number"))?;
            let unit = obx.component(obx.field(6), 1);
            observation["valueQuantity"] =
                json!({"value": number, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit});
        }
        _ if !raw.is_empty() => observation["valueString"] = json!(raw),
        _ => {}
    }
    Ok(observation)
}

impl Guest for Hl7v2 {
    fn on_change(_event: ChangeEvent, _config: String) -> Result<(), String> {
        Ok(())
    }

    fn convert(body: Vec<u8>, media_type: String, config: String) -> Result<Vec<String>, String> {
        if !media_type.starts_with("application/hl7-v2") && !media_type.starts_with("x-application/hl7-v2") {
            return Err(format!("expected application/hl7-v2, got {media_type}"));
        }
        let config: Value = serde_json::from_str(&config).unwrap_or(Value::Null);
        let text = String::from_utf8(body).map_err(|_| "the message is not UTF-8".to_owned())?;
        let segments = parse(&text)?;
        let msh = &segments[0];
        let kind = msh.field(9);
        let (event_type, trigger) = (msh.component(kind, 1), msh.component(kind, 2));
        let pid = segments.iter().find(|s| s.name() == "PID").ok_or("the message has no PID segment")?;
        let (patient, identifier) = patient(pid, &config);
        let mut resources = vec![pruned(patient).to_string()];
        match (event_type, trigger) {
            ("ADT", "A01" | "A04" | "A08" | "A28" | "A31") => {}
            ("ORU", "R01") => {
                for obx in segments.iter().filter(|s| s.name() == "OBX") {
                    resources.push(pruned(observation(obx, identifier.as_ref())?).to_string());
                }
            }
            _ => return Err(format!("unsupported message type {event_type}^{trigger}")),
        }
        Ok(resources)
    }
}

export!(Hl7v2);
