//! Untrusted bytes from a neighbour claiming to be its ledger statement (its price for a
//! destination and the bytes it carried there): decoding never panics, and whatever
//! decodes re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::ledger::Statement;

fuzz_target!(|frame: &[u8]| {
    if let Ok(statement) = Statement::decode(frame) {
        assert_eq!(&statement.encode()[..], frame);
    }
});
