//! `hearth backup`, `hearth restore` and `hearth verify`: online consistent backups with a
//! checksummed manifest, restore onto an empty database, and a check that every version
//! decrypts, the audit chain verifies and the counts match the manifest.
//!
//! Backups hold only ciphertext and wrapped keys; the keyring (KEKs, audit key) is backed up
//! separately, and a restore needs it.

use std::io::Read;
use std::path::Path;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::audit::{AuditSigner, verify_chain};
use crate::commands::CommandError;
use crate::config::StorageSettings;
use crate::fhir::instant::{now_us, to_fhir_instant};
use crate::serve::open_store;
use crate::store::{Backend, Counts, KeyVault, Store, StoreOptions};

const FORMAT: &str = "hearth-backup/1";

#[derive(Debug, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    pub created: String,
    pub backend: String,
    pub file: String,
    pub sha256: String,
    pub bytes: u64,
    pub schema: Vec<i64>,
    pub counts: Counts,
    /// KEK versions that wrap the data keys in this backup: keep them as long as the backup.
    pub kek_versions: Vec<i64>,
}

fn usage(message: impl Into<String>) -> CommandError {
    CommandError::Usage(message.into())
}

fn spinner(message: &'static str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_style(ProgressStyle::with_template("{spinner} {msg} {pos} ({elapsed})").expect("valid template"));
    bar.set_message(message);
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

/// `hearth backup DEST`: DEST is a new directory.
pub async fn backup(settings: &StorageSettings, dest: &Path) -> Result<(), CommandError> {
    if dest.exists() {
        return Err(usage(format!("{} already exists; give a new directory", dest.display())));
    }
    std::fs::create_dir_all(dest).map_err(|e| usage(format!("cannot create {}: {e}", dest.display())))?;
    let store = open_store(settings).await?;
    let backend = store.backend();
    let file = match backend {
        Backend::Sqlite => "hearth.db",
        Backend::Postgres => "hearth.pgdump",
    };
    let bar = spinner("taking a consistent snapshot");
    let counts = store.backup_to(&dest.join(file), &settings.database_url).await;
    bar.finish_and_clear();
    let counts = counts?;
    let schema = store.schema_status().await?.applied;
    let kek_versions =
        store.key_status().await?.kek_versions.iter().filter(|(_, live, _)| *live > 0).map(|(v, _, _)| *v).collect();
    store.close().await;
    let (sha256, bytes) = checksum(&dest.join(file))?;
    let manifest = Manifest {
        format: FORMAT.into(),
        created: to_fhir_instant(now_us()),
        backend: backend.name().into(),
        file: file.into(),
        sha256,
        bytes,
        schema,
        counts,
        kek_versions,
    };
    let text = serde_json::to_vec_pretty(&manifest).expect("manifest serialises");
    std::fs::write(dest.join("manifest.json"), text).map_err(|e| usage(format!("cannot write the manifest: {e}")))?;
    println!(
        "backed up {} resources ({} versions, {} audit entries) to {}; it needs KEK versions {:?} from the keyring, which is not in the backup",
        manifest.counts.resources,
        manifest.counts.versions,
        manifest.counts.audit_entries,
        dest.display(),
        manifest.kek_versions
    );
    Ok(())
}

fn read_manifest(src: &Path) -> Result<Manifest, CommandError> {
    let path = src.join("manifest.json");
    let text = std::fs::read(&path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let manifest: Manifest = serde_json::from_slice(&text)
        .map_err(|e| usage(format!("{} is not a Hearth manifest: {e}", path.display())))?;
    if manifest.format != FORMAT {
        return Err(usage(format!("unknown backup format {}", manifest.format)));
    }
    Ok(manifest)
}

/// `hearth restore SRC`: onto a database that has no Hearth tables yet.
pub async fn restore(settings: &StorageSettings, src: &Path) -> Result<(), CommandError> {
    let manifest = read_manifest(src)?;
    let file = src.join(&manifest.file);
    let (sha256, _) = checksum(&file)?;
    if sha256 != manifest.sha256 {
        return Err(usage(format!("{} does not match its manifest checksum: the backup is damaged", file.display())));
    }
    let vault = std::sync::Arc::new(KeyVault::new(crate::serve::key_provider(settings))?);
    let store = Store::connect(&settings.database_url, &StoreOptions::default(), vault).await?;
    if store.backend().name() != manifest.backend {
        return Err(usage(format!(
            "this backup is of a {} database; the target is {}",
            manifest.backend,
            store.backend().name()
        )));
    }
    if !store.is_empty().await? {
        return Err(usage("the target database already holds Hearth data; restore onto an empty one"));
    }
    let bar = spinner("restoring");
    let result = match store.backend() {
        Backend::Sqlite => {
            store.close().await;
            let target = crate::store::sqlite_path(&settings.database_url);
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", target.display()));
            }
            std::fs::copy(&file, &target)
                .map(|_| ())
                .map_err(|e| usage(format!("cannot write {}: {e}", target.display())))
        }
        Backend::Postgres => {
            store.close().await;
            let output = tokio::process::Command::new("pg_restore")
                .args(["--no-owner", "--no-privileges", "--exit-on-error", "--dbname", &settings.database_url])
                .arg(&file)
                .output()
                .await
                .map_err(|e| usage(format!("cannot run pg_restore (install the PostgreSQL client tools): {e}")))?;
            if output.status.success() {
                Ok(())
            } else {
                Err(usage(format!("pg_restore failed: {}", String::from_utf8_lossy(&output.stderr).trim())))
            }
        }
    };
    bar.finish_and_clear();
    result?;
    println!("restored {}; now run `hearth verify --manifest {}`", manifest.file, src.join("manifest.json").display());
    Ok(())
}

/// `hearth verify [--manifest FILE]`.
pub async fn verify(settings: &StorageSettings, manifest: Option<&Path>) -> Result<(), CommandError> {
    let manifest = manifest.map(|path| read_manifest(path.parent().unwrap_or(Path::new(".")))).transpose()?;
    let store = open_store(settings).await?;
    let total = store.counts().await?;
    let bar = ProgressBar::new(u64::try_from(total.versions).unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("opening every stored version {bar:40} {pos}/{len}").expect("valid template"),
    );
    let opened = store.open_every_version(&|done| bar.set_position(done)).await;
    bar.finish_and_clear();
    let (opened, erased, failed) = opened?;
    let signer = AuditSigner::load(&settings.audit_key, false)?;
    let chain = verify_chain(&store, &[signer.public_key()], &|_| {}).await?;
    store.close().await;

    let mut problems = Vec::new();
    println!("versions: {opened} opened, {erased} erased (crypto-shredded), {} failed", failed.len());
    for (res_type, id, version) in failed.iter().take(20) {
        problems.push(format!("{res_type}/{id} version {version} does not decrypt"));
    }
    match &chain.problem {
        None => println!("audit chain: intact, {} entries, {} checkpoints", chain.entries, chain.checkpoints),
        Some(problem) => problems.push(format!("audit chain: {problem}")),
    }
    if let Some(manifest) = &manifest {
        if manifest.counts == total {
            println!(
                "counts match the manifest: {} resources, {} versions, {} audit entries",
                total.resources, total.versions, total.audit_entries
            );
        } else {
            problems
                .push(format!("counts differ from the manifest: backup {:?}, database {:?}", manifest.counts, total));
        }
    }
    if problems.is_empty() {
        println!("verified");
        Ok(())
    } else {
        for problem in &problems {
            println!("FAIL {problem}");
        }
        Err(usage(format!("{} problem(s) found", problems.len())))
    }
}

fn checksum(path: &Path) -> Result<(String, u64), CommandError> {
    let mut file = std::fs::File::open(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = file.read(&mut buffer).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        bytes += n as u64;
    }
    Ok((hasher.finalize().iter().map(|b| format!("{b:02x}")).collect(), bytes))
}
