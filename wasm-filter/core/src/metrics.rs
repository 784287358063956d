//! The filter's metrics: names, labels, and the bounds that keep their cardinality fixed.
//!
//! Labels travel inside the stat name the way Istio's `extraStatTags` read them: each label is a
//! `name=.=value;.;` segment, all segments come first and the metric name last, e.g.
//! `direction=.=inbound;.;rpc_system=.=grpc;.;...;.;grayscope_interface_calls_total`. Envoy's `stats_tags` regex
//! `(name=\.=(.*?);\.;)` turns each segment into a Prometheus label. Envoy keeps a value's bytes as they are except
//! where they would end a segment early, so [`escape`] percent-encodes only those: `;` before `.`, `=` before
//! `.=`, and control characters.
//!
//! Bounds: at most `max_interfaces` interfaces per VM (then service and method are `other`), and either an
//! allowlist of versions (others are `unknown`) or at most `max_versions` (then `other`). Every call increments
//! exactly one series of `grayscope_interface_calls_total`, so the sum over the series is the number of calls.
//! With the tenant dimension on, every call is also recorded once in the per-tenant histogram, under a label
//! bounded by `tenant.max_tenants` (the private `tenant` submodule owns those bounds).

mod tenant;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

pub use self::tenant::{TENANT_DURATION, TENANT_DURATION_LABELS, TENANT_INVALID, TENANT_OVERFLOW};

use crate::{
    config::{Config, Direction},
    gray::{Invalid, Source},
    interface::{Interface, RpcSystem},
    status::Status,
    tenant::Tenant,
};

pub const CALLS: &str = "grayscope_interface_calls_total";
pub const DURATION: &str = "grayscope_interface_call_duration_milliseconds";
pub const GRAY_INVALID: &str = "grayscope_gray_version_invalid_total";
pub const GRAY_OVERFLOW: &str = "grayscope_gray_version_overflow_total";
pub const INTERFACE_OVERFLOW: &str = "grayscope_interface_overflow_total";
pub const BAGGAGE_DROPPED: &str = "grayscope_baggage_members_dropped_total";

/// Label names, in the order they appear in stat names (and must appear in `stats_tags`); the last, the heartbeat's
/// (`crate::heartbeat`).
pub const LABELS: [&str; 11] = [
    "direction",
    "rpc_system",
    "service",
    "method",
    "gray_version",
    "status",
    "source",
    "reason",
    "cause",
    "tenant",
    crate::heartbeat::PLUGIN,
];

/// The `service`/`method` of calls past the interface cap, and the version label past the version cap.
pub const OTHER: &str = "other";
/// Version label of a request without a version.
pub const NONE: &str = "none";
/// Version label of a valid version outside the allowlist.
pub const UNKNOWN: &str = "unknown";

/// The host's metric store: Envoy's custom metrics in the wasm shell, a recorder in tests.
pub trait MetricHost {
    type Error: std::fmt::Display;
    fn define(&mut self, kind: Kind, name: &str) -> Result<u32, Self::Error>;
    fn increment(&mut self, id: u32, by: u64) -> Result<(), Self::Error>;
    fn record(&mut self, id: u32, value: u64) -> Result<(), Self::Error>;
    /// Moves a gauge by `delta` (each VM adds its own share, so gauges sum across VMs).
    fn add(&mut self, id: u32, delta: i64) -> Result<(), Self::Error>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Which side of the workload the call was seen on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Inbound,
    Outbound,
    /// The listener does not say, and the configuration does not either.
    Unspecified,
}

impl Side {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Inbound => "inbound",
            Self::Outbound => "outbound",
            Self::Unspecified => "unspecified",
        }
    }

    /// From the configuration, or else from Envoy's `xds.listener_direction` (1 inbound, 2 outbound).
    pub fn resolve(configured: Direction, listener_direction: impl FnOnce() -> Option<u64>) -> Self {
        match configured {
            Direction::Inbound => Self::Inbound,
            Direction::Outbound => Self::Outbound,
            Direction::Auto => match listener_direction() {
                Some(1) => Self::Inbound,
                Some(2) => Self::Outbound,
                _ => Self::Unspecified,
            },
        }
    }
}

/// Why baggage members were dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dropped {
    Malformed,
    OverLimit,
}

impl Dropped {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed",
            Self::OverLimit => "over_limit",
        }
    }
}

/// One finished call, as the metrics see it.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    pub side: Side,
    pub interface: &'a Interface,
    /// The `service` label of an HTTP interface (a gRPC interface names its own).
    pub http_service: &'a str,
    pub version: Option<&'a str>,
    pub status: Status,
    pub duration_ms: u64,
    /// The request's tenant; `None` when the dimension is off.
    pub tenant: Option<&'a Tenant>,
}

/// An interface as its labels show it: (direction, rpc_system, service, method).
type InterfaceKey = (Side, RpcSystem, String, String);

/// service → gRPC method or HTTP route → interface index.
type ByService = HashMap<String, HashMap<String, u32>>;

/// The filter's metric ids and bounds, one per VM.
///
/// Label values are interned: a call finds its interface and version through maps keyed by `&str`, and its series
/// through small integer keys, so counting a call allocates nothing once its interface and version were seen.
pub struct Metrics {
    max_interfaces: usize,
    allowed_versions: Option<HashSet<String>>,
    max_versions: usize,
    /// (direction, system, HTTP verb or "") → service → gRPC method or HTTP route → interface index.
    interface_index: HashMap<(Side, RpcSystem, &'static str), ByService>,
    /// The `other` interface of each (direction, system), once calls overflowed into it.
    overflow_index: HashMap<(Side, RpcSystem), u32>,
    /// Interface index → labels.
    interfaces: Vec<InterfaceKey>,
    /// Interfaces counted against `max_interfaces` (the `other` ones are not).
    distinct_interfaces: usize,
    /// Version label → index, and index → label.
    version_index: HashMap<String, u32>,
    versions: Vec<String>,
    /// Versions counted against `max_versions`.
    distinct_versions: usize,
    calls: HashMap<(u32, u32, Status), u32>,
    durations: HashMap<(u32, u32), u32>,
    gray_invalid: HashMap<(Source, Invalid), u32>,
    baggage_dropped: HashMap<Dropped, u32>,
    interface_overflow: u32,
    gray_overflow: u32,
    /// The tenant dimension, when configured.
    tenant: Option<tenant::TenantMetrics>,
}

impl Metrics {
    /// Defines the fixed counters up front, so they read 0 before anything happens.
    pub fn new<H: MetricHost>(cfg: &Config, host: &mut H) -> Result<Self, H::Error> {
        let mut gray_invalid = HashMap::new();
        for source in Source::ALL {
            for reason in Invalid::ALL {
                let name = stat_name(
                    GRAY_INVALID,
                    &[("source", source.as_str()), ("reason", reason.as_str())],
                );
                gray_invalid.insert((source, reason), host.define(Kind::Counter, &name)?);
            }
        }
        let mut baggage_dropped = HashMap::new();
        for cause in [Dropped::Malformed, Dropped::OverLimit] {
            let name = stat_name(BAGGAGE_DROPPED, &[("cause", cause.as_str())]);
            baggage_dropped.insert(cause, host.define(Kind::Counter, &name)?);
        }
        let tenant = match &cfg.tenant {
            Some(t) => Some(tenant::TenantMetrics::new(t, host)?),
            None => None,
        };
        Ok(Self {
            tenant,
            max_interfaces: cfg.max_interfaces,
            allowed_versions: cfg.gray.allowed_versions.as_ref().map(|v| v.iter().cloned().collect()),
            max_versions: cfg.gray.max_versions,
            interface_index: HashMap::new(),
            overflow_index: HashMap::new(),
            interfaces: Vec::new(),
            distinct_interfaces: 0,
            version_index: HashMap::new(),
            versions: Vec::new(),
            distinct_versions: 0,
            calls: HashMap::new(),
            durations: HashMap::new(),
            gray_invalid,
            baggage_dropped,
            interface_overflow: host.define(Kind::Counter, INTERFACE_OVERFLOW)?,
            gray_overflow: host.define(Kind::Counter, GRAY_OVERFLOW)?,
        })
    }

    pub fn gray_invalid<H: MetricHost>(&self, host: &mut H, source: Source, reason: Invalid) -> Result<(), H::Error> {
        match self.gray_invalid.get(&(source, reason)) {
            Some(&id) => host.increment(id, 1),
            None => Ok(()),
        }
    }

    pub fn baggage_dropped<H: MetricHost>(&self, host: &mut H, cause: Dropped, n: usize) -> Result<(), H::Error> {
        match self.baggage_dropped.get(&cause) {
            Some(&id) if n > 0 => host.increment(id, n as u64),
            _ => Ok(()),
        }
    }

    /// Counts a tenant id or tier the request carried and the filter refused.
    pub fn tenant_invalid<H: MetricHost>(
        &self,
        host: &mut H,
        source: crate::tenant::Source,
        reason: crate::tenant::Invalid,
    ) -> Result<(), H::Error> {
        match &self.tenant {
            Some(t) => t.invalid(host, source, reason),
            None => Ok(()),
        }
    }

    /// Counts one call and records its duration (per tenant too, when the dimension is on). Returns the call's
    /// bounded tenant label, for its record.
    pub fn call<H: MetricHost>(&mut self, host: &mut H, call: &Call<'_>) -> Result<Option<Arc<str>>, H::Error> {
        let iface = self.interface(host, call)?;
        let version = self.version(host, call.version)?;
        let id = match self.calls.get(&(iface, version, call.status)) {
            Some(&id) => id,
            None => {
                let id = host.define(
                    Kind::Counter,
                    &self.series_name(CALLS, iface, version, Some(call.status)),
                )?;
                self.calls.insert((iface, version, call.status), id);
                id
            }
        };
        host.increment(id, 1)?;
        let id = match self.durations.get(&(iface, version)) {
            Some(&id) => id,
            None => {
                let id = host.define(Kind::Histogram, &self.series_name(DURATION, iface, version, None))?;
                self.durations.insert((iface, version), id);
                id
            }
        };
        host.record(id, call.duration_ms)?;
        match (&mut self.tenant, call.tenant) {
            (Some(metrics), Some(t)) => {
                let labels = self.interfaces.get(iface as usize);
                metrics.call(host, iface, labels, t, call.duration_ms).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The interface index of a call: its own while under `max_interfaces`, else its direction's `other`.
    fn interface<H: MetricHost>(&mut self, host: &mut H, call: &Call<'_>) -> Result<u32, H::Error> {
        let system = call.interface.system();
        let (verb, service, method) = match call.interface {
            Interface::Grpc { service, method } => ("", service.as_str(), method.as_str()),
            Interface::Http { verb, route } => (*verb, call.http_service, route.as_str()),
        };
        let outer = (call.side, system, verb);
        let known = self
            .interface_index
            .get(&outer)
            .and_then(|by_service| by_service.get(service)?.get(method));
        if let Some(&i) = known {
            return Ok(i);
        }
        if self.distinct_interfaces < self.max_interfaces {
            self.distinct_interfaces += 1;
            let i = self.push_interface((call.side, system, service.to_owned(), call.interface.method_label()));
            let by_method = self
                .interface_index
                .entry(outer)
                .or_default()
                .entry(service.to_owned())
                .or_default();
            by_method.insert(method.to_owned(), i);
            return Ok(i);
        }
        host.increment(self.interface_overflow, 1)?;
        if let Some(&i) = self.overflow_index.get(&(call.side, system)) {
            return Ok(i);
        }
        let i = self.push_interface((call.side, system, OTHER.to_owned(), OTHER.to_owned()));
        self.overflow_index.insert((call.side, system), i);
        Ok(i)
    }

    fn push_interface(&mut self, key: InterfaceKey) -> u32 {
        self.interfaces.push(key);
        (self.interfaces.len() - 1) as u32
    }

    /// The version label index: the version, or `none`, `unknown` (outside the allowlist), `other` (past the cap).
    fn version<H: MetricHost>(&mut self, host: &mut H, version: Option<&str>) -> Result<u32, H::Error> {
        let label = match (version, &self.allowed_versions) {
            (None, _) => NONE,
            (Some(v), Some(allowed)) => {
                if allowed.contains(v) {
                    v
                } else {
                    UNKNOWN
                }
            }
            (Some(v), None) if self.version_index.contains_key(v) => v,
            (Some(v), None) if self.distinct_versions < self.max_versions => {
                self.distinct_versions += 1;
                v
            }
            (Some(_), None) => {
                host.increment(self.gray_overflow, 1)?;
                OTHER
            }
        };
        if let Some(&i) = self.version_index.get(label) {
            return Ok(i);
        }
        self.versions.push(label.to_owned());
        let i = (self.versions.len() - 1) as u32;
        self.version_index.insert(label.to_owned(), i);
        Ok(i)
    }

    fn series_name(&self, metric: &str, iface: u32, version: u32, status: Option<Status>) -> String {
        let unknown = (Side::Unspecified, RpcSystem::Http, String::new(), String::new());
        let iface = self.interfaces.get(iface as usize).unwrap_or(&unknown);
        let version = self.versions.get(version as usize).map_or("", String::as_str);
        stat_name(metric, &series_labels(iface, version, status))
    }
}

fn series_labels<'a>(
    iface: &'a InterfaceKey,
    version: &'a str,
    status: Option<Status>,
) -> Vec<(&'static str, &'a str)> {
    let (side, system, service, method) = iface;
    let mut labels = vec![
        ("direction", side.as_str()),
        ("rpc_system", system.as_str()),
        ("service", service.as_str()),
        ("method", method.as_str()),
        ("gray_version", version),
    ];
    if let Some(status) = status {
        labels.push(("status", status.as_str()));
    }
    labels
}

/// `name=.=value;.;` for each label, then the metric name.
pub fn stat_name(metric: &str, labels: &[(&str, &str)]) -> String {
    let mut out =
        String::with_capacity(metric.len() + labels.iter().map(|(k, v)| k.len() + v.len() + 6).sum::<usize>());
    for (key, value) in labels {
        out.push_str(key);
        out.push_str("=.=");
        escape(value, &mut out);
        out.push_str(";.;");
    }
    out.push_str(metric);
    out
}

/// Appends `value`, percent-encoding only what would end its `name=.=value;.;` segment early or break the line:
/// `;` followed by `.` (with the terminator that follows, `;.` would become `;.;`), `=` followed by `.=` (a tag
/// opener), and control characters.
pub fn escape(value: &str, out: &mut String) {
    let bytes = value.as_bytes();
    for (i, c) in value.char_indices() {
        let next = bytes.get(i + 1).copied();
        let encode = match c {
            ';' => next == Some(b'.'),
            '=' => next == Some(b'.') && bytes.get(i + 2) == Some(&b'='),
            c => c.is_ascii_control(),
        };
        if encode {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
