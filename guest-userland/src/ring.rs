//! The submission and completion rings: task files and their completions,
//! and device events, through memory the application shares with the card
//! (io_uring's model; SPEC §15).
//!
//! [`Card::setup_ring`] asks the driver for the rings (once per controlling
//! open) and maps them. [`Ring::submit`] places a task file in the ring's
//! arena and publishes an SQ entry: no system call while the card's SQ
//! poller is awake (`RingOptions::sqpoll`), one RING_ENTER otherwise.
//! [`Ring::wait`] takes the next completion or event: it spins on the CQ
//! tail for the time it is given, then arms the CQ and sleeps in `poll()`,
//! which the card's RING_WAKE interrupt ends.
//!
//! What the rings may carry is narrower than EXEC: register commands and
//! DMA to this open's registered buffers (by id and offset); a raw-address
//! DMA command fails REFUSED. Completions are never dropped: the card takes
//! an SQ entry only when the CQ has room for its completion, so an
//! application that stops reaping stalls its own submissions. Device
//! events routed to the CQ ([`Ring::set_event_mask`]) may be dropped under
//! overflow, reported by a [`Cause::Lost`] entry.

use std::collections::VecDeque;
use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::{MmapMut, MmapOptions};
use nix::poll::{PollFd, PollFlags, PollTimeout};
use xxcapture_abi::{
    caps, cq_flags, event, ring_setup, sq_flags, Event as RawEvent, RingHeader, RingSetup, SqEntry,
    TaskFile, TaskFileResult, TfError, CMD_SIZE, MAX_COMMANDS, MMAP_OFFSET_RING, RING_ARENA_OFFSET,
    RING_ARENA_SIZE, RING_CQ_ENTRIES, RING_CQ_OFFSET, RING_MAGIC, RING_SQ_ENTRIES, RING_SQ_OFFSET,
    RING_VERSION, SQ_ENTRY_SIZE, TF_HEADER_SIZE,
};
use zerocopy::{FromBytes, IntoBytes};

use crate::card::Card;
use crate::error::{Error, Result};
use crate::events::{Causes, Event};
use crate::sys;

/// How the rings are set up. The default has no SQ poller: every
/// publish costs one RING_ENTER (many entries may share it).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingOptions {
    /// The card polls the SQ while entries keep arriving, so submission
    /// needs no system call. The poller is a host thread that spins: it
    /// pays only where the host has a core to spare for it (on a host
    /// whose cores are all busy it takes time from the guest's vCPU).
    pub sqpoll: bool,
    /// How long the poller spins without a new entry before it sleeps
    /// (zero: the card's default). Ignored without `sqpoll`.
    pub sq_idle: Duration,
}

/// A task file's completion from the CQ.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RingCompletion {
    /// The SQ index [`Ring::submit`] returned.
    pub sq_index: u32,
    /// The value given to [`Ring::submit`].
    pub user_data: u64,
    /// The executed task file (outputs filled in, error and index in it).
    pub result: TaskFileResult,
    /// Device clock when it completed.
    pub device_time_ns: u64,
}

/// One CQ entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RingEntry {
    Completion(RingCompletion),
    /// A device event routed to the CQ (or a LOST record).
    Event(Event),
}

/// What the card reports about the rings (the header's statistics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingStats {
    pub sqes: u64,
    pub kicks: u64,
    pub wakeups: u64,
    pub poll_cpu_ns: u64,
    pub poll_awake_ns: u64,
    pub poll_sleeps: u64,
    pub cq_lost: u32,
}

/// A task file in flight: where its bytes are in the arena.
#[derive(Clone, Copy, Debug)]
struct InFlight {
    sq_index: u32,
    offset: u32,
    size: u32,
    user_data: u64,
}

/// Bytes of the arena in use, as a FIFO: task files complete in SQ order,
/// so space is given back in the order it was taken.
#[derive(Debug, Default)]
struct Arena {
    in_flight: VecDeque<InFlight>,
    /// Where the next task file goes.
    next: u32,
}

impl Arena {
    /// An offset for `size` bytes, or `None` while the arena is full.
    fn place(&self, size: u32) -> Option<u32> {
        if size > RING_ARENA_SIZE {
            return None;
        }
        let Some(oldest) = self.in_flight.front() else {
            return Some(0);
        };
        let (start, next) = (oldest.offset, self.next);
        if next > start {
            // Used: [start, next). Free: [next, end) and [0, start).
            if next + size <= RING_ARENA_SIZE {
                Some(next)
            } else {
                (size <= start).then_some(0)
            }
        } else {
            // Wrapped (or full). Used: [start, end) and [0, next).
            (next + size <= start).then_some(next)
        }
    }
}

/// The rings of one controlling open, mapped. One per open, for the life
/// of the open (the driver tears them down at close).
pub struct Ring<'c> {
    card: &'c Card,
    map: MmapMut,
    /// Next SQ index to publish, and the one after the last one written.
    sq_tail: u32,
    sq_pending: u32,
    cq_head: u32,
    arena: Arena,
    sqpoll: bool,
}

impl std::fmt::Debug for Ring<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("sq_tail", &self.sq_tail)
            .field("cq_head", &self.cq_head)
            .field("sqpoll", &self.sqpoll)
            .finish_non_exhaustive()
    }
}

macro_rules! header_offset {
    ($field:ident) => {
        core::mem::offset_of!(RingHeader, $field)
    };
}

impl Card {
    /// Sets up this open's submission and completion rings and maps them.
    /// Fails `Unsupported` on a card without rings; EBUSY when this open
    /// has them already or the V4L2 node streams.
    pub fn setup_ring(&self, options: RingOptions) -> Result<Ring<'_>> {
        if self.info().capabilities & caps::RING == 0 {
            return Err(Error::Unsupported("submission and completion rings"));
        }
        let idle = u32::try_from(options.sq_idle.as_micros()).unwrap_or(u32::MAX);
        let mut arg = RingSetup {
            flags: if options.sqpoll {
                ring_setup::SQPOLL
            } else {
                0
            }
            .into(),
            sq_idle_us: idle.into(),
            area_size: 0.into(),
            reserved: 0.into(),
        };
        // SAFETY: `arg` is a live repr(C) struct of the size the ioctl
        // number encodes.
        unsafe { sys::xxcap_ring_setup(self.as_raw_fd(), &mut arg) }.map_err(|source| {
            Error::Ioctl {
                call: "RING_SETUP",
                source,
            }
        })?;
        let len = arg.area_size.get() as usize;
        if len < (RING_ARENA_OFFSET + RING_ARENA_SIZE) as usize {
            return Err(Error::Protocol);
        }
        // SAFETY: a shared mapping of the driver's ring area. The card
        // writes parts of it concurrently; this module reads and writes
        // those parts only through atomics and volatile copies, and the
        // slices it hands out are copies.
        let map = unsafe {
            MmapOptions::new()
                .offset(MMAP_OFFSET_RING)
                .len(len)
                .map_mut(&self.file)
        }
        .map_err(|source| Error::Map {
            what: "the ring area",
            source,
        })?;
        let ring = Ring {
            card: self,
            map,
            sq_tail: 0,
            sq_pending: 0,
            cq_head: 0,
            arena: Arena::default(),
            sqpoll: options.sqpoll,
        };
        let hdr = RingHeader::read_from_prefix(&ring.map[..])
            .map(|(h, _)| h)
            .map_err(|_| Error::Protocol)?;
        let geometry_ok = hdr.magic.get() == RING_MAGIC
            && hdr.version.get() == RING_VERSION
            && hdr.sq_entries.get() == RING_SQ_ENTRIES
            && hdr.cq_entries.get() == RING_CQ_ENTRIES
            && hdr.sq_offset.get() == RING_SQ_OFFSET
            && hdr.cq_offset.get() == RING_CQ_OFFSET
            && hdr.arena_offset.get() == RING_ARENA_OFFSET
            && hdr.arena_size.get() == RING_ARENA_SIZE;
        if !geometry_ok {
            return Err(Error::Protocol);
        }
        Ok(ring)
    }
}

impl Ring<'_> {
    fn atomic32(&self, offset: usize) -> &AtomicU32 {
        // SAFETY: `offset` is a 4-aligned field offset inside the header,
        // which lies inside the page-aligned mapping that lives as long as
        // `self`; AtomicU32 has the layout of u32, and the card touches
        // these words only with aligned 32-bit accesses.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU32) }
    }

    fn atomic64(&self, offset: usize) -> &AtomicU64 {
        // SAFETY: as `atomic32`, for an 8-aligned 64-bit field.
        unsafe { &*(self.map.as_ptr().add(offset) as *const AtomicU64) }
    }

    /// Copies `len` bytes at `offset` of the area (which the card may be
    /// writing) into a vector.
    fn read_bytes(&self, offset: usize, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len);
        // SAFETY: callers pass ranges inside the mapping (arena and CQ
        // bounds are the ABI's constants, checked against the mapping's
        // length at setup). Volatile copies, as the card shares the
        // memory; by aligned 64-bit words where the range allows (CQ
        // entries and task files are whole 16-byte multiples at 16-byte
        // offsets), else by bytes.
        unsafe {
            let src = self.map.as_ptr().add(offset);
            let mut i = 0;
            if src.align_offset(8) == 0 {
                while i + 8 <= len {
                    let word = std::ptr::read_volatile(src.add(i).cast::<u64>());
                    out.extend_from_slice(&word.to_ne_bytes());
                    i += 8;
                }
            }
            while i < len {
                out.push(std::ptr::read_volatile(src.add(i)));
                i += 1;
            }
        }
        out
    }

    fn write_bytes(&mut self, offset: usize, bytes: &[u8]) {
        self.map[offset..offset + bytes.len()].copy_from_slice(bytes);
    }

    /// Routes the device events of `causes` into the CQ instead of the
    /// event queue (INT_MASK still decides which causes the card raises).
    pub fn set_event_mask(&self, causes: Causes) {
        self.atomic32(header_offset!(event_mask))
            .store(causes.bits(), Ordering::Release);
    }

    /// The card's ring statistics.
    pub fn stats(&self) -> RingStats {
        let q = |o| self.atomic64(o).load(Ordering::Acquire);
        RingStats {
            sqes: q(header_offset!(sqes)),
            kicks: q(header_offset!(kicks)),
            wakeups: q(header_offset!(wakeups)),
            poll_cpu_ns: q(header_offset!(poll_cpu_ns)),
            poll_awake_ns: q(header_offset!(poll_awake_ns)),
            poll_sleeps: q(header_offset!(poll_sleeps)),
            cq_lost: self
                .atomic32(header_offset!(cq_lost))
                .load(Ordering::Acquire),
        }
    }

    /// Task files submitted whose completion has not been taken yet.
    pub fn in_flight(&self) -> usize {
        self.arena.in_flight.len()
    }

    /// Writes `task_file` into the arena and an SQ entry for it, without
    /// publishing it; [`Ring::publish`] hands every pushed entry to the
    /// card at once. Returns the entry's SQ index. Fails `RingFull` when
    /// the SQ or the arena has no room: take completions first.
    pub fn push(&mut self, task_file: &TaskFile, user_data: u64) -> Result<u32> {
        if task_file.is_empty() || task_file.len() > MAX_COMMANDS as usize {
            return Err(Error::TooManyCommands(task_file.len()));
        }
        let size = (TF_HEADER_SIZE + task_file.len() * CMD_SIZE) as u32;
        let head = self
            .atomic32(header_offset!(sq_head))
            .load(Ordering::Acquire);
        if self.sq_pending.wrapping_sub(head) >= RING_SQ_ENTRIES {
            return Err(Error::RingFull);
        }
        let offset = self.arena.place(size).ok_or(Error::RingFull)?;
        let bytes = task_file.to_bytes();
        self.write_bytes((RING_ARENA_OFFSET + offset) as usize, &bytes);
        let index = self.sq_pending;
        let entry = SqEntry {
            offset: offset.into(),
            size: size.into(),
            user_data: user_data.into(),
        };
        let slot = RING_SQ_OFFSET as usize + (index % RING_SQ_ENTRIES) as usize * SQ_ENTRY_SIZE;
        self.write_bytes(slot, entry.as_bytes());
        self.arena.in_flight.push_back(InFlight {
            sq_index: index,
            offset,
            size,
            user_data,
        });
        self.arena.next = offset + size;
        self.sq_pending = index.wrapping_add(1);
        Ok(index)
    }

    /// Pushes an SQ entry naming any `offset` and `size` of the arena,
    /// whatever is there (for tests of the card's checks). It completes as
    /// any other, in SQ order.
    pub fn push_entry_raw(&mut self, offset: u32, size: u32, user_data: u64) -> Result<u32> {
        let head = self
            .atomic32(header_offset!(sq_head))
            .load(Ordering::Acquire);
        if self.sq_pending.wrapping_sub(head) >= RING_SQ_ENTRIES {
            return Err(Error::RingFull);
        }
        let index = self.sq_pending;
        let entry = SqEntry {
            offset: offset.into(),
            size: size.into(),
            user_data: user_data.into(),
        };
        let slot = RING_SQ_OFFSET as usize + (index % RING_SQ_ENTRIES) as usize * SQ_ENTRY_SIZE;
        self.write_bytes(slot, entry.as_bytes());
        // Takes no arena space (size 0 where the next task file goes), and
        // its completion carries no outputs.
        self.arena.in_flight.push_back(InFlight {
            sq_index: index,
            offset: self.arena.next,
            size: 0,
            user_data,
        });
        self.sq_pending = index.wrapping_add(1);
        Ok(index)
    }

    /// Publishes the pushed entries (one store of the SQ tail) and, when
    /// the card's poller sleeps or there is none, tells the driver
    /// (RING_ENTER). Returns whether a system call was made.
    pub fn publish(&mut self) -> Result<bool> {
        if self.sq_tail == self.sq_pending {
            return Ok(false);
        }
        self.sq_tail = self.sq_pending;
        self.atomic32(header_offset!(sq_tail))
            .store(self.sq_tail, Ordering::Release);
        // Pairs with the poller's barrier between setting NEED_WAKEUP and
        // reading the tail once more (SPEC §15).
        fence(Ordering::SeqCst);
        if self
            .atomic32(header_offset!(sq_flags))
            .load(Ordering::Acquire)
            & sq_flags::NEED_WAKEUP
            != 0
        {
            self.enter()?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Pushes and publishes one task file; returns its SQ index.
    pub fn submit(&mut self, task_file: &TaskFile, user_data: u64) -> Result<u32> {
        let index = self.push(task_file, user_data)?;
        self.publish()?;
        Ok(index)
    }

    /// RING_ENTER: the card looks at the SQ tail (wakes its poller). The
    /// driver refuses with EAGAIN while the card holds its limit of kicks
    /// not yet given back (their completions are freed by a kernel thread,
    /// which a thread spinning on the CQ keeps off a single CPU): the call
    /// then yields and tries again, for up to a second.
    pub fn enter(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            // SAFETY: RING_ENTER takes no argument.
            match unsafe { sys::xxcap_ring_enter(self.card.as_raw_fd()) } {
                Ok(_) => return Ok(()),
                Err(nix::errno::Errno::EAGAIN) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_micros(50));
                }
                Err(source) => {
                    return Err(Error::Ioctl {
                        call: "RING_ENTER",
                        source,
                    })
                }
            }
        }
    }

    /// The next CQ entry if there is one, without waiting.
    pub fn peek(&mut self) -> Result<Option<RingEntry>> {
        let tail = self
            .atomic32(header_offset!(cq_tail))
            .load(Ordering::Acquire);
        if tail == self.cq_head {
            return Ok(None);
        }
        if tail.wrapping_sub(self.cq_head) > RING_CQ_ENTRIES {
            return Err(Error::Protocol);
        }
        let slot =
            RING_CQ_OFFSET as usize + (self.cq_head % RING_CQ_ENTRIES) as usize * event::SIZE;
        let bytes = self.read_bytes(slot, event::SIZE);
        let raw = RawEvent::read_from_bytes(&bytes).map_err(|_| Error::Protocol)?;
        self.cq_head = self.cq_head.wrapping_add(1);
        self.atomic32(header_offset!(cq_head))
            .store(self.cq_head, Ordering::Release);
        let flags = raw.flags.get();
        if flags & event::FLAG_RING == 0 {
            return Event::from_raw(&raw).map(|e| Some(RingEntry::Event(e)));
        }
        // Completions come in SQ order: it is the oldest in flight.
        let sq_index = raw.request_id.get();
        let done = self.arena.in_flight.pop_front().ok_or(Error::Protocol)?;
        if u64::from(done.sq_index) != sq_index {
            return Err(Error::Protocol);
        }
        // The card's verdict is the completion's; the outputs are in the
        // arena (absent when the card refused the entry as a whole).
        let error = TfError::from_raw(raw.status.get()).ok_or(Error::Protocol)?;
        let commands = if done.size > 0 {
            let bytes = self.read_bytes(
                (RING_ARENA_OFFSET + done.offset) as usize,
                done.size as usize,
            );
            TaskFileResult::parse(&bytes)
                .map(|r| r.commands)
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let result = TaskFileResult {
            error,
            index: raw.count.get(),
            commands,
        };
        Ok(Some(RingEntry::Completion(RingCompletion {
            sq_index: done.sq_index,
            user_data: done.user_data,
            result,
            device_time_ns: raw.device_time_ns.get(),
        })))
    }

    /// Waits up to `timeout` for the next CQ entry: spins on the CQ tail
    /// for `spin`, then arms the CQ and sleeps in `poll()` until the card's
    /// RING_WAKE. Entries still waiting in the SQ are handed to the card
    /// (RING_ENTER) before sleeping when its poller sleeps.
    pub fn wait(&mut self, spin: Duration, timeout: Duration) -> Result<RingEntry> {
        let start = Instant::now();
        let deadline = start + timeout;
        let spin_until = start + spin.min(timeout);
        let mut spins = 0u32;
        loop {
            if let Some(entry) = self.peek()? {
                return Ok(entry);
            }
            // The clock is read only now and then: under TCG both the
            // clock and the pause hint cost more than a look at the tail.
            spins = spins.wrapping_add(1);
            if !spins.is_multiple_of(128) {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if now < spin_until {
                continue;
            }
            if now >= deadline {
                return Err(Error::timeout("a completion-ring entry", timeout));
            }
            self.sleep(deadline)?;
        }
    }

    /// Arms the CQ and sleeps in `poll()` unless an entry arrived.
    fn sleep(&mut self, deadline: Instant) -> Result<()> {
        let flags = self.atomic32(header_offset!(cq_flags));
        flags.fetch_or(cq_flags::ARMED, Ordering::SeqCst);
        // Pairs with the card's barrier between posting and reading
        // cq_flags (SPEC §15).
        fence(Ordering::SeqCst);
        let tail = self
            .atomic32(header_offset!(cq_tail))
            .load(Ordering::Acquire);
        if tail != self.cq_head {
            flags.fetch_and(!cq_flags::ARMED, Ordering::SeqCst);
            return Ok(());
        }
        let head = self
            .atomic32(header_offset!(sq_head))
            .load(Ordering::Acquire);
        let need_wakeup = self
            .atomic32(header_offset!(sq_flags))
            .load(Ordering::Acquire)
            & sq_flags::NEED_WAKEUP
            != 0;
        if head != self.sq_tail && need_wakeup {
            self.enter()?;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let ms = u16::try_from(left.as_micros().div_ceil(1000)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(self.card.file.as_fd(), PollFlags::POLLIN)];
        match nix::poll::poll(&mut fds, PollTimeout::from(ms)) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => Ok(()),
            Err(source) => Err(Error::Ioctl {
                call: "poll",
                source,
            }),
        }
    }

    /// Waits for the completion of the entry at `sq_index`, keeping the
    /// events that arrive before it in `events`.
    pub fn wait_completion(
        &mut self,
        sq_index: u32,
        spin: Duration,
        timeout: Duration,
        events: &mut Vec<Event>,
    ) -> Result<RingCompletion> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(Error::timeout(
                    format!("completion of ring entry {sq_index}"),
                    timeout,
                ));
            }
            match self.wait(spin, left)? {
                RingEntry::Event(e) => events.push(e),
                RingEntry::Completion(c) if c.sq_index == sq_index => return Ok(c),
                RingEntry::Completion(_) => {}
            }
        }
    }

    /// Submits `task_file` and waits for its completion (spinning for
    /// `spin` first): a synchronous task file by the ring.
    pub fn run(&mut self, task_file: &TaskFile, spin: Duration) -> Result<TaskFileResult> {
        let index = self.submit(task_file, 0)?;
        let mut events = Vec::new();
        let done = self.wait_completion(index, spin, Duration::from_secs(5), &mut events)?;
        Ok(done.result)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flight(offset: u32, size: u32) -> InFlight {
        InFlight {
            sq_index: 0,
            offset,
            size,
            user_data: 0,
        }
    }

    #[test]
    fn arena_places_in_fifo_order_and_wraps() {
        let mut a = Arena::default();
        assert_eq!(a.place(48), Some(0));
        a.in_flight.push_back(flight(0, 48));
        a.next = 48;
        assert_eq!(a.place(100), Some(48));
        // The end is too short: wraps to 0 only if that leaves the oldest.
        a.in_flight.clear();
        a.in_flight.push_back(flight(1000, 48));
        a.next = RING_ARENA_SIZE - 16;
        assert_eq!(a.place(48), Some(0));
        assert_eq!(a.place(1000), Some(0));
        assert_eq!(a.place(1001), None);
        // Wrapped: free space is between next and the oldest.
        a.next = 100;
        assert_eq!(a.place(900), Some(100));
        assert_eq!(a.place(901), None);
        // Full: next caught up with the oldest.
        a.next = 1000;
        assert_eq!(a.place(1), None);
        assert_eq!(a.place(RING_ARENA_SIZE + 1), None);
    }
}
