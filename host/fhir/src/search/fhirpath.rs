//! The FHIRPath subset the R4 search parameter definitions use, compiled once and evaluated
//! over a resource's JSON: element paths, `|` unions, choice types (`value.as(Quantity)`,
//! `(value as CodeableConcept).text`), `where(resolve() is Patient)`, `where(system='email')`,
//! and `x.exists() and x != false` (Patient.deceased).
//!
//! Choice elements (`value[x]`) are found by their JSON names: `value` matches `valueQuantity`
//! and so on when the suffix is a FHIR data type, and the suffix travels with the node as its
//! type, which extraction uses to tell a `valueString` (free text) from a `code`.

use serde_json::{Map, Value};

/// A compiled expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    /// The nodes of every path, in order.
    Union(Vec<Path>),
    /// `p.exists() and p != false`: a boolean for every resource.
    Truthy(Path),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    /// Starts at the resource (`Patient.name`, `Resource.meta.tag`) or at the node given
    /// (a composite's component, `code`).
    pub from_root: bool,
    pub steps: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Child(String),
    /// `as(Type)` / `as Type`: keeps nodes of that type (a choice's suffix).
    As(String),
    /// `where(resolve() is Type)`: keeps References to that type.
    ResolvesTo(String),
    /// `where(field='value')`
    FieldEquals(String, String),
    /// `[n]`: the n-th node so far (`Bundle.entry[0]`).
    Index(usize),
}

/// One node found: the JSON value and, for choice elements, its data type (`Quantity`,
/// `DateTime`, `String`, ...).
#[derive(Debug, Clone, Copy)]
pub struct Node<'a> {
    pub value: &'a Value,
    pub ty: Option<&'a str>,
}

/// FHIR data types a choice element's JSON name may end in.
const CHOICE_TYPES: &[&str] = &[
    "Base64Binary",
    "Boolean",
    "Canonical",
    "Code",
    "Date",
    "DateTime",
    "Decimal",
    "Id",
    "Instant",
    "Integer",
    "Markdown",
    "Oid",
    "PositiveInt",
    "String",
    "Time",
    "UnsignedInt",
    "Uri",
    "Url",
    "Uuid",
    "Address",
    "Age",
    "Annotation",
    "Attachment",
    "CodeableConcept",
    "Coding",
    "ContactPoint",
    "Count",
    "Distance",
    "Duration",
    "HumanName",
    "Identifier",
    "Money",
    "Period",
    "Quantity",
    "Range",
    "Ratio",
    "Reference",
    "SampledData",
    "Signature",
    "Timing",
    "ContactDetail",
    "Contributor",
    "DataRequirement",
    "Expression",
    "ParameterDefinition",
    "RelatedArtifact",
    "TriggerDefinition",
    "UsageContext",
    "Dosage",
    "Meta",
];

/// Why an expression is outside the subset.
#[derive(Debug, Clone, PartialEq)]
pub struct Unsupported(pub String);

/// Compiles `text`.
pub fn compile(text: &str) -> Result<Expr, Unsupported> {
    let text = text.trim();
    if let Some((left, right)) = text.split_once(" and ") {
        // `X.exists() and X != false`
        let path = left.trim().strip_suffix(".exists()").ok_or_else(|| Unsupported(text.to_owned()))?;
        if right.trim() != format!("{path} != false") {
            return Err(Unsupported(text.to_owned()));
        }
        return Ok(Expr::Truthy(path_of(path)?));
    }
    Ok(Expr::Union(split_outside_parentheses(text, '|').iter().map(|p| path_of(p)).collect::<Result<_, _>>()?))
}

/// `text` split at each `separator` that is not inside parentheses, each part trimmed.
fn split_outside_parentheses(text: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut depth, mut start) = (0i32, 0);
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            _ if c == separator && depth == 0 => {
                parts.push(text[start..i].trim());
                start = i + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(text[start..].trim());
    parts
}

fn path_of(text: &str) -> Result<Path, Unsupported> {
    let unsupported = || Unsupported(text.to_owned());
    let text = text.trim();
    // `(inner as Type)` optionally followed by `.rest`
    if let Some(rest) = text.strip_prefix('(') {
        let close = rest.rfind(')').ok_or_else(unsupported)?;
        let (inner, ty) = rest[..close].rsplit_once(" as ").ok_or_else(unsupported)?;
        let mut path = path_of(inner)?;
        path.steps.push(Step::As(ty.trim().to_owned()));
        let tail = rest[close + 1..].trim();
        if !tail.is_empty() {
            let tail = tail.strip_prefix('.').ok_or_else(unsupported)?;
            path.steps.extend(steps_of(tail)?);
        }
        return Ok(path);
    }
    let mut steps = steps_of(text)?;
    let from_root =
        matches!(steps.first(), Some(Step::Child(name)) if name.starts_with(|c: char| c.is_ascii_uppercase()));
    if from_root {
        steps.remove(0);
    }
    Ok(Path { from_root, steps })
}

/// Dotted steps, not splitting inside parentheses.
fn steps_of(text: &str) -> Result<Vec<Step>, Unsupported> {
    let unsupported = || Unsupported(text.to_owned());
    let raw = split_outside_parentheses(text, '.');
    raw.into_iter()
        .map(|step| {
            let step = step.trim();
            if let Some(ty) = step.strip_prefix("as(").and_then(|s| s.strip_suffix(')')) {
                return Ok(vec![Step::As(ty.trim().to_owned())]);
            }
            if let Some(condition) = step.strip_prefix("where(").and_then(|s| s.strip_suffix(')')) {
                if let Some(ty) = condition.strip_prefix("resolve() is ") {
                    return Ok(vec![Step::ResolvesTo(ty.trim().to_owned())]);
                }
                let (field, value) = condition.split_once('=').ok_or_else(unsupported)?;
                let value =
                    value.trim().strip_prefix('\'').and_then(|v| v.strip_suffix('\'')).ok_or_else(unsupported)?;
                return Ok(vec![Step::FieldEquals(field.trim().to_owned(), value.to_owned())]);
            }
            if !step.is_empty() && step.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Ok(vec![Step::Child(step.to_owned())]);
            }
            // `name[n]`
            if let Some((name, index)) = step.strip_suffix(']').and_then(|s| s.split_once('['))
                && let Ok(index) = index.parse::<usize>()
                && !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric())
            {
                return Ok(vec![Step::Child(name.to_owned()), Step::Index(index)]);
            }
            Err(unsupported())
        })
        .collect::<Result<Vec<Vec<Step>>, _>>()
        .map(|steps| steps.into_iter().flatten().collect())
}

impl Path {
    /// The nodes this path reaches from the JSON value `start` (a composite's element).
    pub fn eval<'a>(&self, start: &'a Value) -> Vec<Node<'a>> {
        steps(vec![Node { value: start, ty: None }], &self.steps)
    }

    /// The nodes this path reaches from a resource. A path of no steps (the resource itself)
    /// reaches no node: see [`Path::is_root`].
    pub fn eval_map<'a>(&self, resource: &'a Map<String, Value>) -> Vec<Node<'a>> {
        let Some((Step::Child(name), rest)) = self.steps.split_first() else { return Vec::new() };
        let mut first = Vec::new();
        child(resource, name, &mut first);
        steps(first, rest)
    }

    /// Whether the path is the resource itself (`Observation`, a composite's base).
    pub fn is_root(&self) -> bool {
        self.steps.is_empty()
    }
}

fn steps<'a>(mut current: Vec<Node<'a>>, steps: &[Step]) -> Vec<Node<'a>> {
    for step in steps {
        if let Step::Index(index) = step {
            current = current.get(*index).copied().into_iter().collect();
            continue;
        }
        let mut next = Vec::new();
        for node in current {
            match step {
                Step::Child(name) => {
                    if let Some(object) = node.value.as_object() {
                        child(object, name, &mut next);
                    }
                }
                Step::As(ty) => {
                    if is_type(&node, ty) {
                        next.push(node);
                    }
                }
                Step::ResolvesTo(ty) => {
                    if reference_type(node.value) == Some(ty.as_str()) {
                        next.push(node);
                    }
                }
                Step::FieldEquals(field, value) => {
                    if node.value.get(field).and_then(Value::as_str) == Some(value.as_str()) {
                        next.push(node);
                    }
                }
                Step::Index(_) => {}
            }
        }
        current = next;
    }
    current
}

impl Expr {
    /// The reference types every path keeps (`where(resolve() is Patient)`), if they all do.
    pub fn resolves_to(&self) -> Option<Vec<&str>> {
        let Expr::Union(paths) = self else { return None };
        let mut types = Vec::new();
        for path in paths {
            let ty = path.steps.iter().rev().find_map(|s| match s {
                Step::ResolvesTo(ty) => Some(ty.as_str()),
                _ => None,
            })?;
            if !types.contains(&ty) {
                types.push(ty);
            }
        }
        Some(types)
    }

    /// The nodes of a composite's element this expression selects.
    pub fn eval<'a>(&self, start: &'a Value) -> Vec<Node<'a>> {
        match self {
            Expr::Union(paths) => paths.iter().flat_map(|p| p.eval(start)).collect(),
            Expr::Truthy(_) => Vec::new(),
        }
    }

    /// The nodes of a resource this expression selects.
    pub fn eval_map<'a>(&self, resource: &'a Map<String, Value>) -> Vec<Node<'a>> {
        match self {
            Expr::Union(paths) => paths.iter().flat_map(|p| p.eval_map(resource)).collect(),
            Expr::Truthy(_) => Vec::new(),
        }
    }

    /// For [`Expr::Truthy`]: its value on `resource`.
    pub fn truth(&self, resource: &Map<String, Value>) -> Option<bool> {
        let Expr::Truthy(path) = self else { return None };
        let nodes = path.eval_map(resource);
        Some(!nodes.is_empty() && nodes.iter().all(|n| n.value != &Value::Bool(false)))
    }
}

fn child<'a>(object: &'a Map<String, Value>, name: &str, out: &mut Vec<Node<'a>>) {
    let mut push = |value: &'a Value, ty: Option<&'a str>| match value {
        Value::Array(items) => out.extend(items.iter().map(|value| Node { value, ty })),
        other => out.push(Node { value: other, ty }),
    };
    if let Some(value) = object.get(name) {
        push(value, None);
        return;
    }
    for (key, value) in object {
        if let Some(suffix) = key.strip_prefix(name)
            && CHOICE_TYPES.contains(&suffix)
        {
            push(value, Some(suffix));
        }
    }
}

/// Whether `node` is of FHIR type `ty` (`dateTime`, `Quantity`, ...): by its choice suffix, or
/// for other elements by its JSON shape.
fn is_type(node: &Node<'_>, ty: &str) -> bool {
    if let Some(suffix) = node.ty {
        return suffix.eq_ignore_ascii_case(ty);
    }
    match ty {
        "Reference" => node.value.get("reference").is_some() || node.value.get("identifier").is_some(),
        "Identifier" => node.value.get("value").is_some() && node.value.get("reference").is_none(),
        "CodeableConcept" => node.value.get("coding").is_some() || node.value.get("text").is_some(),
        "Quantity" | "Age" | "Duration" => node.value.get("value").is_some_and(Value::is_number),
        "Range" => node.value.get("low").is_some() || node.value.get("high").is_some(),
        "Period" => node.value.get("start").is_some() || node.value.get("end").is_some(),
        "boolean" => node.value.is_boolean(),
        "string" | "date" | "dateTime" | "uri" | "canonical" | "code" => node.value.is_string(),
        _ => true,
    }
}

/// The type a Reference's `reference` names (`Patient/1`, an absolute URL, `_history`).
pub fn reference_type(node: &Value) -> Option<&str> {
    let text = node.get("reference")?.as_str()?;
    let mut segments: Vec<&str> = text.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    match segments.as_slice() {
        [.., res_type, _id] if crate::resource_types::is_resource_type(res_type) => Some(res_type),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn values(expression: &str, resource: &Value) -> Vec<Value> {
        compile(expression)
            .unwrap()
            .eval_map(resource.as_object().unwrap())
            .into_iter()
            .map(|n| n.value.clone())
            .collect()
    }

    #[test]
    fn every_r4_definition_compiles() {
        let data: Value = serde_json::from_str(include_str!("../../data/r4-search-parameters.json")).unwrap();
        let mut failures = Vec::new();
        for param in data["parameters"].as_array().unwrap() {
            let expression = param["expression"].as_str().unwrap();
            if expression.contains("%resource") {
                continue; // MolecularSequence's three-part composites (not supported)
            }
            if compile(expression).is_err() {
                failures.push(expression.to_owned());
            }
            for component in param["components"].as_array().into_iter().flatten() {
                let expression = component["expression"].as_str().unwrap();
                if !expression.contains("%resource") && compile(expression).is_err() {
                    failures.push(expression.to_owned());
                }
            }
        }
        assert!(failures.is_empty(), "{failures:#?}");
    }

    #[test]
    fn paths_choices_and_filters() {
        let observation = json!({
            "resourceType": "Observation",
            "subject": {"reference": "Patient/p1"},
            "performer": [{"reference": "Practitioner/d"}, {"reference": "Patient/p1"}],
            "valueCodeableConcept": {"text": "Positive", "coding": [{"code": "10828004"}]},
            "component": [{"valueQuantity": {"value": 5}}, {"valueString": "x"}]
        });
        assert_eq!(values("Observation.subject.where(resolve() is Patient)", &observation).len(), 1);
        assert_eq!(values("Observation.subject.where(resolve() is Group)", &observation).len(), 0);
        assert_eq!(values("Observation.performer", &observation).len(), 2);
        assert_eq!(
            values("(Observation.value as string) | (Observation.value as CodeableConcept).text", &observation),
            [json!("Positive")]
        );
        assert_eq!(values("(Observation.component.value as Quantity)", &observation), [json!({"value": 5})]);
        assert_eq!(values("Observation.component.value", &observation).len(), 2);
        assert_eq!(values("Resource.subject", &observation).len(), 1, "Resource matches any type");
        let patient = json!({"telecom": [{"system": "email", "value": "a@b"}, {"system": "phone", "value": "1"}]});
        assert_eq!(
            values("Patient.telecom.where(system='email')", &patient),
            [json!({"system": "email", "value": "a@b"})]
        );
        // `class` is not `classHistory`: only data type suffixes make a choice.
        let encounter = json!({"classHistory": [{"class": {"code": "x"}}]});
        assert!(values("Encounter.class", &encounter).is_empty());
    }

    #[test]
    fn deceased_is_a_boolean_of_every_patient() {
        let expr = compile("Patient.deceased.exists() and Patient.deceased != false").unwrap();
        let truth = |v: Value| expr.truth(v.as_object().unwrap());
        assert_eq!(truth(json!({})), Some(false));
        assert_eq!(truth(json!({"deceasedBoolean": false})), Some(false));
        assert_eq!(truth(json!({"deceasedBoolean": true})), Some(true));
        assert_eq!(truth(json!({"deceasedDateTime": "2020"})), Some(true));
    }
}
