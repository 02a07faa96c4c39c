//! Hearth's server: the HTTP API (router, extractors, auth and audit layers, the console), the
//! guarded service layer every resource interaction goes through, authentication and SMART
//! scopes, the audit log's appender, signer and verifier, Subscriptions and outbox delivery,
//! TLS, configuration and start-up. The `hearth` binary (host/src) is the CLI over it.
//!
//! The layers below are their own crates, and Cargo keeps the dependencies pointing down:
//! `hearth-crypto` <- `hearth-fhir` <- `hearth-store` <- `hearth-plugins` <- this crate.

// The layers below this crate, under the names the modules here have always used.
pub use hearth_crypto as crypto;
pub use hearth_crypto::secret_file;
pub use hearth_fhir as fhir;
pub use hearth_plugins as plugins;
pub use hearth_plugins::policy;
pub use hearth_store as store;

pub mod api;
pub mod audit;
pub mod auth;
pub mod compliance;
pub mod config;
pub mod delivery;
pub mod fuzzing;
pub mod serve;
pub mod server;
pub mod service;
pub mod subscriptions;
pub mod tls;
