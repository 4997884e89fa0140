//! The payloads of a queue log's records (framing and checksums are [`super::super::record`]'s):
//! a message, plain or sealed with the encryption-at-rest key, an ack, a delivery mark, or an
//! acked range. The kind is the payload's first byte; every record after it starts with the
//! message's sequence number.

use super::super::cipher::{CipherError, KeyRing, KEY_ID_LEN, NONCE_LEN, TAG_LEN};
use crate::broker::message::Message;
use crate::types::ShortStr;
use bytes::{Buf, BufMut, Bytes};

pub(super) const KIND_MESSAGE: u8 = 1;
pub(super) const KIND_ACK: u8 = 2;
pub(super) const KIND_DELIVERED: u8 = 3;
/// Acks every seq in an inclusive range (a purge of the on-disk tail).
pub(super) const KIND_ACK_RANGE: u8 = 4;
/// A message record with encryption at rest: kind, seq, flags and expiry in the clear (and
/// authenticated), then key id, nonce, the sealed exchange, routing key, properties and
/// body, and the GCM tag. See [`super::cipher`].
pub(super) const KIND_SEALED: u8 = 5;

pub(super) const FLAG_PERSISTENT: u8 = 1;
/// The record carries an expiry time (u64 ms since the epoch) after its flags.
pub(super) const FLAG_EXPIRES: u8 = 2;

fn put_short(buf: &mut bytes::BytesMut, s: &[u8]) {
    let n = s.len().min(255);
    buf.put_u8(n as u8);
    buf.put_slice(&s[..n]);
}

/// Appends a message record's payload; with `seal`, everything but the kind, seq, flags and
/// expiry is encrypted in place (no copy of the body beyond the one into the buffer).
pub(super) fn encode_message(
    buf: &mut bytes::BytesMut,
    seq: u64,
    m: &Message,
    expires_at: u64,
    seal: Option<(&KeyRing, [u8; NONCE_LEN])>,
) {
    let start = buf.len();
    buf.put_u8(if seal.is_some() { KIND_SEALED } else { KIND_MESSAGE });
    buf.put_u64(seq);
    let mut flags = if m.persistent { FLAG_PERSISTENT } else { 0 };
    if expires_at != 0 {
        flags |= FLAG_EXPIRES;
    }
    buf.put_u8(flags);
    if expires_at != 0 {
        buf.put_u64(expires_at);
    }
    if let Some((keys, nonce)) = &seal {
        buf.put_u32(keys.current_id());
        buf.put_slice(nonce);
    }
    let sealed_from = buf.len();
    put_short(buf, m.exchange.as_bytes());
    put_short(buf, m.routing_key.as_bytes());
    buf.put_u32(m.properties.len() as u32);
    buf.put_slice(&m.properties);
    buf.put_u32(m.body.len() as u32);
    for p in m.body.parts() {
        buf.put_slice(p);
    }
    if let Some((keys, nonce)) = seal {
        let (head, body) = buf[start..].split_at_mut(sealed_from - start);
        let tag = keys.seal_in_place(&nonce, head, body);
        buf.put_slice(&tag);
    }
}

/// Why a record could not be read as a message.
#[derive(Debug)]
pub(super) enum Undecodable {
    /// Not a message record, or its fields do not parse: skipped like a corrupt record.
    Malformed,
    /// Sealed, and the configured keys cannot open it: an error, never garbage.
    Sealed(CipherError),
}

/// Decodes a message record. A plain record's fields are copied, so a read chunk is not
/// pinned in memory; a sealed one is decrypted into a buffer of its own.
pub(super) fn decode_message(mut p: Bytes, keys: Option<&KeyRing>) -> Result<(u64, Message, u64), Undecodable> {
    use Undecodable::Malformed;
    fn short(p: &mut Bytes) -> Option<ShortStr> {
        let n = *p.first()? as usize;
        p.advance(1);
        if p.len() < n {
            return None;
        }
        let s = std::str::from_utf8(&p[..n]).ok()?.to_string();
        p.advance(n);
        Some(ShortStr::from(s))
    }
    fn long_bytes(p: &mut Bytes, copy: bool) -> Option<Bytes> {
        if p.len() < 4 {
            return None;
        }
        let n = p.get_u32() as usize;
        if p.len() < n {
            return None;
        }
        let part = p.split_to(n);
        Some(if copy { Bytes::copy_from_slice(&part) } else { part })
    }
    let whole = p.clone();
    if p.len() < 10 {
        return Err(Malformed);
    }
    let kind = p.get_u8();
    if kind != KIND_MESSAGE && kind != KIND_SEALED {
        return Err(Malformed);
    }
    let seq = p.get_u64();
    let flags = p.get_u8();
    let mut expires_at = 0;
    if flags & FLAG_EXPIRES != 0 {
        if p.len() < 8 {
            return Err(Malformed);
        }
        expires_at = p.get_u64();
    }
    let copy = kind == KIND_MESSAGE;
    if kind == KIND_SEALED {
        if p.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return Err(Malformed);
        }
        let head_len = whole.len() - p.len() + KEY_ID_LEN + NONCE_LEN;
        let id = p.get_u32();
        let nonce = p.split_to(NONCE_LEN);
        let tag = p.split_off(p.len() - TAG_LEN);
        let keys = keys.ok_or(Undecodable::Sealed(CipherError::NoKey))?;
        let mut plain = bytes::BytesMut::from(&p[..]);
        keys.open_in_place(id, &nonce, &whole[..head_len], &mut plain, &tag).map_err(Undecodable::Sealed)?;
        p = plain.freeze();
    }
    let exchange = short(&mut p).ok_or(Malformed)?;
    let routing_key = short(&mut p).ok_or(Malformed)?;
    let properties = long_bytes(&mut p, copy).ok_or(Malformed)?;
    let body = long_bytes(&mut p, copy).ok_or(Malformed)?;
    let message = Message::new(exchange, routing_key, properties, body, flags & FLAG_PERSISTENT != 0);
    Ok((seq, message, expires_at))
}

/// Whether a message record is sealed with key `id`.
pub(super) fn sealed_with(payload: &[u8], id: u32) -> bool {
    if payload.first() != Some(&KIND_SEALED) || payload.len() < 10 {
        return false;
    }
    let at = if payload[9] & FLAG_EXPIRES != 0 { 18 } else { 10 };
    payload.get(at..at + KEY_ID_LEN).is_some_and(|k| k == id.to_be_bytes())
}
