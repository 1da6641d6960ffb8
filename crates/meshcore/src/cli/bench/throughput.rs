//! Single-link throughput: data frames over a Meshcore link against a plain QUIC stream
//! (quinn, TLS 1.3 with a self-signed certificate) between two endpoints in the same
//! process, in the same run, on loopback.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use serde::Serialize;

use super::{in_process_network, STEP_TIMEOUT};

/// One measured transfer.
#[derive(Debug, Clone, Copy, Serialize)]
pub(super) struct Transfer {
    /// Bytes delivered to the receiver.
    pub(super) bytes: u64,
    /// From the first write to the last byte read.
    pub(super) seconds: f64,
}

impl Transfer {
    /// Throughput in MiB/s.
    pub(super) fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / (1024.0 * 1024.0) / self.seconds.max(1e-9)
    }
}

/// Sends `total` bytes in `frame`-byte data frames over one Meshcore link.
pub(super) async fn meshcore_link(total: u64, frame: usize) -> anyhow::Result<Transfer> {
    let sender = in_process_network(0, Vec::new()).await?;
    let receiver = in_process_network(0, Vec::new()).await?;
    let mut frames = receiver
        .take_frames()
        .ok_or_else(|| anyhow!("the frame receiver was taken already"))?;
    sender
        .connect(receiver.node_id(), receiver.listen_addrs(), STEP_TIMEOUT)
        .await?;
    let link = sender
        .link(receiver.node_id())
        .await
        .ok_or_else(|| anyhow!("the link closed right after it came up"))?;
    let payload = Bytes::from(vec![0xA5u8; frame]);
    let count = total.div_ceil(frame as u64);
    let started = Instant::now();
    let writer = tokio::spawn(async move {
        for _ in 0..count {
            link.send_data(payload.clone()).await?;
        }
        Ok::<_, meshcore_net::link::SendError>(())
    });
    let mut bytes = 0u64;
    while bytes < count * frame as u64 {
        let received = tokio::time::timeout(STEP_TIMEOUT, frames.recv())
            .await
            .context("no data frame within the step timeout")?
            .ok_or_else(|| anyhow!("the receiving network stopped"))?;
        bytes += received.data.len() as u64;
    }
    let seconds = started.elapsed().as_secs_f64();
    writer.await??;
    sender.shutdown().await;
    receiver.shutdown().await;
    Ok(Transfer { bytes, seconds })
}

/// Sends `total` bytes in `frame`-byte writes over one plain quinn unidirectional stream.
pub(super) async fn plain_quic(total: u64, frame: usize) -> anyhow::Result<Transfer> {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])?;
    let cert = certified.cert.der().clone();
    let key =
        quinn::rustls::pki_types::PrivatePkcs8KeyDer::from(certified.key_pair.serialize_der());
    let server_config = quinn::ServerConfig::with_single_cert(vec![cert.clone()], key.into())?;
    let server = quinn::Endpoint::server(server_config, "127.0.0.1:0".parse()?)?;
    let server_addr = server.local_addr()?;
    let mut roots = quinn::rustls::RootCertStore::empty();
    roots.add(cert)?;
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    client.set_default_client_config(quinn::ClientConfig::with_root_certificates(Arc::new(
        roots,
    ))?);

    let reader = tokio::spawn(async move {
        let incoming = server
            .accept()
            .await
            .ok_or_else(|| anyhow!("the server endpoint closed"))?;
        let connection = incoming.await?;
        let mut stream = connection.accept_uni().await?;
        let mut buffer = vec![0u8; 64 * 1024];
        let mut bytes = 0u64;
        while let Some(n) = stream.read(&mut buffer).await? {
            bytes += n as u64;
        }
        let done = Instant::now();
        connection.close(0u32.into(), b"done");
        server.wait_idle().await;
        Ok::<_, anyhow::Error>((bytes, done))
    });
    let connection = client.connect(server_addr, "localhost")?.await?;
    let payload = vec![0xA5u8; frame];
    let count = total.div_ceil(frame as u64);
    let started = Instant::now();
    let mut stream = connection.open_uni().await?;
    for _ in 0..count {
        stream.write_all(&payload).await?;
    }
    stream.finish()?;
    let (bytes, done) = tokio::time::timeout(STEP_TIMEOUT * 4, reader)
        .await
        .context("the plain QUIC transfer did not finish in time")???;
    client.close(0u32.into(), b"done");
    client.wait_idle().await;
    Ok(Transfer {
        bytes,
        seconds: done.duration_since(started).as_secs_f64(),
    })
}

/// Runs both transfers `runs` times, alternating, and reports the medians.
pub(super) async fn bench(
    mib: u64,
    frame: usize,
    runs: usize,
    as_json: bool,
) -> anyhow::Result<()> {
    let total = mib * 1024 * 1024;
    let (mut link, mut quic) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(1) {
        quic.push(plain_quic(total, frame).await?);
        link.push(meshcore_link(total, frame).await?);
    }
    let median = |runs: &[Transfer]| {
        let mut rates: Vec<f64> = runs.iter().map(Transfer::mib_per_s).collect();
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (link_median, quic_median) = (median(&link), median(&quic));
    let ratio = link_median / quic_median.max(1e-9);
    if as_json {
        let report = serde_json::json!({
            "bytes_per_run": total,
            "frame_bytes": frame,
            "runs": runs.max(1),
            "meshcore_link_mib_s": link.iter().map(Transfer::mib_per_s).collect::<Vec<_>>(),
            "plain_quic_mib_s": quic.iter().map(Transfer::mib_per_s).collect::<Vec<_>>(),
            "meshcore_link_median_mib_s": link_median,
            "plain_quic_median_mib_s": quic_median,
            "link_over_quic_ratio": ratio,
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{mib} MiB in {frame}-byte frames, {} runs each, medians:",
            runs.max(1)
        );
        println!(
            "{:<34} {link_median:>9.1} MiB/s ({:.2} Gbit/s)",
            "Meshcore link (data frames)",
            link_median * 8.0 * 1.048_576 / 1000.0
        );
        println!(
            "{:<34} {quic_median:>9.1} MiB/s ({:.2} Gbit/s)",
            "plain QUIC stream (quinn)",
            quic_median * 8.0 * 1.048_576 / 1000.0
        );
        println!("{:<34} {ratio:.2}×", "link / plain QUIC");
    }
    Ok(())
}
