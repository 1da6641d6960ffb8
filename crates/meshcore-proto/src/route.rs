//! The mesh router: reactive AODV-style route discovery made loop-free by Babel's
//! feasibility condition, proactive hellos that build a link-quality graph of the two-hop
//! neighbourhood, and signed route advertisements. A sans-IO state machine, [`Router`].
//!
//! # Protocol
//!
//! - **Discovery** (AODV, RFC 3561, reshaped). [`Router::find_route`] floods a
//!   [`Rreq`] with an expanding ring: TTL 1, 2, 4, … up to `max_hops`
//!   (default 10), then `rreq_retries` more floods at `max_hops`; each ring waits
//!   `2 · node_traversal_time · (ttl + 2)`. Every node forwards the first copy of a given
//!   `(originator, rreq_id)` and, after it, only copies that arrive with more TTL left than
//!   any before (they came a shorter way and reach further; at most `max_hops` per request),
//!   remembered in a bounded, expiring cache; it learns a reverse route to the originator
//!   from every copy. Only the destination answers, with a
//!   [`Rrep`] carrying a fresh sequence number, unicast back along the
//!   reverse routes. A lost link or an unreachable destination is reported by a
//!   [`Rerr`] to the *precursors* — the neighbours this node advertised the
//!   route to. A relay handed a data packet it has no route for answers the neighbour it
//!   came from with a [`Rerr`] (RFC 3561 §6.11 case (ii), at most `rerr_rate_limit` per
//!   second; [`Router::handle_unroutable`]), which travels back along the precursors so the
//!   source rediscovers at once. Intermediate nodes do not answer for the destination.
//! - **Loop freedom** (Babel, RFC 8966 §3.5). Every route advertisement carries the
//!   destination's sequence number `s` and the sender's metric `m`. Each node keeps, per
//!   destination, a *feasibility distance* `FD = (seqno, metric)`: the best pair it has
//!   itself advertised. A received `(s, m)` is *feasible* iff there is no FD yet, or
//!   `s > FD.seqno`, or `s == FD.seqno` and `m < FD.metric`. Only feasible advertisements
//!   may be selected, and a node only ever advertises its selected route. Along any chain of
//!   next hops the FDs then strictly decrease, so next-hop pointers never form a cycle — at
//!   every instant, whatever messages are lost, delayed or reordered (plain RFC 3561 is not
//!   loop-free). An FD is kept until every advertisement that could have been derived from
//!   it is stale (`route_timeout` plus `max_clock_skew` after its `issued_at`), so forgetting
//!   it never breaks the argument. Among feasible candidates the router prefers the newest
//!   sequence number, then the lowest metric.
//! - **Hellos.** Every `hello_interval` (jittered) a node sends each neighbour a
//!   [`Hello`] with its own signed advertisement and, for up to
//!   [`MAX_HELLO_LINKS`] neighbours, the measured RTT and loss of
//!   the link and (when its route to that neighbour is the direct link) that neighbour's
//!   advertisement and the metric. Receivers learn one- and two-hop routes (alternates for
//!   local repair) and a [`LinkGraph`] of their two-hop neighbourhood, over which
//!   [`Router::best_path`] runs Dijkstra (`petgraph`).
//! - **Local repair.** When a link goes down (or a RERR or expiry removes a route) and
//!   another feasible candidate exists, the router switches to it without any message.
//!   Otherwise the route is lost: a RERR goes to its precursors and, if the destination was
//!   asked for by [`Router::find_route`] within `route_timeout`, discovery starts again.
//! - **Nodes that do not relay** ([`RouterConfig::relay`] false: setting `relay_enabled`
//!   off, `relay_bandwidth` 0, or a saturated relay budget) forward no one else's route
//!   requests or replies and announce no routes in their hellos, so no neighbour learns a
//!   route through them and discoveries between other nodes find paths around them. They
//!   still discover routes for themselves and answer requests for themselves. A data packet
//!   such a node refuses to relay is answered with a RERR to the neighbour it came from
//!   ([`Router::handle_refused`]), which withdraws routes learned through it before.
//! - **Expiry.** A route lives `route_timeout` (default 300 s) from the moment the
//!   destination signed its advertisement (`issued_at`, or the moment of receipt if that
//!   is earlier). Hellos refresh one- and two-hop routes; longer routes are refreshed by
//!   discovery.
//!
//! # Metric
//!
//! A link costs `hop_cost + ⌈10 · rtt_ms / (1 − loss)²⌉` (see [`link_cost`]): one unit is
//! 0.1 ms of round-trip time, `hop_cost` defaults to 100 (10 ms), RTT is capped at 60 s and
//! loss clamped to `[0, 0.9]`. A route's metric is the sum over its links. Loss is punished
//! quadratically because a lost packet costs a retransmission on each end-to-end attempt;
//! the hop cost keeps many fast hops from beating a few slightly slower ones. So a path of
//! three clean 10 ms links (600) beats two 10 ms links at 50 % loss (1000).
//!
//! # Price
//!
//! Every route advertisement also carries the sender's **price** for carrying traffic to
//! the destination, in milli-tokens per MB (issue 7, pay-per-forward; see
//! [`crate::ledger`]): the price of the sender's selected route (what its next hop
//! advertised, 0 when the next hop is the destination) plus the sender's own fee, set by
//! the driver with [`Router::set_fee`]. A node advertising itself — its hello, a request it
//! originates, a reply it sends as the destination — advertises 0. The router keeps the
//! price with each candidate ([`Router::advertised_price`]) and shows the selected one as
//! [`Route::price`]: along O – R1 – R2 – D with fees f1 and f2, O's route to D costs
//! `f1 + f2`, R1's `f2` and R2's 0. A fee change reaches the neighbours with the next hello
//! (two-hop routes) and the next discovery (longer ones). Price plays **no part in route
//! selection**, which stays as described above, so loop freedom is untouched. Like the
//! metric, the price is not signed; the ledger pays a relay at most what it advertised.
//!
//! # Security
//!
//! A route advertisement ([`SignedAdvert`]) is signed by the node it is about, in the
//! [`SignatureDomain::RouteAdvertisement`](crate::SignatureDomain::RouteAdvertisement)
//! domain, over `(node, seqno, issued_at)`. The metric, the price and the path are added
//! hop by hop and are **not** signed: a relay can lie about how good its route is (as in
//! any distance-vector protocol; end-to-end delivery measurement is what catches it), but
//! it cannot invent a destination, a fresher sequence number or a later expiry.
//! Advertisements with a bad signature (or signed by another key) are dropped and counted
//! (`adverts_forged`, plus a [`RouteEvent::PeerMisbehaved`] against the relaying
//! neighbour); so are replays — older `(seqno, issued_at)` than the newest one seen for that
//! node (`adverts_replayed`) — and advertisements whose `issued_at` is older than
//! `route_timeout` or more than `max_clock_skew` in the future (`adverts_stale`). A RERR is
//! not signed: it only withdraws routes learned from its sender, which that sender could
//! equally break by dropping packets.
//!
//! Sequence numbers start from the clock (`max(previous + 1, now in ms)`), so a node that
//! restarts with a sane clock continues above every number it issued before.
//!
//! # Files
//!
//! - [`config`] — [`RouterConfig`], every default in one place;
//! - [`metric`] — link measurements and [`link_cost`];
//! - [`advert`] — [`SignedAdvert`];
//! - [`message`] — the wire protocol, [`encode`]/[`decode`];
//! - [`graph`] — the link-quality graph and its Dijkstra;
//! - [`table`] — per-destination state (candidates, feasibility distance, precursors),
//!   laid out compactly, and the public [`Route`];
//! - [`router`] — the [`Router`] state machine (its run loop is documented there);
//! - [`header`] — the fixed header of forwarded data packets.

pub mod advert;
pub mod config;
pub mod graph;
pub mod header;
pub mod message;
pub mod metric;
pub mod router;
pub mod table;

#[cfg(test)]
mod tests;

pub use crate::dht::time::Timestamp;
pub use advert::SignedAdvert;
pub use config::{RouteConfigError, RouterConfig};
pub use graph::{GraphEdge, GraphPath, LinkGraph};
pub use header::{HeaderError, PacketHeader, HEADER_LEN, HEADER_VERSION};
pub use message::{
    decode, encode, Announcement, Hello, HelloLink, Rerr, RouteMessage, Rrep, Rreq, Unreachable,
    WireError, MAX_HELLO_LINKS, MAX_MESSAGE_LEN, MAX_PATH_LEN, MAX_RERR_ENTRIES,
};
pub use metric::{link_cost, LinkQuality, METRIC_INFINITY};
pub use router::{
    DiscoveryFailure, FindRouteError, LinkError, RouteCounters, RouteEvent, RouteLookup, Router,
};
pub use table::{FeasibilityDistance, Route};
