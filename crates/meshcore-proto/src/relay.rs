//! Relaying others' traffic within a budget: a sans-IO fair-share limiter,
//! [`RelayLimiter`], and the [`RelayNotice`] a relay sends when it refuses a flow
//! (design.md §3 "Relay and tokens", issue 7).
//!
//! # Rules
//!
//! - **Budget.** A node gives at most `bandwidth` bytes per second (setting
//!   `relay_bandwidth`) to packets it forwards for others, counted as whole frames. A global
//!   token bucket of that rate, `burst` deep (at least one largest frame), is the hard cap:
//!   over any interval of `t` seconds at most `bandwidth × t + depth` bytes pass. Packets
//!   this node originates or receives are not counted.
//! - **Flows.** A flow is `(previous hop, source)`: the neighbour a packet arrived from
//!   (authenticated by the link) and the source named in its header (not authenticated by a
//!   relay). Fairness is two-level, so that forged sources gain a neighbour nothing: the
//!   budget is shared max-min fairly among previous hops, and each hop's share max-min
//!   fairly among its sources.
//! - **Fair shares.** Every `window` (100 ms) the limiter estimates each flow's offered rate
//!   (what arrived, forwarded or not; it rises at once and falls by a quarter of the
//!   difference per window) and computes water levels: `L₁` over the hops' summed demands
//!   against `bandwidth`, then per hop `L₂` over its flows' demands against `L₁`. A flow's
//!   own token bucket then refills at its hop's `L₂`. A flow that offers less than its share
//!   is never limited by it; what it leaves unused goes to the others in the next window.
//!   A packet passes only if both its flow's bucket and the global bucket hold its bytes.
//! - **Refusals.** With relaying off (`enabled` false or `bandwidth` 0) every packet is
//!   refused ([`RelayRefusal::Disabled`]). A packet of an unknown flow starts a new flow,
//!   unless the table is full ([`RelayRefusal::TooManyFlows`]: `max_flows` in all,
//!   `max_flows_per_hop` per previous hop) or the relay is **saturated** — the flows' summed
//!   demand reached `bandwidth` — and one more flow would push the even share below
//!   `min_flow_rate` ([`RelayRefusal::Saturated`]). Refused flows are not remembered; the
//!   driver tells the source why with a [`RelayNotice`] (at most `notice_rate` per second,
//!   [`RelayLimiter::take_notice`]) and makes the previous hop route around this node. A
//!   packet of an admitted flow beyond its share ([`RelayRefusal::OverShare`]) or beyond
//!   the budget ([`RelayRefusal::OverCap`]) is dropped and counted, without a notice.
//! - **Forgetting.** A flow with no packet for `flow_idle` (5 s) is forgotten.
//!
//! # Why not `governor`
//!
//! design.md names `governor` for token buckets. Its limiters read time from a `Clock` they
//! own, keep a fixed quota per limiter and expose no way to change a keyed limiter's rate;
//! here time must be an argument (this crate reads no clock, and the simulator replays
//! time), and every flow's rate changes each window as the fair share moves. So the limiter
//! keeps a small byte bucket of its own (integer milli-bytes, exact refill from
//! millisecond timestamps), as the router does for its RREQ limit.

mod limiter;
mod notice;

#[cfg(test)]
mod tests;

pub use limiter::{
    water_level, FlowKey, FlowView, RelayConfig, RelayConfigError, RelayCounters, RelayLimiter,
    RelayRefusal, MIN_BUCKET_BYTES,
};
pub use notice::{NoticeDecodeError, RelayNotice, NOTICE_LEN};
