//! Runs the real `meshcore` binary: API calls with good and bad input, the CLI against a
//! running node, SIGTERM and restart, and every start-up error a user can cause.
//!
//! Each node binds port 0 for its API and peer socket and reports the chosen addresses on
//! its first stdout line. Every wait has a timeout; nothing asserts on elapsed time.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::{json, Value};

async fn put_raw(node: &NodeProcess, body: impl Into<reqwest::Body>) -> (u16, Value) {
    send(
        http()
            .put(node.url("/v1/settings"))
            .header("content-type", "application/json")
            .body(body),
    )
    .await
}

#[tokio::test]
async fn the_api_survives_bad_input_sigterm_and_restart() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(dir.path(), &[]);
    let client = http();

    // Both path prefixes serve the same node.
    for prefix in ["/v1", "/wp-json/aevov-meshcore/v1"] {
        let (status, info) = send(client.get(node.url(&format!("{prefix}/node/info")))).await;
        assert_eq!(status, 200);
        assert_eq!(info["node_id"], node.node_id);
        for field in [
            "public_key",
            "capabilities",
            "version",
            "uptime_s",
            "listen_addrs",
        ] {
            assert!(info.get(field).is_some(), "node/info lacks {field}");
        }
        let (status, stats) = send(client.get(node.url(&format!("{prefix}/stats")))).await;
        assert_eq!(status, 200);
        assert_eq!(stats["node_id"], node.node_id);
    }

    let (status, defaults) = send(client.get(node.url("/v1/settings"))).await;
    assert_eq!(status, 200);
    assert_eq!(defaults["relay_bandwidth"], 5 * 1024 * 1024);
    assert_eq!(defaults["max_hops"], 10);

    // A good partial update.
    let change = json!({"max_hops": 7, "stun_servers": ["stun:stun.example.org:3478"]});
    let (status, updated) = send(
        client
            .put(node.url("/wp-json/aevov-meshcore/v1/settings"))
            .json(&change),
    )
    .await;
    assert_eq!(status, 200, "{updated}");
    assert_eq!(updated["max_hops"], 7);
    assert_eq!(updated["min_connections"], 3);

    // Bad input: each a 4xx with a JSON error naming the problem, and nothing changes.
    let big = format!("{{\"stun_servers\": [\"{}\"]}}", "a".repeat(100_000));
    let cases: Vec<(&str, (u16, Value), u16, &str)> = vec![
        (
            "malformed JSON",
            put_raw(&node, "{\"max_hops\": ").await,
            400,
            "malformed_json",
        ),
        (
            "not an object",
            put_raw(&node, "[1, 2]").await,
            400,
            "invalid_body",
        ),
        (
            "wrong type",
            put_raw(&node, r#"{"max_hops": "seven"}"#).await,
            400,
            "invalid_settings",
        ),
        (
            "unknown field",
            put_raw(&node, r#"{"max_hopz": 3}"#).await,
            400,
            "invalid_settings",
        ),
        (
            "negative bandwidth",
            put_raw(&node, r#"{"relay_bandwidth": -1}"#).await,
            400,
            "invalid_settings",
        ),
        (
            "min above max",
            put_raw(&node, r#"{"min_connections": 80}"#).await,
            400,
            "invalid_settings",
        ),
        (
            "bad STUN URL",
            put_raw(&node, r#"{"stun_servers": ["http://x"]}"#).await,
            400,
            "invalid_settings",
        ),
        (
            "oversized body",
            put_raw(&node, big).await,
            413,
            "payload_too_large",
        ),
        (
            "no content type",
            send(client.put(node.url("/v1/settings")).body("{}")).await,
            415,
            "unsupported_media_type",
        ),
        (
            "unknown route",
            send(client.get(node.url("/v1/nothing"))).await,
            404,
            "not_found",
        ),
        (
            "wrong method",
            send(client.delete(node.url("/v1/node/info"))).await,
            405,
            "method_not_allowed",
        ),
        (
            "unknown setting reset",
            send(client.delete(node.url("/v1/settings/nope"))).await,
            404,
            "not_found",
        ),
    ];
    for (case, (status, body), expected_status, expected_code) in cases {
        assert_eq!(status, expected_status, "{case}: {body}");
        assert_eq!(body["error"], expected_code, "{case}: {body}");
        assert!(
            body["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{case}: {body}"
        );
    }
    let (_, body) = put_raw(&node, r#"{"relay_bandwidth": -1}"#).await;
    assert_eq!(body["details"][0]["field"], "relay_bandwidth");
    let (_, after) = send(client.get(node.url("/v1/settings"))).await;
    assert_eq!(after, updated, "refused changes must change nothing");

    // The node is still healthy after all of that.
    let (status, _) = send(client.get(node.url("/v1/node/info"))).await;
    assert_eq!(status, 200);

    // The OpenAPI document describes the routes.
    let (status, document) = send(client.get(node.url("/v1/openapi.json"))).await;
    assert_eq!(status, 200);
    for path in ["/v1/node/info", "/v1/stats", "/v1/settings"] {
        assert!(
            document["paths"].get(path).is_some(),
            "openapi lacks {path}"
        );
    }

    // The CLI talks to the same node.
    let api = node.api_host_port();
    let (ok, stdout, stderr) = cli(&api, &["set", "route_timeout", "120"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "120");
    let (ok, _, stderr) = cli(&api, &["set", "relay_bandwidth", "-5"]);
    assert!(!ok);
    assert!(
        stderr.contains("relay_bandwidth") && stderr.contains("0 or more"),
        "{stderr}"
    );
    let (ok, _, stderr) = cli(&api, &["set", "max_hopz", "5"]);
    assert!(!ok);
    assert!(stderr.contains("unknown setting"), "{stderr}");
    let (ok, stdout, _) = cli(&api, &["get", "max_hops"]);
    assert!(ok);
    assert_eq!(stdout.trim(), "7");

    let node_id = node.node_id.clone();
    let stderr = node.terminate();
    assert!(stderr.contains("SIGTERM received"), "{stderr}");
    assert!(stderr.contains("stopped cleanly"), "{stderr}");

    // `meshcore id` reads the same identity from the data directory.
    let mut id = Command::new(BINARY);
    id.arg("id").arg("--data-dir").arg(dir.path());
    let (ok, stdout, _) = run_to_end(id);
    assert!(ok);
    assert_eq!(stdout.trim(), node_id);

    // Restart: same identity, same changed settings, even against a flag for the same key.
    let node = NodeProcess::start(
        dir.path(),
        &["--set", "max_hops=4", "--set", "token_rate=2.5"],
    );
    assert_eq!(node.node_id, node_id);
    let (_, settings) = send(client.get(node.url("/v1/settings"))).await;
    assert_eq!(settings["max_hops"], 7, "runtime change outranks --set");
    assert_eq!(settings["route_timeout"], 120);
    assert_eq!(settings["token_rate"], 2.5);
    assert_eq!(
        settings["stun_servers"],
        json!(["stun:stun.example.org:3478"])
    );

    // Reset drops the runtime change and the flag applies.
    let (ok, stdout, stderr) = cli(&node.api_host_port(), &["reset", "max_hops"]);
    assert!(ok, "{stderr}");
    assert_eq!(stdout.trim(), "4");
    node.terminate();
}

#[tokio::test]
async fn cors_follows_the_setting_at_run_time() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = NodeProcess::start(dir.path(), &[]);
    let client = http();
    let preflight = || {
        client
            .request(reqwest::Method::OPTIONS, node.url("/v1/settings"))
            .header("origin", "http://app.example.test")
            .header("access-control-request-method", "PUT")
            .send()
    };
    let response = preflight().await.expect("preflight");
    assert!(response
        .headers()
        .get("access-control-allow-origin")
        .is_none());

    let (status, _) = send(
        client
            .put(node.url("/v1/settings"))
            .json(&json!({"cors_origins": ["http://app.example.test"]})),
    )
    .await;
    assert_eq!(status, 200);
    let response = preflight().await.expect("preflight");
    assert_eq!(
        response
            .headers()
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"http://app.example.test"[..])
    );
    node.terminate();
}

/// Starts a node that must fail, and returns its stderr.
fn start_failure(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> String {
    let mut command = node_command(data_dir, extra);
    for (name, value) in env {
        command.env(name, value);
    }
    let (ok, _, stderr) = run_to_end(command);
    assert!(!ok, "the node should have refused to start: {stderr}");
    stderr
}

#[test]
fn start_up_errors_name_the_problem() {
    let dir = tempfile::tempdir().expect("temp dir");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_api = taken.local_addr().expect("addr").to_string();
    let stderr = start_failure(&dir.path().join("a"), &["--api", &taken_api], &[]);
    assert!(
        stderr.contains("already in use") && stderr.contains("--api"),
        "{stderr}"
    );

    let taken_udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    let taken_listen = taken_udp.local_addr().expect("addr").to_string();
    let stderr = start_failure(&dir.path().join("b"), &["--listen", &taken_listen], &[]);
    assert!(
        stderr.contains("already in use") && stderr.contains("--listen"),
        "{stderr}"
    );

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").expect("write");
    let stderr = start_failure(&file.join("data"), &[], &[]);
    assert!(
        stderr.contains("data directory") && stderr.contains("plain-file"),
        "{stderr}"
    );

    let corrupt = dir.path().join("corrupt");
    std::fs::create_dir(&corrupt).expect("mkdir");
    std::fs::write(corrupt.join("node.key"), b"garbage").expect("write");
    std::fs::set_permissions(
        corrupt.join("node.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .expect("chmod");
    let stderr = start_failure(&corrupt, &[], &[]);
    assert!(
        stderr.contains("node.key") && stderr.contains("corrupt"),
        "{stderr}"
    );
    assert_eq!(
        std::fs::read(corrupt.join("node.key")).expect("read"),
        b"garbage"
    );

    let open = dir.path().join("open");
    std::fs::create_dir(&open).expect("mkdir");
    let mut id = Command::new(BINARY);
    id.arg("id").arg("--data-dir").arg(&open);
    assert!(run_to_end(id).0);
    std::fs::set_permissions(
        open.join("node.key"),
        std::fs::Permissions::from_mode(0o644),
    )
    .expect("chmod");
    let stderr = start_failure(&open, &[], &[]);
    assert!(stderr.contains("chmod 600"), "{stderr}");

    let config = dir.path().join("meshcore.toml");
    std::fs::write(&config, "max_hops = [").expect("write");
    let stderr = start_failure(
        &dir.path().join("c"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    assert!(
        stderr.contains("meshcore.toml") && stderr.contains("TOML"),
        "{stderr}"
    );

    std::fs::write(&config, "min_connections = 10\nmax_connections = 5\n").expect("write");
    let stderr = start_failure(
        &dir.path().join("d"),
        &["--config", config.to_str().expect("utf-8")],
        &[],
    );
    assert!(stderr.contains("min_connections"), "{stderr}");

    let stderr = start_failure(&dir.path().join("e"), &["--set", "max_hops=0"], &[]);
    assert!(
        stderr.contains("max_hops") && stderr.contains("between 1 and 255"),
        "{stderr}"
    );

    let stderr = start_failure(
        &dir.path().join("f"),
        &[],
        &[("MESHCORE_ROUTE_TIMEOUT", "soon")],
    );
    assert!(
        stderr.contains("environment") && stderr.contains("route_timeout"),
        "{stderr}"
    );

    let stderr = start_failure(&dir.path().join("g"), &["--api", "not-an-address"], &[]);
    assert!(stderr.contains("--api"), "{stderr}");
}
