//! Replays every fuzz seed and every saved crash input (`fuzz/corpus/<target>`, `fuzz/regressions/<target>`)
//! through the fuzz target bodies, so what the fuzzer once found stays fixed.

#![allow(
    clippy::expect_used,
    reason = "a test that cannot read its corpus should stop loudly"
)]

use std::{fs, path::Path};

use wasm_filter_core::fuzzing;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut replayed = 0;
    for dir in ["corpus", "regressions"] {
        let Ok(entries) = fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("corpus entry").path();
            if path.file_name().is_some_and(|n| n.to_string_lossy().starts_with('.')) {
                continue;
            }
            let data = fs::read(&path).expect("read corpus file");
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} fails", path.display());
            replayed += 1;
        }
    }
    assert!(replayed >= 5, "{target}: only {replayed} corpus inputs found");
}

#[test]
fn baggage_corpus() {
    replay("baggage", fuzzing::baggage);
}

#[test]
fn gray_header_corpus() {
    replay("gray_header", fuzzing::gray_header);
}

#[test]
fn path_corpus() {
    replay("path", fuzzing::path);
}

#[test]
fn grpc_web_corpus() {
    replay("grpc_web", fuzzing::grpc_web);
}
