//! A stream's log as the broker uses it ([`crate::broker::store::StreamStore`]): publishes
//! are gathered in memory and sealed into chunks (of at most `CHUNK_DATA` bytes) at each
//! group commit by the sync thread (see [`Flusher`]), so a burst of publishes costs a few
//! writes and one fsync, as the queue logs' appends do. Readers see a chunk once it is durable: a consumer never receives a
//! message that a crash could take back.
//!
//! Two locks: `pending` (publishers: take an offset and a ticket, push) and `log` (the
//! sync thread's writes, readers' seeks and reads), so a publisher never waits on a disk
//! write. What readers may read is kept in atomics, read without either lock.

use super::cipher::{is_sealed_blob, KeyRing, Nonces};
use super::stream_log::{Settings, StreamLog, MAX_ENTRIES, MAX_RECORDS};
use super::syncer::{Flusher, Syncer};
use crate::broker::store::{
    filter_bit, RecordFormat, StoreError, StreamChunk, StreamSettings, StreamStore, WireChunk, FILTER_RECORDED,
    FILTER_UNFILTERED, MAX_TRACKED_REFERENCES,
};
use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use tokio::sync::watch;

/// Publishes waiting for the next round.
#[derive(Default)]
struct Pending {
    messages: Vec<Bytes>,
    /// Beside each message: its format and the publisher that wrote it.
    marks: Vec<Mark>,
    /// The round's named publishers, whom `marks` name by their place here.
    refs: Vec<String>,
    ref_index: HashMap<String, u32>,
    /// Named publishers' newest publishing ids, as appended (deduplication reads these).
    writers: HashMap<String, u64>,
    /// Consumers' stored offsets, as stored.
    offsets: HashMap<String, u64>,
    /// What changed since the last round took its share: the publishers' ids of the
    /// messages in `messages`, and whether `offsets` changed.
    round_writers: HashMap<String, u64>,
    offsets_changed: bool,
    /// The offset the next publish gets.
    next_offset: u64,
    /// On the syncer's list for the next round.
    listed: bool,
    /// The ticket of the newest publish.
    max_ticket: u64,
}

impl Pending {
    /// The place of `reference` in the round's list of publishers.
    fn intern(&mut self, reference: &str) -> u32 {
        if let Some(&at) = self.ref_index.get(reference) {
            return at;
        }
        let at = self.refs.len() as u32;
        self.refs.push(reference.to_string());
        self.ref_index.insert(reference.to_string(), at);
        at
    }
}

/// What a round needs of a message besides its bytes: which kind of chunk it goes in, and
/// the publisher (a place in `Pending::refs`) and publishing id it was appended with.
#[derive(Clone, Copy)]
struct Mark {
    format: RecordFormat,
    writer: Option<(u32, u64)>,
    /// A compressed sub-entry batch of this many messages (written as it is), or 0 for one
    /// message.
    batch: u16,
    /// Its filter value's bit, or FILTER_UNFILTERED.
    filter: u32,
}

impl Mark {
    /// The bytes an entry of `len` takes in a chunk's data.
    fn entry_len(&self, len: usize) -> usize {
        if self.batch > 0 {
            len
        } else {
            4 + len
        }
    }
}

/// The log and the last chunk read (readers at the head of a stream read the same chunk).
struct Log {
    log: StreamLog,
    settings: StreamSettings,
    cache: Option<StreamChunk>,
    /// Written by the round in progress, durable once it syncs: (end, newest chunk's first).
    written: (u64, u64),
    /// The tracking as saved, and what the round in progress adds to it once it syncs.
    saved: Tracking,
    round: Option<RoundTracking>,
}

/// What a round adds to the saved tracking: publishers' newest ids, and the stored offsets
/// if they changed.
#[derive(Default)]
struct RoundTracking {
    writers: HashMap<String, u64>,
    offsets: Option<HashMap<String, u64>>,
}

/// A stream's tracking, saved beside its segments (`tracking.json`) after each group commit
/// that changes it: named publishers' newest publishing ids (deduplication) and consumers'
/// stored offsets. `end`: the durable end it covers (publishers' ids in records from there
/// on are read again at recovery).
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
struct Tracking {
    end: u64,
    writers: HashMap<String, u64>,
    offsets: HashMap<String, u64>,
}

const TRACKING_FILE: &str = "tracking.json";
/// A round's messages are written as chunks of at most this many bytes of data (a larger
/// message makes a chunk of its own): a chunk is what a consumer is sent for one credit and
/// what a seek reads to find its first message, so it is small enough that a start from an
/// offset or a timestamp reads little, and that a whole chunk, with its header (48 bytes) and
/// the deliver frame's (9), fits a stream protocol client's default frame size (1 MiB) and
/// is sent as it is stored.
const CHUNK_DATA: usize = 1024 * 1024 - 64;

impl Tracking {
    /// The saved tracking, opened if it was sealed (encryption at rest).
    fn load(dir: &Path, label: &str, keys: Option<&KeyRing>) -> Tracking {
        let path = dir.join(TRACKING_FILE);
        let Ok(bytes) = std::fs::read(&path) else { return Tracking::default() };
        let opened = match (is_sealed_blob(&bytes), keys) {
            (false, _) => Ok(bytes),
            (true, Some(keys)) => keys.open(&bytes).map_err(|e| e.to_string()),
            (true, None) => Err("sealed, and no encryption key".to_string()),
        };
        opened.and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string())).unwrap_or_else(|e| {
            // Publishers' ids are read again from the whole log; stored offsets are lost.
            tracing::warn!("{label}: unreadable {}: {e}", path.display());
            Tracking::default()
        })
    }

    /// Written whole to a new file renamed over the old one, so a crash leaves one or the other.
    fn save(bytes: &[u8], dir: &Path) -> std::io::Result<()> {
        let tmp = dir.join("tracking.json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, dir.join(TRACKING_FILE))
    }
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
    durable: watch::Sender<u64>,
    destroyed: AtomicBool,
    /// With encryption at rest: the tracking is sealed too (it names publishers and
    /// consumers), as the chunks are.
    keys: Option<Arc<KeyRing>>,
    nonces: Mutex<Nonces>,
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
        let log = StreamLog::open(dir, log_settings(&settings), keys.clone())?;
        let (first, end) = (log.first_offset(), log.next_offset());
        let last = log.chunk_at(end.saturating_sub(1)).map_or(end, |c| c.first_offset);
        let mut saved = Tracking::load(dir, &label, keys.as_deref());
        // A log shorter than the saved tracking (its tail lost): ids past it are not kept.
        saved.end = saved.end.min(end);
        let pending = Pending {
            next_offset: end,
            writers: saved.writers.clone(),
            offsets: saved.offsets.clone(),
            ..Default::default()
        };
        Ok(Arc::new_cyclic(|me| DiskStream {
            label,
            dir: dir.to_path_buf(),
            syncer,
            me: me.clone(),
            pending: Mutex::new(pending),
            log: Mutex::new(Log { log, settings, cache: None, written: (end, last), saved, round: None }),
            first: AtomicU64::new(first),
            durable_end: AtomicU64::new(end),
            last_chunk: AtomicU64::new(last),
            durable: watch::Sender::new(end),
            destroyed: AtomicBool::new(false),
            keys,
            nonces: Mutex::new(Nonces::new()),
        }))
    }
}

impl StreamStore for DiskStream {
    fn append(&self, record: &mut dyn FnMut(u64, &mut BytesMut) -> u32) -> (u64, u64) {
        let mut p = self.pending.lock();
        let offset = p.next_offset;
        let mut buf = BytesMut::new();
        let filter = record(offset, &mut buf);
        let mark = Mark { format: RecordFormat::Hare, writer: None, batch: 0, filter };
        Self::push(&mut p, buf.freeze(), mark);
        (offset, self.list(&mut p))
    }

    fn append_amqp10(&self, writer: Option<(&str, u64)>, message: Bytes, filter: Option<&[u8]>) -> (u64, u64) {
        self.append_entry(writer, message, 0, filter.map_or(FILTER_UNFILTERED, filter_bit))
    }

    fn append_batch(&self, writer: Option<(&str, u64)>, entry: Bytes, records: u16) -> (u64, u64) {
        self.append_entry(writer, entry, records.max(1), FILTER_UNFILTERED)
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

    fn read(&self, offset: u64) -> Result<Option<StreamChunk>, StoreError> {
        let end = self.durable_end.load(Ordering::Acquire);
        if offset >= end {
            return Ok(None);
        }
        let mut log = self.log.lock();
        if let Some(c) = &log.cache {
            if (c.first..c.first + c.records.len() as u64).contains(&offset) {
                return Ok(Some(c.clone()));
            }
        }
        let Some(info) = log.log.chunk_at(offset).filter(|c| c.first_offset < end) else { return Ok(None) };
        let chunk = log.log.read(&info)?;
        let chunk = StreamChunk {
            first: chunk.first_offset,
            timestamp: chunk.timestamp,
            format: chunk.format,
            records: chunk.messages.into(),
            writers: chunk.writers.into(),
            batches: chunk.batches.into(),
            filter: info.filter,
        };
        log.cache = Some(chunk.clone());
        Ok(Some(chunk))
    }

    fn read_wire(&self, offset: u64) -> Result<Option<WireChunk>, StoreError> {
        let end = self.durable_end.load(Ordering::Acquire);
        if offset >= end {
            return Ok(None);
        }
        let log = self.log.lock();
        let Some(info) = log.log.chunk_at(offset).filter(|c| c.first_offset < end) else { return Ok(None) };
        let chunk = |wire| WireChunk { first: info.first_offset, count: info.count, filter: info.filter, wire };
        Ok(log.log.wire(&info)?.map(chunk))
    }

    fn chunk_span(&self, offset: u64) -> Result<Option<(u64, u64, u32)>, StoreError> {
        let end = self.durable_end.load(Ordering::Acquire);
        if offset >= end {
            return Ok(None);
        }
        let log = self.log.lock();
        let info = log.log.chunk_at(offset).filter(|c| c.first_offset < end);
        Ok(info.map(|c| (c.first_offset, c.first_offset + c.count as u64, c.filter)))
    }

    fn size(&self) -> (u64, usize) {
        let log = self.log.lock();
        (log.log.size(), log.log.segment_count())
    }

    fn durable_watch(&self) -> watch::Receiver<u64> {
        self.durable.subscribe()
    }

    fn set_settings(&self, settings: StreamSettings) {
        let mut log = self.log.lock();
        log.settings = settings;
        log.log.set_settings(log_settings(&settings));
    }

    fn writer_sequence(&self, reference: &str) -> Option<u64> {
        self.pending.lock().writers.get(reference).copied()
    }

    fn store_offset(&self, reference: &str, offset: u64) -> bool {
        let mut p = self.pending.lock();
        if !Self::track(&mut p.offsets, reference, offset, &self.label) {
            return false;
        }
        p.offsets_changed = true;
        self.list(&mut p);
        true
    }

    fn stored_offset(&self, reference: &str) -> Option<u64> {
        self.pending.lock().offsets.get(reference).copied()
    }

    fn tracking_end(&self) -> u64 {
        self.log.lock().saved.end
    }

    fn recover_writer(&self, reference: &str, publishing_id: u64) {
        let mut p = self.pending.lock();
        if Self::track(&mut p.writers, reference, publishing_id, &self.label) {
            Self::track(&mut p.round_writers, reference, publishing_id, &self.label);
            self.list(&mut p);
        }
    }

    fn destroy(&self) {
        self.destroyed.store(true, Ordering::Release);
        let mut p = self.pending.lock();
        p.messages.clear();
        p.marks.clear();
        drop(p);
        // Wakes the readers, which find their queue deleted.
        self.durable.send_modify(|_| {});
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            tracing::warn!("{}: cannot remove {}: {e}", self.label, self.dir.display());
        }
    }
}

impl DiskStream {
    /// Sets `reference`'s value in a tracking map; false if the map is full and it is new.
    fn track(map: &mut HashMap<String, u64>, reference: &str, value: u64, label: &str) -> bool {
        if let Some(v) = map.get_mut(reference) {
            *v = value;
            return true;
        }
        if map.len() >= MAX_TRACKED_REFERENCES {
            tracing::warn!("{label}: {MAX_TRACKED_REFERENCES} references tracked already: '{reference}' is not");
            return false;
        }
        map.insert(reference.to_string(), value);
        true
    }

    /// Appends the stream protocol's message, or compressed batch of `batch` messages.
    fn append_entry(&self, writer: Option<(&str, u64)>, entry: Bytes, batch: u16, filter: u32) -> (u64, u64) {
        let mut p = self.pending.lock();
        let offset = p.next_offset;
        let mut mark = Mark { format: RecordFormat::Amqp10, writer: None, batch, filter };
        if let Some((reference, id)) = writer {
            if Self::track(&mut p.writers, reference, id, &self.label) {
                Self::track(&mut p.round_writers, reference, id, &self.label);
                mark.writer = Some((p.intern(reference), id));
            }
        }
        Self::push(&mut p, entry, mark);
        (offset, self.list(&mut p))
    }

    /// Adds a message to the next round.
    fn push(p: &mut Pending, message: Bytes, mark: Mark) {
        p.messages.push(message);
        p.next_offset += mark.batch.max(1) as u64;
        p.marks.push(mark);
    }

    /// Puts the stream on the syncer's list for the next round (once) and returns the ticket
    /// that round covers.
    fn list(&self, p: &mut Pending) -> u64 {
        // Listed before the ticket is taken: a round that covers the ticket writes this.
        if !p.listed {
            if let Some(me) = self.me.upgrade() {
                p.listed = true;
                self.syncer.mark_flusher(me);
            }
        }
        let ticket = self.syncer.take_ticket();
        p.max_ticket = ticket;
        ticket
    }
}

impl Flusher for DiskStream {
    fn write_pending(&self, covered: u64) -> std::io::Result<(bool, usize)> {
        let (messages, marks, refs, more, round) = {
            let mut p = self.pending.lock();
            // A publish whose ticket this round does not cover may already be among these
            // (it was listed before its ticket was taken): a later round must still pass it.
            p.listed = p.max_ticket > covered;
            let offsets = std::mem::take(&mut p.offsets_changed).then(|| p.offsets.clone());
            let writers = std::mem::take(&mut p.round_writers);
            let round = (!writers.is_empty() || offsets.is_some()).then_some((writers, offsets));
            p.ref_index.clear();
            let (messages, marks, refs) =
                (std::mem::take(&mut p.messages), std::mem::take(&mut p.marks), std::mem::take(&mut p.refs));
            (messages, marks, refs, p.listed, round)
        };
        if self.destroyed.load(Ordering::Acquire) {
            return Ok((more, 0));
        }
        let mut log = self.log.lock();
        if let Some((writers, offsets)) = round {
            // Saved once the round's chunk is durable (see `synced`).
            let r = log.round.get_or_insert_with(RoundTracking::default);
            r.writers.extend(writers);
            if offsets.is_some() {
                r.offsets = offsets;
            }
        }
        if messages.is_empty() {
            return Ok((more, 0));
        }
        let bytes: usize = messages.iter().map(Bytes::len).sum();
        // The round's messages as chunks of one format each, of at most CHUNK_DATA bytes
        // (one message at least), MAX_ENTRIES entries and MAX_RECORDS messages; each chunk's
        // trailer holds the newest id of each publisher in it.
        let now = now_ms();
        let mut start = 0;
        let mut first = log.written.1;
        let mut newest: Vec<Option<u64>> = vec![None; refs.len()];
        let mut writers: Vec<(&str, u64)> = Vec::new();
        while start < messages.len() {
            let format = marks[start].format;
            let mut end = start + 1;
            let mut size = marks[start].entry_len(messages[start].len());
            let mut records = marks[start].batch.max(1) as usize;
            while end < messages.len()
                && marks[end].format == format
                && end - start < MAX_ENTRIES
                && records + marks[end].batch.max(1) as usize <= MAX_RECORDS
                && size + marks[end].entry_len(messages[end].len()) <= CHUNK_DATA
            {
                size += marks[end].entry_len(messages[end].len());
                records += marks[end].batch.max(1) as usize;
                end += 1;
            }
            // Which entries are compressed batches (none, mostly: no list then).
            let batches: Vec<u16> = match marks[start..end].iter().any(|m| m.batch > 0) {
                true => marks[start..end].iter().map(|m| m.batch).collect(),
                false => Vec::new(),
            };
            for m in &marks[start..end] {
                if let Some((at, id)) = m.writer {
                    newest[at as usize] = Some(id);
                }
            }
            writers.clear();
            for (at, id) in newest.iter_mut().enumerate() {
                if let Some(id) = id.take() {
                    writers.push((refs[at].as_str(), id));
                }
            }
            let filter = marks[start..end].iter().fold(FILTER_RECORDED, |f, m| f | m.filter);
            match log.log.append_entries(format, &messages[start..end], &batches, &writers, filter, now) {
                Ok(f) => first = f,
                Err(e) => {
                    log.written = (log.log.next_offset(), first);
                    // What was not written is kept, in order, in front of what came
                    // meanwhile: the next round retries (the publishers named, renamed in
                    // the next round's list). The syncer lists it again after a failed round.
                    let mut p = self.pending.lock();
                    let later = std::mem::replace(&mut p.messages, messages[start..].to_vec());
                    p.messages.extend(later);
                    let later_marks = std::mem::take(&mut p.marks);
                    let later_refs = std::mem::take(&mut p.refs);
                    p.ref_index.clear();
                    for (set, list) in [(&marks[start..], &refs), (&later_marks[..], &later_refs)] {
                        for m in set {
                            let writer = m.writer.map(|(at, id)| (p.intern(&list[at as usize]), id));
                            p.marks.push(Mark { writer, ..*m });
                        }
                    }
                    p.listed = true;
                    return Err(e);
                }
            }
            start = end;
        }
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
        let (end, last, tracking) = {
            let mut log = self.log.lock();
            let (end, last) = log.written;
            let mut tracking = None;
            if let Some(RoundTracking { writers, offsets }) = log.round.take() {
                let saved = &mut log.saved;
                saved.writers.extend(writers);
                if let Some(o) = offsets {
                    saved.offsets = o;
                }
                saved.end = end;
                tracking = Some(serde_json::to_vec(saved).map(|b| match &self.keys {
                    Some(keys) => keys.seal(&mut self.nonces.lock(), &b),
                    None => b,
                }));
            }
            (end, last, tracking)
        };
        // Written without the log's lock: readers do not wait for it.
        if let (Some(bytes), false) = (tracking, self.destroyed.load(Ordering::Acquire)) {
            if let Err(e) = bytes.map_err(std::io::Error::other).and_then(|b| Tracking::save(&b, &self.dir)) {
                tracing::warn!("{}: cannot save its tracking: {e}", self.label);
            }
        }
        self.last_chunk.store(last, Ordering::Release);
        if self.durable_end.swap(end, Ordering::AcqRel) != end {
            self.durable.send_replace(end);
        }
    }

    fn label(&self) -> String {
        self.label.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::queue::stream::recover_writers;

    /// An empty directory for a test's stream, and a sync thread.
    fn fresh(name: &str) -> (std::path::PathBuf, Arc<Syncer>) {
        let dir = std::env::temp_dir().join(format!("hare-stream-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        (dir, Syncer::start())
    }

    fn settings() -> StreamSettings {
        StreamSettings { max_bytes: None, max_age_ms: None, max_segment_bytes: 1 << 20 }
    }

    fn publish(s: &DiskStream, reference: &str, id: u64) {
        s.append_amqp10(Some((reference, id)), Bytes::from_static(b"m"), None);
    }

    /// Publishers' ids and stored offsets come back after a reopen, from the saved tracking;
    /// and from the records themselves when the save of the last round was lost (a crash
    /// between the chunk's fsync and the save), while stored offsets keep the last save.
    #[test]
    fn tracking_survives_a_reopen_and_a_lost_save() {
        let (dir, syncer) = fresh("tracking");
        let open = || -> Arc<dyn StreamStore> {
            DiskStream::open(&dir, "test".into(), settings(), syncer.clone(), None).expect("opens")
        };
        let s = DiskStream::open(&dir, "test".into(), settings(), syncer.clone(), None).expect("opens");
        for id in 1..=3 {
            publish(&s, "p1", id);
        }
        publish(&s, "p2", 10);
        assert!(s.store_offset("reader", 2));
        syncer.flush_now();
        assert_eq!((s.writer_sequence("p1"), s.writer_sequence("p2")), (Some(3), Some(10)));
        drop(s);
        let s = open();
        recover_writers(&s, "test");
        assert_eq!((s.writer_sequence("p1"), s.writer_sequence("p2")), (Some(3), Some(10)));
        assert_eq!((s.stored_offset("reader"), s.stored_offset("other")), (Some(2), None));
        assert_eq!(s.tracking_end(), 4);
        // Another round, whose save is then lost.
        let saved = std::fs::read(dir.join(TRACKING_FILE)).expect("saved");
        publish_dyn(&s, "p1", 4);
        publish_dyn(&s, "p3", 7);
        s.store_offset("reader", 5);
        syncer.flush_now();
        drop(s);
        std::fs::write(dir.join(TRACKING_FILE), saved).expect("restores the older save");
        let s = open();
        assert_eq!(s.writer_sequence("p1"), Some(3));
        recover_writers(&s, "test");
        assert_eq!((s.writer_sequence("p1"), s.writer_sequence("p3")), (Some(4), Some(7)));
        assert_eq!(s.stored_offset("reader"), Some(2));
        // Unreadable tracking: the ids are read from the whole log again.
        syncer.flush_now();
        drop(s);
        std::fs::write(dir.join(TRACKING_FILE), b"{not json").expect("writes");
        let s = open();
        recover_writers(&s, "test");
        assert_eq!(
            (s.writer_sequence("p1"), s.writer_sequence("p2"), s.writer_sequence("p3")),
            (Some(4), Some(10), Some(7))
        );
        syncer.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A round larger than a chunk's data is written as several chunks, across a segment
    /// boundary too, every message readable at its offset after a reopen.
    #[test]
    fn a_large_round_is_written_as_chunks_of_a_bounded_size() {
        let (dir, syncer) = fresh("chunks");
        let settings = StreamSettings { max_bytes: None, max_age_ms: None, max_segment_bytes: 3 << 20 };
        let s = DiskStream::open(&dir, "test".into(), settings, syncer.clone(), None).expect("opens");
        // 5,000 messages of 1 KiB, one round: about 5 MiB, over two segments. Every
        // two-thousandth is an AMQP 0-9-1 record among the stream protocol's messages.
        let body = Bytes::from(vec![7u8; 1024]);
        let is_record = |offset: u64| offset % 2_000 == 1_999;
        for offset in 0..5_000 {
            if is_record(offset) {
                s.append(&mut |_, buf| {
                    buf.extend_from_slice(&body);
                    FILTER_UNFILTERED
                });
            } else {
                s.append_amqp10(None, body.clone(), None);
            }
        }
        syncer.flush_now();
        assert_eq!(s.bounds(), (0, 5_000));
        assert!(s.size().1 >= 2, "segments: {}", s.size().1);
        let mut chunks = 0;
        let mut offset = 0;
        while let Some(c) = s.read(offset).expect("reads") {
            let data: usize = c.records.iter().map(|r| 4 + r.len()).sum();
            assert!(data <= CHUNK_DATA, "a chunk of {data} bytes");
            assert_eq!(c.first, offset);
            // Each chunk holds one kind of message.
            let end = offset + c.records.len() as u64;
            assert!((offset..end).all(|o| is_record(o) == (c.format == RecordFormat::Hare)), "at {offset}");
            // What the stream protocol sends as stored: the same chunk, header and data.
            let wire = s.read_wire(offset).expect("reads");
            match c.format {
                RecordFormat::Amqp10 => {
                    let w = wire.expect("a chunk of AMQP 1.0 messages");
                    assert_eq!((w.first, w.count as usize, w.wire.len()), (offset, c.records.len(), 48 + data));
                }
                RecordFormat::Hare => assert!(wire.is_none()),
            }
            offset = end;
            chunks += 1;
        }
        // At least seven: the runs of 1,999 messages are two chunks each, the last thousand
        // one, and each record one (more if a round began during the appends).
        assert_eq!(offset, 5_000);
        assert!(chunks >= 7, "{chunks} chunks");
        drop(s);
        let s = DiskStream::open(&dir, "test".into(), settings, syncer.clone(), None).expect("reopens");
        assert_eq!(s.bounds(), (0, 5_000));
        assert_eq!(s.read(4_999).expect("reads").map(|c| c.first + c.records.len() as u64), Some(5_000));
        syncer.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A chunk holds at most 65,535 messages (the header counts its entries in 16 bits).
    #[test]
    fn a_round_of_many_small_messages_is_cut_at_the_entries_a_chunk_counts() {
        let (dir, syncer) = fresh("entries");
        let s = DiskStream::open(&dir, "test".into(), settings(), syncer.clone(), None).expect("opens");
        for _ in 0..70_000 {
            s.append_amqp10(None, Bytes::from_static(b"m"), None);
        }
        syncer.flush_now();
        let mut offset = 0;
        while let Some(c) = s.read(offset).expect("reads") {
            assert!(c.records.len() <= MAX_ENTRIES, "{} entries", c.records.len());
            offset += c.records.len() as u64;
        }
        assert_eq!(offset, 70_000);
        syncer.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Under encryption at rest the tracking (publishers' and consumers' names) is sealed,
    /// and read back with the key.
    #[test]
    fn sealed_tracking_reads_back_with_the_key() {
        let (dir, syncer) = fresh("sealed-tracking");
        let keys = Some(Arc::new(KeyRing::from_key([5; 32])));
        let s = DiskStream::open(&dir, "test".into(), settings(), syncer.clone(), keys.clone()).expect("opens");
        publish(&s, "payroll-writer", 3);
        assert!(s.store_offset("payroll-reader", 2));
        syncer.flush_now();
        drop(s);
        let raw = std::fs::read(dir.join(TRACKING_FILE)).expect("saved");
        assert!(is_sealed_blob(&raw) && !raw.windows(7).any(|w| w == b"payroll"), "in the clear");
        let s = DiskStream::open(&dir, "test".into(), settings(), syncer.clone(), keys).expect("reopens");
        assert_eq!((s.writer_sequence("payroll-writer"), s.stored_offset("payroll-reader")), (Some(3), Some(2)));
        syncer.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A compressed batch is one entry that takes an offset for each of its messages; a
    /// chunk holds at most MAX_RECORDS offsets however small its batches.
    #[test]
    fn compressed_batches_take_an_offset_per_message() {
        let (dir, syncer) = fresh("batches");
        let s = DiskStream::open(&dir, "test".into(), settings(), syncer.clone(), None).expect("opens");
        // gzip (1), 65,535 messages, sizes, an opaque body.
        let entry = Bytes::from_static(b"\x90\xff\xff\x00\x00\x00\x10\x00\x00\x00\x04body");
        s.append_amqp10(None, Bytes::from_static(b"first"), None);
        for _ in 0..10 {
            s.append_batch(Some(("zipper", 1)), entry.clone(), u16::MAX);
        }
        let (last, _) = s.append_amqp10(None, Bytes::from_static(b"last"), None);
        syncer.flush_now();
        assert_eq!(last, 1 + 10 * u16::MAX as u64);
        assert_eq!(s.bounds(), (0, last + 1));
        let (mut offset, mut batches) = (0, Vec::new());
        while let Some(c) = s.read(offset).expect("reads") {
            assert!(c.records.len() <= MAX_RECORDS, "{} records", c.records.len());
            assert_eq!(c.first, offset);
            batches.extend(c.batches.iter().map(|b| (b.first, b.records, b.entry.clone())));
            // Sent as stored, whole.
            let w = s.read_wire(offset).expect("reads").expect("AMQP 1.0 messages");
            assert_eq!((w.first, w.count as usize), (offset, c.records.len()));
            offset += c.records.len() as u64;
        }
        assert_eq!(offset, last + 1);
        let want: Vec<_> = (0..10).map(|i| (1 + i * u16::MAX as u64, u16::MAX, entry.clone())).collect();
        assert_eq!(batches, want);
        let head = s.read(0).expect("reads").expect("a chunk");
        assert_eq!((head.records[0].clone(), head.batch_at(0).is_none()), (Bytes::from_static(b"first"), true));
        assert_eq!(head.batch_at(1).map(|b| b.first), Some(1));
        let tail = s.read(last).expect("reads").expect("a chunk");
        assert_eq!(tail.records[(last - tail.first) as usize], Bytes::from_static(b"last"));
        assert_eq!(s.writer_sequence("zipper"), Some(1));
        syncer.shutdown();
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn publish_dyn(s: &Arc<dyn StreamStore>, reference: &str, id: u64) {
        s.append_amqp10(Some((reference, id)), Bytes::from_static(b"m"), None);
    }
}
