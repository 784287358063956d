//! The harness end to end on a tiny run (two rounds of a second, five configurations: A, the empty and the real
//! filter in wasm and as a dynamic module; one gRPC round of A and W1; the wasm VM memory phase on 2,000
//! requests): real Envoys, real wrk and h2load, the real filters, the real agent for W2. It checks that the result
//! files are well formed and hold one sample per round; it asserts no timing, since the machine may be busy.
//! With `GRAYSCOPE_SKIP_PRIVILEGED=1` (no root: the agent cannot load its eBPF programs) the memory phase, whose
//! W2 needs the agent, is left out, and the test checks that the results say it was not measured.

use std::{path::Path, process::Command};

use serde_json::Value;

#[test]
fn a_tiny_run_writes_well_formed_results() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for (file, fix) in [
        ("dist/grayscope_filter.wasm", "just build"),
        ("dist/bench/empty_filter.wasm", "just build"),
        ("dist/libgrayscope_filter.so", "just build"),
        ("dist/libgrayscope_empty.so", "just build"),
        (".tools/bin/envoy", "just setup"),
    ] {
        assert!(root.join(file).exists(), "{file} missing: run `{fix}` first");
    }
    // The memory phase's W2 reports to the real agent, which needs root (eBPF).
    let privileged = std::env::var("GRAYSCOPE_SKIP_PRIVILEGED").map_or(true, |v| v != "1");
    if !privileged {
        eprintln!(
            "skipping the wasm VM memory phase - GRAYSCOPE_SKIP_PRIVILEGED=1: its W2 needs the agent, which needs root"
        );
    }
    let out = tempfile::tempdir().expect("tempdir");
    let status = Command::new(env!("CARGO_BIN_EXE_grayscope-bench"))
        .args([
            "--rounds",
            "2",
            "--duration",
            "1",
            "--warmup",
            "1",
            "--configs",
            "A,W0,W1,D0,D1",
        ])
        .args([
            "--latency-rate",
            "200",
            "--latency-duration",
            "0.5",
            "--load-note",
            "smoke test",
            // One gRPC round (h2load over h2c to the gRPC upstream), and the VM memory phase on a few requests
            // (its W2 starts the agent).
            "--grpc-rounds",
            "1",
            "--grpc-configs",
            "A,C,W1",
            "--vm-memory-requests",
            if privileged { "2000" } else { "0" },
            "--out",
        ])
        .arg(out.path())
        .status()
        .expect("run grayscope-bench (is wrk installed? `just setup`)");
    assert!(status.success(), "grayscope-bench failed: {status}");

    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(out.path().join("RESULTS.json")).expect("RESULTS.json"))
            .expect("RESULTS.json is JSON");
    let ratios = &json["ratios"];
    for measured in [
        "W1/A",
        "W1/W0",
        "(W1-A)/(W0-A)",
        "D0/A",
        "D1/A",
        "(D1-A)/(W1-A)",
        "(D0-A)/(W0-A)",
    ] {
        // One ratio per round; a round whose denominator measured ≤ 0 counts as infinite, and a median made infinite
        // by it is null in JSON (one such round of two does it), said by `infinite` in the range.
        let range = &json["ratios_range"][measured];
        assert_eq!(range["n"], 2, "ratio {measured}: one per round: {range}");
        let infinite = range["infinite"]
            .as_u64()
            .unwrap_or_else(|| panic!("{measured}: {range}"));
        assert!(
            ratios[measured].as_f64().is_some_and(f64::is_finite) || infinite > 0,
            "ratio {measured} missing: {ratios}"
        );
    }
    // Asked for neither C nor W2: their ratios are null, not invented.
    for absent in ["W2/A", "(W2-W1)/(W0-A)", "(W1-A)/(C-A)", "(D1-A)/(C-A)"] {
        assert!(ratios[absent].is_null(), "{absent} should be null: {ratios}");
    }
    assert!(json["latency"]["p99_W2_minus_A_ms"].is_null());
    for (key, measured) in [
        ("D0-A_us", true),
        ("D1-A_us", true),
        ("W1-A_us", true),
        ("C-A_us", false),
    ] {
        let v = &json["native"][key];
        assert_eq!(v["median"].is_f64(), measured, "native.{key}: {v}");
        assert_eq!(
            v["n"].as_u64(),
            measured.then_some(2),
            "native.{key}: one difference per round: {v}"
        );
    }
    for key in ["connect_ratio", "lost", "ns_per_event"] {
        assert!(json["ebpf"].get(key).is_some(), "ebpf.{key} missing");
    }
    for key in [
        "records_per_s",
        "cpu_pct_at_10k_calls_per_s",
        "rss_mib_100k",
        "watch_delay_p99_ms",
    ] {
        assert!(json["agent"].get(key).is_some(), "agent.{key} missing");
        assert!(
            json["not_measured"].get(format!("agent.{key}")).is_some(),
            "no reason for agent.{key}"
        );
    }
    for label in ["A", "W0", "W1", "D0", "D1"] {
        let c = &json["configs"][label];
        assert_eq!(c["cpu_us_per_request"]["n"], 2, "{label}: one sample per round: {c}");
        assert!(
            c["cpu_us_per_request"]["median"].as_f64().is_some_and(|v| v > 0.0),
            "{label}: {c}"
        );
        assert!(
            c["requests_per_s"]["median"].as_f64().is_some_and(|v| v > 0.0),
            "{label}: {c}"
        );
        assert_eq!(c["errors"], 0, "{label}: wrk saw errors: {c}");
        if label == "D0" || label == "W0" {
            // Latency is measured where a target or its explanation needs it (A, W1, W1d, W2, D1).
            assert!(c["p99_ms"].is_null(), "{label}: no latency asked for: {c}");
        } else {
            assert_eq!(c["p99_ms"]["n"], 2, "{label}: latency measured each round: {c}");
        }
    }

    for label in ["A", "W1"] {
        let c = &json["grpc"]["configs"][label];
        assert_eq!(c["cpu_us_per_request"]["n"], 1, "gRPC {label}: one sample: {c}");
        assert_eq!(c["errors"], 0, "gRPC {label}: h2load saw errors: {c}");
        assert_eq!(c["p99_ms"]["n"], 1, "gRPC {label}: latency measured: {c}");
    }
    // Against Envoy's own per-method gRPC statistics, on calls they count.
    let vs_c = &json["grpc"]["cpu"]["(W1-A)/(C-A)"];
    assert_eq!(vs_c["n"], 1, "gRPC (W1-A)/(C-A): {vs_c}");
    // How long each phase took, for the 20-minute budget of `just bench`.
    let phases: &[&str] = if privileged {
        &["main run", "gRPC", "wasm VM memory"]
    } else {
        &["main run", "gRPC"]
    };
    for phase in phases {
        let took = &json["context"]["phases_s"][phase];
        assert!(took.as_f64().is_some_and(|s| s >= 0.0), "{phase}: {took}");
    }
    if privileged {
        let vms = json["wasm_vm_memory"].as_array().expect("wasm_vm_memory");
        assert_eq!(vms.len(), 2, "W1 and W2: {vms:?}");
        for (vm, label) in vms.iter().zip(["W1", "W2"]) {
            assert_eq!(vm["label"], label, "{vm}");
            assert_eq!(vm["requests"], 2000, "{vm}");
            // The base VM and one clone per thread (main, the one worker).
            assert_eq!(vm["after"].as_array().map(Vec::len), Some(3), "{vm}");
        }
        // 2,000 requests over 1,024 services: the filter's default cap (256) is reached, the rest count as `other`.
        assert!(
            vms[0]["interface_overflow"].as_u64().is_some_and(|n| n > 0),
            "{}",
            vms[0]
        );
    } else {
        assert!(json["wasm_vm_memory"].is_null(), "{}", json["wasm_vm_memory"]);
        assert!(
            json["not_measured"]["wasm_vm_memory"].is_string(),
            "no reason for wasm_vm_memory: {}",
            json["not_measured"]
        );
    }

    let md = std::fs::read_to_string(out.path().join("RESULTS.md")).expect("RESULTS.md");
    for line in [
        "| throughput W1/W0 |",
        "| CPU/request (W1-A)/(W0-A) |",
        "| W0 | A + empty Rust proxy-wasm filter |",
        "| D0 | A + empty Rust dynamic module |",
        "| CPU/request (D1-A)/(W1-A) |",
        "## The native build (dynamic module)",
        "## gRPC (h2load)",
    ] {
        assert!(md.contains(line), "RESULTS.md lacks {line:?}:\n{md}");
    }
    assert_eq!(md.contains("## Wasm VM memory"), privileged, "{md}");
    assert!(md.contains("## Notes (hand-written, kept by the harness)"), "{md}");
}
