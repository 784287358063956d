//! Drains the ring buffer asynchronously: the ring's fd is registered with tokio ([`AsyncFd`]), so the task
//! sleeps until the kernel signals data or a timed read is due, then reads every record, decodes it and hands it on.
//!
//! The kernel programs signal only the first event after a quiet spell and a ring a quarter full (`wakeup_flag` in
//! `ebpf/conn_track.bpf.c`): one wakeup per burst instead of one per event. The events they do not signal are
//! picked up by the follow-up read: after every read that found events, the reader reads again [`POLL_INTERVAL`]
//! later, until a read finds nothing. Then it sleeps until the kernel signals, with a timed read every
//! [`IDLE_POLL`] only as a backstop. An agent on a quiet node wakes about once a second instead of 20 times: those
//! timer wakeups were most of an idle agent's CPU, which is the fixed part of its cost at 10,000 calls per second.
//!
//! The reader can be paused through a [`PauseControl`]: it then leaves the ring alone, the ring fills up and
//! the kernel programs count what they cannot store. Every record taken from the ring counts as
//! delivered, decodable or not, so `delivered + dropped == produced` holds once the ring is drained.

use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::{mpsc, watch},
};
use tokio_util::sync::CancellationToken;

use super::events::{self, ConnEvent};

/// How soon after a read that found events the reader reads again: the longest an event the kernel did not
/// signal waits in the ring (the agent waits `--link-wait`, 500 ms by default, for a call's connection, so this is
/// far inside it).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The timed read of an idle reader, a backstop: the kernel signals the first event after a quiet spell, so no
/// event should wait for it.
pub const IDLE_POLL: Duration = Duration::from_secs(1);

/// Counts kept by the reader.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    /// Records taken from the ring buffer.
    pub delivered: AtomicU64,
    /// Of those, records that did not decode (a build mismatch between the object and the agent).
    pub decode_errors: AtomicU64,
    /// Reads of the ring after the kernel signalled it.
    pub woken_reads: AtomicU64,
    /// Timed reads: follow-ups of a read that found events, and the idle backstop.
    pub timed_reads: AtomicU64,
}

/// The agent's side of the pause switch.
#[derive(Debug)]
pub struct PauseControl {
    request: watch::Sender<bool>,
    state: watch::Receiver<bool>,
}

/// The reader's side of the pause switch.
#[derive(Debug)]
pub struct PauseSwitch {
    request: watch::Receiver<bool>,
    state: watch::Sender<bool>,
}

/// A pause switch, not paused.
pub fn pause_switch() -> (PauseControl, PauseSwitch) {
    let (request, request_rx) = watch::channel(false);
    let (state_tx, state) = watch::channel(false);
    (
        PauseControl { request, state },
        PauseSwitch {
            request: request_rx,
            state: state_tx,
        },
    )
}

// === impl PauseControl ===

impl PauseControl {
    /// Asks the reader to stop reading and waits until it has (it finishes the batch it is reading first).
    /// Returns at once if the reader is gone.
    pub async fn pause(&self) {
        self.request.send_replace(true);
        let mut state = self.state.clone();
        let _ = state.wait_for(|paused| *paused).await;
    }

    /// Lets the reader read again.
    pub fn resume(&self) {
        self.request.send_replace(false);
    }
}

/// Owns the ring buffer.
pub struct Reader {
    ring: AsyncFd<RingBuf<MapData>>,
    counters: Arc<ReaderCounters>,
    idle_poll: Duration,
}

// === impl Reader ===

impl Reader {
    /// Registers the ring buffer with the tokio reactor (must be called inside a runtime).
    pub fn new(ring: RingBuf<MapData>, counters: Arc<ReaderCounters>) -> std::io::Result<Self> {
        // SAFETY: the fd is the ring buffer map's, owned by the `RingBuf` (through its `MapData`) that the
        // `AsyncFd` owns: it stays open, and `as_raw_fd` returns that same fd, until the `AsyncFd` is dropped.
        #[allow(unsafe_code)]
        let ring =
            unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }.map_err(std::io::Error::from)?;
        Ok(Self {
            ring,
            counters,
            idle_poll: IDLE_POLL,
        })
    }

    /// Sets the idle backstop ([`IDLE_POLL`] by default). A test sets it to hours, so that every event it sees
    /// was either signalled by the kernel or picked up by a follow-up read.
    #[must_use]
    pub fn with_idle_poll(mut self, idle_poll: Duration) -> Self {
        self.idle_poll = idle_poll;
        self
    }

    /// Reads until `cancel` fires or the receiver of `tx` goes away; not while `switch` says pause.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<ConnEvent>,
        mut switch: PauseSwitch,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut batch = Vec::new();
        let mut paused = false;
        // The next timed read: POLL_INTERVAL after a read that found events, else the idle backstop.
        let poll = tokio::time::sleep(POLL_INTERVAL);
        tokio::pin!(poll);
        loop {
            if *switch.request.borrow_and_update() {
                if !paused {
                    paused = true;
                    switch.state.send_replace(true);
                }
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    changed = switch.request.changed() => if changed.is_err() { return Ok(()) },
                }
                continue;
            }
            if paused {
                paused = false;
                switch.state.send_replace(false);
                // What piled up meanwhile is read at once.
                poll.as_mut().reset(tokio::time::Instant::now());
            }
            let found = tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                changed = switch.request.changed() => if changed.is_err() { return Ok(()) } else { continue },
                ready = self.ring.readable_mut() => {
                    let mut guard = ready?;
                    self.counters.woken_reads.fetch_add(1, Ordering::Relaxed);
                    let n = drain(guard.get_inner_mut(), &self.counters, &mut batch);
                    guard.clear_ready();
                    // A record committed between the drain and clear_ready would leave the fd not ready while
                    // data waits: drain once more (cheap when empty).
                    n + drain(guard.get_inner_mut(), &self.counters, &mut batch)
                }
                () = &mut poll => {
                    self.counters.timed_reads.fetch_add(1, Ordering::Relaxed);
                    let n = drain(self.ring.get_mut(), &self.counters, &mut batch);
                    if n == 0 {
                        poll.as_mut().reset(tokio::time::Instant::now() + self.idle_poll);
                    }
                    n
                }
            };
            // The kernel may not have signalled events that came right after these: read again soon.
            if found > 0 {
                poll.as_mut().reset(tokio::time::Instant::now() + POLL_INTERVAL);
            }
            for event in batch.drain(..) {
                if tx.send(event).await.is_err() {
                    return Ok(());
                }
            }
        }
    }
}

/// Reads every pending record into `batch`; returns how many records it took.
fn drain(ring: &mut RingBuf<MapData>, counters: &ReaderCounters, batch: &mut Vec<ConnEvent>) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        n += 1;
        counters.delivered.fetch_add(1, Ordering::Relaxed);
        match events::decode(&item) {
            Ok(event) => batch.push(event),
            Err(e) => {
                counters.decode_errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "undecodable event record");
            }
        }
    }
    n
}
