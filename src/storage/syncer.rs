//! Group commit: appends go into per-file buffers; one thread writes every dirty file, then
//! fdatasyncs them all, then advances a durable watermark. A confirm waits for the watermark
//! to pass its ticket, so many publishers share each fsync.

use bytes::BytesMut;
use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Weak;
use tokio::sync::watch;

/// Write buffers larger than this are released after a write instead of kept.
const KEEP_BUFFER: usize = 64 * 1024;
/// A file opened with [`LogFile::create_zero_filled`] is kept this far ahead of its last
/// write with zeros: an fdatasync of a write into blocks the file already has (and covers
/// with its size) flushes only the data, while one that grows the file must also commit the
/// new size and blocks through the file system's journal. On ext4 here: 275 µs appending
/// against 195 µs into zeroed blocks. One round in this many bytes pays for the zeros.
const ZERO_AHEAD: u64 = 1024 * 1024;
/// A round that had more than this to write means appends outrun the disk: publishers that
/// write to logs pause until a round writes less, so write buffers stay bounded in memory.
const BACKLOG_HIGH: usize = 8 * 1024 * 1024;

/// How many log files may be open at once, and which are: a broker with more queue files
/// than its file descriptor limit allows closes the ones used longest ago and opens them
/// again on use. A clock sweep: each file has a `used` bit, set on every use and cleared as
/// the sweep passes; the sweep closes files whose bit is clear, with nothing buffered and
/// not waiting for the syncer.
struct OpenFiles {
    budget: AtomicUsize,
    open: AtomicUsize,
    /// Files with a descriptor, in the sweep's order (dropped files linger until swept).
    ring: Mutex<VecDeque<Weak<LogFile>>>,
}

static OPEN_FILES: OpenFiles =
    OpenFiles { budget: AtomicUsize::new(usize::MAX), open: AtomicUsize::new(0), ring: Mutex::new(VecDeque::new()) };

/// Limits how many log files (queue segments, ack files, journals) are open at once.
/// The process's storage reads, descriptor reopens and journalled definition changes, for
/// the API's node counters (the syncer's round counts the writes and fsyncs). Reads happen
/// when a queue reads messages back from disk, never per message published.
#[derive(Default)]
struct IoCounters {
    reads: AtomicU64,
    read_bytes: AtomicU64,
    read_us: AtomicU64,
    reopens: AtomicU64,
    definition_changes: AtomicU64,
}

static IO: IoCounters = IoCounters {
    reads: AtomicU64::new(0),
    read_bytes: AtomicU64::new(0),
    read_us: AtomicU64::new(0),
    reopens: AtomicU64::new(0),
    definition_changes: AtomicU64::new(0),
};

/// A definition change was appended to the journal.
pub fn count_definition_change() {
    IO.definition_changes.fetch_add(1, Ordering::Relaxed);
}

pub fn set_open_files_budget(n: usize) {
    OPEN_FILES.budget.store(n.max(8), Ordering::Relaxed);
}

/// Log files open now.
pub fn open_files() -> usize {
    OPEN_FILES.open.load(Ordering::Relaxed)
}

impl OpenFiles {
    /// Counts a newly opened file, and closes others while over the budget.
    fn opened(&self, file: &Arc<LogFile>) {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let mut ring = self.ring.lock();
        // Dropped files leave dead entries: clear them out once they are half the ring.
        if ring.len() > 2 * open + 64 {
            ring.retain(|w| w.strong_count() > 0);
        }
        ring.push_back(Arc::downgrade(file));
        self.sweep(&mut ring);
    }

    /// Closes files while over the budget, if any; after a sync round, whose files could not
    /// be closed while they waited for it.
    fn sweep_if_over(&self) {
        if self.open.load(Ordering::Acquire) > self.budget.load(Ordering::Relaxed) {
            self.sweep(&mut self.ring.lock());
        }
    }

    fn sweep(&self, ring: &mut VecDeque<Weak<LogFile>>) {
        let budget = self.budget.load(Ordering::Relaxed);
        // Two passes at most: the first clears `used` bits, the second finds them clear.
        let mut steps = 2 * ring.len();
        while self.open.load(Ordering::Acquire) > budget && steps > 0 {
            steps -= 1;
            let Some(w) = ring.pop_front() else { break };
            let Some(f) = w.upgrade() else { continue };
            if f.used.swap(false, Ordering::AcqRel) {
                ring.push_back(w);
                continue;
            }
            // A file in use right now (its lock taken) is passed over, never waited for.
            let closed = match f.state.try_lock() {
                Some(mut st) if st.buf.is_empty() && !st.dirty && !st.unsynced => st.file.take().is_some(),
                _ => false,
            };
            if closed {
                self.open.fetch_sub(1, Ordering::AcqRel);
            } else {
                ring.push_back(w);
            }
        }
    }
}

/// A file that is only appended to, through a buffer the syncer drains. Its descriptor may be
/// closed while it is idle (see [`OpenFiles`]) and is opened again on the next use.
#[derive(Debug)]
pub struct LogFile {
    pub path: PathBuf,
    /// Written out but never fdatasync'ed: the file of a transient queue paging to disk,
    /// whose content is discarded at start anyway.
    volatile: bool,
    /// Written at positions, kept [`ZERO_AHEAD`] ahead with zeros (so its length on disk is
    /// not where its records end: readers stop at the zeros).
    zero_filled: bool,
    /// Used since the file cache's sweep last passed.
    used: AtomicBool,
    state: Mutex<LogFileState>,
}

impl Drop for LogFile {
    fn drop(&mut self) {
        if self.state.get_mut().file.is_some() {
            OPEN_FILES.open.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[derive(Debug, Default)]
struct LogFileState {
    /// The descriptor, while open; shared so that an fsync runs without the lock.
    file: Option<Arc<File>>,
    /// It was open before (a later open is a reopen, counted for the API).
    was_open: bool,
    /// Written through this descriptor and not yet fsynced: it stays open until the fsync,
    /// which must go through a descriptor that was open when the data was written to see a
    /// write-back error.
    unsynced: bool,
    buf: BytesMut,
    /// Bytes appended so far, written or still buffered.
    len: u64,
    /// On the syncer's dirty list (or about to be put back on it).
    dirty: bool,
    /// The newest ticket of an append to this file.
    max_ticket: u64,
    /// For a zero-filled file, how far it is zeroed (or written) on disk.
    allocated: u64,
}

impl LogFileState {
    /// Writes the buffer out; returns how many bytes it wrote.
    fn write_buffer(&mut self, owner: &Arc<LogFile>) -> std::io::Result<usize> {
        let n = self.buf.len();
        if n > 0 {
            let file = owner.descriptor(self)?;
            // On failure the bytes stay buffered for the next attempt.
            if owner.zero_filled {
                use std::os::unix::fs::FileExt;
                let at = self.len - n as u64;
                if self.len > self.allocated {
                    // Zeros first, so the fdatasync that makes them durable is the only one
                    // in the next ZERO_AHEAD bytes that also commits a new file size.
                    let end = self.len + ZERO_AHEAD;
                    let from = self.allocated.max(at);
                    file.write_all_at(&vec![0u8; (end - from) as usize], from)?;
                    self.allocated = end;
                }
                file.write_all_at(&self.buf, at)?;
            } else {
                (&*file).write_all(&self.buf)?;
            }
            self.unsynced = !owner.volatile;
            if self.buf.capacity() > KEEP_BUFFER {
                // A burst grew it: give the memory back rather than hold it per file.
                self.buf = BytesMut::new();
            } else {
                self.buf.clear();
            }
        }
        Ok(n)
    }
}

impl LogFile {
    /// Opens (creating if needed) a file for appending; `len` is its current length.
    pub fn open(path: &Path) -> std::io::Result<Arc<LogFile>> {
        Self::open_with(path, false)
    }

    /// Opens a file whose content need not survive a crash: it is written, never synced.
    pub fn open_volatile(path: &Path) -> std::io::Result<Arc<LogFile>> {
        Self::open_with(path, true)
    }

    /// Creates a new, empty file that is kept zero-filled ahead of its writes (see
    /// [`ZERO_AHEAD`]); whoever reads it back must take a run of zeros after the last record
    /// for the end. Replaces a file of that name.
    pub fn create_zero_filled(path: &Path) -> std::io::Result<Arc<LogFile>> {
        let file = std::fs::OpenOptions::new().create(true).truncate(true).write(true).read(true).open(path)?;
        Ok(Self::with_file(path, file, 0, false, true))
    }

    fn open_with(path: &Path, volatile: bool) -> std::io::Result<Arc<LogFile>> {
        let file = std::fs::OpenOptions::new().create(true).append(true).read(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self::with_file(path, file, len, volatile, false))
    }

    fn with_file(path: &Path, file: File, len: u64, volatile: bool, zero_filled: bool) -> Arc<LogFile> {
        let log = Arc::new(LogFile {
            path: path.to_path_buf(),
            volatile,
            zero_filled,
            used: AtomicBool::new(true),
            state: Mutex::new(LogFileState { file: Some(Arc::new(file)), was_open: true, len, ..Default::default() }),
        });
        OPEN_FILES.opened(&log);
        log
    }

    /// The open descriptor, opening the file again if the cache closed it.
    fn descriptor(self: &Arc<Self>, st: &mut LogFileState) -> std::io::Result<Arc<File>> {
        self.used.store(true, Ordering::Relaxed);
        if let Some(f) = &st.file {
            return Ok(f.clone());
        }
        // It exists: it was created when first opened, and is never closed while it holds
        // unwritten bytes.
        // A zero-filled file is written at positions, which O_APPEND would ignore.
        let f =
            Arc::new(std::fs::OpenOptions::new().append(!self.zero_filled).write(true).read(true).open(&self.path)?);
        st.file = Some(f.clone());
        if std::mem::replace(&mut st.was_open, true) {
            IO.reopens.fetch_add(1, Ordering::Relaxed);
        }
        OPEN_FILES.opened(self);
        Ok(f)
    }

    pub fn len(&self) -> u64 {
        self.state.lock().len
    }

    /// Appends what `write` puts in the buffer; returns (offset of the append, ticket).
    pub fn append(self: &Arc<Self>, syncer: &Syncer, write: impl FnOnce(&mut BytesMut)) -> (u64, u64) {
        let mut st = self.state.lock();
        let offset = st.len;
        let before = st.buf.len();
        write(&mut st.buf);
        st.len += (st.buf.len() - before) as u64;
        // Register as dirty before taking the ticket: a watermark covering the ticket then
        // covers this file's write too.
        if !st.dirty {
            st.dirty = true;
            syncer.mark_dirty(self.clone());
        }
        let ticket = syncer.next_ticket.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_ticket = ticket;
        (offset, ticket)
    }

    /// The syncer's write of the buffer (fsync follows). Returns true when the file holds
    /// appends whose tickets the current round does not cover: it needs another round.
    fn write_out(self: &Arc<Self>, covered: u64) -> std::io::Result<(bool, usize)> {
        let mut st = self.state.lock();
        let n = st.write_buffer(self)?;
        st.dirty = st.max_ticket > covered;
        Ok((st.dirty, n))
    }

    pub fn sync(self: &Arc<Self>) -> std::io::Result<()> {
        if self.volatile {
            return Ok(());
        }
        // The fsync runs without the lock, so appends to this file go on meanwhile.
        let file = {
            let mut st = self.state.lock();
            if !st.unsynced {
                return Ok(());
            }
            st.unsynced = false;
            self.descriptor(&mut st)?
        };
        let synced = file.sync_data();
        if synced.is_err() {
            self.state.lock().unsynced = true;
        }
        synced
    }

    /// Writes the buffer to the file (no fsync); the file stays on the syncer's list if it was.
    pub fn write_buffered(self: &Arc<Self>) -> std::io::Result<()> {
        self.state.lock().write_buffer(self).map(drop)
    }

    /// Reads `len` bytes at `offset`, writing the buffer out first if it holds them.
    pub fn read_at(self: &Arc<Self>, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        let file = {
            let mut st = self.state.lock();
            // Written, not synced: the file stays on the syncer's list if it was.
            st.write_buffer(self)?;
            self.descriptor(&mut st)?
        };
        let mut out = vec![0u8; len];
        let started = std::time::Instant::now();
        file.read_exact_at(&mut out, offset)?;
        IO.reads.fetch_add(1, Ordering::Relaxed);
        IO.read_bytes.fetch_add(len as u64, Ordering::Relaxed);
        IO.read_us.fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        Ok(out)
    }
}

/// Appends gathered in memory rather than in a [`LogFile`]'s buffer, written by the sync
/// thread as a round starts: a stream seals what was published since the last round into
/// one chunk, so a burst of publishes makes one chunk, one write and one fsync.
pub trait Flusher: Send + Sync {
    /// Writes what is pending (no fsync); returns the bytes written, and whether it holds
    /// appends whose tickets are past `covered` (the round's watermark), which need
    /// another round: it stays listed then.
    fn write_pending(&self, covered: u64) -> std::io::Result<(bool, usize)>;
    /// Makes what was written durable.
    fn sync(&self) -> std::io::Result<()>;
    /// The round that wrote and synced it succeeded: what was written is durable now.
    fn synced(&self);
    /// Names it in error messages.
    fn label(&self) -> String;
}

/// What the next round writes: files with buffered appends, and flushers with pending ones.
#[derive(Default)]
struct Dirty {
    files: Vec<Arc<LogFile>>,
    flushers: Vec<Arc<dyn Flusher>>,
}

impl Dirty {
    fn is_empty(&self) -> bool {
        self.files.is_empty() && self.flushers.is_empty()
    }
}

impl std::fmt::Debug for Dirty {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dirty").field("files", &self.files.len()).field("flushers", &self.flushers.len()).finish()
    }
}

/// The group-commit thread's shared state.
#[derive(Debug)]
pub struct Syncer {
    dirty: Mutex<Dirty>,
    wake: Condvar,
    next_ticket: AtomicU64,
    durable: watch::Sender<u64>,
    /// The last write or fsync error, cleared when a round succeeds again.
    failure: Mutex<Option<String>>,
    failed: AtomicBool,
    stop: AtomicBool,
    /// Held for a whole round, so [`Syncer::flush_now`] waits for one in progress.
    round_lock: Mutex<()>,
    /// The last round had more than [`BACKLOG_HIGH`] to write; publishers wait meanwhile,
    /// and are woken through these when a round writes less.
    backlogged: AtomicBool,
    drain_waiters: Mutex<Vec<Arc<tokio::sync::Notify>>>,
    /// Rounds, bytes, fsync times and batch sizes, for metrics; written by the sync thread.
    stats: Mutex<crate::broker::store::SyncStats>,
    /// The watermark the last successful round reached, for the batch size of the next.
    last_covered: AtomicU64,
}

impl Syncer {
    pub fn start() -> Arc<Syncer> {
        let (tx, _) = watch::channel(0);
        let syncer = Arc::new(Syncer {
            dirty: Mutex::new(Dirty::default()),
            wake: Condvar::new(),
            next_ticket: AtomicU64::new(0),
            durable: tx,
            failure: Mutex::new(None),
            failed: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            round_lock: Mutex::new(()),
            backlogged: AtomicBool::new(false),
            drain_waiters: Mutex::new(Vec::new()),
            stats: Mutex::new(Default::default()),
            last_covered: AtomicU64::new(0),
        });
        let s = syncer.clone();
        std::thread::Builder::new().name("hare-sync".into()).spawn(move || s.run()).expect("spawn the sync thread");
        syncer
    }

    fn mark_dirty(&self, file: Arc<LogFile>) {
        self.dirty.lock().files.push(file);
        self.wake.notify_one();
    }

    /// Puts `flusher` on the next round's list. As with a file's append, call it before
    /// taking the ticket of what it holds (see [`Syncer::take_ticket`]), and once per
    /// round: the flusher keeps its own flag of being listed.
    pub fn mark_flusher(&self, flusher: Arc<dyn Flusher>) {
        self.dirty.lock().flushers.push(flusher);
        self.wake.notify_one();
    }

    /// A ticket for an append a flusher holds: the watermark passes it once a round that
    /// began after it has written and synced the flusher.
    pub fn take_ticket(&self) -> u64 {
        self.next_ticket.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The watermark: every ticket at or below it is on disk.
    /// The group commit's record so far.
    pub fn stats(&self) -> crate::broker::store::SyncStats {
        let mut s = self.stats.lock().clone();
        let l = |c: &AtomicU64| c.load(Ordering::Relaxed);
        s.reads = l(&IO.reads);
        s.read_bytes = l(&IO.read_bytes);
        s.read_us = l(&IO.read_us);
        s.reopens = l(&IO.reopens);
        s.definition_changes = l(&IO.definition_changes);
        s
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    pub fn durable(&self) -> u64 {
        *self.durable.borrow()
    }

    /// The newest ticket handed out; waiting for it waits for everything appended so far.
    pub fn last_ticket(&self) -> u64 {
        self.next_ticket.load(Ordering::SeqCst)
    }

    /// Whether appends outrun the disk; if so, `waiter` is notified once they no longer do.
    pub fn backlogged(&self, waiter: &Arc<tokio::sync::Notify>) -> bool {
        if !self.backlogged.load(Ordering::Acquire) {
            return false;
        }
        let mut w = self.drain_waiters.lock();
        if !w.iter().any(|x| Arc::ptr_eq(x, waiter)) {
            w.push(waiter.clone());
        }
        true
    }

    /// Why writes are failing, if they are.
    pub fn failure(&self) -> Option<String> {
        if self.failed.load(Ordering::Acquire) {
            self.failure.lock().clone()
        } else {
            None
        }
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        self.wake.notify_one();
    }

    /// Writes and syncs until nothing is dirty, including what a round in progress on the
    /// sync thread holds; used at shutdown and by tests.
    pub fn flush_now(&self) {
        loop {
            let _round = self.round_lock.lock();
            if self.dirty.lock().is_empty() {
                return;
            }
            if !self.round_locked() {
                return;
            }
        }
    }

    fn run(&self) {
        loop {
            {
                let mut dirty = self.dirty.lock();
                while dirty.is_empty() && !self.stop.load(Ordering::Acquire) {
                    self.wake.wait(&mut dirty);
                }
                if dirty.is_empty() && self.stop.load(Ordering::Acquire) {
                    return;
                }
            }
            if !self.round() {
                // Writes failed: retry after a pause rather than spin.
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
        }
    }

    /// One group commit; returns false when nothing was done or a write failed.
    fn round(&self) -> bool {
        let _round = self.round_lock.lock();
        self.round_locked()
    }

    fn round_locked(&self) -> bool {
        let covered = self.next_ticket.load(Ordering::SeqCst);
        let Dirty { files, flushers } = std::mem::take(&mut *self.dirty.lock());
        if files.is_empty() && flushers.is_empty() {
            return false;
        }
        let mut error = None;
        let mut again = Vec::new();
        let mut written = 0;
        let mut writes = 0u64;
        let writing = std::time::Instant::now();
        // Flushers take what they hold now: every ticket up to `covered` was taken after its
        // append was added, so this round writes it.
        let mut again_flushers = Vec::new();
        for f in &flushers {
            match f.write_pending(covered) {
                Ok((more, n)) => {
                    written += n;
                    writes += u64::from(n > 0);
                    if more {
                        again_flushers.push(f.clone());
                    }
                }
                Err(e) => error = Some(format!("write to {} failed: {e}", f.label())),
            }
        }
        for f in &files {
            match f.write_out(covered) {
                Ok((more, n)) => {
                    written += n;
                    writes += u64::from(n > 0);
                    if more {
                        again.push(f.clone());
                    }
                }
                Err(e) => error = Some(format!("write to {} failed: {e}", f.path.display())),
            }
        }
        let backlog = written > BACKLOG_HIGH;
        if self.backlogged.swap(backlog, Ordering::AcqRel) != backlog {
            tracing::debug!("disk write backlog {}", if backlog { "high: publishers wait" } else { "cleared" });
        }
        if !backlog {
            for w in std::mem::take(&mut *self.drain_waiters.lock()) {
                w.notify_one();
            }
        }
        let write_us = writing.elapsed().as_micros() as u64;
        let syncing = std::time::Instant::now();
        if error.is_none() {
            for f in &files {
                if let Err(e) = f.sync() {
                    error = Some(format!("fdatasync of {} failed: {e}", f.path.display()));
                }
            }
            for f in &flushers {
                if let Err(e) = f.sync() {
                    error = Some(format!("fdatasync of {} failed: {e}", f.label()));
                }
            }
        }
        if error.is_none() {
            let mut st = self.stats.lock();
            st.rounds += 1;
            st.bytes_written += written as u64;
            st.writes += writes;
            st.write_us += write_us;
            st.syncs += (files.len() + flushers.len()) as u64;
            let sync_us = syncing.elapsed().as_micros() as u64;
            st.sync_us += sync_us;
            st.fsync_us.record(sync_us);
            let before = self.last_covered.swap(covered, Ordering::AcqRel);
            st.batch.record(covered.saturating_sub(before));
        }
        if !again.is_empty() || !again_flushers.is_empty() {
            let mut dirty = self.dirty.lock();
            dirty.files.extend(again);
            dirty.flushers.extend(again_flushers);
        }
        OPEN_FILES.sweep_if_over();
        match error {
            None => {
                if self.failed.swap(false, Ordering::AcqRel) {
                    tracing::warn!("disk writes succeed again");
                }
                for f in &flushers {
                    f.synced();
                }
                self.durable.send_modify(|d| *d = (*d).max(covered));
                true
            }
            Some(e) => {
                if !self.failed.swap(true, Ordering::AcqRel) {
                    tracing::error!("{e}");
                }
                *self.failure.lock() = Some(e);
                let mut dirty = self.dirty.lock();
                for f in files {
                    f.state.lock().dirty = true;
                    if !dirty.files.iter().any(|d| Arc::ptr_eq(d, &f)) {
                        dirty.files.push(f);
                    }
                }
                // A flusher whose write failed kept what it held and is listed again; one
                // whose fsync failed is written again (nothing) and synced again.
                for f in flushers {
                    if !dirty.flushers.iter().any(|d| std::ptr::addr_eq(Arc::as_ptr(d), Arc::as_ptr(&f))) {
                        dirty.flushers.push(f);
                    }
                }
                false
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn files_beyond_the_budget_are_closed_and_opened_again_on_use() {
        let dir = std::env::temp_dir().join(format!("hare-fd-cache-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let syncer = Syncer::start();
        set_open_files_budget(8);
        let files: Vec<Arc<LogFile>> = (0..40).map(|i| LogFile::open(&dir.join(format!("f{i}"))).unwrap()).collect();
        for round in 0..3u8 {
            for f in &files {
                f.append(&syncer, |b| b.extend_from_slice(&[round; 100]));
            }
            syncer.flush_now();
        }
        // Every file has all its bytes, however often it was closed in between.
        for f in &files {
            assert_eq!(f.read_at(0, 300).unwrap(), [[0u8; 100], [1; 100], [2; 100]].concat());
        }
        let open = files.iter().filter(|f| f.state.lock().file.is_some()).count();
        set_open_files_budget(usize::MAX);
        // Other tests open files meanwhile and share the budget: ours hold at most all of it.
        assert!(open <= 8, "{open} of 40 files open with a budget of 8");
        syncer.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_zero_filled_file_holds_its_appends_then_zeros() {
        let dir = std::env::temp_dir().join(format!("hare-zero-filled-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let syncer = Syncer::start();
        let path = dir.join("z");
        let f = LogFile::create_zero_filled(&path).unwrap();
        // Appends of 1,000 bytes past two ZERO_AHEAD boundaries, each round written out.
        let count = 2 * ZERO_AHEAD as usize / 1000 + 10;
        for i in 0..count {
            f.append(&syncer, |b| b.extend_from_slice(&[(i % 251) as u8 + 1; 1000]));
            if i % 7 == 0 {
                syncer.flush_now();
            }
        }
        syncer.flush_now();
        let data = std::fs::read(&path).unwrap();
        let written = count * 1000;
        assert!(data.len() > written, "zeroed ahead: {} bytes for {written}", data.len());
        for (i, chunk) in data[..written].chunks(1000).enumerate() {
            assert!(chunk.iter().all(|&b| b == (i % 251) as u8 + 1), "append {i} is not where it was written");
        }
        assert!(data[written..].iter().all(|&b| b == 0));
        assert_eq!(f.len(), written as u64);
        syncer.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_ticket_becomes_durable_under_concurrent_appends() {
        let dir = std::env::temp_dir().join(format!("hare-syncer-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let syncer = Syncer::start();
        let files: Vec<Arc<LogFile>> = (0..3).map(|i| LogFile::open(&dir.join(format!("f{i}"))).unwrap()).collect();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let syncer = syncer.clone();
                let files = files.clone();
                std::thread::spawn(move || {
                    for i in 0..2000usize {
                        let f = &files[(t + i) % files.len()];
                        let (_, ticket) = f.append(&syncer, |b| b.extend_from_slice(&[t as u8; 16]));
                        // Wait for this append to be durable, as a confirm would.
                        let deadline = Instant::now() + Duration::from_secs(10);
                        while syncer.durable() < ticket {
                            assert!(Instant::now() < deadline, "ticket {ticket} never became durable");
                            std::thread::yield_now();
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let total: u64 = files.iter().map(|f| std::fs::metadata(&f.path).unwrap().len()).sum();
        assert_eq!(total, 4 * 2000 * 16);
        syncer.shutdown();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
