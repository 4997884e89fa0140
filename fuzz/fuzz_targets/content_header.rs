//! A content header's property flags and list, as published: the hot path's peek (priority
//! and expiration without a decode) and the full decode must agree, and what decodes
//! encodes to bytes that decode to the same encoding.
#![no_main]
mod checks;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| checks::properties(data));
