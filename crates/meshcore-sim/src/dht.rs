//! The DHT scenario: thousands of [`DhtNode`]s joining, storing values, looking them up,
//! and (optionally) coming and going.
//!
//! # The simulator
//!
//! One priority queue of `(time, seq, event)` drives a `Vec` of nodes. Events are message
//! deliveries, node wake-ups and scenario steps (join, put, lookup, churn). After every
//! input to a node, its transmits are routed through the link model, its events are
//! recorded, and its [`poll_timeout`](DhtNode::poll_timeout) is scheduled as a wake-up
//! unless an earlier one is pending. Popping the queue therefore always steps to the
//! earliest of the pending deliveries and the nodes' timeouts, as quinn's `Pair::step`
//! does for two endpoints, without scanning every node. `seq` breaks ties in insertion
//! order, so the run is a pure function of the configuration.
//!
//! **Link model.** Each node has an access delay drawn once, uniformly in
//! `0..=access_delay_ms`; a message takes `base_latency_ms + access(from) + access(to) +
//! jitter` with jitter uniform in `0..=jitter_ms`, and is lost with probability `loss`.
//! Messages to a node that has left are lost.
//!
//! # The scenario
//!
//! 1. **Join.** Node `i` joins at `i × join_interval_ms`: it learns `bootstrap_contacts`
//!    random nodes among those already joined and runs [`DhtNode::bootstrap`] (a
//!    self-lookup). There is no global warm-up: routing tables hold only what the protocol
//!    itself taught each node.
//! 2. **Store.** After a pause, `lookups` values (32 random bytes each, immutable records)
//!    are put by random nodes (FIND_VALUE mode only).
//! 3. **Look up**, one every `lookup_interval_ms`, from a random live node:
//!    - [`LookupKind::FindValue`]: FIND_VALUE for a random stored value; success = the
//!      value came back.
//!    - [`LookupKind::FindNode`]: FIND_NODE for the id of a random live node; success = the
//!      lookup found that node: some node named it in an answer (or the origin already
//!      knew it), as reported by [`DhtEvent::FindNodeFinished`]'s `found`.
//!
//!    Meanwhile `churn × nodes` nodes are replaced at evenly spaced times: a random live
//!    node leaves silently and a fresh node (new id) joins as in step 1. Nodes with a
//!    lookup in flight (as origin or FIND_NODE target) are not chosen to leave.
//!
//! **Hops** are the lookup path length as defined in [`meshcore_proto::dht::lookup`]: the
//! number of sequential request rounds until the node that delivered the result was
//! reached (a node from the origin's own routing table is hop 1). **Messages per lookup**
//! counts the requests the lookup sent plus the answers it received. **Latency** is the
//! simulated time from the command to its result event.

use crate::queue::EventQueue;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use meshcore_proto::dht::{
    DhtConfig, DhtEvent, DhtNode, Key, Message, QueryId, QueryStats, Record, Timestamp,
};
use meshcore_proto::{NodeId, NodeKeypair};
use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

/// What the measured lookups look for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum LookupKind {
    /// FIND_VALUE for a value stored earlier by a random node.
    FindValue,
    /// FIND_NODE for a random live node's id.
    FindNode,
}

/// The scenario and link model. [`DhtSimConfig::new`] sets every default.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct DhtSimConfig {
    /// Nodes in the network (default 1,000).
    pub nodes: usize,
    /// Seed of every random choice (default 1).
    pub seed: u64,
    /// Fraction of nodes replaced during the lookup phase, 0.0 to 1.0 (default 0.0).
    pub churn: f64,
    /// Measured lookups (default 1,000).
    pub lookups: usize,
    /// What they look for (default [`LookupKind::FindValue`]).
    pub lookup_kind: LookupKind,
    /// Probability that a message is lost (default 0.005).
    pub loss: f64,
    /// Fixed part of every one-way latency (default 10 ms).
    pub base_latency_ms: u64,
    /// Largest per-node access delay (default 40 ms).
    pub access_delay_ms: u64,
    /// Largest per-message jitter (default 10 ms).
    pub jitter_ms: u64,
    /// Nodes a joining node knows (default 3).
    pub bootstrap_contacts: usize,
    /// Time between two joins (default 5 ms).
    pub join_interval_ms: u64,
    /// Time between two measured lookups, and between two puts (default 10 ms).
    pub lookup_interval_ms: u64,
    /// Per-request timeout of the nodes (default 2 s; the daemon's default is 5 s).
    pub request_timeout_ms: u64,
}

impl DhtSimConfig {
    /// The defaults for `nodes` nodes and `seed`.
    pub fn new(nodes: usize, seed: u64) -> Self {
        Self {
            nodes,
            seed,
            churn: 0.0,
            lookups: 1_000,
            lookup_kind: LookupKind::FindValue,
            loss: 0.005,
            base_latency_ms: 10,
            access_delay_ms: 40,
            jitter_ms: 10,
            bootstrap_contacts: 3,
            join_interval_ms: 5,
            lookup_interval_ms: 10,
            request_timeout_ms: 2_000,
        }
    }
}

/// What a run measured. Identical for identical configurations, except `wall_seconds`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DhtSimReport {
    /// Nodes in the network.
    pub nodes: usize,
    /// The seed.
    pub seed: u64,
    /// Fraction of nodes replaced.
    pub churn: f64,
    /// Message loss probability.
    pub loss: f64,
    /// What the lookups looked for.
    pub lookup_kind: LookupKind,
    /// Lookups measured (a lookup still running at the end of the run counts as failed).
    pub lookups: u64,
    /// Lookups that succeeded (see the module doc).
    pub lookups_succeeded: u64,
    /// `lookups_succeeded / lookups`.
    pub lookup_success_rate: f64,
    /// Median lookup path length of successful lookups.
    pub hops_median: u32,
    /// 99th percentile lookup path length of successful lookups.
    pub hops_p99: u32,
    /// Mean lookup path length of successful lookups.
    pub hops_mean: f64,
    /// `hop_histogram[h]`: successful lookups of path length `h`.
    pub hop_histogram: Vec<u64>,
    /// Mean requests sent plus answers received per lookup.
    pub messages_per_lookup: f64,
    /// Median simulated lookup latency, successful lookups.
    pub latency_ms_median: u64,
    /// 99th percentile simulated lookup latency, successful lookups.
    pub latency_ms_p99: u64,
    /// Values put (FIND_VALUE mode) and how many were stored on at least one other node.
    pub values_stored: u64,
    /// Nodes that left and were replaced.
    pub nodes_replaced: u64,
    /// Bootstraps that completed.
    pub joins_completed: u64,
    /// Mean routing table size of live nodes at the end.
    pub routing_table_mean: f64,
    /// Messages delivered.
    pub messages_delivered: u64,
    /// Messages lost (by the link model or to departed nodes).
    pub messages_lost: u64,
    /// Simulated time of the run.
    pub simulated_seconds: f64,
    /// Wall-clock time of the run (the only nondeterministic field).
    pub wall_seconds: f64,
}

/// Runs the scenario, calling `progress(done, total)` as joins, puts and lookups complete,
/// and times it on the wall clock.
pub fn run_dht(config: &DhtSimConfig, progress: impl FnMut(u64, u64)) -> DhtSimReport {
    // The single wall-clock read of the simulator, outside the simulation proper.
    let started = Instant::now();
    let mut report = simulate_dht(config, progress);
    report.wall_seconds = started.elapsed().as_secs_f64();
    report
}

/// Runs the scenario without reading any clock; `wall_seconds` is 0.
pub fn simulate_dht(config: &DhtSimConfig, progress: impl FnMut(u64, u64)) -> DhtSimReport {
    let mut simulation = Simulation::new(config, progress);
    simulation.run();
    simulation.report()
}

#[derive(Debug)]
enum SimEvent {
    Deliver {
        to: u32,
        from: NodeId,
        /// Boxed so queue entries stay small while messages are in flight.
        message: Box<Message>,
    },
    Wake {
        node: u32,
    },
    Join {
        node: u32,
    },
    Put {
        value: u32,
    },
    Lookup,
    Churn,
}

/// One virtual node.
struct SimNode {
    id: NodeId,
    /// `None` before it joins and after it leaves.
    dht: Option<DhtNode>,
    access_delay_ms: u16,
    /// The wake-up in the queue for this node, or `Timestamp::MAX`.
    scheduled_wake: Timestamp,
    /// Lookups in flight that involve this node (as origin or target).
    busy: u16,
}

/// A measured lookup in flight.
struct PendingLookup {
    /// The FIND_NODE target's index, or the value's key.
    target: LookupTarget,
}

enum LookupTarget {
    Node(u32),
    Value,
}

struct LookupResult {
    succeeded: bool,
    stats: QueryStats,
}

struct Simulation<'a, P: FnMut(u64, u64)> {
    config: &'a DhtSimConfig,
    dht_config: DhtConfig,
    rng: ChaCha8Rng,
    key_rng: ChaCha8Rng,
    queue: EventQueue<SimEvent>,
    now: Timestamp,
    nodes: Vec<SimNode>,
    index_of: HashMap<NodeId, u32>,
    /// Indexes of live (joined, not departed) nodes, for uniform sampling.
    live: Vec<u32>,
    /// Position of each node in `live`, or `u32::MAX`.
    live_position: Vec<u32>,
    values: Vec<Key>,
    values_stored: Vec<Key>,
    pending_puts: HashMap<(u32, QueryId), u32>,
    pending_lookups: HashMap<(u32, QueryId), PendingLookup>,
    results: Vec<LookupResult>,
    lookups_started: usize,
    /// Simulated time after which the run stops; lookups still running then failed.
    end_at: Timestamp,
    joins_completed: u64,
    puts_completed: u64,
    nodes_replaced: u64,
    messages_delivered: u64,
    messages_lost: u64,
    transmit_buffer: Vec<(NodeId, Message)>,
    progress: P,
    progress_total: u64,
    progress_reported: u64,
}

impl<'a, P: FnMut(u64, u64)> Simulation<'a, P> {
    fn new(config: &'a DhtSimConfig, progress: P) -> Self {
        let mut dht_config = DhtConfig::new(0);
        dht_config.request_timeout = Duration::from_millis(config.request_timeout_ms);
        dht_config.query_timeout = Duration::from_millis(config.request_timeout_ms * 15);
        let puts = match config.lookup_kind {
            LookupKind::FindValue => config.lookups,
            LookupKind::FindNode => 0,
        };
        let replaced = (config.churn.clamp(0.0, 1.0) * config.nodes as f64).round() as usize;
        let mut simulation = Self {
            config,
            dht_config,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            key_rng: ChaCha8Rng::seed_from_u64(config.seed ^ 0x6b65_7973),
            queue: EventQueue::default(),
            now: Timestamp::ZERO,
            nodes: Vec::with_capacity(config.nodes + replaced),
            index_of: HashMap::with_capacity(config.nodes + replaced),
            live: Vec::with_capacity(config.nodes),
            live_position: Vec::with_capacity(config.nodes + replaced),
            values: Vec::with_capacity(puts),
            values_stored: Vec::with_capacity(puts),
            pending_puts: HashMap::new(),
            pending_lookups: HashMap::new(),
            results: Vec::with_capacity(config.lookups),
            lookups_started: 0,
            end_at: Timestamp::MAX,
            joins_completed: 0,
            puts_completed: 0,
            nodes_replaced: 0,
            messages_delivered: 0,
            messages_lost: 0,
            transmit_buffer: Vec::new(),
            progress,
            progress_total: (config.nodes + replaced + puts + config.lookups) as u64,
            progress_reported: 0,
        };
        simulation.schedule_scenario(puts, replaced);
        simulation
    }

    fn schedule_scenario(&mut self, puts: usize, replaced: usize) {
        for _ in 0..self.config.nodes {
            let node = self.create_node();
            let at = Timestamp::from_millis(u64::from(node) * self.config.join_interval_ms);
            self.schedule(at, SimEvent::Join { node });
        }
        // Give the last bootstraps time to finish before measuring.
        let settle = self.config.request_timeout_ms * 10;
        let joined = self.config.nodes as u64 * self.config.join_interval_ms + settle;
        for value in 0..puts {
            let at = joined + value as u64 * self.config.lookup_interval_ms;
            self.schedule(
                Timestamp::from_millis(at),
                SimEvent::Put {
                    value: value as u32,
                },
            );
        }
        let lookups_start = joined + puts as u64 * self.config.lookup_interval_ms + settle;
        for lookup in 0..self.config.lookups {
            let at = lookups_start + lookup as u64 * self.config.lookup_interval_ms;
            self.schedule(Timestamp::from_millis(at), SimEvent::Lookup);
        }
        let window = self.config.lookups as u64 * self.config.lookup_interval_ms;
        // Every query ends within its query timeout; allow that twice over.
        let query_timeout = self.dht_config.query_timeout.as_millis() as u64;
        self.end_at = Timestamp::from_millis(lookups_start + window + 2 * query_timeout);
        for churn in 0..replaced {
            let at = lookups_start + window * churn as u64 / replaced as u64;
            self.schedule(Timestamp::from_millis(at), SimEvent::Churn);
        }
    }

    /// Creates a node that has not joined yet.
    fn create_node(&mut self) -> u32 {
        let index = self.nodes.len() as u32;
        let id = NodeKeypair::generate(&mut self.key_rng).node_id();
        let access_delay_ms = (self.rng.next_u64() % (self.config.access_delay_ms + 1)) as u16;
        self.nodes.push(SimNode {
            id,
            dht: None,
            access_delay_ms,
            scheduled_wake: Timestamp::MAX,
            busy: 0,
        });
        self.index_of.insert(id, index);
        self.live_position.push(u32::MAX);
        index
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
                SimEvent::Deliver { to, from, message } => {
                    let now = self.now;
                    if let Some(dht) = self.nodes[to as usize].dht.as_mut() {
                        self.messages_delivered += 1;
                        dht.handle_message(now, from, *message);
                        self.flush(to);
                    } else {
                        self.messages_lost += 1;
                    }
                }
                SimEvent::Wake { node } => {
                    let now = self.now;
                    let sim_node = &mut self.nodes[node as usize];
                    if sim_node.scheduled_wake != now {
                        continue;
                    }
                    sim_node.scheduled_wake = Timestamp::MAX;
                    if let Some(dht) = sim_node.dht.as_mut() {
                        dht.handle_timeout(now);
                        self.flush(node);
                    }
                }
                SimEvent::Join { node } => self.join(node),
                SimEvent::Put { value } => self.put(value),
                SimEvent::Lookup => self.lookup(),
                SimEvent::Churn => self.churn(),
            }
            if self.results.len() == self.config.lookups
                && self.lookups_started == self.config.lookups
            {
                break;
            }
        }
        self.report_progress(true);
    }

    fn join(&mut self, node: u32) {
        let mut dht_config = self.dht_config.clone();
        dht_config.rng_seed = self.rng.next_u64();
        let id = self.nodes[node as usize].id;
        let Ok(mut dht) = DhtNode::new(dht_config, id, self.now) else {
            return;
        };
        for _ in 0..self.config.bootstrap_contacts.min(self.live.len()) {
            let contact = self.random_live();
            dht.add_peer(self.now, self.nodes[contact as usize].id);
        }
        dht.bootstrap(self.now);
        self.nodes[node as usize].dht = Some(dht);
        self.live_position[node as usize] = self.live.len() as u32;
        self.live.push(node);
        self.flush(node);
    }

    fn put(&mut self, value: u32) {
        if self.live.is_empty() {
            return;
        }
        let mut bytes = vec![0u8; 32];
        self.rng.fill_bytes(&mut bytes);
        let expires_at = self.now.saturating_add(Duration::from_secs(6 * 3600));
        let Ok(record) = Record::immutable(bytes, expires_at) else {
            return;
        };
        self.values.push(record.key());
        let origin = self.random_live();
        let now = self.now;
        if let Some(dht) = self.nodes[origin as usize].dht.as_mut() {
            let query = dht.put(now, record);
            self.pending_puts.insert((origin, query), value);
            self.flush(origin);
        }
    }

    fn lookup(&mut self) {
        self.lookups_started += 1;
        let origin = self.random_live();
        let now = self.now;
        let (target, key) = match self.config.lookup_kind {
            LookupKind::FindValue if !self.values_stored.is_empty() => {
                let index = self.rng.next_u64() % self.values_stored.len() as u64;
                (LookupTarget::Value, self.values_stored[index as usize])
            }
            LookupKind::FindValue => {
                // Nothing was stored: the lookup fails by definition.
                self.results.push(LookupResult {
                    succeeded: false,
                    stats: QueryStats::default(),
                });
                return;
            }
            LookupKind::FindNode => {
                let mut target = self.random_live();
                while target == origin && self.live.len() > 1 {
                    target = self.random_live();
                }
                self.nodes[target as usize].busy += 1;
                (
                    LookupTarget::Node(target),
                    Key::for_node(&self.nodes[target as usize].id),
                )
            }
        };
        let Some(dht) = self.nodes[origin as usize].dht.as_mut() else {
            self.results.push(LookupResult {
                succeeded: false,
                stats: QueryStats::default(),
            });
            return;
        };
        let query = match target {
            LookupTarget::Value => dht.get(now, key),
            LookupTarget::Node(_) => dht.find_node(now, key),
        };
        self.nodes[origin as usize].busy += 1;
        self.pending_lookups
            .insert((origin, query), PendingLookup { target });
        self.flush(origin);
    }

    fn churn(&mut self) {
        if self.live.len() < 2 {
            return;
        }
        // A node with a measured lookup in flight stays; try a few others.
        let mut leaver = None;
        for _ in 0..16 {
            let candidate = self.random_live();
            if self.nodes[candidate as usize].busy == 0 {
                leaver = Some(candidate);
                break;
            }
        }
        let Some(leaver) = leaver else {
            return;
        };
        self.leave(leaver);
        let fresh = self.create_node();
        self.nodes_replaced += 1;
        self.join(fresh);
    }

    fn leave(&mut self, node: u32) {
        self.nodes[node as usize].dht = None;
        let position = self.live_position[node as usize] as usize;
        self.live.swap_remove(position);
        if let Some(&moved) = self.live.get(position) {
            self.live_position[moved as usize] = position as u32;
        }
        self.live_position[node as usize] = u32::MAX;
    }

    fn random_live(&mut self) -> u32 {
        let index = self.rng.next_u64() % self.live.len().max(1) as u64;
        self.live.get(index as usize).copied().unwrap_or(0)
    }

    /// Routes a node's transmits, records its events and schedules its next wake-up.
    fn flush(&mut self, node: u32) {
        let mut transmits = std::mem::take(&mut self.transmit_buffer);
        let mut events = Vec::new();
        let (from, wake) = {
            let sim_node = &mut self.nodes[node as usize];
            let Some(dht) = sim_node.dht.as_mut() else {
                self.transmit_buffer = transmits;
                return;
            };
            while let Some(transmit) = dht.poll_transmit() {
                transmits.push(transmit);
            }
            while let Some(event) = dht.poll_event() {
                events.push(event);
            }
            (sim_node.id, dht.poll_timeout())
        };
        for (to, message) in transmits.drain(..) {
            self.route(node, from, to, message);
        }
        self.transmit_buffer = transmits;
        for event in events {
            self.on_event(node, event);
        }
        if let Some(wake) = wake {
            let wake = wake.max(self.now);
            if wake < self.nodes[node as usize].scheduled_wake {
                self.nodes[node as usize].scheduled_wake = wake;
                self.schedule(wake, SimEvent::Wake { node });
            }
        }
    }

    fn route(&mut self, from_index: u32, from: NodeId, to: NodeId, message: Message) {
        let Some(&to_index) = self.index_of.get(&to) else {
            self.messages_lost += 1;
            return;
        };
        let lost = (self.rng.next_u64() as f64 / u64::MAX as f64) < self.config.loss;
        if lost {
            self.messages_lost += 1;
            return;
        }
        let jitter = self.rng.next_u64() % (self.config.jitter_ms + 1);
        let latency = self.config.base_latency_ms
            + u64::from(self.nodes[from_index as usize].access_delay_ms)
            + u64::from(self.nodes[to_index as usize].access_delay_ms)
            + jitter;
        let at = self.now.saturating_add(Duration::from_millis(latency));
        self.schedule(
            at,
            SimEvent::Deliver {
                to: to_index,
                from,
                message: Box::new(message),
            },
        );
    }

    fn on_event(&mut self, node: u32, event: DhtEvent) {
        match event {
            DhtEvent::BootstrapFinished { .. } => {
                self.joins_completed += 1;
                self.report_progress(false);
            }
            DhtEvent::PutFinished { query, result, .. } => {
                if let Some(value) = self.pending_puts.remove(&(node, query)) {
                    self.puts_completed += 1;
                    if result.is_ok_and(|summary| summary.stored > 0) {
                        self.values_stored.push(self.values[value as usize]);
                    }
                    self.report_progress(false);
                }
            }
            DhtEvent::GetFinished {
                query,
                result,
                stats,
                ..
            } => {
                if let Some(pending) = self.pending_lookups.remove(&(node, query)) {
                    self.finish_lookup(node, pending, result.is_ok(), stats);
                }
            }
            DhtEvent::FindNodeFinished {
                query,
                found,
                stats,
                ..
            } => {
                if let Some(pending) = self.pending_lookups.remove(&(node, query)) {
                    let succeeded = found && matches!(pending.target, LookupTarget::Node(_));
                    self.finish_lookup(node, pending, succeeded, stats);
                }
            }
            // Misbehaviour is not simulated, and the simulator issues no provider commands.
            DhtEvent::PeerMisbehaved { .. }
            | DhtEvent::AddProviderFinished { .. }
            | DhtEvent::GetProvidersFinished { .. } => {}
        }
    }

    fn finish_lookup(
        &mut self,
        origin: u32,
        pending: PendingLookup,
        succeeded: bool,
        stats: QueryStats,
    ) {
        self.nodes[origin as usize].busy -= 1;
        if let LookupTarget::Node(target) = pending.target {
            self.nodes[target as usize].busy -= 1;
        }
        self.results.push(LookupResult { succeeded, stats });
        self.report_progress(false);
    }

    fn report_progress(&mut self, force: bool) {
        let done = self.joins_completed + self.puts_completed + self.results.len() as u64;
        let step = (self.progress_total / 200).max(1);
        if force || done >= self.progress_reported + step {
            self.progress_reported = done;
            (self.progress)(done.min(self.progress_total), self.progress_total);
        }
    }

    fn report(&self) -> DhtSimReport {
        let succeeded: Vec<&LookupResult> = self
            .results
            .iter()
            .filter(|result| result.succeeded)
            .collect();
        let mut hops: Vec<u32> = succeeded.iter().map(|result| result.stats.hops).collect();
        hops.sort_unstable();
        let mut latencies: Vec<u64> = succeeded
            .iter()
            .map(|result| {
                result
                    .stats
                    .finished_at
                    .saturating_duration_since(result.stats.started_at)
                    .as_millis() as u64
            })
            .collect();
        latencies.sort_unstable();
        let mut hop_histogram = vec![0u64; hops.last().map_or(0, |max| *max as usize + 1)];
        for hop in &hops {
            hop_histogram[*hop as usize] += 1;
        }
        // Lookups still running when the run stopped count as failed.
        let lookups = (self.results.len() + self.pending_lookups.len()) as u64;
        let messages: u64 = self
            .results
            .iter()
            .map(|result| u64::from(result.stats.requests) + u64::from(result.stats.answers))
            .sum();
        let live_tables: Vec<usize> = self
            .live
            .iter()
            .filter_map(|node| self.nodes[*node as usize].dht.as_ref())
            .map(|dht| dht.routing_table().len())
            .collect();
        DhtSimReport {
            nodes: self.config.nodes,
            seed: self.config.seed,
            churn: self.config.churn,
            loss: self.config.loss,
            lookup_kind: self.config.lookup_kind,
            lookups,
            lookups_succeeded: succeeded.len() as u64,
            lookup_success_rate: ratio(succeeded.len() as u64, lookups),
            hops_median: percentile(&hops, 0.5),
            hops_p99: percentile(&hops, 0.99),
            hops_mean: ratio(
                hops.iter().map(|hop| u64::from(*hop)).sum(),
                hops.len() as u64,
            ),
            hop_histogram,
            messages_per_lookup: ratio(messages, lookups),
            latency_ms_median: percentile(&latencies, 0.5),
            latency_ms_p99: percentile(&latencies, 0.99),
            values_stored: self.values_stored.len() as u64,
            nodes_replaced: self.nodes_replaced,
            joins_completed: self.joins_completed,
            routing_table_mean: ratio(
                live_tables.iter().sum::<usize>() as u64,
                live_tables.len() as u64,
            ),
            messages_delivered: self.messages_delivered,
            messages_lost: self.messages_lost,
            simulated_seconds: self.now.as_millis() as f64 / 1000.0,
            wall_seconds: 0.0,
        }
    }
}

fn ratio(numerator: u64, denominator: u64) -> f64 {
    if denominator == 0 {
        0.0
    } else {
        numerator as f64 / denominator as f64
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

    #[test]
    fn percentile_uses_nearest_rank() {
        let values = [1u32, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        assert_eq!(percentile(&values, 0.5), 5);
        assert_eq!(percentile(&values, 0.99), 10);
        assert_eq!(percentile::<u32>(&[], 0.5), 0);
    }

    #[test]
    fn a_tiny_network_finds_its_values() {
        let mut config = DhtSimConfig::new(30, 7);
        config.lookups = 20;
        let report = simulate_dht(&config, |_, _| {});
        assert_eq!(report.lookups, 20);
        assert!(report.lookup_success_rate >= 0.95, "{report:?}");
    }
}
