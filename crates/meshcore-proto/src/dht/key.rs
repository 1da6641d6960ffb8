//! The Kademlia key space: 256-bit [`Key`]s and the XOR [`Distance`] between them.
//!
//! A node sits at `SHA-256(node id)` ([`Key::for_node`]); an immutable record at
//! `SHA-256(value)` ([`Key::for_value`]); a mutable record at
//! `SHA-256("meshcore-dht-mutable-v1" || owner || salt)` ([`Key::for_mutable`]), so only
//! its owner can ever produce a record for it; the providers of a service name gather at
//! `SHA-256("meshcore-dht-service-v1" || 0 || name)` ([`Key::for_topic`]). Distances compare as 256-bit big-endian
//! integers, which makes "closer" a total order and `a ^ t == b ^ t` imply `a == b`.

use std::fmt;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::NodeId;

/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// Number of bits in a key, and so the number of k-buckets.
pub const KEY_BITS: usize = KEY_LEN * 8;

/// Domain tag hashed in front of a mutable record's owner and salt.
const MUTABLE_KEY_TAG: &[u8] = b"meshcore-dht-mutable-v1";

/// Domain tag hashed in front of a service name to give its topic key.
const TOPIC_KEY_TAG: &[u8] = b"meshcore-dht-service-v1";

/// A point in the 256-bit Kademlia key space.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Wraps raw key bytes.
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// A node's position: SHA-256 of its public key.
    pub fn for_node(node: &NodeId) -> Self {
        Self(node.dht_key())
    }

    /// An immutable record's key: SHA-256 of its value (content addressing).
    pub fn for_value(value: &[u8]) -> Self {
        Self(Sha256::digest(value).into())
    }

    /// A mutable record's key: bound to its owner and a salt chosen by the owner.
    pub fn for_mutable(owner: &NodeId, salt: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(MUTABLE_KEY_TAG);
        hasher.update([0]);
        hasher.update(owner.as_bytes());
        hasher.update(salt);
        Self(hasher.finalize().into())
    }

    /// The topic key of a service name: where the
    /// [provider records](crate::dht::provider::ProviderRecord) of that name gather.
    pub fn for_topic(name: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hasher.update(TOPIC_KEY_TAG);
        hasher.update([0]);
        hasher.update(name);
        Self(hasher.finalize().into())
    }

    /// The XOR distance to `other`.
    pub fn distance(&self, other: &Key) -> Distance {
        let mut bytes = [0u8; KEY_LEN];
        for (byte, (a, b)) in bytes.iter_mut().zip(self.0.iter().zip(other.0.iter())) {
            *byte = a ^ b;
        }
        Distance(bytes)
    }

    /// A key whose distance to `self` has its highest set bit at `bucket` (so it falls in
    /// k-bucket `bucket` of a table centred on `self`); the lower bits come from `noise`.
    ///
    /// # Panics
    ///
    /// Never: `bucket` is reduced modulo [`KEY_BITS`].
    pub fn random_in_bucket(&self, bucket: usize, noise: [u8; KEY_LEN]) -> Key {
        let bucket = bucket % KEY_BITS;
        // Distance bit `bucket` counts from the least significant end.
        let byte_index = KEY_LEN - 1 - bucket / 8;
        let bit = bucket % 8;
        let mut distance = [0u8; KEY_LEN];
        distance[byte_index] = (noise[byte_index] & ((1u8 << bit) - 1)) | (1u8 << bit);
        distance[byte_index + 1..].copy_from_slice(&noise[byte_index + 1..]);
        let mut bytes = self.0;
        for (byte, d) in bytes.iter_mut().zip(distance.iter()) {
            *byte ^= d;
        }
        Key(bytes)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", hex::encode(&self.0[..6]))
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

/// The XOR distance between two keys, ordered as a 256-bit big-endian integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Distance([u8; KEY_LEN]);

impl Distance {
    /// The zero distance (a key to itself).
    pub const ZERO: Distance = Distance([0; KEY_LEN]);

    /// The raw bytes, most significant first.
    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Number of leading zero bits (256 for the zero distance): the length of the prefix
    /// the two keys share.
    pub fn leading_zeros(&self) -> u32 {
        let mut zeros = 0;
        for byte in self.0 {
            if byte == 0 {
                zeros += 8;
            } else {
                return zeros + byte.leading_zeros();
            }
        }
        zeros
    }

    /// The k-bucket this distance falls in: the index of its highest set bit (0 ..= 255),
    /// or `None` for the zero distance, which no bucket holds.
    pub fn bucket_index(&self) -> Option<usize> {
        let zeros = self.leading_zeros() as usize;
        (zeros < KEY_BITS).then(|| KEY_BITS - 1 - zeros)
    }
}

impl fmt::Debug for Distance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Distance({})", hex::encode(&self.0[..6]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(bytes: [u8; KEY_LEN]) -> Key {
        Key::from_bytes(bytes)
    }

    #[test]
    fn bucket_index_is_the_highest_differing_bit() {
        let origin = key([0; KEY_LEN]);
        let mut far = [0; KEY_LEN];
        far[0] = 0x80;
        assert_eq!(origin.distance(&key(far)).bucket_index(), Some(255));
        let mut near = [0; KEY_LEN];
        near[31] = 1;
        assert_eq!(origin.distance(&key(near)).bucket_index(), Some(0));
        assert_eq!(origin.distance(&origin).bucket_index(), None);
    }

    #[test]
    fn content_keys_are_sha256() {
        // SHA-256("abc"), the FIPS 180-2 test vector.
        assert_eq!(
            Key::for_value(b"abc").to_string(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn topic_keys_are_domain_separated() {
        assert_eq!(Key::for_topic(b"printer"), Key::for_topic(b"printer"));
        assert_ne!(Key::for_topic(b"printer"), Key::for_topic(b"scanner"));
        assert_ne!(Key::for_topic(b"printer"), Key::for_value(b"printer"));
        let mut tagged = TOPIC_KEY_TAG.to_vec();
        tagged.push(0);
        tagged.extend_from_slice(b"printer");
        assert_eq!(Key::for_topic(b"printer"), Key::for_value(&tagged));
    }

    proptest! {
        #[test]
        fn distance_to_self_is_zero(a: [u8; 32]) {
            prop_assert_eq!(key(a).distance(&key(a)), Distance::ZERO);
        }

        #[test]
        fn distance_is_symmetric(a: [u8; 32], b: [u8; 32]) {
            prop_assert_eq!(key(a).distance(&key(b)), key(b).distance(&key(a)));
        }

        #[test]
        fn distance_is_zero_only_for_equal_keys(a: [u8; 32], b: [u8; 32]) {
            prop_assert_eq!(key(a).distance(&key(b)) == Distance::ZERO, a == b);
        }

        #[test]
        fn distances_compose_by_xor_hence_the_triangle_inequality(a: [u8; 32], b: [u8; 32], c: [u8; 32]) {
            // d(a,c) = d(a,b) ^ d(b,c), and x ^ y <= x + y for unsigned integers, so
            // d(a,c) <= d(a,b) + d(b,c).
            let (ab, bc, ac) = (key(a).distance(&key(b)), key(b).distance(&key(c)), key(a).distance(&key(c)));
            let xor: Vec<u8> = ab.as_bytes().iter().zip(bc.as_bytes()).map(|(x, y)| x ^ y).collect();
            prop_assert_eq!(ac.as_bytes().to_vec(), xor);
        }

        #[test]
        fn distance_from_a_target_is_unique(t: [u8; 32], a: [u8; 32], b: [u8; 32]) {
            prop_assume!(a != b);
            prop_assert_ne!(key(t).distance(&key(a)), key(t).distance(&key(b)));
        }

        #[test]
        fn random_in_bucket_lands_in_that_bucket(origin: [u8; 32], noise: [u8; 32], bucket in 0usize..256) {
            let target = key(origin).random_in_bucket(bucket, noise);
            prop_assert_eq!(key(origin).distance(&target).bucket_index(), Some(bucket));
        }
    }
}
