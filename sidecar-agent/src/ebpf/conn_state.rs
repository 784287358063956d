//! The value of the kernel's `conns` map (`struct gs_conn_state` in `ebpf/include/conn_event.h`) mirrored in
//! Rust, and its reading as the ESTABLISHED event that reported the connection.
//!
//! [`RawConnState`] pins the C layout the way [`RawConnEvent`] does: same fields, same order, explicit padding,
//! and compile-time checks of the size and of every field's offset, so the build fails when the two sides drift
//! instead of the agent reading a port where the kernel wrote a pid.

use std::mem::{offset_of, size_of};

use super::events::{arr, ConnEvent, RawConnEvent, KIND_ESTABLISHED};

/// Size of `struct gs_conn_state`: the value size of the `conns` map.
pub(crate) const SIZE: usize = 88;

/// Mirror of `struct gs_conn_state`; see the C header for the meaning of each field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RawConnState {
    pub start_ns: u64,
    pub proc_start_ns: u64,
    pub pid: u32,
    pub tid: u32,
    pub netns: u32,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub role: u8,
    pub pad: [u8; 5],
    pub comm: [u8; 16],
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
}

// Every offset, not only the ones the C header asserts: a reordered field of the same size keeps the size.
const _: () = assert!(size_of::<RawConnState>() == SIZE);
const _: () = assert!(offset_of!(RawConnState, proc_start_ns) == 8);
const _: () = assert!(offset_of!(RawConnState, pid) == 16);
const _: () = assert!(offset_of!(RawConnState, tid) == 20);
const _: () = assert!(offset_of!(RawConnState, netns) == 24);
const _: () = assert!(offset_of!(RawConnState, family) == 28);
const _: () = assert!(offset_of!(RawConnState, lport) == 30);
const _: () = assert!(offset_of!(RawConnState, rport) == 32);
const _: () = assert!(offset_of!(RawConnState, role) == 34);
const _: () = assert!(offset_of!(RawConnState, comm) == 40);
const _: () = assert!(offset_of!(RawConnState, laddr) == 56);
const _: () = assert!(offset_of!(RawConnState, raddr) == 72);

// === impl RawConnState ===

impl RawConnState {
    /// Reads a map value.
    pub fn from_bytes(b: &[u8; SIZE]) -> Self {
        Self {
            start_ns: u64::from_ne_bytes(arr(b, offset_of!(Self, start_ns))),
            proc_start_ns: u64::from_ne_bytes(arr(b, offset_of!(Self, proc_start_ns))),
            pid: u32::from_ne_bytes(arr(b, offset_of!(Self, pid))),
            tid: u32::from_ne_bytes(arr(b, offset_of!(Self, tid))),
            netns: u32::from_ne_bytes(arr(b, offset_of!(Self, netns))),
            family: u16::from_ne_bytes(arr(b, offset_of!(Self, family))),
            lport: u16::from_ne_bytes(arr(b, offset_of!(Self, lport))),
            rport: u16::from_ne_bytes(arr(b, offset_of!(Self, rport))),
            role: b[offset_of!(Self, role)],
            pad: arr(b, offset_of!(Self, pad)),
            comm: arr(b, offset_of!(Self, comm)),
            laddr: arr(b, offset_of!(Self, laddr)),
            raddr: arr(b, offset_of!(Self, raddr)),
        }
    }

    /// The value's bytes, as the kernel would write them (for tests).
    pub fn to_bytes(&self) -> [u8; SIZE] {
        let mut b = [0u8; SIZE];
        let mut put = |off: usize, v: &[u8]| b[off..off + v.len()].copy_from_slice(v);
        put(offset_of!(Self, start_ns), &self.start_ns.to_ne_bytes());
        put(offset_of!(Self, proc_start_ns), &self.proc_start_ns.to_ne_bytes());
        put(offset_of!(Self, pid), &self.pid.to_ne_bytes());
        put(offset_of!(Self, tid), &self.tid.to_ne_bytes());
        put(offset_of!(Self, netns), &self.netns.to_ne_bytes());
        put(offset_of!(Self, family), &self.family.to_ne_bytes());
        put(offset_of!(Self, lport), &self.lport.to_ne_bytes());
        put(offset_of!(Self, rport), &self.rport.to_ne_bytes());
        put(offset_of!(Self, role), &[self.role]);
        put(offset_of!(Self, comm), &self.comm);
        put(offset_of!(Self, laddr), &self.laddr);
        put(offset_of!(Self, raddr), &self.raddr);
        b
    }

    /// The ESTABLISHED event of socket `skaddr`, stamped with the time the kernel first saw it; `None` while its
    /// 4-tuple is not known (`family` is 0 until the socket is established) or when a field holds a value the
    /// agent does not know.
    pub fn established(&self, skaddr: u64) -> Option<ConnEvent> {
        RawConnEvent {
            ts_ns: self.start_ns,
            skaddr,
            duration_ns: 0,
            proc_start_ns: self.proc_start_ns,
            pid: self.pid,
            tid: self.tid,
            netns: self.netns,
            family: self.family,
            lport: self.lport,
            rport: self.rport,
            kind: KIND_ESTABLISHED,
            role: self.role,
            pad: [0; 4],
            laddr: self.laddr,
            raddr: self.raddr,
            comm: self.comm,
        }
        .decode()
        .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::events::{EventKind, Role};

    fn state(family: u16) -> RawConnState {
        let mut s = RawConnState {
            start_ns: 7,
            proc_start_ns: 9,
            pid: 42,
            tid: 43,
            netns: 5,
            family,
            lport: 40000,
            rport: 80,
            role: 1,
            ..RawConnState::default()
        };
        s.comm[..4].copy_from_slice(b"curl");
        s.laddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        s.raddr[..4].copy_from_slice(&[10, 0, 0, 1]);
        s
    }

    #[test]
    fn the_bytes_are_laid_out_as_the_c_struct() {
        // The offsets conn_event.h asserts, written by hand, so that a wrong offset_of! cannot agree with itself.
        let b = state(2).to_bytes();
        assert_eq!(b[0..8], 7u64.to_ne_bytes());
        assert_eq!(b[16..20], 42u32.to_ne_bytes());
        assert_eq!(b[28..30], 2u16.to_ne_bytes());
        assert_eq!(b[34], 1);
        assert_eq!(&b[40..44], b"curl");
        assert_eq!(b[56..60], [127, 0, 0, 1]);
        assert_eq!(b[72..76], [10, 0, 0, 1]);
        assert_eq!(RawConnState::from_bytes(&b), state(2));
    }

    #[test]
    fn an_established_entry_reads_as_its_established_event() {
        let ev = state(2).established(0xffff_8880_0000_1000).unwrap();
        assert_eq!(
            (ev.kind, ev.role, ev.skaddr, ev.ts_ns, ev.netns),
            (EventKind::Established, Role::Client, 0xffff_8880_0000_1000, 7, 5)
        );
        assert_eq!(
            (ev.local, ev.remote),
            ("127.0.0.1:40000".parse().unwrap(), "10.0.0.1:80".parse().unwrap())
        );
        let owner = ev.owner.unwrap();
        assert_eq!((owner.pid, owner.tid, owner.start_ns), (42, 43, 9));
        assert_eq!(owner.comm, "curl");
        assert_eq!(ev.duration, None);
        // Not established yet: no 4-tuple.
        assert_eq!(state(0).established(1), None);
    }
}
