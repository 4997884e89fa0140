//! Cutting frames out of a connection's read buffer, with large body frames passed on in
//! pieces rather than copied.
//!
//! A connection reads into a large buffer and cuts frames out of it without copying them
//! (see `net::read_buf`). When the buffer runs out of room, the last frame in it is
//! usually incomplete, and the part of it already read would have to be copied to the start
//! of the next buffer so that the frame is whole again. For a large body frame that copy is
//! wasted: a message body is a list of slices anyway, so the part read so far goes on to its
//! channel as one piece of the body and the rest follows from the next buffer as more
//! pieces of the same frame. With 1 MiB reads and 64 KiB or 128 KiB frames that was about
//! one body byte in thirty copied once more, a few per cent of the broker's CPU.
//!
//! Two rules keep this as strict as reading whole frames:
//! - a frame is split only if its channel would take all of it (a publish is under way and
//!   the frame fits its declared body size), so every error is raised, with the same text,
//!   as for a whole frame;
//! - the last byte of a split frame is passed on only together with the frame's end octet,
//!   checked, so a frame with a bad end never completes a message.
//!
//! Pieces other than the last are at least [`SPLIT_MIN`] bytes, so a peer that trickles a
//! frame in byte by byte cannot make a body of many tiny slices.

use super::frame::{self, parse_frame, Frame, FrameError, FRAME_BODY, FRAME_END, FRAME_OVERHEAD};
use bytes::{Buf, BytesMut};

/// The least part of a body frame passed on as a piece: below it, copying the bytes to the
/// next buffer costs less than one more slice of the body.
pub const SPLIT_MIN: usize = 16 * 1024;

/// What is left of a body frame passed on in pieces.
#[derive(Debug, Clone, Copy, PartialEq)]
struct BodyRest {
    channel: u16,
    /// Payload bytes still to come; at least 1 until the frame is done.
    remaining: usize,
}

/// Frames from a connection's byte stream; see the module documentation.
#[derive(Debug, Default)]
pub struct FrameReader {
    rest: Option<BodyRest>,
}

impl FrameReader {
    /// How many more bytes the frame at the front of `buf` needs to be complete (0 when it
    /// is, or when its header is not in yet). The reader makes that much room before reading on.
    pub fn missing(&self, buf: &[u8]) -> usize {
        match &self.rest {
            Some(rest) => (rest.remaining + 1).saturating_sub(buf.len()),
            None => frame::missing(buf),
        }
    }

    /// Takes the next frame, or the next piece of a body frame begun, off the front of `buf`;
    /// `Ok(None)` means more bytes are needed. Pieces come as [`Frame::Body`].
    pub fn next(&mut self, buf: &mut BytesMut, frame_max: usize) -> Result<Option<Frame>, FrameError> {
        let Some(rest) = &mut self.rest else {
            return parse_frame(buf, frame_max);
        };
        if buf.len() > rest.remaining {
            let end = buf[rest.remaining];
            if end != FRAME_END {
                return Err(FrameError::BadEnd(end));
            }
            let piece = buf.split_to(rest.remaining).freeze();
            buf.advance(1);
            let channel = rest.channel;
            self.rest = None;
            return Ok(Some(Frame::Body(channel, piece)));
        }
        // The last payload byte waits for the end octet.
        let n = buf.len().min(rest.remaining - 1);
        if n < SPLIT_MIN {
            return Ok(None);
        }
        rest.remaining -= n;
        Ok(Some(Frame::Body(rest.channel, buf.split_to(n).freeze())))
    }

    /// If `buf` starts with a body frame that is not complete, with at least [`SPLIT_MIN`]
    /// bytes of its payload in and a channel that takes it whole (`accept(channel, size)`),
    /// takes the part read as the frame's first piece. The caller does this instead of
    /// copying that part into a new buffer; the rest comes from [`FrameReader::next`].
    pub fn split_partial_body(
        &mut self,
        buf: &mut BytesMut,
        frame_max: usize,
        accept: impl FnOnce(u16, usize) -> bool,
    ) -> Option<Frame> {
        if self.rest.is_some() || buf.len() < 7 + SPLIT_MIN {
            return None;
        }
        let (kind, channel, size) = frame::peek_header(buf)?;
        // Not a body, too large or already whole: `parse_frame` deals with it.
        if kind != FRAME_BODY || size > frame_max || buf.len() >= size + FRAME_OVERHEAD {
            return None;
        }
        // All of the payload may be in with only the end octet missing: one byte stays.
        let take = (buf.len() - 7).min(size - 1);
        if take < SPLIT_MIN || !accept(channel, size) {
            return None;
        }
        buf.advance(7);
        let piece = buf.split_to(take).freeze();
        self.rest = Some(BodyRest { channel, remaining: size - take });
        Some(Frame::Body(channel, piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::frame::{write_content, write_heartbeat, write_method};
    use crate::amqp::method::BasicAck;
    use bytes::Bytes;

    /// A small deterministic generator (xorshift), so a failing case can be replayed by seed.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Reads `stream` in random chunks into a buffer of `room` bytes the way a connection
    /// does, splitting body frames whenever the buffer must move on; returns the frames with
    /// the pieces of each body frame joined again, and how many pieces there were.
    fn read_all(stream: &[u8], seed: u64, room: usize, frame_max: usize) -> (Vec<Frame>, usize) {
        let mut rng = Rng(seed);
        let mut reader = FrameReader::default();
        let mut buf = BytesMut::with_capacity(room);
        let (mut at, mut out, mut pieces) = (0, Vec::new(), 0);
        // The pieces of the frame being split, joined.
        let mut joining: Option<(u16, Vec<u8>)> = None;
        for _ in 0..1_000_000 {
            while let Some(f) = reader.next(&mut buf, frame_max).expect("a valid stream parses") {
                match (f, &mut joining) {
                    (Frame::Body(c, b), Some((channel, joined))) => {
                        assert_eq!(*channel, c, "the pieces of a frame stay on its channel");
                        joined.extend_from_slice(&b);
                        pieces += 1;
                        if reader.rest.is_none() {
                            out.push(Frame::Body(c, Bytes::from(std::mem::take(joined))));
                            joining = None;
                        }
                    }
                    (f, None) => out.push(f),
                    (f, Some(_)) => panic!("{f:?} in the middle of a split frame"),
                }
            }
            if at == stream.len() {
                break;
            }
            if buf.capacity() - buf.len() < room / 4 {
                if let Some(Frame::Body(c, b)) = reader.split_partial_body(&mut buf, frame_max, |_, _| true) {
                    joining = Some((c, b.to_vec()));
                    pieces += 1;
                }
                let mut fresh = BytesMut::with_capacity(room.max(buf.len() + 2 * reader.missing(&buf)));
                fresh.extend_from_slice(&buf);
                buf = fresh;
            }
            let space = buf.capacity() - buf.len();
            let n = (1 + rng.below(space)).min(stream.len() - at);
            buf.extend_from_slice(&stream[at..at + n]);
            at += n;
        }
        assert!(buf.is_empty() && reader.rest.is_none() && joining.is_none(), "the whole stream was read");
        (out, pieces)
    }

    /// Model-based: for random streams of methods, heartbeats and contents of random sizes,
    /// read in random chunks into buffers of several sizes, the frames (with split bodies
    /// joined) are exactly those of reading the stream whole, and large bodies do get split.
    #[test]
    fn split_frames_join_back_into_the_frames_sent() {
        let frame_max = 131_072;
        let mut split_seen = 0;
        for seed in 1..=60u64 {
            let mut rng = Rng(seed * 0x9E37_79B9_7F4A_7C15);
            let mut stream = BytesMut::new();
            for i in 0..(5 + rng.below(40)) {
                match rng.below(4) {
                    0 => write_method(&mut stream, 1, &BasicAck { delivery_tag: i as u64, multiple: false }.into()),
                    1 => write_heartbeat(&mut stream),
                    _ => {
                        let len = [0, 10, 5_000, 20_000, 70_000, 200_000, 400_000][rng.below(7)] + rng.below(100);
                        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                        write_content(&mut stream, 1 + rng.below(3) as u16, &[0, 0], &body, frame_max);
                    }
                }
            }
            let mut whole = stream.clone();
            let mut expect = Vec::new();
            while let Some(f) = parse_frame(&mut whole, frame_max).unwrap() {
                expect.push(f);
            }
            for room in [SPLIT_MIN + 100, 100_000, 300_000] {
                let (got, pieces) = read_all(&stream, seed ^ room as u64, room, frame_max);
                assert_eq!(got, expect, "seed {seed}, room {room}");
                split_seen += pieces;
            }
        }
        assert!(split_seen > 100, "large bodies were split: {split_seen} pieces");
    }

    /// Damaged streams (a byte changed, a frame cut short, random bytes) read in random
    /// chunks with splitting: the reader never panics, and it either errs or hands out frames
    /// and pieces no larger than the bytes given to it.
    #[test]
    fn damaged_streams_err_or_parse_without_panic() {
        let frame_max = 131_072;
        for seed in 1..=200u64 {
            let mut rng = Rng(seed * 0xD1B5_4A32_D192_ED03);
            let mut stream = BytesMut::new();
            for _ in 0..(1 + rng.below(6)) {
                let body: Vec<u8> = (0..rng.below(200_000)).map(|_| rng.next() as u8).collect();
                write_content(&mut stream, 1, &[0, 0], &body, frame_max);
            }
            match rng.below(3) {
                0 => {
                    let at = rng.below(stream.len());
                    stream[at] ^= 1 + rng.below(255) as u8;
                }
                1 => stream.truncate(rng.below(stream.len())),
                _ => stream = (0..rng.below(300_000)).map(|_| rng.next() as u8).collect::<Vec<_>>()[..].into(),
            }
            let mut reader = FrameReader::default();
            let mut buf = BytesMut::new();
            let (mut at, mut out) = (0, 0usize);
            'read: for _ in 0..100_000 {
                loop {
                    match reader.next(&mut buf, frame_max) {
                        Ok(Some(Frame::Body(_, b) | Frame::Method(_, b))) => out += b.len(),
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(_) => break 'read,
                    }
                }
                if at == stream.len() {
                    break;
                }
                if let Some(Frame::Body(_, b)) = reader.split_partial_body(&mut buf, frame_max, |_, _| true) {
                    out += b.len();
                }
                let n = (1 + rng.below(100_000)).min(stream.len() - at);
                buf.extend_from_slice(&stream[at..at + n]);
                at += n;
            }
            assert!(out <= at, "seed {seed}: handed out {out} bytes of {at} read");
        }
    }

    #[test]
    fn a_bad_end_octet_is_found_before_the_last_piece() {
        let mut stream = BytesMut::new();
        write_content(&mut stream, 1, &[0, 0], &[7u8; 50_000], 131_072);
        let last = stream.len() - 1;
        stream[last] = 0xAB;
        // The method-less header frame first, then the body frame begun.
        let mut reader = FrameReader::default();
        let header_len = frame::peek_header(&stream).map(|(_, _, size)| 7 + size + 1).expect("a header frame");
        let mut buf = BytesMut::from(&stream[..header_len + 7 + 30_000]);
        assert!(matches!(reader.next(&mut buf, 131_072), Ok(Some(Frame::Header(1, _)))));
        let Some(Frame::Body(1, first)) = reader.split_partial_body(&mut buf, 131_072, |_, _| true) else {
            panic!("the begun body frame is split")
        };
        assert_eq!(first.len(), 30_000);
        assert_eq!(reader.missing(&buf), 20_001);
        // Everything but the end octet: the last byte is held back.
        buf.extend_from_slice(&stream[header_len + 7 + 30_000..last]);
        let Ok(Some(Frame::Body(1, second))) = reader.next(&mut buf, 131_072) else { panic!("a piece") };
        assert_eq!(second.len(), 19_999);
        assert!(matches!(reader.next(&mut buf, 131_072), Ok(None)));
        buf.extend_from_slice(&stream[last..]);
        assert_eq!(reader.next(&mut buf, 131_072), Err(FrameError::BadEnd(0xAB)));
    }

    #[test]
    fn small_refused_or_whole_frames_are_not_split() {
        let mut stream = BytesMut::new();
        write_content(&mut stream, 1, &[0, 0], &[1u8; 60_000], 131_072);
        let header_len = frame::peek_header(&stream).map(|(_, _, size)| 7 + size + 1).expect("a header frame");
        let body = stream.split_off(header_len);
        let mut reader = FrameReader::default();
        // Too little of it in.
        let mut buf = BytesMut::from(&body[..7 + SPLIT_MIN - 1]);
        assert!(reader.split_partial_body(&mut buf, 131_072, |_, _| true).is_none());
        // Its channel would not take it.
        let mut buf = BytesMut::from(&body[..40_000]);
        assert!(reader.split_partial_body(&mut buf, 131_072, |_, _| false).is_none());
        // Over frame_max: left for parse_frame to refuse.
        assert!(reader.split_partial_body(&mut buf, 50_000, |_, _| true).is_none());
        // Whole.
        let mut buf = BytesMut::from(&body[..]);
        assert!(reader.split_partial_body(&mut buf, 131_072, |_, _| true).is_none());
        assert_eq!(buf.len(), body.len());
        // A piece of a few bytes is not passed on: it waits for more, or for the end.
        let mut buf = BytesMut::from(&body[..30_000]);
        assert!(reader.split_partial_body(&mut buf, 131_072, |_, _| true).is_some());
        buf.extend_from_slice(&body[30_000..30_100]);
        assert!(matches!(reader.next(&mut buf, 131_072), Ok(None)));
        assert_eq!(buf.len(), 100);
    }
}
