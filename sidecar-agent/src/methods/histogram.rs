//! Latencies of a row: exact count, sum, min and max, and a log-linear histogram of microseconds for the
//! percentiles (exact below 16 µs, then 8 buckets per power of two, so a percentile is within 12.5% of the true
//! value).

use std::collections::BTreeMap;

use proto::v1::LatencySummary;

/// Latencies: exact count, sum, min and max; log-linear buckets of microseconds for the percentiles.
#[derive(Debug, Default)]
pub(super) struct Histogram {
    count: u64,
    sum_ns: u128,
    min_ns: u64,
    max_ns: u64,
    buckets: BTreeMap<u16, u64>,
}

impl Histogram {
    pub(super) fn record(&mut self, ns: u64) {
        self.min_ns = if self.count == 0 { ns } else { self.min_ns.min(ns) };
        self.max_ns = self.max_ns.max(ns);
        self.count += 1;
        self.sum_ns += u128::from(ns);
        *self.buckets.entry(bucket(ns / 1000)).or_default() += 1;
    }

    /// The value of quantile `q`: the upper end of its bucket, within [min, max].
    fn quantile_ns(&self, q: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        // The rank of the quantile, 1-based: ceil(q * count), at least 1.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0;
        for (&b, &n) in &self.buckets {
            seen += n;
            if seen >= rank {
                return upper_us(b).saturating_mul(1000).clamp(self.min_ns, self.max_ns);
            }
        }
        self.max_ns
    }

    pub(super) fn summary(&self) -> LatencySummary {
        #[allow(clippy::cast_precision_loss)]
        let ms = |ns: u64| ns as f64 / 1e6;
        #[allow(clippy::cast_precision_loss)]
        let sum_ms = self.sum_ns as f64 / 1e6;
        LatencySummary {
            count: self.count,
            sum_ms,
            min_ms: ms(self.min_ns),
            max_ms: ms(self.max_ns),
            p50_ms: ms(self.quantile_ns(0.50)),
            p90_ms: ms(self.quantile_ns(0.90)),
            p99_ms: ms(self.quantile_ns(0.99)),
        }
    }
}

/// Bucket of `us` microseconds: 0..16 exact, then 8 per power of two.
fn bucket(us: u64) -> u16 {
    if us < 16 {
        return u16::try_from(us).unwrap_or(0);
    }
    let exp = 63 - us.leading_zeros(); // >= 4
    let sub = (us >> (exp - 3)) & 7;
    u16::try_from(16 + (u64::from(exp) - 4) * 8 + sub).unwrap_or(u16::MAX)
}

/// Largest microsecond value of bucket `b`.
fn upper_us(b: u16) -> u64 {
    if b < 16 {
        return u64::from(b);
    }
    let i = u64::from(b - 16);
    let (exp, sub) = (i / 8 + 4, i % 8);
    let upper = (u128::from(9 + sub) << (exp - 3)) - 1;
    u64::try_from(upper).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_monotonic_and_cover_their_values() {
        let mut last = 0;
        for us in (0..100_000).chain([u64::MAX / 1000, u64::MAX]) {
            let b = bucket(us);
            assert!(b >= last, "{us}");
            assert!(upper_us(b) >= us, "{us} above its bucket {b}");
            last = b;
        }
    }
}
