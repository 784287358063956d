//! The empty filter (configuration W0): a root context and one HTTP context per request, each callback the SDK
//! dispatches answered with the default `Continue`. What it costs is what any Rust proxy-wasm filter pays before it
//! does anything: the V8 boundary, the SDK's dispatch and one context allocation per request.

use proxy_wasm::{
    traits::{Context, HttpContext, RootContext},
    types::ContextType,
};

struct Root;
struct Call;

impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Call))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

impl Context for Call {}
/// Subscribes to the same callbacks as grayscope's filter (request headers and log), doing nothing in them.
impl HttpContext for Call {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> proxy_wasm::types::Action {
        proxy_wasm::types::Action::Continue
    }
    fn on_log(&mut self) {}
}

mod entry {
    // `main!` expands to the `#[no_mangle]` `_initialize` export Envoy calls first.
    #![allow(unsafe_code)]
    proxy_wasm::main! {{
        proxy_wasm::set_root_context(|_| Box::new(crate::Root));
    }}
}
