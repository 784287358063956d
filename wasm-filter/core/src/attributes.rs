//! OpenTelemetry attribute names the filter publishes, taken from `opentelemetry-semantic-conventions`.
//!
//! The filter publishes them as Envoy filter state (Envoy prefixes wasm filter state with `wasm.`, so an access log
//! reads `%FILTER_STATE(wasm.rpc.method:PLAIN)%`). The names follow the conventions of the crate version pinned in
//! the workspace: `rpc.method` is fully qualified (`pkg.Service/Method`) and `rpc.system.name` replaces the
//! deprecated `rpc.system`/`rpc.service` pair.
//!
//! The gray version has no semantic convention of its own; it is published under the same name as its baggage key
//! (`gray.version` by default), which is what OTel's baggage span processors would name it too.

use opentelemetry_semantic_conventions::attribute;

pub const RPC_SYSTEM_NAME: &str = attribute::RPC_SYSTEM_NAME;
pub const RPC_METHOD: &str = attribute::RPC_METHOD;
pub const RPC_RESPONSE_STATUS_CODE: &str = attribute::RPC_RESPONSE_STATUS_CODE;
pub const HTTP_REQUEST_METHOD: &str = attribute::HTTP_REQUEST_METHOD;
pub const HTTP_ROUTE: &str = attribute::HTTP_ROUTE;
pub const HTTP_RESPONSE_STATUS_CODE: &str = attribute::HTTP_RESPONSE_STATUS_CODE;
pub const NETWORK_PEER_ADDRESS: &str = attribute::NETWORK_PEER_ADDRESS;

/// The gray version of the request (not a semantic convention; the name of its default baggage key).
pub const GRAY_VERSION: &str = "gray.version";

/// `rpc.system.name` value for gRPC.
pub const RPC_SYSTEM_GRPC: &str = "grpc";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_conventions() {
        assert_eq!(RPC_METHOD, "rpc.method");
        assert_eq!(RPC_SYSTEM_NAME, "rpc.system.name");
        assert_eq!(HTTP_ROUTE, "http.route");
        assert_eq!(HTTP_REQUEST_METHOD, "http.request.method");
    }
}
