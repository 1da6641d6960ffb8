//! Scenario tests of the DHT simulator at debug-build size (1,000 nodes): the same seed
//! gives the same report, lookups succeed and stay short, and every run terminates with
//! every lookup accounted for.

use meshcore_sim::dht::{simulate_dht, DhtSimConfig, DhtSimReport, LookupKind};

fn config(nodes: usize, seed: u64) -> DhtSimConfig {
    let mut config = DhtSimConfig::new(nodes, seed);
    config.lookups = 300;
    config
}

fn assert_healthy(report: &DhtSimReport, min_success: f64) {
    assert_eq!(
        report.lookups, 300,
        "every lookup is accounted for: {report:?}"
    );
    assert!(
        report.lookup_success_rate >= min_success,
        "success {} below {min_success} (seed {}): {report:?}",
        report.lookup_success_rate,
        report.seed
    );
    assert!(report.hops_median <= 3, "seed {}: {report:?}", report.seed);
    assert!(report.hops_p99 <= 5, "seed {}: {report:?}", report.seed);
    assert_eq!(
        report.hop_histogram.iter().sum::<u64>(),
        report.lookups_succeeded
    );
    assert_eq!(report.wall_seconds, 0.0);
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let mut with_churn = config(1_000, 42);
    with_churn.churn = 0.1;
    let first = simulate_dht(&with_churn, |_, _| {});
    let second = simulate_dht(&with_churn, |_, _| {});
    assert_eq!(first, second);
    let other_seed = simulate_dht(&config(1_000, 43), |_, _| {});
    assert_ne!(first.messages_delivered, other_seed.messages_delivered);
}

#[test]
fn find_value_succeeds_without_and_with_churn() {
    let report = simulate_dht(&config(1_000, 1), |_, _| {});
    assert_healthy(&report, 0.99);
    assert_eq!(report.joins_completed, 1_000);

    let mut churned = config(1_000, 2);
    churned.churn = 0.1;
    let report = simulate_dht(&churned, |_, _| {});
    assert_healthy(&report, 0.98);
    assert_eq!(report.nodes_replaced, 100);
}

#[test]
fn find_node_finds_existing_nodes() {
    let mut find_node = config(1_000, 3);
    find_node.lookup_kind = LookupKind::FindNode;
    let report = simulate_dht(&find_node, |_, _| {});
    assert_healthy(&report, 0.99);
}

#[test]
fn progress_is_reported_and_reaches_the_total() {
    let mut last = (0, 0);
    let mut calls = 0;
    simulate_dht(&config(200, 4), |done, total| {
        assert!(done <= total);
        assert!(done >= last.0, "progress never goes back");
        last = (done, total);
        calls += 1;
    });
    assert!(calls > 1);
    assert_eq!(last.0, last.1);
}

#[test]
fn a_lossy_network_still_terminates() {
    // A quarter of all messages lost: lookups may fail, but every one ends and is counted.
    let mut lossy = config(300, 5);
    lossy.loss = 0.25;
    let report = simulate_dht(&lossy, |_, _| {});
    assert_eq!(report.lookups, 300);
    assert!(report.lookup_success_rate > 0.5, "{report:?}");
}
