//! Browser peers in a real browser: headless Chromium (Debian's `chromium`), driven by
//! `web/tests/driver.mjs` through `playwright-core`, talks to real `meshcore` processes over
//! WebRTC. Everything runs in a network namespace this test creates with only loopback in
//! it, so no packet can leave it.
//!
//! Needs root (for the namespace), `/usr/bin/chromium` and `web/tests/node_modules`
//! (`./scripts/test` installs both when missing); without them each test says why it is
//! skipped.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use common::*;
use serde_json::Value;

/// The most one driver run may take (it bounds each of its own waits as well).
const DRIVER_TIMEOUT: Duration = Duration::from_secs(420);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Whether this machine can run the browser tests; prints the reason when not.
fn can_run_browsers(test: &str) -> bool {
    if !can_use_namespaces(test) {
        return false;
    }
    if !Path::new("/usr/bin/chromium").exists() {
        eprintln!("skipping {test}: /usr/bin/chromium is missing (apt-get install -y chromium; ./scripts/test does it)");
        return false;
    }
    if !repo_root()
        .join("web/tests/node_modules/playwright-core")
        .exists()
    {
        eprintln!("skipping {test}: web/tests/node_modules is missing (npm ci --prefix web/tests; ./scripts/test does it)");
        return false;
    }
    true
}

/// A network namespace with only loopback, deleted (with everything in it) on drop.
struct LoopbackHost {
    name: String,
}

static NEXT_HOST: AtomicU32 = AtomicU32::new(0);

impl LoopbackHost {
    fn new() -> Self {
        let name = format!(
            "mcbr{}x{}",
            std::process::id() % 100_000,
            NEXT_HOST.fetch_add(1, Ordering::Relaxed)
        );
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "set", "lo", "up"]);
        Self { name }
    }

    /// `program args…` inside the namespace.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.name, program]);
        command
    }

    /// Starts a node inside the namespace; `extra` are more `meshcore run` arguments.
    fn node(&self, dir: &Path, extra: &[&str]) -> NodeProcess {
        let mut command = self.command(BINARY);
        command
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
            .arg(dir)
            .args(extra)
            .env("RUST_LOG", "info");
        NodeProcess::spawn(command)
    }

    /// Runs a driver scenario in the namespace and returns its JSON report.
    fn drive(&self, scenario: &str, api: &str, extra: &[&str]) -> Value {
        let mut command = self.command("node");
        command
            .arg(repo_root().join("web/tests/driver.mjs"))
            .args([scenario, "--api", api])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("start the browser driver");
        let stdout = collect(child.stdout.take().expect("stdout"));
        let stderr = collect(child.stderr.take().expect("stderr"));
        let status = wait_with_timeout_of(&mut child, DRIVER_TIMEOUT);
        let out = stdout.recv_timeout(WAIT).unwrap_or_default();
        let err = stderr.recv_timeout(WAIT).unwrap_or_default();
        let report: Value = serde_json::from_str(out.trim()).unwrap_or_else(|error| {
            panic!("the driver printed no JSON report ({error}); status {status}\nstdout: {out}\nstderr: {err}")
        });
        assert!(
            status.success() && report["ok"] == true,
            "scenario {scenario} failed: {report}\nstderr: {err}"
        );
        report
    }
}

impl Drop for LoopbackHost {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
            .map(|out| {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-9", pid]).status();
                }
            });
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

fn wait_with_timeout_of(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("wait for the driver") {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("the browser driver ran over {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_page_opens_a_data_channel_to_the_node_and_moves_10_mb_both_ways() {
    if !can_run_browsers("a_page_opens_a_data_channel_to_the_node_and_moves_10_mb_both_ways") {
        return;
    }
    let host = LoopbackHost::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = host.node(dir.path(), &[]);
    let report = host.drive("node", &node.api, &["--bytes", "10000000"]);

    assert_eq!(report["echo_ok"], true, "{report}");
    for part in ["echo", "upload", "download"] {
        assert_eq!(report[part]["sha_match"], true, "{part}: {report}");
        assert_eq!(report[part]["bytes"], 10_000_000, "{part}: {report}");
    }
    assert_eq!(report["app"]["delivered"], true, "{report}");

    // The browser was a link of type webrtc, under the id it proved, and its message is in
    // the node's inbox.
    let browser = report["peer_id"].as_str().expect("peer_id").to_owned();
    let links = report["connections"].as_array().expect("connections");
    assert!(
        links.iter().any(|link| link["connection_type"] == "webrtc"
            && link["remote_node_id"] == browser.as_str()),
        "{report}"
    );
    let inbox = report["messages"].as_array().expect("messages");
    assert!(
        inbox
            .iter()
            .any(|message| message["source"] == browser.as_str()
                && message["payload"] == r#"{"hello":"node"}"#
                && message["hops"] == 0),
        "{report}"
    );
    let stderr = node.terminate();
    assert!(stderr.contains("browser link up"), "{stderr}");
}

#[test]
fn two_pages_talk_directly_after_signaling_through_the_node() {
    if !can_run_browsers("two_pages_talk_directly_after_signaling_through_the_node") {
        return;
    }
    let host = LoopbackHost::new();
    let dir = tempfile::tempdir().expect("tempdir");
    let node = host.node(dir.path(), &[]);
    let report = host.drive("browsers", &node.api, &[]);
    assert_eq!(report["a_to_b"]["delivered"], true, "{report}");
    assert_eq!(report["b_to_a"]["delivered"], true, "{report}");
    assert_eq!(report["b_got"]["data"]["text"], "hi from A", "{report}");
    assert_eq!(report["a_got"]["data"]["text"], "hi from B", "{report}");
    node.terminate();
}

#[test]
fn pages_on_two_nodes_talk_directly_after_signaling_across_the_mesh() {
    if !can_run_browsers("pages_on_two_nodes_talk_directly_after_signaling_across_the_mesh") {
        return;
    }
    let host = LoopbackHost::new();
    let dirs: Vec<tempfile::TempDir> = (0..2)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    let first = host.node(dirs[0].path(), &[]);
    let second = host.node(dirs[1].path(), &["--bootstrap", &first.address()]);
    // A on the first node, B on the second. Each node announces its browser in the DHT.
    // First the nodes carry each browser's signed message to the other (A → node 1 →
    // node 2 → B: three links); then A's node relays A's offer and candidates, B's answer
    // comes back the same way, and the two talk over their own channel.
    let report = host.drive("mesh-browsers", &first.api, &["--api2", &second.api]);
    assert_eq!(report["a_node"], first.node_id.as_str(), "{report}");
    assert_eq!(report["b_node"], second.node_id.as_str(), "{report}");
    for (sender, receiver, text) in [("a", "b", "carried from A"), ("b", "a", "carried from B")] {
        let carried = &report[format!("{sender}_carried")];
        assert_eq!(carried["delivered"], true, "{report}");
        assert_eq!(carried["hops"], 3, "{report}");
        let got = &report[format!("{receiver}_got_carried")];
        assert_eq!(got["peerId"], report[format!("{sender}_id")], "{report}");
        assert_eq!(got["data"]["text"], text, "{report}");
    }
    assert_eq!(report["a_to_b"]["delivered"], true, "{report}");
    assert_eq!(report["a_to_b"]["hops"], 0, "a direct channel: {report}");
    assert_eq!(
        report["b_got"]["data"]["text"], "hi from A across the mesh",
        "{report}"
    );
    assert_eq!(report["a_got"]["data"]["text"], "hi from B", "{report}");
    first.terminate();
    second.terminate();
}

#[test]
fn a_page_and_a_node_two_hops_away_reach_each_others_ids() {
    if !can_run_browsers("a_page_and_a_node_two_hops_away_reach_each_others_ids") {
        return;
    }
    let host = LoopbackHost::new();
    let dirs: Vec<tempfile::TempDir> = (0..3)
        .map(|_| tempfile::tempdir().expect("tempdir"))
        .collect();
    // A line gateway — middle — far: each node may link only with its neighbours.
    let ids: Vec<String> = dirs
        .iter()
        .map(|dir| {
            let (ok, out, err) = run_to_end({
                let mut command = Command::new(BINARY);
                command.args(["id", "--data-dir"]).arg(dir.path());
                command
            });
            assert!(ok, "meshcore id: {err}");
            out.trim().to_owned()
        })
        .collect();
    let allow = |neighbours: &[usize]| {
        let list: Vec<&str> = neighbours.iter().map(|&i| ids[i].as_str()).collect();
        format!("allowed_peers={}", list.join(","))
    };
    let far = host.node(dirs[2].path(), &["--set", &allow(&[1])]);
    let middle = host.node(
        dirs[1].path(),
        &["--set", &allow(&[0, 2]), "--bootstrap", &far.address()],
    );
    let gateway = host.node(
        dirs[0].path(),
        &["--set", &allow(&[1]), "--bootstrap", &middle.address()],
    );
    assert_eq!(gateway.node_id, ids[0]);
    let report = host.drive(
        "mesh",
        &gateway.api,
        &["--to", &far.node_id, "--api2", &far.api],
    );
    // browser → gateway → middle → far: three links.
    assert_eq!(report["result"]["delivered"], true, "{report}");
    assert_eq!(report["result"]["hops"], 3, "{report}");
    // The far node sees the browser itself as the sender, carried by the gateway.
    let browser = report["peer_id"].as_str().expect("peer_id");
    assert_eq!(report["far_got"]["source"], browser, "{report}");
    assert_eq!(
        report["far_got"]["via"],
        gateway.node_id.as_str(),
        "{report}"
    );
    assert_eq!(report["far_got"]["hops"], 3, "{report}");
    assert_eq!(
        report["far_got"]["payload"], r#"{"text":"over the mesh"}"#,
        "{report}"
    );
    // And it reaches the browser's own id: found in the DHT, handed over by the gateway.
    assert_eq!(report["far_to_browser"]["delivered"], true, "{report}");
    assert_eq!(report["far_to_browser"]["hops"], 3, "{report}");
    assert_eq!(
        report["browser_got"]["peerId"],
        far.node_id.as_str(),
        "{report}"
    );
    for node in [gateway, middle, far] {
        node.terminate();
    }
}
