//! The twin's event queue: iteration ends and replicas becoming ready, in time order.
//!
//! Events sit in a binary heap ordered by (time, insertion sequence), so two events at
//! the same instant are handled in the order they were scheduled, and a run is
//! deterministic. A replica's iteration event carries an epoch: a decode jump cut short
//! by an arrival bumps the replica's epoch, and the stale event is skipped when it
//! comes up.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::time::Nanos;

/// Something that happens to a replica at a given time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Event {
    /// The replica's current iteration ends (if `epoch` is still its epoch).
    Iteration {
        /// Replica id.
        replica: usize,
        /// The replica's epoch when the iteration was scheduled.
        epoch: u64,
    },
    /// The replica's cold start ends.
    Ready {
        /// Replica id.
        replica: usize,
    },
}

/// Events ordered by (time, insertion order).
#[derive(Debug, Default)]
pub struct EventQueue {
    heap: BinaryHeap<Reverse<(Nanos, u64, Event)>>,
    seq: u64,
}

impl EventQueue {
    /// Schedules `event` at `t`.
    pub fn push(&mut self, t: Nanos, event: Event) {
        self.seq += 1;
        self.heap.push(Reverse((t, self.seq, event)));
    }

    /// The time of the next event, if any.
    pub fn next_time(&self) -> Option<Nanos> {
        self.heap.peek().map(|Reverse((t, _, _))| *t)
    }

    /// Removes and returns the next event.
    pub fn pop(&mut self) -> Option<Event> {
        self.heap.pop().map(|Reverse((_, _, e))| e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_instant_events_keep_insertion_order() {
        let mut q = EventQueue::default();
        q.push(Nanos(5), Event::Ready { replica: 2 });
        q.push(Nanos(3), Event::Ready { replica: 9 });
        q.push(Nanos(5), Event::Ready { replica: 1 });
        assert_eq!(q.next_time(), Some(Nanos(3)));
        assert_eq!(q.pop(), Some(Event::Ready { replica: 9 }));
        assert_eq!(q.pop(), Some(Event::Ready { replica: 2 }));
        assert_eq!(q.pop(), Some(Event::Ready { replica: 1 }));
        assert_eq!(q.pop(), None);
    }
}
