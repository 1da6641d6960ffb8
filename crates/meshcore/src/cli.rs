//! The command line: one struct for the whole grammar, one module per subcommand.

mod bench;
mod config;
mod dht;
mod id;
mod peers;
mod route;
mod run;
mod sim;
mod tokens;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Default address of the HTTP API.
pub const DEFAULT_API: &str = "127.0.0.1:8420";

/// Default address of the peer-link UDP socket.
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8421";

/// Default UDP address for browser peers (WebRTC).
pub const DEFAULT_WEBRTC: &str = "0.0.0.0:8422";

/// Meshcore: a mesh-networking node. Peers find each other, hold encrypted links, route
/// packets over many hops, store data in a DHT and relay traffic for each other.
#[derive(Debug, Parser)]
#[command(name = "meshcore", version, propagate_version = true)]
pub struct Cli {
    /// The command to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a node until SIGINT or SIGTERM.
    Run(run::RunArgs),
    /// Print this node's id (creating the identity if the data directory has none).
    Id(id::IdArgs),
    /// Read or change the settings of a running node.
    Config(config::ConfigArgs),
    /// List the links of a running node.
    Peers(peers::PeersArgs),
    /// Link a running node to another node.
    Connect(peers::ConnectArgs),
    /// Store and find values in the DHT through a running node.
    Dht(dht::DhtArgs),
    /// Find routes through a running node.
    Route(route::RouteArgs),
    /// Send a message to another node, or to a browser on any node, over the mesh and wait
    /// for its acknowledgement (end-to-end encrypted between the nodes).
    Send(route::SendArgs),
    /// Show a running node's relay tokens: balance, earned, spent, and per neighbour the
    /// credit, debt and latest signed IOUs.
    Tokens(tokens::TokensArgs),
    /// Measure the node against baselines in the same run (see BENCHMARKS.md).
    Bench(bench::BenchArgs),
    /// Run the protocol cores over thousands of simulated nodes, deterministically.
    Sim(sim::SimArgs),
}

/// The data directory flag, shared by the commands that read local files.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArg {
    /// Where the node keeps its key file (node.key) and database (meshcore.db).
    /// [default: the per-user data directory, e.g. ~/.local/share/meshcore]
    #[arg(long, env = "MESHCORE_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
}

impl DataDirArg {
    /// The directory given, or the per-user default.
    pub fn resolve(&self) -> anyhow::Result<PathBuf> {
        match &self.data_dir {
            Some(dir) => Ok(dir.clone()),
            None => Ok(meshcore_node::data_dir::default_data_dir()?),
        }
    }
}

/// The API address flag, shared by the commands that talk to a running node.
#[derive(Debug, Clone, clap::Args)]
pub struct ApiArg {
    /// The HTTP API of the node to talk to, as HOST:PORT or a URL.
    #[arg(long, env = "MESHCORE_API", value_name = "HOST:PORT", default_value = DEFAULT_API)]
    pub api: String,
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run::run(args),
        Command::Id(args) => id::run(args),
        Command::Config(args) => config::run(args),
        Command::Peers(args) => peers::list(args),
        Command::Connect(args) => peers::connect(args),
        Command::Dht(args) => dht::run(args),
        Command::Route(args) => route::run(args),
        Command::Send(args) => route::send(args),
        Command::Tokens(args) => tokens::run(args),
        Command::Bench(args) => bench::run(args),
        Command::Sim(args) => sim::run(args),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn every_flag_has_help() {
        fn check(command: &clap::Command) {
            for arg in command.get_arguments() {
                let id = arg.get_id().as_str();
                if id != "help" && id != "version" {
                    assert!(
                        arg.get_help().is_some(),
                        "{} --{id} has no help",
                        command.get_name()
                    );
                }
            }
            for sub in command.get_subcommands() {
                assert!(sub.get_about().is_some(), "{} has no help", sub.get_name());
                check(sub);
            }
        }
        check(&Cli::command());
    }
}
