//! Data frames over a real link on loopback: delivered whole, in order, to the one consumer;
//! oversized frames are refused before they are queued.

mod common;

use std::time::Duration;

use bytes::Bytes;
use meshcore_net::link::{SendError, MAX_DATA_FRAME};
use meshcore_net::Network;
use meshcore_proto::NodeKeypair;
use meshcore_store::Store;
use rand_chacha::rand_core::SeedableRng;

const WAIT: Duration = Duration::from_secs(20);

async fn network(seed: u64) -> Network {
    let keys = NodeKeypair::generate(&mut rand_chacha::ChaCha20Rng::seed_from_u64(seed));
    // The QUIC data stream is what these tests are about: without a data lane, routed
    // packets (which the numbered frames can look like) stay on it too.
    let config = meshcore_net::NetworkConfig {
        data_lane: false,
        ..common::loopback_config(seed)
    };
    let store = Store::open_in_memory().await.expect("store");
    Network::start(&keys, config, store).await.expect("network")
}

fn numbered_frames(count: u32) -> Vec<Bytes> {
    (0..count)
        .map(|i| {
            let len = (i as usize * 131) % MAX_DATA_FRAME + 1;
            Bytes::from(
                (0..len)
                    .map(|j| (i as usize + j) as u8)
                    .collect::<Vec<u8>>(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_written_directly_and_queued_keep_their_order() {
    let (a, b) = (network(3).await, network(4).await);
    let mut received = b.take_frames().expect("take");
    a.connect(b.node_id(), b.listen_addrs(), WAIT)
        .await
        .expect("link");
    let link = a.link(b.node_id()).await.expect("a link handle");
    // Small frames, sent as a relay does (try_send_data, falling back to waiting when the
    // queue is full), mixed with waiting sends: some are written in this task, some queued.
    let frames: Vec<Bytes> = (0..2000u32)
        .map(|i| Bytes::from(i.to_be_bytes().repeat(1 + i as usize % 50)))
        .collect();
    let sender = {
        let (link, frames) = (link.clone(), frames.clone());
        tokio::spawn(async move {
            for (i, frame) in frames.into_iter().enumerate() {
                if i % 7 == 0 {
                    link.send_data(frame).await.expect("send");
                } else if let Err(error) = link.try_send_data(frame.clone()) {
                    assert_eq!(error, SendError::Full);
                    link.send_data(frame).await.expect("send");
                }
                if i % 100 == 0 {
                    // Let the link's writer drain, so that later frames find it idle.
                    tokio::task::yield_now().await;
                }
            }
        })
    };
    for (i, expected) in frames.iter().enumerate() {
        let frame = tokio::time::timeout(WAIT, received.recv())
            .await
            .unwrap_or_else(|_| panic!("frame {i} did not arrive"))
            .expect("sink open");
        assert_eq!(&frame.data, expected, "frame {i}");
    }
    sender.await.expect("sender");
    assert!(
        link.data_frames_written_directly() > 0,
        "no frame took the direct way"
    );
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_arrive_whole_and_in_order() {
    let (a, b) = (network(1).await, network(2).await);
    let mut received = b.take_frames().expect("first take");
    assert!(b.take_frames().is_none(), "the receiver is handed out once");
    a.connect(b.node_id(), b.listen_addrs(), WAIT)
        .await
        .expect("link");
    let link = a.link(b.node_id()).await.expect("a link handle");

    let frames = numbered_frames(500);
    let sender = {
        let (link, frames) = (link.clone(), frames.clone());
        tokio::spawn(async move {
            for frame in frames {
                link.send_data(frame).await.expect("send");
            }
        })
    };
    for (i, expected) in frames.iter().enumerate() {
        let frame = tokio::time::timeout(WAIT, received.recv())
            .await
            .unwrap_or_else(|_| panic!("frame {i} did not arrive"))
            .expect("sink open");
        assert_eq!(frame.peer, a.node_id());
        assert_eq!(&frame.data, expected, "frame {i}");
    }
    sender.await.expect("sender");

    let oversized = Bytes::from(vec![0u8; MAX_DATA_FRAME + 1]);
    assert_eq!(
        link.try_send_data(oversized.clone()),
        Err(SendError::TooLarge {
            len: MAX_DATA_FRAME + 1,
            max: MAX_DATA_FRAME
        })
    );
    assert!(matches!(
        link.send_data(oversized).await,
        Err(SendError::TooLarge { .. })
    ));
    a.shutdown().await;
    b.shutdown().await;
}
