//! Where SQLite and PostgreSQL differ. The other modules write one SQL text for both (sqlx's
//! `Any` driver, `$n` placeholders) and ask [`Backend`] for the pieces that differ: row locks,
//! index hints, statistics, catalog queries; [`Sql`] builds dynamic statements with their bind
//! values and each backend's placeholders. What differs as a procedure rather than as text
//! (how pools are opened, how a write transaction starts, backups, reclaiming freed space,
//! which migration files apply) stays with that procedure, as one `match` on [`Backend`].

use sqlx::AssertSqlSafe;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }

    /// Appended to a SELECT inside a write transaction to lock the rows read until it ends
    /// (PostgreSQL). SQLite's writer holds the database's write lock already (`BEGIN IMMEDIATE`).
    pub(crate) fn lock_rows(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE",
        }
    }

    /// [`Backend::lock_rows`] for rows locked in `column` order, so that two transactions
    /// locking overlapping sets cannot deadlock (nothing on SQLite).
    pub(crate) fn lock_rows_in_order(self, column: &str) -> String {
        match self {
            Backend::Sqlite => String::new(),
            Backend::Postgres => format!(" ORDER BY {column}{}", self.lock_rows()),
        }
    }

    /// Appended to a SELECT that claims work rows (the outbox): lock them, skipping rows another
    /// worker holds (PostgreSQL; SQLite has one writer, so nothing to skip).
    pub(crate) fn claim_rows(self) -> &'static str {
        match self {
            Backend::Sqlite => "",
            Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        }
    }

    /// What correlated lookups of one resource's index rows add after `search_index s` to use
    /// the by-resource index (SQLite would otherwise pick the value index and scan every row
    /// with that value for each candidate; PostgreSQL's planner chooses well on its own).
    pub(crate) fn by_resource_hint(self) -> &'static str {
        match self {
            Backend::Sqlite => " INDEXED BY search_index_resource",
            Backend::Postgres => "",
        }
    }

    /// The same for heads read by their compartment (`resource_head_key`, `$everything`):
    /// without statistics SQLite prefers walking every head in primary-key order.
    pub(crate) fn by_compartment_hint(self) -> &'static str {
        match self {
            Backend::Sqlite => " INDEXED BY resource_head_key",
            Backend::Postgres => "",
        }
    }

    /// Fresh planner statistics after the search index was rebuilt.
    pub(crate) fn analyze_search_index(self) -> &'static str {
        match self {
            Backend::Sqlite => "PRAGMA optimize",
            Backend::Postgres => "ANALYZE search_index",
        }
    }

    /// Counts (0 or 1) whether sqlx's migration table exists.
    pub(crate) fn migrations_table_exists(self) -> &'static str {
        match self {
            Backend::Sqlite => "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
            Backend::Postgres => {
                "SELECT COUNT(*) FROM pg_tables WHERE tablename = '_sqlx_migrations' AND schemaname = current_schema()"
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Bind {
    Text(String),
    Int(i64),
    Float(f64),
    Bytes(Vec<u8>),
}

/// Dynamic SQL text with its numbered bind values (`$1`, `$2`, ...), in order.
#[derive(Default)]
pub(crate) struct Sql {
    binds: Vec<Bind>,
    /// Placeholders are plain `?` (SQLite), for statements whose text uses the values in the
    /// order they were bound. SQLite finds a numbered parameter by a linear search of the
    /// statement's names, once per value: a 2,700-value INSERT spent most of its time there.
    positional: bool,
    /// What correlated lookups of one resource's index rows add after `search_index s` to use
    /// the by-resource index (SQLite would otherwise pick the value index and scan every row
    /// with that value for each candidate; PostgreSQL's planner chooses well on its own).
    by_resource: &'static str,
    /// The same for heads read by their compartment (`resource_head_key`, `$everything`):
    /// without statistics SQLite prefers walking every head in primary-key order.
    by_compartment: &'static str,
}

impl Sql {
    /// For a query on `backend`.
    pub(crate) fn on(backend: Backend) -> Sql {
        Sql {
            binds: Vec::new(),
            positional: false,
            by_resource: backend.by_resource_hint(),
            by_compartment: backend.by_compartment_hint(),
        }
    }

    /// For a multi-row write on `backend` (see [`Sql::into_one_off`]): placeholders in bind
    /// order, so SQLite can take them as anonymous `?`.
    pub(crate) fn one_off(backend: Backend) -> Sql {
        Sql { positional: backend == Backend::Sqlite, ..Sql::on(backend) }
    }
    fn placeholder(&self) -> String {
        if self.positional { "?".to_owned() } else { format!("${}", self.binds.len()) }
    }
    pub(crate) fn text(&mut self, value: impl Into<String>) -> String {
        self.binds.push(Bind::Text(value.into()));
        self.placeholder()
    }
    pub(crate) fn int(&mut self, value: i64) -> String {
        self.binds.push(Bind::Int(value));
        self.placeholder()
    }
    pub(crate) fn float(&mut self, value: f64) -> String {
        self.binds.push(Bind::Float(value));
        self.placeholder()
    }
    /// How many values are bound so far.
    pub(crate) fn bound(&self) -> usize {
        self.binds.len()
    }
    /// The by-resource index hint of this backend (see [`Backend::by_resource_hint`]).
    pub(crate) fn by_resource(&self) -> &'static str {
        self.by_resource
    }
    /// The by-compartment index hint of this backend (see [`Backend::by_compartment_hint`]).
    pub(crate) fn by_compartment(&self) -> &'static str {
        self.by_compartment
    }
    /// A multi-row write, not kept prepared: such statements vary in length (and in where
    /// NULLs are written inline) and would crowd out the connection's cached statements.
    pub(crate) fn into_one_off(self, text: String) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        self.into_query(text).persistent(false)
    }
    pub(crate) fn bytes(&mut self, value: Vec<u8>) -> String {
        self.binds.push(Bind::Bytes(value));
        self.placeholder()
    }
    pub(crate) fn query(&self, text: String) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        Sql {
            binds: self.binds.clone(),
            positional: self.positional,
            by_resource: self.by_resource,
            by_compartment: self.by_compartment,
        }
        .into_query(text)
    }
    /// The query with the values moved in.
    pub(crate) fn into_query(self, text: String) -> sqlx::query::Query<'static, sqlx::Any, sqlx::any::AnyArguments> {
        let mut query = sqlx::query(AssertSqlSafe(text));
        for bind in self.binds {
            query = match bind {
                Bind::Text(t) => query.bind(t),
                Bind::Int(i) => query.bind(i),
                Bind::Float(f) => query.bind(f),
                Bind::Bytes(b) => query.bind(b),
            };
        }
        query
    }
}
