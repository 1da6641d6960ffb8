//! `meshcore sim`: the deterministic simulator over the real protocol cores.
//! Same seed, same numbers (all but `wall_seconds`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use meshcore_sim::dht::{run_dht, DhtSimConfig, DhtSimReport, LookupKind};

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
}

pub(super) fn run(args: SimArgs) -> anyhow::Result<()> {
    match args.what {
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
            let bar = indicatif::ProgressBar::new(0).with_style(
                indicatif::ProgressStyle::with_template(
                    "{spinner} {msg} [{bar:40}] {pos}/{len} ({eta})",
                )
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_message(format!("simulating {nodes} nodes"));
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
