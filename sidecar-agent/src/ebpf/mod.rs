//! Loading and attaching the kernel programs, and access to what they produce.
//!
//! [`Probe::load`] runs the [`preflight`] checks, loads `conn_track.bpf.o` with the network namespace filter
//! (`target_netns`), the pid namespace to name processes in ([`pidns`]) and the map sizes set at load time,
//! attaches the raw tracepoint `inet_sock_set_state` (and the accept syscall tracepoints only when asked: see
//! [`ProbeOptions::accept_tracepoints`]), seeds the `listeners` map with the listeners that existed before (see
//! [`listeners`]) and turns on the kernel's program statistics when it can.
//! The ring buffer then goes to a [`reader::Reader`]; the counters and the listeners stay reachable through
//! [`KernelStats`].

pub mod conn_state;
pub mod events;
pub mod listeners;
pub mod objects;
pub mod pidns;
pub mod preflight;
pub mod reader;
mod stats;

use std::{
    os::{fd::OwnedFd, unix::fs::MetadataExt},
    path::PathBuf,
    sync::Arc,
};

use aya::{
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Program, RawTracePoint, TracePoint},
    Btf, Ebpf, EbpfLoader,
};

use self::events::ConnEvent;
pub use self::{
    listeners::{KernelListeners, ListenOwner},
    stats::{KernelCounters, KernelStats, ProgramRuns},
};
use crate::{config::NetnsFilter, error::Error};

/// The programs of `conn_track.bpf.o` and where they attach: (program, tracefs category, tracepoint); an empty
/// category is a BTF tracepoint (`tp_btf`, attached by name, with no trace record formatted for it), which falls
/// back to [`RAW_FALLBACK`] where the kernel refuses it.
const PROGRAMS: [(&str, &str, &str); 3] = [
    ("handle_set_state", "", "inet_sock_set_state"),
    ("handle_accept4_exit", "syscalls", "sys_exit_accept4"),
    ("handle_accept_exit", "syscalls", "sys_exit_accept"),
];

/// The raw tracepoint build of `handle_set_state`: the same logic with every field of the socket and the task read
/// through `bpf_probe_read_kernel`, for kernels that refuse BTF tracing programs (`tp_btf` needs the kernel's
/// BTF and a kernel that lets tracing programs load; some lockdown policies refuse them as they refuse fentry).
const RAW_FALLBACK: &str = "handle_set_state_raw";

/// How many of [`PROGRAMS`] are syscall tracepoints (the last ones), attached only with
/// [`ProbeOptions::accept_tracepoints`].
const SYSCALL_PROGRAMS: usize = 2;

/// Load-time knobs of the kernel programs.
#[derive(Clone, Debug)]
pub struct ProbeOptions {
    /// Which network namespace to watch.
    pub netns: NetnsFilter,
    /// Size of the ring buffer in bytes (a power of two, at least a page).
    pub ring_buffer_bytes: u32,
    /// Capacity of the in-kernel LRU map of open connections.
    pub kernel_max_conns: u32,
    /// Also attach `syscalls:sys_exit_accept{4,}`, which name the exact process that accepted each connection
    /// (a pre-fork server's worker rather than the master that called listen()). Off by default: while any
    /// syscall tracepoint is enabled, every syscall of every process on the node takes the kernel's slow tracing
    /// path (measured at +1 ns on a 131 ns syscall on kernel 6.18: small there), and the program adds a run and an
    /// event per accepted connection.
    pub accept_tracepoints: bool,
    /// Turn on the kernel's run statistics (`BPF_ENABLE_STATS`) while the probe lives. Off by default: the kernel
    /// then reads the clock twice around every run of every BPF program of the node, not only ours. Without it
    /// the run counts are reported only when the host sets the `kernel.bpf_stats_enabled` sysctl.
    pub program_stats: bool,
    /// Attach the raw tracepoint build of the state-change program even where the kernel takes the BTF one: every
    /// field then costs a `bpf_probe_read_kernel` call. The agent falls back to it by itself; this is for tests.
    pub raw_tracepoint: bool,
}

/// The loaded and attached programs.
pub struct Probe {
    /// The ring buffer the programs write events into; taken by [`Probe::take_ring`].
    ring: Option<RingBuf<MapData>>,
    /// The kernel's map of open connections; taken by [`Probe::take_conns`].
    conns: Option<KernelConns>,
    /// The produced/dropped counters and the programs (their links detach when this is dropped).
    stats: Arc<KernelStats>,
    /// Inode of the watched namespace, 0 for all.
    netns: u32,
}

/// Loads `prog` as a BTF tracepoint against the running kernel's BTF and attaches it to tracepoint `name`.
fn attach_btf(prog: &mut Program, name: &str) -> Result<(), String> {
    let btf = Btf::from_sys_fs().map_err(|e| format!("kernel BTF: {e}"))?;
    let tp: &mut BtfTracePoint = prog.try_into().map_err(|e| format!("{e}"))?;
    tp.load(name, &btf).map_err(|e| format!("load: {e}"))?;
    tp.attach().map_err(|e| format!("attach: {e}"))?;
    Ok(())
}

/// The program `program` of the object.
fn program_mut<'a>(ebpf: &'a mut Ebpf, program: &'static str) -> Result<&'a mut Program, Error> {
    ebpf.program_mut(program).ok_or(Error::Map {
        name: program,
        detail: "program missing from the object".into(),
    })
}

/// Loads `program` and attaches it to tracepoint `name`: a raw tracepoint when `category` is empty, else the
/// tracefs event `category/name`.
fn attach_tracepoint(ebpf: &mut Ebpf, program: &'static str, category: &str, name: &str) -> Result<(), Error> {
    let prog_err = |source| Error::Program {
        program,
        source: Box::new(source),
    };
    let prog = program_mut(ebpf, program)?;
    if category.is_empty() {
        let tp: &mut RawTracePoint = prog.try_into().map_err(prog_err)?;
        tp.load().map_err(prog_err)?;
        tp.attach(name).map_err(prog_err)?;
    } else {
        let tp: &mut TracePoint = prog.try_into().map_err(prog_err)?;
        tp.load().map_err(prog_err)?;
        tp.attach(category, name).map_err(prog_err)?;
    }
    Ok(())
}

// === impl Probe ===

impl Probe {
    /// Checks the privileges, loads and attaches the programs.
    pub fn load(opts: &ProbeOptions) -> Result<Self, Error> {
        let object = objects::conn_track()?;
        preflight::check(opts.accept_tracepoints)?;
        raise_memlock();
        let netns = resolve_netns(&opts.netns)?;
        let pidns = pidns::own()?;
        let (pidns_dev, pidns_ino) = pidns.map_or((0, 0), |ns| (ns.dev, ns.ino));
        let mut ebpf = EbpfLoader::new()
            .override_global("target_netns", &netns, true)
            .override_global("pidns_dev", &pidns_dev, true)
            .override_global("pidns_ino", &pidns_ino, true)
            .override_global("ring_bytes", &opts.ring_buffer_bytes, true)
            .map_max_entries("events", opts.ring_buffer_bytes)
            .map_max_entries("conns", opts.kernel_max_conns)
            .load(object)
            .map_err(|e| Error::Load(Box::new(e)))?;
        let attached = if opts.accept_tracepoints {
            &PROGRAMS[..]
        } else {
            &PROGRAMS[..PROGRAMS.len() - SYSCALL_PROGRAMS]
        };
        let mut names = Vec::with_capacity(attached.len());
        for &(program, category, name) in attached {
            if !category.is_empty() {
                attach_tracepoint(&mut ebpf, program, category, name)?;
                names.push(program);
                continue;
            }
            let btf = if opts.raw_tracepoint {
                Err("asked for the raw tracepoint build".to_owned())
            } else {
                attach_btf(program_mut(&mut ebpf, program)?, name)
            };
            match btf {
                Ok(()) => names.push(program),
                Err(e) => {
                    tracing::info!(reason = %e, program, fallback = RAW_FALLBACK,
                        "BTF tracepoint not attached; attaching the raw tracepoint build");
                    attach_tracepoint(&mut ebpf, RAW_FALLBACK, "", name)?;
                    names.push(RAW_FALLBACK);
                }
            }
        }
        let ring = take_map(&mut ebpf, "events", RingBuf::try_from)?;
        let conns = KernelConns {
            map: take_map(&mut ebpf, "conns", HashMap::try_from)?,
            capacity: opts.kernel_max_conns,
        };
        let counters = take_map(&mut ebpf, "stats", PerCpuArray::<MapData, u64>::try_from)?;
        // After the attach, so a listener is either recorded by the kernel or already in /proc; the seed never
        // replaces what the kernel recorded.
        let mut listeners = KernelListeners::new(take_map(&mut ebpf, "listeners", HashMap::try_from)?);
        let found = listeners::scan_proc(std::path::Path::new("/proc"), netns);
        let seeded = listeners.seed(&found).map_err(|e| Error::Map {
            name: "listeners",
            detail: e.to_string(),
        })?;
        let stats_fd = if opts.program_stats {
            enable_program_stats()
        } else {
            None
        };
        tracing::info!(
            netns,
            pid_namespace = pidns.map_or(0, |ns| ns.ino),
            program_stats = stats_fd.is_some(),
            accept_tracepoints = opts.accept_tracepoints,
            listeners_found = found.len(),
            listeners_seeded = seeded,
            "eBPF programs attached"
        );
        let stats = Arc::new(KernelStats::new(ebpf, counters, listeners, stats_fd, names));
        Ok(Self {
            ring: Some(ring),
            conns: Some(conns),
            stats,
            netns,
        })
    }

    /// The ring buffer, for a [`reader::Reader`]; `None` after the first call.
    pub fn take_ring(&mut self) -> Option<RingBuf<MapData>> {
        self.ring.take()
    }

    /// The kernel's map of open connections, for [`KernelConns::holds`]; `None` after the first call.
    pub fn take_conns(&mut self) -> Option<KernelConns> {
        self.conns.take()
    }

    /// The kernel-side counters and program statistics.
    pub fn stats(&self) -> Arc<KernelStats> {
        Arc::clone(&self.stats)
    }

    /// Inode of the watched network namespace (0: all).
    pub fn netns(&self) -> u32 {
        self.netns
    }
}

/// The kernel's LRU map of open connections (`conns`, keyed by socket address, valued by `struct gs_conn_state`).
pub struct KernelConns {
    map: HashMap<MapData, u64, [u8; conn_state::SIZE]>,
    /// The map's capacity (`kernel_max_conns`).
    capacity: u32,
}

impl KernelConns {
    /// Whether the kernel still tracks socket `skaddr`: it deletes the entry at TCP_CLOSE, and its LRU evicts
    /// entries beyond `kernel_max_conns`. A failed lookup other than "not found" counts as held.
    pub fn holds(&self, skaddr: u64) -> bool {
        !matches!(self.map.get(&skaddr, 0), Err(aya::maps::MapError::KeyNotFound))
    }

    /// The established connections the kernel tracks, each as the ESTABLISHED event that reported it (stamped
    /// with the time the kernel first saw the socket), whether or not the ring buffer had room for that event.
    /// Sockets not established yet (a connect in SYN_SENT: no 4-tuple) are left out. The map changes while it is
    /// read: a key deleted meanwhile restarts the walk, so it stops after twice the map's capacity.
    pub fn established(&self) -> Vec<ConnEvent> {
        self.map
            .iter()
            .take(2 * self.capacity as usize)
            .filter_map(Result::ok)
            .filter_map(|(skaddr, state)| conn_state::RawConnState::from_bytes(&state).established(skaddr))
            .collect()
    }
}

impl std::fmt::Debug for KernelConns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelConns")
    }
}

fn take_map<T, E: std::fmt::Display>(
    ebpf: &mut Ebpf,
    name: &'static str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, E>,
) -> Result<T, Error> {
    let map = ebpf.take_map(name).ok_or(Error::Map {
        name,
        detail: "missing from the object".into(),
    })?;
    convert(map).map_err(|e| Error::Map {
        name,
        detail: e.to_string(),
    })
}

/// The inode of the network namespace to watch (0 for all).
pub fn resolve_netns(filter: &NetnsFilter) -> Result<u32, Error> {
    let path = match filter {
        NetnsFilter::All => return Ok(0),
        NetnsFilter::Inode(inode) => return Ok(*inode),
        NetnsFilter::Own => PathBuf::from("/proc/thread-self/ns/net"),
        NetnsFilter::Path(p) => p.clone(),
    };
    let meta = std::fs::metadata(&path).map_err(|source| Error::Netns {
        path: path.clone(),
        source,
    })?;
    u32::try_from(meta.ino()).map_err(|_| Error::Netns {
        path,
        source: std::io::Error::other(format!("inode {} does not fit a netns inode number", meta.ino())),
    })
}

/// Before 5.11 BPF memory was charged to RLIMIT_MEMLOCK; later kernels charge the cgroup. Raise it when
/// allowed, and carry on when not: on the kernels that need it, loading then reports the real error.
fn raise_memlock() {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    if let Err(e) = setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY) {
        tracing::debug!(error = %e, "could not raise RLIMIT_MEMLOCK (not needed on kernels >= 5.11)");
    }
}

/// `BPF_ENABLE_STATS`: the kernel counts program runs while the returned fd is open.
fn enable_program_stats() -> Option<OwnedFd> {
    match aya::sys::enable_stats(aya::sys::Stats::RunTime) {
        Ok(fd) => Some(fd),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "BPF_ENABLE_STATS refused (it needs CAP_SYS_ADMIN): program run counts are reported only if the \
                 host sets the kernel.bpf_stats_enabled sysctl"
            );
            None
        }
    }
}
