//! `meshcore sim`: the deterministic simulator over the real protocol cores.
//! Same seed, same numbers (all but `wall_seconds`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use meshcore_sim::dht::{run_dht, DhtSimConfig, DhtSimReport, LookupKind};
use meshcore_sim::route::{
    run_route, FlowEndpoints, LinkFailures, RouteSimConfig, RouteSimReport, Topology,
};

/// Arguments of `meshcore sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    #[command(subcommand)]
    what: SimKind,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Kind {
    /// FIND_VALUE for a value a random node stored earlier.
    FindValue,
    /// FIND_NODE for a random existing node.
    FindNode,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum TopologyArg {
    /// A chain of nodes.
    Line,
    /// A chain closed into a cycle.
    Ring,
    /// A square grid, each node linked to its four neighbours.
    Grid,
    /// A random geometric graph: random points in a square, linked when close.
    Random,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum EndpointsArg {
    /// Destinations at most max_hops (10) hops from the source.
    WithinMaxHops,
    /// Any node the source can reach, however far.
    Any,
}

#[derive(Debug, clap::Subcommand)]
enum SimKind {
    /// Kademlia: N nodes join, store values and look them up, with loss and optional churn.
    Dht {
        /// Number of nodes.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Seed of every random choice (latency, loss, churn, keys).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Fraction of nodes replaced (one leaves silently, a fresh one joins) during the
        /// lookups, 0.0 to 1.0.
        #[arg(long, default_value_t = 0.0)]
        churn: f64,
        /// Lookups to perform.
        #[arg(long, default_value_t = 1000)]
        lookups: usize,
        /// Fraction of messages lost, 0.0 to 1.0.
        #[arg(long)]
        loss: Option<f64>,
        /// What each lookup looks for.
        #[arg(long, value_enum, default_value_t = Kind::FindValue)]
        kind: Kind,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Write an SVG bar chart of the hop distribution to FILE.
        #[arg(long, value_name = "FILE")]
        plot: Option<PathBuf>,
    },
    /// Mesh routing: N routers on a topology find routes for flows of packets, with loss
    /// and optional link failures; checks that next hops never loop.
    Route {
        /// The shape of the network.
        #[arg(long, value_enum)]
        topology: TopologyArg,
        /// Number of nodes (a random graph keeps its largest connected part).
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Seed of every random choice (positions, keys, latencies, loss, flows, failures).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Links cut during the run: a count (`20`) or, with a decimal point, a fraction
        /// of the links (`0.05`).
        #[arg(long, value_parser = parse_failures, default_value = "0")]
        failures: LinkFailures,
        /// Flows to start; each discovers a route and sends 10 packets, one a second.
        #[arg(long, default_value_t = 100)]
        flows: usize,
        /// Fraction of routing messages lost, 0.0 to below 1.0.
        #[arg(long)]
        loss: Option<f64>,
        /// One-way link latencies in milliseconds, drawn once per link uniformly from
        /// MIN-MAX.
        #[arg(long, value_name = "MIN-MAX", value_parser = parse_latency, default_value = "1-20")]
        latency_ms: (u64, u64),
        /// Which destinations flows pick.
        #[arg(long, value_enum, default_value_t = EndpointsArg::WithinMaxHops)]
        endpoints: EndpointsArg,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub(super) fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.what {
        SimKind::Route {
            topology,
            nodes,
            seed,
            failures,
            flows,
            loss,
            latency_ms,
            endpoints,
            json,
        } => {
            if nodes < 2 {
                bail!("--nodes must be at least 2");
            }
            let topology = match topology {
                TopologyArg::Line => Topology::Line,
                TopologyArg::Ring => Topology::Ring,
                TopologyArg::Grid => Topology::Grid,
                TopologyArg::Random => Topology::RandomGeometric,
            };
            let mut config = RouteSimConfig::new(topology, nodes, seed);
            config.link_failures = failures;
            config.flows = flows;
            (config.latency_min_ms, config.latency_max_ms) = latency_ms;
            config.endpoints = match endpoints {
                EndpointsArg::WithinMaxHops => FlowEndpoints::WithinMaxHops,
                EndpointsArg::Any => FlowEndpoints::AnyReachable,
            };
            if let Some(loss) = loss {
                if !(0.0..1.0).contains(&loss) {
                    bail!("--loss is a fraction from 0.0 to below 1.0, got {loss}");
                }
                config.loss = loss;
            }
            let bar = progress_bar(format!("simulating {nodes} routers ({topology})"));
            let report = run_route(&config, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            let report = report?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print_route_report(&report);
            }
            if report.loops_detected > 0 || report.dead_next_hops > 0 {
                bail!(
                    "routing invariant violated (seed {seed}): {} loops, {} next hops over dead links",
                    report.loops_detected,
                    report.dead_next_hops
                );
            }
            Ok(())
        }
        SimKind::Dht {
            nodes,
            seed,
            churn,
            lookups,
            loss,
            kind,
            json,
            plot,
        } => {
            if nodes < 2 {
                bail!("--nodes must be at least 2");
            }
            if !(0.0..=1.0).contains(&churn) {
                bail!("--churn is a fraction from 0.0 to 1.0, got {churn}");
            }
            let mut config = DhtSimConfig::new(nodes, seed);
            config.churn = churn;
            config.lookups = lookups;
            config.lookup_kind = match kind {
                Kind::FindValue => LookupKind::FindValue,
                Kind::FindNode => LookupKind::FindNode,
            };
            if let Some(loss) = loss {
                if !(0.0..1.0).contains(&loss) {
                    bail!("--loss is a fraction from 0.0 to below 1.0, got {loss}");
                }
                config.loss = loss;
            }
            let bar = progress_bar(format!("simulating {nodes} nodes"));
            let report = run_dht(&config, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            });
            bar.finish_and_clear();
            if let Some(path) = &plot {
                write_hop_plot(path, &report)
                    .with_context(|| format!("cannot write the plot {}", path.display()))?;
            }
            let bound = (nodes as f64).log2().ceil() as u32;
            if json {
                let mut value = serde_json::to_value(&report)?;
                value["kademlia_log2_bound_hops"] = bound.into();
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                print_report(&report, bound);
            }
            Ok(())
        }
    }
}

/// A progress bar on stderr (hidden when stderr is not a terminal).
fn progress_bar(message: String) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0).with_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg} [{bar:40}] {pos}/{len} ({eta})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(message);
    bar
}

/// A latency range, `MIN-MAX` milliseconds.
fn parse_latency(text: &str) -> Result<(u64, u64), String> {
    let bad = || format!("a latency range is MIN-MAX in milliseconds, like 1-20, not {text}");
    let (min, max) = text.split_once('-').ok_or_else(bad)?;
    let (min, max): (u64, u64) = (
        min.trim().parse().map_err(|_| bad())?,
        max.trim().parse().map_err(|_| bad())?,
    );
    if min > max || max > 60_000 {
        return Err(format!(
            "a latency range needs MIN <= MAX <= 60000 milliseconds, got {text}"
        ));
    }
    Ok((min, max))
}

/// Links cut: a count, or a fraction when written with a decimal point.
fn parse_failures(text: &str) -> Result<LinkFailures, String> {
    if text.contains('.') {
        let fraction: f64 = text
            .parse()
            .map_err(|_| format!("not a fraction: {text}"))?;
        if !(0.0..=1.0).contains(&fraction) {
            return Err(format!(
                "a fraction of links is from 0.0 to 1.0, got {text}"
            ));
        }
        Ok(LinkFailures::Fraction(fraction))
    } else {
        text.parse()
            .map(LinkFailures::Count)
            .map_err(|_| format!("not a count of links (or a fraction with a point): {text}"))
    }
}

fn print_route_report(report: &RouteSimReport) {
    let topology = &report.topology;
    let mut shape = format!(
        "{} ({} nodes, {} links, mean degree {:.1}, max {}, diameter {} hops",
        topology.kind,
        topology.nodes,
        topology.links,
        topology.mean_degree,
        topology.max_degree,
        topology.diameter_hops
    );
    if let Some(radius) = topology.radius {
        shape.push_str(&format!(", radius {radius:.3}"));
    }
    if topology.nodes_dropped > 0 {
        shape.push_str(&format!(
            ", {} unconnected nodes left out",
            topology.nodes_dropped
        ));
    }
    shape.push(')');
    let endpoints = match report.endpoints {
        FlowEndpoints::WithinMaxHops => "within",
        FlowEndpoints::AnyReachable => "any distance; max_hops",
    };
    println!("topology                     {shape}");
    println!("seed                         {}", report.seed);
    println!("message loss                 {:.2} %", report.loss * 100.0);
    println!(
        "link latency                 {}-{} ms one way",
        report.latency_min_ms, report.latency_max_ms
    );
    println!("links cut                    {}", report.links_cut);
    println!(
        "flows                        {} ({endpoints} {} hops; mean distance {:.1}; {} beyond)",
        report.flows, report.max_hops, report.flow_distance_hops_mean, report.flows_beyond_max_hops
    );
    println!(
        "discoveries                  {} of {} succeeded ({} flows had a route already)",
        report.discoveries_succeeded, report.discoveries, report.routes_known_at_start
    );
    println!(
        "discovery_latency_ms         median {}, p99 {} (simulated)",
        report.discovery_latency_ms_median, report.discovery_latency_ms_p99
    );
    println!(
        "delivery_ratio               {:.4} of {} packets with a path within max_hops",
        report.delivery_ratio, report.packets_with_path
    );
    println!(
        "delivery_ratio_all           {:.4} of {} sent ({} no route at source, {} dropped on the way)",
        report.delivery_ratio_all,
        report.packets_sent,
        report.packets_no_route_at_source,
        report.packets_dropped_in_transit
    );
    println!(
        "route_stretch                median {:.2}, p99 {:.2} (hops walked / fewest hops)",
        report.route_stretch_median, report.route_stretch_p99
    );
    println!(
        "cost_stretch                 median {:.2}, p99 {:.2} (metric walked / cheapest)",
        report.cost_stretch_median, report.cost_stretch_p99
    );
    println!(
        "path_hops                    median {}, p99 {}",
        report.path_hops_median, report.path_hops_p99
    );
    println!(
        "loops_detected               {} ({} destination audits)",
        report.loops_detected, report.loop_audits
    );
    println!(
        "control messages/node/s      {:.2} ({:.0} B/node/s; hellos {}, rreqs {}, rreps {}, rerrs {})",
        report.control_messages_per_node_per_second,
        report.control_bytes_per_node_per_second,
        report.hellos_sent,
        report.rreqs_sent,
        report.rreps_sent,
        report.rerrs_sent
    );
    println!(
        "repairs                      {} local, {} routes lost, {} rreqs rate-limited",
        report.local_repairs, report.routes_lost, report.rreqs_rate_limited
    );
    println!(
        "simulated_seconds            {:.1}",
        report.simulated_seconds
    );
    println!("wall_seconds                 {:.2}", report.wall_seconds);
}

fn print_report(report: &DhtSimReport, bound: u32) {
    println!("nodes                 {}", report.nodes);
    println!("seed                  {}", report.seed);
    println!(
        "churn                 {:.1} % ({} nodes replaced)",
        report.churn * 100.0,
        report.nodes_replaced
    );
    println!("message loss          {:.2} %", report.loss * 100.0);
    println!(
        "lookups               {} ({:?})",
        report.lookups, report.lookup_kind
    );
    println!("lookup_success_rate   {:.4}", report.lookup_success_rate);
    println!("hops_median           {}", report.hops_median);
    println!("hops_p99              {}", report.hops_p99);
    println!("kademlia bound        ⌈log2 N⌉ = {bound}");
    println!("messages_per_lookup   {:.1}", report.messages_per_lookup);
    println!(
        "latency_ms_median     {} (simulated)",
        report.latency_ms_median
    );
    println!("wall_seconds          {:.2}", report.wall_seconds);
}

/// A bar chart of the hop histogram, as a self-contained SVG.
fn write_hop_plot(path: &Path, report: &DhtSimReport) -> std::io::Result<()> {
    let (width, height, margin) = (640.0_f64, 400.0_f64, 50.0_f64);
    let counts = &report.hop_histogram;
    let max = counts.iter().copied().max().unwrap_or(1).max(1) as f64;
    let bars = counts.len().max(1) as f64;
    let slot = (width - 2.0 * margin) / bars;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" font-family=\"sans-serif\" font-size=\"12\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"{}\" y=\"24\" text-anchor=\"middle\" font-size=\"15\">Lookup hops: {} nodes, seed {}, churn {:.0} %, success {:.2} %</text>\n\
         <line x1=\"{margin}\" y1=\"{}\" x2=\"{}\" y2=\"{}\" stroke=\"black\"/>\n",
        width / 2.0,
        report.nodes,
        report.seed,
        report.churn * 100.0,
        report.lookup_success_rate * 100.0,
        height - margin,
        width - margin,
        height - margin
    );
    for (hops, &count) in counts.iter().enumerate() {
        let bar_height = (height - 2.0 * margin - 20.0) * count as f64 / max;
        let x = margin + slot * hops as f64 + slot * 0.1;
        let y = height - margin - bar_height;
        svg.push_str(&format!(
            "<rect x=\"{x:.1}\" y=\"{y:.1}\" width=\"{:.1}\" height=\"{bar_height:.1}\" fill=\"#3b73b9\"/>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{count}</text>\n\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{hops}</text>\n",
            slot * 0.8,
            x + slot * 0.4,
            y - 4.0,
            x + slot * 0.4,
            height - margin + 16.0
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">hops</text>\n</svg>\n",
        width / 2.0,
        height - 12.0
    ));
    std::fs::File::create(path)?.write_all(svg.as_bytes())
}
