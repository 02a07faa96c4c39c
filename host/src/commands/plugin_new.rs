//! `hearth plugin new --lang rust|js|python --world policy|integration NAME`: a plugin skeleton
//! that builds and passes its own test (`hearth plugin test` over its `fixtures/`) as created,
//! with a copy of the WIT contract, a manifest and a build script.

use std::path::{Path, PathBuf};

use crate::commands::plugin::PluginCommandError;

const WIT: &str = include_str!("../../../wit/hearth-plugin.wit");

/// The languages a skeleton can be made in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Lang {
    Rust,
    Js,
    Python,
}

/// Writes the skeleton into `parent/NAME`; returns its folder and what to run next.
pub fn plugin_new(parent: &Path, lang: Lang, world: &str, name: &str) -> Result<(PathBuf, String), PluginCommandError> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !valid {
        return Err(PluginCommandError::Invalid(
            "a plugin name is 1-64 characters of a-z, 0-9 and '-', starting with a letter".into(),
        ));
    }
    if !matches!(world, "policy" | "integration") {
        return Err(PluginCommandError::Invalid("--world is 'policy' or 'integration'".into()));
    }
    let dir = parent.join(name);
    if dir.exists() {
        return Err(PluginCommandError::Invalid(format!("{} exists already; choose another name", dir.display())));
    }
    let component = format!("{}.wasm", name.replace('-', "_"));
    let mut files: Vec<(String, String)> = vec![
        ("wit/hearth-plugin.wit".into(), WIT.into()),
        ("manifest.toml".into(), manifest(name, world, lang)),
        ("fixtures/01-example.json".into(), fixture(world)),
    ];
    let build = match lang {
        Lang::Rust => {
            let krate = name.replace('-', "_");
            files.push(("Cargo.toml".into(), format!(
                "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n[lib]\ncrate-type = [\"cdylib\"]\n\n\
                 [dependencies]\nwit-bindgen = \"0.61\"\nserde_json = \"1\"\n\n[profile.release]\nopt-level = \"s\"\nlto = true\n\
                 strip = true\npanic = \"abort\"\n\n# A workspace of its own, wherever it is created.\n[workspace]\n"
            )));
            files.push(("src/lib.rs".into(), rust_source(world)));
            format!(
                "#!/usr/bin/env bash\n# Builds {component} (needs `rustup target add wasm32-wasip2`).\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n\
                 cargo build --release --target wasm32-wasip2\ncp \"${{CARGO_TARGET_DIR:-target}}/wasm32-wasip2/release/{krate}.wasm\" {component}\n"
            )
        }
        Lang::Js => {
            files.push(("plugin.js".into(), js_source(world)));
            files.push(("package.json".into(), format!(
                "{{\n  \"name\": \"{name}\",\n  \"private\": true,\n  \"type\": \"module\",\n  \"dependencies\": {{\n    \
                 \"@bytecodealliance/componentize-js\": \"0.23.0\",\n    \"@bytecodealliance/preview2-shim\": \"0.25.0\"\n  }}\n}}\n"
            )));
            files.push(("build.mjs".into(), JS_BUILD.replace("WORLD", world).replace("OUT", &component)));
            format!(
                "#!/usr/bin/env bash\n# Builds {component} with componentize-js (Node.js 20+).\nset -euo pipefail\ncd \"$(dirname \"$0\")\"\n\
                 [ -d node_modules/@bytecodealliance/componentize-js ] || npm install --no-audit --no-fund\nnode build.mjs\n"
            )
        }
        Lang::Python => {
            files.push(("app.py".into(), python_source(world)));
            files.push(("requirements.txt".into(), "componentize-py==0.25.1\n".into()));
            format!(
                "#!/usr/bin/env bash\n# Builds {component} with componentize-py (`pip install -r requirements.txt`).\nset -euo pipefail\n\
                 cd \"$(dirname \"$0\")\"\npython3 -c \"import sys; from componentize_py import script; sys.argv[0] = 'componentize-py'; sys.exit(script())\" \\\n  \
                 -d wit -w {world} componentize app -o {component}\n"
            )
        }
    };
    files.push(("build.sh".into(), build));
    files.push(("test.sh".into(), format!(
        "#!/usr/bin/env bash\n# Builds the plugin, then runs it against fixtures/ with the server's limits.\nset -euo pipefail\n\
         cd \"$(dirname \"$0\")\"\n./build.sh\n\"${{HEARTH:-hearth}}\" plugin test --manifest manifest.toml --fixtures fixtures {component}\n"
    )));
    for (path, text) in &files {
        let target = dir.join(path);
        if let Some(folder) = target.parent() {
            std::fs::create_dir_all(folder)
                .map_err(|source| PluginCommandError::Read { path: folder.to_owned(), source })?;
        }
        std::fs::write(&target, text).map_err(|source| PluginCommandError::Read { path: target.clone(), source })?;
    }
    #[cfg(unix)]
    for script in ["build.sh", "test.sh"] {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(script);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))
            .map_err(|source| PluginCommandError::Read { path, source })?;
    }
    let next = format!(
        "created {}: edit the plugin, add cases to fixtures/, then run ./test.sh; load it with \
         `hearth plugin load --manifest manifest.toml {component}` (docs/plugins.md)",
        dir.display()
    );
    Ok((dir, next))
}

fn manifest(name: &str, world: &str, lang: Lang) -> String {
    let language = match lang {
        Lang::Rust => "rust",
        Lang::Js => "javascript",
        Lang::Python => "python",
    };
    // Interpreted languages carry their runtime: more memory, a longer first call.
    let (memory, timeout) = if lang == Lang::Rust { (16, 50) } else { (128, 500) };
    let grants = if world == "integration" { "allowed_hosts = []\nkey_value = false\n" } else { "" };
    format!(
        "name = \"{name}\"\nversion = \"0.1.0\"\nworld = \"{world}\"\nlanguage = \"{language}\"\n{grants}\n\
         [limits]\nmemory_mib = {memory}\ntimeout_ms = {timeout}\n"
    )
}

fn fixture(world: &str) -> String {
    if world == "policy" {
        r#"{
  "name": "a clinician reads an Observation, and a Patient record with restricted_types = [\"Patient\"] is denied",
  "call": "authorize",
  "interaction": "read",
  "principal": {"subject": "dr-a", "scopes": ["user/*.rs"]},
  "config": {"restricted_types": ["Patient"]},
  "resources": [
    {"resourceType": "Observation", "id": "o1", "compartment": "p1", "json": {"resourceType": "Observation", "id": "o1"}},
    {"resourceType": "Patient", "id": "p1", "compartment": "p1", "json": {"resourceType": "Patient", "id": "p1"}}
  ],
  "expect": ["allow", {"decision": "deny", "reason_contains": "restricted"}]
}
"#
        .to_owned()
    } else {
        r#"{
  "name": "a change event is handled",
  "call": "on-change",
  "event": {"kind": "created", "resourceType": "Patient", "id": "p1", "lastUpdated": "2026-11-28T10:00:00Z"},
  "expect": "ok"
}
"#
        .to_owned()
    }
}

fn rust_source(world: &str) -> String {
    if world == "policy" {
        r#"//! A policy plugin. `authorize` decides each resource of a request; `validate` checks writes.
//! Binding config: {"restricted_types": ["Patient"]} denies those types.

use serde_json::Value;

wit_bindgen::generate!({ path: "wit", world: "policy" });

struct Plugin;

impl Guest for Plugin {
    fn authorize(request: Request, resources: Vec<SubjectResource>) -> Vec<Decision> {
        let config: Value = serde_json::from_str(&request.config).unwrap_or(Value::Null);
        let restricted: Vec<&str> = config
            .get("restricted_types")
            .and_then(Value::as_array)
            .map(|types| types.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        resources
            .iter()
            .map(|r| {
                if restricted.contains(&r.resource_type.as_str()) {
                    Decision::Deny(format!("{} records are restricted", r.resource_type))
                } else {
                    Decision::Allow
                }
            })
            .collect()
    }

    fn validate(_request: Request, _resource: SubjectResource) -> Vec<Issue> {
        Vec::new()
    }
}

export!(Plugin);
"#
        .to_owned()
    } else {
        r#"//! An integration plugin. `on_change` sees each committed change (an error retries it);
//! `convert` turns inbound messages into FHIR resources.

wit_bindgen::generate!({ path: "wit", world: "integration" });

use hearth::plugin::log::{Level, write};

struct Plugin;

impl Guest for Plugin {
    fn on_change(event: ChangeEvent, _config: String) -> Result<(), String> {
        // Log ids and codes only, never patient data.
        write(Level::Info, &format!("{}/{} version {}", event.resource_type, event.id, event.version_id));
        Ok(())
    }

    fn convert(_body: Vec<u8>, _media_type: String, _config: String) -> Result<Vec<String>, String> {
        Err("this plugin converts nothing yet".into())
    }
}

export!(Plugin);
"#
        .to_owned()
    }
}

fn js_source(world: &str) -> String {
    if world == "policy" {
        r#"// A policy plugin. `authorize` decides each resource of a request; `validate` checks writes.
// Binding config: {"restricted_types": ["Patient"]} denies those types.

export function authorize(request, resources) {
  let config = {};
  try { config = JSON.parse(request.config) ?? {}; } catch { /* no config */ }
  const restricted = Array.isArray(config.restricted_types) ? config.restricted_types : [];
  return resources.map((r) => (restricted.includes(r.resourceType)
    ? { tag: 'deny', val: `${r.resourceType} records are restricted` }
    : { tag: 'allow' }));
}

export function validate(_request, _resource) {
  return [];
}
"#
        .to_owned()
    } else {
        r#"// An integration plugin. `onChange` sees each committed change (throwing a string retries
// it); `convert` turns inbound messages into FHIR resources.

import { write } from 'hearth:plugin/log@0.1.0';

export function onChange(event, _config) {
  // Log ids and codes only, never patient data.
  write('info', `${event.resourceType}/${event.id} version ${event.versionId}`);
}

export function convert(_body, _mediaType, _config) {
  throw 'this plugin converts nothing yet';
}
"#
        .to_owned()
    }
}

fn python_source(world: &str) -> String {
    if world == "policy" {
        r#""""A policy plugin. `authorize` decides each resource of a request; `validate` checks writes.
Binding config: {"restricted_types": ["Patient"]} denies those types."""

import json

import wit_world
from wit_world.imports.types import Decision_Allow, Decision_Deny


class WitWorld(wit_world.WitWorld):
    def authorize(self, request, resources):
        try:
            config = json.loads(request.config) or {}
        except ValueError:
            config = {}
        restricted = config.get("restricted_types", []) if isinstance(config, dict) else []
        return [
            Decision_Deny(f"{r.resource_type} records are restricted") if r.resource_type in restricted else Decision_Allow()
            for r in resources
        ]

    def validate(self, request, resource):
        return []
"#
        .to_owned()
    } else {
        r#""""An integration plugin. `on_change` sees each committed change (raising Err retries it);
`convert` turns inbound messages into FHIR resources."""

import wit_world
from componentize_py_types import Err
from wit_world.imports import log


class WitWorld(wit_world.WitWorld):
    def on_change(self, event, config):
        # Log ids and codes only, never patient data.
        log.write(log.Level.INFO, f"{event.resource_type}/{event.id} version {event.version_id}")
        return None

    def convert(self, body, media_type, config):
        raise Err("this plugin converts nothing yet")
"#
        .to_owned()
    }
}

const JS_BUILD: &str = r#"// Builds plugin.js into OUT with componentize-js; WASI features the worlds do not grant are
// disabled, so the component imports only what Hearth links.
import { componentize } from '@bytecodealliance/componentize-js';
import { writeFile } from 'node:fs/promises';

const { component } = await componentize({
  sourcePath: 'plugin.js',
  witPath: 'wit',
  worldName: 'WORLD',
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await writeFile('OUT', component);
console.log(`OUT: ${component.length} bytes`);
"#;
