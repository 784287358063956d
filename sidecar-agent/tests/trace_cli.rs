//! `grayscope-agent trace` run as a user would: the built binary as a subprocess prints a line for a
//! connection made while it runs, and stops cleanly on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::{
    io::{BufRead, BufReader, Read},
    process::{Command, Stdio},
    sync::mpsc,
};

use common::{loopback_connection, privileged, PATIENCE};
use nix::{sys::signal, unistd::Pid};

#[test]
fn trace_prints_a_connection_made_while_it_runs() {
    if !privileged() {
        return;
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_grayscope-agent"))
        .arg("trace")
        .env("GRAYSCOPE_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    std::thread::spawn(move || stdout.lines().map_while(Result::ok).try_for_each(|l| tx.send(l)));
    let mut stderr = child.stderr.take().unwrap();

    let header = lines.recv_timeout(PATIENCE).unwrap_or_else(|_| {
        let _ = child.kill();
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        panic!("`grayscope-agent trace` printed no header; stderr:\n{err}")
    });
    assert!(header.starts_with("EVENT"), "{header}");

    let (client, server) = loopback_connection();
    let pid = std::process::id().to_string();
    let want = |l: &str, kind: &str, local: u16, remote: u16| {
        let w: Vec<&str> = l.split_whitespace().collect();
        w.len() == 7
            && w[0] == kind
            && w[2] == pid
            && w[4] == format!("127.0.0.1:{local}")
            && w[5] == format!("127.0.0.1:{remote}")
    };
    let (mut established, mut closed) = (None, None);
    while established.is_none() || closed.is_none() {
        let line = lines
            .recv_timeout(PATIENCE)
            .expect("the trace never printed the connection");
        if want(&line, "ESTABLISHED", client, server) {
            established = Some(line);
        } else if want(&line, "CLOSED", client, server) {
            closed = Some(line);
        }
    }
    // ESTABLISHED has no duration ("-"); CLOSED ends with the lifetime in milliseconds.
    let established = established.unwrap();
    assert_eq!(established.split_whitespace().nth(1), Some("client"), "{established}");
    assert_eq!(established.split_whitespace().last(), Some("-"), "{established}");
    let closed = closed.unwrap();
    let ms = closed.split_whitespace().last().unwrap();
    assert!(
        ms.parse::<f64>().is_ok_and(f64::is_finite),
        "no duration at the end of {closed:?}"
    );

    signal::kill(
        Pid::from_raw(i32::try_from(child.id()).unwrap()),
        signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "trace must stop cleanly on SIGTERM: {status}");
}
