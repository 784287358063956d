//! The VM heartbeat: how a proxy shows how many of each grayscope plugin's VMs are alive.
//!
//! Envoy runs one wasm VM per worker thread, plus one on its main thread, and under `FAIL_OPEN` a VM that fails
//! (a panic, an out-of-memory) is skipped by every later request without a trace in Envoy's own stats. So each live
//! VM adds the time it has been alive to a counter, [`VM_UPTIME`], in milliseconds: the counter's rate in
//! milliseconds per second is the number of live VMs (1000 per VM), whatever the tick period of its root contexts,
//! however many root contexts a VM holds (they add to one per-VM clock, so time is never counted twice), and however
//! late a busy worker's timer fires (a late tick adds the whole time since the last one). A failed VM runs no more
//! code: its share stops, and the rate drops by 1000.
//!
//! The counter has one series per plugin, labelled with the plugin's name ([`series`]), and a VM adds its time to
//! the series of every plugin it has hosted. Envoy shares a VM between plugins only when they have the same code and
//! VM configuration; Istio gives each WasmPlugin VMs of its own (it puts the plugin's resource version in the VMs'
//! environment). So a proxy with two plugins runs two sets of VMs, and one unlabelled counter would read as twice
//! the VMs, where the loss of one could not show; per plugin, each series counts that plugin's set. A VM shared by
//! two plugins counts in both, and goes on counting for a plugin removed while the VM lives on: its series then
//! reads the VMs that still run, not a failure.
//!
//! The time is Envoy's wall clock (the only clock of the ABI). The counter moves at most once per
//! [`BEAT_MS`] per VM, off the request path. A clock stepped back restarts the count from the new time; one stepped
//! forward adds at most [`MAX_BEAT_MS`], so a clock jump cannot read as many VMs for long.
//!
//! The native build has no VM: a dynamic module runs in Envoy's own threads, and a panic there ends the process
//! (a restart, visible as such), so it has no heartbeat.

/// The counter: milliseconds of life, summed over the proxy's live VMs of a plugin.
pub const VM_UPTIME: &str = "grayscope_vm_uptime_milliseconds_total";

/// The label naming the plugin (Envoy's plugin `name`; Istio's is `<namespace>.<WasmPlugin name>`).
pub const PLUGIN: &str = "plugin";

/// The stat name of `plugin`'s heartbeat series.
pub fn series(plugin: &str) -> String {
    crate::metrics::stat_name(VM_UPTIME, &[(PLUGIN, plugin)])
}

/// The counter moves once this much time has passed since its last move.
pub const BEAT_MS: u64 = 1000;

/// The most one move adds (a wall clock stepped forward, or a thread stalled this long).
pub const MAX_BEAT_MS: u64 = 60_000;

/// The tick period of a root context that has no other use for its timer (reporting off).
pub const TICK_MS: u64 = 1000;

const NS_PER_MS: u64 = 1_000_000;

/// One VM's heartbeat clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Heartbeat {
    /// When the counter last moved (or the VM's first root was configured), in the clock's nanoseconds.
    since_ns: u64,
}

impl Heartbeat {
    /// Starts counting from `now_ns`.
    pub fn new(now_ns: u64) -> Self {
        Self { since_ns: now_ns }
    }

    /// A root context ticked at `now_ns`: the milliseconds to add to [`VM_UPTIME`] now, if any. The sub-millisecond
    /// rest is kept for the next move, so nothing is lost to rounding.
    pub fn beat(&mut self, now_ns: u64) -> Option<u64> {
        let Some(elapsed_ns) = now_ns.checked_sub(self.since_ns) else {
            // The clock stepped back: count from its new reading.
            self.since_ns = now_ns;
            return None;
        };
        let elapsed_ms = elapsed_ns / NS_PER_MS;
        if elapsed_ms < BEAT_MS {
            return None;
        }
        if elapsed_ms > MAX_BEAT_MS {
            self.since_ns = now_ns;
            return Some(MAX_BEAT_MS);
        }
        self.since_ns += elapsed_ms * NS_PER_MS;
        Some(elapsed_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    /// Ticks every `period_ns` from `start` for `duration_ns`; the total added.
    fn run(h: &mut Heartbeat, start: u64, period_ns: u64, duration_ns: u64) -> u64 {
        let mut added = 0;
        let mut t = start;
        while t + period_ns <= start + duration_ns {
            t += period_ns;
            added += h.beat(t).unwrap_or(0);
        }
        added
    }

    #[test]
    fn each_plugin_has_its_own_series_labelled_with_its_name() {
        assert_eq!(
            series("shop.grayscope"),
            "plugin=.=shop.grayscope;.;grayscope_vm_uptime_milliseconds_total"
        );
        assert_eq!(
            series("a;.;b"),
            format!("plugin=.=a%3B.;b;.;{VM_UPTIME}"),
            "escaped as every label value"
        );
    }

    #[test]
    fn one_vm_adds_its_time_whatever_its_tick_period() {
        for period_ms in [10, 125, 200, 333, 1000, 1001, 2500] {
            let mut h = Heartbeat::new(5 * S);
            let added = run(&mut h, 5 * S, period_ms * NS_PER_MS, 600 * S);
            // All but the rest since the last move, which is less than a beat plus a tick.
            assert!(
                added <= 600_000 && added + BEAT_MS + period_ms >= 600_000,
                "{period_ms} ms: {added}"
            );
        }
    }

    #[test]
    fn it_moves_at_most_once_per_beat() {
        let mut h = Heartbeat::new(0);
        let moves = (1..=1000u64).filter(|i| h.beat(i * 200 * NS_PER_MS).is_some()).count();
        assert_eq!(moves, 200);
    }

    #[test]
    fn several_roots_of_one_vm_count_its_time_once() {
        // Two roots of one VM tick at their own periods (200 ms and 1 s) on one clock.
        let mut h = Heartbeat::new(0);
        let mut ticks: Vec<u64> = (1..=3000).map(|i| i * 200 * NS_PER_MS).collect();
        ticks.extend((1..=600).map(|i| i * S + 7 * NS_PER_MS));
        ticks.sort_unstable();
        let added: u64 = ticks.into_iter().filter_map(|t| h.beat(t)).sum();
        assert!((599_000..=600_000).contains(&added), "{added}");
    }

    #[test]
    fn late_ticks_lose_no_time() {
        // A busy worker's timer fires 1.7 s late, then on time again.
        let mut h = Heartbeat::new(0);
        let added: u64 = [200, 400, 2100, 2300, 3000, 4000]
            .iter()
            .filter_map(|ms| h.beat(ms * NS_PER_MS))
            .sum();
        assert_eq!(added, 4000);
    }

    #[test]
    fn sub_millisecond_rests_are_kept() {
        let mut h = Heartbeat::new(0);
        let added: u64 = (1..=100u64).filter_map(|i| h.beat(i * (S + 300_000))).sum();
        assert_eq!(added, 100_030);
    }

    #[test]
    fn a_clock_stepped_back_restarts_the_count_and_one_stepped_forward_adds_a_bounded_share() {
        let mut h = Heartbeat::new(100 * S);
        assert_eq!(h.beat(50 * S), None);
        assert_eq!(h.beat(50 * S + 999 * NS_PER_MS), None);
        assert_eq!(h.beat(51 * S), Some(1000));
        assert_eq!(h.beat(51 * S + 3600 * S), Some(MAX_BEAT_MS));
        assert_eq!(h.beat(52 * S + 3600 * S), Some(1000));
    }
}
