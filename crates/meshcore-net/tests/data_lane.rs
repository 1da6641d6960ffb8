//! The data lane on loopback: routed packets cross a relay as sealed UDP datagrams once both
//! ends of each link hear each other, and a link whose peer runs no lane stays on QUIC.

mod common;

use std::time::Duration;

use bytes::Bytes;
use meshcore_net::routing::RoutingOptions;
use meshcore_net::{Network, NetworkConfig};
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::Store;
use rand_chacha::rand_core::SeedableRng;

/// Bound on every wait; none is reached when links and lanes work.
const WAIT: Duration = Duration::from_secs(20);

async fn network(keys: &NodeKeypair, allowed: Vec<NodeId>, seed: u64, lane: bool) -> Network {
    let config = NetworkConfig {
        allowed_peers: allowed,
        routing: Some(RoutingOptions::new(10, Duration::from_secs(300), seed)),
        data_lane: lane,
        ..common::loopback_config(seed)
    };
    let store = Store::open_in_memory().await.expect("store");
    Network::start(keys, config, store).await.expect("network")
}

/// Nodes with `lanes[i]`, linked in a line in that order.
async fn line(seed: u64, lanes: &[bool]) -> (Vec<Network>, Vec<NodeId>) {
    let keys: Vec<NodeKeypair> = (0..lanes.len() as u64)
        .map(|i| NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed + i)))
        .collect();
    let ids: Vec<NodeId> = keys.iter().map(NodeKeypair::node_id).collect();
    let mut nodes = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let neighbours = [i.checked_sub(1), Some(i + 1).filter(|&n| n < keys.len())]
            .into_iter()
            .flatten()
            .map(|n| ids[n])
            .collect();
        nodes.push(network(key, neighbours, seed + i as u64, lanes[i]).await);
    }
    for i in 0..keys.len() - 1 {
        nodes[i]
            .connect(ids[i + 1], nodes[i + 1].listen_addrs(), WAIT)
            .await
            .expect("link");
    }
    (nodes, ids)
}

/// Whether every link of every node lists its lane as in use, polled until `WAIT`.
async fn lanes_in_use(nodes: &[Network]) -> bool {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut all = true;
        for node in nodes {
            all &= node.connections().await.iter().all(|link| link.data_lane);
        }
        if all || tokio::time::Instant::now() > deadline {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routed_packets_cross_a_relay_on_the_lane() {
    let (nodes, ids) = line(60, &[true, true, true]).await;
    assert!(lanes_in_use(&nodes).await, "every link's lane came up");
    let source = nodes[0].routing().expect("routing").clone();
    const MESSAGES: u64 = 200;
    for i in 0..MESSAGES {
        let delivery = source
            .send(ids[2], Bytes::from(vec![i as u8; 64]), WAIT)
            .await
            .expect("delivered");
        assert_eq!(delivery.hops, 2);
    }
    let relay = nodes[1].lane_counters().expect("the relay runs a lane");
    let destination = nodes[2].lane_counters().expect("lane");
    // Each message and its acknowledgement crossed the relay on lanes both ways.
    assert!(
        relay.frames_received >= 2 * MESSAGES && relay.frames_sent >= 2 * MESSAGES,
        "{relay:?}"
    );
    assert!(destination.frames_received >= MESSAGES, "{destination:?}");
    // ... and the relay forwarded them in the task that received them.
    let forwarded = nodes[1]
        .routing()
        .expect("routing")
        .forwarder()
        .counters()
        .forwarded;
    assert!(
        forwarded >= MESSAGES,
        "forwarded on the fast path: {forwarded}"
    );
    for node in nodes {
        node.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_to_a_node_without_a_lane_stays_on_quic() {
    let (nodes, ids) = line(70, &[true, false]).await;
    let source = nodes[0].routing().expect("routing").clone();
    for _ in 0..20 {
        source
            .send(ids[1], Bytes::from_static(b"inside QUIC"), WAIT)
            .await
            .expect("delivered");
    }
    assert!(nodes[1].lane_counters().is_none(), "b runs no lane");
    let a = nodes[0].lane_counters().expect("a runs a lane");
    assert_eq!((a.frames_sent, a.probes_sent), (0, 0), "{a:?}");
    for node in &nodes {
        let links = node.connections().await;
        assert_eq!(links.len(), 1);
        assert!(!links[0].data_lane);
    }
    for node in nodes {
        node.shutdown().await;
    }
}
