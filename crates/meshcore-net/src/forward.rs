//! The forwarding plane: relays routed packets of established flows straight from the
//! link task that read them to the next hop's link, without a hand-off to the routing
//! driver (issue 5: latency added per relay).
//!
//! The routing driver stays the control plane. It owns the [`Router`](meshcore_proto::route::Router),
//! the ledger and every decision that needs them, and publishes to the [`Forwarder`] what
//! a link task needs to forward on its own:
//!
//! - the **forwarding table**: per known destination (as raw key bytes, the form a packet
//!   header carries) its validated id and the next hop of its selected route, and the
//!   [`LinkHandle`] of every neighbour — rebuilt whenever routes or links may have changed
//!   ([`Forwarder::publish_routes`]);
//! - the neighbours whose packets the driver must see itself: those the ledger rates
//!   `Throttle` or `CutOff` ([`Forwarder::publish_slow`]).
//!
//! The relay budget ([`RelayLimiter`]) is shared: the driver and the link tasks take it in
//! turn under one mutex, so every relayed packet, on either path, is admitted by the same
//! fair-share state.
//!
//! A link task calls [`Forwarder::try_forward`] for each data frame. It forwards only the
//! common case — a data or acknowledgement packet for another node, with a route, from a
//! neighbour in good standing, of a flow the limiter already admitted, while relaying is
//! on — and otherwise returns the frame untouched for the driver, which handles new flows
//! (and their refusals, notices and route errors), packets for this node, packets without
//! a route or hop limit, and everything that is not a routed packet. So the fast path never
//! refuses a flow; it only forwards, or drops a packet over its share or the budget as the
//! driver would. Each forwarded packet is booked ([`Forwarding`]) for the driver, which
//! hands the bookings to the ledger before its next statement, so a relay is paid for what
//! it forwarded on either path.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use meshcore_proto::identity::NODE_ID_LEN;
use meshcore_proto::relay::{FlowKey, RelayLimiter};
use meshcore_proto::route::PacketHeader;
use meshcore_proto::NodeId;

use crate::clock::now;
use crate::link::{LinkHandle, ReceivedFrame};
use crate::routing::{route_packet, PacketAction, TAG_ACK, TAG_DATA};

/// Most bookings kept for the driver; beyond it the fast path steps aside (the driver then
/// forwards and books itself).
pub const MAX_BOOKINGS: usize = 65_536;

/// A packet the fast path forwarded, for the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Forwarding {
    /// The neighbour it came from.
    pub previous_hop: NodeId,
    /// The neighbour it went to.
    pub next_hop: NodeId,
    /// Its destination.
    pub destination: NodeId,
    /// The whole frame's length.
    pub bytes: u64,
}

/// What the driver publishes for forwarding: destinations' next hops and the links.
#[derive(Debug, Default)]
pub struct ForwardingTable {
    /// Destination key bytes → (its validated id, the next hop of its selected route).
    pub routes: HashMap<[u8; NODE_ID_LEN], (NodeId, NodeId)>,
    /// The link to each neighbour.
    pub links: HashMap<NodeId, LinkHandle>,
}

/// Running totals of the fast path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForwarderCounters {
    /// Packets forwarded by link tasks.
    pub forwarded: u64,
    /// Their bytes.
    pub forwarded_bytes: u64,
    /// Packets the limiter dropped on the fast path (over share, over budget).
    pub dropped_by_limiter: u64,
    /// Packets admitted but refused by the next hop's link queue (full or closed).
    pub dropped_link: u64,
    /// Frames left to the driver.
    pub passed_to_driver: u64,
}

/// The forwarding plane shared by the routing driver and the link tasks; see [the module
/// docs](self).
#[derive(Debug)]
pub struct Forwarder {
    local: NodeId,
    table: RwLock<Arc<ForwardingTable>>,
    slow: RwLock<HashSet<NodeId>>,
    relay: Mutex<RelayLimiter>,
    bookings: Mutex<Vec<Forwarding>>,
    forwarded: AtomicU64,
    forwarded_bytes: AtomicU64,
    dropped_by_limiter: AtomicU64,
    dropped_link: AtomicU64,
    passed_to_driver: AtomicU64,
}

impl Forwarder {
    /// A forwarder for the node `local`, with an empty table and the given relay budget.
    pub fn new(local: NodeId, relay: RelayLimiter) -> Self {
        Self {
            local,
            table: RwLock::new(Arc::new(ForwardingTable::default())),
            slow: RwLock::new(HashSet::new()),
            relay: Mutex::new(relay),
            bookings: Mutex::new(Vec::new()),
            forwarded: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            dropped_by_limiter: AtomicU64::new(0),
            dropped_link: AtomicU64::new(0),
            passed_to_driver: AtomicU64::new(0),
        }
    }

    /// The relay budget, locked. Hold it briefly: link tasks wait for it.
    pub fn relay(&self) -> MutexGuard<'_, RelayLimiter> {
        self.relay.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the published table has a route or a link to `destination`.
    pub fn knows(&self, destination: &NodeId) -> bool {
        let table = self.table.read().unwrap_or_else(PoisonError::into_inner);
        table.routes.contains_key(destination.as_bytes()) || table.links.contains_key(destination)
    }

    /// Replaces the forwarding table.
    pub fn publish_routes(&self, table: ForwardingTable) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    /// Replaces the set of neighbours whose packets only the driver handles, if it changed.
    pub fn publish_slow(&self, slow: HashSet<NodeId>) {
        let current = self.slow.read().unwrap_or_else(PoisonError::into_inner);
        if *current == slow {
            return;
        }
        drop(current);
        *self.slow.write().unwrap_or_else(PoisonError::into_inner) = slow;
    }

    /// Takes the packets forwarded since the last call, oldest first.
    pub fn take_bookings(&self) -> Vec<Forwarding> {
        std::mem::take(&mut *self.bookings.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Running totals.
    pub fn counters(&self) -> ForwarderCounters {
        ForwarderCounters {
            forwarded: self.forwarded.load(Ordering::Relaxed),
            forwarded_bytes: self.forwarded_bytes.load(Ordering::Relaxed),
            dropped_by_limiter: self.dropped_by_limiter.load(Ordering::Relaxed),
            dropped_link: self.dropped_link.load(Ordering::Relaxed),
            passed_to_driver: self.passed_to_driver.load(Ordering::Relaxed),
        }
    }

    /// Forwards `frame` if it is the common case (see [the module docs](self)); `true` if
    /// it was handled here (forwarded, or dropped by the limiter or a full link), `false`
    /// if the driver must handle it.
    pub fn try_forward(&self, frame: &ReceivedFrame) -> bool {
        let handled = self.forward(frame);
        if !handled {
            self.passed_to_driver.fetch_add(1, Ordering::Relaxed);
        }
        handled
    }

    fn forward(&self, frame: &ReceivedFrame) -> bool {
        if !matches!(frame.data.first(), Some(&(TAG_DATA | TAG_ACK))) {
            return false;
        }
        if self
            .slow
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&frame.peer)
        {
            return false;
        }
        let table = Arc::clone(&self.table.read().unwrap_or_else(PoisonError::into_inner));
        let mut destination = None;
        let action = route_packet(&self.local, &frame.data, |raw| {
            let (id, next) = table.routes.get(raw)?;
            destination = Some(*id);
            Some(*next)
        });
        let (PacketAction::Forward { to, frame: out }, Some(destination)) = (action, destination)
        else {
            return false;
        };
        let Some(link) = table.links.get(&to) else {
            return false;
        };
        let Ok(source) = PacketHeader::peek_source(&frame.data[1..]) else {
            return false;
        };
        let key = FlowKey {
            previous_hop: frame.peer,
            source: *source,
        };
        let bytes = out.len() as u64;
        if self
            .bookings
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
            >= MAX_BOOKINGS
        {
            // The driver is far behind on its books: it forwards and books itself.
            return false;
        }
        {
            let at = now();
            let mut relay = self.relay();
            relay.handle_timeout(at);
            if !relay.is_relaying() || !relay.has_flow(&key) {
                return false;
            }
            if relay.admit(at, key, bytes).is_err() {
                self.dropped_by_limiter.fetch_add(1, Ordering::Relaxed);
                return true;
            }
        }
        match link.try_send_data(out) {
            Ok(()) => {
                self.forwarded.fetch_add(1, Ordering::Relaxed);
                self.forwarded_bytes.fetch_add(bytes, Ordering::Relaxed);
                self.bookings
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(Forwarding {
                        previous_hop: frame.peer,
                        next_hop: to,
                        destination,
                        bytes,
                    });
            }
            Err(_) => {
                self.dropped_link.fetch_add(1, Ordering::Relaxed);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use bytes::{Bytes, BytesMut};
    use meshcore_proto::peers::LinkId;
    use meshcore_proto::relay::RelayConfig;
    use meshcore_proto::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;
    use tokio::sync::mpsc;

    use super::*;
    use crate::routing::TAG_ROUTE;

    fn id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    /// A data frame from `source` to `destination` with hop limit 5.
    fn packet(source: NodeId, destination: NodeId) -> Bytes {
        let header = PacketHeader {
            hop_limit: 5,
            flow_id: 1,
            sequence: 7,
            source,
            destination,
        };
        let mut frame = BytesMut::new();
        frame.extend_from_slice(&[TAG_DATA]);
        frame.extend_from_slice(&header.encode(&[0u8; 100]));
        frame.freeze()
    }

    struct Setup {
        forwarder: Forwarder,
        upstream: NodeId,
        source: NodeId,
        destination: NodeId,
        next_out: mpsc::Receiver<Bytes>,
    }

    impl Setup {
        /// The flow (upstream, source), as the driver admits it for its first packet.
        fn flow(&self) -> FlowKey {
            FlowKey {
                previous_hop: self.upstream,
                source: *self.source.as_bytes(),
            }
        }

        fn admit_flow(&self) {
            self.forwarder
                .relay()
                .admit(crate::clock::now(), self.flow(), 1)
                .expect("the driver admits the flow");
        }
    }

    /// local (1) with neighbours upstream (2) and next (3); destination (4) via next.
    fn setup() -> Setup {
        let (local, upstream, next, destination, source) = (id(1), id(2), id(3), id(4), id(5));
        let relay =
            RelayLimiter::new(RelayConfig::new(1 << 20), crate::clock::now()).expect("valid");
        let forwarder = Forwarder::new(local, relay);
        let (next_link, next_out) = LinkHandle::in_memory(LinkId(3), next);
        forwarder.publish_routes(ForwardingTable {
            routes: HashMap::from([(*destination.as_bytes(), (destination, next))]),
            links: HashMap::from([(next, next_link)]),
        });
        Setup {
            forwarder,
            upstream,
            source,
            destination,
            next_out,
        }
    }

    fn frame(peer: NodeId, data: Bytes) -> ReceivedFrame {
        ReceivedFrame {
            link: LinkId(2),
            peer,
            data,
        }
    }

    #[test]
    fn a_new_flow_goes_to_the_driver_and_once_admitted_is_forwarded_here() {
        let mut setup = setup();
        let data = packet(setup.source, setup.destination);
        let received = frame(setup.upstream, data.clone());
        // The limiter does not know the flow: the driver decides (and may refuse it).
        assert!(!setup.forwarder.try_forward(&received));
        setup.admit_flow();
        assert!(setup.forwarder.try_forward(&received));
        let out = setup.next_out.try_recv().expect("on the next hop's link");
        assert_eq!(out.len(), data.len());
        assert_eq!(
            out[1..],
            {
                let mut expected = data[1..].to_vec();
                expected[1] -= 1; // the hop limit, after the version byte
                expected
            }[..]
        );
        let bookings = setup.forwarder.take_bookings();
        assert_eq!(
            bookings,
            vec![Forwarding {
                previous_hop: setup.upstream,
                next_hop: id(3),
                destination: setup.destination,
                bytes: data.len() as u64,
            }]
        );
        assert!(setup.forwarder.take_bookings().is_empty());
        let counters = setup.forwarder.counters();
        assert_eq!((counters.forwarded, counters.passed_to_driver), (1, 1));
    }

    #[test]
    fn everything_but_the_common_case_is_left_to_the_driver() {
        let mut setup = setup();
        setup.admit_flow();
        let data = packet(setup.source, setup.destination);
        // Route control, unknown destinations, packets for this node.
        let mut control = data.to_vec();
        control[0] = TAG_ROUTE;
        assert!(!setup
            .forwarder
            .try_forward(&frame(setup.upstream, Bytes::from(control))));
        let elsewhere = packet(setup.source, id(9));
        assert!(!setup
            .forwarder
            .try_forward(&frame(setup.upstream, elsewhere)));
        let to_me = packet(setup.source, id(1));
        assert!(!setup.forwarder.try_forward(&frame(setup.upstream, to_me)));
        // A neighbour the ledger throttles or cuts off.
        setup
            .forwarder
            .publish_slow(HashSet::from([setup.upstream]));
        assert!(!setup
            .forwarder
            .try_forward(&frame(setup.upstream, data.clone())));
        setup.forwarder.publish_slow(HashSet::new());
        // Relaying turned off: the driver refuses and tells the source.
        setup
            .forwarder
            .relay()
            .set_limits(crate::clock::now(), false, 1 << 20);
        assert!(!setup
            .forwarder
            .try_forward(&frame(setup.upstream, data.clone())));
        assert!(setup.next_out.try_recv().is_err(), "nothing was forwarded");
        assert!(setup.forwarder.take_bookings().is_empty());
        assert_eq!(setup.forwarder.counters().passed_to_driver, 5);
    }

    #[test]
    fn packets_over_the_budget_are_dropped_here_and_not_booked() {
        let mut setup = setup();
        setup
            .forwarder
            .relay()
            .set_limits(crate::clock::now(), true, 1);
        setup.admit_flow();
        let data = packet(setup.source, setup.destination);
        let mut forwarded = 0;
        for _ in 0..2_000 {
            assert!(setup
                .forwarder
                .try_forward(&frame(setup.upstream, data.clone())));
            if setup.next_out.try_recv().is_ok() {
                forwarded += 1;
            }
        }
        let counters = setup.forwarder.counters();
        assert!(counters.dropped_by_limiter > 0);
        assert_eq!(counters.forwarded, forwarded);
        assert_eq!(setup.forwarder.take_bookings().len() as u64, forwarded);
        let limiter = setup.forwarder.relay();
        assert!(
            limiter.counters().dropped_over_share + limiter.counters().dropped_over_cap
                == counters.dropped_by_limiter
        );
    }
}
