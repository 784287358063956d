//! What the parser accepts, learnt from the parser itself: the fields it knows (its "unknown field" refusal lists
//! them, section by section), which are numbers, enums or collections, and whether a configuration is accepted.
//! Nothing here lists a field by hand, so a field added to the parser shows up without touching the test.

use serde_json::{json, Map, Value};
use wasm_filter_core::config::{parse, Config, ConfigError};

/// A field the parser accepts, by dotted path; the fields of an array's items are `routes[].template`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Field {
    pub path: String,
    pub kind: Kind,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// An object of fields of its own (`gray`, `tenant`).
    Section,
    /// A list of objects (`routes`); its items' fields are listed as `path[].name`.
    ObjectList,
    /// A number (serde says `expected usize`, `expected u64`).
    Number,
    /// One of these values.
    Enum(Vec<String>),
    /// A list or map of scalars (`gray.allowed_versions`, `tenant.tenants`).
    Collection,
    /// Text or a boolean.
    Scalar,
}

/// `value` at the dotted `path` of an otherwise empty configuration (`a.b` → `{"a":{"b":value}}`); a `[]` step
/// wraps the rest in a one-item list.
pub fn at(path: &str, value: Value) -> Value {
    let mut steps: Vec<&str> = path.split('.').collect();
    let mut v = value;
    while let Some(step) = steps.pop() {
        v = match step.strip_suffix("[]") {
            Some(name) => json!({ name: [v] }),
            None => json!({ step: v }),
        };
    }
    v
}

/// `extra` merged into `base`, object by object.
pub fn merge(base: &Value, extra: &Value) -> Value {
    match (base, extra) {
        (Value::Object(b), Value::Object(e)) => {
            let mut out: Map<String, Value> = b.clone();
            for (k, v) in e {
                let merged = out.get(k).map_or_else(|| v.clone(), |old| merge(old, v));
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        _ => extra.clone(),
    }
}

pub fn parse_json(v: &Value) -> Result<Config, ConfigError> {
    parse(v.to_string().as_bytes())
}

/// The single problem of a configuration the parser must refuse.
fn refusal(v: &Value) -> (String, String) {
    let e = parse_json(v).expect_err("a probe the parser accepts");
    let p = &e.problems[0];
    (p.field.clone(), p.message.clone())
}

/// The names serde's refusal lists after `expected`: `` expected one of `a`, `b` `` or `` expected `a` or `b` ``.
fn expected_names(message: &str) -> Vec<String> {
    let (_, list) = message.split_once("expected").unwrap_or_default();
    crate::table::code_spans(list).into_iter().map(str::to_owned).collect()
}

/// The fields of the section at `prefix` (`""` for the root, `"routes[]"` for a list's items), by an unknown
/// field the parser must refuse naming every field it knows there.
fn section_fields(prefix: &str) -> Vec<String> {
    let path = if prefix.is_empty() {
        "__probe".to_owned()
    } else {
        format!("{prefix}.__probe")
    };
    let (field, message) = refusal(&at(&path, json!(0)));
    assert!(
        message.starts_with("unknown field `__probe`"),
        "{path}: expected serde's unknown-field refusal, got {field}: {message}"
    );
    expected_names(&message)
}

/// Every field the parser accepts, sections included, found by walking down from the root.
pub fn fields() -> Vec<Field> {
    let mut out = Vec::new();
    let mut todo = vec![String::new()];
    while let Some(prefix) = todo.pop() {
        for name in section_fields(&prefix) {
            let path = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}.{name}")
            };
            let kind = kind_of(&path);
            match kind {
                Kind::Section => todo.push(path.clone()),
                Kind::ObjectList => todo.push(format!("{path}[]")),
                _ => {}
            }
            out.push(Field { path, kind });
        }
    }
    out.sort();
    out
}

fn kind_of(path: &str) -> Kind {
    let shown = |v: Value| refusal(&at(path, v));
    // An object with an unknown field: a section refuses the field, anything else the object.
    let (field, message) = shown(json!({"__probe": 0}));
    if field == format!("{path}.__probe") && message.starts_with("unknown field") {
        return Kind::Section;
    }
    if message.starts_with("unknown variant") {
        return Kind::Enum(expected_names(&message));
    }
    if message.contains("expected a sequence") {
        let (field, message) = shown(json!([{"__probe": 0}]));
        return if field.ends_with(".__probe") && message.starts_with("unknown field") {
            Kind::ObjectList
        } else {
            Kind::Collection
        };
    }
    if message.contains("expected a string") && field.ends_with(".__probe") {
        return Kind::Collection; // a map whose values are text
    }
    let message = parse_json(&at(path, json!("__probe")))
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    if message.contains("expected usize") || message.contains("expected u64") || message.contains("expected u32") {
        return Kind::Number;
    }
    Kind::Scalar
}
