//! Virtqueue framing: what a request carries on the wire (request header and
//! transport status, scatter-gather entries, event records, the result of a
//! stream-queue buffer).

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

impl SgEntry {
    pub fn new(addr: u64, len: u32) -> Self {
        SgEntry {
            addr: addr.into(),
            len: len.into(),
            reserved: 0.into(),
        }
    }
}

/// One event record: on the event queue (device to driver) and from
/// `read()` on `/dev/xxcaptureN` (driver to user), in the same layout.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Event {
    /// One `irq::*` bit, or `event::LOST`.
    pub cause: U32,
    /// Completions: the `TfError` of the request (0 = OK).
    pub status: U32,
    /// Device events: the device's event number since reset (contiguous
    /// across causes); completions: 0.
    pub sequence: U64,
    /// FRAME_DONE and OVERFLOW: the frame's number.
    pub frame_number: U64,
    /// Completions: the id SUBMIT or QUEUE_BUFFER returned.
    pub request_id: U64,
    /// Completions: the caller's reference value.
    pub refcon: U64,
    /// Device clock when the cause occurred.
    pub device_time_ns: U64,
    /// Guest CLOCK_MONOTONIC when the driver took the record (0 on the
    /// event queue).
    pub guest_time_ns: U64,
    /// LOST: records lost; FRAME_DONE of a queued buffer: bytes written;
    /// task-file completions: the header's out count (failing index).
    pub count: U32,
    /// `event::FLAG_*`.
    pub flags: U32,
}

/// Device-writable end of a stream-queue request: how the buffer was used.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct StreamResult {
    /// `vq_status::*`.
    pub status: U32,
    /// `TfError`: OK, DMA_RANGE (buffer smaller than the frame), DMA_FAULT
    /// or CANCELLED.
    pub error: U32,
    pub frame_number: U64,
    /// Device clock when the frame completed (or the buffer was cancelled).
    pub device_time_ns: U64,
    /// Bytes of frame data written.
    pub bytes: U32,
    pub reserved: U32,
}

/// Request types on the command queue.
pub mod req_type {
    /// Execute the task file that follows the request header.
    pub const EXEC_TASK_FILE: u32 = 1;
    /// Map card RAM and the status block into shared-memory region 0 (if
    /// not mapped since the last reset). No payload; the reply is a
    /// `VqStatus`. The driver sends it once after DRIVER_OK, before it
    /// exposes the card: the backend can only map after the device started.
    pub const ATTACH: u32 = 2;
    /// Stream queue only: a capture buffer (`sg_count` entries, no task
    /// file), device-writable `StreamResult` at the end.
    pub const STREAM_BUFFER: u32 = 3;
    /// Return every buffer held on the stream queue with CANCELLED. No
    /// payload; the reply is a `VqStatus` written after the buffers are
    /// returned.
    pub const FLUSH_BUFFERS: u32 = 4;
    /// Hold a registered buffer: a `BufferDesc` (id, length) and
    /// `sg_count` entries follow the header; the reply is a `VqStatus`.
    pub const REGISTER_BUFFER: u32 = 5;
    /// Forget a registered buffer: a `BufferDesc` (id, length 0) follows
    /// the header, `sg_count` 0; the reply is a `VqStatus`.
    pub const UNREGISTER_BUFFER: u32 = 6;
    /// Cancel the requests named by the tags that follow the header (`n`
    /// little-endian u64s, 1..=[`MAX_ABORT_TAGS`](super::MAX_ABORT_TAGS)):
    /// task files waiting on the command queue and held stream buffers.
    /// The reply is a `VqStatus`, written after the cancelled requests were
    /// returned.
    pub const ABORT: u32 = 7;
    /// Set up the submission and completion rings for the owner a
    /// `RingSetupReq` names (owner 0: tear them down). The reply is a
    /// `VqStatus`, written once the card uses the new ring (or, on
    /// teardown, once no ring entry runs any more).
    pub const RING_SETUP: u32 = 8;
    /// The application advanced the SQ tail: consume the ring's new
    /// entries (or wake the SQ poller). No payload; the reply is a
    /// `VqStatus`.
    pub const RING_KICK: u32 = 9;
}

/// The card side of registered buffers: what one card holds at most.
pub mod registered {
    /// Registered buffers one card holds at once (ids are 1..=this).
    pub const MAX_BUFFERS: u32 = 256;
    /// Scatter-gather entries one card holds for all its registered
    /// buffers together (16 MiB of tables; 4 GiB of scattered pages).
    pub const MAX_TOTAL_ENTRIES: u64 = 1 << 20;
}

/// Follows the request header of REGISTER_BUFFER and UNREGISTER_BUFFER.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct BufferDesc {
    /// 1..=`registered::MAX_BUFFERS`, chosen by the driver.
    pub id: U32,
    /// REGISTER: owner tag of the open the buffer belongs to (nonzero;
    /// ring task files may name only their owner's buffers); UNREGISTER: 0.
    pub owner: U32,
    /// REGISTER: the buffer's length, which its entries sum to exactly;
    /// UNREGISTER: 0.
    pub length: U64,
}

/// `VqRequest::flags` of a command-queue request.
pub mod vq_flags {
    /// EXEC_TASK_FILE: the driver does not wait for this request (an
    /// asynchronous submission). Only then may the task file hold
    /// DMA_TRANSFER_NONBLOCK commands.
    pub const ASYNC: u32 = 1 << 0;
}

/// Most tags one ABORT request may name.
pub const MAX_ABORT_TAGS: u32 = 1024;

/// Most scatter-gather entries one request may carry (all its DMA
/// commands together): 256 MiB of scattered 4 KiB pages.
pub const MAX_SG_ENTRIES: u32 = 1 << 16;

/// One scatter-gather element of a DMA buffer: guest-physical address and
/// length. The driver builds them from the caller's pinned pages; they
/// follow the task file in the request.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct SgEntry {
    pub addr: U64,
    pub len: U32,
    pub reserved: U32,
}

/// First bytes of every command-queue request (device-readable).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VqRequest {
    pub req_type: U32,
    pub flags: U32,
    pub tag: U64,
    /// Scatter-gather entries following the task file (DMA buffers).
    pub sg_count: U32,
    pub reserved: U32,
}

/// Last bytes of every command-queue request (device-writable).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct VqStatus {
    pub status: U32,
    pub reserved: U32,
    /// Device clock when the request completed.
    pub device_time_ns: U64,
}

/// Transport status of a command-queue request (`VqStatus::status`).
pub mod vq_status {
    /// The request was executed; task-file errors are in its header.
    pub const OK: u32 = 0;
    /// The descriptor chain was malformed (lengths, directions, addresses).
    pub const BAD_REQUEST: u32 = 1;
    /// Unknown request type or flags.
    pub const UNSUPPORTED: u32 = 2;
    /// The device could not carry out the request (e.g. mapping card RAM
    /// failed).
    pub const DEVICE_ERROR: u32 = 3;
}
