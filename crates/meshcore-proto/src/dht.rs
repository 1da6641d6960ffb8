//! The Kademlia DHT, as a sans-IO state machine.
//!
//! A [`DhtNode`] is one participant: it answers PING, FIND_NODE, FIND_VALUE, STORE,
//! ADD_PROVIDER and GET_PROVIDERS, runs iterative lookups for its own commands, keeps a
//! routing table of k-buckets, a record store and a provider store, and drives
//! republication, bucket refresh and expiry from timers. It owns no socket, no clock and no
//! task: the daemon drives it with real links and the simulator (`meshcore-sim`) with
//! virtual ones, and both see the same behaviour.
//!
//! Parameters follow the Kademlia paper (Maymounkov and Mazières, 2002): k = 20, α = 3,
//! 256 buckets over SHA-256 keys, XOR distance. Records are immutable (content-addressed)
//! or mutable and signed by their owner; see [`record`]. Provider records list the nodes
//! offering a service under one name (the service registry); see [`provider`].
//!
//! One file per concern:
//! - [`key`]: keys and XOR distance;
//! - [`kbucket`]: the routing table;
//! - [`lookup`]: the iterative lookup;
//! - [`record`]: records and their acceptance rules;
//! - [`provider`]: provider records and the provider store;
//! - [`store`]: the record store trait and its in-memory implementation;
//! - [`message`]: the wire protocol;
//! - [`envelope`]: the message framed with address hints for the peers it names;
//! - [`node`]: the node state machine;
//! - [`config`], [`time`]: its configuration and its notion of time.

pub mod config;
pub mod envelope;
pub mod kbucket;
pub mod key;
pub mod lookup;
pub mod message;
pub mod node;
pub mod provider;
pub mod record;
pub mod store;
pub mod time;

pub use config::{ConfigError, DhtConfig, DEFAULT_PROVIDER_STORAGE_BYTES, DEFAULT_STORAGE_BYTES};
pub use kbucket::{InsertOutcome, RoutingTable, TableEntry};
pub use key::{Distance, Key};
pub use lookup::{Lookup, LookupConfig, LookupStep};
pub use message::{decode, encode, Message, Request, RequestId, Response, WireError};
pub use node::{DhtCounters, DhtEvent, DhtNode, PutSummary, QueryError, QueryId, QueryStats};
pub use provider::{ProviderRecord, ProviderStore, MAX_PROVIDERS_PER_TOPIC, MAX_PROVIDER_INFO};
pub use record::{ImmutableRecord, MutableRecord, Record, RecordError, MAX_VALUE_SIZE};
pub use store::{MemoryRecordStore, RecordOrigin, RecordStore};
pub use time::Timestamp;
