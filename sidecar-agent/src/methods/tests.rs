use proto::v1::{Direction, SocketAddress};

use super::*;

fn grpc(method: &str, status: &str, ms: u64, pid: u32) -> LinkedCall {
    LinkedCall {
        call: Some(CallRecord {
            direction: Direction::Outbound as i32,
            rpc_system_name: "grpc".into(),
            rpc_method: format!("pkg.Greeter/{method}"),
            service: "pkg.Greeter".into(),
            gray_version: "v2".into(),
            status: status.into(),
            duration_ns: ms * 1_000_000,
            start_time_unix_nano: 1_000 + ms,
            upstream_peer: Some(SocketAddress {
                address: "10.0.0.9".into(),
                port: 8080,
            }),
            ..CallRecord::default()
        }),
        process: (pid != 0).then(|| Process {
            pid,
            start_time_unix_nano: 7,
            ..Process::default()
        }),
        ..LinkedCall::default()
    }
}

/// The process `pid` of [`grpc`]'s calls, as it declares.
fn by(pid: u32) -> Declarer {
    Declarer {
        pid,
        start_time_unix_nano: 7,
    }
}

#[test]
fn aggregates_calls_errors_latency_and_peers_per_row() {
    let mut t = MethodTable::new(10, 10);
    for ms in 1..=100 {
        let status = if ms % 10 == 0 { "UNAVAILABLE" } else { "OK" };
        assert_eq!(t.observe(&grpc("SayHello", status, ms, 42)), Effects::default());
    }
    t.observe(&grpc("SayHello", "OK", 5, 0)); // unlinked: its own row
    let rows = t.list();
    assert_eq!(rows.len(), 2);
    let r = rows.iter().find(|r| r.process.is_some()).unwrap();
    assert_eq!((r.service.as_str(), r.method.as_str()), ("pkg.Greeter", "SayHello"));
    assert_eq!((r.calls, r.errors), (100, 10));
    assert_eq!(r.gray_version, "v2");
    assert_eq!(r.peers, ["10.0.0.9:8080"]);
    assert_eq!((r.first_seen_unix_nano, r.last_seen_unix_nano), (1_001, 1_100));
    let l = r.latency.unwrap();
    assert_eq!(l.count, 100);
    assert_eq!((l.min_ms, l.max_ms, l.sum_ms), (1.0, 100.0, 5050.0));
    for (got, want) in [(l.p50_ms, 50.0), (l.p90_ms, 90.0), (l.p99_ms, 99.0)] {
        assert!(got >= want && got <= want * 1.125, "percentile {got} for {want}");
    }
}

#[test]
fn method_labels_and_errors() {
    let mut http = CallRecord {
        rpc_system_name: "http".into(),
        http_request_method: "GET".into(),
        http_route: "/items/{id}".into(),
        http_response_status_code: 404,
        status: "4xx".into(),
        ..CallRecord::default()
    };
    assert_eq!(method_label(&http), "GET /items/{id}");
    assert!(!is_error(&http));
    http.http_response_status_code = 503;
    assert!(is_error(&http));
    http.status = "no_response".into();
    http.http_response_status_code = 0;
    assert!(is_error(&http));
    let g = grpc("SayHello", "OK", 1, 1).call.unwrap();
    assert_eq!(method_label(&g), "SayHello");
    assert!(!is_error(&g));
}

#[test]
fn the_row_evicted_is_always_the_least_recently_used_one() {
    // The table moves a used row in its idle order only when it evicts; a plain list in use order is the model.
    let names = ["A", "B", "C", "D", "E", "F", "G"];
    let mut t = MethodTable::new(4, 100);
    let mut model: Vec<&str> = Vec::new();
    let mut x: u64 = 7;
    for _ in 0..5_000 {
        // A small LCG: a fixed, repeatable sequence that favours no name.
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        let name = names[(x >> 33) as usize % names.len()];
        let fx = t.observe(&grpc(name, "OK", 1, 1));
        let full = model.len() == 4 && !model.contains(&name);
        assert_eq!(fx.evicted_idle, full);
        model.retain(|m| *m != name);
        if full {
            model.remove(0);
        }
        model.push(name);
        let mut want: Vec<String> = model.iter().map(|m| (*m).to_owned()).collect();
        want.sort();
        let have: Vec<String> = t.list().into_iter().map(|r| r.method).collect();
        assert_eq!(have, want);
    }
}

#[test]
fn rows_and_peers_are_bounded_and_the_idlest_row_makes_room() {
    let mut t = MethodTable::new(2, 10);
    t.observe(&grpc("A", "OK", 1, 1));
    t.observe(&grpc("B", "OK", 1, 1));
    t.observe(&grpc("A", "OK", 1, 1)); // A is now the more recently used
    let fx = t.observe(&grpc("C", "OK", 1, 1));
    assert_eq!(
        fx,
        Effects {
            folded: false,
            evicted_idle: true
        }
    );
    let methods: Vec<_> = t.list().iter().map(|r| (r.method.clone(), r.calls)).collect();
    assert_eq!(methods, [("A".to_owned(), 2), ("C".to_owned(), 1)]);
    assert_eq!(t.interfaces(), 2, "B's interface slot was freed with its row");
    let mut t = MethodTable::new(2, 10);
    for port in 0..40 {
        let mut c = grpc("A", "OK", 1, 1);
        c.call.as_mut().unwrap().upstream_peer.as_mut().unwrap().port = port;
        t.observe(&c);
    }
    assert_eq!(t.list()[0].peers.len(), MAX_PEERS);
}

#[test]
fn interfaces_beyond_the_cap_count_as_other() {
    let mut t = MethodTable::new(100, 3);
    let mut folded = 0;
    for i in 0..50 {
        folded += u32::from(t.observe(&grpc(&format!("M{i}"), "OK", 1, 1)).folded);
    }
    assert_eq!(folded, 47);
    let rows = t.list();
    assert_eq!(rows.len(), 4);
    let other = rows.iter().find(|r| r.service == OTHER && r.method == OTHER).unwrap();
    assert_eq!(other.calls, 47);
    assert_eq!(rows.iter().map(|r| r.calls).sum::<u64>(), 50);
    // A known interface keeps counting under its own name.
    assert!(!t.observe(&grpc("M0", "OK", 1, 1)).folded);
}

#[test]
fn rows_and_declarations_of_exited_processes_go_after_the_grace_period() {
    let mut t = MethodTable::new(10, 10);
    t.observe(&grpc("A", "OK", 1, 1));
    t.observe(&grpc("A", "OK", 1, 2));
    t.observe(&grpc("A", "OK", 1, 0)); // unlinked: no process to outlive
    t.declare(
        by(2),
        MethodMetadata {
            service: "pkg.Greeter".into(),
            method: "B".into(),
            ..MethodMetadata::default()
        },
    );
    let t0 = Instant::now();
    let grace = Duration::from_secs(60);
    let alive = |pid: u32, _| pid == 1;
    assert_eq!(t.expire_exited(alive, grace, t0), 0);
    assert_eq!(t.expire_exited(alive, grace, t0 + Duration::from_secs(59)), 0);
    assert_eq!(t.expire_exited(alive, grace, t0 + grace), 2);
    let pids: Vec<u32> = t
        .list()
        .iter()
        .map(|r| r.process.as_ref().map_or(0, |p| p.pid))
        .collect();
    assert_eq!(pids, [0, 1]);
}

#[test]
fn declarations_join_their_process_rows_or_stand_alone() {
    let mut t = MethodTable::new(10, 10);
    let decl = |method: &str| MethodMetadata {
        service: "pkg.Greeter".into(),
        method: method.into(),
        input_type: "pkg.HelloRequest".into(),
        output_type: "pkg.HelloReply".into(),
        version: "v2".into(),
    };
    t.observe(&grpc("SayHello", "OK", 1, 42));
    t.declare(by(42), decl("SayHello"));
    t.declare(by(42), decl("SayBye"));
    t.declare(by(43), decl("SayHello"));
    let rows = t.list();
    assert_eq!(rows.len(), 3, "{rows:#?}");
    assert_eq!(rows[0].declared.as_ref().unwrap().input_type, "pkg.HelloRequest");
    let alone: Vec<_> = rows[1..]
        .iter()
        .map(|r| (r.process.as_ref().unwrap().pid, r.method.as_str(), r.calls))
        .collect();
    assert_eq!(alone, [(42, "SayBye", 0), (43, "SayHello", 0)]);
}

#[test]
fn a_declaration_joins_the_rows_of_its_own_process_only_not_of_a_later_one_with_its_pid() {
    let tick = crate::procinfo::clock_tick_ns();
    let mut t = MethodTable::new(10, 10);
    let decl = |method: &str, input: &str| MethodMetadata {
        service: "pkg.Greeter".into(),
        method: method.into(),
        input_type: input.into(),
        ..MethodMetadata::default()
    };
    // Pid 42 was a process started at tick 3 that declared both methods, then exited; the pid's process now
    // started at tick 5 (the kernel's time, to the ns; /proc floors it to the tick) and declared SayHello again.
    let (old, new) = (3 * tick, 5 * tick);
    let started = new + tick / 2;
    t.declare(
        Declarer {
            pid: 42,
            start_time_unix_nano: old,
        },
        decl("SayHello", "old.In"),
    );
    t.declare(
        Declarer {
            pid: 42,
            start_time_unix_nano: old,
        },
        decl("SayBye", "old.In"),
    );
    t.declare(
        Declarer {
            pid: 42,
            start_time_unix_nano: new,
        },
        decl("SayHello", "new.In"),
    );
    for method in ["SayHello", "SayBye"] {
        let mut call = grpc(method, "OK", 1, 42);
        call.process.as_mut().unwrap().start_time_unix_nano = started;
        t.observe(&call);
    }
    let rows = t.list();
    let shown: Vec<_> = rows
        .iter()
        .map(|r| {
            let p = r.process.as_ref().unwrap();
            let input = r.declared.as_ref().map(|d| d.input_type.as_str());
            (r.method.as_str(), p.start_time_unix_nano, r.calls, input)
        })
        .collect();
    assert_eq!(
        shown,
        [
            ("SayBye", started, 1, None),
            ("SayHello", started, 1, Some("new.In")),
            // The old process's declarations stand alone, on it.
            ("SayBye", old, 0, Some("old.In")),
            ("SayHello", old, 0, Some("old.In")),
        ],
        "{rows:#?}"
    );
    // The old process is gone, the new one runs: only the old declarations go.
    let alive = |pid: u32, start: u64| pid == 42 && start >= new;
    assert_eq!(t.expire_exited(alive, Duration::ZERO, Instant::now()), 2);
    assert_eq!(t.list().len(), 2);
}

fn with_tenant(mut call: LinkedCall, tenant: &str) -> LinkedCall {
    if let Some(c) = call.call.as_mut() {
        c.tenant = tenant.into();
    }
    call
}

#[test]
fn rows_are_kept_per_tenant_and_tenants_use_no_interface_slot() {
    // One interface slot: three tenants of it are three rows, none folded into `other`.
    let mut t = MethodTable::new(10, 1);
    for (tenant, ms, n) in [("enterprise", 2, 3), ("free", 40, 2), ("t_00ff00ff00ff00ff", 3, 1)] {
        for _ in 0..n {
            assert_eq!(
                t.observe(&with_tenant(grpc("Get", "OK", ms, 42), tenant)),
                Effects::default()
            );
        }
    }
    t.observe(&grpc("Get", "OK", 1, 42)); // the dimension off: its own row, tenant ""
    let list = t.list();
    let rows: Vec<(&str, u64, f64)> = list
        .iter()
        .map(|r| (r.tenant.as_str(), r.calls, r.latency.unwrap().max_ms))
        .collect();
    assert_eq!(
        rows,
        [
            ("", 1, 1.0),
            ("enterprise", 3, 2.0),
            ("free", 2, 40.0),
            ("t_00ff00ff00ff00ff", 1, 3.0)
        ]
    );
    assert_eq!((t.len(), t.interfaces()), (4, 1));
}

#[test]
fn tenant_rows_count_against_max_rows_and_the_idlest_goes() {
    let mut t = MethodTable::new(2, 10);
    t.observe(&with_tenant(grpc("Get", "OK", 1, 42), "a"));
    t.observe(&with_tenant(grpc("Get", "OK", 1, 42), "b"));
    t.observe(&with_tenant(grpc("Get", "OK", 1, 42), "a"));
    let fx = t.observe(&with_tenant(grpc("Get", "OK", 1, 42), "c"));
    assert!(fx.evicted_idle);
    let tenants: Vec<String> = t.list().into_iter().map(|r| r.tenant).collect();
    assert_eq!(tenants, ["a", "c"]);
}

#[test]
fn a_full_declaration_table_evicts_the_declaration_unused_the_longest() {
    // Against a plain model (a list in order of last declaration), over redeclarations, evictions and an expiry.
    let mut t = MethodTable::new(3, 10);
    let mut model: Vec<(u32, String)> = Vec::new();
    let decl = |method: &str| MethodMetadata {
        service: "pkg.S".into(),
        method: method.into(),
        ..MethodMetadata::default()
    };
    let script = [
        (1, "a"),
        (1, "b"),
        (2, "c"),
        (1, "a"),
        (3, "d"),
        (3, "e"),
        (2, "c"),
        (4, "f"),
        (3, "e"),
    ];
    for (pid, method) in script {
        let evicted = t.declare(by(pid), decl(method)).evicted_idle;
        let key = (pid, method.to_owned());
        let was_there = model.contains(&key);
        model.retain(|k| *k != key);
        let model_evicts = !was_there && model.len() >= 3;
        if model_evicts {
            model.remove(0);
        }
        model.push(key);
        assert_eq!(evicted, model_evicts, "after {pid} {method}");
        let mut have: Vec<(u32, String)> = t.list().iter().map(|r| (pid_of(r), r.method.clone())).collect();
        let mut want = model.clone();
        have.sort();
        want.sort();
        assert_eq!(have, want, "after {pid} {method}");
    }
    // Expiring a declaring pid takes its declarations out of the eviction order too.
    let now = Instant::now();
    let gone = |pid: u32| pid != 3;
    t.expire_exited(|pid, _| !gone(pid), Duration::ZERO, now);
    model.retain(|k| !gone(k.0));
    t.declare(by(5), decl("g"));
    t.declare(by(6), decl("h"));
    model.extend([(5, "g".to_owned()), (6, "h".to_owned())]);
    let mut have: Vec<(u32, String)> = t.list().iter().map(|r| (pid_of(r), r.method.clone())).collect();
    have.sort();
    model.sort();
    assert_eq!(have, model);
}

fn pid_of(row: &MethodStats) -> u32 {
    row.process.as_ref().map_or(0, |p| p.pid)
}

/// Every page of the table, `page_size` at a time, with the change `between` made after each page.
fn all_pages(
    t: &mut MethodTable,
    page_size: usize,
    mut between: impl FnMut(&mut MethodTable, usize),
) -> Vec<Vec<MethodStats>> {
    let mut pages = Vec::new();
    let mut token = String::new();
    loop {
        let page = t.page(&token, page_size).unwrap();
        pages.push(page.methods);
        if page.next_page_token.is_empty() {
            return pages;
        }
        token = page.next_page_token;
        between(t, pages.len());
    }
}

fn names(rows: &[MethodStats]) -> Vec<String> {
    rows.iter().map(|r| format!("{}:{}", pid_of(r), r.method)).collect()
}

#[test]
fn pages_hold_page_size_entries_and_together_the_whole_list() {
    let mut t = MethodTable::new(100, 100);
    for i in 0..10 {
        t.observe(&grpc(&format!("M{i}"), "OK", 1, 42));
    }
    let decl = |method: &str| MethodMetadata {
        service: "pkg.Greeter".into(),
        method: method.into(),
        ..MethodMetadata::default()
    };
    // Declarations alone, after the rows: a page boundary falls among them and between rows and them. One more
    // declares a called interface, so it is on its row, not alone.
    for m in ["D1", "D2", "D3"] {
        t.declare(by(43), decl(m));
    }
    t.declare(by(42), decl("M3"));
    let whole = names(&t.list());
    assert_eq!(whole.len(), 13);
    for size in [1, 2, 3, 4, 10, 12, 13] {
        let pages = all_pages(&mut t, size, |_, _| {});
        assert!(
            pages.iter().all(|p| !p.is_empty() && p.len() <= size),
            "page size {size}"
        );
        assert_eq!(pages.len(), whole.len().div_ceil(size), "page size {size}");
        assert_eq!(names(&pages.concat()), whole, "page size {size}");
    }
    // No limit: one page, no token.
    let page = t.page("", 0).unwrap();
    assert_eq!((names(&page.methods), page.next_page_token.as_str()), (whole, ""));
}

#[test]
fn a_page_stays_under_its_byte_bound_with_one_entry_at_least() {
    let mut t = MethodTable::new(100, 100);
    // Rows of about 1 MiB each (the strings the agent accepts are 4 KiB at most; this only tests the bound).
    for i in 0..7 {
        t.observe(&grpc(&format!("M{i}{}", "x".repeat(1 << 20)), "OK", 1, 42));
    }
    let pages = all_pages(&mut t, 0, |_, _| {});
    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 2, 1]);
    for p in &pages {
        let bytes = prost::Message::encoded_len(&ListMethodsResponse {
            methods: p.clone(),
            next_page_token: String::new(),
        });
        assert!(bytes <= MAX_PAGE_BYTES, "{bytes}");
    }
    // A row larger than the bound still gets a page of its own.
    let (one, next) = t.entries(None, usize::MAX, 10);
    assert_eq!(one.len(), 1);
    assert!(next.is_some());
}

#[test]
fn rows_added_and_removed_between_pages_neither_repeat_nor_hide_the_rows_that_stay() {
    let mut t = MethodTable::new(5, 100);
    for m in ["B", "D", "F", "H"] {
        t.observe(&grpc(m, "OK", 1, 42));
    }
    // After the first page (B, D): a row before the token (A), one after it (G), and D, the token's own row,
    // evicted to make room for G (the table holds 5 rows, and D is the idlest).
    let pages = all_pages(&mut t, 2, |t, n| {
        if n == 1 {
            for m in ["B", "F", "H", "A", "G"] {
                t.observe(&grpc(m, "OK", 1, 42));
            }
            assert_eq!(names(&t.list()), ["42:A", "42:B", "42:F", "42:G", "42:H"]);
        }
    });
    // A came behind the token and waits for the next pass; G, ahead of it, is listed; nothing repeats.
    assert_eq!(names(&pages.concat()), ["42:B", "42:D", "42:F", "42:G", "42:H"]);
}

#[test]
fn a_bad_page_token_is_refused() {
    let t = MethodTable::new(10, 10);
    assert_eq!(t.page("garbage!", 0), Err(BadToken));
    assert_eq!(t.page("AQ", 0), Err(BadToken));
}
