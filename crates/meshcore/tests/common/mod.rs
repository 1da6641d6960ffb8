//! Helpers shared by the multi-process tests: start a real `meshcore` node on ephemeral
//! loopback ports, talk to its API, stop it. Every wait is bounded.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::Value;

pub const BINARY: &str = env!("CARGO_BIN_EXE_meshcore");
pub const WAIT: Duration = Duration::from_secs(60);

/// A running node process, killed if the test ends early.
pub struct NodeProcess {
    pub child: Child,
    pub node_id: String,
    pub api: String,
    pub listen: String,
    pub stderr: mpsc::Receiver<String>,
}

impl NodeProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        Self::spawn(node_command(data_dir, extra))
    }

    /// Starts `command` (a `meshcore run …`, possibly wrapped) and waits for its ready line.
    pub fn spawn(mut command: Command) -> Self {
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("spawn meshcore");
        let stdout = child.stdout.take().expect("stdout");
        let (line_tx, line_rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = line_tx.send(line);
        });
        let stderr = collect(child.stderr.take().expect("stderr"));
        let line = line_rx
            .recv_timeout(WAIT)
            .expect("node printed its ready line");
        let field = |name: &str| {
            line.split_whitespace()
                .find_map(|part| part.strip_prefix(&format!("{name}=")))
                .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
                .to_owned()
        };
        Self {
            node_id: field("node_id"),
            api: field("api"),
            listen: field("listen"),
            child,
            stderr,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.api)
    }

    pub fn api_host_port(&self) -> String {
        self.api.trim_start_matches("http://").to_owned()
    }

    /// Sends SIGTERM and waits for a clean exit; returns the node's stderr.
    pub fn terminate(mut self) -> String {
        kill(Pid::from_raw(self.child.id() as i32), Signal::SIGTERM).expect("SIGTERM");
        let status = wait_with_timeout(&mut self.child);
        let stderr = self.stderr.recv_timeout(WAIT).expect("stderr closed");
        assert!(status.success(), "node exited with {status}: {stderr}");
        stderr
    }
}

impl NodeProcess {
    /// `NODE_ID@HOST:PORT` of this node, for `--bootstrap` and `meshcore connect`.
    pub fn address(&self) -> String {
        format!("{}@{}", self.node_id, self.listen)
    }

    /// The node's live links, as `GET /v1/connections` lists them.
    pub async fn links(&self) -> Vec<Value> {
        let (status, body) = send(http().get(self.url("/v1/connections"))).await;
        assert_eq!(status, 200, "{body}");
        body.as_array().cloned().unwrap_or_default()
    }

    /// The node ids this node is linked to.
    pub async fn linked_ids(&self) -> Vec<String> {
        self.links()
            .await
            .iter()
            .filter_map(|link| link["remote_node_id"].as_str().map(str::to_owned))
            .collect()
    }

    /// Kills the process at once (SIGKILL): no clean shutdown, as in a crash.
    pub fn kill_hard(mut self) {
        let _ = self.child.kill();
        let _ = wait_with_timeout(&mut self.child);
    }
}

/// Polls `check` every 100 ms until it holds; panics naming `what` after [`WAIT`].
pub async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn node_command(data_dir: &Path, extra: &[&str]) -> Command {
    let mut command = Command::new(BINARY);
    command.arg("run");
    for (flag, default) in [
        ("--api", "127.0.0.1:0"),
        ("--listen", "127.0.0.1:0"),
        ("--webrtc", "127.0.0.1:0"),
    ] {
        let given = extra.contains(&flag) || (flag == "--webrtc" && extra.contains(&"--no-webrtc"));
        if !given {
            command.args([flag, default]);
        }
    }
    command
        // Tests send nothing beyond loopback: no mDNS multicast.
        .arg("--no-lan")
        .arg("--data-dir")
        .arg(data_dir)
        .args(extra)
        .env("RUST_LOG", "info")
        .env_remove("MESHCORE_API")
        .env_remove("MESHCORE_MAX_HOPS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

pub fn collect(mut stream: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stream.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    rx
}

pub fn wait_with_timeout(child: &mut Child) -> ExitStatus {
    for _ in 0..(WAIT.as_millis() / 20) {
        if let Some(status) = child.try_wait().expect("wait") {
            return status;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    panic!("the process did not exit within {WAIT:?}");
}

/// Runs a process to completion and returns (success, stdout, stderr).
pub fn run_to_end(mut command: Command) -> (bool, String, String) {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command.spawn().expect("spawn");
    let stdout = collect(child.stdout.take().expect("stdout"));
    let stderr = collect(child.stderr.take().expect("stderr"));
    let status = wait_with_timeout(&mut child);
    (
        status.success(),
        stdout.recv_timeout(WAIT).expect("stdout"),
        stderr.recv_timeout(WAIT).expect("stderr"),
    )
}

pub fn cli(api: &str, args: &[&str]) -> (bool, String, String) {
    let mut command = Command::new(BINARY);
    command.args(["config", "--api", api]).args(args);
    run_to_end(command)
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(WAIT)
        .build()
        .expect("client")
}

pub async fn send(request: reqwest::RequestBuilder) -> (u16, Value) {
    let response = request.send().await.expect("request");
    let status = response.status().as_u16();
    let text = response.text().await.expect("body");
    let body =
        serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text:?}"));
    (status, body)
}

/// Whether this process may create network namespaces; prints the reason when not.
pub fn can_use_namespaces(test: &str) -> bool {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipping {test}: creating network namespaces needs root");
        return false;
    }
    let works = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .is_ok_and(|out| out.status.success());
    if !works {
        eprintln!("skipping {test}: `ip netns` is not available (install iproute2)");
    }
    works
}

/// Runs `ip ARGS…` and fails the test if it fails.
pub fn ip(args: &[&str]) {
    let output = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        output.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr)
    );
}
