//! Primitive AMQP 0-9-1 field encoding: octets, integers, short and long strings, bits and
//! field tables, with RabbitMQ's field-type letters (which differ from the 0-9-1 errata).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::fmt;

/// Errors decoding a payload that the frame layer already delimited.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum CodecError {
    #[error("payload is truncated")]
    Truncated,
    #[error("short string is not valid UTF-8")]
    InvalidUtf8,
    #[error("unknown field type '{0}'")]
    UnknownFieldType(char),
    #[error("unknown method {0}.{1}")]
    UnknownMethod(u16, u16),
    #[error("field table nests too deeply")]
    TooDeep,
}

/// A short string: at most 255 bytes of UTF-8, held as a cheap-to-clone `Bytes`.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ShortStr(Bytes);

// Hashes as `str` does, so maps keyed by ShortStr can be looked up with a `&str`.
impl std::hash::Hash for ShortStr {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_str().hash(state)
    }
}

impl ShortStr {
    pub const fn from_static(s: &'static str) -> Self {
        ShortStr(Bytes::from_static(s.as_bytes()))
    }
    pub fn as_str(&self) -> &str {
        // Constructed only from `&str` or validated bytes.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    fn from_bytes(b: Bytes) -> Result<Self, CodecError> {
        std::str::from_utf8(&b).map_err(|_| CodecError::InvalidUtf8)?;
        Ok(ShortStr(b))
    }
}

impl std::ops::Deref for ShortStr {
    type Target = str;
    fn deref(&self) -> &str {
        self.as_str()
    }
}
impl std::borrow::Borrow<str> for ShortStr {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}
impl From<&str> for ShortStr {
    fn from(s: &str) -> Self {
        ShortStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}
impl From<String> for ShortStr {
    fn from(s: String) -> Self {
        ShortStr(Bytes::from(s.into_bytes()))
    }
}
impl fmt::Debug for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}
impl fmt::Display for ShortStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A long string: arbitrary bytes with a 32-bit length.
#[derive(Clone, PartialEq, Eq, Default, Hash)]
pub struct LongStr(pub Bytes);

impl fmt::Debug for LongStr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(&self.0) {
            Ok(s) => fmt::Debug::fmt(s, f),
            Err(_) => fmt::Debug::fmt(&self.0, f),
        }
    }
}
impl From<&str> for LongStr {
    fn from(s: &str) -> Self {
        LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
}

/// One value in a field table or array.
#[derive(Clone, Debug, PartialEq)]
pub enum FieldValue {
    Bool(bool),
    I8(i8),
    U8(u8),
    I16(i16),
    U16(u16),
    I32(i32),
    U32(u32),
    I64(i64),
    F32(f32),
    F64(f64),
    Decimal(u8, u32),
    LongStr(Bytes),
    Array(Vec<FieldValue>),
    Timestamp(u64),
    Table(FieldTable),
    Void,
    ByteArray(Bytes),
}

impl FieldValue {
    /// The value as a signed integer, for numeric arguments of any integer width.
    pub fn as_i64(&self) -> Option<i64> {
        Some(match *self {
            FieldValue::I8(v) => v as i64,
            FieldValue::U8(v) => v as i64,
            FieldValue::I16(v) => v as i64,
            FieldValue::U16(v) => v as i64,
            FieldValue::I32(v) => v as i64,
            FieldValue::U32(v) => v as i64,
            FieldValue::I64(v) => v,
            _ => return None,
        })
    }
    pub fn as_str(&self) -> Option<&str> {
        match self {
            FieldValue::LongStr(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
    }
    pub fn as_bool(&self) -> Option<bool> {
        match self {
            FieldValue::Bool(b) => Some(*b),
            _ => None,
        }
    }
    pub fn string(s: &str) -> Self {
        FieldValue::LongStr(Bytes::copy_from_slice(s.as_bytes()))
    }
    /// RabbitMQ's name for the value's type, used in error texts.
    pub fn type_name(&self) -> &'static str {
        match self {
            FieldValue::Bool(_) => "bool",
            FieldValue::I8(_) | FieldValue::U8(_) => "byte",
            FieldValue::I16(_) | FieldValue::U16(_) => "short",
            FieldValue::I32(_) | FieldValue::U32(_) => "signedint",
            FieldValue::I64(_) => "long",
            FieldValue::F32(_) => "float",
            FieldValue::F64(_) => "double",
            FieldValue::Decimal(..) => "decimal",
            FieldValue::LongStr(_) => "longstr",
            FieldValue::Array(_) => "array",
            FieldValue::Timestamp(_) => "timestamp",
            FieldValue::Table(_) => "table",
            FieldValue::Void => "void",
            FieldValue::ByteArray(_) => "binary",
        }
    }
}

/// A field table, keeping the peer's order of entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FieldTable(pub Vec<(ShortStr, FieldValue)>);

impl FieldTable {
    pub fn new() -> Self {
        FieldTable(Vec::new())
    }
    pub fn get(&self, key: &str) -> Option<&FieldValue> {
        self.0.iter().find(|(k, _)| k.as_str() == key).map(|(_, v)| v)
    }
    pub fn insert(&mut self, key: &str, value: FieldValue) {
        match self.0.iter_mut().find(|(k, _)| k.as_str() == key) {
            Some(entry) => entry.1 = value,
            None => self.0.push((ShortStr::from(key), value)),
        }
    }
    pub fn remove(&mut self, key: &str) -> Option<FieldValue> {
        let pos = self.0.iter().position(|(k, _)| k.as_str() == key)?;
        Some(self.0.remove(pos).1)
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn iter(&self) -> impl Iterator<Item = (&ShortStr, &FieldValue)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    /// Equality regardless of entry order, as RabbitMQ compares declare arguments: the same
    /// keys, each with the same value as a lookup finds it (the first of a repeated key).
    /// Found by fuzzing: comparing entry by entry made a table with a repeated key
    /// inequivalent to itself, so an identical redeclare was refused.
    pub fn equivalent(&self, other: &FieldTable) -> bool {
        self.0.iter().all(|(k, _)| other.get(k) == self.get(k)) && other.0.iter().all(|(k, _)| self.get(k).is_some())
    }
}

const MAX_DEPTH: u32 = 64;

/// Reads fields from one method or header payload, tracking bit packing.
pub struct Decoder {
    buf: Bytes,
    bits: u8,
    bit_pos: u8,
}

impl Decoder {
    pub fn new(buf: Bytes) -> Self {
        Decoder { buf, bits: 0, bit_pos: 8 }
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }
    fn need(&self, n: usize) -> Result<(), CodecError> {
        if self.buf.len() < n {
            Err(CodecError::Truncated)
        } else {
            Ok(())
        }
    }
    fn reset_bits(&mut self) {
        self.bit_pos = 8;
    }
    pub fn octet(&mut self) -> Result<u8, CodecError> {
        self.reset_bits();
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    pub fn short(&mut self) -> Result<u16, CodecError> {
        self.reset_bits();
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    pub fn long(&mut self) -> Result<u32, CodecError> {
        self.reset_bits();
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    pub fn longlong(&mut self) -> Result<u64, CodecError> {
        self.reset_bits();
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    pub fn bit(&mut self) -> Result<bool, CodecError> {
        if self.bit_pos >= 8 {
            self.need(1)?;
            self.bits = self.buf.get_u8();
            self.bit_pos = 0;
        }
        let v = self.bits & (1 << self.bit_pos) != 0;
        self.bit_pos += 1;
        Ok(v)
    }
    pub fn shortstr(&mut self) -> Result<ShortStr, CodecError> {
        let len = self.octet()? as usize;
        self.need(len)?;
        ShortStr::from_bytes(self.buf.split_to(len))
    }
    pub fn longstr(&mut self) -> Result<LongStr, CodecError> {
        let len = self.long()? as usize;
        self.need(len)?;
        Ok(LongStr(self.buf.split_to(len)))
    }
    pub fn table(&mut self) -> Result<FieldTable, CodecError> {
        self.reset_bits();
        self.table_at(0)
    }
    fn table_at(&mut self, depth: u32) -> Result<FieldTable, CodecError> {
        if depth > MAX_DEPTH {
            return Err(CodecError::TooDeep);
        }
        let len = self.long()? as usize;
        self.need(len)?;
        let mut inner = Decoder::new(self.buf.split_to(len));
        let mut entries = Vec::new();
        while inner.remaining() > 0 {
            let key = inner.shortstr()?;
            let value = inner.value(depth)?;
            entries.push((key, value));
        }
        Ok(FieldTable(entries))
    }
    fn value(&mut self, depth: u32) -> Result<FieldValue, CodecError> {
        let t = self.octet()?;
        Ok(match t {
            b't' => FieldValue::Bool(self.octet()? != 0),
            b'b' => FieldValue::I8(self.octet()? as i8),
            b'B' => FieldValue::U8(self.octet()?),
            b's' => FieldValue::I16(self.short()? as i16),
            b'u' => FieldValue::U16(self.short()?),
            b'I' => FieldValue::I32(self.long()? as i32),
            b'i' => FieldValue::U32(self.long()?),
            b'l' => FieldValue::I64(self.longlong()? as i64),
            b'f' => FieldValue::F32(f32::from_bits(self.long()?)),
            b'd' => FieldValue::F64(f64::from_bits(self.longlong()?)),
            b'D' => {
                let scale = self.octet()?;
                FieldValue::Decimal(scale, self.long()?)
            }
            b'S' => FieldValue::LongStr(self.longstr()?.0),
            b'x' => FieldValue::ByteArray(self.longstr()?.0),
            b'T' => FieldValue::Timestamp(self.longlong()?),
            b'V' => FieldValue::Void,
            b'F' => FieldValue::Table(self.table_at(depth + 1)?),
            b'A' => {
                if depth > MAX_DEPTH {
                    return Err(CodecError::TooDeep);
                }
                let len = self.long()? as usize;
                self.need(len)?;
                let mut inner = Decoder::new(self.buf.split_to(len));
                let mut items = Vec::new();
                while inner.remaining() > 0 {
                    items.push(inner.value(depth + 1)?);
                }
                FieldValue::Array(items)
            }
            other => return Err(CodecError::UnknownFieldType(other as char)),
        })
    }
}

/// Writes fields into a buffer, packing consecutive bits into octets.
pub struct Encoder<'a> {
    buf: &'a mut BytesMut,
    bits: u8,
    bit_pos: u8,
}

impl<'a> Encoder<'a> {
    pub fn new(buf: &'a mut BytesMut) -> Self {
        Encoder { buf, bits: 0, bit_pos: 0 }
    }
    /// Writes any pending bits; call after the last field.
    pub fn finish(&mut self) {
        if self.bit_pos > 0 {
            self.buf.put_u8(self.bits);
            self.bits = 0;
            self.bit_pos = 0;
        }
    }
    pub fn octet(&mut self, v: u8) {
        self.finish();
        self.buf.put_u8(v);
    }
    pub fn short(&mut self, v: u16) {
        self.finish();
        self.buf.put_u16(v);
    }
    pub fn long(&mut self, v: u32) {
        self.finish();
        self.buf.put_u32(v);
    }
    pub fn longlong(&mut self, v: u64) {
        self.finish();
        self.buf.put_u64(v);
    }
    pub fn bit(&mut self, v: bool) {
        if self.bit_pos == 8 {
            self.finish();
        }
        if v {
            self.bits |= 1 << self.bit_pos;
        }
        self.bit_pos += 1;
    }
    pub fn shortstr(&mut self, v: &ShortStr) {
        self.finish();
        let b = v.as_bytes();
        let len = b.len().min(255);
        self.buf.put_u8(len as u8);
        self.buf.put_slice(&b[..len]);
    }
    pub fn longstr(&mut self, v: &LongStr) {
        self.finish();
        self.buf.put_u32(v.0.len() as u32);
        self.buf.put_slice(&v.0);
    }
    pub fn table(&mut self, t: &FieldTable) {
        self.finish();
        write_table(self.buf, t);
    }
}

fn write_table(buf: &mut BytesMut, t: &FieldTable) {
    let start = buf.len();
    buf.put_u32(0);
    for (k, v) in &t.0 {
        let b = k.as_bytes();
        buf.put_u8(b.len().min(255) as u8);
        buf.put_slice(&b[..b.len().min(255)]);
        write_value(buf, v);
    }
    let len = (buf.len() - start - 4) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

fn write_value(buf: &mut BytesMut, v: &FieldValue) {
    match v {
        FieldValue::Bool(b) => {
            buf.put_u8(b't');
            buf.put_u8(*b as u8);
        }
        FieldValue::I8(x) => {
            buf.put_u8(b'b');
            buf.put_i8(*x);
        }
        FieldValue::U8(x) => {
            buf.put_u8(b'B');
            buf.put_u8(*x);
        }
        FieldValue::I16(x) => {
            buf.put_u8(b's');
            buf.put_i16(*x);
        }
        FieldValue::U16(x) => {
            buf.put_u8(b'u');
            buf.put_u16(*x);
        }
        FieldValue::I32(x) => {
            buf.put_u8(b'I');
            buf.put_i32(*x);
        }
        FieldValue::U32(x) => {
            buf.put_u8(b'i');
            buf.put_u32(*x);
        }
        FieldValue::I64(x) => {
            buf.put_u8(b'l');
            buf.put_i64(*x);
        }
        FieldValue::F32(x) => {
            buf.put_u8(b'f');
            buf.put_u32(x.to_bits());
        }
        FieldValue::F64(x) => {
            buf.put_u8(b'd');
            buf.put_u64(x.to_bits());
        }
        FieldValue::Decimal(s, x) => {
            buf.put_u8(b'D');
            buf.put_u8(*s);
            buf.put_u32(*x);
        }
        FieldValue::LongStr(b) => {
            buf.put_u8(b'S');
            buf.put_u32(b.len() as u32);
            buf.put_slice(b);
        }
        FieldValue::ByteArray(b) => {
            buf.put_u8(b'x');
            buf.put_u32(b.len() as u32);
            buf.put_slice(b);
        }
        FieldValue::Timestamp(x) => {
            buf.put_u8(b'T');
            buf.put_u64(*x);
        }
        FieldValue::Void => buf.put_u8(b'V'),
        FieldValue::Table(t) => {
            buf.put_u8(b'F');
            write_table(buf, t);
        }
        FieldValue::Array(items) => {
            buf.put_u8(b'A');
            let start = buf.len();
            buf.put_u32(0);
            for item in items {
                write_value(buf, item);
            }
            let len = (buf.len() - start - 4) as u32;
            buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Regression (fuzz/corpus/field_table/regression-repeated-key): a table whose key repeats
    /// is equivalent to itself and to its own decode.
    #[test]
    fn a_repeated_key_is_equivalent_to_itself() {
        let t = FieldTable(vec![
            ("product".into(), FieldValue::string("a")),
            ("x".into(), FieldValue::I32(1)),
            ("product".into(), FieldValue::string("b")),
        ]);
        assert!(t.equivalent(&t.clone()));
        let first = FieldTable(vec![("product".into(), FieldValue::string("a")), ("x".into(), FieldValue::I32(1))]);
        assert!(t.equivalent(&first) && first.equivalent(&t));
        let other = FieldTable(vec![("product".into(), FieldValue::string("b")), ("x".into(), FieldValue::I32(1))]);
        assert!(!t.equivalent(&other));
        assert!(!t.equivalent(&FieldTable(vec![("product".into(), FieldValue::string("a"))])));
    }

    #[test]
    fn table_round_trip_every_type() {
        let mut nested = FieldTable::new();
        nested.insert("inner", FieldValue::I32(-5));
        let mut t = FieldTable::new();
        for (k, v) in [
            ("bool", FieldValue::Bool(true)),
            ("i8", FieldValue::I8(-1)),
            ("u8", FieldValue::U8(255)),
            ("i16", FieldValue::I16(-300)),
            ("u16", FieldValue::U16(60000)),
            ("i32", FieldValue::I32(-70000)),
            ("u32", FieldValue::U32(4_000_000_000)),
            ("i64", FieldValue::I64(-1 << 40)),
            ("f32", FieldValue::F32(1.5)),
            ("f64", FieldValue::F64(-2.25)),
            ("dec", FieldValue::Decimal(2, 12345)),
            ("str", FieldValue::string("héllo")),
            ("arr", FieldValue::Array(vec![FieldValue::Void, FieldValue::I8(3)])),
            ("ts", FieldValue::Timestamp(1_700_000_000)),
            ("tbl", FieldValue::Table(nested.clone())),
            ("void", FieldValue::Void),
            ("bin", FieldValue::ByteArray(Bytes::from_static(&[0, 1, 2]))),
        ] {
            t.insert(k, v);
        }
        let mut buf = BytesMut::new();
        Encoder::new(&mut buf).table(&t);
        let mut d = Decoder::new(buf.freeze());
        assert_eq!(d.table().unwrap(), t);
        assert_eq!(d.remaining(), 0);
    }

    #[test]
    fn bits_pack_into_octets() {
        let mut buf = BytesMut::new();
        let mut e = Encoder::new(&mut buf);
        e.bit(true);
        e.bit(false);
        e.bit(true);
        e.short(7);
        e.bit(true);
        e.finish();
        assert_eq!(&buf[..], &[0b101, 0, 7, 1]);
        let mut d = Decoder::new(buf.freeze());
        assert!(d.bit().unwrap());
        assert!(!d.bit().unwrap());
        assert!(d.bit().unwrap());
        assert_eq!(d.short().unwrap(), 7);
        assert!(d.bit().unwrap());
    }

    #[test]
    fn truncated_and_bad_input_is_an_error() {
        let mut d = Decoder::new(Bytes::from_static(&[0, 0, 0, 9, 1]));
        assert_eq!(d.table(), Err(CodecError::Truncated));
        let mut d = Decoder::new(Bytes::from_static(&[0, 0, 0, 3, 1, b'k', b'Z']));
        assert_eq!(d.table(), Err(CodecError::UnknownFieldType('Z')));
        let mut d = Decoder::new(Bytes::from_static(&[2, 0xff, 0xfe]));
        assert_eq!(d.shortstr(), Err(CodecError::InvalidUtf8));
    }
}
