//! The plugin configuration through the real Envoy: a bad one is refused with the field named, and every shipped
//! bootstrap passes Envoy's own validation with the built filter.

use std::process::Command;

use integration_tests::{paths, stack::Stack};

#[test]
fn an_invalid_configuration_is_refused_and_the_log_names_the_field() {
    let cases = [
        (
            r#"{"gray":{"max_versions":0}}"#,
            "gray.max_versions: must be between 1 and 10000, got 0",
        ),
        (
            r#"{"routes":[{"template":"orders"}]}"#,
            "routes[0].template: \"orders\": must start with '/'",
        ),
        (r#"{"gray":{"headr":"x"}}"#, "gray.headr: unknown field `headr`"),
        (
            r#"{"gray":{"allowed_versions":["v 1"]}}"#,
            "gray.allowed_versions[0]: \"v 1\" is not valid",
        ),
        (
            r#"{"gray":{"allowed_versions":["v1","other"]}}"#,
            "gray.allowed_versions[1]: \"other\" is reserved",
        ),
        (
            r#"{"gray":{"header":"Content-Type"}}"#,
            "gray.header: \"content-type\" is not the filter's to rewrite",
        ),
    ];
    for (config, expected) in cases {
        let (line, log) = Stack::refused(config, expected);
        assert!(line.contains("[error][wasm]"), "{config}: {line}");
        assert!(
            log.contains("Unable to create Wasm plugin grayscope"),
            "{config}: {log}"
        );
    }
}

#[test]
fn an_empty_object_is_a_valid_configuration() {
    let s = Stack::start("{}");
    let expected = "configured: 0 route templates, max_interfaces 256";
    let log = s.envoy.log_with(expected);
    assert!(log.contains(expected), "{log}");
}

#[test]
fn shipped_bootstraps_pass_envoy_validation() {
    let fixture = integration_tests::stack::bootstrap("{}", 8080, 50051, "/dev/null", "/tmp/agent.sock");
    let dir = tempfile::tempdir().expect("tempdir");
    let rendered = dir.path().join("fixture.yaml");
    std::fs::write(&rendered, fixture).expect("write");
    // The example refers to the filter as dist/grayscope_filter.wasm, relative to the workspace root.
    for (config, cwd) in [
        (rendered, dir.path().to_owned()),
        (paths::root().join("wasm-filter/envoy.yaml"), paths::root()),
    ] {
        let out = Command::new(paths::envoy())
            .args(["--mode", "validate", "--disable-hot-restart", "-l", "error", "-c"])
            .arg(&config)
            .current_dir(cwd)
            .output()
            .expect("envoy --mode validate");
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success() && text.contains("OK"),
            "{}: {text}",
            config.display()
        );
    }
}

#[test]
fn shipped_bootstraps_extract_every_label_the_filter_emits() {
    for file in ["tests/fixtures/envoy/grayscope.yaml", "wasm-filter/envoy.yaml"] {
        let text = std::fs::read_to_string(paths::root().join(file)).expect("bootstrap");
        for label in wasm_filter_core::metrics::LABELS {
            let entry = format!("- {{tag_name: {label}, regex: \"({label}=\\\\.=(.*?);\\\\.;)\"}}");
            assert!(text.contains(&entry), "{file} lacks the stats_tags entry {entry}");
        }
    }
}

#[test]
fn the_largest_batch_the_filter_sends_is_one_the_agent_accepts() {
    assert_eq!(wasm_filter_core::config::MAX_BATCH, proto::codec::MAX_ENTRIES);
}
