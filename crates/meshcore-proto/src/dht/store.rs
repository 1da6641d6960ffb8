//! Where a node keeps DHT records: the synchronous [`RecordStore`] trait and the in-memory
//! [`MemoryRecordStore`].
//!
//! The trait is synchronous on purpose: the state machine calls it inline and never waits.
//! The daemon implements it over memory plus a batching writer to SQLite; the simulator and
//! the tests use [`MemoryRecordStore`]. A store enforces the storage quota (refusing with
//! [`RecordError::QuotaExceeded`] after dropping expired records); the replacement rules
//! ([`Record::may_replace`]) are checked by the [`DhtNode`](crate::dht::DhtNode) before it
//! calls [`RecordStore::put`].

use std::collections::BTreeMap;

use crate::dht::key::Key;
use crate::dht::record::{Record, RecordError};
use crate::dht::time::Timestamp;

/// Who put a record into the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordOrigin {
    /// This node published it and republishes it until it expires.
    Published,
    /// Another node asked this node to hold it.
    Replica,
}

/// Storage for DHT records, keyed by [`Record::key`].
pub trait RecordStore {
    /// The record at `key`, unless absent or expired at `now`.
    fn get(&self, key: &Key, now: Timestamp) -> Option<Record>;

    /// Stores `record` at its key, replacing any record there. Fails with
    /// [`RecordError::QuotaExceeded`] if it does not fit even after expired records are
    /// dropped; the store is then unchanged.
    fn put(
        &mut self,
        record: Record,
        origin: RecordOrigin,
        now: Timestamp,
    ) -> Result<(), RecordError>;

    /// Removes and returns the record at `key`.
    fn remove(&mut self, key: &Key) -> Option<Record>;

    /// Drops every record expired at `now`; returns how many.
    fn remove_expired(&mut self, now: Timestamp) -> usize;

    /// Keys of the records this node published (see [`RecordOrigin::Published`]).
    fn published_keys(&self) -> Vec<Key>;

    /// Number of records held.
    fn len(&self) -> usize;

    /// Whether no record is held.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes charged against the quota ([`Record::stored_size`] summed).
    fn used_bytes(&self) -> u64;
}

#[derive(Debug, Clone)]
struct StoredRecord {
    record: Record,
    origin: RecordOrigin,
}

/// A [`RecordStore`] in memory, bounded by a byte quota.
#[derive(Debug, Clone)]
pub struct MemoryRecordStore {
    records: BTreeMap<Key, StoredRecord>,
    used_bytes: u64,
    quota_bytes: u64,
}

impl MemoryRecordStore {
    /// An empty store holding at most `quota_bytes` (as counted by
    /// [`Record::stored_size`]).
    pub fn new(quota_bytes: u64) -> Self {
        Self {
            records: BTreeMap::new(),
            used_bytes: 0,
            quota_bytes,
        }
    }

    /// The quota in bytes.
    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes
    }

    fn available_for(&self, key: &Key) -> u64 {
        let freed = self
            .records
            .get(key)
            .map_or(0, |stored| stored.record.stored_size());
        self.quota_bytes
            .saturating_sub(self.used_bytes.saturating_sub(freed))
    }
}

impl RecordStore for MemoryRecordStore {
    fn get(&self, key: &Key, now: Timestamp) -> Option<Record> {
        self.records
            .get(key)
            .filter(|stored| stored.record.expires_at() > now)
            .map(|stored| stored.record.clone())
    }

    fn put(
        &mut self,
        record: Record,
        origin: RecordOrigin,
        now: Timestamp,
    ) -> Result<(), RecordError> {
        let key = record.key();
        let needed = record.stored_size();
        if needed > self.available_for(&key) {
            self.remove_expired(now);
        }
        let available = self.available_for(&key);
        if needed > available {
            return Err(RecordError::QuotaExceeded { needed, available });
        }
        // A record published here stays marked as such when a replica of it arrives.
        let origin = match self.records.get(&key) {
            Some(stored) if stored.origin == RecordOrigin::Published => RecordOrigin::Published,
            _ => origin,
        };
        if let Some(old) = self.records.insert(key, StoredRecord { record, origin }) {
            self.used_bytes -= old.record.stored_size();
        }
        self.used_bytes += needed;
        Ok(())
    }

    fn remove(&mut self, key: &Key) -> Option<Record> {
        let stored = self.records.remove(key)?;
        self.used_bytes -= stored.record.stored_size();
        Some(stored.record)
    }

    fn remove_expired(&mut self, now: Timestamp) -> usize {
        let before = self.records.len();
        let mut freed = 0;
        self.records.retain(|_, stored| {
            let keep = stored.record.expires_at() > now;
            if !keep {
                freed += stored.record.stored_size();
            }
            keep
        });
        self.used_bytes -= freed;
        before - self.records.len()
    }

    fn published_keys(&self) -> Vec<Key> {
        self.records
            .iter()
            .filter(|(_, stored)| stored.origin == RecordOrigin::Published)
            .map(|(key, _)| *key)
            .collect()
    }

    fn len(&self) -> usize {
        self.records.len()
    }

    fn used_bytes(&self) -> u64 {
        self.used_bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record(value: &[u8], expires_at: u64) -> Record {
        Record::immutable(value.to_vec(), Timestamp::from_millis(expires_at)).expect("small")
    }

    #[test]
    fn a_full_store_refuses_with_the_numbers() {
        let one = record(&[1; 100], 1_000);
        let mut store = MemoryRecordStore::new(one.stored_size() + 10);
        store
            .put(one.clone(), RecordOrigin::Replica, Timestamp::ZERO)
            .expect("fits");
        let refused = store.put(
            record(&[2; 100], 1_000),
            RecordOrigin::Replica,
            Timestamp::ZERO,
        );
        assert_eq!(
            refused,
            Err(RecordError::QuotaExceeded {
                needed: one.stored_size(),
                available: 10
            })
        );
        assert_eq!(store.len(), 1);
        assert_eq!(store.used_bytes(), one.stored_size());
    }

    #[test]
    fn expired_records_make_room() {
        let old = record(&[1; 100], 10);
        let mut store = MemoryRecordStore::new(old.stored_size());
        store
            .put(old, RecordOrigin::Replica, Timestamp::ZERO)
            .expect("fits");
        let now = Timestamp::from_millis(20);
        store
            .put(record(&[2; 100], 1_000), RecordOrigin::Replica, now)
            .expect("the expired record was dropped");
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn expired_records_are_not_served() {
        let mut store = MemoryRecordStore::new(10_000);
        let short = record(b"short", 10);
        let key = short.key();
        store
            .put(short, RecordOrigin::Published, Timestamp::ZERO)
            .expect("fits");
        assert!(store.get(&key, Timestamp::from_millis(9)).is_some());
        assert!(store.get(&key, Timestamp::from_millis(10)).is_none());
        assert_eq!(store.published_keys(), vec![key]);
        assert_eq!(store.remove_expired(Timestamp::from_millis(10)), 1);
        assert_eq!(store.used_bytes(), 0);
    }

    proptest! {
        #[test]
        fn used_bytes_never_exceed_the_quota(quota in 0u64..4_000, sizes in proptest::collection::vec(0usize..600, 0..40)) {
            let mut store = MemoryRecordStore::new(quota);
            for (index, size) in sizes.into_iter().enumerate() {
                let mut value = vec![0u8; size];
                value.extend_from_slice(&(index as u64).to_be_bytes());
                let _ = store.put(record(&value, 1_000), RecordOrigin::Replica, Timestamp::ZERO);
                prop_assert!(store.used_bytes() <= quota);
            }
        }
    }
}
