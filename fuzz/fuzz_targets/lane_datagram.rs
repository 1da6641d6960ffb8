//! Untrusted bytes as a data-lane datagram: reading its header and opening it never panic,
//! nothing but a sealed datagram opens, and every frame the lane carries comes out of a
//! datagram whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use meshcore_proto::lane::{lane_header, LaneKeys, LanePayload, LaneSecret};
use meshcore_proto::NodeKeypair;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

fuzz_target!(|data: &[u8]| {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let (a, b) = (
        NodeKeypair::generate(&mut rng).node_id(),
        NodeKeypair::generate(&mut rng).node_id(),
    );
    let (secret_a, secret_b) = (
        LaneSecret::generate(4000, &mut rng),
        LaneSecret::generate(5000, &mut rng),
    );
    let Ok(keys_a) = LaneKeys::derive(&a, &b, &secret_a, &secret_b.offer()) else {
        return;
    };
    let Ok(mut keys_b) = LaneKeys::derive(&b, &a, &secret_b, &secret_a.offer()) else {
        return;
    };
    let _ = lane_header(data);
    assert!(keys_b.opener.open(data).is_err(), "unsealed bytes opened");
    if let Ok(sealed) = keys_a.sealer.seal_frame(data) {
        assert_eq!(
            keys_b.opener.open(&sealed),
            Ok(LanePayload::Frame(data.to_vec()))
        );
    }
});
