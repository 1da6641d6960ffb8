//! Multi-hop routing: in-process networks with the routing driver on 127.0.0.1, arranged
//! as lines (and a square) with `allowed_peers` so that each node links only to its
//! neighbours. Measures, in one run:
//!
//! 1. the latency a relay adds: round trips of [`Routing::send`] (message out, sealed
//!    acknowledgement back) timed by the caller, over a direct link and over lines with 1,
//!    2, 3 relays; each relay is crossed twice per round trip, so the added latency per
//!    relay crossing is `(RTT_k − RTT_0) / 2k`. The four lines run side by side and take
//!    turns, one probe each, so that whatever else the machine does weighs on all of them
//!    alike;
//! 2. a relay's per-packet work ([`route_packet`] on 1400-byte data frames: header decode,
//!    next-hop lookup, copy and hop-limit decrement) in a tight loop on one thread, and
//!    end-to-end message throughput through 0–3 relays (many `send`s in flight);
//! 3. the memory a route costs in a [`Router`]: resident-set growth while a router learns
//!    reverse routes from route requests of distinct originators;
//! 4. the time to deliver again after the relay in use goes away, on a square a–b–d, a–c–d.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use meshcore_net::routing::{
    route_packet, PacketAction, Routing, RoutingOptions, MAX_PAYLOAD, MESSAGE_FLOW, TAG_DATA,
};
use meshcore_net::{Network, NetworkConfig};
use meshcore_proto::link::Capabilities;
use meshcore_proto::route::{
    LinkQuality, PacketHeader, RouteMessage, Router, RouterConfig, Rreq, SignedAdvert, Timestamp,
};
use meshcore_proto::{NodeId, NodeKeypair};
use meshcore_store::Store;
use serde::Serialize;
use serde_json::json;

use super::STEP_TIMEOUT;

/// What `meshcore bench route` is asked for.
#[derive(Debug, Clone, Copy)]
pub(super) struct RouteBenchArgs {
    /// Timed round trips per line.
    pub(super) samples: usize,
    /// Untimed round trips per line before them.
    pub(super) warmup: usize,
    /// `route_packet` calls in the relay microbenchmark.
    pub(super) packets: u64,
    /// Routes installed for the memory measurement.
    pub(super) routes: usize,
    /// Bytes sent through each line for end-to-end throughput (0: skip).
    pub(super) bulk_bytes: u64,
    /// Message size for end-to-end throughput.
    pub(super) message: usize,
    /// Messages in flight for end-to-end throughput.
    pub(super) in_flight: usize,
    /// Link-failure recoveries timed.
    pub(super) recoveries: usize,
    /// Which data paths the nodes use.
    pub(super) paths: DataPaths,
    /// Print JSON.
    pub(super) json: bool,
}

/// The data paths of a bench's nodes.
#[derive(Debug, Clone, Copy)]
pub(super) struct DataPaths {
    /// Relays forward in the task that received a packet (link task or lane), not only
    /// through their routing driver.
    pub(super) fast_path: bool,
    /// Links carry routed packets on the UDP data lane, not only inside QUIC.
    pub(super) lane: bool,
}

impl DataPaths {
    /// What a node runs by default.
    pub(super) const DEFAULT: Self = Self {
        fast_path: true,
        lane: true,
    };
}

/// Relays on the lines measured.
const RELAYS: [usize; 4] = [0, 1, 2, 3];

/// `relay_bandwidth` of the bench's nodes: 100 GiB/s, far above what they can forward.
const UNCAPPED_RELAY_BANDWIDTH: u64 = 100 << 30;
/// Bytes of the probe messages for latency.
const PROBE_BYTES: usize = 64;
/// Bytes of a data frame in the relay microbenchmark.
const RELAY_FRAME: usize = 1400;

#[derive(Debug, Clone, Copy, Serialize)]
struct Quantiles {
    samples: usize,
    median_us: f64,
    p90_us: f64,
    p99_us: f64,
    max_us: f64,
}

fn quantiles(mut samples: Vec<f64>) -> Quantiles {
    samples.sort_by(f64::total_cmp);
    let at = |q: f64| {
        samples
            .get(((samples.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Quantiles {
        samples: samples.len(),
        median_us: at(0.5),
        p90_us: at(0.9),
        p99_us: at(0.99),
        max_us: at(1.0),
    }
}

#[derive(Debug, Serialize)]
struct LineLatency {
    relays: usize,
    /// Links crossed one way, as the acknowledgement reports.
    hops: u8,
    /// Round trip timed around `Routing::send`.
    rtt: Quantiles,
    /// The driver's own `Delivery.rtt_ms` (from queuing the packet to the acknowledgement).
    driver_rtt: Quantiles,
    /// `(median RTT − direct median RTT) / 2k`; none for the direct link.
    added_per_relay_median_us: Option<f64>,
    /// `(p99 RTT − direct p99 RTT) / 2k`.
    added_per_relay_p99_us: Option<f64>,
}

#[derive(Debug, Serialize)]
struct LineThroughput {
    relays: usize,
    messages_acknowledged: u64,
    messages_failed: u64,
    payload_bytes_acknowledged: u64,
    seconds: f64,
    mib_per_s: f64,
    gbit_per_s: f64,
    /// Against the direct link in the same run.
    ratio_to_direct: f64,
}

fn unix_now() -> Timestamp {
    Timestamp::from_millis(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    )
}

/// A network with the routing driver that links only with `allowed`.
async fn routed_network(
    keys: &NodeKeypair,
    allowed: Vec<NodeId>,
    paths: DataPaths,
) -> anyhow::Result<Network> {
    let config = NetworkConfig {
        listen: "127.0.0.1:0".parse()?,
        bootstrap: Vec::new(),
        lan: false,
        pex: false,
        min_links: 0,
        max_links: 50,
        relay_urls: Vec::new(),
        capabilities: Capabilities::empty(),
        rng_seed: rand::random(),
        dht_storage_bytes: meshcore_proto::dht::DEFAULT_STORAGE_BYTES,
        dht_discovery: false,
        allowed_peers: allowed,
        routing: Some(RoutingOptions {
            fast_path: paths.fast_path,
            // The relays' budget is a policy (default 5 MiB/s), not what the data path
            // can do: `bench relay` measures the budget.
            relay_bandwidth: UNCAPPED_RELAY_BANDWIDTH,
            ..RoutingOptions::new(10, Duration::from_secs(300), rand::random())
        }),
        webrtc: None,
        data_lane: paths.lane,
    };
    Ok(Network::start(keys, config, Store::open_in_memory().await?).await?)
}

pub(super) fn routing_of(network: &Network) -> anyhow::Result<&Routing> {
    network
        .routing()
        .ok_or_else(|| anyhow!("the network runs no routing driver"))
}

/// Nodes joined by the links `edges` (index pairs), each allowed to link only along them.
pub(super) async fn topology(
    nodes: usize,
    edges: &[(usize, usize)],
) -> anyhow::Result<Vec<Network>> {
    topology_with(nodes, edges, DataPaths::DEFAULT).await
}

/// [`topology`], with the relays' fast path on or off.
pub(super) async fn topology_with(
    nodes: usize,
    edges: &[(usize, usize)],
    paths: DataPaths,
) -> anyhow::Result<Vec<Network>> {
    let keys: Vec<NodeKeypair> = (0..nodes)
        .map(|_| NodeKeypair::generate(&mut rand::rngs::OsRng))
        .collect();
    let ids: Vec<NodeId> = keys.iter().map(NodeKeypair::node_id).collect();
    let mut networks = Vec::with_capacity(nodes);
    for (i, key) in keys.iter().enumerate() {
        let allowed = edges
            .iter()
            .filter_map(|&(a, b)| match (a == i, b == i) {
                (true, _) => Some(ids[b]),
                (_, true) => Some(ids[a]),
                _ => None,
            })
            .collect();
        networks.push(routed_network(key, allowed, paths).await?);
    }
    for &(a, b) in edges {
        networks[a]
            .connect(
                networks[b].node_id(),
                networks[b].listen_addrs(),
                STEP_TIMEOUT,
            )
            .await
            .with_context(|| format!("linking node {a} to node {b}"))?;
    }
    Ok(networks)
}

/// A line of `relays + 2` nodes.
async fn line(relays: usize, paths: DataPaths) -> anyhow::Result<Vec<Network>> {
    let nodes = relays + 2;
    let edges: Vec<(usize, usize)> = (0..nodes - 1).map(|i| (i, i + 1)).collect();
    topology_with(nodes, &edges, paths).await
}

pub(super) async fn shutdown_all(networks: Vec<Network>) {
    for network in networks {
        network.shutdown().await;
    }
}

/// Sends until a message is acknowledged (the first finds the route), within `within`.
pub(super) async fn first_delivery(
    routing: &Routing,
    to: NodeId,
    within: Duration,
) -> anyhow::Result<meshcore_net::routing::Delivery> {
    let deadline = Instant::now() + within;
    loop {
        let attempt = routing
            .send(to, Bytes::from_static(b"warm-up"), Duration::from_secs(2))
            .await;
        match attempt {
            Ok(delivery) => return Ok(delivery),
            Err(error) if Instant::now() > deadline => {
                return Err(anyhow!("no delivery within {within:?}: {error}"))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
        }
    }
}

/// Round trips of one line: its hops, the caller's timings and the driver's, in µs.
struct RoundTrips {
    hops: u8,
    timed: Vec<f64>,
    driver: Vec<f64>,
}

/// Round trips from the first node of each line to its last, the lines taking turns (one
/// probe each per turn).
async fn round_trips(
    lines: &[Vec<Network>],
    warmup: usize,
    samples: usize,
) -> anyhow::Result<Vec<RoundTrips>> {
    let mut ends = Vec::with_capacity(lines.len());
    for networks in lines {
        let (first, last) = (&networks[0], &networks[networks.len() - 1]);
        let routing = routing_of(first)?;
        first_delivery(routing, last.node_id(), STEP_TIMEOUT).await?;
        ends.push((routing, last.node_id()));
    }
    let payload = Bytes::from(vec![0x5Au8; PROBE_BYTES]);
    let mut results: Vec<RoundTrips> = lines
        .iter()
        .map(|_| RoundTrips {
            hops: 0,
            timed: Vec::with_capacity(samples),
            driver: Vec::with_capacity(samples),
        })
        .collect();
    for i in 0..warmup + samples {
        for ((routing, to), result) in ends.iter().zip(&mut results) {
            let started = Instant::now();
            let delivery = routing
                .send(*to, payload.clone(), STEP_TIMEOUT)
                .await
                .context("a probe message was not acknowledged")?;
            let elapsed = started.elapsed();
            if i >= warmup {
                result.timed.push(elapsed.as_secs_f64() * 1e6);
                result.driver.push(delivery.rtt_ms * 1e3);
                result.hops = delivery.hops;
            }
        }
    }
    Ok(results)
}

/// Sends `total` bytes in `message`-byte messages from the first node to the last, with
/// `in_flight` sends outstanding, and counts the acknowledged ones.
async fn bulk(
    networks: &[Network],
    total: u64,
    message: usize,
    in_flight: usize,
) -> anyhow::Result<(u64, u64, f64)> {
    let routing = routing_of(&networks[0])?.clone();
    let to = networks[networks.len() - 1].node_id();
    let count = total.div_ceil(message as u64) as usize;
    let payload = Bytes::from(vec![0xA5u8; message]);
    let next = Arc::new(AtomicUsize::new(0));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..in_flight.max(1) {
        let (routing, payload) = (routing.clone(), payload.clone());
        let (next, acked, failed) = (next.clone(), acked.clone(), failed.clone());
        workers.push(tokio::spawn(async move {
            while next.fetch_add(1, Ordering::Relaxed) < count {
                match routing
                    .send(to, payload.clone(), Duration::from_secs(5))
                    .await
                {
                    Ok(_) => acked.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for worker in workers {
        worker.await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok((
        acked.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        seconds,
    ))
}

/// `route_packet` on `count` 1400-byte data frames, in 5 rounds; the median round's rate.
fn relay_microbench(count: u64) -> serde_json::Value {
    let local = NodeKeypair::generate(&mut rand::rngs::OsRng).node_id();
    let next = NodeKeypair::generate(&mut rand::rngs::OsRng).node_id();
    let header = PacketHeader {
        hop_limit: 9,
        flow_id: MESSAGE_FLOW,
        sequence: 1,
        source: NodeKeypair::generate(&mut rand::rngs::OsRng).node_id(),
        destination: NodeKeypair::generate(&mut rand::rngs::OsRng).node_id(),
    };
    let body = vec![0xC3u8; RELAY_FRAME - 1 - meshcore_proto::route::HEADER_LEN];
    let mut frame = vec![TAG_DATA];
    frame.extend_from_slice(&header.encode(&body));
    let frame = Bytes::from(frame);
    let rounds = 5;
    let per_round = (count / rounds).max(1);
    let mut rates = Vec::new();
    let mut forwarded = 0u64;
    for _ in 0..rounds {
        let started = Instant::now();
        for _ in 0..per_round {
            let action = route_packet(&local, std::hint::black_box(&frame), |_| Some(next));
            if let PacketAction::Forward { frame: out, .. } = std::hint::black_box(action) {
                forwarded += u64::from(out[2] > 0);
            }
        }
        rates.push(per_round as f64 / started.elapsed().as_secs_f64().max(1e-9));
    }
    rates.sort_by(f64::total_cmp);
    let pps = rates[rates.len() / 2];
    // The two parts of that work, each alone: the header decode (which checks that both
    // node ids are valid Ed25519 keys), and the copy with the hop-limit decrement.
    let ns_per = |work: &dyn Fn()| {
        let started = Instant::now();
        for _ in 0..per_round {
            work();
        }
        started.elapsed().as_secs_f64() * 1e9 / per_round as f64
    };
    let decode_ns = ns_per(&|| {
        std::hint::black_box(PacketHeader::decode(std::hint::black_box(&frame[1..])).is_ok());
    });
    let copy_ns = ns_per(&|| {
        let mut out = bytes::BytesMut::from(std::hint::black_box(&frame[..]));
        std::hint::black_box(PacketHeader::forward_in_place(&mut out[1..]).is_ok());
        std::hint::black_box(out.freeze());
    });
    json!({
        "header_decode_ns": decode_ns,
        "copy_and_decrement_ns": copy_ns,
        "frame_bytes": frame.len(),
        "packets": per_round * rounds,
        "forwarded": forwarded,
        "rounds": rounds,
        "packets_per_s": pps,
        "gbit_per_s": pps * (frame.len() as f64) * 8.0 / 1e9,
        "ns_per_packet": 1e9 / pps.max(1e-9),
    })
}

fn rss_kib() -> anyhow::Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .context("no VmRSS")
}

/// A router with one neighbour learns `routes` two-hop reverse routes from route requests
/// of distinct originators (each signed advert verified, as from the wire). Resident-set
/// growth between half and all of them, per route.
fn route_memory(routes: usize) -> anyhow::Result<serde_json::Value> {
    let routes = routes.max(2);
    let now = unix_now();
    let mut config = RouterConfig::new(1);
    config.max_destinations = routes + 16;
    let mut router = Router::new(config, NodeKeypair::generate(&mut rand::rngs::OsRng), now)?;
    let neighbour = NodeKeypair::generate(&mut rand::rngs::OsRng).node_id();
    let elsewhere = NodeKeypair::generate(&mut rand::rngs::OsRng).node_id();
    router.link_up(
        now,
        neighbour,
        LinkQuality::new(Duration::from_millis(1), 0.0),
    )?;
    while router.poll_transmit().is_some() {}
    while router.poll_event().is_some() {}
    // Adverts are made before measuring: only what the router keeps is counted.
    let adverts: Vec<SignedAdvert> = (0..routes)
        .map(|_| SignedAdvert::sign(&NodeKeypair::generate(&mut rand::rngs::OsRng), 1, now))
        .collect();
    let seen_rreqs_max = router.config().max_seen_rreqs;
    let install = |router: &mut Router, range: std::ops::Range<usize>| {
        for i in range {
            let advert = adverts[i].clone();
            let path = vec![advert.node, neighbour];
            router.handle_message(
                now,
                neighbour,
                RouteMessage::Rreq(Rreq {
                    rreq_id: i as u32,
                    destination: elsewhere,
                    originator: advert,
                    metric: 100,
                    price: 100_000,
                    ttl: 1,
                    path,
                }),
            );
            while router.poll_transmit().is_some() {}
            while router.poll_event().is_some() {}
        }
    };
    let before = rss_kib()?;
    install(&mut router, 0..routes / 2);
    let half = rss_kib()?;
    install(&mut router, routes / 2..routes);
    let after = rss_kib()?;
    let installed = router.routes().count();
    if installed != routes {
        return Err(anyhow!("{installed} of {routes} routes were installed"));
    }
    let second_half = (routes - routes / 2) as f64;
    Ok(json!({
        "routes": installed,
        "hop_count": router.routes().next().map_or(0, |r| r.hop_count),
        "rss_growth_kib": after - before,
        "bytes_per_route_all": (after - before) * 1024.0 / routes as f64,
        "bytes_per_route_second_half": (after - half) * 1024.0 / second_half,
        "seen_rreqs_kept_max": seen_rreqs_max,
        "route_view_size_of_bytes": std::mem::size_of::<meshcore_proto::route::Route>(),
        "signed_advert_size_of_bytes": std::mem::size_of::<SignedAdvert>(),
    }))
}

/// Square a–b–d, a–c–d: a delivers to d, the relay in use shuts down, a sends again until
/// a message is acknowledged. Time from the start of the shutdown to that acknowledgement.
async fn recovery() -> anyhow::Result<(f64, u64)> {
    // 0 = a, 1 = b, 2 = c, 3 = d.
    let networks = topology(4, &[(0, 1), (0, 2), (1, 3), (2, 3)]).await?;
    let routing = routing_of(&networks[0])?.clone();
    let d = networks[3].node_id();
    first_delivery(&routing, d, STEP_TIMEOUT).await?;
    let route = routing.find_route(d, STEP_TIMEOUT).await?;
    let in_use = networks
        .iter()
        .position(|n| n.node_id().to_hex() == route.next_hop)
        .filter(|&i| i == 1 || i == 2)
        .ok_or_else(|| anyhow!("the route to d does not go through b or c"))?;
    let started = Instant::now();
    networks[in_use].shutdown().await;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        match routing
            .send(d, Bytes::from_static(b"again"), Duration::from_secs(2))
            .await
        {
            Ok(_) => break,
            Err(_) if started.elapsed() > STEP_TIMEOUT => {
                return Err(anyhow!(
                    "no delivery within {STEP_TIMEOUT:?} of the failure"
                ))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
    let ms = started.elapsed().as_secs_f64() * 1e3;
    for (i, network) in networks.into_iter().enumerate() {
        if i != in_use {
            network.shutdown().await;
        }
    }
    Ok((ms, attempts))
}

pub(super) async fn bench(args: RouteBenchArgs) -> anyhow::Result<()> {
    // 3. Memory first, while nothing else runs in the process.
    let memory = route_memory(args.routes)?;
    // 2a. The relay's per-packet work.
    let relay = relay_microbench(args.packets);

    // 1 and 2b. Lines with 0–3 relays.
    let message = args.message.clamp(1, MAX_PAYLOAD);
    let mut latency: Vec<LineLatency> = Vec::new();
    let mut throughput: Vec<LineThroughput> = Vec::new();
    let mut lines = Vec::with_capacity(RELAYS.len());
    for relays in RELAYS {
        lines.push(line(relays, args.paths).await?);
    }
    let trips = round_trips(&lines, args.warmup, args.samples).await?;
    // What went on the lanes during the round trips (every routed packet, when they were
    // all up), against what the relays forwarded.
    let lane_frames_sent: u64 = lines
        .iter()
        .flatten()
        .filter_map(|network| network.lane_counters())
        .map(|counters| counters.frames_sent)
        .sum();
    for ((relays, networks), trips) in RELAYS.into_iter().zip(lines).zip(trips) {
        let RoundTrips {
            hops,
            timed,
            driver,
        } = trips;
        let rtt = quantiles(timed);
        let added = |pick: fn(&Quantiles) -> f64| {
            latency
                .first()
                .filter(|_| relays > 0)
                .map(|direct| (pick(&rtt) - pick(&direct.rtt)) / (2 * relays) as f64)
        };
        let entry = LineLatency {
            relays,
            hops,
            added_per_relay_median_us: added(|q| q.median_us),
            added_per_relay_p99_us: added(|q| q.p99_us),
            rtt,
            driver_rtt: quantiles(driver),
        };
        latency.push(entry);
        if args.bulk_bytes > 0 {
            let (acked, failed, seconds) =
                bulk(&networks, args.bulk_bytes, message, args.in_flight).await?;
            let bytes = acked * message as u64;
            let mib_per_s = bytes as f64 / (1024.0 * 1024.0) / seconds.max(1e-9);
            let ratio = throughput
                .first()
                .map_or(1.0, |direct| mib_per_s / direct.mib_per_s.max(1e-9));
            throughput.push(LineThroughput {
                relays,
                messages_acknowledged: acked,
                messages_failed: failed,
                payload_bytes_acknowledged: bytes,
                seconds,
                mib_per_s,
                gbit_per_s: bytes as f64 * 8.0 / 1e9 / seconds.max(1e-9),
                ratio_to_direct: ratio,
            });
        }
        shutdown_all(networks).await;
    }

    // 4. Recovery after the relay in use goes away.
    let mut recoveries = Vec::new();
    let mut attempts = Vec::new();
    for _ in 0..args.recoveries {
        let (ms, tries) = recovery().await?;
        recoveries.push(ms * 1e3);
        attempts.push(tries);
    }
    let recovery_q = quantiles(recoveries.clone());

    let report = json!({
        "fast_path": args.paths.fast_path,
        "data_lane": args.paths.lane,
        "lane_frames_sent": lane_frames_sent,
        "probe_bytes": PROBE_BYTES,
        "latency": latency,
        "relay_forwarding": relay,
        "throughput": {
            "message_bytes": message,
            "in_flight": args.in_flight,
            "bytes_per_line": args.bulk_bytes,
            "lines": throughput,
        },
        "memory": memory,
        "recovery": {
            "runs": args.recoveries,
            "ms": recoveries.iter().map(|us| us / 1e3).collect::<Vec<_>>(),
            "send_attempts": attempts,
            "median_ms": recovery_q.median_us / 1e3,
            "max_ms": recovery_q.max_us / 1e3,
        },
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "Round trips of Routing::send ({PROBE_BYTES}-byte message + acknowledgement), µs, routed packets {}, relays forwarding {}:",
        if args.paths.lane { "on the UDP data lane" } else { "inside QUIC only (--no-lane)" },
        if args.paths.fast_path { "in the task that received them (fast path)" } else { "through their routing driver only (--no-fast-path)" }
    );
    println!(
        "{:<8} {:>5} {:>9} {:>9} {:>9} {:>9} {:>10} {:>16} {:>16}",
        "relays",
        "hops",
        "median",
        "p90",
        "p99",
        "max",
        "driver med",
        "added/relay med",
        "added/relay p99"
    );
    for line in &latency {
        let show = |v: Option<f64>| v.map_or("—".to_owned(), |v| format!("{v:.1}"));
        println!(
            "{:<8} {:>5} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>10.1} {:>16} {:>16}",
            line.relays,
            line.hops,
            line.rtt.median_us,
            line.rtt.p90_us,
            line.rtt.p99_us,
            line.rtt.max_us,
            line.driver_rtt.median_us,
            show(line.added_per_relay_median_us),
            show(line.added_per_relay_p99_us),
        );
    }
    println!(
        "(n = {} per line after {} warm-up; {lane_frames_sent} routed packets sent on data lanes)",
        args.samples, args.warmup
    );
    println!();
    println!(
        "Relay per-packet work (route_packet, {}-byte frames, one thread): {:.2} Mpackets/s, {:.2} Gbit/s, {:.0} ns/packet",
        report["relay_forwarding"]["frame_bytes"],
        report["relay_forwarding"]["packets_per_s"].as_f64().unwrap_or(0.0) / 1e6,
        report["relay_forwarding"]["gbit_per_s"].as_f64().unwrap_or(0.0),
        report["relay_forwarding"]["ns_per_packet"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  of which, alone: header decode {:.0} ns, copy + hop-limit decrement {:.0} ns",
        report["relay_forwarding"]["header_decode_ns"]
            .as_f64()
            .unwrap_or(0.0),
        report["relay_forwarding"]["copy_and_decrement_ns"]
            .as_f64()
            .unwrap_or(0.0),
    );
    if !throughput.is_empty() {
        println!();
        println!(
            "End-to-end: {message}-byte messages, {} in flight, {} bytes per line:",
            args.in_flight, args.bulk_bytes
        );
        for line in &throughput {
            println!(
                "  {} relays: {:>8.1} MiB/s ({:.2} Gbit/s), {:.2}× direct, {} acknowledged, {} failed",
                line.relays,
                line.mib_per_s,
                line.gbit_per_s,
                line.ratio_to_direct,
                line.messages_acknowledged,
                line.messages_failed
            );
        }
    }
    println!();
    println!(
        "Memory: {} routes ({}-hop), {:.0} bytes/route (RSS growth, all), {:.0} bytes/route (second half)",
        report["memory"]["routes"],
        report["memory"]["hop_count"],
        report["memory"]["bytes_per_route_all"].as_f64().unwrap_or(0.0),
        report["memory"]["bytes_per_route_second_half"].as_f64().unwrap_or(0.0),
    );
    println!(
        "Recovery after the relay in use shuts down (square): median {:.1} ms, max {:.1} ms, runs (ms) {}",
        recovery_q.median_us / 1e3,
        recovery_q.max_us / 1e3,
        recoveries
            .iter()
            .map(|us| format!("{:.1}", us / 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}
