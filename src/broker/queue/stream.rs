//! A stream queue (`x-queue-type: stream`), as RabbitMQ's streams work over AMQP 0-9-1:
//! messages are appended to a log (a [`StreamStore`]) and never removed by consumption;
//! each consumer reads on from an offset of its own (`x-stream-offset`), as fast as its
//! prefetch allows, and its acks only return credit. Retention by size or age removes old
//! segments. Each delivery carries its offset in the `x-stream-offset` header, written into
//! the stored properties when the message is appended, so a delivery copies nothing.
//!
//! The queue's ordinary state (consumers, counters, rates) serves the stream too; what is a
//! stream's own is here: the record format, the readers' offsets and their dispatch.

use super::*;
use crate::broker::arguments::StreamOffset;
use crate::broker::store::{filter_bit, filter_matches, RecordFormat, StreamStore, FILTER_UNFILTERED};
use crate::types::{BasicProperties, FieldTable, FieldValue};
use bytes::{Buf, BufMut, BytesMut};

/// The first byte of one of Hare's records (chunks of `RecordFormat::Hare`): an AMQP 0-9-1
/// message; or, in chunks of the layout before osiris's only, an AMQP 1.0 message as the
/// stream protocol published it, after its publisher's reference and publishing id (the
/// stream protocol's messages are now kept as they are, in chunks of their own).
const RECORD_AMQP091: u8 = 1;
const RECORD_AMQP10: u8 = 2;
const FLAG_PERSISTENT: u8 = 1;

/// A segment's size when `x-stream-max-segment-size-bytes` does not say (RabbitMQ's 500 MB).
pub const DEFAULT_SEGMENT_BYTES: u64 = 500_000_000;

/// The log settings a stream's arguments (resolved against its policy) ask for.
pub fn stream_settings(args: &crate::broker::arguments::QueueArguments) -> crate::broker::store::StreamSettings {
    crate::broker::store::StreamSettings {
        max_bytes: args.max_length_bytes,
        max_age_ms: args.max_age,
        max_segment_bytes: args.max_segment_bytes.unwrap_or(DEFAULT_SEGMENT_BYTES).max(1),
    }
}

/// A consumer of a stream and where it reads on from.
#[derive(Debug)]
pub(super) struct Reader {
    pub(super) consumer: Arc<Consumer>,
    /// The offset of the next message to hand it.
    pub(super) next: u64,
    /// Its `x-stream-filter` values (their bits) and `x-stream-match-unfiltered`: chunks
    /// holding none of them are passed over (see [`consumer_filter`]).
    pub(super) filter: Option<(u32, bool)>,
}

/// An AMQP 0-9-1 consumer's filter, as RabbitMQ 3.13 reads it (`rabbit_stream_queue:
/// filter_spec`): `x-stream-filter`, one string or an array (its strings; other values are
/// left out), and `x-stream-match-unfiltered` (a bool; false otherwise), which counts only
/// with a filter. As with RabbitMQ, the broker passes over whole chunks none of whose
/// messages may match; the consumer filters the messages it gets.
pub fn consumer_filter(arguments: &FieldTable) -> Option<(u32, bool)> {
    let values: Vec<&[u8]> = match arguments.get("x-stream-filter")? {
        FieldValue::LongStr(v) => vec![v],
        FieldValue::Array(items) => items
            .iter()
            .filter_map(|i| match i {
                FieldValue::LongStr(v) => Some(&v[..]),
                _ => None,
            })
            .collect(),
        _ => return None,
    };
    let wanted = values.iter().fold(0, |bits, v| bits | filter_bit(v));
    let match_unfiltered = arguments.get("x-stream-match-unfiltered").and_then(FieldValue::as_bool).unwrap_or(false);
    Some((wanted, match_unfiltered))
}

/// A message as a stream stores it, with `x-stream-offset: offset` in its headers:
/// `1 | flags | exchange (u8 length) | routing key (u8 length) | properties (u32 length) | body`.
/// Returns its filter value's bit: its `x-stream-filter-value` header, as RabbitMQ 3.13 reads
/// an AMQP 0-9-1 publisher's filter value (see `store::filter_bit`).
pub fn encode_record(message: &Message, offset: u64, buf: &mut BytesMut) -> u32 {
    let mut props = message.decode_properties();
    let filter = match props.headers.as_ref().and_then(|h| h.get("x-stream-filter-value")) {
        Some(FieldValue::LongStr(v)) => filter_bit(v),
        _ => FILTER_UNFILTERED,
    };
    props.headers.get_or_insert_with(FieldTable::new).insert("x-stream-offset", FieldValue::I64(offset as i64));
    let props = props.to_bytes();
    buf.reserve(8 + message.exchange.len() + message.routing_key.len() + props.len() + message.body.len());
    buf.put_u8(RECORD_AMQP091);
    buf.put_u8(if message.persistent { FLAG_PERSISTENT } else { 0 });
    buf.put_u8(message.exchange.len() as u8);
    buf.put_slice(message.exchange.as_bytes());
    buf.put_u8(message.routing_key.len() as u8);
    buf.put_slice(message.routing_key.as_bytes());
    buf.put_u32(props.len() as u32);
    buf.put_slice(&props);
    for part in message.body.parts() {
        buf.put_slice(part);
    }
    filter
}

/// An old-layout stream protocol record (`2 | reference (u8 length) | publishing id (u64,
/// with a reference only) | AMQP 1.0 message`): its publisher and its AMQP 1.0 part.
fn split_amqp10(record: &bytes::Bytes) -> Option<(Option<(&str, u64)>, bytes::Bytes)> {
    if record.first() != Some(&RECORD_AMQP10) {
        return None;
    }
    let len = *record.get(1)? as usize;
    if len == 0 {
        return Some((None, record.slice(2..)));
    }
    let reference = std::str::from_utf8(record.get(2..2 + len)?).ok()?;
    let id = u64::from_be_bytes(record.get(2 + len..10 + len)?.try_into().ok()?);
    Some((Some((reference, id)), record.get(10 + len..).map(|_| record.slice(10 + len..))?))
}

/// A record's AMQP 1.0 message, if it holds one as it is (a slice, no copy): a record of
/// an AMQP 1.0 chunk, or an old-layout stream protocol record. None for AMQP 0-9-1.
pub fn amqp10_part(format: RecordFormat, record: &bytes::Bytes) -> Option<bytes::Bytes> {
    match format {
        RecordFormat::Amqp10 => Some(record.clone()),
        RecordFormat::Hare => Some(split_amqp10(record)?.1),
    }
}

/// A record as the stream protocol delivers it: an AMQP 1.0 message (the record itself for
/// what the stream protocol published; converted, with `x-exchange` and `x-routing-key`
/// annotations, for what AMQP 0-9-1 published).
pub fn record_as_amqp10(format: RecordFormat, record: &bytes::Bytes) -> Option<bytes::Bytes> {
    if let Some(m) = amqp10_part(format, record) {
        return Some(m);
    }
    let m = decode_record(format, record, 0, "")?;
    let mut props = m.decode_properties();
    if let Some(h) = props.headers.as_mut() {
        h.remove("x-stream-offset");
        if h.is_empty() {
            props.headers = None;
        }
    }
    let mut out = BytesMut::new();
    let parts: Vec<&[u8]> = m.body.parts().iter().map(|p| &p[..]).collect();
    crate::types::amqp10::from_amqp091(m.exchange.as_str(), m.routing_key.as_str(), &props, &parts, &mut out);
    Some(out.freeze())
}

/// Reads the records appended after the stream's saved tracking for the publishers that
/// wrote them, so deduplication knows their newest ids after a crash. Normally the last
/// group commit's records at most: the tracking is saved after every one that changes it.
pub fn recover_writers(store: &Arc<dyn StreamStore>, label: &str) {
    let (first, end) = store.bounds();
    let mut at = store.tracking_end().max(first);
    while at < end {
        let chunk = match store.read(at) {
            Ok(Some(c)) => c,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!("{label}: reading its publishers' ids back: {e}");
                break;
            }
        };
        for (reference, id) in chunk.writers.iter() {
            store.recover_writer(reference, *id);
        }
        if chunk.format == RecordFormat::Hare {
            // Records of the layout before osiris's name their publishers themselves.
            for record in chunk.records.iter() {
                if let Some((Some((reference, id)), _)) = split_amqp10(record) {
                    store.recover_writer(reference, id);
                }
            }
        }
        let next = chunk.first + chunk.records.len() as u64;
        if next <= at {
            break;
        }
        at = next;
    }
}

/// A stored record back as a message; its parts are slices of the chunk read (no copy).
/// `offset` and `stream` give a stream protocol message its `x-stream-offset` header and
/// its routing key (the stream's name, as RabbitMQ gives it). None for a record this
/// version cannot read.
pub fn decode_record(format: RecordFormat, record: &bytes::Bytes, offset: u64, stream: &str) -> Option<Message> {
    if let Some(data) = amqp10_part(format, record) {
        let converted = crate::types::amqp10::to_amqp091(&data)
            .unwrap_or_else(|| crate::types::amqp10::Amqp091 { body: data, ..Default::default() });
        let mut props = converted.props;
        props.headers.get_or_insert_with(FieldTable::new).insert("x-stream-offset", FieldValue::I64(offset as i64));
        let persistent = props.delivery_mode == Some(2);
        let exchange = ShortStr::from(converted.exchange.unwrap_or_default());
        let routing_key = ShortStr::from(converted.routing_key.unwrap_or_else(|| stream.to_string()));
        return Some(Message::new(exchange, routing_key, props.to_bytes(), converted.body, persistent));
    }
    let mut b = record.clone();
    if b.remaining() < 3 || b.get_u8() != RECORD_AMQP091 {
        return None;
    }
    let flags = b.get_u8();
    let short = |b: &mut bytes::Bytes| -> Option<ShortStr> {
        let len = *b.first()? as usize;
        b.advance(1);
        let s = std::str::from_utf8(b.get(..len)?).ok()?.to_string();
        b.advance(len);
        Some(ShortStr::from(s))
    };
    let exchange = short(&mut b)?;
    let routing_key = short(&mut b)?;
    if b.remaining() < 4 {
        return None;
    }
    let len = b.get_u32() as usize;
    if b.remaining() < len {
        return None;
    }
    let properties = b.split_to(len);
    BasicProperties::decode(properties.clone()).ok()?;
    Some(Message::new(exchange, routing_key, properties, b, flags & FLAG_PERSISTENT != 0))
}

impl Queue {
    /// For a stream, RabbitMQ's 540 for a method streams do not take (`basic.get`,
    /// `queue.purge`, `basic.nack and basic.reject`); None for other queues.
    pub fn stream_refusal(&self, what: &str) -> Option<AmqpError> {
        self.stream.as_ref()?;
        Some(AmqpError::not_implemented(format!(
            "{what} not supported by stream queues queue '{}' in vhost '{}'",
            self.name, self.vhost
        )))
    }

    /// A stream protocol subscription reads this stream: it counts among the queue's
    /// consumers (as RabbitMQ counts every reader of a stream) while the guard lives.
    pub fn stream_reader(self: &Arc<Self>) -> StreamReaderGuard {
        self.state.lock().stream_subscriptions += 1;
        StreamReaderGuard(self.clone())
    }

    /// A new or recovered stream queue on `store`. Its consumers are served as the log
    /// becomes durable (see `watch_stream`).
    pub fn stream(
        name: ShortStr,
        vhost: &str,
        options: QueueOptions,
        store: Arc<dyn StreamStore>,
        owner: Weak<dyn QueueOwner>,
    ) -> Arc<Self> {
        Self::kept_elsewhere(name, vhost, options, owner, None, Some(store))
    }

    /// Starts the task that serves the stream's consumers each time more of its log is
    /// durable; once, with the first consumer (which runs on the broker's runtime: a stream
    /// recovered at start is made before the runtime runs).
    fn watch_stream(self: &Arc<Self>, st: &mut QueueState, store: &Arc<dyn StreamStore>) {
        if st.stream_watched {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        st.stream_watched = true;
        let mut durable = store.durable_watch();
        let weak = Arc::downgrade(self);
        runtime.spawn(async move {
            while durable.changed().await.is_ok() {
                match weak.upgrade() {
                    Some(q) if !q.is_deleted() => q.dispatch(),
                    _ => return,
                }
            }
        });
    }

    /// Messages in the stream now (durable and not removed by retention).
    pub(super) fn stream_len(store: &Arc<dyn StreamStore>) -> u32 {
        let (first, end) = store.bounds();
        end.saturating_sub(first).min(u32::MAX as u64) as u32
    }

    /// Appends a routed message; its confirm waits for the returned ticket.
    pub(super) fn stream_publish(&self, store: &Arc<dyn StreamStore>, message: &Message) -> Published {
        let (_, ticket) = store.append(&mut |offset, buf| encode_record(message, offset, buf));
        let mut st = self.state.lock();
        st.counts.publish += 1;
        st.last_used = now_ms();
        Published { ticket, logged: true, ..Default::default() }
    }

    /// Appends a message published over the stream protocol (AMQP 1.0 bytes) by `writer`
    /// (a named publisher's reference and publishing id); returns its offset and the ticket
    /// its confirm waits for. None if the queue is not a stream. The queue's publish count
    /// is kept by `count_stream_publishes`, once per frame.
    pub fn stream_append(
        &self,
        writer: Option<(&str, u64)>,
        message: bytes::Bytes,
        filter: Option<&[u8]>,
    ) -> Option<(u64, u64)> {
        let store = self.stream.as_ref()?;
        Some(store.append_amqp10(writer, message, filter))
    }

    /// Appends a compressed sub-entry batch of `records` messages, as `stream_append` a
    /// message.
    pub fn stream_append_batch(
        &self,
        writer: Option<(&str, u64)>,
        entry: bytes::Bytes,
        records: u16,
    ) -> Option<(u64, u64)> {
        let store = self.stream.as_ref()?;
        Some(store.append_batch(writer, entry, records))
    }

    /// `n` messages were appended over the stream protocol.
    pub fn count_stream_publishes(&self, n: u64) {
        let mut st = self.state.lock();
        st.counts.publish += n;
        st.last_used = now_ms();
    }

    /// Adds a consumer that reads from `start` on.
    pub fn add_stream_consumer(self: &Arc<Self>, consumer: Arc<Consumer>, start: StreamOffset) -> AmqpResult<()> {
        let Some(store) = &self.stream else { return self.add_consumer(consumer).map(|_| ()) };
        let (first, end) = store.bounds();
        let next = match start {
            StreamOffset::First => first,
            StreamOffset::Last => store.last_chunk().max(first),
            StreamOffset::Next => end,
            StreamOffset::Offset(o) => o.clamp(first, end),
            StreamOffset::Timestamp(t) => store.offset_at(t).max(first),
        };
        let mut st = self.state.lock();
        self.watch_stream(&mut st, store);
        st.consumers.push(consumer.clone());
        let filter = consumer_filter(&consumer.arguments);
        st.readers.push(Reader { consumer, next, filter });
        st.had_consumer = true;
        st.last_used = now_ms();
        self.dispatch_stream(&mut st, store);
        Ok(())
    }

    /// Hands each reader what the durable log has past its offset, within its credit.
    pub(super) fn dispatch_stream(self: &Arc<Self>, st: &mut QueueState, store: &Arc<dyn StreamStore>) {
        let (first, end) = store.bounds();
        for i in 0..st.readers.len() {
            // Each pass hands out at least one message or stops: bounded by the log's length.
            loop {
                let (consumer, next) = {
                    let r = &mut st.readers[i];
                    r.next = r.next.max(first);
                    (r.consumer.clone(), r.next)
                };
                if next >= end || !self.may_deliver(&consumer) {
                    break;
                }
                if let Some((wanted, unfiltered)) = st.readers[i].filter {
                    // A chunk none of whose messages has a value the consumer asked for is
                    // passed over, by its index entry alone.
                    if let Ok(Some((_, chunk_end, summary))) = store.chunk_span(next) {
                        if !filter_matches(summary, wanted, unfiltered) && chunk_end > next {
                            st.readers[i].next = chunk_end.min(end);
                            continue;
                        }
                    }
                }
                let chunk = match store.read(next) {
                    Ok(Some(chunk)) => chunk,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::error!("stream '{}' in vhost '{}': {e}", self.name, self.vhost);
                        break;
                    }
                };
                let mut at = next.max(chunk.first);
                let chunk_end = (chunk.first + chunk.records.len() as u64).min(end);
                while at < chunk_end && self.may_deliver(&consumer) {
                    if let Some(b) = chunk.batch_at(at) {
                        // A compressed sub-entry batch: its messages are the stream
                        // protocol's clients' to decompress; AMQP consumers pass over them.
                        at = b.first + b.records as u64;
                        continue;
                    }
                    let record = &chunk.records[(at - chunk.first) as usize];
                    match decode_record(chunk.format, record, at, &self.name) {
                        Some(message) => {
                            let mut m = QueuedMessage::unqueued(Arc::new(message));
                            m.seq = at;
                            self.hand_out(st, &consumer, m);
                        }
                        None => tracing::warn!("stream '{}': the record at offset {at} is unreadable", self.name),
                    }
                    at += 1;
                }
                st.readers[i].next = at;
                if at == next {
                    break;
                }
            }
        }
    }

    /// Whether `consumer` may take one more delivery now; if its connection is full, the
    /// queue is woken when it drains.
    fn may_deliver(self: &Arc<Self>, consumer: &Consumer) -> bool {
        if !consumer.has_credit() {
            return false;
        }
        if !consumer.sink.has_capacity() {
            consumer.sink.wait_for_capacity(self);
            return consumer.sink.has_capacity();
        }
        true
    }

    /// Deliveries of a stream came back settled (acked, or left by a closed channel): only
    /// their credit returns; the messages stay in the log.
    pub(super) fn stream_settled(self: &Arc<Self>, messages: &[QueuedMessage], acked: bool) {
        let mut st = self.state.lock();
        for m in messages {
            st.came_back(m);
        }
        if acked {
            st.counts.ack += messages.len() as u64;
        }
        if let Some(store) = &self.stream {
            self.dispatch_stream(&mut st, store);
        }
    }
}

#[cfg(test)]
mod tests;

/// Counts a stream protocol subscription among its stream's consumers until dropped (see
/// [`Queue::stream_reader`]).
#[derive(Debug)]
pub struct StreamReaderGuard(Arc<Queue>);

impl Drop for StreamReaderGuard {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.stream_subscriptions = st.stream_subscriptions.saturating_sub(1);
    }
}
