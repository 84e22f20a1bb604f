//! Card RAM, the status block, DMA and the capture ring, from user space.
//!
//! The Double X card's device interface: `write_blocks`/`read_blocks` (DMA through
//! task files), `map_card_ram` (the card's RAM in this process), and a frame
//! iterator over the capture ring that follows the status block without a
//! system call and fetches each frame by DMA or from the mapped RAM.

use std::fs::File;
use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use memmap2::{Mmap, MmapMut, MmapOptions};
use xxcapture_abi::{
    caps, control, dma_dir, regs, slot_state, source, StatusBlock, TaskFile, TfError,
    MMAP_OFFSET_STATUS, STATUS_BLOCK_SIZE, STATUS_MAGIC,
};
use zerocopy::FromBytes;

use crate::card::{Card, FrameFormat};
use crate::error::{Error, Result};

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
                if block.magic.get() != STATUS_MAGIC {
                    return Err(Error::Protocol);
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
        tf.set_to_register(regs::CONTROL, control::CAPTURE, control::CAPTURE);
        self.run(&tf)?;
        let frame_size = format
            .pixel_format
            .frame_size(format.width, format.height)
            .ok_or_else(|| Error::BadFormat(format!("{}x{}", format.width, format.height)))?;
        Ok(Capture {
            card: self,
            mode,
            ram,
            status,
            format,
            frame_size,
            next: 0,
            stats: CaptureStats::default(),
            poll: Duration::from_micros(200),
            lost_race: false,
        })
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
    poll: Duration,
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

    /// Copies frame `n`'s slot out. A free-running card waits for its
    /// reader: frames up to `n` are released (RING_RELEASE) after the copy,
    /// in the DMA's own task file, so that costs no extra crossing.
    fn copy_slot(&self, n: u64, offset: u64, out: &mut [u8]) -> Result<()> {
        let free_running = self.format.fps == 0;
        let release = u32::try_from(n + 1).unwrap_or(u32::MAX);
        match (&self.mode, &self.ram) {
            (CaptureMode::Mapped, Some(ram)) => {
                let start = usize::try_from(offset).map_err(|_| Error::Protocol)?;
                let src = ram
                    .as_slice()
                    .get(start..start + out.len())
                    .ok_or(Error::Protocol)?;
                out.copy_from_slice(src);
                if free_running {
                    self.card.write_register(regs::RING_RELEASE, release)?;
                }
                Ok(())
            }
            _ => {
                let mut tf = TaskFile::new();
                let at = tf.dma(
                    true,
                    dma_dir::FROM_CARD,
                    out.as_mut_ptr() as u64,
                    offset,
                    out.len() as u64,
                );
                if free_running {
                    tf.set_register(regs::RING_RELEASE, release);
                }
                let res = self.card.run(&tf)?;
                let moved = res.commands.get(at).map(|c| c.length.get());
                if moved != Some(out.len() as u64) {
                    return Err(Error::Command {
                        index: 0,
                        code: TfError::DmaRange,
                    });
                }
                Ok(())
            }
        }
    }

    /// Waits up to `timeout` for the next frame the card completes.
    pub fn next_frame(&mut self, timeout: Duration) -> Result<Frame> {
        let deadline = Instant::now() + timeout;
        let missed_before = self.stats.missed;
        let mut data = vec![0u8; self.frame_size];
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
                if !flow_controlled && self.next < first {
                    self.stats.missed += first - self.next;
                    self.next = first;
                }
                let n = self.next;
                let slot = usize::try_from(n % slots).map_err(|_| Error::Protocol)?;
                let offset = st.ring_offset.get() + (n % slots) * u64::from(st.slot_size.get());
                let info = st.slots.get(slot).copied().ok_or(Error::Protocol)?;
                self.copy_slot(n, offset, &mut data)?;
                // A paced card may have overwritten the slot while we copied
                // it; a flow-controlled one cannot, so skip the second read.
                let overwritten =
                    !flow_controlled && self.status.snapshot()?.frame_counter.get() >= n + slots;
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
                return Ok(Frame {
                    number: n,
                    timestamp_ns: info.timestamp_ns.get(),
                    data,
                });
            }
            std::thread::sleep(self.poll);
        }
    }

    /// Stops capture and returns the final statistics.
    pub fn stop(self) -> Result<CaptureStats> {
        self.card.stop_capture()?;
        Ok(self.stats)
    }
}
