//! A published message as the broker holds it: routing data, raw properties, body.

use crate::types::{BasicProperties, FieldTable, FieldValue, ShortStr};
use bytes::{Bytes, BytesMut};
use std::sync::Arc;

/// A body as it arrived: one piece, or the pieces of several body frames, each a
/// reference-counted slice of what was read from the publisher's socket. Nothing copies it on
/// the way to a consumer's socket (see `amqp::output`) or into a queue log.
#[derive(Debug, Clone)]
pub enum Body {
    One(Bytes),
    /// Pieces in order, and their total length.
    Parts(Arc<[Bytes]>, usize),
}

/// A body of more pieces than this is copied into one when it is complete: many tiny frames
/// (a small frame_max) would cost more as pieces than as a copy.
const MAX_PARTS: usize = 64;

impl Body {
    /// The body of the pieces received, in order.
    pub fn from_parts(mut parts: Vec<Bytes>) -> Body {
        match parts.len() {
            0 => Body::One(Bytes::new()),
            1 => Body::One(parts.remove(0)),
            n if n > MAX_PARTS => {
                let mut one = BytesMut::with_capacity(parts.iter().map(Bytes::len).sum());
                for p in &parts {
                    one.extend_from_slice(p);
                }
                Body::One(one.freeze())
            }
            _ => {
                let len = parts.iter().map(Bytes::len).sum();
                Body::Parts(parts.into(), len)
            }
        }
    }
    pub fn len(&self) -> usize {
        match self {
            Body::One(b) => b.len(),
            Body::Parts(_, len) => *len,
        }
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// The pieces, in order.
    pub fn parts(&self) -> &[Bytes] {
        match self {
            Body::One(b) => std::slice::from_ref(b),
            Body::Parts(p, _) => p,
        }
    }
    /// The body in one piece: free for a body that is one, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Body::One(b) => b.clone(),
            Body::Parts(parts, len) => {
                let mut one = BytesMut::with_capacity(*len);
                for p in parts.iter() {
                    one.extend_from_slice(p);
                }
                one.freeze()
            }
        }
    }
}

impl From<Bytes> for Body {
    fn from(b: Bytes) -> Body {
        Body::One(b)
    }
}

impl PartialEq for Body {
    fn eq(&self, other: &Body) -> bool {
        self.len() == other.len() && self.to_bytes() == other.to_bytes()
    }
}

#[derive(Debug)]
pub struct Message {
    pub exchange: ShortStr,
    pub routing_key: ShortStr,
    /// Property flags and list exactly as published (or as rewritten for direct reply-to).
    pub properties: Bytes,
    pub body: Body,
    pub persistent: bool,
    /// The `priority` property (0 when absent), for priority queues.
    pub priority: u8,
    /// The `expiration` property in milliseconds, for per-message TTL.
    pub expiration: Option<u64>,
}

impl Message {
    /// A message from its parts; priority and expiration are read from the raw properties.
    pub fn new(
        exchange: ShortStr,
        routing_key: ShortStr,
        properties: Bytes,
        body: impl Into<Body>,
        persistent: bool,
    ) -> Self {
        let body = body.into();
        let peeked = peek_properties(&properties);
        let priority = peeked.priority;
        let expiration = peeked.expiration.and_then(|e| std::str::from_utf8(e).ok()?.parse().ok());
        Message { exchange, routing_key, properties, body, persistent, priority, expiration }
    }
    /// Bytes this message adds to a queue or an outbound buffer, for flow control.
    pub fn size(&self) -> usize {
        self.body.len() + self.properties.len() + self.exchange.len() + self.routing_key.len()
    }
    /// Decodes the properties; the raw bytes were checked when the message was published.
    pub fn decode_properties(&self) -> BasicProperties {
        BasicProperties::decode(self.properties.clone()).unwrap_or_default()
    }
}

/// Sender-selected distribution, as RabbitMQ's `rabbit_basic:header_routes`: the routing keys
/// in the `CC` and `BCC` headers (arrays; their long strings are taken, other entries are
/// skipped), routed to as if each were the routing key too. A `CC` or `BCC` that is not an
/// array makes the message invalid: RabbitMQ's `406 PRECONDITION_FAILED - invalid message:
/// {unacceptable_type_in_header,"CC",longstr}`.
pub fn header_routes(headers: &FieldTable) -> Result<Vec<ShortStr>, crate::broker::AmqpError> {
    let mut keys = Vec::new();
    for name in ["CC", "BCC"] {
        match headers.get(name) {
            None => {}
            Some(FieldValue::Array(routes)) => keys.extend(routes.iter().filter_map(|r| match r {
                FieldValue::LongStr(b) => Some(ShortStr::from(String::from_utf8_lossy(b).as_ref())),
                _ => None,
            })),
            Some(other) => {
                return Err(crate::broker::AmqpError::precondition_failed(format!(
                    "invalid message: {{unacceptable_type_in_header,\"{name}\",{}}}",
                    other.type_name()
                )))
            }
        }
    }
    Ok(keys)
}

/// The two properties a queue needs on every publish, read without decoding the rest.
#[derive(Debug, Default, PartialEq)]
pub struct Peeked<'a> {
    pub priority: u8,
    pub expiration: Option<&'a [u8]>,
}

/// Reads `priority` and `expiration` from raw property bytes (flags, then the list in order:
/// content-type, content-encoding, headers, delivery-mode, priority, correlation-id,
/// reply-to, expiration). Malformed bytes give the defaults.
pub fn peek_properties(raw: &[u8]) -> Peeked<'_> {
    let out = Peeked::default();
    if raw.len() < 2 {
        return out;
    }
    let flags = u16::from_be_bytes([raw[0], raw[1]]);
    if flags & (1 << 11 | 1 << 8) == 0 {
        return out;
    }
    let mut pos = 2usize;
    let mut word = flags;
    while word & 1 != 0 {
        let Some(w) = raw.get(pos..pos + 2) else { return out };
        word = u16::from_be_bytes([w[0], w[1]]);
        pos += 2;
    }
    let short = |pos: &mut usize| -> Option<&[u8]> {
        let n = *raw.get(*pos)? as usize;
        let s = raw.get(*pos + 1..*pos + 1 + n)?;
        *pos += 1 + n;
        Some(s)
    };
    let has = |bit: u32| flags & (1 << bit) != 0;
    let step = || -> Option<Peeked<'_>> {
        let mut pos = pos;
        let mut p = Peeked::default();
        if has(15) {
            short(&mut pos)?;
        }
        if has(14) {
            short(&mut pos)?;
        }
        if has(13) {
            let len = raw.get(pos..pos + 4)?;
            pos += 4 + u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        }
        if has(12) {
            pos += 1;
        }
        if has(11) {
            p.priority = *raw.get(pos)?;
            pos += 1;
        }
        if has(10) {
            short(&mut pos)?;
        }
        if has(9) {
            short(&mut pos)?;
        }
        if has(8) {
            p.expiration = Some(short(&mut pos)?);
        }
        Some(p)
    };
    step().unwrap_or(out)
}

/// A message waiting in a queue, or handed out and owed back to it.
#[derive(Debug, Clone)]
pub struct QueuedMessage {
    /// Position in the queue; requeued messages go back to their place by it.
    pub seq: u64,
    pub message: Arc<Message>,
    pub redelivered: bool,
    /// The message is in the queue's log and must be acked there.
    pub logged: bool,
    /// When it expires in this queue (ms since the epoch), 0 for never.
    pub expires_at: u64,
    /// Times it was returned to the queue after a delivery (for x-delivery-limit).
    pub deliveries: u32,
    /// Its priority in this queue (0 in a queue without x-max-priority).
    pub priority: u8,
    /// For the latency statistics, one message in [`super::stats::STAMP_EVERY`]: when it was
    /// enqueued, then when it was delivered ([`super::stats::stamp_now`]); 0 for the others.
    pub stamp: u64,
}

impl QueuedMessage {
    /// A message in no queue's order (yet): a dead letter on its way, a direct reply-to
    /// delivery; fresh, unlogged, never delivered.
    pub fn unqueued(message: Arc<Message>) -> Self {
        QueuedMessage {
            seq: 0,
            message,
            redelivered: false,
            logged: false,
            expires_at: 0,
            deliveries: 0,
            priority: 0,
            stamp: 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{FieldTable, FieldValue};

    #[test]
    fn peeks_priority_and_expiration_past_other_properties() {
        let mut headers = FieldTable::new();
        headers.insert("k", FieldValue::string("v"));
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(7),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1500".into()),
            message_id: Some("m".into()),
            ..Default::default()
        };
        let m = Message::new("".into(), "k".into(), props.to_bytes(), Bytes::new(), true);
        assert_eq!((m.priority, m.expiration), (7, Some(1500)));
        let plain = Message::new("".into(), "k".into(), BasicProperties::default().to_bytes(), Bytes::new(), false);
        assert_eq!((plain.priority, plain.expiration), (0, None));
        assert_eq!(peek_properties(&[0x09]), Peeked::default());
        assert_eq!(peek_properties(&[0x08, 0x00]), Peeked::default());
        assert_eq!(peek_properties(&[0x08, 0x00, 5]).priority, 5);
    }
}

#[cfg(test)]
mod header_route_tests {
    use super::*;

    #[test]
    fn cc_and_bcc_keys_are_read_and_other_types_refused() {
        let mut h = FieldTable::new();
        assert!(header_routes(&h).unwrap().is_empty());
        h.insert("CC", FieldValue::Array(vec![FieldValue::string("a"), FieldValue::I32(1), FieldValue::string("b")]));
        h.insert("BCC", FieldValue::Array(vec![FieldValue::string("c")]));
        let keys: Vec<String> = header_routes(&h).unwrap().iter().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["a", "b", "c"]);
        h.insert("BCC", FieldValue::string("c"));
        let e = header_routes(&h).unwrap_err();
        assert_eq!(
            e.reply_text(),
            "PRECONDITION_FAILED - invalid message: {unacceptable_type_in_header,\"BCC\",longstr}"
        );
    }
}
