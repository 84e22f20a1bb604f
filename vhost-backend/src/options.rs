//! Command-line values: sizes with suffixes, and the QEMU options that go
//! with a socket.

use std::path::Path;

use thiserror::Error;
use xxcapture_abi::frame::PixelFormat;
use xxcapture_abi::{queue, regs, CONFIG_SIZE};

/// The `vq_size` xxcapd asks QEMU for (the backend accepts up to 1024).
pub const QEMU_VQ_SIZE: u32 = 256;

#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    #[error("size {0:?} is empty")]
    Empty(String),
    #[error("size {0:?} is not a number with an optional K, M or G suffix")]
    Malformed(String),
    #[error("size {0:?} does not fit in 64 bits")]
    Overflow(String),
}

/// Parses `123`, `64K`, `64M`, `4G` (binary units; `KiB`/`MiB`/`GiB` and a
/// trailing `B` are accepted too, case-insensitive).
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty(text.to_owned()));
    }
    let upper = trimmed.to_ascii_uppercase();
    let digits_end = upper
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(upper.len());
    let (digits, suffix) = upper.split_at(digits_end);
    if digits.is_empty() {
        return Err(SizeError::Malformed(text.to_owned()));
    }
    let shift = match suffix {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        _ => return Err(SizeError::Malformed(text.to_owned())),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| SizeError::Overflow(text.to_owned()))?;
    value
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::Overflow(text.to_owned()))
}

/// Parses a frame size `WxH` the card accepts (even, 320..=3840 x 240..=2160).
pub fn parse_frame_size(text: &str) -> Result<(u32, u32), String> {
    let (w, h) = text
        .split_once(['x', 'X'])
        .ok_or_else(|| format!("frame size {text:?} is not WIDTHxHEIGHT"))?;
    let parse = |v: &str| v.trim().parse::<u32>().ok();
    let (Some(width), Some(height)) = (parse(w), parse(h)) else {
        return Err(format!("frame size {text:?} is not WIDTHxHEIGHT"));
    };
    if !PixelFormat::valid_size(width, height) {
        return Err(format!(
            "frame size {width}x{height} is not one the card accepts (even, {}..={} x {}..={})",
            regs::MIN_WIDTH,
            regs::MAX_WIDTH,
            regs::MIN_HEIGHT,
            regs::MAX_HEIGHT
        ));
    }
    Ok((width, height))
}

/// Parses a pixel-format name: `yuyv`, `nv12` or `rgb24`.
pub fn parse_pixel_format(text: &str) -> Result<PixelFormat, String> {
    PixelFormat::from_name(text)
        .ok_or_else(|| format!("pixel format {text:?} is not yuyv, nv12 or rgb24"))
}

/// Formats a byte count the way QEMU's `size=` and `-m` accept it.
pub fn qemu_size(bytes: u64) -> String {
    for (shift, suffix) in [(30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// Doubles commas, as QEMU's option parser needs inside a value.
fn qemu_escape(value: &str) -> String {
    value.replace(',', ",,")
}

/// The QEMU options for one xxcapd socket, one option with its argument per
/// line, in the order QEMU needs them.
pub fn qemu_args(socket: &Path, virtio_id: u32, guest_ram: u64) -> Vec<String> {
    let ram = qemu_size(guest_ram);
    let path = qemu_escape(&socket.to_string_lossy());
    vec![
        format!("-object memory-backend-memfd,id=mem,size={ram},share=on"),
        "-numa node,memdev=mem".to_owned(),
        format!("-m {ram}"),
        format!("-chardev socket,id=xxcap0,path={path}"),
        format!(
            "-device vhost-user-test-device-pci,id=card0,chardev=xxcap0,virtio-id={virtio_id},num_vqs={},vq_size={QEMU_VQ_SIZE},config_size={CONFIG_SIZE}",
            queue::COUNT
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size("4G"), Ok(4 << 30));
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size(" 1g "), Ok(1 << 30));
        assert!(matches!(parse_size(""), Err(SizeError::Empty(_))));
        assert!(matches!(parse_size("M"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("12X"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("-1M"), Err(SizeError::Malformed(_))));
        assert!(matches!(parse_size("1.5G"), Err(SizeError::Malformed(_))));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::Overflow(_))
        ));
        assert!(matches!(
            parse_size("17179869184G"),
            Err(SizeError::Overflow(_))
        ));
    }

    #[test]
    fn frame_sizes_and_formats_parse() {
        assert_eq!(parse_frame_size("1920x1080"), Ok((1920, 1080)));
        assert_eq!(parse_frame_size("640X480"), Ok((640, 480)));
        assert!(parse_frame_size("641x480").is_err());
        assert!(parse_frame_size("1920").is_err());
        assert!(parse_frame_size("x").is_err());
        assert!(parse_frame_size("7680x4320").is_err());
        assert_eq!(parse_pixel_format("nv12"), Ok(PixelFormat::Nv12));
        assert!(parse_pixel_format("mjpeg").is_err());
    }

    #[test]
    fn qemu_sizes_use_the_largest_unit() {
        assert_eq!(qemu_size(1 << 30), "1G");
        assert_eq!(qemu_size(1536 << 20), "1536M");
        assert_eq!(qemu_size(12345), "12345");
    }

    #[test]
    fn qemu_args_escape_commas_and_match_the_abi() {
        let args = qemu_args(Path::new("/tmp/a,b.sock"), 31, 1 << 30);
        assert_eq!(args[3], "-chardev socket,id=xxcap0,path=/tmp/a,,b.sock");
        assert_eq!(
            args[4],
            "-device vhost-user-test-device-pci,id=card0,chardev=xxcap0,virtio-id=31,num_vqs=3,vq_size=256,config_size=96"
        );
    }
}
