//! One durable queue's log: a directory of segment files holding its messages in sequence
//! order, each with a companion `.ack` file of acks and delivery marks for that segment's
//! messages. A segment whose messages are all acked is deleted with its ack file, so acks
//! never outlive the messages they settle and no ack log needs compacting.

use super::cipher::{KeyRing, Nonces};
use super::record::{put_record, scan, Scanned, HEADER_LEN, MAGIC};
use super::syncer::{LogFile, Syncer};
use crate::broker::message::Message;
use crate::broker::store::{LoadedMessage, MessageLog, RecoveredQueue, StoreError};
use bytes::{Buf, BufMut, Bytes};
use std::collections::{HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;

mod payload;
use payload::{
    decode_message, encode_message, sealed_with, Undecodable, FLAG_PERSISTENT, KIND_ACK, KIND_ACK_RANGE,
    KIND_DELIVERED, KIND_MESSAGE, KIND_SEALED,
};

/// Segments roll over at this size.
pub const SEGMENT_BYTES: u64 = 8 * 1024 * 1024;
/// How much of a segment one tail read takes in.
const READ_CHUNK: usize = 1024 * 1024;

/// Ack files kept open at once; acks mostly go to the oldest segments.
const OPEN_ACK_FILES: usize = 8;
/// A sealed segment is rewritten with only its live messages once fewer than one in
/// COMPACT_RATIO of its records is live (and it held at least COMPACT_MIN_RECORDS).
const COMPACT_RATIO: u64 = 16;
const COMPACT_MIN_RECORDS: u64 = 64;

#[derive(Debug)]
struct Segment {
    id: u64,
    /// The append handle; only the active (last) segment has one, so a deep queue does not
    /// hold a descriptor per segment.
    file: Option<Arc<LogFile>>,
    /// Bytes in a sealed segment.
    len: u64,
    ack: Option<Arc<LogFile>>,
    first_seq: u64,
    last_seq: u64,
    /// Messages in this segment not yet acked.
    live: u64,
    /// Message records in the file.
    records: u64,
}

impl Segment {
    fn len(&self) -> u64 {
        self.file.as_ref().map_or(self.len, |f| f.len())
    }
}

/// Where the on-disk tail starts.
#[derive(Debug, Clone, Copy)]
struct Cursor {
    segment: u64,
    offset: u64,
}

#[derive(Debug)]
pub struct QueueLog {
    /// Segments roll over at this size.
    segment_bytes: u64,
    /// A transient queue's paging log: its files are written but never synced.
    volatile: bool,
    dir: PathBuf,
    label: String,
    syncer: Arc<Syncer>,
    segments: VecDeque<Segment>,
    next_segment: u64,
    tail: Option<Cursor>,
    tail_len: u64,
    /// What the ack files said of tail messages before a restart.
    tail_acks: AckState,
    /// Segments below this id were written before the last restart: their transient
    /// messages are gone.
    fresh_from: u64,
    /// A read handle on one sealed segment, for reading the tail.
    reader: Option<(u64, std::fs::File)>,
    /// Segments whose ack file is open, oldest first.
    open_acks: VecDeque<u64>,
    /// With encryption at rest: the keys records are sealed and opened with.
    keys: Option<Arc<KeyRing>>,
    nonces: Nonces,
}

fn segment_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.seg"))
}
fn ack_path(dir: &Path, id: u64) -> PathBuf {
    dir.join(format!("{id:016}.ack"))
}

/// What a segment's ack file says.
#[derive(Debug, Default)]
struct AckState {
    acked: HashSet<u64>,
    ranges: Vec<(u64, u64)>,
    delivered: HashSet<u64>,
}

impl AckState {
    fn is_acked(&self, seq: u64) -> bool {
        self.acked.contains(&seq) || self.ranges.iter().any(|&(a, b)| a <= seq && seq <= b)
    }
}

impl QueueLog {
    fn open_file(&self, path: &Path) -> std::io::Result<Arc<LogFile>> {
        if self.volatile {
            LogFile::open_volatile(path)
        } else {
            LogFile::open(path)
        }
    }

    /// Creates an empty log in `dir`; with `keys`, its records are sealed.
    pub fn create(
        dir: PathBuf,
        label: String,
        syncer: Arc<Syncer>,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<QueueLog, StoreError> {
        Self::create_with(dir, label, syncer, false, keys)
    }

    /// A log for a transient queue paging to disk: written, never synced, removed at start.
    pub fn create_transient(
        dir: PathBuf,
        label: String,
        syncer: Arc<Syncer>,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<QueueLog, StoreError> {
        Self::create_with(dir, label, syncer, true, keys)
    }

    /// No I/O: the directory and the first segment are made by the first append, so a
    /// declare holds no file open and touches no disk under the broker's locks.
    fn create_with(
        dir: PathBuf,
        label: String,
        syncer: Arc<Syncer>,
        volatile: bool,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<QueueLog, StoreError> {
        let log = QueueLog {
            volatile,
            segment_bytes: SEGMENT_BYTES,
            dir,
            label,
            syncer,
            segments: VecDeque::new(),
            next_segment: 1,
            tail: None,
            tail_len: 0,
            tail_acks: AckState::default(),
            fresh_from: 0,
            reader: None,
            open_acks: VecDeque::new(),
            keys,
            nonces: Nonces::new(),
        };
        Ok(log)
    }

    fn roll(&mut self) -> Result<(), StoreError> {
        // Seal the active segment: its bytes go to the file now (the syncer still holds it
        // for the fsync), and the append handle is dropped.
        if let Some(last) = self.segments.back_mut() {
            if let Some(f) = last.file.take() {
                f.write_buffered()?;
                last.len = f.len();
            }
        }
        let id = self.next_segment;
        self.next_segment += 1;
        if self.segments.is_empty() {
            std::fs::create_dir_all(&self.dir)?;
        }
        let file = self.open_file(&segment_path(&self.dir, id))?;
        self.segments.push_back(Segment {
            id,
            file: Some(file),
            len: 0,
            ack: None,
            first_seq: u64::MAX,
            last_seq: 0,
            live: 0,
            records: 0,
        });
        Ok(())
    }

    /// Reads bytes of a segment: through the append handle for the active one (which
    /// writes out what is buffered), else through a cached read handle.
    fn read_segment(&mut self, i: usize, offset: u64, len: usize) -> Result<Vec<u8>, StoreError> {
        use std::os::unix::fs::FileExt;
        if let Some(f) = &self.segments[i].file {
            return Ok(f.read_at(offset, len)?);
        }
        let id = self.segments[i].id;
        if self.reader.as_ref().is_none_or(|(rid, _)| *rid != id) {
            self.reader = Some((id, std::fs::File::open(segment_path(&self.dir, id))?));
        }
        let mut out = vec![0u8; len];
        if let Some((_, f)) = &self.reader {
            f.read_exact_at(&mut out, offset)?;
        }
        Ok(out)
    }

    fn read_acks(path: &Path, label: &str) -> AckState {
        let mut state = AckState::default();
        let Ok(data) = std::fs::read(path) else { return state };
        for item in scan(&Bytes::from(data)) {
            match item {
                Scanned::Record { mut payload, .. } if payload.len() >= 9 => {
                    let kind = payload.get_u8();
                    let seq = payload.get_u64();
                    match kind {
                        KIND_ACK => {
                            state.acked.insert(seq);
                        }
                        KIND_DELIVERED => {
                            state.delivered.insert(seq);
                        }
                        KIND_ACK_RANGE if payload.len() >= 8 => state.ranges.push((seq, payload.get_u64())),
                        _ => {}
                    }
                }
                Scanned::Record { .. } => {}
                Scanned::Corrupt { offset, len } | Scanned::TornTail { offset, len } => {
                    tracing::warn!("{label}: skipped {len} unreadable bytes of {} at offset {offset}", path.display());
                }
            }
        }
        state
    }

    /// Opens a log after a restart: cuts torn tails, skips (and reports) corrupt records,
    /// drops transient and acked messages, and returns up to `window` messages (and about
    /// `window_bytes` of bodies) for memory; the rest stay on disk as the tail.
    pub fn recover(
        dir: PathBuf,
        label: String,
        syncer: Arc<Syncer>,
        window: usize,
        window_bytes: u64,
        keys: Option<Arc<KeyRing>>,
    ) -> Result<RecoveredQueue, StoreError> {
        // A queue that never had a message has no directory.
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => Some(entries),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(e.into()),
        };
        let mut ids: Vec<u64> = entries
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".seg")?.parse().ok())
            .collect();
        ids.sort_unstable();
        let mut log = QueueLog {
            volatile: false,
            segment_bytes: SEGMENT_BYTES,
            dir: dir.clone(),
            label: label.clone(),
            syncer,
            segments: VecDeque::new(),
            next_segment: ids.last().map_or(1, |l| l + 1),
            tail: None,
            tail_len: 0,
            tail_acks: AckState::default(),
            fresh_from: ids.last().map_or(1, |l| l + 1),
            reader: None,
            open_acks: VecDeque::new(),
            keys,
            nonces: Nonces::new(),
        };
        let mut messages = Vec::new();
        let mut loaded_bytes = 0u64;
        let mut next_seq = 0u64;
        for (i, &id) in ids.iter().enumerate() {
            let path = segment_path(&dir, id);
            let data = Bytes::from(std::fs::read(&path)?);
            let acks = Self::read_acks(&ack_path(&dir, id), &label);
            let mut seg = Segment {
                id,
                file: None,
                len: data.len() as u64,
                ack: None,
                first_seq: u64::MAX,
                last_seq: 0,
                live: 0,
                records: 0,
            };
            for item in scan(&data) {
                match item {
                    Scanned::Record { offset, payload } => {
                        let (seq, message, expires_at) = match decode_message(payload, log.keys.as_deref()) {
                            Ok(m) => m,
                            Err(Undecodable::Malformed) => {
                                tracing::error!(
                                    "{label}: undecodable record in segment {id} at offset {offset}, skipped"
                                );
                                continue;
                            }
                            Err(Undecodable::Sealed(e)) => {
                                return Err(StoreError(format!(
                                    "{label}: the record in {} at offset {offset} is {e}",
                                    path.display()
                                )))
                            }
                        };
                        next_seq = next_seq.max(seq + 1);
                        seg.records += 1;
                        seg.first_seq = seg.first_seq.min(seq);
                        seg.last_seq = seg.last_seq.max(seq);
                        if !message.persistent || acks.is_acked(seq) {
                            continue;
                        }
                        seg.live += 1;
                        let redelivered = acks.delivered.contains(&seq);
                        if log.tail.is_none() && messages.len() < window && loaded_bytes < window_bytes {
                            loaded_bytes += message.body.len() as u64;
                            messages.push(LoadedMessage { seq, message: Arc::new(message), redelivered, expires_at });
                        } else {
                            if log.tail.is_none() {
                                log.tail = Some(Cursor { segment: id, offset });
                            }
                            log.tail_len += 1;
                        }
                    }
                    Scanned::Corrupt { offset, len } => {
                        tracing::error!(
                            "{label}: corrupt record in segment {id} at offset {offset} ({len} bytes), skipped"
                        );
                    }
                    Scanned::TornTail { offset, len } => {
                        if i + 1 == ids.len() {
                            tracing::warn!(
                                "{label}: torn write at the end of segment {id}: cut {len} bytes at offset {offset}"
                            );
                            let f = std::fs::OpenOptions::new().write(true).open(&path)?;
                            f.set_len(offset)?;
                            f.sync_all()?;
                            seg.len = offset;
                        } else {
                            tracing::error!(
                                "{label}: unreadable end of segment {id} at offset {offset} ({len} bytes), skipped"
                            );
                        }
                    }
                }
            }
            // Tail messages are read back later: remember what their ack files said.
            if log.tail.is_some() {
                log.tail_acks.acked.extend(acks.acked);
                log.tail_acks.ranges.extend(acks.ranges);
                log.tail_acks.delivered.extend(acks.delivered);
            }
            if seg.live == 0 {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_file(ack_path(&dir, id));
            } else {
                log.segments.push_back(seg);
            }
        }
        // The next append opens a new segment: a recovered queue holds no file open until then.
        Ok(RecoveredQueue { log: Box::new(log), messages, next_seq })
    }

    fn segment_of(&self, seq: u64) -> Option<usize> {
        // Segments hold increasing, non-overlapping seq ranges.
        let i = self.segments.partition_point(|s| s.first_seq != u64::MAX && s.first_seq <= seq);
        let i = i.checked_sub(1)?;
        (self.segments[i].last_seq >= seq).then_some(i)
    }

    fn ack_file(&mut self, i: usize) -> Result<Arc<LogFile>, StoreError> {
        if let Some(f) = &self.segments[i].ack {
            return Ok(f.clone());
        }
        let id = self.segments[i].id;
        // Close the ack file used longest ago; the syncer keeps what it still has to write.
        if self.open_acks.len() >= OPEN_ACK_FILES {
            if let Some(old) = self.open_acks.pop_front() {
                if let Some(seg) = self.segments.iter_mut().find(|s| s.id == old) {
                    seg.ack = None;
                }
            }
        }
        let f = self.open_file(&ack_path(&self.dir, id))?;
        self.segments[i].ack = Some(f.clone());
        self.open_acks.push_back(id);
        Ok(f)
    }

    /// Deletes segments with nothing live, never the active one (open for appends).
    fn collect(&mut self, i: usize) {
        let active = i + 1 >= self.segments.len() && self.segments[i].file.is_some();
        if active || self.segments[i].live > 0 {
            return;
        }
        if self.tail.is_some_and(|c| c.segment == self.segments[i].id) {
            return;
        }
        let seg = self.segments.remove(i).expect("index checked");
        self.open_acks.retain(|&id| id != seg.id);
        if self.reader.as_ref().is_some_and(|(id, _)| *id == seg.id) {
            self.reader = None;
        }
        let _ = std::fs::remove_file(segment_path(&self.dir, seg.id));
        let _ = std::fs::remove_file(ack_path(&self.dir, seg.id));
    }

    fn ack_record(&mut self, seq: u64, kind: u8) -> Result<Option<(usize, u64)>, StoreError> {
        let Some(i) = self.segment_of(seq) else { return Ok(None) };
        let f = self.ack_file(i)?;
        let (_, ticket) = f.append(&self.syncer, |b| {
            put_record(b, |b| {
                b.put_u8(kind);
                b.put_u64(seq);
            });
        });
        Ok(Some((i, ticket)))
    }

    /// Rewrites a sealed, sparse segment that lies wholly before the on-disk tail.
    fn maybe_compact(&mut self, i: usize) {
        let seg = &self.segments[i];
        if seg.file.is_some() || seg.records < COMPACT_MIN_RECORDS || seg.live * COMPACT_RATIO > seg.records {
            return;
        }
        if self.tail.is_some_and(|c| seg.id >= c.segment) {
            return;
        }
        if let Err(e) = self.compact(i) {
            tracing::warn!("{}: segment {} not compacted: {e}", self.label, self.segments[i].id);
            // Do not try again on every ack.
            self.segments[i].records = self.segments[i].live;
        }
    }

    /// Keeps only a segment's live messages (and their delivery marks): each file is
    /// rewritten to a temporary one, fsynced and renamed over the old, so a crash leaves the
    /// old or the new. Seq ranges are unchanged, so nothing else about the log moves.
    fn compact(&mut self, i: usize) -> Result<(), StoreError> {
        let id = self.segments[i].id;
        // Acks for this segment may still be buffered: they must be in the file we read.
        if let Some(f) = self.segments[i].ack.take() {
            f.write_buffered()?;
        }
        self.open_acks.retain(|&a| a != id);
        let acks = Self::read_acks(&ack_path(&self.dir, id), &self.label);
        let data = Bytes::from(std::fs::read(segment_path(&self.dir, id))?);
        let mut kept = bytes::BytesMut::new();
        let mut marks = bytes::BytesMut::new();
        let mut live = 0u64;
        for item in scan(&data) {
            let Scanned::Record { payload, .. } = item else { continue };
            if payload.len() < 10 || (payload[0] != KIND_MESSAGE && payload[0] != KIND_SEALED) {
                continue;
            }
            let seq = u64::from_be_bytes(payload[1..9].try_into().unwrap_or_default());
            let persistent = payload[9] & FLAG_PERSISTENT != 0;
            if acks.is_acked(seq) || (!persistent && id < self.fresh_from) {
                continue;
            }
            live += 1;
            if let Some(keys) = self.keys.as_deref().filter(|k| !sealed_with(&payload, k.current_id())) {
                // Written before encryption was on, or with a previous key: sealed anew with
                // the current key, so the old key is needed only until its segments go.
                let (seq, message, expires_at) = decode_message(payload, Some(keys))
                    .map_err(|e| StoreError(format!("segment {id}: record {seq} cannot be read: {e:?}")))?;
                let nonce = self.nonces.take();
                put_record(&mut kept, |b| encode_message(b, seq, &message, expires_at, Some((keys, nonce))));
            } else {
                put_record(&mut kept, |b| b.put_slice(&payload));
            }
            if acks.delivered.contains(&seq) {
                put_record(&mut marks, |b| {
                    b.put_u8(KIND_DELIVERED);
                    b.put_u64(seq);
                });
            }
        }
        if live != self.segments[i].live {
            return Err(StoreError(format!("found {live} live messages, expected {}", self.segments[i].live)));
        }
        let before = data.len();
        super::write_atomically(&segment_path(&self.dir, id), &kept)?;
        super::write_atomically(&ack_path(&self.dir, id), &marks)?;
        if self.reader.as_ref().is_some_and(|(r, _)| *r == id) {
            self.reader = None;
        }
        let seg = &mut self.segments[i];
        seg.len = kept.len() as u64;
        seg.records = live;
        tracing::debug!("{}: compacted segment {id} from {before} to {} bytes ({live} live)", self.label, kept.len());
        Ok(())
    }

    /// Reads records from the tail cursor until `max` live messages, `max_bytes` of their
    /// bodies, or the end of the log.
    fn read_from_cursor(&mut self, max: usize, max_bytes: u64) -> Result<Vec<LoadedMessage>, StoreError> {
        let mut out: Vec<LoadedMessage> = Vec::new();
        let mut bytes = 0u64;
        while out.len() < max && bytes < max_bytes && self.tail_len > 0 {
            let Some(cur) = self.tail else { break };
            let Some(si) = self.segments.iter().position(|s| s.id == cur.segment) else {
                // The cursor's segment is gone (purged): nothing more is in the tail.
                self.tail = None;
                self.tail_len = 0;
                break;
            };
            let end = self.segments[si].len();
            if cur.offset >= end {
                match self.segments.get(si + 1) {
                    Some(next) => self.tail = Some(Cursor { segment: next.id, offset: 0 }),
                    None => {
                        tracing::error!("{}: {} messages expected on disk were not found", self.label, self.tail_len);
                        self.tail = None;
                        self.tail_len = 0;
                    }
                }
                continue;
            }
            let want = ((end - cur.offset) as usize).min(READ_CHUNK);
            let chunk = Bytes::from(self.read_segment(si, cur.offset, want)?);
            let mut pos = 0usize;
            while pos + HEADER_LEN <= chunk.len() && out.len() < max && bytes < max_bytes {
                let magic = u32::from_be_bytes([chunk[pos], chunk[pos + 1], chunk[pos + 2], chunk[pos + 3]]);
                let len = u32::from_be_bytes([chunk[pos + 4], chunk[pos + 5], chunk[pos + 6], chunk[pos + 7]]) as usize;
                if magic != MAGIC {
                    return Err(StoreError(format!(
                        "{}: bad record in segment {} at offset {}",
                        self.label,
                        cur.segment,
                        cur.offset + pos as u64
                    )));
                }
                if pos + HEADER_LEN + len > chunk.len() {
                    break;
                }
                let payload = chunk.slice(pos + HEADER_LEN..pos + HEADER_LEN + len);
                pos += HEADER_LEN + len;
                let (seq, message, expires_at) = match decode_message(payload, self.keys.as_deref()) {
                    Ok(m) => m,
                    Err(Undecodable::Malformed) => continue,
                    Err(Undecodable::Sealed(e)) => {
                        return Err(StoreError(format!("{}: a record in segment {} is {e}", self.label, cur.segment)))
                    }
                };
                if let Some(m) = self.take_if_live(cur.segment, seq, message, expires_at) {
                    bytes += m.message.body.len() as u64;
                    out.push(m);
                }
            }
            if pos == 0 {
                // One record larger than the chunk: read exactly it.
                let len = u32::from_be_bytes([chunk[4], chunk[5], chunk[6], chunk[7]]) as usize;
                let whole = Bytes::from(self.read_segment(si, cur.offset, HEADER_LEN + len)?);
                let (seq, message, expires_at) = decode_message(whole.slice(HEADER_LEN..), self.keys.as_deref())
                    .map_err(|e| {
                        StoreError(format!("{}: undecodable record in segment {}: {e:?}", self.label, cur.segment))
                    })?;
                pos = whole.len();
                if let Some(m) = self.take_if_live(cur.segment, seq, message, expires_at) {
                    bytes += m.message.body.len() as u64;
                    out.push(m);
                }
            }
            self.tail = Some(Cursor { segment: cur.segment, offset: cur.offset + pos as u64 });
        }
        if self.tail_len == 0 {
            self.tail = None;
            self.tail_acks = AckState::default();
        }
        Ok(out)
    }

    /// A record read from the tail, unless it was settled before a restart.
    fn take_if_live(&mut self, segment: u64, seq: u64, message: Message, expires_at: u64) -> Option<LoadedMessage> {
        let old = segment < self.fresh_from;
        if old && (!message.persistent || self.tail_acks.is_acked(seq)) {
            return None;
        }
        self.tail_len = self.tail_len.saturating_sub(1);
        let redelivered = old && self.tail_acks.delivered.contains(&seq);
        Some(LoadedMessage { seq, message: Arc::new(message), redelivered, expires_at })
    }
}

impl MessageLog for QueueLog {
    fn append(&mut self, seq: u64, message: &Message, expires_at: u64, to_tail: bool) -> Result<u64, StoreError> {
        if self.segments.back().is_none_or(|s| s.file.is_none() || s.len() >= self.segment_bytes) {
            self.roll()?;
        }
        let syncer = self.syncer.clone();
        let seal = self.keys.as_deref().map(|k| (k, self.nonces.take()));
        let seg = self.segments.back_mut().expect("rolled");
        let file = seg.file.as_ref().expect("the last segment is active");
        let (offset, ticket) = file.append(&syncer, |b| {
            put_record(b, |b| encode_message(b, seq, message, expires_at, seal));
        });
        seg.first_seq = seg.first_seq.min(seq);
        seg.last_seq = seg.last_seq.max(seq);
        seg.live += 1;
        seg.records += 1;
        if to_tail {
            if self.tail.is_none() {
                self.tail = Some(Cursor { segment: seg.id, offset });
            }
            self.tail_len += 1;
        }
        Ok(ticket)
    }

    fn ack(&mut self, seq: u64) -> Result<u64, StoreError> {
        match self.ack_record(seq, KIND_ACK)? {
            Some((i, ticket)) => {
                let seg = &mut self.segments[i];
                seg.live = seg.live.saturating_sub(1);
                if seg.live == 0 {
                    self.collect(i);
                } else {
                    self.maybe_compact(i);
                }
                Ok(ticket)
            }
            None => Ok(0),
        }
    }

    fn delivered(&mut self, seq: u64) {
        if let Err(e) = self.ack_record(seq, KIND_DELIVERED) {
            tracing::warn!("{}: cannot record a delivery: {e}", self.label);
        }
    }

    fn tail_len(&self) -> u64 {
        self.tail_len
    }

    fn read_tail(&mut self, max: usize, max_bytes: u64) -> Result<Vec<LoadedMessage>, StoreError> {
        self.read_from_cursor(max, max_bytes)
    }

    fn purge_tail(&mut self) -> Result<u64, StoreError> {
        let Some(cur) = self.tail else { return Ok(0) };
        let purged = self.tail_len;
        // Everything from the cursor on is tail: ack the rest of the cursor's segment by
        // range, and delete the segments after it outright.
        let Some(si) = self.segments.iter().position(|s| s.id == cur.segment) else { return Ok(0) };
        let from_seq = {
            let chunk = self.read_segment(si, cur.offset, HEADER_LEN + 9)?;
            u64::from_be_bytes(chunk[HEADER_LEN + 1..HEADER_LEN + 9].try_into().unwrap_or_default())
        };
        let last = self.segments[si].last_seq;
        let f = self.ack_file(si)?;
        f.append(&self.syncer, |b| {
            put_record(b, |b| {
                b.put_u8(KIND_ACK_RANGE);
                b.put_u64(from_seq);
                b.put_u64(last);
            });
        });
        // Only the tail's own messages in this segment stop being live; those before the
        // cursor are in memory or out with consumers.
        let in_later: u64 = self.segments.iter().skip(si + 1).map(|s| s.live).sum();
        let seg = &mut self.segments[si];
        seg.live = seg.live.saturating_sub(self.tail_len.saturating_sub(in_later));
        while self.segments.len() > si + 1 {
            if let Some(s) = self.segments.pop_back() {
                self.open_acks.retain(|&id| id != s.id);
                let _ = std::fs::remove_file(segment_path(&self.dir, s.id));
                let _ = std::fs::remove_file(ack_path(&self.dir, s.id));
            }
        }
        self.reader = None;
        self.tail = None;
        self.tail_len = 0;
        self.tail_acks = AckState::default();
        self.roll()?;
        self.collect(si);
        Ok(purged)
    }

    fn destroy(&mut self) {
        self.segments.clear();
        self.reader = None;
        // A log that never had a message has no directory.
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: cannot remove {}: {e}", self.label, self.dir.display());
            }
        }
    }
}

#[cfg(test)]
mod tests;
