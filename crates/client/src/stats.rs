//! Latency histograms and the per-second timeline.

use hdrhistogram::Histogram;
use serde::Serialize;

/// Highest latency recorded exactly (microseconds); larger values are clamped.
const MAX_US: u64 = 600_000_000;

fn new_histogram() -> Histogram<u64> {
    // Bounds are constants that satisfy the constructor's preconditions
    // (low >= 1, high >= 2 * low, 3 significant figures).
    Histogram::new_with_bounds(1, MAX_US, 3).expect("valid histogram bounds")
}

/// Latencies in microseconds: all of the run, and the current interval.
#[derive(Debug)]
pub struct Latency {
    all: Histogram<u64>,
    interval: Histogram<u64>,
    /// Samples above one second (upstream logs each of these).
    pub over_one_second: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Latency {
            all: new_histogram(),
            interval: new_histogram(),
            over_one_second: 0,
        }
    }
}

impl Latency {
    pub fn record_ns(&mut self, ns: u64) {
        let us = (ns / 1000).max(1);
        self.all.saturating_record(us);
        self.interval.saturating_record(us);
        if ns > 1_000_000_000 {
            self.over_one_second += 1;
        }
    }

    pub fn all(&self) -> &Histogram<u64> {
        &self.all
    }

    pub fn summary(&self) -> Summary {
        Summary::of(&self.all)
    }

    /// Summary of the samples since the last call, and start a new interval.
    pub fn take_interval(&mut self) -> Summary {
        let s = Summary::of(&self.interval);
        self.interval.reset();
        s
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    pub count: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            count: h.len(),
            mean_ms: h.mean() / 1000.0,
            p50_ms: ms(h.value_at_quantile(0.50)),
            p95_ms: ms(h.value_at_quantile(0.95)),
            p99_ms: ms(h.value_at_quantile(0.99)),
            p999_ms: ms(h.value_at_quantile(0.999)),
            max_ms: ms(h.max()),
        }
    }
}

/// A fresh latency histogram for setup phases (microseconds).
pub fn histogram() -> Histogram<u64> {
    new_histogram()
}

/// Records a duration into a microsecond histogram.
pub fn record(h: &mut Histogram<u64>, d: std::time::Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// One second of the run.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Point {
    /// Seconds since the phase started (end of this interval).
    pub t: f64,
    /// What was started in the interval (messages sent, hellos sent).
    pub sent: u64,
    /// What completed in the interval (deliveries, hello answers).
    pub done: u64,
    /// Latency of what completed in the interval.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Share of one core the server used in the interval, if known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub server_cpu: Option<f64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_in_milliseconds() {
        let mut l = Latency::default();
        for i in 1..=1000u64 {
            l.record_ns(i * 1_000_000); // 1..1000 ms
        }
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert!((s.p50_ms - 500.0).abs() < 1.0, "{s:?}");
        assert!((s.p99_ms - 990.0).abs() < 1.0, "{s:?}");
        assert!((s.max_ms - 1000.0).abs() < 1.0, "{s:?}");
        assert_eq!(l.over_one_second, 0);
        l.record_ns(2_000_000_000);
        assert_eq!(l.over_one_second, 1);
    }

    #[test]
    fn interval_resets_but_total_keeps() {
        let mut l = Latency::default();
        l.record_ns(5_000);
        assert_eq!(l.take_interval().count, 1);
        assert_eq!(l.take_interval().count, 0);
        l.record_ns(7_000);
        assert_eq!(l.summary().count, 2);
    }

    #[test]
    fn empty_summary_is_zero() {
        assert_eq!(Summary::of(&histogram()), Summary::default());
    }

    #[test]
    fn sub_microsecond_samples_count() {
        let mut l = Latency::default();
        l.record_ns(10);
        assert_eq!(l.summary().count, 1);
    }
}
