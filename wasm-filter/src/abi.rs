//! The proxy-wasm hostcalls the filter makes, called directly so that no status can panic.
//!
//! The SDK's `hostcalls` wrappers `panic!` on any status they did not expect, and its trait methods `unwrap`; in a
//! filter a panic kills the VM and Envoy then fails every request. These wrappers return every non-`Ok` status as
//! an [`AbiError`] for the caller to log and move on. The raw functions are the ones the SDK itself links to
//! (same import module and signatures); only the status is read as a plain `u32`, so an unknown status value from
//! a future host is an error, not undefined behaviour.
//!
//! The filter does not use the SDK at all (see `exports`), so these are every hostcall it makes.
#![allow(unsafe_code)]

use std::{fmt, ptr::null_mut, time::Duration};

/// A hostcall returned a status other than `Ok` (see the proxy-wasm ABI for the codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbiError {
    pub call: &'static str,
    pub status: u32,
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.status {
            1 => "NotFound",
            2 => "BadArgument",
            3 => "SerializationFailure",
            4 => "ParseFailure",
            6 => "InvalidMemoryAccess",
            7 => "Empty",
            8 => "CasMismatch",
            10 => "InternalFailure",
            12 => "Unimplemented",
            _ => "unknown status",
        };
        write!(f, "{} failed: {name} ({})", self.call, self.status)
    }
}

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;
const CAS_MISMATCH: u32 = 8;

/// The ABI's map types `HttpRequestHeaders` and `HttpResponseTrailers`.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_TRAILERS: u32 = 3;
/// The ABI's buffer types `HttpResponseBody` (the chunk the current body callback was called for) and
/// `PluginConfiguration`.
const RESPONSE_BODY: u32 = 1;
const PLUGIN_CONFIGURATION: u32 = 7;
/// The ABI's metric types.
pub const COUNTER: u32 = 0;
pub const GAUGE: u32 = 1;
pub const HISTOGRAM: u32 = 2;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(map_type: u32, return_data: *mut *mut u8, return_size: *mut usize) -> u32;
    fn proxy_get_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
    ) -> u32;
    fn proxy_replace_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_set_property(path_data: *const u8, path_size: usize, value_data: *const u8, value_size: usize) -> u32;
    fn proxy_define_metric(metric_type: u32, name_data: *const u8, name_size: usize, return_id: *mut u32) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_value_data: *mut *mut u8,
        return_value_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_grpc_call(
        upstream_data: *const u8,
        upstream_size: usize,
        service_name_data: *const u8,
        service_name_size: usize,
        method_name_data: *const u8,
        method_name_size: usize,
        initial_metadata_data: *const u8,
        initial_metadata_size: usize,
        message_data: *const u8,
        message_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    ) -> u32;
}

fn check(call: &'static str, status: u32) -> Result<(), AbiError> {
    if status == OK {
        Ok(())
    } else {
        Err(AbiError { call, status })
    }
}

/// Takes ownership of a buffer the host allocated through the SDK's `proxy_on_memory_allocate` (a boxed slice of
/// exactly `size` bytes), so it is freed when dropped.
fn take_host_buffer(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        return Vec::new();
    }
    // SAFETY: the host wrote `size` bytes into memory obtained from `proxy_on_memory_allocate(size)`, which leaks
    // a `Box<[u8]>` of that exact length; rebuilding it with the same length and capacity returns it to the
    // allocator. The SDK does the same in every getter.
    unsafe { Vec::from_raw_parts(data, size, size) }
}

/// Logs at a proxy-wasm level (0 trace .. 5 critical); a failure to log is ignored, there is nowhere to report it.
pub fn log(level: u32, message: &str) {
    // SAFETY: pointer and length describe a live `&str`.
    unsafe {
        proxy_log(level, message.as_ptr(), message.len());
    }
}

pub fn plugin_configuration(size: usize) -> Result<Vec<u8>, AbiError> {
    buffer("get_plugin_configuration", PLUGIN_CONFIGURATION, size)
}

/// The first `size` bytes of the response body chunk the current callback was called for.
pub fn response_body(size: usize) -> Result<Vec<u8>, AbiError> {
    buffer("get_response_body", RESPONSE_BODY, size)
}

/// Up to `size` bytes of a buffer; empty when the host has none.
fn buffer(call: &'static str, buffer_type: u32, size: usize) -> Result<Vec<u8>, AbiError> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: out-pointers are valid locals; the returned buffer is taken over below.
    let status = unsafe { proxy_get_buffer_bytes(buffer_type, 0, size, &mut data, &mut len) };
    if status == NOT_FOUND {
        return Ok(Vec::new());
    }
    check(call, status)?;
    Ok(take_host_buffer(data, len))
}

/// The serialized pairs of a header map (see `wasm_filter_core::headers`).
pub fn header_pairs(map: u32) -> Result<Vec<u8>, AbiError> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above.
    let status = unsafe { proxy_get_header_map_pairs(map, &mut data, &mut len) };
    check("get_header_map_pairs", status)?;
    Ok(take_host_buffer(data, len))
}

/// The value of `key` in a header map (the first, if it is there more than once); `None` when absent.
pub fn header_value(map: u32, key: &str) -> Result<Option<Vec<u8>>, AbiError> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: `key` is a live `&str`, the out-pointers valid locals; the returned buffer is taken over below.
    let status = unsafe { proxy_get_header_map_value(map, key.as_ptr(), key.len(), &mut data, &mut len) };
    if status == NOT_FOUND {
        return Ok(None);
    }
    check("get_header_map_value", status)?;
    Ok(Some(take_host_buffer(data, len)))
}

/// Replaces every value of `key` with `value`.
pub fn set_header(map: u32, key: &str, value: &str) -> Result<(), AbiError> {
    // SAFETY: pointers and lengths describe live `&str`s.
    let status = unsafe { proxy_replace_header_map_value(map, key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    check("replace_header_map_value", status)
}

pub fn remove_header(map: u32, key: &str) -> Result<(), AbiError> {
    // SAFETY: as above.
    let status = unsafe { proxy_remove_header_map_value(map, key.as_ptr(), key.len()) };
    check("remove_header_map_value", status)
}

/// Property paths as the host wants them: segments joined by NUL bytes, built at compile time, so a read
/// allocates nothing for its path.
pub mod path {
    pub const RESPONSE_CODE: &[u8] = b"response\0code";
    pub const GRPC_STATUS: &[u8] = b"response\0grpc_status";
    pub const RESPONSE_FLAGS: &[u8] = b"response\0flags";
    pub const REQUEST_DURATION: &[u8] = b"request\0duration";
    pub const CLUSTER_NAME: &[u8] = b"xds\0cluster_name";
    pub const LISTENER_DIRECTION: &[u8] = b"xds\0listener_direction";
    pub const SOURCE_ADDRESS: &[u8] = b"source\0address";
    pub const DESTINATION_ADDRESS: &[u8] = b"destination\0address";
    pub const UPSTREAM_LOCAL_ADDRESS: &[u8] = b"upstream\0local_address";
    pub const UPSTREAM_ADDRESS: &[u8] = b"upstream\0address";
    /// The plugin's `name` in its Envoy configuration.
    pub const PLUGIN_NAME: &[u8] = b"plugin_name";
}

/// Reads a property by its NUL-separated path (see [`path`]); `None` when absent.
pub fn property(path: &[u8]) -> Result<Option<Vec<u8>>, AbiError> {
    let (mut data, mut len) = (null_mut(), 0);
    // SAFETY: as above.
    let status = unsafe { proxy_get_property(path.as_ptr(), path.len(), &mut data, &mut len) };
    if status == NOT_FOUND {
        return Ok(None);
    }
    check("get_property", status)?;
    Ok(Some(take_host_buffer(data, len)))
}

/// A property holding an integer (Envoy encodes them as 8 bytes little-endian).
pub fn property_u64(path: &[u8]) -> Result<Option<u64>, AbiError> {
    Ok(property(path)?
        .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
        .map(u64::from_le_bytes))
}

/// Sets filter state; Envoy stores it under `wasm.<key>`. The key is one segment, dots included, so access logs
/// can read it as `%FILTER_STATE(wasm.<key>:PLAIN)%`.
pub fn set_filter_state(key: &str, value: &[u8]) -> Result<(), AbiError> {
    // SAFETY: as above.
    let status = unsafe { proxy_set_property(key.as_ptr(), key.len(), value.as_ptr(), value.len()) };
    check("set_property", status)
}

pub fn define_metric(kind: u32, name: &str) -> Result<u32, AbiError> {
    let mut id = 0;
    // SAFETY: as above.
    let status = unsafe { proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) };
    check("define_metric", status).map(|()| id)
}

pub fn increment_metric(id: u32, by: u64) -> Result<(), AbiError> {
    add_to_metric(id, i64::try_from(by).unwrap_or(i64::MAX))
}

/// Adds a signed delta (a gauge may go down).
pub fn add_to_metric(id: u32, delta: i64) -> Result<(), AbiError> {
    // SAFETY: plain integers.
    check("increment_metric", unsafe { proxy_increment_metric(id, delta) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), AbiError> {
    // SAFETY: plain integers.
    check("record_metric", unsafe { proxy_record_metric(id, value) })
}

/// The host's wall clock, nanoseconds since the Unix epoch: one hostcall, and no buffer for the host to allocate
/// (unlike a property read).
pub fn now_unix_nano() -> Result<u64, AbiError> {
    let mut ns = 0;
    // SAFETY: a pointer to a live `u64`.
    let status = unsafe { proxy_get_current_time_nanoseconds(&mut ns) };
    check("get_current_time_nanoseconds", status).map(|()| ns)
}

pub fn set_tick_period(ms: u64) -> Result<(), AbiError> {
    let ms = u32::try_from(ms).unwrap_or(u32::MAX);
    // SAFETY: a plain integer.
    check("set_tick_period", unsafe { proxy_set_tick_period_milliseconds(ms) })
}

/// The shared data under `key` (Envoy scopes it by `vm_id`) and its CAS token; `None` when never written.
pub fn shared_data(key: &str) -> Result<Option<(Vec<u8>, u32)>, AbiError> {
    let (mut data, mut len, mut cas) = (null_mut(), 0, 0);
    // SAFETY: the key is a live `&str`, the out-pointers valid locals; the returned buffer is taken over below.
    let status = unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut len, &mut cas) };
    if status == NOT_FOUND {
        return Ok(None);
    }
    check("get_shared_data", status)?;
    Ok(Some((take_host_buffer(data, len), cas)))
}

/// Writes `value` under `key` if its CAS token is still `cas` (0: unconditionally); `Ok(false)` on a mismatch.
pub fn set_shared_data(key: &str, value: &[u8], cas: u32) -> Result<bool, AbiError> {
    // SAFETY: pointers and lengths describe live slices.
    let status = unsafe { proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas) };
    if status == CAS_MISMATCH {
        return Ok(false);
    }
    check("set_shared_data", status).map(|()| true)
}

/// No initial metadata: the pairs encoding of an empty map (a zero count).
const NO_METADATA: [u8; 4] = [0; 4];

/// Starts a unary gRPC call to `cluster`; the answer comes to the calling (root) context as `proxy_on_grpc_receive`
/// or `proxy_on_grpc_close` with the token returned here.
pub fn dispatch_grpc_call(
    cluster: &str,
    service: &str,
    method: &str,
    message: &[u8],
    timeout: Duration,
) -> Result<u32, AbiError> {
    let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
    let mut token = 0;
    // SAFETY: pointers and lengths describe live slices; the out-pointer is a valid local.
    let status = unsafe {
        proxy_grpc_call(
            cluster.as_ptr(),
            cluster.len(),
            service.as_ptr(),
            service.len(),
            method.as_ptr(),
            method.len(),
            NO_METADATA.as_ptr(),
            NO_METADATA.len(),
            message.as_ptr(),
            message.len(),
            timeout_ms,
            &mut token,
        )
    };
    check("grpc_call", status).map(|()| token)
}
