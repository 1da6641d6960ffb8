//! Multi-hop routing between real `meshcore` processes on loopback: a line of five nodes,
//! each allowed to link only to its neighbours (setting `allowed_peers`), so that node 0
//! reaches node 4 only through 1, 2 and 3; and a ring of five whose node 1 is killed while
//! node 0 sends one message to node 2: the driver sends it again until it goes the other way
//! round.
//!
//! Every node listens on 127.0.0.1 and runs with `--no-lan`, so nothing leaves loopback.

mod common;

use std::process::Command;

use common::*;
use serde_json::json;

const LINE: usize = 5;

/// Creates the identity in `dir` and returns the node id.
fn node_id_of(dir: &std::path::Path) -> String {
    let mut command = Command::new(BINARY);
    command.arg("id").arg("--data-dir").arg(dir);
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "meshcore id failed: {stderr}");
    stdout.trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_a_line_of_five_nodes() {
    let dirs: Vec<tempfile::TempDir> = (0..LINE)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let ids: Vec<String> = dirs.iter().map(|dir| node_id_of(dir.path())).collect();

    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 0..LINE {
        let neighbours: Vec<&str> = [i.checked_sub(1), Some(i + 1)]
            .into_iter()
            .flatten()
            .filter(|&j| j < LINE)
            .map(|j| ids[j].as_str())
            .collect();
        let allowed = format!("allowed_peers={}", neighbours.join(","));
        let mut args = vec!["--set", &allowed, "--set", "min_connections=1"];
        let bootstrap = nodes.last().map(NodeProcess::address);
        if let Some(entry) = &bootstrap {
            args.extend(["--bootstrap", entry.as_str()]);
        }
        let node = NodeProcess::start(dirs[i].path(), &args);
        assert_eq!(node.node_id, ids[i]);
        nodes.push(node);
    }

    eventually(
        "every node to link to exactly its line neighbours",
        || async {
            for (i, node) in nodes.iter().enumerate() {
                let mut linked = node.linked_ids().await;
                linked.sort();
                let mut expected: Vec<String> = [i.checked_sub(1), Some(i + 1)]
                    .into_iter()
                    .flatten()
                    .filter(|&j| j < LINE)
                    .map(|j| ids[j].clone())
                    .collect();
                expected.sort();
                if linked != expected {
                    return false;
                }
            }
            true
        },
    )
    .await;

    let (status, route) = send(
        http()
            .post(nodes[0].url("/v1/route/find"))
            .json(&json!({ "destination": ids[4] })),
    )
    .await;
    assert_eq!(status, 200, "{route}");
    assert_eq!(route["destination"], ids[4].as_str());
    assert_eq!(route["next_hop"], ids[1].as_str());
    assert_eq!(route["hop_count"], 4, "{route}");
    assert_eq!(
        route["path"],
        json!([ids[1], ids[2], ids[3], ids[4]]),
        "{route}"
    );
    assert!(route["path_quality"]
        .as_f64()
        .is_some_and(|q| q > 0.0 && q <= 1.0));
    assert!(
        route["path_cost"].as_u64().is_some_and(|c| c >= 400),
        "{route}"
    );
    // Three relays at 100 tokens/MB each, times a reputation multiplier of 1.0 to 1.5.
    assert!(
        route["path_price"]
            .as_u64()
            .is_some_and(|p| (300_000..=450_000).contains(&p)),
        "{route}"
    );

    let (status, routes) = send(http().get(nodes[0].url("/v1/routes"))).await;
    assert_eq!(status, 200, "{routes}");
    assert!(
        routes
            .as_array()
            .is_some_and(|all| all.iter().any(|r| r["destination"] == ids[4].as_str())),
        "{routes}"
    );

    // Node 4's event stream, opened before the message is sent.
    let events_url = nodes[4].url("/v1/events").replacen("http://", "ws://", 1);
    let (mut events, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(events_url))
        .await
        .expect("WebSocket handshake in time")
        .expect("WebSocket upgrade");

    let (status, delivery) = send(
        http()
            .post(nodes[0].url("/v1/messages"))
            .json(&json!({ "destination": ids[4], "payload": "hello over four hops" })),
    )
    .await;
    assert_eq!(status, 200, "{delivery}");
    assert_eq!(delivery["delivered"], true);
    assert_eq!(delivery["hops"], 4, "{delivery}");
    assert!(delivery["rtt_ms"].as_f64().is_some_and(|ms| ms > 0.0));

    let (status, received) = send(http().get(nodes[4].url("/v1/messages"))).await;
    assert_eq!(status, 200, "{received}");
    let message = received
        .as_array()
        .and_then(|all| all.last().cloned())
        .unwrap_or_default();
    assert_eq!(message["source"], ids[0].as_str(), "{received}");
    assert_eq!(message["payload"], "hello over four hops");
    assert_eq!(message["hops"], 4);

    // The same message arrived on the event stream.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        use futures_util::StreamExt;
        let frame = tokio::time::timeout_at(deadline, events.next())
            .await
            .expect("a message event in time")
            .expect("the stream stays open")
            .expect("a WebSocket frame");
        let Ok(text) = frame.into_text() else {
            continue;
        };
        let event: serde_json::Value = serde_json::from_str(&text).expect("JSON event");
        if event["type"] == "message" {
            assert_eq!(event["source"], ids[0].as_str(), "{event}");
            assert_eq!(event["payload"], "hello over four hops", "{event}");
            assert_eq!(event["hops"], 4, "{event}");
            break;
        }
    }
    // The counters show who relayed and who received.
    let (_, middle) = send(http().get(nodes[2].url("/v1/stats"))).await;
    assert!(
        middle["routing"]["packets_forwarded"].as_u64() >= Some(2),
        "{middle}"
    );
    let (_, end) = send(http().get(nodes[4].url("/v1/stats"))).await;
    assert!(
        end["routing"]["packets_delivered"].as_u64() >= Some(1),
        "{end}"
    );
    assert_eq!(end["routing"]["e2e_rejected"], 0, "{end}");

    // Once every link's data lane is up, a message and its acknowledgement cross the
    // middle relay on lanes.
    eventually("every link's data lane to be in use", || async {
        for node in &nodes {
            let (status, links) = send(http().get(node.url("/v1/connections"))).await;
            let links = links.as_array().cloned().unwrap_or_default();
            if status != 200 || links.is_empty() || !links.iter().all(|l| l["data_lane"] == true) {
                return false;
            }
        }
        true
    })
    .await;
    let lane_frames = |stats: &serde_json::Value| {
        stats["data_lane"]["frames_received"]
            .as_u64()
            .expect("the middle node runs a data lane")
    };
    let before = lane_frames(&send(http().get(nodes[2].url("/v1/stats"))).await.1);
    let (status, delivery) = send(
        http()
            .post(nodes[0].url("/v1/messages"))
            .json(&json!({ "destination": ids[4], "payload": "on the lanes" })),
    )
    .await;
    assert_eq!(
        (status, delivery["hops"].as_u64()),
        (200, Some(4)),
        "{delivery}"
    );
    let after = lane_frames(&send(http().get(nodes[2].url("/v1/stats"))).await.1);
    assert!(
        after >= before + 2,
        "lane frames at the middle: {before} → {after}"
    );

    // A plain GET (no upgrade) is refused with a JSON error.
    let (status, body) = send(http().get(nodes[4].url("/v1/events"))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("not_websocket")),
        "{body}"
    );

    // The command line does the same.
    let mut command = Command::new(BINARY);
    command.args([
        "send",
        "--api",
        &nodes[0].api_host_port(),
        &ids[4],
        "second message",
    ]);
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "meshcore send failed: {stderr}");
    assert!(stdout.contains("delivered over 4 hops"), "{stdout}");
    let mut command = Command::new(BINARY);
    command.args(["route", "find", "--api", &nodes[4].api_host_port(), &ids[0]]);
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "meshcore route find failed: {stderr}");
    assert!(stdout.starts_with("4 hops via"), "{stdout}");

    // Errors: this node itself, a malformed id.
    let (status, body) = send(
        http()
            .post(nodes[0].url("/v1/route/find"))
            .json(&json!({ "destination": ids[0] })),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_destination"))
    );
    let (status, _) = send(
        http()
            .post(nodes[0].url("/v1/messages"))
            .json(&json!({ "destination": "nope", "payload": "x" })),
    )
    .await;
    assert_eq!(status, 400);

    let (status, document) = send(http().get(nodes[0].url("/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    for path in ["/v1/route/find", "/v1/routes", "/v1/messages"] {
        assert!(
            document["paths"].get(path).is_some(),
            "openapi lacks {path}"
        );
    }

    // The route table reaches meshcore_routes (written every 5 s when it changed).
    eventually("node 0 to store its route table", || async {
        let (_, routes) = send(http().get(nodes[0].url("/v1/routes"))).await;
        let (status, stats) = send(http().get(nodes[0].url("/v1/stats"))).await;
        let selected = routes.as_array().map_or(0, Vec::len);
        status == 200 && selected >= 3 && stats["routes"].as_u64() == Some(selected as u64)
    })
    .await;

    for node in nodes {
        node.terminate();
    }
}

/// Sends `payload` from `from` to `to` until one is delivered; returns the delivery.
async fn deliver_eventually(from: &NodeProcess, to: &str, payload: &str) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = send(
            http()
                .post(from.url("/v1/messages"))
                .json(&json!({ "destination": to, "payload": payload })),
        )
        .await;
        if status == 200 {
            return body;
        }
        assert!(
            [404, 504].contains(&status),
            "a failed send must say no route or timeout: {status} {body}"
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery within {WAIT:?}: last answer {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivery_resumes_around_a_ring_when_the_middle_node_dies() {
    // A ring of five: 0–1–2–3–4–0. From 0, node 2 is two hops away through 1, three through
    // 4 and 3.
    const RING: usize = 5;
    let dirs: Vec<tempfile::TempDir> = (0..RING)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let ids: Vec<String> = dirs.iter().map(|dir| node_id_of(dir.path())).collect();
    let neighbours = |i: usize| [(i + RING - 1) % RING, (i + 1) % RING];
    let mut nodes: Vec<NodeProcess> = Vec::new();
    for i in 0..RING {
        let allowed = format!(
            "allowed_peers={},{}",
            ids[neighbours(i)[0]],
            ids[neighbours(i)[1]]
        );
        let mut args = vec!["--set", &allowed, "--set", "min_connections=2"];
        let mut entries = Vec::new();
        if let Some(previous) = nodes.last() {
            entries.push(previous.address());
        }
        if i == RING - 1 {
            entries.push(nodes[0].address());
        }
        for entry in &entries {
            args.extend(["--bootstrap", entry.as_str()]);
        }
        nodes.push(NodeProcess::start(dirs[i].path(), &args));
    }
    eventually("every node to link to its two ring neighbours", || async {
        for node in &nodes {
            if node.links().await.len() < 2 {
                return false;
            }
        }
        true
    })
    .await;

    let first = deliver_eventually(&nodes[0], &ids[2], "before").await;
    assert_eq!(first["hops"], 2, "the short way, through node 1: {first}");

    // Node 1 dies without a word (SIGKILL): node 0 learns it when the link times out.
    let mut nodes: Vec<Option<NodeProcess>> = nodes.into_iter().map(Some).collect();
    nodes[1].take().expect("node 1").kill_hard();
    // One send, no retry by hand: the driver sends it again until the dead link is noticed
    // and the route repaired or rediscovered the other way round.
    let sender = nodes[0].as_ref().expect("node 0");
    let (status, after) = send(
        http()
            .post(sender.url("/v1/messages"))
            .json(&json!({ "destination": ids[2], "payload": "after" })),
    )
    .await;
    assert_eq!(status, 200, "{after}");
    assert_eq!(after["hops"], 3, "the long way, through 4 and 3: {after}");
    let (_, stats) = send(http().get(sender.url("/v1/stats"))).await;
    assert!(
        stats["routing"]["retransmissions"].as_u64() >= Some(1),
        "{stats}"
    );
    let receiver = nodes[2].as_ref().expect("node 2");
    let (_, received) = send(http().get(receiver.url("/v1/messages"))).await;
    let payloads: Vec<&str> = received
        .as_array()
        .map(|all| all.iter().filter_map(|m| m["payload"].as_str()).collect())
        .unwrap_or_default();
    assert!(payloads.contains(&"after"), "{received}");
}
