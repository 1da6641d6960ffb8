//! # meshcore-sim
//!
//! A deterministic discrete-event simulator for Meshcore's sans-IO protocol cores: many
//! virtual nodes in one process, a seeded link model, virtual time. The same seed gives the
//! same run, to the message.
//!
//! **Architecture invariant:** the simulation itself never reads a clock and draws every
//! random number from RNGs seeded by the configuration. The only wall-clock reads are the
//! timings of whole runs in [`dht::run_dht`] and [`route::run_route`], kept apart from the
//! simulation.
//!
//! Modules:
//! - [`dht`]: the Kademlia DHT at scale ([`dht::run_dht`]).
//! - `queue`: the event queue both share (time order, ties in scheduling order).
//! - [`route`]: the mesh router on lines, rings, grids and random geometric graphs, with
//!   link failures ([`route::run_route`]).
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod dht;
mod queue;
pub mod route;
