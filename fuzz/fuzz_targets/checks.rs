//! The checks more than one target makes on what it decoded: the hot path's peek agrees
//! with the full decode, and what decodes encodes to bytes that decode to the same encoding.
#![allow(dead_code)] // each target uses the checks it needs

use bytes::{Bytes, BytesMut};
use hare::amqp::Method;
use hare::broker::message::peek_properties;
use hare::types::BasicProperties;

/// A decoded method encodes, decodes again and encodes to the same bytes.
pub fn method_round_trip(m: &Method) {
    let mut once = BytesMut::new();
    m.encode(&mut once);
    let again = Method::decode(once.clone().freeze()).expect("an encoded method decodes");
    let mut twice = BytesMut::new();
    again.encode(&mut twice);
    assert_eq!(once, twice);
}

/// A content header's raw property flags and list: the peek (priority and expiration
/// without a decode) agrees with the decode, and the decoded properties round-trip.
pub fn properties(raw: &[u8]) {
    let peeked = peek_properties(raw);
    let Ok(p) = BasicProperties::decode(Bytes::copy_from_slice(raw)) else { return };
    assert_eq!(peeked.priority, p.priority.unwrap_or(0));
    assert_eq!(peeked.expiration, p.expiration.as_ref().map(|e| e.as_bytes()));
    let mut once = BytesMut::new();
    p.encode(&mut once);
    let again = BasicProperties::decode(once.clone().freeze()).expect("encoded properties decode");
    let mut twice = BytesMut::new();
    again.encode(&mut twice);
    assert_eq!(once, twice);
}
