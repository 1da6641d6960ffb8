//! The sending side: a [`Session`] seals messages from this node to one recipient.

use std::fmt;
use std::time::Duration;

use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use super::keys::{sender_session_key, KeyError, SessionKey};
use super::wire::{preamble, SessionHeader, MAX_PLAINTEXT_LEN};
use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NodeKeypair};

/// Age at which a sender should start a new session (120 s, as WireGuard's
/// `REKEY_AFTER_TIME`); see [`Session::needs_rekey`].
pub const REKEY_AFTER_TIME: Duration = Duration::from_secs(120);

/// Age after which a session seals nothing more, and after which (plus the receiver's
/// clock-skew allowance) its messages are refused (180 s, WireGuard's
/// `REJECT_AFTER_TIME`).
pub const REJECT_AFTER_TIME: Duration = Duration::from_secs(180);

/// Messages after which a sender should start a new session (2^60).
pub const REKEY_AFTER_MESSAGES: u64 = 1 << 60;

/// Counters from this one up are never used: a session seals at most this many messages,
/// and receivers refuse higher counters (2^64 − 2^13 − 1, WireGuard's
/// `REJECT_AFTER_MESSAGES`). No nonce is ever used twice under one key.
pub const REJECT_AFTER_MESSAGES: u64 = u64::MAX - (1 << 13);

/// Why a message could not be sealed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// The plaintext is larger than [`MAX_PLAINTEXT_LEN`].
    #[error("plaintext of {0} bytes exceeds the limit of {MAX_PLAINTEXT_LEN}")]
    PlaintextTooLong(usize),
    /// The session is older than [`REJECT_AFTER_TIME`]; start a new one.
    #[error("the session is older than {REJECT_AFTER_TIME:?}; start a new one")]
    Expired,
    /// The session has sealed [`REJECT_AFTER_MESSAGES`] messages; start a new one.
    #[error("the session has used up its message counters; start a new one")]
    Exhausted,
}

/// One end-to-end session from this node to a recipient: an ephemeral X25519 key, the
/// session key derived from it and both identities, and the next message counter.
///
/// Messages are numbered 0, 1, 2, …; each number is used once. A session is meant to live
/// [`REKEY_AFTER_TIME`] or [`REKEY_AFTER_MESSAGES`], whichever comes first: the owner
/// checks [`Session::needs_rekey`] and replaces it. [`Session::seal`] refuses after
/// [`REJECT_AFTER_TIME`] or [`REJECT_AFTER_MESSAGES`].
pub struct Session {
    remote: NodeId,
    header: SessionHeader,
    key: SessionKey,
    next_counter: u64,
}

impl Session {
    /// Starts a session from `local` to `remote`, created at `now` (the sender's clock,
    /// milliseconds since the UNIX epoch in the daemon). Draws the ephemeral key and the
    /// session id from `rng`. Fails only if `remote`'s key has small order.
    pub fn new(
        local: &NodeKeypair,
        remote: NodeId,
        now: Timestamp,
        rng: &mut impl CryptoRngCore,
    ) -> Result<Self, KeyError> {
        let mut ephemeral = Zeroizing::new([0u8; 32]);
        rng.fill_bytes(ephemeral.as_mut_slice());
        let session_id = rng.next_u64();
        Self::from_parts(
            local,
            remote,
            now,
            StaticSecret::from(*ephemeral),
            session_id,
        )
    }

    /// A session with a given ephemeral secret and id (for [`Session::new`] and
    /// known-answer tests).
    pub(crate) fn from_parts(
        local: &NodeKeypair,
        remote: NodeId,
        now: Timestamp,
        ephemeral: StaticSecret,
        session_id: u64,
    ) -> Result<Self, KeyError> {
        let header = SessionHeader {
            ephemeral: PublicKey::from(&ephemeral).to_bytes(),
            session_id,
            created_at: now,
        };
        // The ephemeral secret is used for this one exchange and dropped (zeroized) here.
        let key = sender_session_key(local, &remote, &ephemeral, &header)?;
        Ok(Self {
            remote,
            header,
            key,
            next_counter: 0,
        })
    }

    /// The recipient.
    pub fn remote(&self) -> NodeId {
        self.remote
    }

    /// The session header every message carries.
    pub fn header(&self) -> &SessionHeader {
        &self.header
    }

    /// The counter the next message will carry (= messages sealed so far).
    pub fn next_counter(&self) -> u64 {
        self.next_counter
    }

    /// Whether the owner should replace this session: it is [`REKEY_AFTER_TIME`] old or
    /// has sealed [`REKEY_AFTER_MESSAGES`] messages.
    pub fn needs_rekey(&self, now: Timestamp) -> bool {
        now.saturating_duration_since(self.header.created_at) >= REKEY_AFTER_TIME
            || self.next_counter >= REKEY_AFTER_MESSAGES
    }

    /// Seals `plaintext` as the next message; returns the encoded
    /// [`SealedPayload`](super::SealedPayload) to send after the routing header.
    ///
    /// `associated_data` is authenticated but not sent: the recipient must pass the same
    /// bytes to [`Receiver::open`](super::Receiver::open). For a routed packet that is
    /// [`header_associated_data`](super::header_associated_data) of its header.
    pub fn seal(
        &mut self,
        now: Timestamp,
        plaintext: &[u8],
        associated_data: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        if plaintext.len() > MAX_PLAINTEXT_LEN {
            return Err(SealError::PlaintextTooLong(plaintext.len()));
        }
        if now.saturating_duration_since(self.header.created_at) >= REJECT_AFTER_TIME {
            return Err(SealError::Expired);
        }
        let counter = self.next_counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(SealError::Exhausted);
        }
        let sealed = self
            .key
            .seal(
                counter,
                &preamble(&self.header, counter),
                associated_data,
                plaintext,
            )
            .ok_or(SealError::PlaintextTooLong(plaintext.len()))?;
        // Advance only once the counter is spent.
        self.next_counter = counter + 1;
        Ok(sealed)
    }

    /// Sets the next counter (tests of the counter limits).
    #[cfg(test)]
    pub(crate) fn set_next_counter(&mut self, counter: u64) {
        self.next_counter = counter;
    }
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("remote", &self.remote)
            .field("session_id", &self.header.session_id)
            .field("created_at", &self.header.created_at)
            .field("next_counter", &self.next_counter)
            .field("key", &"<redacted>")
            .finish()
    }
}
