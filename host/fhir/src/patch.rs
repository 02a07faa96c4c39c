//! JSON Patch (RFC 6902) for the FHIR `patch` interaction: add, remove, replace, move, copy
//! and test, applied all-or-nothing to a copy of the resource.

use serde_json::Value;

/// Applies `patch` (a JSON array of operations) to `document`. On error nothing is changed and
/// the message names the failing operation.
pub fn apply(document: &mut Value, patch: &Value) -> Result<(), String> {
    let operations = patch.as_array().ok_or("a JSON Patch document is an array of operations")?;
    let mut working = document.clone();
    for (index, operation) in operations.iter().enumerate() {
        apply_one(&mut working, operation).map_err(|e| format!("operation {index}: {e}"))?;
    }
    *document = working;
    Ok(())
}

fn apply_one(document: &mut Value, operation: &Value) -> Result<(), String> {
    let op = operation.get("op").and_then(Value::as_str).ok_or("missing \"op\"")?;
    let path = operation.get("path").and_then(Value::as_str).ok_or("missing \"path\"")?;
    let value = || operation.get("value").cloned().ok_or_else(|| format!("\"{op}\" needs a \"value\""));
    let from = || operation.get("from").and_then(Value::as_str).ok_or_else(|| format!("\"{op}\" needs \"from\""));
    match op {
        "add" => add(document, path, value()?),
        "remove" => remove(document, path).map(|_| ()),
        "replace" => {
            let target = document.pointer_mut(&checked(path)?).ok_or_else(|| format!("nothing at {path}"))?;
            *target = value()?;
            Ok(())
        }
        "move" => {
            let from = from()?;
            if path.starts_with(&format!("{from}/")) {
                return Err("cannot move a value into itself".into());
            }
            let moved = remove(document, from)?;
            add(document, path, moved)
        }
        "copy" => {
            let copied = document.pointer(&checked(from()?)?).cloned().ok_or("nothing at \"from\"")?;
            add(document, path, copied)
        }
        "test" => {
            let actual = document.pointer(&checked(path)?).ok_or_else(|| format!("nothing at {path}"))?;
            if *actual == value()? { Ok(()) } else { Err(format!("test failed at {path}")) }
        }
        other => Err(format!("unknown op \"{other}\"")),
    }
}

/// A JSON Pointer must be empty or start with `/`.
fn checked(path: &str) -> Result<String, String> {
    if path.is_empty() || path.starts_with('/') { Ok(path.to_owned()) } else { Err(format!("bad path {path}")) }
}

/// Splits a pointer into its parent pointer and last token (unescaped).
fn parent_and_key(path: &str) -> Result<(&str, String), String> {
    let path = checked(path).map(|_| path)?;
    let at = path.rfind('/').ok_or("the whole document cannot be replaced this way")?;
    Ok((&path[..at], path[at + 1..].replace("~1", "/").replace("~0", "~")))
}

fn add(document: &mut Value, path: &str, value: Value) -> Result<(), String> {
    let (parent, key) = parent_and_key(path)?;
    match document.pointer_mut(parent).ok_or_else(|| format!("no parent for {path}"))? {
        Value::Object(object) => {
            object.insert(key, value);
            Ok(())
        }
        Value::Array(items) => {
            let at = if key == "-" { items.len() } else { index(&key, items.len() + 1)? };
            items.insert(at, value);
            Ok(())
        }
        _ => Err(format!("cannot add below a scalar at {path}")),
    }
}

fn remove(document: &mut Value, path: &str) -> Result<Value, String> {
    let (parent, key) = parent_and_key(path)?;
    match document.pointer_mut(parent).ok_or_else(|| format!("nothing at {path}"))? {
        Value::Object(object) => object.remove(&key).ok_or_else(|| format!("nothing at {path}")),
        Value::Array(items) => {
            let at = index(&key, items.len())?;
            Ok(items.remove(at))
        }
        _ => Err(format!("nothing at {path}")),
    }
}

fn index(token: &str, bound: usize) -> Result<usize, String> {
    let at: usize = token.parse().map_err(|_| format!("\"{token}\" is not an array index"))?;
    if token.len() > 1 && token.starts_with('0') || at >= bound {
        return Err(format!("array index {token} is out of range"));
    }
    Ok(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_follow_rfc_6902() {
        let mut doc = json!({"name": [{"given": ["Ann"]}], "active": true});
        let patch = json!([
            {"op": "test", "path": "/active", "value": true},
            {"op": "add", "path": "/name/0/given/-", "value": "Marie"},
            {"op": "replace", "path": "/active", "value": false},
            {"op": "add", "path": "/gender", "value": "female"},
            {"op": "copy", "from": "/gender", "path": "/x~1y"},
            {"op": "move", "from": "/x~1y", "path": "/z"},
            {"op": "remove", "path": "/z"}
        ]);
        apply(&mut doc, &patch).unwrap();
        assert_eq!(doc, json!({"name": [{"given": ["Ann", "Marie"]}], "active": false, "gender": "female"}));
    }

    #[test]
    fn a_failing_operation_changes_nothing() {
        let mut doc = json!({"active": true});
        let patch = json!([{"op": "replace", "path": "/active", "value": false}, {"op": "test", "path": "/active", "value": true}]);
        assert!(apply(&mut doc, &patch).unwrap_err().contains("operation 1"));
        assert_eq!(doc, json!({"active": true}));
        for bad in [
            json!({}),
            json!([{"op": "nope", "path": "/a"}]),
            json!([{"op": "remove", "path": "/missing"}]),
            json!([{"op": "add", "path": "/a/b", "value": 1}]),
            json!([{"op": "remove", "path": "a"}]),
        ] {
            assert!(apply(&mut doc, &bad).is_err(), "{bad}");
        }
    }
}
