//! Errors across the C boundary: every entry point returns 0 (or a count)
//! on success and a negative errno on failure, keeps a longer message for
//! `xxcap_last_error`, and never lets a Rust panic unwind into C.

use std::cell::RefCell;
use std::ffi::{c_char, c_int, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use xx::abi::frame::FrameError;

/// A failed call: the errno it returns (positive here) and its message.
#[derive(Debug)]
pub(crate) struct Failure {
    pub errno: c_int,
    pub message: String,
}

impl Failure {
    pub fn new(errno: c_int, message: impl Into<String>) -> Self {
        Failure {
            errno,
            message: message.into(),
        }
    }

    pub fn inval(message: impl Into<String>) -> Self {
        Failure::new(libc::EINVAL, message)
    }

    pub fn null(what: &str) -> Self {
        Failure::inval(format!("{what} is NULL"))
    }
}

/// The errno for each library error.
fn errno_of(e: &xx::Error) -> c_int {
    use xx::Error as E;
    if let Some(errno) = e.errno() {
        return errno as c_int;
    }
    match e {
        E::Command { .. } => libc::EIO,
        E::Protocol => libc::EPROTO,
        E::CardReset => libc::ECONNRESET,
        E::BadMagic(_) | E::AbiMismatch { .. } => libc::ENOTSUP,
        E::UnknownRegister(_) => libc::ENOENT,
        E::RegisterWidth { .. } | E::BadFormat(_) => libc::EINVAL,
        E::ValueTooWide { .. } => libc::ERANGE,
        E::TooManyCommands(_) => libc::E2BIG,
        E::Sysfs { source, .. } => source.raw_os_error().unwrap_or(libc::EIO),
        E::Unsupported(_) => libc::EOPNOTSUPP,
        E::Timeout { .. } => libc::ETIMEDOUT,
        E::UnknownRequest(_) => libc::ENOENT,
        E::NoBuffers => libc::ENOBUFS,
        E::BuffersNotReturned(_) => libc::EBUSY,
        _ => libc::EIO,
    }
}

impl From<xx::Error> for Failure {
    fn from(e: xx::Error) -> Self {
        Failure::new(errno_of(&e), e.to_string())
    }
}

impl From<FrameError> for Failure {
    fn from(e: FrameError) -> Self {
        let errno = match e {
            FrameError::BadSize { .. } => libc::EINVAL,
            FrameError::WrongLength { .. } => libc::EMSGSIZE,
            FrameError::Mismatch { .. } => libc::EILSEQ,
            FrameError::BadMagic { .. }
            | FrameError::UnsupportedVersion(_)
            | FrameError::UnknownFormat(_)
            | FrameError::Corrupt { .. } => libc::EBADMSG,
        };
        Failure::new(errno, e.to_string())
    }
}

pub(crate) type Outcome<T> = std::result::Result<T, Failure>;

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// Runs one entry point: its value, or its failure as a negative errno (the
/// message kept for `xxcap_last_error`). A panic becomes -ENOTRECOVERABLE.
pub(crate) fn guard(f: impl FnOnce() -> Outcome<c_int>) -> c_int {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(value)) => value,
        Ok(Err(failure)) => {
            set_last_error(&failure.message);
            -failure.errno.abs()
        }
        Err(_) => {
            set_last_error("internal error: the library panicked (a bug: please report it)");
            -libc::ENOTRECOVERABLE
        }
    }
}

/// The message of the last call that failed on this thread: more detail
/// than `xxcap_strerror` of its return value. Empty when no call failed
/// yet. Valid until the next failing call on this thread.
#[no_mangle]
pub extern "C" fn xxcap_last_error() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}

/// A short description of a return value of this library (a negative
/// errno, or 0). Never NULL; the string is static.
#[no_mangle]
pub extern "C" fn xxcap_strerror(err: c_int) -> *const c_char {
    let text: &'static CStr = match err.checked_neg().unwrap_or(0) {
        0 => c"success",
        libc::EPERM => c"operation not permitted",
        libc::ENOENT => c"no such card, register or request",
        libc::EINTR => c"interrupted by a signal",
        libc::EIO => c"the card failed the request (a task-file command error)",
        libc::ENXIO => c"no such device",
        libc::E2BIG => c"too many commands for one task file",
        libc::EBADF => c"bad file descriptor",
        libc::ENOMEM => c"out of memory",
        libc::EACCES => c"permission denied",
        libc::EFAULT => c"bad address",
        libc::EBUSY => c"busy: the card is held by another open, or the handle is still in use",
        libc::ENODEV => c"the card has gone",
        libc::EINVAL => c"invalid argument",
        libc::ERANGE => c"value out of range",
        libc::ENOTTY => c"not an xxcapture device",
        libc::ENOBUFS => c"no capture buffer is queued",
        libc::EMSGSIZE => c"frame or buffer has the wrong length",
        libc::EBADMSG => c"frame does not verify (no stamp, or checksum mismatch)",
        libc::EILSEQ => c"frame stamp names another format or size",
        libc::EPROTO => c"the card answered something this library cannot read",
        libc::EOPNOTSUPP => c"the card does not support this",
        libc::ETIMEDOUT => c"nothing arrived in time",
        libc::ENOTRECOVERABLE => c"internal library error",
        _ => c"unknown error",
    };
    text.as_ptr()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_become_negative_errnos_with_a_message() {
        let rc = guard(|| Err(Failure::inval("width is odd")));
        assert_eq!(rc, -libc::EINVAL);
        // SAFETY: xxcap_last_error returns a NUL-terminated thread-local
        // string that lives until the next failure on this thread.
        let msg = unsafe { CStr::from_ptr(xxcap_last_error()) };
        assert_eq!(msg.to_str(), Ok("width is odd"));
    }

    #[test]
    fn panics_do_not_cross() {
        let rc = guard(|| panic!("boom"));
        assert_eq!(rc, -libc::ENOTRECOVERABLE);
    }

    #[test]
    fn every_code_has_a_description() {
        for code in [0, -libc::EINVAL, -libc::EBADMSG, -9999, i32::MIN] {
            // SAFETY: xxcap_strerror returns a static NUL-terminated string.
            let s = unsafe { CStr::from_ptr(xxcap_strerror(code)) };
            assert!(!s.to_bytes().is_empty());
        }
    }
}
