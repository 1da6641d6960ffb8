//! The routing driver: runs the sans-IO [`Router`] over the links' data frames, forwards
//! packets hop by hop, and delivers the ones addressed to this node.
//!
//! # Frames
//!
//! Routing shares the links' data frames (see [`LinkHandle::try_send_data`]) and tells its
//! frames apart by their first byte:
//!
//! ```text
//! tag   frame                                 what
//! 0x01  0x01 ‖ RouteMessage (postcard)        route control (hello, RREQ, RREP, RERR), to a neighbour
//! 0x02  0x02 ‖ PacketHeader ‖ payload         a routed data packet
//! 0x03  0x03 ‖ PacketHeader ‖ payload         a delivery acknowledgement, routed back to the
//!                                              data packet's source like data
//! 0x04  0x04 ‖ RelayNotice (99 bytes)         a relay refused a flow: to the neighbour the
//!                                              packet came from, passed on towards its source
//! 0x05  0x05 ‖ Iou (160 bytes)                a signed cumulative IOU, to the payee neighbour
//! 0x06  0x06 ‖ Statement (49 bytes)           this node's price for a destination and the
//!                                              bytes it carried there for the neighbour it
//!                                              took them from, to that neighbour
//! ```
//!
//! A relay reads only the [`PacketHeader`] of a data or acknowledgement packet, decrements
//! its hop limit in place ([`PacketHeader::forward_in_place`]) and passes the frame to
//! [`Router::next_hop`]; the payload is never parsed, copied apart or re-serialised by a
//! relay. A packet with no route or no hops left is dropped and counted; for one with no
//! route the router sends a route error back to the neighbour it came from
//! ([`Router::handle_unroutable`], rate-limited), so its source rediscovers.
//!
//! The end-to-end payload, which only the two ends read:
//!
//! - data: `initial_hop_limit: u8 ‖ sealed(message bytes)`;
//! - acknowledgement: `initial_hop_limit: u8 ‖ sealed(hops: u8)` — the acknowledged
//!   packet's hop count; the header's `sequence` and `flow_id` are those of the acknowledged
//!   packet.
//!
//! `initial_hop_limit` is the hop limit the source sent the packet with, so the destination
//! can tell how many hops it travelled. `sealed(…)` is [`meshcore_proto::e2e`]: X25519 from
//! the two node keys plus a sender ephemeral per session, HKDF-SHA256, AES-256-GCM with
//! counter nonces and a replay window. Its associated data is
//! [`header_associated_data`](meshcore_proto::e2e::header_associated_data) (every header
//! field but the hop limit, which relays change) followed by `initial_hop_limit`, so a relay
//! that alters the source, destination, sequence or the hop count claim makes the packet
//! fail to open. Relays see only the routing header; a packet that fails to open is dropped
//! and counted (`e2e_rejected`), and is not acknowledged. Acknowledgements are sealed too,
//! so a relay cannot fake a delivery.
//!
//! A source sends with hop limit `max_hops − 1`: each relay needs one to pass the packet on,
//! so a packet crosses at most `max_hops` links.
//!
//! # Relaying
//!
//! Every packet this node would pass on for another node first goes through the
//! [`RelayLimiter`] (flow = previous hop and source; budget `relay_bandwidth` bytes per
//! second of whole frames, shared max-min fairly; see [`meshcore_proto::relay`]). Packets
//! beyond a flow's share or the budget are dropped and counted (`relay_dropped_over_share`,
//! `relay_dropped_over_cap`). A packet whose *flow* is refused — relaying off
//! (`relay_enabled` false or `relay_bandwidth` 0), or a saturated relay that takes no new
//! flow — is counted (`relay_refused_disabled`, `relay_refused_saturated`), answered with a
//! route error to the neighbour it came from ([`Router::handle_refused`]), so that routes
//! move elsewhere, and with a [`RelayNotice`] stating the reason, which travels hop by hop
//! to the packet's source (at most 10 notices per second); there it is counted
//! (`relay_notices_received`), logged and published as [`MeshEvent::RelayRefused`]. While
//! relaying is off or the budget takes no new flow, the router does not relay route
//! requests or replies nor announce routes ([`Router::set_relaying`]), so new routes form
//! around this node. Changes of `relay_enabled` and `relay_bandwidth` apply at once
//! ([`Routing::set_relay`]). This node's own packets and packets for it are never limited.
//!
//! A neighbour the ledger rates [`Standing::Throttle`] (more than 1.25 × its threshold
//! unpaid for 2 s) has what this node relays for it held to 32 KiB/s in all
//! ([`RelayLimiter::set_throttled`]; the rest is dropped and counted,
//! `dropped_throttled`) until it pays.
//!
//! # The fast path
//!
//! Packets of flows the limiter has already admitted are relayed by the link task that read
//! them ([`crate::forward`]), without passing through this driver: the driver publishes
//! its selected routes and links to the [`Forwarder`] whenever they may have changed, and
//! the neighbours in `Throttle` or `CutOff` standing, whose packets it keeps handling
//! itself; the relay budget is one [`RelayLimiter`] both paths share under a mutex. The
//! link tasks book what they forwarded, and the driver hands those bookings to the ledger
//! at its next wake-up (at most 250 ms later, always before its next statement). New
//! flows, refusals, packets for this node and everything else still come here.
//!
//! # Own sends
//!
//! Messages and datagrams this node originates first pass its bandwidth manager
//! ([`Routing::pace`], [`meshcore_proto::bandwidth`]): `peer_bandwidth` per destination
//! and `app_bandwidth` per application, in the calling task, so that a flood waits (up to
//! 2 s, or is refused with [`RouteError::Throttled`]) without holding up the driver or other
//! senders.
//!
//! Datagrams ([`Routing::send_datagram`], flow [`DATAGRAM_FLOW`]) are sealed like messages
//! but sent once and not acknowledged; the destination delivers them like messages.
//!
//! # The ledger
//!
//! The driver keeps the node's relay ledger ([`Bookkeeper`], see
//! [`meshcore_proto::ledger`]): every data or acknowledgement frame this node hands to a
//! next hop is booked with the frame's length — one it relayed with the neighbour it came
//! from as upstream, one it originated with none. The router advertises this node's fee
//! ([`Router::set_fee`], the ledger's [`Ledger::own_fee`]: set at start, then on every
//! metrics tick and when `tokens_per_mb` changes) on top of each route's price, and every
//! price a neighbour advertises that the router accepts goes to the ledger
//! ([`Router::advertised_price`] → [`Bookkeeper::price_advertised`]), so bytes are priced
//! before any statement comes. A relay charges its upstream its quote (next hop's price
//! plus its own fee) for what it forwarded and says so in statements (`0x06`, every 250 ms
//! while it carries traffic); an upstream owes its next hop only what the next hop's
//! statements confirm, at their price but never above the price the next hop advertised,
//! capped at what it handed over, so packets a relay refused or dropped are never paid for
//! and a relay cannot state its way above its offer. IOUs (`0x05`) go to payees when
//! the ledger says so, and arrive checked ([`Ledger::accept_iou`]). A neighbour cut off for debt
//! ([`Standing::CutOff`]) has its packets refused (`unpaid`) like a refused flow.
//! Acknowledgements raise the reputation of the next hop that carried the message; messages
//! whose caller gave up lower it. A message still unacknowledged after
//! [`AVOID_AFTER_RETRANSMISSIONS`] retransmissions through the same next hop lowers that next
//! hop's reputation and makes the router set it aside for the destination for a while
//! ([`Router::delivery_failed`]), so a relay that drops packets is routed around. The ledger is persisted by [`crate::ledger`].
//!
//! # The driver
//!
//! One task owns the [`Router`], the current [`LinkHandle`] per neighbour and the waiters of
//! [`Routing`] calls. It wakes for received frames, for link changes from the network actor
//! ([`Routing::link_up`], [`Routing::link_down`]), for commands, for the router's timer, for
//! a metrics tick (every hello interval: each link's RTT and loss go to
//! [`Router::link_metric`]) and for a persistence tick (every [`PERSIST_INTERVAL`], the
//! selected routes are handed to a writer task that replaces `meshcore_routes`, when they
//! changed). After each input it drains the router's transmits and events. The store is
//! never awaited by the driver.
//!
//! Bounds: command queue [`COMMAND_QUEUE`], link-change queue [`LINK_QUEUE`] (overflow is
//! logged and dropped; a send on a closed link also takes it down), waiters per destination
//! [`MAX_WAITERS_PER_DESTINATION`], unacknowledged messages [`MAX_PENDING_ACKS`],
//! acknowledgements waiting for a route [`MAX_PENDING_ACK_PACKETS`], received messages kept
//! [`RECEIVED_KEPT`], broadcast subscribers' backlog [`RECEIVED_KEPT`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use meshcore_proto::bandwidth::{AppId, BandwidthConfig, BandwidthManager, Throttled};
use meshcore_proto::e2e::{self, Receiver, ReceiverConfig, Session};
use meshcore_proto::identity::NODE_ID_LEN;
use meshcore_proto::ledger::{
    Bookkeeper, Iou, Ledger, LedgerConfig, LedgerMessage, Standing, Statement,
};
use meshcore_proto::relay::{FlowKey, RelayConfig, RelayLimiter, RelayNotice, RelayRefusal};
use meshcore_proto::route::{
    self, FindRouteError, LinkQuality, PacketHeader, Route, RouteConfigError, RouteEvent,
    RouteLookup, Router, RouterConfig, HEADER_LEN, MAX_PATH_LEN,
};
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::{RouteRow, Store};
use rand::rngs::OsRng;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::clock::{now, sleep_until, unix_millis};
use crate::forward::{Forwarder, ForwardingTable};
use crate::ledger::{LedgerTerms, TokensInfo, LEDGER_PERSIST_INTERVAL};
use crate::link::{LinkHandle, ReceivedFrame, SendError, MAX_DATA_FRAME};

/// First byte of a route control frame.
pub const TAG_ROUTE: u8 = 0x01;
/// First byte of a routed data packet.
pub const TAG_DATA: u8 = 0x02;
/// First byte of a routed delivery acknowledgement.
pub const TAG_ACK: u8 = 0x03;
/// First byte of a relay's refusal notice.
pub const TAG_NOTICE: u8 = 0x04;
/// First byte of a signed cumulative IOU.
pub const TAG_IOU: u8 = 0x05;
/// First byte of a ledger statement (price and carried bytes).
pub const TAG_STATEMENT: u8 = 0x06;

/// The frame a message of `payload_len` bytes travels in: tag, header, initial hop limit,
/// sealed payload.
pub fn frame_len(payload_len: usize) -> u64 {
    (1 + HEADER_LEN + 1 + e2e::SEAL_OVERHEAD + payload_len) as u64
}

/// Largest message a data packet carries: what end-to-end sealing accepts, within a data
/// frame less the tag, the header, the initial-hop-limit byte and the sealing overhead.
pub const MAX_PAYLOAD: usize = {
    let frame_room = MAX_DATA_FRAME - 1 - HEADER_LEN - 1 - e2e::SEAL_OVERHEAD;
    if frame_room < e2e::MAX_PLAINTEXT_LEN {
        frame_room
    } else {
        e2e::MAX_PLAINTEXT_LEN
    }
};

/// Most destinations with a live sending session; the least recently used is dropped.
pub const MAX_SEND_SESSIONS: usize = 1024;

/// Flow id of messages sent with [`Routing::send`].
pub const MESSAGE_FLOW: u32 = 1;

/// Flow id of datagrams sent with [`Routing::send_datagram`]: never acknowledged.
pub const DATAGRAM_FLOW: u32 = 2;

/// Flow id of browser signaling one node relays to another ([`Routing::send_signal`]):
/// acknowledged like messages, but delivered to [`Routing::signals`] subscribers instead of
/// the received messages and events.
pub const SIGNAL_FLOW: u32 = 3;

/// Flow id of envelopes about browsers' messages one node sends another
/// ([`Routing::send_browser_envelope`], [`meshcore_proto::browser_mesh`]): acknowledged like
/// messages, but delivered to [`Routing::browser_envelopes`] subscribers.
pub const BROWSER_FLOW: u32 = 4;

/// Commands waiting for the driver.
pub const COMMAND_QUEUE: usize = 1024;
/// Link changes waiting for the driver.
pub const LINK_QUEUE: usize = 1024;
/// Most callers waiting for one destination's route.
pub const MAX_WAITERS_PER_DESTINATION: usize = 16;
/// Most sent messages waiting for their acknowledgement.
pub const MAX_PENDING_ACKS: usize = 1024;
/// Most acknowledgements waiting for a route back to their source.
pub const MAX_PENDING_ACK_PACKETS: usize = 256;
/// Received messages kept for [`Routing::received`] (the oldest is forgotten first).
pub const RECEIVED_KEPT: usize = 256;
/// A message not acknowledged within this is sent again (sealed afresh, same sequence, over
/// the route known then, or after a new discovery), until its caller's timeout.
pub const RETRANSMIT_AFTER: Duration = Duration::from_millis(1000);
/// A message still unacknowledged after this many retransmissions over the same next hop
/// makes the router set that next hop aside for its destination
/// ([`Router::delivery_failed`]) and costs the next hop reputation: a relay that drops
/// packets is routed around (design.md §3).
pub const AVOID_AFTER_RETRANSMISSIONS: u8 = 2;

/// (source, sequence) pairs of delivered messages remembered, so that a message sent again
/// is acknowledged again but delivered once.
pub const DELIVERED_KEPT: usize = 4096;

/// Least time between two writes of the route table to the store.
pub const PERSIST_INTERVAL: Duration = Duration::from_secs(5);

/// What the routing driver needs at start.
#[derive(Debug, Clone)]
pub struct RoutingOptions {
    /// Setting `max_hops`; values above the router's limit (32) are lowered to it.
    pub max_hops: u32,
    /// Setting `route_timeout`.
    pub route_timeout: Duration,
    /// Seed of the router's random choices.
    pub rng_seed: u64,
    /// Setting `relay_enabled`.
    pub relay_enabled: bool,
    /// Setting `relay_bandwidth`, bytes per second (0: relaying off).
    pub relay_bandwidth: u64,
    /// Settings `tokens_per_mb`, `payment_threshold`, `new_neighbour_threshold`.
    pub ledger: LedgerTerms,
    /// Setting `peer_bandwidth`: bytes per second of this node's own traffic to any one
    /// peer (0: no limit).
    pub peer_bandwidth: u64,
    /// Setting `app_bandwidth`: bytes per second of this node's own traffic from any one
    /// application (0: no limit).
    pub app_bandwidth: u64,
    /// Whether link tasks relay packets of admitted flows themselves ([`crate::forward`]);
    /// true unless a benchmark measures the driver-only path against it.
    pub fast_path: bool,
}

impl RoutingOptions {
    /// The given hop limit and route lifetime, relaying on with the default budget
    /// (5 MiB/s), and no limit on the node's own sends.
    pub fn new(max_hops: u32, route_timeout: Duration, rng_seed: u64) -> Self {
        Self {
            max_hops,
            route_timeout,
            rng_seed,
            relay_enabled: true,
            relay_bandwidth: RelayConfig::default().bandwidth,
            ledger: LedgerTerms::default(),
            peer_bandwidth: 0,
            app_bandwidth: 0,
            fast_path: true,
        }
    }
}

/// A selected route, as `POST route/find` and `GET routes` show it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RouteInfo {
    /// The destination's node id.
    pub destination: String,
    /// The neighbour packets for it go to.
    pub next_hop: String,
    /// Links to the destination.
    pub hop_count: u8,
    /// The nodes on the way, next hop first and destination last (this node not included).
    pub path: Vec<String>,
    /// 0.0 to 1.0, higher is better: `1 / (1 + path_cost / 1000)`, so a path costing
    /// 100 ms of round trip scores 0.5.
    pub path_quality: f64,
    /// The route's metric: summed link costs in units of 0.1 ms of round trip, each link
    /// also costing a fixed 10 ms hop cost.
    pub path_cost: u32,
    /// What this node owes per MB sent along the route, in milli-tokens: the price the next
    /// hop advertised (the relays' fees summed; 0 when the next hop is the destination).
    /// Informational: it plays no part in choosing the route.
    pub path_price: u64,
    /// Unix seconds when the route expires unless refreshed.
    pub expires_at: u64,
}

impl RouteInfo {
    fn of(route: &Route) -> Self {
        Self {
            destination: route.destination.to_hex(),
            next_hop: route.next_hop.to_hex(),
            hop_count: route.hop_count,
            path: route.path.iter().map(NodeId::to_hex).collect(),
            path_quality: path_quality(route.metric),
            path_cost: route.metric,
            path_price: route.price,
            expires_at: route.expires_at.as_millis() / 1000,
        }
    }

    fn row(&self) -> RouteRow {
        RouteRow {
            destination_id: self.destination.clone(),
            next_hop_id: self.next_hop.clone(),
            hop_count: i64::from(self.hop_count),
            path_quality: self.path_quality,
            path_cost: f64::from(self.path_cost),
            path_nodes: self.path.clone(),
            expires_at: i64::try_from(self.expires_at).unwrap_or(i64::MAX),
        }
    }
}

/// The destinations a routing message advertises a route (and a price) to, other than its
/// sender (whose price to itself is 0).
fn advertised_destinations(message: &route::RouteMessage) -> Vec<NodeId> {
    match message {
        route::RouteMessage::Hello(hello) => hello
            .links
            .iter()
            .filter_map(|link| link.route.as_ref().map(|route| route.advert.node))
            .collect(),
        route::RouteMessage::Rreq(rreq) => vec![rreq.originator.node],
        route::RouteMessage::Rrep(rrep) => vec![rrep.destination.node],
        route::RouteMessage::Rerr(_) => Vec::new(),
    }
}

/// The quality of a path of metric `cost`; see [`RouteInfo::path_quality`].
pub fn path_quality(cost: u32) -> f64 {
    1.0 / (1.0 + f64::from(cost) / 1000.0)
}

/// A message acknowledged by its destination.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Delivery {
    /// Always true: a message that is not acknowledged is an error.
    pub delivered: bool,
    /// Links the message crossed.
    pub hops: u8,
    /// Milliseconds from sending to the acknowledgement.
    pub rtt_ms: f64,
}

/// A message delivered to this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// The peer that sent it: a node, or a browser.
    pub source: NodeId,
    /// The node that carried it here for `source` when `source` is a browser on another
    /// node (its gateway, which `source` signed the message for).
    pub via: Option<NodeId>,
    /// Its bytes, as the source sealed them (opened and authenticated here).
    pub payload: Bytes,
    /// Links it crossed.
    pub hops: u8,
    /// Unix milliseconds when it arrived.
    pub received_at: u64,
}

/// Something that happened on the mesh, as streamed by `GET /v1/events`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum MeshEvent {
    /// A message for this node arrived (opened and authenticated).
    Message {
        /// The sender's id (a node or a browser).
        source: String,
        /// The node that carried it for a browser `source` on another node.
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<String>,
        /// The message as text (invalid UTF-8 replaced).
        payload: String,
        /// Links it crossed.
        hops: u8,
        /// Unix milliseconds when it arrived.
        received_at: u64,
    },
    /// A link to a neighbour came up and routing uses it.
    LinkUp {
        /// The neighbour.
        peer: String,
    },
    /// A link to a neighbour went down.
    LinkDown {
        /// The neighbour.
        peer: String,
    },
    /// A route was found by discovery.
    RouteFound {
        /// The route.
        route: RouteInfo,
    },
    /// A broken route was replaced by another path without a new discovery.
    RouteRepaired {
        /// The new route.
        route: RouteInfo,
    },
    /// A route was lost (and no other path is known).
    RouteLost {
        /// Its destination.
        destination: String,
    },
    /// A relay refused to carry this node's packets to a destination (its notice arrived).
    RelayRefused {
        /// The refusing relay.
        relay: String,
        /// The destination of the refused flow.
        destination: String,
        /// Why: `relaying_disabled`, `relay_saturated`, `too_many_flows` or `unpaid`.
        reason: String,
    },
    /// The subscriber fell behind and missed events.
    Lagged {
        /// How many.
        missed: u64,
    },
}

/// Why a routing call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// Discovery ran to `max_hops` and its retries without an answer.
    #[error("no route to the node within max_hops")]
    NoRouteWithinMaxHops,
    /// A route was known but the packet could not be sent on it (the route or the link
    /// went away).
    #[error("the node is unreachable: {0}")]
    Unreachable(String),
    /// The destination is this node.
    #[error("a node needs no route to itself")]
    ToSelf,
    /// No answer in time.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// The message is larger than a packet carries.
    #[error("a message of {len} bytes is larger than the limit of {max} bytes")]
    PayloadTooLarge {
        /// Its length.
        len: usize,
        /// The limit, [`MAX_PAYLOAD`].
        max: usize,
    },
    /// The message could not be sealed for its destination.
    #[error("end-to-end encryption failed: {0}")]
    Encryption(String),
    /// Too many discoveries or waiters right now.
    #[error("routing is busy: {0}; try again")]
    Busy(String),
    /// This node's own-send limits (`peer_bandwidth`, `app_bandwidth`) hold the message
    /// back longer than it may wait.
    #[error("this node's own traffic is throttled: {0}")]
    Throttled(Throttled),
    /// The node is stopping.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// This node's own-send limits and what they did, as `GET relay/stats` shows them under
/// `own_sends`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct SendLimitsInfo {
    /// Setting `peer_bandwidth`: bytes/s to any one peer (0: no limit).
    pub peer_bandwidth: u64,
    /// Setting `app_bandwidth`: bytes/s from any one application (0: no limit).
    pub app_bandwidth: u64,
    /// Sends that went at once.
    pub sent_at_once: u64,
    /// Sends that waited for their limit first.
    pub delayed: u64,
    /// Sends refused by `peer_bandwidth` (they would have waited too long).
    pub refused_peer: u64,
    /// Sends refused by `app_bandwidth`.
    pub refused_app: u64,
    /// Sends refused because too many peers or applications were being tracked.
    pub refused_busy: u64,
    /// Frame bytes let through.
    pub bytes: u64,
    /// Peers tracked now.
    pub peers_tracked: usize,
    /// Applications tracked now.
    pub apps_tracked: usize,
}

/// Running totals of the routing driver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RoutingStats {
    /// Packets passed on to a next hop.
    pub packets_forwarded: u64,
    /// Data packets delivered to this node.
    pub packets_delivered: u64,
    /// Acknowledgements received for this node's messages.
    pub acks_received: u64,
    /// Packets dropped: no route to their destination.
    pub dropped_no_route: u64,
    /// Packets dropped: hop limit used up.
    pub dropped_hop_limit: u64,
    /// Packets dropped: the next hop's link queue was full or closed.
    pub dropped_link: u64,
    /// Frames that did not decode (unknown tag, bad header, bad route message).
    pub frames_malformed: u64,
    /// Route control messages that could not be queued on their link.
    pub control_dropped: u64,
    /// Link changes lost because the driver's queue was full.
    pub link_changes_dropped: u64,
    /// Neighbours the router reported as misbehaving.
    pub peers_misbehaved: u64,
    /// Packets for this node that failed to open (forged, altered, replayed or expired).
    pub e2e_rejected: u64,
    /// Messages sent again because no acknowledgement came in time.
    pub retransmissions: u64,
    /// Messages received again (their acknowledgement was lost): acknowledged, not
    /// delivered twice.
    pub duplicates_suppressed: u64,
    /// Bytes (whole frames) passed on for other nodes, within `relay_bandwidth`.
    pub bytes_forwarded: u64,
    /// Packets for other nodes refused because this node does not relay.
    pub relay_refused_disabled: u64,
    /// Packets of new flows refused because the relay budget is saturated or its flow
    /// table is full.
    pub relay_refused_saturated: u64,
    /// Packets of admitted flows dropped for exceeding their fair share of the budget.
    pub relay_dropped_over_share: u64,
    /// Packets dropped because the relay budget (`relay_bandwidth`) was used up.
    pub relay_dropped_over_cap: u64,
    /// Packets refused because the neighbour they came from is cut off for debt.
    pub relay_refused_unpaid: u64,
    /// Refusal notices this node sent or passed on.
    pub relay_notices_sent: u64,
    /// Refusal notices about this node's own packets that reached it.
    pub relay_notices_received: u64,
}

/// The relay's state, as `GET relay/stats` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct RelayStats {
    /// Whether this node relays (`relay_enabled` and `relay_bandwidth` above 0).
    pub relaying: bool,
    /// The budget, bytes per second (`relay_bandwidth`).
    pub relay_bandwidth: u64,
    /// Whether a new flow would be admitted now.
    pub accepting_new_flows: bool,
    /// Whether the flows' estimated demand reached the budget.
    pub saturated: bool,
    /// The fair share of each previous hop now, bytes per second (the whole budget when
    /// nobody is limited).
    pub fair_share: u64,
    /// Packets passed on for other nodes.
    pub packets_forwarded: u64,
    /// Bytes (whole frames) passed on for other nodes.
    pub bytes_forwarded: u64,
    /// Bytes of packets refused or dropped.
    pub bytes_refused: u64,
    /// Packets refused: relaying off.
    pub refused_disabled: u64,
    /// Packets of new flows refused: saturated.
    pub refused_saturated: u64,
    /// Packets of new flows refused: flow table full.
    pub refused_too_many_flows: u64,
    /// Packets refused: the previous hop owes too much.
    pub refused_unpaid: u64,
    /// Packets dropped: over their flow's fair share.
    pub dropped_over_share: u64,
    /// Packets dropped: over the budget.
    pub dropped_over_cap: u64,
    /// Packets dropped: their previous hop owes past the throttle line (1.25 × its payment
    /// threshold) and is held to 32 KiB/s until it pays.
    pub dropped_throttled: u64,
    /// Flows admitted since start.
    pub flows_started: u64,
    /// The flows now, by previous hop and source.
    pub flows: Vec<RelayFlowInfo>,
    /// This node's own-send limits (`peer_bandwidth`, `app_bandwidth`) and what they did.
    pub own_sends: SendLimitsInfo,
}

/// One flow through this relay.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct RelayFlowInfo {
    /// The neighbour its packets come from.
    pub previous_hop: String,
    /// The source its packets name (hex; not validated by a relay).
    pub source: String,
    /// Its estimated offered rate, bytes per second.
    pub demand: u64,
    /// Its fair share now, bytes per second.
    pub share: u64,
    /// Bytes forwarded.
    pub bytes_forwarded: u64,
    /// Bytes dropped.
    pub bytes_dropped: u64,
}

enum Command {
    FindRoute(NodeId, oneshot::Sender<Result<RouteInfo, RouteError>>),
    Routes(oneshot::Sender<Vec<RouteInfo>>),
    Send {
        destination: NodeId,
        payload: Bytes,
        flow: u32,
        reply: oneshot::Sender<Result<Delivery, RouteError>>,
    },
    Datagram {
        destination: NodeId,
        payload: Bytes,
        reply: oneshot::Sender<Result<(), RouteError>>,
    },
    Received(oneshot::Sender<Vec<ReceivedMessage>>),
    Local(ReceivedMessage),
    Stats(oneshot::Sender<RoutingStats>),
    SetRelay {
        enabled: bool,
        bandwidth: u64,
    },
    RelayStats(oneshot::Sender<RelayStats>),
    Tokens(oneshot::Sender<TokensInfo>),
    SetLedgerTerms(LedgerTerms),
    Shutdown(oneshot::Sender<()>),
}

enum LinkChange {
    Up(LinkHandle),
    Down(NodeId, meshcore_proto::peers::LinkId),
}

/// A handle to the routing driver. Clones share it.
#[derive(Debug, Clone)]
pub struct Routing {
    local: NodeId,
    commands: mpsc::Sender<Command>,
    links: mpsc::Sender<LinkChange>,
    received: broadcast::Sender<ReceivedMessage>,
    events: broadcast::Sender<MeshEvent>,
    link_changes_dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    bandwidth: std::sync::Arc<std::sync::Mutex<BandwidthManager>>,
    forwarder: Arc<Forwarder>,
    signals: broadcast::Sender<ReceivedMessage>,
    browser_envelopes: broadcast::Sender<ReceivedMessage>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

impl Routing {
    /// Starts the driver on the data frames of `frames`, persisting routes to `store`.
    pub fn start(
        keys: &NodeKeypair,
        frames: mpsc::Receiver<ReceivedFrame>,
        store: Store,
        options: RoutingOptions,
    ) -> Result<Self, RouteConfigError> {
        let local = keys.node_id();
        let mut config = RouterConfig::new(options.rng_seed);
        let limit = u32::try_from(MAX_PATH_LEN).unwrap_or(32);
        let max_hops = u8::try_from(options.max_hops.min(limit)).unwrap_or(32);
        if u32::from(max_hops) < options.max_hops {
            tracing::warn!(
                max_hops = options.max_hops,
                used = max_hops,
                "max_hops is above what the router supports; using its limit"
            );
        }
        config.max_hops = max_hops;
        config.route_timeout = options.route_timeout;
        if config.hello_interval >= config.route_timeout {
            config.hello_interval = config.route_timeout / 2;
            config.neighbour_report_timeout = config.hello_interval * 3;
        }
        if config.advert_refresh >= config.route_timeout {
            config.advert_refresh = config.route_timeout / 2;
        }
        let mut relay_config = RelayConfig::new(options.relay_bandwidth);
        relay_config.enabled = options.relay_enabled;
        let relay = RelayLimiter::new(relay_config, now()).map_err(|error| RouteConfigError {
            field: error.field,
            reason: error.reason,
        })?;
        config.relay = relay.accepts_new_flows();
        let forwarder = Arc::new(Forwarder::new(local, relay));
        let router = Router::new(
            config,
            NodeKeypair::from_signing_key(keys.signing_key().clone()),
            now(),
        )?;
        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (links_tx, links_rx) = mpsc::channel(LINK_QUEUE);
        let (received, _) = broadcast::channel(RECEIVED_KEPT);
        let (events, _) = broadcast::channel(RECEIVED_KEPT);
        let (signals, _) = broadcast::channel(RECEIVED_KEPT);
        let (browser_envelopes, _) = broadcast::channel(RECEIVED_KEPT);
        let mut ledger_config = LedgerConfig::new();
        ledger_config.epoch = now().as_millis();
        let (payment_threshold, new_neighbour_threshold) = options.ledger.thresholds_milli();
        ledger_config.tokens_per_mb = options.ledger.tokens_per_mb;
        ledger_config.payment_threshold = payment_threshold;
        ledger_config.new_neighbour_threshold = new_neighbour_threshold.min(payment_threshold);
        let book = Bookkeeper::new(Ledger::new(
            NodeKeypair::from_signing_key(keys.signing_key().clone()),
            ledger_config,
            now(),
        ));
        let mut router = router;
        router.set_fee(book.ledger().own_fee(now()));
        let (ledger_tx, ledger_rx) = mpsc::channel(1);
        let ledger_task = tokio::spawn(crate::ledger::writer(store.clone(), ledger_rx));
        let ledger_store = store.clone();
        let (persist_tx, persist_rx) = mpsc::channel(1);
        let persist_task = tokio::spawn(persist(store, persist_rx));
        let driver = Driver {
            local,
            keys: NodeKeypair::from_signing_key(keys.signing_key().clone()),
            sessions: HashMap::new(),
            opener: Receiver::new(keys, ReceiverConfig::new()),
            router,
            forwarder: forwarder.clone(),
            routes_dirty: true,
            book,
            ledger_dirty: false,
            token_rate: options.ledger.token_rate,
            signals: signals.clone(),
            browser_envelopes: browser_envelopes.clone(),
            ledger_persist: ledger_tx,
            ledger_task,
            hop_limit: max_hops.saturating_sub(1),
            links: BTreeMap::new(),
            find_waiters: HashMap::new(),
            pending_acks: HashMap::new(),
            delivered: std::collections::HashSet::new(),
            delivered_order: VecDeque::new(),
            ack_packets: VecDeque::new(),
            next_sequence: rand::random::<u32>().into(),
            received: VecDeque::new(),
            subscribers: received.clone(),
            events: events.clone(),
            stats: RoutingStats::default(),
            persisted: None,
            persist: persist_tx,
            persist_task,
        };
        tokio::spawn(driver.run(ledger_store, commands_rx, links_rx, frames));
        Ok(Self {
            local,
            commands: commands_tx,
            links: links_tx,
            received,
            events,
            link_changes_dropped: Default::default(),
            bandwidth: std::sync::Arc::new(std::sync::Mutex::new(BandwidthManager::new(
                BandwidthConfig::new(options.peer_bandwidth, options.app_bandwidth),
            ))),
            forwarder,
            signals,
            browser_envelopes,
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.local
    }

    /// Browser signaling other nodes relay to this one ([`Routing::send_signal`]), as it
    /// arrives; a subscriber that falls behind misses the oldest.
    pub fn signals(&self) -> broadcast::Receiver<ReceivedMessage> {
        self.signals.subscribe()
    }

    /// Envelopes about browsers' messages other nodes send this one
    /// ([`Routing::send_browser_envelope`]), as they arrive; a subscriber that falls behind
    /// misses the oldest.
    pub fn browser_envelopes(&self) -> broadcast::Receiver<ReceivedMessage> {
        self.browser_envelopes.subscribe()
    }

    /// Whether a route to `destination` (or a link to it) is known now, without discovery.
    pub fn knows_route(&self, destination: &NodeId) -> bool {
        self.forwarder.knows(destination)
    }

    /// The forwarding plane, for the link tasks ([`crate::link::FrameSink::set_forwarder`]).
    pub fn forwarder(&self) -> Arc<Forwarder> {
        Arc::clone(&self.forwarder)
    }

    /// A link came up (the network actor calls this). Never waits; a full queue drops the
    /// change with a warning.
    pub fn link_up(&self, link: LinkHandle) {
        self.notify(LinkChange::Up(link));
    }

    /// The link `link` to `peer` is gone (the network actor calls this).
    pub fn link_down(&self, peer: NodeId, link: meshcore_proto::peers::LinkId) {
        self.notify(LinkChange::Down(peer, link));
    }

    fn notify(&self, change: LinkChange) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.links.try_send(change) {
            self.link_changes_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!("the routing driver is behind; a link change was dropped");
        }
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<oneshot::Receiver<T>, RouteError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send(command(reply))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => {
                    RouteError::Busy("too many requests queued".to_owned())
                }
                mpsc::error::TrySendError::Closed(_) => RouteError::ShuttingDown,
            })?;
        Ok(answer)
    }

    /// Sends a command and waits for its answer.
    async fn query<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, RouteError> {
        self.ask(command)
            .await?
            .await
            .map_err(|_| RouteError::ShuttingDown)
    }

    /// The route to `destination`: the known one, or the result of a discovery started now
    /// (or already running), waiting up to `timeout`.
    pub async fn find_route(
        &self,
        destination: NodeId,
        timeout: Duration,
    ) -> Result<RouteInfo, RouteError> {
        if destination == self.local {
            return Err(RouteError::ToSelf);
        }
        let answer = self
            .ask(|reply| Command::FindRoute(destination, reply))
            .await?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RouteError::ShuttingDown),
            Err(_) => Err(RouteError::Timeout(timeout)),
        }
    }

    /// Every selected route.
    pub async fn routes(&self) -> Result<Vec<RouteInfo>, RouteError> {
        self.query(Command::Routes).await
    }

    /// Sends `payload` to `destination` for the application [`AppId::DEFAULT`]; see
    /// [`Routing::send_as`].
    pub async fn send(
        &self,
        destination: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Delivery, RouteError> {
        self.send_as(&AppId::default_app(), destination, payload, timeout)
            .await
    }

    /// Sends `payload` from application `app` to `destination` (finding a route first if
    /// needed) and waits for its acknowledgement; the whole call takes at most `timeout`.
    /// The payload travels sealed end to end for `destination` (see the module docs). The
    /// message first waits out the node's own-send limits ([`Routing::pace`]).
    pub async fn send_as(
        &self,
        app: &AppId,
        destination: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Delivery, RouteError> {
        self.send_on_flow(app, MESSAGE_FLOW, destination, payload, timeout)
            .await
    }

    /// Sends a browser signaling message (`payload`, JSON text) to the node `destination`
    /// like [`Routing::send`], on [`SIGNAL_FLOW`], so that it reaches that node's
    /// [`Routing::signals`] subscribers rather than its received messages. Charged to the
    /// application `signal`.
    pub async fn send_signal(
        &self,
        destination: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Delivery, RouteError> {
        let app = AppId::new("signal").map_err(|error| RouteError::Busy(error.to_string()))?;
        self.send_on_flow(&app, SIGNAL_FLOW, destination, payload, timeout)
            .await
    }

    /// Sends an envelope about a browser's message ([`meshcore_proto::browser_mesh`]) to the
    /// node `destination` like [`Routing::send_as`], on [`BROWSER_FLOW`], so that it reaches
    /// that node's [`Routing::browser_envelopes`] subscribers.
    pub async fn send_browser_envelope(
        &self,
        app: &AppId,
        destination: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Delivery, RouteError> {
        self.send_on_flow(app, BROWSER_FLOW, destination, payload, timeout)
            .await
    }

    async fn send_on_flow(
        &self,
        app: &AppId,
        flow: u32,
        destination: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Delivery, RouteError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(RouteError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        let deadline = tokio::time::Instant::now() + timeout;
        if destination == self.local {
            return Err(RouteError::ToSelf);
        }
        self.pace(app, destination, payload.len(), timeout).await?;
        let timeout = deadline.saturating_duration_since(tokio::time::Instant::now());
        self.find_route(destination, timeout).await?;
        let answer = self
            .ask(|reply| Command::Send {
                destination,
                payload,
                flow,
                reply,
            })
            .await?;
        match tokio::time::timeout_at(deadline, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(RouteError::ShuttingDown),
            Err(_) => Err(RouteError::Timeout(timeout)),
        }
    }

    /// Sends `payload` to `destination` once, sealed end to end like a message, without
    /// waiting for (or asking for) an acknowledgement. Needs a known route: without one it
    /// starts a discovery and fails with [`RouteError::Unreachable`]; a full link queue is
    /// [`RouteError::Busy`]. `Ok` means the packet was queued on the link to the next hop.
    pub async fn send_datagram(
        &self,
        destination: NodeId,
        payload: Bytes,
    ) -> Result<(), RouteError> {
        self.send_datagram_as(&AppId::default_app(), destination, payload)
            .await
    }

    /// [`Routing::send_datagram`] for application `app`: it first waits out the node's
    /// own-send limits ([`Routing::pace`]).
    pub async fn send_datagram_as(
        &self,
        app: &AppId,
        destination: NodeId,
        payload: Bytes,
    ) -> Result<(), RouteError> {
        if destination == self.local {
            return Err(RouteError::ToSelf);
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(RouteError::PayloadTooLarge {
                len: payload.len(),
                max: MAX_PAYLOAD,
            });
        }
        self.pace(app, destination, payload.len(), Duration::MAX)
            .await?;
        self.query(|reply| Command::Datagram {
            destination,
            payload,
            reply,
        })
        .await?
    }

    /// Waits until this node's own-send limits (the [`BandwidthManager`]: `peer_bandwidth`
    /// per destination, `app_bandwidth` per application) let a packet carrying `payload_len`
    /// bytes go, charged as its whole frame. A send that would wait longer than the
    /// manager's `max_delay` (2 s) or than `patience` fails at once with
    /// [`RouteError::Throttled`] and is not charged. Only the calling task waits: other
    /// applications and destinations are not held up.
    pub async fn pace(
        &self,
        app: &AppId,
        destination: NodeId,
        payload_len: usize,
        patience: Duration,
    ) -> Result<(), RouteError> {
        let bytes = frame_len(payload_len);
        let verdict = self
            .bandwidth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reserve_within(now(), app, destination, bytes, patience);
        match verdict {
            Ok(delay) if delay.is_zero() => Ok(()),
            Ok(delay) => {
                tracing::trace!(%app, %destination, ?delay, "own send paced");
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Err(throttled) => {
                tracing::debug!(%app, %destination, %throttled, "own send refused");
                Err(RouteError::Throttled(throttled))
            }
        }
    }

    /// Changes this node's own-send limits (settings `peer_bandwidth`, `app_bandwidth`), at
    /// once.
    pub fn set_send_limits(&self, peer_bandwidth: u64, app_bandwidth: u64) {
        self.bandwidth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .set_rates(peer_bandwidth, app_bandwidth);
    }

    /// The own-send limits in force and their running totals.
    pub fn send_limits(&self) -> SendLimitsInfo {
        let manager = self
            .bandwidth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let counters = manager.counters();
        let (peers, apps) = manager.tracked();
        SendLimitsInfo {
            peer_bandwidth: manager.config().peer_rate,
            app_bandwidth: manager.config().app_rate,
            sent_at_once: counters.sent_at_once,
            delayed: counters.delayed,
            refused_peer: counters.refused_peer,
            refused_app: counters.refused_app,
            refused_busy: counters.refused_keys,
            bytes: counters.bytes,
            peers_tracked: peers,
            apps_tracked: apps,
        }
    }

    /// Changes whether this node relays and its relay budget (settings `relay_enabled`,
    /// `relay_bandwidth`), at once. Never waits; a full command queue drops the change with
    /// a warning.
    pub fn set_relay(&self, enabled: bool, bandwidth: u64) {
        if let Err(error) = self
            .commands
            .try_send(Command::SetRelay { enabled, bandwidth })
        {
            tracing::warn!(%error, "the routing driver is behind; a relay setting change was dropped");
        }
    }

    /// The node's tokens: balance, what each neighbour paid and was paid, credit and debt,
    /// the latest IOUs.
    pub async fn tokens(&self) -> Result<TokensInfo, RouteError> {
        self.query(Command::Tokens).await
    }

    /// Changes the ledger's terms (settings `tokens_per_mb`, `payment_threshold`,
    /// `new_neighbour_threshold`), at once. Never waits; a full command queue drops the
    /// change with a warning.
    pub fn set_ledger_terms(&self, terms: LedgerTerms) {
        if let Err(error) = self.commands.try_send(Command::SetLedgerTerms(terms)) {
            tracing::warn!(%error, "the routing driver is behind; a ledger setting change was dropped");
        }
    }

    /// The relay's budget, shares and flows.
    pub async fn relay_stats(&self) -> Result<RelayStats, RouteError> {
        let mut stats: RelayStats = self.query(Command::RelayStats).await?;
        stats.own_sends = self.send_limits();
        Ok(stats)
    }

    /// The last [`RECEIVED_KEPT`] messages delivered to this node, oldest first.
    pub async fn received(&self) -> Result<Vec<ReceivedMessage>, RouteError> {
        self.query(Command::Received).await
    }

    /// Records a message that reached this node without crossing the mesh (from a browser
    /// on one of its WebRTC sessions): it appears in [`Routing::received`], on
    /// [`Routing::subscribe`] and as a [`MeshEvent::Message`]. Never waits; when the
    /// driver's queue is full the message is dropped and logged.
    pub fn deliver_local(&self, message: ReceivedMessage) {
        if let Err(error) = self.commands.try_send(Command::Local(message)) {
            tracing::warn!(%error, "the routing driver is behind; a browser message was dropped");
        }
    }

    /// Messages delivered to this node from now on. A subscriber more than
    /// [`RECEIVED_KEPT`] messages behind loses the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<ReceivedMessage> {
        self.received.subscribe()
    }

    /// A stream of [`MeshEvent`]s (messages, link and route changes) from now on. A
    /// subscriber that falls more than [`RECEIVED_KEPT`] events behind misses the oldest.
    pub fn events(&self) -> broadcast::Receiver<MeshEvent> {
        self.events.subscribe()
    }

    /// The driver's counters.
    pub async fn stats(&self) -> Result<RoutingStats, RouteError> {
        let mut stats = self.query(Command::Stats).await?;
        stats.link_changes_dropped = self
            .link_changes_dropped
            .load(std::sync::atomic::Ordering::Relaxed);
        Ok(stats)
    }

    /// Stops the driver after writing the route table one last time.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// What a node does with a data or acknowledgement frame it received.
#[derive(Debug, PartialEq, Eq)]
pub enum PacketAction {
    /// The packet is for this node.
    Deliver {
        /// Its header.
        header: PacketHeader,
        /// [`TAG_DATA`] or [`TAG_ACK`].
        tag: u8,
        /// The end-to-end payload.
        payload: Bytes,
    },
    /// Pass `frame` (the same bytes, hop limit decremented) to `to`.
    Forward {
        /// The next hop.
        to: NodeId,
        /// The frame to send.
        frame: Bytes,
    },
    /// Drop it.
    Drop(DropReason),
}

/// Why a packet was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The header did not decode.
    Malformed,
    /// No route to the destination.
    NoRoute,
    /// Its hop limit is used up.
    HopLimit,
}

/// Decides what to do with a data or acknowledgement `frame` (tag included) at the node
/// `local`, whose next hops `next_hop` gives. Only the header is read; a forwarded frame
/// differs from the received one in its hop-limit byte alone.
pub fn route_packet(
    local: &NodeId,
    frame: &Bytes,
    next_hop: impl FnOnce(&[u8; NODE_ID_LEN]) -> Option<NodeId>,
) -> PacketAction {
    let Some((&tag, packet)) = frame.split_first() else {
        return PacketAction::Drop(DropReason::Malformed);
    };
    // A relay reads only the destination's bytes: validating keys as curve points costs
    // microseconds per packet, and an id that is not a known destination has no next hop.
    let Ok(destination) = PacketHeader::peek_destination(packet) else {
        return PacketAction::Drop(DropReason::Malformed);
    };
    if destination == local.as_bytes() {
        let Ok((header, _)) = PacketHeader::decode(packet) else {
            return PacketAction::Drop(DropReason::Malformed);
        };
        return PacketAction::Deliver {
            header,
            tag,
            payload: frame.slice(1 + HEADER_LEN..),
        };
    }
    let Some(to) = next_hop(destination) else {
        return PacketAction::Drop(DropReason::NoRoute);
    };
    let mut forwarded = BytesMut::from(&frame[..]);
    match PacketHeader::forward_in_place(&mut forwarded[1..]) {
        Ok(_) => PacketAction::Forward {
            to,
            frame: forwarded.freeze(),
        },
        Err(route::HeaderError::HopLimitReached) => PacketAction::Drop(DropReason::HopLimit),
        Err(_) => PacketAction::Drop(DropReason::Malformed),
    }
}

/// What a sealed payload is bound to: every header field but the hop limit, and the
/// source's initial hop limit.
fn associated_data(header: &PacketHeader, initial_hop_limit: u8) -> Vec<u8> {
    let mut data = e2e::header_associated_data(header).to_vec();
    data.push(initial_hop_limit);
    data
}

fn frame_of(tag: u8, header: &PacketHeader, payload: &[u8]) -> Bytes {
    let mut frame = Vec::with_capacity(1 + HEADER_LEN + payload.len());
    frame.push(tag);
    frame.extend_from_slice(&header.encode(payload));
    Bytes::from(frame)
}

type FindWaiter = oneshot::Sender<Result<RouteInfo, RouteError>>;

struct PendingAck {
    destination: NodeId,
    sent: tokio::time::Instant,
    reply: oneshot::Sender<Result<Delivery, RouteError>>,
    /// The message, kept to send it again (sealed afresh, same sequence) until it is
    /// acknowledged or its caller gives up.
    payload: Bytes,
    /// Its flow id ([`MESSAGE_FLOW`], [`SIGNAL_FLOW`] or [`BROWSER_FLOW`]).
    flow: u32,
    last_sent: tokio::time::Instant,
    /// The next hop of its latest sending, and how many times in a row it went there
    /// unacknowledged.
    via: Option<(NodeId, u8)>,
}

struct Driver {
    local: NodeId,
    keys: NodeKeypair,
    /// Sending sessions by destination, with their last use.
    sessions: HashMap<NodeId, (Session, tokio::time::Instant)>,
    /// Opens what others sealed for this node (and keeps their replay windows).
    opener: Receiver,
    router: Router,
    /// The relay budget and its flows.
    /// The forwarding plane: the relay budget it shares with the link tasks, and the
    /// table this driver publishes to it.
    forwarder: Arc<Forwarder>,
    /// Routes or links may have changed since the forwarding table was published.
    routes_dirty: bool,
    /// The relay ledger and its neighbour conversation.
    book: Bookkeeper,
    /// The ledger changed since it was last handed to its writer.
    ledger_dirty: bool,
    /// Setting `token_rate`, for `GET tokens`.
    token_rate: f64,
    /// Browser signaling relayed to this node by others ([`SIGNAL_FLOW`]).
    signals: broadcast::Sender<ReceivedMessage>,
    /// Envelopes about browsers' messages ([`BROWSER_FLOW`]).
    browser_envelopes: broadcast::Sender<ReceivedMessage>,
    ledger_persist: mpsc::Sender<meshcore_store::LedgerRows>,
    ledger_task: tokio::task::JoinHandle<()>,
    /// The hop limit packets from this node start with.
    hop_limit: u8,
    links: BTreeMap<NodeId, LinkHandle>,
    find_waiters: HashMap<NodeId, Vec<FindWaiter>>,
    pending_acks: HashMap<u64, PendingAck>,
    /// Delivered `(source, sequence)` pairs, newest last, at most [`DELIVERED_KEPT`].
    delivered: std::collections::HashSet<(NodeId, u64)>,
    delivered_order: VecDeque<(NodeId, u64)>,
    /// Acknowledgements waiting for a route back: (destination, frame).
    ack_packets: VecDeque<(NodeId, Bytes)>,
    next_sequence: u64,
    received: VecDeque<ReceivedMessage>,
    subscribers: broadcast::Sender<ReceivedMessage>,
    events: broadcast::Sender<MeshEvent>,
    stats: RoutingStats,
    persisted: Option<Vec<RouteInfo>>,
    persist: mpsc::Sender<Vec<RouteRow>>,
    persist_task: tokio::task::JoinHandle<()>,
}

impl Driver {
    async fn run(
        mut self,
        ledger_store: Store,
        mut commands: mpsc::Receiver<Command>,
        mut links: mpsc::Receiver<LinkChange>,
        mut frames: mpsc::Receiver<ReceivedFrame>,
    ) {
        let mut metrics_tick = tokio::time::interval(self.router.config().hello_interval);
        metrics_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut retransmit_tick = tokio::time::interval(RETRANSMIT_AFTER / 4);
        retransmit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut persist_tick = tokio::time::interval(PERSIST_INTERVAL);
        persist_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ledger_tick = tokio::time::interval(LEDGER_PERSIST_INTERVAL);
        ledger_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        self.restore_ledger(&ledger_store).await;
        drop(ledger_store);
        self.sync_fee();
        let done = loop {
            let wake = self
                .router
                .poll_timeout()
                .map(|at| tokio::time::Instant::now() + at.saturating_duration_since(now()));
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(done)) => break Some(done),
                    None => break None,
                    Some(command) => self.on_command(command),
                },
                Some(change) = links.recv() => {
                    self.routes_dirty = true;
                    self.on_link_change(change);
                }
                Some(frame) = frames.recv() => self.on_frame(frame),
                _ = sleep_until(wake) => {
                    self.routes_dirty = true;
                    self.router.handle_timeout(now());
                }
                _ = metrics_tick.tick() => {
                    self.routes_dirty = true;
                    let at = now();
                    let measured: Vec<(NodeId, LinkQuality)> = self
                        .links
                        .iter()
                        .map(|(peer, link)| {
                            let metrics = link.metrics();
                            (*peer, LinkQuality::new(metrics.rtt, metrics.loss))
                        })
                        .collect();
                    for (peer, quality) in measured {
                        self.router.link_metric(at, peer, quality.rtt, quality.loss);
                    }
                    self.sync_fee();
                }
                _ = persist_tick.tick() => self.persist_routes(),
                _ = ledger_tick.tick() => self.persist_ledger(false).await,
                _ = retransmit_tick.tick() => {
                    self.retransmit();
                    self.relay().handle_timeout(now());
                    self.sync_relaying();
                    self.take_fast_bookings();
                    self.book.handle_timeout(now());
                }
            }
            self.take_fast_bookings();
            self.flush();
            self.publish_forwarding();
            self.flush_ledger();
        };
        self.persisted = None;
        self.persist_routes();
        self.persist_ledger(true).await;
        let Self {
            persist,
            persist_task,
            ledger_persist,
            ledger_task,
            ..
        } = self;
        drop(persist);
        drop(ledger_persist);
        let _ = persist_task.await;
        let _ = ledger_task.await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn on_command(&mut self, command: Command) {
        self.take_fast_bookings();
        let at = now();
        match command {
            Command::FindRoute(destination, reply) => {
                match self.router.find_route(at, destination) {
                    Ok(RouteLookup::Known(route)) => {
                        let _ = reply.send(Ok(RouteInfo::of(&route)));
                    }
                    Ok(RouteLookup::Discovering) => {
                        let waiters = self.find_waiters.entry(destination).or_default();
                        waiters.retain(|waiter| !waiter.is_closed());
                        if waiters.len() < MAX_WAITERS_PER_DESTINATION {
                            waiters.push(reply);
                        } else {
                            let _ = reply.send(Err(RouteError::Busy(
                                "too many requests for this destination".to_owned(),
                            )));
                        }
                    }
                    Err(FindRouteError::ToSelf) => {
                        let _ = reply.send(Err(RouteError::ToSelf));
                    }
                    Err(error) => {
                        let _ = reply.send(Err(RouteError::Busy(error.to_string())));
                    }
                }
            }
            Command::Routes(reply) => {
                let _ = reply.send(self.router.routes().map(|r| RouteInfo::of(&r)).collect());
            }
            Command::Send {
                destination,
                payload,
                flow,
                reply,
            } => self.send_message(destination, payload, flow, reply),
            Command::Datagram {
                destination,
                payload,
                reply,
            } => {
                let _ = reply.send(self.send_datagram(destination, &payload));
            }
            Command::Received(reply) => {
                let _ = reply.send(self.received.iter().cloned().collect());
            }
            Command::Local(message) => self.record(message),
            Command::Stats(reply) => {
                let relay = *self.relay().counters();
                let fast = self.forwarder.counters();
                let _ = reply.send(RoutingStats {
                    dropped_link: self.stats.dropped_link + fast.dropped_link,
                    relay_refused_disabled: relay.refused_disabled,
                    relay_refused_saturated: relay.refused_saturated + relay.refused_too_many_flows,
                    relay_dropped_over_share: relay.dropped_over_share,
                    relay_dropped_over_cap: relay.dropped_over_cap,
                    relay_refused_unpaid: relay.refused_unpaid,
                    ..self.stats
                });
            }
            Command::SetRelay { enabled, bandwidth } => {
                self.relay().set_limits(at, enabled, bandwidth);
                self.sync_relaying();
                tracing::info!(
                    relay_enabled = enabled,
                    relay_bandwidth = bandwidth,
                    relaying = self.relay().is_relaying(),
                    "relay settings applied"
                );
            }
            Command::RelayStats(reply) => {
                let _ = reply.send(self.relay_stats());
            }
            Command::Tokens(reply) => {
                let info = crate::ledger::tokens_info(&self.book, at, self.token_rate);
                let _ = reply.send(info);
            }
            Command::SetLedgerTerms(terms) => {
                self.token_rate = terms.token_rate;
                let (payment_threshold, new_neighbour_threshold) = terms.thresholds_milli();
                self.book.ledger_mut().set_terms(
                    terms.tokens_per_mb,
                    payment_threshold,
                    new_neighbour_threshold,
                );
                self.sync_fee();
                tracing::info!(
                    tokens_per_mb = terms.tokens_per_mb,
                    payment_threshold = terms.payment_threshold,
                    new_neighbour_threshold = terms.new_neighbour_threshold,
                    "ledger terms applied"
                );
            }
            Command::Shutdown(_) => {}
        }
    }

    fn send_message(
        &mut self,
        destination: NodeId,
        payload: Bytes,
        flow: u32,
        reply: oneshot::Sender<Result<Delivery, RouteError>>,
    ) {
        self.forget_abandoned();
        if self.pending_acks.len() >= MAX_PENDING_ACKS {
            let _ = reply.send(Err(RouteError::Busy(
                "too many messages waiting for acknowledgement".to_owned(),
            )));
            return;
        }
        let Some(next_hop) = self.router.next_hop(&destination) else {
            let _ = reply.send(Err(RouteError::Unreachable(
                "the route was lost before the message was sent".to_owned(),
            )));
            return;
        };
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        let header = PacketHeader {
            hop_limit: self.hop_limit,
            flow_id: flow,
            sequence,
            source: self.local,
            destination,
        };
        let body = match self.seal(&header, self.hop_limit, &payload) {
            Ok(body) => body,
            Err(error) => {
                let _ = reply.send(Err(error));
                return;
            }
        };
        let frame = frame_of(TAG_DATA, &header, &body);
        match self.send_own(next_hop, destination, frame) {
            Ok(()) => {
                let now = tokio::time::Instant::now();
                self.pending_acks.insert(
                    sequence,
                    PendingAck {
                        destination,
                        sent: now,
                        reply,
                        payload,
                        flow,
                        last_sent: now,
                        via: Some((next_hop, 1)),
                    },
                );
            }
            Err(error) => {
                let _ = reply.send(Err(RouteError::Unreachable(format!(
                    "the link to the next hop refused the packet: {error}"
                ))));
            }
        }
    }

    /// Seals and sends one datagram on the known route to `destination`.
    fn send_datagram(&mut self, destination: NodeId, payload: &[u8]) -> Result<(), RouteError> {
        let Some(next_hop) = self.router.next_hop(&destination) else {
            return match self.router.find_route(now(), destination) {
                Err(FindRouteError::ToSelf) => Err(RouteError::ToSelf),
                _ => Err(RouteError::Unreachable(
                    "no route yet (a discovery started); datagrams need a known route".to_owned(),
                )),
            };
        };
        let sequence = self.next_sequence;
        self.next_sequence = self.next_sequence.wrapping_add(1);
        let header = PacketHeader {
            hop_limit: self.hop_limit,
            flow_id: DATAGRAM_FLOW,
            sequence,
            source: self.local,
            destination,
        };
        let body = self.seal(&header, self.hop_limit, payload)?;
        match self.send_own(next_hop, destination, frame_of(TAG_DATA, &header, &body)) {
            Ok(()) => Ok(()),
            Err(SendError::Full) => Err(RouteError::Busy(
                "the link to the next hop is full".to_owned(),
            )),
            Err(error) => Err(RouteError::Unreachable(format!(
                "the link to the next hop refused the packet: {error}"
            ))),
        }
    }

    /// The relay budget, shared with the link tasks' fast path (held briefly).
    fn relay(&self) -> std::sync::MutexGuard<'_, RelayLimiter> {
        self.forwarder.relay()
    }

    /// Books what the link tasks forwarded since the last call: counters and the ledger.
    fn take_fast_bookings(&mut self) {
        let bookings = self.forwarder.take_bookings();
        if bookings.is_empty() {
            return;
        }
        let at = now();
        for forwarding in bookings {
            self.stats.packets_forwarded += 1;
            self.stats.bytes_forwarded += forwarding.bytes;
            self.book.forwarded(
                at,
                Some(forwarding.previous_hop),
                forwarding.next_hop,
                forwarding.destination,
                forwarding.bytes,
            );
        }
    }

    /// Publishes to the forwarding plane the selected routes and links (when they may have
    /// changed) and the neighbours it must leave to this driver: those the ledger throttles
    /// or cuts off.
    fn publish_forwarding(&mut self) {
        if self.routes_dirty {
            self.routes_dirty = false;
            let routes = self
                .router
                .routes()
                .map(|route| {
                    (
                        *route.destination.as_bytes(),
                        (route.destination, route.next_hop),
                    )
                })
                .collect();
            self.forwarder.publish_routes(ForwardingTable {
                routes,
                links: self
                    .links
                    .iter()
                    .map(|(peer, link)| (*peer, link.clone()))
                    .collect(),
            });
        }
        let at = now();
        let slow = self
            .links
            .keys()
            .filter(|peer| {
                matches!(
                    self.book.standing(at, peer),
                    Standing::Throttle | Standing::CutOff
                )
            })
            .copied()
            .collect();
        self.forwarder.publish_slow(slow);
    }

    /// Tells the router whether to offer this node for new routes: only while the relay
    /// budget takes new flows.
    /// Keeps the fee the router adds to every price it advertises at the ledger's own fee
    /// (`tokens_per_mb` × this node's reputation multiplier).
    fn sync_fee(&mut self) {
        let fee = self.book.ledger().own_fee(now());
        if self.router.set_fee(fee) {
            tracing::debug!(fee, "relay fee to advertise changed");
        }
    }

    /// Hands the ledger the prices `from` advertised for `destinations`, as the router
    /// accepted them (an advertisement it refused leaves the price it had, if any).
    fn learn_prices(&mut self, at: route::Timestamp, from: NodeId, destinations: &[NodeId]) {
        for destination in destinations {
            if let Some(price) = self.router.advertised_price(&from, destination) {
                self.book.price_advertised(at, from, *destination, price);
            }
        }
    }

    fn sync_relaying(&mut self) {
        let (relaying, saturated) = {
            let relay = self.relay();
            (relay.accepts_new_flows(), relay.is_saturated())
        };
        if relaying != self.router.is_relaying() {
            tracing::info!(
                relaying,
                saturated,
                "routing: {} offering this node as a relay for new routes",
                if relaying { "now" } else { "no longer" }
            );
            self.router.set_relaying(relaying);
        }
    }

    fn relay_stats(&self) -> RelayStats {
        let relay = self.relay();
        let counters = relay.counters();
        RelayStats {
            relaying: relay.is_relaying(),
            relay_bandwidth: relay.config().bandwidth,
            accepting_new_flows: relay.accepts_new_flows(),
            saturated: relay.is_saturated(),
            fair_share: relay.fair_share(),
            packets_forwarded: counters.forwarded_packets,
            bytes_forwarded: counters.forwarded_bytes,
            bytes_refused: counters.refused_bytes,
            refused_disabled: counters.refused_disabled,
            refused_saturated: counters.refused_saturated,
            refused_too_many_flows: counters.refused_too_many_flows,
            refused_unpaid: counters.refused_unpaid,
            dropped_over_share: counters.dropped_over_share,
            dropped_over_cap: counters.dropped_over_cap,
            dropped_throttled: counters.dropped_throttled,
            flows_started: counters.flows_started,
            flows: relay
                .flows()
                .map(|flow| RelayFlowInfo {
                    previous_hop: flow.key.previous_hop.to_hex(),
                    source: hex::encode(flow.key.source),
                    demand: flow.demand,
                    share: flow.share,
                    bytes_forwarded: flow.forwarded_bytes,
                    bytes_dropped: flow.dropped_bytes,
                })
                .collect(),
            own_sends: SendLimitsInfo::default(),
        }
    }

    /// Passes a packet from `previous_hop` on to `to` if the relay budget admits it.
    fn relay_packet(&mut self, previous_hop: NodeId, received: &Bytes, to: NodeId, out: Bytes) {
        let at = now();
        let Ok(source) = PacketHeader::peek_source(&received[1..]) else {
            self.stats.frames_malformed += 1;
            return;
        };
        let key = FlowKey {
            previous_hop,
            source: *source,
        };
        let len = out.len() as u64;
        match self.book.standing(at, &previous_hop) {
            Standing::CutOff => {
                let reason = self.relay().refuse(RelayRefusal::Unpaid, len);
                self.refuse_relay(at, previous_hop, received, reason);
                return;
            }
            Standing::Throttle => {
                if !self.relay().is_throttled(&previous_hop) {
                    tracing::info!(neighbour = %previous_hop, "relay: throttling a neighbour past its unpaid limit");
                }
                self.relay().set_throttled(at, previous_hop, true);
            }
            Standing::Ok | Standing::Settle => {
                if self.relay().is_throttled(&previous_hop) {
                    tracing::info!(neighbour = %previous_hop, "relay: a neighbour paid; no longer throttled");
                }
                self.relay().set_throttled(at, previous_hop, false);
            }
        }
        let verdict = self.relay().admit(at, key, len);
        match verdict {
            Ok(()) => {
                let destination = PacketHeader::peek_destination(&received[1..])
                    .ok()
                    .and_then(|raw| self.router.known_destination(raw));
                if self.send_frame(to, out).is_ok() {
                    self.stats.packets_forwarded += 1;
                    self.stats.bytes_forwarded += len;
                    if let Some(destination) = destination {
                        self.book
                            .forwarded(at, Some(previous_hop), to, destination, len);
                    }
                } else {
                    self.stats.dropped_link += 1;
                }
            }
            Err(reason) => self.refuse_relay(at, previous_hop, received, reason),
        }
        self.sync_relaying();
    }

    /// Sends a frame this node originated (data or acknowledgement) for `destination` to
    /// the next hop `to`, and books it in the ledger.
    fn send_own(&mut self, to: NodeId, destination: NodeId, frame: Bytes) -> Result<(), SendError> {
        let len = frame.len() as u64;
        self.send_frame(to, frame)?;
        self.book.forwarded(now(), None, to, destination, len);
        Ok(())
    }

    /// Forgets messages whose caller gave up; each counts against the reputation of the
    /// next hop towards its destination.
    fn forget_abandoned(&mut self) {
        let abandoned: Vec<u64> = self
            .pending_acks
            .iter()
            .filter(|(_, pending)| pending.reply.is_closed())
            .map(|(sequence, _)| *sequence)
            .collect();
        let at = now();
        for sequence in abandoned {
            if let Some(pending) = self.pending_acks.remove(&sequence) {
                if let Some(next_hop) = self.router.next_hop(&pending.destination) {
                    self.book.delivery(at, next_hop, false);
                }
            }
        }
    }

    /// Sends the ledger's quotes and IOUs.
    fn flush_ledger(&mut self) {
        while let Some((to, message)) = self.book.poll_transmit() {
            let frame = match message {
                LedgerMessage::Statement(statement) => {
                    let mut frame = vec![TAG_STATEMENT];
                    frame.extend_from_slice(&statement.encode());
                    frame
                }
                LedgerMessage::Iou(iou) => {
                    tracing::debug!(payee = %to, seq = iou.seq, amount = iou.cumulative_amount, "ledger: IOU sent");
                    let mut frame = vec![TAG_IOU];
                    frame.extend_from_slice(&iou.encode());
                    frame
                }
            };
            if self.send_frame(to, Bytes::from(frame)).is_err() {
                self.stats.control_dropped += 1;
            }
        }
        self.ledger_dirty |= self.book.take_changed();
    }

    /// Hands the ledger to its writer if it changed (and, when `last`, waits for room: the
    /// final write at shutdown).
    async fn persist_ledger(&mut self, last: bool) {
        self.ledger_dirty |= self.book.take_changed();
        if !self.ledger_dirty {
            return;
        }
        let rows = crate::ledger::rows_of(self.book.ledger(), now());
        let sent = if last {
            self.ledger_persist.send(rows).await.is_ok()
        } else {
            self.ledger_persist.try_send(rows).is_ok()
        };
        if sent {
            self.ledger_dirty = false;
        }
    }

    /// Resumes the ledger stored in `store`, in a new epoch after the stored one. A ledger
    /// that cannot be restored is logged and left in the store; this node starts afresh.
    async fn restore_ledger(&mut self, store: &Store) {
        let rows = match store.load_ledger().await {
            Ok(rows) => rows,
            Err(error) => {
                tracing::warn!(%error, "could not load the ledger; starting a fresh one");
                return;
            }
        };
        let mut config = self.book.ledger().config().clone();
        if let Some(state) = rows.state {
            let stored = u64::try_from(state.epoch).unwrap_or(0);
            config.epoch = config.epoch.max(stored.saturating_add(1));
        }
        let keys = NodeKeypair::from_signing_key(self.keys.signing_key().clone());
        let restored = match crate::ledger::snapshot_of(&rows) {
            Ok(None) => Ok(Ledger::new(keys, config.clone(), now())),
            Ok(Some((snapshot, _))) => {
                Ledger::restore(keys, config.clone(), snapshot).map_err(|error| error.to_string())
            }
            Err(error) => Err(error),
        };
        match restored {
            Ok(ledger) => {
                tracing::info!(
                    accounts = ledger.accounts().count(),
                    epoch = ledger.config().epoch,
                    "ledger restored"
                );
                self.book = Bookkeeper::new(ledger);
            }
            Err(error) => {
                tracing::warn!(%error, "the stored ledger cannot be restored; starting a fresh one (the stored rows are overwritten as accounts change)");
                let keys = NodeKeypair::from_signing_key(self.keys.signing_key().clone());
                self.book = Bookkeeper::new(Ledger::new(keys, config, now()));
            }
        }
    }

    /// A packet from `previous_hop` was not relayed for `reason`. A refused flow is
    /// answered with a route error (routes move elsewhere) and, within the notice rate, a
    /// notice to its source; a dropped packet only counts.
    fn refuse_relay(
        &mut self,
        at: meshcore_proto::route::Timestamp,
        previous_hop: NodeId,
        received: &Bytes,
        reason: RelayRefusal,
    ) {
        tracing::trace!(peer = %previous_hop, %reason, "a packet was not relayed");
        if !reason.is_flow_refusal() {
            return;
        }
        let packet = &received[1..];
        let (Ok(source), Ok(destination)) = (
            PacketHeader::peek_source(packet),
            PacketHeader::peek_destination(packet),
        ) else {
            return;
        };
        self.router.handle_refused(at, previous_hop, destination);
        let ids = (
            NodeId::from_bytes(*source),
            NodeId::from_bytes(*destination),
        );
        if let (Ok(source), Ok(destination)) = ids {
            if self.relay().take_notice(at) {
                tracing::debug!(peer = %previous_hop, %source, %destination, %reason, "refused a flow; telling its source");
                let notice = RelayNotice {
                    reason,
                    hop_limit: self.hop_limit,
                    relay: self.local,
                    source,
                    destination,
                };
                self.send_notice(previous_hop, &notice);
            }
        }
    }

    fn send_notice(&mut self, to: NodeId, notice: &RelayNotice) {
        let mut frame = Vec::with_capacity(1 + meshcore_proto::relay::NOTICE_LEN);
        frame.push(TAG_NOTICE);
        frame.extend_from_slice(&notice.encode());
        if self.send_frame(to, Bytes::from(frame)).is_ok() {
            self.stats.relay_notices_sent += 1;
        } else {
            self.stats.control_dropped += 1;
        }
    }

    /// A refusal notice from the neighbour `from`: about this node's packets, or to be
    /// passed on towards the source it names.
    fn on_notice(&mut self, from: NodeId, body: &[u8]) {
        let notice = match RelayNotice::decode(body) {
            Ok(notice) => notice,
            Err(error) => {
                self.stats.frames_malformed += 1;
                tracing::debug!(peer = %from, %error, "a relay notice did not decode");
                return;
            }
        };
        if notice.source == self.local {
            self.stats.relay_notices_received += 1;
            tracing::info!(
                relay = %notice.relay,
                destination = %notice.destination,
                reason = %notice.reason,
                "a relay refused to carry this node's traffic"
            );
            let _ = self.events.send(MeshEvent::RelayRefused {
                relay: notice.relay.to_hex(),
                destination: notice.destination.to_hex(),
                reason: notice.reason.as_str().to_owned(),
            });
            return;
        }
        let Some(next) = self.router.next_hop(&notice.source) else {
            return;
        };
        if notice.hop_limit == 0 || next == from || !self.relay().take_notice(now()) {
            return;
        }
        let notice = RelayNotice {
            hop_limit: notice.hop_limit - 1,
            ..notice
        };
        self.send_notice(next, &notice);
    }

    /// Sends again every message unacknowledged for [`RETRANSMIT_AFTER`]: over the route
    /// known now (local repair may have moved it), or, with none, starts a discovery and
    /// tries at the next tick. Forgets messages whose caller gave up.
    fn retransmit(&mut self) {
        self.forget_abandoned();
        let now = tokio::time::Instant::now();
        let due: Vec<(u64, NodeId, Bytes, u32)> = self
            .pending_acks
            .iter()
            .filter(|(_, pending)| now.duration_since(pending.last_sent) >= RETRANSMIT_AFTER)
            .map(|(sequence, pending)| {
                (
                    *sequence,
                    pending.destination,
                    pending.payload.clone(),
                    pending.flow,
                )
            })
            .collect();
        for (sequence, destination, payload, flow) in due {
            let mut failed_via = None;
            if let Some(pending) = self.pending_acks.get_mut(&sequence) {
                pending.last_sent = now;
                if let Some((via, sends)) = pending.via {
                    if sends > AVOID_AFTER_RETRANSMISSIONS {
                        failed_via = Some(via);
                        pending.via = None;
                    }
                }
            }
            if let Some(via) = failed_via {
                let at = self::now();
                tracing::info!(%destination, next_hop = %via, "routing: messages through this next hop go unacknowledged; routing around it");
                self.router.delivery_failed(at, destination, via);
                self.book.delivery(at, via, false);
                self.routes_dirty = true;
            }
            let Some(next_hop) = self.router.next_hop(&destination) else {
                let _ = self.router.find_route(self::now(), destination);
                continue;
            };
            let header = PacketHeader {
                hop_limit: self.hop_limit,
                flow_id: flow,
                sequence,
                source: self.local,
                destination,
            };
            let Ok(body) = self.seal(&header, self.hop_limit, &payload) else {
                continue;
            };
            if self
                .send_own(next_hop, destination, frame_of(TAG_DATA, &header, &body))
                .is_ok()
            {
                self.stats.retransmissions += 1;
                if let Some(pending) = self.pending_acks.get_mut(&sequence) {
                    pending.via = match pending.via {
                        Some((via, sends)) if via == next_hop => Some((via, sends + 1)),
                        _ => Some((next_hop, 1)),
                    };
                }
            }
        }
    }

    /// `initial_hop_limit ‖ sealed(plaintext)` for `header`, through the sending session to
    /// its destination (started or renewed as needed).
    fn seal(
        &mut self,
        header: &PacketHeader,
        initial_hop_limit: u8,
        plaintext: &[u8],
    ) -> Result<Vec<u8>, RouteError> {
        let at = now();
        let destination = header.destination;
        let fresh = self
            .sessions
            .get(&destination)
            .is_some_and(|(session, _)| !session.needs_rekey(at));
        if !fresh {
            if self.sessions.len() >= MAX_SEND_SESSIONS && !self.sessions.contains_key(&destination)
            {
                let oldest = self
                    .sessions
                    .iter()
                    .min_by_key(|(_, (_, used))| *used)
                    .map(|(id, _)| *id);
                if let Some(oldest) = oldest {
                    self.sessions.remove(&oldest);
                }
            }
            let session =
                Session::new(&self.keys, destination, at, &mut OsRng).map_err(|error| {
                    RouteError::Unreachable(format!("cannot encrypt to this node id: {error}"))
                })?;
            self.sessions
                .insert(destination, (session, tokio::time::Instant::now()));
        }
        let Some((session, used)) = self.sessions.get_mut(&destination) else {
            return Err(RouteError::Unreachable("no sending session".to_owned()));
        };
        *used = tokio::time::Instant::now();
        let sealed = session
            .seal(at, plaintext, &associated_data(header, initial_hop_limit))
            .map_err(|error| RouteError::Encryption(error.to_string()))?;
        let mut body = Vec::with_capacity(1 + sealed.len());
        body.push(initial_hop_limit);
        body.extend_from_slice(&sealed);
        Ok(body)
    }

    /// Queues `frame` on the link to `to`; a closed link is taken down.
    fn send_frame(&mut self, to: NodeId, frame: Bytes) -> Result<(), SendError> {
        let Some(link) = self.links.get(&to) else {
            return Err(SendError::Closed);
        };
        let result = link.try_send_data(frame);
        if result == Err(SendError::Closed) {
            self.routes_dirty = true;
            self.links.remove(&to);
            self.router.link_down(now(), to);
            self.book.link_down(&to);
        }
        result
    }

    fn on_link_change(&mut self, change: LinkChange) {
        let at = now();
        match change {
            LinkChange::Up(link) => {
                let metrics = link.metrics();
                let peer = link.peer;
                match self
                    .router
                    .link_up(at, peer, LinkQuality::new(metrics.rtt, metrics.loss))
                {
                    Ok(()) => {
                        tracing::debug!(%peer, "routing: neighbour up");
                        self.links.insert(peer, link);
                        let _ = self.events.send(MeshEvent::LinkUp {
                            peer: peer.to_string(),
                        });
                    }
                    Err(error) => tracing::info!(%peer, %error, "routing: neighbour not used"),
                }
            }
            LinkChange::Down(peer, id) => {
                if self.links.get(&peer).is_some_and(|link| link.id == id) {
                    tracing::debug!(%peer, "routing: neighbour down");
                    self.links.remove(&peer);
                    self.router.link_down(at, peer);
                    self.book.link_down(&peer);
                    let _ = self.events.send(MeshEvent::LinkDown {
                        peer: peer.to_string(),
                    });
                }
            }
        }
    }

    fn on_frame(&mut self, frame: ReceivedFrame) {
        if frame.data.first() == Some(&TAG_STATEMENT) {
            // A statement confirms bytes this node handed on, and bytes it does not know it
            // handed on are refused as overclaimed: first book what the link tasks
            // forwarded since the last wake-up.
            self.take_fast_bookings();
        }
        match frame.data.first() {
            Some(&TAG_ROUTE) => match route::decode(&frame.data[1..]) {
                Ok(message) => {
                    self.routes_dirty = true;
                    let destinations = advertised_destinations(&message);
                    let at = now();
                    self.router.handle_message(at, frame.peer, message);
                    self.learn_prices(at, frame.peer, &destinations);
                }
                Err(error) => {
                    self.stats.frames_malformed += 1;
                    tracing::debug!(peer = %frame.peer, %error, "a route message did not decode");
                }
            },
            Some(&(TAG_DATA | TAG_ACK)) => {
                let action = route_packet(&self.local, &frame.data, |destination| {
                    self.router.next_hop_for(destination)
                });
                match action {
                    PacketAction::Deliver {
                        header,
                        tag,
                        payload,
                    } => self.deliver(header, tag, payload),
                    PacketAction::Forward { to, frame: out } => {
                        self.relay_packet(frame.peer, &frame.data, to, out);
                    }
                    PacketAction::Drop(reason) => {
                        match reason {
                            DropReason::Malformed => self.stats.frames_malformed += 1,
                            DropReason::NoRoute => {
                                self.stats.dropped_no_route += 1;
                                // The neighbour it came from hears a route error, so the
                                // source rediscovers (the router rate-limits these).
                                if let Ok(destination) =
                                    PacketHeader::peek_destination(&frame.data[1..])
                                {
                                    self.router
                                        .handle_unroutable(now(), frame.peer, destination);
                                }
                            }
                            DropReason::HopLimit => self.stats.dropped_hop_limit += 1,
                        }
                        tracing::debug!(peer = %frame.peer, ?reason, "dropped a packet");
                    }
                }
            }
            Some(&TAG_NOTICE) => self.on_notice(frame.peer, &frame.data[1..]),
            Some(&TAG_IOU) => match Iou::decode(&frame.data[1..]) {
                Ok(iou) => {
                    if let Err(error) = self.book.iou_received(now(), frame.peer, &iou) {
                        tracing::debug!(peer = %frame.peer, %error, "ledger: an IOU was refused");
                    }
                }
                Err(error) => {
                    self.stats.frames_malformed += 1;
                    tracing::debug!(peer = %frame.peer, %error, "an IOU did not decode");
                }
            },
            Some(&TAG_STATEMENT) => match Statement::decode(&frame.data[1..]) {
                Ok(statement) => self.book.statement_received(now(), frame.peer, statement),
                Err(error) => {
                    self.stats.frames_malformed += 1;
                    tracing::debug!(peer = %frame.peer, %error, "a ledger statement did not decode");
                }
            },
            _ => {
                self.stats.frames_malformed += 1;
                tracing::debug!(peer = %frame.peer, "a data frame with an unknown tag");
            }
        }
    }

    fn deliver(&mut self, header: PacketHeader, tag: u8, payload: Bytes) {
        let Some(&initial) = payload.first() else {
            self.stats.frames_malformed += 1;
            return;
        };
        let opened = self.opener.open_bytes(
            now(),
            header.source,
            &payload[1..],
            &associated_data(&header, initial),
        );
        let plaintext = match opened {
            Ok(plaintext) => Bytes::from(plaintext),
            Err(error) => {
                self.stats.e2e_rejected += 1;
                tracing::debug!(source = %header.source, %error, "a packet for this node did not open");
                return;
            }
        };
        let hops = initial.saturating_sub(header.hop_limit).saturating_add(1);
        if tag == TAG_ACK {
            let acked_hops = plaintext.first().copied().unwrap_or(0);
            let matches = self
                .pending_acks
                .get(&header.sequence)
                .is_some_and(|pending| pending.destination == header.source);
            if let (true, Some(pending)) = (matches, self.pending_acks.remove(&header.sequence)) {
                self.stats.acks_received += 1;
                if let Some(next_hop) = self.router.next_hop(&pending.destination) {
                    self.book.delivery(now(), next_hop, true);
                }
                let _ = pending.reply.send(Ok(Delivery {
                    delivered: true,
                    hops: acked_hops,
                    rtt_ms: pending.sent.elapsed().as_secs_f64() * 1000.0,
                }));
            }
            return;
        }
        let datagram = header.flow_id == DATAGRAM_FLOW;
        let first_time = self.remember_delivery(header.source, header.sequence);
        if !first_time && datagram {
            self.stats.duplicates_suppressed += 1;
            return;
        }
        if !first_time {
            // Sent again because our acknowledgement was lost: acknowledge, deliver once.
            self.stats.duplicates_suppressed += 1;
            self.acknowledge(&header, hops);
            return;
        }
        self.stats.packets_delivered += 1;
        let message = ReceivedMessage {
            source: header.source,
            via: None,
            payload: plaintext,
            hops,
            received_at: unix_millis(),
        };
        if datagram {
            tracing::trace!(source = %message.source, hops, bytes = message.payload.len(), "datagram received");
            self.record(message);
            return;
        }
        if header.flow_id == SIGNAL_FLOW {
            tracing::debug!(source = %message.source, hops, bytes = message.payload.len(), "browser signaling received");
            let _ = self.signals.send(message);
        } else if header.flow_id == BROWSER_FLOW {
            tracing::debug!(source = %message.source, hops, bytes = message.payload.len(), "browser message envelope received");
            let _ = self.browser_envelopes.send(message);
        } else {
            tracing::info!(source = %message.source, hops, bytes = message.payload.len(), "message received");
            self.record(message);
        }
        self.acknowledge(&header, hops);
    }

    /// Keeps `message` among the recent ones and tells subscribers.
    fn record(&mut self, message: ReceivedMessage) {
        if self.received.len() >= RECEIVED_KEPT {
            self.received.pop_front();
        }
        self.received.push_back(message.clone());
        if self.events.receiver_count() > 0 {
            let _ = self.events.send(MeshEvent::Message {
                source: message.source.to_string(),
                via: message.via.map(|via| via.to_string()),
                payload: String::from_utf8_lossy(&message.payload).into_owned(),
                hops: message.hops,
                received_at: message.received_at,
            });
        }
        let _ = self.subscribers.send(message);
    }

    /// Records that the message `(source, sequence)` was delivered; `false` if it was
    /// already.
    fn remember_delivery(&mut self, source: NodeId, sequence: u64) -> bool {
        if !self.delivered.insert((source, sequence)) {
            return false;
        }
        self.delivered_order.push_back((source, sequence));
        while self.delivered_order.len() > DELIVERED_KEPT {
            if let Some(old) = self.delivered_order.pop_front() {
                self.delivered.remove(&old);
            }
        }
        true
    }

    /// Sends the sealed acknowledgement of the data packet `header` (which crossed `hops`).
    fn acknowledge(&mut self, header: &PacketHeader, hops: u8) {
        let ack_header = PacketHeader {
            hop_limit: self.hop_limit,
            flow_id: header.flow_id,
            sequence: header.sequence,
            source: self.local,
            destination: header.source,
        };
        let frame = match self.seal(&ack_header, self.hop_limit, &[hops]) {
            Ok(body) => frame_of(TAG_ACK, &ack_header, &body),
            Err(error) => {
                tracing::debug!(%error, "could not seal an acknowledgement");
                return;
            }
        };
        match self.router.next_hop(&header.source) {
            Some(next_hop) => {
                if self.send_own(next_hop, header.source, frame).is_err() {
                    self.stats.dropped_link += 1;
                }
            }
            None => {
                // No route back yet: ask for one and send the acknowledgement when it is found.
                if self.ack_packets.len() >= MAX_PENDING_ACK_PACKETS {
                    self.ack_packets.pop_front();
                    self.stats.dropped_no_route += 1;
                }
                self.ack_packets.push_back((header.source, frame));
                if let Ok(RouteLookup::Known(_)) = self.router.find_route(now(), header.source) {
                    self.send_waiting_acks(&header.source);
                }
            }
        }
    }

    fn send_waiting_acks(&mut self, destination: &NodeId) {
        let Some(next_hop) = self.router.next_hop(destination) else {
            return;
        };
        let (ready, waiting): (VecDeque<_>, VecDeque<_>) = std::mem::take(&mut self.ack_packets)
            .into_iter()
            .partition(|(to, _)| to == destination);
        self.ack_packets = waiting;
        for (_, frame) in ready {
            if self.send_own(next_hop, *destination, frame).is_err() {
                self.stats.dropped_link += 1;
            }
        }
    }

    /// Sends what the router asked for and answers waiters.
    fn flush(&mut self) {
        while let Some((to, message)) = self.router.poll_transmit() {
            let mut frame = vec![TAG_ROUTE];
            frame.extend_from_slice(&route::encode(&message));
            if self.send_frame(to, Bytes::from(frame)).is_err() {
                self.stats.control_dropped += 1;
            }
        }
        while let Some(event) = self.router.poll_event() {
            match event {
                RouteEvent::RouteFound { destination, route } => {
                    tracing::info!(%destination, hops = route.hop_count, "route found");
                    let info = RouteInfo::of(&route);
                    for waiter in self.find_waiters.remove(&destination).unwrap_or_default() {
                        let _ = waiter.send(Ok(info.clone()));
                    }
                    let _ = self.events.send(MeshEvent::RouteFound { route: info });
                    self.send_waiting_acks(&destination);
                }
                RouteEvent::RouteFailed { destination, .. } => {
                    tracing::info!(%destination, "no route found within max_hops");
                    for waiter in self.find_waiters.remove(&destination).unwrap_or_default() {
                        let _ = waiter.send(Err(RouteError::NoRouteWithinMaxHops));
                    }
                    self.ack_packets.retain(|(to, _)| *to != destination);
                }
                RouteEvent::RouteRepaired { destination, route } => {
                    tracing::debug!(%destination, next_hop = %route.next_hop, "route repaired");
                    let _ = self.events.send(MeshEvent::RouteRepaired {
                        route: RouteInfo::of(&route),
                    });
                    self.send_waiting_acks(&destination);
                }
                RouteEvent::RouteLost { destination } => {
                    tracing::debug!(%destination, "route lost");
                    let _ = self.events.send(MeshEvent::RouteLost {
                        destination: destination.to_string(),
                    });
                }
                RouteEvent::PeerMisbehaved { peer, reason } => {
                    self.stats.peers_misbehaved += 1;
                    tracing::warn!(%peer, reason, "a routing neighbour misbehaved");
                }
            }
        }
    }

    /// Hands the selected routes to the writer if they changed since the last write.
    fn persist_routes(&mut self) {
        let routes: Vec<RouteInfo> = self.router.routes().map(|r| RouteInfo::of(&r)).collect();
        if self.persisted.as_ref() == Some(&routes) {
            return;
        }
        let rows = routes.iter().map(RouteInfo::row).collect();
        match self.persist.try_send(rows) {
            Ok(()) => self.persisted = Some(routes),
            Err(_) => tracing::debug!("the route writer is busy; the table is written later"),
        }
    }
}

async fn persist(store: Store, mut tables: mpsc::Receiver<Vec<RouteRow>>) {
    while let Some(rows) = tables.recv().await {
        if let Err(error) = store.replace_routes(&rows).await {
            tracing::warn!(%error, "could not store the route table");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_chacha::rand_core::SeedableRng;

    fn id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    fn packet(tag: u8, hop_limit: u8, payload: &[u8]) -> Bytes {
        let header = PacketHeader {
            hop_limit,
            flow_id: MESSAGE_FLOW,
            sequence: 42,
            source: id(1),
            destination: id(3),
        };
        frame_of(tag, &header, payload)
    }

    #[test]
    fn a_relay_changes_only_the_hop_limit() {
        let payload: Vec<u8> = (0..=255u8).cycle().take(5000).collect();
        let frame = packet(TAG_DATA, 9, &payload);
        let relay = id(2);
        let PacketAction::Forward { to, frame: out } =
            route_packet(&relay, &frame, |destination| {
                NodeId::from_bytes(*destination).ok()
            })
        else {
            panic!("a packet for another node is forwarded");
        };
        assert_eq!(to, id(3));
        assert_eq!(out.len(), frame.len());
        assert_eq!(out[0], TAG_DATA, "the tag is kept");
        assert_eq!(out[2], 8, "the hop limit is decremented");
        assert_eq!(out[3..], frame[3..], "nothing else changes");
        assert_eq!(
            &out[1 + HEADER_LEN..],
            &payload[..],
            "the payload is untouched"
        );

        let PacketAction::Deliver {
            header,
            tag,
            payload: delivered,
        } = route_packet(&id(3), &out, |_| None)
        else {
            panic!("a packet for this node is delivered");
        };
        assert_eq!((tag, header.hop_limit, header.sequence), (TAG_DATA, 8, 42));
        assert_eq!(&delivered[..], &payload[..]);
    }

    #[test]
    fn packets_without_route_hops_or_header_are_dropped() {
        let relay = id(2);
        assert_eq!(
            route_packet(&relay, &packet(TAG_ACK, 3, b"x"), |_| None),
            PacketAction::Drop(DropReason::NoRoute)
        );
        assert_eq!(
            route_packet(&relay, &packet(TAG_DATA, 0, b"x"), |d| NodeId::from_bytes(
                *d
            )
            .ok()),
            PacketAction::Drop(DropReason::HopLimit)
        );
        let truncated = packet(TAG_DATA, 3, b"").slice(..HEADER_LEN);
        assert_eq!(
            route_packet(&relay, &truncated, |d| NodeId::from_bytes(*d).ok()),
            PacketAction::Drop(DropReason::Malformed)
        );
        assert_eq!(
            route_packet(&relay, &Bytes::new(), |d| NodeId::from_bytes(*d).ok()),
            PacketAction::Drop(DropReason::Malformed)
        );
    }

    #[test]
    fn path_quality_falls_with_cost() {
        assert_eq!(path_quality(0), 1.0);
        assert_eq!(path_quality(1000), 0.5);
        assert!(path_quality(300) > path_quality(600));
    }
}

#[cfg(test)]
mod sealing_tests {
    use super::*;
    use meshcore_proto::route::Timestamp;
    use rand_chacha::rand_core::SeedableRng;

    fn keys(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn a_sealed_payload_survives_relaying_but_not_tampering() {
        let (source, destination, relay) = (keys(1), keys(2), keys(3));
        let header = PacketHeader {
            hop_limit: 9,
            flow_id: MESSAGE_FLOW,
            sequence: 7,
            source: source.node_id(),
            destination: destination.node_id(),
        };
        let at = Timestamp::from_millis(1_700_000_000_000);
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(4);
        let mut session =
            Session::new(&source, destination.node_id(), at, &mut rng).expect("session");
        let sealed = session
            .seal(at, b"secret", &associated_data(&header, 9))
            .expect("seal");
        assert!(
            !sealed.windows(6).any(|w| w == b"secret"),
            "the plaintext is not visible to relays"
        );

        // Relays lower the hop limit: the packet still opens.
        let relayed = PacketHeader {
            hop_limit: 6,
            ..header
        };
        let mut opener = Receiver::new(&destination, ReceiverConfig::new());
        let opened = opener
            .open_bytes(at, source.node_id(), &sealed, &associated_data(&relayed, 9))
            .expect("opens after relaying");
        assert_eq!(opened, b"secret");

        // A forged hop count, sequence, source, or the wrong recipient: refused.
        let fresh = || Receiver::new(&destination, ReceiverConfig::new());
        let forged_hops = associated_data(&relayed, 12);
        assert!(fresh()
            .open_bytes(at, source.node_id(), &sealed, &forged_hops)
            .is_err());
        let other_sequence = associated_data(
            &PacketHeader {
                sequence: 8,
                ..header
            },
            9,
        );
        assert!(fresh()
            .open_bytes(at, source.node_id(), &sealed, &other_sequence)
            .is_err());
        assert!(fresh()
            .open_bytes(at, relay.node_id(), &sealed, &associated_data(&header, 9))
            .is_err());
        assert!(Receiver::new(&relay, ReceiverConfig::new())
            .open_bytes(at, source.node_id(), &sealed, &associated_data(&header, 9))
            .is_err());
        // A replay of the delivered packet: refused.
        assert!(opener
            .open_bytes(at, source.node_id(), &sealed, &associated_data(&relayed, 9))
            .is_err());
    }
}

#[cfg(test)]
mod driver_tests {
    //! The driver over in-memory links ([`LinkHandle::in_memory`]): the test carries the
    //! frames between nodes, and may lose some.

    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::ledger::TokensInfo;
    use meshcore_proto::peers::LinkId;
    use meshcore_proto::route::{Rerr, RouteMessage, Unreachable};
    use rand_chacha::rand_core::SeedableRng;

    /// Bound on every wait; none is reached when the driver works.
    const WAIT: Duration = Duration::from_secs(20);

    fn keys(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    /// A driver fed from the returned sender, as the network's frame sink would feed it.
    async fn node(seed: u64) -> (Routing, mpsc::Sender<ReceivedFrame>) {
        node_with(
            seed,
            RoutingOptions::new(10, Duration::from_secs(300), seed),
        )
        .await
    }

    async fn node_with(
        seed: u64,
        options: RoutingOptions,
    ) -> (Routing, mpsc::Sender<ReceivedFrame>) {
        let store = Store::open_in_memory().await.expect("store");
        node_on(seed, options, store)
    }

    fn node_on(
        seed: u64,
        options: RoutingOptions,
        store: Store,
    ) -> (Routing, mpsc::Sender<ReceivedFrame>) {
        let (frames, inbox) = mpsc::channel(1024);
        let routing = Routing::start(&keys(seed), inbox, store, options).expect("driver");
        (routing, frames)
    }

    /// Links two drivers both ways with in-memory links that lose nothing.
    fn join(
        (a, a_frames): (&Routing, &mpsc::Sender<ReceivedFrame>),
        (b, b_frames): (&Routing, &mpsc::Sender<ReceivedFrame>),
        ids: (u64, u64),
    ) {
        let (a_to_b, a_out) = LinkHandle::in_memory(LinkId(ids.0), b.node_id());
        let (b_to_a, b_out) = LinkHandle::in_memory(LinkId(ids.1), a.node_id());
        wire(a_out, a.node_id(), LinkId(ids.1), b_frames.clone(), |_| {
            false
        });
        wire(b_out, b.node_id(), LinkId(ids.0), a_frames.clone(), |_| {
            false
        });
        a.link_up(a_to_b);
        b.link_up(b_to_a);
    }

    fn relay_off(seed: u64) -> RoutingOptions {
        RoutingOptions {
            relay_enabled: false,
            ..RoutingOptions::new(10, Duration::from_secs(300), seed)
        }
    }

    /// Carries what `from` queues on its in-memory link into the driver behind `to`,
    /// arriving on that side's link `link`; frames `lose` picks are lost.
    fn wire(
        mut out: mpsc::Receiver<Bytes>,
        from: NodeId,
        link: LinkId,
        to: mpsc::Sender<ReceivedFrame>,
        mut lose: impl FnMut(&Bytes) -> bool + Send + 'static,
    ) {
        tokio::spawn(async move {
            while let Some(data) = out.recv().await {
                if lose(&data) {
                    continue;
                }
                let frame = ReceivedFrame {
                    link,
                    peer: from,
                    data,
                };
                if to.send(frame).await.is_err() {
                    return;
                }
            }
        });
    }

    #[tokio::test]
    async fn a_lost_acknowledgement_is_repaired_by_the_retransmission_and_delivers_once() {
        let ((a, a_frames), (b, b_frames)) = (node(1).await, node(2).await);
        let (a_id, b_id) = (a.node_id(), b.node_id());
        let (a_to_b, a_out) = LinkHandle::in_memory(LinkId(1), b_id);
        let (b_to_a, b_out) = LinkHandle::in_memory(LinkId(2), a_id);
        wire(a_out, a_id, LinkId(2), b_frames, |_| false);
        // From b to a, the first acknowledgement is lost; every frame is counted.
        let (acks_sent, acks_lost) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (sent, lost) = (acks_sent.clone(), acks_lost.clone());
        wire(b_out, b_id, LinkId(1), a_frames, move |frame| {
            if frame.first() != Some(&TAG_ACK) {
                return false;
            }
            let first = sent.fetch_add(1, Ordering::SeqCst) == 0;
            if first {
                lost.fetch_add(1, Ordering::SeqCst);
            }
            first
        });
        a.link_up(a_to_b);
        b.link_up(b_to_a);
        a.find_route(b_id, WAIT).await.expect("a route from a to b");
        b.find_route(a_id, WAIT).await.expect("a route back");
        let mut delivered = b.subscribe();

        let delivery = a
            .send(b_id, Bytes::from_static(b"exactly once"), WAIT)
            .await
            .expect("acknowledged in the end");

        assert!(delivery.delivered);
        assert_eq!(delivery.hops, 1);
        assert_eq!(acks_lost.load(Ordering::SeqCst), 1, "the first was lost");
        assert!(
            acks_sent.load(Ordering::SeqCst) >= 2,
            "b acknowledged the message sent again"
        );
        let a_stats = a.stats().await.expect("stats");
        assert!(a_stats.retransmissions >= 1, "{a_stats:?}");
        assert_eq!(a_stats.acks_received, 1);
        let b_stats = b.stats().await.expect("stats");
        assert_eq!(b_stats.packets_delivered, 1, "{b_stats:?}");
        assert!(b_stats.duplicates_suppressed >= 1, "{b_stats:?}");
        let received = b.received().await.expect("received");
        assert_eq!(received.len(), 1);
        assert_eq!(received[0].payload, Bytes::from_static(b"exactly once"));
        assert_eq!(received[0].source, a_id);
        let mut announced = 0;
        while let Ok(message) = delivered.try_recv() {
            assert_eq!(message.payload, Bytes::from_static(b"exactly once"));
            announced += 1;
        }
        assert_eq!(announced, 1, "subscribers hear of it once");
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test]
    async fn a_packet_without_a_route_is_answered_with_a_route_error() {
        let (relay, relay_frames) = node(3).await;
        let neighbour = keys(4).node_id();
        let (link, mut out) = LinkHandle::in_memory(LinkId(1), neighbour);
        relay.link_up(link);
        // The relay's first hello shows that the link is up in its router.
        let route_message = |frame: &Bytes| match frame.split_first() {
            Some((&TAG_ROUTE, body)) => route::decode(body).ok(),
            _ => None,
        };
        let hello = tokio::time::timeout(WAIT, async {
            while let Some(frame) = out.recv().await {
                if let Some(RouteMessage::Hello(hello)) = route_message(&frame) {
                    return Some(hello);
                }
            }
            None
        });
        assert!(hello.await.expect("in time").is_some());

        let nowhere = keys(5).node_id();
        let header = PacketHeader {
            hop_limit: 5,
            flow_id: MESSAGE_FLOW,
            sequence: 1,
            source: neighbour,
            destination: nowhere,
        };
        let frame = ReceivedFrame {
            link: LinkId(1),
            peer: neighbour,
            data: frame_of(TAG_DATA, &header, b"sealed bytes"),
        };
        relay_frames.send(frame).await.expect("driver running");

        let rerr = tokio::time::timeout(WAIT, async {
            while let Some(frame) = out.recv().await {
                if let Some(RouteMessage::Rerr(rerr)) = route_message(&frame) {
                    return Some(rerr);
                }
            }
            None
        });
        let rerr = rerr.await.expect("in time").expect("a route error");
        assert_eq!(
            rerr,
            Rerr {
                unreachable: vec![Unreachable {
                    destination: nowhere,
                    seqno: u64::MAX
                }]
            }
        );
        let stats = relay.stats().await.expect("stats");
        assert_eq!(stats.dropped_no_route, 1);
        assert_eq!(stats.packets_forwarded, 0);
        relay.shutdown().await;
    }

    #[tokio::test]
    async fn a_route_forms_around_a_node_that_does_not_relay() {
        // A diamond a–r–b, a–c–b; r does not relay.
        let a = node(11).await;
        let r = node_with(12, relay_off(12)).await;
        let c = node(13).await;
        let b = node(14).await;
        join((&a.0, &a.1), (&r.0, &r.1), (1, 2));
        join((&r.0, &r.1), (&b.0, &b.1), (3, 4));
        join((&a.0, &a.1), (&c.0, &c.1), (5, 6));
        join((&c.0, &c.1), (&b.0, &b.1), (7, 8));
        let (a_id, b_id, c_id, r_id) = (a.0.node_id(), b.0.node_id(), c.0.node_id(), r.0.node_id());
        let route = a.0.find_route(b_id, WAIT).await.expect("a route to b");
        assert_eq!(route.next_hop, c_id.to_hex(), "{route:?}");
        assert!(!route.path.contains(&r_id.to_hex()));
        let delivery =
            a.0.send(b_id, Bytes::from_static(b"around"), WAIT)
                .await
                .expect("delivered");
        assert_eq!(delivery.hops, 2);
        // A datagram goes the same way and is not acknowledged.
        let mut at_b = b.0.subscribe();
        a.0.send_datagram(b_id, Bytes::from_static(b"fire and forget"))
            .await
            .expect("queued");
        let datagram = tokio::time::timeout(WAIT, at_b.recv())
            .await
            .expect("in time")
            .expect("delivered");
        assert_eq!(datagram.payload, Bytes::from_static(b"fire and forget"));
        assert_eq!(datagram.source, a_id);
        let relay = r.0.relay_stats().await.expect("stats");
        assert!(!relay.relaying && !relay.accepting_new_flows);
        assert_eq!(relay.packets_forwarded, 0);
        assert_eq!(b.0.stats().await.expect("stats").packets_delivered, 2);
        // r itself is reachable.
        a.0.find_route(r_id, WAIT).await.expect("a route to r");
        for node in [&a.0, &r.0, &c.0, &b.0] {
            node.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_relay_that_drops_packets_is_routed_around_and_loses_reputation() {
        // a–d through d's neighbours x and y; x silently drops every data packet it should
        // hand to d (it still relays route messages and acknowledgements).
        let a = node(41).await;
        let x = node(42).await;
        let y = node(43).await;
        let d = node(44).await;
        let (x_id, y_id, d_id) = (x.0.node_id(), y.0.node_id(), d.0.node_id());
        join((&a.0, &a.1), (&x.0, &x.1), (1, 2));
        let (x_to_d, x_out) = LinkHandle::in_memory(LinkId(3), d_id);
        let (d_to_x, d_out) = LinkHandle::in_memory(LinkId(4), x_id);
        wire(x_out, x_id, LinkId(4), d.1.clone(), |frame| {
            frame.first() == Some(&TAG_DATA)
        });
        wire(d_out, d_id, LinkId(3), x.1.clone(), |_| false);
        x.0.link_up(x_to_d);
        d.0.link_up(d_to_x);
        // Only the way through x exists when a first asks.
        let route = a.0.find_route(d_id, WAIT).await.expect("a route to d");
        assert_eq!(route.next_hop, x_id.to_hex(), "{route:?}");
        join((&a.0, &a.1), (&y.0, &y.1), (5, 6));
        join((&y.0, &y.1), (&d.0, &d.1), (7, 8));

        let delivery =
            a.0.send(d_id, Bytes::from_static(b"around the dropper"), WAIT)
                .await
                .expect("delivered in the end");
        assert_eq!(delivery.hops, 2);
        let route = a.0.find_route(d_id, WAIT).await.expect("a route to d");
        assert_eq!(route.next_hop, y_id.to_hex(), "around x: {route:?}");
        let stats = a.0.stats().await.expect("stats");
        assert!(stats.retransmissions >= 3, "{stats:?}");
        // x lost reputation at a; y, which delivered, gained some.
        let tokens = a.0.tokens().await.expect("tokens");
        let multiplier = |id: &NodeId| {
            tokens
                .neighbours
                .iter()
                .find(|n| n.node_id == id.to_hex())
                .map_or(1.0, |n| n.reputation_multiplier)
        };
        assert!(multiplier(&y_id) > multiplier(&x_id), "{tokens:?}");
        for node in [&a.0, &x.0, &y.0, &d.0] {
            node.shutdown().await;
        }
    }

    #[tokio::test]
    async fn a_refused_packet_brings_its_source_a_notice_and_turning_relaying_on_applies_at_once() {
        // A line a–r–b where r does not relay.
        let a = node(21).await;
        let r = node_with(22, relay_off(22)).await;
        let b = node(23).await;
        join((&a.0, &a.1), (&r.0, &r.1), (1, 2));
        join((&r.0, &r.1), (&b.0, &b.1), (3, 4));
        let (a_id, b_id) = (a.0.node_id(), b.0.node_id());
        assert_eq!(
            a.0.find_route(b_id, WAIT).await,
            Err(RouteError::NoRouteWithinMaxHops),
            "no route through a node that does not relay"
        );
        // A packet for b reaches r from a anyway (say, on a route learned before).
        let mut events = a.0.events();
        let header = PacketHeader {
            hop_limit: 9,
            flow_id: DATAGRAM_FLOW,
            sequence: 1,
            source: a_id,
            destination: b_id,
        };
        r.0.find_route(b_id, WAIT)
            .await
            .expect("r reaches b itself");
        r.1.send(ReceivedFrame {
            link: LinkId(2),
            peer: a_id,
            data: frame_of(TAG_DATA, &header, b"sealed bytes"),
        })
        .await
        .expect("driver running");
        let refused = tokio::time::timeout(WAIT, async {
            loop {
                match events.recv().await {
                    Ok(MeshEvent::RelayRefused {
                        relay,
                        destination,
                        reason,
                    }) => return (relay, destination, reason),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(error) => panic!("events ended: {error}"),
                }
            }
        })
        .await
        .expect("a notice in time");
        assert_eq!(
            refused,
            (
                r.0.node_id().to_hex(),
                b_id.to_hex(),
                "relaying_disabled".to_owned()
            )
        );
        let r_stats = r.0.stats().await.expect("stats");
        assert_eq!(r_stats.relay_refused_disabled, 1, "{r_stats:?}");
        assert_eq!(r_stats.relay_notices_sent, 1);
        assert_eq!(r_stats.packets_forwarded, 0);
        assert_eq!(a.0.stats().await.expect("stats").relay_notices_received, 1);

        // Relaying turned on at run time: the next discovery goes through r.
        r.0.set_relay(true, 1024 * 1024);
        let route = a.0.find_route(b_id, WAIT).await.expect("a route through r");
        assert_eq!(route.next_hop, r.0.node_id().to_hex());
        a.0.send(b_id, Bytes::from_static(b"through r"), WAIT)
            .await
            .expect("delivered through r");
        let relay = r.0.relay_stats().await.expect("stats");
        assert!(relay.relaying && relay.packets_forwarded >= 2, "{relay:?}");
        assert!(
            relay.flows.len() >= 2,
            "the message and its acknowledgement"
        );
        for node in [&a.0, &r.0, &b.0] {
            node.shutdown().await;
        }
    }

    /// Waits (bounded) until `check` holds for `node`'s tokens, and returns them.
    async fn tokens_when(node: &Routing, check: impl Fn(&TokensInfo) -> bool) -> TokensInfo {
        tokio::time::timeout(WAIT, async {
            loop {
                let tokens = node.tokens().await.expect("tokens");
                if check(&tokens) {
                    return tokens;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("in time")
    }

    fn account<'a>(
        tokens: &'a TokensInfo,
        neighbour: &NodeId,
    ) -> Option<&'a crate::ledger::NeighbourAccount> {
        let id = neighbour.to_hex();
        tokens.neighbours.iter().find(|n| n.node_id == id)
    }

    #[tokio::test]
    async fn a_relay_earns_only_what_it_forwards_and_the_originator_spends_the_same() {
        // a – r – b; r keeps its ledger in a file, to be restarted from it.
        let dir = tempfile::tempdir().expect("temp dir");
        let db = dir.path().join("relay.db");
        let a = node(31).await;
        let r_store = Store::open(&db).await.expect("store");
        let r = node_on(
            32,
            RoutingOptions::new(10, Duration::from_secs(300), 32),
            r_store.clone(),
        );
        let b = node(33).await;
        join((&a.0, &a.1), (&r.0, &r.1), (1, 2));
        join((&r.0, &r.1), (&b.0, &b.1), (3, 4));
        let (a_id, r_id, b_id) = (a.0.node_id(), r.0.node_id(), b.0.node_id());
        a.0.find_route(r_id, WAIT).await.expect("a route to r");
        let route = a.0.find_route(b_id, WAIT).await.expect("a route to b");
        assert_eq!(route.next_hop, r_id.to_hex());
        assert_eq!(route.path_price, 100_000, "r's fee, as r advertised it");
        let mut at_r = r.0.subscribe();
        let mut at_b = b.0.subscribe();
        let payload = Bytes::from(vec![7u8; 8 * 1024]);

        // Traffic for r itself: r carries nothing for anyone and earns nothing.
        for _ in 0..20 {
            a.0.send_datagram(r_id, payload.clone())
                .await
                .expect("sent");
        }
        for _ in 0..20 {
            tokio::time::timeout(WAIT, at_r.recv())
                .await
                .expect("in time")
                .expect("delivered");
        }
        let r_tokens = r.0.tokens().await.expect("tokens");
        assert_eq!((r_tokens.earned, r_tokens.spent), (0, 0), "{r_tokens:?}");
        let a_tokens = a.0.tokens().await.expect("tokens");
        assert_eq!(a_tokens.spent, 0, "sending to a neighbour is free");
        assert_eq!(account(&a_tokens, &r_id).map(|n| n.payable), Some(0));

        // 40 × 8 KiB through r: at r's fee of 100 tokens/MB, about 33 tokens.
        for _ in 0..40 {
            a.0.send_datagram(b_id, payload.clone())
                .await
                .expect("sent");
        }
        for _ in 0..40 {
            tokio::time::timeout(WAIT, at_b.recv())
                .await
                .expect("in time")
                .expect("delivered");
        }
        let relay = r.0.relay_stats().await.expect("stats");
        assert_eq!(relay.packets_forwarded, 40, "{relay:?}");
        // Both sides book the same charge for the same bytes...
        let a_tokens = tokens_when(&a.0, |t| {
            account(t, &r_id).is_some_and(|n| n.payable > 0 && n.tokens_spent > 0)
        })
        .await;
        let a_at_r = account(&a_tokens, &r_id).expect("a's account of r").clone();
        let r_tokens = tokens_when(&r.0, |t| {
            account(t, &a_id).is_some_and(|n| n.tokens_earned == a_at_r.tokens_spent)
        })
        .await;
        let r_at_a = account(&r_tokens, &a_id).expect("r's account of a").clone();
        assert_eq!(
            r_at_a.receivable, a_at_r.payable,
            "the same charge at both ends"
        );
        let frame = (1 + HEADER_LEN + 1 + e2e::SEAL_OVERHEAD + payload.len()) as u64;
        assert_eq!(r_at_a.bytes_relayed, 40 * frame);
        assert_eq!(
            a_at_r.bytes_consumed,
            60 * frame,
            "20 frames to r, 40 through it"
        );
        let expected = 40 * frame * 100_000 / 1_000_000;
        assert_eq!(a_at_r.payable, expected, "40 frames at 100 tokens/MB");
        // ...and what r earned is exactly what a spent, in IOUs a signed.
        assert_eq!(r_at_a.tokens_earned, a_at_r.tokens_spent);
        assert!(
            r_at_a.tokens_earned >= 10_000,
            "at least the first threshold"
        );
        assert_eq!(r_tokens.earned, r_at_a.tokens_earned);
        assert_eq!(r_tokens.spent, 0, "r owes b nothing: b is the destination");
        let received = r_at_a.latest_iou_received.clone().expect("an IOU from a");
        assert_eq!(
            Some(received.clone()),
            a_at_r.latest_iou_sent.clone(),
            "r holds the IOU a signed"
        );
        let b_tokens = b.0.tokens().await.expect("tokens");
        assert_eq!(b_tokens.earned, 0, "the destination earns nothing");

        // r restarts from its store: the same accounts, a new epoch.
        r.0.shutdown().await;
        let r2 = node_on(
            32,
            RoutingOptions::new(10, Duration::from_secs(300), 32),
            r_store,
        );
        let restored = r2.0.tokens().await.expect("tokens");
        let r2_at_a = account(&restored, &a_id).expect("restored account");
        assert_eq!(r2_at_a.tokens_earned, r_at_a.tokens_earned);
        assert_eq!(r2_at_a.receivable, r_at_a.receivable);
        assert_eq!(r2_at_a.latest_iou_received, Some(received));
        assert!(restored.epoch > r_tokens.epoch);
        for node in [&a.0, &b.0, &r2.0] {
            node.shutdown().await;
        }
    }
}
