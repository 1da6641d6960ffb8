//! Untrusted bytes from a link's control stream: decoding never panics, and whatever
//! decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::link::{decode, encode};

fuzz_target!(|frame: &[u8]| {
    if let Ok(message) = decode(frame) {
        assert_eq!(encode(&message), frame);
    }
});
