//! `hearth compliance report` and `hearth compliance verify`: the signed evidence pack
//! (docs/compliance.md).

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use indicatif::{ProgressBar, ProgressStyle};

use super::{CommandError, audit_cli_action};
use crate::audit::AuditSigner;
use crate::compliance::{Period, Status, evidence_for, pack};
use crate::config::{ServeArgs, StorageSettings};
use crate::serve::open_store;

/// `hearth compliance report --out DIR`: gathers the evidence from the database (offline, with
/// the keyring), writes the signed pack into DIR and prints the findings.
pub async fn report(args: ServeArgs, out: &Path, since: Option<&str>, until: Option<&str>) -> Result<(), CommandError> {
    let settings = args.resolve().map_err(|e| CommandError::Usage(e.to_string()))?;
    let period = Period::parse(since, until).map_err(|e| CommandError::Usage(format!("--{e}")))?;
    let store = open_store(&settings.storage).await?;
    let signer = AuditSigner::load(&settings.storage.audit_key, false)?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("compliance evidence: {msg}").expect("valid template"));
    bar.enable_steady_tick(Duration::from_millis(200));
    let progress = |stage: &str, done: u64| {
        bar.set_message(match stage {
            "audit" => format!("verifying the audit chain ({done} entries)"),
            "access" => format!("reviewing access (through entry {done})"),
            "versions" => format!("opening every stored version ({done})"),
            other => format!("{other} ({done})"),
        });
    };
    let evidence = evidence_for(&store, &settings, period, &signer, &progress)
        .await
        .map_err(|e| CommandError::Usage(e.to_string()));
    bar.finish_and_clear();
    let evidence = evidence?;
    let files = pack::PackFiles::sign(&evidence, &signer);
    files
        .write_to(out)
        .map_err(|e| CommandError::Usage(format!("cannot write the pack into {}: {e}", out.display())))?;
    audit_cli_action(&store, "compliance-report", None, None).await?;
    store.close().await;
    for finding in &evidence.findings {
        println!("{:<4} {:<24} {}", finding.status.as_str(), finding.id, finding.summary);
    }
    let fails = evidence.findings.iter().filter(|f| f.status == Status::Fail).count();
    let warns = evidence.findings.iter().filter(|f| f.status == Status::Warn).count();
    println!(
        "evidence pack written to {} ({} findings: {fails} fail, {warns} warn), signed by audit key {} (public key {})",
        out.display(),
        evidence.findings.len(),
        signer.key_id(),
        base64::engine::general_purpose::STANDARD.encode(signer.public_key())
    );
    println!("check it with: hearth compliance verify {}", out.display());
    if fails > 0 {
        let failed: Vec<&str> =
            evidence.findings.iter().filter(|f| f.status == Status::Fail).map(|f| f.id.as_str()).collect();
        return Err(CommandError::Usage(format!(
            "{fails} findings fail ({}): the pack records them; act on each as its summary says",
            failed.join(", ")
        )));
    }
    Ok(())
}

/// `hearth compliance verify DIR`: the signature against the audit key (from the keyring, or
/// `--public-key`), what the pack re-derives from itself, and (unless `--offline`) the audit
/// figures re-derived from the database. Fails on any mismatch.
pub async fn verify(
    storage: Option<StorageSettings>,
    dir: &Path,
    public_key: Option<&str>,
) -> Result<(), CommandError> {
    let trusted = match public_key {
        Some(value) => {
            let text = match std::fs::read_to_string(value) {
                Ok(text) => text,
                Err(_) => value.to_owned(),
            };
            base64::engine::general_purpose::STANDARD.decode(text.trim()).map_err(|_| {
                CommandError::Usage("--public-key takes the audit key's public key in base64 (or a file holding it), as `hearth compliance report` prints it".to_owned())
            })?
        }
        None => {
            let settings = storage.as_ref().ok_or_else(|| {
                CommandError::Usage("--offline needs --public-key: the key the pack must be signed by".to_owned())
            })?;
            AuditSigner::load(&settings.audit_key, false)?.public_key()
        }
    };
    let mut verification = pack::verify_pack(dir, &trusted);
    if let (Some(settings), Some(evidence)) = (&storage, &verification.evidence) {
        let store = open_store(settings).await?;
        let checks = pack::verify_against(&store, evidence, &trusted).await;
        store.close().await;
        verification.checks.extend(checks?);
    }
    for check in &verification.checks {
        println!("{} {}: {}", if check.ok { "ok  " } else { "FAIL" }, check.what, check.detail);
    }
    if verification.passed() {
        println!("the evidence pack in {} verifies", dir.display());
        Ok(())
    } else {
        let failed = verification.checks.iter().filter(|c| !c.ok).count();
        Err(CommandError::Usage(format!(
            "the evidence pack in {} does not verify ({failed} checks failed): do not rely on it; make a new one with `hearth compliance report`",
            dir.display()
        )))
    }
}
