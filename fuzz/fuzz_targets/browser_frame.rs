//! Untrusted bytes as a browser data-channel message and as an SDP's DTLS fingerprint:
//! decoding never panics, and whatever decodes survives an encode/decode round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::browser::{BrowserFrame, DtlsFingerprint};

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = BrowserFrame::decode(data) {
        assert_eq!(BrowserFrame::decode(&frame.encode()), Ok(frame));
    }
    if let Ok(sdp) = std::str::from_utf8(data) {
        if let Ok(fingerprint) = DtlsFingerprint::from_sdp(sdp) {
            assert_eq!(
                DtlsFingerprint::parse(&fingerprint.canonical()),
                Ok(fingerprint)
            );
        }
    }
});
