//! The method table under churn and floods, through the real agent: short-lived client processes never fill it
//! for good (rows of exited processes go after the grace period, the idlest row makes room), one client
//! sending endless method names is folded into `other`, and a process that gets the pid of one that declared its
//! methods and exited does not inherit the declarations.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{io::Write as _, net::SocketAddr, process::Child, time::Duration};

use common::{finish, first_line, methods, privileged, python, report, start};
use proto::v1::MethodStats;
use sidecar_agent::{Config, NetnsFilter};

fn config() -> Config {
    Config {
        methods_max_rows: 4,
        methods_max_interfaces: 4,
        methods_exited_grace: Duration::from_millis(500),
        // Generous: only a broken agent waits it out. The ring buffer too: the other tests of a busy machine
        // share the namespace.
        link_wait: Duration::from_secs(20),
        ring_buffer_bytes: 4 << 20,
        ..common::config(NetnsFilter::Own)
    }
}

/// A python child connected to `server`; prints its local port and lives until its stdin closes.
fn client_child(server: SocketAddr) -> std::process::Child {
    python(&format!(
        "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         print(s.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
        server.port()
    ))
}

fn pid_of(row: &MethodStats) -> u32 {
    row.process.as_ref().map_or(0, |p| p.pid)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_clients_never_fill_the_method_table() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let mut client = agent.client().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();
    // Twice as many short-lived processes as the table has rows, each calling once, then exiting.
    let mut last = None;
    for i in 0..8 {
        let mut child = client_child(envoy);
        let pid = child.id();
        let local: SocketAddr = format!("127.0.0.1:{}", first_line(&mut child)).parse().unwrap();
        assert_eq!(
            report(&mut client, vec![common::outbound(local, envoy, "SayHello")]).await,
            1
        );
        // Counted: the row of this process is there.
        let want = pid;
        let mut found = false;
        for _ in 0..1500 {
            if methods(&mut client).await.iter().any(|r| pid_of(r) == want) {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            found,
            "call {i} of process {pid} was not counted: {:#?}",
            methods(&mut client).await
        );
        if i < 7 {
            finish(child);
        } else {
            last = Some(child);
        }
    }
    let last = last.unwrap();
    let last_pid = last.id();
    // The exited processes' rows go after the grace period; the live one stays.
    let mut remaining = Vec::new();
    for _ in 0..1500 {
        remaining = methods(&mut client).await.iter().map(pid_of).collect();
        if remaining == [last_pid] {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, [last_pid]);
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    common::assert_metric(&metrics, "grayscope_agent_methods_rows 1");
    // 8 rows in a 4-row table: 4 made room for newer ones (the grace period is shorter than a call here, so some
    // may have gone as exited first); every row of an exited process went one way or the other.
    let evicted = |reason: &str| {
        let prefix = format!("grayscope_agent_methods_evictions_total{{reason=\"{reason}\"}} ");
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0, |v| v.parse::<u64>().unwrap())
    };
    assert_eq!(evicted("idle") + evicted("exited"), 7, "{metrics}");
    finish(last);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_sending_endless_method_names_is_folded_into_other() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        methods_max_rows: 8,
        ..config()
    })
    .await;
    let mut client = agent.client().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();
    let mut child = client_child(envoy);
    let local: SocketAddr = format!("127.0.0.1:{}", first_line(&mut child)).parse().unwrap();
    let calls = (0..100)
        .map(|i| common::outbound(local, envoy, &format!("Flood{i}")))
        .collect();
    assert_eq!(report(&mut client, calls).await, 100);
    let mut got = Vec::new();
    for _ in 0..1500 {
        got = methods(&mut client).await;
        if got.iter().map(|r| r.calls).sum::<u64>() == 100 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let names: Vec<_> = got
        .iter()
        .map(|r| (r.service.as_str(), r.method.as_str(), r.calls))
        .collect();
    assert_eq!(
        names,
        [
            ("other", "other", 96),
            ("test.Greeter", "Flood0", 1),
            ("test.Greeter", "Flood1", 1),
            ("test.Greeter", "Flood2", 1),
            ("test.Greeter", "Flood3", 1),
        ],
    );
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    common::assert_metric(&metrics, "grayscope_agent_methods_overflow_total 96");
    finish(child);
    agent.agent.stop().await;
}

/// Python helpers for a child that declares methods of `test.Greeter` on the agent's socket at `SOCKET` (defined
/// before them) with grpcio, the messages encoded by hand as in `tests/peers/collector_client.py`.
const DECLARE_PY: &str = r#"
import socket, sys
import grpc

def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if not n:
            out.append(b)
            return bytes(out)
        out.append(b | 0x80)

def field(number, value):
    if isinstance(value, str):
        value = value.encode()
    return varint(number << 3 | 2) + varint(len(value)) + value

def declare(method, input_type):
    m = field(1, "test.Greeter") + field(2, method) + field(3, input_type)
    with grpc.insecure_channel("unix:" + SOCKET) as channel:
        rpc = channel.unary_unary("/grayscope.v1.Collector/ReportMethodMetadata")
        return rpc(field(1, m), timeout=10).hex()
"#;

/// Spawns `spawn()` as process `pid`, which has exited: the kernel gives a new process the pid after the one in
/// `/proc/sys/kernel/ns_last_pid` when it is free, so that is set (as root) just before each try. A process of the
/// machine that forks in between takes the pid first: the child is ended, and the next try waits for the pid to be
/// free again.
async fn spawn_as_pid(pid: u32, spawn: impl Fn() -> Child) -> Child {
    common::patiently(&format!("a new process to get pid {pid}"), async {
        loop {
            if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
                std::fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string()).unwrap();
                let child = spawn();
                if child.id() == pid {
                    return child;
                }
                finish(child);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_reuses_a_pid_does_not_inherit_the_declarations_made_under_it() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        // The old process's declarations must still be there when the new one calls: that is the window where a
        // pid-keyed declaration lands on the newcomer's rows (and on main it never closes, the pid being alive).
        methods_exited_grace: Duration::from_secs(600),
        ..config()
    })
    .await;
    let mut client = agent.client().await;
    let socket = agent.socket.display().to_string();
    // The old process declares SayHello, and exits.
    let mut old = python(&format!(
        "SOCKET = {socket:?}\n{DECLARE_PY}\nprint(declare('SayHello', 'test.OldIn'), flush=True)\n"
    ));
    let pid = old.id();
    assert_eq!(first_line(&mut old), "0801", "accepted: 1");
    finish(old);
    // A new process with the same pid connects to "Envoy" and declares SayBye; it waits for `go` so that the
    // tries that miss the pid do nothing.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();
    let new_script = format!(
        "SOCKET = {socket:?}\n{DECLARE_PY}\n\
         if sys.stdin.readline() != 'go\\n':\n    sys.exit()\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         declare('SayBye', 'test.NewIn')\n\
         print(s.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
        envoy.port()
    );
    let mut new = spawn_as_pid(pid, || python(&new_script)).await;
    new.stdin.as_mut().unwrap().write_all(b"go\n").unwrap();
    new.stdin.as_mut().unwrap().flush().unwrap();
    let local: SocketAddr = format!("127.0.0.1:{}", first_line(&mut new)).parse().unwrap();
    common::wait_owned(&agent, local, envoy).await;
    // Its calls of both methods, linked to it.
    let calls = vec![
        common::outbound(local, envoy, "SayHello"),
        common::outbound(local, envoy, "SayBye"),
    ];
    assert_eq!(report(&mut client, calls).await, 2);
    let rows = common::patiently("the new process's rows", async {
        loop {
            let rows = methods(&mut client).await;
            let called = |m: &str| rows.iter().any(|r| r.method == m && pid_of(r) == pid && r.calls == 1);
            if called("SayHello") && called("SayBye") {
                return rows;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let row = |m: &str| {
        rows.iter()
            .find(|r| r.method == m && pid_of(r) == pid && r.calls == 1)
            .unwrap()
    };
    let new_start = row("SayBye").process.as_ref().unwrap().start_time_unix_nano;
    // What the new process declared joins its row.
    assert_eq!(
        row("SayBye").declared.as_ref().map(|d| d.input_type.as_str()),
        Some("test.NewIn"),
        "{rows:#?}"
    );
    // What the old one declared does not.
    assert_eq!(
        row("SayHello").declared,
        None,
        "pid {pid}'s new process shows the declaration of the process that had the pid before it: {rows:#?}"
    );
    // The old declaration stands alone, on the old process (same pid, started before the new one), until its grace
    // period passes.
    assert!(
        rows.iter().any(|r| r.method == "SayHello"
            && r.calls == 0
            && r.declared.as_ref().is_some_and(|d| d.input_type == "test.OldIn")
            && r.process
                .as_ref()
                .is_some_and(|p| p.pid == pid && p.start_time_unix_nano != 0 && p.start_time_unix_nano < new_start)),
        "{rows:#?}"
    );
    finish(new);
    agent.agent.stop().await;
}

/// A declaration the agent could never join to a call must be refused with the reason, not accepted and then
/// ignored: the declaring process is not visible to the agent (`SO_PEERCRED` gives pid 0 for a peer outside the
/// agent's pid namespace: a pod without `shareProcessNamespace`), or it is gone by the time its start time is read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declaration_from_a_process_the_agent_cannot_see_is_refused_with_the_reason() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let core = agent.agent.core();
    let greeter = || {
        vec![proto::v1::MethodMetadata {
            service: "test.Greeter".into(),
            method: "SayHello".into(),
            ..Default::default()
        }]
    };
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let gone_pid = gone.id();
    gone.wait().unwrap();
    for pid in [0, gone_pid] {
        let refused = core.declare(pid, greeter()).unwrap_err();
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "pid {pid}: {refused:?}"
        );
        assert!(
            refused.message().contains("process"),
            "pid {pid}: {}",
            refused.message()
        );
    }
    assert!(
        methods(&mut agent.client().await).await.is_empty(),
        "nothing is declared"
    );
    // The declaring process itself is seen, and its declaration kept.
    assert_eq!(core.declare(std::process::id(), greeter()).unwrap(), 1);
    assert_eq!(methods(&mut agent.client().await).await.len(), 1);
    agent.agent.stop().await;
}
