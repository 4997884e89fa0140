//! MQTT packets to bytes, in the version the connection speaks: the fixed header's remaining
//! length as a variable byte integer, version 5's properties, and a PUBLISH's header alone
//! (its payload is written after it without a copy).

use super::*;
use bytes::{BufMut, BytesMut};

fn put_varint(out: &mut BytesMut, mut v: usize) {
    loop {
        let mut byte = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            byte |= 0x80;
        }
        out.put_u8(byte);
        if v == 0 {
            break;
        }
    }
}

fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

fn put_binary(out: &mut BytesMut, b: &[u8]) {
    // Strings and binaries longer than 65,535 bytes cannot be expressed: the broker never
    // makes one (topics, client ids and properties come from peers, whose packets held them).
    let n = b.len().min(u16::MAX as usize);
    out.put_u16(n as u16);
    out.put_slice(&b[..n]);
}

fn put_properties(out: &mut BytesMut, p: &Properties) {
    let mut body = BytesMut::new();
    let b = &mut body;
    let byte = |b: &mut BytesMut, id: u8, v: Option<u8>| {
        if let Some(v) = v {
            b.put_u8(id);
            b.put_u8(v);
        }
    };
    let short = |b: &mut BytesMut, id: u8, v: Option<u16>| {
        if let Some(v) = v {
            b.put_u8(id);
            b.put_u16(v);
        }
    };
    let long = |b: &mut BytesMut, id: u8, v: Option<u32>| {
        if let Some(v) = v {
            b.put_u8(id);
            b.put_u32(v);
        }
    };
    let text = |b: &mut BytesMut, id: u8, v: &Option<String>| {
        if let Some(v) = v {
            b.put_u8(id);
            put_binary(b, v.as_bytes());
        }
    };
    byte(b, 0x01, p.payload_format);
    long(b, 0x02, p.message_expiry);
    text(b, 0x03, &p.content_type);
    text(b, 0x08, &p.response_topic);
    if let Some(v) = &p.correlation_data {
        b.put_u8(0x09);
        put_binary(b, v);
    }
    for id in &p.subscription_ids {
        b.put_u8(0x0B);
        put_varint(b, *id as usize);
    }
    long(b, 0x11, p.session_expiry);
    text(b, 0x12, &p.assigned_client_id);
    short(b, 0x13, p.server_keep_alive);
    text(b, 0x15, &p.authentication_method);
    if let Some(v) = &p.authentication_data {
        b.put_u8(0x16);
        put_binary(b, v);
    }
    byte(b, 0x17, p.request_problem_information);
    long(b, 0x18, p.will_delay);
    byte(b, 0x19, p.request_response_information);
    text(b, 0x1A, &p.response_information);
    text(b, 0x1C, &p.server_reference);
    text(b, 0x1F, &p.reason_string);
    short(b, 0x21, p.receive_maximum);
    short(b, 0x22, p.topic_alias_maximum);
    short(b, 0x23, p.topic_alias);
    byte(b, 0x24, p.maximum_qos);
    byte(b, 0x25, p.retain_available);
    for (k, v) in &p.user {
        b.put_u8(0x26);
        put_binary(b, k.as_bytes());
        put_binary(b, v.as_bytes());
    }
    long(b, 0x27, p.maximum_packet_size);
    byte(b, 0x28, p.wildcard_subscription_available);
    byte(b, 0x29, p.subscription_identifier_available);
    byte(b, 0x2A, p.shared_subscription_available);
    put_varint(out, body.len());
    out.put_slice(&body);
}

/// Encodes `packet` for a connection at `level`. A PUBLISH's payload is copied in; the
/// connection's writer sends large payloads beside their header instead (see
/// [`publish_header`]).
pub fn encode(out: &mut BytesMut, packet: &Packet, level: u8) {
    let v5 = level == V5;
    let mut body = BytesMut::new();
    let b = &mut body;
    let first: u8 = match packet {
        Packet::Connect(c) => {
            put_binary(b, if c.level == V31 { b"MQIsdp" } else { b"MQTT" });
            b.put_u8(c.level);
            let mut flags = 0u8;
            if c.clean_start {
                flags |= 2;
            }
            if let Some(w) = &c.will {
                flags |= 4 | (w.qos << 3) | if w.retain { 0x20 } else { 0 };
            }
            if c.password.is_some() {
                flags |= 0x40;
            }
            if c.username.is_some() {
                flags |= 0x80;
            }
            b.put_u8(flags);
            b.put_u16(c.keep_alive);
            if c.level == V5 {
                put_properties(b, &c.properties);
            }
            put_binary(b, c.client_id.as_bytes());
            if let Some(w) = &c.will {
                if c.level == V5 {
                    put_properties(b, &w.properties);
                }
                put_binary(b, w.topic.as_bytes());
                put_binary(b, &w.payload);
            }
            if let Some(u) = &c.username {
                put_binary(b, u.as_bytes());
            }
            if let Some(p) = &c.password {
                put_binary(b, p);
            }
            0x10
        }
        Packet::ConnAck(a) => {
            b.put_u8(a.session_present as u8);
            b.put_u8(if v5 { a.code } else { reason::v3_connack(a.code) });
            if v5 {
                put_properties(b, &a.properties);
            }
            0x20
        }
        Packet::Publish(p) => {
            publish_variable_header(b, p, v5);
            b.put_slice(&p.payload);
            publish_first_byte(p)
        }
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            b.put_u16(a.packet_id);
            if v5 && (a.code != reason::SUCCESS || a.properties != Properties::default()) {
                b.put_u8(a.code);
                if a.properties != Properties::default() {
                    put_properties(b, &a.properties);
                }
            }
            match packet {
                Packet::PubAck(_) => 0x40,
                Packet::PubRec(_) => 0x50,
                Packet::PubRel(_) => 0x62,
                _ => 0x70,
            }
        }
        Packet::Subscribe(s) => {
            b.put_u16(s.packet_id);
            if v5 {
                put_properties(b, &s.properties);
            }
            for f in &s.filters {
                put_binary(b, f.filter.as_bytes());
                let mut options = f.qos;
                if v5 {
                    options |= (f.no_local as u8) << 2 | (f.retain_as_published as u8) << 3 | f.retain_handling << 4;
                }
                b.put_u8(options);
            }
            0x82
        }
        Packet::SubAck(s) => {
            b.put_u16(s.packet_id);
            if v5 {
                put_properties(b, &s.properties);
            }
            for &c in &s.codes {
                // 3.1.1 knows one failure code.
                b.put_u8(if !v5 && c >= 0x80 { 0x80 } else { c });
            }
            0x90
        }
        Packet::Unsubscribe(u) => {
            b.put_u16(u.packet_id);
            if v5 {
                put_properties(b, &u.properties);
            }
            for f in &u.filters {
                put_binary(b, f.as_bytes());
            }
            0xA2
        }
        Packet::UnsubAck(u) => {
            b.put_u16(u.packet_id);
            if v5 {
                put_properties(b, &u.properties);
                b.put_slice(&u.codes);
            }
            0xB0
        }
        Packet::PingReq => 0xC0,
        Packet::PingResp => 0xD0,
        Packet::Disconnect(d) | Packet::Auth(d) => {
            if v5 {
                b.put_u8(d.code);
                put_properties(b, &d.properties);
            }
            if matches!(packet, Packet::Disconnect(_)) {
                0xE0
            } else {
                0xF0
            }
        }
    };
    out.put_u8(first);
    put_varint(out, body.len());
    out.put_slice(&body);
}

fn publish_first_byte(p: &Publish) -> u8 {
    0x30 | (p.dup as u8) << 3 | p.qos << 1 | p.retain as u8
}

fn publish_variable_header(b: &mut BytesMut, p: &Publish, v5: bool) {
    put_binary(b, p.topic.as_bytes());
    if let Some(id) = p.packet_id {
        b.put_u16(id);
    }
    if v5 {
        put_properties(b, &p.properties);
    }
}

/// Encodes a PUBLISH up to its payload (fixed and variable header), for `payload_len` bytes
/// of payload that follow it; returns the whole packet's size.
pub fn publish_header(out: &mut BytesMut, p: &Publish, payload_len: usize, level: u8) -> usize {
    let mut header = BytesMut::new();
    publish_variable_header(&mut header, p, level == V5);
    let remaining = header.len() + payload_len;
    out.put_u8(publish_first_byte(p));
    put_varint(out, remaining);
    out.put_slice(&header);
    1 + varint_len(remaining) + remaining
}
