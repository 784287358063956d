//! The tenant dimension's metrics: the per-VM cap on tenant labels, the latency histogram per interface × tenant,
//! and the counters of refused ids and of labels past the cap.
//!
//! Every call of a VM whose configuration has a `tenant` section is recorded exactly once in
//! `grayscope_tenant_call_duration_milliseconds`, so the histogram's `_count` summed over tenants equals the calls
//! summed over `grayscope_interface_calls_total`. Allowlisted labels are bounded by the configuration and always
//! kept; tier and hash labels count against `max_tenants`, and past it calls are labelled `other` and counted in
//! `grayscope_tenant_overflow_total`.

use std::{collections::HashMap, sync::Arc};

use super::{stat_name, Kind, MetricHost, Side};
use crate::{
    interface::RpcSystem,
    tenant::{Invalid, Source, Tenant, TenantConfig, HASHED_LABEL_LEN, OTHER},
};

pub const TENANT_DURATION: &str = "grayscope_tenant_call_duration_milliseconds";
pub const TENANT_INVALID: &str = "grayscope_tenant_invalid_total";
pub const TENANT_OVERFLOW: &str = "grayscope_tenant_overflow_total";
/// Label names of [`TENANT_DURATION`], in stat-name order.
pub const TENANT_DURATION_LABELS: [&str; 5] = ["direction", "rpc_system", "service", "method", "tenant"];

pub(super) struct TenantMetrics {
    max_tenants: usize,
    /// Tier and hash labels counted against `max_tenants`.
    distinct: usize,
    /// Label → index, and index → label.
    index: HashMap<Arc<str>, u32>,
    labels: Vec<Arc<str>>,
    /// (interface index, tenant index) → histogram id.
    durations: HashMap<(u32, u32), u32>,
    invalid: HashMap<(Source, Invalid), u32>,
    overflow: u32,
}

impl TenantMetrics {
    /// Defines the fixed counters, so they read 0 from the start.
    pub(super) fn new<H: MetricHost>(cfg: &TenantConfig, host: &mut H) -> Result<Self, H::Error> {
        let mut invalid = HashMap::new();
        for source in Source::ALL {
            for reason in Invalid::ALL {
                let name = stat_name(
                    TENANT_INVALID,
                    &[("source", source.as_str()), ("reason", reason.as_str())],
                );
                invalid.insert((source, reason), host.define(Kind::Counter, &name)?);
            }
        }
        Ok(Self {
            max_tenants: cfg.max_tenants,
            distinct: 0,
            index: HashMap::new(),
            labels: Vec::new(),
            durations: HashMap::new(),
            invalid,
            overflow: host.define(Kind::Counter, TENANT_OVERFLOW)?,
        })
    }

    pub(super) fn invalid<H: MetricHost>(&self, host: &mut H, source: Source, reason: Invalid) -> Result<(), H::Error> {
        match self.invalid.get(&(source, reason)) {
            Some(&id) => host.increment(id, 1),
            None => Ok(()),
        }
    }

    /// The label index of a tenant, applying the cap; allocates only for a label not seen before.
    fn label<H: MetricHost>(&mut self, host: &mut H, tenant: &Tenant) -> Result<u32, H::Error> {
        let mut buf = [0; HASHED_LABEL_LEN];
        let label = tenant.label(&mut buf);
        if let Some(&i) = self.index.get(label) {
            return Ok(i);
        }
        let label = if !tenant.capped() {
            label
        } else if self.distinct < self.max_tenants {
            self.distinct += 1;
            label
        } else {
            host.increment(self.overflow, 1)?;
            OTHER
        };
        if let Some(&i) = self.index.get(label) {
            return Ok(i);
        }
        let label: Arc<str> = Arc::from(label);
        self.labels.push(label.clone());
        let i = (self.labels.len() - 1) as u32;
        self.index.insert(label, i);
        Ok(i)
    }

    /// Records one call's duration under its interface and tenant; returns the tenant's bounded label.
    pub(super) fn call<H: MetricHost>(
        &mut self,
        host: &mut H,
        iface: u32,
        labels: Option<&(Side, RpcSystem, String, String)>,
        tenant: &Tenant,
        duration_ms: u64,
    ) -> Result<Arc<str>, H::Error> {
        let t = self.label(host, tenant)?;
        let label = self.labels.get(t as usize).cloned().unwrap_or_else(|| Arc::from(OTHER));
        let id = match self.durations.get(&(iface, t)) {
            Some(&id) => id,
            None => {
                let (side, system, service, method) = match labels {
                    Some((side, system, service, method)) => (side.as_str(), system.as_str(), &**service, &**method),
                    None => ("", "", "", ""),
                };
                let name = stat_name(
                    TENANT_DURATION,
                    &[
                        ("direction", side),
                        ("rpc_system", system),
                        ("service", service),
                        ("method", method),
                        ("tenant", &label),
                    ],
                );
                let id = host.define(Kind::Histogram, &name)?;
                self.durations.insert((iface, t), id);
                id
            }
        };
        host.record(id, duration_ms)?;
        Ok(label)
    }
}

#[cfg(test)]
mod tests;
