//! Untrusted bytes from a neighbour's routing stream (hello, RREQ, RREP, RERR): decoding
//! never panics, and whatever decodes re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::route::{decode, encode};

fuzz_target!(|frame: &[u8]| {
    if let Ok(message) = decode(frame) {
        assert_eq!(decode(&encode(&message)), Ok(message));
    }
});
