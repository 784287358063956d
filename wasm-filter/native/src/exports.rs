//! The event hooks Envoy 1.40 resolves in a module that provides an HTTP filter (every one it requires, so it
//! loads the module; the ones this filter has no use for do nothing and continue).
//!
//! Ownership: `on_http_filter_config_new` returns a leaked `Box<FilterConfig>` that
//! `on_http_filter_config_destroy` takes back; `on_http_filter_new` returns a leaked `Box<Filter>` that
//! `on_http_filter_destroy` takes back. Envoy keeps a configuration alive as long as a filter made from it, so a
//! filter's reference to its configuration is valid for the filter's whole life. Every hook checks for null.
//! Live configurations are also listed in `config::LIVE`, so one being destroyed (a reload) hands its buffered
//! records to its successor. Envoy calls every hook of a configuration on its main thread, except the destroy hook,
//! which runs wherever the last reference goes: on a worker when a request outlived a reload.
#![allow(unsafe_code)]

use std::ffi::{c_char, c_void};

use crate::{
    abi::{Buffer, ConfigPtr, FilterPtr, Header},
    config::{lock, FilterConfig},
    filter::Filter,
    ABI_VERSION,
};

/// `..._request_headers_status_Continue` and every other `Continue` status of the ABI.
const CONTINUE: u32 = 0;

fn config<'a>(ptr: *const c_void) -> Option<&'a FilterConfig> {
    // SAFETY: non-null pointers passed here are ones `on_http_filter_config_new` returned and Envoy has not yet
    // destroyed (see the module doc).
    unsafe { ptr.cast::<FilterConfig>().as_ref() }
}

fn filter<'a>(ptr: *const c_void) -> Option<&'a mut Filter<'static>> {
    // SAFETY: as above, for `on_http_filter_new`; Envoy calls a filter's hooks on one thread, never nested.
    unsafe { ptr.cast::<Filter<'static>>().cast_mut().as_mut() }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    crate::logger::init();
    ABI_VERSION.as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: ConfigPtr,
    name: Buffer,
    config: Buffer,
) -> *const c_void {
    // SAFETY: Envoy's buffers are valid for this call.
    let (name, bytes) = unsafe { (name.bytes(), config.bytes()) };
    match FilterConfig::new(envoy, bytes) {
        Ok(c) => {
            let ptr = Box::into_raw(Box::new(c)).cast_const();
            crate::config::register(ptr);
            ptr.cast()
        }
        Err(e) => {
            log::error!("filter {:?}: {e}", String::from_utf8_lossy(name));
            std::ptr::null()
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: *const c_void) {
    if config.is_null() {
        return;
    }
    // Envoy destroys a configuration on the main thread, or on a worker when a request outlived it (see
    // `config::LIVE`): the other configurations are only used while `live` is held, and streams are only started
    // on the main thread.
    let live = crate::config::unregister(config.cast());
    let on_main = crate::config::on_main_thread();
    // SAFETY: the pointer `on_http_filter_config_new` leaked, destroyed once; no longer in LIVE, so no other
    // thread finds it any more.
    let mut config = unsafe { Box::from_raw(config.cast::<FilterConfig>().cast_mut()) };
    let FilterConfig { report, registry, .. } = &mut *config;
    // Before Envoy destroys this configuration's metric scope: the successor's scope takes its series over.
    if let Some(next) = live.successor() {
        if let Err(e) = lock(registry).hand_series_to(&lock(&next.registry), next.envoy.0) {
            log::warn!("handing the metric series to the successor configuration: {e}");
        }
    }
    if let Some(report) = report {
        report.shutdown(registry, live.adopter(), on_main);
    }
    drop(live);
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config_ptr: *const c_void,
    _envoy: FilterPtr,
) -> *const c_void {
    match config(config_ptr) {
        Some(c) => Box::into_raw(Box::new(Filter::new(c))).cast_const().cast(),
        None => std::ptr::null(),
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterPtr,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    if let Some(f) = filter(module) {
        f.on_request_headers(envoy);
    }
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(envoy: FilterPtr, module: *const c_void) {
    if let Some(f) = filter(module) {
        f.on_stream_complete(envoy);
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: *const c_void) {
    if !module.is_null() {
        // SAFETY: the pointer `on_http_filter_new` leaked, destroyed once.
        drop(unsafe { Box::from_raw(module.cast::<Filter<'static>>().cast_mut()) });
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(_: FilterPtr, _: *const c_void, _: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(_: FilterPtr, _: *const c_void) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(_: FilterPtr, _: *const c_void, _: bool) -> u32 {
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterPtr,
    module: *const c_void,
    _end_of_stream: bool,
) -> u32 {
    if let Some(f) = filter(module) {
        f.on_response_body(envoy);
    }
    CONTINUE
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    envoy: FilterPtr,
    module: *const c_void,
) -> u32 {
    if let Some(f) = filter(module) {
        f.on_response_trailers(envoy);
    }
    CONTINUE
}

// Per-filter callouts, streams and schedulers: this filter starts none, so these never fire.
#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: u32,
    _: *mut Header,
    _: usize,
    _: *mut Buffer,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: *mut Header,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: *const Buffer,
    _: usize,
    _: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: *mut Header,
    _: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(_: FilterPtr, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _: FilterPtr,
    _: *const c_void,
    _: u64,
    _: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(_: FilterPtr, _: *const c_void, _: u64) {}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _: FilterPtr,
    _: *const c_void,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _: FilterPtr,
    _: *const c_void,
) {
}

// The configuration's own events: the report timer and the report calls' answers (main thread).

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(_: ConfigPtr, module: *const c_void, _: u64) {
    if let Some(c) = config(module) {
        if let Some(report) = &c.report {
            report.flush(&c.registry);
        }
    }
}

/// Copies Envoy's header views into pairs of byte slices.
///
/// # Safety
/// `headers` must be null or point to `n` headers whose buffers are valid for `'a`.
unsafe fn pairs<'a>(headers: *const Header, n: usize) -> Vec<(&'a [u8], &'a [u8])> {
    if headers.is_null() || n == 0 {
        return Vec::new();
    }
    // SAFETY: as the caller promises.
    let hs = unsafe { std::slice::from_raw_parts(headers, n) };
    // SAFETY: as above, for each buffer.
    hs.iter().map(|h| unsafe { (h.key.bytes(), h.value.bytes()) }).collect()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_headers(
    _: ConfigPtr,
    module: *const c_void,
    stream: u64,
    headers: *mut Header,
    n: usize,
    _end_stream: bool,
) {
    if let Some(report) = config(module).and_then(|c| c.report.as_ref()) {
        // SAFETY: Envoy's headers are valid until this hook returns.
        report.on_headers(stream, &unsafe { pairs(headers, n) });
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_data(
    _: ConfigPtr,
    _: *const c_void,
    _: u64,
    _: *const Buffer,
    _: usize,
    _: bool,
) {
    // The `ReportResponse` carries nothing the filter needs; the status is in the trailers.
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_trailers(
    _: ConfigPtr,
    module: *const c_void,
    stream: u64,
    trailers: *mut Header,
    n: usize,
) {
    if let Some(report) = config(module).and_then(|c| c.report.as_ref()) {
        // SAFETY: as above.
        report.on_headers(stream, &unsafe { pairs(trailers, n) });
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_complete(
    _: ConfigPtr,
    module: *const c_void,
    stream: u64,
) {
    if let Some(c) = config(module) {
        if let Some(report) = &c.report {
            report.on_end(&c.registry, stream, false);
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_stream_reset(
    _: ConfigPtr,
    module: *const c_void,
    stream: u64,
    _reason: u32,
) {
    if let Some(c) = config(module) {
        if let Some(report) = &c.report {
            report.on_end(&c.registry, stream, true);
        }
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _: ConfigPtr,
    _: *const c_void,
    _: u64,
    _: u32,
    _: *mut Header,
    _: usize,
    _: *mut Buffer,
    _: usize,
) {
}
