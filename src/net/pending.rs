//! Connections not yet logged in, counted by source address, so one host cannot hold the
//! broker's connection slots (and its handshake timers) with sockets that never
//! authenticate: past [`Pending::limit`] such connections from one IP address, a new one
//! from it is closed at once. Other sources are not affected, and a connection leaves the
//! count as soon as its login succeeds (or it ends), so a client that opens many
//! connections and logs in on each is never refused.
//!
//! Each pending connection holds a [`PendingGuard`]; dropping it takes it off the count.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

#[derive(Debug)]
pub struct Pending {
    limit: u32,
    by_source: Mutex<HashMap<IpAddr, u32>>,
}

/// One connection counted as not yet logged in.
#[derive(Debug)]
pub struct PendingGuard {
    pending: Arc<Pending>,
    source: IpAddr,
}

impl Pending {
    pub fn new(limit: u32) -> Arc<Pending> {
        Arc::new(Pending { limit, by_source: Mutex::new(HashMap::new()) })
    }

    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Counts a new connection from `source`; `None` when that source already has `limit`
    /// connections waiting to log in.
    pub fn enter(self: &Arc<Self>, source: IpAddr) -> Option<PendingGuard> {
        let mut m = self.by_source.lock();
        let n = m.entry(source).or_insert(0);
        if *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(PendingGuard { pending: self.clone(), source })
    }

    /// Connections from `source` waiting to log in.
    pub fn count(&self, source: IpAddr) -> u32 {
        self.by_source.lock().get(&source).copied().unwrap_or(0)
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        let mut m = self.pending.by_source.lock();
        if let Some(n) = m.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                // No entry is kept for a source with none pending: the map stays as small
                // as the number of sources handshaking right now.
                m.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_is_refused_past_its_limit_and_others_are_not() {
        let p = Pending::new(2);
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        let g1 = p.enter(a).unwrap();
        let _g2 = p.enter(a).unwrap();
        assert!(p.enter(a).is_none());
        let _g3 = p.enter(b).unwrap();
        drop(g1);
        assert_eq!(p.count(a), 1);
        let _g4 = p.enter(a).unwrap();
        assert!(p.enter(a).is_none());
        drop((_g2, _g4));
        assert_eq!(p.count(a), 0);
        assert!(p.by_source.lock().get(&a).is_none());
    }
}
