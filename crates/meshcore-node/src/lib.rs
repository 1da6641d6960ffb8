//! # meshcore-node
//!
//! The node runtime that the API and the CLI drive: it prepares the data directory, loads or
//! creates the node's identity, opens the store, resolves settings from their sources, binds
//! the peer-link socket and answers questions about the live node.
//!
//! Modules:
//! - [`data_dir`]: the per-user default data directory and the writability check.
//! - [`identity_file`]: the Ed25519 key file (`node.key`, mode 0600).
//! - [`settings`]: every setting with its default, its rules, and how sources are layered.
//! - [`node`]: the running node and its handle.
//! - [`records`]: the key–value face of the DHT (`dht/put`, `dht/get`): named records
//!   signed by their owner, and content-addressed ones.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod data_dir;
pub mod identity_file;
pub mod node;
pub mod records;
pub mod settings;

pub use node::{Node, NodeConfig, NodeError, NodeInfo, NodeStats};
pub use settings::{FieldError, SettingKey, Settings, SettingsError, SettingsSources};
