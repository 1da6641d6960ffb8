//! Runs the DHT simulation from the command line and prints the report as JSON.
//!
//! ```text
//! cargo run -p meshcore-sim --release --example dht -- --nodes 10000 --churn 0.1 --seed 1
//! ```
//!
//! Flags: `--nodes N`, `--seed S`, `--churn F`, `--lookups L`, `--loss P`,
//! `--kind find-value|find-node`. Progress goes to stderr, the report to stdout.

use std::process::ExitCode;

use meshcore_sim::dht::{run_dht, DhtSimConfig, LookupKind};

fn main() -> ExitCode {
    match parse(std::env::args().skip(1)) {
        Ok(config) => {
            let report = run_dht(&config, |done, total| {
                eprint!("\r{done}/{total}");
            });
            eprintln!();
            match serde_json::to_string_pretty(&report) {
                Ok(json) => {
                    println!("{json}");
                    ExitCode::SUCCESS
                }
                Err(error) => {
                    eprintln!("cannot print the report: {error}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(message) => {
            eprintln!("{message}");
            ExitCode::from(2)
        }
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<DhtSimConfig, String> {
    let mut config = DhtSimConfig::new(1_000, 1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let bad = || format!("invalid value for {flag}: {value}");
        match flag.as_str() {
            "--nodes" => config.nodes = value.parse().map_err(|_| bad())?,
            "--seed" => config.seed = value.parse().map_err(|_| bad())?,
            "--churn" => config.churn = value.parse().map_err(|_| bad())?,
            "--lookups" => config.lookups = value.parse().map_err(|_| bad())?,
            "--loss" => config.loss = value.parse().map_err(|_| bad())?,
            "--kind" => {
                config.lookup_kind = match value.as_str() {
                    "find-value" => LookupKind::FindValue,
                    "find-node" => LookupKind::FindNode,
                    _ => return Err(format!("--kind is find-value or find-node, not {value}")),
                }
            }
            _ => return Err(format!("unknown flag {flag}")),
        }
    }
    Ok(config)
}
