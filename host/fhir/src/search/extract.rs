//! From a resource to its search index rows: walks each parameter's paths and turns what it
//! finds (codes, Codings, Identifiers, names, addresses, dates, Periods, Quantities,
//! References) into [`IndexEntry`] values, blind-indexing the identifying ones.

use serde_json::{Map, Value};

use super::dates::{DateRange, parse_date_range};
use super::registry::{self, Kind, Param, Storage};
use hearth_crypto::blind_index::{BlindIndexKey, Normalization, normalize};

/// One row of the search index.
#[derive(Debug, Clone, PartialEq)]
pub struct IndexEntry {
    pub param: &'static str,
    pub sys: Option<String>,
    pub val: Option<String>,
    pub unit: Option<String>,
    pub num: Option<f64>,
    pub date: Option<(i64, i64)>,
}

impl IndexEntry {
    fn new(param: &'static str) -> Self {
        IndexEntry { param, sys: None, val: None, unit: None, num: None, date: None }
    }
}

/// The blind-index token of `value` for parameter `param` of `res_type`, hex-encoded.
pub fn blind_token(key: &BlindIndexKey, res_type: &str, param: &str, tagged: &str) -> String {
    let token = key.token(&format!("{res_type}.{param}"), Normalization::Exact, tagged);
    token.iter().map(|b| format!("{b:02x}")).collect()
}

/// The tagged forms a blind token is computed over for tokens (system and value), so a search
/// can name `system|value`, `value` (any system), `|value` (no system) or `system|`.
pub fn blind_token_forms(system: Option<&str>, value: &str, normalization: Normalization) -> Vec<String> {
    let value = normalize(normalization, value);
    let mut forms = vec![format!("V|{value}")];
    match system {
        Some(system) => {
            forms.push(format!("S|{system}|{value}"));
            forms.push(format!("Y|{system}"));
        }
        None => forms.push(format!("N|{value}")),
    }
    forms
}

/// The tagged form of a blind string value.
pub fn blind_string_form(value: &str, normalization: Normalization) -> String {
    format!("T|{}", normalize(normalization, value))
}

/// The tagged forms of a blind date: its year, month and day (as far as it is precise).
pub fn blind_date_forms(date: &str) -> Vec<String> {
    let day = date.get(..10).unwrap_or(date);
    let mut forms = Vec::new();
    for len in [4, 7, 10] {
        if let Some(prefix) = day.get(..len)
            && day.len() >= len
        {
            forms.push(format!("D|{prefix}"));
        }
    }
    forms
}

/// Every index row for `resource` (of type `res_type`).
pub fn index_entries(res_type: &str, resource: &Map<String, Value>, key: &BlindIndexKey) -> Vec<IndexEntry> {
    let params: Vec<&'static Param> = registry::of_type(res_type).collect();
    let mut entries = index_entries_of_params(res_type, &params, resource, key);
    entries.dedup();
    let id = resource.get("id").and_then(Value::as_str).unwrap_or("");
    let compartment = crate::compartment::data_key_id(res_type, id, resource);
    if compartment.starts_with("patient/") {
        entries.push(IndexEntry { val: Some(compartment), ..IndexEntry::new(COMPARTMENT) });
    }
    entries
}

/// The index row naming the patient compartment a resource is in (`val`: `patient/<id>`, the
/// data key it is sealed under), so a `patient/` token's searches can start from it the way a
/// `patient=` search starts from its reference (see `store::search`). Not a search parameter.
pub const COMPARTMENT: &str = "_compartment";

/// The index rows of `params` only (all of `res_type`'s), for checking an access predicate
/// without indexing the whole resource.
pub fn index_entries_of_params(
    res_type: &str,
    params: &[&'static Param],
    resource: &Map<String, Value>,
    key: &BlindIndexKey,
) -> Vec<IndexEntry> {
    let mut entries = Vec::new();
    for param in params.iter().copied().filter(|p| !p.is_special()) {
        if param.kind == Kind::CompositeQuantity {
            composite(param, resource, &mut entries);
            continue;
        }
        for path in param.paths {
            for (choice, node) in walk(resource, path) {
                extract(res_type, param, choice, node, key, &mut entries);
            }
        }
    }
    entries
}

/// The nodes at `path` under `root`, each with the type suffix of the last choice element
/// crossed (`"Quantity"` for `valueQuantity`), or `""`.
pub fn walk<'a>(root: &'a Map<String, Value>, path: &str) -> Vec<(&'a str, &'a Value)> {
    let mut current: Vec<(&str, &Value)> = Vec::new();
    let mut first = true;
    for segment in path.split('.').filter(|s| !s.is_empty()) {
        let (name, filter) = match segment.split_once('[') {
            Some((name, rest)) => (name, Some(rest.trim_end_matches(']'))),
            None => (segment, None),
        };
        let parents: Vec<(&str, &Map<String, Value>)> = if first {
            vec![("", root)]
        } else {
            current.iter().filter_map(|(c, v)| v.as_object().map(|o| (*c, o))).collect()
        };
        first = false;
        let mut next = Vec::new();
        for (choice, parent) in parents {
            let mut push = |suffix: &'a str, value: &'a Value| match value {
                Value::Array(items) => next.extend(items.iter().map(|item| (suffix, item))),
                other => next.push((suffix, other)),
            };
            match filter {
                Some("x") => {
                    for (key, value) in parent {
                        if let Some(suffix) = key.strip_prefix(name)
                            && suffix.starts_with(|c: char| c.is_ascii_uppercase())
                        {
                            push(suffix, value);
                        }
                    }
                }
                _ => {
                    if let Some(value) = parent.get(name) {
                        push(choice, value);
                    }
                }
            }
        }
        if let Some(filter) = filter.filter(|f| *f != "x")
            && let Some((field, wanted)) = filter.split_once('=')
        {
            next.retain(|(_, v)| v.get(field).and_then(Value::as_str) == Some(wanted));
        }
        current = next;
    }
    if first { vec![] } else { current }
}

/// Whether a choice type suffix can be indexed by a parameter of `kind`.
fn choice_fits(kind: Kind, choice: &str) -> bool {
    if choice.is_empty() {
        return true;
    }
    match kind {
        // Not `String`: a choice's string (`Observation.valueString`) is free text, which the
        // index may hold only as blind tokens (`value-string`), never as a plain code.
        Kind::Token => matches!(choice, "CodeableConcept" | "Coding" | "Boolean" | "Code" | "Identifier"),
        Kind::Date => matches!(choice, "DateTime" | "Date" | "Period" | "Instant"),
        Kind::Quantity | Kind::CompositeQuantity => {
            matches!(choice, "Quantity" | "Age" | "Duration" | "Distance" | "Count" | "SimpleQuantity")
        }
        Kind::Reference => choice == "Reference",
        Kind::String => matches!(choice, "String" | "Markdown"),
        Kind::Number => matches!(choice, "Integer" | "Decimal" | "PositiveInt" | "UnsignedInt"),
        Kind::Uri => matches!(choice, "Uri" | "Url" | "Canonical"),
    }
}

fn extract(
    res_type: &str,
    param: &'static Param,
    choice: &str,
    node: &Value,
    key: &BlindIndexKey,
    out: &mut Vec<IndexEntry>,
) {
    // Patient.deceased is true for a death date as well as for deceasedBoolean = true.
    if param.code == "deceased" && choice == "DateTime" {
        out.push(IndexEntry { val: Some("true".into()), ..IndexEntry::new(param.code) });
        return;
    }
    if !choice_fits(param.kind, choice) {
        return;
    }
    match param.kind {
        Kind::Token => {
            for (system, code) in token_values(node) {
                match param.storage {
                    Storage::Blind(normalization) => {
                        for form in blind_token_forms(system.as_deref(), &code, normalization) {
                            out.push(IndexEntry {
                                val: Some(blind_token(key, res_type, param.code, &form)),
                                ..IndexEntry::new(param.code)
                            });
                        }
                    }
                    _ => out.push(IndexEntry { sys: system, val: Some(code), ..IndexEntry::new(param.code) }),
                }
            }
        }
        Kind::Uri => {
            if let Some(text) = node.as_str() {
                out.push(IndexEntry { val: Some(text.to_owned()), ..IndexEntry::new(param.code) });
            }
        }
        Kind::String => {
            for text in string_values(node) {
                let val = match param.storage {
                    Storage::Blind(normalization) => {
                        blind_token(key, res_type, param.code, &blind_string_form(text, normalization))
                    }
                    _ => normalize(Normalization::Text, text),
                };
                if !val.is_empty() {
                    out.push(IndexEntry { val: Some(val), ..IndexEntry::new(param.code) });
                }
            }
        }
        Kind::Date => match param.storage {
            Storage::BlindDate => {
                if let Some(text) = node.as_str() {
                    for form in blind_date_forms(text) {
                        out.push(IndexEntry {
                            val: Some(blind_token(key, res_type, param.code, &form)),
                            ..IndexEntry::new(param.code)
                        });
                    }
                }
            }
            _ => {
                if let Some(range) = date_value(node) {
                    out.push(IndexEntry { date: Some((range.lo, range.hi)), ..IndexEntry::new(param.code) });
                }
            }
        },
        Kind::Reference => {
            if let Some((target, id)) = reference_value(node)
                && (param.targets.is_empty() || param.targets.contains(&target.as_str()))
            {
                out.push(IndexEntry { sys: Some(target), val: Some(id), ..IndexEntry::new(param.code) });
            }
        }
        Kind::Number => {
            if let Some(n) = node.as_f64() {
                out.push(IndexEntry { num: Some(n), ..IndexEntry::new(param.code) });
            }
        }
        Kind::Quantity => {
            if let Some(entry) = quantity_value(param.code, node) {
                out.push(entry);
            }
        }
        Kind::CompositeQuantity => {}
    }
}

/// `code-value-quantity` style rows: for each element at the base path, one row per
/// (Coding of the token part) x (its Quantity), holding the code system and code in
/// `sys`/`val` and the quantity in `num`/`unit`.
fn composite(param: &'static Param, resource: &Map<String, Value>, out: &mut Vec<IndexEntry>) {
    let [base, token_path, value_path] = param.paths else { return };
    let bases: Vec<&Map<String, Value>> = if base.is_empty() {
        vec![resource]
    } else {
        walk(resource, base).into_iter().filter_map(|(_, v)| v.as_object()).collect()
    };
    // combo-: the resource itself and its components.
    let bases: Vec<&Map<String, Value>> = if param.code.starts_with("combo-") {
        let mut all = bases;
        all.extend(walk(resource, "component").into_iter().filter_map(|(_, v)| v.as_object()));
        all
    } else {
        bases
    };
    for element in bases {
        let quantities: Vec<IndexEntry> = walk(element, value_path)
            .into_iter()
            .filter(|(choice, _)| choice_fits(Kind::Quantity, choice))
            .filter_map(|(_, v)| quantity_value(param.code, v))
            .collect();
        for (_, token) in walk(element, token_path) {
            for (system, code) in token_values(token) {
                for quantity in &quantities {
                    out.push(IndexEntry { sys: system.clone(), val: Some(code.clone()), ..quantity.clone() });
                }
            }
        }
    }
}

/// (system, code) pairs of a token element: a code/string/boolean, a Coding, a
/// CodeableConcept, an Identifier or a ContactPoint.
pub fn token_values(node: &Value) -> Vec<(Option<String>, String)> {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_owned);
    match node {
        Value::String(code) => vec![(None, code.clone())],
        Value::Bool(b) => vec![(None, b.to_string())],
        Value::Object(object) => {
            if let Some(codings) = object.get("coding").and_then(Value::as_array) {
                return codings.iter().flat_map(token_values).collect();
            }
            let code = text(object.get("code")).or_else(|| text(object.get("value")));
            // ContactPoint.system is a kind (phone, email), not a code system.
            let is_contact = object
                .get("system")
                .and_then(Value::as_str)
                .is_some_and(|s| matches!(s, "phone" | "fax" | "email" | "pager" | "url" | "sms" | "other"));
            match code {
                Some(code) if is_contact => vec![(None, code)],
                Some(code) => vec![(text(object.get("system")), code)],
                None => vec![],
            }
        }
        _ => vec![],
    }
}

/// The strings a string parameter matches: the text itself, or every part of a HumanName or
/// Address.
fn string_values(node: &Value) -> Vec<&str> {
    match node {
        Value::String(text) => vec![text.as_str()],
        Value::Object(object) => {
            let mut parts = Vec::new();
            for field in ["family", "text", "city", "district", "state", "postalCode", "country"] {
                if let Some(text) = object.get(field).and_then(Value::as_str) {
                    parts.push(text);
                }
            }
            for field in ["given", "prefix", "suffix", "line"] {
                if let Some(items) = object.get(field).and_then(Value::as_array) {
                    parts.extend(items.iter().filter_map(Value::as_str));
                }
            }
            parts
        }
        _ => vec![],
    }
}

/// The range a date, dateTime, instant or Period covers.
fn date_value(node: &Value) -> Option<DateRange> {
    match node {
        Value::String(text) => parse_date_range(text),
        Value::Object(period) => {
            let start = period.get("start").and_then(Value::as_str).and_then(parse_date_range);
            let end = period.get("end").and_then(Value::as_str).and_then(parse_date_range);
            if start.is_none() && end.is_none() {
                return None;
            }
            Some(DateRange { lo: start.map_or(i64::MIN, |r| r.lo), hi: end.map_or(i64::MAX, |r| r.hi) })
        }
        _ => None,
    }
}

/// The (type, id) a Reference points at: relative (`Patient/1`), versioned
/// (`Patient/1/_history/2`) or absolute URLs ending in one of those.
pub fn reference_value(node: &Value) -> Option<(String, String)> {
    let text = node.get("reference")?.as_str()?;
    let mut segments: Vec<&str> = text.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    match segments.as_slice() {
        [.., res_type, id] if crate::resource_types::is_resource_type(res_type) && crate::resource::is_valid_id(id) => {
            Some(((*res_type).to_owned(), (*id).to_owned()))
        }
        _ => None,
    }
}

fn quantity_value(param: &'static str, node: &Value) -> Option<IndexEntry> {
    let object = node.as_object()?;
    let value = object.get("value")?.as_f64()?;
    let unit = object.get("code").or_else(|| object.get("unit")).and_then(Value::as_str).map(str::to_owned);
    let system = object.get("system").and_then(Value::as_str).map(str::to_owned);
    Some(IndexEntry { sys: system, unit, num: Some(value), ..IndexEntry::new(param) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use hearth_crypto::SecretKey;
    use serde_json::json;

    fn entries(res_type: &str, resource: Value) -> Vec<IndexEntry> {
        let key = BlindIndexKey::new(SecretKey::generate());
        index_entries(res_type, resource.as_object().unwrap(), &key)
    }

    #[test]
    fn observation_rows() {
        let rows = entries(
            "Observation",
            json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}], "text": "Heart rate"},
                "subject": {"reference": "Patient/p1"},
                "effectiveDateTime": "2024-03-05",
                "valueQuantity": {"value": 72, "unit": "beats/minute", "system": "http://unitsofmeasure.org", "code": "/min"},
                "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": 120, "code": "mm[Hg]"}}]
            }),
        );
        let find = |param: &str| rows.iter().filter(|r| r.param == param).collect::<Vec<_>>();
        assert_eq!(find("status")[0].val.as_deref(), Some("final"));
        assert_eq!(find("code")[0].sys.as_deref(), Some("http://loinc.org"));
        assert_eq!(find("patient")[0].val.as_deref(), Some("p1"));
        assert_eq!(find("subject")[0].sys.as_deref(), Some("Patient"));
        let date = find("date")[0].date.unwrap();
        assert_eq!(date.1 - date.0, 86_400_000_000 - 1);
        assert_eq!(find("value-quantity")[0].num, Some(72.0));
        assert_eq!(find("value-quantity")[0].unit.as_deref(), Some("/min"));
        let cvq = find("code-value-quantity");
        assert_eq!((cvq[0].val.as_deref(), cvq[0].num), (Some("8867-4"), Some(72.0)));
        let component = find("component-code-value-quantity");
        assert_eq!((component[0].val.as_deref(), component[0].num), (Some("8480-6"), Some(120.0)));
        assert_eq!(find("combo-code-value-quantity").len(), 2);
        assert!(find("value-concept").is_empty(), "a Quantity is not a concept");
    }

    #[test]
    fn free_text_results_are_never_plain() {
        let result = "Positive for HIV-1 antibodies, confirmed";
        let rows = entries(
            "Observation",
            json!({
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "75622-1"}]},
                "valueString": result,
                "component": [{"code": {"coding": [{"system": "http://loinc.org", "code": "x"}]}, "valueString": result}]
            }),
        );
        for row in &rows {
            for value in [&row.val, &row.sys, &row.unit].into_iter().flatten() {
                assert!(!value.to_lowercase().contains("positive"), "free text in plain: {row:?}");
            }
        }
        let concepts = ["value-concept", "combo-value-concept", "component-value-concept"];
        assert!(rows.iter().all(|r| !concepts.contains(&r.param)), "no concept rows from strings: {rows:?}");
        assert_eq!(rows.iter().filter(|r| r.param == "value-string").count(), 1, "found as a blind token");
    }

    #[test]
    fn identifying_values_are_blind() {
        let rows = entries(
            "Patient",
            json!({
                "resourceType": "Patient",
                "name": [{"family": "Zebedee", "given": ["Quillon"]}],
                "identifier": [{"system": "urn:mrn", "value": "MRN-77"}],
                "telecom": [{"system": "phone", "value": "+1 555 0100"}],
                "birthDate": "1970-04-02", "gender": "female"
            }),
        );
        let text = format!("{rows:?}");
        for secret in ["Zebedee", "zebedee", "Quillon", "quillon", "MRN-77"] {
            assert!(!text.contains(secret), "{secret} leaked into {text}");
        }
        for row in rows.iter().filter(|r| r.param != "gender" && r.param != COMPARTMENT) {
            let val = row.val.as_deref().unwrap_or_default();
            assert!(val.len() == 64 && val.bytes().all(|b| b.is_ascii_hexdigit()), "{row:?} is not a blind token");
            assert!(row.sys.is_none() && row.date.is_none() && row.num.is_none(), "{row:?}");
        }
        assert_eq!(rows.iter().filter(|r| r.param == "birthdate").count(), 3);
        assert_eq!(rows.iter().filter(|r| r.param == "identifier").count(), 3);
        assert!(rows.iter().any(|r| r.param == "gender" && r.val.as_deref() == Some("female")));
    }

    #[test]
    fn paths_walk_arrays_choices_and_filters() {
        let resource = json!({"telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}],
                              "effectivePeriod": {"start": "2020"}});
        let resource = resource.as_object().unwrap();
        let email = walk(resource, "telecom[system=email]");
        assert_eq!(email.len(), 1);
        assert_eq!(email[0].1["value"], "a@b");
        let effective = walk(resource, "effective[x]");
        assert_eq!(effective[0].0, "Period");
        assert!(walk(resource, "missing.deeper").is_empty());
        assert_eq!(reference_value(&json!({"reference": "https://x/fhir/Patient/9/_history/2"})).unwrap().1, "9");
        assert_eq!(reference_value(&json!({"reference": "urn:uuid:1"})), None);
    }
}
