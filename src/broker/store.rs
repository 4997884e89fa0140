//! What the broker core needs from storage, as traits: the core decides what to persist and
//! when; the storage layer (`crate::storage`) decides how. Keeps file I/O out of the core.

use super::definitions::{Change, Definitions};
use super::message::Message;
use crate::types::codec::{Decoder, Encoder};
use crate::types::FieldTable;
use bytes::BytesMut;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct StoreError(pub String);

impl From<std::io::Error> for StoreError {
    fn from(e: std::io::Error) -> Self {
        StoreError(e.to_string())
    }
}

/// A message read back from a queue's log.
#[derive(Debug)]
pub struct LoadedMessage {
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// When the message expires in this queue (ms since the epoch), 0 for never.
    pub expires_at: u64,
}

/// A durable queue's message log. Sequence numbers are the queue's own and increase with
/// each append; `ticket`s are group-commit tickets (see [`Storage::durable_watermark`]).
pub trait MessageLog: Send + std::fmt::Debug {
    /// Appends a message. With `to_tail`, the queue keeps no copy in memory: it is read back
    /// later by [`MessageLog::read_tail`], in order.
    fn append(&mut self, seq: u64, message: &Message, expires_at: u64, to_tail: bool) -> Result<u64, StoreError>;
    /// The message is settled (acked, or dropped); returns the ack's ticket.
    fn ack(&mut self, seq: u64) -> Result<u64, StoreError>;
    /// The message went to a consumer that must ack it; after a crash it comes back redelivered.
    fn delivered(&mut self, seq: u64);
    /// Messages held only on disk.
    fn tail_len(&self) -> u64;
    /// Up to `max` messages from the front of the on-disk tail, stopping once their bodies
    /// reach `max_bytes` (at least one message is read).
    fn read_tail(&mut self, max: usize, max_bytes: u64) -> Result<Vec<LoadedMessage>, StoreError>;
    /// Drops the whole on-disk tail; returns how many messages it held.
    fn purge_tail(&mut self) -> Result<u64, StoreError>;
    /// Deletes the log's files.
    fn destroy(&mut self);
}

/// Lets a non-durable queue page its messages to disk while memory runs short.
#[derive(Debug, Clone)]
pub struct Pager {
    pub storage: Arc<dyn Storage>,
    /// Set while memory use is past half the limit.
    pub pressure: Arc<std::sync::atomic::AtomicBool>,
}

/// A recovered durable queue: its log, the messages to hold in memory, and the next seq.
pub struct RecoveredQueue {
    pub log: Box<dyn MessageLog>,
    pub messages: Vec<LoadedMessage>,
    pub next_seq: u64,
}

/// How a stream keeps its log: retention (`x-max-length-bytes`, `x-max-age`), applied a
/// whole segment at a time, and the size of a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamSettings {
    pub max_bytes: Option<u64>,
    pub max_age_ms: Option<u64>,
    pub max_segment_bytes: u64,
}

/// A stream's log as its queue sees it (the storage layer's `stream::DiskStream`): messages
/// appended and addressed by offset, read back from any offset, removed only by retention.
/// Appends are gathered and written, as chunks of a bounded size at each group commit, by the
/// sync thread.
pub trait StreamStore: Send + Sync + std::fmt::Debug {
    /// Appends one AMQP 0-9-1 message as a record of Hare's: `record` writes its bytes, given
    /// the offset it gets, and returns its filter value's bit (see [`filter_bit`]) or
    /// [`FILTER_UNFILTERED`]. Returns that offset and the group-commit ticket that makes it
    /// durable. Buffered: no I/O here.
    fn append(&self, record: &mut dyn FnMut(u64, &mut BytesMut) -> u32) -> (u64, u64);
    /// Appends one AMQP 1.0 message as the stream protocol published it (kept as it is, a
    /// slice of the frame it came in). `writer` is a named publisher's reference and the
    /// message's publishing id (deduplication): the newest id of each reference is
    /// remembered, durably with the message. Returns its offset and ticket, as `append`.
    /// `filter` is its filter value (version 2 of publish), if it has one.
    fn append_amqp10(&self, writer: Option<(&str, u64)>, message: bytes::Bytes, filter: Option<&[u8]>) -> (u64, u64);
    /// Appends a compressed sub-entry batch as the stream protocol published it (its 11-byte
    /// header and compressed body, kept and sent as they are): it takes `records` offsets,
    /// one for each message in it (at least one). Returns its first offset and its ticket.
    fn append_batch(&self, writer: Option<(&str, u64)>, entry: bytes::Bytes, records: u16) -> (u64, u64);
    /// The offsets readers may read: the oldest kept, and the end of what is durable.
    fn bounds(&self) -> (u64, u64);
    /// The first offset of the newest durable chunk (where a consumer from `last` starts).
    fn last_chunk(&self) -> u64;
    /// The first offset of the oldest chunk stored at or after `timestamp_ms` (the end of the
    /// durable log if none is).
    fn offset_at(&self, timestamp_ms: i64) -> u64;
    /// The durable chunk that holds `offset` (or the first after it, if retention took it);
    /// None at the end of the durable log.
    fn read(&self, offset: u64) -> Result<Option<StreamChunk>, StoreError>;
    /// The durable chunk that holds `offset` (or the first after it), as the stream
    /// protocol's `deliver` carries it, if it is a chunk of AMQP 1.0 messages; None at the
    /// end of the durable log or for a chunk of records (read with `read` and converted).
    fn read_wire(&self, offset: u64) -> Result<Option<WireChunk>, StoreError>;
    /// The durable chunk that holds `offset` (or the first after it) as (first offset, end
    /// offset, filter summary), from the index where there is one: a consumer's filter
    /// passes over a chunk without reading it.
    fn chunk_span(&self, offset: u64) -> Result<Option<(u64, u64, u32)>, StoreError> {
        Ok(self.read(offset)?.map(|c| (c.first, c.first + c.records.len() as u64, c.filter)))
    }
    /// Bytes on disk, and segments.
    fn size(&self) -> (u64, usize);
    /// The end of the durable log, changed each time more of it becomes durable (and once
    /// when the stream is deleted): any number of readers follow it.
    fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64>;
    /// Retention and segment size from now on.
    fn set_settings(&self, settings: StreamSettings);
    /// Deletes the log's files.
    fn destroy(&self);
    /// The newest publishing id appended by the publisher named `reference`.
    fn writer_sequence(&self, reference: &str) -> Option<u64>;
    /// Remembers a consumer's offset under its reference (the stream protocol's server-side
    /// offset tracking); saved with the next group commit. False if the stream tracks as
    /// many references as it may and this is a new one.
    fn store_offset(&self, reference: &str, offset: u64) -> bool;
    /// The offset last stored under `reference`.
    fn stored_offset(&self, reference: &str) -> Option<u64>;
    /// Where the saved publisher ids end: records from this offset on may name publishers
    /// whose ids were not saved yet (a crash between a chunk's fsync and the save), and are
    /// read again at recovery (see `recover_writer`).
    fn tracking_end(&self) -> u64;
    /// A publisher's id found in a record at recovery.
    fn recover_writer(&self, reference: &str, publishing_id: u64);
}

/// How many publisher references, and how many consumer references, a stream remembers;
/// a new one past this is not tracked (and said in the log). Bounds the memory and the
/// size of the tracking saved with each group commit that changes it.
pub const MAX_TRACKED_REFERENCES: usize = 10_000;

/// A chunk as `read_wire` finds it: its first offset, its records, which filter values its
/// messages carry (see [`filter_bit`]), and its bytes as sent.
#[derive(Debug, Clone)]
pub struct WireChunk {
    pub first: u64,
    pub count: u32,
    pub filter: u32,
    pub wire: StreamWire,
}

/// A chunk's filter summary (the stream protocol's filtering): which filter values the
/// messages in it carry, each value hashed to one of 30 bits, and whether some carry none.
/// A subscription with filter values is not sent a chunk that can hold none of them; a
/// value may share its bit with others, so clients filter what they get, as they do after
/// RabbitMQ's Bloom filter. A chunk whose summary was not recorded (written before, or
/// indexed again after a crash) is sent to every subscription.
pub const FILTER_RECORDED: u32 = 1 << 31;
/// Some message in the chunk carries no filter value.
pub const FILTER_UNFILTERED: u32 = 1;

/// The bit of the filter summary that stands for `value` (FNV-1a, one of bits 1 to 30).
pub fn filter_bit(value: &[u8]) -> u32 {
    let hash = value.iter().fold(0x811c_9dc5u32, |h, b| (h ^ *b as u32).wrapping_mul(0x0100_0193));
    1 << (1 + hash % 30)
}

/// Whether a subscription that asked for the values whose bits are `wanted` (and, with
/// `match_unfiltered`, for messages with no value) is to be sent a chunk summarised as
/// `summary`.
pub fn filter_matches(summary: u32, wanted: u32, match_unfiltered: bool) -> bool {
    summary & FILTER_RECORDED == 0 || summary & wanted != 0 || (match_unfiltered && summary & FILTER_UNFILTERED != 0)
}

/// A durable chunk of a stream, as read: its first offset, when it was appended
/// (milliseconds since the epoch), its records, each a slice of one buffer, and the
/// publishers' newest publishing ids it holds.
#[derive(Debug, Clone)]
pub struct StreamChunk {
    pub first: u64,
    pub timestamp: i64,
    pub format: RecordFormat,
    pub records: Arc<[bytes::Bytes]>,
    pub writers: Arc<[(String, u64)]>,
    /// Its compressed sub-entry batches, in offset order; the records of each are empty
    /// places in `records` (the broker does not decompress them).
    pub batches: Arc<[CompressedBatch]>,
    /// Its filter summary (see [`filter_bit`]).
    pub filter: u32,
}

impl StreamChunk {
    /// The compressed batch whose messages take `offset`, if one does.
    pub fn batch_at(&self, offset: u64) -> Option<&CompressedBatch> {
        let i = self.batches.partition_point(|b| b.first + b.records as u64 <= offset);
        self.batches.get(i).filter(|b| b.first <= offset)
    }
}

/// A compressed sub-entry batch in a stream chunk: the first of the offsets its messages
/// take, how many they are, and the entry as stored (its header and compressed body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressedBatch {
    pub first: u64,
    pub records: u16,
    pub entry: bytes::Bytes,
}

/// What a stream chunk's records are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordFormat {
    /// AMQP 1.0 messages, as the stream protocol publishes and delivers them.
    Amqp10,
    /// Hare's records (see `queue::stream::encode_record`): what AMQP 0-9-1 published.
    Hare,
}

/// A chunk as the stream protocol sends it (its header, then its entries): a region of a
/// segment file, sent from the page cache by the connection; or bytes in memory (a sealed
/// chunk, opened).
#[derive(Debug, Clone)]
pub enum StreamWire {
    File { file: Arc<std::fs::File>, position: u64, len: usize },
    Memory(bytes::Bytes),
}

impl StreamWire {
    pub fn len(&self) -> usize {
        match self {
            StreamWire::File { len, .. } => *len,
            StreamWire::Memory(b) => b.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

pub trait Storage: Send + Sync + std::fmt::Debug {
    /// Creates the log of a new durable queue; returns it and the id that names it on disk.
    fn create_queue_log(&self) -> Result<(Box<dyn MessageLog>, String), StoreError>;
    /// Creates a log for paging a non-durable queue's messages out of memory; it is never
    /// recovered, and removed at the next start.
    fn create_transient_log(&self) -> Result<Box<dyn MessageLog>, StoreError>;
    /// Opens an existing queue log after a restart, recovering its messages.
    fn recover_queue_log(
        &self,
        id: &str,
        label: &str,
        window: usize,
        window_bytes: u64,
    ) -> Result<RecoveredQueue, StoreError>;
    fn load_definitions(&self, vhost: &str) -> Result<Definitions, StoreError>;
    /// Users, vhosts and permissions as saved; None if none were ever saved.
    fn load_access(&self) -> Result<Option<crate::auth::AccessState>, StoreError>;
    /// Policies and operator policies as saved.
    fn load_policies(&self) -> Result<super::policy::PolicyState, StoreError>;
    /// Runtime parameters (shovels) as saved.
    fn load_parameters(&self) -> Result<super::parameters::ParameterState, StoreError>;
    /// Appends a change to the durable definitions; returns the ticket that makes it durable.
    /// Buffered, no I/O: callers may hold their locks.
    fn record(&self, change: &Change) -> u64;
    /// The newest ticket handed out so far.
    fn last_ticket(&self) -> u64;
    /// Why disk writes are failing, if they are.
    fn failure(&self) -> Option<String>;
    /// Whether appends outrun the disk; if so, `waiter` is notified once they no longer do.
    fn backlogged(&self, waiter: &std::sync::Arc<tokio::sync::Notify>) -> bool;
    /// Creates the log of a new stream; returns it and the id that names it on disk.
    fn create_stream(&self, settings: StreamSettings) -> Result<(Arc<dyn StreamStore>, String), StoreError>;
    /// Opens an existing stream's log after a restart.
    fn open_stream(&self, id: &str, settings: StreamSettings) -> Result<Arc<dyn StreamStore>, StoreError>;
    /// Every ticket at or below this is on disk.
    fn durable_ticket(&self) -> u64;
    /// The log a delayed-message exchange keeps its held messages in, named by `id` (made
    /// from the vhost and the exchange's name, so the exchange finds it again at start):
    /// recovered with its messages, or with `fresh` emptied and made new.
    fn delayed_log(&self, id: &str, fresh: bool) -> Result<RecoveredQueue, StoreError>;
    /// What the group commit has done so far, for metrics.
    fn sync_stats(&self) -> SyncStats {
        SyncStats::default()
    }
}

/// The group commit's record: rounds, bytes written, how long each round's fsyncs took and
/// how many appends each round made durable at once.
#[derive(Debug, Clone, Default)]
pub struct SyncStats {
    pub rounds: u64,
    pub bytes_written: u64,
    /// Files written (one write of a file's buffer each) and fsynced, with the time spent,
    /// in microseconds; files read from (positioned reads: no seeks), the bytes and the
    /// time; descriptors opened again after the open-files budget closed them; definition
    /// changes journalled. The node's I/O counters in the API come from these.
    pub writes: u64,
    pub write_us: u64,
    pub syncs: u64,
    pub sync_us: u64,
    pub reads: u64,
    pub read_bytes: u64,
    pub read_us: u64,
    pub reopens: u64,
    pub definition_changes: u64,
    /// Microseconds per round's fsyncs.
    pub fsync_us: super::stats::LogHistogram,
    /// Appends (messages, acks, definition changes) made durable per round.
    pub batch: super::stats::LogHistogram,
}

/// A field table in AMQP encoding, as hex.
pub fn table_to_hex(t: &FieldTable) -> String {
    let mut buf = BytesMut::new();
    Encoder::new(&mut buf).table(t);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn table_from_hex(s: &str) -> Result<FieldTable, StoreError> {
    let bad = || StoreError(format!("bad argument table in definitions: {s:?}"));
    if s.len() % 2 != 0 {
        return Err(bad());
    }
    let bytes: Result<Vec<u8>, _> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16)).collect();
    Decoder::new(bytes.map_err(|_| bad())?.into()).table().map_err(|_| bad())
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn a_chunk_is_wanted_if_it_may_hold_a_value_asked_for() {
        let (emea, apac) = (filter_bit(b"emea"), filter_bit(b"apac"));
        for bit in [emea, apac, filter_bit(b""), filter_bit(&[0xff; 300])] {
            assert_eq!(bit.count_ones(), 1);
            assert!(bit & (FILTER_RECORDED | FILTER_UNFILTERED) == 0, "bits 1 to 30 only");
        }
        assert_eq!(emea, filter_bit(b"emea"), "the same value, the same bit, in every run");
        let chunk = FILTER_RECORDED | emea;
        assert!(filter_matches(chunk, emea, false));
        assert!(filter_matches(chunk, emea | apac, false));
        if emea != apac {
            assert!(!filter_matches(chunk, apac, true), "no unfiltered message in it");
            assert!(!filter_matches(FILTER_RECORDED | FILTER_UNFILTERED, apac, false));
            assert!(filter_matches(FILTER_RECORDED | FILTER_UNFILTERED, apac, true));
        }
        // A chunk whose summary was not recorded goes to every subscription.
        assert!(filter_matches(0, apac, false));
    }
}
