//! What Envoy does with a grayscope VM that fails, under each wasm failure policy. The filter's lints forbid the
//! usual causes of a panic, but a filter that runs on every request must be safe even if one slips through. The
//! test-only build `dist/test/grayscope_filter-panic.wasm` (feature `test-panic`) panics on a request that carries
//! `x-grayscope-test-panic`; the VM then traps, and Envoy marks it failed.
//! - No policy (`FAIL_CLOSED`, Envoy's default): every request after it fails with 503. This is why every manifest
//!   in `istio/` sets one.
//! - `FAIL_OPEN`, the policy the manifests set: the request that was in flight fails, and every later one passes
//!   without the filter, uncounted, until the plugin is loaded again.
//! - `FAIL_RELOAD`: requests fail until the reload backoff (1 s base) has passed, and then a fresh VM counts them
//!   again. Metrics recover, but requests are failed on the way: the manifests do not choose it.
//!
//! The native build has no such policy: a dynamic module runs in Envoy's process, and its FFI layer never panics.

use std::{
    fs, thread,
    time::{Duration, Instant},
};

use integration_tests::{client::Client, envoy::FilterBuild, paths, prom, stack::Stack};
use serde_norway::Value;

const PANIC: (&str, &[u8]) = ("x-grayscope-test-panic", b"1");
const VERSION: (&str, &[u8]) = ("x-gray-version", b"v2");

/// The stack with the panicking build under `policy` (`None`: the field left out).
fn start(policy: Option<&str>) -> Stack {
    let wasm = paths::wasm().display().to_string();
    let panicking = paths::root().join("dist/test/grayscope_filter-panic.wasm");
    assert!(
        panicking.exists(),
        "{} is missing: run `just build`",
        panicking.display()
    );
    let field = policy.map(|p| format!("failure_policy: {p}, ")).unwrap_or_default();
    Stack::start_edited("{}", |yaml| {
        let edited = yaml.replace(&wasm, &panicking.display().to_string()).replace(
            "config: {name: grayscope,",
            &format!("config: {{{field}name: grayscope,"),
        );
        assert_ne!(edited, yaml, "the bootstrap's filter was not found");
        edited
    })
}

/// One request on a fresh connection (Envoy may close the one whose request failed); its status.
fn get(s: &Stack, path: &str, headers: &[(&str, &[u8])]) -> u16 {
    Client::new(s.envoy.listener("ingress")).get(path, headers).status
}

fn calls(s: &Stack) -> f64 {
    prom::sum(
        &s.envoy.admin_get("/stats/prometheus"),
        "grayscope_interface_calls_total",
    )
}

/// Sends a request and checks that the VM died of it: the panic's message is in Envoy's log.
fn panic_the_vm(s: &Stack) -> u16 {
    let status = get(s, "/panic", &[PANIC, VERSION]);
    assert!(
        s.envoy.log_with("x-grayscope-test-panic").contains("panicked at"),
        "the test build did not panic"
    );
    status
}

/// The failure policy each manifest of `istio/` gives the wasm filter: the EnvoyFilter's field as written, and the
/// WasmPlugin's `failStrategy` as Istio (1.25 and later) turns it into one.
fn shipped_policies() -> Vec<(&'static str, String)> {
    let yaml = |name: &str| -> Value {
        serde_norway::from_str(&fs::read_to_string(paths::root().join("istio").join(name)).expect(name)).expect(name)
    };
    let filter = yaml("03-envoyfilter-http-filter.yaml");
    let patch = &filter["spec"]["configPatches"][0]["patch"]["value"]["typed_config"]["config"];
    let plugins = ["03-wasmplugin.yaml", "03-wasmplugin-file.yaml"].map(|name| {
        let strategy = yaml(name)["spec"]["failStrategy"]
            .as_str()
            .unwrap_or("FAIL_CLOSE")
            .to_owned();
        (
            name,
            if strategy == "FAIL_CLOSE" {
                "FAIL_CLOSED".to_owned()
            } else {
                strategy
            },
        )
    });
    let mut all = vec![(
        "03-envoyfilter-http-filter.yaml",
        patch["failure_policy"].as_str().unwrap_or("FAIL_CLOSED").to_owned(),
    )];
    all.extend(plugins);
    all
}

#[test]
fn without_a_policy_a_failed_vm_fails_every_request_after_it() {
    if FilterBuild::current() != FilterBuild::Wasm {
        return;
    }
    let s = start(None);
    assert_eq!(get(&s, "/before", &[VERSION]), 200);
    assert_eq!(panic_the_vm(&s), 503);
    for n in 0..3 {
        assert_eq!(get(&s, &format!("/after/{n}"), &[VERSION]), 503);
    }
    assert_eq!(get(&s, "/later", &[VERSION]), 503);
}

#[test]
fn under_the_shipped_policy_a_failed_vm_fails_no_request_after_it() {
    if FilterBuild::current() != FilterBuild::Wasm {
        return;
    }
    for (manifest, policy) in shipped_policies() {
        assert_eq!(policy, "FAIL_OPEN", "{manifest}");
    }
    let s = start(Some("FAIL_OPEN"));
    assert_eq!(get(&s, "/before", &[("x-test-id", b"before"), VERSION]), 200);
    assert_eq!(calls(&s), 1.0);
    // The request the VM failed in is Envoy's to answer: it resets it with a 503.
    assert_eq!(panic_the_vm(&s), 503);
    for n in 0..3 {
        let id = format!("after-{n}");
        assert_eq!(get(&s, "/after", &[("x-test-id", id.as_bytes()), VERSION]), 200);
    }
    // They passed without the filter: not counted, and their version not propagated as a baggage member.
    assert_eq!(calls(&s), 1.0);
    assert_eq!(s.http.request("before").all("baggage"), ["gray.version=v2"]);
    assert!(s.http.request("after-2").all("baggage").is_empty());
}

#[test]
fn under_fail_reload_a_fresh_vm_counts_again_after_the_backoff() {
    if FilterBuild::current() != FilterBuild::Wasm {
        return;
    }
    let s = start(Some("FAIL_RELOAD"));
    assert_eq!(get(&s, "/before", &[VERSION]), 200);
    assert_eq!(panic_the_vm(&s), 503);
    // Envoy reloads the VM once its backoff (1 s base) has passed; requests before that fail. When exactly is
    // Envoy's to choose, so only the reload itself is asserted.
    let deadline = Instant::now() + Duration::from_secs(15);
    while get(&s, "/probe", &[VERSION]) != 200 {
        assert!(Instant::now() < deadline, "the VM was not reloaded");
        thread::sleep(Duration::from_millis(200));
    }
    let counted = calls(&s);
    assert_eq!(get(&s, "/again", &[VERSION]), 200);
    assert_eq!(calls(&s), counted + 1.0, "the reloaded VM counts calls");
}
