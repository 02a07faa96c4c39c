//! Applies the obligations of an `allow-with` decision to a resource: removes the named
//! elements and adds security labels. A resource that lost anything carries the
//! `REDACTED` label (v3 ObservationValue), so a reader knows it is not the whole record.

use serde_json::{Map, Value, json};

const REDACTED_SYSTEM: &str = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue";

/// A security label to add, as (system, code, display).
pub type Label = (String, String, Option<String>);

/// Removes each path in `paths` from `resource` and adds `labels`; returns whether anything
/// was removed. Paths: property names separated by dots, each optionally indexed (`note[1]`);
/// an unindexed array is walked item by item. `id`, `meta` and `resourceType` are never removed.
pub fn apply(resource: &mut Map<String, Value>, paths: &[String], labels: &[Label]) -> bool {
    let mut removed = false;
    // Remove higher indices first, so removing `x[1]` does not shift `x[2]`.
    let mut ordered: Vec<Vec<Step>> = paths.iter().filter_map(|p| parse(p)).collect();
    ordered.sort_by(|a, b| b.cmp(a));
    for steps in &ordered {
        if matches!(steps.first(), Some(Step { name, .. }) if ["id", "meta", "resourceType"].contains(&name.as_str())) {
            continue;
        }
        removed |= remove(resource, steps);
    }
    let mut all_labels: Vec<Label> = labels.to_vec();
    if removed {
        all_labels.push((REDACTED_SYSTEM.into(), "REDACTED".into(), Some("redacted".into())));
    }
    if !all_labels.is_empty() {
        let meta = resource.entry("meta").or_insert_with(|| json!({}));
        if let Some(meta) = meta.as_object_mut() {
            let security = meta.entry("security").or_insert_with(|| json!([]));
            if let Some(security) = security.as_array_mut() {
                for (system, code, display) in all_labels {
                    let present = security.iter().any(|c| c["system"] == system.as_str() && c["code"] == code.as_str());
                    if !present {
                        let mut coding = json!({"system": system, "code": code});
                        if let Some(display) = display {
                            coding["display"] = json!(display);
                        }
                        security.push(coding);
                    }
                }
            }
        }
    }
    removed
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Step {
    name: String,
    index: Option<usize>,
}

fn parse(path: &str) -> Option<Vec<Step>> {
    path.split('.')
        .map(|part| match part.split_once('[') {
            None if !part.is_empty() => Some(Step { name: part.to_owned(), index: None }),
            Some((name, rest)) if !name.is_empty() => {
                let index = rest.strip_suffix(']')?.parse().ok()?;
                Some(Step { name: name.to_owned(), index: Some(index) })
            }
            _ => None,
        })
        .collect()
}

fn remove(object: &mut Map<String, Value>, steps: &[Step]) -> bool {
    let Some((step, rest)) = steps.split_first() else { return false };
    if rest.is_empty() {
        return match (step.index, object.get_mut(&step.name)) {
            (None, Some(_)) => object.remove(&step.name).is_some(),
            (Some(i), Some(Value::Array(items))) if i < items.len() => {
                items.remove(i);
                if items.is_empty() {
                    object.remove(&step.name);
                }
                true
            }
            _ => false,
        };
    }
    match (step.index, object.get_mut(&step.name)) {
        (Some(i), Some(Value::Array(items))) => {
            items.get_mut(i).and_then(Value::as_object_mut).is_some_and(|child| remove(child, rest))
        }
        (None, Some(Value::Array(items))) => {
            let mut any = false;
            for child in items.iter_mut().filter_map(Value::as_object_mut) {
                any |= remove(child, rest);
            }
            any
        }
        (None, Some(Value::Object(child))) => remove(child, rest),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_paths_and_labels_the_result() {
        let mut patient = json!({
            "resourceType": "Patient", "id": "p",
            "identifier": [{"system": "mrn", "value": "1"}, {"system": "ssn", "value": "2"}, {"system": "ssn", "value": "3"}],
            "contact": [{"telecom": [{"value": "x"}], "name": {"family": "F"}}, {"telecom": [{"value": "y"}]}],
        });
        let object = patient.as_object_mut().unwrap();
        let paths =
            ["identifier[1]", "identifier[2]", "contact.telecom", "nothing.here", "id", "bad["].map(String::from);
        assert!(apply(object, &paths, &[]));
        assert_eq!(patient["identifier"], json!([{"system": "mrn", "value": "1"}]));
        assert_eq!(patient["contact"], json!([{"name": {"family": "F"}}, {}]));
        assert_eq!(patient["id"], "p");
        assert_eq!(patient["meta"]["security"][0]["code"], "REDACTED");
    }

    #[test]
    fn labels_without_removal() {
        let mut obs = json!({"resourceType": "Observation", "meta": {"versionId": "1"}});
        let label = ("http://terminology.hl7.org/CodeSystem/v3-ActReason".into(), "ETREAT".into(), None);
        assert!(!apply(obs.as_object_mut().unwrap(), &[], &[label]));
        assert_eq!(
            obs["meta"]["security"],
            json!([{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "ETREAT"}])
        );
        assert_eq!(obs["meta"]["versionId"], "1");
    }
}
