//! The wire format of a sealed payload: what rides after the routing header.
//!
//! ```text
//! offset  size  field
//!      0     1  version (E2E_VERSION)
//!      1    32  sender's ephemeral X25519 public key
//!     33     8  session id (big-endian)
//!     41     8  session creation time, ms since the epoch, sender's clock (big-endian)
//!     49     8  message counter (big-endian)
//!     57  n+16  AES-256-GCM ciphertext of the n-byte plaintext, then the 16-byte tag
//! ```
//!
//! The first [`PREAMBLE_LEN`] bytes are the *preamble*; they are authenticated as the
//! first part of the AEAD's associated data, so every bit of a sealed payload is covered by
//! the tag. Every field has a fixed size, so encoding is canonical: a decoded payload
//! re-encodes to the same bytes.

use crate::dht::time::Timestamp;

/// The payload format version this code reads and writes.
pub const E2E_VERSION: u8 = 1;

/// Length of an X25519 public key.
pub const EPHEMERAL_KEY_LEN: usize = 32;

/// Length of the preamble: version, session header and counter.
pub const PREAMBLE_LEN: usize = 1 + EPHEMERAL_KEY_LEN + 8 + 8 + 8;

/// Length of the AES-256-GCM tag.
pub const TAG_LEN: usize = 16;

/// Bytes a sealed payload adds to its plaintext (73).
pub const SEAL_OVERHEAD: usize = PREAMBLE_LEN + TAG_LEN;

/// Largest plaintext one payload carries: 60 KiB. With [`SEAL_OVERHEAD`] and the 78-byte
/// routing header, a packet stays well inside the 64 KiB link frame
/// ([`MAX_FRAME_LEN`](crate::link::MAX_FRAME_LEN)).
pub const MAX_PLAINTEXT_LEN: usize = 60 * 1024;

/// Largest sealed payload: [`MAX_PLAINTEXT_LEN`] + [`SEAL_OVERHEAD`].
pub const MAX_SEALED_LEN: usize = MAX_PLAINTEXT_LEN + SEAL_OVERHEAD;

// A whole packet (routing header + largest sealed payload) fits one link frame.
const _: () = assert!(crate::route::HEADER_LEN + MAX_SEALED_LEN <= crate::link::MAX_FRAME_LEN);

const SESSION_ID_AT: usize = 1 + EPHEMERAL_KEY_LEN;
const CREATED_AT_AT: usize = SESSION_ID_AT + 8;
const COUNTER_AT: usize = CREATED_AT_AT + 8;

/// What identifies a session to its recipient; sent with every message of the session.
///
/// All of it is bound into the session key, so a changed field makes the message fail to
/// open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SessionHeader {
    /// The sender's ephemeral X25519 public key for this session.
    pub ephemeral: [u8; EPHEMERAL_KEY_LEN],
    /// A random id the sender picked for this session.
    pub session_id: u64,
    /// When the sender created the session, on the sender's clock. The recipient refuses
    /// sessions too old or too far in the future (see [`Receiver`](super::Receiver)).
    pub created_at: Timestamp,
}

/// A decoded sealed payload: the session it belongs to, its counter and its ciphertext.
/// Decoding checks only the framing; [`Receiver::open`](super::Receiver::open)
/// authenticates it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SealedPayload<'a> {
    /// The session the message belongs to.
    pub session: SessionHeader,
    /// The message's number within the session; it makes the nonce.
    pub counter: u64,
    /// Ciphertext followed by the 16-byte tag (at least [`TAG_LEN`] bytes).
    pub ciphertext: &'a [u8],
}

/// Why bytes are not a sealed payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    /// Fewer bytes than the preamble and a tag.
    #[error("sealed payload of {0} bytes is shorter than the {SEAL_OVERHEAD}-byte minimum")]
    TooShort(usize),
    /// More bytes than the largest sealed payload.
    #[error("sealed payload of {0} bytes exceeds the limit of {MAX_SEALED_LEN}")]
    TooLong(usize),
    /// A payload version this code does not know.
    #[error("unknown sealed payload version {0}")]
    UnknownVersion(u8),
}

impl<'a> SealedPayload<'a> {
    /// Reads a sealed payload. Checks the version and the length bounds only.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, PayloadError> {
        if bytes.len() < SEAL_OVERHEAD {
            return Err(PayloadError::TooShort(bytes.len()));
        }
        if bytes.len() > MAX_SEALED_LEN {
            return Err(PayloadError::TooLong(bytes.len()));
        }
        if bytes[0] != E2E_VERSION {
            return Err(PayloadError::UnknownVersion(bytes[0]));
        }
        let mut ephemeral = [0u8; EPHEMERAL_KEY_LEN];
        ephemeral.copy_from_slice(&bytes[1..SESSION_ID_AT]);
        Ok(Self {
            session: SessionHeader {
                ephemeral,
                session_id: read_u64(&bytes[SESSION_ID_AT..CREATED_AT_AT]),
                created_at: Timestamp::from_millis(read_u64(&bytes[CREATED_AT_AT..COUNTER_AT])),
            },
            counter: read_u64(&bytes[COUNTER_AT..PREAMBLE_LEN]),
            ciphertext: &bytes[PREAMBLE_LEN..],
        })
    }

    /// The encoded payload: preamble, then ciphertext and tag.
    pub fn encode(&self) -> Vec<u8> {
        let mut bytes = Vec::with_capacity(self.encoded_len());
        bytes.extend_from_slice(&preamble(&self.session, self.counter));
        bytes.extend_from_slice(self.ciphertext);
        bytes
    }

    /// Length of [`SealedPayload::encode`]'s output.
    pub fn encoded_len(&self) -> usize {
        PREAMBLE_LEN + self.ciphertext.len()
    }
}

/// The preamble of a message: version, session header, counter.
pub(crate) fn preamble(session: &SessionHeader, counter: u64) -> [u8; PREAMBLE_LEN] {
    let mut bytes = [0u8; PREAMBLE_LEN];
    bytes[0] = E2E_VERSION;
    bytes[1..SESSION_ID_AT].copy_from_slice(&session.ephemeral);
    bytes[SESSION_ID_AT..CREATED_AT_AT].copy_from_slice(&session.session_id.to_be_bytes());
    bytes[CREATED_AT_AT..COUNTER_AT].copy_from_slice(&session.created_at.as_millis().to_be_bytes());
    bytes[COUNTER_AT..].copy_from_slice(&counter.to_be_bytes());
    bytes
}

fn read_u64(bytes: &[u8]) -> u64 {
    let mut array = [0u8; 8];
    array.copy_from_slice(bytes);
    u64::from_be_bytes(array)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(ciphertext: &[u8]) -> SealedPayload<'_> {
        SealedPayload {
            session: SessionHeader {
                ephemeral: [7; EPHEMERAL_KEY_LEN],
                session_id: 0x0102_0304_0506_0708,
                created_at: Timestamp::from_millis(1_700_000_000_000),
            },
            counter: 42,
            ciphertext,
        }
    }

    #[test]
    fn the_layout_matches_the_documented_table() {
        let ciphertext = [0xAA; TAG_LEN + 3];
        let bytes = sample(&ciphertext).encode();
        assert_eq!(bytes.len(), PREAMBLE_LEN + ciphertext.len());
        assert_eq!(PREAMBLE_LEN, 57);
        assert_eq!(bytes[0], E2E_VERSION);
        assert_eq!(bytes[1..33], [7; 32]);
        assert_eq!(bytes[33..41], [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(bytes[41..49], 1_700_000_000_000u64.to_be_bytes());
        assert_eq!(bytes[49..57], 42u64.to_be_bytes());
        assert_eq!(bytes[57..], ciphertext);
        assert_eq!(SealedPayload::decode(&bytes), Ok(sample(&ciphertext)));
    }

    #[test]
    fn short_long_and_unknown_payloads_are_refused() {
        let ciphertext = [0u8; TAG_LEN];
        let bytes = sample(&ciphertext).encode();
        assert_eq!(bytes.len(), SEAL_OVERHEAD);
        assert!(SealedPayload::decode(&bytes).is_ok());
        assert_eq!(
            SealedPayload::decode(&bytes[..SEAL_OVERHEAD - 1]),
            Err(PayloadError::TooShort(SEAL_OVERHEAD - 1))
        );
        assert_eq!(SealedPayload::decode(&[]), Err(PayloadError::TooShort(0)));
        let mut wrong_version = bytes.clone();
        wrong_version[0] = 2;
        assert_eq!(
            SealedPayload::decode(&wrong_version),
            Err(PayloadError::UnknownVersion(2))
        );
        let largest = vec![E2E_VERSION; MAX_SEALED_LEN];
        assert!(SealedPayload::decode(&largest).is_ok());
        let too_long = vec![E2E_VERSION; MAX_SEALED_LEN + 1];
        assert_eq!(
            SealedPayload::decode(&too_long),
            Err(PayloadError::TooLong(MAX_SEALED_LEN + 1))
        );
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics_and_round_trips(
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(payload) = SealedPayload::decode(&bytes) {
                prop_assert_eq!(payload.encoded_len(), bytes.len());
                prop_assert_eq!(payload.encode(), bytes.clone());
            }
        }

        #[test]
        fn encoded_payloads_decode_to_themselves(
            ephemeral: [u8; 32],
            session_id: u64,
            created_at: u64,
            counter: u64,
            ciphertext in proptest::collection::vec(any::<u8>(), TAG_LEN..300),
        ) {
            let payload = SealedPayload {
                session: SessionHeader {
                    ephemeral,
                    session_id,
                    created_at: Timestamp::from_millis(created_at),
                },
                counter,
                ciphertext: &ciphertext,
            };
            let bytes = payload.encode();
            prop_assert_eq!(bytes.len(), payload.encoded_len());
            prop_assert_eq!(SealedPayload::decode(&bytes), Ok(payload));
        }
    }
}
