//! One method frame's payload (class id, method id, fields) decoded, as the channel decodes
//! every method frame. Nothing may panic; what decodes encodes to bytes that decode again
//! to the same encoding (bits packed, tables and strings preserved).
#![no_main]
mod checks;

use bytes::Bytes;
use hare::amqp::Method;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = Method::decode(Bytes::copy_from_slice(data)) else { return };
    let _ = (m.name(), m.ids());
    checks::method_round_trip(&m);
});
