//! The batching writer of known nodes: the actor hands it records without waiting; it
//! writes them to `meshcore_nodes` in one transaction per batch.

use std::collections::BTreeMap;
use std::time::Duration;

use meshcore_store::{NodeRecord, Store};
use tokio::sync::mpsc;

/// Records queued before new ones are dropped (and counted in the log).
pub const QUEUE: usize = 4096;

/// Longest time a record waits before its batch is written.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(500);

/// Most records in one transaction.
pub const MAX_BATCH: usize = 256;

/// Starts the writer. It runs until every sender is dropped, then writes what is left.
pub fn spawn(store: Store) -> (mpsc::Sender<NodeRecord>, tokio::task::JoinHandle<()>) {
    let (sender, mut receiver) = mpsc::channel::<NodeRecord>(QUEUE);
    let task = tokio::spawn(async move {
        let mut pending: BTreeMap<String, NodeRecord> = BTreeMap::new();
        let mut tick = tokio::time::interval(FLUSH_INTERVAL);
        loop {
            tokio::select! {
                record = receiver.recv() => match record {
                    Some(record) => {
                        pending.insert(record.node_id.clone(), record);
                        if pending.len() >= MAX_BATCH {
                            flush(&store, &mut pending).await;
                        }
                    }
                    None => {
                        flush(&store, &mut pending).await;
                        break;
                    }
                },
                _ = tick.tick() => flush(&store, &mut pending).await,
            }
        }
    });
    (sender, task)
}

async fn flush(store: &Store, pending: &mut BTreeMap<String, NodeRecord>) {
    if pending.is_empty() {
        return;
    }
    let batch: Vec<NodeRecord> = std::mem::take(pending).into_values().collect();
    if let Err(error) = store.upsert_nodes(&batch).await {
        tracing::warn!(%error, records = batch.len(), "could not store known nodes");
    }
}
