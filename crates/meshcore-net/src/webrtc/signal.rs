//! The signaling hub: which browsers are registered on this node's signaling WebSocket, and
//! delivery of signaling messages between them. The API crate owns the sockets and the
//! JSON; the hub only routes opaque text to the right socket.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use meshcore_proto::NodeId;
use tokio::sync::mpsc;

/// Signaling messages queued for one browser before the hub refuses more.
pub const SIGNAL_QUEUE: usize = 256;

/// Most browsers registered at once.
pub const MAX_REGISTERED: usize = 1024;

/// Why a signaling message or registration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    /// No browser with that id is registered here.
    #[error("no browser {0} is registered on this node")]
    UnknownPeer(NodeId),
    /// The browser reads its socket too slowly.
    #[error("the signaling queue of {0} is full")]
    Full(NodeId),
    /// [`MAX_REGISTERED`] browsers are registered.
    #[error("this node has {MAX_REGISTERED} browsers registered already")]
    TooMany,
}

#[derive(Debug)]
struct Entry {
    serial: u64,
    sender: mpsc::Sender<String>,
}

#[derive(Debug, Default)]
struct Registry {
    entries: HashMap<NodeId, Entry>,
    next_serial: u64,
}

/// The hub. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SignalHub {
    registry: Arc<Mutex<Registry>>,
}

/// A browser's registration; dropping it unregisters the browser (unless a newer
/// registration of the same id replaced it) and tells the others.
#[derive(Debug)]
pub struct Registration {
    hub: SignalHub,
    peer: NodeId,
    serial: u64,
}

impl Registration {
    /// The registered browser.
    pub fn peer(&self) -> NodeId {
        self.peer
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        let removed = {
            let Ok(mut registry) = self.hub.registry.lock() else {
                return;
            };
            let current = registry
                .entries
                .get(&self.peer)
                .is_some_and(|entry| entry.serial == self.serial);
            if current {
                registry.entries.remove(&self.peer);
            }
            current
        };
        if removed {
            self.hub
                .announce(self.peer, &presence_message("peer_left", &self.peer));
        }
    }
}

fn presence_message(kind: &str, peer: &NodeId) -> String {
    format!("{{\"type\":\"{kind}\",\"peer_id\":\"{peer}\"}}")
}

impl SignalHub {
    /// Registers `peer`, replacing an earlier registration of the same id. Returns the
    /// registration and the stream of messages for the browser; the others are told
    /// `peer_joined`.
    pub fn register(
        &self,
        peer: NodeId,
    ) -> Result<(Registration, mpsc::Receiver<String>), SignalError> {
        let (sender, receiver) = mpsc::channel(SIGNAL_QUEUE);
        let serial = {
            let mut registry = self.registry.lock().map_err(|_| SignalError::TooMany)?;
            if registry.entries.len() >= MAX_REGISTERED && !registry.entries.contains_key(&peer) {
                return Err(SignalError::TooMany);
            }
            registry.next_serial += 1;
            let serial = registry.next_serial;
            registry.entries.insert(peer, Entry { serial, sender });
            serial
        };
        self.announce(peer, &presence_message("peer_joined", &peer));
        Ok((
            Registration {
                hub: self.clone(),
                peer,
                serial,
            },
            receiver,
        ))
    }

    /// Queues `message` for the browser `to` without waiting.
    pub fn deliver(&self, to: NodeId, message: String) -> Result<(), SignalError> {
        let sender = self
            .registry
            .lock()
            .ok()
            .and_then(|registry| registry.entries.get(&to).map(|e| e.sender.clone()))
            .ok_or(SignalError::UnknownPeer(to))?;
        sender.try_send(message).map_err(|error| match error {
            mpsc::error::TrySendError::Full(_) => SignalError::Full(to),
            mpsc::error::TrySendError::Closed(_) => SignalError::UnknownPeer(to),
        })
    }

    /// The registered browsers, sorted.
    pub fn peers(&self) -> Vec<NodeId> {
        let mut peers: Vec<NodeId> = self
            .registry
            .lock()
            .map(|registry| registry.entries.keys().copied().collect())
            .unwrap_or_default();
        peers.sort();
        peers
    }

    /// Sends `message` to every registered browser but `except`; a full queue loses it.
    fn announce(&self, except: NodeId, message: &str) {
        let senders: Vec<mpsc::Sender<String>> = self
            .registry
            .lock()
            .map(|registry| {
                registry
                    .entries
                    .iter()
                    .filter(|(id, _)| **id != except)
                    .map(|(_, entry)| entry.sender.clone())
                    .collect()
            })
            .unwrap_or_default();
        for sender in senders {
            let _ = sender.try_send(message.to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use meshcore_proto::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;

    fn ids(count: usize) -> Vec<NodeId> {
        let mut rng = rand_chacha::ChaCha20Rng::seed_from_u64(3);
        (0..count)
            .map(|_| NodeKeypair::generate(&mut rng).node_id())
            .collect()
    }

    #[test]
    fn messages_reach_the_registered_browser_and_presence_is_announced() {
        let hub = SignalHub::default();
        let [a, b] = ids(2)[..] else { unreachable!() };
        let (reg_a, mut inbox_a) = hub.register(a).expect("register a");
        let (reg_b, mut inbox_b) = hub.register(b).expect("register b");
        assert_eq!(
            inbox_a.try_recv().expect("joined"),
            presence_message("peer_joined", &b)
        );
        assert_eq!(hub.peers().len(), 2);
        hub.deliver(b, "offer".to_owned()).expect("deliver");
        assert_eq!(inbox_b.try_recv().expect("offer"), "offer");
        drop(reg_b);
        assert_eq!(
            inbox_a.try_recv().expect("left"),
            presence_message("peer_left", &b)
        );
        assert_eq!(
            hub.deliver(b, "x".to_owned()),
            Err(SignalError::UnknownPeer(b))
        );
        drop(reg_a);
        assert!(hub.peers().is_empty());
    }

    #[test]
    fn a_newer_registration_replaces_the_older_one() {
        let hub = SignalHub::default();
        let a = ids(1)[0];
        let (old, _old_inbox) = hub.register(a).expect("first");
        let (_new, mut new_inbox) = hub.register(a).expect("second");
        drop(old);
        assert_eq!(hub.peers(), vec![a], "dropping the old one keeps the new");
        hub.deliver(a, "hi".to_owned()).expect("deliver");
        assert_eq!(new_inbox.try_recv().expect("hi"), "hi");
    }
}
