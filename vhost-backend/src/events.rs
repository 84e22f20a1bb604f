//! Event delivery: the card's interrupt controller and the event queue
//! (queue 1, SPEC §10).
//!
//! The controller ([`InterruptController`], pure) decides which records are
//! due; this module writes them into the buffers the driver posted on the
//! event queue: whole 64-byte records, at most 64 per buffer, one
//! notification per batch. Delivery runs wherever records become due or
//! buffers arrive: after each command-queue request (the vring worker),
//! after each frame (the capture thread), when the driver posts buffers (a
//! queue-1 kick), and when a coalescing deadline passes.
//!
//! Deadlines use a timerfd (non-blocking, CLOCK_MONOTONIC, one-shot) that
//! the daemon registers in the vring worker's epoll: the worker wakes only
//! when a deadline passes, needs no thread of its own to join at reset or
//! exit, and is already where queue work happens. The timer is re-armed
//! after every delivery to the controller's next deadline.
//!
//! The controller and the event queue share one lock, taken briefly (never
//! across a wait): lock order card -> events -> the event vring.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use log::{debug, warn};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use virtio_queue::{DescriptorChain, Writer};
use vm_memory::GuestMemoryMmap;
use xxcapture_abi::event::{PER_BUFFER, SIZE as RECORD_SIZE};
use xxcapture_abi::Event;
use xxcapture_model::InterruptController;
use zerocopy::IntoBytes;

use crate::queue::DeviceQueue;

/// What delivery counted since the daemon started (resets do not clear it).
#[derive(Debug)]
pub struct DeliveryStats {
    /// Records written into event buffers (LOST records included).
    pub records: u64,
    /// Notifications sent (one per batch).
    pub batches: u64,
    /// Event buffers returned unused: too small, readable, or outside
    /// guest memory.
    pub bad_buffers: u64,
    /// Records lost to a full backlog (over all resets).
    pub lost: u64,
    /// Microseconds from a record's raise to the notification that
    /// delivered it.
    pub delay_us: Histogram<u64>,
}

impl Default for DeliveryStats {
    fn default() -> Self {
        DeliveryStats {
            records: 0,
            batches: 0,
            bad_buffers: 0,
            lost: 0,
            // 3 significant digits from 1 µs up to about 1 hour.
            delay_us: Histogram::new_with_bounds(1, 3_600_000_000, 3)
                .expect("constant histogram bounds are valid"),
        }
    }
}

impl DeliveryStats {
    /// One line for the log.
    pub fn summary(&self) -> String {
        let h = &self.delay_us;
        format!(
            "events: records={} batches={} lost={} bad_buffers={} raise->notify p50={}us p99={}us max={}us",
            self.records,
            self.batches,
            self.lost,
            self.bad_buffers,
            h.value_at_quantile(0.5),
            h.value_at_quantile(0.99),
            h.max(),
        )
    }
}

/// The controller, the event queue and the statistics, under one lock.
pub struct EventState {
    pub irq: InterruptController,
    queue: Option<Arc<dyn DeviceQueue>>,
    /// The deadline the timer is armed for (device ns), if any.
    armed: Option<u64>,
    pub stats: DeliveryStats,
    /// EVENTS_LOST at the last look, to count losses over resets.
    lost_seen: u64,
}

/// Event delivery for one card.
pub struct Events {
    state: Mutex<EventState>,
    timer: TimerFd,
}

/// Why a posted event buffer cannot take records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadBuffer {
    /// Fewer than 64 writable bytes.
    TooSmall(usize),
    /// A device-readable descriptor.
    Readable,
    /// A writable descriptor outside guest memory.
    OutOfBounds,
}

/// How many records a posted event buffer takes.
pub fn buffer_capacity<M>(chain: &DescriptorChain<M>) -> Result<usize, BadBuffer>
where
    M: std::ops::Deref<Target = GuestMemoryMmap> + Clone,
{
    if chain.clone().any(|d| !d.is_write_only()) {
        return Err(BadBuffer::Readable);
    }
    let writer = Writer::new(chain.memory(), chain.clone()).map_err(|_| BadBuffer::OutOfBounds)?;
    let bytes = writer.available_bytes();
    if bytes < RECORD_SIZE {
        return Err(BadBuffer::TooSmall(bytes));
    }
    Ok((bytes / RECORD_SIZE).min(PER_BUFFER))
}

impl Events {
    /// Delivery for a card whose controller is `irq` (in its reset state).
    pub fn new(irq: InterruptController) -> io::Result<Events> {
        let timer = TimerFd::new(
            ClockId::CLOCK_MONOTONIC,
            TimerFlags::TFD_NONBLOCK | TimerFlags::TFD_CLOEXEC,
        )?;
        Ok(Events {
            state: Mutex::new(EventState {
                irq,
                queue: None,
                armed: None,
                stats: DeliveryStats::default(),
                lost_seen: 0,
            }),
            timer,
        })
    }

    /// The controller and statistics, locked.
    pub fn lock(&self) -> MutexGuard<'_, EventState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The event queue (once the transport has it).
    pub fn set_queue(&self, queue: Arc<dyn DeviceQueue>) {
        self.lock().queue = Some(queue);
    }

    pub fn has_queue(&self) -> bool {
        self.lock().queue.is_some()
    }

    /// The coalescing timer, for the vring worker's epoll.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_fd().as_raw_fd()
    }

    /// Consumes a timer expiry (the fd is non-blocking: nothing to read is
    /// fine, the timer may have been re-armed since epoll saw it).
    pub fn timer_fired(&self) {
        let _ = self.timer.wait();
    }

    /// Power-on state: the backlog is dropped, sequence numbers restart.
    pub fn reset(&self) {
        let mut st = self.lock();
        Self::count_lost(&mut st);
        st.irq.reset();
        st.lost_seen = 0;
        self.arm(&mut st, None, 0);
    }

    fn count_lost(st: &mut EventState) {
        let lost = st.irq.lost();
        st.stats.lost += lost.saturating_sub(st.lost_seen);
        st.lost_seen = lost;
    }

    /// One occurrence of `cause` (FRAME_DONE, OVERFLOW: of frame
    /// `frame_number`) at device time `now_ns`; delivers whatever is due.
    pub fn raise(&self, cause: u32, frame_number: u64, now_ns: u64, mem: Option<&GuestMemoryMmap>) {
        let mut st = self.lock();
        st.irq.raise(cause, frame_number, now_ns);
        self.deliver_locked(&mut st, now_ns, mem);
    }

    /// `count` occurrences at once (dropped frame periods); one delivery.
    pub fn raise_many(
        &self,
        cause: u32,
        frame_number: u64,
        count: u32,
        now_ns: u64,
        mem: Option<&GuestMemoryMmap>,
    ) {
        let mut st = self.lock();
        st.irq.raise_many(cause, frame_number, count, now_ns);
        self.deliver_locked(&mut st, now_ns, mem);
    }

    /// Latches `cause` in INT_STATUS without a record.
    pub fn latch(&self, cause: u32) {
        self.lock().irq.latch(cause);
    }

    /// Delivers the records due at device time `now_ns` into posted
    /// buffers, with one notification, and re-arms the timer.
    pub fn deliver(&self, now_ns: u64, mem: Option<&GuestMemoryMmap>) {
        let mut st = self.lock();
        self.deliver_locked(&mut st, now_ns, mem);
    }

    /// As [`Self::deliver`], for a caller that holds the lock.
    pub fn deliver_locked(&self, st: &mut EventState, now_ns: u64, mem: Option<&GuestMemoryMmap>) {
        Self::count_lost(st);
        if let (Some(queue), Some(mem)) = (st.queue.clone(), mem) {
            let mut written: Vec<Event> = Vec::new();
            let mut returned = false;
            loop {
                if st.irq.due(now_ns) == 0 {
                    break;
                }
                let popped = match queue.pop(mem) {
                    Ok(None) => Self::recheck(&*queue, mem),
                    other => other,
                };
                let chain = match popped {
                    Ok(Some(chain)) => chain,
                    // Out of buffers: the driver's next post kicks us
                    // (notifications were re-enabled by `recheck`).
                    Ok(None) => break,
                    Err(e) => {
                        warn!("event queue unusable: {e}");
                        break;
                    }
                };
                let head = chain.head_index();
                let capacity = match buffer_capacity(&chain) {
                    Ok(n) => n,
                    Err(e) => {
                        st.stats.bad_buffers += 1;
                        warn!("event buffer {head} returned unused: {e:?}");
                        if let Err(e) = queue.add_used(head, 0) {
                            warn!("event queue: add_used({head}) failed: {e}");
                        }
                        returned = true;
                        continue;
                    }
                };
                let records = st.irq.take_due(now_ns, capacity);
                let mut bytes = Vec::with_capacity(records.len() * RECORD_SIZE);
                for r in &records {
                    bytes.extend_from_slice(r.as_bytes());
                }
                let ok = Writer::new(mem, chain.clone())
                    .map_err(|e| e.to_string())
                    .and_then(|mut w| {
                        use std::io::Write;
                        w.write_all(&bytes).map_err(|e| e.to_string())
                    });
                let used = match ok {
                    Ok(()) => u32::try_from(bytes.len()).unwrap_or(0),
                    Err(e) => {
                        // Checked a moment ago; a memory table change
                        // between the two is all that can do this.
                        warn!("event buffer {head}: write failed ({e}); records lost");
                        0
                    }
                };
                if let Err(e) = queue.add_used(head, used) {
                    warn!("event queue: add_used({head}) failed: {e}");
                }
                returned = true;
                if used > 0 {
                    written.extend(records);
                }
            }
            if returned {
                if let Err(e) = queue.notify() {
                    warn!("event queue: cannot notify the driver: {e}");
                }
            }
            if !written.is_empty() {
                st.stats.batches += 1;
                st.stats.records += written.len() as u64;
                for r in &written {
                    let delay_us = now_ns.saturating_sub(r.device_time_ns.get()) / 1000;
                    // Out-of-range values saturate instead of failing.
                    st.stats.delay_us.saturating_record(delay_us.max(1));
                }
                debug!("delivered {} event records", written.len());
            }
        }
        let deadline = st.irq.next_deadline();
        self.arm(st, deadline, now_ns);
    }

    /// No buffer was available: re-enable kicks and look once more, since
    /// the driver may have posted between the pop and the enable.
    fn recheck<'m>(
        queue: &dyn DeviceQueue,
        mem: &'m GuestMemoryMmap,
    ) -> io::Result<Option<DescriptorChain<&'m GuestMemoryMmap>>> {
        match queue.enable_notification() {
            Ok(true) => queue.pop(mem),
            Ok(false) => Ok(None),
            Err(e) => {
                warn!("event queue: cannot enable notifications: {e}");
                Ok(None)
            }
        }
    }

    fn arm(&self, st: &mut EventState, deadline: Option<u64>, now_ns: u64) {
        if st.armed == deadline {
            return;
        }
        let result = match deadline {
            // A zero expiry would disarm the timer: at least 1 µs.
            Some(at) => {
                let wait = Duration::from_nanos(at.saturating_sub(now_ns).max(1_000));
                self.timer.set(
                    Expiration::OneShot(TimeSpec::from_duration(wait)),
                    TimerSetTimeFlags::empty(),
                )
            }
            None => self.timer.unset(),
        };
        match result {
            Ok(()) => st.armed = deadline,
            Err(e) => warn!("cannot arm the coalescing timer: {e}"),
        }
    }

    /// The delivery summary for the exit log.
    pub fn summary(&self) -> String {
        let mut st = self.lock();
        Self::count_lost(&mut st);
        st.stats.summary()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use virtio_bindings::bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};
    use xxcapture_abi::event::{DEVICE_BACKLOG, LOST};
    use xxcapture_abi::irq;
    use xxcapture_model::IrqConfig;
    use zerocopy::FromBytes;

    use crate::queue::mock::MockQueue;

    const BUFS: u64 = 0x10_0000;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 4 << 20)]).expect("mem")
    }

    fn events(mask: u32, count: u32, usec: u32) -> Events {
        let mut irq = InterruptController::new(true);
        irq.set_config(IrqConfig { mask, count, usec });
        Events::new(irq).expect("events")
    }

    /// Posts `n` buffers of `len` bytes (slot-numbered) from descriptor `first`.
    fn post(vq: &MockSplitQueue<'_, GuestMemoryMmap>, first: u16, n: u16, len: u32) {
        for i in first..first + n {
            let d = RawDescriptor::from(SplitDescriptor::new(
                BUFS + u64::from(i) * 0x1000,
                len,
                VRING_DESC_F_WRITE as u16,
                0,
            ));
            vq.add_desc_chains(&[d], i).expect("chain");
        }
    }

    fn records(mem: &GuestMemoryMmap, slot: u16, n: usize) -> Vec<Event> {
        let mut raw = vec![0u8; n * RECORD_SIZE];
        mem.read_slice(&mut raw, GuestAddress(BUFS + u64::from(slot) * 0x1000))
            .expect("read");
        raw.chunks(RECORD_SIZE)
            .map(|c| Event::read_from_bytes(c).expect("record"))
            .collect()
    }

    #[test]
    fn records_are_delivered_once_in_order_with_one_notification_per_batch() {
        let mem = mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let q = Arc::new(MockQueue::new(&mem, &vq));
        let ev = events(irq::ALL, 1, 0);
        // Raised before any buffer: backlog.
        for n in 0..70 {
            ev.raise(irq::FRAME_DONE, n, 1_000 + n, Some(&mem));
        }
        ev.set_queue(q.clone());
        ev.deliver(5_000, Some(&mem));
        assert_eq!(q.notifications(), 0, "no buffers yet");
        post(&vq, 0, 2, 4096);
        ev.deliver(5_000, Some(&mem));
        assert_eq!(q.used(&vq), vec![(0, 4096), (1, 6 * 64)]);
        assert_eq!(q.notifications(), 1, "one notification for the batch");
        let mut got = records(&mem, 0, 64);
        got.extend(records(&mem, 1, 6));
        let seqs: Vec<u64> = got.iter().map(|e| e.sequence.get()).collect();
        assert_eq!(seqs, (0..70).collect::<Vec<_>>());
        assert_eq!(got[69].frame_number.get(), 69);
        // Nothing twice.
        post(&vq, 2, 1, 4096);
        ev.deliver(6_000, Some(&mem));
        assert_eq!(q.used(&vq).len(), 2, "no record left: buffer stays posted");
        ev.raise(irq::TEST, 0, 7_000, Some(&mem));
        assert_eq!(q.used(&vq)[2], (2, 64));
        assert_eq!(records(&mem, 2, 1)[0].sequence.get(), 70);
        let st = ev.lock();
        assert_eq!((st.stats.records, st.stats.batches), (71, 2));
        assert!(st.stats.delay_us.len() == 71);
    }

    #[test]
    fn bad_buffers_are_returned_unused_and_records_wait_for_good_ones() {
        let mem = mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let q = Arc::new(MockQueue::new(&mem, &vq));
        let ev = events(irq::ALL, 1, 0);
        for _ in 0..3 {
            ev.raise(irq::TEST, 0, 10, Some(&mem));
        }
        ev.set_queue(q.clone());
        // Too small; readable; outside guest memory; then a split good one.
        let canary = vec![0xa5u8; 64];
        mem.write_slice(&canary, GuestAddress(BUFS))
            .expect("canary");
        let chains: Vec<Vec<RawDescriptor>> = vec![
            vec![RawDescriptor::from(SplitDescriptor::new(
                BUFS,
                63,
                VRING_DESC_F_WRITE as u16,
                0,
            ))],
            vec![RawDescriptor::from(SplitDescriptor::new(
                BUFS + 0x1000,
                4096,
                0,
                0,
            ))],
            vec![RawDescriptor::from(SplitDescriptor::new(
                (4 << 20) - 32,
                64,
                VRING_DESC_F_WRITE as u16,
                0,
            ))],
            vec![
                RawDescriptor::from(SplitDescriptor::new(
                    BUFS + 0x3000,
                    100,
                    (VRING_DESC_F_WRITE | VRING_DESC_F_NEXT) as u16,
                    4,
                )),
                RawDescriptor::from(SplitDescriptor::new(
                    BUFS + 0x4000,
                    60,
                    VRING_DESC_F_WRITE as u16,
                    0,
                )),
            ],
        ];
        let mut at = 0u16;
        for c in &chains {
            vq.add_desc_chains(c, at).expect("chain");
            at += c.len() as u16;
        }
        ev.deliver(20, Some(&mem));
        // 160 bytes hold 2 records; the third waits.
        assert_eq!(q.used(&vq), vec![(0, 0), (1, 0), (2, 0), (3, 128)]);
        assert_eq!(q.notifications(), 1, "one for the batch");
        let mut first = vec![0u8; 64];
        mem.read_slice(&mut first, GuestAddress(BUFS))
            .expect("read");
        assert_eq!(first, canary, "nothing written into a bad buffer");
        assert_eq!(ev.lock().stats.bad_buffers, 3);
        assert_eq!(ev.lock().irq.held(), 1);
    }

    #[test]
    fn coalescing_by_count_holds_records_until_the_count() {
        let mem = mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let q = Arc::new(MockQueue::new(&mem, &vq));
        let ev = events(irq::ALL, 4, 0);
        ev.set_queue(q.clone());
        post(&vq, 0, 4, 4096);
        for n in 0..3 {
            ev.raise(irq::FRAME_DONE, n, 100, Some(&mem));
        }
        assert!(q.used(&vq).is_empty());
        ev.raise(irq::FRAME_DONE, 3, 100, Some(&mem));
        assert_eq!(q.used(&vq), vec![(0, 256)]);
        assert_eq!(q.notifications(), 1);
    }

    /// Waits until the timerfd expires (poll with a limit).
    fn wait_timer(ev: &Events, limit: Duration) -> bool {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let fd = ev.timer.as_fd();
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        let ms = u16::try_from(limit.as_millis()).unwrap_or(u16::MAX);
        matches!(poll(&mut fds, PollTimeout::from(ms)), Ok(1))
    }

    #[test]
    fn coalescing_by_time_arms_the_timer_for_the_oldest_record() {
        let mem = mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 16);
        let q = Arc::new(MockQueue::new(&mem, &vq));
        let ev = events(irq::ALL, 100, 20_000);
        ev.set_queue(q.clone());
        post(&vq, 0, 1, 4096);
        let start = Instant::now();
        let now = || u64::try_from(start.elapsed().as_nanos()).expect("ns");
        ev.raise(irq::FRAME_DONE, 0, now(), Some(&mem));
        ev.raise(irq::FRAME_DONE, 1, now(), Some(&mem));
        assert!(q.used(&vq).is_empty());
        assert!(wait_timer(&ev, Duration::from_secs(5)), "timer never fired");
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(20),
            "fired early: {waited:?}"
        );
        ev.timer_fired();
        ev.deliver(now(), Some(&mem));
        assert_eq!(q.used(&vq), vec![(0, 128)]);
        // Disarmed: nothing waits.
        assert!(!wait_timer(&ev, Duration::from_millis(50)));
    }

    #[test]
    fn backlog_overflow_delivers_a_lost_record_with_the_right_range() {
        let mem = mem();
        let vq = MockSplitQueue::create(&mem, GuestAddress(0), 128);
        let q = Arc::new(MockQueue::new(&mem, &vq));
        let ev = events(irq::ALL, 1, 0);
        ev.set_queue(q.clone());
        let total = DEVICE_BACKLOG as u64 + 5;
        for n in 0..total {
            ev.raise(irq::FRAME_DONE, n, n, Some(&mem));
        }
        // 65 buffers: 4096 records, then the LOST record.
        for i in 0..65u16 {
            let d = RawDescriptor::from(SplitDescriptor::new(
                0x20_0000 + u64::from(i) * 0x1000,
                4096,
                VRING_DESC_F_WRITE as u16,
                0,
            ));
            vq.add_desc_chains(&[d], i).expect("chain");
        }
        ev.deliver(total, Some(&mem));
        let used = q.used(&vq);
        assert_eq!(used.len(), 65);
        assert_eq!(used[64], (64, 64));
        let mut raw = vec![0u8; 64];
        mem.read_slice(&mut raw, GuestAddress(0x20_0000 + 64 * 0x1000))
            .expect("read");
        let lost = Event::read_from_bytes(&raw).expect("record");
        assert_eq!(lost.cause.get(), LOST);
        assert_eq!(lost.sequence.get(), DEVICE_BACKLOG as u64);
        assert_eq!(lost.count.get(), 5);
        assert!(ev.summary().contains("lost=5"));
    }

    #[test]
    fn reset_drops_the_backlog() {
        let ev = events(irq::ALL, 1, 0);
        ev.raise(irq::TEST, 0, 1, None);
        assert_eq!(ev.lock().irq.held(), 1);
        ev.reset();
        assert_eq!(ev.lock().irq.held(), 0);
        assert_eq!(ev.lock().irq.next_sequence(), 0);
    }
}
