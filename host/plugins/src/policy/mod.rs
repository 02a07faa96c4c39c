//! Policy bindings: which plugins apply to which resource types and interactions, in which
//! order and mode, read from `policies/*.toml`; and the engine that runs them on requests
//! (deny overrides; shadow bindings decide and log but never enforce).
//!
//! ```toml
//! [[binding]]
//! plugin = "consent"
//! resource_types = ["*"]                      # or ["Observation", "Condition"]
//! interactions = ["read", "vread", "history", "search"]
//! mode = "enforce"                            # or "shadow"
//! order = 10                                  # lower runs first; ties keep file order
//! config = { exempt_types = ["Consent"] }     # passed to the plugin as JSON
//! ```

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub mod engine;
pub mod redact;

pub use engine::{Caller, Plan, PolicyEngine, Verdict};

/// The interactions a binding can name (the WIT `interaction` enum).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyInteraction {
    Read,
    Vread,
    History,
    Search,
    Create,
    Update,
    Delete,
}

impl PolicyInteraction {
    const ALL: [PolicyInteraction; 7] = [
        PolicyInteraction::Read,
        PolicyInteraction::Vread,
        PolicyInteraction::History,
        PolicyInteraction::Search,
        PolicyInteraction::Create,
        PolicyInteraction::Update,
        PolicyInteraction::Delete,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyInteraction::Read => "read",
            PolicyInteraction::Vread => "vread",
            PolicyInteraction::History => "history",
            PolicyInteraction::Search => "search",
            PolicyInteraction::Create => "create",
            PolicyInteraction::Update => "update",
            PolicyInteraction::Delete => "delete",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|i| i.as_str() == text)
    }

    pub fn is_write(self) -> bool {
        matches!(self, PolicyInteraction::Create | PolicyInteraction::Update | PolicyInteraction::Delete)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Shadow,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Shadow => "shadow",
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    binding: Vec<BindingSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct BindingSpec {
    plugin: String,
    #[serde(default)]
    resource_types: Option<Vec<String>>,
    interactions: Vec<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default)]
    order: Option<i64>,
    #[serde(default)]
    config: Option<toml::Table>,
}

/// One plugin bound to some resource types and interactions.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Binding {
    pub plugin: String,
    /// `None`: every resource type.
    pub resource_types: Option<HashSet<String>>,
    #[serde(serialize_with = "interaction_names")]
    pub interactions: HashSet<PolicyInteraction>,
    pub mode: Mode,
    pub order: i64,
    /// The `config` table as JSON text.
    pub config: String,
    /// Where the binding was written (`file.toml#2`).
    pub source: String,
}

fn interaction_names<S: serde::Serializer>(set: &HashSet<PolicyInteraction>, s: S) -> Result<S::Ok, S::Error> {
    let mut names: Vec<&str> = set.iter().map(|i| i.as_str()).collect();
    names.sort_unstable();
    s.collect_seq(names)
}

impl Binding {
    pub fn applies(&self, res_type: &str, interaction: PolicyInteraction) -> bool {
        self.interactions.contains(&interaction) && self.resource_types.as_ref().is_none_or(|t| t.contains(res_type))
    }
}

/// Every binding in force, in evaluation order.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BindingSet {
    pub bindings: Vec<Binding>,
    /// The folder they were read from.
    pub source: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct BindingError {
    pub file: String,
    pub message: String,
}

impl BindingSet {
    /// Reads every `*.toml` file in `dir`, in file-name order.
    pub fn load_dir(dir: &Path) -> Result<BindingSet, BindingError> {
        let error = |file: &Path, message: String| BindingError { file: file.display().to_string(), message };
        let entries =
            std::fs::read_dir(dir).map_err(|e| error(dir, format!("cannot read the policies folder: {e}")))?;
        let mut files: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml"))
            .collect();
        files.sort();
        let mut bindings = Vec::new();
        for file in &files {
            let text = std::fs::read_to_string(file).map_err(|e| error(file, e.to_string()))?;
            let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            bindings.extend(parse_file(&name, &text).map_err(|message| error(file, message))?);
        }
        // A stable sort: equal orders keep file and position order.
        bindings.sort_by_key(|b| b.order);
        Ok(BindingSet { bindings, source: Some(dir.to_owned()) })
    }

    /// Bindings for one resource type and interaction, in evaluation order.
    pub fn matching(&self, res_type: &str, interaction: PolicyInteraction) -> impl Iterator<Item = &Binding> {
        self.bindings.iter().filter(move |b| b.applies(res_type, interaction))
    }
}

/// Switches the binding written at `source` (`file.toml#N`, as [`Binding::source`] says) in
/// folder `dir` to `mode`, rewriting only that binding's `mode` line (comments and layout
/// stay), and checks the result reads back as intended before replacing the file atomically.
/// Bindings written in a form this cannot edit line by line are refused with what to do.
pub fn set_mode_in_folder(dir: &Path, source: &str, mode: Mode) -> Result<(), BindingError> {
    let refuse = |message: String| BindingError { file: source.to_owned(), message };
    let (file, index) = source
        .rsplit_once('#')
        .and_then(|(file, n)| Some((file, n.parse::<usize>().ok().filter(|n| *n > 0)?)))
        .ok_or_else(|| refuse("name a binding as FILE.toml#N, as GET /admin/policies lists them".into()))?;
    if file.is_empty() || file.contains(['/', '\\']) || file.starts_with('.') || !file.ends_with(".toml") {
        return Err(refuse("the binding's file must be a .toml file in the policies folder".into()));
    }
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| refuse(format!("cannot read {}: {e}", path.display())))?;
    let word = mode.as_str();
    let lines: Vec<&str> = text.split_inclusive('\n').collect();
    let headers: Vec<usize> =
        lines.iter().enumerate().filter(|(_, l)| l.trim() == "[[binding]]").map(|(i, _)| i).collect();
    let start = *headers.get(index - 1).ok_or_else(|| refuse(format!("{file} has no binding {index}")))?;
    let end = lines
        .iter()
        .enumerate()
        .skip(start + 1)
        .find(|(_, l)| l.trim_start().starts_with('['))
        .map_or(lines.len(), |(i, _)| i);
    let is_mode_line = |line: &str| {
        let line = line.trim_start();
        line.strip_prefix("mode").is_some_and(|rest| rest.trim_start().starts_with('='))
    };
    let mut edited: Vec<String> = lines.iter().map(|l| (*l).to_owned()).collect();
    let new_line = format!("mode = \"{word}\"\n");
    match (start + 1..end).find(|&i| is_mode_line(lines[i])) {
        Some(i) => {
            let indent: String = lines[i].chars().take_while(|c| c.is_whitespace()).collect();
            edited[i] = format!("{indent}{new_line}");
        }
        None => edited.insert(start + 1, new_line),
    }
    let edited = edited.concat();
    let reread = parse_file(file, &edited).map_err(|e| refuse(format!("the edit would not read back ({e})")))?;
    let before = parse_file(file, &text).map_err(|e| refuse(format!("the file does not read as it is: {e}")))?;
    let as_intended = reread.len() == before.len()
        && reread.iter().zip(&before).enumerate().all(|(i, (after, before))| {
            let mode_ok = if i + 1 == index { after.mode == mode } else { after.mode == before.mode };
            mode_ok && after.plugin == before.plugin && after.config == before.config && after.order == before.order
        });
    if !as_intended {
        return Err(refuse(format!(
            "{file} is written in a form this cannot edit safely; set mode = \"{word}\" in it by hand and reload"
        )));
    }
    let temporary = dir.join(format!(".{file}.{}.tmp", std::process::id()));
    std::fs::write(&temporary, edited)
        .and_then(|()| std::fs::rename(&temporary, &path))
        .map_err(|e| refuse(format!("cannot write {}: {e} (is the policies folder writable?)", path.display())))
}

fn parse_file(name: &str, text: &str) -> Result<Vec<Binding>, String> {
    let file: PolicyFile = toml::from_str(text).map_err(|e| e.message().to_owned())?;
    file.binding
        .into_iter()
        .enumerate()
        .map(|(index, spec)| {
            let at = format!("binding {}", index + 1);
            if !crate::manifest::is_plugin_name(&spec.plugin) {
                return Err(format!("{at}: {:?} is not a plugin name", spec.plugin));
            }
            let resource_types = match spec.resource_types {
                None => None,
                Some(types) if types.iter().any(|t| t == "*") => None,
                Some(types) => {
                    for t in &types {
                        hearth_fhir::resource::check_type_name(t)
                            .map_err(|_| format!("{at}: {t:?} is not an R4 resource type"))?;
                    }
                    Some(types.into_iter().collect())
                }
            };
            let mut interactions = HashSet::new();
            for text in &spec.interactions {
                if text == "*" {
                    interactions.extend(PolicyInteraction::ALL);
                } else {
                    interactions.insert(PolicyInteraction::parse(text).ok_or_else(|| {
                        format!("{at}: unknown interaction {text:?} (read, vread, history, search, create, update, delete or *)")
                    })?);
                }
            }
            if interactions.is_empty() {
                return Err(format!("{at}: list at least one interaction"));
            }
            let config = serde_json::to_string(&spec.config.unwrap_or_default()).map_err(|e| e.to_string())?;
            Ok(Binding {
                plugin: spec.plugin,
                resource_types,
                interactions,
                mode: spec.mode,
                order: spec.order.unwrap_or(0),
                config,
                source: format!("{name}#{}", index + 1),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_parse_and_match_in_order() {
        let text = r#"
            [[binding]]
            plugin = "redact"
            interactions = ["read"]
            order = 20
            [[binding]]
            plugin = "consent"
            resource_types = ["Observation"]
            interactions = ["read", "search"]
            mode = "shadow"
            order = 10
            config = { exempt_types = ["Consent"], deep = { n = 1 } }
        "#;
        let mut bindings = parse_file("a.toml", text).unwrap();
        bindings.sort_by_key(|b| b.order);
        let set = BindingSet { bindings, source: None };
        let names: Vec<&str> =
            set.matching("Observation", PolicyInteraction::Read).map(|b| b.plugin.as_str()).collect();
        assert_eq!(names, ["consent", "redact"]);
        let names: Vec<&str> = set.matching("Patient", PolicyInteraction::Read).map(|b| b.plugin.as_str()).collect();
        assert_eq!(names, ["redact"]);
        assert_eq!(set.matching("Patient", PolicyInteraction::Create).count(), 0);
        assert_eq!(set.bindings[0].mode, Mode::Shadow);
        assert_eq!(set.bindings[0].config, r#"{"deep":{"n":1},"exempt_types":["Consent"]}"#);
        assert_eq!(set.bindings[0].source, "a.toml#2");
    }

    #[test]
    fn modes_switch_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let text = "# consent first\n[[binding]]\nplugin = \"consent\"\ninteractions = [\"read\"]\n  mode = \"shadow\" # trying it\n\n[[binding]]\nplugin = \"redact\"\ninteractions = [\"read\"]\nconfig = { a = 1 }\n";
        std::fs::write(dir.path().join("p.toml"), text).unwrap();
        set_mode_in_folder(dir.path(), "p.toml#1", Mode::Enforce).unwrap();
        set_mode_in_folder(dir.path(), "p.toml#2", Mode::Shadow).unwrap();
        let set = BindingSet::load_dir(dir.path()).unwrap();
        assert_eq!(set.bindings[0].mode, Mode::Enforce);
        assert_eq!(set.bindings[1].mode, Mode::Shadow);
        let written = std::fs::read_to_string(dir.path().join("p.toml")).unwrap();
        assert!(written.starts_with("# consent first\n"), "{written}");
        assert!(written.contains("  mode = \"enforce\"\n"), "{written}");
        for (source, expected) in [("p.toml#3", "no binding 3"), ("../p.toml#1", "policies folder"), ("p.toml", "FILE")]
        {
            let error = set_mode_in_folder(dir.path(), source, Mode::Enforce).unwrap_err();
            assert!(error.message.contains(expected), "{source}: {error}");
        }
        // A form the line editor cannot handle is refused, and the file is left alone.
        std::fs::write(dir.path().join("q.toml"), "binding = [{ plugin = \"x\", interactions = [\"read\"] }]\n")
            .unwrap();
        let error = set_mode_in_folder(dir.path(), "q.toml#1", Mode::Shadow).unwrap_err();
        assert!(error.message.contains("no binding 1"), "{error}");
        std::fs::write(
            dir.path().join("r.toml"),
            "[[binding]]\nplugin = \"x\"\ninteractions = [\"read\"]\n[binding.config]\nmode = \"enforce\"\n",
        )
        .unwrap();
        // A `mode` key of the binding's config table is not the binding's mode.
        set_mode_in_folder(dir.path(), "r.toml#1", Mode::Shadow).unwrap();
        let set = BindingSet::load_dir(dir.path()).unwrap();
        let r = set.bindings.iter().find(|b| b.source == "r.toml#1").unwrap();
        assert_eq!((r.mode, r.config.as_str()), (Mode::Shadow, r#"{"mode":"enforce"}"#));
    }

    #[test]
    fn mistakes_are_named() {
        for (text, expected) in [
            ("[[binding]]\nplugin = \"x\"\ninteractions = [\"peek\"]", "unknown interaction"),
            ("[[binding]]\nplugin = \"x\"\nresource_types = [\"Patiant\"]\ninteractions = [\"read\"]", "Patiant"),
            ("[[binding]]\nplugin = \"x\"\ninteractions = []", "at least one"),
            ("[[binding]]\nplugin = \"x\"\ninteractions = [\"read\"]\nmode = \"maybe\"", "maybe"),
            ("[[binding]]\nplugin = \"x\"\ninteractions = [\"read\"]\nsurprise = 1", "surprise"),
        ] {
            let error = parse_file("f.toml", text).unwrap_err();
            assert!(error.contains(expected), "{error}");
        }
    }
}
