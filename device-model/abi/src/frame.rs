//! Frames: pixel formats, frame sizes and the frame stamp.
//!
//! Every frame the card produces carries a *stamp*: a fixed 32-byte block at
//! byte 0 of the frame (the start of the packed data for YUYV and RGB24, the
//! start of the Y plane for NV12). It names the frame and its geometry and
//! holds a CRC-32 of the whole frame, so any consumer (backend, guest driver
//! tests, guest library, CLI) can check that a buffer holds exactly the frame
//! the card rendered: [`verify`]. The sources stamp with [`stamp`].
//!
//! Stamp layout, version 1, all fields little-endian:
//!
//! | offset | size | field | value |
//! |---|---|---|---|
//! | 0 | 4 | `magic` | the bytes `"XXFR"` ([`STAMP_MAGIC`]) |
//! | 4 | 2 | `version` | 1 ([`STAMP_VERSION`]) |
//! | 6 | 2 | `reserved` | 0 when written, ignored when read (covered by the checksum) |
//! | 8 | 8 | `frame_number` | the card's frame number N |
//! | 16 | 4 | `format` | pixel-format code ([`crate::format`]: 1 YUYV, 2 NV12, 3 RGB24) |
//! | 20 | 4 | `width` | pixels |
//! | 24 | 4 | `height` | pixels |
//! | 28 | 4 | `checksum` | CRC-32 (IEEE 802.3, as zlib's `crc32()`) of the whole frame, computed with bytes 28..32 taken as zero |
//!
//! The checksum covers every byte of the frame, the stamp included, so a
//! change to any byte outside `magic`/`version` is reported as
//! [`FrameError::Corrupt`]; CRC-32 detects every error burst up to 32 bits
//! long, so a single flipped byte is always caught. crc32fast computes it
//! with carry-less multiplication at over 20 GB/s on this project's machines.

use core::fmt;

use thiserror::Error;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

use crate::{format, regs};

/// First four bytes of every stamped frame.
pub const STAMP_MAGIC: [u8; 4] = *b"XXFR";
/// Version of the stamp layout written by this crate.
pub const STAMP_VERSION: u16 = 1;
/// Size of the stamp in bytes.
pub const STAMP_SIZE: usize = core::mem::size_of::<WireStamp>();
/// Byte offset of the checksum field inside the frame.
pub const CHECKSUM_OFFSET: usize = 28;

/// Pixel formats the card produces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PixelFormat {
    /// Packed 4:2:2, bytes `Y0 U Y1 V` per pixel pair, 2 bytes per pixel.
    Yuyv,
    /// Planar 4:2:0: the Y plane (`width * height` bytes), then interleaved
    /// `U V` pairs at half resolution in both directions.
    Nv12,
    /// Packed `R G B`, 3 bytes per pixel, full range.
    Rgb24,
}

impl PixelFormat {
    pub const ALL: [PixelFormat; 3] = [PixelFormat::Yuyv, PixelFormat::Nv12, PixelFormat::Rgb24];

    /// The format for a FRAME_FORMAT register value.
    pub fn from_code(code: u32) -> Option<PixelFormat> {
        match code {
            format::YUYV => Some(PixelFormat::Yuyv),
            format::NV12 => Some(PixelFormat::Nv12),
            format::RGB24 => Some(PixelFormat::Rgb24),
            _ => None,
        }
    }

    /// The FRAME_FORMAT register value.
    pub fn code(self) -> u32 {
        match self {
            PixelFormat::Yuyv => format::YUYV,
            PixelFormat::Nv12 => format::NV12,
            PixelFormat::Rgb24 => format::RGB24,
        }
    }

    /// Lower-case name: "yuyv", "nv12", "rgb24".
    pub fn name(self) -> &'static str {
        match self {
            PixelFormat::Yuyv => "yuyv",
            PixelFormat::Nv12 => "nv12",
            PixelFormat::Rgb24 => "rgb24",
        }
    }

    /// The format with this name, ignoring ASCII case.
    pub fn from_name(name: &str) -> Option<PixelFormat> {
        PixelFormat::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(name))
    }

    /// Whether the card accepts this frame size: width and height even and
    /// within `regs::MIN_WIDTH..=regs::MAX_WIDTH`, `regs::MIN_HEIGHT..=regs::MAX_HEIGHT`.
    pub fn valid_size(width: u32, height: u32) -> bool {
        width.is_multiple_of(2)
            && height.is_multiple_of(2)
            && (regs::MIN_WIDTH..=regs::MAX_WIDTH).contains(&width)
            && (regs::MIN_HEIGHT..=regs::MAX_HEIGHT).contains(&height)
    }

    /// Bytes of one frame: YUYV `w*h*2`, NV12 `w*h*3/2`, RGB24 `w*h*3`.
    /// `None` when the card does not accept the size ([`Self::valid_size`]).
    pub fn frame_size(self, width: u32, height: u32) -> Option<usize> {
        if !PixelFormat::valid_size(width, height) {
            return None;
        }
        // Both factors are at most 3840 * 2160, far below usize::MAX on any
        // target with 32-bit or wider pointers.
        let pixels = usize::try_from(width).ok()? * usize::try_from(height).ok()?;
        Some(match self {
            PixelFormat::Yuyv => pixels * 2,
            PixelFormat::Nv12 => pixels * 3 / 2,
            PixelFormat::Rgb24 => pixels * 3,
        })
    }
}

impl fmt::Display for PixelFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The stamp as it lies in memory (see the module documentation).
#[derive(Clone, Copy, Debug, Default, FromBytes, IntoBytes, KnownLayout, Immutable)]
#[repr(C)]
pub struct WireStamp {
    pub magic: [u8; 4],
    pub version: U16,
    pub reserved: U16,
    pub frame_number: U64,
    pub format: U32,
    pub width: U32,
    pub height: U32,
    pub checksum: U32,
}

/// A decoded stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Stamp {
    pub frame_number: u64,
    /// Raw pixel-format code as stored; [`PixelFormat::from_code`] decodes it.
    pub format: u32,
    pub width: u32,
    pub height: u32,
    pub checksum: u32,
}

impl Stamp {
    /// The stamp's pixel format, when its code is a known one.
    pub fn pixel_format(&self) -> Option<PixelFormat> {
        PixelFormat::from_code(self.format)
    }

    /// The stamp's bytes as they lie at the start of a frame.
    pub fn to_bytes(&self) -> [u8; STAMP_SIZE] {
        let wire = WireStamp {
            magic: STAMP_MAGIC,
            version: STAMP_VERSION.into(),
            reserved: 0.into(),
            frame_number: self.frame_number.into(),
            format: self.format.into(),
            width: self.width.into(),
            height: self.height.into(),
            checksum: self.checksum.into(),
        };
        let mut out = [0u8; STAMP_SIZE];
        out.copy_from_slice(wire.as_bytes());
        out
    }

    /// Reads the stamp at the start of `frame` without checking the
    /// checksum: errors for a frame shorter than a stamp, a wrong magic or an
    /// unknown version.
    pub fn read(frame: &[u8]) -> Result<Stamp, FrameError> {
        let (wire, _) =
            WireStamp::read_from_prefix(frame).map_err(|_| FrameError::WrongLength {
                expected: STAMP_SIZE,
                actual: frame.len(),
            })?;
        if wire.magic != STAMP_MAGIC {
            return Err(FrameError::BadMagic { found: wire.magic });
        }
        if wire.version.get() != STAMP_VERSION {
            return Err(FrameError::UnsupportedVersion(wire.version.get()));
        }
        Ok(Stamp {
            frame_number: wire.frame_number.get(),
            format: wire.format.get(),
            width: wire.width.get(),
            height: wire.height.get(),
            checksum: wire.checksum.get(),
        })
    }
}

/// Why a frame does not verify, or cannot be stamped.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum FrameError {
    #[error(
        "{width}x{height} is not a frame size the card accepts (even, 320..=3840 x 240..=2160)"
    )]
    BadSize { width: u32, height: u32 },
    #[error("frame is {actual} bytes, expected {expected}")]
    WrongLength { expected: usize, actual: usize },
    #[error("frame has no stamp (magic {found:02x?}, expected \"XXFR\")")]
    BadMagic { found: [u8; 4] },
    #[error("frame stamp version {0} is not supported (expected 1)")]
    UnsupportedVersion(u16),
    #[error("frame stamp names unknown pixel format {0}")]
    UnknownFormat(u32),
    #[error("frame is corrupt: stored checksum {stored:#010x}, computed {computed:#010x}")]
    Corrupt { stored: u32, computed: u32 },
    #[error(
        "frame stamp says format {found_format} {found_width}x{found_height}, expected {expected_format} {expected_width}x{expected_height}"
    )]
    Mismatch {
        expected_format: u32,
        expected_width: u32,
        expected_height: u32,
        found_format: u32,
        found_width: u32,
        found_height: u32,
    },
}

/// CRC-32 of `frame` with the checksum field (bytes 28..32) taken as zero.
/// Defined for any length; a frame shorter than a stamp is hashed with the
/// part of the field it holds taken as zero.
pub fn checksum(frame: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    let head = frame.len().min(CHECKSUM_OFFSET);
    let field_end = frame.len().min(STAMP_SIZE);
    h.update(&frame[..head]);
    h.update(&[0u8; STAMP_SIZE - CHECKSUM_OFFSET][..field_end - head]);
    h.update(&frame[field_end..]);
    h.finalize()
}

/// Checks that a frame of `actual` bytes has the size of `fmt` at
/// `width` x `height`, a size the card accepts.
fn check_len(fmt: PixelFormat, width: u32, height: u32, actual: usize) -> Result<(), FrameError> {
    let expected = fmt
        .frame_size(width, height)
        .ok_or(FrameError::BadSize { width, height })?;
    if actual != expected {
        return Err(FrameError::WrongLength { expected, actual });
    }
    Ok(())
}

/// Writes the stamp for frame `frame_number` into the first [`STAMP_SIZE`]
/// bytes of `frame` and returns it. Call it after every other byte of the
/// frame is final: the checksum covers them all. `frame` must be exactly
/// `fmt.frame_size(width, height)` bytes.
pub fn stamp(
    frame: &mut [u8],
    frame_number: u64,
    fmt: PixelFormat,
    width: u32,
    height: u32,
) -> Result<Stamp, FrameError> {
    check_len(fmt, width, height, frame.len())?;
    let mut s = Stamp {
        frame_number,
        format: fmt.code(),
        width,
        height,
        checksum: 0,
    };
    // The valid sizes make every frame far longer than a stamp.
    frame[..STAMP_SIZE].copy_from_slice(&s.to_bytes());
    s.checksum = checksum(frame);
    frame[CHECKSUM_OFFSET..STAMP_SIZE].copy_from_slice(&s.checksum.to_le_bytes());
    Ok(s)
}

/// Checks that `frame` is a complete, intact frame of the given format and
/// size, and returns its stamp. Checks, in order: the size is one the card
/// accepts, the length matches it, the magic and version, the checksum, and
/// finally that the stamp names this format and size.
pub fn verify(
    frame: &[u8],
    fmt: PixelFormat,
    width: u32,
    height: u32,
) -> Result<Stamp, FrameError> {
    check_len(fmt, width, height, frame.len())?;
    let s = check_intact(frame)?;
    if (s.format, s.width, s.height) != (fmt.code(), width, height) {
        return Err(FrameError::Mismatch {
            expected_format: fmt.code(),
            expected_width: width,
            expected_height: height,
            found_format: s.format,
            found_width: s.width,
            found_height: s.height,
        });
    }
    Ok(s)
}

/// Magic, version and checksum.
fn check_intact(frame: &[u8]) -> Result<Stamp, FrameError> {
    let s = Stamp::read(frame)?;
    let computed = checksum(frame);
    if computed != s.checksum {
        return Err(FrameError::Corrupt {
            stored: s.checksum,
            computed,
        });
    }
    Ok(s)
}

/// Checks `frame` against its own stamp: magic, version and checksum, then
/// that the stamped format and size are valid and match the frame's length.
/// For consumers that do not know what to expect.
pub fn verify_any(frame: &[u8]) -> Result<Stamp, FrameError> {
    let s = check_intact(frame)?;
    let fmt = s
        .pixel_format()
        .ok_or(FrameError::UnknownFormat(s.format))?;
    check_len(fmt, s.width, s.height, frame.len())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SMALL: (u32, u32) = (320, 240);

    fn frame_of(fmt: PixelFormat, w: u32, h: u32, seed: u8) -> Vec<u8> {
        let len = fmt.frame_size(w, h).expect("valid size");
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn layout_is_the_documented_one() {
        assert_eq!(STAMP_SIZE, 32);
        let s = Stamp {
            frame_number: 0x0102_0304_0506_0708,
            format: format::NV12,
            width: 1920,
            height: 1080,
            checksum: 0xdead_beef,
        };
        let b = s.to_bytes();
        assert_eq!(&b[0..4], b"XXFR");
        assert_eq!(&b[4..6], &[1, 0]);
        assert_eq!(&b[6..8], &[0, 0]);
        assert_eq!(&b[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(&b[16..20], &2u32.to_le_bytes());
        assert_eq!(&b[20..24], &1920u32.to_le_bytes());
        assert_eq!(&b[24..28], &1080u32.to_le_bytes());
        assert_eq!(&b[CHECKSUM_OFFSET..32], &0xdead_beefu32.to_le_bytes());
        assert_eq!(Stamp::read(&b), Ok(s));
    }

    #[test]
    fn formats_round_trip_and_sizes() {
        for f in PixelFormat::ALL {
            assert_eq!(PixelFormat::from_code(f.code()), Some(f));
            assert_eq!(PixelFormat::from_name(f.name()), Some(f));
            assert_eq!(PixelFormat::from_name(&f.name().to_uppercase()), Some(f));
            assert_eq!(f.to_string(), f.name());
        }
        assert_eq!(PixelFormat::Yuyv.code(), 1);
        assert_eq!(PixelFormat::Nv12.code(), 2);
        assert_eq!(PixelFormat::Rgb24.code(), 3);
        assert_eq!(PixelFormat::from_code(0), None);
        assert_eq!(PixelFormat::from_code(4), None);
        assert_eq!(PixelFormat::from_name("i420"), None);
        assert_eq!(
            PixelFormat::Yuyv.frame_size(1920, 1080),
            Some(1920 * 1080 * 2)
        );
        assert_eq!(
            PixelFormat::Nv12.frame_size(1920, 1080),
            Some(1920 * 1080 * 3 / 2)
        );
        assert_eq!(
            PixelFormat::Rgb24.frame_size(3840, 2160),
            Some(3840 * 2160 * 3)
        );
        assert_eq!(PixelFormat::Yuyv.frame_size(320, 240), Some(320 * 240 * 2));
        for (w, h) in [
            (321, 240),
            (320, 241),
            (318, 240),
            (320, 238),
            (3842, 2160),
            (3840, 2162),
            (0, 0),
            (u32::MAX, u32::MAX),
        ] {
            for f in PixelFormat::ALL {
                assert_eq!(f.frame_size(w, h), None, "{f} {w}x{h}");
            }
        }
    }

    #[test]
    fn stamp_then_verify_at_every_format_and_size() {
        for f in PixelFormat::ALL {
            for (w, h) in [(320, 240), (1920, 1080), (3840, 2160)] {
                let mut frame = frame_of(f, w, h, 7);
                let s = stamp(&mut frame, 42, f, w, h).expect("stamp");
                assert_eq!(s.frame_number, 42);
                assert_eq!(s.pixel_format(), Some(f));
                assert_eq!(verify(&frame, f, w, h), Ok(s));
                assert_eq!(verify_any(&frame), Ok(s));
            }
        }
    }

    #[test]
    fn checksum_is_plain_crc32_with_the_field_zeroed() {
        let (w, h) = SMALL;
        let mut frame = frame_of(PixelFormat::Yuyv, w, h, 1);
        let s = stamp(&mut frame, 9, PixelFormat::Yuyv, w, h).expect("stamp");
        let mut zeroed = frame.clone();
        zeroed[CHECKSUM_OFFSET..STAMP_SIZE].fill(0);
        assert_eq!(s.checksum, crc32fast::hash(&zeroed));
        // Re-stamping a stamped frame gives the same bytes.
        let before = frame.clone();
        stamp(&mut frame, 9, PixelFormat::Yuyv, w, h).expect("stamp");
        assert_eq!(frame, before);
        // The check value of CRC-32/IEEE; a 9-byte input has no checksum
        // field, so this is the plain CRC.
        assert_eq!(checksum(b"123456789"), 0xcbf4_3926);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let f = PixelFormat::Nv12;
        let (w, h) = SMALL;
        let mut frame = frame_of(f, w, h, 3);
        stamp(&mut frame, 5, f, w, h).expect("stamp");
        // Every byte of the stamp and its neighbourhood, then a sample of the
        // rest (each check hashes the whole frame; the proptest below flips
        // arbitrary positions).
        let positions = (0..64)
            .chain((64..frame.len()).step_by(487))
            .chain([frame.len() - 1]);
        for i in positions {
            for flip in [0x01u8, 0x80, 0xff] {
                frame[i] ^= flip;
                let err = verify(&frame, f, w, h).expect_err("corruption must be detected");
                if i < 4 {
                    assert!(
                        matches!(err, FrameError::BadMagic { .. }),
                        "byte {i}: {err}"
                    );
                } else if i < 6 {
                    assert!(
                        matches!(err, FrameError::UnsupportedVersion(_)),
                        "byte {i}: {err}"
                    );
                } else {
                    assert!(matches!(err, FrameError::Corrupt { .. }), "byte {i}: {err}");
                }
                frame[i] ^= flip;
            }
        }
        assert!(verify(&frame, f, w, h).is_ok());
    }

    #[test]
    fn wrong_expectations_are_errors() {
        let (w, h) = SMALL;
        let mut frame = frame_of(PixelFormat::Yuyv, w, h, 0);
        stamp(&mut frame, 1, PixelFormat::Yuyv, w, h).expect("stamp");
        // 320x240 YUYV has as many bytes as 320x320 NV12.
        assert_eq!(
            verify(&frame, PixelFormat::Nv12, 320, 320),
            Err(FrameError::Mismatch {
                expected_format: format::NV12,
                expected_width: 320,
                expected_height: 320,
                found_format: format::YUYV,
                found_width: 320,
                found_height: 240,
            })
        );
        // A buffer of the expected length whose intact stamp names another
        // frame.
        let mut rgb = frame_of(PixelFormat::Rgb24, w, h, 0);
        stamp(&mut rgb, 1, PixelFormat::Rgb24, w, h).expect("stamp");
        assert!(matches!(
            verify(&rgb, PixelFormat::Yuyv, 480, 240),
            Err(FrameError::Mismatch {
                found_format: 3,
                found_width: 320,
                ..
            })
        ));
        assert_eq!(
            verify(&frame, PixelFormat::Rgb24, w, h),
            Err(FrameError::WrongLength {
                expected: 320 * 240 * 3,
                actual: 320 * 240 * 2
            })
        );
        assert_eq!(
            verify(&frame, PixelFormat::Yuyv, 321, 240),
            Err(FrameError::BadSize {
                width: 321,
                height: 240
            })
        );
        assert!(matches!(
            verify(&frame[..frame.len() - 1], PixelFormat::Yuyv, w, h),
            Err(FrameError::WrongLength { .. })
        ));
        let unstamped = frame_of(PixelFormat::Yuyv, w, h, 0);
        assert!(matches!(
            verify(&unstamped, PixelFormat::Yuyv, w, h),
            Err(FrameError::BadMagic { .. })
        ));
        let mut short = vec![0u8; 100];
        assert!(matches!(
            stamp(&mut short, 0, PixelFormat::Yuyv, w, h),
            Err(FrameError::WrongLength {
                expected: 153_600,
                actual: 100
            })
        ));
        assert!(matches!(
            stamp(&mut short, 0, PixelFormat::Yuyv, 2, 2),
            Err(FrameError::BadSize { .. })
        ));
        assert!(matches!(
            verify_any(&[]),
            Err(FrameError::WrongLength { .. })
        ));
    }

    #[test]
    fn verify_any_checks_the_stamped_geometry() {
        let (w, h) = SMALL;
        let mut frame = frame_of(PixelFormat::Rgb24, w, h, 0);
        stamp(&mut frame, 1, PixelFormat::Rgb24, w, h).expect("stamp");
        // A stamp with a valid checksum that claims an unknown format.
        frame[16..20].copy_from_slice(&9u32.to_le_bytes());
        let c = checksum(&frame);
        frame[CHECKSUM_OFFSET..STAMP_SIZE].copy_from_slice(&c.to_le_bytes());
        assert_eq!(verify_any(&frame), Err(FrameError::UnknownFormat(9)));
        // A stamp that claims a size the frame does not have.
        frame[16..20].copy_from_slice(&format::YUYV.to_le_bytes());
        let c = checksum(&frame);
        frame[CHECKSUM_OFFSET..STAMP_SIZE].copy_from_slice(&c.to_le_bytes());
        assert!(matches!(
            verify_any(&frame),
            Err(FrameError::WrongLength { .. })
        ));
    }

    fn any_format() -> impl Strategy<Value = PixelFormat> {
        prop::sample::select(PixelFormat::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn verify_never_panics_on_arbitrary_bytes(
            bytes in prop::collection::vec(any::<u8>(), 0..4096),
            fmt in any_format(),
            w in any::<u32>(),
            h in any::<u32>(),
        ) {
            let _ = verify(&bytes, fmt, w, h);
            let _ = verify_any(&bytes);
            let _ = Stamp::read(&bytes);
            let _ = checksum(&bytes);
            let mut copy = bytes.clone();
            let _ = stamp(&mut copy, 0, fmt, w, h);
        }

        #[test]
        fn arbitrary_stamp_prefix_never_verifies_unless_intact(
            head in prop::collection::vec(any::<u8>(), STAMP_SIZE..=STAMP_SIZE),
            fmt in any_format(),
        ) {
            // A random stamp over a valid-size frame: whatever it holds, verify
            // returns without panicking and only accepts a matching checksum.
            let (w, h) = SMALL;
            let mut frame = frame_of(fmt, w, h, 11);
            frame[..STAMP_SIZE].copy_from_slice(&head);
            if let Ok(s) = verify(&frame, fmt, w, h) {
                prop_assert_eq!(s.checksum, checksum(&frame));
            }
        }

        #[test]
        fn stamped_frames_round_trip(
            n in any::<u64>(),
            fmt in any_format(),
            seed in any::<u8>(),
            flip_at in any::<prop::sample::Index>(),
        ) {
            let (w, h) = SMALL;
            let mut frame = frame_of(fmt, w, h, seed);
            let s = stamp(&mut frame, n, fmt, w, h).expect("stamp");
            prop_assert_eq!(verify(&frame, fmt, w, h), Ok(s));
            prop_assert_eq!(s.frame_number, n);
            let i = flip_at.index(frame.len());
            frame[i] ^= 0x10;
            prop_assert!(verify(&frame, fmt, w, h).is_err());
        }
    }
}
