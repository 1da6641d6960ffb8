//! The relay budget: in-process nodes on 127.0.0.1, three sources linked only to one relay
//! and the relay linked to one destination (`allowed_peers` holds them to it). Sources send
//! paced datagrams ([`Routing::send_datagram`]: sealed, sent once, not acknowledged) of
//! `message` bytes to the destination. Measures, in one run:
//!
//! 1. **the cap**: for each `relay_bandwidth` asked for, one source offers twice the cap;
//!    the relay's forwarded bytes (whole frames, its own counter) per second of wall time
//!    over the measured window, against the cap (target: within 5 %);
//! 2. **fairness**: two normal sources each offer a quarter of the cap, first alone, then
//!    with a third source flooding at four times the cap; each normal source's throughput
//!    (payload bytes the destination received from it per second) with the flooder, as a
//!    fraction of its throughput without (target: ≥ 90 %). A quarter each is below the even
//!    third that max-min fairness guarantees every source, which is what makes 90 % a fair
//!    target; sources that each want more than a third of the relay get a third;
//! 3. **relaying off**: with `relay_enabled` false the relay forwards nothing, counts every
//!    refusal and the source hears why.
//!
//! The relay's budget is changed between phases with [`Routing::set_relay`], the same call
//! that applies a settings change at run time. Every phase first runs `warmup` seconds
//! unmeasured (the relay's buckets start full and its demand estimates need a few windows).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use bytes::Bytes;
use meshcore_net::routing::{RelayStats, RouteError, Routing, MAX_PAYLOAD};
use meshcore_net::Network;
use meshcore_proto::route::HEADER_LEN;
use meshcore_proto::NodeId;
use serde::Serialize;
use tokio::sync::broadcast;

use super::route::{first_delivery, routing_of, shutdown_all, topology};
use super::STEP_TIMEOUT;

/// What `meshcore bench relay` is asked for.
#[derive(Debug, Clone)]
pub(super) struct RelayBenchArgs {
    /// Caps to measure, bytes per second.
    pub(super) caps: Vec<u64>,
    /// The cap of the fairness phase, bytes per second.
    pub(super) fair_cap: u64,
    /// Measured seconds per phase.
    pub(super) seconds: f64,
    /// Unmeasured seconds before each phase.
    pub(super) warmup: f64,
    /// Payload bytes per datagram.
    pub(super) message: usize,
    /// Print JSON.
    pub(super) json: bool,
}

/// Node indices in the topology.
const NORMAL: [usize; 2] = [0, 1];
const FLOODER: usize = 2;
const RELAY: usize = 3;
const DESTINATION: usize = 4;

/// How often a paced sender wakes.
const PACE_TICK: Duration = Duration::from_millis(2);

/// Frame bytes of a datagram of `message` payload bytes: tag, header, initial hop limit,
/// sealing overhead.
fn frame_bytes(message: usize) -> usize {
    1 + HEADER_LEN + 1 + meshcore_proto::e2e::SEAL_OVERHEAD + message
}

/// What a paced sender did.
#[derive(Debug, Default, Clone, Copy, Serialize)]
struct Sent {
    datagrams: u64,
    /// Refused by the source's own link queue (full).
    link_full: u64,
    /// Refused for want of a route (after a relay refused the flow, say).
    unreachable: u64,
}

struct Sender {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Sent>,
}

/// Starts sending `message`-byte datagrams from `routing` to `to` at `rate` payload bytes
/// per second until stopped.
fn paced(routing: Routing, to: NodeId, rate: u64, message: usize) -> Sender {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let payload = Bytes::from(vec![0x5Au8; message]);
    let task = tokio::spawn(async move {
        let mut sent = Sent::default();
        let started = Instant::now();
        let mut tick = tokio::time::interval(PACE_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut offered: u64 = 0;
        while !flag.load(Ordering::Relaxed) {
            tick.tick().await;
            let due = (started.elapsed().as_secs_f64() * rate as f64) as u64;
            while offered + message as u64 <= due {
                offered += message as u64;
                match routing.send_datagram(to, payload.clone()).await {
                    Ok(()) => sent.datagrams += 1,
                    Err(RouteError::Busy(_)) => sent.link_full += 1,
                    Err(_) => sent.unreachable += 1,
                }
            }
        }
        sent
    });
    Sender { stop, task }
}

impl Sender {
    async fn finish(self) -> anyhow::Result<Sent> {
        self.stop.store(true, Ordering::Relaxed);
        Ok(self.task.await?)
    }
}

/// Payload bytes the destination received, per source, counted as they arrive.
#[derive(Clone, Default)]
struct Tally {
    bytes: Arc<Mutex<HashMap<NodeId, u64>>>,
    lagged: Arc<AtomicU64>,
}

impl Tally {
    fn start(mut received: broadcast::Receiver<meshcore_net::routing::ReceivedMessage>) -> Self {
        let tally = Self::default();
        let counts = tally.clone();
        tokio::spawn(async move {
            loop {
                match received.recv().await {
                    Ok(message) => {
                        if let Ok(mut bytes) = counts.bytes.lock() {
                            *bytes.entry(message.source).or_default() +=
                                message.payload.len() as u64;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(missed)) => {
                        counts.lagged.fetch_add(missed, Ordering::Relaxed);
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        tally
    }

    fn snapshot(&self) -> HashMap<NodeId, u64> {
        self.bytes.lock().map(|b| b.clone()).unwrap_or_default()
    }
}

/// A measured window: relay stats and the destination's tally at both ends.
struct Window {
    seconds: f64,
    relay_before: RelayStats,
    relay_after: RelayStats,
    tally_before: HashMap<NodeId, u64>,
    tally_after: HashMap<NodeId, u64>,
}

impl Window {
    /// Frame bytes the relay forwarded per second.
    fn relay_rate(&self) -> f64 {
        (self.relay_after.bytes_forwarded - self.relay_before.bytes_forwarded) as f64 / self.seconds
    }

    /// Payload bytes per second the destination received from `source`.
    fn delivered_rate(&self, source: &NodeId) -> f64 {
        let after = self.tally_after.get(source).copied().unwrap_or(0);
        let before = self.tally_before.get(source).copied().unwrap_or(0);
        (after - before) as f64 / self.seconds
    }

    /// Frame bytes per second the relay forwarded for the flow from `source` (its own
    /// previous hop here).
    fn flow_rate(&self, source: &NodeId) -> f64 {
        let of = |stats: &RelayStats| {
            stats
                .flows
                .iter()
                .find(|flow| flow.source == source.to_hex())
                .map_or(0, |flow| flow.bytes_forwarded)
        };
        of(&self.relay_after).saturating_sub(of(&self.relay_before)) as f64 / self.seconds
    }

    fn delta(&self, pick: fn(&RelayStats) -> u64) -> u64 {
        pick(&self.relay_after).saturating_sub(pick(&self.relay_before))
    }
}

struct Bench {
    networks: Vec<Network>,
    relay: Routing,
    destination: NodeId,
    tally: Tally,
    args: RelayBenchArgs,
}

impl Bench {
    async fn start(args: RelayBenchArgs) -> anyhow::Result<Self> {
        // 0, 1 normal sources, 2 the flooder, 3 the relay, 4 the destination.
        let edges = [
            (0, RELAY),
            (1, RELAY),
            (FLOODER, RELAY),
            (RELAY, DESTINATION),
        ];
        let networks = topology(5, &edges).await?;
        let relay = routing_of(&networks[RELAY])?.clone();
        let destination = networks[DESTINATION].node_id();
        // Every source learns its route (the acknowledgement teaches the destination the
        // way back, unused by datagrams).
        for source in [NORMAL[0], NORMAL[1], FLOODER] {
            first_delivery(routing_of(&networks[source])?, destination, STEP_TIMEOUT)
                .await
                .with_context(|| format!("source {source} reaching the destination"))?;
        }
        let tally = Tally::start(routing_of(&networks[DESTINATION])?.subscribe());
        Ok(Self {
            networks,
            relay,
            destination,
            tally,
            args,
        })
    }

    fn source(&self, index: usize) -> anyhow::Result<(Routing, NodeId)> {
        let network = &self.networks[index];
        Ok((routing_of(network)?.clone(), network.node_id()))
    }

    /// Runs `loads` ((source index, payload bytes per second)) for warm-up plus the
    /// measured window, and returns the window and what each sender did.
    async fn phase(&self, loads: &[(usize, u64)]) -> anyhow::Result<(Window, Vec<Sent>)> {
        let mut senders = Vec::new();
        for &(index, rate) in loads {
            let (routing, _) = self.source(index)?;
            senders.push(paced(routing, self.destination, rate, self.args.message));
        }
        tokio::time::sleep(Duration::from_secs_f64(self.args.warmup)).await;
        let relay_before = self.relay.relay_stats().await?;
        let tally_before = self.tally.snapshot();
        let started = Instant::now();
        tokio::time::sleep(Duration::from_secs_f64(self.args.seconds)).await;
        let relay_after = self.relay.relay_stats().await?;
        let tally_after = self.tally.snapshot();
        let seconds = started.elapsed().as_secs_f64();
        let mut sent = Vec::new();
        for sender in senders {
            sent.push(sender.finish().await?);
        }
        // Let what is in flight drain before the next phase.
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok((
            Window {
                seconds,
                relay_before,
                relay_after,
                tally_before,
                tally_after,
            },
            sent,
        ))
    }
}

#[derive(Debug, Serialize)]
struct CapRow {
    relay_bandwidth: u64,
    /// Payload bytes per second the source offered.
    offered_payload_bytes_per_s: u64,
    /// Frame bytes per second the relay forwarded.
    forwarded_bytes_per_s: f64,
    /// Forwarded over the cap.
    ratio: f64,
    within_5_percent: bool,
    /// Payload bytes per second the destination received.
    delivered_payload_bytes_per_s: f64,
    dropped_over_cap: u64,
    dropped_over_share: u64,
    sent: Sent,
}

#[derive(Debug, Serialize)]
struct NormalRow {
    source: usize,
    offered_payload_bytes_per_s: u64,
    alone_bytes_per_s: f64,
    with_flooder_bytes_per_s: f64,
    /// With the flooder over alone.
    kept: f64,
    /// Frame bytes the relay forwarded for it per second, alone and with the flooder.
    relay_alone_bytes_per_s: f64,
    relay_with_flooder_bytes_per_s: f64,
}

#[derive(Debug, Serialize)]
struct Fairness {
    relay_bandwidth: u64,
    flooder_offered_payload_bytes_per_s: u64,
    normal: Vec<NormalRow>,
    flooder_delivered_bytes_per_s: f64,
    relay_forwarded_bytes_per_s: f64,
    relay_ratio_to_cap: f64,
    min_kept: f64,
    at_least_90_percent: bool,
    saturated: bool,
    fair_share_bytes_per_s: u64,
    destination_lagged_messages: u64,
}

#[derive(Debug, Serialize)]
struct Disabled {
    seconds: f64,
    datagrams_sent: u64,
    forwarded_packets: u64,
    refused_disabled: u64,
    notices_received_by_source: u64,
    source_unreachable_after_refusal: u64,
}

pub(super) async fn bench(args: RelayBenchArgs) -> anyhow::Result<()> {
    let message = args.message.clamp(1, MAX_PAYLOAD);
    let args = RelayBenchArgs { message, ..args };
    if args.caps.is_empty() || args.caps.contains(&0) || args.fair_cap == 0 {
        return Err(anyhow!("every cap must be above 0 bytes per second"));
    }
    let frame = frame_bytes(message);
    let bench = Bench::start(args.clone()).await?;

    // 1. The cap.
    let mut caps = Vec::new();
    for &cap in &args.caps {
        bench.relay.set_relay(true, cap);
        let offered = 2 * cap;
        let (window, sent) = bench.phase(&[(NORMAL[0], offered)]).await?;
        let (_, source) = bench.source(NORMAL[0])?;
        let rate = window.relay_rate();
        let ratio = rate / cap as f64;
        caps.push(CapRow {
            relay_bandwidth: cap,
            offered_payload_bytes_per_s: offered,
            forwarded_bytes_per_s: rate,
            ratio,
            within_5_percent: (ratio - 1.0).abs() <= 0.05,
            delivered_payload_bytes_per_s: window.delivered_rate(&source),
            dropped_over_cap: window.delta(|s| s.dropped_over_cap),
            dropped_over_share: window.delta(|s| s.dropped_over_share),
            sent: sent[0],
        });
    }

    // 2. Fairness.
    let cap = args.fair_cap;
    bench.relay.set_relay(true, cap);
    let normal_rate = cap / 4;
    let flooder_rate = 4 * cap;
    let normal_loads = [(NORMAL[0], normal_rate), (NORMAL[1], normal_rate)];
    let (alone, _) = bench.phase(&normal_loads).await?;
    let mut all = normal_loads.to_vec();
    all.push((FLOODER, flooder_rate));
    let (shared, _) = bench.phase(&all).await?;
    let mut normal = Vec::new();
    for index in NORMAL {
        let (_, id) = bench.source(index)?;
        let (a, s) = (alone.delivered_rate(&id), shared.delivered_rate(&id));
        normal.push(NormalRow {
            source: index,
            offered_payload_bytes_per_s: normal_rate,
            alone_bytes_per_s: a,
            with_flooder_bytes_per_s: s,
            kept: if a > 0.0 { s / a } else { 0.0 },
            relay_alone_bytes_per_s: alone.flow_rate(&id),
            relay_with_flooder_bytes_per_s: shared.flow_rate(&id),
        });
    }
    let min_kept = normal.iter().map(|n| n.kept).fold(f64::INFINITY, f64::min);
    let (_, flooder_id) = bench.source(FLOODER)?;
    let fairness = Fairness {
        relay_bandwidth: cap,
        flooder_offered_payload_bytes_per_s: flooder_rate,
        flooder_delivered_bytes_per_s: shared.delivered_rate(&flooder_id),
        relay_forwarded_bytes_per_s: shared.relay_rate(),
        relay_ratio_to_cap: shared.relay_rate() / cap as f64,
        min_kept,
        at_least_90_percent: min_kept >= 0.9,
        saturated: shared.relay_after.saturated,
        fair_share_bytes_per_s: shared.relay_after.fair_share,
        destination_lagged_messages: bench.tally.lagged.load(Ordering::Relaxed),
        normal,
    };

    // 3. Relaying off.
    bench.relay.set_relay(false, cap);
    let (source_routing, _) = bench.source(NORMAL[0])?;
    let notices_before = source_routing.stats().await?.relay_notices_received;
    let relay_before = bench.relay.relay_stats().await?;
    let (off, sent) = bench.phase(&[(NORMAL[0], normal_rate)]).await?;
    // Counted from before the warm-up: the refusals come first.
    let since_start =
        |pick: fn(&RelayStats) -> u64| pick(&off.relay_after).saturating_sub(pick(&relay_before));
    let disabled = Disabled {
        seconds: off.seconds + args.warmup,
        datagrams_sent: sent[0].datagrams,
        forwarded_packets: since_start(|s| s.packets_forwarded),
        refused_disabled: since_start(|s| s.refused_disabled),
        notices_received_by_source: source_routing.stats().await?.relay_notices_received
            - notices_before,
        source_unreachable_after_refusal: sent[0].unreachable,
    };

    let Bench { networks, .. } = bench;
    shutdown_all(networks).await;

    let report = serde_json::json!({
        "message_bytes": message,
        "frame_bytes": frame,
        "seconds": args.seconds,
        "warmup_seconds": args.warmup,
        "cap": caps,
        "fairness": fairness,
        "disabled": disabled,
    });
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mib = |bytes: f64| bytes / (1024.0 * 1024.0);
    println!(
        "Relay budget: {message}-byte datagrams ({frame}-byte frames), {:.1} s measured after {:.1} s warm-up per phase",
        args.seconds, args.warmup
    );
    println!();
    println!("1. Cap: one source offers 2 × relay_bandwidth");
    println!(
        "{:>16} {:>16} {:>16} {:>8} {:>10} {:>16}",
        "relay_bandwidth",
        "offered MiB/s",
        "forwarded MiB/s",
        "ratio",
        "within 5%",
        "delivered MiB/s"
    );
    for row in &caps {
        println!(
            "{:>16} {:>16.3} {:>16.3} {:>8.4} {:>10} {:>16.3}",
            format!("{:.3} MiB/s", mib(row.relay_bandwidth as f64)),
            mib(row.offered_payload_bytes_per_s as f64),
            mib(row.forwarded_bytes_per_s),
            row.ratio,
            if row.within_5_percent { "yes" } else { "NO" },
            mib(row.delivered_payload_bytes_per_s),
        );
    }
    println!();
    println!(
        "2. Fairness at {:.3} MiB/s: two sources offer ¼ each; then a third floods at 4 ×",
        mib(cap as f64)
    );
    println!(
        "{:>8} {:>14} {:>14} {:>18} {:>8}",
        "source", "offered MiB/s", "alone MiB/s", "with flooder MiB/s", "kept"
    );
    for row in &fairness.normal {
        println!(
            "{:>8} {:>14.3} {:>14.3} {:>18.3} {:>8.4}",
            row.source,
            mib(row.offered_payload_bytes_per_s as f64),
            mib(row.alone_bytes_per_s),
            mib(row.with_flooder_bytes_per_s),
            row.kept,
        );
    }
    println!(
        "flooder: offered {:.3} MiB/s, delivered {:.3} MiB/s; relay forwarded {:.3} MiB/s ({:.4} × cap); min kept {:.4} ({})",
        mib(fairness.flooder_offered_payload_bytes_per_s as f64),
        mib(fairness.flooder_delivered_bytes_per_s),
        mib(fairness.relay_forwarded_bytes_per_s),
        fairness.relay_ratio_to_cap,
        fairness.min_kept,
        if fairness.at_least_90_percent { "≥ 90 %: yes" } else { "≥ 90 %: NO" },
    );
    println!();
    println!(
        "3. Relaying off: {} datagrams sent, {} forwarded, {} refused (relaying disabled), {} notices reached the source, {} later sends found no route",
        disabled.datagrams_sent,
        disabled.forwarded_packets,
        disabled.refused_disabled,
        disabled.notices_received_by_source,
        disabled.source_unreachable_after_refusal,
    );
    Ok(())
}
