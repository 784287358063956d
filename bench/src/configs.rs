//! The Envoy configurations compared: one binary, one listener, one route to the same upstream; only the HTTP
//! filter chain (and, for C, the route's added header) changes. Every bootstrap carries the same runtime layer
//! (the dynamic modules' stat-prefix flag, which only D0/D1 read), so that it is not a difference either.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

/// What the listener's HTTP filter chain holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chain {
    /// A: the router alone.
    Router,
    /// B: A + `grpc_stats` for all methods.
    GrpcStats,
    /// C: B + `header_to_metadata` (working on every request through `on_header_missing`) and a
    /// `request_headers_to_add` on the route: the closest native equivalent of the filter's work.
    Native,
    /// A + a wasm filter with this plugin configuration; `agent` adds the `grayscope_agent` cluster.
    Wasm {
        file: PathBuf,
        plugin_config: String,
        agent: bool,
    },
    /// A + an Envoy dynamic module (`envoy.filters.http.dynamic_modules`) with this filter configuration; never
    /// with the agent cluster (D1 is configured like W1: no reporting).
    Dynamic { file: PathBuf, filter_config: String },
}

/// One configuration of the run: its label (as in the tables), its filter chain, and the request header the load
/// adds (`name: value`), if any.
#[derive(Debug, Clone)]
pub struct Config {
    pub label: String,
    pub what: String,
    pub chain: Chain,
    pub request_header: Option<&'static str>,
}

/// W1 with the tenant dimension on: every id outside an (empty) allowlist, so each request pays the worst case,
/// a keyed hash (HMAC-SHA-256) of its id and the label lookup.
pub const TENANT: &str =
    r#"{"report":{"enabled":false},"tenant":{"header":"x-tenant-id","hash_key":"bench-key-0123456789abcdef"}}"#;
/// The header the load sends to W1t and D1t.
pub const TENANT_HEADER: &str = "x-tenant-id: tenant-0042";

/// The filter's configuration without reporting: W1 and every breakdown variant.
pub const NO_REPORT: &str = r#"{"report":{"enabled":false}}"#;

/// W1 without the per-request work a deployment can configure away: filter state off, the direction and the
/// `service` label fixed (no `xds.listener_direction` nor `xds.cluster_name` read per request).
pub const LEAN: &str = r#"{"report":{"enabled":false},"filter_state":false,"direction":"inbound","service":"bench"}"#;

/// Where the harness finds the filters: `dist/` as `just build` leaves it, wasm variants in `dist/bench/`.
#[derive(Debug, Clone)]
pub struct WasmFiles {
    pub filter: PathBuf,
    pub empty: PathBuf,
    pub variants: PathBuf,
    /// The native build (`dist/libgrayscope_filter.so`, D1) and the empty dynamic module
    /// (`dist/libgrayscope_empty.so`, D0).
    pub native: PathBuf,
    pub native_empty: PathBuf,
}

impl WasmFiles {
    fn variant(&self, stage: &str) -> PathBuf {
        self.variants.join(format!("grayscope_filter-skip-{stage}.wasm"))
    }
}

/// The stages the breakdown skips one at a time (cargo features `bench-skip-<stage>` of `wasm-filter`).
pub const STAGES: &[(&str, &str)] = &[
    (
        "header-read",
        "read and parse the request header map (the decision then sees no headers)",
    ),
    (
        "decide",
        "interface, route, gray version and baggage decision (a fixed decision instead)",
    ),
    ("rewrite", "header rewrites and filter state hostcalls"),
    ("metrics", "every metric hostcall and the metric maps"),
    (
        "log-properties",
        "property and clock reads for the end of the call (response code, cluster, addresses; the clock at both ends)",
    ),
    ("record", "call record building and buffering (reporting on)"),
    (
        "all",
        "every stage above: what remains is the filter's fixed cost over the empty one",
    ),
];

/// The operations `just bench-ops` amplifies (cargo features `bench-x10-<op>` of `wasm-filter`: the operation runs
/// ten extra times per request), with what each one is.
pub const OPS: &[(&str, &str)] = &[
    (
        "decide",
        "the core's decision on the request headers (interface, route, gray version, baggage): wasm code only, no hostcall",
    ),
    (
        "header-read",
        "`proxy_get_header_map_pairs` of the request headers (Envoy serializes the map and calls into the VM to allocate it)",
    ),
    (
        "property",
        "`proxy_get_property` of `xds.listener_direction` (Envoy's attribute lookup, and a call into the VM to allocate the answer)",
    ),
    (
        "clock",
        "`proxy_get_current_time_nanoseconds`: a bare crossing of the V8 boundary with no allocation",
    ),
    (
        "filter-state",
        "`proxy_set_property` of a filter state key (Envoy replaces the filter state object)",
    ),
    (
        "metrics",
        "the core's metric update at the end of a call: its series lookups, Envoy's counter increment and histogram record",
    ),
    (
        "metrics-lookup",
        "the same update against a host that does nothing: the series lookups alone, no hostcall",
    ),
];

/// Resolves a configuration label: A, B, C, W0, W1, W2, D0, D1, W1t and D1t (W1 and D1 with the tenant dimension),
/// W1d (the default `{}` with no agent cluster), W1-lean and D1-lean,
/// W1-before and W2-before (an earlier build, for before/after in one run), `W1-<stage>` / `W2-record` (breakdown
/// variants) or `W1-x10-<op>` (amplified variants, see [`OPS`]).
pub fn resolve(label: &str, wasm: &WasmFiles) -> Result<Config> {
    let wasm_cfg = |file: PathBuf, plugin_config: &str, agent: bool| Chain::Wasm {
        file,
        plugin_config: plugin_config.to_owned(),
        agent,
    };
    let (what, chain) = match label {
        "A" => ("router only".to_owned(), Chain::Router),
        "B" => ("A + grpc_stats (all methods)".to_owned(), Chain::GrpcStats),
        "C" => (
            "B + header_to_metadata + request_headers_to_add".to_owned(),
            Chain::Native,
        ),
        "W0" => (
            "A + empty Rust proxy-wasm filter".to_owned(),
            wasm_cfg(wasm.empty.clone(), "", false),
        ),
        "W1" => (
            format!("A + grayscope `{NO_REPORT}`"),
            wasm_cfg(wasm.filter.clone(), NO_REPORT, false),
        ),
        "W2" => (
            "A + grayscope `{}` reporting to the agent, its kernel programs filtering every event out".to_owned(),
            wasm_cfg(wasm.filter.clone(), "{}", true),
        ),
        // Same chain as W2; the harness points it at the agent that traces connections (W2's: `QUIET_NETNS`).
        "W3" => (
            "W2 with the agent tracing connections (its eBPF programs on every namespace)".to_owned(),
            wasm_cfg(wasm.filter.clone(), "{}", true),
        ),
        "D0" => (
            "A + empty Rust dynamic module".to_owned(),
            Chain::Dynamic {
                file: wasm.native_empty.clone(),
                filter_config: String::new(),
            },
        ),
        "D1" => (
            format!("A + grayscope native build `{NO_REPORT}`"),
            Chain::Dynamic {
                file: wasm.native.clone(),
                filter_config: NO_REPORT.to_owned(),
            },
        ),
        "W1t" => (
            format!("A + grayscope `{TENANT}`, `{TENANT_HEADER}` on every request"),
            wasm_cfg(wasm.filter.clone(), TENANT, false),
        ),
        "D1t" => (
            format!("A + grayscope native build `{TENANT}`, `{TENANT_HEADER}` on every request"),
            Chain::Dynamic {
                file: wasm.native.clone(),
                filter_config: TENANT.to_owned(),
            },
        ),
        "W1d" => (
            "A + grayscope `{}` in an Envoy without a grayscope_agent cluster".to_owned(),
            wasm_cfg(wasm.filter.clone(), "{}", false),
        ),
        "W1-lean" => (
            format!("A + grayscope `{LEAN}`"),
            wasm_cfg(wasm.filter.clone(), LEAN, false),
        ),
        "D1-lean" => (
            format!("A + grayscope native build `{LEAN}`"),
            Chain::Dynamic {
                file: wasm.native.clone(),
                filter_config: LEAN.to_owned(),
            },
        ),
        "W1-before" => (
            "W1 with the filter as it was before this branch's optimisations".to_owned(),
            wasm_cfg(wasm.variants.join("grayscope_filter-before.wasm"), NO_REPORT, false),
        ),
        "W2-before" => (
            "W2 with the filter as it was before this branch's optimisations".to_owned(),
            wasm_cfg(wasm.variants.join("grayscope_filter-before.wasm"), "{}", true),
        ),
        "W2-record" => (
            "W2 built with `bench-skip-record`".to_owned(),
            wasm_cfg(wasm.variant("record"), "{}", true),
        ),
        // The native build's variants, for before/after and breakdown runs by hand: `dist/bench/libgrayscope_filter-
        // <name>.so` (e.g. `before`: an earlier build; `skip-metrics`: built with `bench-skip-metrics`), like D1.
        other if other.starts_with("D1-") => (
            format!("D1 with dist/bench/libgrayscope_filter-{}.so", &other[3..]),
            Chain::Dynamic {
                file: wasm.variants.join(format!("libgrayscope_filter-{}.so", &other[3..])),
                filter_config: NO_REPORT.to_owned(),
            },
        ),
        other => match other.strip_prefix("W1-") {
            Some(op) if op.strip_prefix("x10-").is_some_and(|op| OPS.iter().any(|(o, _)| *o == op)) => (
                format!("W1 built with `bench-{op}` (one operation ten extra times per request)"),
                wasm_cfg(wasm.variants.join(format!("grayscope_filter-{op}.wasm")), NO_REPORT, false),
            ),
            Some(stage) if STAGES.iter().any(|(s, _)| *s == stage) && stage != "record" => (
                format!("W1 built with `bench-skip-{stage}`"),
                wasm_cfg(wasm.variant(stage), NO_REPORT, false),
            ),
            _ => bail!(
                "unknown configuration {other:?} (A, B, C, W0, W1, W2, W3, D0, D1, W1t, D1t, W1d, W1-lean, D1-lean, W1-<stage>, W2-record, W1-x10-<op>, D1-<name>)"
            ),
        },
    };
    if let Chain::Wasm { file, .. } | Chain::Dynamic { file, .. } = &chain {
        if !file.exists() {
            bail!(
                "{label}: {} not found (run `just bench`, which builds it)",
                file.display()
            );
        }
    }
    let request_header = matches!(label, "W1t" | "D1t").then_some(TENANT_HEADER);
    Ok(Config {
        label: label.to_owned(),
        what,
        chain,
        request_header,
    })
}

impl Config {
    /// Whether this configuration needs the agent running.
    pub fn needs_agent(&self) -> bool {
        matches!(self.chain, Chain::Wasm { agent: true, .. })
    }

    /// The Envoy bootstrap for this configuration.
    pub fn bootstrap(&self, upstream_port: u16, agent_socket: &Path) -> String {
        let router = r#"
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"#;
        let grpc_stats = r#"
          - name: envoy.filters.http.grpc_stats
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig
              emit_filter_state: true
              stats_for_all_methods: true"#;
        let header_to_metadata = r#"
          - name: envoy.filters.http.header_to_metadata
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_to_metadata.v3.Config
              request_rules:
              - header: x-gray-version
                on_header_present: {metadata_namespace: grayscope, key: gray_version, type: STRING}
                on_header_missing: {metadata_namespace: grayscope, key: gray_version, value: none, type: STRING}
                remove: false"#;
        let (filters, headers_to_add) = match &self.chain {
            Chain::Router => (router.to_owned(), ""),
            Chain::GrpcStats => (format!("{grpc_stats}{router}"), ""),
            Chain::Native => (
                format!("{grpc_stats}{header_to_metadata}{router}"),
                r#"
                request_headers_to_add:
                - header: {key: x-grayscope-seen, value: "%REQ(x-gray-version)%"}
                  append_action: OVERWRITE_IF_EXISTS_OR_ADD"#,
            ),
            Chain::Wasm {
                file, plugin_config, ..
            } => (
                format!(
                    r#"
          - name: envoy.filters.http.wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: bench
                root_id: bench
                vm_config:
                  vm_id: bench
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: "{}"}}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{plugin_config}'{router}"#,
                    file.display()
                ),
                "",
            ),
            // As the end-to-end tests load it (`FilterBuild::Native`): the module by file name, so no
            // ENVOY_DYNAMIC_MODULES_SEARCH_PATH is needed.
            Chain::Dynamic { file, filter_config } => (
                format!(
                    r#"
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{module: {{local: {{filename: "{}"}}}}}}
              filter_name: bench
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{filter_config}'{router}"#,
                    file.display()
                ),
                "",
            ),
        };
        let agent_cluster = if self.needs_agent() {
            format!(
                r#"
  - name: grayscope_agent
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: grayscope_agent
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{pipe: {{path: "{}"}}}}}}}}]}}]"#,
                agent_socket.display()
            )
        } else {
            String::new()
        };
        format!(
            r#"# grayscope bench, configuration {label}: {what}
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
layered_runtime:
  layers:
  - name: static
    static_layer:
      envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix: true
static_resources:
  listeners:
  - name: bench
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    # As Istio sets it on a sidecar's listeners: the filter reads the addresses of the call's direction only.
    traffic_direction: OUTBOUND
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: bench
          codec_type: AUTO
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {{prefix: "/bench.Bench/"}}
                route: {{cluster: upstream_grpc, timeout: 10s}}{headers_to_add}
              - match: {{prefix: "/"}}
                route: {{cluster: upstream, timeout: 10s}}{headers_to_add}
          http_filters:{filters}
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}}}]}}]
  # The gRPC load (h2load): h2c to the same upstream port, which tells HTTP/2 by its preface.
  - name: upstream_grpc
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {{http2_protocol_options: {{}}}}
    load_assignment:
      cluster_name: upstream_grpc
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}}}]}}]{agent_cluster}
"#,
            label = self.label,
            what = self.what,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files() -> WasmFiles {
        WasmFiles {
            filter: PathBuf::from("/"),
            empty: PathBuf::from("/"),
            variants: PathBuf::from("/nonexistent"),
            native: PathBuf::from("/"),
            native_empty: PathBuf::from("/nonexistent/libgrayscope_empty.so"),
        }
    }

    #[test]
    fn unknown_labels_and_missing_variants_are_refused_by_name() {
        let e = resolve("W9", &files()).unwrap_err().to_string();
        assert!(e.contains("unknown configuration \"W9\""), "{e}");
        let e = resolve("W1-metrics", &files()).unwrap_err().to_string();
        assert!(e.contains("grayscope_filter-skip-metrics.wasm not found"), "{e}");
        let e = resolve("W1-x10-clock", &files()).unwrap_err().to_string();
        assert!(e.contains("grayscope_filter-x10-clock.wasm not found"), "{e}");
        let e = resolve("W1-x10-nothing", &files()).unwrap_err().to_string();
        assert!(e.contains("unknown configuration \"W1-x10-nothing\""), "{e}");
        let e = resolve("D0", &files()).unwrap_err().to_string();
        assert!(e.contains("D0: /nonexistent/libgrayscope_empty.so not found"), "{e}");
    }

    #[test]
    fn d1_loads_the_native_build_configured_like_w1() {
        let d1 = resolve("D1", &files())
            .unwrap()
            .bootstrap(1, Path::new("/tmp/agent.sock"));
        assert!(d1.contains("envoy.filters.http.dynamic_modules") && d1.contains(&format!("value: '{NO_REPORT}'")));
        assert!(d1.contains("dynamic_modules_strip_custom_stat_prefix: true"));
        assert!(!d1.contains("name: grayscope_agent"));
    }

    #[test]
    fn only_the_tenant_configurations_send_a_tenant_header() {
        for label in ["W1t", "D1t"] {
            let c = resolve(label, &files()).unwrap();
            assert_eq!(c.request_header, Some(TENANT_HEADER));
            assert!(c
                .bootstrap(1, Path::new("/tmp/a.sock"))
                .contains(r#""tenant":{"header":"x-tenant-id""#));
        }
        assert_eq!(resolve("W1", &files()).unwrap().request_header, None);
    }

    #[test]
    fn only_the_reporting_configurations_get_the_agent_cluster() {
        let sock = Path::new("/tmp/agent.sock");
        let w2 = resolve("W2", &files()).unwrap().bootstrap(1, sock);
        assert!(w2.contains("name: grayscope_agent") && w2.contains("/tmp/agent.sock"));
        let w1d = resolve("W1d", &files()).unwrap().bootstrap(1, sock);
        assert!(!w1d.contains("name: grayscope_agent") && w1d.contains("value: '{}'"));
        let c = resolve("C", &files()).unwrap().bootstrap(1, sock);
        assert!(c.contains("on_header_missing") && c.contains("request_headers_to_add"));
    }
}
