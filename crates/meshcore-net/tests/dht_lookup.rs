//! The DHT driver over real QUIC on loopback: nodes learn of each other through the DHT,
//! publish signed address records, and a node dials a node id it was never given an
//! address for.

use std::time::Duration;

use meshcore_net::dht::{decode_addrs, ADDRESS_SALT};
use meshcore_net::{Network, NetworkConfig};
use meshcore_proto::dht::Key;
use meshcore_proto::link::Capabilities;
use meshcore_proto::NodeKeypair;
use meshcore_store::Store;
use rand_chacha::rand_core::SeedableRng;

const WAIT: Duration = Duration::from_secs(30);

async fn network(seed: u64) -> Network {
    let keys = NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
    let config = NetworkConfig {
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
