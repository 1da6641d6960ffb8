//! Route state per destination: the candidates learned from neighbours, the feasibility
//! distance, the selected route and its precursors; and [`Route`], the public view of a
//! selected route.

use crate::dht::time::Timestamp;
use crate::identity::NodeId;
use crate::route::advert::SignedAdvert;
use crate::route::metric::METRIC_INFINITY;

/// The best `(seqno, metric)` this node has advertised for a destination (RFC 8966 §3.5.1).
///
/// "Better" means a higher sequence number, or the same sequence number and a lower metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeasibilityDistance {
    /// Sequence number of the best advertisement sent.
    pub seqno: u64,
    /// Its metric.
    pub metric: u32,
}

impl FeasibilityDistance {
    /// Whether an advertisement `(seqno, metric)` received from a neighbour is feasible
    /// against this distance: strictly better than it.
    pub fn admits(&self, seqno: u64, metric: u32) -> bool {
        seqno > self.seqno || (seqno == self.seqno && metric < self.metric)
    }
}

/// Whether `(seqno, metric)` is feasible against an optional distance (none admits all).
pub(crate) fn feasible(fd: Option<FeasibilityDistance>, seqno: u64, metric: u32) -> bool {
    fd.is_none_or(|fd| fd.admits(seqno, metric))
}

/// A route to one destination as selected by this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The destination.
    pub destination: NodeId,
    /// The neighbour packets for the destination go to.
    pub next_hop: NodeId,
    /// Hops to the destination (the length of `path`).
    pub hop_count: u8,
    /// The route's metric: the next hop's advertised metric plus the cost of the link to
    /// it.
    pub metric: u32,
    /// The destination's sequence number this route carries.
    pub seqno: u64,
    /// The nodes the route passes through as reported hop by hop: the next hop first, the
    /// destination last (this node is not included). Unsigned, for display.
    pub path: Vec<NodeId>,
    /// When the route expires unless refreshed.
    pub expires_at: Timestamp,
}

/// An advertisement for a destination received from one neighbour.
#[derive(Debug, Clone)]
pub(crate) struct Candidate {
    /// Signed by the destination.
    pub(crate) advert: SignedAdvert,
    /// The neighbour's metric to the destination (as it advertised it).
    pub(crate) metric: u32,
    /// From the neighbour to the destination.
    pub(crate) path: Vec<NodeId>,
    pub(crate) expires_at: Timestamp,
}

/// A map from neighbour to value kept as a vector sorted by neighbour: a destination has
/// one entry per neighbour that advertised it, usually one to three, and a `BTreeMap`
/// would allocate a whole node (about 2 KiB here) for the first. Same iteration order
/// (ascending id) as a `BTreeMap`, so behaviour stays deterministic.
#[derive(Debug, Clone)]
pub(crate) struct NeighbourMap<V>(Vec<(NodeId, V)>);

impl<V> Default for NeighbourMap<V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<V> NeighbourMap<V> {
    fn position(&self, key: &NodeId) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(key))
    }

    pub(crate) fn get(&self, key: &NodeId) -> Option<&V> {
        self.position(key).ok().map(|at| &self.0[at].1)
    }

    pub(crate) fn contains_key(&self, key: &NodeId) -> bool {
        self.position(key).is_ok()
    }

    pub(crate) fn insert(&mut self, key: NodeId, value: V) -> Option<V> {
        match self.position(&key) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, value)),
            Err(at) => {
                self.0.insert(at, (key, value));
                self.0.shrink_to_fit();
                None
            }
        }
    }

    pub(crate) fn remove(&mut self, key: &NodeId) -> Option<V> {
        let at = self.position(key).ok()?;
        let (_, value) = self.0.remove(at);
        self.0.shrink_to_fit();
        Some(value)
    }

    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&NodeId, &mut V) -> bool) {
        self.0.retain_mut(|(key, value)| keep(key, value));
        self.0.shrink_to_fit();
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&NodeId, &V)> {
        self.0.iter().map(|(key, value)| (key, value))
    }

    pub(crate) fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, value)| value)
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A set of neighbours kept as a sorted vector (see [`NeighbourMap`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct NeighbourSet(NeighbourMap<()>);

impl NeighbourSet {
    pub(crate) fn insert(&mut self, key: NodeId) -> bool {
        self.0.insert(key, ()).is_none()
    }

    pub(crate) fn remove(&mut self, key: &NodeId) -> bool {
        self.0.remove(key).is_some()
    }
}

impl Extend<NodeId> for NeighbourSet {
    fn extend<T: IntoIterator<Item = NodeId>>(&mut self, keys: T) {
        for key in keys {
            self.insert(key);
        }
    }
}

impl IntoIterator for NeighbourSet {
    type Item = NodeId;
    type IntoIter = std::iter::Map<std::vec::IntoIter<(NodeId, ())>, fn((NodeId, ())) -> NodeId>;

    fn into_iter(self) -> Self::IntoIter {
        (self.0).0.into_iter().map(|(key, ())| key)
    }
}

/// Everything this node knows about one destination.
#[derive(Debug, Clone, Default)]
pub(crate) struct DestinationEntry {
    /// The newest advertisement with a verified signature (replay protection).
    pub(crate) latest: Option<SignedAdvert>,
    /// The feasibility distance, once this node has advertised a route to the destination.
    pub(crate) fd: Option<FeasibilityDistance>,
    /// The feasibility distance is kept until then: every advertisement derived from it is
    /// stale by that time.
    pub(crate) fd_hold_until: Timestamp,
    /// One candidate per neighbour.
    pub(crate) candidates: NeighbourMap<Candidate>,
    /// The neighbour whose candidate is selected.
    pub(crate) selected: Option<NodeId>,
    /// Neighbours this node advertised the route to; they hear a RERR when it is lost.
    pub(crate) precursors: NeighbourSet,
    /// Asked for by `find_route`; lost routes are rediscovered until then.
    pub(crate) wanted_until: Option<Timestamp>,
}

impl DestinationEntry {
    /// The best usable candidate: feasible, over a live link (`link_cost` gives its cost),
    /// within `max_hops`, with a finite metric. Prefers the newest sequence number, then the
    /// lowest metric, then the smallest neighbour id.
    pub(crate) fn best(
        &self,
        link_cost: impl Fn(&NodeId) -> Option<u32>,
        max_hops: u8,
    ) -> Option<NodeId> {
        self.candidates
            .iter()
            .filter_map(|(neighbour, candidate)| {
                let metric = self.usable_metric(neighbour, candidate, &link_cost, max_hops)?;
                Some((candidate.advert.seqno, metric, *neighbour))
            })
            .min_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)))
            .map(|(_, _, neighbour)| neighbour)
    }

    /// Whether the candidate from `neighbour` could be selected now.
    pub(crate) fn is_usable(
        &self,
        neighbour: &NodeId,
        link_cost: impl Fn(&NodeId) -> Option<u32>,
        max_hops: u8,
    ) -> bool {
        self.candidates.get(neighbour).is_some_and(|candidate| {
            self.usable_metric(neighbour, candidate, &link_cost, max_hops)
                .is_some()
        })
    }

    fn usable_metric(
        &self,
        neighbour: &NodeId,
        candidate: &Candidate,
        link_cost: &impl Fn(&NodeId) -> Option<u32>,
        max_hops: u8,
    ) -> Option<u32> {
        let cost = link_cost(neighbour)?;
        let metric = candidate.metric.saturating_add(cost);
        (metric < METRIC_INFINITY
            && candidate.path.len() <= usize::from(max_hops)
            && feasible(self.fd, candidate.advert.seqno, candidate.metric))
        .then_some(metric)
    }

    /// Records that this node advertised `(seqno, metric)`: the feasibility distance only
    /// ever improves, and is held until `hold_until`.
    pub(crate) fn advertised(&mut self, seqno: u64, metric: u32, hold_until: Timestamp) {
        if feasible(self.fd, seqno, metric) {
            self.fd = Some(FeasibilityDistance { seqno, metric });
        }
        self.fd_hold_until = self.fd_hold_until.max(hold_until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn keypair(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    #[test]
    fn feasibility_follows_rfc_8966() {
        let fd = FeasibilityDistance {
            seqno: 10,
            metric: 500,
        };
        assert!(fd.admits(11, 10_000), "a newer seqno is always feasible");
        assert!(fd.admits(10, 499), "same seqno, strictly smaller metric");
        assert!(!fd.admits(10, 500), "same seqno and metric is not");
        assert!(!fd.admits(9, 0), "an older seqno never is");
        assert!(feasible(None, 0, u32::MAX - 1));
    }

    #[test]
    fn selection_skips_infeasible_candidates_and_prefers_new_seqnos() {
        let destination = keypair(1);
        let [a, b, c] = [
            keypair(2).node_id(),
            keypair(3).node_id(),
            keypair(4).node_id(),
        ];
        let old = SignedAdvert::sign(&destination, 10, Timestamp::ZERO);
        let new = SignedAdvert::sign(&destination, 11, Timestamp::ZERO);
        let candidate = |advert: &SignedAdvert, metric| Candidate {
            advert: advert.clone(),
            metric,
            path: vec![],
            expires_at: Timestamp::MAX,
        };
        let mut entry = DestinationEntry::default();
        entry.candidates.insert(a, candidate(&old, 100));
        entry.candidates.insert(b, candidate(&old, 300));
        let cost = |_: &NodeId| Some(100);
        assert_eq!(entry.best(cost, 10), Some(a));
        entry.advertised(10, 200, Timestamp::MAX);
        assert_eq!(entry.best(cost, 10), Some(a), "100 < 200 stays feasible");
        entry.candidates.insert(a, candidate(&old, 250));
        assert_eq!(entry.best(cost, 10), None, "250 and 300 are not below 200");
        assert!(!entry.is_usable(&a, cost, 10));
        entry.candidates.insert(c, candidate(&new, 5_000));
        assert_eq!(entry.best(cost, 10), Some(c), "a newer seqno wins");
        assert_eq!(entry.best(|_| None, 10), None, "no live link, no route");
        // A worse advertisement never raises the distance.
        entry.advertised(10, 900, Timestamp::ZERO);
        assert_eq!(
            entry.fd,
            Some(FeasibilityDistance {
                seqno: 10,
                metric: 200
            })
        );
        assert_eq!(entry.fd_hold_until, Timestamp::MAX);
    }
}
