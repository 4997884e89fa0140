//! A subscription's task: it reads the stream from the subscription's offset as the log
//! becomes durable and sends it to the client as `deliver` frames, one chunk per credit, as
//! RabbitMQ's stream plugin does. A chunk of the stream protocol's messages is stored as
//! `deliver` carries it, so it goes as a frame header and the chunk's bytes, sent by the
//! connection's writer from the page cache (`sendfile`), never read into the broker. The
//! rest is read and encoded: a chunk of AMQP 0-9-1 records (converted to AMQP 1.0), the
//! first chunk of a subscription that starts inside it (sent from its offset on), and a
//! chunk larger than the client's frame size (sent as several frames).
//!
//! Memory is bounded by the client: no credit, no reads; and while the connection's writer
//! holds more than its high-water mark, the task waits for it to drain.

use super::codec::{code, key, put_frame, put_string, OffsetSpec};
use crate::broker::connections::{bump, ConnectionEntry, StreamReaderCard};
use crate::broker::queue::stream::{record_as_amqp10, StreamReaderGuard};
use crate::broker::queue::Queue;
use crate::broker::store::{filter_bit, filter_matches, StreamChunk, StreamStore, StreamWire};
use crate::net::writer::{Encoded, WriterHandle, ZERO_COPY_MIN};
use bytes::{BufMut, Bytes, BytesMut};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;

/// A chunk's header as `deliver` carries it, after the subscription id: magic and version,
/// chunk type, entries, records, timestamp, epoch, first offset, CRC, data length, trailer
/// length, reserved.
const CHUNK_HEADER: usize = 1 + 1 + 2 + 4 + 8 + 8 + 8 + 4 + 4 + 4 + 4;
/// The frame around a chunk: size, key, version, subscription id (version 2 adds the
/// committed chunk id: see [`Start::frame_header`]).
const FRAME_HEADER: usize = 4 + 2 + 2 + 1;
/// What version 2 of deliver adds to its header: the stream's committed chunk id.
const COMMITTED_ID: usize = 8;
/// Osiris's magic (5) and chunk format version (0).
const MAGIC_VERSION: u8 = 0x50;
/// The epoch of every chunk: one node, one leader, never re-elected.
const EPOCH: u64 = 1;

/// What a subscription starts from.
pub struct Start {
    pub id: u8,
    pub stream: String,
    pub queue: Arc<Queue>,
    pub offset: OffsetSpec,
    pub credit: u16,
    pub writer: WriterHandle,
    pub frame_max: usize,
    /// Deliver frames of version 2, with the committed chunk id.
    pub deliver_v2: bool,
    pub entry: Option<Arc<ConnectionEntry>>,
    /// Told when the stream is deleted under the subscription.
    pub gone: mpsc::UnboundedSender<String>,
}

impl Start {
    /// The length of a deliver frame's header before the chunk.
    fn frame_header(&self) -> usize {
        FRAME_HEADER + if self.deliver_v2 { COMMITTED_ID } else { 0 }
    }

    /// Writes a deliver frame's header for a chunk of `chunk_len` bytes: size, key, version,
    /// subscription id, and with version 2 the id of the stream's last committed chunk (its
    /// last durable one here: only durable chunks are read), as RabbitMQ writes them.
    fn put_frame_header(&self, out: &mut BytesMut, chunk_len: usize) {
        out.put_u32((self.frame_header() - 4 + chunk_len) as u32);
        out.put_u16(key::DELIVER);
        out.put_u16(if self.deliver_v2 { 2 } else { 1 });
        out.put_u8(self.id);
        if self.deliver_v2 {
            out.put_u64(self.queue.stream.as_ref().map_or(0, |st| st.last_chunk()));
        }
    }
}

/// A subscription, as its connection holds it: sending, or waiting for its turn (a single
/// active consumer that is not the active one).
pub struct Subscription {
    stream: String,
    /// What the management API shows of it; its semaphore is the client's credit.
    card: Arc<StreamReaderCard>,
    task: Option<JoinHandle<()>>,
    /// Counts it among the stream's consumers while it lives.
    _reader: StreamReaderGuard,
}

impl Subscription {
    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// The client's credit: this many more chunks may be sent.
    pub fn add_credit(&self, n: u16) {
        // The semaphore's bound is far above what a client could add in a lifetime of
        // frames; past it, credit is simply not added.
        if self.card.credits.available_permits() < Semaphore::MAX_PERMITS / 2 {
            self.card.credits.add_permits(n as usize);
        }
    }

    pub fn card(&self) -> &Arc<StreamReaderCard> {
        &self.card
    }

    /// The task ended (its stream was deleted).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_some_and(|t| t.is_finished())
    }

    /// Stops sending (the subscription ends, or it is no longer the active consumer); the
    /// credit the client gave stays.
    pub fn cancel(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Starts sending from `s.offset` (resolved now); its credit is what the client gave so
    /// far, not `s.credit`.
    pub fn resume(&mut self, s: Start) {
        self.cancel();
        self.task = Some(match s.queue.stream.clone() {
            Some(store) => {
                let next = resolve(&store, s.offset);
                self.card.offset.store(next, Ordering::Relaxed);
                tokio::spawn(run(s, store, next, self.card.clone()))
            }
            None => tokio::spawn(async {}),
        });
    }
}

/// Where `offset` starts in `store` now.
fn resolve(store: &Arc<dyn StreamStore>, offset: OffsetSpec) -> u64 {
    let (first, end) = store.bounds();
    match offset {
        OffsetSpec::First => first,
        OffsetSpec::Last => store.last_chunk().max(first),
        OffsetSpec::Next => end,
        OffsetSpec::Offset(o) => o.clamp(first, end),
        OffsetSpec::Timestamp(t) => store.offset_at(t).max(first),
    }
}

/// A subscription that sends nothing until [`Subscription::resume`], with the client's
/// initial credit.
pub fn parked(
    id: u8,
    queue: &Arc<Queue>,
    stream: String,
    credit: u16,
    properties: Vec<(String, String)>,
) -> Subscription {
    let card = Arc::new(StreamReaderCard {
        subscription: id,
        stream: stream.clone(),
        properties,
        offset: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        credits: Arc::new(Semaphore::new(credit as usize)),
        active: AtomicBool::new(false),
    });
    Subscription { stream, card, task: None, _reader: queue.stream_reader() }
}

/// Starts serving a subscription; its offset is resolved now.
pub fn start(s: Start, properties: Vec<(String, String)>) -> Subscription {
    let mut sub = parked(s.id, &s.queue, s.stream.clone(), s.credit, properties);
    sub.card.active.store(true, Ordering::Relaxed);
    sub.resume(s);
    sub
}

/// A subscription's filter (RabbitMQ 3.13's `filter.N` properties and `match-unfiltered`):
/// the bits of the values it asked for and whether it wants messages without a value.
fn filter_of(properties: &[(String, String)]) -> Option<(u32, bool)> {
    let wanted = properties
        .iter()
        .filter(|(k, _)| k.starts_with("filter."))
        .fold(0, |bits, (_, v)| bits | filter_bit(v.as_bytes()));
    let unfiltered = properties.iter().any(|(k, v)| k == "match-unfiltered" && v == "true");
    (wanted != 0).then_some((wanted, unfiltered))
}

async fn run(s: Start, store: Arc<dyn StreamStore>, mut next: u64, card: Arc<StreamReaderCard>) {
    let credit = &card.credits;
    let filter = filter_of(&card.properties);
    // A chunk none of whose messages can match the subscription's filter is passed over,
    // its credit kept (as RabbitMQ passes over chunks by their Bloom filter).
    let wanted = |summary: u32| filter.is_none_or(|(bits, unfiltered)| filter_matches(summary, bits, unfiltered));
    let mut durable = store.durable_watch();
    // Bounded by the connection: the task is aborted when the subscription or the
    // connection ends, and ends by itself when its stream is deleted.
    loop {
        if s.queue.is_deleted() {
            let _ = s.gone.send(s.stream.clone());
            return;
        }
        let (first, end) = store.bounds();
        next = next.max(first);
        if next >= end {
            if durable.changed().await.is_err() {
                return;
            }
            continue;
        }
        let Ok(permit) = credit.acquire().await else { return };
        permit.forget();
        wait_for_writer(&s.writer).await;
        match store.read_wire(next) {
            Ok(Some(w)) if w.first >= next && !wanted(w.filter) => {
                credit.add_permits(1);
                next = w.first + w.count as u64;
                card.offset.store(next, Ordering::Relaxed);
                continue;
            }
            Ok(Some(w)) if w.first >= next && s.frame_header() + w.wire.len() <= s.frame_max => {
                send_wire(&s, w.wire);
                next = w.first + w.count as u64;
                card.consumed.fetch_add(w.count as u64, Ordering::Relaxed);
                card.offset.store(next, Ordering::Relaxed);
                continue;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::error!("stream '{}': {e}", s.stream);
                let _ = s.gone.send(s.stream.clone());
                return;
            }
        }
        let chunk = match store.read(next) {
            Ok(Some(c)) => c,
            Ok(None) => {
                // Retention or a deletion raced the bounds read: look again once the log moves.
                credit.add_permits(1);
                if durable.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Err(e) => {
                tracing::error!("stream '{}': {e}", s.stream);
                let _ = s.gone.send(s.stream.clone());
                return;
            }
        };
        let from = next.max(chunk.first);
        if !wanted(chunk.filter) {
            credit.add_permits(1);
            next = from.max(chunk.first + chunk.records.len() as u64);
            card.offset.store(next, Ordering::Relaxed);
            continue;
        }
        next = send_chunk(&s, &chunk, from, credit);
        card.consumed.fetch_add(next.saturating_sub(from), Ordering::Relaxed);
        card.offset.store(next, Ordering::Relaxed);
    }
}

/// Sends a whole stored chunk as one deliver frame: the frame's header, then the chunk's
/// header and entries as they are stored.
fn send_wire(s: &Start, wire: StreamWire) {
    let mut head = BytesMut::with_capacity(s.frame_header());
    s.put_frame_header(&mut head, wire.len());
    let head = head.freeze();
    let frame = match wire {
        StreamWire::File { file, position, len } => Encoded::File { head, file, position, len },
        StreamWire::Memory(bytes) => Encoded::Parts(vec![head, bytes]),
    };
    if let Some(e) = &s.entry {
        bump(&e.send_oct, frame.len() as u64);
        bump(&e.send_cnt, 1);
    }
    s.writer.send(frame, 0);
}

/// Waits while the connection's writer holds more than its high-water mark.
async fn wait_for_writer(writer: &WriterHandle) {
    while writer.backlogged() {
        let drained = writer.drained.notified();
        tokio::pin!(drained);
        drained.as_mut().enable();
        if !writer.backlogged() {
            return;
        }
        drained.await;
    }
}

/// Sends `chunk` from offset `from` as one or more deliver frames (the first paid by the
/// credit taken already, each further one by one more, while there is any); returns the
/// offset after what was sent.
fn send_chunk(s: &Start, chunk: &StreamChunk, from: u64, credit: &Semaphore) -> u64 {
    // A compressed batch goes whole: a start inside one starts at its first message, and
    // the client passes over those before its offset, as with RabbitMQ's whole chunks.
    let from = chunk.batch_at(from).map_or(from, |b| b.first);
    let end = chunk.first + chunk.records.len() as u64;
    if from < chunk.first || from >= end {
        // The store returns the chunk holding `from` or one after it; anything else is skipped.
        return from.max(end);
    }
    let mut entries: Vec<Out> = Vec::with_capacity((end - from) as usize);
    let mut offset = from;
    while offset < end {
        let out = match chunk.batch_at(offset) {
            Some(b) => Out { bytes: b.entry.clone(), batch: b.records },
            None => {
                let record = &chunk.records[(offset - chunk.first) as usize];
                Out { bytes: record_as_amqp10(chunk.format, record).unwrap_or_default(), batch: 0 }
            }
        };
        offset += out.records();
        entries.push(out);
    }
    let budget = s.frame_max.saturating_sub(s.frame_header() + CHUNK_HEADER).max(1);
    let (mut at, mut sent) = (0, from);
    let mut paid = true;
    while at < entries.len() {
        if !paid {
            match credit.try_acquire() {
                Ok(p) => p.forget(),
                Err(_) => break,
            }
        }
        paid = false;
        // As many entries as fit the frame (one at least, however large).
        let mut end = at;
        let mut size = 0;
        while end < entries.len() && end - at < u16::MAX as usize {
            let len = entries[end].len();
            if end > at && size + len > budget {
                break;
            }
            size += len;
            end += 1;
        }
        let frame = encode(s, chunk.timestamp, sent, &entries[at..end], size);
        if let Some(e) = &s.entry {
            bump(&e.send_oct, frame.len() as u64);
            bump(&e.send_cnt, 1);
        }
        s.writer.send(frame, 0);
        sent += entries[at..end].iter().map(Out::records).sum::<u64>();
        at = end;
    }
    sent
}

/// An entry of a deliver frame: a message (written `size (u32) | bytes`), or a compressed
/// sub-entry batch of `batch` messages (written as stored: its header and body).
struct Out {
    bytes: Bytes,
    batch: u16,
}

impl Out {
    fn records(&self) -> u64 {
        self.batch.max(1) as u64
    }

    /// The size prefix a message is written with; none for a batch.
    fn prefix(&self) -> Option<[u8; 4]> {
        (self.batch == 0).then(|| (self.bytes.len() as u32).to_be_bytes())
    }

    /// Its bytes in the frame's data.
    fn len(&self) -> usize {
        self.prefix().map_or(0, |p| p.len()) + self.bytes.len()
    }
}

/// One deliver frame: the header, then each entry; large ones as their own slices, written
/// without a copy. The CRC (zlib's CRC-32 of the data, which clients check) goes in the
/// header: computed over the buffer once it is written when the data is all in it, else
/// entry by entry first.
fn encode(s: &Start, timestamp: i64, first: u64, entries: &[Out], data_len: usize) -> Encoded {
    let large = entries.iter().any(|m| m.bytes.len() >= ZERO_COPY_MIN);
    let mut crc = crc32fast::Hasher::new();
    if large {
        for m in entries {
            if let Some(p) = m.prefix() {
                crc.update(&p);
            }
            crc.update(&m.bytes);
        }
    }
    let records: u64 = entries.iter().map(Out::records).sum();
    let header = s.frame_header() + CHUNK_HEADER;
    let mut out = BytesMut::with_capacity(header + if large { 64 * 1024 } else { data_len });
    s.put_frame_header(&mut out, CHUNK_HEADER + data_len);
    out.put_u8(MAGIC_VERSION);
    out.put_u8(0); // a user chunk
    out.put_u16(entries.len() as u16);
    out.put_u32(records as u32);
    out.put_i64(timestamp);
    out.put_u64(EPOCH);
    out.put_u64(first);
    let crc_at = out.len();
    out.put_u32(0);
    out.put_u32(data_len as u32);
    out.put_u32(0); // trailer
    out.put_u32(0); // reserved
    if !large {
        for m in entries {
            if let Some(p) = m.prefix() {
                out.put_slice(&p);
            }
            out.put_slice(&m.bytes);
        }
        let crc = crc32fast::hash(&out[header..]);
        out[crc_at..crc_at + 4].copy_from_slice(&crc.to_be_bytes());
        return Encoded::One(out.freeze());
    }
    out[crc_at..crc_at + 4].copy_from_slice(&crc.finalize().to_be_bytes());
    let mut parts: Vec<Bytes> = Vec::new();
    for m in entries {
        if let Some(p) = m.prefix() {
            out.put_slice(&p);
        }
        if m.bytes.len() >= ZERO_COPY_MIN {
            crate::net::writer::push_slice(&mut out, &mut parts, m.bytes.clone());
        } else {
            out.put_slice(&m.bytes);
        }
    }
    if !out.is_empty() {
        parts.push(out.freeze());
    }
    Encoded::Parts(parts)
}

/// The frame that tells a client its stream is gone.
pub fn metadata_update(out: &mut BytesMut, stream: &str) {
    put_frame(out, key::METADATA_UPDATE, |o| {
        o.put_u16(code::STREAM_NOT_AVAILABLE);
        put_string(o, stream);
    });
}
