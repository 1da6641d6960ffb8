//! The routing table: 256 k-buckets around this node's key.
//!
//! Bucket `i` holds nodes whose distance to this node has its highest set bit at `i`
//! ([`Distance::bucket_index`]), so bucket 255 covers half the key space and bucket 0 a
//! single key. Each bucket keeps at most `k` entries, least recently seen first. When a
//! bucket is full, a newcomer does not push anyone out: it waits as the bucket's *pending
//! entry* while the least recently seen entry is probed ([`InsertOutcome::Pending`]). If
//! the probed node answers (any message from it, [`RoutingTable::update`]), it stays and
//! the newcomer is dropped; if it fails ([`RoutingTable::remove`]), the newcomer takes its
//! place. Long-lived nodes are thus preferred, as in the Kademlia paper (§2.2).
//!
//! Memory: buckets are stored by shared-prefix length and only up to the longest prefix
//! seen, so a table holding `n` entries costs about `72 n` bytes plus 40 bytes per bucket.
//! At most one pending entry waits per bucket.

use std::time::Duration;

use crate::dht::key::{Distance, Key, KEY_BITS};
use crate::dht::time::Timestamp;
use crate::identity::NodeId;

/// A node in the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TableEntry {
    /// The node.
    pub node: NodeId,
    /// Its position, `SHA-256(node)`.
    pub key: Key,
    /// When a message from it was last received.
    pub last_seen: Timestamp,
}

/// A newcomer waiting for a full bucket's least recently seen entry to be probed.
#[derive(Debug, Clone)]
struct PendingEntry {
    entry: TableEntry,
    probed: NodeId,
    since: Timestamp,
}

#[derive(Debug, Clone, Default)]
struct KBucket {
    /// Least recently seen first; at most `k`.
    entries: Vec<TableEntry>,
    pending: Option<Box<PendingEntry>>,
    last_activity: Timestamp,
}

/// What [`RoutingTable::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The node was present and is now the most recently seen of its bucket.
    Refreshed,
    /// The node was added to a bucket with room.
    Inserted,
    /// The bucket is full: the node waits as pending entry, and `probe` (the least recently
    /// seen entry) should be pinged; its failure lets the newcomer in.
    Pending {
        /// The entry to ping.
        probe: NodeId,
    },
    /// The bucket is full and already has a pending entry; the node was not added.
    Full,
    /// The node is this node, which the table never holds.
    SelfEntry,
}

/// The Kademlia routing table of one node.
#[derive(Debug, Clone)]
pub struct RoutingTable {
    local_key: Key,
    k: usize,
    pending_timeout: Duration,
    /// Indexed by shared-prefix length (`255 - bucket index`), grown on demand.
    buckets: Vec<KBucket>,
    len: usize,
}

impl RoutingTable {
    /// An empty table around `local_key` with buckets of `k` entries. A pending entry whose
    /// probe has not been resolved within `pending_timeout` may be replaced by a newcomer.
    pub fn new(local_key: Key, k: usize, pending_timeout: Duration) -> Self {
        Self {
            local_key,
            k,
            pending_timeout,
            buckets: Vec::new(),
            len: 0,
        }
    }

    /// The key the table is centred on.
    pub fn local_key(&self) -> &Key {
        &self.local_key
    }

    /// Number of entries (pending entries not counted).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Entries of bucket `bucket_index` (0 ..= 255), least recently seen first.
    pub fn bucket(&self, bucket_index: usize) -> &[TableEntry] {
        KEY_BITS
            .checked_sub(bucket_index + 1)
            .and_then(|slot| self.buckets.get(slot))
            .map_or(&[], |bucket| bucket.entries.as_slice())
    }

    /// Every entry, bucket by bucket.
    pub fn entries(&self) -> impl Iterator<Item = &TableEntry> {
        self.buckets.iter().flat_map(|bucket| bucket.entries.iter())
    }

    /// Whether `node` is in the table.
    pub fn contains(&self, node: &NodeId, key: &Key) -> bool {
        self.slot(key)
            .and_then(|slot| self.buckets.get(slot))
            .is_some_and(|bucket| bucket.entries.iter().any(|entry| entry.node == *node))
    }

    /// Records that a message from `node` arrived at `now`, adding it if there is room.
    pub fn update(&mut self, now: Timestamp, node: NodeId, key: Key) -> InsertOutcome {
        let Some(slot) = self.slot(&key) else {
            return InsertOutcome::SelfEntry;
        };
        if self.buckets.len() <= slot {
            self.buckets.resize_with(slot + 1, KBucket::default);
        }
        let k = self.k;
        let pending_timeout = self.pending_timeout;
        let bucket = &mut self.buckets[slot];
        if let Some(position) = bucket.entries.iter().position(|entry| entry.node == node) {
            let mut entry = bucket.entries.remove(position);
            entry.last_seen = now;
            bucket.entries.push(entry);
            if bucket
                .pending
                .as_ref()
                .is_some_and(|pending| pending.probed == node)
            {
                bucket.pending = None;
            }
            return InsertOutcome::Refreshed;
        }
        let entry = TableEntry {
            node,
            key,
            last_seen: now,
        };
        if bucket.entries.len() < k {
            bucket.entries.push(entry);
            self.len += 1;
            return InsertOutcome::Inserted;
        }
        match &mut bucket.pending {
            Some(pending) if pending.entry.node == node => {
                pending.entry.last_seen = now;
                InsertOutcome::Full
            }
            Some(pending) if now.saturating_duration_since(pending.since) < pending_timeout => {
                InsertOutcome::Full
            }
            _ => {
                let probe = bucket.entries[0].node;
                bucket.pending = Some(Box::new(PendingEntry {
                    entry,
                    probed: probe,
                    since: now,
                }));
                InsertOutcome::Pending { probe }
            }
        }
    }

    /// Removes `node` (it failed to answer). A pending entry of its bucket takes its place;
    /// returns whether the table changed.
    pub fn remove(&mut self, node: &NodeId, key: &Key) -> bool {
        let Some(bucket) = self.slot(key).and_then(|slot| self.buckets.get_mut(slot)) else {
            return false;
        };
        if bucket
            .pending
            .as_ref()
            .is_some_and(|pending| pending.entry.node == *node)
        {
            bucket.pending = None;
            return true;
        }
        let Some(position) = bucket.entries.iter().position(|entry| entry.node == *node) else {
            return false;
        };
        bucket.entries.remove(position);
        match bucket.pending.take() {
            Some(pending) => bucket.entries.push(pending.entry),
            None => self.len -= 1,
        }
        true
    }

    /// Up to `count` entries closest to `target`, closest first, leaving out `exclude`.
    pub fn closest(&self, target: &Key, count: usize, exclude: Option<&NodeId>) -> Vec<TableEntry> {
        let mut candidates: Vec<(Distance, TableEntry)> = self
            .entries()
            .filter(|entry| Some(&entry.node) != exclude)
            .map(|entry| (entry.key.distance(target), *entry))
            .collect();
        if count == 0 {
            return Vec::new();
        }
        if candidates.len() > count {
            candidates.select_nth_unstable_by_key(count - 1, |candidate| candidate.0);
            candidates.truncate(count);
        }
        candidates.sort_unstable_by_key(|candidate| candidate.0);
        candidates.into_iter().map(|(_, entry)| entry).collect()
    }

    /// Notes that a lookup for `target` ran at `now`, so its bucket needs no refresh.
    pub fn mark_refreshed(&mut self, target: &Key, now: Timestamp) {
        if let Some(bucket) = self
            .slot(target)
            .and_then(|slot| self.buckets.get_mut(slot))
        {
            bucket.last_activity = now;
        }
    }

    /// Indexes of non-empty buckets with no lookup since `now - interval`, nearest first.
    pub fn buckets_to_refresh(&self, now: Timestamp, interval: Duration) -> Vec<usize> {
        self.buckets
            .iter()
            .enumerate()
            .rev()
            .filter(|(_, bucket)| {
                !bucket.entries.is_empty()
                    && now.saturating_duration_since(bucket.last_activity) >= interval
            })
            .map(|(slot, _)| KEY_BITS - 1 - slot)
            .collect()
    }

    fn slot(&self, key: &Key) -> Option<usize> {
        self.local_key
            .distance(key)
            .bucket_index()
            .map(|index| KEY_BITS - 1 - index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::NodeKeypair;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn node(seed: u64) -> (NodeId, Key) {
        let id = NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed)).node_id();
        (id, Key::for_node(&id))
    }

    const TIMEOUT: Duration = Duration::from_secs(10);

    /// A table around a key of all zeros, so bucket 255 holds every key whose first bit is 1.
    fn table(k: usize) -> RoutingTable {
        RoutingTable::new(Key::from_bytes([0; 32]), k, TIMEOUT)
    }

    /// Nodes whose keys fall in bucket 255 of [`table`].
    fn far_nodes(count: usize) -> Vec<(NodeId, Key)> {
        (0..)
            .map(node)
            .filter(|(_, key)| key.as_bytes()[0] & 0x80 != 0)
            .take(count)
            .collect()
    }

    #[test]
    fn a_full_bucket_probes_its_oldest_entry_and_keeps_it_if_it_answers() {
        let mut table = table(2);
        let nodes = far_nodes(3);
        let t = Timestamp::from_millis;
        assert_eq!(
            table.update(t(1), nodes[0].0, nodes[0].1),
            InsertOutcome::Inserted
        );
        assert_eq!(
            table.update(t(2), nodes[1].0, nodes[1].1),
            InsertOutcome::Inserted
        );
        assert_eq!(
            table.update(t(3), nodes[2].0, nodes[2].1),
            InsertOutcome::Pending { probe: nodes[0].0 }
        );
        // The oldest answers: it stays, the newcomer is dropped.
        assert_eq!(
            table.update(t(4), nodes[0].0, nodes[0].1),
            InsertOutcome::Refreshed
        );
        assert!(!table.contains(&nodes[2].0, &nodes[2].1));
        assert_eq!(table.bucket(255).len(), 2);
        assert_eq!(table.bucket(255)[1].node, nodes[0].0);
    }

    #[test]
    fn a_full_bucket_replaces_its_oldest_entry_if_the_probe_fails() {
        let mut table = table(2);
        let nodes = far_nodes(3);
        let t = Timestamp::from_millis;
        table.update(t(1), nodes[0].0, nodes[0].1);
        table.update(t(2), nodes[1].0, nodes[1].1);
        table.update(t(3), nodes[2].0, nodes[2].1);
        assert!(table.remove(&nodes[0].0, &nodes[0].1));
        assert!(table.contains(&nodes[2].0, &nodes[2].1));
        assert!(!table.contains(&nodes[0].0, &nodes[0].1));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_second_newcomer_waits_until_the_pending_entry_is_stale() {
        let mut table = table(1);
        let nodes = far_nodes(3);
        let t = Timestamp::from_millis;
        table.update(t(0), nodes[0].0, nodes[0].1);
        assert!(matches!(
            table.update(t(1), nodes[1].0, nodes[1].1),
            InsertOutcome::Pending { .. }
        ));
        assert_eq!(
            table.update(t(2), nodes[2].0, nodes[2].1),
            InsertOutcome::Full
        );
        assert!(matches!(
            table.update(t(20_000), nodes[2].0, nodes[2].1),
            InsertOutcome::Pending { .. }
        ));
    }

    #[test]
    fn the_table_never_holds_its_own_key() {
        let (id, key) = node(1);
        let mut table = RoutingTable::new(key, 20, TIMEOUT);
        assert_eq!(
            table.update(Timestamp::ZERO, id, key),
            InsertOutcome::SelfEntry
        );
        assert!(table.is_empty());
    }

    #[test]
    fn closest_is_sorted_and_excludes() {
        let mut table = table(20);
        let nodes: Vec<_> = (0..60).map(node).collect();
        for (id, key) in &nodes {
            table.update(Timestamp::ZERO, *id, *key);
        }
        let target = Key::for_value(b"target");
        let closest = table.closest(&target, 10, Some(&nodes[0].0));
        assert_eq!(closest.len(), 10);
        assert!(closest
            .windows(2)
            .all(|pair| pair[0].key.distance(&target) < pair[1].key.distance(&target)));
        let mut all: Vec<_> = table
            .entries()
            .map(|entry| entry.key.distance(&target))
            .collect();
        all.sort();
        let excluded = nodes[0].1.distance(&target);
        let expected: Vec<_> = all
            .into_iter()
            .filter(|d| *d != excluded)
            .take(10)
            .collect();
        let got: Vec<_> = closest
            .iter()
            .map(|entry| entry.key.distance(&target))
            .collect();
        assert_eq!(got, expected);
    }

    proptest! {
        #[test]
        fn buckets_never_exceed_k(k in 1usize..6, operations in proptest::collection::vec((0u64..64, any::<bool>()), 0..200)) {
            let mut table = table(k);
            let nodes: Vec<_> = (0..64).map(node).collect();
            for (step, (index, remove)) in operations.into_iter().enumerate() {
                let (id, key) = nodes[index as usize];
                if remove {
                    table.remove(&id, &key);
                } else {
                    table.update(Timestamp::from_millis(step as u64), id, key);
                }
                for bucket in 0..256 {
                    prop_assert!(table.bucket(bucket).len() <= k);
                }
                prop_assert_eq!(table.entries().count(), table.len());
                let mut ids: Vec<_> = table.entries().map(|entry| entry.node).collect();
                ids.sort();
                ids.dedup();
                prop_assert_eq!(ids.len(), table.len());
            }
        }
    }
}
