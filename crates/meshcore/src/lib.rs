//! # meshcore
//!
//! The command-line front of a Meshcore node. `meshcore run` starts a node; the other
//! commands either read local files (`meshcore id`) or talk to a running node through its
//! HTTP API (`meshcore config …`). One file per subcommand lives in [`cli`].
#![cfg_attr(not(test), deny(clippy::unwrap_used))]

pub mod cli;
pub mod client;
