//! The guest driver's interface to user space: ioctl arguments and numbers,
//! EXEC flags, mmap offsets and per-open limits.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// EXEC `flags`.
pub mod exec_flags {
    /// Wait for completion by polling the command queue instead of
    /// sleeping until the interrupt (for latency measurements; the timeout
    /// still applies, and EINTR too).
    pub const POLL: u32 = 1 << 0;
    pub const ALL: u32 = POLL;
}

/// Argument of the EXEC ioctl: where the task file is and how long it is.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Exec {
    pub task_file: U64,
    pub size: U32,
    pub flags: U32,
}

/// Argument of the SUBMIT ioctl: the task file runs asynchronously; its
/// completion arrives as a DMA_DONE (task-file error OK) or DMA_ERROR event
/// record carrying `refcon` and `request_id`.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Submit {
    pub task_file: U64,
    pub size: U32,
    pub flags: U32,
    pub refcon: U64,
    /// Out: the id the completion event carries.
    pub request_id: U64,
}

/// Argument of the QUEUE_BUFFER ioctl: a capture buffer of the caller's,
/// pinned by the driver until a frame fills it (a FRAME_DONE event record)
/// or it is cancelled.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct QueueBuffer {
    pub addr: U64,
    pub length: U64,
    pub refcon: U64,
    /// Out: the id the FRAME_DONE record carries.
    pub request_id: U64,
    pub flags: U32,
    pub reserved: U32,
}

/// Argument of the SUBSCRIBE ioctl: which device interrupt causes this open
/// receives as event records (completions of its own requests always
/// arrive). Out: the previous mask.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Subscribe {
    pub mask: U32,
    pub flags: U32,
}

/// Argument of the ABORT ioctl: cancels one request of this open (its
/// `request_id` from SUBMIT or QUEUE_BUFFER), or with `abort_flags::ALL`
/// every one this open has outstanding (`request_id` 0).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Abort {
    pub request_id: U64,
    pub flags: U32,
    pub reserved: U32,
}

/// ABORT `flags`.
pub mod abort_flags {
    /// Cancel every request this open has outstanding.
    pub const ALL: u32 = 1 << 0;
}

/// Argument of the REGISTER_BUFFER ioctl: a buffer of the caller's that
/// the driver pins and describes to the card once; DMA_BUFFER commands then
/// name it by `id` (valid for this open only) and an offset.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct RegisterBuffer {
    pub addr: U64,
    pub length: U64,
    pub flags: U32,
    /// Out: the buffer's id.
    pub id: U32,
}

/// Registered buffers one open may hold at once.
pub const MAX_REGISTERED_PER_OPEN: u32 = 16;

/// Registered buffers all opens of one card may hold at once.
pub const MAX_REGISTERED_PER_CARD: u32 = 64;

/// Largest registered buffer (bytes).
pub const MAX_REGISTERED_SIZE: u64 = 256 << 20;

/// Bytes all registered buffers of one card may pin together.
pub const MAX_REGISTERED_BYTES: u64 = 1 << 30;

/// Most capture buffers one open may have queued at once.
pub const MAX_QUEUED_BUFFERS: u32 = 32;

/// Largest capture buffer (bytes); a 2160p RGB24 frame is 24.9 MB.
pub const MAX_BUFFER_SIZE: u64 = 64 << 20;

/// `mmap` offset on `/dev/xxcaptureN` that maps the status block (read-only);
/// offset 0 maps card RAM.
pub const MMAP_OFFSET_STATUS: u64 = 1 << 40;

/// `mmap` offset on `/dev/xxcaptureN` that maps the ring area (read-write,
/// the controlling open after RING_SETUP only).
pub const MMAP_OFFSET_RING: u64 = 2 << 40;

/// Guest ioctl numbers (the `x` type, Linux `_IOC` encoding).
pub mod ioctl {
    use super::{Abort, Exec, QueueBuffer, RegisterBuffer, Submit, Subscribe};
    use crate::Identity;
    use crate::RingSetup;

    pub const TYPE: u8 = b'x';
    const NRBITS: u32 = 8;
    const TYPEBITS: u32 = 8;
    const SIZEBITS: u32 = 14;
    const NRSHIFT: u32 = 0;
    const TYPESHIFT: u32 = NRSHIFT + NRBITS;
    const SIZESHIFT: u32 = TYPESHIFT + TYPEBITS;
    const DIRSHIFT: u32 = SIZESHIFT + SIZEBITS;
    pub const DIR_NONE: u32 = 0;
    pub const DIR_WRITE: u32 = 1;
    pub const DIR_READ: u32 = 2;

    /// The kernel's `_IOC(dir, type, nr, size)`.
    pub const fn ioc(dir: u32, nr: u8, size: usize) -> u32 {
        (dir << DIRSHIFT)
            | ((TYPE as u32) << TYPESHIFT)
            | ((nr as u32) << NRSHIFT)
            | ((size as u32) << SIZESHIFT)
    }

    /// Does nothing: the floor of a kernel crossing.
    pub const NOP_NR: u8 = 0x00;
    /// Copies the card identity (cached at probe) out.
    pub const GET_INFO_NR: u8 = 0x01;
    /// Executes a task file in place.
    pub const EXEC_NR: u8 = 0x02;

    pub const NOP: u32 = ioc(DIR_NONE, NOP_NR, 0);
    pub const GET_INFO: u32 = ioc(DIR_READ, GET_INFO_NR, core::mem::size_of::<Identity>());
    pub const EXEC: u32 = ioc(DIR_READ | DIR_WRITE, EXEC_NR, core::mem::size_of::<Exec>());
    /// Submits a task file to run asynchronously.
    pub const SUBMIT_NR: u8 = 0x03;
    /// Queues a capture buffer.
    pub const QUEUE_BUFFER_NR: u8 = 0x04;
    /// Sets which interrupt causes this open receives.
    pub const SUBSCRIBE_NR: u8 = 0x05;
    /// Returns this open's queued capture buffers, cancelled.
    pub const FLUSH_BUFFERS_NR: u8 = 0x06;

    pub const SUBMIT: u32 = ioc(
        DIR_READ | DIR_WRITE,
        SUBMIT_NR,
        core::mem::size_of::<Submit>(),
    );
    pub const QUEUE_BUFFER: u32 = ioc(
        DIR_READ | DIR_WRITE,
        QUEUE_BUFFER_NR,
        core::mem::size_of::<QueueBuffer>(),
    );
    pub const SUBSCRIBE: u32 = ioc(
        DIR_READ | DIR_WRITE,
        SUBSCRIBE_NR,
        core::mem::size_of::<Subscribe>(),
    );
    pub const FLUSH_BUFFERS: u32 = ioc(DIR_NONE, FLUSH_BUFFERS_NR, 0);
    /// Registers a buffer for DMA_BUFFER commands.
    pub const REGISTER_BUFFER_NR: u8 = 0x07;
    /// Unregisters a buffer (argument: its id, a `u32`).
    pub const UNREGISTER_BUFFER_NR: u8 = 0x08;
    pub const REGISTER_BUFFER: u32 = ioc(
        DIR_READ | DIR_WRITE,
        REGISTER_BUFFER_NR,
        core::mem::size_of::<RegisterBuffer>(),
    );
    pub const UNREGISTER_BUFFER: u32 = ioc(DIR_WRITE, UNREGISTER_BUFFER_NR, 4);
    /// Cancels one outstanding request of this open, or all of them.
    pub const ABORT_NR: u8 = 0x10;
    pub const ABORT: u32 = ioc(DIR_WRITE, ABORT_NR, core::mem::size_of::<Abort>());
    /// Sets up the submission and completion rings for this open.
    pub const RING_SETUP_NR: u8 = 0x11;
    /// Tells the card the SQ tail moved (when `sq_flags::NEED_WAKEUP`).
    pub const RING_ENTER_NR: u8 = 0x12;
    pub const RING_SETUP: u32 = ioc(
        DIR_READ | DIR_WRITE,
        RING_SETUP_NR,
        core::mem::size_of::<RingSetup>(),
    );
    pub const RING_ENTER: u32 = ioc(DIR_NONE, RING_ENTER_NR, 0);
}
