//! The part of Envoy's dynamic-module C ABI (Envoy 1.40.0, `source/extensions/dynamic_modules/abi.h`) this filter
//! uses, declared by hand, and safe wrappers that report every failure as an [`AbiError`].
//!
//! Envoy's Rust SDK is not on crates.io and must match the Envoy build exactly, so the few callbacks we need are
//! declared here from the header (names and signatures are facts of the ABI; each one was checked against the
//! dynamic symbols of the official 1.40.0 binary). C enums are passed as their `int` value.
//!
//! Every wrapper checks what Envoy returns (`bool` or a result enum) and never panics; pointers handed to Envoy
//! point into live Rust values for the duration of the call, and buffers Envoy returns are copied before the
//! event hook that produced them returns.
#![allow(unsafe_code)]

use std::{ffi::c_void, fmt, ptr};

/// Opaque Envoy objects: `DynamicModuleHttpFilterConfig*`, `DynamicModuleHttpFilter*`, a config scheduler.
pub type ConfigPtr = *mut c_void;
pub type FilterPtr = *mut c_void;
pub type SchedulerPtr = *mut c_void;

/// `envoy_dynamic_module_type_envoy_buffer` and `..._module_buffer`: a pointer and a length.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Buffer {
    pub ptr: *const u8,
    pub length: usize,
}

impl Buffer {
    pub const NULL: Buffer = Buffer {
        ptr: ptr::null(),
        length: 0,
    };

    pub fn of(bytes: &[u8]) -> Self {
        Self {
            ptr: bytes.as_ptr(),
            length: bytes.len(),
        }
    }

    /// The bytes Envoy's buffer points to (empty for a null buffer).
    ///
    /// # Safety
    /// `ptr` must be null or point to `length` readable bytes that outlive `'a` (Envoy guarantees this until the
    /// end of the current event hook).
    pub unsafe fn bytes<'a>(self) -> &'a [u8] {
        if self.ptr.is_null() || self.length == 0 {
            &[]
        } else {
            // SAFETY: as the caller promises.
            unsafe { std::slice::from_raw_parts(self.ptr, self.length) }
        }
    }
}

/// `envoy_dynamic_module_type_envoy_http_header` / `..._module_http_header`.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct Header {
    pub key: Buffer,
    pub value: Buffer,
}

impl Header {
    pub const EMPTY: Header = Header {
        key: Buffer::NULL,
        value: Buffer::NULL,
    };
}

/// `envoy_dynamic_module_type_http_header_type_RequestHeader` and `..._ResponseTrailer`.
pub const REQUEST_HEADERS: u32 = 0;
pub const RESPONSE_TRAILERS: u32 = 3;
/// `envoy_dynamic_module_type_http_body_type_ReceivedResponseBody`: the chunk the current body hook was called for.
const RECEIVED_RESPONSE_BODY: u32 = 2;

/// `envoy_dynamic_module_type_log_level`.
pub mod level {
    pub const DEBUG: u32 = 1;
    pub const INFO: u32 = 2;
    pub const WARN: u32 = 3;
    pub const ERROR: u32 = 4;
}

/// `envoy_dynamic_module_type_attribute_id` values this filter reads.
pub mod attribute {
    pub const RESPONSE_CODE: u32 = 15;
    pub const RESPONSE_FLAGS: u32 = 17;
    pub const RESPONSE_GRPC_STATUS: u32 = 18;
    pub const SOURCE_ADDRESS: u32 = 24;
    pub const DESTINATION_ADDRESS: u32 = 26;
    pub const UPSTREAM_ADDRESS: u32 = 41;
    pub const UPSTREAM_LOCAL_ADDRESS: u32 = 51;
    pub const XDS_CLUSTER_NAME: u32 = 57;
    pub const XDS_LISTENER_DIRECTION: u32 = 59;
}

/// `envoy_dynamic_module_type_metrics_result_Success` and
/// `envoy_dynamic_module_type_http_callout_init_result_Success`.
const SUCCESS: u32 = 0;

/// The eight metric update callbacks share one signature: (`envoy_dynamic_module_type_http_filter_config_envoy_ptr`
/// or `..._http_filter_envoy_ptr`, metric id, label values, their count, value) ->
/// `envoy_dynamic_module_type_metrics_result`.
macro_rules! metric_updates {
    ($($name:ident),* $(,)?) => {
        extern "C" {
            $(fn $name(envoy: *mut c_void, id: usize, label_values: *mut Buffer, label_values_length: usize, value: u64)
                -> u32;)*
        }
    };
}

metric_updates!(
    envoy_dynamic_module_callback_http_filter_config_increment_counter,
    envoy_dynamic_module_callback_http_filter_config_increment_gauge,
    envoy_dynamic_module_callback_http_filter_config_decrement_gauge,
    envoy_dynamic_module_callback_http_filter_config_record_histogram_value,
    envoy_dynamic_module_callback_http_filter_increment_counter,
    envoy_dynamic_module_callback_http_filter_increment_gauge,
    envoy_dynamic_module_callback_http_filter_decrement_gauge,
    envoy_dynamic_module_callback_http_filter_record_histogram_value,
);

extern "C" {
    fn envoy_dynamic_module_callback_log(level: u32, message: Buffer);
    fn envoy_dynamic_module_callback_http_get_headers_size(filter: FilterPtr, header_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_headers(filter: FilterPtr, header_type: u32, out: *mut Header) -> bool;
    fn envoy_dynamic_module_callback_http_get_body_chunks_size(filter: FilterPtr, body_type: u32) -> usize;
    fn envoy_dynamic_module_callback_http_get_body_chunks(filter: FilterPtr, body_type: u32, out: *mut Buffer) -> bool;
    fn envoy_dynamic_module_callback_http_set_header(
        filter: FilterPtr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_set_filter_state_bytes(filter: FilterPtr, key: Buffer, value: Buffer)
        -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_string(
        filter: FilterPtr,
        id: u32,
        out: *mut Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_filter_get_attribute_int(filter: FilterPtr, id: u32, out: *mut u64) -> bool;

    fn envoy_dynamic_module_callback_http_filter_config_define_counter(
        config: ConfigPtr,
        name: Buffer,
        label_names: *mut Buffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
        config: ConfigPtr,
        name: Buffer,
        label_names: *mut Buffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
        config: ConfigPtr,
        name: Buffer,
        label_names: *mut Buffer,
        label_names_length: usize,
        id: *mut usize,
    ) -> u32;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_new(config: ConfigPtr) -> SchedulerPtr;
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler: SchedulerPtr, event_id: u64);
    fn envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler: SchedulerPtr);

    fn envoy_dynamic_module_callback_http_filter_config_start_http_stream(
        config: ConfigPtr,
        stream_id: *mut u64,
        cluster: Buffer,
        headers: *mut Header,
        headers_size: usize,
        body: Buffer,
        end_stream: bool,
        timeout_ms: u64,
    ) -> u32;
}

/// A callback reported failure: `false`, or a result enum other than `Success` (its value in `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbiError {
    pub call: &'static str,
    pub status: u32,
}

impl fmt::Display for AbiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} failed (status {})", self.call, self.status)
    }
}

fn check_bool(call: &'static str, ok: bool) -> Result<(), AbiError> {
    if ok {
        Ok(())
    } else {
        Err(AbiError { call, status: 1 })
    }
}

fn check(call: &'static str, status: u32) -> Result<(), AbiError> {
    if status == SUCCESS {
        Ok(())
    } else {
        Err(AbiError { call, status })
    }
}

pub fn log(level: u32, message: &str) {
    // SAFETY: the buffer describes a live `&str`; Envoy copies it.
    unsafe { envoy_dynamic_module_callback_log(level, Buffer::of(message.as_bytes())) }
}

/// The headers of `header_type`, as Envoy's own (key, value) views: valid until the current hook returns or a
/// header is set.
pub fn headers(filter: FilterPtr, header_type: u32) -> Result<Vec<Header>, AbiError> {
    // SAFETY: `filter` is the pointer Envoy passed to the current hook.
    let n = unsafe { envoy_dynamic_module_callback_http_get_headers_size(filter, header_type) };
    let mut out = vec![Header::EMPTY; n];
    if n == 0 {
        return Ok(out);
    }
    // SAFETY: `out` has room for the `n` headers Envoy just counted, and nothing changed them in between.
    let ok = unsafe { envoy_dynamic_module_callback_http_get_headers(filter, header_type, out.as_mut_ptr()) };
    check_bool("http_get_headers", ok)?;
    Ok(out)
}

/// The slices of the response body chunk the current body hook was called for, as Envoy's own views: valid until
/// the hook returns.
pub fn response_body(filter: FilterPtr) -> Result<Vec<Buffer>, AbiError> {
    // SAFETY: `filter` is the pointer Envoy passed to the current hook.
    let n = unsafe { envoy_dynamic_module_callback_http_get_body_chunks_size(filter, RECEIVED_RESPONSE_BODY) };
    let mut out = vec![Buffer::NULL; n];
    if n == 0 {
        return Ok(out);
    }
    // SAFETY: `out` has room for the `n` slices Envoy just counted, and nothing changed the body in between.
    let ok =
        unsafe { envoy_dynamic_module_callback_http_get_body_chunks(filter, RECEIVED_RESPONSE_BODY, out.as_mut_ptr()) };
    check_bool("http_get_body_chunks", ok)?;
    Ok(out)
}

/// Replaces every value of `key` with `value`; `None` removes the header.
pub fn set_header(filter: FilterPtr, header_type: u32, key: &str, value: Option<&str>) -> Result<(), AbiError> {
    let value = value.map_or(Buffer::NULL, |v| Buffer::of(v.as_bytes()));
    // SAFETY: buffers describe live `&str`s (or null, which the ABI defines as "remove").
    let ok = unsafe {
        envoy_dynamic_module_callback_http_set_header(filter, header_type, Buffer::of(key.as_bytes()), value)
    };
    check_bool("http_set_header", ok)
}

pub fn set_filter_state(filter: FilterPtr, key: &str, value: &[u8]) -> Result<(), AbiError> {
    // SAFETY: as above.
    let ok = unsafe {
        envoy_dynamic_module_callback_http_set_filter_state_bytes(filter, Buffer::of(key.as_bytes()), Buffer::of(value))
    };
    check_bool("http_set_filter_state_bytes", ok)
}

/// A string attribute, copied; `None` when Envoy has none (not set yet, or not a string).
pub fn attribute_string(filter: FilterPtr, id: u32) -> Option<String> {
    let mut out = Buffer::NULL;
    // SAFETY: `out` is a live local; the buffer Envoy writes stays valid until this hook returns, and is copied.
    let ok = unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_string(filter, id, &mut out) };
    // SAFETY: as above.
    ok.then(|| String::from_utf8_lossy(unsafe { out.bytes() }).into_owned())
}

pub fn attribute_int(filter: FilterPtr, id: u32) -> Option<u64> {
    let mut out = 0u64;
    // SAFETY: `out` is a live local.
    let ok = unsafe { envoy_dynamic_module_callback_http_filter_get_attribute_int(filter, id, &mut out) };
    ok.then_some(out)
}

/// Metric kinds of the ABI; each has its own id space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// Defines a metric (possibly with labels) on the filter configuration. Only allowed while the configuration is
/// being created: Envoy freezes metric creation once `on_http_filter_config_new` returns.
pub fn define_metric(config: ConfigPtr, kind: MetricKind, name: &str, labels: &[String]) -> Result<usize, AbiError> {
    let mut names: Vec<Buffer> = labels.iter().map(|l| Buffer::of(l.as_bytes())).collect();
    let (names_ptr, len) = if names.is_empty() {
        (ptr::null_mut(), 0)
    } else {
        (names.as_mut_ptr(), names.len())
    };
    let mut id = 0usize;
    let name = Buffer::of(name.as_bytes());
    // SAFETY: `names` and `name` point into live values; Envoy copies the names into its symbol table.
    let status = unsafe {
        match kind {
            MetricKind::Counter => {
                envoy_dynamic_module_callback_http_filter_config_define_counter(config, name, names_ptr, len, &mut id)
            }
            MetricKind::Gauge => {
                envoy_dynamic_module_callback_http_filter_config_define_gauge(config, name, names_ptr, len, &mut id)
            }
            MetricKind::Histogram => {
                envoy_dynamic_module_callback_http_filter_config_define_histogram(config, name, names_ptr, len, &mut id)
            }
        }
    };
    check("define_metric", status).map(|()| id)
}

/// What to do with a metric value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricOp {
    Increment,
    Decrement,
    Record,
}

/// Where a metric update is made: on the configuration (any thread, any time), or on the request's filter (only
/// inside one of its hooks: Envoy then encodes the label values in the stream's own dynamic name pool; measured
/// cheaper per call, see bench/RESULTS.md).
#[derive(Debug, Clone, Copy)]
pub enum MetricTarget {
    Config(ConfigPtr),
    Filter(FilterPtr),
}

/// A metric update callback of the ABI: (configuration or filter, metric id, label values, their count, value).
type UpdateFn = unsafe extern "C" fn(*mut c_void, usize, *mut Buffer, usize, u64) -> u32;

/// The callbacks of an update of `kind` by `op`: the configuration's, then the filter's.
fn update_fns(kind: MetricKind, op: MetricOp) -> (UpdateFn, UpdateFn) {
    match (kind, op) {
        (MetricKind::Counter, _) => (
            envoy_dynamic_module_callback_http_filter_config_increment_counter,
            envoy_dynamic_module_callback_http_filter_increment_counter,
        ),
        (MetricKind::Gauge, MetricOp::Decrement) => (
            envoy_dynamic_module_callback_http_filter_config_decrement_gauge,
            envoy_dynamic_module_callback_http_filter_decrement_gauge,
        ),
        (MetricKind::Gauge, _) => (
            envoy_dynamic_module_callback_http_filter_config_increment_gauge,
            envoy_dynamic_module_callback_http_filter_increment_gauge,
        ),
        (MetricKind::Histogram, _) => (
            envoy_dynamic_module_callback_http_filter_config_record_histogram_value,
            envoy_dynamic_module_callback_http_filter_record_histogram_value,
        ),
    }
}

/// The most label values an update passes without allocating (the core's metrics have at most 6).
const INLINE_LABELS: usize = 8;

/// Updates one series of a defined metric: `values` must match the label names it was defined with.
pub fn update_metric(
    target: MetricTarget,
    kind: MetricKind,
    op: MetricOp,
    id: usize,
    values: &[String],
    value: u64,
) -> Result<(), AbiError> {
    let mut inline = [Buffer::NULL; INLINE_LABELS];
    let mut spilled = Vec::new();
    let buffers: &mut [Buffer] = if values.len() <= INLINE_LABELS {
        for (b, v) in inline.iter_mut().zip(values) {
            *b = Buffer::of(v.as_bytes());
        }
        &mut inline[..values.len()]
    } else {
        spilled.extend(values.iter().map(|v| Buffer::of(v.as_bytes())));
        &mut spilled
    };
    let (ptr, len) = if buffers.is_empty() {
        (ptr::null_mut(), 0)
    } else {
        (buffers.as_mut_ptr(), buffers.len())
    };
    let (on_config, on_filter) = update_fns(kind, op);
    let (envoy, update) = match target {
        MetricTarget::Config(config) => (config, on_config),
        MetricTarget::Filter(filter) => (filter, on_filter),
    };
    // SAFETY: `buffers` points into live strings for the duration of the call; `envoy` is the live configuration,
    // or the filter Envoy passed to the hook that is running, and `update` the callback of that same kind.
    let status = unsafe { update(envoy, id, ptr, len, value) };
    check("update_metric", status)
}

/// A main-thread scheduler of the filter configuration: `commit` may be called from any thread and ends in
/// `on_http_filter_config_scheduled` on Envoy's main thread.
pub fn scheduler_new(config: ConfigPtr) -> Option<SchedulerPtr> {
    // SAFETY: `config` is the live configuration pointer.
    let s = unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_new(config) };
    (!s.is_null()).then_some(s)
}

pub fn scheduler_commit(scheduler: SchedulerPtr, event_id: u64) {
    // SAFETY: a scheduler from `scheduler_new` not yet deleted (the ticker joins its thread before deleting it).
    unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_commit(scheduler, event_id) }
}

pub fn scheduler_delete(scheduler: SchedulerPtr) {
    // SAFETY: as above; called once.
    unsafe { envoy_dynamic_module_callback_http_filter_config_scheduler_delete(scheduler) }
}

/// Starts an HTTP stream to `cluster` from the configuration (main thread), sending `headers` and `body` and ending
/// the request. The answer arrives in the `on_http_filter_config_http_stream_*` hooks.
pub fn start_stream(
    config: ConfigPtr,
    cluster: &str,
    headers: &[(&str, &str)],
    body: &[u8],
    timeout_ms: u64,
) -> Result<u64, AbiError> {
    let mut hs: Vec<Header> = headers
        .iter()
        .map(|(k, v)| Header {
            key: Buffer::of(k.as_bytes()),
            value: Buffer::of(v.as_bytes()),
        })
        .collect();
    let mut id = 0u64;
    // SAFETY: every buffer points into live values for the call; Envoy copies headers and body.
    let status = unsafe {
        envoy_dynamic_module_callback_http_filter_config_start_http_stream(
            config,
            &mut id,
            Buffer::of(cluster.as_bytes()),
            hs.as_mut_ptr(),
            hs.len(),
            Buffer::of(body),
            true,
            timeout_ms,
        )
    };
    check("http_filter_config_start_http_stream", status).map(|()| id)
}
