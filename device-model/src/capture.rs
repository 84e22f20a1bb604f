//! Capture: the geometry of a capture session and the ring it fills.
//!
//! The model decides *whether* and *how* the card captures (CONTROL.CAPTURE,
//! the frame registers, the ring geometry); the backend's capture thread
//! renders the frames into card RAM and reports its progress back with
//! [`crate::Card::set_capture_progress`].

use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::{regs, source, MAX_RING_SLOTS};

/// Ring slots are whole pages.
pub const SLOT_ALIGN: u64 = 4096;

/// Format and size of frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FrameGeometry {
    pub format: PixelFormat,
    pub width: u32,
    pub height: u32,
}

impl FrameGeometry {
    /// Bytes of one frame, `None` for a size the card does not accept.
    pub fn frame_size(&self) -> Option<usize> {
        self.format.frame_size(self.width, self.height)
    }
}

/// The ring of a capture session: `ring_slots` slots of `slot_size` bytes
/// from card-RAM offset `ring_offset`; frame N goes to slot `N % ring_slots`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ring {
    pub ring_offset: u64,
    pub ring_slots: u32,
    pub slot_size: u32,
    pub frame_size: u32,
}

impl Ring {
    /// The ring for `geometry` in `card_ram_size` bytes of card RAM, or
    /// `None` when fewer than 2 slots fit (or the size is invalid).
    pub fn plan(geometry: FrameGeometry, card_ram_size: u64) -> Option<Ring> {
        let frame_size = u64::try_from(geometry.frame_size()?).ok()?;
        let slot_size = frame_size.div_ceil(SLOT_ALIGN) * SLOT_ALIGN;
        let fit = card_ram_size / slot_size;
        let ring_slots = fit.min(MAX_RING_SLOTS as u64);
        if ring_slots < 2 {
            return None;
        }
        Some(Ring {
            ring_offset: 0,
            ring_slots: u32::try_from(ring_slots).ok()?,
            slot_size: u32::try_from(slot_size).ok()?,
            frame_size: u32::try_from(frame_size).ok()?,
        })
    }

    /// The "ring" of a streaming capture: no slots, only the frame size
    /// (`None` for a size the card does not accept).
    pub fn none(geometry: FrameGeometry) -> Option<Ring> {
        Some(Ring {
            ring_offset: 0,
            ring_slots: 0,
            slot_size: 0,
            frame_size: u32::try_from(geometry.frame_size()?).ok()?,
        })
    }

    /// Card-RAM offset of the slot that holds frame `frame_number` (the
    /// ring's start when it has no slots).
    pub fn slot_offset(&self, frame_number: u64) -> u64 {
        self.ring_offset
            + u64::try_from(self.slot_index(frame_number)).unwrap_or(0) * u64::from(self.slot_size)
    }

    /// Slot index of frame `frame_number` (0 when the ring has no slots).
    pub fn slot_index(&self, frame_number: u64) -> usize {
        // ring_slots <= MAX_RING_SLOTS, so the remainder fits.
        frame_number
            .checked_rem(u64::from(self.ring_slots))
            .unwrap_or(0) as usize
    }
}

/// A running capture, as committed by the last task file that started it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CaptureSession {
    /// Increases with every start (never reused, also across resets), so the
    /// backend can tell a stop-and-start in one task file from no change.
    pub generation: u64,
    pub geometry: FrameGeometry,
    /// Frames per second; 0: free-running.
    pub fps: u32,
    /// `source::TEST_PATTERN` or `source::FILE`.
    pub source: u32,
    /// The card-RAM ring (no slots when streaming).
    pub ring: Ring,
    /// CONTROL.STREAM at capture start: frames go into the buffers queued
    /// on the stream queue, not into the ring.
    pub stream: bool,
}

impl CaptureSession {
    pub fn uses_file(&self) -> bool {
        self.source == source::FILE
    }
}

/// Registers that cannot be written while capture runs (`TfError::Busy`).
pub const BUSY_WHILE_CAPTURING: [u16; 5] = [
    regs::FRAME_FORMAT,
    regs::FRAME_WIDTH,
    regs::FRAME_HEIGHT,
    regs::FRAME_RATE,
    regs::FRAME_SOURCE,
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_geometry() {
        let g = FrameGeometry {
            format: PixelFormat::Yuyv,
            width: 640,
            height: 480,
        };
        let ring = Ring::plan(g, 64 << 20).expect("fits");
        assert_eq!(ring.frame_size, 640 * 480 * 2);
        assert_eq!(ring.slot_size, 614_400);
        assert_eq!(ring.ring_slots, 64);
        assert_eq!(ring.slot_offset(65), 614_400);
        let nv12 = FrameGeometry {
            format: PixelFormat::Nv12,
            width: 322,
            height: 240,
        };
        let ring = Ring::plan(nv12, 4 << 20).expect("fits");
        assert_eq!(ring.frame_size, 322 * 240 * 3 / 2);
        assert_eq!(ring.slot_size, 29 * 4096);
        assert_eq!(u64::from(ring.ring_slots), (4u64 << 20) / (29 * 4096));
        let big = FrameGeometry {
            format: PixelFormat::Rgb24,
            width: 3840,
            height: 2160,
        };
        assert_eq!(Ring::plan(big, 64 << 20).map(|r| r.ring_slots), Some(2));
        assert_eq!(Ring::plan(big, 32 << 20), None);
    }
}
