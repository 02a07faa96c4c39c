//! `hearth audit verify` and `hearth audit export`.

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::CommandError;
use crate::audit::{AuditSigner, verify_chain};
use crate::config::StorageSettings;
use crate::serve::open_store;

/// `hearth audit verify`: walks the chain and the signed checkpoints; fails on the first break.
pub async fn verify(settings: &StorageSettings) -> Result<(), CommandError> {
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
pub async fn export(settings: &StorageSettings) -> Result<(), CommandError> {
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
