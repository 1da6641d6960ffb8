//! The link protocol: what two linked nodes say to each other on the control stream of a
//! link (ALPN [`LINK_ALPN`]), and how a link's quality is scored.
//!
//! Every frame on the stream is a 4-byte big-endian length followed by a postcard-encoded
//! [`LinkMessage`] of at most [`MAX_FRAME_LEN`] bytes. Each side's first message is a
//! [`Hello`]; a peer whose first message is not a `Hello`, whose `Hello` names an
//! incompatible version, or who sends a frame that does not decode is dropped.
//! [`decode`] checks every count and id, so a decoded message is within its stated bounds.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::identity::{NodeId, NODE_ID_LEN};
pub use crate::lane::LaneOffer;

/// The ALPN of the link protocol.
pub const LINK_ALPN: &[u8] = b"meshcore/link/1";

/// The link protocol version this code speaks. Peers must speak the same major version.
pub const LINK_PROTOCOL_VERSION: u16 = 1;

/// Largest frame accepted on a link, in bytes.
pub const MAX_FRAME_LEN: usize = 64 * 1024;

/// Most addresses a node may announce for itself or for a peer.
pub const MAX_ADDRS: usize = 8;

/// Most peers in one peer-exchange answer.
pub const MAX_PEX_PEERS: usize = 32;

bitflags::bitflags! {
    /// Services a node offers to the mesh, exchanged in [`Hello`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
    pub struct Capabilities: u32 {
        /// Forwards packets for others.
        const RELAY = 1;
        /// Stores DHT records for others.
        const STORAGE = 1 << 1;
        /// Accepts browser (WebRTC) peers.
        const BROWSER_GATEWAY = 1 << 2;
        /// Runs workloads for others.
        const COMPUTE = 1 << 3;
    }
}

impl Capabilities {
    /// The names of the set flags, as used in the API (`relay`, `storage`, …).
    pub fn names(self) -> Vec<&'static str> {
        let mut names = Vec::new();
        for (flag, name) in [
            (Self::RELAY, "relay"),
            (Self::STORAGE, "storage"),
            (Self::BROWSER_GATEWAY, "browser_gateway"),
            (Self::COMPUTE, "compute"),
        ] {
            if self.contains(flag) {
                names.push(name);
            }
        }
        names
    }
}

/// The first message on a link, from each side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// The sender's link protocol version.
    pub version: u16,
    /// What the sender offers.
    pub capabilities: Capabilities,
    /// Addresses where the sender accepts links (at most [`MAX_ADDRS`]).
    pub listen_addrs: Vec<SocketAddr>,
}

/// A node and where to reach it, as shared by peer exchange.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAddress {
    /// The node's id (raw public key bytes; checked by [`decode`]).
    pub node_id: [u8; NODE_ID_LEN],
    /// Its addresses (at most [`MAX_ADDRS`]).
    pub addrs: Vec<SocketAddr>,
}

impl PeerAddress {
    /// The checked node id. [`decode`] guarantees this succeeds for received messages.
    pub fn id(&self) -> Option<NodeId> {
        NodeId::from_bytes(self.node_id).ok()
    }
}

/// Every message of the link protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkMessage {
    /// Introduces the sender; the first message from each side.
    Hello(Hello),
    /// Asks for a sample of the receiver's peers.
    PexRequest,
    /// A sample of the sender's peers (at most [`MAX_PEX_PEERS`]).
    PexResponse(Vec<PeerAddress>),
    /// Liveness probe; answered with a `Pong` carrying the same nonce.
    Ping(u64),
    /// Answer to a `Ping`.
    Pong(u64),
    /// Offers a data lane for this link (see [`crate::lane`]); sent once by each side that
    /// runs one.
    LaneOffer(LaneOffer),
    /// The sender now receives the peer's lane datagrams: the peer may send routed packets
    /// on the lane.
    LaneReady,
    /// The sender no longer receives the peer's lane datagrams: the peer must send on the
    /// QUIC connection until the next `LaneReady`.
    LaneDown,
}

/// Why bytes from a peer were not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// The frame is larger than [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the limit of {MAX_FRAME_LEN}")]
    FrameTooLarge(usize),
    /// The bytes are not a postcard-encoded message.
    #[error("undecodable message: {0}")]
    Undecodable(String),
    /// The message decoded but breaks a bound or carries an invalid id.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// Encodes a message (without the length prefix).
pub fn encode(message: &LinkMessage) -> Vec<u8> {
    // Encoding a plain enum of integers, vectors and addresses into a Vec cannot fail.
    postcard::to_stdvec(message).unwrap_or_default()
}

/// Decodes and checks a message (without the length prefix).
pub fn decode(bytes: &[u8]) -> Result<LinkMessage, WireError> {
    if bytes.len() > MAX_FRAME_LEN {
        return Err(WireError::FrameTooLarge(bytes.len()));
    }
    let (message, rest): (LinkMessage, &[u8]) = postcard::take_from_bytes(bytes)
        .map_err(|error| WireError::Undecodable(error.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Invalid("trailing bytes after the message"));
    }
    match &message {
        LinkMessage::Hello(hello) if hello.listen_addrs.len() > MAX_ADDRS => {
            Err(WireError::Invalid("too many listen addresses"))
        }
        LinkMessage::PexResponse(peers) if peers.len() > MAX_PEX_PEERS => Err(WireError::Invalid(
            "too many peers in a peer-exchange answer",
        )),
        LinkMessage::PexResponse(peers) => {
            for peer in peers {
                if peer.addrs.len() > MAX_ADDRS {
                    return Err(WireError::Invalid("too many addresses for a peer"));
                }
                if peer.id().is_none() {
                    return Err(WireError::Invalid("a peer id is not a valid public key"));
                }
            }
            Ok(message)
        }
        _ => Ok(message),
    }
}

/// Measured state of one link.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct LinkMetrics {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Fraction of packets lost, 0.0 to 1.0.
    pub loss: f64,
    /// Bytes per second sent, averaged over the last measurement interval.
    pub throughput_up: f64,
    /// Bytes per second received, averaged over the last measurement interval.
    pub throughput_down: f64,
    /// Total bytes sent.
    pub bytes_sent: u64,
    /// Total bytes received.
    pub bytes_received: u64,
}

/// A link's quality from 0.0 (useless) to 1.0 (perfect): halves at 100 ms of RTT and
/// falls with the square of the delivery ratio.
pub fn quality_score(rtt: Duration, loss: f64) -> f64 {
    let rtt_ms = rtt.as_secs_f64() * 1000.0;
    let delivery = (1.0 - loss.clamp(0.0, 1.0)).powi(2);
    (delivery / (1.0 + rtt_ms / 100.0)).clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(seed: u8) -> [u8; 32] {
        use rand_chacha::rand_core::SeedableRng;
        *crate::NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(
            seed,
        )))
        .node_id()
        .as_bytes()
    }

    #[test]
    fn every_message_round_trips() {
        let messages = [
            LinkMessage::Hello(Hello {
                version: LINK_PROTOCOL_VERSION,
                capabilities: Capabilities::RELAY | Capabilities::STORAGE,
                listen_addrs: vec![
                    "127.0.0.1:7000".parse().expect("addr"),
                    "[::1]:7000".parse().expect("addr"),
                ],
            }),
            LinkMessage::PexRequest,
            LinkMessage::PexResponse(vec![PeerAddress {
                node_id: node(1),
                addrs: vec!["198.51.100.2:7000".parse().expect("addr")],
            }]),
            LinkMessage::Ping(7),
            LinkMessage::Pong(u64::MAX),
            LinkMessage::LaneOffer(LaneOffer {
                port: 7001,
                lane_id: u64::MAX,
                key_share: [9; 32],
            }),
            LinkMessage::LaneReady,
            LinkMessage::LaneDown,
        ];
        for message in messages {
            assert_eq!(decode(&encode(&message)), Ok(message));
        }
    }

    #[test]
    fn bounds_are_enforced_on_decode() {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let too_many_addrs = LinkMessage::Hello(Hello {
            version: 1,
            capabilities: Capabilities::empty(),
            listen_addrs: vec![addr; MAX_ADDRS + 1],
        });
        assert!(matches!(
            decode(&encode(&too_many_addrs)),
            Err(WireError::Invalid(_))
        ));
        let too_many_peers = LinkMessage::PexResponse(vec![
            PeerAddress {
                node_id: node(2),
                addrs: vec![]
            };
            MAX_PEX_PEERS + 1
        ]);
        assert!(matches!(
            decode(&encode(&too_many_peers)),
            Err(WireError::Invalid(_))
        ));
        // About half of all 32-byte strings are not curve points; find one.
        let invalid = (0u8..=255)
            .map(|i| [i; 32])
            .find(|bytes| NodeId::from_bytes(*bytes).is_err())
            .expect("an invalid point encoding exists");
        let forged = LinkMessage::PexResponse(vec![PeerAddress {
            node_id: invalid,
            addrs: vec![],
        }]);
        assert!(matches!(
            decode(&encode(&forged)),
            Err(WireError::Invalid(_))
        ));
        let mut trailing = encode(&LinkMessage::Ping(1));
        trailing.push(0);
        assert!(matches!(decode(&trailing), Err(WireError::Invalid(_))));
        assert!(matches!(
            decode(&vec![0; MAX_FRAME_LEN + 1]),
            Err(WireError::FrameTooLarge(_))
        ));
    }

    #[test]
    fn quality_prefers_fast_and_lossless_links() {
        let fast = quality_score(Duration::from_millis(1), 0.0);
        let slow = quality_score(Duration::from_millis(200), 0.0);
        let lossy = quality_score(Duration::from_millis(1), 0.3);
        assert!(fast > 0.98);
        assert!(slow < fast && lossy < fast);
        assert!((quality_score(Duration::from_millis(100), 0.0) - 0.5).abs() < 1e-9);
        assert_eq!(quality_score(Duration::ZERO, 1.0), 0.0);
    }

    #[test]
    fn capability_names() {
        assert_eq!(
            (Capabilities::RELAY | Capabilities::COMPUTE).names(),
            ["relay", "compute"]
        );
        assert!(Capabilities::empty().names().is_empty());
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn quality_is_always_in_range(rtt_ms in 0u64..100_000, loss in -1.0f64..2.0) {
            let q = quality_score(Duration::from_millis(rtt_ms), loss);
            prop_assert!((0.0..=1.0).contains(&q));
        }
    }
}
