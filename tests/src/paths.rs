//! Where things are. `just setup` installs Envoy and Python peers into `.tools/`, `just build` leaves the filter in
//! `dist/`; `ENVOY_BIN`, `GRAYSCOPE_WASM` and `GRAYSCOPE_NATIVE`
//! override them.

use std::path::PathBuf;

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn existing(path: PathBuf, what: &str, fix: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}: run `{fix}` first",
        path.display()
    );
    path
}

/// `var` if set, else `default` under the workspace root; panics saying what to run if it does not exist.
fn overridable(var: &str, default: &str, what: &str, fix: &str) -> PathBuf {
    let path = std::env::var_os(var)
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(default));
    existing(path, what, fix)
}

/// The Envoy binary (`ENVOY_BIN`, else the one `just setup` installed).
pub fn envoy() -> PathBuf {
    overridable("ENVOY_BIN", ".tools/bin/envoy", "Envoy", "just setup")
}

/// The filter built by `just build` (`GRAYSCOPE_WASM` overrides).
pub fn wasm() -> PathBuf {
    overridable(
        "GRAYSCOPE_WASM",
        "dist/grayscope_filter.wasm",
        "the built filter",
        "just build",
    )
}

/// The native filter (dynamic module) built by `just build` (`GRAYSCOPE_NATIVE` overrides).
pub fn native() -> PathBuf {
    overridable(
        "GRAYSCOPE_NATIVE",
        "dist/libgrayscope_filter.so",
        "the built native filter",
        "just build",
    )
}

/// The empty dynamic module built by `just build` (the benchmark's D0).
pub fn native_empty() -> PathBuf {
    overridable(
        "GRAYSCOPE_NATIVE_EMPTY",
        "dist/libgrayscope_empty.so",
        "the empty dynamic module",
        "just build",
    )
}

/// The agent built by `just build` (`GRAYSCOPE_AGENT` overrides).
pub fn agent() -> PathBuf {
    overridable(
        "GRAYSCOPE_AGENT",
        "dist/grayscope-agent",
        "the built agent",
        "just build",
    )
}

/// The Python with grpcio and prometheus_client that `just setup` installed.
pub fn python() -> PathBuf {
    existing(
        root().join(".tools/venv/bin/python"),
        "the tools virtualenv",
        "just setup",
    )
}

/// A file under `tests/`.
pub fn tests_file(rel: &str) -> PathBuf {
    existing(root().join("tests").join(rel), rel, "git checkout")
}
