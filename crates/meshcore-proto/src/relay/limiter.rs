//! [`RelayLimiter`]: the relay budget, shared max-min fairly among previous hops and, within
//! each, among sources. The rules are in [the module docs](crate::relay).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::dht::time::Timestamp;
use crate::identity::{NodeId, NODE_ID_LEN};

/// The smallest bucket depth: one largest link data frame (64 KiB) and some room, so that
/// every frame can pass a bucket at some point.
pub const MIN_BUCKET_BYTES: u64 = 64 * 1024 + 1024;

/// The limiter's settings. [`RelayConfig::new`] sets every default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayConfig {
    /// Whether this node relays at all (setting `relay_enabled`, default true).
    pub enabled: bool,
    /// Bytes per second given to relaying (setting `relay_bandwidth`); 0 turns relaying off.
    pub bandwidth: u64,
    /// Depth of the buckets in time at their rate (default 100 ms), at least
    /// [`MIN_BUCKET_BYTES`].
    pub burst: Duration,
    /// How often demands are estimated and shares recomputed (default 100 ms).
    pub window: Duration,
    /// The least even share a new flow may bring the flows down to while the relay is
    /// saturated, bytes per second (default 32 KiB/s).
    pub min_flow_rate: u64,
    /// Most flows at once (default 1024).
    pub max_flows: usize,
    /// Most flows from one previous hop (default 256).
    pub max_flows_per_hop: usize,
    /// A flow without a packet for this long is forgotten (default 5 s).
    pub flow_idle: Duration,
    /// Most refusal notices per second (default 10; the burst is the same number).
    pub notice_rate: u32,
    /// Bytes per second relayed at most for a previous hop that is throttled for debt
    /// ([`RelayLimiter::set_throttled`]; default 32 KiB/s).
    pub throttled_rate: u64,
}

impl RelayConfig {
    /// The defaults, relaying enabled with `bandwidth` bytes per second.
    pub fn new(bandwidth: u64) -> Self {
        Self {
            enabled: true,
            bandwidth,
            burst: Duration::from_millis(100),
            window: Duration::from_millis(100),
            min_flow_rate: 32 * 1024,
            max_flows: 1024,
            max_flows_per_hop: 256,
            flow_idle: Duration::from_secs(5),
            notice_rate: 10,
            throttled_rate: 32 * 1024,
        }
    }

    /// Checks the values, naming the first field that cannot work.
    pub fn validate(&self) -> Result<(), RelayConfigError> {
        let fail = |field, reason| Err(RelayConfigError { field, reason });
        if self.burst.is_zero() {
            return fail("burst", "must be positive");
        }
        if self.window.as_millis() == 0 {
            return fail("window", "must be at least 1 ms");
        }
        if self.max_flows == 0 || self.max_flows_per_hop == 0 {
            return fail("max_flows", "must be positive");
        }
        if self.flow_idle < self.window {
            return fail("flow_idle", "must be at least window");
        }
        if self.notice_rate == 0 {
            return fail("notice_rate", "must be positive");
        }
        Ok(())
    }

    /// Whether these settings relay anything.
    pub fn is_relaying(&self) -> bool {
        self.enabled && self.bandwidth > 0
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self::new(5 * 1024 * 1024)
    }
}

/// A [`RelayConfig`] field holds a value the limiter cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid relay setting `{field}`: {reason}")]
pub struct RelayConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// A flow through this relay: the neighbour its packets come from and their source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    /// The neighbour the packets arrive from (authenticated by the link).
    pub previous_hop: NodeId,
    /// The source's key bytes as the packet header names them (not checked: a relay does
    /// not validate keys per packet, see
    /// [`PacketHeader::peek_source`](crate::route::PacketHeader::peek_source)).
    pub source: [u8; NODE_ID_LEN],
}

/// Why a packet was not forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RelayRefusal {
    /// Relaying is off on this node (`relay_enabled` false or `relay_bandwidth` 0).
    Disabled,
    /// A new flow, refused: the relay is saturated and one more flow would bring the even
    /// share below `min_flow_rate`.
    Saturated,
    /// A new flow, refused: the flow table (or the previous hop's part of it) is full.
    TooManyFlows,
    /// Refused because the previous hop's debt to this node is past its cut-off (decided
    /// by the driver from the ledger's standing).
    Unpaid,
    /// A packet of an admitted flow beyond the flow's fair share: dropped.
    OverShare,
    /// A packet beyond the relay budget: dropped.
    OverCap,
    /// A packet from a previous hop throttled for debt, beyond `throttled_rate`: dropped.
    Throttled,
}

impl RelayRefusal {
    /// Every reason, in code order.
    pub const ALL: [RelayRefusal; 7] = [
        Self::Disabled,
        Self::Saturated,
        Self::TooManyFlows,
        Self::Unpaid,
        Self::OverShare,
        Self::OverCap,
        Self::Throttled,
    ];

    /// The reason's wire code (1–7).
    pub fn code(self) -> u8 {
        match self {
            Self::Disabled => 1,
            Self::Saturated => 2,
            Self::TooManyFlows => 3,
            Self::Unpaid => 4,
            Self::OverShare => 5,
            Self::OverCap => 6,
            Self::Throttled => 7,
        }
    }

    /// The reason with wire code `code`.
    pub fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|reason| reason.code() == code)
    }

    /// Whether this refuses a whole flow (and is told to its source with a
    /// [`RelayNotice`](crate::relay::RelayNotice)), rather than dropping one packet of an
    /// admitted flow.
    pub fn is_flow_refusal(self) -> bool {
        matches!(
            self,
            Self::Disabled | Self::Saturated | Self::TooManyFlows | Self::Unpaid
        )
    }

    /// A short name, as logs and the API show it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Disabled => "relaying_disabled",
            Self::Saturated => "relay_saturated",
            Self::TooManyFlows => "too_many_flows",
            Self::Unpaid => "unpaid",
            Self::OverShare => "over_fair_share",
            Self::OverCap => "over_relay_bandwidth",
            Self::Throttled => "throttled_for_debt",
        }
    }
}

impl fmt::Display for RelayRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Disabled => "the relay does not relay (relaying disabled)",
            Self::Saturated => "the relay is saturated and takes no new flows",
            Self::TooManyFlows => "the relay's flow table is full",
            Self::Unpaid => "the previous hop owes the relay too much",
            Self::OverShare => "the flow is over its fair share",
            Self::OverCap => "the relay is over its bandwidth budget",
            Self::Throttled => "the previous hop is throttled for unpaid debt",
        })
    }
}

/// Running totals of a limiter (packets, unless named bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct RelayCounters {
    /// Packets forwarded.
    pub forwarded_packets: u64,
    /// Bytes forwarded (whole frames).
    pub forwarded_bytes: u64,
    /// Packets refused: relaying off.
    pub refused_disabled: u64,
    /// Packets of new flows refused: saturated.
    pub refused_saturated: u64,
    /// Packets of new flows refused: flow table full.
    pub refused_too_many_flows: u64,
    /// Packets refused: the previous hop is cut off for debt.
    pub refused_unpaid: u64,
    /// Packets dropped: over their flow's fair share.
    pub dropped_over_share: u64,
    /// Packets dropped: over the budget.
    pub dropped_over_cap: u64,
    /// Packets dropped: their previous hop is throttled for debt and over `throttled_rate`.
    pub dropped_throttled: u64,
    /// Bytes of every packet refused or dropped.
    pub refused_bytes: u64,
    /// Flows admitted.
    pub flows_started: u64,
    /// Flows forgotten after `flow_idle` without a packet.
    pub flows_forgotten: u64,
}

/// One flow as [`RelayLimiter::flows`] shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlowView {
    /// The flow.
    pub key: FlowKey,
    /// Its estimated offered rate, bytes per second.
    pub demand: u64,
    /// The rate its bucket refills at now (its fair share), bytes per second.
    pub share: u64,
    /// Bytes forwarded.
    pub forwarded_bytes: u64,
    /// Bytes dropped (over share or over budget).
    pub dropped_bytes: u64,
    /// Its last packet.
    pub last_seen: Timestamp,
}

/// A token bucket of bytes, kept in milli-bytes so that refills from millisecond
/// timestamps are exact: `rate` bytes/s × 1 ms = `rate` milli-bytes.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    milli: u128,
    rate: u64,
    depth: u64,
    last: Timestamp,
}

impl Bucket {
    fn full(rate: u64, depth: u64, now: Timestamp) -> Self {
        Self {
            milli: u128::from(depth) * 1000,
            rate,
            depth,
            last: now,
        }
    }

    fn refill(&mut self, now: Timestamp) {
        let elapsed = now.as_millis().saturating_sub(self.last.as_millis());
        self.last = self.last.max(now);
        self.milli = self
            .milli
            .saturating_add(u128::from(elapsed) * u128::from(self.rate))
            .min(u128::from(self.depth) * 1000);
    }

    fn holds(&self, amount: u64) -> bool {
        self.milli >= u128::from(amount) * 1000
    }

    fn take(&mut self, amount: u64) {
        self.milli = self.milli.saturating_sub(u128::from(amount) * 1000);
    }

    fn reset(&mut self, now: Timestamp, rate: u64, depth: u64) {
        self.refill(now);
        self.rate = rate;
        self.depth = depth;
        self.milli = self.milli.min(u128::from(depth) * 1000);
    }
}

/// A bucket `burst` deep at `rate`, at least [`MIN_BUCKET_BYTES`].
fn depth_for(rate: u64, burst: Duration) -> u64 {
    let bytes = u128::from(rate) * burst.as_millis() / 1000;
    u64::try_from(bytes)
        .unwrap_or(u64::MAX)
        .max(MIN_BUCKET_BYTES)
}

/// The max-min fair water level of `demands` sharing `capacity`: the largest `L` with
/// `Σ min(dᵢ, L) ≤ capacity`, or `capacity` itself when every demand fits (nobody is
/// limited, and no flow may take more than all of it).
pub fn water_level(demands: &mut [u64], capacity: u64) -> u64 {
    demands.sort_unstable();
    let mut remaining = u128::from(capacity);
    let mut left = demands.len() as u128;
    for &demand in demands.iter() {
        let demand = u128::from(demand);
        if demand * left <= remaining {
            remaining -= demand;
            left -= 1;
        } else {
            return u64::try_from(remaining / left).unwrap_or(u64::MAX);
        }
    }
    capacity
}

#[derive(Debug, Clone, Copy)]
struct Flow {
    bucket: Bucket,
    /// Bytes offered since the window began.
    arrived: u64,
    /// Estimated offered rate, bytes per second.
    demand: u64,
    last_seen: Timestamp,
    forwarded_bytes: u64,
    dropped_bytes: u64,
}

/// A previous hop's part of the table.
#[derive(Debug, Clone, Copy, Default)]
struct Hop {
    flows: usize,
    /// The rate each of its flows' buckets refills at (`L₂`).
    level: u64,
}

/// The relay budget of one node, shared fairly among flows. A sans-IO state machine: see
/// [the module docs](crate::relay) for the rules.
///
/// # Run loop
///
/// For every packet this node would forward for another node, the driver calls
/// [`admit`](Self::admit) with the flow and the frame's length and forwards only on `Ok`.
/// On a [flow refusal](RelayRefusal::is_flow_refusal) it may tell the source
/// ([`RelayNotice`](crate::relay::RelayNotice)) if [`take_notice`](Self::take_notice)
/// allows. It calls [`handle_timeout`](Self::handle_timeout) once
/// [`poll_timeout`](Self::poll_timeout) is reached (or more often), so that shares and
/// [`accepts_new_flows`](Self::accepts_new_flows) follow demand when no packet comes, and
/// [`set_limits`](Self::set_limits) when the settings change. `now` must never go back.
#[derive(Debug, Clone)]
pub struct RelayLimiter {
    config: RelayConfig,
    global: Bucket,
    flows: BTreeMap<FlowKey, Flow>,
    hops: BTreeMap<NodeId, Hop>,
    /// The hops' water level (`L₁`).
    level: u64,
    saturated: bool,
    window_start: Timestamp,
    notices: Bucket,
    /// Previous hops throttled for debt, each with its bucket at `throttled_rate`.
    throttled: BTreeMap<NodeId, Bucket>,
    counters: RelayCounters,
}

impl RelayLimiter {
    /// A limiter with no flows, its buckets full.
    pub fn new(config: RelayConfig, now: Timestamp) -> Result<Self, RelayConfigError> {
        config.validate()?;
        let notices = u64::from(config.notice_rate);
        Ok(Self {
            global: Bucket::full(
                config.bandwidth,
                depth_for(config.bandwidth, config.burst),
                now,
            ),
            flows: BTreeMap::new(),
            hops: BTreeMap::new(),
            level: config.bandwidth,
            saturated: false,
            window_start: now,
            notices: Bucket::full(notices, notices, now),
            throttled: BTreeMap::new(),
            counters: RelayCounters::default(),
            config,
        })
    }

    // ---- getters ----

    /// The settings in force.
    pub fn config(&self) -> &RelayConfig {
        &self.config
    }

    /// Whether this node relays at all.
    pub fn is_relaying(&self) -> bool {
        self.config.is_relaying()
    }

    /// Whether the flows' estimated demand reached the budget at the last recomputation.
    pub fn is_saturated(&self) -> bool {
        self.saturated
    }

    /// Whether a packet of a new flow would be admitted now (as of the last
    /// recomputation). While it is not, the node should not offer itself for new routes.
    pub fn accepts_new_flows(&self) -> bool {
        self.is_relaying() && self.flows.len() < self.config.max_flows && !self.crowded()
    }

    /// The previous hops' fair share `L₁`, bytes per second (the budget when nobody is
    /// limited).
    pub fn fair_share(&self) -> u64 {
        self.level
    }

    /// Running totals.
    pub fn counters(&self) -> &RelayCounters {
        &self.counters
    }

    /// Whether `key` is an admitted flow (a packet of it cannot be a flow refusal while
    /// relaying is on, until it is forgotten at a window's end).
    pub fn has_flow(&self, key: &FlowKey) -> bool {
        self.flows.contains_key(key)
    }

    /// Number of flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Every flow, ordered by previous hop and source.
    pub fn flows(&self) -> impl Iterator<Item = FlowView> + '_ {
        self.flows.iter().map(|(key, flow)| FlowView {
            key: *key,
            demand: flow.demand,
            share: flow.bucket.rate,
            forwarded_bytes: flow.forwarded_bytes,
            dropped_bytes: flow.dropped_bytes,
            last_seen: flow.last_seen,
        })
    }

    // ---- inputs ----

    /// Decides whether a packet of `bytes` (the whole frame) of flow `key` is forwarded, and
    /// books it. On `Ok` the caller forwards it; on `Err` it drops it for the reason given.
    pub fn admit(&mut self, now: Timestamp, key: FlowKey, bytes: u64) -> Result<(), RelayRefusal> {
        self.handle_timeout(now);
        if !self.is_relaying() {
            return Err(self.refuse(RelayRefusal::Disabled, bytes));
        }
        if !self.flows.contains_key(&key) {
            let hop_flows = self.hops.get(&key.previous_hop).map_or(0, |hop| hop.flows);
            if self.flows.len() >= self.config.max_flows
                || hop_flows >= self.config.max_flows_per_hop
            {
                return Err(self.refuse(RelayRefusal::TooManyFlows, bytes));
            }
            if self.crowded() {
                return Err(self.refuse(RelayRefusal::Saturated, bytes));
            }
            let hop = self.hops.entry(key.previous_hop).or_insert(Hop {
                flows: 0,
                level: self.level,
            });
            hop.flows += 1;
            let rate = hop.level;
            self.flows.insert(
                key,
                Flow {
                    bucket: Bucket::full(rate, depth_for(rate, self.config.burst), now),
                    arrived: 0,
                    demand: 0,
                    last_seen: now,
                    forwarded_bytes: 0,
                    dropped_bytes: 0,
                },
            );
            self.counters.flows_started += 1;
        }
        self.global.refill(now);
        let global_holds = self.global.holds(bytes);
        let throttle = self.throttled.get_mut(&key.previous_hop);
        let throttle_holds = throttle.is_none_or(|bucket| {
            bucket.refill(now);
            bucket.holds(bytes)
        });
        let Some(flow) = self.flows.get_mut(&key) else {
            return Err(self.refuse(RelayRefusal::TooManyFlows, bytes));
        };
        flow.arrived = flow.arrived.saturating_add(bytes);
        flow.last_seen = now;
        flow.bucket.refill(now);
        let verdict = if !throttle_holds {
            Err(RelayRefusal::Throttled)
        } else if !flow.bucket.holds(bytes) {
            Err(RelayRefusal::OverShare)
        } else if !global_holds {
            Err(RelayRefusal::OverCap)
        } else {
            flow.bucket.take(bytes);
            Ok(())
        };
        match verdict {
            Ok(()) => {
                flow.forwarded_bytes = flow.forwarded_bytes.saturating_add(bytes);
                self.global.take(bytes);
                if let Some(bucket) = self.throttled.get_mut(&key.previous_hop) {
                    bucket.take(bytes);
                }
                self.counters.forwarded_packets += 1;
                self.counters.forwarded_bytes = self.counters.forwarded_bytes.saturating_add(bytes);
                Ok(())
            }
            Err(reason) => {
                flow.dropped_bytes = flow.dropped_bytes.saturating_add(bytes);
                Err(self.refuse(reason, bytes))
            }
        }
    }

    /// Counts a packet the driver refused itself (for [`RelayRefusal::Unpaid`]) and returns
    /// the reason.
    pub fn refuse(&mut self, reason: RelayRefusal, bytes: u64) -> RelayRefusal {
        let counter = match reason {
            RelayRefusal::Disabled => &mut self.counters.refused_disabled,
            RelayRefusal::Saturated => &mut self.counters.refused_saturated,
            RelayRefusal::TooManyFlows => &mut self.counters.refused_too_many_flows,
            RelayRefusal::Unpaid => &mut self.counters.refused_unpaid,
            RelayRefusal::OverShare => &mut self.counters.dropped_over_share,
            RelayRefusal::OverCap => &mut self.counters.dropped_over_cap,
            RelayRefusal::Throttled => &mut self.counters.dropped_throttled,
        };
        *counter += 1;
        self.counters.refused_bytes = self.counters.refused_bytes.saturating_add(bytes);
        reason
    }

    /// Changes whether this node relays and its budget, at once: the global bucket takes
    /// the new rate (keeping at most its new depth) and shares are recomputed.
    pub fn set_limits(&mut self, now: Timestamp, enabled: bool, bandwidth: u64) {
        self.config.enabled = enabled;
        self.config.bandwidth = bandwidth;
        self.global
            .reset(now, bandwidth, depth_for(bandwidth, self.config.burst));
        self.reshare(now);
    }

    /// Throttles (or stops throttling) what is relayed for `hop`, at once: while throttled,
    /// its packets pass at most at `throttled_rate` in all (beyond their fair share's own
    /// limit); the rest are dropped ([`RelayRefusal::Throttled`]). The driver throttles a
    /// neighbour whose unpaid debt is past the ledger's throttle line.
    pub fn set_throttled(&mut self, now: Timestamp, hop: NodeId, throttled: bool) {
        if !throttled {
            self.throttled.remove(&hop);
        } else if !self.throttled.contains_key(&hop) && self.throttled.len() < self.config.max_flows
        {
            let rate = self.config.throttled_rate;
            self.throttled.insert(
                hop,
                Bucket::full(rate, depth_for(rate, self.config.burst), now),
            );
        }
    }

    /// Whether `hop` is throttled.
    pub fn is_throttled(&self, hop: &NodeId) -> bool {
        self.throttled.contains_key(hop)
    }

    /// Whether a refusal notice may be sent now (at most `notice_rate` per second); takes
    /// one if so.
    pub fn take_notice(&mut self, now: Timestamp) -> bool {
        self.notices.refill(now);
        if self.notices.holds(1) {
            self.notices.take(1);
            true
        } else {
            false
        }
    }

    /// Re-estimates demands, forgets idle flows and recomputes shares, if a window has
    /// passed since the last time.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let due = self.window_start.saturating_add(self.config.window);
        if now < due {
            return;
        }
        let elapsed_ms = now
            .as_millis()
            .saturating_sub(self.window_start.as_millis())
            .max(1);
        for flow in self.flows.values_mut() {
            let sample = u64::try_from(u128::from(flow.arrived) * 1000 / u128::from(elapsed_ms))
                .unwrap_or(u64::MAX);
            flow.demand = if sample >= flow.demand {
                sample
            } else {
                flow.demand - (flow.demand - sample) / 4
            };
            flow.arrived = 0;
        }
        let idle = self.config.flow_idle;
        let before = self.flows.len();
        self.flows
            .retain(|_, flow| now.saturating_duration_since(flow.last_seen) < idle);
        self.counters.flows_forgotten += (before - self.flows.len()) as u64;
        self.window_start = now;
        self.reshare(now);
    }

    // ---- outputs ----

    /// When [`handle_timeout`](Self::handle_timeout) should next run: the end of the
    /// window, while there are flows.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        (!self.flows.is_empty()).then(|| self.window_start.saturating_add(self.config.window))
    }

    // ---- internals ----

    /// Saturated, and one more flow would bring the even share below `min_flow_rate`.
    fn crowded(&self) -> bool {
        let flows = self.flows.len() as u128 + 1;
        self.saturated
            && u128::from(self.config.bandwidth) < u128::from(self.config.min_flow_rate) * flows
    }

    /// Recomputes the water levels from the current demand estimates and gives every flow
    /// its hop's level.
    fn reshare(&mut self, now: Timestamp) {
        let mut by_hop: BTreeMap<NodeId, Vec<u64>> = BTreeMap::new();
        for (key, flow) in &self.flows {
            by_hop
                .entry(key.previous_hop)
                .or_default()
                .push(flow.demand);
        }
        let bandwidth = self.config.bandwidth;
        let mut hop_demands: Vec<u64> = by_hop
            .values()
            .map(|demands| demands.iter().fold(0u64, |sum, d| sum.saturating_add(*d)))
            .collect();
        let total = hop_demands
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(*d));
        self.saturated = bandwidth > 0 && total >= bandwidth;
        self.level = water_level(&mut hop_demands, bandwidth);
        let level = self.level;
        self.hops = by_hop
            .into_iter()
            .map(|(hop, mut demands)| {
                let flows = demands.len();
                let level = water_level(&mut demands, level);
                (hop, Hop { flows, level })
            })
            .collect();
        let burst = self.config.burst;
        for (key, flow) in &mut self.flows {
            let rate = self
                .hops
                .get(&key.previous_hop)
                .map_or(level, |hop| hop.level);
            flow.bucket.reset(now, rate, depth_for(rate, burst));
        }
    }
}
