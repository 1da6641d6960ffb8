//! Messages to and from browsers, carried between nodes across the mesh (issue 6).
//!
//! A browser is reachable only through the node it has a data channel with, its gateway.
//! Nodes therefore exchange [`Envelope`]s, as routed end-to-end sealed messages on their own
//! flow, naming the peers the message is really from and to:
//!
//! - a node sends to a browser by sending a [`Envelope::Message`] with `to` = the browser to
//!   the browser's gateway (found in the DHT); the envelope's `from` is the sending node,
//!   which the end-to-end seal already authenticates;
//! - a browser sends to any peer through its gateway; the envelope's `from` is the browser,
//!   and the browser's own signature ([`SenderSignature`], text [`message_text`]) proves it,
//!   so a gateway cannot put words in a browser's mouth, and [`ReplayGuard`] keeps it from
//!   sending the same signed message twice;
//! - the node that hands the message over (to its own inbox or to a browser's data channel)
//!   answers with an [`Envelope::Receipt`] naming the message by its random id.
//!
//! [`Envelope::decode`] takes untrusted bytes and never panics (fuzz target
//! `browser_envelope`). All integers are big-endian.
//!
//! | kind | body |
//! |---|---|
//! | 0x01 MESSAGE | 16-byte id, 32-byte `to`, 32-byte `from`, u8 flags (bit 0: signed), [u64 timestamp ms, 64-byte signature when signed], payload |
//! | 0x02 RECEIPT | 16-byte id, u8 status (0 delivered, 1 not), u8 hops, UTF-8 error text (when not) |

use std::collections::{HashSet, VecDeque};

use sha2::{Digest, Sha256};

use crate::identity::{NodeId, NodeKeypair, SignatureDomain, SignatureError, NODE_ID_LEN};

/// Bytes of a message id.
pub const MESSAGE_ID_LEN: usize = 16;

/// A message's random id, chosen by its sender.
pub type MessageId = [u8; MESSAGE_ID_LEN];

/// Bytes of an Ed25519 signature.
pub const SIGNATURE_LEN: usize = 64;

/// Largest payload in an envelope (a data-channel body).
pub const MAX_PAYLOAD: usize = crate::browser::MAX_BODY;

/// Largest error text in a receipt.
pub const MAX_ERROR_TEXT: usize = crate::browser::MAX_ERROR_TEXT;

/// Bytes an envelope adds to a signed message's payload.
pub const SIGNED_OVERHEAD: usize = 1 + MESSAGE_ID_LEN + 2 * NODE_ID_LEN + 1 + 8 + SIGNATURE_LEN;

/// How far a signed message's timestamp may be from the receiver's clock, either way
/// (milliseconds).
pub const MAX_CLOCK_SKEW_MS: u64 = 5 * 60 * 1000;

/// Most signed messages a [`ReplayGuard`] remembers.
pub const REPLAY_MEMORY: usize = 65_536;

const KIND_MESSAGE: u8 = 0x01;
const KIND_RECEIPT: u8 = 0x02;
const FLAG_SIGNED: u8 = 0x01;

/// What one node sends another about a browser's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Envelope {
    /// A message to hand to `to`.
    Message(EnvelopeMessage),
    /// The outcome of a [`Envelope::Message`], sent back to the node that sent it.
    Receipt(Receipt),
}

/// A message between two peers, at least one of them a browser.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvelopeMessage {
    /// Its random id, echoed in the receipt.
    pub id: MessageId,
    /// The peer it is for: a browser or a node.
    pub to: NodeId,
    /// The peer it is from: the sending node itself (unsigned), or a browser (signed).
    pub from: NodeId,
    /// The browser's signature, when `from` is a browser.
    pub signed: Option<SenderSignature>,
    /// The application payload (UTF-8 text by the browser client's convention).
    pub payload: Vec<u8>,
}

/// A browser's signature over its message ([`message_text`], domain
/// [`SignatureDomain::BrowserMessage`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderSignature {
    /// When the browser signed it, Unix milliseconds by its clock.
    pub timestamp_ms: u64,
    /// The Ed25519 signature.
    pub signature: [u8; SIGNATURE_LEN],
}

/// Whether a message reached its peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The message it answers.
    pub id: MessageId,
    /// `Ok(hops)` — links crossed after the envelope arrived (0 for the node itself, 1 for a
    /// browser's data channel) — or why it was not delivered.
    pub outcome: Result<u8, String>,
}

/// Why bytes are not an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    /// Nothing at all.
    #[error("an empty envelope")]
    Empty,
    /// The first byte is no known kind.
    #[error("an envelope of the unknown kind 0x{0:02x}")]
    UnknownKind(u8),
    /// Shorter than its fixed fields.
    #[error("a truncated {0}")]
    Truncated(&'static str),
    /// Over the size limit.
    #[error("an envelope of {0} bytes is over the limit")]
    TooLarge(usize),
    /// A peer id is not an Ed25519 public key.
    #[error("the {0} id is not a node id")]
    BadId(&'static str),
    /// Flag bits this version does not know.
    #[error("unknown message flags 0x{0:02x}")]
    Flags(u8),
    /// A receipt's status is neither 0 nor 1.
    #[error("a receipt with the unknown status {0}")]
    Status(u8),
    /// A receipt's error text is not UTF-8.
    #[error("a receipt whose error text is not UTF-8")]
    Utf8,
    /// A delivered receipt carries error text.
    #[error("a delivered receipt with error text")]
    TextOnSuccess,
}

impl Envelope {
    /// The envelope's bytes.
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Self::Message(message) => {
                let mut out = Vec::with_capacity(SIGNED_OVERHEAD + message.payload.len());
                out.push(KIND_MESSAGE);
                out.extend_from_slice(&message.id);
                out.extend_from_slice(message.to.as_bytes());
                out.extend_from_slice(message.from.as_bytes());
                match &message.signed {
                    Some(signed) => {
                        out.push(FLAG_SIGNED);
                        out.extend_from_slice(&signed.timestamp_ms.to_be_bytes());
                        out.extend_from_slice(&signed.signature);
                    }
                    None => out.push(0),
                }
                out.extend_from_slice(&message.payload);
                out
            }
            Self::Receipt(receipt) => {
                let mut out = Vec::with_capacity(1 + MESSAGE_ID_LEN + 2);
                out.push(KIND_RECEIPT);
                out.extend_from_slice(&receipt.id);
                match &receipt.outcome {
                    Ok(hops) => out.extend_from_slice(&[0, *hops]),
                    Err(text) => {
                        out.extend_from_slice(&[1, 0]);
                        let mut end = text.len().min(MAX_ERROR_TEXT);
                        while !text.is_char_boundary(end) {
                            end -= 1;
                        }
                        out.extend_from_slice(&text.as_bytes()[..end]);
                    }
                }
                out
            }
        }
    }

    /// Decodes untrusted bytes.
    pub fn decode(bytes: &[u8]) -> Result<Self, EnvelopeError> {
        if bytes.len() > SIGNED_OVERHEAD + MAX_PAYLOAD {
            return Err(EnvelopeError::TooLarge(bytes.len()));
        }
        let (&kind, body) = bytes.split_first().ok_or(EnvelopeError::Empty)?;
        let mut reader = Reader(body);
        match kind {
            KIND_MESSAGE => {
                let truncated = EnvelopeError::Truncated("message");
                let id = reader.array::<MESSAGE_ID_LEN>().ok_or(truncated.clone())?;
                let to = reader.id("to")?;
                let from = reader.id("from")?;
                let flags = reader.array::<1>().ok_or(truncated.clone())?[0];
                let signed = match flags {
                    0 => None,
                    FLAG_SIGNED => Some(SenderSignature {
                        timestamp_ms: u64::from_be_bytes(
                            reader.array::<8>().ok_or(truncated.clone())?,
                        ),
                        signature: reader.array::<SIGNATURE_LEN>().ok_or(truncated)?,
                    }),
                    other => return Err(EnvelopeError::Flags(other)),
                };
                Ok(Self::Message(EnvelopeMessage {
                    id,
                    to,
                    from,
                    signed,
                    payload: reader.0.to_vec(),
                }))
            }
            KIND_RECEIPT => {
                let truncated = EnvelopeError::Truncated("receipt");
                let id = reader.array::<MESSAGE_ID_LEN>().ok_or(truncated.clone())?;
                let [status, hops] = reader.array::<2>().ok_or(truncated)?;
                let text = reader.0;
                if text.len() > MAX_ERROR_TEXT {
                    return Err(EnvelopeError::TooLarge(bytes.len()));
                }
                let outcome = match status {
                    0 if text.is_empty() => Ok(hops),
                    0 => return Err(EnvelopeError::TextOnSuccess),
                    1 => Err(std::str::from_utf8(text)
                        .map_err(|_| EnvelopeError::Utf8)?
                        .to_owned()),
                    other => return Err(EnvelopeError::Status(other)),
                };
                Ok(Self::Receipt(Receipt { id, outcome }))
            }
            other => Err(EnvelopeError::UnknownKind(other)),
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.0.len() < N {
            return None;
        }
        let (head, rest) = self.0.split_at(N);
        self.0 = rest;
        head.try_into().ok()
    }

    fn id(&mut self, field: &'static str) -> Result<NodeId, EnvelopeError> {
        let bytes = self
            .array::<NODE_ID_LEN>()
            .ok_or(EnvelopeError::Truncated("message"))?;
        NodeId::from_bytes(bytes).map_err(|_| EnvelopeError::BadId(field))
    }
}

/// The text a browser signs (domain [`SignatureDomain::BrowserMessage`]) for a message it
/// sends across the mesh: six lines joined by `\n` — `meshcore-browser-message/1`, its id,
/// the recipient's id, the message id (32 hex), the timestamp in Unix milliseconds
/// (decimal) and the SHA-256 of the payload (64 hex).
pub fn message_text(
    from: &NodeId,
    to: &NodeId,
    id: &MessageId,
    timestamp_ms: u64,
    payload: &[u8],
) -> String {
    format!(
        "meshcore-browser-message/1\n{}\n{}\n{}\n{timestamp_ms}\n{}",
        from.to_hex(),
        to.to_hex(),
        hex::encode(id),
        hex::encode(Sha256::digest(payload)),
    )
}

/// Signs a message as its sender `keys` would (the browser client does the same in
/// JavaScript).
pub fn sign_message(
    keys: &NodeKeypair,
    to: &NodeId,
    id: &MessageId,
    timestamp_ms: u64,
    payload: &[u8],
) -> SenderSignature {
    let text = message_text(&keys.node_id(), to, id, timestamp_ms, payload);
    SenderSignature {
        timestamp_ms,
        signature: keys
            .sign(SignatureDomain::BrowserMessage, text.as_bytes())
            .to_bytes(),
    }
}

/// Checks that `signed` is `from`'s signature over the message `id` to `to` with `payload`.
pub fn verify_message(
    from: &NodeId,
    to: &NodeId,
    id: &MessageId,
    signed: &SenderSignature,
    payload: &[u8],
) -> Result<(), SignatureError> {
    let text = message_text(from, to, id, signed.timestamp_ms, payload);
    from.verify(
        SignatureDomain::BrowserMessage,
        text.as_bytes(),
        &signed.signature,
    )
}

/// Why a signed message was refused by a [`ReplayGuard`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// Its timestamp is older than the window (or older than what the guard had to forget).
    #[error("signed {0} ms ago, older than the {MAX_CLOCK_SKEW_MS} ms accepted")]
    TooOld(u64),
    /// Its timestamp is ahead of the receiver's clock by more than the window.
    #[error("signed {0} ms in the future, more than the {MAX_CLOCK_SKEW_MS} ms accepted")]
    FromTheFuture(u64),
    /// The same message (sender and id) was accepted before.
    #[error("the same signed message arrived before")]
    Replayed,
}

/// Accepts each signed message (by sender and id) once, within [`MAX_CLOCK_SKEW_MS`] of
/// the receiver's clock. It remembers at most [`REPLAY_MEMORY`] messages; when it must
/// forget one early, it refuses everything signed no later than the forgotten one, so that
/// forgetting never lets a replay through.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashSet<(NodeId, MessageId)>,
    order: VecDeque<(u64, NodeId, MessageId)>,
    floor_ms: u64,
}

impl ReplayGuard {
    /// An empty guard.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages remembered now.
    pub fn len(&self) -> usize {
        self.order.len()
    }

    /// Whether it remembers nothing.
    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Accepts the message `id` from `from`, signed at `timestamp_ms`, at `now_ms`; or says
    /// why not (and then remembers nothing).
    pub fn check(
        &mut self,
        from: NodeId,
        id: MessageId,
        timestamp_ms: u64,
        now_ms: u64,
    ) -> Result<(), ReplayError> {
        if timestamp_ms > now_ms.saturating_add(MAX_CLOCK_SKEW_MS) {
            return Err(ReplayError::FromTheFuture(timestamp_ms - now_ms));
        }
        let age = now_ms.saturating_sub(timestamp_ms);
        if age > MAX_CLOCK_SKEW_MS || (self.floor_ms > 0 && timestamp_ms <= self.floor_ms) {
            return Err(ReplayError::TooOld(age));
        }
        if self.seen.contains(&(from, id)) {
            return Err(ReplayError::Replayed);
        }
        // What is older than the window would be refused anyway: forget it.
        while let Some(&(signed, old_from, old_id)) = self.order.front() {
            if now_ms.saturating_sub(signed) <= MAX_CLOCK_SKEW_MS
                && self.order.len() < REPLAY_MEMORY
            {
                break;
            }
            if now_ms.saturating_sub(signed) <= MAX_CLOCK_SKEW_MS {
                self.floor_ms = self.floor_ms.max(signed);
            }
            self.order.pop_front();
            self.seen.remove(&(old_from, old_id));
        }
        self.seen.insert((from, id));
        self.order.push_back((timestamp_ms, from, id));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;

    fn keys(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    fn signed_message(payload: &[u8]) -> (NodeKeypair, EnvelopeMessage) {
        let (browser, node) = (keys(1), keys(2).node_id());
        let id = [7u8; MESSAGE_ID_LEN];
        let signed = sign_message(&browser, &node, &id, 1_700_000_000_000, payload);
        let message = EnvelopeMessage {
            id,
            to: node,
            from: browser.node_id(),
            signed: Some(signed),
            payload: payload.to_vec(),
        };
        (browser, message)
    }

    #[test]
    fn every_envelope_survives_a_round_trip() {
        let (_, signed) = signed_message(b"{\"text\":\"hi\"}");
        let unsigned = EnvelopeMessage {
            signed: None,
            payload: Vec::new(),
            ..signed.clone()
        };
        for envelope in [
            Envelope::Message(signed),
            Envelope::Message(unsigned),
            Envelope::Receipt(Receipt {
                id: [1; MESSAGE_ID_LEN],
                outcome: Ok(1),
            }),
            Envelope::Receipt(Receipt {
                id: [2; MESSAGE_ID_LEN],
                outcome: Err("not connected here".to_owned()),
            }),
        ] {
            assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
        }
    }

    #[test]
    fn a_signed_message_is_exactly_its_overhead_longer_than_its_payload() {
        let (_, message) = signed_message(b"12345");
        assert_eq!(
            Envelope::Message(message).encode().len(),
            SIGNED_OVERHEAD + 5
        );
    }

    #[test]
    fn malformed_envelopes_are_refused_with_the_reason() {
        let (_, message) = signed_message(b"x");
        let good = Envelope::Message(message).encode();
        assert_eq!(Envelope::decode(&[]), Err(EnvelopeError::Empty));
        assert_eq!(Envelope::decode(&[9]), Err(EnvelopeError::UnknownKind(9)));
        assert_eq!(
            Envelope::decode(&good[..40]),
            Err(EnvelopeError::Truncated("message"))
        );
        let mut flags = good.clone();
        flags[1 + MESSAGE_ID_LEN + 2 * NODE_ID_LEN] = 0x80;
        assert_eq!(Envelope::decode(&flags), Err(EnvelopeError::Flags(0x80)));
        // A y coordinate that is no point on the curve: not a node id.
        let mut bad_id = good.clone();
        bad_id[1 + MESSAGE_ID_LEN..1 + MESSAGE_ID_LEN + NODE_ID_LEN].copy_from_slice(&[
            0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0,
        ]);
        assert_eq!(Envelope::decode(&bad_id), Err(EnvelopeError::BadId("to")));
        let mut receipt = Envelope::Receipt(Receipt {
            id: [0; MESSAGE_ID_LEN],
            outcome: Ok(0),
        })
        .encode();
        receipt[1 + MESSAGE_ID_LEN] = 3;
        assert_eq!(Envelope::decode(&receipt), Err(EnvelopeError::Status(3)));
        receipt[1 + MESSAGE_ID_LEN] = 0;
        receipt.push(b'!');
        assert_eq!(
            Envelope::decode(&receipt),
            Err(EnvelopeError::TextOnSuccess)
        );
        let huge = vec![KIND_MESSAGE; SIGNED_OVERHEAD + MAX_PAYLOAD + 1];
        assert!(matches!(
            Envelope::decode(&huge),
            Err(EnvelopeError::TooLarge(_))
        ));
    }

    #[test]
    fn a_receipts_error_text_is_cut_at_the_limit_on_a_character_boundary() {
        let long = "é".repeat(MAX_ERROR_TEXT);
        let encoded = Envelope::Receipt(Receipt {
            id: [0; MESSAGE_ID_LEN],
            outcome: Err(long),
        })
        .encode();
        let Ok(Envelope::Receipt(Receipt {
            outcome: Err(text), ..
        })) = Envelope::decode(&encoded)
        else {
            panic!("decodes");
        };
        assert_eq!(text.len(), MAX_ERROR_TEXT);
    }

    #[test]
    fn only_the_senders_signature_over_exactly_this_message_verifies() {
        let (_, message) = signed_message(b"pay me");
        let signed = message.signed.expect("signed");
        let check = |from: &NodeId, to: &NodeId, id: &MessageId, payload: &[u8]| {
            verify_message(from, to, id, &signed, payload)
        };
        assert!(check(&message.from, &message.to, &message.id, b"pay me").is_ok());
        assert!(check(&message.from, &message.to, &message.id, b"pay you").is_err());
        assert!(check(&message.from, &keys(3).node_id(), &message.id, b"pay me").is_err());
        assert!(check(&message.from, &message.to, &[8; MESSAGE_ID_LEN], b"pay me").is_err());
        assert!(check(&keys(3).node_id(), &message.to, &message.id, b"pay me").is_err());
        let later = SenderSignature {
            timestamp_ms: signed.timestamp_ms + 1,
            ..signed
        };
        assert!(
            verify_message(&message.from, &message.to, &message.id, &later, b"pay me").is_err()
        );
    }

    #[test]
    fn the_signed_text_is_the_documented_one() {
        let (from, to) = (keys(1).node_id(), keys(2).node_id());
        let text = message_text(&from, &to, &[0xab; MESSAGE_ID_LEN], 42, b"");
        let lines: Vec<&str> = text.split('\n').collect();
        assert_eq!(
            lines,
            [
                "meshcore-browser-message/1",
                from.to_hex().as_str(),
                to.to_hex().as_str(),
                "abababababababababababababababab",
                "42",
                // SHA-256 of nothing.
                "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            ]
        );
    }

    #[test]
    fn the_replay_guard_accepts_each_message_once_within_the_window() {
        let mut guard = ReplayGuard::new();
        let browser = keys(1).node_id();
        let now = 10 * MAX_CLOCK_SKEW_MS;
        assert_eq!(guard.check(browser, [1; 16], now, now), Ok(()));
        assert_eq!(
            guard.check(browser, [1; 16], now, now + 1),
            Err(ReplayError::Replayed)
        );
        assert_eq!(guard.check(keys(2).node_id(), [1; 16], now, now), Ok(()));
        assert_eq!(
            guard.check(browser, [2; 16], now - MAX_CLOCK_SKEW_MS - 1, now),
            Err(ReplayError::TooOld(MAX_CLOCK_SKEW_MS + 1))
        );
        assert_eq!(
            guard.check(browser, [3; 16], now + MAX_CLOCK_SKEW_MS + 1, now),
            Err(ReplayError::FromTheFuture(MAX_CLOCK_SKEW_MS + 1))
        );
        // Once the window has passed, the old message is forgotten: it is too old now.
        let later = now + MAX_CLOCK_SKEW_MS + 1;
        assert_eq!(guard.check(browser, [4; 16], later, later), Ok(()));
        assert_eq!(guard.len(), 1);
        assert!(matches!(
            guard.check(browser, [1; 16], now, later),
            Err(ReplayError::TooOld(_))
        ));
    }

    #[test]
    fn a_full_replay_guard_refuses_what_it_had_to_forget_rather_than_accept_a_replay() {
        let mut guard = ReplayGuard::new();
        let browser = keys(1).node_id();
        let now = 10 * MAX_CLOCK_SKEW_MS;
        let start = now - 1000;
        for i in 0..REPLAY_MEMORY as u64 {
            let mut id = [0u8; 16];
            id[..8].copy_from_slice(&i.to_be_bytes());
            assert_eq!(guard.check(browser, id, start + i % 1000, now), Ok(()));
        }
        let mut newest = [0xff; 16];
        newest[0] = 1;
        assert_eq!(guard.check(browser, newest, now, now), Ok(()));
        assert_eq!(guard.len(), REPLAY_MEMORY);
        // The first one was forgotten; sending it again is refused, not accepted.
        assert!(matches!(
            guard.check(browser, [0; 16], start, now),
            Err(ReplayError::TooOld(_))
        ));
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_round_trips(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(envelope) = Envelope::decode(&bytes) {
                prop_assert_eq!(Envelope::decode(&envelope.encode()), Ok(envelope));
            }
        }
    }
}
