//! Tunables of the DHT: [`DhtConfig`], with every default set in one place,
//! [`DhtConfig::new`], and each field's doc stating its default. The protocol constants
//! that are not tunable (value, provider and message size limits) live beside the code they
//! bound, in [`record`](crate::dht::record), [`provider`](crate::dht::provider) and
//! [`message`](crate::dht::message).

use std::time::Duration;

use crate::dht::message::MAX_PEERS_PER_RESPONSE;

/// Default storage quota of one node for other nodes' records: 100 MiB (the seed's
/// "100MB default per node", setting `dht_storage_bytes`).
pub const DEFAULT_STORAGE_BYTES: u64 = 100 * 1024 * 1024;

/// Default quota of one node for provider records: 16 MiB, room for about 13,800 records
/// with a maximal `info` (1,216 bytes counted each), or 690 full topics.
pub const DEFAULT_PROVIDER_STORAGE_BYTES: u64 = 16 * 1024 * 1024;

/// Tunables of a [`DhtNode`](crate::dht::DhtNode). [`DhtConfig::new`] sets every default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct DhtConfig {
    /// Bucket size and replication factor `k` (default 20; at most
    /// [`MAX_PEERS_PER_RESPONSE`]).
    pub k: usize,
    /// Parallel requests per lookup, `α` (default 3).
    pub alpha: usize,
    /// Time a request may go unanswered before the peer counts as failed (default 5 s).
    pub request_timeout: Duration,
    /// Longest a query may run before it finishes with what it has (default 60 s).
    pub query_timeout: Duration,
    /// Most queries running at once (default 64). A command beyond it finishes at once
    /// with [`QueryError::TooManyQueries`](crate::dht::QueryError::TooManyQueries).
    pub max_queries: usize,
    /// Most requests awaiting an answer at once (default 1024). Lookups wait for room.
    pub max_requests_in_flight: usize,
    /// Most messages waiting in [`poll_transmit`](crate::dht::DhtNode::poll_transmit)
    /// (default 4096). Beyond it, new messages are dropped and counted.
    pub max_queued_transmits: usize,
    /// Most events waiting in [`poll_event`](crate::dht::DhtNode::poll_event) (default
    /// 1024). Beyond it, new events are dropped and counted.
    pub max_queued_events: usize,
    /// Lifetime given to a record published without one (default 3600 s, the seed's `ttl`).
    pub record_ttl: Duration,
    /// Longest lifetime a node grants a record it stores for others (default 48 h); a later
    /// expiry is cut to this.
    pub max_record_ttl: Duration,
    /// How often a node re-stores the records it published, so they reach the nodes that are
    /// closest now (default 20 min).
    pub republish_interval: Duration,
    /// How often buckets without recent traffic are refreshed by a lookup of a random key
    /// in them, plus a self-lookup (default 1 h, as in the Kademlia paper).
    pub refresh_interval: Duration,
    /// How often expired records are swept out of the store (default 60 s).
    pub expiry_sweep_interval: Duration,
    /// Bytes of other nodes' records this node stores, setting `dht_storage_bytes`
    /// (default [`DEFAULT_STORAGE_BYTES`], 100 MiB).
    pub dht_storage_bytes: u64,
    /// Bytes of provider records this node stores, its own included, as counted by
    /// [`ProviderRecord::stored_size`](crate::dht::ProviderRecord::stored_size); a quota
    /// separate from `dht_storage_bytes` (default [`DEFAULT_PROVIDER_STORAGE_BYTES`],
    /// 16 MiB).
    pub provider_storage_bytes: u64,
    /// Seed of the node's random number generator (refresh targets).
    pub rng_seed: u64,
}

impl DhtConfig {
    /// The defaults, with the given RNG seed.
    pub fn new(rng_seed: u64) -> Self {
        Self {
            k: 20,
            alpha: 3,
            request_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(60),
            max_queries: 64,
            max_requests_in_flight: 1024,
            max_queued_transmits: 4096,
            max_queued_events: 1024,
            record_ttl: Duration::from_secs(3600),
            max_record_ttl: Duration::from_secs(48 * 3600),
            republish_interval: Duration::from_secs(20 * 60),
            refresh_interval: Duration::from_secs(3600),
            expiry_sweep_interval: Duration::from_secs(60),
            dht_storage_bytes: DEFAULT_STORAGE_BYTES,
            provider_storage_bytes: DEFAULT_PROVIDER_STORAGE_BYTES,
            rng_seed,
        }
    }

    /// Checks that the values make sense together, naming the first field that does not.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.k == 0 || self.k > MAX_PEERS_PER_RESPONSE {
            return Err(ConfigError::new("k", "must be between 1 and 32"));
        }
        if self.alpha == 0 || self.alpha > self.k {
            return Err(ConfigError::new("alpha", "must be between 1 and k"));
        }
        if self.request_timeout.is_zero() {
            return Err(ConfigError::new("request_timeout", "must be positive"));
        }
        if self.query_timeout < self.request_timeout {
            return Err(ConfigError::new(
                "query_timeout",
                "must be at least request_timeout",
            ));
        }
        if self.max_queries == 0 {
            return Err(ConfigError::new("max_queries", "must be positive"));
        }
        if self.max_requests_in_flight < self.k {
            return Err(ConfigError::new(
                "max_requests_in_flight",
                "must be at least k",
            ));
        }
        if self.max_queued_transmits < self.k || self.max_queued_events == 0 {
            return Err(ConfigError::new(
                "max_queued_transmits",
                "queues must hold at least k messages and one event",
            ));
        }
        if self.record_ttl.is_zero() || self.record_ttl > self.max_record_ttl {
            return Err(ConfigError::new(
                "record_ttl",
                "must be positive and at most max_record_ttl",
            ));
        }
        for (field, interval) in [
            ("republish_interval", self.republish_interval),
            ("refresh_interval", self.refresh_interval),
            ("expiry_sweep_interval", self.expiry_sweep_interval),
        ] {
            if interval.is_zero() {
                return Err(ConfigError::new(field, "must be positive"));
            }
        }
        Ok(())
    }
}

/// A [`DhtConfig`] field holds a value the DHT cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid DHT setting `{field}`: {reason}")]
pub struct ConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl ConfigError {
    fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let config = DhtConfig::new(7);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!((config.k, config.alpha), (20, 3));
        assert_eq!(config.dht_storage_bytes, 100 * 1024 * 1024);
        assert_eq!(config.provider_storage_bytes, 16 * 1024 * 1024);
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = DhtConfig::new(7);
        config.alpha = 0;
        assert_eq!(config.validate().map_err(|error| error.field), Err("alpha"));
        let mut config = DhtConfig::new(7);
        config.k = 33;
        assert_eq!(config.validate().map_err(|error| error.field), Err("k"));
    }
}
