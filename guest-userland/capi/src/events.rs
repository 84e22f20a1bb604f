//! Events and asynchronous requests: interrupts arrive as records; a
//! submitted task file completes with a record carrying its refcon, and
//! `xxcap_dispatch` turns those into callbacks on the caller's thread.
//!
//! A stream reads the same records: do not dispatch or wait for events on a
//! card while a stream made from it runs.

use std::ffi::{c_int, c_void};

use xx::{Cause, Causes, Event};

use crate::card::xxcap_card;
use crate::error::{guard, Failure};
use crate::taskfile::{task_file, xxcap_taskfile};
use crate::{count, handle, put_opt, timeout};

/// Interrupt causes (bits of `xxcap_subscribe`, `xxcap_enable_interrupts`,
/// and `xxcap_event.cause`): a frame completed.
pub const XXCAP_CAUSE_FRAME_DONE: u32 = 1 << 0;
/// A DMA transfer completed.
pub const XXCAP_CAUSE_DMA_DONE: u32 = 1 << 1;
/// A DMA transfer failed.
pub const XXCAP_CAUSE_DMA_ERROR: u32 = 1 << 2;
/// The card dropped a frame.
pub const XXCAP_CAUSE_OVERFLOW: u32 = 1 << 3;
/// Raised on request (INT_RAISE), to test the path.
pub const XXCAP_CAUSE_TEST: u32 = 1 << 4;
/// `xxcap_event.cause` only: `count` records were lost (a queue was full).
pub const XXCAP_CAUSE_LOST: u32 = 0x8000_0000;

/// One event record.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct xxcap_event {
    /// One `XXCAP_CAUSE_*` value.
    pub cause: u32,
    /// Completions: the request's task-file error code (0: success).
    pub status: u32,
    /// Device events: the device's event number since reset.
    pub sequence: u64,
    pub frame_number: u64,
    /// Completions: the id the request was given.
    pub request_id: u64,
    /// Completions: the refcon it was submitted with.
    pub refcon: u64,
    /// Device clock when the cause occurred.
    pub device_time_ns: u64,
    /// Guest CLOCK_MONOTONIC when the driver took the record.
    pub guest_time_ns: u64,
    /// LOST: records lost; FRAME_DONE of a buffer: bytes; task files: the
    /// out count.
    pub count: u32,
    /// Nonzero when made from the completion of one of this open's
    /// requests.
    pub completion: u32,
}

impl xxcap_event {
    pub(crate) fn from_rust(e: &Event) -> Self {
        let cause = match e.cause {
            Cause::FrameDone => XXCAP_CAUSE_FRAME_DONE,
            Cause::DmaDone => XXCAP_CAUSE_DMA_DONE,
            Cause::DmaError => XXCAP_CAUSE_DMA_ERROR,
            Cause::Overflow => XXCAP_CAUSE_OVERFLOW,
            Cause::Test => XXCAP_CAUSE_TEST,
            Cause::Lost => XXCAP_CAUSE_LOST,
        };
        xxcap_event {
            cause,
            status: e.status,
            sequence: e.sequence,
            frame_number: e.frame_number,
            request_id: e.request_id,
            refcon: e.refcon,
            device_time_ns: e.device_time_ns,
            guest_time_ns: e.guest_time_ns,
            count: e.count,
            completion: u32::from(e.completion),
        }
    }
}

/// The completion of a submitted request, as its callback sees it.
#[repr(C)]
pub struct xxcap_completion {
    pub request_id: u64,
    /// The card's task-file error code: 0 on success
    /// (`xxcap_tf_error_string` names the others).
    pub status: u32,
    /// Out count of the task file (the failing command's index).
    pub count: u32,
    pub device_time_ns: u64,
    pub guest_time_ns: u64,
}

/// Called by `xxcap_dispatch` when a submitted request completes, with the
/// `refcon` given at submission. The completion lives for the call only.
/// It may submit more requests; it must not close the card.
pub type xxcap_completion_fn = Option<
    unsafe extern "C" fn(card: *mut xxcap_card, done: *const xxcap_completion, refcon: *mut c_void),
>;

/// Called by `xxcap_dispatch` for each record that is not the completion of
/// a request submitted with a callback.
pub type xxcap_event_fn = Option<
    unsafe extern "C" fn(card: *mut xxcap_card, event: *const xxcap_event, refcon: *mut c_void),
>;

/// Chooses the `XXCAP_CAUSE_*` bits this open receives as records; stores
/// the previous choice in `old` (may be NULL). Completions of this open's
/// own requests always arrive.
///
/// # Safety
/// `card` is a live handle; `old` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn xxcap_subscribe(
    card: *const xxcap_card,
    causes: u32,
    old: *mut u32,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        let causes = Causes::from_bits(causes)
            .ok_or_else(|| Failure::inval(format!("unknown cause bits {causes:#x}")))?;
        let previous = c.card.subscribe(causes)?;
        // SAFETY: the caller's contract.
        unsafe { put_opt(old, previous.bits()) };
        Ok(0)
    })
}

/// Enables `causes` on the card (INT_MASK) with coalescing: records are
/// delivered after `count` of them or `usec` microseconds, whichever comes
/// first (0 and 1: each one; `usec` 0: no time limit).
///
/// # Safety
/// `card` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_enable_interrupts(
    card: *const xxcap_card,
    causes: u32,
    count: u32,
    usec: u32,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        let causes = Causes::from_bits(causes)
            .ok_or_else(|| Failure::inval(format!("unknown cause bits {causes:#x}")))?;
        c.card.enable_interrupts(causes, count, usec)?;
        Ok(0)
    })
}

/// Waits up to `timeout_ms` (negative: forever) for records and stores up
/// to `max` of them in `events`. Returns how many: 0 when the time passed.
/// A signal ends the wait with -EINTR. Records read here do not run
/// callbacks (use `xxcap_dispatch` for that).
///
/// # Safety
/// `card` is a live handle; `events` is valid for writing `max` records.
#[no_mangle]
pub unsafe extern "C" fn xxcap_wait_events(
    card: *const xxcap_card,
    events: *mut xxcap_event,
    max: usize,
    timeout_ms: c_int,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        if events.is_null() {
            return Err(Failure::null("events"));
        }
        if max == 0 {
            return Err(Failure::inval("max is 0"));
        }
        let mut got = Vec::new();
        c.card.wait_events(&mut got, max, timeout(timeout_ms))?;
        for (i, e) in got.iter().take(max).enumerate() {
            // SAFETY: `i < max`; the caller guarantees `max` writable
            // records.
            unsafe { events.add(i).write(xxcap_event::from_rust(e)) };
        }
        Ok(count(got.len().min(max)))
    })
}

/// Starts `tf` without waiting for it and stores its request id in
/// `request_id` (may be NULL). When it completes, `xxcap_dispatch` calls
/// `callback` with `refcon`; with a NULL callback the completion reaches
/// the event callback (or `xxcap_wait_events`) as a record. GET results are
/// not returned by submitted task files. The task file may be freed or
/// reused once this returns.
///
/// # Safety
/// `card` is a live handle and `tf` a live task file. Every DMA buffer in
/// `tf` stays valid, and is not otherwise accessed, until the completion
/// has been dispatched (or the card is closed).
#[no_mangle]
pub unsafe extern "C" fn xxcap_submit(
    card: *const xxcap_card,
    tf: *const xxcap_taskfile,
    callback: xxcap_completion_fn,
    refcon: *mut c_void,
    request_id: *mut u64,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        // SAFETY: the caller's contract.
        let t = unsafe { handle(tf, "tf") }?;
        // SAFETY: the caller's contract covers the task file's buffers.
        let id = unsafe { c.card.submit(task_file(t), refcon as u64) }?;
        if callback.is_some() {
            c.pending.borrow_mut().insert(id, (callback, refcon));
        }
        // SAFETY: the caller's contract.
        unsafe { put_opt(request_id, id) };
        Ok(0)
    })
}

/// Cancels the submitted task file or queued capture buffer `request_id`
/// of this card handle if the card has not started it: its completion (a
/// callback or record, exactly once) then has status `XXCAP_TF_CANCELLED`;
/// one already started completes with its own result. Returns 0 when the
/// card has answered, `-ENOENT` for an id that is not outstanding on this
/// handle (completed, or another open's).
///
/// # Safety
/// `card` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_abort(card: *const xxcap_card, request_id: u64) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        c.card.abort(request_id)?;
        Ok(0)
    })
}

/// `xxcap_abort` of every request outstanding on this card handle.
///
/// # Safety
/// `card` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_abort_all(card: *const xxcap_card) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        c.card.abort_all()?;
        Ok(0)
    })
}

/// Starts one DMA transfer of `len` bytes between `buffer` and card RAM at
/// `card_offset` without waiting (`XXCAP_DMA_TO_CARD` or
/// `XXCAP_DMA_FROM_CARD`): the non-blocking DMATransfer with a callback and
/// refcon. Otherwise as `xxcap_submit`.
///
/// # Safety
/// `card` is a live handle. `buffer` stays valid for `len` bytes (writable
/// for `XXCAP_DMA_FROM_CARD`), and is not otherwise accessed, until the
/// completion has been dispatched (or the card is closed).
#[no_mangle]
pub unsafe extern "C" fn xxcap_dma_async(
    card: *const xxcap_card,
    direction: u32,
    buffer: *mut c_void,
    len: usize,
    card_offset: u64,
    callback: xxcap_completion_fn,
    refcon: *mut c_void,
    request_id: *mut u64,
) -> c_int {
    let mut tf = std::ptr::null_mut();
    // SAFETY: `tf` is a writable local.
    let rc = unsafe { crate::taskfile::xxcap_tf_new(&mut tf) };
    if rc < 0 {
        return rc;
    }
    // SAFETY: `tf` was just made; the buffer contract is this function's.
    let mut rc =
        unsafe { crate::taskfile::xxcap_tf_dma(tf, direction, buffer, len as u64, card_offset, 0) };
    if rc >= 0 {
        // SAFETY: the caller's contract; `tf` is live.
        rc = unsafe { xxcap_submit(card, tf, callback, refcon, request_id) };
    }
    // SAFETY: made above, freed once.
    unsafe { crate::taskfile::xxcap_tf_free(tf) };
    rc.min(0)
}

/// Registers the callback for records that are not completions of requests
/// submitted with a callback (NULL: such records are dropped by
/// `xxcap_dispatch`).
///
/// # Safety
/// `card` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_set_event_callback(
    card: *const xxcap_card,
    callback: xxcap_event_fn,
    refcon: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        c.on_event.set((callback, refcon));
        Ok(0)
    })
}

/// Requests submitted with a callback that has not run yet.
///
/// # Safety
/// `card` is a live handle.
#[no_mangle]
pub unsafe extern "C" fn xxcap_pending(card: *const xxcap_card) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card, "card") }?;
        let n = c.pending.borrow().len();
        Ok(count(n))
    })
}

/// Waits up to `timeout_ms` (negative: forever) for records and runs their
/// callbacks on this thread: completions of submitted requests call the
/// callback given at submission, other records the event callback. Returns
/// how many callbacks ran (0 when the time passed).
///
/// # Safety
/// `card` is a live handle. The callbacks are called with it.
#[no_mangle]
pub unsafe extern "C" fn xxcap_dispatch(card: *mut xxcap_card, timeout_ms: c_int) -> c_int {
    guard(|| {
        // SAFETY: the caller's contract.
        let c = unsafe { handle(card as *const xxcap_card, "card") }?;
        if c.dispatching.get() {
            return Err(Failure::new(
                libc::EBUSY,
                "xxcap_dispatch called from a callback",
            ));
        }
        let mut got = Vec::new();
        c.card.wait_events(&mut got, 256, timeout(timeout_ms))?;
        c.dispatching.set(true);
        let mut ran = 0usize;
        for e in &got {
            let mine = if e.completion {
                c.pending.borrow_mut().remove(&e.request_id)
            } else {
                None
            };
            match mine {
                Some((Some(cb), refcon)) => {
                    let done = xxcap_completion {
                        request_id: e.request_id,
                        status: e.status,
                        count: e.count,
                        device_time_ns: e.device_time_ns,
                        guest_time_ns: e.guest_time_ns,
                    };
                    // SAFETY: a C function pointer the caller registered;
                    // `done` lives for the call; the card stays alive
                    // (closing is refused while dispatching).
                    unsafe { cb(card, &done, refcon) };
                    ran += 1;
                }
                _ => {
                    if let (Some(cb), refcon) = c.on_event.get() {
                        let ev = xxcap_event::from_rust(e);
                        // SAFETY: as above, with the record for the call.
                        unsafe { cb(card, &ev, refcon) };
                        ran += 1;
                    }
                }
            }
        }
        c.dispatching.set(false);
        Ok(count(ran))
    })
}
