//! The iterative Kademlia lookup as a pure state machine, after rust-libp2p's
//! `ClosestPeersIter`.
//!
//! A [`Lookup`] knows the peers it has heard of, sorted by distance to the target, and the
//! state of each. The driver (the [`DhtNode`](crate::dht::DhtNode)) asks [`Lookup::next_step`]
//! whom to query, sends the request, and reports back with [`Lookup::on_success`] (with the
//! closer peers the answer named) or [`Lookup::on_failure`] (the request timed out: the
//! node owns the per-request deadlines). The lookup owns no clock and sends nothing.
//!
//! Rules:
//! - At most `parallelism` (α) requests are in flight while the lookup makes progress.
//! - After α answers in a row that bring no peer closer than the closest known, the
//!   lookup is *stalled* and may have up to `num_results` (k) requests in flight: it queries
//!   all of the k closest it has not yet queried (the paper's final round).
//! - It finishes when the `num_results` closest peers that did not fail have all answered
//!   (a closer peer still in flight holds it open), or when nobody is left to query and
//!   nothing is in flight. Peers beyond the `num_results` closest are never queried.
//! - It remembers at most `max_peers` peers, forgetting the farthest ones that are not in
//!   flight.
//!
//! **Hops.** A peer taken from the local routing table is at hop 1; a peer first named in
//! an answer from a hop-`h` peer is at hop `h + 1`. So the hop of a peer is the number of
//! sequential request rounds needed to reach it, the lookup path length of the Kademlia
//! literature. A target that was in the initial set is found at hop 0.

use crate::dht::key::{Distance, Key};
use crate::identity::NodeId;

/// Tunables of one lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LookupConfig {
    /// Requests in flight while making progress (α).
    pub parallelism: usize,
    /// Peers that must answer for the lookup to finish (k).
    pub num_results: usize,
    /// Most peers remembered.
    pub max_peers: usize,
}

/// What the driver should do next for a lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupStep {
    /// Send a request to this peer.
    Query(NodeId),
    /// Nothing to send until an answer or a failure arrives.
    Waiting,
    /// The lookup is over.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PeerState {
    NotContacted,
    Waiting,
    Succeeded,
    Failed,
}

#[derive(Debug, Clone)]
struct LookupPeer {
    node: NodeId,
    distance: Distance,
    hop: u32,
    state: PeerState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    Iterating { answers_without_progress: usize },
    Stalled,
    Finished,
}

/// One iterative lookup for a target key.
#[derive(Debug, Clone)]
pub struct Lookup {
    target: Key,
    config: LookupConfig,
    /// Closest first; distances are unique, as XOR with one target is a bijection.
    peers: Vec<LookupPeer>,
    progress: Progress,
    num_waiting: usize,
    target_found_at_hop: Option<u32>,
}

impl Lookup {
    /// A lookup for `target` starting from `initial` peers (usually the routing table's k
    /// closest), each given with its key.
    pub fn new(
        target: Key,
        config: LookupConfig,
        initial: impl IntoIterator<Item = (NodeId, Key)>,
    ) -> Self {
        let mut lookup = Self {
            target,
            config,
            peers: Vec::new(),
            progress: Progress::Iterating {
                answers_without_progress: 0,
            },
            num_waiting: 0,
            target_found_at_hop: None,
        };
        for (node, key) in initial {
            if key == target {
                lookup.target_found_at_hop = Some(0);
            }
            lookup.insert(node, &key, 1);
        }
        lookup.trim();
        lookup
    }

    /// The key looked up.
    pub fn target(&self) -> &Key {
        &self.target
    }

    /// The next thing to do. Call until it stops returning [`LookupStep::Query`].
    pub fn next_step(&mut self) -> LookupStep {
        if self.progress == Progress::Finished {
            return LookupStep::Finished;
        }
        let capacity = match self.progress {
            Progress::Stalled => self.config.num_results,
            _ => self.config.parallelism,
        };
        // Walk the `num_results` closest peers that have not failed.
        let mut considered = 0;
        let mut all_answered = true;
        for peer in &mut self.peers {
            if considered >= self.config.num_results {
                break;
            }
            match peer.state {
                PeerState::Succeeded => considered += 1,
                PeerState::Waiting => {
                    considered += 1;
                    all_answered = false;
                }
                PeerState::NotContacted => {
                    if self.num_waiting >= capacity {
                        return LookupStep::Waiting;
                    }
                    peer.state = PeerState::Waiting;
                    self.num_waiting += 1;
                    return LookupStep::Query(peer.node);
                }
                PeerState::Failed => {}
            }
        }
        if all_answered {
            self.progress = Progress::Finished;
            LookupStep::Finished
        } else {
            LookupStep::Waiting
        }
    }

    /// `peer` (whose key is `peer_key`) answered, naming `closer` peers. Answers from peers
    /// not in flight are ignored.
    pub fn on_success(&mut self, peer_key: &Key, closer: impl IntoIterator<Item = (NodeId, Key)>) {
        let Some(index) = self.waiting_index(peer_key) else {
            return;
        };
        self.peers[index].state = PeerState::Succeeded;
        self.num_waiting -= 1;
        let next_hop = self.peers[index].hop + 1;
        let closest_before = self.peers.first().map(|peer| peer.distance);
        for (node, key) in closer {
            if key == self.target {
                let found = self.target_found_at_hop.get_or_insert(next_hop - 1);
                *found = (*found).min(next_hop - 1);
            }
            self.insert(node, &key, next_hop);
        }
        self.trim();
        let progress = self.peers.first().map(|peer| peer.distance) < closest_before;
        self.progress = match self.progress {
            Progress::Finished => Progress::Finished,
            _ if progress => Progress::Iterating {
                answers_without_progress: 0,
            },
            Progress::Iterating {
                answers_without_progress,
            } if answers_without_progress + 1 < self.config.parallelism => Progress::Iterating {
                answers_without_progress: answers_without_progress + 1,
            },
            Progress::Iterating { .. } | Progress::Stalled => Progress::Stalled,
        };
    }

    /// The request to the peer with key `peer_key` failed or timed out.
    pub fn on_failure(&mut self, peer_key: &Key) {
        if let Some(index) = self.waiting_index(peer_key) {
            self.peers[index].state = PeerState::Failed;
            self.num_waiting -= 1;
        }
    }

    /// Ends the lookup now (the value was found, or the query timed out).
    pub fn finish(&mut self) {
        self.progress = Progress::Finished;
    }

    /// Whether the lookup is over.
    pub fn is_finished(&self) -> bool {
        self.progress == Progress::Finished
    }

    /// Up to `count` peers that answered, closest first: the lookup's result.
    pub fn closest_answered(&self, count: usize) -> impl Iterator<Item = &NodeId> {
        self.peers
            .iter()
            .filter(|peer| peer.state == PeerState::Succeeded)
            .take(count)
            .map(|peer| &peer.node)
    }

    /// The hop at which a peer with exactly the target key was first named, if any.
    pub fn target_found_at_hop(&self) -> Option<u32> {
        self.target_found_at_hop
    }

    /// The hop of the peer with key `peer_key`, if the lookup knows it.
    pub fn hop_of(&self, peer_key: &Key) -> Option<u32> {
        self.index_of(&peer_key.distance(&self.target))
            .ok()
            .map(|index| self.peers[index].hop)
    }

    /// The highest hop among the `count` closest peers that answered (0 if none did).
    pub fn rounds(&self, count: usize) -> u32 {
        self.peers
            .iter()
            .filter(|peer| peer.state == PeerState::Succeeded)
            .take(count)
            .map(|peer| peer.hop)
            .max()
            .unwrap_or(0)
    }

    /// Number of requests in flight.
    pub fn num_waiting(&self) -> usize {
        self.num_waiting
    }

    fn index_of(&self, distance: &Distance) -> Result<usize, usize> {
        self.peers
            .binary_search_by(|peer| peer.distance.cmp(distance))
    }

    fn waiting_index(&self, peer_key: &Key) -> Option<usize> {
        let index = self.index_of(&peer_key.distance(&self.target)).ok()?;
        (self.peers[index].state == PeerState::Waiting).then_some(index)
    }

    fn insert(&mut self, node: NodeId, key: &Key, hop: u32) {
        let distance = key.distance(&self.target);
        match self.index_of(&distance) {
            Ok(index) => {
                let peer = &mut self.peers[index];
                if peer.state == PeerState::NotContacted {
                    peer.hop = peer.hop.min(hop);
                }
            }
            Err(index) => self.peers.insert(
                index,
                LookupPeer {
                    node,
                    distance,
                    hop,
                    state: PeerState::NotContacted,
                },
            ),
        }
    }

    /// Forgets the farthest peers beyond `max_peers`, keeping those in flight.
    fn trim(&mut self) {
        let mut index = self.peers.len();
        while self.peers.len() > self.config.max_peers && index > 0 {
            index -= 1;
            if self.peers[index].state != PeerState::Waiting {
                self.peers.remove(index);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::collections::BTreeMap;

    fn peer(seed: u64) -> (NodeId, Key) {
        let id = NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id();
        (id, Key::for_node(&id))
    }

    const CONFIG: LookupConfig = LookupConfig {
        parallelism: 3,
        num_results: 4,
        max_peers: 64,
    };

    #[test]
    fn at_most_alpha_requests_are_in_flight_while_progressing() {
        let peers: Vec<_> = (0..10).map(peer).collect();
        let mut lookup = Lookup::new(Key::for_value(b"t"), CONFIG, peers.iter().copied());
        let mut queried = Vec::new();
        while let LookupStep::Query(node) = lookup.next_step() {
            queried.push(node);
        }
        assert_eq!(queried.len(), 3);
        assert_eq!(lookup.num_waiting(), 3);
    }

    #[test]
    fn an_empty_lookup_finishes_at_once() {
        let mut lookup = Lookup::new(Key::for_value(b"t"), CONFIG, std::iter::empty());
        assert_eq!(lookup.next_step(), LookupStep::Finished);
    }

    #[test]
    fn it_finishes_when_the_closest_have_answered_and_failures_are_skipped() {
        let peers: Vec<_> = (0..6).map(peer).collect();
        let keys: BTreeMap<NodeId, Key> = peers.iter().copied().collect();
        let mut lookup = Lookup::new(Key::for_value(b"t"), CONFIG, peers.iter().copied());
        let mut answered = 0;
        let mut failed = false;
        loop {
            match lookup.next_step() {
                LookupStep::Query(node) => {
                    // The first peer queried fails; the rest answer with nothing new.
                    if failed {
                        lookup.on_success(&keys[&node], std::iter::empty());
                        answered += 1;
                    } else {
                        lookup.on_failure(&keys[&node]);
                        failed = true;
                    }
                }
                LookupStep::Waiting => unreachable!("every request is answered at once"),
                LookupStep::Finished => break,
            }
        }
        assert_eq!(answered, 4);
        assert_eq!(lookup.closest_answered(10).count(), 4);
    }

    #[test]
    fn hops_count_sequential_rounds() {
        let (a, b, c) = (peer(1), peer(2), peer(3));
        let mut lookup = Lookup::new(c.1, CONFIG, [a]);
        assert_eq!(lookup.next_step(), LookupStep::Query(a.0));
        lookup.on_success(&a.1, [b]);
        assert_eq!(lookup.hop_of(&b.1), Some(2));
        assert_eq!(lookup.next_step(), LookupStep::Query(b.0));
        lookup.on_success(&b.1, [c]);
        assert_eq!(lookup.target_found_at_hop(), Some(2));
    }

    proptest! {
        /// Against a random static network where each peer knows random others, a lookup
        /// always terminates within a bounded number of steps and never exceeds its limits.
        #[test]
        fn lookups_terminate_within_bounds(
            links in proptest::collection::vec(proptest::collection::vec(0usize..40, 0..8), 40),
            fail in proptest::collection::vec(any::<bool>(), 40),
            start in proptest::collection::vec(0usize..40, 1..5),
        ) {
            let peers: Vec<_> = (0..40).map(peer).collect();
            let by_key: BTreeMap<Key, usize> = peers.iter().enumerate().map(|(i, p)| (p.1, i)).collect();
            let mut lookup = Lookup::new(Key::for_value(b"target"), CONFIG, start.iter().map(|i| peers[*i]));
            let mut queries = 0;
            let mut in_flight = Vec::new();
            loop {
                match lookup.next_step() {
                    LookupStep::Query(node) => {
                        queries += 1;
                        prop_assert!(lookup.num_waiting() <= CONFIG.num_results);
                        let key = Key::for_node(&node);
                        in_flight.push(key);
                    }
                    LookupStep::Waiting => {
                        let key = in_flight.remove(0);
                        let index = by_key[&key];
                        if fail[index] {
                            lookup.on_failure(&key);
                        } else {
                            lookup.on_success(&key, links[index].iter().map(|i| peers[*i]));
                        }
                    }
                    LookupStep::Finished => break,
                }
                prop_assert!(queries <= 40, "a peer was queried twice");
            }
        }
    }
}
