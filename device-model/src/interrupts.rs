//! The interrupt controller: INT_STATUS latching, event records, coalescing
//! and the device's backlog (SPEC §10).
//!
//! Every occurrence of a cause latches its bit in INT_STATUS. Causes enabled
//! in INT_MASK that make records (FRAME_DONE, OVERFLOW, TEST; never DMA_DONE
//! or DMA_ERROR) also become numbered event records. Records wait here until
//! they are *due* (coalescing: COUNT of them waiting, the oldest waited USEC,
//! or the end of the task file that raised them) and then until the backend
//! has event-queue buffers for them. The controller keeps at most
//! [`DEVICE_BACKLOG`] records; a record that finds it full is lost and shows
//! up as a LOST record in its place.
//!
//! No clock and no I/O: callers pass the time (device nanoseconds), ask
//! which records are due now ([`InterruptController::take_due`]) and when the
//! next one falls due by time ([`InterruptController::next_deadline`]).

use std::collections::VecDeque;

use xxcapture_abi::event::{DEVICE_BACKLOG, LOST};
use xxcapture_abi::{irq, Event};

/// Causes that become event records when enabled. DMA_DONE and DMA_ERROR
/// only latch: the request's completion is their notification.
pub const RECORD_CAUSES: u32 = irq::FRAME_DONE | irq::OVERFLOW | irq::TEST;

/// Most records diverted to the completion ring that wait for the backend
/// to post them ([`InterruptController::take_diverted`]): a full CQ's
/// worth. Records beyond it are lost (a LOST entry stands for them).
pub const DIVERT_LIMIT: usize = xxcapture_abi::RING_CQ_ENTRIES as usize;

/// The coalescing registers as the controller uses them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IrqConfig {
    /// INT_MASK: causes that make records.
    pub mask: u32,
    /// INT_COALESCE_COUNT: deliver when this many records wait (0 and 1:
    /// every record).
    pub count: u32,
    /// INT_COALESCE_USEC: or when the oldest waited this long (0: no limit).
    pub usec: u32,
}

/// One record held by the device, with the time it started waiting.
#[derive(Clone, Copy, Debug)]
struct Held {
    event: Event,
    since_ns: u64,
}

impl Held {
    fn is_lost(&self) -> bool {
        self.event.cause.get() == LOST
    }
}

/// The card's interrupt logic. Cheap to create; one per card.
#[derive(Clone, Debug)]
pub struct InterruptController {
    /// Whether the card makes records at all (`caps::EVENTS`).
    records_enabled: bool,
    config: IrqConfig,
    /// INT_STATUS.
    status: u32,
    next_sequence: u64,
    /// Records generated since reset (EVENT_COUNT), delivered or lost.
    generated: u64,
    /// Records lost since reset (EVENTS_LOST).
    lost: u64,
    /// Records waiting, in sequence order; LOST records stand in for gaps.
    held: VecDeque<Held>,
    /// How many of `held` are device records (not LOST): what the backlog
    /// bound counts.
    held_records: usize,
    /// The first `released` entries of `held` are due whatever the
    /// thresholds: they wait only for buffers.
    released: usize,
    /// How many of those are device records.
    released_records: usize,
    /// Causes whose records bypass `held` (and coalescing) and go to the
    /// submission ring's completion queue (SPEC §15).
    divert: u32,
    /// Diverted records waiting for the backend, oldest first; LOST
    /// entries stand for records lost past [`DIVERT_LIMIT`].
    diverted: VecDeque<Event>,
}

impl InterruptController {
    /// A controller after reset. `records_enabled`: the card has
    /// `caps::EVENTS` (without it causes only latch).
    pub fn new(records_enabled: bool) -> Self {
        InterruptController {
            records_enabled,
            config: IrqConfig {
                mask: 0,
                count: 1,
                usec: 0,
            },
            status: 0,
            next_sequence: 0,
            generated: 0,
            lost: 0,
            held: VecDeque::new(),
            held_records: 0,
            released: 0,
            released_records: 0,
            divert: 0,
            diverted: VecDeque::new(),
        }
    }

    /// Records of `causes` from now on go to the completion ring: they are
    /// numbered and counted as any record, but bypass coalescing and the
    /// backlog and wait in [`Self::take_diverted`] (0: none; reset clears
    /// it).
    pub fn set_divert(&mut self, causes: u32) {
        self.divert = causes;
    }

    /// The causes diverted to the completion ring.
    pub fn divert(&self) -> u32 {
        self.divert
    }

    /// Takes the diverted records, oldest first (LOST entries, `count`
    /// records each, stand for records lost here and are already counted
    /// in EVENTS_LOST).
    pub fn take_diverted(&mut self) -> VecDeque<Event> {
        std::mem::take(&mut self.diverted)
    }

    /// `count` generated records were lost outside the controller (the
    /// completion ring had no room): they count in EVENTS_LOST.
    pub fn lost_elsewhere(&mut self, count: u64) {
        self.lost = self.lost.saturating_add(count);
    }

    /// Diverts record `sequence` of `cause`, or loses it past the limit.
    fn divert_record(&mut self, cause: u32, sequence: u64, frame_number: u64, now_ns: u64) {
        if self.diverted.len() >= DIVERT_LIMIT {
            self.divert_lost(sequence, 1, now_ns);
            return;
        }
        self.diverted.push_back(Event {
            cause: cause.into(),
            sequence: sequence.into(),
            frame_number: frame_number.into(),
            device_time_ns: now_ns.into(),
            ..Event::default()
        });
    }

    /// Records `sequence..sequence + count` lost on their way to the ring.
    fn divert_lost(&mut self, sequence: u64, count: u32, now_ns: u64) {
        self.lost += u64::from(count);
        if let Some(tail) = self.diverted.back_mut().filter(|e| e.cause.get() == LOST) {
            let first = tail.sequence.get();
            let have = tail.count.get();
            if first + u64::from(have) == sequence {
                if let Some(sum) = have.checked_add(count) {
                    tail.count = sum.into();
                    return;
                }
            }
        }
        self.diverted.push_back(Event {
            cause: LOST.into(),
            sequence: sequence.into(),
            device_time_ns: now_ns.into(),
            count: count.into(),
            ..Event::default()
        });
    }

    /// Power-on state: nothing latched, no records, sequence from 0. The
    /// backlog is dropped.
    pub fn reset(&mut self) {
        *self = InterruptController::new(self.records_enabled);
    }

    /// INT_STATUS.
    pub fn status(&self) -> u32 {
        self.status
    }

    /// Replaces INT_STATUS (a committed task file's INT_ACK / INT_RAISE).
    pub fn set_status(&mut self, status: u32) {
        self.status = status & irq::ALL;
    }

    /// Latches `causes` in INT_STATUS without making records (DMA_DONE,
    /// DMA_ERROR, or a cause whose record the caller reports otherwise).
    pub fn latch(&mut self, causes: u32) {
        self.status |= causes & irq::ALL;
    }

    pub fn config(&self) -> IrqConfig {
        self.config
    }

    /// New coalescing registers. Records already waiting are released if
    /// the new count says so; a new time limit applies from the next
    /// [`Self::take_due`].
    pub fn set_config(&mut self, config: IrqConfig) {
        self.config = config;
        self.release_by_count();
    }

    /// EVENT_COUNT: records generated since reset.
    pub fn generated(&self) -> u64 {
        self.generated
    }

    /// EVENTS_LOST: records lost since reset.
    pub fn lost(&self) -> u64 {
        self.lost
    }

    /// Records (LOST ones included) waiting in the device.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The sequence number the next record gets.
    pub fn next_sequence(&self) -> u64 {
        self.next_sequence
    }

    /// One occurrence of `cause` (a single `irq::*` bit) at device time
    /// `now_ns`: latches it, and makes a record if it is enabled and makes
    /// records. `frame_number` is the frame of FRAME_DONE/OVERFLOW, else 0.
    /// Returns whether a record was generated (it may have been lost).
    pub fn raise(&mut self, cause: u32, frame_number: u64, now_ns: u64) -> bool {
        self.latch(cause);
        cause & self.config.mask != 0 && self.record(cause, frame_number, now_ns)
    }

    /// Makes a record of `cause` whatever INT_MASK says now (a task file
    /// decides by the mask at the time of its INT_RAISE write), if the card
    /// makes records and the cause is one that does. Latches nothing.
    pub fn record(&mut self, cause: u32, frame_number: u64, now_ns: u64) -> bool {
        if !self.records_enabled || cause & RECORD_CAUSES == 0 {
            return false;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        self.generated += 1;
        if cause & self.divert != 0 {
            self.divert_record(cause, sequence, frame_number, now_ns);
        } else if self.held_records >= DEVICE_BACKLOG {
            self.lose(sequence, 1, now_ns);
        } else {
            let event = Event {
                cause: cause.into(),
                sequence: sequence.into(),
                frame_number: frame_number.into(),
                device_time_ns: now_ns.into(),
                ..Event::default()
            };
            self.held.push_back(Held {
                event,
                since_ns: now_ns,
            });
            self.held_records += 1;
            self.release_by_count();
        }
        true
    }

    /// `count` occurrences of `cause` at once (frame periods a capture
    /// missed): as many [`Self::raise`] calls, in time bounded by the
    /// backlog rather than by `count`. Returns the records generated.
    pub fn raise_many(&mut self, cause: u32, frame_number: u64, count: u32, now_ns: u64) -> u32 {
        self.latch(cause);
        if cause & self.config.mask == 0 || !self.records_enabled || cause & RECORD_CAUSES == 0 {
            return 0;
        }
        let diverted = cause & self.divert != 0;
        let room = |c: &Self| {
            if diverted {
                c.diverted.len() < DIVERT_LIMIT
            } else {
                c.held_records < DEVICE_BACKLOG
            }
        };
        let mut left = count;
        while left > 0 && room(self) {
            self.record(cause, frame_number, now_ns);
            left -= 1;
        }
        if left > 0 {
            let sequence = self.next_sequence;
            self.next_sequence += u64::from(left);
            self.generated += u64::from(left);
            if diverted {
                self.divert_lost(sequence, left, now_ns);
            } else {
                self.lose(sequence, left, now_ns);
            }
        }
        count
    }

    /// Records `sequence..sequence + count` found the backlog full: they
    /// join the LOST record at the tail if that one ends right before them,
    /// else start a new one.
    fn lose(&mut self, sequence: u64, count: u32, now_ns: u64) {
        self.lost += u64::from(count);
        if let Some(tail) = self.held.back_mut().filter(|h| h.is_lost()) {
            let first = tail.event.sequence.get();
            let have = tail.event.count.get();
            if first + u64::from(have) == sequence {
                if let Some(sum) = have.checked_add(count) {
                    tail.event.count = sum.into();
                    return;
                }
            }
        }
        // A full backlog is all due already (the count threshold is at
        // most the backlog), so the LOST record is due at once too.
        let event = Event {
            cause: LOST.into(),
            sequence: sequence.into(),
            device_time_ns: now_ns.into(),
            count: count.into(),
            ..Event::default()
        };
        // LOST records do not count against the backlog: at most one
        // follows each device record, so they stay bounded too.
        self.held.push_back(Held {
            event,
            since_ns: now_ns,
        });
        self.release_all();
    }

    /// The effective coalescing count: 0 and 1 both mean every record, and
    /// a count above the backlog could never be reached.
    fn count_threshold(&self) -> usize {
        usize::try_from(self.config.count)
            .unwrap_or(usize::MAX)
            .clamp(1, DEVICE_BACKLOG)
    }

    fn release_by_count(&mut self) {
        let unreleased = self.held_records - self.released_records;
        if unreleased > 0 && unreleased >= self.count_threshold() {
            self.release_all();
        }
    }

    /// Makes every waiting record due now (the end of a task file that
    /// generated records).
    pub fn release_all(&mut self) {
        self.released = self.held.len();
        self.released_records = self.held_records;
    }

    fn release_by_time(&mut self, now_ns: u64) {
        if let Some(deadline) = self.next_deadline() {
            if now_ns >= deadline {
                self.release_all();
            }
        }
    }

    /// How many records are due at `now_ns` (waiting only for buffers).
    pub fn due(&mut self, now_ns: u64) -> usize {
        self.release_by_time(now_ns);
        self.released
    }

    /// Takes up to `max` due records, oldest first (LOST records in their
    /// place). Records not taken stay due.
    pub fn take_due(&mut self, now_ns: u64, max: usize) -> Vec<Event> {
        self.release_by_time(now_ns);
        let n = self.released.min(max);
        let mut out = Vec::with_capacity(n);
        for held in self.held.drain(..n) {
            if !held.is_lost() {
                self.held_records -= 1;
                self.released_records -= 1;
            }
            out.push(held.event);
        }
        self.released -= n;
        out
    }

    /// When the oldest record that is not yet due falls due by the time
    /// limit (device ns), if there is one and a limit is set.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.config.usec == 0 {
            return None;
        }
        let oldest = self.held.get(self.released)?;
        Some(
            oldest
                .since_ns
                .saturating_add(u64::from(self.config.usec) * 1000),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn enabled(mask: u32, count: u32, usec: u32) -> InterruptController {
        let mut c = InterruptController::new(true);
        c.set_config(IrqConfig { mask, count, usec });
        c
    }

    fn seqs(events: &[Event]) -> Vec<u64> {
        events.iter().map(|e| e.sequence.get()).collect()
    }

    #[test]
    fn causes_latch_whatever_the_mask_and_masked_ones_make_records() {
        let mut c = enabled(0, 1, 0);
        assert!(!c.raise(irq::FRAME_DONE, 7, 10));
        assert_eq!(c.status(), irq::FRAME_DONE);
        assert_eq!(c.take_due(10, 64), vec![]);
        c.set_config(IrqConfig {
            mask: irq::ALL,
            count: 1,
            usec: 0,
        });
        assert!(c.raise(irq::OVERFLOW, 8, 20));
        // DMA causes latch but never make records.
        assert!(!c.raise(irq::DMA_DONE, 0, 21));
        assert!(!c.raise(irq::DMA_ERROR, 0, 22));
        assert_eq!(c.status(), irq::ALL & !irq::TEST);
        let got = c.take_due(30, 64);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].cause.get(), irq::OVERFLOW);
        assert_eq!(got[0].frame_number.get(), 8);
        assert_eq!(got[0].device_time_ns.get(), 20);
        assert_eq!(got[0].sequence.get(), 0);
        assert_eq!(c.generated(), 1);
        // A card without EVENTS only latches.
        let mut plain = InterruptController::new(false);
        plain.set_config(IrqConfig {
            mask: irq::ALL,
            count: 1,
            usec: 0,
        });
        assert!(!plain.raise(irq::TEST, 0, 1));
        assert_eq!(plain.status(), irq::TEST);
        assert_eq!(plain.generated(), 0);
    }

    #[test]
    fn coalescing_by_count() {
        let mut c = enabled(irq::ALL, 3, 0);
        c.raise(irq::FRAME_DONE, 0, 1);
        c.raise(irq::FRAME_DONE, 1, 2);
        assert_eq!(c.due(1_000_000_000), 0, "no time limit: waits for 3");
        assert_eq!(c.next_deadline(), None);
        c.raise(irq::FRAME_DONE, 2, 3);
        assert_eq!(c.due(3), 3);
        // Buffers for 2 only: the third stays due.
        assert_eq!(seqs(&c.take_due(3, 2)), vec![0, 1]);
        c.raise(irq::FRAME_DONE, 3, 4);
        assert_eq!(c.due(4), 1, "the new one waits for its own batch");
        assert_eq!(seqs(&c.take_due(4, 64)), vec![2]);
        // Lowering the count releases what waits.
        c.set_config(IrqConfig {
            mask: irq::ALL,
            count: 1,
            usec: 0,
        });
        assert_eq!(seqs(&c.take_due(5, 64)), vec![3]);
    }

    #[test]
    fn coalescing_by_time_counts_from_the_oldest_waiting_record() {
        let mut c = enabled(irq::ALL, 100, 50);
        c.raise(irq::FRAME_DONE, 0, 1_000);
        c.raise(irq::FRAME_DONE, 1, 30_000);
        assert_eq!(c.next_deadline(), Some(51_000));
        assert_eq!(c.take_due(50_999, 64), vec![]);
        assert_eq!(seqs(&c.take_due(51_000, 64)), vec![0, 1]);
        assert_eq!(c.next_deadline(), None);
        c.raise(irq::FRAME_DONE, 2, 60_000);
        assert_eq!(c.next_deadline(), Some(110_000));
    }

    #[test]
    fn end_of_task_file_releases_whatever_the_thresholds() {
        let mut c = enabled(irq::ALL, 10, 0);
        for _ in 0..3 {
            c.raise(irq::TEST, 0, 5);
        }
        assert_eq!(c.due(5), 0);
        c.release_all();
        assert_eq!(seqs(&c.take_due(5, 64)), vec![0, 1, 2]);
    }

    #[test]
    fn a_full_backlog_loses_records_and_reports_them_in_place() {
        let mut c = enabled(irq::ALL, 1, 0);
        let total = DEVICE_BACKLOG as u64 + 10;
        for n in 0..total {
            c.raise(irq::FRAME_DONE, n, n);
        }
        assert_eq!((c.generated(), c.lost()), (total, 10));
        assert_eq!(c.held(), DEVICE_BACKLOG + 1);
        let first = c.take_due(total, DEVICE_BACKLOG);
        assert_eq!(first.len(), DEVICE_BACKLOG);
        assert_eq!(first.last().map(|e| e.sequence.get()), Some(4095));
        // Room again: the next record follows the LOST record.
        c.raise(irq::FRAME_DONE, total, total);
        let rest = c.take_due(total, 64);
        assert_eq!(rest.len(), 2);
        assert_eq!(rest[0].cause.get(), LOST);
        assert_eq!(rest[0].sequence.get(), 4096);
        assert_eq!(rest[0].count.get(), 10);
        assert_eq!(rest[1].sequence.get(), 4106);
        assert_eq!(c.generated(), total + 1);
    }

    #[test]
    fn reset_drops_the_backlog_and_restarts_sequence() {
        let mut c = enabled(irq::ALL, 1, 0);
        c.raise(irq::TEST, 0, 1);
        c.raise(irq::TEST, 0, 2);
        c.reset();
        assert_eq!((c.held(), c.generated(), c.status()), (0, 0, 0));
        assert_eq!(c.config().mask, 0, "INT_MASK resets to 0");
        c.set_config(IrqConfig {
            mask: irq::ALL,
            count: 1,
            usec: 0,
        });
        c.raise(irq::TEST, 0, 3);
        assert_eq!(seqs(&c.take_due(3, 64)), vec![0]);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Raise(u32),
        RaiseMany(u32),
        Take(usize),
        Advance(u64),
        ReleaseAll,
        Config(u32, u32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            8 => prop_oneof![Just(irq::FRAME_DONE), Just(irq::OVERFLOW), Just(irq::TEST),
                             Just(irq::DMA_DONE)].prop_map(Op::Raise),
            1 => prop_oneof![0u32..5, Just(5000), Just(u32::MAX)].prop_map(Op::RaiseMany),
            3 => prop_oneof![0usize..3, Just(64), Just(5000)].prop_map(Op::Take),
            2 => (0u64..200_000).prop_map(Op::Advance),
            1 => Just(Op::ReleaseAll),
            1 => (0u32..8, prop_oneof![Just(0u32), 1u32..100]).prop_map(|(c, u)| Op::Config(c, u)),
        ]
    }

    proptest! {
        /// Whatever happens, each record number is delivered exactly once,
        /// in order, either as itself or inside a LOST record; the backlog
        /// stays bounded; and nothing waits past its time limit.
        #[test]
        fn every_record_is_delivered_once_in_order_or_reported_lost(
            ops in proptest::collection::vec(op(), 1..400),
            burst in 0usize..2 * DEVICE_BACKLOG,
        ) {
            let mut c = enabled(irq::ALL, 1, 0);
            let mut now = 0u64;
            let mut next_expected = 0u64;
            let mut lost_seen = 0u64;
            let check = |events: Vec<Event>, next: &mut u64, lost: &mut u64| {
                for e in events {
                    prop_assert_eq!(e.sequence.get(), *next);
                    if e.cause.get() == LOST {
                        prop_assert!(e.count.get() >= 1);
                        *next += u64::from(e.count.get());
                        *lost += u64::from(e.count.get());
                    } else {
                        *next += 1;
                    }
                }
                Ok(())
            };
            for _ in 0..burst {
                c.raise(irq::TEST, 0, now);
            }
            for op in ops {
                match op {
                    Op::Raise(cause) => { c.raise(cause, 0, now); }
                    Op::RaiseMany(n) => { c.raise_many(irq::OVERFLOW, 0, n, now); }
                    Op::Take(max) => {
                        let got = c.take_due(now, max);
                        prop_assert!(got.len() <= max);
                        check(got, &mut next_expected, &mut lost_seen)?;
                    }
                    Op::Advance(ns) => {
                        now += ns;
                        if let Some(deadline) = c.next_deadline() {
                            if now >= deadline {
                                prop_assert!(c.due(now) == c.held());
                            }
                        }
                    }
                    Op::ReleaseAll => c.release_all(),
                    Op::Config(count, usec) => c.set_config(IrqConfig { mask: irq::ALL, count, usec }),
                }
                prop_assert!(c.held_records <= DEVICE_BACKLOG);
                prop_assert!(c.held() <= 2 * DEVICE_BACKLOG + 1);
            }
            c.release_all();
            let rest = c.take_due(now, usize::MAX);
            check(rest, &mut next_expected, &mut lost_seen)?;
            prop_assert_eq!(next_expected, c.generated());
            prop_assert_eq!(lost_seen, c.lost());
            prop_assert_eq!(c.held(), 0);
        }
    }

    #[test]
    fn diverted_records_bypass_coalescing_and_keep_their_numbers() {
        let mut c = enabled(irq::ALL, 100, 0);
        c.set_divert(irq::FRAME_DONE);
        assert!(c.raise(irq::FRAME_DONE, 5, 10));
        assert!(c.raise(irq::OVERFLOW, 6, 11));
        assert!(c.raise(irq::FRAME_DONE, 7, 12));
        let diverted: Vec<Event> = c.take_diverted().into();
        assert_eq!(seqs(&diverted), vec![0, 2]);
        assert_eq!(diverted[1].frame_number.get(), 7);
        assert!(c.take_diverted().is_empty());
        // The other cause coalesces as ever.
        assert_eq!(c.due(20), 0);
        assert_eq!(c.held(), 1);
        assert_eq!(c.generated(), 3);
        // Past the limit: one LOST entry, counted in EVENTS_LOST.
        c.raise_many(irq::FRAME_DONE, 9, DIVERT_LIMIT as u32 + 5, 30);
        let diverted = c.take_diverted();
        assert_eq!(diverted.len(), DIVERT_LIMIT + 1);
        let lost = diverted.back().copied().unwrap_or_default();
        assert_eq!(lost.cause.get(), LOST);
        assert_eq!(lost.count.get(), 5);
        assert_eq!(lost.sequence.get(), 3 + DIVERT_LIMIT as u64);
        assert_eq!(c.lost(), 5);
        c.lost_elsewhere(2);
        assert_eq!(c.lost(), 7);
        c.reset();
        assert_eq!(c.divert(), 0);
    }
}
