//! Drains the ring buffer asynchronously: the ring's fd is registered with tokio ([`AsyncFd`]), so the task
//! sleeps until the kernel signals data or the poll interval passes, then reads every record, decodes it and hands
//! it on. The kernel programs signal only once a quarter of the ring is pending (`wakeup_flag` in
//! `ebpf/conn_track.bpf.c`): one wakeup per batch instead of one per event, and the timer picks up the rest.
//!
//! The poll interval is [`POLL_INTERVAL`] while events arrive and doubles after each poll that finds none, up to
//! [`MAX_POLL_INTERVAL`]: a node with few new connections wakes the agent 20 times a second instead of 100 (those
//! idle wakeups were a sixth of the agent's CPU at 10,000 calls per second).
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

/// How often the reader drains the ring without being woken: the longest an event waits in the ring (the agent
/// waits `--link-wait`, 500 ms by default, for a call's connection, so this is far inside it).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// The poll interval after polls that found nothing: the longest the first event after a quiet spell waits in the
/// ring (also far inside `--link-wait`).
pub const MAX_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Counts kept by the reader.
#[derive(Debug, Default)]
pub struct ReaderCounters {
    /// Records taken from the ring buffer.
    pub delivered: AtomicU64,
    /// Of those, records that did not decode (a build mismatch between the object and the agent).
    pub decode_errors: AtomicU64,
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
        Ok(Self { ring, counters })
    }

    /// Reads until `cancel` fires or the receiver of `tx` goes away; not while `switch` says pause.
    pub async fn run(
        mut self,
        tx: mpsc::Sender<ConnEvent>,
        mut switch: PauseSwitch,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let mut batch = Vec::new();
        let mut interval = POLL_INTERVAL;
        let poll = tokio::time::sleep(interval);
        tokio::pin!(poll);
        loop {
            if *switch.request.borrow_and_update() {
                switch.state.send_replace(true);
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => return Ok(()),
                    changed = switch.request.changed() => if changed.is_err() { return Ok(()) },
                }
                continue;
            }
            switch.state.send_replace(false);
            tokio::select! {
                biased;
                _ = cancel.cancelled() => return Ok(()),
                changed = switch.request.changed() => if changed.is_err() { return Ok(()) } else { continue },
                ready = self.ring.readable_mut() => {
                    let mut guard = ready?;
                    drain(guard.get_inner_mut(), &self.counters, &mut batch);
                    guard.clear_ready();
                    // A record committed between the drain and clear_ready would leave the fd not ready while
                    // data waits: drain once more (cheap when empty).
                    drain(guard.get_inner_mut(), &self.counters, &mut batch);
                    interval = POLL_INTERVAL;
                }
                () = &mut poll => {
                    let found = drain(self.ring.get_mut(), &self.counters, &mut batch);
                    interval = if found > 0 { POLL_INTERVAL } else { (interval * 2).min(MAX_POLL_INTERVAL) };
                    poll.as_mut().reset(tokio::time::Instant::now() + interval);
                }
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
