//! A field table (with its length prefix) decoded as queue arguments, client properties and
//! message headers are: every field type, nesting to the depth bound. Nothing may panic;
//! a table that decodes encodes to bytes that decode to the same encoding; the argument
//! validators and the text renderings of errors take any table.
#![no_main]
use bytes::{Bytes, BytesMut};
use hare::types::codec::{Decoder, Encoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(table) = Decoder::new(Bytes::copy_from_slice(data)).table() else { return };
    let mut once = BytesMut::new();
    Encoder::new(&mut once).table(&table);
    let again = Decoder::new(once.clone().freeze()).table().expect("an encoded table decodes");
    let mut twice = BytesMut::new();
    Encoder::new(&mut twice).table(&again);
    assert_eq!(once, twice);
    assert!(table.equivalent(&again) || format!("{table:?}").contains("NaN"));
    // What the broker does with a table from a client: validate it as queue arguments and
    // render it for an error text or the audit log.
    let _ = hare::broker::arguments::QueueArguments::parse(&table, "q", "/");
    let _ = hare::broker::audit::table_text(&table);
});
