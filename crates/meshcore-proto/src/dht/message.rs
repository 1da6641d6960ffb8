//! The DHT wire protocol: [`Message`]s, and their [`encode`]/[`decode`] with postcard.
//!
//! Every request carries a [`RequestId`] chosen by the sender; the answer carries the same
//! id, and the sender matches it to the request *and* the peer it was sent to, so a node
//! cannot answer for another. Node ids travel as their 32 raw bytes and are checked to be
//! valid Ed25519 keys while decoding; a list of peers is cut off at
//! [`MAX_PEERS_PER_RESPONSE`] before any id is checked; a list of provider records is read
//! with at most one record beyond [`MAX_PROVIDERS_PER_TOPIC`] checked. [`decode`] refuses
//! more than [`MAX_MESSAGE_LEN`] bytes, trailing bytes, records and provider records beyond
//! their size limits, and more than [`MAX_PROVIDERS_PER_TOPIC`] provider records in an
//! answer; it never panics, whatever the bytes. Signatures are checked later, by the node,
//! only for records it is about to store or return.

use std::fmt;

use serde::de::{Error as _, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::dht::key::Key;
use crate::dht::provider::{ProviderRecord, MAX_PROVIDERS_PER_TOPIC, MAX_PROVIDER_INFO};
use crate::dht::record::{Record, RecordError, MAX_SALT_LEN, MAX_VALUE_SIZE};
use crate::identity::{NodeId, NODE_ID_LEN};

/// Largest encoded message: a maximal value plus 2 KiB for everything around it.
///
/// The largest answer of another kind, [`Response::Providers`] with
/// [`MAX_PROVIDERS_PER_TOPIC`] records of [`MAX_PROVIDER_INFO`] bytes and
/// [`MAX_PEERS_PER_RESPONSE`] peers, takes 24,518 bytes: 20 × 1,174 per record (topic 32,
/// provider 32, info length 2 and info 1,024, sequence number and expiry 10 each as
/// varints, signature 64), 1 + 32 × 32 for the peers, 1 for the record count, and 12 for
/// the message and response tags and the request id.
pub const MAX_MESSAGE_LEN: usize = MAX_VALUE_SIZE + 2048;

/// Most node ids in one answer (the bound on `k`).
pub const MAX_PEERS_PER_RESPONSE: usize = 32;

/// Matches an answer to its request; unique among the sender's requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct RequestId(pub u64);

/// Everything one DHT node says to another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Asks the receiver something; it answers with a [`Message::Response`] with `id`.
    Request {
        /// Chosen by the sender.
        id: RequestId,
        /// What is asked.
        request: Request,
    },
    /// Answers the sender's request `id`.
    Response {
        /// The request's id.
        id: RequestId,
        /// The answer.
        response: Response,
    },
}

/// What a node may ask.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Are you alive? Answered by [`Response::Pong`].
    Ping,
    /// Which nodes do you know closest to `target`? Answered by [`Response::Nodes`].
    FindNode {
        /// The key searched for.
        target: Key,
    },
    /// Do you hold the record at `key`? Answered by [`Response::Value`] if so, else by
    /// [`Response::Nodes`].
    FindValue {
        /// The record's key.
        key: Key,
    },
    /// Please hold this record. Answered by [`Response::Stored`].
    Store {
        /// The record; its key is derived from it.
        record: Record,
    },
    /// Please list this provider under its topic. Answered by [`Response::Stored`].
    AddProvider {
        /// The signed provider record.
        record: ProviderRecord,
    },
    /// Which providers of `topic` do you hold, and which nodes do you know closest to it?
    /// Answered by [`Response::Providers`].
    GetProviders {
        /// The topic key ([`Key::for_topic`] of a service name).
        topic: Key,
    },
}

/// What a node answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// I am alive.
    Pong,
    /// The nodes I know closest to the key asked for (at most [`MAX_PEERS_PER_RESPONSE`]).
    Nodes {
        /// Closest first.
        #[serde(with = "node_id_list_bytes")]
        closer: Vec<NodeId>,
    },
    /// The record asked for, and the nodes I know closest to its key.
    Value {
        /// The record.
        record: Record,
        /// Closest first (at most [`MAX_PEERS_PER_RESPONSE`]).
        #[serde(with = "node_id_list_bytes")]
        closer: Vec<NodeId>,
    },
    /// Whether I stored the record (or provider record), and if not, why.
    Stored {
        /// `Ok` if stored.
        result: Result<(), RecordError>,
    },
    /// The providers I hold for the topic asked for, and the nodes I know closest to it.
    Providers {
        /// At most [`MAX_PROVIDERS_PER_TOPIC`], latest expiry first.
        #[serde(with = "provider_list")]
        providers: Vec<ProviderRecord>,
        /// Closest first (at most [`MAX_PEERS_PER_RESPONSE`]).
        #[serde(with = "node_id_list_bytes")]
        closer: Vec<NodeId>,
    },
}

/// Why bytes from a peer were not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WireError {
    /// More than [`MAX_MESSAGE_LEN`] bytes.
    #[error("message of {0} bytes exceeds the limit of {MAX_MESSAGE_LEN}")]
    TooLarge(usize),
    /// The bytes are not a postcard-encoded message, or a node id in it is invalid.
    #[error("undecodable message: {0}")]
    Undecodable(String),
    /// The message decoded but breaks a bound.
    #[error("invalid message: {0}")]
    Invalid(&'static str),
}

/// Encodes a message.
pub fn encode(message: &Message) -> Vec<u8> {
    postcard::to_stdvec(message)
        .expect("postcard encodes these plain enums, vectors and arrays into a Vec without error")
}

/// Decodes and checks a message. Never panics.
pub fn decode(bytes: &[u8]) -> Result<Message, WireError> {
    if bytes.len() > MAX_MESSAGE_LEN {
        return Err(WireError::TooLarge(bytes.len()));
    }
    let (message, rest): (Message, &[u8]) = postcard::take_from_bytes(bytes)
        .map_err(|error| WireError::Undecodable(error.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::Invalid("trailing bytes after the message"));
    }
    let record = match &message {
        Message::Request {
            request: Request::Store { record },
            ..
        }
        | Message::Response {
            response: Response::Value { record, .. },
            ..
        } => Some(record),
        _ => None,
    };
    if let Some(record) = record {
        if record.value().len() > MAX_VALUE_SIZE {
            return Err(WireError::Invalid("record value too large"));
        }
        if matches!(record, Record::Mutable(mutable) if mutable.salt.len() > MAX_SALT_LEN) {
            return Err(WireError::Invalid("record salt too long"));
        }
    }
    let providers = match &message {
        Message::Request {
            request: Request::AddProvider { record },
            ..
        } => std::slice::from_ref(record),
        Message::Response {
            response: Response::Providers { providers, .. },
            ..
        } => providers.as_slice(),
        _ => &[],
    };
    if providers.len() > MAX_PROVIDERS_PER_TOPIC {
        return Err(WireError::Invalid("too many provider records"));
    }
    if providers
        .iter()
        .any(|record| record.info.len() > MAX_PROVIDER_INFO)
    {
        return Err(WireError::Invalid("provider info too large"));
    }
    Ok(message)
}

/// A single [`NodeId`] as its 32 raw bytes, checked when decoded.
pub(crate) mod node_id_bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer>(id: &NodeId, serializer: S) -> Result<S::Ok, S::Error> {
        id.as_bytes().serialize(serializer)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<NodeId, D::Error> {
        let bytes = <[u8; NODE_ID_LEN]>::deserialize(deserializer)?;
        NodeId::from_bytes(bytes).map_err(D::Error::custom)
    }
}

/// A list of [`NodeId`]s as raw bytes; decoding stops with an error past
/// [`MAX_PEERS_PER_RESPONSE`] entries, before checking more keys.
mod node_id_list_bytes {
    use super::*;

    pub(super) fn serialize<S: Serializer>(
        ids: &[NodeId],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(ids.iter().map(NodeId::as_bytes))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<NodeId>, D::Error> {
        deserializer.deserialize_seq(NodeIdListVisitor)
    }

    struct NodeIdListVisitor;

    impl<'de> Visitor<'de> for NodeIdListVisitor {
        type Value = Vec<NodeId>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(formatter, "at most {MAX_PEERS_PER_RESPONSE} node ids")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut ids = Vec::new();
            while let Some(bytes) = seq.next_element::<[u8; NODE_ID_LEN]>()? {
                if ids.len() == MAX_PEERS_PER_RESPONSE {
                    return Err(A::Error::invalid_length(ids.len() + 1, &self));
                }
                ids.push(NodeId::from_bytes(bytes).map_err(A::Error::custom)?);
            }
            Ok(ids)
        }
    }
}

/// A list of [`ProviderRecord`]s. Past [`MAX_PROVIDERS_PER_TOPIC`] + 1 entries the rest
/// are read without checking their provider keys and dropped, so that [`decode`] refuses the
/// overlong list as [`WireError::Invalid`] after checking at most one key too many.
mod provider_list {
    use super::*;
    use crate::dht::record::RecordSignature;
    use crate::dht::time::Timestamp;

    /// A provider record's fields in wire order, with the provider key left unchecked.
    type UncheckedProviderRecord = (
        Key,
        [u8; NODE_ID_LEN],
        Vec<u8>,
        u64,
        Timestamp,
        RecordSignature,
    );

    pub(super) fn serialize<S: Serializer>(
        records: &[ProviderRecord],
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(records)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Vec<ProviderRecord>, D::Error> {
        deserializer.deserialize_seq(ProviderListVisitor)
    }

    struct ProviderListVisitor;

    impl<'de> Visitor<'de> for ProviderListVisitor {
        type Value = Vec<ProviderRecord>;

        fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(formatter, "a list of provider records")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut records = Vec::new();
            while records.len() <= MAX_PROVIDERS_PER_TOPIC {
                match seq.next_element::<ProviderRecord>()? {
                    Some(record) => records.push(record),
                    None => return Ok(records),
                }
            }
            while seq.next_element::<UncheckedProviderRecord>()?.is_some() {}
            Ok(records)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::key::KEY_LEN;
    use crate::dht::record::{MutableRecord, RecordSignature};
    use crate::dht::time::Timestamp;
    use crate::identity::NodeKeypair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn node_id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    fn record_strategy() -> impl Strategy<Value = Record> {
        let immutable = (proptest::collection::vec(any::<u8>(), 0..256), any::<u64>()).prop_map(
            |(value, expires)| {
                Record::immutable(value, Timestamp::from_millis(expires)).expect("small value")
            },
        );
        let mutable = (
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..MAX_SALT_LEN),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..256),
            any::<u64>(),
            any::<[u8; 32]>(),
        )
            .prop_map(|(owner, salt, seq, value, expires, half)| {
                let mut signature = [0u8; 64];
                signature[..32].copy_from_slice(&half);
                Record::Mutable(MutableRecord {
                    owner: node_id(owner),
                    salt,
                    seq,
                    value,
                    expires_at: Timestamp::from_millis(expires),
                    signature: RecordSignature(signature),
                })
            });
        prop_oneof![immutable, mutable]
    }

    fn peers_strategy() -> impl Strategy<Value = Vec<NodeId>> {
        proptest::collection::vec(any::<u64>(), 0..=MAX_PEERS_PER_RESPONSE)
            .prop_map(|seeds| seeds.into_iter().map(node_id).collect())
    }

    fn record_error_strategy() -> impl Strategy<Value = RecordError> {
        prop_oneof![
            Just(RecordError::Expired),
            Just(RecordError::BadSignature),
            Just(RecordError::NotOwner),
            Just(RecordError::KindMismatch),
            any::<u64>().prop_map(|max_ttl_secs| RecordError::ExpiresTooLate { max_ttl_secs }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(stored, offered)| RecordError::Stale { stored, offered }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(needed, available)| RecordError::QuotaExceeded { needed, available }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(len, max)| RecordError::ValueTooLarge { len, max }),
            (any::<u64>(), any::<u64>())
                .prop_map(|(len, max)| RecordError::SaltTooLong { len, max }),
        ]
    }

    /// Provider records with arbitrary (mostly invalid) signatures: the wire does not check
    /// them.
    fn provider_strategy() -> impl Strategy<Value = ProviderRecord> {
        (
            any::<[u8; 32]>(),
            any::<u64>(),
            proptest::collection::vec(any::<u8>(), 0..=MAX_PROVIDER_INFO),
            any::<u64>(),
            any::<u64>(),
            any::<[u8; 32]>(),
        )
            .prop_map(|(topic, provider, info, seq, expires, half)| {
                let mut signature = [0u8; 64];
                signature[32..].copy_from_slice(&half);
                ProviderRecord {
                    topic: Key::from_bytes(topic),
                    provider: node_id(provider),
                    info,
                    seq,
                    expires_at: Timestamp::from_millis(expires),
                    signature: RecordSignature(signature),
                }
            })
    }

    fn message_strategy() -> impl Strategy<Value = Message> {
        let key = any::<[u8; 32]>().prop_map(Key::from_bytes);
        let request = prop_oneof![
            Just(Request::Ping),
            key.clone().prop_map(|target| Request::FindNode { target }),
            key.clone().prop_map(|key| Request::FindValue { key }),
            record_strategy().prop_map(|record| Request::Store { record }),
            provider_strategy().prop_map(|record| Request::AddProvider { record }),
            key.prop_map(|topic| Request::GetProviders { topic }),
        ];
        let response = prop_oneof![
            Just(Response::Pong),
            peers_strategy().prop_map(|closer| Response::Nodes { closer }),
            (record_strategy(), peers_strategy())
                .prop_map(|(record, closer)| Response::Value { record, closer }),
            proptest::option::of(record_error_strategy()).prop_map(|error| Response::Stored {
                result: error.map_or(Ok(()), Err)
            }),
            (
                proptest::collection::vec(provider_strategy(), 0..=MAX_PROVIDERS_PER_TOPIC),
                peers_strategy()
            )
                .prop_map(|(providers, closer)| Response::Providers { providers, closer }),
        ];
        prop_oneof![
            (any::<u64>(), request).prop_map(|(id, request)| Message::Request {
                id: RequestId(id),
                request
            }),
            (any::<u64>(), response).prop_map(|(id, response)| Message::Response {
                id: RequestId(id),
                response
            }),
        ]
    }

    #[test]
    fn a_maximal_message_fits_the_limit() {
        let keys = NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(1));
        let record = MutableRecord::sign(
            &keys,
            vec![7; MAX_SALT_LEN],
            u64::MAX,
            vec![9; MAX_VALUE_SIZE],
            Timestamp::MAX,
        )
        .expect("within limits");
        let message = Message::Response {
            id: RequestId(u64::MAX),
            response: Response::Value {
                record: Record::Mutable(record),
                closer: (0..MAX_PEERS_PER_RESPONSE as u64).map(node_id).collect(),
            },
        };
        let bytes = encode(&message);
        assert!(bytes.len() <= MAX_MESSAGE_LEN, "{} bytes", bytes.len());
        assert_eq!(decode(&bytes), Ok(message));
    }

    fn maximal_provider(seed: u64) -> ProviderRecord {
        let keys = NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed));
        ProviderRecord::sign(
            &keys,
            Key::for_topic(b"printer"),
            vec![0xee; MAX_PROVIDER_INFO],
            u64::MAX,
            Timestamp::MAX,
        )
        .expect("within limits")
    }

    #[test]
    fn a_maximal_providers_answer_fits_the_limit() {
        let message = Message::Response {
            id: RequestId(u64::MAX),
            response: Response::Providers {
                providers: (0..MAX_PROVIDERS_PER_TOPIC as u64)
                    .map(maximal_provider)
                    .collect(),
                closer: (0..MAX_PEERS_PER_RESPONSE as u64).map(node_id).collect(),
            },
        };
        let bytes = encode(&message);
        // The computation in the documentation of `MAX_MESSAGE_LEN`.
        assert_eq!(bytes.len(), 24_518);
        assert!(bytes.len() <= MAX_MESSAGE_LEN);
        assert_eq!(decode(&bytes), Ok(message));
        let request = Message::Request {
            id: RequestId(u64::MAX),
            request: Request::AddProvider {
                record: maximal_provider(1),
            },
        };
        assert_eq!(decode(&encode(&request)), Ok(request));
    }

    #[test]
    fn too_many_providers_are_refused() {
        let providers: Vec<ProviderRecord> = (0..=MAX_PROVIDERS_PER_TOPIC as u64 + 5)
            .map(|seed| {
                let mut record = maximal_provider(seed);
                record.info.truncate(10);
                record
            })
            .collect();
        for count in [MAX_PROVIDERS_PER_TOPIC + 1, providers.len()] {
            let bytes = encode(&Message::Response {
                id: RequestId(1),
                response: Response::Providers {
                    providers: providers[..count].to_vec(),
                    closer: vec![],
                },
            });
            assert_eq!(
                decode(&bytes),
                Err(WireError::Invalid("too many provider records"))
            );
        }
    }

    #[test]
    fn oversized_provider_info_is_refused() {
        let mut record = maximal_provider(1);
        record.info.push(0);
        let request = encode(&Message::Request {
            id: RequestId(1),
            request: Request::AddProvider {
                record: record.clone(),
            },
        });
        let response = encode(&Message::Response {
            id: RequestId(1),
            response: Response::Providers {
                providers: vec![maximal_provider(2), record],
                closer: vec![],
            },
        });
        for bytes in [request, response] {
            assert_eq!(
                decode(&bytes),
                Err(WireError::Invalid("provider info too large"))
            );
        }
    }

    #[test]
    fn a_provider_with_an_invalid_key_is_refused() {
        let mut bytes = encode(&Message::Request {
            id: RequestId(1),
            request: Request::AddProvider {
                record: maximal_provider(1),
            },
        });
        // Message tag, id, request tag, then the 32-byte topic; the provider key follows.
        let start = 3 + KEY_LEN;
        bytes[start..start + NODE_ID_LEN].copy_from_slice(&[0xff; NODE_ID_LEN]);
        bytes[start] = 0x02;
        assert!(matches!(decode(&bytes), Err(WireError::Undecodable(_))));
    }

    #[test]
    fn too_many_peers_are_refused() {
        let closer: Vec<NodeId> = (0..=MAX_PEERS_PER_RESPONSE as u64).map(node_id).collect();
        let bytes = encode(&Message::Response {
            id: RequestId(1),
            response: Response::Nodes { closer },
        });
        assert!(matches!(decode(&bytes), Err(WireError::Undecodable(_))));
    }

    #[test]
    fn an_invalid_node_id_is_refused() {
        let mut bytes = encode(&Message::Response {
            id: RequestId(1),
            response: Response::Nodes {
                closer: vec![node_id(1)],
            },
        });
        // The id is the last 32 bytes; this y-coordinate is not on the curve.
        let start = bytes.len() - NODE_ID_LEN;
        bytes[start..].copy_from_slice(&[0xff; NODE_ID_LEN]);
        bytes[start] = 0x02;
        assert!(decode(&bytes).is_err());
    }

    #[test]
    fn trailing_bytes_and_oversized_input_are_refused() {
        let mut bytes = encode(&Message::Request {
            id: RequestId(3),
            request: Request::Ping,
        });
        bytes.push(0);
        assert_eq!(
            decode(&bytes),
            Err(WireError::Invalid("trailing bytes after the message"))
        );
        assert_eq!(
            decode(&vec![0; MAX_MESSAGE_LEN + 1]),
            Err(WireError::TooLarge(MAX_MESSAGE_LEN + 1))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        #[test]
        fn every_message_round_trips(message in message_strategy()) {
            let bytes = encode(&message);
            prop_assert!(bytes.len() <= MAX_MESSAGE_LEN);
            prop_assert_eq!(decode(&bytes), Ok(message));
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = decode(&bytes);
        }

        #[test]
        fn decoding_a_mutated_message_never_panics(message in message_strategy(), index: usize, byte: u8) {
            let mut bytes = encode(&message);
            if !bytes.is_empty() {
                let index = index % bytes.len();
                bytes[index] = byte;
            }
            let _ = decode(&bytes);
        }
    }
}
