//! The wasm build exports only the ABI callbacks it uses. Envoy calls into the VM for every callback a module
//! exports, and such a call costs about what any crossing of the V8 boundary costs (bench/RESULTS.md), so a module
//! that exports them all, as the proxy-wasm SDK's does, also pays for the response headers and for every chunk of
//! every request body, which this filter never reads. A callback added here is a cost on every request: the
//! response body's (one call per chunk) and trailers' (gRPC responses only) are there for gRPC-Web, whose status
//! travels at the end of the body.

use integration_tests::paths;
use wasmparser::{ExternalKind, Parser, Payload};

#[test]
fn the_filter_exports_exactly_the_callbacks_it_uses() {
    let wasm = std::fs::read(paths::wasm()).expect("read the built filter");
    let mut exported = Vec::new();
    for payload in Parser::new(0).parse_all(&wasm) {
        if let Payload::ExportSection(section) = payload.expect("a well-formed module") {
            for export in section {
                let export = export.expect("a well-formed export");
                if export.kind == ExternalKind::Func {
                    exported.push(export.name.to_owned());
                }
            }
        }
    }
    exported.sort();
    assert_eq!(
        exported,
        [
            "_initialize",
            "proxy_abi_version_0_2_1",
            "proxy_on_configure",
            "proxy_on_context_create",
            "proxy_on_delete",
            "proxy_on_done",
            "proxy_on_grpc_close",
            "proxy_on_grpc_receive",
            "proxy_on_log",
            "proxy_on_memory_allocate",
            "proxy_on_request_headers",
            "proxy_on_response_body",
            "proxy_on_response_trailers",
            "proxy_on_tick",
            "proxy_on_vm_start",
        ]
    );
}
