//! MQTT 3.1, 3.1.1 and 5.0 packets: bytes in, packets out, and back. No I/O, no state.
//!
//! A packet is a fixed header (type and flags in one byte, then the remaining length as a
//! variable byte integer of up to four bytes), a variable header and a payload. Version 5
//! adds properties after the variable header of most packets, and reason codes to the
//! acknowledgements. The version a connection speaks is fixed by its CONNECT, so every
//! decode and encode after it takes that version.
//!
//! What a peer sends is checked as the specification asks: reserved flags, the remaining
//! length's form, UTF-8 strings without U+0000, property identifiers and their repetition,
//! packet identifiers that must not be 0. A violation is a [`DecodeError`] that says which
//! reason code the connection closes with.

mod encode;

pub use encode::{encode, publish_header};

use bytes::{Buf, Bytes};

/// The protocol levels of CONNECT: 3 is MQTT 3.1, 4 is 3.1.1, 5 is 5.0.
pub const V31: u8 = 3;
pub const V311: u8 = 4;
pub const V5: u8 = 5;

/// The largest remaining length the variable byte integer can express (256 MiB - 1).
pub const MAX_REMAINING: usize = 268_435_455;

/// Reason codes of MQTT 5 (and, where they coincide, 3.1.1's CONNACK return codes).
pub mod reason {
    pub const SUCCESS: u8 = 0x00;
    pub const GRANTED_QOS_1: u8 = 0x01;
    pub const DISCONNECT_WITH_WILL: u8 = 0x04;
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    pub const MALFORMED_PACKET: u8 = 0x81;
    pub const PROTOCOL_ERROR: u8 = 0x82;
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    pub const NOT_AUTHORIZED: u8 = 0x87;
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    pub const SERVER_BUSY: u8 = 0x89;
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    pub const ADMINISTRATIVE_ACTION: u8 = 0x98;
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;

    /// MQTT 3.1.1's CONNACK return codes for the same refusals.
    pub fn v3_connack(code: u8) -> u8 {
        match code {
            SUCCESS => 0,
            UNSUPPORTED_PROTOCOL_VERSION => 1,
            CLIENT_IDENTIFIER_NOT_VALID => 2,
            SERVER_UNAVAILABLE | SERVER_BUSY => 3,
            BAD_USER_NAME_OR_PASSWORD => 4,
            _ => 5,
        }
    }
}

/// Why bytes are not a valid packet, and the reason code the connection closes with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    pub reason: u8,
    pub text: String,
}

impl DecodeError {
    pub fn malformed(text: impl Into<String>) -> Self {
        DecodeError { reason: reason::MALFORMED_PACKET, text: text.into() }
    }
    pub fn protocol(text: impl Into<String>) -> Self {
        DecodeError { reason: reason::PROTOCOL_ERROR, text: text.into() }
    }
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

type Result<T> = std::result::Result<T, DecodeError>;

/// MQTT 5 properties, as far as any packet uses them; absent ones are None (or empty).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub payload_format: Option<u8>,
    pub message_expiry: Option<u32>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub subscription_ids: Vec<u32>,
    pub session_expiry: Option<u32>,
    pub assigned_client_id: Option<String>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<String>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub will_delay: Option<u32>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<String>,
    pub server_reference: Option<String>,
    pub reason_string: Option<String>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub topic_alias: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub user: Vec<(String, String)>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// 3, 4 or 5 (see [`V31`], [`V311`], [`V5`]).
    pub level: u8,
    pub clean_start: bool,
    pub keep_alive: u16,
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    pub password: Option<Bytes>,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    pub session_present: bool,
    /// A v5 reason code; encoded as 3.1.1's return code for older levels.
    pub code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    pub dup: bool,
    pub qos: u8,
    pub retain: bool,
    pub topic: String,
    /// Present for QoS 1 and 2.
    pub packet_id: Option<u16>,
    pub properties: Properties,
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub packet_id: u16,
    pub code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub filter: String,
    /// The maximum QoS asked for.
    pub qos: u8,
    /// v5 options: no local, retain as published, retain handling (0, 1 or 2).
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<Subscription>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// Granted QoS or a failure reason code (0x80 in 3.1.1) per filter.
    pub codes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    /// v5 only: one reason code per filter.
    pub codes: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disconnect {
    pub code: u8,
    pub properties: Properties,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(Ack),
    PubRec(Ack),
    PubRel(Ack),
    PubComp(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Disconnect),
}

impl Packet {
    /// The packet's name, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// Reads a fixed header from the front of `buf`: the first byte and the remaining length,
/// and how many bytes the header took. None while more bytes are needed.
pub fn fixed_header(buf: &[u8]) -> Result<Option<(u8, usize, usize)>> {
    let Some(&first) = buf.first() else { return Ok(None) };
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        value |= ((b & 0x7F) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((first, value, 2 + i)));
        }
    }
    Err(DecodeError::malformed("remaining length longer than four bytes"))
}

/// Decodes one packet's body (after its fixed header) for a connection at `level`
/// (0 before its CONNECT, when only CONNECT is valid).
pub fn decode(first: u8, mut body: Bytes, level: u8) -> Result<Packet> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let v5 = level == V5;
    let b = &mut body;
    let fixed_flags = |want: u8| -> Result<()> {
        if flags == want {
            Ok(())
        } else {
            Err(DecodeError::malformed(format!("reserved flags {flags:#x} of packet type {kind}")))
        }
    };
    let packet = match kind {
        1 => {
            fixed_flags(0)?;
            Packet::Connect(Box::new(connect(b)?))
        }
        2 => {
            fixed_flags(0)?;
            let ack = u8_(b)?;
            let code = u8_(b)?;
            let properties = if v5 { properties(b)? } else { Properties::default() };
            Packet::ConnAck(ConnAck { session_present: ack & 1 == 1, code, properties })
        }
        3 => {
            let qos = (flags >> 1) & 3;
            if qos == 3 {
                return Err(DecodeError::malformed("PUBLISH with QoS 3"));
            }
            let dup = flags & 8 != 0;
            if qos == 0 && dup {
                return Err(DecodeError::malformed("PUBLISH with QoS 0 and DUP set"));
            }
            let topic = string(b)?;
            let packet_id = if qos > 0 { Some(packet_id(b)?) } else { None };
            let properties = if v5 { properties(b)? } else { Properties::default() };
            Packet::Publish(Publish {
                dup,
                qos,
                retain: flags & 1 != 0,
                topic,
                packet_id,
                properties,
                payload: std::mem::take(b),
            })
        }
        4..=7 => {
            fixed_flags(if kind == 6 { 2 } else { 0 })?;
            let packet_id = packet_id(b)?;
            // v5: the reason code and properties may be left out when they are 0 and empty.
            let code = if v5 && b.has_remaining() { u8_(b)? } else { reason::SUCCESS };
            let properties = if v5 && b.has_remaining() { properties(b)? } else { Properties::default() };
            let ack = Ack { packet_id, code, properties };
            match kind {
                4 => Packet::PubAck(ack),
                5 => Packet::PubRec(ack),
                6 => Packet::PubRel(ack),
                _ => Packet::PubComp(ack),
            }
        }
        8 => {
            fixed_flags(2)?;
            let packet_id = packet_id(b)?;
            let properties = if v5 { properties(b)? } else { Properties::default() };
            let mut filters = Vec::new();
            while b.has_remaining() {
                let filter = string(b)?;
                let options = u8_(b)?;
                let reserved = if v5 { 0xC0 } else { 0xFC };
                if options & reserved != 0 {
                    return Err(DecodeError::malformed("reserved bits of subscription options set"));
                }
                let qos = options & 3;
                if qos == 3 {
                    return Err(DecodeError::malformed("subscription with QoS 3"));
                }
                let retain_handling = (options >> 4) & 3;
                if retain_handling == 3 {
                    return Err(DecodeError::protocol("retain handling 3"));
                }
                filters.push(Subscription {
                    filter,
                    qos,
                    no_local: options & 4 != 0,
                    retain_as_published: options & 8 != 0,
                    retain_handling,
                });
            }
            if filters.is_empty() {
                return Err(DecodeError::protocol("SUBSCRIBE without a topic filter"));
            }
            Packet::Subscribe(Subscribe { packet_id, properties, filters })
        }
        9 => {
            fixed_flags(0)?;
            let packet_id = packet_id(b)?;
            let properties = if v5 { properties(b)? } else { Properties::default() };
            Packet::SubAck(SubAck { packet_id, properties, codes: std::mem::take(b).to_vec() })
        }
        10 => {
            fixed_flags(2)?;
            let packet_id = packet_id(b)?;
            let properties = if v5 { properties(b)? } else { Properties::default() };
            let mut filters = Vec::new();
            while b.has_remaining() {
                filters.push(string(b)?);
            }
            if filters.is_empty() {
                return Err(DecodeError::protocol("UNSUBSCRIBE without a topic filter"));
            }
            Packet::Unsubscribe(Unsubscribe { packet_id, properties, filters })
        }
        11 => {
            fixed_flags(0)?;
            let packet_id = packet_id(b)?;
            let properties = if v5 { properties(b)? } else { Properties::default() };
            let codes = if v5 { std::mem::take(b).to_vec() } else { Vec::new() };
            Packet::UnsubAck(UnsubAck { packet_id, properties, codes })
        }
        12 => {
            fixed_flags(0)?;
            Packet::PingReq
        }
        13 => {
            fixed_flags(0)?;
            Packet::PingResp
        }
        14 | 15 => {
            fixed_flags(0)?;
            if kind == 15 && !v5 {
                return Err(DecodeError::malformed("AUTH before MQTT 5"));
            }
            let code = if v5 && b.has_remaining() { u8_(b)? } else { reason::SUCCESS };
            let properties = if v5 && b.has_remaining() { properties(b)? } else { Properties::default() };
            let d = Disconnect { code, properties };
            if kind == 14 {
                Packet::Disconnect(d)
            } else {
                Packet::Auth(d)
            }
        }
        _ => return Err(DecodeError::malformed(format!("packet type {kind}"))),
    };
    if b.has_remaining() {
        return Err(DecodeError::malformed(format!("{} bytes after the end of {}", b.remaining(), packet.name())));
    }
    Ok(packet)
}

fn connect(b: &mut Bytes) -> Result<Connect> {
    let name = string(b)?;
    let level = u8_(b)?;
    match (name.as_str(), level) {
        ("MQTT", V311 | V5) | ("MQIsdp", V31) => {}
        ("MQTT" | "MQIsdp", _) => {
            return Err(DecodeError {
                reason: reason::UNSUPPORTED_PROTOCOL_VERSION,
                text: format!("protocol level {level}"),
            })
        }
        _ => return Err(DecodeError::protocol(format!("protocol name {name:?}"))),
    }
    let flags = u8_(b)?;
    if flags & 1 != 0 {
        return Err(DecodeError::malformed("reserved flag of CONNECT set"));
    }
    let keep_alive = u16_(b)?;
    let connect_properties = if level == V5 { properties(b)? } else { Properties::default() };
    let client_id = string(b)?;
    let will_flag = flags & 4 != 0;
    let will_qos = (flags >> 3) & 3;
    let will_retain = flags & 0x20 != 0;
    if !will_flag && (will_qos != 0 || will_retain) {
        return Err(DecodeError::malformed("will QoS or retain without a will"));
    }
    if will_qos == 3 {
        return Err(DecodeError::malformed("will QoS 3"));
    }
    let will = if will_flag {
        let properties = if level == V5 { properties(b)? } else { Properties::default() };
        let topic = string(b)?;
        let payload = binary(b)?;
        Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
    } else {
        None
    };
    let username = if flags & 0x80 != 0 { Some(string(b)?) } else { None };
    if level != V5 && username.is_none() && flags & 0x40 != 0 {
        return Err(DecodeError::malformed("password without a user name"));
    }
    let password = if flags & 0x40 != 0 { Some(binary(b)?) } else { None };
    Ok(Connect {
        level,
        clean_start: flags & 2 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties: connect_properties,
    })
}

fn u8_(b: &mut Bytes) -> Result<u8> {
    if b.remaining() < 1 {
        return Err(DecodeError::malformed("packet ends early"));
    }
    Ok(b.get_u8())
}

fn u16_(b: &mut Bytes) -> Result<u16> {
    if b.remaining() < 2 {
        return Err(DecodeError::malformed("packet ends early"));
    }
    Ok(b.get_u16())
}

fn u32_(b: &mut Bytes) -> Result<u32> {
    if b.remaining() < 4 {
        return Err(DecodeError::malformed("packet ends early"));
    }
    Ok(b.get_u32())
}

fn packet_id(b: &mut Bytes) -> Result<u16> {
    match u16_(b)? {
        0 => Err(DecodeError::malformed("packet identifier 0")),
        id => Ok(id),
    }
}

fn varint(b: &mut Bytes) -> Result<u32> {
    let mut value = 0u32;
    for i in 0..4 {
        let byte = u8_(b)?;
        value |= ((byte & 0x7F) as u32) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err(DecodeError::malformed("variable byte integer longer than four bytes"))
}

fn binary(b: &mut Bytes) -> Result<Bytes> {
    let n = u16_(b)? as usize;
    if b.remaining() < n {
        return Err(DecodeError::malformed("packet ends early"));
    }
    Ok(b.split_to(n))
}

/// A UTF-8 string: well-formed, and without U+0000 (the specification's rule).
fn string(b: &mut Bytes) -> Result<String> {
    let raw = binary(b)?;
    let s = std::str::from_utf8(&raw).map_err(|_| DecodeError::malformed("a string is not UTF-8"))?;
    if s.contains('\0') {
        return Err(DecodeError::malformed("a string contains U+0000"));
    }
    Ok(s.to_string())
}

fn properties(b: &mut Bytes) -> Result<Properties> {
    let len = varint(b)? as usize;
    if b.remaining() < len {
        return Err(DecodeError::malformed("properties longer than the packet"));
    }
    let mut p = b.split_to(len);
    let mut out = Properties::default();
    fn once<T>(slot: &mut Option<T>, v: T, id: u8) -> Result<()> {
        if slot.is_some() {
            return Err(DecodeError::protocol(format!("property {id:#04x} twice")));
        }
        *slot = Some(v);
        Ok(())
    }
    fn flag(b: &mut Bytes) -> Result<u8> {
        match u8_(b)? {
            v @ (0 | 1) => Ok(v),
            v => Err(DecodeError::protocol(format!("a property's byte is {v}, not 0 or 1"))),
        }
    }
    while p.has_remaining() {
        let id = varint(&mut p)?;
        let Ok(id) = u8::try_from(id) else {
            return Err(DecodeError::malformed(format!("property identifier {id}")));
        };
        let b = &mut p;
        match id {
            0x01 => once(&mut out.payload_format, flag(b)?, id)?,
            0x02 => once(&mut out.message_expiry, u32_(b)?, id)?,
            0x03 => once(&mut out.content_type, string(b)?, id)?,
            0x08 => once(&mut out.response_topic, string(b)?, id)?,
            0x09 => once(&mut out.correlation_data, binary(b)?, id)?,
            0x0B => match varint(b)? {
                0 => return Err(DecodeError::protocol("subscription identifier 0")),
                v => out.subscription_ids.push(v),
            },
            0x11 => once(&mut out.session_expiry, u32_(b)?, id)?,
            0x12 => once(&mut out.assigned_client_id, string(b)?, id)?,
            0x13 => once(&mut out.server_keep_alive, u16_(b)?, id)?,
            0x15 => once(&mut out.authentication_method, string(b)?, id)?,
            0x16 => once(&mut out.authentication_data, binary(b)?, id)?,
            0x17 => once(&mut out.request_problem_information, flag(b)?, id)?,
            0x18 => once(&mut out.will_delay, u32_(b)?, id)?,
            0x19 => once(&mut out.request_response_information, flag(b)?, id)?,
            0x1A => once(&mut out.response_information, string(b)?, id)?,
            0x1C => once(&mut out.server_reference, string(b)?, id)?,
            0x1F => once(&mut out.reason_string, string(b)?, id)?,
            0x21 => match u16_(b)? {
                0 => return Err(DecodeError::protocol("receive maximum 0")),
                v => once(&mut out.receive_maximum, v, id)?,
            },
            0x22 => once(&mut out.topic_alias_maximum, u16_(b)?, id)?,
            0x23 => match u16_(b)? {
                0 => return Err(DecodeError { reason: reason::TOPIC_ALIAS_INVALID, text: "topic alias 0".into() }),
                v => once(&mut out.topic_alias, v, id)?,
            },
            0x24 => once(&mut out.maximum_qos, flag(b)?, id)?,
            0x25 => once(&mut out.retain_available, flag(b)?, id)?,
            0x26 => {
                let k = string(b)?;
                let v = string(b)?;
                out.user.push((k, v));
            }
            0x27 => match u32_(b)? {
                0 => return Err(DecodeError::protocol("maximum packet size 0")),
                v => once(&mut out.maximum_packet_size, v, id)?,
            },
            0x28 => once(&mut out.wildcard_subscription_available, flag(b)?, id)?,
            0x29 => once(&mut out.subscription_identifier_available, flag(b)?, id)?,
            0x2A => once(&mut out.shared_subscription_available, flag(b)?, id)?,
            _ => return Err(DecodeError::malformed(format!("property identifier {id:#04x}"))),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests;
