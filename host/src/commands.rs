//! The maintenance commands: `hearth keys init|rotate|status` and `hearth erase`. They work
//! on the database directly and are safe to run while servers are serving it.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::audit::{AuditEvent, AuditSigner, Outcome, verify_chain};
use crate::config::StorageSettings;
use crate::crypto::{FileKeyProvider, KeyError, KeyProvider};
use crate::fhir::compartment::patient_key_id;
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::fhir::resource::is_valid_id;
use crate::serve::{StartError, open_store};
use crate::store::Store;

/// Why a command failed; the message says what to do next.
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("900"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("1h"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_duration("2d"), None);
        assert_eq!(parse_duration("m"), None);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Start(#[from] StartError),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(transparent)]
    Keys(#[from] KeyError),
    #[error("audit checkpoint key: {0}")]
    AuditKey(#[from] crate::audit::SignerError),
    #[error("{0}")]
    Usage(String),
}

/// `hearth token issue`: a development token signed by the dev issuer key in the data
/// directory (created if missing). Only servers started with --dev on that data directory
/// accept it.
pub fn token_issue(
    data_dir: &Path,
    subject: &str,
    scope: &str,
    ttl: &str,
    patient: Option<&str>,
    roles: &[String],
) -> Result<String, CommandError> {
    let ttl = parse_duration(ttl)
        .ok_or_else(|| CommandError::Usage(format!("--ttl must look like 900s, 15m or 1h (got {ttl:?})")))?;
    let key = crate::auth::token::DevSigningKey::load_or_create(&crate::serve::dev_token_key_path(data_dir))
        .map_err(|e| CommandError::Usage(e.to_string()))?;
    if let Some(patient) = patient
        && !is_valid_id(patient)
    {
        return Err(CommandError::Usage("--patient must be a Patient resource id".into()));
    }
    Ok(key.issue(subject, scope, ttl, patient, roles))
}

/// Parses `900s`, `15m`, `1h` or plain seconds.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let number: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

/// Appends an audit entry for an operation done from the command line, naming the operating
/// system user who ran it.
async fn audit_cli_action(
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

/// `hearth audit verify`: walks the chain and the signed checkpoints; fails on the first break.
pub async fn audit_verify(settings: &StorageSettings) -> Result<(), CommandError> {
    let store = open_store(settings).await?;
    let signer = AuditSigner::load(&settings.audit_key, false)?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("verifying the audit chain: {pos} entries ({per_sec})").expect("valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let report =
        verify_chain(&store, &[signer.public_key()], &|done| bar.set_position(u64::try_from(done).unwrap_or(0))).await;
    bar.finish_and_clear();
    let report = report?;
    store.close().await;
    let checkpoint = report.last_good_checkpoint.map_or("none".to_owned(), |seq| format!("entry {seq}"));
    match report.problem {
        None => {
            println!(
                "audit chain intact: {} entries, {} signed checkpoints (last at {checkpoint}), key {}",
                report.entries,
                report.checkpoints,
                signer.key_id()
            );
            Ok(())
        }
        Some(problem) => Err(CommandError::Usage(format!(
            "AUDIT CHAIN BROKEN: {problem}. Entries before it verified ({} entries; last good checkpoint: {checkpoint}). \
             Preserve the database as evidence and restore the audit tables from a backup.",
            report.entries
        ))),
    }
}

/// `hearth audit export`: every entry as NDJSON on standard output, in chain order.
pub async fn audit_export(settings: &StorageSettings) -> Result<(), CommandError> {
    use std::io::Write;
    let store = open_store(settings).await?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let mut after = 0;
    loop {
        let page = store.audit_entries(after, 2000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        for entry in &page {
            writeln!(out, "{}", entry.entry).map_err(|e| CommandError::Usage(format!("cannot write: {e}")))?;
        }
    }
    out.flush().map_err(|e| CommandError::Usage(format!("cannot write: {e}")))?;
    store.close().await;
    Ok(())
}

/// `hearth config check`: loads everything the configuration names, without starting, and
/// says exactly what is wrong.
pub fn config_check(args: crate::config::ServeArgs) -> Result<(), CommandError> {
    use crate::config::TlsSource;
    let settings = match args.resolve() {
        Ok(settings) => settings,
        Err(error) => {
            println!("FAIL configuration: {error}");
            return Err(CommandError::Usage("the configuration is invalid".into()));
        }
    };
    let mut failures = 0;
    let mut report = |ok: bool, what: &str, detail: String| {
        println!("{} {what}: {detail}", if ok { "ok  " } else { "FAIL" });
        failures += usize::from(!ok);
    };
    report(true, "configuration", "parses; no unknown keys".into());
    let provider = crate::serve::key_provider(&settings.storage);
    match provider.load() {
        Ok(ring) => report(
            true,
            "key-encryption keys",
            format!("versions {:?} in {}", ring.versions().collect::<Vec<_>>(), provider.describe()),
        ),
        Err(KeyError::NoKeys(_)) if settings.storage.dev => {
            report(true, "key-encryption keys", "none yet; dev mode generates one on start".into())
        }
        Err(error) => report(false, "key-encryption keys", error.to_string()),
    }
    match AuditSigner::load(&settings.storage.audit_key, false) {
        Ok(signer) => report(true, "audit checkpoint key", format!("key {}", signer.key_id())),
        Err(crate::audit::SignerError::Read { .. }) if !settings.storage.audit_key.exists() => report(
            true,
            "audit checkpoint key",
            format!("{} will be created on first start", settings.storage.audit_key.display()),
        ),
        Err(error) => report(false, "audit checkpoint key", error.to_string()),
    }
    match &settings.tls {
        TlsSource::DevGenerated => report(true, "TLS", "development certificate (dev mode only)".into()),
        TlsSource::Files { cert, key } => {
            match crate::tls::server_config(cert, key, settings.client_ca.as_deref()) {
                Ok(_) => report(true, "TLS certificate and key", "load and match".into()),
                Err(error) => report(false, "TLS certificate and key", error.to_string()),
            }
            match crate::tls::issued_by_dev_ca(cert) {
                Ok(true) if !settings.storage.dev && !settings.allow_dev_certificate => {
                    report(false, "TLS certificate issuer", "a Hearth development CA; refused outside dev mode".into())
                }
                Ok(_) => {}
                Err(error) => report(false, "TLS certificate issuer", error.to_string()),
            }
            match crate::tls::certificate_validity(cert) {
                Ok((true, until)) => report(true, "TLS certificate validity", format!("valid until {until}")),
                Ok((false, until)) => report(
                    false,
                    "TLS certificate validity",
                    format!("expired or not yet valid (not after {until}); renew it"),
                ),
                Err(error) => report(false, "TLS certificate validity", error.to_string()),
            }
        }
    }
    match crate::serve::token_verifier(&settings) {
        Ok(verifier) => {
            let issuers: Vec<&str> = verifier.issuers().map(|i| i.iss.as_str()).collect();
            report(true, "token issuers", format!("{issuers:?}"));
        }
        Err(error) => report(false, "token issuers", error.to_string()),
    }
    if failures == 0 {
        println!("configuration is usable");
        Ok(())
    } else {
        Err(CommandError::Usage(format!("{failures} problem(s) found; see the FAIL lines above")))
    }
}

/// `hearth migrate`: applies pending schema migrations (forward-only; back up first).
pub async fn migrate(settings: &StorageSettings) -> Result<(), CommandError> {
    let settings = StorageSettings { migrate: true, ..settings.clone() };
    let store = open_store(&settings).await?;
    let status = store.schema_status().await?;
    store.close().await;
    println!("schema is current: migrations {:?} applied", status.applied);
    Ok(())
}

/// `hearth keys init`: creates the first key-encryption key in a keyring directory.
pub fn keys_init(keyring: &Path) -> Result<(), CommandError> {
    let provider = FileKeyProvider::new(keyring);
    match provider.load() {
        Ok(ring) => Err(CommandError::Usage(format!(
            "{} already holds KEK version {}; use `hearth keys rotate` to add a new one",
            keyring.display(),
            ring.current().0
        ))),
        Err(KeyError::NoKeys(_)) => {
            provider.create_version(1)?;
            println!(
                "created {} (mode 0600). Back it up apart from the database: without it the data is unreadable.",
                keyring.join("kek-v1.key").display()
            );
            Ok(())
        }
        Err(other) => Err(other.into()),
    }
}

/// `hearth keys rotate`: a new KEK version, every data key re-wrapped under it while servers
/// keep serving; re-run to resume after an interruption.
pub async fn keys_rotate(settings: &StorageSettings) -> Result<(), CommandError> {
    let store = open_store(settings).await?;
    let bar = ProgressBar::new(0);
    bar.set_style(
        ProgressStyle::with_template("re-wrapping data keys {bar:40} {pos}/{len} ({per_sec}, eta {eta})")
            .expect("valid progress template"),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let report = store
        .rotate_kek(&|done, total| {
            bar.set_length(total);
            bar.set_position(done);
        })
        .await;
    bar.finish_and_clear();
    let report = report?;
    audit_cli_action(&store, "key-rotation", None, None).await?;
    store.close().await;
    let verb = if report.resumed { "finished an interrupted rotation to" } else { "rotated to" };
    println!("{verb} KEK version {}: re-wrapped {} data keys.", report.target_version, report.rewrapped);
    if report.retired.is_empty() {
        println!("no older KEK version was in use.");
    } else {
        let retired: Vec<String> = report.retired.iter().map(|v| format!("v{v}")).collect();
        println!(
            "retired KEK {}: no data key uses them any more. Keep them with your backups until no backup \
             older than now needs them, then destroy them.",
            retired.join(", ")
        );
    }
    Ok(())
}

/// `hearth keys status`: KEK versions and how many data keys each wraps.
pub async fn keys_status(settings: &StorageSettings) -> Result<(), CommandError> {
    let store = open_store(settings).await?;
    let status = store.key_status().await?;
    store.close().await;
    println!("KEK version  data keys  state");
    for (version, count, retired) in &status.kek_versions {
        println!("v{version:<11} {count:<10} {}", if *retired { "retired" } else { "in use" });
    }
    println!("destroyed data keys (erasures): {} ({} recorded)", status.destroyed_data_keys, status.erasures);
    Ok(())
}

/// `hearth erase --patient ID`: crypto-shreds one patient's records.
pub async fn erase_patient(settings: &StorageSettings, patient_id: &str, reason: &str) -> Result<(), CommandError> {
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
