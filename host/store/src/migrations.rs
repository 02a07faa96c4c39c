//! Schema migrations, embedded in the binary from `migrations/<backend>/` so an installed
//! server needs no files beside it. Versioned and forward-only; the test below keeps this list
//! and the folders in step.

use std::borrow::Cow;

use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::Backend;

/// (version, description, SQLite SQL, PostgreSQL SQL). Both backends share version numbers.
const MIGRATIONS: &[(i64, &str, &str, &str)] = &[
    (
        1,
        "resource versions and data keys",
        include_str!("../../../migrations/sqlite/0001_resource_versions.sql"),
        include_str!("../../../migrations/postgres/0001_resource_versions.sql"),
    ),
    (
        2,
        "audit chain",
        include_str!("../../../migrations/sqlite/0002_audit_chain.sql"),
        include_str!("../../../migrations/postgres/0002_audit_chain.sql"),
    ),
    (
        3,
        "plugins and outbox",
        include_str!("../../../migrations/sqlite/0003_plugins_and_outbox.sql"),
        include_str!("../../../migrations/postgres/0003_plugins_and_outbox.sql"),
    ),
    (
        4,
        "search index",
        include_str!("../../../migrations/sqlite/0004_search_index.sql"),
        include_str!("../../../migrations/postgres/0004_search_index.sql"),
    ),
    (
        5,
        "audit lookups",
        include_str!("../../../migrations/sqlite/0005_audit_lookup.sql"),
        include_str!("../../../migrations/postgres/0005_audit_lookup.sql"),
    ),
    (
        6,
        "bulk export jobs",
        include_str!("../../../migrations/sqlite/0006_bulk_export.sql"),
        include_str!("../../../migrations/postgres/0006_bulk_export.sql"),
    ),
    (
        7,
        "byte-order resource ids",
        include_str!("../../../migrations/sqlite/0007_byte_order_ids.sql"),
        include_str!("../../../migrations/postgres/0007_byte_order_ids.sql"),
    ),
    (
        8,
        "head compartment and erased state",
        include_str!("../../../migrations/sqlite/0008_head_compartment.sql"),
        include_str!("../../../migrations/postgres/0008_head_compartment.sql"),
    ),
    (
        9,
        "plugin signatures",
        include_str!("../../../migrations/sqlite/0009_plugin_signatures.sql"),
        include_str!("../../../migrations/postgres/0009_plugin_signatures.sql"),
    ),
    (
        10,
        "subscription owners",
        include_str!("../../../migrations/sqlite/0010_subscription_owner.sql"),
        include_str!("../../../migrations/postgres/0010_subscription_owner.sql"),
    ),
];

pub fn migrator(backend: Backend) -> Migrator {
    let migrations = MIGRATIONS
        .iter()
        .map(|&(version, description, sqlite, postgres)| {
            let sql = match backend {
                Backend::Sqlite => sqlite,
                Backend::Postgres => postgres,
            };
            Migration::new(version, Cow::Borrowed(description), MigrationType::Simple, SqlStr::from_static(sql), false)
        })
        .collect();
    Migrator::with_migrations(migrations)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_migration_file_is_embedded() {
        for backend in ["sqlite", "postgres"] {
            let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../migrations/").to_owned() + backend;
            let mut files: Vec<String> = std::fs::read_dir(&dir)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .filter(|name| name.ends_with(".sql"))
                .collect();
            files.sort();
            assert_eq!(files.len(), MIGRATIONS.len(), "{dir} and MIGRATIONS differ");
            for (file, (version, ..)) in files.iter().zip(MIGRATIONS) {
                assert!(file.starts_with(&format!("{version:04}_")), "{file} is not migration {version}");
            }
        }
    }
}
