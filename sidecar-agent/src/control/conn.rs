//! One connection on the agent's socket, as the server sees it: the `:authority` repair ([`super::authority`]),
//! its slot in the pools, its peer's count, and the timeouts that free the slot of a peer that holds it for
//! nothing.
//!
//! - **Handshake**: a peer that has not sent the HTTP/2 preface and a first frame within `handshake_timeout` is
//!   closed (a connection opened and left silent would otherwise hold a slot for ever).
//! - **Idle**: a connection with no call open for `idle_timeout` is closed. Open calls are counted from the frames
//!   themselves: a request's HEADERS opens its stream; the server's END_STREAM (on HEADERS or DATA) or a
//!   RST_STREAM from either side closes it. A `Watch` stream stays open while it lives, so watchers are never idle.
//!   gRPC clients reconnect on their next call.
//!
//! Closing is returning an error from a read: hyper then drops the connection, and with it the slot.

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    io,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::UnixStream,
    sync::OwnedSemaphorePermit,
    time::{Instant, Sleep},
};
use tonic::transport::server::{Connected, UdsConnectInfo};

use super::authority::FixAuthority;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const END_STREAM: u8 = 0x1;

/// The timeouts of a connection.
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    /// Until the preface and a first frame.
    pub handshake: Duration,
    /// With no call open.
    pub idle: Duration,
}

/// What a connection holds while it lives; released on drop.
#[derive(Debug)]
pub struct Held {
    /// Its slot in its pool.
    pub permit: OwnedSemaphorePermit,
    /// `grayscope_agent_grpc_connections{pool}`, decremented on drop.
    pub open: Gauge,
    /// Its peer's entries in the per-process and per-uid counts.
    pub peer: (PeerSlot, PeerSlot),
    /// `grpc_connections_closed_total{reason="handshake_timeout"}` and `{reason="idle_timeout"}`.
    pub closed: (Counter, Counter),
}

impl Drop for Held {
    fn drop(&mut self) {
        self.open.dec();
    }
}

/// Open connections per peer process or per uid (from `SO_PEERCRED`).
pub type PeerCounts = Arc<Mutex<HashMap<i64, usize>>>;

/// One connection counted against its process; the count goes down on drop.
#[derive(Debug)]
pub struct PeerSlot {
    counts: PeerCounts,
    key: i64,
}

impl PeerSlot {
    /// Counts a connection of `key` (a pid or a uid), unless it holds `max` already.
    pub fn take(counts: &PeerCounts, key: i64, max: usize) -> Option<Self> {
        let mut c = counts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = c.entry(key).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Self {
            counts: Arc::clone(counts),
            key,
        })
    }
}

impl Drop for PeerSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = c.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.remove(&self.key);
            }
        }
    }
}

/// A served connection.
#[derive(Debug)]
pub struct Conn {
    stream: FixAuthority<UnixStream>,
    held: Held,
    timeouts: Timeouts,
    /// Streams the peer opened that are not finished.
    open_streams: HashSet<u32>,
    /// When the handshake or idle time runs out (re-armed as calls open and close).
    deadline: Pin<Box<Sleep>>,
    /// Frame headers the server wrote, parsed as they go out: bytes of the current header, payload left to skip.
    out_header: [u8; 9],
    out_have: usize,
    out_skip: usize,
}

// === impl Conn ===

impl Conn {
    /// Serves `stream`, holding `held`.
    pub fn new(stream: UnixStream, held: Held, timeouts: Timeouts) -> Self {
        Self {
            stream: FixAuthority::new(stream),
            held,
            timeouts,
            open_streams: HashSet::new(),
            deadline: Box::pin(tokio::time::sleep(timeouts.handshake)),
            out_header: [0; 9],
            out_have: 0,
            out_skip: 0,
        }
    }

    /// Applies the frames the peer sent.
    fn note_read(&mut self) {
        for (kind, _flags, stream) in self.stream.take_frames() {
            match kind {
                // A new call: idle time no longer runs (re-armed when the last call ends).
                HEADERS if stream % 2 == 1 && self.open_streams.insert(stream) && self.open_streams.len() == 1 => {
                    self.deadline
                        .as_mut()
                        .reset(Instant::now() + Duration::from_secs(86_400 * 365));
                }
                RST_STREAM => self.finished(stream),
                _ => {}
            }
        }
    }

    fn finished(&mut self, stream: u32) {
        if self.open_streams.remove(&stream) && self.open_streams.is_empty() {
            self.deadline.as_mut().reset(Instant::now() + self.timeouts.idle);
        }
    }

    /// Follows the frames in `written` (what the server just wrote) for the streams they end.
    fn note_written(&mut self, mut written: &[u8]) {
        while !written.is_empty() {
            if self.out_skip > 0 {
                let k = self.out_skip.min(written.len());
                self.out_skip -= k;
                written = &written[k..];
                continue;
            }
            let k = (9 - self.out_have).min(written.len());
            self.out_header[self.out_have..self.out_have + k].copy_from_slice(&written[..k]);
            self.out_have += k;
            written = &written[k..];
            if self.out_have < 9 {
                return;
            }
            self.out_have = 0;
            let h = self.out_header;
            self.out_skip = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let ends = matches!(h[3], DATA | HEADERS) && h[4] & END_STREAM != 0;
            if ends || h[3] == RST_STREAM {
                self.finished(stream);
            }
        }
    }

    /// `Err` when the connection has timed out.
    fn check_deadline(&mut self, cx: &mut Context<'_>) -> io::Result<()> {
        if self.deadline.as_mut().poll(cx).is_pending() {
            return Ok(());
        }
        let (reason, counter) = if self.stream.started() {
            if !self.open_streams.is_empty() {
                return Ok(());
            }
            ("idle", &self.held.closed.1)
        } else {
            ("handshake", &self.held.closed.0)
        };
        counter.inc();
        tracing::debug!(reason, "closing a connection on the agent socket: timed out");
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{reason} timeout on the agent socket"),
        ))
    }
}

impl Connected for Conn {
    type ConnectInfo = UdsConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.stream.get_ref().connect_info()
    }
}

impl AsyncRead for Conn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let started = this.stream.started();
        let poll = Pin::new(&mut this.stream).poll_read(cx, buf);
        this.note_read();
        if !started && this.stream.started() {
            // Handshake done: idle time runs until the first call.
            this.deadline.as_mut().reset(Instant::now() + this.timeouts.idle);
        }
        match poll {
            Poll::Pending => {
                this.check_deadline(cx)?;
                Poll::Pending
            }
            ready => ready,
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let poll = Pin::new(&mut this.stream).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = poll {
            this.note_written(&buf[..n]);
        }
        poll
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}
