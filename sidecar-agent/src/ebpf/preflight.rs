//! What the kernel programs need before loading, checked up front so a missing piece is named with its fix
//! instead of surfacing as a bare `EPERM` from the loader.
//!
//! - capabilities: `CAP_BPF` (create maps, load programs) and `CAP_PERFMON` (attach tracepoints through
//!   perf events, read kernel pointers) — or `CAP_SYS_ADMIN`, which implies both;
//! - kernel BTF at `/sys/kernel/btf/vmlinux`, for the CO-RE relocations of the programs;
//! - tracefs, where tracepoint ids are looked up, only for the accept syscall tracepoints (the raw tracepoint is
//!   attached by name); mounted at `/sys/kernel/tracing` when absent and permitted.

use std::{fs, io, path::Path};

use crate::error::Error;

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

pub(crate) const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
pub(crate) const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

/// Runs every check (tracefs only when `tracefs` is needed); the first failure is returned.
pub fn check(tracefs: bool) -> Result<(), Error> {
    let status = fs::read_to_string("/proc/self/status").map_err(|e| Error::Io {
        what: "reading /proc/self/status".into(),
        source: e,
    })?;
    let missing = missing_capabilities(&status);
    if !missing.is_empty() {
        return Err(Error::Privilege {
            missing: missing.join(" and "),
        });
    }
    if !Path::new(BTF_PATH).exists() {
        return Err(Error::NoBtf);
    }
    if tracefs {
        ensure_tracefs()?;
    }
    Ok(())
}

/// The capabilities the agent lacks, from the `CapEff:` line of `/proc/self/status`.
pub fn missing_capabilities(proc_status: &str) -> Vec<&'static str> {
    let eff = proc_status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or(0);
    let has = |cap: u32| eff & (1u64 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(cap, _)| !has(cap))
        .map(|(_, name)| name)
        .collect()
}

/// Makes sure tracefs is mounted and readable, mounting it at `/sys/kernel/tracing` when it is not mounted.
fn ensure_tracefs() -> Result<(), Error> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if let Some(mounted) = tracefs_mount(&mountinfo) {
        // Mounted: the directory is root-only (mode 0700), so a non-root uid needs CAP_DAC_READ_SEARCH.
        return if has_events(&mounted) {
            Ok(())
        } else {
            Err(Error::TracefsUnreadable { path: mounted })
        };
    }
    if has_events(TRACEFS) || has_events(DEBUGFS_TRACING) {
        return Ok(()); // not in our mount table (another mount namespace view), but usable
    }
    tracing::info!(path = TRACEFS, "tracefs is not mounted; mounting it");
    let mounted = nix::mount::mount(
        Some("nodev"),
        TRACEFS,
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    );
    if let Err(e) = mounted {
        // Another process (a second agent starting, a parallel test) may have mounted it in the meantime: EBUSY.
        if has_events(TRACEFS) {
            return Ok(());
        }
        return Err(Error::NoTracefs {
            source: io::Error::from(e),
        });
    }
    if has_events(TRACEFS) {
        Ok(())
    } else {
        Err(Error::TracefsUnreadable {
            path: TRACEFS.to_owned(),
        })
    }
}

/// Where tracefs is mounted, from `/proc/self/mountinfo` (`/sys/kernel/tracing` preferred).
pub fn tracefs_mount(mountinfo: &str) -> Option<String> {
    let mounts: Vec<&str> = mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "tracefs").then_some(left.split_whitespace().nth(4)?)
        })
        .collect();
    [TRACEFS, DEBUGFS_TRACING]
        .into_iter()
        .find(|p| mounts.contains(p))
        .map(str::to_owned)
}

fn has_events(root: &str) -> bool {
    Path::new(root).join("events").is_dir()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_tracefs_in_mountinfo() {
        let info = "22 26 0:21 / /sys rw,nosuid shared:7 - sysfs sysfs rw\n\
                    40 22 0:12 / /sys/kernel/tracing rw,nosuid shared:20 - tracefs tracefs rw\n";
        assert_eq!(tracefs_mount(info).as_deref(), Some(TRACEFS));
        let debug = "41 22 0:12 / /sys/kernel/debug/tracing rw - tracefs nodev rw\n";
        assert_eq!(tracefs_mount(debug).as_deref(), Some(DEBUGFS_TRACING));
        assert_eq!(tracefs_mount("22 26 0:21 / /sys rw - sysfs sysfs rw\n"), None);
    }

    #[test]
    fn full_root_has_everything() {
        assert!(missing_capabilities("Name:\tx\nCapEff:\t000001ffffffffff\n").is_empty());
    }

    #[test]
    fn bpf_and_perfmon_suffice() {
        let eff = (1u64 << CAP_BPF) | (1u64 << CAP_PERFMON);
        assert!(missing_capabilities(&format!("CapEff:\t{eff:016x}\n")).is_empty());
    }

    #[test]
    fn sys_admin_alone_suffices() {
        assert!(missing_capabilities(&format!("CapEff:\t{:016x}\n", 1u64 << CAP_SYS_ADMIN)).is_empty());
    }

    #[test]
    fn unprivileged_misses_both() {
        assert_eq!(
            missing_capabilities("CapEff:\t0000000000000000\n"),
            ["CAP_BPF", "CAP_PERFMON"]
        );
        assert_eq!(missing_capabilities("no such line"), ["CAP_BPF", "CAP_PERFMON"]);
        let only_bpf = format!("CapEff:\t{:016x}\n", 1u64 << CAP_BPF);
        assert_eq!(missing_capabilities(&only_bpf), ["CAP_PERFMON"]);
    }
}
