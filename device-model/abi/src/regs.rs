//! The register map: offsets, widths, access kinds, writable-bit masks and
//! value rules. The model executes from this table, the guest driver
//! validates from a C table generated from it (`guest-driver/xxcapture_dev.h`).

use crate::{control, format, irq, source};

/// Register width. 32-bit registers take the register ops, 64-bit ones the
/// address ops (GetAddress/SetAddress).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    W32,
    W64,
}

/// How writes act on a register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// Read-only: every write is refused.
    ReadOnly,
    /// Plain read/write of the bits in the writable mask.
    ReadWrite,
    /// Write-1-to-clear side effect on another register; reads as 0.
    WriteOneToClear,
    /// Write-1-to-set side effect on another register; reads as 0.
    WriteOneToSet,
}

/// Values a register accepts beyond its writable mask.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ValueRule {
    /// Any value within the writable mask.
    Any,
    /// One of the listed values.
    OneOf(&'static [u32]),
    /// An even value in `min..=max` (frame sizes).
    EvenRange { min: u32, max: u32 },
    /// A value in `min..=max`.
    Range { min: u32, max: u32 },
    /// A card-RAM offset: below the card's RAM size (checked by the card).
    CardRamOffset,
}

impl ValueRule {
    /// Code used in the generated C table.
    pub fn c_kind(self) -> &'static str {
        match self {
            ValueRule::Any => "XXCAP_RULE_ANY",
            ValueRule::OneOf(_) => "XXCAP_RULE_ONE_OF",
            ValueRule::EvenRange { .. } => "XXCAP_RULE_EVEN_RANGE",
            ValueRule::Range { .. } => "XXCAP_RULE_RANGE",
            ValueRule::CardRamOffset => "XXCAP_RULE_CARD_RAM_OFFSET",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RegisterDesc {
    /// Name without prefix; the C constant is `XXCAP_REG_<NAME>`.
    pub name: &'static str,
    /// Byte offset in the register window; the `reg` field of a command.
    pub offset: u16,
    pub width: Width,
    pub access: Access,
    /// Bits a write may set or clear.
    pub writable: u64,
    pub rule: ValueRule,
    pub doc: &'static str,
}

impl RegisterDesc {
    pub fn is_writable(&self) -> bool {
        self.access != Access::ReadOnly && self.writable != 0
    }
}

const fn reg32(
    name: &'static str,
    offset: u16,
    access: Access,
    writable: u32,
    rule: ValueRule,
    doc: &'static str,
) -> RegisterDesc {
    RegisterDesc {
        name,
        offset,
        width: Width::W32,
        access,
        writable: writable as u64,
        rule,
        doc,
    }
}

const fn reg64(
    name: &'static str,
    offset: u16,
    access: Access,
    writable: u64,
    rule: ValueRule,
    doc: &'static str,
) -> RegisterDesc {
    RegisterDesc {
        name,
        offset,
        width: Width::W64,
        access,
        writable,
        rule,
        doc,
    }
}

use Access::{ReadOnly, ReadWrite, WriteOneToClear, WriteOneToSet};
use ValueRule::{Any, CardRamOffset, EvenRange, OneOf, Range};

pub const ID: u16 = 0x000;
pub const VERSION: u16 = 0x004;
pub const CAPS: u16 = 0x008;
pub const CONTROL: u16 = 0x00C;
pub const STATUS: u16 = 0x010;
pub const INT_STATUS: u16 = 0x014;
pub const INT_MASK: u16 = 0x018;
pub const INT_ACK: u16 = 0x01C;
pub const INT_RAISE: u16 = 0x020;
pub const INT_COALESCE_COUNT: u16 = 0x024;
pub const INT_COALESCE_USEC: u16 = 0x028;
pub const DMA_LENGTH: u16 = 0x02C;
pub const DMA_DIRECTION: u16 = 0x030;
pub const DMA_TRANSFERRED: u16 = 0x034;
pub const FRAME_FORMAT: u16 = 0x038;
pub const FRAME_WIDTH: u16 = 0x03C;
pub const FRAME_HEIGHT: u16 = 0x040;
pub const FRAME_RATE: u16 = 0x044;
pub const FRAME_COUNTER: u16 = 0x048;
pub const CARD_RAM_PAGES: u16 = 0x04C;
pub const SCRATCH: u16 = 0x050;
pub const REQUEST_COUNT: u16 = 0x054;
pub const COMMAND_COUNT: u16 = 0x058;
pub const RING_SLOTS: u16 = 0x05C;
pub const RING_SLOT_SIZE: u16 = 0x060;
pub const FRAME_SOURCE: u16 = 0x064;
pub const DROPPED_FRAMES: u16 = 0x068;
pub const RING_RELEASE: u16 = 0x06C;
pub const EVENT_COUNT: u16 = 0x070;
pub const EVENTS_LOST: u16 = 0x074;
pub const FAULTS_INJECTED: u16 = 0x078;
pub const DMA_CARD_ADDR: u16 = 0x100;
pub const SCRATCH64: u16 = 0x108;
pub const DEVICE_TIME_NS: u16 = 0x110;

/// Frame size limits.
pub const MIN_WIDTH: u32 = 320;
pub const MAX_WIDTH: u32 = 3840;
pub const MIN_HEIGHT: u32 = 240;
pub const MAX_HEIGHT: u32 = 2160;
/// Highest frame rate in frames per second; 0 means free-running.
pub const MAX_FRAME_RATE: u32 = 1000;

/// The register map, sorted by offset.
#[rustfmt::skip]
pub const REGISTERS: &[RegisterDesc] = &[
    reg32("ID", ID, ReadOnly, 0, Any, "Card magic, \"XXCP\""),
    reg32("VERSION", VERSION, ReadOnly, 0, Any, "ABI version (major << 16 | minor)"),
    reg32("CAPS", CAPS, ReadOnly, 0, Any, "Capability bits (XXCAP_CAP_*)"),
    reg32(
        "CONTROL",
        CONTROL,
        ReadWrite,
        control::ENABLE | control::CAPTURE | control::DMA_RESET | control::STREAM,
        Any,
        "Control bits (XXCAP_CONTROL_*); DMA_RESET self-clears; STREAM is BUSY while capturing",
    ),
    reg32("STATUS", STATUS, ReadOnly, 0, Any, "Status bits (XXCAP_STATUS_*)"),
    reg32("INT_STATUS", INT_STATUS, ReadOnly, 0, Any, "Pending interrupt causes (XXCAP_IRQ_*)"),
    reg32("INT_MASK", INT_MASK, ReadWrite, irq::ALL, Any, "Enabled interrupt causes"),
    reg32(
        "INT_ACK",
        INT_ACK,
        WriteOneToClear,
        irq::ALL,
        Any,
        "Write 1 to clear a pending cause; reads 0",
    ),
    reg32(
        "INT_RAISE",
        INT_RAISE,
        WriteOneToSet,
        irq::TEST,
        Any,
        "Write 1 to raise a cause (TEST only); reads 0",
    ),
    reg32(
        "INT_COALESCE_COUNT",
        INT_COALESCE_COUNT,
        ReadWrite,
        0xFFFF,
        Any,
        "Deliver after this many events (0 or 1: each event)",
    ),
    reg32(
        "INT_COALESCE_USEC",
        INT_COALESCE_USEC,
        ReadWrite,
        0x000F_FFFF,
        Range { min: 0, max: 1_000_000 },
        "Or after this many microseconds (0: no time limit)",
    ),
    reg32("DMA_LENGTH", DMA_LENGTH, ReadWrite, 0xFFFF_FFFF, Any, "Length of the programmed transfer"),
    reg32(
        "DMA_DIRECTION",
        DMA_DIRECTION,
        ReadWrite,
        1,
        Any,
        "0: to card, 1: from card (XXCAP_DMA_*)",
    ),
    reg32("DMA_TRANSFERRED", DMA_TRANSFERRED, ReadOnly, 0, Any, "Bytes moved by the last transfer"),
    reg32(
        "FRAME_FORMAT",
        FRAME_FORMAT,
        ReadWrite,
        0xFF,
        OneOf(&[format::YUYV, format::NV12, format::RGB24]),
        "Pixel format (XXCAP_FORMAT_*)",
    ),
    reg32(
        "FRAME_WIDTH",
        FRAME_WIDTH,
        ReadWrite,
        0x1FFF,
        EvenRange { min: MIN_WIDTH, max: MAX_WIDTH },
        "Frame width in pixels, even",
    ),
    reg32(
        "FRAME_HEIGHT",
        FRAME_HEIGHT,
        ReadWrite,
        0x1FFF,
        EvenRange { min: MIN_HEIGHT, max: MAX_HEIGHT },
        "Frame height in pixels, even",
    ),
    reg32(
        "FRAME_RATE",
        FRAME_RATE,
        ReadWrite,
        0x3FF,
        Range { min: 0, max: MAX_FRAME_RATE },
        "Frames per second; 0: free-running",
    ),
    reg32("FRAME_COUNTER", FRAME_COUNTER, ReadOnly, 0, Any, "Frames captured since capture start"),
    reg32("CARD_RAM_PAGES", CARD_RAM_PAGES, ReadOnly, 0, Any, "Card RAM size in 4 KiB pages"),
    reg32("SCRATCH", SCRATCH, ReadWrite, 0xFFFF_FFFF, Any, "Scratch register, no effect"),
    reg32(
        "REQUEST_COUNT",
        REQUEST_COUNT,
        ReadOnly,
        0,
        Any,
        "Command-queue requests executed since the device started",
    ),
    reg32(
        "COMMAND_COUNT",
        COMMAND_COUNT,
        ReadOnly,
        0,
        Any,
        "Task-file commands executed since the device started",
    ),
    reg32("RING_SLOTS", RING_SLOTS, ReadOnly, 0, Any, "Slots in the capture ring (set at capture start)"),
    reg32("RING_SLOT_SIZE", RING_SLOT_SIZE, ReadOnly, 0, Any, "Bytes per ring slot (frame size rounded up to 4 KiB)"),
    reg32(
        "FRAME_SOURCE",
        FRAME_SOURCE,
        ReadWrite,
        0x1,
        OneOf(&[source::TEST_PATTERN, source::FILE]),
        "0: test pattern, 1: the file given to xxcapd --source-file",
    ),
    reg32("DROPPED_FRAMES", DROPPED_FRAMES, ReadOnly, 0, Any, "Frames dropped since capture start"),
    reg32(
        "RING_RELEASE",
        RING_RELEASE,
        ReadWrite,
        0xFFFF_FFFF,
        Any,
        "Free-running capture: frames below this number are consumed and may be overwritten (0 at capture start)",
    ),
    reg32("EVENT_COUNT", EVENT_COUNT, ReadOnly, 0, Any, "Event records generated since reset (posted or lost)"),
    reg32("EVENTS_LOST", EVENTS_LOST, ReadOnly, 0, Any, "Event records lost since reset: no event buffer and the backlog full"),
    reg32(
        "FAULTS_INJECTED",
        FAULTS_INJECTED,
        ReadOnly,
        0,
        Any,
        "Faults the backend injected since it started (0 unless faults were armed)",
    ),
    reg64(
        "DMA_CARD_ADDR",
        DMA_CARD_ADDR,
        ReadWrite,
        u64::MAX,
        CardRamOffset,
        "Card-RAM offset of the programmed transfer",
    ),
    reg64("SCRATCH64", SCRATCH64, ReadWrite, u64::MAX, Any, "64-bit scratch register"),
    reg64(
        "DEVICE_TIME_NS",
        DEVICE_TIME_NS,
        ReadOnly,
        0,
        Any,
        "Device clock in nanoseconds since the device started",
    ),
];

/// Looks a register up by offset.
pub fn find(offset: u16) -> Option<&'static RegisterDesc> {
    REGISTERS.iter().find(|r| r.offset == offset)
}

/// Looks a register up by name, case-insensitively.
pub fn find_by_name(name: &str) -> Option<&'static RegisterDesc> {
    REGISTERS.iter().find(|r| r.name.eq_ignore_ascii_case(name))
}

/// Checks a value against a register's static rule. `CardRamOffset` needs the
/// card's RAM size and is left to the caller.
pub fn value_allowed(desc: &RegisterDesc, value: u64) -> bool {
    let narrow = u32::try_from(value);
    match desc.rule {
        ValueRule::Any | ValueRule::CardRamOffset => true,
        ValueRule::OneOf(allowed) => narrow.is_ok_and(|v| allowed.contains(&v)),
        ValueRule::EvenRange { min, max } => {
            narrow.is_ok_and(|v| v % 2 == 0 && (min..=max).contains(&v))
        }
        ValueRule::Range { min, max } => narrow.is_ok_and(|v| (min..=max).contains(&v)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_sorted_unique_and_aligned() {
        for pair in REGISTERS.windows(2) {
            assert!(
                pair[0].offset < pair[1].offset,
                "{} out of order",
                pair[1].name
            );
        }
        for r in REGISTERS {
            let align = match r.width {
                Width::W32 => 4,
                Width::W64 => 8,
            };
            assert_eq!(r.offset % align, 0, "{} misaligned", r.name);
            if r.width == Width::W32 {
                assert!(
                    r.writable <= u64::from(u32::MAX),
                    "{} mask too wide",
                    r.name
                );
            }
            if r.access == Access::ReadOnly {
                assert_eq!(
                    r.writable, 0,
                    "{} is read-only but has writable bits",
                    r.name
                );
            } else {
                assert_ne!(
                    r.writable, 0,
                    "{} is writable without writable bits",
                    r.name
                );
            }
        }
    }

    #[test]
    fn lookups() {
        assert_eq!(find(SCRATCH).map(|r| r.name), Some("SCRATCH"));
        assert_eq!(find(0x002), None);
        assert_eq!(find_by_name("scratch64").map(|r| r.offset), Some(SCRATCH64));
    }

    #[test]
    fn value_rules() {
        let width = find(FRAME_WIDTH).expect("FRAME_WIDTH");
        assert!(value_allowed(width, 1920));
        assert!(!value_allowed(width, 1921));
        assert!(!value_allowed(width, 318));
        assert!(!value_allowed(width, 3842));
        let fmt = find(FRAME_FORMAT).expect("FRAME_FORMAT");
        assert!(value_allowed(fmt, u64::from(format::NV12)));
        assert!(!value_allowed(fmt, 0));
        assert!(!value_allowed(fmt, 1 << 40));
    }
}
