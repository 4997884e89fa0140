//! A content header's property flags and list, as published: the hot path's peek (priority
//! and expiration without a decode) and the full decode must agree, and what decodes
//! encodes to bytes that decode to the same encoding.
#![no_main]
use bytes::{Bytes, BytesMut};
use hare::broker::message::peek_properties;
use hare::protocol::BasicProperties;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let peeked = peek_properties(data);
    let Ok(p) = BasicProperties::decode(Bytes::copy_from_slice(data)) else { return };
    assert_eq!(peeked.priority, p.priority.unwrap_or(0));
    assert_eq!(peeked.expiration, p.expiration.as_ref().map(|e| e.as_bytes()));
    let mut once = BytesMut::new();
    p.encode(&mut once);
    let again = BasicProperties::decode(once.clone().freeze()).expect("encoded properties decode");
    let mut twice = BytesMut::new();
    again.encode(&mut twice);
    assert_eq!(once, twice);
});
