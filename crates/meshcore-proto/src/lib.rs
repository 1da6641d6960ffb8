//! # meshcore-proto
//!
//! The protocol core of Meshcore: everything that decides what a node says and believes,
//! with none of the machinery that moves bytes.
//!
//! **Architecture invariant:** nothing in this crate performs I/O, reads a clock, spawns a
//! task or draws from a global random number generator. Time and randomness are arguments.
//! This is what lets the daemon and the deterministic simulator run the same code.
//!
//! Modules:
//! - [`bandwidth`]: per-peer and per-application limits on the node's own sends.
//! - [`browser`]: the browser peer protocol (WebRTC data-channel messages, DTLS fingerprint binding).
//! - [`browser_mesh`]: messages to and from browsers carried between nodes (envelopes, receipts, signed browser messages, replay guard).
//! - [`dht`]: the Kademlia DHT (routing table, lookups, records, the `DhtNode` state machine).
//! - [`e2e`]: end-to-end encryption of routed payloads (X25519 + HKDF-SHA256 → AES-256-GCM, replay window).
//! - [`identity`]: node identities (Ed25519), node ids and domain-separated signatures.
//! - [`lane`]: the data lane's datagrams and keys (per-link X25519 → HKDF-SHA256 → AES-256-GCM, counter nonces, replay window).
//! - [`ledger`]: the relay ledger (pay-per-forward charges, signed cumulative IOUs, credit limits).
//! - [`link`]: the link protocol messages and link quality.
//! - [`peers`]: the peer manager (connection policy, backoff, blacklist, peer exchange).
//! - [`relay`]: the relay budget (fair-share limiter over flows) and refusal notices.
//! - [`route`]: the mesh router (AODV-style discovery, feasibility-checked loop freedom, hellos, Dijkstra).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod bandwidth;
pub mod browser;
pub mod browser_mesh;
pub mod dht;
pub mod e2e;
pub mod identity;
pub mod lane;
pub mod ledger;
pub mod link;
pub mod peers;
pub mod relay;
pub mod route;

pub use identity::{NodeId, NodeKeypair, NodeSignature, SignatureDomain, SignatureError};
