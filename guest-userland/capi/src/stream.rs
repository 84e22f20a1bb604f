//! Streaming capture: the library lends the card buffers, the card writes
//! each frame straight into one, the caller reads it in place and gives the
//! buffer back with `xxcap_stream_requeue`.

use std::collections::HashMap;
use std::ffi::{c_int, c_void};
use std::time::Duration;

use xx::{Card, Stream, StreamFrame, StreamStats};

use crate::capture::XXCAP_SOURCE_FILE;
use crate::card::{xxcap_card, xxcap_format};
use crate::error::{guard, Failure};
use crate::{handle, handle_mut, put, put_opt};

/// Buffers a stream lends the card at most.
pub const XXCAP_MAX_STREAM_BUFFERS: u32 = 32;

/// A running stream (opaque).
pub struct xxcap_stream {
    /// Borrows the card's `Card`, which outlives it (counted as a child).
    stream: Option<Stream<'static>>,
    /// Frames handed to the caller and not requeued yet, by buffer index.
    held: HashMap<u64, StreamFrame>,
    card: *const xxcap_card,
}

/// A frame the card wrote into one of the stream's buffers. `data` stays
/// valid until the buffer is requeued or the stream is stopped.
#[repr(C)]
pub struct xxcap_stream_frame {
    /// The buffer's index: give it to `xxcap_stream_requeue`.
    pub index: u64,
    /// The card's frame number.
    pub number: u64,
    /// Device clock when the frame completed.
    pub device_time_ns: u64,
    /// Guest clock when the driver took the completion.
    pub guest_time_ns: u64,
    /// Guest clock when this process got it.
    pub received_ns: u64,
    pub data: *const c_void,
    pub size: usize,
}

/// Running totals of a stream.
#[repr(C)]
pub struct xxcap_stream_stats {
    pub frames: u64,
    /// Frames the card dropped.
    pub dropped: u64,
    /// Records the driver or card lost.
    pub lost_records: u64,
    /// Buffers returned with an error.
    pub buffer_errors: u64,
}

impl xxcap_stream_stats {
    fn from_rust(s: StreamStats) -> Self {
        xxcap_stream_stats {
            frames: s.frames,
            dropped: s.dropped,
            lost_records: s.lost_records,
            buffer_errors: s.buffer_errors,
        }
    }
}

/// Starts streaming capture in `format` into `buffers` buffers of one frame
/// each (1 to `XXCAP_MAX_STREAM_BUFFERS`), which the library allocates and
/// lends the card. `flags`: 0 or `XXCAP_SOURCE_FILE`. Stop it with
/// `xxcap_stream_stop` before closing the card.
///
/// # Safety
/// `card` is a live handle; `format` is readable; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_stream_start(
    card: *const xxcap_card,
    format: *const xxcap_format,
    flags: u32,
    buffers: u32,
    out: *mut *mut xxcap_stream,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        // SAFETY: the caller's contract.
        let fmt = unsafe { handle(format, "format") }?.to_rust()?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        if flags & !XXCAP_SOURCE_FILE != 0 {
            return Err(Failure::inval(format!("unknown stream flags {flags:#x}")));
        }
        let n = usize::try_from(buffers).map_err(|_| Failure::inval("buffers"))?;
        // SAFETY: as in xxcap_capture_start: the Card stays at a fixed
        // address until xxcap_close, which refuses while children run.
        let owner: &'static Card = unsafe { &*(&c.card as *const Card) };
        let stream = owner.start_stream(fmt, flags & XXCAP_SOURCE_FILE != 0, n)?;
        c.children.set(c.children.get() + 1);
        let handle = Box::new(xxcap_stream {
            stream: Some(stream),
            held: HashMap::new(),
            card,
        });
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { out.write(Box::into_raw(handle)) };
        Ok(0)
    })
}

/// Waits up to `timeout_ms` (negative: forever) for the next frame.
/// -ETIMEDOUT when none came; -ENOBUFS when every buffer is held by the
/// caller (requeue some).
///
/// # Safety
/// `stream` is a live stream; `frame` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_stream_next(
    stream: *mut xxcap_stream,
    timeout_ms: c_int,
    frame: *mut xxcap_stream_frame,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { handle_mut(stream, "stream") }?;
        if frame.is_null() {
            return Err(Failure::null("frame"));
        }
        let st = s
            .stream
            .as_mut()
            .ok_or_else(|| Failure::inval("stream stopped"))?;
        let wait = crate::timeout(timeout_ms).unwrap_or(Duration::from_secs(u64::from(u32::MAX)));
        let f = st.next_frame(wait)?;
        let out = xxcap_stream_frame {
            index: f.index,
            number: f.number,
            device_time_ns: f.device_time_ns,
            guest_time_ns: f.guest_time_ns,
            received_ns: f.received_ns,
            data: f.data().as_ptr().cast(),
            size: f.data().len(),
        };
        // The buffer's heap allocation does not move with the frame.
        s.held.insert(f.index, f);
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { put(frame, out, "frame") }?;
        Ok(0)
    })
}

/// Gives the buffer of frame `index` back to the card; its data pointer is
/// invalid from now on. -ENOENT if the caller holds no such frame.
///
/// # Safety
/// `stream` is a live stream.
#[no_mangle]
pub unsafe extern "C" fn xxcap_stream_requeue(stream: *mut xxcap_stream, index: u64) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { handle_mut(stream, "stream") }?;
        let st = s
            .stream
            .as_mut()
            .ok_or_else(|| Failure::inval("stream stopped"))?;
        let f = s
            .held
            .remove(&index)
            .ok_or_else(|| Failure::new(libc::ENOENT, format!("no held frame {index}")))?;
        st.requeue(f)?;
        Ok(0)
    })
}

/// The stream's totals so far.
///
/// # Safety
/// `stream` is a live stream; `stats` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_stream_stats(
    stream: *const xxcap_stream,
    stats: *mut xxcap_stream_stats,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let s = unsafe { handle(stream, "stream") }?;
        let st = s
            .stream
            .as_ref()
            .ok_or_else(|| Failure::inval("stream stopped"))?;
        // SAFETY: the caller's contract.
        unsafe { put(stats, xxcap_stream_stats::from_rust(st.stats()), "stats") }?;
        Ok(0)
    })
}

/// Stops capture, waits for the card to hand every lent buffer back,
/// stores the totals in `stats` (may be NULL) and frees the stream and its
/// buffers (held frames included). NULL is accepted.
///
/// # Safety
/// `stream` is NULL or a live stream, not used after this call; `stats` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_stream_stop(
    stream: *mut xxcap_stream,
    stats: *mut xxcap_stream_stats,
) -> c_int {
    guard(|| {
        if stream.is_null() {
            return Ok(0);
        }
        // SAFETY: made by Box::into_raw in xxcap_stream_start; freed once.
        let mut boxed = unsafe { Box::from_raw(stream) };
        let result = boxed.stream.take().map(|s| s.stop());
        boxed.held.clear();
        // SAFETY: the card outlives its children.
        if let Ok(card) = unsafe { handle(boxed.card, "card") } {
            card.children.set(card.children.get().saturating_sub(1));
        }
        drop(boxed);
        match result {
            Some(Ok(s)) => {
                // SAFETY: the caller's contract.
                unsafe { put_opt(stats, xxcap_stream_stats::from_rust(s)) };
                Ok(0)
            }
            Some(Err(e)) => Err(e.into()),
            None => Ok(0),
        }
    })
}
