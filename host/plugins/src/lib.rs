//! Sandboxed WebAssembly plugins: the runtime (one engine, fresh instance per call, limits),
//! the host functions plugins may import, manifests, signatures, the registry of loaded
//! plugins, and the policy engine that binds them to resources and interactions ([`policy`]).
//! The worker delivering outbox events to integration plugins is the server's
//! (`hearth::delivery`): it needs the principal and the Subscriptions.
//!
//! This crate holds everything that depends on wasmtime, so the server's handlers can change
//! without recompiling it.

pub mod bindings;
mod host_api;
pub mod host_data;
pub mod manifest;
pub mod policy;
pub mod registry;
pub mod runtime;
pub mod signing;

pub use manifest::{Manifest, World};
pub use registry::{ActivePlugin, PluginRegistry};
pub use runtime::{CallFailure, HostServices, LoadError, PluginRuntime};
