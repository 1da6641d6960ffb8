//! `meshcore run`: start a node and serve its API until SIGINT or SIGTERM.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use meshcore_node::settings::{SettingKey, SettingsSources};
use meshcore_node::{Node, NodeConfig};
use tracing_subscriber::EnvFilter;

use super::{DataDirArg, DEFAULT_API, DEFAULT_LISTEN, DEFAULT_WEBRTC};

fn settings_help() -> String {
    let mut text = String::from(
        "Settings (--set NAME=VALUE, MESHCORE_<NAME>=VALUE, or top-level keys of the --config TOML file;\n\
         later sources win: config file < environment < --set < runtime changes made with\n\
         `meshcore config set` or PUT /v1/settings, which are stored and outlive a restart):\n",
    );
    for key in SettingKey::ALL {
        text.push_str(&format!("  {:<18} {}\n", key.name(), key.description()));
    }
    text.push_str("\nLogs go to stderr; set RUST_LOG (e.g. RUST_LOG=debug) to change the level.");
    text
}

/// Arguments of `meshcore run`.
#[derive(Debug, clap::Args)]
#[command(after_help = settings_help())]
pub struct RunArgs {
    #[command(flatten)]
    data_dir: DataDirArg,

    /// Address of the HTTP API (REST, and later WebSocket). Port 0 picks a free port.
    #[arg(long, env = "MESHCORE_API", value_name = "HOST:PORT", default_value = DEFAULT_API)]
    api: SocketAddr,

    /// UDP address for links with other nodes. Port 0 picks a free port.
    #[arg(long, env = "MESHCORE_LISTEN", value_name = "HOST:PORT", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// UDP address for browser peers (WebRTC data channels); an unspecified IP serves
    /// every interface address, port 0 picks a free port.
    #[arg(long, env = "MESHCORE_WEBRTC", value_name = "HOST:PORT", default_value = DEFAULT_WEBRTC, conflicts_with = "no_webrtc")]
    webrtc: SocketAddr,

    /// Do not accept browser peers (no WebRTC socket).
    #[arg(long)]
    no_webrtc: bool,

    /// A TOML file of settings (top-level keys are setting names).
    #[arg(long, env = "MESHCORE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Set a setting for this run, e.g. --set max_hops=7 (repeatable; lists are
    /// comma-separated or JSON).
    #[arg(long = "set", value_name = "NAME=VALUE")]
    settings: Vec<String>,

    /// A node to join the mesh through (repeatable); added to the bootstrap_urls setting.
    #[arg(long, value_name = "NODE_ID@HOST:PORT")]
    bootstrap: Vec<String>,

    /// Do not discover or announce on the local network (sets lan_discovery=false).
    #[arg(long)]
    no_lan: bool,
}

pub(super) fn run(args: RunArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(args))
}

async fn serve(args: RunArgs) -> anyhow::Result<()> {
    let data_dir = args.data_dir.resolve()?;
    let mut flags = SettingsSources::from_flags(&args.settings)?;
    if args.no_lan {
        flags.insert(SettingKey::LanDiscovery.name().to_owned(), false.into());
    }
    if !args.bootstrap.is_empty() {
        let mut list = match flags.remove(SettingKey::BootstrapUrls.name()) {
            Some(serde_json::Value::Array(list)) => list,
            Some(other) => vec![other],
            None => Vec::new(),
        };
        list.extend(
            args.bootstrap
                .iter()
                .cloned()
                .map(serde_json::Value::String),
        );
        flags.insert(
            SettingKey::BootstrapUrls.name().to_owned(),
            serde_json::Value::Array(list),
        );
    }
    let mut sources = SettingsSources {
        env: SettingsSources::from_env(std::env::vars()),
        flags,
        ..Default::default()
    };
    if let Some(path) = &args.config {
        sources.file = Some((path.clone(), SettingsSources::read_config_file(path)?));
    }
    warn_about_unknown_env();

    let node = Node::start(NodeConfig {
        data_dir: data_dir.clone(),
        listen: args.listen,
        webrtc: (!args.no_webrtc).then_some(args.webrtc),
        settings: sources,
    })
    .await?;

    let listener = match tokio::net::TcpListener::bind(args.api).await {
        Ok(listener) => listener,
        Err(error) => {
            node.shutdown().await?;
            return Err(match error.kind() {
                std::io::ErrorKind::AddrInUse => anyhow::anyhow!(
                    "the API address {} is already in use (is another meshcore node running?); choose another with --api",
                    args.api
                ),
                _ => anyhow::Error::new(error).context(format!("cannot bind the API address {} (--api)", args.api)),
            });
        }
    };
    let api_addr = listener.local_addr()?;
    let listen = node
        .listen_addrs()
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let webrtc = node.network().webrtc().map_or_else(
        || "off".to_owned(),
        |webrtc| {
            webrtc
                .local_addrs()
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        },
    );
    tracing::info!(node_id = %node.node_id(), api = %api_addr, %listen, %webrtc, data_dir = %data_dir.display(), "node running");
    // One line on stdout that scripts can read: who this node is and where it listens.
    println!(
        "node_id={} api=http://{api_addr} listen={listen} webrtc={webrtc}",
        node.node_id()
    );

    let served = meshcore_api::serve(listener, node.clone(), shutdown_signal()).await;
    tracing::info!("API stopped; flushing the store");
    node.shutdown().await?;
    served.context("the API server failed")?;
    tracing::info!("stopped cleanly");
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(stream) => Some(stream),
        Err(error) => {
            tracing::warn!(%error, "cannot watch SIGTERM; only SIGINT will stop the node");
            None
        }
    };
    let terminated = async {
        match terminate.as_mut() {
            Some(stream) => {
                stream.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received; shutting down"),
        () = terminated => tracing::info!("SIGTERM received; shutting down"),
    }
}

/// Process options read through clap, not settings.
const PROCESS_ENV: [&str; 4] = [
    "MESHCORE_API",
    "MESHCORE_LISTEN",
    "MESHCORE_DATA_DIR",
    "MESHCORE_CONFIG",
];

fn warn_about_unknown_env() {
    for (name, _) in std::env::vars() {
        let is_setting = SettingKey::ALL.iter().any(|key| key.env_var() == name);
        if name.starts_with("MESHCORE_") && !is_setting && !PROCESS_ENV.contains(&name.as_str()) {
            tracing::warn!(variable = %name, "ignoring an environment variable that names no setting");
        }
    }
}
