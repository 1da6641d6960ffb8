//! Link measurements and the routing metric.
//!
//! A link costs `hop_cost + ⌈10 · rtt_ms / (1 − loss)²⌉` metric units (one unit is 0.1 ms
//! of round-trip time; see [`link_cost`]). A route's metric is the sum of its links' costs,
//! so routes prefer quality (latency, loss) over hop count, with `hop_cost` as a tie-break
//! against needless hops.

use std::time::Duration;

/// The metric of an unusable route. Every real route's metric is far below it: a link
/// costs at most `1_000_000 + 60_000_000` and a route has at most 32 links.
pub const METRIC_INFINITY: u32 = u32::MAX;

/// Round-trip times above this count as this (60 s).
pub const MAX_RTT: Duration = Duration::from_secs(60);

/// Loss above this counts as this (0.9), so that a very lossy link is expensive, not
/// infinitely so.
pub const MAX_LOSS: f64 = 0.9;

/// One part per million: the unit of loss on the wire.
const PPM: f64 = 1_000_000.0;

/// What the driver measured on a link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinkQuality {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Fraction of packets lost, 0.0 to 1.0.
    pub loss: f64,
}

impl LinkQuality {
    /// A measurement.
    pub fn new(rtt: Duration, loss: f64) -> Self {
        Self { rtt, loss }
    }

    /// The cost of this link with the given per-hop cost; see [`link_cost`].
    pub fn cost(&self, hop_cost: u32) -> u32 {
        link_cost(hop_cost, self.rtt, self.loss)
    }

    /// The RTT in microseconds, as carried in a hello (saturating at `u32::MAX`, 71 min).
    pub fn rtt_us(&self) -> u32 {
        u32::try_from(self.rtt.as_micros()).unwrap_or(u32::MAX)
    }

    /// The loss in parts per million, as carried in a hello.
    pub fn loss_ppm(&self) -> u32 {
        let loss = if self.loss.is_nan() {
            1.0
        } else {
            self.loss.clamp(0.0, 1.0)
        };
        // In 0..=1_000_000 after the clamp, so the cast is exact enough and cannot wrap.
        (loss * PPM).round() as u32
    }

    /// A measurement as carried in a hello.
    pub fn from_wire(rtt_us: u32, loss_ppm: u32) -> Self {
        Self {
            rtt: Duration::from_micros(u64::from(rtt_us)),
            loss: f64::from(loss_ppm.min(1_000_000)) / PPM,
        }
    }
}

/// The cost of one link: `hop_cost + ⌈10 · rtt_ms / (1 − loss)²⌉`.
///
/// `rtt` is capped at [`MAX_RTT`]; `loss` is clamped to `[0, MAX_LOSS]` (NaN counts as
/// `MAX_LOSS`). The result is at least `hop_cost`, so a route's metric grows strictly with
/// every hop, which the feasibility condition needs.
pub fn link_cost(hop_cost: u32, rtt: Duration, loss: f64) -> u32 {
    let rtt_ms = rtt.min(MAX_RTT).as_secs_f64() * 1000.0;
    let loss = if loss.is_nan() {
        MAX_LOSS
    } else {
        loss.clamp(0.0, MAX_LOSS)
    };
    let delivery = 1.0 - loss;
    // At most 60_000 · 10 / 0.01 = 6e7, well inside u32.
    let latency = (rtt_ms * 10.0 / (delivery * delivery)).ceil() as u32;
    hop_cost.saturating_add(latency)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cost_follows_the_formula() {
        let ms = Duration::from_millis;
        assert_eq!(link_cost(100, ms(10), 0.0), 200);
        assert_eq!(link_cost(100, ms(10), 0.5), 500);
        assert_eq!(link_cost(100, Duration::ZERO, 0.0), 100);
        // Three clean hops beat two lossy ones.
        assert!(3 * link_cost(100, ms(10), 0.0) < 2 * link_cost(100, ms(10), 0.5));
        // NaN and out-of-range loss are clamped.
        assert_eq!(link_cost(100, ms(1), f64::NAN), link_cost(100, ms(1), 0.9));
        assert_eq!(link_cost(100, ms(1), -3.0), link_cost(100, ms(1), 0.0));
    }

    #[test]
    fn wire_form_round_trips() {
        let quality = LinkQuality::new(Duration::from_micros(12_345), 0.25);
        let back = LinkQuality::from_wire(quality.rtt_us(), quality.loss_ppm());
        assert_eq!(back, quality);
        assert_eq!(LinkQuality::new(Duration::ZERO, 7.0).loss_ppm(), 1_000_000);
    }

    proptest! {
        #[test]
        fn cost_is_bounded_and_at_least_the_hop_cost(
            hop in 1u32..=1_000_000,
            rtt_us in any::<u64>(),
            loss in any::<f64>(),
        ) {
            let cost = link_cost(hop, Duration::from_micros(rtt_us), loss);
            prop_assert!(cost >= hop);
            prop_assert!(cost <= 1_000_000 + 60_000_000);
        }
    }
}
