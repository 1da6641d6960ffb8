//! The browser-facing API without a browser: offers that must be refused, the signaling
//! WebSocket's registration and relaying, and the cleanup of a session that never opens.
//! One real node on loopback; the offers come from str0m playing a browser.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use meshcore_proto::browser::{binding_text, signal_hello_text, DtlsFingerprint};
use meshcore_proto::{NodeId, NodeKeypair, SignatureDomain};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn keys() -> NodeKeypair {
    NodeKeypair::generate(&mut rand::rngs::OsRng)
}

/// A data-channel offer as a browser would make it, and its signed binding.
fn offer(keys: &NodeKeypair) -> (String, String) {
    let mut rtc = str0m::Rtc::new(Instant::now());
    let mut api = rtc.sdp_api();
    api.add_channel("meshcore".to_owned());
    let (offer, _pending) = api.apply().expect("an offer");
    let sdp = offer.to_sdp_string();
    let fingerprint = DtlsFingerprint::from_sdp(&sdp).expect("fingerprint");
    let signature = keys.sign(
        SignatureDomain::DtlsFingerprint,
        binding_text(&keys.node_id(), &fingerprint).as_bytes(),
    );
    (sdp, hex::encode(signature.to_bytes()))
}

async fn connect(node: &NodeProcess, body: Value) -> (u16, Value) {
    send(http().post(node.url("/v1/connect")).json(&body)).await
}

async fn next_json(socket: &mut Socket) -> Value {
    loop {
        let message = tokio::time::timeout(WAIT, socket.next())
            .await
            .expect("a signaling message in time")
            .expect("socket open")
            .expect("no socket error");
        if let Message::Text(text) = message {
            return serde_json::from_str(text.as_str()).expect("JSON");
        }
    }
}

async fn signal_socket(node: &NodeProcess) -> Socket {
    let url = format!("ws://{}/v1/signal", node.api_host_port());
    let (socket, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connected in time")
        .expect("WebSocket upgrade");
    socket
}

/// Opens a signaling socket and registers `keys` on it; returns the socket and welcome.
async fn register(node: &NodeProcess, keys: &NodeKeypair) -> (Socket, Value) {
    let mut socket = signal_socket(node).await;
    let challenge = next_json(&mut socket).await;
    assert_eq!(challenge["type"], "challenge", "{challenge}");
    let nonce = challenge["nonce"].as_str().expect("nonce");
    let node_id: NodeId = node.node_id.parse().expect("node id");
    let signature = keys.sign(
        SignatureDomain::SignalHello,
        signal_hello_text(nonce, &node_id).as_bytes(),
    );
    let hello = json!({"type": "hello", "peer_id": keys.node_id().to_hex(), "signature": hex::encode(signature.to_bytes())});
    socket
        .send(Message::Text(hello.to_string().into()))
        .await
        .expect("send hello");
    let welcome = next_json(&mut socket).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (socket, welcome)
}

async fn webrtc_sessions(node: &NodeProcess) -> u64 {
    let (status, stats) = send(http().get(node.url("/v1/stats"))).await;
    assert_eq!(status, 200, "{stats}");
    stats["webrtc"]["sessions"]
        .as_u64()
        .expect("webrtc.sessions")
}

#[tokio::test]
async fn bad_offers_are_refused_with_a_reason_and_an_unopened_session_is_dropped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let browser = keys();
    let id = browser.node_id().to_hex();
    let (sdp, signature) = offer(&browser);

    let (status, body) = connect(
        &node,
        json!({"peer_id": id, "peer_info": {"sdp": "v=0\r\nnot an offer", "signature": signature}}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_sdp")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("m=application"),
        "{body}"
    );

    let without_fingerprint: String = sdp
        .lines()
        .filter(|line| !line.starts_with("a=fingerprint"))
        .map(|line| format!("{line}\r\n"))
        .collect();
    let (status, body) = connect(
        &node,
        json!({"peer_id": id, "peer_info": {"sdp": without_fingerprint, "signature": signature}}),
    )
    .await;
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid_sdp")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .unwrap_or_default()
            .contains("fingerprint"),
        "{body}"
    );

    // Signed by someone else than peer_id, or not signed at all.
    let (_, other_signature) = offer(&keys());
    for peer_info in [
        json!({"sdp": sdp, "signature": other_signature}),
        json!({"sdp": sdp}),
        json!({"sdp": sdp, "signature": "zz"}),
    ] {
        let (status, body) = connect(&node, json!({"peer_id": id, "peer_info": peer_info})).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some("invalid_signature")),
            "{body}"
        );
    }
    assert_eq!(webrtc_sessions(&node).await, 0);

    // A good offer is answered, signed by the node for its own fingerprint.
    let (status, answer) = connect(
        &node,
        json!({"peer_id": id, "peer_info": {"sdp": sdp, "signature": signature}}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["peer_id"], node.node_id.as_str());
    let node_id: NodeId = node.node_id.parse().expect("node id");
    let answer_sdp = answer["sdp"].as_str().expect("sdp");
    let fingerprint = DtlsFingerprint::from_sdp(answer_sdp).expect("answer fingerprint");
    let node_signature =
        hex::decode(answer["signature"].as_str().expect("signature")).expect("hex");
    meshcore_proto::browser::verify_binding(&node_id, &fingerprint, &node_signature)
        .expect("the node's binding verifies");
    assert!(
        answer_sdp.contains("typ host"),
        "the answer names the node's candidate: {answer_sdp}"
    );
    assert_eq!(webrtc_sessions(&node).await, 1);

    // Nobody completes ICE: the session is dropped after OPEN_TIMEOUT (30 s).
    let deadline = Instant::now() + Duration::from_secs(90);
    while webrtc_sessions(&node).await != 0 {
        assert!(
            Instant::now() < deadline,
            "the unopened session was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let stderr = node.terminate();
    assert!(
        stderr.contains("the data channel did not open within 30s"),
        "{stderr}"
    );
}

#[tokio::test]
async fn the_signaling_socket_registers_browsers_and_relays_between_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let node = NodeProcess::start(dir.path(), &[]);
    let (a, b) = (keys(), keys());

    // A hello signed for another challenge is refused.
    let mut intruder = signal_socket(&node).await;
    let _challenge = next_json(&mut intruder).await;
    let forged = a.sign(SignatureDomain::SignalHello, b"another nonce");
    let hello = json!({"type": "hello", "peer_id": a.node_id().to_hex(), "signature": hex::encode(forged.to_bytes())});
    intruder
        .send(Message::Text(hello.to_string().into()))
        .await
        .expect("send");
    let refused = next_json(&mut intruder).await;
    assert_eq!(refused["error"], "bad_signature", "{refused}");

    let (mut socket_a, welcome_a) = register(&node, &a).await;
    assert_eq!(welcome_a["node_id"], node.node_id.as_str());
    assert_eq!(welcome_a["peers"], json!([]));
    let (mut socket_b, welcome_b) = register(&node, &b).await;
    assert_eq!(welcome_b["peers"], json!([a.node_id().to_hex()]));
    let joined = next_json(&mut socket_a).await;
    assert_eq!(
        joined,
        json!({"type": "peer_joined", "peer_id": b.node_id().to_hex()})
    );

    // An offer from B reaches A, marked as from B.
    let offer =
        json!({"type": "offer", "to": a.node_id().to_hex(), "sdp": "v=0", "signature": "00"});
    socket_b
        .send(Message::Text(offer.to_string().into()))
        .await
        .expect("send offer");
    let relayed = next_json(&mut socket_a).await;
    assert_eq!(relayed["type"], "offer");
    assert_eq!(relayed["from"], b.node_id().to_hex());
    assert_eq!(relayed["sdp"], "v=0");

    // Unknown recipients, unknown types and garbage get errors; the socket stays usable.
    let stranger = keys().node_id().to_hex();
    for (message, code) in [
        (
            json!({"type": "answer", "to": stranger, "sdp": "v=0"}).to_string(),
            "unknown_peer",
        ),
        (
            json!({"type": "subscribe", "to": stranger}).to_string(),
            "bad_message",
        ),
        ("{not json".to_owned(), "bad_message"),
        (
            json!({"type": "candidate", "to": node.node_id, "candidate": {"candidate": "garbage"}})
                .to_string(),
            "bad_message",
        ),
    ] {
        socket_b
            .send(Message::Text(message.into()))
            .await
            .expect("send");
        let error = next_json(&mut socket_b).await;
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["error"], code, "{error}");
    }

    drop(socket_b);
    let left = next_json(&mut socket_a).await;
    assert_eq!(
        left,
        json!({"type": "peer_left", "peer_id": b.node_id().to_hex()})
    );
    node.terminate();
}
