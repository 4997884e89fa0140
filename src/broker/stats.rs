//! Message statistics: counters kept where the work happens, rates and latency percentiles
//! worked out off the message path.
//!
//! A queue counts its publishes, deliveries, gets and acks in plain integers under the lock
//! it already holds for the message; a connection counts its channels' publishes and confirms
//! in atomics that only its own task writes. Nothing on the message path computes a rate or
//! takes a lock of its own for statistics. Every few seconds ([`SAMPLE_INTERVAL_MS`]) a sampler (run by the
//! server) reads the counters into a [`RateMeter`], which turns the differences into
//! per-second rates, and rolls each queue's latency windows.
//!
//! Latency: a queue stamps one message in [`STAMP_EVERY`] with the time it was enqueued. When
//! a stamped message is delivered (or got) the queue records its *time in queue*, and
//! restamps it with the delivery time; when it is acked, its *time to ack*. Sampling keeps the
//! clock read off most messages; the distributions are [`LogHistogram`]s over the last one to
//! two minutes (two windows, rolled each minute).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

/// How often rates are sampled by default, as RabbitMQ's management plugin does (settable:
/// `--stats-interval`).
pub const SAMPLE_INTERVAL_MS: u64 = 5_000;
/// One message in this many is stamped for the latency distributions.
pub const STAMP_EVERY: u64 = 16;
/// A latency window is rolled this often; percentiles cover the current and the last one.
pub const LATENCY_WINDOW_MS: u64 = 60_000;

/// Microseconds since the broker started, never 0 (0 marks a message without a stamp).
pub fn stamp_now() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64 + 1
}

/// The message counts RabbitMQ reports as `message_stats`, each with its `_details.rate`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MessageCounts {
    pub publish: u64,
    pub confirm: u64,
    pub return_unroutable: u64,
    pub drop_unroutable: u64,
    pub deliver: u64,
    pub deliver_no_ack: u64,
    pub get: u64,
    pub get_no_ack: u64,
    pub get_empty: u64,
    pub redeliver: u64,
    pub ack: u64,
}

impl MessageCounts {
    /// The counts by RabbitMQ's names, `deliver_get` (deliveries and gets of both kinds)
    /// included.
    pub fn fields(&self) -> [(&'static str, u64); 12] {
        [
            ("publish", self.publish),
            ("confirm", self.confirm),
            ("return_unroutable", self.return_unroutable),
            ("drop_unroutable", self.drop_unroutable),
            ("deliver", self.deliver),
            ("deliver_no_ack", self.deliver_no_ack),
            ("get", self.get),
            ("get_no_ack", self.get_no_ack),
            ("get_empty", self.get_empty),
            ("deliver_get", self.deliver_get()),
            ("redeliver", self.redeliver),
            ("ack", self.ack),
        ]
    }

    /// The values of [`MessageCounts::fields`], as a history records them.
    pub fn values(&self) -> [u64; 12] {
        self.fields().map(|(_, v)| v)
    }

    pub fn deliver_get(&self) -> u64 {
        self.deliver + self.deliver_no_ack + self.get + self.get_no_ack
    }

    pub fn add(&mut self, o: &MessageCounts) {
        self.publish += o.publish;
        self.confirm += o.confirm;
        self.return_unroutable += o.return_unroutable;
        self.drop_unroutable += o.drop_unroutable;
        self.deliver += o.deliver;
        self.deliver_no_ack += o.deliver_no_ack;
        self.get += o.get;
        self.get_no_ack += o.get_no_ack;
        self.get_empty += o.get_empty;
        self.redeliver += o.redeliver;
        self.ack += o.ack;
    }
}

/// Objects opened and closed on this node since it started, as RabbitMQ's churn counters
/// (the overview's `churn_rates`, a node's `connection_created` ...): one relaxed add at each
/// open and close, none on the message path.
#[derive(Debug, Default)]
pub struct Churn {
    pub channel_closed: AtomicU64,
    pub channel_created: AtomicU64,
    pub connection_closed: AtomicU64,
    pub connection_created: AtomicU64,
    pub queue_created: AtomicU64,
    pub queue_declared: AtomicU64,
    pub queue_deleted: AtomicU64,
}

impl Churn {
    /// RabbitMQ's names, in the order of [`Churn::values`].
    pub const NAMES: [&'static str; 7] = [
        "channel_closed",
        "channel_created",
        "connection_closed",
        "connection_created",
        "queue_created",
        "queue_declared",
        "queue_deleted",
    ];

    pub fn values(&self) -> [u64; 7] {
        [
            &self.channel_closed,
            &self.channel_created,
            &self.connection_closed,
            &self.connection_created,
            &self.queue_created,
            &self.queue_declared,
            &self.queue_deleted,
        ]
        .map(|c| c.load(Ordering::Relaxed))
    }

    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Per-second rates of a [`MessageCounts`], from the last two samples.
#[derive(Debug, Clone, Default)]
pub struct RateMeter {
    last: Option<(u64, MessageCounts)>,
    rates: [f64; 12],
}

impl RateMeter {
    /// Takes a sample of `counts` at `now_ms`.
    pub fn sample(&mut self, now_ms: u64, counts: MessageCounts) {
        if let Some((at, before)) = self.last {
            let dt = now_ms.saturating_sub(at) as f64 / 1000.0;
            if dt > 0.0 {
                for (r, ((_, now), (_, then))) in self.rates.iter_mut().zip(counts.fields().iter().zip(before.fields()))
                {
                    *r = now.saturating_sub(then) as f64 / dt;
                }
            }
        }
        self.last = Some((now_ms, counts));
    }

    /// The rate of a field by its RabbitMQ name (0 when unknown or not yet sampled twice).
    pub fn rate(&self, field: &str) -> f64 {
        MessageCounts::default().fields().iter().position(|(n, _)| *n == field).map_or(0.0, |i| self.rates[i])
    }

    /// Rates in the order of [`MessageCounts::fields`].
    pub fn rates(&self) -> &[f64; 12] {
        &self.rates
    }
}

/// A histogram of durations in microseconds with buckets growing by 2^(1/8) (each about 9 %
/// wide), from 1 µs to about 70 minutes: 256 counters, so a queue's distributions stay small.
#[derive(Debug, Clone)]
pub struct LogHistogram {
    counts: [u32; BUCKETS],
    total: u64,
    max: u64,
}

const BUCKETS: usize = 256;
const PER_DOUBLING: f64 = 8.0;

impl Default for LogHistogram {
    fn default() -> Self {
        LogHistogram { counts: [0; BUCKETS], total: 0, max: 0 }
    }
}

impl LogHistogram {
    fn bucket(us: u64) -> usize {
        if us <= 1 {
            return 0;
        }
        (((us as f64).log2() * PER_DOUBLING).ceil() as usize).min(BUCKETS - 1)
    }

    /// The upper bound of a bucket, in microseconds.
    fn bound(bucket: usize) -> u64 {
        2f64.powf(bucket as f64 / PER_DOUBLING).round() as u64
    }

    pub fn record(&mut self, us: u64) {
        let b = Self::bucket(us);
        self.counts[b] = self.counts[b].saturating_add(1);
        self.total += 1;
        self.max = self.max.max(us);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max(&self) -> u64 {
        self.max
    }

    pub fn merge(&mut self, o: &LogHistogram) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.total += o.total;
        self.max = self.max.max(o.max);
    }

    /// The value at quantile `q` (0..=1): the upper bound of the bucket it falls in, never
    /// above the largest value recorded. 0 for an empty histogram.
    pub fn quantile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0u64;
        for (b, c) in self.counts.iter().enumerate() {
            seen += *c as u64;
            if seen >= rank {
                return Self::bound(b).min(self.max);
            }
        }
        self.max
    }
}

/// The two latency distributions of a queue, over two rolling windows.
#[derive(Debug, Clone, Default)]
pub struct QueueLatency {
    /// Publish to delivery (or get), then delivery to ack: [current, previous] window each.
    pub in_queue: [LogHistogram; 2],
    pub to_ack: [LogHistogram; 2],
    rolled_at_ms: u64,
}

/// Percentiles of one distribution, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
}

impl QueueLatency {
    /// Starts a new window once the current one is a window old.
    pub fn roll(&mut self, now_ms: u64) {
        if self.rolled_at_ms == 0 {
            self.rolled_at_ms = now_ms;
        } else if now_ms.saturating_sub(self.rolled_at_ms) >= LATENCY_WINDOW_MS {
            self.in_queue.swap(0, 1);
            self.to_ack.swap(0, 1);
            self.in_queue[0] = LogHistogram::default();
            self.to_ack[0] = LogHistogram::default();
            self.rolled_at_ms = now_ms;
        }
    }

    fn percentiles(h: &[LogHistogram; 2]) -> Percentiles {
        let mut both = h[0].clone();
        both.merge(&h[1]);
        Percentiles {
            count: both.count(),
            p50: both.quantile(0.5),
            p90: both.quantile(0.9),
            p99: both.quantile(0.99),
            max: both.max(),
        }
    }

    pub fn time_in_queue(&self) -> Percentiles {
        Self::percentiles(&self.in_queue)
    }

    pub fn time_to_ack(&self) -> Percentiles {
        Self::percentiles(&self.to_ack)
    }
}

/// When a queue will be empty, or full, if its rates stay as measured: Little's law applied
/// to the queue's depth and its arrival and departure rates.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Forecast {
    /// Messages per second in (published) and out (delivered, got, or dropped from the head).
    pub rate_in: f64,
    pub rate_out: f64,
    /// Seconds until the queue drains at the net rate; `None` while it does not shrink.
    pub time_to_empty_s: Option<f64>,
    /// Seconds until the queue reaches its max-length or max-length-bytes; `None` without a
    /// limit or while it does not grow.
    pub time_to_full_s: Option<f64>,
    /// How long a message arriving now waits before delivery at the current rate out
    /// (depth / rate out, Little's law); `None` while nothing goes out.
    pub expected_wait_s: Option<f64>,
}

impl Forecast {
    /// From the depth (messages, bytes), the limits, and the rates in and out.
    pub fn new(
        depth: u64,
        bytes: u64,
        max_length: Option<u64>,
        max_bytes: Option<u64>,
        rate_in: f64,
        rate_out: f64,
    ) -> Forecast {
        let net = rate_in - rate_out;
        let time_to_empty_s = if depth == 0 {
            Some(0.0)
        } else if net < 0.0 {
            Some(depth as f64 / -net)
        } else {
            None
        };
        let mut time_to_full_s = None;
        if net > 0.0 {
            if let Some(max) = max_length {
                time_to_full_s = Some(max.saturating_sub(depth) as f64 / net);
            }
            if let (Some(max), true) = (max_bytes, depth > 0) {
                // Bytes fill at the net message rate times the mean message size.
                let per_message = bytes as f64 / depth as f64;
                if per_message > 0.0 {
                    let t = max.saturating_sub(bytes) as f64 / (net * per_message);
                    time_to_full_s = Some(time_to_full_s.map_or(t, |s: f64| s.min(t)));
                }
            }
        }
        let expected_wait_s = if rate_out > 0.0 { Some(depth as f64 / rate_out) } else { None };
        Forecast { rate_in, rate_out, time_to_empty_s, time_to_full_s, expected_wait_s }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_are_differences_over_the_interval() {
        let mut m = RateMeter::default();
        m.sample(1_000, MessageCounts { publish: 10, ..Default::default() });
        assert_eq!(m.rate("publish"), 0.0);
        m.sample(6_000, MessageCounts { publish: 510, ack: 50, ..Default::default() });
        assert_eq!(m.rate("publish"), 100.0);
        assert_eq!(m.rate("ack"), 10.0);
        assert_eq!(m.rate("deliver"), 0.0);
    }

    /// Random durations: every quantile the histogram reports is within one bucket (9 %) of
    /// the exact quantile of the same values, and never above the maximum.
    #[test]
    fn quantiles_are_within_a_bucket_of_the_exact_ones() {
        use rand::{Rng, SeedableRng};
        for seed in 0..20u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let n = rng.gen_range(1..5_000);
            let mut values: Vec<u64> = (0..n).map(|_| 1 + (rng.gen::<f64>().powi(4) * 5e7) as u64).collect();
            let mut h = LogHistogram::default();
            for v in &values {
                h.record(*v);
            }
            values.sort_unstable();
            for q in [0.5, 0.9, 0.99, 1.0] {
                let exact = values[((q * n as f64).ceil() as usize).clamp(1, n) - 1];
                let got = h.quantile(q);
                assert!(got <= *values.last().unwrap(), "seed {seed} q {q}");
                let ratio = got as f64 / exact as f64;
                assert!(
                    (0.999..=1.095).contains(&ratio) || got.abs_diff(exact) <= 1,
                    "seed {seed} q {q}: {got} vs {exact}"
                );
            }
        }
    }

    #[test]
    fn windows_roll_and_old_values_leave() {
        let mut l = QueueLatency::default();
        l.roll(1);
        l.in_queue[0].record(100);
        l.roll(1 + LATENCY_WINDOW_MS);
        l.in_queue[0].record(300);
        assert_eq!(l.time_in_queue().count, 2);
        l.roll(1 + 2 * LATENCY_WINDOW_MS);
        assert_eq!(l.time_in_queue().count, 1);
        assert_eq!(l.time_in_queue().max, 300);
    }

    #[test]
    fn forecast_follows_the_net_rate() {
        let f = Forecast::new(1000, 1_000_000, Some(5000), None, 50.0, 150.0);
        assert_eq!(f.time_to_empty_s, Some(10.0));
        assert_eq!(f.time_to_full_s, None);
        assert_eq!(f.expected_wait_s, Some(1000.0 / 150.0));
        let f = Forecast::new(1000, 1_000_000, Some(5000), Some(2_000_000), 300.0, 100.0);
        assert_eq!(f.time_to_empty_s, None);
        // 4,000 messages to go at 200/s, or 1 MB at 200 KB/s: the bytes limit comes first.
        assert_eq!(f.time_to_full_s, Some(5.0));
    }
}
