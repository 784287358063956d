//! Shared by the Istio tests: the manifests under `istio/` read as YAML documents, the Istio CRDs of
//! `shared/schemas/istio`, and the stats part of the bootstrap Istio writes for every sidecar.

#![allow(dead_code)]

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{json, Value};

/// One YAML document of one manifest file.
pub struct Doc {
    pub file: String,
    pub value: Value,
}

impl Doc {
    pub fn kind(&self) -> &str {
        self.value["kind"].as_str().unwrap_or("")
    }
    pub fn api_version(&self) -> &str {
        self.value["apiVersion"].as_str().unwrap_or("")
    }
    pub fn name(&self) -> &str {
        self.value["metadata"]["name"].as_str().unwrap_or("")
    }
}

/// `istio/` in the workspace.
pub fn istio_dir() -> PathBuf {
    integration_tests::paths::root().join("istio")
}

/// Every `*.yaml` under `istio/`, except `istio/canary/` (the canary resources are validated by their own tests).
pub fn manifest_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in fs::read_dir(dir).expect("read istio dir") {
            let path = entry.expect("dir entry").path();
            if path.is_dir() {
                if path.file_name().is_some_and(|n| n != "canary") {
                    walk(&path, out);
                }
            } else if path.extension().is_some_and(|e| e == "yaml") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(&istio_dir(), &mut out);
    out.sort();
    out
}

/// The documents of a YAML text (anchors resolved, as kubectl resolves them).
pub fn parse_docs(file: &str, text: &str) -> Vec<Doc> {
    serde_norway::Deserializer::from_str(text)
        .map(|d| Doc {
            file: file.to_owned(),
            value: Value::deserialize(d).unwrap_or_else(|e| panic!("{file}: not YAML: {e}")),
        })
        .filter(|d| !d.value.is_null())
        .collect()
}

/// Every document of every manifest.
pub fn docs() -> Vec<Doc> {
    manifest_files()
        .iter()
        .flat_map(|p| {
            let rel = p.strip_prefix(istio_dir()).unwrap_or(p).display().to_string();
            parse_docs(&rel, &fs::read_to_string(p).expect("read manifest"))
        })
        .collect()
}

/// The one document of `file` (relative to `istio/`).
pub fn doc(file: &str) -> Value {
    let docs = parse_docs(
        file,
        &fs::read_to_string(istio_dir().join(file)).expect("read manifest"),
    );
    assert_eq!(docs.len(), 1, "{file} holds one document");
    docs.into_iter().next().map(|d| d.value).unwrap_or_default()
}

/// The mesh config values of `istio/01-stats-meshconfig.yaml` that reach the bootstrap.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshValues {
    #[serde(rename = "meshConfig")]
    pub mesh_config: MeshConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    #[serde(rename = "defaultConfig")]
    pub default_config: ProxyStats,
}

/// The stats fields of Istio's `ProxyConfig` (istio.mesh.v1alpha1), names as Istio spells them.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProxyStats {
    #[serde(default)]
    pub proxy_stats_matcher: StatsMatcher,
    #[serde(default)]
    pub extra_stat_tags: Vec<String>,
    #[serde(default)]
    pub concurrency: Option<u32>,
    /// Environment variables Istio's injection template sets on istio-proxy.
    #[serde(default)]
    pub proxy_metadata: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StatsMatcher {
    #[serde(default)]
    pub inclusion_prefixes: Vec<String>,
    #[serde(default)]
    pub inclusion_suffixes: Vec<String>,
    #[serde(default)]
    pub inclusion_regexps: Vec<String>,
}

pub fn mesh_values() -> MeshValues {
    let text = fs::read_to_string(istio_dir().join("01-stats-meshconfig.yaml")).expect("mesh config");
    serde_norway::from_str(&text).unwrap_or_else(|e| panic!("01-stats-meshconfig.yaml: {e}"))
}

/// The stats every Istio sidecar keeps ("used by readiness checks"), after the configured ones, as Istio's
/// pkg/bootstrap/config.go spells them (1.2x): `server` holds `server.concurrency` (the worker count), `wasm` every
/// stat whose name starts with it, `wasmcustom.` ones included.
pub const ISTIO_REQUIRED_PREFIXES: [&str; 5] = [
    "cluster_manager",
    "listener_manager",
    "server",
    "cluster.xds-grpc",
    "wasm",
];
/// The suffixes Istio always adds: RBAC's, and `downstream_cx_active`, which draining needs.
pub const ISTIO_REQUIRED_SUFFIXES: [&str; 5] = [
    "rbac.allowed",
    "rbac.denied",
    "shadow_allowed",
    "shadow_denied",
    "downstream_cx_active",
];
pub const ISTIO_REQUIRED_REGEXPS: [&str; 1] = [r"vhost\.*\.route\.*"];

/// The configured patterns of one kind (prefix, suffix or regex), then the ones Istio adds to them.
fn then_required<'a>(configured: &'a [String], required: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
    configured.iter().map(String::as_str).chain(required.iter().copied())
}

/// Envoy's `stats_config` as Istio's bootstrap template (tools/packaging/common/envoy_bootstrap.json of
/// istio/istio) renders it for a proxy with these settings: Istio's own tag rules, one
/// `(tag=\.=(.*?);\.;)` rule per extraStatTags entry in their place among them, and the inclusion list that always
/// starts with `reporter=` and ends with `component` and `istio`.
pub fn istio_stats_config(stats: &ProxyStats) -> Value {
    let mut tags = vec![
        json!({"tag_name": "cluster_name", "regex": r"^cluster\.((.+?(\..+?\.svc\.cluster\.local)?)\.)"}),
        json!({"tag_name": "tcp_prefix", "regex": r"^tcp\.((.*?)\.)\w+?$"}),
        json!({"tag_name": "response_code", "regex": r"_rq(_(\d{3}))$"}),
        json!({"tag_name": "response_code_class", "regex": r"_rq(_(\dxx))$"}),
        json!({"tag_name": "http_conn_manager_listener_prefix", "regex": r"^listener(?=\.).*?\.http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"}),
        json!({"tag_name": "http_conn_manager_prefix", "regex": r"^http\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"}),
        json!({"tag_name": "listener_address", "regex": r"^listener\.(((?:[_.[:digit:]]*|[_\[\]aAbBcCdDeEfF[:digit:]]*))\.)"}),
        json!({"tag_name": "mongo_prefix", "regex": r"^mongo\.(.+?)\.(collection|cmd|cx_|op_|delays_|decoding_)(.*?)$"}),
    ];
    for tag in &stats.extra_stat_tags {
        tags.push(json!({"tag_name": tag, "regex": format!(r"({tag}=\.=(.*?);\.;)")}));
    }
    tags.extend([
        json!({"tag_name": "cache", "regex": r"(cache\.(.+?)\.)"}),
        json!({"tag_name": "component", "regex": r"(component\.(.+?)\.)"}),
        json!({"tag_name": "tag", "regex": r"(tag\.(.+?);\.)"}),
        json!({"tag_name": "wasm_filter", "regex": r"(wasm_filter\.(.+?)\.)"}),
        json!({"tag_name": "authz_enforce_result", "regex": r"rbac(\.(allowed|denied))"}),
        json!({"tag_name": "authz_dry_run_action", "regex": r"(\.istio_dry_run_(allow|deny)_)"}),
        json!({"tag_name": "authz_dry_run_result", "regex": r"(\.shadow_(allowed|denied))"}),
    ]);
    let m = &stats.proxy_stats_matcher;
    let mut patterns = vec![json!({"prefix": "reporter="})];
    // Istio appends its required patterns to the configured ones (pkg/bootstrap/config.go of istio/istio,
    // getStatsOptions: requiredEnvoyStatsMatcherInclusionPrefixes, rbacEnvoyStatsMatcherInclusionSuffix,
    // requiredEnvoyStatsMatcherInclusionRegexes), so every sidecar keeps these whatever its mesh config says.
    let prefixes = then_required(&m.inclusion_prefixes, &ISTIO_REQUIRED_PREFIXES);
    patterns.extend(prefixes.map(|p| json!({"prefix": p})));
    let suffixes = then_required(&m.inclusion_suffixes, &ISTIO_REQUIRED_SUFFIXES);
    patterns.extend(suffixes.map(|s| json!({"suffix": s})));
    let regexps = then_required(&m.inclusion_regexps, &ISTIO_REQUIRED_REGEXPS);
    patterns.extend(regexps.map(|r| json!({"safe_regex": {"regex": r}})));
    patterns.extend([json!({"prefix": "component"}), json!({"prefix": "istio"})]);
    json!({
        "use_all_default_tags": false,
        "stats_tags": tags,
        "stats_matcher": {"inclusion_list": {"patterns": patterns}},
    })
}
