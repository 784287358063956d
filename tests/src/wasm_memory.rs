//! Each V8 wasm VM's linear memory in a running Envoy, from its `/proc/<pid>/smaps`.
//!
//! V8 reserves a wasm memory as one region of 4 GiB and more (the 32-bit index space plus guard pages, so bounds
//! checks are free), mapped `---p`, and makes its first `memory.size` bytes `rw-p`; so each VM's memory is the
//! `rw-p` mapping that ends where such a reservation's `---p` part starts. Its `Size` is the VM's `memory.size`
//! (what the module grew to, which never shrinks), its `Rss` the pages the VM touched. With `--concurrency 1`
//! Envoy holds three VMs per plugin: the base VM on the main thread, which the others are cloned from, and one per
//! thread (main and the worker); only the worker's handles requests. Envoy's admin has no per-VM figure (its
//! `wasm` stats count VMs, not bytes), and the process RSS mixes in V8's own heap and code.

use std::fs;

/// One VM's linear memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VmMemory {
    /// `memory.size`, KiB.
    pub size_kib: u64,
    /// Resident, KiB.
    pub rss_kib: u64,
}

/// The wasm linear memories of process `pid`, in address order.
pub fn vms(pid: u32) -> std::io::Result<Vec<VmMemory>> {
    Ok(parse_smaps(&fs::read_to_string(format!("/proc/{pid}/smaps"))?))
}

fn parse_smaps(text: &str) -> Vec<VmMemory> {
    struct Map {
        start: u64,
        end: u64,
        rw: bool,
        rss_kib: u64,
    }
    let mut maps: Vec<Map> = Vec::new();
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(range), Some(perms)) = (parts.next(), parts.next()) else {
            continue;
        };
        if let Some((a, b)) = range.split_once('-') {
            if let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                maps.push(Map {
                    start,
                    end,
                    rw: perms.starts_with("rw"),
                    rss_kib: 0,
                });
                continue;
            }
        }
        if let (Some(rest), Some(m)) = (line.strip_prefix("Rss:"), maps.last_mut()) {
            m.rss_kib = rest.trim().trim_end_matches("kB").trim().parse().unwrap_or(0);
        }
    }
    const RESERVATION: u64 = 4 << 30;
    maps.windows(2)
        .filter(|w| w[0].rw && !w[1].rw && w[0].end == w[1].start && w[1].end - w[1].start >= RESERVATION)
        .map(|w| VmMemory {
            size_kib: (w[0].end - w[0].start) / 1024,
            rss_kib: w[0].rss_kib,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vm_is_the_rw_start_of_a_large_reservation() {
        let smaps = "\
7fb4b57b0000-7fb4b58d0000 rw-p 00000000 00:00 0
Size:               1152 kB
Rss:                  60 kB
7fb4b58d0000-7fb6b57b0000 ---p 00000000 00:00 0
Size:            8387456 kB
Rss:                   0 kB
7fb700000000-7fb700100000 rw-p 00000000 00:00 0
Size:               1024 kB
Rss:                1024 kB
7fb700100000-7fb700200000 ---p 00000000 00:00 0
Size:               1024 kB
Rss:                   0 kB
";
        assert_eq!(
            parse_smaps(smaps),
            vec![VmMemory {
                size_kib: 1152,
                rss_kib: 60
            }]
        );
    }
}
