//! End-to-end tests: the real `hearth` binary over HTTPS, on SQLite and on PostgreSQL.

mod harness;

mod abuse;
mod access_differential;
mod audit;
mod auth;
mod backup;
mod bundles;
mod compliance;
mod concurrency;
mod confidentiality;
mod console;
mod crash;
mod crud;
mod disk_full;
mod encryption;
mod errors;
mod export;
mod feeds;
mod import;
mod languages;
mod lifecycle;
mod metadata;
mod mtls;
mod outage;
mod plugins;
mod r4_examples;
mod schemathesis;
mod search;
mod store;
mod subscriptions;
mod transport;
mod two_hosts;
mod upgrade;
mod validation;
mod webdriver;
