//! A stream's log as the broker uses it ([`crate::broker::store::StreamStore`]): publishes
//! are gathered in memory and sealed into one chunk per group commit by the sync thread
//! (see [`Flusher`]), so a burst of publishes costs one write and one fsync, as the queue
//! logs' appends do. Readers see a chunk once it is durable: a consumer never receives a
//! message that a crash could take back.
//!
//! Two locks: `pending` (publishers: take an offset and a ticket, push) and `log` (the
//! sync thread's writes, readers' seeks and reads), so a publisher never waits on a disk
//! write. What readers may read is kept in atomics, read without either lock.

use super::cipher::KeyRing;
use super::stream_log::{Settings, StreamLog};
use super::syncer::{Flusher, Syncer};
use crate::broker::store::{StoreError, StreamSettings, StreamStore};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::Notify;

/// Publishes waiting for the next round.
#[derive(Default)]
struct Pending {
    messages: Vec<Bytes>,
    /// The offset the next publish gets.
    next_offset: u64,
    /// On the syncer's list for the next round.
    listed: bool,
    /// The ticket of the newest publish.
    max_ticket: u64,
}

/// The log and the last chunk read (readers at the head of a stream read the same chunk).
struct Log {
    log: StreamLog,
    settings: StreamSettings,
    cache: Option<(u64, Arc<[Bytes]>)>,
    /// Written by the round in progress, durable once it syncs: (end, newest chunk's first).
    written: (u64, u64),
}

pub struct DiskStream {
    label: String,
    dir: PathBuf,
    syncer: Arc<Syncer>,
    me: Weak<DiskStream>,
    pending: Mutex<Pending>,
    log: Mutex<Log>,
    /// The oldest offset kept, the end of the durable log, and its newest chunk's first.
    first: AtomicU64,
    durable_end: AtomicU64,
    last_chunk: AtomicU64,
    durable: Arc<Notify>,
    destroyed: AtomicBool,
}

impl std::fmt::Debug for DiskStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiskStream").field("label", &self.label).finish()
    }
}

fn log_settings(s: &StreamSettings) -> Settings {
    Settings { max_segment_bytes: s.max_segment_bytes }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl DiskStream {
    /// Opens (or creates) the stream in `dir`.
    pub fn open(
        dir: &Path,
        label: String,
        settings: StreamSettings,
        syncer: Arc<Syncer>,
        keys: Option<Arc<KeyRing>>,
    ) -> std::io::Result<Arc<DiskStream>> {
        let log = StreamLog::open(dir, log_settings(&settings), keys)?;
        let (first, end) = (log.first_offset(), log.next_offset());
        let last = log.chunk_at(end.saturating_sub(1)).map_or(end, |c| c.first_offset);
        Ok(Arc::new_cyclic(|me| DiskStream {
            label,
            dir: dir.to_path_buf(),
            syncer,
            me: me.clone(),
            pending: Mutex::new(Pending { next_offset: end, ..Default::default() }),
            log: Mutex::new(Log { log, settings, cache: None, written: (end, last) }),
            first: AtomicU64::new(first),
            durable_end: AtomicU64::new(end),
            last_chunk: AtomicU64::new(last),
            durable: Arc::new(Notify::new()),
            destroyed: AtomicBool::new(false),
        }))
    }
}

impl StreamStore for DiskStream {
    fn append(&self, record: &mut dyn FnMut(u64, &mut BytesMut)) -> (u64, u64) {
        let mut p = self.pending.lock();
        let offset = p.next_offset;
        let mut buf = BytesMut::new();
        record(offset, &mut buf);
        p.messages.push(buf.freeze());
        p.next_offset += 1;
        // Listed before the ticket is taken: a round that covers the ticket writes this.
        if !p.listed {
            if let Some(me) = self.me.upgrade() {
                p.listed = true;
                self.syncer.mark_flusher(me);
            }
        }
        let ticket = self.syncer.take_ticket();
        p.max_ticket = ticket;
        (offset, ticket)
    }

    fn bounds(&self) -> (u64, u64) {
        (self.first.load(Ordering::Acquire), self.durable_end.load(Ordering::Acquire))
    }

    fn last_chunk(&self) -> u64 {
        self.last_chunk.load(Ordering::Acquire)
    }

    fn offset_at(&self, timestamp_ms: i64) -> u64 {
        let end = self.durable_end.load(Ordering::Acquire);
        let log = self.log.lock();
        log.log.chunk_from_time(timestamp_ms).map_or(end, |c| c.first_offset.min(end))
    }

    fn read(&self, offset: u64) -> Result<Option<(u64, Arc<[Bytes]>)>, StoreError> {
        let end = self.durable_end.load(Ordering::Acquire);
        if offset >= end {
            return Ok(None);
        }
        let mut log = self.log.lock();
        if let Some((first, messages)) = &log.cache {
            if (*first..*first + messages.len() as u64).contains(&offset) {
                return Ok(Some((*first, messages.clone())));
            }
        }
        let Some(info) = log.log.chunk_at(offset).filter(|c| c.first_offset < end) else { return Ok(None) };
        let chunk = log.log.read(&info)?;
        let messages: Arc<[Bytes]> = chunk.messages.into();
        log.cache = Some((chunk.first_offset, messages.clone()));
        Ok(Some((chunk.first_offset, messages)))
    }

    fn size(&self) -> (u64, usize) {
        let log = self.log.lock();
        (log.log.size(), log.log.segment_count())
    }

    fn durable_notify(&self) -> Arc<Notify> {
        self.durable.clone()
    }

    fn set_settings(&self, settings: StreamSettings) {
        let mut log = self.log.lock();
        log.settings = settings;
        log.log.set_settings(log_settings(&settings));
    }

    fn destroy(&self) {
        self.destroyed.store(true, Ordering::Release);
        self.pending.lock().messages.clear();
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("{}: cannot remove {}: {e}", self.label, self.dir.display());
        }
    }
}

impl Flusher for DiskStream {
    fn write_pending(&self, covered: u64) -> std::io::Result<(bool, usize)> {
        let (messages, more) = {
            let mut p = self.pending.lock();
            // A publish whose ticket this round does not cover may already be among these
            // (it was listed before its ticket was taken): a later round must still pass it.
            p.listed = p.max_ticket > covered;
            (std::mem::take(&mut p.messages), p.listed)
        };
        if messages.is_empty() || self.destroyed.load(Ordering::Acquire) {
            return Ok((more, 0));
        }
        let bytes: usize = messages.iter().map(Bytes::len).sum();
        let mut log = self.log.lock();
        let first = match log.log.append(&messages, now_ms()) {
            Ok(first) => first,
            Err(e) => {
                // Kept, in order, in front of what came meanwhile: the next round retries.
                // The syncer lists it again after a failed round.
                let mut p = self.pending.lock();
                let later = std::mem::replace(&mut p.messages, messages);
                p.messages.extend(later);
                p.listed = true;
                return Err(e);
            }
        };
        log.written = (log.log.next_offset(), first);
        if log.log.segment_count() > 1 {
            let s = log.settings;
            let max_age = s.max_age_ms.map(|a| a.min(i64::MAX as u64) as i64);
            if let Err(e) = log.log.apply_retention(s.max_bytes, max_age, now_ms()) {
                tracing::warn!("{}: retention: {e}", self.label);
            }
            self.first.store(log.log.first_offset(), Ordering::Release);
        }
        Ok((more, bytes))
    }

    fn sync(&self) -> std::io::Result<()> {
        if self.destroyed.load(Ordering::Acquire) {
            return Ok(());
        }
        // Without the log's lock: readers (consumers being served) do not wait for the disk.
        let file = self.log.lock().log.active_file();
        file.map_or(Ok(()), |f| f.sync_data())
    }

    fn synced(&self) {
        let (end, last) = self.log.lock().written;
        self.last_chunk.store(last, Ordering::Release);
        if self.durable_end.swap(end, Ordering::AcqRel) != end {
            self.durable.notify_one();
        }
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}
