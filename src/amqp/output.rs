//! Frames a connection has encoded but not yet handed to its writer task.
//!
//! Small frames are encoded into one buffer. A large message body is not copied into it: the
//! buffer is cut at each body frame's header and the body's own bytes (reference-counted, as
//! they were read from the publisher's socket or assembled from its frames) go alongside as
//! separate parts, written together with one vectored write.

use crate::amqp::frame::{body_frames, write_content, write_content_header, write_heartbeat, write_method};
use crate::amqp::Method;
use crate::broker::message::Body;
use crate::net::writer::Encoded;
use bytes::{Bytes, BytesMut};

/// Bodies at least this large are sent as parts rather than copied: below it, a copy costs
/// less than the extra parts and slices.
pub const ZERO_COPY_MIN: usize = 16 * 1024;

#[derive(Debug)]
pub struct Output {
    pub buf: BytesMut,
    /// What came before `buf`, in order, when a large body was added: encoded frames and
    /// body slices.
    pub parts: Vec<Bytes>,
    /// Delivery bytes in `buf` and `parts` charged to the connection's sink; released once
    /// written.
    pub charge: usize,
    pub frame_max: usize,
}

impl Output {
    pub fn new(frame_max: usize) -> Self {
        // Grows with use; idle connections keep it small.
        Output { buf: BytesMut::with_capacity(1024), parts: Vec::new(), charge: 0, frame_max }
    }
    pub fn method(&mut self, channel: u16, method: impl Into<Method>) {
        write_method(&mut self.buf, channel, &method.into());
    }
    pub fn content(&mut self, channel: u16, properties: &[u8], body: &Body) {
        if body.len() < ZERO_COPY_MIN {
            match body {
                Body::One(b) => write_content(&mut self.buf, channel, properties, b, self.frame_max),
                parts => write_content(&mut self.buf, channel, properties, &parts.to_bytes(), self.frame_max),
            }
            return;
        }
        write_content_header(&mut self.buf, channel, properties, body.len());
        let parts = &mut self.parts;
        body_frames(&mut self.buf, channel, body.parts(), self.frame_max, |buf, slice| {
            if !buf.is_empty() {
                parts.push(buf.split().freeze());
            }
            parts.push(slice);
        });
    }
    pub fn heartbeat(&mut self) {
        write_heartbeat(&mut self.buf);
    }
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.parts.is_empty()
    }
    /// Everything encoded so far, in order: one buffer, or parts.
    pub fn take(&mut self) -> Encoded {
        if self.parts.is_empty() {
            return Encoded::One(self.buf.split().freeze());
        }
        if !self.buf.is_empty() {
            self.parts.push(self.buf.split().freeze());
        }
        Encoded::Parts(std::mem::take(&mut self.parts))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::frame::{parse_frame, Frame};

    /// A large body goes out as parts that, put together, are the same frames a copy makes.
    #[test]
    fn a_large_body_is_sent_as_parts_with_the_same_bytes() {
        let whole = Bytes::from((0..300_000u32).map(|i| i as u8).collect::<Vec<_>>());
        let mut copied = BytesMut::new();
        write_content(&mut copied, 5, &[0, 0], &whole, 131_072);
        // As it arrived: frames of another size than the ones it leaves in.
        let body =
            Body::from_parts(vec![whole.slice(..100_000), whole.slice(100_000..250_000), whole.slice(250_000..)]);
        let mut out = Output::new(131_072);
        out.method(5, crate::amqp::method::BasicAck { delivery_tag: 1, multiple: false });
        out.content(5, &[0, 0], &body);
        out.heartbeat();
        let Encoded::Parts(parts) = out.take() else { panic!("a large body is sent as parts") };
        let joined: Vec<u8> = parts.iter().flat_map(|p| p.iter().copied()).collect();
        let mut expect = BytesMut::new();
        write_method(&mut expect, 5, &crate::amqp::method::BasicAck { delivery_tag: 1, multiple: false }.into());
        expect.extend_from_slice(&copied);
        write_heartbeat(&mut expect);
        assert_eq!(joined, expect.to_vec());
        // The body slices share the body's memory: no copy was made.
        assert!(parts.iter().any(|p| p.len() == 100_000 && whole.as_ptr() == p.as_ptr()));
        // And they parse back into the body.
        let mut buf = BytesMut::from(&joined[..]);
        let mut got = Vec::new();
        while let Some(f) = parse_frame(&mut buf, 131_072).unwrap() {
            if let Frame::Body(5, b) = f {
                got.extend_from_slice(&b);
            }
        }
        assert_eq!(got, whole.to_vec());
        assert!(out.is_empty());
    }
}
