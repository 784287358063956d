//! Medians with their range: every figure the harness publishes is the median of per-round values.

use serde::Serialize;

/// Median, min and max of a set of per-round values.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    /// How many of the `n` values were infinite (a per-round ratio whose denominator was not above zero, see
    /// `results::ratio`); JSON writes an infinite median, min or max as null.
    pub infinite: usize,
}

impl Summary {
    /// Summarises the values that are numbers (a round that lacks a figure gives NaN and is left out); infinite ones
    /// are kept, ranked above (or below) every finite one, and counted.
    pub fn of(values: &[f64]) -> Self {
        let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Self {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
            n: v.len(),
            infinite: v.iter().filter(|x| x.is_infinite()).count(),
        }
    }

    /// `median (min–max)` with `digits` decimals.
    pub fn show(&self, digits: usize) -> String {
        if self.n == 0 {
            return "n/a".to_owned();
        }
        let x = |v: f64| match v {
            f64::INFINITY => "∞".to_owned(),
            f64::NEG_INFINITY => "−∞".to_owned(),
            v => format!("{v:.digits$}"),
        };
        let infinite = if self.infinite > 0 {
            format!("; ∞ in {} of {} rounds", self.infinite, self.n)
        } else {
            String::new()
        };
        format!("{} ({}–{}{infinite})", x(self.median), x(self.min), x(self.max))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts_and_nan_left_out() {
        let s = Summary::of(&[3.0, 1.0, 2.0, f64::NAN]);
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Summary::of(&[1.0, 2.0, 4.0, 10.0]).median, 3.0);
        assert_eq!(Summary::of(&[]).show(1), "n/a");
    }
}
