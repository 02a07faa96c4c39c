//! From a resource to its search index rows: walks each parameter's paths and turns what it
//! finds (codes, Codings, Identifiers, names, addresses, dates, Periods, Quantities,
//! References) into [`IndexEntry`] values, blind-indexing the identifying ones.

use serde_json::{Map, Value};

use super::dates::{DateRange, parse_date_range};
use super::fhirpath::Node;
use super::registry::{self, BLIND_PREFIX_MAX, Kind, Param, Storage};
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

/// The tagged forms of a blind string: every prefix of the normalised value up to
/// [`BLIND_PREFIX_MAX`] characters (`P|`), the whole normalised value when longer (`F|`), and
/// the value as given for `:exact` (`X|`).
pub fn blind_string_forms(value: &str) -> Vec<String> {
    let normalized = normalize(Normalization::Text, value);
    let mut forms: Vec<String> = normalized
        .char_indices()
        .map(|(i, c)| i + c.len_utf8())
        .take(BLIND_PREFIX_MAX)
        .map(|end| format!("P|{}", &normalized[..end]))
        .collect();
    if normalized.chars().count() > BLIND_PREFIX_MAX {
        forms.push(format!("F|{normalized}"));
    }
    forms.push(format!("X|{}", value.trim()));
    forms
}

/// The tagged form a blind string search looks for: a prefix (`:exact`: the value as given).
pub fn blind_string_search_form(value: &str, exact: bool) -> String {
    if exact {
        return format!("X|{}", value.trim());
    }
    let normalized = normalize(Normalization::Text, value);
    if normalized.chars().count() > BLIND_PREFIX_MAX { format!("F|{normalized}") } else { format!("P|{normalized}") }
}

/// `sys` of the rows holding a Reference's logical identifier (as blind tokens), beside the
/// rows of the references themselves (`sys` = the target type).
pub const REFERENCE_IDENTIFIER: &str = "#identifier";

/// The tagged forms of a Reference's logical identifier: `system|value` and `value`.
pub fn reference_identifier_forms(system: Option<&str>, value: &str) -> Vec<String> {
    let mut forms = vec![format!("I|{value}")];
    if let Some(system) = system {
        forms.push(format!("J|{system}|{value}"));
    }
    forms
}

/// The `:of-type` forms of an Identifier with a type: one per type Coding.
pub fn of_type_forms(node: &Value) -> Vec<String> {
    let Some(value) = node.get("value").and_then(Value::as_str) else { return Vec::new() };
    let codings = node.get("type").and_then(|t| t.get("coding")).and_then(Value::as_array);
    codings
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let system = c.get("system").and_then(Value::as_str)?;
            let code = c.get("code").and_then(Value::as_str)?;
            Some(format!("O|{system}|{code}|{}", value.trim()))
        })
        .collect()
}

/// The tagged form of a composite's free-text component (whole normalised value).
pub fn blind_component_form(value: &str) -> String {
    format!("T|{}", normalize(Normalization::Text, value))
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
        if param.kind == Kind::Composite {
            composite(res_type, param, resource, key, &mut entries);
            continue;
        }
        if let Some(truth) = param.expr.truth(resource) {
            entries.push(IndexEntry { val: Some(truth.to_string()), ..IndexEntry::new(param.code) });
            continue;
        }
        for node in param.expr.eval_map(resource) {
            for found in values(param.kind, node, param.targets) {
                entry(res_type, param, found, key, &mut entries);
            }
        }
    }
    entries
}

/// A value found in a resource for a parameter of some kind.
#[derive(Debug, Clone, PartialEq)]
enum Found {
    Token(Option<String>, String),
    /// An Identifier's type and value, for `:of-type` (`O|type system|type code|value`).
    OfType(String),
    /// A Reference's logical identifier, for `:identifier` (tagged forms, blind).
    ReferenceIdentifier(Vec<String>),
    Text(String),
    Date(DateRange, String),
    Reference(String, String),
    Number(f64),
    Quantity {
        system: Option<String>,
        unit: Option<String>,
        value: f64,
    },
}

/// Whether a choice's type can be read by a parameter of `kind` (a choice's `string` is free
/// text: never a token, so never indexed in the clear as a code).
fn choice_fits(kind: Kind, choice: &str) -> bool {
    match kind {
        Kind::Token => !matches!(choice, "String" | "Markdown" | "Annotation"),
        Kind::String => matches!(choice, "String" | "Markdown" | "HumanName" | "Address"),
        _ => true,
    }
}

/// The values of kind `kind` a node holds.
fn values(kind: Kind, node: Node<'_>, targets: &[&str]) -> Vec<Found> {
    if node.ty.is_some_and(|ty| !choice_fits(kind, ty)) {
        return Vec::new();
    }
    let value = node.value;
    match kind {
        Kind::Token => {
            let mut found: Vec<Found> = token_values(value).into_iter().map(|(s, c)| Found::Token(s, c)).collect();
            found.extend(of_type_forms(value).into_iter().map(Found::OfType));
            found
        }
        Kind::Uri => value.as_str().map(|t| vec![Found::Token(None, t.to_owned())]).unwrap_or_default(),
        Kind::String => string_values(value).into_iter().map(|t| Found::Text(t.to_owned())).collect(),
        Kind::Date => date_values(value),
        Kind::Reference => {
            let reference = match value {
                Value::String(text) => reference_of_text(text),
                other => reference_value(other),
            };
            let mut found: Vec<Found> = reference
                .filter(|(target, _)| targets.is_empty() || targets.contains(&target.as_str()))
                .map(|(t, id)| vec![Found::Reference(t, id)])
                .unwrap_or_default();
            if let Some(identifier) = value.get("identifier").and_then(Value::as_object)
                && let Some(id_value) = identifier.get("value").and_then(Value::as_str)
            {
                let system = identifier.get("system").and_then(Value::as_str);
                found.push(Found::ReferenceIdentifier(reference_identifier_forms(system, id_value)));
            }
            found
        }
        Kind::Number => value.as_f64().map(|n| vec![Found::Number(n)]).unwrap_or_default(),
        Kind::Quantity => quantity_value(value).into_iter().collect(),
        Kind::Composite => Vec::new(),
    }
}

/// One value as an index row of `param`, blind-indexed as its storage says.
fn entry(res_type: &str, param: &'static Param, found: Found, key: &BlindIndexKey, out: &mut Vec<IndexEntry>) {
    let blind = |form: &str| blind_token(key, res_type, param.code, form);
    let row = |val: String| IndexEntry { val: Some(val), ..IndexEntry::new(param.code) };
    match (found, param.storage) {
        (Found::Token(system, code), Storage::Blind(normalization)) => {
            out.extend(blind_token_forms(system.as_deref(), &code, normalization).iter().map(|f| row(blind(f))));
        }
        (Found::Token(system, code), _) => out.push(IndexEntry { sys: system, ..row(code) }),
        (Found::OfType(form), Storage::Blind(_)) => out.push(row(blind(&form))),
        (Found::OfType(_), _) => {}
        (Found::ReferenceIdentifier(forms), _) => {
            out.extend(forms.iter().map(|f| IndexEntry { sys: Some(REFERENCE_IDENTIFIER.to_owned()), ..row(blind(f)) }))
        }
        (Found::Text(text), Storage::Blind(_)) => out.extend(blind_string_forms(&text).iter().map(|f| row(blind(f)))),
        (Found::Text(text), Storage::BlindPhonetic) => {
            out.extend(phonetic_codes(&text).iter().map(|code| row(blind(&format!("H|{code}")))));
        }
        // Normalised for prefix, :contains and sorting; as given (in `unit`) for :exact.
        (Found::Text(text), _) => {
            let normalized = normalize(Normalization::Text, &text);
            if !normalized.is_empty() {
                out.push(IndexEntry { unit: Some(text.trim().to_owned()), ..row(normalized) });
            }
        }
        (Found::Date(_, text), Storage::BlindDate) => {
            out.extend(super::buckets::stored_forms(&text).iter().map(|f| row(blind(f))));
        }
        (Found::Date(range, _), _) => {
            out.push(IndexEntry { date: Some((range.lo, range.hi)), ..IndexEntry::new(param.code) })
        }
        (Found::Reference(target, id), _) => out.push(IndexEntry { sys: Some(target), ..row(id) }),
        (Found::Number(n), _) => out.push(IndexEntry { num: Some(n), ..IndexEntry::new(param.code) }),
        (Found::Quantity { system, unit, value }, _) => {
            out.push(IndexEntry { sys: system, unit, num: Some(value), ..IndexEntry::new(param.code) });
        }
    }
}

/// Composite rows: for each element the parameter's expression selects (the resource itself
/// for `Observation`), one row per combination of its two components' values. The first
/// component (a token or a reference) is in `sys`/`val`; the second in `num`/`unit` (a
/// quantity or number), `date_lo`/`date_hi` (a date), or `unit` (a token as `system|code`, a
/// reference as `Type/id`, free text as a blind token of the whole normalised value).
fn composite(
    res_type: &str,
    param: &'static Param,
    resource: &Map<String, Value>,
    key: &BlindIndexKey,
    out: &mut Vec<IndexEntry>,
) {
    let [first, second] = param.components else { return };
    let super::fhirpath::Expr::Union(paths) = param.expr else { return };
    let mut pairs: Vec<(Vec<Found>, Vec<Found>)> = Vec::new();
    let component = |c: &super::registry::Component, start: Option<&Value>| -> Vec<Found> {
        let nodes = match start {
            Some(value) => c.expr.eval(value),
            None => c.expr.eval_map(resource),
        };
        nodes.into_iter().flat_map(|n| values(c.kind, n, &[])).collect()
    };
    for path in paths {
        if path.is_root() {
            pairs.push((component(first, None), component(second, None)));
        } else {
            for node in path.eval_map(resource) {
                pairs.push((component(first, Some(node.value)), component(second, Some(node.value))));
            }
        }
    }
    for (firsts, seconds) in pairs {
        for a in &firsts {
            let (sys, val) = match a {
                Found::Token(system, code) => (system.clone(), code.clone()),
                Found::Reference(target, id) => (Some(target.clone()), id.clone()),
                _ => continue,
            };
            for b in &seconds {
                let mut row = IndexEntry { sys: sys.clone(), val: Some(val.clone()), ..IndexEntry::new(param.code) };
                match b {
                    Found::Quantity { unit, value, .. } => (row.num, row.unit) = (Some(*value), unit.clone()),
                    Found::Number(n) => row.num = Some(*n),
                    Found::Date(range, _) => row.date = Some((range.lo, range.hi)),
                    Found::Token(system, code) => {
                        row.unit = Some(format!("{}|{code}", system.as_deref().unwrap_or("")))
                    }
                    Found::Reference(target, id) => row.unit = Some(format!("{target}/{id}")),
                    Found::Text(text) => {
                        row.unit = Some(blind_token(key, res_type, param.code, &blind_component_form(text)));
                    }
                    Found::OfType(_) | Found::ReferenceIdentifier(_) => continue,
                }
                out.push(row);
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

/// The dates a date, dateTime, instant, Period or Timing (its events) covers, each with the
/// text it came from (blind dates are indexed from the text).
fn date_values(node: &Value) -> Vec<Found> {
    match node {
        Value::String(text) => parse_date_range(text).map(|r| vec![Found::Date(r, text.clone())]).unwrap_or_default(),
        Value::Object(object) if object.contains_key("event") || object.contains_key("repeat") => {
            let mut found: Vec<Found> =
                object.get("event").and_then(Value::as_array).into_iter().flatten().flat_map(date_values).collect();
            if let Some(bounds) = object.get("repeat").and_then(|r| r.get("boundsPeriod")) {
                found.extend(date_values(bounds));
            }
            found
        }
        Value::Object(period) => {
            let start = period.get("start").and_then(Value::as_str);
            let end = period.get("end").and_then(Value::as_str);
            let (lo, hi) = (start.and_then(parse_date_range), end.and_then(parse_date_range));
            if lo.is_none() && hi.is_none() {
                return Vec::new();
            }
            let range = DateRange { lo: lo.map_or(i64::MIN, |r| r.lo), hi: hi.map_or(i64::MAX, |r| r.hi) };
            vec![Found::Date(range, start.or(end).unwrap_or_default().to_owned())]
        }
        _ => Vec::new(),
    }
}

/// The (type, id) a Reference points at: relative (`Patient/1`), versioned
/// (`Patient/1/_history/2`) or absolute URLs ending in one of those.
pub fn reference_value(node: &Value) -> Option<(String, String)> {
    reference_of_text(node.get("reference")?.as_str()?)
}

/// The (type, id) of a reference's text (also a canonical such as `Questionnaire/q1`).
fn reference_of_text(text: &str) -> Option<(String, String)> {
    let text = text.split('|').next().unwrap_or(text);
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

/// A Quantity (or Age, Duration, Distance, Count, SimpleQuantity) or Money.
fn quantity_value(node: &Value) -> Option<Found> {
    let object = node.as_object()?;
    let value = object.get("value")?.as_f64()?;
    let unit = object
        .get("code")
        .or_else(|| object.get("unit"))
        .or_else(|| object.get("currency"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let system = object.get("system").and_then(Value::as_str).map(str::to_owned);
    Some(Found::Quantity { system, unit, value })
}

/// The phonetic codes (American Soundex) of each word of a name's parts; a word without Latin
/// letters (another script) is its own code, so it still matches itself.
pub fn phonetic_codes(text: &str) -> Vec<String> {
    normalize(Normalization::Text, text)
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(|word| soundex(word).unwrap_or_else(|| format!("={word}")))
        .collect()
}

fn soundex(word: &str) -> Option<String> {
    let digit = |c: char| match c {
        'b' | 'f' | 'p' | 'v' => Some('1'),
        'c' | 'g' | 'j' | 'k' | 'q' | 's' | 'x' | 'z' => Some('2'),
        'd' | 't' => Some('3'),
        'l' => Some('4'),
        'm' | 'n' => Some('5'),
        'r' => Some('6'),
        _ => None,
    };
    let letters: Vec<char> = word.chars().filter(char::is_ascii_alphabetic).collect();
    let first = *letters.first()?;
    let mut code = first.to_ascii_uppercase().to_string();
    let mut last = digit(first);
    for &c in &letters[1..] {
        let d = digit(c);
        if d.is_some() && d != last {
            code.push(d.unwrap_or('0'));
            if code.len() == 4 {
                break;
            }
        }
        // h and w do not separate equal codes; vowels do.
        if !matches!(c, 'h' | 'w') {
            last = d;
        }
    }
    while code.len() < 4 {
        code.push('0');
    }
    Some(code)
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
        let strings: Vec<&IndexEntry> = rows.iter().filter(|r| r.param == "value-string").collect();
        assert!(strings.len() > 1, "found as blind prefix tokens");
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
        for row in rows.iter().filter(|r| !matches!(r.param, "gender" | "deceased" | COMPARTMENT)) {
            let val = row.val.as_deref().unwrap_or_default();
            assert!(val.len() == 64 && val.bytes().all(|b| b.is_ascii_hexdigit()), "{row:?} is not a blind token");
            assert!(row.sys.is_none() && row.date.is_none() && row.num.is_none(), "{row:?}");
        }
        assert_eq!(rows.iter().filter(|r| r.param == "birthdate").count(), 6, "millennium to day");
        assert!(rows.iter().any(|r| r.param == "deceased" && r.val.as_deref() == Some("false")));
        assert_eq!(rows.iter().filter(|r| r.param == "identifier").count(), 3);
        assert!(rows.iter().any(|r| r.param == "gender" && r.val.as_deref() == Some("female")));
    }

    #[test]
    fn references_strings_and_phonetics() {
        assert_eq!(reference_value(&json!({"reference": "https://x/fhir/Patient/9/_history/2"})).unwrap().1, "9");
        assert_eq!(reference_value(&json!({"reference": "urn:uuid:1"})), None);
        let forms = blind_string_forms("  Müller-Lüdenscheidt ");
        assert_eq!(forms.first().map(String::as_str), Some("P|m"));
        assert!(forms.contains(&"P|muller lud".to_owned()));
        assert!(forms.contains(&"X|Müller-Lüdenscheidt".to_owned()));
        assert_eq!(blind_string_search_form("MÜLL", false), "P|mull");
        let long = "a".repeat(40);
        assert_eq!(blind_string_forms(&long).iter().filter(|f| f.starts_with("P|")).count(), BLIND_PREFIX_MAX);
        assert_eq!(blind_string_search_form(&long, false), format!("F|{long}"));
        assert_eq!(phonetic_codes("Robert Rupert"), ["R163", "R163"]);
        assert_eq!(phonetic_codes("Ashcraft Tymczak"), ["A261", "T522"]);
    }

    #[test]
    fn every_type_indexes_its_r4_parameters() {
        let rows = entries(
            "CarePlan",
            json!({"resourceType": "CarePlan", "status": "active", "intent": "plan",
                   "subject": {"reference": "Patient/f001"}, "period": {"start": "2011-06-26"},
                   "activity": [{"detail": {"code": {"coding": [{"system": "http://snomed.info/sct", "code": "3"}]}}}]}),
        );
        let find = |param: &str| rows.iter().filter(|r| r.param == param).collect::<Vec<_>>();
        assert_eq!(find("patient")[0].val.as_deref(), Some("f001"));
        assert_eq!(find("activity-code")[0].val.as_deref(), Some("3"));
        assert!(find("date")[0].date.is_some());
        let rows = entries(
            "Observation",
            json!({"resourceType": "Observation", "status": "final", "code": {"coding": [{"code": "c"}]},
                   "valueCodeableConcept": {"text": "Positive", "coding": [{"system": "s", "code": "10828004"}]}}),
        );
        assert!(rows.iter().any(|r| r.param == "value-string"), "CodeableConcept.text is the value's string");
        let concept = rows.iter().find(|r| r.param == "code-value-concept").unwrap();
        assert_eq!((concept.val.as_deref(), concept.unit.as_deref()), (Some("c"), Some("s|10828004")));
    }
}
