//! The stream's record format, and a model-based test of its readers: random publishes
//! (some becoming durable later, in chunks), consumers that start at random offsets with
//! random prefetches, reads, acks, cancels and channel closes. The model is what a stream
//! promises: each consumer receives the offsets from where it started, each once, in order,
//! with no gap; its unacknowledged deliveries never pass its prefetch; a consumer with credit
//! and room is never left behind the durable end; consuming removes nothing.

use super::*;
use crate::broker::consumer::{ChannelFlow, ConnectionSink, UnackedLimits};
use crate::broker::store::StoreError;
use crate::broker::vhost::VHost;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn a_record_reads_back_as_the_message_with_its_offset() {
    let props = BasicProperties { content_type: Some("text/plain".into()), ..Default::default() };
    let m = Message::new("ex".into(), "key".into(), props.to_bytes(), bytes::Bytes::from_static(b"body"), true);
    let mut buf = BytesMut::new();
    encode_record(&m, 42, &mut buf);
    let back = decode_record(RecordFormat::Hare, &buf.freeze(), 42, "s").expect("decodes");
    assert_eq!((back.exchange.as_str(), back.routing_key.as_str()), ("ex", "key"));
    assert!(back.persistent);
    assert_eq!(back.body.to_bytes(), bytes::Bytes::from_static(b"body"));
    let p = back.decode_properties();
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.headers.and_then(|h| h.get("x-stream-offset").cloned()), Some(FieldValue::I64(42)));
    // Truncated or foreign records are refused, not misread.
    for bad in [&[3u8, 0, 0][..], &[1, 0, 5, b'a'], &[2, 9, b'a']] {
        assert!(decode_record(RecordFormat::Hare, &bytes::Bytes::copy_from_slice(bad), 0, "s").is_none());
    }
}

/// A record of the layout before osiris's for a stream protocol message: `2 | reference
/// (u8 length) | publishing id (u64, with a reference only) | AMQP 1.0 message`.
fn legacy_amqp10_record(writer: Option<(&str, u64)>, message: &[u8]) -> bytes::Bytes {
    let mut buf = BytesMut::new();
    buf.put_u8(RECORD_AMQP10);
    match writer {
        Some((reference, id)) => {
            buf.put_u8(reference.len() as u8);
            buf.put_slice(reference.as_bytes());
            buf.put_u64(id);
        }
        None => buf.put_u8(0),
    }
    buf.put_slice(message);
    buf.freeze()
}

#[test]
fn a_stream_protocol_message_reads_as_amqp_0_9_1_in_either_layout() {
    let mut amqp10 = BytesMut::new();
    let props = BasicProperties { content_type: Some("text/plain".into()), ..Default::default() };
    crate::types::amqp10::from_amqp091("", "", &props, &[b"hi"], &mut amqp10);
    let amqp10 = amqp10.freeze();
    let legacy = legacy_amqp10_record(Some(("producer-1", 9)), &amqp10);
    assert_eq!(split_amqp10(&legacy).and_then(|(w, _)| w), Some(("producer-1", 9)));
    for (format, record) in [(RecordFormat::Amqp10, &amqp10), (RecordFormat::Hare, &legacy)] {
        assert_eq!(record_as_amqp10(format, record).as_deref(), Some(&amqp10[..]));
        let m = decode_record(format, record, 5, "events").expect("decodes");
        assert_eq!(m.body.to_bytes(), bytes::Bytes::from_static(b"hi"));
        assert_eq!((m.exchange.as_str(), m.routing_key.as_str()), ("", ""));
        let p = m.decode_properties();
        assert_eq!(p.content_type.as_deref(), Some("text/plain"));
        assert_eq!(p.headers.and_then(|h| h.get("x-stream-offset").cloned()), Some(FieldValue::I64(5)));
    }
    // Bytes that are not AMQP 1.0 are the body as they are; the routing key is the stream's.
    let raw = bytes::Bytes::from_static(b"raw");
    for (format, record) in
        [(RecordFormat::Amqp10, raw.clone()), (RecordFormat::Hare, legacy_amqp10_record(None, &raw))]
    {
        let m = decode_record(format, &record, 0, "events").expect("decodes");
        assert_eq!((m.body.to_bytes(), m.routing_key.as_str()), (raw.clone(), "events"));
    }
    // An AMQP 0-9-1 record reaches the stream protocol as AMQP 1.0, offset header left out.
    let m0 = Message::new("ex".into(), "key".into(), props.to_bytes(), bytes::Bytes::from_static(b"b"), false);
    let mut buf = BytesMut::new();
    encode_record(&m0, 3, &mut buf);
    let converted = record_as_amqp10(RecordFormat::Hare, &buf.freeze()).expect("converts");
    let back = crate::types::amqp10::to_amqp091(&converted).expect("AMQP 1.0");
    assert_eq!((back.exchange.as_deref(), back.routing_key.as_deref()), (Some("ex"), Some("key")));
    assert_eq!(back.props, props);
}

/// A stream log in memory: appends wait in `pending` until `make_durable` seals them into a
/// chunk, as the sync thread's rounds do. It keeps Hare's records only: a stream protocol
/// message is kept in the layout before osiris's, which readers read still.
#[derive(Debug, Default)]
struct MemoryStore {
    state: parking_lot::Mutex<MemoryState>,
    durable: tokio::sync::watch::Sender<u64>,
}

#[derive(Debug, Default)]
struct MemoryState {
    records: Vec<bytes::Bytes>,
    /// The first offset of each durable chunk.
    chunks: Vec<u64>,
    pending: Vec<bytes::Bytes>,
    /// Compressed batches, durable and pending: their records are empty places.
    batches: Vec<crate::broker::store::CompressedBatch>,
}

impl MemoryStore {
    fn make_durable(&self) {
        let mut st = self.state.lock();
        if st.pending.is_empty() {
            return;
        }
        let first = st.records.len() as u64;
        st.chunks.push(first);
        let pending = std::mem::take(&mut st.pending);
        st.records.extend(pending);
    }
}

impl StreamStore for MemoryStore {
    fn append(&self, record: &mut dyn FnMut(u64, &mut BytesMut) -> u32) -> (u64, u64) {
        let mut st = self.state.lock();
        let offset = (st.records.len() + st.pending.len()) as u64;
        let mut buf = BytesMut::new();
        record(offset, &mut buf);
        st.pending.push(buf.freeze());
        (offset, 0)
    }
    fn append_amqp10(&self, writer: Option<(&str, u64)>, message: bytes::Bytes, _: Option<&[u8]>) -> (u64, u64) {
        let mut st = self.state.lock();
        let offset = (st.records.len() + st.pending.len()) as u64;
        st.pending.push(legacy_amqp10_record(writer, &message));
        (offset, 0)
    }
    fn append_batch(&self, _writer: Option<(&str, u64)>, entry: bytes::Bytes, records: u16) -> (u64, u64) {
        let mut st = self.state.lock();
        let first = (st.records.len() + st.pending.len()) as u64;
        st.pending.extend(std::iter::repeat_n(bytes::Bytes::new(), records as usize));
        st.batches.push(crate::broker::store::CompressedBatch { first, records, entry });
        (first, 0)
    }
    fn read_wire(&self, _offset: u64) -> Result<Option<crate::broker::store::WireChunk>, StoreError> {
        // Records only: a reader reads them with `read`.
        Ok(None)
    }
    fn bounds(&self) -> (u64, u64) {
        (0, self.state.lock().records.len() as u64)
    }
    fn last_chunk(&self) -> u64 {
        let st = self.state.lock();
        st.chunks.last().copied().unwrap_or(st.records.len() as u64)
    }
    fn offset_at(&self, _timestamp_ms: i64) -> u64 {
        self.bounds().1
    }
    fn read(&self, offset: u64) -> Result<Option<crate::broker::store::StreamChunk>, StoreError> {
        let st = self.state.lock();
        let end = st.records.len() as u64;
        if offset >= end {
            return Ok(None);
        }
        let c = st.chunks.partition_point(|&f| f <= offset) - 1;
        let first = st.chunks[c];
        let next = st.chunks.get(c + 1).copied().unwrap_or(end);
        let records = st.records[first as usize..next as usize].to_vec().into();
        let batches = st.batches.iter().filter(|b| (first..next).contains(&b.first)).cloned().collect();
        Ok(Some(crate::broker::store::StreamChunk {
            first,
            timestamp: 0,
            format: RecordFormat::Hare,
            records,
            writers: Vec::new().into(),
            batches,
            filter: 0,
        }))
    }
    fn size(&self) -> (u64, usize) {
        (0, 1)
    }
    fn durable_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.durable.subscribe()
    }
    fn set_settings(&self, _settings: crate::broker::store::StreamSettings) {}
    fn destroy(&self) {}
    // The readers' model does not track publishers or offsets (storage's tests do).
    fn writer_sequence(&self, _reference: &str) -> Option<u64> {
        None
    }
    fn store_offset(&self, _reference: &str, _offset: u64) -> bool {
        false
    }
    fn stored_offset(&self, _reference: &str) -> Option<u64> {
        None
    }
    fn tracking_end(&self) -> u64 {
        0
    }
    fn recover_writer(&self, _reference: &str, _publishing_id: u64) {}
}

struct Reader {
    consumer: Arc<Consumer>,
    sink: Arc<ConnectionSink>,
    /// The offset it must receive next.
    expect: u64,
    /// Deliveries received and not acked yet.
    held: Vec<QueuedMessage>,
    active: bool,
}

struct Model {
    rng: StdRng,
    store: Arc<MemoryStore>,
    q: Arc<Queue>,
    readers: Vec<Reader>,
    published: u64,
    /// Offsets taken by compressed batches, which AMQP consumers pass over.
    compressed: std::collections::BTreeSet<u64>,
    seed: u64,
    step: usize,
}

impl Model {
    fn new(seed: u64) -> Model {
        let store = Arc::new(MemoryStore::default());
        let mut args = QueueArguments::default();
        args.stream = true;
        let options = QueueOptions {
            durable: true,
            exclusive_owner: None,
            auto_delete: false,
            arguments: FieldTable::new(),
            args,
        };
        let q = Queue::stream("s".into(), "/", options, store.clone(), Weak::<VHost>::new());
        let compressed = Default::default();
        Model {
            rng: StdRng::seed_from_u64(seed),
            store,
            q,
            readers: Vec::new(),
            published: 0,
            compressed,
            seed,
            step: 0,
        }
    }

    fn add_reader(&mut self) {
        let n = self.readers.len() as u64;
        let sink = ConnectionSink::new(n + 1);
        let consumer = Arc::new(Consumer {
            tag: format!("c{n}").into(),
            channel: 1,
            no_ack: false,
            exclusive: false,
            arguments: FieldTable::new(),
            priority: 0,
            prefetch: self.rng.gen_range(1..8),
            unacked: Default::default(),
            flow: Arc::new(ChannelFlow::new(UnackedLimits::default())),
            sink: sink.clone(),
        });
        let (_, end) = self.store.bounds();
        let (start, expect) = match self.rng.gen_range(0..4) {
            0 => (StreamOffset::First, 0),
            1 => (StreamOffset::Next, end),
            2 => {
                let o = self.rng.gen_range(0..=end + 3);
                (StreamOffset::Offset(o), o.min(end))
            }
            _ => (StreamOffset::Last, self.store.last_chunk()),
        };
        self.q.add_stream_consumer(consumer.clone(), start).unwrap();
        self.readers.push(Reader { consumer, sink, expect, held: Vec::new(), active: true });
    }

    fn read(&mut self, r: usize) {
        let (seed, step) = (self.seed, self.step);
        for e in self.readers[r].sink.take_events() {
            let ConnEvent::Deliver(d) = e else { panic!("seed {seed} step {step}: the stream was not deleted") };
            let reader = &mut self.readers[r];
            reader.sink.release(d.charge);
            if !reader.active {
                // A cancelled consumer's delivery goes back unseen, as a channel hands it back.
                reader.consumer.flow.settle(d.item.message.size());
                self.q.clone().undelivered(d.item, true);
                continue;
            }
            let offset = d.item.seq;
            // The next offset not in a compressed batch.
            while self.compressed.contains(&reader.expect) {
                reader.expect += 1;
            }
            assert_eq!(offset, reader.expect, "seed {seed} step {step}: reader {r} got {offset}");
            let header = d.item.message.decode_properties().headers.and_then(|h| h.get("x-stream-offset").cloned());
            assert_eq!(header, Some(FieldValue::I64(offset as i64)), "seed {seed} step {step}");
            assert_eq!(d.item.message.body.to_bytes(), bytes::Bytes::from(offset.to_be_bytes().to_vec()));
            reader.expect += 1;
            reader.held.push(d.item);
            assert!(
                reader.held.len() as u32 <= reader.consumer.prefetch,
                "seed {seed} step {step}: reader {r} holds more than its prefetch"
            );
        }
    }

    fn ack(&mut self, r: usize) {
        let reader = &mut self.readers[r];
        let n = self.rng.gen_range(0..=reader.held.len());
        let acked: Vec<QueuedMessage> = reader.held.drain(..n).collect();
        for m in &acked {
            reader.consumer.settle(m.message.size());
        }
        self.q.clone().acked(&acked);
    }

    fn step(&mut self) {
        let r = self.rng.gen_range(0..self.readers.len());
        match self.rng.gen_range(0..100) {
            0..=26 => {
                let body = bytes::Bytes::from(self.published.to_be_bytes().to_vec());
                let m = Message::new("".into(), "s".into(), bytes::Bytes::new(), body, true);
                self.q.publish(Arc::new(m), None).unwrap();
                self.published += 1;
            }
            27..=29 => {
                // A compressed sub-entry batch, as the stream protocol appends one.
                let n = self.rng.gen_range(1..5u16);
                let (first, _) = self.store.append_batch(None, bytes::Bytes::from_static(b"\x90batch"), n);
                self.compressed.extend(first..first + n as u64);
                self.published += n as u64;
            }
            30..=44 => {
                // A group commit: what was published becomes durable; the queue's task would
                // be woken, and serves its readers.
                self.store.make_durable();
                self.q.dispatch();
            }
            45..=69 => self.read(r),
            70..=89 => self.ack(r),
            90..=94 => self.add_reader(),
            _ => {
                // A cancel, or a channel closing: what it held comes back as credit only.
                let reader = &mut self.readers[r];
                if reader.active {
                    reader.active = false;
                    self.q.remove_consumer(reader.consumer.connection_id(), 1, &reader.consumer.tag);
                    let held: Vec<QueuedMessage> = reader.held.drain(..).collect();
                    for m in &held {
                        reader.consumer.settle(m.message.size());
                    }
                    self.q.clone().requeued(held);
                }
            }
        }
        self.check();
    }

    fn check(&self) {
        let (seed, step) = (self.seed, self.step);
        let (_, end) = self.store.bounds();
        assert_eq!(self.q.message_count() as u64, end, "seed {seed} step {step}: consuming removed nothing");
        let unacked: usize = self.readers.iter().map(|r| r.held.len()).sum::<usize>()
            + self.readers.iter().map(|r| r.sink.waiting_events(|e| e.len())).sum::<usize>();
        // A cancelled reader's deliveries still in its sink are unacknowledged until handed back.
        assert_eq!(self.q.unacked_count(), unacked, "seed {seed} step {step}: unacknowledged count");
        for (i, r) in self.readers.iter().enumerate() {
            // Not left behind: a reader with credit has everything durable given to it (but
            // the messages of compressed batches).
            let waiting = r.sink.waiting_events(|e| e.len());
            if r.active && r.consumer.has_credit() && r.sink.has_capacity() {
                let readable = (r.expect..end).filter(|o| !self.compressed.contains(o)).count();
                assert_eq!(waiting, readable, "seed {seed} step {step}: reader {i} left behind");
            }
        }
    }
}

#[test]
fn readers_get_every_offset_once_in_order_within_their_credit() {
    let seeds: u64 = std::env::var("HARE_STREAM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
    for seed in 0..seeds {
        let mut m = Model::new(seed);
        m.add_reader();
        for step in 0..400 {
            m.step = step;
            m.step();
        }
    }
}
