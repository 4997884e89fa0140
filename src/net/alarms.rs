//! Resource alarms: memory use above the limit, free disk space below its limit, or disk
//! writes failing. While one is raised, publishing connections are blocked (connection.blocked,
//! and their sockets are not read) instead of the broker growing without bound or confirming
//! what it could not write.
//!
//! Memory pressure comes first: past half the memory limit, every queue without a log of its
//! own moves its messages past the in-memory window to disk (in order), so memory is given
//! back and publishing goes on at the speed of the disk. The memory alarm is the safety net
//! behind that; the disk alarm is what finally blocks a flood nobody consumes.
//!
//! In a cluster, alarms are cluster-wide, as RabbitMQ's: a member short of memory or disk
//! blocks the publishers of every node (the cluster layer reports the other members' alarms).

use crate::broker::{alarm_resource, Broker};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// Often enough that a fast flood cannot add much memory between two looks.
const CHECK_EVERY: Duration = Duration::from_millis(100);

/// The resident set size of this process, in bytes.
pub fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// File descriptors this process has open, and the most it may (the soft limit).
pub fn file_descriptors() -> (u64, u64) {
    let used = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `lim` is a properly sized out-parameter.
    let total = if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } == 0 { lim.rlim_cur as u64 } else { 0 };
    (used, total)
}

/// Context switches of this process so far, voluntary and not, summed over its threads (the
/// kernel counts them per thread, in /proc/self/task/*/status).
pub fn context_switches() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|status| {
            status
                .lines()
                .filter(|l| l.starts_with("voluntary_ctxt_switches:") || l.starts_with("nonvoluntary_ctxt_switches:"))
                .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>()
        })
        .sum()
}

/// Free bytes on the file system that holds `path` (for unprivileged users, as `df` shows).
pub fn free_disk_bytes(path: &std::path::Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: statvfs is a plain C struct of integers, for which all zeroes is a valid value.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out-parameter.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    Some(st.f_bavail as u64 * st.f_frsize as u64)
}

/// Returns the allocator's free memory to the system (glibc's `malloc_trim`).
pub(crate) fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator holds free; it takes no pointers.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Raises the soft limit on open files to the hard limit (every durable queue keeps files
/// open, and every connection is one); returns (soft before, soft now, hard).
pub fn raise_open_files_limit() -> Option<(u64, u64, u64)> {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit read and write the plain struct passed to them.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    let before = lim.rlim_cur;
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    Some((before as u64, lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Descriptors kept free of both budgets below: the listeners, the definitions journal, the
/// data directory, the runtime's own (epoll, eventfd), standard streams and a margin.
const FD_RESERVE: u64 = 64;

/// How the open files limit is shared out: log files (queue segments and ack files, opened
/// and closed on demand beyond their budget) get a quarter of what is not reserved, and
/// connections the rest; a connection past its budget is refused, as RabbitMQ refuses them
/// when its file descriptors run out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FdBudget {
    pub total: u64,
    pub files: u64,
    pub connections: u64,
}

impl FdBudget {
    pub fn new(limit: u64) -> FdBudget {
        let usable = limit.saturating_sub(FD_RESERVE).max(64);
        let files = (usable / 4).max(32);
        FdBudget { total: limit, files, connections: usable - files }
    }
}

/// Where the disk alarm looks, and below how many free bytes it goes off.
#[derive(Debug, Clone)]
pub struct DiskLimit {
    pub path: PathBuf,
    pub free_limit: u64,
}

/// Checks memory and disk every 100 ms, pages queues to disk under memory pressure, and
/// publishes the reason publishers are blocked.
pub fn spawn_monitor(
    broker: Arc<Broker>,
    memory_limit: u64,
    disk: Option<DiskLimit>,
) -> watch::Receiver<Option<String>> {
    let (tx, rx) = watch::channel(None);
    // A page-out under way: the next starts once it is done, and the checks go on meanwhile.
    let paging = Arc::new(std::sync::atomic::AtomicBool::new(false));
    tokio::spawn(async move {
        let mut local: Option<String> = None;
        let mut tick = tokio::time::interval(CHECK_EVERY);
        loop {
            tick.tick().await;
            let rss = resident_bytes();
            let free = disk.as_ref().and_then(|d| free_disk_bytes(&d.path).map(|f| (f, d.free_limit)));
            let reason = match (broker.storage_failure(), rss, free) {
                (Some(disk), _, _) => Some(format!("disk writes are failing: {disk}")),
                (None, _, Some((free, limit))) if free < limit => {
                    Some(format!("disk free space {} MiB is below the limit of {} MiB", free >> 20, limit >> 20))
                }
                (None, Some(rss), _) if rss > memory_limit => {
                    Some(format!("memory use {} MiB is above the limit of {} MiB", rss >> 20, memory_limit >> 20))
                }
                _ => None,
            };
            // This node's alarm is logged and shown when its kind changes, not each time the
            // numbers do.
            if reason.as_deref().map(alarm_resource) != local.as_deref().map(alarm_resource) {
                match &reason {
                    Some(r) => tracing::warn!("blocking publishers: {r}"),
                    None => tracing::info!("resource alarm cleared: publishers unblocked"),
                }
                broker.set_alarm(reason.clone());
            }
            local = reason;
            // Clients hear RabbitMQ's words for every alarm in the cluster, this node's and
            // other members' alike: "low on memory", "low on disk", "low on memory & disk".
            let blocked = blocked_by(local.as_deref(), &broker.remote_alarms());
            tx.send_if_modified(|cur| {
                let changed = *cur != blocked;
                if changed {
                    cur.clone_from(&blocked);
                }
                changed
            });
            // Past half the limit, queues page to disk so the limit is not reached. Paging
            // waits on the disk, so it runs beside these checks, not in their way: a flood
            // that passes the limit while a page-out is under way blocks its publishers at
            // the next check (100 ms), not once the page-out is done.
            let pressure = rss.is_some_and(|r| r > memory_limit / 2);
            broker.set_memory_pressure(pressure);
            if pressure && !paging.swap(true, std::sync::atomic::Ordering::AcqRel) {
                let (b, done) = (broker.clone(), paging.clone());
                // Copying messages into log buffers is work for a blocking thread. Then the
                // allocator gives what was freed back to the system: glibc keeps freed heap
                // memory otherwise, and resident memory (what this alarm reads) would not fall.
                tokio::task::spawn_blocking(move || {
                    b.page_out();
                    release_free_memory();
                    done.store(false, std::sync::atomic::Ordering::Release);
                });
            }
            if tx.is_closed() {
                return;
            }
        }
    });
    rx
}

/// What `connection.blocked` says, as RabbitMQ words it: "low on " and the resources short
/// on any node, memory before disk, joined by " & "; `None` when no node is short.
fn blocked_by(local: Option<&str>, remote: &[(String, String)]) -> Option<String> {
    let short = |resource: &str| {
        local.is_some_and(|r| alarm_resource(r) == resource) || remote.iter().any(|(_, r)| r == resource)
    };
    let resources: Vec<&str> = ["memory", "disk"].into_iter().filter(|r| short(r)).collect();
    (!resources.is_empty()).then(|| format!("low on {}", resources.join(" & ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_connections_are_told_rabbitmqs_words_for_every_alarm_in_the_cluster() {
        assert_eq!(blocked_by(None, &[]), None);
        assert_eq!(
            blocked_by(Some("memory use 9 MiB is above the limit of 8 MiB"), &[]).as_deref(),
            Some("low on memory")
        );
        assert_eq!(blocked_by(Some("disk writes are failing: EIO"), &[]).as_deref(), Some("low on disk"));
        let remote = [("n2".to_string(), "disk".to_string()), ("n3".to_string(), "disk".to_string())];
        assert_eq!(blocked_by(None, &remote).as_deref(), Some("low on disk"));
        assert_eq!(blocked_by(Some("memory use"), &remote).as_deref(), Some("low on memory & disk"));
    }

    #[test]
    fn file_descriptors_are_shared_between_files_and_connections() {
        assert_eq!(FdBudget::new(1024), FdBudget { total: 1024, files: 240, connections: 720 });
        // Never less than a working minimum, whatever the limit.
        let tiny = FdBudget::new(16);
        assert!(tiny.files >= 32 && tiny.connections >= 32);
    }
}
