//! The receiving side: a [`Receiver`] opens messages addressed to this node and refuses
//! replays, holding one [`ReplayWindow`] per `(sender, session)` in a bounded table.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::Duration;

use x25519_dalek::StaticSecret;

use super::keys::{recipient_session_key, x25519_static_secret, KeyError, SessionKey};
use super::replay::{ReplayError, ReplayWindow};
use super::session::{REJECT_AFTER_MESSAGES, REJECT_AFTER_TIME};
use super::wire::{preamble, PayloadError, SealedPayload, SessionHeader};
use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NodeKeypair};

/// Tunables of a [`Receiver`]. [`ReceiverConfig::new`] sets every default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiverConfig {
    /// Most sessions tracked at once, over all senders (default 4096; at least 1). Each
    /// costs about 2 KiB (a 1 KiB replay bitmap and the expanded AES-GCM key), so the
    /// default bounds the table near 8 MiB.
    pub max_sessions: usize,
    /// Most sessions tracked for one sender (default 4; at least 1). A sender that rekeys
    /// every [`REKEY_AFTER_TIME`](super::REKEY_AFTER_TIME) has at most two live sessions.
    pub max_sessions_per_sender: usize,
    /// Largest clock difference between nodes that session timestamps tolerate
    /// (default 30 s, like the router's `max_clock_skew`).
    pub max_clock_skew: Duration,
}

impl ReceiverConfig {
    /// The defaults.
    pub fn new() -> Self {
        Self {
            max_sessions: 4096,
            max_sessions_per_sender: 4,
            max_clock_skew: Duration::from_secs(30),
        }
    }
}

impl Default for ReceiverConfig {
    fn default() -> Self {
        Self::new()
    }
}

/// What a [`Receiver`] has done, for metrics. Every refusal is counted once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReceiverCounters {
    /// Messages opened.
    pub opened: u64,
    /// Sessions started (first message of a session opened).
    pub sessions_started: u64,
    /// Sessions forgotten while still live, to make room (see [`Receiver`]).
    pub sessions_evicted: u64,
    /// Sessions forgotten because they expired.
    pub sessions_expired: u64,
    /// Messages refused because their session was too old or from the future.
    pub stale: u64,
    /// Messages refused because their counter was seen before, is too old for the window,
    /// or is past [`REJECT_AFTER_MESSAGES`].
    pub replayed: u64,
    /// Messages refused because a key in the exchange has small order.
    pub weak_keys: u64,
    /// Messages that did not decode or authenticate (forged, corrupted, or for another
    /// node).
    pub failed_authentication: u64,
}

/// Why a message was not opened. No refusal changes the receiver's state (but its
/// counters).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// The bytes are not a sealed payload.
    #[error(transparent)]
    Payload(#[from] PayloadError),
    /// No session key could be made (a key of small order).
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The session was created more than [`REJECT_AFTER_TIME`] plus the clock-skew
    /// allowance ago.
    #[error("the session has expired")]
    SessionExpired,
    /// The session's creation time is further in the future than the clock-skew allowance.
    #[error("the session was created in the future")]
    SessionFromFuture,
    /// The counter is at or past [`REJECT_AFTER_MESSAGES`].
    #[error("message counter {0} is past the session's limit")]
    CounterLimit(u64),
    /// The counter was seen before or is too old for the replay window.
    #[error(transparent)]
    Replay(#[from] ReplayError),
    /// The message does not authenticate: forged, corrupted, different associated data,
    /// another sender or another recipient.
    #[error("the message does not authenticate")]
    Authentication,
}

type SessionKeyId = (NodeId, u64);

struct TrackedSession {
    header: SessionHeader,
    key: SessionKey,
    window: ReplayWindow,
    last_use: u64,
}

/// Opens the messages sent to this node and refuses replays.
///
/// The receiver tracks each `(sender, session id)` it has opened a message of: the
/// session's key (derived once, from the first message that authenticates) and its replay
/// window. A message is accepted iff its session is fresh (created at most
/// [`REJECT_AFTER_TIME`] + `max_clock_skew` ago and at most `max_clock_skew` ahead), its
/// counter is new to the window, and it authenticates. Only then is anything recorded.
///
/// **Bounds and eviction.** At most `max_sessions` sessions are tracked, and at most
/// `max_sessions_per_sender` per sender. To admit a new session the receiver first drops
/// expired sessions (their messages would be refused anyway), then, if the sender is at its
/// own limit, that sender's least recently used session, then, if the table is still full,
/// the least recently used session of anyone. A session forgotten while still live loses
/// its replay window: a recorded message of it could be accepted once more until the
/// session expires. That needs more than `max_sessions` live sessions from at least
/// `max_sessions / max_sessions_per_sender` authenticated senders within
/// [`REJECT_AFTER_TIME`]; it is counted in [`ReceiverCounters::sessions_evicted`].
///
/// **Cost.** The first message of a session costs two X25519 operations and an HKDF
/// before it can be authenticated; later messages cost one AES-GCM open. Bounding the rate
/// of packets from each neighbour is the driver's job.
pub struct Receiver {
    local_id: NodeId,
    local_secret: StaticSecret,
    config: ReceiverConfig,
    sessions: BTreeMap<SessionKeyId, TrackedSession>,
    /// Last-use tick → session, oldest first.
    by_use: BTreeMap<u64, SessionKeyId>,
    /// `(created_at, session)`, oldest first, to drop expired sessions.
    by_created: BTreeSet<(Timestamp, SessionKeyId)>,
    tick: u64,
    counters: ReceiverCounters,
}

impl Receiver {
    /// A receiver for messages to `local`.
    pub fn new(local: &NodeKeypair, config: ReceiverConfig) -> Self {
        Self {
            local_id: local.node_id(),
            local_secret: x25519_static_secret(local),
            config,
            sessions: BTreeMap::new(),
            by_use: BTreeMap::new(),
            by_created: BTreeSet::new(),
            tick: 0,
            counters: ReceiverCounters::default(),
        }
    }

    /// The node messages are opened for.
    pub fn local_id(&self) -> NodeId {
        self.local_id
    }

    /// The configuration.
    pub fn config(&self) -> &ReceiverConfig {
        &self.config
    }

    /// Sessions tracked now.
    pub fn n_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Sessions tracked now for `sender`.
    pub fn n_sessions_of(&self, sender: NodeId) -> usize {
        self.sessions
            .range((sender, 0)..=(sender, u64::MAX))
            .count()
    }

    /// What the receiver has done so far.
    pub fn counters(&self) -> &ReceiverCounters {
        &self.counters
    }

    /// Decodes `sealed` (the bytes after the routing header) and opens it; see
    /// [`Receiver::open`].
    pub fn open_bytes(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        sealed: &[u8],
        associated_data: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let payload = SealedPayload::decode(sealed)?;
        self.open(now, sender, &payload, associated_data)
    }

    /// Opens a message from `sender` (the routing header's source) and returns its
    /// plaintext. `associated_data` must be the bytes the sender passed to
    /// [`Session::seal`](super::Session::seal). On any error nothing is recorded.
    pub fn open(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        payload: &SealedPayload<'_>,
        associated_data: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let result = self.try_open(now, sender, payload, associated_data);
        if let Err(error) = &result {
            let counter = match error {
                OpenError::Payload(_) | OpenError::Authentication => {
                    &mut self.counters.failed_authentication
                }
                OpenError::Key(_) => &mut self.counters.weak_keys,
                OpenError::SessionExpired | OpenError::SessionFromFuture => {
                    &mut self.counters.stale
                }
                OpenError::CounterLimit(_) | OpenError::Replay(_) => &mut self.counters.replayed,
            };
            *counter += 1;
        } else {
            self.counters.opened += 1;
        }
        result
    }

    /// Forgets every session that has expired at `now`; returns how many. The receiver
    /// also does this by itself when its table is full; calling it from the driver's
    /// timer just returns memory sooner.
    pub fn purge_expired(&mut self, now: Timestamp) -> usize {
        let mut purged = 0;
        while let Some(&(created_at, id)) = self.by_created.first() {
            if !self.is_expired(now, created_at) {
                break;
            }
            self.remove(id);
            purged += 1;
        }
        self.counters.sessions_expired += purged as u64;
        purged
    }

    fn try_open(
        &mut self,
        now: Timestamp,
        sender: NodeId,
        payload: &SealedPayload<'_>,
        associated_data: &[u8],
    ) -> Result<Vec<u8>, OpenError> {
        let header = &payload.session;
        if header.created_at > now.saturating_add(self.config.max_clock_skew) {
            return Err(OpenError::SessionFromFuture);
        }
        if self.is_expired(now, header.created_at) {
            return Err(OpenError::SessionExpired);
        }
        let counter = payload.counter;
        if counter >= REJECT_AFTER_MESSAGES {
            return Err(OpenError::CounterLimit(counter));
        }
        let preamble = preamble(header, counter);
        let id = (sender, header.session_id);

        if let Some(tracked) = self.sessions.get_mut(&id) {
            if tracked.header != *header {
                // Same sender and session id, different session: not from that sender.
                return Err(OpenError::Authentication);
            }
            tracked.window.check(counter)?;
            let plaintext = tracked
                .key
                .open(counter, &preamble, associated_data, payload.ciphertext)
                .ok_or(OpenError::Authentication)?;
            tracked.window.commit(counter);
            self.tick += 1;
            self.by_use.remove(&tracked.last_use);
            tracked.last_use = self.tick;
            self.by_use.insert(self.tick, id);
            return Ok(plaintext);
        }

        let key = recipient_session_key(&self.local_secret, &self.local_id, &sender, header)?;
        let plaintext = key
            .open(counter, &preamble, associated_data, payload.ciphertext)
            .ok_or(OpenError::Authentication)?;
        let mut window = ReplayWindow::new();
        window.commit(counter);
        self.make_room(now, sender);
        self.tick += 1;
        self.sessions.insert(
            id,
            TrackedSession {
                header: *header,
                key,
                window,
                last_use: self.tick,
            },
        );
        self.by_use.insert(self.tick, id);
        self.by_created.insert((header.created_at, id));
        self.counters.sessions_started += 1;
        Ok(plaintext)
    }

    fn is_expired(&self, now: Timestamp, created_at: Timestamp) -> bool {
        now > created_at
            .saturating_add(REJECT_AFTER_TIME.saturating_add(self.config.max_clock_skew))
    }

    /// Frees a slot for a new session of `sender` (see the type's doc for the order).
    fn make_room(&mut self, now: Timestamp, sender: NodeId) {
        let max_sessions = self.config.max_sessions.max(1);
        if self.sessions.len() >= max_sessions {
            self.purge_expired(now);
        }
        let per_sender = self.config.max_sessions_per_sender.max(1);
        let own = self
            .sessions
            .range((sender, 0)..=(sender, u64::MAX))
            .map(|(id, tracked)| (tracked.last_use, *id));
        if own.clone().count() >= per_sender {
            if let Some((_, oldest)) = own.min() {
                self.remove(oldest);
                self.counters.sessions_evicted += 1;
            }
        }
        if self.sessions.len() >= max_sessions {
            if let Some((_, &oldest)) = self.by_use.first_key_value() {
                self.remove(oldest);
                self.counters.sessions_evicted += 1;
            }
        }
    }

    fn remove(&mut self, id: SessionKeyId) {
        if let Some(tracked) = self.sessions.remove(&id) {
            self.by_use.remove(&tracked.last_use);
            self.by_created.remove(&(tracked.header.created_at, id));
        }
    }
}

impl fmt::Debug for Receiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Receiver")
            .field("local_id", &self.local_id)
            .field("n_sessions", &self.sessions.len())
            .field("counters", &self.counters)
            .field("secret", &"<redacted>")
            .finish()
    }
}
