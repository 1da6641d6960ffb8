//! Untrusted bytes from a neighbour claiming to be a relay IOU: decoding never panics,
//! whatever decodes re-encodes to the same bytes, and verifying it never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::ledger::Iou;

fuzz_target!(|frame: &[u8]| {
    if let Ok(iou) = Iou::decode(frame) {
        assert_eq!(&iou.encode()[..], frame);
        let _ = iou.verify();
    }
});
