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
//! Records of the causes the application routes to the completion ring
//! (SPEC §15) are diverted by the controller as they are generated and
//! posted into the CQ ([`crate::ring::CqWriter`], which lives under the same
//! lock) at the next delivery, which every generating path runs at once;
//! a RING_WAKE owed to a sleeping ring owner goes into the event queue
//! first, uncoalesced.
//!
//! The controller and the event queue share one lock, taken briefly (never
//! across a wait): lock order card -> events -> the event vring.

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use hdrhistogram::Histogram;
use log::{debug, warn};
use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd, TimerFlags, TimerSetTimeFlags};
use virtio_queue::{DescriptorChain, Writer};
use vm_memory::GuestMemoryMmap;
use xxcapture_abi::event::LOST as EVENT_LOST;
use xxcapture_abi::event::RING_WAKE;
use xxcapture_abi::event::{PER_BUFFER, SIZE as RECORD_SIZE};
use xxcapture_abi::Event;
use xxcapture_model::InterruptController;
use zerocopy::IntoBytes;

use crate::faults::{FaultKind, Faults, Unit};
use crate::queue::DeviceQueue;
use crate::ring::CqWriter;
use crate::trace::{cause_name, Tracer, What};

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
    /// The completion ring's writer (inactive without a ring).
    pub ring: CqWriter,
}

impl EventState {
    /// Tells the controller which causes the application routes into the
    /// CQ now (`event_mask`, read once here): called before anything that
    /// generates records.
    pub fn refresh_divert(&mut self) {
        let mask = self.ring.event_mask();
        self.irq.set_divert(mask);
    }

    /// Posts the records diverted since the last look into the CQ, in
    /// order (under the CQ's room rule).
    pub fn route_diverted(&mut self) {
        let diverted = self.irq.take_diverted();
        for record in diverted {
            if self.ring.is_active() {
                self.ring.post_event(&record, &mut self.irq);
            } else if record.cause.get() != EVENT_LOST {
                // The ring went away between generation and delivery.
                self.irq.lost_elsewhere(1);
            }
        }
    }
}

/// Event delivery for one card.
pub struct Events {
    state: Mutex<EventState>,
    timer: TimerFd,
    /// The card's armed faults (event records are one of their units).
    faults: Arc<Faults>,
    /// `--trace`: every record written is traced.
    tracer: OnceLock<Arc<Tracer>>,
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
                ring: CqWriter::default(),
            }),
            timer,
            faults: Arc::default(),
            tracer: OnceLock::new(),
        })
    }

    /// The card's armed faults.
    pub fn faults(&self) -> &Arc<Faults> {
        &self.faults
    }

    /// Traces into `tracer` from now on (set once).
    pub fn set_tracer(&self, tracer: Arc<Tracer>) {
        self.faults.set_tracer(Some(Arc::clone(&tracer)));
        let _ = self.tracer.set(tracer);
    }

    /// The tracer, with `--trace`.
    pub fn tracer(&self) -> Option<&Arc<Tracer>> {
        self.tracer.get()
    }

    /// Applies the armed event-record faults to `records` about to go into
    /// a buffer of `capacity` records: lost ones are removed, duplicated
    /// ones repeated while room is left. Returns the storm's extra
    /// notifications.
    fn inject(&self, records: Vec<Event>, capacity: usize) -> (Vec<Event>, u32) {
        let mut out = Vec::with_capacity(capacity);
        let mut storm = 0u32;
        let total = records.len();
        for (i, r) in records.into_iter().enumerate() {
            if r.cause.get() == EVENT_LOST {
                out.push(r);
                continue;
            }
            let fired = self.faults.tick(Unit::EventRecord, r.device_time_ns.get());
            storm = storm.saturating_add(fired.storm);
            if fired.has(FaultKind::IrqLost) {
                continue;
            }
            let dup = fired.has(FaultKind::IrqDup);
            out.push(r);
            // Room for the copy without pushing a later record out.
            if dup && out.len() + (total - i - 1) < capacity {
                out.push(r);
            }
        }
        (out, storm)
    }

    fn trace_records(tracer: &Tracer, records: &[Event]) {
        for r in records {
            let cause = r.cause.get();
            tracer.emit(
                r.device_time_ns.get(),
                What::Irq {
                    cause: cause_name(cause).to_owned(),
                    sequence: r.sequence.get(),
                    frame: r.frame_number.get(),
                },
            );
        }
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
        st.refresh_divert();
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
        st.refresh_divert();
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
        st.route_diverted();
        Self::count_lost(st);
        if let (Some(queue), Some(mem)) = (st.queue.clone(), mem) {
            let mut written: Vec<Event> = Vec::new();
            let mut returned = false;
            let mut storm = 0u32;
            if st.ring.take_wake() {
                match Self::send_wake(&*queue, mem, now_ns) {
                    Ok(()) => returned = true,
                    // No buffer yet: owed until the driver posts one.
                    Err(()) => st.ring.owe_wake(),
                }
            }
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
                let mut records = st.irq.take_due(now_ns, capacity);
                if self.faults.is_live() {
                    let (kept, extra) = self.inject(records, capacity);
                    records = kept;
                    storm = storm.saturating_add(extra);
                }
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
                    if let Some(tracer) = self.tracer.get() {
                        Self::trace_records(tracer, &records);
                    }
                    written.extend(records);
                }
            }
            if returned {
                if let Err(e) = queue.notify() {
                    warn!("event queue: cannot notify the driver: {e}");
                }
            }
            for _ in 0..storm {
                if let Err(e) = queue.interrupt() {
                    warn!("event queue: injected interrupt storm: {e}");
                    break;
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

    /// Writes one RING_WAKE record into the next event buffer (not
    /// coalesced, not counted as a device record, sequence 0). `Err` when
    /// no usable buffer is available.
    fn send_wake(queue: &dyn DeviceQueue, mem: &GuestMemoryMmap, now_ns: u64) -> Result<(), ()> {
        let record = Event {
            cause: RING_WAKE.into(),
            device_time_ns: now_ns.into(),
            ..Event::default()
        };
        loop {
            let popped = match queue.pop(mem) {
                Ok(None) => Self::recheck(queue, mem),
                other => other,
            };
            let Ok(Some(chain)) = popped else {
                return Err(());
            };
            let head = chain.head_index();
            let used = match buffer_capacity(&chain) {
                Ok(_) => Writer::new(mem, chain.clone())
                    .ok()
                    .and_then(|mut w| {
                        use std::io::Write;
                        w.write_all(record.as_bytes()).ok()
                    })
                    .map_or(0, |()| RECORD_SIZE as u32),
                Err(_) => 0,
            };
            if let Err(e) = queue.add_used(head, used) {
                warn!("event queue: add_used({head}) failed: {e}");
                return Err(());
            }
            if used > 0 {
                return Ok(());
            }
        }
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

    /// When the coalescing timer is set to expire (device time), if it is.
    pub fn armed_deadline(&self) -> Option<u64> {
        self.lock().armed
    }

    /// The delivery summary for the exit log.
    pub fn summary(&self) -> String {
        let mut st = self.lock();
        Self::count_lost(&mut st);
        st.stats.summary()
    }
}

#[cfg(test)]
mod tests;
