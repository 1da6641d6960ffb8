//! Scenario tests of the route simulator: every topology delivers with no routing loop, the
//! same seed gives the same report, cut links are repaired around where a path remains,
//! and destinations beyond `max_hops` fail as they should.
//!
//! Networks of 100–200 nodes. Every route request makes its originator sign and every node
//! it reaches verify an Ed25519 signature; the workspace optimises the curve and hash crates
//! even in debug builds (`[profile.dev.package.*]` in Cargo.toml), which keeps these runs to
//! seconds.

use meshcore_sim::route::{
    simulate_route, FlowEndpoints, LinkFailures, RouteSimConfig, RouteSimReport, Topology,
};

/// A short scenario: a 20 s traffic phase, five packets per flow.
fn config(topology: Topology, nodes: usize, seed: u64) -> RouteSimConfig {
    let mut config = RouteSimConfig::new(topology, nodes, seed);
    config.flows = 60;
    config.packets_per_flow = 5;
    config.duration_ms = 20_000;
    config
}

fn run(config: &RouteSimConfig) -> RouteSimReport {
    simulate_route(config, |_, _| {}).expect("valid configuration")
}

/// The invariants every run must keep, whatever the topology, loss or failures.
fn assert_invariants(report: &RouteSimReport) {
    let seed = report.seed;
    assert_eq!(report.loops_detected, 0, "seed {seed}: {report:#?}");
    assert_eq!(report.dead_next_hops, 0, "seed {seed}: {report:#?}");
    assert_eq!(report.misbehaviour_reports, 0, "seed {seed}: {report:#?}");
    assert_eq!(report.flows_unfinished, 0, "seed {seed}: {report:#?}");
    assert_eq!(report.queue_drops, 0, "seed {seed}: {report:#?}");
    assert!(report.loop_audits > 0, "seed {seed}: audits ran");
    assert_eq!(
        report.packets_sent,
        report.flows * 5,
        "seed {seed}: every packet is accounted for"
    );
    assert_eq!(
        report.packets_delivered
            + report.packets_no_route_at_source
            + report.packets_dropped_in_transit,
        report.packets_sent,
        "seed {seed}: every packet is delivered or dropped for a reason"
    );
    assert!(report.route_stretch_median >= 1.0 || report.packets_delivered == 0);
    assert!(report.cost_stretch_median >= 1.0 || report.packets_delivered == 0);
    assert_eq!(report.wall_seconds, 0.0);
}

fn assert_delivers(report: &RouteSimReport, min_ratio: f64) {
    assert_invariants(report);
    assert!(
        report.delivery_ratio >= min_ratio,
        "{} delivery {} below {min_ratio} (seed {}): {report:#?}",
        report.topology.kind,
        report.delivery_ratio,
        report.seed
    );
    assert!(
        report.discoveries > 0,
        "flows needed discovery: {report:#?}"
    );
}

#[test]
fn a_line_delivers_without_loops() {
    let report = run(&config(Topology::Line, 200, 1));
    assert_eq!(report.topology.links, report.topology.nodes - 1);
    assert_eq!(report.flows_beyond_max_hops, 0);
    assert_delivers(&report, 0.95);
}

#[test]
fn a_ring_delivers_without_loops() {
    let report = run(&config(Topology::Ring, 200, 2));
    assert_eq!(report.topology.links, report.topology.nodes);
    assert_delivers(&report, 0.95);
}

#[test]
fn a_grid_delivers_without_loops() {
    let report = run(&config(Topology::Grid, 196, 3));
    assert_eq!(report.topology.max_degree, 4);
    assert_delivers(&report, 0.9);
}

#[test]
fn a_random_geometric_graph_delivers_without_loops() {
    let report = run(&config(Topology::RandomGeometric, 150, 4));
    assert!(report.topology.radius.is_some());
    assert!(report.topology.mean_degree > 4.0, "{:?}", report.topology);
    assert_delivers(&report, 0.85);
}

#[test]
fn the_same_seed_gives_the_same_report() {
    let mut with_failures = config(Topology::Grid, 100, 5);
    with_failures.flows = 60;
    with_failures.link_failures = LinkFailures::Count(2);
    let first = run(&with_failures);
    let second = run(&with_failures);
    assert_eq!(first, second);
    assert_invariants(&first);

    let mut other_seed = with_failures.clone();
    other_seed.seed = 6;
    let other = run(&other_seed);
    assert_ne!(first.control_messages, other.control_messages);
}

#[test]
fn cut_links_are_routed_around_where_a_path_remains() {
    let mut failing = config(Topology::Grid, 196, 7);
    failing.link_failures = LinkFailures::Fraction(0.1);
    let report = run(&failing);
    let expected_cuts = (0.1 * report.topology.links as f64).round() as u64;
    assert_eq!(report.links_cut, expected_cuts);
    assert!(
        report.local_repairs + report.routes_lost > 0,
        "the cuts broke some routes: {report:#?}"
    );
    // Packets whose destination was cut off do not count against the routers.
    assert!(report.packets_with_path <= report.packets_sent);
    assert_delivers(&report, 0.8);
}

#[test]
fn destinations_beyond_max_hops_fail_and_only_they_do() {
    // On a line much longer than max_hops, many random destinations are out of reach:
    // their discoveries fail, the others deliver.
    let mut far = config(Topology::Line, 100, 8);
    far.flows = 60;
    far.endpoints = FlowEndpoints::AnyReachable;
    let mut last = (0, 0);
    let report = simulate_route(&far, |done, total| {
        assert!(
            done >= last.0 && done <= total,
            "progress only goes forward"
        );
        last = (done, total);
    })
    .expect("valid configuration");
    assert_eq!(last.0, last.1, "progress reaches its total");
    assert!(report.flows_beyond_max_hops > 0, "{report:#?}");
    assert!(report.discoveries_succeeded < report.discoveries);
    assert!(report.delivery_ratio_all < 1.0);
    assert!(report.packets_with_path < report.packets_sent);
    assert_delivers(&report, 0.9);
}
