//! Frame layer: splits the byte stream into method, header, body and heartbeat frames,
//! and writes frames, splitting bodies to the negotiated frame_max.

use super::method::Method;
use bytes::{Buf, BufMut, Bytes, BytesMut};

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
pub const FRAME_END: u8 = 0xCE;
/// Frame type, channel, size before the payload, and the end octet after it.
pub const FRAME_OVERHEAD: usize = 8;
/// The smallest frame_max any peer must accept (AMQP 0-9-1 section 4.2.3).
pub const FRAME_MIN_SIZE: u32 = 4096;
pub const PROTOCOL_HEADER: &[u8; 8] = b"AMQP\x00\x00\x09\x01";

/// A content header frame: the class, the body size, and the property bytes exactly as sent.
#[derive(Clone, Debug, PartialEq)]
pub struct ContentHeader {
    pub class_id: u16,
    pub body_size: u64,
    /// Property flags and property list, kept raw so they reach consumers byte for byte.
    pub properties: Bytes,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Frame {
    Method(u16, Bytes),
    Header(u16, ContentHeader),
    Body(u16, Bytes),
    Heartbeat(u16),
}

impl Frame {
    pub fn channel(&self) -> u16 {
        match self {
            Frame::Method(c, _) | Frame::Header(c, _) | Frame::Body(c, _) | Frame::Heartbeat(c) => *c,
        }
    }
}

/// Problems with the frame layout; all are connection errors 501 FRAME_ERROR.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum FrameError {
    #[error("frame payload of {size} bytes exceeds the negotiated frame_max {max}")]
    TooLarge { size: usize, max: usize },
    #[error("frame end octet is {0:#04x}, expected 0xce")]
    BadEnd(u8),
    #[error("unknown frame type {0}")]
    UnknownType(u8),
    #[error("content header frame is malformed")]
    BadHeader,
}

/// The type, channel and payload size of the frame at the front of `buf`, once its 7 header
/// bytes are in.
pub fn peek_header(buf: &[u8]) -> Option<(u8, u16, usize)> {
    let h = buf.get(..7)?;
    Some((h[0], u16::from_be_bytes([h[1], h[2]]), u32::from_be_bytes([h[3], h[4], h[5], h[6]]) as usize))
}

/// How many more bytes the frame at the front of `buf` needs to be complete (0 when it is,
/// or when its header is not in yet). The reader makes that much room before reading on.
pub fn missing(buf: &[u8]) -> usize {
    peek_header(buf).map_or(0, |(_, _, size)| (size + FRAME_OVERHEAD).saturating_sub(buf.len()))
}

/// Takes one complete frame off the front of `buf`; `Ok(None)` means more bytes are needed.
/// `frame_max` bounds each frame, so memory per peer stays bounded.
pub fn parse_frame(buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>, FrameError> {
    let Some((kind, channel, size)) = peek_header(buf) else {
        return Ok(None);
    };
    if !matches!(kind, FRAME_METHOD | FRAME_HEADER | FRAME_BODY | FRAME_HEARTBEAT) {
        return Err(FrameError::UnknownType(kind));
    }
    // As RabbitMQ does, allow the payload alone to reach frame_max: many clients get the
    // overhead wrong by up to the 8 bytes of framing.
    if size > frame_max {
        return Err(FrameError::TooLarge { size, max: frame_max });
    }
    if buf.len() < size + FRAME_OVERHEAD {
        // The caller makes room (see `missing`): reserving here would move a buffer that
        // earlier frames still share into a fresh allocation just the frame's size.
        return Ok(None);
    }
    let end = buf[7 + size];
    if end != FRAME_END {
        return Err(FrameError::BadEnd(end));
    }
    buf.advance(7);
    let payload = buf.split_to(size).freeze();
    buf.advance(1);
    Ok(Some(match kind {
        FRAME_METHOD => Frame::Method(channel, payload),
        FRAME_HEADER => Frame::Header(channel, parse_header(payload)?),
        FRAME_BODY => Frame::Body(channel, payload),
        _ => Frame::Heartbeat(channel),
    }))
}

fn parse_header(mut p: Bytes) -> Result<ContentHeader, FrameError> {
    if p.len() < 14 {
        return Err(FrameError::BadHeader);
    }
    let class_id = p.get_u16();
    let _weight = p.get_u16();
    let body_size = p.get_u64();
    Ok(ContentHeader { class_id, body_size, properties: p })
}

fn begin_frame(buf: &mut BytesMut, kind: u8, channel: u16) -> usize {
    buf.put_u8(kind);
    buf.put_u16(channel);
    let size_at = buf.len();
    buf.put_u32(0);
    size_at
}

fn end_frame(buf: &mut BytesMut, size_at: usize) {
    let size = (buf.len() - size_at - 4) as u32;
    buf[size_at..size_at + 4].copy_from_slice(&size.to_be_bytes());
    buf.put_u8(FRAME_END);
}

pub fn write_method(buf: &mut BytesMut, channel: u16, method: &Method) {
    let at = begin_frame(buf, FRAME_METHOD, channel);
    method.encode(buf);
    end_frame(buf, at);
}

pub fn write_heartbeat(buf: &mut BytesMut) {
    buf.put_slice(&[FRAME_HEARTBEAT, 0, 0, 0, 0, 0, 0, FRAME_END]);
}

/// Writes a content header and the body frames, each body frame at most `frame_max` long.
pub fn write_content(buf: &mut BytesMut, channel: u16, properties: &[u8], body: &[u8], frame_max: usize) {
    write_content_header(buf, channel, properties, body.len());
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    for part in body.chunks(chunk) {
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(part.len() as u32);
        buf.put_slice(part);
        buf.put_u8(FRAME_END);
    }
}

/// The content header frame of a body of `body_len` bytes (class basic).
pub fn write_content_header(buf: &mut BytesMut, channel: u16, properties: &[u8], body_len: usize) {
    let at = begin_frame(buf, FRAME_HEADER, channel);
    buf.put_u16(60);
    buf.put_u16(0);
    buf.put_u64(body_len as u64);
    buf.put_slice(properties);
    end_frame(buf, at);
}

/// Splits a body, given as pieces in order, into frames without copying it: for each frame,
/// writes its 7-byte header to `buf`, calls `slice` with each piece of the body the frame
/// carries (one, or more where the frame spans pieces), then writes the frame-end octet.
pub fn body_frames(
    buf: &mut BytesMut,
    channel: u16,
    pieces: &[Bytes],
    frame_max: usize,
    mut slice: impl FnMut(&mut BytesMut, Bytes),
) {
    let chunk = frame_max.saturating_sub(FRAME_OVERHEAD).max(1);
    let mut left: usize = pieces.iter().map(Bytes::len).sum();
    let (mut piece, mut at) = (0, 0);
    while left > 0 {
        let mut frame = chunk.min(left);
        left -= frame;
        buf.put_u8(FRAME_BODY);
        buf.put_u16(channel);
        buf.put_u32(frame as u32);
        while frame > 0 {
            let p = &pieces[piece];
            let take = (p.len() - at).min(frame);
            slice(buf, p.slice(at..at + take));
            frame -= take;
            at += take;
            if at == p.len() {
                piece += 1;
                at = 0;
            }
        }
        buf.put_u8(FRAME_END);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::method::BasicAck;

    #[test]
    fn frames_round_trip_and_split() {
        let mut buf = BytesMut::new();
        write_method(&mut buf, 3, &BasicAck { delivery_tag: 9, multiple: true }.into());
        write_content(&mut buf, 3, &[0, 0], &[7u8; 10], 12);
        write_heartbeat(&mut buf);
        let m = parse_frame(&mut buf, 4096).unwrap().unwrap();
        match m {
            Frame::Method(3, p) => {
                assert_eq!(Method::decode(p).unwrap(), BasicAck { delivery_tag: 9, multiple: true }.into())
            }
            other => panic!("{other:?}"),
        }
        let h = parse_frame(&mut buf, 4096).unwrap().unwrap();
        assert!(matches!(h, Frame::Header(3, ContentHeader { body_size: 10, .. })));
        let mut body = Vec::new();
        for _ in 0..3 {
            match parse_frame(&mut buf, 4096).unwrap().unwrap() {
                Frame::Body(3, b) => body.extend_from_slice(&b),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(body, vec![7u8; 10]);
        assert_eq!(parse_frame(&mut buf, 4096).unwrap(), Some(Frame::Heartbeat(0)));
        assert_eq!(parse_frame(&mut buf, 4096).unwrap(), None);
    }

    #[test]
    fn every_truncation_waits_for_more() {
        let mut full = BytesMut::new();
        write_method(&mut full, 1, &BasicAck { delivery_tag: 1, multiple: false }.into());
        for cut in 0..full.len() {
            let mut part = BytesMut::from(&full[..cut]);
            assert_eq!(parse_frame(&mut part, 4096).unwrap(), None, "cut at {cut}");
        }
    }

    #[test]
    fn bad_frames_are_errors() {
        let mut big = BytesMut::from(&[1u8, 0, 1, 0, 0, 0x10, 1][..]);
        assert!(matches!(parse_frame(&mut big, 4096), Err(FrameError::TooLarge { .. })));
        let mut bad_end = BytesMut::from(&[8u8, 0, 0, 0, 0, 0, 0, 0xAB][..]);
        assert_eq!(parse_frame(&mut bad_end, 4096), Err(FrameError::BadEnd(0xAB)));
        let mut bad_type = BytesMut::from(&[9u8, 0, 0, 0, 0, 0, 0, 0xCE][..]);
        assert_eq!(parse_frame(&mut bad_type, 4096), Err(FrameError::UnknownType(9)));
    }
}
