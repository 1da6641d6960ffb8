//! Node identities and message signatures.
//!
//! A node is its Ed25519 key. The [`NodeId`] is the 32-byte public key, written as 64
//! lowercase hex characters. Every signature is *domain-separated*: the signed bytes are
//! `"meshcore-sig-v1" || 0x00 || domain || 0x00 || message`, so a signature made for one
//! purpose (say, a route advertisement) can never be replayed as another (a DHT record).
//! Verification uses `verify_strict`, which rejects non-canonical and small-order keys.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Prefix of every signed message; changing the signing format means changing this tag.
const SIGNATURE_CONTEXT: &[u8] = b"meshcore-sig-v1";

/// Length of a node id in bytes (an Ed25519 public key).
pub const NODE_ID_LEN: usize = 32;

/// Length of a signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// The public identity of a node: its Ed25519 public key.
///
/// Its text form is 64 lowercase hex characters; parsing accepts either case.
/// A `NodeId` always holds a valid curve point (it is checked when built).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId([u8; NODE_ID_LEN]);

/// Why a node id or a signature was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The text is not 64 hex characters.
    #[error("a node id is 64 hex characters (32 bytes); got {0}")]
    MalformedNodeId(String),
    /// The bytes are not a valid Ed25519 public key.
    #[error("the node id is not a valid Ed25519 public key")]
    InvalidPublicKey,
    /// The signature does not have the right length.
    #[error("a signature is {SIGNATURE_LEN} bytes; got {0}")]
    SignatureLength(usize),
    /// The signature does not match the message, the key or the domain.
    #[error("signature verification failed")]
    BadSignature,
}

impl NodeId {
    /// Builds a node id from raw public-key bytes, checking that they are a valid key.
    pub fn from_bytes(bytes: [u8; NODE_ID_LEN]) -> Result<Self, SignatureError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::InvalidPublicKey)?;
        Ok(Self(bytes))
    }

    /// Wraps bytes **without** checking them, only to search a map keyed by `NodeId` (a
    /// relay looking up a packet's destination): such a value must never leave the lookup,
    /// since every other `NodeId` holds a valid key. Bytes that are not a valid key are
    /// simply never found.
    pub(crate) const fn lookup_key(bytes: [u8; NODE_ID_LEN]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes of the public key.
    pub fn as_bytes(&self) -> &[u8; NODE_ID_LEN] {
        &self.0
    }

    /// The lowercase hex text form (64 characters).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The node's position in the Kademlia key space: SHA-256 of the public key.
    pub fn dht_key(&self) -> [u8; 32] {
        Sha256::digest(self.0).into()
    }

    /// Checks `signature` over `message` in `domain` against this node's key.
    ///
    /// `signature` is taken as a slice so that truncated or padded input from the wire is
    /// rejected here with [`SignatureError::SignatureLength`] rather than by the caller.
    pub fn verify(
        &self,
        domain: SignatureDomain,
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), SignatureError> {
        let signature = ed25519_dalek::Signature::from_slice(signature)
            .map_err(|_| SignatureError::SignatureLength(signature.len()))?;
        let key =
            VerifyingKey::from_bytes(&self.0).map_err(|_| SignatureError::InvalidPublicKey)?;
        key.verify_strict(&signed_bytes(domain, message), &signature)
            .map_err(|_| SignatureError::BadSignature)
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Short form keeps logs readable; the full id is in Display.
        write!(f, "NodeId({})", &self.to_hex()[..12])
    }
}

impl FromStr for NodeId {
    type Err = SignatureError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let mut bytes = [0u8; NODE_ID_LEN];
        if text.len() != NODE_ID_LEN * 2 {
            return Err(SignatureError::MalformedNodeId(format!(
                "{} characters",
                text.chars().count()
            )));
        }
        hex::decode_to_slice(text, &mut bytes).map_err(|_| {
            SignatureError::MalformedNodeId("characters that are not hex digits".to_owned())
        })?;
        Self::from_bytes(bytes)
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// What a signature is for. Each domain signs different bytes, so signatures never cross
/// purposes. New protocol messages add a variant here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SignatureDomain {
    /// A general application message signed by its sender.
    Message,
    /// A route advertisement signed by the node it describes.
    RouteAdvertisement,
    /// A mutable DHT record signed by its owner.
    DhtRecord,
    /// A service registry entry signed by its provider.
    ServiceRecord,
    /// A DHT provider record ([`crate::dht::provider`]) signed by the node it names as
    /// provider.
    DhtProvider,
    /// A cumulative relay IOU signed by the payer.
    RelayIou,
    /// A WebRTC DTLS fingerprint bound to a node identity.
    DtlsFingerprint,
    /// A browser registering on a node's signaling socket (answering its challenge).
    SignalHello,
    /// A browser's message for another peer, carried across the mesh by nodes
    /// ([`crate::browser_mesh`]).
    BrowserMessage,
}

impl SignatureDomain {
    /// The tag mixed into the signed bytes.
    pub fn tag(self) -> &'static [u8] {
        match self {
            Self::Message => b"message",
            Self::RouteAdvertisement => b"route-advertisement",
            Self::DhtRecord => b"dht-record",
            Self::ServiceRecord => b"service-record",
            Self::DhtProvider => b"dht-provider",
            Self::RelayIou => b"relay-iou",
            Self::DtlsFingerprint => b"dtls-fingerprint",
            Self::SignalHello => b"signal-hello",
            Self::BrowserMessage => b"browser-message",
        }
    }
}

fn signed_bytes(domain: SignatureDomain, message: &[u8]) -> Vec<u8> {
    let tag = domain.tag();
    let mut bytes = Vec::with_capacity(SIGNATURE_CONTEXT.len() + tag.len() + message.len() + 2);
    bytes.extend_from_slice(SIGNATURE_CONTEXT);
    bytes.push(0);
    bytes.extend_from_slice(tag);
    bytes.push(0);
    bytes.extend_from_slice(message);
    bytes
}

/// A signature made by a [`NodeKeypair`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NodeSignature([u8; SIGNATURE_LEN]);

impl NodeSignature {
    /// The raw 64 bytes.
    pub fn to_bytes(&self) -> [u8; SIGNATURE_LEN] {
        self.0
    }
}

impl fmt::Debug for NodeSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeSignature({}…)", hex::encode(&self.0[..8]))
    }
}

/// A node's private identity: the Ed25519 signing key.
///
/// The secret never appears in `Debug` output. The key is zeroized when dropped.
pub struct NodeKeypair {
    signing_key: SigningKey,
}

impl NodeKeypair {
    /// Generates a new keypair from the given cryptographic RNG.
    pub fn generate(rng: &mut impl CryptoRngCore) -> Self {
        Self {
            signing_key: SigningKey::generate(rng),
        }
    }

    /// Wraps an existing signing key (for example one read from a key file).
    pub fn from_signing_key(signing_key: SigningKey) -> Self {
        Self { signing_key }
    }

    /// The underlying signing key, for serialising it to the key file.
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing_key
    }

    /// This node's public identity.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.signing_key.verifying_key().to_bytes())
    }

    /// Signs `message` for `domain`.
    pub fn sign(&self, domain: SignatureDomain, message: &[u8]) -> NodeSignature {
        NodeSignature(
            self.signing_key
                .sign(&signed_bytes(domain, message))
                .to_bytes(),
        )
    }
}

impl fmt::Debug for NodeKeypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeKeypair")
            .field("node_id", &self.node_id())
            .field("secret", &"<redacted>")
            .finish()
    }
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

    #[test]
    fn a_valid_signature_verifies() {
        let keys = keypair(1);
        let signature = keys.sign(SignatureDomain::Message, b"hello mesh");
        keys.node_id()
            .verify(
                SignatureDomain::Message,
                b"hello mesh",
                &signature.to_bytes(),
            )
            .expect("own signature verifies");
    }

    #[test]
    fn a_flipped_bit_in_the_message_is_rejected() {
        let keys = keypair(2);
        let signature = keys.sign(SignatureDomain::Message, b"hello mesh");
        let mut message = b"hello mesh".to_vec();
        message[3] ^= 0x01;
        assert_eq!(
            keys.node_id()
                .verify(SignatureDomain::Message, &message, &signature.to_bytes()),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn a_flipped_bit_in_the_signature_is_rejected() {
        let keys = keypair(3);
        let mut signature = keys.sign(SignatureDomain::Message, b"payload").to_bytes();
        signature[10] ^= 0x80;
        assert_eq!(
            keys.node_id()
                .verify(SignatureDomain::Message, b"payload", &signature),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn a_wrong_key_is_rejected() {
        let signer = keypair(4);
        let other = keypair(5);
        let signature = signer.sign(SignatureDomain::Message, b"payload");
        assert_eq!(
            other
                .node_id()
                .verify(SignatureDomain::Message, b"payload", &signature.to_bytes()),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn a_truncated_signature_is_rejected() {
        let keys = keypair(6);
        let signature = keys.sign(SignatureDomain::Message, b"payload").to_bytes();
        assert_eq!(
            keys.node_id()
                .verify(SignatureDomain::Message, b"payload", &signature[..63]),
            Err(SignatureError::SignatureLength(63))
        );
        assert_eq!(
            keys.node_id()
                .verify(SignatureDomain::Message, b"payload", &[]),
            Err(SignatureError::SignatureLength(0))
        );
    }

    #[test]
    fn a_signature_does_not_cross_domains() {
        let keys = keypair(7);
        let signature = keys.sign(SignatureDomain::RouteAdvertisement, b"payload");
        assert_eq!(
            keys.node_id().verify(
                SignatureDomain::DhtRecord,
                b"payload",
                &signature.to_bytes()
            ),
            Err(SignatureError::BadSignature)
        );
    }

    #[test]
    fn node_id_text_round_trips_and_rejects_garbage() {
        let id = keypair(8).node_id();
        assert_eq!(id.to_hex().parse::<NodeId>(), Ok(id));
        assert_eq!(id.to_hex().to_uppercase().parse::<NodeId>(), Ok(id));
        assert!(matches!(
            "abc".parse::<NodeId>(),
            Err(SignatureError::MalformedNodeId(_))
        ));
        assert!(matches!(
            "zz".repeat(32).parse::<NodeId>(),
            Err(SignatureError::MalformedNodeId(_))
        ));
        // Multi-byte characters must not panic the length check.
        assert!("é".repeat(32).parse::<NodeId>().is_err());
    }

    #[test]
    fn debug_output_never_shows_the_secret() {
        let keys = keypair(9);
        let secret_hex = hex::encode(keys.signing_key().to_bytes());
        let debug = format!("{keys:?}");
        assert!(!debug.contains(&secret_hex));
        assert!(debug.contains("redacted"));
    }

    proptest! {
        #[test]
        fn any_single_bit_flip_breaks_the_signature(seed: u64, message: Vec<u8>, bit in 0usize..512) {
            let keys = keypair(seed);
            let mut signature = keys.sign(SignatureDomain::Message, &message).to_bytes();
            signature[bit / 8] ^= 1 << (bit % 8);
            prop_assert!(keys.node_id().verify(SignatureDomain::Message, &message, &signature).is_err());
        }

        #[test]
        fn parsing_arbitrary_text_never_panics(text in ".{0,80}") {
            let _ = text.parse::<NodeId>();
        }
    }
}
