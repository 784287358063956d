//! `grayscope-agent tail` and `grayscope-agent methods` run as a user would, as subprocesses against a running
//! agent: tail prints a line per call (linked ones with the pid and command, unlinked ones with the reason),
//! stops cleanly on SIGTERM and fails saying so when the agent stops; methods prints the aligned table.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::{Command, Stdio};

use common::{finish, privileged, report, start, wait_for, PATIENCE};
use nix::{sys::signal, unistd::Pid};
use sidecar_agent::NetnsFilter;

const BIN: &str = env!("CARGO_BIN_EXE_grayscope-agent");

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_methods_print_linked_calls() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let (mut tail, lines) = common::tail(BIN, &agent, &["--service", "test.Greeter", "--gray-version", "v2"]);
    let hub = std::sync::Arc::clone(agent.agent.core().hub());
    wait_for("tail to subscribe", || hub.len() == 1).await;

    // The lines below come in report order only if the linked call need not wait for its connection's event
    // (the unlinked one never waits): the caller is returned once the table has it.
    let common::Caller {
        child,
        pid,
        local,
        envoy,
        listener: _listener,
    } = common::connected_caller(&agent).await;
    let mut client = agent.client().await;
    let mut other_version = common::outbound(local, envoy, "Filtered");
    other_version.gray_version = "v1".into();
    let mut unlinked = common::outbound(local, envoy, "Bare");
    unlinked.server = None;
    let calls = vec![other_version, common::outbound(local, envoy, "SayHello"), unlinked];
    assert_eq!(report(&mut client, calls).await, 3);

    let line = lines.recv_timeout(PATIENCE).expect("tail printed nothing");
    // The command shown is the executable's base name (`python3` usually resolves to `python3.X`); read it now
    // that the child has connected, so it has long been exec'd.
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("child exe");
    let exe = exe.file_name().expect("exe name").to_string_lossy().into_owned();
    // start_time_unix_nano 1_800_000_000_000_000_000 is 2027-01-15T08:00:00Z.
    assert_eq!(
        line,
        format!(
            "2027-01-15T08:00:00.000Z  pid={pid} ({exe})  outbound  grpc test.Greeter/SayHello  gray=v2  \
             status=OK  1.500ms"
        )
    );
    let line = lines.recv_timeout(PATIENCE).expect("tail printed one line only");
    assert_eq!(
        line,
        "2027-01-15T08:00:00.000Z  unlinked(no_address)  outbound  grpc test.Greeter/Bare  gray=v2  status=OK  \
         1.500ms"
    );

    let out = common::methods_cli(&agent);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let rows: Vec<Vec<&str>> = text.lines().map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(
        rows[0],
        [
            "SYSTEM", "SERVICE", "METHOD", "GRAY", "TENANT", "DIR", "PID", "COMMAND", "CALLS", "ERRORS", "P50_MS",
            "P99_MS", "MAX_MS", "PEERS", "DECLARED"
        ],
        "{text}"
    );
    let pid = pid.to_string();
    let hello = rows
        .iter()
        .find(|r| r[2] == "SayHello")
        .unwrap_or_else(|| panic!("{text}"));
    assert_eq!(
        hello[..10],
        [
            "grpc",
            "test.Greeter",
            "SayHello",
            "v2",
            "-",
            "outbound",
            pid.as_str(),
            exe.as_str(),
            "1",
            "0"
        ],
        "{text}"
    );
    assert_eq!(hello[12], "1.500", "{text}");
    assert!(rows.iter().any(|r| r[2] == "Filtered" && r[3] == "v1"), "{text}");
    assert!(rows.iter().any(|r| r[2] == "Bare" && r[6] == "-"), "{text}");
    // The columns line up: every row's METHOD starts where the header's does.
    let col = text.lines().next().unwrap().find("METHOD").unwrap();
    for l in text.lines().skip(1) {
        assert_eq!(l[col - 2..col].trim(), "", "{text}");
    }

    signal::kill(
        Pid::from_raw(i32::try_from(tail.id()).unwrap()),
        signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = tail.wait().unwrap();
    assert!(status.success(), "tail must stop cleanly on SIGTERM: {status}");
    finish(child);
    agent.agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_says_the_agent_stopped_and_fails() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let tail = Command::new(BIN)
        .arg("tail")
        .arg("--socket")
        .arg(&agent.socket)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let hub = std::sync::Arc::clone(agent.agent.core().hub());
    wait_for("tail to subscribe", || hub.len() == 1).await;
    agent.agent.stop().await;
    let out = common::patiently(
        "tail to exit",
        tokio::task::spawn_blocking(move || tail.wait_with_output().unwrap()),
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    // A script that restarts tail, or a person reading the terminal, must see that the agent went away: a
    // silent exit 0 reads as "nothing more to show".
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the agent is stopping"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// One line that names the socket once, what the command was doing, and why it could not.
#[test]
fn tail_without_an_agent_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("none.sock");
    let out = Command::new(BIN)
        .args(["tail", "--socket"])
        .arg(&socket)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(
        err.trim_end(),
        format!(
            "grayscope-agent: error: watching the calls of the agent at {}: cannot connect: transport error: No such \
             file or directory (os error 2)",
            socket.display()
        )
    );
}

/// A socket path that is not the agent's (another program's socket, a stale path reused): the CLI must not report
/// what the transport said as the agent's answer, and must name the call and the socket.
#[test]
fn methods_on_a_socket_that_is_not_the_agent_says_which_call_failed_where() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // Reads what the client sends first (HTTP/2's preface) and closes, as a program that speaks another protocol
    // would.
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let mut buf = [0u8; 4096];
            let _ = std::io::Read::read(&mut conn.unwrap(), &mut buf);
        }
    });
    let out = Command::new(BIN)
        .args(["methods", "--socket"])
        .arg(&path)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(!err.contains("refused"), "no agent answered: {err}");
    assert!(err.contains("ListMethods"), "{err}");
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `grayscope-agent tail | head -1`, `methods | head -1`: once the reader of the output has gone, there is nobody
/// left to tell anything, and the command ends as `trace` does, with status 0 and nothing on stderr, not with an
/// error about a broken pipe that the user caused on purpose.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_and_methods_end_quietly_when_their_reader_has_gone() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    // The reader goes away: the pipe's read end is closed, as `head` closes it after its line.
    let without_reader = |command: &str| {
        let mut child = Command::new(BIN)
            .arg(command)
            .arg("--socket")
            .arg(&agent.socket)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take());
        child
    };
    let tail = without_reader("tail");
    let hub = std::sync::Arc::clone(agent.agent.core().hub());
    wait_for("tail to subscribe", || hub.len() == 1).await;
    let nowhere = common::outbound(
        "127.0.0.1:1".parse().unwrap(),
        "127.0.0.1:2".parse().unwrap(),
        "SayHello",
    );
    let mut client = agent.client().await;
    assert_eq!(report(&mut client, vec![nowhere]).await, 1);
    let out = common::patiently(
        "tail to exit",
        tokio::task::spawn_blocking(move || tail.wait_with_output().unwrap()),
    )
    .await
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err, "");

    let methods = without_reader("methods");
    let out = tokio::task::spawn_blocking(move || methods.wait_with_output().unwrap())
        .await
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert_eq!(err, "");
    agent.agent.stop().await;
}

/// `WatchRequest` has no "unset" apart from the empty value: pid 0 and an empty string match every call. So `tail
/// --pid 0` (a process the agent could not name shows as pid 0) or `--gray-version ""` (calls without a version, one
/// might think) watched everything, linked or not, as if no filter had been given. Each is refused, naming the flag,
/// before `tail` watches anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_refuses_a_filter_value_that_would_match_every_call() {
    if !privileged() {
        return;
    }
    let agent = start(common::config(NetnsFilter::Own)).await;
    let hub = std::sync::Arc::clone(agent.agent.core().hub());
    for (flag, value) in [
        ("--pid", "0"),
        ("--service", ""),
        ("--method", ""),
        ("--gray-version", ""),
        ("--tenant", ""),
    ] {
        let mut tail = Command::new(BIN)
            .args(["tail", flag, value, "--socket"])
            .arg(&agent.socket)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Either it exits, or it watches: the agent then has its watcher.
        let exited = common::wait_some(&format!("tail {flag} {value:?} to exit or watch"), || {
            if !hub.is_empty() {
                return Some(None);
            }
            tail.try_wait().unwrap().map(Some)
        })
        .await;
        let Some(status) = exited else {
            let _ = tail.kill();
            let _ = tail.wait();
            panic!("tail {flag} {value:?} watched every call instead of refusing the value");
        };
        let mut err = String::new();
        std::io::Read::read_to_string(&mut tail.stderr.take().unwrap(), &mut err).unwrap();
        assert!(!status.success(), "{flag} {value:?}: {err}");
        assert!(err.contains(flag), "{flag} {value:?}: {err}");
    }
    agent.agent.stop().await;
}
