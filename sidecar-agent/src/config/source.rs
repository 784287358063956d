//! Where setting values come from: flags over environment over config file over defaults.
//!
//! [`Layers`] holds the raw text of each layer; reading the environment and the file happens in the helpers
//! that build it, so [`super::parse_config`] stays pure and tests feed it maps.

use std::{collections::HashMap, ffi::OsString, fmt, path::PathBuf};

use super::{Field, FIELDS, SOCKET_MODE};

/// Raw setting values by field.
pub trait Source {
    /// The value of `field` and where it came from, or `None` to use the default.
    fn get(&self, field: Field) -> Option<(String, Origin)>;

    /// Problems met while gathering values (unreadable file, unknown keys), reported with the bad values.
    fn problems(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Where a value came from, for error messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// A command-line flag.
    Flag(&'static str),
    /// An environment variable.
    Env(&'static str),
    /// A key of the config file.
    File { path: PathBuf, key: &'static str },
}

/// The layers, highest precedence first.
#[derive(Clone, Debug, Default)]
pub struct Layers {
    /// Flags given on the command line, by field key.
    pub flags: HashMap<&'static str, String>,
    /// `GRAYSCOPE_*` environment variables, by variable name.
    pub env: HashMap<String, String>,
    /// Values of the config file, by key.
    pub file: HashMap<String, String>,
    /// The config file, when one was given.
    pub file_path: Option<PathBuf>,
    /// Problems reading the layers.
    pub problems: Vec<String>,
    /// `GRAYSCOPE_*` variables that are none of the settings (a misspelt one, say) nor a Kubernetes service link: not
    /// refused, since the agent cannot tell every other program's variables from a mistake, but worth a warning.
    pub unknown_env: Vec<String>,
}

// === impl Layers ===

impl Layers {
    /// Keeps the `GRAYSCOPE_*` variables of `vars` (the process's environment, [`std::env::vars_os`], which may hold
    /// anything): one of the agent's own whose value is not UTF-8 is a problem, named; the others are ignored.
    pub fn with_env<K: Into<OsString>, V: Into<OsString>>(mut self, vars: impl IntoIterator<Item = (K, V)>) -> Self {
        for (key, value) in vars {
            let Ok(key) = key.into().into_string() else { continue };
            if !key.starts_with("GRAYSCOPE_") {
                continue;
            }
            if key != super::ENV_CONFIG && !FIELDS.iter().any(|f| f.env == key) && !is_service_link(&key) {
                self.unknown_env.push(key.clone());
            }
            match value.into().into_string() {
                Ok(value) => drop(self.env.insert(key, value)),
                Err(value) => {
                    if let Some(field) = FIELDS.iter().find(|f| f.env == key) {
                        self.problems.push(format!(
                            "{} = {value:?} (from environment variable {key}): expected UTF-8 text",
                            field.key
                        ));
                    } else if key == super::ENV_CONFIG {
                        self.problems
                            .push(format!("environment variable {key} = {value:?}: expected a UTF-8 path"));
                    }
                }
            }
        }
        self
    }

    /// Adds the config file's text (TOML: one `key = value` per setting, values strings, integers or booleans).
    pub fn with_file_text(mut self, path: PathBuf, text: &str) -> Self {
        match text.parse::<toml::Table>() {
            Err(e) => self
                .problems
                .push(format!("config file {}: not valid TOML: {e}", path.display())),
            Ok(table) => {
                for (key, value) in table {
                    if !FIELDS.iter().any(|f| f.key == key) {
                        let known: Vec<_> = FIELDS.iter().map(|f| f.key).collect();
                        self.problems.push(format!(
                            "config file {}: unknown key {key:?} (known: {})",
                            path.display(),
                            known.join(", ")
                        ));
                        continue;
                    }
                    match value {
                        toml::Value::String(s) => drop(self.file.insert(key, s)),
                        toml::Value::Integer(i) if key == SOCKET_MODE.key => {
                            drop(self.file.insert(key, mode_text(text, i)));
                        }
                        toml::Value::Integer(i) => drop(self.file.insert(key, i.to_string())),
                        // The switches' natural TOML form; any other field refuses "true" by its own name.
                        toml::Value::Boolean(b) => drop(self.file.insert(key, b.to_string())),
                        other => self.problems.push(format!(
                            "config file {}: key {key:?} must be a string, an integer or a boolean, not a {}",
                            path.display(),
                            other.type_str()
                        )),
                    }
                }
            }
        }
        self.file_path = Some(path);
        self
    }

    /// Reads the config file at `path`; a missing or unreadable file is reported as a problem.
    pub fn with_file(self, path: PathBuf) -> Self {
        match std::fs::read_to_string(&path) {
            Ok(text) => self.with_file_text(path, &text),
            Err(e) => {
                let mut this = self;
                this.problems.push(format!("config file {}: {e}", path.display()));
                this.file_path = Some(path);
                this
            }
        }
    }
}

/// Whether `key` has the shape of the variables Kubernetes gives every container for each Service of its namespace
/// (`enableServiceLinks`, on by default): a Service named `grayscope-agent` gives `GRAYSCOPE_AGENT_SERVICE_HOST`,
/// `…_SERVICE_PORT`, `…_SERVICE_PORT_<port name>`, `…_PORT`, `…_PORT_9464_TCP` and that with `_PROTO`, `_PORT` or
/// `_ADDR` after it.
fn is_service_link(key: &str) -> bool {
    if key.ends_with("_SERVICE_HOST") || key.contains("_SERVICE_PORT") || key.ends_with("_PORT") {
        return true;
    }
    // `_PORT_<number>_<protocol>`, alone or with one of the three suffixes, at the end.
    key.match_indices("_PORT_").any(|(at, sep)| {
        let rest = &key[at + sep.len()..];
        let Some((number, rest)) = rest.split_once('_') else {
            return false;
        };
        let protocol = ["TCP", "UDP", "SCTP"].into_iter().find(|p| rest.starts_with(p));
        !number.is_empty()
            && number.bytes().all(|b| b.is_ascii_digit())
            && protocol.is_some_and(|p| matches!(&rest[p.len()..], "" | "_PROTO" | "_PORT" | "_ADDR"))
    })
}

/// A file mode written in the config file as a TOML integer, as text for the mode parser: a decimal one's digits, as
/// chmod reads them (`640`), and the value of one written in another base (`0o640`, which TOML hands over as 416).
fn mode_text(text: &str, value: i64) -> String {
    let decimal = toml::de::DeTable::parse(text).ok().and_then(|table| {
        let (_, v) = table.get_ref().iter().find(|(k, _)| k.get_ref() == SOCKET_MODE.key)?;
        v.get_ref().as_integer().map(|i| i.radix() == 10)
    });
    if decimal == Some(false) {
        format!("0o{value:o}")
    } else {
        value.to_string()
    }
}

impl Source for Layers {
    fn get(&self, field: Field) -> Option<(String, Origin)> {
        if let Some(v) = self.flags.get(field.key) {
            return Some((v.clone(), Origin::Flag(field.flag)));
        }
        if let Some(v) = self.env.get(field.env) {
            return Some((v.clone(), Origin::Env(field.env)));
        }
        let v = self.file.get(field.key)?;
        let path = self.file_path.clone().unwrap_or_default();
        Some((v.clone(), Origin::File { path, key: field.key }))
    }

    fn problems(&self) -> Vec<String> {
        self.problems.clone()
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Default => f.write_str("the default"),
            Self::Flag(flag) => write!(f, "flag --{flag}"),
            Self::Env(var) => write!(f, "environment variable {var}"),
            Self::File { path, key } => write!(f, "key {key} of config file {}", path.display()),
        }
    }
}
