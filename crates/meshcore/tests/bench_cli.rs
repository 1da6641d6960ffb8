//! `meshcore bench throughput` runs end to end and reports both transfers. Only the shape and
//! the byte counts are checked: tests never assert wall-clock figures.

mod common;

use std::process::Command;

#[test]
fn the_throughput_bench_reports_both_transfers() {
    let mut command = Command::new(common::BINARY);
    command
        .args(["bench", "throughput", "--mib", "2", "--frame", "4096"])
        .args(["--runs", "1", "--json"])
        .env("RUST_LOG", "warn");
    let (success, stdout, stderr) = common::run_to_end(command);
    assert!(success, "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["bytes_per_run"], 2 * 1024 * 1024);
    assert_eq!(report["frame_bytes"], 4096);
    for key in ["meshcore_link_median_mib_s", "plain_quic_median_mib_s"] {
        let rate = report[key].as_f64().expect(key);
        assert!(rate.is_finite() && rate > 0.0, "{key} = {rate}");
    }
}

#[test]
fn an_oversized_frame_is_refused_by_the_argument_parser() {
    let mut command = Command::new(common::BINARY);
    command.args(["bench", "throughput", "--frame", "70000"]);
    let (success, _, stderr) = common::run_to_end(command);
    assert!(!success);
    assert!(stderr.contains("--frame"), "{stderr}");
}

#[test]
fn the_route_bench_reports_every_measurement() {
    let mut command = Command::new(common::BINARY);
    command
        .args(["bench", "route", "--samples", "5", "--warmup", "2"])
        .args(["--packets", "1000", "--routes", "200", "--mib", "1"])
        .args([
            "--message",
            "4096",
            "--in-flight",
            "4",
            "--recoveries",
            "1",
            "--json",
        ])
        .env("RUST_LOG", "warn");
    let (success, stdout, stderr) = common::run_to_end(command);
    assert!(success, "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    let positive = |value: &serde_json::Value, what: &str| {
        let v = value
            .as_f64()
            .unwrap_or_else(|| panic!("{what} is not a number"));
        assert!(v.is_finite() && v > 0.0, "{what} = {v}");
    };
    let latency = report["latency"].as_array().expect("latency lines");
    assert_eq!(latency.len(), 4, "direct and 1, 2, 3 relays");
    for (relays, line) in latency.iter().enumerate() {
        assert_eq!(line["relays"], relays);
        assert_eq!(line["hops"], relays + 1, "links crossed one way");
        assert_eq!(line["rtt"]["samples"], 5);
        positive(&line["rtt"]["median_us"], "rtt median");
    }
    positive(&report["relay_forwarding"]["packets_per_s"], "relay rate");
    let lines = report["throughput"]["lines"].as_array().expect("lines");
    assert_eq!(lines.len(), 4);
    for line in lines {
        positive(&line["payload_bytes_acknowledged"], "bytes acknowledged");
    }
    assert_eq!(report["memory"]["routes"], 200);
    assert_eq!(report["memory"]["hop_count"], 2);
    assert_eq!(report["recovery"]["runs"], 1);
    positive(&report["recovery"]["median_ms"], "recovery time");
}

#[test]
fn the_relay_bench_reports_caps_fairness_and_relaying_off() {
    let mut command = Command::new(common::BINARY);
    command
        .args([
            "bench",
            "relay",
            "--cap-kib",
            "256,512",
            "--fair-cap-kib",
            "512",
        ])
        .args([
            "--seconds",
            "0.5",
            "--warmup",
            "0.3",
            "--message",
            "4096",
            "--json",
        ])
        .env("RUST_LOG", "warn");
    let (success, stdout, stderr) = common::run_to_end(command);
    assert!(success, "bench failed: {stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).expect("JSON report");
    assert_eq!(report["message_bytes"], 4096);
    let caps = report["cap"].as_array().expect("cap rows");
    assert_eq!(caps.len(), 2);
    assert_eq!(caps[0]["relay_bandwidth"], 256 * 1024);
    assert_eq!(caps[1]["relay_bandwidth"], 512 * 1024);
    for row in caps {
        let ratio = row["ratio"].as_f64().expect("ratio");
        assert!(ratio.is_finite() && ratio > 0.0, "ratio {ratio}");
    }
    let normal = report["fairness"]["normal"]
        .as_array()
        .expect("normal rows");
    assert_eq!(normal.len(), 2);
    for row in normal {
        assert!(row["kept"].as_f64().is_some_and(f64::is_finite), "{row}");
    }
    // Relaying off: nothing forwarded, whatever the timing.
    assert_eq!(report["disabled"]["forwarded_packets"], 0);
    assert!(
        report["disabled"]["refused_disabled"]
            .as_u64()
            .expect("count")
            >= 1
    );
}
