//! Tunables of the router: [`RouterConfig`], with every default set in
//! [`RouterConfig::new`] and each field's doc stating its default. Wire bounds that are not
//! tunable live in [`message`](crate::route::message).

use std::time::Duration;

use crate::route::message::MAX_PATH_LEN;

/// The largest `max_neighbours`: route entries name neighbours by a 16-bit slot.
const MAX_NEIGHBOURS: usize = crate::route::table::MAX_SLOTS;

/// Tunables of a [`Router`](crate::route::Router). [`RouterConfig::new`] sets every default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RouterConfig {
    /// Longest route in hops, setting `max_hops` (default 10; at most [`MAX_PATH_LEN`]).
    /// Also the last TTL of the expanding ring.
    pub max_hops: u8,
    /// Lifetime of a route from its destination's signature, setting `route_timeout`
    /// (default 300 s). Also the age beyond which an advertisement is stale.
    pub route_timeout: Duration,
    /// Mean interval between hellos (default 5 s); each is jittered to 75–100 % of it.
    pub hello_interval: Duration,
    /// How long a neighbour's reported links stay in the graph without a new hello
    /// (default 15 s).
    pub neighbour_report_timeout: Duration,
    /// Age at which this node re-signs its own advertisement for hellos (default 60 s).
    pub advert_refresh: Duration,
    /// Largest clock difference between nodes that advertisements tolerate (default 30 s):
    /// an `issued_at` further in the future is refused, and feasibility distances are kept
    /// this much longer than the routes derived from them.
    pub max_clock_skew: Duration,
    /// TTL of the first ring of a discovery (default 1); doubled each ring.
    pub ring_initial_ttl: u8,
    /// Estimated time for one hop to pass a message on (default 40 ms, AODV's
    /// `NODE_TRAVERSAL_TIME`). A ring with TTL `t` waits `2 · this · (t + 2)`.
    pub node_traversal_time: Duration,
    /// Further floods at `max_hops` after the rings before a discovery fails (default 2).
    pub rreq_retries: u8,
    /// Most RREQs this node sends per second, originated and forwarded together
    /// (default 10; the burst is the same number).
    pub rreq_rate_limit: u32,
    /// Most route errors this node sends per second about data packets it had no route
    /// for (default 10, AODV's `RERR_RATELIMIT`; the burst is the same number). Route errors
    /// for routes lost are not limited: there is one per lost route and precursor.
    pub rerr_rate_limit: u32,
    /// How long a seen `(originator, rreq_id)` suppresses duplicates (default 10 s).
    pub rreq_seen_time: Duration,
    /// Most `(originator, rreq_id)` pairs remembered (default 1024); the oldest is
    /// forgotten first.
    pub max_seen_rreqs: usize,
    /// How long a neighbour through which end-to-end delivery to a destination failed is
    /// not used for that destination ([`Router::delivery_failed`](crate::route::Router::delivery_failed);
    /// default 60 s).
    pub avoid_time: Duration,
    /// Most (destination, neighbour) pairs avoided at once (default 1024); the one due to
    /// end first is forgotten to make room.
    pub max_avoided: usize,
    /// Most destinations with state (routes, feasibility distances) (default 4096).
    /// Advertisements for new destinations beyond it are refused and counted.
    pub max_destinations: usize,
    /// Most neighbours (default 64; at most 65,535). Up to 64 cost a route entry no
    /// memory for its precursors.
    pub max_neighbours: usize,
    /// Most discoveries running at once (default 64).
    pub max_discoveries: usize,
    /// Most messages waiting in [`poll_transmit`](crate::route::Router::poll_transmit)
    /// (default 4096); beyond it new messages are dropped and counted.
    pub max_queued_transmits: usize,
    /// Most events waiting in [`poll_event`](crate::route::Router::poll_event)
    /// (default 1024); beyond it new events are dropped and counted.
    pub max_queued_events: usize,
    /// Fixed cost of one hop in metric units of 0.1 ms (default 100, i.e. 10 ms; at least
    /// 1 — a zero-cost link would break loop freedom — and at most 1,000,000).
    pub hop_cost: u32,
    /// Whether this node relays for others (default true; setting `relay_enabled`, and off
    /// while the relay budget takes no new flows). A node that does not relay neither
    /// forwards others' route requests and replies nor announces routes to its neighbours
    /// in hellos, so routes between other nodes form around it; it still finds routes for
    /// itself and answers requests for itself. Changed at run time with
    /// [`Router::set_relaying`](crate::route::Router::set_relaying).
    pub relay: bool,
    /// Seed of the router's random number generator (hello jitter, first RREQ id).
    pub rng_seed: u64,
}

impl RouterConfig {
    /// The defaults, with the given RNG seed.
    pub fn new(rng_seed: u64) -> Self {
        Self {
            max_hops: 10,
            route_timeout: Duration::from_secs(300),
            hello_interval: Duration::from_secs(5),
            neighbour_report_timeout: Duration::from_secs(15),
            advert_refresh: Duration::from_secs(60),
            max_clock_skew: Duration::from_secs(30),
            ring_initial_ttl: 1,
            node_traversal_time: Duration::from_millis(40),
            rreq_retries: 2,
            rreq_rate_limit: 10,
            rerr_rate_limit: 10,
            rreq_seen_time: Duration::from_secs(10),
            max_seen_rreqs: 1024,
            avoid_time: Duration::from_secs(60),
            max_avoided: 1024,
            max_destinations: 4096,
            max_neighbours: 64,
            max_discoveries: 64,
            max_queued_transmits: 4096,
            max_queued_events: 1024,
            hop_cost: 100,
            relay: true,
            rng_seed,
        }
    }

    /// How long a ring with TTL `ttl` waits for an answer.
    pub fn ring_timeout(&self, ttl: u8) -> Duration {
        self.node_traversal_time
            .saturating_mul(2)
            .saturating_mul(u32::from(ttl) + 2)
    }

    /// Checks that the values make sense together, naming the first field that does not.
    pub fn validate(&self) -> Result<(), RouteConfigError> {
        if self.max_hops == 0 || usize::from(self.max_hops) > MAX_PATH_LEN {
            return Err(RouteConfigError::new(
                "max_hops",
                "must be between 1 and 32",
            ));
        }
        if self.route_timeout.is_zero() {
            return Err(RouteConfigError::new("route_timeout", "must be positive"));
        }
        if self.hello_interval.is_zero() || self.hello_interval >= self.route_timeout {
            return Err(RouteConfigError::new(
                "hello_interval",
                "must be positive and shorter than route_timeout",
            ));
        }
        if self.neighbour_report_timeout < self.hello_interval {
            return Err(RouteConfigError::new(
                "neighbour_report_timeout",
                "must be at least hello_interval",
            ));
        }
        if self.advert_refresh.is_zero() || self.advert_refresh >= self.route_timeout {
            return Err(RouteConfigError::new(
                "advert_refresh",
                "must be positive and shorter than route_timeout",
            ));
        }
        if self.ring_initial_ttl == 0 || self.ring_initial_ttl > self.max_hops {
            return Err(RouteConfigError::new(
                "ring_initial_ttl",
                "must be between 1 and max_hops",
            ));
        }
        if self.node_traversal_time.is_zero() {
            return Err(RouteConfigError::new(
                "node_traversal_time",
                "must be positive",
            ));
        }
        if self.rreq_rate_limit == 0 {
            return Err(RouteConfigError::new("rreq_rate_limit", "must be positive"));
        }
        if self.rerr_rate_limit == 0 {
            return Err(RouteConfigError::new("rerr_rate_limit", "must be positive"));
        }
        if self.rreq_seen_time.is_zero() {
            return Err(RouteConfigError::new("rreq_seen_time", "must be positive"));
        }
        for (field, value) in [
            ("max_seen_rreqs", self.max_seen_rreqs),
            ("max_avoided", self.max_avoided),
            ("max_destinations", self.max_destinations),
            ("max_neighbours", self.max_neighbours),
            ("max_discoveries", self.max_discoveries),
            ("max_queued_transmits", self.max_queued_transmits),
            ("max_queued_events", self.max_queued_events),
        ] {
            if value == 0 {
                return Err(RouteConfigError::new(field, "must be positive"));
            }
        }
        if self.max_neighbours > MAX_NEIGHBOURS {
            return Err(RouteConfigError::new(
                "max_neighbours",
                "must be at most 65535",
            ));
        }
        if self.hop_cost == 0 || self.hop_cost > 1_000_000 {
            return Err(RouteConfigError::new(
                "hop_cost",
                "must be between 1 and 1000000",
            ));
        }
        Ok(())
    }
}

/// A [`RouterConfig`] field holds a value the router cannot run with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid routing setting `{field}`: {reason}")]
pub struct RouteConfigError {
    /// The offending field.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: &'static str,
}

impl RouteConfigError {
    fn new(field: &'static str, reason: &'static str) -> Self {
        Self { field, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_design() {
        let config = RouterConfig::new(1);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.max_hops, 10);
        assert_eq!(config.route_timeout, Duration::from_secs(300));
        assert_eq!(config.ring_timeout(1), Duration::from_millis(240));
    }

    #[test]
    fn validation_names_the_field() {
        let mut config = RouterConfig::new(1);
        config.max_hops = 33;
        assert_eq!(config.validate().map_err(|e| e.field), Err("max_hops"));
        let mut config = RouterConfig::new(1);
        config.hop_cost = 0;
        assert_eq!(config.validate().map_err(|e| e.field), Err("hop_cost"));
        let mut config = RouterConfig::new(1);
        config.ring_initial_ttl = 11;
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("ring_initial_ttl")
        );
        let mut config = RouterConfig::new(1);
        config.max_neighbours = 65_535;
        assert_eq!(config.validate(), Ok(()));
        config.max_neighbours = 65_536;
        assert_eq!(
            config.validate().map_err(|e| e.field),
            Err("max_neighbours")
        );
    }
}
