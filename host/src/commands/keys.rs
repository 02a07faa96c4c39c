//! `hearth keys init|rotate|status`: key-encryption keys and the data keys they wrap.

use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use super::{CommandError, audit_cli_action};
use crate::config::StorageSettings;
use crate::crypto::{FileKeyProvider, KeyError, KeyProvider};
use crate::serve::open_store;

/// `hearth keys init`: creates the first key-encryption key in a keyring directory.
pub fn init(keyring: &Path) -> Result<(), CommandError> {
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
pub async fn rotate(settings: &StorageSettings) -> Result<(), CommandError> {
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
pub async fn status(settings: &StorageSettings) -> Result<(), CommandError> {
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
