//! The data lane: a link's routed packets as sealed UDP datagrams beside its QUIC
//! connection (issue 5: latency added per relay).
//!
//! A relayed packet that travels inside QUIC wakes several tasks of the transport on each
//! relay. The lane lets a relay receive, decide and send in one task: each side of a link
//! offers, over the link's authenticated control stream, a UDP port, a random *lane id*
//! under which it receives and an ephemeral X25519 key share ([`LaneOffer`]). Both sides
//! derive one AES-256-GCM key per direction from the two shares
//! ([`LaneKeys::derive`]), so the lane is as authenticated as the link that set it up, and
//! a new pair of keys protects every link.
//!
//! A datagram is `lane id (8 bytes, big-endian) ‖ counter (8, big-endian) ‖ AEAD(kind ‖
//! body) ‖ tag (16)`: the lane id tells the receiver which link it belongs to and is the
//! associated data; the counter is the nonce (four zero bytes, then the counter), never
//! reused by a sender ([`LaneSealer`]) and accepted once by a receiver within a window of
//! [`REPLAY_WINDOW_LEN`](crate::e2e::REPLAY_WINDOW_LEN) ([`LaneOpener`]). The body is a data frame
//! ([`LanePayload::Frame`]) or nothing ([`LanePayload::Probe`], which proves that the
//! direction works and keeps it alive).
//!
//! Datagrams are at most [`MAX_LANE_DATAGRAM`] bytes, the size every QUIC path must carry
//! (RFC 9000 §14), so the lane never needs fragmentation; larger frames stay on the QUIC
//! connection. This module holds no socket, clock or task: the driver owns those.

use std::sync::atomic::{AtomicU64, Ordering};

use hkdf::Hkdf;
use rand_core::CryptoRngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::e2e::{ReplayError, ReplayWindow};
use crate::identity::NodeId;

/// The HKDF label of lane keys; changing the key schedule means changing it.
pub const LANE_KDF_LABEL: &[u8] = b"meshcore-lane-v1";

/// Bytes of a datagram's header: lane id and counter.
pub const LANE_HEADER_LEN: usize = 16;

/// Bytes of the AEAD tag.
pub const LANE_TAG_LEN: usize = 16;

/// Largest datagram on a lane: the UDP payload every QUIC path carries (RFC 9000 §14).
pub const MAX_LANE_DATAGRAM: usize = 1200;

/// Largest data frame a lane carries: a datagram less header, kind byte and tag.
pub const MAX_LANE_FRAME: usize = MAX_LANE_DATAGRAM - LANE_HEADER_LEN - 1 - LANE_TAG_LEN;

/// A sender stops at this counter (and the link falls back to QUIC) long before the nonce
/// space ends.
pub const LANE_COUNTER_LIMIT: u64 = 1 << 62;

const KIND_FRAME: u8 = 0;
const KIND_PROBE: u8 = 1;

/// What one side of a link offers for a lane, sent on the link's control stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneOffer {
    /// The UDP port the sender receives lane datagrams on (at the address the link uses).
    pub port: u16,
    /// The id the sender receives this link's datagrams under.
    pub lane_id: u64,
    /// The sender's ephemeral X25519 public key for this link.
    pub key_share: [u8; 32],
}

/// Why a lane could not be set up, or a datagram was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LaneError {
    /// The peer's key share has small order: no secret can be agreed.
    #[error("the peer's lane key share has small order")]
    WeakKey,
    /// The peer offered port 0.
    #[error("the peer offered UDP port 0")]
    NoPort,
    /// The datagram is shorter than a header and a tag.
    #[error("a lane datagram of {0} bytes is shorter than the {min} bytes of header and tag", min = LANE_HEADER_LEN + 1 + LANE_TAG_LEN)]
    TooShort(usize),
    /// The datagram is longer than [`MAX_LANE_DATAGRAM`].
    #[error("a lane datagram of {0} bytes is longer than {MAX_LANE_DATAGRAM}")]
    TooLong(usize),
    /// The frame does not fit a datagram.
    #[error("a frame of {0} bytes is longer than the lane's {MAX_LANE_FRAME}")]
    FrameTooLong(usize),
    /// The datagram does not authenticate under the lane's key.
    #[error("the lane datagram does not authenticate")]
    Forged,
    /// The counter was seen, or is too old.
    #[error("replayed lane datagram: {0}")]
    Replayed(ReplayError),
    /// The plaintext's kind byte is unknown, or a probe carries a body.
    #[error("unknown lane payload kind {0}")]
    UnknownKind(u8),
    /// The peer offered a lane a second time on one link; the first offer stands.
    #[error("a second lane offer on one link (the first one stands)")]
    SecondOffer,
    /// The sender used up its counters; the link must fall back to QUIC.
    #[error("the lane's counters are used up")]
    Exhausted,
}

/// One side's ephemeral secret for a link's lane, and the offer that carries its share.
pub struct LaneSecret {
    secret: StaticSecret,
    offer: LaneOffer,
}

impl std::fmt::Debug for LaneSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LaneSecret")
            .field("offer", &self.offer)
            .finish_non_exhaustive()
    }
}

impl LaneSecret {
    /// A fresh secret and a random lane id, offered for receiving on `port`.
    pub fn generate(port: u16, rng: &mut impl CryptoRngCore) -> Self {
        let secret = StaticSecret::random_from_rng(&mut *rng);
        let offer = LaneOffer {
            port,
            lane_id: rng.next_u64(),
            key_share: PublicKey::from(&secret).to_bytes(),
        };
        Self { secret, offer }
    }

    /// What to send to the peer.
    pub fn offer(&self) -> LaneOffer {
        self.offer
    }
}

/// The two keys of a lane: this side's sealer and opener.
#[derive(Debug)]
pub struct LaneKeys {
    /// Seals what this side sends.
    pub sealer: LaneSealer,
    /// Opens what the peer sends.
    pub opener: LaneOpener,
}

impl LaneKeys {
    /// Agrees the lane's keys from this side's secret and the peer's offer. `local` and
    /// `remote` are the link's two node ids (authenticated by the link): each direction's
    /// key is bound to its sender, receiver and both shares.
    pub fn derive(
        local: &NodeId,
        remote: &NodeId,
        mine: &LaneSecret,
        theirs: &LaneOffer,
    ) -> Result<Self, LaneError> {
        if theirs.port == 0 {
            return Err(LaneError::NoPort);
        }
        let shared = mine
            .secret
            .diffie_hellman(&PublicKey::from(theirs.key_share));
        if !shared.was_contributory() {
            return Err(LaneError::WeakKey);
        }
        let key = |from: &NodeId, to: &NodeId, from_share: &[u8; 32], to_share: &[u8; 32]| {
            let mut info = Vec::with_capacity(LANE_KDF_LABEL.len() + 128);
            for part in [
                LANE_KDF_LABEL,
                from.as_bytes(),
                to.as_bytes(),
                from_share,
                to_share,
            ] {
                info.extend_from_slice(part);
            }
            let mut okm = Zeroizing::new([0u8; 32]);
            Hkdf::<Sha256>::new(Some(LANE_KDF_LABEL), shared.as_bytes())
                .expand(&info, okm.as_mut_slice())
                .map_err(|_| LaneError::WeakKey)?;
            let key =
                UnboundKey::new(&AES_256_GCM, okm.as_slice()).map_err(|_| LaneError::WeakKey)?;
            Ok::<_, LaneError>(LessSafeKey::new(key))
        };
        let ours = &mine.offer.key_share;
        Ok(Self {
            sealer: LaneSealer {
                key: key(local, remote, ours, &theirs.key_share)?,
                lane_id: theirs.lane_id,
                next: AtomicU64::new(0),
            },
            opener: LaneOpener {
                key: key(remote, local, &theirs.key_share, ours)?,
                lane_id: mine.offer.lane_id,
                replay: ReplayWindow::new(),
            },
        })
    }
}

/// Seals datagrams for the peer. Shared by the tasks that send on the link: the counter is
/// taken atomically. (`LessSafeKey`'s `Debug` shows only the algorithm.)
#[derive(Debug)]
pub struct LaneSealer {
    key: LessSafeKey,
    lane_id: u64,
    next: AtomicU64,
}

impl LaneSealer {
    /// A datagram carrying `frame`.
    pub fn seal_frame(&self, frame: &[u8]) -> Result<Vec<u8>, LaneError> {
        if frame.len() > MAX_LANE_FRAME {
            return Err(LaneError::FrameTooLong(frame.len()));
        }
        self.seal(KIND_FRAME, frame)
    }

    /// A datagram carrying a probe.
    pub fn seal_probe(&self) -> Result<Vec<u8>, LaneError> {
        self.seal(KIND_PROBE, &[])
    }

    fn seal(&self, kind: u8, body: &[u8]) -> Result<Vec<u8>, LaneError> {
        let counter = self.next.fetch_add(1, Ordering::Relaxed);
        if counter >= LANE_COUNTER_LIMIT {
            return Err(LaneError::Exhausted);
        }
        let mut datagram = Vec::with_capacity(LANE_HEADER_LEN + 1 + body.len() + LANE_TAG_LEN);
        datagram.extend_from_slice(&self.lane_id.to_be_bytes());
        datagram.extend_from_slice(&counter.to_be_bytes());
        datagram.push(kind);
        datagram.extend_from_slice(body);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce(counter),
                Aad::from(self.lane_id.to_be_bytes()),
                &mut datagram[LANE_HEADER_LEN..],
            )
            .map_err(|_| LaneError::Exhausted)?;
        datagram.extend_from_slice(tag.as_ref());
        Ok(datagram)
    }
}

/// What a lane datagram carried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LanePayload {
    /// A data frame.
    Frame(Vec<u8>),
    /// A probe: the direction works.
    Probe,
}

/// Opens the peer's datagrams, each once.
#[derive(Debug)]
pub struct LaneOpener {
    key: LessSafeKey,
    lane_id: u64,
    replay: ReplayWindow,
}

impl LaneOpener {
    /// The id this side receives the link's datagrams under.
    pub fn lane_id(&self) -> u64 {
        self.lane_id
    }

    /// Authenticates, decrypts and accepts `datagram` (whose lane id the caller matched).
    pub fn open(&mut self, datagram: &[u8]) -> Result<LanePayload, LaneError> {
        let (lane_id, counter) = lane_header(datagram)?;
        if lane_id != self.lane_id {
            return Err(LaneError::Forged);
        }
        self.replay.check(counter).map_err(LaneError::Replayed)?;
        let mut buffer = datagram[LANE_HEADER_LEN..].to_vec();
        let plaintext = self
            .key
            .open_in_place(
                nonce(counter),
                Aad::from(lane_id.to_be_bytes()),
                &mut buffer,
            )
            .map_err(|_| LaneError::Forged)?;
        let payload = match plaintext.split_first() {
            Some((&KIND_FRAME, body)) => LanePayload::Frame(body.to_vec()),
            Some((&KIND_PROBE, [])) => LanePayload::Probe,
            Some((&kind, _)) => return Err(LaneError::UnknownKind(kind)),
            None => return Err(LaneError::TooShort(datagram.len())),
        };
        self.replay.commit(counter);
        Ok(payload)
    }
}

/// The lane id and counter of a datagram, checking its length; the receiver looks the
/// lane up by the id before it opens the datagram.
pub fn lane_header(datagram: &[u8]) -> Result<(u64, u64), LaneError> {
    if datagram.len() > MAX_LANE_DATAGRAM {
        return Err(LaneError::TooLong(datagram.len()));
    }
    if datagram.len() < LANE_HEADER_LEN + 1 + LANE_TAG_LEN {
        return Err(LaneError::TooShort(datagram.len()));
    }
    let mut id = [0u8; 8];
    let mut counter = [0u8; 8];
    id.copy_from_slice(&datagram[..8]);
    counter.copy_from_slice(&datagram[8..16]);
    Ok((u64::from_be_bytes(id), u64::from_be_bytes(counter)))
}

/// The nonce of datagram `counter`: four zero bytes, then the counter, big-endian. Each
/// key seals one direction of one link only.
fn nonce(counter: u64) -> Nonce {
    let mut bytes = [0u8; NONCE_LEN];
    bytes[4..].copy_from_slice(&counter.to_be_bytes());
    Nonce::assume_unique_for_key(bytes)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    use super::*;
    use crate::NodeKeypair;

    fn id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    /// Both sides of a lane between nodes 1 and 2: (side 1's keys, side 2's keys).
    fn pair(seed: u64) -> (LaneKeys, LaneKeys) {
        let mut rng = ChaCha20Rng::seed_from_u64(seed);
        let (a, b) = (id(1), id(2));
        let secret_a = LaneSecret::generate(4000, &mut rng);
        let secret_b = LaneSecret::generate(5000, &mut rng);
        let keys_a = LaneKeys::derive(&a, &b, &secret_a, &secret_b.offer()).expect("a's keys");
        let keys_b = LaneKeys::derive(&b, &a, &secret_b, &secret_a.offer()).expect("b's keys");
        (keys_a, keys_b)
    }

    #[test]
    fn frames_and_probes_cross_in_both_directions() {
        let (a, mut b) = pair(7);
        let datagram = a.sealer.seal_frame(b"\x02routed packet").expect("seal");
        assert_eq!(datagram.len(), LANE_HEADER_LEN + 1 + 14 + LANE_TAG_LEN);
        assert_eq!(
            lane_header(&datagram).expect("header").0,
            b.opener.lane_id()
        );
        assert_eq!(
            b.opener.open(&datagram),
            Ok(LanePayload::Frame(b"\x02routed packet".to_vec()))
        );
        let (b_sealer, mut a_opener) = (b.sealer, a.opener);
        let probe = b_sealer.seal_probe().expect("seal");
        assert_eq!(a_opener.open(&probe), Ok(LanePayload::Probe));
    }

    #[test]
    fn a_datagram_is_accepted_once_and_in_any_order() {
        let (a, mut b) = pair(8);
        let first = a.sealer.seal_frame(b"one").expect("seal");
        let second = a.sealer.seal_frame(b"two").expect("seal");
        assert!(b.opener.open(&second).is_ok());
        assert!(
            b.opener.open(&first).is_ok(),
            "reordered, still inside the window"
        );
        assert_eq!(
            b.opener.open(&first),
            Err(LaneError::Replayed(ReplayError::Replayed(0)))
        );
    }

    #[test]
    fn altered_misdirected_and_foreign_datagrams_are_refused() {
        let (a, mut b) = pair(9);
        let datagram = a.sealer.seal_frame(b"payload").expect("seal");
        for at in [0, 9, LANE_HEADER_LEN, datagram.len() - 1] {
            let mut altered = datagram.clone();
            altered[at] ^= 1;
            assert!(b.opener.open(&altered).is_err(), "flipped byte {at}");
        }
        // Its own direction's datagram does not open in the other direction.
        let (c, _) = pair(9);
        let mine = c.sealer.seal_frame(b"payload").expect("seal");
        let (_, mut other) = pair(10);
        assert!(other.opener.open(&mine).is_err(), "another link's keys");
        // Nothing was committed: the genuine datagram still opens.
        assert!(b.opener.open(&datagram).is_ok());
    }

    #[test]
    fn bounds_are_checked_before_anything_else() {
        let (a, mut b) = pair(11);
        assert_eq!(
            a.sealer.seal_frame(&[0; MAX_LANE_FRAME + 1]),
            Err(LaneError::FrameTooLong(MAX_LANE_FRAME + 1))
        );
        let largest = a.sealer.seal_frame(&[0; MAX_LANE_FRAME]).expect("seal");
        assert_eq!(largest.len(), MAX_LANE_DATAGRAM);
        assert!(b.opener.open(&largest).is_ok());
        assert_eq!(b.opener.open(&[0; 32]), Err(LaneError::TooShort(32)));
        assert_eq!(
            lane_header(&[0; MAX_LANE_DATAGRAM + 1]),
            Err(LaneError::TooLong(MAX_LANE_DATAGRAM + 1))
        );
    }

    #[test]
    fn weak_shares_and_port_zero_are_refused() {
        let mut rng = ChaCha20Rng::seed_from_u64(12);
        let mine = LaneSecret::generate(4000, &mut rng);
        let mut theirs = LaneSecret::generate(5000, &mut rng).offer();
        theirs.key_share = [0; 32];
        assert_eq!(
            LaneKeys::derive(&id(1), &id(2), &mine, &theirs).err(),
            Some(LaneError::WeakKey)
        );
        theirs = LaneSecret::generate(0, &mut rng).offer();
        assert_eq!(
            LaneKeys::derive(&id(1), &id(2), &mine, &theirs).err(),
            Some(LaneError::NoPort)
        );
    }

    proptest! {
        #[test]
        fn opening_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..1300)) {
            let (_, mut b) = pair(13);
            let _ = lane_header(&bytes);
            prop_assert!(b.opener.open(&bytes).is_err());
        }
    }
}
