//! # meshcore-net
//!
//! The node's network driver. It owns the node's UDP sockets (an iroh QUIC endpoint bound
//! at `--listen`, and the data lane's socket beside it), runs every link in its own task, discovers peers on the
//! LAN, and drives the sans-IO [`PeerManager`](meshcore_proto::peers::PeerManager) from
//! one actor task, carrying out its decisions (dial, close, ask for peers).
//!
//! **Architecture invariant:** policy lives in `meshcore-proto`; this crate only moves
//! bytes, reads clocks and reports what happened. A peer that sends garbage costs a log
//! line, a counter and a blacklist entry — never a panic, never another peer's link.
//!
//! **Architecture invariant:** the store is written by a batching writer task; no link or
//! actor step waits on SQL.
//!
//! Modules:
//! - [`clock`]: wall time as the cores' `Timestamp`, and waiting for their timers.
//! - [`dht`]: the DHT driver (the Kademlia core over QUIC), record persistence and the
//!   DHT-backed address lookup.
//! - [`endpoint`]: building the iroh endpoint from the node key.
//! - [`forward`]: the forwarding plane: link tasks relay packets of established flows
//!   themselves, on the table and relay budget the routing driver shares with them.
//! - [`link`]: the transport-agnostic [`Link`](link::LinkHandle) handle, link metrics, and the
//!   QUIC link task (handshake, framing, ping, measurement).
//! - [`network`]: the actor and its [`network::Network`] handle.
//! - [`lan`]: mDNS discovery on the local network.
//! - [`lane`]: the data lane: routed packets as sealed UDP datagrams beside QUIC, received,
//!   relayed and sent in one task.
//! - [`ledger`]: the relay ledger's persistence (`meshcore_bandwidth_tokens`, the latest
//!   IOUs) and its API view; the routing driver keeps the ledger itself.
//! - [`persist`]: the batching writer of known nodes.
//! - [`routing`]: the routing driver (the mesh router over the links' data frames:
//!   forwarding, delivery, acknowledgements, the route table in `meshcore_routes`).
//! - [`webrtc`]: browser peers over WebRTC (str0m): sessions, their data channels, and the
//!   signaling hub.
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod clock;
pub mod dht;
pub mod endpoint;
pub mod forward;
pub mod lan;
pub mod lane;
pub mod ledger;
pub mod link;
pub mod network;
pub mod persist;
pub mod routing;
pub mod webrtc;

pub use network::{ConnectError, ConnectionInfo, Network, NetworkConfig};
