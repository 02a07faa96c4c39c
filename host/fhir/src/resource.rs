//! The resource envelope: what the server checks and sets on every resource it stores
//! (`resourceType`, `id`, `meta.versionId`, `meta.lastUpdated`), independent of its type.

use serde_json::{Map, Value};

use super::instant::to_fhir_instant;
use super::outcome::{FhirError, IssueType};
use super::resource_types::is_resource_type;

/// The longest id FHIR allows.
pub const MAX_ID_LEN: usize = 64;

/// Whether `id` matches FHIR's id pattern `[A-Za-z0-9\-\.]{1,64}`.
pub fn is_valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= MAX_ID_LEN && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
}

/// Checks a resource type named in a URL.
pub fn check_type_name(res_type: &str) -> Result<(), FhirError> {
    if res_type == "AuditEvent" {
        // The audit log is served by its own routes (api/audit_events.rs), read-only.
        Err(FhirError::new(
            http::StatusCode::METHOD_NOT_ALLOWED,
            IssueType::NotSupported,
            "AuditEvent resources are this server's audit log: read them with GET /AuditEvent or \
             GET /AuditEvent/{id} (scope admin/audit); they cannot be written, and they are not part of \
             Bundles, system search, history or compartments",
        ))
    } else if is_resource_type(res_type) {
        Ok(())
    } else {
        Err(FhirError::new(
            http::StatusCode::NOT_FOUND,
            IssueType::NotSupported,
            format!("'{}' is not a FHIR R4 resource type served here", printable(res_type)),
        ))
    }
}

/// Checks a resource id named in a URL.
pub fn check_id(id: &str) -> Result<(), FhirError> {
    if is_valid_id(id) {
        Ok(())
    } else {
        Err(FhirError::bad_request(
            IssueType::Value,
            "resource ids must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'",
        ))
    }
}

/// A resource sent by a client, parsed and checked against the URL it was sent to.
#[derive(Debug)]
pub struct IncomingResource {
    fields: Map<String, Value>,
}

impl IncomingResource {
    /// Parses a request body as a JSON object whose `resourceType` is `expected_type`.
    pub fn parse(body: &[u8], expected_type: &str) -> Result<Self, FhirError> {
        let value: Value = super::json::parse_strict(body).map_err(|e| {
            // serde_json's message names a line and column, never the content.
            FhirError::bad_request(IssueType::Structure, format!("the body is not valid JSON: {e}"))
        })?;
        let Value::Object(fields) = value else {
            return Err(FhirError::bad_request(
                IssueType::Structure,
                "the body must be a JSON object (a FHIR resource)",
            ));
        };
        match fields.get("resourceType") {
            Some(Value::String(t)) if t == expected_type => {}
            Some(Value::String(t)) => {
                return Err(FhirError::bad_request(
                    IssueType::Invalid,
                    format!("resourceType '{}' does not match the type in the URL ('{expected_type}')", printable(t)),
                )
                .at("resourceType"));
            }
            Some(_) => {
                return Err(
                    FhirError::bad_request(IssueType::Structure, "resourceType must be a string").at("resourceType")
                );
            }
            None => {
                return Err(
                    FhirError::bad_request(IssueType::Required, "the resource has no resourceType").at("resourceType")
                );
            }
        }
        if let Some(meta) = fields.get("meta")
            && !meta.is_object()
        {
            return Err(FhirError::bad_request(IssueType::Structure, "meta must be a JSON object")
                .at(format!("{expected_type}.meta")));
        }
        let issues = super::validate::validate(expected_type, &fields);
        if !issues.is_empty() {
            return Err(super::validate::invalid(issues));
        }
        Ok(IncomingResource { fields })
    }

    /// For updates: the body's id must be present and equal to the id in the URL.
    pub fn require_id(&self, url_id: &str) -> Result<(), FhirError> {
        let res_type = self.res_type();
        match self.fields.get("id") {
            Some(Value::String(id)) if id == url_id => Ok(()),
            Some(Value::String(_)) => Err(FhirError::bad_request(
                IssueType::Invalid,
                format!("the resource id does not match the id in the URL ('{url_id}')"),
            )
            .at(format!("{res_type}.id"))),
            Some(_) => {
                Err(FhirError::bad_request(IssueType::Structure, "id must be a string").at(format!("{res_type}.id")))
            }
            None => Err(FhirError::bad_request(
                IssueType::Required,
                "an update must carry the resource id, equal to the id in the URL",
            )
            .at(format!("{res_type}.id"))),
        }
    }

    /// The data key this resource is sealed under (see [`super::compartment`]).
    pub fn data_key_id(&self, id: &str) -> String {
        super::compartment::data_key_id(self.res_type(), id, &self.fields)
    }

    /// The resource's elements (for access checks).
    pub fn fields(&self) -> &Map<String, Value> {
        &self.fields
    }

    pub fn res_type(&self) -> &str {
        self.fields.get("resourceType").and_then(Value::as_str).unwrap_or_default()
    }

    /// Renders the resource as stored and served: `resourceType`, `id` and `meta` first, with
    /// the server's `id`, `meta.versionId` and `meta.lastUpdated` replacing whatever the client
    /// sent; every other element kept as the client sent it.
    pub fn stamped(&self, id: &str, version: i64, last_updated_us: i64) -> Vec<u8> {
        let mut meta = match self.fields.get("meta") {
            Some(Value::Object(m)) => m.clone(),
            _ => Map::new(),
        };
        meta.insert("versionId".into(), Value::String(version.to_string()));
        meta.insert("lastUpdated".into(), Value::String(to_fhir_instant(last_updated_us)));
        // Written straight from the client's elements (no copy of the resource is built).
        let stamped = Stamped { res_type: self.res_type(), id, meta: &meta, fields: &self.fields };
        serde_json::to_vec(&stamped).expect("serialising a JSON value cannot fail")
    }
}

/// A resource as [`IncomingResource::stamped`] writes it.
struct Stamped<'a> {
    res_type: &'a str,
    id: &'a str,
    meta: &'a Map<String, Value>,
    fields: &'a Map<String, Value>,
}

impl serde::Serialize for Stamped<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("resourceType", self.res_type)?;
        map.serialize_entry("id", self.id)?;
        map.serialize_entry("meta", self.meta)?;
        for (key, value) in self.fields {
            if !matches!(key.as_str(), "resourceType" | "id" | "meta") {
                map.serialize_entry(key, value)?;
            }
        }
        map.end()
    }
}

/// Echoes client-supplied text into a diagnostic safely: short, and only id-like characters.
fn printable(text: &str) -> String {
    text.chars().take(64).filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_')).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn id_pattern() {
        assert!(is_valid_id("a"));
        assert!(is_valid_id("123-abc.DEF"));
        assert!(is_valid_id(&"x".repeat(64)));
        assert!(!is_valid_id(&"x".repeat(65)));
        assert!(!is_valid_id(""));
        assert!(!is_valid_id("a_b"));
        assert!(!is_valid_id("../etc"));
        assert!(!is_valid_id("a b"));
        assert!(!is_valid_id("é"));
    }

    #[test]
    fn parse_rejects_what_is_not_a_resource_of_the_url_type() {
        assert_eq!(IncomingResource::parse(b"{", "Patient").unwrap_err().code, IssueType::Structure);
        assert_eq!(IncomingResource::parse(b"[]", "Patient").unwrap_err().code, IssueType::Structure);
        assert_eq!(IncomingResource::parse(b"{}", "Patient").unwrap_err().code, IssueType::Required);
        let wrong = IncomingResource::parse(br#"{"resourceType":"Observation"}"#, "Patient").unwrap_err();
        assert_eq!(wrong.code, IssueType::Invalid);
        assert!(IncomingResource::parse(br#"{"resourceType":"Patient","meta":1}"#, "Patient").is_err());
    }

    #[test]
    fn update_needs_matching_id() {
        let r = IncomingResource::parse(br#"{"resourceType":"Patient","id":"a"}"#, "Patient").unwrap();
        assert!(r.require_id("a").is_ok());
        assert!(r.require_id("b").is_err());
        let no_id = IncomingResource::parse(br#"{"resourceType":"Patient"}"#, "Patient").unwrap();
        assert_eq!(no_id.require_id("a").unwrap_err().code, IssueType::Required);
    }

    #[test]
    fn stamping_sets_server_fields_first_and_keeps_the_rest() {
        let r = IncomingResource::parse(
            br#"{"active":true,"resourceType":"Patient","id":"client","meta":{"versionId":"99","tag":[{"code":"t"}]}}"#,
            "Patient",
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&r.stamped("srv", 3, 0)).unwrap();
        let keys: Vec<&String> = out.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["resourceType", "id", "meta", "active"]);
        assert_eq!(out["id"], "srv");
        assert_eq!(out["meta"]["versionId"], "3");
        assert_eq!(out["meta"]["lastUpdated"], "1970-01-01T00:00:00.000000Z");
        assert_eq!(out["meta"]["tag"][0]["code"], "t");
        assert_eq!(out["active"], true);
    }
}
