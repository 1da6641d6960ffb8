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
