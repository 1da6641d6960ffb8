//! Links between real `meshcore` processes on loopback: bootstrap and peer exchange, a
//! crashed node rejoining from what it remembers, and peers that speak garbage.
//!
//! Every node listens on 127.0.0.1 and runs with `--no-lan`, so nothing leaves loopback.

mod common;

use std::net::{SocketAddr, UdpSocket};

use common::*;
use iroh::endpoint::ConnectionError;
use iroh::EndpointAddr;
use meshcore_net::endpoint::{bind, endpoint_id_of};
use meshcore_net::link::close_code;
use meshcore_proto::link::{encode, Capabilities, Hello, LinkMessage, LINK_ALPN};
use meshcore_proto::{NodeId, NodeKeypair};
use rand::RngCore;

fn start_nodes(
    count: usize,
    extra: &[&str],
    bootstrap: Option<&str>,
) -> (Vec<tempfile::TempDir>, Vec<NodeProcess>) {
    let mut dirs = Vec::new();
    let mut nodes = Vec::new();
    for _ in 0..count {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut args: Vec<&str> = extra.to_vec();
        if let Some(entry) = bootstrap {
            args.extend(["--bootstrap", entry]);
        }
        nodes.push(NodeProcess::start(dir.path(), &args));
        dirs.push(dir);
    }
    (dirs, nodes)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_nodes_bootstrapped_from_one_reach_min_connections_through_pex() {
    let hub_dir = tempfile::tempdir().expect("temp dir");
    let hub = NodeProcess::start(hub_dir.path(), &[]);
    let entry = hub.address();
    let (_dirs, others) = start_nodes(9, &[], Some(&entry));

    eventually(
        "every node to hold at least min_connections (3) links",
        || async {
            for node in std::iter::once(&hub).chain(&others) {
                if node.links().await.len() < 3 {
                    return false;
                }
            }
            true
        },
    )
    .await;

    // Peer exchange, not the hub alone, made those links: every other node links to at least
    // two nodes that are not the hub, which it could only have learned from a peer.
    for node in &others {
        let non_hub = node
            .linked_ids()
            .await
            .into_iter()
            .filter(|id| *id != hub.node_id)
            .count();
        assert!(
            non_hub >= 2,
            "{} links to only {non_hub} non-hub nodes",
            node.node_id
        );
    }
    // Links are symmetric: whoever A lists, lists A.
    for node in &others {
        for peer_id in node.linked_ids().await {
            let peer = std::iter::once(&hub)
                .chain(&others)
                .find(|n| n.node_id == peer_id)
                .expect("known node");
            eventually("the link to be listed on both ends", || async {
                peer.linked_ids().await.contains(&node.node_id)
            })
            .await;
        }
    }
    // Each link reports its measurements with the specification's columns.
    let link = &others[0].links().await[0];
    for column in [
        "connection_id",
        "local_node_id",
        "remote_node_id",
        "connection_type",
        "status",
        "quality_score",
        "bandwidth_up",
        "bandwidth_down",
        "latency",
        "packet_loss",
        "bytes_sent",
        "bytes_received",
    ] {
        assert!(
            link.get(column).is_some(),
            "connections lack {column}: {link}"
        );
    }
    assert_eq!(link["connection_type"], "quic");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_rejoins_from_its_known_nodes_without_bootstrap() {
    let hub_dir = tempfile::tempdir().expect("temp dir");
    let limits = ["--set", "min_connections=2"];
    let hub = NodeProcess::start(hub_dir.path(), &limits);
    let entry = hub.address();
    let (dirs, mut others) = start_nodes(2, &limits, Some(&entry));
    eventually("a triangle of links", || async {
        hub.links().await.len() == 2
            && others[0].links().await.len() == 2
            && others[1].links().await.len() == 2
    })
    .await;

    let victim = others.pop().expect("node");
    let victim_id = victim.node_id.clone();
    // Its known-node writer flushes every 500 ms: kill it only once both peers are stored,
    // or the restarted node has nothing to rejoin from.
    eventually("the victim to store both peers", || async {
        let (_, stats) = send(http().get(victim.url("/v1/stats"))).await;
        stats["known_nodes"].as_i64().unwrap_or(0) >= 2
    })
    .await;
    victim.kill_hard();
    eventually("the survivors to notice the crash", || async {
        !hub.linked_ids().await.contains(&victim_id)
            && !others[0].linked_ids().await.contains(&victim_id)
    })
    .await;

    // Restarted with no bootstrap: it must find both peers from meshcore_nodes.
    let reborn = NodeProcess::start(dirs[1].path(), &limits);
    assert_eq!(reborn.node_id, victim_id);
    eventually("the restarted node to relink to both peers", || async {
        let ids = reborn.linked_ids().await;
        ids.contains(&hub.node_id) && ids.contains(&others[0].node_id)
    })
    .await;
}

/// Connects to `node` as a fresh identity over the link ALPN, sends `payload` on the control
/// stream, and returns the application close code the node answers with.
async fn rogue_close_code(node: &NodeProcess, keys: &NodeKeypair, payload: &[u8]) -> u64 {
    let endpoint = bind(keys, "127.0.0.1:0".parse().expect("addr"), &[])
        .await
        .expect("rogue endpoint");
    let target: NodeId = node.node_id.parse().expect("node id");
    let listen: SocketAddr = node.listen.parse().expect("listen addr");
    let address =
        EndpointAddr::new(endpoint_id_of(&target).expect("endpoint id")).with_ip_addr(listen);
    let connection = tokio::time::timeout(WAIT, endpoint.connect(address, LINK_ALPN))
        .await
        .expect("connect in time")
        .expect("QUIC connects: garbage comes after the handshake");
    let (mut send, _recv) = connection.open_bi().await.expect("stream");
    send.write_all(payload).await.expect("write");
    let reason = tokio::time::timeout(WAIT, connection.closed())
        .await
        .expect("the node closes the connection");
    endpoint.close().await;
    match reason {
        ConnectionError::ApplicationClosed(close) => close.error_code.into_inner(),
        other => panic!("expected an application close, got {other}"),
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut frame = (body.len() as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(body);
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_speaking_garbage_or_a_wrong_version_are_dropped_and_others_are_unaffected() {
    let (_dirs, nodes) = start_nodes(1, &["--set", "min_connections=1"], None);
    let a = &nodes[0];
    let b_dir = tempfile::tempdir().expect("temp dir");
    let b = NodeProcess::start(
        b_dir.path(),
        &["--set", "min_connections=1", "--bootstrap", &a.address()],
    );
    eventually("a and b to link", || async {
        a.linked_ids().await.contains(&b.node_id)
    })
    .await;
    let link_before = a.links().await[0]["connection_id"].clone();

    let mut rng = rand::rngs::OsRng;
    let mut garbage = vec![0u8; 64];
    rng.fill_bytes(&mut garbage);
    let cases: [(&str, Vec<u8>, u64); 3] = [
        (
            "random bytes in a frame",
            framed(&garbage),
            u64::from(close_code::PROTOCOL_VIOLATION),
        ),
        (
            "a frame over the size limit",
            u32::MAX.to_be_bytes().to_vec(),
            u64::from(close_code::PROTOCOL_VIOLATION),
        ),
        (
            "a Hello of version 99",
            framed(&encode(&LinkMessage::Hello(Hello {
                version: 99,
                capabilities: Capabilities::empty(),
                listen_addrs: vec![],
            }))),
            u64::from(close_code::INCOMPATIBLE_VERSION),
        ),
    ];
    for (case, payload, expected) in cases {
        let keys = NodeKeypair::generate(&mut rng);
        assert_eq!(
            rogue_close_code(a, &keys, &payload).await,
            expected,
            "{case}"
        );
    }

    // A peer that broke the protocol is blacklisted: even a correct Hello is now refused.
    let keys = NodeKeypair::generate(&mut rng);
    rogue_close_code(a, &keys, &framed(&garbage)).await;
    let good_hello = framed(&encode(&LinkMessage::Hello(Hello {
        version: 1,
        capabilities: Capabilities::empty(),
        listen_addrs: vec![],
    })));
    assert_eq!(
        rogue_close_code(a, &keys, &good_hello).await,
        u64::from(close_code::BLACKLISTED)
    );

    // Random datagrams at the UDP port are dropped by QUIC.
    let socket = UdpSocket::bind("127.0.0.1:0").expect("socket");
    for _ in 0..500 {
        let mut datagram = vec![0u8; 1 + (rng.next_u32() % 1400) as usize];
        rng.fill_bytes(&mut datagram);
        socket.send_to(&datagram, &a.listen).expect("send");
    }

    // The node is alive and its link with b was never disturbed.
    let (status, _) = send(http().get(a.url("/v1/node/info"))).await;
    assert_eq!(status, 200);
    let links = a.links().await;
    assert_eq!(links.len(), 1, "{links:?}");
    assert_eq!(links[0]["connection_id"], link_before);
    assert_eq!(links[0]["remote_node_id"], b.node_id.as_str());
}
