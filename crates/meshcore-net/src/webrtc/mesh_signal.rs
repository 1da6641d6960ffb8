//! Signaling across the mesh: browsers registered on different nodes exchange offers,
//! answers and ICE candidates through their nodes, and then talk over a direct data channel
//! as if they had met on one node (issue 6).
//!
//! - **Presence.** A node announces each browser registered on its signaling socket as a
//!   provider of the DHT service [`presence_name`]`(browser)` (signed by the node, living
//!   [`PRESENCE_TTL`], announced again every [`PRESENCE_REFRESH`] while the browser stays).
//! - **Forwarding.** A signaling message for a browser that is not registered here goes to
//!   the node that announced it most recently (found in the DHT, remembered for
//!   [`GATEWAY_CACHE_TTL`]) as a routed message on
//!   [`SIGNAL_FLOW`](crate::routing::SIGNAL_FLOW): end-to-end sealed between the two
//!   nodes and acknowledged.
//! - **Delivery.** A node hands signaling that arrives on that flow to the registered
//!   browser it names in `to`, with `via` set to the sending node. Anything else (not a JSON
//!   object, another type, an unknown or malformed `to` or `from`) is dropped and logged.
//!
//! The nodes only carry the text. The browsers authenticate each other end to end: an
//! offer and its answer carry the sender's signature binding its DTLS fingerprint to its
//! id (`web/PROTOCOL.md`), so a node that relays — or claims to host a browser — cannot
//! impersonate one.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use meshcore_proto::NodeId;
use serde_json::{Map, Value};
use tokio::sync::broadcast;

use crate::dht::Dht;
use crate::routing::{ReceivedMessage, Routing};
use crate::webrtc::signal::SignalHub;

/// How long a presence announcement lives in the DHT.
pub const PRESENCE_TTL: Duration = Duration::from_secs(10 * 60);

/// How often a node announces a browser that stays registered.
pub const PRESENCE_REFRESH: Duration = Duration::from_secs(5 * 60);

/// How long a browser's gateway node, once found, is used without asking the DHT again.
pub const GATEWAY_CACHE_TTL: Duration = Duration::from_secs(60);

/// Longest wait for the DHT to name a browser's gateway.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for the gateway to acknowledge a relayed signaling message.
pub const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// Most gateways remembered.
const MAX_CACHED: usize = 4096;

/// The DHT service name under which a browser's gateway node announces it.
pub fn presence_name(browser: &NodeId) -> String {
    format!("meshcore/webrtc-peer/{}", browser.to_hex())
}

/// Signaling across the mesh for one node; see [the module docs](self).
#[derive(Debug)]
pub struct MeshSignal {
    local: NodeId,
    routing: Routing,
    dht: Dht,
    gateways: Mutex<HashMap<NodeId, (NodeId, Instant)>>,
}

impl MeshSignal {
    /// Signaling through `routing`, with presence in `dht`.
    pub fn new(local: NodeId, routing: Routing, dht: Dht) -> Self {
        Self {
            local,
            routing,
            dht,
            gateways: Mutex::new(HashMap::new()),
        }
    }

    /// Announces in the DHT that `browser` is registered on this node (in the background;
    /// a failure is logged).
    pub fn announce(&self, browser: NodeId) {
        let dht = self.dht.clone();
        tokio::spawn(async move {
            match dht
                .provide(&presence_name(&browser), Vec::new(), PRESENCE_TTL)
                .await
            {
                Ok(_) => tracing::debug!(%browser, "announced a browser's presence in the DHT"),
                Err(error) => {
                    tracing::warn!(%browser, %error, "could not announce a browser in the DHT")
                }
            }
        });
    }

    /// Sends the signaling message `text` (JSON, `from` already set) to the node hosting
    /// `to`; returns that node. `Err` says why it could not.
    pub async fn forward(&self, to: NodeId, text: String) -> Result<NodeId, String> {
        let gateway = self.gateway_of(to).await?;
        match self
            .routing
            .send_signal(gateway, Bytes::from(text), SEND_TIMEOUT)
            .await
        {
            Ok(_) => Ok(gateway),
            Err(error) => {
                self.forget(&to);
                Err(format!("its node {gateway} did not take it: {error}"))
            }
        }
    }

    /// The node that hosts `browser`, if one was found in the last [`GATEWAY_CACHE_TTL`].
    pub(super) fn cached_gateway(&self, browser: &NodeId) -> Option<NodeId> {
        self.lock()
            .get(browser)
            .filter(|(_, at)| at.elapsed() < GATEWAY_CACHE_TTL)
            .map(|(gateway, _)| *gateway)
    }

    /// The node that announced `browser` most recently: remembered, or asked of the DHT.
    pub(super) async fn gateway_of(&self, browser: NodeId) -> Result<NodeId, String> {
        if let Some(gateway) = self.cached_gateway(&browser) {
            return Ok(gateway);
        }
        let providers =
            tokio::time::timeout(LOOKUP_TIMEOUT, self.dht.providers(&presence_name(&browser)))
                .await
                .map_err(|_| format!("the DHT named no node for it within {LOOKUP_TIMEOUT:?}"))?
                .map_err(|error| format!("the DHT lookup failed: {error}"))?;
        let gateway = providers
            .iter()
            .filter(|record| record.provider != self.local)
            .max_by_key(|record| record.seq)
            .map(|record| record.provider)
            .ok_or_else(|| "no node has announced it in the DHT".to_owned())?;
        let mut gateways = self.lock();
        if gateways.len() >= MAX_CACHED {
            gateways.retain(|_, (_, at)| at.elapsed() < GATEWAY_CACHE_TTL);
            if gateways.len() >= MAX_CACHED {
                gateways.clear();
            }
        }
        gateways.insert(browser, (gateway, Instant::now()));
        Ok(gateway)
    }

    /// Forgets the node found for `browser`.
    pub(super) fn forget(&self, browser: &NodeId) {
        self.lock().remove(browser);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (NodeId, Instant)>> {
        self.gateways.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Hands signaling that other nodes relay here to the browsers registered in `hub`, until
/// routing stops.
pub async fn deliver_incoming(mut incoming: broadcast::Receiver<ReceivedMessage>, hub: SignalHub) {
    loop {
        match incoming.recv().await {
            Ok(message) => {
                if let Err(reason) = deliver_one(&hub, &message) {
                    tracing::debug!(node = %message.source, %reason, "dropped signaling relayed by another node");
                }
            }
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "relayed signaling arrived faster than it was handed on; some was lost"
                );
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Checks one relayed signaling message and hands it to its browser.
fn deliver_one(hub: &SignalHub, message: &ReceivedMessage) -> Result<(), String> {
    let mut object: Map<String, Value> = serde_json::from_slice(&message.payload)
        .map_err(|error| format!("not a JSON object: {error}"))?;
    let kind = object
        .get("type")
        .and_then(Value::as_str)
        .unwrap_or_default();
    if !matches!(kind, "offer" | "answer" | "candidate") {
        return Err(format!("unexpected type {kind:?}"));
    }
    let id = |field: &str| -> Result<NodeId, String> {
        object
            .get(field)
            .and_then(Value::as_str)
            .ok_or_else(|| format!("no {field:?}"))?
            .parse()
            .map_err(|error| format!("{field}: {error}"))
    };
    let (to, _from) = (id("to")?, id("from")?);
    object.insert("via".to_owned(), Value::String(message.source.to_hex()));
    hub.deliver(to, Value::Object(object).to_string())
        .map_err(|error| error.to_string())
}

#[cfg(test)]
mod tests {
    use meshcore_proto::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;
    use serde_json::json;

    use super::*;

    fn id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    fn relayed(from_node: NodeId, body: Value) -> ReceivedMessage {
        ReceivedMessage {
            source: from_node,
            via: None,
            payload: Bytes::from(body.to_string()),
            hops: 2,
            received_at: 0,
        }
    }

    #[tokio::test]
    async fn relayed_signaling_reaches_the_browser_it_names_with_the_relaying_node() {
        let hub = SignalHub::default();
        let (browser, other_browser, node) = (id(1), id(2), id(3));
        let (_registration, mut inbox) = hub.register(browser).expect("registered");
        let offer = json!({"type": "offer", "to": browser.to_hex(), "from": other_browser.to_hex(), "sdp": "v=0", "signature": "00"});
        deliver_one(&hub, &relayed(node, offer)).expect("delivered");
        let text = inbox.recv().await.expect("queued");
        let got: Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(got["type"], "offer");
        assert_eq!(got["from"], other_browser.to_hex());
        assert_eq!(got["via"], node.to_hex());
        assert_eq!(got["sdp"], "v=0");
    }

    #[tokio::test]
    async fn anything_else_is_dropped_with_a_reason() {
        let hub = SignalHub::default();
        let (browser, node) = (id(1), id(3));
        let (_registration, mut inbox) = hub.register(browser).expect("registered");
        let to = browser.to_hex();
        let cases = [
            (relayed(node, json!("text")), "JSON object"),
            (
                relayed(node, json!({"type": "welcome", "to": to, "from": to})),
                "unexpected type",
            ),
            (
                relayed(node, json!({"type": "offer", "from": to})),
                "\"to\"",
            ),
            (
                relayed(node, json!({"type": "offer", "to": "zz", "from": to})),
                "to:",
            ),
            (
                relayed(node, json!({"type": "answer", "to": to})),
                "\"from\"",
            ),
            (
                relayed(
                    node,
                    json!({"type": "candidate", "to": id(9).to_hex(), "from": to}),
                ),
                "registered",
            ),
        ];
        for (message, reason) in cases {
            let error = deliver_one(&hub, &message).expect_err("dropped");
            assert!(
                error.contains(reason),
                "{error:?} should mention {reason:?}"
            );
        }
        assert!(inbox.try_recv().is_err(), "nothing reached the browser");
    }

    #[test]
    fn presence_names_are_per_browser() {
        assert_ne!(presence_name(&id(1)), presence_name(&id(2)));
        assert!(presence_name(&id(1)).ends_with(&id(1).to_hex()));
    }
}
