//! Card RAM: DMA to and from it, mapping it into this process, and the
//! status block page.

use std::ffi::{c_int, c_void};

use xx::abi::StatusBlock;
use xx::{CardRam, StatusView};

use crate::card::xxcap_card;
use crate::error::{guard, Failure};
use crate::{bytes, bytes_mut, handle, handle_mut, put, put_opt};

/// Status bits (`xxcap_status.status`, `xxcap_info.status`): ready.
pub const XXCAP_STATUS_READY: u32 = 1 << 0;
/// Capture is running.
pub const XXCAP_STATUS_CAPTURING: u32 = 1 << 1;
/// A DMA command is moving data (seen in the status block; a task file
/// always reads 0, its DMA having ended before the next command).
pub const XXCAP_STATUS_DMA_BUSY: u32 = 1 << 2;
/// A DMA command failed since the last `CONTROL.DMA_RESET` or device reset:
/// latched, later successful transfers leave it set.
pub const XXCAP_STATUS_DMA_ERROR: u32 = 1 << 3;

/// Card RAM mapped into this process (opaque).
pub struct xxcap_ram {
    ram: CardRam,
}

/// The status block mapped read-only (opaque).
pub struct xxcap_status_map {
    view: StatusView,
}

/// A consistent copy of the card's status block.
#[repr(C)]
pub struct xxcap_status {
    /// `XXCAP_STATUS_*` bits.
    pub status: u32,
    /// Ring geometry: `ring_slots` slots of `slot_size` bytes.
    pub ring_slots: u32,
    /// Frames completed since capture started.
    pub frame_counter: u64,
    /// Frames the card dropped.
    pub dropped: u64,
    pub errors: u64,
    /// Device time of the last update.
    pub device_time_ns: u64,
    /// Card-RAM offset of the ring.
    pub ring_offset: u64,
    pub slot_size: u32,
    /// `XXCAP_FORMAT_*`, size and rate being captured.
    pub format: u32,
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    /// Bytes of one frame.
    pub frame_size: u32,
}

impl xxcap_status {
    pub(crate) fn from_block(b: &StatusBlock) -> Self {
        xxcap_status {
            status: b.status.get(),
            ring_slots: b.ring_slots.get(),
            frame_counter: b.frame_counter.get(),
            dropped: b.dropped.get(),
            errors: b.errors.get(),
            device_time_ns: b.device_time_ns.get(),
            ring_offset: b.ring_offset.get(),
            slot_size: b.slot_size.get(),
            format: b.format.get(),
            width: b.width.get(),
            height: b.height.get(),
            fps: b.fps.get(),
            frame_size: b.frame_size.get(),
        }
    }
}

/// DMA of `len` bytes from `data` into card RAM at `card_offset`, waiting
/// for it; the bytes moved go to `moved` (may be NULL).
///
/// # Safety
/// `card` is a live handle; `data` is readable for `len` bytes; `moved` is
/// NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_write_blocks(
    card: *const xxcap_card,
    card_offset: u64,
    data: *const c_void,
    len: usize,
    moved: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        // SAFETY: the caller's contract.
        let src = unsafe { bytes(data.cast(), len, "data") }?;
        let n = c.card.write_blocks(card_offset, src)?;
        // SAFETY: the caller's contract.
        unsafe { put_opt(moved, n) };
        Ok(0)
    })
}

/// DMA of `len` bytes from card RAM at `card_offset` into `buffer`,
/// waiting for it; the bytes moved go to `moved` (may be NULL).
///
/// # Safety
/// `card` is a live handle; `buffer` is writable for `len` bytes; `moved`
/// is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_read_blocks(
    card: *const xxcap_card,
    card_offset: u64,
    buffer: *mut c_void,
    len: usize,
    moved: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        // SAFETY: the caller's contract.
        let dst = unsafe { bytes_mut(buffer.cast(), len, "buffer") }?;
        let n = c.card.read_blocks(card_offset, dst)?;
        // SAFETY: the caller's contract.
        unsafe { put_opt(moved, n) };
        Ok(0)
    })
}

/// Maps the whole card RAM into this process (writable on a controlling
/// open): its address goes to `data`, its length to `len`. The card may
/// change it at any time. The mapping outlives the card handle until
/// `xxcap_ram_unmap`.
///
/// # Safety
/// `card` is a live handle; `out`, `data` and `len` are writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_ram_map(
    card: *const xxcap_card,
    out: *mut *mut xxcap_ram,
    data: *mut *mut c_void,
    len: *mut usize,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        if out.is_null() || data.is_null() || len.is_null() {
            return Err(Failure::null("out, data or len"));
        }
        let ram = c.card.map_card_ram()?;
        let mut boxed = Box::new(xxcap_ram { ram });
        let address = boxed.ram.as_mut_slice().as_mut_ptr().cast::<c_void>();
        let size = boxed.ram.len();
        // SAFETY: all three checked non-NULL; the caller guarantees they
        // are writable.
        unsafe {
            data.write(address);
            len.write(size);
            out.write(Box::into_raw(boxed));
        }
        Ok(0)
    })
}

/// Unmaps card RAM. NULL is accepted.
///
/// # Safety
/// `ram` is NULL or a live mapping, not used after this call (nor its
/// data pointer).
#[no_mangle]
pub unsafe extern "C" fn xxcap_ram_unmap(ram: *mut xxcap_ram) {
    let _ = guard(|| {
        if !ram.is_null() {
            // SAFETY: made by Box::into_raw in xxcap_ram_map; freed once.
            drop(unsafe { Box::from_raw(ram) });
        }
        Ok(0)
    });
}

/// Maps the card's status block page read-only; read it with
/// `xxcap_status_read`. The mapping outlives the card handle until
/// `xxcap_status_unmap`.
///
/// # Safety
/// `card` is a live handle; `out` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_status_map(
    card: *const xxcap_card,
    out: *mut *mut xxcap_status_map,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        if out.is_null() {
            return Err(Failure::null("out"));
        }
        let view = c.card.map_status()?;
        // SAFETY: checked non-NULL; the caller guarantees it is writable.
        unsafe { out.write(Box::into_raw(Box::new(xxcap_status_map { view }))) };
        Ok(0)
    })
}

/// A consistent copy of the status block (taken under the card's sequence
/// lock, without a system call).
///
/// # Safety
/// `map` is a live status mapping; `status` is writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_status_read(
    map: *mut xxcap_status_map,
    status: *mut xxcap_status,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let m = unsafe { handle_mut(map, "map") }?;
        let block = m.view.snapshot()?;
        // SAFETY: the caller's contract.
        unsafe { put(status, xxcap_status::from_block(&block), "status") }?;
        Ok(0)
    })
}

/// Unmaps the status block. NULL is accepted.
///
/// # Safety
/// `map` is NULL or a live status mapping, not used after this call.
#[no_mangle]
pub unsafe extern "C" fn xxcap_status_unmap(map: *mut xxcap_status_map) {
    let _ = guard(|| {
        if !map.is_null() {
            // SAFETY: made by Box::into_raw in xxcap_status_map; freed once.
            drop(unsafe { Box::from_raw(map) });
        }
        Ok(0)
    });
}
