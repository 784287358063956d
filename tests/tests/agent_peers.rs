//! The real agent (`dist/grayscope-agent`) and the peers it meets on its Unix socket: gRPC clients of every kind,
//! and peers that misbehave.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{
    agent::{privileged, runtime, Agent},
    grpc, paths, prom,
    stack::Stack,
};
use proto::v1::ListMethodsRequest;

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// grpc-core clients (Python `grpcio` here; C++, Ruby and PHP share its core) send the percent-encoded socket path
/// as `:authority`. With default channel options, every RPC is served.
#[test]
fn a_grpcio_client_with_default_options_is_served_on_every_rpc() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&dir.path().join("agent.sock"), &[]);
    let out = Command::new(paths::python())
        .arg(paths::tests_file("peers/collector_client.py"))
        .arg(&agent.socket)
        .arg("py.Peers")
        .output()
        .expect("run the grpcio client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let results: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON line"))
        .collect();
    let rpcs: Vec<(&str, &str)> = results
        .iter()
        .map(|r| (r["rpc"].as_str().unwrap_or(""), r["code"].as_str().unwrap_or("")))
        .collect();
    assert_eq!(
        rpcs,
        [
            ("ReportMethodMetadata", "OK"),
            ("Report", "OK"),
            ("Watch", "OK"),
            ("ListMethods", "OK")
        ],
        "{stdout}\n{}",
        agent.log()
    );
    let detail = |i: usize| results[i]["detail"].as_str().unwrap_or("").to_owned();
    // `accepted: 1` for the declaration and for the record.
    assert_eq!(detail(0), "0801");
    assert_eq!(detail(1), "0801");
    // The watcher got the reported call, and the method table shows it and the declaration.
    assert!(detail(2).contains(&hex("py.Peers/Do")), "{}", detail(2));
    assert!(detail(3).contains(&hex("py.Peers")), "{}", detail(3));
}

/// A method table over 4 MiB, the largest message a gRPC client accepts by default (grpc-core, grpc-go,
/// grpc-java), reaches a grpcio client with default options whole: `ListMethods` pages it, and the client follows
/// `next_page_token`. The agent's default bounds allow such a table: here 1,280 rows of 4 KiB names, under the
/// default 4,096 rows and 256 interfaces.
#[test]
fn a_method_table_over_a_grpc_message_reaches_a_default_grpcio_client_in_pages() {
    if !privileged() {
        return;
    }
    const INTERFACES: usize = 256;
    const VERSIONS: usize = 5;
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&dir.path().join("agent.sock"), &[]);
    let call = |i: usize, v: usize| proto::v1::CallRecord {
        direction: proto::v1::Direction::Outbound as i32,
        rpc_system_name: "grpc".into(),
        rpc_method: format!("pkg{i:04}.{}/M{i:04}{}", "S".repeat(2500), "m".repeat(1500)),
        service: format!("pkg{i:04}.{}", "S".repeat(2500)),
        gray_version: format!("v{v}"),
        status: "OK".into(),
        duration_ns: 1_000_000,
        // No server address: unlinked at once ("no_address"), so counted without waiting for a connection.
        ..proto::v1::CallRecord::default()
    };
    runtime().block_on(async {
        let mut client = agent.client().await;
        for v in 0..VERSIONS {
            for start in (0..INTERFACES).step_by(64) {
                let calls = (start..start + 64).map(|i| call(i, v)).collect();
                let request = proto::v1::ReportRequest {
                    reporter: "test".into(),
                    calls,
                };
                let accepted = client.report(request).await.expect("Report").into_inner().accepted;
                assert_eq!(accepted, 64);
            }
        }
    });
    let mut scrape = integration_tests::client::Client::new(agent.metrics_addr.parse().expect("metrics address"));
    let want_rows = format!("grayscope_agent_methods_rows {}", INTERFACES * VERSIONS);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !String::from_utf8_lossy(&scrape.get("/metrics", &[]).body)
        .lines()
        .any(|l| l == want_rows)
    {
        assert!(
            Instant::now() < deadline,
            "the calls were not all counted:\n{}",
            agent.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = Command::new(paths::python())
        .arg(paths::tests_file("peers/collector_client.py"))
        .args(["list"])
        .arg(&agent.socket)
        .output()
        .expect("run the grpcio client");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let answer: serde_json::Value = serde_json::from_str(stdout.trim()).expect("a JSON line");
    assert_eq!(answer["code"], "OK", "{}", answer["detail"]);
    let mut got: Vec<(String, String)> = answer["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("").to_owned(),
                r[1].as_str().unwrap_or("").to_owned(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = (0..INTERFACES)
        .flat_map(|i| (0..VERSIONS).map(move |v| (call(i, v).service, format!("v{v}"))))
        .collect();
    want.sort();
    assert_eq!(got.len(), want.len(), "rows listed");
    assert!(got == want, "the listed rows are not the table's, each once");
    assert!(answer["pages"].as_u64().unwrap_or(0) > 1, "one page of over 4 MiB");
}

/// One allowed process opens as many connections to the agent as it serves (64 by default) and never speaks.
/// Envoy's reports must still get through: the process keeps a few of them (`max_connections_per_peer`), and
/// those go after the handshake timeout.
#[test]
fn a_peer_holding_idle_connections_cannot_starve_the_reporter() {
    if !privileged() {
        return;
    }
    let s = Stack::start(r#"{"report":{"flush_interval_ms":50}}"#);
    let agent = Agent::start(&s.agent_socket, &[]);
    let mut hog = Command::new("python3")
        .args([
            "-c",
            "import socket, sys\n\
             socks = []\n\
             for _ in range(64):\n\
             \x20   s = socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]); socks.append(s)\n\
             print('ready', flush=True)\n\
             sys.stdin.read()\n",
        ])
        .arg(&agent.socket)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(hog.stdout.as_mut().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");

    let outcomes = grpc::call(s.envoy.listener("egress"), "/shop.v1.Orders/Starve", &[], 5);
    assert!(outcomes.iter().all(|o| o.code == "OK"), "{outcomes:?}");
    // Envoy's reports arrive, and the agent answers this test's own client too.
    let rt = runtime();
    let deadline = Instant::now() + Duration::from_secs(30);
    let calls = loop {
        let listed = rt.block_on(async {
            let mut c = tokio::time::timeout(Duration::from_secs(2), agent.client())
                .await
                .ok()?;
            let rows = tokio::time::timeout(Duration::from_secs(2), c.list_methods(ListMethodsRequest::default()))
                .await
                .ok()?
                .ok()?;
            Some(rows.into_inner().methods)
        });
        let calls: u64 = listed
            .unwrap_or_default()
            .iter()
            .filter(|m| m.method == "Starve")
            .map(|m| m.calls)
            .sum();
        if calls == 5 || Instant::now() > deadline {
            break calls;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = s.envoy.prometheus();
    assert_eq!(
        calls,
        5,
        "the reports did not reach the agent:\n{text}\n{}",
        agent.log()
    );
    prom::assert_line(&text, "grayscope_report_records_total{outcome=\"dropped\"} 0");
    drop(hog.stdin.take());
    let _ = hog.wait();
}

/// A network namespace for one test, with loopback up; deleted on drop.
struct Netns(String);

impl Netns {
    fn new(tag: &str) -> Self {
        let name = format!("gs-{tag}-{}", std::process::id());
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let ok = Command::new("ip").args(&args).status().expect("ip").success();
            assert!(ok, "ip {args:?}");
        }
        Self(name)
    }

    /// `ip netns exec NAME program args...`
    fn exec(&self, program: &std::path::Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "delete", &self.0]).status();
    }
}

/// With `--netns all`, the same loopback 4-tuple exists in every pod of a node. A record is joined in its
/// reporter's namespace (the reporting process's, from the socket's peer credentials), not to the newest match.
#[test]
fn with_netns_all_a_call_is_linked_in_its_reporters_namespace() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&dir.path().join("agent.sock"), &["--netns", "all"]);
    // Under /tmp and traversable: the reporters run in other namespaces, as root, and reach it by path.
    let (a, b) = (Netns::new("a"), Netns::new("b"));
    // The same 4-tuple in both: 127.0.0.1:41234 -> 127.0.0.1:15001; B's is the newer.
    let mut holders = Vec::new();
    for ns in [&a, &b] {
        let mut child = ns
            .exec(std::path::Path::new("python3"))
            .args([
                "-c",
                "import socket, sys\n\
                 l = socket.socket(); l.bind(('127.0.0.1', 15001)); l.listen()\n\
                 c = socket.socket(); c.bind(('127.0.0.1', 41234)); c.connect(('127.0.0.1', 15001))\n\
                 s, _ = l.accept()\n\
                 print('ready', flush=True)\n\
                 sys.stdin.read()\n",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 in a namespace");
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().expect("stdout"))
            .read_line(&mut line)
            .expect("read");
        assert_eq!(line.trim(), "ready");
        holders.push(child);
    }
    let (pid_a, pid_b) = (holders[0].id(), holders[1].id());
    let rt = runtime();
    let mut watch = rt.block_on(async {
        let mut c = agent.client().await;
        let w = c
            .watch(proto::v1::WatchRequest::default())
            .await
            .expect("watch")
            .into_inner();
        (c, w)
    });
    for (ns, method) in [(&a, "FromA"), (&b, "FromB")] {
        let out = ns
            .exec(&paths::python())
            .arg(paths::tests_file("peers/collector_client.py"))
            .arg("report")
            .arg(&agent.socket)
            .args(["127.0.0.1:41234", "127.0.0.1:15001", method])
            .output()
            .expect("the reporter");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "0801",
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut seen = Vec::new();
    rt.block_on(async {
        while seen.len() < 2 {
            let msg = tokio::time::timeout(Duration::from_secs(30), watch.1.message())
                .await
                .expect("a watch message in time")
                .expect("watch")
                .expect("the watch ended");
            let call = msg.call.expect("call");
            let method = call.call.as_ref().map(|r| r.rpc_method.clone()).unwrap_or_default();
            seen.push((method, call.process.map_or(0, |p| p.pid)));
        }
    });
    seen.sort();
    assert_eq!(
        seen,
        [
            ("test.Greeter/FromA".to_owned(), pid_a),
            ("test.Greeter/FromB".to_owned(), pid_b)
        ]
    );
    for mut h in holders {
        drop(h.stdin.take());
        let _ = h.wait();
    }
}

/// The content-type of the agent's `/metrics` and its families as Prometheus's reference parser reads them:
/// (name, type, sample names).
fn scrape_families(agent: &Agent) -> (String, Vec<(String, String, Vec<String>)>) {
    let out = Command::new(paths::python())
        .arg(paths::tests_file("peers/scrape_types.py"))
        .arg(format!("http://{}/metrics", agent.metrics_addr))
        .output()
        .expect("run the scraper");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    let mut lines = stdout.lines();
    let content_type = lines.next().unwrap_or_default().to_owned();
    let families = lines.map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    (content_type, families)
}

/// A scraper reads the agent's `/metrics` in the format the response declares. The counters of the README's table
/// must reach it as counters: the body is OpenMetrics (`# TYPE x counter`, samples `x_total`), and under the classic
/// text format's content-type every counter's samples fall outside its family and become untyped.
#[test]
fn the_agents_metrics_reach_a_scraper_with_their_types() {
    if !privileged() {
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&dir.path().join("agent.sock"), &[]);
    let (content_type, families) = scrape_families(&agent);
    let untyped: Vec<_> = families
        .iter()
        .filter(|(_, t, _)| t != "counter" && t != "gauge")
        .collect();
    assert!(
        untyped.is_empty(),
        "families without their type ({content_type}): {untyped:?}"
    );
    for counter in [
        "grayscope_agent_call_records_received",
        "grayscope_agent_events_produced",
        "grayscope_agent_events_delivered",
        "grayscope_agent_watch_lost",
        "grayscope_agent_grpc_permission_denied",
    ] {
        let family = families.iter().find(|(n, _, _)| n == counter);
        assert!(
            family.is_some_and(|(_, t, s)| t == "counter" && s == &[format!("{counter}_total")]),
            "{counter}: {family:?} ({content_type})"
        );
    }
    for gauge in [
        "grayscope_agent_link_pending",
        "grayscope_agent_watchers",
        "grayscope_agent_methods_rows",
    ] {
        let family = families.iter().find(|(n, _, _)| n == gauge);
        assert!(
            family.is_some_and(|(_, t, s)| t == "gauge" && s == &[gauge.to_owned()]),
            "{gauge}: {family:?} ({content_type})"
        );
    }
}

/// The README's table of the agent's metrics is what a scrape of the real agent has: every family once, with its
/// type, and no family the table leaves out. Families that exist only with a setting (the programs' run statistics)
/// are scraped from an agent with that setting on; a labelled family is exposed from its first series on, so one
/// the idle agent has not touched yet may be missing from the scrape (never with another type).
#[test]
fn the_readme_lists_each_metric_family_of_the_agent_once_with_its_type() {
    if !privileged() {
        return;
    }
    let readme = std::fs::read_to_string(paths::root().join("sidecar-agent/README.md")).expect("README");
    // Rows such as | `grayscope_agent_x_total{reason}` | counter | ... |: the family is the name without its
    // labels and, for a counter, without `_total` (OpenMetrics names the family so).
    let mut listed: Vec<(String, String, bool)> = Vec::new();
    let mut twice = Vec::new();
    for row in readme.lines().filter(|l| l.starts_with("| `grayscope_agent_")) {
        // A `|` inside a cell is escaped: `{trigger="wakeup"\|"timer"}`.
        let row = row.replace("\\|", "/");
        let mut cells = row.split('|').map(str::trim).skip(1);
        let (Some(name), Some(kind)) = (cells.next(), cells.next()) else {
            panic!("README row without a type: {row}");
        };
        let name = name.trim_matches('`');
        let (name, labelled) = name.split_once('{').map_or((name, false), |(n, _)| (n, true));
        let family = if kind == "counter" {
            name.strip_suffix("_total").unwrap_or(name)
        } else {
            name
        };
        if listed.iter().any(|(f, _, _)| f == family) {
            twice.push(family.to_owned());
        }
        listed.push((family.to_owned(), kind.to_owned(), labelled));
    }
    assert!(listed.len() >= 20, "the README's metrics table: {listed:?}");
    let dir = tempfile::tempdir().expect("tempdir");
    let agent = Agent::start(&dir.path().join("agent.sock"), &["--program-stats", "true"]);
    let (content_type, families) = scrape_families(&agent);
    let missing: Vec<_> = families
        .iter()
        .filter(|(n, t, _)| !listed.iter().any(|(f, k, _)| (f, k) == (n, t)))
        .map(|(n, t, _)| (n, t))
        .collect();
    let stale: Vec<_> = listed
        .iter()
        .filter(|(f, k, labelled)| match families.iter().find(|(n, _, _)| n == f) {
            Some((_, t, _)) => t != k,
            None => !labelled,
        })
        .collect();
    assert!(
        twice.is_empty() && missing.is_empty() && stale.is_empty(),
        "sidecar-agent/README.md's metrics table against a scrape ({content_type}):\n  listed twice: {twice:?}\n  \
         scraped, not listed (or with another type): {missing:?}\n  listed, not scraped: {stale:?}"
    );
}
