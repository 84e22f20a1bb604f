//! The xxcapture device ABI, written once.
//!
//! Everything that crosses a boundary is defined here: the virtio identity and
//! queues, the device config-space layout, the register map with its
//! writable-bit masks and value rules, the task-file wire format with its op
//! codes and error codes, the virtqueue request framing and the guest ioctls.
//!
//! The C side is generated from this crate (`cargo run -p xxcapture-abi --bin
//! xxcap-gen-headers`): `guest-driver/include/uapi/linux/xxcapture.h` and the
//! driver's private register table. Tests fail when the checked-in headers and
//! these definitions drift, and a compiled C probe checks sizes, offsets and
//! ioctl numbers against the Rust values. `device-model/SPEC.md` is the prose.

pub mod cgen;
pub mod frame;
mod guest;
pub mod layout;
pub mod regs;
mod ring;
mod shm;
pub mod tf;
mod wire;

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub use guest::*;
pub use regs::{Access, RegisterDesc, ValueRule, Width, REGISTERS};
pub use ring::*;
pub use shm::*;
pub use tf::{ParseError, TaskFile, TaskFileResult};
pub use wire::*;
/// Default virtio device id. QEMU only accepts ids in its own name table; 31
/// (the never-merged virtio-video decoder) has no Linux driver. The guest sees
/// PCI `1af4:105f`. Overridable: `xxcapd --virtio-id`, the harness's
/// `--virtio-id`, and the module's `XXCAPTURE_VIRTIO_ID` build variable.
pub const VIRTIO_ID: u32 = 31;

/// "XXCP" in little-endian byte order: the first word of config space and the
/// value of the ID register.
pub const MAGIC: u32 = 0x5043_5858;

/// ABI version: major in the high half, minor in the low half. A driver must
/// refuse a card whose major differs from its own.
pub const ABI_VERSION: u32 = 0x0002_0003;

pub const ABI_VERSION_MAJOR: u32 = ABI_VERSION >> 16;

/// Model number of the "Double X" capture card.
pub const MODEL_DOUBLE_X: u32 = 0x0000_D0B1;

/// Capability bits, in config space and the CAPS register.
pub mod caps {
    /// Task files on the command queue.
    pub const TASK_FILE: u32 = 1 << 0;
    /// DMA between card RAM and guest memory (DMATransfer ops).
    pub const DMA: u32 = 1 << 1;
    /// Card RAM exposed as virtio shared-memory region 0.
    pub const CARD_RAM_SHM: u32 = 1 << 2;
    /// Event records on the event queue.
    pub const EVENTS: u32 = 1 << 3;
    /// Video capture into card RAM.
    pub const CAPTURE: u32 = 1 << 4;
    /// Capture into buffers the driver queues on the stream queue.
    pub const STREAMING: u32 = 1 << 5;
    /// Submission and completion rings in shared-memory region 0.
    pub const RING: u32 = 1 << 6;
}

/// Device status bits, in config space and the STATUS register.
pub mod status {
    /// The card finished reset and accepts requests.
    pub const READY: u32 = 1 << 0;
    /// Capture is running.
    pub const CAPTURING: u32 = 1 << 1;
    /// A DMA command is moving data (seen in the status block; a task file
    /// always reads 0, its DMA having ended before the next command).
    pub const DMA_BUSY: u32 = 1 << 2;
    /// A DMA command failed since the last CONTROL.DMA_RESET or device
    /// reset: latched, later successful transfers leave it set.
    pub const DMA_ERROR: u32 = 1 << 3;
}

/// CONTROL register bits.
pub mod control {
    /// Card enabled.
    pub const ENABLE: u32 = 1 << 0;
    /// Start (1) or stop (0) capture.
    pub const CAPTURE: u32 = 1 << 1;
    /// Reset the DMA engine: self-clearing, reads back as 0.
    pub const DMA_RESET: u32 = 1 << 2;
    /// Capture into buffers queued on the stream queue instead of the
    /// card-RAM ring. Sampled when capture starts; BUSY while capturing.
    pub const STREAM: u32 = 1 << 3;
}

/// Interrupt causes: bits of INT_STATUS, INT_MASK, INT_ACK and INT_RAISE.
pub mod irq {
    pub const FRAME_DONE: u32 = 1 << 0;
    pub const DMA_DONE: u32 = 1 << 1;
    pub const DMA_ERROR: u32 = 1 << 2;
    pub const OVERFLOW: u32 = 1 << 3;
    /// Raised by writing INT_RAISE, for testing the interrupt path.
    pub const TEST: u32 = 1 << 4;
    pub const ALL: u32 = FRAME_DONE | DMA_DONE | DMA_ERROR | OVERFLOW | TEST;
}

/// Event records: the `cause` values that are not interrupt causes, the
/// `flags` bits, and the sizes of records and event-queue buffers.
pub mod event {
    /// `cause` of a record that reports lost records: `count` of them were
    /// dropped because a queue (the device's backlog, or a reader's queue in
    /// the driver) was full. It takes the place of the first lost record.
    pub const LOST: u32 = 1 << 31;
    /// `cause` of a record the card sends on the event queue when it
    /// posted into the completion ring while the application had armed
    /// it (`cq_flags::ARMED`): the driver wakes the ring's owner and keeps
    /// no record.
    pub const RING_WAKE: u32 = 1 << 30;
    /// `flags`: the driver made this record from a request completion (a
    /// submitted task file or a queued buffer), not from the event queue.
    pub const FLAG_COMPLETION: u32 = 1 << 0;
    /// `flags`: a completion ring entry for a task file of the submission
    /// ring (with `FLAG_COMPLETION`).
    pub const FLAG_RING: u32 = 1 << 1;
    /// Bytes of one record.
    pub const SIZE: usize = core::mem::size_of::<super::Event>();
    /// Bytes of one event-queue buffer the driver posts; the device writes
    /// whole records into it.
    pub const BUFFER_SIZE: usize = 4096;
    /// Records one event-queue buffer holds.
    pub const PER_BUFFER: usize = BUFFER_SIZE / SIZE;
    /// Records the device keeps when the driver posted no buffer; beyond
    /// this it counts them in EVENTS_LOST and reports a LOST record.
    pub const DEVICE_BACKLOG: usize = 4096;
}

/// Pixel formats (FRAME_FORMAT register values).
pub mod format {
    pub const YUYV: u32 = 1;
    pub const NV12: u32 = 2;
    pub const RGB24: u32 = 3;
}

/// Video sources (FRAME_SOURCE register values).
pub mod source {
    /// The built-in test pattern.
    pub const TEST_PATTERN: u32 = 0;
    /// Frames read from the file given to `xxcapd --source-file`; selecting
    /// it without one fails BAD_VALUE.
    pub const FILE: u32 = 1;
}

/// Virtqueue indices.
pub mod queue {
    /// Driver-to-device requests (task files).
    pub const COMMAND: u16 = 0;
    /// Device-to-driver event records (buffers posted by the driver).
    pub const EVENT: u16 = 1;
    /// Capture buffers queued by the driver, held by the device until a
    /// frame fills them (streaming capture).
    pub const STREAM: u16 = 2;
    /// Number of virtqueues (QEMU `num_vqs`).
    pub const COUNT: u16 = 3;
}

/// Size of the device config space; QEMU's `config_size` must equal it.
pub const CONFIG_SIZE: usize = core::mem::size_of::<Identity>();

const _: () = assert!(CONFIG_SIZE <= 256, "QEMU refuses config_size above 256");

/// Most commands one task file may carry.
pub const MAX_COMMANDS: u32 = 4096;

/// Size of a task-file header in bytes.
pub const TF_HEADER_SIZE: usize = core::mem::size_of::<TaskFileHeader>();

/// Size of one command block in bytes.
pub const CMD_SIZE: usize = core::mem::size_of::<Command>();

/// Largest valid task file in bytes.
pub const MAX_TASK_FILE_SIZE: usize = TF_HEADER_SIZE + MAX_COMMANDS as usize * CMD_SIZE;

/// Task-file op codes, numbered as in the Double X card's design.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Op {
    GetAddress = 0,
    GetRegister = 1,
    SetAddress = 2,
    SetRegister = 3,
    ClearRegister = 4,
    SetToRegister = 5,
    DmaTransferBlock = 6,
    DmaTransferNonBlock = 7,
    /// DMA between card RAM and a registered buffer, named by id and offset.
    DmaBuffer = 8,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::GetAddress,
        Op::GetRegister,
        Op::SetAddress,
        Op::SetRegister,
        Op::ClearRegister,
        Op::SetToRegister,
        Op::DmaTransferBlock,
        Op::DmaTransferNonBlock,
        Op::DmaBuffer,
    ];

    pub fn from_raw(raw: u16) -> Option<Op> {
        Op::ALL.get(usize::from(raw)).copied()
    }

    /// Name used in the C header (`XXCAP_OP_<NAME>`).
    pub fn c_name(self) -> &'static str {
        match self {
            Op::GetAddress => "GET_ADDRESS",
            Op::GetRegister => "GET_REGISTER",
            Op::SetAddress => "SET_ADDRESS",
            Op::SetRegister => "SET_REGISTER",
            Op::ClearRegister => "CLEAR_REGISTER",
            Op::SetToRegister => "SET_TO_REGISTER",
            Op::DmaTransferBlock => "DMA_TRANSFER_BLOCK",
            Op::DmaTransferNonBlock => "DMA_TRANSFER_NONBLOCK",
            Op::DmaBuffer => "DMA_BUFFER",
        }
    }
}

/// Task-file error codes, reported in the header's `error` field. The header's
/// `count` then holds the index of the failing command.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum TfError {
    /// Every command executed.
    Ok = 0,
    /// Unknown op code.
    BadOp = 1,
    /// Unknown register offset, or a register of the wrong width for the op.
    BadRegister = 2,
    /// The command writes bits that are read-only.
    ReadOnly = 3,
    /// The value is not one the register accepts.
    BadValue = 4,
    /// The count is zero, above the maximum, or disagrees with the buffer size.
    BadCount = 5,
    /// A reserved or flags field is not zero.
    Reserved = 6,
    /// The op is defined but this card does not implement it yet.
    NotSupported = 7,
    /// A DMA transfer falls outside card RAM or has an invalid length.
    DmaRange = 8,
    /// A DMA transfer touched memory the caller does not own.
    DmaFault = 9,
    /// The device failed internally; the card was reset.
    Device = 10,
    /// The register cannot change while capture runs.
    Busy = 11,
    /// The request was cancelled before it ran (queued capture buffers
    /// returned by FLUSH_BUFFERS, a capture stop or a device reset).
    Cancelled = 12,
    /// The op is not accepted on this path: raw-address DMA
    /// (DMA_TRANSFER_BLOCK / NONBLOCK) in a task file of the submission
    /// ring, which names memory only by registered buffer.
    Refused = 13,
}

impl TfError {
    pub const ALL: [TfError; 14] = [
        TfError::Ok,
        TfError::BadOp,
        TfError::BadRegister,
        TfError::ReadOnly,
        TfError::BadValue,
        TfError::BadCount,
        TfError::Reserved,
        TfError::NotSupported,
        TfError::DmaRange,
        TfError::DmaFault,
        TfError::Device,
        TfError::Busy,
        TfError::Cancelled,
        TfError::Refused,
    ];

    pub fn from_raw(raw: u32) -> Option<TfError> {
        usize::try_from(raw)
            .ok()
            .and_then(|i| TfError::ALL.get(i))
            .copied()
    }

    pub fn c_name(self) -> &'static str {
        match self {
            TfError::Ok => "OK",
            TfError::BadOp => "BAD_OP",
            TfError::BadRegister => "BAD_REGISTER",
            TfError::ReadOnly => "READ_ONLY",
            TfError::BadValue => "BAD_VALUE",
            TfError::BadCount => "BAD_COUNT",
            TfError::Reserved => "RESERVED",
            TfError::NotSupported => "NOT_SUPPORTED",
            TfError::DmaRange => "DMA_RANGE",
            TfError::DmaFault => "DMA_FAULT",
            TfError::Device => "DEVICE",
            TfError::Busy => "BUSY",
            TfError::Cancelled => "CANCELLED",
            TfError::Refused => "REFUSED",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            TfError::Ok => "success",
            TfError::BadOp => "unknown op code",
            TfError::BadRegister => "unknown register or wrong register width for the op",
            TfError::ReadOnly => "write to read-only bits",
            TfError::BadValue => "value not accepted by the register",
            TfError::BadCount => "command count zero, too large, or inconsistent with the buffer",
            TfError::Reserved => "reserved field not zero",
            TfError::NotSupported => "operation not supported by this card yet",
            TfError::DmaRange => "DMA transfer outside card RAM or invalid length",
            TfError::DmaFault => "DMA transfer touched memory the caller does not own",
            TfError::Device => "internal device error",
            TfError::Busy => "register cannot change while capture runs",
            TfError::Cancelled => "request cancelled before it ran",
            TfError::Refused => "op not accepted on this path (raw-address DMA on the ring)",
        }
    }
}

/// DMA directions (the `reg` field of a DMA command).
pub mod dma_dir {
    /// From the caller's buffer into card RAM.
    pub const TO_CARD: u16 = 0;
    /// From card RAM into the caller's buffer.
    pub const FROM_CARD: u16 = 1;
}

/// Card identity: the device config-space layout (little-endian, read-only)
/// and the result of the GET_INFO ioctl.
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct Identity {
    pub magic: U32,
    pub abi_version: U32,
    pub model: U32,
    pub revision: U32,
    pub capabilities: U32,
    pub max_commands: U32,
    pub card_ram_size: U64,
    pub status: U32,
    pub reserved0: U32,
    pub serial: [u8; 16],
    pub name: [u8; 32],
    pub reserved1: [U32; 2],
}

/// Task-file header. In: `count` commands follow. Out: `error` and, in
/// `count`, the index of the failing command (equal to the input count on
/// success).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct TaskFileHeader {
    pub error: U32,
    pub count: U32,
    pub flags: U32,
    pub reserved: U32,
}

/// One command block. Field use by op:
/// - GetRegister/GetAddress: `reg`; out `value`.
/// - SetRegister/SetAddress: `reg`, `value`.
/// - ClearRegister: `reg`.
/// - SetToRegister: `reg`, `value`, `mask`: bits in `mask` take `value`'s bits.
/// - DMA ops: `reg` is the direction, `value` the caller's buffer address,
///   `mask` the card-RAM offset, `length` the byte count (out: transferred).
/// - DmaBuffer: as the DMA ops, but `flags` is the id of a registered
///   buffer and `value` the offset inside it.
///
/// Unused fields must be zero.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable,
)]
#[repr(C)]
pub struct Command {
    pub op: U16,
    pub reg: U16,
    pub flags: U32,
    pub value: U64,
    pub mask: U64,
    pub length: U64,
}

impl Command {
    /// A command block from raw field values (flags zero): for building
    /// commands the typed `TaskFile` methods refuse to, such as malformed
    /// ones in tests.
    pub fn raw(op: u16, reg: u16, value: u64, mask: u64, length: u64) -> Self {
        Command {
            op: op.into(),
            reg: reg.into(),
            flags: 0.into(),
            value: value.into(),
            mask: mask.into(),
            length: length.into(),
        }
    }
}

/// Copies `text` into a fixed, NUL-padded byte field, truncating so that at
/// least one NUL remains.
pub fn fill_c_string(field: &mut [u8], text: &str) {
    field.fill(0);
    let len = text.len().min(field.len().saturating_sub(1));
    field[..len].copy_from_slice(&text.as_bytes()[..len]);
}

/// Reads a NUL-padded byte field as text (lossy for non-UTF-8 bytes).
pub fn read_c_string(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_the_documented_ones() {
        assert_eq!(CONFIG_SIZE, 96);
        assert_eq!(TF_HEADER_SIZE, 16);
        assert_eq!(CMD_SIZE, 32);
        assert_eq!(core::mem::size_of::<Exec>(), 16);
        assert_eq!(core::mem::size_of::<VqRequest>(), 24);
        assert_eq!(core::mem::size_of::<SgEntry>(), 16);
        assert_eq!(core::mem::size_of::<SlotInfo>(), 32);
        assert!(core::mem::size_of::<StatusBlock>() <= STATUS_BLOCK_SIZE);
        assert_eq!(core::mem::size_of::<VqStatus>(), 16);
        assert_eq!(core::mem::size_of::<Event>(), 64);
        assert_eq!(core::mem::size_of::<Submit>(), 32);
        assert_eq!(core::mem::size_of::<QueueBuffer>(), 40);
        assert_eq!(core::mem::size_of::<Subscribe>(), 8);
        assert_eq!(core::mem::size_of::<StreamResult>(), 32);
        assert_eq!(core::mem::size_of::<BufferDesc>(), 16);
        assert_eq!(core::mem::size_of::<RegisterBuffer>(), 24);
        assert_eq!(event::PER_BUFFER, 64);
        assert_eq!(MAX_TASK_FILE_SIZE, 16 + 4096 * 32);
    }

    #[test]
    fn magic_spells_xxcp() {
        assert_eq!(&MAGIC.to_le_bytes(), b"XXCP");
    }

    #[test]
    fn op_and_error_codes_round_trip() {
        for op in Op::ALL {
            assert_eq!(Op::from_raw(op as u16), Some(op));
        }
        assert_eq!(Op::from_raw(8), Some(Op::DmaBuffer));
        assert_eq!(Op::from_raw(9), None);
        for e in TfError::ALL {
            assert_eq!(TfError::from_raw(e as u32), Some(e));
        }
        assert_eq!(TfError::from_raw(13), Some(TfError::Refused));
        assert_eq!(TfError::from_raw(14), None);
        assert_eq!(TfError::from_raw(u32::MAX), None);
    }

    #[test]
    fn ioctl_numbers_match_linux_encoding() {
        // _IOWR('x', 2, 16 bytes) computed by hand: dir 3, size 16, type 0x78, nr 2.
        assert_eq!(ioctl::EXEC, (3 << 30) | (16 << 16) | (0x78 << 8) | 2);
        assert_eq!(ioctl::GET_INFO, (2 << 30) | (96 << 16) | (0x78 << 8) | 1);
        assert_eq!(ioctl::NOP, 0x7800);
    }

    #[test]
    fn c_strings_truncate_and_terminate() {
        let mut field = [0xffu8; 4];
        fill_c_string(&mut field, "abcdef");
        assert_eq!(&field, b"abc\0");
        assert_eq!(read_c_string(&field), "abc");
        fill_c_string(&mut field, "");
        assert_eq!(read_c_string(&field), "");
    }
}
