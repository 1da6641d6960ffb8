//! Untrusted bytes from a DHT stream: decoding never panics, and whatever decodes
//! re-encodes to bytes that decode to the same message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::dht::{decode, encode};

fuzz_target!(|frame: &[u8]| {
    if let Ok(message) = decode(frame) {
        assert_eq!(decode(&encode(&message)), Ok(message));
    }
});
