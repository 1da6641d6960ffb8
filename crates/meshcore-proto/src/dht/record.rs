//! DHT records: what a key holds, and the rules for accepting and replacing one.
//!
//! Two kinds, both carrying an absolute expiry ([`Timestamp`]):
//! - [`ImmutableRecord`]: content-addressed, its key is `SHA-256(value)`. Anyone may store
//!   it; storing it again can only extend its expiry.
//! - [`MutableRecord`]: owned, at `Key::for_mutable(owner, salt)` (as BitTorrent's BEP 44).
//!   It carries a sequence number and is signed by the owner in
//!   [`SignatureDomain::DhtRecord`] over key, sequence number, expiry and value. Only a valid
//!   signature by the owner is accepted, and only with a sequence number strictly greater
//!   than the stored one, so a replayed or stale record changes nothing. Since the key is
//!   derived from the owner, no other key can even name the slot.
//!
//! Values are at most [`MAX_VALUE_SIZE`] bytes and salts at most [`MAX_SALT_LEN`]. A record
//! is charged [`Record::stored_size`] bytes against a node's storage quota.

use serde::{Deserialize, Serialize};

use crate::dht::key::Key;
use crate::dht::message::node_id_bytes;
use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NodeKeypair, SignatureDomain, SIGNATURE_LEN};

/// Largest value a record may carry: 64 KiB.
pub const MAX_VALUE_SIZE: usize = 64 * 1024;

/// Longest salt of a mutable record.
pub const MAX_SALT_LEN: usize = 64;

/// Bytes charged per record on top of its value and salt (key, owner, signature and
/// bookkeeping).
pub const RECORD_OVERHEAD_BYTES: u64 = 192;

/// A record held under a [`Key`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// Content-addressed.
    Immutable(ImmutableRecord),
    /// Owned and signed.
    Mutable(MutableRecord),
}

/// A content-addressed record: its key is `SHA-256(value)`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImmutableRecord {
    /// The stored bytes (at most [`MAX_VALUE_SIZE`]).
    pub value: Vec<u8>,
    /// When the record stops being served.
    pub expires_at: Timestamp,
}

/// A record owned by a node, replaceable only by that node with a higher sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MutableRecord {
    /// The owner, whose key signs the record.
    #[serde(with = "node_id_bytes")]
    pub owner: NodeId,
    /// Chosen by the owner to hold several records (at most [`MAX_SALT_LEN`] bytes).
    pub salt: Vec<u8>,
    /// Version; each replacement must carry a higher one.
    pub seq: u64,
    /// The stored bytes (at most [`MAX_VALUE_SIZE`]).
    pub value: Vec<u8>,
    /// When the record stops being served (signed, so nobody else can extend it).
    pub expires_at: Timestamp,
    /// The owner's signature over key, `seq`, `expires_at` and `value`.
    pub signature: RecordSignature,
}

/// An Ed25519 signature carried in a record.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct RecordSignature(pub [u8; SIGNATURE_LEN]);

impl std::fmt::Debug for RecordSignature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RecordSignature({}…)", hex::encode(&self.0[..8]))
    }
}

// serde implements arrays only up to 32 elements; a signature travels as two halves.
impl Serialize for RecordSignature {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut first = [0u8; SIGNATURE_LEN / 2];
        let mut second = [0u8; SIGNATURE_LEN / 2];
        first.copy_from_slice(&self.0[..SIGNATURE_LEN / 2]);
        second.copy_from_slice(&self.0[SIGNATURE_LEN / 2..]);
        (first, second).serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for RecordSignature {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let (first, second): ([u8; SIGNATURE_LEN / 2], [u8; SIGNATURE_LEN / 2]) =
            Deserialize::deserialize(deserializer)?;
        let mut bytes = [0u8; SIGNATURE_LEN];
        bytes[..SIGNATURE_LEN / 2].copy_from_slice(&first);
        bytes[SIGNATURE_LEN / 2..].copy_from_slice(&second);
        Ok(Self(bytes))
    }
}

/// Why a record was refused. Also sent back to the publisher in a store answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum RecordError {
    /// The value is larger than [`MAX_VALUE_SIZE`].
    #[error("value of {len} bytes exceeds the limit of {max}")]
    ValueTooLarge {
        /// Size of the offered value.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The salt is longer than [`MAX_SALT_LEN`].
    #[error("salt of {len} bytes exceeds the limit of {max}")]
    SaltTooLong {
        /// Length of the offered salt.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The record's expiry has passed.
    #[error("the record has expired")]
    Expired,
    /// The signature does not verify with the owner's key.
    #[error("the record's signature does not verify with its owner's key")]
    BadSignature,
    /// A record with the same or a higher sequence number is already stored.
    #[error("stale record: sequence {offered} offered, {stored} already stored")]
    Stale {
        /// Sequence number already stored.
        stored: u64,
        /// Sequence number offered.
        offered: u64,
    },
    /// The stored record belongs to another owner.
    #[error("the record at this key belongs to another owner")]
    NotOwner,
    /// The stored record is of the other kind (immutable versus mutable).
    #[error("a record of another kind is stored at this key")]
    KindMismatch,
    /// The record's signed expiry lies further ahead than the node grants.
    #[error("the record expires more than {max_ttl_secs} s from now")]
    ExpiresTooLate {
        /// The longest lifetime granted, in seconds.
        max_ttl_secs: u64,
    },
    /// The record does not fit in the node's storage quota.
    #[error("storage quota full: {needed} bytes needed, {available} available")]
    QuotaExceeded {
        /// Bytes the record would take.
        needed: u64,
        /// Bytes left in the quota.
        available: u64,
    },
}

impl Record {
    /// A content-addressed record, checking the value's size.
    pub fn immutable(value: Vec<u8>, expires_at: Timestamp) -> Result<Self, RecordError> {
        check_value_size(&value)?;
        Ok(Self::Immutable(ImmutableRecord { value, expires_at }))
    }

    /// The key the record is stored under, derived from its content or owner.
    pub fn key(&self) -> Key {
        match self {
            Self::Immutable(record) => Key::for_value(&record.value),
            Self::Mutable(record) => Key::for_mutable(&record.owner, &record.salt),
        }
    }

    /// The stored bytes.
    pub fn value(&self) -> &[u8] {
        match self {
            Self::Immutable(record) => &record.value,
            Self::Mutable(record) => &record.value,
        }
    }

    /// When the record stops being served.
    pub fn expires_at(&self) -> Timestamp {
        match self {
            Self::Immutable(record) => record.expires_at,
            Self::Mutable(record) => record.expires_at,
        }
    }

    /// Bytes charged against a storage quota.
    pub fn stored_size(&self) -> u64 {
        let salt_len = match self {
            Self::Immutable(_) => 0,
            Self::Mutable(record) => record.salt.len(),
        };
        (self.value().len() + salt_len) as u64 + RECORD_OVERHEAD_BYTES
    }

    /// Checks sizes, expiry and (for a mutable record) the owner's signature.
    pub fn validate(&self, now: Timestamp) -> Result<(), RecordError> {
        check_value_size(self.value())?;
        if self.expires_at() <= now {
            return Err(RecordError::Expired);
        }
        if let Self::Mutable(record) = self {
            check_salt_len(&record.salt)?;
            let message = signed_message(
                &Key::for_mutable(&record.owner, &record.salt),
                record.seq,
                record.expires_at,
                &record.value,
            );
            record
                .owner
                .verify(SignatureDomain::DhtRecord, &message, &record.signature.0)
                .map_err(|_| RecordError::BadSignature)?;
        }
        Ok(())
    }

    /// Decides whether `self` may be stored where `existing` is stored now. Both are
    /// assumed [validated](Record::validate) and at the same key.
    pub fn may_replace(&self, existing: Option<&Record>) -> Result<(), RecordError> {
        match (existing, self) {
            (None, _) | (Some(Self::Immutable(_)), Self::Immutable(_)) => Ok(()),
            (Some(Self::Mutable(stored)), Self::Mutable(offered)) => {
                if stored.owner != offered.owner {
                    Err(RecordError::NotOwner)
                } else if offered.seq <= stored.seq {
                    Err(RecordError::Stale {
                        stored: stored.seq,
                        offered: offered.seq,
                    })
                } else {
                    Ok(())
                }
            }
            (Some(_), _) => Err(RecordError::KindMismatch),
        }
    }

    /// Whether `self` should be preferred over `other` as an answer for the same key: a
    /// mutable record with a higher sequence number, or an immutable one that lives longer.
    pub fn is_newer_than(&self, other: &Record) -> bool {
        match (self, other) {
            (Self::Mutable(a), Self::Mutable(b)) => a.seq > b.seq,
            _ => self.expires_at() > other.expires_at(),
        }
    }
}

impl MutableRecord {
    /// Builds and signs a mutable record with `keypair`, the owner.
    pub fn sign(
        keypair: &NodeKeypair,
        salt: Vec<u8>,
        seq: u64,
        value: Vec<u8>,
        expires_at: Timestamp,
    ) -> Result<Self, RecordError> {
        check_value_size(&value)?;
        check_salt_len(&salt)?;
        let owner = keypair.node_id();
        let message = signed_message(&Key::for_mutable(&owner, &salt), seq, expires_at, &value);
        let signature = RecordSignature(
            keypair
                .sign(SignatureDomain::DhtRecord, &message)
                .to_bytes(),
        );
        Ok(Self {
            owner,
            salt,
            seq,
            value,
            expires_at,
            signature,
        })
    }
}

/// The bytes an owner signs: `key || seq (BE) || expires_at (BE) || value`.
fn signed_message(key: &Key, seq: u64, expires_at: Timestamp, value: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(key.as_bytes().len() + 16 + value.len());
    message.extend_from_slice(key.as_bytes());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&expires_at.as_millis().to_be_bytes());
    message.extend_from_slice(value);
    message
}

fn check_value_size(value: &[u8]) -> Result<(), RecordError> {
    if value.len() > MAX_VALUE_SIZE {
        return Err(RecordError::ValueTooLarge {
            len: value.len() as u64,
            max: MAX_VALUE_SIZE as u64,
        });
    }
    Ok(())
}

fn check_salt_len(salt: &[u8]) -> Result<(), RecordError> {
    if salt.len() > MAX_SALT_LEN {
        return Err(RecordError::SaltTooLong {
            len: salt.len() as u64,
            max: MAX_SALT_LEN as u64,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn keypair(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    const NOW: Timestamp = Timestamp::from_millis(1_000);
    const LATER: Timestamp = Timestamp::from_millis(1_000_000);

    fn mutable(keys: &NodeKeypair, seq: u64, value: &[u8]) -> Record {
        Record::Mutable(
            MutableRecord::sign(keys, b"name".to_vec(), seq, value.to_vec(), LATER)
                .expect("small record"),
        )
    }

    #[test]
    fn an_immutable_record_is_keyed_by_its_content() {
        let record = Record::immutable(b"hello".to_vec(), LATER).expect("small value");
        assert_eq!(record.key(), Key::for_value(b"hello"));
        assert_eq!(record.validate(NOW), Ok(()));
    }

    #[test]
    fn oversized_values_and_salts_are_refused() {
        assert!(matches!(
            Record::immutable(vec![0; MAX_VALUE_SIZE + 1], LATER),
            Err(RecordError::ValueTooLarge { .. })
        ));
        assert!(matches!(
            MutableRecord::sign(&keypair(1), vec![0; MAX_SALT_LEN + 1], 1, vec![], LATER),
            Err(RecordError::SaltTooLong { .. })
        ));
    }

    #[test]
    fn an_expired_record_is_refused() {
        let record = Record::immutable(b"old".to_vec(), NOW).expect("small value");
        assert_eq!(record.validate(NOW), Err(RecordError::Expired));
    }

    #[test]
    fn a_signed_mutable_record_verifies_and_a_newer_one_replaces_it() {
        let keys = keypair(2);
        let first = mutable(&keys, 1, b"one");
        let second = mutable(&keys, 2, b"two");
        assert_eq!(first.validate(NOW), Ok(()));
        assert_eq!(first.key(), second.key());
        assert_eq!(second.may_replace(Some(&first)), Ok(()));
        assert!(second.is_newer_than(&first));
    }

    #[test]
    fn a_replayed_or_older_record_is_stale() {
        let keys = keypair(3);
        let stored = mutable(&keys, 5, b"five");
        assert_eq!(
            stored.may_replace(Some(&stored)),
            Err(RecordError::Stale {
                stored: 5,
                offered: 5
            })
        );
        assert_eq!(
            mutable(&keys, 4, b"four").may_replace(Some(&stored)),
            Err(RecordError::Stale {
                stored: 5,
                offered: 4
            })
        );
    }

    #[test]
    fn a_forged_record_does_not_verify() {
        let owner = keypair(4);
        let forger = keypair(5);
        // The forger signs with its own key but claims the owner's slot.
        let Record::Mutable(mut forged) = mutable(&forger, 9, b"evil") else {
            unreachable!("built as mutable")
        };
        forged.owner = owner.node_id();
        assert_eq!(
            Record::Mutable(forged).validate(NOW),
            Err(RecordError::BadSignature)
        );
        // A tampered value or an extended expiry breaks the owner's signature.
        let Record::Mutable(mut tampered) = mutable(&owner, 1, b"good") else {
            unreachable!("built as mutable")
        };
        tampered.expires_at = Timestamp::MAX;
        assert_eq!(
            Record::Mutable(tampered).validate(NOW),
            Err(RecordError::BadSignature)
        );
    }

    proptest! {
        #[test]
        fn any_bit_flip_in_a_signed_record_is_caught(seed: u64, value: Vec<u8>, bit in 0usize..512) {
            let keys = keypair(seed);
            let Record::Mutable(mut record) = mutable(&keys, 1, &value) else {
                unreachable!("built as mutable")
            };
            record.signature.0[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(Record::Mutable(record).validate(NOW), Err(RecordError::BadSignature));
        }
    }
}
