//! A chain of two relays on loopback carrying a burst: the first relay forwards in its link
//! tasks (the forwarding plane), and when the second relay's statements come, every byte
//! it stated is one the first relay knows it handed on — so the first relay pays for all of
//! it, none is left unconfirmed, and the second relay never throttles it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use meshcore_net::routing::RoutingOptions;
use meshcore_net::{Network, NetworkConfig};
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::Store;
use rand_chacha::rand_core::SeedableRng;

/// Bound on every wait; none is reached when routing and the ledger work.
const WAIT: Duration = Duration::from_secs(30);

async fn network(keys: &NodeKeypair, allowed: Vec<NodeId>, seed: u64) -> Network {
    let config = NetworkConfig {
        allowed_peers: allowed,
        routing: Some(RoutingOptions {
            // The budget is not what this test is about.
            relay_bandwidth: 1 << 40,
            ..RoutingOptions::new(10, Duration::from_secs(300), seed)
        }),
        ..common::loopback_config(seed)
    };
    let store = Store::open_in_memory().await.expect("store");
    Network::start(keys, config, store).await.expect("network")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_pays_the_next_relay_for_everything_it_forwarded_in_its_link_tasks() {
    let keys: Vec<NodeKeypair> = (0..4u64)
        .map(|seed| NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed + 40)))
        .collect();
    let ids: Vec<NodeId> = keys.iter().map(NodeKeypair::node_id).collect();
    let mut nodes = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        let neighbours = [i.checked_sub(1), Some(i + 1).filter(|&n| n < 4)]
            .into_iter()
            .flatten()
            .map(|n| ids[n])
            .collect();
        nodes.push(network(key, neighbours, i as u64).await);
    }
    for i in 0..3 {
        nodes[i]
            .connect(ids[i + 1], nodes[i + 1].listen_addrs(), WAIT)
            .await
            .expect("link");
    }
    let routing = |i: usize| nodes[i].routing().expect("routing").clone();

    // The first message finds the route and admits the flow at both relays; the burst
    // after it goes through the first relay's link tasks.
    let source = routing(0);
    source
        .send(ids[3], Bytes::from_static(b"first"), WAIT)
        .await
        .expect("the first message is delivered");
    let payload = Bytes::from(vec![7u8; 16 * 1024]);
    let in_flight = Arc::new(tokio::sync::Semaphore::new(32));
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..2000 {
        let permit = Arc::clone(&in_flight).acquire_owned().await.expect("open");
        let (source, payload, to) = (source.clone(), payload.clone(), ids[3]);
        sends.spawn(async move {
            let result = source.send(to, payload, WAIT).await;
            drop(permit);
            result
        });
    }
    while let Some(result) = sends.join_next().await {
        result
            .expect("task")
            .expect("every message of the burst is delivered");
    }
    let first_relay = routing(1);
    let fast = nodes[1].routing().expect("routing").forwarder().counters();
    assert!(
        fast.forwarded > 0,
        "the first relay forwarded in its link tasks: {fast:?}"
    );

    // The second relay's statements (every 250 ms) confirm what the first handed it: wait
    // for the last ones (all of it confirmed, or at most 5 s when the second relay dropped
    // some packets, which it never states).
    let settled = tokio::time::Instant::now() + Duration::from_secs(5);
    let tokens = loop {
        let tokens = first_relay.tokens().await.expect("tokens");
        if tokens.unconfirmed_bytes == 0 || tokio::time::Instant::now() > settled {
            break tokens;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        tokens.bytes_overclaimed, 0,
        "statements covered bytes the first relay had forwarded but not yet booked, and \
         they went unpaid ({} bytes still unconfirmed)",
        tokens.unconfirmed_bytes
    );
    let second = routing(2).relay_stats().await.expect("stats");
    assert_eq!(second.dropped_throttled, 0, "{second:?}");
    for node in nodes {
        node.shutdown().await;
    }
}
