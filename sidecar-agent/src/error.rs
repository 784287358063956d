//! The library's error type: every way start-up can fail, each naming what is missing and how to fix it.

use std::{io, path::PathBuf};

/// Why the agent could not start (or stopped).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The process lacks the capabilities to load and attach eBPF programs.
    #[error(
        "missing privilege: the agent needs {missing} to load and attach its eBPF programs; run it as root, or \
         grant the capabilities (`setcap cap_bpf,cap_perfmon+ep grayscope-agent`, or \
         securityContext.capabilities.add: [BPF, PERFMON] in Kubernetes)"
    )]
    Privilege {
        /// The missing capability names.
        missing: String,
    },
    /// The kernel exposes no BTF, so the CO-RE programs cannot be relocated.
    #[error(
        "kernel BTF is missing ({path} does not exist): the agent needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y (standard on current distribution kernels)",
        path = crate::ebpf::preflight::BTF_PATH
    )]
    NoBtf,
    /// tracefs is not mounted and could not be mounted.
    #[error(
        "tracefs is not mounted at {path} and mounting it failed ({source}); mount it with \
         `mount -t tracefs nodev {path}` (needs CAP_SYS_ADMIN once), or mount the host's into the container",
        path = crate::ebpf::preflight::TRACEFS
    )]
    NoTracefs {
        #[source]
        source: io::Error,
    },
    /// tracefs is mounted but this process cannot read it.
    #[error(
        "tracefs is mounted at {path} but this process cannot read its events/ directory (tracefs is root-only, \
         mode 0700): run the agent as uid 0 (capabilities can still be limited to CAP_BPF and CAP_PERFMON), or \
         add CAP_DAC_READ_SEARCH"
    )]
    TracefsUnreadable {
        /// Where it is mounted.
        path: String,
    },
    /// The embedded object was built with `GRAYSCOPE_SKIP_EBPF_BUILD=1`.
    #[error(
        "the embedded eBPF object {name} is empty: this binary was built with GRAYSCOPE_SKIP_EBPF_BUILD=1 \
         (lint-only); rebuild it without that variable (`just build`)"
    )]
    EmptyObject {
        /// The object's name.
        name: &'static str,
    },
    /// The kernel refused the object (verifier, CO-RE relocation, map creation).
    #[error("loading the eBPF object into the kernel failed: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program could not be loaded or attached.
    #[error("eBPF program {program}: {source}")]
    Program {
        /// The program's function name.
        program: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// A map of the object is missing or has the wrong type.
    #[error("eBPF map {name}: {detail}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The network namespace to filter on could not be resolved.
    #[error("network namespace {path}: {source}")]
    Netns {
        /// The namespace file that was looked at.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The agent's own pid namespace could not be read (`/proc/self/status`, `/proc/self/ns/pid`).
    #[error("pid namespace {path}: {source}")]
    PidNamespace {
        /// The file that was looked at.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Any other I/O failure, with what was being done.
    #[error("{what}: {source}")]
    Io {
        /// What the agent was doing.
        what: String,
        #[source]
        source: io::Error,
    },
}
