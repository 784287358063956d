//! The delay from a call's end to its linked record on `Watch`: the whole reporting path of W2 (the filter's
//! batch and flush, `Report` over the Unix socket, the join against the eBPF table, the fan-out to watchers).
//!
//! The harness watches the agent, then makes calls through a W2 Envoy, each on a fresh connection
//! (`Connection: close`), so each record names its own client port: the record that carries the port is that
//! call's. A call ends when its answer has been read; the record arrives when the watch stream yields it. Only
//! records the agent linked (to the harness's own connection, through the kernel programs' table) count.

use std::{
    collections::HashMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use proto::v1::{LinkState, WatchRequest};

/// What the Watch-delay phase measured.
#[derive(Debug, Clone)]
pub struct WatchDelay {
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Calls made, and of those the ones whose linked record arrived.
    pub calls: usize,
    pub linked: usize,
}

/// Makes `calls` calls at `rate` per second through `listener` (a W2 Envoy reporting to the agent on `socket`)
/// and waits up to `flush + 5 s` after the last one for their records; a call whose record did not arrive counts as
/// slower than every one that did.
pub fn measure(socket: &Path, listener: SocketAddr, calls: usize, rate: u32, flush: Duration) -> Result<WatchDelay> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let (tx, rx) = std::sync::mpsc::channel::<(u16, Instant)>();
    let socket = socket.to_path_buf();
    let mut stream = rt.block_on(async move {
        let mut client = sidecar_agent::client::connect(&socket).await?;
        Ok::<_, anyhow::Error>(client.watch(WatchRequest::default()).await?.into_inner())
    })?;
    // The stream is read on the runtime while the calls are made on this thread.
    let watcher = rt.spawn(async move {
        while let Ok(Some(msg)) = stream.message().await {
            let at = Instant::now();
            let Some(call) = msg.call else { continue };
            if call.link != LinkState::Linked as i32 {
                continue;
            }
            if let Some(client) = call.call.and_then(|c| c.client) {
                if tx.send((u16::try_from(client.port).unwrap_or(0), at)).is_err() {
                    return;
                }
            }
        }
    });
    // Let the watch registration settle before the first call.
    thread::sleep(Duration::from_millis(200));
    let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut ended: HashMap<u16, Instant> = HashMap::new();
    let mut due = Instant::now();
    for _ in 0..calls {
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            thread::sleep(wait);
        }
        due += interval;
        let (port, end) = call(listener)?;
        ended.insert(port, end);
    }
    let deadline = Instant::now() + flush + Duration::from_secs(5);
    let mut delays = Vec::new();
    while delays.len() < ended.len() {
        let Some(left) = deadline.checked_duration_since(Instant::now()) else {
            break;
        };
        let Ok((port, at)) = rx.recv_timeout(left) else { break };
        if let Some(end) = ended.get(&port) {
            delays.push(at.saturating_duration_since(*end));
        }
    }
    watcher.abort();
    rt.shutdown_background();
    if delays.is_empty() {
        bail!(
            "no linked record of the {calls} calls arrived on Watch within {:?} of the last call",
            flush + Duration::from_secs(5)
        );
    }
    let linked = delays.len();
    let (p50_ms, p99_ms) = percentiles(delays, calls);
    Ok(WatchDelay {
        p50_ms,
        p99_ms,
        calls,
        linked,
    })
}

/// p50 and p99 in ms (nearest rank) of the delays of `calls` calls, of which `arrived` had their record arrive. The
/// others' records did not arrive before the deadline: they rank above every arrived one, as ∞ (null in
/// RESULTS.json), where leaving them out would give the quick ones' p99.
fn percentiles(mut arrived: Vec<Duration>, calls: usize) -> (f64, f64) {
    arrived.sort_unstable();
    let calls = calls.max(arrived.len()).max(1);
    let pct = |q: f64| {
        let i = ((calls as f64 * q).ceil() as usize).clamp(1, calls) - 1;
        arrived.get(i).map_or(f64::INFINITY, |d| d.as_secs_f64() * 1e3)
    };
    (pct(0.50), pct(0.99))
}

/// One `GET /x` on a fresh connection; the connection's local port and when the answer had been read.
fn call(listener: SocketAddr) -> Result<(u16, Instant)> {
    let mut s = TcpStream::connect(listener).context("connect to the W2 proxy")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let port = s.local_addr()?.port();
    s.write_all(b"GET /x HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.read_to_end(&mut answer)?;
    let end = Instant::now();
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(anyhow!("the W2 proxy answered {:?}", String::from_utf8_lossy(&answer)));
    }
    Ok((port, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_call_whose_record_never_arrived_is_slower_than_every_one_that_did() {
        let ms = |n| Duration::from_millis(n);
        // 100 calls; all arrived: nearest rank.
        let all: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentiles(all.clone(), 100), (50.0, 99.0));
        // 97 of 100 arrived, within 97 ms: the 3 others did not within the deadline (seconds), so the 99th of the
        // 100 calls is one of them, not the 97 ms the arrived ones alone would give.
        let (p50, p99) = percentiles(all[..97].to_vec(), 100);
        assert_eq!((p50, p99), (50.0, f64::INFINITY));
        // Half of them missing: even the median is past the deadline.
        assert_eq!(percentiles(all[..49].to_vec(), 100).0, f64::INFINITY);
    }
}
