//! Untrusted bytes as the value of a node's address record in the DHT: decoding never
//! panics, never yields more than `MAX_ADDRS_PER_HINT` addresses, and a decoded list
//! re-encodes to bytes that decode to the same list.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_net::dht::{decode_addrs, encode_addrs};
use meshcore_proto::dht::envelope::MAX_ADDRS_PER_HINT;

fuzz_target!(|value: &[u8]| {
    if let Some(addrs) = decode_addrs(value) {
        assert!(addrs.len() <= MAX_ADDRS_PER_HINT);
        assert_eq!(decode_addrs(&encode_addrs(&addrs)), Some(addrs));
    }
});
