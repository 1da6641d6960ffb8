//! The link-quality graph of a node's two-hop neighbourhood, and the best paths through it.
//!
//! Edges are directed and weighted by [`link_cost`](crate::route::link_cost): this node's
//! own links (measured by its driver) and each neighbour's links as reported in its last
//! [`Hello`](crate::route::Hello). [`LinkGraph::best_path`] runs Dijkstra's algorithm
//! (`petgraph::algo::dijkstra`) from this node; among equal-cost paths it picks, walking
//! back from the destination, the predecessor with the smallest node id, so the answer is
//! deterministic.
//!
//! The graph answers "what is the best path to X that I can see"; forwarding follows the
//! route table, whose choices must also pass the feasibility condition. Within two hops the
//! two agree whenever the best path is feasible.

use std::collections::BTreeMap;

use petgraph::graph::{DiGraph, NodeIndex};
use petgraph::visit::EdgeRef;
use petgraph::Direction;

use crate::dht::time::Timestamp;
use crate::identity::NodeId;

/// One directed, weighted edge of the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphEdge {
    /// The node that measured the link.
    pub from: NodeId,
    /// The other end.
    pub to: NodeId,
    /// Its cost (see [`link_cost`](crate::route::link_cost)).
    pub cost: u32,
}

/// The best path to a node within the known graph.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GraphPath {
    /// The nodes after this one, the first hop first and the destination last.
    pub hops: Vec<NodeId>,
    /// The sum of the edges' costs.
    pub cost: u64,
}

#[derive(Debug, Clone)]
struct Report {
    links: Vec<(NodeId, u32)>,
    expires_at: Timestamp,
}

/// This node's view of the links around it (its own and its neighbours').
#[derive(Debug, Clone)]
pub struct LinkGraph {
    local: NodeId,
    own: BTreeMap<NodeId, u32>,
    reports: BTreeMap<NodeId, Report>,
}

impl LinkGraph {
    /// An empty graph around `local`.
    pub fn new(local: NodeId) -> Self {
        Self {
            local,
            own: BTreeMap::new(),
            reports: BTreeMap::new(),
        }
    }

    /// Every edge: this node's links first, then each neighbour's reported links.
    pub fn edges(&self) -> Vec<GraphEdge> {
        let own = self.own.iter().map(|(to, cost)| GraphEdge {
            from: self.local,
            to: *to,
            cost: *cost,
        });
        let reported = self.reports.iter().flat_map(|(from, report)| {
            report.links.iter().map(|(to, cost)| GraphEdge {
                from: *from,
                to: *to,
                cost: *cost,
            })
        });
        own.chain(reported).collect()
    }

    /// The cheapest path from this node to `destination` in the graph, if there is one.
    pub fn best_path(&self, destination: &NodeId) -> Option<GraphPath> {
        if *destination == self.local {
            return None;
        }
        let mut graph: DiGraph<NodeId, u32> = DiGraph::new();
        let mut index: BTreeMap<NodeId, NodeIndex> = BTreeMap::new();
        let mut node = |graph: &mut DiGraph<NodeId, u32>, id: NodeId| {
            *index.entry(id).or_insert_with(|| graph.add_node(id))
        };
        let start = node(&mut graph, self.local);
        for edge in self.edges() {
            if edge.from == edge.to {
                continue;
            }
            let from = node(&mut graph, edge.from);
            let to = node(&mut graph, edge.to);
            graph.add_edge(from, to, edge.cost);
        }
        let goal = *index.get(destination)?;
        let scores =
            petgraph::algo::dijkstra(&graph, start, None, |edge| u64::from(*edge.weight()));
        let cost = *scores.get(&goal)?;
        // Walk back: a predecessor lies on a shortest path iff its score plus the edge's
        // cost is the node's score (integer costs, so the comparison is exact).
        let mut hops = vec![*destination];
        let mut current = goal;
        while current != start {
            let score = *scores.get(&current)?;
            let previous = graph
                .edges_directed(current, Direction::Incoming)
                .filter(|edge| {
                    scores
                        .get(&edge.source())
                        .is_some_and(|s| s + u64::from(*edge.weight()) == score)
                })
                .map(|edge| edge.source())
                .min_by_key(|source| graph[*source])?;
            if previous != start {
                hops.push(graph[previous]);
            }
            current = previous;
            if hops.len() > graph.node_count() {
                return None;
            }
        }
        hops.reverse();
        Some(GraphPath { hops, cost })
    }

    // ---- updates, by the router ----

    pub(crate) fn set_own(&mut self, neighbour: NodeId, cost: u32) {
        self.own.insert(neighbour, cost);
    }

    pub(crate) fn remove_neighbour(&mut self, neighbour: &NodeId) {
        self.own.remove(neighbour);
        self.reports.remove(neighbour);
    }

    pub(crate) fn set_report(
        &mut self,
        neighbour: NodeId,
        links: Vec<(NodeId, u32)>,
        expires_at: Timestamp,
    ) {
        self.reports.insert(neighbour, Report { links, expires_at });
    }

    /// Drops reports older than their expiry; returns the next expiry.
    pub(crate) fn purge(&mut self, now: Timestamp) -> Timestamp {
        self.reports.retain(|_, report| report.expires_at > now);
        self.reports
            .values()
            .map(|report| report.expires_at)
            .min()
            .unwrap_or(Timestamp::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use crate::route::metric::link_cost;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;
    use std::time::Duration;

    fn id(seed: u64) -> NodeId {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id()
    }

    #[test]
    fn a_three_hop_clean_path_beats_a_two_hop_lossy_one() {
        let [a, b, c, d] = [id(1), id(2), id(3), id(4)];
        let good = link_cost(100, Duration::from_millis(10), 0.0);
        let lossy = link_cost(100, Duration::from_millis(10), 0.5);
        let mut graph = LinkGraph::new(a);
        graph.set_own(b, good);
        graph.set_own(c, lossy);
        graph.set_report(c, vec![(a, lossy), (b, good), (d, good)], Timestamp::MAX);
        assert_eq!(
            graph.best_path(&d),
            Some(GraphPath {
                hops: vec![c, d],
                cost: u64::from(lossy + good)
            }),
            "only the way over the lossy link is known so far"
        );
        graph.set_report(b, vec![(a, good), (c, good)], Timestamp::MAX);
        assert_eq!(
            graph.best_path(&d),
            Some(GraphPath {
                hops: vec![b, c, d],
                cost: u64::from(3 * good)
            })
        );
        assert_eq!(graph.best_path(&a), None);
        assert_eq!(graph.best_path(&id(5)), None);
    }

    #[test]
    fn reports_expire_and_leave_with_their_neighbour() {
        let [a, b, c] = [id(1), id(2), id(3)];
        let mut graph = LinkGraph::new(a);
        graph.set_own(b, 100);
        graph.set_report(b, vec![(c, 100)], Timestamp::from_millis(10));
        assert!(graph.best_path(&c).is_some());
        assert_eq!(
            graph.purge(Timestamp::from_millis(5)),
            Timestamp::from_millis(10)
        );
        assert_eq!(graph.purge(Timestamp::from_millis(10)), Timestamp::MAX);
        assert!(graph.best_path(&c).is_none());
        graph.set_report(b, vec![(c, 100)], Timestamp::MAX);
        graph.remove_neighbour(&b);
        assert!(graph.edges().is_empty());
    }
}
