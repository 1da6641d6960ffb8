//! # meshcore-sim
//!
//! A deterministic discrete-event simulator for Meshcore's sans-IO protocol cores: many
//! virtual nodes in one process, a seeded link model, virtual time. The same seed gives the
//! same run, to the message.
//!
//! **Architecture invariant:** the simulation itself never reads a clock and draws every
//! random number from one RNG seeded by the configuration. The only wall-clock read is the
//! timing of a whole run in [`dht::run_dht`], kept apart from the simulation.
//!
//! Modules:
//! - [`dht`]: the Kademlia DHT at scale ([`dht::run_dht`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod dht;
