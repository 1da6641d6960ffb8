//! The simulators' event queue: events in time order, ties broken by the order they were
//! scheduled, so that a run is the same every time.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use meshcore_proto::dht::Timestamp;

#[derive(Debug)]
struct Scheduled<E> {
    at: Timestamp,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl<E> Eq for Scheduled<E> {}

impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<E> Ord for Scheduled<E> {
    /// Reversed, so the `BinaryHeap` (a max-heap) pops the earliest first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// Events of type `E` by time; equal times come out in the order they went in.
#[derive(Debug)]
pub(crate) struct EventQueue<E> {
    heap: BinaryHeap<Scheduled<E>>,
    seq: u64,
}

impl<E> Default for EventQueue<E> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            seq: 0,
        }
    }
}

impl<E> EventQueue<E> {
    /// Schedules `event` at `at`.
    pub(crate) fn push(&mut self, at: Timestamp, event: E) {
        self.seq += 1;
        self.heap.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    /// The earliest event and its time.
    pub(crate) fn pop(&mut self) -> Option<(Timestamp, E)> {
        self.heap
            .pop()
            .map(|scheduled| (scheduled.at, scheduled.event))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_come_out_by_time_then_by_scheduling_order() {
        let mut queue = EventQueue::default();
        let at = Timestamp::from_millis;
        queue.push(at(5), "late");
        queue.push(at(1), "first");
        queue.push(at(1), "second");
        queue.push(at(3), "middle");
        let order: Vec<_> = std::iter::from_fn(|| queue.pop()).collect();
        assert_eq!(
            order,
            [
                (at(1), "first"),
                (at(1), "second"),
                (at(3), "middle"),
                (at(5), "late")
            ]
        );
    }
}
