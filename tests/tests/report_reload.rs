//! The report path across plugin reloads, through Envoy's file-based ECDS. A reload under load loses no record:
//! the old plugin's root context drains (sends what it buffered, waits for the answers), so `produced == sent`
//! exactly, the buffered gauge returns to zero, and the agent received every record. Calls Envoy refuses give
//! their slot back.

use std::{
    fs,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{privileged, Agent},
    client::Client,
    envoy::{render, Envoy, FilterBuild},
    paths, prom,
    upstream::Upstream,
};

fn value(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.starts_with(series))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"));
    line[series.len()..].trim().parse().expect("value")
}

/// Writes the ECDS resource with `config` atomically (Envoy watches for a rename into place).
fn publish(ecds: &Path, version: &str, config: &str) {
    publish_typed(ecds, version, &FilterBuild::current().typed_config(config));
}

/// Writes the ECDS resource with the filter's whole `typed_config`.
fn publish_typed(ecds: &Path, version: &str, typed_config: &str) {
    let template = fs::read_to_string(paths::tests_file("fixtures/envoy/ecds-grayscope.yaml")).expect("fixture");
    let yaml = render(
        &template,
        &[
            ("VERSION", version.to_owned()),
            ("TYPED_CONFIG", typed_config.to_owned()),
        ],
    );
    let tmp = ecds.with_extension("tmp");
    fs::write(&tmp, yaml).expect("write ECDS resource");
    fs::rename(&tmp, ecds).expect("move ECDS resource into place");
}

/// Envoy with the ECDS bootstrap, its plugin configured with `config`; the agent's socket path (nothing listens
/// there unless the test starts an agent), and the directory holding both.
fn start(config: &str) -> (Envoy, Upstream, PathBuf, PathBuf, tempfile::TempDir) {
    let http = Upstream::start();
    let dir = tempfile::tempdir().expect("tempdir");
    let ecds = dir.path().join("grayscope.yaml");
    let socket = dir.path().join("agent.sock");
    publish(&ecds, "1", config);
    let template = fs::read_to_string(paths::tests_file("fixtures/envoy/ecds.yaml")).expect("fixture");
    let yaml = render(
        &template,
        &[
            ("ECDS", ecds.display().to_string()),
            ("HTTP_PORT", http.addr.port().to_string()),
            ("AGENT_SOCKET", socket.display().to_string()),
            ("TYPE_URL", FilterBuild::current().type_url().to_owned()),
        ],
    );
    (Envoy::start(&yaml), http, ecds, socket, dir)
}

/// `/stats/prometheus` once the `produced` records are all accounted for (the report metrics are published by the
/// filter's tick, so they lag the calls by up to a tick) and nothing is buffered nor in flight any more (or after
/// 30 s, for the assertions to say).
fn settled(envoy: &Envoy, produced: u64) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = envoy.prometheus();
        let all = value(&text, "grayscope_report_records_total{outcome=\"produced\"}") == produced as f64;
        if (all && value(&text, "grayscope_report_records_buffered{}") == 0.0) || Instant::now() > deadline {
            return text;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// Calls Envoy refuses (the agent's cluster overflows its circuit breaker) each give their slot back: with one
/// call in flight at most, reporting goes on, and every record is counted as dropped. (This passed before the
/// in-flight deadline too: Envoy answers such calls after dispatch returns, not inside it. The lost-answer path
/// the deadline guards is covered by the core's unit tests, with a host that fails every hostcall.)
#[test]
fn calls_envoy_refuses_give_their_slot_back_and_are_counted_as_dropped() {
    let (envoy, _http, _ecds, _socket, _dir) =
        start(r#"{"report":{"cluster":"grayscope_overflow","flush_interval_ms":50,"max_in_flight":1}}"#);
    let mut c = Client::new(envoy.listener("ingress"));
    for n in 0..50 {
        assert_eq!(c.get(&format!("/orders/{n}"), &[]).status, 200, "request {n}");
        // About one batch per request: many calls, each refused.
        thread::sleep(Duration::from_millis(20));
    }
    let text = settled(&envoy, 50);
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"produced\"} 50");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"sent\"} 0");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 50");
    prom::assert_line(&text, "grayscope_report_records_buffered{} 0");
}

#[test]
fn a_plugin_reload_under_load_drains_every_buffered_record() {
    if !privileged() {
        return;
    }
    // The first plugin never flushes on its own (a minute's interval, batches bigger than the run): whatever it
    // reports, it reports while draining.
    let (envoy, _http, ecds, socket, _dir) =
        start(r#"{"report":{"flush_interval_ms":60000,"max_batch":10000,"max_buffer":10000}}"#);
    let agent = Agent::start(&socket, &[]);

    let stop = Arc::new(AtomicBool::new(false));
    let sent = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, sent, addr) = (stop.clone(), sent.clone(), envoy.listener("ingress"));
        thread::spawn(move || {
            let mut c = Client::new(addr);
            let mut n = 0;
            while !stop.load(Ordering::Relaxed) && n < 100_000 {
                assert_eq!(c.get(&format!("/orders/{n}"), &[]).status, 200, "request {n}");
                n += 1;
                sent.store(n, Ordering::Relaxed);
            }
        })
    };
    let wait_for = |n: usize| {
        let deadline = Instant::now() + Duration::from_secs(60);
        while sent.load(Ordering::Relaxed) < n {
            assert!(Instant::now() < deadline, "load stalled");
            thread::sleep(Duration::from_millis(10));
        }
    };
    wait_for(300);
    publish(&ecds, "2", r#"{"report":{"flush_interval_ms":50}}"#);
    // The new plugin is in place once its records start to be sent.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = envoy.prometheus();
        let sent_series = "grayscope_report_records_total{outcome=\"sent\"}";
        if text.contains(sent_series) && value(&text, sent_series) > 0.0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the new plugin never reported:\n{}",
            envoy.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    wait_for(sent.load(Ordering::Relaxed) + 300);
    stop.store(true, Ordering::Relaxed);
    load.join().expect("load thread");
    let requests = sent.load(Ordering::Relaxed);

    let text = settled(&envoy, requests as u64);
    prom::assert_line(
        &text,
        &format!("grayscope_report_records_total{{outcome=\"produced\"}} {requests}"),
    );
    prom::assert_line(
        &text,
        &format!("grayscope_report_records_total{{outcome=\"sent\"}} {requests}"),
    );
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 0");
    prom::assert_line(&text, "grayscope_report_records_buffered{} 0");
    let mut c = Client::new(agent.metrics_addr.parse().expect("metrics address"));
    let metrics = String::from_utf8(c.get("/metrics", &[]).body).expect("utf-8");
    prom::assert_line(
        &metrics,
        &format!("grayscope_agent_call_records_received_total {requests}"),
    );
}

/// A reload that replaces the wasm VM (same `vm_id`, another VM configuration: Envoy makes a new VM and destroys the
/// old one at once, with what it buffered, although its root context asked to drain) leaves no record counted as
/// buffered for ever: a root of the new VM finds the old roots' shares in the shared data of their `vm_id`, once
/// their heartbeat is past its bound, and counts them as dropped. Wasm build only: the native build has no VM, and
/// hands a replaced configuration's records to its successor (the test above).
#[test]
fn a_reload_that_replaces_the_vm_counts_what_the_old_vm_held_as_dropped() {
    if FilterBuild::current() != FilterBuild::Wasm {
        return;
    }
    // No agent: the first VM's records stay buffered (a minute's interval), the second's would be dropped.
    let (envoy, _http, ecds, _socket, _dir) =
        start(r#"{"report":{"flush_interval_ms":60000,"max_batch":10000,"max_buffer":10000}}"#);
    let mut c = Client::new(envoy.listener("ingress"));
    for n in 0..20 {
        assert_eq!(c.get(&format!("/orders/{n}"), &[]).status, 200, "request {n}");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = envoy.prometheus();
        if text.contains("grayscope_report_records_buffered{} 20") {
            break;
        }
        assert!(Instant::now() < deadline, "the records were never buffered:\n{text}");
        thread::sleep(Duration::from_millis(50));
    }
    // The same vm_id with a VM configuration: another VM key, so Envoy builds a new VM and drops the old one.
    let typed = FilterBuild::Wasm.typed_config(r#"{"report":{"flush_interval_ms":50}}"#);
    let replaced = typed.replacen(
        "vm_id: grayscope,",
        "vm_id: grayscope, configuration: {\"@type\": type.googleapis.com/google.protobuf.StringValue, value: \"2\"},",
        1,
    );
    assert_ne!(typed, replaced, "the fixture's vm_config changed shape");
    publish_typed(&ecds, "2", &replaced);

    let deadline = Instant::now() + Duration::from_secs(60);
    let text = loop {
        let text = envoy.prometheus();
        if value(&text, "grayscope_report_records_buffered{}") == 0.0 || Instant::now() > deadline {
            break text;
        }
        thread::sleep(Duration::from_millis(100));
    };
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"produced\"} 20");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"sent\"} 0");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 20");
    prom::assert_line(&text, "grayscope_report_records_buffered{} 0");
    // The premise: the VM was replaced, not drained (a drain would have counted them as dropped at once).
    let log = envoy.log();
    assert!(
        !log.contains("drained: every record sent"),
        "the old root drained; the test no longer covers a VM replaced:\n{log}"
    );
}

/// The thread an Envoy log line was written on: the second bracketed field of Envoy's default log format
/// (`[%Y-%m-%d %T.%e][%t][%l][%n] ...`).
fn thread_of(line: &str) -> &str {
    line.split('[')
        .nth(2)
        .and_then(|f| f.split(']').next())
        .unwrap_or_default()
}

/// A request in flight across the reload keeps the old configuration alive until it ends, so Envoy destroys that
/// configuration on the worker thread serving the request, not on its main thread (the last `shared_ptr` to it is
/// the filter's). Native build only: the wasm build's plugin lives in per-worker VMs. The old configuration still
/// buffers records then; they must neither be lost nor be sent from the worker: report calls are streams of the
/// configuration, which Envoy only expects on its main thread (and a successor found from a worker may be freed
/// by the main thread meanwhile). Every record is still accounted for and reaches the agent.
#[test]
fn a_configuration_destroyed_by_a_request_that_outlived_it_sends_its_records_from_the_main_thread() {
    if !privileged() || FilterBuild::current() != FilterBuild::Native {
        return;
    }
    // The first configuration never flushes on its own: whatever it buffers, it still holds when destroyed.
    let (envoy, http, ecds, socket, _dir) =
        start(r#"{"report":{"flush_interval_ms":60000,"max_batch":10000,"max_buffer":10000}}"#);
    let agent = Agent::start(&socket, &[]);
    let mut c = Client::new(envoy.listener("ingress"));
    for n in 0..20 {
        assert_eq!(c.get(&format!("/orders/{n}"), &[]).status, 200, "request {n}");
    }
    // A request the upstream answers after 3 s, made by the first configuration's filter.
    let slow = {
        let addr = envoy.listener("ingress");
        thread::spawn(move || {
            Client::new(addr)
                .get("/orders/slow", &[("x-respond-delay-ms", b"3000")])
                .status
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while http.count() < 21 {
        assert!(Instant::now() < deadline, "the slow request never reached the upstream");
        thread::sleep(Duration::from_millis(10));
    }
    publish(&ecds, "2", r#"{"report":{"flush_interval_ms":50}}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy.log().matches("grayscope: configured: ").count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the second configuration never came:\n{}",
            envoy.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(slow.join().expect("slow request"), 200);
    for n in 20..30 {
        assert_eq!(c.get(&format!("/orders/{n}"), &[]).status, 200, "request {n}");
    }

    let text = settled(&envoy, 31);
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"produced\"} 31");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"sent\"} 31");
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 0");
    prom::assert_line(&text, "grayscope_report_records_buffered{} 0");
    let mut c = Client::new(agent.metrics_addr.parse().expect("metrics address"));
    let metrics = String::from_utf8(c.get("/metrics", &[]).body).expect("utf-8");
    prom::assert_line(&metrics, "grayscope_agent_call_records_received_total 31");

    // The old configuration's records are sent once the successor settles them; its lines are in the log then.
    let log = envoy.log_with("handed");
    let main = log
        .lines()
        .find(|l| l.contains("grayscope: configured: "))
        .map(thread_of)
        .expect("a configured line");
    let destroyed = log
        .lines()
        .find(|l| l.contains("filter configuration replaced") || l.contains("filter configuration destroyed"))
        .unwrap_or_else(|| panic!("the first configuration was never destroyed:\n{log}"));
    // The premise: Envoy destroys this configuration on the worker that served the slow request.
    assert_ne!(
        thread_of(destroyed),
        main,
        "the configuration was destroyed on the main thread; the test no longer covers a worker-thread destroy:\n{log}"
    );
    // Its records reach the successor's report calls: started on the main thread only.
    let sends: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("handed to its successor") || l.contains("records handed over by"))
        .collect();
    assert!(
        !sends.is_empty(),
        "no line says who sent the handed-over records:\n{log}"
    );
    for line in sends {
        assert_eq!(
            thread_of(line),
            main,
            "a configuration destroyed on a worker started its successor's report calls from that thread:\n{line}"
        );
    }
}

/// A reload keeps every interface's counts, also those of interfaces the new configuration has not served yet:
/// an interface's call counter is one Prometheus series across the reload, never reset to zero nor gone (a canary
/// judged across a reload would see the stable version's calls vanish). The wasm build keeps its VM, and so its
/// metrics, across a configuration change. The native build's metrics live in the Envoy scope of the
/// configuration that created them, which Envoy destroys with it: the successor must take them over.
#[test]
fn a_reload_keeps_the_counts_of_interfaces_the_new_configuration_has_not_served() {
    let (envoy, _http, ecds, _socket, _dir) = start(r#"{"report":{"enabled":false}}"#);
    let mut c = Client::new(envoy.listener("ingress"));
    for n in 0..5 {
        assert_eq!(c.get(&format!("/orders/{n}"), &[]).status, 200, "request {n}");
    }
    drop(c);
    let series = "grayscope_interface_calls_total{direction=\"inbound\",rpc_system=\"http\",service=\"upstream_http\",\
                  method=\"GET /orders/{id}\",gray_version=\"none\",status=\"2xx\"} 5";
    prom::assert_line(&envoy.prometheus(), series);

    let configured = envoy.log_with("configured: ").matches("configured: ").count();
    publish(&ecds, "2", r#"{"report":{"enabled":false},"max_interfaces":50}"#);
    let deadline = Instant::now() + Duration::from_secs(10);
    while envoy.log().matches("configured: ").count() <= configured {
        assert!(
            Instant::now() < deadline,
            "the second configuration never came:\n{}",
            envoy.log()
        );
        thread::sleep(Duration::from_millis(50));
    }
    let mut c = Client::new(envoy.listener("ingress"));
    assert_eq!(c.get("/customers/1", &[]).status, 200);
    // Whenever Envoy lets the first configuration go (at once, or once its workers moved on), the series stays.
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        // The counters only: the native build cannot carry a duration histogram over (a sample is its only touch).
        prom::assert_line(&envoy.admin_get("/stats/prometheus"), series);
        thread::sleep(Duration::from_millis(100));
    }
}
