//! Untrusted bytes as a sealed end-to-end payload: decoding never panics, a decoded payload
//! re-encodes to the same bytes, and opening the bytes (claimed by any sender, at any
//! time) never panics, never authenticates and leaves the receiver without state.
#![no_main]

use ed25519_dalek::SigningKey;
use libfuzzer_sys::fuzz_target;
use meshcore_proto::e2e::{Receiver, ReceiverConfig, SealedPayload};
use meshcore_proto::route::Timestamp;
use meshcore_proto::{NodeId, NodeKeypair};

fuzz_target!(|data: &[u8]| {
    if let Ok(payload) = SealedPayload::decode(data) {
        assert_eq!(payload.encoded_len(), data.len());
        assert_eq!(payload.encode(), data);
    }
    // The first 32 bytes name the sender, the next 8 the receiver's clock; the rest is
    // the payload.
    if data.len() < 40 {
        return;
    }
    let mut sender = [0u8; 32];
    sender.copy_from_slice(&data[..32]);
    let Ok(sender) = NodeId::from_bytes(sender) else {
        return;
    };
    let mut now = [0u8; 8];
    now.copy_from_slice(&data[32..40]);
    let now = Timestamp::from_millis(u64::from_be_bytes(now));
    let local = NodeKeypair::from_signing_key(SigningKey::from_bytes(&[7; 32]));
    let mut receiver = Receiver::new(&local, ReceiverConfig::new());
    assert!(receiver.open_bytes(now, sender, &data[40..], &[]).is_err());
    assert_eq!(receiver.n_sessions(), 0);
});
