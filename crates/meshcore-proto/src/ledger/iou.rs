//! Signed cumulative IOUs: a payer's statement "on the link from me to `payee`, in epoch
//! `epoch`, my `seq`-th IOU, I owe you `cumulative_amount` milli-tokens in total for
//! `cumulative_bytes` bytes you carried for me".
//!
//! The signature covers [`Iou::signed_message`] — `payer (32) ‖ payee (32) ‖ epoch (8) ‖
//! seq (8) ‖ cumulative_bytes (8) ‖ cumulative_amount (8)`, integers big-endian — in the
//! [`SignatureDomain::RelayIou`] domain, made with the payer's node key. The wire form
//! ([`Iou::encode`]/[`Iou::decode`]) is that message followed by the 64-byte signature:
//! exactly [`IOU_LEN`] bytes, nothing variable, so decoding cannot allocate on a lie.

use crate::identity::{
    NodeId, NodeKeypair, SignatureDomain, SignatureError, NODE_ID_LEN, SIGNATURE_LEN,
};

/// Length of the signed part of an IOU.
const SIGNED_LEN: usize = 2 * NODE_ID_LEN + 4 * 8;

/// Length of an encoded IOU: the signed part and the signature.
pub const IOU_LEN: usize = SIGNED_LEN + SIGNATURE_LEN;

/// The directed link an IOU is about: who pays whom.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IouLink {
    /// The node that owes (and signs).
    pub payer: NodeId,
    /// The node that is owed (and keeps the IOU).
    pub payee: NodeId,
}

/// A cumulative IOU signed by its payer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Iou {
    /// Who pays whom.
    pub link: IouLink,
    /// The payer's ledger epoch; a new epoch restarts the cumulative counters at zero.
    pub epoch: u64,
    /// The payer's sequence number within the epoch, strictly increasing.
    pub seq: u64,
    /// Bytes paid for on this link in this epoch, in total.
    pub cumulative_bytes: u64,
    /// Milli-tokens owed on this link in this epoch, in total.
    pub cumulative_amount: u64,
    /// Ed25519 signature of the payer over [`Iou::signed_message`].
    pub signature: [u8; SIGNATURE_LEN],
}

/// Why bytes are not an IOU.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IouDecodeError {
    /// An IOU is exactly [`IOU_LEN`] bytes.
    #[error("an IOU is {IOU_LEN} bytes, got {0}")]
    Length(usize),
    /// The payer or payee bytes are not a valid Ed25519 public key.
    #[error("IOU names an invalid node id")]
    InvalidNodeId,
}

impl Iou {
    /// Signs an IOU from `keypair`'s node to `payee`.
    pub fn sign(
        keypair: &NodeKeypair,
        payee: NodeId,
        epoch: u64,
        seq: u64,
        cumulative_bytes: u64,
        cumulative_amount: u64,
    ) -> Self {
        let link = IouLink {
            payer: keypair.node_id(),
            payee,
        };
        let message = Self::signed_message(&link, epoch, seq, cumulative_bytes, cumulative_amount);
        let signature = keypair.sign(SignatureDomain::RelayIou, &message).to_bytes();
        Self {
            link,
            epoch,
            seq,
            cumulative_bytes,
            cumulative_amount,
            signature,
        }
    }

    /// The bytes the signature covers (before domain separation).
    pub fn signed_message(
        link: &IouLink,
        epoch: u64,
        seq: u64,
        cumulative_bytes: u64,
        cumulative_amount: u64,
    ) -> [u8; SIGNED_LEN] {
        let mut bytes = [0u8; SIGNED_LEN];
        bytes[..NODE_ID_LEN].copy_from_slice(link.payer.as_bytes());
        bytes[NODE_ID_LEN..2 * NODE_ID_LEN].copy_from_slice(link.payee.as_bytes());
        let numbers = [epoch, seq, cumulative_bytes, cumulative_amount];
        for (i, n) in numbers.iter().enumerate() {
            let at = 2 * NODE_ID_LEN + 8 * i;
            bytes[at..at + 8].copy_from_slice(&n.to_be_bytes());
        }
        bytes
    }

    /// Checks the signature against the payer's key.
    pub fn verify(&self) -> Result<(), SignatureError> {
        let message = Self::signed_message(
            &self.link,
            self.epoch,
            self.seq,
            self.cumulative_bytes,
            self.cumulative_amount,
        );
        self.link
            .payer
            .verify(SignatureDomain::RelayIou, &message, &self.signature)
    }

    /// The wire form: the signed message, then the signature ([`IOU_LEN`] bytes).
    pub fn encode(&self) -> [u8; IOU_LEN] {
        let mut bytes = [0u8; IOU_LEN];
        bytes[..SIGNED_LEN].copy_from_slice(&Self::signed_message(
            &self.link,
            self.epoch,
            self.seq,
            self.cumulative_bytes,
            self.cumulative_amount,
        ));
        bytes[SIGNED_LEN..].copy_from_slice(&self.signature);
        bytes
    }

    /// Reads the wire form. Checks the length and the node ids, not the signature (that is
    /// [`Iou::verify`], done by [`Ledger::accept_iou`](crate::ledger::Ledger::accept_iou)).
    pub fn decode(bytes: &[u8]) -> Result<Self, IouDecodeError> {
        let bytes: &[u8; IOU_LEN] = bytes
            .try_into()
            .map_err(|_| IouDecodeError::Length(bytes.len()))?;
        let id = |at: usize| -> Result<NodeId, IouDecodeError> {
            let mut raw = [0u8; NODE_ID_LEN];
            raw.copy_from_slice(&bytes[at..at + NODE_ID_LEN]);
            NodeId::from_bytes(raw).map_err(|_| IouDecodeError::InvalidNodeId)
        };
        let number = |i: usize| -> u64 {
            let at = 2 * NODE_ID_LEN + 8 * i;
            let mut raw = [0u8; 8];
            raw.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(raw)
        };
        let mut signature = [0u8; SIGNATURE_LEN];
        signature.copy_from_slice(&bytes[SIGNED_LEN..]);
        Ok(Self {
            link: IouLink {
                payer: id(0)?,
                payee: id(NODE_ID_LEN)?,
            },
            epoch: number(0),
            seq: number(1),
            cumulative_bytes: number(2),
            cumulative_amount: number(3),
            signature,
        })
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
    fn signed_iou_verifies_and_round_trips() {
        let payer = keypair(1);
        let payee = keypair(2).node_id();
        let iou = Iou::sign(&payer, payee, 7, 3, 1_000_000, 100_000);
        assert_eq!(iou.verify(), Ok(()));
        assert_eq!(Iou::decode(&iou.encode()), Ok(iou));
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let payer = keypair(1);
        let payee = keypair(2).node_id();
        let iou = Iou::sign(&payer, payee, 7, 3, 1_000_000, 100_000);
        let mut changed = [
            iou.clone(),
            iou.clone(),
            iou.clone(),
            iou.clone(),
            iou.clone(),
        ];
        changed[0].epoch += 1;
        changed[1].seq += 1;
        changed[2].cumulative_bytes += 1;
        changed[3].cumulative_amount += 1;
        changed[4].link.payee = keypair(3).node_id();
        for forged in changed {
            assert_eq!(forged.verify(), Err(SignatureError::BadSignature));
        }
    }

    #[test]
    fn signature_is_domain_separated() {
        let payer = keypair(1);
        let payee = keypair(2).node_id();
        let iou = Iou::sign(&payer, payee, 0, 1, 10, 20);
        let message = Iou::signed_message(&iou.link, 0, 1, 10, 20);
        let other = payer.sign(SignatureDomain::Message, &message).to_bytes();
        let forged = Iou {
            signature: other,
            ..iou
        };
        assert_eq!(forged.verify(), Err(SignatureError::BadSignature));
    }

    #[test]
    fn decode_rejects_wrong_lengths_and_bad_ids() {
        assert_eq!(Iou::decode(&[]), Err(IouDecodeError::Length(0)));
        assert_eq!(
            Iou::decode(&[0u8; IOU_LEN + 1]),
            Err(IouDecodeError::Length(IOU_LEN + 1))
        );
        // Some 32-byte strings are not points on the curve; find one and plant it.
        let invalid = (0u8..=255)
            .map(|b| [b; NODE_ID_LEN])
            .find(|raw| NodeId::from_bytes(*raw).is_err())
            .expect("some repeated byte is not a valid key");
        let mut bytes = Iou::sign(&keypair(1), keypair(2).node_id(), 0, 1, 1, 1).encode();
        bytes[..NODE_ID_LEN].copy_from_slice(&invalid);
        assert_eq!(Iou::decode(&bytes), Err(IouDecodeError::InvalidNodeId));
        let mut bytes = Iou::sign(&keypair(1), keypair(2).node_id(), 0, 1, 1, 1).encode();
        bytes[NODE_ID_LEN..2 * NODE_ID_LEN].copy_from_slice(&invalid);
        assert_eq!(Iou::decode(&bytes), Err(IouDecodeError::InvalidNodeId));
    }
}
