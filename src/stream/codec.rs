//! The stream protocol's frames (RabbitMQ's `PROTOCOL.adoc` and `rabbit_stream_core`):
//! `size (u32) | key (u16; top bit set on a response) | version (u16) | content`, integers
//! big-endian, strings with an `i16` length (-1: null), byte strings and arrays with an
//! `i32` one. `decode` reads what clients send; the `put_*` helpers write what the broker
//! sends.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// The commands, by key.
pub mod key {
    pub const DECLARE_PUBLISHER: u16 = 1;
    pub const PUBLISH: u16 = 2;
    pub const PUBLISH_CONFIRM: u16 = 3;
    pub const PUBLISH_ERROR: u16 = 4;
    pub const QUERY_PUBLISHER_SEQUENCE: u16 = 5;
    pub const DELETE_PUBLISHER: u16 = 6;
    pub const SUBSCRIBE: u16 = 7;
    pub const DELIVER: u16 = 8;
    pub const CREDIT: u16 = 9;
    pub const STORE_OFFSET: u16 = 10;
    pub const QUERY_OFFSET: u16 = 11;
    pub const UNSUBSCRIBE: u16 = 12;
    pub const CREATE: u16 = 13;
    pub const DELETE: u16 = 14;
    pub const METADATA: u16 = 15;
    pub const METADATA_UPDATE: u16 = 16;
    pub const PEER_PROPERTIES: u16 = 17;
    pub const SASL_HANDSHAKE: u16 = 18;
    pub const SASL_AUTHENTICATE: u16 = 19;
    pub const TUNE: u16 = 20;
    pub const OPEN: u16 = 21;
    pub const CLOSE: u16 = 22;
    pub const HEARTBEAT: u16 = 23;
    pub const ROUTE: u16 = 24;
    pub const PARTITIONS: u16 = 25;
    pub const CONSUMER_UPDATE: u16 = 26;
    pub const EXCHANGE_COMMAND_VERSIONS: u16 = 27;
    pub const STREAM_STATS: u16 = 28;
    pub const CREATE_SUPER_STREAM: u16 = 29;
    pub const DELETE_SUPER_STREAM: u16 = 30;
    /// The bit that marks a response.
    pub const RESPONSE: u16 = 0x8000;
}

/// The response codes.
pub mod code {
    pub const OK: u16 = 1;
    pub const STREAM_DOES_NOT_EXIST: u16 = 2;
    pub const SUBSCRIPTION_ID_ALREADY_EXISTS: u16 = 3;
    pub const SUBSCRIPTION_ID_DOES_NOT_EXIST: u16 = 4;
    pub const STREAM_ALREADY_EXISTS: u16 = 5;
    pub const STREAM_NOT_AVAILABLE: u16 = 6;
    pub const SASL_MECHANISM_NOT_SUPPORTED: u16 = 7;
    pub const AUTHENTICATION_FAILURE: u16 = 8;
    pub const SASL_ERROR: u16 = 9;
    pub const SASL_AUTHENTICATION_FAILURE_LOOPBACK: u16 = 11;
    pub const VHOST_ACCESS_FAILURE: u16 = 12;
    pub const UNKNOWN_FRAME: u16 = 13;
    pub const FRAME_TOO_LARGE: u16 = 14;
    pub const INTERNAL_ERROR: u16 = 15;
    pub const ACCESS_REFUSED: u16 = 16;
    pub const PRECONDITION_FAILED: u16 = 17;
    pub const PUBLISHER_DOES_NOT_EXIST: u16 = 18;
    pub const NO_OFFSET: u16 = 19;
}

/// Where a subscription starts (`OffsetSpecification`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OffsetSpec {
    First,
    Last,
    Next,
    Offset(u64),
    /// Milliseconds since the epoch.
    Timestamp(i64),
}

/// A frame from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    PeerProperties {
        corr: u32,
        properties: Vec<(String, String)>,
    },
    SaslHandshake {
        corr: u32,
    },
    SaslAuthenticate {
        corr: u32,
        mechanism: String,
        data: Bytes,
    },
    Tune {
        frame_max: u32,
        heartbeat: u32,
    },
    Open {
        corr: u32,
        vhost: String,
    },
    Close {
        corr: u32,
        code: u16,
        reason: String,
    },
    /// The client's answer to a close the broker sent.
    CloseOk,
    Heartbeat,
    DeclarePublisher {
        corr: u32,
        id: u8,
        reference: String,
        stream: String,
    },
    /// `messages` is the rest of the frame: `count` entries, read by the connection.
    Publish {
        id: u8,
        version: u16,
        count: u32,
        messages: Bytes,
    },
    QueryPublisherSequence {
        corr: u32,
        reference: String,
        stream: String,
    },
    DeletePublisher {
        corr: u32,
        id: u8,
    },
    Subscribe {
        corr: u32,
        id: u8,
        stream: String,
        offset: OffsetSpec,
        credit: u16,
        properties: Vec<(String, String)>,
    },
    Credit {
        id: u8,
        credit: u16,
    },
    /// A client's answer to the broker's consumer update (single active consumer): where an
    /// activated subscription starts (None: where it was subscribed from).
    ConsumerUpdateResponse {
        corr: u32,
        code: u16,
        offset: Option<OffsetSpec>,
    },
    StoreOffset {
        reference: String,
        stream: String,
        offset: u64,
    },
    QueryOffset {
        corr: u32,
        reference: String,
        stream: String,
    },
    Unsubscribe {
        corr: u32,
        id: u8,
    },
    Create {
        corr: u32,
        stream: String,
        arguments: Vec<(String, String)>,
    },
    Delete {
        corr: u32,
        stream: String,
    },
    Metadata {
        corr: u32,
        streams: Vec<String>,
    },
    Route {
        corr: u32,
        routing_key: String,
        super_stream: String,
    },
    Partitions {
        corr: u32,
        super_stream: String,
    },
    ExchangeCommandVersions {
        corr: u32,
        versions: Vec<(u16, u16, u16)>,
    },
    CreateSuperStream {
        corr: u32,
        name: String,
        partitions: Vec<String>,
        binding_keys: Vec<String>,
        arguments: Vec<(String, String)>,
    },
    DeleteSuperStream {
        corr: u32,
        name: String,
    },
    StreamStats {
        corr: u32,
        stream: String,
    },
    /// A command this broker does not take, or a response it did not ask for; the
    /// correlation id when the frame had one.
    Unknown {
        key: u16,
        corr: Option<u32>,
    },
}

impl Command {
    pub fn name(&self) -> &'static str {
        match self {
            Command::PeerProperties { .. } => "peer_properties",
            Command::SaslHandshake { .. } => "sasl_handshake",
            Command::SaslAuthenticate { .. } => "sasl_authenticate",
            Command::Tune { .. } => "tune",
            Command::Open { .. } => "open",
            Command::Close { .. } | Command::CloseOk => "close",
            Command::Heartbeat => "heartbeat",
            Command::DeclarePublisher { .. } => "declare_publisher",
            Command::Publish { .. } => "publish",
            Command::QueryPublisherSequence { .. } => "query_publisher_sequence",
            Command::DeletePublisher { .. } => "delete_publisher",
            Command::Subscribe { .. } => "subscribe",
            Command::Credit { .. } => "credit",
            Command::ConsumerUpdateResponse { .. } => "consumer_update",
            Command::StoreOffset { .. } => "store_offset",
            Command::QueryOffset { .. } => "query_offset",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Create { .. } => "create",
            Command::Delete { .. } => "delete",
            Command::Metadata { .. } => "metadata",
            Command::Route { .. } => "route",
            Command::Partitions { .. } => "partitions",
            Command::ExchangeCommandVersions { .. } => "exchange_command_versions",
            Command::StreamStats { .. } => "stream_stats",
            Command::CreateSuperStream { .. } => "create_super_stream",
            Command::DeleteSuperStream { .. } => "delete_super_stream",
            Command::Unknown { .. } => "unknown",
        }
    }
}

/// A frame that is not what its key says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// Reads the fields of one frame.
struct Fields(Bytes);

impl Fields {
    fn need(&self, n: usize) -> Result<(), Malformed> {
        if self.0.remaining() < n {
            return Err(Malformed("frame shorter than its fields"));
        }
        Ok(())
    }
    fn u8(&mut self) -> Result<u8, Malformed> {
        self.need(1)?;
        Ok(self.0.get_u8())
    }
    fn u16(&mut self) -> Result<u16, Malformed> {
        self.need(2)?;
        Ok(self.0.get_u16())
    }
    fn u32(&mut self) -> Result<u32, Malformed> {
        self.need(4)?;
        Ok(self.0.get_u32())
    }
    fn u64(&mut self) -> Result<u64, Malformed> {
        self.need(8)?;
        Ok(self.0.get_u64())
    }
    fn string(&mut self) -> Result<String, Malformed> {
        let len = self.u16()? as i16;
        if len < 0 {
            return Ok(String::new());
        }
        self.need(len as usize)?;
        String::from_utf8(self.0.split_to(len as usize).to_vec()).map_err(|_| Malformed("string not UTF-8"))
    }
    fn bytes(&mut self) -> Result<Bytes, Malformed> {
        let len = self.u32()? as i32;
        if len < 0 {
            return Ok(Bytes::new());
        }
        self.need(len as usize)?;
        Ok(self.0.split_to(len as usize))
    }
    /// An array's length, checked against the bytes left (each item takes `min` at least).
    fn count(&mut self, min: usize) -> Result<usize, Malformed> {
        let n = self.u32()? as usize;
        if n.saturating_mul(min) > self.0.remaining() {
            return Err(Malformed("array longer than the frame"));
        }
        Ok(n)
    }
    fn strings(&mut self) -> Result<Vec<String>, Malformed> {
        let n = self.count(2)?;
        (0..n).map(|_| self.string()).collect()
    }
    fn map(&mut self) -> Result<Vec<(String, String)>, Malformed> {
        let n = self.count(4)?;
        (0..n).map(|_| Ok((self.string()?, self.string()?))).collect()
    }
    /// An offset specification; None for type 0 (none, in a consumer update's answer).
    fn offset(&mut self) -> Result<Option<OffsetSpec>, Malformed> {
        Ok(Some(match self.u16()? {
            0 => return Ok(None),
            1 => OffsetSpec::First,
            2 => OffsetSpec::Last,
            3 => OffsetSpec::Next,
            4 => OffsetSpec::Offset(self.u64()?),
            5 => OffsetSpec::Timestamp(self.u64()? as i64),
            _ => return Err(Malformed("unknown offset type")),
        }))
    }
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.0)
    }
}

/// Decodes a frame's content (what follows its size). Trailing bytes are tolerated, as
/// RabbitMQ's parser does for the commands whose last field is a map.
pub fn decode(frame: Bytes) -> Result<Command, Malformed> {
    let mut f = Fields(frame);
    let raw_key = f.u16()?;
    let version = f.u16()?;
    let response = raw_key & key::RESPONSE != 0;
    let k = raw_key & !key::RESPONSE;
    use Command as C;
    Ok(match (k, response) {
        (key::PEER_PROPERTIES, false) => C::PeerProperties { corr: f.u32()?, properties: f.map()? },
        (key::SASL_HANDSHAKE, false) => C::SaslHandshake { corr: f.u32()? },
        (key::SASL_AUTHENTICATE, false) => {
            C::SaslAuthenticate { corr: f.u32()?, mechanism: f.string()?, data: f.bytes()? }
        }
        // Clients answer the broker's tune with a tune, as a request (most) or a response.
        (key::TUNE, _) => C::Tune { frame_max: f.u32()?, heartbeat: f.u32()? },
        (key::OPEN, false) => C::Open { corr: f.u32()?, vhost: f.string()? },
        (key::CLOSE, false) => C::Close { corr: f.u32()?, code: f.u16()?, reason: f.string()? },
        (key::CLOSE, true) => C::CloseOk,
        (key::HEARTBEAT, false) => C::Heartbeat,
        (key::DECLARE_PUBLISHER, false) => {
            C::DeclarePublisher { corr: f.u32()?, id: f.u8()?, reference: f.string()?, stream: f.string()? }
        }
        (key::PUBLISH, false) => C::Publish { id: f.u8()?, version, count: f.u32()?, messages: f.rest() },
        (key::QUERY_PUBLISHER_SEQUENCE, false) => {
            C::QueryPublisherSequence { corr: f.u32()?, reference: f.string()?, stream: f.string()? }
        }
        (key::DELETE_PUBLISHER, false) => C::DeletePublisher { corr: f.u32()?, id: f.u8()? },
        (key::SUBSCRIBE, false) => {
            let (corr, id, stream) = (f.u32()?, f.u8()?, f.string()?);
            let offset = f.offset()?.ok_or(Malformed("unknown offset type"))?;
            let credit = f.u16()?;
            // The properties came with a later version of the protocol: optional.
            let properties = if f.0.has_remaining() { f.map()? } else { Vec::new() };
            C::Subscribe { corr, id, stream, offset, credit, properties }
        }
        (key::CREDIT, false) => C::Credit { id: f.u8()?, credit: f.u16()? },
        (key::CONSUMER_UPDATE, true) => {
            C::ConsumerUpdateResponse { corr: f.u32()?, code: f.u16()?, offset: f.offset()? }
        }
        (key::STORE_OFFSET, false) => C::StoreOffset { reference: f.string()?, stream: f.string()?, offset: f.u64()? },
        (key::QUERY_OFFSET, false) => C::QueryOffset { corr: f.u32()?, reference: f.string()?, stream: f.string()? },
        (key::UNSUBSCRIBE, false) => C::Unsubscribe { corr: f.u32()?, id: f.u8()? },
        (key::CREATE, false) => {
            let (corr, stream) = (f.u32()?, f.string()?);
            let arguments = if f.0.has_remaining() { f.map()? } else { Vec::new() };
            C::Create { corr, stream, arguments }
        }
        (key::DELETE, false) => C::Delete { corr: f.u32()?, stream: f.string()? },
        (key::METADATA, false) => C::Metadata { corr: f.u32()?, streams: f.strings()? },
        (key::ROUTE, false) => C::Route { corr: f.u32()?, routing_key: f.string()?, super_stream: f.string()? },
        (key::PARTITIONS, false) => C::Partitions { corr: f.u32()?, super_stream: f.string()? },
        (key::EXCHANGE_COMMAND_VERSIONS, false) => {
            let corr = f.u32()?;
            let n = f.count(6)?;
            let versions = (0..n).map(|_| Ok((f.u16()?, f.u16()?, f.u16()?))).collect::<Result<_, Malformed>>()?;
            C::ExchangeCommandVersions { corr, versions }
        }
        (key::STREAM_STATS, false) => C::StreamStats { corr: f.u32()?, stream: f.string()? },
        (key::CREATE_SUPER_STREAM, false) => {
            let (corr, name, partitions, binding_keys) = (f.u32()?, f.string()?, f.strings()?, f.strings()?);
            let arguments = if f.0.has_remaining() { f.map()? } else { Vec::new() };
            C::CreateSuperStream { corr, name, partitions, binding_keys, arguments }
        }
        (key::DELETE_SUPER_STREAM, false) => C::DeleteSuperStream { corr: f.u32()?, name: f.string()? },
        _ => C::Unknown { key: raw_key, corr: f.u32().ok() },
    })
}

/// Writes a frame: its size, key and version, then what `body` writes.
pub fn put_frame(out: &mut BytesMut, key: u16, body: impl FnOnce(&mut BytesMut)) {
    let at = out.len();
    out.put_u32(0);
    out.put_u16(key);
    out.put_u16(1);
    body(out);
    let size = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&size.to_be_bytes());
}

/// A response: the command's key with the response bit, the correlation id, the code, and
/// what `rest` adds.
pub fn put_response(out: &mut BytesMut, key: u16, corr: u32, code: u16, rest: impl FnOnce(&mut BytesMut)) {
    put_frame(out, key | key::RESPONSE, |out| {
        out.put_u32(corr);
        out.put_u16(code);
        rest(out);
    })
}

pub fn put_string(out: &mut BytesMut, s: &str) {
    let len = s.len().min(i16::MAX as usize);
    out.put_u16(len as u16);
    out.put_slice(&s.as_bytes()[..len]);
}

pub fn put_map<'a>(out: &mut BytesMut, pairs: impl ExactSizeIterator<Item = (&'a str, &'a str)>) {
    out.put_u32(pairs.len() as u32);
    for (k, v) in pairs {
        put_string(out, k);
        put_string(out, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(key: u16, body: impl FnOnce(&mut BytesMut)) -> Bytes {
        let mut out = BytesMut::new();
        put_frame(&mut out, key, body);
        out.freeze().slice(4..)
    }

    #[test]
    fn requests_decode() {
        let f = frame(key::SUBSCRIBE, |o| {
            o.put_u32(7);
            o.put_u8(3);
            put_string(o, "s");
            o.put_u16(4);
            o.put_u64(42);
            o.put_u16(10);
            put_map(o, [("single-active-consumer", "true")].into_iter());
        });
        assert_eq!(
            decode(f),
            Ok(Command::Subscribe {
                corr: 7,
                id: 3,
                stream: "s".into(),
                offset: OffsetSpec::Offset(42),
                credit: 10,
                properties: vec![("single-active-consumer".into(), "true".into())],
            })
        );
        let f = frame(key::METADATA, |o| {
            o.put_u32(1);
            o.put_u32(2);
            put_string(o, "a");
            o.put_u16(u16::MAX); // null
        });
        assert_eq!(decode(f), Ok(Command::Metadata { corr: 1, streams: vec!["a".into(), String::new()] }));
        assert_eq!(decode(frame(999, |o| o.put_u32(5))), Ok(Command::Unknown { key: 999, corr: Some(5) }));
    }

    #[test]
    fn malformed_frames_are_refused_not_misread() {
        // An array that claims more items than the frame has bytes for.
        let f = frame(key::METADATA, |o| {
            o.put_u32(1);
            o.put_u32(1_000_000);
        });
        assert!(decode(f).is_err());
        assert!(decode(frame(key::OPEN, |o| o.put_u16(1))).is_err());
        assert!(decode(Bytes::from_static(&[0])).is_err());
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..20_000 {
            let n = rng.gen_range(0..40);
            let mut v: Vec<u8> = (0..n).map(|_| rng.gen()).collect();
            if v.len() >= 2 {
                v[0] = 0;
                v[1] = rng.gen_range(0..32);
            }
            let _ = decode(Bytes::from(v));
        }
    }
}
