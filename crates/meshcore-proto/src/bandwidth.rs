//! The bandwidth manager: per-peer and per-application limits on what this node sends of its
//! own, so that one busy destination or one flooding application is slowed down while the
//! others keep their rate (issue 7, "Bandwidth manager"). A sans-IO state machine,
//! [`BandwidthManager`]: it is handed the time and decides; it neither sleeps nor sends.
//!
//! # Rules
//!
//! - **What is limited.** Every message or datagram this node originates is charged, before
//!   it is sealed, to two keys: its destination **peer** (a node id) and its **application**
//!   ([`AppId`]: the name a caller gives, e.g. `chat`; each browser peer sending through this
//!   node as its gateway is its own application, `webrtc:` and the first 16 hex digits of its
//!   id). Relayed traffic is not charged here: the relay budget
//!   ([`crate::relay::RelayLimiter`]) governs it.
//! - **Rates.** Each peer may be sent at most `peer_rate` bytes per second and each
//!   application may send at most `app_rate` bytes per second (settings `peer_bandwidth`,
//!   `app_bandwidth`; 0 = that limit is off). A key may burst `burst` worth of its rate at
//!   once (at least [`MIN_BURST_BYTES`], so any one packet fits).
//! - **Generic cell rate algorithm.** Each key keeps a theoretical arrival time `tat`
//!   (nanoseconds): a send of `b` bytes costs `b / rate` seconds. It may go at
//!   `max(tat, now) + cost − burst`; so over any interval of `t` seconds a key sends at most
//!   `rate × t + burst` bytes, and a key that sends below its rate is never delayed.
//! - **Delay, then refusal.** [`BandwidthManager::reserve`] answers how long the caller must
//!   wait before sending (the later of the two keys). A send that would have to wait more
//!   than `max_delay` is refused ([`Throttled`]: which limit, its rate, and when to retry) and
//!   charges nothing; an accepted one charges both keys at once. So a flooding application or
//!   a flood towards one peer queues only its own sends: the other keys' times do not move.
//! - **Bounds.** At most `max_keys` peers and as many applications are tracked; a key whose
//!   `tat` has passed holds no state worth keeping (it is as if new) and is forgotten first.
//!   When every slot is busy the send is refused ([`Limit::TooManyKeys`]).
//!
//! # Why not `governor`
//!
//! As for the relay budget (see [`crate::relay`]): `governor` reads its own clock and
//! cannot change a keyed limiter's rate in place, while here time is an argument and both
//! rates change at once when the settings do. GCRA is what `governor` implements too; it is
//! twenty lines with the clock taken out.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use crate::dht::time::Timestamp;
use crate::identity::NodeId;

/// Smallest burst, bytes: one largest data frame (64 KiB) and some room.
pub const MIN_BURST_BYTES: u64 = 64 * 1024 + 1024;

/// Longest application name, bytes.
pub const MAX_APP_LEN: usize = 64;

const NANOS_PER_SEC: u128 = 1_000_000_000;
const NANOS_PER_MILLI: u128 = 1_000_000;

/// An application's name: 1 to [`MAX_APP_LEN`] bytes of ASCII letters, digits, `.`, `_`,
/// `-` and `:`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppId(String);

/// Why a text is not an [`AppId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AppIdError {
    /// Empty.
    #[error("an application name may not be empty")]
    Empty,
    /// Longer than [`MAX_APP_LEN`].
    #[error("an application name is at most {MAX_APP_LEN} bytes, got {0}")]
    TooLong(usize),
    /// A character outside the allowed set.
    #[error("an application name has only letters, digits, '.', '_', '-' and ':', got {0:?}")]
    BadCharacter(char),
}

impl AppId {
    /// The application of API callers that name none.
    pub const DEFAULT: &'static str = "api";

    /// Checks `name`.
    pub fn new(name: &str) -> Result<Self, AppIdError> {
        if name.is_empty() {
            return Err(AppIdError::Empty);
        }
        if name.len() > MAX_APP_LEN {
            return Err(AppIdError::TooLong(name.len()));
        }
        if let Some(bad) = name
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':')))
        {
            return Err(AppIdError::BadCharacter(bad));
        }
        Ok(Self(name.to_owned()))
    }

    /// The application of API callers that name none: [`AppId::DEFAULT`].
    pub fn default_app() -> Self {
        Self(Self::DEFAULT.to_owned())
    }

    /// The application of a browser peer that sends through this node as its gateway.
    pub fn browser(peer: &NodeId) -> Self {
        let hex = peer.to_hex();
        Self(format!("webrtc:{}", &hex[..16]))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for AppId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The manager's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BandwidthConfig {
    /// Bytes per second to any one peer (`peer_bandwidth`); 0 = no limit.
    pub peer_rate: u64,
    /// Bytes per second from any one application (`app_bandwidth`); 0 = no limit.
    pub app_rate: u64,
    /// How much of its rate a key may send at once (at least [`MIN_BURST_BYTES`]).
    pub burst: Duration,
    /// Longest a send is asked to wait before it is refused instead.
    pub max_delay: Duration,
    /// Most peers, and most applications, tracked.
    pub max_keys: usize,
}

impl BandwidthConfig {
    /// The given rates with the default burst (250 ms), delay (2 s) and key bound (4096).
    pub fn new(peer_rate: u64, app_rate: u64) -> Self {
        Self {
            peer_rate,
            app_rate,
            burst: Duration::from_millis(250),
            max_delay: Duration::from_secs(2),
            max_keys: 4096,
        }
    }
}

/// Which limit held a send back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// The destination peer's (`peer_bandwidth`).
    Peer,
    /// The application's (`app_bandwidth`).
    Application,
    /// Every tracking slot is busy.
    TooManyKeys,
}

impl Limit {
    /// The setting behind it, for messages (`max_keys` for [`Limit::TooManyKeys`]).
    pub fn setting(self) -> &'static str {
        match self {
            Self::Peer => "peer_bandwidth",
            Self::Application => "app_bandwidth",
            Self::TooManyKeys => "max_keys",
        }
    }
}

/// A send refused: it would have waited longer than `max_delay`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("over the {} limit of {rate} bytes/s; retry in {} ms", limit.setting(), retry_after.as_millis())]
pub struct Throttled {
    /// Which limit.
    pub limit: Limit,
    /// Its rate, bytes per second (0 for [`Limit::TooManyKeys`]).
    pub rate: u64,
    /// When a send of the same size would be accepted.
    pub retry_after: Duration,
}

/// Running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BandwidthCounters {
    /// Sends accepted at once.
    pub sent_at_once: u64,
    /// Sends accepted after a delay.
    pub delayed: u64,
    /// Sends refused by the peer limit.
    pub refused_peer: u64,
    /// Sends refused by the application limit.
    pub refused_app: u64,
    /// Sends refused because every slot was busy.
    pub refused_keys: u64,
    /// Bytes accepted.
    pub bytes: u64,
}

/// Per-peer and per-application send limits; see [the module docs](self).
///
/// # Run loop
///
/// Before sending `bytes` of its own from application `app` to `peer`, the driver calls
/// [`reserve`](Self::reserve): on `Ok(delay)` it sends after `delay` (zero: at once); on
/// `Err` it tells its caller. [`set_rates`](Self::set_rates) applies new settings. `now`
/// must never go back.
#[derive(Debug, Clone)]
pub struct BandwidthManager {
    config: BandwidthConfig,
    peers: HashMap<NodeId, u128>,
    apps: HashMap<AppId, u128>,
    counters: BandwidthCounters,
}

impl BandwidthManager {
    /// A manager with nothing sent yet.
    pub fn new(config: BandwidthConfig) -> Self {
        Self {
            config,
            peers: HashMap::new(),
            apps: HashMap::new(),
            counters: BandwidthCounters::default(),
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &BandwidthConfig {
        &self.config
    }

    /// Running totals.
    pub fn counters(&self) -> &BandwidthCounters {
        &self.counters
    }

    /// Peers and applications tracked now.
    pub fn tracked(&self) -> (usize, usize) {
        (self.peers.len(), self.apps.len())
    }

    /// New rates, at once (0 turns a limit off). What each key has sent stays charged.
    pub fn set_rates(&mut self, peer_rate: u64, app_rate: u64) {
        self.config.peer_rate = peer_rate;
        self.config.app_rate = app_rate;
    }

    /// Decides when `bytes` from `app` to `peer` may be sent: after the returned delay, or
    /// not at all. An accepted send is charged to both keys.
    pub fn reserve(
        &mut self,
        now: Timestamp,
        app: &AppId,
        peer: NodeId,
        bytes: u64,
    ) -> Result<Duration, Throttled> {
        self.reserve_within(now, app, peer, bytes, Duration::MAX)
    }

    /// [`reserve`](Self::reserve) for a caller that waits at most `patience` (and never
    /// more than `max_delay`): a longer wait is refused and charges nothing.
    pub fn reserve_within(
        &mut self,
        now: Timestamp,
        app: &AppId,
        peer: NodeId,
        bytes: u64,
        patience: Duration,
    ) -> Result<Duration, Throttled> {
        let now_ns = u128::from(now.as_millis()) * NANOS_PER_MILLI;
        let (peer_rate, app_rate) = (self.config.peer_rate, self.config.app_rate);
        let peer_plan = plan(
            self.peers.get(&peer).copied(),
            now_ns,
            bytes,
            peer_rate,
            &self.config,
        );
        let app_plan = plan(
            self.apps.get(app).copied(),
            now_ns,
            bytes,
            app_rate,
            &self.config,
        );
        let max_delay = self.config.max_delay.min(patience).as_nanos();
        for (limit, rate, plan) in [
            (Limit::Peer, peer_rate, peer_plan),
            (Limit::Application, app_rate, app_plan),
        ] {
            if let Some((delay, _)) = plan {
                if delay > max_delay {
                    match limit {
                        Limit::Peer => self.counters.refused_peer += 1,
                        _ => self.counters.refused_app += 1,
                    }
                    return Err(Throttled {
                        limit,
                        rate,
                        retry_after: nanos(delay - max_delay),
                    });
                }
            }
        }
        let need_peer = peer_plan.is_some() && !self.peers.contains_key(&peer);
        let need_app = app_plan.is_some() && !self.apps.contains_key(app);
        if (need_peer && !make_room(&mut self.peers, now_ns, self.config.max_keys))
            || (need_app && !make_room(&mut self.apps, now_ns, self.config.max_keys))
        {
            self.counters.refused_keys += 1;
            return Err(Throttled {
                limit: Limit::TooManyKeys,
                rate: 0,
                retry_after: Duration::ZERO,
            });
        }
        let mut delay = 0;
        if let Some((wait, tat)) = peer_plan {
            self.peers.insert(peer, tat);
            delay = delay.max(wait);
        }
        if let Some((wait, tat)) = app_plan {
            self.apps.insert(app.clone(), tat);
            delay = delay.max(wait);
        }
        if delay == 0 {
            self.counters.sent_at_once += 1;
        } else {
            self.counters.delayed += 1;
        }
        self.counters.bytes = self.counters.bytes.saturating_add(bytes);
        Ok(nanos(delay))
    }
}

/// For one key: the wait before `bytes` may go and the key's new `tat`, or `None` when the
/// limit is off.
fn plan(
    tat: Option<u128>,
    now_ns: u128,
    bytes: u64,
    rate: u64,
    config: &BandwidthConfig,
) -> Option<(u128, u128)> {
    if rate == 0 {
        return None;
    }
    let rate = u128::from(rate);
    let cost = u128::from(bytes) * NANOS_PER_SEC / rate;
    let burst_bytes =
        (rate * config.burst.as_nanos() / NANOS_PER_SEC).max(u128::from(MIN_BURST_BYTES));
    let tolerance = burst_bytes * NANOS_PER_SEC / rate;
    let new_tat = tat.unwrap_or(0).max(now_ns) + cost;
    let allowed_at = new_tat.saturating_sub(tolerance);
    Some((allowed_at.saturating_sub(now_ns), new_tat))
}

/// Makes room for one more key: true if there is (forgetting keys whose `tat` has passed
/// when the map is full).
fn make_room<K: Eq + std::hash::Hash>(
    keys: &mut HashMap<K, u128>,
    now_ns: u128,
    max: usize,
) -> bool {
    if keys.len() >= max {
        keys.retain(|_, tat| *tat > now_ns);
    }
    keys.len() < max
}

fn nanos(value: u128) -> Duration {
    Duration::from_nanos(u64::try_from(value).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> NodeId {
        use rand_chacha::rand_core::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(u64::from(seed));
        crate::NodeKeypair::generate(&mut rng).node_id()
    }

    fn app(name: &str) -> AppId {
        AppId::new(name).expect("app")
    }

    /// Sends `bytes`-byte packets from `app` to `to` whenever the manager lets it, as fast
    /// as `offered` bytes/s, for `seconds`; returns the bytes accepted (delays are honoured
    /// by not offering again before the delay has passed).
    fn drive(
        manager: &mut BandwidthManager,
        flows: &[(AppId, NodeId, u64)],
        bytes: u64,
        seconds: u64,
    ) -> Vec<u64> {
        let mut sent = vec![0u64; flows.len()];
        let mut next_ok = vec![0u64; flows.len()];
        let mut offered = vec![0u64; flows.len()];
        for ms in 0..seconds * 1000 {
            let now = Timestamp::from_millis(ms);
            for (i, (app, to, rate)) in flows.iter().enumerate() {
                // Offer what the flow wants by now.
                while offered[i] + bytes <= rate * (ms + 1) / 1000 && ms >= next_ok[i] {
                    offered[i] += bytes;
                    match manager.reserve(now, app, *to, bytes) {
                        Ok(delay) if delay.is_zero() => sent[i] += bytes,
                        Ok(delay) => {
                            sent[i] += bytes;
                            next_ok[i] = ms + delay.as_millis() as u64;
                        }
                        Err(error) => {
                            next_ok[i] = ms + error.retry_after.as_millis() as u64 + 1;
                        }
                    }
                }
            }
        }
        sent
    }

    #[test]
    fn application_names_are_checked() {
        assert!(AppId::new("chat").is_ok());
        assert!(AppId::new("files.v2:upload-1_a").is_ok());
        assert_eq!(AppId::new(""), Err(AppIdError::Empty));
        assert_eq!(AppId::new(&"a".repeat(65)), Err(AppIdError::TooLong(65)));
        assert_eq!(AppId::new("a b"), Err(AppIdError::BadCharacter(' ')));
        assert_eq!(AppId::new("é"), Err(AppIdError::BadCharacter('é')));
        let browser = peer(0xab);
        assert_eq!(
            AppId::browser(&browser).as_str(),
            format!("webrtc:{}", &browser.to_hex()[..16])
        );
    }

    #[test]
    fn limits_off_never_delay() {
        let mut manager = BandwidthManager::new(BandwidthConfig::new(0, 0));
        for _ in 0..10_000 {
            let delay = manager
                .reserve(Timestamp::ZERO, &app("a"), peer(1), 60_000)
                .expect("no limit");
            assert_eq!(delay, Duration::ZERO);
        }
        assert_eq!(
            manager.tracked(),
            (0, 0),
            "nothing is tracked without limits"
        );
    }

    #[test]
    fn a_key_sends_at_most_its_rate_and_burst() {
        let rate = 1_000_000;
        let mut manager = BandwidthManager::new(BandwidthConfig::new(rate, 0));
        let sent = drive(
            &mut manager,
            &[(app("flood"), peer(1), 10 * rate)],
            1_400,
            10,
        );
        let burst = rate / 4;
        assert!(sent[0] <= rate * 10 + burst + 1_400, "sent {}", sent[0]);
        assert!(sent[0] >= rate * 10 * 95 / 100, "sent {}", sent[0]);
    }

    #[test]
    fn a_flooding_application_leaves_the_others_their_rate() {
        let rate = 1_000_000;
        let mut manager = BandwidthManager::new(BandwidthConfig::new(0, rate));
        let flows = [
            (app("flood"), peer(1), 50 * rate),
            (app("chat"), peer(1), rate / 2),
            (app("mail"), peer(2), rate * 9 / 10),
        ];
        let sent = drive(&mut manager, &flows, 1_000, 10);
        assert!(
            sent[0] <= rate * 10 + rate / 4 + 1_000,
            "flood sent {}",
            sent[0]
        );
        assert_eq!(sent[1], rate / 2 * 10, "chat keeps all it offered");
        assert_eq!(sent[2], rate * 9 / 10 * 10, "mail keeps all it offered");
        assert_eq!(manager.counters().refused_peer, 0);
        assert!(manager.counters().delayed > 0, "the flood waited");
    }

    #[test]
    fn a_flood_towards_one_peer_leaves_the_other_peers_their_rate() {
        let rate = 2_000_000;
        let mut manager = BandwidthManager::new(BandwidthConfig::new(rate, 0));
        let flows = [
            (app("api"), peer(1), 20 * rate),
            (app("api"), peer(2), rate * 9 / 10),
            (app("api"), peer(3), rate / 10),
        ];
        let sent = drive(&mut manager, &flows, 1_400, 10);
        assert!(
            sent[0] <= rate * 10 + rate / 4 + 1_400,
            "flood sent {}",
            sent[0]
        );
        // The offered totals rounded down to whole packets.
        assert!(
            sent[1] >= rate * 9 / 10 * 10 - 1_400,
            "peer 2 got {}",
            sent[1]
        );
        assert!(sent[2] >= rate / 10 * 10 - 1_400, "peer 3 got {}", sent[2]);
    }

    #[test]
    fn a_refused_send_charges_nothing_and_says_when_to_retry() {
        let rate = 100_000;
        let mut config = BandwidthConfig::new(rate, 0);
        config.max_delay = Duration::from_millis(500);
        let mut manager = BandwidthManager::new(config);
        let now = Timestamp::ZERO;
        // The burst is MIN_BURST_BYTES (65,536 + 1,024) here: two 33,280-byte sends fit.
        assert_eq!(
            manager.reserve(now, &app("a"), peer(1), 33_280),
            Ok(Duration::ZERO)
        );
        assert_eq!(
            manager.reserve(now, &app("a"), peer(1), 33_280),
            Ok(Duration::ZERO)
        );
        // The next 40,000 bytes may go after 0.4 s: accepted with that delay.
        assert_eq!(
            manager.reserve(now, &app("a"), peer(1), 40_000),
            Ok(Duration::from_millis(400))
        );
        // Another 40,000 would wait 0.8 s > 0.5 s: refused, uncharged.
        let refused = manager
            .reserve(now, &app("a"), peer(1), 40_000)
            .expect_err("would wait 0.8 s");
        assert_eq!(refused.limit, Limit::Peer);
        assert_eq!(refused.retry_after, Duration::from_millis(300));
        assert!(refused.to_string().contains("peer_bandwidth"));
        let retry = Timestamp::from_millis(300);
        assert_eq!(
            manager.reserve(retry, &app("a"), peer(1), 40_000),
            Ok(Duration::from_millis(500))
        );
        // Another peer is not held back at all.
        assert_eq!(
            manager.reserve(now, &app("a"), peer(2), 40_000),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn new_rates_apply_at_once() {
        let mut manager = BandwidthManager::new(BandwidthConfig::new(100_000, 0));
        let now = Timestamp::ZERO;
        manager
            .reserve(now, &app("a"), peer(1), 66_560)
            .expect("burst");
        assert!(manager
            .reserve(now, &app("a"), peer(1), 100_000)
            .is_ok_and(|d| !d.is_zero()));
        manager.set_rates(0, 0);
        assert_eq!(
            manager.reserve(now, &app("a"), peer(1), 1_000_000),
            Ok(Duration::ZERO)
        );
    }

    #[test]
    fn idle_keys_are_forgotten_when_room_is_needed() {
        let mut config = BandwidthConfig::new(1_000, 1_000);
        config.max_keys = 2;
        let mut manager = BandwidthManager::new(config);
        let now = Timestamp::ZERO;
        manager.reserve(now, &app("a"), peer(1), 10).expect("first");
        manager
            .reserve(now, &app("b"), peer(2), 10)
            .expect("second");
        let full = manager
            .reserve(now, &app("c"), peer(3), 10)
            .expect_err("no room");
        assert_eq!(full.limit, Limit::TooManyKeys);
        // 10 bytes at 1,000 B/s are paid off after 10 ms: those keys may go.
        let later = Timestamp::from_millis(11);
        assert_eq!(
            manager.reserve(later, &app("c"), peer(3), 10),
            Ok(Duration::ZERO)
        );
        assert_eq!(manager.tracked(), (1, 1));
    }
}
