//! DHT on real processes: `nodes` `meshcore run` children on loopback, joined through one
//! bootstrap node; a value put on one node is read from every other. Reports the put time
//! and the get latency as an HTTP client of each node sees it, first read (the lookup opens
//! QUIC connections to nodes it has not talked to) and repeated reads.

use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use serde_json::{json, Value};

use super::{summarize, ChildNode, STEP_TIMEOUT};

async fn until<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = Instant::now() + STEP_TIMEOUT * 2;
    while !check().await? {
        if Instant::now() > deadline {
            return Err(anyhow!("timed out waiting for {what}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

async fn json_of(response: reqwest::Response) -> anyhow::Result<(u16, Value)> {
    let status = response.status().as_u16();
    Ok((status, response.json().await.context("a non-JSON answer")?))
}

pub(super) async fn bench(nodes: usize, reads: usize, as_json: bool) -> anyhow::Result<()> {
    let nodes = nodes.max(2);
    let http = reqwest::Client::builder().timeout(STEP_TIMEOUT).build()?;
    let hub = ChildNode::start(&[])?;
    let mut all = vec![hub];
    for _ in 1..nodes {
        let entry = all[0].address();
        all.push(ChildNode::start(&["--bootstrap", &entry])?);
    }
    let want_links = 3.min(nodes - 1);
    until("every node to hold min_connections links", || async {
        for node in &all {
            let (_, links) = json_of(http.get(node.url("/v1/connections")).send().await?).await?;
            if links.as_array().map_or(0, Vec::len) < want_links {
                return Ok(false);
            }
        }
        Ok(true)
    })
    .await?;

    let writer = &all[nodes - 1];
    let started = Instant::now();
    let (status, put) = json_of(
        http.post(writer.url("/v1/dht/put"))
            .json(&json!({"key": "bench", "value": {"n": nodes}, "ttl": 600}))
            .send()
            .await?,
    )
    .await?;
    let put_time = started.elapsed();
    if status != 200 {
        return Err(anyhow!("put failed ({status}): {put}"));
    }
    let key = put["key"].as_str().context("no key")?.to_owned();

    let (mut first, mut repeated) = (Vec::new(), Vec::new());
    for node in &all[..nodes - 1] {
        for round in 0..=reads {
            let started = Instant::now();
            let (status, body) = json_of(
                http.get(node.url("/v1/dht/get"))
                    .query(&[("key", &key)])
                    .send()
                    .await?,
            )
            .await?;
            let elapsed = started.elapsed();
            if status != 200 || body["value"] != json!({"n": nodes}) {
                return Err(anyhow!(
                    "node {} could not read the value: {body}",
                    node.node_id
                ));
            }
            if round == 0 {
                first.push(elapsed);
            } else {
                repeated.push(elapsed);
            }
        }
    }
    let report = json!({
        "nodes": nodes,
        "stored_on": put["stored_on"],
        "put_ms": put_time.as_secs_f64() * 1e3,
        "get_first": summarize(first),
        "get_repeated": summarize(repeated),
    });
    drop(all);
    if as_json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{nodes} nodes on loopback; value stored on {} other nodes",
            report["stored_on"]
        );
        println!(
            "{:<28} {:>8.3} ms",
            "put (signed, k closest)",
            report["put_ms"].as_f64().unwrap_or(0.0)
        );
        for (name, key) in [
            ("get, first read per node", "get_first"),
            ("get, repeated reads", "get_repeated"),
        ] {
            let s = &report[key];
            println!(
                "{name:<28} median {:>8.3} ms   p90 {:>8.3} ms   max {:>8.3} ms   (n={})",
                s["median_ms"].as_f64().unwrap_or(0.0),
                s["p90_ms"].as_f64().unwrap_or(0.0),
                s["max_ms"].as_f64().unwrap_or(0.0),
                s["samples"]
            );
        }
    }
    Ok(())
}
