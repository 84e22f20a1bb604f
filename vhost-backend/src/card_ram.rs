//! Card RAM and the status block: one memfd, mapped here and (on ATTACH)
//! into the guest as virtio shared-memory region 0.
//!
//! Layout of the memfd (and of the region): `[0, card_ram_size)` card RAM,
//! then one page holding the [`StatusBlock`], then (a card with `CAP_RING`)
//! the ring area of SPEC §15 ([`RingArea`], `RING_AREA_SIZE` bytes). The daemon keeps its own shared
//! mapping of the whole file; the guest maps the same pages through QEMU, so
//! frames the capture thread renders are visible to the guest without a copy.
//!
//! Who touches the bytes inside this process:
//! - DMA commands (the vring worker) copy between guest memory and card RAM
//!   with bounds-checked volatile copies ([`GuestDma`]);
//! - the capture thread renders frames into ring slots ([`CardRam::with_slot`]);
//! - the status block is written only through [`StatusWriter`], by one writer
//!   at a time (the capture thread while it runs, the backend otherwise);
//! - the ring area only through [`RingArea`]: atomic loads and stores of the
//!   header's words, volatile copies of entries and task files (the guest
//!   writes the same page at any time).
//!
//! DMA copies and slot rendering exclude each other through the "bus" lock
//! on the byte ranges they touch, so no two threads of this process ever
//! access the same card-RAM bytes at once (disjoint ones, such as two ring
//! slots, go ahead together). The guest may access card RAM at any time
//! through its own mapping; that can only garble what the guest itself
//! reads.

use std::fs::File;
use std::io;
use std::mem::offset_of;
use std::os::fd::AsFd;
use std::sync::atomic::{fence, AtomicU32, AtomicU64, Ordering};

use nix::sys::memfd::{memfd_create, MFdFlags};
use vm_memory::{
    FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, MmapRegion, VolatileMemory,
};
use xxcapture_abi::{slot_state, status, SgEntry, SlotInfo, StatusBlock, STATUS_BLOCK_SIZE};
use xxcapture_abi::{MAX_RING_SLOTS, RING_AREA_SIZE, STATUS_MAGIC};
use xxcapture_model::{CaptureSession, DmaDirection, DmaFault, DmaPort};

use crate::range_lock::{RangeGuard, RangeLock};

/// Layout version written into the status block's `version` field.
pub const STATUS_BLOCK_VERSION: u32 = 1;

/// The memfd behind shared-memory region 0, mapped into the daemon.
pub struct CardRam {
    file: File,
    map: MmapRegion<()>,
    card_ram_size: u64,
    /// The ring area follows the status page.
    ring: bool,
    /// Excludes in-process accesses to the same card-RAM bytes (DMA vs.
    /// capture), by range: a DMA of one ring slot runs while the capture
    /// thread renders another. Fair per overlap, so a free-running capture
    /// thread that re-takes a slot at once cannot starve a DMA of it.
    bus: RangeLock,
}

impl std::fmt::Debug for CardRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CardRam")
            .field("card_ram_size", &self.card_ram_size)
            .finish_non_exhaustive()
    }
}

impl CardRam {
    /// Creates the memfd (`card_ram_size` + one status page; `card_ram_size`
    /// must be a whole number of pages) and maps it. The status block is
    /// initialised; card RAM starts zeroed.
    pub fn new(card_ram_size: u64) -> io::Result<CardRam> {
        Self::with_ring(card_ram_size, false)
    }

    /// As [`Self::new`]; with `ring` (a card with `CAP_RING`) the memfd
    /// also holds the ring area (`RING_AREA_SIZE` bytes, zero) after the
    /// status page.
    pub fn with_ring(card_ram_size: u64, ring: bool) -> io::Result<CardRam> {
        if card_ram_size == 0 || !card_ram_size.is_multiple_of(STATUS_BLOCK_SIZE as u64) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("card RAM size {card_ram_size} is not a whole number of pages"),
            ));
        }
        let ring_size = if ring { u64::from(RING_AREA_SIZE) } else { 0 };
        let total = card_ram_size + STATUS_BLOCK_SIZE as u64 + ring_size;
        let len = usize::try_from(total).map_err(io::Error::other)?;
        let fd =
            memfd_create(c"xxcapd-card-ram", MFdFlags::MFD_CLOEXEC).map_err(io::Error::from)?;
        let file = File::from(fd);
        file.set_len(total)?;
        let map = MmapRegion::from_file(FileOffset::new(file.try_clone()?, 0), len)
            .map_err(io::Error::other)?;
        let ram = CardRam {
            file,
            map,
            card_ram_size,
            ring,
            bus: RangeLock::default(),
        };
        ram.status().init();
        Ok(ram)
    }

    /// The memfd, for SHMEM_MAP.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn card_ram_size(&self) -> u64 {
        self.card_ram_size
    }

    /// Size of the mapped contents: card RAM plus the status page (plus
    /// the ring area, if the card has one).
    pub fn region_size(&self) -> u64 {
        self.ring_offset()
            + if self.ring {
                u64::from(RING_AREA_SIZE)
            } else {
                0
            }
    }

    /// Byte offset of the ring area in the region (after the status page).
    pub fn ring_offset(&self) -> u64 {
        self.card_ram_size + STATUS_BLOCK_SIZE as u64
    }

    /// The ring area, if the card has one.
    pub fn ring_area(&self) -> Option<RingArea<'_>> {
        self.ring.then_some(RingArea { ram: self })
    }

    /// Size announced for shared-memory region 0: QEMU places the region in
    /// a PCI BAR, whose size must be a power of two (it aborts otherwise).
    /// The part past `region_size` is never mapped and reads as zero.
    pub fn bar_size(&self) -> u64 {
        self.region_size().next_power_of_two()
    }

    /// Holds card-RAM bytes `[start, end)` against other in-process access.
    fn bus(&self, start: u64, end: u64) -> RangeGuard<'_> {
        self.bus.lock(start, end)
    }

    /// Runs `f` on `len` bytes of card RAM from `offset` with the bus held,
    /// or returns `None` when the range is not inside card RAM.
    pub fn with_slot<R>(
        &self,
        offset: u64,
        len: usize,
        f: impl FnOnce(&mut [u8]) -> R,
    ) -> Option<R> {
        let end = offset.checked_add(u64::try_from(len).ok()?)?;
        if end > self.card_ram_size {
            return None;
        }
        let start = usize::try_from(offset).ok()?;
        let _bus = self.bus(offset, end);
        // SAFETY: [start, start + len) lies inside the mapping (checked
        // against card_ram_size, which is below the mapping's size), which
        // lives as long as `self`. The bus lock holds these bytes for the
        // slice's whole life, and every other access to card RAM from this
        // process (DMA copies, `read`) takes the range it touches too, so no
        // other Rust reference or access aliases these bytes while the
        // slice exists. The guest's own mapping
        // of the same pages is outside this process's control; concurrent
        // guest writes can only change the frame the guest itself reads.
        let slot = unsafe { std::slice::from_raw_parts_mut(self.map.as_ptr().add(start), len) };
        Some(f(slot))
    }

    /// Zeroes card RAM (not the status page) by punching a hole in the
    /// memfd: the pages are freed and read as zero in every mapping.
    pub fn clear(&self) -> io::Result<()> {
        let len = i64::try_from(self.card_ram_size).map_err(io::Error::other)?;
        let _bus = self.bus(0, self.card_ram_size);
        nix::fcntl::fallocate(
            &self.file,
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
                | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
            0,
            len,
        )
        .map_err(io::Error::from)
    }

    /// Copies `len` bytes of card RAM from `offset` (tests and diagnostics).
    pub fn read(&self, offset: u64, len: usize) -> Option<Vec<u8>> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(len)?;
        if u64::try_from(end).ok()? > self.card_ram_size {
            return None;
        }
        let _bus = self.bus(offset, offset + len as u64);
        let mut out = vec![0u8; len];
        self.map.get_slice(start, len).ok()?.copy_to(&mut out[..]);
        Some(out)
    }

    /// Writes `bytes` into card RAM at `offset` (tests).
    pub fn write(&self, offset: u64, bytes: &[u8]) -> Option<()> {
        let start = usize::try_from(offset).ok()?;
        let end = start.checked_add(bytes.len())?;
        if u64::try_from(end).ok()? > self.card_ram_size {
            return None;
        }
        let _bus = self.bus(offset, offset + bytes.len() as u64);
        self.map
            .get_slice(start, bytes.len())
            .ok()?
            .copy_from(bytes);
        Some(())
    }

    /// Copies between guest memory and card RAM (see [`GuestDma`]).
    fn transfer(
        &self,
        mem: &GuestMemoryMmap,
        direction: DmaDirection,
        card_offset: u64,
        sg: &[SgEntry],
    ) -> Result<(), DmaFault> {
        // Check every entry before moving a byte.
        let mut total = 0u64;
        for (index, e) in sg.iter().enumerate() {
            let len = usize::try_from(e.len.get()).map_err(|_| DmaFault::Unavailable)?;
            let addr = GuestAddress(e.addr.get());
            if len == 0 || !mem.check_range(addr, len) {
                return Err(DmaFault::OutsideGuestMemory { index });
            }
            total += u64::from(e.len.get());
        }
        let end = card_offset
            .checked_add(total)
            .ok_or(DmaFault::Unavailable)?;
        if end > self.card_ram_size {
            return Err(DmaFault::Unavailable);
        }
        let _bus = self.bus(card_offset, end);
        // STATUS.DMA_BUSY while the data moves, however the copy ends.
        let _busy = DmaBusy::new(self.status());
        let mut at = usize::try_from(card_offset).map_err(|_| DmaFault::Unavailable)?;
        for (index, e) in sg.iter().enumerate() {
            let fault = DmaFault::OutsideGuestMemory { index };
            for piece in mem.get_slices(GuestAddress(e.addr.get()), e.len.get() as usize) {
                let guest = piece.map_err(|_| fault)?;
                let card = self
                    .map
                    .get_slice(at, guest.len())
                    .map_err(|_| DmaFault::Unavailable)?;
                match direction {
                    DmaDirection::ToCard => guest.copy_to_volatile_slice(card),
                    DmaDirection::FromCard => card.copy_to_volatile_slice(guest),
                }
                at += guest.len();
            }
        }
        Ok(())
    }

    /// The status-block writer. Callers keep to one writer at a time.
    pub fn status(&self) -> StatusWriter<'_> {
        StatusWriter { ram: self }
    }

    /// Reads the status block as a guest would: retries until a consistent
    /// copy is seen (tests and diagnostics). `None` after 1000 tries.
    pub fn read_status(&self) -> Option<StatusBlock> {
        use zerocopy::FromBytes;
        let base = usize::try_from(self.card_ram_size).ok()?;
        let seq_at = base + offset_of!(StatusBlock, seq);
        for _ in 0..1000 {
            let before = self.atomic32(seq_at).load(Ordering::Acquire);
            if before % 2 == 1 {
                std::thread::yield_now();
                continue;
            }
            let mut raw = Vec::with_capacity(size_of::<StatusBlock>());
            for at in (base..base + size_of::<StatusBlock>()).step_by(4) {
                let word = self.atomic32(at).load(Ordering::Relaxed);
                raw.extend_from_slice(&word.to_le_bytes());
            }
            fence(Ordering::Acquire);
            let after = self.atomic32(seq_at).load(Ordering::Relaxed);
            if before == after {
                return StatusBlock::read_from_bytes(&raw).ok();
            }
        }
        None
    }

    fn atomic32(&self, at: usize) -> &AtomicU32 {
        assert!(at.is_multiple_of(4) && at + 4 <= self.map.size());
        // SAFETY: in bounds and 4-byte aligned (asserted; the mapping is
        // page-aligned); the mapping outlives the returned reference. All
        // in-process accesses to the status block go through atomics.
        unsafe { AtomicU32::from_ptr(self.map.as_ptr().add(at).cast()) }
    }

    fn atomic64(&self, at: usize) -> &AtomicU64 {
        assert!(at.is_multiple_of(8) && at + 8 <= self.map.size());
        // SAFETY: as in `atomic32`, with 8-byte alignment.
        unsafe { AtomicU64::from_ptr(self.map.as_ptr().add(at).cast()) }
    }
}

/// The ring area of region 0 (SPEC §15), as the card accesses it: the
/// application writes the same bytes concurrently, so header words are
/// accessed with atomics, whole entries and task files with volatile
/// copies, and every offset is checked against the area (an access outside
/// it does nothing and reads zeroes: the callers check too).
#[derive(Clone, Copy)]
pub struct RingArea<'a> {
    ram: &'a CardRam,
}

impl RingArea<'_> {
    fn base(&self) -> usize {
        // The mapping exists, so its offsets fit in usize.
        self.ram.ring_offset() as usize
    }

    fn inside(at: usize, len: usize) -> bool {
        at.checked_add(len)
            .is_some_and(|end| end <= RING_AREA_SIZE as usize)
    }

    /// The 32-bit header word at byte `at` of the area (4-byte aligned,
    /// inside the area), or `None`.
    pub fn word(&self, at: usize) -> Option<&AtomicU32> {
        (at.is_multiple_of(4) && Self::inside(at, 4)).then(|| self.ram.atomic32(self.base() + at))
    }

    /// The 64-bit word at byte `at` (8-byte aligned, inside the area).
    pub fn word64(&self, at: usize) -> Option<&AtomicU64> {
        (at.is_multiple_of(8) && Self::inside(at, 8)).then(|| self.ram.atomic64(self.base() + at))
    }

    /// Loads the 32-bit word at `at` (0 outside the area).
    pub fn load(&self, at: usize, order: Ordering) -> u32 {
        self.word(at).map_or(0, |w| w.load(order))
    }

    /// Stores the 32-bit word at `at` (nothing outside the area).
    pub fn store(&self, at: usize, value: u32, order: Ordering) {
        if let Some(w) = self.word(at) {
            w.store(value, order);
        }
    }

    /// Stores the 64-bit word at `at` (nothing outside the area).
    pub fn store64(&self, at: usize, value: u64, order: Ordering) {
        if let Some(w) = self.word64(at) {
            w.store(value, order);
        }
    }

    /// Copies `out.len()` bytes from `at` (a volatile copy: one read of
    /// each byte). `None`, and nothing read, outside the area.
    pub fn read(&self, at: usize, out: &mut [u8]) -> Option<()> {
        if !Self::inside(at, out.len()) {
            return None;
        }
        self.ram
            .map
            .get_slice(self.base() + at, out.len())
            .ok()?
            .copy_to(out);
        Some(())
    }

    /// Writes `bytes` at `at` (volatile). `None`, and nothing written,
    /// outside the area.
    pub fn write(&self, at: usize, bytes: &[u8]) -> Option<()> {
        if !Self::inside(at, bytes.len()) {
            return None;
        }
        self.ram
            .map
            .get_slice(self.base() + at, bytes.len())
            .ok()?
            .copy_from(bytes);
        Some(())
    }

    /// Zeroes the whole area.
    pub fn zero(&self) {
        if let Ok(slice) = self.ram.map.get_slice(self.base(), RING_AREA_SIZE as usize) {
            slice.copy_from(&vec![0u8; RING_AREA_SIZE as usize][..]);
        }
    }
}

/// Sets STATUS.DMA_BUSY in the status block while it lives.
struct DmaBusy<'a>(StatusWriter<'a>);

impl<'a> DmaBusy<'a> {
    fn new(writer: StatusWriter<'a>) -> Self {
        writer.set_dma_busy(true);
        DmaBusy(writer)
    }
}

impl Drop for DmaBusy<'_> {
    fn drop(&mut self) {
        self.0.set_dma_busy(false);
    }
}

/// [`DmaPort`] over card RAM and the guest memory of one request.
pub struct GuestDma<'a> {
    /// The card side of every transfer.
    pub ram: &'a CardRam,
    /// The guest side: the memory the scatter-gather entries point into.
    pub mem: &'a GuestMemoryMmap,
}

impl DmaPort for GuestDma<'_> {
    fn transfer(
        &mut self,
        direction: DmaDirection,
        card_offset: u64,
        sg: &[SgEntry],
    ) -> Result<(), DmaFault> {
        self.ram.transfer(self.mem, direction, card_offset, sg)
    }
}

/// Writes the status block under its sequence lock: `seq` odd, fence, the
/// fields, fence, `seq` even. Fields are written with relaxed atomic
/// stores, so the guest (which reads the same page concurrently) sees each
/// field whole and the fences order them against `seq`.
pub struct StatusWriter<'a> {
    ram: &'a CardRam,
}

/// What one status-block update changes.
#[derive(Clone, Copy, Debug, Default)]
pub struct SlotUpdate {
    pub slot: usize,
    pub info: SlotInfo,
    pub frame_counter: u64,
    pub dropped: u64,
    pub errors: u64,
    pub device_time_ns: u64,
}

macro_rules! field {
    ($w:expr, $field:ident, u32, $v:expr) => {
        $w.ram
            .atomic32($w.base() + offset_of!(StatusBlock, $field))
            .store($v, Ordering::Relaxed)
    };
    ($w:expr, $field:ident, u64, $v:expr) => {
        $w.ram
            .atomic64($w.base() + offset_of!(StatusBlock, $field))
            .store($v, Ordering::Relaxed)
    };
}

impl StatusWriter<'_> {
    fn base(&self) -> usize {
        // card_ram_size fits in usize: the mapping exists.
        self.ram.card_ram_size as usize
    }

    fn seq(&self) -> &AtomicU32 {
        self.ram
            .atomic32(self.base() + offset_of!(StatusBlock, seq))
    }

    /// The `status` word. The DMA bits change in it with one atomic
    /// read-modify-write, outside the sequence lock (a reader always sees
    /// the word whole), so the DMA engine and the capture thread never
    /// overwrite each other's bits.
    fn status_word(&self) -> &AtomicU32 {
        self.ram
            .atomic32(self.base() + offset_of!(StatusBlock, status))
    }

    fn set_status_bits(&self, bits: u32, on: bool) {
        if on {
            self.status_word().fetch_or(bits, Ordering::Release);
        } else {
            self.status_word().fetch_and(!bits, Ordering::Release);
        }
    }

    /// STATUS.DMA_BUSY: a DMA command is moving data.
    pub fn set_dma_busy(&self, on: bool) {
        self.set_status_bits(status::DMA_BUSY, on);
    }

    /// STATUS.DMA_ERROR, as the card latched it.
    pub fn set_dma_error(&self, on: bool) {
        self.set_status_bits(status::DMA_ERROR, on);
    }

    /// Runs `f` inside one seqlock write section.
    fn update(&self, f: impl FnOnce(&Self)) {
        let seq = self.seq();
        let start = seq.load(Ordering::Relaxed);
        // An odd value would mean a writer died mid-update: make it even
        // first so the reader protocol stays intact.
        let start = start.wrapping_add(start & 1);
        seq.store(start.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        f(self);
        fence(Ordering::Release);
        seq.store(start.wrapping_add(2), Ordering::Relaxed);
    }

    fn write_slot(&self, slot: usize, info: &SlotInfo) {
        let at = self.base() + offset_of!(StatusBlock, slots) + slot * size_of::<SlotInfo>();
        let r = self.ram;
        r.atomic64(at + offset_of!(SlotInfo, frame_number))
            .store(info.frame_number.get(), Ordering::Relaxed);
        r.atomic64(at + offset_of!(SlotInfo, timestamp_ns))
            .store(info.timestamp_ns.get(), Ordering::Relaxed);
        r.atomic32(at + offset_of!(SlotInfo, state))
            .store(info.state.get(), Ordering::Relaxed);
        r.atomic32(at + offset_of!(SlotInfo, size))
            .store(info.size.get(), Ordering::Relaxed);
        r.atomic64(at + offset_of!(SlotInfo, reserved))
            .store(0, Ordering::Relaxed);
    }

    /// Power-on contents: magic, version, READY, everything else zero. The
    /// sequence number keeps counting (readers never see it go back).
    pub fn init(&self) {
        self.update(|w| {
            let base = w.base();
            let seq_at = base + offset_of!(StatusBlock, seq);
            let mut at = base;
            while at < base + STATUS_BLOCK_SIZE {
                if at != seq_at {
                    w.ram.atomic32(at).store(0, Ordering::Relaxed);
                }
                at += 4;
            }
            field!(w, magic, u32, STATUS_MAGIC);
            field!(w, version, u32, STATUS_BLOCK_VERSION);
            field!(w, status, u32, status::READY);
        });
    }

    /// A capture session starts: geometry, zero counters, all slots EMPTY.
    pub fn begin(&self, session: &CaptureSession, device_time_ns: u64) {
        self.update(|w| {
            let g = session.geometry;
            w.set_status_bits(status::READY | status::CAPTURING, true);
            field!(w, frame_counter, u64, 0);
            field!(w, dropped, u64, 0);
            field!(w, errors, u64, 0);
            field!(w, device_time_ns, u64, device_time_ns);
            field!(w, ring_offset, u64, session.ring.ring_offset);
            field!(w, ring_slots, u32, session.ring.ring_slots);
            field!(w, slot_size, u32, session.ring.slot_size);
            field!(w, format, u32, g.format.code());
            field!(w, width, u32, g.width);
            field!(w, height, u32, g.height);
            field!(w, fps, u32, session.fps);
            field!(w, frame_size, u32, session.ring.frame_size);
            for slot in 0..MAX_RING_SLOTS {
                w.write_slot(slot, &SlotInfo::default());
            }
        });
    }

    /// One slot changes state, with the counters.
    pub fn slot(&self, u: &SlotUpdate) {
        self.update(|w| {
            if u.slot < MAX_RING_SLOTS {
                w.write_slot(u.slot, &u.info);
            }
            field!(w, frame_counter, u64, u.frame_counter);
            field!(w, dropped, u64, u.dropped);
            field!(w, errors, u64, u.errors);
            field!(w, device_time_ns, u64, u.device_time_ns);
        });
    }

    /// Capture stopped: CAPTURING clears, the rest stays for late readers.
    pub fn end(&self, device_time_ns: u64) {
        self.update(|w| {
            w.set_status_bits(status::CAPTURING, false);
            field!(w, device_time_ns, u64, device_time_ns);
        });
    }
}

/// A FILLING slot entry.
pub fn filling(frame_number: u64) -> SlotInfo {
    SlotInfo {
        frame_number: frame_number.into(),
        state: slot_state::FILLING.into(),
        ..SlotInfo::default()
    }
}

/// A FULL slot entry.
pub fn full(frame_number: u64, timestamp_ns: u64, size: u32) -> SlotInfo {
    SlotInfo {
        frame_number: frame_number.into(),
        timestamp_ns: timestamp_ns.into(),
        state: slot_state::FULL.into(),
        size: size.into(),
        reserved: 0.into(),
    }
}

impl AsFd for CardRam {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.file.as_fd()
    }
}

#[cfg(test)]
mod tests;
