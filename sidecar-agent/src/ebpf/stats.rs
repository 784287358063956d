//! Counters that live in the kernel: events produced and dropped by the programs (the per-CPU `stats` map), the
//! programs' own run counts (`BPF_ENABLE_STATS`), and the `listeners` map.

use std::{
    net::SocketAddr,
    os::fd::OwnedFd,
    sync::{Mutex, PoisonError},
    time::Duration,
};

use aya::{
    maps::{MapData, PerCpuArray},
    Ebpf,
};

use super::listeners::{KernelListeners, ListenOwner};

/// Slots of the `stats` map (`GS_STAT_*` in `conn_event.h`).
const STAT_PRODUCED: u32 = 0;
const STAT_DROPPED: u32 = 1;
const STAT_UNOWNED: u32 = 2;

/// Sums of the per-CPU counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// Events the programs tried to emit.
    pub produced: u64,
    /// Of those, the ones the ring buffer had no room for.
    pub dropped: u64,
    /// Passive opens whose listener had no known owner (emitted without one).
    pub unowned: u64,
}

/// One program's statistics.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgramRuns {
    /// The program's function name.
    pub program: &'static str,
    /// How many times it ran.
    pub runs: u64,
    /// Total time spent in it.
    pub run_time: Duration,
}

/// The loaded object (its programs stay attached while this lives) and its counters.
pub struct KernelStats {
    /// Programs and links; locked only to read program info.
    ebpf: Mutex<Ebpf>,
    /// The per-CPU `stats` map.
    counters: Mutex<PerCpuArray<MapData, u64>>,
    /// The owners of the listening sockets.
    listeners: Mutex<KernelListeners>,
    /// Keeps `BPF_ENABLE_STATS` on; `None` when the kernel refused it.
    program_stats: Option<OwnedFd>,
    /// The attached programs' names.
    programs: Vec<&'static str>,
}

// === impl KernelStats ===

impl KernelStats {
    pub(crate) fn new(
        ebpf: Ebpf,
        counters: PerCpuArray<MapData, u64>,
        listeners: KernelListeners,
        program_stats: Option<OwnedFd>,
        programs: Vec<&'static str>,
    ) -> Self {
        Self {
            ebpf: Mutex::new(ebpf),
            counters: Mutex::new(counters),
            listeners: Mutex::new(listeners),
            program_stats,
            programs,
        }
    }

    /// Current produced/dropped totals over all CPUs.
    pub fn counters(&self) -> Result<KernelCounters, aya::maps::MapError> {
        let map = self.counters.lock().unwrap_or_else(PoisonError::into_inner);
        let sum = |slot: u32| -> Result<u64, aya::maps::MapError> {
            Ok(map.get(&slot, 0)?.iter().copied().fold(0u64, u64::wrapping_add))
        };
        Ok(KernelCounters {
            produced: sum(STAT_PRODUCED)?,
            dropped: sum(STAT_DROPPED)?,
            unowned: sum(STAT_UNOWNED)?,
        })
    }

    /// The owner the kernel holds for the listener of namespace `netns` bound to `addr` (a wildcard bind is
    /// `0.0.0.0` or `[::]`).
    pub fn listener_owner(&self, netns: u32, addr: SocketAddr) -> Option<ListenOwner> {
        let map = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
        map.owner(netns, addr)
    }

    /// Number of listeners the kernel holds an owner for.
    pub fn listeners(&self) -> usize {
        let map = self.listeners.lock().unwrap_or_else(PoisonError::into_inner);
        map.len()
    }

    /// Run counts of the programs, when the kernel keeps them: `BPF_ENABLE_STATS` was accepted (it needs
    /// CAP_SYS_ADMIN), or the host turned on the `kernel.bpf_stats_enabled` sysctl.
    pub fn program_runs(&self) -> Option<Vec<ProgramRuns>> {
        if self.program_stats.is_none() && !sysctl_stats_enabled() {
            return None;
        }
        let ebpf = self.ebpf.lock().unwrap_or_else(PoisonError::into_inner);
        let runs = self
            .programs
            .iter()
            .filter_map(|&program| {
                let info = ebpf.program(program)?.info().ok()?;
                Some(ProgramRuns {
                    program,
                    runs: info.run_count(),
                    run_time: info.run_time(),
                })
            })
            .collect();
        Some(runs)
    }
}

fn sysctl_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|v| v.trim() == "1")
}

impl std::fmt::Debug for KernelStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KernelStats")
            .field("program_stats", &self.program_stats.is_some())
            .finish_non_exhaustive()
    }
}
