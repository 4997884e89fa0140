//! The 14 basic properties of a content header. The broker keeps the raw bytes and decodes
//! them only when it must read a property (headers routing, TTL, priority, reply-to).

use super::codec::{CodecError, Decoder, Encoder, FieldTable, ShortStr};
use bytes::{Bytes, BytesMut};

#[derive(Clone, Debug, Default, PartialEq)]
pub struct BasicProperties {
    pub content_type: Option<ShortStr>,
    pub content_encoding: Option<ShortStr>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub priority: Option<u8>,
    pub correlation_id: Option<ShortStr>,
    pub reply_to: Option<ShortStr>,
    pub expiration: Option<ShortStr>,
    pub message_id: Option<ShortStr>,
    pub timestamp: Option<u64>,
    pub kind: Option<ShortStr>,
    pub user_id: Option<ShortStr>,
    pub app_id: Option<ShortStr>,
    pub cluster_id: Option<ShortStr>,
}

const fn flag(bit: u32) -> u16 {
    1 << bit
}

impl BasicProperties {
    /// Decodes property flags (with continuation words) and the property list.
    pub fn decode(raw: Bytes) -> Result<Self, CodecError> {
        let mut d = Decoder::new(raw);
        let mut flags = d.short()?;
        let first = flags;
        while flags & 1 != 0 {
            flags = d.short()?;
        }
        let f = first;
        let mut p = BasicProperties::default();
        let s = |d: &mut Decoder, bit: u32| -> Result<Option<ShortStr>, CodecError> {
            if f & flag(bit) != 0 {
                d.shortstr().map(Some)
            } else {
                Ok(None)
            }
        };
        p.content_type = s(&mut d, 15)?;
        p.content_encoding = s(&mut d, 14)?;
        if f & flag(13) != 0 {
            p.headers = Some(d.table()?);
        }
        if f & flag(12) != 0 {
            p.delivery_mode = Some(d.octet()?);
        }
        if f & flag(11) != 0 {
            p.priority = Some(d.octet()?);
        }
        p.correlation_id = s(&mut d, 10)?;
        p.reply_to = s(&mut d, 9)?;
        p.expiration = s(&mut d, 8)?;
        p.message_id = s(&mut d, 7)?;
        if f & flag(6) != 0 {
            p.timestamp = Some(d.longlong()?);
        }
        p.kind = s(&mut d, 5)?;
        p.user_id = s(&mut d, 4)?;
        p.app_id = s(&mut d, 3)?;
        p.cluster_id = s(&mut d, 2)?;
        Ok(p)
    }

    pub fn encode(&self, buf: &mut BytesMut) {
        let mut f = 0u16;
        let set = |f: &mut u16, bit: u32, present: bool| {
            if present {
                *f |= flag(bit)
            }
        };
        set(&mut f, 15, self.content_type.is_some());
        set(&mut f, 14, self.content_encoding.is_some());
        set(&mut f, 13, self.headers.is_some());
        set(&mut f, 12, self.delivery_mode.is_some());
        set(&mut f, 11, self.priority.is_some());
        set(&mut f, 10, self.correlation_id.is_some());
        set(&mut f, 9, self.reply_to.is_some());
        set(&mut f, 8, self.expiration.is_some());
        set(&mut f, 7, self.message_id.is_some());
        set(&mut f, 6, self.timestamp.is_some());
        set(&mut f, 5, self.kind.is_some());
        set(&mut f, 4, self.user_id.is_some());
        set(&mut f, 3, self.app_id.is_some());
        set(&mut f, 2, self.cluster_id.is_some());
        let mut e = Encoder::new(buf);
        e.short(f);
        let strs = [&self.content_type, &self.content_encoding];
        for s in strs.into_iter().flatten() {
            e.shortstr(s);
        }
        if let Some(h) = &self.headers {
            e.table(h);
        }
        if let Some(v) = self.delivery_mode {
            e.octet(v);
        }
        if let Some(v) = self.priority {
            e.octet(v);
        }
        for s in [&self.correlation_id, &self.reply_to, &self.expiration, &self.message_id].into_iter().flatten() {
            e.shortstr(s);
        }
        if let Some(v) = self.timestamp {
            e.longlong(v);
        }
        for s in [&self.kind, &self.user_id, &self.app_id, &self.cluster_id].into_iter().flatten() {
            e.shortstr(s);
        }
        e.finish();
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut buf = BytesMut::new();
        self.encode(&mut buf);
        buf.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::codec::FieldValue;

    #[test]
    fn all_fourteen_round_trip() {
        let mut headers = FieldTable::new();
        headers.insert("x", FieldValue::I32(1));
        let p = BasicProperties {
            content_type: Some("text/plain".into()),
            content_encoding: Some("gzip".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            priority: Some(5),
            correlation_id: Some("c".into()),
            reply_to: Some("r".into()),
            expiration: Some("1000".into()),
            message_id: Some("m".into()),
            timestamp: Some(42),
            kind: Some("t".into()),
            user_id: Some("guest".into()),
            app_id: Some("a".into()),
            cluster_id: Some("k".into()),
        };
        let raw = p.to_bytes();
        assert_eq!(BasicProperties::decode(raw).unwrap(), p);
        assert_eq!(BasicProperties::decode(Bytes::from_static(&[0, 0])).unwrap(), BasicProperties::default());
    }
}
