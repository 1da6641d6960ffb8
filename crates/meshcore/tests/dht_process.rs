//! The DHT between real `meshcore` processes on loopback (`--no-lan`, 127.0.0.1 only):
//! twenty nodes joined through one bootstrap node; a value put on one is read from every
//! other; records survive a restart; bad requests get 4xx with a message.

mod common;

use std::time::Instant;

use common::*;
use serde_json::{json, Value};

const NODES: usize = 20;

async fn put(node: &NodeProcess, body: Value) -> (u16, Value) {
    send(http().post(node.url("/v1/dht/put")).json(&body)).await
}

async fn get(node: &NodeProcess, key: &str) -> (u16, Value) {
    send(http().get(node.url("/v1/dht/get")).query(&[("key", key)])).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_put_on_one_node_is_read_from_every_other() {
    let hub_dir = tempfile::tempdir().expect("temp dir");
    let hub = NodeProcess::start(hub_dir.path(), &[]);
    let entry = hub.address();
    let mut dirs = Vec::new();
    let mut nodes = vec![hub];
    for _ in 1..NODES {
        let dir = tempfile::tempdir().expect("temp dir");
        nodes.push(NodeProcess::start(dir.path(), &["--bootstrap", &entry]));
        dirs.push(dir);
    }
    eventually("every node to hold min_connections (3) links", || async {
        for node in &nodes {
            if node.links().await.len() < 3 {
                return false;
            }
        }
        true
    })
    .await;

    // Named (signed) and content-addressed records, put on the last node.
    let writer = &nodes[NODES - 1];
    let (status, named) = put(
        writer,
        json!({"key": "greeting", "value": {"text": "hello mesh"}, "ttl": 600}),
    )
    .await;
    assert_eq!(status, 200, "{named}");
    let named_key = named["key"].as_str().expect("key").to_owned();
    assert_eq!(named_key, format!("{}/greeting", writer.node_id));
    let (status, content) = put(writer, json!({"value": [1, 2, 3]})).await;
    assert_eq!(status, 200, "{content}");
    let content_key = content["key"].as_str().expect("key").to_owned();
    assert_eq!(content_key.len(), 64);

    let mut latencies = Vec::new();
    for node in &nodes[..NODES - 1] {
        let deadline = tokio::time::Instant::now() + WAIT;
        let found = loop {
            let started = Instant::now();
            let (status, body) = get(node, &named_key).await;
            if status == 200 {
                break Some((body, started.elapsed()));
            }
            assert_eq!(status, 404, "{body}");
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} never read the named value",
                node.node_id
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        };
        let (body, latency) = found.expect("found");
        latencies.push(latency);
        assert_eq!(body["value"], json!({"text": "hello mesh"}));
        assert_eq!(body["owner"], json!(writer.node_id));
        let (status, body) = get(node, &content_key).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["value"], json!([1, 2, 3]));
    }
    latencies.sort();
    eprintln!(
        "dht get latency over {} nodes: median {:?}, max {:?}",
        latencies.len(),
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );

    // The service registry: three providers register one name; any node resolves all three.
    for (i, node) in nodes[2..5].iter().enumerate() {
        let (status, body) =
            send(http().post(node.url("/v1/services")).json(
                &json!({"name": "printer", "port": 9100 + i, "info": {"floor": i}, "ttl": 600}),
            ))
            .await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["node_id"], json!(node.node_id));
    }
    let mut expected: Vec<String> = nodes[2..5].iter().map(|n| n.node_id.clone()).collect();
    expected.sort();
    let reader = &nodes[NODES - 2];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, body) = send(http().get(reader.url("/v1/services/printer"))).await;
        let mut found: Vec<String> = body
            .as_array()
            .map(|providers| {
                providers
                    .iter()
                    .filter_map(|p| p["node_id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        found.sort();
        if status == 200 && found == expected {
            let provider = body
                .as_array()
                .and_then(|all| all.iter().find(|p| p["node_id"] == json!(nodes[2].node_id)))
                .expect("provider");
            assert_eq!(provider["port"], 9100);
            assert_eq!(provider["info"], json!({"floor": 0}));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "providers never resolved: {status} {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, body) = send(http().get(reader.url("/v1/services/no-such-service"))).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = send(
        http()
            .post(reader.url("/v1/services"))
            .json(&json!({"name": "x", "ttl": 60})),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_service"))
    );

    // A newer version from the owner replaces the old one everywhere it is read.
    let (status, body) = put(writer, json!({"key": "greeting", "value": "v2"})).await;
    assert_eq!(status, 200, "{body}");
    eventually("the new version to be read from node 0", || async {
        get(&nodes[0], &named_key).await.1["value"] == json!("v2")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_survive_a_restart_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(dir.path(), &[]);

    for (body, code) in [
        (json!({"key": "k", "value": 1, "ttl": 0}), "invalid_ttl"),
        (json!({"key": "k", "value": 1, "ttl": -3}), "invalid_ttl"),
        (
            json!({"key": "k", "value": 1, "ttl": 999_999_999}),
            "invalid_ttl",
        ),
        (
            json!({"key": "k", "value": "x".repeat(70_000)}),
            "invalid_value",
        ),
        (json!({"key": "", "value": 1}), "invalid_key"),
        (json!({"key": "k"}), "invalid_body"),
        (
            json!({"key": "k", "value": 1, "extra": true}),
            "invalid_body",
        ),
    ] {
        let (status, answer) = put(&node, body.clone()).await;
        assert_eq!(status, 400, "{body} → {answer}");
        assert_eq!(answer["error"], code, "{body} → {answer}");
        assert!(answer["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    let (status, answer) = get(&node, "not-a-key").await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (400, Some("invalid_key"))
    );
    let absent = format!("{}/absent", node.node_id);
    let (status, answer) = get(&node, &absent).await;
    assert_eq!(status, 404, "{answer}");
    assert!(answer["message"]
        .as_str()
        .expect("message")
        .contains("absent"));

    // The CLI: put prints the key to share, get prints the value.
    let api = node.api_host_port();
    let mut command = std::process::Command::new(BINARY);
    command.args([
        "dht",
        "put",
        "--api",
        &api,
        "motd",
        r#"{"text":"hi"}"#,
        "--ttl",
        "120",
    ]);
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "{stderr}");
    let cli_key = format!("{}/motd", node.node_id);
    assert!(stdout.starts_with(&cli_key), "{stdout}");
    let mut command = std::process::Command::new(BINARY);
    command.args(["dht", "get", "--api", &api, &cli_key]);
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), r#"{"text":"hi"}"#);
    let mut command = std::process::Command::new(BINARY);
    command.args(["dht", "get", "--api", &api, &absent]);
    let (ok, _, stderr) = run_to_end(command);
    assert!(!ok && stderr.contains("404"), "{stderr}");
    let mut command = std::process::Command::new(BINARY);
    command.args(["dht", "put", "--api", &api, "k", "v", "--ttl", "0"]);
    let (ok, _, stderr) = run_to_end(command);
    assert!(!ok && stderr.contains("ttl"), "{stderr}");

    // Alone on the mesh, a put is still stored here (and nowhere else).
    let (status, stored) = put(&node, json!({"key": "kept", "value": "across restarts"})).await;
    assert_eq!(status, 200, "{stored}");
    let key = stored["key"].as_str().expect("key").to_owned();
    let log = node.terminate();
    assert!(!log.contains("panicked"), "{log}");

    let node = NodeProcess::start(dir.path(), &[]);
    let (status, body) = get(&node, &key).await;
    assert_eq!(status, 200, "after restart: {body}");
    assert_eq!(body["value"], "across restarts");
    let (_, stats) = send(http().get(node.url("/v1/stats"))).await;
    assert!(
        stats["dht_records"].as_i64().expect("dht_records") >= 2,
        "{stats}"
    );
}
