//! The DHT driver: runs the sans-IO [`DhtNode`] over iroh QUIC connections with the
//! [`DHT_ALPN`] protocol, persists its records, and resolves node ids to addresses.
//!
//! Each DHT message travels in its own unidirectional QUIC stream, as one
//! [`Envelope`] (the message plus address hints for the peers it names). Connections are
//! cached per peer, both ways, so an answer goes back on the connection its request came
//! from. Delivery is best-effort, as for UDP Kademlia: the core times out unanswered
//! requests itself.
//!
//! Records the core stores or drops are written to `meshcore_dht` by a batching writer
//! task (never awaited by the actor), and loaded back on start.
//!
//! [`DhtAddressLookup`] is iroh's `AddressLookup` over the DHT: every node publishes a
//! record signed by its own key holding its addresses (salt [`ADDRESS_SALT`]), and a dial
//! to a node id this node has no address for resolves through it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::stream::BoxStream;
use iroh::address_lookup::{self, AddressLookup, EndpointData, EndpointInfo, Item};
use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler};
use iroh::{Endpoint, EndpointAddr, EndpointId};
use meshcore_proto::dht::envelope::{
    decode_envelope, encode_envelope, AddressHint, Envelope, MAX_ADDRS_PER_HINT, MAX_ENVELOPE_LEN,
};
use meshcore_proto::dht::{
    DhtConfig, DhtEvent, DhtNode, Key, MemoryRecordStore, Message, MutableRecord, ProviderRecord,
    PutSummary, QueryError, QueryId, Record, RecordError, RecordOrigin, RecordStore, Response,
    Timestamp,
};
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::{DhtChange, DhtRow, Store};
use tokio::sync::{mpsc, oneshot};

use crate::clock::{now, sleep_until, unix_millis};
use crate::endpoint::{endpoint_id_of, inbound_peer, node_id_of};
use crate::link::close_code;

/// The ALPN of the DHT protocol.
pub const DHT_ALPN: &[u8] = b"meshcore/dht/1";

/// Salt of the mutable record in which a node publishes its own addresses.
pub const ADDRESS_SALT: &[u8] = b"meshcore/addrs/v1";

/// Lifetime of a node's address record; it is re-signed at half of it.
pub const ADDRESS_RECORD_TTL: Duration = Duration::from_secs(3600);

/// Longest a DHT dial (connect + send) may take.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(5);

/// Most cached DHT connections; beyond it the least recently used one is closed.
pub const MAX_CONNECTIONS: usize = 128;

/// Most peers remembered in the address book.
pub const MAX_BOOK_ENTRIES: usize = 16_384;

/// Most DHT sends in flight at once; beyond it messages are dropped (and counted).
pub const MAX_SENDS_IN_FLIGHT: usize = 256;

/// Least time between two bootstrap lookups started because peers were added.
const BOOTSTRAP_SPACING: Duration = Duration::from_secs(10);

const COMMAND_QUEUE: usize = 1024;
const INBOUND_QUEUE: usize = 4096;
const PERSIST_QUEUE: usize = 1024;

/// Addresses known for peers, shared by the network, the DHT and the address lookup.
#[derive(Debug, Clone, Default)]
pub struct AddressBook {
    inner: Arc<Mutex<BTreeMap<NodeId, Vec<SocketAddr>>>>,
}

impl AddressBook {
    /// Records `addrs` for `node` (most recent first, at most [`MAX_ADDRS_PER_HINT`]).
    pub fn add(&self, node: NodeId, addrs: &[SocketAddr]) {
        let usable: Vec<SocketAddr> = addrs
            .iter()
            .filter(|a| !a.ip().is_unspecified() && a.port() != 0)
            .copied()
            .collect();
        if usable.is_empty() {
            return;
        }
        let Ok(mut book) = self.inner.lock() else {
            return;
        };
        if !book.contains_key(&node) && book.len() >= MAX_BOOK_ENTRIES {
            // Forget an arbitrary entry; the book is a cache, the DHT the source of truth.
            if let Some(first) = book.keys().next().copied() {
                book.remove(&first);
            }
        }
        let entry = book.entry(node).or_default();
        let mut merged = usable;
        merged.extend(entry.iter().copied());
        let mut seen = HashSet::new();
        merged.retain(|a| seen.insert(*a));
        merged.truncate(MAX_ADDRS_PER_HINT);
        *entry = merged;
    }

    /// The addresses known for `node`.
    pub fn get(&self, node: &NodeId) -> Vec<SocketAddr> {
        self.inner
            .lock()
            .ok()
            .and_then(|book| book.get(node).cloned())
            .unwrap_or_default()
    }

    /// Number of peers with addresses.
    pub fn len(&self) -> usize {
        self.inner.lock().map_or(0, |book| book.len())
    }

    /// Whether no address is known.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What changed in a [`JournaledStore`] since it was last drained.
#[derive(Debug, Default)]
struct Journal {
    changes: Vec<(Key, Option<(Record, RecordOrigin)>)>,
    expired_at: Option<Timestamp>,
}

/// The journal, shared by the store (inside the core) and the driver (which drains it).
#[derive(Debug, Clone, Default)]
struct SharedJournal(Arc<Mutex<Journal>>);

impl SharedJournal {
    fn record(&self, key: Key, change: Option<(Record, RecordOrigin)>) {
        if let Ok(mut journal) = self.0.lock() {
            journal.changes.push((key, change));
        }
    }

    fn expired(&self, at: Timestamp) {
        if let Ok(mut journal) = self.0.lock() {
            journal.expired_at = Some(at);
        }
    }

    /// The changes since the last call, as store rows.
    fn drain(&self, local: &NodeId, now: Timestamp) -> Vec<DhtChange> {
        let Ok(mut journal) = self.0.lock() else {
            return Vec::new();
        };
        let mut changes = Vec::with_capacity(journal.changes.len() + 1);
        if let Some(at) = journal.expired_at.take() {
            changes.push(DhtChange::RemoveExpired(
                i64::try_from(at.as_millis() / 1000).unwrap_or(i64::MAX),
            ));
        }
        for (key, change) in journal.changes.drain(..) {
            changes.push(match change {
                Some((record, origin)) => DhtChange::Put(row_of(&record, origin, local, now)),
                None => DhtChange::Remove(key.to_string()),
            });
        }
        changes
    }
}

/// A [`RecordStore`] that remembers what changed, so the driver can persist it.
#[derive(Debug)]
struct JournaledStore {
    inner: MemoryRecordStore,
    published: HashSet<Key>,
    journal: SharedJournal,
}

impl JournaledStore {
    fn new(quota: u64, journal: SharedJournal) -> Self {
        Self {
            inner: MemoryRecordStore::new(quota),
            published: HashSet::new(),
            journal,
        }
    }
}

impl RecordStore for JournaledStore {
    fn get(&self, key: &Key, now: Timestamp) -> Option<Record> {
        self.inner.get(key, now)
    }

    fn put(
        &mut self,
        record: Record,
        origin: RecordOrigin,
        now: Timestamp,
    ) -> Result<(), RecordError> {
        let key = record.key();
        self.inner.put(record.clone(), origin, now)?;
        let origin = if origin == RecordOrigin::Published || self.published.contains(&key) {
            self.published.insert(key);
            RecordOrigin::Published
        } else {
            origin
        };
        self.journal.record(key, Some((record, origin)));
        Ok(())
    }

    fn remove(&mut self, key: &Key) -> Option<Record> {
        let removed = self.inner.remove(key)?;
        self.published.remove(key);
        self.journal.record(*key, None);
        Some(removed)
    }

    fn remove_expired(&mut self, now: Timestamp) -> usize {
        let removed = self.inner.remove_expired(now);
        if removed > 0 {
            let live: HashSet<Key> = self.inner.published_keys().into_iter().collect();
            self.published.retain(|key| live.contains(key));
            self.journal.expired(now);
        }
        removed
    }

    fn published_keys(&self) -> Vec<Key> {
        self.inner.published_keys()
    }

    fn len(&self) -> usize {
        self.inner.len()
    }

    fn used_bytes(&self) -> u64 {
        self.inner.used_bytes()
    }
}

fn row_of(record: &Record, origin: RecordOrigin, local: &NodeId, now: Timestamp) -> DhtRow {
    let expires_ms = record.expires_at().as_millis();
    let node_id = match (record, origin) {
        (Record::Mutable(mutable), _) => mutable.owner.to_string(),
        (_, RecordOrigin::Published) => local.to_string(),
        _ => String::new(),
    };
    DhtRow {
        key_hash: record.key().to_string(),
        value_data: record.value().to_vec(),
        node_id,
        ttl: i64::try_from(expires_ms.saturating_sub(now.as_millis()) / 1000)
            .unwrap_or(i64::MAX)
            .max(1),
        expires_at: i64::try_from(expires_ms.div_ceil(1000)).unwrap_or(i64::MAX),
        record: postcard::to_stdvec(record).unwrap_or_default(),
        origin: match origin {
            RecordOrigin::Published => "published",
            RecordOrigin::Replica => "replica",
        }
        .to_owned(),
    }
}

/// Parses a DHT key written as 64 hex characters.
pub fn parse_key(text: &str) -> Result<Key, String> {
    let bytes = hex::decode(text).map_err(|error| format!("not hex: {error}"))?;
    let bytes: [u8; 32] = bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| format!("{} bytes, expected 32", bytes.len()))?;
    Ok(Key::from_bytes(bytes))
}

/// Why a DHT operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DhtError {
    /// The query ran and ended without a result.
    #[error(transparent)]
    Query(#[from] QueryError),
    /// The node is shutting down.
    #[error("the DHT is shutting down")]
    ShuttingDown,
    /// The node has too many commands queued.
    #[error("the DHT is busy; try again")]
    Busy,
}

/// Counters and sizes, for `stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct DhtStats {
    /// Entries in the routing table.
    pub routing_table_len: usize,
    /// Records held (published here or replicas).
    pub records: usize,
    /// Bytes charged against `dht_storage_bytes`.
    pub storage_used_bytes: u64,
    /// Queries running.
    pub queries_running: usize,
    /// Cached DHT connections.
    pub connections: usize,
    /// Messages dropped because too many sends were in flight.
    pub sends_dropped: u64,
    /// Envelopes from peers that did not decode.
    pub bad_envelopes: u64,
}

enum Command {
    Put(Record, oneshot::Sender<Result<PutSummary, QueryError>>),
    Get(Key, oneshot::Sender<Result<Record, QueryError>>),
    Local(Key, oneshot::Sender<Option<Record>>),
    AddProvider(
        ProviderRecord,
        oneshot::Sender<Result<PutSummary, QueryError>>,
    ),
    GetProviders(Key, oneshot::Sender<Vec<ProviderRecord>>),
    AddPeer(NodeId),
    Sample(usize, oneshot::Sender<Vec<(NodeId, Vec<SocketAddr>)>>),
    PublishAddrs(Vec<SocketAddr>),
    Stats(oneshot::Sender<DhtStats>),
    Shutdown(oneshot::Sender<()>),
}

/// A handle to the running DHT. Clones share it.
#[derive(Debug, Clone)]
pub struct Dht {
    local: NodeId,
    keys: Arc<NodeKeypair>,
    commands: mpsc::Sender<Command>,
    book: AddressBook,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

/// What the DHT driver needs at start.
#[derive(Debug, Clone)]
pub struct DhtOptions {
    /// Setting `dht_storage_bytes`.
    pub storage_bytes: u64,
    /// Seed of the core's random choices.
    pub rng_seed: u64,
}

/// The parts [`Dht::start`] returns to the network: the handle and the protocol handler to
/// register for [`DHT_ALPN`].
#[derive(Debug)]
pub struct DhtParts {
    /// The handle.
    pub dht: Dht,
    /// Accepts inbound DHT connections.
    pub acceptor: DhtAcceptor,
}

impl Dht {
    /// Loads the stored records and starts the driver on `endpoint`.
    pub async fn start(
        keys: &NodeKeypair,
        endpoint: Endpoint,
        store: Store,
        book: AddressBook,
        options: DhtOptions,
    ) -> Result<DhtParts, meshcore_proto::dht::ConfigError> {
        let local = keys.node_id();
        let mut config = DhtConfig::new(options.rng_seed);
        config.dht_storage_bytes = options.storage_bytes;
        let started = now();
        let journal = SharedJournal::default();
        // Restored records are in the database already: they are not journaled.
        let mut records = JournaledStore::new(options.storage_bytes, SharedJournal::default());
        let restored = restore(&store, &mut records, started).await;
        records.journal = journal.clone();
        let node = DhtNode::with_store(config, local, records, started)?;
        tracing::info!(restored, "DHT records restored from the store");

        let (commands_tx, commands_rx) = mpsc::channel(COMMAND_QUEUE);
        let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_QUEUE);
        let connections = ConnectionCache::default();
        let counters = Arc::new(SharedCounters::default());
        let (persist_tx, persist_rx) = mpsc::channel(PERSIST_QUEUE);
        let persist_task = tokio::spawn(persist(store, persist_rx));
        let keys = Arc::new(NodeKeypair::from_signing_key(keys.signing_key().clone()));
        let driver = Driver {
            local,
            keys: keys.clone(),
            node,
            journal,
            own_addrs: Vec::new(),
            next_addr_refresh: None,
            endpoint,
            book: book.clone(),
            connections: connections.clone(),
            inbound: inbound_tx.clone(),
            counters: counters.clone(),
            puts: HashMap::new(),
            provider_lookups: HashMap::new(),
            gets: HashMap::new(),
            persist: persist_tx,
            persist_task,
            last_bootstrap: None,
            sends: Arc::new(tokio::sync::Semaphore::new(MAX_SENDS_IN_FLIGHT)),
        };
        tokio::spawn(driver.run(commands_rx, inbound_rx));
        let dht = Self {
            local,
            keys,
            commands: commands_tx,
            book,
        };
        Ok(DhtParts {
            dht,
            acceptor: DhtAcceptor {
                local,
                inbound: inbound_tx,
                connections,
                counters,
            },
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.local
    }

    /// The shared address book.
    pub fn address_book(&self) -> &AddressBook {
        &self.book
    }

    async fn ask<T>(
        &self,
        command: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, DhtError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .try_send(command(reply))
            .map_err(|error| match error {
                mpsc::error::TrySendError::Full(_) => DhtError::Busy,
                mpsc::error::TrySendError::Closed(_) => DhtError::ShuttingDown,
            })?;
        answer.await.map_err(|_| DhtError::ShuttingDown)
    }

    /// Stores `record` here and on the k nodes closest to its key.
    pub async fn put(&self, record: Record) -> Result<PutSummary, DhtError> {
        Ok(self.ask(|reply| Command::Put(record, reply)).await??)
    }

    /// Finds the record at `key`.
    pub async fn get(&self, key: Key) -> Result<Record, DhtError> {
        Ok(self.ask(|reply| Command::Get(key, reply)).await??)
    }

    /// Registers this node as a provider of the service `name` with `info`, for `ttl`,
    /// here and on the k nodes closest to the name's topic. The entry is re-sent while it
    /// lives and expires unless registered again.
    pub async fn provide(
        &self,
        name: &str,
        info: Vec<u8>,
        ttl: Duration,
    ) -> Result<PutSummary, DhtError> {
        let record = ProviderRecord::sign(
            &self.keys,
            Key::for_topic(name.as_bytes()),
            info,
            unix_millis(),
            now().saturating_add(ttl),
        )
        .map_err(|error| DhtError::Query(QueryError::Record(error)))?;
        Ok(self
            .ask(|reply| Command::AddProvider(record, reply))
            .await??)
    }

    /// The providers of the service `name`, from this node and the nodes closest to it.
    pub async fn providers(&self, name: &str) -> Result<Vec<ProviderRecord>, DhtError> {
        let topic = Key::for_topic(name.as_bytes());
        self.ask(|reply| Command::GetProviders(topic, reply)).await
    }

    /// The record at `key` held by this node, if any.
    pub async fn local(&self, key: Key) -> Result<Option<Record>, DhtError> {
        self.ask(|reply| Command::Local(key, reply)).await
    }

    /// Signs a mutable record owned by this node under `salt`, with a sequence number
    /// above any version this node holds.
    pub async fn sign_own(
        &self,
        salt: &[u8],
        value: Vec<u8>,
        ttl: Duration,
    ) -> Result<Record, DhtError> {
        let key = Key::for_mutable(&self.local, salt);
        let previous = match self.local(key).await? {
            Some(Record::Mutable(record)) => record.seq,
            _ => 0,
        };
        let seq = previous.saturating_add(1).max(unix_millis());
        let expires_at = now().saturating_add(ttl);
        MutableRecord::sign(&self.keys, salt.to_vec(), seq, value, expires_at)
            .map(Record::Mutable)
            .map_err(|error| DhtError::Query(QueryError::Record(error)))
    }

    /// Adds a peer (a node this node holds a link to) to the routing table.
    pub fn add_peer(&self, peer: NodeId, addrs: &[SocketAddr]) {
        self.book.add(peer, addrs);
        let _ = self.commands.try_send(Command::AddPeer(peer));
    }

    /// Up to `count` nodes of the routing table whose addresses are known (for DHT
    /// discovery).
    pub async fn sample_peers(&self, count: usize) -> Vec<(NodeId, Vec<SocketAddr>)> {
        self.ask(|reply| Command::Sample(count, reply))
            .await
            .unwrap_or_default()
    }

    /// Publishes this node's addresses in its address record.
    pub fn publish_addrs(&self, addrs: Vec<SocketAddr>) {
        let _ = self.commands.try_send(Command::PublishAddrs(addrs));
    }

    /// Resolves `node` to its addresses: the address book first, then its address record.
    pub async fn resolve(&self, node: NodeId) -> Result<Vec<SocketAddr>, DhtError> {
        let known = self.book.get(&node);
        if !known.is_empty() {
            return Ok(known);
        }
        let record = self.get(Key::for_mutable(&node, ADDRESS_SALT)).await?;
        let addrs = decode_addrs(record.value()).ok_or(DhtError::Query(QueryError::NotFound))?;
        self.book.add(node, &addrs);
        Ok(addrs)
    }

    /// Counters and sizes.
    pub async fn stats(&self) -> Result<DhtStats, DhtError> {
        self.ask(Command::Stats).await
    }

    /// Stops the driver after flushing the records.
    pub async fn shutdown(&self) {
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

/// Encodes an address list for an address record.
pub fn encode_addrs(addrs: &[SocketAddr]) -> Vec<u8> {
    let addrs: Vec<SocketAddr> = addrs.iter().take(MAX_ADDRS_PER_HINT).copied().collect();
    postcard::to_stdvec(&addrs).unwrap_or_default()
}

/// Decodes an address record's value; `None` if it is not a bounded address list.
pub fn decode_addrs(bytes: &[u8]) -> Option<Vec<SocketAddr>> {
    let (addrs, rest): (Vec<SocketAddr>, &[u8]) = postcard::take_from_bytes(bytes).ok()?;
    (rest.is_empty() && addrs.len() <= MAX_ADDRS_PER_HINT).then_some(addrs)
}

async fn restore(store: &Store, records: &mut JournaledStore, now: Timestamp) -> usize {
    let rows = match store
        .load_dht_records(i64::try_from(now.as_millis() / 1000).unwrap_or(i64::MAX))
        .await
    {
        Ok(rows) => rows,
        Err(error) => {
            tracing::warn!(%error, "could not load DHT records; starting without them");
            return 0;
        }
    };
    let mut restored = 0;
    for row in rows {
        let record = match postcard::from_bytes::<Record>(&row.record) {
            Ok(record) => record,
            Err(error) => {
                tracing::warn!(key = %row.key_hash, %error, "skipping an undecodable stored DHT record");
                continue;
            }
        };
        if let Err(error) = record.validate(now) {
            tracing::warn!(key = %row.key_hash, %error, "skipping an invalid stored DHT record");
            continue;
        }
        let origin = if row.origin == "published" {
            RecordOrigin::Published
        } else {
            RecordOrigin::Replica
        };
        if records.put(record, origin, now).is_ok() {
            restored += 1;
        }
    }
    restored
}

async fn persist(store: Store, mut changes: mpsc::Receiver<Vec<DhtChange>>) {
    while let Some(mut batch) = changes.recv().await {
        while let Ok(more) = changes.try_recv() {
            batch.extend(more);
        }
        if let Err(error) = store.apply_dht_changes(&batch).await {
            tracing::warn!(%error, changes = batch.len(), "could not store DHT records");
        }
    }
}

#[derive(Debug, Default)]
struct SharedCounters {
    sends_dropped: std::sync::atomic::AtomicU64,
    bad_envelopes: std::sync::atomic::AtomicU64,
}

/// DHT connections by peer, both directions, least recently used evicted.
#[derive(Debug, Clone, Default)]
struct ConnectionCache {
    inner: Arc<Mutex<HashMap<NodeId, (Connection, tokio::time::Instant)>>>,
}

impl ConnectionCache {
    fn get(&self, peer: &NodeId) -> Option<Connection> {
        let mut cache = self.inner.lock().ok()?;
        let entry = cache.get_mut(peer)?;
        if entry.0.close_reason().is_some() {
            cache.remove(peer);
            return None;
        }
        entry.1 = tokio::time::Instant::now();
        Some(entry.0.clone())
    }

    fn insert(&self, peer: NodeId, connection: Connection) {
        let Ok(mut cache) = self.inner.lock() else {
            return;
        };
        if !cache.contains_key(&peer) && cache.len() >= MAX_CONNECTIONS {
            let oldest = cache
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(id, _)| *id);
            if let Some(oldest) = oldest.and_then(|id| cache.remove(&id)) {
                oldest.0.close(
                    VarInt::from_u32(close_code::NORMAL),
                    b"DHT connection cache full",
                );
            }
        }
        cache.insert(peer, (connection, tokio::time::Instant::now()));
    }

    fn len(&self) -> usize {
        self.inner.lock().map_or(0, |cache| cache.len())
    }

    fn close_all(&self) {
        if let Ok(mut cache) = self.inner.lock() {
            for (_, (connection, _)) in cache.drain() {
                connection.close(VarInt::from_u32(close_code::NORMAL), b"shutting down");
            }
        }
    }
}

/// Reads envelopes from every unidirectional stream of `connection` until it closes.
async fn read_envelopes(
    connection: Connection,
    peer: NodeId,
    inbound: mpsc::Sender<(NodeId, Envelope)>,
    counters: Arc<SharedCounters>,
) {
    while let Ok(mut stream) = connection.accept_uni().await {
        let bytes = match stream.read_to_end(MAX_ENVELOPE_LEN).await {
            Ok(bytes) => bytes,
            Err(error) => {
                tracing::debug!(%peer, %error, "a DHT stream failed");
                continue;
            }
        };
        match decode_envelope(&bytes) {
            Ok(envelope) => {
                if inbound.send((peer, envelope)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                counters
                    .bad_envelopes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::warn!(%peer, %error, "closing a DHT connection that sent garbage");
                connection.close(
                    VarInt::from_u32(close_code::PROTOCOL_VIOLATION),
                    error.to_string().as_bytes(),
                );
                return;
            }
        }
    }
}

/// Accepts inbound DHT connections.
#[derive(Debug, Clone)]
pub struct DhtAcceptor {
    local: NodeId,
    inbound: mpsc::Sender<(NodeId, Envelope)>,
    connections: ConnectionCache,
    counters: Arc<SharedCounters>,
}

impl ProtocolHandler for DhtAcceptor {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let Some(peer) = inbound_peer(&connection, &self.local, "DHT") else {
            return Ok(());
        };
        self.connections.insert(peer, connection.clone());
        read_envelopes(
            connection,
            peer,
            self.inbound.clone(),
            self.counters.clone(),
        )
        .await;
        Ok(())
    }
}

struct Driver {
    local: NodeId,
    keys: Arc<NodeKeypair>,
    node: DhtNode<JournaledStore>,
    journal: SharedJournal,
    own_addrs: Vec<SocketAddr>,
    next_addr_refresh: Option<tokio::time::Instant>,
    endpoint: Endpoint,
    book: AddressBook,
    connections: ConnectionCache,
    inbound: mpsc::Sender<(NodeId, Envelope)>,
    counters: Arc<SharedCounters>,
    puts: HashMap<QueryId, oneshot::Sender<Result<PutSummary, QueryError>>>,
    provider_lookups: HashMap<QueryId, oneshot::Sender<Vec<ProviderRecord>>>,
    gets: HashMap<QueryId, oneshot::Sender<Result<Record, QueryError>>>,
    persist: mpsc::Sender<Vec<DhtChange>>,
    persist_task: tokio::task::JoinHandle<()>,
    last_bootstrap: Option<tokio::time::Instant>,
    sends: Arc<tokio::sync::Semaphore>,
}

impl Driver {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut inbound: mpsc::Receiver<(NodeId, Envelope)>,
    ) {
        let done = loop {
            let core_wake = self
                .node
                .poll_timeout()
                .map(|at| tokio::time::Instant::now() + at.saturating_duration_since(now()));
            let wake = match (core_wake, self.next_addr_refresh) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            tokio::select! {
                command = commands.recv() => match command {
                    Some(Command::Shutdown(done)) => break Some(done),
                    None => break None,
                    Some(command) => self.on_command(command),
                },
                Some((from, envelope)) = inbound.recv() => {
                    for hint in &envelope.hints {
                        self.book.add(hint.node, &hint.addrs);
                    }
                    self.node.handle_message(now(), from, envelope.message);
                }
                _ = sleep_until(wake) => {
                    if self.next_addr_refresh.is_some_and(|at| at <= tokio::time::Instant::now()) {
                        let addrs = std::mem::take(&mut self.own_addrs);
                        self.publish_addrs(addrs, now());
                    }
                    self.node.handle_timeout(now());
                }
            }
            self.flush();
        };
        self.connections.close_all();
        let changes = self.journal.drain(&self.local, now());
        if !changes.is_empty() {
            let _ = self.persist.send(changes).await;
        }
        // Let the writer finish what it was given.
        let Self {
            persist,
            persist_task,
            ..
        } = self;
        drop(persist);
        let _ = persist_task.await;
        if let Some(done) = done {
            let _ = done.send(());
        }
    }

    fn on_command(&mut self, command: Command) {
        let at = now();
        match command {
            Command::Put(record, reply) => {
                let query = self.node.put(at, record);
                self.puts.insert(query, reply);
            }
            Command::Get(key, reply) => {
                let query = self.node.get(at, key);
                self.gets.insert(query, reply);
            }
            Command::AddProvider(record, reply) => {
                let query = self.node.add_provider(at, record);
                self.puts.insert(query, reply);
            }
            Command::GetProviders(topic, reply) => {
                let query = self.node.get_providers(at, topic);
                self.provider_lookups.insert(query, reply);
            }
            Command::Local(key, reply) => {
                let _ = reply.send(self.node.store().get(&key, at));
            }
            Command::AddPeer(peer) => {
                let was_empty = self.node.routing_table().is_empty();
                self.node.add_peer(at, peer);
                let spaced = self
                    .last_bootstrap
                    .is_none_or(|last| last.elapsed() >= BOOTSTRAP_SPACING);
                if was_empty || spaced {
                    self.last_bootstrap = Some(tokio::time::Instant::now());
                    self.node.bootstrap(at);
                }
            }
            Command::Sample(count, reply) => {
                let sample = self
                    .node
                    .routing_table()
                    .entries()
                    .filter_map(|entry| {
                        let addrs = self.book.get(&entry.node);
                        (!addrs.is_empty()).then_some((entry.node, addrs))
                    })
                    .take(count)
                    .collect();
                let _ = reply.send(sample);
            }
            Command::PublishAddrs(addrs) => {
                if addrs != self.own_addrs {
                    self.publish_addrs(addrs, at);
                }
            }
            Command::Stats(reply) => {
                let _ = reply.send(DhtStats {
                    routing_table_len: self.node.routing_table().len(),
                    records: self.node.store().len(),
                    storage_used_bytes: self.node.store().used_bytes(),
                    queries_running: self.node.queries_running(),
                    connections: self.connections.len(),
                    sends_dropped: self
                        .counters
                        .sends_dropped
                        .load(std::sync::atomic::Ordering::Relaxed),
                    bad_envelopes: self
                        .counters
                        .bad_envelopes
                        .load(std::sync::atomic::Ordering::Relaxed),
                });
            }
            Command::Shutdown(_) => {}
        }
    }

    /// Signs and stores this node's address record, and schedules its renewal.
    fn publish_addrs(&mut self, addrs: Vec<SocketAddr>, at: Timestamp) {
        let key = Key::for_mutable(&self.local, ADDRESS_SALT);
        let previous = match self.node.store().get(&key, at) {
            Some(Record::Mutable(record)) => record.seq,
            _ => 0,
        };
        let seq = previous.saturating_add(1).max(at.as_millis());
        match MutableRecord::sign(
            &self.keys,
            ADDRESS_SALT.to_vec(),
            seq,
            encode_addrs(&addrs),
            at.saturating_add(ADDRESS_RECORD_TTL),
        ) {
            Ok(record) => {
                tracing::debug!(?addrs, "publishing this node's address record");
                self.node.put(at, Record::Mutable(record));
            }
            Err(error) => tracing::warn!(%error, "could not sign this node's address record"),
        }
        self.own_addrs = addrs;
        self.next_addr_refresh = Some(tokio::time::Instant::now() + ADDRESS_RECORD_TTL / 2);
    }

    /// Carries out what the core asked for: sends, answers to waiters, persistence.
    fn flush(&mut self) {
        while let Some((to, message)) = self.node.poll_transmit() {
            self.send(to, message);
        }
        while let Some(event) = self.node.poll_event() {
            match event {
                DhtEvent::PutFinished { query, result, .. }
                | DhtEvent::AddProviderFinished { query, result, .. } => {
                    if let Some(reply) = self.puts.remove(&query) {
                        let _ = reply.send(result);
                    }
                }
                DhtEvent::GetFinished { query, result, .. } => {
                    if let Some(reply) = self.gets.remove(&query) {
                        let _ = reply.send(result);
                    }
                }
                DhtEvent::GetProvidersFinished {
                    query, providers, ..
                } => {
                    if let Some(reply) = self.provider_lookups.remove(&query) {
                        let _ = reply.send(providers);
                    }
                }
                DhtEvent::PeerMisbehaved { peer, reason } => {
                    tracing::warn!(%peer, reason, "a DHT peer misbehaved");
                }
                _ => {}
            }
        }
        let changes = self.journal.drain(&self.local, now());
        if !changes.is_empty() && self.persist.try_send(changes).is_err() {
            tracing::warn!("the DHT record writer is behind; some changes were not stored");
        }
    }

    fn send(&self, to: NodeId, message: Message) {
        let Ok(permit) = self.sends.clone().try_acquire_owned() else {
            self.counters
                .sends_dropped
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        };
        let hints = match &message {
            Message::Response {
                response:
                    Response::Nodes { closer }
                    | Response::Value { closer, .. }
                    | Response::Providers { closer, .. },
                ..
            } => closer
                .iter()
                .filter_map(|node| {
                    let addrs = self.book.get(node);
                    (!addrs.is_empty()).then_some(AddressHint { node: *node, addrs })
                })
                .collect(),
            _ => Vec::new(),
        };
        let bytes = encode_envelope(&Envelope { message, hints });
        let (endpoint, connections, book) = (
            self.endpoint.clone(),
            self.connections.clone(),
            self.book.clone(),
        );
        let (inbound, counters) = (self.inbound.clone(), self.counters.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let attempt = async {
                let connection = match connections.get(&to) {
                    Some(connection) => connection,
                    None => {
                        let id = endpoint_id_of(&to).ok_or("invalid node id")?;
                        let target = book
                            .get(&to)
                            .into_iter()
                            .fold(EndpointAddr::new(id), |t, a| t.with_ip_addr(a));
                        let connection = endpoint
                            .connect(target, DHT_ALPN)
                            .await
                            .map_err(|_| "could not connect")?;
                        connections.insert(to, connection.clone());
                        tokio::spawn(read_envelopes(connection.clone(), to, inbound, counters));
                        connection
                    }
                };
                let mut stream = connection.open_uni().await.map_err(|_| "stream refused")?;
                stream.write_all(&bytes).await.map_err(|_| "write failed")?;
                stream.finish().map_err(|_| "finish failed")?;
                Ok::<_, &'static str>(())
            };
            match tokio::time::timeout(SEND_TIMEOUT, attempt).await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::debug!(peer = %to, error, "a DHT message was not sent"),
                Err(_) => tracing::debug!(peer = %to, "a DHT send timed out"),
            }
        });
    }
}

/// iroh's address lookup over the DHT: resolves a node id to the addresses in its address
/// record (or in the address book, if it is known already).
#[derive(Debug, Clone)]
pub struct DhtAddressLookup {
    dht: Dht,
}

impl DhtAddressLookup {
    /// A lookup through `dht`.
    pub fn new(dht: Dht) -> Self {
        Self { dht }
    }
}

/// Provenance of the items [`DhtAddressLookup`] produces.
pub const LOOKUP_PROVENANCE: &str = "meshcore-dht";

impl AddressLookup for DhtAddressLookup {
    fn publish(&self, data: &EndpointData) {
        let addrs: Vec<SocketAddr> = data.ip_addrs().copied().collect();
        if !addrs.is_empty() {
            self.dht.publish_addrs(addrs);
        }
    }

    fn resolve(
        &self,
        endpoint_id: EndpointId,
    ) -> Option<BoxStream<'static, Result<Item, address_lookup::Error>>> {
        let node = node_id_of(&endpoint_id)?;
        let dht = self.dht.clone();
        let lookup = async move {
            match dht.resolve(node).await {
                Ok(addrs) if !addrs.is_empty() => Ok(Item::new(
                    EndpointInfo::new(endpoint_id).with_ip_addrs(addrs),
                    LOOKUP_PROVENANCE,
                    Some(unix_millis().saturating_mul(1000)),
                )),
                Ok(_) => Err(address_lookup::Error::from_err(
                    LOOKUP_PROVENANCE,
                    std::io::Error::other("the address record lists no address"),
                )),
                Err(error) => Err(address_lookup::Error::from_err(
                    LOOKUP_PROVENANCE,
                    std::io::Error::other(error.to_string()),
                )),
            }
        };
        Some(Box::pin(futures_util::stream::once(lookup)))
    }
}
