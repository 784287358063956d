use super::*;

fn lo(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ev(kind: EventKind, skaddr: u64, port: u16) -> ConnEvent {
    ConnEvent {
        kind,
        role: Role::Client,
        skaddr,
        ts_ns: 100,
        netns: 1,
        local: lo(port),
        remote: lo(80),
        owner: Some(Owner {
            pid: 10,
            tid: 10,
            comm: "curl".into(),
            start_ns: 5,
        }),
        duration: (kind == EventKind::Closed).then(|| Duration::from_millis(3)),
    }
}

fn at(mut e: ConnEvent, ts_ns: u64) -> ConnEvent {
    e.ts_ns = ts_ns;
    e
}

fn has(t: &ConnTable, port: u16) -> bool {
    t.find(1, lo(port), lo(80)).is_some()
}

#[test]
fn open_then_close_then_expire_after_grace() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    t.apply(&ev(EventKind::Established, 1, 1000), None, t0);
    assert_eq!((t.len(), t.live()), (1, 1));
    assert!(t.get_live(1).is_some());
    t.apply(
        &at(ev(EventKind::Closed, 1, 1000), 200),
        None,
        t0 + Duration::from_secs(1),
    );
    assert_eq!((t.len(), t.live()), (1, 0));
    assert!(t.get_live(1).is_none());
    let found = t.find(1, lo(1000), lo(80)).unwrap();
    assert_eq!(found.closed.unwrap().duration(), Duration::from_millis(3));
    assert_eq!(
        t.expire(t0 + Duration::from_secs(30)),
        Evictions::default(),
        "still in its grace period"
    );
    assert_eq!(t.expire(t0 + Duration::from_secs(31)).expired, 1);
    assert!(t.is_empty());
    assert!(!has(&t, 1000));
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
    assert_eq!(
        out,
        Evictions {
            closed_for_room: 1,
            ..Default::default()
        }
    );
    assert!(!has(&t, 1002));
    let out = t.apply(&ev(EventKind::Established, 5, 1005), None, now);
    assert_eq!(
        out,
        Evictions {
            live_for_room: 1,
            ..Default::default()
        }
    );
    assert!(!has(&t, 1001), "the oldest live connection goes");
    assert!(has(&t, 1003) && has(&t, 1004) && has(&t, 1005));
    for i in 6..200u16 {
        t.apply(&ev(EventKind::Established, i.into(), 1000 + i), None, now);
        if i % 3 == 0 {
            t.apply(&at(ev(EventKind::Closed, i.into(), 1000 + i), 200), None, now);
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
    assert_eq!(t.get_live(7).unwrap().owner, None);
    let mut acc = ev(EventKind::Accepted, 7, 80);
    acc.role = Role::Server;
    t.apply(&acc, None, now);
    assert_eq!(t.get_live(7).unwrap().owner.as_ref().unwrap().pid, 10);
    // A close without an owner keeps the accepted one.
    let mut close = at(ev(EventKind::Closed, 7, 80), 200);
    close.owner = None;
    t.apply(&close, None, now);
    assert_eq!(t.find(1, lo(80), lo(80)).unwrap().owner.as_ref().unwrap().pid, 10);
}

#[test]
fn reused_socket_address_does_not_replace_the_closed_connection() {
    let now = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    t.apply(&at(ev(EventKind::Established, 9, 2000), 100), None, now);
    t.apply(&at(ev(EventKind::Closed, 9, 2000), 200), None, now);
    t.apply(&at(ev(EventKind::Established, 9, 3000), 300), None, now);
    assert_eq!((t.len(), t.live()), (2, 1));
    assert_eq!(t.get_live(9).unwrap().local.port(), 3000);
    assert!(
        t.find(1, lo(2000), lo(80)).unwrap().closed.is_some(),
        "the old one keeps its grace period"
    );
    assert_eq!(t.expire(now + Duration::from_secs(60)).expired, 1);
    assert_eq!(t.get_live(9).unwrap().local.port(), 3000);
    assert!(!has(&t, 2000));
}

#[test]
fn event_read_after_the_close_it_preceded_lands_on_the_closed_connection() {
    let now = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    let mut est = at(ev(EventKind::Established, 5, 5000), 100);
    est.role = Role::Server;
    est.owner = None;
    t.apply(&est, None, now);
    let mut close = at(ev(EventKind::Closed, 5, 5000), 300);
    close.owner = None;
    t.apply(&close, None, now);
    // accept() ran before the close (ts 200) but its event was read after it.
    t.apply(&at(ev(EventKind::Accepted, 5, 5000), 200), None, now);
    assert_eq!((t.len(), t.live()), (1, 0));
    assert_eq!(t.find(1, lo(5000), lo(80)).unwrap().owner.as_ref().unwrap().pid, 10);
}

#[test]
fn close_without_open_is_kept_for_grace() {
    let now = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_millis(100));
    t.apply(&ev(EventKind::Closed, 4, 4000), None, now);
    assert_eq!((t.len(), t.live()), (1, 0));
    assert_eq!(t.expire(now + Duration::from_millis(100)).expired, 1);
}

#[test]
fn a_new_socket_at_a_live_address_ends_the_old_connection_and_late_events_stay_with_it() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    t.apply(&at(ev(EventKind::Established, 1, 1000), 100), None, t0);
    // Its CLOSE was lost; a new socket at the same address, with another 4-tuple and another owner.
    let mut other = at(ev(EventKind::Established, 1, 2000), 300);
    other.owner.as_mut().unwrap().pid = 20;
    let e = t.apply(&other, None, t0);
    assert_eq!((e.reused, t.len(), t.live()), (1, 2, 1));
    assert_eq!(t.find(1, lo(1000), lo(80)).unwrap().owner.as_ref().unwrap().pid, 10);
    assert!(t.find(1, lo(1000), lo(80)).unwrap().closed.is_some());
    assert_eq!(t.find(1, lo(2000), lo(80)).unwrap().owner.as_ref().unwrap().pid, 20);
    // A second ESTABLISHED of the same 4-tuple is a new connection too (the port was reused as well).
    let mut again = at(ev(EventKind::Established, 1, 2000), 400);
    again.owner.as_mut().unwrap().pid = 30;
    assert_eq!(t.apply(&again, None, t0).reused, 1);
    assert_eq!(t.find(1, lo(2000), lo(80)).unwrap().owner.as_ref().unwrap().pid, 30);
    assert_eq!(t.live(), 1);
}

#[test]
fn live_connections_the_kernel_forgot_end_and_stay_findable_for_the_grace_period() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    t.apply(&at(ev(EventKind::Established, 1, 1000), 100), None, t0);
    t.apply(&at(ev(EventKind::Established, 2, 1001), 100), None, t0);
    let live = t.live_sockets();
    assert_eq!(live.len(), 2);
    let gone: Vec<_> = live.into_iter().filter(|&(skaddr, _)| skaddr == 1).collect();
    assert_eq!(t.forget(&gone, 500, t0).forgotten, 1);
    assert_eq!(t.live(), 1);
    assert!(t.find(1, lo(1000), lo(80)).unwrap().closed.is_some());
    // Its CLOSE, emitted before the check, arrives late: it lands on it and changes nothing.
    assert_eq!(
        t.apply(&at(ev(EventKind::Closed, 1, 1000), 450), None, t0),
        Evictions::default()
    );
    assert_eq!(t.len(), 2);
    // Forgetting again is a no-op; the grace period ends it.
    assert_eq!(t.forget(&gone, 600, t0).forgotten, 0);
    assert_eq!(t.expire(t0 + Duration::from_secs(31)).expired, 1);
}

#[test]
fn a_namespace_leaves_the_index_with_its_last_connection() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(1));
    for ns in 1..=5 {
        let mut e = ev(EventKind::Established, u64::from(ns), 1000);
        e.netns = ns;
        t.apply(&e, None, t0);
        let mut c = at(ev(EventKind::Closed, u64::from(ns), 1000), 200);
        c.netns = ns;
        t.apply(&c, None, t0);
    }
    assert_eq!(t.namespaces(), 5);
    assert!(t.find_any_during(lo(1000), lo(80), During::ALWAYS).is_ok());
    t.expire(t0 + Duration::from_secs(2));
    assert_eq!((t.len(), t.namespaces()), (0, 0));
}

#[test]
fn a_connection_fits_its_allocation_class() {
    // Each entry is one boxed `Connection`: glibc serves a request of n bytes from a chunk of n + 8 rounded up to
    // 16, so 136 bytes take 144, where the 168 bytes of two std `SocketAddr`s and a `Duration` took 176. With
    // 100,000 connections (200,000 entries) that is 6 MiB of the agent's memory target.
    assert!(
        std::mem::size_of::<Connection>() <= 136,
        "{}",
        std::mem::size_of::<Connection>()
    );
}

#[test]
fn a_connection_recovered_from_the_kernel_map_takes_its_late_established_event() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    // The ring buffer dropped nothing for socket 2: recovering it changes nothing.
    t.apply(&ev(EventKind::Established, 2, 2000), None, t0);
    assert_eq!(
        t.recover(&ev(EventKind::Established, 2, 2000), None, t0),
        (Evictions::default(), false)
    );
    assert_eq!((t.len(), t.live()), (1, 1));

    // Socket 1's ESTABLISHED is read from the kernel's map, then from the ring buffer after all.
    let (e, created) = t.recover(&at(ev(EventKind::Established, 1, 1000), 50), None, t0);
    assert_eq!((e, created), (Evictions::default(), true));
    assert_eq!(t.get_live(1).and_then(|c| c.owner.as_ref()).map(|o| o.pid), Some(10));
    let e = t.apply(&ev(EventKind::Established, 1, 1000), None, t0);
    assert_eq!(e, Evictions::default(), "the ring's event is the same connection's");
    assert_eq!((t.len(), t.live()), (2, 2));
    assert_eq!(t.get_live(1).unwrap().first_ts_ns, 50);
    // A second ESTABLISHED is still a new socket at that address (its predecessor's CLOSE was lost).
    assert_eq!(
        t.apply(&at(ev(EventKind::Established, 1, 1000), 300), None, t0).reused,
        1
    );
}

#[test]
fn a_recovered_connection_never_revives_a_closed_one_nor_survives_another() {
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    // Read from the map just before the socket closed; its CLOSED was applied first.
    t.apply(&at(ev(EventKind::Closed, 1, 1000), 200), None, t0);
    let (_, created) = t.recover(&at(ev(EventKind::Established, 1, 1000), 50), None, t0);
    assert!(!created);
    assert_eq!((t.len(), t.live()), (1, 0), "it stays closed");

    // The table holds another socket at the address (its CLOSE was dropped too): that one ends.
    t.apply(&at(ev(EventKind::Established, 3, 3000), 400), None, t0);
    let (e, created) = t.recover(&at(ev(EventKind::Established, 3, 3001), 500), None, t0);
    assert_eq!((e.reused, created), (1, true));
    assert_eq!(t.get_live(3).unwrap().local, Endpoint::from(lo(3001)));
    assert!(t.find(1, lo(3000), lo(80)).unwrap().closed.is_some());
}

#[test]
fn a_reused_4_tuple_keeps_each_connection_findable_by_the_time_of_a_call() {
    const MS: u64 = 1_000_000;
    let t0 = Instant::now();
    let mut t = ConnTable::new(3, Duration::from_secs(30));
    let during = |start: u64, end: u64| During {
        start: start * MS,
        end: end * MS,
    };
    let find = |t: &ConnTable, start, end| t.find_during(1, lo(1000), lo(80), during(start, end)).map(|c| c.skaddr);
    // A (socket 1) lives from 10 to 20 ms, then B (socket 2) takes its 4-tuple at 30 ms.
    t.apply(&at(ev(EventKind::Established, 1, 1000), 10 * MS), None, t0);
    let mut closed = at(ev(EventKind::Closed, 1, 1000), 20 * MS);
    closed.duration = Some(Duration::from_millis(10));
    t.apply(&closed, None, t0);
    t.apply(&at(ev(EventKind::Established, 2, 1000), 30 * MS), None, t0);
    assert_eq!(t.find(1, lo(1000), lo(80)).map(|c| c.skaddr), Some(2), "the newest");
    assert_eq!(find(&t, 12, 13), Ok(1));
    assert_eq!(find(&t, 19, 25), Ok(1), "a call the close cut short");
    assert_eq!(find(&t, 31, 32), Ok(2));
    assert_eq!(find(&t, 22, 23), Err(Miss::NotDuring), "neither was open");
    assert_eq!(find(&t, 5, 6), Err(Miss::NotDuring));
    assert_eq!(
        t.find_during(1, lo(1001), lo(80), during(12, 13)).map(|c| c.skaddr),
        Err(Miss::Absent)
    );
    assert_eq!(
        t.find_any_during(lo(1000), lo(80), during(12, 13)).map(|c| c.skaddr),
        Ok(1)
    );

    // The table makes room: A, the closed one, goes; B stays the 4-tuple's.
    t.apply(&ev(EventKind::Established, 3, 2000), None, t0);
    t.apply(&ev(EventKind::Established, 4, 3000), None, t0);
    assert_eq!(t.len(), 3);
    assert_eq!(find(&t, 12, 13), Err(Miss::NotDuring));
    assert_eq!(find(&t, 31, 32), Ok(2));
    assert!(t.older.is_empty() && t.newer.is_empty(), "{:?} {:?}", t.older, t.newer);
}

#[test]
fn the_4_tuple_s_older_connection_is_found_again_when_the_newer_goes_first() {
    const MS: u64 = 1_000_000;
    let t0 = Instant::now();
    let mut t = ConnTable::new(10, Duration::from_secs(30));
    // A (socket 1) lost its CLOSE and still looks live; B (socket 2) has its 4-tuple from 30 to 40 ms.
    t.apply(&at(ev(EventKind::Established, 1, 1000), 10 * MS), None, t0);
    t.apply(&at(ev(EventKind::Established, 2, 1000), 30 * MS), None, t0);
    let mut closed = at(ev(EventKind::Closed, 2, 1000), 40 * MS);
    closed.duration = Some(Duration::from_millis(10));
    t.apply(&closed, None, t0);
    assert_eq!(t.expire(t0 + Duration::from_secs(31)).expired, 1);
    assert_eq!(t.find(1, lo(1000), lo(80)).map(|c| c.skaddr), Some(1));
    assert!(t.older.is_empty() && t.newer.is_empty());
}
