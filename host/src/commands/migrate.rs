//! `hearth migrate`.

use super::CommandError;
use crate::config::StorageSettings;
use crate::serve::open_store;

/// `hearth migrate`: applies pending schema migrations (forward-only; back up first).
pub async fn run(settings: &StorageSettings) -> Result<(), CommandError> {
    let settings = StorageSettings { migrate: true, ..settings.clone() };
    let store = open_store(&settings).await?;
    let status = store.schema_status().await?;
    store.close().await;
    println!("schema is current: migrations {:?} applied", status.applied);
    Ok(())
}
