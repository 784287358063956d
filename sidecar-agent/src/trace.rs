//! `grayscope-agent trace`: prints connection events as they happen, one line each, like `tcplife`.

use std::{future::Future, io::Write, net::SocketAddr, sync::Arc};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::{
    ebpf::{
        events::{ConnEvent, EventKind, Role},
        reader::{self, Reader, ReaderCounters},
        Probe, ProbeOptions,
    },
    error::Error,
};

/// The column header, printed once the programs are attached (from then on every connection is seen).
pub const HEADER: &str = "EVENT       ROLE    PID     COMM             LADDR                                   \
                          RADDR                                   MS";

/// Loads the programs and writes one line per event to `out` until `shutdown` completes.
pub async fn trace(opts: &ProbeOptions, mut out: impl Write, shutdown: impl Future) -> Result<(), Error> {
    let mut probe = Probe::load(opts)?;
    let ring = probe.take_ring().ok_or(Error::Map {
        name: "events",
        detail: "ring buffer already taken".into(),
    })?;
    let reader = Reader::new(ring, Arc::new(ReaderCounters::default())).map_err(|source| Error::Io {
        what: "registering the ring buffer with tokio".into(),
        source,
    })?;
    let write_err = |source| Error::Io {
        what: "writing to stdout".into(),
        source,
    };
    writeln!(out, "{HEADER}")
        .and_then(|()| out.flush())
        .map_err(write_err)?;

    let cancel = CancellationToken::new();
    let (_pause, switch) = reader::pause_switch();
    let (tx, mut rx) = mpsc::channel(4096);
    let reading = tokio::spawn(reader.run(tx, switch, cancel.clone()));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            event = rx.recv() => {
                let Some(event) = event else { break };
                match writeln!(out, "{}", format_event(&event)).and_then(|()| out.flush()) {
                    Ok(()) => {}
                    // The reader of our output went away (`trace | head`): a normal end.
                    Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => break,
                    Err(e) => return Err(write_err(e)),
                }
            }
        }
    }
    cancel.cancel();
    // The reader may be waiting to send into a full channel (a busy machine, and we stopped reading): closing the
    // channel ends that wait, or the await below would never return.
    drop(rx);
    match reading.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(source)) => Err(Error::Io {
            what: "reading the ring buffer".into(),
            source,
        }),
        Err(e) => Err(Error::Io {
            what: "the reader task".into(),
            source: std::io::Error::other(e),
        }),
    }
}

/// One event as a line under [`HEADER`].
pub fn format_event(e: &ConnEvent) -> String {
    let kind = match e.kind {
        EventKind::Established => "ESTABLISHED",
        EventKind::Accepted => "ACCEPTED",
        EventKind::Closed => "CLOSED",
    };
    let role = match e.role {
        Role::Client => "client",
        Role::Server => "server",
    };
    let (pid, comm) = e.owner.as_ref().map_or(("-".to_owned(), "-".into()), |o| {
        (o.pid.to_string(), o.comm.to_str_lossy())
    });
    let ms = e
        .duration
        .map_or("-".to_owned(), |d| format!("{:.3}", d.as_secs_f64() * 1000.0));
    format!(
        "{kind:<11} {role:<7} {pid:<7} {comm:<16} {:<39} {:<39} {ms}",
        addr(e.local),
        addr(e.remote)
    )
}

fn addr(a: SocketAddr) -> String {
    a.to_string()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ebpf::events::Owner;

    #[test]
    fn formats_like_tcplife() {
        let mut e = ConnEvent {
            kind: EventKind::Closed,
            role: Role::Client,
            skaddr: 1,
            ts_ns: 0,
            netns: 1,
            local: "127.0.0.1:40000".parse().unwrap(),
            remote: "[::1]:8080".parse().unwrap(),
            owner: Some(Owner {
                pid: 4242,
                tid: 4243,
                comm: "curl".into(),
                start_ns: 0,
            }),
            duration: Some(Duration::from_micros(1500)),
        };
        let line = format_event(&e);
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>(),
            [
                "CLOSED",
                "client",
                "4242",
                "curl",
                "127.0.0.1:40000",
                "[::1]:8080",
                "1.500"
            ]
        );
        assert_eq!(line.find("4242"), HEADER.find("PID"), "columns line up");
        e.owner = None;
        e.kind = EventKind::Established;
        e.duration = None;
        let words: Vec<String> = format_event(&e).split_whitespace().map(str::to_owned).collect();
        assert_eq!(words[2..4], ["-", "-"]);
        assert_eq!(words[6], "-");
    }
}
