//! The peer manager: which nodes this node knows, which it is linked to, and which it
//! should dial, drop or ask for more peers. A sans-IO state machine.
//!
//! # Run loop
//!
//! The driver owns the sockets and the clock. It feeds the manager what happened —
//! [`add_peer`](PeerManager::add_peer) for every discovered node (bootstrap, LAN, peer
//! exchange, the store), [`link_up`](PeerManager::link_up) /
//! [`link_down`](PeerManager::link_down) / [`dial_failed`](PeerManager::dial_failed) for
//! links, [`link_quality`](PeerManager::link_quality) for measurements,
//! [`misbehaved`](PeerManager::misbehaved) for protocol violations — and calls
//! [`handle_timeout`](PeerManager::handle_timeout) when [`poll_timeout`](PeerManager::poll_timeout)
//! is reached (`None` means now). After each input it drains [`poll_action`](PeerManager::poll_action) and
//! carries the actions out (dial, close, ask for peers).
//!
//! # Policy
//!
//! - Keep at least `min_links`: when below, dial the best candidates — known, not linked,
//!   not blacklisted, not backing off — preferring good reputation, few failures and an
//!   address prefix (IPv4 /24, IPv6 /48) no current link shares.
//! - One link per peer: links that come up within `duplicate_window` of each other keep the
//!   one dialled by the smaller node id (both sides agree); a later link replaces the older.
//! - Keep at most `max_links`: an inbound link beyond it replaces the worst-quality link
//!   older than `min_link_age`; if there is none, it is refused.
//! - Failed dials back off exponentially (`backoff_initial` doubling to `backoff_max`, with
//!   ±20 % jitter from the seeded RNG).
//! - A peer that misbehaves is closed and blacklisted; each strike doubles the time.
//! - Peer exchange: ask one random linked peer every `pex_interval` (and every tick while
//!   below `min_links`); answer one request per peer per `pex_answer_interval`, with a
//!   sample of the peers linked now (never ones merely remembered, which may be gone).
//! - While below `min_links`, dial two candidates more than the shortfall, so that dead
//!   entries cannot stall joining for a whole dial timeout.
//!
//! Every map has a bound: known peers `max_known_peers`, links `max_links`, blacklist
//! `max_known_peers`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::identity::NodeId;
use crate::link::{Capabilities, PeerAddress, MAX_ADDRS, MAX_PEX_PEERS};

/// Tunables of the peer manager. [`PeerManagerConfig::new`] sets every default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerManagerConfig {
    /// Fewest links to keep (setting `min_connections`; default 3).
    pub min_links: usize,
    /// Most links to keep (setting `max_connections`; default 50).
    pub max_links: usize,
    /// First retry delay after a failed dial (default 1 s).
    pub backoff_initial: Duration,
    /// Longest retry delay (default 300 s).
    pub backoff_max: Duration,
    /// How often maintenance runs (default 1 s).
    pub tick_interval: Duration,
    /// How often a random linked peer is asked for peers (default 15 s).
    pub pex_interval: Duration,
    /// Peers in one answer (default 16; at most 32).
    pub pex_sample_size: usize,
    /// Shortest time between two answers to the same peer (default 5 s).
    pub pex_answer_interval: Duration,
    /// Most known peers kept (default 4096).
    pub max_known_peers: usize,
    /// Most dials in flight (default 8).
    pub max_concurrent_dials: usize,
    /// First blacklist period (default 60 s); doubles per strike.
    pub blacklist_initial: Duration,
    /// Longest blacklist period (default 3600 s).
    pub blacklist_max: Duration,
    /// Youngest link that may be replaced by a newcomer (default 10 s).
    pub min_link_age: Duration,
    /// Two links to one peer that came up within this time are a simultaneous dial and are
    /// resolved by node id; a link that comes up later replaces the older one, whose peer
    /// has evidently restarted or lost it (default 5 s).
    pub duplicate_window: Duration,
    /// Seed of the RNG used for jitter and sampling.
    pub rng_seed: u64,
}

impl PeerManagerConfig {
    /// The defaults, with the given RNG seed.
    pub fn new(rng_seed: u64) -> Self {
        Self {
            min_links: 3,
            max_links: 50,
            backoff_initial: Duration::from_secs(1),
            backoff_max: Duration::from_secs(300),
            tick_interval: Duration::from_secs(1),
            pex_interval: Duration::from_secs(15),
            pex_sample_size: 16,
            pex_answer_interval: Duration::from_secs(5),
            max_known_peers: 4096,
            max_concurrent_dials: 8,
            blacklist_initial: Duration::from_secs(60),
            blacklist_max: Duration::from_secs(3600),
            min_link_age: Duration::from_secs(10),
            duplicate_window: Duration::from_secs(5),
            rng_seed,
        }
    }
}

/// How a node came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DiscoverySource {
    /// A configured bootstrap node (never forgotten).
    Bootstrap,
    /// Named by hand, e.g. `POST /v1/connect` (never forgotten).
    Manual,
    /// Found on the local network.
    Lan,
    /// Learned from a peer's peer-exchange answer.
    Pex,
    /// Remembered from an earlier run.
    Store,
    /// It linked to us.
    Inbound,
    /// Found in the DHT's routing table (with an address learned through the DHT).
    Dht,
}

impl DiscoverySource {
    /// The name used in logs and the API.
    pub fn name(self) -> &'static str {
        match self {
            Self::Bootstrap => "bootstrap",
            Self::Manual => "manual",
            Self::Lan => "lan",
            Self::Pex => "pex",
            Self::Store => "store",
            Self::Inbound => "inbound",
            Self::Dht => "dht",
        }
    }

    fn pinned(self) -> bool {
        matches!(self, Self::Bootstrap | Self::Manual)
    }
}

/// Who opened a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Direction {
    /// This node dialled.
    Outbound,
    /// The peer dialled.
    Inbound,
}

/// The driver's handle for one link (one transport connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LinkId(pub u64);

/// What the manager knows of a node.
#[derive(Debug, Clone)]
pub struct KnownPeer {
    /// Where it can be reached (at most [`MAX_ADDRS`]; newest first).
    pub addrs: Vec<SocketAddr>,
    /// How it became known first.
    pub source: DiscoverySource,
    /// What it offered on its last link.
    pub capabilities: Capabilities,
    /// Failed dials since the last success.
    pub failures: u32,
    /// Not dialled before this time.
    pub next_attempt: Option<Instant>,
    /// Local reputation, 0.0 to 2.0; starts at 1.0.
    pub reputation: f64,
    /// When it was last linked or confirmed.
    pub last_seen: Option<Instant>,
    /// Blacklist strikes.
    pub strikes: u32,
}

/// A live link.
#[derive(Debug, Clone)]
pub struct LinkState {
    /// The driver's id for it.
    pub id: LinkId,
    /// Who opened it.
    pub direction: Direction,
    /// When it came up.
    pub since: Instant,
    /// Last quality measurement, 0.0 to 1.0 (1.0 until measured).
    pub quality: f64,
    /// What the peer offers.
    pub capabilities: Capabilities,
}

/// Why a link was closed or refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CloseReason {
    /// The node is at `max_links` and this link was the worst.
    Evicted,
    /// The node is at `max_links` and no link could make room.
    Full,
    /// The peer broke the protocol.
    Misbehaved(String),
    /// The peer is blacklisted.
    Blacklisted,
    /// Another link to the same peer is kept.
    Duplicate,
    /// A node cannot link to itself.
    SelfLink,
    /// This node is shutting down.
    Shutdown,
}

impl std::fmt::Display for CloseReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Evicted => f.write_str("replaced by a newer link (at max_connections)"),
            Self::Full => f.write_str("at max_connections"),
            Self::Misbehaved(reason) => write!(f, "protocol violation: {reason}"),
            Self::Blacklisted => f.write_str("blacklisted"),
            Self::Duplicate => f.write_str("duplicate link"),
            Self::SelfLink => f.write_str("link to self"),
            Self::Shutdown => f.write_str("node shutting down"),
        }
    }
}

/// Something the driver must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerAction {
    /// Open a link to `peer` at one of `addrs`; report [`PeerManager::link_up`] or
    /// [`PeerManager::dial_failed`].
    Dial {
        /// The node to dial.
        peer: NodeId,
        /// Its known addresses.
        addrs: Vec<SocketAddr>,
    },
    /// Close a link.
    Close {
        /// The peer.
        peer: NodeId,
        /// The link to close.
        link: LinkId,
        /// Why.
        reason: CloseReason,
    },
    /// Ask `peer` for a sample of its peers.
    RequestPex {
        /// The peer to ask.
        peer: NodeId,
    },
}

/// Dials beyond the shortfall while below `min_links`.
const SPARE_DIALS: usize = 2;

/// The peer manager. See the module documentation.
#[derive(Debug)]
pub struct PeerManager {
    local: NodeId,
    config: PeerManagerConfig,
    known: BTreeMap<NodeId, KnownPeer>,
    links: BTreeMap<NodeId, LinkState>,
    dialing: BTreeSet<NodeId>,
    blacklist: BTreeMap<NodeId, Instant>,
    pex_answered: BTreeMap<NodeId, Instant>,
    actions: VecDeque<PeerAction>,
    next_tick: Option<Instant>,
    next_pex: Option<Instant>,
    rng: ChaCha8Rng,
}

fn prefix(addr: &SocketAddr) -> (u8, [u8; 6]) {
    match addr.ip() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            (4, [o[0], o[1], o[2], 0, 0, 0])
        }
        IpAddr::V6(ip) => {
            let o = ip.octets();
            (6, [o[0], o[1], o[2], o[3], o[4], o[5]])
        }
    }
}

impl PeerManager {
    /// A manager for node `local`.
    pub fn new(local: NodeId, config: PeerManagerConfig) -> Self {
        let rng = ChaCha8Rng::seed_from_u64(config.rng_seed);
        Self {
            local,
            config,
            known: BTreeMap::new(),
            links: BTreeMap::new(),
            dialing: BTreeSet::new(),
            blacklist: BTreeMap::new(),
            pex_answered: BTreeMap::new(),
            actions: VecDeque::new(),
            next_tick: None,
            next_pex: None,
            rng,
        }
    }

    // ----- getters -----

    /// The live links, by peer.
    pub fn links(&self) -> &BTreeMap<NodeId, LinkState> {
        &self.links
    }

    /// The known peers, by id.
    pub fn known(&self) -> &BTreeMap<NodeId, KnownPeer> {
        &self.known
    }

    /// Whether `peer` is blacklisted at `now`.
    pub fn is_blacklisted(&self, peer: &NodeId, now: Instant) -> bool {
        self.blacklist.get(peer).is_some_and(|until| *until > now)
    }

    /// The limits in force.
    pub fn limits(&self) -> (usize, usize) {
        (self.config.min_links, self.config.max_links)
    }

    // ----- inputs -----

    /// Changes `min_links` / `max_links` (settings changed at run time). Links above the new
    /// maximum are closed, worst first.
    pub fn set_limits(&mut self, min_links: usize, max_links: usize) {
        self.config.min_links = min_links.min(max_links);
        self.config.max_links = max_links.max(1);
        while self.links.len() > self.config.max_links {
            match self.worst_link(None) {
                Some(peer) => self.close(peer, CloseReason::Full),
                None => break,
            }
        }
    }

    /// Records that `peer` can be reached at `addrs`. Returns whether the peer was new.
    /// Ignores this node itself and blacklisted nodes; keeps at most `max_known_peers`.
    pub fn add_peer(
        &mut self,
        now: Instant,
        peer: NodeId,
        addrs: &[SocketAddr],
        source: DiscoverySource,
    ) -> bool {
        if peer == self.local || self.is_blacklisted(&peer, now) {
            return false;
        }
        if let Some(known) = self.known.get_mut(&peer) {
            for addr in addrs.iter().rev() {
                known.addrs.retain(|a| a != addr);
                known.addrs.insert(0, *addr);
            }
            known.addrs.truncate(MAX_ADDRS);
            if source.pinned() && !known.source.pinned() {
                known.source = source;
            }
            return false;
        }
        if self.known.len() >= self.config.max_known_peers && !self.forget_one() {
            return false;
        }
        let mut unique: Vec<SocketAddr> = Vec::new();
        for addr in addrs {
            if !unique.contains(addr) {
                unique.push(*addr);
            }
        }
        unique.truncate(MAX_ADDRS);
        self.known.insert(
            peer,
            KnownPeer {
                addrs: unique,
                source,
                capabilities: Capabilities::empty(),
                failures: 0,
                next_attempt: None,
                reputation: 1.0,
                last_seen: None,
                strikes: 0,
            },
        );
        self.hurry_if_below_min();
        true
    }

    /// Asks for a link to `peer` now (a user's request), ignoring its backoff.
    pub fn dial_now(
        &mut self,
        now: Instant,
        peer: NodeId,
        addrs: &[SocketAddr],
    ) -> Result<(), CloseReason> {
        if peer == self.local {
            return Err(CloseReason::SelfLink);
        }
        if self.is_blacklisted(&peer, now) {
            return Err(CloseReason::Blacklisted);
        }
        self.add_peer(now, peer, addrs, DiscoverySource::Manual);
        if self.links.contains_key(&peer) || self.dialing.contains(&peer) {
            return Ok(());
        }
        let addrs = self
            .known
            .get(&peer)
            .map(|k| k.addrs.clone())
            .unwrap_or_default();
        self.dialing.insert(peer);
        self.actions.push_back(PeerAction::Dial { peer, addrs });
        Ok(())
    }

    /// A link to `peer` is up (after both Hellos). Returns `Err` if it must be closed; the
    /// manager may also queue a `Close` for another link (eviction, duplicate).
    pub fn link_up(
        &mut self,
        now: Instant,
        peer: NodeId,
        link: LinkId,
        direction: Direction,
        capabilities: Capabilities,
        addrs: &[SocketAddr],
    ) -> Result<(), CloseReason> {
        self.dialing.remove(&peer);
        if peer == self.local {
            return Err(CloseReason::SelfLink);
        }
        if self.is_blacklisted(&peer, now) {
            return Err(CloseReason::Blacklisted);
        }
        if let Some(existing) = self.links.get(&peer) {
            // Simultaneous dials: both sides keep the link dialled by the smaller node id.
            // Otherwise the newer link wins: the peer redialled because it lost the old one.
            let dialer = |d: Direction| {
                if d == Direction::Outbound {
                    self.local
                } else {
                    peer
                }
            };
            let simultaneous =
                now.saturating_duration_since(existing.since) < self.config.duplicate_window;
            if !simultaneous || dialer(direction) < dialer(existing.direction) {
                let old = existing.id;
                self.actions.push_back(PeerAction::Close {
                    peer,
                    link: old,
                    reason: CloseReason::Duplicate,
                });
            } else {
                return Err(CloseReason::Duplicate);
            }
        } else if self.links.len() >= self.config.max_links {
            match self.worst_link(Some(now)) {
                Some(worst) => self.close(worst, CloseReason::Evicted),
                None => return Err(CloseReason::Full),
            }
        }
        let source = if direction == Direction::Inbound {
            DiscoverySource::Inbound
        } else {
            DiscoverySource::Manual
        };
        self.add_peer(now, peer, addrs, source);
        if let Some(known) = self.known.get_mut(&peer) {
            known.failures = 0;
            known.next_attempt = None;
            known.last_seen = Some(now);
            known.capabilities = capabilities;
        }
        self.links.insert(
            peer,
            LinkState {
                id: link,
                direction,
                since: now,
                quality: 1.0,
                capabilities,
            },
        );
        self.hurry_if_below_min();
        Ok(())
    }

    /// While below `min_links`, news (a new peer, a new link) makes maintenance due now,
    /// so joining takes round trips rather than ticks.
    fn hurry_if_below_min(&mut self) {
        if self.links.len() < self.config.min_links {
            self.next_tick = None;
        }
    }

    /// A link went down (closed by either side or by the transport).
    pub fn link_down(&mut self, now: Instant, peer: NodeId, link: LinkId) {
        if self.links.get(&peer).is_some_and(|state| state.id == link) {
            self.links.remove(&peer);
            self.pex_answered.remove(&peer);
            if let Some(known) = self.known.get_mut(&peer) {
                known.last_seen = Some(now);
                known.next_attempt = Some(now + self.config.backoff_initial);
            }
        }
    }

    /// A dial to `peer` failed (unreachable, timed out, refused).
    pub fn dial_failed(&mut self, now: Instant, peer: NodeId) {
        self.dialing.remove(&peer);
        let delay = self.backoff_delay(self.known.get(&peer).map_or(0, |k| k.failures));
        if let Some(known) = self.known.get_mut(&peer) {
            known.failures = known.failures.saturating_add(1);
            known.next_attempt = Some(now + delay);
            known.reputation = (known.reputation - 0.05).max(0.0);
        }
    }

    /// A quality measurement of the link to `peer`.
    pub fn link_quality(&mut self, peer: NodeId, quality: f64) {
        if let Some(link) = self.links.get_mut(&peer) {
            link.quality = quality.clamp(0.0, 1.0);
        }
    }

    /// `peer` broke the protocol: close its link and blacklist it.
    pub fn misbehaved(&mut self, now: Instant, peer: NodeId, reason: &str) {
        let strikes = self.known.get(&peer).map_or(0, |k| k.strikes);
        let period = self
            .config
            .blacklist_initial
            .saturating_mul(1u32 << strikes.min(16))
            .min(self.config.blacklist_max);
        if self.blacklist.len() >= self.config.max_known_peers {
            self.expire_blacklist(now);
        }
        if self.blacklist.len() < self.config.max_known_peers {
            self.blacklist.insert(peer, now + period);
        }
        if let Some(known) = self.known.get_mut(&peer) {
            known.strikes = known.strikes.saturating_add(1);
            known.reputation = (known.reputation - 0.2).max(0.0);
        }
        self.dialing.remove(&peer);
        if self.links.contains_key(&peer) {
            self.close(peer, CloseReason::Misbehaved(reason.to_owned()));
        }
    }

    /// Peers learned from `from`'s peer-exchange answer.
    pub fn handle_pex(&mut self, now: Instant, from: NodeId, peers: &[PeerAddress]) -> usize {
        if !self.links.contains_key(&from) {
            return 0;
        }
        let mut added = 0;
        for peer in peers.iter().take(MAX_PEX_PEERS) {
            if let Some(id) = peer.id() {
                if self.add_peer(now, id, &peer.addrs, DiscoverySource::Pex) {
                    added += 1;
                }
            }
        }
        added
    }

    /// The answer to `requester`'s peer-exchange request, or `None` if it asked too soon
    /// or is not linked. The sample is drawn from linked peers first, then known ones.
    pub fn pex_answer(&mut self, now: Instant, requester: NodeId) -> Option<Vec<PeerAddress>> {
        if !self.links.contains_key(&requester) {
            return None;
        }
        if self
            .pex_answered
            .get(&requester)
            .is_some_and(|last| now < *last + self.config.pex_answer_interval)
        {
            return None;
        }
        self.pex_answered.insert(requester, now);
        let mut linked: Vec<NodeId> = self
            .links
            .keys()
            .copied()
            .filter(|p| *p != requester)
            .collect();
        // Only peers linked now: a node that merely was known may be long gone, and
        // handing it on would send the asker into dial timeouts.
        self.shuffle(&mut linked);
        let size = self.config.pex_sample_size.min(MAX_PEX_PEERS);
        Some(
            linked
                .into_iter()
                .filter_map(|id| {
                    let addrs = &self.known.get(&id)?.addrs;
                    (!addrs.is_empty()).then(|| PeerAddress {
                        node_id: *id.as_bytes(),
                        addrs: addrs.clone(),
                    })
                })
                .take(size)
                .collect(),
        )
    }

    /// Runs maintenance if it is due: dials towards `min_links`, asks for peers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.next_tick.is_some_and(|tick| now < tick) {
            return;
        }
        self.next_tick = Some(now + self.config.tick_interval);
        self.expire_blacklist(now);

        let below_min = self.links.len() < self.config.min_links;
        if below_min {
            self.dial_candidates(now);
        }
        let pex_due = self.next_pex.is_none_or(|at| now >= at);
        if (pex_due || below_min) && !self.links.is_empty() {
            let linked: Vec<NodeId> = self.links.keys().copied().collect();
            let peer = linked[(self.rng.next_u64() % linked.len() as u64) as usize];
            self.actions.push_back(PeerAction::RequestPex { peer });
            self.next_pex = Some(now + self.config.pex_interval);
        }
    }

    // ----- outputs -----

    /// The next action for the driver.
    pub fn poll_action(&mut self) -> Option<PeerAction> {
        self.actions.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should next be called (`None`: now).
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.next_tick
    }

    // ----- internals -----

    fn close(&mut self, peer: NodeId, reason: CloseReason) {
        if let Some(state) = self.links.remove(&peer) {
            self.pex_answered.remove(&peer);
            self.actions.push_back(PeerAction::Close {
                peer,
                link: state.id,
                reason,
            });
        }
    }

    fn backoff_delay(&mut self, failures: u32) -> Duration {
        let base = self
            .config
            .backoff_initial
            .saturating_mul(1u32 << failures.min(20))
            .min(self.config.backoff_max);
        // ±20 % jitter so that peers that failed together do not retry together.
        let jitter = 0.8 + (self.rng.next_u32() as f64 / u32::MAX as f64) * 0.4;
        base.mul_f64(jitter)
    }

    fn worst_link(&self, now: Option<Instant>) -> Option<NodeId> {
        self.links
            .iter()
            .filter(|(_, state)| {
                now.is_none_or(|now| now.duration_since(state.since) >= self.config.min_link_age)
            })
            .min_by(|a, b| {
                a.1.quality
                    .total_cmp(&b.1.quality)
                    .then(b.1.since.cmp(&a.1.since))
            })
            .map(|(peer, _)| *peer)
    }

    fn dial_candidates(&mut self, now: Instant) {
        // Two spare dials, so that a few dead entries cannot stall joining for a dial timeout.
        let wanted = (self.config.min_links + SPARE_DIALS)
            .min(self.config.max_links)
            .saturating_sub(self.links.len() + self.dialing.len());
        let slots = self
            .config
            .max_concurrent_dials
            .saturating_sub(self.dialing.len());
        let count = wanted.min(slots);
        if count == 0 {
            return;
        }
        let linked_prefixes: BTreeSet<_> = self
            .links
            .keys()
            .filter_map(|peer| {
                self.known
                    .get(peer)
                    .and_then(|k| k.addrs.first())
                    .map(prefix)
            })
            .collect();
        let mut scored: Vec<(f64, NodeId)> = Vec::new();
        for (id, known) in &self.known {
            let eligible = !self.links.contains_key(id)
                && !self.dialing.contains(id)
                && !known.addrs.is_empty()
                && known.next_attempt.is_none_or(|at| at <= now)
                && self.blacklist.get(id).is_none_or(|until| *until <= now);
            if !eligible {
                continue;
            }
            let diverse = known
                .addrs
                .first()
                .is_some_and(|a| !linked_prefixes.contains(&prefix(a)));
            let score = known.reputation - 0.1 * f64::from(known.failures.min(10))
                + if diverse { 0.5 } else { 0.0 };
            scored.push((score, *id));
        }
        for entry in &mut scored {
            entry.0 += (self.rng.next_u32() as f64 / u32::MAX as f64) * 0.1;
        }
        scored.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)));
        for (_, peer) in scored.into_iter().take(count) {
            let addrs = self
                .known
                .get(&peer)
                .map(|k| k.addrs.clone())
                .unwrap_or_default();
            self.dialing.insert(peer);
            self.actions.push_back(PeerAction::Dial { peer, addrs });
        }
    }

    fn expire_blacklist(&mut self, now: Instant) {
        self.blacklist.retain(|_, until| *until > now);
    }

    /// Forgets the least useful unpinned, unlinked known peer. Returns whether one was.
    fn forget_one(&mut self) -> bool {
        let victim = self
            .known
            .iter()
            .filter(|(id, k)| {
                !k.source.pinned() && !self.links.contains_key(id) && !self.dialing.contains(id)
            })
            .min_by(|a, b| {
                (a.1.reputation - f64::from(a.1.failures))
                    .total_cmp(&(b.1.reputation - f64::from(b.1.failures)))
                    .then(a.0.cmp(b.0))
            })
            .map(|(id, _)| *id);
        match victim {
            Some(id) => {
                self.known.remove(&id);
                true
            }
            None => false,
        }
    }

    fn shuffle(&mut self, items: &mut [NodeId]) {
        for i in (1..items.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}

#[cfg(test)]
mod tests;
