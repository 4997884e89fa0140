//! A stream protocol frame as a client sends it (without its size), and the same bytes as
//! an AMQP 1.0 message read for an AMQP 0-9-1 consumer. Nothing may panic.
#![no_main]
use bytes::Bytes;
use hare::stream::codec::decode;
use hare::types::amqp10::to_amqp091;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let bytes = Bytes::copy_from_slice(data);
    let _ = decode(bytes.clone());
    let _ = to_amqp091(&bytes);
});
