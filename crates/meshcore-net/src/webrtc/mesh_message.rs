//! Messages between browsers and any peer across the mesh (issue 6): a node sends to a
//! browser's own id, a browser sends to any node or to a browser on another node, and each
//! side sees the other's id as the sender.
//!
//! The nodes exchange [`Envelope`]s on [`BROWSER_FLOW`](crate::routing::BROWSER_FLOW)
//! (format and trust in [`meshcore_proto::browser_mesh`]):
//!
//! - **Where to.** A message for a peer with a known route goes to that peer. Otherwise
//!   the node asks, at once, both the router (discovery) and the DHT (the browser's
//!   presence, [`super::mesh_signal::presence_name`]); the first to answer wins. A browser's
//!   message for a node that has no route and no presence is sent to it as a node.
//! - **From a browser.** Its MESH_SEND carries its signature; its node checks it (and
//!   refuses a bad one at once), and the receiving node checks it again and accepts each
//!   signed message once ([`ReplayGuard`]). The receiver then shows the browser as the
//!   sender and its node as `via`.
//! - **From a node.** The envelope is unsigned; its `from` must be the node that sealed it.
//! - **Receipts.** The node that hands the message over — to its own inbox, or on a
//!   browser's data channel once the browser acknowledged it — or that cannot, answers with
//!   a receipt; the sender waits for it, so `delivered` means the peer itself has it.
//!
//! Hops count every link the message crossed, the browsers' data channels included.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use meshcore_proto::bandwidth::AppId;
use meshcore_proto::browser_mesh::{
    self, Envelope, EnvelopeMessage, MessageId, Receipt, ReplayGuard, SenderSignature,
};
use meshcore_proto::NodeId;
use tokio::sync::{broadcast, mpsc, oneshot, Semaphore};

use super::mesh_signal::MeshSignal;
use super::Command;
use crate::routing::{Delivery, ReceivedMessage, RouteError, Routing};

/// Longest wait for a browser to acknowledge a message handed to it.
pub const BROWSER_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest wait for a receipt to reach the sender.
const RECEIPT_SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// Incoming messages handled at once; beyond that they are refused with a receipt.
const MAX_CONCURRENT_DELIVERIES: usize = 256;

/// Most messages waiting for their receipts.
const MAX_WAITING: usize = 4096;

/// Where a message goes first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Target {
    /// The peer itself, a node.
    Node(NodeId),
    /// The node hosting the browser.
    Gateway(NodeId),
}

type ReceiptWaiter = (NodeId, oneshot::Sender<Result<u8, String>>);

/// Browser messaging across the mesh for one node; see [the module docs](self).
#[derive(Debug)]
pub struct MeshMessages {
    local: NodeId,
    routing: Routing,
    signal: Arc<MeshSignal>,
    commands: mpsc::Sender<Command>,
    waiting: Mutex<HashMap<MessageId, ReceiptWaiter>>,
    replays: Mutex<ReplayGuard>,
    deliveries: Arc<Semaphore>,
}

impl MeshMessages {
    /// Messaging through `routing`, finding browsers with `signal`, handing messages to this
    /// node's browsers through the WebRTC driver's `commands`. Call [`MeshMessages::run`]
    /// to handle what other nodes send.
    pub(super) fn new(
        local: NodeId,
        routing: Routing,
        signal: Arc<MeshSignal>,
        commands: mpsc::Sender<Command>,
    ) -> Self {
        Self {
            local,
            routing,
            signal,
            commands,
            waiting: Mutex::new(HashMap::new()),
            replays: Mutex::new(ReplayGuard::new()),
            deliveries: Arc::new(Semaphore::new(MAX_CONCURRENT_DELIVERIES)),
        }
    }

    /// Sends `payload` from this node (application `app`) to `to`, a node or a browser on
    /// another node, and waits (at most `timeout`) for it to be delivered.
    pub async fn send_from_node(
        &self,
        app: &AppId,
        to: NodeId,
        payload: Bytes,
        timeout: Duration,
    ) -> Result<Delivery, RouteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        match self.target(to, timeout).await? {
            Target::Node(node) => self.routing.send_as(app, node, payload, timeout).await,
            Target::Gateway(gateway) => {
                let message = EnvelopeMessage {
                    id: rand::random(),
                    to,
                    from: self.local,
                    signed: None,
                    payload: payload.to_vec(),
                };
                self.deliver(app, gateway, message, deadline).await
            }
        }
    }

    /// Sends the message a browser on this node signed (its MESH_SEND) to `to` and waits
    /// (at most `timeout`) for it to be delivered. The hops include the browser's own data
    /// channel.
    pub(super) async fn send_from_browser(
        &self,
        browser: NodeId,
        to: NodeId,
        id: MessageId,
        signed: SenderSignature,
        payload: Vec<u8>,
        timeout: Duration,
    ) -> Result<Delivery, RouteError> {
        let deadline = tokio::time::Instant::now() + timeout;
        browser_mesh::verify_message(&browser, &to, &id, &signed, &payload).map_err(|error| {
            RouteError::Unreachable(format!("the browser's signature does not verify: {error}"))
        })?;
        let app = AppId::browser(&browser);
        let message = EnvelopeMessage {
            id,
            to,
            from: browser,
            signed: Some(signed),
            payload,
        };
        let delivery = if to == self.local {
            let received = self.accept(self.local, 0, &message)?;
            self.routing.deliver_local(received);
            Delivery {
                delivered: true,
                hops: 1,
                rtt_ms: 0.0,
            }
        } else if self.hosts(to).await {
            let started = tokio::time::Instant::now();
            let hops = self.hand_to_browser(&message, 2).await?;
            Delivery {
                delivered: true,
                hops,
                rtt_ms: started.elapsed().as_secs_f64() * 1000.0,
            }
        } else {
            let target = match self.target(to, timeout).await? {
                Target::Node(node) | Target::Gateway(node) => node,
            };
            let mut delivery = self.deliver(&app, target, message, deadline).await?;
            delivery.hops = delivery.hops.saturating_add(1);
            delivery
        };
        Ok(delivery)
    }

    /// Where a message for `to` goes: a known route wins; else the router's discovery and
    /// the DHT's presence lookup race, and the first answer wins. Takes at most `timeout`.
    async fn target(&self, to: NodeId, timeout: Duration) -> Result<Target, RouteError> {
        tokio::time::timeout(timeout, self.race_for_target(to, timeout))
            .await
            .map_err(|_| RouteError::Timeout(timeout))?
    }

    async fn race_for_target(&self, to: NodeId, timeout: Duration) -> Result<Target, RouteError> {
        if to == self.local {
            return Err(RouteError::ToSelf);
        }
        if self.routing.knows_route(&to) {
            return Ok(Target::Node(to));
        }
        if let Some(gateway) = self.signal.cached_gateway(&to) {
            return Ok(Target::Gateway(gateway));
        }
        let discovery = self.routing.find_route(to, timeout);
        let presence = self.signal.gateway_of(to);
        tokio::pin!(discovery, presence);
        let mut presence_failed = false;
        loop {
            tokio::select! {
                route = &mut discovery => {
                    return match route {
                        Ok(_) => Ok(Target::Node(to)),
                        Err(error) if presence_failed => Err(error),
                        Err(error) => match presence.await {
                            Ok(gateway) => Ok(Target::Gateway(gateway)),
                            Err(_) => Err(error),
                        },
                    };
                }
                gateway = &mut presence, if !presence_failed => match gateway {
                    Ok(gateway) => return Ok(Target::Gateway(gateway)),
                    Err(reason) => {
                        tracing::debug!(peer = %to, %reason, "no browser presence; waiting for route discovery");
                        presence_failed = true;
                    }
                },
            }
        }
    }

    /// Sends `message` to the node `target` and waits for its receipt until `deadline`.
    async fn deliver(
        &self,
        app: &AppId,
        target: NodeId,
        message: EnvelopeMessage,
        deadline: tokio::time::Instant,
    ) -> Result<Delivery, RouteError> {
        let started = tokio::time::Instant::now();
        let (id, to) = (message.id, message.to);
        let (reply, receipt) = oneshot::channel();
        {
            let mut waiting = self.lock_waiting();
            waiting.retain(|_, (_, waiter)| !waiter.is_closed());
            if waiting.len() >= MAX_WAITING {
                return Err(RouteError::Busy(format!(
                    "{MAX_WAITING} browser messages are waiting for receipts"
                )));
            }
            waiting.insert(id, (target, reply));
        }
        let result = self
            .await_receipt(app, target, message, deadline, receipt)
            .await;
        self.lock_waiting().remove(&id);
        if result.is_err() && target != to {
            // The browser may have moved: ask the DHT again next time.
            self.signal.forget(&to);
        }
        let hops = result?;
        Ok(Delivery {
            delivered: true,
            hops,
            rtt_ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    async fn await_receipt(
        &self,
        app: &AppId,
        target: NodeId,
        message: EnvelopeMessage,
        deadline: tokio::time::Instant,
        receipt: oneshot::Receiver<Result<u8, String>>,
    ) -> Result<u8, RouteError> {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        let payload_len = message.payload.len();
        let bytes = Bytes::from(Envelope::Message(message).encode());
        if bytes.len() > crate::routing::MAX_PAYLOAD {
            return Err(RouteError::PayloadTooLarge {
                len: payload_len,
                max: crate::routing::MAX_PAYLOAD - (bytes.len() - payload_len),
            });
        }
        let routed = self
            .routing
            .send_browser_envelope(app, target, bytes, remaining)
            .await?;
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, receipt).await {
            Ok(Ok(Ok(after))) => Ok(routed.hops.saturating_add(after)),
            Ok(Ok(Err(reason))) => Err(RouteError::Unreachable(format!(
                "node {target} did not deliver it: {reason}"
            ))),
            Ok(Err(_)) => Err(RouteError::ShuttingDown),
            Err(_) => Err(RouteError::Timeout(remaining)),
        }
    }

    /// Handles the envelopes other nodes send this one, until routing stops.
    pub(super) async fn run(self: Arc<Self>, mut incoming: broadcast::Receiver<ReceivedMessage>) {
        loop {
            match incoming.recv().await {
                Ok(envelope) => self.on_envelope(envelope),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::warn!(
                        missed,
                        "browser message envelopes arrived faster than they were handled; some were lost"
                    );
                }
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    }

    fn on_envelope(self: &Arc<Self>, envelope: ReceivedMessage) {
        let sender = envelope.source;
        match Envelope::decode(&envelope.payload) {
            Err(error) => {
                tracing::debug!(node = %sender, %error, "dropped a malformed browser message envelope");
            }
            Ok(Envelope::Receipt(receipt)) => self.on_receipt(sender, receipt),
            Ok(Envelope::Message(message)) => {
                let Ok(permit) = Arc::clone(&self.deliveries).try_acquire_owned() else {
                    self.send_receipt(
                        sender,
                        Receipt {
                            id: message.id,
                            outcome: Err("the node is busy delivering others".to_owned()),
                        },
                    );
                    return;
                };
                let this = Arc::clone(self);
                tokio::spawn(async move {
                    let id = message.id;
                    let outcome = this.hand_over(sender, envelope.hops, message).await;
                    if let Err(reason) = &outcome {
                        tracing::debug!(node = %sender, %reason, "could not deliver a browser message");
                    }
                    this.send_receipt(sender, Receipt { id, outcome });
                    drop(permit);
                });
            }
        }
    }

    fn on_receipt(&self, sender: NodeId, receipt: Receipt) {
        let mut waiting = self.lock_waiting();
        match waiting.get(&receipt.id) {
            Some((target, _)) if *target == sender => {
                if let Some((_, waiter)) = waiting.remove(&receipt.id) {
                    let _ = waiter.send(receipt.outcome);
                }
            }
            _ => {
                tracing::debug!(node = %sender, "dropped a receipt for no message sent to that node");
            }
        }
    }

    /// Checks a message that `sender` sealed (`hops` links away) and hands it to its peer
    /// here; `Ok` holds the links it crossed after this node.
    async fn hand_over(
        &self,
        sender: NodeId,
        hops: u8,
        message: EnvelopeMessage,
    ) -> Result<u8, String> {
        let received = self
            .accept(sender, hops, &message)
            .map_err(|error| error.to_string())?;
        if message.to == self.local {
            self.routing.deliver_local(received);
            return Ok(0);
        }
        self.hand_to_browser(&message, received.hops.saturating_add(1))
            .await
            .map(|_| 1)
            .map_err(|error| error.to_string())
    }

    /// Checks who `message` (sealed by `sender`, `hops` links away) is from; returns it as
    /// this node would receive it.
    fn accept(
        &self,
        sender: NodeId,
        hops: u8,
        message: &EnvelopeMessage,
    ) -> Result<ReceivedMessage, RouteError> {
        let mut replays = self.replays.lock().unwrap_or_else(PoisonError::into_inner);
        accept_message(
            self.local,
            sender,
            hops,
            message,
            &mut replays,
            unix_millis(),
        )
        .map_err(RouteError::Unreachable)
    }

    /// Whether `browser` has an open session with this node.
    async fn hosts(&self, browser: NodeId) -> bool {
        let (reply, answer) = oneshot::channel();
        if self
            .commands
            .send(Command::Hosts { browser, reply })
            .await
            .is_err()
        {
            return false;
        }
        answer.await.unwrap_or(false)
    }

    /// Hands `message` to the browser it is for on this node, as having crossed `hops`
    /// links; returns those hops once the browser acknowledged it.
    async fn hand_to_browser(&self, message: &EnvelopeMessage, hops: u8) -> Result<u8, RouteError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::SendMesh {
                browser: message.to,
                source: message.from,
                hops,
                payload: message.payload.clone(),
                reply,
            })
            .await
            .map_err(|_| RouteError::ShuttingDown)?;
        let outcome = tokio::time::timeout(BROWSER_ACK_TIMEOUT, answer)
            .await
            .map_err(|_| RouteError::Timeout(BROWSER_ACK_TIMEOUT))?
            .map_err(|_| RouteError::ShuttingDown)?;
        outcome
            .map(|_| hops)
            .map_err(|error| RouteError::Unreachable(error.to_string()))
    }

    /// Sends `receipt` to `node` in the background.
    fn send_receipt(&self, node: NodeId, receipt: Receipt) {
        let routing = self.routing.clone();
        tokio::spawn(async move {
            let app = AppId::default_app();
            let bytes = Bytes::from(Envelope::Receipt(receipt).encode());
            if let Err(error) = routing
                .send_browser_envelope(&app, node, bytes, RECEIPT_SEND_TIMEOUT)
                .await
            {
                tracing::debug!(%node, %error, "a browser message receipt was not delivered");
            }
        });
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<MessageId, ReceiptWaiter>> {
        self.waiting.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks who `message` is from: unsigned, it must be from `sender`, the node that sealed it
/// (`hops` links away); signed, the browser's signature must verify and the message be new
/// to `replays` at `now_ms`. Returns it as node `local` receives it, or why not.
fn accept_message(
    local: NodeId,
    sender: NodeId,
    hops: u8,
    message: &EnvelopeMessage,
    replays: &mut ReplayGuard,
    now_ms: u64,
) -> Result<ReceivedMessage, String> {
    let (via, hops) = match &message.signed {
        None if message.from == sender => (None, hops),
        None => {
            return Err(format!(
                "node {sender} sent an unsigned message as {}",
                message.from
            ))
        }
        Some(signed) => {
            browser_mesh::verify_message(
                &message.from,
                &message.to,
                &message.id,
                signed,
                &message.payload,
            )
            .map_err(|error| format!("the browser's signature: {error}"))?;
            replays
                .check(message.from, message.id, signed.timestamp_ms, now_ms)
                .map_err(|error| format!("refused: {error}"))?;
            // The browser's data channel to its node is one more link.
            ((sender != local).then_some(sender), hops.saturating_add(1))
        }
    };
    Ok(ReceivedMessage {
        source: message.from,
        via,
        payload: Bytes::from(message.payload.clone()),
        hops,
        received_at: now_ms,
    })
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use meshcore_proto::browser_mesh::{sign_message, MESSAGE_ID_LEN};
    use meshcore_proto::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;

    use super::*;

    fn keys(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed))
    }

    const NOW: u64 = 1_800_000_000_000;

    fn from_browser(browser: &NodeKeypair, to: NodeId, payload: &[u8]) -> EnvelopeMessage {
        let id = [3; MESSAGE_ID_LEN];
        EnvelopeMessage {
            id,
            to,
            from: browser.node_id(),
            signed: Some(sign_message(browser, &to, &id, NOW - 10, payload)),
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn a_browsers_signed_message_shows_the_browser_as_source_and_its_node_as_via_once() {
        let (browser, gateway, local) = (keys(1), keys(2).node_id(), keys(3).node_id());
        let message = from_browser(&browser, local, b"hello");
        let mut replays = ReplayGuard::new();
        let received =
            accept_message(local, gateway, 2, &message, &mut replays, NOW).expect("accepted");
        assert_eq!(received.source, browser.node_id());
        assert_eq!(received.via, Some(gateway));
        assert_eq!(received.hops, 3, "the browser's data channel counts");
        assert_eq!(&received.payload[..], b"hello");
        let again = accept_message(local, gateway, 2, &message, &mut replays, NOW)
            .expect_err("a replay is refused");
        assert!(again.contains("arrived before"), "{again}");
    }

    #[test]
    fn a_node_cannot_put_words_in_a_browsers_or_another_nodes_mouth() {
        let (browser, gateway, local) = (keys(1), keys(2).node_id(), keys(3).node_id());
        let mut replays = ReplayGuard::new();
        let mut altered = from_browser(&browser, local, b"pay 1");
        altered.payload = b"pay 9".to_vec();
        let error =
            accept_message(local, gateway, 1, &altered, &mut replays, NOW).expect_err("altered");
        assert!(error.contains("signature"), "{error}");
        let mut redirected = from_browser(&browser, local, b"hi");
        redirected.to = keys(4).node_id();
        assert!(accept_message(local, gateway, 1, &redirected, &mut replays, NOW).is_err());
        let impersonating = EnvelopeMessage {
            signed: None,
            ..from_browser(&browser, local, b"hi")
        };
        let error = accept_message(local, gateway, 1, &impersonating, &mut replays, NOW)
            .expect_err("unsigned, not from the sealing node");
        assert!(error.contains("unsigned"), "{error}");
        let stale = from_browser(&browser, local, b"hi");
        let error = accept_message(
            local,
            gateway,
            1,
            &stale,
            &mut replays,
            NOW + browser_mesh::MAX_CLOCK_SKEW_MS + 1,
        )
        .expect_err("too old");
        assert!(error.contains("older"), "{error}");
    }

    #[test]
    fn a_nodes_own_unsigned_message_is_from_that_node_with_no_via() {
        let (node, local) = (keys(5).node_id(), keys(3).node_id());
        let message = EnvelopeMessage {
            id: [1; MESSAGE_ID_LEN],
            to: local,
            from: node,
            signed: None,
            payload: b"x".to_vec(),
        };
        let received = accept_message(local, node, 2, &message, &mut ReplayGuard::new(), NOW)
            .expect("accepted");
        assert_eq!(
            (received.source, received.via, received.hops),
            (node, None, 2)
        );
    }
}
