//! Frame verification: every frame the card renders carries a stamp (its
//! number, format, size and a CRC-32 of the whole frame).

use std::ffi::{c_int, c_void};

use xx::abi::frame::{verify, verify_any, Stamp};

use crate::card::xxcap_format;
use crate::error::guard;
use crate::{bytes, handle, put_opt};

/// What a frame's stamp says.
#[repr(C)]
pub struct xxcap_stamp {
    pub frame_number: u64,
    /// `XXCAP_FORMAT_*`.
    pub format: u32,
    pub width: u32,
    pub height: u32,
    /// CRC-32 of the frame (with this field taken as zero).
    pub checksum: u32,
}

fn c_stamp(s: Stamp) -> xxcap_stamp {
    xxcap_stamp {
        frame_number: s.frame_number,
        format: s.format,
        width: s.width,
        height: s.height,
        checksum: s.checksum,
    }
}

/// Checks that the `len` bytes at `data` are one complete, intact frame:
/// its stamp is there, its CRC matches, and, when `format` is not NULL, it
/// is a frame of that pixel format and size (the rate is ignored); with
/// `format` NULL, the frame is checked against its own stamp. Stores the
/// stamp in `stamp` (may be NULL). Returns 0, or -EBADMSG (no stamp,
/// corrupt), -EMSGSIZE (wrong length), -EILSEQ (another format or size),
/// -EINVAL (a size the card does not produce).
///
/// # Safety
/// `data` is readable for `len` bytes; `format` is NULL or readable;
/// `stamp` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_frame_verify(
    data: *const c_void,
    len: usize,
    format: *const xxcap_format,
    stamp: *mut xxcap_stamp,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let frame = unsafe { bytes(data.cast(), len, "data") }?;
        let s = if format.is_null() {
            verify_any(frame)?
        } else {
            // SAFETY: non-NULL; the caller guarantees it is readable.
            let fmt = unsafe { handle(format, "format") }?.to_rust()?;
            verify(frame, fmt.pixel_format, fmt.width, fmt.height)?
        };
        // SAFETY: the caller's contract.
        unsafe { put_opt(stamp, c_stamp(s)) };
        Ok(0)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::card::XXCAP_FORMAT_YUYV;
    use xx::abi::frame::{stamp as make_stamp, PixelFormat};

    #[test]
    fn verifies_stamped_frames_and_refuses_damaged_ones() {
        let (w, h) = (320, 240);
        let mut frame = vec![7u8; PixelFormat::Yuyv.frame_size(w, h).expect("size")];
        make_stamp(&mut frame, 41, PixelFormat::Yuyv, w, h).expect("stamp");
        let fmt = xxcap_format {
            pixel_format: XXCAP_FORMAT_YUYV,
            width: w,
            height: h,
            fps: 0,
        };
        let mut out = xxcap_stamp {
            frame_number: 0,
            format: 0,
            width: 0,
            height: 0,
            checksum: 0,
        };
        // SAFETY: all pointers are to live locals of the stated sizes.
        let rc = unsafe { xxcap_frame_verify(frame.as_ptr().cast(), frame.len(), &fmt, &mut out) };
        assert_eq!(rc, 0);
        assert_eq!((out.frame_number, out.width, out.height), (41, w, h));
        // SAFETY: as above, without a format.
        let rc = unsafe {
            xxcap_frame_verify(
                frame.as_ptr().cast(),
                frame.len(),
                std::ptr::null(),
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, 0);

        frame[1000] ^= 1;
        // SAFETY: as above.
        let rc = unsafe {
            xxcap_frame_verify(
                frame.as_ptr().cast(),
                frame.len(),
                &fmt,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, -libc::EBADMSG);
        // SAFETY: as above, one byte short.
        let rc = unsafe {
            xxcap_frame_verify(
                frame.as_ptr().cast(),
                frame.len() - 1,
                &fmt,
                std::ptr::null_mut(),
            )
        };
        assert_eq!(rc, -libc::EMSGSIZE);
        // SAFETY: NULL data with a length is refused before any read.
        let rc = unsafe { xxcap_frame_verify(std::ptr::null(), 16, &fmt, std::ptr::null_mut()) };
        assert_eq!(rc, -libc::EINVAL);
    }
}
