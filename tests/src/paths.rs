//! Where things are. `just setup` installs Envoy and Python peers into `.tools/`, `just build` leaves the filter in
//! `dist/`; `ENVOY_BIN` and `GRAYSCOPE_WASM` override them.

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

/// The Envoy binary (`ENVOY_BIN`, else the one `just setup` installed).
pub fn envoy() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join(".tools/bin/envoy"));
    existing(path, "Envoy", "just setup")
}

/// The filter built by `just build`.
pub fn wasm() -> PathBuf {
    let path = std::env::var_os("GRAYSCOPE_WASM")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("dist/grayscope_filter.wasm"));
    existing(path, "the built filter", "just build")
}

/// The agent built by `just build`.
pub fn agent() -> PathBuf {
    let path = std::env::var_os("GRAYSCOPE_AGENT")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("dist/grayscope-agent"));
    existing(path, "the built agent", "just build")
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
