//! Reputation: a score in per-mille (0–1000) that rises with delivered traffic, falls
//! with lost traffic and halves every half-life, and the fee multiplier it gives.
//!
//! - delivered: `score += ⌈(1000 − score) / 16⌉`;
//! - lost: `score −= ⌈score / 4⌉`;
//! - decay: `score >>= n` after `n` whole half-lives (the remainder carries over);
//! - multiplier (per-mille): `1000 + score / 2`, so always in `[1000, 1500]` = 1.0–1.5.

use std::time::Duration;

use crate::dht::time::Timestamp;

/// Highest score.
pub const MAX_SCORE: u16 = 1_000;

/// Lowest multiplier, per-mille (1.0).
pub const MIN_MULTIPLIER: u64 = 1_000;

/// Highest multiplier, per-mille (1.5).
pub const MAX_MULTIPLIER: u64 = 1_500;

/// A decaying reputation score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reputation {
    /// The score at `as_of`, 0–1000.
    pub score: u16,
    /// When the score was last decayed.
    pub as_of: Timestamp,
}

impl Reputation {
    /// A zero score as of `now`.
    pub fn new(now: Timestamp) -> Self {
        Self {
            score: 0,
            as_of: now,
        }
    }

    /// The score at `now` (never mutates; later times only decay it).
    pub fn score_at(&self, now: Timestamp, half_life: Duration) -> u16 {
        let (score, _) = self.decayed(now, half_life);
        score
    }

    /// The fee multiplier at `now`, per-mille, in `[1000, 1500]`.
    pub fn multiplier_at(&self, now: Timestamp, half_life: Duration) -> u64 {
        MIN_MULTIPLIER + u64::from(self.score_at(now, half_life).min(MAX_SCORE)) / 2
    }

    /// Records one delivery outcome at `now`.
    pub fn record(&mut self, now: Timestamp, half_life: Duration, delivered: bool) {
        let (score, as_of) = self.decayed(now, half_life);
        let score = score.min(MAX_SCORE);
        self.score = if delivered {
            score + (MAX_SCORE - score).div_ceil(16)
        } else {
            score - score.div_ceil(4)
        };
        self.as_of = as_of;
    }

    fn decayed(&self, now: Timestamp, half_life: Duration) -> (u16, Timestamp) {
        let half_life_ms = u64::try_from(half_life.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let elapsed = now.as_millis().saturating_sub(self.as_of.as_millis());
        let halvings = elapsed / half_life_ms;
        let score = if halvings >= 16 {
            0
        } else {
            self.score >> halvings
        };
        let as_of = Timestamp::from_millis(self.as_of.as_millis() + halvings * half_life_ms);
        (score, as_of)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    #[test]
    fn multiplier_stays_within_one_and_one_and_a_half() {
        let t = Timestamp::ZERO;
        let mut r = Reputation::new(t);
        assert_eq!(r.multiplier_at(t, DAY), 1_000);
        for _ in 0..500 {
            r.record(t, DAY, true);
        }
        assert_eq!(r.score, MAX_SCORE);
        assert_eq!(r.multiplier_at(t, DAY), 1_500);
        for _ in 0..500 {
            r.record(t, DAY, false);
        }
        assert_eq!(r.score, 0);
        assert_eq!(r.multiplier_at(t, DAY), 1_000);
    }

    #[test]
    fn score_halves_every_half_life_and_keeps_the_remainder() {
        let mut r = Reputation {
            score: 800,
            as_of: Timestamp::ZERO,
        };
        let day_ms = 24 * 3600 * 1000;
        assert_eq!(r.score_at(Timestamp::from_millis(day_ms - 1), DAY), 800);
        assert_eq!(r.score_at(Timestamp::from_millis(day_ms), DAY), 400);
        assert_eq!(r.score_at(Timestamp::from_millis(3 * day_ms), DAY), 100);
        assert_eq!(r.score_at(Timestamp::from_millis(100 * day_ms), DAY), 0);
        // A record 1.5 days in decays one half-life and keeps the half day.
        r.record(Timestamp::from_millis(day_ms + day_ms / 2), DAY, false);
        assert_eq!(r.score, 300);
        assert_eq!(r.as_of, Timestamp::from_millis(day_ms));
        assert_eq!(r.score_at(Timestamp::from_millis(2 * day_ms), DAY), 150);
    }
}
