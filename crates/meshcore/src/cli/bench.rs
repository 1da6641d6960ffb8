//! `meshcore bench`: measurements of the real code against baselines taken in the same run.
//! Everything runs on loopback (127.0.0.1) with LAN discovery off.

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use meshcore_net::{Network, NetworkConfig};
use meshcore_node::settings::SettingsSources;
use meshcore_node::{Node, NodeConfig};
use meshcore_proto::link::Capabilities;
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::Store;
use serde::Serialize;
use serde_json::json;

mod dht;
mod relay;
mod route;
mod throughput;

/// How long any single step of a benchmark may take.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// Arguments of `meshcore bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    #[command(subcommand)]
    what: BenchKind,
}

#[derive(Debug, clap::Subcommand)]
enum BenchKind {
    /// Links: start-up to first link and to min_connections, link setup, link RTT against a
    /// raw UDP round trip, and resident memory idle and with 50 links.
    Links {
        /// Start-up measurements (each with a fresh data directory).
        #[arg(long, default_value_t = 5)]
        starts: usize,
        /// Link setups to time.
        #[arg(long, default_value_t = 30)]
        setups: usize,
        /// Round trips to time, over the link and over raw UDP.
        #[arg(long, default_value_t = 2000)]
        pings: usize,
        /// Links held by the node whose memory is measured.
        #[arg(long, default_value_t = 50)]
        links: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The DHT on real processes: a value put on one node read from every other (put time,
    /// get latency).
    Dht {
        /// Node processes, joined through the first.
        #[arg(long, default_value_t = 20)]
        nodes: usize,
        /// Repeated reads per node after the first.
        #[arg(long, default_value_t = 5)]
        reads: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Single-link throughput: data frames over a Meshcore link against a plain QUIC
    /// (quinn) stream, both on loopback in the same run.
    Throughput {
        /// MiB sent per transfer.
        #[arg(long, default_value_t = 256)]
        mib: u64,
        /// Bytes per data frame (and per write on the QUIC stream); at most 65536.
        #[arg(long, default_value_t = 16 * 1024, value_parser = clap::value_parser!(u32).range(1..=65536))]
        frame: u32,
        /// Transfers of each kind; medians are reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Multi-hop routing: latency added per relay (lines of 0–3 relays), a relay's
    /// per-packet forwarding rate, end-to-end throughput through relays, memory per route
    /// and the time to deliver again after the relay in use goes away.
    Route {
        /// Timed round trips per line.
        #[arg(long, default_value_t = 1000)]
        samples: usize,
        /// Untimed round trips per line before them.
        #[arg(long, default_value_t = 200)]
        warmup: usize,
        /// Packets through `route_packet` in the relay microbenchmark.
        #[arg(long, default_value_t = 2_000_000)]
        packets: u64,
        /// Routes installed in a router for the memory measurement.
        #[arg(long, default_value_t = 20_000)]
        routes: usize,
        /// MiB sent through each line for end-to-end throughput (0: skip).
        #[arg(long, default_value_t = 64)]
        mib: u64,
        /// Bytes per message for end-to-end throughput.
        #[arg(long, default_value_t = 16 * 1024)]
        message: usize,
        /// Messages in flight for end-to-end throughput.
        #[arg(long, default_value_t = 32)]
        in_flight: usize,
        /// Link-failure recoveries timed.
        #[arg(long, default_value_t = 10)]
        recoveries: usize,
        /// Relays forward only through their routing driver, not in their link tasks (the
        /// path before the forwarding plane, for comparison).
        #[arg(long)]
        no_fast_path: bool,
        /// Links carry routed packets inside QUIC only, not on the UDP data lane (the path
        /// before the lane, for comparison).
        #[arg(long)]
        no_lane: bool,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
    /// The relay budget: sources → relay → destination in one process. Forwarded
    /// throughput against `relay_bandwidth` for each cap, the throughput two normal sources
    /// keep when a third floods the relay, and a relay with relaying off.
    Relay {
        /// Caps (`relay_bandwidth`) to measure, KiB per second.
        #[arg(long, value_delimiter = ',', default_values_t = [1024, 2048, 4096])]
        cap_kib: Vec<u64>,
        /// The cap of the fairness measurement, KiB per second.
        #[arg(long, default_value_t = 2048)]
        fair_cap_kib: u64,
        /// Measured seconds per phase.
        #[arg(long, default_value_t = 5.0)]
        seconds: f64,
        /// Unmeasured seconds before each phase.
        #[arg(long, default_value_t = 1.0)]
        warmup: f64,
        /// Payload bytes per datagram.
        #[arg(long, default_value_t = 8192)]
        message: usize,
        /// Print the results as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Serialize)]
struct Summary {
    samples: usize,
    median_ms: f64,
    p90_ms: f64,
    max_ms: f64,
}

fn summarize(mut samples: Vec<Duration>) -> Summary {
    samples.sort();
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .map_or(0.0, |d| d.as_secs_f64() * 1e3)
    };
    Summary {
        samples: samples.len(),
        median_ms: at(0.5),
        p90_ms: at(0.9),
        max_ms: at(1.0),
    }
}

pub(super) fn run(args: BenchArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    match args.what {
        BenchKind::Links {
            starts,
            setups,
            pings,
            links,
            json,
        } => runtime.block_on(links_bench(starts, setups, pings, links, json)),
        BenchKind::Dht { nodes, reads, json } => runtime.block_on(dht::bench(nodes, reads, json)),
        BenchKind::Throughput {
            mib,
            frame,
            runs,
            json,
        } => runtime.block_on(throughput::bench(mib, frame as usize, runs, json)),
        BenchKind::Route {
            samples,
            warmup,
            packets,
            routes,
            mib,
            message,
            in_flight,
            recoveries,
            no_fast_path,
            no_lane,
            json,
        } => runtime.block_on(route::bench(route::RouteBenchArgs {
            samples,
            warmup,
            packets,
            routes,
            bulk_bytes: mib * 1024 * 1024,
            message,
            in_flight,
            recoveries,
            paths: route::DataPaths {
                fast_path: !no_fast_path,
                lane: !no_lane,
            },
            json,
        })),
        BenchKind::Relay {
            cap_kib,
            fair_cap_kib,
            seconds,
            warmup,
            message,
            json,
        } => runtime.block_on(relay::bench(relay::RelayBenchArgs {
            caps: cap_kib.iter().map(|kib| kib * 1024).collect(),
            fair_cap: fair_cap_kib * 1024,
            seconds,
            warmup,
            message,
            json,
        })),
    }
}

/// A `meshcore run` child process on loopback.
struct ChildNode {
    child: std::process::Child,
    node_id: String,
    listen: SocketAddr,
    api: String,
    _dir: tempfile::TempDir,
}

impl ChildNode {
    fn start(extra: &[&str]) -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let mut child = Command::new(std::env::current_exe()?)
            .args([
                "run",
                "--no-lan",
                "--api",
                "127.0.0.1:0",
                "--listen",
                "127.0.0.1:0",
                "--webrtc",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(dir.path())
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start a node process")?;
        let stdout = child.stdout.take().context("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(STEP_TIMEOUT)
            .context("the node did not report ready")?;
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")).map(str::to_owned))
                .ok_or_else(|| anyhow!("no {name}= in {line:?}"))
        };
        Ok(Self {
            node_id: field("node_id")?,
            listen: field("listen")?.parse()?,
            api: field("api")?,
            child,
            _dir: dir,
        })
    }

    fn id(&self) -> anyhow::Result<NodeId> {
        Ok(self.node_id.parse()?)
    }

    /// The URL of `path` on the node's API.
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    fn address(&self) -> String {
        format!("{}@{}", self.node_id, self.listen)
    }

    /// Resident memory from /proc, in MiB.
    fn rss_mib(&self) -> anyhow::Result<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let kib: f64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .context("no VmRSS")?;
        Ok(kib / 1024.0)
    }
}

impl Drop for ChildNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn in_process_network(min_links: usize, bootstrap: Vec<String>) -> anyhow::Result<Network> {
    let keys = NodeKeypair::generate(&mut rand::rngs::OsRng);
    let config = NetworkConfig {
        listen: "127.0.0.1:0".parse()?,
        bootstrap,
        lan: false,
        pex: true,
        min_links,
        max_links: 50,
        relay_urls: Vec::new(),
        capabilities: Capabilities::empty(),
        rng_seed: rand::random(),
        dht_storage_bytes: meshcore_proto::dht::DEFAULT_STORAGE_BYTES,
        dht_discovery: false,
        allowed_peers: Vec::new(),
        routing: None,
        webrtc: None,
        data_lane: true,
    };
    Ok(Network::start(&keys, config, Store::open_in_memory().await?).await?)
}

async fn wait_for_links(network: &Network, count: usize) -> anyhow::Result<()> {
    let mut links = network.subscribe_link_count();
    tokio::time::timeout(STEP_TIMEOUT, links.wait_for(|n| *n >= count))
        .await
        .map_err(|_| anyhow!("no {count} links within {STEP_TIMEOUT:?}"))?
        .map_err(|_| anyhow!("network stopped"))?;
    Ok(())
}

async fn udp_round_trips(count: usize) -> anyhow::Result<Vec<Duration>> {
    let echo = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let echo_addr = echo.local_addr()?;
    let server = tokio::spawn(async move {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = echo.recv_from(&mut buf).await {
            if echo.send_to(&buf[..n], from).await.is_err() {
                break;
            }
        }
    });
    let client = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    client.connect(echo_addr).await?;
    let mut samples = Vec::with_capacity(count);
    let mut buf = [0u8; 64];
    for i in 0..count as u64 {
        let started = Instant::now();
        client.send(&i.to_be_bytes()).await?;
        tokio::time::timeout(STEP_TIMEOUT, client.recv(&mut buf))
            .await
            .context("UDP echo timed out")??;
        samples.push(started.elapsed());
    }
    server.abort();
    Ok(samples)
}

async fn links_bench(
    starts: usize,
    setups: usize,
    pings: usize,
    links: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    // A small mesh to join: a hub and three members, all linked.
    let hub = ChildNode::start(&[])?;
    let members: Vec<ChildNode> = (0..3)
        .map(|_| ChildNode::start(&["--bootstrap", &hub.address()]))
        .collect::<Result<_, _>>()?;

    // 1. Node start (data dir, key, SQLite migrations, endpoint) → first link → min_connections.
    let (mut first, mut min) = (Vec::new(), Vec::new());
    for _ in 0..starts {
        let dir = tempfile::tempdir()?;
        let sources = SettingsSources {
            flags: serde_json::Map::from_iter([
                ("lan_discovery".to_owned(), json!(false)),
                ("bootstrap_urls".to_owned(), json!([hub.address()])),
            ]),
            ..Default::default()
        };
        let started = Instant::now();
        let node = Node::start(NodeConfig {
            data_dir: dir.path().to_owned(),
            listen: "127.0.0.1:0".parse()?,
            webrtc: Some("127.0.0.1:0".parse()?),
            settings: sources,
        })
        .await?;
        wait_for_links(node.network(), 1).await?;
        first.push(started.elapsed());
        wait_for_links(node.network(), 3).await?;
        min.push(started.elapsed());
        node.shutdown().await?;
    }

    // 2. Link setup: dial, QUIC handshake, Hello exchange, accepted by both peer managers.
    let dialer = in_process_network(0, Vec::new()).await?;
    let mut setup = Vec::new();
    for _ in 0..setups {
        let target = in_process_network(0, Vec::new()).await?;
        let addrs = target.listen_addrs();
        let started = Instant::now();
        dialer
            .connect(target.node_id(), addrs, STEP_TIMEOUT)
            .await?;
        setup.push(started.elapsed());
        target.shutdown().await;
    }

    // 3. Round trips: Ping/Pong over a link against a raw UDP echo, in the same run.
    let peer = in_process_network(0, Vec::new()).await?;
    dialer
        .connect(peer.node_id(), peer.listen_addrs(), STEP_TIMEOUT)
        .await?;
    let mut link_rtt = Vec::with_capacity(pings);
    for _ in 0..pings {
        link_rtt.push(dialer.ping(peer.node_id(), STEP_TIMEOUT).await?);
    }
    let udp_rtt = udp_round_trips(pings).await?;

    // 4. Resident memory of a node process: idle, then holding `links` links.
    let measured = ChildNode::start(&["--set", &format!("max_connections={}", links.max(1))])?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_rss = measured.rss_mib()?;
    let mut clients = Vec::new();
    for _ in 0..links {
        let client = in_process_network(0, Vec::new()).await?;
        client
            .connect(measured.id()?, vec![measured.listen], STEP_TIMEOUT)
            .await?;
        clients.push(client);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let loaded_rss = measured.rss_mib()?;

    let (link_rtt, udp_rtt) = (summarize(link_rtt), summarize(udp_rtt));
    let ratio = if udp_rtt.median_ms > 0.0 {
        link_rtt.median_ms / udp_rtt.median_ms
    } else {
        0.0
    };
    let report = json!({
        "start_to_first_link": summarize(first),
        "start_to_min_connections": summarize(min),
        "link_setup": summarize(setup),
        "link_rtt": link_rtt,
        "udp_rtt_baseline": udp_rtt,
        "link_rtt_over_udp_median_ratio": ratio,
        "rss_idle_mib": idle_rss,
        "rss_with_links_mib": loaded_rss,
        "links_held": links,
    });
    for client in clients {
        client.shutdown().await;
    }
    drop((hub, members, measured));
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        let row = |name: &str, key: &str| {
            let s = &report[key];
            println!(
                "{name:<34} median {:>8.3} ms   p90 {:>8.3} ms   max {:>8.3} ms   (n={})",
                s["median_ms"].as_f64().unwrap_or(0.0),
                s["p90_ms"].as_f64().unwrap_or(0.0),
                s["max_ms"].as_f64().unwrap_or(0.0),
                s["samples"]
            );
        };
        row("node start → first link", "start_to_first_link");
        row(
            "node start → min_connections (3)",
            "start_to_min_connections",
        );
        row("link setup (dial + handshake)", "link_setup");
        row("link RTT (Ping/Pong)", "link_rtt");
        row("raw UDP RTT (baseline)", "udp_rtt_baseline");
        println!("{:<34} {ratio:.2}×", "link RTT / UDP RTT (medians)");
        println!("{:<34} {idle_rss:.1} MiB", "RSS, idle node");
        println!(
            "{:<34} {loaded_rss:.1} MiB",
            format!("RSS, node with {links} links")
        );
    }
    Ok(())
}
