//! What the network tests share: a node's configuration on loopback.

use meshcore_net::NetworkConfig;
use meshcore_proto::link::Capabilities;

/// A node on an ephemeral loopback port with LAN discovery, peer exchange, relay servers
/// and WebRTC off, no routing, no allow-list and at most 8 links; tests change the rest.
pub(crate) fn loopback_config(seed: u64) -> NetworkConfig {
    NetworkConfig {
        listen: "127.0.0.1:0".parse().expect("address"),
        bootstrap: Vec::new(),
        lan: false,
        pex: false,
        min_links: 0,
        max_links: 8,
        relay_urls: Vec::new(),
        capabilities: Capabilities::empty(),
        rng_seed: seed,
        dht_storage_bytes: meshcore_proto::dht::DEFAULT_STORAGE_BYTES,
        dht_discovery: false,
        allowed_peers: Vec::new(),
        routing: None,
        webrtc: None,
        data_lane: true,
    }
}
