//! The subcommands of `hearth` other than `serve`, one module each. The maintenance commands
//! (keys, erase, migrate, audit) work on the database directly and are safe to run while
//! servers are serving it.

pub mod audit;
pub mod backup;
pub mod compliance;
pub mod config;
pub mod erase;
pub mod import;
pub mod keys;
pub mod migrate;
pub mod plugin;
pub mod plugin_new;
pub mod plugin_test;
pub mod token;

use crate::audit::{AuditEvent, Outcome};
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::serve::StartError;
use crate::store::Store;

/// Why a command failed; the message says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Keys(#[from] crate::crypto::KeyError),
    #[error("audit checkpoint key: {0}")]
    AuditKey(#[from] crate::audit::SignerError),
    #[error("{0}")]
    Usage(String),
}

/// Appends an audit entry for an operation done from the command line, naming the operating
/// system user who ran it.
pub(crate) async fn audit_cli_action(
    store: &Store,
    action: &str,
    resource_type: Option<&str>,
    resource_id: Option<&str>,
) -> Result<(), CommandError> {
    let user = std::env::var("SUDO_USER").or_else(|_| std::env::var("USER")).unwrap_or_else(|_| "unknown".into());
    let event = AuditEvent {
        at: to_fhir_instant(now_us()),
        action: action.to_owned(),
        outcome: Outcome::Success,
        status: 200,
        subject: Some(format!("cli:{user}")),
        resource_type: resource_type.map(str::to_owned),
        resource_id: resource_id.map(str::to_owned),
        ..AuditEvent::default()
    };
    store.append_audit(&[&event]).await?;
    Ok(())
}
