//! Untrusted bytes as a node-to-node envelope about a browser's message: decoding never
//! panics, and whatever decodes survives an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::browser_mesh::Envelope;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = Envelope::decode(data) {
        assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
    }
});
