//! The broker's wall clock. Message expiry, audit events, dead-letter records and sampled
//! statistics are kept in milliseconds since the Unix epoch, so that a TTL keeps counting
//! across a restart and times read the same in the API as in the logs.

/// Wall-clock milliseconds since the epoch (0 if the system clock is before it).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}
