//! Storage-level behaviour that has no HTTP surface yet, on both databases, through the
//! library's own `open_store` (the same code `hearth serve` runs).

use hearth_server::config::{KeySource, StorageSettings};
use hearth_server::crypto::blind_index::Normalization;
use hearth_server::store::Store;

use crate::harness::{Db, PgDatabase};
use crate::on_both_databases;

on_both_databases!(blind_index_key_is_stable_across_restart_rotation_and_erasure);
on_both_databases!(audit_lookups_are_written_with_their_entries_and_rebuilt_from_them);

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
    hearth_server::serve::open_store(&opened.settings).await.expect("open store")
}

async fn blind_index_key_is_stable_across_restart_rotation_and_erasure(db: Db) {
    let opened = settings(db);
    let store = open(&opened).await;
    let token = |key: &hearth_server::crypto::blind_index::BlindIndexKey| {
        key.token("Patient.family", Normalization::Text, "Müller")
    };
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

/// On PostgreSQL every resource type and id column compares byte-wise (COLLATE "C"), so joins
/// between the tables (a read by id joins the head to its version; each search condition
/// joins the index to the head) can use the other table's index on the id. Before migration
/// 7 they did not: a read of 10 Observations by id scanned every Observation version
/// (227 ms at 220,000 resources).
#[tokio::test]
async fn postgres_joins_on_resource_ids_use_the_indexes() {
    use sqlx::{Connection, Row};
    let opened = settings(Db::Postgres);
    let store = open(&opened).await;
    store.close().await;
    let mut conn = sqlx::AnyConnection::connect(&opened.settings.database_url).await.unwrap();
    let rows = sqlx::query(
        "SELECT table_name::text, column_name::text, COALESCE(collation_name::text, 'default') FROM information_schema.columns \
         WHERE table_schema = 'public' AND column_name IN ('res_type', 'res_id') ORDER BY 1, 2",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap();
    let columns: Vec<(String, String, String)> = rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect();
    assert!(columns.len() >= 8, "{columns:?}");
    for (table, column, collation) in &columns {
        assert_eq!(collation, "C", "{table}.{column} must compare byte-wise like the columns it is joined with");
    }

    // The planner's view, over 5,000 Observations: the head's id is part of the index
    // condition on resource_version (before: a scan of every version of the type).
    insert_observations(&mut conn, 5000).await;
    sqlx::query("ANALYZE resource_head, resource_version").execute(&mut conn).await.unwrap();
    let plan: Vec<String> = sqlx::query(
        "EXPLAIN SELECT v.body FROM resource_head h JOIN resource_version v \
         ON v.res_type = h.res_type AND v.res_id = h.res_id AND v.version = h.version \
         WHERE h.res_type = 'Observation' AND h.res_id IN ('o1', 'o2')",
    )
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get(0))
    .collect();
    let version_scan = plan
        .iter()
        .skip_while(|line| !line.contains("on resource_version v"))
        .find(|line| line.contains("Index Cond:"))
        .unwrap_or_else(|| panic!("{plan:#?}"));
    assert!(version_scan.contains("(res_id = h.res_id)"), "{plan:#?}");
    assert!(!plan.iter().any(|line| line.contains("Seq Scan") || line.contains("Filter:")), "{plan:#?}");
}

/// After a bulk load that autovacuum has not analysed yet, an export brings PostgreSQL's
/// statistics up to date first (without them the planner takes the tables for nearly empty
/// and reads each snapshot page by scanning and sorting every remaining version: 1.5 s a page
/// at 300,000 Observations, against milliseconds along the primary key), and does not analyse
/// again while they stay current.
#[tokio::test]
async fn stale_postgres_statistics_are_refreshed_once() {
    use sqlx::{Connection, Row};
    let opened = settings(Db::Postgres);
    let store = open(&opened).await;
    let mut conn = sqlx::AnyConnection::connect(&opened.settings.database_url).await.unwrap();
    // The moment this covers: autovacuum has not got to the tables yet.
    for table in ["resource_head", "resource_version"] {
        let statement = format!("ALTER TABLE {table} SET (autovacuum_enabled = false)");
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.unwrap();
    }
    insert_observations(&mut conn, 20000).await;
    assert_eq!(analysed_tables(&mut conn).await, 0);
    // The inserting connection reports its changes to the statistics collector when idle,
    // within about a second.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let pending: i64 = sqlx::query(
            "SELECT COALESCE(MIN(n_mod_since_analyze), 0) FROM pg_stat_user_tables \
             WHERE relname IN ('resource_head', 'resource_version')",
        )
        .fetch_one(&mut conn)
        .await
        .unwrap()
        .get(0);
        if pending >= 20000 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the inserts never reached pg_stat_user_tables");
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(store.analyze_if_stale().await.unwrap(), "20,000 unanalysed rows are stale statistics");
    assert_eq!(analysed_tables(&mut conn).await, 2, "both resource tables were analysed");
    assert!(!store.analyze_if_stale().await.unwrap(), "nothing changed since: no second ANALYZE");
    store.close().await;

    let sqlite = settings(Db::Sqlite);
    let store = open(&sqlite).await;
    assert!(!store.analyze_if_stale().await.unwrap(), "SQLite's plans do not depend on statistics");
    store.close().await;
}

async fn analysed_tables(conn: &mut sqlx::AnyConnection) -> i64 {
    use sqlx::Row;
    sqlx::query(
        "SELECT COUNT(*) FROM pg_stat_user_tables WHERE relname IN ('resource_head', 'resource_version') \
         AND last_analyze IS NOT NULL",
    )
    .fetch_one(conn)
    .await
    .unwrap()
    .get(0)
}

/// Writes `count` bare Observation heads and versions (ids `o1`...) straight into the tables.
async fn insert_observations(conn: &mut sqlx::AnyConnection, count: u32) {
    for table in [("resource_head", "1, 0, 0"), ("resource_version", "1, 0, 0, NULL, NULL")] {
        let statement = format!(
            "INSERT INTO {} SELECT 'Observation', 'o' || g, {} FROM generate_series(1, {count}) g",
            table.0, table.1
        );
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut *conn).await.unwrap();
    }
}

/// A batch of audit entries is written with its lookup rows (one time row per entry, one term
/// row per distinct parameter value), and the start-up backlog pass rebuilds exactly those rows
/// for entries written before lookups existed.
async fn audit_lookups_are_written_with_their_entries_and_rebuilt_from_them(db: Db) {
    use hearth_server::audit::{AuditEvent, Outcome};
    use sqlx::Connection;
    let opened = settings(db);
    let store = open(&opened).await;
    let events: Vec<AuditEvent> = (0..450)
        .map(|n| AuditEvent {
            at: format!("2026-11-28T10:{:02}:{:02}Z", n / 60 % 60, n % 60),
            action: "read".to_owned(),
            outcome: Outcome::Success,
            status: 200,
            subject: Some(format!("dr-{}", n % 7)),
            resource_type: Some("Patient".to_owned()),
            resource_id: Some(format!("p{n}")),
            // A search-sized entry every so often: more terms than one statement takes.
            returned: if n % 150 == 0 { (0..120).map(|i| format!("Observation/o{n}-{i}")).collect() } else { vec![] },
            patients: vec![format!("p{n}")],
            ..AuditEvent::default()
        })
        .collect();
    let (first, _) = store.audit_head().await.unwrap();
    let refs: Vec<&AuditEvent> = events.iter().collect();
    let (head, _) = store.append_audit(&refs[..400]).await.unwrap();
    assert_eq!(head, first + 400);
    let (head, _) = store.append_audit(&refs[400..]).await.unwrap();
    assert_eq!(head, first + 450);
    let written = store.audit_entries(first, 1000).await.unwrap();
    assert_eq!(written.len(), 450);
    assert!(written.windows(2).all(|w| w[1].prev_hash == w[0].hash && w[1].seq == w[0].seq + 1), "one chain");

    let mut conn = sqlx::AnyConnection::connect(&opened.settings.database_url).await.unwrap();
    let (times, terms) = lookup_rows(&mut conn, first).await;
    assert_eq!(times, 450, "one time row per entry");
    assert!(terms > 450 + 3 * 120, "subjects, resources, patients and returned resources: {terms}");
    // Entries from before the lookups existed: the backlog pass writes the same rows again.
    for table in ["audit_term", "audit_time"] {
        let statement = format!("DELETE FROM {table}");
        sqlx::query(sqlx::AssertSqlSafe(statement)).execute(&mut conn).await.unwrap();
    }
    let indexed = store.index_audit_backlog(&|_, _| {}).await.unwrap();
    assert!(indexed >= 450, "{indexed}");
    assert_eq!(lookup_rows(&mut conn, first).await, (times, terms));
    store.close().await;
}

/// The audit lookup rows (time rows, term rows) of the entries after `after`.
async fn lookup_rows(conn: &mut sqlx::AnyConnection, after: i64) -> (i64, i64) {
    use sqlx::Row;
    let row = sqlx::query(
        "SELECT (SELECT COUNT(*) FROM audit_time WHERE seq > $1), (SELECT COUNT(*) FROM audit_term WHERE seq > $1)",
    )
    .bind(after)
    .fetch_one(conn)
    .await
    .unwrap();
    (row.get(0), row.get(1))
}
