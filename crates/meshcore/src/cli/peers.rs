//! `meshcore peers` and `meshcore connect`: a running node's links.

use anyhow::{anyhow, Context};
use reqwest::Method;
use serde_json::{json, Value};

use super::ApiArg;
use crate::client::ApiClient;

/// Arguments of `meshcore peers`.
#[derive(Debug, clap::Args)]
pub struct PeersArgs {
    #[command(flatten)]
    api: ApiArg,
    /// Print the links as JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// Arguments of `meshcore connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    #[command(flatten)]
    api: ApiArg,
    /// The node to link to, as NODE_ID@HOST:PORT (or NODE_ID alone if its address is known).
    peer: String,
}

pub(super) fn block_on<T>(
    future: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(future)
}

pub(super) fn list(args: PeersArgs) -> anyhow::Result<()> {
    let client = ApiClient::new(&args.api.api)?;
    let links = block_on(client.request(Method::GET, "/connections", None))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&links)?);
        return Ok(());
    }
    let links = links.as_array().cloned().unwrap_or_default();
    if links.is_empty() {
        println!("no links");
        return Ok(());
    }
    println!(
        "{:<64}  {:<4}  {:<8}  {:>8}  {:>7}  {:>6}  {:>12}  {:>12}  ADDRESS",
        "NODE", "TYPE", "DIR", "RTT(ms)", "LOSS", "QUAL", "SENT", "RECEIVED"
    );
    for link in links {
        let text = |key: &str| link[key].as_str().unwrap_or("-").to_owned();
        let number = |key: &str| link[key].as_f64().unwrap_or(0.0);
        println!(
            "{:<64}  {:<4}  {:<8}  {:>8.2}  {:>6.2}%  {:>6.2}  {:>12}  {:>12}  {}",
            text("remote_node_id"),
            text("connection_type"),
            text("direction"),
            number("latency"),
            number("packet_loss") * 100.0,
            number("quality_score"),
            link["bytes_sent"].as_u64().unwrap_or(0),
            link["bytes_received"].as_u64().unwrap_or(0),
            text("remote_addr"),
        );
    }
    Ok(())
}

pub(super) fn connect(args: ConnectArgs) -> anyhow::Result<()> {
    let (peer_id, addrs) = match args.peer.split_once('@') {
        Some((id, addr)) => {
            let resolved: Vec<String> = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .with_context(|| format!("cannot resolve {addr:?} (HOST:PORT)"))?
                .map(|a| a.to_string())
                .collect();
            (id.to_owned(), resolved)
        }
        None => (args.peer.clone(), Vec::new()),
    };
    if peer_id.len() != 64 {
        return Err(anyhow!(
            "{peer_id:?} is not a node id (64 hex characters); expected NODE_ID@HOST:PORT"
        ));
    }
    let client = ApiClient::new(&args.api.api)?;
    let body = json!({"peer_id": peer_id, "peer_info": {"addrs": addrs}});
    let answer: Value = block_on(client.request(Method::POST, "/connect", Some(&body)))?;
    let link = &answer["connection"];
    println!(
        "linked to {} ({} {}, {:.2} ms)",
        link["remote_node_id"].as_str().unwrap_or("?"),
        link["connection_type"].as_str().unwrap_or("?"),
        link["direction"].as_str().unwrap_or("?"),
        link["latency"].as_f64().unwrap_or(0.0)
    );
    Ok(())
}
