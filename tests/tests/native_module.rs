//! What is particular to the native build (an Envoy dynamic module) through the real Envoy: the module is built
//! for this Envoy's ABI, and a bad configuration is refused with the field named, as in `configuration.rs` for the
//! wasm build. Every other suite runs on this build through its `native_<suite>.rs` twin.

use integration_tests::{client::Client, envoy::Envoy, paths, prom, stack::Stack, upstream::Upstream};

#[test]
fn the_module_matches_envoys_abi_version_and_configures() {
    let s = Stack::start("{}");
    let log = s.envoy.log_with("grayscope: configured");
    assert!(
        log.contains("[info][dynamic_modules]") && log.contains("Dynamic module ABI version v0.2.0 matched."),
        "{log}"
    );
    assert!(
        log.contains("grayscope: configured: 0 route templates, max_interfaces 256"),
        "{log}"
    );
}

#[test]
fn an_invalid_configuration_is_refused_and_the_log_names_the_field() {
    let cases = [
        (
            r#"{"gray":{"max_versions":0}}"#,
            "gray.max_versions: must be between 1 and 10000, got 0",
        ),
        (r#"{"gray":{"headr":"x"}}"#, "gray.headr: unknown field `headr`"),
        (
            r#"{"gray":{"allowed_versions":["v1","other"]}}"#,
            "gray.allowed_versions[1]: \"other\" is reserved",
        ),
        (
            r#"{"gray":{"header":"Content-Type"}}"#,
            "gray.header: \"content-type\" is not the filter's to rewrite",
        ),
        (
            r#"{"report":{"cluster":""}}"#,
            "report.cluster: must be an Envoy cluster name",
        ),
    ];
    for (config, expected) in cases {
        let (line, log) = Stack::refused(config, expected);
        assert!(line.contains("[error][dynamic_modules]"), "{config}: {line}");
        assert!(log.contains("Failed to initialize dynamic module"), "{config}: {log}");
    }
}

#[test]
fn the_shipped_native_bootstrap_passes_envoy_validation() {
    // It refers to the module as dist/libgrayscope_filter.so, relative to the workspace root; Envoy loads it to
    // validate (a missing module fails validation).
    let out = std::process::Command::new(integration_tests::paths::envoy())
        .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"])
        .arg(integration_tests::paths::root().join("wasm-filter/native/envoy.yaml"))
        .current_dir(integration_tests::paths::root())
        .output()
        .expect("envoy --mode validate");
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && text.contains("OK"), "{text}");
}

/// The empty module (the benchmark's D0) loads in Envoy 1.40 with the same bootstrap and passes requests through.
#[test]
fn the_empty_module_loads_and_passes_requests_through() {
    let http = Upstream::start();
    let native = paths::native().display().to_string();
    let yaml = integration_tests::stack::bootstrap("{}", http.addr.port(), 1, "/dev/null", "/tmp/none.sock");
    assert!(yaml.contains(&native));
    let envoy = Envoy::start(&yaml.replace(&native, &paths::native_empty().display().to_string()));
    let mut c = Client::new(envoy.listener("ingress"));
    for n in 0..3 {
        assert_eq!(c.get(&format!("/orders/{n}"), &[]).status, 200);
    }
    let text = envoy.admin_get("/stats/prometheus");
    // No grayscope series: the module is empty (the listener still has it, or Envoy would not have started).
    assert_eq!(
        prom::samples(&text, "grayscope_interface_calls_total").len(),
        0,
        "{text}"
    );
}
