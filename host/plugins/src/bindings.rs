//! Host-side bindings of the two worlds in `wit/hearth-plugin.wit`. Both share the `types`
//! and `log` interfaces, so one set of Rust types and one log implementation serve both.

pub mod policy {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "policy",
    });
}

pub mod integration {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "integration",
        with: {
            "hearth:plugin/types": super::policy::hearth::plugin::types,
            "hearth:plugin/log": super::policy::hearth::plugin::log,
        },
    });
}

pub use policy::hearth::plugin::types;
