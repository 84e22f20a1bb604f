//! A lock on byte ranges of card RAM: holders of disjoint ranges run at
//! once (the capture thread rendering one ring slot while a DMA copies
//! another), overlapping ones in the order they asked.
//!
//! Fair per overlap: a request waits while a held range or an earlier
//! waiting request overlaps it, so a capture thread that re-takes the same
//! slot at once cannot starve a DMA queued for it.

use parking_lot::{Condvar, Mutex};

#[derive(Debug, Default)]
struct State {
    /// Ranges held, `[start, end)`.
    held: Vec<(u64, u64)>,
    /// Requests waiting, by ticket.
    waiting: Vec<(u64, u64, u64)>,
    next_ticket: u64,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// The lock; see the module docs.
#[derive(Debug, Default)]
pub struct RangeLock {
    state: Mutex<State>,
    released: Condvar,
}

/// A held range, released on drop.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    lock: &'a RangeLock,
    range: (u64, u64),
}

impl RangeLock {
    /// Waits until `[start, end)` overlaps no held range and no earlier
    /// request, then holds it. An empty range is taken at once.
    pub fn lock(&self, start: u64, end: u64) -> RangeGuard<'_> {
        let range = (start, end.max(start));
        let mut st = self.state.lock();
        let ticket = st.next_ticket;
        st.next_ticket = st.next_ticket.wrapping_add(1);
        st.waiting.push((ticket, range.0, range.1));
        loop {
            let blocked = st.held.iter().any(|&h| overlaps(h, range))
                || st
                    .waiting
                    .iter()
                    .any(|&(t, s, e)| t < ticket && overlaps((s, e), range));
            if !blocked {
                break;
            }
            self.released.wait(&mut st);
        }
        st.waiting.retain(|&(t, _, _)| t != ticket);
        st.held.push(range);
        RangeGuard { lock: self, range }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.lock.state.lock();
        if let Some(at) = st.held.iter().position(|&h| h == self.range) {
            st.held.swap_remove(at);
        }
        drop(st);
        self.lock.released.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn disjoint_ranges_are_held_at_once() {
        let lock = RangeLock::default();
        let a = lock.lock(0, 100);
        let b = lock.lock(100, 200);
        drop((a, b));
        let _c = lock.lock(50, 150);
    }

    #[test]
    fn an_overlapping_range_waits_for_the_holder() {
        let lock = Arc::new(RangeLock::default());
        let held = lock.lock(0, 100);
        let got = Arc::new(AtomicBool::new(false));
        let t = {
            let (lock, got) = (Arc::clone(&lock), Arc::clone(&got));
            std::thread::spawn(move || {
                let _g = lock.lock(99, 101);
                got.store(true, Ordering::SeqCst);
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        assert!(!got.load(Ordering::SeqCst), "took an overlapping range");
        drop(held);
        t.join().expect("waiter");
        assert!(got.load(Ordering::SeqCst));
    }

    #[test]
    fn a_waiting_request_goes_before_a_later_overlapping_one() {
        let lock = Arc::new(RangeLock::default());
        let held = lock.lock(0, 100);
        let order = Arc::new(AtomicU32::new(0));
        let first = {
            let (lock, order) = (Arc::clone(&lock), Arc::clone(&order));
            std::thread::spawn(move || {
                let _g = lock.lock(0, 100);
                order.compare_exchange(0, 1, Ordering::SeqCst, Ordering::SeqCst)
            })
        };
        std::thread::sleep(Duration::from_millis(50));
        drop(held);
        // The holder re-takes the same range at once: it queues behind.
        let again = lock.lock(0, 100);
        let mine = order.compare_exchange(0, 2, Ordering::SeqCst, Ordering::SeqCst);
        drop(again);
        assert_eq!(first.join().expect("first"), Ok(0));
        assert_eq!(mine, Err(1), "the re-take went before the waiting request");
    }
}
