//! A `connection.start-ok` response for each mechanism Hare offers (the first byte picks
//! the mechanism). Nothing may panic; PLAIN always yields credentials.
#![no_main]
use bytes::Bytes;
use hare::auth::sasl::parse;
use libfuzzer_sys::fuzz_target;

const MECHANISMS: [&str; 4] = ["PLAIN", "AMQPLAIN", "EXTERNAL", "CRAM-MD5"];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, response)) = data.split_first() else { return };
    let mechanism = MECHANISMS[pick as usize % MECHANISMS.len()];
    let result = parse(mechanism, &Bytes::copy_from_slice(response));
    if mechanism == "PLAIN" || mechanism == "EXTERNAL" {
        assert!(result.is_ok());
    }
});
