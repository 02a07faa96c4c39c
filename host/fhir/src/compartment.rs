//! Which patient compartment a resource belongs to, which decides the data key it is sealed
//! under: all resources of one patient share a key (so erasing the patient is destroying one
//! key), and resources outside any patient compartment share a key per resource type.

use serde_json::Value;

use super::resource::is_valid_id;

/// Elements that, in the R4 resource types which have them, point at the patient a record is
/// about (`Observation.subject`, `AllergyIntolerance.patient`, `Coverage.beneficiary`,
/// `ResearchSubject.individual`, `EnrollmentRequest.candidate`, `Task.for`), in priority order.
const PATIENT_ELEMENTS: &[&str] = &["subject", "patient", "beneficiary", "individual", "candidate", "for"];

/// The data key id for a resource: `patient/<id>` for a Patient and for resources whose
/// subject is a Patient, `type/<Type>` otherwise.
pub fn data_key_id(res_type: &str, id: &str, resource: &serde_json::Map<String, Value>) -> String {
    if res_type == "Patient" {
        return patient_key_id(id);
    }
    PATIENT_ELEMENTS
        .iter()
        .filter_map(|element| resource.get(*element))
        .find_map(patient_of_reference)
        .map_or_else(|| format!("type/{res_type}"), |patient| patient_key_id(&patient))
}

pub fn patient_key_id(patient_id: &str) -> String {
    format!("patient/{patient_id}")
}

/// The patient id a Reference points at: `Patient/123`, `Patient/123/_history/2`, or an
/// absolute URL ending in one of those.
fn patient_of_reference(reference: &Value) -> Option<String> {
    let text = reference.get("reference")?.as_str()?;
    let mut segments: Vec<&str> = text.split('/').collect();
    if segments.len() >= 4 && segments[segments.len() - 2] == "_history" {
        segments.truncate(segments.len() - 2);
    }
    match segments.as_slice() {
        [.., "Patient", id] if is_valid_id(id) => Some((*id).to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(res_type: &str, id: &str, resource: Value) -> String {
        data_key_id(res_type, id, resource.as_object().unwrap())
    }

    #[test]
    fn patients_and_their_records_share_a_key() {
        assert_eq!(key("Patient", "p1", json!({})), "patient/p1");
        assert_eq!(key("Observation", "o1", json!({"subject": {"reference": "Patient/p1"}})), "patient/p1");
        assert_eq!(key("AllergyIntolerance", "a", json!({"patient": {"reference": "Patient/p1"}})), "patient/p1");
        assert_eq!(
            key("Coverage", "c", json!({"beneficiary": {"reference": "https://x/fhir/Patient/p1"}})),
            "patient/p1"
        );
        assert_eq!(key("Encounter", "e", json!({"subject": {"reference": "Patient/p1/_history/3"}})), "patient/p1");
        assert_eq!(key("Task", "t", json!({"for": {"reference": "Patient/p1"}})), "patient/p1");
    }

    #[test]
    fn everything_else_gets_a_type_key() {
        assert_eq!(key("Organization", "o", json!({"name": "x"})), "type/Organization");
        assert_eq!(key("Observation", "o", json!({"subject": {"reference": "Group/g"}})), "type/Observation");
        assert_eq!(key("Observation", "o", json!({"subject": {"display": "someone"}})), "type/Observation");
        assert_eq!(key("Observation", "o", json!({"subject": {"reference": "Patient/bad id"}})), "type/Observation");
    }
}
