//! The network actor and its [`Network`] handle.
//!
//! One task owns the [`PeerManager`] and every link handle. It wakes for link events, for
//! discoveries and dial results, for commands from the API, and for the manager's timer;
//! after each it carries out the manager's actions. Link tasks and dial tasks run beside it
//! and talk to it only through bounded channels.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use iroh::endpoint::{Connection, VarInt};
use iroh::protocol::{AcceptError, ProtocolHandler, Router};
use iroh::{Endpoint, EndpointAddr};
use meshcore_proto::link::{
    Capabilities, Hello, LinkMessage, LINK_ALPN, LINK_PROTOCOL_VERSION, MAX_ADDRS,
};
use meshcore_proto::peers::{
    CloseReason, Direction, DiscoverySource, LinkId, PeerAction, PeerManager, PeerManagerConfig,
};
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::{NodeRecord, Store};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use crate::dht::{AddressBook, Dht, DhtAddressLookup, DhtOptions, DHT_ALPN};
use crate::endpoint::{self, endpoint_id_of, inbound_peer, EndpointError};
use crate::lane::{DataLanes, LaneCounters};
use crate::link::{
    self, close_code, FrameSink, HandshakeError, LinkEvent, LinkHandle, ReceivedFrame,
};
use crate::routing::{Routing, RoutingOptions};
use crate::webrtc::{WebRtc, WebRtcOptions};

/// How long a dial may take, handshake included.
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(10);

/// Inbound handshakes in progress at once; more are refused.
pub const MAX_PENDING_HANDSHAKES: usize = 64;

/// Capacity of the actor's queues.
const QUEUE: usize = 1024;

/// Least time between two samples of the DHT's routing table (DHT discovery).
const DHT_SAMPLE_INTERVAL: Duration = Duration::from_secs(5);

/// Nodes taken from the DHT's routing table per sample.
const DHT_SAMPLE_SIZE: usize = 16;

/// Received data frames waiting for their consumer.
const FRAME_QUEUE: usize = 1024;

/// What the network needs to start.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// UDP address for the endpoint.
    pub listen: SocketAddr,
    /// Bootstrap nodes as `NODE_ID@HOST:PORT`.
    pub bootstrap: Vec<String>,
    /// Whether to discover peers on the LAN (mDNS).
    pub lan: bool,
    /// Whether to exchange peers with linked peers.
    pub pex: bool,
    /// Fewest links to keep.
    pub min_links: usize,
    /// Most links to keep.
    pub max_links: usize,
    /// Self-hosted iroh relays (none: relays off).
    pub relay_urls: Vec<String>,
    /// What this node offers.
    pub capabilities: Capabilities,
    /// Seed for the peer manager's and the DHT's RNGs.
    pub rng_seed: u64,
    /// Bytes of DHT records this node holds at most (setting `dht_storage_bytes`).
    pub dht_storage_bytes: u64,
    /// Whether nodes in the DHT's routing table are offered to the peer manager while below
    /// `min_links` (setting `dht_discovery`).
    pub dht_discovery: bool,
    /// The only nodes links are made with, inbound or outbound, whatever found them
    /// (setting `allowed_peers`); empty: any node.
    pub allowed_peers: Vec<NodeId>,
    /// Start the routing driver (which then consumes every data frame, so
    /// [`Network::take_frames`] returns `None`); `None`: no routing, frames are left for
    /// [`Network::take_frames`].
    pub routing: Option<RoutingOptions>,
    /// Accept browser peers over WebRTC; `None`: no WebRTC.
    pub webrtc: Option<WebRtcOptions>,
    /// Carry routed packets of links on a UDP data lane beside QUIC ([`crate::lane`]);
    /// `false`: everything on QUIC.
    pub data_lane: bool,
}

/// A link as listed by `GET /v1/connections` (the specification's columns, and more).
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ConnectionInfo {
    /// Unique id of this link.
    pub connection_id: String,
    /// This node.
    pub local_node_id: String,
    /// The peer.
    pub remote_node_id: String,
    /// `quic` (node) or `webrtc` (browser).
    pub connection_type: String,
    /// `connected`.
    pub status: String,
    /// `outbound` or `inbound`.
    pub direction: String,
    /// 0.0 to 1.0, from latency and loss.
    pub quality_score: f64,
    /// Bytes per second sent over the last second.
    pub bandwidth_up: f64,
    /// Bytes per second received over the last second.
    pub bandwidth_down: f64,
    /// Round-trip time in milliseconds.
    pub latency: f64,
    /// Fraction of packets lost (smoothed).
    pub packet_loss: f64,
    /// Bytes sent on the link.
    pub bytes_sent: u64,
    /// Bytes received on the link.
    pub bytes_received: u64,
    /// What the peer offers.
    pub capabilities: Vec<String>,
    /// The peer's address on this link.
    pub remote_addr: Option<String>,
    /// Unix seconds when the link came up.
    pub connected_at: u64,
    /// The peer's link protocol version.
    pub protocol_version: u16,
    /// Routed packets to the peer go on the UDP data lane (not inside QUIC).
    pub data_lane: bool,
}

/// Why a requested connection was not made.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectError {
    /// The request names this node itself.
    #[error("a node cannot connect to itself")]
    SelfLink,
    /// The peer is blacklisted.
    #[error("the peer is blacklisted after misbehaving")]
    Blacklisted,
    /// The node is at `max_connections` and no link could make room.
    #[error("at max_connections and no link can be replaced yet")]
    Full,
    /// No address is known for the peer, and the DHT has none either.
    #[error("no address is known for the peer and the DHT has no address record for it; give one in peer_info.addrs")]
    NoAddress,
    /// The dial or handshake failed.
    #[error("could not link to the peer: {0}")]
    DialFailed(String),
    /// No answer in time.
    #[error("no link within {0:?}")]
    Timeout(Duration),
    /// The peer is not in the setting `allowed_peers`.
    #[error("the peer is not in allowed_peers")]
    NotAllowed,
    /// The network is stopping.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// Why the network could not start.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// The endpoint could not be bound.
    #[error(transparent)]
    Endpoint(#[from] EndpointError),
    /// The DHT could not start.
    #[error("cannot start the DHT: {0}")]
    Dht(String),
    /// The routing settings cannot run.
    #[error(transparent)]
    Routing(#[from] meshcore_proto::route::RouteConfigError),
    /// The WebRTC sockets could not be bound.
    #[error("cannot bind the WebRTC address {addr} (--webrtc): {source}")]
    WebRtc {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

enum Command {
    Connect {
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        reply: oneshot::Sender<Result<ConnectionInfo, ConnectError>>,
    },
    Connections(oneshot::Sender<Vec<ConnectionInfo>>),
    Link(NodeId, oneshot::Sender<Option<LinkHandle>>),
    SetLimits(usize, usize),
    Discovered(NodeId, Vec<SocketAddr>, DiscoverySource),
    Shutdown(oneshot::Sender<()>),
}

enum DialOutcome {
    Failed(NodeId, String),
}

/// A handle to the running network. Clones share it.
#[derive(Debug, Clone)]
pub struct Network {
    local: NodeId,
    endpoint: Endpoint,
    commands: mpsc::Sender<Command>,
    link_count: watch::Receiver<usize>,
    frames: FrameSink,
    dht: Dht,
    routing: Option<Routing>,
    webrtc: Option<WebRtc>,
    lanes: Option<Arc<DataLanes>>,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Command")
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Parses `NODE_ID@HOST:PORT`.
pub fn parse_peer_address(text: &str) -> Result<(NodeId, String), String> {
    let (id, address) = text
        .split_once('@')
        .ok_or_else(|| format!("{text:?} is not NODE_ID@HOST:PORT"))?;
    let id = id
        .parse::<NodeId>()
        .map_err(|error| format!("{text:?}: {error}"))?;
    Ok((id, address.to_owned()))
}

impl Network {
    /// Binds the endpoint and starts the actor, LAN discovery and bootstrap.
    pub async fn start(
        keys: &NodeKeypair,
        config: NetworkConfig,
        store: Store,
    ) -> Result<Self, NetworkError> {
        let local = keys.node_id();
        let endpoint = endpoint::bind(keys, config.listen, &config.relay_urls).await?;
        let (commands_tx, commands_rx) = mpsc::channel(QUEUE);
        let (link_events_tx, link_events_rx) = mpsc::channel(QUEUE);
        let (dial_tx, dial_rx) = mpsc::channel(QUEUE);

        let listen_addrs: Vec<SocketAddr> = endpoint
            .bound_sockets()
            .into_iter()
            .take(MAX_ADDRS)
            .collect();
        let hello = Arc::new(Hello {
            version: LINK_PROTOCOL_VERSION,
            capabilities: config.capabilities,
            listen_addrs: listen_addrs
                .iter()
                .copied()
                .filter(|a| !a.ip().is_unspecified())
                .collect(),
        });
        let next_link = Arc::new(AtomicU64::new(1));
        let frames = FrameSink::new(FRAME_QUEUE);
        let lanes = if config.data_lane {
            match DataLanes::bind(local, config.listen.ip(), frames.clone()) {
                Ok(lanes) => {
                    if let Ok(addr) = lanes.local_addr() {
                        tracing::info!(%addr, "data lane bound: links carry routed packets on this UDP socket once both ends hear each other");
                    }
                    Some(lanes)
                }
                Err(error) => {
                    tracing::warn!(%error, ip = %config.listen.ip(), "the data lane is off: its UDP socket could not be bound");
                    None
                }
            }
        } else {
            None
        };
        let book = AddressBook::default();
        let dht_parts = Dht::start(
            keys,
            endpoint.clone(),
            store.clone(),
            book.clone(),
            DhtOptions {
                storage_bytes: config.dht_storage_bytes,
                rng_seed: config.rng_seed ^ 0x6468_7400,
            },
        )
        .await
        .map_err(|error| NetworkError::Dht(error.to_string()))?;
        let dht = dht_parts.dht;
        match endpoint.address_lookup() {
            Ok(lookup) => lookup.add(DhtAddressLookup::new(dht.clone())),
            Err(error) => tracing::warn!(%error, "the DHT address lookup is off"),
        }
        dht.publish_addrs(hello.listen_addrs.clone());
        let router = Router::builder(endpoint.clone())
            .accept(DHT_ALPN, dht_parts.acceptor)
            .accept(
                LINK_ALPN,
                LinkAcceptor {
                    local,
                    hello: hello.clone(),
                    events: link_events_tx.clone(),
                    next_link: next_link.clone(),
                    frames: frames.clone(),
                    lanes: lanes.clone(),
                    handshakes: Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES)),
                },
            )
            .spawn();

        let allowed: BTreeSet<NodeId> = config.allowed_peers.iter().copied().collect();
        let mut peer_config = PeerManagerConfig::new(config.rng_seed);
        peer_config.min_links = config.min_links;
        peer_config.max_links = config.max_links;
        let mut peers = PeerManager::new(local, peer_config);
        let now = Instant::now();
        match store.load_nodes(4096).await {
            Ok(records) => {
                let mut restored = 0;
                for record in records {
                    let (Ok(id), addrs) =
                        (record.node_id.parse::<NodeId>(), parse_addrs(&record.addrs))
                    else {
                        continue;
                    };
                    if record.status != "blacklisted"
                        && (allowed.is_empty() || allowed.contains(&id))
                        && peers.add_peer(now, id, &addrs, DiscoverySource::Store)
                    {
                        restored += 1;
                    }
                }
                tracing::info!(restored, "known nodes restored from the store");
            }
            Err(error) => {
                tracing::warn!(%error, "could not load known nodes; starting without them")
            }
        }
        let routing = match config.routing.clone() {
            Some(options) => match frames.take_receiver() {
                Some(receiver) => {
                    let fast_path = options.fast_path;
                    let routing = Routing::start(keys, receiver, store.clone(), options)?;
                    if fast_path {
                        frames.set_forwarder(routing.forwarder());
                    }
                    Some(routing)
                }
                None => None,
            },
            None => None,
        };
        let webrtc = match &config.webrtc {
            Some(options) => Some(
                WebRtc::start(keys, options.clone(), routing.clone(), Some(dht.clone()))
                    .await
                    .map_err(|source| NetworkError::WebRtc {
                        addr: options.bind,
                        source,
                    })?,
            ),
            None => None,
        };
        let (persist, writer) = crate::persist::spawn(store);

        let (link_count_tx, link_count) = watch::channel(0);
        let network = Self {
            local,
            endpoint: endpoint.clone(),
            commands: commands_tx,
            link_count,
            frames: frames.clone(),
            dht: dht.clone(),
            routing: routing.clone(),
            webrtc,
            lanes: lanes.clone(),
        };
        for entry in &config.bootstrap {
            network.add_bootstrap(entry);
        }
        let lan = if config.lan {
            match crate::lan::LanDiscovery::start(local, &listen_addrs, network.clone()) {
                Ok(lan) => Some(lan),
                Err(error) => {
                    tracing::warn!(%error, "LAN discovery is off: it could not start");
                    None
                }
            }
        } else {
            None
        };

        let actor = Actor {
            local,
            endpoint,
            router,
            hello,
            peers,
            links: BTreeMap::new(),
            connect_waiters: HashMap::new(),
            link_events: link_events_tx,
            dial_events: dial_tx,
            next_link,
            frames,
            lanes,
            dht,
            book,
            dht_discovery: config.dht_discovery,
            last_dht_sample: None,
            min_links: config.min_links,
            own_commands: network.commands.downgrade(),
            persist,
            pex: config.pex,
            lan,
            violations: 0,
            link_count: link_count_tx,
            routing,
            allowed,
        };
        tokio::spawn(actor.run(commands_rx, link_events_rx, dial_rx, writer));
        tracing::info!(node_id = %local, listen = ?listen_addrs, "network started");
        Ok(network)
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.local
    }

    /// The data lane's running totals; `None` when the node runs no lane.
    pub fn lane_counters(&self) -> Option<LaneCounters> {
        self.lanes.as_ref().map(|lanes| lanes.counters())
    }

    /// The sockets the endpoint is bound to.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.bound_sockets()
    }

    /// Links to `peer` (at `addrs`, or at its known addresses), waiting up to `timeout`.
    pub async fn connect(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
        timeout: Duration,
    ) -> Result<ConnectionInfo, ConnectError> {
        let mut addrs = addrs;
        if addrs.is_empty() {
            // Known addresses first (cheap), then the peer's address record in the DHT.
            addrs = self.dht.address_book().get(&peer);
            if addrs.is_empty() {
                addrs = tokio::time::timeout(timeout, self.dht.resolve(peer))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .unwrap_or_default();
            }
        }
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Connect { peer, addrs, reply })
            .await
            .map_err(|_| ConnectError::ShuttingDown)?;
        match tokio::time::timeout(timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ConnectError::ShuttingDown),
            Err(_) => Err(ConnectError::Timeout(timeout)),
        }
    }

    /// A receiver of the number of live links, updated as links come and go.
    pub fn subscribe_link_count(&self) -> watch::Receiver<usize> {
        self.link_count.clone()
    }

    /// The DHT running on this node's endpoint.
    pub fn dht(&self) -> &Dht {
        &self.dht
    }

    /// The routing driver, if the network was started with one.
    pub fn routing(&self) -> Option<&Routing> {
        self.routing.as_ref()
    }

    /// The current link to `peer`, if there is one.
    pub async fn link(&self, peer: NodeId) -> Option<LinkHandle> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Link(peer, reply)).await.ok()?;
        answer.await.ok().flatten()
    }

    /// Takes the stream of data frames received on every link (see [`FrameSink`]); `None`
    /// after the first call. Until it is taken, received frames are dropped.
    pub fn take_frames(&self) -> Option<mpsc::Receiver<ReceivedFrame>> {
        self.frames.take_receiver()
    }

    /// Pings `peer` over its link and returns the round-trip time.
    pub async fn ping(&self, peer: NodeId, timeout: Duration) -> Result<Duration, ConnectError> {
        let link = self
            .link(peer)
            .await
            .ok_or_else(|| ConnectError::DialFailed("no link to that peer".to_owned()))?;
        link.ping(timeout)
            .await
            .map_err(|error| ConnectError::DialFailed(error.to_string()))
    }

    /// The browser (WebRTC) side, unless it is off.
    pub fn webrtc(&self) -> Option<&WebRtc> {
        self.webrtc.as_ref()
    }

    /// The live links: QUIC links to nodes, then WebRTC sessions with browsers.
    pub async fn connections(&self) -> Vec<ConnectionInfo> {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Connections(reply))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let mut links = answer.await.unwrap_or_default();
        if let Some(webrtc) = &self.webrtc {
            links.extend(webrtc.connections().await);
        }
        links
    }

    /// Changes the link limits (settings `min_connections`, `max_connections`).
    pub fn set_limits(&self, min_links: usize, max_links: usize) {
        if self
            .commands
            .try_send(Command::SetLimits(min_links, max_links))
            .is_err()
        {
            tracing::warn!("could not apply new connection limits: the network is busy or stopped");
        }
    }

    /// Reports a node found by some discovery strategy.
    pub fn discovered(&self, peer: NodeId, addrs: Vec<SocketAddr>, source: DiscoverySource) {
        let _ = self
            .commands
            .try_send(Command::Discovered(peer, addrs, source));
    }

    /// Adds a bootstrap node given as `NODE_ID@HOST:PORT`, resolving the host name.
    pub fn add_bootstrap(&self, entry: &str) {
        let (peer, address) = match parse_peer_address(entry) {
            Ok(parsed) => parsed,
            Err(error) => {
                tracing::warn!(%error, "ignoring a bootstrap entry");
                return;
            }
        };
        let network = self.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(DIAL_TIMEOUT, tokio::net::lookup_host(address.as_str()))
                .await
            {
                Ok(Ok(addrs)) => network.discovered(
                    peer,
                    addrs.take(MAX_ADDRS).collect(),
                    DiscoverySource::Bootstrap,
                ),
                Ok(Err(error)) => {
                    tracing::warn!(%address, %error, "cannot resolve a bootstrap address")
                }
                Err(_) => tracing::warn!(%address, "resolving a bootstrap address timed out"),
            }
        });
    }

    /// Closes every link and the endpoint, and flushes known nodes to the store.
    pub async fn shutdown(&self) {
        if let Some(webrtc) = &self.webrtc {
            webrtc.shutdown().await;
        }
        if let Some(lanes) = &self.lanes {
            lanes.close();
        }
        let (reply, done) = oneshot::channel();
        if self.commands.send(Command::Shutdown(reply)).await.is_ok() {
            let _ = done.await;
        }
    }
}

fn parse_addrs(addrs: &[String]) -> Vec<SocketAddr> {
    addrs
        .iter()
        .filter_map(|a| a.parse().ok())
        .take(MAX_ADDRS)
        .collect()
}

/// Accepts inbound links for the link ALPN.
#[derive(Debug, Clone)]
struct LinkAcceptor {
    local: NodeId,
    hello: Arc<Hello>,
    events: mpsc::Sender<LinkEvent>,
    next_link: Arc<AtomicU64>,
    handshakes: Arc<Semaphore>,
    frames: FrameSink,
    lanes: Option<Arc<DataLanes>>,
}

impl ProtocolHandler for LinkAcceptor {
    async fn accept(&self, connection: Connection) -> Result<(), AcceptError> {
        let Some(peer) = inbound_peer(&connection, &self.local, "link") else {
            return Ok(());
        };
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            connection.close(
                VarInt::from_u32(close_code::FULL),
                b"too many handshakes in progress",
            );
            return Ok(());
        };
        let handshake = link::handshake_inbound(&connection, &self.hello).await;
        drop(permit);
        match handshake {
            Ok(parts) => {
                let id = LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
                link::run_quic_link(
                    connection,
                    parts,
                    id,
                    peer,
                    Direction::Inbound,
                    self.events.clone(),
                    self.frames.clone(),
                    self.lanes.clone(),
                )
                .await;
            }
            Err(error @ (HandshakeError::Violation(_) | HandshakeError::Version(_))) => {
                let _ = self
                    .events
                    .send(LinkEvent::Misbehaved {
                        link: None,
                        peer,
                        reason: error.to_string(),
                    })
                    .await;
            }
            Err(error) => tracing::debug!(peer = %peer, %error, "inbound handshake failed"),
        }
        Ok(())
    }
}

struct Actor {
    local: NodeId,
    endpoint: Endpoint,
    router: Router,
    hello: Arc<Hello>,
    peers: PeerManager,
    links: BTreeMap<LinkId, LinkHandle>,
    connect_waiters: HashMap<NodeId, Vec<oneshot::Sender<Result<ConnectionInfo, ConnectError>>>>,
    link_events: mpsc::Sender<LinkEvent>,
    dial_events: mpsc::Sender<DialOutcome>,
    next_link: Arc<AtomicU64>,
    frames: FrameSink,
    lanes: Option<Arc<DataLanes>>,
    dht: Dht,
    book: AddressBook,
    dht_discovery: bool,
    last_dht_sample: Option<Instant>,
    min_links: usize,
    own_commands: mpsc::WeakSender<Command>,
    persist: mpsc::Sender<NodeRecord>,
    pex: bool,
    lan: Option<crate::lan::LanDiscovery>,
    violations: u64,
    link_count: watch::Sender<usize>,
    routing: Option<Routing>,
    /// Setting `allowed_peers`: when not empty, the only nodes linked with.
    allowed: BTreeSet<NodeId>,
}

/// Most callers waiting on one peer's connection.
const MAX_WAITERS_PER_PEER: usize = 16;

impl Actor {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<Command>,
        mut link_events: mpsc::Receiver<LinkEvent>,
        mut dial_events: mpsc::Receiver<DialOutcome>,
        writer: tokio::task::JoinHandle<()>,
    ) {
        loop {
            let wake = self
                .peers
                .poll_timeout()
                .map_or_else(tokio::time::Instant::now, tokio::time::Instant::from_std);
            tokio::select! {
                Some(event) = link_events.recv() => self.on_link_event(event),
                Some(DialOutcome::Failed(peer, error)) = dial_events.recv() => {
                    tracing::debug!(%peer, %error, "dial failed");
                    self.peers.dial_failed(Instant::now(), peer);
                    self.answer_waiters(peer, Err(ConnectError::DialFailed(error)));
                }
                command = commands.recv() => match command {
                    Some(Command::Shutdown(reply)) => {
                        self.shutdown().await;
                        drop(self);
                        let _ = writer.await;
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.shutdown().await;
                        return;
                    }
                },
                () = tokio::time::sleep_until(wake) => {
                    for (id, link) in &self.links {
                        if self.peers.links().get(&link.peer).is_some_and(|state| state.id == *id) {
                            self.peers.link_quality(link.peer, link::quality(&link.metrics()));
                        }
                    }
                    self.peers.handle_timeout(Instant::now());
                }
            }
            self.run_actions();
            self.sample_dht();
            self.link_count.send_if_modified(|count| {
                let live = self.peers.links().len();
                std::mem::replace(count, live) != live
            });
        }
    }

    fn on_command(&mut self, command: Command) {
        let now = Instant::now();
        match command {
            Command::Connect { peer, addrs, reply } => {
                if !self.is_allowed(&peer) {
                    let _ = reply.send(Err(ConnectError::NotAllowed));
                    return;
                }
                if let Some(info) = self.current_link(&peer).map(|link| self.info(link)) {
                    let _ = reply.send(Ok(info));
                    return;
                }
                if addrs.is_empty()
                    && self
                        .peers
                        .known()
                        .get(&peer)
                        .is_none_or(|k| k.addrs.is_empty())
                {
                    let _ = reply.send(Err(ConnectError::NoAddress));
                    return;
                }
                match self.peers.dial_now(now, peer, &addrs) {
                    Ok(()) => {
                        let waiters = self.connect_waiters.entry(peer).or_default();
                        if waiters.len() < MAX_WAITERS_PER_PEER {
                            waiters.push(reply);
                        } else {
                            let _ = reply.send(Err(ConnectError::DialFailed(
                                "too many pending requests for this peer".to_owned(),
                            )));
                        }
                        self.persist_peer(peer, "known");
                    }
                    Err(reason) => {
                        let _ = reply.send(Err(connect_error(&reason)));
                    }
                }
            }
            Command::Connections(reply) => {
                let list = self
                    .links
                    .values()
                    .filter(|link| self.is_current(link))
                    .map(|link| self.info(link))
                    .collect();
                let _ = reply.send(list);
            }
            Command::Link(peer, reply) => {
                let _ = reply.send(self.current_link(&peer).cloned());
            }
            Command::SetLimits(min, max) => {
                self.min_links = min;
                self.peers.set_limits(min, max);
                tracing::info!(min, max, "connection limits changed");
            }
            Command::Discovered(peer, addrs, source) => {
                if !self.is_allowed(&peer) {
                    return;
                }
                self.book.add(peer, &addrs);
                if self.peers.add_peer(now, peer, &addrs, source) {
                    tracing::info!(%peer, source = source.name(), ?addrs, "discovered a node");
                    self.persist_peer(peer, "known");
                }
            }
            Command::Shutdown(_) => {}
        }
    }

    fn on_link_event(&mut self, event: LinkEvent) {
        let now = Instant::now();
        match event {
            LinkEvent::Handshaked { link, decision } => {
                if !self.is_allowed(&link.peer) {
                    tracing::debug!(peer = %link.peer, "link refused: not in allowed_peers");
                    self.answer_waiters(link.peer, Err(ConnectError::NotAllowed));
                    let _ = decision.send(Err(CloseReason::Blacklisted));
                    return;
                }
                let mut addrs: Vec<SocketAddr> = link.remote_addr.into_iter().collect();
                addrs.extend(
                    link.hello
                        .listen_addrs
                        .iter()
                        .copied()
                        .filter(|a| !a.ip().is_unspecified() && a.port() != 0),
                );
                let result = self.peers.link_up(
                    now,
                    link.peer,
                    link.id,
                    link.direction,
                    link.hello.capabilities,
                    &addrs,
                );
                match &result {
                    Ok(()) => {
                        tracing::info!(peer = %link.peer, direction = ?link.direction, addr = ?link.remote_addr, "link up");
                        self.dht.add_peer(link.peer, &addrs);
                        if let Some(routing) = &self.routing {
                            routing.link_up(link.clone());
                        }
                        let info = self.info(&link);
                        self.links.insert(link.id, link.clone());
                        self.persist_peer(link.peer, "connected");
                        self.answer_waiters(link.peer, Ok(info));
                    }
                    Err(CloseReason::Duplicate) => {
                        if let Some(info) = self.current_link(&link.peer).map(|l| self.info(l)) {
                            self.answer_waiters(link.peer, Ok(info));
                        }
                    }
                    Err(reason) => {
                        tracing::info!(peer = %link.peer, %reason, "link refused");
                        self.answer_waiters(link.peer, Err(connect_error(reason)));
                    }
                }
                let _ = decision.send(result);
            }
            LinkEvent::Message {
                link,
                peer,
                message,
            } => {
                if !self.links.contains_key(&link) {
                    return;
                }
                match message {
                    LinkMessage::PexRequest if self.pex => {
                        if let Some(answer) = self.peers.pex_answer(now, peer) {
                            if let Some(handle) = self.links.get(&link) {
                                let _ = handle.send(LinkMessage::PexResponse(answer));
                            }
                        }
                    }
                    LinkMessage::PexResponse(mut list) if self.pex => {
                        if !self.allowed.is_empty() {
                            list.retain(|entry| {
                                entry.id().is_some_and(|id| self.allowed.contains(&id))
                            });
                        }
                        let before: Vec<NodeId> = self.peers.known().keys().copied().collect();
                        let added = self.peers.handle_pex(now, peer, &list);
                        if added > 0 {
                            tracing::debug!(from = %peer, added, "learned nodes by peer exchange");
                            let new: Vec<NodeId> = self
                                .peers
                                .known()
                                .keys()
                                .filter(|id| !before.contains(id))
                                .copied()
                                .collect();
                            for id in new {
                                self.persist_peer(id, "known");
                            }
                        }
                    }
                    _ => {}
                }
            }
            LinkEvent::Misbehaved { link, peer, reason } => {
                self.violations += 1;
                tracing::warn!(%peer, %reason, violations = self.violations, "dropping a peer that broke the protocol");
                self.peers.misbehaved(now, peer, &reason);
                if let Some(id) = link {
                    if self.links.remove(&id).is_some() {
                        if let Some(routing) = &self.routing {
                            routing.link_down(peer, id);
                        }
                    }
                }
                self.persist_peer(peer, "blacklisted");
                self.answer_waiters(
                    peer,
                    Err(ConnectError::DialFailed(format!(
                        "protocol violation: {reason}"
                    ))),
                );
            }
            LinkEvent::Closed { link, peer, reason } => {
                if self.links.remove(&link).is_some() {
                    tracing::info!(%peer, %reason, "link down");
                    if let Some(routing) = &self.routing {
                        routing.link_down(peer, link);
                    }
                    self.peers.link_down(now, peer, link);
                    if !self.peers.links().contains_key(&peer) {
                        self.persist_peer(peer, "disconnected");
                    }
                }
            }
        }
    }

    fn run_actions(&mut self) {
        while let Some(action) = self.peers.poll_action() {
            match action {
                PeerAction::Dial { peer, .. } if !self.is_allowed(&peer) => {
                    self.peers.dial_failed(Instant::now(), peer);
                }
                PeerAction::Dial { peer, addrs } => self.dial(peer, addrs),
                PeerAction::Close { peer, link, reason } => {
                    if let Some(handle) = self.links.get(&link) {
                        tracing::info!(%peer, %reason, "closing link");
                        handle.close(reason);
                    }
                }
                PeerAction::RequestPex { peer } => {
                    if self.pex {
                        if let Some(handle) = self.current_link(&peer) {
                            let _ = handle.send(LinkMessage::PexRequest);
                        }
                    }
                }
            }
        }
    }

    fn dial(&self, peer: NodeId, addrs: Vec<SocketAddr>) {
        let Some(endpoint_id) = endpoint_id_of(&peer) else {
            return;
        };
        self.book.add(peer, &addrs);
        let endpoint = self.endpoint.clone();
        let hello = self.hello.clone();
        let events = self.link_events.clone();
        let frames = self.frames.clone();
        let lanes = self.lanes.clone();
        let failures = self.dial_events.clone();
        let id = LinkId(self.next_link.fetch_add(1, Ordering::Relaxed));
        tokio::spawn(async move {
            let target = addrs
                .iter()
                .fold(EndpointAddr::new(endpoint_id), |target, addr| {
                    target.with_ip_addr(*addr)
                });
            let attempt = async {
                let connection = endpoint
                    .connect(target, LINK_ALPN)
                    .await
                    .map_err(|error| error.to_string())?;
                let parts = link::handshake_outbound(&connection, &hello)
                    .await
                    .map_err(|error| error.to_string())?;
                Ok::<_, String>((connection, parts))
            };
            match tokio::time::timeout(DIAL_TIMEOUT, attempt).await {
                Ok(Ok((connection, parts))) => {
                    link::run_quic_link(
                        connection,
                        parts,
                        id,
                        peer,
                        Direction::Outbound,
                        events,
                        frames,
                        lanes,
                    )
                    .await;
                }
                Ok(Err(error)) => {
                    let _ = failures.send(DialOutcome::Failed(peer, error)).await;
                }
                Err(_) => {
                    let _ = failures
                        .send(DialOutcome::Failed(
                            peer,
                            format!("timed out after {DIAL_TIMEOUT:?}"),
                        ))
                        .await;
                }
            }
        });
    }

    /// Whether links with `peer` may be made (setting `allowed_peers`).
    fn is_allowed(&self, peer: &NodeId) -> bool {
        self.allowed.is_empty() || self.allowed.contains(peer)
    }

    fn is_current(&self, link: &LinkHandle) -> bool {
        self.peers
            .links()
            .get(&link.peer)
            .is_some_and(|state| state.id == link.id)
    }

    fn current_link(&self, peer: &NodeId) -> Option<&LinkHandle> {
        self.peers
            .links()
            .get(peer)
            .and_then(|state| self.links.get(&state.id))
    }

    fn info(&self, link: &LinkHandle) -> ConnectionInfo {
        let metrics = link.metrics();
        let quality = self
            .peers
            .links()
            .get(&link.peer)
            .map_or(link::quality(&metrics), |s| s.quality);
        ConnectionInfo {
            connection_id: format!("{}-{}", &link.peer.to_hex()[..16], link.id.0),
            local_node_id: self.local.to_hex(),
            remote_node_id: link.peer.to_hex(),
            connection_type: link.kind.name().to_owned(),
            status: "connected".to_owned(),
            direction: match link.direction {
                Direction::Outbound => "outbound",
                Direction::Inbound => "inbound",
            }
            .to_owned(),
            quality_score: quality,
            bandwidth_up: metrics.throughput_up,
            bandwidth_down: metrics.throughput_down,
            latency: metrics.rtt.as_secs_f64() * 1000.0,
            packet_loss: metrics.loss,
            bytes_sent: metrics.bytes_sent,
            bytes_received: metrics.bytes_received,
            capabilities: link
                .hello
                .capabilities
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            remote_addr: link.remote_addr.map(|a| a.to_string()),
            data_lane: link.data_lane_in_use(),
            connected_at: link
                .since
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
            protocol_version: link.hello.version,
        }
    }

    fn answer_waiters(&mut self, peer: NodeId, result: Result<ConnectionInfo, ConnectError>) {
        for waiter in self.connect_waiters.remove(&peer).unwrap_or_default() {
            let _ = waiter.send(result.clone());
        }
    }

    fn persist_peer(&self, peer: NodeId, status: &str) {
        let Some(known) = self.peers.known().get(&peer) else {
            return;
        };
        let record = NodeRecord {
            node_id: peer.to_hex(),
            capabilities: known
                .capabilities
                .names()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            addrs: known.addrs.iter().map(ToString::to_string).collect(),
            last_seen: unix_now() as i64,
            status: status.to_owned(),
        };
        if self.persist.try_send(record).is_err() {
            tracing::debug!(%peer, "known-node writer is behind; this update is dropped");
        }
    }

    /// While below `min_links`, offers nodes from the DHT's routing table (those with a
    /// known address) to the peer manager, at most every [`DHT_SAMPLE_INTERVAL`].
    fn sample_dht(&mut self) {
        if !self.dht_discovery || self.peers.links().len() >= self.min_links {
            return;
        }
        let now = Instant::now();
        if self
            .last_dht_sample
            .is_some_and(|last| now.duration_since(last) < DHT_SAMPLE_INTERVAL)
        {
            return;
        }
        self.last_dht_sample = Some(now);
        let (dht, commands) = (self.dht.clone(), self.own_commands.clone());
        tokio::spawn(async move {
            let Some(commands) = commands.upgrade() else {
                return;
            };
            for (peer, addrs) in dht.sample_peers(DHT_SAMPLE_SIZE).await {
                if commands
                    .try_send(Command::Discovered(peer, addrs, DiscoverySource::Dht))
                    .is_err()
                {
                    break;
                }
            }
        });
    }

    async fn shutdown(&mut self) {
        for link in self.links.values() {
            link.close(CloseReason::Shutdown);
        }
        if let Some(lan) = self.lan.take() {
            lan.stop();
        }
        for (peer, waiters) in self.connect_waiters.drain() {
            for waiter in waiters {
                let _ = waiter.send(Err(ConnectError::ShuttingDown));
            }
            tracing::debug!(%peer, "connect request cancelled by shutdown");
        }
        if let Some(routing) = &self.routing {
            routing.shutdown().await;
        }
        self.dht.shutdown().await;
        if let Err(error) = self.router.shutdown().await {
            tracing::debug!(%error, "router shutdown");
        }
        self.endpoint.close().await;
    }
}

fn connect_error(reason: &CloseReason) -> ConnectError {
    match reason {
        CloseReason::SelfLink => ConnectError::SelfLink,
        CloseReason::Blacklisted => ConnectError::Blacklisted,
        CloseReason::Full | CloseReason::Evicted => ConnectError::Full,
        other => ConnectError::DialFailed(other.to_string()),
    }
}
