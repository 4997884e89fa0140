//! A connection's byte stream cut into frames as the reader cuts it, then every method
//! frame decoded and every content header's properties read, as the channel does. Nothing
//! may panic; each frame taken must be within frame_max; what decodes (a method, a header's
//! properties) must pass the checks of the `method` and `content_header` targets.
#![no_main]
mod checks;

use bytes::BytesMut;
use hare::amqp::frame::{parse_frame, FRAME_MIN_SIZE};
use hare::amqp::{Frame, Method};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the stream arrives: whole, or in reads of 1..=255 bytes.
    let Some((&step, data)) = data.split_first() else { return };
    let step = if step == 0 { data.len().max(1) } else { step as usize };
    let mut buf = BytesMut::new();
    let frame_max = FRAME_MIN_SIZE as usize;
    'stream: for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        for _ in 0..=chunk.len() {
            match parse_frame(&mut buf, frame_max) {
                Ok(Some(frame)) => check(frame, frame_max),
                Ok(None) => break,
                // A frame error closes the connection: the rest of the stream is never read.
                Err(_) => break 'stream,
            }
        }
    }
});

fn check(frame: Frame, frame_max: usize) {
    match frame {
        Frame::Method(_, payload) => {
            assert!(payload.len() <= frame_max);
            if let Ok(m) = Method::decode(payload) {
                checks::method_round_trip(&m);
            }
        }
        Frame::Header(_, h) => checks::properties(&h.properties),
        Frame::Body(_, b) => assert!(b.len() <= frame_max),
        Frame::Heartbeat(_) => {}
    }
}
