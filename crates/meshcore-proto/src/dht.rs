//! The Kademlia DHT, as a sans-IO state machine.
//!
//! A [`DhtNode`] is one participant: it answers PING, FIND_NODE, FIND_VALUE and STORE,
//! runs iterative lookups for its own commands, keeps a routing table of k-buckets and a
//! record store, and drives republication, bucket refresh and expiry from timers. It owns
//! no socket, no clock and no task: the daemon drives it with real links and the
//! simulator (`meshcore-sim`) with virtual ones, and both see the same behaviour.
//!
//! Parameters follow the Kademlia paper (Maymounkov and Mazières, 2002): k = 20, α = 3,
//! 256 buckets over SHA-256 keys, XOR distance. Records are immutable (content-addressed)
//! or mutable and signed by their owner; see [`record`].
//!
//! One file per concern:
//! - [`key`]: keys and XOR distance;
//! - [`kbucket`]: the routing table;
//! - [`lookup`]: the iterative lookup;
//! - [`record`]: records and their acceptance rules;
//! - [`store`]: the record store trait and its in-memory implementation;
//! - [`message`]: the wire protocol;
//! - [`node`]: the node state machine;
//! - [`config`], [`time`]: its configuration and its notion of time.

pub mod config;
pub mod kbucket;
pub mod key;
pub mod lookup;
pub mod message;
pub mod node;
pub mod record;
pub mod store;
pub mod time;

pub use config::{ConfigError, DhtConfig, DEFAULT_STORAGE_BYTES};
pub use kbucket::{InsertOutcome, RoutingTable, TableEntry};
pub use key::{Distance, Key};
pub use lookup::{Lookup, LookupConfig, LookupStep};
pub use message::{decode, encode, Message, Request, RequestId, Response, WireError};
pub use node::{DhtCounters, DhtEvent, DhtNode, PutSummary, QueryError, QueryId, QueryStats};
pub use record::{ImmutableRecord, MutableRecord, Record, RecordError, MAX_VALUE_SIZE};
pub use store::{MemoryRecordStore, RecordOrigin, RecordStore};
pub use time::Timestamp;
