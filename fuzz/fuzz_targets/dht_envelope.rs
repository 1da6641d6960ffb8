//! Untrusted bytes as a DHT envelope (a message plus address hints): decoding never panics,
//! and whatever decodes re-encodes to bytes that decode to the same envelope.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::dht::envelope::{decode_envelope, encode_envelope};

fuzz_target!(|frame: &[u8]| {
    if let Ok(envelope) = decode_envelope(frame) {
        assert_eq!(decode_envelope(&encode_envelope(&envelope)), Ok(envelope));
    }
});
