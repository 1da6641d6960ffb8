//! The running node: its identity, store, settings and peer-link socket, behind a cheap
//! cloneable handle.
//!
//! [`Node::start`] does the start-up work in a fixed order, each step failing with a message
//! that names what is wrong: prepare the data directory, load or create the key file, open
//! and migrate the store, resolve settings (sources, then stored runtime changes), start the
//! network (the iroh endpoint at `--listen`, discovery, the peer manager).
//! [`Node::shutdown`] closes the links and flushes the store.
//!
//! Settings readers use [`Node::settings`] (or [`Node::subscribe_settings`]), which never
//! waits on the store; only changes write to it, one at a time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use meshcore_net::ledger::LedgerTerms;
use meshcore_net::routing::{Routing, RoutingOptions};
use meshcore_net::webrtc::WebRtcOptions;
use meshcore_net::{Network, NetworkConfig};
use meshcore_proto::link::Capabilities;
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::{Store, StoreError, DATABASE_FILE};
use serde::Serialize;
use tokio::sync::{watch, Mutex};

use crate::data_dir::{self, DataDirError};
use crate::identity_file::{self, IdentityError, KEY_FILE};
use crate::settings::{
    LayeredSettings, SettingKey, Settings, SettingsError, SettingsPatch, SettingsSources,
};

/// Most browser sessions one node serves at once.
pub const MAX_BROWSER_SESSIONS: usize = 256;

/// What a node needs to start.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Where the key file and the database live.
    pub data_dir: PathBuf,
    /// The UDP address for peer links.
    pub listen: SocketAddr,
    /// The UDP address for browser sessions (WebRTC); `None`: browsers cannot connect.
    pub webrtc: Option<SocketAddr>,
    /// The settings sources below runtime changes.
    pub settings: SettingsSources,
}

/// Why the node could not start or a request to it failed.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is unusable.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// The key file is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Settings were invalid.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// The network could not start (for example, the `--listen` port is taken).
    #[error(transparent)]
    Network(#[from] meshcore_net::network::NetworkError),
}

/// Public facts about a node, as served by `GET node/info`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeInfo {
    /// The node id: the Ed25519 public key as 64 hex characters.
    pub node_id: String,
    /// The Ed25519 public key, hex (equal to the node id).
    pub public_key: String,
    /// Services this node offers to the mesh (relay, storage, browser gateway, compute).
    /// Empty until those subsystems exist: a node never advertises what it cannot do.
    pub capabilities: Vec<String>,
    /// The software version.
    pub version: String,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Addresses of the node's peer-link socket.
    pub listen_addrs: Vec<String>,
}

/// Counts describing the node, as served by `GET stats`.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct NodeStats {
    /// The node id.
    pub node_id: String,
    /// Seconds since the node started.
    pub uptime_s: u64,
    /// Nodes known in `meshcore_nodes`.
    pub known_nodes: i64,
    /// Live links: QUIC links to nodes and data channels of browsers.
    pub connections: usize,
    /// Routes recorded in `meshcore_routes`.
    pub routes: i64,
    /// DHT records held in `meshcore_dht`.
    pub dht_records: i64,
    /// Nodes in the DHT routing table.
    pub dht_peers: usize,
    /// Bytes of DHT records held, against `dht_storage_bytes`.
    pub dht_storage_used_bytes: u64,
    /// The routing driver's counters (packets forwarded, delivered, dropped by reason,
    /// packets that failed end-to-end opening, …); absent when routing is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub routing: Option<meshcore_net::routing::RoutingStats>,
    /// Browser sessions (WebRTC); absent when WebRTC is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webrtc: Option<meshcore_net::webrtc::WebRtcStats>,
    /// The data lane's counters (routed packets and probes sent and received on UDP,
    /// datagrams refused, sends the kernel refused); absent when `data_lane` is off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_lane: Option<meshcore_net::lane::LaneCounters>,
}

/// A handle to the running node. Clones share the node.
#[derive(Debug, Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    keys: NodeKeypair,
    data_dir: PathBuf,
    store: Store,
    /// Held while a settings change is written, so changes apply one at a time.
    layered: Mutex<LayeredSettings>,
    /// The settings in force; readers never wait on the store.
    effective: watch::Sender<Settings>,
    started: Instant,
    network: Network,
}

/// The ledger's terms in `settings`.
fn ledger_terms(settings: &Settings) -> LedgerTerms {
    LedgerTerms {
        tokens_per_mb: settings.tokens_per_mb,
        payment_threshold: settings.payment_threshold,
        new_neighbour_threshold: settings.new_neighbour_threshold,
        token_rate: settings.token_rate,
    }
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs() as i64)
        .unwrap_or(0)
}

impl Node {
    /// Starts a node: see the module documentation for the steps.
    pub async fn start(config: NodeConfig) -> Result<Self, NodeError> {
        data_dir::prepare(&config.data_dir)?;
        let (keys, created) = identity_file::load_or_create(&config.data_dir.join(KEY_FILE))?;
        if created {
            tracing::info!(node_id = %keys.node_id(), "created a new node identity");
        }
        let store = Store::open(&config.data_dir.join(DATABASE_FILE)).await?;

        let base = config.settings.resolve()?;
        let stored = store.setting_overrides().await?;
        let (layered, skipped) = LayeredSettings::new(base.clone(), stored);
        for error in skipped {
            tracing::warn!(field = %error.field, "ignoring a stored runtime setting that breaks its rule: {}; it is kept in the store", error.message);
        }
        for (name, value) in layered.runtime_changes() {
            if SettingKey::from_name(name).map(|key| base.get(key)) != Some(value.clone()) {
                tracing::info!(setting = %name, %value, "runtime change overrides the config file, environment and flags (`meshcore config reset {name}` drops it)");
            }
        }

        let settings = layered.effective().clone();
        let network = Network::start(
            &keys,
            NetworkConfig {
                listen: config.listen,
                bootstrap: settings.bootstrap_urls.clone(),
                lan: settings.lan_discovery,
                pex: settings.pex_enabled,
                min_links: settings.min_connections as usize,
                max_links: settings.max_connections as usize,
                relay_urls: settings.relay_urls.clone(),
                capabilities: Capabilities::empty(),
                rng_seed: rand::random(),
                dht_storage_bytes: settings.dht_storage_bytes,
                dht_discovery: settings.dht_discovery,
                allowed_peers: settings
                    .allowed_peers
                    .iter()
                    .filter_map(|id| id.parse::<NodeId>().ok())
                    .collect(),
                routing: Some(RoutingOptions {
                    relay_enabled: settings.relay_enabled,
                    relay_bandwidth: settings.relay_bandwidth,
                    ledger: ledger_terms(&settings),
                    peer_bandwidth: settings.peer_bandwidth,
                    app_bandwidth: settings.app_bandwidth,
                    ..RoutingOptions::new(
                        settings.max_hops,
                        Duration::from_secs(settings.route_timeout),
                        rand::random(),
                    )
                }),
                webrtc: config.webrtc.map(|bind| WebRtcOptions {
                    bind,
                    max_sessions: MAX_BROWSER_SESSIONS,
                }),
                data_lane: settings.data_lane,
            },
            store.clone(),
        )
        .await;
        let network = match network {
            Ok(network) => network,
            Err(error) => {
                let _ = store.close().await;
                return Err(error.into());
            }
        };

        let (effective, _) = watch::channel(settings);
        let node = Self {
            inner: Arc::new(Inner {
                keys,
                data_dir: config.data_dir,
                store,
                layered: Mutex::new(layered),
                effective,
                started: Instant::now(),
                network,
            }),
        };
        node.apply_settings_changes();
        Ok(node)
    }

    /// Applies settings changes to the running network: connection limits, the relay
    /// settings (`relay_enabled`, `relay_bandwidth`), the own-send limits
    /// (`peer_bandwidth`, `app_bandwidth`) and the ledger's terms
    /// (`tokens_per_mb`, `payment_threshold`, `new_neighbour_threshold`) at once, new
    /// bootstrap entries by dialling them.
    fn apply_settings_changes(&self) {
        let mut changes = self.subscribe_settings();
        let network = self.inner.network.clone();
        let mut previous = changes.borrow().clone();
        tokio::spawn(async move {
            while changes.changed().await.is_ok() {
                let current = changes.borrow_and_update().clone();
                if (current.min_connections, current.max_connections)
                    != (previous.min_connections, previous.max_connections)
                {
                    network.set_limits(
                        current.min_connections as usize,
                        current.max_connections as usize,
                    );
                }
                if (current.relay_enabled, current.relay_bandwidth)
                    != (previous.relay_enabled, previous.relay_bandwidth)
                {
                    if let Some(routing) = network.routing() {
                        routing.set_relay(current.relay_enabled, current.relay_bandwidth);
                    }
                }
                if (current.peer_bandwidth, current.app_bandwidth)
                    != (previous.peer_bandwidth, previous.app_bandwidth)
                {
                    if let Some(routing) = network.routing() {
                        routing.set_send_limits(current.peer_bandwidth, current.app_bandwidth);
                    }
                }
                if ledger_terms(&current) != ledger_terms(&previous) {
                    if let Some(routing) = network.routing() {
                        routing.set_ledger_terms(ledger_terms(&current));
                    }
                }
                for entry in current
                    .bootstrap_urls
                    .iter()
                    .filter(|e| !previous.bootstrap_urls.contains(e))
                {
                    network.add_bootstrap(entry);
                }
                if (
                    current.lan_discovery,
                    current.pex_enabled,
                    &current.relay_urls,
                ) != (
                    previous.lan_discovery,
                    previous.pex_enabled,
                    &previous.relay_urls,
                ) {
                    tracing::info!(
                        "lan_discovery, pex_enabled and relay_urls changes apply at the next start"
                    );
                }
                previous = current;
            }
        });
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.inner.keys.node_id()
    }

    /// The node's keypair, for signing.
    pub fn keys(&self) -> &NodeKeypair {
        &self.inner.keys
    }

    /// The data directory in use.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// The addresses of the peer-link socket.
    pub fn listen_addrs(&self) -> Vec<SocketAddr> {
        self.inner.network.listen_addrs()
    }

    /// The routing driver: routes, messages. Always running in a started node.
    pub fn routing(&self) -> Option<&Routing> {
        self.inner.network.routing()
    }

    /// The network: links, discovery, peer manager.
    pub fn network(&self) -> &Network {
        &self.inner.network
    }

    /// Seconds since start.
    pub fn uptime_s(&self) -> u64 {
        self.inner.started.elapsed().as_secs()
    }

    /// The settings in force.
    pub fn settings(&self) -> Settings {
        self.inner.effective.borrow().clone()
    }

    /// A receiver that sees every settings change.
    pub fn subscribe_settings(&self) -> watch::Receiver<Settings> {
        self.inner.effective.subscribe()
    }

    /// The runtime changes in force (those stored in the database).
    pub async fn runtime_changes(&self) -> SettingsPatch {
        self.inner.layered.lock().await.runtime_changes().clone()
    }

    /// Applies and stores a runtime settings change. On any error nothing changes.
    pub async fn update_settings(
        &self,
        patch: &SettingsPatch,
        origin: &str,
    ) -> Result<Settings, NodeError> {
        let mut layered = self.inner.layered.lock().await;
        let (next, to_store) = layered.with_runtime_patch(patch, origin)?;
        self.inner
            .store
            .save_settings(&to_store.into_iter().collect(), unix_now())
            .await?;
        let effective = next.effective().clone();
        *layered = next;
        self.inner.effective.send_replace(effective.clone());
        tracing::info!(change = %serde_json::Value::Object(patch.clone()), origin, "settings changed");
        Ok(effective)
    }

    /// Drops the runtime change of `key`, falling back to the lower sources.
    pub async fn reset_setting(
        &self,
        key: SettingKey,
        origin: &str,
    ) -> Result<Settings, NodeError> {
        let mut layered = self.inner.layered.lock().await;
        let next = layered.without_runtime(key, origin)?;
        self.inner.store.delete_setting(key.name()).await?;
        let effective = next.effective().clone();
        *layered = next;
        self.inner.effective.send_replace(effective.clone());
        tracing::info!(setting = %key, origin, "runtime change dropped");
        Ok(effective)
    }

    /// Public facts about the node.
    pub fn info(&self) -> NodeInfo {
        let id = self.node_id().to_hex();
        NodeInfo {
            public_key: id.clone(),
            node_id: id,
            capabilities: Vec::new(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_s: self.uptime_s(),
            listen_addrs: self
                .listen_addrs()
                .iter()
                .map(ToString::to_string)
                .collect(),
        }
    }

    /// Counts describing the node.
    pub async fn stats(&self) -> Result<NodeStats, NodeError> {
        let counts = self.inner.store.table_counts().await?;
        let dht = self.inner.network.dht().stats().await.unwrap_or_default();
        Ok(NodeStats {
            node_id: self.node_id().to_hex(),
            uptime_s: self.uptime_s(),
            known_nodes: counts.nodes,
            connections: self.inner.network.connections().await.len(),
            routes: counts.routes,
            dht_records: counts.dht_records,
            dht_peers: dht.routing_table_len,
            dht_storage_used_bytes: dht.storage_used_bytes,
            routing: match self.routing() {
                Some(routing) => routing.stats().await.ok(),
                None => None,
            },
            webrtc: match self.inner.network.webrtc() {
                Some(webrtc) => Some(webrtc.stats().await),
                None => None,
            },
            data_lane: self.inner.network.lane_counters(),
        })
    }

    /// Closes every link, then flushes and closes the store. Call once, after the API has
    /// stopped.
    pub async fn shutdown(&self) -> Result<(), NodeError> {
        self.inner.network.shutdown().await;
        self.inner.store.close().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(dir: &Path) -> NodeConfig {
        NodeConfig {
            data_dir: dir.to_owned(),
            listen: "127.0.0.1:0".parse().expect("addr"),
            webrtc: Some("127.0.0.1:0".parse().expect("addr")),
            // Unit tests never send mDNS multicast out of this machine.
            settings: SettingsSources {
                flags: patch(json!({"lan_discovery": false})),
                ..Default::default()
            },
        }
    }

    fn patch(value: serde_json::Value) -> SettingsPatch {
        value.as_object().cloned().expect("object")
    }

    #[tokio::test]
    async fn identity_and_runtime_settings_survive_a_restart() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::start(config(dir.path())).await.expect("start");
        let id = node.node_id();
        node.update_settings(&patch(json!({"max_hops": 6})), "test")
            .await
            .expect("update");
        node.shutdown().await.expect("shutdown");
        drop(node);

        let node = Node::start(config(dir.path())).await.expect("restart");
        assert_eq!(node.node_id(), id);
        assert_eq!(node.settings().max_hops, 6);
        node.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn relay_settings_reach_the_routing_driver_at_once() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::start(config(dir.path())).await.expect("start");
        let routing = node.routing().expect("routing runs").clone();
        let before = routing.relay_stats().await.expect("stats");
        assert!(before.relaying);
        assert_eq!(before.relay_bandwidth, 5 * 1024 * 1024);
        node.update_settings(
            &patch(json!({"relay_enabled": false, "relay_bandwidth": 1000})),
            "test",
        )
        .await
        .expect("update");
        // The watcher task hands the change to the driver; wait for it, bounded.
        let applied = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let stats = routing.relay_stats().await.expect("stats");
                if !stats.relaying && stats.relay_bandwidth == 1000 {
                    return stats;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("applied in time");
        assert!(!applied.accepting_new_flows);
        node.shutdown().await.expect("shutdown");
    }

    #[tokio::test]
    async fn a_refused_change_changes_nothing() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::start(config(dir.path())).await.expect("start");
        let watcher = node.subscribe_settings();
        let before = node.settings();
        let error = node
            .update_settings(
                &patch(json!({"max_hops": 5, "min_connections": 999})),
                "test",
            )
            .await
            .expect_err("invalid");
        assert!(error.to_string().contains("min_connections"), "{error}");
        assert_eq!(node.settings(), before);
        assert!(!watcher.has_changed().expect("sender alive"));
        assert!(node.runtime_changes().await.is_empty());
    }

    #[tokio::test]
    async fn reset_falls_back_to_the_lower_sources() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = config(dir.path());
        config
            .settings
            .flags
            .insert("max_hops".to_owned(), json!(4));
        let node = Node::start(config.clone()).await.expect("start");
        node.update_settings(&patch(json!({"max_hops": 8})), "test")
            .await
            .expect("update");
        assert_eq!(node.settings().max_hops, 8);
        node.reset_setting(SettingKey::MaxHops, "test")
            .await
            .expect("reset");
        assert_eq!(node.settings().max_hops, 4);
        node.shutdown().await.expect("shutdown");
        let node = Node::start(config).await.expect("restart");
        assert_eq!(node.settings().max_hops, 4);
    }

    #[tokio::test]
    async fn a_taken_listen_port_is_named() {
        let dir = tempfile::tempdir().expect("temp dir");
        let taken = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let mut config = config(dir.path());
        config.listen = taken.local_addr().expect("addr");
        let error = Node::start(config).await.expect_err("taken").to_string();
        assert!(
            error.contains("already in use") && error.contains("--listen"),
            "{error}"
        );
    }

    #[tokio::test]
    async fn info_reports_the_identity_and_bound_address() {
        let dir = tempfile::tempdir().expect("temp dir");
        let node = Node::start(config(dir.path())).await.expect("start");
        let info = node.info();
        assert_eq!(info.node_id, node.node_id().to_hex());
        assert_eq!(info.listen_addrs.len(), 1, "{:?}", info.listen_addrs);
        assert!(!info.listen_addrs[0].ends_with(":0"));
        let stats = node.stats().await.expect("stats");
        assert_eq!(stats.known_nodes, 0);
    }
}
