//! Storage-level behaviour that has no HTTP surface yet, on both databases, through the
//! library's own `open_store` (the same code `hearth serve` runs).

use hearth::config::{KeySource, StorageSettings};
use hearth::crypto::blind_index::Normalization;
use hearth::store::Store;

use crate::harness::{Db, PgDatabase};
use crate::on_both_databases;

on_both_databases!(blind_index_key_is_stable_across_restart_rotation_and_erasure);

struct Opened {
    settings: StorageSettings,
    _dir: tempfile::TempDir,
    _pg: Option<PgDatabase>,
}

fn settings(db: Db) -> Opened {
    let dir = tempfile::tempdir().unwrap();
    let pg = (db == Db::Postgres).then(PgDatabase::create);
    let data_dir = dir.path().join("data");
    let database_url = match &pg {
        Some(pg) => pg.url.clone(),
        None => format!("sqlite://{}", data_dir.join("hearth.db").display()),
    };
    let settings = StorageSettings {
        dev: true,
        migrate: true,
        audit_key: data_dir.join("keys/audit-signing-key.p8"),
        keys: KeySource::Directory(data_dir.join("keys")),
        data_dir,
        database_url,
        db_max_connections: 4,
    };
    Opened { settings, _dir: dir, _pg: pg }
}

async fn open(opened: &Opened) -> Store {
    hearth::serve::open_store(&opened.settings).await.expect("open store")
}

async fn blind_index_key_is_stable_across_restart_rotation_and_erasure(db: Db) {
    let opened = settings(db);
    let store = open(&opened).await;
    let token =
        |key: &hearth::crypto::blind_index::BlindIndexKey| key.token("Patient.family", Normalization::Text, "Müller");
    let first = token(&store.blind_index_key().await.unwrap());
    assert_eq!(token(&store.blind_index_key().await.unwrap()), first, "cached");
    store.close().await;

    let store = open(&opened).await;
    assert_eq!(token(&store.blind_index_key().await.unwrap()), first, "persisted");
    let report = store.rotate_kek(&|_, _| {}).await.unwrap();
    assert!(report.rewrapped >= 1, "the index key is re-wrapped with the data keys");
    store.close().await;

    let store = open(&opened).await;
    assert_eq!(token(&store.blind_index_key().await.unwrap()), first, "same key after rotation");
    assert!(!store.destroy_data_key("patient/nobody", "test").await.unwrap());
    assert_eq!(token(&store.blind_index_key().await.unwrap()), first);
    store.close().await;
}
