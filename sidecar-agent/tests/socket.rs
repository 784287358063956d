//! The Unix-socket gRPC server under hostile or careless peers: a uid that is not allowed is refused on every call, and
//! its connections cannot crowd out allowed peers (an allowed non-root uid is served); connections beyond
//! `max_connections` wait their turn; an oversized and a malformed message each get an error status (the oversized one
//! counted), and so is a message of more records or declarations than any reporter sends (decoded, a few MiB of empty
//! records took a gigabyte), an invalid record is refused on its own (counted by reason) and the rest of its batch
//! accepted; a watch filter longer than any record's field is refused; a watcher that never reads slows neither the
//! other watchers nor ingestion, and when it reads it is told how many calls it lost. After each, the agent keeps
//! serving.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    os::unix::fs::PermissionsExt,
    process::{Command, Output},
};

use bytes::{Buf, BufMut};
use common::{next, privileged, report, start};
use proto::v1::{CallRecord, Direction, ListMethodsRequest, ReportRequest, SocketAddress, WatchRequest};
use sidecar_agent::{control::REFUSED_CONNECTIONS, AllowedUids, Config, NetnsFilter};
use tonic::{
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    Code, Status,
};

/// Runs the built binary's `methods` against `socket` as `uid`, from a copy under /tmp that any user can run.
fn methods_as(uid: u32, socket: &std::path::Path) -> Output {
    let dir = tempfile::Builder::new().tempdir_in("/tmp").unwrap();
    let bin = dir.path().join("grayscope-agent");
    std::fs::copy(env!("CARGO_BIN_EXE_grayscope-agent"), &bin).unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    Command::new("setpriv")
        .args([
            format!("--reuid={uid}"),
            format!("--regid={uid}"),
            "--clear-groups".into(),
            "--".into(),
        ])
        .arg(&bin)
        .arg("methods")
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_whose_uid_is_not_allowed_are_refused_on_every_call() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        socket_mode: 0o666,
        allowed_uids: AllowedUids::Only {
            own: false,
            uids: vec![12345],
        },
        // One slot for allowed peers: the refused connections below must not take it.
        max_connections: 1,
        ..common::config(NetnsFilter::Own)
    })
    .await;
    let mode = std::fs::metadata(&agent.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o666);
    // We are root, and root is not in the list.
    let mut client = agent.client().await;
    let denied = |s: Status| {
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        assert!(s.message().contains("uid 0 may not use the grayscope agent"), "{s:?}");
    };
    denied(client.report(ReportRequest::default()).await.unwrap_err());
    denied(client.watch(WatchRequest::default()).await.unwrap_err());
    denied(client.list_methods(ListMethodsRequest::default()).await.unwrap_err());

    let out = methods_as(65534, &agent.socket);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("PermissionDenied") && err.contains("uid 65534"), "{err}");
    // The allowed uid is served, by the same agent.
    let out = methods_as(12345, &agent.socket);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.starts_with("SYSTEM  SERVICE"), "{text}");

    // Refused peers have a small pool of their own: `client` holds one slot, so of these extra connections the
    // last one is closed instead of being told.
    let open = |pool: &'static str| {
        let m = agent.agent.metrics();
        m.connections.get_or_create(&[("pool", pool)]).get()
    };
    common::wait_for("the subprocesses' connections to close", || {
        open("refused") == 1 && open("allowed") == 0
    })
    .await;
    let (mut extra, mut outcomes) = (Vec::new(), Vec::new());
    for _ in 0..REFUSED_CONNECTIONS {
        // The closed one may fail as early as the HTTP/2 handshake, or on its first call.
        let outcome = match sidecar_agent::client::connect(&agent.socket).await {
            Ok(mut c) => {
                let code = c.list_methods(ListMethodsRequest::default()).await.unwrap_err().code();
                extra.push(c);
                format!("{code:?}")
            }
            Err(e) => format!("closed: {e}"),
        };
        outcomes.push(outcome);
    }
    let told = outcomes.iter().filter(|o| *o == "PermissionDenied").count();
    assert_eq!(told, REFUSED_CONNECTIONS - 1, "{outcomes:?}");
    assert_ne!(outcomes.last().unwrap(), "PermissionDenied", "{outcomes:?}");
    // ... and the allowed peer is still served while they are open.
    let out = methods_as(12345, &agent.socket);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    let denied = 3 + 1 + REFUSED_CONNECTIONS - 1;
    common::assert_metric(
        &metrics,
        &format!("grayscope_agent_grpc_permission_denied_total {denied}"),
    );
    // The one closed for want of a slot is counted, as every connection the agent closes is: without it, refused
    // peers knocking on a full pool leave no trace but a debug log. (At least once: the client's channel may
    // connect again, and be closed again, before its call fails.)
    let full = metrics
        .lines()
        .find_map(|l| l.strip_prefix("grayscope_agent_grpc_connections_closed_total{reason=\"refused_pool\"} "))
        .and_then(|n| n.parse::<u64>().ok());
    assert!(full.is_some_and(|n| n >= 1), "{full:?} in:\n{metrics}");
    agent.agent.stop().await;
}

/// Sends raw bytes as the request message and ignores the answer's body: a client that speaks garbage.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let v = src.chunk().to_vec();
        src.advance(v.len());
        Ok(Some(v))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_malformed_messages_get_errors_an_invalid_record_alone_is_refused() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let mut client = agent.client().await;
    let record = |request_id: String| CallRecord {
        direction: Direction::Outbound as i32,
        request_id,
        ..CallRecord::default()
    };

    // 5 MiB, over the 4 MiB default.
    let big = client
        .report(ReportRequest {
            reporter: "test".into(),
            calls: vec![record("x".repeat(5 << 20))],
        })
        .await
        .unwrap_err();
    assert_eq!(big.code(), Code::OutOfRange, "{big:?}");
    assert!(big.message().contains("message length too large"), "{big:?}");

    // Not protobuf at all: a field with wire type 7 (invalid).
    let mut raw = raw_channel(&agent.socket).await;
    raw.ready().await.unwrap();
    let garbage = raw
        .unary(
            tonic::Request::new(vec![0xff, 0xff, 0xff, 0xff]),
            tonic::codegen::http::uri::PathAndQuery::from_static("/grayscope.v1.Collector/Report"),
            RawCodec,
        )
        .await
        .unwrap_err();
    assert_eq!(garbage.code(), Code::Internal, "{garbage:?}");
    assert!(garbage.message().contains("decode"), "{garbage:?}");

    // Well-formed protobuf, absurd values: each bad record is refused on its own and counted by reason; the
    // rest of its batch is accepted.
    let mut bad = record("ok".into());
    bad.direction = 7;
    let mut long = record("ok".into());
    long.service = "s".repeat(5000);
    let mut port = record("ok".into());
    port.client = Some(SocketAddress {
        address: "127.0.0.1".into(),
        port: 70_000,
    });
    let batch = vec![record("first".into()), bad, long, port, record("last".into())];
    assert_eq!(report(&mut client, batch).await, 2);

    // Still serving, on the same connection and on a new one.
    assert_eq!(report(&mut client, vec![record("after".into())]).await, 1);
    assert_eq!(report(&mut agent.client().await, vec![record("new".into())]).await, 1);
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    for line in [
        "grayscope_agent_call_records_received_total 4",
        "grayscope_agent_call_records_rejected_total{reason=\"unknown_direction\"} 1",
        "grayscope_agent_call_records_rejected_total{reason=\"field_too_long\"} 1",
        "grayscope_agent_call_records_rejected_total{reason=\"bad_address\"} 1",
        "grayscope_agent_grpc_messages_oversized_total 1",
    ] {
        common::assert_metric(&metrics, line);
    }
    agent.agent.stop().await;
}

/// A gRPC channel on the agent's socket for raw calls ([`RawCodec`]).
async fn raw_channel(socket: &std::path::Path) -> tonic::client::Grpc<tonic::transport::Channel> {
    let path = socket.to_owned();
    let channel = tonic::transport::Endpoint::from_static("http://agent")
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(
                    tokio::net::UnixStream::connect(path).await?,
                ))
            }
        }))
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_of_more_entries_than_any_reporter_sends_is_refused_before_it_is_decoded() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let mut raw = raw_channel(&agent.socket).await;
    // Two bytes on the wire per record (field 2, length 0: an empty record, which is valid), so 2,000,000 of them
    // fit in the default 4 MiB: decoded, each is a whole `CallRecord` of about 400 bytes. On an agent that decoded
    // it this one message took 1.2 GB at its peak (from 32 MB) and seconds of CPU.
    let empty_records = [0x12u8, 0x00].repeat(2_000_000);
    for (method, body) in [
        ("/grayscope.v1.Collector/Report", empty_records),
        // Declarations (field 1) of one byte each of service and method.
        (
            "/grayscope.v1.Collector/ReportMethodMetadata",
            [0x0a, 0x06, 0x0a, 0x01, b's', 0x12, 0x01, b'm'].repeat(500_000),
        ),
    ] {
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(method);
        raw.ready().await.unwrap();
        let answer = common::patiently(method, raw.unary(tonic::Request::new(body), path, RawCodec)).await;
        let status = answer.expect_err("a message of a million entries was taken");
        assert_eq!(status.code(), Code::OutOfRange, "{method}: {status:?}");
        assert!(status.message().contains("10000"), "{method}: {status:?}");
    }
    // The filter's largest batch (report.max_batch is at most 10,000) is taken whole.
    let record = CallRecord {
        direction: Direction::Outbound as i32,
        ..CallRecord::default()
    };
    let mut client = agent.client().await;
    assert_eq!(report(&mut client, vec![record; 10_000]).await, 10_000);
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    common::assert_metric(&metrics, "grayscope_agent_grpc_messages_oversized_total 2");
    common::assert_metric(&metrics, "grayscope_agent_call_records_received_total 10000");
    agent.agent.stop().await;
}

/// A watch filter longer than any record's field can be ([`sidecar_agent::collector::MAX_FIELD_BYTES`]) could match
/// nothing, and the agent would keep it for the stream's life: it is refused, naming the field, as a tenant filter
/// that cannot be a label is. One at the bound is a filter like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_filter_longer_than_a_record_field_is_refused_naming_it() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let mut client = agent.client().await;
    let long = "s".repeat(sidecar_agent::collector::MAX_FIELD_BYTES + 1);
    for (field, request) in [
        (
            "service",
            WatchRequest {
                service: long.clone(),
                ..WatchRequest::default()
            },
        ),
        (
            "method",
            WatchRequest {
                method: long.clone(),
                ..WatchRequest::default()
            },
        ),
        (
            "gray_version",
            WatchRequest {
                gray_version: long.clone(),
                ..WatchRequest::default()
            },
        ),
    ] {
        let Err(refused) = client.watch(request).await else {
            panic!("a {field} filter of {} bytes was accepted", long.len());
        };
        assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
        assert!(refused.message().starts_with(&format!("{field}: ")), "{refused:?}");
    }
    let at_bound = "s".repeat(sidecar_agent::collector::MAX_FIELD_BYTES);
    client
        .watch(WatchRequest {
            service: at_bound,
            ..WatchRequest::default()
        })
        .await
        .expect("a filter at the bound");
    agent.agent.stop().await;
}

/// An HTTP method filter is `VERB route`: two fields of a record, each up to
/// [`sidecar_agent::collector::MAX_FIELD_BYTES`]. Longer than one field, it still matches records the agent
/// accepts, so it is a filter like any other, and gets that record (and not another route's).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_method_filter_longer_than_one_field_matches_its_record() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let mut client = agent.client().await;
    let http = |route: String| {
        let mut call = common::outbound("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), "x");
        call.server = None;
        call.rpc_system_name = "http".into();
        call.rpc_method.clear();
        call.http_request_method = "GET".into();
        call.http_route = route;
        call
    };
    let route = format!("/{}", "r".repeat(sidecar_agent::collector::MAX_FIELD_BYTES - 1));
    let filter = format!("GET {route}");
    assert!(filter.len() > sidecar_agent::collector::MAX_FIELD_BYTES);
    let mut watch = match client
        .watch(WatchRequest {
            method: filter.clone(),
            ..WatchRequest::default()
        })
        .await
    {
        Ok(w) => w.into_inner(),
        Err(s) => panic!(
            "a {}-byte filter of a route the agent takes was refused: {s:?}",
            filter.len()
        ),
    };
    let other = http(format!("/{}", "o".repeat(100)));
    assert_eq!(report(&mut client, vec![other, http(route.clone())]).await, 2);
    let call = next(&mut watch).await.call.unwrap().call.unwrap();
    assert_eq!(call.http_route, route);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watcher_that_never_reads_slows_nobody_and_learns_what_it_lost() {
    if !privileged() {
        return;
    }
    const BATCH: usize = 100;
    const BATCHES: usize = 20;
    let agent = start(Config {
        watch_queue: 128,
        ..common::config(NetnsFilter::Own)
    })
    .await;
    // Each on its own connection, as separate programs would be.
    let mut slow = agent.watch_all().await;
    let mut fast = agent.watch_all().await;
    let mut reporter = agent.client().await;
    // ~4 KiB per call, so the slow watcher's HTTP/2 window fills after a few hundred and its queue overflows.
    let padding = "p".repeat(4000);
    let mut seq = 0u64;
    for _ in 0..BATCHES {
        let calls: Vec<CallRecord> = (0..BATCH)
            .map(|_| {
                seq += 1;
                CallRecord {
                    direction: Direction::Outbound as i32,
                    duration_ns: seq,
                    request_id: padding.clone(),
                    ..CallRecord::default()
                }
            })
            .collect();
        let first = seq + 1 - BATCH as u64;
        assert_eq!(report(&mut reporter, calls).await, BATCH as u32);
        for i in 0..BATCH as u64 {
            let m = next(&mut fast).await;
            assert_eq!(m.lost, 0, "the reading watcher lost calls");
            assert_eq!(m.call.unwrap().call.unwrap().duration_ns, first + i);
        }
    }
    // Now the slow one reads: every call is either delivered or counted as lost, and some were lost.
    let total = (BATCH * BATCHES) as u64;
    let (mut received, mut lost, mut last) = (0u64, 0u64, 0u64);
    while received + lost < total {
        let m = next(&mut slow).await;
        lost += m.lost;
        received += 1;
        let n = m.call.unwrap().call.unwrap().duration_ns;
        assert!(n > last, "calls arrive in order, the oldest dropped first");
        assert_eq!(n, last + 1 + m.lost, "lost counts exactly the calls skipped");
        last = n;
    }
    assert_eq!(received + lost, total);
    assert!(lost > 0, "the slow watcher lost nothing: raise the volume");
    let metrics = common::http_get(agent.metrics_addr, "/metrics").await;
    common::assert_metric(&metrics, &format!("grayscope_agent_watch_lost_total {lost}"));
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_wait_their_turn() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        max_connections: 1,
        ..common::config(NetnsFilter::Own)
    })
    .await;
    let mut first = agent.client().await;
    first.list_methods(ListMethodsRequest::default()).await.unwrap();
    // The second connection is made (it waits in the listen backlog), but not served while the first lives.
    let mut second = agent.client().await;
    let waiting = tokio::spawn(async move { second.list_methods(ListMethodsRequest::default()).await });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "a second connection was served beyond max_connections = 1"
    );
    drop(first);
    let answer = common::patiently("the second connection to be served", waiting).await;
    answer.unwrap().unwrap();
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_and_idle_connections_are_closed_and_watchers_stay() {
    if !privileged() {
        return;
    }
    use tokio::io::AsyncReadExt;
    let agent = start(Config {
        handshake_timeout: std::time::Duration::from_millis(300),
        idle_timeout: std::time::Duration::from_millis(500),
        ..common::config(NetnsFilter::Own)
    })
    .await;
    let gauge = |name: &'static str, value: &'static str| {
        let m = agent.agent.metrics();
        if name == "closed" {
            m.connections_closed.get_or_create(&[("reason", value)]).get()
        } else {
            u64::try_from(m.connections.get_or_create(&[("pool", value)]).get()).unwrap()
        }
    };
    // Connected, never a byte: closed after the handshake timeout.
    let mut silent = tokio::net::UnixStream::connect(&agent.socket).await.unwrap();
    // The server's SETTINGS come first; then the connection ends.
    let mut buf = Vec::new();
    let read = common::patiently("the silent connection to be closed", silent.read_to_end(&mut buf)).await;
    assert!(read.is_ok() || buf.len() < 100, "{read:?}");
    assert_eq!(gauge("closed", "handshake_timeout"), 1);
    // A watcher keeps its stream open; a client whose call is done goes idle.
    let mut watcher = agent.client().await;
    let mut watch = watcher.watch(WatchRequest::default()).await.unwrap().into_inner();
    let mut done = agent.client().await;
    done.list_methods(ListMethodsRequest::default()).await.unwrap();
    common::wait_for("the idle connection to be closed", || {
        gauge("closed", "idle_timeout") >= 1 && gauge("open", "allowed") == 1
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(700)).await;
    assert_eq!(gauge("open", "allowed"), 1, "the watcher's connection was closed");
    let record = CallRecord {
        direction: Direction::Outbound as i32,
        request_id: "after-idle".into(),
        ..CallRecord::default()
    };
    assert_eq!(report(&mut agent.client().await, vec![record]).await, 1);
    let call = next(&mut watch).await.call.unwrap().call.unwrap();
    assert_eq!(call.request_id, "after-idle");
    drop(watcher);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_cannot_hold_more_than_its_share_of_connections() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        max_connections_per_peer: 2,
        ..common::config(NetnsFilter::Own)
    })
    .await;
    let mut first = agent.client().await;
    let mut second = agent.client().await;
    first.list_methods(ListMethodsRequest::default()).await.unwrap();
    second.list_methods(ListMethodsRequest::default()).await.unwrap();
    // The third from this process is closed at once (during the handshake or at its first call).
    let third = match sidecar_agent::client::connect(&agent.socket).await {
        Ok(mut c) => c
            .list_methods(ListMethodsRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(third.is_err(), "a third connection was served");
    // Another process is served meanwhile.
    let out = Command::new(env!("CARGO_BIN_EXE_grayscope-agent"))
        .arg("methods")
        .arg("--socket")
        .arg(&agent.socket)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // (The client may have retried once.)
    let per_peer = agent
        .agent
        .metrics()
        .connections_closed
        .get_or_create(&[("reason", "per_peer")])
        .get();
    assert!(per_peer >= 1, "{per_peer}");
    drop(first);
    // A slot of this process freed: it is served again.
    common::wait_for("the first connection to end", || {
        agent
            .agent
            .metrics()
            .connections
            .get_or_create(&[("pool", "allowed")])
            .get()
            == 1
    })
    .await;
    agent
        .client()
        .await
        .list_methods(ListMethodsRequest::default())
        .await
        .unwrap();
    drop(second);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_processes_of_one_uid_cannot_hold_more_than_its_share() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        max_connections_per_uid: 3,
        ..common::config(NetnsFilter::Own)
    })
    .await;
    // Three processes of our uid (root) hold one silent connection each...
    let hold = |socket: &std::path::Path| {
        common::python(&format!(
            "import socket, sys\n\
             s = socket.socket(socket.AF_UNIX); s.connect({:?})\n\
             print('held', flush=True)\n\
             sys.stdin.read()\n",
            socket.display().to_string()
        ))
    };
    let mut holders: Vec<_> = (0..3).map(|_| hold(&agent.socket)).collect();
    for h in &mut holders {
        assert_eq!(common::first_line(h), "held");
    }
    common::wait_for("the three connections to be served", || {
        agent
            .agent
            .metrics()
            .connections
            .get_or_create(&[("pool", "allowed")])
            .get()
            == 3
    })
    .await;
    // ... so a fourth process of that uid is closed at once.
    let refused = sidecar_agent::client::connect(&agent.socket).await;
    let refused = match refused {
        Ok(mut c) => c
            .list_methods(ListMethodsRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(e.to_string()),
    };
    assert!(refused.is_err(), "a fourth connection of the uid was served");
    // By the uid rule (the client may have retried once), not the per-process one.
    let closed = |reason| {
        agent
            .agent
            .metrics()
            .connections_closed
            .get_or_create(&[("reason", reason)])
            .get()
    };
    assert!(closed("per_uid") >= 1 && closed("per_peer") == 0);
    for h in holders {
        common::finish(h);
    }
    agent.agent.stop().await;
}
