//! The pid namespace the kernel programs name processes in.
//!
//! `bpf_get_current_pid_tgid` gives the ids of the kernel's root pid namespace. An agent in the root namespace (on
//! the host, or in a pod with `hostPID`) reads `/proc` and its socket peers in those terms, so the programs keep
//! them. A sidecar agent runs in the pod's pid namespace (`shareProcessNamespace`, which the injector sets): its
//! `/proc`, the pids `/proc` scans find listeners under, and `SO_PEERCRED` of the processes reporting to it are all
//! that namespace's, where the root namespace's pids name nothing or, worse, another process. So the programs are
//! told the namespace to translate to, and a process outside it is named by pid 0 (unknown) rather than by a number
//! the agent could not look up.

use std::{os::unix::fs::MetadataExt, path::Path};

use crate::error::Error;

/// The nsfs device and inode of a pid namespace, as `bpf_get_ns_current_pid_tgid` takes them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidNamespace {
    pub dev: u64,
    pub ino: u64,
}

/// The inode of the kernel's root pid namespace: fixed (`PROC_PID_INIT_INO` in the kernel's `proc_ns.h`), where every
/// other namespace gets a fresh one. (`NSpid:` in `/proc/self/status` cannot tell: it lists the pids from the
/// namespace of the `/proc` mount down, and a pod's `/proc` is its own namespace's.)
const ROOT_PID_NS_INO: u64 = 0xEFFF_FFFC;

/// The agent's own pid namespace when it is not the kernel's root one; `None` in the root namespace, where the
/// kernel's ids are already the agent's.
pub fn own() -> Result<Option<PidNamespace>, Error> {
    let ns = Path::new("/proc/self/ns/pid");
    let meta = std::fs::metadata(ns).map_err(|source| Error::PidNamespace {
        path: ns.to_owned(),
        source,
    })?;
    Ok(nested(meta.dev(), meta.ino()))
}

fn nested(dev: u64, ino: u64) -> Option<PidNamespace> {
    (ino != ROOT_PID_NS_INO).then_some(PidNamespace { dev, ino })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_namespace_has_a_fixed_inode() {
        assert_eq!(nested(4, 0xEFFF_FFFC), None);
        assert_eq!(
            nested(4, 4_026_532_210),
            Some(PidNamespace {
                dev: 4,
                ino: 4_026_532_210
            })
        );
    }

    #[test]
    fn the_test_process_reads_its_own_namespace() {
        // Whatever namespace the test runs in, reading it succeeds and agrees with the namespace file's inode.
        let ino = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
        assert_eq!(own().unwrap().map(|ns| ns.ino), (ino != ROOT_PID_NS_INO).then_some(ino));
    }
}
