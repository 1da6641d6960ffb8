//! [`RelayNotice`]: "relay `relay` refused the flow from `source` to `destination`, because
//! `reason`", sent by the refusing relay to the neighbour the packet came from and passed
//! on, hop by hop, towards `source`.
//!
//! The wire form is fixed, [`NOTICE_LEN`] bytes:
//!
//! ```text
//! offset  size  field
//!      0     1  version (1)
//!      1     1  reason (RelayRefusal::code)
//!      2     1  hop_limit: hops the notice may still be passed on
//!      3    32  relay: the refusing node
//!     35    32  source: the flow's source, which the notice travels to
//!     67    32  destination: the flow's destination
//! ```
//!
//! A notice is not signed: only its first hop is authenticated (by the link). A forged one
//! can only make a source log a refusal and see an event; the route error the refusing relay
//! sends with it is what moves routes, and that withdraws only routes through its sender.

use crate::identity::{NodeId, NODE_ID_LEN};
use crate::relay::limiter::RelayRefusal;

/// The notice format version this code reads and writes.
const NOTICE_VERSION: u8 = 1;

/// Length of an encoded notice.
pub const NOTICE_LEN: usize = 3 + 3 * NODE_ID_LEN;

/// A relay's refusal of a flow, on its way to the flow's source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RelayNotice {
    /// Why: [`RelayRefusal::Disabled`], [`RelayRefusal::Saturated`],
    /// [`RelayRefusal::TooManyFlows`] or [`RelayRefusal::Unpaid`].
    pub reason: RelayRefusal,
    /// Hops the notice may still be passed on.
    pub hop_limit: u8,
    /// The refusing relay.
    pub relay: NodeId,
    /// The flow's source.
    pub source: NodeId,
    /// The flow's destination.
    pub destination: NodeId,
}

/// Why bytes are not a notice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoticeDecodeError {
    /// A notice is exactly [`NOTICE_LEN`] bytes.
    #[error("a relay notice is {NOTICE_LEN} bytes, got {0}")]
    Length(usize),
    /// A version this code does not know.
    #[error("unknown relay notice version {0}")]
    UnknownVersion(u8),
    /// A reason code this code does not know, or one that is never sent.
    #[error("unknown relay refusal reason {0}")]
    UnknownReason(u8),
    /// A node id is not a valid public key.
    #[error("a relay notice names an invalid node id")]
    InvalidNodeId,
}

impl RelayNotice {
    /// The wire form.
    pub fn encode(&self) -> [u8; NOTICE_LEN] {
        let mut bytes = [0u8; NOTICE_LEN];
        bytes[0] = NOTICE_VERSION;
        bytes[1] = self.reason.code();
        bytes[2] = self.hop_limit;
        for (i, id) in [self.relay, self.source, self.destination]
            .iter()
            .enumerate()
        {
            let at = 3 + i * NODE_ID_LEN;
            bytes[at..at + NODE_ID_LEN].copy_from_slice(id.as_bytes());
        }
        bytes
    }

    /// Reads the wire form, checking the length, version, reason and node ids.
    pub fn decode(bytes: &[u8]) -> Result<Self, NoticeDecodeError> {
        let bytes: &[u8; NOTICE_LEN] = bytes
            .try_into()
            .map_err(|_| NoticeDecodeError::Length(bytes.len()))?;
        if bytes[0] != NOTICE_VERSION {
            return Err(NoticeDecodeError::UnknownVersion(bytes[0]));
        }
        let reason = RelayRefusal::from_code(bytes[1])
            .filter(|reason| reason.is_flow_refusal())
            .ok_or(NoticeDecodeError::UnknownReason(bytes[1]))?;
        let id = |i: usize| -> Result<NodeId, NoticeDecodeError> {
            let at = 3 + i * NODE_ID_LEN;
            let mut raw = [0u8; NODE_ID_LEN];
            raw.copy_from_slice(&bytes[at..at + NODE_ID_LEN]);
            NodeId::from_bytes(raw).map_err(|_| NoticeDecodeError::InvalidNodeId)
        };
        Ok(Self {
            reason,
            hop_limit: bytes[2],
            relay: id(0)?,
            source: id(1)?,
            destination: id(2)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    #[test]
    fn a_notice_round_trips_and_bad_ones_are_named() {
        let notice = RelayNotice {
            reason: RelayRefusal::Saturated,
            hop_limit: 9,
            relay: id(1),
            source: id(2),
            destination: id(3),
        };
        let bytes = notice.encode();
        assert_eq!(RelayNotice::decode(&bytes), Ok(notice));
        assert_eq!(
            RelayNotice::decode(&bytes[1..]),
            Err(NoticeDecodeError::Length(NOTICE_LEN - 1))
        );
        let mut other = bytes;
        other[0] = 2;
        assert_eq!(
            RelayNotice::decode(&other),
            Err(NoticeDecodeError::UnknownVersion(2))
        );
        let mut other = bytes;
        other[1] = RelayRefusal::OverCap.code();
        assert_eq!(
            RelayNotice::decode(&other),
            Err(NoticeDecodeError::UnknownReason(other[1])),
            "a dropped packet is never the subject of a notice"
        );
        let invalid = (0u8..=255)
            .map(|b| [b; NODE_ID_LEN])
            .find(|raw| NodeId::from_bytes(*raw).is_err())
            .expect("some repeated byte is not a valid key");
        let mut other = bytes;
        other[3 + NODE_ID_LEN..3 + 2 * NODE_ID_LEN].copy_from_slice(&invalid);
        assert_eq!(
            RelayNotice::decode(&other),
            Err(NoticeDecodeError::InvalidNodeId)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn arbitrary_bytes_never_panic_and_what_decodes_re_encodes(
            bytes in proptest::collection::vec(any::<u8>(), 0..(2 * NOTICE_LEN))
        ) {
            if let Ok(notice) = RelayNotice::decode(&bytes) {
                prop_assert_eq!(&notice.encode()[..], &bytes[..]);
            }
        }
    }
}
