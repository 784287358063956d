use super::*;

fn ev(kind: EventKind, skaddr: u64, port: u16) -> ConnEvent {
    ConnEvent {
        kind,
        role: Role::Client,
        skaddr,
        ts_ns: 0,
        netns: 1,
        local: SocketAddr::from(([127, 0, 0, 1], port)),
        remote: SocketAddr::from(([127, 0, 0, 1], 80)),
        owner: Some(Owner { pid: 10, tid: 10, comm: "curl".into(), start_ns: 5 }),
        duration: (kind == EventKind::Closed).then(|| Duration::from_millis(3)),
    }
}

#[test]
fn open_then_close_then_expire_after_grace() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    t.apply(&ev(EventKind::Established, 1, 1000), None, t0);
    assert_eq!((t.len(), t.live()), (1, 1));
    t.apply(&ev(EventKind::Closed, 1, 1000), None, t0 + Duration::from_secs(1));
    assert_eq!((t.len(), t.live()), (1, 0));
    let local = SocketAddr::from(([127, 0, 0, 1], 1000));
    let found = t.find(1, local, SocketAddr::from(([127, 0, 0, 1], 80))).unwrap();
    assert_eq!(found.closed.unwrap().duration, Duration::from_millis(3));
    assert_eq!(t.expire(t0 + Duration::from_secs(30)), Evictions::default(), "still in its grace period");
    assert_eq!(t.expire(t0 + Duration::from_secs(31)).expired, 1);
    assert!(t.is_empty());
    assert!(t.find(1, local, SocketAddr::from(([127, 0, 0, 1], 80))).is_none());
}

#[test]
fn never_exceeds_bound_and_evicts_closed_first() {
    let now = Instant::now();
    let mut t = ConnTable::new(3, Duration::from_secs(30));
    t.apply(&ev(EventKind::Established, 1, 1001), None, now);
    t.apply(&ev(EventKind::Established, 2, 1002), None, now);
    t.apply(&ev(EventKind::Established, 3, 1003), None, now);
    t.apply(&ev(EventKind::Closed, 2, 1002), None, now);
    let out = t.apply(&ev(EventKind::Established, 4, 1004), None, now);
    assert_eq!(out.closed_for_room, 1);
    assert!(t.get(2).is_none());
    let out = t.apply(&ev(EventKind::Established, 5, 1005), None, now);
    assert_eq!(out.live_for_room, 1);
    assert!(t.get(1).is_none(), "the oldest live connection goes");
    for i in 6..200 {
        t.apply(&ev(EventKind::Established, i, 1000 + i as u16), None, now);
        if i % 3 == 0 {
            t.apply(&ev(EventKind::Closed, i, 1000 + i as u16), None, now);
        }
        assert!(t.len() <= 3);
    }
    assert_eq!(t.len(), 3);
}

#[test]
fn accepted_owner_fills_server_entry() {
    let now = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(1));
    let mut est = ev(EventKind::Established, 7, 80);
    est.role = Role::Server;
    est.owner = None;
    t.apply(&est, None, now);
    assert_eq!(t.get(7).unwrap().owner, None);
    let mut acc = ev(EventKind::Accepted, 7, 80);
    acc.role = Role::Server;
    t.apply(&acc, None, now);
    assert_eq!(t.get(7).unwrap().owner.as_ref().unwrap().pid, 10);
    // A close without an owner keeps the accepted one.
    let mut close = ev(EventKind::Closed, 7, 80);
    close.owner = None;
    t.apply(&close, None, now);
    assert_eq!(t.get(7).unwrap().owner.as_ref().unwrap().pid, 10);
}

#[test]
fn reused_socket_address_replaces_closed_entry() {
    let now = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    t.apply(&ev(EventKind::Established, 9, 2000), None, now);
    t.apply(&ev(EventKind::Closed, 9, 2000), None, now);
    t.apply(&ev(EventKind::Established, 9, 3000), None, now);
    assert_eq!(t.len(), 1);
    let c = t.get(9).unwrap();
    assert_eq!((c.local.port(), c.closed), (3000, None));
    // The stale closing record of the old entry must not expire the new one.
    assert_eq!(t.expire(now + Duration::from_secs(60)).expired, 0);
    assert_eq!(t.len(), 1);
}

#[test]
fn close_without_open_is_kept_for_grace() {
    let now = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_millis(100));
    t.apply(&ev(EventKind::Closed, 4, 4000), None, now);
    assert_eq!((t.len(), t.live()), (1, 0));
    assert_eq!(t.expire(now + Duration::from_millis(100)).expired, 1);
}
