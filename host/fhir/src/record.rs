//! A stored version of a resource as the model sees it: what the store reads back and what
//! Bundles, the access predicate and the service layer work on.

/// One stored version of a resource, as read back from the database.
#[derive(Debug, Clone)]
pub struct VersionRecord {
    pub res_type: String,
    pub id: String,
    pub version: i64,
    pub last_updated_us: i64,
    pub deleted: bool,
    /// The resource JSON exactly as it is served; `None` for a deletion.
    pub body: Option<Vec<u8>>,
    /// The data key the version is sealed under (`patient/<id>` for a patient's compartment,
    /// see `crate::compartment`); `None` for a deletion.
    pub key_id: Option<String>,
}

impl VersionRecord {
    /// The id of the patient whose compartment holds this version, if any.
    pub fn patient(&self) -> Option<&str> {
        self.key_id.as_deref().and_then(|k| k.strip_prefix("patient/"))
    }
}
