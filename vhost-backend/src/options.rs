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
mod tests;
