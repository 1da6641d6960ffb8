//! Multi-host tests: every node on its own host, in network namespaces this test creates
//! and deletes, joined by veth pairs with addresses from 198.51.100.0/24 and 203.0.113.0/24.
//! Without IP forwarding a host reaches only its direct neighbours.
//!
//! They need root (to create namespaces); without it each test prints why it is skipped.
//! Each node's API listens on the loopback of its own namespace, so the test asks it
//! through `meshcore peers --json` run inside that namespace.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use common::*;
use serde_json::Value;

const API: &str = "127.0.0.1:8420";

fn tc(args: &[&str]) {
    let output = Command::new("tc").args(args).output().expect("run tc");
    assert!(
        output.status.success(),
        "tc {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Namespaces and veth links of one test; everything is deleted on drop, nodes first.
struct Lab {
    tag: String,
    namespaces: Vec<String>,
    nodes: Vec<NsNode>,
}

static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

impl Lab {
    fn new(hosts: usize) -> Self {
        let tag = format!(
            "mc{}x{}",
            std::process::id() % 100_000,
            NEXT_LAB.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = Self {
            tag,
            namespaces: Vec::new(),
            nodes: Vec::new(),
        };
        for host in 0..hosts {
            let name = format!("{}h{host}", lab.tag);
            ip(&["netns", "add", &name]);
            lab.namespaces.push(name.clone());
            ip(&["-n", &name, "link", "set", "lo", "up"]);
        }
        lab
    }

    fn ns(&self, host: usize) -> &str {
        &self.namespaces[host]
    }

    /// Name of host `from`'s end of the veth between `from` and `to` (at most 15 bytes).
    fn veth(&self, from: usize, to: usize) -> String {
        format!(
            "v{}{from}{to}",
            &self.tag[2..].chars().take(10).collect::<String>()
        )
    }

    /// Joins two hosts with a veth pair on the /24 `net` (e.g. "198.51.100"): host `a` gets
    /// .1 and host `b` gets .2.
    fn wire(&self, a: usize, b: usize, net: &str) {
        self.wire_with(a, b, &format!("{net}.1/24"), &format!("{net}.2/24"));
    }

    /// Joins two hosts with a veth pair, giving them the addresses (with prefix length)
    /// `a_addr` and `b_addr`.
    fn wire_with(&self, a: usize, b: usize, a_addr: &str, b_addr: &str) {
        let (va, vb) = (self.veth(a, b), self.veth(b, a));
        ip(&[
            "link",
            "add",
            &va,
            "netns",
            self.ns(a),
            "type",
            "veth",
            "peer",
            "name",
            &vb,
            "netns",
            self.ns(b),
        ]);
        ip(&["-n", self.ns(a), "addr", "add", a_addr, "dev", &va]);
        ip(&["-n", self.ns(b), "addr", "add", b_addr, "dev", &vb]);
        ip(&["-n", self.ns(a), "link", "set", &va, "up"]);
        ip(&["-n", self.ns(b), "link", "set", &vb, "up"]);
    }

    fn start(&mut self, host: usize, data_dir: &Path, listen: &str, extra: &[&str]) -> usize {
        let mut command = Command::new("ip");
        command
            .args([
                "netns",
                "exec",
                self.ns(host),
                BINARY,
                "run",
                "--api",
                API,
                "--listen",
                listen,
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("RUST_LOG", "info");
        self.nodes.push(NsNode {
            ns: self.ns(host).to_owned(),
            process: NodeProcess::spawn(command),
        });
        self.nodes.len() - 1
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.nodes.clear();
        for name in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", name]).status();
        }
    }
}

struct NsNode {
    ns: String,
    process: NodeProcess,
}

impl NsNode {
    /// Runs `meshcore ARGS --api API --json` inside the host and returns its JSON answer, or
    /// the failure's stderr.
    async fn cli(&self, args: &[&str]) -> Result<Value, String> {
        let run = tokio::process::Command::new("ip")
            .args(["netns", "exec", &self.ns, BINARY])
            .args(args)
            .args(["--api", API, "--json"])
            .output();
        let output = tokio::time::timeout(WAIT, run)
            .await
            .expect("the command answered in time")
            .expect("run meshcore");
        if output.status.success() {
            Ok(serde_json::from_slice(&output.stdout).expect("JSON"))
        } else {
            Err(String::from_utf8_lossy(&output.stderr).into_owned())
        }
    }

    /// The host's links, as `meshcore peers --json` lists them.
    async fn links(&self) -> Vec<Value> {
        let run = tokio::process::Command::new("ip")
            .args([
                "netns", "exec", &self.ns, BINARY, "peers", "--json", "--api", API,
            ])
            .output();
        let output = tokio::time::timeout(WAIT, run)
            .await
            .expect("peers answered in time")
            .expect("run peers");
        assert!(
            output.status.success(),
            "peers: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let links: Value = serde_json::from_slice(&output.stdout).expect("JSON");
        links.as_array().cloned().unwrap_or_default()
    }

    async fn linked_ids(&self) -> Vec<String> {
        self.links()
            .await
            .iter()
            .filter_map(|l| l["remote_node_id"].as_str().map(str::to_owned))
            .collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lan_discovery_links_two_hosts_with_no_bootstrap() {
    if !can_use_namespaces("lan_discovery_links_two_hosts_with_no_bootstrap") {
        return;
    }
    let mut lab = Lab::new(2);
    lab.wire(0, 1, "198.51.100");
    let dirs = [
        tempfile::tempdir().expect("dir"),
        tempfile::tempdir().expect("dir"),
    ];
    let a = lab.start(0, dirs[0].path(), "198.51.100.1:7000", &[]);
    let b = lab.start(1, dirs[1].path(), "198.51.100.2:7000", &[]);
    let (a_id, b_id) = (
        lab.nodes[a].process.node_id.clone(),
        lab.nodes[b].process.node_id.clone(),
    );
    eventually(
        "the two hosts to find each other by mDNS and link",
        || async {
            lab.nodes[a].linked_ids().await.contains(&b_id)
                && lab.nodes[b].linked_ids().await.contains(&a_id)
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_line_of_hosts_links_neighbours_survives_a_cut_and_a_bandwidth_limit() {
    if !can_use_namespaces("a_line_of_hosts_links_neighbours_survives_a_cut_and_a_bandwidth_limit")
    {
        return;
    }
    // h0 —198.51.100.0/24— h1 —203.0.113.0/24— h2, the second link limited to 1 Mbit/s.
    let mut lab = Lab::new(3);
    lab.wire(0, 1, "198.51.100");
    lab.wire(1, 2, "203.0.113");
    for (host, to) in [(1, 2), (2, 1)] {
        let dev = lab.veth(host, to);
        tc(&[
            "-n",
            lab.ns(host),
            "qdisc",
            "add",
            "dev",
            &dev,
            "root",
            "tbf",
            "rate",
            "1mbit",
            "burst",
            "32kb",
            "latency",
            "50ms",
        ]);
    }
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let middle = lab.start(1, dirs[1].path(), "0.0.0.0:7000", &["--no-lan"]);
    let middle_id = lab.nodes[middle].process.node_id.clone();
    let left = lab.start(
        0,
        dirs[0].path(),
        "198.51.100.1:7000",
        &[
            "--no-lan",
            "--bootstrap",
            &format!("{middle_id}@198.51.100.2:7000"),
        ],
    );
    let right = lab.start(
        2,
        dirs[2].path(),
        "203.0.113.2:7000",
        &[
            "--no-lan",
            "--bootstrap",
            &format!("{middle_id}@203.0.113.1:7000"),
        ],
    );
    let (left_id, right_id) = (
        lab.nodes[left].process.node_id.clone(),
        lab.nodes[right].process.node_id.clone(),
    );

    eventually("each end to link with the middle host", || async {
        let ids = lab.nodes[middle].linked_ids().await;
        ids.contains(&left_id) && ids.contains(&right_id)
    })
    .await;
    // The ends cannot reach each other (no forwarding), whatever peer exchange told them.
    assert!(!lab.nodes[left].linked_ids().await.contains(&right_id));
    assert!(!lab.nodes[right].linked_ids().await.contains(&left_id));

    // Cut the left wire: both sides notice.
    let cut = lab.veth(0, 1);
    ip(&["-n", lab.ns(0), "link", "set", &cut, "down"]);
    eventually("the cut link to be dropped on both sides", || async {
        lab.nodes[left].linked_ids().await.is_empty()
            && !lab.nodes[middle].linked_ids().await.contains(&left_id)
    })
    .await;
    // The bandwidth-limited link was never disturbed.
    assert!(lab.nodes[middle].linked_ids().await.contains(&right_id));

    // Mend it: the left host relinks by itself (backoff and retry).
    ip(&["-n", lab.ns(0), "link", "set", &cut, "up"]);
    eventually(
        "the left host to relink after the cut is mended",
        || async { lab.nodes[left].linked_ids().await.contains(&middle_id) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_crosses_a_line_of_five_hosts() {
    if !can_use_namespaces("a_message_crosses_a_line_of_five_hosts") {
        return;
    }
    // h0 — h1 — h2 — h3 — h4, each wire its own /26 of the test ranges and no forwarding:
    // a host reaches only its neighbours, so h0 reaches h4 only through the mesh.
    let wires = [
        ("198.51.100.1/26", "198.51.100.2/26"),
        ("198.51.100.65/26", "198.51.100.66/26"),
        ("203.0.113.1/26", "203.0.113.2/26"),
        ("203.0.113.65/26", "203.0.113.66/26"),
    ];
    let mut lab = Lab::new(5);
    for (i, (a, b)) in wires.iter().enumerate() {
        lab.wire_with(i, i + 1, a, b);
    }
    let ip_of = |cidr: &str| cidr.split('/').next().expect("address").to_owned();
    let dirs: Vec<_> = (0..5).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut ids: Vec<String> = Vec::new();
    for host in 0..5 {
        let listen = match host {
            0 => format!("{}:7000", ip_of(wires[0].0)),
            4 => format!("{}:7000", ip_of(wires[3].1)),
            _ => "0.0.0.0:7000".to_owned(),
        };
        let mut extra = vec![
            "--no-lan".to_owned(),
            "--set".to_owned(),
            "min_connections=1".to_owned(),
        ];
        if host > 0 {
            // Join through the previous host, at its address on the shared wire.
            extra.extend([
                "--bootstrap".to_owned(),
                format!("{}@{}:7000", ids[host - 1], ip_of(wires[host - 1].0)),
            ]);
        }
        let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
        let node = lab.start(host, dirs[host].path(), &listen, &extra);
        ids.push(lab.nodes[node].process.node_id.clone());
    }
    eventually("every host to link with its line neighbours", || async {
        for host in 0..5 {
            let linked = lab.nodes[host].linked_ids().await;
            let wanted = [host.checked_sub(1), Some(host + 1)];
            for neighbour in wanted.into_iter().flatten().filter(|&n| n < 5) {
                if !linked.contains(&ids[neighbour]) {
                    return false;
                }
            }
        }
        true
    })
    .await;

    let route = lab.nodes[0]
        .cli(&["route", "find", &ids[4]])
        .await
        .expect("a route from h0 to h4");
    assert_eq!(route["hop_count"], 4, "{route}");
    assert_eq!(route["next_hop"], ids[1].as_str(), "{route}");
    let delivery = lab.nodes[0]
        .cli(&["send", &ids[4], "across five hosts"])
        .await
        .expect("delivered");
    assert_eq!(delivery["delivered"], true, "{delivery}");
    assert_eq!(delivery["hops"], 4, "{delivery}");

    // Each link's data lane comes up across the wires (each side heard the other's probes
    // on the neighbour's address), and routed packets then cross on it.
    eventually("every link's data lane to be in use", || async {
        for host in 0..5 {
            let links = lab.nodes[host].links().await;
            if links.is_empty() || !links.iter().all(|link| link["data_lane"] == true) {
                return false;
            }
        }
        true
    })
    .await;
    let delivery = lab.nodes[0]
        .cli(&["send", &ids[4], "across five hosts on the lanes"])
        .await
        .expect("delivered");
    assert_eq!(delivery["delivered"], true, "{delivery}");
    assert_eq!(delivery["hops"], 4, "{delivery}");
}
