//! The C interface of the xxcapture device library (`libxxcapture.so`,
//! `libxxcapture.a`, `xxcapture.h`).
//!
//! Every function returns 0 (or a count) on success and a negative errno on
//! failure; `xxcap_strerror` describes the code and `xxcap_last_error` gives
//! the message of the last failure on the calling thread. Handles are
//! opaque. Every pointer argument is checked for NULL, every length against
//! what it describes, and no Rust panic crosses into C.
//!
//! A card handle and the handles made from it (captures, streams) are used
//! by one thread at a time; different cards are independent.

// The types are C's: their names are the ones the header gives them.
#![allow(non_camel_case_types)]

mod capture;
mod card;
mod error;
mod events;
mod frame;
mod mem;
mod monitor;
mod props;
mod stream;
mod taskfile;

use std::ffi::{c_char, c_int, CStr};
use std::time::Duration;

pub use capture::*;
pub use card::*;
pub use error::{xxcap_last_error, xxcap_strerror};
pub use events::*;
pub use frame::*;
pub use mem::*;
pub use monitor::*;
pub use props::*;
pub use stream::*;
pub use taskfile::*;

use error::{Failure, Outcome};

/// Version of this library, as "MAJOR.MINOR.PATCH".
pub const XXCAP_LIB_VERSION: &str = env!("CARGO_PKG_VERSION");

/// This library's version string, "MAJOR.MINOR.PATCH" (static).
#[no_mangle]
pub extern "C" fn xxcap_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"0.0.0",
        };
    VERSION.as_ptr()
}

/// A shared reference from a handle pointer, or EINVAL for NULL.
///
/// # Safety
/// `ptr` is NULL or points at a live `T` made by this library that no one
/// mutates for `'a`.
pub(crate) unsafe fn handle<'a, T>(ptr: *const T, what: &str) -> Outcome<&'a T> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid for `'a`.
    unsafe { ptr.as_ref() }.ok_or_else(|| Failure::null(what))
}

/// An exclusive reference from a handle pointer, or EINVAL for NULL.
///
/// # Safety
/// `ptr` is NULL or points at a live `T` made by this library, used by no
/// one else for `'a`.
pub(crate) unsafe fn handle_mut<'a, T>(ptr: *mut T, what: &str) -> Outcome<&'a mut T> {
    // SAFETY: the caller guarantees `ptr` is NULL or valid and unaliased.
    unsafe { ptr.as_mut() }.ok_or_else(|| Failure::null(what))
}

/// Writes `value` through an out pointer, or EINVAL for NULL.
///
/// # Safety
/// `out` is NULL or valid for writing a `T`.
pub(crate) unsafe fn put<T>(out: *mut T, value: T, what: &str) -> Outcome<()> {
    if out.is_null() {
        return Err(Failure::null(what));
    }
    // SAFETY: checked non-NULL; the caller guarantees it is writable.
    unsafe { out.write(value) };
    Ok(())
}

/// Writes through an out pointer that may be NULL (optional results).
///
/// # Safety
/// `out` is NULL or valid for writing a `T`.
pub(crate) unsafe fn put_opt<T>(out: *mut T, value: T) {
    if !out.is_null() {
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { out.write(value) };
    }
}

/// The bytes at `ptr`, `len` long; EINVAL for NULL with a length or a
/// length no object can have.
///
/// # Safety
/// `ptr` is NULL or valid for reading `len` bytes for `'a`.
pub(crate) unsafe fn bytes<'a>(ptr: *const u8, len: usize, what: &str) -> Outcome<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    if len > isize::MAX as usize {
        return Err(Failure::inval(format!("{what}: length {len} is too large")));
    }
    // SAFETY: non-NULL, length bounded; the caller guarantees validity.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// As [`bytes`], writable.
///
/// # Safety
/// `ptr` is NULL or valid for reading and writing `len` bytes for `'a`,
/// used by no one else meanwhile.
pub(crate) unsafe fn bytes_mut<'a>(ptr: *mut u8, len: usize, what: &str) -> Outcome<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if ptr.is_null() {
        return Err(Failure::null(what));
    }
    if len > isize::MAX as usize {
        return Err(Failure::inval(format!("{what}: length {len} is too large")));
    }
    // SAFETY: non-NULL, length bounded; the caller guarantees validity.
    Ok(unsafe { std::slice::from_raw_parts_mut(ptr, len) })
}

/// A timeout in milliseconds: negative means wait forever (`None`).
pub(crate) fn timeout(ms: c_int) -> Option<Duration> {
    u64::try_from(ms).ok().map(Duration::from_millis)
}

/// Copies `s` into a fixed C string field, truncated, NUL-terminated.
pub(crate) fn fill_c_string(dst: &mut [c_char], s: &str) {
    let Some(room) = dst.len().checked_sub(1) else {
        return;
    };
    let n = s.len().min(room);
    for (d, b) in dst.iter_mut().zip(s.as_bytes()[..n].iter()) {
        *d = *b as c_char;
    }
    for d in &mut dst[n..] {
        *d = 0;
    }
}

/// A count as a return value; counts here are far below `c_int::MAX`.
pub(crate) fn count(n: usize) -> c_int {
    c_int::try_from(n).unwrap_or(c_int::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use xx::abi;

    /// The header's constants are literals (cbindgen exports only those):
    /// they must equal the ABI's.
    #[test]
    fn constants_match_the_abi() {
        let pairs: &[(u32, u32)] = &[
            (XXCAP_FORMAT_YUYV, abi::format::YUYV),
            (XXCAP_FORMAT_NV12, abi::format::NV12),
            (XXCAP_FORMAT_RGB24, abi::format::RGB24),
            (XXCAP_CAP_TASK_FILE, abi::caps::TASK_FILE),
            (XXCAP_CAP_DMA, abi::caps::DMA),
            (XXCAP_CAP_CARD_RAM_SHM, abi::caps::CARD_RAM_SHM),
            (XXCAP_CAP_EVENTS, abi::caps::EVENTS),
            (XXCAP_CAP_CAPTURE, abi::caps::CAPTURE),
            (XXCAP_CAP_STREAMING, abi::caps::STREAMING),
            (XXCAP_CAUSE_FRAME_DONE, abi::irq::FRAME_DONE),
            (XXCAP_CAUSE_DMA_DONE, abi::irq::DMA_DONE),
            (XXCAP_CAUSE_DMA_ERROR, abi::irq::DMA_ERROR),
            (XXCAP_CAUSE_OVERFLOW, abi::irq::OVERFLOW),
            (XXCAP_CAUSE_TEST, abi::irq::TEST),
            (XXCAP_CAUSE_LOST, abi::event::LOST),
            (XXCAP_STATUS_READY, abi::status::READY),
            (XXCAP_STATUS_CAPTURING, abi::status::CAPTURING),
            (XXCAP_STATUS_DMA_BUSY, abi::status::DMA_BUSY),
            (XXCAP_STATUS_DMA_ERROR, abi::status::DMA_ERROR),
            (XXCAP_DMA_TO_CARD, u32::from(abi::dma_dir::TO_CARD)),
            (XXCAP_DMA_FROM_CARD, u32::from(abi::dma_dir::FROM_CARD)),
            (XXCAP_MAX_COMMANDS, abi::MAX_COMMANDS),
            (XXCAP_MAX_STREAM_BUFFERS, abi::MAX_QUEUED_BUFFERS),
        ];
        for (i, (ours, theirs)) in pairs.iter().enumerate() {
            assert_eq!(ours, theirs, "constant #{i}");
        }
    }

    #[test]
    fn null_handles_are_refused() {
        let mut info = std::mem::MaybeUninit::<xxcap_info>::uninit();
        // SAFETY: a NULL card is checked before anything is read.
        let rc = unsafe { xxcap_get_info(std::ptr::null(), info.as_mut_ptr()) };
        assert_eq!(rc, -libc::EINVAL);
        // SAFETY: NULL out pointers are checked before anything is written.
        let rc = unsafe { xxcap_open(c"/nonexistent".as_ptr(), 0, std::ptr::null_mut()) };
        assert_eq!(rc, -libc::EINVAL);
        let mut card = std::ptr::null_mut();
        // SAFETY: a NUL-terminated path and a writable out pointer.
        let rc = unsafe { xxcap_open(c"/nonexistent/xxcapture9".as_ptr(), 0, &mut card) };
        assert_eq!(rc, -libc::ENOENT);
        assert!(card.is_null());
        // SAFETY: NULL is accepted by every close/free function.
        unsafe {
            assert_eq!(xxcap_close(std::ptr::null_mut()), 0);
            assert_eq!(
                xxcap_capture_stop(std::ptr::null_mut(), std::ptr::null_mut()),
                0
            );
            assert_eq!(
                xxcap_stream_stop(std::ptr::null_mut(), std::ptr::null_mut()),
                0
            );
            xxcap_tf_free(std::ptr::null_mut());
            xxcap_ram_unmap(std::ptr::null_mut());
            xxcap_status_unmap(std::ptr::null_mut());
        }
    }

    #[test]
    fn task_files_build_and_refuse_bad_input() {
        let mut tf = std::ptr::null_mut();
        // SAFETY: `tf` is a writable local; the task file is freed once.
        unsafe {
            assert_eq!(xxcap_tf_new(&mut tf), 0);
            assert_eq!(xxcap_tf_get(tf, 0x10), 0);
            assert_eq!(xxcap_tf_set_to(tf, 0x14, 1, 1), 1);
            assert_eq!(xxcap_tf_count(tf), 2);
            let mut v = 0u64;
            assert_eq!(
                xxcap_tf_value(tf, 0, &mut v),
                -libc::EINVAL,
                "not executed yet"
            );
            assert_eq!(
                xxcap_tf_dma(tf, 7, std::ptr::null_mut(), 0, 0, 1),
                -libc::EINVAL
            );
            assert_eq!(
                xxcap_tf_dma(tf, XXCAP_DMA_TO_CARD, std::ptr::null_mut(), 64, 0, 1),
                -libc::EINVAL
            );
            for _ in 2..XXCAP_MAX_COMMANDS {
                assert!(xxcap_tf_clear(tf, 0x10) >= 0);
            }
            assert_eq!(xxcap_tf_clear(tf, 0x10), -libc::E2BIG);
            assert_eq!(xxcap_tf_reset(tf), 0);
            assert_eq!(xxcap_tf_count(tf), 0);
            xxcap_tf_free(tf);
        }
        let mut off = 0u16;
        let mut bits = 0u32;
        // SAFETY: NUL-terminated names and writable locals.
        unsafe {
            assert_eq!(
                xxcap_register_lookup(c"frame_width".as_ptr(), &mut off, &mut bits),
                0
            );
            assert_eq!(off, abi::regs::FRAME_WIDTH);
            assert_eq!(bits, 32);
            assert_eq!(
                xxcap_register_lookup(c"NO_SUCH".as_ptr(), &mut off, std::ptr::null_mut()),
                -libc::ENOENT
            );
        }
    }

    #[test]
    fn tf_error_strings_cover_every_code() {
        for e in abi::TfError::ALL {
            // SAFETY: a static NUL-terminated string.
            let s = unsafe { CStr::from_ptr(xxcap_tf_error_string(e as u32)) };
            assert_eq!(s.to_str(), Ok(e.description()));
        }
    }
}
