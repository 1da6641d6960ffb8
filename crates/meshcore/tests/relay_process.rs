//! Relaying and the token ledger between real `meshcore` processes on loopback: a line
//! a – r – b held by `allowed_peers`. Messages from a to b cross r; r's earned tokens grow
//! only then, and equal what a spent, in IOUs a signed (`GET /v1/tokens`, `meshcore
//! tokens`); `GET /v1/relay/stats` counts what r forwarded; turning `relay_enabled` off at
//! run time stops r relaying at once, and what it refuses is never owed to it. No timing is
//! asserted.
//!
//! Every node listens on 127.0.0.1 and runs with `--no-lan`, so nothing leaves loopback.

mod common;

use std::process::Command;

use common::*;
use serde_json::{json, Value};

/// Creates the identity in `dir` and returns the node id.
fn node_id_of(dir: &std::path::Path) -> String {
    let mut command = Command::new(BINARY);
    command.arg("id").arg("--data-dir").arg(dir);
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "meshcore id failed: {stderr}");
    stdout.trim().to_owned()
}

fn account<'a>(tokens: &'a Value, neighbour: &str) -> Option<&'a Value> {
    tokens["neighbours"]
        .as_array()?
        .iter()
        .find(|n| n["node_id"] == neighbour)
}

async fn get(node: &NodeProcess, path: &str) -> Value {
    let (status, body) = send(http().get(node.url(path))).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_earns_what_the_originator_spends_and_stops_when_told() {
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let ids: Vec<String> = dirs.iter().map(|dir| node_id_of(dir.path())).collect();
    let (a_id, r_id, b_id) = (&ids[0], &ids[1], &ids[2]);
    // a pays at 1 token owed, so that a few messages bring IOUs.
    let allowed_a = format!("allowed_peers={r_id}");
    let allowed_r = format!("allowed_peers={a_id},{b_id}");
    let allowed_b = format!("allowed_peers={r_id}");
    let r = NodeProcess::start(
        dirs[1].path(),
        &["--set", &allowed_r, "--set", "min_connections=1"],
    );
    let bootstrap = r.address();
    let a = NodeProcess::start(
        dirs[0].path(),
        &[
            "--set",
            &allowed_a,
            "--set",
            "payment_threshold=1",
            "--set",
            "new_neighbour_threshold=1",
            "--bootstrap",
            &bootstrap,
        ],
    );
    let b = NodeProcess::start(
        dirs[2].path(),
        &["--set", &allowed_b, "--bootstrap", &bootstrap],
    );
    eventually("a and b to link to r", || async {
        let linked = r.linked_ids().await;
        linked.contains(a_id) && linked.contains(b_id)
    })
    .await;

    let before = get(&r, "/v1/tokens").await;
    assert_eq!(before["earned"], 0, "{before}");
    assert_eq!(before["node_id"], r_id.as_str());

    // Three 20 000-byte messages from a to b, through r.
    let text = "x".repeat(20_000);
    for _ in 0..3 {
        let (status, delivery) = send(
            http()
                .post(a.url("/v1/messages"))
                .json(&json!({ "destination": b_id, "payload": text })),
        )
        .await;
        assert_eq!(status, 200, "{delivery}");
        assert_eq!(delivery["hops"], 2, "{delivery}");
    }

    let relay = get(&r, "/v1/relay/stats").await;
    assert_eq!(relay["relaying"], true, "{relay}");
    assert!(
        relay["packets_forwarded"].as_u64().is_some_and(|n| n >= 6),
        "three messages and their acknowledgements: {relay}"
    );
    assert_eq!(relay["refused_disabled"], 0);

    // r earns exactly what a signed over to it.
    let deadline = tokio::time::Instant::now() + WAIT;
    let (at_a, at_r) = loop {
        let (at_a, at_r) = (get(&a, "/v1/tokens").await, get(&r, "/v1/tokens").await);
        let spent = account(&at_a, r_id).map(|n| n["tokens_spent"].clone());
        let earned = account(&at_r, a_id).map(|n| n["tokens_earned"].clone());
        if spent.is_some() && spent == earned && spent != Some(json!(0)) {
            break (at_a, at_r);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "r never held a's latest IOU: {at_a} {at_r}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let a_at_r = account(&at_a, r_id).expect("a's account of r");
    let r_at_a = account(&at_r, a_id).expect("r's account of a");
    assert!(
        a_at_r["tokens_spent"].as_u64().is_some_and(|n| n >= 1_000),
        "{a_at_r}"
    );
    assert_eq!(a_at_r["latest_iou_sent"], r_at_a["latest_iou_received"]);
    assert_eq!(
        r_at_a["latest_iou_received"]["payer"],
        a_id.as_str(),
        "{r_at_a}"
    );
    assert_eq!(at_a["spent"], a_at_r["tokens_spent"]);
    // b, the destination, earned nothing from anyone.
    assert_eq!(get(&b, "/v1/tokens").await["earned"], 0);

    // The same through the command line.
    let mut command = Command::new(BINARY);
    command.args(["tokens", "--api", &r.api_host_port()]);
    let (ok, stdout, stderr) = run_to_end(command);
    assert!(ok, "meshcore tokens failed: {stderr}");
    assert!(stdout.contains("balance"), "{stdout}");
    assert!(stdout.contains(&a_id[..16]), "{stdout}");

    // r's statements for everything it carried have reached a (they go every 250 ms).
    eventually("a to hold statements for all it handed r", || async {
        get(&a, "/v1/tokens").await["unconfirmed_bytes"] == 0
    })
    .await;

    // Relaying off at run time: r forwards nothing more and says why.
    let (ok, _, stderr) = cli(&r.api_host_port(), &["set", "relay_enabled", "false"]);
    assert!(ok, "config set failed: {stderr}");
    eventually("r to stop relaying", || async {
        get(&r, "/v1/relay/stats").await["relaying"] == false
    })
    .await;
    let forwarded = get(&r, "/v1/relay/stats").await["packets_forwarded"].clone();
    let owed_before =
        account(&get(&a, "/v1/tokens").await, r_id).expect("account")["payable"].clone();
    let (status, refused) = send(
        http()
            .post(a.url("/v1/messages"))
            .json(&json!({ "destination": b_id, "payload": "not through r" })),
    )
    .await;
    assert_ne!(status, 200, "no other way to b: {refused}");
    let after = get(&r, "/v1/relay/stats").await;
    assert_eq!(after["packets_forwarded"], forwarded, "{after}");
    assert!(
        after["refused_disabled"].as_u64().is_some_and(|n| n >= 1),
        "{after}"
    );
    // What r refused is never owed: a's books hold it as unconfirmed, not as payable.
    let at_a = get(&a, "/v1/tokens").await;
    assert_eq!(
        account(&at_a, r_id).expect("account")["payable"],
        owed_before
    );
    assert!(
        at_a["unconfirmed_bytes"].as_u64().is_some_and(|n| n > 0),
        "{at_a}"
    );

    for node in [a, r, b] {
        node.terminate();
    }
}

/// The bandwidth manager between two real processes: with `app_bandwidth` lowered at run
/// time, an application that floods is held back (`429 throttled`, `Retry-After`, the
/// limit named) while another application's message goes through at once; the refusal is
/// counted under `own_sends` in `GET /v1/relay/stats`; a bad application name is a 400.
/// Rates are set so low (2,000 bytes/s against 60,000-byte messages) that the outcome does
/// not depend on how fast the machine is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_over_its_send_limit_is_throttled_while_others_go() {
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("temp dir"))
        .collect();
    let ids: Vec<String> = dirs.iter().map(|dir| node_id_of(dir.path())).collect();
    let allowed_a = format!("allowed_peers={}", ids[1]);
    let allowed_b = format!("allowed_peers={}", ids[0]);
    let b = NodeProcess::start(
        dirs[1].path(),
        &["--set", &allowed_b, "--set", "min_connections=1"],
    );
    let bootstrap = b.address();
    let a = NodeProcess::start(
        dirs[0].path(),
        &["--set", &allowed_a, "--bootstrap", &bootstrap],
    );
    eventually("a to link to b", || async {
        a.linked_ids().await.contains(&ids[1])
    })
    .await;
    let defaults = get(&a, "/v1/settings").await;
    assert_eq!(defaults["app_bandwidth"], 5 * 1024 * 1024, "{defaults}");
    assert_eq!(defaults["peer_bandwidth"], 5 * 1024 * 1024, "{defaults}");
    let (status, body) = send(
        http()
            .put(a.url("/v1/settings"))
            .json(&json!({ "app_bandwidth": 2000 })),
    )
    .await;
    assert_eq!(status, 200, "{body}");

    let message = |app: &str, text: &str| {
        http()
            .post(a.url("/v1/messages"))
            .json(&json!({ "destination": ids[1], "payload": text, "app": app }))
    };
    let big = "f".repeat(60_000);
    // The first fits the burst (at least one largest frame).
    let (status, delivery) = send(message("flood", &big)).await;
    assert_eq!(status, 200, "{delivery}");
    // The second would wait about 30 s: refused at once, with when to retry.
    let response = message("flood", &big).send().await.expect("request");
    assert_eq!(response.status().as_u16(), 429);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .expect("a Retry-After header in seconds");
    assert!(
        (2..=40).contains(&retry_after),
        "retry after {retry_after} s"
    );
    let body: Value = response.json().await.expect("JSON error");
    assert_eq!(body["error"], "throttled", "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("app_bandwidth")),
        "{body}"
    );
    // Another application is not held back by the flood.
    let (status, delivery) = send(message("chat", "hello")).await;
    assert_eq!(status, 200, "{delivery}");
    assert_eq!(delivery["delivered"], true);

    let stats = get(&a, "/v1/relay/stats").await;
    let own = &stats["own_sends"];
    assert_eq!(own["app_bandwidth"], 2000, "{stats}");
    assert_eq!(own["refused_app"], 1, "{stats}");
    assert_eq!(own["apps_tracked"], 2, "flood and chat: {stats}");

    let (status, body) = send(message("no spaces", "x")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_app")),
        "{body}"
    );

    for node in [a, b] {
        node.terminate();
    }
}
