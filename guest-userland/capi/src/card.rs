//! Cards: listing, opening, closing, identity, format and registers.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::os::fd::AsRawFd;

use xx::{Access, Card, FrameFormat, PixelFormat};

use crate::error::{guard, Failure, Outcome};
use crate::events::{xxcap_completion_fn, xxcap_event_fn};
use crate::{count, fill_c_string, handle, put};

/// Open for control (the default): may execute task files, capture and
/// stream. Controlling opens are exclusive: a second fails with -EBUSY.
pub const XXCAP_OPEN_CONTROL: u32 = 0;
/// Open to observe: shared, identity and events only.
pub const XXCAP_OPEN_OBSERVE: u32 = 1;

/// Pixel format codes (`struct xxcap_format.pixel_format`): packed 4:2:2.
pub const XXCAP_FORMAT_YUYV: u32 = 1;
/// Planar 4:2:0 (Y plane, then interleaved UV at half resolution).
pub const XXCAP_FORMAT_NV12: u32 = 2;
/// Packed R G B, 3 bytes per pixel.
pub const XXCAP_FORMAT_RGB24: u32 = 3;

/// Capability bits (`capabilities`): task files.
pub const XXCAP_CAP_TASK_FILE: u32 = 1 << 0;
/// DMA between card RAM and memory of this process.
pub const XXCAP_CAP_DMA: u32 = 1 << 1;
/// Card RAM and the status block can be mapped.
pub const XXCAP_CAP_CARD_RAM_SHM: u32 = 1 << 2;
/// Event records.
pub const XXCAP_CAP_EVENTS: u32 = 1 << 3;
/// Capture into the card-RAM ring.
pub const XXCAP_CAP_CAPTURE: u32 = 1 << 4;
/// Streaming capture into lent buffers.
pub const XXCAP_CAP_STREAMING: u32 = 1 << 5;

/// Bytes of `struct xxcap_info.serial` and `xxcap_card_entry.serial`.
pub const XXCAP_SERIAL_LEN: usize = 32;
/// Bytes of `name` fields.
pub const XXCAP_NAME_LEN: usize = 64;
/// Bytes of `struct xxcap_card_entry.dev_path`.
pub const XXCAP_PATH_LEN: usize = 64;

/// An open card (opaque).
pub struct xxcap_card {
    pub(crate) card: Card,
    /// Captures and streams made from this card and not yet stopped: they
    /// borrow it, so it cannot be closed before them.
    pub(crate) children: Cell<usize>,
    /// Inside `xxcap_dispatch`: the card must not be closed by a callback.
    pub(crate) dispatching: Cell<bool>,
    /// Submitted task files by request id: their callback and refcon.
    pub(crate) pending: RefCell<HashMap<u64, (xxcap_completion_fn, *mut c_void)>>,
    /// Where records that are not completions of `pending` go.
    pub(crate) on_event: Cell<(xxcap_event_fn, *mut c_void)>,
}

/// The card's identity, read at open (`xxcap_get_info`).
#[repr(C)]
pub struct xxcap_info {
    pub model: u32,
    pub revision: u32,
    /// ABI version: major in the upper 16 bits.
    pub abi_version: u32,
    /// `XXCAP_CAP_*` bits.
    pub capabilities: u32,
    /// Commands one task file may hold.
    pub max_commands: u32,
    /// `XXCAP_STATUS_*` bits at open.
    pub status: u32,
    pub card_ram_size: u64,
    /// NUL-terminated.
    pub serial: [c_char; XXCAP_SERIAL_LEN],
    /// NUL-terminated.
    pub name: [c_char; XXCAP_NAME_LEN],
}

/// One card present in the system (`xxcap_list_cards`), from sysfs.
#[repr(C)]
pub struct xxcap_card_entry {
    /// N of /dev/xxcaptureN: the index for `xxcap_open_index`.
    pub index: u32,
    pub model: u32,
    pub revision: u32,
    pub abi_version: u32,
    pub capabilities: u32,
    pub max_commands: u32,
    pub card_ram_size: u64,
    /// The device node, NUL-terminated.
    pub dev_path: [c_char; XXCAP_PATH_LEN],
    pub serial: [c_char; XXCAP_SERIAL_LEN],
    pub name: [c_char; XXCAP_NAME_LEN],
}

/// What the card captures: `XXCAP_FORMAT_*`, size in pixels (even,
/// 320..3840 x 240..2160) and rate (0: free-running, the card waits for
/// its reader).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct xxcap_format {
    pub pixel_format: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
}

impl xxcap_format {
    pub(crate) fn to_rust(self) -> Outcome<FrameFormat> {
        let pixel_format = PixelFormat::from_code(self.pixel_format)
            .ok_or_else(|| Failure::inval(format!("unknown pixel format {}", self.pixel_format)))?;
        if pixel_format.frame_size(self.width, self.height).is_none() {
            return Err(Failure::inval(format!(
                "{}x{} is not a frame size the card accepts",
                self.width, self.height
            )));
        }
        Ok(FrameFormat {
            pixel_format,
            width: self.width,
            height: self.height,
            fps: self.fps,
        })
    }

    pub(crate) fn from_rust(f: FrameFormat) -> Self {
        xxcap_format {
            pixel_format: f.pixel_format.code(),
            width: f.width,
            height: f.height,
            fps: f.fps,
        }
    }
}

/// # Safety
/// `path` is NULL or a NUL-terminated string.
unsafe fn c_path<'a>(path: *const c_char) -> Outcome<&'a str> {
    if path.is_null() {
        return Err(Failure::null("path"));
    }
    // SAFETY: non-NULL; the caller guarantees NUL termination.
    unsafe { CStr::from_ptr(path) }
        .to_str()
        .map_err(|_| Failure::inval("path is not UTF-8"))
}

fn access(flags: u32) -> Outcome<Access> {
    match flags {
        XXCAP_OPEN_CONTROL => Ok(Access::Control),
        XXCAP_OPEN_OBSERVE => Ok(Access::Observe),
        other => Err(Failure::inval(format!("unknown open flags {other:#x}"))),
    }
}

fn open_with(out: *mut *mut xxcap_card, open: impl FnOnce() -> xx::Result<Card>) -> Outcome<c_int> {
    if out.is_null() {
        return Err(Failure::null("out"));
    }
    let card = open()?;
    let boxed = Box::new(xxcap_card {
        card,
        children: Cell::new(0),
        dispatching: Cell::new(false),
        pending: RefCell::new(HashMap::new()),
        on_event: Cell::new((None, std::ptr::null_mut())),
    });
    // SAFETY: `out` is non-NULL and the caller guarantees it is writable.
    unsafe { out.write(Box::into_raw(boxed)) };
    Ok(0)
}

/// Opens the card at `path` (e.g. "/dev/xxcapture0") with `flags`
/// (`XXCAP_OPEN_CONTROL` or `XXCAP_OPEN_OBSERVE`) and checks it speaks
/// this library's ABI. On success stores the handle in `*out`.
///
/// # Safety
/// `path` is a NUL-terminated string; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_open(
    path: *const c_char,
    flags: u32,
    out: *mut *mut xxcap_card,
) -> c_int {
    guard(|| {
        // SAFETY: as this function's contract.
        let path = unsafe { c_path(path) }?;
        let access = access(flags)?;
        open_with(out, || Card::open(path, access))
    })
}

/// Opens /dev/xxcaptureN.
///
/// # Safety
/// `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_open_index(
    index: u32,
    flags: u32,
    out: *mut *mut xxcap_card,
) -> c_int {
    guard(|| {
        let access = access(flags)?;
        open_with(out, || Card::open_index(index, access))
    })
}

/// Closes a card. Fails with -EBUSY, leaving the card open, while a capture
/// or stream made from it is running or when called from a callback of
/// `xxcap_dispatch`. Outstanding submitted requests complete in the
/// driver; their callbacks do not run. NULL is accepted (returns 0).
///
/// # Safety
/// `card` is NULL or a handle from `xxcap_open*` not closed yet.
#[no_mangle]
pub unsafe extern "C" fn xxcap_close(card: *mut xxcap_card) -> c_int {
    guard(|| {
        if card.is_null() {
            return Ok(0);
        }
        {
            // SAFETY: non-NULL live handle (the caller's contract).
            let c = unsafe { handle(card, "card") }?;
            if c.children.get() > 0 {
                return Err(Failure::new(
                    libc::EBUSY,
                    format!(
                        "{} captures or streams still use this card",
                        c.children.get()
                    ),
                ));
            }
            if c.dispatching.get() {
                return Err(Failure::new(
                    libc::EBUSY,
                    "cannot close a card from its own dispatch callback",
                ));
            }
        }
        // SAFETY: made by Box::into_raw in open_with and nothing borrows it
        // any more (no children, not dispatching).
        drop(unsafe { Box::from_raw(card) });
        Ok(0)
    })
}

/// The card's file descriptor, for poll()/select() on its events
/// (readable when records are waiting). Owned by the card handle.
///
/// # Safety
/// `card` is NULL or a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_fd(card: *const xxcap_card) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        Ok(c.card.as_raw_fd())
    })
}

/// The identity read at open.
///
/// # Safety
/// `card` is a live handle; `info` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_get_info(card: *const xxcap_card, info: *mut xxcap_info) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        let i = c.card.info();
        let mut out = xxcap_info {
            model: i.model,
            revision: i.revision,
            abi_version: i.abi_version,
            capabilities: i.capabilities,
            max_commands: i.max_commands,
            status: i.status,
            card_ram_size: i.card_ram_size,
            serial: [0; XXCAP_SERIAL_LEN],
            name: [0; XXCAP_NAME_LEN],
        };
        fill_c_string(&mut out.serial, &i.serial);
        fill_c_string(&mut out.name, &i.name);
        // SAFETY: the caller's contract.
        unsafe { put(info, out, "info") }?;
        Ok(0)
    })
}

/// Lists the cards present (from /sys/class/xxcapture), by index: fills
/// up to `max` entries and returns how many cards there are (which may be
/// more than `max`: call again with a larger array). No driver loaded: 0.
/// `entries` may be NULL when `max` is 0.
///
/// # Safety
/// `entries` is NULL or valid for writing `max` entries.
#[no_mangle]
pub unsafe extern "C" fn xxcap_list_cards(entries: *mut xxcap_card_entry, max: usize) -> c_int {
    guard(|| {
        let cards = xx::cards()?;
        if max > 0 && entries.is_null() {
            return Err(Failure::null("entries"));
        }
        for (i, card) in cards.iter().take(max).enumerate() {
            let mut e = xxcap_card_entry {
                index: card.index,
                model: card.model,
                revision: card.revision,
                abi_version: card.abi_version,
                capabilities: card.capabilities,
                max_commands: card.max_commands,
                card_ram_size: card.card_ram_size,
                dev_path: [0; XXCAP_PATH_LEN],
                serial: [0; XXCAP_SERIAL_LEN],
                name: [0; XXCAP_NAME_LEN],
            };
            fill_c_string(&mut e.dev_path, &card.dev_path.to_string_lossy());
            fill_c_string(&mut e.serial, &card.serial);
            fill_c_string(&mut e.name, &card.name);
            // SAFETY: `i < max`; the caller guarantees `max` writable
            // entries.
            unsafe { entries.add(i).write(e) };
        }
        Ok(count(cards.len()))
    })
}

/// The capture format, read from the card.
///
/// # Safety
/// `card` is a live handle; `format` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_get_format(
    card: *const xxcap_card,
    format: *mut xxcap_format,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        let f = c.card.frame_format()?;
        // SAFETY: the caller's contract.
        unsafe { put(format, xxcap_format::from_rust(f), "format") }?;
        Ok(0)
    })
}

/// Sets the capture format: all fields in one task file, or none.
///
/// # Safety
/// `card` is a live handle; `format` is readable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_set_format(
    card: *const xxcap_card,
    format: *const xxcap_format,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        // SAFETY: the caller's contract.
        let f = unsafe { handle(format, "format") }?.to_rust()?;
        c.card.set_frame_format(f)?;
        Ok(0)
    })
}

/// Bytes of one frame of `format`.
///
/// # Safety
/// `format` is readable; `size` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_frame_size(format: *const xxcap_format, size: *mut usize) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let f = unsafe { handle(format, "format") }?.to_rust()?;
        let n = f
            .pixel_format
            .frame_size(f.width, f.height)
            .ok_or_else(|| Failure::inval("bad frame size"))?;
        // SAFETY: the caller's contract.
        unsafe { put(size, n, "size") }?;
        Ok(0)
    })
}

/// Reads the 32-bit register at `offset` (one task file).
///
/// # Safety
/// `card` is a live handle; `value` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_read_register(
    card: *const xxcap_card,
    offset: u16,
    value: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        let v = c.card.read_register(offset)?;
        // SAFETY: the caller's contract.
        unsafe { put(value, v, "value") }?;
        Ok(0)
    })
}

/// Writes the 32-bit register at `offset` (one task file).
///
/// # Safety
/// `card` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_write_register(
    card: *const xxcap_card,
    offset: u16,
    value: u32,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        c.card.write_register(offset, value)?;
        Ok(0)
    })
}

/// Finds a register by name (case-insensitive, without prefix, e.g.
/// "FRAME_WIDTH"): its offset and width in bits (32 or 64). -ENOENT for an
/// unknown name. `width_bits` may be NULL.
///
/// # Safety
/// `name` is a NUL-terminated string; `offset` is writable; `width_bits`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_register_lookup(
    name: *const c_char,
    offset: *mut u16,
    width_bits: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let name = unsafe { c_path(name) }?;
        let desc = xx::abi::regs::find_by_name(name)
            .ok_or_else(|| Failure::new(libc::ENOENT, format!("unknown register {name:?}")))?;
        let bits = match desc.width {
            xx::abi::regs::Width::W32 => 32,
            xx::abi::regs::Width::W64 => 64,
        };
        // SAFETY: the caller's contract.
        unsafe { put(offset, desc.offset, "offset") }?;
        // SAFETY: the caller's contract.
        unsafe { crate::put_opt(width_bits, bits) };
        Ok(0)
    })
}
