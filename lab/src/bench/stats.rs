//! Latency samples and their percentiles (an HDR histogram), and the median of repeated runs.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Latency samples, in nanoseconds, with 3 significant digits (an error under 0.1 %).
#[derive(Clone, Debug)]
pub(crate) struct Samples(Histogram<u64>);

impl Default for Samples {
    fn default() -> Self {
        // 1 ns to an hour (a longer one is recorded as an hour), 3 significant digits.
        Self(
            Histogram::new_with_bounds(1, 3_600 * 1_000_000_000, 3)
                .unwrap_or_else(|_| unreachable!("valid bounds")),
        )
    }
}

impl Samples {
    /// Adds one.
    pub(crate) fn push(&mut self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1);
        self.0.saturating_record(ns);
    }

    /// The `p`-th percentile (0..=100).
    pub(crate) fn percentile(&self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.0.value_at_quantile(p / 100.0))
    }
}

/// The median of repeated measurements (0 for none): three or so numbers, where a histogram
/// would only round them.
pub(crate) fn median(mut xs: Vec<f64>) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut s = Samples::default();
        for ms in 1..=100 {
            s.push(Duration::from_millis(ms));
        }
        let near = |d: Duration, ms: u64| (d.as_secs_f64() * 1000.0 - ms as f64).abs() < ms as f64 * 0.001;
        assert!(near(s.percentile(50.0), 50), "{:?}", s.percentile(50.0));
        assert!(near(s.percentile(99.0), 99), "{:?}", s.percentile(99.0));
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
    }
}
