use proto::v1::{CallRecord, Process};

use super::*;

fn call(n: u64, service: &str) -> Arc<LinkedCall> {
    Arc::new(LinkedCall {
        call: Some(CallRecord {
            service: service.into(),
            rpc_method: format!("{service}/Get"),
            gray_version: "v2".into(),
            duration_ns: n,
            ..CallRecord::default()
        }),
        process: Some(Process {
            pid: 42,
            ..Process::default()
        }),
        ..LinkedCall::default()
    })
}

fn n(r: &WatchResponse) -> u64 {
    r.call.as_ref().unwrap().call.as_ref().unwrap().duration_ns
}

fn hub(capacity: usize) -> Arc<Hub> {
    limited(Limits {
        calls: capacity,
        bytes: usize::MAX,
        watchers: usize::MAX,
    })
}

fn limited(limits: Limits) -> Arc<Hub> {
    Hub::new(limits, Gauge::default(), Counter::default())
}

#[test]
fn a_slow_watcher_loses_its_oldest_and_is_told_how_many() {
    let hub = hub(3);
    let slow = hub.subscribe(Filter::default()).unwrap();
    let fast = hub.subscribe(Filter::default()).unwrap();
    for i in 0..5 {
        hub.publish(&call(i, "s"));
        // The fast one keeps up.
        let r = fast.try_next().unwrap();
        assert_eq!((n(&r), r.lost), (i, 0));
    }
    // 5 published into a queue of 3: calls 0 and 1 were dropped.
    let r = slow.try_next().unwrap();
    assert_eq!((n(&r), r.lost), (2, 2));
    let r = slow.try_next().unwrap();
    assert_eq!((n(&r), r.lost), (3, 0));
    hub.publish(&call(5, "s"));
    hub.publish(&call(6, "s"));
    let rest: Vec<_> = std::iter::from_fn(|| slow.try_next())
        .map(|r| (n(&r), r.lost))
        .collect();
    assert_eq!(rest, [(4, 0), (5, 0), (6, 0)]);
    assert_eq!(hub.lost.get(), 2);
}

#[test]
fn filters_match_service_method_forms_gray_version_and_pid() {
    let c = call(1, "pkg.Greeter");
    let http = Arc::new(LinkedCall {
        call: Some(CallRecord {
            service: "backend".into(),
            http_request_method: "GET".into(),
            http_route: "/items/{id}".into(),
            ..CallRecord::default()
        }),
        ..LinkedCall::default()
    });
    let f = |service: &str, method: &str, gray: &str, pid| Filter {
        service: service.into(),
        method: method.into(),
        gray_version: gray.into(),
        pid,
        tenant: String::new(),
    };
    assert!(f("", "", "", 0).matches(&c));
    assert!(f("pkg.Greeter", "Get", "v2", 42).matches(&c));
    assert!(f("", "pkg.Greeter/Get", "", 0).matches(&c));
    assert!(!f("other", "", "", 0).matches(&c));
    assert!(!f("", "Put", "", 0).matches(&c));
    assert!(!f("", "", "v1", 0).matches(&c));
    assert!(!f("", "", "", 43).matches(&c));
    assert!(f("backend", "GET /items/{id}", "", 0).matches(&http));
    assert!(!f("", "POST /items/{id}", "", 0).matches(&http));
    assert!(!f("", "", "", 42).matches(&http), "an unlinked call has no pid");
}

#[tokio::test]
async fn next_waits_for_a_publish_and_ends_when_the_hub_closes() {
    let hub = hub(8);
    let w = hub
        .subscribe(Filter {
            service: "a".into(),
            ..Filter::default()
        })
        .unwrap();
    assert_eq!(hub.len(), 1);
    let h = Arc::clone(&hub);
    let publisher = tokio::spawn(async move {
        tokio::task::yield_now().await;
        h.publish(&call(1, "b"));
        h.publish(&call(2, "a"));
        h.close();
    });
    assert_eq!(n(&w.next().await.unwrap()), 2);
    assert!(w.next().await.is_none());
    publisher.await.unwrap();
    assert!(
        hub.subscribe(Filter::default()).unwrap().next().await.is_none(),
        "closed hub"
    );
    drop(w);
    assert!(hub.is_empty());
}

#[test]
fn dropping_a_watcher_leaves_the_hub() {
    let hub = hub(2);
    let a = hub.subscribe(Filter::default()).unwrap();
    let _b = hub.subscribe(Filter::default()).unwrap();
    assert_eq!((hub.len(), hub.count.get()), (2, 2));
    drop(a);
    assert_eq!((hub.len(), hub.count.get()), (1, 1));
}

#[test]
fn a_tenant_filter_matches_that_label_only() {
    let hub = hub(10);
    let free = hub
        .subscribe(Filter {
            tenant: "free".into(),
            ..Filter::default()
        })
        .unwrap();
    let all = hub.subscribe(Filter::default()).unwrap();
    for (i, tenant) in ["free", "enterprise", "", "free"].into_iter().enumerate() {
        let mut c = LinkedCall::clone(&call(i as u64, "s"));
        c.call.as_mut().unwrap().tenant = tenant.into();
        hub.publish(&Arc::new(c));
    }
    let got: Vec<u64> = std::iter::from_fn(|| free.try_next()).map(|r| n(&r)).collect();
    assert_eq!(got, [0, 3]);
    assert_eq!(std::iter::from_fn(|| all.try_next()).count(), 4);
    assert_eq!(
        Filter::from(WatchRequest {
            tenant: "t_0a".into(),
            ..WatchRequest::default()
        })
        .tenant,
        "t_0a"
    );
}

#[test]
fn a_queue_keeps_at_most_its_bytes_and_always_the_newest_call() {
    // (Every call of the test encodes to this size: their durations 1..=8 take one byte each.)
    let size = prost::Message::encoded_len(&*call(1, "s"));
    let hub = limited(Limits {
        calls: 100,
        bytes: 3 * size,
        watchers: 1,
    });
    let slow = hub.subscribe(Filter::default()).unwrap();
    for i in 1..=5 {
        hub.publish(&call(i, "s"));
    }
    let got: Vec<_> = std::iter::from_fn(|| slow.try_next())
        .map(|r| (n(&r), r.lost))
        .collect();
    assert_eq!(got, [(3, 2), (4, 0), (5, 0)]);
    // A call larger than the whole budget still comes, alone.
    let tiny = limited(Limits {
        calls: 100,
        bytes: 1,
        watchers: 1,
    });
    let w = tiny.subscribe(Filter::default()).unwrap();
    tiny.publish(&call(7, "s"));
    tiny.publish(&call(8, "s"));
    let got: Vec<_> = std::iter::from_fn(|| w.try_next()).map(|r| (n(&r), r.lost)).collect();
    assert_eq!(got, [(8, 1)]);
    assert_eq!(lock(&w.slot.queue).bytes, 0);
}

#[test]
fn at_most_max_watchers_watch_and_a_place_frees_when_one_ends() {
    let hub = limited(Limits {
        calls: 1,
        bytes: usize::MAX,
        watchers: 2,
    });
    let a = hub.subscribe(Filter::default()).unwrap();
    let _b = hub.subscribe(Filter::default()).unwrap();
    assert_eq!(
        hub.subscribe(Filter::default()).err().map(|e| e.to_string()).as_deref(),
        Some("2 watchers are open already, the most max_watchers allows")
    );
    drop(a);
    assert!(hub.subscribe(Filter::default()).is_ok());
}
