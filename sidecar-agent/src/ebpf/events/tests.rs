use super::*;

fn raw() -> RawConnEvent {
    let mut comm = [0u8; 16];
    comm[..4].copy_from_slice(b"curl");
    RawConnEvent {
        ts_ns: 7,
        skaddr: 0xffff_8880_1234_5678,
        duration_ns: 1_500_000,
        proc_start_ns: 42,
        pid: 1234,
        tid: 1235,
        netns: 4026531840,
        family: AF_INET,
        lport: 40000,
        rport: 80,
        kind: 3,
        role: 1,
        laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [10, 1, 2, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        comm,
        ..Default::default()
    }
}

#[test]
fn round_trips_through_bytes() {
    let r = raw();
    assert_eq!(RawConnEvent::from_bytes(&r.to_bytes()), Ok(r));
}

#[test]
fn decodes_ipv4_close() {
    let e = raw().decode().unwrap();
    assert_eq!(e.kind, EventKind::Closed);
    assert_eq!(e.role, Role::Client);
    assert_eq!(e.local, "127.0.0.1:40000".parse().unwrap());
    assert_eq!(e.remote, "10.1.2.3:80".parse().unwrap());
    assert_eq!(e.duration, Some(Duration::from_micros(1500)));
    let owner = e.owner.unwrap();
    assert_eq!(
        (owner.pid, owner.tid, &*owner.comm.to_str_lossy(), owner.start_ns),
        (1234, 1235, "curl", 42)
    );
}

#[test]
fn v4_mapped_ipv6_becomes_ipv4_and_plain_ipv6_stays() {
    let mut r = raw();
    r.family = AF_INET6;
    r.laddr = Ipv6Addr::LOCALHOST.octets();
    r.raddr = Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped().octets();
    r.kind = 1;
    let e = r.decode().unwrap();
    assert_eq!(e.local, "[::1]:40000".parse().unwrap());
    assert_eq!(e.remote, "127.0.0.2:80".parse().unwrap());
    assert_eq!(e.duration, None);
}

#[test]
fn unknown_owner_is_none() {
    let mut r = raw();
    r.pid = 0;
    r.role = 2;
    let e = r.decode().unwrap();
    assert_eq!(e.owner, None);
    assert_eq!(e.role, Role::Server);
}

#[test]
fn rejects_bad_records() {
    assert_eq!(decode(&[0u8; 10]), Err(DecodeError::Size(10)));
    let mut r = raw();
    r.family = 1;
    assert_eq!(
        r.decode(),
        Err(DecodeError::Unknown {
            field: "family",
            value: 1
        })
    );
    let mut r = raw();
    r.kind = 9;
    assert_eq!(
        r.decode(),
        Err(DecodeError::Unknown {
            field: "kind",
            value: 9
        })
    );
}
