//! Signed route advertisements: a node's statement "I am `node`, my sequence number is
//! `seqno`, said at `issued_at`".
//!
//! The signature covers `node (32 bytes) ‖ seqno (8, big-endian) ‖ issued_at (8,
//! big-endian milliseconds)` in the
//! [`SignatureDomain::RouteAdvertisement`] domain. It is made by the node the
//! advertisement is about and relayed unchanged; the metric and path that travel beside it
//! are not signed (see [the module docs](crate::route)).

use std::fmt;

use crate::dht::time::Timestamp;
use crate::identity::{
    NodeId, NodeKeypair, SignatureDomain, SignatureError, NODE_ID_LEN, SIGNATURE_LEN,
};

/// Length of the signed message.
const SIGNED_LEN: usize = NODE_ID_LEN + 8 + 8;

/// A route advertisement signed by the node it is about.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedAdvert {
    /// The node the advertisement is about (and who signed it).
    pub node: NodeId,
    /// Its destination sequence number.
    pub seqno: u64,
    /// When it signed, on its clock (milliseconds since the drivers' common epoch).
    pub issued_at: Timestamp,
    /// Ed25519 signature over [`SignedAdvert::signed_message`].
    pub signature: [u8; SIGNATURE_LEN],
}

impl SignedAdvert {
    /// Signs an advertisement for `keypair`'s node.
    pub fn sign(keypair: &NodeKeypair, seqno: u64, issued_at: Timestamp) -> Self {
        let node = keypair.node_id();
        let message = Self::signed_message(&node, seqno, issued_at);
        let signature = keypair
            .sign(SignatureDomain::RouteAdvertisement, &message)
            .to_bytes();
        Self {
            node,
            seqno,
            issued_at,
            signature,
        }
    }

    /// The bytes the signature covers (before domain separation).
    pub fn signed_message(node: &NodeId, seqno: u64, issued_at: Timestamp) -> [u8; SIGNED_LEN] {
        let mut bytes = [0u8; SIGNED_LEN];
        bytes[..NODE_ID_LEN].copy_from_slice(node.as_bytes());
        bytes[NODE_ID_LEN..NODE_ID_LEN + 8].copy_from_slice(&seqno.to_be_bytes());
        bytes[NODE_ID_LEN + 8..].copy_from_slice(&issued_at.as_millis().to_be_bytes());
        bytes
    }

    /// Checks the signature against `node`'s key.
    pub fn verify(&self) -> Result<(), SignatureError> {
        let message = Self::signed_message(&self.node, self.seqno, self.issued_at);
        self.node.verify(
            SignatureDomain::RouteAdvertisement,
            &message,
            &self.signature,
        )
    }

    /// Whether `self` supersedes `other`: a higher sequence number, or the same one signed
    /// later.
    pub fn is_newer_than(&self, other: &SignedAdvert) -> bool {
        (self.seqno, self.issued_at) > (other.seqno, other.issued_at)
    }
}

impl fmt::Debug for SignedAdvert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedAdvert")
            .field("node", &self.node)
            .field("seqno", &self.seqno)
            .field("issued_at", &self.issued_at)
            .field(
                "signature",
                &format_args!("{}…", hex::encode(&self.signature[..8])),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn keypair(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn a_signed_advert_verifies_and_any_change_breaks_it() {
        let keys = keypair(1);
        let advert = SignedAdvert::sign(&keys, 7, Timestamp::from_millis(1_000));
        assert_eq!(advert.verify(), Ok(()));
        let mut seqno = advert.clone();
        seqno.seqno += 1;
        assert_eq!(seqno.verify(), Err(SignatureError::BadSignature));
        let mut time = advert.clone();
        time.issued_at = Timestamp::from_millis(1_001);
        assert_eq!(time.verify(), Err(SignatureError::BadSignature));
        let mut other_node = advert.clone();
        other_node.node = keypair(2).node_id();
        assert_eq!(other_node.verify(), Err(SignatureError::BadSignature));
    }

    #[test]
    fn a_signature_from_another_domain_does_not_verify() {
        let keys = keypair(3);
        let message = SignedAdvert::signed_message(&keys.node_id(), 1, Timestamp::ZERO);
        let advert = SignedAdvert {
            node: keys.node_id(),
            seqno: 1,
            issued_at: Timestamp::ZERO,
            signature: keys.sign(SignatureDomain::Message, &message).to_bytes(),
        };
        assert_eq!(advert.verify(), Err(SignatureError::BadSignature));
    }

    #[test]
    fn newer_means_higher_seqno_then_later_signature() {
        let keys = keypair(4);
        let a = SignedAdvert::sign(&keys, 5, Timestamp::from_millis(10));
        let b = SignedAdvert::sign(&keys, 5, Timestamp::from_millis(20));
        let c = SignedAdvert::sign(&keys, 6, Timestamp::from_millis(1));
        assert!(b.is_newer_than(&a) && c.is_newer_than(&b));
        assert!(!a.is_newer_than(&a));
    }
}
