//! Provider records: who offers a service, for the service registry ("mesh DNS").
//!
//! Many nodes register under one service name and anyone resolves the name to the list of
//! providers: Kademlia's ADD_PROVIDER / GET_PROVIDERS (as in rust-libp2p's `kad`), with
//! signatures. A [`ProviderRecord`] says "node `provider` offers `topic`, described by
//! `info`, until `expires_at`". The topic of a service name is [`Key::for_topic`]; the
//! record is signed by the provider in [`SignatureDomain::DhtProvider`] over topic,
//! sequence number, expiry and info, so nobody else can register, extend or alter it. It is
//! held by the k nodes closest to the topic and by the provider itself, which re-sends it
//! every `republish_interval` until it expires.
//!
//! A [`ProviderStore`] holds a node's provider records, apart from its
//! [`RecordStore`](crate::dht::store::RecordStore). Its rules:
//! - one entry per provider and topic. A higher sequence number from the same provider
//!   replaces the entry; an equal or lower one is refused as [`RecordError::Stale`];
//! - at most [`MAX_PROVIDERS_PER_TOPIC`] providers per topic. When a topic is full the
//!   entries that live longest are kept: an offer from a new provider evicts the entry that
//!   expires first if the offer expires strictly later, and is otherwise refused with
//!   [`RecordError::QuotaExceeded`] with `available: 0`. An entry this node published is
//!   never evicted, and its own offer evicts the earliest-expiring other entry;
//! - info of at most [`MAX_PROVIDER_INFO`] bytes, and the whole store within its own byte
//!   quota (the node's [`DhtConfig::provider_storage_bytes`](crate::dht::DhtConfig), each
//!   record counted as [`ProviderRecord::stored_size`]), separate from the record store's
//!   `dht_storage_bytes`. A record that does not fit, even after expired entries are
//!   dropped, is refused with [`RecordError::QuotaExceeded`].
//!
//! Expired entries are never served and are dropped by [`ProviderStore::remove_expired`].

use std::cmp::Reverse;
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::dht::key::Key;
use crate::dht::message::node_id_bytes;
use crate::dht::record::{RecordError, RecordSignature};
use crate::dht::store::RecordOrigin;
use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NodeKeypair, SignatureDomain};

/// Largest `info` a provider record may carry: 1 KiB (an address, a port, a version).
pub const MAX_PROVIDER_INFO: usize = 1024;

/// Most providers held per topic by one node, and most returned in one answer or by one
/// lookup.
pub const MAX_PROVIDERS_PER_TOPIC: usize = 20;

/// Bytes charged per provider record on top of its info (topic, provider, signature,
/// sequence number, expiry and bookkeeping).
pub const PROVIDER_OVERHEAD_BYTES: u64 = 192;

/// A signed statement that `provider` offers `topic` until `expires_at`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderRecord {
    /// The service's topic key ([`Key::for_topic`] of its name).
    pub topic: Key,
    /// The node offering the service, whose key signs the record.
    #[serde(with = "node_id_bytes")]
    pub provider: NodeId,
    /// What the provider says about its offer (at most [`MAX_PROVIDER_INFO`] bytes).
    pub info: Vec<u8>,
    /// Version; each replacement by the same provider must carry a higher one.
    pub seq: u64,
    /// When the record stops being served (signed, so nobody else can extend it).
    pub expires_at: Timestamp,
    /// The provider's signature over `topic`, `seq`, `expires_at` and `info`.
    pub signature: RecordSignature,
}

impl ProviderRecord {
    /// Builds and signs a provider record with `keypair`, the provider.
    pub fn sign(
        keypair: &NodeKeypair,
        topic: Key,
        info: Vec<u8>,
        seq: u64,
        expires_at: Timestamp,
    ) -> Result<Self, RecordError> {
        check_info_size(&info)?;
        let message = signed_message(&topic, seq, expires_at, &info);
        let signature = RecordSignature(
            keypair
                .sign(SignatureDomain::DhtProvider, &message)
                .to_bytes(),
        );
        Ok(Self {
            topic,
            provider: keypair.node_id(),
            info,
            seq,
            expires_at,
            signature,
        })
    }

    /// Checks the info's size, the expiry and the provider's signature.
    pub fn validate(&self, now: Timestamp) -> Result<(), RecordError> {
        check_info_size(&self.info)?;
        if self.expires_at <= now {
            return Err(RecordError::Expired);
        }
        let message = signed_message(&self.topic, self.seq, self.expires_at, &self.info);
        self.provider
            .verify(SignatureDomain::DhtProvider, &message, &self.signature.0)
            .map_err(|_| RecordError::BadSignature)
    }

    /// Bytes charged against a provider store's quota.
    pub fn stored_size(&self) -> u64 {
        self.info.len() as u64 + PROVIDER_OVERHEAD_BYTES
    }
}

/// The bytes a provider signs: `topic || seq (BE) || expires_at (BE) || info`.
fn signed_message(topic: &Key, seq: u64, expires_at: Timestamp, info: &[u8]) -> Vec<u8> {
    let mut message = Vec::with_capacity(topic.as_bytes().len() + 16 + info.len());
    message.extend_from_slice(topic.as_bytes());
    message.extend_from_slice(&seq.to_be_bytes());
    message.extend_from_slice(&expires_at.as_millis().to_be_bytes());
    message.extend_from_slice(info);
    message
}

fn check_info_size(info: &[u8]) -> Result<(), RecordError> {
    if info.len() > MAX_PROVIDER_INFO {
        return Err(RecordError::ValueTooLarge {
            len: info.len() as u64,
            max: MAX_PROVIDER_INFO as u64,
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
struct StoredProvider {
    record: ProviderRecord,
    origin: RecordOrigin,
}

/// A node's provider records in memory: per topic at most [`MAX_PROVIDERS_PER_TOPIC`], in
/// all at most a byte quota. The module documentation states the rules.
///
/// [`put`](Self::put) assumes the record was [validated](ProviderRecord::validate); the
/// [`DhtNode`](crate::dht::DhtNode) does that first.
#[derive(Debug, Clone)]
pub struct ProviderStore {
    topics: BTreeMap<Key, BTreeMap<NodeId, StoredProvider>>,
    len: usize,
    used_bytes: u64,
    quota_bytes: u64,
}

impl ProviderStore {
    /// An empty store holding at most `quota_bytes` (as counted by
    /// [`ProviderRecord::stored_size`]).
    pub fn new(quota_bytes: u64) -> Self {
        Self {
            topics: BTreeMap::new(),
            len: 0,
            used_bytes: 0,
            quota_bytes,
        }
    }

    /// The quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    /// Bytes charged against the quota.
    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    /// Number of entries held, over all topics (expired ones until they are swept).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The providers of `topic` not expired at `now`, latest expiry first (at most
    /// [`MAX_PROVIDERS_PER_TOPIC`]).
    pub fn get(&self, topic: &Key, now: Timestamp) -> Vec<ProviderRecord> {
        let mut records: Vec<ProviderRecord> = self
            .topics
            .get(topic)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter(|stored| stored.record.expires_at > now)
            .map(|stored| stored.record.clone())
            .collect();
        records.sort_by_key(|record| (Reverse(record.expires_at), record.provider));
        records
    }

    /// The entry of `provider` under `topic`, unless absent or expired at `now`.
    pub fn get_entry(
        &self,
        topic: &Key,
        provider: &NodeId,
        now: Timestamp,
    ) -> Option<ProviderRecord> {
        self.topics
            .get(topic)?
            .get(provider)
            .filter(|stored| stored.record.expires_at > now)
            .map(|stored| stored.record.clone())
    }

    /// Stores `record` under its topic and provider, by the rules of the module
    /// documentation. On an error the store holds the same entries as before, less any
    /// expired ones.
    pub fn put(
        &mut self,
        record: ProviderRecord,
        origin: RecordOrigin,
        now: Timestamp,
    ) -> Result<(), RecordError> {
        self.remove_expired_in(&record.topic, now);
        let needed = record.stored_size();
        let entries = self.topics.get(&record.topic);
        let existing = entries.and_then(|entries| entries.get(&record.provider));
        // The entry that makes way for the record: its own older version, or in a full
        // topic the other entry that expires first.
        let replaced = match (existing, entries) {
            (Some(stored), _) => {
                if record.seq <= stored.record.seq {
                    return Err(RecordError::Stale {
                        stored: stored.record.seq,
                        offered: record.seq,
                    });
                }
                Some(stored)
            }
            (None, Some(entries)) if entries.len() >= MAX_PROVIDERS_PER_TOPIC => {
                let victim = entries
                    .values()
                    .filter(|stored| stored.origin == RecordOrigin::Replica)
                    .min_by_key(|stored| (stored.record.expires_at, stored.record.provider));
                match victim {
                    Some(victim)
                        if origin == RecordOrigin::Published
                            || victim.record.expires_at < record.expires_at =>
                    {
                        Some(victim)
                    }
                    _ => {
                        return Err(RecordError::QuotaExceeded {
                            needed,
                            available: 0,
                        })
                    }
                }
            }
            (None, _) => None,
        };
        // A record published here stays marked as such when a newer copy arrives.
        let origin = match existing {
            Some(stored) if stored.origin == RecordOrigin::Published => RecordOrigin::Published,
            _ => origin,
        };
        let replaced = replaced.map(|stored| (stored.record.provider, stored.record.stored_size()));
        let freed = replaced.map_or(0, |(_, size)| size);
        if needed > self.available(freed) {
            // Entries of this topic are live, so `replaced` survives the sweep.
            self.remove_expired(now);
        }
        let available = self.available(freed);
        if needed > available {
            return Err(RecordError::QuotaExceeded { needed, available });
        }
        let topic = record.topic;
        let entries = self.topics.entry(topic).or_default();
        if let Some((provider, size)) = replaced {
            if entries.remove(&provider).is_some() {
                self.used_bytes -= size;
                self.len -= 1;
            }
        }
        entries.insert(record.provider, StoredProvider { record, origin });
        self.used_bytes += needed;
        self.len += 1;
        Ok(())
    }

    /// Removes and returns the entry of `provider` under `topic`.
    pub fn remove(&mut self, topic: &Key, provider: &NodeId) -> Option<ProviderRecord> {
        let entries = self.topics.get_mut(topic)?;
        let stored = entries.remove(provider)?;
        if entries.is_empty() {
            self.topics.remove(topic);
        }
        self.used_bytes -= stored.record.stored_size();
        self.len -= 1;
        Some(stored.record)
    }

    /// Drops every entry expired at `now`; returns how many.
    pub fn remove_expired(&mut self, now: Timestamp) -> usize {
        let before = self.len;
        let topics: Vec<Key> = self.topics.keys().copied().collect();
        for topic in topics {
            self.remove_expired_in(&topic, now);
        }
        before - self.len
    }

    /// Topics under which this node holds an entry it published itself (see
    /// [`RecordOrigin::Published`]).
    pub fn published_topics(&self) -> Vec<Key> {
        self.topics
            .iter()
            .filter(|(_, entries)| {
                entries
                    .values()
                    .any(|stored| stored.origin == RecordOrigin::Published)
            })
            .map(|(topic, _)| *topic)
            .collect()
    }

    fn available(&self, freed: u64) -> u64 {
        self.quota_bytes
            .saturating_sub(self.used_bytes.saturating_sub(freed))
    }

    fn remove_expired_in(&mut self, topic: &Key, now: Timestamp) {
        let Some(entries) = self.topics.get_mut(topic) else {
            return;
        };
        let before = entries.len();
        let mut freed = 0;
        entries.retain(|_, stored| {
            let keep = stored.record.expires_at > now;
            if !keep {
                freed += stored.record.stored_size();
            }
            keep
        });
        self.len -= before - entries.len();
        self.used_bytes -= freed;
        if entries.is_empty() {
            self.topics.remove(topic);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand_chacha::rand_core::SeedableRng;
    use rand_chacha::ChaCha20Rng;

    fn keypair(seed: u64) -> NodeKeypair {
        NodeKeypair::generate(&mut ChaCha20Rng::seed_from_u64(seed))
    }

    const NOW: Timestamp = Timestamp::from_millis(1_000);

    fn topic() -> Key {
        Key::for_topic(b"printer")
    }

    fn provider(seed: u64, seq: u64, expires_at: u64) -> ProviderRecord {
        ProviderRecord::sign(
            &keypair(seed),
            topic(),
            b"udp:7000".to_vec(),
            seq,
            Timestamp::from_millis(expires_at),
        )
        .expect("small info")
    }

    fn providers_of(store: &ProviderStore) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = store
            .get(&topic(), NOW)
            .into_iter()
            .map(|record| record.provider)
            .collect();
        ids.sort();
        ids
    }

    #[test]
    fn a_signed_record_verifies_and_tampering_breaks_it() {
        let record = provider(1, 1, 100_000);
        assert_eq!(record.validate(NOW), Ok(()));
        let mut extended = record.clone();
        extended.expires_at = Timestamp::MAX;
        assert_eq!(extended.validate(NOW), Err(RecordError::BadSignature));
        let mut moved = record.clone();
        moved.topic = Key::for_topic(b"scanner");
        assert_eq!(moved.validate(NOW), Err(RecordError::BadSignature));
        // Another node claims the provider's registration as its own.
        let mut stolen = record.clone();
        stolen.provider = keypair(2).node_id();
        assert_eq!(stolen.validate(NOW), Err(RecordError::BadSignature));
        assert_eq!(
            record.validate(record.expires_at),
            Err(RecordError::Expired)
        );
    }

    #[test]
    fn a_provider_signature_is_not_a_record_signature() {
        let keys = keypair(3);
        let record = provider(3, 1, 100_000);
        let message = signed_message(&record.topic, record.seq, record.expires_at, &record.info);
        assert!(keys
            .node_id()
            .verify(SignatureDomain::DhtRecord, &message, &record.signature.0)
            .is_err());
    }

    #[test]
    fn oversized_info_is_refused() {
        let info = vec![0; MAX_PROVIDER_INFO + 1];
        assert_eq!(
            ProviderRecord::sign(&keypair(1), topic(), info, 1, Timestamp::MAX),
            Err(RecordError::ValueTooLarge {
                len: MAX_PROVIDER_INFO as u64 + 1,
                max: MAX_PROVIDER_INFO as u64
            })
        );
        let mut record = provider(1, 1, 100_000);
        record.info = vec![0; MAX_PROVIDER_INFO + 1];
        assert!(matches!(
            record.validate(NOW),
            Err(RecordError::ValueTooLarge { .. })
        ));
    }

    #[test]
    fn a_newer_sequence_number_replaces_and_a_stale_one_is_refused() {
        let mut store = ProviderStore::new(1_000_000);
        store
            .put(provider(1, 5, 100_000), RecordOrigin::Replica, NOW)
            .expect("fits");
        for seq in [5, 4] {
            assert_eq!(
                store.put(provider(1, seq, 200_000), RecordOrigin::Replica, NOW),
                Err(RecordError::Stale {
                    stored: 5,
                    offered: seq
                })
            );
        }
        store
            .put(provider(1, 6, 50_000), RecordOrigin::Replica, NOW)
            .expect("newer");
        assert_eq!(store.len(), 1);
        let id = keypair(1).node_id();
        assert_eq!(store.get_entry(&topic(), &id, NOW).map(|r| r.seq), Some(6));
        assert_eq!(store.used_bytes(), provider(1, 6, 50_000).stored_size());
    }

    #[test]
    fn a_full_topic_keeps_the_entries_that_live_longest() {
        let mut store = ProviderStore::new(1_000_000);
        for seed in 0..MAX_PROVIDERS_PER_TOPIC as u64 {
            store
                .put(provider(seed, 1, 10_000 + seed), RecordOrigin::Replica, NOW)
                .expect("room");
        }
        // Expiring no later than the earliest entry: refused.
        let refused = provider(100, 1, 10_000);
        assert_eq!(
            store.put(refused.clone(), RecordOrigin::Replica, NOW),
            Err(RecordError::QuotaExceeded {
                needed: refused.stored_size(),
                available: 0
            })
        );
        // Expiring later: the earliest entry (seed 0) makes way.
        store
            .put(provider(101, 1, 20_000), RecordOrigin::Replica, NOW)
            .expect("evicts the earliest");
        let ids = providers_of(&store);
        assert_eq!(ids.len(), MAX_PROVIDERS_PER_TOPIC);
        assert!(ids.contains(&keypair(101).node_id()));
        assert!(!ids.contains(&keypair(0).node_id()));
        assert_eq!(store.len(), MAX_PROVIDERS_PER_TOPIC);
    }

    #[test]
    fn an_own_entry_always_finds_room_and_is_never_evicted() {
        let mut store = ProviderStore::new(1_000_000);
        store
            .put(provider(50, 1, 2_000), RecordOrigin::Published, NOW)
            .expect("room");
        for seed in 0..MAX_PROVIDERS_PER_TOPIC as u64 - 1 {
            store
                .put(provider(seed, 1, 90_000), RecordOrigin::Replica, NOW)
                .expect("room");
        }
        // A later-expiring newcomer evicts a replica, not the own entry.
        store
            .put(provider(60, 1, 95_000), RecordOrigin::Replica, NOW)
            .expect("evicts a replica");
        assert!(providers_of(&store).contains(&keypair(50).node_id()));
        // An own offer into a full topic evicts the earliest-expiring replica, however early
        // it expires itself.
        let mut full = ProviderStore::new(1_000_000);
        for seed in 0..MAX_PROVIDERS_PER_TOPIC as u64 {
            full.put(provider(seed, 1, 90_000), RecordOrigin::Replica, NOW)
                .expect("room");
        }
        full.put(provider(70, 1, 2_000), RecordOrigin::Published, NOW)
            .expect("own entry evicts a replica");
        assert_eq!(full.published_topics(), vec![topic()]);
        assert_eq!(full.len(), MAX_PROVIDERS_PER_TOPIC);
    }

    #[test]
    fn the_byte_quota_holds_and_expired_entries_make_room() {
        let one = provider(1, 1, 2_000);
        let mut store = ProviderStore::new(one.stored_size() + 10);
        store
            .put(one.clone(), RecordOrigin::Replica, NOW)
            .expect("fits");
        let other = ProviderRecord::sign(
            &keypair(2),
            Key::for_topic(b"other"),
            b"udp:7000".to_vec(),
            1,
            Timestamp::from_millis(9_000),
        )
        .expect("small");
        assert_eq!(
            store.put(other.clone(), RecordOrigin::Replica, NOW),
            Err(RecordError::QuotaExceeded {
                needed: other.stored_size(),
                available: 10
            })
        );
        let later = Timestamp::from_millis(2_000);
        store
            .put(other, RecordOrigin::Replica, later)
            .expect("the expired entry was dropped");
        assert_eq!(store.len(), 1);
        assert!(store.get(&topic(), later).is_empty());
    }

    #[test]
    fn expired_entries_are_not_served_and_are_swept() {
        let mut store = ProviderStore::new(1_000_000);
        store
            .put(provider(1, 1, 2_000), RecordOrigin::Published, NOW)
            .expect("fits");
        store
            .put(provider(2, 1, 5_000), RecordOrigin::Replica, NOW)
            .expect("fits");
        let at = Timestamp::from_millis(2_000);
        assert_eq!(store.get(&topic(), at).len(), 1);
        assert_eq!(store.remove_expired(at), 1);
        assert!(store.published_topics().is_empty());
        assert_eq!(store.remove_expired(Timestamp::from_millis(5_000)), 1);
        assert!(store.is_empty());
        assert_eq!(store.used_bytes(), 0);
    }

    proptest! {
        #[test]
        fn any_bit_flip_in_the_signature_is_caught(seed: u64, info in proptest::collection::vec(any::<u8>(), 0..64), bit in 0usize..512) {
            let mut record = ProviderRecord::sign(&keypair(seed), topic(), info, 1, Timestamp::MAX)
                .expect("small info");
            record.signature.0[bit / 8] ^= 1 << (bit % 8);
            prop_assert_eq!(record.validate(NOW), Err(RecordError::BadSignature));
        }

        /// Whatever is offered, no topic holds more than its bound, bytes stay within the
        /// quota and the counts agree with the contents.
        #[test]
        fn bounds_hold_under_any_offers(
            quota in 0u64..30_000,
            offers in proptest::collection::vec((0u64..40, 0u64..3, 1u64..5, 1_001u64..3_000, 0u64..3_000), 0..80),
        ) {
            let mut store = ProviderStore::new(quota);
            for (seed, topic_index, seq, expires_at, now) in offers {
                let record = ProviderRecord::sign(
                    &keypair(seed),
                    Key::for_topic(&topic_index.to_be_bytes()),
                    vec![0; (seed as usize * 20) % MAX_PROVIDER_INFO],
                    seq,
                    Timestamp::from_millis(expires_at),
                )
                .expect("small info");
                let _ = store.put(record, RecordOrigin::Replica, Timestamp::from_millis(now));
                prop_assert!(store.used_bytes() <= quota);
                let mut len = 0;
                let mut bytes = 0;
                for entries in store.topics.values() {
                    prop_assert!(!entries.is_empty() && entries.len() <= MAX_PROVIDERS_PER_TOPIC);
                    len += entries.len();
                    bytes += entries.values().map(|stored| stored.record.stored_size()).sum::<u64>();
                }
                prop_assert_eq!((store.len(), store.used_bytes()), (len, bytes));
            }
        }
    }
}
