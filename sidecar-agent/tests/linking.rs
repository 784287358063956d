//! Call records joined to real connections over the real Unix-socket gRPC service: a child process with a
//! known pid makes a real TCP connection; a record carrying that connection's 4-tuple is delivered by `Watch`
//! linked to the child, `ListMethods` counts it, a record whose connection comes later still links, one that
//! never matches is reported unlinked with the reason and counted, and a declaration joins the method table
//! under the declaring process. Inbound records name the process that accepted the connection.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{net::SocketAddr, time::Duration};

use common::{finish, first_line, methods, next, privileged, python, report, start};
use proto::v1::{LinkState, MethodMetadata, ReportMethodMetadataRequest, WatchRequest};
use sidecar_agent::{Config, NetnsFilter};

fn config() -> Config {
    Config {
        // Long enough for a child to start and connect; only the unmatched record waits it out.
        link_wait: Duration::from_secs(8),
        expose_command_line: true,
        ..common::config(NetnsFilter::Own)
    }
}

/// A python child that connects from `local_port` (0: any) to `server` and prints its local port.
fn client_child(server: SocketAddr, local_port: u16) -> std::process::Child {
    python(&format!(
        "import socket, sys\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {local_port}))\n\
         s.connect(('127.0.0.1', {}))\n\
         print(s.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
        server.port()
    ))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_name_the_calling_process_late_ones_too_and_unmatched_ones_say_why() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let mut client = agent.client().await;
    let mut watch = agent.watch_greeter().await;
    // Envoy's outbound listener, as far as the application can tell.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();

    // 1. The connection exists before the record.
    let mut child = client_child(envoy, 0);
    let pid = child.id();
    let local: SocketAddr = format!("127.0.0.1:{}", first_line(&mut child)).parse().unwrap();
    assert_eq!(
        report(&mut client, vec![common::outbound(local, envoy, "SayHello")]).await,
        1
    );
    let msg = next(&mut watch).await;
    assert_eq!(msg.lost, 0);
    let call = msg.call.unwrap();
    assert_eq!(call.link, LinkState::Linked as i32, "{call:?}");
    let p = call.process.as_ref().unwrap();
    assert_eq!(p.pid, pid);
    assert!(p.command.starts_with("python3"), "{p:?}");
    assert!(
        p.executable_path.rsplit('/').next().unwrap().starts_with("python3"),
        "{p:?}"
    );
    assert!(p.command_line.contains("sys.stdin.read()"), "{p:?}");
    assert!(p.start_time_unix_nano > 0);
    let conn = call.connection.as_ref().unwrap();
    assert_eq!(
        (conn.local.clone().unwrap().port, conn.remote.clone().unwrap().port),
        (u32::from(local.port()), u32::from(envoy.port()))
    );
    assert_eq!(conn.netns, u64::from(agent.agent.netns()));
    assert_eq!(call.call.as_ref().unwrap().request_id, "req-1");

    // 2. The record arrives before its connection; 3. a record no connection will ever match.
    let port = free_port();
    let late = format!("127.0.0.1:{port}").parse().unwrap();
    let nowhere: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let records = vec![
        common::outbound(late, envoy, "Late"),
        common::outbound(nowhere, envoy, "Nowhere"),
    ];
    assert_eq!(report(&mut client, records).await, 2);
    let mut late_child = client_child(envoy, port);
    let late_pid = late_child.id();
    assert_eq!(first_line(&mut late_child), port.to_string());
    let msg = next(&mut watch).await;
    let call = msg.call.unwrap();
    assert_eq!(call.call.as_ref().unwrap().rpc_method, "test.Greeter/Late", "{call:?}");
    assert_eq!(call.link, LinkState::Linked as i32, "{call:?}");
    assert_eq!(call.process.unwrap().pid, late_pid);
    let msg = next(&mut watch).await;
    let call = msg.call.unwrap();
    assert_eq!(call.call.as_ref().unwrap().rpc_method, "test.Greeter/Nowhere");
    assert_eq!(call.link, LinkState::NoConnection as i32);
    assert!(call.process.is_none());
    assert_eq!(
        call.unlinked_reason,
        format!("no connection {nowhere} -> {envoy} in the table after waiting 8s")
    );

    // 4. A record without the addresses.
    let mut bare = common::outbound(local, envoy, "Bare");
    bare.client = None;
    assert_eq!(report(&mut client, vec![bare]).await, 1);
    let call = next(&mut watch).await.call.unwrap();
    assert_eq!(call.link, LinkState::NoAddress as i32);
    assert_eq!(call.unlinked_reason, "no usable client address");

    // The method table counts each call on its row.
    let rows = methods(&mut client).await;
    let row = |method: &str, pid: u32| {
        rows.iter()
            .find(|r| r.method == method && r.process.as_ref().map_or(0, |p| p.pid) == pid)
            .unwrap_or_else(|| panic!("no row {method}/{pid} in {rows:#?}"))
    };
    let hello = row("SayHello", pid);
    assert_eq!((hello.calls, hello.errors), (1, 0));
    assert_eq!(hello.service, "test.Greeter");
    assert_eq!(hello.gray_version, "v2");
    assert_eq!(hello.rpc_system_name, "grpc");
    assert_eq!(hello.latency.unwrap().max_ms, 1.5);
    assert_eq!(hello.peers, ["127.0.0.1:2"]);
    assert_eq!(row("Late", late_pid).calls, 1);
    assert_eq!(row("Nowhere", 0).calls, 1);

    // What a process declares joins its rows, keyed by the declaring peer's pid (SO_PEERCRED) and start time: here,
    // ours.
    let declared = client
        .report_method_metadata(ReportMethodMetadataRequest {
            methods: vec![MethodMetadata {
                service: "test.Greeter".into(),
                method: "Declared".into(),
                input_type: "test.In".into(),
                output_type: "test.Out".into(),
                version: "v3".into(),
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(declared.accepted, 1);
    let rows = methods(&mut client).await;
    let row = rows
        .iter()
        .find(|r| r.method == "Declared")
        .unwrap_or_else(|| panic!("{rows:#?}"));
    assert_eq!(row.process.as_ref().unwrap().pid, std::process::id());
    assert_eq!((row.calls, row.gray_version.as_str()), (0, "v3"));
    assert_eq!(row.declared.as_ref().unwrap().input_type, "test.In");

    let text = common::http_get(agent.metrics_addr, "/metrics").await;
    for line in [
        "grayscope_agent_call_records_received_total 4",
        "grayscope_agent_call_records_total{outcome=\"linked\"} 2",
        "grayscope_agent_call_records_total{outcome=\"unlinked_no_connection\"} 1",
        "grayscope_agent_call_records_total{outcome=\"unlinked_no_address\"} 1",
        "grayscope_agent_link_pending 0",
        "grayscope_agent_watchers 1",
    ] {
        common::assert_metric(&text, line);
    }
    finish(child);
    finish(late_child);
    drop(watch);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_calls_name_the_serving_process() {
    if !privileged() {
        return;
    }
    let agent = start(config()).await;
    let mut client = agent.client().await;
    let mut server = python(
        "import socket, sys\n\
         s = socket.socket()\n\
         s.bind(('127.0.0.1', 0))\n\
         s.listen()\n\
         print(s.getsockname()[1], flush=True)\n\
         c, _ = s.accept()\n\
         sys.stdin.read()\n",
    );
    let server_pid = server.id();
    let app: SocketAddr = format!("127.0.0.1:{}", first_line(&mut server)).parse().unwrap();
    let mut watch = agent
        .watch(WatchRequest {
            pid: server_pid,
            ..WatchRequest::default()
        })
        .await;
    // The test process plays Envoy: its upstream connection to the application.
    let upstream = tokio::net::TcpStream::connect(app).await.unwrap();
    let envoy_end = upstream.local_addr().unwrap();
    assert_eq!(
        report(&mut client, vec![common::inbound(envoy_end, app, "Serve")]).await,
        1
    );
    let call = next(&mut watch).await.call.unwrap();
    assert_eq!(call.link, LinkState::Linked as i32, "{call:?}");
    let p = call.process.unwrap();
    assert_eq!(p.pid, server_pid, "the accepting process, not the connecting one");
    assert!(p.command.starts_with("python3"), "{p:?}");
    let conn = call.connection.unwrap();
    assert_eq!(conn.local.unwrap().port, u32::from(app.port()));
    assert_eq!(conn.remote.unwrap().port, u32::from(envoy_end.port()));
    let rows = methods(&mut client).await;
    let row = rows.iter().find(|r| r.method == "Serve").unwrap();
    assert_eq!(row.direction, proto::v1::Direction::Inbound as i32);
    assert_eq!(row.process.as_ref().unwrap().pid, server_pid);
    assert_eq!(row.peers, ["10.9.9.9"]);
    finish(server);
    drop(upstream);
    agent.agent.stop().await;
}
