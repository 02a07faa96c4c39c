//! What an answer disclosed, for its audit entry: the `Type/id` of every resource it returned
//! and the patients whose compartments those resources are in. It travels to the audit layer
//! as a response extension.

use std::collections::BTreeSet;

use serde_json::{Map, Value};

use crate::store::VersionRecord;

#[derive(Debug, Clone, Default)]
pub struct Disclosed {
    pub ids: Vec<String>,
    pub patients: BTreeSet<String>,
}

impl Disclosed {
    /// Notes a returned record.
    pub fn add(&mut self, record: &VersionRecord) {
        self.ids.push(format!("{}/{}", record.res_type, record.id));
        if let Some(patient) = record.patient() {
            self.patients.insert(patient.to_owned());
        }
    }

    /// Notes a resource written or returned without its stored record at hand: its compartment
    /// is read from `content` when there is some.
    pub fn add_written(&mut self, res_type: &str, id: &str, content: Option<&Map<String, Value>>) {
        self.ids.push(format!("{res_type}/{id}"));
        if let Some(content) = content
            && let Some(patient) = crate::fhir::compartment::data_key_id(res_type, id, content).strip_prefix("patient/")
        {
            self.patients.insert(patient.to_owned());
        }
    }

    /// Everything `other` noted, after this.
    pub fn extend(&mut self, other: Disclosed) {
        self.ids.extend(other.ids);
        self.patients.extend(other.patients);
    }

    /// Only the patient of `record` (a single-resource answer, whose id the audit entry names
    /// already).
    pub fn patient_of(record: &VersionRecord) -> Disclosed {
        Disclosed { ids: Vec::new(), patients: record.patient().map(str::to_owned).into_iter().collect() }
    }

    /// Only the patient whose compartment `key_id` is (a written resource).
    pub fn compartment(key_id: &str) -> Disclosed {
        Disclosed {
            ids: Vec::new(),
            patients: key_id.strip_prefix("patient/").map(str::to_owned).into_iter().collect(),
        }
    }
}
