//! `meshcore route find` and `meshcore send`: a running node's routes and messages.

use reqwest::Method;
use serde_json::json;

use super::ApiArg;
use crate::client::ApiClient;

/// Arguments of `meshcore route`.
#[derive(Debug, clap::Args)]
pub struct RouteArgs {
    #[command(subcommand)]
    what: RouteCommand,
}

#[derive(Debug, clap::Subcommand)]
enum RouteCommand {
    /// Find a route to NODE_ID (the known one, or by discovery up to max_hops) and print it.
    Find {
        #[command(flatten)]
        api: ApiArg,
        /// The destination's node id.
        node_id: String,
        /// Print the node's whole answer as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Arguments of `meshcore send`.
#[derive(Debug, clap::Args)]
pub struct SendArgs {
    #[command(flatten)]
    api: ApiArg,
    /// The destination's id: a node, or a browser on any node (found in the DHT).
    node_id: String,
    /// The message. It is end-to-end encrypted: relays on the path see only the routing
    /// header.
    text: String,
    /// The sending application's name, to which the node's `app_bandwidth` limit applies
    /// (letters, digits, `.`, `_`, `-`, `:`; at most 64).
    #[arg(long, default_value = "api")]
    app: String,
    /// Print the node's whole answer as JSON.
    #[arg(long)]
    json: bool,
}

pub(super) fn run(args: RouteArgs) -> anyhow::Result<()> {
    match args.what {
        RouteCommand::Find { api, node_id, json } => {
            let client = ApiClient::new(&api.api)?;
            let body = json!({ "destination": node_id });
            let answer =
                super::peers::block_on(client.request(Method::POST, "/route/find", Some(&body)))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&answer)?);
            } else {
                let path: Vec<&str> = answer["path"]
                    .as_array()
                    .map(|path| path.iter().filter_map(|id| id.as_str()).collect())
                    .unwrap_or_default();
                // path_price is in milli-tokens per MB.
                println!(
                    "{} hops via {} (quality {:.3}, cost {}, price {:.3} tokens/MB)",
                    answer["hop_count"],
                    answer["next_hop"].as_str().unwrap_or("?"),
                    answer["path_quality"].as_f64().unwrap_or(0.0),
                    answer["path_cost"],
                    answer["path_price"].as_f64().unwrap_or(0.0) / 1000.0
                );
                for (hop, node) in path.iter().enumerate() {
                    println!("  {:>2}  {node}", hop + 1);
                }
            }
        }
    }
    Ok(())
}

pub(super) fn send(args: SendArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api.api)?;
    let body = json!({ "destination": args.node_id, "payload": args.text, "app": args.app });
    let answer = super::peers::block_on(client.request(Method::POST, "/messages", Some(&body)))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&answer)?);
    } else {
        println!(
            "delivered over {} hops, acknowledged in {:.1} ms",
            answer["hops"],
            answer["rtt_ms"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}
