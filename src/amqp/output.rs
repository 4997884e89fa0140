//! Frames a connection has encoded but not yet handed to its writer task.
//!
//! Small frames are encoded into one buffer. A large message body is not copied into it: the
//! buffer is cut at each body frame's header and the body's own bytes (reference-counted, as
//! they were read from the publisher's socket or assembled from its frames) go alongside as
//! separate parts (`net::writer::Outgoing`), written together with one vectored write.

use crate::amqp::frame::{body_frames, write_content, write_content_header, write_heartbeat, write_method};
use crate::amqp::Method;
use crate::broker::message::Body;
pub use crate::net::writer::ZERO_COPY_MIN;
use crate::net::writer::{push_slice, Encoded, Outgoing};

#[derive(Debug)]
pub struct Output {
    pub out: Outgoing,
    /// Delivery bytes in `out` charged to the connection's sink; released once written.
    pub charge: usize,
    pub frame_max: usize,
}

impl Output {
    pub fn new(frame_max: usize) -> Self {
        // Grows with use; idle connections keep it small.
        Output { out: Outgoing::with_capacity(1024), charge: 0, frame_max }
    }
    pub fn method(&mut self, channel: u16, method: impl Into<Method>) {
        write_method(&mut self.out.buf, channel, &method.into());
    }
    pub fn content(&mut self, channel: u16, properties: &[u8], body: &Body) {
        let Outgoing { buf, parts } = &mut self.out;
        if body.len() < ZERO_COPY_MIN {
            match body {
                Body::One(b) => write_content(buf, channel, properties, b, self.frame_max),
                all => write_content(buf, channel, properties, &all.to_bytes(), self.frame_max),
            }
            return;
        }
        write_content_header(buf, channel, properties, body.len());
        body_frames(buf, channel, body.parts(), self.frame_max, |buf, slice| push_slice(buf, parts, slice));
    }
    pub fn heartbeat(&mut self) {
        write_heartbeat(&mut self.out.buf);
    }
    pub fn is_empty(&self) -> bool {
        self.out.is_empty()
    }
    /// Everything encoded so far, in order: one buffer, or parts.
    pub fn take(&mut self) -> Encoded {
        self.out.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::amqp::frame::{parse_frame, Frame};
    use bytes::{Bytes, BytesMut};

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
