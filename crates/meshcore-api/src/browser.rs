//! Browser peers: the WebRTC offer/answer of `POST /v1/connect`, `GET /v1/webrtc`, the
//! signaling WebSocket `GET /v1/signal`, and the files a page needs (`/meshcore-p2p.js`,
//! its type declarations, and the `/demo` page). The protocol is in `web/PROTOCOL.md`.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use meshcore_net::webrtc::mesh_signal::PRESENCE_REFRESH;
use meshcore_net::webrtc::signal::SignalError;
use meshcore_net::webrtc::{OfferError, WebRtc};
use meshcore_node::Node;
use meshcore_proto::browser::signal_hello_text;
use meshcore_proto::{NodeId, SignatureDomain};
use serde::Serialize;
use serde_json::{json, Map, Value};

use crate::error::ApiError;

/// The browser client, served at `/meshcore-p2p.js`.
const CLIENT_JS: &str = include_str!("../../../web/meshcore-p2p.js");

/// Its TypeScript declarations, served at `/meshcore-p2p.d.ts`.
const CLIENT_TYPES: &str = include_str!("../../../web/meshcore-p2p.d.ts");

/// The demo page, served at `/demo`.
const DEMO_PAGE: &str = include_str!("../../../web/demo.html");

/// Largest signaling message a browser may send.
pub(crate) const MAX_SIGNAL_MESSAGE: usize = 64 * 1024;

/// How long a browser has to answer the signaling challenge.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

fn static_file(content_type: &'static str, body: &'static str) -> Response {
    (
        [(CONTENT_TYPE, content_type), (CACHE_CONTROL, "no-cache")],
        body,
    )
        .into_response()
}

/// `GET /meshcore-p2p.js`
pub(crate) async fn client_js() -> Response {
    static_file("text/javascript; charset=utf-8", CLIENT_JS)
}

/// `GET /meshcore-p2p.d.ts`
pub(crate) async fn client_types() -> Response {
    static_file("application/typescript; charset=utf-8", CLIENT_TYPES)
}

/// `GET /demo`
pub(crate) async fn demo_page() -> Response {
    static_file("text/html; charset=utf-8", DEMO_PAGE)
}

fn webrtc_of(node: &Node) -> Result<&WebRtc, ApiError> {
    node.network().webrtc().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "webrtc_disabled",
            "this node does not accept browser peers (it runs with --no-webrtc)",
        )
    })
}

/// What a page needs before it connects.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct WebRtcConfig {
    /// This node's id: the browser checks the answer's signature against it.
    node_id: String,
    /// `RTCPeerConnection` `iceServers`, from the settings `stun_servers` and
    /// `turn_servers`.
    #[schema(value_type = Vec<Object>)]
    ice_servers: Vec<Value>,
    /// The node's WebRTC UDP addresses.
    addrs: Vec<String>,
}

/// The ICE servers and node id a browser client needs.
#[utoipa::path(get, path = "/v1/webrtc", tag = "browsers",
    responses(
        (status = 200, description = "Node id and ICE servers", body = WebRtcConfig),
        (status = 503, description = "WebRTC is off on this node", body = crate::ErrorBody),
    ))]
pub(crate) async fn webrtc_config(
    State(node): State<Node>,
) -> Result<Json<WebRtcConfig>, ApiError> {
    let webrtc = webrtc_of(&node)?;
    let settings = node.settings();
    let mut ice_servers: Vec<Value> = settings
        .stun_servers
        .iter()
        .map(|url| json!({ "urls": url }))
        .collect();
    ice_servers.extend(settings.turn_servers.iter().map(|turn| {
        json!({ "urls": turn.urls, "username": turn.username, "credential": turn.credential })
    }));
    Ok(Json(WebRtcConfig {
        node_id: node.node_id().to_hex(),
        ice_servers,
        addrs: webrtc
            .local_addrs()
            .iter()
            .map(ToString::to_string)
            .collect(),
    }))
}

/// The answer to a browser's offer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(crate) struct OfferAnswer {
    /// False: the data channel opens after the answer.
    connected: bool,
    /// This node's id.
    peer_id: String,
    /// The answer SDP.
    sdp: String,
    /// The node's signature binding the answer's DTLS fingerprint to its id (hex).
    signature: String,
}

/// Answers a browser's WebRTC offer (the WebRTC form of `POST /v1/connect`).
pub(crate) async fn answer_offer(
    node: &Node,
    browser: NodeId,
    sdp: &str,
    signature: Option<&str>,
) -> Result<Json<OfferAnswer>, ApiError> {
    let webrtc = webrtc_of(node)?;
    let signature = signature
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_signature",
                "peer_info.signature is required with peer_info.sdp: the browser's signature binding its DTLS fingerprint to peer_id",
            )
        })
        .and_then(|text| {
            hex::decode(text).map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid_signature",
                    "peer_info.signature: not hex",
                )
            })
        })?;
    let answer = webrtc
        .accept_offer(browser, sdp, &signature)
        .await
        .map_err(|error| {
            let (status, code) = match &error {
                OfferError::InvalidSdp(_) => (StatusCode::BAD_REQUEST, "invalid_sdp"),
                OfferError::InvalidSignature(_) => (StatusCode::BAD_REQUEST, "invalid_signature"),
                OfferError::SelfLink => (StatusCode::BAD_REQUEST, "invalid_peer"),
                OfferError::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "full"),
                OfferError::ShuttingDown => (StatusCode::SERVICE_UNAVAILABLE, "shutting_down"),
            };
            ApiError::new(status, code, error.to_string())
        })?;
    Ok(Json(OfferAnswer {
        connected: false,
        peer_id: node.node_id().to_hex(),
        sdp: answer.sdp,
        signature: answer.signature,
    }))
}

/// The signaling WebSocket: see `web/PROTOCOL.md`. A browser answers the node's challenge
/// with a signed hello, then exchanges offers, answers and ICE candidates with other
/// browsers registered here, and sends its own candidates to the node.
#[utoipa::path(get, path = "/v1/signal", tag = "browsers",
    responses(
        (status = 101, description = "Switching to the WebSocket protocol; JSON texts as in web/PROTOCOL.md"),
        (status = 400, description = "Not a WebSocket upgrade request", body = crate::ErrorBody),
        (status = 503, description = "WebRTC is off on this node", body = crate::ErrorBody),
    ))]
pub(crate) async fn signal(
    State(node): State<Node>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|rejection| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "not_websocket",
            format!("GET /v1/signal is a WebSocket: {}", rejection.body_text()),
        )
    })?;
    let webrtc = webrtc_of(&node)?.clone();
    Ok(upgrade
        .max_message_size(MAX_SIGNAL_MESSAGE)
        .on_upgrade(move |socket| signal_session(socket, node.node_id(), webrtc)))
}

fn error_message(code: &str, message: impl Into<String>) -> Message {
    let text = json!({ "type": "error", "error": code, "message": message.into() }).to_string();
    Message::Text(text.into())
}

/// Waits for the browser's signed hello; `None` when the socket should close.
async fn hello(socket: &mut WebSocket, nonce: &str, node_id: NodeId) -> Option<NodeId> {
    let text = loop {
        match tokio::time::timeout(HELLO_TIMEOUT, socket.recv()).await {
            Ok(Some(Ok(Message::Text(text)))) => break text,
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(_))) => {
                let _ = socket
                    .send(error_message(
                        "bad_message",
                        "expected a hello text message",
                    ))
                    .await;
                return None;
            }
            Err(_) => {
                let _ = socket
                    .send(error_message(
                        "not_registered",
                        format!("no hello within {}s", HELLO_TIMEOUT.as_secs()),
                    ))
                    .await;
                return None;
            }
            _ => return None,
        }
    };
    let parsed: Result<(NodeId, Vec<u8>), String> = (|| {
        let value: Value =
            serde_json::from_str(text.as_str()).map_err(|e| format!("not JSON: {e}"))?;
        if value.get("type").and_then(Value::as_str) != Some("hello") {
            return Err("the first message must be a hello".to_owned());
        }
        let peer: NodeId = value
            .get("peer_id")
            .and_then(Value::as_str)
            .ok_or("hello without peer_id")?
            .parse()
            .map_err(|e| format!("peer_id: {e}"))?;
        let signature = value
            .get("signature")
            .and_then(Value::as_str)
            .ok_or("hello without signature")
            .map(hex::decode)?
            .map_err(|_| "signature: not hex".to_owned())?;
        Ok((peer, signature))
    })();
    let (peer, signature) = match parsed {
        Ok(parsed) => parsed,
        Err(message) => {
            let _ = socket.send(error_message("bad_message", message)).await;
            return None;
        }
    };
    let signed = signal_hello_text(nonce, &node_id);
    if let Err(error) = peer.verify(SignatureDomain::SignalHello, signed.as_bytes(), &signature) {
        let _ = socket
            .send(error_message("bad_signature", format!("hello: {error}")))
            .await;
        return None;
    }
    Some(peer)
}

async fn signal_session(mut socket: WebSocket, node_id: NodeId, webrtc: WebRtc) {
    let nonce = hex::encode(rand::random::<[u8; 32]>());
    let challenge = json!({ "type": "challenge", "nonce": nonce }).to_string();
    if socket.send(Message::Text(challenge.into())).await.is_err() {
        return;
    }
    let Some(peer) = hello(&mut socket, &nonce, node_id).await else {
        return;
    };
    let (registration, mut inbox) = match webrtc.signal().register(peer) {
        Ok(registered) => registered,
        Err(error) => {
            let _ = socket
                .send(error_message("not_registered", error.to_string()))
                .await;
            return;
        }
    };
    let others: Vec<String> = webrtc
        .signal()
        .peers()
        .into_iter()
        .filter(|id| *id != peer)
        .map(|id| id.to_hex())
        .collect();
    let welcome = json!({ "type": "welcome", "node_id": node_id.to_hex(), "peer_id": peer.to_hex(), "peers": others });
    if socket
        .send(Message::Text(welcome.to_string().into()))
        .await
        .is_err()
    {
        return;
    }
    tracing::debug!(browser = %peer, "browser registered for signaling");
    // Browsers on other nodes find this one through the DHT (see mesh_signal).
    let mut presence = tokio::time::interval(PRESENCE_REFRESH);
    loop {
        tokio::select! {
            _ = presence.tick() => webrtc.announce_browser(peer),
            outgoing = inbox.recv() => match outgoing {
                Some(text) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            incoming = socket.recv() => match incoming {
                Some(Ok(Message::Text(text))) => {
                    if let Err(reply) = relay(text.as_str(), peer, node_id, &webrtc).await {
                        if socket.send(reply).await.is_err() {
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    if socket.send(error_message("bad_message", "signaling messages are JSON text")).await.is_err() {
                        break;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
        }
    }
    drop(registration);
    tracing::debug!(browser = %peer, "browser left signaling");
}

/// Handles one signaling message from `from`; `Err` carries the error to send back.
async fn relay(text: &str, from: NodeId, node_id: NodeId, webrtc: &WebRtc) -> Result<(), Message> {
    let mut message: Map<String, Value> = serde_json::from_str(text)
        .map_err(|error| error_message("bad_message", format!("not a JSON object: {error}")))?;
    let kind = message
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !matches!(kind.as_str(), "offer" | "answer" | "candidate") {
        return Err(error_message(
            "bad_message",
            format!("unknown type {kind:?}: expected offer, answer or candidate"),
        ));
    }
    let to: NodeId = message
        .get("to")
        .and_then(Value::as_str)
        .ok_or_else(|| error_message("bad_message", "no \"to\""))?
        .parse()
        .map_err(|error| error_message("bad_message", format!("to: {error}")))?;
    if to == node_id {
        if kind != "candidate" {
            return Err(error_message(
                "bad_message",
                "offers to the node go to POST /v1/connect",
            ));
        }
        let candidate = message
            .get("candidate")
            .and_then(|c| c.get("candidate").and_then(Value::as_str).or(c.as_str()))
            .ok_or_else(|| error_message("bad_message", "candidate without candidate text"))?;
        if candidate.is_empty() {
            // The browser's end-of-candidates marker.
            return Ok(());
        }
        return webrtc
            .add_remote_candidate(from, candidate)
            .await
            .map_err(|error| error_message("bad_message", error));
    }
    message.insert("from".to_owned(), Value::String(from.to_hex()));
    let text = Value::Object(message).to_string();
    match webrtc.signal().deliver(to, text.clone()) {
        Ok(()) => Ok(()),
        Err(SignalError::Full(_)) => Err(signal_error(
            "peer_busy",
            format!("the signaling queue of {to} is full"),
            to,
        )),
        // Not registered here: the node that announced it in the DHT gets it.
        Err(SignalError::UnknownPeer(_) | SignalError::TooMany) => {
            match webrtc.signal_across_mesh(to, text).await {
                Ok(gateway) => {
                    tracing::debug!(%from, %to, %gateway, kind, "signaling relayed across the mesh");
                    Ok(())
                }
                Err(reason) => Err(signal_error(
                    "unknown_peer",
                    format!("no browser {to} is registered on this node, and the mesh did not reach one: {reason}"),
                    to,
                )),
            }
        }
    }
}

/// A signaling error about the browser `to`.
fn signal_error(code: &str, message: String, to: NodeId) -> Message {
    let reply = json!({ "type": "error", "error": code, "message": message, "to": to.to_hex() });
    Message::Text(reply.to_string().into())
}
