//! The DHT's frame on the wire: a [`Message`] plus **address hints**.
//!
//! The Kademlia core names peers by [`NodeId`] only. A node that receives those names must
//! also learn where to dial them, so the driver attaches, to each message naming peers, the
//! addresses it knows for them. Hints are untrusted: dialing a wrong address fails the QUIC
//! handshake (the node id is the TLS key), so a lying peer wastes a dial, nothing more.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::dht::message::{self, Message, WireError, MAX_MESSAGE_LEN, MAX_PEERS_PER_RESPONSE};
use crate::identity::{NodeId, NODE_ID_LEN};

/// Most hints in one envelope: one per peer a response may name.
pub const MAX_HINTS: usize = MAX_PEERS_PER_RESPONSE;

/// Most addresses per hinted peer.
pub const MAX_ADDRS_PER_HINT: usize = 4;

/// Longest encoded envelope: the longest message plus the largest hint list (an IPv6
/// address encodes in at most 16 + 4 + 3 + 1 bytes; node ids in 32; lengths in a few).
pub const MAX_ENVELOPE_LEN: usize =
    MAX_MESSAGE_LEN + 8 + MAX_HINTS * (NODE_ID_LEN + 2 + MAX_ADDRS_PER_HINT * 32);

/// Where a peer may be dialed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddressHint {
    /// The peer.
    pub node: NodeId,
    /// Its addresses (at most [`MAX_ADDRS_PER_HINT`]).
    pub addrs: Vec<SocketAddr>,
}

/// A message and the address hints for the peers it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The DHT message.
    pub message: Message,
    /// Addresses of peers named in it (at most [`MAX_HINTS`]).
    pub hints: Vec<AddressHint>,
}

#[derive(Serialize, Deserialize)]
struct WireEnvelope {
    message: Vec<u8>,
    hints: Vec<([u8; NODE_ID_LEN], Vec<SocketAddr>)>,
}

/// Encodes an envelope. Hints beyond the bounds are left out.
pub fn encode_envelope(envelope: &Envelope) -> Vec<u8> {
    let wire = WireEnvelope {
        message: message::encode(&envelope.message),
        hints: envelope
            .hints
            .iter()
            .take(MAX_HINTS)
            .map(|hint| {
                let addrs = hint
                    .addrs
                    .iter()
                    .take(MAX_ADDRS_PER_HINT)
                    .copied()
                    .collect();
                (*hint.node.as_bytes(), addrs)
            })
            .collect(),
    };
    postcard::to_stdvec(&wire)
        .expect("postcard encodes byte vectors, arrays and socket addresses without error")
}

/// Decodes and checks an envelope, including its message (see [`message::decode`]).
/// Never panics.
pub fn decode_envelope(bytes: &[u8]) -> Result<Envelope, WireError> {
    if bytes.len() > MAX_ENVELOPE_LEN {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (wire, rest): (WireEnvelope, &[u8]) = postcard::take_from_bytes(bytes)
        .map_err(|error| WireError::Undecodable(error.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Invalid("trailing bytes after the envelope"));
    }
    if wire.hints.len() > MAX_HINTS {
        return Err(WireError::Invalid("too many address hints"));
    }
    let mut hints = Vec::with_capacity(wire.hints.len());
    for (node, addrs) in wire.hints {
        if addrs.len() > MAX_ADDRS_PER_HINT {
            return Err(WireError::Invalid("too many addresses in a hint"));
        }
        let node = NodeId::from_bytes(node)
            .map_err(|_| WireError::Invalid("an address hint names an invalid node id"))?;
        hints.push(AddressHint { node, addrs });
    }
    let message = message::decode(&wire.message)?;
    Ok(Envelope { message, hints })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::message::{Request, RequestId, Response};
    use crate::dht::record::{Record, MAX_VALUE_SIZE};
    use crate::dht::time::Timestamp;
    use crate::identity::NodeKeypair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;

    fn node(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    fn full_hints() -> Vec<AddressHint> {
        (0..MAX_HINTS as u64)
            .map(|i| AddressHint {
                node: node(i),
                addrs: vec!["[2001:db8::1]:65535".parse().expect("addr"); MAX_ADDRS_PER_HINT],
            })
            .collect()
    }

    #[test]
    fn a_maximal_envelope_fits_the_limit() {
        let record = Record::immutable(vec![0xFF; MAX_VALUE_SIZE], Timestamp::MAX).expect("record");
        let envelope = Envelope {
            message: Message::Response {
                id: RequestId(u64::MAX),
                response: Response::Value {
                    record,
                    closer: (0..MAX_PEERS_PER_RESPONSE as u64).map(node).collect(),
                },
            },
            hints: full_hints(),
        };
        let bytes = encode_envelope(&envelope);
        assert!(bytes.len() <= MAX_ENVELOPE_LEN, "{} bytes", bytes.len());
        assert_eq!(decode_envelope(&bytes), Ok(envelope));
    }

    #[test]
    fn out_of_bound_hints_are_refused() {
        let message = message::encode(&Message::Request {
            id: RequestId(1),
            request: Request::Ping,
        });
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let too_many = WireEnvelope {
            message: message.clone(),
            hints: (0..=MAX_HINTS as u64)
                .map(|i| (*node(i).as_bytes(), vec![addr]))
                .collect(),
        };
        let wide = WireEnvelope {
            message: message.clone(),
            hints: vec![(*node(1).as_bytes(), vec![addr; MAX_ADDRS_PER_HINT + 1])],
        };
        for wire in [too_many, wide] {
            let bytes = postcard::to_stdvec(&wire).expect("encode");
            assert!(matches!(
                decode_envelope(&bytes),
                Err(WireError::Invalid(_))
            ));
        }
        let mut bytes = encode_envelope(&Envelope {
            message: Message::Request {
                id: RequestId(1),
                request: Request::Ping,
            },
            hints: Vec::new(),
        });
        bytes.push(0);
        assert_eq!(
            decode_envelope(&bytes),
            Err(WireError::Invalid("trailing bytes after the envelope"))
        );
        assert!(matches!(
            decode_envelope(&vec![0; MAX_ENVELOPE_LEN + 1]),
            Err(WireError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_envelope(&bytes);
        }

        #[test]
        fn envelopes_round_trip(id in any::<u64>(), count in 0..MAX_HINTS, port in any::<u16>()) {
            let envelope = Envelope {
                message: Message::Request { id: RequestId(id), request: Request::Ping },
                hints: (0..count as u64)
                    .map(|i| AddressHint {
                        node: node(i),
                        addrs: vec![SocketAddr::from(([127, 0, 0, 1], port))],
                    })
                    .collect(),
            };
            prop_assert_eq!(decode_envelope(&encode_envelope(&envelope)), Ok(envelope));
        }
    }
}
