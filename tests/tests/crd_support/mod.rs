//! Manifests checked against the CustomResourceDefinitions their projects publish (`shared/schemas/<project>`):
//! the `openAPIV3Schema` of the served version, made strict the way the API server's strict field validation is
//! (an unknown field fails unless the schema keeps unknown fields on purpose). The CRDs' CEL rules
//! (`x-kubernetes-validations`) are not evaluated: there is no API server here. Shared by `istio_manifests.rs` and
//! `canary_manifests.rs`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Value};

/// `shared/schemas/<project>`, beside the workspace or beside one of its parents (worktrees sit deeper).
pub fn schemas_dir(project: &str) -> PathBuf {
    let root = integration_tests::paths::root().canonicalize().expect("root");
    root.ancestors()
        .map(|a| a.join("shared/schemas").join(project))
        .find(|p| p.join("SOURCE.md").exists())
        .unwrap_or_else(|| {
            panic!(
                "shared/schemas/{project} not found beside {} or its parents",
                root.display()
            )
        })
}

/// Every YAML document of a file, as JSON values (empty documents left out).
pub fn yaml_documents(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|d| Value::deserialize(d).unwrap_or_else(|e| panic!("{}: not YAML: {e}", path.display())))
        .filter(|v| !v.is_null())
        .collect()
}

/// The strict schema of every served version of some CRDs, by `apiVersion` and `kind`.
pub struct CrdSchemas(Vec<(String, String, Value)>);

impl CrdSchemas {
    /// The CRDs in `files` (each may hold several documents).
    pub fn load<P: AsRef<Path>>(files: impl IntoIterator<Item = P>) -> Self {
        let mut out = Vec::new();
        for crd in files.into_iter().flat_map(|f| yaml_documents(f.as_ref())) {
            let group = crd["spec"]["group"].as_str().expect("group").to_owned();
            let kind = crd["spec"]["names"]["kind"].as_str().expect("kind").to_owned();
            for version in crd["spec"]["versions"].as_array().expect("versions") {
                if version["served"] != json!(true) {
                    continue;
                }
                let mut schema = version["schema"]["openAPIV3Schema"].clone();
                // The API server accepts these at every custom resource's root, whether the schema lists them or not.
                let root = schema["properties"].as_object_mut().expect("root properties");
                for (field, field_schema) in [
                    ("apiVersion", json!({"type": "string"})),
                    ("kind", json!({"type": "string"})),
                    ("metadata", json!({"type": "object"})),
                ] {
                    root.entry(field).or_insert(field_schema);
                }
                strictify(&mut schema);
                let api_version = format!("{group}/{}", version["name"].as_str().expect("name"));
                out.push((api_version, kind.clone(), schema));
            }
        }
        Self(out)
    }

    /// How many served versions were loaded.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Validates `doc` against the served version of its CRD: every problem, with its JSON path.
    pub fn validate(&self, doc: &Value) -> Result<(), Vec<String>> {
        let (api, kind) = (
            doc["apiVersion"].as_str().unwrap_or(""),
            doc["kind"].as_str().unwrap_or(""),
        );
        let Some((_, _, schema)) = self.0.iter().find(|(a, k, _)| a == api && k == kind) else {
            return Err(vec![format!("no served CRD version for {api} {kind}")]);
        };
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .build(schema)
            .map_err(|e| vec![format!("schema does not compile: {e}")])?;
        let problems: Vec<String> = validator
            .iter_errors(doc)
            .map(|e| format!("{}: {e}", e.instance_path()))
            .collect();
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

/// Adds `additionalProperties: false` to every object schema that lists its properties and does not keep unknown
/// fields on purpose: an unknown (misspelt) field then fails, as it does with strict field validation.
fn strictify(schema: &mut Value) {
    let Value::Object(map) = schema else { return };
    let preserve = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
    if map.contains_key("properties") && !preserve && !map.contains_key("additionalProperties") {
        map.insert("additionalProperties".to_owned(), json!(false));
    }
    for key in ["properties", "patternProperties"] {
        if let Some(Value::Object(props)) = map.get_mut(key) {
            props.values_mut().for_each(strictify);
        }
    }
    for key in ["items", "additionalProperties", "not"] {
        if let Some(sub) = map.get_mut(key) {
            strictify(sub);
        }
    }
    for key in ["oneOf", "anyOf", "allOf"] {
        if let Some(Value::Array(subs)) = map.get_mut(key) {
            subs.iter_mut().for_each(strictify);
        }
    }
}
