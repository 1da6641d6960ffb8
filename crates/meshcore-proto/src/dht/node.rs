//! The DHT node: one Kademlia participant as a sans-IO state machine.
//!
//! See [`DhtNode`] for the run-loop contract.

use std::collections::{BTreeMap, VecDeque};

use rand_chacha::rand_core::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::dht::config::{ConfigError, DhtConfig};
use crate::dht::kbucket::{InsertOutcome, RoutingTable};
use crate::dht::key::{Key, KEY_LEN};
use crate::dht::lookup::{Lookup, LookupConfig, LookupStep};
use crate::dht::message::{Message, Request, RequestId, Response};
use crate::dht::provider::{ProviderRecord, ProviderStore};
use crate::dht::record::{Record, RecordError};
use crate::dht::store::{MemoryRecordStore, RecordOrigin, RecordStore};
use crate::dht::time::Timestamp;
use crate::identity::NodeId;

/// Most peers a lookup remembers, as a multiple of `k`.
const LOOKUP_PEERS_PER_K: usize = 8;

/// Identifies a query started by a command; carried by its [`DhtEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QueryId(pub u64);

/// How a query went, for metrics and the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueryStats {
    /// Requests sent.
    pub requests: u32,
    /// Answers received.
    pub answers: u32,
    /// Requests that failed or timed out.
    pub failures: u32,
    /// Lookup path length (see [`crate::dht::lookup`]): the hop at which the result was
    /// learned (the target node named, the value received), or else the highest hop among
    /// the k closest nodes that answered.
    pub hops: u32,
    /// When the command was given.
    pub started_at: Timestamp,
    /// When the query finished.
    pub finished_at: Timestamp,
}

/// What a `put` (or an `add_provider`) achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PutSummary {
    /// Nodes that stored the record (besides this one).
    pub stored: u32,
    /// Nodes that refused it (quota, full topic, stale sequence number, …).
    pub refused: u32,
    /// Nodes that did not answer.
    pub failed: u32,
}

/// Why a query produced no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueryError {
    /// `max_queries` queries were already running.
    #[error("too many queries running")]
    TooManyQueries,
    /// No node answered with a valid record.
    #[error("no record found")]
    NotFound,
    /// The record was refused locally.
    #[error("record refused: {0}")]
    Record(#[from] RecordError),
}

/// Something the driver (and through it, the user) should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DhtEvent {
    /// A [`find_node`](DhtNode::find_node) query is over.
    FindNodeFinished {
        /// The query.
        query: QueryId,
        /// The key searched.
        target: Key,
        /// Up to k nodes closest to `target` that answered, closest first; a node whose key
        /// is `target` is first if it answered.
        closest: Vec<NodeId>,
        /// Whether a node whose key is exactly `target` was found: named in an answer or
        /// already in the routing table (Kademlia's sense of finding a node: learning its
        /// contact, which for Meshcore is its id).
        found: bool,
        /// How it went.
        stats: QueryStats,
    },
    /// A [`get`](DhtNode::get) query is over.
    GetFinished {
        /// The query.
        query: QueryId,
        /// The key searched.
        key: Key,
        /// The record: the first valid immutable one, or the mutable one with the highest
        /// sequence number among the answers.
        result: Result<Record, QueryError>,
        /// How it went.
        stats: QueryStats,
    },
    /// A [`put`](DhtNode::put) query is over.
    PutFinished {
        /// The query.
        query: QueryId,
        /// The record's key.
        key: Key,
        /// How many nodes stored it.
        result: Result<PutSummary, QueryError>,
        /// How it went.
        stats: QueryStats,
    },
    /// An [`add_provider`](DhtNode::add_provider) query is over.
    AddProviderFinished {
        /// The query.
        query: QueryId,
        /// The provider record's topic.
        topic: Key,
        /// How many nodes stored it, or why this node refused it.
        result: Result<PutSummary, QueryError>,
        /// How it went.
        stats: QueryStats,
    },
    /// A [`get_providers`](DhtNode::get_providers) query is over.
    GetProvidersFinished {
        /// The query.
        query: QueryId,
        /// The topic searched.
        topic: Key,
        /// The valid providers from this node and every node that answered, one per
        /// provider (the highest sequence number), latest expiry first; at most
        /// [`MAX_PROVIDERS_PER_TOPIC`](crate::dht::MAX_PROVIDERS_PER_TOPIC), those that
        /// expire last. If the query could not start (`max_queries` were running), only this
        /// node's entries, with `stats.requests` 0.
        providers: Vec<ProviderRecord>,
        /// How it went.
        stats: QueryStats,
    },
    /// A [`bootstrap`](DhtNode::bootstrap) query is over.
    BootstrapFinished {
        /// The query.
        query: QueryId,
        /// Entries in the routing table now.
        routing_table_len: usize,
        /// How it went.
        stats: QueryStats,
    },
    /// A peer sent something no honest node sends (a forged record or provider record, an
    /// answer of the wrong kind). The driver may count it against the peer.
    PeerMisbehaved {
        /// The peer.
        peer: NodeId,
        /// What it did.
        reason: &'static str,
    },
}

/// Running totals, for `/metrics`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct DhtCounters {
    /// Requests sent.
    pub requests_sent: u64,
    /// Requests received and answered.
    pub requests_answered: u64,
    /// Answers matched to a request.
    pub responses_received: u64,
    /// Answers with an unknown id or from the wrong peer, ignored.
    pub responses_unmatched: u64,
    /// Requests that timed out.
    pub request_timeouts: u64,
    /// Records refused when offered by a STORE.
    pub records_refused: u64,
    /// Provider records refused when offered by an ADD_PROVIDER (for any reason: stale,
    /// full topic, quota, bad signature, …).
    pub providers_refused: u64,
    /// Provider records dropped as forged: a signature that does not verify (in an
    /// ADD_PROVIDER or an answer), or a record for another topic than asked (in an answer).
    /// Each comes with a [`DhtEvent::PeerMisbehaved`].
    pub provider_records_forged: u64,
    /// Messages dropped because the transmit queue was full.
    pub transmits_dropped: u64,
    /// Events dropped because the event queue was full.
    pub events_dropped: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestPurpose {
    /// Probing the least recently seen entry of a full bucket.
    Probe,
    /// A FIND_NODE, FIND_VALUE or GET_PROVIDERS for a query's lookup.
    Lookup(QueryId),
    /// A STORE for a put query, or an ADD_PROVIDER for an add-provider query.
    Store(QueryId),
}

#[derive(Debug, Clone)]
struct OutboundRequest {
    peer: NodeId,
    peer_key: Key,
    purpose: RequestPurpose,
}

#[derive(Debug)]
enum QueryKind {
    FindNode,
    Bootstrap,
    Refresh,
    Get {
        best: Option<(Record, u32)>,
    },
    Put {
        record: Record,
        phase: StorePhase,
    },
    AddProvider {
        record: ProviderRecord,
        phase: StorePhase,
    },
    GetProviders {
        /// The providers found so far, merged by the provider store's rules.
        found: ProviderStore,
    },
}

impl QueryKind {
    /// The store phase of a put or add-provider query.
    fn store_phase_mut(&mut self) -> Option<&mut StorePhase> {
        match self {
            Self::Put { phase, .. } | Self::AddProvider { phase, .. } => Some(phase),
            _ => None,
        }
    }
}

/// What a put or add-provider query does once its lookup is over: send the record to the
/// k closest nodes and count their answers.
#[derive(Debug)]
struct StorePhase {
    /// Republications by the timer report no event.
    report: bool,
    /// `Some` once the requests are sent.
    storing: Option<PutSummary>,
    outstanding: u32,
}

impl StorePhase {
    fn new(report: bool) -> Self {
        Self {
            report,
            storing: None,
            outstanding: 0,
        }
    }
}

#[derive(Debug)]
struct Query {
    kind: QueryKind,
    lookup: Lookup,
    deadline: Timestamp,
    stats: QueryStats,
}

/// One node of the Kademlia DHT, without I/O.
///
/// # Run loop
///
/// The driver owns the transport, the clock and the loop. It must:
///
/// 1. feed inputs: [`handle_message`](Self::handle_message) for every DHT message received
///    (with the authenticated id of the peer that sent it), and
///    [`handle_timeout`](Self::handle_timeout) once the time returned by
///    [`poll_timeout`](Self::poll_timeout) is reached;
/// 2. give commands as the user asks: [`add_peer`](Self::add_peer),
///    [`bootstrap`](Self::bootstrap), [`find_node`](Self::find_node), [`get`](Self::get),
///    [`put`](Self::put), [`add_provider`](Self::add_provider),
///    [`remove_provider`](Self::remove_provider), [`get_providers`](Self::get_providers);
///    each query's outcome comes later as a [`DhtEvent`] carrying the returned [`QueryId`];
/// 3. after every input or command, drain [`poll_transmit`](Self::poll_transmit) (send each
///    message to its peer; a message that cannot be delivered may be dropped — it will time
///    out) and [`poll_event`](Self::poll_event), then ask
///    [`poll_timeout`](Self::poll_timeout) for the next wake-up, which may have moved.
///
/// `now` must never go backwards. The node never reads a clock and draws randomness only
/// from an RNG seeded by [`DhtConfig::rng_seed`], so the same inputs give the same outputs.
///
/// Methods are grouped as in quinn-proto: getters, `handle_*` (inputs), commands and
/// `poll_*` (outputs).
///
/// # Bounds
///
/// Queries: [`DhtConfig::max_queries`]. Requests in flight:
/// [`DhtConfig::max_requests_in_flight`] (their deadline queue holds at most twice that). Transmit and event queues:
/// [`DhtConfig::max_queued_transmits`] and [`DhtConfig::max_queued_events`]. Routing table:
/// k entries and one pending entry per bucket. Stored records: the byte quota
/// [`DhtConfig::dht_storage_bytes`] enforced by the [`RecordStore`]. Provider records:
/// [`MAX_PROVIDERS_PER_TOPIC`](crate::dht::MAX_PROVIDERS_PER_TOPIC) per topic and the byte
/// quota [`DhtConfig::provider_storage_bytes`] ([`ProviderStore`]); as many per
/// get-providers query. Peers per lookup: `8 k`.
///
/// # Timers
///
/// Per-request timeouts ([`DhtConfig::request_timeout`]; a silent peer is dropped from the
/// routing table and its bucket's pending entry takes its place), per-query timeouts,
/// bucket refresh with a self-lookup ([`DhtConfig::refresh_interval`]), republication of
/// the records and provider records this node published ([`DhtConfig::republish_interval`])
/// and the expiry sweep of both stores ([`DhtConfig::expiry_sweep_interval`]).
#[derive(Debug)]
pub struct DhtNode<S: RecordStore = MemoryRecordStore> {
    config: DhtConfig,
    local_id: NodeId,
    local_key: Key,
    table: RoutingTable,
    store: S,
    providers: ProviderStore,
    rng: ChaCha8Rng,
    queries: BTreeMap<QueryId, Query>,
    next_query_id: u64,
    requests: BTreeMap<RequestId, OutboundRequest>,
    /// Deadlines in sending order, which is deadline order since the timeout is constant.
    request_deadlines: VecDeque<(Timestamp, RequestId)>,
    next_request_id: u64,
    transmits: VecDeque<(NodeId, Message)>,
    events: VecDeque<DhtEvent>,
    next_refresh: Timestamp,
    next_republish: Timestamp,
    next_expiry_sweep: Timestamp,
    republish_backlog: VecDeque<Key>,
    /// Topics of this node's own provider records still to re-send this round.
    provider_republish_backlog: VecDeque<Key>,
    /// A query could not send because `max_requests_in_flight` was reached.
    starved: bool,
    counters: DhtCounters,
}

impl DhtNode<MemoryRecordStore> {
    /// A node with an in-memory store of [`DhtConfig::dht_storage_bytes`].
    pub fn new(config: DhtConfig, local_id: NodeId, now: Timestamp) -> Result<Self, ConfigError> {
        let store = MemoryRecordStore::new(config.dht_storage_bytes);
        Self::with_store(config, local_id, store, now)
    }
}

impl<S: RecordStore> DhtNode<S> {
    /// A node keeping its records in `store`. `now` starts the periodic timers.
    pub fn with_store(
        config: DhtConfig,
        local_id: NodeId,
        store: S,
        now: Timestamp,
    ) -> Result<Self, ConfigError> {
        config.validate()?;
        let local_key = Key::for_node(&local_id);
        let table = RoutingTable::new(local_key, config.k, config.request_timeout * 2);
        Ok(Self {
            providers: ProviderStore::new(config.provider_storage_bytes),
            rng: ChaCha8Rng::seed_from_u64(config.rng_seed),
            next_refresh: now.saturating_add(config.refresh_interval),
            next_republish: now.saturating_add(config.republish_interval),
            next_expiry_sweep: now.saturating_add(config.expiry_sweep_interval),
            config,
            local_id,
            local_key,
            table,
            store,
            queries: BTreeMap::new(),
            next_query_id: 0,
            requests: BTreeMap::new(),
            request_deadlines: VecDeque::new(),
            next_request_id: 0,
            transmits: VecDeque::new(),
            events: VecDeque::new(),
            republish_backlog: VecDeque::new(),
            provider_republish_backlog: VecDeque::new(),
            starved: false,
            counters: DhtCounters::default(),
        })
    }

    // ---- getters ----

    /// This node's id.
    pub fn local_id(&self) -> &NodeId {
        &self.local_id
    }

    /// This node's position in the key space.
    pub fn local_key(&self) -> &Key {
        &self.local_key
    }

    /// The configuration.
    pub fn config(&self) -> &DhtConfig {
        &self.config
    }

    /// The routing table.
    pub fn routing_table(&self) -> &RoutingTable {
        &self.table
    }

    /// The record store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The provider store.
    pub fn provider_store(&self) -> &ProviderStore {
        &self.providers
    }

    /// The providers of `topic` this node holds, its own included, not expired at `now`;
    /// latest expiry first.
    pub fn local_providers(&self, topic: &Key, now: Timestamp) -> Vec<ProviderRecord> {
        self.providers.get(topic, now)
    }

    /// Running totals.
    pub fn counters(&self) -> &DhtCounters {
        &self.counters
    }

    /// Number of queries running.
    pub fn queries_running(&self) -> usize {
        self.queries.len()
    }

    // ---- inputs ----

    /// A message arrived from `from`, whose identity the transport has authenticated.
    pub fn handle_message(&mut self, now: Timestamp, from: NodeId, message: Message) {
        if from == self.local_id {
            return;
        }
        let from_key = Key::for_node(&from);
        self.observe(now, from, from_key);
        match message {
            Message::Request { id, request } => {
                let response = self.answer(now, &from, request);
                self.counters.requests_answered += 1;
                self.transmit(from, Message::Response { id, response });
            }
            Message::Response { id, response } => {
                match self.requests.get(&id) {
                    Some(request) if request.peer == from => {}
                    _ => {
                        self.counters.responses_unmatched += 1;
                        return;
                    }
                }
                if let Some(request) = self.requests.remove(&id) {
                    self.counters.responses_received += 1;
                    self.on_response(now, request, response);
                }
            }
        }
        self.drive_starved(now);
    }

    /// Runs the timers due at `now`: request and query timeouts, refresh, republication
    /// and expiry.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        while let Some(&(deadline, id)) = self.request_deadlines.front() {
            if deadline > now {
                break;
            }
            self.request_deadlines.pop_front();
            if let Some(request) = self.requests.remove(&id) {
                self.counters.request_timeouts += 1;
                self.on_request_failed(now, request);
            }
        }
        let expired: Vec<QueryId> = self
            .queries
            .iter()
            .filter(|(_, query)| query.deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            if let Some(query) = self.queries.get_mut(&id) {
                query.lookup.finish();
                if let Some(phase) = query.kind.store_phase_mut() {
                    phase.outstanding = 0;
                }
            }
            self.drive_query(now, id);
        }
        if now >= self.next_expiry_sweep {
            self.store.remove_expired(now);
            self.providers.remove_expired(now);
            self.next_expiry_sweep = now.saturating_add(self.config.expiry_sweep_interval);
        }
        if now >= self.next_refresh {
            self.refresh(now);
            self.next_refresh = now.saturating_add(self.config.refresh_interval);
        }
        if now >= self.next_republish {
            if self.republish_backlog.is_empty() {
                self.republish_backlog.extend(self.store.published_keys());
            }
            if self.provider_republish_backlog.is_empty() {
                self.provider_republish_backlog
                    .extend(self.providers.published_topics());
            }
            self.next_republish = now.saturating_add(self.config.republish_interval);
        }
        self.drain_republish_backlog(now);
        self.drive_starved(now);
    }

    // ---- commands ----

    /// Adds a node known to exist (a bootstrap node, a node met on a link) to the routing
    /// table, as if it had just been heard from.
    pub fn add_peer(&mut self, now: Timestamp, node: NodeId) {
        if node != self.local_id {
            self.observe(now, node, Key::for_node(&node));
        }
    }

    /// Joins the network: a lookup of this node's own key, which fills the buckets near
    /// it and announces the node to its neighbours. Call after [`add_peer`](Self::add_peer)
    /// for at least one bootstrap node. Reported by [`DhtEvent::BootstrapFinished`].
    pub fn bootstrap(&mut self, now: Timestamp) -> QueryId {
        let target = self.local_key;
        self.start_query(now, target, QueryKind::Bootstrap)
    }

    /// Finds the k nodes closest to `target` (for a node id, `Key::for_node`). Reported by
    /// [`DhtEvent::FindNodeFinished`].
    pub fn find_node(&mut self, now: Timestamp, target: Key) -> QueryId {
        self.start_query(now, target, QueryKind::FindNode)
    }

    /// Fetches the record at `key`. A valid immutable record ends the lookup at once; for
    /// a mutable record the lookup runs to its end and keeps the highest sequence number.
    /// Reported by [`DhtEvent::GetFinished`].
    pub fn get(&mut self, now: Timestamp, key: Key) -> QueryId {
        let local = self.store.get(&key, now);
        if let Some(record @ Record::Immutable(_)) = local {
            let query = self.allocate_query_id();
            let stats = QueryStats {
                started_at: now,
                finished_at: now,
                ..QueryStats::default()
            };
            self.emit(DhtEvent::GetFinished {
                query,
                key,
                result: Ok(record),
                stats,
            });
            return query;
        }
        let best = local.map(|record| (record, 0));
        self.start_query(now, key, QueryKind::Get { best })
    }

    /// Stores `record` here (as published by this node, so it is republished until it
    /// expires) and on the k nodes closest to its key. Reported by
    /// [`DhtEvent::PutFinished`].
    pub fn put(&mut self, now: Timestamp, record: Record) -> QueryId {
        let key = record.key();
        if let Err(error) = self.accept_record(now, record.clone(), RecordOrigin::Published) {
            let query = self.allocate_query_id();
            self.emit(DhtEvent::PutFinished {
                query,
                key,
                result: Err(QueryError::Record(error)),
                stats: QueryStats {
                    started_at: now,
                    finished_at: now,
                    ..QueryStats::default()
                },
            });
            return query;
        }
        self.start_put(now, record, true)
    }

    /// Announces this node as a provider of `record.topic`: stores the record here (as
    /// published, so it is re-sent every [`DhtConfig::republish_interval`] until it
    /// expires or [`remove_provider`](Self::remove_provider) is called) and sends it to the
    /// k nodes closest to the topic. The record must name this node as provider (else
    /// [`RecordError::NotOwner`]), be valid, expire within [`DhtConfig::max_record_ttl`],
    /// and carry a higher sequence number than this node's entry for the topic. Reported by
    /// [`DhtEvent::AddProviderFinished`].
    pub fn add_provider(&mut self, now: Timestamp, record: ProviderRecord) -> QueryId {
        let topic = record.topic;
        let accepted = if record.provider == self.local_id {
            self.accept_provider(now, record.clone(), RecordOrigin::Published)
        } else {
            Err(RecordError::NotOwner)
        };
        if let Err(error) = accepted {
            let query = self.allocate_query_id();
            self.emit(DhtEvent::AddProviderFinished {
                query,
                topic,
                result: Err(QueryError::Record(error)),
                stats: QueryStats {
                    started_at: now,
                    finished_at: now,
                    ..QueryStats::default()
                },
            });
            return query;
        }
        self.start_add_provider(now, record, true)
    }

    /// Stops announcing this node as a provider of `topic`: removes its own entry here, so
    /// it is neither served nor re-sent, and returns it. Copies held by other nodes stay
    /// until they expire.
    pub fn remove_provider(&mut self, topic: &Key) -> Option<ProviderRecord> {
        let local_id = self.local_id;
        self.provider_republish_backlog
            .retain(|pending| pending != topic);
        self.providers.remove(topic, &local_id)
    }

    /// Finds the providers of `topic`: a lookup towards it that asks every node it meets
    /// for the providers it holds, merges them with this node's own entries (one per
    /// provider, the highest sequence number) and runs until the lookup converges. Records
    /// that do not verify are dropped and their sender reported. Reported by
    /// [`DhtEvent::GetProvidersFinished`].
    pub fn get_providers(&mut self, now: Timestamp, topic: Key) -> QueryId {
        let mut found = ProviderStore::new(u64::MAX);
        for record in self.providers.get(&topic, now) {
            // Entries of one topic from a store with the same bound always fit.
            let _ = found.put(record, RecordOrigin::Replica, now);
        }
        self.start_query(now, topic, QueryKind::GetProviders { found })
    }

    // ---- outputs ----

    /// The next message to send, with its destination.
    pub fn poll_transmit(&mut self) -> Option<(NodeId, Message)> {
        self.transmits.pop_front()
    }

    /// The next event.
    pub fn poll_event(&mut self) -> Option<DhtEvent> {
        self.events.pop_front()
    }

    /// When [`handle_timeout`](Self::handle_timeout) should be called next.
    pub fn poll_timeout(&mut self) -> Option<Timestamp> {
        // Deadlines of answered requests are dropped here, so they cause no wake-up.
        while let Some((_, id)) = self.request_deadlines.front() {
            if self.requests.contains_key(id) {
                break;
            }
            self.request_deadlines.pop_front();
        }
        let mut earliest = self
            .next_refresh
            .min(self.next_republish)
            .min(self.next_expiry_sweep);
        if let Some((deadline, _)) = self.request_deadlines.front() {
            earliest = earliest.min(*deadline);
        }
        for query in self.queries.values() {
            earliest = earliest.min(query.deadline);
        }
        Some(earliest)
    }

    // ---- internals: inbound ----

    /// Notes that `node` is alive; probes a full bucket's oldest entry if needed.
    fn observe(&mut self, now: Timestamp, node: NodeId, key: Key) {
        if let InsertOutcome::Pending { probe } = self.table.update(now, node, key) {
            if self.requests.len() < self.config.max_requests_in_flight {
                let probe_key = Key::for_node(&probe);
                self.send_request(now, probe, probe_key, RequestPurpose::Probe, Request::Ping);
            }
        }
    }

    fn answer(&mut self, now: Timestamp, from: &NodeId, request: Request) -> Response {
        match request {
            Request::Ping => Response::Pong,
            Request::FindNode { target } => Response::Nodes {
                closer: self.closest_ids(&target, from),
            },
            Request::FindValue { key } => {
                let closer = self.closest_ids(&key, from);
                match self.store.get(&key, now) {
                    Some(record) => Response::Value { record, closer },
                    None => Response::Nodes { closer },
                }
            }
            Request::Store { record } => {
                let result = self.accept_record(now, record, RecordOrigin::Replica);
                if result.is_err() {
                    self.counters.records_refused += 1;
                }
                Response::Stored { result }
            }
            Request::AddProvider { record } => {
                let result = self.accept_provider(now, record, RecordOrigin::Replica);
                if let Err(error) = &result {
                    self.counters.providers_refused += 1;
                    if *error == RecordError::BadSignature {
                        self.counters.provider_records_forged += 1;
                        self.emit_misbehaviour(
                            *from,
                            "offered a provider record with a bad signature",
                        );
                    }
                }
                Response::Stored { result }
            }
            Request::GetProviders { topic } => Response::Providers {
                providers: self.providers.get(&topic, now),
                closer: self.closest_ids(&topic, from),
            },
        }
    }

    fn closest_ids(&self, target: &Key, exclude: &NodeId) -> Vec<NodeId> {
        self.table
            .closest(target, self.config.k, Some(exclude))
            .into_iter()
            .map(|entry| entry.node)
            .collect()
    }

    /// Validates `record` and stores it if it may replace what is stored at its key.
    fn accept_record(
        &mut self,
        now: Timestamp,
        record: Record,
        origin: RecordOrigin,
    ) -> Result<(), RecordError> {
        record.validate(now)?;
        let latest_expiry = now.saturating_add(self.config.max_record_ttl);
        let key = record.key();
        let existing = self.store.get(&key, now);
        record.may_replace(existing.as_ref())?;
        let record = match record {
            Record::Immutable(mut immutable) => {
                // Storing content again only ever extends its life, up to the cap.
                let stored_expiry = existing
                    .as_ref()
                    .map_or(Timestamp::ZERO, Record::expires_at);
                immutable.expires_at = immutable.expires_at.min(latest_expiry).max(stored_expiry);
                Record::Immutable(immutable)
            }
            Record::Mutable(mutable) if mutable.expires_at > latest_expiry => {
                return Err(RecordError::ExpiresTooLate {
                    max_ttl_secs: self.config.max_record_ttl.as_secs(),
                });
            }
            mutable @ Record::Mutable(_) => mutable,
        };
        self.store.put(record, origin, now)
    }

    /// Validates a provider record and stores it by the provider store's rules.
    fn accept_provider(
        &mut self,
        now: Timestamp,
        record: ProviderRecord,
        origin: RecordOrigin,
    ) -> Result<(), RecordError> {
        record.validate(now)?;
        if record.expires_at > now.saturating_add(self.config.max_record_ttl) {
            return Err(RecordError::ExpiresTooLate {
                max_ttl_secs: self.config.max_record_ttl.as_secs(),
            });
        }
        self.providers.put(record, origin, now)
    }

    fn on_response(&mut self, now: Timestamp, request: OutboundRequest, response: Response) {
        match request.purpose {
            RequestPurpose::Probe => {}
            RequestPurpose::Lookup(query_id) => {
                self.on_lookup_response(now, query_id, request, response)
            }
            RequestPurpose::Store(query_id) => {
                let Some(query) = self.queries.get_mut(&query_id) else {
                    return;
                };
                query.stats.answers += 1;
                let reason = match query.kind {
                    QueryKind::AddProvider { .. } => "answered an ADD_PROVIDER with another kind",
                    _ => "answered a STORE with another kind",
                };
                if let Some(StorePhase {
                    storing: Some(summary),
                    outstanding,
                    ..
                }) = query.kind.store_phase_mut()
                {
                    *outstanding = outstanding.saturating_sub(1);
                    match response {
                        Response::Stored { result: Ok(()) } => summary.stored += 1,
                        Response::Stored { result: Err(_) } => summary.refused += 1,
                        _ => {
                            summary.failed += 1;
                            self.emit_misbehaviour(request.peer, reason);
                        }
                    }
                }
                self.drive_query(now, query_id);
            }
        }
    }

    fn on_lookup_response(
        &mut self,
        now: Timestamp,
        query_id: QueryId,
        request: OutboundRequest,
        response: Response,
    ) {
        let local_id = self.local_id;
        let Some(query) = self.queries.get_mut(&query_id) else {
            return;
        };
        query.stats.answers += 1;
        let (closer, record, providers) = match response {
            Response::Nodes { closer } => (closer, None, None),
            Response::Value { record, closer } => (closer, Some(record), None),
            Response::Providers { providers, closer } => (closer, None, Some(providers)),
            Response::Pong | Response::Stored { .. } => {
                query.stats.failures += 1;
                query.lookup.on_failure(&request.peer_key);
                self.emit_misbehaviour(request.peer, "answered a lookup with another kind");
                self.drive_query(now, query_id);
                return;
            }
        };
        let mut forged = false;
        if let Some(record) = record {
            let hop = query.lookup.hop_of(&request.peer_key).unwrap_or(0);
            let target = *query.lookup.target();
            match &mut query.kind {
                QueryKind::Get { best } => {
                    if record.key() != target || record.validate(now).is_err() {
                        forged = true;
                    } else {
                        let immutable = matches!(record, Record::Immutable(_));
                        if best
                            .as_ref()
                            .is_none_or(|(current, _)| record.is_newer_than(current))
                        {
                            *best = Some((record, hop));
                        }
                        if immutable {
                            query.lookup.finish();
                        }
                    }
                }
                _ => forged = true,
            }
        }
        if let Some(providers) = providers {
            let target = *query.lookup.target();
            match &mut query.kind {
                QueryKind::GetProviders { found } => {
                    let mut valid = Vec::with_capacity(providers.len());
                    let mut forgeries: u64 = 0;
                    for record in providers {
                        if record.topic != target {
                            forgeries += 1;
                            continue;
                        }
                        match record.validate(now) {
                            Ok(()) => valid.push(record),
                            // Expired on the way, or by a slightly different clock.
                            Err(RecordError::Expired) => {}
                            Err(_) => forgeries += 1,
                        }
                    }
                    if forgeries == 0 {
                        for record in valid {
                            // Stale copies and losers of a full list are simply not kept.
                            let _ = found.put(record, RecordOrigin::Replica, now);
                        }
                    } else {
                        self.counters.provider_records_forged += forgeries;
                        forged = true;
                    }
                }
                _ => forged = true,
            }
        }
        if forged {
            query.stats.failures += 1;
            query.lookup.on_failure(&request.peer_key);
            self.emit_misbehaviour(request.peer, "sent an invalid or unrequested record");
        } else {
            let closer = closer
                .into_iter()
                .filter(|node| *node != local_id)
                .map(|node| (node, Key::for_node(&node)));
            query.lookup.on_success(&request.peer_key, closer);
        }
        self.drive_query(now, query_id);
    }

    fn on_request_failed(&mut self, now: Timestamp, request: OutboundRequest) {
        // A silent peer leaves the routing table; a waiting newcomer takes its place.
        self.table.remove(&request.peer, &request.peer_key);
        let query_id = match request.purpose {
            RequestPurpose::Probe => return,
            RequestPurpose::Lookup(query_id) | RequestPurpose::Store(query_id) => query_id,
        };
        let Some(query) = self.queries.get_mut(&query_id) else {
            return;
        };
        query.stats.failures += 1;
        match query.kind.store_phase_mut() {
            Some(StorePhase {
                storing: Some(summary),
                outstanding,
                ..
            }) => {
                *outstanding = outstanding.saturating_sub(1);
                summary.failed += 1;
            }
            _ => query.lookup.on_failure(&request.peer_key),
        }
        self.drive_query(now, query_id);
    }

    // ---- internals: queries ----

    fn allocate_query_id(&mut self) -> QueryId {
        let id = QueryId(self.next_query_id);
        self.next_query_id += 1;
        id
    }

    fn start_query(&mut self, now: Timestamp, target: Key, kind: QueryKind) -> QueryId {
        let id = self.allocate_query_id();
        let stats = QueryStats {
            started_at: now,
            ..QueryStats::default()
        };
        if self.queries.len() >= self.config.max_queries {
            let stats = QueryStats {
                finished_at: now,
                ..stats
            };
            let error = Err(QueryError::TooManyQueries);
            let event = match kind {
                QueryKind::FindNode | QueryKind::Bootstrap | QueryKind::Refresh => {
                    DhtEvent::FindNodeFinished {
                        query: id,
                        target,
                        closest: Vec::new(),
                        found: false,
                        stats,
                    }
                }
                QueryKind::Get { .. } => DhtEvent::GetFinished {
                    query: id,
                    key: target,
                    result: Err(QueryError::TooManyQueries),
                    stats,
                },
                QueryKind::Put { .. } => DhtEvent::PutFinished {
                    query: id,
                    key: target,
                    result: error,
                    stats,
                },
                QueryKind::AddProvider { .. } => DhtEvent::AddProviderFinished {
                    query: id,
                    topic: target,
                    result: error,
                    stats,
                },
                QueryKind::GetProviders { found } => DhtEvent::GetProvidersFinished {
                    query: id,
                    topic: target,
                    providers: found.get(&target, now),
                    stats,
                },
            };
            self.emit(event);
            return id;
        }
        self.table.mark_refreshed(&target, now);
        let initial: Vec<(NodeId, Key)> = self
            .table
            .closest(&target, self.config.k, None)
            .into_iter()
            .map(|entry| (entry.node, entry.key))
            .collect();
        let lookup = Lookup::new(
            target,
            LookupConfig {
                parallelism: self.config.alpha,
                num_results: self.config.k,
                max_peers: self.config.k * LOOKUP_PEERS_PER_K,
            },
            initial,
        );
        self.queries.insert(
            id,
            Query {
                kind,
                lookup,
                deadline: now.saturating_add(self.config.query_timeout),
                stats,
            },
        );
        self.drive_query(now, id);
        id
    }

    fn start_put(&mut self, now: Timestamp, record: Record, report: bool) -> QueryId {
        let key = record.key();
        self.start_query(
            now,
            key,
            QueryKind::Put {
                record,
                phase: StorePhase::new(report),
            },
        )
    }

    fn start_add_provider(
        &mut self,
        now: Timestamp,
        record: ProviderRecord,
        report: bool,
    ) -> QueryId {
        let topic = record.topic;
        self.start_query(
            now,
            topic,
            QueryKind::AddProvider {
                record,
                phase: StorePhase::new(report),
            },
        )
    }

    /// Sends what a query may send now, and finishes it if it is over.
    fn drive_query(&mut self, now: Timestamp, query_id: QueryId) {
        loop {
            let Some(query) = self.queries.get_mut(&query_id) else {
                return;
            };
            if let Some(StorePhase {
                storing: Some(_),
                outstanding,
                ..
            }) = query.kind.store_phase_mut()
            {
                if *outstanding == 0 {
                    self.finish_query(now, query_id);
                }
                return;
            }
            if self.requests.len() >= self.config.max_requests_in_flight
                && !query.lookup.is_finished()
            {
                self.starved = true;
                return;
            }
            match query.lookup.next_step() {
                LookupStep::Query(peer) => {
                    query.stats.requests += 1;
                    let target = *query.lookup.target();
                    let request = match query.kind {
                        QueryKind::Get { .. } => Request::FindValue { key: target },
                        QueryKind::GetProviders { .. } => Request::GetProviders { topic: target },
                        _ => Request::FindNode { target },
                    };
                    let peer_key = Key::for_node(&peer);
                    self.send_request(
                        now,
                        peer,
                        peer_key,
                        RequestPurpose::Lookup(query_id),
                        request,
                    );
                }
                LookupStep::Waiting => return,
                LookupStep::Finished => {
                    if self.start_storing(now, query_id) {
                        continue;
                    }
                    self.finish_query(now, query_id);
                    return;
                }
            }
        }
    }

    /// Moves a put or add-provider query whose lookup is over to its store phase (STORE or
    /// ADD_PROVIDER to the k closest that answered); returns whether it did.
    fn start_storing(&mut self, now: Timestamp, query_id: QueryId) -> bool {
        let k = self.config.k;
        let room = self
            .config
            .max_requests_in_flight
            .saturating_sub(self.requests.len());
        let Some(query) = self.queries.get_mut(&query_id) else {
            return false;
        };
        let (request, phase) = match &mut query.kind {
            QueryKind::Put { record, phase } => (
                Request::Store {
                    record: record.clone(),
                },
                phase,
            ),
            QueryKind::AddProvider { record, phase } => (
                Request::AddProvider {
                    record: record.clone(),
                },
                phase,
            ),
            _ => return false,
        };
        if phase.storing.is_some() {
            return false;
        }
        let targets: Vec<NodeId> = query.lookup.closest_answered(k).copied().collect();
        let mut summary = PutSummary::default();
        let sendable = targets.len().min(room);
        summary.failed = (targets.len() - sendable) as u32;
        phase.outstanding = sendable as u32;
        phase.storing = Some(summary);
        query.stats.hops = query.lookup.rounds(k);
        query.stats.requests += sendable as u32;
        for peer in targets.into_iter().take(sendable) {
            let peer_key = Key::for_node(&peer);
            self.send_request(
                now,
                peer,
                peer_key,
                RequestPurpose::Store(query_id),
                request.clone(),
            );
        }
        true
    }

    fn finish_query(&mut self, now: Timestamp, query_id: QueryId) {
        let Some(query) = self.queries.remove(&query_id) else {
            return;
        };
        let k = self.config.k;
        let mut stats = query.stats;
        stats.finished_at = now;
        let lookup = query.lookup;
        let target = *lookup.target();
        let event = match query.kind {
            QueryKind::FindNode => {
                stats.hops = lookup
                    .target_found_at_hop()
                    .unwrap_or_else(|| lookup.rounds(k));
                Some(DhtEvent::FindNodeFinished {
                    query: query_id,
                    target,
                    closest: lookup.closest_answered(k).copied().collect(),
                    found: lookup.target_found_at_hop().is_some(),
                    stats,
                })
            }
            QueryKind::Bootstrap => {
                stats.hops = lookup.rounds(k);
                Some(DhtEvent::BootstrapFinished {
                    query: query_id,
                    routing_table_len: self.table.len(),
                    stats,
                })
            }
            QueryKind::Refresh => None,
            QueryKind::Get { best } => {
                let result = match best {
                    Some((record, hop)) => {
                        stats.hops = hop;
                        Ok(record)
                    }
                    None => {
                        stats.hops = lookup.rounds(k);
                        Err(QueryError::NotFound)
                    }
                };
                Some(DhtEvent::GetFinished {
                    query: query_id,
                    key: target,
                    result,
                    stats,
                })
            }
            QueryKind::Put { phase, .. } => phase.report.then(|| DhtEvent::PutFinished {
                query: query_id,
                key: target,
                result: Ok(phase.storing.unwrap_or_default()),
                stats,
            }),
            QueryKind::AddProvider { phase, .. } => {
                phase.report.then(|| DhtEvent::AddProviderFinished {
                    query: query_id,
                    topic: target,
                    result: Ok(phase.storing.unwrap_or_default()),
                    stats,
                })
            }
            QueryKind::GetProviders { found } => {
                stats.hops = lookup.rounds(k);
                Some(DhtEvent::GetProvidersFinished {
                    query: query_id,
                    topic: target,
                    providers: found.get(&target, now),
                    stats,
                })
            }
        };
        if let Some(event) = event {
            self.emit(event);
        }
        self.drain_republish_backlog(now);
    }

    /// Drives queries that waited for room among the requests in flight.
    fn drive_starved(&mut self, now: Timestamp) {
        if !self.starved || self.requests.len() >= self.config.max_requests_in_flight {
            return;
        }
        self.starved = false;
        let ids: Vec<QueryId> = self.queries.keys().copied().collect();
        for id in ids {
            self.drive_query(now, id);
        }
    }

    /// A self-lookup plus a lookup of a random key in every bucket that has seen no lookup
    /// for `refresh_interval`, within half of `max_queries`.
    fn refresh(&mut self, now: Timestamp) {
        let budget = (self.config.max_queries / 2).saturating_sub(self.queries.len());
        if budget == 0 {
            return;
        }
        let local_key = self.local_key;
        self.start_query(now, local_key, QueryKind::Refresh);
        let stale = self
            .table
            .buckets_to_refresh(now, self.config.refresh_interval);
        for bucket in stale.into_iter().take(budget - 1) {
            let mut noise = [0u8; KEY_LEN];
            self.rng.fill_bytes(&mut noise);
            let target = local_key.random_in_bucket(bucket, noise);
            self.start_query(now, target, QueryKind::Refresh);
        }
    }

    /// Starts republications of records, then of this node's provider records, while at
    /// most half of `max_queries` run.
    fn drain_republish_backlog(&mut self, now: Timestamp) {
        while self.queries.len() < self.config.max_queries / 2 {
            if let Some(key) = self.republish_backlog.pop_front() {
                if let Some(record) = self.store.get(&key, now) {
                    self.start_put(now, record, false);
                }
            } else if let Some(topic) = self.provider_republish_backlog.pop_front() {
                if let Some(record) = self.providers.get_entry(&topic, &self.local_id, now) {
                    self.start_add_provider(now, record, false);
                }
            } else {
                return;
            }
        }
    }

    // ---- internals: output ----

    fn send_request(
        &mut self,
        now: Timestamp,
        peer: NodeId,
        peer_key: Key,
        purpose: RequestPurpose,
        request: Request,
    ) {
        let id = RequestId(self.next_request_id);
        self.next_request_id += 1;
        self.requests.insert(
            id,
            OutboundRequest {
                peer,
                peer_key,
                purpose,
            },
        );
        if self.request_deadlines.len() >= 2 * self.config.max_requests_in_flight {
            // Bound the queue: forget the deadlines of requests already answered.
            let requests = &self.requests;
            self.request_deadlines
                .retain(|(_, id)| requests.contains_key(id));
        }
        self.request_deadlines
            .push_back((now.saturating_add(self.config.request_timeout), id));
        self.counters.requests_sent += 1;
        self.transmit(peer, Message::Request { id, request });
    }

    fn transmit(&mut self, to: NodeId, message: Message) {
        if self.transmits.len() >= self.config.max_queued_transmits {
            self.counters.transmits_dropped += 1;
            return;
        }
        self.transmits.push_back((to, message));
    }

    fn emit(&mut self, event: DhtEvent) {
        if self.events.len() >= self.config.max_queued_events {
            self.counters.events_dropped += 1;
            return;
        }
        self.events.push_back(event);
    }

    fn emit_misbehaviour(&mut self, peer: NodeId, reason: &'static str) {
        self.emit(DhtEvent::PeerMisbehaved { peer, reason });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dht::provider::MAX_PROVIDERS_PER_TOPIC;
    use crate::dht::record::MutableRecord;
    use crate::identity::NodeKeypair;
    use rand_chacha::ChaCha20Rng;
    use std::time::Duration;

    fn keypair(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    const T0: Timestamp = Timestamp::from_millis(1_000);
    const LATER: Timestamp = Timestamp::from_millis(3_600_000);

    /// Nodes delivering messages to each other instantly, in order, at a fixed time.
    struct Network {
        nodes: BTreeMap<NodeId, DhtNode>,
        events: Vec<(NodeId, DhtEvent)>,
        silent: Vec<NodeId>,
    }

    impl Network {
        fn new(size: u64) -> Self {
            let mut nodes = BTreeMap::new();
            let ids: Vec<NodeId> = (0..size).map(|seed| keypair(seed).node_id()).collect();
            for (index, id) in ids.iter().enumerate() {
                let mut node = DhtNode::new(DhtConfig::new(index as u64), *id, T0).expect("valid");
                if index > 0 {
                    node.add_peer(T0, ids[0]);
                }
                nodes.insert(*id, node);
            }
            let mut network = Self {
                nodes,
                events: Vec::new(),
                silent: Vec::new(),
            };
            for id in &ids[1..] {
                network.node(id).bootstrap(T0);
                network.run(T0);
            }
            network.events.clear();
            network
        }

        fn node(&mut self, id: &NodeId) -> &mut DhtNode {
            self.nodes.get_mut(id).expect("node exists")
        }

        /// A new node with the key of `seed` joins through the first node at `now`.
        fn join(&mut self, seed: u64, now: Timestamp) {
            let id = keypair(seed).node_id();
            let bootstrap = *self.nodes.keys().next().expect("a network has nodes");
            let mut node = DhtNode::new(DhtConfig::new(seed), id, now).expect("valid");
            node.add_peer(now, bootstrap);
            node.bootstrap(now);
            self.nodes.insert(id, node);
            self.run(now);
        }

        fn ids(&self) -> Vec<NodeId> {
            self.nodes.keys().copied().collect()
        }

        /// Delivers messages until the network is quiet.
        fn run(&mut self, now: Timestamp) {
            loop {
                let mut moved = false;
                let ids = self.ids();
                for id in ids {
                    let node = self.nodes.get_mut(&id).expect("node exists");
                    let mut outgoing = Vec::new();
                    while let Some(transmit) = node.poll_transmit() {
                        outgoing.push(transmit);
                    }
                    while let Some(event) = node.poll_event() {
                        self.events.push((id, event));
                    }
                    for (to, message) in outgoing {
                        moved = true;
                        if !self.silent.contains(&to) {
                            if let Some(receiver) = self.nodes.get_mut(&to) {
                                receiver.handle_message(now, id, message);
                            }
                        }
                    }
                }
                if !moved {
                    return;
                }
            }
        }
    }

    #[test]
    fn a_put_value_can_be_got_from_another_node() {
        let mut network = Network::new(40);
        let ids = network.ids();
        let record = Record::immutable(b"hello mesh".to_vec(), LATER).expect("small");
        let key = record.key();
        network.node(&ids[3]).put(T0, record.clone());
        network.run(T0);
        let stored = network.events.iter().find_map(|(_, event)| match event {
            DhtEvent::PutFinished { result, .. } => Some(result.clone()),
            _ => None,
        });
        let summary = stored.expect("put finished").expect("put succeeded");
        assert_eq!(summary.stored, 20);
        let query = network.node(&ids[30]).get(T0, key);
        network.run(T0);
        let got = network.events.iter().find_map(|(_, event)| match event {
            DhtEvent::GetFinished {
                query: q, result, ..
            } if *q == query => Some(result.clone()),
            _ => None,
        });
        assert_eq!(got, Some(Ok(record)));
    }

    #[test]
    fn find_node_reaches_an_existing_node() {
        let mut network = Network::new(40);
        let ids = network.ids();
        let target = Key::for_node(&ids[17]);
        network.node(&ids[5]).find_node(T0, target);
        network.run(T0);
        let closest = network.events.iter().find_map(|(_, event)| match event {
            DhtEvent::FindNodeFinished { closest, .. } => Some(closest.clone()),
            _ => None,
        });
        assert_eq!(closest.expect("finished").first(), Some(&ids[17]));
    }

    fn store_request(node: &mut DhtNode, from: NodeId, record: Record) -> Response {
        node.handle_message(
            T0,
            from,
            Message::Request {
                id: RequestId(9),
                request: Request::Store { record },
            },
        );
        match node.poll_transmit() {
            Some((to, Message::Response { id, response })) => {
                assert_eq!((to, id), (from, RequestId(9)));
                response
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    #[test]
    fn stale_replayed_and_forged_records_are_refused_and_change_nothing() {
        let owner = keypair(100);
        let forger = keypair(101);
        let mut node = DhtNode::new(DhtConfig::new(1), keypair(102).node_id(), T0).expect("valid");
        let sign = |keys: &NodeKeypair, seq: u64, value: &[u8]| {
            Record::Mutable(
                MutableRecord::sign(keys, b"profile".to_vec(), seq, value.to_vec(), LATER)
                    .expect("small"),
            )
        };
        let current = sign(&owner, 5, b"v5");
        let key = current.key();
        assert_eq!(
            store_request(&mut node, forger.node_id(), current.clone()),
            Response::Stored { result: Ok(()) }
        );
        let bytes_before = node.store().used_bytes();
        let refusals = [
            (
                sign(&owner, 5, b"replayed seq"),
                RecordError::Stale {
                    stored: 5,
                    offered: 5,
                },
            ),
            (
                sign(&owner, 4, b"older"),
                RecordError::Stale {
                    stored: 5,
                    offered: 4,
                },
            ),
        ];
        for (record, error) in refusals {
            assert_eq!(
                store_request(&mut node, forger.node_id(), record),
                Response::Stored { result: Err(error) }
            );
        }
        // The forger signs a higher sequence number with its own key under the owner's name.
        let Record::Mutable(mut forged) = sign(&forger, 6, b"hijack") else {
            unreachable!("built as mutable")
        };
        forged.owner = owner.node_id();
        assert_eq!(
            store_request(&mut node, forger.node_id(), Record::Mutable(forged)),
            Response::Stored {
                result: Err(RecordError::BadSignature)
            }
        );
        assert_eq!(node.store().get(&key, T0), Some(current));
        assert_eq!(node.store().used_bytes(), bytes_before);
        assert_eq!(node.counters().records_refused, 3);
        // The owner's next version is accepted.
        assert_eq!(
            store_request(&mut node, owner.node_id(), sign(&owner, 6, b"v6")),
            Response::Stored { result: Ok(()) }
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(32))]

        /// Whatever order versions arrive in, a node keeps the highest sequence number it
        /// has seen, and a refused version leaves its store exactly as it was.
        #[test]
        fn only_a_higher_sequence_number_replaces(seqs in proptest::collection::vec(0u64..20, 1..12)) {
            let owner = keypair(200);
            let mut node = DhtNode::new(DhtConfig::new(1), keypair(201).node_id(), T0).expect("valid");
            let mut highest: Option<u64> = None;
            for seq in seqs {
                let record = Record::Mutable(
                    MutableRecord::sign(&owner, b"s".to_vec(), seq, seq.to_be_bytes().to_vec(), LATER)
                        .expect("small"),
                );
                let key = record.key();
                let before = (node.store().get(&key, T0), node.store().used_bytes());
                let response = store_request(&mut node, owner.node_id(), record);
                if highest.is_none_or(|high| seq > high) {
                    proptest::prop_assert_eq!(response, Response::Stored { result: Ok(()) });
                    highest = Some(seq);
                } else {
                    let stale = matches!(response, Response::Stored { result: Err(RecordError::Stale { .. }) });
                    proptest::prop_assert!(stale, "expected a stale refusal, got {:?}", response);
                    proptest::prop_assert_eq!((node.store().get(&key, T0), node.store().used_bytes()), before);
                }
                let stored_seq = match node.store().get(&key, T0) {
                    Some(Record::Mutable(stored)) => Some(stored.seq),
                    _ => None,
                };
                proptest::prop_assert_eq!(stored_seq, highest);
            }
        }
    }

    #[test]
    fn a_full_node_refuses_with_the_reason() {
        let mut config = DhtConfig::new(1);
        config.dht_storage_bytes = 1_000;
        let mut node = DhtNode::new(config, keypair(1).node_id(), T0).expect("valid");
        let from = keypair(2).node_id();
        let small = Record::immutable(vec![1; 500], LATER).expect("small");
        assert_eq!(
            store_request(&mut node, from, small.clone()),
            Response::Stored { result: Ok(()) }
        );
        let response = store_request(
            &mut node,
            from,
            Record::immutable(vec![2; 500], LATER).expect("small"),
        );
        assert_eq!(
            response,
            Response::Stored {
                result: Err(RecordError::QuotaExceeded {
                    needed: small.stored_size(),
                    available: 1_000 - small.stored_size()
                })
            }
        );
        assert_eq!(node.store().len(), 1);
    }

    #[test]
    fn a_silent_peer_times_out_and_leaves_the_table() {
        let mut node = DhtNode::new(DhtConfig::new(1), keypair(1).node_id(), T0).expect("valid");
        let silent = keypair(2).node_id();
        node.add_peer(T0, silent);
        let query = node.find_node(T0, Key::for_value(b"anything"));
        assert!(matches!(node.poll_transmit(), Some((to, _)) if to == silent));
        let deadline = node.poll_timeout().expect("a deadline");
        assert_eq!(deadline, T0.saturating_add(Duration::from_secs(5)));
        node.handle_timeout(deadline);
        assert!(node.routing_table().is_empty());
        match node.poll_event() {
            Some(DhtEvent::FindNodeFinished {
                query: q,
                closest,
                stats,
                ..
            }) => {
                assert_eq!(q, query);
                assert!(closest.is_empty());
                assert_eq!(stats.failures, 1);
            }
            other => panic!("expected the query to finish, got {other:?}"),
        }
        assert_eq!(node.queries_running(), 0);
    }

    #[test]
    fn an_answer_from_the_wrong_peer_is_ignored() {
        let mut node = DhtNode::new(DhtConfig::new(1), keypair(1).node_id(), T0).expect("valid");
        let asked = keypair(2).node_id();
        let impostor = keypair(3).node_id();
        node.add_peer(T0, asked);
        node.find_node(T0, Key::for_value(b"x"));
        let Some((_, Message::Request { id, .. })) = node.poll_transmit() else {
            panic!("expected a request")
        };
        let answer = Message::Response {
            id,
            response: Response::Nodes { closer: vec![] },
        };
        node.handle_message(T0, impostor, answer);
        assert_eq!(node.counters().responses_unmatched, 1);
        assert_eq!(node.queries_running(), 1);
    }

    // ---- provider records ----

    const PRINTER: &[u8] = b"printer";

    fn provider_record(seed: u64, seq: u64, expires_at: Timestamp) -> ProviderRecord {
        ProviderRecord::sign(
            &keypair(seed),
            Key::for_topic(PRINTER),
            format!("printer of node {seed}").into_bytes(),
            seq,
            expires_at,
        )
        .expect("small info")
    }

    fn add_provider_finished(
        network: &Network,
        node: NodeId,
        query: QueryId,
    ) -> Option<Result<PutSummary, QueryError>> {
        network.events.iter().find_map(|(id, event)| match event {
            DhtEvent::AddProviderFinished {
                query: q, result, ..
            } if *id == node && *q == query => Some(result.clone()),
            _ => None,
        })
    }

    /// Runs a get-providers query from `resolver` at `now` and returns what it found.
    fn resolve(network: &mut Network, resolver: NodeId, now: Timestamp) -> Vec<ProviderRecord> {
        let query = network
            .node(&resolver)
            .get_providers(now, Key::for_topic(PRINTER));
        network.run(now);
        network
            .events
            .iter()
            .find_map(|(id, event)| match event {
                DhtEvent::GetProvidersFinished {
                    query: q,
                    topic,
                    providers,
                    stats,
                } if *id == resolver && *q == query => {
                    assert_eq!(*topic, Key::for_topic(PRINTER));
                    assert!(stats.requests > 0, "the network was asked");
                    Some(providers.clone())
                }
                _ => None,
            })
            .expect("the query finished")
    }

    fn provider_ids(providers: &[ProviderRecord]) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = providers.iter().map(|record| record.provider).collect();
        ids.sort();
        ids
    }

    fn add_provider_request(node: &mut DhtNode, from: NodeId, record: ProviderRecord) -> Response {
        node.handle_message(
            T0,
            from,
            Message::Request {
                id: RequestId(9),
                request: Request::AddProvider { record },
            },
        );
        match node.poll_transmit() {
            Some((to, Message::Response { id, response })) => {
                assert_eq!((to, id), (from, RequestId(9)));
                response
            }
            other => panic!("expected a response, got {other:?}"),
        }
    }

    #[test]
    fn providers_registered_by_three_nodes_are_all_resolved_from_a_fourth() {
        let mut network = Network::new(30);
        let seeds = [3, 11, 17];
        for seed in seeds {
            let provider = keypair(seed).node_id();
            let query = network
                .node(&provider)
                .add_provider(T0, provider_record(seed, 1, LATER));
            network.run(T0);
            let summary = add_provider_finished(&network, provider, query)
                .expect("finished")
                .expect("accepted");
            assert_eq!(summary.stored, 20, "{summary:?}");
            let held = network
                .node(&provider)
                .local_providers(&Key::for_topic(PRINTER), T0);
            assert!(held.iter().any(|record| record.provider == provider));
        }
        let resolver = keypair(25).node_id();
        let found = resolve(&mut network, resolver, T0);
        let mut expected: Vec<NodeId> = seeds.iter().map(|seed| keypair(*seed).node_id()).collect();
        expected.sort();
        assert_eq!(provider_ids(&found), expected);
        for record in &found {
            assert_eq!(record.validate(T0), Ok(()));
            let seed = seeds
                .into_iter()
                .find(|seed| keypair(*seed).node_id() == record.provider)
                .expect("one of the providers");
            assert_eq!(record.info, format!("printer of node {seed}").into_bytes());
        }
        assert!(network
            .events
            .iter()
            .all(|(_, event)| !matches!(event, DhtEvent::PeerMisbehaved { .. })));
    }

    #[test]
    fn forged_provider_records_are_refused_and_counted() {
        let owner = keypair(100);
        let forger = keypair(101);
        let mut node = DhtNode::new(DhtConfig::new(1), keypair(102).node_id(), T0).expect("valid");
        // The forger signs with its own key under the owner's name.
        let mut wrong_key = provider_record(101, 1, LATER);
        wrong_key.provider = owner.node_id();
        // A genuine record with one bit of its info flipped.
        let mut flipped = provider_record(100, 1, LATER);
        flipped.info[0] ^= 0x01;
        for forged in [wrong_key, flipped] {
            assert_eq!(
                add_provider_request(&mut node, forger.node_id(), forged),
                Response::Stored {
                    result: Err(RecordError::BadSignature)
                }
            );
            assert_eq!(
                node.poll_event(),
                Some(DhtEvent::PeerMisbehaved {
                    peer: forger.node_id(),
                    reason: "offered a provider record with a bad signature"
                })
            );
        }
        assert!(node.provider_store().is_empty());
        assert_eq!(node.counters().provider_records_forged, 2);
        assert_eq!(node.counters().providers_refused, 2);
        // The genuine record is accepted, from anyone.
        assert_eq!(
            add_provider_request(&mut node, forger.node_id(), provider_record(100, 1, LATER)),
            Response::Stored { result: Ok(()) }
        );
        assert_eq!(
            provider_ids(&node.local_providers(&Key::for_topic(PRINTER), T0)),
            vec![owner.node_id()]
        );
    }

    #[test]
    fn a_forged_provider_record_in_an_answer_is_dropped_and_counted() {
        let liar = keypair(2).node_id();
        let mut flipped = provider_record(3, 1, LATER);
        flipped.signature.0[7] ^= 0x10;
        let other_topic =
            ProviderRecord::sign(&keypair(4), Key::for_topic(b"scanner"), vec![], 1, LATER)
                .expect("small info");
        for (index, forged) in [flipped, other_topic].into_iter().enumerate() {
            let mut node =
                DhtNode::new(DhtConfig::new(1), keypair(1).node_id(), T0).expect("valid");
            node.add_peer(T0, liar);
            let query = node.get_providers(T0, Key::for_topic(PRINTER));
            let Some((to, Message::Request { id, request })) = node.poll_transmit() else {
                panic!("expected a request")
            };
            assert_eq!(
                (to, request),
                (
                    liar,
                    Request::GetProviders {
                        topic: Key::for_topic(PRINTER)
                    }
                )
            );
            let answer = Response::Providers {
                providers: vec![provider_record(5, 1, LATER), forged],
                closer: vec![],
            };
            node.handle_message(
                T0,
                liar,
                Message::Response {
                    id,
                    response: answer,
                },
            );
            assert_eq!(node.counters().provider_records_forged, 1, "case {index}");
            assert_eq!(
                node.poll_event(),
                Some(DhtEvent::PeerMisbehaved {
                    peer: liar,
                    reason: "sent an invalid or unrequested record"
                })
            );
            match node.poll_event() {
                Some(DhtEvent::GetProvidersFinished {
                    query: q,
                    providers,
                    stats,
                    ..
                }) => {
                    assert_eq!(q, query);
                    // The whole answer of a lying peer is discarded.
                    assert!(providers.is_empty());
                    assert_eq!(stats.failures, 1);
                }
                other => panic!("expected the query to finish, got {other:?}"),
            }
        }
    }

    #[test]
    fn answers_are_merged_keeping_the_highest_sequence_number() {
        let mut node = DhtNode::new(DhtConfig::new(1), keypair(1).node_id(), T0).expect("valid");
        let peers = [keypair(2).node_id(), keypair(3).node_id()];
        for peer in peers {
            node.add_peer(T0, peer);
        }
        let query = node.get_providers(T0, Key::for_topic(PRINTER));
        let mut requests = Vec::new();
        while let Some((to, Message::Request { id, .. })) = node.poll_transmit() {
            requests.push((to, id));
        }
        assert_eq!(requests.len(), 2);
        for ((to, id), seq) in requests.into_iter().zip([2, 1]) {
            let providers = vec![provider_record(7, seq, LATER), provider_record(8, 1, LATER)];
            let response = Response::Providers {
                providers,
                closer: vec![],
            };
            node.handle_message(T0, to, Message::Response { id, response });
        }
        match node.poll_event() {
            Some(DhtEvent::GetProvidersFinished {
                query: q,
                providers,
                ..
            }) => {
                assert_eq!(q, query);
                let seqs: BTreeMap<NodeId, u64> = providers
                    .iter()
                    .map(|record| (record.provider, record.seq))
                    .collect();
                assert_eq!(
                    seqs,
                    BTreeMap::from([(keypair(7).node_id(), 2), (keypair(8).node_id(), 1)])
                );
            }
            other => panic!("expected the query to finish, got {other:?}"),
        }
    }

    #[test]
    fn a_stale_provider_record_is_refused() {
        let mut node = DhtNode::new(DhtConfig::new(1), keypair(1).node_id(), T0).expect("valid");
        let from = keypair(2).node_id();
        assert_eq!(
            add_provider_request(&mut node, from, provider_record(5, 5, LATER)),
            Response::Stored { result: Ok(()) }
        );
        for seq in [5, 4] {
            assert_eq!(
                add_provider_request(
                    &mut node,
                    from,
                    provider_record(5, seq, Timestamp::from_millis(7_000_000))
                ),
                Response::Stored {
                    result: Err(RecordError::Stale {
                        stored: 5,
                        offered: seq
                    })
                }
            );
        }
        assert_eq!(node.counters().providers_refused, 2);
        assert_eq!(node.counters().provider_records_forged, 0);
        let held = node.local_providers(&Key::for_topic(PRINTER), T0);
        assert_eq!(held, vec![provider_record(5, 5, LATER)]);
        // The same rule holds for a node's own announcements.
        let mut own = DhtNode::new(DhtConfig::new(1), keypair(5).node_id(), T0).expect("valid");
        let first = own.add_provider(T0, provider_record(5, 3, LATER));
        let again = own.add_provider(T0, provider_record(5, 3, LATER));
        let results: Vec<(QueryId, Result<PutSummary, QueryError>)> =
            std::iter::from_fn(|| own.poll_event())
                .filter_map(|event| match event {
                    DhtEvent::AddProviderFinished { query, result, .. } => Some((query, result)),
                    _ => None,
                })
                .collect();
        assert_eq!(
            results,
            vec![
                (first, Ok(PutSummary::default())),
                (
                    again,
                    Err(QueryError::Record(RecordError::Stale {
                        stored: 3,
                        offered: 3
                    }))
                )
            ]
        );
    }

    #[test]
    fn a_node_announces_only_itself_and_within_the_ttl() {
        let mut node = DhtNode::new(DhtConfig::new(1), keypair(1).node_id(), T0).expect("valid");
        node.add_provider(T0, provider_record(2, 1, LATER));
        node.add_provider(T0, provider_record(1, 1, Timestamp::MAX));
        let errors: Vec<QueryError> = std::iter::from_fn(|| node.poll_event())
            .filter_map(|event| match event {
                DhtEvent::AddProviderFinished {
                    result: Err(error), ..
                } => Some(error),
                _ => None,
            })
            .collect();
        assert_eq!(
            errors,
            vec![
                QueryError::Record(RecordError::NotOwner),
                QueryError::Record(RecordError::ExpiresTooLate {
                    max_ttl_secs: 48 * 3600
                })
            ]
        );
        assert!(node.provider_store().is_empty());
    }

    #[test]
    fn a_provider_expires_unless_refreshed() {
        let mut network = Network::new(30);
        let provider = keypair(4).node_id();
        let resolver = keypair(21).node_id();
        let expires_at = T0.saturating_add(Duration::from_secs(600));
        network
            .node(&provider)
            .add_provider(T0, provider_record(4, 1, expires_at));
        network.run(T0);
        assert_eq!(
            provider_ids(&resolve(&mut network, resolver, T0)),
            vec![provider]
        );

        // Past its expiry the record is no longer served, and the sweep drops it everywhere.
        let after = expires_at.saturating_add(Duration::from_secs(60));
        assert!(resolve(&mut network, resolver, after).is_empty());
        for id in network.ids() {
            network.node(&id).handle_timeout(after);
        }
        network.run(after);
        for id in network.ids() {
            assert!(network.node(&id).provider_store().is_empty());
        }

        // Announced again with a later expiry, it is back.
        let renewed = after.saturating_add(Duration::from_secs(3600));
        network
            .node(&provider)
            .add_provider(after, provider_record(4, 2, renewed));
        network.run(after);
        let found = resolve(&mut network, resolver, after);
        assert_eq!(provider_ids(&found), vec![provider]);
        assert_eq!(found[0].seq, 2);
    }

    #[test]
    fn the_per_topic_bound_keeps_the_providers_that_expire_last() {
        let mut network = Network::new(30);
        let providers: Vec<u64> = (0..25).collect();
        for seed in &providers {
            let id = keypair(*seed).node_id();
            // Provider `seed` expires `seed` minutes after LATER: the last 20 live longest.
            let expires_at = LATER.saturating_add(Duration::from_secs(60 * seed));
            network
                .node(&id)
                .add_provider(T0, provider_record(*seed, 1, expires_at));
            network.run(T0);
        }
        let topic = Key::for_topic(PRINTER);
        for id in network.ids() {
            let held = network.node(&id).local_providers(&topic, T0);
            assert!(held.len() <= MAX_PROVIDERS_PER_TOPIC, "{} held", held.len());
        }
        let found = resolve(&mut network, keypair(27).node_id(), T0);
        let mut expected: Vec<NodeId> = (5..25).map(|seed| keypair(seed).node_id()).collect();
        expected.sort();
        assert_eq!(provider_ids(&found), expected);
        // Latest expiry first.
        assert!(found
            .windows(2)
            .all(|pair| pair[0].expires_at >= pair[1].expires_at));
    }

    #[test]
    fn own_provider_records_are_republished_to_the_nodes_closest_now() {
        let mut network = Network::new(30);
        let provider = keypair(6).node_id();
        let record = provider_record(6, 1, LATER.saturating_add(Duration::from_secs(3600)));
        network.node(&provider).add_provider(T0, record.clone());
        network.run(T0);
        let joined_at = T0.saturating_add(Duration::from_secs(60));
        for seed in 100..115 {
            network.join(seed, joined_at);
        }
        let topic = Key::for_topic(PRINTER);
        let mut closest = network.ids();
        closest.retain(|id| *id != provider);
        closest.sort_by_key(|id| Key::for_node(id).distance(&topic));
        closest.truncate(20);
        let holders = |network: &mut Network, at: Timestamp| {
            closest
                .iter()
                .filter(|id| network.node(id).local_providers(&topic, at) == vec![record.clone()])
                .count()
        };
        assert!(
            holders(&mut network, joined_at) < 20,
            "newcomers among the closest lack it"
        );
        let republish_at = T0.saturating_add(DhtConfig::new(0).republish_interval);
        network.node(&provider).handle_timeout(republish_at);
        network.run(republish_at);
        assert_eq!(holders(&mut network, republish_at), 20);
    }

    #[test]
    fn a_removed_provider_is_no_longer_served_or_republished() {
        let mut network = Network::new(30);
        let provider = keypair(6).node_id();
        let topic = Key::for_topic(PRINTER);
        let record = provider_record(6, 1, LATER);
        network.node(&provider).add_provider(T0, record.clone());
        network.run(T0);
        let node = network.node(&provider);
        assert_eq!(node.provider_store().published_topics(), vec![topic]);
        assert_eq!(node.remove_provider(&topic), Some(record));
        assert_eq!(node.remove_provider(&topic), None);
        assert!(node.local_providers(&topic, T0).is_empty());
        let sent = node.counters().requests_sent;
        let republish_at = T0.saturating_add(DhtConfig::new(0).republish_interval);
        node.handle_timeout(republish_at);
        assert_eq!(node.counters().requests_sent, sent);
        assert_eq!(node.poll_transmit(), None);
    }
}
