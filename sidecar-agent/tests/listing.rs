//! Listing a method table larger than one gRPC message may be: gRPC clients refuse, by default, a message over
//! 4 MiB (grpc-core, grpc-go, grpc-java and tonic alike), and the agent's default bounds allow a table far larger
//! (4,096 rows, names of up to 4 KiB each). `ListMethods` pages it, and `grayscope-agent methods` follows the pages.
//! No single row may exceed that limit either, nor a `Watch` message: a process's command line (shown with
//! `expose_command_line`) can be megabytes long.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{finish, first_line, next, privileged, python, report, start, wait_for};
use proto::v1::{CallRecord, LinkState, ListMethodsRequest};
use sidecar_agent::{Config, NetnsFilter};

/// Interfaces × gray versions: 256 interfaces (the default `methods_max_interfaces`) in 5 versions.
const INTERFACES: usize = 256;
const VERSIONS: usize = 5;

/// A call of interface `i` in gray version `v`, with names long enough (about 4 KiB a row) that the table is more
/// than 5 MB; unlinked (no server address), so it is counted at once.
fn long_call(i: usize, v: usize) -> CallRecord {
    let service = format!("pkg{i:04}.{}", "S".repeat(2500));
    let method = format!("M{i:04}{}", "m".repeat(1500));
    let mut call = common::outbound("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), "x");
    call.server = None;
    call.rpc_method = format!("{service}/{method}");
    call.service = service;
    call.gray_version = format!("v{v}");
    call
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_larger_than_a_grpc_message_is_listed_in_full() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let mut client = agent.client().await;
    for v in 0..VERSIONS {
        for chunk in (0..INTERFACES).collect::<Vec<_>>().chunks(64) {
            let calls: Vec<_> = chunk.iter().map(|&i| long_call(i, v)).collect();
            assert_eq!(report(&mut client, calls).await, 64);
        }
    }
    let core = std::sync::Arc::clone(agent.agent.core());
    wait_for("every call to be counted", || {
        core.list().len() == INTERFACES * VERSIONS
    })
    .await;

    let out = common::methods_cli(&agent);
    assert!(
        out.status.success(),
        "grayscope-agent methods failed on a {}-row table: {}",
        INTERFACES * VERSIONS,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let mut rows: Vec<(String, String)> = text
        .lines()
        .skip(1)
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[1].to_owned(), f[3].to_owned())
        })
        .collect();
    rows.sort();
    let mut want: Vec<(String, String)> = (0..INTERFACES)
        .flat_map(|i| (0..VERSIONS).map(move |v| (long_call(i, v).service, format!("v{v}"))))
        .collect();
    want.sort();
    assert_eq!(rows.len(), want.len(), "rows printed");
    assert!(rows == want, "the printed rows are not the table's, each once");

    // `page_size` pages: 1,280 rows in pages of 500.
    let mut sizes = Vec::new();
    let mut page_token = String::new();
    loop {
        let page = client
            .list_methods(ListMethodsRequest {
                page_size: 500,
                page_token,
            })
            .await
            .unwrap()
            .into_inner();
        sizes.push(page.methods.len());
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    // 500 rows of 4 KiB would be 2 MB: each page holds 500, but for the last.
    assert_eq!(sizes, [500, 500, 280]);
    // A token it did not issue: refused, naming the field.
    let refused = client
        .list_methods(ListMethodsRequest {
            page_size: 0,
            page_token: "bm90IGEgdG9rZW4".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    assert!(
        refused
            .message()
            .starts_with("page_token is not a token this agent issued"),
        "{refused:?}"
    );
    agent.agent.stop().await;
}

/// Arguments of a command line longer than a gRPC message: 40 of 128 KiB (the kernel's limit on one argument),
/// 5 MiB in all.
const LONG_ARGS: (usize, usize) = (40, 128 * 1024 - 1);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_whose_command_line_is_larger_than_a_grpc_message_is_listed_and_watched() {
    if !privileged() {
        return;
    }
    let agent = start(Config {
        expose_command_line: true,
        // Generous: only a broken agent waits it out.
        link_wait: std::time::Duration::from_secs(20),
        ..common::config(NetnsFilter::Own)
    })
    .await;
    let mut client = agent.client().await;
    let mut watch = agent.watch_all().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let envoy = listener.local_addr().unwrap();
    // The kernel takes arguments of up to a quarter of the stack limit (6 MiB at most): the child raises its limit,
    // then becomes (same pid) a python with a 5 MiB command line, connected to Envoy.
    let connect = format!(
        "import socket, sys\n\
         s = socket.create_connection(('127.0.0.1', {}))\n\
         print(s.getsockname()[1], flush=True)\n\
         sys.stdin.read()\n",
        envoy.port()
    );
    let (n, len) = LONG_ARGS;
    let mut child = python(&format!(
        "import os, resource, sys\n\
         _, hard = resource.getrlimit(resource.RLIMIT_STACK)\n\
         resource.setrlimit(resource.RLIMIT_STACK, (64 << 20, hard))\n\
         os.execv(sys.executable, [sys.executable, '-c', {connect:?}] + ['x' * {len}] * {n})\n"
    ));
    let pid = child.id();
    let local: std::net::SocketAddr = format!("127.0.0.1:{}", first_line(&mut child)).parse().unwrap();
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
    assert!(cmdline.len() > 4 << 20, "{} bytes", cmdline.len());
    common::wait_owned(&agent, local, envoy).await;
    assert_eq!(
        report(&mut client, vec![common::outbound(local, envoy, "SayHello")]).await,
        1
    );
    let core = std::sync::Arc::clone(agent.agent.core());
    wait_for("the call to be counted", || core.list().len() == 1).await;

    // Every page reaches a client with gRPC's default limit: `grayscope-agent methods`, and tonic's.
    let out = common::methods_cli(&agent);
    assert!(
        out.status.success(),
        "grayscope-agent methods failed on one row of a process with a {} MiB command line: {}",
        cmdline.len() >> 20,
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l.split_whitespace().nth(6) == Some(pid.to_string().as_str())),
        "{text}"
    );
    let page = client
        .list_methods(ListMethodsRequest::default())
        .await
        .unwrap_or_else(|s| panic!("a default client cannot take the page: {s:?}"))
        .into_inner();
    let p = page.methods[0].process.clone().unwrap();
    assert_eq!(p.pid, pid);
    assert!(
        p.command_line.contains("create_connection"),
        "{}",
        &p.command_line[..200.min(p.command_line.len())]
    );
    // Cut, and saying so.
    assert!(p.command_line.ends_with('…'), "{} bytes", p.command_line.len());
    // And so does the call on `Watch` (`grayscope-agent tail` has the same limit).
    let call = next(&mut watch).await.call.unwrap();
    assert_eq!(call.link, LinkState::Linked as i32, "{:?}", call.unlinked_reason);
    assert_eq!(call.process.unwrap().pid, pid);
    finish(child);
    agent.agent.stop().await;
}

/// Three unlinked calls (no server address: counted at once), of methods `A`, `B` and `C`: three rows.
fn three_calls() -> Vec<CallRecord> {
    ["A", "B", "C"]
        .iter()
        .map(|m| {
            let mut call = common::outbound("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap(), m);
            call.server = None;
            call
        })
        .collect()
}

/// The first page (one row) of `agent`'s table of [`three_calls`], and its token.
async fn first_page(agent: &common::TestAgent) -> String {
    let mut client = agent.client().await;
    assert_eq!(report(&mut client, three_calls()).await, 3);
    let core = std::sync::Arc::clone(agent.agent.core());
    wait_for("the calls to be counted", || core.list().len() == 3).await;
    let page = client
        .list_methods(ListMethodsRequest {
            page_size: 1,
            page_token: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(page.methods.len(), 1);
    assert!(!page.next_page_token.is_empty());
    page.next_page_token
}

/// A page token is good only where it was issued, as it was issued. One from an agent since replaced (a restart
/// between two pages) named a place in another table: followed, the listing went on in the new one, past rows it
/// never sent. One altered by a client named any place it liked. Both are refused with `INVALID_ARGUMENT`, so the
/// client starts the listing again; the token this agent issued still pages on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_token_of_another_agent_or_altered_is_refused() {
    use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine as _};
    if !privileged() {
        return;
    }
    let first = start(common::config(NetnsFilter::Own)).await;
    let stale = first_page(&first).await;
    first.agent.stop().await;

    let agent = start(common::config(NetnsFilter::Own)).await;
    let token = first_page(&agent).await;
    let client = agent.client().await;
    let page = |page_token: String| {
        let mut client = client.clone();
        async move {
            client
                .list_methods(ListMethodsRequest {
                    page_size: 1,
                    page_token,
                })
                .await
        }
    };
    // The same method in the token, one letter changed: `B` for `A` (the token names the row of `A`).
    let mut raw = URL_SAFE_NO_PAD.decode(&token).unwrap();
    let service = b"test.Greeter";
    let after = raw
        .windows(service.len())
        .position(|w| w == service)
        .expect("the token names the service")
        + service.len();
    let at = after
        + raw[after..]
            .iter()
            .position(|&b| b == b'A')
            .expect("the token names method A");
    raw[at] = b'B';
    let altered = URL_SAFE_NO_PAD.encode(raw);
    for (what, bad) in [("another agent's", stale), ("altered", altered)] {
        let refused = page(bad)
            .await
            .map(|p| p.into_inner())
            .expect_err(&format!("{what} page token was followed"));
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{what}: {refused:?}");
        assert!(
            refused
                .message()
                .starts_with("page_token is not a token this agent issued"),
            "{what}: {refused:?}"
        );
    }
    let next = page(token).await.unwrap().into_inner();
    assert_eq!(next.methods.len(), 1);
    assert_eq!(next.methods[0].method, "B");
    drop(client);
    agent.agent.stop().await;
}
