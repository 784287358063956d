//! `log` records into Envoy's log (component `dynamic_modules`), prefixed with the filter's name.

use log::{Level, LevelFilter, Log, Metadata, Record};

use crate::abi::{self, level};

struct EnvoyLog;

static LOGGER: EnvoyLog = EnvoyLog;

impl Log for EnvoyLog {
    fn enabled(&self, metadata: &Metadata<'_>) -> bool {
        metadata.level() <= Level::Info
    }

    fn log(&self, record: &Record<'_>) {
        let lvl = match record.level() {
            Level::Error => level::ERROR,
            Level::Warn => level::WARN,
            Level::Info => level::INFO,
            Level::Debug | Level::Trace => level::DEBUG,
        };
        abi::log(lvl, &format!("grayscope: {}", record.args()));
    }

    fn flush(&self) {}
}

/// Installs the logger once per process (a second module load finds it installed, which is fine).
pub fn init() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Info);
    }
}
