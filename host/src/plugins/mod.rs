//! Sandboxed WebAssembly plugins: the runtime (one engine, fresh instance per call, limits),
//! the host functions plugins may import, manifests, the registry of loaded plugins, and the
//! worker delivering outbox events to integration plugins.

pub mod bindings;
pub mod delivery;
mod host_api;
pub mod manifest;
pub mod registry;
pub mod runtime;
pub mod signing;

pub use manifest::{Manifest, World};
pub use registry::{ActivePlugin, PluginRegistry};
pub use runtime::{CallFailure, HostServices, LoadError, PluginRuntime};
