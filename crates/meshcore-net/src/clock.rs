//! The drivers' clock: the one place that turns wall time into the protocol cores'
//! [`Timestamp`]s, and waits for the next timer a core asked for.

use std::time::{SystemTime, UNIX_EPOCH};

use meshcore_proto::dht::Timestamp;

/// Milliseconds since the Unix epoch (0 if the clock is before it).
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Now, as the sans-IO cores count time (milliseconds since the Unix epoch: records and
/// advertisements travel between nodes, so their times must be absolute).
pub fn now() -> Timestamp {
    Timestamp::from_millis(unix_millis())
}

/// Waits until `deadline`, or forever when there is none.
pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
