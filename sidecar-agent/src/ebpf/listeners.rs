//! Who owns each listening socket: the kernel's `listeners` map (`struct gs_listen_key` → `struct gs_listen_owner`
//! in `ebpf/include/conn_event.h`), which names an accepted connection after its listener's owner at the passive
//! open, without a syscall tracepoint.
//!
//! The kernel fills the map at `listen()` and empties it at the listener's close. What it cannot see are the
//! listeners that existed before the agent attached: [`scan_proc`] finds them in `/proc` (the LISTEN sockets of
//! `/proc/<pid>/net/tcp{,6}` of each network namespace, their inodes matched to processes through
//! `/proc/<pid>/fd`) and [`KernelListeners::seed`] writes them. The `/proc/net` parsing is a few lines, so it is
//! written here rather than pulled in with the `procfs` crate and its dependencies.
//!
//! The keys and values cross the map as byte arrays (aya's `Pod` needs `unsafe impl` for a struct, and `unsafe` is
//! denied); [`ListenKey`] and [`ListenOwner`] pin the C layout with size checks, like `events.rs`.

use std::{
    collections::{hash_map::Entry, HashMap},
    fs,
    mem::{offset_of, size_of},
    net::{IpAddr, SocketAddr},
    os::unix::fs::MetadataExt,
    path::Path,
};

use aya::maps::{HashMap as BpfHashMap, MapData, MapError};

use super::events::{arr, Comm};
use crate::procinfo;

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
/// `TCP_LISTEN` as `/proc/net/tcp` prints it (`st` column, hex).
const PROC_LISTEN: &str = "0A";

/// Mirror of `struct gs_listen_key`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub netns: u32,
    pub family: u16,
    pub port: u16,
    pub addr: [u8; 16],
}

/// Mirror of `struct gs_listen_owner`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenOwner {
    pub skaddr: u64,
    pub proc_start_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; 16],
}

const KEY_SIZE: usize = 24;
const OWNER_SIZE: usize = 40;
const _: () = assert!(size_of::<ListenKey>() == KEY_SIZE);
const _: () = assert!(size_of::<ListenOwner>() == OWNER_SIZE);
const _: () = assert!(offset_of!(ListenKey, family) == 4);
const _: () = assert!(offset_of!(ListenKey, port) == 6);
const _: () = assert!(offset_of!(ListenKey, addr) == 8);
const _: () = assert!(offset_of!(ListenOwner, proc_start_ns) == 8);
const _: () = assert!(offset_of!(ListenOwner, pid) == 16);
const _: () = assert!(offset_of!(ListenOwner, tid) == 20);
const _: () = assert!(offset_of!(ListenOwner, comm) == 24);

// === impl ListenKey ===

impl ListenKey {
    /// The key of a listener of namespace `netns` bound to `addr` (an IPv6 address keeps its family, v4-mapped or
    /// not: the kernel keys an AF_INET6 socket by its IPv6 address).
    pub fn new(netns: u32, addr: SocketAddr) -> Self {
        let mut bytes = [0u8; 16];
        let family = match addr.ip() {
            IpAddr::V4(v4) => {
                bytes[..4].copy_from_slice(&v4.octets());
                AF_INET
            }
            IpAddr::V6(v6) => {
                bytes = v6.octets();
                AF_INET6
            }
        };
        Self {
            netns,
            family,
            port: addr.port(),
            addr: bytes,
        }
    }

    fn to_bytes(self) -> [u8; KEY_SIZE] {
        let mut b = [0u8; KEY_SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(offset_of!(Self, netns), &self.netns.to_ne_bytes());
        put(offset_of!(Self, family), &self.family.to_ne_bytes());
        put(offset_of!(Self, port), &self.port.to_ne_bytes());
        put(offset_of!(Self, addr), &self.addr);
        b
    }
}

// === impl ListenOwner ===

impl ListenOwner {
    fn to_bytes(self) -> [u8; OWNER_SIZE] {
        let mut b = [0u8; OWNER_SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(offset_of!(Self, skaddr), &self.skaddr.to_ne_bytes());
        put(offset_of!(Self, proc_start_ns), &self.proc_start_ns.to_ne_bytes());
        put(offset_of!(Self, pid), &self.pid.to_ne_bytes());
        put(offset_of!(Self, tid), &self.tid.to_ne_bytes());
        put(offset_of!(Self, comm), &self.comm);
        b
    }

    fn from_bytes(b: &[u8; OWNER_SIZE]) -> Self {
        Self {
            skaddr: u64::from_ne_bytes(arr(b, offset_of!(Self, skaddr))),
            proc_start_ns: u64::from_ne_bytes(arr(b, offset_of!(Self, proc_start_ns))),
            pid: u32::from_ne_bytes(arr(b, offset_of!(Self, pid))),
            tid: u32::from_ne_bytes(arr(b, offset_of!(Self, tid))),
            comm: arr(b, offset_of!(Self, comm)),
        }
    }

    /// The owner's command name.
    pub fn comm(&self) -> Comm {
        Comm::from_raw(&self.comm)
    }
}

/// The kernel's `listeners` map.
pub struct KernelListeners(BpfHashMap<MapData, [u8; KEY_SIZE], [u8; OWNER_SIZE]>);

impl KernelListeners {
    pub(crate) fn new(map: BpfHashMap<MapData, [u8; KEY_SIZE], [u8; OWNER_SIZE]>) -> Self {
        Self(map)
    }

    /// The owner recorded for a listener of namespace `netns` bound to `addr`.
    pub fn owner(&self, netns: u32, addr: SocketAddr) -> Option<ListenOwner> {
        self.0
            .get(&ListenKey::new(netns, addr).to_bytes(), 0)
            .ok()
            .map(|b| ListenOwner::from_bytes(&b))
    }

    /// Number of listeners recorded.
    pub fn len(&self) -> usize {
        self.0.keys().filter(Result::is_ok).count()
    }

    /// Whether no listener is recorded.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Records listeners found in `/proc`, without replacing what the kernel recorded meanwhile (a listen() after
    /// the programs attached is exact). Returns how many were written.
    pub fn seed(&mut self, found: &[(ListenKey, ListenOwner)]) -> Result<usize, MapError> {
        let mut written = 0;
        for (key, owner) in found {
            const BPF_NOEXIST: u64 = 1;
            match self.0.insert(key.to_bytes(), owner.to_bytes(), BPF_NOEXIST) {
                Ok(()) => written += 1,
                // EEXIST: the kernel saw this listener (or a newer one on its address) itself.
                Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(nix::libc::EEXIST) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(written)
    }
}

impl std::fmt::Debug for KernelListeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KernelListeners")
    }
}

/// The TCP listeners under `proc_root` (normally `/proc`) of namespace `netns` (0: every namespace), each with
/// the oldest process holding it: of a pre-fork server's master and workers that is the master, which called
/// listen(). Processes that vanish or cannot be read during the scan are skipped.
pub fn scan_proc(proc_root: &Path, netns: u32) -> Vec<(ListenKey, ListenOwner)> {
    let tick_ns = procinfo::clock_tick_ns();
    // socket inode -> (start ticks, pid) of the oldest holder; network namespace -> a pid living in it.
    let mut holders: HashMap<u64, (u64, u32)> = HashMap::new();
    let mut namespaces: HashMap<u32, u32> = HashMap::new();
    let Ok(dir) = fs::read_dir(proc_root) else {
        return Vec::new();
    };
    for entry in dir.filter_map(Result::ok) {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        let base = entry.path();
        let Some(ns) = fs::metadata(base.join("ns/net"))
            .ok()
            .and_then(|m| u32::try_from(m.ino()).ok())
        else {
            continue;
        };
        if netns != 0 && ns != netns {
            continue;
        }
        let Some(start) = fs::read_to_string(base.join("stat"))
            .ok()
            .and_then(|s| procinfo::start_ticks(&s))
        else {
            continue;
        };
        namespaces.entry(ns).or_insert(pid);
        let Ok(fds) = fs::read_dir(base.join("fd")) else {
            continue;
        };
        for fd in fds.filter_map(Result::ok) {
            let Some(inode) = fs::read_link(fd.path())
                .ok()
                .and_then(|t| socket_inode(&t.to_string_lossy()))
            else {
                continue;
            };
            match holders.entry(inode) {
                Entry::Vacant(v) => {
                    v.insert((start, pid));
                }
                Entry::Occupied(mut o) => {
                    if (start, pid) < *o.get() {
                        o.insert((start, pid));
                    }
                }
            }
        }
    }
    let mut found = Vec::new();
    for (&ns, &pid) in &namespaces {
        for file in ["tcp", "tcp6"] {
            let Ok(text) = fs::read_to_string(proc_root.join(pid.to_string()).join("net").join(file)) else {
                continue;
            };
            for (addr, inode) in text.lines().skip(1).filter_map(listening) {
                let Some(&(start, owner)) = holders.get(&inode) else {
                    continue;
                };
                let comm = fs::read_to_string(proc_root.join(owner.to_string()).join("comm")).unwrap_or_default();
                let mut raw = [0u8; 16];
                let name = comm.trim_end_matches('\n').as_bytes();
                let n = name.len().min(15);
                raw[..n].copy_from_slice(&name[..n]);
                found.push((
                    ListenKey::new(ns, addr),
                    ListenOwner {
                        skaddr: 0,
                        proc_start_ns: start * tick_ns,
                        pid: owner,
                        tid: owner,
                        comm: raw,
                    },
                ));
            }
        }
    }
    found
}

/// The inode of a `socket:[N]` fd link target.
fn socket_inode(target: &str) -> Option<u64> {
    target.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
}

/// The local address and inode of a `/proc/net/tcp{,6}` line in LISTEN state.
///
/// `  0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 ...`: the
/// address is the kernel's `__be32` words printed as native-order hex, the port host-order hex.
pub(crate) fn listening(line: &str) -> Option<(SocketAddr, u64)> {
    let f: Vec<&str> = line.split_whitespace().collect();
    if f.get(3) != Some(&PROC_LISTEN) {
        return None;
    }
    let (addr, port) = f.get(1)?.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let inode = f.get(9)?.parse().ok()?;
    let mut bytes = Vec::with_capacity(16);
    for i in (0..addr.len()).step_by(8) {
        let word = u32::from_str_radix(addr.get(i..i + 8)?, 16).ok()?;
        bytes.extend_from_slice(&word.to_ne_bytes());
    }
    let ip = match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?),
        _ => return None,
    };
    Some((SocketAddr::new(ip, port), inode))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_net_tcp_listeners() {
        let v4 = "   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 \
                  0000000000000000 100 0 0 10 0";
        assert_eq!(listening(v4), Some(("127.0.0.1:8080".parse().unwrap(), 4242)));
        let v6 =
            "   1: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 \
                  00:00000000 00000000     0        0 77 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening(v6), Some(("[::1]:80".parse().unwrap(), 77)));
        let established = v4.replace(" 0A ", " 01 ");
        assert_eq!(listening(&established), None);
        assert_eq!(listening("  sl  local_address rem_address   st tx_queue"), None);
    }

    #[test]
    fn keys_and_owners_have_the_c_layout() {
        let key = ListenKey::new(7, "127.0.0.1:80".parse().unwrap());
        let b = key.to_bytes();
        assert_eq!(&b[..8], &[7, 0, 0, 0, 2, 0, 80, 0]);
        assert_eq!(&b[8..12], &[127, 0, 0, 1]);
        assert_eq!(ListenKey::new(7, "[::]:80".parse().unwrap()).family, AF_INET6);
        let owner = ListenOwner {
            skaddr: 1 << 40,
            proc_start_ns: 99,
            pid: 4242,
            tid: 4243,
            comm: *b"python3\0\0\0\0\0\0\0\0\0",
        };
        assert_eq!(ListenOwner::from_bytes(&owner.to_bytes()), owner);
        assert_eq!(owner.comm(), "python3");
    }
}
