//! The submission and completion rings (SPEC §15), card side.
//!
//! The ring area lives in region 0 after the status page
//! ([`crate::card_ram::RingArea`]); the application maps the same pages
//! and writes them whenever it likes. Everything the card reads from the
//! area is hostile: each application-written field is loaded once per use
//! with an atomic load and clamped, entries and task files are copied out
//! of the area (volatile copies) before anything looks at them, and the
//! card keeps its own copy of every index and of the geometry, never
//! reading back a field it writes.
//!
//! Two halves, under two locks:
//!
//! - [`SqState`] (the device's `ring` lock): the owner, the SQ head, the
//!   setup flags and the SQ poller. Entries are consumed with the card
//!   locked, by the vring worker (RING_KICK without SQPOLL) or by the
//!   poller thread ([`Poller`]); see [`crate::device`] for the lock order.
//! - [`CqWriter`] (inside [`crate::events::EventState`], the events lock):
//!   the CQ tail, the last CQ head the card took, the events lost to a full
//!   CQ and the RING_WAKE owed to a sleeper. Completions (from the SQ
//!   consumer) and device events (from wherever records are generated:
//!   task files, the capture thread) are posted there.
//!
//! Posting an entry: write the 64-byte record at `cq_tail`, Release-store
//! the new `cq_tail`, a full fence, then read `cq_flags`; if the
//! application armed the CQ, clear ARMED (an atomic AND) and owe one
//! RING_WAKE record on the event queue, sent at once by event delivery
//! ([`crate::events`]) without coalescing.

use std::mem::offset_of;
use std::sync::atomic::{fence, AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use thiserror::Error;
use xxcapture_abi::event::{FLAG_COMPLETION, FLAG_RING, LOST, SIZE as RECORD_SIZE};
use xxcapture_abi::{
    cq_flags, irq, vq_status, Event, RingHeader, SqEntry, TaskFileHeader, TfError, CMD_SIZE,
    MAX_COMMANDS, RING_ARENA_OFFSET, RING_ARENA_SIZE, RING_CQ_ENTRIES, RING_CQ_OFFSET, RING_MAGIC,
    RING_SQ_ENTRIES, RING_SQ_OFFSET, RING_VERSION, SQ_ENTRY_SIZE, TF_HEADER_SIZE,
};
use xxcapture_model::InterruptController;
use zerocopy::{FromBytes, IntoBytes};

use crate::card_ram::{CardRam, RingArea};

/// Byte offsets of the header's fields in the ring area.
pub mod field {
    use super::*;
    pub const MAGIC: usize = offset_of!(RingHeader, magic);
    pub const VERSION: usize = offset_of!(RingHeader, version);
    pub const SQ_ENTRIES: usize = offset_of!(RingHeader, sq_entries);
    pub const CQ_ENTRIES: usize = offset_of!(RingHeader, cq_entries);
    pub const SQ_OFFSET: usize = offset_of!(RingHeader, sq_offset);
    pub const CQ_OFFSET: usize = offset_of!(RingHeader, cq_offset);
    pub const ARENA_OFFSET: usize = offset_of!(RingHeader, arena_offset);
    pub const ARENA_SIZE: usize = offset_of!(RingHeader, arena_size);
    pub const SETUP_FLAGS: usize = offset_of!(RingHeader, setup_flags);
    pub const SQ_IDLE_US: usize = offset_of!(RingHeader, sq_idle_us);
    pub const SQ_HEAD: usize = offset_of!(RingHeader, sq_head);
    pub const SQ_FLAGS: usize = offset_of!(RingHeader, sq_flags);
    pub const CQ_TAIL: usize = offset_of!(RingHeader, cq_tail);
    pub const CQ_LOST: usize = offset_of!(RingHeader, cq_lost);
    pub const SQ_TAIL: usize = offset_of!(RingHeader, sq_tail);
    pub const CQ_HEAD: usize = offset_of!(RingHeader, cq_head);
    pub const CQ_FLAGS: usize = offset_of!(RingHeader, cq_flags);
    pub const EVENT_MASK: usize = offset_of!(RingHeader, event_mask);
    pub const SQES: usize = offset_of!(RingHeader, sqes);
    pub const KICKS: usize = offset_of!(RingHeader, kicks);
    pub const WAKEUPS: usize = offset_of!(RingHeader, wakeups);
    pub const POLL_CPU_NS: usize = offset_of!(RingHeader, poll_cpu_ns);
    pub const POLL_AWAKE_NS: usize = offset_of!(RingHeader, poll_awake_ns);
    pub const POLL_SLEEPS: usize = offset_of!(RingHeader, poll_sleeps);
}

/// Device-event causes that may be routed into the CQ (those that make
/// records).
pub const ROUTABLE_CAUSES: u32 = xxcapture_model::interrupts::RECORD_CAUSES;

/// Most SQ entries one drain consumes: a full SQ twice (entries that
/// arrive while it runs included), so a drain always ends.
pub const MAX_PER_DRAIN: u32 = 2 * RING_SQ_ENTRIES;

/// Why a RING_SETUP or RING_KICK was refused.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RingError {
    /// Answered UNSUPPORTED: the card has no rings, or SQPOLL on virtual
    /// time.
    #[error("unsupported: {0}")]
    Unsupported(&'static str),
    /// Answered DEVICE_ERROR: region 0 not mapped, no poller thread.
    #[error("{0}")]
    Device(String),
}

impl RingError {
    /// The transport status reported for this error.
    pub fn status(&self) -> u32 {
        match self {
            RingError::Unsupported(_) => vq_status::UNSUPPORTED,
            RingError::Device(_) => vq_status::DEVICE_ERROR,
        }
    }
}

/// What the rings counted since the daemon started (over every ring).
#[derive(Debug, Default)]
pub struct RingStats {
    pub setups: AtomicU64,
    /// CQ entries written: completions, device records, LOST records.
    pub posted: AtomicU64,
    pub sqes: AtomicU64,
    pub kicks: AtomicU64,
    pub completions: AtomicU64,
    pub events: AtomicU64,
    pub lost: AtomicU64,
    pub wakeups: AtomicU64,
    /// Application `sq_tail` values more than an SQ ahead of the card's
    /// head, or behind it.
    pub bad_tails: AtomicU64,
    pub poll_cpu_ns: AtomicU64,
    pub poll_awake_ns: AtomicU64,
    pub poll_sleeps: AtomicU64,
}

impl RingStats {
    /// One line for the exit log.
    pub fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "rings: setups={} posted={} sqes={} kicks={} completions={} events={} lost={} wakeups={} bad_tails={} poll_cpu_ms={} poll_awake_ms={} poll_sleeps={}",
            get(&self.setups),
            get(&self.posted),
            get(&self.sqes),
            get(&self.kicks),
            get(&self.completions),
            get(&self.events),
            get(&self.lost),
            get(&self.wakeups),
            get(&self.bad_tails),
            get(&self.poll_cpu_ns) / 1_000_000,
            get(&self.poll_awake_ns) / 1_000_000,
            get(&self.poll_sleeps),
        )
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }
}

/// Offset in the area of SQ entry `index` (masked).
fn sq_entry_at(index: u32) -> usize {
    RING_SQ_OFFSET as usize + (index & (RING_SQ_ENTRIES - 1)) as usize * SQ_ENTRY_SIZE
}

/// Offset in the area of CQ entry `index` (masked).
fn cq_entry_at(index: u32) -> usize {
    RING_CQ_OFFSET as usize + (index & (RING_CQ_ENTRIES - 1)) as usize * RECORD_SIZE
}

/// Writes the header of a fresh ring into a zeroed area.
pub(crate) fn init_header(area: &RingArea<'_>, setup_flags: u32, sq_idle_us: u32) {
    let r = Ordering::Relaxed;
    area.store(field::MAGIC, RING_MAGIC, r);
    area.store(field::VERSION, RING_VERSION, r);
    area.store(field::SQ_ENTRIES, RING_SQ_ENTRIES, r);
    area.store(field::CQ_ENTRIES, RING_CQ_ENTRIES, r);
    area.store(field::SQ_OFFSET, RING_SQ_OFFSET, r);
    area.store(field::CQ_OFFSET, RING_CQ_OFFSET, r);
    area.store(field::ARENA_OFFSET, RING_ARENA_OFFSET, r);
    area.store(field::ARENA_SIZE, RING_ARENA_SIZE, r);
    area.store(field::SETUP_FLAGS, setup_flags, r);
    area.store(field::SQ_IDLE_US, sq_idle_us, r);
    let need_wakeup = if setup_flags & xxcapture_abi::ring_setup::SQPOLL != 0 {
        0
    } else {
        xxcapture_abi::sq_flags::NEED_WAKEUP
    };
    area.store(field::SQ_FLAGS, need_wakeup, r);
    fence(Ordering::SeqCst);
}

/// The task file an SQ entry names, copied out of the arena, or `None`
/// when the entry's offset or size is out of range or disagrees with the
/// header's count (a BAD_COUNT completion, index 0, nothing written back).
pub(crate) fn read_task_file(area: &RingArea<'_>, sqe: &SqEntry) -> Option<Vec<u8>> {
    let (offset, size) = (sqe.offset.get(), sqe.size.get());
    let end = offset.checked_add(size)?;
    if end > RING_ARENA_SIZE {
        return None;
    }
    let size = size as usize;
    let commands = size.checked_sub(TF_HEADER_SIZE)?;
    if commands == 0
        || !commands.is_multiple_of(CMD_SIZE)
        || commands / CMD_SIZE > MAX_COMMANDS as usize
    {
        return None;
    }
    let mut buf = vec![0u8; size];
    area.read(RING_ARENA_OFFSET as usize + offset as usize, &mut buf)?;
    // The copy is what counts from here on (no second fetch).
    let (header, _) = TaskFileHeader::ref_from_prefix(&buf).ok()?;
    if header.count.get() as usize != commands / CMD_SIZE {
        return None;
    }
    Some(buf)
}

/// Writes an executed task file back to where its entry named it.
pub(crate) fn write_task_file(area: &RingArea<'_>, sqe: &SqEntry, buf: &[u8]) {
    let at = RING_ARENA_OFFSET as usize + sqe.offset.get() as usize;
    // read_task_file checked the range.
    let _ = area.write(at, buf);
}

/// Reads SQ entry `index` (one copy).
pub(crate) fn read_sq_entry(area: &RingArea<'_>, index: u32) -> SqEntry {
    let mut raw = [0u8; SQ_ENTRY_SIZE];
    if area.read(sq_entry_at(index), &mut raw).is_none() {
        return SqEntry::default();
    }
    SqEntry::read_from_bytes(&raw).unwrap_or_default()
}

/// The completion record of SQ entry `index`.
pub fn completion(index: u32, user_data: u64, error: TfError, count: u32, now_ns: u64) -> Event {
    Event {
        cause: if error == TfError::Ok {
            irq::DMA_DONE
        } else {
            irq::DMA_ERROR
        }
        .into(),
        status: (error as u32).into(),
        request_id: u64::from(index).into(),
        refcon: user_data.into(),
        device_time_ns: now_ns.into(),
        count: count.into(),
        flags: (FLAG_COMPLETION | FLAG_RING).into(),
        ..Event::default()
    }
}

/// The CQ side of the ring: under the events lock.
#[derive(Default)]
pub struct CqWriter {
    /// Card RAM (with the ring area) while a ring is set up.
    ram: Option<Arc<CardRam>>,
    stats: Option<Arc<RingStats>>,
    /// Next CQ index the card writes.
    tail: u32,
    /// The last `cq_head` the card took from the application.
    head: u32,
    /// Device events lost since the last LOST record posted, and the
    /// sequence number of the first of them.
    lost: u32,
    lost_first: u64,
    /// Events lost to a full CQ since setup (`cq_lost`).
    cq_lost: u32,
    /// RING_WAKE interrupts sent since setup (`wakeups`).
    wakeups: u64,
    /// A RING_WAKE record is owed on the event queue.
    wake: bool,
}

impl CqWriter {
    /// A ring was set up (its area zeroed and its header written).
    pub(crate) fn start(&mut self, ram: Arc<CardRam>, stats: Arc<RingStats>) {
        *self = CqWriter {
            ram: Some(ram),
            stats: Some(stats),
            ..CqWriter::default()
        };
    }

    /// The ring was torn down: nothing is posted any more.
    pub(crate) fn stop(&mut self) {
        *self = CqWriter::default();
    }

    /// A ring is set up.
    pub fn is_active(&self) -> bool {
        self.ram.is_some()
    }

    /// Takes the RING_WAKE owed, if one is.
    pub fn take_wake(&mut self) -> bool {
        std::mem::take(&mut self.wake)
    }

    /// A RING_WAKE could not be sent yet: still owed.
    pub(crate) fn owe_wake(&mut self) {
        self.wake = self.is_active();
    }

    /// The causes the application routes into the CQ now (read once).
    pub fn event_mask(&self) -> u32 {
        self.ram
            .as_ref()
            .and_then(|r| r.ring_area())
            .map_or(0, |a| {
                a.load(field::EVENT_MASK, Ordering::Relaxed) & ROUTABLE_CAUSES
            })
    }

    /// Free CQ slots: the application's `cq_head` is taken only if it lies
    /// between the last one taken and the card's tail.
    pub fn free(&mut self) -> u32 {
        let Some(area) = self.ram.as_ref().and_then(|r| r.ring_area()) else {
            return 0;
        };
        let head = area.load(field::CQ_HEAD, Ordering::Acquire);
        if head.wrapping_sub(self.head) <= self.tail.wrapping_sub(self.head) {
            self.head = head;
        }
        RING_CQ_ENTRIES.saturating_sub(self.tail.wrapping_sub(self.head))
    }

    /// Writes `event` at the tail, publishes it, and looks for a sleeper.
    fn post(&mut self, event: &Event) {
        let Some(ram) = self.ram.clone() else {
            return;
        };
        let Some(area) = ram.ring_area() else {
            return;
        };
        let _ = area.write(cq_entry_at(self.tail), event.as_bytes());
        self.tail = self.tail.wrapping_add(1);
        if let Some(s) = &self.stats {
            RingStats::add(&s.posted, 1);
        }
        area.store(field::CQ_TAIL, self.tail, Ordering::Release);
        // Pairs with the application's barrier between setting ARMED and
        // re-reading cq_tail: one of the two sees the other.
        fence(Ordering::SeqCst);
        if area.load(field::CQ_FLAGS, Ordering::Relaxed) & cq_flags::ARMED != 0 {
            if let Some(w) = area.word(field::CQ_FLAGS) {
                w.fetch_and(!cq_flags::ARMED, Ordering::AcqRel);
            }
            self.wake = true;
            self.wakeups += 1;
            area.store64(field::WAKEUPS, self.wakeups, Ordering::Relaxed);
            if let Some(s) = &self.stats {
                RingStats::add(&s.wakeups, 1);
            }
        }
    }

    /// Whether a completion can be posted (the SQ consumer checks before
    /// it takes an entry, so completions are never dropped).
    pub fn has_room(&mut self) -> bool {
        self.is_active() && self.free() >= 1
    }

    /// Posts the completion of an SQ entry. The caller checked
    /// [`Self::has_room`] (device events never take the last
    /// `sq_entries` slots, so the room is still there); without room the
    /// completion is not written.
    pub fn post_completion(&mut self, event: &Event) -> bool {
        if !self.has_room() {
            return false;
        }
        self.post(event);
        if let Some(s) = &self.stats {
            RingStats::add(&s.completions, 1);
        }
        true
    }

    /// Posts a device record under the room rule: only while more than
    /// `sq_entries` slots are free (two with a LOST record to go first);
    /// otherwise it is lost (`cq_lost`, EVENTS_LOST in `irq`).
    pub fn post_event(&mut self, event: &Event, irq: &mut InterruptController) {
        if !self.is_active() {
            return;
        }
        if event.cause.get() == LOST {
            // Lost on the way here (already in EVENTS_LOST).
            self.note_lost(event.sequence.get(), event.count.get());
            return;
        }
        let need = if self.lost > 0 { 2 } else { 1 };
        if self.free() >= RING_SQ_ENTRIES + need {
            if self.lost > 0 {
                let lost = Event {
                    cause: LOST.into(),
                    sequence: self.lost_first.into(),
                    device_time_ns: event.device_time_ns,
                    count: self.lost.into(),
                    ..Event::default()
                };
                self.post(&lost);
                self.lost = 0;
            }
            self.post(event);
            if let Some(s) = &self.stats {
                RingStats::add(&s.events, 1);
            }
        } else {
            irq.lost_elsewhere(1);
            self.note_lost(event.sequence.get(), 1);
        }
    }

    fn note_lost(&mut self, sequence: u64, count: u32) {
        if self.lost == 0 {
            self.lost_first = sequence;
        }
        self.lost = self.lost.saturating_add(count);
        self.cq_lost = self.cq_lost.wrapping_add(count);
        if let Some(area) = self.ram.as_ref().and_then(|r| r.ring_area()) {
            area.store(field::CQ_LOST, self.cq_lost, Ordering::Relaxed);
        }
        if let Some(s) = &self.stats {
            RingStats::add(&s.lost, u64::from(count));
        }
    }
}

/// The SQ side of the ring: under the device's `ring` lock.
#[derive(Default)]
pub struct SqState {
    /// Owner tag of the ring (0: no ring).
    pub owner: u32,
    /// Bumped at every setup and teardown: a poller of an older ring
    /// finds a different value and consumes nothing.
    pub generation: u64,
    /// Next SQ index the card consumes.
    pub head: u32,
    /// `ring_setup::*` granted.
    pub setup_flags: u32,
    /// SQ entries consumed and RING_KICKs received since setup.
    pub sqes: u64,
    pub kicks: u64,
    /// A bad `sq_tail` was logged since setup (logged once).
    pub bad_tail_logged: bool,
    /// The SQ poller, with SQPOLL.
    pub poller: Option<Poller>,
    /// The poller's statistics since setup.
    pub poll_cpu_ns: u64,
    pub poll_awake_ns: u64,
    pub poll_sleeps: u64,
}

impl SqState {
    pub fn is_active(&self) -> bool {
        self.owner != 0
    }
}

/// What one drain of the SQ did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Drain {
    /// Entries consumed (each completed).
    pub consumed: u32,
    /// Entries wait, but the CQ has no room for their completions.
    pub stalled: bool,
}

/// What the poller thread and its waker share.
#[derive(Default)]
pub struct PollShared {
    /// Set at teardown: the thread ends.
    pub stop: AtomicBool,
    /// A RING_KICK arrived since the poller last looked.
    kicked: Mutex<bool>,
    wake: Condvar,
}

impl PollShared {
    /// Wakes a sleeping poller (RING_KICK).
    pub fn kick(&self) {
        *self.kicked.lock().unwrap_or_else(PoisonError::into_inner) = true;
        self.wake.notify_one();
    }

    /// Ends the poller (it exits at its next look; join it afterwards).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.kick();
    }

    pub fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps until a kick or a stop; consumes the kick.
    pub fn sleep(&self) {
        let mut kicked = self.kicked.lock().unwrap_or_else(PoisonError::into_inner);
        while !*kicked && !self.stopping() {
            kicked = self
                .wake
                .wait(kicked)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *kicked = false;
    }

    /// Forgets a kick that arrived while the poller was awake anyway.
    pub fn clear_kick(&self) {
        *self.kicked.lock().unwrap_or_else(PoisonError::into_inner) = false;
    }
}

/// The SQ poller thread of one ring.
pub struct Poller {
    pub shared: Arc<PollShared>,
    pub handle: JoinHandle<()>,
}

impl Poller {
    /// Stops the thread and waits for it. Must not be called with the card
    /// lock held (the thread may be waiting for it).
    pub fn join(self) {
        self.shared.stop();
        if self.handle.join().is_err() {
            log::error!("the SQ poller thread panicked");
        }
    }
}

/// CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID), in ns.
pub fn thread_cpu_ns() -> u64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID) {
        Ok(ts) => {
            let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
            let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
            secs.saturating_mul(1_000_000_000).saturating_add(nanos)
        }
        Err(_) => 0,
    }
}

/// The idle time a RING_SETUP asks for, as granted.
pub fn idle_time(sq_idle_us: u32) -> Duration {
    let us = if sq_idle_us == 0 {
        xxcapture_abi::RING_DEFAULT_SQ_IDLE_US
    } else {
        sq_idle_us
    };
    Duration::from_micros(u64::from(us))
}

#[cfg(test)]
mod tests;
