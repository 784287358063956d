//! The Envoy configuration that `istio/` installs, loaded by the real Envoy with the built filter, under the stats
//! configuration Istio's bootstrap gives every sidecar:
//! - the HTTP filter patches of `istio/03-envoyfilter-http-filter.yaml` on an INBOUND and an OUTBOUND listener,
//!   each before the router, as Istio inserts them (`INSERT_BEFORE envoy.filters.http.router`);
//! - the `grayscope_agent` cluster of `istio/02-agent-cluster.yaml`, its socket path moved into a temp dir;
//! - `stats_config` rendered from `istio/01-stats-meshconfig.yaml` the way Istio's bootstrap template renders it
//!   (Istio's own tag rules and inclusion list, plus ours);
//! - upstream clusters named the way Istio names them (`outbound|8080||orders.shop.svc.cluster.local`).
//!
//! Real HTTP traffic then shows every grayscope series with all its labels, asserted as whole exposition lines, and
//! the VM heartbeat beside Envoy's worker count (`server.` is one of the prefixes Istio always keeps). The same Envoy
//! with Istio's default stats settings keeps the series too (Istio always keeps the `wasm` prefix, and so
//! `wasmcustom.`), but with their labels glued into their names: the mesh config's tags are what label them.
//! The filter built from `istio/03-wasmplugin.yaml` the way Istio builds it counts calls the same way. With the real
//! agent (root) on the socket, the reports travel through the CLUSTER patch and fill its method table. The native
//! build placed by `istio/native/03-envoyfilter-native.yaml` (its HTTP filter and BOOTSTRAP patches) shows the
//! same series under the same names. With a `tenant` section in the filter's configuration, the bucket patch of
//! `istio/01-tenant-histogram-buckets.yaml` gives the per-tenant histogram its heat-map buckets and
//! `extraStatTags` its `tenant` label.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod istio_support;

use integration_tests::{client::Client, envoy::Envoy, paths, prom, upstream::Upstream};
use istio_support::{doc, istio_stats_config, mesh_values, ProxyStats};
use serde_json::{json, Value};

const HEARTBEAT: &str = wasm_filter_core::heartbeat::VM_UPTIME;
const OUTBOUND_CLUSTER: &str = "outbound|8080||orders.shop.svc.cluster.local";
const INBOUND_CLUSTER: &str = "inbound|8080||";

/// The HTTP filter each EnvoyFilter patch inserts, by match context, with the module path of this machine.
fn filter_patches() -> Vec<(String, Value)> {
    let filter = doc("03-envoyfilter-http-filter.yaml");
    let mut out = Vec::new();
    for patch in filter["spec"]["configPatches"].as_array().expect("patches") {
        assert_eq!(patch["applyTo"], "HTTP_FILTER");
        assert_eq!(patch["patch"]["operation"], "INSERT_BEFORE");
        assert_eq!(
            patch["match"]["listener"]["filterChain"]["filter"]["subFilter"]["name"],
            "envoy.filters.http.router"
        );
        let mut value = patch["patch"]["value"].clone();
        value["typed_config"]["config"]["vm_config"]["code"]["local"]["filename"] =
            json!(paths::wasm().display().to_string());
        out.push((patch["match"]["context"].as_str().expect("context").to_owned(), value));
    }
    out
}

/// The `grayscope_agent` cluster of the CLUSTER patch, its socket moved to `socket`.
fn agent_cluster(socket: &str) -> Value {
    let patch = &doc("02-agent-cluster.yaml")["spec"]["configPatches"][0];
    assert_eq!(
        (patch["applyTo"].as_str(), patch["patch"]["operation"].as_str()),
        (Some("CLUSTER"), Some("ADD"))
    );
    let mut cluster = patch["patch"]["value"].clone();
    cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]["pipe"]["path"] =
        json!(socket);
    cluster
}

fn listener(name: &str, direction: &str, filter: &Value, cluster: &str) -> Value {
    json!({
        "name": name,
        "traffic_direction": direction,
        "address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}},
        "filter_chains": [{"filters": [{
            "name": "envoy.filters.network.http_connection_manager",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                "stat_prefix": name,
                "codec_type": "AUTO",
                "route_config": {"virtual_hosts": [{"name": "all", "domains": ["*"], "routes": [
                    {"match": {"prefix": "/"}, "route": {"cluster": cluster, "timeout": "10s"}}
                ]}]},
                "http_filters": [filter, {
                    "name": "envoy.filters.http.router",
                    "typed_config": {"@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}
                }]
            }
        }]}]
    })
}

fn upstream_cluster(name: &str, port: u16) -> Value {
    json!({
        "name": name,
        "type": "STATIC",
        "load_assignment": {"cluster_name": name, "endpoints": [{"lb_endpoints": [{"endpoint": {"address":
            {"socket_address": {"address": "127.0.0.1", "port_value": port}}}}]}]}
    })
}

/// The bootstrap: Istio's stats_config for `stats`, the two patched listeners, the agent cluster, the upstreams.
fn bootstrap(stats: &ProxyStats, upstream_port: u16, socket: &str) -> String {
    let patches = filter_patches();
    let by_context = |ctx: &str| {
        patches
            .iter()
            .find(|(c, _)| c == ctx)
            .map(|(_, v)| v.clone())
            .expect(ctx)
    };
    bootstrap_with(
        stats,
        upstream_port,
        socket,
        &by_context("SIDECAR_INBOUND"),
        &by_context("SIDECAR_OUTBOUND"),
    )
}

/// The HTTP filter Istio builds from `istio/03-wasmplugin.yaml` once istio-agent has fetched the module to a local
/// file (pilot's WasmPlugin conversion): filter config named `<namespace>.<name>`, `root_id` = `pluginName`, the
/// `pluginConfig` as a JSON `StringValue`, `failure_policy` from `failStrategy` (as Istio 1.25 and later set it;
/// earlier ones set the deprecated `fail_open`).
fn wasmplugin_filter() -> Value {
    let plugin = doc("03-wasmplugin.yaml");
    let spec = &plugin["spec"];
    let name = format!(
        "{}.{}",
        plugin["metadata"]["namespace"].as_str().expect("ns"),
        plugin["metadata"]["name"].as_str().expect("name")
    );
    json!({
        "name": name,
        "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
            "config": {
                "name": name,
                "root_id": spec["pluginName"],
                "failure_policy": match spec["failStrategy"].as_str() {
                    Some("FAIL_CLOSE") | None => "FAIL_CLOSED",
                    Some(other) => other,
                },
                "vm_config": {
                    "runtime": "envoy.wasm.runtime.v8",
                    "code": {"local": {"filename": paths::wasm().display().to_string()}}
                },
                "configuration": {
                    "@type": "type.googleapis.com/google.protobuf.StringValue",
                    "value": spec["pluginConfig"].to_string()
                }
            }
        }
    })
}

fn bootstrap_with(stats: &ProxyStats, upstream_port: u16, socket: &str, inbound: &Value, outbound: &Value) -> String {
    let config = json!({
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": 0}}},
        // Not in Istio's bootstrap: makes histograms current on each admin read, so the test needs no timing.
        "stats_flush_on_admin": true,
        "stats_config": istio_stats_config(stats),
        "static_resources": {
            "listeners": [
                listener("virtualInbound", "INBOUND", inbound, INBOUND_CLUSTER),
                listener("virtualOutbound", "OUTBOUND", outbound, OUTBOUND_CLUSTER),
            ],
            "clusters": [
                upstream_cluster(INBOUND_CLUSTER, upstream_port),
                upstream_cluster(OUTBOUND_CLUSTER, upstream_port),
                agent_cluster(socket),
            ]
        }
    });
    // JSON is YAML: the harness writes it as the bootstrap file.
    serde_json::to_string_pretty(&config).expect("bootstrap json")
}

/// Sends the traffic every series needs; returns the exposition.
fn run_traffic(envoy: &Envoy) -> String {
    let mut inbound = Client::new(envoy.listener("virtualInbound"));
    for n in 0..3 {
        assert_eq!(
            inbound
                .get(&format!("/api/v1/orders/{n}"), &[("x-gray-version", b"v2")])
                .status,
            200
        );
    }
    assert_eq!(
        inbound
            .get(
                "/api/v1/orders/9",
                &[("x-gray-version", b"v2"), ("x-respond-status", b"503")]
            )
            .status,
        503
    );
    // An invalid version in the header, and a malformed baggage member: counted, requests unaffected.
    assert_eq!(
        inbound
            .get("/api/v1/orders/5", &[("x-gray-version", b"bad version!")])
            .status,
        200
    );
    let mut outbound = Client::new(envoy.listener("virtualOutbound"));
    assert_eq!(
        outbound
            .get("/api/v1/carts/17", &[("baggage", b"gray.version=v1,=broken")])
            .status,
        200
    );
    // The report metrics are published by the filter's tick, up to a tick after the calls: wait for them.
    let produced = "grayscope_report_records_total{outcome=\"produced\"} 6";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = envoy.prometheus();
        if text.lines().any(|l| l == produced) || std::time::Instant::now() > deadline {
            return text;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Every grayscope series [`run_traffic`] produces, as whole exposition lines (both builds show the same).
/// Envoy warns about each deprecated field it loads ("will be removed from Envoy soon"): the installed
/// configuration must use none.
fn assert_no_deprecated_field(envoy: &Envoy) {
    let log = envoy.log_with("configured:");
    let deprecated: Vec<&str> = log.lines().filter(|l| l.contains("Deprecated field")).collect();
    assert!(deprecated.is_empty(), "{deprecated:#?}");
}

fn every_series() -> Vec<String> {
    let calls = |dir: &str, svc: &str, method: &str, version: &str, status: &str, n: u32| {
        format!("grayscope_interface_calls_total{{direction=\"{dir}\",rpc_system=\"http\",service=\"{svc}\",method=\"{method}\",gray_version=\"{version}\",status=\"{status}\"}} {n}")
    };
    vec![
        calls("inbound", INBOUND_CLUSTER, "GET /api/v1/orders/{id}", "v2", "2xx", 3),
        calls("inbound", INBOUND_CLUSTER, "GET /api/v1/orders/{id}", "v2", "5xx", 1),
        calls("inbound", INBOUND_CLUSTER, "GET /api/v1/orders/{id}", "none", "2xx", 1),
        calls("outbound", OUTBOUND_CLUSTER, "GET /api/v1/carts/{id}", "v1", "2xx", 1),
        format!("grayscope_interface_call_duration_milliseconds_count{{direction=\"inbound\",rpc_system=\"http\",service=\"{INBOUND_CLUSTER}\",method=\"GET /api/v1/orders/{{id}}\",gray_version=\"v2\"}} 4"),
        format!("grayscope_interface_call_duration_milliseconds_bucket{{direction=\"outbound\",rpc_system=\"http\",service=\"{OUTBOUND_CLUSTER}\",method=\"GET /api/v1/carts/{{id}}\",gray_version=\"v1\",le=\"+Inf\"}} 1"),
        "grayscope_gray_version_invalid_total{source=\"header\",reason=\"bad_char\"} 1".to_owned(),
        "grayscope_gray_version_invalid_total{source=\"baggage\",reason=\"empty\"} 0".to_owned(),
        "grayscope_baggage_members_dropped_total{cause=\"malformed\"} 1".to_owned(),
        "grayscope_gray_version_overflow_total{} 0".to_owned(),
        "grayscope_interface_overflow_total{} 0".to_owned(),
        "grayscope_report_records_total{outcome=\"produced\"} 6".to_owned(),
    ]
}

#[test]
fn the_installed_config_under_istios_bootstrap_shows_every_grayscope_series_with_all_its_labels() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock").display().to_string();
    let stats = mesh_values().mesh_config.default_config;
    let envoy = Envoy::start(&bootstrap(&stats, upstream.addr.port(), &socket));
    assert_no_deprecated_field(&envoy);
    let text = run_traffic(&envoy);
    let lines = every_series();
    for line in &lines {
        prom::assert_line(&text, line);
    }
    // Nothing of ours is left with a label glued into its name (a missing tag rule) or dropped by the matcher.
    // (Envoy's own stats of the plugin, `envoy_wasm_grayscope_vm_reload*`, which Istio's `wasm` prefix keeps, are
    // not the filter's.)
    let ours: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("grayscope") && !l.trim_start_matches("# TYPE ").starts_with("envoy_wasm_"))
        .collect();
    let mangled: Vec<&&str> = ours
        .iter()
        .filter(|l| !l.starts_with("grayscope_") && !l.starts_with("# TYPE grayscope_"))
        .collect();
    assert!(
        mangled.is_empty(),
        "series whose labels were not extracted:\n{mangled:#?}"
    );
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 6.0);
    // What GrayscopeFilterVmFailed compares: the VMs' heartbeat (this Envoy has 1 worker, so 2 VMs beat, each about
    // 1000 ms a second), one series labelled with the EnvoyFilter's plugin name, and Envoy's worker count, which
    // Istio's required `server` prefix keeps.
    prom::assert_line(&text, "envoy_server_concurrency{} 1");
    let beats = prom::samples(&text, HEARTBEAT);
    assert!(
        beats.len() == 1 && beats[0].starts_with(&format!("{HEARTBEAT}{{plugin=\"grayscope\"}} ")),
        "{beats:?}"
    );
    let (beat, at) = (prom::sum(&text, HEARTBEAT), std::time::Instant::now());
    std::thread::sleep(std::time::Duration::from_secs(5));
    let later = envoy.admin_get("/stats/prometheus");
    prom::assert_line(&later, &format!("# TYPE {HEARTBEAT} counter"));
    let vms = (prom::sum(&later, HEARTBEAT) - beat) / 1000.0 / at.elapsed().as_secs_f64();
    assert!((1.5..2.5).contains(&vms), "{vms} live VMs, want 2");
    // The agent is not there: the reports fail fast and are dropped (requests were unaffected: all answered
    // above). Waits for the batch to come back as UNAVAILABLE, then the report series are exact too.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let dropped = "grayscope_report_records_total{outcome=\"dropped\"} 6";
    let text = loop {
        let text = envoy.prometheus();
        if text.lines().any(|l| l == dropped) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    prom::assert_line(&text, dropped);
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"sent\"} 0");
    prom::assert_line(&text, "grayscope_report_records_buffered{} 0");
    let parsed = prom::parse(&text);
    assert!(
        parsed.iter().any(|s| s.name == "grayscope_report_records_total"),
        "the exposition parses with our series"
    );
}

#[test]
fn with_istios_default_stats_settings_the_series_survive_with_their_labels_glued_into_their_names() {
    // Istio's required `wasm` prefix keeps every `wasmcustom.` stat, so the mesh config's inclusion regex is not what
    // makes the wasm build's series appear: its `extraStatTags` are what give them their labels.
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock").display().to_string();
    let envoy = Envoy::start(&bootstrap(&ProxyStats::default(), upstream.addr.port(), &socket));
    let mut inbound = Client::new(envoy.listener("virtualInbound"));
    let answer = inbound.get(
        "/api/v1/orders/1",
        &[("x-test-id", b"default"), ("x-gray-version", b"v2")],
    );
    assert_eq!(answer.status, 200);
    let text = envoy.prometheus();
    prom::assert_line(
        &text,
        "direction___inbound___rpc_system___http___service___inbound_8080_____method___GET__api_v1_orders__id____gray_version___v2___status___2xx___grayscope_interface_calls_total{} 1",
    );
    assert!(
        prom::samples(&text, "grayscope_interface_calls_total").is_empty(),
        "labelled series without Istio's tags:\n{text}"
    );
    // Envoy's worker count, unlabelled, needs no tag (`server.` is one of Istio's required prefixes); the heartbeat's
    // `plugin` label is glued into its name like every other label: GrayscopeFilterVmFailed needs the tags too.
    prom::assert_line(&text, "envoy_server_concurrency{} 1");
    prom::assert_line(
        &text,
        "# TYPE plugin___grayscope___grayscope_vm_uptime_milliseconds_total counter",
    );
    assert!(prom::samples(&text, HEARTBEAT).is_empty(), "{text}");
    assert_eq!(upstream.request("default").all("baggage"), ["gray.version=v2"]);
}

#[test]
fn the_wasmplugin_as_istio_renders_it_counts_calls_with_all_their_labels() {
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock").display().to_string();
    let stats = mesh_values().mesh_config.default_config;
    let filter = wasmplugin_filter();
    let envoy = Envoy::start(&bootstrap_with(&stats, upstream.addr.port(), &socket, &filter, &filter));
    assert_no_deprecated_field(&envoy);
    let mut inbound = Client::new(envoy.listener("virtualInbound"));
    assert_eq!(
        inbound.get("/api/v1/orders/1", &[("x-gray-version", b"v3")]).status,
        200
    );
    let mut outbound = Client::new(envoy.listener("virtualOutbound"));
    assert_eq!(
        outbound.get("/api/v1/carts/2", &[("x-gray-version", b"v3")]).status,
        200
    );
    let text = envoy.prometheus();
    prom::assert_line(&text, &format!("grayscope_interface_calls_total{{direction=\"inbound\",rpc_system=\"http\",service=\"{INBOUND_CLUSTER}\",method=\"GET /api/v1/orders/{{id}}\",gray_version=\"v3\",status=\"2xx\"}} 1"));
    prom::assert_line(&text, &format!("grayscope_interface_calls_total{{direction=\"outbound\",rpc_system=\"http\",service=\"{OUTBOUND_CLUSTER}\",method=\"GET /api/v1/carts/{{id}}\",gray_version=\"v3\",status=\"2xx\"}} 1"));
    // The heartbeat names the plugin as Istio names the filter configuration: `<namespace>.<name>` of the
    // WasmPlugin, which is what GrayscopeFilterVmFailed's `plugin` label then says.
    let beats = prom::samples(&text, HEARTBEAT);
    assert!(
        beats.len() == 1 && beats[0].starts_with(&format!("{HEARTBEAT}{{plugin=\"istio-system.grayscope\"}} ")),
        "{beats:?}"
    );
}

#[test]
fn the_agent_cluster_patch_carries_the_reports_to_the_real_agent() {
    if !integration_tests::agent::privileged() {
        return;
    }
    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock");
    let agent = integration_tests::agent::Agent::start(&socket, &[]);
    let stats = mesh_values().mesh_config.default_config;
    let envoy = Envoy::start(&bootstrap(&stats, upstream.addr.port(), &socket.display().to_string()));
    let mut inbound = Client::new(envoy.listener("virtualInbound"));
    for n in 0..4 {
        assert_eq!(
            inbound
                .get(&format!("/api/v1/orders/{n}"), &[("x-gray-version", b"v2")])
                .status,
            200
        );
    }
    let sent = "grayscope_report_records_total{outcome=\"sent\"} 4";
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let text = loop {
        let text = envoy.prometheus();
        if text.lines().any(|l| l == sent) || std::time::Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    prom::assert_line(&text, sent);
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 0");
    // The agent has the calls in its method table, under the interface the filter named.
    let rt = integration_tests::agent::runtime();
    let methods = rt.block_on(async {
        agent
            .client()
            .await
            .list_methods(proto::v1::ListMethodsRequest::default())
            .await
            .expect("ListMethods")
            .into_inner()
    });
    let calls: u64 = methods
        .methods
        .iter()
        .filter(|m| m.service == INBOUND_CLUSTER && m.method == "GET /api/v1/orders/{id}" && m.gray_version == "v2")
        .map(|m| m.calls)
        .sum();
    assert_eq!(calls, 4, "{:#?}", methods.methods);
}

/// The proxy stats matcher regexp the native build's series need (Envoy matches the stored name,
/// `dynamicmodulescustom.grayscope_…`), in the default mesh config and named in `istio/native/README.md`.
const NATIVE_INCLUSION_REGEX: &str = r"dynamicmodulescustom\..*grayscope_.*";

/// Protobuf MERGE as Istio applies a BOOTSTRAP patch: messages merged field by field, repeated fields appended.
fn proto_merge(into: &mut Value, patch: &Value) {
    match (into, patch) {
        (Value::Object(a), Value::Object(b)) => {
            for (k, v) in b {
                proto_merge(a.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (Value::Array(a), Value::Array(b)) => a.extend(b.iter().cloned()),
        (a, b) => *a = b.clone(),
    }
}

#[test]
fn the_native_envoyfilter_under_istios_bootstrap_shows_the_same_series_under_the_same_names() {
    let readme = std::fs::read_to_string(paths::root().join("istio/native/README.md")).expect("native README");
    assert!(
        readme.contains(NATIVE_INCLUSION_REGEX),
        "the README names the stats regexp"
    );
    let native = doc("native/03-envoyfilter-native.yaml");
    let patches = native["spec"]["configPatches"].as_array().expect("patches");
    let filter = |ctx: &str| {
        let p = patches
            .iter()
            .find(|p| p["applyTo"] == "HTTP_FILTER" && p["match"]["context"] == ctx)
            .expect(ctx);
        let mut value = p["patch"]["value"].clone();
        value["typed_config"]["dynamic_module_config"]["module"]["local"]["filename"] =
            json!(paths::native().display().to_string());
        value
    };
    let boot = patches
        .iter()
        .find(|p| p["applyTo"] == "BOOTSTRAP")
        .expect("BOOTSTRAP patch");

    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock").display().to_string();
    // The default mesh config admits the native build's series as it is.
    let stats = mesh_values().mesh_config.default_config;
    assert!(
        stats
            .proxy_stats_matcher
            .inclusion_regexps
            .contains(&NATIVE_INCLUSION_REGEX.to_owned()),
        "istio/01-stats-meshconfig.yaml admits {NATIVE_INCLUSION_REGEX}"
    );
    let rendered = bootstrap_with(
        &stats,
        upstream.addr.port(),
        &socket,
        &filter("SIDECAR_INBOUND"),
        &filter("SIDECAR_OUTBOUND"),
    );
    let mut config: Value = serde_json::from_str(&rendered).expect("bootstrap json");
    proto_merge(&mut config, &boot["patch"]["value"]);
    let envoy = Envoy::start(&serde_json::to_string_pretty(&config).expect("json"));
    let text = run_traffic(&envoy);
    for line in every_series() {
        prom::assert_line(&text, &line);
    }
    // The runtime flag took: no series keeps the dynamic modules' namespace.
    let prefixed: Vec<&str> = text.lines().filter(|l| l.contains("dynamicmodulescustom")).collect();
    assert!(
        prefixed.is_empty(),
        "series not renamed by the runtime flag:\n{prefixed:#?}"
    );
    assert_eq!(prom::sum(&text, "grayscope_interface_calls_total"), 6.0);
    // A dynamic module has no VM that could fail alone (a panic there ends Envoy): no heartbeat, and so no
    // GrayscopeFilterVmFailed, for the native build.
    assert!(
        prom::samples(&text, HEARTBEAT).is_empty(),
        "a heartbeat in the native build"
    );
    prom::assert_line(&text, "envoy_server_concurrency{} 1");
}

#[test]
fn the_tenant_histogram_under_istios_bootstrap_gets_its_label_and_the_heat_map_buckets() {
    // The installed filter with a `tenant` section added to its configuration, as a user turns the dimension on.
    let with_tenant = |mut filter: Value| {
        let config = &mut filter["typed_config"]["config"]["configuration"]["value"];
        let mut plugin: Value = serde_json::from_str(config.as_str().expect("configuration")).expect("json");
        plugin["tenant"] = json!({"header": "x-tenant-id", "tenants": {"acme-7731": "enterprise"}});
        *config = json!(plugin.to_string());
        filter
    };
    let patches = filter_patches();
    let inbound = patches
        .iter()
        .find(|(c, _)| c == "SIDECAR_INBOUND")
        .expect("inbound")
        .1
        .clone();
    let outbound = patches
        .iter()
        .find(|(c, _)| c == "SIDECAR_OUTBOUND")
        .expect("outbound")
        .1
        .clone();
    let buckets = doc("01-tenant-histogram-buckets.yaml");
    let boot = &buckets["spec"]["configPatches"][0];
    assert_eq!(
        (boot["applyTo"].as_str(), boot["patch"]["operation"].as_str()),
        (Some("BOOTSTRAP"), Some("MERGE"))
    );

    let upstream = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = dir.path().join("agent.sock").display().to_string();
    let stats = mesh_values().mesh_config.default_config;
    let rendered = bootstrap_with(
        &stats,
        upstream.addr.port(),
        &socket,
        &with_tenant(inbound),
        &with_tenant(outbound),
    );
    let mut config: Value = serde_json::from_str(&rendered).expect("bootstrap json");
    proto_merge(&mut config, &boot["patch"]["value"]);
    let envoy = Envoy::start(&serde_json::to_string_pretty(&config).expect("json"));
    let mut inbound = Client::new(envoy.listener("virtualInbound"));
    for _ in 0..2 {
        assert_eq!(inbound.get("/orders/1", &[("x-tenant-id", b"acme-7731")]).status, 200);
    }
    let text = envoy.prometheus();
    let series = |le: &str| {
        format!(
            "grayscope_tenant_call_duration_milliseconds_bucket{{direction=\"inbound\",rpc_system=\"http\",\
             service=\"{INBOUND_CLUSTER}\",method=\"GET /orders/{{id}}\",tenant=\"enterprise\",le=\"{le}\"}} 2"
        )
    };
    // `tenant` is a label (extraStatTags), and the buckets are the heat map's: 2, 3 and 7 are not Envoy defaults.
    for le in ["10000", "+Inf"] {
        prom::assert_line(&text, &series(le));
    }
    let les: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("grayscope_tenant_call_duration_milliseconds_bucket{"))
        .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
        .collect();
    let want = boot["patch"]["value"]["stats_config"]["histogram_bucket_settings"][0]["buckets"]
        .as_array()
        .expect("buckets")
        .iter()
        .map(|b| b.to_string())
        .chain(["+Inf".to_owned()])
        .collect::<Vec<_>>();
    assert_eq!(les, want);
    assert!(!text.contains("acme-7731"));
}
