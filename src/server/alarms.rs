//! Resource alarms: memory use above the limit, or disk writes failing. While one is raised,
//! publishing connections are blocked (connection.blocked, and their sockets are not read)
//! instead of the broker growing without bound or confirming what it could not write.

use crate::broker::Broker;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

const CHECK_EVERY: Duration = Duration::from_millis(250);

/// The resident set size of this process, in bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Total memory of the machine, in bytes.
pub fn total_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Parses a memory limit: a percentage of RAM ("40%") or a size ("512MiB", "2GB", "1000000").
pub fn parse_memory_limit(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if let Some(pct) = s.strip_suffix('%') {
        let p: f64 = pct.trim().parse().map_err(|_| format!("bad percentage '{s}'"))?;
        if !(0.0..=100.0).contains(&p) {
            return Err(format!("percentage out of range: '{s}'"));
        }
        let total = total_memory().ok_or("cannot read the machine's total memory")?;
        return Ok((total as f64 * p / 100.0) as u64);
    }
    let (num, mult) = [
        ("KiB", 1u64 << 10),
        ("MiB", 1 << 20),
        ("GiB", 1 << 30),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ]
    .iter()
    .find_map(|(suffix, m)| s.strip_suffix(suffix).map(|n| (n, *m)))
    .unwrap_or((s, 1));
    let n: u64 = num.trim().parse().map_err(|_| format!("bad memory size '{s}'"))?;
    Ok(n * mult)
}

/// Checks memory and disk every 250 ms and publishes the reason publishers are blocked.
pub fn spawn_monitor(broker: Arc<Broker>, memory_limit: u64) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            let rss = resident_bytes();
            // Past half the limit, queues start paging to disk so the limit is not reached.
            broker.set_memory_pressure(rss.is_some_and(|r| r > memory_limit / 2));
            let reason = match (broker.storage_failure(), rss) {
                (Some(disk), _) => Some(format!("disk writes are failing: {disk}")),
                (None, Some(rss)) if rss > memory_limit => {
                    Some(format!("memory use {} MiB is above the limit of {} MiB", rss >> 20, memory_limit >> 20))
                }
                _ => None,
            };
            // Clients are told when the kind of alarm changes, not each time the numbers do.
            let kind = |r: &Option<String>| r.as_deref().and_then(|s| s.split_whitespace().next()).map(str::to_owned);
            let changed = tx.send_if_modified(|cur| {
                if kind(cur) == kind(&reason) {
                    return false;
                }
                *cur = reason.clone();
                true
            });
            if changed {
                match &reason {
                    Some(r) => tracing::warn!("blocking publishers: {r}"),
                    None => tracing::info!("resource alarm cleared: publishers unblocked"),
                }
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_limits_parse() {
        assert_eq!(parse_memory_limit("1000"), Ok(1000));
        assert_eq!(parse_memory_limit("512MiB"), Ok(512 << 20));
        assert_eq!(parse_memory_limit("2GB"), Ok(2_000_000_000));
        assert!(parse_memory_limit("40%").unwrap() > 0);
        assert!(parse_memory_limit("abc").is_err());
        assert!(parse_memory_limit("140%").is_err());
    }
}
