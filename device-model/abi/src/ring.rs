//! The shared-memory rings (SPEC §15): a submission queue (SQ) of task
//! files and a completion queue (CQ) of event records in the ring area of
//! shared-memory region 0, after the status block, which the controlling
//! open maps and the card reads and writes directly.
//!
//! Indices are free-running `u32`s masked by the entry count, as in
//! io_uring. Each side writes only its own fields: the card the SQ head,
//! the SQ flags, the CQ tail and the statistics; the application the SQ
//! tail, the CQ head, the CQ flags and the event mask. The card keeps its
//! own copy of every index it owns and of the geometry, and never trusts
//! what the shared page says about them.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// "XXRG": first word of the ring header.
pub const RING_MAGIC: u32 = 0x4752_5858;

/// Layout version written into the ring header.
pub const RING_VERSION: u32 = 1;

/// Submission-queue entries (a power of two).
pub const RING_SQ_ENTRIES: u32 = 256;

/// Completion-queue entries (a power of two): room for every completion
/// of a full SQ and for device events beside them.
pub const RING_CQ_ENTRIES: u32 = 2048;

/// Byte offset, in the ring area, of the header page.
pub const RING_HEADER_OFFSET: u32 = 0;

/// Byte offset, in the ring area, of the SQ array (`SqEntry`s).
pub const RING_SQ_OFFSET: u32 = 4096;

/// Byte offset, in the ring area, of the CQ array (`Event`s).
pub const RING_CQ_OFFSET: u32 = RING_SQ_OFFSET + RING_SQ_ENTRIES * SQ_ENTRY_SIZE as u32;

/// Byte offset, in the ring area, of the task-file arena: the application
/// places task files here and SQ entries name them by offset; the card
/// writes each executed task file back in place.
pub const RING_ARENA_OFFSET: u32 = RING_CQ_OFFSET + RING_CQ_ENTRIES * crate::event::SIZE as u32;

/// Bytes of the task-file arena: two of the largest task files.
pub const RING_ARENA_SIZE: u32 = 2 * crate::MAX_TASK_FILE_SIZE.next_power_of_two() as u32;

/// Bytes of the ring area (a whole number of pages).
pub const RING_AREA_SIZE: u32 = RING_ARENA_OFFSET + RING_ARENA_SIZE;

/// Bytes of one SQ entry.
pub const SQ_ENTRY_SIZE: usize = core::mem::size_of::<SqEntry>();

/// SQ poller idle time when RING_SETUP asks for 0: after this long with
/// an empty SQ, the poller sleeps until the next RING_KICK.
pub const RING_DEFAULT_SQ_IDLE_US: u32 = 1000;

/// Longest SQ poller idle time accepted.
pub const RING_MAX_SQ_IDLE_US: u32 = 1_000_000;

const _: () = assert!(RING_SQ_ENTRIES.is_power_of_two() && RING_CQ_ENTRIES.is_power_of_two());
const _: () = assert!(
    RING_CQ_ENTRIES >= 2 * RING_SQ_ENTRIES,
    "room for events beside a full SQ"
);
const _: () = assert!(RING_ARENA_SIZE as usize >= 2 * crate::MAX_TASK_FILE_SIZE);

/// Ring setup flags (`RingSetup::flags`, `RingHeader::setup_flags`).
pub mod ring_setup {
    /// The card polls the SQ while entries keep arriving and sleeps after
    /// `sq_idle_us` without one, setting `sq_flags::NEED_WAKEUP`.
    pub const SQPOLL: u32 = 1 << 0;
    pub const ALL: u32 = SQPOLL;
}

/// `RingHeader::sq_flags` (written by the card).
pub mod sq_flags {
    /// The SQ poller sleeps (or there is none): the application must call
    /// RING_ENTER after it advanced `sq_tail`.
    pub const NEED_WAKEUP: u32 = 1 << 0;
}

/// `RingHeader::cq_flags` (written by the application).
pub mod cq_flags {
    /// The application is about to sleep: the card clears this flag and
    /// sends one RING_WAKE interrupt after the next CQ entry it posts.
    pub const ARMED: u32 = 1 << 0;
}

/// The ring header at the start of the ring area. Card-written and
/// application-written fields live in separate 64-byte lines.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RingHeader {
    /// `RING_MAGIC` (card, at setup).
    pub magic: U32,
    /// `RING_VERSION` (card, at setup).
    pub version: U32,
    /// SQ entries (card, at setup).
    pub sq_entries: U32,
    /// CQ entries (card, at setup).
    pub cq_entries: U32,
    /// Byte offsets of the SQ array, the CQ array and the arena in the
    /// ring area, and the arena's size (card, at setup).
    pub sq_offset: U32,
    pub cq_offset: U32,
    pub arena_offset: U32,
    pub arena_size: U32,
    /// `ring_setup::*` as granted (card, at setup).
    pub setup_flags: U32,
    /// SQ poller idle time in µs (card, at setup; 0 without SQPOLL).
    pub sq_idle_us: U32,
    pub reserved0: [U32; 6],
    /// Next SQ index the card will consume (card).
    pub sq_head: U32,
    /// `sq_flags::*` (card).
    pub sq_flags: U32,
    /// Next CQ index the card will write (card).
    pub cq_tail: U32,
    /// Device events dropped because the CQ was full, in total (card).
    pub cq_lost: U32,
    pub reserved1: [U32; 12],
    /// Next SQ index the application will write (application).
    pub sq_tail: U32,
    /// Next CQ index the application will consume (application).
    pub cq_head: U32,
    /// `cq_flags::*` (application).
    pub cq_flags: U32,
    /// Interrupt causes (`irq::*`) whose event records go into the CQ
    /// instead of the event queue (application).
    pub event_mask: U32,
    pub reserved2: [U32; 12],
    /// Statistics (card): SQ entries consumed, RING_KICKs received,
    /// RING_WAKE interrupts sent, the SQ poller's CPU time and the wall
    /// time it was awake (spinning or working), and how often it went to
    /// sleep.
    pub sqes: U64,
    pub kicks: U64,
    pub wakeups: U64,
    pub poll_cpu_ns: U64,
    pub poll_awake_ns: U64,
    pub poll_sleeps: U64,
    pub reserved3: [U64; 2],
}

/// One SQ entry: a task file in the arena.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SqEntry {
    /// Byte offset of the task file in the arena.
    pub offset: U32,
    /// Its size: a header and whole command blocks.
    pub size: U32,
    /// Copied into the completion's `refcon`.
    pub user_data: U64,
}

/// Request payload of RING_SETUP (device-readable, after the request
/// header).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RingSetupReq {
    /// Owner tag of the controlling open: registered buffers whose
    /// `BufferDesc::owner` equals it are the ones ring task files may
    /// name. 0 tears the ring down.
    pub owner: U32,
    /// `ring_setup::*`.
    pub flags: U32,
    /// SQ poller idle time in µs (0: `RING_DEFAULT_SQ_IDLE_US`).
    pub sq_idle_us: U32,
    pub reserved: U32,
}

/// Argument of the RING_SETUP ioctl.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RingSetup {
    /// `ring_setup::*`.
    pub flags: U32,
    /// SQ poller idle time in µs (0: the default).
    pub sq_idle_us: U32,
    /// Out: bytes to map at `MMAP_OFFSET_RING`.
    pub area_size: U32,
    pub reserved: U32,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry_is_page_aligned_and_fits() {
        assert_eq!(core::mem::size_of::<RingHeader>(), 256);
        assert_eq!(SQ_ENTRY_SIZE, 16);
        for offset in [
            RING_SQ_OFFSET,
            RING_CQ_OFFSET,
            RING_ARENA_OFFSET,
            RING_AREA_SIZE,
        ] {
            assert_eq!(offset % 4096, 0, "{offset} not page aligned");
        }
        assert_eq!(core::mem::offset_of!(RingHeader, sq_head), 64);
        assert_eq!(core::mem::offset_of!(RingHeader, sq_tail), 128);
        assert_eq!(core::mem::offset_of!(RingHeader, sqes), 192);
    }
}
