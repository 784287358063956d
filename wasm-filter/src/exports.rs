//! The filter's side of the proxy-wasm ABI (0.2.1): the functions Envoy calls, routed to the root and request
//! contexts. Written here instead of taken from the SDK for one reason, measured: Envoy calls into the VM only for
//! the callbacks a module exports, and each such call costs about as much as any other crossing of the V8
//! boundary, while the SDK exports every callback of the ABI. This filter needs the request headers and the log of
//! a request, and for gRPC-Web the response trailers and body (`Call::on_response_body`), so it exports no request
//! body, request trailer or response-header callback. A plain HTTP request with a one-chunk response costs six
//! calls into the VM (context creation, request headers, response body, log, done, delete) plus the allocations of
//! the data it reads. Nothing here may panic: a panic kills the VM, and Envoy then fails every request.
#![allow(unsafe_code)]

use std::{
    cell::RefCell,
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    mem::MaybeUninit,
    rc::Rc,
};

use crate::{http::Call, root::Root};

/// Context ids are distinct small integers Envoy hands out in sequence; a multiplicative hash spreads them across
/// the table for a fraction of SipHash's cost.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ById<T> = HashMap<u32, T, BuildHasherDefault<IdHasher>>;

/// Every live context of this VM. A root is shared (`Rc`) so that no borrow of the table is held while it runs:
/// a hostcall it makes may, in principle, be answered by a callback into this table.
#[derive(Default)]
struct Contexts {
    roots: ById<Rc<RefCell<Root>>>,
    calls: ById<Call>,
}

thread_local! {
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the table; a nested use (which no host does) is logged and skipped instead of panicking.
fn with_contexts<T>(f: impl FnOnce(&mut Contexts) -> T) -> Option<T> {
    CONTEXTS.with(|c| match c.try_borrow_mut() {
        Ok(mut contexts) => Some(f(&mut contexts)),
        Err(_) => {
            log::warn!("context table busy: a callback nested in another was skipped");
            None
        }
    })
}

fn root(id: u32) -> Option<Rc<RefCell<Root>>> {
    with_contexts(|c| c.roots.get(&id).cloned()).flatten()
}

/// Runs `f` on root `id`, if it exists and is not already running.
fn on_root<T>(id: u32, f: impl FnOnce(&mut Root) -> T) -> Option<T> {
    let root = root(id)?;
    // Bound to a local so that the borrow ends before `root` is dropped.
    let result = match root.try_borrow_mut() {
        Ok(mut r) => Some(f(&mut r)),
        Err(_) => {
            log::warn!("#{id} root context busy: a callback nested in another was skipped");
            None
        }
    };
    result
}

/// Runs `f` on request context `id`, if it exists.
fn on_call(id: u32, f: impl FnOnce(&mut Call)) {
    with_contexts(|c| c.calls.get_mut(&id).map(f));
}

/// Marks the ABI version this module speaks.
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

/// The first call into a new VM.
#[no_mangle]
pub extern "C" fn _initialize() {
    crate::logger::init();
}

/// Memory for data the host hands over (a header map, a property); the receiving code takes it back as a `Vec` of
/// exactly `size` bytes (`abi::take_host_buffer`).
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let mut buffer: Vec<MaybeUninit<u8>> = Vec::with_capacity(size);
    // SAFETY: the capacity is `size`; the host writes every byte before the module reads any.
    unsafe { buffer.set_len(size) };
    Box::into_raw(buffer.into_boxed_slice()).cast::<u8>()
}

/// A root context (`parent` 0: one per plugin configuration) or a request context of root `parent`. A request of
/// a root whose configuration Envoy refused still gets a context, which lets it pass untouched.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(id: u32, parent: u32) {
    if parent == 0 {
        with_contexts(|c| c.roots.insert(id, Rc::new(RefCell::new(Root::new(id)))));
        return;
    }
    let shared = root(parent).and_then(|r| r.try_borrow().ok().and_then(|r| r.shared()));
    with_contexts(|c| c.calls.insert(id, Call::new(id, shared)));
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root: u32, _vm_configuration_size: usize) -> bool {
    true
}

#[no_mangle]
pub extern "C" fn proxy_on_configure(root: u32, plugin_configuration_size: usize) -> bool {
    on_root(root, |r| r.on_configure(plugin_configuration_size)).unwrap_or(false)
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(root: u32) {
    on_root(root, Root::on_tick);
}

/// Always `Continue` (0): the filter never holds a request.
#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, _num_headers: usize, _end_of_stream: bool) -> u32 {
    on_call(id, Call::on_request_headers);
    0
}

/// Always `Continue` (0), as every callback of a request.
#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(id: u32, _num_trailers: usize) -> u32 {
    on_call(id, Call::on_response_trailers);
    0
}

/// Always `Continue` (0): the body is read as it passes, never held.
#[no_mangle]
pub extern "C" fn proxy_on_response_body(id: u32, body_size: usize, _end_of_stream: bool) -> u32 {
    on_call(id, |c| c.on_response_body(body_size));
    0
}

#[no_mangle]
pub extern "C" fn proxy_on_log(id: u32) {
    on_call(id, Call::on_log);
}

/// A request context is done at once; a root drains its report buffer first, and says when it is done through
/// `proxy_done`.
#[no_mangle]
pub extern "C" fn proxy_on_done(id: u32) -> bool {
    on_root(id, Root::on_done).unwrap_or(true)
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(id: u32) {
    with_contexts(|c| {
        if c.calls.remove(&id).is_none() {
            c.roots.remove(&id);
        }
    });
}

/// A report call's answer; only roots make calls.
#[no_mangle]
pub extern "C" fn proxy_on_grpc_receive(root: u32, token: u32, response_size: usize) {
    on_root(root, |r| r.on_grpc_call_response(token, 0, response_size));
}

/// A report call failed with `status`.
#[no_mangle]
pub extern "C" fn proxy_on_grpc_close(root: u32, token: u32, status: u32) {
    on_root(root, |r| r.on_grpc_call_response(token, status, 0));
}
