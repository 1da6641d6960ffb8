//! Untrusted bytes as a node id (text and raw) and as a signature over a message.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::{NodeId, SignatureDomain};

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = text.parse::<NodeId>();
    }
    if data.len() >= 32 {
        let mut key = [0u8; 32];
        key.copy_from_slice(&data[..32]);
        if let Ok(id) = NodeId::from_bytes(key) {
            let rest = &data[32..];
            let split = rest.len().min(64);
            // A random signature over random bytes must not verify.
            assert!(id.verify(SignatureDomain::Message, &rest[split..], &rest[..split]).is_err());
        }
    }
});
