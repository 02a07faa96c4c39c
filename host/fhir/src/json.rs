//! Strict JSON parsing for request bodies: like `serde_json`, but an object with the same key
//! twice is an error. FHIR forbids duplicate keys, and accepting them would let two readers of
//! one body (this server, a policy plugin, a downstream system) see different values.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

/// Parses `bytes` as JSON, refusing duplicate object keys (and anything serde_json refuses:
/// invalid UTF-8, nesting deeper than 128, numbers out of range).
pub fn parse_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    let mut deserializer = serde_json::Deserializer::from_slice(bytes);
    let value = StrictValue.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct StrictValue;

impl<'de> DeserializeSeed<'de> for StrictValue {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }

    fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
        Ok(Value::from(v))
    }

    fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
        serde_json::Number::from_f64(v).map(Value::Number).ok_or_else(|| E::custom("number out of range"))
    }

    fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }

    fn visit_string<E: Error>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }

    fn visit_unit<E: Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(StrictValue)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if object.is_empty() && key == NUMBER_TOKEN {
                // serde_json (arbitrary_precision) hands a number over as a one-entry map of
                // its text, which is kept as written.
                let text: String = map.next_value()?;
                return number(&text).map(Value::Number).map_err(A::Error::custom);
            }
            if object.contains_key(&key) {
                return Err(A::Error::custom(format_args!("duplicate key \"{}\"", printable(&key))));
            }
            let value = map.next_value_seed(StrictValue)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// How serde_json with `arbitrary_precision` (which Hearth enables, so that a FHIR decimal
/// keeps its precision: `1.50` stays `1.50`) presents a number to a visitor.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

/// A number as written, refused when no finite 64-bit float holds its magnitude (FHIR's
/// decimal is bounded the same way in every peer server).
fn number(text: &str) -> Result<serde_json::Number, String> {
    let magnitude: f64 = text.parse().map_err(|_| format!("{text:.32} is not a number"))?;
    if !magnitude.is_finite() {
        return Err("number out of range".into());
    }
    text.parse().map_err(|e: serde_json::Error| e.to_string())
}

/// Keys are echoed in errors; keep them short and plain.
fn printable(key: &str) -> String {
    key.chars().take(64).filter(|c| c.is_ascii_alphanumeric() || *c == '_').collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_values_as_serde_json() {
        let text = br#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":18446744073709551615}"#;
        assert_eq!(parse_strict(text).unwrap(), serde_json::from_slice::<Value>(text).unwrap());
    }

    #[test]
    fn duplicate_keys_are_refused_at_any_depth() {
        assert!(parse_strict(br#"{"id":"a","id":"b"}"#).unwrap_err().to_string().contains("duplicate key \"id\""));
        assert!(parse_strict(br#"{"x":[{"k":1,"k":2}]}"#).is_err());
        assert!(parse_strict(br#"{"k":1,"K":2}"#).is_ok(), "keys are case-sensitive");
    }

    #[test]
    fn numbers_keep_their_precision() {
        let text =
            br#"{"value":1.50,"big":9.999999999999e+75,"exp":1e-7,"int":-0,"huge":123456789012345678901234567890}"#;
        let value = parse_strict(text).unwrap();
        assert_eq!(serde_json::to_vec(&value).unwrap(), text.to_vec(), "re-serialised as written");
        assert_eq!(value["value"].as_f64(), Some(1.5));
        assert_eq!(parse_strict(&serde_json::to_vec(&value).unwrap()).unwrap(), value);
    }

    #[test]
    fn other_hostile_input_is_refused() {
        let deep = "[".repeat(200) + &"]".repeat(200);
        assert!(parse_strict(deep.as_bytes()).is_err(), "nesting beyond 128");
        assert!(parse_strict(b"{\"n\":1e400}").is_err(), "number out of range");
        assert!(parse_strict(b"{\"n\":-1e400}").is_err(), "number out of range");
        assert!(parse_strict(b"[1e400]").is_err(), "number out of range");
        assert!(parse_strict(b"{\"a\":1} trailing").is_err());
        assert!(parse_strict(&[b'"', 0xff, b'"']).is_err(), "invalid UTF-8");
    }
}
