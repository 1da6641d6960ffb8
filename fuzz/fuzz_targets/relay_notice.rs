//! Untrusted bytes from a neighbour claiming to be a relay's refusal notice: decoding never
//! panics, and whatever decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::relay::RelayNotice;

fuzz_target!(|frame: &[u8]| {
    if let Ok(notice) = RelayNotice::decode(frame) {
        assert_eq!(&notice.encode()[..], frame);
    }
});
