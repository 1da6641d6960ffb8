//! The DHT driver over real QUIC on loopback: nodes learn of each other through the DHT,
//! publish signed address records, a node dials a node id it was never given an address
//! for, and a node below `min_connections` links to nodes it found in the DHT.

mod common;

use std::time::Duration;

use meshcore_net::dht::{decode_addrs, ADDRESS_SALT};
use meshcore_net::{Network, NetworkConfig};
use meshcore_proto::dht::Key;
use meshcore_proto::NodeKeypair;
use meshcore_store::Store;
use rand_chacha::rand_core::SeedableRng;

const WAIT: Duration = Duration::from_secs(30);

async fn network(seed: u64) -> Network {
    network_with(seed, 0, false).await
}

async fn network_with(seed: u64, min_links: usize, dht_discovery: bool) -> Network {
    let keys = NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
    let config = NetworkConfig {
        min_links,
        dht_discovery,
        ..common::loopback_config(seed)
    };
    let store = Store::open_in_memory().await.expect("store");
    Network::start(&keys, config, store).await.expect("network")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_id_alone_is_resolved_through_the_dht_and_dialed() {
    // A line: a — b — c. Peer exchange is off, so a can learn of c only through the DHT.
    let (a, b, c) = (network(11).await, network(12).await, network(13).await);
    a.connect(b.node_id(), b.listen_addrs(), WAIT)
        .await
        .expect("a–b");
    c.connect(b.node_id(), b.listen_addrs(), WAIT)
        .await
        .expect("c–b");

    // c's signed address record is readable from a, and names c's listening address.
    let key = Key::for_mutable(&c.node_id(), ADDRESS_SALT);
    let deadline = tokio::time::Instant::now() + WAIT;
    let addrs = loop {
        if let Ok(record) = a.dht().get(key).await {
            break decode_addrs(record.value()).expect("an address list");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "c's address record was not readable from a in time"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(
        c.listen_addrs().iter().all(|addr| addrs.contains(addr)),
        "{addrs:?} lacks {:?}",
        c.listen_addrs()
    );

    // a dials c by id alone.
    let link = a
        .connect(c.node_id(), Vec::new(), WAIT)
        .await
        .expect("a dials c by node id");
    assert_eq!(link.remote_node_id, c.node_id().to_hex());

    let stats = a.dht().stats().await.expect("stats");
    assert!(stats.routing_table_len >= 2, "{stats:?}");
    for network in [a, b, c] {
        network.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_below_min_links_links_to_nodes_found_in_the_dht() {
    // Peer exchange is off everywhere: the only way for a to find c and d is the DHT.
    let a = network_with(21, 3, true).await;
    let (b, c, d) = (network(22).await, network(23).await, network(24).await);
    for other in [&c, &d] {
        other
            .connect(b.node_id(), b.listen_addrs(), WAIT)
            .await
            .expect("link to b");
    }
    a.connect(b.node_id(), b.listen_addrs(), WAIT)
        .await
        .expect("a–b");
    let mut links = a.subscribe_link_count();
    tokio::time::timeout(WAIT, links.wait_for(|n| *n >= 3))
        .await
        .expect("a reached min_links (3) through DHT discovery in time")
        .expect("network running");
    let linked: Vec<String> = a
        .connections()
        .await
        .into_iter()
        .map(|info| info.remote_node_id)
        .collect();
    for other in [&b, &c, &d] {
        assert!(linked.contains(&other.node_id().to_hex()), "{linked:?}");
    }
    for network in [a, b, c, d] {
        network.shutdown().await;
    }
}
