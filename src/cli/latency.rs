//! Latencies of the load and bench commands: an HDR histogram
//! (`hdrhistogram`, microseconds, 3 significant digits) instead of sorting
//! every sample, with the quantiles they print.

use std::time::Duration;

use hdrhistogram::Histogram;

/// Recorded latencies.
#[derive(Clone, Debug)]
pub(super) struct Latencies(Histogram<u64>);

impl Default for Latencies {
    fn default() -> Self {
        // Auto-resizing: no sample is ever refused as too large.
        Self(Histogram::new(3).expect("3 significant digits is a valid precision"))
    }
}

impl Latencies {
    /// Records one latency.
    pub(super) fn record(&mut self, d: Duration) {
        self.record_us(u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
    }

    /// Records one latency in microseconds.
    pub(super) fn record_us(&mut self, us: u64) {
        // Auto-resizing histograms accept every value.
        let _ = self.0.record(us);
    }

    /// Adds another's samples.
    pub(super) fn merge(&mut self, other: &Latencies) {
        let _ = self.0.add(&other.0);
    }

    /// Samples recorded.
    pub(super) fn len(&self) -> u64 {
        self.0.len()
    }

    /// The `q` quantile (0..=1) in milliseconds; 0 when empty.
    pub(super) fn quantile_ms(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.value_at_quantile(q) as f64 / 1000.0
    }

    /// The largest latency in milliseconds; 0 when empty.
    pub(super) fn max_ms(&self) -> f64 {
        if self.0.is_empty() {
            return 0.0;
        }
        self.0.max() as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_1_to_1000_ms() {
        let mut l = Latencies::default();
        for ms in 1..=1000u64 {
            l.record(Duration::from_millis(ms));
        }
        assert_eq!(l.len(), 1000);
        // Three significant digits: within 0.1 %.
        let near = |got: f64, want: f64| (got - want).abs() <= want * 0.001;
        assert!(near(l.quantile_ms(0.5), 500.0), "{}", l.quantile_ms(0.5));
        assert!(near(l.quantile_ms(0.99), 990.0), "{}", l.quantile_ms(0.99));
        assert!(
            near(l.quantile_ms(0.999), 999.0),
            "{}",
            l.quantile_ms(0.999)
        );
        assert!(near(l.max_ms(), 1000.0), "{}", l.max_ms());
    }

    #[test]
    fn empty_and_merged() {
        let mut a = Latencies::default();
        assert_eq!(a.len(), 0);
        assert_eq!(a.quantile_ms(0.99), 0.0);
        assert_eq!(a.max_ms(), 0.0);
        let mut b = Latencies::default();
        b.record_us(7_000);
        a.record_us(3_000);
        a.merge(&b);
        assert_eq!(a.len(), 2);
        assert!((a.max_ms() - 7.0).abs() < 0.01);
        assert!((a.quantile_ms(0.5) - 3.0).abs() < 0.01);
    }
}
