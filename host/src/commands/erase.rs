//! `hearth erase --patient ID`: crypto-shredding one patient's records.

use super::{CommandError, audit_cli_action};
use crate::config::StorageSettings;
use crate::fhir::compartment::patient_key_id;
use crate::fhir::resource::is_valid_id;
use crate::serve::open_store;

/// `hearth erase --patient ID`: crypto-shreds one patient's records.
pub async fn patient(settings: &StorageSettings, patient_id: &str, reason: &str) -> Result<(), CommandError> {
    if !is_valid_id(patient_id) {
        return Err(CommandError::Usage("the patient id must be 1-64 characters of A-Z, a-z, 0-9, '-' and '.'".into()));
    }
    if reason.trim().is_empty() {
        return Err(CommandError::Usage(
            "state the reason for the erasure with --reason (no patient details in it)".into(),
        ));
    }
    let store = open_store(settings).await?;
    let destroyed = store.destroy_data_key(&patient_key_id(patient_id), reason.trim()).await?;
    if destroyed {
        audit_cli_action(&store, "erasure", Some("Patient"), Some(patient_id)).await?;
    }
    store.close().await;
    if destroyed {
        println!("erased Patient/{patient_id}: its data key is destroyed; every version of its records is unreadable.");
        Ok(())
    } else {
        Err(CommandError::Usage(format!(
            "Patient/{patient_id} has no records with a live key (unknown id, or erased before); nothing was changed"
        )))
    }
}
