//! The fixed header of a forwarded data packet.
//!
//! ```text
//! offset  size  field
//!      0     1  version (HEADER_VERSION)
//!      1     1  hop_limit: hops the packet may still be forwarded
//!      2     4  flow_id (big-endian)
//!      6     8  sequence (big-endian)
//!     14    32  source node id
//!     46    32  destination node id
//!     78     …  payload (end-to-end encrypted; never parsed or changed by relays)
//! ```
//!
//! A relay reads the header with [`PacketHeader::decode`], looks up the next hop for
//! `destination`, and calls [`PacketHeader::forward_in_place`], which changes only the
//! `hop_limit` byte. The payload is never copied or interpreted here.

use crate::identity::{NodeId, NODE_ID_LEN};

/// The header format version this code reads and writes.
pub const HEADER_VERSION: u8 = 1;

/// Length of the header in bytes.
pub const HEADER_LEN: usize = 2 + 4 + 8 + 2 * NODE_ID_LEN;

const SOURCE_AT: usize = 14;
const DESTINATION_AT: usize = SOURCE_AT + NODE_ID_LEN;

/// The routing header of a data packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PacketHeader {
    /// Hops the packet may still be forwarded.
    pub hop_limit: u8,
    /// The sender's flow, for per-flow accounting and ordering.
    pub flow_id: u32,
    /// The packet's number within its flow.
    pub sequence: u64,
    /// The node that sent the packet.
    pub source: NodeId,
    /// The node the packet is for.
    pub destination: NodeId,
}

/// Why bytes are not a packet this node can forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Fewer bytes than a header.
    #[error("packet of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    TooShort(usize),
    /// A header version this code does not know.
    #[error("unknown packet header version {0}")]
    UnknownVersion(u8),
    /// The source or destination is not a valid node id.
    #[error("a node id in the packet header is not a valid public key")]
    InvalidNodeId,
    /// The hop limit is used up; the packet must not be forwarded.
    #[error("hop limit reached")]
    HopLimitReached,
}

impl PacketHeader {
    /// The packet: this header followed by `payload`.
    pub fn encode(&self, payload: &[u8]) -> Vec<u8> {
        let mut packet = Vec::with_capacity(HEADER_LEN + payload.len());
        packet.push(HEADER_VERSION);
        packet.push(self.hop_limit);
        packet.extend_from_slice(&self.flow_id.to_be_bytes());
        packet.extend_from_slice(&self.sequence.to_be_bytes());
        packet.extend_from_slice(self.source.as_bytes());
        packet.extend_from_slice(self.destination.as_bytes());
        packet.extend_from_slice(payload);
        packet
    }

    /// Reads the header of `packet`; returns it and the untouched payload.
    pub fn decode(packet: &[u8]) -> Result<(PacketHeader, &[u8]), HeaderError> {
        let header = packet
            .get(..HEADER_LEN)
            .ok_or(HeaderError::TooShort(packet.len()))?;
        if header[0] != HEADER_VERSION {
            return Err(HeaderError::UnknownVersion(header[0]));
        }
        let mut flow_id = [0u8; 4];
        flow_id.copy_from_slice(&header[2..6]);
        let mut sequence = [0u8; 8];
        sequence.copy_from_slice(&header[6..SOURCE_AT]);
        let id = |at: usize| {
            let mut bytes = [0u8; NODE_ID_LEN];
            bytes.copy_from_slice(&header[at..at + NODE_ID_LEN]);
            NodeId::from_bytes(bytes).map_err(|_| HeaderError::InvalidNodeId)
        };
        Ok((
            PacketHeader {
                hop_limit: header[1],
                flow_id: u32::from_be_bytes(flow_id),
                sequence: u64::from_be_bytes(sequence),
                source: id(SOURCE_AT)?,
                destination: id(DESTINATION_AT)?,
            },
            &packet[HEADER_LEN..],
        ))
    }

    /// The destination's raw key bytes, read without decoding the rest of the header or
    /// checking that they are a valid key: what a relay needs to pick the next hop (see
    /// [`Router::next_hop_for`](crate::route::Router::next_hop_for)). Checks the length and
    /// the version.
    pub fn peek_destination(packet: &[u8]) -> Result<&[u8; NODE_ID_LEN], HeaderError> {
        let header = packet
            .get(..HEADER_LEN)
            .ok_or(HeaderError::TooShort(packet.len()))?;
        if header[0] != HEADER_VERSION {
            return Err(HeaderError::UnknownVersion(header[0]));
        }
        header[DESTINATION_AT..DESTINATION_AT + NODE_ID_LEN]
            .try_into()
            .map_err(|_| HeaderError::TooShort(packet.len()))
    }

    /// The source's raw key bytes, read like [`PacketHeader::peek_destination`] (length and
    /// version checked, key not validated): what a relay needs to tell flows apart.
    pub fn peek_source(packet: &[u8]) -> Result<&[u8; NODE_ID_LEN], HeaderError> {
        let header = packet
            .get(..HEADER_LEN)
            .ok_or(HeaderError::TooShort(packet.len()))?;
        if header[0] != HEADER_VERSION {
            return Err(HeaderError::UnknownVersion(header[0]));
        }
        header[SOURCE_AT..SOURCE_AT + NODE_ID_LEN]
            .try_into()
            .map_err(|_| HeaderError::TooShort(packet.len()))
    }

    /// Prepares `packet` to be passed on: decrements its hop limit in place and returns
    /// the new value. Refuses a packet whose hop limit is already 0. Touches nothing else.
    pub fn forward_in_place(packet: &mut [u8]) -> Result<u8, HeaderError> {
        if packet.len() < HEADER_LEN {
            return Err(HeaderError::TooShort(packet.len()));
        }
        if packet[0] != HEADER_VERSION {
            return Err(HeaderError::UnknownVersion(packet[0]));
        }
        let remaining = packet[1]
            .checked_sub(1)
            .ok_or(HeaderError::HopLimitReached)?;
        packet[1] = remaining;
        Ok(remaining)
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
    fn a_packet_round_trips_and_forwarding_changes_only_the_hop_limit() {
        let header = PacketHeader {
            hop_limit: 2,
            flow_id: 7,
            sequence: u64::MAX,
            source: id(1),
            destination: id(2),
        };
        let payload = b"opaque ciphertext";
        let mut packet = header.encode(payload);
        assert_eq!(packet.len(), HEADER_LEN + payload.len());
        assert_eq!(PacketHeader::decode(&packet), Ok((header, &payload[..])));
        assert_eq!(PacketHeader::peek_source(&packet), Ok(id(1).as_bytes()));
        assert_eq!(
            PacketHeader::peek_destination(&packet),
            Ok(id(2).as_bytes())
        );
        let before = packet.clone();
        assert_eq!(PacketHeader::forward_in_place(&mut packet), Ok(1));
        assert_eq!(packet[2..], before[2..]);
        assert_eq!(PacketHeader::forward_in_place(&mut packet), Ok(0));
        assert_eq!(
            PacketHeader::forward_in_place(&mut packet),
            Err(HeaderError::HopLimitReached)
        );
    }

    #[test]
    fn short_unknown_and_invalid_headers_are_refused() {
        let header = PacketHeader {
            hop_limit: 1,
            flow_id: 0,
            sequence: 0,
            source: id(1),
            destination: id(2),
        };
        let packet = header.encode(&[]);
        assert_eq!(
            PacketHeader::decode(&packet[..HEADER_LEN - 1]),
            Err(HeaderError::TooShort(HEADER_LEN - 1))
        );
        let mut wrong_version = packet.clone();
        wrong_version[0] = 2;
        assert_eq!(
            PacketHeader::decode(&wrong_version),
            Err(HeaderError::UnknownVersion(2))
        );
        assert_eq!(
            PacketHeader::forward_in_place(&mut wrong_version),
            Err(HeaderError::UnknownVersion(2))
        );
        let invalid = (0u8..=255)
            .map(|i| [i; NODE_ID_LEN])
            .find(|bytes| NodeId::from_bytes(*bytes).is_err())
            .expect("an invalid point encoding exists");
        let mut bad_id = packet;
        bad_id[DESTINATION_AT..].copy_from_slice(&invalid);
        assert_eq!(
            PacketHeader::decode(&bad_id),
            Err(HeaderError::InvalidNodeId)
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(mut bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = PacketHeader::decode(&bytes);
            let _ = PacketHeader::forward_in_place(&mut bytes);
        }
    }
}
