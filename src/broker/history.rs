//! Sample histories: what the management API returns as `samples`, `avg` and `avg_rate`
//! beside a count when a client asks for a time range (`?msg_rates_age=60&msg_rates_incr=5`,
//! `lengths_age`/`lengths_incr` for queue lengths), as RabbitMQ's management plugin does.
//!
//! The statistics sampler records each object's counters every few seconds, off the message
//! path. A [`History`] keeps only the points where the values changed, for a bounded time
//! ([`GLOBAL_RETENTION_MS`] for the broker's totals, [`OBJECT_RETENTION_MS`] for a queue, an
//! exchange or a channel): an idle object keeps one point or none, so ten thousand idle
//! queues cost nothing here. A value at time `t` is that of the last point at or before `t`.

use std::collections::VecDeque;

/// How long the broker-wide totals are kept: RabbitMQ's default retention at its finest
/// increment (605 s at 5 s).
pub const GLOBAL_RETENTION_MS: u64 = 605_000;
/// How long a queue's, an exchange's or a channel's points are kept: enough for the page's
/// charts and the usual `msg_rates_age=60`; older times answer with the oldest point kept.
pub const OBJECT_RETENTION_MS: u64 = 125_000;
/// The most samples one range may ask for (a larger one is a 400).
pub const MAX_SAMPLES: u64 = 1_000;

/// A time range a client asked for: the last `age_ms`, one sample every `incr_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Range {
    pub age_ms: u64,
    pub incr_ms: u64,
}

impl Range {
    /// From the query's `<prefix>_age` and `<prefix>_incr` (seconds, as RabbitMQ takes
    /// them). Neither given: none; one alone, or not positive integers: an error.
    pub fn parse(age: Option<&str>, incr: Option<&str>, prefix: &str) -> Result<Option<Range>, String> {
        let (age, incr) = match (age, incr) {
            (None, None) => return Ok(None),
            (Some(a), Some(i)) => (a, i),
            _ => return Err(format!("{prefix}_age and {prefix}_incr go together")),
        };
        let secs = |v: &str, name: &str| match v.trim().parse::<u64>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(format!("{prefix}_{name} must be a positive integer of seconds, got '{v}'")),
        };
        let (age, incr) = (secs(age, "age")?, secs(incr, "incr")?);
        if age / incr + 1 > MAX_SAMPLES {
            return Err(format!("{prefix}_age / {prefix}_incr asks for more than {MAX_SAMPLES} samples"));
        }
        Ok(Some(Range { age_ms: age * 1000, incr_ms: incr * 1000 }))
    }

    /// The sample times, newest first: the present rounded down to the increment, then back
    /// by one increment at a time over the age, as RabbitMQ aligns them.
    pub fn timestamps(&self, now_ms: u64) -> impl Iterator<Item = u64> {
        let newest = now_ms - now_ms % self.incr_ms;
        let oldest = newest.saturating_sub(self.age_ms);
        let incr = self.incr_ms;
        (0..=(newest - oldest) / incr).map(move |i| newest - i * incr)
    }
}

/// One series as the API shows it: `(timestamp ms, value)` newest first, and the averages
/// RabbitMQ adds (only with two samples or more).
#[derive(Debug, Clone, PartialEq)]
pub struct Samples {
    pub points: Vec<(u64, u64)>,
    pub avg: Option<f64>,
    pub avg_rate: Option<f64>,
}

impl Samples {
    fn new(points: Vec<(u64, u64)>) -> Self {
        let (avg, avg_rate) = match (points.first(), points.last()) {
            (Some(&(t2, s2)), Some(&(t1, s1))) if points.len() > 1 && t2 > t1 => {
                let total: u64 = points.iter().map(|p| p.1).sum();
                (Some(total as f64 / points.len() as f64), Some((s2 as f64 - s1 as f64) * 1000.0 / (t2 - t1) as f64))
            }
            _ => (None, None),
        };
        Samples { points, avg, avg_rate }
    }
}

/// The changes of `N` counters over the retention time.
#[derive(Debug, Clone)]
pub struct History<const N: usize> {
    points: VecDeque<(u64, [u64; N])>,
    retention_ms: u64,
}

impl<const N: usize> History<N> {
    pub fn new(retention_ms: u64) -> Self {
        History { points: VecDeque::new(), retention_ms }
    }

    /// Records the values at `now_ms`; a point is added only when they changed, and points
    /// older than the retention are dropped (keeping the one that gives the horizon's value).
    pub fn record(&mut self, now_ms: u64, values: [u64; N]) {
        let changed = match self.points.back() {
            Some((_, last)) => *last != values,
            None => values.iter().any(|&v| v != 0),
        };
        if changed {
            self.points.push_back((now_ms, values));
        }
        let horizon = now_ms.saturating_sub(self.retention_ms);
        while self.points.len() > 1 && self.points[1].0 <= horizon {
            self.points.pop_front();
        }
        if self.points.capacity() > 2 * self.points.len() + 8 {
            self.points.shrink_to_fit();
        }
    }

    /// The values at `t`: the last point at or before it, zeros before the first.
    pub fn at(&self, t: u64) -> [u64; N] {
        let i = self.points.partition_point(|p| p.0 <= t);
        if i == 0 {
            [0; N]
        } else {
            self.points[i - 1].1
        }
    }

    /// Field `field` over `range`, newest first.
    pub fn samples(&self, range: &Range, now_ms: u64, field: usize) -> Samples {
        Samples::new(range.timestamps(now_ms).map(|t| (t, self.at(t)[field])).collect())
    }
}

impl<const N: usize> Default for History<N> {
    fn default() -> Self {
        History::new(OBJECT_RETENTION_MS)
    }
}

/// `N` counters' rates from the last two samples, and their history.
#[derive(Debug, Clone, Default)]
pub struct Meter<const N: usize> {
    last: Option<(u64, [u64; N])>,
    rates: Option<[f64; N]>,
    pub history: History<N>,
}

impl<const N: usize> Meter<N> {
    pub fn new(retention_ms: u64) -> Self {
        Meter { last: None, rates: None, history: History::new(retention_ms) }
    }
    pub fn sample(&mut self, now_ms: u64, values: [u64; N]) {
        if let Some((at, before)) = self.last {
            let dt = now_ms.saturating_sub(at) as f64 / 1000.0;
            if dt > 0.0 {
                let mut rates = [0.0; N];
                for i in 0..N {
                    rates[i] = (values[i] as f64 - before[i] as f64) / dt;
                }
                self.rates = Some(rates);
            }
        }
        self.last = Some((now_ms, values));
        self.history.record(now_ms, values);
    }
    /// Per-second change of each counter over the last sampling interval (0 before two samples).
    pub fn rates(&self) -> [f64; N] {
        self.rates.unwrap_or([0.0; N])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_parse_as_rabbitmq_takes_them() {
        assert_eq!(Range::parse(None, None, "msg_rates"), Ok(None));
        assert_eq!(
            Range::parse(Some("60"), Some("5"), "msg_rates"),
            Ok(Some(Range { age_ms: 60_000, incr_ms: 5_000 }))
        );
        assert!(Range::parse(Some("60"), None, "msg_rates").is_err());
        assert!(Range::parse(Some("60"), Some("0"), "msg_rates").is_err());
        assert!(Range::parse(Some("x"), Some("5"), "lengths").is_err());
        assert!(Range::parse(Some("100000"), Some("1"), "lengths").is_err());
    }

    #[test]
    fn timestamps_are_aligned_to_the_increment_newest_first() {
        let r = Range { age_ms: 10_000, incr_ms: 5_000 };
        assert_eq!(r.timestamps(1_000_012_345).collect::<Vec<_>>(), vec![1_000_010_000, 1_000_005_000, 1_000_000_000]);
    }

    #[test]
    fn values_are_those_of_the_last_change_and_averages_as_rabbitmq() {
        let mut h = History::<2>::new(60_000);
        h.record(1_000, [0, 0]); // all zero, never moved: nothing kept
        assert!(h.points.is_empty());
        h.record(10_000, [10, 1]);
        h.record(15_000, [10, 1]); // unchanged: no point
        h.record(20_000, [30, 2]);
        assert_eq!(h.points.len(), 2);
        assert_eq!(h.at(5_000), [0, 0]);
        assert_eq!(h.at(12_000), [10, 1]);
        assert_eq!(h.at(25_000), [30, 2]);
        let s = h.samples(&Range { age_ms: 20_000, incr_ms: 10_000 }, 21_000, 0);
        assert_eq!(s.points, vec![(20_000, 30), (10_000, 10), (0, 0)]);
        assert_eq!(s.avg, Some(40.0 / 3.0));
        assert_eq!(s.avg_rate, Some(30.0 * 1000.0 / 20_000.0));
        let one = h.samples(&Range { age_ms: 1_000, incr_ms: 5_000 }, 21_000, 1);
        assert_eq!((one.points, one.avg, one.avg_rate), (vec![(20_000, 2)], None, None));
    }

    #[test]
    fn old_points_go_but_the_horizon_keeps_its_value() {
        let mut h = History::<1>::new(10_000);
        for i in 1..=100u64 {
            h.record(i * 1_000, [i]);
        }
        // Retention 10 s at 1 s: about ten points, and the value 10 s ago is still known.
        assert!(h.points.len() <= 12, "{}", h.points.len());
        assert_eq!(h.at(90_000), [90]);
        // An idle object keeps one point however long it stays idle.
        for i in 101..=200u64 {
            h.record(i * 1_000, [100]);
        }
        assert_eq!(h.points.len(), 1);
        assert_eq!(h.at(150_000), [100]);
    }

    #[test]
    fn a_meter_gives_rates_from_its_last_two_samples() {
        let mut m = Meter::<2>::default();
        m.sample(0, [0, 100]);
        assert_eq!(m.rates(), [0.0, 0.0]);
        m.sample(5_000, [50, 90]);
        assert_eq!(m.rates(), [10.0, -2.0]);
        assert_eq!(m.history.at(5_000), [50, 90]);
    }
}
