//! AMQP 1.0's message format, as RabbitMQ's streams carry messages: a stream protocol
//! client publishes and receives each message as AMQP 1.0 sections (header, message
//! annotations, properties, application properties, body), and a message published over
//! AMQP 0-9-1 reaches it in that form too. This is the type system's encoding (AMQP 1.0
//! part 1) for the values those sections hold, and the translation of a message both ways
//! as RabbitMQ's `rabbit_msg_record` makes it:
//!
//! | AMQP 0-9-1                  | AMQP 1.0                                  |
//! |-----------------------------|-------------------------------------------|
//! | delivery-mode 2, priority   | header: durable, priority                 |
//! | message-id, correlation-id  | properties: message-id, correlation-id    |
//! | user-id, reply-to           | properties: user-id (binary), reply-to    |
//! | content-type, -encoding     | properties: content-type, -encoding       |
//! | timestamp (seconds)         | properties: creation-time (milliseconds)  |
//! | headers                     | application-properties (simple values)    |
//! | type, app-id, expiration    | message-annotations `x-basic-type`, ...   |
//! | body                        | one data section                          |
//!
//! A body in several data sections is joined; an `amqp-value` string or binary body is its
//! bytes. Values a header cannot hold (lists, maps, described values) are left out.

use super::{BasicProperties, FieldTable, FieldValue, ShortStr};
use bytes::{Buf, BufMut, Bytes, BytesMut};

/// A value of the AMQP 1.0 type system, as far as messages use them.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Ubyte(u8),
    Ushort(u16),
    Uint(u32),
    Ulong(u64),
    Byte(i8),
    Short(i16),
    Int(i32),
    Long(i64),
    Float(f32),
    Double(f64),
    Char(u32),
    /// Milliseconds since the epoch.
    Timestamp(i64),
    Uuid([u8; 16]),
    Binary(Bytes),
    String(String),
    Symbol(String),
    List(Vec<Value>),
    Map(Vec<(Value, Value)>),
    Array(Vec<Value>),
    Described(Box<Value>, Box<Value>),
}

/// Nesting deeper than this is refused: a hostile message cannot exhaust the stack.
const MAX_DEPTH: usize = 32;

/// The section descriptors (AMQP 1.0 part 3.2).
const HEADER: u64 = 0x70;
const DELIVERY_ANNOTATIONS: u64 = 0x71;
const MESSAGE_ANNOTATIONS: u64 = 0x72;
const PROPERTIES: u64 = 0x73;
const APPLICATION_PROPERTIES: u64 = 0x74;
const DATA: u64 = 0x75;
const AMQP_SEQUENCE: u64 = 0x76;
const AMQP_VALUE: u64 = 0x77;
const FOOTER: u64 = 0x78;

/// Reads one value; None if `b` does not hold a whole, valid one.
pub fn decode(b: &mut Bytes) -> Option<Value> {
    decode_at(b, 0)
}

fn take(b: &mut Bytes, n: usize) -> Option<Bytes> {
    (b.remaining() >= n).then(|| b.split_to(n))
}

fn utf8(bytes: Bytes) -> Option<String> {
    String::from_utf8(bytes.to_vec()).ok()
}

fn decode_at(b: &mut Bytes, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH || !b.has_remaining() {
        return None;
    }
    let code = b.get_u8();
    decode_body(code, b, depth)
}

/// The value after its constructor `code` (arrays share one constructor for their items).
fn decode_body(code: u8, b: &mut Bytes, depth: usize) -> Option<Value> {
    macro_rules! need {
        ($n:expr) => {
            if b.remaining() < $n {
                return None;
            }
        };
    }
    Some(match code {
        0x00 => {
            let descriptor = decode_at(b, depth + 1)?;
            let value = decode_at(b, depth + 1)?;
            Value::Described(Box::new(descriptor), Box::new(value))
        }
        0x40 => Value::Null,
        0x41 => Value::Bool(true),
        0x42 => Value::Bool(false),
        0x56 => {
            need!(1);
            Value::Bool(b.get_u8() != 0)
        }
        0x50 => {
            need!(1);
            Value::Ubyte(b.get_u8())
        }
        0x60 => {
            need!(2);
            Value::Ushort(b.get_u16())
        }
        0x70 => {
            need!(4);
            Value::Uint(b.get_u32())
        }
        0x52 => {
            need!(1);
            Value::Uint(b.get_u8() as u32)
        }
        0x43 => Value::Uint(0),
        0x80 => {
            need!(8);
            Value::Ulong(b.get_u64())
        }
        0x53 => {
            need!(1);
            Value::Ulong(b.get_u8() as u64)
        }
        0x44 => Value::Ulong(0),
        0x51 => {
            need!(1);
            Value::Byte(b.get_i8())
        }
        0x61 => {
            need!(2);
            Value::Short(b.get_i16())
        }
        0x71 => {
            need!(4);
            Value::Int(b.get_i32())
        }
        0x54 => {
            need!(1);
            Value::Int(b.get_i8() as i32)
        }
        0x81 => {
            need!(8);
            Value::Long(b.get_i64())
        }
        0x55 => {
            need!(1);
            Value::Long(b.get_i8() as i64)
        }
        0x72 => {
            need!(4);
            Value::Float(b.get_f32())
        }
        0x82 => {
            need!(8);
            Value::Double(b.get_f64())
        }
        0x73 => {
            need!(4);
            Value::Char(b.get_u32())
        }
        0x83 => {
            need!(8);
            Value::Timestamp(b.get_i64())
        }
        0x98 => {
            let mut u = [0u8; 16];
            need!(16);
            b.copy_to_slice(&mut u);
            Value::Uuid(u)
        }
        // Decimals are kept as their bytes: nothing in a message's mapping reads them.
        0x74 => Value::Binary(take(b, 4)?),
        0x84 => Value::Binary(take(b, 8)?),
        0x94 => Value::Binary(take(b, 16)?),
        0xa0 | 0xa1 | 0xa3 => {
            need!(1);
            let n = b.get_u8() as usize;
            variable(code, take(b, n)?)?
        }
        0xb0 | 0xb1 | 0xb3 => {
            need!(4);
            let n = b.get_u32() as usize;
            variable(code - 0x10, take(b, n)?)?
        }
        0x45 => Value::List(Vec::new()),
        0xc0 | 0xc1 | 0xd0 | 0xd1 => {
            let (size, count) = if code < 0xd0 {
                need!(2);
                (b.get_u8() as usize, b.get_u8() as usize)
            } else {
                need!(8);
                (b.get_u32() as usize, b.get_u32() as usize)
            };
            let width = if code < 0xd0 { 1 } else { 4 };
            let mut body = take(b, size.checked_sub(width)?)?;
            // Each item takes at least a byte: a count past the bytes is a lie.
            if count > body.remaining() {
                return None;
            }
            let mut items = Vec::with_capacity(count);
            for _ in 0..count {
                items.push(decode_at(&mut body, depth + 1)?);
            }
            if code & 0x0f == 0 {
                Value::List(items)
            } else {
                if count % 2 != 0 {
                    return None;
                }
                let mut pairs = Vec::with_capacity(count / 2);
                let mut it = items.into_iter();
                while let (Some(k), Some(v)) = (it.next(), it.next()) {
                    pairs.push((k, v));
                }
                Value::Map(pairs)
            }
        }
        0xe0 | 0xf0 => {
            let (size, count) = if code == 0xe0 {
                need!(2);
                (b.get_u8() as usize, b.get_u8() as usize)
            } else {
                need!(8);
                (b.get_u32() as usize, b.get_u32() as usize)
            };
            let width = if code == 0xe0 { 1 } else { 4 };
            let mut body = take(b, size.checked_sub(width)?)?;
            if !body.has_remaining() || count > body.remaining() {
                return None;
            }
            let item = body.get_u8();
            let mut items = Vec::with_capacity(count.min(1024));
            for _ in 0..count {
                items.push(decode_body(item, &mut body, depth + 1)?);
            }
            Value::Array(items)
        }
        _ => return None,
    })
}

fn variable(code: u8, bytes: Bytes) -> Option<Value> {
    Some(match code {
        0xa0 => Value::Binary(bytes),
        0xa1 => Value::String(utf8(bytes)?),
        _ => Value::Symbol(utf8(bytes)?),
    })
}

/// Writes `v` in its smallest encoding.
pub fn encode(v: &Value, out: &mut BytesMut) {
    match v {
        Value::Null => out.put_u8(0x40),
        Value::Bool(true) => out.put_u8(0x41),
        Value::Bool(false) => out.put_u8(0x42),
        Value::Ubyte(x) => {
            out.put_u8(0x50);
            out.put_u8(*x);
        }
        Value::Ushort(x) => {
            out.put_u8(0x60);
            out.put_u16(*x);
        }
        Value::Uint(0) => out.put_u8(0x43),
        Value::Uint(x) if *x < 256 => {
            out.put_u8(0x52);
            out.put_u8(*x as u8);
        }
        Value::Uint(x) => {
            out.put_u8(0x70);
            out.put_u32(*x);
        }
        Value::Ulong(0) => out.put_u8(0x44),
        Value::Ulong(x) if *x < 256 => {
            out.put_u8(0x53);
            out.put_u8(*x as u8);
        }
        Value::Ulong(x) => {
            out.put_u8(0x80);
            out.put_u64(*x);
        }
        Value::Byte(x) => {
            out.put_u8(0x51);
            out.put_i8(*x);
        }
        Value::Short(x) => {
            out.put_u8(0x61);
            out.put_i16(*x);
        }
        Value::Int(x) => {
            out.put_u8(0x71);
            out.put_i32(*x);
        }
        Value::Long(x) => {
            out.put_u8(0x81);
            out.put_i64(*x);
        }
        Value::Float(x) => {
            out.put_u8(0x72);
            out.put_f32(*x);
        }
        Value::Double(x) => {
            out.put_u8(0x82);
            out.put_f64(*x);
        }
        Value::Char(x) => {
            out.put_u8(0x73);
            out.put_u32(*x);
        }
        Value::Timestamp(x) => {
            out.put_u8(0x83);
            out.put_i64(*x);
        }
        Value::Uuid(u) => {
            out.put_u8(0x98);
            out.put_slice(u);
        }
        Value::Binary(b) => put_variable(out, 0xa0, b),
        Value::String(s) => put_variable(out, 0xa1, s.as_bytes()),
        Value::Symbol(s) => put_variable(out, 0xa3, s.as_bytes()),
        Value::List(items) => put_compound(out, 0xd0, items.len(), |out| items.iter().for_each(|i| encode(i, out))),
        Value::Map(pairs) => put_compound(out, 0xd1, pairs.len() * 2, |out| {
            for (k, v) in pairs {
                encode(k, out);
                encode(v, out);
            }
        }),
        Value::Array(items) => {
            // Written as a list: the message mapping never produces arrays.
            put_compound(out, 0xd0, items.len(), |out| items.iter().for_each(|i| encode(i, out)))
        }
        Value::Described(d, v) => {
            out.put_u8(0x00);
            encode(d, out);
            encode(v, out);
        }
    }
}

fn put_variable(out: &mut BytesMut, code: u8, bytes: &[u8]) {
    if bytes.len() < 256 {
        out.put_u8(code);
        out.put_u8(bytes.len() as u8);
    } else {
        out.put_u8(code + 0x10);
        out.put_u32(bytes.len() as u32);
    }
    out.put_slice(bytes);
}

/// A list or map in its 32-bit form (its size is known only once written).
fn put_compound(out: &mut BytesMut, code: u8, count: usize, items: impl FnOnce(&mut BytesMut)) {
    out.put_u8(code);
    let at = out.len();
    out.put_u32(0);
    out.put_u32(count as u32);
    items(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

fn section(out: &mut BytesMut, descriptor: u64, value: &Value) {
    out.put_u8(0x00);
    encode(&Value::Ulong(descriptor), out);
    encode(value, out);
}

fn symbol(s: &str) -> Value {
    Value::Symbol(s.to_string())
}

fn opt_string(s: &Option<ShortStr>) -> Value {
    s.as_ref().map_or(Value::Null, |s| Value::String(s.as_str().to_string()))
}

/// A header's value in AMQP 1.0, if it is one an application property can hold.
fn from_field(v: &FieldValue) -> Option<Value> {
    Some(match v {
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::I8(x) => Value::Byte(*x),
        FieldValue::U8(x) => Value::Ubyte(*x),
        FieldValue::I16(x) => Value::Short(*x),
        FieldValue::U16(x) => Value::Ushort(*x),
        FieldValue::I32(x) => Value::Int(*x),
        FieldValue::U32(x) => Value::Uint(*x),
        FieldValue::I64(x) => Value::Long(*x),
        FieldValue::F32(x) => Value::Float(*x),
        FieldValue::F64(x) => Value::Double(*x),
        FieldValue::LongStr(s) => match std::str::from_utf8(s) {
            Ok(s) => Value::String(s.to_string()),
            Err(_) => Value::Binary(s.clone()),
        },
        FieldValue::ByteArray(b) => Value::Binary(b.clone()),
        FieldValue::Timestamp(t) => Value::Timestamp((*t as i64).saturating_mul(1000)),
        FieldValue::Void => Value::Null,
        _ => return None,
    })
}

/// An AMQP 1.0 simple value as a header's value.
fn to_field(v: &Value) -> Option<FieldValue> {
    Some(match v {
        Value::Null => FieldValue::Void,
        Value::Bool(b) => FieldValue::Bool(*b),
        Value::Ubyte(x) => FieldValue::U8(*x),
        Value::Ushort(x) => FieldValue::U16(*x),
        Value::Uint(x) => FieldValue::I64(*x as i64),
        Value::Ulong(x) => FieldValue::I64(i64::try_from(*x).ok()?),
        Value::Byte(x) => FieldValue::I8(*x),
        Value::Short(x) => FieldValue::I16(*x),
        Value::Int(x) => FieldValue::I32(*x),
        Value::Long(x) => FieldValue::I64(*x),
        Value::Float(x) => FieldValue::F32(*x),
        Value::Double(x) => FieldValue::F64(*x),
        Value::Timestamp(t) => FieldValue::Timestamp((*t / 1000).max(0) as u64),
        Value::String(s) | Value::Symbol(s) => FieldValue::LongStr(Bytes::from(s.clone())),
        Value::Binary(b) => FieldValue::ByteArray(b.clone()),
        Value::Uuid(u) => FieldValue::ByteArray(Bytes::copy_from_slice(u)),
        _ => return None,
    })
}

/// A message-id or correlation-id as AMQP 0-9-1's short string.
fn id_string(v: &Value) -> Option<ShortStr> {
    let s = match v {
        Value::String(s) | Value::Symbol(s) => s.clone(),
        Value::Ulong(x) => x.to_string(),
        Value::Uuid(u) => u.iter().map(|b| format!("{b:02x}")).collect(),
        Value::Binary(b) => String::from_utf8(b.to_vec()).ok()?,
        _ => return None,
    };
    (s.len() < 256).then(|| ShortStr::from(s))
}

fn text(v: &Value) -> Option<ShortStr> {
    match v {
        Value::String(s) | Value::Symbol(s) if s.len() < 256 => Some(ShortStr::from(s.clone())),
        Value::Binary(b) if b.len() < 256 => String::from_utf8(b.to_vec()).ok().map(ShortStr::from),
        _ => None,
    }
}

/// An AMQP 0-9-1 message in AMQP 1.0's format, appended to `out`; the exchange and routing
/// key it was published with go in the message annotations `x-exchange`, `x-routing-key`.
pub fn from_amqp091(exchange: &str, routing_key: &str, props: &BasicProperties, body: &[&[u8]], out: &mut BytesMut) {
    let durable = props.delivery_mode == Some(2);
    if durable || props.priority.is_some() {
        let priority = props.priority.map_or(Value::Null, Value::Ubyte);
        section(out, HEADER, &Value::List(vec![Value::Bool(durable), priority]));
    }
    let mut annotations = vec![
        (symbol("x-exchange"), Value::String(exchange.to_string())),
        (symbol("x-routing-key"), Value::String(routing_key.to_string())),
    ];
    for (key, value) in
        [("x-basic-type", &props.kind), ("x-basic-app-id", &props.app_id), ("x-basic-expiration", &props.expiration)]
    {
        if let Some(v) = value {
            annotations.push((symbol(key), Value::String(v.as_str().to_string())));
        }
    }
    section(out, MESSAGE_ANNOTATIONS, &Value::Map(annotations));
    let fields = [
        opt_string(&props.message_id),
        props.user_id.as_ref().map_or(Value::Null, |u| Value::Binary(Bytes::copy_from_slice(u.as_bytes()))),
        Value::Null,
        Value::Null,
        opt_string(&props.reply_to),
        opt_string(&props.correlation_id),
        props.content_type.as_ref().map_or(Value::Null, |s| symbol(s.as_str())),
        props.content_encoding.as_ref().map_or(Value::Null, |s| symbol(s.as_str())),
        Value::Null,
        props.timestamp.map_or(Value::Null, |t| Value::Timestamp((t as i64).saturating_mul(1000))),
    ];
    // Trailing nulls are left out, as encoders do.
    let used = fields.iter().rposition(|v| *v != Value::Null).map_or(0, |i| i + 1);
    if used > 0 {
        section(out, PROPERTIES, &Value::List(fields[..used].to_vec()));
    }
    if let Some(headers) = &props.headers {
        let pairs: Vec<_> =
            headers.iter().filter_map(|(k, v)| Some((Value::String(k.as_str().to_string()), from_field(v)?))).collect();
        if !pairs.is_empty() {
            section(out, APPLICATION_PROPERTIES, &Value::Map(pairs));
        }
    }
    let len: usize = body.iter().map(|p| p.len()).sum();
    out.put_u8(0x00);
    encode(&Value::Ulong(DATA), out);
    if len < 256 {
        out.put_u8(0xa0);
        out.put_u8(len as u8);
    } else {
        out.put_u8(0xb0);
        out.put_u32(len as u32);
    }
    for part in body {
        out.put_slice(part);
    }
}

/// An AMQP 1.0 message as AMQP 0-9-1 sees it.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Amqp091 {
    pub props: BasicProperties,
    pub body: Bytes,
    /// The message annotations `x-exchange` and `x-routing-key`, if present.
    pub exchange: Option<String>,
    pub routing_key: Option<String>,
}

/// An AMQP 1.0 message as AMQP 0-9-1 properties and body. None if `data` is not a sequence
/// of AMQP 1.0 sections (the caller then delivers the bytes as they are).
pub fn to_amqp091(data: &Bytes) -> Option<Amqp091> {
    let mut out = Amqp091::default();
    let mut b = data.clone();
    let mut props = BasicProperties::default();
    let mut headers = FieldTable::new();
    let mut body: Option<Bytes> = None;
    let mut joined: Option<BytesMut> = None;
    while b.has_remaining() {
        let Value::Described(descriptor, value) = decode(&mut b)? else { return None };
        let code = match *descriptor {
            Value::Ulong(c) => c,
            Value::Symbol(ref s) => match s.as_str() {
                "amqp:header:list" => HEADER,
                "amqp:message-annotations:map" => MESSAGE_ANNOTATIONS,
                "amqp:properties:list" => PROPERTIES,
                "amqp:application-properties:map" => APPLICATION_PROPERTIES,
                "amqp:data:binary" => DATA,
                "amqp:amqp-value:*" => AMQP_VALUE,
                _ => 0,
            },
            _ => return None,
        };
        match (code, *value) {
            (HEADER, Value::List(fields)) => {
                if fields.first() == Some(&Value::Bool(true)) {
                    props.delivery_mode = Some(2);
                }
                if let Some(Value::Ubyte(p)) = fields.get(1) {
                    props.priority = Some(*p);
                }
            }
            (MESSAGE_ANNOTATIONS, Value::Map(pairs)) => {
                for (k, v) in pairs {
                    let (Value::Symbol(k), Some(text)) = (&k, text(&v)) else { continue };
                    match k.as_str() {
                        "x-exchange" => out.exchange = Some(text.as_str().to_string()),
                        "x-routing-key" => out.routing_key = Some(text.as_str().to_string()),
                        "x-basic-type" => props.kind = Some(text),
                        "x-basic-app-id" => props.app_id = Some(text),
                        "x-basic-expiration" => props.expiration = Some(text),
                        _ => {}
                    }
                }
            }
            (PROPERTIES, Value::List(fields)) => {
                let field = |i: usize| fields.get(i).filter(|v| **v != Value::Null);
                props.message_id = field(0).and_then(id_string);
                props.user_id = field(1).and_then(text);
                props.reply_to = field(4).and_then(text);
                props.correlation_id = field(5).and_then(id_string);
                props.content_type = field(6).and_then(text);
                props.content_encoding = field(7).and_then(text);
                if let Some(Value::Timestamp(t)) = field(9) {
                    props.timestamp = Some((*t / 1000).max(0) as u64);
                }
            }
            (APPLICATION_PROPERTIES, Value::Map(pairs)) => {
                for (k, v) in pairs {
                    if let (Value::String(k), Some(v)) = (&k, to_field(&v)) {
                        if k.len() < 256 {
                            headers.insert(k, v);
                        }
                    }
                }
            }
            (DATA, Value::Binary(bytes)) => match (&mut joined, &body) {
                (Some(j), _) => j.extend_from_slice(&bytes),
                (None, Some(first)) => {
                    let mut j = BytesMut::from(&first[..]);
                    j.extend_from_slice(&bytes);
                    joined = Some(j);
                }
                (None, None) => body = Some(bytes),
            },
            (AMQP_VALUE, Value::Binary(bytes)) => body = Some(bytes),
            (AMQP_VALUE, Value::String(s)) => body = Some(Bytes::from(s)),
            (DELIVERY_ANNOTATIONS | AMQP_SEQUENCE | AMQP_VALUE | FOOTER, _) => {}
            _ => {}
        }
    }
    if !headers.is_empty() {
        props.headers = Some(headers);
    }
    out.body = match joined {
        Some(j) => j.freeze(),
        None => body.unwrap_or_default(),
    };
    out.props = props;
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_goes_to_amqp_1_0_and_back() {
        let mut headers = FieldTable::new();
        headers.insert("k", FieldValue::string("v"));
        headers.insert("n", FieldValue::I32(-7));
        let props = BasicProperties {
            content_type: Some("text/plain".into()),
            delivery_mode: Some(2),
            priority: Some(3),
            message_id: Some("m1".into()),
            correlation_id: Some("c1".into()),
            reply_to: Some("r".into()),
            timestamp: Some(1_700_000_000),
            kind: Some("t".into()),
            headers: Some(headers),
            ..Default::default()
        };
        let body = vec![7u8; 300];
        let mut out = BytesMut::new();
        from_amqp091("ex", "rk", &props, &[&body[..100], &body[100..]], &mut out);
        let back = to_amqp091(&out.freeze()).expect("decodes");
        assert_eq!(back.body, Bytes::from(body));
        assert_eq!(back.props, props);
        assert_eq!((back.exchange.as_deref(), back.routing_key.as_deref()), (Some("ex"), Some("rk")));
    }

    #[test]
    fn data_sections_join_and_foreign_bytes_are_refused() {
        let mut out = BytesMut::new();
        for part in [&b"ab"[..], b"cd"] {
            section(&mut out, DATA, &Value::Binary(Bytes::copy_from_slice(part)));
        }
        let back = to_amqp091(&out.freeze()).expect("decodes");
        assert_eq!(&back.body[..], b"abcd");
        assert!(to_amqp091(&Bytes::from_static(b"plain text")).is_none());
        // A list that claims more items than it has bytes for.
        assert!(to_amqp091(&Bytes::from_static(&[0x00, 0x53, 0x73, 0xc0, 0x02, 0xff, 0x40])).is_none());
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..64);
            let mut v: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            if rng.gen_bool(0.5) && v.len() > 3 {
                v[0] = 0;
                v[1] = 0x53;
            }
            let _ = to_amqp091(&Bytes::from(v));
        }
    }
}
