//! End-to-end encryption of routed data: what rides after the [`PacketHeader`], sealed by
//! the source and opened only by the destination. Relays see the header and forward the
//! payload bytes untouched; they never decrypt, parse or re-serialise it.
//!
//! Sans-IO like the rest of the crate: the caller passes the time (`now`) and the random
//! number generator; nothing here reads a clock or draws from a global RNG.
//!
//! # Construction
//!
//! A one-way, handshake-free pattern, the same shape as Noise's `K` pattern
//! (`-> e, es, ss` with both static keys known in advance): a sender can encrypt to any
//! node id at once, and the recipient learns the session from the first message.
//!
//! - **Static keys from identities.** A node's X25519 public key is the Montgomery form of
//!   its Ed25519 public key, `u = (1 + y) / (1 − y)` ([`x25519_public_key`], via
//!   `ed25519_dalek::VerifyingKey::to_montgomery`); its X25519 secret is the first half of
//!   SHA-512 of its Ed25519 seed (`SigningKey::to_scalar_bytes`, clamped by X25519). No
//!   separate encryption key needs to be published or looked up.
//! - **Per session**, the sender draws an ephemeral X25519 secret `e` (public `E`), a
//!   random 64-bit `session_id`, and notes `created_at` (its clock, ms). With `s_s`/`S_s`
//!   the sender's static pair and `S_r` the recipient's static public key:
//!
//!   ```text
//!   es   = X25519(e,   S_r)          (recipient: X25519(s_r, E))
//!   ss   = X25519(s_s, S_r)          (recipient: X25519(s_r, S_s))
//!   key  = HKDF-SHA256(
//!            salt = session_id as 8 bytes big-endian,
//!            ikm  = es || ss,                                   (64 bytes)
//!            info = "meshcore-e2e-v1"                           (15 bytes, KDF_LABEL)
//!                   || sender Ed25519 public key                (32)
//!                   || recipient Ed25519 public key             (32)
//!                   || E                                        (32)
//!                   || session_id, 8 bytes big-endian
//!                   || created_at, 8 bytes big-endian (ms),
//!            L = 32)                                  → AES-256-GCM key
//!   ```
//!
//!   Both X25519 results must be non-zero (`was_contributory`): a small-order key on
//!   either side is refused ([`KeyError::WeakKey`]).
//! - **Messages.** Message `n` of a session (n = 0, 1, 2, …) is
//!   `AES-256-GCM(key, nonce = 0x00000000 || n as 8 bytes big-endian,
//!   aad = preamble || associated_data, plaintext)`, where the preamble is the first
//!   [`PREAMBLE_LEN`] bytes of the sealed payload (version, `E`, `session_id`,
//!   `created_at`, `n`; see [`wire`]). The key serves one direction of one session, so the
//!   nonce prefix is constant; the counter never repeats: a [`Session`] refuses to seal
//!   past [`REJECT_AFTER_MESSAGES`] and after [`REJECT_AFTER_TIME`], and should be
//!   replaced after [`REKEY_AFTER_TIME`] (120 s) or [`REKEY_AFTER_MESSAGES`] (2^60).
//!   A reply is another session, from the other side.
//! - **Replay.** The [`Receiver`] keeps a [`ReplayWindow`] of 8192 bits (RFC 6479's
//!   layout, as WireGuard) per `(sender, session)`: each counter is accepted once,
//!   counters up to [`REPLAY_WINDOW_LEN`] behind the highest may arrive out of order, older
//!   ones are refused. Sessions older than [`REJECT_AFTER_TIME`] plus the clock-skew
//!   allowance are refused, which bounds how long a session must be remembered. A message
//!   that fails any check changes no state.
//!
//! # What the associated data covers
//!
//! The routing header travels in clear and `hop_limit` changes at every hop, so it cannot
//! be authenticated as sent. [`header_associated_data`] gives the header's immutable
//! fields — version, `flow_id`, `sequence`, source and destination, everything but
//! `hop_limit` — and both ends pass it as `associated_data`. A relay that alters any of
//! them (or moves the payload under another header) makes the message fail to open; a
//! relay may lower `hop_limit`, which is its job. The sender and recipient ids are also in
//! the key derivation, so a payload opens only for the node it was sealed for, as coming
//! from the node that sealed it.
//!
//! # Security properties and limits
//!
//! - *Confidentiality and integrity* of the payload, and *authentication of the sender*:
//!   only the holders of `s_s` or `s_r` can compute `ss`. As in every one-way pattern, a
//!   thief of the recipient's secret can also forge messages *to* the recipient (key
//!   compromise impersonation), and a recipient cannot prove to others who sent a message
//!   (no signature: the budget allows none per packet).
//! - *Forward secrecy against the sender's key only.* A stolen sender secret does not
//!   reveal past sessions (they need `e`, erased after the exchange, or `s_r`). A stolen
//!   **recipient** secret decrypts every recorded session to that recipient: forward
//!   secrecy against that needs an ephemeral key from the recipient, i.e. a round trip,
//!   which this handshake-free layer does not have.
//! - *One key, two uses.* The Ed25519 identity key also serves X25519, so that a node id
//!   is all a sender needs. Thormarker, "On using the same key pair for Ed25519 and an
//!   X25519 based KEM" (ePrint 2021/509) finds this reuse secure, under its assumptions,
//!   for an X25519-based KEM, the shape of the `es` half; the static–static `ss` half is
//!   outside that analysis. Signatures and key agreement never process each other's
//!   values.
//! - *Replay* is refused within a session's lifetime as long as its window is remembered;
//!   see [`Receiver`] for the bounded table and what eviction gives up.
//!
//! # Usage
//!
//! ```
//! use meshcore_proto::e2e::{header_associated_data, Receiver, ReceiverConfig, Session};
//! use meshcore_proto::route::{PacketHeader, Timestamp};
//! use meshcore_proto::NodeKeypair;
//! use rand_chacha::{rand_core::SeedableRng, ChaCha20Rng};
//!
//! let mut rng = ChaCha20Rng::seed_from_u64(7);
//! let alice = NodeKeypair::generate(&mut rng);
//! let bob = NodeKeypair::generate(&mut rng);
//! let now = Timestamp::from_millis(1_700_000_000_000);
//!
//! // Alice seals a message for Bob and sends it after the routing header.
//! let mut session = Session::new(&alice, bob.node_id(), now, &mut rng)?;
//! let header = PacketHeader {
//!     hop_limit: 8,
//!     flow_id: 1,
//!     sequence: 0,
//!     source: alice.node_id(),
//!     destination: bob.node_id(),
//! };
//! let sealed = session.seal(now, b"hello", &header_associated_data(&header))?;
//! let mut packet = header.encode(&sealed);
//!
//! // A relay changes the hop limit only.
//! PacketHeader::forward_in_place(&mut packet)?;
//!
//! // Bob opens it, once.
//! let mut receiver = Receiver::new(&bob, ReceiverConfig::new());
//! let (header, sealed) = PacketHeader::decode(&packet)?;
//! let aad = header_associated_data(&header);
//! assert_eq!(receiver.open_bytes(now, header.source, sealed, &aad)?, b"hello");
//! assert!(receiver.open_bytes(now, header.source, sealed, &aad).is_err());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Files
//!
//! - [`wire`] — the sealed payload format, [`SealedPayload`];
//! - [`keys`] — identity key conversion, the key schedule, the AEAD, and their
//!   known-answer tests;
//! - [`session`] — the sending [`Session`];
//! - [`receiver`] — the [`Receiver`] and its bounded session table;
//! - [`replay`] — the [`ReplayWindow`].

pub mod keys;
pub mod receiver;
pub mod replay;
pub mod session;
pub mod wire;

#[cfg(test)]
mod tests;

pub use keys::{x25519_public_key, KeyError, KDF_LABEL};
pub use receiver::{OpenError, Receiver, ReceiverConfig, ReceiverCounters};
pub use replay::{ReplayError, ReplayWindow, REPLAY_BITMAP_BITS, REPLAY_WINDOW_LEN};
pub use session::{
    SealError, Session, REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME, REKEY_AFTER_MESSAGES,
    REKEY_AFTER_TIME,
};
pub use wire::{
    PayloadError, SealedPayload, SessionHeader, E2E_VERSION, MAX_PLAINTEXT_LEN, MAX_SEALED_LEN,
    PREAMBLE_LEN, SEAL_OVERHEAD, TAG_LEN,
};

use crate::route::{PacketHeader, HEADER_LEN, HEADER_VERSION};

/// Length of [`header_associated_data`]: the routing header without `hop_limit` (77).
pub const HEADER_AAD_LEN: usize = HEADER_LEN - 1;

/// The associated data that binds a sealed payload to its routing header: the header's
/// fields that no relay changes, in header order, without `hop_limit`:
///
/// ```text
/// offset  size  field
///      0     1  header version (HEADER_VERSION)
///      1     4  flow_id (big-endian)
///      5     8  sequence (big-endian)
///     13    32  source node id
///     45    32  destination node id
/// ```
pub fn header_associated_data(header: &PacketHeader) -> [u8; HEADER_AAD_LEN] {
    let mut aad = [0u8; HEADER_AAD_LEN];
    aad[0] = HEADER_VERSION;
    aad[1..5].copy_from_slice(&header.flow_id.to_be_bytes());
    aad[5..13].copy_from_slice(&header.sequence.to_be_bytes());
    aad[13..45].copy_from_slice(header.source.as_bytes());
    aad[45..].copy_from_slice(header.destination.as_bytes());
    aad
}
