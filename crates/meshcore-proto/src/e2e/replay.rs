//! The sliding replay window of one session: which message counters were already
//! accepted.
//!
//! A [`ReplayWindow`] is a ring of [`REPLAY_BITMAP_BITS`] bits (the layout of RFC 6479,
//! as WireGuard uses it): the highest accepted counter `h` and, for every counter in
//! `h - REPLAY_WINDOW_LEN < c <= h`, whether `c` was accepted. A counter is accepted
//! at most once; one above `h` is always new; one `REPLAY_WINDOW_LEN` or more below `h` is
//! refused as too old, since the window no longer remembers it.
//!
//! Checking and recording are separate ([`ReplayWindow::check`], then
//! [`ReplayWindow::commit`]) so that the receiver records a counter only after the packet
//! carrying it authenticated: a forged packet changes no state.

/// Bits in the ring (8192, the replay bitmap the design names).
pub const REPLAY_BITMAP_BITS: u64 = 8192;

const WORD_BITS: u64 = u64::BITS as u64;
const WORDS: usize = (REPLAY_BITMAP_BITS / WORD_BITS) as usize;

/// How far below the highest accepted counter a counter is still remembered (8128): one
/// word of the ring is always being recycled, so the guaranteed window is one word short
/// of the ring.
pub const REPLAY_WINDOW_LEN: u64 = REPLAY_BITMAP_BITS - WORD_BITS;

/// Why a counter is refused by a [`ReplayWindow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The counter was accepted before.
    #[error("message counter {0} was already received")]
    Replayed(u64),
    /// The counter is too far below the highest accepted one to be checked.
    #[error("message counter {counter} is more than {REPLAY_WINDOW_LEN} below the highest received ({highest})")]
    TooOld {
        /// The refused counter.
        counter: u64,
        /// The highest counter accepted so far.
        highest: u64,
    },
}

/// The counters accepted so far in one session (1 KiB; see the module doc).
#[derive(Clone, PartialEq, Eq)]
pub struct ReplayWindow {
    /// The highest accepted counter; `None` before the first.
    highest: Option<u64>,
    /// Bit `c % 64` of word `(c / 64) % WORDS` is set iff counter `c` was accepted, for
    /// counters within the window.
    bitmap: Box<[u64; WORDS]>,
}

impl ReplayWindow {
    /// An empty window: every counter is new.
    pub fn new() -> Self {
        Self {
            highest: None,
            bitmap: Box::new([0; WORDS]),
        }
    }

    /// The highest counter accepted so far, if any.
    pub fn highest(&self) -> Option<u64> {
        self.highest
    }

    /// Whether `counter` would be accepted. Changes nothing.
    pub fn check(&self, counter: u64) -> Result<(), ReplayError> {
        let Some(highest) = self.highest else {
            return Ok(());
        };
        if counter > highest {
            return Ok(());
        }
        if highest - counter >= REPLAY_WINDOW_LEN {
            return Err(ReplayError::TooOld { counter, highest });
        }
        let (word, bit) = position(counter);
        if self.bitmap[word] & bit != 0 {
            return Err(ReplayError::Replayed(counter));
        }
        Ok(())
    }

    /// Records `counter` as accepted. Call it only after [`ReplayWindow::check`] passed
    /// and the packet authenticated; recording a counter outside the window is a no-op.
    pub fn commit(&mut self, counter: u64) {
        match self.highest {
            Some(highest) if counter <= highest => {
                if highest - counter >= REPLAY_WINDOW_LEN {
                    return;
                }
            }
            Some(highest) => {
                // Moving up: clear the words the window slides onto (all of them if it
                // jumps by a whole ring or more).
                let blocks = counter / WORD_BITS - highest / WORD_BITS;
                let first = highest / WORD_BITS;
                for step in 1..=blocks.min(WORDS as u64) {
                    self.bitmap[((first + step) % WORDS as u64) as usize] = 0;
                }
                self.highest = Some(counter);
            }
            None => self.highest = Some(counter),
        }
        let (word, bit) = position(counter);
        self.bitmap[word] |= bit;
    }
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for ReplayWindow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplayWindow")
            .field("highest", &self.highest)
            .finish_non_exhaustive()
    }
}

/// The word index and bit mask of `counter` in the ring.
fn position(counter: u64) -> (usize, u64) {
    (
        ((counter / WORD_BITS) % WORDS as u64) as usize,
        1 << (counter % WORD_BITS),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    /// Accepts if `check` passes, then commits.
    fn accept(window: &mut ReplayWindow, counter: u64) -> Result<(), ReplayError> {
        window.check(counter)?;
        window.commit(counter);
        Ok(())
    }

    #[test]
    fn each_counter_is_accepted_once() {
        let mut window = ReplayWindow::new();
        assert_eq!(accept(&mut window, 0), Ok(()));
        assert_eq!(accept(&mut window, 0), Err(ReplayError::Replayed(0)));
        assert_eq!(accept(&mut window, 5), Ok(()));
        assert_eq!(accept(&mut window, 5), Err(ReplayError::Replayed(5)));
        assert_eq!(window.highest(), Some(5));
    }

    #[test]
    fn out_of_order_counters_inside_the_window_are_accepted_once() {
        let mut window = ReplayWindow::new();
        assert_eq!(accept(&mut window, 10_000), Ok(()));
        for counter in [9_999, 5_000, 10_000 - REPLAY_WINDOW_LEN + 1] {
            assert_eq!(accept(&mut window, counter), Ok(()));
            assert_eq!(
                accept(&mut window, counter),
                Err(ReplayError::Replayed(counter))
            );
        }
        assert_eq!(window.highest(), Some(10_000));
    }

    #[test]
    fn counters_below_the_window_are_too_old() {
        let mut window = ReplayWindow::new();
        assert_eq!(accept(&mut window, 10_000), Ok(()));
        let edge = 10_000 - REPLAY_WINDOW_LEN;
        assert_eq!(
            accept(&mut window, edge),
            Err(ReplayError::TooOld {
                counter: edge,
                highest: 10_000
            })
        );
        assert!(accept(&mut window, 0).is_err());
        // A failed check changes nothing: the counter just inside is still fresh.
        assert_eq!(accept(&mut window, edge + 1), Ok(()));
    }

    #[test]
    fn a_jump_beyond_the_ring_forgets_everything_below() {
        let mut window = ReplayWindow::new();
        for counter in 0..100 {
            assert_eq!(accept(&mut window, counter), Ok(()));
        }
        let far = 100 + 3 * REPLAY_BITMAP_BITS + 17;
        assert_eq!(accept(&mut window, far), Ok(()));
        // Counters sharing ring slots with the old ones must be fresh, not "replayed".
        for counter in (far - REPLAY_WINDOW_LEN + 1..far).step_by(61) {
            assert_eq!(accept(&mut window, counter), Ok(()));
        }
    }

    #[test]
    fn the_largest_counters_are_handled() {
        let mut window = ReplayWindow::new();
        assert_eq!(accept(&mut window, u64::MAX), Ok(()));
        assert_eq!(
            accept(&mut window, u64::MAX),
            Err(ReplayError::Replayed(u64::MAX))
        );
        assert_eq!(accept(&mut window, u64::MAX - 1), Ok(()));
    }

    proptest! {
        /// The window behaves exactly like an unbounded set of accepted counters, except
        /// that it refuses counters `REPLAY_WINDOW_LEN` or more below the highest.
        #[test]
        fn the_window_matches_a_reference_model(
            start in 0u64..1_000_000,
            steps in proptest::collection::vec((-9_000i64..20_000, any::<bool>()), 1..300),
        ) {
            let mut window = ReplayWindow::new();
            let mut seen = BTreeSet::new();
            let mut highest: Option<u64> = None;
            let mut cursor = start;
            for (delta, commit_only_if_ok) in steps {
                let counter = cursor.saturating_add_signed(delta);
                let expected = match highest {
                    Some(h) if counter <= h && h - counter >= REPLAY_WINDOW_LEN => {
                        Err(ReplayError::TooOld { counter, highest: h })
                    }
                    _ if seen.contains(&counter) => Err(ReplayError::Replayed(counter)),
                    _ => Ok(()),
                };
                prop_assert_eq!(window.check(counter), expected);
                if expected.is_ok() && commit_only_if_ok {
                    window.commit(counter);
                    seen.insert(counter);
                    highest = Some(highest.map_or(counter, |h| h.max(counter)));
                    cursor = counter;
                }
                prop_assert_eq!(window.highest(), highest);
            }
        }
    }
}
