use std::{cell::RefCell, collections::HashMap, sync::Arc};

use proto::v1::SocketAddress;

use super::*;
use crate::{
    ebpf::events::{Owner, Role},
    procinfo::ProcessInfo,
};

/// A fake table: 4-tuples to connections, changeable between attempts.
#[derive(Default)]
struct Fake(RefCell<HashMap<(SocketAddr, SocketAddr), Connection>>);

impl Lookup for Fake {
    fn lookup(
        &self,
        _netns: Option<u32>,
        local: SocketAddr,
        remote: SocketAddr,
        _during: Option<Span>,
    ) -> Result<Connection, Miss> {
        self.0.borrow().get(&(local, remote)).cloned().ok_or(Miss::Absent)
    }
}

impl Fake {
    fn add(&self, local: &str, remote: &str, owner: Option<u32>) {
        let (local, remote): (SocketAddr, SocketAddr) = (local.parse().unwrap(), remote.parse().unwrap());
        let conn = Connection {
            skaddr: 1,
            netns: 7,
            role: Role::Client,
            local: local.into(),
            remote: remote.into(),
            owner: owner.map(|pid| Owner {
                pid,
                tid: pid,
                comm: "app".into(),
                start_ns: 5_000_000_000,
            }),
            process: owner.map(|pid| {
                Arc::new(ProcessInfo {
                    pid,
                    start_ticks: 500,
                    exe: Some("/usr/bin/app".into()),
                    cmdline: vec!["app".into(), "--serve".into()],
                    container_id: None,
                })
            }),
            closed: None,
            first_ts_ns: 1_000,
        };
        self.0.borrow_mut().insert((local, remote), conn);
    }
}

fn sa(text: &str) -> Option<SocketAddress> {
    let (a, p) = text.rsplit_once(':').unwrap();
    Some(SocketAddress {
        address: a.trim_start_matches('[').trim_end_matches(']').into(),
        port: p.parse().unwrap(),
    })
}

fn outbound(client: &str, server: &str) -> CallRecord {
    CallRecord {
        direction: Direction::Outbound as i32,
        client: sa(client),
        server: sa(server),
        upstream_local: sa("127.0.0.1:40000"),
        upstream_peer: sa("10.0.0.9:8080"),
        ..CallRecord::default()
    }
}

fn inbound(upstream_local: &str, upstream_peer: &str) -> CallRecord {
    CallRecord {
        direction: Direction::Inbound as i32,
        client: sa("10.1.1.1:50000"),
        server: sa("10.0.0.2:15006"),
        upstream_local: sa(upstream_local),
        upstream_peer: sa(upstream_peer),
        ..CallRecord::default()
    }
}

#[test]
fn keys_follow_the_direction() {
    let k = key(&outbound("127.0.0.1:5000", "127.0.0.1:15001")).unwrap();
    assert_eq!(
        k,
        ("127.0.0.1:5000".parse().unwrap(), "127.0.0.1:15001".parse().unwrap())
    );
    let k = key(&inbound("127.0.0.6:41000", "10.0.0.2:8080")).unwrap();
    assert_eq!(
        k,
        ("10.0.0.2:8080".parse().unwrap(), "127.0.0.6:41000".parse().unwrap())
    );
    // v4-mapped and bracketed IPv6 are normalised as the table stores them.
    let k = key(&outbound("[::ffff:127.0.0.1]:5000", "[::1]:15001")).unwrap();
    assert_eq!(k, ("127.0.0.1:5000".parse().unwrap(), "[::1]:15001".parse().unwrap()));
}

#[test]
fn missing_or_unusable_addresses_are_no_address() {
    let fake = Fake::default();
    let now = Instant::now();
    let mut p = Pending::new(10, Duration::from_secs(1));
    let mut no_upstream = inbound("127.0.0.1:1", "127.0.0.1:2");
    no_upstream.upstream_local = None;
    let mut pipe = outbound("127.0.0.1:5000", "127.0.0.1:15001");
    pipe.server = Some(SocketAddress {
        address: "/run/envoy.sock".into(),
        port: 0,
    });
    let undirected = CallRecord::default();
    for (record, want) in [
        (no_upstream, "no usable upstream_local address"),
        (pipe, "no usable server address"),
        (undirected, "no usable client address; no usable upstream_peer address"),
    ] {
        let r = p.offer(&fake, record, 1, now).unwrap();
        assert_eq!(r.outcome, Outcome::NoAddress(want.into()));
        assert_eq!(r.outcome.label(), "unlinked_no_address");
    }
    assert!(p.is_empty());
}

#[test]
fn links_at_once_when_the_connection_is_known() {
    let fake = Fake::default();
    fake.add("127.0.0.1:5000", "127.0.0.1:15001", Some(42));
    let mut p = Pending::new(10, Duration::from_secs(1));
    let r = p
        .offer(&fake, outbound("127.0.0.1:5000", "127.0.0.1:15001"), 9, Instant::now())
        .unwrap();
    let Outcome::Linked(conn, Rule::Outbound) = &r.outcome else {
        panic!("{r:?}")
    };
    assert_eq!(conn.owner.as_ref().unwrap().pid, 42);
    let clocks = Clocks {
        boot_to_unix: 1_000_000_000_000,
        mono_to_unix: 2_000_000_000_000,
    };
    let call = linked_call(r.clone(), clocks, true);
    assert_eq!(call.link, LinkState::Linked as i32);
    assert_eq!(call.link_rule, "outbound");
    assert_eq!(call.received_unix_nano, 9);
    let process = call.process.unwrap();
    assert_eq!(process.pid, 42);
    assert_eq!(process.executable_path, "/usr/bin/app");
    assert_eq!(process.command_line, "app --serve");
    let hidden = linked_call(r, clocks, false).process.unwrap();
    assert_eq!((hidden.command_line.as_str(), hidden.command.as_str()), ("", "app"));
    assert_eq!(process.command, "app");
    assert_eq!(process.start_time_unix_nano, 1_005_000_000_000);
    let conn = call.connection.unwrap();
    assert_eq!(conn.local.unwrap().port, 5000);
    assert_eq!(conn.netns, 7);
    assert_eq!(conn.established_unix_nano, 2_000_000_001_000);
}

#[test]
fn inbound_names_the_accepting_process() {
    let fake = Fake::default();
    // The application's accepted socket: local = its listener, remote = Envoy's end.
    fake.add("10.0.0.2:8080", "127.0.0.6:41000", Some(77));
    let mut p = Pending::new(10, Duration::from_secs(1));
    let r = p
        .offer(&fake, inbound("127.0.0.6:41000", "10.0.0.2:8080"), 1, Instant::now())
        .unwrap();
    assert!(
        matches!(&r.outcome, Outcome::Linked(c, Rule::Inbound) if c.owner.as_ref().unwrap().pid == 77),
        "{r:?}"
    );
}

#[test]
fn a_late_connection_links_within_the_wait_and_a_missing_one_times_out() {
    let fake = Fake::default();
    let t0 = Instant::now();
    let wait = Duration::from_millis(500);
    let mut p = Pending::new(10, wait);
    assert!(p
        .offer(&fake, outbound("127.0.0.1:5000", "127.0.0.1:15001"), 1, t0)
        .is_none());
    assert!(p
        .offer(&fake, outbound("127.0.0.1:6000", "127.0.0.1:15001"), 2, t0)
        .is_none());
    assert_eq!(p.len(), 2);
    assert!(p.retry(&fake, t0 + Duration::from_millis(100)).is_empty());
    // The first one's connection arrives, without its owner first (a server socket before accept).
    fake.add("127.0.0.1:5000", "127.0.0.1:15001", None);
    assert!(p.retry(&fake, t0 + Duration::from_millis(200)).is_empty());
    fake.add("127.0.0.1:5000", "127.0.0.1:15001", Some(42));
    let done = p.retry(&fake, t0 + Duration::from_millis(300));
    assert_eq!(done.len(), 1);
    assert_eq!(done[0].received_unix_nano, 1);
    assert!(matches!(done[0].outcome, Outcome::Linked(..)));
    let done = p.retry(&fake, t0 + wait);
    assert_eq!(done.len(), 1);
    let Outcome::NoConnection(reason) = &done[0].outcome else {
        panic!("{done:?}")
    };
    assert_eq!(
        reason,
        "no connection 127.0.0.1:6000 -> 127.0.0.1:15001 in the table after waiting 500ms"
    );
    assert!(p.is_empty());
    let call = linked_call(done[0].clone(), Clocks::default(), true);
    assert_eq!(call.link, LinkState::NoConnection as i32);
    assert!(call.process.is_none() && call.connection.is_none());
}

#[test]
fn a_full_queue_reports_at_once_and_no_wait_means_no_queue() {
    let fake = Fake::default();
    let now = Instant::now();
    let mut p = Pending::new(1, Duration::from_secs(1));
    assert!(p
        .offer(&fake, outbound("127.0.0.1:5000", "127.0.0.1:1"), 1, now)
        .is_none());
    let r = p
        .offer(&fake, outbound("127.0.0.1:5001", "127.0.0.1:1"), 1, now)
        .unwrap();
    assert_eq!(r.outcome.label(), "unlinked_queue_full");
    assert_eq!(p.len(), 1);
    let mut p = Pending::new(10, Duration::ZERO);
    let r = p
        .offer(&fake, outbound("127.0.0.1:5000", "127.0.0.1:1"), 1, now)
        .unwrap();
    assert_eq!(r.outcome.label(), "unlinked_no_connection");
    assert!(p.is_empty());
}

#[test]
fn the_queue_is_full_once_its_records_take_max_bytes_and_has_room_again_when_they_leave() {
    let fake = Fake::default();
    let now = Instant::now();
    let record = |port: u16| outbound(&format!("127.0.0.1:{port}"), "127.0.0.1:1");
    let size = prost::Message::encoded_len(&record(5000));
    // Room for two records' bytes, and more than two records.
    let mut p = Pending::new(10, Duration::from_secs(1)).with_max_bytes(2 * size);
    assert!(p.offer(&fake, record(5000), 1, now).is_none());
    assert!(p.offer(&fake, record(5001), 1, now).is_none());
    assert_eq!(p.bytes(), 2 * size);
    let r = p.offer(&fake, record(5002), 1, now).unwrap();
    assert_eq!(r.outcome.label(), "unlinked_queue_full");
    assert!(
        matches!(&r.outcome, Outcome::QueueFull(why) if why.contains("link_pending_bytes")),
        "{r:?}"
    );
    // One links: its bytes leave with it, and a record can wait again.
    fake.add("127.0.0.1:5000", "127.0.0.1:1", Some(42));
    assert_eq!(p.retry(&fake, now).len(), 1);
    assert_eq!((p.len(), p.bytes()), (1, size));
    assert!(p.offer(&fake, record(5003), 1, now).is_none());
    assert_eq!(p.close(&fake).len(), 2);
    assert_eq!(p.bytes(), 0);
}

#[test]
fn without_a_direction_the_callers_connection_is_tried_first_then_the_servers() {
    let fake = Fake::default();
    let mut p = Pending::new(10, Duration::from_secs(1));
    let undirected = |r: CallRecord| CallRecord {
        direction: Direction::Unspecified as i32,
        ..r
    };
    // Only Envoy's upstream connection is local: the server is named, by the inbound rule.
    fake.add("10.0.0.2:8080", "127.0.0.6:41000", Some(77));
    let r = p
        .offer(
            &fake,
            undirected(inbound("127.0.0.6:41000", "10.0.0.2:8080")),
            1,
            Instant::now(),
        )
        .unwrap();
    assert!(
        matches!(&r.outcome, Outcome::Linked(c, Rule::Inbound) if c.owner.as_ref().unwrap().pid == 77),
        "{r:?}"
    );
    // Both are: the caller wins.
    fake.add("127.0.0.1:5000", "127.0.0.1:15001", Some(42));
    let mut both = outbound("127.0.0.1:5000", "127.0.0.1:15001");
    both.upstream_local = sa("127.0.0.6:41000");
    both.upstream_peer = sa("10.0.0.2:8080");
    let r = p.offer(&fake, undirected(both), 1, Instant::now()).unwrap();
    assert!(
        matches!(&r.outcome, Outcome::Linked(c, Rule::Outbound) if c.owner.as_ref().unwrap().pid == 42),
        "{r:?}"
    );
    assert_eq!(linked_call(r, Clocks::default(), false).link_rule, "outbound");
    // Neither: it waits, and the reason names both lookups.
    let t0 = Instant::now();
    assert!(p
        .offer(&fake, undirected(outbound("127.0.0.1:6000", "127.0.0.1:15001")), 1, t0)
        .is_none());
    let done = p.retry(&fake, t0 + Duration::from_secs(1));
    let Outcome::NoConnection(reason) = &done[0].outcome else {
        panic!("{done:?}")
    };
    assert_eq!(
        reason,
        "no connection 127.0.0.1:6000 -> 127.0.0.1:15001 in the table; no connection 10.0.0.9:8080 -> \
         127.0.0.1:40000 in the table after waiting 1s"
    );
}

#[test]
fn a_batch_builds_each_process_once_and_tells_processes_apart() {
    let fake = Fake::default();
    fake.add("127.0.0.1:5000", "127.0.0.1:15001", Some(42));
    fake.add("127.0.0.1:5001", "127.0.0.1:15001", Some(43));
    let conn = |local: &str| {
        fake.lookup(None, local.parse().unwrap(), "127.0.0.1:15001".parse().unwrap(), None)
            .unwrap()
    };
    let (a, b) = (conn("127.0.0.1:5000"), conn("127.0.0.1:5001"));
    let clocks = Clocks {
        boot_to_unix: 1_000_000_000_000,
        mono_to_unix: 0,
    };
    let mut built = Processes::new(clocks, false);
    assert_eq!(built.get(&a), process(&a, clocks, false).as_ref());
    assert_eq!(built.get(&b).unwrap().pid, 43);
    assert_eq!(built.get(&a).unwrap().pid, 42);
    assert_eq!(built.built.len(), 2);
    // The same owner with another /proc description (re-read after a pid was reused) is another process.
    let mut reread = a.clone();
    reread.process = Some(Arc::new(ProcessInfo::clone(a.process.as_deref().unwrap())));
    assert_eq!(built.get(&reread), process(&a, clocks, false).as_ref());
    assert_eq!(built.built.len(), 3);
    let unowned = Connection { owner: None, ..a };
    assert_eq!(built.get(&unowned), None);
}
