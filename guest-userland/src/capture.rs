//! Card RAM, the status block, DMA and the capture ring, from user space.
//!
//! The Double X card's device interface: `write_blocks`/`read_blocks` (DMA through
//! task files), `map_card_ram` (the card's RAM in this process), and a frame
//! iterator over the capture ring that follows the status block without a
//! system call and fetches each frame by DMA or from the mapped RAM.
//!
//! A capture reader that finds no new frame sleeps until the card's
//! FRAME_DONE record arrives on an observer open of its own (so it never
//! takes records meant for the caller's open), and frames fetched by DMA
//! land in a buffer registered with the card once, so no frame pays for
//! pinning its pages.

use std::fs::File;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use memmap2::{Mmap, MmapMut, MmapOptions};
use xxcapture_abi::{
    caps, control, dma_dir, irq, regs, slot_state, source, StatusBlock, TaskFile, TfError,
    MMAP_OFFSET_STATUS, STATUS_BLOCK_SIZE, STATUS_MAGIC,
};
use zerocopy::FromBytes;

use crate::card::{Access, Card, FrameFormat};
use crate::error::{Error, Result};
use crate::events::{Causes, Event};
use crate::registered::RegisteredBuffer;

/// Card RAM mapped into this process (writable on a controlling open).
pub struct CardRam {
    map: MmapMut,
}

impl CardRam {
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.map
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.map
    }
}

/// The status block page, mapped read-only.
pub struct StatusView {
    map: Mmap,
}

const SEQ_OFFSET: usize = 8;

impl StatusView {
    /// A consistent copy of the status block (sequence lock: retried while
    /// the card is writing it).
    pub fn snapshot(&self) -> Result<StatusBlock> {
        let base = self.map.as_ptr();
        // SAFETY: the mapping is at least STATUS_BLOCK_SIZE bytes (checked at
        // map time), page-aligned, so `seq` at offset 8 is a valid, aligned
        // u32 that lives as long as `self.map`; the card updates it
        // concurrently, hence the atomic view.
        let seq = unsafe { &*(base.add(SEQ_OFFSET) as *const AtomicU32) };
        for _ in 0..100_000 {
            let before = seq.load(Ordering::Acquire);
            if before & 1 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let mut copy = [0u8; std::mem::size_of::<StatusBlock>()];
            for (i, byte) in copy.iter_mut().enumerate() {
                // SAFETY: `i` is below size_of::<StatusBlock>() <=
                // STATUS_BLOCK_SIZE <= the mapping's length; volatile
                // because another agent writes this memory.
                *byte = unsafe { std::ptr::read_volatile(base.add(i)) };
            }
            fence(Ordering::Acquire);
            if seq.load(Ordering::Relaxed) == before {
                let block = StatusBlock::read_from_bytes(&copy).map_err(|_| Error::Protocol)?;
                match block.magic.get() {
                    STATUS_MAGIC => {}
                    // A removed card's mappings read as zeroes.
                    0 => return Err(Error::CardReset),
                    _ => return Err(Error::Protocol),
                }
                return Ok(block);
            }
        }
        Err(Error::Protocol)
    }
}

/// How captured frames reach this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaptureMode {
    /// Each frame is copied out of card RAM by a DMA task file.
    Dma,
    /// Each frame is read from card RAM mapped into this process.
    Mapped,
}

/// One captured frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub number: u64,
    pub timestamp_ns: u64,
    pub data: Vec<u8>,
}

/// One captured frame, borrowed from the capture's own buffer until the
/// next call (no copy, no allocation).
#[derive(Debug)]
pub struct FrameRef<'a> {
    pub number: u64,
    pub timestamp_ns: u64,
    pub data: &'a [u8],
}

impl FrameRef<'_> {
    pub fn to_owned_frame(&self) -> Frame {
        Frame {
            number: self.number,
            timestamp_ns: self.timestamp_ns,
            data: self.data.to_vec(),
        }
    }
}

/// Where a frame lands before the caller sees it.
enum FrameBuf<'c> {
    /// Registered with the card once: DMA names it by id and offset.
    Registered(RegisteredBuffer<'c>),
    /// Plain memory: copies from mapped card RAM, or DMA by address where
    /// no buffer could be registered.
    Plain(Vec<u8>),
}

impl FrameBuf<'_> {
    fn as_slice(&self) -> &[u8] {
        match self {
            FrameBuf::Registered(b) => b.as_slice(),
            FrameBuf::Plain(v) => v,
        }
    }
}

/// How a reader with no new frame waits for one.
enum Waiter {
    /// An observer open subscribed to FRAME_DONE: `poll()` until the
    /// card's record for the next frame arrives.
    Events { open: Card, batch: Vec<Event> },
    /// No observer open could be made (a driver without SUBSCRIBE, a node
    /// this process may not open twice): re-read the status block every
    /// [`FALLBACK_POLL`].
    Timer,
}

/// Status-block re-read interval of a reader without frame events.
const FALLBACK_POLL: Duration = Duration::from_micros(200);
/// Longest single sleep of a free-running reader waiting on events: a
/// bound for a card whose records are held back by coalescing another
/// client set, not a polling period (the record normally wakes it first).
const FREE_RUNNING_MAX_WAIT: Duration = Duration::from_millis(10);

/// What a capture saw so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureStats {
    /// Frames handed to the caller.
    pub delivered: u64,
    /// Frames this reader missed because the card overwrote them before it
    /// got to them (the reader was too slow).
    pub missed: u64,
    /// Frames the card itself dropped (status block `dropped`).
    pub card_dropped: u64,
}

impl Card {
    fn file(&self) -> &File {
        &self.file
    }

    /// Maps card RAM (the Double X design's `IOConnectMapMemory`).
    pub fn map_card_ram(&self) -> Result<CardRam> {
        let len = usize::try_from(self.info().card_ram_size).map_err(|_| Error::Protocol)?;
        // SAFETY: the mapping is shared with the card, which may change it
        // at any time; callers get it as bytes only, never as references to
        // typed data that could be torn.
        let map = unsafe { MmapOptions::new().len(len).offset(0).map_mut(self.file()) }.map_err(
            |source| Error::Map {
                what: "card RAM",
                source,
            },
        )?;
        Ok(CardRam { map })
    }

    /// Maps the status block page read-only.
    pub fn map_status(&self) -> Result<StatusView> {
        // SAFETY: read-only shared mapping of a page the card updates; read
        // only through `StatusView::snapshot`, which copies it under the
        // card's sequence lock.
        let map = unsafe {
            MmapOptions::new()
                .len(STATUS_BLOCK_SIZE)
                .offset(MMAP_OFFSET_STATUS)
                .map(self.file())
        }
        .map_err(|source| Error::Map {
            what: "status block",
            source,
        })?;
        Ok(StatusView { map })
    }

    fn require(&self, cap: u32, what: &'static str) -> Result<()> {
        if self.info().capabilities & cap == 0 {
            return Err(Error::Unsupported(what));
        }
        Ok(())
    }

    fn dma(&self, direction: u16, card_offset: u64, addr: u64, len: usize) -> Result<u64> {
        self.require(caps::DMA, "DMA")?;
        // As the Double X design's XXCaptureWriteBlocks does: reset the DMA engine, transfer,
        // read back what moved, in one crossing.
        let mut tf = TaskFile::new();
        tf.set_to_register(regs::CONTROL, u32::MAX, control::DMA_RESET);
        // Inside a buffer this handle registered: named by id, nothing to pin.
        let at = match self.registered_at(addr, len as u64) {
            Some((id, offset)) => tf.dma_buffer(direction, id, offset, card_offset, len as u64),
            None => tf.dma(true, direction, addr, card_offset, len as u64),
        };
        let res = self.run(&tf)?;
        let moved = res
            .commands
            .get(at)
            .map(|c| c.length.get())
            .ok_or(Error::Protocol)?;
        Ok(moved)
    }

    /// DMA between `len` bytes at `offset` of registered buffer `id` and
    /// card RAM at `card_offset`; returns bytes moved.
    pub(crate) fn dma_registered(
        &self,
        direction: u16,
        id: u32,
        offset: u64,
        card_offset: u64,
        len: u64,
    ) -> Result<u64> {
        self.require(caps::DMA, "DMA")?;
        let mut tf = TaskFile::new();
        tf.set_to_register(regs::CONTROL, u32::MAX, control::DMA_RESET);
        let at = tf.dma_buffer(direction, id, offset, card_offset, len);
        let res = self.run(&tf)?;
        res.commands
            .get(at)
            .map(|c| c.length.get())
            .ok_or(Error::Protocol)
    }

    /// DMA from `data` into card RAM at `card_offset`; returns bytes moved.
    /// A slice inside a [`crate::RegisteredBuffer`] of this handle goes by
    /// its id (no pinning per transfer).
    pub fn write_blocks(&self, card_offset: u64, data: &[u8]) -> Result<u64> {
        self.dma(
            dma_dir::TO_CARD,
            card_offset,
            data.as_ptr() as u64,
            data.len(),
        )
    }

    /// DMA from card RAM at `card_offset` into `buf`; returns bytes moved.
    /// A slice inside a [`crate::RegisteredBuffer`] of this handle goes by
    /// its id (no pinning per transfer).
    pub fn read_blocks(&self, card_offset: u64, buf: &mut [u8]) -> Result<u64> {
        self.dma(
            dma_dir::FROM_CARD,
            card_offset,
            buf.as_mut_ptr() as u64,
            buf.len(),
        )
    }

    /// Starts capture in `format` from the test pattern (`file_source`
    /// false) or the file `xxcapd` was given; frames arrive by `mode`.
    pub fn start_capture(
        &self,
        format: FrameFormat,
        file_source: bool,
        mode: CaptureMode,
    ) -> Result<Capture<'_>> {
        self.require(caps::CAPTURE, "capture")?;
        self.require(caps::CARD_RAM_SHM, "the status block")?;
        let status = self.map_status()?;
        let ram = match mode {
            CaptureMode::Mapped => Some(self.map_card_ram()?),
            CaptureMode::Dma => None,
        };
        let mut tf = TaskFile::new();
        // Ring capture: also clears STREAM, which a killed streaming client
        // may have left set.
        tf.set_to_register(regs::CONTROL, 0, control::CAPTURE | control::STREAM);
        tf.set_register(regs::FRAME_FORMAT, format.pixel_format.code());
        tf.set_register(regs::FRAME_WIDTH, format.width);
        tf.set_register(regs::FRAME_HEIGHT, format.height);
        tf.set_register(regs::FRAME_RATE, format.fps);
        tf.set_register(
            regs::FRAME_SOURCE,
            if file_source {
                source::FILE
            } else {
                source::TEST_PATTERN
            },
        );
        // Every completed frame becomes a FRAME_DONE record, which wakes a
        // waiting reader (records go only to opens subscribed to them).
        tf.set_to_register(regs::INT_MASK, u32::MAX, irq::FRAME_DONE);
        tf.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
        let frame_size = format
            .pixel_format
            .frame_size(format.width, format.height)
            .ok_or_else(|| Error::BadFormat(format!("{}x{}", format.width, format.height)))?;
        // Subscribed before capture starts, so the first frame's record is
        // not missed.
        let waiter = self.frame_waiter();
        let buf = match mode {
            CaptureMode::Dma => match self.register_buffer(frame_size) {
                Ok(b) => FrameBuf::Registered(b),
                // Over the registration limits (or a driver without them):
                // DMA by address, pinning per frame.
                Err(_) => FrameBuf::Plain(vec![0u8; frame_size]),
            },
            CaptureMode::Mapped => FrameBuf::Plain(vec![0u8; frame_size]),
        };
        self.run(&tf)?;
        Ok(Capture {
            card: self,
            mode,
            ram,
            status,
            format,
            frame_size,
            next: 0,
            stats: CaptureStats::default(),
            waiter,
            buf,
            lost_race: false,
        })
    }

    /// An observer open of this card subscribed to FRAME_DONE, or the
    /// status-block timer where none can be made.
    fn frame_waiter(&self) -> Waiter {
        let Ok(open) = Card::open(self.path(), Access::Observe) else {
            return Waiter::Timer;
        };
        match open.subscribe(Causes::FRAME_DONE) {
            Ok(_) => Waiter::Events {
                open,
                batch: Vec::new(),
            },
            Err(_) => Waiter::Timer,
        }
    }

    /// Stops capture.
    pub fn stop_capture(&self) -> Result<()> {
        let mut tf = TaskFile::new();
        tf.set_to_register(regs::CONTROL, 0, control::CAPTURE);
        self.run(&tf).map(drop)
    }
}

/// A running capture: an iterator over frames, oldest first.
pub struct Capture<'c> {
    card: &'c Card,
    mode: CaptureMode,
    ram: Option<CardRam>,
    status: StatusView,
    format: FrameFormat,
    frame_size: usize,
    next: u64,
    stats: CaptureStats,
    waiter: Waiter,
    buf: FrameBuf<'c>,
    /// The last copy lost the race with a paced card (overwritten while
    /// copied): the next one takes the newest frame, not the oldest.
    lost_race: bool,
}

impl Capture<'_> {
    pub fn format(&self) -> FrameFormat {
        self.format
    }

    pub fn stats(&self) -> CaptureStats {
        self.stats
    }

    pub fn status(&self) -> Result<StatusBlock> {
        self.status.snapshot()
    }

    /// Copies frame `n`'s slot into the capture's buffer, and releases
    /// ring slots (RING_RELEASE): a free-running card waits for its
    /// reader, and so does a paced one on virtual time (SPEC §14), which
    /// would stop 64 frames on otherwise. Free-running, frames up to `n`
    /// are released with the copy; paced, frames before `n` only, so that
    /// the card cannot start frame `n + slots` in `n`'s slot before the
    /// reader has checked its copy of `n` (a paced card on the host's
    /// clock overwrites regardless, and the check catches it). By DMA the
    /// release goes in the DMA's own task file and costs no extra
    /// crossing; from the mapping it is one task file per frame.
    fn copy_slot(&mut self, n: u64, offset: u64) -> Result<()> {
        let release = if self.format.fps == 0 { n + 1 } else { n };
        let release = u32::try_from(release).unwrap_or(u32::MAX);
        let len = self.frame_size;
        if let (CaptureMode::Mapped, Some(ram), FrameBuf::Plain(out)) =
            (&self.mode, &self.ram, &mut self.buf)
        {
            let start = usize::try_from(offset).map_err(|_| Error::Protocol)?;
            let src = ram
                .as_slice()
                .get(start..start + len)
                .ok_or(Error::Protocol)?;
            out.copy_from_slice(src);
            self.card.write_register(regs::RING_RELEASE, release)?;
            return Ok(());
        }
        let mut tf = TaskFile::new();
        let at = match &mut self.buf {
            FrameBuf::Registered(b) => {
                tf.dma_buffer(dma_dir::FROM_CARD, b.id(), 0, offset, len as u64)
            }
            FrameBuf::Plain(out) => tf.dma(
                true,
                dma_dir::FROM_CARD,
                out.as_mut_ptr() as u64,
                offset,
                len as u64,
            ),
        };
        tf.set_register(regs::RING_RELEASE, release);
        let res = self.card.run(&tf)?;
        let moved = res.commands.get(at).map(|c| c.length.get());
        if moved != Some(len as u64) {
            return Err(Error::Command {
                index: 0,
                code: TfError::DmaRange,
            });
        }
        Ok(())
    }

    /// Sleeps until the card reports a completed frame, `deadline`, or
    /// (free-running, or without frame events) a short bound.
    fn wait_for_frame(&mut self, deadline: Instant) -> Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        match &mut self.waiter {
            Waiter::Events { open, batch } => {
                // A paced card completes a frame every period: a record
                // held back (coalescing) costs at most one period.
                let bound = match self.format.fps {
                    0 => FREE_RUNNING_MAX_WAIT,
                    fps => Duration::from_secs(1) / fps,
                };
                batch.clear();
                open.wait_events(
                    batch,
                    256,
                    Some(left.min(bound).max(Duration::from_millis(1))),
                )?;
                Ok(())
            }
            Waiter::Timer => {
                std::thread::sleep(FALLBACK_POLL.min(left));
                Ok(())
            }
        }
    }

    /// Waits up to `timeout` for the next frame the card completes and
    /// returns a copy of it.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Frame> {
        self.next_frame_ref(timeout).map(|f| f.to_owned_frame())
    }

    /// Waits up to `timeout` for the next frame the card completes; the
    /// frame stays in the capture's buffer until the next call.
    pub fn next_frame_ref(&mut self, timeout: Duration) -> Result<FrameRef<'_>> {
        let deadline = Instant::now() + timeout;
        let missed_before = self.stats.missed;
        loop {
            // Also bounds a reader that keeps losing the race with the card.
            if Instant::now() >= deadline {
                return Err(Error::timeout(
                    format!(
                        "frame {} in the card's ring ({} overwritten before they could be copied)",
                        self.next,
                        self.stats.missed - missed_before
                    ),
                    timeout,
                ));
            }
            let st = self.status.snapshot()?;
            self.stats.card_dropped = st.dropped.get();
            let completed = st.frame_counter.get();
            let slots = u64::from(st.ring_slots.get());
            if slots == 0 {
                // Capture set the ring up; only a card reset takes it away.
                return Err(Error::CardReset);
            }
            // A free-running card waits for RING_RELEASE: nothing from
            // `next` on is overwritten before this reader releases it.
            let flow_controlled = self.format.fps == 0;
            if completed > self.next {
                // While a paced card fills frame `completed`, it overwrites
                // the slot of frame `completed - slots`. A reader that just
                // lost that race (its copy is slower than the card's
                // period) takes the newest frame instead, which lives
                // longest, or it would lose every race from then on.
                let oldest = (completed + 1).saturating_sub(slots);
                let first = if self.lost_race {
                    completed - 1
                } else {
                    oldest
                };
                // Unless its slot still holds it: a card paced by this
                // reader's releases (on virtual time, SPEC §14) fills the
                // whole ring ahead without overwriting it.
                let kept = !self.lost_race && slot_holds(&st, self.next, slots);
                if !flow_controlled && self.next < first && !kept {
                    self.stats.missed += first - self.next;
                    self.next = first;
                }
                let n = self.next;
                let slot = usize::try_from(n % slots).map_err(|_| Error::Protocol)?;
                let offset = st.ring_offset.get() + (n % slots) * u64::from(st.slot_size.get());
                let info = st.slots.get(slot).copied().ok_or(Error::Protocol)?;
                self.copy_slot(n, offset)?;
                // A paced card may have overwritten the slot while we copied
                // it (it marks the slot FILLING with the new frame before it
                // writes a byte); a flow-controlled one cannot, so skip the
                // second read.
                let overwritten =
                    !flow_controlled && !slot_holds(&self.status.snapshot()?, n, slots);
                self.next += 1;
                self.lost_race = info.frame_number.get() != n
                    || info.state.get() != slot_state::FULL
                    || overwritten;
                if self.lost_race {
                    // Overwritten before or while we copied it.
                    self.stats.missed += 1;
                    continue;
                }
                self.stats.delivered += 1;
                return Ok(FrameRef {
                    number: n,
                    timestamp_ns: info.timestamp_ns.get(),
                    data: self.buf.as_slice(),
                });
            }
            self.wait_for_frame(deadline)?;
        }
    }

    /// Stops capture and returns the final statistics.
    pub fn stop(self) -> Result<CaptureStats> {
        self.card.stop_capture()?;
        Ok(self.stats)
    }
}

/// Whether the status block says frame `n` is whole in its ring slot.
fn slot_holds(st: &StatusBlock, n: u64, slots: u64) -> bool {
    usize::try_from(n % slots.max(1))
        .ok()
        .and_then(|i| st.slots.get(i))
        .is_some_and(|i| i.frame_number.get() == n && i.state.get() == slot_state::FULL)
}
