//! Cards added and removed, from the kernel's uevents: `xxcap_monitor_*`.

use std::ffi::{c_char, c_int, c_void};
use std::os::fd::{AsFd, AsRawFd};
use std::time::Duration;

use xx::{CardChange, Monitor};

use crate::card::XXCAP_PATH_LEN;
use crate::error::{guard, Failure};
use crate::{count, fill_c_string, handle, handle_mut, timeout};

/// A card was probed: its node can be opened.
pub const XXCAP_CARD_ADDED: u32 = 1;
/// A card was removed: files still open on it fail with -ENODEV.
pub const XXCAP_CARD_REMOVED: u32 = 2;
/// Changes were lost (the socket overflowed): list the cards again with
/// `xxcap_list_cards`. `index` is 0 and `dev_path` empty.
pub const XXCAP_CARDS_LOST: u32 = 3;

/// A change in the cards present, as `xxcap_monitor_fn` sees it.
#[repr(C)]
pub struct xxcap_card_change {
    /// `XXCAP_CARD_ADDED`, `XXCAP_CARD_REMOVED` or `XXCAP_CARDS_LOST`.
    pub change: u32,
    /// N of /dev/xxcaptureN.
    pub index: u32,
    /// The device node, NUL-terminated.
    pub dev_path: [c_char; XXCAP_PATH_LEN],
}

/// Called by `xxcap_monitor_dispatch` for each change, with its `refcon`.
/// The change lives for the call only.
pub type xxcap_monitor_fn =
    Option<unsafe extern "C" fn(change: *const xxcap_card_change, refcon: *mut c_void)>;

/// A uevent listener (opaque). Needs no udev daemon.
pub struct xxcap_monitor {
    monitor: Monitor,
}

/// Opens a monitor of cards added and removed. Open it before listing the
/// cards present (`xxcap_list_cards`), so that no card is missed between
/// the two.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_monitor_open(out: *mut *mut xxcap_monitor) -> c_int {
    guard(|| {
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let boxed = Box::new(xxcap_monitor {
            monitor: Monitor::new()?,
        });
        // SAFETY: non-NULL, and the caller guarantees it is writable.
        unsafe { out.write(Box::into_raw(boxed)) };
        Ok(0)
    })
}

/// The monitor's file descriptor, for the caller's own poll(): readable
/// when a uevent (of any device) waits. Then call
/// `xxcap_monitor_dispatch` with timeout 0.
///
/// # Safety
/// `monitor` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_monitor_fd(monitor: *const xxcap_monitor) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { handle(monitor, "monitor") }?;
        Ok(m.monitor.as_fd().as_raw_fd())
    })
}

/// Waits up to `timeout_ms` (negative: for ever) for a change, then calls
/// `callback` for it and for every further change already waiting. Returns
/// how many changes were delivered (0: none in time).
///
/// # Safety
/// `monitor` is a live handle; `callback` is safe to call with `refcon`.
#[no_mangle]
pub unsafe extern "C" fn xxcap_monitor_dispatch(
    monitor: *mut xxcap_monitor,
    timeout_ms: c_int,
    callback: xxcap_monitor_fn,
    refcon: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { handle_mut(monitor, "monitor") }?;
        let callback = callback.ok_or_else(|| Failure::null("callback"))?;
        let mut delivered = 0;
        let mut wait = timeout(timeout_ms);
        while let Some(change) = m.monitor.next_change(wait)? {
            let (kind, path) = match &change {
                CardChange::Added(card) => (XXCAP_CARD_ADDED, Some(card)),
                CardChange::Removed(card) => (XXCAP_CARD_REMOVED, Some(card)),
                CardChange::Lost => (XXCAP_CARDS_LOST, None),
            };
            let mut c = xxcap_card_change {
                change: kind,
                index: path.map_or(0, |p| p.index),
                dev_path: [0; XXCAP_PATH_LEN],
            };
            if let Some(p) = path {
                fill_c_string(&mut c.dev_path, &p.dev_path.to_string_lossy());
            }
            // SAFETY: the caller guarantees the callback is safe with
            // `refcon`; the change outlives the call.
            unsafe { callback(&c, refcon) };
            delivered += 1;
            // Then only what is already there.
            wait = Some(Duration::ZERO);
        }
        Ok(count(delivered))
    })
}

/// Closes a monitor (NULL is ignored).
///
/// # Safety
/// `monitor` is NULL or a live handle, not used afterwards.
#[no_mangle]
pub unsafe extern "C" fn xxcap_monitor_close(monitor: *mut xxcap_monitor) {
    if !monitor.is_null() {
        // SAFETY: made by Box::into_raw in xxcap_monitor_open; the caller
        // gives it up.
        drop(unsafe { Box::from_raw(monitor) });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    unsafe extern "C" fn never(_: *const xxcap_card_change, _: *mut c_void) {
        panic!("no card changes here");
    }

    #[test]
    fn a_monitor_opens_polls_and_closes() {
        let mut m = std::ptr::null_mut();
        // SAFETY: `m` is writable; the handle is used as documented.
        unsafe {
            assert_eq!(xxcap_monitor_open(&mut m), 0);
            assert!(xxcap_monitor_fd(m) >= 0);
            // No card comes or goes on the build host within 10 ms.
            assert_eq!(
                xxcap_monitor_dispatch(m, 10, Some(never), std::ptr::null_mut()),
                0
            );
            assert_eq!(
                xxcap_monitor_dispatch(m, 0, None, std::ptr::null_mut()),
                -libc::EINVAL
            );
            assert_eq!(
                xxcap_monitor_dispatch(std::ptr::null_mut(), 0, Some(never), std::ptr::null_mut()),
                -libc::EINVAL
            );
            xxcap_monitor_close(m);
            xxcap_monitor_close(std::ptr::null_mut());
            assert_eq!(xxcap_monitor_open(std::ptr::null_mut()), -libc::EINVAL);
        }
    }
}
