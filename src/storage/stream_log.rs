//! A stream's log: messages appended and never removed by consumption, addressed by offset
//! (0, 1, 2, ... for the life of the stream), read from any offset or from a point in time;
//! old messages go by retention, a whole segment at a time, as RabbitMQ's streams do.
//!
//! On disk a stream is a directory of segments. A segment is a file of chunks named by the
//! offset of its first message (`00000000000000000000.segment`), with a sparse index beside
//! it (`.index`): one fixed-size entry per chunk (its first offset, message count, timestamp
//! and position in the segment), kept in memory too. A read by offset or by timestamp is a
//! binary search of the index and one positioned read, never a scan.
//!
//! A chunk is what one append writes, laid out as RabbitMQ's streams (osiris) write theirs
//! and as the stream protocol's `deliver` carries them: a 48-byte header (magic and version,
//! chunk type, entry and record counts, timestamp, epoch, first offset, the CRC-32 of the
//! data, data length, trailer length), the entries (each `size (u32) | bytes`), then a
//! trailer (the newest publishing id of each named publisher in the chunk, as osiris tracks
//! them for deduplication). So a chunk of the stream protocol's messages goes to a consumer as
//! it lies on disk: a frame header, then the chunk's header and data sent from the page cache
//! (`sendfile`), once per consumer and without being read into the broker.
//!
//! Two chunk types: osiris's user chunk, whose entries are AMQP 1.0 messages as stream
//! protocol clients publish and receive them; and Hare's own, whose entries are its records
//! of AMQP 0-9-1 publishes (kept as AMQP 0-9-1, so an AMQP consumer is served without a
//! conversion). A round's messages are cut into chunks where the kind changes. Chunks of
//! the layout before this one (a 32-byte header, magic "HSC1") are read still.
//!
//! Chunks describe and verify themselves, so a follower can later fetch a stream's chunks by
//! offset and check them as they are (the cluster's replication of streams will build on it).
//!
//! With encryption at rest, a chunk's data and its trailer are each sealed as one blob with
//! the node's key (see [`super::cipher`]) and the header says so; the header stays in the
//! clear, so the index and the checks work alike on both. A sealed chunk is opened to be
//! sent.
//!
//! The index is written after its chunk and without an fsync of its own: on open, the chunks
//! of the last segment past its index are read back and verified, the index made whole from
//! them, and a torn chunk at the end (a crash during an append that was never synced, so
//! never confirmed) cut off.

use super::cipher::{is_sealed_blob, KeyRing, Nonces};
use crate::broker::store::{CompressedBatch, RecordFormat, StreamWire};
use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Osiris's magic (5) and the chunk format version the stream protocol's clients read (0).
pub const MAGIC_VERSION: u8 = 0x50;
/// magic and version u8, chunk type u8, entries u16, records u32, timestamp i64, epoch u64,
/// first offset u64, data CRC u32, data length u32, trailer length u32, filter size u8,
/// reserved 3 bytes (Hare's: the second says whether the chunk is sealed).
pub const CHUNK_HEADER: usize = 48;
/// Osiris's user chunk: entries are AMQP 1.0 messages.
const TYPE_USER: u8 = 0;
/// Hare's chunk of AMQP 0-9-1 records; never sent as it is.
const TYPE_RECORDS: u8 = 0x48;
/// Where the header says the data and trailer are sealed (one of osiris's reserved bytes).
const SEALED_AT: usize = 45;
/// The epoch of every chunk: one node, one leader, never re-elected.
const EPOCH: u64 = 1;
/// A chunk holds at most this many entries (the header counts them in 16 bits).
pub const MAX_ENTRIES: usize = u16::MAX as usize;
/// And at most this many records: a compressed batch of a few bytes may stand for 65,535
/// messages, and a chunk read back keeps a place for each (8 MiB at most).
pub const MAX_RECORDS: usize = 1 << 18;
/// A trailer entry's type for a publisher's newest publishing id (osiris's "sequence").
const TRACK_SEQUENCE: u8 = 0;
/// "HSC1": the layout before osiris's, read still: magic u32, count u32, first offset u64,
/// timestamp i64, data length u32, CRC32C u32; records only.
const LEGACY_MAGIC: u32 = 0x4853_4331;
const LEGACY_HEADER: usize = 32;
/// first offset u64, timestamp i64, position u64, count u32, filter summary u32.
const INDEX_ENTRY: usize = 32;
/// A chunk's data is at most this large (a message is at most 512 MiB).
const MAX_CHUNK_DATA: u64 = 1 << 30;

/// A chunk's place: what the index and its header say of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub first_offset: u64,
    pub count: u32,
    /// Milliseconds since the epoch, when it was appended.
    pub timestamp: i64,
    /// Where its header starts in its segment.
    pub position: u64,
    /// Header, data and trailer.
    pub len: u64,
    pub format: RecordFormat,
    /// Its data's length as stored, and whether it is sealed.
    pub data_len: u64,
    pub sealed: bool,
    /// Written in the layout before osiris's.
    pub legacy: bool,
    /// Its filter summary (`broker::store::filter_bit`), kept in its index entry; 0 when
    /// not recorded.
    pub filter: u32,
}

/// A chunk read back: its messages, each a slice of one buffer, and the publishers' newest
/// publishing ids its trailer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub first_offset: u64,
    pub timestamp: i64,
    pub format: RecordFormat,
    /// One per offset; the messages of a compressed batch are empty places.
    pub messages: Vec<Bytes>,
    pub writers: Vec<(String, u64)>,
    pub batches: Vec<CompressedBatch>,
}

struct Segment {
    first_offset: u64,
    /// Shared, so an fsync runs without the log's owner holding it (see [`StreamLog::active_file`]).
    file: Arc<File>,
    index: File,
    chunks: Vec<ChunkInfo>,
    size: u64,
}

impl Segment {
    fn path(dir: &Path, first_offset: u64, ext: &str) -> PathBuf {
        dir.join(format!("{first_offset:020}.{ext}"))
    }

    fn create(dir: &Path, first_offset: u64) -> std::io::Result<Segment> {
        let open = |ext| {
            OpenOptions::new().create(true).truncate(true).read(true).write(true).open(Segment::path(
                dir,
                first_offset,
                ext,
            ))
        };
        Ok(Segment {
            first_offset,
            file: Arc::new(open("segment")?),
            index: open("index")?,
            chunks: Vec::new(),
            size: 0,
        })
    }

    /// The messages' offsets end here.
    fn next_offset(&self) -> u64 {
        self.chunks.last().map_or(self.first_offset, |c| c.first_offset + c.count as u64)
    }
}

/// How a stream's log is kept.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// A segment is closed and a new one begun past this many bytes
    /// (`x-stream-max-segment-size-bytes`; RabbitMQ's default is 500 MB).
    pub max_segment_bytes: u64,
}

/// One stream's log, in its own directory.
pub struct StreamLog {
    dir: PathBuf,
    settings: Settings,
    /// Oldest first; never empty (a new stream has one empty segment).
    segments: Vec<Segment>,
    /// With encryption at rest: the keys chunks are sealed and opened with.
    keys: Option<Arc<KeyRing>>,
    nonces: Nonces,
}

impl std::fmt::Debug for StreamLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamLog").field("dir", &self.dir).field("segments", &self.segments.len()).finish()
    }
}

impl StreamLog {
    /// Opens the log in `dir`, creating it empty if there is none.
    pub fn open(dir: &Path, settings: Settings, keys: Option<Arc<KeyRing>>) -> std::io::Result<StreamLog> {
        std::fs::create_dir_all(dir)?;
        let mut firsts: Vec<u64> = std::fs::read_dir(dir)?
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.strip_suffix(".segment")?.parse().ok())
            .collect();
        firsts.sort_unstable();
        let mut segments = Vec::with_capacity(firsts.len().max(1));
        for (i, &first) in firsts.iter().enumerate() {
            segments.push(open_segment(dir, first, i + 1 == firsts.len())?);
        }
        if segments.is_empty() {
            segments.push(Segment::create(dir, 0)?);
            sync_dir(dir)?;
        }
        Ok(StreamLog { dir: dir.to_path_buf(), settings, segments, keys, nonces: Nonces::new() })
    }

    /// Changes how segments are sized from the next one on.
    pub fn set_settings(&mut self, settings: Settings) {
        self.settings = settings;
    }

    /// The offset of the oldest message kept (the next one's, when there is none).
    pub fn first_offset(&self) -> u64 {
        self.segments[0].first_offset
    }

    /// The offset the next message appended gets.
    pub fn next_offset(&self) -> u64 {
        self.segments.last().map_or(0, Segment::next_offset)
    }

    /// Bytes on disk (chunks; the indexes are not counted).
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.size).sum()
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Appends `messages` (at most [`MAX_ENTRIES`]) as one chunk of `format` stamped
    /// `timestamp` (ms), with `writers` (publishers' references and newest publishing ids)
    /// in its trailer; returns the first one's offset. Written, not synced:
    /// [`StreamLog::sync`] makes it durable. (The broker appends with `append_entries`.)
    #[cfg(test)]
    pub fn append(
        &mut self,
        format: RecordFormat,
        messages: &[Bytes],
        writers: &[(&str, u64)],
        timestamp: i64,
    ) -> std::io::Result<u64> {
        self.append_entries(format, messages, &[], writers, 0, timestamp)
    }

    /// As [`StreamLog::append`], where `batches` (empty: none) says which entries are
    /// compressed sub-entry batches, and of how many messages: those are written as they
    /// are (their own header and body) and take that many offsets; and `filter` is the
    /// chunk's filter summary, kept in its index entry.
    pub fn append_entries(
        &mut self,
        format: RecordFormat,
        messages: &[Bytes],
        batches: &[u16],
        writers: &[(&str, u64)],
        filter: u32,
        timestamp: i64,
    ) -> std::io::Result<u64> {
        let first_offset = self.next_offset();
        if messages.is_empty() {
            return Ok(first_offset);
        }
        let batch = |i: usize| batches.get(i).copied().unwrap_or(0);
        let records: u64 = (0..messages.len()).map(|i| batch(i).max(1) as u64).sum();
        if messages.len() > MAX_ENTRIES || records > MAX_RECORDS as u64 {
            return Err(std::io::Error::other("more messages than a chunk holds"));
        }
        // Timestamps never go back along the log (a clock stepped back stamps as the last
        // chunk), so a search by time is a binary search.
        let last = self.segments.iter().rev().find_map(|s| s.chunks.last()).map(|c| c.timestamp);
        let timestamp = last.map_or(timestamp, |t| timestamp.max(t));
        let data_len: usize =
            messages.iter().enumerate().map(|(i, m)| if batch(i) > 0 { m.len() } else { 4 + m.len() }).sum();
        if data_len as u64 > MAX_CHUNK_DATA {
            return Err(std::io::Error::other("a chunk's messages exceed 1 GiB"));
        }
        let mut buf = BytesMut::with_capacity(CHUNK_HEADER + data_len + writers.len() * 32);
        buf.put_bytes(0, CHUNK_HEADER);
        for (i, m) in messages.iter().enumerate() {
            // A simple entry: its top bit clear, then 31 bits of size; a sub-entry batch
            // begins with its own header, top bit set.
            if batch(i) == 0 {
                buf.put_u32(m.len() as u32);
            }
            buf.put_slice(m);
        }
        for (reference, id) in writers {
            let reference = &reference.as_bytes()[..reference.len().min(255)];
            buf.put_u8(TRACK_SEQUENCE);
            buf.put_u8(reference.len() as u8);
            buf.put_slice(reference);
            buf.put_u64(first_offset);
            buf.put_u64(*id);
        }
        let mut trailer_len = buf.len() - CHUNK_HEADER - data_len;
        let mut data_len = data_len;
        if let Some(keys) = &self.keys {
            let data = keys.seal(&mut self.nonces, &buf[CHUNK_HEADER..CHUNK_HEADER + data_len]);
            let trailer = (trailer_len > 0).then(|| keys.seal(&mut self.nonces, &buf[CHUNK_HEADER + data_len..]));
            buf.truncate(CHUNK_HEADER);
            buf.extend_from_slice(&data);
            data_len = data.len();
            if let Some(t) = trailer {
                buf.extend_from_slice(&t);
                trailer_len = t.len();
            }
        }
        let crc = crc32fast::hash(&buf[CHUNK_HEADER..CHUNK_HEADER + data_len]);
        let mut h = &mut buf[..CHUNK_HEADER];
        h.put_u8(MAGIC_VERSION);
        h.put_u8(match format {
            RecordFormat::Amqp10 => TYPE_USER,
            RecordFormat::Hare => TYPE_RECORDS,
        });
        h.put_u16(messages.len() as u16);
        h.put_u32(records as u32);
        h.put_i64(timestamp);
        h.put_u64(EPOCH);
        h.put_u64(first_offset);
        h.put_u32(crc);
        h.put_u32(data_len as u32);
        h.put_u32(trailer_len as u32);
        buf[SEALED_AT] = self.keys.is_some() as u8;
        let active = self.segments.last().map_or(0, |s| s.size);
        if active > 0 && active + buf.len() as u64 > self.settings.max_segment_bytes {
            // The sync of a round covers the active segment only: chunks a round wrote to
            // this one before it filled must reach the disk first.
            if let Some(full) = self.segments.last() {
                full.file.sync_data()?;
            }
            let segment = Segment::create(&self.dir, first_offset)?;
            // The new file's name must be durable before a chunk in it is confirmed.
            sync_dir(&self.dir)?;
            self.segments.push(segment);
        }
        let Some(segment) = self.segments.last_mut() else { return Err(std::io::Error::other("no segment")) };
        let info = ChunkInfo {
            first_offset,
            count: records as u32,
            timestamp,
            position: segment.size,
            len: buf.len() as u64,
            format,
            data_len: data_len as u64,
            sealed: self.keys.is_some(),
            legacy: false,
            filter,
        };
        segment.file.write_all_at(&buf, segment.size)?;
        segment.index.write_all_at(&index_entry(&info), (segment.chunks.len() * INDEX_ENTRY) as u64)?;
        segment.size += info.len;
        segment.chunks.push(info);
        Ok(first_offset)
    }

    /// Makes every chunk appended so far durable (fdatasync of the segment being written;
    /// the index is rebuilt from the chunks if it lags).
    pub fn sync(&self) -> std::io::Result<()> {
        match self.active_file() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// The segment being written, to fsync without holding the log (readers go on
    /// meanwhile). An append writes into one segment, so syncing the one written last
    /// makes every append so far durable, as [`StreamLog::sync`] does.
    pub fn active_file(&self) -> Option<Arc<File>> {
        self.segments.last().map(|s| s.file.clone())
    }

    /// The chunk that holds `offset` (or the first after it, if retention took it); None
    /// at the end of the log.
    pub fn chunk_at(&self, offset: u64) -> Option<ChunkInfo> {
        let offset = offset.max(self.first_offset());
        // The last segment whose first offset is at or before it, then its chunk.
        let s = self.segments.partition_point(|s| s.first_offset <= offset).checked_sub(1)?;
        let chunks = &self.segments[s].chunks;
        let c = chunks.partition_point(|c| c.first_offset + c.count as u64 <= offset);
        chunks.get(c).copied().or_else(|| self.segments.get(s + 1).and_then(|n| n.chunks.first().copied()))
    }

    /// The first chunk appended at or after `timestamp` (ms), where a consumer that starts
    /// from that time begins, as RabbitMQ's streams start; None if every chunk is older.
    pub fn chunk_from_time(&self, timestamp: i64) -> Option<ChunkInfo> {
        // Timestamps rise with offsets (appends are stamped in order): a binary search.
        let s = self.segments.partition_point(|s| s.chunks.last().is_some_and(|c| c.timestamp < timestamp));
        let chunks = &self.segments.get(s)?.chunks;
        chunks.get(chunks.partition_point(|c| c.timestamp < timestamp)).copied()
    }

    /// The chunk after `chunk`, if one was appended.
    pub fn next_chunk(&self, chunk: &ChunkInfo) -> Option<ChunkInfo> {
        self.chunk_at(chunk.first_offset + chunk.count as u64)
    }

    fn segment_of(&self, chunk: &ChunkInfo) -> std::io::Result<&Segment> {
        let s = self.segments.partition_point(|s| s.first_offset <= chunk.first_offset);
        s.checked_sub(1).map(|s| &self.segments[s]).ok_or_else(|| gone(chunk.first_offset))
    }

    /// Reads a whole chunk back and verifies it: its header (parsed, and its bytes as
    /// stored), its data and its trailer, opened if sealed.
    fn read_verified(&self, chunk: &ChunkInfo) -> std::io::Result<(Header, Bytes, Bytes, Bytes)> {
        let segment = self.segment_of(chunk)?;
        let mut buf = BytesMut::zeroed(chunk.len as usize);
        segment.file.read_exact_at(&mut buf, chunk.position)?;
        let whole = buf.freeze();
        let (header, data, trailer) = parse_chunk(whole.clone()).ok_or_else(|| corrupt(chunk.first_offset))?;
        if header.first_offset != chunk.first_offset {
            return Err(corrupt(chunk.first_offset));
        }
        let head = whole.slice(..header.header_len() as usize);
        Ok((header, head, self.opened(data)?, self.opened(trailer)?))
    }

    /// A sealed blob opened; anything else as it is.
    fn opened(&self, data: Bytes) -> std::io::Result<Bytes> {
        if !is_sealed_blob(&data) {
            return Ok(data);
        }
        let keys = self.keys.as_ref().ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidData, "a sealed chunk, and no encryption key")
        })?;
        Ok(Bytes::from(keys.open(&data).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?))
    }

    /// Reads a chunk back and verifies it.
    pub fn read(&self, chunk: &ChunkInfo) -> std::io::Result<Chunk> {
        let (header, _, data, trailer) = self.read_verified(chunk)?;
        let (messages, batches) = match header.legacy {
            true => (split_messages(data, header.count).ok_or_else(|| corrupt(chunk.first_offset))?, Vec::new()),
            false => split_entries(data, &header).ok_or_else(|| corrupt(chunk.first_offset))?,
        };
        let writers = parse_trailer(&trailer).ok_or_else(|| corrupt(chunk.first_offset))?;
        Ok(Chunk {
            first_offset: header.first_offset,
            timestamp: header.timestamp,
            format: header.format,
            messages,
            writers,
            batches,
        })
    }

    /// A chunk of AMQP 1.0 messages as the stream protocol delivers it (header and data,
    /// without the trailer): where it lies in its segment, for the connection to send from
    /// the page cache; or, sealed, opened into memory with its header made to match. None
    /// for a chunk of records, which a consumer is sent converted.
    pub fn wire(&self, chunk: &ChunkInfo) -> std::io::Result<Option<StreamWire>> {
        if chunk.format != RecordFormat::Amqp10 || chunk.legacy {
            return Ok(None);
        }
        if !chunk.sealed {
            let segment = self.segment_of(chunk)?;
            let len = CHUNK_HEADER + chunk.data_len as usize;
            return Ok(Some(StreamWire::File { file: segment.file.clone(), position: chunk.position, len }));
        }
        let (_, head, data, _) = self.read_verified(chunk)?;
        let mut out = BytesMut::with_capacity(CHUNK_HEADER + data.len());
        out.put_slice(&head[..32]);
        out.put_u32(crc32fast::hash(&data));
        out.put_u32(data.len() as u32);
        out.put_u32(0);
        out.put_u32(0);
        out.put_slice(&data);
        Ok(Some(StreamWire::Memory(out.freeze())))
    }

    /// Removes the oldest segments, never the one being written, while the log is larger
    /// than `max_bytes` or their newest chunk is older than `max_age_ms` before `now`
    /// (`x-max-length-bytes` and `x-max-age`, applied a segment at a time as RabbitMQ
    /// does). Returns how many segments went.
    pub fn apply_retention(
        &mut self,
        max_bytes: Option<u64>,
        max_age_ms: Option<i64>,
        now: i64,
    ) -> std::io::Result<usize> {
        let mut removed = 0;
        while self.segments.len() > 1 {
            let oldest = &self.segments[0];
            let too_big = max_bytes.is_some_and(|m| self.size() > m);
            let too_old = max_age_ms
                .is_some_and(|age| oldest.chunks.last().is_none_or(|c| c.timestamp < now.saturating_sub(age)));
            if !too_big && !too_old {
                break;
            }
            let first = oldest.first_offset;
            self.segments.remove(0);
            std::fs::remove_file(Segment::path(&self.dir, first, "segment"))?;
            let _ = std::fs::remove_file(Segment::path(&self.dir, first, "index"));
            removed += 1;
        }
        Ok(removed)
    }
}

/// Makes a directory's entries (a new segment's name) durable.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn gone(offset: u64) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::NotFound, format!("the chunk at offset {offset} is no longer kept"))
}

fn corrupt(offset: u64) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("the chunk at offset {offset} does not verify"))
}

fn index_entry(c: &ChunkInfo) -> [u8; INDEX_ENTRY] {
    let mut e = [0u8; INDEX_ENTRY];
    e[0..8].copy_from_slice(&c.first_offset.to_be_bytes());
    e[8..16].copy_from_slice(&c.timestamp.to_be_bytes());
    e[16..24].copy_from_slice(&c.position.to_be_bytes());
    e[24..28].copy_from_slice(&c.count.to_be_bytes());
    e[28..32].copy_from_slice(&c.filter.to_be_bytes());
    e
}

/// A chunk's header, as written (in either layout).
struct Header {
    format: RecordFormat,
    /// Records (offsets), and entries (a compressed batch is one entry of several records).
    count: u32,
    entries: u32,
    first_offset: u64,
    timestamp: i64,
    data_len: u64,
    trailer_len: u64,
    crc: u32,
    sealed: bool,
    legacy: bool,
}

impl Header {
    fn header_len(&self) -> u64 {
        if self.legacy {
            LEGACY_HEADER as u64
        } else {
            CHUNK_HEADER as u64
        }
    }

    /// The whole chunk's length.
    fn len(&self) -> u64 {
        self.header_len() + self.data_len + self.trailer_len
    }

    fn info(&self, position: u64) -> ChunkInfo {
        ChunkInfo {
            first_offset: self.first_offset,
            count: self.count,
            timestamp: self.timestamp,
            position,
            len: self.len(),
            format: self.format,
            data_len: self.data_len,
            sealed: self.sealed,
            legacy: self.legacy,
            filter: 0,
        }
    }
}

/// The header at the start of `b`, if it is one.
fn header(b: &[u8]) -> Option<Header> {
    let u32_at = |at: usize| Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let u64_at = |at: usize| Some(u64::from_be_bytes(b.get(at..at + 8)?.try_into().ok()?));
    let h = if u32_at(0)? == LEGACY_MAGIC {
        Header {
            format: RecordFormat::Hare,
            count: u32_at(4)?,
            entries: u32_at(4)?,
            first_offset: u64_at(8)?,
            timestamp: u64_at(16)? as i64,
            data_len: u32_at(24)? as u64,
            trailer_len: 0,
            crc: u32_at(28)?,
            sealed: false,
            legacy: true,
        }
    } else {
        if *b.first()? != MAGIC_VERSION || b.len() < CHUNK_HEADER {
            return None;
        }
        let format = match b[1] {
            TYPE_USER => RecordFormat::Amqp10,
            TYPE_RECORDS => RecordFormat::Hare,
            _ => return None,
        };
        let h = Header {
            format,
            count: u32_at(4)?,
            entries: u16::from_be_bytes([b[2], b[3]]) as u32,
            timestamp: u64_at(8)? as i64,
            first_offset: u64_at(24)?,
            crc: u32_at(32)?,
            data_len: u32_at(36)? as u64,
            trailer_len: u32_at(40)? as u64,
            sealed: b[SEALED_AT] == 1,
            legacy: false,
        };
        // Each entry holds one record at least; no filter (Hare writes none).
        if h.entries == 0 || h.entries > h.count || h.count as usize > MAX_RECORDS || b[44] != 0 {
            return None;
        }
        h
    };
    (h.data_len <= MAX_CHUNK_DATA && h.trailer_len <= MAX_CHUNK_DATA && h.count > 0).then_some(h)
}

/// Reads the header of the chunk at `position`, if a whole one is there.
fn read_header(file: &File, position: u64, file_len: u64) -> Option<Header> {
    let mut head = [0u8; CHUNK_HEADER];
    let n = (file_len.checked_sub(position)?).min(CHUNK_HEADER as u64) as usize;
    file.read_exact_at(&mut head[..n], position).ok()?;
    header(&head[..n]).filter(|h| position + h.len() <= file_len)
}

/// A whole chunk's header, data and trailer, if its CRC holds (CRC32C in the layout
/// before osiris's, the CRC-32 of osiris's and the stream protocol's in this one).
fn parse_chunk(b: Bytes) -> Option<(Header, Bytes, Bytes)> {
    let h = header(&b)?;
    let start = h.header_len() as usize;
    let end = start + h.data_len as usize;
    let data = b.get(start..end)?;
    let crc = if h.legacy { crc32c::crc32c(data) } else { crc32fast::hash(data) };
    let trailer_end = end + h.trailer_len as usize;
    (crc == h.crc && b.len() >= trailer_end).then(|| (h, b.slice(start..end), b.slice(end..trailer_end)))
}

/// The length-prefixed messages of a legacy chunk's data or of an uncompressed sub-entry
/// batch, exactly `count` of them.
fn split_messages(mut data: Bytes, count: u32) -> Option<Vec<Bytes>> {
    let mut out = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let len = u32::from_be_bytes(data.get(..4)?.try_into().ok()?) as usize;
        if data.len() < 4 + len {
            return None;
        }
        out.push(data.slice(4..4 + len));
        data = data.slice(4 + len..);
    }
    data.is_empty().then_some(out)
}

/// The entries of a chunk's data in osiris's layout, as one record per offset: a simple
/// entry (`size u32`, its top bit clear, then the message) is one; an uncompressed sub-entry
/// batch is split into its messages; a compressed one is kept whole among the batches, its
/// messages empty places (the broker does not decompress). Exactly `h.entries` entries
/// making `h.count` records, or None.
fn split_entries(mut data: Bytes, h: &Header) -> Option<(Vec<Bytes>, Vec<CompressedBatch>)> {
    let mut records = Vec::with_capacity(h.count as usize);
    let mut batches = Vec::new();
    for _ in 0..h.entries {
        let head = u32::from_be_bytes(data.get(..4)?.try_into().ok()?);
        if head & 0x8000_0000 == 0 {
            let len = head as usize;
            data.get(4..4 + len)?;
            records.push(data.slice(4..4 + len));
            data.advance(4 + len);
            continue;
        }
        // 1 | compression (3 bits) | reserved (4) | messages u16 | uncompressed size u32 |
        // size u32 | body
        let compression = (data[0] >> 4) & 0x07;
        let n = u16::from_be_bytes([*data.get(1)?, *data.get(2)?]);
        let len = u32::from_be_bytes(data.get(7..11)?.try_into().ok()?) as usize;
        data.get(..11 + len)?;
        let entry = data.split_to(11 + len);
        if n == 0 || records.len() + n as usize > h.count as usize {
            return None;
        }
        if compression == 0 {
            records.extend(split_messages(entry.slice(11..), n as u32)?);
        } else {
            batches.push(CompressedBatch { first: h.first_offset + records.len() as u64, records: n, entry });
            records.extend(std::iter::repeat_n(Bytes::new(), n as usize));
        }
    }
    (data.is_empty() && records.len() == h.count as usize).then_some((records, batches))
}

/// The publishers' newest ids in a chunk's trailer (osiris's tracking entries; offsets
/// tracked there, which Hare does not write, are passed over).
fn parse_trailer(mut t: &[u8]) -> Option<Vec<(String, u64)>> {
    let mut out = Vec::new();
    while !t.is_empty() {
        let kind = *t.first()?;
        let len = *t.get(1)? as usize;
        let id = std::str::from_utf8(t.get(2..2 + len)?).ok()?;
        t = &t[2 + len..];
        match kind {
            TRACK_SEQUENCE => {
                let seq = u64::from_be_bytes(t.get(8..16)?.try_into().ok()?);
                out.push((id.to_string(), seq));
                t = &t[16..];
            }
            1 | 2 => t = t.get(8..)?,
            _ => return None,
        }
    }
    Some(out)
}

/// Opens a segment and reads its index; for the last one (`tail`), the chunks past the
/// index are verified and indexed, and a torn chunk at the end cut off.
fn open_segment(dir: &Path, first_offset: u64, tail: bool) -> std::io::Result<Segment> {
    let file = OpenOptions::new().read(true).write(true).open(Segment::path(dir, first_offset, "segment"))?;
    let index = OpenOptions::new().create(true).truncate(false).read(true).write(true).open(Segment::path(
        dir,
        first_offset,
        "index",
    ))?;
    let file_len = file.metadata()?.len();
    let raw = std::fs::read(Segment::path(dir, first_offset, "index"))?;
    let mut chunks: Vec<ChunkInfo> = Vec::with_capacity(raw.len() / INDEX_ENTRY);
    let mut position = 0u64;
    for e in raw.chunks_exact(INDEX_ENTRY) {
        let word = |at: usize| u64::from_be_bytes(e[at..at + 8].try_into().unwrap_or_default());
        let count = u32::from_be_bytes(e[24..28].try_into().unwrap_or_default());
        let (first, at) = (word(0), word(16));
        let expected = chunks.last().map_or(first_offset, |c: &ChunkInfo| c.first_offset + c.count as u64);
        // An entry must follow the one before it; a damaged index is rebuilt from there on.
        if first != expected || at != position || count == 0 {
            break;
        }
        let Some(h) = read_header(&file, at, file_len).filter(|h| h.first_offset == first && h.count == count) else {
            break;
        };
        let filter = u32::from_be_bytes(e[28..32].try_into().unwrap_or_default());
        chunks.push(ChunkInfo { filter, ..h.info(at) });
        position = at + h.len();
    }
    // What the index does not cover: read back, verified, indexed.
    let indexed = chunks.len();
    while position < file_len {
        let expected = chunks.last().map_or(first_offset, |c| c.first_offset + c.count as u64);
        let Some(h) = read_header(&file, position, file_len).filter(|h| h.first_offset == expected) else { break };
        let mut whole = BytesMut::zeroed(h.len() as usize);
        file.read_exact_at(&mut whole, position)?;
        if parse_chunk(whole.freeze()).is_none() {
            break;
        }
        chunks.push(h.info(position));
        position += h.len();
    }
    if position < file_len {
        if !tail {
            tracing::warn!("{}: {} bytes past its last whole chunk are cut off", dir.display(), file_len - position);
        }
        file.set_len(position)?;
        file.sync_data()?;
    }
    if chunks.len() != indexed || (raw.len() / INDEX_ENTRY) != chunks.len() {
        let mut rebuilt = Vec::with_capacity(chunks.len() * INDEX_ENTRY);
        for c in &chunks {
            rebuilt.extend_from_slice(&index_entry(c));
        }
        index.set_len(0)?;
        index.write_all_at(&rebuilt, 0)?;
    }
    Ok(Segment { first_offset, file: Arc::new(file), index, chunks, size: position })
}

#[cfg(test)]
mod tests;
