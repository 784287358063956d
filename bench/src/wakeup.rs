//! A probe of the machine rather than of grayscope: the CPU time a thread is charged for each wakeup from a short
//! sleep. On a quiet machine that is a few microseconds; on a busy host it grows many times over (caches, TLBs and
//! the hypervisor's scheduling are charged to whoever wakes), and with it every figure of a process that works in
//! bursts, such as the agent at 10,000 calls/s. `RESULTS.md` prints it before and after the run, beside the load
//! average, so that two runs can be compared for what the machine did.

use std::{path::Path, thread, time::Duration};

use crate::proxy::schedstat_ns;

/// Wakeups per probe, and the sleep before each: 200 × 5 ms, one second.
const WAKEUPS: u32 = 200;
const SLEEP: Duration = Duration::from_millis(5);

/// CPU time of the calling thread so far, ns.
fn thread_cpu_ns() -> Option<u64> {
    schedstat_ns(Path::new("/proc/thread-self/schedstat"))
}

/// µs of CPU per wakeup of the calling thread (pinned by the caller to the CPU it wants probed); `None` where
/// the kernel does not keep scheduler statistics.
pub fn cost_us() -> Option<f64> {
    let before = thread_cpu_ns()?;
    for _ in 0..WAKEUPS {
        thread::sleep(SLEEP);
    }
    let after = thread_cpu_ns()?;
    Some(after.saturating_sub(before) as f64 / 1e3 / f64::from(WAKEUPS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wakeup_costs_some_cpu_and_less_than_its_sleep() {
        let us = cost_us().expect("schedstat");
        // Waking and going back to sleep takes at least a syscall, and (the sleep itself being off CPU) far less
        // than the 5 ms slept.
        assert!(us > 0.0 && us < 5_000.0, "{us} µs per wakeup");
    }
}
