//! Ring capture: the card captures into a ring in its RAM; each frame is
//! copied into the caller's buffer by DMA or from mapped card RAM.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use xx::{Capture, CaptureMode, CaptureStats, Card};

use crate::card::{xxcap_card, xxcap_format};
use crate::error::{guard, Failure};
use crate::mem::xxcap_status;
use crate::{bytes_mut, handle, handle_mut, put, put_opt};

/// `xxcap_capture_start` flags: read frames from mapped card RAM instead of
/// copying each by DMA.
pub const XXCAP_CAPTURE_MAPPED: u32 = 1 << 0;
/// Capture from the file the card's backend was given instead of the test
/// pattern (also for `xxcap_stream_start`).
pub const XXCAP_SOURCE_FILE: u32 = 1 << 1;

/// A running capture (opaque).
pub struct xxcap_capture {
    /// Borrows the card's `Card`, which outlives it: the card counts it as
    /// a child and refuses to close before it is stopped.
    capture: Option<Capture<'static>>,
    card: *const xxcap_card,
    frame_size: usize,
}

/// One captured frame's description.
#[repr(C)]
pub struct xxcap_frame_info {
    /// The card's frame number (from 0 at capture start).
    pub number: u64,
    /// Device clock when the frame completed.
    pub timestamp_ns: u64,
    /// Bytes written to the caller's buffer.
    pub size: usize,
}

/// What a capture has seen so far.
#[repr(C)]
pub struct xxcap_capture_stats {
    /// Frames handed to the caller.
    pub delivered: u64,
    /// Frames this reader missed (the card overwrote them first).
    pub missed: u64,
    /// Frames the card itself dropped.
    pub card_dropped: u64,
}

impl xxcap_capture_stats {
    fn from_rust(s: CaptureStats) -> Self {
        xxcap_capture_stats {
            delivered: s.delivered,
            missed: s.missed,
            card_dropped: s.card_dropped,
        }
    }
}

/// Starts ring capture in `format`; `flags` is a sum of
/// `XXCAP_CAPTURE_MAPPED` and `XXCAP_SOURCE_FILE`. On success stores the
/// capture in `*out`; stop it with `xxcap_capture_stop` before closing the
/// card.
///
/// # Safety
/// `card` is a live handle; `format` is readable; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_capture_start(
    card: *const xxcap_card,
    format: *const xxcap_format,
    flags: u32,
    out: *mut *mut xxcap_capture,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        // SAFETY: the caller's contract.
        let fmt = unsafe { handle(format, "format") }?.to_rust()?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        if flags & !(XXCAP_CAPTURE_MAPPED | XXCAP_SOURCE_FILE) != 0 {
            return Err(Failure::inval(format!("unknown capture flags {flags:#x}")));
        }
        let mode = if flags & XXCAP_CAPTURE_MAPPED != 0 {
            CaptureMode::Mapped
        } else {
            CaptureMode::Dma
        };
        // SAFETY: the `Card` lives inside the card handle's Box, at a fixed
        // address, until xxcap_close; xxcap_close refuses while `children`
        // is nonzero, and the capture is counted there until it is stopped.
        let owner: &'static Card = unsafe { &*(&c.card as *const Card) };
        let capture = owner.start_capture(fmt, flags & XXCAP_SOURCE_FILE != 0, mode)?;
        let frame_size = fmt
            .pixel_format
            .frame_size(fmt.width, fmt.height)
            .ok_or_else(|| Failure::inval("bad frame size"))?;
        c.children.set(c.children.get() + 1);
        let handle = Box::new(xxcap_capture {
            capture: Some(capture),
            card,
            frame_size,
        });
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(0)
    })
}

/// Bytes of one frame of this capture: the least `len` for
/// `xxcap_capture_next`.
///
/// # Safety
/// `cap` is a live capture.
#[no_mangle]
pub unsafe extern "C" fn xxcap_capture_frame_size(cap: *const xxcap_capture) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(cap, "capture") }?;
        Ok(crate::count(c.frame_size))
    })
}

/// Waits up to `timeout_ms` (negative: forever) for the next frame and
/// copies it into `buffer` (at least the frame size, `len` bytes);
/// describes it in `info` (may be NULL). Frames come oldest first; frames
/// this reader was too slow for are counted as missed and skipped.
/// -ETIMEDOUT when no frame came in time, -EMSGSIZE when `len` is short.
///
/// # Safety
/// `cap` is a live capture; `buffer` is writable for `len` bytes; `info`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_capture_next(
    cap: *mut xxcap_capture,
    buffer: *mut c_void,
    len: usize,
    timeout_ms: c_int,
    info: *mut xxcap_frame_info,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle_mut(cap, "capture") }?;
        // SAFETY: the caller's contract.
        let out = unsafe { bytes_mut(buffer.cast(), len, "buffer") }?;
        if out.len() < c.frame_size {
            return Err(Failure::new(
                libc::EMSGSIZE,
                format!("buffer of {len} bytes; a frame is {}", c.frame_size),
            ));
        }
        let capture = c
            .capture
            .as_mut()
            .ok_or_else(|| Failure::inval("capture stopped"))?;
        // Forever is a very long time, in steps the library accepts.
        let wait = crate::timeout(timeout_ms).unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
        let frame = capture.next_frame_ref(wait)?;
        let n = frame.data.len().min(out.len());
        out[..n].copy_from_slice(&frame.data[..n]);
        // SAFETY: the caller's contract.
        unsafe {
            put_opt(
                info,
                xxcap_frame_info {
                    number: frame.number,
                    timestamp_ns: frame.timestamp_ns,
                    size: n,
                },
            )
        };
        Ok(0)
    })
}

/// The capture's counts so far.
///
/// # Safety
/// `cap` is a live capture; `stats` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_capture_stats(
    cap: *const xxcap_capture,
    stats: *mut xxcap_capture_stats,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(cap, "capture") }?;
        let capture = c
            .capture
            .as_ref()
            .ok_or_else(|| Failure::inval("capture stopped"))?;
        // SAFETY: the caller's contract.
        unsafe {
            put(
                stats,
                xxcap_capture_stats::from_rust(capture.stats()),
                "stats",
            )
        }?;
        Ok(0)
    })
}

/// A consistent copy of the card's status block, as the capture sees it.
///
/// # Safety
/// `cap` is a live capture; `status` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_capture_status(
    cap: *const xxcap_capture,
    status: *mut xxcap_status,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(cap, "capture") }?;
        let capture = c
            .capture
            .as_ref()
            .ok_or_else(|| Failure::inval("capture stopped"))?;
        let block = capture.status()?;
        // SAFETY: the caller's contract.
        unsafe { put(status, xxcap_status::from_block(&block), "status") }?;
        Ok(0)
    })
}

/// Stops capture, stores the final counts in `stats` (may be NULL) and
/// frees the capture, also when stopping the card fails. NULL is accepted.
///
/// # Safety
/// `cap` is NULL or a live capture, not used after this call; `stats` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_capture_stop(
    cap: *mut xxcap_capture,
    stats: *mut xxcap_capture_stats,
) -> c_int {
    guard(|| {
        if cap.is_null() {
            return Ok(0);
        }
        // SAFETY: made by Box::into_raw in xxcap_capture_start; freed once.
        let mut boxed = unsafe { Box::from_raw(cap) };
        let result = boxed.capture.take().map(|c| c.stop());
        // SAFETY: the card outlives its children (see xxcap_capture_start).
        if let Ok(card) = unsafe { handle(boxed.card, "card") } {
            card.children.set(card.children.get().saturating_sub(1));
        }
        drop(boxed);
        match result {
            Some(Ok(s)) => {
                // SAFETY: the caller's contract.
                unsafe { put_opt(stats, xxcap_capture_stats::from_rust(s)) };
                Ok(0)
            }
            Some(Err(e)) => Err(e.into()),
            None => Ok(0),
        }
    })
}
