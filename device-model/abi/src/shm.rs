//! Shared-memory region 0: card RAM followed by the status block, which the
//! device keeps current so a reader follows capture without a system call.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Shared-memory region 0 (virtio shm id): card RAM followed by the status
/// block page: `[0, card_ram_size)` card RAM, `[card_ram_size,
/// card_ram_size + STATUS_BLOCK_SIZE)` the status block.
pub const SHM_ID_CARD_RAM: u8 = 0;

/// Size of the status block page at the end of region 0.
pub const STATUS_BLOCK_SIZE: usize = 4096;

/// Most frame slots in the capture ring.
pub const MAX_RING_SLOTS: usize = 64;

/// "XXSB": first word of the status block.
pub const STATUS_MAGIC: u32 = 0x4253_5858;

/// One capture-ring slot as the status block reports it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SlotInfo {
    /// Frame number held by the slot (valid when `state` is FULL).
    pub frame_number: U64,
    /// Device time when the frame was completed.
    pub timestamp_ns: U64,
    /// `slot_state::*`.
    pub state: U32,
    /// Bytes of frame data in the slot.
    pub size: U32,
    pub reserved: U64,
}

/// Slot states.
pub mod slot_state {
    pub const EMPTY: u32 = 0;
    /// The device is writing the slot.
    pub const FILLING: u32 = 1;
    /// The slot holds a complete frame.
    pub const FULL: u32 = 2;
}

/// The status block: kept current by the device in shared memory so a
/// reader follows capture with no system call. Updates use a sequence lock:
/// `seq` is odd while the device writes; a reader copies the block, and
/// retries if `seq` was odd or changed.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct StatusBlock {
    pub magic: U32,
    pub version: U32,
    pub seq: U32,
    /// `status::*` bits, as the STATUS register.
    pub status: U32,
    /// Frames completed since capture started.
    pub frame_counter: U64,
    /// Frames the card dropped (capture faster than the ring allowed, or a
    /// file source that could not keep up).
    pub dropped: U64,
    pub errors: U64,
    /// Device time of the last update.
    pub device_time_ns: U64,
    /// Ring geometry: `ring_slots` slots of `slot_size` bytes from card-RAM
    /// offset `ring_offset`. Slot of frame N: `N % ring_slots`.
    pub ring_offset: U64,
    pub ring_slots: U32,
    pub slot_size: U32,
    pub format: U32,
    pub width: U32,
    pub height: U32,
    pub fps: U32,
    /// Bytes of one frame.
    pub frame_size: U32,
    pub reserved0: U32,
    pub reserved1: [U64; 3],
    pub slots: [SlotInfo; MAX_RING_SLOTS],
}
