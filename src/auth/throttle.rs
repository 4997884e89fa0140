//! Slows password guessing: after a few failed logins from one source address, each further
//! refusal from it waits, doubling up to a ceiling; a successful login, or a quiet spell,
//! forgets the source. The table is bounded: past its size the stalest entries go first, so a
//! flood from many addresses costs a fixed amount of memory.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Failures allowed from one source before refusals are delayed.
const FREE_FAILURES: u32 = 3;
/// The first delay, doubled with each further failure...
const FIRST_DELAY: Duration = Duration::from_millis(250);
/// ...up to this.
const MAX_DELAY: Duration = Duration::from_secs(5);
/// A source that has not failed for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(60);
/// Sources remembered at most.
const MAX_SOURCES: usize = 10_000;

#[derive(Debug, Default)]
pub struct LoginThrottle {
    sources: HashMap<IpAddr, (u32, Instant)>,
}

impl LoginThrottle {
    /// Records a failure; returns how long its refusal should wait, if at all.
    pub fn failed(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        if self.sources.len() >= MAX_SOURCES && !self.sources.contains_key(&ip) {
            self.sources.retain(|_, (_, at)| now.duration_since(*at) < FORGET_AFTER);
            if self.sources.len() >= MAX_SOURCES {
                let stalest = self.sources.iter().min_by_key(|(_, (_, at))| *at).map(|(ip, _)| *ip);
                if let Some(s) = stalest {
                    self.sources.remove(&s);
                }
            }
        }
        let entry = self.sources.entry(ip).or_insert((0, now));
        if now.duration_since(entry.1) >= FORGET_AFTER {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = now;
        let over = entry.0.checked_sub(FREE_FAILURES + 1)?;
        Some(FIRST_DELAY.saturating_mul(1u32 << over.min(8)).min(MAX_DELAY))
    }

    pub fn succeeded(&mut self, ip: IpAddr) {
        self.sources.remove(&ip);
    }

    pub fn len(&self) -> usize {
        self.sources.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_after_the_free_failures_and_a_success_forgets() {
        let mut t = LoginThrottle::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let now = Instant::now();
        let delays: Vec<_> = (0..12).map(|_| t.failed(ip, now)).collect();
        assert_eq!(&delays[..3], &[None, None, None]);
        assert_eq!(delays[3], Some(Duration::from_millis(250)));
        assert_eq!(delays[4], Some(Duration::from_millis(500)));
        assert_eq!(delays[7], Some(Duration::from_secs(4)));
        assert_eq!(delays[11], Some(MAX_DELAY));
        // Another source is not affected.
        assert_eq!(t.failed("10.0.0.2".parse().unwrap(), now), None);
        t.succeeded(ip);
        assert_eq!(t.failed(ip, now), None);
        // A quiet minute forgets too.
        for _ in 0..5 {
            t.failed(ip, now);
        }
        assert_eq!(t.failed(ip, now + FORGET_AFTER), None);
    }

    #[test]
    fn the_table_stays_bounded_under_a_flood_of_sources() {
        let mut t = LoginThrottle::default();
        let now = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 500) {
            t.failed(IpAddr::from(i.to_be_bytes()), now + Duration::from_millis(i as u64));
        }
        assert!(t.len() <= MAX_SOURCES);
    }
}
