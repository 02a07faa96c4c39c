//! Hearth: a FHIR R4 records server. The binary (`main.rs`) is a thin CLI over this library.

pub mod api;
pub mod audit;
pub mod auth;
pub mod backup;
pub mod commands;
pub mod config;
pub mod crypto;
pub mod fhir;
pub mod fuzzing;
pub mod import;
pub mod plugin_commands;
pub mod plugin_new;
pub mod plugin_test;
pub mod plugins;
pub mod policy;
pub mod secret_file;
pub mod serve;
pub mod server;
pub mod service;
pub mod store;
pub mod subscriptions;
pub mod tls;
