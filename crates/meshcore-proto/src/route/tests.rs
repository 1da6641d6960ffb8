//! Router scenario tests over a small deterministic simulator, and the loop-freedom
//! property test.

use std::collections::{BTreeMap, VecDeque};
use std::sync::OnceLock;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use proptest::prelude::*;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;

use super::*;
use crate::identity::{NodeId, NodeKeypair};

const T0: Timestamp = Timestamp::from_millis(1_000_000);

/// Keys generated once for the whole test binary (key generation is slow in debug builds).
fn signing_keys() -> &'static [SigningKey] {
    static KEYS: OnceLock<Vec<SigningKey>> = OnceLock::new();
    KEYS.get_or_init(|| {
        (0..12)
            .map(|seed| SigningKey::generate(&mut ChaCha20Rng::seed_from_u64(seed)))
            .collect()
    })
}

fn keypair(index: usize) -> NodeKeypair {
    NodeKeypair::from_signing_key(signing_keys()[index].clone())
}

fn id(index: usize) -> NodeId {
    keypair(index).node_id()
}

fn quality(rtt_ms: u64, loss: f64) -> LinkQuality {
    LinkQuality::new(Duration::from_millis(rtt_ms), loss)
}

fn good() -> LinkQuality {
    quality(10, 0.0)
}

/// Nodes joined by links that deliver whatever a test tells them to, in virtual time.
struct Sim {
    now: Timestamp,
    routers: Vec<Router>,
    ids: Vec<NodeId>,
    index: BTreeMap<NodeId, usize>,
    /// Messages in flight: (from, to, message). Every message passes through the codec.
    queue: VecDeque<(usize, usize, RouteMessage)>,
    /// Every message ever sent, in order.
    sent: Vec<(usize, usize, RouteMessage)>,
    events: Vec<(usize, RouteEvent)>,
}

impl Sim {
    fn new(size: usize, config: impl Fn(usize) -> RouterConfig) -> Self {
        let routers: Vec<Router> = (0..size)
            .map(|i| Router::new(config(i), keypair(i), T0).expect("valid config"))
            .collect();
        let ids: Vec<NodeId> = (0..size).map(id).collect();
        let index = ids.iter().enumerate().map(|(i, id)| (*id, i)).collect();
        Self {
            now: T0,
            routers,
            ids,
            index,
            queue: VecDeque::new(),
            sent: Vec::new(),
            events: Vec::new(),
        }
    }

    fn with_defaults(size: usize) -> Self {
        Self::new(size, |i| RouterConfig::new(i as u64))
    }

    fn link(&mut self, a: usize, b: usize, quality: LinkQuality) {
        let now = self.now;
        let (id_a, id_b) = (self.ids[a], self.ids[b]);
        self.routers[a].link_up(now, id_b, quality).expect("room");
        self.routers[b].link_up(now, id_a, quality).expect("room");
        self.collect();
    }

    fn cut(&mut self, a: usize, b: usize) {
        let now = self.now;
        let (id_a, id_b) = (self.ids[a], self.ids[b]);
        self.routers[a].link_down(now, id_b);
        self.routers[b].link_down(now, id_a);
        self.collect();
    }

    /// Moves every node's output into the network.
    fn collect(&mut self) {
        for (from, router) in self.routers.iter_mut().enumerate() {
            while let Some((to, message)) = router.poll_transmit() {
                let bytes = encode(&message);
                assert!(bytes.len() <= MAX_MESSAGE_LEN);
                let message = decode(&bytes).expect("own messages decode");
                let to = *self.index.get(&to).expect("sent to a simulated node");
                self.sent.push((from, to, message.clone()));
                self.queue.push_back((from, to, message));
            }
            while let Some(event) = router.poll_event() {
                self.events.push((from, event));
            }
        }
    }

    /// Delivers the `k`-th message in flight.
    fn deliver(&mut self, k: usize) {
        if let Some((from, to, message)) = self.queue.remove(k) {
            let (now, from_id) = (self.now, self.ids[from]);
            self.routers[to].handle_message(now, from_id, message);
            self.collect();
        }
    }

    /// Delivers in order until nothing is in flight (at most `limit` messages).
    fn run_limited(&mut self, limit: usize) {
        for _ in 0..limit {
            if self.queue.is_empty() {
                return;
            }
            self.deliver(0);
        }
    }

    fn run(&mut self) {
        self.run_limited(100_000);
        assert!(self.queue.is_empty(), "the network does not settle");
    }

    /// Jumps to the earliest timeout of any node, if it is not after `end`, and runs it.
    fn step_timeout(&mut self, end: Timestamp) -> bool {
        let Some(next) = self.routers.iter().filter_map(Router::poll_timeout).min() else {
            return false;
        };
        if next > end {
            return false;
        }
        self.now = self.now.max(next);
        let now = self.now;
        for router in &mut self.routers {
            if router.poll_timeout().is_some_and(|t| t <= now) {
                router.handle_timeout(now);
            }
        }
        self.collect();
        true
    }

    /// Runs timers and delivers messages (instantly) until `end`.
    fn run_until(&mut self, end: Timestamp) {
        self.run();
        while self.step_timeout(end) {
            self.run();
        }
        self.now = self.now.max(end);
    }

    fn run_for(&mut self, duration: Duration) {
        let end = self.now.saturating_add(duration);
        self.run_until(end);
    }

    /// The node indices along next-hop pointers from `from` to `to` (excluding `from`).
    fn walk(&self, from: usize, to: usize) -> Vec<usize> {
        let mut path = Vec::new();
        let mut current = from;
        while let Some(next) = self.routers[current].next_hop(&self.ids[to]) {
            let next = self.index[&next];
            path.push(next);
            if next == to || path.len() > self.routers.len() {
                break;
            }
            current = next;
        }
        path
    }

    fn ids_of(&self, indices: &[usize]) -> Vec<NodeId> {
        indices.iter().map(|i| self.ids[*i]).collect()
    }

    fn originated_rreq_ttls(&self, node: usize) -> Vec<u8> {
        let own = self.ids[node];
        // In sending order, one entry per request id.
        let mut ttls = Vec::new();
        let mut seen = Vec::new();
        for (from, _, message) in &self.sent {
            if let RouteMessage::Rreq(rreq) = message {
                if *from == node && rreq.originator.node == own && !seen.contains(&rreq.rreq_id) {
                    seen.push(rreq.rreq_id);
                    ttls.push(rreq.ttl);
                }
            }
        }
        ttls
    }

    fn events_of(&self, node: usize) -> Vec<&RouteEvent> {
        self.events
            .iter()
            .filter(|(n, _)| *n == node)
            .map(|(_, event)| event)
            .collect()
    }
}

fn line(size: usize) -> Sim {
    let mut sim = Sim::with_defaults(size);
    for i in 1..size {
        sim.link(i - 1, i, good());
    }
    // Past the first round of periodic hellos: every node knows its two-hop neighbourhood.
    sim.run_for(Duration::from_secs(6));
    sim
}

#[test]
fn discovery_on_a_line_of_five_finds_the_whole_path() {
    let mut sim = line(5);
    let now = sim.now;
    let target = sim.ids[4];
    assert_eq!(
        sim.routers[0].find_route(now, target),
        Ok(RouteLookup::Discovering)
    );
    sim.collect();
    sim.run_for(Duration::from_secs(2));
    let found = sim.events_of(0).into_iter().find_map(|event| match event {
        RouteEvent::RouteFound { destination, route } if *destination == target => Some(route),
        _ => None,
    });
    let route = found.expect("route found").clone();
    assert_eq!(route.path, sim.ids_of(&[1, 2, 3, 4]));
    assert_eq!((route.hop_count, route.metric), (4, 4 * 200));
    assert_eq!(route.next_hop, sim.ids[1]);
    assert_eq!(sim.walk(0, 4), [1, 2, 3, 4]);
    // The destination learned the reverse route from the request.
    assert_eq!(sim.walk(4, 0), [3, 2, 1, 0]);
    let reverse = sim.routers[4].route(&sim.ids[0]).expect("reverse route");
    assert_eq!(reverse.path, sim.ids_of(&[3, 2, 1, 0]));
    assert_eq!(sim.routers[4].counters().rreps_sent, 1);
    assert_eq!(
        sim.routers[0].find_route(sim.now, target),
        Ok(RouteLookup::Known(route))
    );
    assert!(sim.routers.iter().all(|r| r.counters().adverts_forged == 0));
}

/// A line whose node `i` charges `fees[i]` milli-tokens per MB, past its first hellos.
fn priced_line(fees: &[u64]) -> Sim {
    let mut sim = Sim::with_defaults(fees.len());
    for (router, fee) in sim.routers.iter_mut().zip(fees) {
        assert!(router.set_fee(*fee) || *fee == 0);
    }
    for i in 1..fees.len() {
        sim.link(i - 1, i, good());
    }
    sim.run_for(Duration::from_secs(6));
    sim
}

fn price(sim: &Sim, from: usize, to: usize) -> Option<u64> {
    sim.routers[from]
        .route(&sim.ids[to])
        .map(|route| route.price)
}

#[test]
fn prices_add_up_along_a_line_and_a_node_advertising_itself_charges_nothing() {
    // O – R1 – R2 – D with fees f1 and f2 at the relays (the ends' fees never show).
    let (f1, f2) = (100_000, 150_000);
    let mut sim = priced_line(&[7, f1, f2, 9]);
    let (o, r1, r2, d) = (0, 1, 2, 3);
    let now = sim.now;
    sim.routers[o].find_route(now, sim.ids[d]).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.walk(o, d), [r1, r2, d]);
    assert_eq!(price(&sim, o, d), Some(f1 + f2));
    assert_eq!(price(&sim, r1, d), Some(f2));
    assert_eq!(price(&sim, r2, d), Some(0));
    assert_eq!(
        sim.routers[o].advertised_price(&sim.ids[r1], &sim.ids[d]),
        Some(f1 + f2)
    );
    assert_eq!(
        sim.routers[r2].advertised_price(&sim.ids[d], &sim.ids[d]),
        Some(0)
    );
    assert_eq!(
        sim.routers[o].advertised_price(&sim.ids[r2], &sim.ids[d]),
        None,
        "not a neighbour"
    );
    // The reverse routes the request left behind are priced the same way.
    assert_eq!(price(&sim, d, o), Some(f2 + f1));
    assert_eq!(price(&sim, r2, o), Some(f1));
    assert_eq!(price(&sim, r1, o), Some(0));
    // What travelled: requests from O and the reply from D say 0; each relay adds its fee.
    for (from, _, message) in &sim.sent {
        match message {
            RouteMessage::Rreq(rreq) if rreq.originator.node == sim.ids[o] => {
                let expected = [0, f1, f1 + f2][*from];
                assert_eq!(rreq.price, expected, "request from {from}");
            }
            RouteMessage::Rrep(rrep) => {
                let expected = [u64::MAX, f1 + f2, f2, 0][*from];
                assert_eq!(rrep.price, expected, "reply from {from}");
            }
            RouteMessage::Hello(hello) => {
                for link in &hello.links {
                    if let Some(route) = &link.route {
                        assert_eq!(route.price, [7, f1, f2, 9][*from], "hello from {from}");
                    }
                }
            }
            _ => {}
        }
    }
}

#[test]
fn a_fee_change_is_re_advertised_with_the_next_hello() {
    let mut sim = priced_line(&[0, 100_000, 0]);
    assert_eq!(
        price(&sim, 0, 2),
        Some(100_000),
        "two hops, learned from a hello"
    );
    assert_eq!(
        price(&sim, 0, 1),
        Some(0),
        "a neighbour announces itself for free"
    );
    assert!(sim.routers[1].set_fee(250_000));
    assert!(!sim.routers[1].set_fee(250_000), "no change");
    assert_eq!(sim.routers[1].fee(), 250_000);
    assert_eq!(price(&sim, 0, 2), Some(100_000), "nothing is sent at once");
    sim.run_for(sim.routers[1].config().hello_interval);
    assert_eq!(price(&sim, 0, 2), Some(250_000));
    assert_eq!(price(&sim, 2, 0), Some(250_000));
    assert_eq!(
        sim.routers[0].advertised_price(&sim.ids[1], &sim.ids[2]),
        Some(250_000)
    );
}

#[test]
fn price_plays_no_part_in_route_selection() {
    // A diamond 0-1-3, 0-2-3: the way through 1 is faster and far dearer.
    let mut sim = Sim::with_defaults(4);
    sim.routers[1].set_fee(1_000_000_000);
    sim.routers[2].set_fee(1);
    for (a, b, rtt) in [(0, 1, 10), (1, 3, 10), (0, 2, 30), (2, 3, 30)] {
        sim.link(a, b, quality(rtt, 0.0));
    }
    sim.run_for(Duration::from_secs(6));
    assert_eq!(sim.walk(0, 3), [1, 3]);
    assert_eq!(price(&sim, 0, 3), Some(1_000_000_000));
    assert_eq!(
        sim.routers[0].advertised_price(&sim.ids[2], &sim.ids[3]),
        Some(1)
    );
}

#[test]
fn expanding_ring_doubles_the_ttl_up_to_max_hops_then_fails() {
    let mut sim = line(2);
    let absent = id(9);
    let start = sim.now;
    sim.routers[0].find_route(start, absent).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(10));
    // 1, 2, 4, 8, then max_hops (10) and its two retries.
    assert_eq!(sim.originated_rreq_ttls(0), [1, 2, 4, 8, 10, 10, 10]);
    let failed: Vec<_> = sim
        .events_of(0)
        .into_iter()
        .filter(|event| {
            matches!(event, RouteEvent::RouteFailed { destination, reason: DiscoveryFailure::NoRouteWithinMaxHops } if *destination == absent)
        })
        .collect();
    assert_eq!(failed.len(), 1);
    let counters = sim.routers[0].counters();
    assert_eq!(
        (counters.discoveries_started, counters.discoveries_failed),
        (1, 1)
    );
    assert!(!sim.routers[0].is_discovering(&absent));
    // The neighbour forwards nothing: it has no other neighbour.
    assert_eq!(sim.routers[1].counters().rreqs_forwarded, 0);
}

#[test]
fn the_first_ring_that_reaches_the_destination_ends_the_discovery() {
    let mut sim = line(5);
    let now = sim.now;
    sim.routers[0].find_route(now, sim.ids[4]).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(5));
    assert_eq!(sim.originated_rreq_ttls(0), [1, 2, 4]);
}

#[test]
fn duplicate_requests_are_forwarded_once() {
    // A diamond 0-1-3, 0-2-3, with 4 behind 3.
    let mut sim = Sim::with_defaults(5);
    for (a, b) in [(0, 1), (0, 2), (1, 3), (2, 3), (3, 4)] {
        sim.link(a, b, good());
    }
    sim.run();
    let now = sim.now;
    sim.routers[0].find_route(now, sim.ids[4]).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(2));
    let node3 = sim.routers[3].counters();
    // Node 3 hears each flood from both 1 and 2 but forwards the TTL-4 one once.
    assert_eq!(node3.rreqs_forwarded, 1);
    assert!(node3.rreqs_duplicate >= 2, "{node3:?}");
    assert_eq!(sim.routers[4].counters().rreps_sent, 1);
    assert_eq!(sim.walk(0, 4).last(), Some(&4));
}

#[test]
fn remembered_requests_are_bounded() {
    let mut config = RouterConfig::new(1);
    config.max_seen_rreqs = 4;
    config.rreq_rate_limit = 1000;
    let mut router = Router::new(config, keypair(0), T0).expect("valid");
    let neighbour = keypair(1);
    router.link_up(T0, neighbour.node_id(), good()).expect("up");
    let originator = SignedAdvert::sign(&neighbour, 1, T0);
    let rreq = |rreq_id: u32| {
        RouteMessage::Rreq(Rreq {
            rreq_id,
            destination: id(7),
            originator: originator.clone(),
            metric: 0,
            price: 0,
            ttl: 3,
            path: vec![neighbour.node_id()],
        })
    };
    for rreq_id in 0..20 {
        router.handle_message(T0, neighbour.node_id(), rreq(rreq_id));
        assert!(router.seen_rreq_count() <= 4);
    }
    assert_eq!(router.counters().rreqs_duplicate, 0);
    router.handle_message(T0, neighbour.node_id(), rreq(19));
    assert_eq!(router.counters().rreqs_duplicate, 1);
}

#[test]
fn a_broken_link_sends_rerr_to_precursors_and_the_source_rediscovers() {
    let mut sim = line(4);
    let now = sim.now;
    sim.routers[0].find_route(now, sim.ids[3]).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.walk(0, 3), [1, 2, 3]);
    let started = sim.routers[0].counters().discoveries_started;
    sim.cut(2, 3);
    sim.run();
    assert!(sim.routers[2].counters().rerrs_sent >= 1);
    assert!(sim.routers[1].counters().rerrs_received >= 1);
    assert!(sim.routers[1].counters().rerrs_sent >= 1);
    assert!(sim.routers[0].counters().rerrs_received >= 1);
    assert_eq!(sim.routers[0].next_hop(&sim.ids[3]), None);
    let target = sim.ids[3];
    assert!(sim.events_of(0).contains(&&RouteEvent::RouteLost {
        destination: target
    }));
    assert_eq!(
        sim.routers[0].counters().discoveries_started,
        started + 1,
        "a wanted destination is rediscovered"
    );
    assert!(sim.routers[0].is_discovering(&target));
    // Node 2 is still reachable.
    assert_eq!(sim.walk(0, 2), [1, 2]);
}

#[test]
fn a_relay_without_a_route_answers_a_data_packet_with_rerr_and_the_source_rediscovers() {
    let mut sim = line(5);
    let now = sim.now;
    let target = sim.ids[4];
    sim.routers[0].find_route(now, target).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.walk(0, 4), [1, 2, 3, 4]);
    let seqno_at_2 = sim.routers[2].route(&target).expect("a route").seqno;
    let started = sim.routers[0].counters().discoveries_started;
    // Node 3 loses its link to 4 and the route errors it sends are lost: 0, 1 and 2 still
    // send towards it, and it has no route to pass packets on.
    sim.cut(3, 4);
    let before = sim.queue.len();
    sim.queue
        .retain(|(_, _, message)| !matches!(message, RouteMessage::Rerr(_)));
    assert!(sim.queue.len() < before, "node 3 did send a RERR, now lost");
    sim.run();
    assert_eq!(sim.walk(0, 4), [1, 2, 3], "a dead end at 3");
    assert_eq!(sim.routers[3].next_hop(&target), None);

    // A data packet for 4 reaches 3 from 2.
    let (now, from) = (sim.now, sim.ids[2]);
    let sent_before = sim.sent.len();
    sim.routers[3].handle_unroutable(now, from, target.as_bytes());
    sim.collect();
    let answers: Vec<&Rerr> = sim.sent[sent_before..]
        .iter()
        .filter_map(|(from, to, message)| match message {
            RouteMessage::Rerr(rerr) if (*from, *to) == (3, 2) => Some(rerr),
            _ => None,
        })
        .collect();
    assert_eq!(
        answers.len(),
        1,
        "one RERR, to the neighbour the packet came from"
    );
    assert_eq!(answers[0].unreachable.len(), 1);
    assert_eq!(answers[0].unreachable[0].destination, target);
    assert!(
        answers[0].unreachable[0].seqno >= seqno_at_2,
        "it withdraws the route 2 learned from 3"
    );
    assert_eq!(sim.routers[3].counters().packets_unroutable, 1);

    // It travels back along the precursors; the source rediscovers at once.
    sim.run();
    assert_eq!(sim.routers[2].next_hop(&target), None);
    assert_eq!(sim.routers[1].next_hop(&target), None);
    assert_eq!(sim.routers[0].next_hop(&target), None);
    assert!(sim.events_of(0).contains(&&RouteEvent::RouteLost {
        destination: target
    }));
    assert_eq!(
        sim.routers[0].counters().discoveries_started,
        started + 1,
        "a wanted destination is rediscovered"
    );
    assert!(sim.routers[0].is_discovering(&target));
}

#[test]
fn route_errors_for_unroutable_packets_are_rate_limited_and_go_only_to_neighbours() {
    let mut config = RouterConfig::new(1);
    config.rerr_rate_limit = 3;
    let mut router = Router::new(config, keypair(0), T0).expect("valid");
    let (neighbour, other) = (id(1), id(2));
    router.link_up(T0, neighbour, good()).expect("up");
    router.link_up(T0, other, good()).expect("up");
    let rerrs = |router: &mut Router| {
        let mut sent = Vec::new();
        while let Some((to, message)) = router.poll_transmit() {
            if let RouteMessage::Rerr(rerr) = message {
                sent.push((to, rerr.unreachable));
            }
        }
        sent
    };
    rerrs(&mut router);
    // A destination this node knows nothing of: any route through here is withdrawn.
    let unknown = id(5);
    for _ in 0..5 {
        router.handle_unroutable(T0, neighbour, unknown.as_bytes());
    }
    let withdrawn = vec![Unreachable {
        destination: unknown,
        seqno: u64::MAX,
    }];
    assert_eq!(rerrs(&mut router), vec![(neighbour, withdrawn.clone()); 3]);
    let counters = *router.counters();
    assert_eq!(
        (counters.packets_unroutable, counters.rerrs_rate_limited),
        (5, 2)
    );
    // The bucket refills at `rerr_rate_limit` per second.
    let later = T0.saturating_add(Duration::from_millis(400));
    router.handle_unroutable(later, neighbour, unknown.as_bytes());
    assert_eq!(rerrs(&mut router), vec![(neighbour, withdrawn)]);

    // Nothing for a packet from a non-neighbour, for bytes that are not a node id, or for
    // this node itself.
    let later = later.saturating_add(Duration::from_secs(1));
    router.handle_unroutable(later, id(6), unknown.as_bytes());
    let invalid = (0u8..=255)
        .map(|i| [i; crate::identity::NODE_ID_LEN])
        .find(|bytes| NodeId::from_bytes(*bytes).is_err())
        .expect("an invalid point encoding exists");
    router.handle_unroutable(later, neighbour, &invalid);
    router.handle_unroutable(later, neighbour, id(0).as_bytes());
    assert_eq!(rerrs(&mut router), vec![]);

    // Nothing while there is a route (a packet that raced the route's arrival); once it is
    // lost, the newest sequence number known is reported.
    let advert = SignedAdvert::sign(&keypair(1), 77, later);
    router.handle_message(
        later,
        neighbour,
        RouteMessage::Hello(Hello {
            advert,
            links: vec![],
        }),
    );
    assert_eq!(router.next_hop(&neighbour), Some(neighbour));
    rerrs(&mut router);
    router.handle_unroutable(later, other, neighbour.as_bytes());
    assert_eq!(rerrs(&mut router), vec![]);
    router.link_down(later, neighbour);
    rerrs(&mut router);
    router.handle_unroutable(later, other, neighbour.as_bytes());
    assert_eq!(
        rerrs(&mut router),
        vec![(
            other,
            vec![Unreachable {
                destination: neighbour,
                seqno: 77
            }]
        )]
    );
}

/// 0–1–4 (short) and 0–2–3–4 (long), after the first hellos; node 1 relays or not.
fn detour(relay_at_1: bool) -> Sim {
    let mut sim = Sim::new(5, |i| {
        let mut config = RouterConfig::new(i as u64);
        config.relay = i != 1 || relay_at_1;
        config
    });
    for (a, b) in [(0, 1), (1, 4), (0, 2), (2, 3), (3, 4)] {
        sim.link(a, b, good());
    }
    sim.run_for(Duration::from_secs(6));
    sim
}

fn discover(sim: &mut Sim, from: usize, to: usize) {
    let (now, target) = (sim.now, sim.ids[to]);
    sim.routers[from].find_route(now, target).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(2));
}

#[test]
fn a_route_forms_around_a_node_that_does_not_relay() {
    // With node 1 relaying, the short way is taken.
    let mut relaying = detour(true);
    discover(&mut relaying, 0, 4);
    assert_eq!(relaying.walk(0, 4), [1, 4]);

    let mut sim = detour(false);
    assert!(!sim.routers[1].is_relaying());
    // Node 1's hellos announce no routes: 0 learned no two-hop route to 4 through it.
    assert_eq!(sim.routers[0].next_hop(&sim.ids[4]), None);
    discover(&mut sim, 0, 4);
    assert_eq!(sim.walk(0, 4), [2, 3, 4], "around node 1");
    assert_eq!(sim.walk(4, 0), [3, 2, 0], "and back");
    let at_1 = sim.routers[1].counters();
    assert!(at_1.rreqs_not_relayed >= 1, "{at_1:?}");
    assert_eq!(at_1.rreqs_forwarded, 0);
    assert_eq!(at_1.rreps_forwarded, 0);
    // Node 1 itself is still reachable, and still finds routes for itself.
    discover(&mut sim, 0, 1);
    assert_eq!(sim.walk(0, 1), [1]);
    discover(&mut sim, 1, 3);
    assert_eq!(sim.walk(1, 3).last(), Some(&3));
    assert!(!sim.walk(1, 3).is_empty());
}

#[test]
fn a_node_that_stops_relaying_withdraws_its_routes_when_a_packet_comes() {
    let mut sim = detour(true);
    discover(&mut sim, 0, 4);
    assert_eq!(sim.walk(0, 4), [1, 4]);
    sim.routers[1].set_relaying(false);
    // The next data packet from 0 for 4 is refused at 1: a RERR goes back to 0.
    let (now, from, target) = (sim.now, sim.ids[0], sim.ids[4]);
    sim.routers[1].handle_refused(now, from, target.as_bytes());
    sim.collect();
    assert_eq!(sim.routers[1].counters().packets_refused, 1);
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.walk(0, 4), [2, 3, 4], "0 rediscovered around node 1");
    // Hellos from 1 no longer bring the route back.
    sim.run_for(Duration::from_secs(12));
    assert_eq!(sim.walk(0, 4), [2, 3, 4]);
}

#[test]
fn a_next_hop_that_loses_deliveries_is_routed_around_for_a_while() {
    let mut sim = detour(true);
    discover(&mut sim, 0, 4);
    assert_eq!(sim.walk(0, 4), [1, 4], "the short way first");
    // The driver's messages to 4 through 1 go unacknowledged: 0 sets 1 aside for 4.
    let (now, to, via) = (sim.now, sim.ids[4], sim.ids[1]);
    sim.routers[0].delivery_failed(now, to, via);
    sim.collect();
    assert_eq!(sim.routers[0].counters().deliveries_failed, 1);
    assert_eq!(sim.routers[0].next_hop(&to), None, "no other way known yet");
    discover(&mut sim, 0, 4);
    assert_eq!(sim.walk(0, 4), [2, 3, 4], "rediscovered around node 1");
    // Other destinations through 1 are untouched.
    assert_eq!(sim.routers[0].next_hop(&via), Some(via));
    // Hellos and answers through 1 do not bring it back while it is set aside...
    sim.run_for(Duration::from_secs(30));
    assert_eq!(sim.walk(0, 4), [2, 3, 4]);
    // ...and after `avoid_time` (60 s) the short way may be chosen again.
    sim.run_for(Duration::from_secs(40));
    discover(&mut sim, 0, 4);
    assert_eq!(sim.walk(0, 4), [1, 4], "the short way again");
}

#[test]
fn routes_expire_after_route_timeout() {
    let config = |i: usize| {
        let mut config = RouterConfig::new(i as u64);
        config.route_timeout = Duration::from_secs(20);
        config.hello_interval = Duration::from_secs(2);
        config.neighbour_report_timeout = Duration::from_secs(6);
        config.advert_refresh = Duration::from_secs(5);
        config
    };
    let mut sim = Sim::new(4, config);
    for i in 1..4 {
        sim.link(i - 1, i, good());
    }
    sim.run();
    let start = sim.now;
    sim.routers[0]
        .find_route(start, sim.ids[3])
        .expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(1));
    let route = sim.routers[0].route(&sim.ids[3]).expect("found");
    // Twenty seconds from the moment the destination signed its reply.
    assert!(route.expires_at > start.saturating_add(Duration::from_secs(20)));
    assert!(route.expires_at <= sim.now.saturating_add(Duration::from_secs(20)));
    sim.run_until(route.expires_at.saturating_add(Duration::from_millis(1)));
    assert_eq!(sim.routers[0].next_hop(&sim.ids[3]), None);
    assert!(sim.routers[0].counters().routes_expired >= 1);
    // Hellos keep the neighbourhood alive meanwhile.
    assert_eq!(sim.walk(0, 1), [1]);
    assert_eq!(sim.walk(0, 2), [1, 2]);
}

#[test]
fn forged_and_replayed_advertisements_are_dropped_and_counted() {
    let mut router = Router::new(RouterConfig::new(1), keypair(0), T0).expect("valid");
    let relay = keypair(1).node_id();
    let destination = keypair(2);
    let impostor = keypair(3);
    router.link_up(T0, relay, good()).expect("up");
    let now = T0.saturating_add(Duration::from_secs(100));
    let rrep = |advert: SignedAdvert| {
        RouteMessage::Rrep(Rrep {
            originator: id(0),
            rreq_id: 1,
            destination: advert,
            metric: 300,
            price: 0,
            path: vec![destination.node_id(), relay],
        })
    };
    let honest = SignedAdvert::sign(&destination, 10, now);
    // Signed by another key under the destination's name.
    let mut wrong_key = SignedAdvert::sign(&impostor, 11, now);
    wrong_key.node = destination.node_id();
    let mut flipped = SignedAdvert::sign(&destination, 12, now);
    flipped.signature[5] ^= 1;
    router.handle_message(now, relay, rrep(wrong_key));
    router.handle_message(now, relay, rrep(flipped));
    assert_eq!(router.counters().adverts_forged, 2);
    assert_eq!(router.next_hop(&destination.node_id()), None);
    let misbehaved = std::iter::from_fn(|| router.poll_event())
        .filter(|event| matches!(event, RouteEvent::PeerMisbehaved { peer, .. } if *peer == relay))
        .count();
    assert_eq!(misbehaved, 2);

    router.handle_message(now, relay, rrep(honest.clone()));
    assert_eq!(router.next_hop(&destination.node_id()), Some(relay));
    // An older sequence number, and the same one signed earlier: replays.
    let older = SignedAdvert::sign(&destination, 9, now);
    let earlier = SignedAdvert::sign(&destination, 10, T0.saturating_add(Duration::from_secs(50)));
    router.handle_message(now, relay, rrep(older));
    router.handle_message(now, relay, rrep(earlier));
    assert_eq!(router.counters().adverts_replayed, 2);
    // Newer numbers, but signed too long ago or too far ahead.
    let stale = SignedAdvert::sign(
        &destination,
        20,
        Timestamp::from_millis(T0.as_millis() - 200_000),
    );
    let future = SignedAdvert::sign(
        &destination,
        21,
        now.saturating_add(Duration::from_secs(31)),
    );
    router.handle_message(now, relay, rrep(stale));
    router.handle_message(now, relay, rrep(future));
    assert_eq!(router.counters().adverts_stale, 2);
    let route = router.route(&destination.node_id()).expect("kept");
    assert_eq!(route.seqno, 10, "nothing refused changed the route");
    assert_eq!(route.path, [relay, destination.node_id()]);
    // The honest advertisement again, by another path, is not a replay.
    router.handle_message(now, relay, rrep(honest));
    assert_eq!(router.counters().adverts_replayed, 2);
}

#[test]
fn a_hello_about_another_node_is_refused() {
    let mut router = Router::new(RouterConfig::new(1), keypair(0), T0).expect("valid");
    router.link_up(T0, id(1), good()).expect("up");
    let hello = RouteMessage::Hello(Hello {
        advert: SignedAdvert::sign(&keypair(2), 1, T0),
        links: vec![],
    });
    router.handle_message(T0, id(1), hello);
    assert_eq!(router.counters().messages_malformed, 1);
    assert_eq!(router.next_hop(&id(2)), None);
    // And nothing from a stranger is considered.
    let hello = RouteMessage::Hello(Hello {
        advert: SignedAdvert::sign(&keypair(4), 1, T0),
        links: vec![],
    });
    router.handle_message(T0, id(4), hello);
    assert_eq!(router.counters().messages_from_non_neighbours, 1);
    assert_eq!(router.next_hop(&id(4)), None);
    assert_eq!(router.find_route(T0, id(0)), Err(FindRouteError::ToSelf));
}

#[test]
fn dijkstra_prefers_a_three_hop_clean_path_over_a_two_hop_lossy_one() {
    // a=0, b=1, c=2, d=3: a-b, b-c, c-d clean; a-c at 50 % loss.
    let mut sim = Sim::with_defaults(4);
    sim.link(0, 1, good());
    sim.link(1, 2, good());
    sim.link(2, 3, good());
    sim.link(0, 2, quality(10, 0.5));
    sim.run_for(Duration::from_secs(6));
    let best = sim.routers[0].best_path(&sim.ids[3]).expect("in the graph");
    assert_eq!(best.hops, sim.ids_of(&[1, 2, 3]));
    assert_eq!(best.cost, 600);
    let direct = sim.routers[0].best_path(&sim.ids[2]).expect("in the graph");
    assert_eq!(direct.hops, sim.ids_of(&[1, 2]), "400 beats the lossy 500");
}

#[test]
fn local_repair_switches_to_a_feasible_alternate_without_messages() {
    // A square 0-1-3 / 0-2-3.
    let mut sim = Sim::with_defaults(4);
    for (a, b) in [(0, 1), (0, 2), (1, 3), (2, 3)] {
        sim.link(a, b, good());
    }
    sim.run_for(Duration::from_secs(6));
    let target = sim.ids[3];
    let Ok(RouteLookup::Known(route)) = sim.routers[0].find_route(sim.now, target) else {
        panic!("hellos give a two-hop route")
    };
    let used = sim.index[&route.next_hop];
    let other = if used == 1 { 2 } else { 1 };
    let before = *sim.routers[0].counters();
    let sent_before = sim.sent.len();
    sim.cut(0, used);
    sim.run();
    assert_eq!(sim.walk(0, 3), [other, 3]);
    let after = sim.routers[0].counters();
    assert_eq!(after.local_repairs, before.local_repairs + 1);
    assert_eq!(after.rreqs_originated, before.rreqs_originated);
    // The direct route to the lost neighbour itself is withdrawn; the one to 3 is not.
    let withdrawn: Vec<NodeId> = sim.sent[sent_before..]
        .iter()
        .filter_map(|(from, _, message)| match message {
            RouteMessage::Rerr(rerr) if *from == 0 => Some(rerr.unreachable.clone()),
            _ => None,
        })
        .flatten()
        .map(|entry| entry.destination)
        .collect();
    assert!(!withdrawn.contains(&target), "{withdrawn:?}");
    assert!(sim.events_of(0).iter().any(
        |event| matches!(event, RouteEvent::RouteRepaired { destination, route } if *destination == target && route.next_hop == sim.ids[other])
    ));
}

#[test]
fn an_infeasible_alternate_is_not_used_and_a_fresh_discovery_repairs() {
    // 4 - 0 - 1 - 3 with a poor detour 0 - 2 - 3.
    let mut sim = Sim::with_defaults(5);
    sim.link(4, 0, good());
    sim.link(0, 1, good());
    sim.link(1, 3, good());
    sim.link(0, 2, good());
    sim.link(2, 3, quality(10, 0.8));
    sim.run_for(Duration::from_secs(6));
    // 4 asks for 3; its reply passes 0, which advertises its route (metric 400) to 4.
    let now = sim.now;
    sim.routers[4].find_route(now, sim.ids[3]).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.walk(4, 3), [0, 1, 3]);
    // Let the detour's (poorer) advertisement of the new sequence number reach 0.
    sim.run_for(Duration::from_secs(6));
    sim.cut(0, 1);
    sim.run();
    assert_eq!(
        sim.routers[0].next_hop(&sim.ids[3]),
        None,
        "the detour's metric is not below 0's feasibility distance"
    );
    assert!(sim.routers[0].counters().adverts_infeasible >= 1);
    assert!(sim.routers[4].counters().rerrs_received >= 1);
    // A discovery brings a new sequence number, which is feasible.
    let now = sim.now;
    sim.routers[0].find_route(now, sim.ids[3]).expect("started");
    sim.collect();
    sim.run_for(Duration::from_secs(2));
    assert_eq!(sim.walk(0, 3), [2, 3]);
}

// ---- the loop-freedom property ----

#[derive(Debug, Clone)]
enum Op {
    /// Deliver the k-th message in flight (any order: reordering).
    Deliver(usize),
    /// Lose the k-th message in flight.
    Drop(usize),
    /// Deliver up to 64 messages in order.
    Flush,
    /// Node a asks for a route to node b.
    Find(usize, usize),
    /// Cut the link a-b on both sides.
    Cut(usize, usize),
    /// Only a notices that the link a-b is gone.
    CutOneSide(usize, usize),
    /// (Re)establish the link a-b.
    Restore(usize, usize),
    /// New measurement on a-b (rtt ms, loss %), as seen by a.
    Metric(usize, usize, u16, u8),
    /// Let time pass (ms) and run every node's timers.
    Advance(u16),
    /// Jump to the earliest timer of any node.
    NextTimeout,
    /// Node a could not forward a data packet from its neighbour b for node c.
    Unroutable(usize, usize, usize),
    /// Node a's deliveries to node c through its next hop went unacknowledged.
    DeliveryFailed(usize, usize),
}

fn op() -> impl Strategy<Value = Op> {
    let pair = (0usize..8, 0usize..8);
    prop_oneof![
        8 => any::<usize>().prop_map(Op::Deliver),
        2 => any::<usize>().prop_map(Op::Drop),
        2 => Just(Op::Flush),
        3 => pair.clone().prop_map(|(a, b)| Op::Find(a, b)),
        1 => pair.clone().prop_map(|(a, b)| Op::Cut(a, b)),
        1 => pair.clone().prop_map(|(a, b)| Op::CutOneSide(a, b)),
        2 => pair.clone().prop_map(|(a, b)| Op::Restore(a, b)),
        2 => (pair.clone(), 1u16..300, 0u8..90).prop_map(|((a, b), rtt, loss)| Op::Metric(a, b, rtt, loss)),
        2 => (0u16..3000).prop_map(Op::Advance),
        2 => Just(Op::NextTimeout),
        2 => (pair.clone(), 0usize..8).prop_map(|((a, b), c)| Op::Unroutable(a, b, c)),
        1 => pair.prop_map(|(a, c)| Op::DeliveryFailed(a, c)),
    ]
}

fn fast_config(seed: usize) -> RouterConfig {
    let mut config = RouterConfig::new(seed as u64);
    config.max_hops = 7;
    config.route_timeout = Duration::from_secs(12);
    config.hello_interval = Duration::from_secs(1);
    config.neighbour_report_timeout = Duration::from_secs(3);
    config.advert_refresh = Duration::from_secs(4);
    config.max_clock_skew = Duration::from_secs(1);
    config.node_traversal_time = Duration::from_millis(20);
    config.rreq_seen_time = Duration::from_secs(3);
    config.max_seen_rreqs = 16;
    config
}

/// Following next hops from any node towards any destination never visits a node twice,
/// and every next hop is a neighbour of the node that chose it.
fn assert_loop_free(sim: &Sim) -> Result<(), TestCaseError> {
    let size = sim.routers.len();
    for destination in 0..size {
        for start in 0..size {
            if start == destination {
                continue;
            }
            let mut visited = vec![start];
            let mut current = start;
            while let Some(next) = sim.routers[current].next_hop(&sim.ids[destination]) {
                prop_assert!(
                    sim.routers[current].neighbours().any(|(n, _)| n == next),
                    "node {} routes to {} via a non-neighbour",
                    current,
                    destination
                );
                let next = sim.index[&next];
                if next == destination {
                    break;
                }
                prop_assert!(
                    !visited.contains(&next),
                    "routing loop towards {}: {:?} then {}",
                    destination,
                    visited,
                    next
                );
                visited.push(next);
                current = next;
            }
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Random topologies of up to 8 nodes under random interleavings of deliveries,
    /// losses, reorderings, discoveries, link failures and recoveries, metric changes,
    /// timers and route errors for packets without a route: next-hop pointers never form a
    /// loop, after every single step.
    #[test]
    fn next_hops_never_loop(
        size in 3usize..=8,
        edges in proptest::collection::vec(any::<bool>(), 28),
        ops in proptest::collection::vec(op(), 1..100),
    ) {
        let mut sim = Sim::new(size, fast_config);
        let mut pair = 0;
        for a in 0..size {
            for b in (a + 1)..size {
                if edges[pair] {
                    sim.link(a, b, good());
                }
                pair += 1;
            }
        }
        assert_loop_free(&sim)?;
        for op in ops {
            let now = sim.now;
            match op {
                Op::Deliver(k) if !sim.queue.is_empty() => {
                    let k = k % sim.queue.len();
                    sim.deliver(k);
                }
                Op::Drop(k) if !sim.queue.is_empty() => {
                    let k = k % sim.queue.len();
                    sim.queue.remove(k);
                }
                Op::Flush => sim.run_limited(64),
                Op::Find(a, b) => {
                    let (a, b) = (a % size, b % size);
                    let _ = sim.routers[a].find_route(now, sim.ids[b]);
                    sim.collect();
                }
                Op::Cut(a, b) => {
                    let (a, b) = (a % size, b % size);
                    if a != b {
                        sim.cut(a, b);
                    }
                }
                Op::CutOneSide(a, b) => {
                    let (a, b) = (a % size, b % size);
                    let other = sim.ids[b];
                    sim.routers[a].link_down(now, other);
                    sim.collect();
                }
                Op::Restore(a, b) => {
                    let (a, b) = (a % size, b % size);
                    if a != b {
                        sim.link(a, b, good());
                    }
                }
                Op::Metric(a, b, rtt, loss) => {
                    let (a, b) = (a % size, b % size);
                    let other = sim.ids[b];
                    sim.routers[a].link_metric(
                        now,
                        other,
                        Duration::from_millis(u64::from(rtt)),
                        f64::from(loss) / 100.0,
                    );
                    sim.collect();
                }
                Op::Advance(ms) => {
                    sim.now = now.saturating_add(Duration::from_millis(u64::from(ms)));
                    let now = sim.now;
                    for router in &mut sim.routers {
                        router.handle_timeout(now);
                    }
                    sim.collect();
                }
                Op::NextTimeout => {
                    sim.step_timeout(Timestamp::MAX);
                }
                Op::Unroutable(a, b, c) => {
                    let (a, b, c) = (a % size, b % size, c % size);
                    // As the driver reports it: only when a has no next hop for c.
                    if sim.routers[a].next_hop(&sim.ids[c]).is_none() {
                        let (from, destination) = (sim.ids[b], sim.ids[c]);
                        sim.routers[a].handle_unroutable(now, from, destination.as_bytes());
                        sim.collect();
                    }
                }
                Op::DeliveryFailed(a, c) => {
                    let (a, c) = (a % size, c % size);
                    // As the driver reports it: through the next hop it used.
                    if let Some(via) = sim.routers[a].next_hop(&sim.ids[c]) {
                        let destination = sim.ids[c];
                        sim.routers[a].delivery_failed(now, destination, via);
                        sim.collect();
                    }
                }
                Op::Deliver(_) | Op::Drop(_) => {}
            }
            assert_loop_free(&sim)?;
        }
        for router in &sim.routers {
            prop_assert_eq!(router.counters().adverts_forged, 0);
            prop_assert!(router.seen_rreq_count() <= 16);
        }
    }
}
