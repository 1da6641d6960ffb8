//! The routing wire protocol: [`RouteMessage`]s and their [`encode`]/[`decode`] with
//! postcard.
//!
//! Node ids travel as their 32 raw bytes and signatures as 64 raw bytes. Wherever a
//! destination's signed advertisement travels with the sender's `metric` to it (a hello
//! link's [`Announcement`], a [`Rreq`]'s route to its originator, a [`Rrep`]'s route to
//! its destination), it also travels with the sender's `price` for carrying traffic there:
//! milli-tokens per MB, a postcard varint `u64` right after the metric (see
//! [`Announcement::price`]). Routing messages carry no version number of their own: they
//! ride the link protocol's data frames (tag `0x01`), and a node with another layout fails
//! to decode them.
//!
//! [`decode`] first refuses more than [`MAX_MESSAGE_LEN`] bytes, then reads the postcard
//! form (collecting at most one element past any list's bound, so a lying length prefix
//! cannot make it allocate), refuses trailing bytes, and finally checks every bound and
//! every node id. Every way of failing is a named [`WireError`] variant (an integer that
//! does not fit its type, a price included, is [`WireError::BadInteger`]), and decoding
//! never panics. Signatures are checked later, by the router, and only for advertisements
//! it is about to use.

use std::fmt;
use std::marker::PhantomData;

use serde::de::{SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NODE_ID_LEN, SIGNATURE_LEN};
use crate::route::advert::SignedAdvert;

/// Largest encoded message in bytes. A maximal hello (the largest message) is about 6 KiB.
pub const MAX_MESSAGE_LEN: usize = 8 * 1024;

/// Most nodes in a path, and so the largest `max_hops` a router may be configured with.
pub const MAX_PATH_LEN: usize = 32;

/// Most links reported in one hello.
pub const MAX_HELLO_LINKS: usize = 32;

/// Most destinations in one route error.
pub const MAX_RERR_ENTRIES: usize = 64;

/// Largest loss on the wire: one million parts per million.
const MAX_LOSS_PPM: u32 = 1_000_000;

/// Everything one router says to a neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteMessage {
    /// Periodic neighbourhood announcement.
    Hello(Hello),
    /// Route request, flooded.
    Rreq(Rreq),
    /// Route reply, unicast back towards the requester.
    Rrep(Rrep),
    /// Route error: destinations no longer reachable through the sender.
    Rerr(Rerr),
}

/// A neighbourhood announcement, sent to every neighbour every `hello_interval`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hello {
    /// The sender's own advertisement (its `node` must be the sender).
    pub advert: SignedAdvert,
    /// The sender's links (at most [`MAX_HELLO_LINKS`]).
    pub links: Vec<HelloLink>,
}

/// One of the sender's links, as reported in a [`Hello`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloLink {
    /// The neighbour at the other end.
    pub neighbour: NodeId,
    /// The link's smoothed round-trip time in microseconds.
    pub rtt_us: u32,
    /// The link's loss in parts per million (at most 1,000,000).
    pub loss_ppm: u32,
    /// The sender's route to that neighbour, when it is the direct link.
    pub route: Option<Announcement>,
}

/// A route as advertised by a neighbour: the destination's signed advertisement and the
/// advertising node's metric and price to it (both unsigned).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Announcement {
    /// Signed by the destination.
    pub advert: SignedAdvert,
    /// The sender's metric to the destination.
    pub metric: u32,
    /// What the sender charges for carrying traffic to the destination, milli-tokens per MB
    /// (10⁶ bytes): the price its own next hop advertised (0 when that is the destination)
    /// plus the sender's fee; 0 when the sender is the destination. A `u64` like every
    /// ledger amount — a fee may be up to 1.5 × 10¹² (setting `tokens_per_mb` up to 10⁹
    /// tokens, × 1000, × 1.5) — and a postcard varint, so it costs what a `u32` would for
    /// the same value (3 bytes at the default 100 tokens per MB).
    pub price: u64,
}

/// A route request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rreq {
    /// Chosen by the originator; with the originator, identifies the flood.
    pub rreq_id: u32,
    /// The node a route is wanted to.
    pub destination: NodeId,
    /// The sender's route to the originator: the originator's advertisement (signed by
    /// it; fresh from the originator on the first hop).
    pub originator: SignedAdvert,
    /// The sender's metric to the originator.
    pub metric: u32,
    /// The sender's price to the originator, milli-tokens per MB (0 from the originator;
    /// see [`Announcement::price`]).
    pub price: u64,
    /// Hops this request may still travel, at least 1.
    pub ttl: u8,
    /// The sender's route to the originator, originator first, sender last (at most
    /// [`MAX_PATH_LEN`]).
    pub path: Vec<NodeId>,
}

/// A route reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rrep {
    /// The node that asked; the reply travels towards it.
    pub originator: NodeId,
    /// The request answered.
    pub rreq_id: u32,
    /// The sender's route to the destination: the destination's advertisement.
    pub destination: SignedAdvert,
    /// The sender's metric to the destination.
    pub metric: u32,
    /// The sender's price to the destination, milli-tokens per MB (0 from the destination;
    /// see [`Announcement::price`]).
    pub price: u64,
    /// The sender's route to the destination, destination first, sender last (at most
    /// [`MAX_PATH_LEN`]).
    pub path: Vec<NodeId>,
}

/// A route error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rerr {
    /// The destinations lost (1 to [`MAX_RERR_ENTRIES`]).
    pub unreachable: Vec<Unreachable>,
}

/// A destination the sender can no longer reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable {
    /// The destination.
    pub destination: NodeId,
    /// The newest sequence number the sender knew for it; routes learned from the sender
    /// with this number or an older one are withdrawn.
    pub seqno: u64,
}

/// Why bytes from a neighbour were not a valid routing message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More than [`MAX_MESSAGE_LEN`] bytes.
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    /// The bytes end in the middle of the message.
    #[error("message truncated")]
    Truncated,
    /// Bytes follow the message.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// An enum tag (message kind, option) is not one this version knows.
    #[error("unknown message kind or tag")]
    UnknownTag,
    /// An integer is not a valid postcard varint for its type.
    #[error("malformed integer")]
    BadInteger,
    /// Some other postcard encoding error.
    #[error("malformed message")]
    Malformed,
    /// A node id is not a valid Ed25519 public key.
    #[error("a node id is not a valid public key")]
    InvalidNodeId,
    /// A path is empty.
    #[error("empty path")]
    EmptyPath,
    /// A path is longer than [`MAX_PATH_LEN`].
    #[error("path longer than {MAX_PATH_LEN} nodes")]
    PathTooLong,
    /// A path does not start at the node its advertisement is about.
    #[error("path does not start at the advertised node")]
    PathMismatch,
    /// A hello reports more than [`MAX_HELLO_LINKS`] links.
    #[error("hello with more than {MAX_HELLO_LINKS} links")]
    TooManyLinks,
    /// A hello link's loss is above 1,000,000 ppm.
    #[error("loss of {0} ppm is above 1000000")]
    LossOutOfRange(u32),
    /// A hello link's route advertises a node other than the link's neighbour.
    #[error("a hello link's route is not about its neighbour")]
    AdvertMismatch,
    /// A route request with TTL 0.
    #[error("route request with TTL 0")]
    ZeroTtl,
    /// A route error names no destination, or more than [`MAX_RERR_ENTRIES`].
    #[error("route error must name 1 to {MAX_RERR_ENTRIES} destinations")]
    BadRerrLength,
}

/// Encodes a message.
pub fn encode(message: &RouteMessage) -> Vec<u8> {
    // Plain integers, byte arrays, options and vectors into a Vec: cannot fail.
    postcard::to_stdvec(&RawMessage::from(message)).unwrap_or_default()
}

/// Decodes and checks a message. Never panics.
pub fn decode(bytes: &[u8]) -> Result<RouteMessage, WireError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (raw, rest): (RawMessage, &[u8]) =
        postcard::take_from_bytes(bytes).map_err(|error| match error {
            postcard::Error::DeserializeUnexpectedEnd => WireError::Truncated,
            // serde reports an unknown variant index as a custom error; the raw types
            // raise no other custom error.
            postcard::Error::DeserializeBadEnum
            | postcard::Error::DeserializeBadOption
            | postcard::Error::DeserializeBadBool
            | postcard::Error::SerdeDeCustom => WireError::UnknownTag,
            postcard::Error::DeserializeBadVarint => WireError::BadInteger,
            _ => WireError::Malformed,
        })?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    raw.check()
}

// ---- the raw form: exactly what travels, before any check ----

#[derive(Serialize, Deserialize)]
enum RawMessage {
    Hello(RawHello),
    Rreq(RawRreq),
    Rrep(RawRrep),
    Rerr(RawRerr),
}

#[derive(Serialize, Deserialize)]
struct RawAdvert {
    node: [u8; NODE_ID_LEN],
    seqno: u64,
    issued_at: u64,
    signature: ([u8; SIGNATURE_LEN / 2], [u8; SIGNATURE_LEN / 2]),
}

#[derive(Serialize, Deserialize)]
struct RawHello {
    advert: RawAdvert,
    links: Bounded<RawHelloLink, MAX_HELLO_LINKS>,
}

#[derive(Serialize, Deserialize)]
struct RawHelloLink {
    neighbour: [u8; NODE_ID_LEN],
    rtt_us: u32,
    loss_ppm: u32,
    /// Advert, metric, price.
    route: Option<(RawAdvert, u32, u64)>,
}

#[derive(Serialize, Deserialize)]
struct RawRreq {
    rreq_id: u32,
    destination: [u8; NODE_ID_LEN],
    originator: RawAdvert,
    metric: u32,
    price: u64,
    ttl: u8,
    path: Bounded<[u8; NODE_ID_LEN], MAX_PATH_LEN>,
}

#[derive(Serialize, Deserialize)]
struct RawRrep {
    originator: [u8; NODE_ID_LEN],
    rreq_id: u32,
    destination: RawAdvert,
    metric: u32,
    price: u64,
    path: Bounded<[u8; NODE_ID_LEN], MAX_PATH_LEN>,
}

#[derive(Serialize, Deserialize)]
struct RawRerr {
    unreachable: Bounded<([u8; NODE_ID_LEN], u64), MAX_RERR_ENTRIES>,
}

/// A list that keeps at most `N + 1` decoded elements (so a length prefix cannot make the
/// decoder allocate more), while still reading every element so that the message's end is
/// found. More than `N` means the bound was broken; the check names it.
struct Bounded<T, const N: usize>(Vec<T>);

impl<T: Serialize, const N: usize> Serialize for Bounded<T, N> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(&self.0)
    }
}

impl<'de, T: Deserialize<'de>, const N: usize> Deserialize<'de> for Bounded<T, N> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct BoundedVisitor<T, const N: usize>(PhantomData<T>);

        impl<'de, T: Deserialize<'de>, const N: usize> Visitor<'de> for BoundedVisitor<T, N> {
            type Value = Bounded<T, N>;

            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(formatter, "a list of at most {N} elements")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
                let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(N + 1));
                while let Some(item) = seq.next_element::<T>()? {
                    if items.len() <= N {
                        items.push(item);
                    }
                }
                Ok(Bounded(items))
            }
        }

        deserializer.deserialize_seq(BoundedVisitor::<T, N>(PhantomData))
    }
}

fn node_id(bytes: [u8; NODE_ID_LEN]) -> Result<NodeId, WireError> {
    NodeId::from_bytes(bytes).map_err(|_| WireError::InvalidNodeId)
}

fn path<const N: usize>(raw: Bounded<[u8; NODE_ID_LEN], N>) -> Result<Vec<NodeId>, WireError> {
    if raw.0.is_empty() {
        return Err(WireError::EmptyPath);
    }
    if raw.0.len() > N {
        return Err(WireError::PathTooLong);
    }
    raw.0.into_iter().map(node_id).collect()
}

impl RawAdvert {
    fn check(self) -> Result<SignedAdvert, WireError> {
        let mut signature = [0u8; SIGNATURE_LEN];
        signature[..SIGNATURE_LEN / 2].copy_from_slice(&self.signature.0);
        signature[SIGNATURE_LEN / 2..].copy_from_slice(&self.signature.1);
        Ok(SignedAdvert {
            node: node_id(self.node)?,
            seqno: self.seqno,
            issued_at: Timestamp::from_millis(self.issued_at),
            signature,
        })
    }
}

impl From<&SignedAdvert> for RawAdvert {
    fn from(advert: &SignedAdvert) -> Self {
        let mut first = [0u8; SIGNATURE_LEN / 2];
        let mut second = [0u8; SIGNATURE_LEN / 2];
        first.copy_from_slice(&advert.signature[..SIGNATURE_LEN / 2]);
        second.copy_from_slice(&advert.signature[SIGNATURE_LEN / 2..]);
        Self {
            node: *advert.node.as_bytes(),
            seqno: advert.seqno,
            issued_at: advert.issued_at.as_millis(),
            signature: (first, second),
        }
    }
}

fn raw_path<const N: usize>(path: &[NodeId]) -> Bounded<[u8; NODE_ID_LEN], N> {
    Bounded(path.iter().map(|id| *id.as_bytes()).collect())
}

impl From<&RouteMessage> for RawMessage {
    fn from(message: &RouteMessage) -> Self {
        match message {
            RouteMessage::Hello(hello) => RawMessage::Hello(RawHello {
                advert: (&hello.advert).into(),
                links: Bounded(
                    hello
                        .links
                        .iter()
                        .map(|link| RawHelloLink {
                            neighbour: *link.neighbour.as_bytes(),
                            rtt_us: link.rtt_us,
                            loss_ppm: link.loss_ppm,
                            route: link
                                .route
                                .as_ref()
                                .map(|route| ((&route.advert).into(), route.metric, route.price)),
                        })
                        .collect(),
                ),
            }),
            RouteMessage::Rreq(rreq) => RawMessage::Rreq(RawRreq {
                rreq_id: rreq.rreq_id,
                destination: *rreq.destination.as_bytes(),
                originator: (&rreq.originator).into(),
                metric: rreq.metric,
                price: rreq.price,
                ttl: rreq.ttl,
                path: raw_path(&rreq.path),
            }),
            RouteMessage::Rrep(rrep) => RawMessage::Rrep(RawRrep {
                originator: *rrep.originator.as_bytes(),
                rreq_id: rrep.rreq_id,
                destination: (&rrep.destination).into(),
                metric: rrep.metric,
                price: rrep.price,
                path: raw_path(&rrep.path),
            }),
            RouteMessage::Rerr(rerr) => RawMessage::Rerr(RawRerr {
                unreachable: Bounded(
                    rerr.unreachable
                        .iter()
                        .map(|entry| (*entry.destination.as_bytes(), entry.seqno))
                        .collect(),
                ),
            }),
        }
    }
}

impl RawMessage {
    fn check(self) -> Result<RouteMessage, WireError> {
        Ok(match self {
            RawMessage::Hello(raw) => {
                if raw.links.0.len() > MAX_HELLO_LINKS {
                    return Err(WireError::TooManyLinks);
                }
                let advert = raw.advert.check()?;
                let mut links = Vec::with_capacity(raw.links.0.len());
                for link in raw.links.0 {
                    if link.loss_ppm > MAX_LOSS_PPM {
                        return Err(WireError::LossOutOfRange(link.loss_ppm));
                    }
                    let neighbour = node_id(link.neighbour)?;
                    let route = match link.route {
                        Some((advert, metric, price)) => {
                            let advert = advert.check()?;
                            if advert.node != neighbour {
                                return Err(WireError::AdvertMismatch);
                            }
                            Some(Announcement {
                                advert,
                                metric,
                                price,
                            })
                        }
                        None => None,
                    };
                    links.push(HelloLink {
                        neighbour,
                        rtt_us: link.rtt_us,
                        loss_ppm: link.loss_ppm,
                        route,
                    });
                }
                RouteMessage::Hello(Hello { advert, links })
            }
            RawMessage::Rreq(raw) => {
                if raw.ttl == 0 {
                    return Err(WireError::ZeroTtl);
                }
                let originator = raw.originator.check()?;
                let path = path(raw.path)?;
                if path.first() != Some(&originator.node) {
                    return Err(WireError::PathMismatch);
                }
                RouteMessage::Rreq(Rreq {
                    rreq_id: raw.rreq_id,
                    destination: node_id(raw.destination)?,
                    originator,
                    metric: raw.metric,
                    price: raw.price,
                    ttl: raw.ttl,
                    path,
                })
            }
            RawMessage::Rrep(raw) => {
                let destination = raw.destination.check()?;
                let path = path(raw.path)?;
                if path.first() != Some(&destination.node) {
                    return Err(WireError::PathMismatch);
                }
                RouteMessage::Rrep(Rrep {
                    originator: node_id(raw.originator)?,
                    rreq_id: raw.rreq_id,
                    destination,
                    metric: raw.metric,
                    price: raw.price,
                    path,
                })
            }
            RawMessage::Rerr(raw) => {
                if raw.unreachable.0.is_empty() || raw.unreachable.0.len() > MAX_RERR_ENTRIES {
                    return Err(WireError::BadRerrLength);
                }
                let unreachable = raw
                    .unreachable
                    .0
                    .into_iter()
                    .map(|(destination, seqno)| {
                        Ok(Unreachable {
                            destination: node_id(destination)?,
                            seqno,
                        })
                    })
                    .collect::<Result<_, WireError>>()?;
                RouteMessage::Rerr(Rerr { unreachable })
            }
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
    use std::sync::OnceLock;

    /// A few keys, generated once (key generation is slow in debug builds).
    fn keys() -> &'static [NodeKeypair] {
        static KEYS: OnceLock<Vec<NodeKeypair>> = OnceLock::new();
        KEYS.get_or_init(|| {
            (0..6)
                .map(|seed| NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)))
                .collect()
        })
    }

    fn id(index: usize) -> NodeId {
        keys()[index % keys().len()].node_id()
    }

    fn advert(index: usize, seqno: u64) -> SignedAdvert {
        SignedAdvert::sign(
            &keys()[index % keys().len()],
            seqno,
            Timestamp::from_millis(seqno),
        )
    }

    fn maximal_hello() -> RouteMessage {
        // Decoding does not check signatures, so one signature serves every advert.
        let signed = advert(0, u64::MAX);
        RouteMessage::Hello(Hello {
            advert: signed.clone(),
            links: (0..MAX_HELLO_LINKS)
                .map(|i| HelloLink {
                    neighbour: id(i),
                    rtt_us: u32::MAX,
                    loss_ppm: MAX_LOSS_PPM,
                    route: Some(Announcement {
                        advert: SignedAdvert {
                            node: id(i),
                            ..signed.clone()
                        },
                        metric: u32::MAX,
                        price: u64::MAX,
                    }),
                })
                .collect(),
        })
    }

    fn rreq(path_len: usize) -> RouteMessage {
        RouteMessage::Rreq(Rreq {
            rreq_id: 9,
            destination: id(3),
            originator: advert(1, 5),
            metric: 700,
            price: 250_000,
            ttl: 4,
            path: (0..path_len).map(|i| id(i + 1)).collect(),
        })
    }

    fn samples() -> &'static [RouteMessage] {
        static SAMPLES: OnceLock<Vec<RouteMessage>> = OnceLock::new();
        SAMPLES.get_or_init(|| {
            vec![
                maximal_hello(),
                RouteMessage::Hello(Hello {
                    advert: advert(2, 1),
                    links: vec![],
                }),
                rreq(1),
                rreq(MAX_PATH_LEN),
                RouteMessage::Rrep(Rrep {
                    originator: id(1),
                    rreq_id: 9,
                    destination: advert(4, 8),
                    metric: 12,
                    price: 100_000,
                    path: vec![id(4), id(5)],
                }),
                RouteMessage::Rerr(Rerr {
                    unreachable: (0..MAX_RERR_ENTRIES)
                        .map(|i| Unreachable {
                            destination: id(i),
                            seqno: i as u64,
                        })
                        .collect(),
                }),
            ]
        })
    }

    #[test]
    fn every_message_round_trips_within_the_limit() {
        for message in samples() {
            let bytes = encode(message);
            assert!(bytes.len() <= MAX_MESSAGE_LEN, "{} bytes", bytes.len());
            assert_eq!(decode(&bytes).as_ref(), Ok(message));
        }
    }

    #[test]
    fn truncated_trailing_and_oversized_input_is_refused() {
        for message in samples() {
            let bytes = encode(message);
            for cut in 0..bytes.len() {
                assert!(decode(&bytes[..cut]).is_err(), "prefix of {cut} bytes");
            }
            let mut longer = bytes.clone();
            longer.extend_from_slice(&[0, 1]);
            assert_eq!(decode(&longer), Err(WireError::TrailingBytes(2)));
        }
        assert_eq!(decode(&[]), Err(WireError::Truncated));
        assert_eq!(
            decode(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(WireError::TooLarge(MAX_MESSAGE_LEN + 1))
        );
        assert_eq!(decode(&[9]), Err(WireError::UnknownTag));
    }

    #[test]
    fn bounds_are_enforced_with_named_errors() {
        assert_eq!(
            decode(&encode(&rreq(MAX_PATH_LEN + 1))),
            Err(WireError::PathTooLong)
        );
        assert_eq!(decode(&encode(&rreq(0))), Err(WireError::EmptyPath));
        let RouteMessage::Rreq(mut bad) = rreq(2) else {
            unreachable!()
        };
        bad.ttl = 0;
        assert_eq!(
            decode(&encode(&RouteMessage::Rreq(bad.clone()))),
            Err(WireError::ZeroTtl)
        );
        bad.ttl = 1;
        bad.path.reverse();
        assert_eq!(
            decode(&encode(&RouteMessage::Rreq(bad))),
            Err(WireError::PathMismatch)
        );
        let RouteMessage::Hello(mut hello) = maximal_hello() else {
            unreachable!()
        };
        hello.links.push(hello.links[0].clone());
        assert_eq!(
            decode(&encode(&RouteMessage::Hello(hello.clone()))),
            Err(WireError::TooManyLinks)
        );
        hello.links.truncate(1);
        hello.links[0].loss_ppm = MAX_LOSS_PPM + 1;
        assert_eq!(
            decode(&encode(&RouteMessage::Hello(hello.clone()))),
            Err(WireError::LossOutOfRange(MAX_LOSS_PPM + 1))
        );
        hello.links[0].loss_ppm = 0;
        hello.links[0].neighbour = id(5);
        assert_eq!(
            decode(&encode(&RouteMessage::Hello(hello))),
            Err(WireError::AdvertMismatch)
        );
        let empty = RouteMessage::Rerr(Rerr {
            unreachable: vec![],
        });
        assert_eq!(decode(&encode(&empty)), Err(WireError::BadRerrLength));
    }

    #[test]
    fn an_invalid_node_id_is_refused() {
        let invalid = (0u8..=255)
            .map(|i| [i; NODE_ID_LEN])
            .find(|bytes| NodeId::from_bytes(*bytes).is_err())
            .expect("an invalid point encoding exists");
        let mut bytes = encode(&RouteMessage::Rerr(Rerr {
            unreachable: vec![Unreachable {
                destination: id(0),
                seqno: 0,
            }],
        }));
        // Kind tag, list length, then the id.
        bytes[2..2 + NODE_ID_LEN].copy_from_slice(&invalid);
        assert_eq!(decode(&bytes), Err(WireError::InvalidNodeId));
    }

    #[test]
    fn prices_round_trip_and_an_overlong_or_overflowing_price_is_refused() {
        let rrep = |price| {
            RouteMessage::Rrep(Rrep {
                originator: id(1),
                rreq_id: 9,
                destination: advert(4, 8),
                metric: 12,
                price,
                path: vec![id(4), id(5)],
            })
        };
        for price in [0, 1, 100_000, u64::from(u32::MAX) + 1, u64::MAX] {
            assert_eq!(decode(&encode(&rrep(price))), Ok(rrep(price)));
        }
        // Price 0 is one byte, just before the path (length 2, then two ids).
        let bytes = encode(&rrep(0));
        let at = bytes.len() - 1 - 2 * NODE_ID_LEN - 1;
        assert_eq!(bytes[at], 0);
        let with_price = |varint: &[u8]| {
            let mut changed = bytes[..at].to_vec();
            changed.extend_from_slice(varint);
            changed.extend_from_slice(&bytes[at + 1..]);
            decode(&changed)
        };
        // The largest u64 is ten bytes; more continuation bits, or more bits, are refused.
        let mut largest = [0xff; 10];
        largest[9] = 0x01;
        assert_eq!(with_price(&largest), Ok(rrep(u64::MAX)));
        assert_eq!(with_price(&[0xff; 11]), Err(WireError::BadInteger));
        let mut overflowing = largest;
        overflowing[9] = 0x02;
        assert_eq!(with_price(&overflowing), Err(WireError::BadInteger));
        // A message cut inside the price is truncated.
        assert_eq!(
            decode(&encode(&rrep(u64::MAX))[..at + 5]),
            Err(WireError::Truncated)
        );
    }

    #[test]
    fn a_huge_length_prefix_does_not_allocate_or_panic() {
        // A Rerr (tag 3) claiming u32::MAX entries, then nothing.
        let bytes = [3, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert_eq!(decode(&bytes), Err(WireError::Truncated));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_a_mutated_message_never_panics(which in 0usize..6, index: usize, byte: u8) {
            let mut bytes = encode(&samples()[which]);
            let index = index % bytes.len();
            bytes[index] = byte;
            let _ = decode(&bytes);
        }
    }
}
