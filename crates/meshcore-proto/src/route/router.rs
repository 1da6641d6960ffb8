//! The router state machine. See [`Router`] for the run-loop contract and
//! [the module docs](crate::route) for the protocol.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NodeKeypair};
use crate::route::advert::SignedAdvert;
use crate::route::config::{RouteConfigError, RouterConfig};
use crate::route::graph::{GraphPath, LinkGraph};
use crate::route::message::{
    Announcement, Hello, HelloLink, Rerr, RouteMessage, Rrep, Rreq, Unreachable, MAX_HELLO_LINKS,
    MAX_RERR_ENTRIES,
};
use crate::route::metric::{LinkQuality, METRIC_INFINITY};
use crate::route::table::{feasible, DestinationEntry, Proof, Route, Slot, MAX_SLOTS, NO_SLOT};

/// What [`Router::find_route`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteLookup {
    /// A route is known now.
    Known(Route),
    /// A discovery is under way (started now or earlier); it ends with
    /// [`RouteEvent::RouteFound`] or [`RouteEvent::RouteFailed`].
    Discovering,
}

/// Why [`Router::find_route`] could not look for a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FindRouteError {
    /// The destination is this node.
    #[error("a node needs no route to itself")]
    ToSelf,
    /// `max_discoveries` discoveries are already running.
    #[error("too many route discoveries running")]
    TooManyDiscoveries,
    /// The route table holds `max_destinations` destinations.
    #[error("the route table is full")]
    TableFull,
}

/// Why [`Router::link_up`] refused a link.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// A node cannot be its own neighbour.
    #[error("a node cannot link to itself")]
    SelfLink,
    /// `max_neighbours` links are up already.
    #[error("too many neighbours")]
    TooManyNeighbours,
}

/// Why a discovery failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DiscoveryFailure {
    /// No reply came back from any ring, up to `max_hops` and its retries.
    NoRouteWithinMaxHops,
}

/// Something the driver (and through it, the user) should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteEvent {
    /// A discovery found a route.
    RouteFound {
        /// The destination.
        destination: NodeId,
        /// The route selected.
        route: Route,
    },
    /// A discovery ended without a route.
    RouteFailed {
        /// The destination.
        destination: NodeId,
        /// Why.
        reason: DiscoveryFailure,
    },
    /// A wanted destination's next hop was lost and the router switched to an alternate
    /// feasible route, without sending anything (local repair).
    RouteRepaired {
        /// The destination.
        destination: NodeId,
        /// The route now selected.
        route: Route,
    },
    /// A wanted destination's route was lost with no alternate; a RERR went to its
    /// precursors and a new discovery started (if there was room for one).
    RouteLost {
        /// The destination.
        destination: NodeId,
    },
    /// A neighbour sent something no honest router sends (a forged advertisement, a hello
    /// about another node, an inconsistent path). The driver may count it against the peer.
    PeerMisbehaved {
        /// The neighbour.
        peer: NodeId,
        /// What it did.
        reason: &'static str,
    },
}

/// Running totals, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RouteCounters {
    /// Hellos sent (one per neighbour).
    pub hellos_sent: u64,
    /// Hellos received.
    pub hellos_received: u64,
    /// Route requests this node originated (one per ring, all neighbours together).
    pub rreqs_originated: u64,
    /// Route requests forwarded.
    pub rreqs_forwarded: u64,
    /// Route requests already seen with at least as much TTL (or this node's own, echoed
    /// back), not forwarded again.
    pub rreqs_duplicate: u64,
    /// Route requests not sent because of `rreq_rate_limit`.
    pub rreqs_rate_limited: u64,
    /// Route replies this node originated as the destination.
    pub rreps_sent: u64,
    /// Route replies forwarded towards their originator.
    pub rreps_forwarded: u64,
    /// Route replies (or requests addressed here) dropped for want of a usable route back.
    pub rreps_dropped: u64,
    /// Route errors sent.
    pub rerrs_sent: u64,
    /// Data packets the driver could not forward for want of a route
    /// ([`Router::handle_unroutable`]).
    pub packets_unroutable: u64,
    /// Route errors about such packets not sent because of `rerr_rate_limit`.
    pub rerrs_rate_limited: u64,
    /// Data packets the driver refused to relay ([`Router::handle_refused`]).
    pub packets_refused: u64,
    /// Others' route requests not forwarded because this node does not relay.
    pub rreqs_not_relayed: u64,
    /// Others' route replies not forwarded because this node does not relay.
    pub rreps_not_relayed: u64,
    /// Route errors received.
    pub rerrs_received: u64,
    /// Advertisements with a bad signature or another node's signature, dropped.
    pub adverts_forged: u64,
    /// Advertisements older than the newest one seen for their node, dropped.
    pub adverts_replayed: u64,
    /// Advertisements older than `route_timeout` or too far in the future, dropped.
    pub adverts_stale: u64,
    /// Advertisements accepted but not feasible (kept as candidates, not selectable).
    pub adverts_infeasible: u64,
    /// Advertisements with a path longer than `max_hops`, dropped.
    pub adverts_too_many_hops: u64,
    /// Messages whose fields disagree with each other or with their sender, dropped.
    pub messages_malformed: u64,
    /// Messages from nodes that are not neighbours now, ignored.
    pub messages_from_non_neighbours: u64,
    /// Advertisements for a new destination refused because the table was full.
    pub destinations_refused: u64,
    /// Discoveries started.
    pub discoveries_started: u64,
    /// Discoveries that found a route.
    pub discoveries_succeeded: u64,
    /// Discoveries that failed.
    pub discoveries_failed: u64,
    /// Routes switched to an alternate after their next hop was lost.
    pub local_repairs: u64,
    /// Next hops set aside for a destination after end-to-end delivery through them failed.
    pub deliveries_failed: u64,
    /// Selected routes lost with no alternate.
    pub routes_lost: u64,
    /// Candidates that reached their expiry.
    pub routes_expired: u64,
    /// Messages dropped because the transmit queue was full.
    pub transmits_dropped: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
}

/// A live link to a neighbour.
#[derive(Debug, Clone, Copy)]
struct Neighbour {
    quality: LinkQuality,
    cost: u32,
    /// Its index in `Router::slots`, by which route entries name it.
    slot: Slot,
}

/// A discovery under way.
#[derive(Debug, Clone, Copy)]
struct Discovery {
    ttl: u8,
    retries: u8,
    deadline: Timestamp,
}

/// A token bucket in thousandths of a token.
#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    millitokens: u64,
    per_second: u64,
    last: Timestamp,
}

impl TokenBucket {
    fn new(per_second: u32, now: Timestamp) -> Self {
        Self {
            millitokens: u64::from(per_second) * 1000,
            per_second: u64::from(per_second),
            last: now,
        }
    }

    fn take(&mut self, now: Timestamp) -> bool {
        let elapsed = now.as_millis().saturating_sub(self.last.as_millis());
        self.last = self.last.max(now);
        // One token per second is one millitoken per millisecond.
        self.millitokens = self
            .millitokens
            .saturating_add(elapsed.saturating_mul(self.per_second))
            .min(self.per_second * 1000);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            true
        } else {
            false
        }
    }
}

/// Remembered `(originator, rreq_id)` pairs, oldest first; bounded in time and number.
#[derive(Debug, Clone, Default)]
struct SeenRreqs {
    /// Per request: when it is forgotten, and the most TTL any copy of it arrived with.
    expiry: BTreeMap<(NodeId, u32), (Timestamp, u8)>,
    order: VecDeque<(Timestamp, (NodeId, u32))>,
}

/// What a node has seen of a route request before this copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sighting {
    /// The first copy.
    First,
    /// An earlier copy arrived with less TTL left: this one came a shorter way and can reach
    /// further, so it is passed on too (at most `max_hops` times per request and node).
    MoreReach,
    /// An earlier copy had at least as much TTL left.
    Duplicate,
}

impl SeenRreqs {
    /// Remembers `key` until `until` with the copy's `ttl`; says what was seen before.
    fn insert(
        &mut self,
        now: Timestamp,
        key: (NodeId, u32),
        ttl: u8,
        until: Timestamp,
        max: usize,
    ) -> Sighting {
        while let Some(&(expires_at, old)) = self.order.front() {
            if expires_at > now && self.order.len() < max {
                break;
            }
            self.order.pop_front();
            self.expiry.remove(&old);
        }
        if let Some((_, best_ttl)) = self.expiry.get_mut(&key) {
            if ttl > *best_ttl {
                *best_ttl = ttl;
                return Sighting::MoreReach;
            }
            return Sighting::Duplicate;
        }
        self.expiry.insert(key, (until, ttl));
        self.order.push_back((until, key));
        Sighting::First
    }

    fn len(&self) -> usize {
        self.expiry.len()
    }
}

/// Why an advertisement was not taken as a candidate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    /// About this node itself; not an error.
    AboutSelf,
    Stale,
    Replayed,
    Forged,
    TooManyHops,
    TableFull,
}

/// The mesh router of one node, without I/O.
///
/// # Run loop
///
/// The driver owns the links, the clock and the loop. It must:
///
/// 1. report links: [`link_up`](Self::link_up) when a link to a neighbour is established
///    (with its first measurement), [`link_metric`](Self::link_metric) when it has new
///    measurements, [`link_down`](Self::link_down) when the link is gone;
/// 2. feed inputs: [`handle_message`](Self::handle_message) for every routing message
///    received, with the authenticated id of the neighbour that sent it,
///    [`handle_unroutable`](Self::handle_unroutable) for every data packet it could not
///    forward for want of a next hop, and [`handle_timeout`](Self::handle_timeout) once the
///    time returned by [`poll_timeout`](Self::poll_timeout) is reached;
/// 3. give commands: [`find_route`](Self::find_route) when it needs a route;
/// 4. after every input or command, drain [`poll_transmit`](Self::poll_transmit) (send
///    each message to its neighbour; one that cannot be sent may be dropped) and
///    [`poll_event`](Self::poll_event), then ask [`poll_timeout`](Self::poll_timeout) for
///    the next wake-up, which may have moved.
///
/// To forward a data packet, ask [`next_hop`](Self::next_hop). `now` must never go
/// backwards. The router never reads a clock and draws randomness only from an RNG seeded
/// by [`RouterConfig::rng_seed`], so the same inputs give the same outputs. Every input
/// first expires what is due at its `now`, so a late `handle_timeout` never lets a stale
/// route be advertised.
///
/// Methods are grouped as in quinn-proto: getters, inputs, commands, `poll_*` (outputs).
///
/// # Bounds
///
/// Neighbours: [`RouterConfig::max_neighbours`]; destinations (routes, feasibility
/// distances, candidates — one per neighbour each): [`RouterConfig::max_destinations`];
/// discoveries: [`RouterConfig::max_discoveries`]; remembered route requests:
/// [`RouterConfig::max_seen_rreqs`]; graph: [`MAX_HELLO_LINKS`] reported links per
/// neighbour; queues: [`RouterConfig::max_queued_transmits`] and
/// [`RouterConfig::max_queued_events`].
#[derive(Debug)]
pub struct Router {
    config: RouterConfig,
    keypair: NodeKeypair,
    local: NodeId,
    own_seqno: u64,
    own_advert: SignedAdvert,
    /// This node's relay fee, milli-tokens per MB, added to every price it advertises.
    fee: u64,
    links: BTreeMap<NodeId, Neighbour>,
    /// The neighbour in each slot (see [`Slot`]); `None` for a free slot.
    slots: Vec<Option<NodeId>>,
    /// Boxed: a B-tree slot is then 40 bytes, and the entry is allocated at its own size.
    destinations: BTreeMap<NodeId, Box<DestinationEntry>>,
    graph: LinkGraph,
    seen_rreqs: SeenRreqs,
    discoveries: BTreeMap<NodeId, Discovery>,
    next_rreq_id: u32,
    rreq_bucket: TokenBucket,
    /// Route errors about packets without a route.
    rerr_bucket: TokenBucket,
    transmits: VecDeque<(NodeId, RouteMessage)>,
    events: VecDeque<RouteEvent>,
    /// Route errors gathered during one input, by precursor; sent at its end.
    pending_rerrs: BTreeMap<NodeId, Vec<Unreachable>>,
    next_hello: Timestamp,
    /// Nothing in the table, graph or wanted set expires before this.
    next_purge: Timestamp,
    /// (destination, neighbour) → until when that neighbour is not used for it.
    avoided: BTreeMap<(NodeId, NodeId), Timestamp>,
    rng: ChaCha8Rng,
    counters: RouteCounters,
}

impl Router {
    /// A router for the node of `keypair`. `now` starts its timers; its first sequence
    /// number is `now` in milliseconds (see [the module docs](crate::route)).
    pub fn new(
        config: RouterConfig,
        keypair: NodeKeypair,
        now: Timestamp,
    ) -> Result<Self, RouteConfigError> {
        config.validate()?;
        let local = keypair.node_id();
        let mut rng = ChaCha8Rng::seed_from_u64(config.rng_seed);
        let own_seqno = now.as_millis();
        let own_advert = SignedAdvert::sign(&keypair, own_seqno, now);
        let next_rreq_id = rng.next_u32();
        let mut router = Self {
            rreq_bucket: TokenBucket::new(config.rreq_rate_limit, now),
            rerr_bucket: TokenBucket::new(config.rerr_rate_limit, now),
            graph: LinkGraph::new(local),
            config,
            keypair,
            local,
            own_seqno,
            own_advert,
            fee: 0,
            links: BTreeMap::new(),
            slots: Vec::new(),
            destinations: BTreeMap::new(),
            seen_rreqs: SeenRreqs::default(),
            discoveries: BTreeMap::new(),
            next_rreq_id,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            pending_rerrs: BTreeMap::new(),
            next_hello: now,
            next_purge: Timestamp::MAX,
            avoided: BTreeMap::new(),
            rng,
            counters: RouteCounters::default(),
        };
        router.next_hello = router.hello_deadline(now);
        Ok(router)
    }

    // ---- getters ----

    /// This node's id.
    pub fn local_id(&self) -> &NodeId {
        &self.local
    }

    /// The configuration.
    pub fn config(&self) -> &RouterConfig {
        &self.config
    }

    /// Running totals.
    pub fn counters(&self) -> &RouteCounters {
        &self.counters
    }

    /// Whether this node relays for others (see [`RouterConfig::relay`]).
    pub fn is_relaying(&self) -> bool {
        self.config.relay
    }

    /// This node's current sequence number.
    pub fn own_seqno(&self) -> u64 {
        self.own_seqno
    }

    /// This node's relay fee, milli-tokens per MB ([`set_fee`](Self::set_fee); 0 until set).
    pub fn fee(&self) -> u64 {
        self.fee
    }

    /// The price `neighbour` advertised for carrying traffic to `destination`, milli-tokens
    /// per MB, as it stands in `neighbour`'s candidate route (its latest advertisement that
    /// was accepted and has not expired or been withdrawn); 0 when `neighbour` announced
    /// itself. `None` when `neighbour` offers no route to `destination`.
    pub fn advertised_price(&self, neighbour: &NodeId, destination: &NodeId) -> Option<u64> {
        let entry = self.destinations.get(destination)?;
        let candidate = entry.candidate(self.slot_of(neighbour))?;
        Some(entry.price_of(candidate))
    }

    /// The neighbour to send a packet for `destination` to, as of the last input.
    pub fn next_hop(&self, destination: &NodeId) -> Option<NodeId> {
        self.neighbour_in(self.destinations.get(destination)?.selected)
    }

    /// [`next_hop`](Self::next_hop) for a destination given as raw key bytes (from
    /// [`PacketHeader::peek_destination`](crate::route::PacketHeader::peek_destination)): bytes
    /// that are not a known destination, valid key or not, have no next hop.
    pub fn next_hop_for(&self, destination: &[u8; crate::identity::NODE_ID_LEN]) -> Option<NodeId> {
        self.neighbour_in(
            self.destinations
                .get(&NodeId::lookup_key(*destination))?
                .selected,
        )
    }

    /// The destination's id, validated when it was learned, for raw key bytes read from a
    /// packet header, if it is a destination this router knows.
    pub fn known_destination(
        &self,
        destination: &[u8; crate::identity::NODE_ID_LEN],
    ) -> Option<NodeId> {
        self.destinations
            .get_key_value(&NodeId::lookup_key(*destination))
            .map(|(id, _)| *id)
    }

    /// The selected route to `destination`, as of the last input.
    pub fn route(&self, destination: &NodeId) -> Option<Route> {
        self.route_of(destination, self.destinations.get(destination)?)
    }

    /// Every selected route, by destination, for display.
    pub fn routes(&self) -> impl Iterator<Item = Route> + '_ {
        self.destinations
            .iter()
            .filter_map(|(destination, entry)| self.route_of(destination, entry))
    }

    /// The live links and their last measurements.
    pub fn neighbours(&self) -> impl Iterator<Item = (NodeId, LinkQuality)> + '_ {
        self.links
            .iter()
            .map(|(neighbour, link)| (*neighbour, link.quality))
    }

    /// The link-quality graph of the two-hop neighbourhood.
    pub fn graph(&self) -> &LinkGraph {
        &self.graph
    }

    /// The cheapest path to `destination` in the link-quality graph (Dijkstra).
    pub fn best_path(&self, destination: &NodeId) -> Option<GraphPath> {
        self.graph.best_path(destination)
    }

    /// Whether a discovery for `destination` is under way.
    pub fn is_discovering(&self, destination: &NodeId) -> bool {
        self.discoveries.contains_key(destination)
    }

    /// Number of destinations with state.
    pub fn destination_count(&self) -> usize {
        self.destinations.len()
    }

    /// Number of remembered route requests.
    pub fn seen_rreq_count(&self) -> usize {
        self.seen_rreqs.len()
    }

    // ---- inputs ----

    /// A link to `neighbour` came up, with its first measurement. Sends it a hello at once.
    pub fn link_up(
        &mut self,
        now: Timestamp,
        neighbour: NodeId,
        quality: LinkQuality,
    ) -> Result<(), LinkError> {
        if neighbour == self.local {
            return Err(LinkError::SelfLink);
        }
        self.housekeeping(now);
        let slot = match self.links.get(&neighbour) {
            Some(link) => link.slot,
            None if self.links.len() >= self.config.max_neighbours => NO_SLOT,
            None => self.take_slot(neighbour),
        };
        let result = if slot == NO_SLOT {
            Err(LinkError::TooManyNeighbours)
        } else {
            let cost = quality.cost(self.config.hop_cost);
            self.links.insert(
                neighbour,
                Neighbour {
                    quality,
                    cost,
                    slot,
                },
            );
            self.graph.set_own(neighbour, cost);
            self.reselect_via(now, &neighbour);
            self.send_hello(now, Some(neighbour));
            Ok(())
        };
        self.finish_input();
        result
    }

    /// New measurements of the link to `neighbour`. Routes through it are re-evaluated.
    pub fn link_metric(&mut self, now: Timestamp, neighbour: NodeId, rtt: Duration, loss: f64) {
        self.housekeeping(now);
        let hop_cost = self.config.hop_cost;
        if let Some(link) = self.links.get_mut(&neighbour) {
            link.quality = LinkQuality::new(rtt, loss);
            link.cost = link.quality.cost(hop_cost);
            let cost = link.cost;
            self.graph.set_own(neighbour, cost);
            self.reselect_via(now, &neighbour);
        }
        self.finish_input();
    }

    /// The link to `neighbour` is gone. Routes through it switch to an alternate feasible
    /// route if there is one (local repair); otherwise they are lost: a RERR goes to their
    /// precursors and wanted destinations are rediscovered.
    pub fn link_down(&mut self, now: Timestamp, neighbour: NodeId) {
        self.housekeeping(now);
        if let Some(link) = self.links.remove(&neighbour) {
            self.graph.remove_neighbour(&neighbour);
            self.pending_rerrs.remove(&neighbour);
            let mut affected = Vec::new();
            for (destination, entry) in &mut self.destinations {
                entry.remove_precursor(link.slot);
                if entry.remove_candidate(link.slot) {
                    affected.push(*destination);
                }
            }
            for destination in affected {
                self.reselect(now, destination);
            }
            // No entry names the slot any more: it may go to the next neighbour.
            if let Some(slot) = self.slots.get_mut(usize::from(link.slot)) {
                *slot = None;
            }
        }
        self.finish_input();
    }

    /// A routing message arrived from `from`, whose identity the link has authenticated.
    /// Messages from nodes that are not neighbours now are ignored.
    pub fn handle_message(&mut self, now: Timestamp, from: NodeId, message: RouteMessage) {
        self.housekeeping(now);
        if self.links.contains_key(&from) {
            match message {
                RouteMessage::Hello(hello) => self.on_hello(now, from, hello),
                RouteMessage::Rreq(rreq) => self.on_rreq(now, from, rreq),
                RouteMessage::Rrep(rrep) => self.on_rrep(now, from, rrep),
                RouteMessage::Rerr(rerr) => self.on_rerr(now, from, rerr),
            }
        } else {
            self.counters.messages_from_non_neighbours += 1;
        }
        self.finish_input();
    }

    /// A data packet for `destination` (its raw key bytes, as
    /// [`PacketHeader::peek_destination`](crate::route::PacketHeader::peek_destination) reads
    /// them) came from the neighbour `from`, and this node has no route to pass it on (RFC
    /// 3561 §6.11, case (ii)). Sends `from` a RERR for the destination, so that the nodes back
    /// to the packet's source withdraw their routes through here (each passes the RERR on to
    /// its precursors when it has no alternate) and the source starts a new discovery at once
    /// instead of waiting for its retransmissions to time out.
    ///
    /// The RERR carries the newest sequence number this node knows for the destination, or,
    /// when it knows none, `u64::MAX`: whatever `from` learned from this node about it is
    /// gone. Like every RERR it can only withdraw routes learned from this node. At most
    /// `rerr_rate_limit` of these go out per second; nothing is sent when `from` is not a
    /// neighbour, when this node does have a route now, or when the bytes are not a valid
    /// node id.
    pub fn handle_unroutable(
        &mut self,
        now: Timestamp,
        from: NodeId,
        destination: &[u8; crate::identity::NODE_ID_LEN],
    ) {
        self.housekeeping(now);
        self.counters.packets_unroutable += 1;
        if self.next_hop_for(destination).is_none() {
            self.withdraw_towards(now, from, destination);
        }
        self.finish_input();
    }

    /// End-to-end delivery to `destination` through the neighbour `via` failed: the
    /// driver's messages sent that way went unacknowledged (design.md §3: dropping relays
    /// are found by delivery measurement and routed around). For `avoid_time` this router
    /// does not select a route to `destination` through `via` and does not send its own
    /// route requests for it to `via`: the route moves to another known path (local
    /// repair), or is lost and rediscovered around `via`. Routes to other destinations
    /// through `via` are untouched. Nothing happens for this node itself or a non-neighbour.
    pub fn delivery_failed(&mut self, now: Timestamp, destination: NodeId, via: NodeId) {
        self.housekeeping(now);
        if destination == self.local || !self.links.contains_key(&via) {
            self.finish_input();
            return;
        }
        self.counters.deliveries_failed += 1;
        if self.avoided.len() >= self.config.max_avoided
            && !self.avoided.contains_key(&(destination, via))
        {
            if let Some(first) = self
                .avoided
                .iter()
                .min_by_key(|(_, until)| **until)
                .map(|(key, _)| *key)
            {
                self.avoided.remove(&first);
            }
        }
        let until = now.saturating_add(self.config.avoid_time);
        self.avoided.insert((destination, via), until);
        self.next_purge = self.next_purge.min(until);
        self.reselect(now, destination);
        self.finish_input();
    }

    /// Whether `neighbour` is set aside for `destination` at `now`.
    fn is_avoided(&self, destination: &NodeId, neighbour: &NodeId, now: Timestamp) -> bool {
        self.avoided
            .get(&(*destination, *neighbour))
            .is_some_and(|until| now < *until)
    }

    /// The driver refused to relay a data packet for `destination` that came from the
    /// neighbour `from` (relaying is off, or the relay budget takes no new flow). Like
    /// [`handle_unroutable`](Self::handle_unroutable), sends `from` a RERR for the
    /// destination — with the newest sequence number known here, so that every route `from`
    /// learned through this node is withdrawn even though this node has one — and `from`
    /// and the nodes behind it find another way. Shares `rerr_rate_limit` with
    /// `handle_unroutable`.
    pub fn handle_refused(
        &mut self,
        now: Timestamp,
        from: NodeId,
        destination: &[u8; crate::identity::NODE_ID_LEN],
    ) {
        self.housekeeping(now);
        self.counters.packets_refused += 1;
        self.withdraw_towards(now, from, destination);
        self.finish_input();
    }

    /// Queues a rate-limited RERR to the neighbour `from` withdrawing `destination` (given
    /// as raw key bytes).
    fn withdraw_towards(
        &mut self,
        now: Timestamp,
        from: NodeId,
        destination: &[u8; crate::identity::NODE_ID_LEN],
    ) {
        if !self.links.contains_key(&from) {
            return;
        }
        // A known destination's id is the table's key (checked when it was learned);
        // other bytes are checked here.
        let unreachable = match self
            .destinations
            .get_key_value(&NodeId::lookup_key(*destination))
        {
            Some((id, entry)) => Some(Unreachable {
                destination: *id,
                seqno: entry.latest().map_or(u64::MAX, |latest| latest.seqno),
            }),
            None => NodeId::from_bytes(*destination).ok().map(|id| Unreachable {
                destination: id,
                seqno: u64::MAX,
            }),
        };
        if let Some(unreachable) = unreachable.filter(|u| u.destination != self.local) {
            if self.rerr_bucket.take(now) {
                self.pending_rerrs
                    .entry(from)
                    .or_default()
                    .push(unreachable);
            } else {
                self.counters.rerrs_rate_limited += 1;
            }
        }
    }

    /// Runs what is due at `now`: expiry, discovery rings, hellos.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        self.housekeeping(now);
        let due: Vec<NodeId> = self
            .discoveries
            .iter()
            .filter(|(_, discovery)| discovery.deadline <= now)
            .map(|(destination, _)| *destination)
            .collect();
        for destination in due {
            self.next_ring(now, destination);
        }
        if now >= self.next_hello {
            self.send_hello(now, None);
            self.next_hello = self.hello_deadline(now);
        }
        self.finish_input();
    }

    // ---- commands ----

    /// Asks for a route to `destination`. A known route is returned at once; otherwise a
    /// discovery starts (or goes on) and ends with [`RouteEvent::RouteFound`] or
    /// [`RouteEvent::RouteFailed`]. Either way the destination is *wanted* for
    /// `route_timeout`: if its route is lost meanwhile, it is rediscovered.
    pub fn find_route(
        &mut self,
        now: Timestamp,
        destination: NodeId,
    ) -> Result<RouteLookup, FindRouteError> {
        if destination == self.local {
            return Err(FindRouteError::ToSelf);
        }
        self.housekeeping(now);
        let result = self.lookup(now, destination);
        self.finish_input();
        result
    }

    /// Sets this node's relay fee, milli-tokens per MB: from now on every route this node
    /// advertises (hello links, forwarded requests and replies) carries the selected route's
    /// price plus this fee. Nothing is sent at once; the next hello carries the new price to
    /// every neighbour. Whether the fee changed.
    pub fn set_fee(&mut self, fee: u64) -> bool {
        std::mem::replace(&mut self.fee, fee) != fee
    }

    /// Starts or stops relaying for others (see [`RouterConfig::relay`]). Takes effect for
    /// the next message; routes others learned through this node before are withdrawn by
    /// [`handle_refused`](Self::handle_refused) as their packets arrive, or expire.
    pub fn set_relaying(&mut self, relay: bool) {
        self.config.relay = relay;
    }

    // ---- outputs ----

    /// The next message to send: to which neighbour, and what.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, RouteMessage)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<RouteEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) must next be called.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let rings = self
            .discoveries
            .values()
            .map(|discovery| discovery.deadline);
        rings
            .chain([self.next_hello, self.next_purge])
            .min()
            .filter(|deadline| *deadline != Timestamp::MAX)
    }

    // ---- internals: commands ----

    fn lookup(
        &mut self,
        now: Timestamp,
        destination: NodeId,
    ) -> Result<RouteLookup, FindRouteError> {
        if !self.destinations.contains_key(&destination)
            && self.destinations.len() >= self.config.max_destinations
        {
            return Err(FindRouteError::TableFull);
        }
        let until = now.saturating_add(self.config.route_timeout);
        self.destinations
            .entry(destination)
            .or_default()
            .set_wanted_until(Some(until));
        self.next_purge = self.next_purge.min(until);
        if let Some(route) = self.route(&destination) {
            return Ok(RouteLookup::Known(route));
        }
        if self.discoveries.contains_key(&destination) {
            return Ok(RouteLookup::Discovering);
        }
        if self.discoveries.len() >= self.config.max_discoveries {
            return Err(FindRouteError::TooManyDiscoveries);
        }
        self.start_discovery(now, destination);
        Ok(RouteLookup::Discovering)
    }

    // ---- internals: messages ----

    fn on_hello(&mut self, now: Timestamp, from: NodeId, hello: Hello) {
        self.counters.hellos_received += 1;
        if hello.advert.node != from {
            self.malformed(from, "sent a hello about another node");
            return;
        }
        // A node announcing itself charges nothing to be reached.
        if self.accept_advert(now, from, hello.advert, 0, 0, vec![from]) == Err(Refusal::Forged) {
            return;
        }
        let hop_cost = self.config.hop_cost;
        let reported = hello
            .links
            .iter()
            .map(|link| {
                let quality = LinkQuality::from_wire(link.rtt_us, link.loss_ppm);
                (link.neighbour, quality.cost(hop_cost))
            })
            .collect();
        let expires_at = now.saturating_add(self.config.neighbour_report_timeout);
        self.graph.set_report(from, reported, expires_at);
        self.next_purge = self.next_purge.min(expires_at);
        for link in hello.links {
            if let Some(route) = link.route {
                if route.advert.node != self.local {
                    let path = vec![from, route.advert.node];
                    let _ = self.accept_advert(
                        now,
                        from,
                        route.advert,
                        route.metric,
                        route.price,
                        path,
                    );
                }
            }
        }
    }

    fn on_rreq(&mut self, now: Timestamp, from: NodeId, rreq: Rreq) {
        let originator = rreq.originator.node;
        if originator == self.local {
            self.counters.rreqs_duplicate += 1;
            return;
        }
        if rreq.path.last() != Some(&from) {
            self.malformed(from, "sent a route request whose path does not end at it");
            return;
        }
        let mut reverse_path = rreq.path.clone();
        reverse_path.reverse();
        if self
            .accept_advert(
                now,
                from,
                rreq.originator.clone(),
                rreq.metric,
                rreq.price,
                reverse_path,
            )
            .is_err()
        {
            return;
        }
        let until = now.saturating_add(self.config.rreq_seen_time);
        let key = (originator, rreq.rreq_id);
        let sighting =
            self.seen_rreqs
                .insert(now, key, rreq.ttl, until, self.config.max_seen_rreqs);
        match sighting {
            Sighting::First if rreq.destination == self.local => self.answer_rreq(now, &rreq),
            Sighting::First | Sighting::MoreReach
                if rreq.destination != self.local && rreq.ttl > 1 && !self.config.relay =>
            {
                self.counters.rreqs_not_relayed += 1;
            }
            Sighting::First | Sighting::MoreReach
                if rreq.destination != self.local && rreq.ttl > 1 =>
            {
                self.forward_rreq(now, from, &rreq)
            }
            Sighting::First | Sighting::MoreReach => {}
            Sighting::Duplicate => self.counters.rreqs_duplicate += 1,
        }
    }

    fn answer_rreq(&mut self, now: Timestamp, rreq: &Rreq) {
        let originator = rreq.originator.node;
        let Some(next) = self.next_hop(&originator) else {
            self.counters.rreps_dropped += 1;
            return;
        };
        self.new_seqno(now);
        let reply = Rrep {
            originator,
            rreq_id: rreq.rreq_id,
            destination: self.own_advert.clone(),
            metric: 0,
            price: 0,
            path: vec![self.local],
        };
        self.counters.rreps_sent += 1;
        self.transmit(next, RouteMessage::Rrep(reply));
    }

    fn forward_rreq(&mut self, now: Timestamp, from: NodeId, rreq: &Rreq) {
        let originator = rreq.originator.node;
        let Some(hops) = self.route(&originator).map(|route| route.path.len()) else {
            return;
        };
        if hops >= usize::from(self.config.max_hops) {
            return;
        }
        let recipients: Vec<NodeId> = self.links.keys().filter(|n| **n != from).copied().collect();
        if recipients.is_empty() {
            return;
        }
        if !self.rreq_bucket.take(now) {
            self.counters.rreqs_rate_limited += 1;
            return;
        }
        let Some((advert, metric, price, path)) = self.advertise(&originator, &recipients) else {
            return;
        };
        let forwarded = Rreq {
            rreq_id: rreq.rreq_id,
            destination: rreq.destination,
            originator: advert,
            metric,
            price,
            ttl: rreq.ttl - 1,
            path: self.message_path(path),
        };
        self.counters.rreqs_forwarded += 1;
        for neighbour in recipients {
            self.transmit(neighbour, RouteMessage::Rreq(forwarded.clone()));
        }
    }

    fn on_rrep(&mut self, now: Timestamp, from: NodeId, rrep: Rrep) {
        let destination = rrep.destination.node;
        if destination == self.local {
            return;
        }
        if rrep.path.last() != Some(&from) {
            self.malformed(from, "sent a route reply whose path does not end at it");
            return;
        }
        let mut path = rrep.path.clone();
        path.reverse();
        if self
            .accept_advert(
                now,
                from,
                rrep.destination.clone(),
                rrep.metric,
                rrep.price,
                path,
            )
            .is_err()
            || rrep.originator == self.local
        {
            // The originator's discovery completes in `finish_input`.
            return;
        }
        if !self.config.relay {
            self.counters.rreps_not_relayed += 1;
            return;
        }
        let (Some(next), Some(route)) = (self.next_hop(&rrep.originator), self.route(&destination))
        else {
            self.counters.rreps_dropped += 1;
            return;
        };
        if route.path.len() >= usize::from(self.config.max_hops) {
            self.counters.rreps_dropped += 1;
            return;
        }
        let Some((advert, metric, price, path)) = self.advertise(&destination, &[next]) else {
            self.counters.rreps_dropped += 1;
            return;
        };
        // Packets from the destination to the originator will come from the next hop
        // towards the destination (RFC 3561 §6.7).
        let slot = self.slot_of(&route.next_hop);
        if let Some(entry) = self.destinations.get_mut(&rrep.originator) {
            entry.add_precursor(slot);
        }
        let forwarded = Rrep {
            originator: rrep.originator,
            rreq_id: rrep.rreq_id,
            destination: advert,
            metric,
            price,
            path: self.message_path(path),
        };
        self.counters.rreps_forwarded += 1;
        self.transmit(next, RouteMessage::Rrep(forwarded));
    }

    fn on_rerr(&mut self, now: Timestamp, from: NodeId, rerr: Rerr) {
        self.counters.rerrs_received += 1;
        let slot = self.slot_of(&from);
        for unreachable in rerr.unreachable {
            let Some(entry) = self.destinations.get_mut(&unreachable.destination) else {
                continue;
            };
            let withdrawn = entry
                .candidate(slot)
                .is_some_and(|candidate| entry.proof_of(candidate).seqno <= unreachable.seqno);
            if withdrawn {
                entry.remove_candidate(slot);
                self.reselect(now, unreachable.destination);
            }
        }
    }

    fn malformed(&mut self, peer: NodeId, reason: &'static str) {
        self.counters.messages_malformed += 1;
        self.emit(RouteEvent::PeerMisbehaved { peer, reason });
    }

    // ---- internals: advertisements and selection ----

    /// Checks an advertisement relayed by `from` and stores it as `from`'s candidate, with
    /// `from`'s metric and price.
    fn accept_advert(
        &mut self,
        now: Timestamp,
        from: NodeId,
        advert: SignedAdvert,
        metric: u32,
        price: u64,
        path: Vec<NodeId>,
    ) -> Result<(), Refusal> {
        let destination = advert.node;
        if destination == self.local {
            return Err(Refusal::AboutSelf);
        }
        let route_timeout = self.config.route_timeout;
        if advert.issued_at.saturating_add(route_timeout) <= now
            || advert.issued_at > now.saturating_add(self.config.max_clock_skew)
        {
            self.counters.adverts_stale += 1;
            return Err(Refusal::Stale);
        }
        if path.len() > usize::from(self.config.max_hops) {
            self.counters.adverts_too_many_hops += 1;
            return Err(Refusal::TooManyHops);
        }
        let proof = Proof::of(&advert);
        let latest = self
            .destinations
            .get(&destination)
            .and_then(|entry| entry.latest());
        match latest {
            Some(latest) if latest.is_newer_than(&proof) => {
                self.counters.adverts_replayed += 1;
                return Err(Refusal::Replayed);
            }
            // The very advertisement already verified, arriving by another path.
            Some(latest) if *latest == proof => {}
            _ => {
                if advert.verify().is_err() {
                    self.counters.adverts_forged += 1;
                    self.emit(RouteEvent::PeerMisbehaved {
                        peer: from,
                        reason: "relayed a route advertisement with a bad signature",
                    });
                    return Err(Refusal::Forged);
                }
            }
        }
        if !self.destinations.contains_key(&destination)
            && self.destinations.len() >= self.config.max_destinations
        {
            self.counters.destinations_refused += 1;
            return Err(Refusal::TableFull);
        }
        let expires_at = now.min(advert.issued_at).saturating_add(route_timeout);
        // Signed after it arrived (the clocks differ): it lives from its arrival.
        let skew_ms = advert.issued_at.as_millis().saturating_sub(now.as_millis());
        let slot = self.slot_of(&from);
        let entry = self.destinations.entry(destination).or_default();
        if entry
            .latest()
            .is_none_or(|latest| proof.is_newer_than(latest))
        {
            entry.set_latest(proof);
        }
        if !feasible(entry.fd(), advert.seqno, metric) {
            self.counters.adverts_infeasible += 1;
        }
        entry.insert_candidate(slot, metric, price, &proof, skew_ms, &path);
        self.next_purge = self.next_purge.min(expires_at);
        self.reselect(now, destination);
        Ok(())
    }

    /// Selects the best usable candidate for `destination` and deals with the change:
    /// local repair when the old next hop became unusable and another is there, a lost
    /// route when none is.
    fn reselect(&mut self, now: Timestamp, destination: NodeId) {
        let (links, slots, avoided) = (&self.links, &self.slots, &self.avoided);
        let cost = |slot: Slot| {
            let neighbour = slots.get(usize::from(slot)).copied().flatten()?;
            if avoided
                .get(&(destination, neighbour))
                .is_some_and(|until| now < *until)
            {
                return None;
            }
            links.get(&neighbour).map(|link| (link.cost, neighbour))
        };
        let max_hops = self.config.max_hops;
        let Some(entry) = self.destinations.get_mut(&destination) else {
            return;
        };
        let old = Some(entry.selected).filter(|slot| *slot != NO_SLOT);
        let new = entry.best(cost, max_hops);
        entry.selected = new.unwrap_or(NO_SLOT);
        match (old, new) {
            // The old next hop is no longer usable and another is: local repair.
            (Some(old), Some(new)) if old != new && !entry.is_usable(old, cost, max_hops) => {
                self.counters.local_repairs += 1;
                if self.is_wanted(&destination, now) {
                    if let Some(route) = self.route(&destination) {
                        self.emit(RouteEvent::RouteRepaired { destination, route });
                    }
                }
            }
            (Some(_), None) => self.route_lost(now, destination),
            _ => {}
        }
    }

    /// Re-selects every destination that has a candidate from `neighbour`.
    fn reselect_via(&mut self, now: Timestamp, neighbour: &NodeId) {
        let slot = self.slot_of(neighbour);
        let affected: Vec<NodeId> = self
            .destinations
            .iter()
            .filter(|(_, entry)| entry.candidate(slot).is_some())
            .map(|(destination, _)| *destination)
            .collect();
        for destination in affected {
            self.reselect(now, destination);
        }
    }

    /// The selected route to `destination` is gone and no alternate is feasible.
    fn route_lost(&mut self, now: Timestamp, destination: NodeId) {
        self.counters.routes_lost += 1;
        let Some(entry) = self.destinations.get_mut(&destination) else {
            return;
        };
        let seqno = entry.latest().map_or(0, |latest| latest.seqno);
        let precursors = entry.take_precursors();
        for slot in precursors {
            let Some(precursor) = self.neighbour_in(slot) else {
                continue;
            };
            if self.links.contains_key(&precursor) {
                self.pending_rerrs
                    .entry(precursor)
                    .or_default()
                    .push(Unreachable { destination, seqno });
            }
        }
        if self.is_wanted(&destination, now) {
            self.emit(RouteEvent::RouteLost { destination });
            if !self.discoveries.contains_key(&destination)
                && self.discoveries.len() < self.config.max_discoveries
            {
                self.start_discovery(now, destination);
            }
        }
    }

    /// This node advertises its selected route to `destination` to `recipients`: returns
    /// the advertisement, this node's metric, its price (the route's price plus this node's
    /// fee) and its path (next hop first), and lowers the feasibility distance accordingly.
    /// `None` if there is no usable route.
    fn advertise(
        &mut self,
        destination: &NodeId,
        recipients: &[NodeId],
    ) -> Option<(SignedAdvert, u32, u64, Vec<NodeId>)> {
        let hold = self
            .config
            .route_timeout
            .saturating_add(self.config.max_clock_skew);
        let recipient_slots: Vec<Slot> = recipients.iter().map(|n| self.slot_of(n)).collect();
        let entry = self.destinations.get(destination)?;
        let next_hop = self.neighbour_in(entry.selected)?;
        let cost = self.links.get(&next_hop)?.cost;
        let candidate = entry.candidate(entry.selected)?;
        let metric = candidate.metric.saturating_add(cost);
        if metric == METRIC_INFINITY {
            return None;
        }
        let advert = entry.advert_of(candidate, *destination);
        let price = entry.price_of(candidate).saturating_add(self.fee);
        let path = entry.path_of(candidate, next_hop, *destination);
        let hold_until = advert.issued_at.saturating_add(hold);
        let entry = self.destinations.get_mut(destination)?;
        entry.advertised(advert.seqno, metric, hold_until);
        for slot in recipient_slots {
            entry.add_precursor(slot);
        }
        self.next_purge = self.next_purge.min(hold_until);
        Some((advert, metric, price, path))
    }

    /// A message path (far end first, this node last) from a route path (next hop first).
    fn message_path(&self, mut route_path: Vec<NodeId>) -> Vec<NodeId> {
        route_path.reverse();
        route_path.push(self.local);
        route_path
    }

    fn route_of(&self, destination: &NodeId, entry: &DestinationEntry) -> Option<Route> {
        let next_hop = self.neighbour_in(entry.selected)?;
        let candidate = entry.candidate(entry.selected)?;
        let cost = self.links.get(&next_hop)?.cost;
        Some(Route {
            destination: *destination,
            next_hop,
            hop_count: candidate.hops,
            metric: candidate.metric.saturating_add(cost),
            price: entry.price_of(candidate),
            seqno: entry.proof_of(candidate).seqno,
            path: entry.path_of(candidate, next_hop, *destination),
            expires_at: entry.expires_at(candidate, self.config.route_timeout),
        })
    }

    /// Whether this node's selected route to `neighbour` is the direct link.
    fn is_direct(&self, neighbour: &NodeId) -> bool {
        self.destinations.get(neighbour).is_some_and(|entry| {
            self.neighbour_in(entry.selected) == Some(*neighbour)
                && entry
                    .candidate(entry.selected)
                    .is_some_and(|candidate| candidate.hops == 1)
        })
    }

    fn is_wanted(&self, destination: &NodeId, now: Timestamp) -> bool {
        self.destinations
            .get(destination)
            .and_then(|entry| entry.wanted_until())
            .is_some_and(|until| until > now)
    }

    // ---- internals: neighbour slots ----

    /// The neighbour in `slot`, if the slot is taken.
    fn neighbour_in(&self, slot: Slot) -> Option<NodeId> {
        self.slots.get(usize::from(slot)).copied().flatten()
    }

    /// The slot of a live neighbour ([`NO_SLOT`] for any other node, which names nothing).
    fn slot_of(&self, neighbour: &NodeId) -> Slot {
        self.links.get(neighbour).map_or(NO_SLOT, |link| link.slot)
    }

    /// Gives `neighbour` the lowest free slot, or [`NO_SLOT`] if all are taken (not with a
    /// valid configuration: links are at most `max_neighbours`, at most [`MAX_SLOTS`]).
    fn take_slot(&mut self, neighbour: NodeId) -> Slot {
        let free = self.slots.iter().position(Option::is_none);
        let index = free.unwrap_or(self.slots.len());
        if index >= MAX_SLOTS {
            return NO_SLOT;
        }
        match self.slots.get_mut(index) {
            Some(slot) => *slot = Some(neighbour),
            None => self.slots.push(Some(neighbour)),
        }
        Slot::try_from(index).unwrap_or(NO_SLOT)
    }

    // ---- internals: discovery ----

    fn start_discovery(&mut self, now: Timestamp, destination: NodeId) {
        let ttl = self.config.ring_initial_ttl;
        self.counters.discoveries_started += 1;
        self.discoveries.insert(
            destination,
            Discovery {
                ttl,
                retries: 0,
                deadline: now.saturating_add(self.config.ring_timeout(ttl)),
            },
        );
        self.send_rreq(now, destination, ttl);
    }

    /// A ring timed out: widen it, retry at `max_hops`, or give up.
    fn next_ring(&mut self, now: Timestamp, destination: NodeId) {
        let Some(mut discovery) = self.discoveries.get(&destination).copied() else {
            return;
        };
        let max_hops = self.config.max_hops;
        if discovery.ttl < max_hops {
            discovery.ttl = discovery.ttl.saturating_mul(2).min(max_hops);
        } else if discovery.retries < self.config.rreq_retries {
            discovery.retries += 1;
        } else {
            self.discoveries.remove(&destination);
            self.counters.discoveries_failed += 1;
            self.emit(RouteEvent::RouteFailed {
                destination,
                reason: DiscoveryFailure::NoRouteWithinMaxHops,
            });
            return;
        }
        discovery.deadline = now.saturating_add(self.config.ring_timeout(discovery.ttl));
        self.discoveries.insert(destination, discovery);
        self.send_rreq(now, destination, discovery.ttl);
    }

    fn send_rreq(&mut self, now: Timestamp, destination: NodeId, ttl: u8) {
        let recipients: Vec<NodeId> = self
            .links
            .keys()
            .filter(|neighbour| !self.is_avoided(&destination, neighbour, now))
            .copied()
            .collect();
        if recipients.is_empty() {
            return;
        }
        if !self.rreq_bucket.take(now) {
            self.counters.rreqs_rate_limited += 1;
            return;
        }
        // Echoes of this node's own requests are recognised by their originator, so they
        // need no entry among the seen requests.
        let rreq_id = self.next_rreq_id;
        self.next_rreq_id = self.next_rreq_id.wrapping_add(1);
        self.new_seqno(now);
        let rreq = Rreq {
            rreq_id,
            destination,
            originator: self.own_advert.clone(),
            metric: 0,
            price: 0,
            ttl,
            path: vec![self.local],
        };
        self.counters.rreqs_originated += 1;
        for neighbour in recipients {
            self.transmit(neighbour, RouteMessage::Rreq(rreq.clone()));
        }
    }

    /// Issues a new sequence number, `max(previous + 1, now in ms)`, and signs it.
    fn new_seqno(&mut self, now: Timestamp) {
        self.own_seqno = self.own_seqno.saturating_add(1).max(now.as_millis());
        self.own_advert = SignedAdvert::sign(&self.keypair, self.own_seqno, now);
    }

    // ---- internals: hellos ----

    /// Sends a hello to `to`, or to every neighbour.
    fn send_hello(&mut self, now: Timestamp, to: Option<NodeId>) {
        let recipients: Vec<NodeId> = match to {
            Some(neighbour) => vec![neighbour],
            None => self.links.keys().copied().collect(),
        };
        if recipients.is_empty() {
            return;
        }
        if self
            .own_advert
            .issued_at
            .saturating_add(self.config.advert_refresh)
            <= now
        {
            self.own_advert = SignedAdvert::sign(&self.keypair, self.own_seqno, now);
        }
        let mut neighbours: Vec<(u32, NodeId, LinkQuality)> = self
            .links
            .iter()
            .map(|(neighbour, link)| (link.cost, *neighbour, link.quality))
            .collect();
        neighbours.sort_by_key(|(cost, neighbour, _)| (*cost, *neighbour));
        neighbours.truncate(MAX_HELLO_LINKS);
        let mut links = Vec::with_capacity(neighbours.len());
        for (_, neighbour, quality) in neighbours {
            // A node that does not relay announces no routes: nobody learns a two-hop
            // route through it.
            let direct = self.config.relay && self.is_direct(&neighbour);
            let route = if direct {
                self.advertise(&neighbour, &recipients)
                    .map(|(advert, metric, price, _)| Announcement {
                        advert,
                        metric,
                        price,
                    })
            } else {
                None
            };
            links.push(HelloLink {
                neighbour,
                rtt_us: quality.rtt_us(),
                loss_ppm: quality.loss_ppm(),
                route,
            });
        }
        let hello = Hello {
            advert: self.own_advert.clone(),
            links,
        };
        for neighbour in recipients {
            self.counters.hellos_sent += 1;
            self.transmit(neighbour, RouteMessage::Hello(hello.clone()));
        }
    }

    /// The next hello time: 75 % to 100 % of `hello_interval` from `now`.
    fn hello_deadline(&mut self, now: Timestamp) -> Timestamp {
        let interval = self.config.hello_interval;
        let jitter = f64::from(self.rng.next_u32()) / f64::from(u32::MAX);
        now.saturating_add(interval.mul_f64(0.75 + 0.25 * jitter))
    }

    // ---- internals: time ----

    /// Expires candidates, feasibility distances, graph reports and wanted marks due at
    /// `now`, re-selecting what changed and forgetting destinations with nothing left.
    fn housekeeping(&mut self, now: Timestamp) {
        if now < self.next_purge {
            return;
        }
        let keep_latest = self
            .config
            .route_timeout
            .saturating_add(self.config.max_clock_skew);
        let mut next = Timestamp::MAX;
        let mut changed = Vec::new();
        let mut forget = Vec::new();
        let route_timeout = self.config.route_timeout;
        for (destination, entry) in &mut self.destinations {
            let expired = entry.expire_candidates(now, route_timeout);
            self.counters.routes_expired += expired as u64;
            let mut dirty = expired > 0;
            if entry.fd().is_some() && entry.fd_hold_until() <= now {
                entry.forget_fd();
                dirty = true;
            }
            if entry.wanted_until().is_some_and(|until| until <= now) {
                entry.set_wanted_until(None);
            }
            if dirty {
                changed.push(*destination);
            }
            let latest_until = entry.latest().map_or(Timestamp::ZERO, |latest| {
                latest.issued_at.saturating_add(keep_latest)
            });
            if !entry.has_candidates()
                && entry.fd().is_none()
                && entry.wanted_until().is_none()
                && latest_until <= now
                && !self.discoveries.contains_key(destination)
            {
                forget.push(*destination);
                continue;
            }
            let candidates = entry.next_expiry(route_timeout);
            let fd = entry.fd().map(|_| entry.fd_hold_until());
            let latest = (latest_until > now).then_some(latest_until);
            next = candidates
                .into_iter()
                .chain(fd)
                .chain(entry.wanted_until())
                .chain(latest)
                .fold(next, Timestamp::min);
        }
        for destination in forget {
            self.destinations.remove(&destination);
        }
        next = next.min(self.graph.purge(now));
        let ended: Vec<(NodeId, NodeId)> = self
            .avoided
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(key, _)| *key)
            .collect();
        for key in ended {
            self.avoided.remove(&key);
            changed.push(key.0);
        }
        next = self.avoided.values().copied().fold(next, Timestamp::min);
        self.next_purge = next;
        for destination in changed {
            self.reselect(now, destination);
        }
    }

    /// Ends every input: completes discoveries that have a route now and sends the route
    /// errors gathered.
    fn finish_input(&mut self) {
        let found: Vec<NodeId> = self
            .discoveries
            .keys()
            .filter(|destination| self.next_hop(destination).is_some())
            .copied()
            .collect();
        for destination in found {
            self.discoveries.remove(&destination);
            if let Some(route) = self.route(&destination) {
                self.counters.discoveries_succeeded += 1;
                self.emit(RouteEvent::RouteFound { destination, route });
            }
        }
        let pending = std::mem::take(&mut self.pending_rerrs);
        for (precursor, unreachable) in pending {
            for chunk in unreachable.chunks(MAX_RERR_ENTRIES) {
                self.counters.rerrs_sent += 1;
                let rerr = Rerr {
                    unreachable: chunk.to_vec(),
                };
                self.transmit(precursor, RouteMessage::Rerr(rerr));
            }
        }
    }

    // ---- internals: output ----

    fn transmit(&mut self, to: NodeId, message: RouteMessage) {
        if self.transmits.len() >= self.config.max_queued_transmits {
            self.counters.transmits_dropped += 1;
            return;
        }
        self.transmits.push_back((to, message));
    }

    fn emit(&mut self, event: RouteEvent) {
        if self.events.len() >= self.config.max_queued_events {
            self.counters.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }
}

#[cfg(test)]
mod seen_rreq_tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;

    #[test]
    fn a_later_copy_with_more_ttl_is_passed_on_once_per_gain() {
        let origin =
            NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(1)).node_id();
        let mut seen = SeenRreqs::default();
        let (now, until) = (Timestamp::from_millis(0), Timestamp::from_millis(10_000));
        let key = (origin, 7);
        assert_eq!(seen.insert(now, key, 3, until, 16), Sighting::First);
        assert_eq!(seen.insert(now, key, 3, until, 16), Sighting::Duplicate);
        assert_eq!(seen.insert(now, key, 2, until, 16), Sighting::Duplicate);
        assert_eq!(seen.insert(now, key, 5, until, 16), Sighting::MoreReach);
        assert_eq!(seen.insert(now, key, 5, until, 16), Sighting::Duplicate);
        assert_eq!(seen.insert(now, (origin, 8), 1, until, 16), Sighting::First);
        assert_eq!(seen.len(), 2);
        // Forgotten after `until`: a copy then counts as new.
        let later = Timestamp::from_millis(10_001);
        assert_eq!(seen.insert(later, key, 1, later, 16), Sighting::First);
    }
}
