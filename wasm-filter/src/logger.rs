//! Routes `log` records, and the message of any panic, into Envoy's log through the non-panicking hostcall.
//!
//! The SDK's own logger `unwrap`s the log hostcall's status; this one ignores it, since a log line that cannot be
//! written has nowhere else to go.

use crate::abi;

struct EnvoyLog;

static LOGGER: EnvoyLog = EnvoyLog;

impl log::Log for EnvoyLog {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let level = match record.level() {
            log::Level::Trace => 0,
            log::Level::Debug => 1,
            log::Level::Info => 2,
            log::Level::Warn => 3,
            log::Level::Error => 4,
        };
        abi::log(level, &record.args().to_string());
    }

    fn flush(&self) {}
}

/// Installs the logger (Envoy filters by its own `wasm` log level, so everything down to debug is passed on) and a
/// panic hook that logs at critical. A panic should not happen, the lints forbid the usual causes; if it does,
/// its message is the one thing an operator needs.
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    std::panic::set_hook(Box::new(|info| abi::log(5, &format!("panic: {info}"))));
}
