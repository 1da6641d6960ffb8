//! The routing scenario: hundreds to thousands of real [`Router`]s on a line, a ring, a
//! grid or a random geometric graph, discovering routes for flows of packets while links
//! fail.
//!
//! # The simulator
//!
//! As in [`dht`](crate::dht): one priority queue of `(time, seq, event)` over a `Vec` of
//! routers. Events are message deliveries, router wake-ups and scenario steps (a flow
//! starts, a flow sends a packet, a link fails, a loop audit). After every input to a
//! router its transmits go through the link model, its events are handled and its
//! [`poll_timeout`](Router::poll_timeout) is scheduled unless an earlier wake-up is
//! pending. `seq` breaks ties in insertion order and every collection whose order matters
//! is a `Vec` or a `BTreeMap`, so a run is a pure function of its configuration.
//!
//! # Topologies
//!
//! - [`Topology::Line`]: node `i` linked to `i + 1`.
//! - [`Topology::Ring`]: the line plus a link from the last node to the first.
//! - [`Topology::Grid`]: nodes row by row on a `⌈√N⌉`-wide grid (the last row may be
//!   partial), each linked to its right and lower neighbour.
//! - [`Topology::RandomGeometric`]: `N` points uniform in the unit square, linked when
//!   closer than `r = 1.2 · √(2 ln N / (π N))` (about 1.7 times the connectivity
//!   threshold, a mean degree near `2.9 ln N`). If the graph is not connected, only its
//!   largest component is simulated (ties: the one with the lowest-numbered node); the
//!   others are counted in [`TopologyStats::nodes_dropped`].
//!
//! A link the routers cannot take (one end already has
//! [`max_neighbours`](RouterConfig::max_neighbours)) is left out and counted in
//! [`TopologyStats::links_refused`]. Each node's key pair comes from a ChaCha RNG seeded by
//! the configuration's seed; the RNGs of the routers are seeded from it too.
//!
//! # Link model
//!
//! Each link has a one-way latency drawn once, uniformly in
//! `latency_min_ms..=latency_max_ms`; each routing message is lost with probability
//! `loss`, and messages in flight on a link that is cut are lost. The routers are told the
//! truth about their links: round-trip time twice the latency, loss `loss`. Messages on one
//! link arrive in the order they were sent.
//!
//! # The scenario
//!
//! 1. **Warm-up.** All links come up at time 0 ([`Router::link_up`] on both ends) and the
//!    routers exchange hellos for `warmup_ms`.
//! 2. **Traffic.** During the next `duration_ms`, `flows` flows start at evenly spaced
//!    times. A flow picks a random source and a destination (see [`FlowEndpoints`]; by
//!    default uniform among the nodes at most `max_hops` hops away on the live topology)
//!    and calls [`Router::find_route`]. When the route is known (at once, or at
//!    [`RouteEvent::RouteFound`] or [`RouteEvent::RouteFailed`]) it sends its first packet,
//!    then one every `packet_interval_ms`, `packets_per_flow` in all. Before each packet
//!    the source calls `find_route` again, as a real driver does before sending (which
//!    also restarts a failed discovery). Meanwhile links fail at evenly spaced times (see
//!    [`LinkFailures`]): a random live link is cut and both ends get
//!    [`Router::link_down`]; cut links stay down.
//! 3. **Drain.** The run ends when the last flow has sent its last packet (and the traffic
//!    phase is over). A bound of the traffic phase plus the longest possible discovery,
//!    a flow's sending time and a minute stops a run whose flows never finish; they are
//!    counted in [`RouteSimReport::flows_unfinished`].
//!
//! Data packets are not messages: a packet is *walked* from its source along
//! [`Router::next_hop`] pointers at the instant it is sent, over the live topology, and
//! is delivered when the walk reaches the destination. It is dropped when a node on the way
//! has no next hop (or, which would be a bug, names a neighbour it has no live link to),
//! and is a loop when the walk comes back to a node it visited. The walk measures the
//! forwarding state the routers hold, independent of the loss of routing messages.
//!
//! # What is measured
//!
//! See the fields of [`RouteSimReport`]. In short: `delivery_ratio` is the fraction of
//! packets delivered among those whose destination was, at the moment they were sent,
//! reachable within `max_hops` hops on the live topology; `route_stretch_*` compare the
//! hops a delivered packet walked with the shortest path in hops (breadth-first search on
//! the live topology); `cost_stretch_*` do the same with the routers' own metric
//! ([`link_cost`]) against Dijkstra's cheapest path; `loops_detected` counts walks that
//! revisited a node plus cycles found by the **loop audit**, which every
//! `audit_interval_ms` (and right after every link failure) follows the next-hop pointers
//! of every node towards every source and destination of the flows running and looks for
//! a cycle. It must be 0: the feasibility condition makes next-hop pointers loop-free at
//! every instant.
//!
//! [`link_cost`]: meshcore_proto::route::link_cost

use crate::queue::EventQueue;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::fmt;
use std::time::{Duration, Instant};

use meshcore_proto::route::{
    encode, LinkQuality, RouteConfigError, RouteEvent, RouteLookup, RouteMessage, Router,
    RouterConfig, Timestamp,
};
use meshcore_proto::{NodeId, NodeKeypair};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// The shape of the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topology {
    /// A chain: node `i` is linked to node `i + 1`.
    Line,
    /// A chain closed into a cycle.
    Ring,
    /// A `⌈√N⌉`-wide grid, each node linked to its right and lower neighbour.
    Grid,
    /// Random points in the unit square, linked within a radius chosen for connectivity.
    RandomGeometric,
}

impl fmt::Display for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Line => "line",
            Self::Ring => "ring",
            Self::Grid => "grid",
            Self::RandomGeometric => "random-geometric",
        })
    }
}

/// How many links are cut during the traffic phase.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LinkFailures {
    /// This many links (at most all of them).
    Count(usize),
    /// This fraction of the links present at the start, 0.0 to 1.0, rounded.
    Fraction(f64),
}

/// How a flow picks its destination, given a random source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FlowEndpoints {
    /// Uniform among the nodes at most `max_hops` hops from the source on the live
    /// topology: every flow can be served (unless links fail).
    WithinMaxHops,
    /// Uniform among all nodes reachable from the source. On a topology wider than
    /// `max_hops` many flows cannot be served, and their discoveries fail, as they
    /// should; `delivery_ratio_all` shows how many.
    AnyReachable,
}

/// The scenario, topology and link model. [`RouteSimConfig::new`] sets every default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct RouteSimConfig {
    /// The shape of the network (no default: an argument of [`RouteSimConfig::new`]).
    pub topology: Topology,
    /// Nodes asked for (no default). A random geometric graph may simulate fewer: only its
    /// largest connected component.
    pub nodes: usize,
    /// Seed of every random choice: positions, keys, latencies, losses, flows, failures
    /// (no default).
    pub seed: u64,
    /// Links cut during the traffic phase (default none).
    pub link_failures: LinkFailures,
    /// Flows started during the traffic phase (default 100). Each discovery floods up to
    /// the whole network, so on a dense 1,000-node graph a flow costs about half a second
    /// of wall-clock time in a release build; more than a few new flows per simulated
    /// second also meet the routers' `rreq_rate_limit`.
    pub flows: usize,
    /// How flows pick their destination (default [`FlowEndpoints::WithinMaxHops`]).
    pub endpoints: FlowEndpoints,
    /// Packets each flow sends (default 10).
    pub packets_per_flow: u32,
    /// Time between two packets of a flow (default 1 s).
    pub packet_interval_ms: u64,
    /// Smallest one-way link latency (default 1 ms).
    pub latency_min_ms: u64,
    /// Largest one-way link latency (default 20 ms).
    pub latency_max_ms: u64,
    /// Probability that a routing message is lost (default 0.005).
    pub loss: f64,
    /// Hellos only, before the first flow (default 12 s: two hello rounds and more).
    pub warmup_ms: u64,
    /// The traffic phase, over which flow starts and link failures are spread
    /// (default 30 s).
    pub duration_ms: u64,
    /// Time between two loop audits (default 1 s).
    pub audit_interval_ms: u64,
    /// The routers' configuration (default [`RouterConfig::new`]); each router's
    /// `rng_seed` is replaced by one drawn from `seed`.
    pub router: RouterConfig,
}

impl RouteSimConfig {
    /// The defaults for a `topology` of `nodes` nodes and `seed`.
    pub fn new(topology: Topology, nodes: usize, seed: u64) -> Self {
        Self {
            topology,
            nodes,
            seed,
            link_failures: LinkFailures::Count(0),
            flows: 100,
            endpoints: FlowEndpoints::WithinMaxHops,
            packets_per_flow: 10,
            packet_interval_ms: 1_000,
            latency_min_ms: 1,
            latency_max_ms: 20,
            loss: 0.005,
            warmup_ms: 12_000,
            duration_ms: 30_000,
            audit_interval_ms: 1_000,
            router: RouterConfig::new(0),
        }
    }

    /// Checks the values, naming the first field that does not make sense.
    pub fn validate(&self) -> Result<(), RouteSimError> {
        let invalid = |field, reason| Err(RouteSimError::InvalidConfig { field, reason });
        if self.nodes < 2 {
            return invalid("nodes", "must be at least 2");
        }
        if u32::try_from(self.nodes).is_err() {
            return invalid("nodes", "must fit in 32 bits");
        }
        if u32::try_from(self.flows).is_err() {
            return invalid("flows", "must fit in 32 bits");
        }
        if let LinkFailures::Fraction(fraction) = self.link_failures {
            if !(0.0..=1.0).contains(&fraction) {
                return invalid("link_failures", "a fraction is from 0.0 to 1.0");
            }
        }
        if self.packets_per_flow == 0 {
            return invalid("packets_per_flow", "must be positive");
        }
        if self.packet_interval_ms == 0 {
            return invalid("packet_interval_ms", "must be positive");
        }
        if self.latency_min_ms > self.latency_max_ms {
            return invalid("latency_min_ms", "must not exceed latency_max_ms");
        }
        if self.latency_max_ms > 60_000 {
            return invalid("latency_max_ms", "must be at most 60000");
        }
        if !(0.0..1.0).contains(&self.loss) {
            return invalid("loss", "must be from 0.0 to below 1.0");
        }
        if self.audit_interval_ms == 0 {
            return invalid("audit_interval_ms", "must be positive");
        }
        self.router.validate().map_err(RouteSimError::Router)
    }
}

/// Why a configuration cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteSimError {
    /// A field of [`RouteSimConfig`] is out of range.
    #[error("invalid route simulation setting `{field}`: {reason}")]
    InvalidConfig {
        /// The field.
        field: &'static str,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The routers' configuration is invalid.
    #[error(transparent)]
    Router(#[from] RouteConfigError),
}

/// The network as simulated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TopologyStats {
    /// Its shape.
    pub kind: Topology,
    /// Nodes simulated.
    pub nodes: usize,
    /// Nodes outside the largest connected component, not simulated (random geometric
    /// graphs only; otherwise 0).
    pub nodes_dropped: usize,
    /// Links at the start.
    pub links: usize,
    /// Links left out because an end had `max_neighbours` links already.
    pub links_refused: usize,
    /// Mean number of links per node at the start.
    pub mean_degree: f64,
    /// Most links of one node at the start.
    pub max_degree: usize,
    /// Longest shortest path in hops at the start, by repeated double sweeps of
    /// breadth-first search: exact for the line, the ring and the grid, a lower bound
    /// (usually tight) for a random geometric graph.
    pub diameter_hops: u32,
    /// The connection radius of a random geometric graph, in units of the square's side.
    pub radius: Option<f64>,
}

/// What a run measured. Identical for identical configurations, except `wall_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RouteSimReport {
    /// The network.
    pub topology: TopologyStats,
    /// The seed.
    pub seed: u64,
    /// Routing message loss probability.
    pub loss: f64,
    /// Smallest one-way link latency.
    pub latency_min_ms: u64,
    /// Largest one-way link latency.
    pub latency_max_ms: u64,
    /// The routers' `max_hops`.
    pub max_hops: u8,
    /// How flows picked their destination.
    pub endpoints: FlowEndpoints,
    /// Links cut during the run.
    pub links_cut: u64,
    /// Flows started.
    pub flows: u64,
    /// Flows for which no destination could be picked (the source was cut off), not
    /// started and not in `flows`.
    pub flows_unplaced: u64,
    /// Mean shortest distance in hops between a flow's endpoints when it started.
    pub flow_distance_hops_mean: f64,
    /// Flows whose destination was more than `max_hops` hops away when they started
    /// (possible with [`FlowEndpoints::AnyReachable`] only).
    pub flows_beyond_max_hops: u64,
    /// Flows whose source had a route when the flow started (one or two hops away, learned
    /// from hellos, or from an earlier discovery), so no discovery was needed.
    pub routes_known_at_start: u64,
    /// Flows that had to discover their route.
    pub discoveries: u64,
    /// Of those, how many ended with [`RouteEvent::RouteFound`].
    pub discoveries_succeeded: u64,
    /// Median simulated time from a flow's `find_route` to its `RouteFound`, over the
    /// discoveries that succeeded.
    pub discovery_latency_ms_median: u64,
    /// 99th percentile of the same.
    pub discovery_latency_ms_p99: u64,
    /// Packets sent by all flows.
    pub packets_sent: u64,
    /// Packets whose destination was reachable within `max_hops` hops on the live topology
    /// when they were sent.
    pub packets_with_path: u64,
    /// Packets delivered.
    pub packets_delivered: u64,
    /// Packets with a path that were delivered, divided by `packets_with_path`.
    pub delivery_ratio: f64,
    /// `packets_delivered / packets_sent`, whether a path existed or not.
    pub delivery_ratio_all: f64,
    /// Packets not delivered because the source had no route when sending.
    pub packets_no_route_at_source: u64,
    /// Packets dropped on the way: a node after the source had no next hop.
    pub packets_dropped_in_transit: u64,
    /// Median of `hops walked / shortest hops` over delivered packets (1.0 is a shortest
    /// path; the routers optimise their metric, not hops, so it can exceed 1.0 by design).
    pub route_stretch_median: f64,
    /// 99th percentile of the same.
    pub route_stretch_p99: f64,
    /// Mean of the same.
    pub route_stretch_mean: f64,
    /// Median of `metric of the walked path / metric of the cheapest path` over delivered
    /// packets, the metric being the routers' own
    /// [`link_cost`](meshcore_proto::route::link_cost) summed over links, and the cheapest
    /// path found by Dijkstra on the live topology without a hop limit (so it is a lower
    /// bound of what a route within `max_hops` can cost).
    pub cost_stretch_median: f64,
    /// 99th percentile of the same.
    pub cost_stretch_p99: f64,
    /// Median hops walked by delivered packets.
    pub path_hops_median: u32,
    /// 99th percentile of the same.
    pub path_hops_p99: u32,
    /// Routing loops seen: packet walks that came back to a node they had visited, plus
    /// cycles of next-hop pointers found by the loop audits. Must be 0.
    pub loops_detected: u64,
    /// Next-hop pointers naming a neighbour without a live link, seen by walks and audits.
    /// Must be 0: the simulator reports every cut to both ends at once.
    pub dead_next_hops: u64,
    /// Destinations audited for loops (one audit of one destination follows the next-hop
    /// pointers of every node).
    pub loop_audits: u64,
    /// Routing messages sent by all routers (delivered or lost).
    pub control_messages: u64,
    /// `control_messages / nodes / simulated_seconds`, warm-up included.
    pub control_messages_per_node_per_second: f64,
    /// Encoded bytes of those messages per node per simulated second.
    pub control_bytes_per_node_per_second: f64,
    /// Hellos sent.
    pub hellos_sent: u64,
    /// Route requests sent (each copy to each neighbour counts).
    pub rreqs_sent: u64,
    /// Route replies sent (originated and forwarded).
    pub rreps_sent: u64,
    /// Route errors sent.
    pub rerrs_sent: u64,
    /// Routing messages lost by the link model or on cut links.
    pub messages_lost: u64,
    /// Route requests the routers did not send because of `rreq_rate_limit`.
    pub rreqs_rate_limited: u64,
    /// Routes switched to an alternate without a message (local repair), all routers.
    pub local_repairs: u64,
    /// Selected routes lost with no alternate, all routers.
    pub routes_lost: u64,
    /// [`RouteEvent::PeerMisbehaved`] events. Must be 0: every simulated router is honest.
    pub misbehaviour_reports: u64,
    /// Messages and events the routers dropped because a queue was full.
    pub queue_drops: u64,
    /// Flows that had not sent all their packets when the run hit its time bound (the
    /// end of the traffic phase plus the longest discovery, the flow's sending time and a
    /// minute). Must be 0: every discovery ends.
    pub flows_unfinished: u64,
    /// Simulated time of the run, warm-up included.
    pub simulated_seconds: f64,
    /// Wall-clock time of the run (the only nondeterministic field).
    pub wall_seconds: f64,
}

/// Runs the scenario, calling `progress(done, total)` as packets are sent, and times it on
/// the wall clock.
pub fn run_route(
    config: &RouteSimConfig,
    progress: impl FnMut(u64, u64),
) -> Result<RouteSimReport, RouteSimError> {
    // The single wall-clock read of the simulator, outside the simulation proper.
    let started = Instant::now();
    let mut report = simulate_route(config, progress)?;
    report.wall_seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Runs the scenario without reading any clock; `wall_seconds` is 0.
pub fn simulate_route(
    config: &RouteSimConfig,
    progress: impl FnMut(u64, u64),
) -> Result<RouteSimReport, RouteSimError> {
    config.validate()?;
    let mut simulation = Simulation::new(config, progress)?;
    simulation.run();
    Ok(simulation.report())
}

// ---- topology ----

/// A link of the simulated network.
#[derive(Debug, Clone, Copy)]
struct Edge {
    ends: [u32; 2],
    latency_ms: u32,
    /// The routers' metric of this link, as
    /// [`link_cost`](meshcore_proto::route::link_cost) computes it.
    cost: u32,
    alive: bool,
}

/// An undirected graph: its links and, per node, `(neighbour, link)` pairs of live links.
#[derive(Debug, Default)]
struct Graph {
    edges: Vec<Edge>,
    adjacency: Vec<Vec<(u32, u32)>>,
}

impl Graph {
    fn with_nodes(nodes: usize) -> Self {
        Self {
            edges: Vec::new(),
            adjacency: vec![Vec::new(); nodes],
        }
    }

    fn nodes(&self) -> usize {
        self.adjacency.len()
    }

    fn degree(&self, node: u32) -> usize {
        self.adjacency[node as usize].len()
    }

    /// Adds the link `a`–`b` unless an end has `max_degree` links; returns whether it did.
    fn add(&mut self, a: u32, b: u32, max_degree: usize) -> bool {
        if self.degree(a) >= max_degree || self.degree(b) >= max_degree {
            return false;
        }
        let edge = self.edges.len() as u32;
        self.edges.push(Edge {
            ends: [a, b],
            latency_ms: 0,
            cost: 0,
            alive: true,
        });
        self.adjacency[a as usize].push((b, edge));
        self.adjacency[b as usize].push((a, edge));
        true
    }

    fn cut(&mut self, edge: u32) {
        let Edge { ends: [a, b], .. } = self.edges[edge as usize];
        self.edges[edge as usize].alive = false;
        self.adjacency[a as usize].retain(|(_, e)| *e != edge);
        self.adjacency[b as usize].retain(|(_, e)| *e != edge);
    }

    /// The live link from `node` to the neighbour with id `to`, if there is one.
    fn link_to(&self, ids: &[NodeId], node: u32, to: &NodeId) -> Option<(u32, u32)> {
        self.adjacency[node as usize]
            .iter()
            .find(|(neighbour, _)| ids[*neighbour as usize] == *to)
            .copied()
    }
}

/// The graph built for a configuration, before keys and latencies.
struct BuiltTopology {
    graph: Graph,
    nodes_dropped: usize,
    links_refused: usize,
    radius: Option<f64>,
}

fn build_topology(
    topology: Topology,
    nodes: usize,
    max_degree: usize,
    rng: &mut ChaCha8Rng,
) -> BuiltTopology {
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    let mut radius = None;
    let mut kept = nodes;
    let n = nodes as u32;
    match topology {
        Topology::Line => pairs.extend((1..n).map(|i| (i - 1, i))),
        Topology::Ring => {
            pairs.extend((1..n).map(|i| (i - 1, i)));
            if n >= 3 {
                pairs.push((n - 1, 0));
            }
        }
        Topology::Grid => {
            let width = grid_width(nodes) as u32;
            for i in 0..n {
                if (i % width) + 1 < width && i + 1 < n {
                    pairs.push((i, i + 1));
                }
                if i + width < n {
                    pairs.push((i, i + width));
                }
            }
        }
        Topology::RandomGeometric => {
            let (geometric, r) = random_geometric(nodes, rng);
            radius = Some(r);
            let (component, component_pairs) = largest_component(nodes, &geometric);
            kept = component;
            pairs = component_pairs;
        }
    }
    let mut graph = Graph::with_nodes(kept);
    let mut links_refused = 0;
    for (a, b) in pairs {
        if !graph.add(a, b, max_degree) {
            links_refused += 1;
        }
    }
    BuiltTopology {
        graph,
        nodes_dropped: nodes - kept,
        links_refused,
        radius,
    }
}

/// The width of a grid of `nodes` nodes: `⌈√nodes⌉`.
fn grid_width(nodes: usize) -> usize {
    let mut width = (nodes as f64).sqrt() as usize;
    while width * width < nodes {
        width += 1;
    }
    width.max(1)
}

/// Random points in the unit square and the pairs closer than the connection radius,
/// sorted; and that radius.
fn random_geometric(nodes: usize, rng: &mut ChaCha8Rng) -> (Vec<(u32, u32)>, f64) {
    let n = nodes as f64;
    let radius = 1.2 * (2.0 * n.ln() / (std::f64::consts::PI * n)).sqrt();
    let points: Vec<(f64, f64)> = (0..nodes).map(|_| (unit(rng), unit(rng))).collect();
    // Bucket the points into cells at least `radius` wide: only neighbouring cells can hold
    // linked pairs.
    let cells = ((1.0 / radius) as usize).clamp(1, 4096);
    let cell_of = |x: f64| ((x * cells as f64) as usize).min(cells - 1);
    let mut buckets: Vec<Vec<u32>> = vec![Vec::new(); cells * cells];
    for (i, (x, y)) in points.iter().enumerate() {
        buckets[cell_of(*y) * cells + cell_of(*x)].push(i as u32);
    }
    let mut pairs = Vec::new();
    for (i, (x, y)) in points.iter().enumerate() {
        let (cx, cy) = (cell_of(*x), cell_of(*y));
        for ny in cy.saturating_sub(1)..=(cy + 1).min(cells - 1) {
            for nx in cx.saturating_sub(1)..=(cx + 1).min(cells - 1) {
                for &j in &buckets[ny * cells + nx] {
                    let (jx, jy) = points[j as usize];
                    if (j as usize) > i && (x - jx).hypot(y - jy) < radius {
                        pairs.push((i as u32, j));
                    }
                }
            }
        }
    }
    pairs.sort_unstable();
    (pairs, radius)
}

/// A uniform number in `[0, 1)` with 53 random bits.
fn unit(rng: &mut ChaCha8Rng) -> f64 {
    (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// The size of the largest connected component of the graph on `nodes` nodes with links
/// `pairs` (ties: the one holding the lowest node), and its links renumbered densely in
/// node order.
fn largest_component(nodes: usize, pairs: &[(u32, u32)]) -> (usize, Vec<(u32, u32)>) {
    let mut adjacency = vec![Vec::new(); nodes];
    for &(a, b) in pairs {
        adjacency[a as usize].push(b);
        adjacency[b as usize].push(a);
    }
    let mut component = vec![u32::MAX; nodes];
    let mut sizes = Vec::new();
    for start in 0..nodes {
        if component[start] != u32::MAX {
            continue;
        }
        let label = sizes.len() as u32;
        let mut size = 0;
        let mut queue = VecDeque::from([start as u32]);
        component[start] = label;
        while let Some(node) = queue.pop_front() {
            size += 1;
            for &next in &adjacency[node as usize] {
                if component[next as usize] == u32::MAX {
                    component[next as usize] = label;
                    queue.push_back(next);
                }
            }
        }
        sizes.push(size);
    }
    let mut largest = 0;
    for (label, size) in sizes.iter().enumerate() {
        if *size > sizes[largest] {
            largest = label;
        }
    }
    let mut renumbered = vec![u32::MAX; nodes];
    let mut kept = 0u32;
    for node in 0..nodes {
        if component[node] == largest as u32 {
            renumbered[node] = kept;
            kept += 1;
        }
    }
    let pairs = pairs
        .iter()
        .filter(|(a, _)| component[*a as usize] == largest as u32)
        .map(|(a, b)| (renumbered[*a as usize], renumbered[*b as usize]))
        .collect();
    (kept as usize, pairs)
}

// ---- graph searches, with reusable buffers ----

/// A set of nodes, emptied in O(1) by bumping a generation number.
#[derive(Debug, Default)]
struct Marks {
    generation: u32,
    marks: Vec<u32>,
}

impl Marks {
    fn new(nodes: usize) -> Self {
        Self {
            generation: 1,
            marks: vec![0; nodes],
        }
    }

    fn clear(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        if self.generation == 0 {
            self.marks.fill(0);
            self.generation = 1;
        }
    }

    fn contains(&self, node: u32) -> bool {
        self.marks[node as usize] == self.generation
    }

    fn insert(&mut self, node: u32) {
        self.marks[node as usize] = self.generation;
    }
}

/// Scratch space for searches over the graph.
#[derive(Debug, Default)]
struct Search {
    seen: Marks,
    distance: Vec<u64>,
    queue: VecDeque<u32>,
    heap: BinaryHeap<Reverse<(u64, u32)>>,
}

impl Search {
    fn new(nodes: usize) -> Self {
        Self {
            seen: Marks::new(nodes),
            distance: vec![0; nodes],
            queue: VecDeque::new(),
            heap: BinaryHeap::new(),
        }
    }

    fn reset(&mut self) {
        self.seen.clear();
        self.queue.clear();
        self.heap.clear();
    }

    fn seen(&self, node: u32) -> bool {
        self.seen.contains(node)
    }

    fn visit(&mut self, node: u32, distance: u64) {
        self.seen.insert(node);
        self.distance[node as usize] = distance;
    }

    /// Breadth-first search from `from`, calling `each(node, hops)` for every node reached
    /// within `max_hops` (excluding `from`), until `each` returns `false`.
    fn bfs(
        &mut self,
        graph: &Graph,
        from: u32,
        max_hops: u64,
        mut each: impl FnMut(u32, u64) -> bool,
    ) {
        self.reset();
        self.visit(from, 0);
        self.queue.push_back(from);
        while let Some(node) = self.queue.pop_front() {
            let hops = self.distance[node as usize] + 1;
            if hops > max_hops {
                return;
            }
            for &(next, _) in &graph.adjacency[node as usize] {
                if !self.seen(next) {
                    self.visit(next, hops);
                    if !each(next, hops) {
                        return;
                    }
                    self.queue.push_back(next);
                }
            }
        }
    }

    /// Shortest path in hops from `from` to `to`.
    fn hops(&mut self, graph: &Graph, from: u32, to: u32) -> Option<u64> {
        if from == to {
            return Some(0);
        }
        let mut found = None;
        self.bfs(graph, from, u64::MAX, |node, hops| {
            if node == to {
                found = Some(hops);
            }
            found.is_none()
        });
        found
    }

    /// The farthest node from `from` and its distance in hops.
    fn farthest(&mut self, graph: &Graph, from: u32) -> (u32, u64) {
        let mut farthest = (from, 0);
        self.bfs(graph, from, u64::MAX, |node, hops| {
            if hops > farthest.1 {
                farthest = (node, hops);
            }
            true
        });
        farthest
    }

    /// The cheapest path's metric from `from` to `to` (Dijkstra over the links' costs).
    fn cheapest(&mut self, graph: &Graph, from: u32, to: u32) -> Option<u64> {
        self.reset();
        self.visit(from, 0);
        self.heap.push(Reverse((0, from)));
        while let Some(Reverse((cost, node))) = self.heap.pop() {
            if node == to {
                return Some(cost);
            }
            if cost > self.distance[node as usize] {
                continue;
            }
            for &(next, edge) in &graph.adjacency[node as usize] {
                let through = cost + u64::from(graph.edges[edge as usize].cost);
                if !self.seen(next) || through < self.distance[next as usize] {
                    self.visit(next, through);
                    self.heap.push(Reverse((through, next)));
                }
            }
        }
        None
    }
}

/// The diameter in hops by double sweeps from node 0: exact on trees, cycles and grids.
fn diameter(graph: &Graph, search: &mut Search) -> u32 {
    if graph.nodes() == 0 {
        return 0;
    }
    let mut start = 0;
    let mut best = 0;
    for _ in 0..4 {
        let (far, hops) = search.farthest(graph, start);
        if hops <= best && start != 0 {
            break;
        }
        best = best.max(hops);
        start = far;
    }
    best as u32
}

// ---- following next-hop pointers ----

/// Where a node's next hop towards some destination leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pointer {
    /// The router has no next hop.
    Missing,
    /// A neighbour over a live link.
    Next { node: u32, edge: u32 },
    /// A neighbour without a live link to it.
    Dead,
}

/// Where `node`'s router sends packets for `destination`.
fn pointer_of(
    nodes: &[SimNode],
    graph: &Graph,
    ids: &[NodeId],
    node: u32,
    destination: &NodeId,
) -> Pointer {
    match nodes[node as usize].router.next_hop(destination) {
        None => Pointer::Missing,
        Some(next) => match graph.link_to(ids, node, &next) {
            Some((node, edge)) => Pointer::Next { node, edge },
            None => Pointer::Dead,
        },
    }
}

/// Where a packet walk ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Walk {
    Delivered { hops: u64, cost: u64 },
    NoRouteAtSource,
    DroppedInTransit,
    DeadNextHop,
    Loop,
}

/// Follows `pointer` from `source` until `destination`, a missing or dead pointer, or a
/// node visited before; `edge_cost` gives the metric of a link.
fn walk_pointers(
    source: u32,
    destination: u32,
    visited: &mut Marks,
    edge_cost: impl Fn(u32) -> u64,
    pointer: impl Fn(u32) -> Pointer,
) -> Walk {
    visited.clear();
    visited.insert(source);
    let mut node = source;
    let (mut hops, mut cost) = (0, 0);
    while node != destination {
        match pointer(node) {
            Pointer::Missing if node == source => return Walk::NoRouteAtSource,
            Pointer::Missing => return Walk::DroppedInTransit,
            Pointer::Dead => return Walk::DeadNextHop,
            Pointer::Next { node: next, edge } => {
                if visited.contains(next) {
                    return Walk::Loop;
                }
                visited.insert(next);
                hops += 1;
                cost += edge_cost(edge);
                node = next;
            }
        }
    }
    Walk::Delivered { hops, cost }
}

/// Follows the pointers of every one of `nodes` nodes towards `destination`, each node
/// once: a chain ends at the destination, at a missing or dead pointer, or at a node whose
/// chain is known to end; coming back to a node of the chain being followed is a cycle.
/// Returns the cycles and the dead pointers found; `state` is scratch space.
fn audit_pointers(
    nodes: usize,
    destination: u32,
    state: &mut Vec<u8>,
    pointer: impl Fn(u32) -> Pointer,
) -> (u64, u64) {
    const UNKNOWN: u8 = 0;
    const ON_CHAIN: u8 = 1;
    const ENDS: u8 = 2;
    state.clear();
    state.resize(nodes, UNKNOWN);
    let (mut cycles, mut dead) = (0, 0);
    let mut chain = Vec::new();
    for start in 0..nodes as u32 {
        chain.clear();
        let mut node = start;
        loop {
            match state[node as usize] {
                ENDS => break,
                ON_CHAIN => {
                    cycles += 1;
                    break;
                }
                _ => {}
            }
            state[node as usize] = ON_CHAIN;
            chain.push(node);
            if node == destination {
                break;
            }
            match pointer(node) {
                Pointer::Missing => break,
                Pointer::Dead => {
                    dead += 1;
                    break;
                }
                Pointer::Next { node: next, .. } => node = next,
            }
        }
        for node in &chain {
            state[*node as usize] = ENDS;
        }
    }
    (cycles, dead)
}

// ---- the simulation ----

#[derive(Debug)]
enum SimEvent {
    Deliver {
        to: u32,
        from: u32,
        edge: u32,
        /// Boxed so queue entries stay small while messages are in flight.
        message: Box<RouteMessage>,
    },
    Wake {
        node: u32,
    },
    FlowStart,
    Packet {
        flow: u32,
    },
    LinkFailure,
    Audit,
}

/// One virtual node.
struct SimNode {
    router: Router,
    /// The wake-up in the queue for this node, or `Timestamp::MAX`.
    scheduled_wake: Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlowState {
    /// Waiting for its first route.
    Discovering,
    /// Sending packets.
    Sending,
    /// All packets sent.
    Done,
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    source: u32,
    destination: u32,
    started_at: Timestamp,
    state: FlowState,
    packets_sent: u32,
}

/// Totals gathered during the run.
#[derive(Debug, Default)]
struct Tally {
    flows_unplaced: u64,
    flow_distance_sum: u64,
    flows_beyond_max_hops: u64,
    routes_known_at_start: u64,
    discoveries: u64,
    discoveries_succeeded: u64,
    discovery_latencies_ms: Vec<u64>,
    packets_sent: u64,
    packets_with_path: u64,
    packets_delivered: u64,
    packets_delivered_with_path: u64,
    packets_no_route_at_source: u64,
    packets_dropped_in_transit: u64,
    route_stretch: Vec<f64>,
    cost_stretch: Vec<f64>,
    path_hops: Vec<u32>,
    loops_detected: u64,
    dead_next_hops: u64,
    loop_audits: u64,
    control_messages: u64,
    control_bytes: u64,
    hellos: u64,
    rreqs: u64,
    rreps: u64,
    rerrs: u64,
    messages_lost: u64,
    links_cut: u64,
    misbehaviour_reports: u64,
}

struct Simulation<'a, P: FnMut(u64, u64)> {
    config: &'a RouteSimConfig,
    rng: ChaCha8Rng,
    queue: EventQueue<SimEvent>,
    now: Timestamp,
    ids: Vec<NodeId>,
    nodes: Vec<SimNode>,
    graph: Graph,
    /// Links not cut yet, for uniform sampling.
    live_edges: Vec<u32>,
    search: Search,
    /// Per-node marks for packet walks.
    walk_marks: Marks,
    /// Per-node state of a loop audit.
    audit_state: Vec<u8>,
    flows: Vec<Flow>,
    /// Flows waiting for their first route, by (source, destination).
    waiting: BTreeMap<(u32, NodeId), Vec<u32>>,
    topology: TopologyStats,
    tally: Tally,
    transmit_buffer: Vec<(NodeId, RouteMessage)>,
    event_buffer: Vec<RouteEvent>,
    /// Flows scheduled to start.
    flows_to_start: usize,
    /// Flows that sent all their packets.
    flows_done: usize,
    /// The end of the traffic phase.
    traffic_end: Timestamp,
    /// A bound on the run's simulated time, past which flows count as unfinished.
    end_at: Timestamp,
    progress: P,
    progress_total: u64,
    progress_reported: u64,
}

impl<'a, P: FnMut(u64, u64)> Simulation<'a, P> {
    fn new(config: &'a RouteSimConfig, progress: P) -> Result<Self, RouteSimError> {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let mut key_rng = ChaCha8Rng::seed_from_u64(config.seed ^ 0x6b65_7973);
        let built = build_topology(
            config.topology,
            config.nodes,
            config.router.max_neighbours,
            &mut rng,
        );
        let mut graph = built.graph;
        let hop_cost = config.router.hop_cost;
        let spread = config.latency_max_ms - config.latency_min_ms + 1;
        for edge in &mut graph.edges {
            let latency_ms = config.latency_min_ms + rng.next_u64() % spread;
            edge.latency_ms = latency_ms as u32;
            edge.cost = quality(latency_ms, config.loss).cost(hop_cost);
        }
        let node_count = graph.nodes();
        let mut search = Search::new(node_count);
        let degrees: Vec<usize> = (0..node_count as u32).map(|n| graph.degree(n)).collect();
        let topology = TopologyStats {
            kind: config.topology,
            nodes: node_count,
            nodes_dropped: built.nodes_dropped,
            links: graph.edges.len(),
            links_refused: built.links_refused,
            mean_degree: ratio(degrees.iter().sum::<usize>() as u64, node_count as u64),
            max_degree: degrees.iter().copied().max().unwrap_or(0),
            diameter_hops: diameter(&graph, &mut search),
            radius: built.radius,
        };
        let keypairs: Vec<NodeKeypair> = (0..node_count)
            .map(|_| NodeKeypair::generate(&mut key_rng))
            .collect();
        let ids: Vec<NodeId> = keypairs.iter().map(NodeKeypair::node_id).collect();
        let mut nodes = Vec::with_capacity(node_count);
        for keypair in keypairs {
            let mut router_config = config.router.clone();
            router_config.rng_seed = rng.next_u64();
            nodes.push(SimNode {
                router: Router::new(router_config, keypair, Timestamp::ZERO)?,
                scheduled_wake: Timestamp::MAX,
            });
        }
        let live_edges = (0..graph.edges.len() as u32).collect();
        let flows_to_start = config.flows;
        let mut simulation = Self {
            config,
            rng,
            queue: EventQueue::default(),
            now: Timestamp::ZERO,
            ids,
            nodes,
            graph,
            live_edges,
            search,
            walk_marks: Marks::new(node_count),
            audit_state: Vec::with_capacity(node_count),
            flows: Vec::with_capacity(config.flows),
            waiting: BTreeMap::new(),
            topology,
            tally: Tally::default(),
            transmit_buffer: Vec::new(),
            event_buffer: Vec::new(),
            flows_to_start,
            flows_done: 0,
            traffic_end: Timestamp::from_millis(config.warmup_ms + config.duration_ms),
            end_at: Timestamp::MAX,
            progress,
            progress_total: config.flows as u64 * u64::from(config.packets_per_flow),
            progress_reported: 0,
        };
        simulation.bring_links_up();
        simulation.schedule_scenario();
        Ok(simulation)
    }

    /// Every link comes up at time 0, on both ends.
    fn bring_links_up(&mut self) {
        let now = self.now;
        for edge in &self.graph.edges {
            let quality = quality(u64::from(edge.latency_ms), self.config.loss);
            let [a, b] = edge.ends;
            let (id_a, id_b) = (self.ids[a as usize], self.ids[b as usize]);
            // The topology already respects `max_neighbours`, so neither end refuses.
            let _ = self.nodes[a as usize].router.link_up(now, id_b, quality);
            let _ = self.nodes[b as usize].router.link_up(now, id_a, quality);
        }
        for node in 0..self.nodes.len() as u32 {
            self.flush(node);
        }
    }

    fn schedule_scenario(&mut self) {
        let config = self.config;
        let start = config.warmup_ms;
        let window = config.duration_ms;
        for flow in 0..config.flows as u64 {
            let at = start + window * flow / config.flows as u64;
            self.schedule(Timestamp::from_millis(at), SimEvent::FlowStart);
        }
        let failures = match config.link_failures {
            LinkFailures::Count(count) => count,
            LinkFailures::Fraction(fraction) => {
                (fraction * self.graph.edges.len() as f64).round() as usize
            }
        }
        .min(self.graph.edges.len()) as u64;
        for failure in 0..failures {
            // Midpoints of equal slices of the window.
            let at = start + window * (2 * failure + 1) / (2 * failures);
            self.schedule(Timestamp::from_millis(at), SimEvent::LinkFailure);
        }
        self.schedule(Timestamp::from_millis(start), SimEvent::Audit);
        // The last flow starts before the end of the traffic phase; its first packet goes
        // when its discovery ends, its last one `packets_per_flow - 1` intervals later.
        let sending = config.packet_interval_ms * u64::from(config.packets_per_flow);
        let limit =
            discovery_time_limit(&config.router).saturating_add(Duration::from_millis(sending));
        self.end_at = self
            .traffic_end
            .saturating_add(limit)
            .saturating_add(Duration::from_secs(60));
    }

    fn schedule(&mut self, at: Timestamp, event: SimEvent) {
        self.queue.push(at, event);
    }

    fn run(&mut self) {
        while let Some((at, event)) = self.queue.pop() {
            if at > self.end_at {
                break;
            }
            self.now = at;
            match event {
                SimEvent::Deliver {
                    to,
                    from,
                    edge,
                    message,
                } => {
                    if self.graph.edges[edge as usize].alive {
                        let (now, from_id) = (self.now, self.ids[from as usize]);
                        self.nodes[to as usize]
                            .router
                            .handle_message(now, from_id, *message);
                        self.flush(to);
                    } else {
                        self.tally.messages_lost += 1;
                    }
                }
                SimEvent::Wake { node } => {
                    let now = self.now;
                    let sim_node = &mut self.nodes[node as usize];
                    if sim_node.scheduled_wake != now {
                        continue;
                    }
                    sim_node.scheduled_wake = Timestamp::MAX;
                    sim_node.router.handle_timeout(now);
                    self.flush(node);
                }
                SimEvent::FlowStart => self.start_flow(),
                SimEvent::Packet { flow } => self.send_packet(flow),
                SimEvent::LinkFailure => self.fail_link(),
                SimEvent::Audit => {
                    self.audit();
                    let next = self
                        .now
                        .saturating_add(Duration::from_millis(self.config.audit_interval_ms));
                    self.schedule(next, SimEvent::Audit);
                }
            }
            if self.finished() {
                break;
            }
        }
        self.report_progress(true);
    }

    /// Every flow has started and sent all its packets, and the traffic phase is over.
    fn finished(&self) -> bool {
        self.flows_done + self.tally.flows_unplaced as usize == self.flows_to_start
            && self.now >= self.traffic_end
    }

    // ---- scenario steps ----

    fn start_flow(&mut self) {
        let max_hops = match self.config.endpoints {
            FlowEndpoints::WithinMaxHops => u64::from(self.config.router.max_hops),
            FlowEndpoints::AnyReachable => u64::MAX,
        };
        let mut placed = None;
        let mut candidates = Vec::new();
        for _ in 0..32 {
            let source = self.random_below(self.nodes.len() as u64) as u32;
            candidates.clear();
            self.search
                .bfs(&self.graph, source, max_hops, |node, hops| {
                    candidates.push((node, hops));
                    true
                });
            if !candidates.is_empty() {
                let (destination, hops) =
                    candidates[self.random_below(candidates.len() as u64) as usize];
                placed = Some((source, destination, hops));
                break;
            }
        }
        let Some((source, destination, hops)) = placed else {
            self.tally.flows_unplaced += 1;
            return;
        };
        self.tally.flow_distance_sum += hops;
        if hops > u64::from(self.config.router.max_hops) {
            self.tally.flows_beyond_max_hops += 1;
        }
        let flow = self.flows.len() as u32;
        let now = self.now;
        let destination_id = self.ids[destination as usize];
        let lookup = self.nodes[source as usize]
            .router
            .find_route(now, destination_id);
        let state = match lookup {
            Ok(RouteLookup::Known(_)) => {
                self.tally.routes_known_at_start += 1;
                self.schedule(now, SimEvent::Packet { flow });
                FlowState::Sending
            }
            Ok(RouteLookup::Discovering) => {
                self.tally.discoveries += 1;
                self.waiting
                    .entry((source, destination_id))
                    .or_default()
                    .push(flow);
                FlowState::Discovering
            }
            Err(_) => {
                // The router refused to look (too many discoveries, table full): the
                // discovery failed at once, and the packets find no route.
                self.tally.discoveries += 1;
                self.schedule(now, SimEvent::Packet { flow });
                FlowState::Sending
            }
        };
        self.flows.push(Flow {
            source,
            destination,
            started_at: now,
            state,
            packets_sent: 0,
        });
        self.flush(source);
    }

    fn send_packet(&mut self, flow: u32) {
        let Flow {
            source,
            destination,
            ..
        } = self.flows[flow as usize];
        let now = self.now;
        let destination_id = self.ids[destination as usize];
        // As a real driver does before sending; restarts a discovery that failed.
        let _ = self.nodes[source as usize]
            .router
            .find_route(now, destination_id);
        self.flush(source);

        let shortest = self.search.hops(&self.graph, source, destination);
        let with_path = shortest.is_some_and(|hops| hops <= u64::from(self.config.router.max_hops));
        self.tally.packets_sent += 1;
        self.tally.packets_with_path += u64::from(with_path);
        match self.walk(source, destination) {
            Walk::Delivered { hops, cost } => {
                self.tally.packets_delivered += 1;
                self.tally.packets_delivered_with_path += u64::from(with_path);
                self.tally.path_hops.push(hops as u32);
                if let Some(shortest) = shortest.filter(|hops| *hops > 0) {
                    self.tally.route_stretch.push(hops as f64 / shortest as f64);
                }
                if let Some(cheapest) = self
                    .search
                    .cheapest(&self.graph, source, destination)
                    .filter(|cost| *cost > 0)
                {
                    self.tally.cost_stretch.push(cost as f64 / cheapest as f64);
                }
            }
            Walk::NoRouteAtSource => self.tally.packets_no_route_at_source += 1,
            Walk::DroppedInTransit => self.tally.packets_dropped_in_transit += 1,
            Walk::DeadNextHop => self.tally.dead_next_hops += 1,
            Walk::Loop => self.tally.loops_detected += 1,
        }

        let state = &mut self.flows[flow as usize];
        state.packets_sent += 1;
        if state.packets_sent < self.config.packets_per_flow {
            state.state = FlowState::Sending;
            let next = now.saturating_add(Duration::from_millis(self.config.packet_interval_ms));
            self.schedule(next, SimEvent::Packet { flow });
        } else {
            state.state = FlowState::Done;
            self.flows_done += 1;
        }
        self.report_progress(false);
    }

    /// Follows next-hop pointers from `source` towards `destination` over live links.
    fn walk(&mut self, source: u32, destination: u32) -> Walk {
        let (nodes, graph, ids) = (&self.nodes, &self.graph, &self.ids);
        let destination_id = ids[destination as usize];
        walk_pointers(
            source,
            destination,
            &mut self.walk_marks,
            |edge| u64::from(graph.edges[edge as usize].cost),
            |node| pointer_of(nodes, graph, ids, node, &destination_id),
        )
    }

    fn fail_link(&mut self) {
        if self.live_edges.is_empty() {
            return;
        }
        let index = self.random_below(self.live_edges.len() as u64) as usize;
        let edge = self.live_edges.swap_remove(index);
        self.graph.cut(edge);
        self.tally.links_cut += 1;
        let [a, b] = self.graph.edges[edge as usize].ends;
        let now = self.now;
        let (id_a, id_b) = (self.ids[a as usize], self.ids[b as usize]);
        self.nodes[a as usize].router.link_down(now, id_b);
        self.nodes[b as usize].router.link_down(now, id_a);
        self.flush(a);
        self.flush(b);
        self.audit();
    }

    /// Looks for cycles of next-hop pointers towards every endpoint of the running flows.
    fn audit(&mut self) {
        let mut targets: Vec<u32> = self
            .flows
            .iter()
            .filter(|flow| flow.state != FlowState::Done)
            .flat_map(|flow| [flow.source, flow.destination])
            .collect();
        targets.sort_unstable();
        targets.dedup();
        for target in targets {
            self.audit_destination(target);
        }
    }

    /// Looks for cycles of next-hop pointers towards `destination`.
    fn audit_destination(&mut self, destination: u32) {
        let (nodes, graph, ids) = (&self.nodes, &self.graph, &self.ids);
        let destination_id = ids[destination as usize];
        let (cycles, dead) =
            audit_pointers(nodes.len(), destination, &mut self.audit_state, |node| {
                pointer_of(nodes, graph, ids, node, &destination_id)
            });
        self.tally.loop_audits += 1;
        self.tally.loops_detected += cycles;
        self.tally.dead_next_hops += dead;
    }

    fn random_below(&mut self, bound: u64) -> u64 {
        self.rng.next_u64() % bound.max(1)
    }

    // ---- plumbing ----

    /// Sends a router's transmits through the link model, handles its events and schedules
    /// its next wake-up.
    fn flush(&mut self, node: u32) {
        let mut transmits = std::mem::take(&mut self.transmit_buffer);
        let mut events = std::mem::take(&mut self.event_buffer);
        let wake = {
            let router = &mut self.nodes[node as usize].router;
            while let Some(transmit) = router.poll_transmit() {
                transmits.push(transmit);
            }
            while let Some(event) = router.poll_event() {
                events.push(event);
            }
            router.poll_timeout()
        };
        for (to, message) in transmits.drain(..) {
            self.send(node, &to, message);
        }
        self.transmit_buffer = transmits;
        for event in events.drain(..) {
            self.on_event(node, event);
        }
        self.event_buffer = events;
        if let Some(wake) = wake {
            let wake = wake.max(self.now);
            if wake < self.nodes[node as usize].scheduled_wake {
                self.nodes[node as usize].scheduled_wake = wake;
                self.schedule(wake, SimEvent::Wake { node });
            }
        }
    }

    fn send(&mut self, from: u32, to: &NodeId, message: RouteMessage) {
        let tally = &mut self.tally;
        tally.control_messages += 1;
        tally.control_bytes += encode(&message).len() as u64;
        match &message {
            RouteMessage::Hello(_) => tally.hellos += 1,
            RouteMessage::Rreq(_) => tally.rreqs += 1,
            RouteMessage::Rrep(_) => tally.rreps += 1,
            RouteMessage::Rerr(_) => tally.rerrs += 1,
        }
        let Some((to, edge)) = self.graph.link_to(&self.ids, from, to) else {
            // Addressed to a node without a live link: the link is gone.
            self.tally.messages_lost += 1;
            return;
        };
        if unit(&mut self.rng) < self.config.loss {
            self.tally.messages_lost += 1;
            return;
        }
        let latency = u64::from(self.graph.edges[edge as usize].latency_ms);
        let at = self.now.saturating_add(Duration::from_millis(latency));
        self.schedule(
            at,
            SimEvent::Deliver {
                to,
                from,
                edge,
                message: Box::new(message),
            },
        );
    }

    fn on_event(&mut self, node: u32, event: RouteEvent) {
        match event {
            RouteEvent::RouteFound { destination, .. } => {
                if let Some(flows) = self.waiting.remove(&(node, destination)) {
                    for flow in flows {
                        let started_at = self.flows[flow as usize].started_at;
                        let latency = self.now.saturating_duration_since(started_at);
                        self.tally.discoveries_succeeded += 1;
                        self.tally
                            .discovery_latencies_ms
                            .push(latency.as_millis() as u64);
                        self.schedule(self.now, SimEvent::Packet { flow });
                    }
                }
            }
            RouteEvent::RouteFailed { destination, .. } => {
                if let Some(flows) = self.waiting.remove(&(node, destination)) {
                    for flow in flows {
                        self.schedule(self.now, SimEvent::Packet { flow });
                    }
                }
            }
            RouteEvent::PeerMisbehaved { .. } => self.tally.misbehaviour_reports += 1,
            // Counted by the routers themselves.
            RouteEvent::RouteRepaired { .. } | RouteEvent::RouteLost { .. } => {}
        }
    }

    fn report_progress(&mut self, force: bool) {
        let done = self.tally.packets_sent;
        let step = (self.progress_total / 200).max(1);
        if force || done >= self.progress_reported + step {
            self.progress_reported = done;
            (self.progress)(done.min(self.progress_total), self.progress_total);
        }
    }

    fn report(&mut self) -> RouteSimReport {
        let tally = &mut self.tally;
        tally.discovery_latencies_ms.sort_unstable();
        tally.route_stretch.sort_unstable_by(f64::total_cmp);
        tally.cost_stretch.sort_unstable_by(f64::total_cmp);
        tally.path_hops.sort_unstable();
        let (mut rreqs_rate_limited, mut local_repairs, mut routes_lost, mut queue_drops) =
            (0, 0, 0, 0);
        for node in &self.nodes {
            let counters = node.router.counters();
            rreqs_rate_limited += counters.rreqs_rate_limited;
            local_repairs += counters.local_repairs;
            routes_lost += counters.routes_lost;
            queue_drops += counters.transmits_dropped + counters.events_dropped;
        }
        let seconds = self.now.as_millis() as f64 / 1000.0;
        let per_node_second = |total: u64| {
            if seconds > 0.0 {
                total as f64 / self.topology.nodes.max(1) as f64 / seconds
            } else {
                0.0
            }
        };
        let flows = self.flows.len() as u64;
        RouteSimReport {
            topology: self.topology.clone(),
            seed: self.config.seed,
            loss: self.config.loss,
            latency_min_ms: self.config.latency_min_ms,
            latency_max_ms: self.config.latency_max_ms,
            max_hops: self.config.router.max_hops,
            endpoints: self.config.endpoints,
            links_cut: tally.links_cut,
            flows,
            flows_unplaced: tally.flows_unplaced,
            flow_distance_hops_mean: ratio(tally.flow_distance_sum, flows),
            flows_beyond_max_hops: tally.flows_beyond_max_hops,
            routes_known_at_start: tally.routes_known_at_start,
            discoveries: tally.discoveries,
            discoveries_succeeded: tally.discoveries_succeeded,
            discovery_latency_ms_median: percentile(&tally.discovery_latencies_ms, 0.5),
            discovery_latency_ms_p99: percentile(&tally.discovery_latencies_ms, 0.99),
            packets_sent: tally.packets_sent,
            packets_with_path: tally.packets_with_path,
            packets_delivered: tally.packets_delivered,
            delivery_ratio: ratio(tally.packets_delivered_with_path, tally.packets_with_path),
            delivery_ratio_all: ratio(tally.packets_delivered, tally.packets_sent),
            packets_no_route_at_source: tally.packets_no_route_at_source,
            packets_dropped_in_transit: tally.packets_dropped_in_transit,
            route_stretch_median: percentile(&tally.route_stretch, 0.5),
            route_stretch_p99: percentile(&tally.route_stretch, 0.99),
            route_stretch_mean: mean(&tally.route_stretch),
            cost_stretch_median: percentile(&tally.cost_stretch, 0.5),
            cost_stretch_p99: percentile(&tally.cost_stretch, 0.99),
            path_hops_median: percentile(&tally.path_hops, 0.5),
            path_hops_p99: percentile(&tally.path_hops, 0.99),
            loops_detected: tally.loops_detected,
            dead_next_hops: tally.dead_next_hops,
            loop_audits: tally.loop_audits,
            control_messages: tally.control_messages,
            control_messages_per_node_per_second: per_node_second(tally.control_messages),
            control_bytes_per_node_per_second: per_node_second(tally.control_bytes),
            hellos_sent: tally.hellos,
            rreqs_sent: tally.rreqs,
            rreps_sent: tally.rreps,
            rerrs_sent: tally.rerrs,
            messages_lost: tally.messages_lost,
            rreqs_rate_limited,
            local_repairs,
            routes_lost,
            misbehaviour_reports: tally.misbehaviour_reports,
            queue_drops,
            flows_unfinished: (self.flows.len() - self.flows_done) as u64,
            simulated_seconds: seconds,
            wall_seconds: 0.0,
        }
    }
}

/// The longest a discovery can run: every ring of the expanding ring, then the retries at
/// `max_hops`, each waiting its ring timeout.
fn discovery_time_limit(router: &RouterConfig) -> Duration {
    let mut ttl = router.ring_initial_ttl;
    let mut total = router.ring_timeout(ttl);
    while ttl < router.max_hops {
        ttl = ttl.saturating_mul(2).min(router.max_hops);
        total = total.saturating_add(router.ring_timeout(ttl));
    }
    let retries = router
        .ring_timeout(router.max_hops)
        .saturating_mul(u32::from(router.rreq_retries));
    total.saturating_add(retries)
}

/// What the routers are told about a link of one-way latency `latency_ms`.
fn quality(latency_ms: u64, loss: f64) -> LinkQuality {
    LinkQuality::new(Duration::from_millis(2 * latency_ms), loss)
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
    }
}

fn mean(values: &[f64]) -> f64 {
    if values.is_empty() {
        0.0
    } else {
        values.iter().sum::<f64>() / values.len() as f64
    }
}

/// The value at quantile `q` of sorted `values` (nearest rank), or the default if empty.
fn percentile<T: Copy + Default>(sorted: &[T], q: f64) -> T {
    if sorted.is_empty() {
        return T::default();
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn graph_of(topology: Topology, nodes: usize) -> BuiltTopology {
        build_topology(
            topology,
            nodes,
            64,
            &mut ChaCha8Rng::seed_from_u64(nodes as u64),
        )
    }

    #[test]
    fn fixed_topologies_have_the_expected_shape() {
        let mut search = Search::new(100);
        let line = graph_of(Topology::Line, 100).graph;
        assert_eq!(line.edges.len(), 99);
        assert_eq!(diameter(&line, &mut search), 99);
        let ring = graph_of(Topology::Ring, 100).graph;
        assert_eq!(ring.edges.len(), 100);
        assert_eq!(diameter(&ring, &mut search), 50);
        let grid = graph_of(Topology::Grid, 100).graph;
        assert_eq!(grid.edges.len(), 2 * 10 * 9);
        assert_eq!(diameter(&grid, &mut search), 18);
        // A partial last row stays connected.
        let partial = graph_of(Topology::Grid, 23).graph;
        assert_eq!(grid_width(23), 5);
        let mut search = Search::new(23);
        assert_eq!(search.hops(&partial, 0, 22), Some(4 + 2));
        assert_eq!(graph_of(Topology::Ring, 2).graph.edges.len(), 1);
    }

    #[test]
    fn random_geometric_graphs_keep_one_connected_component() {
        let built = graph_of(Topology::RandomGeometric, 300);
        let graph = &built.graph;
        assert_eq!(graph.nodes() + built.nodes_dropped, 300);
        let mut search = Search::new(graph.nodes());
        let mut reached = 0;
        search.bfs(graph, 0, u64::MAX, |_, _| {
            reached += 1;
            true
        });
        assert_eq!(reached + 1, graph.nodes(), "connected");
        let radius = built.radius.unwrap_or_default();
        assert!(radius > 0.1 && radius < 0.2, "radius {radius}");
    }

    #[test]
    fn largest_component_renumbers_densely() {
        // Components {0, 2} and {1, 3, 4}.
        let (kept, pairs) = largest_component(5, &[(0, 2), (1, 3), (3, 4)]);
        assert_eq!(kept, 3);
        assert_eq!(pairs, vec![(0, 1), (1, 2)]);
    }

    #[test]
    fn dijkstra_prefers_cheap_links_over_few_hops() {
        let mut graph = Graph::with_nodes(3);
        graph.add(0, 2, 8);
        graph.add(0, 1, 8);
        graph.add(1, 2, 8);
        for (edge, cost) in graph.edges.iter_mut().zip([1_000, 200, 300]) {
            edge.cost = cost;
        }
        let mut search = Search::new(3);
        assert_eq!(search.cheapest(&graph, 0, 2), Some(500));
        assert_eq!(search.hops(&graph, 0, 2), Some(1));
        graph.cut(1);
        assert_eq!(search.cheapest(&graph, 0, 2), Some(1_000));
        graph.cut(0);
        assert_eq!(search.cheapest(&graph, 0, 2), None);
        assert_eq!(search.hops(&graph, 0, 2), None);
    }

    /// Pointers from a table: `Some(next)` over link 0, `None` missing.
    fn table(next: &[Option<u32>]) -> impl Fn(u32) -> Pointer + '_ {
        |node| match next[node as usize] {
            Some(next) => Pointer::Next {
                node: next,
                edge: 0,
            },
            None => Pointer::Missing,
        }
    }

    #[test]
    fn walks_deliver_drop_and_catch_loops() {
        let mut marks = Marks::new(5);
        let cost = |_| 7;
        // 0 → 1 → 2 → 3 (destination); 4 has nothing.
        let chain = [Some(1), Some(2), Some(3), None, None];
        let walk = |marks: &mut Marks, source, next: &[Option<u32>]| {
            walk_pointers(source, 3, marks, cost, table(next))
        };
        assert_eq!(
            walk(&mut marks, 0, &chain),
            Walk::Delivered { hops: 3, cost: 21 }
        );
        assert_eq!(walk(&mut marks, 4, &chain), Walk::NoRouteAtSource);
        // 0 → 1 → 4, and 4 has nothing.
        let broken = [Some(1), Some(4), Some(3), None, None];
        assert_eq!(walk(&mut marks, 0, &broken), Walk::DroppedInTransit);
        // 0 → 1 → 2 → 0.
        let looping = [Some(1), Some(2), Some(0), None, None];
        assert_eq!(walk(&mut marks, 0, &looping), Walk::Loop);
        assert_eq!(
            walk_pointers(0, 3, &mut marks, cost, |_| Pointer::Dead),
            Walk::DeadNextHop
        );
    }

    #[test]
    fn the_audit_finds_every_cycle_once() {
        let mut state = Vec::new();
        // A tree towards 0: no cycle.
        let tree = [None, Some(0), Some(1), Some(1), Some(3), None];
        assert_eq!(audit_pointers(6, 0, &mut state, table(&tree)), (0, 0));
        // 1 → 2 → 3 → 1, with 4 and 5 leading into it: one cycle, seen once.
        let cycle = [None, Some(2), Some(3), Some(1), Some(1), Some(4)];
        assert_eq!(audit_pointers(6, 0, &mut state, table(&cycle)), (1, 0));
        // Two separate cycles and a self-loop.
        let cycles = [Some(0), Some(2), Some(1), Some(4), Some(3), Some(5)];
        assert_eq!(audit_pointers(6, 1, &mut state, table(&cycles)), (3, 0));
        let dead = |node| {
            if node == 2 {
                Pointer::Dead
            } else {
                table(&tree)(node)
            }
        };
        assert_eq!(audit_pointers(6, 0, &mut state, dead), (0, 1));
    }

    #[test]
    fn invalid_settings_are_named() {
        let mut config = RouteSimConfig::new(Topology::Line, 1, 1);
        assert_eq!(
            config.validate(),
            Err(RouteSimError::InvalidConfig {
                field: "nodes",
                reason: "must be at least 2"
            })
        );
        config.nodes = 10;
        config.loss = 1.0;
        assert!(matches!(
            config.validate(),
            Err(RouteSimError::InvalidConfig { field: "loss", .. })
        ));
        config.loss = 0.0;
        config.router.max_hops = 0;
        assert!(matches!(config.validate(), Err(RouteSimError::Router(_))));
    }

    #[test]
    fn a_tiny_line_delivers_without_loops() {
        let mut config = RouteSimConfig::new(Topology::Line, 12, 3);
        config.flows = 10;
        config.duration_ms = 10_000;
        let report = simulate_route(&config, |_, _| {}).expect("valid config");
        assert_eq!(report.flows, 10);
        assert_eq!(report.packets_sent, 100);
        assert_eq!(report.loops_detected, 0);
        assert!(report.delivery_ratio >= 0.9, "{report:?}");
    }
}
