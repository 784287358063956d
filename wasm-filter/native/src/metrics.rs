//! The core's [`MetricHost`] on Envoy's dynamic-module metrics.
//!
//! The core names a series the way Istio's `extraStatTags` read it: `name=.=value;.;` segments, then the metric
//! (`direction=.=inbound;.;...;grayscope_interface_calls_total`), and the wasm host hands that whole name to
//! Envoy, whose `stats_tags` regexes turn the segments into labels. Dynamic modules differ in two ways: a metric
//! is defined once with its label *names* and each update passes the label *values*; and definitions are only
//! allowed while the filter configuration is created (Envoy freezes them afterwards). So this host splits each
//! name back into metric and labels (the core's escaping guarantees neither separator occurs inside a value, and
//! values are passed as the core escaped them, so both builds expose identical label values), defines every
//! metric up front (the core's fixed ones through `Metrics::new`/`Reporter::new`, the per-call ones from
//! [`PER_CALL`]), and after that keeps a table of series for the ids the core asks for.

use std::{
    collections::HashMap,
    sync::{Mutex, PoisonError},
};

use wasm_filter_core::metrics::{self, Kind, MetricHost};

use crate::abi::{self, AbiError, ConfigPtr, FilterPtr, MetricKind, MetricOp, MetricTarget};

/// The metrics the core defines lazily, per interface and version, with their label names in stat-name order.
const PER_CALL: [(Kind, &str, &[&str]); 2] = [
    (
        Kind::Counter,
        metrics::CALLS,
        &["direction", "rpc_system", "service", "method", "gray_version", "status"],
    ),
    (
        Kind::Histogram,
        metrics::DURATION,
        &["direction", "rpc_system", "service", "method", "gray_version"],
    ),
];

/// Why a metric could not be used.
#[derive(Debug)]
pub enum MetricError {
    Abi(AbiError),
    /// A metric the host did not define while it could (Envoy refuses definitions after configuration).
    Undeclared(String),
    UnknownId(u32),
}

impl std::fmt::Display for MetricError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Abi(e) => e.fmt(f),
            Self::Undeclared(name) => write!(f, "metric {name:?} was not defined at configuration time"),
            Self::UnknownId(id) => write!(f, "no metric series with id {id}"),
        }
    }
}

impl From<AbiError> for MetricError {
    fn from(e: AbiError) -> Self {
        Self::Abi(e)
    }
}

/// A metric defined in Envoy: its name and kind, label names and Envoy's id.
struct Family {
    name: String,
    core: Kind,
    kind: MetricKind,
    labels: Vec<String>,
    envoy_id: usize,
}

/// One series the core uses: a family and its label values.
struct Series {
    family: usize,
    values: Vec<String>,
}

/// Families (defined in Envoy) and the series handed to the core as ids.
#[derive(Default)]
pub struct Registry {
    families: Vec<Family>,
    family_index: HashMap<(String, Kind), usize>,
    series: Vec<Series>,
    series_index: HashMap<(String, Kind), u32>,
    /// Set once the configuration is created: no new family from then on.
    frozen: bool,
}

/// Splits `l1=.=v1;.;l2=.=v2;.;metric` into the metric and its (label, value) pairs.
pub fn split(name: &str) -> (&str, Vec<(&str, &str)>) {
    let mut rest = name;
    let mut labels = Vec::new();
    while let Some(eq) = rest.find("=.=") {
        let key = &rest[..eq];
        let after = &rest[eq + 3..];
        let Some(end) = after.find(";.;") else { break };
        labels.push((key, &after[..end]));
        rest = &after[end + 3..];
    }
    (rest, labels)
}

fn kind_of(kind: Kind) -> MetricKind {
    match kind {
        Kind::Counter => MetricKind::Counter,
        Kind::Gauge => MetricKind::Gauge,
        Kind::Histogram => MetricKind::Histogram,
    }
}

impl Registry {
    /// Defines the per-call metrics the core only names on first use (the tenant histogram only when the
    /// dimension is on, so a configuration without it exposes nothing new).
    pub fn declare_per_call(&mut self, config: ConfigPtr, tenant: bool) -> Result<(), MetricError> {
        let tenant_family = (
            Kind::Histogram,
            metrics::TENANT_DURATION,
            &metrics::TENANT_DURATION_LABELS[..],
        );
        for (kind, name, labels) in PER_CALL.into_iter().chain(tenant.then_some(tenant_family)) {
            let labels: Vec<String> = labels.iter().map(|l| (*l).to_owned()).collect();
            self.family(config, kind, name, labels)?;
        }
        Ok(())
    }

    pub fn freeze(&mut self) {
        self.frozen = true;
    }

    fn family(&mut self, config: ConfigPtr, kind: Kind, name: &str, labels: Vec<String>) -> Result<usize, MetricError> {
        if let Some(&i) = self.family_index.get(&(name.to_owned(), kind)) {
            return Ok(i);
        }
        if self.frozen {
            return Err(MetricError::Undeclared(name.to_owned()));
        }
        let envoy_id = abi::define_metric(config, kind_of(kind), name, &labels)?;
        self.families.push(Family {
            name: name.to_owned(),
            core: kind,
            kind: kind_of(kind),
            labels,
            envoy_id,
        });
        let i = self.families.len() - 1;
        self.family_index.insert((name.to_owned(), kind), i);
        Ok(i)
    }

    fn define(&mut self, config: ConfigPtr, target: MetricTarget, kind: Kind, full: &str) -> Result<u32, MetricError> {
        if let Some(&id) = self.series_index.get(&(full.to_owned(), kind)) {
            return Ok(id);
        }
        let (metric, pairs) = split(full);
        let names: Vec<String> = pairs.iter().map(|(k, _)| (*k).to_owned()).collect();
        let family = self.family(config, kind, metric, names.clone())?;
        if self.families.get(family).map(|f| &f.labels) != Some(&names) {
            // Same metric, other label names: the core never does this; refuse rather than mislabel.
            return Err(MetricError::Undeclared(full.to_owned()));
        }
        self.series.push(Series {
            family,
            values: pairs.iter().map(|(_, v)| (*v).to_owned()).collect(),
        });
        let id = (self.series.len() - 1) as u32;
        self.series_index.insert((full.to_owned(), kind), id);
        // Envoy creates a labelled series on its first update, where the wasm host's define creates it at once:
        // adding 0 makes a defined counter or gauge read 0 from the start in both builds (a histogram cannot be
        // touched without a sample, and the core defines those only to record one).
        if kind != Kind::Histogram {
            self.update(target, id, MetricOp::Increment, 0)?;
        }
        Ok(id)
    }

    /// Touches every counter and gauge series of this registry through `successor`'s configuration (`config`),
    /// adding 0: Envoy keeps a labelled series in the scope of the configuration that updated it and destroys that
    /// scope with the configuration, so a series only the configuration being destroyed used (an interface the
    /// successor has not served yet) would vanish with its count. The wasm build keeps its VM, and its metrics,
    /// across a configuration change. A histogram cannot be touched without a sample: its series lives on once
    /// the successor records one. Every series is tried; the first error is returned.
    pub fn hand_series_to(&self, successor: &Registry, config: ConfigPtr) -> Result<(), MetricError> {
        let mut result = Ok(());
        for series in &self.series {
            let Some(family) = self.families.get(series.family) else {
                continue;
            };
            if family.core == Kind::Histogram {
                continue;
            }
            let theirs = successor
                .family_index
                .get(&(family.name.clone(), family.core))
                .and_then(|&i| successor.families.get(i))
                .filter(|f| f.labels == family.labels);
            // A metric the successor does not define (a dimension it turned off) goes with this configuration.
            let Some(theirs) = theirs else { continue };
            let touched = abi::update_metric(
                MetricTarget::Config(config),
                theirs.kind,
                MetricOp::Increment,
                theirs.envoy_id,
                &series.values,
                0,
            );
            if let (Ok(()), Err(e)) = (&result, touched) {
                result = Err(e.into());
            }
        }
        result
    }

    fn update(&self, target: MetricTarget, id: u32, op: MetricOp, value: u64) -> Result<(), MetricError> {
        let series = self.series.get(id as usize).ok_or(MetricError::UnknownId(id))?;
        let family = self.families.get(series.family).ok_or(MetricError::UnknownId(id))?;
        abi::update_metric(target, family.kind, op, family.envoy_id, &series.values, value)?;
        Ok(())
    }
}

/// The host the core sees: Envoy's configuration and the shared registry (locked per call, never while the
/// caller waits on something else, so there is no lock order to get wrong), and the request's filter while one of
/// its hooks runs.
pub struct Host<'a> {
    pub config: ConfigPtr,
    pub registry: &'a Mutex<Registry>,
    /// Inside a request's hook, updates go through its filter (measured cheaper per call, bench/RESULTS.md); the
    /// tick and the configuration's own counters, which have no stream, update through the configuration.
    pub filter: Option<FilterPtr>,
}

impl<'a> Host<'a> {
    /// The host outside any request: every update through the configuration.
    pub fn on_config(config: ConfigPtr, registry: &'a Mutex<Registry>) -> Self {
        Self {
            config,
            registry,
            filter: None,
        }
    }

    fn with<T>(&self, f: impl FnOnce(&mut Registry) -> T) -> T {
        let mut registry = self.registry.lock().unwrap_or_else(PoisonError::into_inner);
        f(&mut registry)
    }

    fn target(&self) -> MetricTarget {
        match self.filter {
            Some(filter) => MetricTarget::Filter(filter),
            None => MetricTarget::Config(self.config),
        }
    }
}

impl MetricHost for Host<'_> {
    type Error = MetricError;
    fn define(&mut self, kind: Kind, name: &str) -> Result<u32, MetricError> {
        let (config, target) = (self.config, self.target());
        self.with(|r| r.define(config, target, kind, name))
    }
    fn increment(&mut self, id: u32, by: u64) -> Result<(), MetricError> {
        let target = self.target();
        self.with(|r| r.update(target, id, MetricOp::Increment, by))
    }
    fn record(&mut self, id: u32, value: u64) -> Result<(), MetricError> {
        let target = self.target();
        self.with(|r| r.update(target, id, MetricOp::Record, value))
    }
    fn add(&mut self, id: u32, delta: i64) -> Result<(), MetricError> {
        let target = self.target();
        let op = if delta < 0 {
            MetricOp::Decrement
        } else {
            MetricOp::Increment
        };
        self.with(|r| r.update(target, id, op, delta.unsigned_abs()))
    }
}

#[cfg(test)]
mod tests {
    use super::split;
    use wasm_filter_core::metrics::stat_name;

    #[test]
    fn split_inverts_the_core_stat_names_even_for_hostile_values() {
        for value in ["GET /a", "x;.;y", "a=.=b", "semi;", "=.", "", "tab\there"] {
            let name = stat_name("m_total", &[("service", value), ("method", "m")]);
            let (metric, labels) = split(&name);
            assert_eq!(metric, "m_total");
            let mut escaped = String::new();
            wasm_filter_core::metrics::escape(value, &mut escaped);
            assert_eq!(labels, vec![("service", escaped.as_str()), ("method", "m")]);
        }
        assert_eq!(split("plain_total"), ("plain_total", vec![]));
    }
}
