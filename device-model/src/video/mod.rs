//! The card's video source: what the capture engine "sees" on its input.
//!
//! A [`VideoSource`] renders frame N into a caller-owned buffer of exactly
//! one frame and stamps it ([`xxcapture_abi::frame`]), so every consumer can
//! verify what it received with [`xxcapture_abi::frame::verify`]. Two sources:
//!
//! - [`TestPattern`]: 75% colour bars with a moving box and the frame number
//!   drawn as bits; frame N is a pure function of N, the format and the size.
//! - [`FileSource`]: frames from a raw file or a Y4M file, looping.
//!
//! The sources keep no clock: the caller (the backend's capture thread)
//! decides which frame number to render and when. [`FileSource`] is the one
//! part of this crate that does I/O: it reads its file, one frame per render.

mod colour;
mod file;
mod pattern;

use std::io;
use std::path::PathBuf;

use thiserror::Error;
use xxcapture_abi::frame::{FrameError, Stamp};

pub use file::{FileKind, FileSource};
pub use pattern::TestPattern;
pub use xxcapture_abi::frame::PixelFormat;

/// A producer of stamped frames.
pub trait VideoSource {
    /// Pixel format, width and height of every frame this source renders.
    fn format(&self) -> (PixelFormat, u32, u32);

    /// Bytes of one frame: the length `render` requires.
    fn frame_size(&self) -> usize;

    /// Renders frame `frame_number` into `out`, which must be exactly
    /// [`Self::frame_size`] bytes, stamps it with that number and returns the
    /// stamp. Errors (never panics) for a wrongly sized buffer or a failed
    /// read; `out` holds unspecified bytes after an error.
    fn render(&mut self, frame_number: u64, out: &mut [u8]) -> Result<Stamp, VideoError>;
}

impl<S: VideoSource + ?Sized> VideoSource for Box<S> {
    fn format(&self) -> (PixelFormat, u32, u32) {
        (**self).format()
    }

    fn frame_size(&self) -> usize {
        (**self).frame_size()
    }

    fn render(&mut self, frame_number: u64, out: &mut [u8]) -> Result<Stamp, VideoError> {
        (**self).render(frame_number, out)
    }
}

#[derive(Debug, Error)]
pub enum VideoError {
    #[error("{format} {width}x{height} is not a frame size the card accepts (even, 320..=3840 x 240..=2160)")]
    BadSize {
        format: PixelFormat,
        width: u32,
        height: u32,
    },
    #[error("output buffer is {actual} bytes, a frame is {expected}")]
    BufferSize { expected: usize, actual: usize },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{}: holds no complete frame ({file_len} bytes; one frame is {frame_size} bytes)", path.display())]
    NoFrames {
        path: PathBuf,
        file_len: u64,
        frame_size: usize,
    },
    #[error("{}: not a usable Y4M file: {reason}", path.display())]
    Y4m { path: PathBuf, reason: String },
    #[error("{}: Y4M colourspace {colorspace} is not supported (8-bit 4:2:0 plays as NV12, 8-bit 4:2:2 as YUYV)", path.display())]
    UnsupportedColorspace { path: PathBuf, colorspace: String },
    #[error("{}: Y4M frame {index} at byte {offset}: {reason}", path.display())]
    BadFrame {
        path: PathBuf,
        index: u64,
        offset: u64,
        reason: String,
    },
    #[error(transparent)]
    Stamp(#[from] FrameError),
}

/// Checks the geometry and returns the frame size.
fn frame_size(format: PixelFormat, width: u32, height: u32) -> Result<usize, VideoError> {
    format.frame_size(width, height).ok_or(VideoError::BadSize {
        format,
        width,
        height,
    })
}

fn check_buffer(expected: usize, out: &[u8]) -> Result<(), VideoError> {
    if out.len() == expected {
        Ok(())
    } else {
        Err(VideoError::BufferSize {
            expected,
            actual: out.len(),
        })
    }
}
